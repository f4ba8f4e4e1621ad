//! The load: `concurrency` tokio tasks sharing one reqwest client (its keep-alive pool
//! holds up to `concurrency` idle connections per node), client i talking to node
//! `i % nodes`. Each client records into its own histogram; the phase merges them at
//! the end, so the hot path shares nothing but two atomic counters.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::Context as _;
use reqwest::header::CONTENT_TYPE;
use tokio::sync::oneshot;
use tokio::task::JoinSet;
use tokio::time::Instant;

use super::keys::{Op, OpStream, key_name};
use super::progress;
use super::report::{ErrorKind, PhaseResult};
use super::{Bound, Workload};

/// After a connection error a client pauses this long, so a dead node costs a
/// trickle of counted errors instead of a busy loop of refused connects.
const CONNECTION_ERROR_BACKOFF: Duration = Duration::from_millis(10);

/// Everything the clients of a run share; built once from the plan.
pub struct Target {
    pub client: reqwest::Client,
    /// Node base URLs without a trailing `/`.
    pub urls: Vec<String>,
    /// `""` or `"?r=R"`, appended to every read.
    pub read_query: String,
    /// `""` or `"?w=W"`, appended to every write.
    pub write_query: String,
    /// The JSON body of every write: `{"value": "<value-size characters>"}`.
    pub write_body: Vec<u8>,
    /// The request timeout, which also bounds the latency histograms.
    pub timeout: Duration,
}

/// Where a phase's ops come from.
#[derive(Clone, Copy, Debug)]
pub enum OpSource {
    /// Write `bench-0 .. bench-{keys-1}` once each, in ticket order (the read load).
    EveryKey { keys: u64 },
    /// Uniformly random keys, seeded per `(seed, phase, client)`.
    Random {
        seed: u64,
        phase: u32,
        keys: u64,
        workload: Workload,
    },
}

/// One phase of a run: its name on the progress line, its ops and when it stops.
#[derive(Clone, Copy, Debug)]
pub struct Phase {
    pub name: &'static str,
    pub source: OpSource,
    pub bound: Bound,
}

/// When the clients of a running phase stop.
#[derive(Clone, Copy)]
enum Limit {
    /// Stop once this many ops were handed out (over all clients).
    Ops(u64),
    /// Stop at this instant; an op still in flight then is abandoned, not counted.
    Deadline(Instant),
}

/// Counters shared by the clients of one phase.
struct Shared {
    /// Op numbers handed out; with `Limit::Ops`, the op number a client runs.
    tickets: AtomicU64,
    /// Ops finished (success or error), for the progress line.
    done: Arc<AtomicU64>,
}

/// A successful answer: a read of an absent key is a miss, not an error.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Success {
    Hit,
    Miss,
}

/// What an answer's status means for `op`: writes want `200`; reads take `200`, and
/// `300` (siblings: the read worked), and `404` as a miss.
pub fn classify(op: Op, status: u16) -> Result<Success, ErrorKind> {
    match (op, status) {
        (Op::Write(_), 200) | (Op::Read(_), 200 | 300) => Ok(Success::Hit),
        (Op::Read(_), 404) => Ok(Success::Miss),
        _ => Err(ErrorKind::Status(status)),
    }
}

/// A failed op: its kind, counted, and what the node or the network said, kept once
/// per kind as an example for the report.
pub struct Failure {
    pub kind: ErrorKind,
    pub detail: String,
}

/// Longest example kept per error kind, in characters.
const MAX_DETAIL_CHARS: usize = 300;

fn failure(error: &reqwest::Error) -> Failure {
    let kind = if error.is_timeout() {
        ErrorKind::Timeout
    } else {
        ErrorKind::Connection
    };
    // reqwest's own message names only the URL; the cause is in the source chain.
    let mut detail = error.to_string();
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        detail.push_str(": ");
        detail.push_str(&cause.to_string());
        source = cause.source();
    }
    Failure {
        kind,
        detail: detail.chars().take(MAX_DETAIL_CHARS).collect(),
    }
}

impl Target {
    async fn send(&self, base: &str, op: Op) -> Result<Success, Failure> {
        let key = key_name(op.key_index());
        let request = match op {
            Op::Read(_) => self
                .client
                .get(format!("{base}/v1/kv/{key}{}", self.read_query)),
            Op::Write(_) => self
                .client
                .put(format!("{base}/v1/kv/{key}{}", self.write_query))
                .header(CONTENT_TYPE, "application/json")
                .body(self.write_body.clone()),
        };
        let response = request.send().await.map_err(|error| failure(&error))?;
        let status = response.status().as_u16();
        // Read the whole body: only then does the connection go back to the pool.
        let body = response.bytes().await.map_err(|error| failure(&error))?;
        classify(op, status).map_err(|kind| Failure {
            kind,
            detail: String::from_utf8_lossy(&body)
                .chars()
                .take(MAX_DETAIL_CHARS)
                .collect(),
        })
    }
}

