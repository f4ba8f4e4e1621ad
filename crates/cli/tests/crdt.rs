//! CRDTs with real processes (issue 8): three clients increment one PN-counter
//! through three different nodes with w=1 while one of the nodes is paused
//! (SIGSTOP) and resumed (SIGCONT); after heal every node holds the same record and
//! reads 600. Three nodes on 127.0.0.1-3 with short thresholds; every wait is
//! bounded.

#![allow(clippy::unwrap_used)] // Tests fail loudly on anything unexpected.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{Cluster, Signal};
use serde_json::Value;
use tokio::sync::Barrier;

const FLAGS: &[&str] = &[
    "--suspicion-threshold-ms",
    "600",
    "--down-threshold-ms",
    "1200",
    "--permanent-failure-threshold-ms",
    "600000",
    "--anti-entropy-interval-ms",
    "500",
];

const KEY: &str = "visits";
const PER_CLIENT: usize = 200;

/// One increment through node `index`; every request must succeed (a failed one
/// might still count, so it could not simply be retried).
async fn increment(cluster: &Cluster, index: usize) {
    let response = cluster
        .client
        .post(cluster.url(index, &format!("/v1/crdt/pncounter/{KEY}?w=1")))
        .header("content-type", "application/json")
        .body(r#"{"increment": 1}"#)
        .send()
        .await
        .expect("increment answered");
    let status = response.status();
    let body: Value = response.json().await.unwrap_or(Value::Null);
    assert_eq!(status, 200, "increment through node {index}: {body}");
}

/// The counter read through node `index` from all three replicas.
async fn value_through(cluster: &Cluster, index: usize) -> Option<i64> {
    let response = cluster
        .client
        .get(cluster.url(index, &format!("/v1/crdt/pncounter/{KEY}?r=3")))
        .send()
        .await
        .ok()?;
    let body: Value = response.json().await.ok()?;
    body["value"].as_i64()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn increments_through_every_node_survive_a_paused_node() {
    let cluster = Arc::new(Cluster::start(3, FLAGS).await);
    let paused = 2;
    // Clients do half their increments, then the node is paused: the other two
    // go on through their nodes; the paused node's client waits until it is
    // resumed (a request caught in flight by the pause would outlive its timeout
    // inside the stopped process and fail, and a failed increment may still have
    // counted, so it cannot be retried), then does the rest.
    let halfway = Arc::new(Barrier::new(4));
    let resumed = Arc::new(Barrier::new(2));
    let mut clients = Vec::new();
    for index in 0..3 {
        let (cluster, halfway, resumed) = (cluster.clone(), halfway.clone(), resumed.clone());
        clients.push(tokio::spawn(async move {
            for done in 0..PER_CLIENT {
                if done == PER_CLIENT / 2 {
                    halfway.wait().await;
                    if index == paused {
                        resumed.wait().await;
                    }
                }
                increment(&cluster, index).await;
            }
        }));
    }
    halfway.wait().await;
    cluster.signal(paused, Signal::Stop);
    let stopped = Instant::now();
    // Past the down threshold: the others hint the paused node's replica.
    tokio::time::sleep(Duration::from_millis(2_000)).await;
    cluster.signal(paused, Signal::Continue);
    let paused_for = stopped.elapsed();
    resumed.wait().await;
    for client in clients {
        client.await.unwrap();
    }

    // Heal: hints and anti-entropy bring every replica to the same record.
    let started = Instant::now();
    let expected = i64::try_from(3 * PER_CLIENT).unwrap();
    loop {
        let mut values = Vec::new();
        for index in 0..3 {
            values.push(value_through(&cluster, index).await);
        }
        let mut same = true;
        for index in 0..3 {
            same &= cluster.holds_like_the_others(index, KEY).await;
        }
        if same && values.iter().all(|value| *value == Some(expected)) {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "after heal: values {values:?}, replicas identical: {same}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    eprintln!(
        "{expected} increments through 3 nodes, node {paused} paused for {paused_for:?}; \
         converged {:?} after the clients finished",
        started.elapsed()
    );
    let cluster = Arc::into_inner(cluster).expect("clients are done");
    cluster.stop().await;
}
