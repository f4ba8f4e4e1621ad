//! Join and decommission: moving ranges between nodes while the cluster serves
//! (DESIGN.md §6, topology changes). Removal of a dead node is `Membership::remove`
//! plus anti-entropy; it streams nothing itself.
//!
//! Two rings exist while a change is under way (`Membership::ring` and
//! `next_ring`): reads follow the current one, writes reach the replicas of both
//! (W of each, see `Coordinator::write_acked`), so a range can change hands without
//! a moment where a quorum read could miss an acknowledged write. A change has two
//! phases (`MemberState`): while the node streams, the current ring is the old one
//! and the other is the new; once its data moved, it is the other way round; only
//! when every member has seen the second phase does the change end and the old ring
//! go. So two coordinators whose views are one step apart always share a ring they
//! both write W of, and the one read from: a joined node's news reaching some nodes
//! before others cannot split reads from writes.
//!
//! **Join** (a node started with `--seeds`, the first time, or again after it was
//! removed): it takes tokens and enters as `Joining` (on the next ring only), tells
//! every member (`Membership::announce`, repeated until each one answered: a
//! change streams only once nobody routes without it), waits one request timeout (writes placed
//! before the news have landed or failed by then), then pulls every range it will
//! replicate. Each piece (a next-ring arc cut where current-ring arcs end) comes from
//! the current replicas the join displaces (as Cassandra streams from the node being
//! replaced: the joining node inherits its place, and with it every quorum that
//! place was part of); from every live current replica (their union) when one of
//! those is down or nothing is displaced (a cluster smaller than N). Pages of
//! records are merged durably, at most `streaming_bytes_per_sec`. Then the node is
//! `Joined` (reads reach it; writes reach the old owners too), tells every member
//! until each answered, and is `Normal`.
//!
//! **Decommission**: refused while another change is under way, while a member is
//! down, or when fewer than N nodes would remain. The node becomes `Leaving` (still
//! on the current ring, no longer on the next), announces to every member, waits
//! one request timeout, then pushes (`Store`) every range it replicates to the
//! nodes that replicate it next and did not before, then becomes `Drained` (reads
//! go to the next owners, writes still reach it), tells every member until each
//! answered, becomes `Left` and is done once every member heard it: it owns
//! nothing afterwards, keeps running (handing off any hints it holds) and can be
//! stopped.
//!
//! One change at a time: a decommission is refused while another is under way;
//! two nodes started to join at the same moment are not prevented (there is no
//! coordinator to serialize them), and a coordinator whose view lags across two
//! overlapping changes is not covered by the argument above.
//!
//! Failed pieces are retried (backoff up to 5 s) until they succeed: a join or a
//! decommission waits for an unreachable node rather than finishing without its
//! data; `progress` says what it waits for. Nothing is deleted on the way: nodes
//! keep what they no longer replicate, so a view of the ring that lags behind is
//! never answered from an empty replica.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use ringkv_core::wire::{MAX_PAGE_BYTES, PeerRequest, PeerResponse};
use ringkv_core::{Key, MemberState, NodeId, Record, TokenRange};

use crate::antientropy::Throttle;
use crate::membership::Membership;
use crate::node::Node;
use crate::transport::{Spawn, Transport, offload};

/// How streaming runs (from the configuration).
#[derive(Debug, Clone, Copy)]
pub struct TopologySettings {
    /// N: replicas per key.
    pub replication_factor: u8,
    /// Most bytes of records moved per second (`streaming_bytes_per_sec`).
    pub bytes_per_sec: u64,
    /// How long one call may take (`request_timeout_ms`); also the wait between the
    /// announcement of a change and the streaming.
    pub request_timeout: Duration,
}

/// What this node's topology change is doing.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Phase {
    /// No change of this node under way (or ever).
    #[default]
    Idle,
    Joining,
    Joined,
    Leaving,
    Left,
}

