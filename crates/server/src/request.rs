//! Parsing what a client sends to `/v1/kv/{key}`: the key from the path, the query
//! parameters, the body under a size limit, and the version token. Everything from
//! outside is checked here, once; handlers get typed values.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{HeaderMap, header};
use bytes::{Bytes, BytesMut};
use futures_util::FutureExt as _;
use http_body_util::BodyExt;
use hyper::body::Frame;
use percent_encoding::percent_decode_str;
use ringkv_cluster::Quorum;
use ringkv_core::{Context, Key, Limits};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::error::ApiError;

/// The header that carries a version token for raw (`application/octet-stream`) bodies.
pub const VERSION_HEADER: &str = "x-ringkv-version";
/// Longest ttl accepted: ten years. Longer is almost surely a unit mistake.
pub const MAX_TTL_SECS: u64 = 10 * 365 * 24 * 3600;
const KV_PREFIX: &str = "/v1/kv/";

/// The key named by a `/v1/kv/{key}` path: the rest of the path, percent-decoded to
/// bytes (so keys may contain `/` and need not be UTF-8).
pub fn key_from_path(path: &str, limits: &Limits) -> Result<Key, ApiError> {
    let raw = path.strip_prefix(KV_PREFIX).unwrap_or("");
    let bytes: Vec<u8> = percent_decode_str(raw).collect();
    Key::parse(bytes, limits).map_err(|error| match error {
        ringkv_core::ParseKeyError::TooLong { .. } => ApiError::TooLarge(error.to_string()),
        ringkv_core::ParseKeyError::Empty => ApiError::invalid(error.to_string()),
    })
}

/// The query parameters of a request, each at most once, only the known ones.
pub struct Query(BTreeMap<String, String>);

impl Query {
    pub fn parse(raw: Option<&str>, allowed: &[&str]) -> Result<Query, ApiError> {
        let mut params = BTreeMap::new();
        for pair in raw.unwrap_or("").split('&').filter(|pair| !pair.is_empty()) {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            let name = percent_decode_str(name).decode_utf8_lossy().into_owned();
            let value = percent_decode_str(&value.replace('+', " "))
                .decode_utf8()
                .map_err(|_| ApiError::invalid(format!("query parameter `{name}` is not UTF-8")))?
                .into_owned();
            if !allowed.contains(&name.as_str()) {
                return Err(ApiError::invalid(format!(
                    "unknown query parameter `{name}` (allowed: {})",
                    allowed.join(", ")
                )));
            }
            if params.insert(name.clone(), value).is_some() {
                return Err(ApiError::invalid(format!(
                    "query parameter `{name}` given twice"
                )));
            }
        }
        Ok(Query(params))
    }

    /// No parameters: every default applies (the RESP listener's requests).
    pub fn empty() -> Query {
        Query(BTreeMap::new())
    }

    pub fn get(&self, name: &str) -> Option<&str> {
        self.0.get(name).map(String::as_str)
    }

    /// The quorum asked for with `name` (`r` or `w`) or `consistency`; `None` when
    /// neither is given.
    pub fn quorum(&self, name: &'static str) -> Result<Option<Quorum>, ApiError> {
        match (self.get(name), self.get("consistency")) {
            (Some(_), Some(_)) => Err(ApiError::invalid(format!(
                "give either `{name}` or `consistency`, not both"
            ))),
            (Some(count), None) => count
                .parse::<u8>()
                .ok()
                .filter(|count| *count >= 1)
                .map(|count| Some(Quorum::Exactly(count)))
                .ok_or_else(|| {
                    ApiError::invalid(format!("`{name}` must be an integer ≥ 1, got \"{count}\""))
                }),
            (None, Some("one")) => Ok(Some(Quorum::One)),
            (None, Some("quorum")) => Ok(Some(Quorum::Majority)),
            (None, Some("all")) => Ok(Some(Quorum::All)),
            (None, Some(other)) => Err(ApiError::invalid(format!(
                "`consistency` must be one, quorum or all, got \"{other}\""
            ))),
            (None, None) => Ok(None),
        }
    }

