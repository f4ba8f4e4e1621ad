//! `ringkv bench`'s arguments and their validation into a `Plan`: after `from_args`
//! every number is within its named limit and every URL is a plain `http://` base.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context as _, bail};
use clap::Args;

use super::client::{OpSource, Target};
use super::keys::SplitMix64;
use super::keys::{KeyChoice, KeyCount, MAX_ZIPF_KEYS};
use super::{Distribution, Protocol, Workload};

const DEFAULT_URL: &str = "http://127.0.0.1:8080";
/// The default node with `--protocol resp`.
const DEFAULT_RESP_ADDR: &str = "127.0.0.1:6380";
const DEFAULT_OPS: u64 = 100_000;
/// Clients are tasks, each holding at most one connection: this bounds both.
const MAX_CONCURRENCY: usize = 4096;
/// DESIGN.md §7 default `max_value_bytes` (16 MiB): larger values are refused anyway.
const MAX_VALUE_BYTES: usize = 16 << 20;
const MAX_DURATION: Duration = Duration::from_secs(24 * 3600);
const MAX_TIMEOUT_MS: u64 = 600_000;
const MAX_THREADS: usize = 256;

#[derive(Args, Debug)]
pub struct BenchArgs {
    /// Nodes to load, comma-separated; clients are spread over them round-robin.
    /// With `--protocol resp`: `HOST:PORT` (or `redis://HOST:PORT`) of RESP listeners
    /// [default there: 127.0.0.1:6380].
    #[arg(long, env = "RINGKV_URL", default_value = DEFAULT_URL, value_delimiter = ',')]
    url: Vec<String>,
    /// HTTP (`PUT`/`GET /v1/kv`), RESP (`SET`/`GET`, one connection per client), the
    /// Rust SDK (`--url`: where it fetches the ring), or etcd's JSON gateway (`--url`:
    /// etcd client URLs).
    #[arg(long, value_enum, default_value_t = Protocol::Http)]
    protocol: Protocol,
    /// Operations to measure [default: 100000 unless --duration is given].
    #[arg(long, conflicts_with = "duration")]
    ops: Option<u64>,
    /// Seconds to measure (fractions allowed) instead of a number of operations.
    #[arg(long)]
    duration: Option<f64>,
    /// Concurrent clients, each with one request in flight.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// Bytes per written value (ASCII characters).
    #[arg(long, default_value_t = 100)]
    value_size: usize,
    /// Size of the key set: keys are bench-0 .. bench-(K-1).
    #[arg(long, default_value_t = 100_000)]
    keys: u64,
    #[arg(long, value_enum, default_value_t = Workload::Write)]
    workload: Workload,
    /// How the measured ops pick keys (the load phase writes every key once)
    /// [default: latest with ycsb-d, else uniform].
    #[arg(long, value_enum)]
    distribution: Option<Distribution>,
    /// Read quorum sent with every read (?r=R).
    #[arg(long)]
    r: Option<u8>,
    /// Write quorum sent with every write (?w=W).
    #[arg(long)]
    w: Option<u8>,
    /// Print one JSON object instead of the human summary.
    #[arg(long)]
    json: bool,
    /// Unmeasured operations before the measured ones (warms connections and caches).
    #[arg(long, default_value_t = 0)]
    warmup_ops: u64,
    /// Seed of the key choice: the same seed gives every client the same keys.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Per-request timeout in milliseconds; a request past it counts as a timeout error.
    #[arg(long, default_value_t = 10_000)]
    timeout_ms: u64,
    /// Runtime threads driving the clients; 1 uses the least CPU per request.
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// Write an SVG plot of the measured phase's throughput and p50/p99 latency over
    /// time to this file.
    #[arg(long)]
    plot: Option<PathBuf>,
    /// HTTP and SDK writes without a version add a sibling (plain `PUT`) instead of
    /// superseding what the coordinating node holds (`?overwrite=true`, like `SET`
    /// and etcd's put): on a key written again and again, records grow up to the
    /// sibling limit, and so does the cost of each write.
    #[arg(long)]
    blind_writes: bool,
}

/// How long the measured phase runs.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Bound {
    Ops(u64),
    Duration(Duration),
}

