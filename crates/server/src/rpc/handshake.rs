//! The handshake that opens every RPC connection, before any [`Envelope`]: it refuses
//! peers of another protocol version or another cluster before they can send a
//! request, and tells the listener which node dialed.
//!
//! ```text
//! listener → dialer    Challenge { protocol_version, nonce: Ns }
//! dialer   → listener  Hello { protocol_version, node_id, nonce: Nc, proof }
//! listener → dialer    Verdict::Accepted { node_id, proof } | Verdict::Refused { reason }
//! ```
//!
//! With a `cluster_secret`, proofs are challenge–response so the secret never crosses
//! the wire: the dialer's is HMAC-SHA256(secret, "ringkv-rpc dialer" ‖ Ns ‖ its id),
//! the listener's HMAC-SHA256(secret, "ringkv-rpc listener" ‖ Nc ‖ its id), so each
//! side proves it knows the secret (mutual), fresh nonces stop replays, and the role
//! labels stop a proof from one direction being reflected in the other. Without a
//! secret both proofs are `None`; a node with a secret refuses one without, and vice
//! versa. It is not encryption or channel binding: traffic after the handshake is
//! plain, as on any trusted cluster network.
//!
//! [`Envelope`]: super::frame::Envelope

use std::time::Duration;

use futures_util::StreamExt;
use hmac::{Hmac, KeyInit, Mac};
use ringkv_core::NodeId;
use ringkv_core::wire::PROTOCOL_VERSION;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio_util::codec::{FramedRead, LengthDelimitedCodec};

use super::frame::{self, FrameError};

/// Largest handshake frame: peers are not trusted with big buffers before they prove
/// themselves.
pub const MAX_HANDSHAKE_FRAME_BYTES: usize = 4096;

/// A fresh random challenge, from the OS.
pub type Nonce = [u8; 32];
/// An HMAC-SHA256 tag.
pub type Proof = [u8; 32];

const DIALER_LABEL: &[u8] = b"ringkv-rpc dialer";
const LISTENER_LABEL: &[u8] = b"ringkv-rpc listener";

/// First frame, listener → dialer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Challenge {
    pub protocol_version: u32,
    pub nonce: Nonce,
}

/// Dialer → listener: who is calling, and its proof over the listener's nonce.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    pub protocol_version: u32,
    pub node_id: NodeId,
    pub nonce: Nonce,
    pub proof: Option<Proof>,
}

/// Listener → dialer: the outcome. After `Refused` the listener closes the connection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Verdict {
    Accepted {
        node_id: NodeId,
        proof: Option<Proof>,
    },
    Refused {
        reason: String,
    },
}

/// Why this node refused the other side.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("protocol version {theirs}, expected {PROTOCOL_VERSION}")]
    ProtocolVersion { theirs: u32 },
    #[error("wrong cluster secret")]
    WrongSecret,
    #[error("no cluster secret given, but this node requires one")]
    MissingSecret,
    #[error("a cluster secret was given, but this node has none")]
    UnexpectedSecret,
}

/// Why a handshake did not end in an established connection.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HandshakeError {
    #[error("refused the peer: {0}")]
    Refused(Refusal),
    #[error("refused by the peer: {0}")]
    RefusedByPeer(String),
    #[error("the peer is node {actual}, expected node {expected}")]
    WrongPeer { expected: NodeId, actual: NodeId },
    #[error("handshake timed out after {0:?}")]
    Timeout(Duration),
    #[error("connection closed during the handshake")]
    Closed,
    #[error("handshake failed: {0}")]
    Io(String),
    #[error("bad handshake message: {0}")]
    Malformed(#[from] FrameError),
    #[error("no random nonce from the OS: {0}")]
    Random(String),
}

impl HandshakeError {
    /// The `reason` label of `ringkv_rpc_connections_refused_total`.
    pub fn label(&self) -> &'static str {
        match self {
            HandshakeError::Refused(Refusal::ProtocolVersion { .. }) => "protocol_version",
            HandshakeError::Refused(Refusal::WrongSecret) => "wrong_secret",
            HandshakeError::Refused(Refusal::MissingSecret) => "missing_secret",
            HandshakeError::Refused(Refusal::UnexpectedSecret) => "unexpected_secret",
            HandshakeError::RefusedByPeer(_) => "refused_by_peer",
            HandshakeError::WrongPeer { .. } => "wrong_peer",
            HandshakeError::Timeout(_) => "timeout",
            HandshakeError::Closed => "closed",
            HandshakeError::Io(_) => "io",
            HandshakeError::Malformed(_) => "malformed",
            HandshakeError::Random(_) => "random",
        }
    }

    /// Whether the peer was reached but will not talk to us (as opposed to a network
    /// failure, which a retry may cure).
    pub fn is_protocol(&self) -> bool {
        !matches!(
            self,
            HandshakeError::Timeout(_)
                | HandshakeError::Closed
                | HandshakeError::Io(_)
                | HandshakeError::Random(_)
        )
    }
}

