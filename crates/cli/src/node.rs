//! `ringkv node join|decommission|remove`: topology changes over HTTP.
//!
//! * `join` follows a node started with `--seeds` (the node at `--url`) until it
//!   has streamed the ranges it takes over and serves them, with a progress bar.
//! * `decommission ID` asks node ID (through the node at `--url`) to stream its
//!   ranges away and leave the ring, then follows it to the end.
//! * `remove ID` takes a dead node out of the ring; its ranges' next owners refill
//!   them from the other replicas (anti-entropy). Refused while the node looks
//!   alive, unless `--force`.
//!
//! Progress goes to stderr (redrawn in place on a terminal, a line every few
//! seconds otherwise); the outcome to stdout.

use std::io::{IsTerminal as _, Write as _};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use clap::{Args, Subcommand};
use serde_json::Value;

use crate::kv::{UrlArgs, fail, send};

#[derive(Subcommand)]
pub enum NodeCommand {
    /// Follow the join of the node at --url (started with --seeds) until it serves.
    Join(WaitArgs),
    /// Stream node ID's ranges to their next owners, then take it out of the ring.
    Decommission(DecommissionArgs),
    /// Take a dead node ID out of the ring; the others refill its ranges.
    Remove(RemoveArgs),
}

#[derive(Args)]
pub struct WaitArgs {
    /// Give up after this many seconds.
    #[arg(long, default_value_t = 3600)]
    timeout_s: u64,
    #[command(flatten)]
    url: UrlArgs,
}

#[derive(Args)]
pub struct DecommissionArgs {
    /// The node id to decommission.
    id: u64,
    /// Start it and return, without following it.
    #[arg(long)]
    no_wait: bool,
    #[command(flatten)]
    wait: WaitArgs,
}

#[derive(Args)]
pub struct RemoveArgs {
    /// The node id to remove.
    id: u64,
    /// Remove it even though the node at --url sees it alive.
    #[arg(long)]
    force: bool,
    #[command(flatten)]
    url: UrlArgs,
}

pub fn run(command: NodeCommand) -> anyhow::Result<ExitCode> {
    match command {
        NodeCommand::Join(args) => join(&args),
        NodeCommand::Decommission(args) => decommission(&args),
        NodeCommand::Remove(args) => remove(&args),
    }
}

fn status_of(base: &str) -> anyhow::Result<Value> {
    let url = format!("{}/v1/cluster/status", base.trim_end_matches('/'));
    let (status, answer) = send(reqwest::Client::new().get(url))?;
    if status != 200 {
        fail(status, &answer)?;
    }
    Ok(answer)
}

/// The entry a node's status holds about itself.
fn own_entry(status: &Value) -> Option<&Value> {
    let me = status["node_id"].as_u64()?;
    status["nodes"]
        .as_array()?
        .iter()
        .find(|node| node["id"].as_u64() == Some(me))
}

