//! Helpers for tests that run real `ringkv` processes: start nodes on 127.0.0.x with
//! OS-chosen ports, read their addresses from the first line they print, signal,
//! kill and restart them. Every process started here is killed by PID on drop.

#![allow(dead_code)] // Each test binary uses a different part of this module.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// Short thresholds for tests (config keys, not sleeps); a test passes its own value
/// of any of them in `extra`. The request timeout stays generous: a w=3, r=3 or
/// consistency=all request fails when one replica (a debug build, fsync, a loaded CI
/// machine) is slower than it, so tests that measure against it set a short one.
const TEST_FLAGS: &[(&str, &str)] = &[
    ("--gossip-interval-ms", "100"),
    ("--request-timeout-ms", "2000"),
    ("--vnodes", "64"),
];

pub enum Signal {
    Stop,
    Continue,
    Kill,
}

pub struct NodeProcess {
    pub node_id: u64,
    pub ip: String,
    pub child: Child,
    pub http_addr: String,
    pub peer_addr: String,
    pub resp_addr: String,
    pub dir: PathBuf,
    pub extra: Vec<String>,
}

impl NodeProcess {
    /// The command that starts node `node_id` on `ip` (ports chosen by the OS).
    pub fn command(node_id: u64, ip: &str, dir: &Path, extra: &[&str]) -> Command {
        let mut command = Command::new(env!("CARGO_BIN_EXE_ringkv"));
        command.args(["server", "--node-id", &node_id.to_string()]);
        for (flag, default) in [
            ("--http-addr", format!("{ip}:0")),
            ("--peer-addr", format!("{ip}:0")),
            ("--resp-addr", format!("{ip}:0")),
        ] {
            if !extra.contains(&flag) {
                command.args([flag, &default]);
            }
        }
        for (flag, value) in TEST_FLAGS {
            if !extra.contains(flag) {
                command.args([flag, value]);
            }
        }
        command
            .arg("--data-dir")
            .arg(dir)
            .args(extra)
            .env("RUST_LOG", "warn");
        command
    }

    /// Starts a node and waits for its "serving http on A peer B resp C" line.
    pub fn spawn(node_id: u64, ip: &str, dir: &Path, extra: &[String]) -> NodeProcess {
        let extra_refs: Vec<&str> = extra.iter().map(String::as_str).collect();
        let command = NodeProcess::command(node_id, ip, dir, &extra_refs);
        NodeProcess::spawn_command(command, node_id, ip, dir, extra)
    }

    /// `spawn` with a `command` from `NodeProcess::command`, changed by the caller.
    pub fn spawn_command(
        mut command: Command,
        node_id: u64,
        ip: &str,
        dir: &Path,
        extra: &[String],
    ) -> NodeProcess {
        let mut child = command
            .stdout(Stdio::piped())
            .spawn()
            .expect("ringkv starts");
        let stdout = child.stdout.take().expect("stdout is piped");
        let mut line = String::new();
        BufReader::new(stdout)
            .read_line(&mut line)
            .expect("node prints its addresses");
        let words: Vec<&str> = line.split_whitespace().collect();
        let after = |marker: &str| {
            words
                .iter()
                .position(|word| *word == marker)
                .and_then(|at| words.get(at + 1))
                .map(|addr| addr.to_string())
                .unwrap_or_else(|| panic!("node {node_id} printed {line:?}"))
        };
        NodeProcess {
            node_id,
            ip: ip.to_string(),
            http_addr: after("on"),
            peer_addr: after("peer"),
            resp_addr: after("resp"),
            child,
            dir: dir.to_path_buf(),
            extra: extra.to_vec(),
        }
    }

    pub fn signal(&mut self, signal: Signal) {
        let number = match signal {
            Signal::Stop => libc::SIGSTOP,
            Signal::Continue => libc::SIGCONT,
            Signal::Kill => libc::SIGKILL,
        };
        let pid = i32::try_from(self.child.id()).expect("pid fits i32");
        // SAFETY: kill(2) on the pid of our own child, not yet reaped.
        unsafe { libc::kill(pid, number) };
        if matches!(signal, Signal::Kill) {
            let _ = self.child.wait();
        }
    }
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            self.signal(Signal::Continue);
            self.signal(Signal::Kill);
        }
    }
}

pub struct Cluster {
    pub nodes: Vec<NodeProcess>,
    pub client: reqwest::Client,
    _dir: tempfile::TempDir,
}

impl Cluster {
    /// `size` nodes (ids 1..=size, node i on 127.0.0.(i+1)), every node after the
    /// first seeded with the first; returns once every node sees all of them.
    pub async fn start(size: usize, extra: &[&str]) -> Cluster {
        let dir = tempfile::tempdir().expect("temp dir");
        let extra: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        let mut nodes: Vec<NodeProcess> = Vec::new();
        for index in 0..size {
            let mut args = extra.clone();
            if let Some(first) = nodes.first() {
                args.extend(["--seeds".to_string(), first.peer_addr.clone()]);
            }
            let ip = format!("127.0.0.{}", index + 1);
            let data = dir.path().join(format!("node-{index}"));
            nodes.push(NodeProcess::spawn(index as u64 + 1, &ip, &data, &args));
        }
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .expect("client");
        let cluster = Cluster {
            nodes,
            client,
            _dir: dir,
        };
        cluster.wait_for_members(size).await;
        cluster
    }