/// The dialer's proof: HMAC-SHA256(secret, dialer label ‖ `listener_nonce` ‖ `dialer`).
pub fn dialer_proof(secret: &[u8], listener_nonce: &Nonce, dialer: NodeId) -> Proof {
    mac(secret, DIALER_LABEL, listener_nonce, dialer)
        .finalize()
        .into_bytes()
        .into()
}

/// The listener's proof: HMAC-SHA256(secret, listener label ‖ `dialer_nonce` ‖ `listener`).
pub fn listener_proof(secret: &[u8], dialer_nonce: &Nonce, listener: NodeId) -> Proof {
    mac(secret, LISTENER_LABEL, dialer_nonce, listener)
        .finalize()
        .into_bytes()
        .into()
}

fn mac(secret: &[u8], label: &[u8], nonce: &Nonce, node_id: NodeId) -> Hmac<Sha256> {
    let mut mac =
        <Hmac<Sha256> as KeyInit>::new_from_slice(secret).expect("HMAC accepts keys of any length");
    mac.update(label);
    mac.update(nonce);
    mac.update(&node_id.0.to_be_bytes());
    mac
}

/// Checks the other side's proof, if any, against ours, in constant time.
fn check_proof(
    secret: Option<&[u8]>,
    proof: Option<&Proof>,
    expected: impl FnOnce(&[u8]) -> Hmac<Sha256>,
) -> Result<(), Refusal> {
    match (secret, proof) {
        (None, None) => Ok(()),
        (Some(_), None) => Err(Refusal::MissingSecret),
        (None, Some(_)) => Err(Refusal::UnexpectedSecret),
        (Some(secret), Some(proof)) => expected(secret)
            .verify_slice(proof)
            .map_err(|_| Refusal::WrongSecret),
    }
}

/// Listener side: challenges the dialer and returns its (with a secret: proven) id.
/// A refused dialer is sent [`Verdict::Refused`] first.
///
/// # Errors
/// A refusal, a timeout, a closed connection or a malformed message.
pub async fn accept<R, W>(
    reader: &mut FramedRead<R, LengthDelimitedCodec>,
    writer: &mut W,
    me: NodeId,
    secret: Option<&[u8]>,
    timeout: Duration,
) -> Result<NodeId, HandshakeError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let exchange = async {
        let nonce = random_nonce()?;
        let protocol_version = PROTOCOL_VERSION;
        send(
            writer,
            &Challenge {
                protocol_version,
                nonce,
            },
        )
        .await?;
        let hello: Hello = receive(reader).await?;
        let checked = if hello.protocol_version == PROTOCOL_VERSION {
            check_proof(secret, hello.proof.as_ref(), |secret| {
                mac(secret, DIALER_LABEL, &nonce, hello.node_id)
            })
        } else {
            let theirs = hello.protocol_version;
            Err(Refusal::ProtocolVersion { theirs })
        };
        if let Err(refusal) = checked {
            let reason = refusal.to_string();
            send(writer, &Verdict::Refused { reason }).await?;
            // Best effort: the dialer reads the reason before it sees the close.
            let _ = writer.shutdown().await;
            return Err(HandshakeError::Refused(refusal));
        }
        let proof = secret.map(|secret| listener_proof(secret, &hello.nonce, me));
        send(writer, &Verdict::Accepted { node_id: me, proof }).await?;
        Ok(hello.node_id)
    };
    tokio::time::timeout(timeout, exchange)
        .await
        .map_err(|_| HandshakeError::Timeout(timeout))?
}

