//! The shared heart of a run: virtual time, the event queue (timers, message
//! deliveries, faults), the inbox of spawned tasks, the network's state and the
//! trace. Cluster code reaches it through the `Transport` and `Spawn` impls, which
//! must be `Send + Sync`, hence the mutexes; only one thread ever takes them.
//!
//! Lock discipline: nothing is polled, woken or dropped while `core` is held.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};

use ringkv_cluster::BoxFuture;
use ringkv_core::{Dot, Sibling};
use xxhash_rust::xxh3::Xxh3;

use crate::exec::{Owner, ReadyQueue, lock};
use crate::net::SimNode;
use crate::rng::Rng;

/// Work for the world loop at a point of virtual time.
pub enum Event {
    Run(Box<dyn FnOnce() + Send>),
    Fault(Fault),
}

/// What the nemesis does to the cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// Power cut: unsynced writes are lost, in-flight work dies.
    Crash(usize),
    /// Start again over the same storage under a new actor id.
    Restart(usize),
    /// Cut the nodes in the list off from the others, both ways. Replaces the
    /// partition in force, if any, so a partition moves without healing first.
    Partition(Vec<usize>),
    /// The nodes in the list can no longer reach the others, which still reach
    /// them: requests go one way and their answers are lost (a half-broken link).
    /// Replaces the partition in force, if any.
    OneWay(Vec<usize>),
    /// Remove every partition.
    Heal,
    /// Node `node`'s wall clock jumps by `by_ms` (either way; NTP stepping it, a VM
    /// resumed). Its HLC must still never go backwards.
    ClockJump { node: usize, by_ms: i64 },
    /// Every node crashes at once (a data-centre power cut) and restarts shortly
    /// after: only what was durable anywhere survives.
    PowerCut,
    /// Node `usize` crashes and its disk is replaced by an empty one: it restarts
    /// with nothing, and anti-entropy must refill it.
    DiskLoss(usize),
    /// A spare node joins the cluster (takes tokens, streams, then serves).
    Join(usize),
    /// A member streams its ranges away and leaves the ring, then stops for good.
    Decommission(usize),
    /// A member dies for good and another node removes it from the ring; the
    /// others refill its ranges (anti-entropy). Its disk is as good as lost.
    Remove(usize),
}

/// Where a node slot is in the cluster's life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Slot {
    /// Not part of the cluster yet (may join).
    Spare,
    /// Taking its tokens and streaming (restarts join again).
    Joining,
    /// A member of the ring.
    Member,
    /// Decommissioning (a restart makes it a plain member again).
    Leaving,
    /// Left or removed: stopped for good.
    Gone,
}

/// A known bug planted in the simulated node, so tests can show that the checkers
/// catch it (checkers that cannot fail are worthless).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Canary {
    #[default]
    None,
    /// A replica answers `Sync`/`Replicate` before its disk flush.
    AckBeforeDurable,
    /// A replica acks `Replicate` without applying the record.
    AckWithoutApplying,
    /// A node restarted after a crash keeps its actor id, so it may issue a dot
    /// it issued before (what `server::identity` prevents).
    ReuseActorAfterCrash,
    /// A replica applies an `Update` as if it were blind (it drops the version the
    /// client sent) yet answers with the version the client expects: values the
    /// write superseded stay as siblings of it.
    IgnoreWriteContext,
    /// A replica answers an `Update` with a version of only the write's new dot,
    /// forgetting the version the client sent: a client that writes back with it
    /// no longer supersedes what it had read.
    ForgetSentVersion,
    /// Hinted handoff forgets each hint before its target acknowledged it (and does
    /// not wait for the answer): a hint lost on the way is gone.
    ForgetHintsBeforeAck,
    /// Anti-entropy skips a range: replicas answer `TreeRoots` with no tree for
    /// every arc that starts in the upper half of the ring.
    AntiEntropySkipsRange,
    /// A joining node serves its ranges at once, without streaming them first.
    JoinWithoutStreaming,
    /// Tombstone GC forgets every tombstone-only record at once, without waiting
    /// for anti-entropy to confirm the other replicas hold it, or for any floor:
    /// a replica that missed the delete brings the value back.
    CollectTombstonesAtOnce,
    /// A replica applies a CRDT operation to an empty state, superseding what it
    /// held (a write without the read-modify-write): counts and adds that only the
    /// superseded states held are lost.
    CrdtOnEmptyState,
}

