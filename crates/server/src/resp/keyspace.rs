//! Keyspace commands (`GET`, `SET`, `DEL`, `EXISTS`, `MGET`, `MSET`, `EXPIRE`,
//! `PEXPIRE`, `PERSIST`, `TTL`, `PTTL`) through the same coordinator as HTTP's
//! `/v1/kv/{key}`, with the configured default R and W.
//!
//! This interface shows one value per key: concurrent versions (siblings) resolve
//! by last-writer-wins, the version with the highest HLC timestamp
//! (`ConflictPolicy::Lww` view, deletes and expiry included). Every write carries
//! the version its command read, so it supersedes every sibling that read saw:
//! under `conflict_policy = "siblings"` a `SET` is a read then a write (under
//! `lww` a plain `SET` needs no read: the write supersedes what its replica holds).
//! A value written here reads back byte for byte over HTTP and the other way round.
//!
//! Many clients writing one key at once (redis-benchmark does) leave concurrent
//! versions; a write that would leave more than `MAX_SIBLINGS` is refused by its
//! replica, and the command reads again and retries (`MAX_WRITE_ATTEMPTS`).
//!
//! Multi-key commands run key by key, `MAX_KEYS_IN_FLIGHT` at once: `MSET` is not
//! atomic (every key is checked before any is written; a failure may leave some
//! keys written), and `DEL`/`EXISTS` count what each key's read showed.

use std::collections::BTreeSet;
use std::future::Future;
use std::time::Duration;

use bytes::Bytes;
use futures_util::future::join_all;
use ringkv_cluster::coordinator::CoordinatorError;
use ringkv_cluster::{MAX_SIBLINGS, Write, WriteBody};
use ringkv_core::{Body, ConflictPolicy, Context, Key, ReadView, Record};

use super::MAX_KEYS_IN_FLIGHT;
use super::command::{ErrorReply, Outcome, integer, printable};
use super::frame::Reply;
use crate::error::ApiError;
use crate::http::AppState;
use crate::request::{MAX_TTL_SECS, Query};

mod set;
pub use set::set;
use set::set_plain;

impl From<ApiError> for ErrorReply {
    fn from(error: ApiError) -> ErrorReply {
        match error {
            ApiError::InvalidRequest(message) | ApiError::TooLarge(message) => {
                ErrorReply::err(message)
            }
            ApiError::WrongType(_) => ErrorReply::wrong_type(),
            other => ErrorReply(format!("ERR {}: {other}", other.code())),
        }
    }
}

impl From<CoordinatorError> for ErrorReply {
    fn from(error: CoordinatorError) -> ErrorReply {
        ApiError::from(error).into()
    }
}

/// What a key holds as this interface shows it: the last writer's version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Current {
    Absent,
    Value {
        bytes: Bytes,
        expires_at_ms: Option<u64>,
    },
    /// A CRDT state: the wrong type for string commands.
    Crdt {
        expires_at_ms: Option<u64>,
    },
}

/// One key read through the coordinator.
pub struct Read {
    /// The version to write with: it covers every sibling read.
    pub seen: Context,
    pub current: Current,
    /// Whether any version is live (a sibling may be, under a newer delete).
    pub any_live: bool,
    pub now_ms: u64,
}

impl Read {
    pub fn of(record: Option<&Record>, now_ms: u64) -> Read {
        let Some(record) = record else {
            return Read {
                seen: Context::default(),
                current: Current::Absent,
                any_live: false,
                now_ms,
            };
        };
        let current = match record.view(ConflictPolicy::Lww, now_ms) {
            ReadView::Value(sibling) => match &sibling.body {
                Body::Bytes(bytes) => Current::Value {
                    bytes: bytes.clone(),
                    expires_at_ms: sibling.expires_at_ms,
                },
                Body::Crdt(_) => Current::Crdt {
                    expires_at_ms: sibling.expires_at_ms,
                },
                Body::Tombstone => Current::Absent,
            },
            ReadView::Absent | ReadView::Siblings(_) => Current::Absent,
        };
        Read {
            seen: record.context().clone(),
            current,
            any_live: record
                .siblings()
                .any(|(_, sibling)| sibling.is_live(now_ms)),
            now_ms,
        }
    }

    fn exists(&self) -> bool {
        self.current != Current::Absent
    }
}

fn parse_key(app: &AppState, arg: &Bytes) -> Result<Key, ErrorReply> {
    Key::parse(arg.clone(), &app.limits).map_err(ErrorReply::err)
}

