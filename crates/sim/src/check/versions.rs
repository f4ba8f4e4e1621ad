//! Checks of versions: siblings are truly concurrent, writes and reads return
//! versions that cover what they must.

use super::{Facts, Observation, own_dots, show_body, show_dot};
use crate::workload::show;

/// No false siblings: two versions held together in a record (a read's merge, or
/// the merged record after heal) come from concurrent writes. A version written
/// with a context that covered another's dot superseded it: every replica that got
/// the new version also got that context, so every merge drops the old one.
///
/// "Covered" is checked against both what the client passed (the history: the put
/// with that value, values being unique) and the version its replica answered (the
/// ground truth: under LWW a write also supersedes everything its replica held).
/// Writes that timed out count too: they may have been applied.
pub fn no_false_siblings(facts: &Facts, observations: &[Observation]) -> Vec<String> {
    let mut violations = Vec::new();
    for observation in observations {
        let Some(record) = observation.record else {
            continue;
        };
        let key = observation.key;
        for (newer, sibling) in record.siblings() {
            let passed = facts.passed(key, newer, sibling);
            let answered = facts.origin(key, newer, sibling).map(|a| &a.version);
            for (older, old) in record.siblings().filter(|(dot, _)| *dot != newer) {
                let by_client = passed.is_some_and(|seen| seen.contains(older));
                let by_replica = answered.is_some_and(|version| version.contains(older));
                if !by_client && !by_replica {
                    continue;
                }
                violations.push(format!(
                    "k{key}: false siblings in {}: {} ({}, sent with {}) superseded {} ({}), \
                     yet both are held",
                    observation.what(),
                    show_body(&sibling.body),
                    show_dot(newer),
                    passed.map_or_else(|| "?".into(), show),
                    show_body(&old.body),
                    show_dot(older),
                ));
            }
        }
    }
    violations
}

/// Writes cover their versions: the version an acked write returns includes the one
/// it was sent with (so a client that passes its version never goes back) and the
/// write's own dot; under `siblings` it is exactly the two.
pub fn writes_cover_their_versions(facts: &Facts) -> Vec<String> {
    let mut violations = Vec::new();
    for (entry, version, seen) in facts.acked() {
        let key = entry.op.key();
        let who = format!(
            "k{key}: c{}'s write (w={}, via n{}, {}..{} ms)",
            entry.client, entry.quorum, entry.node, entry.start, entry.end
        );
        if !version.includes(seen) {
            violations.push(format!(
                "{who} was sent with {} but returned {}, which does not cover it",
                show(seen),
                show(version)
            ));
        }
        let Some(applied) = facts.application(entry) else {
            continue; // reported by `no_acked_write_lost`
        };
        if !version.contains(applied.dot) {
            violations.push(format!(
                "{who} returned {} without its own dot {}",
                show(version),
                show_dot(applied.dot)
            ));
        } else if facts.policy == ringkv_core::ConflictPolicy::Siblings
            && own_dots(version, seen) != [applied.dot]
        {
            violations.push(format!(
                "{who} returned {} for {}: more than its own dot {}",
                show(version),
                show(seen),
                show_dot(applied.dot)
            ));
        }
    }
    violations
}

