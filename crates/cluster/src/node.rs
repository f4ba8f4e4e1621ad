//! The local replica: applies versioned writes to the engine and reads records back.
//!
//! A write is a DVV `update` inside one atomic read-modify-write of the key, so two
//! writes racing on one key both land (as siblings) instead of one overwriting the
//! other. Its durability is a separate step (`Written::durable`), so many writes can
//! share one fsync (group commit in `ringkv-storage`).
//!
//! All methods block on storage: callers on an async runtime run them off it.

use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use ringkv_core::merkle::{Forest, key_digest};
use ringkv_core::{
    ActorId, Body, ConflictPolicy, Context, CrdtError, HlcClock, Key, NodeId, Operation, Record,
    Sibling, crdt,
};
use ringkv_storage::{Engine, Hint, HintStats, StorageError, SyncWait};

use crate::Clock;

mod collection;
mod trees;

use collection::ArcChanges;

/// What a write stores.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WriteBody {
    Value(Bytes),
    /// A value that supersedes every version the coordinating replica holds, as
    /// under `ConflictPolicy::Lww` (the RESP interface resolves siblings by LWW:
    /// its `SET` writes this, one round trip, instead of reading first).
    Overwrite(Bytes),
    Delete,
    /// An operation on the CRDT the key holds (or a new one): applied to the join of
    /// the states this replica holds, superseding them (see `ringkv_core::crdt`).
    Crdt(Operation),
}

/// One client write, validated at the edge.
#[derive(Debug, Clone)]
pub struct Write {
    pub key: Key,
    pub body: WriteBody,
    /// The version the client read (empty for a blind write): the write supersedes
    /// exactly what it names.
    pub seen: Context,
    /// Time to live; `None` keeps the value until it is overwritten or deleted.
    pub ttl: Option<Duration>,
}

/// A write applied to the engine, not yet necessarily durable.
pub struct Written {
    /// The key's record as stored after the write: what replication sends to the
    /// other replicas.
    pub record: Record,
    /// What the writer now knows: the version it sent plus its own write. A later
    /// write carrying it supersedes this write, and nothing the writer never saw.
    pub version: Context,
    /// Resolves when the write is durable (per the engine's durability setting).
    pub durable: SyncWait,
}

/// Why a node could not serve a request.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error("ttl of {ttl_secs} s puts the expiry past the end of time")]
    TtlOverflow { ttl_secs: u64 },
    #[error(
        "the key already holds {siblings} concurrent versions (the limit is {MAX_SIBLINGS}); \
         read it and write back with its version to resolve them"
    )]
    TooManySiblings { siblings: usize },
    #[error("this node already holds {held_bytes} bytes of hints (max_hints_bytes = {max_bytes})")]
    HintsFull { held_bytes: u64, max_bytes: u64 },
    #[error("stored metadata {name} is corrupt ({len} bytes)")]
    CorruptMetadata { name: &'static str, len: usize },
    /// The key holds another type (bytes, or another CRDT type).
    #[error("{0}")]
    WrongType(String),
    /// A CRDT operation breaks a limit or is malformed.
    #[error("{0}")]
    InvalidOperation(String),
    /// A stored CRDT state does not decode (left untouched).
    #[error("{0}")]
    CorruptState(String),
}

impl From<CrdtError> for NodeError {
    fn from(error: CrdtError) -> NodeError {
        match error {
            CrdtError::WrongType { .. } => NodeError::WrongType(error.to_string()),
            CrdtError::Invalid(message) => NodeError::InvalidOperation(message),
            CrdtError::Corrupt(_) => NodeError::CorruptState(error.to_string()),
        }
    }
}

/// Most versions (siblings, tombstones included) a client write may leave on a key.
/// Blind writes to one key add a version each until a write carrying the key's
/// version resolves them; past this, such a write is refused instead of growing the
/// record (and the cost of every later write) without bound. Merges from other
/// replicas are never refused: that would lose acknowledged data.
pub const MAX_SIBLINGS: usize = 64;