impl Phase {
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Idle => "idle",
            Phase::Joining => "joining",
            Phase::Joined => "joined",
            Phase::Leaving => "leaving",
            Phase::Left => "left",
        }
    }
}

/// Progress of this node's join or decommission, for `/v1/cluster/status` and the
/// progress bars of `ringkv node join|decommission`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Progress {
    pub phase: Phase,
    /// Pieces of ranges to move (a piece is moved to or from each of its nodes).
    pub ranges_total: usize,
    pub ranges_done: usize,
    /// Records and bytes of records moved so far.
    pub keys: u64,
    pub bytes: u64,
    /// Monotonic ms when the streaming started (after the announcement and the
    /// wait) and, once done, how long it took.
    pub started_ms: Option<u64>,
    pub took_ms: Option<u64>,
    /// The last failure, while a piece is being retried.
    pub retrying: Option<String>,
}

/// Why a decommission cannot start.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TopologyError {
    #[error("this node is {0}, not normal: only a normal member can be decommissioned")]
    NotNormal(&'static str),
    #[error("node {node} is {state}: one topology change at a time; retry once it is done")]
    Busy { node: NodeId, state: &'static str },
    #[error(
        "node {node} is {liveness}: a decommission needs every member up; bring it back or remove it first"
    )]
    MemberDown {
        node: NodeId,
        liveness: &'static str,
    },
    #[error(
        "decommission would leave {remaining} node(s) for {n} replicas per key; add a node first"
    )]
    TooFewNodes { remaining: usize, n: u8 },
}

/// Which way a piece moves.
#[derive(Debug, Clone, Copy)]
enum Direction {
    /// From its current replicas to this node (join).
    Pull,
    /// From this node to its next replicas (decommission).
    Push,
}

/// One piece of range to move, and the nodes it moves from (join) or to
/// (decommission).
#[derive(Debug, Clone)]
struct Piece {
    range: TokenRange,
    peers: Vec<NodeId>,
}

/// This node's joins and decommissions.
pub struct Topology {
    node: Arc<Node>,
    membership: Arc<Membership>,
    transport: Arc<dyn Transport>,
    spawner: Arc<dyn Spawn>,
    settings: TopologySettings,
    progress: Mutex<Progress>,
    /// Copies dropped by `clean_up` since start.
    dropped: std::sync::atomic::AtomicU64,
    /// The departed members `record_departures` saved last, as (id, generation).
    departures: Mutex<Vec<(NodeId, u64)>>,
    /// Ended changes whose cleanup is not finished: (ring left, ring made).
    cleanups: Mutex<Vec<(Arc<ringkv_core::ring::Ring>, Arc<ringkv_core::ring::Ring>)>>,
}

/// Why moving one piece stopped.
type Failure = String;

const RETRY_MIN: Duration = Duration::from_millis(100);
/// Pieces streamed at once (each its own calls and fsyncs): most pieces are small,
/// so one at a time would wait on round trips, not on bytes.
const PARALLEL_PIECES: usize = 8;

/// A future borrowing the topology (no spawning: it runs inside `join` or
/// `decommission`).
type LocalFuture<'a> = std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send + 'a>>;

/// Runs every future to its end, together.
async fn all(mut futures: Vec<LocalFuture<'_>>) {
    std::future::poll_fn(|cx| {
        futures.retain_mut(|future| future.as_mut().poll(cx).is_pending());
        if futures.is_empty() {
            std::task::Poll::Ready(())
        } else {
            std::task::Poll::Pending
        }
    })
    .await;
}
const RETRY_MAX: Duration = Duration::from_secs(5);

impl Topology {
    pub fn new(
        node: Arc<Node>,
        membership: Arc<Membership>,
        transport: Arc<dyn Transport>,
        spawner: Arc<dyn Spawn>,
        settings: TopologySettings,
    ) -> Topology {
        Topology {
            node,
            membership,
            transport,
            spawner,
            settings,
            progress: Mutex::new(Progress::default()),
            dropped: std::sync::atomic::AtomicU64::new(0),
            departures: Mutex::new(Vec::new()),
            cleanups: Mutex::new(Vec::new()),
        }
    }

