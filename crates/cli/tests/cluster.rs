//! Real `ringkv` processes on 127.0.0.x forming a 3-node cluster (N=3): quorum reads
//! and writes across nodes, siblings, nodes paused with SIGSTOP and killed with
//! SIGKILL, read repair, and the cluster secret.

#![allow(clippy::unwrap_used)] // Tests fail loudly on anything unexpected.

mod common;

use std::time::{Duration, Instant};

use common::{Cluster, NodeProcess, Signal};
use serde_json::{Value, json};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn write_on_one_node_reads_on_another() {
    let cluster = Cluster::start(3, &[]).await;
    let (status, _) = cluster.put(0, "k?w=3", json!({"value": "v"})).await;
    assert_eq!(status, 200);
    for node in 0..3 {
        let (status, body) = cluster.get(node, "k?r=1").await;
        assert_eq!(
            (status, body["value"].as_str()),
            (200, Some("v")),
            "node {node}"
        );
    }
    // r/w outside 1..=N are bad requests.
    for path in ["k?r=0", "k?r=4"] {
        assert_eq!(cluster.get(1, path).await.0, 400, "{path}");
    }
    assert_eq!(cluster.put(1, "k?w=4", json!({"value": "v"})).await.0, 400);
    let status: Value = cluster.json(2, "/v1/cluster/status").await;
    assert_eq!(status["nodes"].as_array().unwrap().len(), 3, "{status}");
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_writes_give_siblings_that_a_versioned_write_resolves() {
    let cluster = Cluster::start(3, &[]).await;
    assert_eq!(cluster.put(0, "k?w=3", json!({"value": "a"})).await.0, 200);
    assert_eq!(cluster.put(1, "k?w=3", json!({"value": "b"})).await.0, 200);
    let (status, body) = cluster.get(2, "k?r=3").await;
    assert_eq!(status, 300, "{body}");
    let mut siblings: Vec<&str> = body["siblings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    siblings.sort();
    assert_eq!(siblings, ["a", "b"]);
    let version = body["version"].clone();
    assert_eq!(
        cluster
            .put(2, "k?w=3", json!({"value": "c", "version": version}))
            .await
            .0,
        200
    );
    for node in 0..3 {
        let (status, body) = cluster.get(node, "k?r=3").await;
        assert_eq!((status, body["value"].as_str()), (200, Some("c")));
    }
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paused_replicas_fail_all_in_bounded_time_but_not_w1() {
    // A short request timeout (the common one is 2 s): the 503 must come within a
    // bound well above it.
    let cluster = Cluster::start(3, &["--request-timeout-ms", "500"]).await;
    cluster.signal(1, Signal::Stop);
    cluster.signal(2, Signal::Stop);
    let started = Instant::now();
    let (status, body) = cluster
        .put(0, "k?consistency=all", json!({"value": "v"}))
        .await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"]["code"], "quorum_unavailable");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("1 of 3") && message.contains("may have been applied"),
        "{message}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "took {:?}",
        started.elapsed()
    );
    let (status, _) = cluster.put(0, "k2?w=1", json!({"value": "v"})).await;
    assert_eq!(status, 200);
    cluster.signal(1, Signal::Continue);
    cluster.signal(2, Signal::Continue);
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_that_missed_a_write_is_repaired_by_a_read() {
    // No node takes hints, so handoff cannot deliver the write first: the read
    // repairs it.
    let mut cluster = Cluster::start(3, &["--max-hints-bytes", "0"]).await;
    cluster.kill(2);
    assert_eq!(cluster.put(0, "k?w=2", json!({"value": "v"})).await.0, 200);
    cluster.restart(2).await;
    let holds = |debug: &Value, node: u64| {
        debug["replicas"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["node"] == node && r.get("versions").is_some())
    };
    let debug: Value = cluster.json(0, "/v1/debug/key/k").await;
    let node2 = cluster.nodes[2].node_id;
    assert!(!holds(&debug, node2), "node 2 missed the write: {debug}");
    // Node 1 failed to reach node 2 while it was down; it tries again once gossip
    // says node 2 is back (or its backoff of at most 1 s runs out). Wait for that,
    // probing another key.
    let deadline = Instant::now() + Duration::from_secs(10);
    while cluster.get(1, "probe?r=3").await.0 != 404 {
        assert!(
            Instant::now() < deadline,
            "node 1 does not reach node 2 again"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (status, body) = cluster.get(1, "k?r=3").await;
    assert_eq!((status, body["value"].as_str()), (200, Some("v")));
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let debug: Value = cluster.json(0, "/v1/debug/key/k").await;
        if holds(&debug, node2) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "read repair did not reach node 2: {debug}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let metrics = cluster
        .client
        .get(cluster.url(1, "/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(metrics.contains("ringkv_read_repairs_total"), "{metrics}");
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_writes_survive_sigkill_of_one_node() {
    let mut cluster = Cluster::start(3, &[]).await;
    let acked = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let mut writers = tokio::task::JoinSet::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    for writer in 0..20 {
        let (client, url, acked) = (
            cluster.client.clone(),
            cluster.url(writer % 2, ""),
            acked.clone(),
        );
        writers.spawn(async move {
            for seq in 0..60 {
                if Instant::now() > deadline {
                    break;
                }
                let key = format!("w{writer}-{seq}");
                let response = client
                    .put(format!("{url}/v1/kv/{key}?w=2"))
                    .json(&json!({"value": key}))
                    .send()
                    .await;
                if matches!(response, Ok(ref r) if r.status() == 200) {
                    acked.lock().unwrap().push(key);
                }
            }
        });
    }
    while acked.lock().unwrap().len() < 200 {
        assert!(Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    cluster.kill(2);
    while writers.join_next().await.is_some() {}
    cluster.restart(2).await;
    let acked = acked.lock().unwrap().clone();
    assert!(acked.len() >= 200);
    for (i, key) in acked.iter().enumerate() {
        let (status, body) = cluster.get(i % 3, &format!("{key}?r=2")).await;
        assert_eq!(
            (status, body["value"].as_str()),
            (200, Some(key.as_str())),
            "{key}"
        );
    }
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_with_the_wrong_secret_cannot_join() {
    let secret = "the-right-secret-0123456789";
    let cluster = Cluster::start(1, &["--cluster-secret", secret]).await;
    let dir = tempfile::tempdir().unwrap();
    let seed = cluster.nodes[0].peer_addr.clone();
    let output = NodeProcess::command(
        9,
        "127.0.0.9",
        dir.path(),
        &[
            "--seeds",
            &seed,
            "--cluster-secret",
            "not-the-secret-at-all-xx",
        ],
    )
    .output()
    .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("secret"), "{stderr}");
    let status: Value = cluster.json(0, "/v1/cluster/status").await;
    assert_eq!(status["nodes"].as_array().unwrap().len(), 1, "{status}");
    cluster.stop().await;
}
