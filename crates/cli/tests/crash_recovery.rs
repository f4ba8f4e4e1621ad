//! The real `ringkv` binary, SIGKILLed while many clients write: every write it
//! acknowledged must be there after a restart on the same data directory.

#![allow(clippy::unwrap_used)] // Tests fail loudly on anything unexpected.

mod common;

use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{NodeProcess, Signal};

/// Clients writing at once, and the acknowledged writes to collect before the kill.
const CLIENTS: usize = 32;
const ACKED_BEFORE_KILL: usize = 1_200;

/// Starts node 1 on OS-chosen loopback ports; returns it and its base URL.
fn start_node(data_dir: &std::path::Path) -> (NodeProcess, String) {
    let node = NodeProcess::spawn(1, "127.0.0.1", data_dir, &[]);
    let base = format!("http://{}", node.http_addr);
    (node, base)
}

fn sigkill(node: &mut NodeProcess) {
    node.signal(Signal::Kill);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_writes_survive_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    let (mut child, base) = start_node(dir.path());
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let acked: Arc<Mutex<Vec<(String, String)>>> = Arc::default();
    let deadline = Instant::now() + Duration::from_secs(120);

    let mut writers = tokio::task::JoinSet::new();
    for client_id in 0..CLIENTS {
        let (client, base, acked) = (client.clone(), base.clone(), acked.clone());
        writers.spawn(async move {
            // Bounded: stops at the first failure (the kill) or the deadline.
            for seq in 0..100_000u32 {
                if Instant::now() > deadline {
                    break;
                }
                let key = format!("c{client_id}/k{seq}");
                let value = format!("value-{client_id}-{seq}");
                let sent = client
                    .put(format!("{base}/v1/kv/{key}"))
                    .json(&serde_json::json!({"value": value}))
                    .send()
                    .await;
                match sent {
                    Ok(response) if response.status() == 200 => {
                        acked.lock().unwrap().push((key, value));
                    }
                    _ => break,
                }
            }
        });
    }
    while acked.lock().unwrap().len() < ACKED_BEFORE_KILL {
        assert!(
            Instant::now() < deadline,
            "node too slow: {} acks",
            acked.lock().unwrap().len()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // Kill while writes are in flight.
    sigkill(&mut child);
    while writers.join_next().await.is_some() {}
    let acked = acked.lock().unwrap().clone();
    assert!(acked.len() >= ACKED_BEFORE_KILL);

    let (mut child, base) = start_node(dir.path());
    let mut missing = Vec::new();
    for (key, value) in &acked {
        let response = client
            .get(format!("{base}/v1/kv/{key}"))
            .send()
            .await
            .unwrap();
        let status = response.status();
        let body: serde_json::Value = response.json().await.unwrap_or_default();
        if status != 200 || body["value"] != value.as_str() {
            missing.push((key.clone(), status, body));
        }
    }
    sigkill(&mut child);
    assert!(
        missing.is_empty(),
        "{} of {} acknowledged writes lost, e.g. {:?}",
        missing.len(),
        acked.len(),
        &missing[..missing.len().min(5)]
    );
}

/// SIGTERM stops the node cleanly (exit status 0) and what it acknowledged is there
/// after a restart.
#[tokio::test]
async fn sigterm_stops_cleanly_and_keeps_data() {
    let dir = tempfile::tempdir().unwrap();
    let (mut child, base) = start_node(dir.path());
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    for i in 0..50 {
        let response = client
            .put(format!("{base}/v1/kv/term{i}"))
            .json(&serde_json::json!({"value": format!("v{i}")}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
    }
    let pid = i32::try_from(child.child.id()).unwrap();
    // SAFETY: kill(2) on the pid of our own, not yet reaped child.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = child.child.try_wait().unwrap() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "node did not stop within 20 s of SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(status.success(), "exit status {status}");
    let (mut child, base) = start_node(dir.path());
    for i in 0..50 {
        let body: serde_json::Value = client
            .get(format!("{base}/v1/kv/term{i}"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(body["value"], format!("v{i}"));
    }
    sigkill(&mut child);
}

/// `--print-config` shows the effective configuration, and a bad value stops start-up
/// with a message naming the key.
#[test]
fn print_config_and_bad_config() {
    let output = Command::new(env!("CARGO_BIN_EXE_ringkv"))
        .args(["server", "--print-config", "--replication-factor", "5"])
        .env("RINGKV_HTTP_ADDR", "127.0.0.1:9999")
        .output()
        .unwrap();
    assert!(output.status.success());
    let text = String::from_utf8(output.stdout).unwrap();
    assert!(text.contains("replication_factor = 5"), "{text}");
    assert!(text.contains("http_addr = \"127.0.0.1:9999\""), "{text}");

    let output = Command::new(env!("CARGO_BIN_EXE_ringkv"))
        .args(["server", "--durability", "sometimes"])
        .output()
        .unwrap();
    assert!(!output.status.success());
    let text = String::from_utf8(output.stderr).unwrap();
    assert!(text.contains("durability"), "{text}");
}

/// A node that cannot start says why, naming the cause once: a config file that is
/// not TOML, a port in use, a data directory another node holds.
#[test]
fn start_errors_name_their_cause_once() {
    let dir = tempfile::tempdir().unwrap();
    let stderr_of = |command: &mut Command| {
        let output = command.env("RUST_LOG", "error").output().unwrap();
        assert!(!output.status.success(), "start-up must fail");
        String::from_utf8(output.stderr).unwrap()
    };
    let once = |text: &str, needle: &str| {
        assert_eq!(
            text.matches(needle).count(),
            1,
            "{needle:?} once in: {text}"
        );
    };

    let config = dir.path().join("bad.toml");
    std::fs::write(&config, "replication_factor = = 3\n").unwrap();
    let text = stderr_of(
        Command::new(env!("CARGO_BIN_EXE_ringkv"))
            .args(["server", "--config"])
            .arg(&config),
    );
    once(&text, "is not valid TOML");
    once(&text, "line 1");

    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken_addr = taken.local_addr().unwrap().to_string();
    let text = stderr_of(
        NodeProcess::command(
            1,
            "127.0.0.1",
            &dir.path().join("port"),
            &["--http-addr", &taken_addr],
        )
        .stdout(std::process::Stdio::null()),
    );
    once(&text, &format!("cannot listen on {taken_addr} (http_addr)"));
    once(&text, "in use");

    let (_first, _) = start_node(&dir.path().join("held"));
    let text = stderr_of(
        NodeProcess::command(2, "127.0.0.1", &dir.path().join("held"), &[])
            .stdout(std::process::Stdio::null()),
    );
    once(&text, "cannot open storage in");
    once(&text, "in use by another ringkv process");
}
