//! The membership table: every node this node knows of, and the ring computed from
//! it. Nodes exchange their tables (`PeerRequest::Members`) with seeds at start and
//! with one member per round afterwards; tables merge member by member, newer
//! `(generation, state)` winning, so every node converges on the same table and
//! computes the same ring. Failure detection (gossip heartbeats) plugs in here.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use ringkv_core::ring::Ring;
use ringkv_core::wire::{PeerRequest, PeerResponse};
use ringkv_core::{Member, MemberState, NodeId};

use crate::transport::{Peer, Transport, TransportError};

/// Most members a table may hold; news beyond it is dropped (and logged).
pub const MAX_MEMBERS: usize = 1024;
/// Most tokens one member may claim.
pub const MAX_TOKENS_PER_MEMBER: usize = 4096;

struct State {
    members: BTreeMap<NodeId, Member>,
    ring: Arc<Ring>,
}

/// This node's view of the cluster.
pub struct Membership {
    me: NodeId,
    state: RwLock<State>,
    round: AtomicU64,
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
    pub fn new(me: Member) -> Membership {
        let id = me.id;
        let members = BTreeMap::from([(id, me)]);
        let ring = Arc::new(Ring::from_members(
            &members.values().cloned().collect::<Vec<_>>(),
        ));
        Membership {
            me: id,
            state: RwLock::new(State { members, ring }),
            round: AtomicU64::new(0),
        }
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
    pub fn peer(&self, id: NodeId) -> Option<Peer> {
        self.member(id).map(|member| Peer {
            id,
            addr: member.peer_addr,
        })
    }

    /// Replaces this node's own entry (its tokens once allocated, a new state).
    pub fn update_me(&self, me: Member) {
        assert_eq!(me.id, self.me, "update_me is for this node's own entry");
        let mut state = self
            .state
            .write()
            .expect("membership lock is never poisoned");
        state.members.insert(me.id, me);
        let members: Vec<Member> = state.members.values().cloned().collect();
        state.ring = Arc::new(Ring::from_members(&members));
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
        for member in news {
            if member.id == self.me {
                continue;
            }
            if let Err(reason) = check(&member) {
                tracing::warn!("ignoring member news: {reason}");
                continue;
            }
            let newer = match state.members.get(&member.id) {
                Some(known) => {
                    if member.generation > known.generation {
                        back.push(member.id);
                    }
                    member.supersedes(known)
                }
                None => {
                    if state.members.len() >= MAX_MEMBERS {
                        tracing::warn!(member = %member.id, "membership table full ({MAX_MEMBERS}); ignoring");
                        continue;
                    }
                    back.push(member.id);
                    true
                }
            };
            if newer {
                if !state.members.contains_key(&member.id) {
                    tracing::info!(member = %member.id, addr = %member.peer_addr, "new cluster member");
                }
                state.members.insert(member.id, member);
                changed = true;
            }
        }
        if changed {
            let members: Vec<Member> = state.members.values().cloned().collect();
            state.ring = Arc::new(Ring::from_members(&members));
        }
        back
    }

    /// The member to exchange tables with this round: the others in turn.
    pub fn gossip_target(&self) -> Option<Peer> {
        let state = self
            .state
            .read()
            .expect("membership lock is never poisoned");
        let others: Vec<&Member> = state
            .members
            .values()
            .filter(|member| member.id != self.me && member.state != MemberState::Left)
            .collect();
        if others.is_empty() {
            return None;
        }
        let round = self.round.fetch_add(1, Ordering::Relaxed);
        let index = usize::try_from(round % others.len() as u64).unwrap_or(0);
        let member = others[index];
        Some(Peer {
            id: member.id,
            addr: member.peer_addr.clone(),
        })
    }

    /// One exchange of tables with `peer`: send ours, merge theirs.
    ///
    /// # Errors
    /// The peer did not answer (or answered nonsense).
    pub async fn exchange(
        &self,
        transport: &dyn Transport,
        peer: &Peer,
        timeout: Duration,
    ) -> Result<(), TransportError> {
        let request = PeerRequest::Members {
            members: self.news(),
        };
        match transport.call(peer, request, timeout).await {
            Ok(PeerResponse::Members { members }) => {
                for id in self.merge(members) {
                    transport.forget_failures(id);
                }
                Ok(())
            }
            Ok(other) => Err(TransportError::Protocol {
                peer: peer.id,
                reason: format!("unexpected answer to a membership exchange: {other:?}"),
            }),
            Err(error) => {
                tracing::debug!(peer = %peer.addr, "membership exchange failed: {error}");
                Err(error)
            }
        }
    }

    /// Handles a peer's `Members` request: merge its news, answer with our table.
    pub fn on_members(&self, transport: &dyn Transport, news: Vec<Member>) -> PeerResponse {
        for id in self.merge(news) {
            transport.forget_failures(id);
        }
        PeerResponse::Members {
            members: self.news(),
        }
    }
}