fn parse_value(app: &AppState, arg: &Bytes) -> Result<Bytes, ErrorReply> {
    let max = app.limits.max_value_bytes;
    if arg.len() > max {
        return Err(ErrorReply::err(format!(
            "value is {} bytes, more than max_value_bytes = {max}",
            arg.len()
        )));
    }
    Ok(arg.clone())
}

async fn read(app: &AppState, key: &Key) -> Result<Read, ErrorReply> {
    let required = app.required(&Query::empty(), key, "r", false)?;
    let record = app.coordinator.read(key, required).await?;
    Ok(Read::of(record.as_ref(), app.node.now_ms()))
}

/// Whether a coordinated write was applied.
enum Written {
    Applied,
    /// Refused by the replica, nothing stored: concurrent writers left the key at
    /// `MAX_SIBLINGS` versions. Reading again and writing with that version works.
    Contended,
}

async fn write(
    app: &AppState,
    key: Key,
    body: WriteBody,
    seen: Context,
    ttl: Option<Duration>,
) -> Result<Written, ErrorReply> {
    let required = app.required(&Query::empty(), &key, "w", true)?;
    let write = Write {
        key,
        body,
        seen,
        ttl,
    };
    match app.coordinator.write(write, required, false).await {
        Ok(_) => Ok(Written::Applied),
        Err(CoordinatorError::Invalid(message)) if is_sibling_limit(&message) => {
            Ok(Written::Contended)
        }
        Err(error) => Err(error.into()),
    }
}

/// Whether a replica refused a write for `NodeError::TooManySiblings`, which
/// reaches the coordinator as its text (`PeerError::Invalid`).
fn is_sibling_limit(message: &str) -> bool {
    message.contains("concurrent versions (the limit is")
}

/// What a command makes of the key it read.
enum Decision<T> {
    /// Answer without writing.
    Answer(T),
    /// Write this, carrying the version read, then answer.
    Write {
        body: WriteBody,
        ttl: Option<Duration>,
        answer: T,
    },
}

/// How often a read-then-write is tried when its write is refused as
/// `Written::Contended` (many clients writing one key at once, as
/// redis-benchmark does): each attempt reads again, so its write supersedes every
/// version it saw.
const MAX_WRITE_ATTEMPTS: usize = 4;

/// Reads `key`, lets `decide` choose, and writes with the version read.
async fn read_then_write<T>(
    app: &AppState,
    key: &Key,
    decide: impl Fn(&Read) -> Result<Decision<T>, ErrorReply>,
) -> Result<T, ErrorReply> {
    for _ in 0..MAX_WRITE_ATTEMPTS {
        let read = read(app, key).await?;
        let (body, ttl, answer) = match decide(&read)? {
            Decision::Answer(answer) => return Ok(answer),
            Decision::Write { body, ttl, answer } => (body, ttl, answer),
        };
        match write(app, key.clone(), body, read.seen, ttl).await? {
            Written::Applied => return Ok(answer),
            Written::Contended => {
                metrics::counter!("ringkv_resp_write_retries_total").increment(1);
            }
        }
    }
    Err(contended())
}

fn contended() -> ErrorReply {
    ErrorReply::err(format!(
        "too many clients write this key at once: the write was refused {MAX_WRITE_ATTEMPTS} times \
         for more than {MAX_SIBLINGS} concurrent versions; try again"
    ))
}

/// Runs `run` on every item, `MAX_KEYS_IN_FLIGHT` at once; results in order.
async fn each<T, F, Fut>(items: Vec<T>, run: F) -> Vec<Fut::Output>
where
    F: Fn(T) -> Fut,
    Fut: Future,
{
    let mut results = Vec::with_capacity(items.len());
    let mut items = items.into_iter().peekable();
    while items.peek().is_some() {
        let batch: Vec<Fut> = items.by_ref().take(MAX_KEYS_IN_FLIGHT).map(&run).collect();
        results.extend(join_all(batch).await);
    }
    results
}

pub async fn get(app: &AppState, key: &Bytes) -> Outcome {
    let key = parse_key(app, key)?;
    match read(app, &key).await?.current {
        Current::Absent => Ok(Reply::Null),
        Current::Value { bytes, .. } => Ok(Reply::Bulk(bytes)),
        Current::Crdt { .. } => Err(ErrorReply::wrong_type()),
    }
}

/// `MSET key value [key value ...]` (the caller checked the pairs).
pub async fn mset(app: &AppState, args: &[Bytes]) -> Outcome {
    let mut pairs = Vec::with_capacity(args.len() / 2);
    for pair in args.chunks_exact(2) {
        pairs.push((parse_key(app, &pair[0])?, parse_value(app, &pair[1])?));
    }
    let results = each(pairs, |(key, value)| set_plain(app, key, value)).await;
    results.into_iter().collect::<Result<Vec<()>, _>>()?;
    Ok(Reply::OK)
}

