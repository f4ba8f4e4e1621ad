//! Failure handling over the in-memory cluster: sloppy quorum and hints, hinted
//! handoff, and Merkle-tree anti-entropy.

#![allow(clippy::unwrap_used)] // Tests fail loudly on anything unexpected.

mod common;

use common::*;

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
