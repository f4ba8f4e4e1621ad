//! `MemoryEngine`: the `Engine` of tests and the deterministic simulator.
//!
//! No threads, no clock, no I/O: every call completes before it returns, so a
//! simulation driven from one seed replays exactly. It keeps two images of the data:
//! `live` (what reads see) and `durable` (what survives `crash`), so the simulator can
//! cut the power and check that only unsynced writes are lost. Records are stored as
//! encoded bytes, like on disk, so the corrupt-record paths match `FjallEngine`'s.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Mutex, MutexGuard};

use ringkv_core::{Key, NodeId, Record, TokenRange};

use crate::hints::{self, Hint, HintStats};
use crate::{Engine, StorageError, SyncWait, check_meta, decode_record, storage_key};

/// An in-memory engine with an explicit durable image. One lock guards everything:
/// simple, and plenty for tests.
#[derive(Default)]
pub struct MemoryEngine {
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// Storage key → encoded record: what reads see.
    live: BTreeMap<Vec<u8>, Vec<u8>>,
    /// What the last `sync` made durable.
    durable: BTreeMap<Vec<u8>, Vec<u8>>,
    /// Storage keys written or deleted since the last `sync`.
    dirty: BTreeSet<Vec<u8>>,
    /// Hint key → hint value (see `hints`), live and durable, like the records.
    hints: BTreeMap<Vec<u8>, Vec<u8>>,
    hints_durable: BTreeMap<Vec<u8>, Vec<u8>>,
    hints_dirty: BTreeSet<Vec<u8>>,
    /// Metadata is durable as soon as it is written.
    meta: BTreeMap<String, Vec<u8>>,
    syncs: u64,
}

impl MemoryEngine {
    pub fn new() -> MemoryEngine {
        MemoryEngine::default()
    }

    /// Loses every write not yet covered by a `sync`, as a power cut would: the live
    /// image reverts to the durable one. Metadata is kept (it is always durable).
    pub fn crash(&self) {
        let mut state = self.lock();
        state.live = state.durable.clone();
        state.dirty.clear();
        state.hints = state.hints_durable.clone();
        state.hints_dirty.clear();
    }

    /// The disk is gone: everything, durable or not, metadata included.
    pub fn wipe(&self) {
        *self.lock() = State::default();
    }

    /// How many `sync` calls had writes to make durable.
    pub fn syncs(&self) -> u64 {
        self.lock().syncs
    }

    /// Stores `raw` as the record of `key`, unchecked: for tests of corrupt records.
    ///
    /// # Errors
    /// None; the `Result` matches `FjallEngine::insert_raw_for_test`.
    #[doc(hidden)]
    pub fn insert_raw_for_test(&self, key: &Key, raw: &[u8]) -> Result<(), StorageError> {
        let stored = storage_key::encode(key);
        self.lock().write(stored, Some(raw.to_vec()));
        Ok(())
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic in an `apply` closure poisons the lock before anything was written,
        // so the state is still consistent.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl State {
    fn write(&mut self, stored: Vec<u8>, raw: Option<Vec<u8>>) {
        match raw {
            Some(raw) => self.live.insert(stored.clone(), raw),
            None => self.live.remove(&stored),
        };
        self.dirty.insert(stored);
    }

    fn write_hint(&mut self, stored: Vec<u8>, raw: Option<Vec<u8>>) {
        match raw {
            Some(raw) => self.hints.insert(stored.clone(), raw),
            None => self.hints.remove(&stored),
        };
        self.hints_dirty.insert(stored);
    }

    fn hint(&self, stored: &[u8]) -> Result<Option<Hint>, StorageError> {
        self.hints
            .get(stored)
            .map(|raw| hints::decode(stored, raw))
            .transpose()
    }
}

impl Engine for MemoryEngine {
    fn get(&self, key: &Key) -> Result<Option<Record>, StorageError> {
        let stored = storage_key::encode(key);
        let state = self.lock();
        state
            .live
            .get(&stored)
            .map(|raw| decode_record(key, raw))
            .transpose()
    }

