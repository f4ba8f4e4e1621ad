//! The dialing side: [`TcpTransport`], the `Transport` of a production node.
//!
//! It keeps one [`Link`](super::link) per peer, made on the first call to it; calls
//! to the node itself never touch a socket but run the local [`PeerHandler`] in a
//! task of their own, so they keep the trait's promise like any other call: the
//! request runs even if the caller drops the future, and blocking work in the
//! handler is scheduled like any message.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock};
use std::time::Duration;

use ringkv_cluster::{BoxFuture, Peer, Transport, TransportError};
use ringkv_core::NodeId;
use ringkv_core::wire::{PeerRequest, PeerResponse};
use tokio::runtime::Handle;
use tokio::sync::{Semaphore, oneshot};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::link::{Link, LinkConfig};
use super::{Direct, PeerHandler, Reply, RpcOptions, record_call};

/// Calls to peers over TCP (DESIGN.md §7), and to this node through its own handler.
///
/// What a call promises (the `Transport` contract): when `call` returns, the request
/// is queued for its peer (or, to `me`, already running); the future only waits, at
/// most `timeout`, for the answer, and dropping it abandons the answer, not the
/// request. A full queue is `Overloaded` at once; a peer that cannot be reached
/// fails fast with `Unreachable` during a reconnect backoff; a peer that refuses the
/// handshake (protocol version, cluster secret) fails with `Protocol` naming why.
/// After [`shutdown`](Self::shutdown) every call fails with `Closed`.
pub struct TcpTransport {
    me: Peer,
    config: Arc<LinkConfig>,
    /// Taken by `shutdown`, which breaks a cycle when the handler holds the transport.
    local: RwLock<Option<Arc<dyn PeerHandler>>>,
    local_permits: Arc<Semaphore>,
    links: Mutex<HashMap<NodeId, Arc<Link>>>,
    tasks: Mutex<JoinSet<()>>,
    runtime: Handle,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // No code panics while holding these locks; if one did, the data is still usable.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl TcpTransport {
    /// A transport for node `me`: calls to `me.id` go to `local`, calls to others
    /// over TCP with `secret` (the `cluster_secret`, `None` for none: then peers must
    /// have none either). Connects lazily, on the first call to each peer.
    ///
    /// # Panics
    /// Outside a tokio runtime (its tasks run on the current one), or when `options`
    /// fail [`RpcOptions::check`].
    pub fn new(
        me: Peer,
        secret: Option<String>,
        options: RpcOptions,
        local: Arc<dyn PeerHandler>,
    ) -> Arc<TcpTransport> {
        options.check();
        let runtime = Handle::current();
        let local_permits = Arc::new(Semaphore::new(options.max_local_in_flight));
        let config = Arc::new(LinkConfig {
            me: me.id,
            secret: secret.map(String::into_bytes),
            options,
            shutdown: CancellationToken::new(),
        });
        Arc::new(TcpTransport {
            me,
            config,
            local: RwLock::new(Some(local)),
            local_permits,
            links: Mutex::new(HashMap::new()),
            tasks: Mutex::new(JoinSet::new()),
            runtime,
        })
    }

    /// This node.
    pub fn me(&self) -> &Peer {
        &self.me
    }

    /// Closes every connection and drops the local handler: calls waiting for an
    /// answer and every later call fail with `Closed`. Calls to `me` already running
    /// finish. Returns at once; [`closed`](Self::closed) waits for the tasks.
    pub fn shutdown(&self) {
        self.config.shutdown.cancel();
        let local = self
            .local
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        drop(local);
        lock(&self.links).clear();
    }

    /// Waits until every task of the transport has ended: after [`shutdown`], soon;
    /// before it, only once all links are closed, so call `shutdown` first.
    ///
    /// [`shutdown`]: Self::shutdown
    pub async fn closed(&self) {
        let mut tasks = std::mem::take(&mut *lock(&self.tasks));
        while let Some(joined) = tasks.join_next().await {
            log_panic(joined);
        }
    }

