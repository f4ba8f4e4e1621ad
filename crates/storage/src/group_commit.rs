//! Group commit: one syncer thread makes many writes durable with one persist
//! (DESIGN.md §5).
//!
//! Writers count each applied write (`record_write`). A `sync` call takes the count at
//! that moment as its target and queues a waiter. The syncer takes every queued
//! waiter, reads the count again (it covers every target taken so far), persists
//! once, marks that count durable and answers the whole batch. While it persists, new
//! waiters queue up for the next batch, so N concurrent writers share about one
//! fdatasync instead of paying N. A waiter whose target is already durable is answered
//! at once, without a syscall.
//!
//! A failed persist is reported to every waiter of its batch and to every later sync:
//! what reached the disk is unknown, so the engine stops acknowledging writes.
//!
//! Pacing: once a batch held `PACE_MIN_BATCH` waiters or more (the node is busy),
//! the next persist starts no sooner than `interval` after the last one started.
//! Each fdatasync has a fixed CPU cost (block layer, device queue, interrupts: about
//! a fifth of a node's CPU on the 2-vCPU VM of bench/results) that fewer, larger
//! batches share; a light load (small batches) is never delayed. Measured on a
//! 3-node cluster, interleaved pairs with and without 2 ms pacing (the VM's speed
//! varies ±20 % between runs, so only pairs mean anything): redis-benchmark SET at
//! 50 clients won 10 of 11 pairs (-1 % to +29 %, p99 0.7-2 ms lower), `ringkv
//! bench` HTTP writes at 64 clients +4 % to +8 % in 3 pairs, 4 and 16 clients not
//! slower. With 4 waiters as the threshold, 4 clients lost 20 %: hence 8.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::{StorageError, SyncSignal, SyncWait};

/// Most waiters queued for one persist. A `sync` beyond it blocks until the syncer
/// takes the queue (backpressure; counted in `ringkv_storage_sync_queue_full_total`).
pub const MAX_QUEUED_SYNCS: usize = 64 * 1024;

/// What the syncer has done since the engine opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SyncStats {
    /// Persist calls (fdatasync under `Durability::Fsync`).
    pub syncs: u64,
    /// `sync` callers answered by those persists.
    pub waiters_served: u64,
    /// Writes those persists made durable.
    pub writes_synced: u64,
    /// Time spent inside those persists.
    pub persist_time: Duration,
}

/// Batches of at least this many waiters make the syncer pace its persists.
pub const PACE_MIN_BATCH: usize = 8;

/// Makes the engine's writes durable; called by the syncer thread only.
pub type Persist = Box<dyn FnMut() -> Result<(), StorageError> + Send + 'static>;

