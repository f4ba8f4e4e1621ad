//! The load: `concurrency` tokio tasks, client i talking to node `i % nodes` over its
//! own keep-alive connection (HTTP/1.1 by `http1`, or RESP), or through the shared
//! SDK client. Each client records into its own histogram; the phase merges them at
//! the end, so the hot path shares nothing but two atomic counters.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use bytes::Bytes;
use tokio::sync::oneshot;
use tokio::task::JoinSet;
use tokio::time::Instant;

use super::http1::{Answer, Endpoint, HttpConn};
use super::keys::{KeyChoice, KeyCount, Op, OpStream, key_name};
use super::progress;
use super::report::{ErrorKind, PhaseResult};
use super::timeline::Timeline;
use super::{Bound, Protocol, Workload};

/// After a connection error a client pauses this long, so a dead node costs a
/// trickle of counted errors instead of a busy loop of refused connects.
const CONNECTION_ERROR_BACKOFF: Duration = Duration::from_millis(10);

/// Everything the clients of a run share; built once from the plan.
pub struct Target {
    /// For `/health` only: the load goes through `http1`.
    pub client: reqwest::Client,
    /// With HTTP and etcd: where each of `urls` is (resolved once).
    pub endpoints: Vec<Endpoint>,
    pub protocol: Protocol,
    /// The value of every RESP `SET` (`value_size` characters).
    pub resp_value: Bytes,
    /// Node base URLs without a trailing `/`.
    pub urls: Vec<String>,
    /// `""` or `"?r=R"`, appended to every read.
    pub read_query: String,
    /// `?overwrite=true` (unless `--blind-writes`) and `&w=W`, appended to every
    /// write without a version.
    pub write_query: String,
    /// `""` or `"?w=W"`, appended to every write that carries a version (YCSB F).
    pub update_query: String,
    /// `--blind-writes`: writes add siblings instead of superseding.
    pub blind: bool,
    /// The JSON body of every write: `{"value": "<value-size characters>"}`.
    pub write_body: Vec<u8>,
    /// The request timeout, which also bounds the latency histograms.
    pub timeout: Duration,
    /// With `--protocol sdk`: the client every bench client shares (set once the
    /// ring is fetched).
    pub sdk: Option<ringkv_client::Client>,
    /// `read_query`'s and `write_query`'s quorums, for the SDK.
    pub r: Option<u8>,
    pub w: Option<u8>,
    /// With `--protocol etcd`: the value, base64 as etcd's JSON gateway wants it.
    pub etcd_value: String,
}

/// Where a phase's ops come from.
#[derive(Clone, Debug)]
pub enum OpSource {
    /// Write `bench-0 .. bench-{keys-1}` once each, in ticket order (the read load).
    EveryKey { keys: u64 },
    /// Random keys and ops, seeded per `(seed, phase, client)`.
    Random {
        seed: u64,
        phase: u32,
        count: KeyCount,
        workload: Workload,
        choice: KeyChoice,
    },
}

/// One phase of a run: its name on the progress line, its ops and when it stops.
#[derive(Clone, Debug)]
pub struct Phase {
    pub name: &'static str,
    pub source: OpSource,
    pub bound: Bound,
    /// Whether to keep throughput and latency over time (the measured phase).
    pub timeline: bool,
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
        (Op::Write(_) | Op::Update(_), 200) | (Op::Read(_), 200 | 300) => Ok(Success::Hit),
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
pub(super) const MAX_DETAIL_CHARS: usize = 300;

/// An answer's body as an error example: text, at most `MAX_DETAIL_CHARS`.
pub(super) fn detail(body: &[u8]) -> String {
    String::from_utf8_lossy(body)
        .chars()
        .take(MAX_DETAIL_CHARS)
        .collect()
}

/// A failed exchange on an HTTP connection: a timeout or a connection error.
fn io_failure(base: &str, error: &std::io::Error) -> Failure {
    let kind = if error.kind() == std::io::ErrorKind::TimedOut {
        ErrorKind::Timeout
    } else {
        ErrorKind::Connection
    };
    Failure {
        kind,
        detail: format!("{base}: {error}")
            .chars()
            .take(MAX_DETAIL_CHARS)
            .collect(),
    }
}

/// A bench client's connections, opened on first use and dropped on any error.
#[derive(Default)]
pub struct Conns {
    resp: Option<super::resp::RespConn>,
    http: Option<HttpConn>,
}

impl Target {
    /// Runs `op` against node `index` of `urls` (a URL, or a RESP address), over
    /// the client's connections `conns`.
    async fn send(&self, index: usize, op: Op, conns: &mut Conns) -> Result<Success, Failure> {
        match self.protocol {
            Protocol::Http => self.send_http(index, op, &mut conns.http).await,
            Protocol::Sdk => self.send_sdk(op).await,
            Protocol::Etcd => self.send_etcd(index, op, &mut conns.http).await,
            Protocol::Resp => self.send_resp(index, op, &mut conns.resp).await,
        }
    }

