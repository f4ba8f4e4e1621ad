//! What a node removes from its own storage, and what makes removing it safe
//! (issue 7: TTL purge and tombstone GC; the policy is in `crate::tombstone`, the
//! sweep in `crate::purge`).
//!
//! * `purge_expired`: the versions of a key that expired become tombstones under
//!   their own dots (`Record::purge_expired`), through `Node::apply`, so the Merkle
//!   trees and the arcs' change stamps stay right.
//! * `forget`: records that hold only tombstones are removed for real
//!   (`Engine::remove_if`: only if unchanged since they were judged), and their
//!   digests leave the trees. Forgetting does not count as a change of the arc (see
//!   `ArcChanges`).
//! * `ArcChanges`: a stamp per arc, bumped by every change of a record in it. Anti-
//!   entropy confirms that a peer held what this node held at some stamp; that says
//!   something about a key only while the key has not changed here since, and the
//!   arc's stamp is the O(1) way to know (a stamp, not a clock: two changes in one
//!   millisecond are still ordered). Forgetting a record leaves the stamp alone: what
//!   the peer was confirmed to hold is still true of every other key of the arc.
//! * The dot floor: a forgotten record no longer tells which counters this node's
//!   actor issued for the key, and issuing them again would make a new write look
//!   like the deleted one to every replica or client that still knows the old dots.
//!   So before forgetting, the node raises a floor above every counter of its actor
//!   in what it forgets, stored durably with the actor it belongs to, and numbers
//!   new writes above it (`DvvSet::update_above`).

use std::sync::MutexGuard;
use std::sync::atomic::Ordering;

use ringkv_core::{Key, Record, Token, TokenRange};

use super::{Node, NodeError};

/// Metadata name of the dot floor: actor id (8 B, big-endian) ‖ floor (8 B).
const DOT_FLOOR: &str = "dot_floor";

/// When each arc of a node's trees last changed, as a stamp that every change
/// bumps. Only ever compared with stamps taken from the same node.
#[derive(Debug, Default)]
pub struct ArcChanges {
    /// The stamp of the latest change.
    stamp: u64,
    /// Per tree (in `Forest::trees` order): the stamp of its last change.
    by_tree: Vec<u64>,
}

impl ArcChanges {
    /// A record of tree `tree` (if it falls in one) changed.
    pub(super) fn touch(&mut self, tree: Option<usize>) {
        self.stamp += 1;
        if let Some(changed) = tree.and_then(|index| self.by_tree.get_mut(index)) {
            *changed = self.stamp;
        }
    }

    /// The trees were rebuilt (`trees` of them): every arc counts as changed.
    pub(super) fn rebuilt(&mut self, trees: usize) {
        self.stamp += 1;
        self.by_tree = vec![self.stamp; trees];
    }
}

