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
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(ringkv_server::run(config))?;
    Ok(std::process::ExitCode::SUCCESS)
}
