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
use ringkv_core::{Key, Limits, NodeId, Token};
use serde_json::Value as Json;

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

/// The token of a key, checked as the server checks it.
fn token_of(key: &[u8]) -> Result<Token, Error> {
    Key::parse(Bytes::copy_from_slice(key), &Limits::default())
        .map(|key| key.token())
        .map_err(|error| Error::InvalidKey(error.to_string()))
}

/// `{base}/v1/kv/{key}` with every byte outside the unreserved set percent-encoded.
fn kv_url(base: &str, key: &[u8]) -> String {
    let mut url = format!("{base}/v1/kv/");
    for byte in key {
        if byte.is_ascii_alphanumeric() || b"-._~".contains(byte) {
            url.push(char::from(*byte));
        } else {
            url.push_str(&format!("%{byte:02X}"));
        }
    }
    url
}

fn server_error(status: StatusCode, json: &Json, body: &[u8]) -> Error {
    Error::Server {
        status: status.as_u16(),
        code: json["error"]["code"]
            .as_str()
            .unwrap_or("error")
            .to_string(),
        message: json["error"]["message"]
            .as_str()
            .map_or_else(|| String::from_utf8_lossy(body).into_owned(), str::to_owned),
    }
}

/// A GET's answer: raw bytes (200), siblings (300), nothing (404) or an error.
async fn read_answer(response: reqwest::Response) -> Result<Option<Read>, Error> {
    let status = response.status();
    let version = response
        .headers()
        .get(VERSION_HEADER)
        .and_then(|value| value.to_str().ok())
        .map(Version::from_token);
    let body = response
        .bytes()
        .await
        .map_err(|error| Error::Unreachable(error.to_string()))?;
    match status {
        StatusCode::OK => {
            let version =
                version.ok_or_else(|| Error::Protocol("a value without a version".into()))?;
            Ok(Some(Read::Value(Value {
                bytes: body,
                version,
            })))
        }
        StatusCode::MULTIPLE_CHOICES => {
            let json: Json = serde_json::from_slice(&body)
                .map_err(|error| Error::Protocol(format!("siblings: {error}")))?;
            siblings(&json).map(|siblings| Some(Read::Siblings(siblings)))
        }
        StatusCode::NOT_FOUND => Ok(None),
        _ => {
            let json: Json = serde_json::from_slice(&body).unwrap_or(Json::Null);
            Err(server_error(status, &json, &body))
        }
    }
}

fn siblings(json: &Json) -> Result<Siblings, Error> {
    let version = json["version"]
        .as_str()
        .map(Version::from_token)
        .ok_or_else(|| Error::Protocol("siblings without a version".into()))?;
    let values = if let Some(texts) = json["siblings"].as_array() {
        texts
            .iter()
            .map(|text| {
                text.as_str()
                    .map(|text| Bytes::copy_from_slice(text.as_bytes()))
                    .ok_or_else(|| Error::Protocol("a sibling is not a string".into()))
            })
            .collect::<Result<Vec<_>, _>>()?
    } else if let Some(encoded) = json["siblings_base64"].as_array() {
        encoded
            .iter()
            .map(|text| {
                text.as_str()
                    .and_then(decode_base64)
                    .map(Bytes::from)
                    .ok_or_else(|| Error::Protocol("a sibling is not base64".into()))
            })
            .collect::<Result<Vec<_>, _>>()?
    } else {
        return Err(Error::Protocol(format!("no siblings in {json}")));
    };
    Ok(Siblings { values, version })
}

/// Standard base64 with padding (what the server writes); `None` if malformed.
fn decode_base64(text: &str) -> Option<Vec<u8>> {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.decode(text).ok()
}