    /// One request over the client's keep-alive connection to node `index` (opened
    /// if needed; dropped on an error, a timeout or `Connection: close`). A request
    /// that finds a reused connection closed by the server is sent once more on a
    /// new one.
    pub(super) async fn http_call(
        &self,
        index: usize,
        conn: &mut Option<HttpConn>,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Result<Answer, Failure> {
        let endpoint = &self.endpoints[index];
        let base = &self.urls[index];
        for attempt in 0..2 {
            let connection = match conn {
                Some(connection) => connection,
                None => match tokio::time::timeout(self.timeout, HttpConn::open(endpoint)).await {
                    Ok(Ok(connection)) => conn.insert(connection),
                    Ok(Err(error)) => return Err(io_failure(base, &error)),
                    Err(_elapsed) => {
                        let error = std::io::Error::from(std::io::ErrorKind::TimedOut);
                        return Err(io_failure(base, &error));
                    }
                },
            };
            let reused = connection.answered > 0;
            let sent = tokio::time::timeout(
                self.timeout,
                connection.request(endpoint, method, path, headers, body),
            )
            .await;
            match sent {
                Ok(Ok(answer)) => {
                    if answer.close {
                        *conn = None;
                    }
                    return Ok(answer);
                }
                Ok(Err(error)) => {
                    *conn = None;
                    let stale = reused
                        && matches!(
                            error.kind(),
                            std::io::ErrorKind::UnexpectedEof
                                | std::io::ErrorKind::ConnectionReset
                                | std::io::ErrorKind::BrokenPipe
                        );
                    if !(stale && attempt == 0) {
                        return Err(io_failure(base, &error));
                    }
                }
                Err(_elapsed) => {
                    // An answer may still come: the connection is out of step.
                    *conn = None;
                    return Err(Failure {
                        kind: ErrorKind::Timeout,
                        detail: format!("no answer from {base} in {:?}", self.timeout),
                    });
                }
            }
        }
        Err(Failure {
            kind: ErrorKind::Connection,
            detail: format!("{base}: the connection closed twice"),
        })
    }

    async fn send_http(
        &self,
        index: usize,
        op: Op,
        conn: &mut Option<HttpConn>,
    ) -> Result<Success, Failure> {
        let key = key_name(op.key_index());
        // A read-modify-write reads the version first (a miss writes blind).
        let version = match op {
            Op::Update(_) => self.read_version(index, conn, &key).await?,
            Op::Read(_) | Op::Write(_) => None,
        };
        let answer = match op {
            Op::Read(_) => {
                let path = format!("/v1/kv/{key}{}", self.read_query);
                self.http_call(index, conn, "GET", &path, &[], b"").await?
            }
            Op::Write(_) | Op::Update(_) => {
                let query = match version {
                    Some(_) => &self.update_query,
                    None => &self.write_query,
                };
                let path = format!("/v1/kv/{key}{query}");
                let mut headers = vec![("Content-Type", "application/json")];
                if let Some(version) = &version {
                    headers.push((VERSION_HEADER, version.as_str()));
                }
                self.http_call(index, conn, "PUT", &path, &headers, &self.write_body)
                    .await?
            }
        };
        classify(op, answer.status).map_err(|kind| Failure {
            kind,
            detail: detail(&answer.body),
        })
    }

    /// The version token of `key` as a read answers it (`X-Ringkv-Version`, with
    /// raw bytes accepted), `None` for a key never written.
    async fn read_version(
        &self,
        index: usize,
        conn: &mut Option<HttpConn>,
        key: &str,
    ) -> Result<Option<String>, Failure> {
        let path = format!("/v1/kv/{key}{}", self.read_query);
        let headers = [("Accept", "application/octet-stream")];
        let answer = self
            .http_call(index, conn, "GET", &path, &headers, b"")
            .await?;
        match answer.status {
            // Siblings come as JSON, with the version that resolves them.
            300 => Ok(serde_json::from_slice::<serde_json::Value>(&answer.body)
                .ok()
                .and_then(|json| json["version"].as_str().map(str::to_owned))),
            200 | 404 => Ok(answer.version),
            status => Err(Failure {
                kind: ErrorKind::Status(status),
                detail: detail(&answer.body),
            }),
        }
    }
}

/// The header that carries a version with raw bodies (`server::request`).
const VERSION_HEADER: &str = "x-ringkv-version";

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
    let timeline = if phase.timeline {
        Some(Arc::new(Mutex::new(Timeline::new(target.timeout)?)))
    } else {
        None
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
            phase.source.clone(),
            limit,
            timeline.clone().map(|timeline| (timeline, started)),
        ));
    }
    let mut total = PhaseResult::new(target.timeout)?;
    while let Some(joined) = clients.join_next().await {
        let result = joined.context("a bench client stopped unexpectedly")??;
        total.merge(&result)?;
    }
    total.elapsed = started.elapsed();
    if let Some(timeline) = timeline {
        let timeline = Arc::try_unwrap(timeline)
            .map_err(|_| anyhow::anyhow!("a bench client still holds the timeline"))?;
        total.timeline = Some(
            timeline
                .into_inner()
                .map_err(|_| anyhow::anyhow!("a bench client panicked"))?,
        );
    }

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
                count,
                workload,
                choice,
            } => ClientOps::Random(OpStream::with_choice(
                seed, phase, client, count, workload, choice,
            )),
        }
    }

    /// Called when `op` was answered (or failed): YCSB D's inserts become readable.
    fn answered(&self, op: Op) {
        if let (ClientOps::Random(stream), Op::Write(index)) = (self, op) {
            stream.answered(index);
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
    timeline: Option<(Arc<Mutex<Timeline>>, Instant)>,
) -> anyhow::Result<PhaseResult> {
    let mut result = PhaseResult::new(target.timeout)?;
    let mut conns = Conns::default();
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
            Limit::Ops(_) => target.send(base_index, op, &mut conns).await,
            Limit::Deadline(deadline) => {
                let sent = target.send(base_index, op, &mut conns);
                match tokio::time::timeout_at(deadline, sent).await {
                    Ok(outcome) => outcome,
                    Err(_elapsed) => break,
                }
            }
        };
        let latency = started.elapsed();
        ops.answered(op);
        shared.done.fetch_add(1, Ordering::Relaxed);
        if let Some((timeline, phase_start)) = &timeline
            && let Ok(mut timeline) = timeline.lock()
        {
            let at = phase_start.elapsed();
            timeline.record(at, outcome.is_ok().then_some(latency));
        }
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