fn parse_keys(app: &AppState, args: &[Bytes]) -> Result<Vec<Key>, ErrorReply> {
    args.iter().map(|arg| parse_key(app, arg)).collect()
}

/// `DEL key [key ...]`: how many of the (distinct) keys existed.
pub async fn del(app: &AppState, args: &[Bytes]) -> Outcome {
    let distinct: BTreeSet<&Bytes> = args.iter().collect();
    let keys: Vec<Key> = distinct
        .into_iter()
        .map(|arg| parse_key(app, arg))
        .collect::<Result<_, _>>()?;
    let results = each(keys, |key| async move {
        read_then_write(app, &key, |read| {
            // Any live sibling is deleted too, though only the LWW view counts.
            Ok(if read.any_live {
                Decision::Write {
                    body: WriteBody::Delete,
                    ttl: None,
                    answer: read.exists(),
                }
            } else {
                Decision::Answer(read.exists())
            })
        })
        .await
    })
    .await;
    let mut deleted = 0;
    for existed in results {
        deleted += i64::from(existed?);
    }
    Ok(Reply::Integer(deleted))
}

/// `EXISTS key [key ...]`: how many of the keys exist, repeats counted.
pub async fn exists(app: &AppState, args: &[Bytes]) -> Outcome {
    let keys = parse_keys(app, args)?;
    let results = each(keys, |key| async move { read(app, &key).await }).await;
    let mut count = 0;
    for read in results {
        count += i64::from(read?.exists());
    }
    Ok(Reply::Integer(count))
}

/// `MGET key [key ...]`: each value, or null (absent, or not a string).
pub async fn mget(app: &AppState, args: &[Bytes]) -> Outcome {
    let keys = parse_keys(app, args)?;
    let results = each(keys, |key| async move { read(app, &key).await }).await;
    let mut values = Vec::with_capacity(results.len());
    for read in results {
        values.push(match read?.current {
            Current::Value { bytes, .. } => Reply::Bulk(bytes),
            Current::Absent | Current::Crdt { .. } => Reply::Null,
        });
    }
    Ok(Reply::Array(values))
}

/// `EXPIRE key seconds [NX|XX|GT|LT]` (`PEXPIRE`: milliseconds): rewrites the value
/// with the new expiry, carrying the version read; a time not in the future
/// deletes the key. 1 if set, 0 if the key is absent or the condition failed.
pub async fn expire(app: &AppState, name: &str, args: &[Bytes], millis: bool) -> Outcome {
    let (mut nx, mut xx, mut gt, mut lt) = (false, false, false, false);
    for option in &args[2..] {
        match option.to_ascii_uppercase().as_slice() {
            b"NX" => nx = true,
            b"XX" => xx = true,
            b"GT" => gt = true,
            b"LT" => lt = true,
            _ => {
                return Err(ErrorReply::err(format!(
                    "Unsupported option {}",
                    printable(option)
                )));
            }
        }
    }
    if nx && (xx || gt || lt) {
        return Err(ErrorReply::err(
            "NX and XX, GT or LT options at the same time are not compatible",
        ));
    }
    if gt && lt {
        return Err(ErrorReply::err(
            "GT and LT options at the same time are not compatible",
        ));
    }
    let amount = integer(&args[1])?;
    let invalid = || ErrorReply::err(format!("invalid expire time in '{name}' command"));
    let ttl_ms = if millis {
        amount
    } else {
        amount.checked_mul(1000).ok_or_else(invalid)?
    };
    if ttl_ms > i64::try_from(MAX_TTL_SECS * 1000).unwrap_or(i64::MAX) {
        return Err(invalid());
    }
    let key = parse_key(app, &args[0])?;
    read_then_write(app, &key, |read| {
        let (bytes, current_at) = match &read.current {
            Current::Absent => return Ok(Decision::Answer(Reply::Integer(0))),
            Current::Crdt { .. } => {
                return Err(ErrorReply::err(
                    "expiry of counters and sets is not supported yet",
                ));
            }
            Current::Value {
                bytes,
                expires_at_ms,
            } => (bytes.clone(), *expires_at_ms),
        };
        let new_at = i128::from(read.now_ms) + i128::from(ttl_ms);
        let refused = (nx && current_at.is_some())
            || (xx && current_at.is_none())
            || (gt && current_at.is_none_or(|at| new_at <= i128::from(at)))
            || (lt && current_at.is_some_and(|at| new_at >= i128::from(at)));
        if refused {
            return Ok(Decision::Answer(Reply::Integer(0)));
        }
        let (body, ttl) = match u64::try_from(ttl_ms) {
            Ok(ms) if ms > 0 => (WriteBody::Value(bytes), Some(Duration::from_millis(ms))),
            _ => (WriteBody::Delete, None),
        };
        Ok(Decision::Write {
            body,
            ttl,
            answer: Reply::Integer(1),
        })
    })
    .await
}

