//! `SET key value [NX | XX] [GET] [EX s | PX ms | EXAT s | PXAT ms | KEEPTTL]`: its
//! options, the decision a read leads to, and the plain `SET` (one overwrite) that
//! `MSET` does per pair.

use super::*;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Condition {
    Always,
    /// `NX`
    IfAbsent,
    /// `XX`
    IfPresent,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expiry {
    Never,
    /// `EX`, `PX`: milliseconds from now.
    In(u64),
    /// `EXAT`, `PXAT`: wall-clock milliseconds.
    At(u64),
    /// `KEEPTTL`
    Keep,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct SetOptions {
    condition: Condition,
    expiry: Expiry,
    get: bool,
}

impl SetOptions {
    /// `[NX|XX] [GET] [EX s|PX ms|EXAT s|PXAT ms|KEEPTTL]`, in any order, as Redis
    /// reads them: a repeated or conflicting option is a syntax error.
    fn parse(args: &[Bytes]) -> Result<SetOptions, ErrorReply> {
        let mut options = SetOptions {
            condition: Condition::Always,
            expiry: Expiry::Never,
            get: false,
        };
        let mut expiry_arg: Option<(&'static str, &Bytes)> = None;
        let mut at = 0;
        while at < args.len() {
            let option = args[at].to_ascii_uppercase();
            let unset = options.expiry == Expiry::Never && expiry_arg.is_none();
            match option.as_slice() {
                b"NX" if options.condition != Condition::IfPresent => {
                    options.condition = Condition::IfAbsent;
                }
                b"XX" if options.condition != Condition::IfAbsent => {
                    options.condition = Condition::IfPresent;
                }
                b"GET" => options.get = true,
                b"KEEPTTL" if unset => options.expiry = Expiry::Keep,
                b"EX" | b"PX" | b"EXAT" | b"PXAT" if unset && at + 1 < args.len() => {
                    let unit = match option.as_slice() {
                        b"EX" => "ex",
                        b"PX" => "px",
                        b"EXAT" => "exat",
                        _ => "pxat",
                    };
                    expiry_arg = Some((unit, &args[at + 1]));
                    at += 1;
                }
                _ => return Err(ErrorReply::syntax()),
            }
            at += 1;
        }
        if let Some((unit, arg)) = expiry_arg {
            let invalid = || ErrorReply::err("invalid expire time in 'set' command");
            let amount = integer(arg)?;
            if amount <= 0 {
                return Err(invalid());
            }
            let amount = amount.unsigned_abs();
            let ms = match unit {
                "ex" | "exat" => amount.checked_mul(1000).ok_or_else(invalid)?,
                _ => amount,
            };
            options.expiry = match unit {
                "ex" | "px" if ms > MAX_TTL_SECS * 1000 => return Err(invalid()),
                "ex" | "px" => Expiry::In(ms),
                _ => Expiry::At(ms),
            };
        }
        Ok(options)
    }
}

/// `SET key value [NX|XX] [GET] [EX|PX|EXAT|PXAT n|KEEPTTL]`.
pub async fn set(app: &AppState, args: &[Bytes]) -> Outcome {
    let options = SetOptions::parse(&args[2..])?;
    let key = parse_key(app, &args[0])?;
    let value = parse_value(app, &args[1])?;
    let must_read =
        options.get || options.condition != Condition::Always || options.expiry == Expiry::Keep;
    if must_read {
        return read_then_write(app, &key, |read| set_decision(&options, &value, read)).await;
    }
    // A plain SET supersedes whatever its coordinating replica holds (as every
    // write does under `lww`): one round trip, no read.
    match set_decision(&options, &value, &Read::of(None, app.node.now_ms()))? {
        Decision::Answer(answer) => Ok(answer),
        Decision::Write { body, ttl, answer } => {
            let body = match body {
                WriteBody::Value(bytes) => WriteBody::Overwrite(bytes),
                other => other,
            };
            match write(app, key, body, Context::default(), ttl).await? {
                Written::Applied => Ok(answer),
                Written::Contended => Err(contended()),
            }
        }
    }
}

/// What `SET` does with what it read.
fn set_decision(
    options: &SetOptions,
    value: &Bytes,
    read: &Read,
) -> Result<Decision<Reply>, ErrorReply> {
    if options.get && matches!(read.current, Current::Crdt { .. }) {
        return Err(ErrorReply::wrong_type());
    }
    let old = match &read.current {
        Current::Value { bytes, .. } => Reply::Bulk(bytes.clone()),
        _ => Reply::Null,
    };
    let skip = match options.condition {
        Condition::Always => false,
        Condition::IfAbsent => read.exists(),
        Condition::IfPresent => !read.exists(),
    };
    if skip {
        return Ok(Decision::Answer(if options.get {
            old
        } else {
            Reply::Null
        }));
    }
    let now_ms = read.now_ms;
    let value = WriteBody::Value(value.clone());
    let (body, ttl) = match options.expiry {
        Expiry::Never => (value, None),
        Expiry::In(ms) => (value, Some(Duration::from_millis(ms))),
        // A time already past: the key is gone at once, as in Redis.
        Expiry::At(at_ms) if at_ms <= now_ms => (WriteBody::Delete, None),
        Expiry::At(at_ms) => {
            if at_ms - now_ms > MAX_TTL_SECS * 1000 {
                return Err(ErrorReply::err("invalid expire time in 'set' command"));
            }
            (value, Some(Duration::from_millis(at_ms - now_ms)))
        }
        Expiry::Keep => {
            let ttl = match read.current {
                Current::Value {
                    expires_at_ms: Some(at),
                    ..
                }
                | Current::Crdt {
                    expires_at_ms: Some(at),
                } => Some(Duration::from_millis(at.saturating_sub(now_ms).max(1))),
                _ => None,
            };
            (value, ttl)
        }
    };
    let answer = if options.get { old } else { Reply::OK };
    Ok(Decision::Write { body, ttl, answer })
}

/// A plain `SET key value`, as `MSET` does for each pair.
pub(super) async fn set_plain(app: &AppState, key: Key, value: Bytes) -> Result<(), ErrorReply> {
    match write(
        app,
        key,
        WriteBody::Overwrite(value),
        Context::default(),
        None,
    )
    .await?
    {
        Written::Applied => Ok(()),
        Written::Contended => Err(contended()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options(args: &[&str]) -> Result<SetOptions, String> {
        let args: Vec<Bytes> = args
            .iter()
            .map(|arg| Bytes::copy_from_slice(arg.as_bytes()))
            .collect();
        SetOptions::parse(&args).map_err(|error| error.0)
    }

    #[test]
    fn set_options_follow_redis_rules() {
        let parsed = options(&["nx", "EX", "10", "get"]).unwrap();
        assert_eq!(parsed.condition, Condition::IfAbsent);
        assert_eq!(parsed.expiry, Expiry::In(10_000));
        assert!(parsed.get);
        assert_eq!(options(&["PXAT", "5"]).unwrap().expiry, Expiry::At(5));
        assert_eq!(options(&["KEEPTTL"]).unwrap().expiry, Expiry::Keep);
        for bad in [
            &["NX", "XX"][..],
            &["EX", "1", "PX", "1"],
            &["EX"],
            &["KEEPTTL", "EX", "1"],
            &["EX", "1", "KEEPTTL"],
            &["bogus"],
        ] {
            assert_eq!(options(bad).unwrap_err(), "ERR syntax error", "{bad:?}");
        }
        assert_eq!(
            options(&["EX", "ten"]).unwrap_err(),
            "ERR value is not an integer or out of range"
        );
        for bad in ["0", "-5", "9223372036854775807"] {
            assert_eq!(
                options(&["EX", bad]).unwrap_err(),
                "ERR invalid expire time in 'set' command"
            );
        }
    }
}