    /// A boolean parameter: `true` or `false`, absent is `false`.
    pub fn flag(&self, name: &str) -> Result<bool, ApiError> {
        match self.get(name) {
            None | Some("false") => Ok(false),
            Some("true") => Ok(true),
            Some(raw) => Err(ApiError::invalid(format!(
                "`{name}` must be true or false, got \"{raw}\""
            ))),
        }
    }

    /// `?ttl=` in seconds, if given.
    pub fn ttl(&self) -> Result<Option<Duration>, ApiError> {
        self.get("ttl")
            .map(|raw| {
                raw.parse::<u64>()
                    .map_err(|_| {
                        ApiError::invalid(format!("`ttl` must be whole seconds, got \"{raw}\""))
                    })
                    .and_then(ttl_from_secs)
            })
            .transpose()
    }
}

/// Checks a ttl in seconds: 1..=`MAX_TTL_SECS`.
pub fn ttl_from_secs(secs: u64) -> Result<Duration, ApiError> {
    if secs == 0 || secs > MAX_TTL_SECS {
        return Err(ApiError::invalid(format!(
            "`ttl` must be 1..={MAX_TTL_SECS} seconds, got {secs}"
        )));
    }
    Ok(Duration::from_secs(secs))
}

/// Parses a version token from a client.
pub fn version_from_token(token: &str) -> Result<Context, ApiError> {
    Context::from_token(token).map_err(|error| ApiError::invalid(error.to_string()))
}

/// The version token in the `X-Ringkv-Version` header, if any.
pub fn version_header(headers: &HeaderMap) -> Result<Option<Context>, ApiError> {
    headers
        .get(VERSION_HEADER)
        .map(|value| {
            value
                .to_str()
                .map_err(|_| ApiError::invalid("X-Ringkv-Version is not ASCII"))
                .and_then(version_from_token)
        })
        .transpose()
}

/// Whether the request's `Content-Type` says raw bytes.
pub fn is_octet_stream(headers: &HeaderMap) -> bool {
    media_type(headers.get(header::CONTENT_TYPE)) == Some("application/octet-stream")
}

/// Whether the client asked for raw bytes back.
pub fn accepts_octet_stream(headers: &HeaderMap) -> bool {
    headers
        .get(header::ACCEPT)
        .and_then(|value| value.to_str().ok())
        .is_some_and(|accept| {
            accept.split(',').any(|item| {
                item.split(';').next().map(str::trim) == Some("application/octet-stream")
            })
        })
}

fn media_type(value: Option<&axum::http::HeaderValue>) -> Option<&str> {
    value
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.split(';').next())
        .map(str::trim)
}

/// The bytes of request bodies a node holds at once, across all its HTTP requests
/// and the RESP commands buffered past a connection's first 16 KiB
/// (`max_buffered_request_bytes`): without it, many clients each sending a large body
/// (slowly, say) could make the node buffer without bound. A request gets its share
/// before it buffers a byte and keeps it until its handler returns; past the budget
/// it is refused at once with `503 overloaded` rather than queued.
#[derive(Clone)]
pub struct BodyBudget {
    permits: Arc<Semaphore>,
    total: usize,
}

impl BodyBudget {
    /// A budget of `total` bytes, but never less than `largest` (one largest request
    /// must always fit, or it could never be served).
    pub fn new(total: usize, largest: usize) -> BodyBudget {
        let total = total.max(largest).clamp(1, Semaphore::MAX_PERMITS);
        BodyBudget {
            permits: Arc::new(Semaphore::new(total)),
            total,
        }
    }

    /// Bytes handed out now.
    pub fn in_use(&self) -> usize {
        self.total - self.permits.available_permits()
    }

