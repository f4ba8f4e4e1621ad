//! The coordinator (DESIGN.md §5): turns one client request into calls to the key's
//! N replicas and answers after W durable acks (writes) or R answers (reads).
//!
//! Writes: a node that is not one of the key's replicas forwards the write one hop
//! to a replica (`Coordinate`). The coordinator applies the write as a new version on
//! one replica (itself first; `Update`, answered before it is durable), then sends
//! the resulting record to the other replicas (`Replicate`, answered once durable)
//! and a `Sync` to the updated one, and answers once W replicas hold it durably. So
//! a write waits for one round of fsyncs, in parallel on all replicas, not two in a
//! row. The calls
//! still running are not cancelled: they reach their replicas anyway.
//!
//! Reads: any node coordinates. It asks all N replicas, answers with the merge of the
//! first R answers, and once the rest have answered (or timed out) sends the merge
//! of all answers to every replica that held less (read repair), in the background.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use ringkv_core::wire::{PeerError, PeerRequest, PeerResponse};
use ringkv_core::{Context, Key, NodeId, Record};

use crate::gather::Gather;
use crate::membership::Membership;

mod slot;
use crate::node::Write;
use crate::replica::encode_write;
use crate::transport::{BoxFuture, Peer, Spawn, Transport, TransportError};
use slot::{Holder, Slot, holders, timeout_for};

/// What the coordinator needs to know from the configuration.
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    /// N: replicas per key.
    pub replication_factor: u8,
    /// How long one call to a replica may take (`request_timeout_ms`).
    pub request_timeout: Duration,
}

/// Why a request failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CoordinatorError {
    #[error(
        "{acked} of {required} required replicas acknowledged{}",
        if *write { "; the write may have been applied on some replicas" } else { "" }
    )]
    QuorumUnavailable {
        acked: u8,
        required: u8,
        write: bool,
    },
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    Corrupt(String),
    #[error("{0}")]
    Internal(String),
    #[error("{0}")]
    Refused(String),
    /// The key holds another type (409 `wrong_type`).
    #[error("{0}")]
    WrongType(String),
}

impl From<PeerError> for CoordinatorError {
    fn from(error: PeerError) -> CoordinatorError {
        match error {
            PeerError::QuorumUnavailable { acked, required } => {
                CoordinatorError::QuorumUnavailable {
                    acked,
                    required,
                    write: true,
                }
            }
            PeerError::Corrupt { message } => CoordinatorError::Corrupt(message),
            PeerError::Invalid { message } => CoordinatorError::Invalid(message),
            PeerError::Internal { message } => CoordinatorError::Internal(message),
            PeerError::Refused { message } => CoordinatorError::Refused(message),
            PeerError::WrongType { message } => CoordinatorError::WrongType(message),
            error @ PeerError::HintsFull { .. } => {
                CoordinatorError::Internal(format!("unexpected answer: {error:?}"))
            }
        }
    }
}

impl From<&CoordinatorError> for PeerError {
    fn from(error: &CoordinatorError) -> PeerError {
        match error {
            CoordinatorError::QuorumUnavailable {
                acked, required, ..
            } => PeerError::QuorumUnavailable {
                acked: *acked,
                required: *required,
            },
            CoordinatorError::Invalid(message) => PeerError::Invalid {
                message: message.clone(),
            },
            CoordinatorError::Corrupt(message) => PeerError::Corrupt {
                message: message.clone(),
            },
            CoordinatorError::Internal(message) => PeerError::Internal {
                message: message.clone(),
            },
            CoordinatorError::Refused(message) => PeerError::Refused {
                message: message.clone(),
            },
            CoordinatorError::WrongType(message) => PeerError::WrongType {
                message: message.clone(),
            },
        }
    }
}

/// Whether a failed call certainly never reached the peer, so trying another one
/// cannot apply the request twice.
fn never_delivered(error: &TransportError) -> bool {
    matches!(
        error,
        TransportError::Unreachable { .. }
            | TransportError::Overloaded(_)
            | TransportError::Protocol { .. }
    )
}

/// One node's coordinator.
pub struct Coordinator {
    membership: Arc<Membership>,
    transport: Arc<dyn Transport>,
    spawner: Arc<dyn Spawn>,
    settings: Settings,
}

