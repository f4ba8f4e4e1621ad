//! The internal RPC (`ringkv_server::rpc`) over real TCP on 127.0.0.1, port 0: round
//! trips, multiplexing, timeouts, the handshake's refusals, hostile bytes, reconnects,
//! self-calls and the `Transport` promise that a dropped future still delivers its
//! request. Every test runs under a time bound, so a hang fails instead of stalling.

#![allow(clippy::unwrap_used)] // Tests fail loudly on anything unexpected.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use ringkv_cluster::{BoxFuture, Peer, Transport, TransportError};
use ringkv_core::wire::{PROTOCOL_VERSION, PeerRequest, PeerResponse};
use ringkv_core::{Member, MemberState, NodeId, Token};
use ringkv_server::rpc::handshake::{Challenge, Hello, Verdict};
use ringkv_server::rpc::{PeerHandler, RpcOptions, TcpTransport, frame, serve};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

const SECRET: &str = "the secret of this test cluster";
const LONG: Duration = Duration::from_secs(5);
/// Keys starting with this make the handler wait this long before answering.
const SLOW: &str = "slow";
const SLOW_FOR: Duration = Duration::from_secs(3);

/// Answers `Read { key }` with `name:key` as the record (after `SLOW_FOR` for slow
/// keys), echoes `Members`, and remembers every request it saw and from whom.
struct Handler {
    name: &'static str,
    seen: Mutex<Vec<(NodeId, Bytes)>>,
}

impl Handler {
    fn new(name: &'static str) -> Arc<Handler> {
        Arc::new(Handler {
            name,
            seen: Mutex::new(Vec::new()),
        })
    }

    fn seen(&self) -> Vec<(NodeId, Bytes)> {
        self.seen.lock().unwrap().clone()
    }