pub struct GroupCommit {
    shared: Arc<Shared>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

struct Shared {
    /// Writes applied so far.
    written: AtomicU64,
    /// Writes known durable: a prefix of `written`.
    durable: AtomicU64,
    /// Set once a persist failed; `Queue::failure` says why.
    failed: AtomicBool,
    /// Set by `close`: writes are refused from then on.
    closed: AtomicBool,
    queue: Mutex<Queue>,
    /// Wakes the syncer when a waiter queues or the engine closes.
    work: Condvar,
    /// Wakes `sync` callers blocked on a full queue.
    space: Condvar,
    syncs: AtomicU64,
    waiters_served: AtomicU64,
    writes_synced: AtomicU64,
    persist_nanos: AtomicU64,
}

struct Queue {
    waiters: Vec<Waiter>,
    phase: Phase,
    failure: Option<StorageError>,
    /// The syncer waits on `work` for waiters and nobody has woken it yet: only then
    /// must `sync` wake it (a futex call per write saved while it is busy).
    syncer_idle: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Running,
    /// `close` was called: serve what is queued, persist a last time, stop.
    Closing,
    Closed,
}

struct Waiter {
    target: u64,
    answer: SyncSignal,
}

impl GroupCommit {
    /// Starts the syncer thread, which calls `persist` for every batch, under load
    /// at most once per `interval` (zero: never paced).
    ///
    /// # Errors
    /// `Io` when the thread cannot be spawned.
    pub fn start(persist: Persist, interval: Duration) -> Result<GroupCommit, StorageError> {
        let shared = Arc::new(Shared {
            written: AtomicU64::new(0),
            durable: AtomicU64::new(0),
            failed: AtomicBool::new(false),
            closed: AtomicBool::new(false),
            queue: Mutex::new(Queue {
                waiters: Vec::new(),
                phase: Phase::Running,
                failure: None,
                syncer_idle: false,
            }),
            work: Condvar::new(),
            space: Condvar::new(),
            syncs: AtomicU64::new(0),
            waiters_served: AtomicU64::new(0),
            writes_synced: AtomicU64::new(0),
            persist_nanos: AtomicU64::new(0),
        });
        let for_thread = Arc::clone(&shared);
        let thread = std::thread::Builder::new()
            .name("ringkv-syncer".into())
            .spawn(move || for_thread.run(persist, interval))
            .map_err(|error| StorageError::Io {
                operation: "start the syncer thread",
                reason: error.to_string(),
            })?;
        Ok(GroupCommit {
            shared,
            thread: Mutex::new(Some(thread)),
        })
    }

    /// Counts one applied write; call it after the write reached the engine.
    pub fn record_write(&self) {
        self.shared.written.fetch_add(1, Ordering::SeqCst);
    }

    /// Why writes must stop, once a persist failed or the engine closed. Two atomic
    /// loads on the write path; the queue lock only after a failure.
    pub fn refusal(&self) -> Option<StorageError> {
        if self.shared.failed.load(Ordering::SeqCst) {
            return self.shared.lock_queue().failure.clone();
        }
        if self.shared.closed.load(Ordering::SeqCst) {
            return Some(StorageError::Closed);
        }
        None
    }

    /// Resolves once every write recorded before this call is durable.
    pub fn sync(&self) -> SyncWait {
        let shared = &self.shared;
        let target = shared.written.load(Ordering::SeqCst);
        if shared.durable.load(Ordering::SeqCst) >= target {
            return SyncWait::ready(Ok(()));
        }
        let mut queue = shared.lock_queue();
        if queue.waiters.len() >= MAX_QUEUED_SYNCS {
            metrics::counter!("ringkv_storage_sync_queue_full_total").increment(1);
        }
        while queue.waiters.len() >= MAX_QUEUED_SYNCS && queue.phase != Phase::Closed {
            queue = shared
                .space
                .wait(queue)
                .unwrap_or_else(|poisoned| poisoned.into_inner());
        }
        if let Some(failure) = &queue.failure {
            return SyncWait::ready(Err(failure.clone()));
        }
        if queue.phase == Phase::Closed {
            // Checked again: the final persist may have covered the target meanwhile.
            return SyncWait::ready(if shared.durable.load(Ordering::SeqCst) >= target {
                Ok(())
            } else {
                Err(StorageError::Closed)
            });
        }
        let (answer, wait) = SyncWait::pending();
        queue.waiters.push(Waiter { target, answer });
        // One wake per idle spell: until the woken syncer runs (under CPU contention,
        // long after the notify), later callers would otherwise find it still idle
        // and each pay a futex syscall for nothing.
        let idle = std::mem::replace(&mut queue.syncer_idle, false);
        drop(queue);
        if idle {
            shared.work.notify_one();
        }
        wait
    }

    /// Serves every queued sync, persists a last time and stops the syncer thread.
    /// Later syncs of writes that were not made durable return `Closed`. Idempotent.
    pub fn close(&self) {
        self.shared.closed.store(true, Ordering::SeqCst);
        {
            let mut queue = self.shared.lock_queue();
            if queue.phase == Phase::Running {
                queue.phase = Phase::Closing;
            }
        }
        self.shared.work.notify_one();
        let thread = self
            .thread
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .take();
        if let Some(thread) = thread
            && thread.join().is_err()
        {
            tracing::error!("the storage syncer thread panicked");
        }
    }