impl Coordinator {
    pub fn new(
        membership: Arc<Membership>,
        transport: Arc<dyn Transport>,
        spawner: Arc<dyn Spawn>,
        settings: Settings,
    ) -> Coordinator {
        Coordinator {
            membership,
            transport,
            spawner,
            settings,
        }
    }

    pub fn membership(&self) -> &Arc<Membership> {
        &self.membership
    }

    pub fn transport(&self) -> &Arc<dyn Transport> {
        &self.transport
    }

    pub fn settings(&self) -> Settings {
        self.settings
    }

    /// The key's replicas, in preference order.
    pub fn replicas(&self, key: &Key) -> Vec<NodeId> {
        let ring = self.membership.ring();
        ring.preference_list(key.token(), usize::from(self.settings.replication_factor))
            .replicas()
            .to_vec()
    }

    /// The key's replicas, then the other nodes in preference order (fallbacks for
    /// the sloppy quorum).
    fn placement(&self, key: &Key) -> (Vec<NodeId>, Vec<NodeId>) {
        let ring = self.membership.ring();
        let list = ring.preference_list(key.token(), usize::from(self.settings.replication_factor));
        (list.replicas().to_vec(), list.fallbacks().to_vec())
    }

    /// The key's pending replicas: those of the next ring that are not replicas now
    /// (a joining node taking the key over, or the next owner of a leaving node's
    /// copy). Writes reach them too; empty when no join or leave is under way.
    fn pending(&self, key: &Key, replicas: &[NodeId]) -> Vec<NodeId> {
        let Some(next) = self.membership.next_ring() else {
            return Vec::new();
        };
        next.preference_list(key.token(), usize::from(self.settings.replication_factor))
            .replicas()
            .iter()
            .copied()
            .filter(|id| !replicas.contains(id))
            .collect()
    }

    /// How long to wait for `node`: the request timeout, a quarter of it for a
    /// suspicious node; `None` for a node detected down (do not call it).
    fn timeout_for(&self, node: NodeId) -> Option<Duration> {
        timeout_for(&self.membership, self.settings.request_timeout, node)
    }

    fn peers(&self, nodes: &[NodeId]) -> Vec<Peer> {
        nodes
            .iter()
            .filter_map(|id| self.membership.peer(*id))
            .collect()
    }

    /// Applies a client write; answers with the writer's new version once `required`
    /// nodes hold it durably. `forwarded` writes came from another node and are
    /// coordinated here whatever this node's ring says (one hop only).
    ///
    /// # Errors
    /// `QuorumUnavailable` (the write may have been applied on some replicas), or the
    /// replica's `Invalid` / `Corrupt` / `Internal`.
    pub async fn write(
        &self,
        write: Write,
        required: u8,
        forwarded: bool,
    ) -> Result<Context, CoordinatorError> {
        self.write_acked(write, required, forwarded)
            .await
            .map(|ack| ack.version)
    }