/// Validated arguments: everything `run` needs, each within its limit.
#[derive(Debug, PartialEq)]
pub struct Plan {
    /// Base URLs, `http://`, no trailing `/`; with RESP, `HOST:PORT`.
    pub urls: Vec<String>,
    pub protocol: Protocol,
    pub bound: Bound,
    pub concurrency: usize,
    pub value_size: usize,
    pub keys: u64,
    pub workload: Workload,
    pub distribution: Distribution,
    /// The key choice, precomputed once (a zipfian's ζ(n)).
    pub key_choice: KeyChoice,
    pub r: Option<u8>,
    pub w: Option<u8>,
    pub json: bool,
    pub warmup_ops: u64,
    pub seed: u64,
    pub timeout: Duration,
    pub threads: usize,
    pub plot: Option<PathBuf>,
    pub blind_writes: bool,
    /// Keys that exist: `keys`, then more as YCSB D inserts.
    pub count: KeyCount,
}

fn parse_base_url(raw: &str) -> anyhow::Result<String> {
    let trimmed = raw.trim();
    let url = reqwest::Url::parse(trimmed)
        .with_context(|| format!("--url {raw:?} is not a URL (expected http://HOST:PORT)"))?;
    if url.scheme() != "http" {
        bail!("--url {raw:?}: only http:// is supported (this build has no TLS)");
    }
    if url.host_str().is_none_or(str::is_empty) {
        bail!("--url {raw:?} has no host");
    }
    if url.query().is_some() || url.fragment().is_some() {
        bail!("--url {raw:?} must not carry a query or fragment: use --r/--w");
    }
    Ok(trimmed.trim_end_matches('/').to_owned())
}

/// A RESP listener's address: `HOST:PORT` or `redis://HOST:PORT`.
fn parse_resp_addr(raw: &str) -> anyhow::Result<String> {
    let trimmed = raw.trim();
    let addr = trimmed.strip_prefix("redis://").unwrap_or(trimmed);
    let addr = addr.trim_end_matches('/');
    let Some((host, port)) = addr.rsplit_once(':') else {
        bail!("--url {raw:?}: with --protocol resp give HOST:PORT (e.g. 127.0.0.1:6380)");
    };
    if host.is_empty() || host.contains('/') {
        bail!("--url {raw:?} has no usable host");
    }
    port.parse::<u16>()
        .ok()
        .filter(|port| *port != 0)
        .with_context(|| format!("--url {raw:?}: {port:?} is not a port"))?;
    Ok(addr.to_owned())
}

fn check_quorum(name: &str, value: Option<u8>) -> anyhow::Result<Option<u8>> {
    if value == Some(0) {
        bail!("--{name} must be at least 1");
    }
    Ok(value)
}