    /// Waits (bounded) until every running node lists `size` members.
    pub async fn wait_for_members(&self, size: usize) {
        let all: Vec<usize> = (0..self.nodes.len()).collect();
        self.wait_for_members_on(&all, size).await;
    }

    /// Waits (bounded) until each node of `indices` lists `size` members, none of
    /// them still joining.
    pub async fn wait_for_members_on(&self, indices: &[usize], size: usize) {
        // Generous: three or four debug-build nodes joining on a loaded CI machine.
        let deadline = Instant::now() + Duration::from_secs(60);
        for &index in indices {
            loop {
                let status = self
                    .client
                    .get(self.url(index, "/v1/cluster/status"))
                    .send()
                    .await;
                let nodes = match status {
                    Ok(response) => response
                        .json::<Value>()
                        .await
                        .ok()
                        .and_then(|v| v["nodes"].as_array().cloned()),
                    Err(_) => None,
                };
                let count = nodes.as_ref().map(Vec::len);
                let joined = nodes
                    .iter()
                    .flatten()
                    .all(|node| node["state"] != "joining" && node["state"] != "joined");
                if count == Some(size) && joined {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "node {index} sees {count:?} of {size} members"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }

    pub fn url(&self, index: usize, path: &str) -> String {
        format!("http://{}{path}", self.nodes[index].http_addr)
    }

    /// `GET path` on node `index`, as JSON.
    pub async fn json(&self, index: usize, path: &str) -> Value {
        let response = self
            .client
            .get(self.url(index, path))
            .send()
            .await
            .expect("node answers");
        response.json().await.expect("answer is JSON")
    }

    pub async fn put(&self, index: usize, path: &str, body: Value) -> (u16, Value) {
        let response = self
            .client
            .put(self.url(index, &format!("/v1/kv/{path}")))
            .json(&body)
            .send()
            .await
            .expect("put answered");
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    pub async fn get(&self, index: usize, path: &str) -> (u16, Value) {
        let response = self
            .client
            .get(self.url(index, &format!("/v1/kv/{path}")))
            .send()
            .await
            .expect("get answered");
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    /// Whether node `index` holds `key` exactly as every other node does (same
    /// record digest per `/v1/debug/key`, which reads each replica locally; in a
    /// cluster of N nodes every node is a replica).
    pub async fn holds_like_the_others(&self, index: usize, key: &str) -> bool {
        let debug = self.json(index, &format!("/v1/debug/key/{key}")).await;
        let Some(replicas) = debug["replicas"].as_array() else {
            return false;
        };
        let digest_of = |node: u64| {
            replicas
                .iter()
                .find(|replica| replica["node"] == node)
                .and_then(|replica| replica["digest"].as_str())
                .map(str::to_string)
        };
        let mine = digest_of(self.nodes[index].node_id);
        mine.is_some()
            && self
                .nodes
                .iter()
                .all(|node| digest_of(node.node_id) == mine)
    }

    pub fn signal(&self, index: usize, signal: Signal) {
        let pid = i32::try_from(self.nodes[index].child.id()).expect("pid fits i32");
        let number = match signal {
            Signal::Stop => libc::SIGSTOP,
            Signal::Continue => libc::SIGCONT,
            Signal::Kill => libc::SIGKILL,
        };
        // SAFETY: kill(2) on the pid of our own child, not yet reaped.
        unsafe { libc::kill(pid, number) };
    }

    pub fn kill(&mut self, index: usize) {
        self.nodes[index].signal(Signal::Kill);
    }

    /// Restarts a killed node on its old addresses and data directory, and waits
    /// until every node lists every member.
    pub async fn restart(&mut self, index: usize) {
        self.restart_alone(index);
        self.wait_for_members(self.nodes.len()).await;
    }

    /// Restarts a killed node like `restart`, waiting only for its start-up line
    /// (other nodes may be paused).
    pub fn restart_alone(&mut self, index: usize) {
        let old = &self.nodes[index];
        let (ip, dir, node_id) = (old.ip.clone(), old.dir.clone(), old.node_id);
        let mut extra = old.extra.clone();
        extra.extend([
            "--http-addr".to_string(),
            old.http_addr.clone(),
            "--peer-addr".to_string(),
            old.peer_addr.clone(),
            "--resp-addr".to_string(),
            old.resp_addr.clone(),
        ]);
        self.nodes[index] = NodeProcess::spawn(node_id, &ip, &dir, &extra);
    }

    /// Starts one more node (the next id, on the next 127.0.0.x, seeded with the
    /// first node) and returns its index at once: it joins in the background.
    pub fn add(&mut self, extra: &[&str]) -> usize {
        let index = self.nodes.len();
        let mut args: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        args.extend(["--seeds".to_string(), self.nodes[0].peer_addr.clone()]);
        let data = self._dir.path().join(format!("node-{index}"));
        let ip = format!("127.0.0.{}", index + 1);
        self.nodes
            .push(NodeProcess::spawn(index as u64 + 1, &ip, &data, &args));
        index
    }

    pub async fn stop(self) {
        drop(self);
    }
}
