//! `SyncWait`: the answer to `Engine::sync`, awaited by async callers, waited on by
//! blocking ones, or handed a continuation (`then`) that the resolving thread runs.
//!
//! Why a continuation: a replica write is answered once durable. Awaiting the sync
//! means the syncer thread wakes a task, which wakes the connection's writer: two
//! hand-offs per write. With `then`, the syncer itself hands the answer to the
//! writer: one.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

use crate::StorageError;

/// What runs once a sync resolves, on the thread that resolves it. It must not block.
pub type Then = Box<dyn FnOnce(Result<(), StorageError>) + Send + 'static>;

/// Resolves once the writes before the `sync` call are durable, or with the error
/// that prevented it. Awaiting it never blocks a runtime thread.
#[must_use = "a sync only guarantees durability once it is awaited, waited on or given a continuation"]
pub struct SyncWait {
    state: State,
}

enum State {
    /// Already known: the writes were durable, or the sync could not start.
    Ready(Option<Result<(), StorageError>>),
    /// Answered by the syncer thread (or the simulator's disk).
    Pending(Arc<Slot>),
}

/// Where a pending sync's result meets whoever waits for it.
struct Slot {
    state: Mutex<SlotState>,
    /// Signalled on resolve, for blocking waiters.
    resolved: Condvar,
}

enum SlotState {
    Waiting {
        waker: Option<Waker>,
        then: Option<Then>,
        /// A thread blocks in `wait`: only then must `resolve` notify the condvar
        /// (a futex syscall even with nobody waiting; the syncer resolves ~25
        /// waiters per persist, nearly all of them async).
        blocked: bool,
    },
    /// Resolved; the result is taken by the first reader.
    Done(Option<Result<(), StorageError>>),
}

impl Slot {
    fn lock(&self) -> MutexGuard<'_, SlotState> {
        // Nothing panics while holding the lock (assignments and takes only), so a
        // poisoned state is still consistent.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl SyncWait {
    /// A sync that is already resolved.
    pub fn ready(result: Result<(), StorageError>) -> SyncWait {
        SyncWait {
            state: State::Ready(Some(result)),
        }
    }

    /// A sync that resolves when the returned `SyncSignal` does: for engines whose
    /// writes become durable elsewhere (the group-commit syncer thread, the
    /// simulator's disk). A signal dropped unresolved reads as `Closed`.
    pub fn pending() -> (SyncSignal, SyncWait) {
        let slot = Arc::new(Slot {
            state: Mutex::new(SlotState::Waiting {
                waker: None,
                then: None,
                blocked: false,
            }),
            resolved: Condvar::new(),
        });
        (
            SyncSignal(Some(slot.clone())),
            SyncWait {
                state: State::Pending(slot),
            },
        )
    }

    /// Blocks the calling thread until the sync resolves.
    ///
    /// # Errors
    /// The persist error, `Poisoned`, or `Closed` when the engine shut down first.
    pub fn wait(self) -> Result<(), StorageError> {
        match self.state {
            State::Ready(result) => result.unwrap_or(Ok(())),
            State::Pending(slot) => {
                let mut state = slot.lock();
                loop {
                    match &mut *state {
                        SlotState::Done(result) => return result.take().unwrap_or(Ok(())),
                        SlotState::Waiting { blocked, .. } => *blocked = true,
                    }
                    state = slot
                        .resolved
                        .wait(state)
                        .unwrap_or_else(|poisoned| poisoned.into_inner());
                }
            }
        }
    }

    /// Runs `then` with the result once the sync resolves: at once, on this thread,
    /// if it already did; otherwise on the thread that resolves it (the syncer), so
    /// `then` must be quick and must not block (hand the result on, no I/O).
    pub fn then(self, then: impl FnOnce(Result<(), StorageError>) + Send + 'static) {
        match self.state {
            State::Ready(result) => then(result.unwrap_or(Ok(()))),
            State::Pending(slot) => {
                let mut state = slot.lock();
                match &mut *state {
                    SlotState::Done(result) => {
                        let result = result.take().unwrap_or(Ok(()));
                        drop(state);
                        then(result);
                    }
                    SlotState::Waiting {
                        then: slot_then, ..
                    } => {
                        *slot_then = Some(Box::new(then));
                    }
                }
            }
        }
    }
}

impl Future for SyncWait {
    type Output = Result<(), StorageError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        match &mut this.state {
            // Polling again after `Ready` yields `Ok` rather than panicking.
            State::Ready(result) => Poll::Ready(result.take().unwrap_or(Ok(()))),
            State::Pending(slot) => {
                let mut state = slot.lock();
                match &mut *state {
                    SlotState::Done(result) => Poll::Ready(result.take().unwrap_or(Ok(()))),
                    SlotState::Waiting { waker, .. } => {
                        match waker {
                            Some(known) if known.will_wake(cx.waker()) => {}
                            _ => *waker = Some(cx.waker().clone()),
                        }
                        Poll::Pending
                    }
                }
            }
        }
    }
}

/// The resolving side of a pending `SyncWait` (see `SyncWait::pending`).
pub struct SyncSignal(Option<Arc<Slot>>);

