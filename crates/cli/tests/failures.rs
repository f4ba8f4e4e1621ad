//! Failure handling with real processes (issue 6, DESIGN.md §6): the failure
//! detector against SIGSTOP and SIGKILL, sloppy quorum and hinted handoff, hints
//! surviving a crash of the node holding them. Three nodes on 127.0.0.1-3 with
//! short thresholds (`FLAGS`); every wait is bounded.

#![allow(clippy::unwrap_used)] // Tests fail loudly on anything unexpected.

mod common;

use std::time::{Duration, Instant};

use common::{Cluster, Signal};
use serde_json::{Value, json};

const GOSSIP_MS: u64 = 100;
const SUSPICION_MS: u64 = 600;
const DOWN_MS: u64 = 1_200;
const REQUEST_TIMEOUT_MS: u64 = 500;
/// How late a state may be seen: the detector is judged on every request and every
/// gossip round, the test polls every 25 ms, and a heartbeat reaches a node up to a
/// couple of gossip rounds after it was sent.
const SLACK_MS: u64 = 4 * GOSSIP_MS;

/// The request timeout is short here (the common one is 2 s): the write latencies
/// are measured against it.
const FLAGS: &[&str] = &[
    "--request-timeout-ms",
    "500",
    "--suspicion-threshold-ms",
    "600",
    "--down-threshold-ms",
    "1200",
    "--permanent-failure-threshold-ms",
    "600000",
];

