//! Tombstone GC (DESIGN.md §4, issue 7): when a record that holds only tombstones
//! (deletes, and expired versions purged into tombstones) may be forgotten.
//!
//! A tombstone exists so that an older version of its key, still held by some
//! replica, a hint or a message in flight, cannot come back: merged with the
//! tombstone it is superseded; merged into nothing it is a resurrection. So a
//! record may be forgotten once no older version can reach this node any more.
//! Two ways to know (`Collector::reason`):
//!
//! (a) **By acknowledgement.** Anti-entropy compares this node's Merkle root of an
//! arc with each peer's; equal roots mean the peer held exactly what this node held
//! at the moment the root was read (a stamp of the node's `ArcChanges`). The peer
//! answers `TreeRoots` only once what it showed is durable, so a crash cannot take
//! it back. If for every other replica of the arc such a confirmation is newer than
//! the arc's last change here, every replica holds the tombstone too, and records
//! only grow by merges: no replica can hand the old version back. What remains are
//! copies outside the replicas' records, and the rule waits them out:
//! * messages (a replication, a read repair, a duplicate) built from a replica's
//!   state before it had the tombstone: each confirmation must be `settle`
//!   (2 × `request_timeout_ms`) old, so everything the peer sent before is delivered
//!   or dropped;
//! * hints of the old version on fallback nodes: the tombstone must be `floor`
//!   (`hint_ttl_ms` + 2 × `request_timeout_ms`: a hint read just before it expires is
//!   still delivered within a timeout) older, by the wall clock, than now.
//!
//! (b) **By grace.** A tombstone older than `grace` (`tombstone_gc_grace_ms`, 10
//! days) is forgotten whatever anti-entropy knows. This is Cassandra's
//! `gc_grace_seconds` and carries its risk: a replica that did not get the delete
//! within the grace (down, or cut off but alive, for that long) still holds the
//! old version, and anti-entropy spreads it back. A node refuses to start after
//! being down longer than the grace (`server::alive`); one partitioned but running
//! that long is not caught. Both rules also assume wall clocks agree far better
//! than the floor and the grace.
//!
//! The floor and the grace are wall-clock ages of the newest tombstone (its HLC);
//! the settle time is measured on this node's monotonic clock.
//!
//! Limits: confirmations are kept per (arc, peer), one each.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use ringkv_core::{Key, NodeId, Record, Token, TokenRange};

use crate::node::{Node, NodeError};

/// The thresholds of tombstone GC (from the configuration; see the module doc).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TombstoneGc {
    /// Tombstones this old (wall clock, by their newest HLC) are forgotten whatever
    /// anti-entropy knows (`tombstone_gc_grace_ms`).
    pub grace: Duration,
    /// GC by acknowledgement: how old the newest tombstone must be, at least
    /// (`hint_ttl_ms` + 2 × `request_timeout_ms`).
    pub floor: Duration,
    /// GC by acknowledgement: how old each confirmation must be, at least, on the
    /// monotonic clock (2 × `request_timeout_ms`).
    pub settle: Duration,
}

impl TombstoneGc {
    /// The thresholds for a node with these settings.
    pub fn from_settings(grace: Duration, hint_ttl: Duration, request_timeout: Duration) -> Self {
        let settle = request_timeout.saturating_mul(2);
        TombstoneGc {
            grace,
            floor: hint_ttl.saturating_add(settle),
            settle,
        }
    }
}

/// Why a record was forgotten.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum GcReason {
    /// Every replica confirmed holding it (rule (a)).
    Ack,
    /// Older than the grace (rule (b)).
    Grace,
}

impl GcReason {
    /// The `reason` label of `ringkv_tombstones_purged_total`.
    pub fn as_str(self) -> &'static str {
        match self {
            GcReason::Ack => "ack",
            GcReason::Grace => "grace",
        }
    }
}

/// Records forgotten so far, by reason.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Collected {
    pub ack: u64,
    pub grace: u64,
}

/// A peer held what this node held at `stamp`; found at `at_ms` (monotonic).
#[derive(Debug, Clone, Copy)]
struct Confirmation {
    range: TokenRange,
    stamp: u64,
    at_ms: u64,
}

#[derive(Default)]
struct State {
    /// The arcs this node replicates as anti-entropy last saw the ring, by start:
    /// the arc and its other replicas.
    arcs: BTreeMap<Token, (TokenRange, Vec<NodeId>)>,
    /// Per (arc start, peer): the oldest confirmation still newer than the arc's last
    /// change (older is better: it has settled sooner).
    confirmed: BTreeMap<(Token, NodeId), Confirmation>,
    collected: Collected,
}

