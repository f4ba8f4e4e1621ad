//! Invariants checked once a run has healed and quiesced (issue 5). They read the
//! history (every client request, its times and outcome) and the simulator's ground
//! truth, `Applied`: every write a replica applied, with the dot it got, the version
//! its client sent and the version the replica answered. The ground truth is what
//! lets the checkers be exact without false alarms: a write that timed out may still
//! have been applied, and under LWW a write supersedes what its replica held, not
//! only what its client saw.
//!
//! After heal (`state`):
//! * no acknowledged write lost: the dot of every acked write is still a sibling of
//!   its key with that write's body, unless an applied write superseded it (its
//!   version holds the dot) and the final record knows the dot;
//! * convergence: every replica of a key holds an identical record, and nodes that
//!   are not replicas hold nothing;
//! * a dot is issued once: no two applied writes of a key got the same dot;
//! * no resurrection: nothing an acked write superseded is a sibling after heal;
//! * no invented values: reads and final records hold only values clients put.
//! * hints are handed off (checked after heal and the background window, before the
//!   final read repairs anything): every hint a node stored durably (the `hints`
//!   ledger) is covered by its target's own record: sloppy quorum's promise.
//!
//! A write acked with hints (`Entry::hinted`) counts only its true replicas
//! (`Entry::strict_quorum`) toward the quorum-intersection checks below.
//!
//! Versions (`versions`):
//! * no false siblings: two versions held together (by a read or after heal) come
//!   from concurrent writes: neither write's version covers the other's dot;
//! * writes cover their versions: an acked write returns a version that includes
//!   the one it was sent with, plus its own dot;
//! * reads cover acked versions (quorum intersection, read-your-writes): a get with
//!   `r + w > N` that started after a write was acked returns a version that
//!   includes that write's whole version.
//!
//! What clients are shown (`views`, both conflict policies, TTL-aware):
//! * a get with `r + w > N` shows no value an earlier acked write superseded, and
//!   shows an earlier acked put's value unless it expired (on the reading node's
//!   clock, or on the fastest clock so far: any node may have purged it) or a newer
//!   write hides it: one that superseded it, or under LWW one with a higher HLC
//!   timestamp. After heal the merged record is checked the same way.
//!
//! CRDT keys (issue 8, `crdt`): their own clients and history; convergence as
//! above, plus counter bounds and OR-set adds (see `check::crdt`).
//!
//! Purge and tombstone GC (issue 7) change what "still there" means, and the
//! checkers know it from the ground truth of what nodes forgot (`Forgotten`, seen
//! by their disks): an expired put may be a tombstone under its own dot; a write
//! whose dot a forgotten record knew (a tombstone, or superseded) may be gone with
//! it, from the merged record and from later reads' versions; a tombstone-only
//! record and none are the same to convergence. What GC may never do is let a value
//! a delete superseded come back: "no resurrection" above is unchanged, and only
//! records holding nothing but tombstones may be forgotten.

mod crdt;
mod state;
mod versions;
mod views;

use std::collections::BTreeMap;

use bytes::Bytes;
use ringkv_core::{Body, ConflictPolicy, Context, Dot, Key, Record, Sibling};

use crate::sim::{Applied, Forgotten};
use crate::workload::{Entry, Op, Outcome};

pub use crdt::crdt_invariants;
pub use state::{
    convergence, dots_are_unique, hints_handed_off, no_acked_write_lost, no_invented_values,
    nothing_superseded_returns, only_tombstones_forgotten, stored,
};
pub use versions::{no_false_siblings, reads_cover_acked_versions, writes_cover_their_versions};
pub use views::reads_show_acked_values;

/// Every dot of `context` (the simulator's counters stay small).
fn dots(context: &Context) -> Vec<Dot> {
    let mut all: Vec<Dot> = context
        .vector()
        .flat_map(|(actor, top)| (1..=top).map(move |counter| Dot { actor, counter }))
        .collect();
    all.extend(context.cloud());
    all
}

