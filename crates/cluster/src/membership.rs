//! The membership table and the failure detector (DESIGN.md §6).
//!
//! Table: every node this node knows of, and the ring computed from it. Every
//! `gossip_interval_ms` a node bumps its own heartbeat and exchanges tables
//! (`PeerRequest::Members`, push and pull) with one random live peer, now and then
//! with a down one too (so it notices the return), and with seeds at start; tables
//! merge member by member, newer `(generation, heartbeat, state)` winning, so every
//! node converges on the same table and computes the same ring.
//!
//! Detector: each node's *local* view of each peer, from the time since the peer's
//! heartbeat last moved (as seen here, on this node's monotonic clock): HEALTHY →
//! SUSPICIOUS (`suspicion_threshold_ms`) → DOWN (`down_threshold_ms`) →
//! PERMANENTLY_FAILED (`permanent_failure_threshold_ms`), back to HEALTHY as soon as
//! the heartbeat moves again (a restart's new generation included). `tick` logs and
//! counts the transitions; coordinators read `liveness` on every request.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError, RwLock};

use ringkv_core::ring::Ring;
use ringkv_core::{Member, MemberState, NodeId};

use crate::Clock;
use crate::transport::Peer;

/// Most members a table may hold; news beyond it is dropped (and logged).
pub const MAX_MEMBERS: usize = 1024;
/// Most tokens one member may claim.
pub const MAX_TOKENS_PER_MEMBER: usize = 4096;
/// How far a removal moves the removed member's generation ahead.
pub const REMOVAL_GENERATION_LEAP: u64 = 1_000;

mod detector;
mod gossip;
pub use detector::{Detector, Liveness};

/// What the detector remembers of one peer.
#[derive(Debug, Clone, Copy)]
struct Seen {
    /// The newest `(generation, heartbeat)` heard of.
    beat: (u64, u64),
    /// When (this node's monotonic ms) `beat` last moved.
    moved_ms: u64,
    /// The liveness last logged (`tick`).
    reported: Liveness,
}

struct State {
    members: BTreeMap<NodeId, Member>,
    /// The current ring (normal and leaving members): where reads go.
    ring: Arc<Ring>,
    /// The next ring (normal and joining members) while a join or leave is under
    /// way: writes go to its replicas too.
    next: Option<Arc<Ring>>,
    seen: BTreeMap<NodeId, Seen>,
    /// Changes that ended since `take_ended_changes`: (the ring the change left,
    /// the ring it made), oldest first, at most `MAX_ENDED_CHANGES`.
    ended: Vec<(Arc<Ring>, Arc<Ring>)>,
}

/// Most ended changes kept for `Membership::take_ended_changes` (older ones are
/// dropped: their ranges' copies stay, as before cleanup existed).
const MAX_ENDED_CHANGES: usize = 8;

impl State {
    fn recompute_rings(&mut self) {
        let members: Vec<Member> = self.members.values().cloned().collect();
        self.ring = Arc::new(Ring::from_members(&members));
        let before = self.next.take();
        self.next = Ring::next_from_members(&members).map(Arc::new);
        // A change ended: the other ring (the one being left behind) goes.
        if let (Some(old), None) = (before, &self.next) {
            if self.ended.len() == MAX_ENDED_CHANGES {
                self.ended.remove(0);
            }
            self.ended.push((old, self.ring.clone()));
        }
    }
}

/// Why a member could not be removed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RemoveError {
    #[error("no member {0} is known")]
    Unknown(NodeId),
    #[error("node {0} is this node: use decommission to take it out of the ring")]
    Myself(NodeId),
    #[error(
        "node {id} is {liveness} here, not down: use `ringkv node decommission {id}` to take a \
         live node out (it streams its data away first)"
    )]
    Alive { id: NodeId, liveness: &'static str },
}

/// This node's view of the cluster.
pub struct Membership {
    me: NodeId,
    /// The newest news others sent about this node (a previous run of it, seen by
    /// a node that starts over an empty data directory).
    reported_me: Mutex<Option<Member>>,
    state: RwLock<State>,
    clock: Arc<dyn Clock>,
    detector: Detector,
    /// Picks gossip partners (SplitMix64 seeded by the node id: deterministic in
    /// the simulator, different on every node).
    rng: Mutex<u64>,
}