/// Decides which tombstone-only records a node may forget and forgets them;
/// anti-entropy feeds it the confirmations. Shared by the purge sweep and
/// anti-entropy (which forgets instead of pushing a collectable record back to a
/// peer that already forgot it).
pub struct Collector {
    node: Arc<Node>,
    gc: TombstoneGc,
    state: Mutex<State>,
}

impl Collector {
    pub fn new(node: Arc<Node>, gc: TombstoneGc) -> Collector {
        Collector {
            node,
            gc,
            state: Mutex::new(State::default()),
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub fn settings(&self) -> TombstoneGc {
        self.gc
    }

    /// What this node forgot so far.
    pub fn collected(&self) -> Collected {
        self.state().collected
    }

    /// The arcs this node replicates now (`Ring::arcs`); confirmations of arcs that
    /// are gone are dropped.
    pub fn set_arcs(&self, me: NodeId, arcs: &[(TokenRange, Vec<NodeId>)]) {
        let arcs: BTreeMap<Token, (TokenRange, Vec<NodeId>)> = arcs
            .iter()
            .map(|(arc, replicas)| {
                let others = replicas.iter().copied().filter(|id| *id != me).collect();
                (arc.start, (*arc, others))
            })
            .collect();
        let mut state = self.state();
        state.confirmed.retain(|(start, peer), confirmation| {
            arcs.get(start)
                .is_some_and(|(arc, others)| *arc == confirmation.range && others.contains(peer))
        });
        state.arcs = arcs;
    }

    /// Anti-entropy found `peer`'s root of `arc` equal to this node's root read at
    /// `stamp` (`Node::tree_roots_stamped`), at monotonic `at_ms`.
    pub fn confirm(&self, arc: TokenRange, peer: NodeId, stamp: u64, at_ms: u64) {
        let changed = match self.node.arc_of(arc.start) {
            Some((range, changed)) if range == arc => changed,
            _ => return,
        };
        if stamp < changed {
            return; // Already out of date.
        }
        let mut state = self.state();
        let entry = state.confirmed.entry((arc.start, peer));
        let fresh = Confirmation {
            range: arc,
            stamp,
            at_ms,
        };
        entry
            .and_modify(|held| {
                if held.range != arc || held.stamp < changed {
                    *held = fresh;
                }
            })
            .or_insert(fresh);
    }

    /// Whether every other replica of `arc` confirmed, at least `settle` ago, holding
    /// what this node holds in it (its last change here has stamp `changed`).
    fn confirmed(&self, arc: TokenRange, changed: u64, now_ms: u64) -> bool {
        let settle_ms = millis(self.gc.settle);
        let state = self.state();
        let Some((range, others)) = state.arcs.get(&arc.start) else {
            return false;
        };
        *range == arc
            && others.iter().all(|peer| {
                state
                    .confirmed
                    .get(&(arc.start, *peer))
                    .is_some_and(|held| {
                        held.range == arc
                            && held.stamp >= changed
                            && held.at_ms.saturating_add(settle_ms) <= now_ms
                    })
            })
    }

    /// Whether this node may forget `record` of `key` now, and why (see the module
    /// doc); `None` unless it holds only tombstones.
    pub fn reason(&self, key: &Key, record: &Record) -> Option<GcReason> {
        if !record.only_tombstones() {
            return None;
        }
        let newest = record.max_hlc()?.wall_ms();
        let age_ms = self.node.now_ms().saturating_sub(newest);
        if age_ms >= millis(self.gc.grace) {
            return Some(GcReason::Grace);
        }
        if age_ms < millis(self.gc.floor) {
            return None;
        }
        let (arc, changed) = self.node.arc_of(key.token())?;
        self.confirmed(arc, changed, self.node.monotonic_ms())
            .then_some(GcReason::Ack)
    }

    /// Forgets each record still stored as given (`Node::forget`), counting it under
    /// its reason; returns how many went, by reason.
    ///
    /// # Errors
    /// Storage errors (what went before is counted).
    pub fn forget(&self, records: Vec<(Key, Record, GcReason)>) -> Result<Collected, NodeError> {
        let (records, reasons): (Vec<(Key, Record)>, Vec<GcReason>) = records
            .into_iter()
            .map(|(key, record, reason)| ((key, record), reason))
            .unzip();
        let removed = self.node.forget(&records)?;
        let mut collected = Collected::default();
        for (gone, reason) in removed.into_iter().zip(reasons) {
            if !gone {
                continue;
            }
            match reason {
                GcReason::Ack => collected.ack += 1,
                GcReason::Grace => collected.grace += 1,
            }
            metrics::counter!("ringkv_tombstones_purged_total", "reason" => reason.as_str())
                .increment(1);
        }
        let mut state = self.state();
        state.collected.ack += collected.ack;
        state.collected.grace += collected.grace;
        Ok(collected)
    }
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}