/// Metadata name of `save_member_state`.
const MEMBER_STATE: &str = "member_state";
const LEFT_MEMBERS: &str = "left_members";

/// Most members that left `Node::save_left_members` keeps (without their tokens,
/// each fits in well under 128 bytes: within a metadata value).
pub const MAX_SAVED_LEFT: usize = 256;

/// `Node::saved_left_members`, straight from an engine (before a node exists).
///
/// # Errors
/// Storage errors; `CorruptMetadata` when the stored list does not decode or holds
/// a member that has not left, or too many.
pub fn saved_left_members(engine: &dyn Engine) -> Result<Vec<ringkv_core::Member>, NodeError> {
    let Some(raw) = engine.meta_get(LEFT_MEMBERS)? else {
        return Ok(Vec::new());
    };
    let corrupt = NodeError::CorruptMetadata {
        name: LEFT_MEMBERS,
        len: raw.len(),
    };
    let members: Vec<ringkv_core::Member> = postcard::from_bytes(&raw).map_err(|_| corrupt)?;
    if members.len() > MAX_SAVED_LEFT
        || members
            .iter()
            .any(|member| member.state != ringkv_core::MemberState::Left)
    {
        return Err(NodeError::CorruptMetadata {
            name: LEFT_MEMBERS,
            len: raw.len(),
        });
    }
    Ok(members)
}

/// `Node::saved_member_state`, straight from an engine (before a node exists).
///
/// # Errors
/// Storage errors.
pub fn saved_member_state(
    engine: &dyn Engine,
) -> Result<Option<ringkv_core::MemberState>, NodeError> {
    Ok(match engine.meta_get(MEMBER_STATE)?.as_deref() {
        Some([0]) => Some(ringkv_core::MemberState::Joining),
        Some([1]) => Some(ringkv_core::MemberState::Normal),
        Some([2]) => Some(ringkv_core::MemberState::Leaving),
        Some([3]) => Some(ringkv_core::MemberState::Left),
        Some([4]) => Some(ringkv_core::MemberState::Joined),
        Some([5]) => Some(ringkv_core::MemberState::Drained),
        _ => None,
    })
}

/// One node's replica of the data.
pub struct Node {
    engine: Arc<dyn Engine>,
    clock: Arc<dyn Clock>,
    hlc: Mutex<HlcClock>,
    actor: ActorId,
    policy: ConflictPolicy,
    /// Most bytes of hints this node holds for others (`max_hints_bytes`).
    max_hints_bytes: u64,
    /// Merkle trees of the arcs this node replicates (anti-entropy), kept up to date
    /// by every write; empty until `rebuild_trees`.
    trees: Mutex<Forest>,
    /// When each arc of `trees` last changed (tombstone GC by acknowledgement).
    /// Locked only while `trees` is held, so the two always agree.
    changes: Mutex<ArcChanges>,
    /// Every counter of `actor` in a record this node forgot is at most this: new
    /// writes are numbered above it (see `DvvSet::update_above`).
    dot_floor: AtomicU64,
    /// Held while the dot floor is raised (stored, then set).
    floor_raise: Mutex<()>,
}

/// What a record contributes to its Merkle leaf.
fn digest(key: &Key, record: &Record) -> u64 {
    key_digest(key.as_bytes(), &record.encode())
}

impl Node {
    /// `actor` must be unique to this data directory's incarnation (see `ActorId`).
    pub fn new(
        engine: Arc<dyn Engine>,
        clock: Arc<dyn Clock>,
        actor: ActorId,
        policy: ConflictPolicy,
    ) -> Node {
        Node {
            engine,
            clock,
            hlc: Mutex::new(HlcClock::default()),
            actor,
            policy,
            max_hints_bytes: u64::MAX,
            trees: Mutex::new(Forest::default()),
            changes: Mutex::new(ArcChanges::default()),
            dot_floor: AtomicU64::new(0),
            floor_raise: Mutex::new(()),
        }
    }

