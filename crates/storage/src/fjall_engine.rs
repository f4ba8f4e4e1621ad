//! `FjallEngine`: records in a fjall LSM tree, made durable by group commit.
//!
//! One keyspace `data` holds every record under its storage key (DESIGN.md §5: one
//! keyspace, not one per vnode, because idle keyspaces pin journals); `meta` holds
//! node metadata. Both keyspaces are created with `manual_journal_persist`, so a write
//! only appends to the journal's in-process buffer: no syscall per write, and the
//! syncer thread's persist is what makes writes durable. (fjall 3 reads that flag
//! from the keyspace's options, stored when the keyspace is created; the
//! `Database` builder flag of the same name only affects batches and transactions.)

use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard, PoisonError};

use fjall::{Database, Keyspace, KeyspaceCreateOptions, PersistMode};
use ringkv_core::{Key, NodeId, Record, TokenRange};

use crate::group_commit::{GroupCommit, Persist, SyncStats};
use crate::hints::{self, Hint, HintStats};
use crate::journal_file::JournalFile;
use crate::stripes::Stripes;
use crate::{Durability, Engine, StorageError, SyncWait, check_meta, decode_record, storage_key};

/// Keyspace of the records.
const DATA_KEYSPACE: &str = "data";
/// Keyspace of the node metadata.
const META_KEYSPACE: &str = "meta";
/// Keyspace of the hints held for other nodes (see `hints`).
const HINTS_KEYSPACE: &str = "hints";

/// How to open a `FjallEngine`. Build it with `..FjallOptions::default()`: fields
/// may be added.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FjallOptions {
    /// What `sync` waits for.
    pub durability: Durability,
    /// Block cache size, shared by both keyspaces.
    pub cache_bytes: u64,
    /// How the journal is fdatasync'ed under `Durability::Fsync`.
    pub journal_sync: JournalSync,
    /// Under load, the shortest time between two syncs (group commit pacing).
    pub sync_interval: std::time::Duration,
}

impl Default for FjallOptions {
    fn default() -> FjallOptions {
        FjallOptions {
            durability: Durability::Fsync,
            cache_bytes: 64 * 1024 * 1024,
            journal_sync: JournalSync::default(),
            sync_interval: std::time::Duration::ZERO,
        }
    }
}

/// How the syncer makes the journal durable under `Durability::Fsync`. Both are
/// equally durable; they differ in what writers do during the fsync.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum JournalSync {
    /// `persist(Buffer)`, then fdatasync of the journal file outside fjall's journal
    /// lock, so writers keep appending (and the next batch keeps growing) during the
    /// fsync; see `journal_file`. With 64 writers it measured about 1.7× `Locked`.
    #[default]
    Unlocked,
    /// fjall's `persist(SyncData)`: fdatasync while holding the journal lock, so every
    /// writer stalls until it returns. Relies on nothing but fjall's API: the fallback
    /// should a fjall upgrade change its journal files.
    Locked,
}

/// The production engine. Blocking; share it as `Arc<dyn Engine>`. Dropping it (or
/// `close`) persists every write and stops the syncer thread.
pub struct FjallEngine {
    path: PathBuf,
    durability: Durability,
    db: Database,
    data: Keyspace,
    meta: Keyspace,
    hints: Keyspace,
    /// What `hints` holds, counted at open and kept up to date by every change.
    hint_stats: Mutex<HintStats>,
    stripes: Stripes,
    group_commit: GroupCommit,
}