/// Reads cover acked versions (quorum intersection; read-your-writes for a client
/// that passes its version): a get with `r + w > N` that started after a write was
/// acked with `w` returns a record whose version includes that write's whole
/// version, what it superseded as well as its dot. The w replicas that acked hold
/// it durably and records only grow, so one of any r replicas has it; unless a
/// replica forgot a record knowing it (tombstone GC) before the read ended: what
/// the read returned and what was forgotten must cover it together.
pub fn reads_cover_acked_versions(facts: &Facts) -> Vec<String> {
    let mut violations = Vec::new();
    let reads: Vec<Observation> = facts.reads().collect();
    for (write, version, _) in facts.acked() {
        for read in &reads {
            if read.key != write.op.key()
                || read.start < write.end
                || u16::from(read.quorum) + u16::from(write.strict_quorum()) <= u16::from(facts.n)
                || facts.disk_lost_between(write, read)
            {
                continue;
            }
            let held = read.record.map(|record| record.context());
            if held.is_some_and(|held| held.includes(version)) {
                continue;
            }
            let end = read.entry.map_or(u64::MAX, |entry| entry.end);
            let mut known = held.cloned().unwrap_or_default();
            for gone in facts.forgotten_of(read.key, end) {
                known.join(gone.record.context());
            }
            if known.includes(version) {
                continue;
            }
            violations.push(format!(
                "k{}: {} misses the write of c{} (w={}, via n{}, acked at {} ms, version {}): \
                 it returned {}",
                read.key,
                read.what(),
                write.client,
                write.quorum,
                write.node,
                write.end,
                show(version),
                held.map_or_else(|| "nothing".into(), show)
            ));
        }
    }
    violations
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use ringkv_core::{ActorId, ConflictPolicy, Context, Record};

    use super::super::fixtures::{applied, dot, get, key, put, record_with, sibling};
    use super::*;
    use crate::sim::Applied;
    use crate::workload::Entry;

    fn facts<'a>(history: &'a [Entry], applied: &'a [Applied]) -> Facts<'a> {
        Facts::new(history, applied, &[key()], ConflictPolicy::Siblings, 3)
    }

    /// A record holding "a" (dot 1:1) and, as a sibling, "b" (dot 2:1): what a
    /// replica that ignored the context of b's write would hold.
    fn a_and_b() -> Record {
        let mut record = record_with("a");
        let mut other = Record::default();
        other.update(&Context::default(), ActorId(2), sibling("b", 2));
        record.sync(&other);
        assert_eq!(record.len(), 2);
        record
    }

    #[test]
    fn siblings_from_concurrent_writes_pass() {
        let history = [
            put(
                "a",
                Context::default(),
                Context::from_parts([], [dot(1, 1)]),
            ),
            put(
                "b",
                Context::default(),
                Context::from_parts([], [dot(2, 1)]),
            ),
            get(Some(a_and_b()), 5),
        ];
        let facts = facts(&history, &[]);
        let reads: Vec<_> = facts.reads().collect();
        assert!(no_false_siblings(&facts, &reads).is_empty());
    }

    #[test]
    fn a_value_held_beside_the_write_that_superseded_it_is_reported() {
        // b was written with a version holding a's dot: the two are no siblings.
        let a_version = Context::from_parts([(ActorId(1), 1)], []);
        let b_version = Context::from_parts([(ActorId(1), 1), (ActorId(2), 1)], []);
        let history = [
            put("a", Context::default(), a_version.clone()),
            put("b", a_version, b_version),
            get(Some(a_and_b()), 5),
        ];
        let facts = facts(&history, &[]);
        let reads: Vec<_> = facts.reads().collect();
        let violations = no_false_siblings(&facts, &reads);
        assert_eq!(violations.len(), 1, "{violations:?}");
        assert!(violations[0].contains("false siblings"));
        assert!(violations[0].contains("b (2:1"), "{violations:?}");
    }

    #[test]
    fn a_version_that_drops_what_the_write_was_sent_with_is_reported() {
        let seen = Context::from_parts([(ActorId(1), 3)], []);
        let good = Context::from_parts([(ActorId(1), 3), (ActorId(2), 1)], []);
        let history = [put("b", seen.clone(), good)];
        let truth = [applied(&history[0], dot(2, 1), 1)];
        assert!(writes_cover_their_versions(&facts(&history, &truth)).is_empty());
        // The replica answered only its new dot.
        let bad = Context::from_parts([(ActorId(2), 1)], []);
        let history = [put("b", seen, bad)];
        let truth = [applied(&history[0], dot(2, 1), 1)];
        let violations = writes_cover_their_versions(&facts(&history, &truth));
        assert_eq!(violations.len(), 1, "{violations:?}");
        assert!(violations[0].contains("does not cover"));
    }

    #[test]
    fn a_quorum_read_after_an_acked_write_must_cover_its_version() {
        // The write (w = 2) superseded 1:1 and added 2:1.
        let seen = Context::from_parts([(ActorId(1), 1)], []);
        let version = Context::from_parts([(ActorId(1), 1), (ActorId(2), 1)], []);
        let mut covering = Record::default();
        covering.update(&seen, ActorId(2), sibling("b", 2));
        assert!(covering.context().includes(&version));
        let history = [
            put("b", seen.clone(), version.clone()),
            get(Some(covering), 5),
            // Started before the ack: may miss it.
            get(None, 0),
        ];
        assert!(reads_cover_acked_versions(&facts(&history, &[])).is_empty());
        // A read (r = 2, 2 + 2 > 3) that holds the write's dot but not what it
        // superseded is as wrong as one that misses the write.
        let mut partial = Record::default();
        partial.update(&Context::default(), ActorId(2), sibling("b", 2));
        let history = [put("b", seen, version), get(Some(partial), 5), get(None, 7)];
        let violations = reads_cover_acked_versions(&facts(&history, &[]));
        assert_eq!(violations.len(), 2, "{violations:?}");
        assert!(violations.iter().all(|v| v.contains("misses")));
    }

    /// A read after the key was forgotten (tombstone GC) may miss what the forgotten
    /// record knew, not what was forgotten only after the read.
    #[test]
    fn a_read_after_the_key_was_forgotten_may_miss_what_was_forgotten() {
        let seen = Context::from_parts([(ActorId(1), 1)], []);
        let version = Context::from_parts([(ActorId(1), 1), (ActorId(2), 1)], []);
        let history = [put("b", seen.clone(), version.clone()), get(None, 5)];
        let mut forgotten_record = Record::default();
        forgotten_record.update(&seen, ActorId(2), sibling("b", 2));
        let forgotten = |at| {
            [crate::sim::Forgotten {
                node: 1,
                key: key().to_bytes(),
                record: forgotten_record.clone(),
                at,
            }]
        };
        let before = forgotten(3);
        let mut facts = facts(&history, &[]);
        facts.forgotten = &before;
        assert!(reads_cover_acked_versions(&facts).is_empty());
        let after = forgotten(9);
        facts.forgotten = &after;
        assert_eq!(reads_cover_acked_versions(&facts).len(), 1);
    }
}