    /// `Engine::apply`, keeping the Merkle trees in step: XORs out the digest of
    /// the record replaced and XORs in the new one once it is stored.
    fn apply(
        &self,
        key: &Key,
        change: &mut dyn FnMut(Option<Record>) -> Option<Record>,
    ) -> Result<Option<Record>, StorageError> {
        let mut replaced = None;
        let mut changed = false;
        let stored = self.engine.apply(key, &mut |current| {
            let before = current.as_ref().map(|record| digest(key, record));
            let next = change(current);
            if next.is_some() {
                replaced = before;
                changed = true;
            }
            next
        })?;
        if changed {
            let mut trees = self.trees.lock().expect("tree lock is never poisoned");
            if let Some(old) = replaced {
                trees.toggle(key.token(), old);
            }
            if let Some(new) = &stored {
                trees.toggle(key.token(), digest(key, new));
            }
            self.changes().touch(trees.position(key.token()));
        }
        Ok(stored)
    }

    /// Records this node's own place in the ring durably (a join or decommission
    /// step), so a restart resumes from it: membership lives in memory, and after
    /// a restart of every node nobody else would remember that this one left.
    ///
    /// # Errors
    /// Storage errors.
    pub fn save_member_state(&self, state: ringkv_core::MemberState) -> Result<(), NodeError> {
        let code = match state {
            ringkv_core::MemberState::Joining => 0,
            ringkv_core::MemberState::Normal => 1,
            ringkv_core::MemberState::Leaving => 2,
            ringkv_core::MemberState::Left => 3,
            ringkv_core::MemberState::Joined => 4,
            ringkv_core::MemberState::Drained => 5,
        };
        self.engine.meta_put(MEMBER_STATE, &[code])?;
        Ok(())
    }

    /// Records the members that left the ring (decommissioned or removed; at most
    /// `MAX_SAVED_LEFT`, without their tokens), so a restart of every node does not
    /// forget a removal: a removed node coming back must hear it was removed, not
    /// serve its stale data as a member.
    ///
    /// # Errors
    /// Storage errors.
    pub fn save_left_members(&self, members: &[ringkv_core::Member]) -> Result<(), NodeError> {
        let left: Vec<ringkv_core::Member> = members
            .iter()
            .filter(|member| member.state == ringkv_core::MemberState::Left)
            .take(MAX_SAVED_LEFT)
            .map(|member| ringkv_core::Member {
                tokens: Vec::new(),
                vnodes: 0,
                ..member.clone()
            })
            .collect();
        let mut left = left;
        let encoded = loop {
            let encoded = postcard::to_allocvec(&left).map_err(|_| NodeError::CorruptMetadata {
                name: LEFT_MEMBERS,
                len: 0,
            })?;
            // Long addresses could overflow a metadata value: keep what fits.
            if encoded.len() <= ringkv_storage::MAX_META_VALUE_BYTES || left.pop().is_none() {
                break encoded;
            }
        };
        self.engine.meta_put(LEFT_MEMBERS, &encoded)?;
        Ok(())
    }

    /// The state `save_member_state` recorded last, if any (an unknown byte reads
    /// as none: the node then starts as it would without it).
    ///
    /// # Errors
    /// Storage errors.
    pub fn saved_member_state(&self) -> Result<Option<ringkv_core::MemberState>, NodeError> {
        saved_member_state(self.engine.as_ref())
    }

    /// Caps the hints this node holds for others (`max_hints_bytes`).
    #[must_use]
    pub fn with_max_hints_bytes(mut self, max_bytes: u64) -> Node {
        self.max_hints_bytes = max_bytes;
        self
    }

    pub fn policy(&self) -> ConflictPolicy {
        self.policy
    }

    pub fn now_ms(&self) -> u64 {
        self.clock.now_ms()
    }

