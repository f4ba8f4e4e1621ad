//! Byte formats that leave the process: the stored record and the client's version
//! token. Both start with a format byte so they can evolve; decoders check every
//! invariant and turn anything else into an error, never a panic.

use std::collections::BTreeMap;

use base64::Engine as _;
use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::dvv::{ActorId, Context, Dot, DvvSet, MAX_COUNTER};
use crate::hlc::Hlc;
use crate::record::{Body, Record, Sibling};

/// Format byte of the record encoding written today.
const RECORD_FORMAT_V1: u8 = 1;
/// Format byte of the version token handed to clients today.
const CONTEXT_FORMAT_V1: u8 = 1;
/// Longest version token accepted from a client, in characters.
pub const MAX_VERSION_TOKEN_LEN: usize = 64 * 1024;

/// Why stored bytes are not a record.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeRecordError {
    #[error("record is empty")]
    Empty,
    #[error("unknown record format {0} (this build reads format {RECORD_FORMAT_V1})")]
    UnknownFormat(u8),
    #[error("record body is malformed: {0}")]
    Malformed(String),
    #[error("record has {0} trailing bytes")]
    TrailingBytes(usize),
    #[error("record breaks an invariant: {0}")]
    Invalid(String),
}

/// Why a client's version token is not valid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseVersionError {
    #[error("version token is longer than {MAX_VERSION_TOKEN_LEN} characters")]
    TooLong,
    #[error("version token is not base64url: {0}")]
    NotBase64(String),
    #[error("version token is not a valid version: {0}")]
    Invalid(String),
}

#[derive(Serialize, Deserialize)]
struct ContextV1 {
    vector: Vec<(u64, u64)>,
    cloud: Vec<(u64, u64)>,
}

#[derive(Serialize, Deserialize)]
struct SiblingV1 {
    actor: u64,
    counter: u64,
    hlc: u64,
    expires_at_ms: Option<u64>,
    body: BodyV1,
}

#[derive(Serialize, Deserialize)]
enum BodyV1 {
    Bytes(Bytes),
    Tombstone,
    Crdt(Bytes),
}

#[derive(Serialize, Deserialize)]
struct RecordV1 {
    context: ContextV1,
    siblings: Vec<SiblingV1>,
}

fn context_to_wire(context: &Context) -> ContextV1 {
    ContextV1 {
        vector: context
            .vector()
            .map(|(actor, counter)| (actor.0, counter))
            .collect(),
        cloud: context
            .cloud()
            .map(|dot| (dot.actor.0, dot.counter))
            .collect(),
    }
}

/// Rebuilds a context, insisting on the canonical form the encoder writes: sorted,
/// no duplicates, counters in 1..=MAX_COUNTER, cloud dots beyond their vector entry.
fn context_from_wire(wire: ContextV1) -> Result<Context, String> {
    let counter_ok = |counter: u64| (1..=MAX_COUNTER).contains(&counter);
    if !wire.vector.windows(2).all(|w| w[0].0 < w[1].0) {
        return Err("version vector is not sorted by actor".into());
    }
    if !wire.cloud.windows(2).all(|w| w[0] < w[1]) {
        return Err("dot cloud is not sorted".into());
    }
    if let Some((actor, counter)) = wire
        .vector
        .iter()
        .chain(&wire.cloud)
        .find(|(_, c)| !counter_ok(*c))
    {
        return Err(format!(
            "counter {counter} of actor {actor} is out of range"
        ));
    }
    let vector: BTreeMap<u64, u64> = wire.vector.iter().copied().collect();
    if let Some((actor, counter)) = wire
        .cloud
        .iter()
        .find(|(actor, counter)| *counter <= vector.get(actor).copied().unwrap_or(0) + 1)
    {
        return Err(format!(
            "cloud dot ({actor}, {counter}) is not beyond its vector entry"
        ));
    }
    let context = Context::from_parts(
        wire.vector
            .into_iter()
            .map(|(actor, counter)| (ActorId(actor), counter)),
        wire.cloud.into_iter().map(|(actor, counter)| Dot {
            actor: ActorId(actor),
            counter,
        }),
    );
    Ok(context)
}

