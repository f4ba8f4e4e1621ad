//! Streaming the ranges of a join or decommission: the pieces (next-ring arcs cut
//! where current-ring arcs end), pulled from their sources or pushed to their
//! targets in pages, `PARALLEL_PIECES` at a time, within one throttle, each retried
//! until it is done.

use std::sync::{Mutex, PoisonError};

use bytes::Bytes;
use ringkv_core::wire::{MAX_PAGE_BYTES, PeerRequest, PeerResponse};
use ringkv_core::{Key, NodeId, Record, TokenRange};

use super::{Failure, RETRY_MAX, RETRY_MIN, Topology};
use crate::antientropy::Throttle;
use crate::gather::{Borrowed, join_all};
use crate::transport::offload;

impl Topology {
    /// Page size: a tenth of a second of the streaming budget, within 64 KiB ..
    /// `MAX_PAGE_BYTES`.
    pub(super) fn page_bytes(&self) -> u32 {
        u32::try_from(self.settings.bytes_per_sec / 10)
            .unwrap_or(MAX_PAGE_BYTES)
            .clamp(64 << 10, MAX_PAGE_BYTES)
    }

    /// Moves every piece, `PARALLEL_PIECES` at a time, retrying each until it is
    /// done: pulled from its sources (join) or pushed to its targets
    /// (decommission), all within one throttle.
    pub(super) async fn stream(&self, pieces: Vec<Piece>, direction: Direction) {
        self.update(|progress| progress.ranges_total = pieces.len());
        tracing::info!(pieces = pieces.len(), ?direction, "streaming");
        let throttle = Mutex::new(Throttle::new(
            self.settings.bytes_per_sec,
            self.node.monotonic_ms(),
        ));
        for batch in pieces.chunks(PARALLEL_PIECES) {
            let moves = batch
                .iter()
                .map(|piece| {
                    let throttle = &throttle;
                    let move_piece: Borrowed<'_, ()> = Box::pin(async move {
                        match direction {
                            Direction::Pull => {
                                self.until_done(piece.range, || self.pull(piece, throttle))
                                    .await;
                            }
                            Direction::Push => {
                                for target in &piece.peers {
                                    self.until_done(piece.range, || {
                                        self.push_to(*target, piece.range, throttle)
                                    })
                                    .await;
                                }
                            }
                        }
                        self.update(|progress| {
                            progress.ranges_done += 1;
                            progress.retrying = None;
                        });
                    });
                    move_piece
                })
                .collect();
            join_all(moves).await;
        }
    }

    /// Runs `attempt` until it succeeds, backing off (up to `RETRY_MAX`) and
    /// showing the last failure in the progress meanwhile.
    async fn until_done<F, Fut>(&self, range: TokenRange, mut attempt: F)
    where
        F: FnMut() -> Fut + Send,
        Fut: std::future::Future<Output = Result<(), Failure>> + Send,
    {
        let mut delay = RETRY_MIN;
        while let Err(failure) = attempt().await {
            tracing::warn!(?range, "streaming failed, retrying: {failure}");
            self.update(|progress| progress.retrying = Some(failure));
            self.spawner.sleep(delay).await;
            delay = (delay * 2).min(RETRY_MAX);
        }
    }

    /// Every piece of range `me` replicates on the next ring, with the current
    /// replicas to pull it from.
    pub(super) fn join_pieces(&self, me: NodeId) -> Vec<Piece> {
        let Some(next) = self.membership.next_ring() else {
            return Vec::new();
        };
        let current = self.membership.ring();
        let mut pieces = Vec::new();
        for (arc, next_replicas) in next.arcs(me, self.n()) {
            for (range, now) in current.pieces(arc, self.n()) {
                let displaced: Vec<NodeId> = now
                    .iter()
                    .copied()
                    .filter(|id| *id != me && !next_replicas.contains(id))
                    .collect();
                let all: Vec<NodeId> = now.iter().copied().filter(|id| *id != me).collect();
                if all.is_empty() {
                    continue; // Nobody holds it yet: a new cluster.
                }
                pieces.push(Piece {
                    range,
                    peers: if displaced.is_empty() { all } else { displaced },
                });
            }
        }
        pieces
    }

    /// Pulls one piece: from each of its sources if all are up, else from every
    /// live current replica of it (a union covers whatever a quorum acknowledged).
    async fn pull(&self, piece: &Piece, throttle: &Mutex<Throttle>) -> Result<(), Failure> {
        let all_up = piece
            .peers
            .iter()
            .all(|id| self.membership.liveness(*id).is_up());
        let sources: Vec<NodeId> = if all_up {
            piece.peers.clone()
        } else {
            let me = self.membership.me();
            self.membership
                .ring()
                .preference_list(piece.range.end, self.n())
                .replicas()
                .iter()
                .copied()
                .filter(|id| *id != me && self.membership.liveness(*id).is_up())
                .collect()
        };
        if sources.is_empty() {
            return Err(format!("no replica of {:?} is up", piece.range));
        }
        for source in sources {
            self.pull_from(source, piece.range, throttle).await?;
        }
        Ok(())
    }

    async fn pull_from(
        &self,
        source: NodeId,
        range: TokenRange,
        throttle: &Mutex<Throttle>,
    ) -> Result<(), Failure> {
        let peer = self
            .membership
            .peer(source)
            .ok_or_else(|| format!("node {source} is not a member"))?;
        let mut after: Option<Bytes> = None;
        loop {
            let request = PeerRequest::StreamRange {
                range,
                after: after.clone(),
                max_bytes: self.page_bytes(),
            };
            let (records, complete) = match self
                .transport
                .call(&peer, request, self.settings.request_timeout)
                .await
            {
                Ok(PeerResponse::Records { records, complete }) => (records, complete),
                Ok(other) => return Err(format!("node {source} answered {other:?}")),
                Err(error) => return Err(format!("node {source}: {error}")),
            };
            let last = records.last().map(|(key, _)| key.clone());
            let page = decode_page(records, range, after.as_ref())
                .map_err(|reason| format!("node {source} sent a bad page: {reason}"))?;
            let bytes = self.merge(page).await?;
            let wait = throttle
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .moved(bytes, self.node.monotonic_ms());
            if let Some(wait) = wait {
                self.spawner.sleep(wait).await;
            }
            if complete {
                return Ok(());
            }
            match last {
                Some(last) => after = Some(last),
                None => {
                    return Err(format!(
                        "node {source} sent an empty page that is not the last"
                    ));
                }
            }
        }
    }

    /// Merges a page of records durably; returns its size in bytes.
    async fn merge(&self, page: Vec<(Key, Record, usize)>) -> Result<u64, Failure> {
        let count = page.len() as u64;
        let bytes: u64 = page.iter().map(|(_, _, size)| *size as u64).sum();
        let node = self.node.clone();
        // The page is applied off the runtime; its durability barrier (one for the
        // whole page: it covers every write before it) is awaited here.
        let merged = offload(self.spawner.as_ref(), move || {
            let mut last = None;
            for (key, record, _) in &page {
                last = Some(node.replicate(key, record)?);
            }
            Ok::<_, crate::NodeError>(last)
        })
        .await;
        match merged {
            Some(Ok(Some(durable))) => durable
                .await
                .map_err(|error| format!("local storage: {error}"))?,
            Some(Ok(None)) => {}
            Some(Err(error)) => return Err(format!("local storage: {error}")),
            None => return Err("shutting down".into()),
        }
        self.moved(count, bytes);
        Ok(bytes)
    }

    fn moved(&self, keys: u64, bytes: u64) {
        self.update(|progress| {
            progress.keys += keys;
            progress.bytes += bytes;
        });
        metrics::counter!("ringkv_streamed_keys_total").increment(keys);
        metrics::counter!("ringkv_streamed_bytes_total").increment(bytes);
    }

    /// Every piece of range `me` replicates now, with the nodes that replicate it
    /// next and do not now.
    pub(super) fn leave_pieces(&self, me: NodeId) -> Vec<Piece> {
        let Some(next) = self.membership.next_ring() else {
            return Vec::new();
        };
        let current = self.membership.ring();
        let mut pieces = Vec::new();
        for (arc, now) in current.arcs(me, self.n()) {
            for (range, then) in next.pieces(arc, self.n()) {
                let targets: Vec<NodeId> =
                    then.into_iter().filter(|id| !now.contains(id)).collect();
                if !targets.is_empty() {
                    pieces.push(Piece {
                        range,
                        peers: targets,
                    });
                }
            }
        }
        pieces
    }

    async fn push_to(
        &self,
        target: NodeId,
        range: TokenRange,
        throttle: &Mutex<Throttle>,
    ) -> Result<(), Failure> {
        let peer = self
            .membership
            .peer(target)
            .ok_or_else(|| format!("node {target} is not a member"))?;
        let max_bytes = self.page_bytes() as usize;
        let mut after: Option<Key> = None;
        loop {
            let node = self.node.clone();
            let cursor = after.clone();
            let (page, complete) = match offload(self.spawner.as_ref(), move || {
                node.page(range, cursor.as_ref(), max_bytes)
            })
            .await
            {
                Some(Ok(page)) => page,
                Some(Err(error)) => return Err(format!("local storage: {error}")),
                None => return Err("shutting down".into()),
            };
            let Some((last, _)) = page.last() else {
                return Ok(());
            };
            after = Some(last.clone());
            let count = page.len() as u64;
            let records: Vec<(Bytes, Bytes)> = page
                .into_iter()
                .map(|(key, record)| (key.to_bytes(), Bytes::from(record.encode())))
                .collect();
            let bytes: u64 = records
                .iter()
                .map(|(key, record)| (key.len() + record.len()) as u64)
                .sum();
            match self
                .transport
                .call(
                    &peer,
                    PeerRequest::Store { records },
                    self.settings.request_timeout,
                )
                .await
            {
                Ok(PeerResponse::Ack) => {}
                Ok(other) => return Err(format!("node {target} answered {other:?}")),
                Err(error) => return Err(format!("node {target}: {error}")),
            }
            self.moved(count, bytes);
            let wait = throttle
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .moved(bytes, self.node.monotonic_ms());
            if let Some(wait) = wait {
                self.spawner.sleep(wait).await;
            }
            if complete {
                return Ok(());
            }
        }
    }
}

