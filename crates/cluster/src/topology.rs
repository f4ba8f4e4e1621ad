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

use ringkv_core::wire::PeerRequest;
use ringkv_core::{MemberState, NodeId};

use crate::membership::Membership;
use crate::node::Node;
use crate::transport::{Spawn, Transport, offload};

mod cleanup;
mod streaming;

use streaming::Direction;

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

    /// Brings a `Joining` node in: streams every range it will replicate from the
    /// current replicas, then makes it `Joined` (reads reach it, writes still reach
    /// the previous owners too) and, once every member knows, `Normal`. Resumes
    /// a `Joined` node at that last step. Returns once done (retrying failed
    /// pieces as long as it takes).
    pub async fn join(&self) {
        if self.membership.my_state() == MemberState::Joining {
            self.move_ranges(
                Phase::Joining,
                "joining",
                Direction::Pull,
                MemberState::Joined,
            )
            .await;
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
        self.become_state(MemberState::Normal).await;
        self.finish(Phase::Joined);
        self.announce("normal").await;
    }

    /// The first phase of a change: tells every member this node is `announced`,
    /// waits one request timeout (writes placed before the news land first), moves
    /// its pieces (pulled for a join, pushed for a decommission, computed now,
    /// from the rings every member agrees on), then becomes `moved`.
    async fn move_ranges(
        &self,
        phase: Phase,
        announced: &str,
        direction: Direction,
        moved: MemberState,
    ) {
        self.start(phase);
        self.announce_to_all(announced).await;
        self.spawner.sleep(self.settings.request_timeout).await;
        self.streaming_starts();
        let me = self.membership.me();
        let pieces = match direction {
            Direction::Pull => self.join_pieces(me),
            Direction::Push => self.leave_pieces(me),
        };
        self.stream(pieces, direction).await;
        self.become_state(moved).await;
    }

    /// Records `state` durably, then takes it (a step is never taken unrecorded).
    async fn become_state(&self, state: MemberState) {
        self.save(state).await;
        self.membership.set_my_state(state);
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
        if matches!(
            self.membership.my_state(),
            MemberState::Normal | MemberState::Leaving
        ) {
            self.become_state(MemberState::Leaving).await;
            self.move_ranges(
                Phase::Leaving,
                "leaving",
                Direction::Push,
                MemberState::Drained,
            )
            .await;
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
        self.become_state(MemberState::Left).await;
        // Done only once every member knows: a node that missed it would keep
        // writing to this one after it stops.
        self.announce_to_all("left").await;
        // And once the hints it holds are handed to their keys' replicas
        // (`Handoff` redirects them all once this node left): they may be the
        // only copy of an acknowledged write beyond its other replicas.
        self.drain_hints().await;
        self.finish(Phase::Left);
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