    /// `write`, also saying how many of the acks were hints standing in for replicas
    /// detected down (sloppy quorum): such a write is durable on `required` nodes,
    /// but a strict quorum read of the true replicas may miss it until handoff.
    ///
    /// # Errors
    /// As `write`.
    pub async fn write_acked(
        &self,
        write: Write,
        required: u8,
        forwarded: bool,
    ) -> Result<WriteAck, CoordinatorError> {
        let (replicas, fallbacks) = self.placement(&write.key);
        // While a range changes hands, a write must reach W of its current replicas
        // and W of its next ones: W + (pending) distinct holders among both (as
        // Cassandra does), so a quorum read stays sure to see it on either side of
        // the switch.
        let pending = self.pending(&write.key, &replicas);
        let fallbacks: Vec<NodeId> = fallbacks
            .into_iter()
            .filter(|id| !pending.contains(id))
            .collect();
        let client_required = required;
        let required = required.saturating_add(u8::try_from(pending.len()).unwrap_or(u8::MAX));
        let unavailable = |acked: u8| CoordinatorError::QuorumUnavailable {
            acked,
            required,
            write: true,
        };
        if replicas.len() < usize::from(client_required) {
            return Err(unavailable(0));
        }
        let me = self.membership.me();
        let timeout = self.settings.request_timeout;
        if !replicas.contains(&me) && !forwarded {
            let up: Vec<NodeId> = replicas
                .iter()
                .copied()
                .filter(|id| self.timeout_for(*id).is_some())
                .collect();
            for peer in self.peers(&up) {
                let request = PeerRequest::Coordinate {
                    write: encode_write(&write),
                    required: client_required,
                };
                match self.transport.call(&peer, request, timeout).await {
                    Ok(PeerResponse::Written { version, hinted }) => {
                        return Ok(WriteAck {
                            version: decode_version(&version)?,
                            hinted,
                        });
                    }
                    Ok(PeerResponse::Error(error)) => return Err(error.into()),
                    Ok(other) => return Err(unexpected(&other)),
                    Err(error) if never_delivered(&error) => continue,
                    Err(_) => return Err(unavailable(0)),
                }
            }
            return Err(unavailable(0));
        }

        // Apply the write as a new version on one live replica, this node first.
        let mut order: Vec<NodeId> = replicas
            .iter()
            .copied()
            .filter(|id| self.timeout_for(*id).is_some())
            .collect();
        order.sort_by_key(|id| *id != me);
        let mut applied = None;
        for peer in self.peers(&order) {
            let request = PeerRequest::Update {
                write: encode_write(&write),
            };
            let timeout = self.timeout_for(peer.id).unwrap_or(timeout);
            match self.transport.call(&peer, request, timeout).await {
                Ok(PeerResponse::Updated { record, version }) => {
                    applied = Some((peer.id, record, version));
                    break;
                }
                Ok(PeerResponse::Error(error)) => return Err(error.into()),
                Ok(other) => return Err(unexpected(&other)),
                Err(error) if never_delivered(&error) => continue,
                Err(_) => return Err(unavailable(0)),
            }
        }
        let Some((updated_on, record, version)) = applied else {
            return Err(unavailable(0));
        };
        let version = decode_version(&version)?;

        // The updated replica makes its write durable; the others merge the record.
        // A replica that is down, or fails, gets a hint instead: on the next live
        // fallback (which then counts toward W, sloppy quorum), else on this node
        // (which already counts as a replica, so the hint only carries the write).
        // Answer after `required` distinct nodes hold it durably; the rest carry on.
        let key = write.key.to_bytes();
        // Live fallbacks go first to the replicas down now (in replica order, as
        // reads look for them), then to the others in case they fail.
        let mut fallbacks = fallbacks
            .into_iter()
            .filter(|id| self.timeout_for(*id).is_some());
        let mut assigned: Vec<Option<NodeId>> = replicas
            .iter()
            .map(|id| {
                self.timeout_for(*id)
                    .map_or_else(|| fallbacks.next(), |_| None)
            })
            .collect();
        for (replica, fallback) in replicas.iter().zip(&mut assigned) {
            if fallback.is_none() && *replica != updated_on {
                *fallback = fallbacks.next();
            }
        }
        let calls: Vec<(NodeId, BoxFuture<Option<Holder>>)> = replicas
            .iter()
            .zip(assigned)
            .chain(pending.iter().map(|id| (id, None)))
            .map(|(replica, fallback)| {
                let slot = Slot {
                    membership: self.membership.clone(),
                    transport: self.transport.clone(),
                    request_timeout: timeout,
                    replicas: replicas.clone(),
                    me,
                    key: key.clone(),
                    record: record.clone(),
                };
                let holder: BoxFuture<Option<Holder>> =
                    Box::pin(slot.fill(*replica, *replica == updated_on, fallback));
                (*replica, holder)
            })
            .collect();
        let mut gather = Gather::new(calls);
        let needed = usize::from(required);
        gather.until(|done| holders(done) >= needed).await;
        let acked = u8::try_from(holders(gather.done())).unwrap_or(u8::MAX);
        let hinted = gather
            .done()
            .iter()
            .filter(|(_, holder)| holder.is_some_and(|holder| holder.hint))
            .count();
        let hinted = u8::try_from(hinted).unwrap_or(u8::MAX);
        // Hints still being placed must land even though the client has its answer.
        self.spawner
            .spawn(Box::pin(async move { gather.all().await }));
        if acked >= required {
            let outcome = if hinted > 0 { "ok_hinted" } else { "ok" };
            metrics::counter!("ringkv_coordinator_writes_total", "outcome" => outcome).increment(1);
            Ok(WriteAck { version, hinted })
        } else {
            metrics::counter!("ringkv_coordinator_writes_total", "outcome" => "quorum_unavailable")
                .increment(1);
            Err(unavailable(acked))
        }
    }