/// The ring JSON (`GET /v1/cluster/ring`): the nodes that serve reads, their
/// tokens and HTTP addresses, and N.
fn parse_ring(json: &Json) -> Result<(Ring, HashMap<NodeId, String>, usize), Error> {
    let bad = |what: &str| Error::Protocol(format!("ring: {what}"));
    let n = json["replication_factor"]
        .as_u64()
        .and_then(|n| usize::try_from(n).ok())
        .filter(|n| (1..=16).contains(n))
        .ok_or_else(|| bad("no replication_factor"))?;
    let nodes = json["nodes"].as_array().ok_or_else(|| bad("no nodes"))?;
    let mut members = Vec::new();
    let mut urls = HashMap::new();
    for node in nodes {
        let id = NodeId(
            node["id"]
                .as_u64()
                .ok_or_else(|| bad("a node without an id"))?,
        );
        // Only nodes that serve reads (older servers do not say: all do).
        let serving = node["state"]
            .as_str()
            .is_none_or(|state| matches!(state, "normal" | "leaving" | "joined"));
        if !serving {
            continue;
        }
        let tokens = node["tokens"]
            .as_array()
            .ok_or_else(|| bad("a node without tokens"))?
            .iter()
            .map(|token| {
                token
                    .as_str()
                    .and_then(|hex| u128::from_str_radix(hex, 16).ok())
                    .map(Token)
                    .ok_or_else(|| bad("a malformed token"))
            })
            .collect::<Result<Vec<_>, _>>()?;
        if let Some(addr) = node["http_addr"].as_str().filter(|addr| !addr.is_empty()) {
            urls.insert(id, format!("http://{addr}"));
        }
        members.push((id, tokens));
    }
    Ok((Ring::new(members), urls, n))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn keys_are_percent_encoded() {
        assert_eq!(kv_url("http://h:1", b"a/b c"), "http://h:1/v1/kv/a%2Fb%20c");
    }

    #[test]
    fn base64_decodes_what_the_server_writes_and_refuses_garbage() {
        assert_eq!(decode_base64("aGk=").as_deref(), Some(&b"hi"[..]));
        assert_eq!(decode_base64("/w==").as_deref(), Some(&[0xff][..]));
        assert_eq!(decode_base64("").as_deref(), Some(&[][..]));
        assert_eq!(decode_base64("a"), None);
        assert_eq!(decode_base64("a==="), None);
        assert_eq!(decode_base64("a!b="), None);
    }

    #[test]
    fn the_ring_keeps_serving_nodes_and_their_addresses() {
        let ring = json!({
            "replication_factor": 2,
            "nodes": [
                {"id": 1, "state": "normal", "http_addr": "127.0.0.1:1", "tokens": [format!("{:032x}", 10u128)]},
                {"id": 2, "state": "joining", "http_addr": "127.0.0.1:2", "tokens": [format!("{:032x}", 20u128)]},
                {"id": 3, "state": "normal", "http_addr": "127.0.0.1:3", "tokens": [format!("{:032x}", 30u128)]},
            ],
        });
        let (ring, urls, n) = parse_ring(&ring).unwrap();
        assert_eq!(n, 2);
        assert_eq!(ring.nodes().collect::<Vec<_>>(), [NodeId(1), NodeId(3)]);
        assert_eq!(urls[&NodeId(3)], "http://127.0.0.1:3");
        assert!(parse_ring(&json!({"replication_factor": 0, "nodes": []})).is_err());
        assert!(
            parse_ring(&json!({"replication_factor": 3, "nodes": [{"id": 1, "tokens": ["zz"]}]}))
                .is_err()
        );
    }

    #[test]
    fn siblings_come_as_text_or_base64() {
        let text = siblings(&json!({"siblings": ["a", "b"], "version": "v"})).unwrap();
        assert_eq!(text.values, [Bytes::from("a"), Bytes::from("b")]);
        assert_eq!(text.version.as_str(), "v");
        let binary = siblings(&json!({"siblings_base64": ["/w=="], "version": "v"})).unwrap();
        assert_eq!(binary.values, [Bytes::from_static(&[0xff])]);
        assert!(siblings(&json!({"siblings": ["a"]})).is_err());
    }
}