impl Node {
    pub(super) fn changes(&self) -> MutexGuard<'_, ArcChanges> {
        self.changes
            .lock()
            .expect("arc change lock is never poisoned")
    }

    /// `tree_roots`, with the stamp they reflect: a confirmation that a peer's roots
    /// equal these covers every arc unchanged since that stamp (`arc_of`).
    pub fn tree_roots_stamped(&self, arcs: &[TokenRange]) -> (Vec<Option<u64>>, u64) {
        let trees = self.trees.lock().expect("tree lock is never poisoned");
        let roots = arcs
            .iter()
            .map(|arc| trees.tree(*arc).map(|tree| tree.root()))
            .collect();
        (roots, self.changes().stamp)
    }

    /// The arc of this node's trees that holds `token`, and the stamp of its last
    /// change; `None` outside every arc.
    pub fn arc_of(&self, token: Token) -> Option<(TokenRange, u64)> {
        let trees = self.trees.lock().expect("tree lock is never poisoned");
        let index = trees.position(token)?;
        let changed = self.changes().by_tree.get(index).copied()?;
        Some((trees.trees()[index].range(), changed))
    }

    /// Every stored record in token order, strictly after `after`, at most `limit`.
    ///
    /// # Errors
    /// Storage errors, including a corrupt record.
    pub fn scan(&self, after: Option<&Key>, limit: usize) -> Result<Vec<(Key, Record)>, NodeError> {
        Ok(self.engine.scan(TokenRange::FULL, after, limit)?)
    }

    /// Turns the versions of `key` that expired by `now_ms` into tombstones; returns
    /// how many it turned.
    ///
    /// # Errors
    /// Storage errors, including a corrupt record (left untouched).
    pub fn purge_expired(&self, key: &Key, now_ms: u64) -> Result<usize, NodeError> {
        let mut purged = 0;
        self.apply(key, &mut |stored| {
            let stored = stored?;
            purged = stored.expired(now_ms);
            stored.purge_expired(now_ms)
        })?;
        Ok(purged)
    }

    /// Forgets each record that is still stored exactly as given (the caller judged it
    /// collectable: only tombstones, see `crate::tombstone`); returns, per record,
    /// whether it was removed. The dot floor is raised durably first. Not durable
    /// until a later `sync`; a crash before that only brings the tombstones back.
    ///
    /// # Errors
    /// Storage errors (records before the failing one may be gone).
    pub fn forget(&self, records: &[(Key, Record)]) -> Result<Vec<bool>, NodeError> {
        debug_assert!(records.iter().all(|(_, record)| record.only_tombstones()));
        self.remove_unchanged(records, false)
    }

    /// Drops this node's copies of records it no longer replicates (a ring change
    /// gave their range to other nodes, which streamed them: `Topology::clean_up`),
    /// each only if still stored exactly as given, as `forget` does (dot floor
    /// first). Returns, per record, whether it was removed.
    ///
    /// # Errors
    /// Storage errors (records before the failing one may be gone).
    pub fn drop_copies(&self, records: &[(Key, Record)]) -> Result<Vec<bool>, NodeError> {
        self.remove_unchanged(records, true)
    }

    fn remove_unchanged(
        &self,
        records: &[(Key, Record)],
        copies: bool,
    ) -> Result<Vec<bool>, NodeError> {
        let top = records
            .iter()
            .map(|(_, record)| record.context().max_counter(self.actor))
            .max()
            .unwrap_or(0);
        self.raise_dot_floor(top)?;
        let mut removed = Vec::with_capacity(records.len());
        for (key, record) in records {
            let gone = if copies {
                self.engine.drop_copy_if(key, record)?
            } else {
                self.engine.remove_if(key, record)?
            };
            if gone {
                let digest = super::digest(key, record);
                self.trees
                    .lock()
                    .expect("tree lock is never poisoned")
                    .toggle(key.token(), digest);
            }
            removed.push(gone);
        }
        Ok(removed)
    }

    /// Every counter of this node's actor in a record it forgot is at most this.
    pub fn dot_floor(&self) -> u64 {
        self.dot_floor.load(Ordering::SeqCst)
    }

    /// Loads the dot floor stored for this node's actor (after a clean restart the
    /// actor, and so its floor, carry on); returns it. A floor stored for another
    /// actor is ignored: a new actor issued nothing yet.
    ///
    /// # Errors
    /// Storage errors, or a stored floor of the wrong size.
    pub fn restore_dot_floor(&self) -> Result<u64, NodeError> {
        let Some(raw) = self.engine.meta_get(DOT_FLOOR)? else {
            return Ok(0);
        };
        let parts: Option<([u8; 8], [u8; 8])> = raw
            .get(..8)
            .zip(raw.get(8..))
            .and_then(|(actor, floor)| Some((actor.try_into().ok()?, floor.try_into().ok()?)));
        let Some((actor, floor)) = parts else {
            return Err(NodeError::CorruptMetadata {
                name: DOT_FLOOR,
                len: raw.len(),
            });
        };
        if u64::from_be_bytes(actor) == self.actor.0 {
            self.dot_floor
                .fetch_max(u64::from_be_bytes(floor), Ordering::SeqCst);
        }
        Ok(self.dot_floor())
    }

    /// Raises the dot floor to `floor` if it is lower, durably before it takes effect.
    fn raise_dot_floor(&self, floor: u64) -> Result<(), NodeError> {
        let _one_at_a_time = self
            .floor_raise
            .lock()
            .expect("floor lock is never poisoned");
        if floor <= self.dot_floor() {
            return Ok(());
        }
        let mut value = self.actor.0.to_be_bytes().to_vec();
        value.extend_from_slice(&floor.to_be_bytes());
        self.engine.meta_put(DOT_FLOOR, &value)?;
        self.dot_floor.fetch_max(floor, Ordering::SeqCst);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use bytes::Bytes;
    use ringkv_core::{ActorId, ConflictPolicy, Context, Dot, Limits};
    use ringkv_storage::{Engine, MemoryEngine};

    use super::*;
    use crate::node::{Write, WriteBody};
    use crate::{Clock, ManualClock};

    fn node(engine: &Arc<MemoryEngine>, actor: u64) -> Node {
        let node = Node::new(
            engine.clone(),
            Arc::new(ManualClock::new(1_000)),
            ActorId(actor),
            ConflictPolicy::Siblings,
        );
        node.rebuild_trees(vec![TokenRange::FULL]).unwrap();
        node
    }

    fn key(raw: &'static str) -> Key {
        Key::parse(raw, &Limits::default()).unwrap()
    }

    fn write(node: &Node, k: &'static str, body: WriteBody, seen: &Context) -> Context {
        let written = node
            .write(Write {
                key: key(k),
                body,
                seen: seen.clone(),
                ttl: None,
            })
            .unwrap();
        written.durable.wait().unwrap();
        written.version
    }

    fn put(node: &Node, k: &'static str, seen: &Context) -> Context {
        write(node, k, WriteBody::Value(Bytes::from_static(b"v")), seen)
    }

    fn root(node: &Node) -> Option<u64> {
        node.tree_roots(&[TokenRange::FULL])[0]
    }

    #[test]
    fn forgetting_removes_the_record_and_its_digest_but_not_the_arc_stamp() {
        let engine = Arc::new(MemoryEngine::new());
        let node = node(&engine, 1);
        put(&node, "other", &Context::default());
        let empty_but_other = root(&node);
        let seen = put(&node, "k", &Context::default());
        write(&node, "k", WriteBody::Delete, &seen);
        let record = node.read_own(&key("k")).unwrap().unwrap();
        assert!(record.only_tombstones());
        let (arc, stamp) = node.arc_of(key("k").token()).unwrap();
        assert_eq!(arc, TokenRange::FULL);
        assert_eq!(
            node.tree_roots_stamped(&[arc]).1,
            stamp,
            "the delete was last"
        );

        assert_eq!(node.forget(&[(key("k"), record.clone())]).unwrap(), [true]);
        assert_eq!(node.read_own(&key("k")).unwrap(), None);
        assert_eq!(root(&node), empty_but_other, "its digest left the tree");
        assert_eq!(node.arc_of(key("k").token()).unwrap().1, stamp);
        // Gone already: nothing more to forget.
        assert_eq!(node.forget(&[(key("k"), record)]).unwrap(), [false]);
    }

    #[test]
    fn a_record_that_changed_since_it_was_judged_is_not_forgotten() {
        let engine = Arc::new(MemoryEngine::new());
        let node = node(&engine, 1);
        let seen = put(&node, "k", &Context::default());
        write(&node, "k", WriteBody::Delete, &seen);
        let judged = node.read_own(&key("k")).unwrap().unwrap();
        let (_, stamp) = node.arc_of(key("k").token()).unwrap();
        put(&node, "k", &Context::default());
        assert!(node.arc_of(key("k").token()).unwrap().1 > stamp);
        assert_eq!(node.forget(&[(key("k"), judged)]).unwrap(), [false]);
        assert_eq!(node.read_own(&key("k")).unwrap().unwrap().len(), 2);
    }

    /// Without the floor, the write after forgetting would get dot (1, 1) again,
    /// which every client holding the old version and every replica still holding
    /// the tombstone take for the deleted value.
    #[test]
    fn a_write_after_forgetting_is_numbered_above_every_forgotten_dot() {
        let engine = Arc::new(MemoryEngine::new());
        let node = node(&engine, 1);
        let mut seen = Context::default();
        for _ in 0..3 {
            seen = put(&node, "k", &seen);
        }
        write(&node, "k", WriteBody::Delete, &seen);
        let record = node.read_own(&key("k")).unwrap().unwrap();
        assert_eq!(record.context().max_counter(ActorId(1)), 4);
        node.forget(&[(key("k"), record)]).unwrap();
        assert_eq!(node.dot_floor(), 4);

        let version = put(&node, "k", &Context::default());
        let new = Dot {
            actor: ActorId(1),
            counter: 5,
        };
        assert!(version.contains(new));
        assert!(
            !version.contains(Dot {
                actor: ActorId(1),
                counter: 4
            }),
            "the client's version is what it sent plus its write"
        );
        let stored = node.read_own(&key("k")).unwrap().unwrap();
        assert_eq!(
            stored.siblings().map(|(dot, _)| dot).collect::<Vec<_>>(),
            [new]
        );
        assert_eq!(stored.context().max_counter(ActorId(1)), 5);

        // A clean restart keeps the actor and its floor; a new actor starts afresh.
        assert_eq!(self::node(&engine, 1).restore_dot_floor().unwrap(), 4);
        assert_eq!(self::node(&engine, 2).restore_dot_floor().unwrap(), 0);
        engine.meta_put(DOT_FLOOR, b"short").unwrap();
        assert!(matches!(
            self::node(&engine, 1).restore_dot_floor(),
            Err(NodeError::CorruptMetadata { .. })
        ));
    }

    #[test]
    fn purging_an_expired_value_changes_the_tree_and_the_arc_stamp() {
        let engine = Arc::new(MemoryEngine::new());
        let clock = Arc::new(ManualClock::new(1_000));
        let node = Node::new(
            engine.clone(),
            clock.clone(),
            ActorId(1),
            ConflictPolicy::Siblings,
        );
        node.rebuild_trees(vec![TokenRange::FULL]).unwrap();
        node.write(Write {
            key: key("t"),
            body: WriteBody::Value(Bytes::from_static(b"x")),
            seen: Context::default(),
            ttl: Some(Duration::from_secs(1)),
        })
        .unwrap();
        let (before, stamp) = node.tree_roots_stamped(&[TokenRange::FULL]);
        assert_eq!(node.purge_expired(&key("t"), clock.now_ms()).unwrap(), 0);
        assert_eq!(
            node.tree_roots_stamped(&[TokenRange::FULL]),
            (before.clone(), stamp)
        );
        clock.advance(1_000);
        assert_eq!(node.purge_expired(&key("t"), clock.now_ms()).unwrap(), 1);
        let (after, later) = node.tree_roots_stamped(&[TokenRange::FULL]);
        assert_ne!(after, before);
        assert!(later > stamp);
        let record = node.read_own(&key("t")).unwrap().unwrap();
        assert!(record.only_tombstones());
        // The tree holds exactly what storage holds.
        let rebuilt = Node::new(engine, clock, ActorId(1), ConflictPolicy::Siblings);
        rebuilt.rebuild_trees(vec![TokenRange::FULL]).unwrap();
        assert_eq!(rebuilt.tree_roots(&[TokenRange::FULL]), after);
    }
}
