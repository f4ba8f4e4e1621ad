//! Gossip (DESIGN.md §6): whom to talk to each round, the push-pull exchange of
//! tables, the announcement of a starting node, and the answer to a peer's table.

use std::sync::{Arc, PoisonError};
use std::time::Duration;

use ringkv_core::wire::{PeerRequest, PeerResponse};
use ringkv_core::{Member, MemberState};

use super::{Membership, next_random};
use crate::transport::{Peer, Transport, TransportError};

impl Membership {
    /// Whom to exchange tables with this round: one random live peer, and with
    /// chance `down / (live + 1)` one random down peer too (so a returning node is
    /// noticed even by nodes it does not pick itself).
    pub fn gossip_targets(&self) -> Vec<Peer> {
        let mut live = Vec::new();
        let mut down = Vec::new();
        for member in self.members() {
            if member.id == self.me || member.state == MemberState::Left {
                continue;
            }
            let peer = Peer {
                id: member.id,
                addr: member.peer_addr,
            };
            if self.liveness(member.id).is_up() {
                live.push(peer);
            } else {
                down.push(peer);
            }
        }
        let mut rng = self.rng.lock().unwrap_or_else(PoisonError::into_inner);
        let pick = |rng: &mut u64, peers: &mut Vec<Peer>| -> Option<Peer> {
            let len = u64::try_from(peers.len()).ok().filter(|len| *len > 0)?;
            let index = usize::try_from(next_random(rng) % len).ok()?;
            Some(peers.swap_remove(index))
        };
        let mut targets = Vec::new();
        let live_count = live.len() as u64;
        let down_count = down.len() as u64;
        targets.extend(pick(&mut rng, &mut live));
        if down_count > 0 && next_random(&mut rng) % (live_count + 1) < down_count {
            targets.extend(pick(&mut rng, &mut down));
        }
        targets
    }

    /// One gossip round: bump the heartbeat, exchange tables with this round's
    /// targets (the live one first: a down one may cost a timeout), re-judge every
    /// peer.
    pub async fn gossip_round(&self, transport: &dyn Transport, timeout: Duration) {
        self.beat();
        for peer in self.gossip_targets() {
            let _ = self.exchange(transport, &peer, timeout).await;
        }
        self.tick();
        self.remove_permanently_failed();
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

    /// Exchanges tables with every other member that has not left and is not
    /// detected down, all at once, and waits for them: after a state change of this
    /// node, so the cluster routes by it before anything depends on that. Returns
    /// how many answered of how many were asked.
    pub async fn announce(
        &self,
        transport: &Arc<dyn Transport>,
        timeout: Duration,
    ) -> (usize, usize) {
        let peers: Vec<Peer> = self
            .members()
            .into_iter()
            .filter(|member| {
                member.id != self.me
                    && member.state != MemberState::Left
                    && self.liveness(member.id).is_up()
            })
            .map(|member| Peer {
                id: member.id,
                addr: member.peer_addr,
            })
            .collect();
        let asked = peers.len();
        let request = PeerRequest::Members {
            members: self.news(),
        };
        let calls = peers
            .into_iter()
            .map(|peer| {
                let call = transport.call(&peer, request.clone(), timeout);
                let reply: crate::transport::BoxFuture<Option<Vec<Member>>> =
                    Box::pin(async move {
                        match call.await {
                            Ok(PeerResponse::Members { members }) => Some(members),
                            _ => None,
                        }
                    });
                (peer.id, reply)
            })
            .collect();
        let mut gather = crate::gather::Gather::new(calls);
        gather.all().await;
        let mut answered = 0;
        for (_, reply) in gather.into_done() {
            if let Some(members) = reply {
                answered += 1;
                for id in self.merge(members) {
                    transport.forget_failures(id);
                }
            }
        }
        (answered, asked)
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
