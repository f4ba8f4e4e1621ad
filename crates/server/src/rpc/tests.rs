//! Limits and shutdown of the RPC over real TCP on 127.0.0.1 (the main scenarios are
//! in `tests/rpc.rs`): every limit shows as an error or a closed connection, never a
//! wait, and both sides stop within their bounds. Each test runs under a time bound.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use ringkv_cluster::{Peer, Transport, TransportError};
use ringkv_core::NodeId;
use ringkv_core::wire::{PeerRequest, PeerResponse};
use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::{Direct, PeerHandler, Reply, RpcOptions, TcpTransport, serve};

const LONG: Duration = Duration::from_secs(5);
/// How long the handler takes for keys starting with "slow".
const SLOW_FOR: Duration = Duration::from_secs(3);

type Seen = Arc<Mutex<Vec<Bytes>>>;

/// Answers `Read { key }` with `key` as the record, after `SLOW_FOR` for slow keys.
fn handler(seen: Seen) -> Arc<dyn PeerHandler> {
    Arc::new(move |_from: NodeId, request: PeerRequest| {
        let PeerRequest::Read { key } = request else {
            return Box::pin(async { PeerResponse::Ack }) as ringkv_cluster::BoxFuture<_>;
        };
        seen.lock().expect("test lock").push(key.clone());
        Box::pin(async move {
            if key.starts_with(b"slow") {
                tokio::time::sleep(SLOW_FOR).await;
            }
            PeerResponse::Record { record: Some(key) }
        })
    })
}

fn read(key: &'static str) -> PeerRequest {
    PeerRequest::Read {
        key: Bytes::from_static(key.as_bytes()),
    }
}

fn record(key: &'static str) -> PeerResponse {
    PeerResponse::Record {
        record: Some(Bytes::from_static(key.as_bytes())),
    }
}

struct Listener {
    peer: Peer,
    seen: Seen,
    shutdown: CancellationToken,
    serving: JoinHandle<()>,
}

async fn listen(options: RpcOptions) -> Listener {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("bound").to_string();
    let (seen, shutdown) = (Seen::default(), CancellationToken::new());
    let handler = handler(seen.clone());
    let serving = serve(
        listener,
        NodeId(2),
        None,
        options,
        handler,
        shutdown.clone(),
    );
    let serving = tokio::spawn(serving);
    let peer = Peer {
        id: NodeId(2),
        addr,
    };
    Listener {
        peer,
        seen,
        shutdown,
        serving,
    }
}

impl Listener {
    async fn wait_for(&self, key: &[u8]) {
        for _ in 0..500 {
            if self
                .seen
                .lock()
                .expect("test lock")
                .iter()
                .any(|k| k == key)
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("the handler never saw {key:?}");
    }
}

fn dialer(options: RpcOptions) -> Arc<TcpTransport> {
    let me = Peer {
        id: NodeId(1),
        addr: "127.0.0.1:9".to_owned(),
    };
    TcpTransport::new(me, None, options, handler(Seen::default()))
}

async fn bounded<F: Future<Output = ()>>(body: F) {
    let finished = tokio::time::timeout(Duration::from_secs(30), body).await;
    assert!(finished.is_ok(), "test did not finish within 30 s");
}

/// A listener whose node id is not the one the dialer expects is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listener_with_another_node_id_is_refused() {
    bounded(async {
        let listener = listen(RpcOptions::default()).await;
        let peer = Peer {
            id: NodeId(99),
            addr: listener.peer.addr.clone(),
        };
        let result = dialer(RpcOptions::default())
            .call(&peer, read("k"), LONG)
            .await;
        let Err(TransportError::Protocol { reason, .. }) = result else {
            panic!("expected Protocol, got {result:?}");
        };
        assert!(reason.contains("is node 2, expected node 99"), "{reason}");
        assert!(listener.seen.lock().expect("test lock").is_empty());
    })
    .await;
}

/// Past `max_connections`, a new connection is closed before the handshake; once a
/// connection closes, the next is served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_over_the_limit_are_closed() {
    bounded(async {
        let options = RpcOptions {
            max_connections: 1,
            ..RpcOptions::default()
        };
        let listener = listen(options).await;
        let mut first = TcpStream::connect(&listener.peer.addr)
            .await
            .expect("connect");
        let challenge_len = first.read_u32().await.expect("a challenge");
        assert!(challenge_len > 0);
        let mut second = TcpStream::connect(&listener.peer.addr)
            .await
            .expect("connect");
        let mut buffer = [0; 64];
        let closed = tokio::time::timeout(LONG, second.read(&mut buffer)).await;
        assert!(
            matches!(closed, Ok(Ok(0) | Err(_))),
            "closed without a challenge"
        );
        drop(first);
        let transport = dialer(RpcOptions::default());
        let mut result = Err(TransportError::Closed);
        for _ in 0..100 {
            result = transport.call(&listener.peer, read("k"), LONG).await;
            if result.is_ok() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(result, Ok(record("k")));
    })
    .await;
}

