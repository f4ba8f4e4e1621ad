//! The pieces of our own executor: task owners, the waker that queues a task id, and
//! a one-shot channel. No tokio runtime: the world loop polls tasks itself, one at a
//! time in a deterministic order, so one seed gives one interleaving.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Wake, Waker};

/// Who a task belongs to: a node's tasks die with the node when it crashes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Owner {
    Node(usize),
    Client,
    World,
}

/// Task ids ready to be polled, in wake order.
pub type ReadyQueue = Arc<Mutex<VecDeque<u64>>>;

/// Wakes a task by queueing its id.
pub struct TaskWaker {
    pub id: u64,
    pub ready: ReadyQueue,
}

impl Wake for TaskWaker {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        lock(&self.ready).push_back(self.id);
    }
}

/// Locks a mutex; a panic elsewhere already failed the run, so poison is ignored.
pub fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

struct Slot<T> {
    value: Option<T>,
    closed: bool,
    waker: Option<Waker>,
}

/// The sending half of a one-shot channel; dropping it unsent closes the channel
/// (a crashed node, a dropped message).
pub struct Sender<T> {
    slot: Arc<Mutex<Slot<T>>>,
}

/// Resolves with the value, or `None` once the sender is gone without sending.
pub struct Receiver<T> {
    slot: Arc<Mutex<Slot<T>>>,
}

pub fn oneshot<T>() -> (Sender<T>, Receiver<T>) {
    let slot = Arc::new(Mutex::new(Slot {
        value: None,
        closed: false,
        waker: None,
    }));
    (Sender { slot: slot.clone() }, Receiver { slot })
}

impl<T> Sender<T> {
    pub fn send(self, value: T) {
        lock(&self.slot).value = Some(value);
        // `drop` closes the slot and wakes the receiver.
    }
}

impl<T> Drop for Sender<T> {
    fn drop(&mut self) {
        let waker = {
            let mut slot = lock(&self.slot);
            slot.closed = true;
            slot.waker.take()
        };
        if let Some(waker) = waker {
            waker.wake();
        }
    }
}

impl<T> Future for Receiver<T> {
    type Output = Option<T>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<T>> {
        let mut slot = lock(&self.slot);
        if let Some(value) = slot.value.take() {
            return Poll::Ready(Some(value));
        }
        if slot.closed {
            return Poll::Ready(None);
        }
        slot.waker = Some(cx.waker().clone());
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use std::task::Waker;

    use super::*;

    fn poll<T>(rx: &mut Receiver<T>) -> Poll<Option<T>> {
        Pin::new(rx).poll(&mut Context::from_waker(Waker::noop()))
    }

    #[test]
    fn a_sent_value_arrives_and_a_dropped_sender_closes() {
        let (tx, mut rx) = oneshot();
        assert!(poll(&mut rx).is_pending());
        tx.send(5);
        assert_eq!(poll(&mut rx), Poll::Ready(Some(5)));
        let (tx, mut rx) = oneshot::<u8>();
        drop(tx);
        assert_eq!(poll(&mut rx), Poll::Ready(None));
    }

    #[test]
    fn waking_queues_the_task_id() {
        let ready = ReadyQueue::default();
        let waker = Waker::from(Arc::new(TaskWaker {
            id: 9,
            ready: ready.clone(),
        }));
        waker.wake_by_ref();
        waker.wake();
        assert_eq!(lock(&ready).iter().copied().collect::<Vec<_>>(), [9, 9]);
    }
}