    pub fn stats(&self) -> SyncStats {
        let shared = &self.shared;
        SyncStats {
            syncs: shared.syncs.load(Ordering::SeqCst),
            waiters_served: shared.waiters_served.load(Ordering::SeqCst),
            writes_synced: shared.writes_synced.load(Ordering::SeqCst),
            persist_time: Duration::from_nanos(shared.persist_nanos.load(Ordering::SeqCst)),
        }
    }
}

impl Shared {
    fn lock_queue(&self) -> MutexGuard<'_, Queue> {
        // Nothing panics while holding the queue lock; if it did, the queue is still
        // consistent (each change is a single push, take or assignment).
        self.queue
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The syncer thread.
    fn run(&self, mut persist: Persist, interval: Duration) {
        // When the last persist started, if its batch was large enough to pace.
        let mut paced_from: Option<Instant> = None;
        loop {
            if let Some(started) = paced_from.take() {
                let resume = started + interval;
                let now = Instant::now();
                if resume > now && !self.closed.load(Ordering::SeqCst) {
                    std::thread::sleep(resume - now);
                }
            }
            let (batch, closing) = self.next_batch();
            let started = Instant::now();
            let needed = batch.iter().map(|waiter| waiter.target).max().unwrap_or(0);
            // Read after taking the batch: it covers every target in it.
            let covered = self.written.load(Ordering::SeqCst);
            let durable = self.durable.load(Ordering::SeqCst);
            let result = if self.failed.load(Ordering::SeqCst) {
                Err(self
                    .lock_queue()
                    .failure
                    .clone()
                    .unwrap_or(StorageError::Closed))
            } else if needed > durable || (closing && covered > durable) {
                if batch.len() >= PACE_MIN_BATCH && !interval.is_zero() {
                    paced_from = Some(started);
                }
                self.persist_once(&mut persist, covered, durable, batch.len())
            } else {
                Ok(())
            };
            for waiter in batch {
                debug_assert!(result.is_err() || waiter.target <= covered);
                // A waiter that stopped waiting dropped its receiver: nothing to tell.
                waiter.answer.resolve(result.clone());
            }
            if closing {
                let mut queue = self.lock_queue();
                if queue.waiters.is_empty() {
                    queue.phase = Phase::Closed;
                    drop(queue);
                    self.space.notify_all();
                    return;
                }
            }
        }
    }

    /// Waits for waiters (or `close`) and takes them all.
    fn next_batch(&self) -> (Vec<Waiter>, bool) {
        let mut queue = self.lock_queue();
        while queue.waiters.is_empty() && queue.phase == Phase::Running {
            queue.syncer_idle = true;
            queue = self
                .work
                .wait(queue)
                .unwrap_or_else(|poisoned| poisoned.into_inner());
        }
        queue.syncer_idle = false;
        let batch = std::mem::take(&mut queue.waiters);
        let closing = queue.phase != Phase::Running;
        drop(queue);
        if batch.len() >= MAX_QUEUED_SYNCS {
            self.space.notify_all();
        }
        (batch, closing)
    }

