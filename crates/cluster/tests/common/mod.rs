//! The in-memory cluster the coordinator tests run on: nodes over memory engines,
//! a network that delivers calls straight to them (nodes marked down are
//! unreachable), a clock moved by hand.

// Each test crate uses part of it.
#![allow(dead_code, unused_imports)]
#![allow(clippy::unwrap_used)]

pub use std::collections::BTreeMap;
pub use std::sync::{Arc, Mutex, OnceLock};
pub use std::time::Duration;

pub use bytes::Bytes;
pub use ringkv_cluster::antientropy::{AntiEntropy, AntiEntropySettings};
pub use ringkv_cluster::coordinator::{Coordinator, CoordinatorError, Settings};
pub use ringkv_cluster::handoff::{Handoff, HandoffSettings};
pub use ringkv_cluster::membership::{Detector, Liveness, Membership};
pub use ringkv_cluster::replica::decode_write;
pub use ringkv_cluster::{
    BoxFuture, Clock, ManualClock, Node, Peer, Spawn, Transport, TransportError, Write, WriteBody,
};
pub use ringkv_core::ring::{Ring, allocate_tokens};
pub use ringkv_core::wire::{PeerRequest, PeerResponse};
pub use ringkv_core::{
    ActorId, ConflictPolicy, Context, Key, Limits, Member, MemberState, NodeId, ReadView, Record,
};
pub use ringkv_storage::MemoryEngine;

pub struct TestNode {
    pub node: Arc<Node>,
    pub membership: Arc<Membership>,
    pub coordinator: OnceLock<Arc<Coordinator>>,
}

/// Delivers calls straight to the target node; nodes in `down` are unreachable.
#[derive(Default)]
pub struct Network {
    pub nodes: OnceLock<BTreeMap<NodeId, Arc<TestNode>>>,
    pub down: Mutex<Vec<NodeId>>,
}

impl Transport for Network {
    fn call(
        &self,
        to: &Peer,
        request: PeerRequest,
        _timeout: Duration,
    ) -> BoxFuture<Result<PeerResponse, TransportError>> {
        if self.down.lock().unwrap().contains(&to.id) {
            let id = to.id;
            return Box::pin(async move {
                Err(TransportError::Unreachable {
                    peer: id,
                    reason: "down".into(),
                })
            });
        }
        let target = self.nodes.get().unwrap()[&to.id].clone();
        // Sent now, like the real transport: the work runs even if nobody awaits it.
        let task = tokio::spawn(async move {
            match request {
                PeerRequest::Coordinate { write, required } => {
                    let coordinator = target.coordinator.get().unwrap().clone();
                    coordinator
                        .on_coordinate(decode_write(write).unwrap(), required)
                        .await
                }
                PeerRequest::Members { members } => {
                    let transport = target.coordinator.get().unwrap().transport().clone();
                    target.membership.on_members(transport.as_ref(), members)
                }
                other => {
                    let reply = target.node.handle_replica(other);
                    if let Some(durable) = reply.durable {
                        durable.await.unwrap();
                    }
                    reply.response
                }
            }
        });
        Box::pin(async move { task.await.map_err(|_| TransportError::Closed) })
    }
}

pub struct TokioSpawn;
impl Spawn for TokioSpawn {
    fn spawn(&self, task: BoxFuture<()>) {
        tokio::spawn(task);
    }
}

pub struct Cluster {
    pub network: Arc<Network>,
    pub nodes: BTreeMap<NodeId, Arc<TestNode>>,
    pub clock: Arc<ManualClock>,
    pub members: Vec<Member>,
}

/// Short thresholds: the tests move the clock by hand.
pub const DETECTOR: Detector = Detector {
    suspicion_ms: 1_000,
    down_ms: 2_000,
    permanent_ms: 60_000,
};