impl Record {
    /// The stored form: a format byte, then the postcard encoding of the record.
    pub fn encode(&self) -> Vec<u8> {
        let wire = RecordV1 {
            context: context_to_wire(self.context()),
            siblings: self
                .siblings()
                .map(|(dot, sibling)| SiblingV1 {
                    actor: dot.actor.0,
                    counter: dot.counter,
                    hlc: sibling.hlc.0,
                    expires_at_ms: sibling.expires_at_ms,
                    body: match &sibling.body {
                        Body::Bytes(bytes) => BodyV1::Bytes(bytes.clone()),
                        Body::Tombstone => BodyV1::Tombstone,
                        Body::Crdt(bytes) => BodyV1::Crdt(bytes.clone()),
                    },
                })
                .collect(),
        };
        // One allocation: the bodies plus room for the dots and the context.
        let bodies: usize = wire
            .siblings
            .iter()
            .map(|sibling| match &sibling.body {
                BodyV1::Bytes(bytes) | BodyV1::Crdt(bytes) => bytes.len(),
                BodyV1::Tombstone => 0,
            })
            .sum();
        let mut out = Vec::with_capacity(64 + bodies + 40 * wire.siblings.len());
        out.push(RECORD_FORMAT_V1);
        // Serializing plain integers, options and byte strings into a Vec cannot fail.
        postcard::to_extend(&wire, out).expect("record encoding is infallible")
    }

    /// Reads a stored record back.
    ///
    /// # Errors
    /// Any byte string that `encode` could not have produced: unknown format,
    /// truncated or trailing bytes, unsorted or duplicate dots, a version outside its
    /// context, out-of-range counters.
    pub fn decode(bytes: &[u8]) -> Result<Record, DecodeRecordError> {
        let (&format, rest) = bytes.split_first().ok_or(DecodeRecordError::Empty)?;
        if format != RECORD_FORMAT_V1 {
            return Err(DecodeRecordError::UnknownFormat(format));
        }
        let (wire, trailing) = postcard::take_from_bytes::<RecordV1>(rest)
            .map_err(|error| DecodeRecordError::Malformed(error.to_string()))?;
        if !trailing.is_empty() {
            return Err(DecodeRecordError::TrailingBytes(trailing.len()));
        }
        let context = context_from_wire(wire.context).map_err(DecodeRecordError::Invalid)?;
        let mut values = BTreeMap::new();
        let mut previous: Option<Dot> = None;
        for sibling in wire.siblings {
            let dot = Dot {
                actor: ActorId(sibling.actor),
                counter: sibling.counter,
            };
            if previous.is_some_and(|p| p >= dot) {
                return Err(DecodeRecordError::Invalid(
                    "versions are not sorted by dot".into(),
                ));
            }
            previous = Some(dot);
            let body = match sibling.body {
                BodyV1::Bytes(bytes) => Body::Bytes(bytes),
                BodyV1::Tombstone => Body::Tombstone,
                BodyV1::Crdt(bytes) => Body::Crdt(bytes),
            };
            values.insert(
                dot,
                Sibling {
                    hlc: Hlc(sibling.hlc),
                    expires_at_ms: sibling.expires_at_ms,
                    body,
                },
            );
        }
        let versions = DvvSet::from_parts(context, values).map_err(|dot| {
            DecodeRecordError::Invalid(format!(
                "version ({}, {}) is outside the record's context",
                dot.actor.0, dot.counter
            ))
        })?;
        Ok(Record { versions })
    }
}

