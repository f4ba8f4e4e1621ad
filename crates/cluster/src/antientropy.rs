//! Anti-entropy (DESIGN.md §6): replicas compare Merkle trees of the arcs they
//! share and exchange only the keys that differ, so they converge even when hints
//! were dropped, a disk was lost or a write reached too few replicas.
//!
//! Every `anti_entropy_interval_ms` a node picks the next healthy peer it shares
//! arcs with (round robin) and, for every shared arc: compares roots (one message
//! for all arcs); descends into the children that differ, then the leaves that
//! differ; for each differing leaf compares the key digests of both sides and, for
//! every key that differs or is missing on one side, pulls the peer's record
//! (`Read`), merges it into its own (durably) and pushes the result back
//! (`Replicate`) when the peer held less. Both directions in one pass. Records move
//! at most at `streaming_bytes_per_sec` (`Throttle`: after each record the round
//! sleeps until the bytes moved so far are due).
//!
//! The trees live in `Node` (updated in O(1) by every write) and are rebuilt from
//! storage when the arcs this node replicates change (at start: they start empty).
//!
//! With a tombstone `Collector` (`with_collector`), equal roots are also
//! confirmations for tombstone GC by acknowledgement (see `tombstone`), and a
//! tombstone-only record that one side already forgot is not copied back when the
//! other may forget it too: it is forgotten there instead (or, pulled into a node
//! that holds nothing and would forget it at once, left out). Otherwise the two
//! sides would hand a forgotten tombstone back and forth, each copy a change that
//! restarts the confirmations.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use ringkv_core::wire::{MAX_ARCS_PER_REQUEST, PeerRequest, PeerResponse};
use ringkv_core::{NodeId, Token, TokenRange};

use crate::gather::{Borrowed, join_all};
use crate::membership::{Liveness, Membership};
use crate::node::Node;
use crate::tombstone::Collector;
use crate::transport::{Peer, Spawn, Transport, offload};

mod descent;
mod key_sync;

/// How anti-entropy runs (from the configuration).
#[derive(Debug, Clone, Copy)]
pub struct AntiEntropySettings {
    /// N: replicas per key.
    pub replication_factor: u8,
    /// Most bytes of records moved per second (`streaming_bytes_per_sec`).
    pub bytes_per_sec: u64,
    /// How long one call may take (`request_timeout_ms`).
    pub request_timeout: Duration,
}

/// One arc as anti-entropy knows it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ArcStatus {
    /// Wall ms when this arc last matched a peer's (roots equal, or every differing
    /// key exchanged).
    pub last_converged_ms: Option<u64>,
    /// Keys repaired in this arc so far (pulled or pushed).
    pub repaired: u64,
}

/// What one round did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RoundReport {
    pub peer: Option<NodeId>,
    pub arcs_compared: usize,
    pub arcs_differing: usize,
    pub leaves_differing: usize,
    pub keys_pulled: u64,
    pub keys_pushed: u64,
    /// Tombstone-only records forgotten here instead of pushed back to a peer that
    /// had forgotten them (see the module doc).
    pub keys_collected: u64,
    /// Bytes of records moved (pulled and pushed).
    pub record_bytes: u64,
    /// Bytes of tree hashes and key digests received.
    pub exchange_bytes: u64,
    /// How long the round slept to keep to `bytes_per_sec`.
    pub throttled_ms: u64,
}

impl RoundReport {
    /// Adds what `other` (one arc's descent) counted, except the arcs compared.
    fn add(&mut self, other: &RoundReport) {
        self.leaves_differing += other.leaves_differing;
        self.keys_pulled += other.keys_pulled;
        self.keys_pushed += other.keys_pushed;
        self.keys_collected += other.keys_collected;
        self.record_bytes += other.record_bytes;
        self.exchange_bytes += other.exchange_bytes;
        self.throttled_ms += other.throttled_ms;
    }
}

/// Keeps a transfer at `bytes_per_sec` on average: after moving bytes, the time to
/// wait before moving more.
#[derive(Debug, Clone, Copy)]
pub struct Throttle {
    bytes_per_sec: u64,
    started_ms: u64,
    moved: u64,
}

impl Throttle {
    pub fn new(bytes_per_sec: u64, now_ms: u64) -> Throttle {
        Throttle {
            bytes_per_sec: bytes_per_sec.max(1),
            started_ms: now_ms,
            moved: 0,
        }
    }