impl Plan {
    pub fn from_args(args: BenchArgs) -> anyhow::Result<Plan> {
        if args.workload == Workload::YcsbE {
            bail!(
                "--workload ycsb-e scans key ranges; ringkv places keys by hash and has no \
                 range scans (DESIGN.md), so there is nothing to measure"
            );
        }
        let urls = match args.protocol {
            Protocol::Http | Protocol::Sdk | Protocol::Etcd => args
                .url
                .iter()
                .filter(|url| !url.trim().is_empty())
                .map(|url| parse_base_url(url))
                .collect::<anyhow::Result<Vec<_>>>()?,
            Protocol::Resp if args.url == [DEFAULT_URL] => vec![DEFAULT_RESP_ADDR.to_owned()],
            Protocol::Resp => args
                .url
                .iter()
                .filter(|url| !url.trim().is_empty())
                .map(|url| parse_resp_addr(url))
                .collect::<anyhow::Result<Vec<_>>>()?,
        };
        if args.protocol == Protocol::Resp && (args.r.is_some() || args.w.is_some()) {
            bail!(
                "--r/--w are HTTP query parameters; over RESP every request uses the nodes' \
                 read_quorum/write_quorum"
            );
        }
        if args.blind_writes && matches!(args.protocol, Protocol::Resp | Protocol::Etcd) {
            bail!("--blind-writes is for HTTP and the SDK: SET and etcd's put always overwrite");
        }
        if args.protocol == Protocol::Etcd && (args.r.is_some() || args.w.is_some()) {
            bail!("--r/--w are ringkv quorums; etcd has none to choose");
        }
        let distribution = args.distribution.unwrap_or(match args.workload {
            Workload::YcsbD => Distribution::Latest,
            _ => Distribution::Uniform,
        });
        if urls.is_empty() {
            bail!("--url names no node");
        }
        let bound = match (args.ops, args.duration) {
            (Some(_), Some(_)) => bail!("give --ops or --duration, not both"),
            (Some(0), None) => bail!("--ops must be at least 1"),
            (Some(ops), None) => Bound::Ops(ops),
            (None, Some(seconds)) => {
                let duration = Duration::try_from_secs_f64(seconds)
                    .ok()
                    .filter(|duration| !duration.is_zero() && *duration <= MAX_DURATION)
                    .with_context(|| {
                        format!(
                            "--duration must be above 0 and at most {} seconds, got {seconds}",
                            MAX_DURATION.as_secs()
                        )
                    })?;
                Bound::Duration(duration)
            }
            (None, None) => Bound::Ops(DEFAULT_OPS),
        };
        if !(1..=MAX_CONCURRENCY).contains(&args.concurrency) {
            bail!(
                "--concurrency must be 1..={MAX_CONCURRENCY}, got {}",
                args.concurrency
            );
        }
        if args.value_size > MAX_VALUE_BYTES {
            bail!(
                "--value-size must be at most {MAX_VALUE_BYTES} bytes, got {}",
                args.value_size
            );
        }
        if args.keys == 0 {
            bail!("--keys must be at least 1");
        }
        if distribution != Distribution::Uniform && args.keys > MAX_ZIPF_KEYS {
            bail!(
                "--keys must be at most {MAX_ZIPF_KEYS} with --distribution {}, got {}",
                if distribution == Distribution::Latest {
                    "latest"
                } else {
                    "zipfian"
                },
                args.keys
            );
        }
        if !(1..=MAX_TIMEOUT_MS).contains(&args.timeout_ms) {
            bail!(
                "--timeout-ms must be 1..={MAX_TIMEOUT_MS}, got {}",
                args.timeout_ms
            );
        }
        if !(1..=MAX_THREADS).contains(&args.threads) {
            bail!("--threads must be 1..={MAX_THREADS}, got {}", args.threads);
        }
        Ok(Plan {
            urls,
            protocol: args.protocol,
            bound,
            concurrency: args.concurrency,
            value_size: args.value_size,
            keys: args.keys,
            workload: args.workload,
            distribution,
            key_choice: KeyChoice::new(distribution, args.keys),
            r: check_quorum("r", args.r)?,
            w: check_quorum("w", args.w)?,
            json: args.json,
            warmup_ops: args.warmup_ops,
            seed: args.seed,
            timeout: Duration::from_millis(args.timeout_ms),
            threads: args.threads,
            plot: args.plot,
            blind_writes: args.blind_writes,
            count: KeyCount::new(args.keys),
        })
    }

    /// `value_size` alphanumeric characters from the seed: incompressible enough not
    /// to flatter the storage engine, and the same each run.
    pub fn value(&self) -> anyhow::Result<String> {
        const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
        let mut rng = SplitMix64::new(self.seed);
        let alphabet_len = u64::try_from(ALPHABET.len()).context("alphabet length")?;
        let value: String = (0..self.value_size)
            .map(|_| {
                let index = usize::try_from(rng.below(alphabet_len)).unwrap_or(0);
                char::from(ALPHABET[index])
            })
            .collect();
        Ok(value)
    }

    /// `{"value": "..."}` with `value()`: the body of every HTTP write.
    pub fn write_body(&self) -> anyhow::Result<Vec<u8>> {
        serde_json::to_vec(&serde_json::json!({ "value": self.value()? }))
            .context("cannot encode the write body")
    }

    pub fn target(&self) -> anyhow::Result<Target> {
        let client = reqwest::Client::builder()
            .pool_max_idle_per_host(self.concurrency)
            .timeout(self.timeout)
            .tcp_nodelay(true)
            .no_proxy()
            .build()
            .context("cannot build the HTTP client")?;
        let endpoints = match self.protocol {
            Protocol::Http | Protocol::Etcd => self
                .urls
                .iter()
                .map(|url| super::http1::Endpoint::of(url))
                .collect::<anyhow::Result<Vec<_>>>()?,
            Protocol::Resp | Protocol::Sdk => Vec::new(),
        };
        Ok(Target {
            client,
            endpoints,
            protocol: self.protocol,
            resp_value: bytes::Bytes::from(self.value()?),
            urls: self.urls.clone(),
            read_query: self.r.map(|r| format!("?r={r}")).unwrap_or_default(),
            write_query: match (self.blind_writes, self.w) {
                (true, Some(w)) => format!("?w={w}"),
                (true, None) => String::new(),
                (false, Some(w)) => format!("?overwrite=true&w={w}"),
                (false, None) => "?overwrite=true".to_owned(),
            },
            update_query: self.w.map(|w| format!("?w={w}")).unwrap_or_default(),
            blind: self.blind_writes,
            write_body: self.write_body()?,
            timeout: self.timeout,
            sdk: None,
            r: self.r,
            w: self.w,
            etcd_value: {
                use base64::Engine as _;
                base64::engine::general_purpose::STANDARD.encode(self.value()?)
            },
        })
    }