/// The network's knobs and who can talk to whom.
pub struct Net {
    pub drop_per_mille: u32,
    /// Requests delivered twice, each copy on its own delay, in ‰ (only requests a
    /// replica may see twice; see `net::may_duplicate`).
    pub duplicate_per_mille: u32,
    /// Messages between distinct nodes that crawl (50–400 ms, past most timeouts), ‰.
    pub slow_per_mille: u32,
    pub min_delay_ms: u64,
    pub max_delay_ms: u64,
    /// Directed (from, to) pairs whose messages are dropped.
    pub blocked: BTreeSet<(usize, usize)>,
    pub up: Vec<bool>,
    /// Bumped on every restart; a message sent to an earlier incarnation is lost.
    pub incarnation: Vec<u64>,
}

/// The trace: always hashed (the fingerprint), kept as text only when asked.
pub struct Trace {
    hasher: Xxh3,
    lines: Option<Vec<String>>,
    pub count: u64,
}

impl Trace {
    pub fn new(keep: bool) -> Trace {
        Trace {
            hasher: Xxh3::new(),
            lines: keep.then(Vec::new),
            count: 0,
        }
    }

    pub fn log(&mut self, now: u64, line: &str) {
        let mut text = String::with_capacity(line.len() + 12);
        let _ = write!(text, "{now:>7} {line}");
        self.hasher.update(text.as_bytes());
        self.hasher.update(b"\n");
        self.count += 1;
        if let Some(lines) = &mut self.lines {
            lines.push(text);
        }
    }

    pub fn absorb(&mut self, bytes: &[u8]) {
        self.hasher.update(bytes);
    }

    pub fn fingerprint(&self) -> u64 {
        self.hasher.digest()
    }

    pub fn take_lines(&mut self) -> Vec<String> {
        self.lines.take().unwrap_or_default()
    }
}

pub struct Core {
    pub now: u64,
    seq: u64,
    pub rng: Rng,
    pub events: BTreeMap<(u64, u64), Event>,
    pub inbox: Vec<(u64, Owner, BoxFuture<()>)>,
    next_task: u64,
    pub net: Net,
    pub trace: Trace,
    pub canary: Canary,
    /// Chance (‰) that a node crashes right after it sends an `Ack`.
    pub crash_after_ack_per_mille: u32,
    /// Chance (‰) that a coordinator crashes right after it acks a client write.
    pub crash_coordinator_per_mille: u32,
    /// Most nodes down at once (for crashes the nemesis decides on the spot).
    pub max_down: usize,
    /// Every write a replica applied, in order: the simulator's ground truth for the
    /// checkers (which dot each write got, what it superseded).
    pub applied: Vec<Applied>,
    /// Every hint a node stored durably (acked `Hint`), minus those a lost disk
    /// took with it.
    pub hints: Vec<HintStored>,
    /// Client tasks still running.
    pub clients_running: usize,
    /// Whether nodes run anti-entropy rounds (`Config::anti_entropy`).
    pub anti_entropy: bool,
    /// When a node lost its disk (`Fault::DiskLoss`), if one did.
    pub disk_lost_at: Option<u64>,
    /// When background work (gossip, handoff) stops: `None` once the clients are
    /// done (the workload phase), `Some(t)` at virtual time t (after heal).
    pub background_until: Option<u64>,
    /// Tombstone GC of the run (`None`: the purge sweep only purges expired values).
    pub tombstone_gc: Option<ringkv_cluster::tombstone::TombstoneGc>,
    /// Whether nodes store hints (sloppy quorum); `Config::hints`.
    pub hinting: bool,
    /// Every record a node forgot (tombstone GC), in order: the ground truth that
    /// tells a forgotten delete from a lost write.
    pub forgotten: Vec<Forgotten>,
    /// The highest wall-clock reading of any node so far, as (virtual ms, wall ms)
    /// steps: a version expired by any clock may have been purged everywhere since.
    pub wall_high: Vec<(u64, u64)>,
    /// Each node slot's place in the cluster.
    pub slots: Vec<Slot>,
    /// Whether a join, decommission or removal happened (nodes may then hold
    /// copies of ranges they no longer replicate).
    pub topology_changed: bool,
}

