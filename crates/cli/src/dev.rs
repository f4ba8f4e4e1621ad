//! `ringkv dev`: a local cluster of real node processes on 127.0.0.1, for trying
//! ringkv out. Node i (0-based) listens on each base port + i and keeps its data in
//! `DATA_DIR/node-i`, which survives restarts. Ctrl-C (or SIGTERM) stops every node
//! gracefully, also while the cluster is still starting.

use std::path::PathBuf;
use std::process::{Child, Command, ExitCode};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use clap::Args;

/// How long a node may take to stop after SIGTERM before it is killed.
const STOP_GRACE: Duration = Duration::from_secs(15);
const MAX_NODES: u16 = 16;
/// How long one node may take to join and serve.
const START_TIMEOUT: Duration = Duration::from_secs(60);
/// How often the start-up and watch loops look at the nodes and for a stop request.
const POLL: Duration = Duration::from_millis(50);

/// Set by SIGTERM and SIGINT once `catch_stop_signals` ran.
static STOP_REQUESTED: AtomicBool = AtomicBool::new(false);

extern "C" fn request_stop(_signal: libc::c_int) {
    STOP_REQUESTED.store(true, Ordering::SeqCst);
}

fn stop_requested() -> bool {
    STOP_REQUESTED.load(Ordering::SeqCst)
}

/// From here on SIGTERM and SIGINT only set `STOP_REQUESTED`. Installed before the
/// first node starts: a signal that killed `ringkv dev` itself would leave its nodes
/// running, holding the ports.
fn catch_stop_signals() -> anyhow::Result<()> {
    let handler = request_stop as extern "C" fn(libc::c_int);
    for signal in [libc::SIGTERM, libc::SIGINT] {
        // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
        let previous = unsafe { libc::signal(signal, handler as libc::sighandler_t) };
        if previous == libc::SIG_ERR {
            bail!("cannot catch signal {signal}");
        }
    }
    Ok(())
}

#[derive(Args)]
pub struct DevArgs {
    /// Number of nodes (1..=16).
    #[arg(long, default_value_t = 3)]
    nodes: u16,
    /// Parent directory of the nodes' data directories.
    #[arg(long, default_value = "./ringkv-dev")]
    data_dir: PathBuf,
    #[arg(long, default_value_t = 8080)]
    http_port: u16,
    #[arg(long, default_value_t = 6380)]
    resp_port: u16,
    #[arg(long, default_value_t = 7080)]
    peer_port: u16,
}

fn port(base: u16, index: u16, name: &str) -> anyhow::Result<u16> {
    base.checked_add(index)
        .with_context(|| format!("--{name} {base} + {index} is past 65535"))
}

pub fn run(args: DevArgs) -> anyhow::Result<ExitCode> {
    if !(1..=MAX_NODES).contains(&args.nodes) {
        bail!("--nodes must be 1..={MAX_NODES}, got {}", args.nodes);
    }
    let exe = std::env::current_exe().context("cannot find the ringkv executable")?;
    catch_stop_signals()?;
    let seed = format!("127.0.0.1:{}", args.peer_port);
    let mut children: Vec<(u16, Child)> = Vec::new();
    for index in 0..args.nodes {
        if stop_requested() {
            stop_all(&mut children);
            return Ok(ExitCode::SUCCESS);
        }
        let http = format!("127.0.0.1:{}", port(args.http_port, index, "http-port")?);
        let resp = format!("127.0.0.1:{}", port(args.resp_port, index, "resp-port")?);
        let peer = format!("127.0.0.1:{}", port(args.peer_port, index, "peer-port")?);
        let data_dir = args.data_dir.join(format!("node-{index}"));
        let mut command = Command::new(&exe);
        command
            .arg("server")
            .args(["--node-id", &index.to_string()])
            .arg("--data-dir")
            .arg(&data_dir)
            .args([
                "--http-addr",
                &http,
                "--resp-addr",
                &resp,
                "--peer-addr",
                &peer,
            ]);
        if index > 0 {
            command.args(["--seeds", &seed]);
        }
        match command.spawn() {
            Ok(child) => children.push((index, child)),
            Err(error) => {
                stop_all(&mut children);
                return Err(error).context(format!("cannot start node {index}"));
            }
        }
        // One at a time: a node takes its ring tokens from what it learns when it
        // joins, so nodes joining together would split the same ranges.
        if let Err(error) = wait_until_serving(&http, &mut children) {
            stop_all(&mut children);
            if stop_requested() {
                return Ok(ExitCode::SUCCESS);
            }
            return Err(error.context(format!("node {index} did not start")));
        }
        println!(
            "node {index}: http://{http}  resp {resp}  peer {peer}  data {}",
            data_dir.display()
        );
    }
    println!(
        "ringkv dev cluster of {} node(s) running; Ctrl-C stops it (data stays)",
        args.nodes
    );
    println!(
        "try: curl -X PUT -d '{{\"value\":\"hello\"}}' http://127.0.0.1:{}/v1/kv/greeting",
        args.http_port
    );

    let outcome = watch(&mut children);
    stop_all(&mut children);
    Ok(outcome)
}

