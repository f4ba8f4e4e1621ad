//! Hinted handoff (DESIGN.md §6): a node hands the hints it holds for another node
//! back to it once its failure detector sees that node HEALTHY again.
//!
//! Each round walks every target with hints that is healthy now, in token order,
//! a page at a time, up to the round's byte budget (`streaming_bytes_per_sec` ×
//! the round interval): the page's hints go out as `Replicate` calls in parallel,
//! and each one the target acknowledges (durably) is forgotten, unless it was merged
//! into meanwhile (then the next round sends it again). A failed call ends the
//! target's round. Hints older than `hint_ttl_ms` are dropped, counted: anti-entropy
//! repairs what they carried.
//!
//! Hints for a node that left the ring (decommissioned, or removed as dead), and
//! every hint a node holds once it left itself, go to the key's current replicas
//! instead: the hint may be the only copy the write has
//! beyond its other replicas. Each is forgotten once every replica not detected
//! down (and at least one) acknowledged it.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use ringkv_core::wire::{PeerRequest, PeerResponse};
use ringkv_core::{MemberState, NodeId};
use ringkv_storage::Hint;

use crate::gather::Gather;
use crate::membership::{Liveness, Membership};
use crate::node::Node;
use crate::transport::{BoxFuture, Spawn, Transport, offload};

/// Hints sent at once to one target.
pub const PAGE: usize = 64;

/// How handoff runs (from the configuration).
#[derive(Debug, Clone, Copy)]
pub struct HandoffSettings {
    /// `hint_ttl_ms`: older hints are dropped.
    pub hint_ttl_ms: u64,
    /// Most bytes of hints sent per round (all targets together).
    pub bytes_per_round: u64,
    /// How long one delivery may take (`request_timeout_ms`).
    pub request_timeout: Duration,
    /// N: hints for a node that left go to the key's N replicas.
    pub replication_factor: usize,
}

/// What one round did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HandoffReport {
    pub delivered: u64,
    pub expired: u64,
    pub failed: u64,
    pub bytes: u64,
}

/// One node's handoff.
pub struct Handoff {
    node: Arc<Node>,
    membership: Arc<Membership>,
    transport: Arc<dyn Transport>,
    spawner: Arc<dyn Spawn>,
    settings: HandoffSettings,
}

impl Handoff {
    pub fn new(
        node: Arc<Node>,
        membership: Arc<Membership>,
        transport: Arc<dyn Transport>,
        spawner: Arc<dyn Spawn>,
        settings: HandoffSettings,
    ) -> Handoff {
        Handoff {
            node,
            membership,
            transport,
            spawner,
            settings,
        }
    }

    /// One round over every healthy target this node holds hints for.
    pub async fn round(&self) -> HandoffReport {
        let mut report = HandoffReport::default();
        let targets: Vec<NodeId> = self.node.hint_stats().by_target.into_keys().collect();
        for target in targets {
            if report.bytes >= self.settings.bytes_per_round {
                break;
            }
            // (A target not known yet, as after a restart, is not one that left.)
            // A node that left itself does not wait for its targets to come
            // back: it hands everything to the keys' live replicas and goes.
            let left = self.membership.my_state() == MemberState::Left
                || self
                    .membership
                    .member(target)
                    .is_some_and(|member| member.state == MemberState::Left);
            if left {
                self.redirect(target, &mut report).await;
                continue;
            }
            if self.membership.liveness(target) != Liveness::Healthy {
                continue;
            }
            self.deliver_to(target, &mut report).await;
        }
        if report != HandoffReport::default() {
            tracing::debug!(?report, "hinted handoff round");
        }
        report
    }

