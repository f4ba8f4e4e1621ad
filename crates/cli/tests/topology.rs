//! Topology changes with real processes (issue 7, DESIGN.md §6): a node joins a
//! cluster holding 10,000 keys while writes go on and ends up holding every key it
//! replicates; it is decommissioned and every key still reads with r=N; a node is
//! SIGKILLed and removed (by the operator, or by the cluster once it is
//! permanently failed) and every key is back on N live nodes.
//!
//! Anti-entropy runs rarely in the join test (once a minute), so what puts the keys
//! on the new node is the join's streaming and the writes that reach both rings.

#![allow(clippy::unwrap_used)] // Tests fail loudly on anything unexpected.

mod common;

use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{Cluster, Signal};
use serde_json::{Value, json};

const WORKERS: usize = 16;

fn urls(cluster: &Cluster, indices: &[usize]) -> Vec<String> {
    indices
        .iter()
        .map(|&index| format!("http://{}", cluster.nodes[index].http_addr))
        .collect()
}

fn kv_url(base: &str, key: &str, query: &str) -> String {
    format!("{base}/v1/kv/{key}{query}")
}

/// Writes `value-of(key)` to every key with w=2 through `urls` (round robin), from
/// `WORKERS` tasks; every write must be acknowledged.
async fn load(client: &reqwest::Client, urls: &[String], keys: &[String]) {
    let keys = Arc::new(keys.to_vec());
    let mut workers = tokio::task::JoinSet::new();
    for worker in 0..WORKERS {
        let (client, urls, keys) = (client.clone(), urls.to_vec(), keys.clone());
        workers.spawn(async move {
            for (i, key) in keys.iter().enumerate().skip(worker).step_by(WORKERS) {
                let url = kv_url(&urls[i % urls.len()], key, "?w=2");
                let response = client
                    .put(url)
                    .json(&json!({"value": format!("v-{key}")}))
                    .send()
                    .await
                    .unwrap();
                assert_eq!(response.status(), 200, "put {key}");
            }
        });
    }
    while let Some(done) = workers.join_next().await {
        done.unwrap();
    }
}

/// Keys whose replicas (per `/v1/debug/key` on `via`) do not all hold the same
/// record, each with what it found.
async fn not_on_all_replicas(
    client: &reqwest::Client,
    via: &str,
    keys: &[String],
) -> Vec<(String, Value)> {
    let keys = Arc::new(keys.to_vec());
    let mut workers = tokio::task::JoinSet::new();
    for worker in 0..WORKERS {
        let (client, via, keys) = (client.clone(), via.to_string(), keys.clone());
        workers.spawn(async move {
            let mut bad = Vec::new();
            for key in keys.iter().skip(worker).step_by(WORKERS) {
                let debug: Value = client
                    .get(format!("{via}/v1/debug/key/{key}"))
                    .send()
                    .await
                    .unwrap()
                    .json()
                    .await
                    .unwrap();
                let replicas = debug["replicas"].as_array().cloned().unwrap_or_default();
                let digests: Vec<Option<&str>> = replicas
                    .iter()
                    .map(|replica| replica["digest"].as_str())
                    .collect();
                let listed = debug["preference_list"].as_array().map_or(0, Vec::len);
                let ok = listed == 3
                    && digests.len() == 3
                    && digests
                        .iter()
                        .all(|digest| digest.is_some() && *digest == digests[0]);
                if !ok {
                    bad.push((key.clone(), debug));
                }
            }
            bad
        });
    }
    let mut bad = Vec::new();
    while let Some(done) = workers.join_next().await {
        bad.extend(done.unwrap());
    }
    bad
}

