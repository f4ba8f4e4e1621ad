//! A key's record: its live versions (siblings) under the DVV set, and how a read
//! presents them under a conflict policy (DESIGN.md §3, §4).

use bytes::Bytes;

use crate::dvv::{ActorId, Context, Dot, DvvSet};
use crate::hlc::Hlc;

/// How a replica resolves concurrent versions of one key (DESIGN.md §4).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ConflictPolicy {
    /// Keep every concurrent value; a read returns them all (HTTP 300) and a write
    /// carrying the read's version resolves them.
    #[default]
    Siblings,
    /// A write supersedes everything its coordinator has seen, and among truly
    /// concurrent writes a read returns the one with the highest HLC timestamp.
    /// Storage still keeps concurrent versions (so merges stay a lattice); they are
    /// resolved when read and superseded by the next write.
    Lww,
}

/// What one version holds.
///
/// The order matters: when two copies of one dot differ, the merge keeps the larger
/// (`DvvSet::sync`), and `Tombstone` is the largest body. An expired version is
/// purged by turning it into a tombstone under the same dot, HLC and expiry
/// (`Record::purge_expired`), so the purged copy wins against every copy still
/// holding the value, on every replica, in any merge order: expiry never
/// resurrects. (The stored format names bodies itself; this order is not on disk.)
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Body {
    Bytes(Bytes),
    /// A CRDT state; reserved for the CRDT types, opaque here.
    Crdt(Bytes),
    /// A delete, or an expired version purged. Kept so the delete wins over older
    /// versions on other replicas, until tombstone GC forgets the whole record.
    Tombstone,
}

/// One version of a key.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Sibling {
    /// When it was written, by its coordinator's hybrid logical clock.
    pub hlc: Hlc,
    /// Absolute expiry (wall-clock ms since the Unix epoch); after it the version
    /// reads as absent.
    pub expires_at_ms: Option<u64>,
    pub body: Body,
}

impl Sibling {
    /// Whether this version holds data a read should return at `now_ms`.
    pub fn is_live(&self, now_ms: u64) -> bool {
        !self.is_tombstone() && self.expires_at_ms.is_none_or(|at| now_ms < at)
    }

    pub fn is_tombstone(&self) -> bool {
        matches!(self.body, Body::Tombstone)
    }

    /// Whether this version still holds data that expired by `now_ms` (what
    /// `Record::purge_expired` turns into a tombstone).
    pub fn is_expired(&self, now_ms: u64) -> bool {
        !self.is_tombstone() && self.expires_at_ms.is_some_and(|at| now_ms >= at)
    }
}

/// All versions of one key that no write has superseded, with their causal context.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Record {
    pub(crate) versions: DvvSet<Sibling>,
}

