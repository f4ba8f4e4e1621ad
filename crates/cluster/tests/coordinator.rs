//! The coordinator over an in-memory network of nodes with memory engines: quorum
//! writes and reads, siblings, unavailable replicas, forwarding, read repair. The
//! real TCP transport is tested in `ringkv-server`; whole-cluster faults in the
//! simulator.

#![allow(clippy::unwrap_used)] // Tests fail loudly on anything unexpected.

mod common;

use common::*;

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
