//! A slot's driver: the task that owns one connection of a peer's pool.
//!
//! It connects when the first request arrives (lazily), runs the handshake, writes
//! requests in queue order, and runs a reader task that hands each answer to its
//! caller by id. Writer and reader are separate tasks so a peer that is slow to read
//! our requests can never stop us reading its answers. When a connection breaks,
//! every call queued or awaiting an answer on the slot fails with `Unreachable` (or
//! `Protocol` if the peer sent garbage); the next call reconnects. A failed connect
//! marks the peer down (see `link::Health`).

use std::sync::Arc;

use futures_util::StreamExt;
use ringkv_cluster::{Peer, TransportError};
use ringkv_core::NodeId;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::mpsc;
use tokio_util::codec::{FramedRead, LengthDelimitedCodec};
use tokio_util::sync::CancellationToken;

use super::frame::{self, Body, Envelope};
use super::handshake::{self, MAX_HANDSHAKE_FRAME_BYTES};
use super::link::{Health, LinkConfig, Outgoing, Slot};
use super::record_refusal;

/// Most bytes of queued frames sent in one write.
const MAX_BATCH_BYTES: usize = 256 * 1024;

/// What a driver works with.
pub(super) struct Driver {
    pub peer: Peer,
    pub slot: Arc<Slot>,
    pub health: Arc<Health>,
    pub config: Arc<LinkConfig>,
    /// The link's token: cancelled on transport shutdown or a new peer address.
    pub closed: CancellationToken,
}

/// A connection that passed the handshake.
struct Connection {
    reader: FramedRead<OwnedReadHalf, LengthDelimitedCodec>,
    writer: OwnedWriteHalf,
}

fn unreachable(peer: &Peer, reason: String) -> TransportError {
    TransportError::Unreachable {
        peer: peer.id,
        reason,
    }
}

fn protocol(peer: &Peer, reason: String) -> TransportError {
    TransportError::Protocol {
        peer: peer.id,
        reason,
    }
}

/// Fails every request still queued on a slot with `error`.
pub(super) fn fail_queued(
    queue: &mut mpsc::Receiver<Outgoing>,
    slot: &Slot,
    error: &TransportError,
) {
    while let Ok(outgoing) = queue.try_recv() {
        slot.answer(outgoing.id, Err(error.clone()));
    }
}

/// The error of calls cut off by the link closing.
pub(super) fn closing_error(config: &LinkConfig, peer: NodeId) -> TransportError {
    if config.shutdown.is_cancelled() {
        TransportError::Closed
    } else {
        let reason = "the peer's address changed".to_owned();
        TransportError::Unreachable { peer, reason }
    }
}

/// Runs one slot: one connection at a time, made when a request waits. The loop ends
/// only when the link closes; each turn handles at least one request, so it never
/// spins, and while the peer is down requests fail without a connect attempt.
pub(super) async fn drive(driver: Driver, mut queue: mpsc::Receiver<Outgoing>) {
    let Driver {
        peer,
        slot,
        health,
        config,
        closed,
    } = &driver;
    while let Some(Some(first)) = closed.run_until_cancelled(queue.recv()).await {
        if let Some(error) = health.down_error() {
            slot.answer(first.id, Err(error));
            continue;
        }
        let Some(connected) = closed.run_until_cancelled(connect(peer, config)).await else {
            slot.answer(first.id, Err(closing_error(config, peer.id)));
            break;
        };
        match connected {
            Err(error) => {
                let (backoff, failures) = health.failed(&error);
                if failures == 0 || matches!(error, TransportError::Protocol { .. }) {
                    tracing::warn!(peer = %peer.id, addr = %peer.addr, "rpc: {error}; calls fail for {backoff:?}");
                } else {
                    tracing::debug!(peer = %peer.id, addr = %peer.addr, "rpc: {error}; calls fail for {backoff:?}");
                }
                slot.answer(first.id, Err(error.clone()));
                fail_queued(&mut queue, slot, &error);
            }
            Ok(connection) => {
                let failures = health.connected();
                if failures > 0 {
                    tracing::info!(peer = %peer.id, addr = %peer.addr, "rpc: connected after {failures} failed attempts");
                }
                let error = run(&driver, connection, first, &mut queue).await;
                tracing::debug!(peer = %peer.id, addr = %peer.addr, "rpc: connection ended: {error}");
                fail_queued(&mut queue, slot, &error);
                slot.fail_all(&error);
            }
        }
    }
    let error = closing_error(config, peer.id);
    queue.close();
    fail_queued(&mut queue, slot, &error);
    slot.fail_all(&error);
}

