//! Checks of the state after heal: nothing acked is lost, replicas agree, dots are
//! issued once, nothing superseded or invented shows up.

use std::collections::BTreeSet;

use ringkv_core::{Body, Key, NodeId, Record};
use ringkv_storage::Engine;

use super::{Facts, body_of, purged_from, show_dot};
use crate::exec::lock;
use crate::sim::{Forgotten, HintStored, Slot};
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
/// is covered by the target's own record (its version includes the hint's), or by
/// a record of the key the target forgot since (tombstone GC).
pub fn hints_handed_off(
    world: &World,
    hints: &[HintStored],
    forgotten: &[Forgotten],
) -> Vec<String> {
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
        // Held by `node`, or forgotten there (tombstone GC) after it held it.
        let forgot = |node: usize| {
            forgotten.iter().any(|gone| {
                gone.node == node
                    && gone.key == key.as_bytes()
                    && gone.record.context().includes(hint.context())
            })
        };
        let covers = |node: usize, held: &Option<Result<Option<Record>, _>>| match held {
            Some(Ok(Some(record))) => record.context().includes(hint.context()) || forgot(node),
            Some(Ok(None)) => hint.is_empty() || forgot(node),
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
                if !covers(index, &held) {
                    violations.push(format!(
                        "{name}: a hint for n{target}, which no longer replicates it, (version {}) never reached replica n{index}",
                        show(hint.context()),
                    ));
                }
            }
            continue;
        }
        let held = world.engines.get(*target).map(|engine| engine.get(&key));
        let covered = covers(*target, &held);
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
/// nothing; after a join or a leave, nodes keep copies of ranges they no longer
/// replicate (nothing reads them; see `cluster::topology`). Records are compared
/// as purged at `horizon_ms` (each replica purges expired versions on its own
/// clock and schedule) and, when `tombstones_as_absent` (runs with tombstone GC),
/// a record of tombstones only counts as none: some replicas may have forgotten it
/// already.
pub fn convergence(
    world: &World,
    keys: &[Key],
    replicas: &[Vec<NodeId>],
    strict_owners: bool,
    horizon_ms: u64,
    tombstones_as_absent: bool,
) -> Vec<String> {
    let mut violations = Vec::new();
    for (index, key) in keys.iter().enumerate() {
        let held: Vec<Result<Option<Record>, String>> = stored(world, key)
            .into_iter()
            .map(|record| {
                record.map(|record| {
                    record
                        .map(|record| record.purge_expired(horizon_ms).unwrap_or(record))
                        .filter(|record| !(tombstones_as_absent && record.only_tombstones()))
                })
            })
            .collect();
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
/// key k. An acked write's dot must still be a sibling with the write's body (or, for
/// a put with a TTL, the tombstone its expired value was purged into), or an applied
/// write superseded it and the final record knows the dot, or a record that knew the
/// dot was forgotten (tombstone GC: the dot was a tombstone or superseded there;
/// `only_tombstones_forgotten` checks that). A TTL alone is no excuse: a purged
/// value keeps its dot.
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
        if record.siblings().any(|(held, sibling)| {
            held == dot
                && (Some(&sibling.body) == body.as_ref() || purged_from(sibling, &applied.sibling))
        }) {
            continue;
        }
        if facts.superseded(key, dot) && record.context().contains(dot) {
            continue;
        }
        // Forgotten after the write was applied: a record forgotten before cannot
        // have known its dot (unless the dot was reissued: `dots_are_unique`).
        if facts
            .forgotten_of(key, u64::MAX)
            .any(|gone| gone.at >= applied.at && gone.record.context().contains(dot))
        {
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

/// Tombstone GC forgets only records that hold nothing but tombstones (deletes and
/// purged expiries): anything else would drop a live value.
pub fn only_tombstones_forgotten(forgotten: &[Forgotten]) -> Vec<String> {
    forgotten
        .iter()
        .filter(|gone| !gone.record.only_tombstones())
        .map(|gone| {
            format!(
                "{}: n{} forgot a record with live versions at {} ms: {} versions {}",
                String::from_utf8_lossy(&gone.key),
                gone.node,
                gone.at,
                gone.record.len(),
                show(gone.record.context())
            )
        })
        .collect()
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

    use crate::sim::Forgotten;

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

    /// A delete (2:1) that superseded a put (1:1), both acked, then forgotten
    /// everywhere: neither is lost, as the forgotten record knew both dots. Without
    /// that ground truth both would be.
    #[test]
    fn writes_known_to_a_forgotten_record_are_not_lost() {
        let put_version = Context::from_parts([(ActorId(1), 1)], []);
        let delete_version = Context::from_parts([(ActorId(1), 1), (ActorId(2), 1)], []);
        let mut delete = put("unused", put_version.clone(), delete_version.clone());
        delete.op = crate::workload::Op::Delete {
            key: 0,
            seen: put_version.clone(),
        };
        let history = [put("a", Context::default(), put_version.clone()), delete];
        let mut truth = vec![applied(&history[0], dot(1, 1), 1)];
        let mut tombstone_write = applied(&history[0], dot(2, 1), 2);
        tombstone_write.seen = put_version.clone();
        tombstone_write.version = delete_version;
        tombstone_write.sibling.body = Body::Tombstone;
        truth.push(tombstone_write);
        let lost = no_acked_write_lost(&facts(&history, &truth), &[None]);
        assert_eq!(lost.len(), 2, "{lost:?}");

        let mut tombstone = record_with("a");
        tombstone.update(
            &put_version,
            ActorId(2),
            Sibling {
                hlc: Hlc(2),
                expires_at_ms: None,
                body: Body::Tombstone,
            },
        );
        let forgotten = [Forgotten {
            node: 0,
            key: key().to_bytes(),
            record: tombstone,
            at: 5,
        }];
        let mut facts_with = facts(&history, &truth);
        facts_with.forgotten = &forgotten;
        assert!(no_acked_write_lost(&facts_with, &[None]).is_empty());
        assert!(only_tombstones_forgotten(&forgotten).is_empty());
        // A record forgotten before the writes were applied knew nothing of them.
        for write in &mut truth {
            write.at = 6;
        }
        let mut facts_before = facts(&history, &truth);
        facts_before.forgotten = &forgotten;
        assert_eq!(no_acked_write_lost(&facts_before, &[None]).len(), 2);
        // Forgetting a record with a live version is reported.
        let live = [Forgotten {
            record: record_with("a"),
            ..forgotten[0].clone()
        }];
        assert_eq!(only_tombstones_forgotten(&live).len(), 1);
    }

    /// An expired put's value purged into a tombstone under its dot, same HLC and
    /// expiry, is no loss; a tombstone of another write under that dot is.
    #[test]
    fn a_put_purged_after_its_expiry_is_not_lost() {
        let version = Context::from_parts([(ActorId(1), 1)], []);
        let history = [put("a", Context::default(), version)];
        let mut truth = [applied(&history[0], dot(1, 1), 7)];
        truth[0].sibling.expires_at_ms = Some(100);
        let purged = |hlc| {
            let mut record = Record::default();
            record.update(
                &Context::default(),
                ActorId(1),
                Sibling {
                    hlc: Hlc(hlc),
                    expires_at_ms: Some(100),
                    body: Body::Tombstone,
                },
            );
            record
        };
        assert!(no_acked_write_lost(&facts(&history, &truth), &[Some(purged(7))]).is_empty());
        assert_eq!(
            no_acked_write_lost(&facts(&history, &truth), &[Some(purged(8))]).len(),
            1
        );
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
