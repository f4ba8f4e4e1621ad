//! Waiting for the first k of several calls without spawning: a coordinator answers
//! after W (or R) replies and hands the calls still running to background work.

use std::future::poll_fn;
use std::task::Poll;

use ringkv_core::NodeId;

use crate::transport::BoxFuture;

/// Calls in flight, one per node, and the replies that have come in.
pub struct Gather<T> {
    pending: Vec<(NodeId, BoxFuture<T>)>,
    done: Vec<(NodeId, T)>,
}

impl<T: Send + 'static> Gather<T> {
    pub fn new(calls: Vec<(NodeId, BoxFuture<T>)>) -> Gather<T> {
        Gather {
            pending: calls,
            done: Vec::new(),
        }
    }

    /// Waits until `enough(done)` holds or no call is left.
    pub async fn until(&mut self, enough: impl Fn(&[(NodeId, T)]) -> bool) {
        poll_fn(|cx| {
            let mut index = 0;
            while index < self.pending.len() {
                if let Poll::Ready(reply) = self.pending[index].1.as_mut().poll(cx) {
                    let (node, _) = self.pending.swap_remove(index);
                    self.done.push((node, reply));
                } else {
                    index += 1;
                }
            }
            if enough(&self.done) || self.pending.is_empty() {
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        })
        .await;
    }

    /// Waits for every call (each is bounded by its transport timeout).
    pub async fn all(&mut self) {
        self.until(|_| false).await;
    }

    pub fn done(&self) -> &[(NodeId, T)] {
        &self.done
    }

    pub fn into_done(self) -> Vec<(NodeId, T)> {
        self.done
    }
}