    pub fn progress(&self) -> Progress {
        self.progress
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn update(&self, change: impl FnOnce(&mut Progress)) {
        change(&mut self.progress.lock().unwrap_or_else(PoisonError::into_inner));
    }

    fn n(&self) -> usize {
        usize::from(self.settings.replication_factor)
    }

    /// Page size: a tenth of a second of the streaming budget, within 64 KiB ..
    /// `MAX_PAGE_BYTES`.
    fn page_bytes(&self) -> u32 {
        u32::try_from(self.settings.bytes_per_sec / 10)
            .unwrap_or(MAX_PAGE_BYTES)
            .clamp(64 << 10, MAX_PAGE_BYTES)
    }

    /// Brings a `Joining` node in: streams every range it will replicate from the
    /// current replicas, then makes it `Joined` (reads reach it, writes still reach
    /// the previous owners too) and, once every member knows, `Normal`. Resumes
    /// a `Joined` node at that last step. Returns once done (retrying failed
    /// pieces as long as it takes).
    pub async fn join(&self) {
        let me = self.membership.me();
        if self.membership.my_state() == MemberState::Joining {
            self.start(Phase::Joining);
            self.announce_to_all("joining").await;
            self.spawner.sleep(self.settings.request_timeout).await;
            self.streaming_starts();
            let pieces = self.join_pieces(me);
            self.stream(pieces, Direction::Pull).await;
            self.save(MemberState::Joined).await;
            self.membership.set_my_state(MemberState::Joined);
        }
        if self.membership.my_state() != MemberState::Joined {
            return;
        }
        if self.progress().phase != Phase::Joining {
            self.start(Phase::Joining);
        }
        // A member that still sees this node `Joining` reads from the previous
        // owners: until each one has heard, every write must reach them too.
        self.announce_to_all("joined").await;
        self.save(MemberState::Normal).await;
        self.membership.set_my_state(MemberState::Normal);
        self.finish(Phase::Joined);
        self.announce("normal").await;
    }

    /// Moves every piece, `PARALLEL_PIECES` at a time, retrying each until it is
    /// done: pulled from its sources (join) or pushed to its targets
    /// (decommission), all within one throttle.
    async fn stream(&self, pieces: Vec<Piece>, direction: Direction) {
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
                    let move_piece: LocalFuture<'_> = Box::pin(async move {
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
            all(moves).await;
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
    fn join_pieces(&self, me: NodeId) -> Vec<Piece> {
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

    /// Whether this node may start a decommission now.
    ///
    /// # Errors
    /// Not a normal member, another change under way, or too few nodes would remain.
    pub fn check_decommission(&self) -> Result<(), TopologyError> {
        let me = self.membership.myself();
        if me.state != MemberState::Normal {
            return Err(TopologyError::NotNormal(me.state.as_str()));
        }
        let members = self.membership.members();
        if let Some(down) = members.iter().find(|m| {
            m.id != me.id && m.state != MemberState::Left && !self.membership.liveness(m.id).is_up()
        }) {
            return Err(TopologyError::MemberDown {
                node: down.id,
                liveness: self.membership.liveness(down.id).as_str(),
            });
        }
        if let Some(busy) = members.iter().find(|m| m.state.is_changing()) {
            return Err(TopologyError::Busy {
                node: busy.id,
                state: busy.state.as_str(),
            });
        }
        let remaining = members
            .iter()
            .filter(|m| m.id != me.id && m.state == MemberState::Normal)
            .count();
        if remaining < self.n() {
            return Err(TopologyError::TooFewNodes {
                remaining,
                n: self.settings.replication_factor,
            });
        }
        Ok(())
    }

    /// Takes this node out of the ring: `Leaving`, streams every range it
    /// replicates to its next replicas, then `Drained` (reads go to the next
    /// replicas, writes still reach this node) and, once every member knows,
    /// `Left`. Check `check_decommission` first. Resumes a `Drained` node at that
    /// last step (and a `Leaving` one from the start). Returns once done.
    pub async fn decommission(&self) {
        let me = self.membership.me();
        if matches!(
            self.membership.my_state(),
            MemberState::Normal | MemberState::Leaving
        ) {
            self.save(MemberState::Leaving).await;
            self.membership.set_my_state(MemberState::Leaving);
            self.start(Phase::Leaving);
            self.announce_to_all("leaving").await;
            self.spawner.sleep(self.settings.request_timeout).await;
            self.streaming_starts();
            let pieces = self.leave_pieces(me);
            self.stream(pieces, Direction::Push).await;
            self.save(MemberState::Drained).await;
            self.membership.set_my_state(MemberState::Drained);
        }
        if self.membership.my_state() != MemberState::Drained {
            return;
        }
        if self.progress().phase != Phase::Leaving {
            self.start(Phase::Leaving);
        }
        // A member that still sees this node `Leaving` reads from it: until each
        // one has heard, every write must reach it too.
        self.announce_to_all("drained").await;
        // Recorded first: restarted from here on, the node no longer holds its
        // ranges' newest writes, so it must join again rather than serve them.
        self.save(MemberState::Left).await;
        self.membership.set_my_state(MemberState::Left);
        // Done only once every member knows: a node that missed it would keep
        // writing to this one after it stops.
        self.announce_to_all("left").await;
        // And once the hints it holds are handed to their keys' replicas
        // (`Handoff` redirects them all once this node left): they may be the
        // only copy of an acknowledged write beyond its other replicas.
        self.drain_hints().await;
        self.finish(Phase::Left);
    }

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

    /// One ended change's cleanup: every range of `old` this node replicated.
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
        for range in old.ranges(me, n) {
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
                let bytes: u64 = records
                    .iter()
                    .map(|(key, record)| (key.as_bytes().len() + record.encode().len()) as u64)
                    .sum();
                let given = records.len();
                let handed = self.hand_over(records, new, n).await;
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
    /// them (at least one) acknowledged.
    async fn hand_over(
        &self,
        records: Vec<(Key, Record)>,
        new: &ringkv_core::ring::Ring,
        n: usize,
    ) -> Vec<(Key, Record)> {
        let mut handed = Vec::new();
        for batch in records.chunks(HAND_OVER_AT_ONCE) {
            let calls: Vec<(NodeId, crate::transport::BoxFuture<bool>)> = batch
                .iter()
                .enumerate()
                .map(|(index, (key, record))| {
                    let peers: Vec<crate::transport::Peer> = new
                        .preference_list(key.token(), n)
                        .replicas()
                        .iter()
                        .filter(|id| self.membership.liveness(**id).is_up())
                        .filter_map(|id| self.membership.peer(*id))
                        .collect();
                    let (transport, timeout) =
                        (self.transport.clone(), self.settings.request_timeout);
                    let (key, record) = (key.to_bytes(), Bytes::from(record.encode()));
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
        handed
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

    /// Waits until this node holds no hints (the handoff loop delivers them),
    /// saying how many are left in the progress meanwhile.
    async fn drain_hints(&self) {
        loop {
            let held = self.node.hint_stats().total().hints;
            if held == 0 {
                self.update(|progress| progress.retrying = None);
                return;
            }
            self.update(|progress| {
                progress.retrying = Some(format!("{held} hints still to hand off"));
            });
            self.spawner.sleep(RETRY_MIN).await;
        }
    }

    /// Every piece of range `me` replicates now, with the nodes that replicate it
    /// next and do not now.
    fn leave_pieces(&self, me: NodeId) -> Vec<Piece> {
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

    fn start(&self, phase: Phase) {
        let now = self.node.monotonic_ms();
        self.update(|progress| {
            *progress = Progress {
                phase,
                started_ms: Some(now),
                ..Progress::default()
            };
        });
    }

    /// The announcement and the wait are over: `took_ms` counts from here.
    fn streaming_starts(&self) {
        let now = self.node.monotonic_ms();
        self.update(|progress| progress.started_ms = Some(now));
    }

    fn finish(&self, phase: Phase) {
        let now = self.node.monotonic_ms();
        self.update(|progress| {
            progress.phase = phase;
            progress.took_ms = progress
                .started_ms
                .map(|started| now.saturating_sub(started));
            progress.retrying = None;
        });
        let progress = self.progress();
        tracing::info!(
            phase = phase.as_str(),
            keys = progress.keys,
            bytes = progress.bytes,
            took_ms = progress.took_ms,
            "streaming done"
        );
    }

    /// Tells every member (that has not left) this node's new state, again and
    /// again until each of them answered: a join or a leave must not stream (or
    /// end) while some node routes without knowing of it.
    async fn announce_to_all(&self, state: &str) {
        let mut delay = RETRY_MIN;
        loop {
            let (answered, _) = self
                .membership
                .announce(&self.transport, self.settings.request_timeout)
                .await;
            let me = self.membership.me();
            let members = self
                .membership
                .members()
                .iter()
                .filter(|m| m.id != me && m.state != MemberState::Left)
                .count();
            if answered >= members {
                tracing::info!(state, members, "every member knows");
                self.update(|progress| progress.retrying = None);
                return;
            }
            let waiting =
                format!("{answered} of {members} members heard that this node is {state}");
            tracing::warn!("{waiting}; retrying");
            self.update(|progress| progress.retrying = Some(waiting));
            self.spawner.sleep(delay).await;
            delay = (delay * 2).min(RETRY_MAX);
        }
    }

    /// `Node::save_member_state`, retried until it succeeds (a step must not be
    /// taken before it is recorded).
    async fn save(&self, state: MemberState) {
        let mut delay = RETRY_MIN;
        loop {
            let node = self.node.clone();
            match offload(self.spawner.as_ref(), move || node.save_member_state(state)).await {
                Some(Ok(())) | None => return,
                Some(Err(error)) => {
                    tracing::error!(
                        "cannot record this node's state {}: {error}",
                        state.as_str()
                    );
                    self.spawner.sleep(delay).await;
                    delay = (delay * 2).min(RETRY_MAX);
                }
            }
        }
    }

    async fn announce(&self, state: &str) {
        let (answered, asked) = self
            .membership
            .announce(&self.transport, self.settings.request_timeout)
            .await;
        tracing::info!(state, answered, asked, "told the cluster");
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

/// Whether a node in `state` must refuse `request`, and why: a joining node does
/// not hold its ranges yet (a read it answered could miss acknowledged writes), a
/// node that left holds stale copies (a read could miss, a write it took would be
/// counted on a node nobody reads). Coordinators send such requests only while
/// their view of the ring lags; refused, they count as failed replicas.
pub fn refusal(state: MemberState, request: &PeerRequest) -> Option<ringkv_core::wire::PeerError> {
    let refused = match (state, request) {
        (MemberState::Joining, PeerRequest::Read { .. }) => {
            "is still joining: it serves no reads yet"
        }
        (
            MemberState::Left,
            PeerRequest::Read { .. }
            | PeerRequest::Update { .. }
            | PeerRequest::Replicate { .. }
            | PeerRequest::Sync
            | PeerRequest::Hint { .. },
        ) => "has left the ring",
        _ => return None,
    };
    Some(ringkv_core::wire::PeerError::Refused {
        message: format!("this node {refused}"),
    })
}

/// Decodes a page of streamed records, each with its size; the keys must lie in
/// `range`, in (token, key) order, after `after` (so every page moves forward).
fn decode_page(
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
