//! Invariants checked once a run has healed and quiesced (issue 5, checkers a and b):
//!
//! * no acknowledged write lost: the dot of every acked write is still a sibling
//!   of its key, with that write's body, unless some write (acked or not: a failed write may have been
//!   applied) was sent with a version containing that dot, i.e. saw it;
//! * convergence: every replica of a key holds an identical record, and nodes that
//!   are not replicas hold nothing.
//!
//! * quorum intersection, checked on the history: a get with `r + w > N` that
//!   started after a write was acked with `w` returns a version containing that
//!   write's dot (records only grow, and a durable ack survives crashes).
//!
//! * a dot is issued once: no two acked writes of a key return the same new dot;
//! * no resurrection: nothing an acked write superseded is a sibling after heal;
//! * no invented values: reads and final records hold only values clients put.
//!
//! Not yet: no false siblings (exactly the concurrent acked writes) and
//! read-your-writes for a client passing its version (checkers c and e).

use std::collections::BTreeSet;

use bytes::Bytes;
use ringkv_core::{Body, Context, Dot, Key, NodeId, Record};
use ringkv_storage::Engine;

use crate::workload::{Entry, Op, Outcome, show};
use crate::world::World;

/// Every dot of `context` (the simulator's counters stay small).
fn dots(context: &Context) -> Vec<Dot> {
    let mut all: Vec<Dot> = context
        .vector()
        .flat_map(|(actor, top)| (1..=top).map(move |counter| Dot { actor, counter }))
        .collect();
    all.extend(context.cloud());
    all
}

/// The dot a write added: what its returned version holds beyond what it was sent.
pub fn own_dots(version: &Context, seen: &Context) -> Vec<Dot> {
    dots(version)
        .into_iter()
        .filter(|dot| !seen.contains(*dot))
        .collect()
}

/// The record of `key` as every node holds it now (read from the engines directly).
pub fn stored(world: &World, key: &Key) -> Vec<Result<Option<Record>, String>> {
    world
        .engines
        .iter()
        .map(|engine| engine.get(key).map_err(|error| error.to_string()))
        .collect()
}

