//! The accepting side: [`serve`] runs the internal RPC listener of a node.
//!
//! Every connection gets the handshake first; then its reader hands each request to
//! the handler, which answers it directly from another thread (replica work) or in a
//! task of its own (at most `max_in_flight_per_connection` in flight at once: beyond
//! that it stops reading, which pushes back on the dialer through TCP), and a writer
//! task sends the answers in whatever order they finish. Reader and writer are separate tasks so
//! that a dialer busy writing requests can never deadlock against us writing answers.
//!
//! Whatever a peer sends, the worst outcome is its own connection closing, logged at
//! warn: a bad length, a truncated frame, a payload that does not decode.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use ringkv_core::NodeId;
use ringkv_core::wire::{PeerError, PeerResponse};
use tokio::io::AsyncWriteExt;
use tokio::net::tcp::OwnedWriteHalf;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio::task::{JoinError, JoinSet};
use tokio_util::codec::FramedRead;
use tokio_util::sync::CancellationToken;

use super::frame::{self, Body, Envelope};
use super::handshake::{self, HandshakeError, MAX_HANDSHAKE_FRAME_BYTES};
use super::{Direct, PeerHandler, Reply, RpcOptions, record_refusal};

/// First wait after a failed `accept` (e.g. out of file descriptors); doubles per
/// consecutive failure up to [`ACCEPT_BACKOFF_MAX`].
const ACCEPT_BACKOFF_MIN: Duration = Duration::from_millis(10);
const ACCEPT_BACKOFF_MAX: Duration = Duration::from_secs(1);

/// What every connection of one listener shares.
struct Context {
    me: NodeId,
    secret: Option<Vec<u8>>,
    options: RpcOptions,
    handler: Arc<dyn PeerHandler>,
}

/// Serves the internal RPC on `listener` as node `me` until `shutdown` is cancelled:
/// accepts at most `max_connections` at once (more are closed and counted), refuses
/// peers whose handshake fails (protocol version, `secret`), and answers every
/// request with `handler`. On shutdown it stops accepting, stops reading requests,
/// gives those in flight `shutdown_grace` to finish and be answered, closes every
/// connection, and returns once all its tasks have ended.
///
/// # Panics
/// When `options` fail [`RpcOptions::check`].
pub async fn serve(
    listener: TcpListener,
    me: NodeId,
    secret: Option<String>,
    options: RpcOptions,
    handler: Arc<dyn PeerHandler>,
    shutdown: CancellationToken,
) {
    options.check();
    let permits = Arc::new(Semaphore::new(options.max_connections));
    let context = Arc::new(Context {
        me,
        secret: secret.map(String::into_bytes),
        options,
        handler,
    });
    let mut connections = JoinSet::new();
    let mut backoff = ACCEPT_BACKOFF_MIN;
    loop {
        let accepted = tokio::select! {
            biased;
            _ = shutdown.cancelled() => break,
            Some(joined) = connections.join_next(), if !connections.is_empty() => {
                log_panic(joined);
                continue;
            }
            accepted = listener.accept() => accepted,
        };
        let (stream, addr) = match accepted {
            Ok(accepted) => {
                backoff = ACCEPT_BACKOFF_MIN;
                accepted
            }
            Err(error) => {
                tracing::warn!("rpc: accept failed: {error}; retrying after {backoff:?}");
                if shutdown
                    .run_until_cancelled(tokio::time::sleep(backoff))
                    .await
                    .is_none()
                {
                    break;
                }
                backoff = (backoff * 2).min(ACCEPT_BACKOFF_MAX);
                continue;
            }
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            let max = context.options.max_connections;
            tracing::warn!(peer = %addr, "rpc: refused connection: max_connections = {max} open");
            record_refusal("too_many_connections");
            drop(stream);
            continue;
        };
        let connection = serve_connection(stream, addr, context.clone(), shutdown.clone(), permit);
        connections.spawn(connection);
    }
    drop(listener);
    while let Some(joined) = connections.join_next().await {
        log_panic(joined);
    }
}