impl SyncSignal {
    /// Answers the waiting side: runs its continuation, or wakes it (a no-op if it
    /// gave up waiting).
    pub fn resolve(mut self, result: Result<(), StorageError>) {
        if let Some(slot) = self.0.take() {
            resolve(&slot, result);
        }
    }
}

impl Drop for SyncSignal {
    /// Unresolved: the engine went away first.
    fn drop(&mut self) {
        if let Some(slot) = self.0.take() {
            resolve(&slot, Err(StorageError::Closed));
        }
    }
}

fn resolve(slot: &Slot, result: Result<(), StorageError>) {
    let mut state = slot.lock();
    let (waker, then, blocked) = match &mut *state {
        SlotState::Waiting {
            waker,
            then,
            blocked,
        } => (waker.take(), then.take(), *blocked),
        // Resolved once only: `resolve` consumes the signal.
        SlotState::Done(_) => return,
    };
    match then {
        Some(then) => {
            *state = SlotState::Done(None);
            drop(state);
            // The continuation is the caller's code on the resolving thread: a panic
            // in it must not take the syncer down with it.
            let ran = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| then(result)));
            if ran.is_err() {
                tracing::error!("a sync continuation panicked");
            }
        }
        None => {
            *state = SlotState::Done(Some(result));
            drop(state);
            if blocked {
                slot.resolved.notify_all();
            }
            if let Some(waker) = waker {
                waker.wake();
            }
        }
    }
}

impl std::fmt::Debug for SyncSignal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SyncSignal")
    }
}

impl std::fmt::Debug for SyncWait {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.state {
            State::Ready(result) => f.debug_tuple("SyncWait::Ready").field(result).finish(),
            State::Pending(_) => f.write_str("SyncWait::Pending"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;

    #[test]
    fn a_pending_sync_resolves_with_its_signal() {
        let (signal, wait) = SyncWait::pending();
        signal.resolve(Ok(()));
        assert!(wait.wait().is_ok());
        let (signal, wait) = SyncWait::pending();
        signal.resolve(Err(StorageError::Closed));
        assert!(matches!(wait.wait(), Err(StorageError::Closed)));
    }

    #[test]
    fn a_dropped_signal_reads_as_closed() {
        let (signal, wait) = SyncWait::pending();
        drop(signal);
        assert!(matches!(wait.wait(), Err(StorageError::Closed)));
        let (signal, wait) = SyncWait::pending();
        let (sender, results) = mpsc::channel();
        wait.then(move |result| sender.send(result).unwrap_or(()));
        drop(signal);
        assert!(matches!(results.try_recv(), Ok(Err(StorageError::Closed))));
    }

    #[test]
    fn a_blocking_waiter_wakes_when_another_thread_resolves() {
        let (signal, wait) = SyncWait::pending();
        let resolver = std::thread::spawn(move || {
            std::thread::sleep(std::time::Duration::from_millis(20));
            signal.resolve(Err(StorageError::Closed));
        });
        assert!(matches!(wait.wait(), Err(StorageError::Closed)));
        assert!(resolver.join().is_ok());
    }

    #[test]
    fn a_continuation_runs_once_on_the_resolving_thread_or_at_once_if_resolved() {
        // Registered before: runs inside `resolve`, on the resolver's thread.
        let (signal, wait) = SyncWait::pending();
        let (sender, results) = mpsc::channel();
        let sender_for_then = sender.clone();
        wait.then(move |result| {
            let on = std::thread::current().name().map(str::to_owned);
            sender_for_then.send((result, on)).unwrap_or(());
        });
        assert!(results.try_recv().is_err(), "ran before the sync resolved");
        let resolver = std::thread::Builder::new()
            .name("resolver".into())
            .spawn(move || signal.resolve(Ok(())));
        assert!(
            resolver
                .map(|thread| thread.join().is_ok())
                .unwrap_or(false)
        );
        let (result, on) = results.recv().unwrap_or((Err(StorageError::Closed), None));
        assert!(result.is_ok());
        assert_eq!(on.as_deref(), Some("resolver"));
        assert!(results.try_recv().is_err(), "ran twice");

        // Registered after: runs at once, on this thread.
        let (signal, wait) = SyncWait::pending();
        signal.resolve(Err(StorageError::Closed));
        let sender_for_then = sender.clone();
        wait.then(move |result| sender_for_then.send((result, None)).unwrap_or(()));
        assert!(matches!(
            results.try_recv(),
            Ok((Err(StorageError::Closed), None))
        ));

        // Already ready.
        SyncWait::ready(Ok(())).then(move |result| sender.send((result, None)).unwrap_or(()));
        assert!(matches!(results.try_recv(), Ok((Ok(()), None))));
    }

    #[test]
    fn a_panicking_continuation_does_not_take_the_resolver_down() {
        let (signal, wait) = SyncWait::pending();
        wait.then(|_| panic!("continuation failed"));
        signal.resolve(Ok(()));
        // Still here: the resolver carried on.
    }

    #[tokio::test]
    async fn an_awaited_sync_wakes_its_task() {
        let (signal, wait) = SyncWait::pending();
        let resolver = std::thread::spawn(move || {
            std::thread::sleep(std::time::Duration::from_millis(20));
            signal.resolve(Ok(()));
        });
        assert!(wait.await.is_ok());
        assert!(resolver.join().is_ok());
    }
}
