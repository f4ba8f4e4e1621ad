//! TTL purge and tombstone GC (issue 7) on the in-memory cluster, the clock moved by
//! hand: a deleted key is forgotten once anti-entropy confirmed every replica holds
//! its tombstone and the floor passed, or past the grace; a replica that missed the
//! delete holds GC back; a forgotten tombstone is not copied back; an expired value
//! becomes a tombstone, then goes too.

#![allow(clippy::unwrap_used)] // Tests fail loudly on anything unexpected.

mod common;

use common::*;
use ringkv_cluster::purge::{Purge, PurgeSettings};
use ringkv_cluster::tombstone::{Collected, Collector, TombstoneGc};

const GC: TombstoneGc = TombstoneGc {
    grace: Duration::from_secs(3_600),
    floor: Duration::from_secs(10),
    settle: Duration::from_secs(1),
};

/// Every node's collector, anti-entropy and purge sweep.
struct Gc {
    collectors: Vec<Arc<Collector>>,
    anti_entropy: Vec<AntiEntropy>,
    purges: Vec<Purge>,
}

fn gc(cluster: &Cluster, settings: TombstoneGc) -> Gc {
    let mut gc = Gc {
        collectors: Vec::new(),
        anti_entropy: Vec::new(),
        purges: Vec::new(),
    };
    for (id, node) in &cluster.nodes {
        assert_eq!(id.0 as usize, gc.collectors.len());
        let collector = Arc::new(Collector::new(node.node.clone(), settings));
        gc.anti_entropy.push(
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
            .with_collector(collector.clone()),
        );
        gc.purges.push(Purge::new(
            node.node.clone(),
            Arc::new(TokioSpawn),
            Some(collector.clone()),
            PurgeSettings {
                page_keys: 16,
                keys_per_round: 1_000,
            },
        ));
        gc.collectors.push(collector);
    }
    gc
}

impl Gc {
    /// One anti-entropy round on every node, `rounds` times (each round goes to the
    /// next peer; a node's first round builds its trees, and a peer without trees
    /// yet confirms nothing, so three rounds reach both peers of every node).
    async fn anti_entropy_rounds(&self, rounds: usize) {
        for _ in 0..rounds {
            for ae in &self.anti_entropy {
                ae.round().await;
            }
        }
    }

    async fn purge_all(&self) -> Collected {
        let mut total = Collected::default();
        for purge in &self.purges {
            let report = purge.round().await;
            assert!(!report.failed);
            total.ack += report.collected.ack;
            total.grace += report.collected.grace;
        }
        total
    }
}

/// Writes k (w = 3), then deletes it with the version it got; returns nothing but
/// leaves a tombstone on `replicas`.
async fn write_then_delete(cluster: &Cluster, delete_quorum: u8) {
    let version = cluster
        .coordinator(0)
        .write(put("k", "v", Context::default()), 3, false)
        .await
        .unwrap();
    cluster
        .coordinator(0)
        .write(
            Write {
                key: key("k"),
                body: WriteBody::Delete,
                seen: version,
                ttl: None,
            },
            delete_quorum,
            false,
        )
        .await
        .unwrap();
}

fn holders(cluster: &Cluster) -> Vec<u64> {
    (0..3)
        .filter(|id| cluster.local(NodeId(*id), &key("k")).is_some())
        .collect()
}

/// The path of GC by acknowledgement: nothing goes before every replica confirmed
/// holding the tombstone, nor before the floor and the settle time passed; then every
/// replica forgets it, and a new write of the key is not taken for the deleted one.
#[tokio::test]
async fn a_delete_is_forgotten_once_every_replica_confirmed_it_and_the_floor_passed() {
    let cluster = cluster(3, 3);
    write_then_delete(&cluster, 3).await;
    let gc = gc(&cluster, GC);
    gc.anti_entropy_rounds(3).await;
    assert_eq!(
        gc.purge_all().await,
        Collected::default(),
        "floor not passed"
    );
    cluster.clock.advance(9_000);
    cluster.beat_all_but(&[]);
    assert_eq!(
        gc.purge_all().await,
        Collected::default(),
        "still under the floor"
    );
    assert_eq!(holders(&cluster), [0, 1, 2]);
    cluster.clock.advance(1_000);
    cluster.beat_all_but(&[]);
    assert_eq!(gc.purge_all().await, Collected { ack: 3, grace: 0 });
    assert!(holders(&cluster).is_empty());
    assert!(
        cluster
            .coordinator(1)
            .read(&key("k"), 3)
            .await
            .unwrap()
            .is_none()
    );

    // The key lives again: the new value is not mistaken for the one deleted.
    cluster
        .coordinator(2)
        .write(put("k", "again", Context::default()), 3, false)
        .await
        .unwrap();
    let record = cluster
        .coordinator(1)
        .read(&key("k"), 3)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(values(&record), ["again"]);
}