impl FjallEngine {
    /// Opens (or creates) the engine in directory `path`, replaying its journal.
    ///
    /// # Errors
    /// `Locked` when another process holds `path`; `Open` when it cannot be opened or
    /// recovered; `Io` when the syncer thread cannot start.
    pub fn open(path: &Path, options: FjallOptions) -> Result<FjallEngine, StorageError> {
        // Absolute, as fjall makes it: the syncer finds the journal by this path, and
        // the working directory may change while the engine runs.
        let path = &std::path::absolute(path).map_err(|error| StorageError::Open {
            path: path.to_path_buf(),
            reason: error.to_string(),
        })?;
        let open_error = |error: fjall::Error| match error {
            fjall::Error::Locked => StorageError::Locked {
                path: path.to_path_buf(),
            },
            other => StorageError::Open {
                path: path.to_path_buf(),
                reason: other.to_string(),
            },
        };
        let db = Database::builder(path)
            .manual_journal_persist(true)
            .cache_size(options.cache_bytes)
            .open()
            .map_err(open_error)?;
        let keyspace_options = || KeyspaceCreateOptions::default().manual_journal_persist(true);
        let data = db
            .keyspace(DATA_KEYSPACE, keyspace_options)
            .map_err(open_error)?;
        let meta = db
            .keyspace(META_KEYSPACE, keyspace_options)
            .map_err(open_error)?;
        let hints = db
            .keyspace(HINTS_KEYSPACE, keyspace_options)
            .map_err(open_error)?;
        let hint_stats = count_hints(&hints)?;
        let group_commit = GroupCommit::start(persist(&db, path, options), options.sync_interval)?;
        tracing::info!(path = %path.display(), durability = ?options.durability, "storage opened");
        Ok(FjallEngine {
            path: path.to_path_buf(),
            durability: options.durability,
            db,
            data,
            meta,
            hints,
            hint_stats: Mutex::new(hint_stats),
            stripes: Stripes::new(),
            group_commit,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn durability(&self) -> Durability {
        self.durability
    }

    /// What group commit has done so far: persists, callers served, writes covered.
    pub fn sync_stats(&self) -> SyncStats {
        self.group_commit.stats()
    }

    /// Persists every write, then stops the syncer thread. Later writes and syncs of
    /// new writes return `Closed`; reads still work. Idempotent; `Drop` calls it.
    pub fn close(&self) {
        self.group_commit.close();
    }

    /// Stores `raw` as the record of `key`, unchecked: for tests of corrupt records.
    ///
    /// # Errors
    /// As `apply`.
    #[doc(hidden)]
    pub fn insert_raw_for_test(&self, key: &Key, raw: &[u8]) -> Result<(), StorageError> {
        let stored = storage_key::encode(key);
        self.write_checked()?;
        self.data
            .insert(stored, raw)
            .map_err(|error| StorageError::from_fjall("write", error))?;
        self.group_commit.record_write();
        Ok(())
    }

    fn hint_stats_lock(&self) -> MutexGuard<'_, HintStats> {
        // Counts only: a panic mid-update leaves them at worst slightly off.
        self.hint_stats
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn hint(&self, stored: &[u8]) -> Result<Option<(Hint, u64)>, StorageError> {
        let raw = self
            .hints
            .get(stored)
            .map_err(|error| StorageError::from_fjall("hint read", error))?;
        raw.map(|raw| {
            hints::decode(stored, &raw).map(|hint| (hint, (stored.len() + raw.len()) as u64))
        })
        .transpose()
    }

    /// Refuses writes once the engine closed or a persist failed.
    fn write_checked(&self) -> Result<(), StorageError> {
        match self.group_commit.refusal() {
            Some(refusal) => Err(refusal),
            None => Ok(()),
        }
    }
}

/// Counts the hints held (at open: one pass over the keys and value lengths).
fn count_hints(hints: &Keyspace) -> Result<HintStats, StorageError> {
    let mut stats = HintStats::default();
    for guard in hints.iter() {
        let (stored, raw) = guard
            .into_inner()
            .map_err(|error| StorageError::from_fjall("hint count", error))?;
        stats.count_stored(&stored, raw.len());
    }
    Ok(stats)
}

/// What the syncer calls for each batch (see `JournalSync`).
fn persist(db: &Database, path: &Path, options: FjallOptions) -> Persist {
    let db = db.clone();
    let fjall_persist = |db: &Database, mode: PersistMode| {
        db.persist(mode)
            .map_err(|error| StorageError::from_fjall("journal persist", error))
    };
    match (options.durability, options.journal_sync) {
        (Durability::Buffered, _) => Box::new(move || fjall_persist(&db, PersistMode::Buffer)),
        (Durability::Fsync, JournalSync::Locked) => {
            Box::new(move || fjall_persist(&db, PersistMode::SyncData))
        }
        (Durability::Fsync, JournalSync::Unlocked) => {
            let mut journal = JournalFile::new(path);
            Box::new(move || {
                fjall_persist(&db, PersistMode::Buffer)?;
                match journal.sync_data() {
                    Ok(Some(_)) => Ok(()),
                    Ok(None) => {
                        // Only if fjall changed its journal layout: stay durable.
                        metrics::counter!("ringkv_storage_journal_sync_fallbacks_total")
                            .increment(1);
                        tracing::warn!("no fjall journal file found; syncing under fjall's lock");
                        fjall_persist(&db, PersistMode::SyncData)
                    }
                    Err(error) => Err(StorageError::Io {
                        operation: "journal fdatasync",
                        reason: error.to_string(),
                    }),
                }
            })
        }
    }
}

impl Drop for FjallEngine {
    fn drop(&mut self) {
        self.close();
    }
}

impl Engine for FjallEngine {
    fn get(&self, key: &Key) -> Result<Option<Record>, StorageError> {
        let stored = storage_key::encode(key);
        let raw = self
            .data
            .get(&stored)
            .map_err(|error| StorageError::from_fjall("read", error))?;
        raw.map(|raw| decode_record(key, &raw)).transpose()
    }

    fn apply(
        &self,
        key: &Key,
        change: &mut dyn FnMut(Option<Record>) -> Option<Record>,
    ) -> Result<Option<Record>, StorageError> {
        let stored = storage_key::encode(key);
        self.write_checked()?;
        let _locked = self.stripes.lock(key.token());
        let raw = self
            .data
            .get(&stored)
            .map_err(|error| StorageError::from_fjall("read", error))?;
        let current = raw
            .as_ref()
            .map(|raw| decode_record(key, raw))
            .transpose()?;
        let Some(next) = change(current) else {
            // Unchanged: decode again rather than clone every record on the write path.
            return raw.map(|raw| decode_record(key, &raw)).transpose();
        };
        self.data
            .insert(stored, next.encode())
            .map_err(|error| StorageError::from_fjall("write", error))?;
        self.group_commit.record_write();
        Ok(Some(next))
    }

    fn scan(
        &self,
        range: TokenRange,
        after: Option<&Key>,
        limit: usize,
    ) -> Result<Vec<(Key, Record)>, StorageError> {
        let Some(bounds) = storage_key::scan_bounds(range, after) else {
            return Ok(Vec::new());
        };
        let mut found = Vec::with_capacity(limit.min(1024));
        for guard in self.data.range::<Vec<u8>, _>(bounds).take(limit) {
            let (stored, raw) = guard
                .into_inner()
                .map_err(|error| StorageError::from_fjall("scan", error))?;
            let (token, key) = storage_key::decode(&stored)?;
            debug_assert!(range.contains(token));
            let record = decode_record(&key, &raw)?;
            found.push((key, record));
        }
        Ok(found)
    }

    fn delete(&self, key: &Key) -> Result<(), StorageError> {
        let stored = storage_key::encode(key);
        self.write_checked()?;
        let _locked = self.stripes.lock(key.token());
        self.data
            .remove(stored)
            .map_err(|error| StorageError::from_fjall("delete", error))?;
        self.group_commit.record_write();
        Ok(())
    }

    fn remove_if(&self, key: &Key, expected: &Record) -> Result<bool, StorageError> {
        let stored = storage_key::encode(key);
        self.write_checked()?;
        let _locked = self.stripes.lock(key.token());
        let raw = self
            .data
            .get(&stored)
            .map_err(|error| StorageError::from_fjall("read", error))?;
        let Some(raw) = raw else {
            return Ok(false);
        };
        if decode_record(key, &raw)? != *expected {
            return Ok(false);
        }
        self.data
            .remove(stored)
            .map_err(|error| StorageError::from_fjall("delete", error))?;
        self.group_commit.record_write();
        Ok(true)
    }

    fn sync(&self) -> SyncWait {
        self.group_commit.sync()
    }

    fn hint_put(
        &self,
        target: NodeId,
        key: &Key,
        record: &Record,
        now_ms: u64,
    ) -> Result<Hint, StorageError> {
        let stored = hints::encode_key(target, key);
        self.write_checked()?;
        let _locked = self.stripes.lock(key.token());
        let held = self.hint(&stored)?;
        let held_bytes = held.as_ref().map(|(_, bytes)| *bytes);
        let record = hints::merged(held.map(|(hint, _)| hint), record);
        let value = hints::encode_value(&record, now_ms);
        let bytes = (stored.len() + value.len()) as u64;
        self.hints
            .insert(stored, value)
            .map_err(|error| StorageError::from_fjall("hint write", error))?;
        self.group_commit.record_write();
        let mut stats = self.hint_stats_lock();
        if let Some(held_bytes) = held_bytes {
            stats.count(target, held_bytes, false);
        }
        stats.count(target, bytes, true);
        Ok(Hint {
            target,
            key: key.clone(),
            record,
            stored_ms: now_ms,
        })
    }

    fn hints_for_key(&self, key: &Key) -> Result<Vec<Hint>, StorageError> {
        let targets: Vec<NodeId> = self.hint_stats_lock().by_target.keys().copied().collect();
        let mut found = Vec::new();
        for target in targets {
            if let Some((hint, _)) = self.hint(&hints::encode_key(target, key))? {
                found.push(hint);
            }
        }
        Ok(found)
    }

    fn hint_scan(
        &self,
        target: NodeId,
        after: Option<&Key>,
        limit: usize,
    ) -> Result<Vec<Hint>, StorageError> {
        let mut found = Vec::with_capacity(limit.min(1024));
        for guard in self.hints.range(hints::range_start(target, after)..) {
            if found.len() >= limit {
                break;
            }
            let (stored, raw) = guard
                .into_inner()
                .map_err(|error| StorageError::from_fjall("hint scan", error))?;
            if !hints::is_for(&stored, target) {
                break;
            }
            found.push(hints::decode(&stored, &raw)?);
        }
        Ok(found)
    }

    fn hint_remove(&self, hint: &Hint) -> Result<bool, StorageError> {
        let stored = hints::encode_key(hint.target, &hint.key);
        self.write_checked()?;
        let _locked = self.stripes.lock(hint.key.token());
        let Some((held, bytes)) = self.hint(&stored)? else {
            return Ok(false);
        };
        if held != *hint {
            return Ok(false);
        }
        self.hints
            .remove(stored)
            .map_err(|error| StorageError::from_fjall("hint delete", error))?;
        self.group_commit.record_write();
        self.hint_stats_lock().count(hint.target, bytes, false);
        Ok(true)
    }

    fn hint_stats(&self) -> HintStats {
        self.hint_stats_lock().clone()
    }

    fn meta_get(&self, name: &str) -> Result<Option<Vec<u8>>, StorageError> {
        check_meta(name, None)?;
        let value = self
            .meta
            .get(name.as_bytes())
            .map_err(|error| StorageError::from_fjall("metadata read", error))?;
        Ok(value.map(|value| value.to_vec()))
    }

    fn meta_put(&self, name: &str, value: &[u8]) -> Result<(), StorageError> {
        check_meta(name, Some(value))?;
        self.write_checked()?;
        self.meta
            .insert(name.as_bytes(), value)
            .map_err(|error| StorageError::from_fjall("metadata write", error))?;
        // Metadata (node and actor ids) must survive power loss whatever `durability`
        // says: a reused actor id would corrupt causality. Rare, so no group commit.
        self.db
            .persist(PersistMode::SyncData)
            .map_err(|error| StorageError::from_fjall("metadata persist", error))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn journal_holds(dir: &Path, needle: &[u8]) -> bool {
        let bytes = std::fs::read(dir.join("0.jnl")).unwrap();
        bytes.windows(needle.len()).any(|window| window == needle)
    }

    /// A write stays in fjall's buffer (no syscall per write) until a sync moves it
    /// into the journal file.
    #[test]
    fn writes_reach_the_journal_file_only_when_synced() {
        let dir = tempfile::tempdir().unwrap();
        let engine = FjallEngine::open(dir.path(), FjallOptions::default()).unwrap();
        let key = Key::from_stored(Bytes::from_static(b"buffered-key")).unwrap();
        engine
            .apply(&key, &mut |_| Some(Record::default()))
            .unwrap();
        assert!(!journal_holds(dir.path(), b"buffered-key"));
        engine.sync().wait().unwrap();
        assert!(journal_holds(dir.path(), b"buffered-key"));
    }
}