/// Which way a piece moves.
#[derive(Debug, Clone, Copy)]
pub(super) enum Direction {
    /// From its current replicas to this node (join).
    Pull,
    /// From this node to its next replicas (decommission).
    Push,
}

/// One piece of range to move, and the nodes it moves from (join) or to
/// (decommission).
#[derive(Debug, Clone)]
pub(super) struct Piece {
    range: TokenRange,
    peers: Vec<NodeId>,
}

/// Pieces streamed at once (each its own calls and fsyncs): most pieces are small,
/// so one at a time would wait on round trips, not on bytes.
const PARALLEL_PIECES: usize = 8;

/// Decodes a page of streamed records, each with its size; the keys must lie in
/// `range`, in (token, key) order, after `after` (so every page moves forward).
pub(super) fn decode_page(
    records: Vec<(Bytes, Bytes)>,
    range: TokenRange,
    after: Option<&Bytes>,
) -> Result<Vec<(Key, Record, usize)>, String> {
    let mut previous = match after {
        Some(after) => {
            Some(Key::from_stored(after.clone()).map_err(|error| format!("bad cursor: {error}"))?)
        }
        None => None,
    };
    records
        .into_iter()
        .map(|(key, record)| {
            let size = key.len() + record.len();
            let key = Key::from_stored(key).map_err(|error| format!("bad key: {error}"))?;
            if !range.contains(key.token()) {
                return Err(format!("a key outside {range:?}"));
            }
            if let Some(previous) = &previous
                && (key.token(), key.as_bytes()) <= (previous.token(), previous.as_bytes())
            {
                return Err("keys out of order".into());
            }
            previous = Some(key.clone());
            let record = Record::decode(&record).map_err(|error| format!("bad record: {error}"))?;
            Ok((key, record, size))
        })
        .collect()
}