/// Confirmations older than the last change of the arc do not count: a write to any
/// key of the arc after anti-entropy compared means comparing again.
#[tokio::test]
async fn a_change_after_the_confirmation_holds_gc_back_until_confirmed_again() {
    let cluster = cluster(3, 3);
    write_then_delete(&cluster, 3).await;
    let gc = gc(&cluster, GC);
    gc.anti_entropy_rounds(3).await;
    cluster.clock.advance(10_000);
    cluster.beat_all_but(&[]);
    // The same key again, on one replica only: its record is no longer what the
    // peers were confirmed to hold.
    let tombstone = cluster.local(NodeId(0), &key("k")).unwrap();
    let mut other = tombstone.clone();
    other.update(
        &tombstone.context().clone(),
        ActorId(77),
        ringkv_core::Sibling {
            hlc: ringkv_core::Hlc::new(cluster.clock.now_ms() - 20_000, 0),
            expires_at_ms: None,
            body: ringkv_core::Body::Tombstone,
        },
    );
    cluster.nodes[&NodeId(0)]
        .node
        .replicate(&key("k"), &other)
        .unwrap()
        .await
        .unwrap();
    let collected = gc.purges[0].round().await.collected;
    assert_eq!(collected, Collected::default());
    assert_eq!(holders(&cluster), [0, 1, 2]);
    // Anti-entropy spreads it; once every replica confirmed again and the settle
    // time passed, it goes.
    gc.anti_entropy_rounds(4).await;
    cluster.clock.advance(1_000);
    cluster.beat_all_but(&[]);
    assert_eq!(gc.purge_all().await, Collected { ack: 3, grace: 0 });
    assert!(holders(&cluster).is_empty());
}

/// A replica that missed the delete still holds the value: the others keep their
/// tombstones (however old) until anti-entropy brought it the tombstone and confirmed
/// it; the value never comes back.
#[tokio::test]
async fn a_replica_that_missed_the_delete_holds_gc_back_and_the_value_stays_deleted() {
    let cluster = cluster(3, 3);
    let missed = NodeId(2);
    let version = cluster
        .coordinator(0)
        .write(put("k", "v", Context::default()), 3, false)
        .await
        .unwrap();
    cluster.set_down(missed, true);
    cluster
        .coordinator(0)
        .write(
            Write {
                key: key("k"),
                body: WriteBody::Delete,
                seen: version,
                ttl: None,
            },
            2,
            false,
        )
        .await
        .unwrap();
    assert_eq!(values(&cluster.local(missed, &key("k")).unwrap()), ["v"]);
    let gc = gc(&cluster, GC);
    // Nodes 0 and 1 compare with each other only (node 2, cut off, runs nothing).
    for _ in 0..3 {
        for ae in &gc.anti_entropy[..2] {
            ae.round().await;
        }
    }
    cluster.clock.advance(20_000);
    cluster.beat_all_but(&[]);
    assert_eq!(gc.purge_all().await, Collected::default());
    assert_eq!(holders(&cluster), [0, 1, 2]);

    cluster.set_down(missed, false);
    cluster.beat_all_but(&[]);
    gc.anti_entropy_rounds(4).await;
    assert!(cluster.local(missed, &key("k")).unwrap().only_tombstones());
    cluster.clock.advance(1_000);
    cluster.beat_all_but(&[]);
    assert_eq!(gc.purge_all().await, Collected { ack: 3, grace: 0 });
    gc.anti_entropy_rounds(2).await;
    assert!(holders(&cluster).is_empty(), "nothing came back");
}

/// Past the grace a tombstone goes without any confirmation (rule (b)).
#[tokio::test]
async fn past_the_grace_a_tombstone_goes_without_confirmations() {
    let cluster = cluster(3, 3);
    write_then_delete(&cluster, 3).await;
    let gc = gc(&cluster, GC);
    cluster.clock.advance(3_599_000);
    assert_eq!(gc.purge_all().await, Collected::default());
    cluster.clock.advance(1_000);
    assert_eq!(gc.purge_all().await, Collected { ack: 0, grace: 3 });
    assert!(holders(&cluster).is_empty());
}