/// What a version holds beyond what was sent: under `siblings`, exactly the write's
/// own dot.
pub fn own_dots(version: &Context, seen: &Context) -> Vec<Dot> {
    dots(version)
        .into_iter()
        .filter(|dot| !seen.contains(*dot))
        .collect()
}

/// The body a write stores.
pub fn body_of(op: &Op) -> Option<Body> {
    match op {
        Op::Put { value, .. } => Some(Body::Bytes(Bytes::from(value.clone().into_bytes()))),
        Op::Delete { .. } => Some(Body::Tombstone),
        Op::Get { .. } => None,
    }
}

/// A record some client saw or that is stored after heal, for the checkers that
/// look at records.
pub struct Observation<'a> {
    pub key: usize,
    pub record: Option<&'a Record>,
    /// The reading node's wall clock (TTL expiry).
    pub now_ms: u64,
    /// When the read started (`u64::MAX` after heal: after every write).
    pub start: u64,
    /// The read's `r`; after heal N, as the final read merges every replica.
    pub quorum: u8,
    /// The get, or `None` for the merged record after heal.
    pub entry: Option<&'a Entry>,
}

impl Observation<'_> {
    /// Which read it was, for the violation text.
    pub fn what(&self) -> String {
        match self.entry {
            Some(entry) => format!(
                "get by c{} (r={}, via n{}, {}..{} ms)",
                entry.client, entry.quorum, entry.node, entry.start, entry.end
            ),
            None => "the merged record after heal".into(),
        }
    }
}

/// Everything the checkers know about a run, indexed.
pub struct Facts<'a> {
    pub history: &'a [Entry],
    pub applied: &'a [Applied],
    pub policy: ConflictPolicy,
    /// N, replicas per key.
    pub n: u8,
    /// Key index of each `applied` entry (`None`: not a workload key).
    applied_keys: Vec<Option<usize>>,
    /// Applied writes by (key, dot); more than one means a dot was issued twice.
    by_dot: BTreeMap<(usize, Dot), Vec<&'a Applied>>,
    /// Applied writes by (key, encoded answered version).
    by_version: BTreeMap<(usize, Vec<u8>), &'a Applied>,
    /// Put requests by value (values are unique per request).
    puts: BTreeMap<&'a [u8], &'a Entry>,
    /// When a node lost its disk, if one did: quorum intersection does not hold
    /// across that moment (the wiped replica may be one of the R a read asks).
    pub disk_lost_at: Option<u64>,
    /// Every record a node forgot (tombstone GC), in order.
    pub forgotten: &'a [Forgotten],
    /// The highest wall clock of any node, as (virtual ms, wall ms) steps.
    pub wall_high: &'a [(u64, u64)],
    /// The workload keys' bytes, by index.
    keys: Vec<bytes::Bytes>,
}

impl<'a> Facts<'a> {
    /// Whether a disk was lost after `write` started (a replica may have acked it
    /// durably just before its disk went) and before `read` ended: then the read may
    /// miss the write without any bug (until anti-entropy refills the wiped replica).
    pub fn disk_lost_between(&self, write: &Entry, read: &Observation) -> bool {
        match (self.disk_lost_at, read.entry) {
            (Some(at), Some(entry)) => write.start <= at && entry.end >= at,
            _ => false,
        }
    }

