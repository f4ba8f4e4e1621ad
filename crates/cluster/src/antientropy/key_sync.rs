//! The repair of one differing key with one peer, both ways (`KeySync::run`),
//! many at once per leaf.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use ringkv_core::wire::{PeerRequest, PeerResponse};
use ringkv_core::{Key, Record};

use super::Stop;
use crate::node::Node;
use crate::tombstone::Collector;
use crate::transport::{Peer, Spawn, Transport, offload};

/// What repairing one key moved.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Moved {
    pub(super) pulled: bool,
    pub(super) pushed: bool,
    /// Forgotten here (tombstone GC) instead of pushed.
    pub(super) collected: bool,
    pub(super) bytes: u64,
}

/// The repair of one key with one peer (owns what it needs, so many run at once).
pub(super) struct KeySync {
    pub(super) node: Arc<Node>,
    pub(super) transport: Arc<dyn Transport>,
    pub(super) spawner: Arc<dyn Spawn>,
    pub(super) peer: Peer,
    pub(super) timeout: Duration,
    pub(super) collector: Option<Arc<Collector>>,
}

impl KeySync {
    async fn call(&self, request: PeerRequest) -> Result<PeerResponse, Stop> {
        self.transport
            .call(&self.peer, request, self.timeout)
            .await
            .map_err(|error| Stop::Peer(error.to_string()))
    }

    /// Whether `pulled` holds only tombstones that this node, holding nothing of
    /// `key`, would forget as soon as it stored them: then it is not stored (the
    /// peer forgets it or pushes it, by its own judgement).
    async fn would_forget_at_once(&self, key: &Key, pulled: &Record) -> Result<bool, Stop> {
        let Some(collector) = &self.collector else {
            return Ok(false);
        };
        if collector.reason(key, pulled).is_none() {
            return Ok(false);
        }
        let (node, k) = (self.node.clone(), key.clone());
        match offload(self.spawner.as_ref(), move || node.read_own(&k)).await {
            Some(Ok(held)) => Ok(held.is_none()),
            Some(Err(error)) => Err(Stop::Local(error.to_string())),
            None => Err(Stop::Local("shutting down".into())),
        }
    }

    /// Pulls the peer's record of `key` (if it has one) into this replica, then
    /// pushes this replica's record back if the peer held less.
    pub(super) async fn run(self, key: Key, they_have_it: bool) -> Result<Moved, Stop> {
        let mut moved = Moved::default();
        let mut theirs = None;
        if they_have_it {
            match self
                .call(PeerRequest::Read {
                    key: key.to_bytes(),
                })
                .await?
            {
                PeerResponse::Record {
                    record: Some(bytes),
                } => {
                    moved.bytes += bytes.len() as u64;
                    let record = Record::decode(&bytes)
                        .map_err(|error| Stop::Peer(format!("a bad record: {error}")))?;
                    if self.would_forget_at_once(&key, &record).await? {
                        return Ok(moved);
                    }
                    let (node, pulled, k) = (self.node.clone(), record.clone(), key.clone());
                    let merged =
                        offload(self.spawner.as_ref(), move || node.replicate(&k, &pulled)).await;
                    match merged {
                        Some(Ok(durable)) => durable
                            .await
                            .map_err(|error| Stop::Local(error.to_string()))?,
                        Some(Err(error)) => return Err(Stop::Local(error.to_string())),
                        None => return Err(Stop::Local("shutting down".into())),
                    }
                    moved.pulled = true;
                    theirs = Some(record);
                }
                PeerResponse::Record { record: None } => {}
                other => return Err(Stop::Peer(format!("unexpected answer to Read: {other:?}"))),
            }
        }
        let (node, k) = (self.node.clone(), key.clone());
        let mine = match offload(self.spawner.as_ref(), move || node.read_own(&k)).await {
            Some(Ok(Some(record))) => record,
            Some(Ok(None)) => return Ok(moved),
            Some(Err(error)) => return Err(Stop::Local(error.to_string())),
            None => return Err(Stop::Local("shutting down".into())),
        };
        if theirs.as_ref() == Some(&mine) {
            return Ok(moved);
        }
        if !they_have_it
            && let Some(collector) = &self.collector
            && let Some(reason) = collector.reason(&key, &mine)
        {
            // The peer forgot it (or never had it), and this node may forget it too.
            let (collector, k) = (collector.clone(), key.clone());
            match offload(self.spawner.as_ref(), move || {
                collector.forget(vec![(k, mine, reason)])
            })
            .await
            {
                Some(Ok(_)) => {
                    moved.collected = true;
                    return Ok(moved);
                }
                Some(Err(error)) => return Err(Stop::Local(error.to_string())),
                None => return Err(Stop::Local("shutting down".into())),
            }
        }
        let record = Bytes::from(mine.encode());
        moved.bytes += record.len() as u64;
        match self
            .call(PeerRequest::Replicate {
                key: key.to_bytes(),
                record,
            })
            .await?
        {
            PeerResponse::Ack => {
                moved.pushed = true;
                Ok(moved)
            }
            other => Err(Stop::Peer(format!(
                "unexpected answer to Replicate: {other:?}"
            ))),
        }
    }
}