    /// Sends the hints held for `target`, which left the ring, to their keys'
    /// current replicas (one page per round).
    async fn redirect(&self, target: NodeId, report: &mut HandoffReport) {
        let node = self.node.clone();
        let page = offload(self.spawner.as_ref(), move || {
            node.hints(target, None, PAGE)
        })
        .await;
        let hints = match page {
            Some(Ok(hints)) => hints,
            Some(Err(error)) => {
                tracing::warn!(%target, "cannot read hints: {error}");
                return;
            }
            None => return,
        };
        let ring = self.membership.ring();
        let mut done = Vec::new();
        for hint in hints {
            let replicas: Vec<NodeId> = ring
                .preference_list(hint.key.token(), self.settings.replication_factor)
                .replicas()
                .iter()
                .copied()
                .filter(|id| self.membership.liveness(*id).is_up())
                .collect();
            let record = Bytes::from(hint.record.encode());
            let mut calls: Vec<(NodeId, BoxFuture<bool>)> = Vec::new();
            for id in &replicas {
                let Some(peer) = self.membership.peer(*id) else {
                    continue;
                };
                report.bytes += record.len() as u64;
                let call = self.transport.call(
                    &peer,
                    PeerRequest::Replicate {
                        key: hint.key.to_bytes(),
                        record: record.clone(),
                    },
                    self.settings.request_timeout,
                );
                calls.push((
                    *id,
                    Box::pin(async move { matches!(call.await, Ok(PeerResponse::Ack)) }),
                ));
            }
            let mut gather = Gather::new(calls);
            gather.all().await;
            let acks = gather.done().iter().filter(|(_, acked)| *acked).count();
            if acks > 0 && acks == replicas.len() {
                done.push(hint);
            } else {
                report.failed += 1;
            }
        }
        let count = done.len() as u64;
        let node = self.node.clone();
        let _ = offload(self.spawner.as_ref(), move || {
            for hint in &done {
                node.forget_hint(hint)?;
            }
            Ok::<(), crate::NodeError>(())
        })
        .await;
        if count > 0 {
            tracing::info!(%target, count, "hints for a node that left went to the keys' replicas");
            report.delivered += count;
            metrics::counter!("ringkv_hints_delivered_total").increment(count);
        }
    }

    async fn deliver_to(&self, target: NodeId, report: &mut HandoffReport) {
        let Some(peer) = self.membership.peer(target) else {
            return;
        };
        let now_ms = self.node.now_ms();
        while report.bytes < self.settings.bytes_per_round {
            let node = self.node.clone();
            let page = offload(self.spawner.as_ref(), move || {
                node.hints(target, None, PAGE)
            })
            .await;
            let hints = match page {
                Some(Ok(hints)) if !hints.is_empty() => hints,
                Some(Err(error)) => {
                    tracing::warn!(%target, "cannot read hints: {error}");
                    return;
                }
                _ => return,
            };
            let (expired, live): (Vec<Hint>, Vec<Hint>) = hints.into_iter().partition(|hint| {
                hint.stored_ms.saturating_add(self.settings.hint_ttl_ms) <= now_ms
            });
            let mut calls: Vec<(NodeId, BoxFuture<(Hint, bool)>)> = Vec::new();
            for hint in live {
                let record = Bytes::from(hint.record.encode());
                report.bytes += record.len() as u64;
                let call = self.transport.call(
                    &peer,
                    PeerRequest::Replicate {
                        key: hint.key.to_bytes(),
                        record,
                    },
                    self.settings.request_timeout,
                );
                calls.push((
                    target,
                    Box::pin(async move {
                        let acked = matches!(call.await, Ok(PeerResponse::Ack));
                        (hint, acked)
                    }),
                ));
            }
            let mut gather = Gather::new(calls);
            gather.all().await;
            let replies = gather.into_done();
            let failed = replies.iter().filter(|(_, (_, acked))| !acked).count() as u64;
            let delivered: Vec<Hint> = replies
                .into_iter()
                .filter(|(_, (_, acked))| *acked)
                .map(|(_, (hint, _))| hint)
                .collect();
            let counts = (delivered.len() as u64, expired.len() as u64);
            let node = self.node.clone();
            let forgotten = offload(self.spawner.as_ref(), move || {
                for hint in delivered.iter().chain(&expired) {
                    node.forget_hint(hint)?;
                }
                Ok::<(), crate::NodeError>(())
            })
            .await;
            report.delivered += counts.0;
            report.expired += counts.1;
            report.failed += failed;
            metrics::counter!("ringkv_hints_delivered_total").increment(counts.0);
            metrics::counter!("ringkv_hints_dropped_total", "reason" => "expired")
                .increment(counts.1);
            if counts.1 > 0 {
                tracing::warn!(%target, expired = counts.1, "dropped hints older than hint_ttl_ms; anti-entropy will repair what they carried");
            }
            if failed > 0 || !matches!(forgotten, Some(Ok(()))) {
                return;
            }
        }
    }
}