    /// Counts `bytes` moved at `now_ms`; returns how long to wait so that the bytes
    /// moved so far took at least their due time.
    pub fn moved(&mut self, bytes: u64, now_ms: u64) -> Option<Duration> {
        self.moved = self.moved.saturating_add(bytes);
        let due_ms = u64::try_from(u128::from(self.moved) * 1000 / u128::from(self.bytes_per_sec))
            .unwrap_or(u64::MAX);
        let elapsed = now_ms.saturating_sub(self.started_ms);
        (due_ms > elapsed).then(|| Duration::from_millis(due_ms - elapsed))
    }
}

/// Totals since start, for `/v1/cluster/status`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Totals {
    pub rounds: u64,
    pub keys_repaired: u64,
    pub record_bytes: u64,
    pub exchange_bytes: u64,
}

#[derive(Default)]
struct State {
    /// The arcs this node replicates, with their replicas, as of the last round.
    arcs: Vec<(TokenRange, Vec<NodeId>)>,
    next_peer: usize,
    status: BTreeMap<Token, ArcStatus>,
    totals: Totals,
}

/// One node's anti-entropy.
pub struct AntiEntropy {
    node: Arc<Node>,
    membership: Arc<Membership>,
    transport: Arc<dyn Transport>,
    spawner: Arc<dyn Spawn>,
    settings: AntiEntropySettings,
    state: Mutex<State>,
    /// Tombstone GC, if on: takes the confirmations, decides what not to copy back.
    collector: Option<Arc<Collector>>,
}

/// Why an exchange with the peer stopped early.
#[derive(Debug)]
enum Stop {
    /// The peer did not answer or answered nonsense.
    Peer(String),
    /// Local storage failed.
    Local(String),
}

impl AntiEntropy {
    pub fn new(
        node: Arc<Node>,
        membership: Arc<Membership>,
        transport: Arc<dyn Transport>,
        spawner: Arc<dyn Spawn>,
        settings: AntiEntropySettings,
    ) -> AntiEntropy {
        AntiEntropy {
            node,
            membership,
            transport,
            spawner,
            settings,
            state: Mutex::new(State::default()),
            collector: None,
        }
    }