/// Polls the status of the node at `base` until `done` says so, drawing its
/// streaming progress.
fn follow(
    base: &str,
    what: &str,
    timeout: Duration,
    done: impl Fn(&Value) -> bool,
) -> anyhow::Result<Value> {
    let terminal = std::io::stderr().is_terminal();
    let started = Instant::now();
    let mut last_line = Instant::now() - Duration::from_secs(60);
    loop {
        let status = status_of(base)?;
        if done(&status) {
            if terminal {
                let _ = write!(std::io::stderr().lock(), "\r\x1b[2K");
            }
            return Ok(status);
        }
        if started.elapsed() > timeout {
            bail!("{what} did not finish within {} s", timeout.as_secs());
        }
        let streaming = &status["streaming"];
        let total = streaming["ranges_total"].as_u64().unwrap_or(0);
        let ranges = streaming["ranges_done"].as_u64().unwrap_or(0);
        let width = 30usize;
        let filled = (ranges * width as u64)
            .checked_div(total)
            .map_or(0, |filled| {
                usize::try_from(filled).unwrap_or(width).min(width)
            });
        let retrying = streaming["retrying"]
            .as_str()
            .map_or_else(String::new, |reason| format!("  retrying: {reason}"));
        let line = format!(
            "{what}: [{}{}] {ranges}/{total} ranges  {} keys  {:.1} MB  {:.0} s{retrying}",
            "#".repeat(filled),
            "-".repeat(width - filled),
            streaming["keys"].as_u64().unwrap_or(0),
            streaming["bytes"].as_u64().unwrap_or(0) as f64 / 1e6,
            started.elapsed().as_secs_f64(),
        );
        let mut stderr = std::io::stderr().lock();
        if terminal {
            let _ = write!(stderr, "\r\x1b[2K{line}");
        } else if last_line.elapsed() >= Duration::from_secs(5) {
            let _ = writeln!(stderr, "{line}");
            last_line = Instant::now();
        }
        let _ = stderr.flush();
        drop(stderr);
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn summary(status: &Value) -> String {
    let streaming = &status["streaming"];
    format!(
        "{} keys, {:.1} MB in {:.1} s",
        streaming["keys"].as_u64().unwrap_or(0),
        streaming["bytes"].as_u64().unwrap_or(0) as f64 / 1e6,
        streaming["took_ms"].as_u64().unwrap_or(0) as f64 / 1000.0,
    )
}

fn join(args: &WaitArgs) -> anyhow::Result<ExitCode> {
    let base = &args.url.url;
    let status = follow(
        base,
        "join",
        Duration::from_secs(args.timeout_s),
        |status| {
            own_entry(status).is_some_and(|me| me["state"] == "normal")
                && status["streaming"]["phase"] != "joining"
        },
    )?;
    println!(
        "node {} is a normal member: {}",
        status["node_id"],
        summary(&status)
    );
    Ok(ExitCode::SUCCESS)
}

fn decommission(args: &DecommissionArgs) -> anyhow::Result<ExitCode> {
    let base = args.wait.url.url.trim_end_matches('/');
    let cluster = status_of(base)?;
    let target = cluster["nodes"]
        .as_array()
        .and_then(|nodes| {
            nodes
                .iter()
                .find(|node| node["id"].as_u64() == Some(args.id))
        })
        .with_context(|| format!("the node at {base} knows no node {}", args.id))?;
    let target_url = format!(
        "http://{}",
        target["http_addr"]
            .as_str()
            .context("the node has no http address")?
    );
    let url = format!("{base}/v1/cluster/nodes/{}/decommission", args.id);
    let (status, answer) = send(reqwest::Client::new().post(url))?;
    if status != 202 {
        return fail(status, &answer);
    }
    if args.no_wait {
        println!(
            "node {} is leaving; follow it with `ringkv status --url {target_url}`",
            args.id
        );
        return Ok(ExitCode::SUCCESS);
    }
    let status = follow(
        &target_url,
        "decommission",
        Duration::from_secs(args.wait.timeout_s),
        |status| status["streaming"]["phase"] == "left",
    )?;
    println!(
        "node {} left the ring: {}; it can be stopped",
        args.id,
        summary(&status)
    );
    Ok(ExitCode::SUCCESS)
}

fn remove(args: &RemoveArgs) -> anyhow::Result<ExitCode> {
    let base = args.url.url.trim_end_matches('/');
    let mut url = format!("{base}/v1/cluster/nodes/{}/remove", args.id);
    if args.force {
        url.push_str("?force=true");
    }
    let (status, answer) = send(reqwest::Client::new().post(url))?;
    if status != 200 {
        return fail(status, &answer);
    }
    println!(
        "node {} removed from the ring (told {} of {} members); anti-entropy refills its ranges",
        args.id, answer["told"], answer["of"]
    );
    Ok(ExitCode::SUCCESS)
}
