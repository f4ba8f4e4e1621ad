//! The coordinator over an in-memory network of nodes with memory engines: quorum
//! writes and reads, siblings, unavailable replicas, forwarding, read repair. The
//! real TCP transport is tested in `ringkv-server`; whole-cluster faults in the
//! simulator.

#![allow(clippy::unwrap_used)] // Tests fail loudly on anything unexpected.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use ringkv_cluster::antientropy::{AntiEntropy, AntiEntropySettings};
use ringkv_cluster::coordinator::{Coordinator, CoordinatorError, Settings};
use ringkv_cluster::handoff::{Handoff, HandoffSettings};
use ringkv_cluster::membership::{Detector, Liveness, Membership};
use ringkv_cluster::replica::decode_write;
use ringkv_cluster::{
    BoxFuture, Clock, ManualClock, Node, Peer, Spawn, Transport, TransportError, Write, WriteBody,
};
use ringkv_core::ring::{Ring, allocate_tokens};
use ringkv_core::wire::{PeerRequest, PeerResponse};
use ringkv_core::{
    ActorId, ConflictPolicy, Context, Key, Limits, Member, MemberState, NodeId, ReadView, Record,
};
use ringkv_storage::MemoryEngine;

struct TestNode {
    node: Arc<Node>,
    membership: Arc<Membership>,
    coordinator: OnceLock<Arc<Coordinator>>,
}

/// Delivers calls straight to the target node; nodes in `down` are unreachable.
#[derive(Default)]
struct Network {
    nodes: OnceLock<BTreeMap<NodeId, Arc<TestNode>>>,
    down: Mutex<Vec<NodeId>>,
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

struct TokioSpawn;
impl Spawn for TokioSpawn {
    fn spawn(&self, task: BoxFuture<()>) {
        tokio::spawn(task);
    }
}

struct Cluster {
    network: Arc<Network>,
    nodes: BTreeMap<NodeId, Arc<TestNode>>,
    clock: Arc<ManualClock>,
    members: Vec<Member>,
}

/// Short thresholds: the tests move the clock by hand.
const DETECTOR: Detector = Detector {
    suspicion_ms: 1_000,
    down_ms: 2_000,
    permanent_ms: 60_000,
};

fn cluster(size: u64, replication_factor: u8) -> Cluster {
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
    fn coordinator(&self, id: u64) -> Arc<Coordinator> {
        self.nodes[&NodeId(id)].coordinator.get().unwrap().clone()
    }

    /// What `id` holds as a replica (hints left out).
    fn local(&self, id: NodeId, key: &Key) -> Option<Record> {
        self.nodes[&id].node.read_own(key).unwrap()
    }

    /// Lets the down threshold pass with every node's heartbeat moving but those of
    /// `silent` (as gossip would have it), so every other node sees them DOWN.
    fn detect_down(&self, silent: &[NodeId]) {
        self.clock.advance(DETECTOR.down_ms);
        self.beat_all_but(silent);
        for (id, node) in &self.nodes {
            for down in silent.iter().filter(|down| *down != id) {
                assert_eq!(node.membership.liveness(*down), Liveness::Down);
            }
        }
    }

    /// Heartbeat news of every node but `silent`, merged everywhere.
    fn beat_all_but(&self, silent: &[NodeId]) {
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

    fn handoff(&self, id: NodeId) -> Handoff {
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
            },
        )
    }

    fn hints_for(&self, holder: NodeId, target: NodeId) -> u64 {
        self.nodes[&holder]
            .node
            .hint_stats()
            .by_target
            .get(&target)
            .map_or(0, |count| count.hints)
    }

    fn set_down(&self, id: NodeId, down: bool) {
        let mut list = self.network.down.lock().unwrap();
        list.retain(|x| *x != id);
        if down {
            list.push(id);
        }
    }
}

fn key(raw: &str) -> Key {
    Key::parse(raw.to_string(), &Limits::default()).unwrap()
}

fn put(raw: &str, value: &'static str, seen: Context) -> Write {
    Write {
        key: key(raw),
        body: WriteBody::Value(Bytes::from_static(value.as_bytes())),
        seen,
        ttl: None,
    }
}

fn values(record: &Record) -> Vec<String> {
    match record.view(ConflictPolicy::Siblings, 0) {
        ReadView::Absent => vec![],
        ReadView::Value(s) => vec![body(s)],
        ReadView::Siblings(all) => all.into_iter().map(body).collect(),
    }
}

fn body(sibling: &ringkv_core::Sibling) -> String {
    match &sibling.body {
        ringkv_core::Body::Bytes(b) => String::from_utf8(b.to_vec()).unwrap(),
        other => format!("{other:?}"),
    }
}