    /// Waits until the handler has seen `key`.
    async fn wait_for(&self, key: &str) -> NodeId {
        for _ in 0..500 {
            if let Some((from, _)) = self.seen().into_iter().find(|(_, k)| k == key) {
                return from;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("handler {} never saw {key}", self.name);
    }
}

impl PeerHandler for Handler {
    fn handle(&self, from: NodeId, request: PeerRequest) -> BoxFuture<PeerResponse> {
        let name = self.name;
        match request {
            PeerRequest::Read { key } => {
                self.seen.lock().unwrap().push((from, key.clone()));
                Box::pin(async move {
                    if key.starts_with(SLOW.as_bytes()) {
                        tokio::time::sleep(SLOW_FOR).await;
                    }
                    let key = String::from_utf8_lossy(&key);
                    answer(name, &key)
                })
            }
            PeerRequest::Members { members } => {
                Box::pin(async move { PeerResponse::Members { members } })
            }
            _ => Box::pin(async { PeerResponse::Ack }),
        }
    }
}

fn read(key: &str) -> PeerRequest {
    PeerRequest::Read {
        key: Bytes::from(key.to_owned()),
    }
}

fn answer(name: &str, key: &str) -> PeerResponse {
    PeerResponse::Record {
        record: Some(Bytes::from(format!("{name}:{key}"))),
    }
}

/// Runs a test body with a time bound.
async fn bounded<F: Future<Output = ()>>(body: F) {
    tokio::time::timeout(Duration::from_secs(30), body)
        .await
        .expect("test finished within 30 s");
}

struct Node {
    id: NodeId,
    addr: SocketAddr,
    handler: Arc<Handler>,
    shutdown: CancellationToken,
    serving: JoinHandle<()>,
}

impl Node {
    async fn start(addr: &str, id: u64, secret: Option<&str>, options: RpcOptions) -> Node {
        let listener = TcpListener::bind(addr).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (id, handler, shutdown) =
            (NodeId(id), Handler::new("remote"), CancellationToken::new());
        let serving = tokio::spawn(serve(
            listener,
            id,
            secret.map(str::to_owned),
            options,
            handler.clone(),
            shutdown.clone(),
        ));
        Node {
            id,
            addr,
            handler,
            shutdown,
            serving,
        }
    }

    fn peer(&self) -> Peer {
        Peer {
            id: self.id,
            addr: self.addr.to_string(),
        }
    }

    async fn stop(self) {
        self.shutdown.cancel();
        tokio::time::timeout(LONG, self.serving)
            .await
            .unwrap()
            .unwrap();
    }
}

/// A dialing node 1 whose own address has no listener; its local handler is "local".
fn dialer(secret: Option<&str>, options: RpcOptions) -> (Arc<TcpTransport>, Arc<Handler>) {
    let local = Handler::new("local");
    let me = Peer {
        id: NodeId(1),
        addr: "127.0.0.1:9".to_owned(),
    };
    let transport = TcpTransport::new(me, secret.map(str::to_owned), options, local.clone());
    (transport, local)
}

async fn send<T: serde::Serialize>(stream: &mut TcpStream, message: &T) {
    let frame = frame::encode(message, 4096).unwrap();
    stream.write_all(&frame).await.unwrap();
}

async fn receive<T: serde::de::DeserializeOwned>(stream: &mut TcpStream) -> T {
    let len = stream.read_u32().await.unwrap();
    let mut payload = vec![0; len as usize];
    stream.read_exact(&mut payload).await.unwrap();
    frame::decode(&payload).unwrap()
}

fn hello(protocol_version: u32) -> Hello {
    let (node_id, nonce) = (NodeId(7), [1; 32]);
    Hello {
        protocol_version,
        node_id,
        nonce,
        proof: None,
    }
}

/// Speaks the dialer's half of a handshake without a secret, as node 7.
async fn raw_handshake(stream: &mut TcpStream) {
    let challenge: Challenge = receive(stream).await;
    assert_eq!(challenge.protocol_version, PROTOCOL_VERSION);
    send(stream, &hello(PROTOCOL_VERSION)).await;
    let verdict: Verdict = receive(stream).await;
    let accepted = Verdict::Accepted {
        node_id: NodeId(2),
        proof: None,
    };
    assert_eq!(verdict, accepted);
}

/// A fake node 2 that sends `challenge` to the first dialer and waits for it to leave.
async fn impostor(challenge: Challenge) -> (Peer, JoinHandle<()>) {
    let fake = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = fake.local_addr().unwrap().to_string();
    let running = tokio::spawn(async move {
        let (mut stream, _) = fake.accept().await.unwrap();
        send(&mut stream, &challenge).await;
        assert_disconnected(&mut stream).await;
    });
    (
        Peer {
            id: NodeId(2),
            addr,
        },
        running,
    )
}

/// Asserts the other end closes `stream` (EOF or reset) within `LONG`, and returns
/// how many bytes arrived before.
async fn assert_disconnected(stream: &mut TcpStream) -> usize {
    let mut received = 0;
    let mut buffer = [0; 1024];
    loop {
        match tokio::time::timeout(LONG, stream.read(&mut buffer)).await {
            Err(_) => panic!("connection still open after {LONG:?}"),
            Ok(Ok(0) | Err(_)) => return received,
            Ok(Ok(n)) => received += n,
        }
    }
}

fn protocol_reason(result: Result<PeerResponse, TransportError>) -> String {
    match result {
        Err(TransportError::Protocol { reason, .. }) => reason,
        other => panic!("expected a Protocol error, got {other:?}"),
    }
}

/// A call gets the listener's answer, and the listener learns who called.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rpc_call_round_trips_to_the_listener_handler() {
    bounded(async {
        let node = Node::start("127.0.0.1:0", 2, None, RpcOptions::default()).await;
        let (transport, _) = dialer(None, RpcOptions::default());
        let response = transport.call(&node.peer(), read("k"), LONG).await;
        assert_eq!(response, Ok(answer("remote", "k")));
        assert_eq!(node.handler.wait_for("k").await, NodeId(1));
        let member = Member {
            id: NodeId(3),
            generation: 4,
            heartbeat: 0,
            state: MemberState::Normal,
            peer_addr: "127.0.0.1:7080".into(),
            http_addr: "127.0.0.1:8080".into(),
            resp_addr: "127.0.0.1:6380".into(),
            vnodes: 2,
            tokens: vec![Token(5), Token(u128::MAX)],
        };
        let members = vec![member];
        let request = PeerRequest::Members {
            members: members.clone(),
        };
        let response = transport.call(&node.peer(), request, LONG).await;
        assert_eq!(response, Ok(PeerResponse::Members { members }));
        node.stop().await;
    })
    .await;
}

/// 1,000 calls at once over a pool of two connections: each gets its own answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rpc_thousand_concurrent_calls_over_two_connections_get_their_own_answers() {
    bounded(async {
        let node = Node::start("127.0.0.1:0", 2, Some(SECRET), RpcOptions::default()).await;
        let options = RpcOptions {
            connections_per_peer: 2,
            ..RpcOptions::default()
        };
        let (transport, _) = dialer(Some(SECRET), options);
        let mut calls = tokio::task::JoinSet::new();
        for i in 0..1000 {
            let (transport, peer) = (transport.clone(), node.peer());
            calls.spawn(async move {
                let key = format!("key-{i}");
                (transport.call(&peer, read(&key), LONG).await, key)
            });
        }
        let mut answered = 0;
        while let Some(joined) = calls.join_next().await {
            let (response, key) = joined.unwrap();
            assert_eq!(response, Ok(answer("remote", &key)));
            answered += 1;
        }
        assert_eq!(answered, 1000);
        node.stop().await;
    })
    .await;
}