/// Waits (bounded) until every key is on all its replicas; returns how long.
async fn wait_on_all_replicas(
    client: &reqwest::Client,
    via: &str,
    keys: &[String],
    limit: Duration,
) -> Duration {
    let started = Instant::now();
    let mut pending = keys.to_vec();
    loop {
        let bad = not_on_all_replicas(client, via, &pending).await;
        eprintln!(
            "{} of {} keys not on all their replicas yet ({:?})",
            bad.len(),
            pending.len(),
            started.elapsed()
        );
        if bad.is_empty() {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < limit,
            "{} keys not on all their replicas after {limit:?}, e.g. {:?}",
            bad.len(),
            bad.first()
        );
        pending = bad.into_iter().map(|(key, _)| key).collect();
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// Reads every key with r=3 through `urls`; returns the keys that did not read
/// back their value.
async fn unreadable(client: &reqwest::Client, urls: &[String], keys: &[String]) -> Vec<String> {
    let keys = Arc::new(keys.to_vec());
    let mut workers = tokio::task::JoinSet::new();
    for worker in 0..WORKERS {
        let (client, urls, keys) = (client.clone(), urls.to_vec(), keys.clone());
        workers.spawn(async move {
            let mut bad = Vec::new();
            for (i, key) in keys.iter().enumerate().skip(worker).step_by(WORKERS) {
                let response = client
                    .get(kv_url(&urls[i % urls.len()], key, "?r=3"))
                    .send()
                    .await
                    .unwrap();
                let status = response.status().as_u16();
                let body: Value = response.json().await.unwrap_or(Value::Null);
                if status != 200 || body["value"] != json!(format!("v-{key}")) {
                    bad.push(format!("{key}: {status} {body}"));
                }
            }
            bad
        });
    }
    let mut bad = Vec::new();
    while let Some(done) = workers.join_next().await {
        bad.extend(done.unwrap());
    }
    bad
}

/// Polls until `GET /health` of node `index` answers 200; returns how long.
async fn wait_healthy(cluster: &Cluster, index: usize, limit: Duration) -> Duration {
    let started = Instant::now();
    loop {
        let ok = cluster
            .client
            .get(cluster.url(index, "/health"))
            .send()
            .await
            .is_ok_and(|response| response.status() == 200);
        if ok {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < limit,
            "node {index} not healthy after {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Node `about`'s entry in node `asked`'s `/v1/cluster/status`.
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

/// Polls (bounded by `limit`) until node `asked` shows node `about` with
/// `field` = `value` in `/v1/cluster/status`.
async fn wait_for_entry(
    cluster: &Cluster,
    asked: usize,
    about: usize,
    (field, value): (&str, &str),
    limit: Duration,
) {
    let started = Instant::now();
    while entry(cluster, asked, about).await[field] != value {
        assert!(
            started.elapsed() < limit,
            "node {asked} never shows node {about} with {field} {value} (waited {limit:?})"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The join keeps writing during streaming; what the writers got acknowledged.
struct Writers {
    stop: Arc<AtomicBool>,
    acked: Arc<Mutex<Vec<String>>>,
    tasks: tokio::task::JoinSet<()>,
}

impl Writers {
    /// Four tasks writing new keys (w=2) through `urls` until stopped.
    fn start(client: &reqwest::Client, urls: &[String]) -> Writers {
        let stop = Arc::new(AtomicBool::new(false));
        let acked = Arc::new(Mutex::new(Vec::new()));
        let mut tasks = tokio::task::JoinSet::new();
        for writer in 0..4 {
            let (client, urls) = (client.clone(), urls.to_vec());
            let (stop, acked) = (stop.clone(), acked.clone());
            tasks.spawn(async move {
                for n in 0.. {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    let key = format!("live-{writer}-{n}");
                    let response = client
                        .put(kv_url(&urls[n % urls.len()], &key, "?w=2"))
                        .json(&json!({"value": format!("v-{key}")}))
                        .send()
                        .await;
                    if response.is_ok_and(|response| response.status() == 200) {
                        acked.lock().unwrap().push(key);
                    }
                }
            });
        }
        Writers { stop, acked, tasks }
    }

    async fn stop(mut self) -> Vec<String> {
        self.stop.store(true, Ordering::Relaxed);
        while let Some(done) = self.tasks.join_next().await {
            done.unwrap();
        }
        self.acked.lock().unwrap().clone()
    }
}

/// Issue 7, process tests (b) and (c).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_joins_under_writes_and_leaves_without_losing_a_write() {
    const FLAGS: &[&str] = &["--anti-entropy-interval-ms", "600000"];
    let mut cluster = Cluster::start(3, FLAGS).await;
    let client = cluster.client.clone();
    let old = urls(&cluster, &[0, 1, 2]);
    let mut keys: Vec<String> = (0..10_000).map(|i| format!("key-{i}")).collect();
    let started = Instant::now();
    load(&client, &old, &keys).await;
    eprintln!("loaded {} keys in {:?}", keys.len(), started.elapsed());

    // (b) A fourth node joins while writes continue.
    let writers = Writers::start(&client, &old);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let joining = cluster.add(FLAGS);
    assert_eq!(
        cluster
            .client
            .get(cluster.url(joining, "/health"))
            .send()
            .await
            .map(|r| r.status().as_u16())
            .ok(),
        Some(503),
        "a joining node is not ready"
    );
    let join_took = wait_healthy(&cluster, joining, Duration::from_secs(120)).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let live = writers.stop().await;
    assert!(!live.is_empty(), "writes went on during the join");
    let status = cluster.json(joining, "/v1/cluster/status").await;
    eprintln!(
        "join took {join_took:?} (announce + one request timeout + streaming): {} ranges, {} keys, {} bytes streamed in {} ms; {} writes acked meanwhile",
        status["streaming"]["ranges_total"],
        status["streaming"]["keys"],
        status["streaming"]["bytes"],
        status["streaming"]["took_ms"],
        live.len()
    );
    assert_eq!(status["streaming"]["phase"], "joined");
    assert!(status["streaming"]["keys"].as_u64().unwrap() > 1_000);
    cluster.wait_for_members(4).await;
    keys.extend(live);
    let converged = wait_on_all_replicas(
        &client,
        &urls(&cluster, &[joining])[0],
        &keys,
        Duration::from_secs(30),
    )
    .await;
    eprintln!("every key on all 3 of its replicas {converged:?} after the join");
    // The new node does replicate a share of the keys, and holds them.
    let debug = cluster.json(joining, "/v1/debug/key/key-1").await;
    assert_eq!(debug["preference_list"].as_array().unwrap().len(), 3);
    let held_by_new = {
        let mut count = 0;
        for key in keys.iter().take(200) {
            let debug = cluster.json(0, &format!("/v1/debug/key/{key}")).await;
            let id = cluster.nodes[joining].node_id;
            if debug["preference_list"]
                .as_array()
                .unwrap()
                .contains(&json!(id))
            {
                count += 1;
            }
        }
        count
    };
    assert!(
        (100..=200).contains(&held_by_new),
        "the new node replicates {held_by_new} of 200 keys (about 3/4 expected)"
    );
    // The nodes it displaced dropped their copies of what it took over (one per
    // key it replicates: about 3/4 of them), once every node knew the join ended.
    let started = Instant::now();
    let dropped = loop {
        let mut dropped = 0;
        for index in 0..3 {
            let status = cluster.json(index, "/v1/cluster/status").await;
            dropped += status["streaming"]["copies_dropped"].as_u64().unwrap();
        }
        let share = dropped as f64 / keys.len() as f64;
        if (0.6..0.9).contains(&share) || started.elapsed() > Duration::from_secs(10) {
            break share;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(
        (0.6..0.9).contains(&dropped),
        "the displaced nodes dropped {dropped:.2} copies per key (about 3/4 expected)"
    );
    assert_eq!(
        cluster.json(joining, "/v1/cluster/status").await["streaming"]["copies_dropped"],
        0
    );

    // (c) The new node is decommissioned (through the CLI, via node 0).
    let id = cluster.nodes[joining].node_id;
    let started = Instant::now();
    let output = Command::new(env!("CARGO_BIN_EXE_ringkv"))
        .args([
            "node",
            "decommission",
            &id.to_string(),
            "--timeout-s",
            "120",
        ])
        .args(["--url", &old[0]])
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "decommission failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.contains("left the ring"), "{stdout}");
    eprintln!("decommission took {:?}: {stdout}", started.elapsed());
    assert_eq!(entry(&cluster, joining, joining).await["state"], "left");
    // Every node learns it left (the decommission told them all).
    for index in 0..3 {
        assert_eq!(entry(&cluster, index, joining).await["status"], "left");
    }
    let bad = unreadable(&client, &old, &keys).await;
    assert!(
        bad.is_empty(),
        "{} keys do not read back with r=3, e.g. {:?}",
        bad.len(),
        bad.first()
    );
    // Asking again is refused with a clear reason.
    let again = cluster
        .client
        .post(format!("{}/v1/cluster/nodes/{id}/decommission", old[0]))
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), 409);
    cluster.stop().await;
}

/// A decommission that would leave fewer than N nodes is refused (409), and so is
/// removing a node that is alive; unknown nodes are 404.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topology_changes_that_would_lose_replicas_are_refused() {
    let cluster = Cluster::start(3, &[]).await;
    let post = |path: String| cluster.client.post(cluster.url(0, &path)).send();
    let response = post("/v1/cluster/nodes/2/decommission".into())
        .await
        .unwrap();
    assert_eq!(response.status(), 409);
    let body: Value = response.json().await.unwrap();
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("would leave 2 node(s) for 3 replicas"),
        "{body}"
    );
    let response = post("/v1/cluster/nodes/2/remove".into()).await.unwrap();
    assert_eq!(response.status(), 409, "a healthy node is not removed");
    let response = post("/v1/cluster/nodes/99/remove".into()).await.unwrap();
    assert_eq!(response.status(), 404);
    let response = post("/v1/cluster/nodes/x/decommission".into())
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    cluster.stop().await;
}

/// Issue 7, process test (d): a node is SIGKILLed and removed with `ringkv node
/// remove`; anti-entropy puts every key back on 3 live nodes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_node_is_removed_and_its_keys_are_back_on_n_live_nodes() {
    // Thresholds well above a gossip round (100 ms): a live node that a loaded
    // machine holds up must not look suspicious (a quarter of the request timeout)
    // while the keys are loaded.
    const FLAGS: &[&str] = &[
        "--anti-entropy-interval-ms",
        "200",
        "--suspicion-threshold-ms",
        "1000",
        "--down-threshold-ms",
        "2000",
    ];
    let mut cluster = Cluster::start(4, FLAGS).await;
    let client = cluster.client.clone();
    let keys: Vec<String> = (0..1_000).map(|i| format!("rm-{i}")).collect();
    load(&client, &urls(&cluster, &[0, 1, 2, 3]), &keys).await;
    let dead = 3;
    let id = cluster.nodes[dead].node_id;
    cluster.kill(dead);
    wait_for_entry(
        &cluster,
        0,
        dead,
        ("status", "down"),
        Duration::from_secs(15),
    )
    .await;
    let output = Command::new(env!("CARGO_BIN_EXE_ringkv"))
        .args(["node", "remove", &id.to_string()])
        .args(["--url", &format!("http://{}", cluster.nodes[0].http_addr)])
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "remove failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    for index in 0..3 {
        wait_for_entry(
            &cluster,
            index,
            dead,
            ("status", "left"),
            Duration::from_secs(10),
        )
        .await;
    }
    let took = wait_on_all_replicas(
        &client,
        &urls(&cluster, &[0])[0],
        &keys,
        Duration::from_secs(60),
    )
    .await;
    eprintln!("every key back on 3 live nodes {took:?} after the removal");
    let bad = unreadable(&client, &urls(&cluster, &[0, 1, 2]), &keys).await;
    assert!(
        bad.is_empty(),
        "{} keys unreadable, e.g. {:?}",
        bad.len(),
        bad.first()
    );

    // The removal outlives a restart of every survivor (each recorded it)...
    for index in 0..3 {
        cluster.kill(index);
    }
    for index in 0..3 {
        cluster.restart_alone(index);
    }
    cluster.wait_for_members_on(&[0, 1, 2], 4).await;
    for index in 0..3 {
        assert_eq!(entry(&cluster, index, dead).await["status"], "left");
    }
    // ...so the removed node, back with its old data, joins again (streaming what
    // it missed) instead of serving its old copies as a member.
    cluster.restart_alone(dead);
    wait_for_entry(
        &cluster,
        dead,
        dead,
        ("state", "normal"),
        Duration::from_secs(60),
    )
    .await;
    let status = cluster.json(dead, "/v1/cluster/status").await;
    assert_eq!(status["streaming"]["phase"], "joined", "{status}");
    let bad = unreadable(&client, &urls(&cluster, &[0, 1, 2, 3]), &keys).await;
    assert!(
        bad.is_empty(),
        "{} keys unreadable after it rejoined",
        bad.len()
    );
    cluster.stop().await;
}

/// A node silent past `permanent_failure_threshold_ms` is removed by the cluster
/// itself, and its keys are back on 3 live nodes; when it comes back it learns it
/// was removed and leaves instead of serving stale data.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_permanently_failed_node_is_removed_automatically() {
    // Thresholds well above a gossip round (100 ms): a live node that a loaded
    // machine holds up must not look suspicious while the keys are loaded, nor be
    // taken for permanently failed and removed.
    const FLAGS: &[&str] = &[
        "--anti-entropy-interval-ms",
        "200",
        "--suspicion-threshold-ms",
        "1000",
        "--down-threshold-ms",
        "2000",
        "--permanent-failure-threshold-ms",
        "4000",
    ];
    let cluster = Cluster::start(4, FLAGS).await;
    let client = cluster.client.clone();
    let keys: Vec<String> = (0..300).map(|i| format!("auto-{i}")).collect();
    load(&client, &urls(&cluster, &[0, 1, 2, 3]), &keys).await;
    let failed = 3;
    cluster.signal(failed, Signal::Stop);
    let started = Instant::now();
    for index in 0..3 {
        let limit = Duration::from_secs(30).saturating_sub(started.elapsed());
        wait_for_entry(&cluster, index, failed, ("status", "left"), limit).await;
    }
    eprintln!(
        "removed automatically {:?} after the pause",
        started.elapsed()
    );
    wait_on_all_replicas(
        &client,
        &urls(&cluster, &[0])[0],
        &keys,
        Duration::from_secs(60),
    )
    .await;
    // Back from its pause, it hears it was removed and leaves the ring.
    cluster.signal(failed, Signal::Continue);
    wait_for_entry(
        &cluster,
        failed,
        failed,
        ("state", "left"),
        Duration::from_secs(10),
    )
    .await;
    let bad = unreadable(&client, &urls(&cluster, &[0, 1, 2]), &keys).await;
    assert!(
        bad.is_empty(),
        "{} keys unreadable, e.g. {:?}",
        bad.len(),
        bad.first()
    );
    cluster.stop().await;
}