    /// Answers a peer's `Coordinate` request.
    pub async fn on_coordinate(&self, write: Write, required: u8) -> PeerResponse {
        match self.write_acked(write, required, true).await {
            Ok(ack) => PeerResponse::Written {
                version: Bytes::from(ack.version.to_bytes()),
                hinted: ack.hinted,
            },
            Err(error) => PeerResponse::Error((&error).into()),
        }
    }

    /// Reads a key: the merge of the first `required` replicas' records (`None` when
    /// none holds it), then read repair in the background.
    ///
    /// # Errors
    /// `QuorumUnavailable` when fewer than `required` replicas answered in time;
    /// `Corrupt` when that is because a replica's record does not decode.
    pub async fn read(&self, key: &Key, required: u8) -> Result<Option<Record>, CoordinatorError> {
        let (replicas, fallbacks) = self.placement(key);
        if replicas.len() < usize::from(required) {
            return Err(CoordinatorError::QuorumUnavailable {
                acked: 0,
                required,
                write: false,
            });
        }
        // A replica detected down is read through the next live fallback, which
        // answers with the hints it holds for the key. Only true replicas count
        // toward R (so any R of them meet any W that acked a write on true
        // replicas); the fallbacks' answers are awaited too and merged in, so a read
        // sees what a quorum of true replicas and the hint holders know.
        let mut fallbacks = fallbacks
            .into_iter()
            .filter(|id| self.timeout_for(*id).is_some());
        let asked: Vec<NodeId> = replicas
            .iter()
            .filter_map(|id| match self.timeout_for(*id) {
                Some(_) => Some(*id),
                None => fallbacks.next(),
            })
            .collect();
        let mut gather = Gather::new(self.read_calls(key, &asked));
        let needed = usize::from(required);
        let fallbacks_asked = asked.iter().filter(|id| !replicas.contains(id)).count();
        let true_answers = |done: &[(NodeId, ReadReply)]| {
            done.iter()
                .filter(|(node, reply)| reply.is_ok() && replicas.contains(node))
                .count()
        };
        let fallbacks_done = |done: &[(NodeId, ReadReply)]| {
            done.iter()
                .filter(|(node, _)| !replicas.contains(node))
                .count()
        };
        gather
            .until(|done| true_answers(done) >= needed && fallbacks_done(done) == fallbacks_asked)
            .await;
        let answered: Vec<&Option<Record>> = gather
            .done()
            .iter()
            .filter_map(|(_, reply)| reply.as_ref().ok())
            .collect();
        if true_answers(gather.done()) < needed {
            let answered = true_answers(gather.done());
            let corrupt = gather.done().iter().find_map(|(_, reply)| match reply {
                Err(ReadFailure::Corrupt(message)) => Some(message.clone()),
                _ => None,
            });
            if let Some(message) = corrupt {
                return Err(CoordinatorError::Corrupt(message));
            }
            let acked = u8::try_from(answered).unwrap_or(u8::MAX);
            return Err(CoordinatorError::QuorumUnavailable {
                acked,
                required,
                write: false,
            });
        }
        let merged = merge(answered.into_iter());
        self.repair_later(key.to_bytes(), gather, replicas);
        Ok(merged)
    }

    /// Every replica's record as it holds it now, without repair (`/v1/debug/key`).
    pub async fn read_each(&self, key: &Key) -> Vec<(NodeId, Result<Option<Record>, String>)> {
        let replicas = self.replicas(key);
        let mut gather = Gather::new(self.read_calls(key, &replicas));
        gather.all().await;
        let mut replies: Vec<(NodeId, Result<Option<Record>, String>)> = gather
            .into_done()
            .into_iter()
            .map(|(node, reply)| (node, reply.map_err(|failure| failure.to_string())))
            .collect();
        replies.sort_by_key(|(node, _)| replicas.iter().position(|r| r == node));
        replies
    }

