//! `ringkv`: the one binary. Runs a node (`server`), a local cluster (`dev`), and
//! talks to a cluster over HTTP (`put`, `get`, `delete`, `status`).

mod bench;
mod dev;
mod kv;
mod node;

use anyhow::Context as _;
use clap::{Parser, Subcommand};

/// jemalloc instead of glibc's malloc. A node allocates and frees many short-lived
/// buffers per request (hyper's 8 KiB read buffer, RPC frames, records); under
/// writes, glibc's malloc family (`_int_malloc`, `malloc_consolidate`,
/// `unlink_chunk`, `free`) was ~20 % of the runtime threads' samples. Measured on a
/// 3-node `ringkv dev` cluster, `ringkv bench --workload write --concurrency 64`,
/// 8 interleaved pairs on 2 vCPUs: jemalloc won all 8, +3 % to +19 % ops/s (mean
/// +11 %), p99 lower in 7 (bench/results/README.md, 2026-11-28 session 6).
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[derive(Parser)]
#[command(
    name = "ringkv",
    version,
    about = "A Dynamo-style distributed key-value store"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run one node. Every flag is also a TOML key and a RINGKV_* variable.
    Server(Box<ringkv_server::config::ServerArgs>),
    /// Run a local cluster: node i (0-based) on port + i, one process per node.
    Dev(dev::DevArgs),
    /// Write a value.
    Put(kv::PutArgs),
    /// Read a value.
    Get(kv::GetArgs),
    /// Delete a key.
    Delete(kv::DeleteArgs),
    /// Show the cluster's nodes and their status.
    Status(kv::UrlArgs),
    /// Show the ring: each node's vnodes and share of the data.
    Ring(kv::UrlArgs),
    /// Load nodes over HTTP and report ops/s and latency percentiles.
    Bench(bench::BenchArgs),
    /// Change the ring: follow a join, decommission or remove a node.
    #[command(subcommand)]
    Node(node::NodeCommand),
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Server(args) => server(*args),
        Command::Dev(args) => dev::run(args),
        Command::Put(args) => kv::put(args),
        Command::Get(args) => kv::get(args),
        Command::Delete(args) => kv::delete(args),
        Command::Status(args) => kv::status(args),
        Command::Ring(args) => kv::ring(args),
        Command::Bench(args) => bench::run(args),
        Command::Node(command) => node::run(command),
    };
    match result {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn server(args: ringkv_server::config::ServerArgs) -> anyhow::Result<std::process::ExitCode> {
    let config = ringkv_server::config::load(&args)?;
    if args.print_config {
        print!("{}", config.to_toml());
        return Ok(std::process::ExitCode::SUCCESS);
    }
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
                tracing_subscriber::EnvFilter::new("info,fjall=warn,lsm_tree=warn")
            }),
        )
        .with_writer(std::io::stderr)
        .init();
    raise_open_file_limit();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(ringkv_server::run(config))?;
    Ok(std::process::ExitCode::SUCCESS)
}

/// Open files a node may need at once: a descriptor per HTTP and RESP client at
/// their limits (1,024 each), per peer connection, and fjall's tables and journals.
const WANTED_OPEN_FILES: u64 = 8192;

/// Raises the soft limit on open files towards `WANTED_OPEN_FILES`, as far as the
/// hard limit allows (many systems start processes with a soft limit of 1,024
/// under a hard one far higher). A node out of descriptors refuses clients and,
/// worse, cannot open its storage files or dial its peers: short of the wanted
/// number, it says so at start.
fn raise_open_file_limit() {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit(2) writes the struct it is given, which we own.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        let error = std::io::Error::last_os_error();
        tracing::warn!("cannot read the open files limit: {error}");
        return;
    }
    if limit.rlim_cur >= WANTED_OPEN_FILES {
        return;
    }
    let wanted = WANTED_OPEN_FILES.min(limit.rlim_max);
    if wanted > limit.rlim_cur {
        let raised = libc::rlimit {
            rlim_cur: wanted,
            rlim_max: limit.rlim_max,
        };
        // SAFETY: setrlimit(2) reads the struct it is given.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            tracing::info!(
                from = limit.rlim_cur,
                to = wanted,
                "raised the open files limit"
            );
            limit.rlim_cur = wanted;
        } else {
            let error = std::io::Error::last_os_error();
            tracing::warn!("cannot raise the open files limit: {error}");
        }
    }
    if limit.rlim_cur < WANTED_OPEN_FILES {
        tracing::warn!(
            "open files limited to {} (hard limit {}): a node at its connection limits may need {WANTED_OPEN_FILES}; raise `ulimit -n`",
            limit.rlim_cur,
            limit.rlim_max
        );
    }
}