    fn persist_once(
        &self,
        persist: &mut Persist,
        covered: u64,
        durable: u64,
        waiters: usize,
    ) -> Result<(), StorageError> {
        let started = Instant::now();
        // A panic in fjall must not kill the syncer: nobody would answer later syncs.
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(&mut *persist))
            .unwrap_or_else(|_| {
                Err(StorageError::Poisoned {
                    reason: "journal persist panicked".into(),
                })
            });
        let elapsed = started.elapsed();
        metrics::histogram!("ringkv_storage_sync_seconds").record(elapsed.as_secs_f64());
        let nanos = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX);
        self.persist_nanos.fetch_add(nanos, Ordering::SeqCst);
        metrics::counter!("ringkv_storage_syncs_total").increment(1);
        metrics::histogram!("ringkv_storage_sync_batch_writes").record(waiters as f64);
        self.syncs.fetch_add(1, Ordering::SeqCst);
        match &result {
            Ok(()) => {
                self.durable.fetch_max(covered, Ordering::SeqCst);
                self.waiters_served
                    .fetch_add(waiters as u64, Ordering::SeqCst);
                self.writes_synced
                    .fetch_add(covered.saturating_sub(durable), Ordering::SeqCst);
            }
            Err(error) => {
                tracing::error!(%error, "journal persist failed; refusing further writes");
                let mut queue = self.lock_queue();
                queue.failure = Some(StorageError::Poisoned {
                    reason: error.to_string(),
                });
                self.failed.store(true, Ordering::SeqCst);
            }
        }
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counting(persists: Arc<AtomicU64>) -> Persist {
        Box::new(move || {
            persists.fetch_add(1, Ordering::SeqCst);
            Ok(())
        })
    }

    #[test]
    fn sync_without_writes_needs_no_persist() {
        let persists = Arc::new(AtomicU64::new(0));
        let group = GroupCommit::start(counting(persists.clone()), Duration::ZERO).unwrap();
        group.sync().wait().unwrap();
        group.record_write();
        group.sync().wait().unwrap();
        group.sync().wait().unwrap();
        assert_eq!(persists.load(Ordering::SeqCst), 1);
        let stats = group.stats();
        assert_eq!(
            (stats.syncs, stats.waiters_served, stats.writes_synced),
            (1, 1, 1)
        );
    }

    #[test]
    fn close_persists_unsynced_writes_and_refuses_later_syncs() {
        let persists = Arc::new(AtomicU64::new(0));
        let group = GroupCommit::start(counting(persists.clone()), Duration::ZERO).unwrap();
        group.record_write();
        group.close();
        assert_eq!(persists.load(Ordering::SeqCst), 1);
        group.sync().wait().unwrap();
        group.record_write();
        assert_eq!(group.sync().wait(), Err(StorageError::Closed));
        group.close();
    }

    #[test]
    fn failed_persist_reaches_its_waiters_and_every_later_sync() {
        let group = GroupCommit::start(
            Box::new(|| {
                Err(StorageError::Io {
                    operation: "persist",
                    reason: "disk on fire".into(),
                })
            }),
            Duration::ZERO,
        )
        .unwrap();
        group.record_write();
        assert!(matches!(group.sync().wait(), Err(StorageError::Io { .. })));
        group.record_write();
        assert!(matches!(
            group.sync().wait(),
            Err(StorageError::Poisoned { .. })
        ));
        assert!(matches!(
            group.refusal(),
            Some(StorageError::Poisoned { .. })
        ));
    }

    #[test]
    fn panicking_persist_fails_syncs_instead_of_hanging_them() {
        let group =
            GroupCommit::start(Box::new(|| panic!("persist blew up")), Duration::ZERO).unwrap();
        group.record_write();
        assert!(matches!(
            group.sync().wait(),
            Err(StorageError::Poisoned { .. })
        ));
        group.record_write();
        assert!(matches!(
            group.sync().wait(),
            Err(StorageError::Poisoned { .. })
        ));
        assert!(matches!(
            group.refusal(),
            Some(StorageError::Poisoned { .. })
        ));
        group.close();
    }

    #[test]
    fn sync_is_awaitable() {
        let group = GroupCommit::start(Box::new(|| Ok(())), Duration::ZERO).unwrap();
        group.record_write();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        runtime.block_on(group.sync()).unwrap();
    }