/// Waits (at most `START_TIMEOUT`) until `http` answers `GET /health` with 200: a
/// node serves HTTP only once it has joined the cluster.
fn wait_until_serving(http: &str, children: &mut [(u16, Child)]) -> anyhow::Result<()> {
    let addr: std::net::SocketAddr = http.parse().context("bad http address")?;
    let deadline = Instant::now() + START_TIMEOUT;
    while Instant::now() < deadline {
        if stop_requested() {
            bail!("stop requested");
        }
        if health_ok(addr) {
            return Ok(());
        }
        if let Some((_, child)) = children.last_mut()
            && let Ok(Some(status)) = child.try_wait()
        {
            bail!("it exited ({status})");
        }
        std::thread::sleep(POLL);
    }
    bail!("not serving on {http} after {START_TIMEOUT:?}")
}

/// One `GET /health` over a plain socket (no HTTP client needed for one line).
fn health_ok(addr: std::net::SocketAddr) -> bool {
    use std::io::{Read, Write};
    let Ok(mut stream) = std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200))
    else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(1)));
    if stream
        .write_all(b"GET /health HTTP/1.0\r\nHost: ringkv\r\n\r\n")
        .is_err()
    {
        return false;
    }
    let mut head = [0u8; 12];
    stream.read_exact(&mut head).is_ok() && head.ends_with(b"200")
}

/// Waits for Ctrl-C / SIGTERM, or for a node to exit on its own (an error).
fn watch(children: &mut [(u16, Child)]) -> ExitCode {
    loop {
        if stop_requested() {
            return ExitCode::SUCCESS;
        }
        for (index, child) in children.iter_mut() {
            if let Ok(Some(status)) = child.try_wait() {
                eprintln!("node {index} exited ({status}); stopping the others");
                return ExitCode::FAILURE;
            }
        }
        std::thread::sleep(POLL);
    }
}

/// SIGTERM to every running node, then SIGKILL to any still running after the grace.
fn stop_all(children: &mut [(u16, Child)]) {
    for (_, child) in children.iter_mut() {
        if matches!(child.try_wait(), Ok(None))
            && let Ok(pid) = i32::try_from(child.id())
        {
            // SAFETY: kill(2) with a pid of a child we spawned and have not reaped.
            unsafe { libc::kill(pid, libc::SIGTERM) };
        }
    }
    let deadline = Instant::now() + STOP_GRACE;
    for (index, child) in children.iter_mut() {
        while matches!(child.try_wait(), Ok(None)) && Instant::now() < deadline {
            std::thread::sleep(POLL);
        }
        if matches!(child.try_wait(), Ok(None)) {
            eprintln!("node {index} did not stop within {STOP_GRACE:?}; killing it");
            let _ = child.kill();
            let _ = child.wait();
        }
    }
    println!("ringkv dev cluster stopped");
}