/// How long background work goes on after a ring change that ends after heal:
/// anti-entropy needs rounds over the new arcs before the checks.
pub const SETTLE_AFTER_CHANGE_MS: u64 = 3_000;

impl Core {
    /// A join or decommission just ended: if the run is past heal, background
    /// work goes on for `SETTLE_AFTER_CHANGE_MS` more.
    pub fn settle_after_change(&mut self) {
        if let Some(until) = self.background_until {
            self.background_until = Some(until.max(self.now + SETTLE_AFTER_CHANGE_MS));
        }
    }

    /// Whether a join or decommission is under way.
    pub fn topology_busy(&self) -> bool {
        self.slots
            .iter()
            .any(|slot| matches!(slot, Slot::Joining | Slot::Leaving))
    }
}

impl Core {
    /// Whether the nodes' background loops should stop.
    pub fn background_over(&self) -> bool {
        match self.background_until {
            None => self.clients_running == 0,
            Some(until) => self.now >= until,
        }
    }
}

/// A record a node forgot (tombstone GC), seen by its disk.
#[derive(Debug, Clone)]
pub struct Forgotten {
    pub node: usize,
    pub key: bytes::Bytes,
    pub record: ringkv_core::Record,
    /// Virtual ms.
    pub at: u64,
}

/// A hint as a node stored it.
#[derive(Debug, Clone)]
pub struct HintStored {
    pub holder: usize,
    pub target: usize,
    pub key: bytes::Bytes,
    pub record: ringkv_core::Record,
}

/// One write as a replica applied it (an `Update` answered with `Updated`), seen by
/// the simulator from outside the node.
#[derive(Debug, Clone)]
pub struct Applied {
    /// The key's bytes.
    pub key: bytes::Bytes,
    pub node: usize,
    /// Virtual ms.
    pub at: u64,
    /// The write's new dot: the replica's actor with the highest counter of it in
    /// `version`.
    pub dot: Dot,
    /// The version the client sent.
    pub seen: ringkv_core::Context,
    /// The version the replica answered: everything the write superseded plus its
    /// dot (under LWW that includes all the replica held).
    pub version: ringkv_core::Context,
    /// The version as stored: HLC timestamp, expiry, body.
    pub sibling: Sibling,
}

/// Shared by every node's transport and spawner and by the world loop.
pub struct Sim {
    pub core: Mutex<Core>,
    pub ready: ReadyQueue,
    /// The running incarnation of each node (`None` while crashed).
    pub nodes: Mutex<Vec<Option<Arc<SimNode>>>>,
}

impl Sim {
    pub fn new(seed: u64, nodes: usize, keep_trace: bool) -> Sim {
        Sim {
            core: Mutex::new(Core {
                now: 0,
                seq: 0,
                rng: Rng::new(seed),
                events: BTreeMap::new(),
                inbox: Vec::new(),
                next_task: 0,
                net: Net {
                    drop_per_mille: 0,
                    duplicate_per_mille: 0,
                    slow_per_mille: 0,
                    min_delay_ms: 1,
                    max_delay_ms: 10,
                    blocked: BTreeSet::new(),
                    up: vec![true; nodes],
                    incarnation: vec![0; nodes],
                },
                trace: Trace::new(keep_trace),
                canary: Canary::None,
                crash_after_ack_per_mille: 0,
                crash_coordinator_per_mille: 0,
                max_down: 0,
                applied: Vec::new(),
                hints: Vec::new(),
                clients_running: 0,
                anti_entropy: true,
                disk_lost_at: None,
                background_until: None,
                slots: vec![Slot::Member; nodes],
                topology_changed: false,
                tombstone_gc: None,
                hinting: true,
                forgotten: Vec::new(),
                wall_high: Vec::new(),
            }),
            ready: ReadyQueue::default(),
            nodes: Mutex::new(vec![None; nodes]),
        }
    }

    pub fn now(&self) -> u64 {
        lock(&self.core).now
    }

    pub fn log(&self, line: &str) {
        let mut core = lock(&self.core);
        let now = core.now;
        core.trace.log(now, line);
    }

