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

/// A future borrowing its caller (run inside it, not spawned).
pub type Borrowed<'a, T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send + 'a>>;

/// Runs every future to its end, together, without spawning (they may borrow the
/// caller); their outputs in the order given.
pub async fn join_all<T>(futures: Vec<Borrowed<'_, T>>) -> Vec<T> {
    let mut slots: Vec<(Option<Borrowed<'_, T>>, Option<T>)> = futures
        .into_iter()
        .map(|future| (Some(future), None))
        .collect();
    poll_fn(|cx| {
        let mut pending = false;
        for (future, output) in &mut slots {
            if let Some(running) = future {
                match running.as_mut().poll(cx) {
                    Poll::Ready(done) => {
                        *output = Some(done);
                        *future = None;
                    }
                    Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            Poll::Pending
        } else {
            Poll::Ready(())
        }
    })
    .await;
    slots.into_iter().filter_map(|(_, output)| output).collect()
}