    /// Adds `bytes` to `share`, or refuses if the budget lacks them.
    pub(crate) fn take(
        &self,
        bytes: usize,
        share: &mut Option<OwnedSemaphorePermit>,
    ) -> Result<(), ApiError> {
        if bytes == 0 {
            return Ok(());
        }
        let refused = || {
            metrics::counter!("ringkv_request_budget_refusals_total").increment(1);
            ApiError::Overloaded(format!(
                "this node already holds {} of its {} bytes of request bodies \
                 (max_buffered_request_bytes); retry later or on another node",
                self.in_use(),
                self.total
            ))
        };
        let count = u32::try_from(bytes).map_err(|_| refused())?;
        let taken = self
            .permits
            .clone()
            .try_acquire_many_owned(count)
            .map_err(|_| refused())?;
        match share {
            Some(held) => held.merge(taken),
            None => *share = Some(taken),
        }
        Ok(())
    }
}

/// A request body with its share of the node's [`BodyBudget`], given back on drop:
/// keep it alive as long as the request's bytes are in use.
pub struct HeldBody {
    bytes: Bytes,
    _share: Option<OwnedSemaphorePermit>,
}

impl HeldBody {
    /// The body (a cheap, reference-counted copy).
    pub fn bytes(&self) -> Bytes {
        self.bytes.clone()
    }
}

impl std::ops::Deref for HeldBody {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        &self.bytes
    }
}

/// The body's next frame, waiting at most `idle_timeout` for it. A frame already
/// buffered (the whole body of a small request, as a rule) is taken without
/// arming a timer.
async fn next_frame(
    body: &mut Body,
    idle_timeout: Duration,
) -> Result<Option<Result<Frame<Bytes>, axum::Error>>, ApiError> {
    if let Some(ready) = body.frame().now_or_never() {
        return Ok(ready);
    }
    tokio::time::timeout(idle_timeout, body.frame())
        .await
        .map_err(|_| {
            ApiError::Timeout(format!(
                "no part of the request body arrived for {} s",
                idle_timeout.as_secs_f64()
            ))
        })
}