/// A peer that accepts TCP but never completes the handshake is down after the first
/// attempt: calls during the backoff fail at once, without another attempt.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_peer_fails_fast_during_backoff() {
    bounded(async {
        // Bound but never accepted: connects succeed, the handshake never starts.
        let silent = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = silent.local_addr().expect("bound").to_string();
        let peer = Peer {
            id: NodeId(2),
            addr,
        };
        // Long, so a new attempt (which waits it out) is far from a loaded machine's
        // slowest failing call: half of it is the bound below.
        let handshake_timeout = Duration::from_secs(2);
        let transport = dialer(RpcOptions {
            handshake_timeout,
            reconnect_backoff_min: LONG,
            reconnect_backoff_max: LONG,
            ..RpcOptions::default()
        });
        let first = transport.call(&peer, read("k"), LONG).await;
        let Err(TransportError::Unreachable { reason, .. }) = &first else {
            panic!("expected Unreachable, got {first:?}");
        };
        assert!(reason.contains("timed out"), "{reason}");
        for _ in 0..4 {
            let started = tokio::time::Instant::now();
            let again = transport.call(&peer, read("k"), LONG).await;
            assert_eq!(again, first, "the backoff's error");
            let took = started.elapsed();
            assert!(
                took < handshake_timeout / 2,
                "no new attempt: took {took:?}"
            );
        }
        drop(silent);
    })
    .await;
}

/// A full in-flight map (and queue) is `Overloaded` at once; the first call is not
/// disturbed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_queue_is_overloaded_at_once() {
    bounded(async {
        let listener = listen(RpcOptions::default()).await;
        let transport = dialer(RpcOptions {
            connections_per_peer: 1,
            max_queued_per_peer: 1,
            max_in_flight_per_connection: 1,
            ..RpcOptions::default()
        });
        let slow = transport.call(&listener.peer, read("slow-1"), LONG);
        let refused = transport.call(&listener.peer, read("k"), LONG);
        let refused = tokio::time::timeout(Duration::from_millis(100), refused).await;
        assert_eq!(refused, Ok(Err(TransportError::Overloaded(NodeId(2)))));
        assert_eq!(slow.await, Ok(record("slow-1")));
    })
    .await;
}

/// `shutdown` fails the calls awaiting an answer and every later call with `Closed`,
/// and `closed` returns once the tasks are gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transport_shutdown_fails_calls_with_closed() {
    bounded(async {
        let listener = listen(RpcOptions::default()).await;
        let transport = dialer(RpcOptions::default());
        let waiting = transport.call(&listener.peer, read("slow-2"), LONG);
        listener.wait_for(b"slow-2").await;
        transport.shutdown();
        assert_eq!(waiting.await, Err(TransportError::Closed));
        let later = transport.call(&listener.peer, read("k"), LONG).await;
        assert_eq!(later, Err(TransportError::Closed));
        let me = transport.me().clone();
        let local = transport.call(&me, read("k"), LONG).await;
        assert_eq!(local, Err(TransportError::Closed));
        let closed = tokio::time::timeout(LONG, transport.closed()).await;
        assert!(closed.is_ok(), "transport tasks ended");
    })
    .await;
}

/// Stopping the listener with a request in flight ends `serve` within the grace, and
/// the dialer's call fails instead of hanging.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listener_shutdown_closes_connections_within_the_grace() {
    bounded(async {
        let listener = listen(RpcOptions {
            shutdown_grace: Duration::from_millis(200),
            ..RpcOptions::default()
        })
        .await;
        let transport = dialer(RpcOptions::default());
        let waiting = transport.call(&listener.peer, read("slow-3"), LONG);
        listener.wait_for(b"slow-3").await;
        let started = tokio::time::Instant::now();
        listener.shutdown.cancel();
        let served = tokio::time::timeout(LONG, listener.serving).await;
        assert!(matches!(served, Ok(Ok(()))), "serve returned");
        // Waiting for the slow handler would take until ~SLOW_FOR from here; the
        // grace is 200 ms.
        let took = started.elapsed();
        assert!(
            took < SLOW_FOR / 2,
            "serve waited for the slow handler: {took:?}"
        );
        let failed = waiting.await;
        assert!(
            matches!(failed, Err(TransportError::Unreachable { .. })),
            "{failed:?}"
        );
    })
    .await;
}

