//! The RESP (Redis protocol) listener of DESIGN.md §7, on `resp_addr`: redis-cli,
//! redis-benchmark and Redis client libraries talk to ringkv unchanged.
//!
//! Split like mini-redis: `frame` (bounded parser, reply encoding), `connection`
//! (one client: read, run every buffered command in order, one write per batch),
//! `command` (the command table: names, arities, dispatch), `admin` (`HELLO`,
//! `CLIENT`, `CONFIG`, `INFO`, `COMMAND`), `keyspace` (GET/SET/DEL/... through the
//! same coordinator as HTTP),
//! `crdt` (counter and set commands, not yet served).
//!
//! Siblings resolve by last-writer-wins on this interface: a read shows the value
//! with the highest hybrid-logical-clock timestamp (`ConflictPolicy::Lww` view),
//! and a write carries the version it read, so it supersedes every sibling it saw.
//!
//! Limits (each refused with an error, the connection closed on protocol errors):
//! * `MAX_ARGS` arguments per command;
//! * a bulk string of at most `max(max_value_bytes, max_key_bytes)` bytes, a
//!   command of at most `max_value_bytes + MAX_COMMAND_OVERHEAD_BYTES` in all;
//! * an inline command or header line of at most `MAX_INLINE_BYTES`;
//! * `MAX_PIPELINE` replies (or `MAX_REPLY_BUFFER_BYTES`) buffered before a write;
//! * `MAX_CONNECTIONS` clients at once (further ones wait in the accept queue,
//!   counted in `ringkv_resp_connection_limit_waits_total`).
//!
//! Past a connection's first 16 KiB, a command draws on the node's
//! `max_buffered_request_bytes` (shared with HTTP bodies) while it arrives; refused,
//! the client gets `-ERR overloaded` and is closed. Outside that budget: each
//! connection's first 16 KiB and its replies (at most `MAX_REPLY_BUFFER_BYTES` plus
//! one reply), i.e. 16 MiB and about 4 GiB for `MAX_CONNECTIONS` clients.

mod admin;
mod command;
mod connection;
mod crdt;
pub mod frame;
mod keyspace;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Instant;

use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::http::AppState;
use frame::FrameLimits;

/// Arguments per command, its name included. Redis allows 1 Mi; 16 Ki keeps an
/// `MGET`/`DEL`/`MSET` batch useful while its reads and writes stay bounded.
pub const MAX_ARGS: usize = 16 * 1024;
/// Longest inline command (and header line), as Redis's `PROTO_INLINE_MAX_SIZE`.
pub const MAX_INLINE_BYTES: usize = 64 * 1024;
/// What a command may hold beyond one value: keys and options.
pub const MAX_COMMAND_OVERHEAD_BYTES: usize = 1024 * 1024;
/// Replies computed before they are written out in one go.
pub const MAX_PIPELINE: usize = 1024;
/// Reply bytes buffered before they are written out (one large reply still goes
/// out whole).
pub const MAX_REPLY_BUFFER_BYTES: usize = 4 * 1024 * 1024;
/// Clients served at once.
pub const MAX_CONNECTIONS: usize = 1024;
/// Keys of one multi-key command read or written at once.
pub const MAX_KEYS_IN_FLIGHT: usize = 64;

/// The Redis version clients are told (`HELLO`, `INFO`): the commands served
/// follow Redis 7.2's argument rules and replies.
pub const REDIS_VERSION: &str = "7.2.0";

/// What every connection shares.
pub struct Shared {
    pub app: Arc<AppState>,
    pub limits: FrameLimits,
    pub started: Instant,
    pub addr: SocketAddr,
    next_client_id: AtomicU64,
    connected: AtomicUsize,
}

impl Shared {
    pub fn new(app: Arc<AppState>, addr: SocketAddr) -> Shared {
        let max_value = app.limits.max_value_bytes;
        let limits = FrameLimits {
            max_args: MAX_ARGS,
            max_bulk_bytes: max_value.max(app.limits.max_key_bytes),
            max_inline_bytes: MAX_INLINE_BYTES,
            max_command_bytes: max_value.saturating_add(MAX_COMMAND_OVERHEAD_BYTES),
        };
        Shared {
            app,
            limits,
            started: Instant::now(),
            addr,
            next_client_id: AtomicU64::new(1),
            connected: AtomicUsize::new(0),
        }
    }

    pub fn connected(&self) -> usize {
        self.connected.load(Ordering::Relaxed)
    }
}

/// Accepts clients until `shutdown`, then waits for every connection to finish
/// the commands it is running (each stops reading at `shutdown`).
pub async fn serve(listener: TcpListener, shared: Arc<Shared>, shutdown: CancellationToken) {
    let permits = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let counter = "ringkv_resp_connection_limit_waits_total";
    let mut at_limit = crate::socket::AtLimit::new("RESP", counter, MAX_CONNECTIONS);
    let mut connections = JoinSet::new();
    let mut backoff_ms = 1;
    loop {
        let permit = match permits.clone().try_acquire_owned() {
            Ok(permit) => permit,
            Err(_) => {
                // At the limit: new clients wait in the accept queue; counted.
                at_limit.wait_begins();
                tokio::select! {
                    () = shutdown.cancelled() => break,
                    permit = permits.clone().acquire_owned() => {
                        permit.expect("the connection semaphore is never closed")
                    }
                }
            }
        };
        let accepted = tokio::select! {
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        // Reap finished connections so the set stays as small as the live ones.
        while connections.try_join_next().is_some() {}
        match accepted {
            Ok((stream, peer)) => {
                backoff_ms = 1;
                crate::socket::configure(&stream, "resp");
                let id = shared.next_client_id.fetch_add(1, Ordering::Relaxed);
                let (shared, shutdown) = (shared.clone(), shutdown.clone());
                connections.spawn(async move {
                    shared.connected.fetch_add(1, Ordering::Relaxed);
                    metrics::gauge!("ringkv_resp_connections").increment(1.0);
                    connection::run(stream, peer, id, &shared, &shutdown).await;
                    metrics::gauge!("ringkv_resp_connections").decrement(1.0);
                    shared.connected.fetch_sub(1, Ordering::Relaxed);
                    drop(permit);
                });
            }
            Err(error) => {
                // Out of descriptors and the like: wait (at most 1 s) and go on.
                tracing::warn!("resp accept failed: {error}");
                tokio::time::sleep(std::time::Duration::from_millis(backoff_ms)).await;
                backoff_ms = (backoff_ms * 2).min(1000);
            }
        }
    }
    while connections.join_next().await.is_some() {}
}
