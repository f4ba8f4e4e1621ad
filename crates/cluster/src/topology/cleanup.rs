//! Upkeep after ring changes (`Topology::upkeep`, every gossip interval): the
//! members that left are recorded on disk, and the copies of ranges a finished
//! change gave to other nodes are handed to their new replicas, then dropped.

use std::sync::{Arc, PoisonError};

use bytes::Bytes;
use ringkv_core::wire::{PeerRequest, PeerResponse};
use ringkv_core::{Key, MemberState, NodeId, Record, TokenRange};

use super::Topology;
use crate::antientropy::Throttle;
use crate::membership::Membership;
use crate::node::Node;
use crate::transport::offload;

impl Topology {
    /// Regular upkeep after ring changes (every gossip interval): records the
    /// members that left, and drops copies a finished change gave away.
    pub async fn upkeep(&self) {
        self.record_departures().await;
        self.clean_up().await;
    }

    /// Saves the members that left (`Node::save_left_members`) when they changed
    /// since the last save: membership lives in memory, and a removal every node
    /// forgot in a restart would let the removed node serve again.
    pub async fn record_departures(&self) {
        let me = self.membership.me();
        let left: Vec<ringkv_core::Member> = self
            .membership
            .members()
            .into_iter()
            .filter(|m| m.id != me && m.state == MemberState::Left)
            .collect();
        let seen: Vec<(NodeId, u64)> = left.iter().map(|m| (m.id, m.generation)).collect();
        if *self
            .departures
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            == seen
        {
            return;
        }
        let node = self.node.clone();
        match offload(self.spawner.as_ref(), move || node.save_left_members(&left)).await {
            Some(Ok(())) => {
                *self
                    .departures
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner) = seen;
            }
            Some(Err(error)) => {
                tracing::warn!("cannot record the members that left: {error}");
            }
            None => {}
        }
    }

    /// Drops the copies this node keeps of ranges a change that ended gave to other
    /// nodes (a join displacing it, a decommission it took part in that a restart
    /// ended): nobody reads them here any more, and a stale copy left behind would
    /// come back the day the range does, bringing back what was deleted (and, with
    /// tombstone GC, forgotten) since. Each record is first handed to its new
    /// replicas (`Replicate`, merged; usually a no-op, the change streamed it):
    /// this copy may be the only one of a write whose other copy was lost with a
    /// disk, and a join that streamed from the other replicas while this node was
    /// down would not have it. A record is dropped only once every live new
    /// replica (at least one) acknowledged it; a range with records left over is
    /// tried again at the next upkeep; another change beginning abandons it
    /// (keeping the copies). Returns how many records went.
    pub async fn clean_up(&self) -> u64 {
        let me = self.membership.me();
        let n = self.n();
        let mut queue = {
            let mut pending = self.cleanups.lock().unwrap_or_else(PoisonError::into_inner);
            pending.extend(self.membership.take_ended_changes());
            std::mem::take(&mut *pending)
        };
        let mut dropped = 0;
        let mut throttle = Throttle::new(self.settings.bytes_per_sec, self.node.monotonic_ms());
        while let Some((old, new)) = queue.first().cloned() {
            if !new.nodes().any(|id| id == me) {
                // This node left: what it holds is nobody's business any more.
                queue.remove(0);
                continue;
            }
            match self.clean_change(&old, &new, n, &mut throttle).await {
                Cleanup::Done(count) | Cleanup::Abandoned(count) => {
                    dropped += count;
                    queue.remove(0);
                }
                Cleanup::Unfinished(count) => {
                    dropped += count;
                    break;
                }
            }
        }
        // What is left (a hand-over that failed) waits for the next round.
        let mut pending = self.cleanups.lock().unwrap_or_else(PoisonError::into_inner);
        queue.append(&mut pending);
        *pending = queue;
        self.cleaned(dropped)
    }

    /// One ended change's cleanup: the ranges this node replicated on `old` and no
    /// longer does on `new` (`Ring::moved_away`; nothing to read when it kept all it
    /// had, as in a cluster of at most N nodes: a scan of everything it holds, on the
    /// storage threads, stalled writes for tens of ms after every join).
    async fn clean_change(
        &self,
        old: &Arc<ringkv_core::ring::Ring>,
        new: &Arc<ringkv_core::ring::Ring>,
        n: usize,
        throttle: &mut Throttle,
    ) -> Cleanup {
        let me = self.membership.me();
        let mut dropped = 0;
        let mut unfinished = false;
        for range in old.moved_away(new, me, n) {
            let mut after: Option<Key> = None;
            loop {
                let (node, membership, ring) =
                    (self.node.clone(), self.membership.clone(), new.clone());
                let cursor = after.clone();
                let page = offload(self.spawner.as_ref(), move || {
                    given_away(&node, &membership, &ring, range, cursor.as_ref(), n)
                })
                .await;
                let (records, last) = match page {
                    Some(Ok(Some(page))) => page,
                    Some(Ok(None)) | None => return Cleanup::Abandoned(dropped),
                    Some(Err(error)) => {
                        tracing::warn!("cleanup stopped by local storage: {error}");
                        return Cleanup::Unfinished(dropped);
                    }
                };
                let given = records.len();
                let (handed, bytes) = self.hand_over(records, new, n).await;
                unfinished |= handed.len() < given;
                let (node, membership, ring) =
                    (self.node.clone(), self.membership.clone(), new.clone());
                let done = offload(self.spawner.as_ref(), move || {
                    if ring_moved(&membership, &ring) {
                        return Ok(None);
                    }
                    node.drop_copies(&handed)
                        .map(|gone| Some(gone.into_iter().filter(|gone| *gone).count() as u64))
                })
                .await;
                match done {
                    Some(Ok(Some(count))) => dropped += count,
                    Some(Ok(None)) | None => return Cleanup::Abandoned(dropped),
                    Some(Err(error)) => {
                        tracing::warn!("cleanup stopped by local storage: {error}");
                        return Cleanup::Unfinished(dropped);
                    }
                }
                if let Some(wait) = throttle.moved(bytes, self.node.monotonic_ms()) {
                    self.spawner.sleep(wait).await;
                }
                match last {
                    Some(last) => after = Some(last),
                    None => break,
                }
            }
        }
        if unfinished {
            Cleanup::Unfinished(dropped)
        } else {
            Cleanup::Done(dropped)
        }
    }

    /// Sends each record to its live replicas on `new`; returns those every one of
    /// them (at least one) acknowledged, and the bytes of records sent.
    async fn hand_over(
        &self,
        records: Vec<(Key, Record)>,
        new: &ringkv_core::ring::Ring,
        n: usize,
    ) -> (Vec<(Key, Record)>, u64) {
        let mut handed = Vec::new();
        let mut bytes = 0;
        for batch in records.chunks(HAND_OVER_AT_ONCE) {
            let encoded: Vec<(Bytes, Bytes)> = batch
                .iter()
                .map(|(key, record)| (key.to_bytes(), Bytes::from(record.encode())))
                .collect();
            bytes += encoded
                .iter()
                .map(|(key, record)| (key.len() + record.len()) as u64)
                .sum::<u64>();
            let calls: Vec<(NodeId, crate::transport::BoxFuture<bool>)> = batch
                .iter()
                .zip(encoded)
                .enumerate()
                .map(|(index, ((key, _), (key_bytes, record)))| {
                    let peers: Vec<crate::transport::Peer> = new
                        .preference_list(key.token(), n)
                        .replicas()
                        .iter()
                        .filter(|id| self.membership.liveness(**id).is_up())
                        .filter_map(|id| self.membership.peer(*id))
                        .collect();
                    let (transport, timeout) =
                        (self.transport.clone(), self.settings.request_timeout);
                    let key = key_bytes;
                    let call: crate::transport::BoxFuture<bool> = Box::pin(async move {
                        if peers.is_empty() {
                            return false;
                        }
                        for peer in peers {
                            let request = PeerRequest::Replicate {
                                key: key.clone(),
                                record: record.clone(),
                            };
                            if !matches!(
                                transport.call(&peer, request, timeout).await,
                                Ok(PeerResponse::Ack)
                            ) {
                                return false;
                            }
                        }
                        true
                    });
                    (NodeId(index as u64), call)
                })
                .collect();
            let mut gather = crate::gather::Gather::new(calls);
            gather.all().await;
            for (NodeId(index), acked) in gather.into_done() {
                if let Some(record) = batch.get(index as usize).filter(|_| acked) {
                    handed.push(record.clone());
                }
            }
        }
        (handed, bytes)
    }

    /// Copies `clean_up` dropped since start.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn cleaned(&self, dropped: u64) -> u64 {
        if dropped > 0 {
            self.dropped
                .fetch_add(dropped, std::sync::atomic::Ordering::Relaxed);
            tracing::info!(
                dropped,
                "dropped the copies of ranges other nodes took over"
            );
            metrics::counter!("ringkv_cleanup_dropped_total").increment(dropped);
        }
        dropped
    }
}