/// A peer that could not be reached is down for the backoff; news that it is back
/// (`forget_failures`, from membership) makes the next call connect at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forgotten_failures_let_the_next_call_connect_at_once() {
    bounded(async {
        // A port nobody listens on: reserve one, then close it.
        let probe = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = probe.local_addr().expect("bound");
        drop(probe);
        let peer = Peer {
            id: NodeId(2),
            addr: addr.to_string(),
        };
        let transport = dialer(RpcOptions {
            reconnect_backoff_min: LONG,
            reconnect_backoff_max: LONG,
            ..RpcOptions::default()
        });
        let first = transport.call(&peer, read("k"), LONG).await;
        assert!(
            matches!(first, Err(TransportError::Unreachable { .. })),
            "{first:?}"
        );
        // The peer comes back on that port.
        let listener = TcpListener::bind(addr).await.expect("rebind");
        let shutdown = CancellationToken::new();
        let serving = tokio::spawn(serve(
            listener,
            NodeId(2),
            None,
            RpcOptions::default(),
            handler(Seen::default()),
            shutdown.clone(),
        ));
        // Still within the backoff: the old failure, at once.
        assert_eq!(transport.call(&peer, read("k"), LONG).await, first);
        transport.forget_failures(NodeId(2));
        assert_eq!(
            transport.call(&peer, read("k"), LONG).await,
            Ok(record("k"))
        );
        shutdown.cancel();
        let _ = serving.await;
    })
    .await;
}

/// Answers every `Read` directly, from a thread of its own, after a short wait
/// (`handle` is never used for it). A dropped key (`drop`) gets no answer at all.
struct DirectHandler;

impl PeerHandler for DirectHandler {
    fn handle(
        &self,
        _from: NodeId,
        _request: PeerRequest,
    ) -> ringkv_cluster::BoxFuture<PeerResponse> {
        Box::pin(async { PeerResponse::Ack })
    }

    fn handle_direct(&self, _from: NodeId, request: PeerRequest, reply: Reply) -> Direct {
        let PeerRequest::Read { key } = request else {
            return Direct::Declined(request, reply);
        };
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(20));
            if key.as_ref() != b"drop" {
                reply.send(PeerResponse::Record { record: Some(key) });
            }
        });
        Direct::Taken
    }
}

/// Requests a handler takes directly are answered from the thread that finishes
/// them, over a connection and locally; declined ones go through `handle`; a reply
/// dropped unsent ends a local call at once and a remote one at its timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn direct_answers_arrive_from_any_thread() {
    bounded(async {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let peer = Peer {
            id: NodeId(2),
            addr: listener.local_addr().expect("bound").to_string(),
        };
        let shutdown = CancellationToken::new();
        let handler: Arc<dyn PeerHandler> = Arc::new(DirectHandler);
        let serving = tokio::spawn(serve(
            listener,
            NodeId(2),
            None,
            RpcOptions::default(),
            handler.clone(),
            shutdown.clone(),
        ));
        let me = Peer {
            id: NodeId(1),
            addr: "127.0.0.1:9".to_owned(),
        };
        let transport = TcpTransport::new(me.clone(), None, RpcOptions::default(), handler);
        let calls: Vec<_> = ["a", "b", "c"]
            .into_iter()
            .map(|key| transport.call(&peer, read(key), LONG))
            .collect();
        for (call, key) in calls.into_iter().zip(["a", "b", "c"]) {
            assert_eq!(call.await, Ok(record(key)));
        }
        assert_eq!(
            transport.call(&me, read("local"), LONG).await,
            Ok(record("local"))
        );
        let declined = PeerRequest::Sync;
        assert_eq!(
            transport.call(&peer, declined, LONG).await,
            Ok(PeerResponse::Ack)
        );
        let local = transport.call(&me, read("drop"), LONG).await;
        assert!(
            matches!(local, Err(TransportError::Unreachable { .. })),
            "{local:?}"
        );
        let short = Duration::from_millis(300);
        let remote = transport.call(&peer, read("drop"), short).await;
        assert_eq!(remote, Err(TransportError::Timeout(short)));
        shutdown.cancel();
        transport.shutdown();
        assert!(matches!(
            tokio::time::timeout(LONG, serving).await,
            Ok(Ok(()))
        ));
    })
    .await;
}
