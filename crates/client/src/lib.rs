//! The ringkv Rust SDK (issue 9): a client that knows the ring.
//!
//! [`Client::connect`] fetches the ring (`GET /v1/cluster/ring`) from the first
//! reachable of the given nodes and sends each request straight to a replica of its
//! key (no forwarding hop), rotating over the replicas so the load spreads. The ring
//! is fetched again once it is older than [`Options::ring_refresh`] and after any
//! request that could not reach a node, so joins, leaves and removals are followed.
//! Connections are pooled (HTTP/1.1 keep-alive, one pool per client: clone the
//! client, do not build one per request).
//!
//! Retries (capped exponential backoff, [`Options::retries`] attempts, each on the
//! next replica): reads on any failure to reach a node or a `503`/`504`; writes and
//! deletes only when the request never left (the connection could not be made):
//! a write that may have been applied is not sent again, since a second copy of a
//! blind write would be a sibling of the first.
//!
//! Values and versions are types: a read gives a [`Value`] or, when writers raced,
//! [`Siblings`]; both carry the [`Version`] to write back with to supersede them.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use reqwest::StatusCode;
use ringkv_core::ring::Ring;
use ringkv_core::{NodeId, Token};
use serde_json::Value as Json;

mod http;

use http::{kv_url, parse_ring, read_answer, server_error, token_of};

/// The header that carries a version with raw (`application/octet-stream`) bodies.
const VERSION_HEADER: &str = "x-ringkv-version";

/// How the client behaves.
#[derive(Debug, Clone)]
pub struct Options {
    /// Longest a single HTTP request may take.
    pub request_timeout: Duration,
    /// The ring is fetched again once it is this old.
    pub ring_refresh: Duration,
    /// Most attempts per operation (at least 1).
    pub retries: u32,
    /// First pause between attempts; doubles up to `backoff_max`.
    pub backoff_min: Duration,
    pub backoff_max: Duration,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            request_timeout: Duration::from_secs(10),
            ring_refresh: Duration::from_secs(10),
            retries: 3,
            backoff_min: Duration::from_millis(20),
            backoff_max: Duration::from_millis(500),
        }
    }
}

/// A version token: opaque; hand it back with a write or delete to supersede what
/// was read.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Version(String);

impl Version {
    /// A token as the HTTP API or `ringkv get --json` printed it.
    pub fn from_token(token: impl Into<String>) -> Version {
        Version(token.into())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for Version {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// One value and its version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Value {
    pub bytes: Bytes,
    pub version: Version,
}

/// Concurrent values of one key (writes that did not see each other), and the
/// version that supersedes all of them when written back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Siblings {
    pub values: Vec<Bytes>,
    pub version: Version,
}

/// What a read found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Read {
    Value(Value),
    Siblings(Siblings),
}

impl Read {
    /// The version to write back with.
    pub fn version(&self) -> &Version {
        match self {
            Read::Value(value) => &value.version,
            Read::Siblings(siblings) => &siblings.version,
        }
    }
}

/// Per-read settings (`None`: the cluster's default).
#[derive(Debug, Clone, Copy, Default)]
pub struct ReadOptions {
    /// Replicas that must answer (1..=N).
    pub r: Option<u8>,
}

/// Per-write settings (`None`: the cluster's default, no expiry, a blind write).
#[derive(Debug, Clone, Default)]
pub struct WriteOptions {
    /// Replicas that must acknowledge (1..=N).
    pub w: Option<u8>,
    /// Expiry, in whole seconds (rounded up).
    pub ttl: Option<Duration>,
    /// The version read: the write supersedes it (and its siblings).
    pub version: Option<Version>,
    /// `put` only, without a version: supersede whatever the node coordinating the
    /// write holds (`?overwrite=true`, as RESP's `SET`) instead of adding a sibling.
    pub overwrite: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid key: {0}")]
    InvalidKey(String),
    #[error("no node could be reached: {0}")]
    Unreachable(String),
    /// The cluster answered with an error (`code` as in the HTTP API, e.g.
    /// `quorum_unavailable`, `invalid_request`, `too_large`).
    #[error("{code} (HTTP {status}): {message}")]
    Server {
        status: u16,
        code: String,
        message: String,
    },
    #[error("unexpected answer: {0}")]
    Protocol(String),
}

/// The ring as last fetched, with the HTTP address of each node on it.
struct View {
    ring: Ring,
    urls: HashMap<NodeId, String>,
    n: usize,
    fetched: Instant,
    /// Set when a request could not reach a node: refresh before the next one.
    stale: bool,
}

struct Inner {
    http: reqwest::Client,
    /// The nodes given to `connect`, tried when the ring cannot be fetched otherwise.
    seeds: Vec<String>,
    options: Options,
    view: RwLock<View>,
    /// Rotates the replica a request goes to first.
    turn: AtomicUsize,
}

