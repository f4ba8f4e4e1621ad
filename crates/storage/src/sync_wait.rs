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

    /// A sync the holder of `sender` resolves; a dropped sender reads as `Closed`.
    pub(crate) fn pending(receiver: oneshot::Receiver<Result<(), StorageError>>) -> SyncWait {
        SyncWait {
            state: State::Pending(receiver),
        }
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

impl std::fmt::Debug for SyncWait {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.state {
            State::Ready(result) => f.debug_tuple("SyncWait::Ready").field(result).finish(),
            State::Pending(_) => f.write_str("SyncWait::Pending"),
        }
    }
}
