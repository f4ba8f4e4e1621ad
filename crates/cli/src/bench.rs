//! `ringkv bench`: a load generator for ringkv nodes (DESIGN.md §7), over HTTP or
//! the Redis protocol (`--protocol resp`, which can also load a Redis server).
//!
//! `concurrency` clients (tokio tasks, each with its own keep-alive connection:
//! `http1`, a lean HTTP/1.1 client, or RESP; or sharing the SDK) write or read keys
//! `bench-{i}`, `i` uniform over `0..keys` from a seeded PRNG, until `--ops` ops were
//! made or `--duration` passed. Each successful op's latency goes into an HDR histogram
//! (µs, 3 significant figures); errors are counted by kind and are not latency samples.
//! The summary goes to stdout (human or `--json`), progress to stderr.
//!
//! The clients run on `--threads` runtime threads (default 1: a single-threaded
//! runtime spends the least CPU per request, so on a small machine the client takes
//! as little as possible from the nodes it measures).
//!
//! Phases: `read` first writes every key once (the load, timed and reported on its
//! own), then `--warmup-ops` unmeasured ops, then the measured ops.
//!
//! * `keys`: the PRNG and which key/op comes next.
//! * `client`: the clients, their connections, one phase's run.
//! * `http1`: the HTTP/1.1 keep-alive client of the load (ringkv and etcd).
//! * `resp`, `sdk`, `etcd`: the ops over RESP, through the SDK, against etcd.
//! * `timeline`: throughput and latency over time, and its SVG plot.
//! * `report`: merged results, percentiles, the human and JSON output.
//! * `plan`: the arguments and their limits.
//! * `progress`: the progress line.

mod client;
mod etcd;
mod http1;
mod keys;
mod plan;
mod progress;
mod report;
mod resp;
mod sdk;
mod timeline;

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, bail};
use clap::ValueEnum;
use serde::Serialize;

use client::{OpSource, Phase, Target};
pub use plan::BenchArgs;
use plan::{Bound, Plan};
use report::Summary;

/// How long each node's `/health` may take before the run is refused.
const HEALTH_TIMEOUT: Duration = Duration::from_secs(5);

/// Which operations the measured phase makes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Workload {
    /// PUT random keys.
    Write,
    /// Load every key once, then GET random keys.
    Read,
    /// 50 % GET, 50 % PUT of random keys (no load: reads of unwritten keys are misses).
    Mixed,
    /// YCSB A (update heavy): load every key, then 50 % reads, 50 % updates.
    #[value(name = "ycsb-a")]
    #[serde(rename = "ycsb-a")]
    YcsbA,
    /// YCSB B (read mostly): load every key, then 95 % reads, 5 % updates.
    #[value(name = "ycsb-b")]
    #[serde(rename = "ycsb-b")]
    YcsbB,
    /// YCSB C (read only): load every key, then reads.
    #[value(name = "ycsb-c")]
    #[serde(rename = "ycsb-c")]
    YcsbC,
    /// YCSB D (read latest): load every key, then 95 % reads, 5 % inserts of new
    /// keys; reads favour the newest keys (`--distribution latest`, its default).
    #[value(name = "ycsb-d")]
    #[serde(rename = "ycsb-d")]
    YcsbD,
    /// YCSB E (short ranges): refused, as ringkv places keys by hash and has no
    /// range scans (DESIGN.md); listed so the refusal says why.
    #[value(name = "ycsb-e")]
    #[serde(rename = "ycsb-e")]
    YcsbE,
    /// YCSB F (read-modify-write): load every key, then 50 % reads, 50 % reads
    /// followed by a write carrying the version read (one op each).
    #[value(name = "ycsb-f")]
    #[serde(rename = "ycsb-f")]
    YcsbF,
}

/// How the measured phase picks keys.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Distribution {
    /// Every key equally likely.
    Uniform,
    /// YCSB's scrambled zipfian (θ = 0.99): a few keys are hot, spread over the ring.
    Zipfian,
    /// YCSB's latest: zipfian ranks counted back from the newest key (the default of
    /// `ycsb-d`, whose inserts make new keys).
    Latest,
}

