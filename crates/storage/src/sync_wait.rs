//! `SyncWait`: the answer to `Engine::sync`, awaited by async callers and waited on by
//! blocking ones.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::sync::oneshot;

use crate::StorageError;

/// Resolves once the writes before the `sync` call are durable, or with the error
/// that prevented it. Awaiting it never blocks a runtime thread.
#[must_use = "a sync only guarantees durability once it is awaited or waited on"]
pub struct SyncWait {
    state: State,
}

enum State {
    /// Already known: the writes were durable, or the sync could not start.
    Ready(Option<Result<(), StorageError>>),
    /// Answered by the syncer thread.
    Pending(oneshot::Receiver<Result<(), StorageError>>),
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
        let (sender, receiver) = oneshot::channel();
        (
            SyncSignal(sender),
            SyncWait {
                state: State::Pending(receiver),
            },
        )
    }

    /// Blocks the calling thread until the sync resolves.
    ///
    /// # Errors
    /// The persist error, `Poisoned`, or `Closed` when the engine shut down first.
    ///
    /// # Panics
    /// When called on an async runtime thread while still pending (tokio forbids
    /// blocking there): `.await` it instead.
    pub fn wait(self) -> Result<(), StorageError> {
        match self.state {
            State::Ready(result) => result.unwrap_or(Ok(())),
            State::Pending(receiver) => receiver
                .blocking_recv()
                .unwrap_or(Err(StorageError::Closed)),
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
            State::Pending(receiver) => Pin::new(receiver)
                .poll(cx)
                .map(|answer| answer.unwrap_or(Err(StorageError::Closed))),
        }
    }
}

/// The resolving side of a pending `SyncWait` (see `SyncWait::pending`).
#[derive(Debug)]
pub struct SyncSignal(oneshot::Sender<Result<(), StorageError>>);

impl SyncSignal {
    /// Answers the waiting side (a no-op if it gave up waiting).
    pub fn resolve(self, result: Result<(), StorageError>) {
        // The receiver may be gone: nobody waits any more, nothing to do.
        let _ = self.0.send(result);
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
    }
}