pub fn cluster(size: u64, replication_factor: u8) -> Cluster {
    let mut members = Vec::new();
    for id in 0..size {
        let ring = Ring::from_members(&members);
        let weights = members.iter().map(|m: &Member| (m.id, m.vnodes)).collect();
        let tokens = allocate_tokens(&ring, &weights, NodeId(id), 32, id);
        members.push(Member {
            id: NodeId(id),
            generation: 1,
            heartbeat: 0,
            state: MemberState::Normal,
            peer_addr: format!("node-{id}"),
            http_addr: String::new(),
            resp_addr: String::new(),
            vnodes: 32,
            tokens,
        });
    }
    let network = Arc::new(Network::default());
    let clock = Arc::new(ManualClock::new(1_000_000));
    let mut nodes = BTreeMap::new();
    for member in &members {
        let membership = Arc::new(Membership::new(member.clone(), clock.clone(), DETECTOR));
        membership.merge(members.clone());
        let node = Arc::new(Node::new(
            Arc::new(MemoryEngine::new()),
            clock.clone(),
            ActorId(100 + member.id.0),
            ConflictPolicy::Siblings,
        ));
        let test_node = Arc::new(TestNode {
            node,
            membership: membership.clone(),
            coordinator: OnceLock::new(),
        });
        let coordinator = Arc::new(Coordinator::new(
            membership,
            network.clone(),
            Arc::new(TokioSpawn),
            Settings {
                replication_factor,
                request_timeout: Duration::from_millis(500),
            },
        ));
        test_node.coordinator.set(coordinator).ok().unwrap();
        nodes.insert(member.id, test_node);
    }
    network.nodes.set(nodes.clone()).ok().unwrap();
    Cluster {
        network,
        nodes,
        clock,
        members,
    }
}

impl Cluster {
    pub fn coordinator(&self, id: u64) -> Arc<Coordinator> {
        self.nodes[&NodeId(id)].coordinator.get().unwrap().clone()
    }

    /// What `id` holds as a replica (hints left out).
    pub fn local(&self, id: NodeId, key: &Key) -> Option<Record> {
        self.nodes[&id].node.read_own(key).unwrap()
    }

    /// Lets the down threshold pass with every node's heartbeat moving but those of
    /// `silent` (as gossip would have it), so every other node sees them DOWN.
    pub fn detect_down(&self, silent: &[NodeId]) {
        self.clock.advance(DETECTOR.down_ms);
        self.beat_all_but(silent);
        for (id, node) in &self.nodes {
            for down in silent.iter().filter(|down| *down != id) {
                assert_eq!(node.membership.liveness(*down), Liveness::Down);
            }
        }
    }

    /// Heartbeat news of every node but `silent`, merged everywhere.
    pub fn beat_all_but(&self, silent: &[NodeId]) {
        let beat = self.clock.now_ms();
        let news: Vec<Member> = self
            .members
            .iter()
            .filter(|member| !silent.contains(&member.id))
            .map(|member| Member {
                heartbeat: beat,
                ..member.clone()
            })
            .collect();
        for node in self.nodes.values() {
            node.membership.merge(news.clone());
        }
    }

    pub fn handoff(&self, id: NodeId) -> Handoff {
        let node = &self.nodes[&id];
        Handoff::new(
            node.node.clone(),
            node.membership.clone(),
            self.network.clone(),
            Arc::new(TokioSpawn),
            HandoffSettings {
                hint_ttl_ms: 10_000,
                bytes_per_round: u64::MAX,
                request_timeout: Duration::from_millis(500),
                replication_factor: 3,
            },
        )
    }

    pub fn hints_for(&self, holder: NodeId, target: NodeId) -> u64 {
        self.nodes[&holder]
            .node
            .hint_stats()
            .by_target
            .get(&target)
            .map_or(0, |count| count.hints)
    }

    pub fn set_down(&self, id: NodeId, down: bool) {
        let mut list = self.network.down.lock().unwrap();
        list.retain(|x| *x != id);
        if down {
            list.push(id);
        }
    }
}

pub fn key(raw: &str) -> Key {
    Key::parse(raw.to_string(), &Limits::default()).unwrap()
}

pub fn put(raw: &str, value: &'static str, seen: Context) -> Write {
    Write {
        key: key(raw),
        body: WriteBody::Value(Bytes::from_static(value.as_bytes())),
        seen,
        ttl: None,
    }
}

pub fn values(record: &Record) -> Vec<String> {
    match record.view(ConflictPolicy::Siblings, 0) {
        ReadView::Absent => vec![],
        ReadView::Value(s) => vec![body(s)],
        ReadView::Siblings(all) => all.into_iter().map(body).collect(),
    }
}

pub fn body(sibling: &ringkv_core::Sibling) -> String {
    match &sibling.body {
        ringkv_core::Body::Bytes(b) => String::from_utf8(b.to_vec()).unwrap(),
        other => format!("{other:?}"),
    }
}