/// Dialer side: answers the listener's challenge and checks that the listener is
/// `expected` and (with a secret) knows the secret too.
///
/// # Errors
/// A refusal by either side, a timeout, a closed connection or a malformed message.
pub async fn dial<R, W>(
    reader: &mut FramedRead<R, LengthDelimitedCodec>,
    writer: &mut W,
    me: NodeId,
    expected: NodeId,
    secret: Option<&[u8]>,
    timeout: Duration,
) -> Result<(), HandshakeError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let exchange = async {
        let challenge: Challenge = receive(reader).await?;
        if challenge.protocol_version != PROTOCOL_VERSION {
            let theirs = challenge.protocol_version;
            return Err(HandshakeError::Refused(Refusal::ProtocolVersion { theirs }));
        }
        let nonce = random_nonce()?;
        let hello = Hello {
            protocol_version: PROTOCOL_VERSION,
            node_id: me,
            nonce,
            proof: secret.map(|secret| dialer_proof(secret, &challenge.nonce, me)),
        };
        send(writer, &hello).await?;
        match receive(reader).await? {
            Verdict::Refused { reason } => Err(HandshakeError::RefusedByPeer(reason)),
            // A seed is dialled before its id is known: any member may answer for it.
            Verdict::Accepted { node_id, .. }
                if node_id != expected && !ringkv_cluster::transport::is_seed_id(expected) =>
            {
                Err(HandshakeError::WrongPeer {
                    expected,
                    actual: node_id,
                })
            }
            Verdict::Accepted { node_id, proof } => check_proof(secret, proof.as_ref(), |secret| {
                mac(secret, LISTENER_LABEL, &nonce, node_id)
            })
            .map_err(HandshakeError::Refused),
        }
    };
    tokio::time::timeout(timeout, exchange)
        .await
        .map_err(|_| HandshakeError::Timeout(timeout))?
}

fn random_nonce() -> Result<Nonce, HandshakeError> {
    let mut nonce = [0; 32];
    getrandom::fill(&mut nonce).map_err(|error| HandshakeError::Random(error.to_string()))?;
    Ok(nonce)
}

async fn send<W: AsyncWrite + Unpin, T: Serialize>(
    writer: &mut W,
    message: &T,
) -> Result<(), HandshakeError> {
    let frame = frame::encode(message, MAX_HANDSHAKE_FRAME_BYTES)?;
    writer
        .write_all(&frame)
        .await
        .map_err(|error| HandshakeError::Io(error.to_string()))
}