impl Context {
    /// The opaque version token handed to clients: base64url (no padding) of a
    /// format byte and the postcard encoding of the context.
    pub fn to_token(&self) -> String {
        let mut raw = vec![CONTEXT_FORMAT_V1];
        raw.extend(
            postcard::to_stdvec(&context_to_wire(self)).expect("context encoding is infallible"),
        );
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw)
    }

    /// The raw form of the token (what `to_token` base64-encodes), for peer messages.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut raw = vec![CONTEXT_FORMAT_V1];
        raw.extend(
            postcard::to_stdvec(&context_to_wire(self)).expect("context encoding is infallible"),
        );
        raw
    }

    /// Parses the raw form of a context (from a peer).
    ///
    /// # Errors
    /// Bytes that `to_bytes` could not have produced.
    pub fn from_bytes(raw: &[u8]) -> Result<Context, ParseVersionError> {
        if raw.len() > MAX_VERSION_TOKEN_LEN {
            return Err(ParseVersionError::TooLong);
        }
        let (&format, rest) = raw
            .split_first()
            .ok_or_else(|| ParseVersionError::Invalid("empty".into()))?;
        if format != CONTEXT_FORMAT_V1 {
            return Err(ParseVersionError::Invalid(format!(
                "unknown format {format}"
            )));
        }
        let (wire, trailing) = postcard::take_from_bytes::<ContextV1>(rest)
            .map_err(|error| ParseVersionError::Invalid(error.to_string()))?;
        if !trailing.is_empty() {
            return Err(ParseVersionError::Invalid(format!(
                "{} trailing bytes",
                trailing.len()
            )));
        }
        context_from_wire(wire).map_err(ParseVersionError::Invalid)
    }

    /// Parses a client's version token.
    ///
    /// # Errors
    /// Too long, not base64url, or not the encoding of a valid context.
    pub fn from_token(token: &str) -> Result<Context, ParseVersionError> {
        if token.len() > MAX_VERSION_TOKEN_LEN {
            return Err(ParseVersionError::TooLong);
        }
        let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(token.trim_end_matches('='))
            .map_err(|error| ParseVersionError::NotBase64(error.to_string()))?;
        Context::from_bytes(&raw)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sibling_strategy() -> impl Strategy<Value = Sibling> {
        (
            any::<u64>(),
            proptest::option::of(any::<u64>()),
            prop_oneof![
                prop::collection::vec(any::<u8>(), 0..64).prop_map(|v| Body::Bytes(Bytes::from(v))),
                Just(Body::Tombstone),
                prop::collection::vec(any::<u8>(), 0..16).prop_map(|v| Body::Crdt(Bytes::from(v))),
            ],
        )
            .prop_map(|(hlc, expires_at_ms, body)| Sibling {
                hlc: Hlc(hlc),
                expires_at_ms,
                body,
            })
    }

    /// Records built by real operations: blind writes, writes with the current
    /// context, and merges with another record.
    fn record_strategy() -> impl Strategy<Value = Record> {
        prop::collection::vec((0u64..4, any::<bool>(), sibling_strategy()), 0..12).prop_map(|ops| {
            let mut record = Record::default();
            let mut other = Record::default();
            for (actor, with_context, sibling) in ops {
                let target = if actor % 2 == 0 {
                    &mut record
                } else {
                    &mut other
                };
                let seen = if with_context {
                    target.context().clone()
                } else {
                    Context::default()
                };
                target.update(&seen, ActorId(actor), sibling);
            }
            record.sync(&other);
            record
        })
    }

    proptest! {
        #[test]
        fn record_round_trips(record in record_strategy()) {
            prop_assert_eq!(Record::decode(&record.encode()), Ok(record));
        }

        #[test]
        fn version_token_round_trips(record in record_strategy()) {
            let token = record.context().to_token();
            prop_assert_eq!(Context::from_token(&token), Ok(record.context().clone()));
        }

        #[test]
        fn random_bytes_never_panic_the_decoder(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
            let _ = Record::decode(&bytes);
            let mut with_format = vec![RECORD_FORMAT_V1];
            with_format.extend(&bytes);
            let _ = Record::decode(&with_format);
        }

        #[test]
        fn corrupted_records_never_panic(record in record_strategy(), at in any::<usize>(), byte in any::<u8>()) {
            let mut bytes = record.encode();
            let index = at % bytes.len();
            bytes[index] = byte;
            if let Ok(decoded) = Record::decode(&bytes) {
                // Whatever decodes must be a record that re-encodes to itself.
                prop_assert_eq!(Record::decode(&decoded.encode()), Ok(decoded));
            }
        }

        #[test]
        fn random_tokens_never_panic(token in ".{0,64}") {
            let _ = Context::from_token(&token);
        }
    }

    #[test]
    fn malformed_records_are_errors() {
        assert_eq!(Record::decode(&[]), Err(DecodeRecordError::Empty));
        assert_eq!(
            Record::decode(&[9, 0, 0]),
            Err(DecodeRecordError::UnknownFormat(9))
        );
        let mut bytes = Record::default().encode();
        bytes.push(0);
        assert_eq!(
            Record::decode(&bytes),
            Err(DecodeRecordError::TrailingBytes(1))
        );
    }

    #[test]
    fn value_outside_context_is_rejected() {
        let wire = RecordV1 {
            context: ContextV1 {
                vector: vec![(1, 1)],
                cloud: vec![],
            },
            siblings: vec![SiblingV1 {
                actor: 1,
                counter: 2,
                hlc: 0,
                expires_at_ms: None,
                body: BodyV1::Tombstone,
            }],
        };
        let mut bytes = vec![RECORD_FORMAT_V1];
        bytes.extend(postcard::to_stdvec(&wire).unwrap());
        assert!(matches!(
            Record::decode(&bytes),
            Err(DecodeRecordError::Invalid(_))
        ));
    }

    #[test]
    fn bad_tokens_are_errors() {
        assert!(matches!(
            Context::from_token("!!!"),
            Err(ParseVersionError::NotBase64(_))
        ));
        assert!(matches!(
            Context::from_token(""),
            Err(ParseVersionError::Invalid(_))
        ));
        assert!(matches!(
            Context::from_token("AgA"),
            Err(ParseVersionError::Invalid(_))
        ));
        let long = "A".repeat(MAX_VERSION_TOKEN_LEN + 1);
        assert_eq!(Context::from_token(&long), Err(ParseVersionError::TooLong));
        // Unsorted vector.
        let wire = ContextV1 {
            vector: vec![(2, 1), (1, 1)],
            cloud: vec![],
        };
        let mut raw = vec![CONTEXT_FORMAT_V1];
        raw.extend(postcard::to_stdvec(&wire).unwrap());
        let token = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw);
        assert!(matches!(
            Context::from_token(&token),
            Err(ParseVersionError::Invalid(_))
        ));
    }
}