    pub fn random_ops(&self, phase: u32) -> OpSource {
        OpSource::Random {
            seed: self.seed,
            phase,
            count: self.count.clone(),
            workload: self.workload,
            choice: self.key_choice,
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct TestCli {
        #[command(flatten)]
        bench: BenchArgs,
    }

    fn plan(args: &[&str]) -> anyhow::Result<Plan> {
        let argv = std::iter::once("bench").chain(args.iter().copied());
        let cli = TestCli::try_parse_from(argv)?;
        Plan::from_args(cli.bench)
    }

    fn refused(args: &[&str]) -> String {
        match plan(args) {
            Ok(plan) => panic!("{args:?} was accepted: {plan:?}"),
            Err(error) => format!("{error:#}"),
        }
    }

    #[test]
    fn defaults_follow_the_documented_values() {
        let plan = plan(&["--url", "http://127.0.0.1:8080"]).expect("valid");
        assert_eq!(plan.bound, Bound::Ops(100_000));
        assert_eq!(plan.concurrency, 64);
        assert_eq!(plan.value_size, 100);
        assert_eq!(plan.keys, 100_000);
        assert_eq!(plan.workload, Workload::Write);
        assert_eq!((plan.r, plan.w, plan.warmup_ops), (None, None, 0));
        assert_eq!(plan.threads, 1);
        assert!(!plan.json);
    }

    #[test]
    fn urls_split_on_commas_and_lose_trailing_slashes() {
        let plan = plan(&["--url", "http://127.0.0.1:1/,http://127.0.0.1:2"]).expect("valid");
        assert_eq!(plan.urls, ["http://127.0.0.1:1", "http://127.0.0.1:2"]);
    }

    #[test]
    fn urls_without_http_or_with_a_query_are_refused() {
        assert!(refused(&["--url", "127.0.0.1:8080"]).contains("not a URL"));
        assert!(refused(&["--url", "https://127.0.0.1:8080"]).contains("only http://"));
        assert!(refused(&["--url", "http://127.0.0.1:1?w=2"]).contains("--r/--w"));
        assert!(refused(&["--url", ","]).contains("names no node"));
    }

    #[test]
    fn resp_takes_host_port_addresses_and_no_quorums() {
        let resp = plan(&[
            "--protocol",
            "resp",
            "--url",
            "127.0.0.1:6380,redis://127.0.0.1:6381/",
        ])
        .expect("valid");
        assert_eq!(resp.protocol, Protocol::Resp);
        assert_eq!(resp.urls, ["127.0.0.1:6380", "127.0.0.1:6381"]);
        let default = plan(&["--protocol", "resp"]).expect("valid");
        assert!(
            default.urls == [DEFAULT_RESP_ADDR] || std::env::var("RINGKV_URL").is_ok(),
            "{:?}",
            default.urls
        );
        assert!(refused(&["--protocol", "resp", "--url", "localhost"]).contains("HOST:PORT"));
        assert!(refused(&["--protocol", "resp", "--url", "h:0"]).contains("not a port"));
        assert!(refused(&["--protocol", "resp", "--url", "h:99999"]).contains("not a port"));
        assert!(refused(&["--protocol", "resp", "--url", "h:1", "--w", "2"]).contains("--r/--w"));
    }

    /// Writes overwrite unless --blind-writes; a write carrying a version (YCSB F)
    /// never overwrites; etcd and RESP refuse the flag and quorums where they mean
    /// nothing; YCSB E is refused with the reason and D reads the latest keys.
    #[test]
    fn write_queries_protocols_and_new_workloads() {
        let target = |args: &[&str]| plan(args).expect("valid").target().expect("target");
        let overwrite = target(&["--w", "2"]);
        assert_eq!(overwrite.write_query, "?overwrite=true&w=2");
        assert_eq!(overwrite.update_query, "?w=2");
        assert_eq!(target(&[]).write_query, "?overwrite=true");
        let blind = target(&["--blind-writes"]);
        assert_eq!((blind.write_query.as_str(), blind.blind), ("", true));
        assert!(refused(&["--protocol", "etcd", "--blind-writes"]).contains("--blind-writes"));
        assert!(refused(&["--protocol", "resp", "--url", "h:1", "--blind-writes"]).contains("SET"));
        assert!(refused(&["--protocol", "etcd", "--r", "1"]).contains("etcd"));
        assert!(refused(&["--workload", "ycsb-e"]).contains("range scans"));
        let d = plan(&["--workload", "ycsb-d"]).expect("valid");
        assert_eq!(d.distribution, Distribution::Latest);
        let d_uniform =
            plan(&["--workload", "ycsb-d", "--distribution", "uniform"]).expect("valid");
        assert_eq!(d_uniform.distribution, Distribution::Uniform);
        let etcd = plan(&["--protocol", "etcd", "--url", "http://127.0.0.1:2379"]).expect("valid");
        assert_eq!(etcd.urls, ["http://127.0.0.1:2379"]);
        let endpoints = etcd.target().expect("target").endpoints;
        assert_eq!(endpoints[0].addr, "127.0.0.1:2379".parse().unwrap());
    }

    #[test]
    fn ycsb_workloads_and_zipfian_keys_are_parsed_and_bounded() {
        let plan = plan(&[
            "--workload",
            "ycsb-b",
            "--distribution",
            "zipfian",
            "--keys",
            "50",
        ])
        .expect("valid");
        assert_eq!(plan.workload, Workload::YcsbB);
        assert_eq!(plan.distribution, Distribution::Zipfian);
        assert!(matches!(plan.key_choice, KeyChoice::Zipfian(_)));
        assert!(refused(&["--distribution", "zipfian", "--keys", "100000001"]).contains("at most"));
    }

    #[test]
    fn duration_replaces_the_op_count() {
        let plan = plan(&["--url", "http://h:1", "--duration", "2.5"]).expect("valid");
        assert_eq!(plan.bound, Bound::Duration(Duration::from_millis(2500)));
    }

    #[test]
    fn ops_and_duration_together_are_refused() {
        let error = refused(&["--ops", "10", "--duration", "5"]);
        assert!(error.contains("cannot be used with"), "{error}");
    }

    #[test]
    fn bounds_outside_their_limits_are_refused() {
        for (args, message) in [
            (&["--ops", "0"][..], "--ops must be at least 1"),
            (&["--duration", "0"], "--duration must be above 0"),
            (&["--duration=-1"], "--duration must be above 0"),
            (&["--duration", "NaN"], "--duration must be above 0"),
            (&["--duration", "1e9"], "--duration must be above 0"),
            (&["--concurrency", "0"], "--concurrency must be 1..=4096"),
            (&["--concurrency", "5000"], "--concurrency must be 1..=4096"),
            (&["--keys", "0"], "--keys must be at least 1"),
            (
                &["--value-size", "16777217"],
                "--value-size must be at most",
            ),
            (&["--r", "0"], "--r must be at least 1"),
            (&["--w", "0"], "--w must be at least 1"),
            (&["--timeout-ms", "0"], "--timeout-ms must be 1..="),
            (&["--threads", "0"], "--threads must be 1..=256"),
        ] {
            let mut full = vec!["--url", "http://127.0.0.1:8080"];
            full.extend_from_slice(args);
            let error = refused(&full);
            assert!(error.contains(message), "{args:?}: {error}");
        }
    }

    #[test]
    fn workloads_quorums_and_warmup_are_parsed() {
        let plan = plan(&[
            "--url",
            "http://h:1",
            "--workload",
            "mixed",
            "--r",
            "2",
            "--w",
            "3",
            "--warmup-ops",
            "500",
            "--json",
        ])
        .expect("valid");
        assert_eq!(plan.workload, Workload::Mixed);
        assert_eq!((plan.r, plan.w, plan.warmup_ops), (Some(2), Some(3), 500));
        assert!(plan.json);
        assert!(refused(&["--workload", "scan"]).contains("invalid value"));
    }

    #[test]
    fn the_write_body_is_json_with_value_size_characters() {
        let plan = plan(&["--url", "http://h:1", "--value-size", "37"]).expect("valid");
        let body: serde_json::Value =
            serde_json::from_slice(&plan.write_body().expect("encodes")).expect("json");
        let value = body["value"].as_str().expect("a string value");
        assert_eq!(value.len(), 37);
        assert!(value.bytes().all(|byte| byte.is_ascii_alphanumeric()));
        assert_eq!(
            plan.write_body().expect("encodes"),
            plan.write_body().expect("encodes")
        );
    }
}