    /// Draws from the run's RNG.
    pub fn random<T>(&self, draw: impl FnOnce(&mut Rng) -> T) -> T {
        draw(&mut lock(&self.core).rng)
    }

    pub fn schedule(&self, at: u64, event: Event) {
        lock(&self.core).schedule(at, event);
    }

    /// Adds a task; it runs once the world loop drains the inbox.
    pub fn spawn(&self, owner: Owner, task: BoxFuture<()>) {
        let id = {
            let mut core = lock(&self.core);
            let id = core.next_task;
            core.next_task += 1;
            core.inbox.push((id, owner, task));
            id
        };
        lock(&self.ready).push_back(id);
    }

    pub fn node(&self, index: usize) -> Option<Arc<SimNode>> {
        lock(&self.nodes).get(index).cloned().flatten()
    }

    /// Resolves once virtual time reaches `at`.
    pub fn sleep_until(self: &Arc<Self>, at: u64) -> Sleep {
        Sleep {
            sim: self.clone(),
            at,
            armed: None,
        }
    }

    pub fn sleep(self: &Arc<Self>, ms: u64) -> Sleep {
        let at = self.now() + ms;
        self.sleep_until(at)
    }
}

impl Core {
    /// Notes the nodes' wall clocks at virtual time `now` (`wall_high`).
    pub fn note_walls(&mut self, now: u64, walls: impl IntoIterator<Item = u64>) {
        let top = walls.into_iter().max().unwrap_or(0);
        if self.wall_high.last().is_none_or(|(_, high)| top > *high) {
            self.wall_high.push((now, top));
        }
    }

    pub fn schedule(&mut self, at: u64, event: Event) {
        self.seq += 1;
        self.events.insert((at.max(self.now), self.seq), event);
    }

    /// Whether the node that just sent an `Ack` crashes now (draws from the RNG
    /// only when such crashes are on, so calm runs keep their sequence).
    pub fn crash_after_ack(&mut self) -> bool {
        self.crash_now(self.crash_after_ack_per_mille)
    }

    /// Whether a node crashes now, with chance `per_mille`, if `max_down` allows.
    pub fn crash_now(&mut self, per_mille: u32) -> bool {
        if per_mille == 0 {
            return false;
        }
        let down = self.net.up.iter().filter(|up| !**up).count();
        let pending = self
            .events
            .values()
            .filter(|e| matches!(e, Event::Fault(Fault::Crash(_))))
            .count();
        down + pending < self.max_down && self.rng.chance(per_mille)
    }

    /// When a message sent now from `from` to `to` arrives, or `None` if the
    /// network loses it.
    pub fn route(&mut self, from: usize, to: usize) -> Option<u64> {
        if self.net.blocked.contains(&(from, to)) {
            return None;
        }
        // Calls to self never leave the process.
        if from != to && self.rng.chance(self.net.drop_per_mille) {
            return None;
        }
        // Calls to self run in-process in production: next to no delay.
        let delay = if from == to {
            self.rng.range(0, 1)
        } else if self.rng.chance(self.net.slow_per_mille) {
            self.rng.range(50, 400)
        } else {
            self.rng.range(self.net.min_delay_ms, self.net.max_delay_ms)
        };
        Some(self.now + delay)
    }
}

/// A timer on virtual time.
pub struct Sleep {
    sim: Arc<Sim>,
    at: u64,
    /// The waker the timer wakes, once armed: the latest poller's. A future may be
    /// polled by one task and then handed to another (a coordinator's calls still
    /// running go to background work), which must get the timeout, as with tokio.
    armed: Option<Arc<Mutex<Waker>>>,
}

impl Future for Sleep {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let mut core = lock(&self.sim.core);
        if core.now >= self.at {
            return Poll::Ready(());
        }
        match &self.armed {
            Some(waker) => lock(waker).clone_from(cx.waker()),
            None => {
                let waker = Arc::new(Mutex::new(cx.waker().clone()));
                let timer = waker.clone();
                core.schedule(
                    self.at,
                    Event::Run(Box::new(move || lock(&timer).wake_by_ref())),
                );
                drop(core);
                self.armed = Some(waker);
            }
        }
        Poll::Pending
    }
}
