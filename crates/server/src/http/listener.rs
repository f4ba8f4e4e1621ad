//! The HTTP listener: at most `MAX_CONNECTIONS` client connections at once, as
//! on the RESP port. Without it a node accepted without bound: every connection
//! costs a task, hyper's buffers and a file descriptor, and a node out of file
//! descriptors cannot open its storage files or dial its peers either.
//!
//! At the limit the node stops accepting: new clients wait in the kernel's accept
//! queue (and past it, in their own connect) until a connection closes; each such
//! wait is counted in `ringkv_http_connection_limit_waits_total`.
//!
//! A connection that takes longer than `HEADER_READ_TIMEOUT` to send a request's
//! head, counted from when the node starts waiting for it (after accepting, or
//! after answering the previous request), is closed: connections left idle, or
//! trickling a header, give their slot back. (`axum::serve` cannot set this
//! timeout, hence `serve` here, which runs hyper's HTTP/1 connections itself.)

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::socket::AtLimit;

/// Client connections served at once by one node's HTTP listener.
pub const MAX_CONNECTIONS: usize = 1024;

/// Longest wait for a request's head on a connection. Above the 90 s for which
/// common HTTP client pools (reqwest's, so the SDK's) keep an idle connection, so
/// they close theirs first rather than race the node's close with a new request.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(120);