    /// Feeds `collector` the confirmations of tombstone GC by acknowledgement, and
    /// lets it keep forgotten tombstones forgotten (see the module doc).
    #[must_use]
    pub fn with_collector(mut self, collector: Arc<Collector>) -> AntiEntropy {
        self.collector = Some(collector);
        self
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Every arc this node replicates with its status, and the totals.
    pub fn status(&self) -> (Vec<(TokenRange, ArcStatus)>, Totals) {
        let state = self.state();
        let arcs = state
            .arcs
            .iter()
            .map(|(arc, _)| {
                (
                    *arc,
                    state.status.get(&arc.start).copied().unwrap_or_default(),
                )
            })
            .collect();
        (arcs, state.totals)
    }

    /// One round: refresh the arcs (rebuilding the trees if they moved), then sync
    /// every shared arc with the next healthy peer.
    pub async fn round(&self) -> RoundReport {
        let mut report = RoundReport::default();
        self.refresh_arcs().await;
        let Some((peer, shared)) = self.next_peer() else {
            return report;
        };
        report.peer = Some(peer.id);
        let mut throttle = Throttle::new(self.settings.bytes_per_sec, self.node.monotonic_ms());
        let stopped = self
            .sync_with(&peer, &shared, &mut report, &mut throttle)
            .await;
        match stopped {
            Ok(()) => {}
            Err(Stop::Peer(reason)) => {
                tracing::debug!(peer = %peer.id, "anti-entropy exchange stopped: {reason}");
            }
            Err(Stop::Local(reason)) => {
                tracing::warn!(peer = %peer.id, "anti-entropy stopped by local storage: {reason}");
            }
        }
        let repaired = report.keys_pulled + report.keys_pushed;
        {
            let mut state = self.state();
            state.totals.rounds += 1;
            state.totals.keys_repaired += repaired;
            state.totals.record_bytes += report.record_bytes;
            state.totals.exchange_bytes += report.exchange_bytes;
        }
        metrics::counter!("ringkv_anti_entropy_rounds_total").increment(1);
        metrics::counter!("ringkv_anti_entropy_keys_repaired_total").increment(repaired);
        metrics::counter!("ringkv_anti_entropy_record_bytes_total").increment(report.record_bytes);
        if repaired > 0 {
            tracing::info!(peer = %peer.id, repaired, bytes = report.record_bytes, "anti-entropy repaired keys");
        }
        report
    }

    /// Takes the ring's current arcs; rebuilds the trees when they changed.
    async fn refresh_arcs(&self) {
        let ring = self.membership.ring();
        let arcs = ring.arcs(
            self.membership.me(),
            usize::from(self.settings.replication_factor),
        );
        let ranges: Vec<TokenRange> = arcs.iter().map(|(arc, _)| *arc).collect();
        if self.node.tree_arcs() != ranges {
            let node = self.node.clone();
            let rebuild = ranges.clone();
            match offload(self.spawner.as_ref(), move || node.rebuild_trees(rebuild)).await {
                Some(Ok(())) => tracing::debug!(arcs = ranges.len(), "anti-entropy trees rebuilt"),
                Some(Err(error)) => tracing::warn!("cannot rebuild anti-entropy trees: {error}"),
                None => return,
            }
        }
        if let Some(collector) = &self.collector {
            // While a join or leave is under way, ranges have replicas beyond the
            // current ring's (the next owners, still streaming): no confirmation
            // by the current replicas alone lets a tombstone go (the grace still
            // does). The arcs are cleared, and with them every confirmation.
            let changing = self.membership.next_ring().is_some();
            collector.set_arcs(self.membership.me(), if changing { &[] } else { &arcs });
        }
        let mut state = self.state();
        let kept: BTreeMap<Token, ArcStatus> = arcs
            .iter()
            .map(|(arc, _)| {
                let status = state.status.get(&arc.start).copied().unwrap_or_default();
                (arc.start, status)
            })
            .collect();
        state.status = kept;
        state.arcs = arcs;
    }

    /// The next healthy peer (round robin) and the arcs this node shares with it.
    fn next_peer(&self) -> Option<(Peer, Vec<TokenRange>)> {
        let me = self.membership.me();
        let mut state = self.state();
        let mut peers: Vec<NodeId> = state
            .arcs
            .iter()
            .flat_map(|(_, replicas)| replicas.iter().copied())
            .filter(|id| *id != me)
            .collect();
        peers.sort_unstable();
        peers.dedup();
        for _ in 0..peers.len() {
            let index = state.next_peer % peers.len();
            state.next_peer = state.next_peer.wrapping_add(1);
            let id = peers[index];
            if self.membership.liveness(id) != Liveness::Healthy {
                continue;
            }
            let Some(peer) = self.membership.peer(id) else {
                continue;
            };
            let shared = state
                .arcs
                .iter()
                .filter(|(_, replicas)| replicas.contains(&id))
                .map(|(arc, _)| *arc)
                .collect();
            return Some((peer, shared));
        }
        None
    }

    async fn call(&self, peer: &Peer, request: PeerRequest) -> Result<PeerResponse, Stop> {
        self.transport
            .call(peer, request, self.settings.request_timeout)
            .await
            .map_err(|error| Stop::Peer(error.to_string()))
    }

    async fn sync_with(
        &self,
        peer: &Peer,
        shared: &[TokenRange],
        report: &mut RoundReport,
        throttle: &mut Throttle,
    ) -> Result<(), Stop> {
        // One throttle for the arcs repaired at once.
        let shared_throttle = Mutex::new(*throttle);
        let outcome = self
            .sync_chunks(peer, shared, report, &shared_throttle)
            .await;
        *throttle = *shared_throttle
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        outcome
    }

    async fn sync_chunks(
        &self,
        peer: &Peer,
        shared: &[TokenRange],
        report: &mut RoundReport,
        throttle: &Mutex<Throttle>,
    ) -> Result<(), Stop> {
        for chunk in shared.chunks(MAX_ARCS_PER_REQUEST) {
            let (theirs, mine) = self.compare_roots(peer, chunk, report).await?;
            let mut differing = Vec::new();
            for ((arc, mine), theirs) in chunk.iter().zip(mine).zip(theirs) {
                let (Some(mine), Some(theirs)) = (mine, theirs) else {
                    continue; // One side has no tree of it (another ring view).
                };
                report.arcs_compared += 1;
                if mine == theirs {
                    self.converged(*arc, 0);
                } else {
                    differing.push(*arc);
                }
            }
            report.arcs_differing += differing.len();
            // Differing arcs descend `PARALLEL_ARCS` at a time: each descent is a
            // chain of round trips, and a node refilled after a lost disk or a ring
            // change differs in most of its arcs.
            for batch in differing.chunks(PARALLEL_ARCS) {
                let descents = batch
                    .iter()
                    .map(|arc| {
                        let descent: ArcFuture<'_> = Box::pin(async move {
                            let mut local = RoundReport::default();
                            let repaired = self.sync_arc(peer, *arc, &mut local, throttle).await;
                            (*arc, local, repaired)
                        });
                        descent
                    })
                    .collect();
                let mut stopped = None;
                for (arc, local, repaired) in join_all(descents).await {
                    report.add(&local);
                    match repaired {
                        Ok(repaired) => self.converged(arc, repaired),
                        Err(stop) => stopped = Some(stop),
                    }
                }
                if let Some(stop) = stopped {
                    return Err(stop);
                }
            }
            // With tombstone GC, compare the repaired arcs once more: equal now, they
            // are confirmed without waiting for the next round with this peer (by
            // when, on a busy arc, something else will have changed).
            if self.collector.is_some() && !differing.is_empty() {
                self.compare_roots(peer, &differing, report).await?;
            }
        }
        Ok(())
    }

    /// Asks `peer` for its roots of `arcs` and reads this node's; with a collector,
    /// arcs whose roots are equal are confirmations for tombstone GC.
    async fn compare_roots(
        &self,
        peer: &Peer,
        arcs: &[TokenRange],
        report: &mut RoundReport,
    ) -> Result<(Vec<Option<u64>>, Vec<Option<u64>>), Stop> {
        let theirs = match self
            .call(
                peer,
                PeerRequest::TreeRoots {
                    arcs: arcs.to_vec(),
                },
            )
            .await?
        {
            PeerResponse::Roots { roots } if roots.len() == arcs.len() => roots,
            other => {
                return Err(Stop::Peer(format!(
                    "unexpected answer to TreeRoots: {other:?}"
                )));
            }
        };
        report.exchange_bytes += 9 * theirs.len() as u64;
        // Read after the peer's answer: equal roots mean the peer held, durably,
        // what this node holds at `stamp`.
        let (mine, stamp) = self.node.tree_roots_stamped(arcs);
        if let Some(collector) = &self.collector {
            let at_ms = self.node.monotonic_ms();
            for ((arc, mine), theirs) in arcs.iter().zip(&mine).zip(&theirs) {
                if mine.is_some() && mine == theirs {
                    collector.confirm(*arc, peer.id, stamp, at_ms);
                }
            }
        }
        Ok((theirs, mine))
    }

    fn converged(&self, arc: TokenRange, repaired: u64) {
        let now = self.node.now_ms();
        let mut state = self.state();
        let status = state.status.entry(arc.start).or_default();
        status.last_converged_ms = Some(now);
        status.repaired += repaired;
    }
}

/// Differing arcs descended at once, with one peer.
const PARALLEL_ARCS: usize = 4;

/// One arc's descent: its own report, merged into the round's afterwards.
type ArcFuture<'a> = Borrowed<'a, (TokenRange, RoundReport, Result<u64, Stop>)>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn throttle_spreads_bytes_over_their_due_time() {
        let mut throttle = Throttle::new(1_000, 10_000);
        assert_eq!(
            throttle.moved(500, 10_000),
            Some(Duration::from_millis(500))
        );
        // Slept as told: nothing more to wait for the same bytes.
        assert_eq!(throttle.moved(0, 10_500), None);
        // 1,500 bytes are due at 1.5 s; at 1.2 s, 300 ms are left.
        assert_eq!(
            throttle.moved(1_000, 11_200),
            Some(Duration::from_millis(300))
        );
        // Slower than the limit: no wait.
        assert_eq!(throttle.moved(100, 13_000), None);
        // A zero rate is taken as 1 B/s, never a division by zero.
        assert_eq!(
            Throttle::new(0, 0).moved(2, 0),
            Some(Duration::from_secs(2))
        );
    }
}