async fn receive<R: AsyncRead + Unpin, T: DeserializeOwned>(
    reader: &mut FramedRead<R, LengthDelimitedCodec>,
) -> Result<T, HandshakeError> {
    match reader.next().await {
        None => Err(HandshakeError::Closed),
        Some(Err(error)) if error.kind() == std::io::ErrorKind::InvalidData => Err(
            HandshakeError::Malformed(FrameError::Decode(error.to_string())),
        ),
        Some(Err(error)) => Err(HandshakeError::Io(error.to_string())),
        Some(Ok(payload)) => Ok(frame::decode(&payload)?),
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{DuplexStream, ReadHalf, WriteHalf};

    use super::*;

    const SECRET: &[u8] = b"a cluster secret of some length";

    #[test]
    fn proof_verifies_with_the_same_secret_nonce_and_node() {
        let nonce = [3; 32];
        let proof = dialer_proof(SECRET, &nonce, NodeId(1));
        let check = |secret: &[u8], nonce: Nonce, node| {
            check_proof(Some(secret), Some(&proof), |secret| {
                mac(secret, DIALER_LABEL, &nonce, node)
            })
        };
        assert_eq!(check(SECRET, nonce, NodeId(1)), Ok(()));
        assert_eq!(
            check(b"another secret entirely", nonce, NodeId(1)),
            Err(Refusal::WrongSecret)
        );
        assert_eq!(check(SECRET, [4; 32], NodeId(1)), Err(Refusal::WrongSecret));
        assert_eq!(check(SECRET, nonce, NodeId(2)), Err(Refusal::WrongSecret));
    }

    #[test]
    fn dialer_and_listener_proofs_differ_for_the_same_input() {
        let nonce = [9; 32];
        assert_ne!(
            dialer_proof(SECRET, &nonce, NodeId(5)),
            listener_proof(SECRET, &nonce, NodeId(5))
        );
    }

    #[test]
    fn secret_on_one_side_only_is_refused() {
        let proof = [0; 32];
        let expected = |secret: &[u8]| mac(secret, DIALER_LABEL, &[0; 32], NodeId(1));
        assert_eq!(
            check_proof(Some(SECRET), None, expected),
            Err(Refusal::MissingSecret)
        );
        assert_eq!(
            check_proof(None, Some(&proof), expected),
            Err(Refusal::UnexpectedSecret)
        );
        assert_eq!(check_proof(None, None, expected), Ok(()));
    }

    #[test]
    fn proof_is_hmac_sha256_of_label_nonce_and_node() {
        // The same bytes in one `update`, so the input layout is pinned down.
        let mut input = DIALER_LABEL.to_vec();
        input.extend_from_slice(&[1; 32]);
        input.extend_from_slice(&7u64.to_be_bytes());
        let mut reference = <Hmac<Sha256> as KeyInit>::new_from_slice(b"Jefe").expect("any key");
        reference.update(&input);
        let reference: Proof = reference.finalize().into_bytes().into();
        assert_eq!(dialer_proof(b"Jefe", &[1; 32], NodeId(7)), reference);
    }

    type Reader = FramedRead<ReadHalf<DuplexStream>, LengthDelimitedCodec>;

    /// Both ends of an in-memory connection: (dialer's, listener's).
    fn pipe() -> (
        (Reader, WriteHalf<DuplexStream>),
        (Reader, WriteHalf<DuplexStream>),
    ) {
        let (dialer, listener) = tokio::io::duplex(4096);
        let (dialer_read, dialer_write) = tokio::io::split(dialer);
        let (listener_read, listener_write) = tokio::io::split(listener);
        let framed = |read| FramedRead::new(read, frame::codec(MAX_HANDSHAKE_FRAME_BYTES));
        (
            (framed(dialer_read), dialer_write),
            (framed(listener_read), listener_write),
        )
    }

    const TIMEOUT: Duration = Duration::from_secs(5);

    /// Runs both sides with these secrets: (dialer's result, listener's result).
    async fn handshake(
        dialer_secret: Option<&[u8]>,
        listener_secret: Option<&[u8]>,
    ) -> (Result<(), HandshakeError>, Result<NodeId, HandshakeError>) {
        let ((mut dialer_read, mut dialer_write), (mut listener_read, mut listener_write)) = pipe();
        let (me, peer) = (NodeId(1), NodeId(2));
        tokio::join!(
            dial(
                &mut dialer_read,
                &mut dialer_write,
                me,
                peer,
                dialer_secret,
                TIMEOUT
            ),
            accept(
                &mut listener_read,
                &mut listener_write,
                peer,
                listener_secret,
                TIMEOUT
            ),
        )
    }

    #[tokio::test]
    async fn handshake_between_matching_nodes_succeeds_both_ways() {
        assert_eq!(
            handshake(Some(SECRET), Some(SECRET)).await,
            (Ok(()), Ok(NodeId(1)))
        );
        assert_eq!(handshake(None, None).await, (Ok(()), Ok(NodeId(1))));
    }

    #[tokio::test]
    async fn handshake_with_a_wrong_secret_is_refused_on_both_sides() {
        let (dialed, accepted) = handshake(Some(b"not the cluster secret"), Some(SECRET)).await;
        let reason = "wrong cluster secret".to_owned();
        assert_eq!(dialed, Err(HandshakeError::RefusedByPeer(reason)));
        assert_eq!(accepted, Err(HandshakeError::Refused(Refusal::WrongSecret)));
    }

    /// Mutual: a listener that answers with a made-up proof is refused by the dialer.
    #[tokio::test]
    async fn listener_that_cannot_prove_the_secret_is_refused_by_the_dialer() {
        let ((mut dialer_read, mut dialer_write), (mut listener_read, mut listener_write)) = pipe();
        let impostor = async {
            let nonce = [0; 32];
            let challenge = Challenge {
                protocol_version: PROTOCOL_VERSION,
                nonce,
            };
            send(&mut listener_write, &challenge).await?;
            let hello: Hello = receive(&mut listener_read).await?;
            let accepted = Verdict::Accepted {
                node_id: NodeId(2),
                proof: Some([7; 32]),
            };
            send(&mut listener_write, &accepted).await?;
            Ok::<_, HandshakeError>(hello)
        };
        let secret = Some(SECRET);
        let dialing = dial(
            &mut dialer_read,
            &mut dialer_write,
            NodeId(1),
            NodeId(2),
            secret,
            TIMEOUT,
        );
        let (dialed, hello) = tokio::join!(dialing, impostor);
        assert!(
            hello.expect("impostor ran").proof.is_some(),
            "the dialer proved its secret"
        );
        assert_eq!(dialed, Err(HandshakeError::Refused(Refusal::WrongSecret)));
    }
}