/// One accepted connection, from handshake to close.
async fn serve_connection(
    stream: TcpStream,
    addr: SocketAddr,
    context: Arc<Context>,
    shutdown: CancellationToken,
    _permit: OwnedSemaphorePermit,
) {
    let options = &context.options;
    crate::socket::configure(&stream, "rpc");
    let (reader, mut writer) = stream.into_split();
    let mut reader = FramedRead::new(reader, frame::codec(MAX_HANDSHAKE_FRAME_BYTES));
    let secret = context.secret.as_deref();
    let timeout = options.handshake_timeout;
    let accepting = handshake::accept(&mut reader, &mut writer, context.me, secret, timeout);
    let from = match shutdown.run_until_cancelled(accepting).await {
        None => return,
        Some(Ok(from)) => from,
        Some(Err(error)) => {
            log_refusal(addr, &error);
            record_refusal(error.label());
            return;
        }
    };
    tracing::debug!(peer = %addr, node = %from, "rpc: peer connected");
    reader
        .decoder_mut()
        .set_max_frame_length(options.max_frame_bytes);

    let max_in_flight = options.max_in_flight_per_connection;
    // Unbounded, yet never holds more than `max_in_flight` answers: each carries the
    // permit of its request, released only once the writer took it. Unbounded so
    // that any thread (a storage thread, the syncer) can answer without waiting.
    let (answers, answers_to_write) = mpsc::unbounded_channel();
    // Not a child of `shutdown`: answers finishing within the grace still go out.
    let close = CancellationToken::new();
    let writing = tokio::spawn(write_answers(
        writer,
        answers_to_write,
        options.max_frame_bytes,
        addr,
        close.clone(),
    ));
    let in_flight = Arc::new(Semaphore::new(max_in_flight));
    let mut handlers = JoinSet::new();
    loop {
        let frame = tokio::select! {
            biased;
            _ = shutdown.cancelled() => break,
            Some(joined) = handlers.join_next(), if !handlers.is_empty() => {
                log_panic(joined);
                continue;
            }
            frame = reader.next() => frame,
        };
        let payload = match frame {
            None => break,
            Some(Ok(payload)) => payload,
            Some(Err(error)) => {
                tracing::warn!(peer = %addr, node = %from, "rpc: closing connection: bad frame: {error}");
                break;
            }
        };
        let (id, request) = match frame::decode::<Envelope>(&payload) {
            Ok(Envelope {
                id,
                body: Body::Request(request),
            }) => (id, request),
            Ok(Envelope {
                body: Body::Response(_),
                ..
            }) => {
                tracing::warn!(peer = %addr, node = %from, "rpc: closing connection: a response on a connection the peer dialed");
                break;
            }
            Err(error) => {
                tracing::warn!(peer = %addr, node = %from, "rpc: closing connection: {error}");
                break;
            }
        };
        // At the limit, stop reading until a request finishes.
        let acquired = shutdown.run_until_cancelled(in_flight.clone().acquire_owned());
        let Some(Ok(permit)) = acquired.await else {
            break;
        };
        let answers = answers.clone();
        let reply = Reply::new(move |response| {
            // The writer is gone only if the connection is: nobody to answer then.
            let _ = answers.send(Answer {
                id,
                response,
                _permit: permit,
            });
        });
        let handler = &context.handler;
        if let Direct::Declined(request, reply) = handler.handle_direct(from, request, reply) {
            let handler = handler.clone();
            handlers.spawn(async move {
                reply.send(handler.handle(from, request).await);
            });
        }
    }
    drop(answers);
    drop(reader);
    let grace = options.shutdown_grace;
    {
        // Requests already read still run to the end (the dialer may have dropped
        // its future, not the request); on shutdown, for at most the grace. Those
        // answered directly hold a sender of `answers`: the writer waits for them.
        let drained = async {
            while let Some(joined) = handlers.join_next().await {
                log_panic(joined);
            }
        };
        tokio::pin!(drained);
        tokio::select! {
            _ = &mut drained => {}
            _ = shutdown.cancelled() => {
                if tokio::time::timeout(grace, &mut drained).await.is_err() {
                    tracing::warn!(peer = %addr, "rpc: requests still running after {grace:?}; abandoning them");
                }
            }
        }
    }
    handlers.shutdown().await;
    let mut writing = writing;
    tokio::select! {
        joined = &mut writing => log_panic(joined),
        _ = shutdown.cancelled() => {
            if tokio::time::timeout(grace, &mut writing).await.is_err() {
                close.cancel();
                log_panic(writing.await);
            }
        }
    }
    tracing::debug!(peer = %addr, node = %from, "rpc: connection closed");
}

