//! Checks of the state after heal: nothing acked is lost, replicas agree, dots are
//! issued once, nothing superseded or invented shows up.

use std::collections::BTreeSet;

use ringkv_core::{Body, Key, NodeId, Record};
use ringkv_storage::Engine;

use super::{Facts, body_of, show_dot};
use crate::exec::lock;
use crate::sim::{HintStored, Slot};
use crate::workload::{Op, Outcome, show};
use crate::world::World;

/// The record of `key` as every node holds it now (read from the engines directly).
pub fn stored(world: &World, key: &Key) -> Vec<Result<Option<Record>, String>> {
    world
        .engines
        .iter()
        .map(|engine| engine.get(key).map_err(|error| error.to_string()))
        .collect()
}

/// Hints are handed off: every hint stored durably (`hints`: target, key, record)
/// is covered by the target's own record (its version includes the hint's).
pub fn hints_handed_off(world: &World, hints: &[HintStored]) -> Vec<String> {
    let mut violations = Vec::new();
    for HintStored {
        target,
        key,
        record: hint,
        ..
    } in hints
    {
        let name = String::from_utf8_lossy(key);
        let Ok(key) = Key::from_stored(key.clone()) else {
            violations.push(format!("{name}: a hint with an invalid key"));
            continue;
        };
        let covers = |held: &Option<Result<Option<Record>, _>>| match held {
            Some(Ok(Some(record))) => record.context().includes(hint.context()),
            Some(Ok(None)) => hint.is_empty(),
            _ => false,
        };
        // A hint for a node that left the ring goes to the key's replicas instead;
        // one for a node that no longer replicates the key (a pending replica of
        // a decommission that a crash ended) is only owed to the replicas.
        let replicas = world
            .sim
            .node(0)
            .map(|node| node.coordinator.replicas(&key))
            .unwrap_or_default();
        let gone = lock(&world.sim.core).slots.get(*target) == Some(&Slot::Gone);
        if gone || !replicas.contains(&NodeId(*target as u64)) {
            for replica in replicas {
                let index = usize::try_from(replica.0).unwrap_or(usize::MAX);
                let held = world.engines.get(index).map(|engine| engine.get(&key));
                if !covers(&held) {
                    violations.push(format!(
                        "{name}: a hint for n{target}, which no longer replicates it, (version {}) never reached replica n{index}",
                        show(hint.context()),
                    ));
                }
            }
            continue;
        }
        let held = world.engines.get(*target).map(|engine| engine.get(&key));
        let covered = covers(&held);
        if !covered {
            violations.push(format!(
                "{name}: a hint for n{target} (version {}) never reached it: it holds {}",
                show(hint.context()),
                match held {
                    Some(Ok(Some(record))) => show(record.context()),
                    Some(Ok(None)) => "nothing".into(),
                    Some(Err(error)) => error.to_string(),
                    None => "no such node".into(),
                }
            ));
        }
    }
    violations
}

/// Convergence: every replica of a key holds an identical record, and (when
/// `strict_owners`: the ring never changed) nodes that are not replicas hold
/// nothing. After a join or a leave, nodes keep copies of ranges they no longer
/// replicate (nothing reads them; see `cluster::topology`).
pub fn convergence(
    world: &World,
    keys: &[Key],
    replicas: &[Vec<NodeId>],
    strict_owners: bool,
) -> Vec<String> {
    let mut violations = Vec::new();
    for (index, key) in keys.iter().enumerate() {
        let held = stored(world, key);
        let owners: BTreeSet<usize> = replicas[index]
            .iter()
            .filter_map(|id| usize::try_from(id.0).ok())
            .collect();
        let mut first: Option<&Result<Option<Record>, String>> = None;
        for (node, record) in held.iter().enumerate() {
            if !owners.contains(&node) {
                if strict_owners && !matches!(record, Ok(None)) {
                    violations.push(format!(
                        "k{index}: n{node} is no replica but holds {record:?}"
                    ));
                }
                continue;
            }
            match first {
                None => first = Some(record),
                Some(expected) if expected != record => violations.push(format!(
                    "k{index}: replicas diverge: n{node} holds {} vs {}",
                    describe(record),
                    describe(expected)
                )),
                Some(_) => {}
            }
        }
    }
    violations
}

fn describe(record: &Result<Option<Record>, String>) -> String {
    match record {
        Ok(Some(record)) => format!("{} versions {}", record.len(), show(record.context())),
        Ok(None) => "nothing".into(),
        Err(error) => format!("error {error}"),
    }
}