/// Serves `app` on the connections `listener` accepts until `shutdown`; then stops
/// accepting, lets every connection finish the request it is serving (idle ones
/// close at once) and returns when all are closed.
pub async fn serve(
    listener: Limited,
    app: Router,
    header_read_timeout: Duration,
    shutdown: CancellationToken,
) {
    let mut listener = listener;
    let mut connections = JoinSet::new();
    loop {
        let (stream, addr, permit) = tokio::select! {
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        // Reap finished connections so the set stays as small as the live ones.
        while connections.try_join_next().is_some() {}
        let service = TowerToHyperService::new(app.clone());
        let shutdown = shutdown.clone();
        connections.spawn(async move {
            // The connection's slot, given back when it closes.
            let _permit = permit;
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder
                .timer(TokioTimer::new())
                .header_read_timeout(header_read_timeout);
            let connection = builder.serve_connection(TokioIo::new(stream), service);
            tokio::pin!(connection);
            let result = tokio::select! {
                result = connection.as_mut() => result,
                () = shutdown.cancelled() => {
                    connection.as_mut().graceful_shutdown();
                    connection.await
                }
            };
            if let Err(error) = result {
                tracing::debug!(peer = %addr, "http: connection closed: {error}");
            }
        });
    }
    drop(listener);
    while connections.join_next().await.is_some() {}
}

/// A `TcpListener` that hands out a permit per open connection.
pub struct Limited {
    listener: TcpListener,
    permits: Arc<Semaphore>,
    at_limit: AtLimit,
}

impl Limited {
    pub fn new(listener: TcpListener, limit: usize) -> Limited {
        let limit = limit.max(1);
        let counter = "ringkv_http_connection_limit_waits_total";
        Limited {
            listener,
            permits: Arc::new(Semaphore::new(limit)),
            at_limit: AtLimit::new("HTTP", counter, limit),
        }
    }
}

impl Limited {
    /// Waits for a free slot, then for a client: its connection, and the permit it
    /// holds until it closes.
    async fn accept(&mut self) -> (TcpStream, SocketAddr, OwnedSemaphorePermit) {
        let permit = match self.permits.clone().try_acquire_owned() {
            Ok(permit) => permit,
            Err(_) => {
                self.at_limit.wait_begins();
                self.permits
                    .clone()
                    .acquire_owned()
                    .await
                    .expect("the connection semaphore is never closed")
            }
        };
        // axum's accept: retries, and backs off on errors such as EMFILE.
        let (stream, addr) = axum::serve::Listener::accept(&mut self.listener).await;
        crate::socket::configure(&stream, "http");
        (stream, addr, permit)
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use axum::Router;
    use axum::routing::get;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    /// A node-like listener on 127.0.0.1 serving "hello" (and "/slow" after 300 ms).
    async fn start(
        limit: usize,
        header_timeout: Duration,
    ) -> (SocketAddr, CancellationToken, tokio::task::JoinHandle<()>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let app = Router::new().route("/", get(|| async { "hello" })).route(
            "/slow",
            get(|| async {
                tokio::time::sleep(Duration::from_millis(300)).await;
                "slow hello"
            }),
        );
        let shutdown = CancellationToken::new();
        let serving = tokio::spawn(serve(
            Limited::new(listener, limit),
            app,
            header_timeout,
            shutdown.clone(),
        ));
        (addr, shutdown, serving)
    }

    async fn send(stream: &mut TcpStream, path: &str) {
        let request = format!("GET {path} HTTP/1.1\r\nhost: x\r\n\r\n");
        stream.write_all(request.as_bytes()).await.unwrap();
    }

    /// What the node sends until it has answered or closed (empty: closed).
    async fn answer(stream: &mut TcpStream) -> String {
        let mut answer = vec![0; 1024];
        let read = stream.read(&mut answer).await.unwrap_or(0);
        String::from_utf8_lossy(&answer[..read]).into_owned()
    }

    async fn get_on(stream: &mut TcpStream) -> String {
        send(stream, "/").await;
        answer(stream).await
    }

    #[tokio::test]
    async fn past_the_limit_a_client_waits_until_a_connection_closes() {
        let (addr, shutdown, serving) = start(2, HEADER_READ_TIMEOUT).await;
        let mut first = TcpStream::connect(addr).await.unwrap();
        let mut second = TcpStream::connect(addr).await.unwrap();
        assert!(get_on(&mut first).await.contains("hello"));
        assert!(get_on(&mut second).await.contains("hello"));

        // The kernel completes the third connect, but the node does not accept it:
        // its request gets no answer while both others stay open.
        let mut third = TcpStream::connect(addr).await.unwrap();
        send(&mut third, "/").await;
        let waiting = tokio::time::timeout(Duration::from_millis(300), answer(&mut third)).await;
        assert!(waiting.is_err(), "answered past the limit: {waiting:?}");

        drop(first);
        let answered = tokio::time::timeout(Duration::from_secs(10), answer(&mut third))
            .await
            .expect("served once a connection closed");
        assert!(answered.contains("hello"), "{answered}");
        // Still served on the other kept-alive connection.
        assert!(get_on(&mut second).await.contains("hello"));
        shutdown.cancel();
        serving.await.unwrap();
    }

    #[tokio::test]
    async fn a_connection_without_a_whole_request_head_in_time_is_closed_and_frees_its_slot() {
        let timeout = Duration::from_millis(300);
        let (addr, shutdown, serving) = start(1, timeout).await;
        // Half a head, then nothing: closed once the timeout passed, not before.
        let started = Instant::now();
        let mut trickling = TcpStream::connect(addr).await.unwrap();
        trickling.write_all(b"GET / HTTP/1.1\r\nhos").await.unwrap();
        let closed = tokio::time::timeout(Duration::from_secs(10), answer(&mut trickling))
            .await
            .expect("closed within 10 s");
        assert!(!closed.contains("hello"), "{closed}");
        assert!(
            started.elapsed() >= timeout,
            "closed after {:?}",
            started.elapsed()
        );

        // Its slot came back: the one slot serves another client, which, once
        // answered and idle, is closed the same way.
        let mut next = TcpStream::connect(addr).await.unwrap();
        let answered = tokio::time::timeout(Duration::from_secs(10), get_on(&mut next))
            .await
            .expect("served once the slot came back");
        assert!(answered.contains("hello"), "{answered}");
        let idle = tokio::time::timeout(Duration::from_secs(10), answer(&mut next))
            .await
            .expect("an idle connection is closed within 10 s");
        assert_eq!(idle, "");
        shutdown.cancel();
        serving.await.unwrap();
    }

    #[tokio::test]
    async fn shutdown_answers_the_request_in_flight_then_returns() {
        let (addr, shutdown, serving) = start(4, HEADER_READ_TIMEOUT).await;
        let mut idle = TcpStream::connect(addr).await.unwrap();
        assert!(get_on(&mut idle).await.contains("hello"));
        let mut busy = TcpStream::connect(addr).await.unwrap();
        send(&mut busy, "/slow").await;
        tokio::time::sleep(Duration::from_millis(100)).await;
        shutdown.cancel();
        let answered = tokio::time::timeout(Duration::from_secs(10), answer(&mut busy))
            .await
            .expect("answered within 10 s");
        assert!(answered.contains("slow hello"), "{answered}");
        tokio::time::timeout(Duration::from_secs(10), serving)
            .await
            .expect("serve returns once every connection closed")
            .unwrap();
        // The idle connection was closed, not left open.
        assert_eq!(answer(&mut idle).await, "");
    }
}
