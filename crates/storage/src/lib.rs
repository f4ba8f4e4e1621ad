//! ringkv storage: the `Engine` a node keeps its records in (DESIGN.md §3, §5).
//!
//! It is: a blocking key → `Record` store ordered by (token, key), with an atomic
//! per-key read-modify-write, token-range scans, a durability barrier (`sync`, group
//! committed) and a small metadata keyspace. It is not: async (callers run it off the
//! runtime), replicated, or aware of versions beyond `Record::sync` (the merge).
//!
//! * `storage_key`: the on-disk key, `token (16 B, big-endian) ‖ key`, and scan bounds.
//! * `error`: `StorageError`.
//! * `sync_wait`: `SyncWait`, the future/blocking handle a `sync` returns.
//! * `group_commit`: the syncer thread that makes many writes durable with one persist.
//! * `fjall_engine`: `FjallEngine`, the real engine (fjall LSM tree), `FjallOptions`,
//!   `JournalSync`.
//! * `journal_file`: fdatasync of fjall's journal outside its lock (why: see there).
//! * `stripes`: the striped key locks that make `apply` atomic per key.
//! * `memory`: `MemoryEngine`, for tests and the simulator: no threads, no clock, and a
//!   `crash` that loses unsynced writes.
//!
//! Limits: stored keys (token + key) ≤ `MAX_STORED_KEY_BYTES`, fjall's u16 key length;
//! every `Key` fits (checked at compile time against `ringkv_core::MAX_KEY_BYTES`);
//! metadata names ≤ `MAX_META_NAME_BYTES`, values ≤ `MAX_META_VALUE_BYTES`; at most
//! `MAX_QUEUED_SYNCS` callers wait on one persist; 1024 key-lock stripes.

mod error;
mod fjall_engine;
mod group_commit;
mod hints;
mod journal_file;
mod memory;
pub mod storage_key;
mod stripes;
mod sync_wait;

pub use error::StorageError;
pub use fjall_engine::{FjallEngine, FjallOptions, JournalSync};
pub use group_commit::{MAX_QUEUED_SYNCS, SyncStats};
pub use hints::{Hint, HintCount, HintStats};
pub use memory::MemoryEngine;
pub use storage_key::MAX_STORED_KEY_BYTES;
pub use sync_wait::{SyncSignal, SyncWait};

use ringkv_core::{Key, NodeId, Record, TokenRange};

/// Longest metadata name (`meta_get` / `meta_put`).
pub const MAX_META_NAME_BYTES: usize = 255;
/// Largest metadata value: metadata is node ids and the like, not data.
pub const MAX_META_VALUE_BYTES: usize = 64 * 1024;

/// When a write counts as durable (config key `durability`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Durability {
    /// Acknowledge after the journal is fdatasync'ed (group commit). Survives power loss.
    #[default]
    Fsync,
    /// Acknowledge once the journal reached the OS page cache. Survives a process crash,
    /// NOT a machine crash or power loss: recent acknowledged writes can be lost. Unsafe.
    Buffered,
}