/// A slow handler makes the call time out; the same single connection then carries
/// a fast call while the slow one still runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rpc_slow_handler_times_out_and_the_connection_stays_usable() {
    bounded(async {
        let node = Node::start("127.0.0.1:0", 2, None, RpcOptions::default()).await;
        let options = RpcOptions {
            connections_per_peer: 1,
            ..RpcOptions::default()
        };
        let (transport, _) = dialer(None, options);
        let short = Duration::from_millis(200);
        let slow = transport.call(&node.peer(), read("slow-1"), short).await;
        assert_eq!(slow, Err(TransportError::Timeout(short)));
        let started = tokio::time::Instant::now();
        let fast = transport.call(&node.peer(), read("fast"), LONG).await;
        assert_eq!(fast, Ok(answer("remote", "fast")));
        // Behind the slow call it would end when that does, ~2.8 s from here.
        let took = started.elapsed();
        assert!(
            took < SLOW_FOR / 2,
            "the fast call waited for the slow one: {took:?}"
        );
        node.stop().await;
    })
    .await;
}

/// Wrong, missing and unexpected secrets: the listener refuses and never runs a
/// request; the dialer's calls fail with `Protocol`, naming the secret.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rpc_mismatched_secrets_are_refused() {
    bounded(async {
        let cases = [
            (
                Some(SECRET),
                Some("another secret of this length"),
                "wrong cluster secret",
            ),
            (Some(SECRET), None, "no cluster secret given"),
            (None, Some(SECRET), "a cluster secret was given"),
        ];
        for (listener_secret, dialer_secret, expected) in cases {
            let node = Node::start("127.0.0.1:0", 2, listener_secret, RpcOptions::default()).await;
            let (transport, _) = dialer(dialer_secret, RpcOptions::default());
            let reason = protocol_reason(transport.call(&node.peer(), read("k"), LONG).await);
            assert!(reason.contains(expected), "{reason}");
            assert!(reason.contains("secret"), "{reason}");
            assert!(node.handler.seen().is_empty());
            node.stop().await;
        }
    })
    .await;
}

/// Another protocol version is refused by the listener (with the reason on the wire)
/// and by the dialer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rpc_protocol_version_mismatch_is_refused() {
    bounded(async {
        let node = Node::start("127.0.0.1:0", 2, None, RpcOptions::default()).await;
        let mut stream = TcpStream::connect(node.addr).await.unwrap();
        let _: Challenge = receive(&mut stream).await;
        send(&mut stream, &hello(PROTOCOL_VERSION + 1)).await;
        let verdict: Verdict = receive(&mut stream).await;
        let reason = format!(
            "protocol version {}, expected {PROTOCOL_VERSION}",
            PROTOCOL_VERSION + 1
        );
        assert_eq!(
            verdict,
            Verdict::Refused {
                reason: reason.clone()
            }
        );
        assert_disconnected(&mut stream).await;
        node.stop().await;

        let challenge = Challenge {
            protocol_version: PROTOCOL_VERSION + 1,
            nonce: [0; 32],
        };
        let (peer, running) = impostor(challenge).await;
        let (transport, _) = dialer(None, RpcOptions::default());
        let refused = protocol_reason(transport.call(&peer, read("k"), LONG).await);
        assert!(refused.contains(&reason), "{refused}");
        running.await.unwrap();
    })
    .await;
}

