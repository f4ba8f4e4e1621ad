//! Deterministic simulation of whole ringkv clusters (DESIGN.md §8, issue 5).
//!
//! Why: distributed bugs hide in interleavings that process tests rarely hit. Here
//! whole clusters run in one thread on virtual time, driving the very `cluster` code
//! production runs through its `Transport`, `Spawn`, `Clock` and `Engine` seams, with
//! faults (lost, delayed and duplicated messages, crashes that lose unsynced writes,
//! restarts under a new actor, partitions both ways or one way that move during the
//! run, skewed clocks that jump) all decided by one seeded RNG, under either conflict
//! policy and with TTLs. Every node runs the purge sweep (expired values become
//! tombstones); one seed in four also runs tombstone GC with thresholds of a second
//! (`gc_for`). One `u64` seed is one run, byte for byte: `RINGKV_SIM_SEED=<seed>`
//! replays it.
//!
//! * `rng`: SplitMix64, the only randomness.
//! * `exec`: task owners, wakers, a one-shot channel (our executor's parts).
//! * `sim`: virtual time, the event queue, the network state, the trace, the
//!   ground truth of applied writes.
//! * `disk`: a memory engine whose fsync takes virtual time.
//! * `net`: the simulated `Transport`/`Spawn` and the peer-request dispatch.
//! * `world`: nodes over memory engines, the run loop, crash/restart/partition.
//! * `workload`: clients and the nemesis; the history.
//! * `crdt`: CRDT clients (counters, OR-sets) on their own keys, and their history.
//! * `check`: the invariants checked after heal and quiesce.
//! * `run`: one run, phase by phase (workload, heal, settle, final reads, checks);
//!   this file keeps what shapes runs (`Config`, the per-seed choices) and `Report`.

pub mod check;
pub mod crdt;
pub mod disk;
pub mod exec;
pub mod net;
pub mod rng;
mod run;
pub mod sim;
pub mod workload;
pub mod world;

use std::time::Duration;

use ringkv_cluster::tombstone::TombstoneGc;
use ringkv_core::ConflictPolicy;

pub use crate::sim::Canary;
use crate::workload::{Entry, Outcome, Workload};

pub use run::run;

/// Everything that shapes a run besides the seed's randomness.
#[derive(Debug, Clone)]
pub struct Config {
    pub seed: u64,
    pub nodes: usize,
    pub keys: usize,
    pub workload: Workload,
    pub conflict_policy: ConflictPolicy,
    /// Message loss between distinct nodes, in ‰.
    pub drop_per_mille: u32,
    /// Requests a replica may see twice that the network delivers twice, in ‰.
    pub duplicate_per_mille: u32,
    /// Messages that take 50–400 ms (past the request timeout), in ‰.
    pub slow_per_mille: u32,
    pub max_skew_ms: u64,
    pub request_timeout_ms: u64,
    /// Keep the trace as text (replays), not only its hash.
    pub keep_trace: bool,
    /// Chance (‰) that a node crashes right after it acks (when `crashes`).
    pub crash_after_ack_per_mille: u32,
    /// Chance (‰) that a coordinator crashes right after acking a client write.
    pub crash_coordinator_per_mille: u32,
    /// A planted bug (tests of the checkers); `Canary::None` in campaigns.
    pub canary: Canary,
    /// Whether nodes run anti-entropy. Off only to show a checker catching a bug
    /// that anti-entropy would otherwise repair (handoff, replication canaries).
    pub anti_entropy: bool,
    /// Tombstone GC (`None`: the purge sweep only turns expired values into
    /// tombstones, and keeps them).
    pub tombstone_gc: Option<TombstoneGc>,
    /// Whether nodes store hints (sloppy quorum). Off with tombstone GC: hints never
    /// expire here, and GC by acknowledgement counts on hints of an old value being
    /// gone once its floor (`hint_ttl_ms` + …) passed.
    pub hints: bool,
}

impl Config {
    /// A run with every fault the simulator knows, under the conflict policy
    /// `policy_for(seed)`; with tombstone GC when `gc_for(seed)` (then without clock
    /// jumps and hints, which its floors assume are far shorter than they are here).
    pub fn faulty(seed: u64, nodes: usize) -> Config {
        let gc = gc_for(seed);
        Config {
            seed,
            nodes,
            // With GC: more keys (each changes less often, so arcs go quiet long
            // enough to be confirmed) and a longer workload (so tombstones are
            // forgotten while faults still happen, not only after heal).
            keys: if gc { 64 } else { 5 },
            workload: Workload {
                clients: 4,
                crdt_clients: 2,
                ops_per_client: if gc { 100 } else { 40 },
                replication_factor: 3,
                crashes: true,
                partitions: true,
                clock_jumps: !gc,
                max_clock_jump_ms: 3_000,
                ttl_per_mille: 150,
                max_down: 2,
                disk_loss: disk_loss_for(seed),
                topology: topology_for(seed),
            },
            conflict_policy: policy_for(seed),
            drop_per_mille: 50,
            duplicate_per_mille: 30,
            slow_per_mille: 20,
            max_skew_ms: 200,
            request_timeout_ms: 100,
            keep_trace: false,
            crash_after_ack_per_mille: 5,
            crash_coordinator_per_mille: 20,
            canary: Canary::None,
            anti_entropy: true,
            tombstone_gc: gc.then_some(SHORT_GC),
            hints: !gc,
        }
    }