    /// A persist whose calls are timed; the first one waits for `gate` (waiters
    /// pile up meanwhile).
    fn timed(calls: Arc<Mutex<Vec<Instant>>>, gate: std::sync::mpsc::Receiver<()>) -> Persist {
        Box::new(move || {
            let first = {
                let mut calls = calls.lock().unwrap();
                calls.push(Instant::now());
                calls.len() == 1
            };
            if first {
                gate.recv().unwrap();
            }
            Ok(())
        })
    }

    /// After a batch of PACE_MIN_BATCH waiters or more, the next persist waits for
    /// the interval (from the start of the last one).
    #[test]
    fn a_busy_syncer_paces_its_persists() {
        let calls = Arc::new(Mutex::new(Vec::new()));
        let (open, gate) = std::sync::mpsc::channel();
        let interval = Duration::from_millis(80);
        let group = GroupCommit::start(timed(calls.clone(), gate), interval).unwrap();
        group.record_write();
        let first = group.sync();
        // Once the first persist runs (held by the gate), queue a large batch.
        while calls.lock().unwrap().is_empty() {
            std::thread::yield_now();
        }
        let batch: Vec<SyncWait> = (0..PACE_MIN_BATCH)
            .map(|_| {
                group.record_write();
                group.sync()
            })
            .collect();
        let opened = Instant::now();
        open.send(()).unwrap();
        first.wait().unwrap();
        for wait in batch {
            wait.wait().unwrap();
        }
        group.record_write();
        group.sync().wait().unwrap();
        let calls = calls.lock().unwrap().clone();
        assert_eq!(calls.len(), 3, "the gated one, the batch, the one after it");
        // The syncer paces from the instant it took the batch, which it did only
        // once the gate opened: the next persist cannot start sooner than `interval`
        // after `opened`. Unpaced, it would start microseconds after the batch's.
        assert!(
            calls[2] - opened >= interval,
            "paced by {:?} from the gate's opening",
            calls[2] - opened
        );
        group.close();
    }

    /// One waiter at a time (a light load) is never delayed, whatever the interval.
    #[test]
    fn a_light_load_is_not_paced() {
        let persists = Arc::new(AtomicU64::new(0));
        let group = GroupCommit::start(counting(persists.clone()), Duration::from_secs(5)).unwrap();
        let started = Instant::now();
        for _ in 0..20 {
            group.record_write();
            group.sync().wait().unwrap();
        }
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{:?}",
            started.elapsed()
        );
        assert_eq!(persists.load(Ordering::SeqCst), 20);
        group.close();
    }

    /// Writers racing an idle syncer are all served: the one wake per idle spell
    /// (`syncer_idle` cleared by the waker) loses none of them.
    #[test]
    fn syncs_racing_an_idle_syncer_are_all_served() {
        let persists = Arc::new(AtomicU64::new(0));
        let group =
            Arc::new(GroupCommit::start(counting(persists.clone()), Duration::ZERO).unwrap());
        let (done, finished) = std::sync::mpsc::channel();
        for _ in 0..8 {
            let group = group.clone();
            let done = done.clone();
            std::thread::spawn(move || {
                for round in 0..300 {
                    group.record_write();
                    let synced = group.sync().wait();
                    if round % 50 == 0 {
                        // Let the syncer run out of work and go idle again.
                        std::thread::sleep(Duration::from_millis(1));
                    }
                    if synced.is_err() {
                        break;
                    }
                }
                let _ = done.send(());
            });
        }
        drop(done);
        for writer in 0..8 {
            let served = finished.recv_timeout(Duration::from_secs(30));
            assert!(
                served.is_ok(),
                "writer {writer} of 8 still waits on its sync"
            );
        }
        // Every write durable; a sync finding its write already durable is not queued.
        let stats = group.stats();
        assert_eq!(stats.writes_synced, 8 * 300);
        assert!(stats.waiters_served <= 8 * 300, "{stats:?}");
        group.close();
    }
}