    fn apply(
        &self,
        key: &Key,
        change: &mut dyn FnMut(Option<Record>) -> Option<Record>,
    ) -> Result<Option<Record>, StorageError> {
        let stored = storage_key::encode(key);
        let mut state = self.lock();
        let raw = state.live.get(&stored);
        let current = raw.map(|raw| decode_record(key, raw)).transpose()?;
        let Some(next) = change(current) else {
            return raw.map(|raw| decode_record(key, raw)).transpose();
        };
        state.write(stored, Some(next.encode()));
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
        let state = self.lock();
        let mut found = Vec::with_capacity(limit.min(1024));
        for (stored, raw) in state.live.range::<Vec<u8>, _>(bounds).take(limit) {
            let (token, key) = storage_key::decode(stored)?;
            debug_assert!(range.contains(token));
            let record = decode_record(&key, raw)?;
            found.push((key, record));
        }
        Ok(found)
    }

    fn delete(&self, key: &Key) -> Result<(), StorageError> {
        let stored = storage_key::encode(key);
        self.lock().write(stored, None);
        Ok(())
    }

    fn remove_if(&self, key: &Key, expected: &Record) -> Result<bool, StorageError> {
        let stored = storage_key::encode(key);
        let mut state = self.lock();
        let Some(raw) = state.live.get(&stored) else {
            return Ok(false);
        };
        if decode_record(key, raw)? != *expected {
            return Ok(false);
        }
        state.write(stored, None);
        Ok(true)
    }

    fn sync(&self) -> SyncWait {
        let mut state = self.lock();
        let dirty = std::mem::take(&mut state.dirty);
        if !dirty.is_empty() {
            state.syncs += 1;
        }
        for stored in dirty {
            match state.live.get(&stored).cloned() {
                Some(raw) => state.durable.insert(stored, raw),
                None => state.durable.remove(&stored),
            };
        }
        let dirty = std::mem::take(&mut state.hints_dirty);
        for stored in dirty {
            match state.hints.get(&stored).cloned() {
                Some(raw) => state.hints_durable.insert(stored, raw),
                None => state.hints_durable.remove(&stored),
            };
        }
        SyncWait::ready(Ok(()))
    }

    fn hint_put(
        &self,
        target: NodeId,
        key: &Key,
        record: &Record,
        now_ms: u64,
    ) -> Result<Hint, StorageError> {
        let stored = hints::encode_key(target, key);
        let mut state = self.lock();
        let record = hints::merged(state.hint(&stored)?, record);
        state.write_hint(stored, Some(hints::encode_value(&record, now_ms)));
        Ok(Hint {
            target,
            key: key.clone(),
            record,
            stored_ms: now_ms,
        })
    }

    fn hints_for_key(&self, key: &Key) -> Result<Vec<Hint>, StorageError> {
        let state = self.lock();
        let targets: BTreeSet<NodeId> = state
            .hints
            .keys()
            .filter_map(|stored| hints::target_of(stored))
            .collect();
        let mut found = Vec::new();
        for target in targets {
            if let Some(hint) = state.hint(&hints::encode_key(target, key))? {
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
        let state = self.lock();
        state
            .hints
            .range(hints::range_start(target, after)..)
            .take_while(|(stored, _)| hints::is_for(stored, target))
            .take(limit)
            .map(|(stored, raw)| hints::decode(stored, raw))
            .collect()
    }

    fn hint_remove(&self, hint: &Hint) -> Result<bool, StorageError> {
        let stored = hints::encode_key(hint.target, &hint.key);
        let mut state = self.lock();
        let unchanged = state.hint(&stored)?.is_some_and(|held| held == *hint);
        if unchanged {
            state.write_hint(stored, None);
        }
        Ok(unchanged)
    }

    fn hint_stats(&self) -> HintStats {
        let state = self.lock();
        let mut stats = HintStats::default();
        for (stored, raw) in &state.hints {
            stats.count_stored(stored, raw.len());
        }
        stats
    }

    fn meta_get(&self, name: &str) -> Result<Option<Vec<u8>>, StorageError> {
        check_meta(name, None)?;
        Ok(self.lock().meta.get(name).cloned())
    }

    fn meta_put(&self, name: &str, value: &[u8]) -> Result<(), StorageError> {
        check_meta(name, Some(value))?;
        self.lock().meta.insert(name.to_owned(), value.to_vec());
        Ok(())
    }
}