/// One SplitMix64 step.
fn next_random(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Why news about a member was not taken.
fn check(member: &Member) -> Result<(), String> {
    if member.tokens.len() != usize::from(member.vnodes)
        || member.tokens.len() > MAX_TOKENS_PER_MEMBER
    {
        return Err(format!(
            "member {} claims {} tokens for {} vnodes",
            member.id,
            member.tokens.len(),
            member.vnodes
        ));
    }
    if member.peer_addr.is_empty() || member.peer_addr.len() > 256 {
        return Err(format!("member {} has no usable peer address", member.id));
    }
    Ok(())
}

impl Membership {
    /// A table holding only this node.
    pub fn new(me: Member, clock: Arc<dyn Clock>, detector: Detector) -> Membership {
        let id = me.id;
        let members = BTreeMap::from([(id, me)]);
        let mut state = State {
            members,
            ring: Arc::new(Ring::default()),
            next: None,
            seen: BTreeMap::new(),
            ended: Vec::new(),
        };
        state.recompute_rings();
        Membership {
            me: id,
            reported_me: Mutex::new(None),
            state: RwLock::new(state),
            clock,
            detector,
            rng: Mutex::new(id.0 ^ 0x5EED_0F60_551F),
        }
    }

    pub fn detector(&self) -> Detector {
        self.detector
    }

    /// The newest entry other nodes hold about this node, if any reached it: what a
    /// node restarting over an empty data directory resumes from (its tokens, and a
    /// generation to outbid).
    pub fn reported_me(&self) -> Option<Member> {
        self.reported_me
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    pub fn me(&self) -> NodeId {
        self.me
    }

    /// The ring as of now (cheap: shared, recomputed only when membership changes).
    pub fn ring(&self) -> Arc<Ring> {
        self.state
            .read()
            .expect("membership lock is never poisoned")
            .ring
            .clone()
    }

    /// The ring once the joins and leaves under way are done, if any are.
    pub fn next_ring(&self) -> Option<Arc<Ring>> {
        self.state
            .read()
            .expect("membership lock is never poisoned")
            .next
            .clone()
    }

    /// The ring changes that ended since the last call, as (ring left behind, ring
    /// made), oldest first: what `Topology::clean_up` drops copies by.
    pub fn take_ended_changes(&self) -> Vec<(Arc<Ring>, Arc<Ring>)> {
        std::mem::take(
            &mut self
                .state
                .write()
                .expect("membership lock is never poisoned")
                .ended,
        )
    }

    /// This node's own state (on every peer request's path: no copy of the entry).
    pub fn my_state(&self) -> MemberState {
        self.state
            .read()
            .expect("membership lock is never poisoned")
            .members
            .get(&self.me)
            .map_or(MemberState::Normal, |me| me.state)
    }

    /// This node's own entry.
    pub fn myself(&self) -> Member {
        self.member(self.me)
            .expect("the table always holds this node's own entry")
    }

    /// Moves this node to `state` (joining → normal, normal → leaving → left), with
    /// a new heartbeat so the news wins every merge; the rings follow.
    pub fn set_my_state(&self, to: MemberState) {
        let mut state = self
            .state
            .write()
            .expect("membership lock is never poisoned");
        if let Some(me) = state.members.get_mut(&self.me) {
            if me.state == to {
                return;
            }
            tracing::info!(
                from = me.state.as_str(),
                to = to.as_str(),
                "this node changes state"
            );
            me.state = to;
            me.heartbeat += 1;
        }
        state.recompute_rings();
    }

    /// Takes a dead member out of the ring for good (`ringkv node remove`, or
    /// automatically once it is permanently failed): its entry becomes `Left` at
    /// its last (generation, heartbeat), which wins every merge until the node
    /// itself comes back with a newer heartbeat (it then learns it was removed and
    /// leaves, see `merge`). The next owners of its ranges get their data from the
    /// surviving replicas through anti-entropy.
    ///
    /// # Errors
    /// An unknown member, this node, or one not detected down (`force` skips that
    /// check).
    pub fn remove(&self, id: NodeId, force: bool) -> Result<bool, RemoveError> {
        if id == self.me {
            return Err(RemoveError::Myself(id));
        }
        if self.member(id).is_none() {
            return Err(RemoveError::Unknown(id));
        }
        let liveness = self.liveness(id);
        if !force && liveness.is_up() {
            return Err(RemoveError::Alive {
                id,
                liveness: liveness.as_str(),
            });
        }
        let mut state = self
            .state
            .write()
            .expect("membership lock is never poisoned");
        let member = state.members.get_mut(&id).ok_or(RemoveError::Unknown(id))?;
        if member.state == MemberState::Left {
            return Ok(false);
        }
        tracing::warn!(member = %id, liveness = liveness.as_str(), "removing member from the ring");
        member.state = MemberState::Left;
        // Ahead of any restart of it this node has not heard of yet (a removal is
        // about the node, not one of its runs); a run that does start later
        // outbids it (it starts above what the cluster reports) and joins anew.
        member.generation = member.generation.saturating_add(REMOVAL_GENERATION_LEAP);
        state.recompute_rings();
        metrics::counter!("ringkv_members_removed_total").increment(1);
        Ok(true)
    }

    pub fn members(&self) -> Vec<Member> {
        self.state
            .read()
            .expect("membership lock is never poisoned")
            .members
            .values()
            .cloned()
            .collect()
    }

    pub fn member(&self, id: NodeId) -> Option<Member> {
        self.state
            .read()
            .expect("membership lock is never poisoned")
            .members
            .get(&id)
            .cloned()
    }

    /// How to reach a member.
    /// On every request's path: copies the address only, never the member's tokens.
    pub fn peer(&self, id: NodeId) -> Option<Peer> {
        let state = self
            .state
            .read()
            .expect("membership lock is never poisoned");
        state.members.get(&id).map(|member| Peer {
            id,
            addr: member.peer_addr.clone(),
        })
    }

    /// Replaces this node's own entry (its tokens once allocated, a new state). The
    /// heartbeat carries on from the current entry's.
    pub fn update_me(&self, mut me: Member) {
        assert_eq!(me.id, self.me, "update_me is for this node's own entry");
        let mut state = self
            .state
            .write()
            .expect("membership lock is never poisoned");
        if let Some(current) = state.members.get(&me.id) {
            me.heartbeat = me.heartbeat.max(current.heartbeat);
        }
        state.members.insert(me.id, me);
        state.recompute_rings();
    }

    /// Bumps this node's heartbeat: once per gossip round, before the exchange.
    pub fn beat(&self) {
        let mut state = self
            .state
            .write()
            .expect("membership lock is never poisoned");
        if let Some(me) = state.members.get_mut(&self.me) {
            me.heartbeat += 1;
        }
    }

    /// This node's view of `id` now. Itself, and nodes it has no news of yet, are
    /// healthy (no evidence against them).
    pub fn liveness(&self, id: NodeId) -> Liveness {
        if id == self.me {
            return Liveness::Healthy;
        }
        let now = self.clock.monotonic_ms();
        let state = self
            .state
            .read()
            .expect("membership lock is never poisoned");
        state.seen.get(&id).map_or(Liveness::Healthy, |seen| {
            self.detector.judge(now.saturating_sub(seen.moved_ms))
        })
    }

    /// Every member with its liveness as seen here.
    pub fn members_with_liveness(&self) -> Vec<(Member, Liveness)> {
        self.members()
            .into_iter()
            .map(|member| {
                let liveness = self.liveness(member.id);
                (member, liveness)
            })
            .collect()
    }

    /// Re-judges every peer; logs and counts each change since the last tick and
    /// returns them (`(peer, from, to)`). Called once per gossip round.
    pub fn tick(&self) -> Vec<(NodeId, Liveness, Liveness)> {
        let now = self.clock.monotonic_ms();
        let mut state = self
            .state
            .write()
            .expect("membership lock is never poisoned");
        let mut changes = Vec::new();
        for (id, seen) in &mut state.seen {
            let now_is = self.detector.judge(now.saturating_sub(seen.moved_ms));
            if now_is != seen.reported {
                changes.push((*id, seen.reported, now_is));
                seen.reported = now_is;
            }
        }
        drop(state);
        for (id, from, to) in &changes {
            let silent_ms = self.silent_ms(*id, now);
            if *to == Liveness::Healthy {
                tracing::info!(peer = %id, from = from.as_str(), "peer is healthy again");
            } else {
                tracing::warn!(peer = %id, from = from.as_str(), to = to.as_str(), silent_ms, "peer is {}", to.as_str());
            }
            metrics::counter!("ringkv_failure_detector_transitions_total", "to" => to.as_str())
                .increment(1);
        }
        changes
    }

    fn silent_ms(&self, id: NodeId, now: u64) -> u64 {
        let state = self
            .state
            .read()
            .expect("membership lock is never poisoned");
        state
            .seen
            .get(&id)
            .map_or(0, |seen| now.saturating_sub(seen.moved_ms))
    }

    /// What this node tells others: every member with a valid entry (this node is
    /// left out until it has tokens).
    fn news(&self) -> Vec<Member> {
        self.members()
            .into_iter()
            .filter(|member| check(member).is_ok())
            .collect()
    }

    /// Takes in news about members; returns the members that are new or restarted
    /// (a new generation) since the last news, so the transport can forget earlier
    /// failures to reach them. This node is the only authority on itself: news about
    /// it is ignored.
    pub fn merge(&self, news: Vec<Member>) -> Vec<NodeId> {
        let mut state = self
            .state
            .write()
            .expect("membership lock is never poisoned");
        let mut changed = false;
        let mut back = Vec::new();
        let now = self.clock.monotonic_ms();
        for member in news {
            if member.id == self.me {
                // Others removed this run of the node (it was taken for dead): it
                // obeys, since its ranges have new owners now. A restart rejoins.
                if let Some(mine) = state.members.get_mut(&self.me)
                    && member.state == MemberState::Left
                    && member.generation >= mine.generation
                    && mine.state != MemberState::Left
                {
                    tracing::error!(
                        "the cluster removed this node (it was taken for dead): it leaves the ring; restart it to join again"
                    );
                    mine.state = MemberState::Left;
                    mine.generation = member.generation;
                    mine.heartbeat = mine.heartbeat.max(member.heartbeat) + 1;
                    changed = true;
                }
                let mut reported = self
                    .reported_me
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner);
                if reported
                    .as_ref()
                    .is_none_or(|known| member.supersedes(known))
                {
                    *reported = Some(member);
                }
                continue;
            }
            if let Err(reason) = check(&member) {
                tracing::warn!("ignoring member news: {reason}");
                continue;
            }
            let (newer, moves_ring) = match state.members.get(&member.id) {
                Some(known) => {
                    if member.generation > known.generation {
                        back.push(member.id);
                    }
                    (member.supersedes(known), member.moves_ring(known))
                }
                None => {
                    if state.members.len() >= MAX_MEMBERS {
                        tracing::warn!(member = %member.id, "membership table full ({MAX_MEMBERS}); ignoring");
                        continue;
                    }
                    back.push(member.id);
                    (true, true)
                }
            };
            let beat = (member.generation, member.heartbeat);
            let seen = state.seen.entry(member.id).or_insert(Seen {
                beat,
                moved_ms: now,
                reported: Liveness::Healthy,
            });
            if beat > seen.beat {
                seen.beat = beat;
                seen.moved_ms = now;
            }
            if newer {
                if !state.members.contains_key(&member.id) {
                    tracing::info!(member = %member.id, addr = %member.peer_addr, "new cluster member");
                }
                state.members.insert(member.id, member);
                changed |= moves_ring;
            }
        }
        if changed {
            state.recompute_rings();
        }
        back
    }

    /// Removes every member permanently failed here (DESIGN.md §6), but only while
    /// this node sees a strict majority of the members up: the minority side of a
    /// long partition must not remove the majority (which would then, once the
    /// partition heals, learn it was removed and leave). Returns the removed.
    pub fn remove_permanently_failed(&self) -> Vec<NodeId> {
        let members: Vec<Member> = self
            .members()
            .into_iter()
            .filter(|member| member.state != MemberState::Left)
            .collect();
        let failed: Vec<NodeId> = members
            .iter()
            .filter(|member| self.liveness(member.id) == Liveness::PermanentlyFailed)
            .map(|member| member.id)
            .collect();
        if failed.is_empty() {
            return failed;
        }
        let up = members
            .iter()
            .filter(|member| self.liveness(member.id).is_up())
            .count();
        if up * 2 <= members.len() {
            tracing::warn!(
                up,
                members = members.len(),
                failed = failed.len(),
                "permanently failed members stay: this node does not see a majority up"
            );
            return Vec::new();
        }
        failed
            .into_iter()
            .filter(|id| matches!(self.remove(*id, false), Ok(true)))
            .collect()
    }
}

#[cfg(test)]
mod tests;