/// `PERSIST key`: 1 if an expiry was removed (the value rewritten without one).
pub async fn persist(app: &AppState, key: &Bytes) -> Outcome {
    let key = parse_key(app, key)?;
    read_then_write(app, &key, |read| {
        Ok(match &read.current {
            Current::Value {
                bytes,
                expires_at_ms: Some(_),
            } => Decision::Write {
                body: WriteBody::Value(bytes.clone()),
                ttl: None,
                answer: Reply::Integer(1),
            },
            _ => Decision::Answer(Reply::Integer(0)),
        })
    })
    .await
}

/// `TTL key` (`PTTL`: milliseconds): -2 absent, -1 no expiry, else what remains
/// (seconds rounded as Redis does).
pub async fn ttl(app: &AppState, key: &Bytes, millis: bool) -> Outcome {
    let key = parse_key(app, key)?;
    let read = read(app, &key).await?;
    let expires_at_ms = match read.current {
        Current::Absent => return Ok(Reply::Integer(-2)),
        Current::Value { expires_at_ms, .. } | Current::Crdt { expires_at_ms } => expires_at_ms,
    };
    let Some(at) = expires_at_ms else {
        return Ok(Reply::Integer(-1));
    };
    let remaining = at.saturating_sub(read.now_ms);
    let shown = if millis {
        remaining
    } else {
        remaining.saturating_add(500) / 1000
    };
    Ok(Reply::Integer(i64::try_from(shown).unwrap_or(i64::MAX)))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn the_sibling_limit_refusal_is_recognized() {
        let refusal = ringkv_cluster::NodeError::TooManySiblings {
            siblings: MAX_SIBLINGS,
        };
        assert!(is_sibling_limit(&refusal.to_string()));
        let other = ringkv_cluster::NodeError::TtlOverflow { ttl_secs: 1 };
        assert!(!is_sibling_limit(&other.to_string()));
    }

    #[test]
    fn reads_show_the_last_writer() {
        use ringkv_core::{ActorId, Hlc, Sibling};
        let value = |hlc: u64, body: Body, expires_at_ms: Option<u64>| Sibling {
            hlc: Hlc(hlc),
            expires_at_ms,
            body,
        };
        let mut record = Record::default();
        record.update(
            &Context::default(),
            ActorId(1),
            value(5, Body::Bytes(Bytes::from_static(b"old")), None),
        );
        record.update(
            &Context::default(),
            ActorId(2),
            value(9, Body::Bytes(Bytes::from_static(b"new")), Some(1_000)),
        );
        let read = Read::of(Some(&record), 10);
        assert_eq!(
            read.current,
            Current::Value {
                bytes: Bytes::from_static(b"new"),
                expires_at_ms: Some(1_000)
            }
        );
        assert_eq!(read.seen, *record.context());
        // Once the newest expired, the key is absent, though an older sibling lives.
        let read = Read::of(Some(&record), 1_000);
        assert_eq!(read.current, Current::Absent);
        assert!(read.any_live);
        assert_eq!(Read::of(None, 0).current, Current::Absent);
        // A CRDT state is the wrong type for string commands.
        let seen = record.context().clone();
        record.update(
            &seen,
            ActorId(1),
            value(20, Body::Crdt(Bytes::from_static(b"state")), None),
        );
        assert_eq!(
            Read::of(Some(&record), 10).current,
            Current::Crdt {
                expires_at_ms: None
            }
        );
    }

    #[test]
    fn errors_read_as_redis_errors() {
        let invalid = ErrorReply::from(ApiError::invalid("key is empty"));
        assert_eq!(invalid.0, "ERR key is empty");
        let quorum = ErrorReply::from(CoordinatorError::QuorumUnavailable {
            acked: 1,
            required: 2,
            write: true,
        });
        assert!(
            quorum
                .0
                .starts_with("ERR quorum_unavailable: 1 of 2 required replicas"),
            "{}",
            quorum.0
        );
        assert_eq!(
            ErrorReply::wrong_type().0,
            "WRONGTYPE Operation against a key holding the wrong kind of value"
        );
    }
}