    /// The node's monotonic clock (intervals, throttles).
    pub fn monotonic_ms(&self) -> u64 {
        self.clock.monotonic_ms()
    }

    /// The stored record of `key`, tombstones and expired versions included, merged
    /// with any hint this node holds for the key (so a read that reaches a hint
    /// holder sees what it holds for others).
    ///
    /// # Errors
    /// Storage errors, including a corrupt stored record.
    pub fn read(&self, key: &Key) -> Result<Option<Record>, NodeError> {
        let mut record = self.engine.get(key)?;
        if self.engine.hint_stats().is_empty() {
            return Ok(record);
        }
        for hint in self.engine.hints_for_key(key)? {
            record
                .get_or_insert_with(Record::default)
                .sync(&hint.record);
        }
        Ok(record)
    }

    /// The stored record of `key` only (no hints): what this node holds as a replica.
    ///
    /// # Errors
    /// Storage errors, including a corrupt stored record.
    pub fn read_own(&self, key: &Key) -> Result<Option<Record>, NodeError> {
        Ok(self.engine.get(key)?)
    }

    /// Holds `record` for `target` as a hint; returns the barrier to wait on before
    /// acknowledging. Refused past `max_hints_bytes`.
    ///
    /// # Errors
    /// `HintsFull`; storage errors.
    pub fn store_hint(
        &self,
        target: NodeId,
        key: &Key,
        record: &Record,
    ) -> Result<SyncWait, NodeError> {
        let held_bytes = self.engine.hint_stats().total().bytes;
        if held_bytes >= self.max_hints_bytes {
            metrics::counter!("ringkv_hints_refused_total").increment(1);
            return Err(NodeError::HintsFull {
                held_bytes,
                max_bytes: self.max_hints_bytes,
            });
        }
        self.engine
            .hint_put(target, key, record, self.clock.now_ms())?;
        metrics::counter!("ringkv_hints_stored_total").increment(1);
        Ok(self.engine.sync())
    }

    /// `target`'s hints in token order after `after`, at most `limit`.
    ///
    /// # Errors
    /// Storage errors.
    pub fn hints(
        &self,
        target: NodeId,
        after: Option<&Key>,
        limit: usize,
    ) -> Result<Vec<Hint>, NodeError> {
        Ok(self.engine.hint_scan(target, after, limit)?)
    }

    /// Forgets `hint` (handed off, or expired) unless it changed since it was read.
    ///
    /// # Errors
    /// Storage errors.
    pub fn forget_hint(&self, hint: &Hint) -> Result<bool, NodeError> {
        Ok(self.engine.hint_remove(hint)?)
    }

    /// What hints this node holds, by target.
    pub fn hint_stats(&self) -> HintStats {
        self.engine.hint_stats()
    }