    pub fn new(
        history: &'a [Entry],
        applied: &'a [Applied],
        keys: &[Key],
        policy: ConflictPolicy,
        n: u8,
    ) -> Facts<'a> {
        let applied_keys: Vec<Option<usize>> = applied
            .iter()
            .map(|a| keys.iter().position(|key| key.as_bytes() == a.key.as_ref()))
            .collect();
        let mut by_dot: BTreeMap<(usize, Dot), Vec<&Applied>> = BTreeMap::new();
        let mut by_version = BTreeMap::new();
        for (write, key) in applied.iter().zip(&applied_keys) {
            let Some(key) = *key else { continue };
            by_dot.entry((key, write.dot)).or_default().push(write);
            by_version.insert((key, write.version.to_bytes()), write);
        }
        let puts = history
            .iter()
            .filter_map(|entry| match &entry.op {
                Op::Put { value, .. } => Some((value.as_bytes(), entry)),
                _ => None,
            })
            .collect();
        Facts {
            history,
            applied,
            policy,
            n,
            applied_keys,
            by_dot,
            by_version,
            puts,
            disk_lost_at: None,
            forgotten: &[],
            wall_high: &[],
            keys: keys.iter().map(Key::to_bytes).collect(),
        }
    }

    /// The highest wall clock any node showed up to virtual time `at`.
    pub fn wall_high_at(&self, at: u64) -> u64 {
        let index = self.wall_high.partition_point(|(when, _)| *when <= at);
        index
            .checked_sub(1)
            .map_or(0, |index| self.wall_high[index].1)
    }

    /// Whether a version expiring at `expires_at_ms` may be gone for `read`: expired
    /// by its node's clock, or by the fastest clock until it ended (that node may
    /// have purged it, and the tombstone spread).
    pub fn expired_for(&self, expires_at_ms: u64, read: &Observation) -> bool {
        let end = read.entry.map_or(u64::MAX, |entry| entry.end);
        expires_at_ms <= read.now_ms.max(self.wall_high_at(end))
    }

    /// The records of `key` forgotten at or before virtual time `before`.
    pub fn forgotten_of(&self, key: usize, before: u64) -> impl Iterator<Item = &'a Forgotten> {
        let bytes = self.keys.get(key).cloned();
        self.forgotten
            .iter()
            .filter(move |gone| gone.at <= before && Some(&gone.key) == bytes.as_ref())
    }

    /// Acknowledged writes with the version they returned and what they were sent.
    pub fn acked(&self) -> impl Iterator<Item = (&'a Entry, &'a Context, &'a Context)> {
        self.history
            .iter()
            .filter_map(|entry| match (&entry.outcome, entry.op.seen()) {
                (Outcome::Written(version), Some(seen)) => Some((entry, version, seen)),
                _ => None,
            })
    }

    /// Successful gets.
    pub fn reads(&self) -> impl Iterator<Item = Observation<'a>> + use<'a> {
        self.history
            .iter()
            .filter_map(|entry| match &entry.outcome {
                Outcome::Read { record, now_ms } => Some(Observation {
                    key: entry.op.key(),
                    record: record.as_ref(),
                    now_ms: *now_ms,
                    start: entry.start,
                    quorum: entry.quorum,
                    entry: Some(entry),
                }),
                _ => None,
            })
    }

    /// The application of an acked write: the `Update` whose answered version the
    /// client got back (`None` if no replica ever answered that version).
    pub fn application(&self, entry: &Entry) -> Option<&'a Applied> {
        let Outcome::Written(version) = &entry.outcome else {
            return None;
        };
        self.by_version
            .get(&(entry.op.key(), version.to_bytes()))
            .copied()
    }

    /// Every application of `dot` to `key` (one, unless a dot was issued twice).
    pub fn applications(&self, key: usize, dot: Dot) -> &[&'a Applied] {
        self.by_dot.get(&(key, dot)).map_or(&[], Vec::as_slice)
    }

    /// The application that produced the version `dot` holding `sibling` (or whose
    /// expired value was purged into it: a tombstone with the same HLC and expiry).
    pub fn origin(&self, key: usize, dot: Dot, sibling: &Sibling) -> Option<&'a Applied> {
        self.applications(key, dot)
            .iter()
            .find(|a| a.sibling.body == sibling.body || purged_from(sibling, &a.sibling))
            .copied()
    }

    /// Applied writes of `key`.
    pub fn applied_to(&self, key: usize) -> impl Iterator<Item = &'a Applied> + '_ {
        self.applied
            .iter()
            .zip(&self.applied_keys)
            .filter(move |(_, k)| **k == Some(key))
            .map(|(write, _)| write)
    }

    /// Whether an applied write other than `dot`'s own superseded it (its version
    /// holds the dot): the one excuse for an acked version to be gone.
    pub fn superseded(&self, key: usize, dot: Dot) -> bool {
        self.applied_to(key)
            .any(|write| write.dot != dot && write.version.contains(dot))
    }

    /// The version a sibling's write was sent with: for a value, its put's (values
    /// are unique); for a tombstone, that of the delete that got `dot`.
    pub fn passed(&self, key: usize, dot: Dot, sibling: &Sibling) -> Option<&'a Context> {
        match &sibling.body {
            Body::Bytes(value) => self.puts.get(value.as_ref()).and_then(|e| e.op.seen()),
            _ => self.origin(key, dot, sibling).map(|a| &a.seen),
        }
    }
}