/// Node `about`'s entry in node `asked`'s `/v1/cluster/status` (null if missing).
async fn entry(cluster: &Cluster, asked: usize, about: usize) -> Value {
    let status = cluster.json(asked, "/v1/cluster/status").await;
    let id = cluster.nodes[about].node_id;
    status["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|node| node["id"] == id)
        .cloned()
        .unwrap_or(Value::Null)
}

/// Node `about`'s status as node `asked` sees it, and the hints `asked` holds for it.
async fn seen(cluster: &Cluster, asked: usize, about: usize) -> (String, u64) {
    let node = entry(cluster, asked, about).await;
    (
        node["status"].as_str().unwrap_or("missing").to_string(),
        node["hints_queued"].as_u64().unwrap_or(0),
    )
}

/// Node `index`'s own heartbeat, which it bumps once per gossip round.
async fn heartbeat(cluster: &Cluster, index: usize) -> u64 {
    entry(cluster, index, index).await["heartbeat"]
        .as_u64()
        .unwrap()
}

/// Polls until node `asked` sees node `about` as `status`; returns how long it took.
async fn wait_for_status(cluster: &Cluster, asked: usize, about: usize, status: &str) -> Duration {
    let started = Instant::now();
    loop {
        if seen(cluster, asked, about).await.0 == status {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "node {asked} never sees node {about} {status}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// Polls until no running node but `about` holds hints for it; returns how long
/// that took.
async fn wait_for_hints_drained(cluster: &Cluster, holders: &[usize], about: usize) -> Duration {
    let started = Instant::now();
    loop {
        let mut queued = 0;
        for holder in holders {
            queued += seen(cluster, *holder, about).await.1;
        }
        if queued == 0 {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "{queued} hints for node {about} still queued"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Writes `keys` with w=2 through the nodes in `via` in turn; asserts each succeeds
/// and returns the latencies.
async fn write_all(cluster: &Cluster, via: &[usize], keys: &[String]) -> Vec<Duration> {
    let mut latencies = Vec::new();
    for (i, key) in keys.iter().enumerate() {
        let node = via[i % via.len()];
        let started = Instant::now();
        let (status, body) = cluster
            .put(
                node,
                &format!("{key}?w=2"),
                json!({"value": format!("value-of-{key}")}),
            )
            .await;
        latencies.push(started.elapsed());
        assert_eq!(status, 200, "write of {key} through node {node}: {body}");
    }
    latencies
}

fn p99(latencies: &mut [Duration]) -> Duration {
    latencies.sort();
    latencies[(latencies.len() * 99 / 100).min(latencies.len() - 1)]
}

/// SIGSTOP one node: the others see it SUSPICIOUS, then DOWN, within the thresholds;
/// w=2 writes keep succeeding fast, leaving hints for it; after SIGCONT the hints
/// drain and it holds every write it missed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_node_is_detected_and_handed_every_write_it_missed() {
    let cluster = Cluster::start(3, FLAGS).await;
    let paused = 2;
    cluster.signal(paused, Signal::Stop);
    let stopped = Instant::now();

    // Write before the detector notices, while it suspects, and once it has decided.
    let keys: Vec<String> = (0..40).map(|i| format!("key-{i}")).collect();
    let mut latencies = write_all(&cluster, &[0, 1], &keys[..10]).await;
    wait_for_status(&cluster, 0, paused, "suspicious").await;
    let suspicious_at = stopped.elapsed();
    latencies.extend(write_all(&cluster, &[0, 1], &keys[10..20]).await);
    wait_for_status(&cluster, 0, paused, "down").await;
    let down_at = stopped.elapsed();
    assert!(
        suspicious_at >= Duration::from_millis(SUSPICION_MS - GOSSIP_MS)
            && suspicious_at <= Duration::from_millis(SUSPICION_MS + SLACK_MS),
        "suspicious after {suspicious_at:?} (threshold {SUSPICION_MS} ms)"
    );
    assert!(
        down_at >= Duration::from_millis(DOWN_MS - GOSSIP_MS)
            && down_at <= Duration::from_millis(DOWN_MS + SLACK_MS),
        "down after {down_at:?} (threshold {DOWN_MS} ms)"
    );
    let other = wait_for_status(&cluster, 1, paused, "down").await;
    assert!(
        other < Duration::from_millis(SLACK_MS),
        "node 1 took {other:?} more"
    );
    latencies.extend(write_all(&cluster, &[0, 1], &keys[20..]).await);
    let p99 = p99(&mut latencies);
    assert!(
        p99 < Duration::from_millis(REQUEST_TIMEOUT_MS),
        "p99 {p99:?} of w=2 writes with a node paused"
    );

    // Every write left one hint for the paused node, on the node that took it.
    let queued = seen(&cluster, 0, paused).await.1 + seen(&cluster, 1, paused).await.1;
    assert_eq!(queued, 40, "hints queued for the paused node");

    cluster.signal(paused, Signal::Continue);
    let healthy = wait_for_status(&cluster, 0, paused, "healthy").await;
    let drained = wait_for_hints_drained(&cluster, &[0, 1], paused).await;
    for key in &keys {
        assert!(
            cluster.holds_like_the_others(paused, key).await,
            "node {paused} misses {key} after handoff"
        );
    }
    eprintln!(
        "detection: suspicious after {suspicious_at:?}, down after {down_at:?} \
         (thresholds {SUSPICION_MS}/{DOWN_MS} ms); w=2 p99 {p99:?} while paused; \
         healthy {healthy:?} after SIGCONT; 40 hints drained in {drained:?}"
    );
    cluster.stop().await;
}

/// Hints are durable: SIGKILL of the node holding them and a restart lose none, and
/// they are handed off once their target returns.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hints_survive_a_crash_of_the_node_holding_them() {
    let mut cluster = Cluster::start(3, FLAGS).await;
    let (holder, paused) = (0, 2);
    cluster.signal(paused, Signal::Stop);
    wait_for_status(&cluster, holder, paused, "down").await;
    let keys: Vec<String> = (0..30).map(|i| format!("crash-{i}")).collect();
    write_all(&cluster, &[holder], &keys).await;
    assert_eq!(seen(&cluster, holder, paused).await.1, 30);

    cluster.kill(holder);
    cluster.restart_alone(holder);
    // The holder was the first node (no seeds): it relearns the members from the
    // others' gossip.
    cluster.wait_for_members_on(&[holder], 3).await;
    assert_eq!(
        seen(&cluster, holder, paused).await.1,
        30,
        "hints after a SIGKILL and restart of their holder"
    );

    cluster.signal(paused, Signal::Continue);
    wait_for_hints_drained(&cluster, &[holder], paused).await;
    for key in &keys {
        assert!(
            cluster.holds_like_the_others(paused, key).await,
            "node {paused} misses {key}"
        );
    }
    cluster.stop().await;
}

/// A node that restarts (a new generation) is HEALTHY again everywhere within two
/// gossip rounds of serving. Counted in rounds, by the restarted node's own
/// heartbeat (one per round), not in milliseconds: a loaded machine slows the rounds
/// and the HTTP polls alike. The new run's heartbeat starts at 0 again, so a detector
/// that ignored the new generation would wait until it passed the old run's: the old
/// run first beats `OLD_BEATS` times, and the new one must win in a few.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_node_is_healthy_again_within_two_gossip_rounds() {
    const OLD_BEATS: u64 = 30;
    /// Two rounds, and one for the heartbeat read after the poll saw it healthy.
    const ROUNDS: u64 = 3;
    let mut cluster = Cluster::start(3, FLAGS).await;
    let restarted = 1;
    let started = Instant::now();
    while heartbeat(&cluster, restarted).await < OLD_BEATS {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "node {restarted} does not beat"
        );
        tokio::time::sleep(Duration::from_millis(GOSSIP_MS)).await;
    }
    cluster.kill(restarted);
    wait_for_status(&cluster, 0, restarted, "down").await;
    wait_for_status(&cluster, 2, restarted, "down").await;
    cluster.restart(restarted).await;
    let serving = heartbeat(&cluster, restarted).await;
    for other in [0, 2] {
        wait_for_status(&cluster, other, restarted, "healthy").await;
        let rounds = heartbeat(&cluster, restarted).await - serving;
        assert!(
            rounds <= ROUNDS,
            "node {other} sees node {restarted} healthy {rounds} gossip rounds after it \
             served (its heartbeat was {serving} then)"
        );
        eprintln!("node {other} sees node {restarted} healthy {rounds} rounds after it served");
    }
    cluster.stop().await;
}