/// Runs one phase with `concurrency` clients and returns their merged results.
///
/// # Errors
/// If a client task panicked (a bug) or histograms cannot be built or merged.
pub async fn run_phase(
    target: &Arc<Target>,
    phase: Phase,
    concurrency: usize,
) -> anyhow::Result<PhaseResult> {
    let shared = Arc::new(Shared {
        tickets: AtomicU64::new(0),
        done: Arc::new(AtomicU64::new(0)),
    });
    let started = Instant::now();
    let limit = match phase.bound {
        Bound::Ops(ops) => Limit::Ops(ops),
        Bound::Duration(duration) => Limit::Deadline(started + duration),
    };
    let (stop_progress, stopped) = oneshot::channel();
    let progress = tokio::spawn(progress::report(
        phase.name,
        Arc::clone(&shared.done),
        started,
        stopped,
    ));

    let mut clients = JoinSet::new();
    for index in 0..concurrency {
        let client = u32::try_from(index).context("too many clients")?;
        let base_index = index % target.urls.len();
        clients.spawn(run_client(
            Arc::clone(target),
            Arc::clone(&shared),
            base_index,
            client,
            phase.source,
            limit,
        ));
    }
    let mut total = PhaseResult::new(target.timeout)?;
    while let Some(joined) = clients.join_next().await {
        let result = joined.context("a bench client stopped unexpectedly")??;
        total.merge(&result)?;
    }
    total.elapsed = started.elapsed();

    // The receiver only ends when told: a failed send means it already ended.
    let _ = stop_progress.send(());
    progress
        .await
        .context("the progress reporter stopped unexpectedly")?;
    Ok(total)
}

/// One client's op sequence.
enum ClientOps {
    EveryKey { keys: u64 },
    Random(OpStream),
}

impl ClientOps {
    fn new(source: OpSource, client: u32) -> ClientOps {
        match source {
            OpSource::EveryKey { keys } => ClientOps::EveryKey { keys },
            OpSource::Random {
                seed,
                phase,
                keys,
                workload,
            } => ClientOps::Random(OpStream::new(seed, phase, client, keys, workload)),
        }
    }

    /// The op for `ticket`, or `None` when the source is exhausted.
    fn next(&mut self, ticket: u64) -> Option<Op> {
        match self {
            ClientOps::EveryKey { keys } => (ticket < *keys).then_some(Op::Write(ticket)),
            ClientOps::Random(stream) => Some(stream.next_op()),
        }
    }
}

async fn run_client(
    target: Arc<Target>,
    shared: Arc<Shared>,
    base_index: usize,
    client: u32,
    source: OpSource,
    limit: Limit,
) -> anyhow::Result<PhaseResult> {
    let base = &target.urls[base_index];
    let mut result = PhaseResult::new(target.timeout)?;
    let mut ops = ClientOps::new(source, client);
    loop {
        let ticket = shared.tickets.fetch_add(1, Ordering::Relaxed);
        if let Limit::Ops(limit) = limit
            && ticket >= limit
        {
            break;
        }
        let Some(op) = ops.next(ticket) else {
            break;
        };
        let started = Instant::now();
        let outcome = match limit {
            Limit::Ops(_) => target.send(base, op).await,
            Limit::Deadline(deadline) => {
                match tokio::time::timeout_at(deadline, target.send(base, op)).await {
                    Ok(outcome) => outcome,
                    Err(_elapsed) => break,
                }
            }
        };
        let latency = started.elapsed();
        shared.done.fetch_add(1, Ordering::Relaxed);
        match outcome {
            Ok(Success::Hit) => result.record_success(latency),
            Ok(Success::Miss) => {
                result.record_success(latency);
                result.misses += 1;
            }
            Err(Failure { kind, detail }) => {
                result.record_error(kind, detail);
                if kind == ErrorKind::Connection {
                    let resume = Instant::now() + CONNECTION_ERROR_BACKOFF;
                    let resume = match limit {
                        Limit::Deadline(deadline) => resume.min(deadline),
                        Limit::Ops(_) => resume,
                    };
                    tokio::time::sleep_until(resume).await;
                }
            }
        }
    }
    Ok(result)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_succeed_only_on_200() {
        assert_eq!(classify(Op::Write(1), 200), Ok(Success::Hit));
        assert_eq!(classify(Op::Write(1), 503), Err(ErrorKind::Status(503)));
        assert_eq!(classify(Op::Write(1), 404), Err(ErrorKind::Status(404)));
    }

    /// A read of a key not loaded yet is a miss; siblings (300) are a successful read.
    #[test]
    fn reads_count_404_as_miss_and_300_as_ok() {
        assert_eq!(classify(Op::Read(1), 200), Ok(Success::Hit));
        assert_eq!(classify(Op::Read(1), 300), Ok(Success::Hit));
        assert_eq!(classify(Op::Read(1), 404), Ok(Success::Miss));
        assert_eq!(classify(Op::Read(1), 500), Err(ErrorKind::Status(500)));
    }
}