/// Checker (b).
pub fn convergence(world: &World, keys: &[Key], replicas: &[Vec<NodeId>]) -> Vec<String> {
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
                if !matches!(record, Ok(None)) {
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

/// Checker (a). `merged[k]` is the merge of every replica's record of key k.
pub fn no_acked_write_lost(history: &[Entry], merged: &[Option<Record>]) -> Vec<String> {
    let mut violations = Vec::new();
    for entry in history {
        let (Outcome::Written(version), Some(seen)) = (&entry.outcome, entry.op.seen()) else {
            continue;
        };
        let key = entry.op.key();
        let own = own_dots(version, seen);
        let [dot] = own.as_slice() else {
            violations.push(format!(
                "k{key}: c{} write at {} returned {} for seen {}: not exactly one new dot",
                entry.client,
                entry.start,
                show(version),
                show(seen)
            ));
            continue;
        };
        let record = merged.get(key).cloned().flatten().unwrap_or_default();
        // The dot must still carry this write's body: a reissued dot (an actor
        // reused after a crash) would hold someone else's value.
        let body = match &entry.op {
            Op::Put { value, .. } => Body::Bytes(Bytes::from(value.clone().into_bytes())),
            _ => Body::Tombstone,
        };
        if record
            .siblings()
            .any(|(held, sibling)| held == *dot && sibling.body == body)
        {
            continue;
        }
        let superseded = history.iter().any(|other| {
            !std::ptr::eq(other, entry) && other.op.seen().is_some_and(|s| s.contains(*dot))
        });
        if superseded && record.context().contains(*dot) {
            continue;
        }
        let what = match &entry.op {
            Op::Put { value, .. } => format!("put {value}"),
            _ => "delete".into(),
        };
        violations.push(format!(
            "k{key}: acked {what} (c{}, w={}, via n{}, {}..{} ms, dot {:x}:{}) is lost: \
             final record {} versions {}",
            entry.client,
            entry.quorum,
            entry.node,
            entry.start,
            entry.end,
            dot.actor.0,
            dot.counter,
            record.len(),
            show(record.context())
        ));
    }
    violations
}

/// Quorum intersection: every get with `r + w > n` sees every write acked with `w`
/// before the get started.
pub fn reads_see_acked_writes(history: &[Entry], n: u8) -> Vec<String> {
    let mut violations = Vec::new();
    for write in history {
        let (Outcome::Written(version), Some(seen)) = (&write.outcome, write.op.seen()) else {
            continue;
        };
        let [dot] = own_dots(version, seen)[..] else {
            continue; // reported by `no_acked_write_lost`
        };
        for read in history {
            let Outcome::Read(record) = &read.outcome else {
                continue;
            };
            if read.op.key() != write.op.key()
                || read.start < write.end
                || u16::from(read.quorum) + u16::from(write.quorum) <= u16::from(n)
            {
                continue;
            }
            if !record.as_ref().is_some_and(|r| r.context().contains(dot)) {
                violations.push(format!(
                    "k{}: get by c{} (r={}, via n{}, {}..{} ms) misses the write of c{} \
                     (w={}, via n{}, acked at {} ms, dot {:x}:{})",
                    read.op.key(),
                    read.client,
                    read.quorum,
                    read.node,
                    read.start,
                    read.end,
                    write.client,
                    write.quorum,
                    write.node,
                    write.end,
                    dot.actor.0,
                    dot.counter
                ));
            }
        }
    }
    violations
}

/// A dot is issued once (ARCHITECTURE.md): no two acked writes of a key return the
/// same new dot.
pub fn dots_are_unique(history: &[Entry]) -> Vec<String> {
    // Counters are per key: a dot names one event of one key.
    let mut issued: std::collections::BTreeMap<(usize, Dot), &Entry> =
        std::collections::BTreeMap::new();
    let mut violations = Vec::new();
    for entry in history {
        let (Outcome::Written(version), Some(seen)) = (&entry.outcome, entry.op.seen()) else {
            continue;
        };
        let [dot] = own_dots(version, seen)[..] else {
            continue;
        };
        if let Some(first) = issued.insert((entry.op.key(), dot), entry) {
            violations.push(format!(
                "dot {:x}:{} issued twice: k{} by c{} at {} ms and k{} by c{} at {} ms",
                dot.actor.0,
                dot.counter,
                first.op.key(),
                first.client,
                first.start,
                entry.op.key(),
                entry.client,
                entry.start
            ));
        }
    }
    violations
}

/// No resurrection (checker d, generalised to puts): no version an acked write
/// superseded (a dot in the version it was sent with) is a sibling after heal. An
/// acked delete's tombstone may itself be superseded later; what it deleted may not
/// come back.
pub fn nothing_superseded_returns(history: &[Entry], merged: &[Option<Record>]) -> Vec<String> {
    let mut violations = Vec::new();
    for entry in history {
        let (Outcome::Written(_), Some(seen)) = (&entry.outcome, entry.op.seen()) else {
            continue;
        };
        let key = entry.op.key();
        let Some(record) = merged.get(key).and_then(Option::as_ref) else {
            continue;
        };
        for (dot, _) in record.siblings().filter(|(dot, _)| seen.contains(*dot)) {
            violations.push(format!(
                "k{key}: version {:x}:{} is back after c{}'s acked write at {} ms superseded it",
                dot.actor.0, dot.counter, entry.client, entry.start
            ));
        }
    }
    violations
}

/// No invented values: every value a get returned, and every value stored after
/// heal, is one some client tried to put (values are unique per request).
pub fn no_invented_values(history: &[Entry], merged: &[Option<Record>]) -> Vec<String> {
    let attempted: BTreeSet<&[u8]> = history
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
    for entry in history {
        if let Outcome::Read(Some(record)) = &entry.outcome {
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

    use ringkv_core::{ActorId, ConflictPolicy, Hlc, Sibling};

    use super::*;

    fn dot(actor: u64, counter: u64) -> Dot {
        Dot {
            actor: ActorId(actor),
            counter,
        }
    }

    fn put(value: &str, seen: Context, version: Context) -> Entry {
        Entry {
            client: 0,
            node: 0,
            quorum: 2,
            op: Op::Put {
                key: 0,
                value: value.into(),
                seen,
            },
            start: 0,
            end: 1,
            outcome: Outcome::Written(version),
        }
    }

    fn record_with(value: &str, version: &Context) -> Record {
        let mut record = Record::default();
        let sibling = Sibling {
            hlc: Hlc::default(),
            expires_at_ms: None,
            body: Body::Bytes(Bytes::from(value.to_owned().into_bytes())),
        };
        let dot = own_dots(version, &Context::default())[0];
        record.update(&Context::default(), dot.actor, sibling);
        assert_ne!(
            record.view(ConflictPolicy::Siblings, 0),
            ringkv_core::ReadView::Absent
        );
        record
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
        assert_eq!(no_acked_write_lost(&history, &[None]).len(), 1);
    }

    #[test]
    fn a_write_still_held_or_seen_by_a_later_write_is_not_lost() {
        let version = Context::from_parts([(ActorId(1), 1)], []);
        let held = [put("a", Context::default(), version.clone())];
        let record = record_with("a", &version);
        assert!(no_acked_write_lost(&held, &[Some(record.clone())]).is_empty());
        // The same dot under another body is someone else's write.
        let other = [put("b", Context::default(), version.clone())];
        assert_eq!(
            no_acked_write_lost(&other, &[Some(record.clone())]).len(),
            1
        );
        // Superseded: a later write saw it, and the final record knows the dot.
        let mut later = version.clone();
        later.insert(dot(1, 2));
        let history = [
            put("a", Context::default(), version.clone()),
            put("c", version.clone(), later.clone()),
        ];
        let mut final_record = Record::default();
        final_record.update(
            &version,
            ActorId(1),
            Sibling {
                hlc: Hlc::default(),
                expires_at_ms: None,
                body: Body::Bytes(Bytes::from_static(b"zz")),
            },
        );
        let violations = no_acked_write_lost(&history, &[Some(final_record)]);
        assert_eq!(
            violations.len(),
            1,
            "only the write of c is lost: {violations:?}"
        );
        assert!(violations[0].contains("put c"));
    }

    #[test]
    fn a_superseded_version_that_comes_back_is_reported() {
        let version = Context::from_parts([(ActorId(1), 1)], []);
        let record = record_with("a", &version);
        let mut later = version.clone();
        later.insert(dot(2, 1));
        let history = [put("b", version.clone(), later)];
        assert_eq!(
            nothing_superseded_returns(&history, &[Some(record.clone())]).len(),
            1
        );
        let blind = [put("b", Context::default(), version)];
        assert!(nothing_superseded_returns(&blind, &[Some(record)]).is_empty());
    }

    #[test]
    fn a_value_nobody_wrote_is_reported() {
        let version = Context::from_parts([(ActorId(1), 1)], []);
        let record = record_with("a", &version);
        let wrote_a = [put("a", Context::default(), version.clone())];
        assert!(no_invented_values(&wrote_a, &[Some(record.clone())]).is_empty());
        let wrote_b = [put("b", Context::default(), version)];
        assert_eq!(no_invented_values(&wrote_b, &[Some(record)]).len(), 1);
    }
}