/// No acknowledged write lost. `merged[k]` is the merge of every replica's record of
/// key k. An acked write's dot must still be a sibling with the write's body, or an
/// applied write superseded it and the final record knows the dot. Expired versions
/// are kept (nothing purges them yet), so a TTL is no excuse here.
pub fn no_acked_write_lost(facts: &Facts, merged: &[Option<Record>]) -> Vec<String> {
    let mut violations = Vec::new();
    for (entry, version, _) in facts.acked() {
        let key = entry.op.key();
        let Some(applied) = facts.application(entry) else {
            violations.push(format!(
                "k{key}: c{}'s write at {} ms was acked with version {} that no replica answered",
                entry.client,
                entry.start,
                show(version)
            ));
            continue;
        };
        let dot = applied.dot;
        let record = merged.get(key).cloned().flatten().unwrap_or_default();
        // The dot must still carry this write's body: a reissued dot (an actor
        // reused after a crash) would hold someone else's value.
        let body = body_of(&entry.op);
        if record
            .siblings()
            .any(|(held, sibling)| held == dot && Some(&sibling.body) == body.as_ref())
        {
            continue;
        }
        if facts.superseded(key, dot) && record.context().contains(dot) {
            continue;
        }
        let what = match &entry.op {
            Op::Put { value, .. } => format!("put {value}"),
            _ => "delete".into(),
        };
        violations.push(format!(
            "k{key}: acked {what} (c{}, w={}, via n{}, {}..{} ms, dot {}) is lost: \
             final record {} versions {}",
            entry.client,
            entry.quorum,
            entry.node,
            entry.start,
            entry.end,
            show_dot(dot),
            record.len(),
            show(record.context())
        ));
    }
    violations
}

/// A dot is issued once (ARCHITECTURE.md): no two writes applied to a key got the
/// same dot, acknowledged or not. Within one incarnation a node numbers a write
/// above everything its record knows, and a restart brings a new actor.
pub fn dots_are_unique(facts: &Facts) -> Vec<String> {
    let mut violations = Vec::new();
    let mut seen = BTreeSet::new();
    for (write, key) in facts.applied.iter().zip(&facts.applied_keys) {
        let Some(key) = *key else { continue };
        if !seen.insert((key, write.dot)) {
            continue;
        }
        let all = facts.applications(key, write.dot);
        if let [first, second, ..] = all {
            violations.push(format!(
                "k{key}: dot {} issued twice: by n{} at {} ms ({}) and n{} at {} ms ({})",
                show_dot(write.dot),
                first.node,
                first.at,
                super::show_body(&first.sibling.body),
                second.node,
                second.at,
                super::show_body(&second.sibling.body),
            ));
        }
    }
    violations
}

/// No resurrection: no version an acked write superseded (a dot in the version it
/// was sent with) is a sibling after heal. An acked delete's tombstone may itself be
/// superseded later; what it deleted may not come back.
pub fn nothing_superseded_returns(facts: &Facts, merged: &[Option<Record>]) -> Vec<String> {
    let mut violations = Vec::new();
    for (entry, _, seen) in facts.acked() {
        let key = entry.op.key();
        let Some(record) = merged.get(key).and_then(Option::as_ref) else {
            continue;
        };
        for (dot, _) in record.siblings().filter(|(dot, _)| seen.contains(*dot)) {
            violations.push(format!(
                "k{key}: version {} is back after c{}'s acked write at {} ms superseded it",
                show_dot(dot),
                entry.client,
                entry.start
            ));
        }
    }
    violations
}

