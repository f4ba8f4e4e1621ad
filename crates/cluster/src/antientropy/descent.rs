//! The descent into one differing arc: children, then leaves, then the key digests
//! of each differing leaf, then the repair of every differing key (`KeySync`), at
//! most `KEYS_AT_ONCE` at a time and within the throttle.

use std::collections::BTreeMap;
use std::sync::{Mutex, PoisonError};

use bytes::Bytes;
use ringkv_core::merkle::FANOUT;
use ringkv_core::wire::{MAX_DIGESTS, PeerRequest, PeerResponse};
use ringkv_core::{Key, NodeId, TokenRange};

use super::key_sync::{KeySync, Moved};
use super::{AntiEntropy, RoundReport, Stop, Throttle};
use crate::gather::Gather;
use crate::transport::{BoxFuture, Peer, offload};

/// Keys of one leaf repaired at once.
const KEYS_AT_ONCE: usize = 32;

impl AntiEntropy {
    /// Descends one differing arc; returns the keys repaired.
    pub(super) async fn sync_arc(
        &self,
        peer: &Peer,
        arc: TokenRange,
        report: &mut RoundReport,
        throttle: &Mutex<Throttle>,
    ) -> Result<u64, Stop> {
        let mut todo = Vec::new();
        let children = self.hashes(peer, arc, None, report).await?;
        let Some(my_children) = self.node.tree_hashes(arc, None) else {
            return Ok(0);
        };
        let differing: Vec<usize> = (0..FANOUT)
            .filter(|c| children.get(*c) != Some(&my_children[*c]))
            .collect();
        // Most of the arc differs (a node refilled after a lost disk or a ring
        // change): one digest list for the whole arc instead of a round trip per
        // leaf, when it fits in one answer.
        if differing.len() > FANOUT / 2 {
            let (keys, complete) = self.differing_keys(peer, arc, report).await?;
            if complete {
                report.leaves_differing += differing.len() * FANOUT;
                return self.sync_keys(peer, &keys, report, throttle).await;
            }
        }
        for child in differing {
            let leaves = self.hashes(peer, arc, Some(child), report).await?;
            let Some(my_leaves) = self.node.tree_hashes(arc, Some(child)) else {
                continue;
            };
            let leaves: Vec<usize> = (0..FANOUT)
                .filter(|l| leaves.get(*l) != Some(&my_leaves[*l]))
                .collect();
            // Likewise for a child most of whose leaves differ.
            if leaves.len() > FANOUT / 4
                && let (Some(first), Some(last)) = (
                    self.node.leaf_range(arc, child * FANOUT),
                    self.node.leaf_range(arc, child * FANOUT + FANOUT - 1),
                )
            {
                let range = TokenRange {
                    start: first.start,
                    end: last.end,
                };
                let (keys, complete) = self.differing_keys(peer, range, report).await?;
                if complete {
                    report.leaves_differing += leaves.len();
                    todo.extend(keys);
                    continue;
                }
            }
            for leaf in leaves {
                report.leaves_differing += 1;
                let Some(range) = self.node.leaf_range(arc, child * FANOUT + leaf) else {
                    continue;
                };
                todo.extend(self.differing_keys(peer, range, report).await?.0);
            }
        }
        self.sync_keys(peer, &todo, report, throttle).await
    }

    async fn hashes(
        &self,
        peer: &Peer,
        arc: TokenRange,
        child: Option<usize>,
        report: &mut RoundReport,
    ) -> Result<Vec<u64>, Stop> {
        let request = PeerRequest::TreeHashes {
            arc,
            child: child.and_then(|c| u8::try_from(c).ok()),
        };
        match self.call(peer, request).await? {
            PeerResponse::Hashes { hashes } if hashes.len() <= FANOUT => {
                report.exchange_bytes += 8 * hashes.len() as u64;
                Ok(hashes)
            }
            other => Err(Stop::Peer(format!(
                "unexpected answer to TreeHashes: {other:?}"
            ))),
        }
    }