/// A ringkv client; cheap to clone (the clones share the ring and the pool).
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

impl Client {
    /// Connects to the cluster through any of `urls` (`http://host:port` of nodes'
    /// HTTP listeners) and fetches the ring.
    ///
    /// # Errors
    /// `Unreachable` when no URL answers with a ring; `Protocol` for a malformed one.
    pub async fn connect(urls: &[impl AsRef<str>], options: Options) -> Result<Client, Error> {
        let seeds: Vec<String> = urls
            .iter()
            .map(|url| url.as_ref().trim_end_matches('/').to_string())
            .filter(|url| !url.is_empty())
            .collect();
        if seeds.is_empty() {
            return Err(Error::Unreachable("no node URL given".into()));
        }
        let http = reqwest::Client::builder()
            .timeout(options.request_timeout)
            .build()
            .map_err(|error| Error::Protocol(format!("cannot build the HTTP client: {error}")))?;
        let client = Client {
            inner: Arc::new(Inner {
                http,
                seeds,
                options: Options {
                    retries: options.retries.max(1),
                    ..options
                },
                view: RwLock::new(View {
                    ring: Ring::default(),
                    urls: HashMap::new(),
                    n: 0,
                    fetched: Instant::now(),
                    stale: true,
                }),
                turn: AtomicUsize::new(0),
            }),
        };
        client.refresh().await?;
        Ok(client)
    }

    /// Fetches the ring again, from the first node that answers (known nodes
    /// first, then the URLs given to `connect`).
    ///
    /// # Errors
    /// `Unreachable` when none answers; `Protocol` for a malformed ring.
    pub async fn refresh(&self) -> Result<(), Error> {
        let mut candidates: Vec<String> = {
            let view = self.view();
            view.urls.values().cloned().collect()
        };
        candidates.sort();
        for seed in &self.inner.seeds {
            if !candidates.contains(seed) {
                candidates.push(seed.clone());
            }
        }
        let mut last = String::from("no node to ask");
        for base in candidates {
            let answer = self
                .inner
                .http
                .get(format!("{base}/v1/cluster/ring"))
                .send()
                .await;
            let body = match answer {
                Ok(response) if response.status() == StatusCode::OK => {
                    response.json::<Json>().await
                }
                Ok(response) => {
                    last = format!("{base}: HTTP {}", response.status());
                    continue;
                }
                Err(error) => {
                    last = format!("{base}: {error}");
                    continue;
                }
            };
            let body =
                body.map_err(|error| Error::Protocol(format!("ring from {base}: {error}")))?;
            let (ring, urls, n) = parse_ring(&body)?;
            let mut view = self
                .inner
                .view
                .write()
                .unwrap_or_else(PoisonError::into_inner);
            *view = View {
                ring,
                urls,
                n,
                fetched: Instant::now(),
                stale: false,
            };
            return Ok(());
        }
        Err(Error::Unreachable(last))
    }

    fn view(&self) -> std::sync::RwLockReadGuard<'_, View> {
        self.inner
            .view
            .read()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// The HTTP URLs of `key`'s replicas, in preference order, per the ring as last
    /// fetched.
    ///
    /// # Errors
    /// `InvalidKey` for an empty or oversized key.
    pub fn replicas(&self, key: &[u8]) -> Result<Vec<String>, Error> {
        let token = token_of(key)?;
        Ok(self.replica_urls(token))
    }

    fn replica_urls(&self, token: Token) -> Vec<String> {
        let view = self.view();
        view.ring
            .preference_list(token, view.n)
            .replicas()
            .iter()
            .filter_map(|id| view.urls.get(id).cloned())
            .collect()
    }

    /// Where to send a request for `key`, in the order to try: its replicas, the
    /// first one rotating from call to call; the given nodes if the ring knows none.
    async fn targets(&self, key: &[u8]) -> Result<Vec<String>, Error> {
        let token = token_of(key)?;
        let due = {
            let view = self.view();
            view.stale || view.fetched.elapsed() >= self.inner.options.ring_refresh
        };
        if due {
            // Best effort: on failure the ring as last fetched still routes.
            let _ = self.refresh().await;
        }
        let mut targets = self.replica_urls(token);
        if targets.is_empty() {
            targets = self.inner.seeds.clone();
        }
        let turn = self.inner.turn.fetch_add(1, Ordering::Relaxed);
        let len = targets.len();
        targets.rotate_left(turn % len);
        Ok(targets)
    }

    fn mark_stale(&self) {
        self.inner
            .view
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .stale = true;
    }

    fn backoff(&self, attempt: u32) -> Duration {
        let options = &self.inner.options;
        options
            .backoff_min
            .saturating_mul(1 << attempt.min(16))
            .min(options.backoff_max)
    }

