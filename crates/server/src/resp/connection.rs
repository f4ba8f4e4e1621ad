//! One client connection: read what arrives, run every whole command buffered, in
//! order, and write all their replies with one write (pipelining: a client that
//! sends 100 commands at once gets 100 replies in one segment, not 100). A
//! protocol error is answered and closes this connection only.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::OwnedSemaphorePermit;
use tokio_util::sync::CancellationToken;

use super::frame::{self, Parsed, Protocol, Reply};
use super::{MAX_PIPELINE, MAX_REPLY_BUFFER_BYTES, Shared, command};

/// What the server knows about one client.
pub struct Session {
    pub id: u64,
    pub peer: SocketAddr,
    pub protocol: Protocol,
    pub name: Option<Bytes>,
    pub lib_name: Option<Bytes>,
    pub lib_version: Option<Bytes>,
    /// Set by `QUIT`: close once its reply is written.
    pub closing: bool,
}

/// The first read buffer; it grows for large commands, up to the frame limits.
const INITIAL_BUFFER_BYTES: usize = 16 * 1024;
/// Most the read buffer grows by at once for a command announced but not arrived.
const MAX_RESERVE_BYTES: usize = 1024 * 1024;

pub async fn run(
    mut stream: TcpStream,
    peer: SocketAddr,
    id: u64,
    shared: &Shared,
    shutdown: &CancellationToken,
) {
    let mut session = Session {
        id,
        peer,
        protocol: Protocol::Resp2,
        name: None,
        lib_name: None,
        lib_version: None,
        closing: false,
    };
    let mut input = BytesMut::with_capacity(INITIAL_BUFFER_BYTES);
    let mut output = BytesMut::with_capacity(INITIAL_BUFFER_BYTES);
    // What a command on its way needs past the first buffer comes from the node's
    // budget of request bytes (shared with HTTP bodies), held until it is consumed.
    let mut share: Option<OwnedSemaphorePermit> = None;
    let mut held = 0usize;
    loop {
        let mut replies = 0;
        let mut need_more_input = false;
        while replies < MAX_PIPELINE && output.len() < MAX_REPLY_BUFFER_BYTES && !session.closing {
            match frame::parse(&mut input, &shared.limits) {
                Ok(Parsed::Command(args)) => {
                    let reply = command::execute(shared, &mut session, args).await;
                    reply.encode(session.protocol, &mut output);
                    replies += 1;
                }
                Ok(Parsed::Empty) => {}
                Ok(Parsed::Incomplete { needed }) => {
                    let wanted = needed.max(input.len()).saturating_sub(INITIAL_BUFFER_BYTES);
                    if wanted > held {
                        let budget = &shared.app.body_budget;
                        if let Err(refused) = budget.take(wanted - held, &mut share) {
                            // The command cannot be skipped unread: answer and close,
                            // as Redis does past its client query buffer limit.
                            tracing::debug!(%peer, "resp: {refused}");
                            let error = format!("ERR overloaded: {refused}");
                            close_with(&mut stream, &mut output, session.protocol, error).await;
                            return;
                        }
                        held = wanted;
                    }
                    // A large bulk on its way: make room for it, a step at a time
                    // (a header alone must not make the server allocate much).
                    input.reserve(needed.saturating_sub(input.len()).min(MAX_RESERVE_BYTES));
                    need_more_input = true;
                    break;
                }
                Err(error) => {
                    metrics::counter!("ringkv_resp_protocol_errors_total").increment(1);
                    tracing::debug!(%peer, "resp protocol error: {error}");
                    let error = format!("ERR Protocol error: {error}");
                    close_with(&mut stream, &mut output, session.protocol, error).await;
                    return;
                }
            }
        }
        if held > 0 && input.is_empty() {
            // The large command is consumed: give its bytes back, with the buffer.
            share = None;
            held = 0;
            input = BytesMut::with_capacity(INITIAL_BUFFER_BYTES);
        }
        if !output.is_empty() {
            if stream.write_all(&output).await.is_err() {
                return;
            }
            output.clear();
        }
        if session.closing {
            let _ = stream.shutdown().await;
            return;
        }
        if !need_more_input {
            // The pipeline bound was hit with commands still buffered.
            continue;
        }
        // Part of a command is here: the rest must not take forever (a client that
        // died mid-command, without closing, would hold its budget share for good).
        // Between commands a client may stay idle as long as it likes, as in Redis.
        let stall_timeout = (!input.is_empty()).then_some(shared.app.stall_timeout);
        let reading = stream.read_buf(&mut input);
        let read = tokio::select! {
            () = shutdown.cancelled() => return,
            read = within(stall_timeout, reading) => read,
        };
        match read {
            Some(Ok(0) | Err(_)) => return,
            Some(Ok(_)) => {}
            None => {
                let waited = stall_timeout.unwrap_or_default().as_secs_f64();
                tracing::debug!(%peer, "resp: no part of a command for {waited} s");
                let error = format!("ERR timeout: no part of the command arrived for {waited} s");
                close_with(&mut stream, &mut output, session.protocol, error).await;
                return;
            }
        }
    }
}

/// `future`'s output, or `None` once `timeout` passed; without a timeout, no timer.
async fn within<T>(timeout: Option<Duration>, future: impl Future<Output = T>) -> Option<T> {
    match timeout {
        Some(timeout) => tokio::time::timeout(timeout, future).await.ok(),
        None => Some(future.await),
    }
}

/// Sends the replies already in `output`, then `error`, and closes the connection:
/// after a protocol error or a refusal the rest of the stream cannot be read as
/// commands.
async fn close_with(
    stream: &mut TcpStream,
    output: &mut BytesMut,
    protocol: Protocol,
    error: String,
) {
    Reply::Error(error).encode(protocol, output);
    let _ = stream.write_all(output).await;
    let _ = stream.shutdown().await;
}