    /// Applies a write as a new version of its key.
    ///
    /// Under `ConflictPolicy::Lww` the write also supersedes every version this node
    /// holds for the key, so siblings only come from writes coordinated elsewhere at
    /// the same time.
    ///
    /// A CRDT operation (`WriteBody::Crdt`) is applied to the join of the live
    /// states the record holds and supersedes every version held (see
    /// `ringkv_core::crdt::apply`); a delete of a key holding a live CRDT also
    /// supersedes every version held.
    ///
    /// # Errors
    /// Storage errors (the write was not applied), a ttl past the end of time,
    /// `TooManySiblings`; `WrongType` for a value written over a live CRDT or an
    /// operation on a key holding another type, `InvalidOperation` for a CRDT limit,
    /// `CorruptState` for a stored state that does not decode. Nothing is written
    /// on error.
    pub fn write(&self, write: Write) -> Result<Written, NodeError> {
        let now_ms = self.clock.now_ms();
        let expires_at_ms = match write.ttl {
            None => None,
            Some(ttl) => Some(
                u64::try_from(ttl.as_millis())
                    .ok()
                    .and_then(|ttl_ms| now_ms.checked_add(ttl_ms))
                    .ok_or(NodeError::TtlOverflow {
                        ttl_secs: ttl.as_secs(),
                    })?,
            ),
        };
        let mut version = write.seen.clone();
        let mut written = None;
        let mut refused: Option<NodeError> = None;
        let stored = self.apply(&write.key, &mut |stored| {
            let mut record = stored.unwrap_or_default();
            let mut seen = write.seen.clone();
            let holds_crdt = crdt::holds_crdt(&record, now_ms);
            let overwrite = matches!(write.body, WriteBody::Overwrite(_));
            if self.policy == ConflictPolicy::Lww || holds_crdt || overwrite {
                // A delete of a CRDT key removes what this replica holds of it (a
                // CRDT read shows no version to send back); writes concurrent with
                // it elsewhere survive, as under LWW.
                seen.join(record.context());
            }
            let hlc = {
                let mut clock = self.hlc.lock().expect("hlc lock is never poisoned");
                if let Some(max) = record.max_hlc() {
                    clock.observe(max);
                }
                clock.now(now_ms)
            };
            let body = match &write.body {
                WriteBody::Value(bytes) | WriteBody::Overwrite(bytes) => Body::Bytes(bytes.clone()),
                WriteBody::Delete => Body::Tombstone,
                WriteBody::Crdt(operation) => {
                    // Under the key's lock: two operations racing on this node both
                    // count, the second applied to the state the first left.
                    return match crdt::apply(
                        &mut record,
                        operation,
                        self.actor,
                        self.dot_floor(),
                        hlc,
                        now_ms,
                    ) {
                        Ok(_) => {
                            written = Some(record.context().clone());
                            Some(record)
                        }
                        Err(error) => {
                            refused = Some(error.into());
                            None
                        }
                    };
                }
            };
            if holds_crdt && matches!(body, Body::Bytes(_)) {
                refused = Some(NodeError::WrongType(
                    "key holds a CRDT, not a plain value; use /v1/crdt/{type}/{key}, or \
                     delete it first"
                        .into(),
                ));
                return None;
            }
            let sibling = Sibling {
                hlc,
                expires_at_ms,
                body,
            };
            let dot = record.update_above(&seen, self.actor, self.dot_floor(), sibling);
            if record.len() > MAX_SIBLINGS {
                // Refused, nothing stored: the record would only keep growing.
                refused = Some(NodeError::TooManySiblings {
                    siblings: record.len() - 1,
                });
                return None;
            }
            seen.insert(dot);
            written = Some(seen);
            Some(record)
        })?;
        if let Some(error) = refused {
            return Err(error);
        }
        if let Some(seen) = written {
            version = seen;
        }
        Ok(Written {
            record: stored.unwrap_or_default(),
            version,
            durable: self.engine.sync(),
        })
    }

    /// A durability barrier over every write applied so far. Does not block (unless
    /// the storage's bounded sync queue is full), so async code may call it.
    pub fn sync(&self) -> SyncWait {
        self.engine.sync()
    }

    /// Merges a record from another replica (replication, read repair) into this one.
    /// Returns the durability barrier to wait on before acknowledging.
    ///
    /// # Errors
    /// Storage errors, including a corrupt stored record (left untouched).
    pub fn replicate(&self, key: &Key, record: &Record) -> Result<SyncWait, NodeError> {
        if let Some(max) = record.max_hlc() {
            self.hlc
                .lock()
                .expect("hlc lock is never poisoned")
                .observe(max);
        }
        // Nothing is written when the record adds nothing (the coordinator's own
        // replica after its `Update`); the barrier still covers earlier writes.
        self.apply(key, &mut |stored| {
            let mut merged = stored.clone().unwrap_or_default();
            merged.sync(record);
            (stored.as_ref() != Some(&merged)).then_some(merged)
        })?;
        Ok(self.engine.sync())
    }
}

#[cfg(test)]
mod tests;