/// How the clients talk to the nodes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// `PUT|GET /v1/kv/{key}` over HTTP/1.1 keep-alive connections.
    Http,
    /// `SET`/`GET` over the Redis protocol, one connection per client (as
    /// redis-benchmark): the same load can run against Redis itself.
    Resp,
    /// The Rust SDK (`ringkv-client`): each request straight to a replica of its key.
    Sdk,
    /// etcd's v3 JSON gateway (`POST /v3/kv/put`, `/v3/kv/range`), to load an etcd
    /// cluster with the same workload (`bench/compare`).
    Etcd,
}

impl Workload {
    /// Whether the measured phase reads keys that a load phase writes first.
    fn loads(self) -> bool {
        matches!(
            self,
            Workload::Read
                | Workload::YcsbA
                | Workload::YcsbB
                | Workload::YcsbC
                | Workload::YcsbD
                | Workload::YcsbE
                | Workload::YcsbF
        )
    }

    /// Per mille of the measured ops that are reads.
    pub fn reads_per_mille(self) -> u64 {
        match self {
            Workload::Write => 0,
            Workload::Read | Workload::YcsbC => 1000,
            Workload::Mixed | Workload::YcsbA | Workload::YcsbF => 500,
            Workload::YcsbB | Workload::YcsbD | Workload::YcsbE => 950,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Workload::Write => "write",
            Workload::Read => "read",
            Workload::Mixed => "mixed",
            Workload::YcsbA => "ycsb-a",
            Workload::YcsbB => "ycsb-b",
            Workload::YcsbC => "ycsb-c",
            Workload::YcsbD => "ycsb-d",
            Workload::YcsbE => "ycsb-e",
            Workload::YcsbF => "ycsb-f",
        }
    }
}
/// The `--json` object: the run's parameters, the measured phase's summary at the
/// top level, and the read load's summary under `load` (null for other workloads).
#[derive(Serialize)]
struct Report<'a> {
    workload: Workload,
    protocol: Protocol,
    distribution: Distribution,
    urls: &'a [String],
    concurrency: usize,
    threads: usize,
    value_size: usize,
    keys: u64,
    r: Option<u8>,
    w: Option<u8>,
    warmup_ops: u64,
    seed: u64,
    blind_writes: bool,
    #[serde(flatten)]
    measured: Summary,
    load: Option<Summary>,
    /// The measured phase over time, one point per `timeline_bucket_ms`.
    timeline_bucket_ms: u128,
    timeline: Vec<timeline::Point>,
}

pub fn run(args: BenchArgs) -> anyhow::Result<ExitCode> {
    let plan = Plan::from_args(args)?;
    // One thread (the default, like redis-benchmark) costs the least CPU per request,
    // which matters when the client shares a small machine with the nodes it loads.
    let mut builder = if plan.threads == 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut builder = tokio::runtime::Builder::new_multi_thread();
        builder.worker_threads(plan.threads);
        builder
    };
    let runtime = builder
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(execute(&plan))
}

/// Refuses to start unless every node answers `/health` with 200: a typo in `--url`
/// should be one clear error, not 100000 counted connection errors.
async fn check_health(target: &Target) -> anyhow::Result<()> {
    if target.protocol == Protocol::Resp {
        for addr in &target.urls {
            resp::resp_ping(addr, HEALTH_TIMEOUT)
                .await
                .with_context(|| format!("cannot PING {addr} over RESP (is the node running?)"))?;
        }
        return Ok(());
    }
    for base in &target.urls {
        let url = format!("{base}/health");
        let response = target
            .client
            .get(&url)
            .timeout(HEALTH_TIMEOUT)
            .send()
            .await
            .with_context(|| format!("cannot reach {url} (is the node running?)"))?;
        if response.status() != reqwest::StatusCode::OK {
            bail!("{url} answered HTTP {}", response.status().as_u16());
        }
    }
    Ok(())
}

