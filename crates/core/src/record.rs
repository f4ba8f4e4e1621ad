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
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Body {
    Bytes(Bytes),
    /// A delete. Kept so the delete wins over older versions on other replicas.
    Tombstone,
    /// A CRDT state; reserved for the CRDT types, opaque here.
    Crdt(Bytes),
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
        !matches!(self.body, Body::Tombstone) && self.expires_at_ms.is_none_or(|at| now_ms < at)
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
}