/// No invented values: every value a get returned, and every value stored after
/// heal, is one some client tried to put (values are unique per request).
pub fn no_invented_values(facts: &Facts, merged: &[Option<Record>]) -> Vec<String> {
    let attempted: BTreeSet<&[u8]> = facts
        .history
        .iter()
        .filter_map(|entry| match &entry.op {
            Op::Put { value, .. } => Some(value.as_bytes()),
            _ => None,
        })
        .collect();
    let mut violations = Vec::new();
    let mut look = |record: &Record, context: String| {
        for (_, sibling) in record.siblings() {
            if let Body::Bytes(bytes) = &sibling.body
                && !attempted.contains(bytes.as_ref())
            {
                violations.push(format!("{context}: value {bytes:?} was never written"));
            }
        }
    };
    for entry in facts.history {
        if let Outcome::Read {
            record: Some(record),
            ..
        } = &entry.outcome
        {
            look(
                record,
                format!(
                    "k{}: get by c{} at {} ms",
                    entry.op.key(),
                    entry.client,
                    entry.start
                ),
            );
        }
    }
    for (key, record) in merged.iter().enumerate() {
        if let Some(record) = record {
            look(record, format!("k{key} after heal"));
        }
    }
    violations
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use ringkv_core::{ActorId, ConflictPolicy, Context, Hlc, Sibling};

    use super::super::fixtures::{applied, dot, key, put, record_with};
    use super::super::own_dots;
    use super::*;

    fn facts<'a>(
        history: &'a [crate::workload::Entry],
        applied: &'a [crate::sim::Applied],
    ) -> Facts<'a> {
        Facts::new(history, applied, &[key()], ConflictPolicy::Siblings, 3)
    }

    #[test]
    fn own_dots_are_the_version_minus_what_was_seen() {
        let seen = Context::from_parts([(ActorId(1), 2)], []);
        let version = Context::from_parts([(ActorId(1), 2)], [dot(2, 5)]);
        assert_eq!(own_dots(&version, &seen), [dot(2, 5)]);
    }

    #[test]
    fn a_write_whose_dot_is_gone_is_reported_lost() {
        let version = Context::from_parts([(ActorId(1), 1)], []);
        let history = [put("a", Context::default(), version)];
        let truth = [applied(&history[0], dot(1, 1), 1)];
        let violations = no_acked_write_lost(&facts(&history, &truth), &[None]);
        assert_eq!(violations.len(), 1);
        assert!(violations[0].contains("is lost"), "{violations:?}");
    }

    #[test]
    fn an_acked_version_no_replica_answered_is_reported() {
        let version = Context::from_parts([(ActorId(1), 1)], []);
        let history = [put("a", Context::default(), version)];
        let violations = no_acked_write_lost(&facts(&history, &[]), &[None]);
        assert!(
            violations[0].contains("no replica answered"),
            "{violations:?}"
        );
    }

    #[test]
    fn a_write_still_held_or_superseded_by_an_applied_write_is_not_lost() {
        let version = Context::from_parts([(ActorId(1), 1)], []);
        let held = [put("a", Context::default(), version.clone())];
        let truth = [applied(&held[0], dot(1, 1), 1)];
        let record = record_with("a");
        assert!(no_acked_write_lost(&facts(&held, &truth), &[Some(record.clone())]).is_empty());
        // The same dot under another body is someone else's write.
        let other = [put("b", Context::default(), version.clone())];
        let truth_b = [applied(&other[0], dot(1, 1), 1)];
        assert_eq!(
            no_acked_write_lost(&facts(&other, &truth_b), &[Some(record)]).len(),
            1
        );
        // Superseded: a later applied write saw it, and the final record knows the
        // dot. The later write itself (put c) is lost.
        let mut later = version.clone();
        later.insert(dot(1, 2));
        let history = [
            put("a", Context::default(), version.clone()),
            put("c", version.clone(), later),
        ];
        let truth = [
            applied(&history[0], dot(1, 1), 1),
            applied(&history[1], dot(1, 2), 2),
        ];
        let mut final_record = Record::default();
        final_record.update(
            &version,
            ActorId(1),
            Sibling {
                hlc: Hlc::default(),
                expires_at_ms: None,
                body: Body::Bytes(bytes::Bytes::from_static(b"zz")),
            },
        );
        let violations = no_acked_write_lost(&facts(&history, &truth), &[Some(final_record)]);
        assert_eq!(violations.len(), 1, "only put c is lost: {violations:?}");
        assert!(violations[0].contains("put c"));
    }

    #[test]
    fn a_dot_applied_twice_is_reported() {
        let version = Context::from_parts([(ActorId(1), 1)], []);
        let history = [
            put("a", Context::default(), version.clone()),
            put("b", Context::default(), version),
        ];
        let once = [applied(&history[0], dot(1, 1), 1)];
        assert!(dots_are_unique(&facts(&history, &once)).is_empty());
        let twice = [
            applied(&history[0], dot(1, 1), 1),
            applied(&history[1], dot(1, 1), 1),
        ];
        let violations = dots_are_unique(&facts(&history, &twice));
        assert_eq!(violations.len(), 1, "{violations:?}");
        assert!(violations[0].contains("issued twice"));
    }

    #[test]
    fn a_superseded_version_that_comes_back_is_reported() {
        let version = Context::from_parts([(ActorId(1), 1)], []);
        let record = record_with("a");
        let mut later = version.clone();
        later.insert(dot(2, 1));
        let history = [put("b", version.clone(), later)];
        assert_eq!(
            nothing_superseded_returns(&facts(&history, &[]), &[Some(record.clone())]).len(),
            1
        );
        let blind = [put("b", Context::default(), version)];
        assert!(nothing_superseded_returns(&facts(&blind, &[]), &[Some(record)]).is_empty());
    }

    #[test]
    fn a_value_nobody_wrote_is_reported() {
        let version = Context::from_parts([(ActorId(1), 1)], []);
        let record = record_with("a");
        let wrote_a = [put("a", Context::default(), version.clone())];
        assert!(no_invented_values(&facts(&wrote_a, &[]), &[Some(record.clone())]).is_empty());
        let wrote_b = [put("b", Context::default(), version)];
        assert_eq!(
            no_invented_values(&facts(&wrote_b, &[]), &[Some(record)]).len(),
            1
        );
    }
}