#[tokio::test]
async fn write_all_then_read_one_anywhere() {
    let cluster = cluster(3, 3);
    cluster
        .coordinator(0)
        .write(put("k", "v", Context::default()), 3, false)
        .await
        .unwrap();
    for id in 0..3 {
        let record = cluster
            .coordinator(id)
            .read(&key("k"), 1)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(values(&record), ["v"]);
        assert_eq!(
            values(&cluster.local(NodeId(id), &key("k")).unwrap()),
            ["v"]
        );
    }
}

#[tokio::test]
async fn racing_writes_become_siblings_and_the_version_resolves_them() {
    let cluster = cluster(3, 3);
    cluster
        .coordinator(0)
        .write(put("k", "a", Context::default()), 3, false)
        .await
        .unwrap();
    cluster
        .coordinator(1)
        .write(put("k", "b", Context::default()), 3, false)
        .await
        .unwrap();
    let record = cluster
        .coordinator(2)
        .read(&key("k"), 3)
        .await
        .unwrap()
        .unwrap();
    let mut both = values(&record);
    both.sort();
    assert_eq!(both, ["a", "b"]);
    cluster
        .coordinator(2)
        .write(put("k", "c", record.context().clone()), 3, false)
        .await
        .unwrap();
    let record = cluster
        .coordinator(0)
        .read(&key("k"), 3)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(values(&record), ["c"]);
}

#[tokio::test]
async fn unreachable_replicas_fail_strict_quorums_but_not_loose_ones() {
    let cluster = cluster(3, 3);
    let replicas = cluster.coordinator(0).replicas(&key("k"));
    let down = replicas[2];
    cluster.set_down(down, true);
    let coordinator = cluster.coordinator(replicas[0].0);
    let error = coordinator
        .write(put("k", "v", Context::default()), 3, false)
        .await
        .unwrap_err();
    assert_eq!(
        error,
        CoordinatorError::QuorumUnavailable {
            acked: 2,
            required: 3,
            write: true
        }
    );
    coordinator
        .write(put("k", "v", Context::default()), 2, false)
        .await
        .unwrap();
    let error = coordinator.read(&key("k"), 3).await.unwrap_err();
    assert_eq!(
        error,
        CoordinatorError::QuorumUnavailable {
            acked: 2,
            required: 3,
            write: false
        }
    );
}