    fn read_calls(&self, key: &Key, replicas: &[NodeId]) -> Vec<(NodeId, BoxFuture<ReadReply>)> {
        self.peers(replicas)
            .into_iter()
            .map(|peer| {
                let timeout = self
                    .timeout_for(peer.id)
                    .unwrap_or(self.settings.request_timeout);
                let call = self.transport.call(
                    &peer,
                    PeerRequest::Read {
                        key: key.to_bytes(),
                    },
                    timeout,
                );
                let reply: BoxFuture<ReadReply> = Box::pin(async move { read_reply(call.await) });
                (peer.id, reply)
            })
            .collect()
    }

    /// Once every replica has answered, sends the merge of all answers to each of
    /// the key's `replicas` that held less (never to a fallback: hints are handed
    /// off, not repaired into data).
    fn repair_later(&self, key: Bytes, mut gather: Gather<ReadReply>, replicas: Vec<NodeId>) {
        let transport = self.transport.clone();
        let membership = self.membership.clone();
        let timeout = self.settings.request_timeout;
        self.spawner.spawn(Box::pin(async move {
            gather.all().await;
            let replies = gather.into_done();
            let Some(merged) = merge(replies.iter().filter_map(|(_, reply)| reply.as_ref().ok()))
            else {
                return;
            };
            let encoded = Bytes::from(merged.encode());
            for (node, reply) in &replies {
                let stale = replicas.contains(node)
                    && match reply {
                        Ok(Some(record)) => *record != merged,
                        Ok(None) => true,
                        Err(_) => false,
                    };
                let Some(peer) = membership.peer(*node).filter(|_| stale) else {
                    continue;
                };
                metrics::counter!("ringkv_read_repairs_total").increment(1);
                let request = PeerRequest::Replicate {
                    key: key.clone(),
                    record: encoded.clone(),
                };
                if let Err(error) = transport.call(&peer, request, timeout).await {
                    tracing::debug!(node = %node, "read repair failed: {error}");
                }
            }
        }));
    }
}

/// A successful client write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WriteAck {
    /// What the writer now knows (the version to send with its next write).
    pub version: Context,
    /// How many acks were hints for replicas detected down (sloppy quorum).
    pub hinted: u8,
}

/// What a replica's `Read` came back as.
type ReadReply = Result<Option<Record>, ReadFailure>;

#[derive(Debug, Clone, thiserror::Error)]
enum ReadFailure {
    #[error("{0}")]
    Corrupt(String),
    #[error("{0}")]
    Failed(String),
}

fn read_reply(reply: Result<PeerResponse, TransportError>) -> ReadReply {
    match reply {
        Ok(PeerResponse::Record { record: None }) => Ok(None),
        Ok(PeerResponse::Record {
            record: Some(bytes),
        }) => Record::decode(&bytes)
            .map(Some)
            .map_err(|error| ReadFailure::Failed(format!("replica sent a bad record: {error}"))),
        Ok(PeerResponse::Error(PeerError::Corrupt { message })) => {
            Err(ReadFailure::Corrupt(message))
        }
        Ok(PeerResponse::Error(error)) => Err(ReadFailure::Failed(format!("{error:?}"))),
        Ok(other) => Err(ReadFailure::Failed(format!("unexpected answer {other:?}"))),
        Err(error) => Err(ReadFailure::Failed(error.to_string())),
    }
}

/// The merge of records (`None` when no replica holds one).
fn merge<'a>(records: impl Iterator<Item = &'a Option<Record>>) -> Option<Record> {
    records
        .flatten()
        .fold(None, |merged: Option<Record>, record| {
            let mut merged = merged.unwrap_or_default();
            merged.sync(record);
            Some(merged)
        })
}

fn decode_version(bytes: &[u8]) -> Result<Context, CoordinatorError> {
    Context::from_bytes(bytes)
        .map_err(|error| CoordinatorError::Internal(format!("replica sent a bad version: {error}")))
}

fn unexpected(response: &PeerResponse) -> CoordinatorError {
    CoordinatorError::Internal(format!("unexpected answer from a replica: {response:?}"))
}