    /// Compares the key digests of a range (a leaf, or more) with the peer's: the
    /// keys whose digests differ (or that one side lacks), each with whether the
    /// peer holds it, and whether both sides listed every key of the range (at
    /// most `MAX_DIGESTS` each).
    async fn differing_keys(
        &self,
        peer: &Peer,
        range: TokenRange,
        report: &mut RoundReport,
    ) -> Result<(Vec<(Key, bool)>, bool), Stop> {
        let (theirs, theirs_complete) =
            match self.call(peer, PeerRequest::LeafDigests { range }).await? {
                PeerResponse::Digests { keys, complete } if keys.len() <= MAX_DIGESTS => {
                    (keys, complete)
                }
                other => {
                    return Err(Stop::Peer(format!(
                        "unexpected answer to LeafDigests: {other:?}"
                    )));
                }
            };
        report.exchange_bytes += theirs
            .iter()
            .map(|(key, _)| key.len() as u64 + 8)
            .sum::<u64>();
        let node = self.node.clone();
        let (mine, mine_complete) = match offload(self.spawner.as_ref(), move || {
            node.digests(range, MAX_DIGESTS)
        })
        .await
        {
            Some(Ok(mine)) => mine,
            Some(Err(error)) => return Err(Stop::Local(error.to_string())),
            None => return Err(Stop::Local("shutting down".into())),
        };
        let mut differing: BTreeMap<Bytes, (Option<u64>, Option<u64>)> = BTreeMap::new();
        for (key, digest) in mine {
            differing.entry(key.to_bytes()).or_default().0 = Some(digest);
        }
        for (key, digest) in theirs {
            differing.entry(key).or_default().1 = Some(digest);
        }
        let mut todo = Vec::new();
        for (key, (mine, theirs)) in differing {
            if mine == theirs {
                continue;
            }
            let Ok(key) = Key::from_stored(key) else {
                return Err(Stop::Peer("a digest of an invalid key".into()));
            };
            todo.push((key, theirs.is_some()));
        }
        Ok((todo, theirs_complete && mine_complete))
    }

    /// Repairs `todo` with `peer`, `KEYS_AT_ONCE` at a time, within the throttle;
    /// returns how many keys were repaired.
    async fn sync_keys(
        &self,
        peer: &Peer,
        todo: &[(Key, bool)],
        report: &mut RoundReport,
        throttle: &Mutex<Throttle>,
    ) -> Result<u64, Stop> {
        let mut repaired = 0;
        for batch in todo.chunks(KEYS_AT_ONCE) {
            let calls: Vec<(NodeId, BoxFuture<Result<Moved, Stop>>)> = batch
                .iter()
                .map(|(key, they_have_it)| {
                    let sync = KeySync {
                        node: self.node.clone(),
                        transport: self.transport.clone(),
                        spawner: self.spawner.clone(),
                        peer: peer.clone(),
                        timeout: self.settings.request_timeout,
                        collector: self.collector.clone(),
                    };
                    let call: BoxFuture<Result<Moved, Stop>> =
                        Box::pin(sync.run(key.clone(), *they_have_it));
                    (peer.id, call)
                })
                .collect();
            let mut gather = Gather::new(calls);
            gather.all().await;
            let mut moved_bytes = 0;
            for (_, moved) in gather.into_done() {
                let moved = moved?;
                report.keys_pulled += u64::from(moved.pulled);
                report.keys_pushed += u64::from(moved.pushed);
                report.keys_collected += u64::from(moved.collected);
                moved_bytes += moved.bytes;
                repaired += u64::from(!moved.collected);
            }
            report.record_bytes += moved_bytes;
            let wait = throttle
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .moved(moved_bytes, self.node.monotonic_ms());
            if let Some(wait) = wait {
                report.throttled_ms += u64::try_from(wait.as_millis()).unwrap_or(u64::MAX);
                self.spawner.sleep(wait).await;
            }
        }
        Ok(repaired)
    }
}