async fn execute(plan: &Plan) -> anyhow::Result<ExitCode> {
    let mut target = plan.target()?;
    check_health(&target).await?;
    if plan.protocol == Protocol::Sdk {
        let options = ringkv_client::Options {
            request_timeout: plan.timeout,
            ..ringkv_client::Options::default()
        };
        let sdk = ringkv_client::Client::connect(&plan.urls, options)
            .await
            .context("the SDK cannot fetch the ring")?;
        target.sdk = Some(sdk);
    }
    let target = Arc::new(target);

    let load = if plan.workload.loads() {
        let phase = Phase {
            name: "load",
            source: OpSource::EveryKey { keys: plan.keys },
            bound: Bound::Ops(plan.keys),
            timeline: false,
        };
        let result = client::run_phase(&target, phase, plan.concurrency).await?;
        if result.error_count() > 0 {
            eprintln!(
                "warning: {} of {} keys failed to load; reads of them count as misses",
                result.error_count(),
                plan.keys
            );
        }
        Some(Summary::of(&result))
    } else {
        None
    };
    if plan.warmup_ops > 0 {
        let phase = Phase {
            name: "warmup",
            source: plan.random_ops(1),
            bound: Bound::Ops(plan.warmup_ops),
            timeline: false,
        };
        client::run_phase(&target, phase, plan.concurrency).await?;
    }
    let phase = Phase {
        name: "bench",
        source: plan.random_ops(2),
        bound: plan.bound,
        timeline: true,
    };
    let result = client::run_phase(&target, phase, plan.concurrency).await?;
    let measured = Summary::of(&result);
    let (points, bucket) = match &result.timeline {
        Some(timeline) => (timeline.points(result.elapsed), timeline.width()),
        None => (Vec::new(), Duration::ZERO),
    };
    if let Some(path) = &plan.plot {
        let title = format!(
            "ringkv bench {} over {:?}, {} clients, {} node(s): {:.0} ops/s, p99 {:.2} ms",
            plan.workload.name(),
            plan.protocol,
            plan.concurrency,
            plan.urls.len(),
            measured.ops_per_sec,
            measured.p99_ms
        );
        std::fs::write(path, timeline::svg(&title, &points, bucket))
            .with_context(|| format!("cannot write the plot to {}", path.display()))?;
    }

    if plan.json {
        let report = Report {
            workload: plan.workload,
            protocol: plan.protocol,
            distribution: plan.distribution,
            urls: &plan.urls,
            concurrency: plan.concurrency,
            threads: plan.threads,
            value_size: plan.value_size,
            keys: plan.keys,
            r: plan.r,
            w: plan.w,
            warmup_ops: plan.warmup_ops,
            seed: plan.seed,
            blind_writes: plan.blind_writes,
            measured: measured.clone(),
            load: load.clone(),
            timeline_bucket_ms: bucket.as_millis(),
            timeline: points,
        };
        println!(
            "{}",
            serde_json::to_string(&report).context("cannot encode the report")?
        );
    } else {
        print_human(plan, load.as_ref(), &measured);
    }
    if measured.ops == 0 {
        bail!("no operation succeeded: {}", measured.errors_line());
    }
    Ok(ExitCode::SUCCESS)
}

fn print_human(plan: &Plan, load: Option<&Summary>, measured: &Summary) {
    let quorum: String = [("r", plan.r), ("w", plan.w)]
        .iter()
        .filter_map(|(name, value)| value.map(|value| format!(", {name}={value}")))
        .collect();
    println!(
        "ringkv bench: {} over {:?} on {} node(s), {} clients on {} thread(s), {}-byte values, {} keys ({:?}){quorum}",
        plan.workload.name(),
        plan.protocol,
        plan.urls.len(),
        plan.concurrency,
        plan.threads,
        plan.value_size,
        plan.keys,
        plan.distribution
    );
    if let Some(load) = load {
        println!(
            "load:     {} keys in {:.2} s = {:.0} ops/s, {} (not part of the numbers below)",
            load.ops,
            load.seconds,
            load.ops_per_sec,
            load.errors_line()
        );
    }
    if plan.warmup_ops > 0 {
        println!("warmup:   {} ops (not measured)", plan.warmup_ops);
    }
    println!("{}", measured.render());
}