/// Hostile bytes close only their own connection: garbage before the handshake, and
/// after it an oversized length, a truncated frame, a payload that does not decode.
/// The listener keeps serving a well-behaved dialer throughout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rpc_hostile_bytes_close_only_their_connection() {
    bounded(async {
        let options = RpcOptions {
            max_frame_bytes: 1 << 20,
            ..RpcOptions::default()
        };
        let node = Node::start("127.0.0.1:0", 2, None, options).await;
        let (transport, _) = dialer(None, RpcOptions::default());

        let mut garbage = TcpStream::connect(node.addr).await.unwrap();
        garbage.write_all(&[0xff; 64]).await.unwrap();
        assert_disconnected(&mut garbage).await;

        let oversized = (2u32 << 20).to_be_bytes().to_vec();
        let mut truncated = 100u32.to_be_bytes().to_vec();
        truncated.extend_from_slice(&[0; 10]);
        let mut undecodable = 8u32.to_be_bytes().to_vec();
        undecodable.extend_from_slice(&[0xff; 8]);
        for (i, bytes) in [oversized, truncated, undecodable].into_iter().enumerate() {
            let mut stream = TcpStream::connect(node.addr).await.unwrap();
            raw_handshake(&mut stream).await;
            stream.write_all(&bytes).await.unwrap();
            stream.shutdown().await.unwrap();
            assert_eq!(assert_disconnected(&mut stream).await, 0, "case {i}");
            let key = format!("after-{i}");
            let response = transport.call(&node.peer(), read(&key), LONG).await;
            assert_eq!(response, Ok(answer("remote", &key)));
        }
        node.stop().await;
    })
    .await;
}

/// Stopping the listener fails calls with `Unreachable`; once it is back on the same
/// port, the dialer reconnects and calls succeed again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rpc_calls_succeed_again_after_the_listener_restarts() {
    bounded(async {
        let node = Node::start("127.0.0.1:0", 2, Some(SECRET), RpcOptions::default()).await;
        let (addr, peer) = (node.addr, node.peer());
        let options = RpcOptions {
            reconnect_backoff_min: Duration::from_millis(10),
            reconnect_backoff_max: Duration::from_millis(100),
            ..RpcOptions::default()
        };
        let (transport, _) = dialer(Some(SECRET), options);
        assert_eq!(
            transport.call(&peer, read("a"), LONG).await,
            Ok(answer("remote", "a"))
        );
        node.stop().await;
        let down = transport.call(&peer, read("b"), LONG).await;
        assert!(
            matches!(down, Err(TransportError::Unreachable { .. })),
            "{down:?}"
        );

        let node = Node::start(&addr.to_string(), 2, Some(SECRET), RpcOptions::default()).await;
        let mut response = down;
        for _ in 0..100 {
            response = transport.call(&peer, read("c"), LONG).await;
            if response.is_ok() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(response, Ok(answer("remote", "c")));
        node.stop().await;
    })
    .await;
}

/// Calls to the node itself run the local handler; no listener is needed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rpc_calls_to_self_use_the_local_handler() {
    bounded(async {
        let (transport, local) = dialer(None, RpcOptions::default());
        let me = transport.me().clone();
        assert_eq!(
            transport.call(&me, read("k"), LONG).await,
            Ok(answer("local", "k"))
        );
        assert_eq!(local.wait_for("k").await, NodeId(1));
        let short = Duration::from_millis(100);
        assert_eq!(
            transport.call(&me, read("slow-3"), short).await,
            Err(TransportError::Timeout(short))
        );
    })
    .await;
}

/// Dropping the call future abandons the answer, not the request: remote and local
/// handlers both still see it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rpc_dropped_call_future_still_delivers_the_request() {
    bounded(async {
        let node = Node::start("127.0.0.1:0", 2, None, RpcOptions::default()).await;
        let (transport, local) = dialer(None, RpcOptions::default());
        drop(transport.call(&node.peer(), read("dropped-remote"), LONG));
        assert_eq!(node.handler.wait_for("dropped-remote").await, NodeId(1));
        drop(transport.call(&transport.me().clone(), read("dropped-local"), LONG));
        assert_eq!(local.wait_for("dropped-local").await, NodeId(1));
        node.stop().await;
    })
    .await;
}