/// Opens a connection to `peer` and runs the handshake.
async fn connect(peer: &Peer, config: &LinkConfig) -> Result<Connection, TransportError> {
    let options = &config.options;
    let connecting = TcpStream::connect(peer.addr.as_str());
    let stream = match tokio::time::timeout(options.connect_timeout, connecting).await {
        Err(_) => {
            let timeout = options.connect_timeout;
            let reason = format!("connect to {} timed out after {timeout:?}", peer.addr);
            return Err(unreachable(peer, reason));
        }
        Ok(Err(error)) => {
            return Err(unreachable(
                peer,
                format!("cannot connect to {}: {error}", peer.addr),
            ));
        }
        Ok(Ok(stream)) => stream,
    };
    // Requests are small and latency-bound: each frame goes out at once.
    crate::socket::configure(&stream, "rpc");
    let (reader, mut writer) = stream.into_split();
    let mut reader = FramedRead::new(reader, frame::codec(MAX_HANDSHAKE_FRAME_BYTES));
    let secret = config.secret.as_deref();
    let timeout = options.handshake_timeout;
    let dialed = handshake::dial(
        &mut reader,
        &mut writer,
        config.me,
        peer.id,
        secret,
        timeout,
    )
    .await;
    if let Err(error) = dialed {
        let reason = format!("handshake with {} failed: {error}", peer.addr);
        if error.is_protocol() {
            record_refusal(error.label());
            return Err(protocol(peer, reason));
        }
        return Err(unreachable(peer, reason));
    }
    reader
        .decoder_mut()
        .set_max_frame_length(options.max_frame_bytes);
    Ok(Connection { reader, writer })
}

/// Writes queued requests to one connection until it breaks or the link closes, while
/// a reader task answers calls. Returns why it ended.
async fn run(
    driver: &Driver,
    connection: Connection,
    first: Outgoing,
    queue: &mut mpsc::Receiver<Outgoing>,
) -> TransportError {
    let Driver {
        peer,
        slot,
        config,
        closed,
        ..
    } = driver;
    let Connection { reader, mut writer } = connection;
    let broken = closed.child_token();
    let reading = tokio::spawn(read_answers(
        reader,
        slot.clone(),
        peer.clone(),
        broken.clone(),
    ));
    let mut next = Some(first);
    let write_error = loop {
        let outgoing = match next.take() {
            Some(outgoing) => outgoing,
            None => match broken.run_until_cancelled(queue.recv()).await {
                Some(Some(outgoing)) => outgoing,
                _ => break None,
            },
        };
        // Frames queued meanwhile go out in the same write: one syscall for many
        // calls under load, no added wait when idle. With nothing queued yet, let
        // the tasks that are ready run first (one turn of the scheduler): those
        // about to call this peer join the batch. Measured on a 3-node cluster under
        // 64 writers: sends per client write 1.80 → 0.89, p99 lower in 4 of 4 pairs.
        if queue.is_empty() {
            tokio::task::yield_now().await;
        }
        let mut batch = outgoing.frame;
        while batch.len() < MAX_BATCH_BYTES {
            match queue.try_recv() {
                Ok(more) => batch.extend_from_slice(&more.frame),
                Err(_) => break,
            }
        }
        // Abandoning a half-written frame is fine: the connection is dropped with it.
        match broken.run_until_cancelled(writer.write_all(&batch)).await {
            Some(Ok(())) => {}
            Some(Err(error)) => {
                let reason = format!("write to {} failed: {error}", peer.addr);
                break Some(unreachable(peer, reason));
            }
            None => break None,
        }
    };
    broken.cancel();
    let read_error = reading
        .await
        .unwrap_or_else(|error| Some(unreachable(peer, format!("reader task failed: {error}"))));
    if closed.is_cancelled() {
        return closing_error(config, peer.id);
    }
    write_error
        .or(read_error)
        .unwrap_or_else(|| unreachable(peer, format!("connection to {} closed", peer.addr)))
}

/// Hands every answer on the connection to its caller; returns why it stopped
/// (`None`: told to stop).
async fn read_answers(
    mut reader: FramedRead<OwnedReadHalf, LengthDelimitedCodec>,
    slot: Arc<Slot>,
    peer: Peer,
    broken: CancellationToken,
) -> Option<TransportError> {
    let error = loop {
        let Some(frame) = broken.run_until_cancelled(reader.next()).await else {
            break None;
        };
        let payload = match frame {
            None => {
                break Some(unreachable(
                    &peer,
                    format!("{} closed the connection", peer.addr),
                ));
            }
            Some(Err(error)) if error.kind() == std::io::ErrorKind::InvalidData => {
                break Some(protocol(
                    &peer,
                    format!("bad frame from {}: {error}", peer.addr),
                ));
            }
            Some(Err(error)) => {
                let reason = format!("read from {} failed: {error}", peer.addr);
                break Some(unreachable(&peer, reason));
            }
            Some(Ok(payload)) => payload,
        };
        match frame::decode::<Envelope>(&payload) {
            Ok(Envelope {
                id,
                body: Body::Response(response),
            }) => slot.answer(id, Ok(response)),
            Ok(Envelope {
                body: Body::Request(_),
                ..
            }) => {
                let reason = format!("{} sent a request on a connection it accepted", peer.addr);
                break Some(protocol(&peer, reason));
            }
            Err(error) => break Some(protocol(&peer, format!("from {}: {error}", peer.addr))),
        }
    };
    if let Some(error @ TransportError::Protocol { .. }) = &error {
        tracing::warn!(peer = %peer.id, addr = %peer.addr, "rpc: closing connection: {error}");
    }
    broken.cancel();
    error
}