/// How an ended change's cleanup went (with the records dropped).
enum Cleanup {
    Done(u64),
    /// Some records could not be handed over: try again later.
    Unfinished(u64),
    /// Another change began (or the ring moved on): keep the rest.
    Abandoned(u64),
}

/// Records handed over at once.
const HAND_OVER_AT_ONCE: usize = 32;

/// Size of one cleanup page.
const CLEANUP_PAGE_BYTES: usize = 1 << 20;

/// Whether the ring is no longer `new` or another change is under way.
fn ring_moved(membership: &Membership, new: &Arc<ringkv_core::ring::Ring>) -> bool {
    membership.next_ring().is_some() || !Arc::ptr_eq(&membership.ring(), new)
}

/// One page of `range` after `after`: the records whose key `new` does not place
/// on this node, and the key to go on after (`None`: the range is done); `None`
/// when the ring moved on. Blocking.
#[allow(clippy::type_complexity)]
fn given_away(
    node: &Node,
    membership: &Membership,
    new: &Arc<ringkv_core::ring::Ring>,
    range: TokenRange,
    after: Option<&Key>,
    n: usize,
) -> Result<Option<(Vec<(Key, Record)>, Option<Key>)>, crate::node::NodeError> {
    if ring_moved(membership, new) {
        return Ok(None);
    }
    let (page, complete) = node.page(range, after, CLEANUP_PAGE_BYTES)?;
    let last = (!complete)
        .then(|| page.last().map(|(key, _)| key.clone()))
        .flatten();
    let me = membership.me();
    let gone = page
        .into_iter()
        .filter(|(key, _)| !new.preference_list(key.token(), n).replicas().contains(&me))
        .collect();
    Ok(Some((gone, last)))
}
