//! `ringkv dev` as a user runs it: a cluster of real node processes that stops with
//! itself, whether the stop comes once it serves or while it is still starting.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Bounds every wait below; a node joins in about a second.
const WAIT: Duration = Duration::from_secs(60);

/// `ringkv dev` and the node PIDs it started; on drop, everything still running is
/// killed by PID (a failing test leaves nothing behind).
struct Dev {
    child: Child,
    nodes: Vec<i32>,
    http_port: u16,
}

impl Dev {
    fn start(nodes: u16, dir: &Path) -> Dev {
        let [http_port, resp_port, peer_port] = free_port_runs(nodes);
        let child = Command::new(env!("CARGO_BIN_EXE_ringkv"))
            .arg("dev")
            .args(["--nodes", &nodes.to_string()])
            .arg("--data-dir")
            .arg(dir)
            .args(["--http-port", &http_port.to_string()])
            .args(["--resp-port", &resp_port.to_string()])
            .args(["--peer-port", &peer_port.to_string()])
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .spawn()
            .expect("ringkv dev starts");
        Dev {
            child,
            nodes: Vec::new(),
            http_port,
        }
    }

    fn http(&self, index: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.http_port + index))
    }

    /// Waits until node `index` accepts connections; remembers every node PID seen.
    fn wait_serving(&mut self, index: u16) {
        let deadline = Instant::now() + WAIT;
        while !accepts(self.http(index)) {
            self.note_nodes();
            assert!(Instant::now() < deadline, "node {index} not serving");
            assert!(
                matches!(self.child.try_wait(), Ok(None)),
                "ringkv dev exited early"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        self.note_nodes();
    }

    /// Adds the PIDs of `ringkv dev`'s children (from /proc) to `nodes`.
    fn note_nodes(&mut self) {
        let pid = self.child.id();
        let path = format!("/proc/{pid}/task/{pid}/children");
        let Ok(children) = std::fs::read_to_string(&path) else {
            return;
        };
        for node in children.split_whitespace().filter_map(|p| p.parse().ok()) {
            if !self.nodes.contains(&node) {
                self.nodes.push(node);
            }
        }
    }

    fn terminate(&mut self) {
        let pid = i32::try_from(self.child.id()).expect("pid fits i32");
        // SAFETY: kill(2) on our own child, not yet reaped.
        unsafe { libc::kill(pid, libc::SIGTERM) };
    }

    /// Waits for `ringkv dev` to exit, then for every node it started to be gone.
    fn assert_all_stopped(&mut self) {
        let deadline = Instant::now() + WAIT;
        let status = loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                break status;
            }
            assert!(Instant::now() < deadline, "ringkv dev did not exit");
            std::thread::sleep(Duration::from_millis(20));
        };
        assert!(status.success(), "ringkv dev exited with {status}");
        assert!(!self.nodes.is_empty(), "no node PID seen");
        for &node in &self.nodes {
            assert!(
                !running(node),
                "node pid {node} still runs after ringkv dev"
            );
        }
    }
}

impl Drop for Dev {
    fn drop(&mut self) {
        for &node in &self.nodes {
            if running(node) {
                // SAFETY: a node started by this test's `ringkv dev` (its PID read
                // from /proc while it was that process's child).
                unsafe { libc::kill(node, libc::SIGKILL) };
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Alive and not a zombie (an orphan's zombie may linger until init reaps it).
fn running(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X"),
        Err(_) => false,
    }
}

fn accepts(addr: SocketAddr) -> bool {
    TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok()
}

/// Three bases for `--http-port`, `--resp-port`, `--peer-port`, each with `count`
/// free consecutive ports on 127.0.0.1, picked at random below the ephemeral range
/// (where the nodes' own outgoing connections take ports) so that tests running at
/// the same time do not pick the same ones; held while searching, so the three runs
/// do not overlap.
fn free_port_runs(count: u16) -> [u16; 3] {
    use std::hash::{BuildHasher, Hasher};
    let mut held: Vec<TcpListener> = Vec::new();
    let mut bases = Vec::new();
    for _attempt in 0..1_000 {
        let random = std::collections::hash_map::RandomState::new()
            .build_hasher()
            .finish();
        // 16-port slots in 20000..32000.
        let base = 20_000 + (random % 750) as u16 * 16;
        let run: Vec<TcpListener> = (0..count)
            .map_while(|i| TcpListener::bind(("127.0.0.1", base + i)).ok())
            .collect();
        if run.len() == usize::from(count) && !bases.contains(&base) {
            bases.push(base);
            held.extend(run);
            if bases.len() == 3 {
                return [bases[0], bases[1], bases[2]];
            }
        }
    }
    panic!("no free ports in 20000..32000");
}

#[test]
fn sigterm_stops_every_node() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut dev = Dev::start(2, dir.path());
    dev.wait_serving(0);
    dev.wait_serving(1);
    assert_eq!(dev.nodes.len(), 2, "two node processes");
    dev.terminate();
    dev.assert_all_stopped();
    assert!(
        !accepts(dev.http(0)) && !accepts(dev.http(1)),
        "ports released"
    );
}

#[test]
fn sigterm_while_starting_stops_the_nodes_already_started() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut dev = Dev::start(3, dir.path());
    // Node 0 serves: `ringkv dev` is now starting node 1 (each node joins in turn).
    dev.wait_serving(0);
    dev.terminate();
    dev.assert_all_stopped();
    assert!(!accepts(dev.http(0)), "node 0's port released");
}
