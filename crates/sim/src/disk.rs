//! `SimDisk`: a `MemoryEngine` whose `sync` takes virtual time, like the group-commit
//! syncer of the real engine. `MemoryEngine::sync` makes writes durable the moment
//! it is called, so a crash could never lose an applied write and a replica that
//! answers before its fsync would go unnoticed. Here a `sync` queues one flush a few
//! virtual ms later (shared by every sync until then); writes become durable only
//! when it runs, and a crash before it loses them. The `SyncWait` it returns is
//! pending until that flush (a crash drops it: `Closed`), exactly as the real
//! engine's resolves when its syncer thread has persisted.

use std::sync::{Arc, Mutex, Weak};

use ringkv_core::{Key, NodeId, Record, TokenRange};
use ringkv_storage::{Engine, Hint, HintStats, MemoryEngine, StorageError, SyncSignal, SyncWait};

use crate::exec::lock;
use crate::sim::{Event, Sim};

struct Pending {
    /// Bumped by every crash: a flush queued before it does nothing.
    epoch: u64,
    /// When the queued flush runs, if one is queued.
    flush_at: Option<u64>,
    /// The syncs the queued flush answers.
    waiters: Vec<SyncSignal>,
}

/// One node's disk; it outlives the node's incarnations.
pub struct SimDisk {
    /// The node it belongs to.
    index: usize,
    memory: Arc<MemoryEngine>,
    pending: Arc<Mutex<Pending>>,
    sim: Weak<Sim>,
}

impl SimDisk {
    pub fn new(sim: &Arc<Sim>, index: usize) -> SimDisk {
        SimDisk {
            index,
            memory: Arc::new(MemoryEngine::new()),
            pending: Arc::new(Mutex::new(Pending {
                epoch: 0,
                flush_at: None,
                waiters: Vec::new(),
            })),
            sim: Arc::downgrade(sim),
        }
    }

    /// Cuts the power: unflushed writes are lost, the queued flush never runs and
    /// its waiters learn the engine closed.
    pub fn crash(&self) {
        self.memory.crash();
        let waiters = {
            let mut pending = lock(&self.pending);
            pending.epoch += 1;
            pending.flush_at = None;
            std::mem::take(&mut pending.waiters)
        };
        // Dropped outside the lock: dropping wakes their tasks.
        drop(waiters);
    }

    /// The disk is replaced by an empty one (after a crash).
    pub fn lose_everything(&self) {
        self.crash();
        self.memory.wipe();
    }
}

impl Engine for SimDisk {
    fn get(&self, key: &Key) -> Result<Option<Record>, StorageError> {
        self.memory.get(key)
    }

    fn apply(
        &self,
        key: &Key,
        change: &mut dyn FnMut(Option<Record>) -> Option<Record>,
    ) -> Result<Option<Record>, StorageError> {
        self.memory.apply(key, change)
    }

    fn scan(
        &self,
        range: TokenRange,
        after: Option<&Key>,
        limit: usize,
    ) -> Result<Vec<(Key, Record)>, StorageError> {
        self.memory.scan(range, after, limit)
    }

    fn delete(&self, key: &Key) -> Result<(), StorageError> {
        self.memory.delete(key)
    }

    /// Not forgotten: a copy the node no longer replicates (the replicas' records
    /// are what the checkers judge).
    fn drop_copy_if(&self, key: &Key, expected: &Record) -> Result<bool, StorageError> {
        let removed = self.memory.remove_if(key, expected)?;
        if removed && let Some(sim) = self.sim.upgrade() {
            let mut core = lock(&sim.core);
            let at = core.now;
            core.trace.log(
                at,
                &format!("n{} drops its copy of {}", self.index, key.to_escaped()),
            );
        }
        Ok(removed)
    }

    /// Also notes what was forgotten in the run's ground truth (`Core::forgotten`).
    fn remove_if(&self, key: &Key, expected: &Record) -> Result<bool, StorageError> {
        let removed = self.memory.remove_if(key, expected)?;
        if removed && let Some(sim) = self.sim.upgrade() {
            let mut core = lock(&sim.core);
            let at = core.now;
            core.trace.log(
                at,
                &format!(
                    "n{} forgets {} ({} tombstones)",
                    self.index,
                    key.to_escaped(),
                    expected.len()
                ),
            );
            core.forgotten.push(crate::sim::Forgotten {
                node: self.index,
                key: key.to_bytes(),
                record: expected.clone(),
                at,
            });
        }
        Ok(removed)
    }

    fn sync(&self) -> SyncWait {
        let Some(sim) = self.sim.upgrade() else {
            return SyncWait::ready(Err(StorageError::Closed));
        };
        let (signal, wait) = SyncWait::pending();
        let mut pending = lock(&self.pending);
        pending.waiters.push(signal);
        if pending.flush_at.is_none() {
            let mut core = lock(&sim.core);
            let at = core.now + core.rng.range(2, 15);
            pending.flush_at = Some(at);
            let (memory, queue, epoch) = (self.memory.clone(), self.pending.clone(), pending.epoch);
            core.schedule(
                at,
                Event::Run(Box::new(move || {
                    let waiters = {
                        let mut pending = lock(&queue);
                        if pending.epoch != epoch {
                            return;
                        }
                        pending.flush_at = None;
                        std::mem::take(&mut pending.waiters)
                    };
                    // The memory engine's own barrier is immediate.
                    let result = memory.sync().wait();
                    for waiter in waiters {
                        waiter.resolve(result.clone());
                    }
                })),
            );
        }
        wait
    }

    fn hint_put(
        &self,
        target: NodeId,
        key: &Key,
        record: &Record,
        now_ms: u64,
    ) -> Result<Hint, StorageError> {
        self.memory.hint_put(target, key, record, now_ms)
    }

    fn hints_for_key(&self, key: &Key) -> Result<Vec<Hint>, StorageError> {
        self.memory.hints_for_key(key)
    }

    fn hint_scan(
        &self,
        target: NodeId,
        after: Option<&Key>,
        limit: usize,
    ) -> Result<Vec<Hint>, StorageError> {
        self.memory.hint_scan(target, after, limit)
    }

    fn hint_remove(&self, hint: &Hint) -> Result<bool, StorageError> {
        self.memory.hint_remove(hint)
    }

    fn hint_stats(&self) -> HintStats {
        self.memory.hint_stats()
    }

    fn meta_get(&self, name: &str) -> Result<Option<Vec<u8>>, StorageError> {
        self.memory.meta_get(name)
    }

    fn meta_put(&self, name: &str, value: &[u8]) -> Result<(), StorageError> {
        self.memory.meta_put(name, value)
    }
}
