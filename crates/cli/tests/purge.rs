//! TTL purge and tombstone GC with real processes (issue 7): with short thresholds
//! set through config keys, a key written with a ttl and a deleted key disappear
//! from every replica's storage (`/v1/debug/key` shows nothing held), by
//! acknowledgement (the grace is an hour), and the purge counters move.

#![allow(clippy::unwrap_used)] // Tests fail loudly on anything unexpected.

mod common;

use std::time::{Duration, Instant};

use common::Cluster;
use serde_json::{Value, json};

/// Whether no replica of `key` holds anything, as `/v1/debug/key` on `index` sees.
async fn held_nowhere(cluster: &Cluster, index: usize, key: &str) -> bool {
    let debug = cluster.json(index, &format!("/v1/debug/key/{key}")).await;
    let Some(replicas) = debug["replicas"].as_array() else {
        return false;
    };
    // `"record": null` when a replica holds nothing (else its versions are listed).
    replicas.len() == 3
        && replicas
            .iter()
            .all(|replica| replica.get("record").is_some_and(Value::is_null))
}

/// Sums a number of `/v1/cluster/status` over every node.
async fn total(cluster: &Cluster, pointer: &str) -> u64 {
    let mut sum = 0;
    for index in 0..cluster.nodes.len() {
        let status = cluster.json(index, "/v1/cluster/status").await;
        sum += status.pointer(pointer).and_then(Value::as_u64).unwrap();
    }
    sum
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_and_deleted_keys_leave_every_replica() {
    // Floor: hint_ttl 300 ms + 2 × request_timeout (2 s); settle 4 s.
    let cluster = Cluster::start(
        3,
        &[
            "--anti-entropy-interval-ms",
            "200",
            "--purge-interval-ms",
            "200",
            "--hint-ttl-ms",
            "300",
            "--tombstone-gc-grace-ms",
            "3600000",
        ],
    )
    .await;
    // 5 s: the three w=3 operations below come well before it expires on a loaded
    // machine.
    let (status, body) = cluster
        .put(0, "short-lived?w=3", json!({"value": "v", "ttl": 5}))
        .await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = cluster.put(1, "deleted?w=3", json!({"value": "v"})).await;
    assert_eq!(status, 200, "{body}");
    let response = cluster
        .client
        .delete(cluster.url(2, "/v1/kv/deleted?w=3"))
        .header("X-Ringkv-Version", body["version"].as_str().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);
    assert_eq!(
        cluster.get(0, "short-lived").await.0,
        200,
        "not expired yet"
    );
    assert_eq!(cluster.get(0, "deleted").await.0, 404);
    assert!(
        !held_nowhere(&cluster, 0, "deleted").await,
        "the tombstones: {}",
        cluster.json(0, "/v1/debug/key/deleted").await
    );

    let started = Instant::now();
    for key in ["short-lived", "deleted"] {
        while !held_nowhere(&cluster, 0, key).await {
            if started.elapsed() > Duration::from_secs(60) {
                let mut statuses = Vec::new();
                for index in 0..3 {
                    statuses.push(cluster.json(index, "/v1/cluster/status").await);
                }
                panic!(
                    "{key} still held: {}\nstatus: {statuses:#?}",
                    cluster.json(0, &format!("/v1/debug/key/{key}")).await
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    eprintln!(
        "both keys gone from every replica after {:?}",
        started.elapsed()
    );

    assert!(total(&cluster, "/purge/ttl_purged").await >= 1);
    assert!(total(&cluster, "/purge/tombstones_purged/ack").await >= 2);
    assert_eq!(total(&cluster, "/purge/tombstones_purged/grace").await, 0);
    let mut metrics = String::new();
    for index in 0..3 {
        let response = cluster
            .client
            .get(cluster.url(index, "/metrics"))
            .send()
            .await
            .unwrap();
        metrics.push_str(&response.text().await.unwrap());
    }
    assert!(metrics.contains("ringkv_ttl_purged_total"), "{metrics}");
    assert!(
        metrics.contains("ringkv_tombstones_purged_total{reason=\"ack\"}"),
        "{metrics}"
    );

    // `ringkv status` shows it.
    let url = format!("http://{}", cluster.nodes[0].http_addr);
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_ringkv"))
        .args(["status", "--url", &url])
        .output()
        .unwrap();
    let table = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{table}");
    assert!(
        table.contains("purge:") && table.contains("tombstones forgotten"),
        "{table}"
    );

    // The deleted key lives again, and the new value is not taken for the old one.
    let (status, body) = cluster
        .put(0, "deleted?w=3", json!({"value": "again"}))
        .await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = cluster.get(1, "deleted?r=3").await;
    assert_eq!((status, body["value"].as_str()), (200, Some("again")));
    cluster.stop().await;
}