/// Reads a request body of at most `limit` bytes, within `budget`. A body announced
/// or found larger than `limit` is refused with 413 as soon as that is known, before
/// it is buffered whole; one the budget cannot hold, with 503 `overloaded`; one that
/// stalls for `idle_timeout` (`request_stall_timeout_ms`: a client that died, or
/// whose network did, without closing the connection), with 408 `request_timeout`,
/// letting go of its budget share and its connection slot.
pub async fn read_body(
    body: Body,
    headers: &HeaderMap,
    limit: usize,
    budget: &BodyBudget,
    idle_timeout: Duration,
) -> Result<HeldBody, ApiError> {
    let too_large = || ApiError::TooLarge(format!("request body is larger than {limit} bytes"));
    let announced = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse::<u64>().ok());
    let mut share = None;
    // Announced: the whole length is taken before reading, so a slow sender holds
    // what it will need from the start.
    let mut reserved = match announced {
        Some(length) if length > limit as u64 => return Err(too_large()),
        Some(length) => {
            // At most `limit`, which is a usize.
            let length = usize::try_from(length).map_err(|_| too_large())?;
            budget.take(length, &mut share)?;
            length
        }
        None => 0,
    };
    let mut chunks: Vec<Bytes> = Vec::new();
    let mut length = 0usize;
    let mut body = body;
    while let Some(frame) = next_frame(&mut body, idle_timeout).await? {
        let frame = frame
            .map_err(|error| ApiError::invalid(format!("could not read request body: {error}")))?;
        let Ok(data) = frame.into_data() else {
            continue; // trailers
        };
        length = length.saturating_add(data.len());
        if length > limit {
            return Err(too_large());
        }
        if length > reserved {
            budget.take(length - reserved, &mut share)?;
            reserved = length;
        }
        if !data.is_empty() {
            chunks.push(data);
        }
    }
    let bytes = match chunks.len() {
        0 => Bytes::new(),
        1 => chunks.pop().unwrap_or_default(),
        _ => {
            let mut joined = BytesMut::with_capacity(length);
            for chunk in &chunks {
                joined.extend_from_slice(chunk);
            }
            joined.freeze()
        }
    };
    Ok(HeldBody {
        bytes,
        _share: share,
    })
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;

    /// A body whose parts are whatever is sent on the returned channel, and which
    /// ends when the channel is dropped.
    fn streamed_body() -> (
        tokio::sync::mpsc::Sender<Result<Bytes, std::io::Error>>,
        Body,
    ) {
        let (send, receive) = tokio::sync::mpsc::channel(4);
        let parts = futures_util::stream::unfold(receive, |mut receive| async move {
            receive.recv().await.map(|part| (part, receive))
        });
        (send, Body::from_stream(parts))
    }

    fn announcing(length: usize) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(header::CONTENT_LENGTH, length.into());
        headers
    }

    #[tokio::test]
    async fn a_body_that_stalls_is_refused_with_408_and_gives_its_share_back() {
        let budget = BodyBudget::new(1000, 1000);
        let (send, body) = streamed_body();
        send.send(Ok(Bytes::from_static(b"the first part")))
            .await
            .unwrap();
        let idle = Duration::from_millis(200);
        let started = Instant::now();
        let headers = announcing(1000);
        let reading = read_body(body, &headers, 1000, &budget, idle);
        let stalled = tokio::time::timeout(Duration::from_secs(10), reading)
            .await
            .expect("read_body gives up within 10 s");
        assert!(
            matches!(stalled, Err(ApiError::Timeout(_))),
            "{:?}",
            stalled.err()
        );
        assert!(
            started.elapsed() >= idle,
            "gave up after {:?}",
            started.elapsed()
        );
        assert_eq!(budget.in_use(), 0, "the stalled body still holds its share");
        drop(send);
    }

    #[tokio::test]
    async fn a_body_with_pauses_shorter_than_the_timeout_is_read_whole() {
        let budget = BodyBudget::new(1000, 1000);
        let (send, body) = streamed_body();
        let sending = tokio::spawn(async move {
            for part in [&b"one "[..], b"two ", b"three"] {
                send.send(Ok(Bytes::from_static(part))).await.unwrap();
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        });
        let idle = Duration::from_secs(5);
        let read = read_body(body, &announcing(13), 1000, &budget, idle)
            .await
            .unwrap();
        assert_eq!(&*read, b"one two three");
        sending.await.unwrap();
    }

    #[test]
    fn keys_are_percent_decoded_bytes() {
        let limits = Limits::default();
        let key = key_from_path("/v1/kv/a%2Fb/c%FF", &limits).unwrap();
        assert_eq!(key.as_bytes(), b"a/b/c\xff");
        assert!(matches!(
            key_from_path("/v1/kv/", &limits),
            Err(ApiError::InvalidRequest(_))
        ));
    }

    #[test]
    fn query_rejects_unknown_and_repeated_parameters() {
        assert!(Query::parse(Some("r=1&bogus=2"), &["r"]).is_err());
        assert!(Query::parse(Some("r=1&r=2"), &["r"]).is_err());
        let query = Query::parse(Some("r=2"), &["r", "consistency"]).unwrap();
        assert_eq!(query.quorum("r").unwrap(), Some(Quorum::Exactly(2)));
        let both = Query::parse(Some("r=2&consistency=all"), &["r", "consistency"]).unwrap();
        assert!(both.quorum("r").is_err());
        let bad = Query::parse(Some("consistency=most"), &["consistency"]).unwrap();
        assert!(bad.quorum("r").is_err());
        let zero = Query::parse(Some("w=0"), &["w"]).unwrap();
        assert!(zero.quorum("w").is_err());
    }

    #[test]
    fn ttl_bounds() {
        assert!(ttl_from_secs(0).is_err());
        assert!(ttl_from_secs(MAX_TTL_SECS + 1).is_err());
        assert_eq!(ttl_from_secs(5).unwrap(), Duration::from_secs(5));
        let negative = Query::parse(Some("ttl=-1"), &["ttl"]).unwrap();
        assert!(negative.ttl().is_err());
    }
}