    fn spawn(&self, task: BoxFuture<()>) {
        let mut tasks = lock(&self.tasks);
        // Reap what has finished, so the set stays as small as the live tasks.
        while let Some(joined) = tasks.try_join_next() {
            log_panic(joined);
        }
        tasks.spawn_on(task, &self.runtime);
    }

    /// The link to `to` at its current address, made (with its drivers) if new.
    fn link(&self, to: &Peer) -> Result<Arc<Link>, TransportError> {
        let mut links = lock(&self.links);
        match links.get(&to.id) {
            Some(link) if link.addr() == to.addr => return Ok(link.clone()),
            Some(_) => {}
            None if links.len() >= self.config.options.max_peers => {
                let max_peers = self.config.options.max_peers;
                tracing::warn!(peer = %to.id, "rpc: max_peers = {max_peers} reached; call refused");
                return Err(TransportError::Overloaded(to.id));
            }
            None => {}
        }
        let (link, drivers) = Link::new(to.clone(), self.config.clone());
        for driver in drivers {
            self.spawn(driver);
        }
        if let Some(old) = links.insert(to.id, link.clone()) {
            tracing::info!(peer = %to.id, from = %old.addr(), to = %to.addr, "rpc: peer address changed");
            old.close();
        }
        Ok(link)
    }

    /// A call to this node: straight to the local handler, in a task of its own
    /// only if it needs one (`PeerHandler::handle_direct`).
    fn call_local(
        &self,
        request: PeerRequest,
        timeout: Duration,
        started: Instant,
    ) -> BoxFuture<Result<PeerResponse, TransportError>> {
        let me = self.me.id;
        let handler = self
            .local
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        let Some(handler) = handler else {
            return finished(me, started, Err(TransportError::Closed));
        };
        let Ok(permit) = self.local_permits.clone().try_acquire_owned() else {
            return finished(me, started, Err(TransportError::Overloaded(me)));
        };
        let (answer, receiver) = oneshot::channel();
        let reply = Reply::new(move |response| {
            drop(permit);
            // The caller may have given up; the request ran all the same.
            let _ = answer.send(response);
        });
        if let Direct::Declined(request, reply) = handler.handle_direct(me, request, reply) {
            self.spawn(Box::pin(async move {
                reply.send(handler.handle(me, request).await);
            }));
        }
        Box::pin(async move {
            let result = match tokio::time::timeout(timeout, receiver).await {
                Err(_) => Err(TransportError::Timeout(timeout)),
                Ok(Ok(response)) => Ok(response),
                Ok(Err(_)) => Err(TransportError::Unreachable {
                    peer: me,
                    reason: "the local handler ended without an answer".to_owned(),
                }),
            };
            record_call(me, started, &result);
            result
        })
    }
}

impl Transport for TcpTransport {
    fn call(
        &self,
        to: &Peer,
        request: PeerRequest,
        timeout: Duration,
    ) -> BoxFuture<Result<PeerResponse, TransportError>> {
        let started = Instant::now();
        if self.config.shutdown.is_cancelled() {
            return finished(to.id, started, Err(TransportError::Closed));
        }
        if to.id == self.me.id {
            return self.call_local(request, timeout, started);
        }
        let peer = to.id;
        match self.link(to).and_then(|link| link.enqueue(request)) {
            Err(error) => finished(peer, started, Err(error)),
            Ok(pending) => Box::pin(async move {
                let result = pending.wait(timeout).await;
                record_call(peer, started, &result);
                result
            }),
        }
    }

    fn forget_failures(&self, peer: NodeId) {
        if let Some(link) = lock(&self.links).get(&peer) {
            link.forget_failures();
        }
    }
}

impl Drop for TcpTransport {
    fn drop(&mut self) {
        self.config.shutdown.cancel();
    }
}

/// A call that ended in `call` itself.
fn finished(
    peer: NodeId,
    started: Instant,
    result: Result<PeerResponse, TransportError>,
) -> BoxFuture<Result<PeerResponse, TransportError>> {
    record_call(peer, started, &result);
    Box::pin(std::future::ready(result))
}

fn log_panic(joined: Result<(), tokio::task::JoinError>) {
    if let Err(error) = joined
        && error.is_panic()
    {
        tracing::error!("rpc: a transport task panicked: {error}");
    }
}
