//! Frames of the internal RPC (DESIGN.md §7): a `u32` big-endian length, then that
//! many bytes of postcard.
//!
//! Why a length prefix: the reader knows how much to buffer before it decodes, and can
//! refuse a frame by its length alone, before allocating for it. Why a cap
//! (`max_frame_bytes`): a bad peer, or garbage on the port, must not make a node
//! allocate 4 GiB. Every decode error here is an `Err`, never a panic: these bytes
//! come from the network.

use ringkv_core::wire::{PeerRequest, PeerResponse};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tokio_util::codec::LengthDelimitedCodec;

/// Default `max_frame_bytes`: 64 MiB, room for a 16 MiB value with its versions.
pub const DEFAULT_MAX_FRAME_BYTES: usize = 64 << 20;

/// Bytes of the length prefix.
pub const LENGTH_BYTES: usize = 4;

/// One message on an established connection: a request or the answer to one, matched
/// by `id` (unique per connection and direction of the call).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envelope {
    pub id: u64,
    pub body: Body,
}

/// What an [`Envelope`] carries. Dialers send only requests, listeners only responses.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Body {
    Request(PeerRequest),
    Response(PeerResponse),
}

/// Why a frame could not be built or read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("frame of {len} bytes exceeds max_frame_bytes = {max}")]
    TooLarge { len: usize, max: usize },
    #[error("cannot encode message: {0}")]
    Encode(String),
    #[error("frame does not decode: {0}")]
    Decode(String),
}

/// The codec that splits a byte stream into frame payloads; frames longer than
/// `max_frame_bytes` are an `InvalidData` error, truncated ones an error at EOF.
///
/// # Panics
/// If `max_frame_bytes` does not fit the `u32` prefix (a caller bug: see
/// `RpcOptions::check`).
pub fn codec(max_frame_bytes: usize) -> LengthDelimitedCodec {
    assert!(u32::try_from(max_frame_bytes).is_ok());
    LengthDelimitedCodec::builder()
        .length_field_length(LENGTH_BYTES)
        .big_endian()
        .max_frame_length(max_frame_bytes)
        .new_codec()
}

/// `message` as one whole frame: prefix and payload, ready to write.
///
/// # Errors
/// A payload longer than `max_frame_bytes` is [`FrameError::TooLarge`].
pub fn encode<T: Serialize>(message: &T, max_frame_bytes: usize) -> Result<Vec<u8>, FrameError> {
    // Most frames (a record of a small value) fit without growing the buffer.
    let mut buffer = Vec::with_capacity(256);
    buffer.extend_from_slice(&[0; LENGTH_BYTES]);
    let mut frame = postcard::to_extend(message, buffer)
        .map_err(|error| FrameError::Encode(error.to_string()))?;
    let len = frame.len() - LENGTH_BYTES;
    let too_large = FrameError::TooLarge {
        len,
        max: max_frame_bytes,
    };
    if len > max_frame_bytes {
        return Err(too_large);
    }
    let prefix = u32::try_from(len).map_err(|_| too_large)?;
    frame[..LENGTH_BYTES].copy_from_slice(&prefix.to_be_bytes());
    Ok(frame)
}

/// Decodes one frame's payload (without its prefix). Trailing bytes are an error: a
/// peer that sends more than the message is not speaking our protocol.
///
/// # Errors
/// [`FrameError::Decode`] for anything that is not exactly one `T`.
pub fn decode<T: DeserializeOwned>(payload: &[u8]) -> Result<T, FrameError> {
    let (message, rest) = postcard::take_from_bytes(payload)
        .map_err(|error| FrameError::Decode(error.to_string()))?;
    if !rest.is_empty() {
        return Err(FrameError::Decode(format!(
            "{} trailing bytes after the message",
            rest.len()
        )));
    }
    Ok(message)
}

#[cfg(test)]
mod tests {
    use bytes::BytesMut;
    use ringkv_core::wire::PeerError;
    use tokio_util::codec::Decoder;

    use super::*;

    fn request() -> Envelope {
        Envelope {
            id: 7,
            body: Body::Request(PeerRequest::Read {
                key: bytes::Bytes::from_static(b"k"),
            }),
        }
    }

    #[test]
    fn encoded_frame_decodes_to_the_same_envelope() {
        let frame = encode(&request(), 1024).expect("small frame encodes");
        let mut buffer = BytesMut::from(&frame[..]);
        let payload = codec(1024)
            .decode(&mut buffer)
            .expect("valid frame")
            .expect("whole frame");
        assert_eq!(decode::<Envelope>(&payload), Ok(request()));
        assert!(buffer.is_empty());
    }

    #[test]
    fn prefix_is_big_endian_payload_length() {
        let frame = encode(&request(), 1024).expect("small frame encodes");
        let len = u32::from_be_bytes([frame[0], frame[1], frame[2], frame[3]]);
        assert_eq!(len as usize, frame.len() - LENGTH_BYTES);
    }

    #[test]
    fn encode_refuses_payload_over_the_limit() {
        let big = Envelope {
            id: 1,
            body: Body::Response(PeerResponse::Error(PeerError::Internal {
                message: "x".repeat(100),
            })),
        };
        assert!(matches!(
            encode(&big, 50),
            Err(FrameError::TooLarge { max: 50, .. })
        ));
    }

    #[test]
    fn codec_refuses_length_over_the_limit_before_the_payload_arrives() {
        let mut buffer = BytesMut::from(&2048u32.to_be_bytes()[..]);
        let error = codec(1024).decode(&mut buffer).expect_err("too long");
        assert_eq!(error.kind(), std::io::ErrorKind::InvalidData);
    }

    #[test]
    fn codec_reports_truncated_frame_at_eof() {
        let frame = encode(&request(), 1024).expect("small frame encodes");
        let mut buffer = BytesMut::from(&frame[..frame.len() - 1]);
        let mut codec = codec(1024);
        assert!(matches!(codec.decode(&mut buffer), Ok(None)));
        assert!(codec.decode_eof(&mut buffer).is_err());
    }

    #[test]
    fn garbage_and_trailing_bytes_do_not_decode() {
        assert!(decode::<Envelope>(&[0xff; 16]).is_err());
        assert!(decode::<Envelope>(&[]).is_err());
        let frame = encode(&request(), 1024).expect("small frame encodes");
        let mut payload = frame[LENGTH_BYTES..].to_vec();
        payload.push(0);
        assert!(matches!(
            decode::<Envelope>(&payload),
            Err(FrameError::Decode(_))
        ));
    }
}
