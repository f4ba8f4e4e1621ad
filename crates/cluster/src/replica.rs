//! The replica side of the peer protocol: what a node does with `Update`,
//! `Replicate` and `Read` from a coordinator (possibly itself). Synchronous and
//! blocking (storage): the transport runs it off the async runtime and waits for the
//! returned durability barrier before it answers. `Update` alone answers before it
//! is durable (see `Coordinator::write`); `Sync` makes it so.

use std::time::Duration;

use bytes::Bytes;
use ringkv_core::wire::{
    MAX_ARCS_PER_REQUEST, MAX_DIGESTS, MAX_PAGE_BYTES, MAX_RECORDS_PER_PAGE, PeerError,
    PeerRequest, PeerResponse, WireWrite,
};
use ringkv_core::{Context, Key, Record};
use ringkv_storage::{StorageError, SyncWait};

use crate::node::{Node, NodeError, Write, WriteBody};

/// A replica's answer, to send once `durable` (if any) has resolved.
pub struct ReplicaReply {
    pub response: PeerResponse,
    pub durable: Option<SyncWait>,
}

impl ReplicaReply {
    fn now(response: PeerResponse) -> ReplicaReply {
        ReplicaReply {
            response,
            durable: None,
        }
    }

    fn error(error: PeerError) -> ReplicaReply {
        ReplicaReply::now(PeerResponse::Error(error))
    }
}

fn invalid(message: String) -> PeerError {
    PeerError::Invalid { message }
}

impl From<NodeError> for PeerError {
    fn from(error: NodeError) -> PeerError {
        match error {
            NodeError::Storage(StorageError::Corrupt { .. }) => PeerError::Corrupt {
                message: error.to_string(),
            },
            NodeError::HintsFull {
                held_bytes,
                max_bytes,
            } => PeerError::HintsFull {
                held_bytes,
                max_bytes,
            },
            NodeError::TtlOverflow { .. }
            | NodeError::TooManySiblings { .. }
            | NodeError::InvalidOperation(_) => PeerError::Invalid {
                message: error.to_string(),
            },
            NodeError::WrongType(message) => PeerError::WrongType { message },
            NodeError::CorruptState(message) => PeerError::Corrupt { message },
            NodeError::Storage(_) | NodeError::CorruptMetadata { .. } => PeerError::Internal {
                message: error.to_string(),
            },
        }
    }
}

/// Decodes a key and a record that came over the wire.
fn key_and_record(key: Bytes, record: &[u8]) -> Result<(Key, Record), PeerError> {
    let key = Key::from_stored(key).map_err(|error| invalid(format!("bad key: {error}")))?;
    let record = Record::decode(record).map_err(|error| invalid(format!("bad record: {error}")))?;
    Ok((key, record))
}

/// Decodes a write that came over the wire.
///
/// # Errors
/// A bad key or version.
pub fn decode_write(write: WireWrite) -> Result<Write, PeerError> {
    let key = Key::from_stored(write.key).map_err(|error| invalid(format!("bad key: {error}")))?;
    let seen = Context::from_bytes(&write.seen)
        .map_err(|error| invalid(format!("bad version: {error}")))?;
    let body = match (write.value, write.crdt) {
        (Some(value), None) if write.overwrite => WriteBody::Overwrite(value),
        (Some(value), None) => WriteBody::Value(value),
        (None, None) => WriteBody::Delete,
        (None, Some(operation)) => {
            operation
                .validate()
                .map_err(|error| invalid(format!("bad CRDT operation: {error}")))?;
            WriteBody::Crdt(operation)
        }
        (Some(_), Some(_)) => {
            return Err(invalid(
                "a write with both a value and a CRDT operation".into(),
            ));
        }
    };
    Ok(Write {
        key,
        body,
        seen,
        ttl: write.ttl_ms.map(Duration::from_millis),
    })
}

/// Encodes a write for the wire.
pub fn encode_write(write: &Write) -> WireWrite {
    WireWrite {
        key: write.key.to_bytes(),
        value: match &write.body {
            WriteBody::Value(value) | WriteBody::Overwrite(value) => Some(value.clone()),
            WriteBody::Delete | WriteBody::Crdt(_) => None,
        },
        crdt: match &write.body {
            WriteBody::Crdt(operation) => Some(operation.clone()),
            WriteBody::Value(_) | WriteBody::Overwrite(_) | WriteBody::Delete => None,
        },
        overwrite: matches!(write.body, WriteBody::Overwrite(_)),
        seen: Bytes::from(write.seen.to_bytes()),
        ttl_ms: write
            .ttl
            .map(|ttl| u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX)),
    }
}