    /// Reads `key`: `None` when it does not exist (or was deleted).
    ///
    /// # Errors
    /// `Server` (e.g. `quorum_unavailable`), `Unreachable`, `InvalidKey`, `Protocol`.
    pub async fn get(&self, key: &[u8], options: &ReadOptions) -> Result<Option<Read>, Error> {
        let query = options.r.map(|r| format!("?r={r}")).unwrap_or_default();
        let mut last = Error::Unreachable("no attempt made".into());
        for attempt in 0..self.inner.options.retries {
            if attempt > 0 {
                tokio::time::sleep(self.backoff(attempt - 1)).await;
            }
            let targets = self.targets(key).await?;
            let base = &targets[0];
            let sent = self
                .inner
                .http
                .get(format!("{}{query}", kv_url(base, key)))
                .header(reqwest::header::ACCEPT, "application/octet-stream")
                .send()
                .await;
            let response = match sent {
                Ok(response) => response,
                Err(error) => {
                    self.mark_stale();
                    last = Error::Unreachable(format!("{base}: {error}"));
                    continue;
                }
            };
            match read_answer(response).await {
                Err(
                    error @ Error::Server {
                        status: 503 | 504, ..
                    },
                ) => last = error,
                Err(Error::Unreachable(message)) => {
                    self.mark_stale();
                    last = Error::Unreachable(message);
                }
                done => return done,
            }
        }
        Err(last)
    }

    /// Writes `value` to `key`; returns its new version.
    ///
    /// # Errors
    /// `Server` (`quorum_unavailable`: the write may have been applied on some
    /// replicas; `too_large`, `invalid_request`), `Unreachable`, `InvalidKey`.
    pub async fn put(
        &self,
        key: &[u8],
        value: impl Into<Bytes>,
        options: &WriteOptions,
    ) -> Result<Version, Error> {
        let value = value.into();
        let mut query = Vec::new();
        if let Some(w) = options.w {
            query.push(format!("w={w}"));
        }
        if let Some(ttl) = options.ttl {
            let secs = ttl.as_secs() + u64::from(ttl.subsec_nanos() > 0);
            query.push(format!("ttl={secs}"));
        }
        if options.overwrite {
            query.push("overwrite=true".to_owned());
        }
        let query = if query.is_empty() {
            String::new()
        } else {
            format!("?{}", query.join("&"))
        };
        self.write(key, |http, base| {
            let mut request = http
                .put(format!("{}{query}", kv_url(base, key)))
                .header(reqwest::header::CONTENT_TYPE, "application/octet-stream")
                .body(value.clone());
            if let Some(version) = &options.version {
                request = request.header(VERSION_HEADER, version.as_str());
            }
            request
        })
        .await
    }

    /// Deletes `key` (a tombstone, superseding `options.version` if given); returns
    /// the tombstone's version.
    ///
    /// # Errors
    /// As `put`.
    pub async fn delete(&self, key: &[u8], options: &WriteOptions) -> Result<Version, Error> {
        let query = options.w.map(|w| format!("?w={w}")).unwrap_or_default();
        self.write(key, |http, base| {
            let mut request = http.delete(format!("{}{query}", kv_url(base, key)));
            if let Some(version) = &options.version {
                request = request.json(&serde_json::json!({"version": version.as_str()}));
            }
            request
        })
        .await
    }

    /// Sends a write built by `build`, retrying on another replica only when the
    /// connection could not be made (the write never left).
    async fn write(
        &self,
        key: &[u8],
        build: impl Fn(&reqwest::Client, &str) -> reqwest::RequestBuilder,
    ) -> Result<Version, Error> {
        let mut last = Error::Unreachable("no attempt made".into());
        for attempt in 0..self.inner.options.retries {
            if attempt > 0 {
                tokio::time::sleep(self.backoff(attempt - 1)).await;
            }
            let targets = self.targets(key).await?;
            let base = &targets[0];
            let response = match build(&self.inner.http, base).send().await {
                Ok(response) => response,
                Err(error) => {
                    self.mark_stale();
                    if error.is_connect() {
                        last = Error::Unreachable(format!("{base}: {error}"));
                        continue;
                    }
                    // It may have been applied: not sent again.
                    return Err(Error::Unreachable(format!(
                        "{base}: {error} (the write may have been applied)"
                    )));
                }
            };
            let status = response.status();
            let body = response
                .bytes()
                .await
                .map_err(|error| Error::Unreachable(format!("{base}: {error}")))?;
            let json: Json = serde_json::from_slice(&body).unwrap_or(Json::Null);
            if status != StatusCode::OK {
                return Err(server_error(status, &json, &body));
            }
            return json["version"]
                .as_str()
                .map(Version::from_token)
                .ok_or_else(|| Error::Protocol(format!("no version in {json}")));
        }
        Err(last)
    }
}