    /// The same run without faults: nothing may fail.
    pub fn calm(seed: u64, nodes: usize) -> Config {
        let mut config = Config::faulty(seed, nodes);
        config.workload.crashes = false;
        config.workload.partitions = false;
        config.workload.disk_loss = false;
        config.workload.topology = false;
        config.workload.clock_jumps = false;
        // The key-value workload alone: with W = N, a 7-node run's detector can
        // suspect a live replica for a moment (its gossip is late) and give it a
        // quarter of the timeout, and the CRDT clients' extra fsyncs made such a
        // replica miss it (seed 4). Faults are what the CRDT clients are here for.
        config.workload.crdt_clients = 0;
        config.drop_per_mille = 0;
        config.duplicate_per_mille = 0;
        config.slow_per_mille = 0;
        config
    }
}

/// What a run found.
#[derive(Debug, Clone)]
pub struct Report {
    pub seed: u64,
    pub policy: ConflictPolicy,
    /// Hash of the trace and the final state of every engine: equal for replays.
    pub fingerprint: u64,
    pub violations: Vec<String>,
    /// The trace as text, when `keep_trace`.
    pub trace: Vec<String>,
    pub history: Vec<Entry>,
    /// Virtual time at the end, ms.
    pub virtual_ms: u64,
    pub steps: u64,
    /// Records the nodes forgot (tombstone GC), and how many of them before heal,
    /// while faults still happened.
    pub forgotten: usize,
    pub forgotten_under_faults: usize,
    /// CRDT operations acknowledged.
    pub crdt_acked: usize,
}

impl Report {
    pub fn acked_writes(&self) -> usize {
        self.history
            .iter()
            .filter(|e| matches!(e.outcome, Outcome::Written(_)))
            .count()
    }

    pub fn failed(&self) -> usize {
        self.history
            .iter()
            .filter(|e| matches!(e.outcome, Outcome::Failed(_)))
            .count()
    }
}

/// The cluster size a campaign uses for `seed` when none is given: 3..=7.
pub fn nodes_for(seed: u64) -> usize {
    3 + usize::try_from(seed % 5).unwrap_or(0)
}

/// Whether a node may lose its disk in seed `seed`'s run: one seed in four.
pub fn disk_loss_for(seed: u64) -> bool {
    seed % 4 == 1
}

/// Whether seed `seed`'s run changes the ring (joins, decommissions, removals):
/// every other seed (independent of `disk_loss_for`, `policy_for`, `gc_for` and the
/// size). Seeds 11006321 and 11008481 of the first runs that combined ring changes
/// with tombstone GC showed the view-lag window the two-phase changes close
/// (`MemberState::Joined`): a node cut off while a join ended read the old
/// replicas while the others wrote W of the new ones only.
pub fn topology_for(seed: u64) -> bool {
    (seed / 5).is_multiple_of(2)
}

/// Whether seed `seed`'s run has tombstone GC: one seed in four (residues 1 and 6
/// of 8, so half of them may also lose a disk; independent of `nodes_for` and
/// `policy_for`).
pub fn gc_for(seed: u64) -> bool {
    matches!(seed % 8, 1 | 6)
}

/// Tombstone GC of the runs that have it. A message here lives at most 500 ms from
/// the state it carries (a replica's answer within the 100 ms timeout, then the
/// replication or read repair built from it, up to 400 ms on the way), and those
/// runs have neither hints nor clock jumps (skew stays within ±200 ms): 600 ms of
/// settle time and floor cover them, tightly, so a flaw in the rule shows. The
/// grace must outlast the longest a replica can miss a delete (a partition until
/// heal, then anti-entropy): rule (b) is unsafe below that by design.
pub const SHORT_GC: TombstoneGc = TombstoneGc {
    grace: Duration::from_secs(10),
    floor: Duration::from_millis(600),
    settle: Duration::from_millis(600),
};

/// The `CollectTombstonesAtOnce` canary's GC: no grace, no floor, no settling.
pub(crate) const GC_AT_ONCE: TombstoneGc = TombstoneGc {
    grace: Duration::ZERO,
    floor: Duration::ZERO,
    settle: Duration::ZERO,
};

/// The conflict policy of seed `seed`: one seed in three runs `lww` (independent of
/// `nodes_for`, so every size meets both).
pub fn policy_for(seed: u64) -> ConflictPolicy {
    if seed % 3 == 2 {
        ConflictPolicy::Lww
    } else {
        ConflictPolicy::Siblings
    }
}