impl Node {
    /// Handles a replica request. `Coordinate` and `Members` are not replica work and
    /// are answered with an error; the caller routes them elsewhere.
    pub fn handle_replica(&self, request: PeerRequest) -> ReplicaReply {
        match request {
            PeerRequest::Update { write } => {
                let write = match decode_write(write) {
                    Ok(write) => write,
                    Err(error) => return ReplicaReply::error(error),
                };
                // Answered before it is durable: the coordinator counts this replica
                // once a `Sync` it sends here resolves, so this fsync overlaps the
                // other replicas' fsyncs.
                match self.write(write) {
                    Ok(written) => ReplicaReply {
                        response: PeerResponse::Updated {
                            record: Bytes::from(written.record.encode()),
                            version: Bytes::from(written.version.to_bytes()),
                        },
                        durable: None,
                    },
                    Err(error) => ReplicaReply::error(error.into()),
                }
            }
            PeerRequest::Replicate { key, record } => {
                let (key, record) = match key_and_record(key, &record) {
                    Ok(decoded) => decoded,
                    Err(error) => return ReplicaReply::error(error),
                };
                match self.replicate(&key, &record) {
                    Ok(durable) => ReplicaReply {
                        response: PeerResponse::Ack,
                        durable: Some(durable),
                    },
                    Err(error) => ReplicaReply::error(error.into()),
                }
            }
            PeerRequest::Sync => ReplicaReply {
                response: PeerResponse::Ack,
                durable: Some(self.sync()),
            },
            PeerRequest::Read { key } => {
                let key = match Key::from_stored(key) {
                    Ok(key) => key,
                    Err(error) => return ReplicaReply::error(invalid(format!("bad key: {error}"))),
                };
                match self.read(&key) {
                    Ok(record) => ReplicaReply::now(PeerResponse::Record {
                        record: record.map(|record| Bytes::from(record.encode())),
                    }),
                    Err(error) => ReplicaReply::error(error.into()),
                }
            }
            PeerRequest::Hint {
                target,
                key,
                record,
            } => {
                let (key, record) = match key_and_record(key, &record) {
                    Ok(decoded) => decoded,
                    Err(error) => return ReplicaReply::error(error),
                };
                match self.store_hint(target, &key, &record) {
                    Ok(durable) => ReplicaReply {
                        response: PeerResponse::Ack,
                        durable: Some(durable),
                    },
                    Err(error) => ReplicaReply::error(error.into()),
                }
            }
            PeerRequest::TreeRoots { arcs } => {
                if arcs.len() > MAX_ARCS_PER_REQUEST {
                    return ReplicaReply::error(invalid(format!(
                        "{} arcs asked at once, more than {MAX_ARCS_PER_REQUEST}",
                        arcs.len()
                    )));
                }
                // Answered once durable: the roots include writes applied but not yet
                // synced, and a peer that sees them equal to its own may forget
                // tombstones on the strength of it (tombstone GC by acknowledgement).
                // A crash must not take back what the answer showed.
                ReplicaReply {
                    response: PeerResponse::Roots {
                        roots: self.tree_roots(&arcs),
                    },
                    durable: Some(self.sync()),
                }
            }
            PeerRequest::TreeHashes { arc, child } => {
                let hashes = self
                    .tree_hashes(arc, child.map(usize::from))
                    .map(|hashes| hashes.to_vec())
                    .unwrap_or_default();
                ReplicaReply::now(PeerResponse::Hashes { hashes })
            }
            PeerRequest::LeafDigests { range } => {
                if range.start > range.end {
                    return ReplicaReply::error(invalid(
                        "a token range that ends before it starts".into(),
                    ));
                }
                match self.digests(range, MAX_DIGESTS) {
                    Ok((keys, complete)) => ReplicaReply::now(PeerResponse::Digests {
                        keys: keys
                            .into_iter()
                            .map(|(key, digest)| (key.to_bytes(), digest))
                            .collect(),
                        complete,
                    }),
                    Err(error) => ReplicaReply::error(error.into()),
                }
            }
            PeerRequest::StreamRange {
                range,
                after,
                max_bytes,
            } => {
                if range.start > range.end {
                    return ReplicaReply::error(invalid(
                        "a token range that ends before it starts".into(),
                    ));
                }
                let after = match after.map(Key::from_stored).transpose() {
                    Ok(after) => after,
                    Err(error) => return ReplicaReply::error(invalid(format!("bad key: {error}"))),
                };
                let max_bytes =
                    usize::try_from(max_bytes.min(MAX_PAGE_BYTES)).unwrap_or(usize::MAX);
                match self.page(range, after.as_ref(), max_bytes) {
                    Ok((records, complete)) => ReplicaReply::now(PeerResponse::Records {
                        records: records
                            .into_iter()
                            .map(|(key, record)| (key.to_bytes(), Bytes::from(record.encode())))
                            .collect(),
                        complete,
                    }),
                    Err(error) => ReplicaReply::error(error.into()),
                }
            }
            PeerRequest::Store { records } => {
                if records.len() > MAX_RECORDS_PER_PAGE {
                    return ReplicaReply::error(invalid(format!(
                        "{} records stored at once, more than {MAX_RECORDS_PER_PAGE}",
                        records.len()
                    )));
                }
                let mut decoded = Vec::with_capacity(records.len());
                for (key, record) in records {
                    match key_and_record(key, &record) {
                        Ok(pair) => decoded.push(pair),
                        Err(error) => return ReplicaReply::error(error),
                    }
                }
                let mut durable = None;
                for (key, record) in &decoded {
                    match self.replicate(key, record) {
                        Ok(wait) => durable = Some(wait),
                        Err(error) => return ReplicaReply::error(error.into()),
                    }
                }
                // The last barrier covers every write before it.
                ReplicaReply {
                    response: PeerResponse::Ack,
                    durable: Some(durable.unwrap_or_else(|| self.sync())),
                }
            }
            PeerRequest::Coordinate { .. }
            | PeerRequest::Members { .. }
            | PeerRequest::Decommission => ReplicaReply::error(PeerError::Internal {
                message: "not a replica request".into(),
            }),
        }
    }
}
