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

/// Node `id`'s entry in a `/v1/cluster/status` answer (null if missing).
fn find_node(status: &Value, id: u64) -> Value {
    status["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|node| node["id"] == id)
        .cloned()
        .unwrap_or(Value::Null)
}

/// Node `about`'s entry in node `asked`'s `/v1/cluster/status` (null if missing).
async fn entry(cluster: &Cluster, asked: usize, about: usize) -> Value {
    let status = cluster.json(asked, "/v1/cluster/status").await;
    find_node(&status, cluster.nodes[about].node_id)
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

/// When a node first saw another SUSPICIOUS and DOWN, from one instant.
#[derive(Debug, Clone, Copy)]
struct Detection {
    suspicious: Option<Duration>,
    down: Duration,
}

/// Polls how node `asked` sees node `about`, every 25 ms from a task of its own (so
/// alongside whatever the test does meanwhile), until it sees it down; returns when
/// it first saw each state, from `since`. Each time is taken once the answer is in:
/// never earlier than the verdict.
fn watch(
    cluster: &Cluster,
    asked: usize,
    about: usize,
    since: Instant,
) -> tokio::task::JoinHandle<Detection> {
    let (client, url) = (
        cluster.client.clone(),
        cluster.url(asked, "/v1/cluster/status"),
    );
    let id = cluster.nodes[about].node_id;
    tokio::spawn(async move {
        let mut suspicious = None;
        loop {
            let status: Value = client.get(&url).send().await.unwrap().json().await.unwrap();
            let at = since.elapsed();
            match find_node(&status, id)["status"].as_str() {
                Some("suspicious") => {
                    suspicious.get_or_insert(at);
                }
                Some("down") => {
                    return Detection {
                        suspicious,
                        down: at,
                    };
                }
                _ => {}
            }
            assert!(
                at < Duration::from_secs(15),
                "node {asked} never sees node {about} down"
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    })
}

/// Polls (5 s) until `holders` hold `expected` hints for node `about` between them
/// (a write's hint is stored in the background, after its client had the answer),
/// then asserts that they hold no more.
async fn wait_for_hints(cluster: &Cluster, holders: &[usize], about: usize, expected: u64) {
    let started = Instant::now();
    loop {
        let mut queued = 0;
        for holder in holders {
            queued += seen(cluster, *holder, about).await.1;
        }
        if queued >= expected {
            assert_eq!(queued, expected, "hints queued for node {about}");
            return;
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{queued} of {expected} hints for node {about} queued"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
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

/// Writes `key` with w=2 through node `node`; asserts it succeeds and returns the
/// latency.
async fn write(cluster: &Cluster, node: usize, key: &str) -> Duration {
    let started = Instant::now();
    let (status, body) = cluster
        .put(
            node,
            &format!("{key}?w=2"),
            json!({"value": format!("value-of-{key}")}),
        )
        .await;
    let latency = started.elapsed();
    assert_eq!(status, 200, "write of {key} through node {node}: {body}");
    latency
}

/// Writes `keys` with w=2 through the nodes in `via` in turn.
async fn write_all(cluster: &Cluster, via: &[usize], keys: &[String]) {
    for (i, key) in keys.iter().enumerate() {
        write(cluster, via[i % via.len()], key).await;
    }
}

/// SIGSTOP one node: the others see it SUSPICIOUS, then DOWN, within the thresholds;
/// w=2 writes keep succeeding fast, leaving hints for it; after SIGCONT the hints
/// drain and it holds every write it missed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_node_is_detected_and_handed_every_write_it_missed() {
    let ms = Duration::from_millis;
    let cluster = Cluster::start(3, FLAGS).await;
    let paused = 2;
    // Pause it just after node 0 heard a new heartbeat from it: node 0's detector
    // then counts its silence from (nearly) the pause, so a verdict that comes too
    // early shows too.
    let started = Instant::now();
    let beat = entry(&cluster, 0, paused).await["heartbeat"].clone();
    while entry(&cluster, 0, paused).await["heartbeat"] == beat {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "node {paused} does not beat"
        );
        tokio::time::sleep(ms(5)).await;
    }
    cluster.signal(paused, Signal::Stop);
    let stopped = Instant::now();
    let watchers = [0, 1].map(|asked| watch(&cluster, asked, paused, stopped));

    // Write all along (before the detector notices, while it suspects, once it has
    // decided everywhere, and a few more): (through, started after the pause,
    // latency).
    let mut keys = Vec::new();
    let mut writes = Vec::new();
    let mut after_detection = 0;
    while after_detection < 10 {
        if watchers.iter().all(tokio::task::JoinHandle::is_finished) {
            after_detection += 1;
        }
        let (key, node) = (format!("key-{}", keys.len()), keys.len() % 2);
        let started = stopped.elapsed();
        writes.push((node, started, write(&cluster, node, &key).await));
        keys.push(key);
        tokio::time::sleep(ms(20)).await;
    }
    let mut seen_by = Vec::new();
    for watcher in watchers {
        seen_by.push(watcher.await.unwrap());
    }
    let (on_0, on_1) = (seen_by[0], seen_by[1]);
    let Some(suspicious_at) = on_0.suspicious else {
        panic!(
            "node 0 saw node {paused} down after {:?} without seeing it suspicious",
            on_0.down
        );
    };
    let down_at = on_0.down;
    assert!(
        (ms(SUSPICION_MS - 2 * GOSSIP_MS)..=ms(DOWN_MS)).contains(&suspicious_at)
            && suspicious_at < down_at,
        "suspicious after {suspicious_at:?}, down after {down_at:?} (thresholds \
         {SUSPICION_MS}/{DOWN_MS} ms)"
    );
    assert!(
        (ms(DOWN_MS - 2 * GOSSIP_MS)..=ms(DOWN_MS + 1_000)).contains(&down_at),
        "down after {down_at:?} (threshold {DOWN_MS} ms)"
    );
    assert!(
        on_1.down.abs_diff(down_at) <= ms(1_000),
        "node 1 saw it down after {:?}, node 0 after {down_at:?}",
        on_1.down
    );
    // The writes before their coordinator suspected the paused node waited for the
    // two others only; one that waited for the paused replica would take the
    // request timeout, every one of them.
    let detected = |node: usize| seen_by[node].suspicious.unwrap_or(seen_by[node].down);
    let mut before: Vec<Duration> = writes
        .iter()
        .filter(|(node, started, _)| *started < detected(*node))
        .map(|(_, _, latency)| *latency)
        .collect();
    before.sort();
    assert!(!before.is_empty(), "no write before the detection");
    let median = before[before.len() / 2];
    assert!(
        median < ms(REQUEST_TIMEOUT_MS),
        "median {median:?} of the {} w=2 writes before the pause was detected: {before:?}",
        before.len()
    );

    // Every write left one hint for the paused node, on the node that took it.
    wait_for_hints(&cluster, &[0, 1], paused, keys.len() as u64).await;

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
        "detection: suspicious after {suspicious_at:?}, down after {down_at:?} (node 1: \
         {:?}; thresholds {SUSPICION_MS}/{DOWN_MS} ms); {} w=2 writes before it, median \
         {median:?}, slowest {:?}; healthy {healthy:?} after SIGCONT; {} hints drained \
         in {drained:?}",
        on_1.down,
        before.len(),
        before.last().unwrap(),
        keys.len()
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
    wait_for_hints(&cluster, &[holder], paused, 30).await;

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