/// One replica forgot the tombstone, another not yet: anti-entropy between them
/// neither copies it back to the one that forgot it nor pushes it there; the other
/// forgets it too.
#[tokio::test]
async fn a_forgotten_tombstone_is_not_copied_back_by_anti_entropy() {
    let cluster = cluster(3, 3);
    write_then_delete(&cluster, 3).await;
    let gc = gc(&cluster, GC);
    gc.anti_entropy_rounds(3).await;
    cluster.clock.advance(10_000);
    cluster.beat_all_but(&[]);
    assert_eq!(gc.purges[0].round().await.collected.ack, 1);
    assert_eq!(holders(&cluster), [1, 2]);
    // Node 0 meets both peers, which still hold the tombstone: it takes nothing.
    for _ in 0..2 {
        let report = gc.anti_entropy[0].round().await;
        assert_eq!(report.keys_pulled + report.keys_pushed, 0, "{report:?}");
        assert_eq!(report.arcs_differing, 1, "{report:?}");
    }
    assert_eq!(holders(&cluster), [1, 2]);
    // Node 1 meets node 0, and forgets it instead of pushing it back.
    let report = loop {
        let report = gc.anti_entropy[1].round().await;
        if report.peer == Some(NodeId(0)) {
            break report;
        }
    };
    assert_eq!(report.keys_collected, 1, "{report:?}");
    assert_eq!(report.keys_pushed, 0, "{report:?}");
    assert_eq!(holders(&cluster), [2]);
    assert_eq!(gc.collectors[1].collected(), Collected { ack: 1, grace: 0 });
}

/// An expired value turns into a tombstone on every replica (reads see nothing
/// either way), which then goes like a delete's.
#[tokio::test]
async fn an_expired_value_is_purged_then_forgotten() {
    let cluster = cluster(3, 3);
    let mut write = put("k", "short-lived", Context::default());
    write.ttl = Some(Duration::from_secs(2));
    cluster.coordinator(0).write(write, 3, false).await.unwrap();
    let gc = gc(&cluster, GC);
    for purge in &gc.purges {
        assert_eq!(purge.round().await.ttl_purged, 0);
    }
    cluster.clock.advance(2_000);
    for purge in &gc.purges {
        assert_eq!(purge.round().await.ttl_purged, 1);
    }
    for id in 0..3 {
        assert!(
            cluster
                .local(NodeId(id), &key("k"))
                .unwrap()
                .only_tombstones()
        );
    }
    cluster.beat_all_but(&[]);
    gc.anti_entropy_rounds(3).await;
    cluster.clock.advance(8_000);
    cluster.beat_all_but(&[]);
    assert_eq!(gc.purge_all().await, Collected { ack: 3, grace: 0 });
    assert!(holders(&cluster).is_empty());
    let totals = gc.purges[0].totals();
    assert_eq!(totals.ttl_purged, 1);
    assert_eq!(totals.tombstones_purged.ack, 1);
    assert!(totals.sweeps >= 3);
}

/// One replica forgot the tombstone, then a write to another key of the same arc
/// made the others' confirmations out of date, so they can no longer forget it by
/// the confirmations they had, nor get new ones from a replica that no longer holds
/// it. They push it back; everything is confirmed again and goes: no livelock.
#[tokio::test]
async fn replicas_left_behind_by_a_forgotten_tombstone_catch_up() {
    let cluster = cluster(3, 3);
    write_then_delete(&cluster, 3).await;
    let gc = gc(&cluster, GC);
    gc.anti_entropy_rounds(3).await;
    cluster.clock.advance(10_000);
    cluster.beat_all_but(&[]);
    assert_eq!(gc.purges[0].round().await.collected.ack, 1);
    // A key in the same arc as k, written everywhere.
    let node = &cluster.nodes[&NodeId(1)].node;
    let (arc, _) = node.arc_of(key("k").token()).unwrap();
    let neighbour = (0..100_000)
        .map(|i| format!("n{i}"))
        .find(|name| arc.contains(key(name).token()))
        .unwrap();
    cluster
        .coordinator(1)
        .write(put(&neighbour, "x", Context::default()), 3, false)
        .await
        .unwrap();
    let mut rounds = 0;
    while !holders(&cluster).is_empty() {
        rounds += 1;
        assert!(rounds <= 20, "k still held by {:?}", holders(&cluster));
        gc.anti_entropy_rounds(2).await;
        cluster.clock.advance(500);
        cluster.beat_all_but(&[]);
        gc.purge_all().await;
    }
    let neighbour_record = cluster.local(NodeId(0), &key(&neighbour)).unwrap();
    assert_eq!(values(&neighbour_record), ["x"]);
}
