//! Faults, applied between polls so they cut in at exact, replayable points:
//! crash, restart, partition and heal, clock jumps, joins and decommissions,
//! power cuts.

use std::time::Duration;

use ringkv_core::ring::{Ring, allocate_tokens};
use ringkv_core::{Member, MemberState, NodeId};

use super::{MAX_JUMPED_SKEW_MS, World};
use crate::exec::{Owner, lock};
use crate::sim::{Canary, Event, Fault, Slot};

impl World {
    /// Applies `fault` now (logged to the trace first).
    pub fn apply(&mut self, fault: Fault) {
        self.sim.log(&format!("FAULT {fault:?}"));
        match fault {
            Fault::Crash(index) => {
                {
                    let mut core = lock(&self.sim.core);
                    if !core.net.up[index] {
                        return;
                    }
                    core.net.up[index] = false;
                }
                self.drain_inbox();
                self.engines[index].crash();
                lock(&self.sim.nodes)[index] = None;
                // Dropping the tasks drops their reply senders: callers time out.
                let dead: Vec<u64> = self
                    .tasks
                    .iter()
                    .filter(|(_, (owner, _))| *owner == Owner::Node(index))
                    .map(|(id, _)| *id)
                    .collect();
                for id in dead {
                    drop(self.tasks.remove(&id));
                }
                // Every crashed node comes back after a while (sooner if the
                // nemesis restarts it first).
                let mut core = lock(&self.sim.core);
                let at = core.now + core.rng.range(50, 500);
                core.schedule(at, Event::Fault(Fault::Restart(index)));
            }
            Fault::Restart(index) => {
                {
                    let mut core = lock(&self.sim.core);
                    if core.net.up[index] || matches!(core.slots[index], Slot::Spare | Slot::Gone) {
                        return;
                    }
                    // A crash ends a decommission: the node restarts as a member, or,
                    // if it had already left (its writes went elsewhere since),
                    // joins again, as `server` does from the state it recorded.
                    if core.slots[index] == Slot::Leaving {
                        let saved =
                            ringkv_cluster::node::saved_member_state(self.engines[index].as_ref());
                        core.slots[index] = match saved {
                            Ok(Some(MemberState::Left)) => Slot::Joining,
                            Ok(Some(MemberState::Drained)) => Slot::Leaving,
                            _ => Slot::Member,
                        };
                    }
                    core.net.up[index] = true;
                    core.net.incarnation[index] += 1;
                }
                self.boot(index);
            }
            Fault::Partition(side) => {
                let mut core = lock(&self.sim.core);
                core.net.blocked.clear();
                for a in 0..self.config.nodes {
                    for b in 0..self.config.nodes {
                        if side.contains(&a) != side.contains(&b) {
                            core.net.blocked.insert((a, b));
                        }
                    }
                }
            }
            Fault::OneWay(side) => {
                let mut core = lock(&self.sim.core);
                core.net.blocked.clear();
                for a in side.iter().copied() {
                    for b in (0..self.config.nodes).filter(|b| !side.contains(b)) {
                        core.net.blocked.insert((a, b));
                    }
                }
            }
            Fault::Heal => lock(&self.sim.core).net.blocked.clear(),
            Fault::ClockJump { node, by_ms } => {
                if let Some(skew) = self.skews.get_mut(node) {
                    *skew = skew
                        .saturating_add(by_ms)
                        .clamp(-MAX_JUMPED_SKEW_MS, MAX_JUMPED_SKEW_MS);
                }
                self.set_clocks(self.sim.now());
            }
            Fault::DiskLoss(index) => {
                self.apply(Fault::Crash(index));
                self.engines[index].lose_everything();
                let mut core = lock(&self.sim.core);
                let now = core.now;
                core.disk_lost_at.get_or_insert(now);
                // The hints it held are gone with the disk (their writes are on two
                // other disks; anti-entropy spreads them).
                core.hints.retain(|hint| hint.holder != index);
                // So are the hints already handed off to it: what they carried is
                // owed to it again only where another disk holds it (anti-entropy,
                // checked by convergence and the acked-write checkers; an unacked
                // write whose other copies a crash lost may be gone for good). Hints
                // for it that their holder still stores must still reach it.
                let engines = &self.engines;
                core.hints.retain(|hint| {
                    hint.target != index
                        || ringkv_core::Key::from_stored(hint.key.clone())
                            .ok()
                            .and_then(|key| {
                                use ringkv_storage::Engine as _;
                                engines.get(hint.holder)?.hints_for_key(&key).ok()
                            })
                            .is_some_and(|held| {
                                held.iter().any(|stored| {
                                    stored.target == NodeId(index as u64)
                                        && stored.record.context().includes(hint.record.context())
                                })
                            })
                });
            }
            Fault::Join(index) => {
                if lock(&self.sim.core).slots[index] != Slot::Spare {
                    return;
                }
                let holders: Vec<Member> = self
                    .seed_view(index)
                    .into_iter()
                    .filter(|m| m.state != MemberState::Left)
                    .collect();
                let ring = Ring::new(holders.iter().map(|m| (m.id, m.tokens.clone())));
                let weights = holders.iter().map(|m| (m.id, m.vnodes)).collect();
                let salt = self.sim.random(|rng| rng.next_u64());
                self.members[index].tokens =
                    allocate_tokens(&ring, &weights, NodeId(index as u64), 16, salt);
                {
                    let mut core = lock(&self.sim.core);
                    core.slots[index] = if core.canary == Canary::JoinWithoutStreaming {
                        Slot::Member
                    } else {
                        Slot::Joining
                    };
                    core.topology_changed = true;
                    core.net.up[index] = true;
                }
                self.boot(index);
            }
            Fault::Decommission(index) => {
                let Some(node) = self.sim.node(index) else {
                    return;
                };
                if lock(&self.sim.core).slots[index] != Slot::Member {
                    return;
                }
                if let Err(reason) = node.topology.check_decommission() {
                    self.sim
                        .log(&format!("n{index} cannot decommission: {reason}"));
                    return;
                }
                {
                    let mut core = lock(&self.sim.core);
                    core.slots[index] = Slot::Leaving;
                    core.topology_changed = true;
                }
                self.resume_topology(index);
            }
            Fault::Remove(index) => {
                // Someone alive must do the removal.
                let remover = (0..self.config.nodes)
                    .find_map(|other| (other != index).then(|| self.sim.node(other)).flatten());
                let Some(remover) = remover else {
                    return;
                };
                {
                    let mut core = lock(&self.sim.core);
                    if core.slots[index] != Slot::Member {
                        return;
                    }
                    core.slots[index] = Slot::Gone;
                    core.topology_changed = true;
                    let now = core.now;
                    core.disk_lost_at.get_or_insert(now);
                    // The hints it held die with it.
                    core.hints.retain(|hint| hint.holder != index);
                }
                self.apply(Fault::Crash(index));
                // Every live node removes it, as each does once its detector says
                // permanently failed (and as an operator does who checks that
                // every node was told): a removal known to one node only is lost
                // if that node crashes (membership lives in memory).
                let id = NodeId(index as u64);
                for other in 0..self.config.nodes {
                    if let Some(node) = self.sim.node(other)
                        && other != index
                        && let Err(error) = node.membership.remove(id, true)
                    {
                        self.sim
                            .log(&format!("n{other} cannot remove n{index}: {error}"));
                    }
                }
                let owner = usize::try_from(remover.membership.me().0).unwrap_or(0);
                let timeout = Duration::from_millis(self.config.request_timeout_ms);
                self.sim.spawn(
                    Owner::Node(owner),
                    Box::pin(async move {
                        let transport = remover.coordinator.transport().clone();
                        remover.membership.announce(&transport, timeout).await;
                    }),
                );
            }
            Fault::PowerCut => {
                for index in 0..self.config.nodes {
                    self.apply(Fault::Crash(index));
                }
                let mut core = lock(&self.sim.core);
                for index in 0..self.config.nodes {
                    let at = core.now + core.rng.range(20, 200);
                    core.schedule(at, Event::Fault(Fault::Restart(index)));
                }
            }
        }
    }
}
