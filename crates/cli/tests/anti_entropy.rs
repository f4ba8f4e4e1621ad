//! Anti-entropy with real processes (issue 7, DESIGN.md §6): a node whose data
//! directory is wiped while it is down gets every key back from its peers through
//! Merkle-tree sync, with hinted handoff disabled so nothing else can restore it.

#![allow(clippy::unwrap_used)] // Tests fail loudly on anything unexpected.

mod common;

use std::time::{Duration, Instant};

use common::Cluster;
use serde_json::json;

const KEYS: usize = 200;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anti_entropy_restores_a_wiped_node() {
    let mut cluster = Cluster::start(
        3,
        &[
            "--max-hints-bytes",
            "0",
            "--anti-entropy-interval-ms",
            "200",
        ],
    )
    .await;
    let keys: Vec<String> = (0..KEYS).map(|i| format!("ae-{i}")).collect();
    for (i, key) in keys.iter().enumerate() {
        let (status, body) = cluster
            .put(
                i % 2,
                &format!("{key}?w=3"),
                json!({"value": format!("v-{key}")}),
            )
            .await;
        assert_eq!(status, 200, "{body}");
    }

    let wiped = 2;
    cluster.kill(wiped);
    std::fs::remove_dir_all(&cluster.nodes[wiped].dir).unwrap();
    cluster.restart(wiped).await;

    let started = Instant::now();
    let mut missing: Vec<&String> = keys.iter().collect();
    while !missing.is_empty() {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "{} keys still missing on the wiped node, e.g. {}",
            missing.len(),
            missing[0]
        );
        let mut still = Vec::new();
        for key in missing {
            if !cluster.holds_like_the_others(wiped, key).await {
                still.push(key);
            }
        }
        missing = still;
        if !missing.is_empty() {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    let took = started.elapsed();

    // It was anti-entropy: the nodes count the keys they repaired.
    let mut repaired = 0;
    for index in 0..3 {
        let status = cluster.json(index, "/v1/cluster/status").await;
        repaired += status["anti_entropy"]["keys_repaired"].as_u64().unwrap();
    }
    assert!(repaired >= KEYS as u64, "{repaired} keys repaired");
    let (status, body) = cluster.get(wiped, &format!("{}?r=1", keys[0])).await;
    assert_eq!((status, body["value"].as_str()), (200, Some("v-ae-0")));
    eprintln!("{KEYS} keys restored to a wiped node in {took:?} ({repaired} repairs counted)");

    // `ringkv status` shows every node healthy and the anti-entropy summary.
    let url = format!("http://{}", cluster.nodes[wiped].http_addr);
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_ringkv"))
        .args(["status", "--url", &url])
        .output()
        .unwrap();
    let table = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{table}");
    assert_eq!(table.matches("healthy").count(), 3, "{table}");
    assert!(
        table.contains("anti-entropy:") && table.contains("keys repaired"),
        "{table}"
    );
    cluster.stop().await;
}