#[tokio::test]
async fn a_replica_that_missed_a_write_is_repaired_by_a_read() {
    let cluster = cluster(3, 3);
    let replicas = cluster.coordinator(0).replicas(&key("k"));
    let (coordinator, missed) = (cluster.coordinator(replicas[0].0), replicas[2]);
    cluster.set_down(missed, true);
    coordinator
        .write(put("k", "v", Context::default()), 2, false)
        .await
        .unwrap();
    assert!(cluster.local(missed, &key("k")).is_none());
    cluster.set_down(missed, false);
    let record = coordinator.read(&key("k"), 3).await.unwrap().unwrap();
    assert_eq!(values(&record), ["v"]);
    // Repair runs in the background once every replica has answered.
    for _ in 0..100 {
        if cluster.local(missed, &key("k")).is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(
        cluster.local(missed, &key("k")),
        cluster.local(replicas[0], &key("k"))
    );
}

#[tokio::test]
async fn a_node_that_is_not_a_replica_forwards_the_write() {
    let cluster = cluster(5, 3);
    let replicas = cluster.coordinator(0).replicas(&key("k"));
    let outsider = (0..5)
        .map(NodeId)
        .find(|id| !replicas.contains(id))
        .unwrap();
    let version = cluster
        .coordinator(outsider.0)
        .write(put("k", "v", Context::default()), 3, false)
        .await
        .unwrap();
    assert!(!version.is_empty());
    assert!(
        cluster.local(outsider, &key("k")).is_none(),
        "the outsider stores nothing"
    );
    for replica in &replicas {
        assert_eq!(values(&cluster.local(*replica, &key("k")).unwrap()), ["v"]);
    }
    // The version names exactly that write: writing with it supersedes it.
    cluster
        .coordinator(outsider.0)
        .write(put("k", "w", version), 3, false)
        .await
        .unwrap();
    let record = cluster
        .coordinator(outsider.0)
        .read(&key("k"), 3)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(values(&record), ["w"]);
}

#[tokio::test]
async fn quorum_larger_than_the_cluster_is_unavailable() {
    let cluster = cluster(2, 3);
    let error = cluster
        .coordinator(0)
        .write(put("k", "v", Context::default()), 3, false)
        .await
        .unwrap_err();
    assert_eq!(
        error,
        CoordinatorError::QuorumUnavailable {
            acked: 0,
            required: 3,
            write: true
        }
    );
}

/// A replica detected down: its copy goes to the first fallback as a hint, which
/// counts toward W; a read finds it there; once the replica is back, handoff
/// delivers it and forgets the hint.
#[tokio::test]
async fn sloppy_quorum_hints_a_fallback_and_handoff_delivers() {
    let cluster = cluster(5, 3);
    let list = cluster.coordinator(0).replicas(&key("k"));
    let ring = cluster.nodes[&NodeId(0)].membership.ring();
    let fallback = ring.preference_list(key("k").token(), 3).fallbacks()[0];
    let down = list[2];
    cluster.set_down(down, true);
    cluster.detect_down(&[down]);

    let coordinator = cluster.coordinator(list[0].0);
    coordinator
        .write(put("k", "v", Context::default()), 3, false)
        .await
        .unwrap();
    assert_eq!(cluster.hints_for(fallback, down), 1);
    assert!(
        cluster.local(fallback, &key("k")).is_none(),
        "a hint, not data"
    );
    assert!(cluster.local(down, &key("k")).is_none());
    // Only true replicas count toward R: two are up, so r=3 fails, r=2 works.
    assert!(matches!(
        coordinator.read(&key("k"), 3).await,
        Err(CoordinatorError::QuorumUnavailable { acked: 2, .. })
    ));
    let record = coordinator.read(&key("k"), 2).await.unwrap().unwrap();
    assert_eq!(values(&record), ["v"]);
    // The fallback standing in for the down replica is read too, and what it holds
    // for the key is merged in (here a hint only it has).
    let elsewhere = Node::new(
        Arc::new(MemoryEngine::new()),
        cluster.clock.clone(),
        ActorId(777),
        ConflictPolicy::Siblings,
    );
    let only_hinted = elsewhere
        .write(put("k", "hinted-elsewhere", Context::default()))
        .unwrap()
        .record;
    cluster.nodes[&fallback]
        .node
        .store_hint(down, &key("k"), &only_hinted)
        .unwrap()
        .await
        .unwrap();
    let record = cluster
        .coordinator(list[0].0)
        .read(&key("k"), 1)
        .await
        .unwrap()
        .unwrap();
    assert!(
        values(&record).contains(&"hinted-elsewhere".to_string()),
        "{record:?}"
    );

    // Not handed off while the target is down.
    let report = cluster.handoff(fallback).round().await;
    assert_eq!(report.delivered, 0);
    assert_eq!(cluster.hints_for(fallback, down), 1);

    cluster.set_down(down, false);
    cluster.beat_all_but(&[]);
    let report = cluster.handoff(fallback).round().await;
    assert_eq!(report.delivered, 1);
    assert_eq!(cluster.hints_for(fallback, down), 0);
    assert_eq!(
        cluster.local(down, &key("k")),
        cluster.local(list[0], &key("k"))
    );
}

/// A replica that fails without being detected: W is met by the others, and the
/// coordinator keeps a hint for it (the only node left in a 3-node cluster).
#[tokio::test]
async fn an_undetected_failure_leaves_a_hint_on_the_coordinator() {
    let cluster = cluster(3, 3);
    let list = cluster.coordinator(0).replicas(&key("k"));
    let (me, missed) = (list[0], list[2]);
    cluster.set_down(missed, true);
    cluster
        .coordinator(me.0)
        .write(put("k", "v", Context::default()), 2, false)
        .await
        .unwrap();
    // The hint is placed in the background once the failed call returns.
    for _ in 0..100 {
        if cluster.hints_for(me, missed) == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(cluster.hints_for(me, missed), 1);
    cluster.set_down(missed, false);
    let report = cluster.handoff(me).round().await;
    assert_eq!(report.delivered, 1);
    assert_eq!(values(&cluster.local(missed, &key("k")).unwrap()), ["v"]);
}

/// A fallback over `max_hints_bytes` refuses; the coordinator keeps the hint but
/// it does not count, so W=3 with one replica down fails, saying 2 of 3.
#[tokio::test]
async fn a_full_fallback_refuses_hints_and_they_do_not_count() {
    let mut cluster = cluster(4, 3);
    let list = cluster.coordinator(0).replicas(&key("k"));
    let ring = cluster.nodes[&NodeId(0)].membership.ring();
    let fallback = ring.preference_list(key("k").token(), 3).fallbacks()[0];
    // Replace the fallback's node with one that takes no hints.
    let full = Arc::new(TestNode {
        node: Arc::new(
            Node::new(
                Arc::new(MemoryEngine::new()),
                cluster.clock.clone(),
                ActorId(999),
                ConflictPolicy::Siblings,
            )
            .with_max_hints_bytes(0),
        ),
        membership: cluster.nodes[&fallback].membership.clone(),
        coordinator: OnceLock::new(),
    });
    cluster.nodes.insert(fallback, full);
    let network = Arc::new(Network::default());
    network.nodes.set(cluster.nodes.clone()).ok().unwrap();
    let coordinator = Arc::new(Coordinator::new(
        cluster.nodes[&list[0]].membership.clone(),
        network.clone(),
        Arc::new(TokioSpawn),
        Settings {
            replication_factor: 3,
            request_timeout: Duration::from_millis(500),
        },
    ));
    let down = list[2];
    network.down.lock().unwrap().push(down);
    cluster.detect_down(&[down]);
    let error = coordinator
        .write(put("k", "v", Context::default()), 3, false)
        .await
        .unwrap_err();
    assert_eq!(
        error,
        CoordinatorError::QuorumUnavailable {
            acked: 2,
            required: 3,
            write: true
        }
    );
    assert_eq!(cluster.hints_for(fallback, down), 0);
    assert_eq!(
        cluster.hints_for(list[0], down),
        1,
        "kept by the coordinator"
    );
}

/// Hints older than `hint_ttl_ms` are dropped, not delivered.
#[tokio::test]
async fn expired_hints_are_dropped() {
    let cluster = cluster(3, 3);
    let list = cluster.coordinator(0).replicas(&key("k"));
    let (me, missed) = (list[0], list[2]);
    cluster.set_down(missed, true);
    cluster.detect_down(&[missed]);
    cluster
        .coordinator(me.0)
        .write(put("k", "v", Context::default()), 2, false)
        .await
        .unwrap();
    assert_eq!(cluster.hints_for(me, missed), 1);
    cluster.clock.advance(10_000);
    cluster.set_down(missed, false);
    cluster.beat_all_but(&[]);
    let report = cluster.handoff(me).round().await;
    assert_eq!((report.delivered, report.expired), (0, 1));
    assert_eq!(cluster.hints_for(me, missed), 0);
    assert!(cluster.local(missed, &key("k")).is_none());
}

fn anti_entropy(cluster: &Cluster, id: NodeId) -> AntiEntropy {
    let node = &cluster.nodes[&id];
    AntiEntropy::new(
        node.node.clone(),
        node.membership.clone(),
        cluster.network.clone(),
        Arc::new(TokioSpawn),
        AntiEntropySettings {
            replication_factor: 3,
            bytes_per_sec: u64::MAX,
            request_timeout: Duration::from_millis(500),
        },
    )
}

/// A replica that missed writes (and no hint reached it) gets every one of them
/// from a peer through Merkle-tree anti-entropy; when one key differs, only that key
/// moves.
#[tokio::test]
async fn anti_entropy_repairs_exactly_the_keys_that_differ() {
    let cluster = cluster(3, 3);
    let missed = NodeId(2);
    cluster.set_down(missed, true);
    for i in 0..50 {
        cluster
            .coordinator(0)
            .write(put(&format!("k{i}"), "v", Context::default()), 2, false)
            .await
            .unwrap();
    }
    cluster.set_down(missed, false);
    let engines: Vec<AntiEntropy> = (0..3)
        .map(|id| anti_entropy(&cluster, NodeId(id)))
        .collect();
    // The first round of each builds its trees; node 2's then pulls what it missed.
    for ae in &engines {
        ae.round().await;
    }
    let report = engines[2].round().await;
    for i in 0..50 {
        let k = key(&format!("k{i}"));
        assert_eq!(
            cluster.local(missed, &k),
            cluster.local(NodeId(0), &k),
            "k{i}"
        );
    }
    assert!(
        engines.iter().all(|ae| ae.status().1.keys_repaired <= 50),
        "nothing repaired twice"
    );
    assert_eq!(
        report.keys_pulled + report.keys_pushed,
        0,
        "converged: {report:?}"
    );

    // One key changes on one replica only: one leaf differs, one key moves.
    let lone = cluster.nodes[&NodeId(1)]
        .node
        .write(put("k7", "only-here", Context::default()))
        .unwrap();
    lone.durable.await.unwrap();
    let report = engines[1].round().await;
    let report = if report.keys_pushed + report.keys_pulled == 0 {
        engines[1].round().await // the first round went to the other peer
    } else {
        report
    };
    assert_eq!(report.leaves_differing, 1, "{report:?}");
    assert_eq!(report.keys_pushed, 1, "{report:?}");
    assert_eq!(report.keys_pulled, 1, "{report:?}");
    let (arcs, totals) = engines[1].status();
    assert!(
        arcs.iter()
            .all(|(_, status)| status.last_converged_ms.is_some())
    );
    assert!(totals.rounds >= 2);
}