/// Whether `held` is `written` purged: a tombstone under the same HLC and expiry.
pub fn purged_from(held: &Sibling, written: &Sibling) -> bool {
    held.is_tombstone()
        && written.expires_at_ms.is_some()
        && held.hlc == written.hlc
        && held.expires_at_ms == written.expires_at_ms
}

/// Text of a dot.
fn show_dot(dot: Dot) -> String {
    format!("{:x}:{}", dot.actor.0, dot.counter)
}

/// Text of a sibling's body.
fn show_body(body: &Body) -> String {
    match body {
        Body::Bytes(bytes) => String::from_utf8_lossy(bytes).into_owned(),
        Body::Tombstone => "tombstone".into(),
        Body::Crdt(_) => "crdt".into(),
    }
}

#[cfg(test)]
mod fixtures {
    //! Fabricated histories for the checkers' unit tests.

    use ringkv_core::{ActorId, Hlc};

    use super::*;

    pub fn dot(actor: u64, counter: u64) -> Dot {
        Dot {
            actor: ActorId(actor),
            counter,
        }
    }

    pub fn key() -> Key {
        Key::parse("k0", &ringkv_core::Limits::default()).expect("a short key is valid")
    }

    pub fn sibling(value: &str, hlc: u64) -> Sibling {
        Sibling {
            hlc: Hlc(hlc),
            expires_at_ms: None,
            body: Body::Bytes(Bytes::from(value.to_owned().into_bytes())),
        }
    }

    /// An acked put of `value` to k0 sent with `seen`, answered with `version`.
    pub fn put(value: &str, seen: Context, version: Context) -> Entry {
        Entry {
            client: 0,
            node: 0,
            quorum: 2,
            hinted: 0,
            op: Op::Put {
                key: 0,
                value: value.into(),
                seen,
                ttl_ms: None,
            },
            start: 0,
            end: 1,
            outcome: Outcome::Written(version),
        }
    }

    /// A get of k0 with r = 2 from `start` that returned `record`.
    pub fn get(record: Option<Record>, start: u64) -> Entry {
        Entry {
            client: 1,
            node: 0,
            quorum: 2,
            hinted: 0,
            op: Op::Get { key: 0 },
            start,
            end: start + 1,
            outcome: Outcome::Read { record, now_ms: 0 },
        }
    }

    /// The ground truth for an acked put: applied as `dot` with timestamp `hlc`.
    pub fn applied(entry: &Entry, dot: Dot, hlc: u64) -> Applied {
        let (Op::Put { value, seen, .. }, Outcome::Written(version)) = (&entry.op, &entry.outcome)
        else {
            panic!("applied() takes an acked put");
        };
        Applied {
            key: key().to_bytes(),
            node: 0,
            at: entry.start,
            dot,
            seen: seen.clone(),
            version: version.clone(),
            sibling: sibling(value, hlc),
        }
    }

    /// A record holding `value` under the dot a blind write by actor 1 gets first.
    pub fn record_with(value: &str) -> Record {
        let mut record = Record::default();
        record.update(&Context::default(), ActorId(1), sibling(value, 1));
        record
    }
}
