//! The HTTP listener: at most `MAX_CONNECTIONS` client connections at once, as
//! on the RESP port. Without it a node accepted without bound: every connection
//! costs a task, hyper's buffers and a file descriptor, and a node out of file
//! descriptors cannot open its storage files or dial its peers either.
//!
//! At the limit the node stops accepting: new clients wait in the kernel's accept
//! queue (and past it, in their own connect) until a connection closes; each such
//! wait is counted in `ringkv_http_connection_limit_waits_total`.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Client connections served at once by one node's HTTP listener.
pub const MAX_CONNECTIONS: usize = 1024;

/// A `TcpListener` that holds a permit per open connection.
pub struct Limited {
    listener: TcpListener,
    permits: Arc<Semaphore>,
    limit: usize,
}

impl Limited {
    pub fn new(listener: TcpListener, limit: usize) -> Limited {
        let limit = limit.max(1);
        Limited {
            listener,
            permits: Arc::new(Semaphore::new(limit)),
            limit,
        }
    }
}

impl axum::serve::Listener for Limited {
    type Io = Held;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Held, SocketAddr) {
        let permit = match self.permits.clone().try_acquire_owned() {
            Ok(permit) => permit,
            Err(_) => {
                metrics::counter!("ringkv_http_connection_limit_waits_total").increment(1);
                tracing::warn!("{} HTTP clients connected; new ones wait", self.limit);
                self.permits
                    .clone()
                    .acquire_owned()
                    .await
                    .expect("the connection semaphore is never closed")
            }
        };
        // axum's own accept: retries, and backs off on errors such as EMFILE.
        let (stream, addr) = axum::serve::Listener::accept(&mut self.listener).await;
        // Answers go out when written, as on the RESP and peer connections: without
        // TCP_NODELAY a response written in two parts waits for the client's
        // (delayed) ACK of the first.
        if let Err(error) = stream.set_nodelay(true) {
            tracing::debug!("http: cannot set TCP_NODELAY: {error}");
        }
        (
            Held {
                stream,
                _permit: permit,
            },
            addr,
        )
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }
}

/// A client connection and its permit, given back when the connection is dropped.
pub struct Held {
    stream: TcpStream,
    _permit: OwnedSemaphorePermit,
}

impl AsyncRead for Held {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for Held {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use axum::Router;
    use axum::routing::get;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    async fn get_on(stream: &mut TcpStream) -> io::Result<String> {
        stream
            .write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
            .await?;
        let mut answer = vec![0; 1024];
        let read = stream.read(&mut answer).await?;
        Ok(String::from_utf8_lossy(&answer[..read]).into_owned())
    }

    #[tokio::test]
    async fn past_the_limit_a_client_waits_until_a_connection_closes() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let app = Router::new().route("/", get(|| async { "hello" }));
        let server = tokio::spawn(async move {
            axum::serve(Limited::new(listener, 2), app).await.unwrap();
        });

        let mut first = TcpStream::connect(addr).await.unwrap();
        let mut second = TcpStream::connect(addr).await.unwrap();
        assert!(get_on(&mut first).await.unwrap().contains("hello"));
        assert!(get_on(&mut second).await.unwrap().contains("hello"));

        // The kernel completes the third connect, but the node does not accept it:
        // its request gets no answer while both others stay open.
        let mut third = TcpStream::connect(addr).await.unwrap();
        let waiting = tokio::time::timeout(Duration::from_millis(300), get_on(&mut third)).await;
        assert!(waiting.is_err(), "answered past the limit: {waiting:?}");

        drop(first);
        let answered = tokio::time::timeout(Duration::from_secs(10), async {
            let mut answer = vec![0; 1024];
            let read = third.read(&mut answer).await.unwrap();
            String::from_utf8_lossy(&answer[..read]).into_owned()
        })
        .await
        .expect("served once a connection closed");
        assert!(answered.contains("hello"), "{answered}");
        // Still served on the other kept-alive connection.
        assert!(get_on(&mut second).await.unwrap().contains("hello"));
        server.abort();
    }
}