/// Where a node keeps its records. Every method blocks (disk I/O, locks): call it from
/// a blocking thread, never inline in an async task. Used as `Arc<dyn Engine>`.
///
/// Records are ordered by (token, key), so a token range is one contiguous scan.
/// Writes (`apply`, `merge`, `delete`, `remove_if`) are visible to reads at once but
/// durable only once a `sync` issued after them resolves.
pub trait Engine: Send + Sync + 'static {
    /// The stored record of `key`, if any.
    ///
    /// # Errors
    /// `Corrupt` when the stored bytes do not decode; `Io` on a read failure.
    fn get(&self, key: &Key) -> Result<Option<Record>, StorageError>;

    /// Atomic read-modify-write of one key: `change` gets the stored record and returns
    /// the record to store, or `None` to leave storage unchanged. Returns what is
    /// stored afterwards. Two concurrent `apply`s of one key never lose an update.
    ///
    /// `change` runs under the key's lock: it must not call back into the engine.
    /// The write is not durable until a `sync` issued after this returns resolves.
    ///
    /// # Errors
    /// `Corrupt` when the stored record does not decode (then nothing is written and
    /// `change` is not called); `Io`, `Poisoned`, `Closed` from the engine.
    fn apply(
        &self,
        key: &Key,
        change: &mut dyn FnMut(Option<Record>) -> Option<Record>,
    ) -> Result<Option<Record>, StorageError>;

    /// Merges `incoming` into the stored record (`Record::sync`) and returns the result.
    ///
    /// # Errors
    /// As `apply`.
    fn merge(&self, key: &Key, incoming: &Record) -> Result<Record, StorageError> {
        let stored = self.apply(key, &mut |stored| {
            let mut record = stored.unwrap_or_default();
            record.sync(incoming);
            Some(record)
        })?;
        Ok(stored.expect("merge always writes a record"))
    }

    /// Records whose token is in `range` (inclusive), in (token, key) order, strictly
    /// after `after` when given, at most `limit` of them. Page through a range by
    /// passing the last key of one page as `after` of the next. A range whose start
    /// is after its end is empty.
    ///
    /// # Errors
    /// `Corrupt` at the first stored key or record that does not decode; `Io`.
    fn scan(
        &self,
        range: TokenRange,
        after: Option<&Key>,
        limit: usize,
    ) -> Result<Vec<(Key, Record)>, StorageError>;

    /// Removes `key` physically (no tombstone version: that is `apply`'s business).
    /// Not durable until a later `sync` resolves. Removing an absent key is not an error.
    ///
    /// # Errors
    /// `Io`, `Poisoned`, `Closed` from the engine.
    fn delete(&self, key: &Key) -> Result<(), StorageError>;

    /// Removes the record of `key` physically if the stored one is still exactly
    /// `expected` (atomically, under the key's lock): tombstone GC decides on a record
    /// it read, and a write that landed since must keep the key. Returns whether it
    /// was removed. Not durable until a later `sync` resolves.
    ///
    /// # Errors
    /// `Corrupt` when the stored record does not decode (then nothing is removed);
    /// `Io`, `Poisoned`, `Closed`.
    fn remove_if(&self, key: &Key, expected: &Record) -> Result<bool, StorageError>;

    /// `remove_if` for a copy this node keeps of a key it no longer replicates (a
    /// ring change moved it elsewhere), as opposed to a record forgotten by
    /// tombstone GC: the same operation, told apart so a test engine can account
    /// for the two differently.
    ///
    /// # Errors
    /// As `remove_if`.
    fn drop_copy_if(&self, key: &Key, expected: &Record) -> Result<bool, StorageError> {
        self.remove_if(key, expected)
    }

    /// Durability barrier: resolves once every write applied before this call is
    /// durable per the engine's `Durability`. Await it from async code, or `wait()`.
    /// The call itself only queues (it blocks only when `MAX_QUEUED_SYNCS` callers
    /// already wait); errors (a failed persist, a closed engine) come through the
    /// returned `SyncWait`.
    fn sync(&self) -> SyncWait;

    /// Stores `record` as a hint for `target` (merged into any hint already held for
    /// that key), stamped `now_ms`. Not durable until a later `sync` resolves.
    /// Returns the hint as stored.
    ///
    /// # Errors
    /// `Corrupt` when the stored hint does not decode (then nothing is written);
    /// `Io`, `Poisoned`, `Closed`.
    fn hint_put(
        &self,
        target: NodeId,
        key: &Key,
        record: &Record,
        now_ms: u64,
    ) -> Result<Hint, StorageError>;

    /// Every hint held for `key`, whatever its target (cheap when none is held).
    ///
    /// # Errors
    /// `Corrupt`; `Io`.
    fn hints_for_key(&self, key: &Key) -> Result<Vec<Hint>, StorageError>;

    /// `target`'s hints in (token, key) order, strictly after `after` when given, at
    /// most `limit`.
    ///
    /// # Errors
    /// `Corrupt` at the first hint that does not decode; `Io`.
    fn hint_scan(
        &self,
        target: NodeId,
        after: Option<&Key>,
        limit: usize,
    ) -> Result<Vec<Hint>, StorageError>;

    /// Removes `hint` if the stored one is still exactly it (same record, same stamp):
    /// a hint merged into since it was read stays, to be handed off again. Returns
    /// whether it was removed. Not durable until a later `sync` resolves.
    ///
    /// # Errors
    /// `Io`, `Poisoned`, `Closed`.
    fn hint_remove(&self, hint: &Hint) -> Result<bool, StorageError>;

    /// How many hints this node holds, and their bytes, by target.
    fn hint_stats(&self) -> HintStats;

    /// A metadata value (node id, actor id), kept apart from the records.
    ///
    /// # Errors
    /// `InvalidMetaName`; `Io`.
    fn meta_get(&self, name: &str) -> Result<Option<Vec<u8>>, StorageError>;

    /// Stores a metadata value; it is durable (fsync'ed, whatever the `Durability`)
    /// when this returns.
    ///
    /// # Errors
    /// `InvalidMetaName`, `MetaValueTooLarge`; `Io`, `Poisoned`, `Closed`.
    fn meta_put(&self, name: &str, value: &[u8]) -> Result<(), StorageError>;
}

/// Checks a metadata name and value against the limits shared by every engine.
fn check_meta(name: &str, value: Option<&[u8]>) -> Result<(), StorageError> {
    if name.is_empty() || name.len() > MAX_META_NAME_BYTES {
        return Err(StorageError::InvalidMetaName {
            name: name.escape_default().to_string(),
            max_bytes: MAX_META_NAME_BYTES,
        });
    }
    match value {
        Some(value) if value.len() > MAX_META_VALUE_BYTES => Err(StorageError::MetaValueTooLarge {
            name: name.to_owned(),
            len: value.len(),
            max_bytes: MAX_META_VALUE_BYTES,
        }),
        _ => Ok(()),
    }
}

/// Decodes a stored record of `key`, turning garbage into `Corrupt`.
fn decode_record(key: &Key, raw: &[u8]) -> Result<Record, StorageError> {
    Record::decode(raw).map_err(|error| StorageError::Corrupt {
        key: key.to_escaped(),
        reason: error.to_string(),
    })
}