/// What a read of a record shows a client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReadView<'a> {
    /// No live version: never written, deleted, or expired.
    Absent,
    Value(&'a Sibling),
    /// Concurrent live versions, oldest first (by HLC, then dot).
    Siblings(Vec<&'a Sibling>),
}

impl Record {
    /// Everything this record has seen: the version token handed to clients.
    pub fn context(&self) -> &Context {
        self.versions.context()
    }

    pub fn siblings(&self) -> impl Iterator<Item = (Dot, &Sibling)> {
        self.versions.values()
    }

    /// Number of versions held, tombstones and expired ones included.
    pub fn len(&self) -> usize {
        self.versions.len()
    }

    pub fn is_empty(&self) -> bool {
        self.versions.is_empty()
    }

    /// Merges another replica's record into this one (commutative, associative,
    /// idempotent; see `dvv`).
    pub fn sync(&mut self, other: &Record) {
        self.versions.sync(&other.versions);
    }

    /// A new write by `actor` that saw `seen`; see [`DvvSet::update`].
    pub fn update(&mut self, seen: &Context, actor: ActorId, value: Sibling) -> Dot {
        self.versions.update(seen, actor, value)
    }

    /// A new write whose dot is above `floor`; see [`DvvSet::update_above`].
    pub fn update_above(
        &mut self,
        seen: &Context,
        actor: ActorId,
        floor: u64,
        value: Sibling,
    ) -> Dot {
        self.versions.update_above(seen, actor, floor, value)
    }

    /// This record with every version that expired by `now_ms` turned into a
    /// tombstone under the same dot, HLC and expiry (its bytes dropped); `None` when
    /// nothing had expired. Reads see no difference, at `now_ms` or later (an
    /// expired version is as absent as a tombstone, and under LWW the tombstone keeps
    /// the expired version's place, so an older concurrent value cannot win instead);
    /// the space goes, and once a record holds only tombstones, tombstone GC may
    /// forget it. Merges keep the tombstone over the value (see `Body`).
    pub fn purge_expired(&self, now_ms: u64) -> Option<Record> {
        let mut purged = self.clone();
        let changed = purged.versions.change_values(|_, sibling| {
            let expired = sibling.is_expired(now_ms);
            if expired {
                sibling.body = Body::Tombstone;
            }
            expired
        });
        (changed > 0).then_some(purged)
    }

    /// How many versions `purge_expired(now_ms)` would turn into tombstones.
    pub fn expired(&self, now_ms: u64) -> usize {
        self.siblings()
            .filter(|(_, sibling)| sibling.is_expired(now_ms))
            .count()
    }

    /// Whether every version held is a tombstone (deletes and purged expiries), and
    /// there is at least one: such a record only keeps deleted data from coming back,
    /// and tombstone GC may forget it.
    pub fn only_tombstones(&self) -> bool {
        !self.is_empty() && self.siblings().all(|(_, sibling)| sibling.is_tombstone())
    }

    /// The highest timestamp of any version held: a coordinator's clock observes it
    /// before writing, so a write that supersedes a version also has a later time.
    pub fn max_hlc(&self) -> Option<Hlc> {
        self.siblings().map(|(_, sibling)| sibling.hlc).max()
    }

    /// What a read returns at `now_ms` under `policy`.
    pub fn view(&self, policy: ConflictPolicy, now_ms: u64) -> ReadView<'_> {
        match policy {
            ConflictPolicy::Siblings => {
                let mut live: Vec<(Dot, &Sibling)> = self
                    .siblings()
                    .filter(|(_, sibling)| sibling.is_live(now_ms))
                    .collect();
                live.sort_by_key(|(dot, sibling)| (sibling.hlc, *dot));
                match live.len() {
                    0 => ReadView::Absent,
                    1 => ReadView::Value(live[0].1),
                    _ => ReadView::Siblings(live.into_iter().map(|(_, s)| s).collect()),
                }
            }
            // The newest version wins, deletes and expired writes included: a delete
            // newer than a concurrent write hides it.
            ConflictPolicy::Lww => match self.siblings().max_by_key(|(dot, s)| (s.hlc, *dot)) {
                Some((_, newest)) if newest.is_live(now_ms) => ReadView::Value(newest),
                _ => ReadView::Absent,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn value(hlc: u64, body: &'static [u8]) -> Sibling {
        Sibling {
            hlc: Hlc(hlc),
            expires_at_ms: None,
            body: Body::Bytes(Bytes::from_static(body)),
        }
    }

    fn body_of(sibling: &Sibling) -> &[u8] {
        match &sibling.body {
            Body::Bytes(bytes) => bytes,
            _ => b"",
        }
    }

    #[test]
    fn concurrent_writes_read_as_siblings_until_resolved() {
        let mut record = Record::default();
        record.update(&Context::default(), ActorId(1), value(1, b"a"));
        record.update(&Context::default(), ActorId(1), value(2, b"b"));
        let ReadView::Siblings(both) = record.view(ConflictPolicy::Siblings, 0) else {
            panic!("expected siblings");
        };
        assert_eq!(
            both.iter().map(|s| body_of(s)).collect::<Vec<_>>(),
            [b"a", b"b"]
        );
        let seen = record.context().clone();
        record.update(&seen, ActorId(1), value(3, b"c"));
        assert_eq!(
            record.view(ConflictPolicy::Siblings, 0),
            ReadView::Value(&value(3, b"c"))
        );
    }

    #[test]
    fn lww_returns_newest_including_deletes() {
        let mut record = Record::default();
        record.update(&Context::default(), ActorId(1), value(5, b"a"));
        record.update(&Context::default(), ActorId(2), value(9, b"b"));
        assert_eq!(
            record.view(ConflictPolicy::Lww, 0),
            ReadView::Value(&value(9, b"b"))
        );
        record.update(
            &Context::default(),
            ActorId(3),
            Sibling {
                hlc: Hlc(10),
                expires_at_ms: None,
                body: Body::Tombstone,
            },
        );
        assert_eq!(record.view(ConflictPolicy::Lww, 0), ReadView::Absent);
        // Under siblings the live values still show.
        assert!(matches!(
            record.view(ConflictPolicy::Siblings, 0),
            ReadView::Siblings(_)
        ));
    }

    #[test]
    fn expired_versions_read_as_absent() {
        let mut record = Record::default();
        let mut sibling = value(1, b"a");
        sibling.expires_at_ms = Some(1_000);
        record.update(&Context::default(), ActorId(1), sibling.clone());
        assert_eq!(
            record.view(ConflictPolicy::Siblings, 999),
            ReadView::Value(&sibling)
        );
        assert_eq!(
            record.view(ConflictPolicy::Siblings, 1_000),
            ReadView::Absent
        );
        assert_eq!(record.view(ConflictPolicy::Lww, 1_000), ReadView::Absent);
    }

    #[test]
    fn a_tombstone_outranks_every_body_of_the_same_version() {
        let value = |body| Sibling {
            hlc: Hlc(7),
            expires_at_ms: Some(100),
            body,
        };
        let tombstone = value(Body::Tombstone);
        assert!(tombstone > value(Body::Bytes(Bytes::from_static(&[0xff; 8]))));
        assert!(tombstone > value(Body::Crdt(Bytes::from_static(&[0xff; 8]))));
    }

    #[test]
    fn purging_turns_expired_values_into_tombstones_under_the_same_dot() {
        let mut record = Record::default();
        let mut short = value(1, b"short");
        short.expires_at_ms = Some(1_000);
        record.update(&Context::default(), ActorId(1), short.clone());
        record.update(&Context::default(), ActorId(2), value(2, b"kept"));
        assert_eq!(record.purge_expired(999), None, "nothing expired yet");
        assert_eq!(record.expired(1_000), 1);
        let purged = record.purge_expired(1_000).unwrap();
        assert_eq!(purged.context(), record.context());
        let (dot, tombstone) = purged.siblings().find(|(_, s)| s.is_tombstone()).unwrap();
        assert_eq!(dot.actor, ActorId(1));
        assert_eq!(tombstone.hlc, short.hlc);
        assert_eq!(tombstone.expires_at_ms, short.expires_at_ms);
        assert!(!purged.only_tombstones(), "the live value stays");
        assert_eq!(
            purged.purge_expired(5_000),
            None,
            "purging twice does nothing"
        );
        // A merge with an unpurged copy keeps the tombstone, either way round.
        for merged in [synced(&purged, &record), synced(&record, &purged)] {
            assert_eq!(merged, purged);
        }
    }

    /// Why an expired version becomes a tombstone instead of being dropped: under
    /// LWW the newest version, expired, hides an older concurrent one; dropped, the
    /// older value would come back.
    #[test]
    fn under_lww_a_purged_newest_version_keeps_hiding_an_older_one() {
        let mut record = Record::default();
        record.update(&Context::default(), ActorId(1), value(5, b"old"));
        let mut newest = value(9, b"new");
        newest.expires_at_ms = Some(100);
        record.update(&Context::default(), ActorId(2), newest);
        assert_eq!(record.view(ConflictPolicy::Lww, 100), ReadView::Absent);
        let purged = record.purge_expired(100).unwrap();
        assert_eq!(purged.view(ConflictPolicy::Lww, 100), ReadView::Absent);
        assert!(!purged.only_tombstones());
        let only_old = Record {
            versions: DvvSet::from_parts(
                record.context().clone(),
                record
                    .siblings()
                    .filter(|(_, s)| s.hlc == Hlc(5))
                    .map(|(d, s)| (d, s.clone()))
                    .collect(),
            )
            .unwrap(),
        };
        assert_eq!(
            only_old.view(ConflictPolicy::Lww, 100),
            ReadView::Value(&value(5, b"old")),
            "dropping the expired version would have shown the old value"
        );
    }

    #[test]
    fn only_tombstones_needs_at_least_one() {
        assert!(!Record::default().only_tombstones());
        let mut record = Record::default();
        let mut gone = value(1, b"x");
        gone.body = Body::Tombstone;
        record.update(&Context::default(), ActorId(1), gone);
        assert!(record.only_tombstones());
    }

    fn synced(a: &Record, b: &Record) -> Record {
        let mut out = a.clone();
        out.sync(b);
        out
    }

    /// Three replicas after a random history of puts (some with a TTL), deletes,
    /// merges and purges at the step's time (the step is also the HLC).
    fn history() -> impl Strategy<Value = Vec<Record>> {
        // (replica, op: 0 blind put, 1 put with its context, 2 delete with its
        //  context, 3 merge from `from`, 4 purge; from, ttl: 0 none, else steps)
        prop::collection::vec((0usize..3, 0u8..5, 0usize..3, 0u64..4), 0..28).prop_map(|ops| {
            let mut replicas = vec![Record::default(); 3];
            for (step, (at, op, from, ttl)) in ops.into_iter().enumerate() {
                let step = step as u64 + 1;
                let sibling = |body| Sibling {
                    hlc: Hlc(step),
                    expires_at_ms: (ttl > 0).then_some(step + ttl),
                    body,
                };
                let bytes = Body::Bytes(Bytes::from(step.to_le_bytes().to_vec()));
                let actor = ActorId(at as u64);
                match op {
                    0 => {
                        replicas[at].update(&Context::default(), actor, sibling(bytes));
                    }
                    1 | 2 => {
                        let seen = replicas[at].context().clone();
                        let body = if op == 1 { bytes } else { Body::Tombstone };
                        replicas[at].update(&seen, actor, sibling(body));
                    }
                    3 => {
                        let other = replicas[from].clone();
                        replicas[at].sync(&other);
                    }
                    _ => {
                        if let Some(purged) = replicas[at].purge_expired(step) {
                            replicas[at] = purged;
                        }
                    }
                }
            }
            replicas
        })
    }

    /// What a read shows, with the dots.
    fn shown(record: &Record, policy: ConflictPolicy, now_ms: u64) -> Vec<(Dot, Sibling)> {
        let views: Vec<&Sibling> = match record.view(policy, now_ms) {
            ReadView::Absent => vec![],
            ReadView::Value(one) => vec![one],
            ReadView::Siblings(all) => all,
        };
        views
            .into_iter()
            .filter_map(|shown| {
                record
                    .siblings()
                    .find(|(_, held)| std::ptr::eq(*held, shown))
                    .map(|(dot, held)| (dot, held.clone()))
            })
            .collect()
    }

    fn policy(lww: bool) -> ConflictPolicy {
        if lww {
            ConflictPolicy::Lww
        } else {
            ConflictPolicy::Siblings
        }
    }

    proptest! {
        /// Purging changes nothing a read shows, then or later, under both policies.
        #[test]
        fn purging_is_invisible_to_reads(
            r in history(), now in 0u64..40, later in 0u64..10, lww in any::<bool>(),
        ) {
            for record in &r {
                let purged = record.purge_expired(now).unwrap_or_else(|| record.clone());
                prop_assert_eq!(record.expired(now) > 0, purged != *record);
                prop_assert_eq!(purged.expired(now), 0);
                prop_assert_eq!(
                    shown(&purged, policy(lww), now + later),
                    shown(record, policy(lww), now + later)
                );
            }
        }

        /// A purged copy wins every merge, in either order, and the merge shows what
        /// the merge of the unpurged copies shows (nothing comes back, nothing goes).
        #[test]
        fn a_purged_copy_wins_every_merge(
            r in history(), now in 0u64..40, later in 0u64..10, lww in any::<bool>(),
        ) {
            let purged = r[0].purge_expired(now).unwrap_or_else(|| r[0].clone());
            let tombstones: Vec<Dot> = purged
                .siblings()
                .filter(|(_, s)| s.is_tombstone())
                .map(|(d, _)| d)
                .collect();
            let left = synced(&purged, &r[1]);
            let right = synced(&r[1], &purged);
            prop_assert_eq!(&left, &right);
            for (dot, sibling) in left.siblings() {
                prop_assert!(!tombstones.contains(&dot) || sibling.is_tombstone());
            }
            prop_assert_eq!(
                shown(&left, policy(lww), now + later),
                shown(&synced(&r[0], &r[1]), policy(lww), now + later)
            );
        }

        /// The merge laws hold for records that went through purges.
        #[test]
        fn merge_laws_hold_with_purged_records(r in history()) {
            prop_assert_eq!(synced(&r[0], &r[1]), synced(&r[1], &r[0]));
            prop_assert_eq!(
                synced(&synced(&r[0], &r[1]), &r[2]),
                synced(&r[0], &synced(&r[1], &r[2]))
            );
            prop_assert_eq!(synced(&r[0], &r[0]), r[0].clone());
        }
    }
}