/// One request's answer on its way to the writer, with the request's in-flight
/// permit (released once the writer took it).
struct Answer {
    id: u64,
    response: PeerResponse,
    _permit: OwnedSemaphorePermit,
}

/// Writes answers until every handler is done (all senders dropped) or `close`.
async fn write_answers(
    mut writer: OwnedWriteHalf,
    mut answers: mpsc::UnboundedReceiver<Answer>,
    max_frame_bytes: usize,
    addr: SocketAddr,
    close: CancellationToken,
) {
    while let Some(Some(first)) = close.run_until_cancelled(answers.recv()).await {
        // Answers ready meanwhile go out in the same write (one syscall for many);
        // with none queued yet, the ready tasks run first (see `driver::run`).
        if answers.is_empty() {
            tokio::task::yield_now().await;
        }
        let mut batch = Vec::new();
        let mut next = Some(first);
        while let Some(Answer { id, response, .. }) = next.take() {
            if let Some(frame) = encode_answer(id, response, max_frame_bytes, addr) {
                batch.extend_from_slice(&frame);
            }
            if batch.len() < MAX_BATCH_BYTES {
                next = answers.try_recv().ok();
            }
        }
        // Abandoning a half-written frame is fine: the connection closes with it.
        match close.run_until_cancelled(writer.write_all(&batch)).await {
            Some(Ok(())) => {}
            Some(Err(error)) => {
                tracing::debug!(peer = %addr, "rpc: write failed: {error}");
                return;
            }
            None => return,
        }
    }
    if let Err(error) = writer.shutdown().await {
        tracing::debug!(peer = %addr, "rpc: shutdown failed: {error}");
    }
}

/// Most bytes of answers sent in one write.
const MAX_BATCH_BYTES: usize = 256 * 1024;

/// The frame of one answer; an answer too large to send becomes an error answer.
fn encode_answer(
    id: u64,
    response: PeerResponse,
    max_frame_bytes: usize,
    addr: SocketAddr,
) -> Option<Vec<u8>> {
    let body = Body::Response(response);
    let frame = match frame::encode(&Envelope { id, body }, max_frame_bytes) {
        Ok(frame) => frame,
        Err(error) => {
            tracing::warn!(peer = %addr, "rpc: answer not sent: {error}");
            let message = format!("answer not sent: {error}");
            let body = Body::Response(PeerResponse::Error(PeerError::Internal { message }));
            // Fails only with an absurdly small max_frame_bytes; the call times out.
            frame::encode(&Envelope { id, body }, max_frame_bytes).ok()?
        }
    };
    Some(frame)
}

fn log_refusal(addr: SocketAddr, error: &HandshakeError) {
    match error {
        // A port probe, or a dialer that gave up: not worth a warning.
        HandshakeError::Closed => tracing::debug!(peer = %addr, "rpc: refused peer: {error}"),
        _ => tracing::warn!(peer = %addr, "rpc: refused peer: {error}"),
    }
}

fn log_panic(joined: Result<(), JoinError>) {
    if let Err(error) = joined
        && error.is_panic()
    {
        tracing::error!("rpc: a connection task panicked: {error}");
    }
}
