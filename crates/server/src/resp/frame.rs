//! RESP framing: a bounded, incremental parser for what clients send (arrays of
//! bulk strings, and inline commands as typed into telnet), and the replies,
//! encoded for RESP2 or RESP3.
//!
//! Hand-written rather than `redis-protocol` (see ARCHITECTURE.md, "RESP"): that
//! crate decodes any frame type recursively with no depth bound and waits for a
//! bulk of whatever length the header announces; a server must refuse a
//! `$9999999999` header at once and never recurse on client input.
//!
//! The parser looks at the buffer only: it consumes a command once it is whole and
//! says `Incomplete` otherwise, so the caller can read more and call again. Every
//! length is checked against `FrameLimits` as soon as its header line is read,
//! before the bytes it announces are buffered; a buffer without a line end past
//! `max_inline_bytes` is an error too. So what a connection buffers is bounded by
//! `max_command_bytes` plus one header line.

use std::borrow::Cow;

use bytes::{BufMut, Bytes, BytesMut};

/// Bounds on one command (see `resp` module docs for the values used).
#[derive(Debug, Clone, Copy)]
pub struct FrameLimits {
    /// Arguments per command, the command name included.
    pub max_args: usize,
    /// Longest bulk string (one argument).
    pub max_bulk_bytes: usize,
    /// Longest inline command, and longest header line.
    pub max_inline_bytes: usize,
    /// Sum of the announced bulk lengths of one command.
    pub max_command_bytes: usize,
}

/// Why a stream is not RESP; the connection answers `-ERR Protocol error: ...`
/// and closes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolError {
    #[error("invalid multibulk length")]
    InvalidMultibulkLength,
    #[error("invalid bulk length")]
    InvalidBulkLength,
    #[error("expected '$', got '{0}'")]
    ExpectedBulk(char),
    #[error("expected CRLF after a bulk string")]
    ExpectedCrlf,
    #[error("too big inline request")]
    InlineTooBig,
    #[error("too big mbulk count string")]
    CountTooBig,
    #[error("too big bulk count string")]
    BulkCountTooBig,
    #[error("unbalanced quotes in request")]
    UnbalancedQuotes,
    #[error("too many arguments: {count}, at most {max}")]
    TooManyArgs { count: usize, max: usize },
    #[error("bulk string of {len} bytes, more than the limit of {max}")]
    BulkTooLarge { len: usize, max: usize },
    #[error("command of more than {max} bytes")]
    CommandTooLarge { max: usize },
}

/// What `parse` found at the start of the buffer.
#[derive(Debug, PartialEq, Eq)]
pub enum Parsed {
    /// A whole command, consumed from the buffer: its arguments (never empty).
    Command(Vec<Bytes>),
    /// An empty command (`*0`, `*-1`, a blank inline line), consumed: no reply.
    Empty,
    /// Not whole yet; at least this many bytes must be buffered before it can be.
    Incomplete { needed: usize },
}

/// Parses the command at the start of `buf`, consuming it when whole.
///
/// # Errors
/// A `ProtocolError` when the bytes are not a command or break a limit; the
/// buffer is then left as it was and the connection must be closed.
pub fn parse(buf: &mut BytesMut, limits: &FrameLimits) -> Result<Parsed, ProtocolError> {
    let Some(&first) = buf.first() else {
        return Ok(Parsed::Incomplete { needed: 1 });
    };
    let scanned = if first == b'*' {
        scan_multibulk(buf, limits)?
    } else {
        scan_inline(buf, limits)?
    };
    match scanned {
        Scan::Incomplete { needed } => Ok(Parsed::Incomplete { needed }),
        Scan::Whole { consumed, args } => {
            let frame = buf.split_to(consumed).freeze();
            if args.is_empty() {
                return Ok(Parsed::Empty);
            }
            let args = args
                .into_iter()
                .map(|arg| match arg {
                    Arg::Range(start, end) => frame.slice(start..end),
                    Arg::Owned(bytes) => Bytes::from(bytes),
                })
                .collect();
            Ok(Parsed::Command(args))
        }
    }
}

enum Arg {
    /// A slice of the frame (multibulk).
    Range(usize, usize),
    /// Unescaped bytes (inline with quotes).
    Owned(Vec<u8>),
}

enum Scan {
    Whole { consumed: usize, args: Vec<Arg> },
    Incomplete { needed: usize },
}

/// Where the `\r\n` ending the line that starts at `from` is, looking at most
/// `max` bytes ahead; `Ok(None)` when not buffered yet.
fn line_end(
    buf: &[u8],
    from: usize,
    max: usize,
    too_long: ProtocolError,
) -> Result<Option<usize>, ProtocolError> {
    let window =
        &buf[from.min(buf.len())..buf.len().min(from.saturating_add(max).saturating_add(2))];
    match window.windows(2).position(|pair| pair == b"\r\n") {
        Some(at) => Ok(Some(from + at)),
        None if window.len() >= max.saturating_add(2) => Err(too_long),
        None => Ok(None),
    }
}

/// A header number as Redis reads it: optional `-`, decimal digits, nothing else.
fn header_number(digits: &[u8]) -> Option<i64> {
    let text = std::str::from_utf8(digits).ok()?;
    if text.starts_with('+') {
        return None;
    }
    text.parse::<i64>().ok()
}

/// The longest header line (`*<count>` or `$<len>`): Redis allows a few more
/// digits than any valid count has.
const MAX_HEADER_BYTES: usize = 32;

fn scan_multibulk(buf: &[u8], limits: &FrameLimits) -> Result<Scan, ProtocolError> {
    let Some(end) = line_end(buf, 1, MAX_HEADER_BYTES, ProtocolError::CountTooBig)? else {
        return Ok(Scan::Incomplete {
            needed: buf.len() + 1,
        });
    };
    let count = header_number(&buf[1..end]).ok_or(ProtocolError::InvalidMultibulkLength)?;
    let mut at = end + 2;
    if count <= 0 {
        return Ok(Scan::Whole {
            consumed: at,
            args: Vec::new(),
        });
    }
    let count = usize::try_from(count).map_err(|_| ProtocolError::InvalidMultibulkLength)?;
    if count > limits.max_args {
        return Err(ProtocolError::TooManyArgs {
            count,
            max: limits.max_args,
        });
    }
    let mut args = Vec::with_capacity(count.min(64));
    let mut announced: usize = 0;
    for _ in 0..count {
        let Some(&kind) = buf.get(at) else {
            return Ok(Scan::Incomplete { needed: at + 1 });
        };
        if kind != b'$' {
            return Err(ProtocolError::ExpectedBulk(char::from(kind)));
        }
        let Some(end) = line_end(
            buf,
            at + 1,
            MAX_HEADER_BYTES,
            ProtocolError::BulkCountTooBig,
        )?
        else {
            return Ok(Scan::Incomplete {
                needed: buf.len() + 1,
            });
        };
        let len = header_number(&buf[at + 1..end])
            .and_then(|len| usize::try_from(len).ok())
            .ok_or(ProtocolError::InvalidBulkLength)?;
        if len > limits.max_bulk_bytes {
            return Err(ProtocolError::BulkTooLarge {
                len,
                max: limits.max_bulk_bytes,
            });
        }
        announced = announced.saturating_add(len);
        if announced > limits.max_command_bytes {
            return Err(ProtocolError::CommandTooLarge {
                max: limits.max_command_bytes,
            });
        }
        let start = end + 2;
        let stop = start + len;
        if buf.len() < stop + 2 {
            return Ok(Scan::Incomplete { needed: stop + 2 });
        }
        if &buf[stop..stop + 2] != b"\r\n" {
            return Err(ProtocolError::ExpectedCrlf);
        }
        args.push(Arg::Range(start, stop));
        at = stop + 2;
    }
    Ok(Scan::Whole { consumed: at, args })
}

fn scan_inline(buf: &[u8], limits: &FrameLimits) -> Result<Scan, ProtocolError> {
    let window = &buf[..buf.len().min(limits.max_inline_bytes.saturating_add(1))];
    let Some(newline) = window.iter().position(|byte| *byte == b'\n') else {
        if window.len() > limits.max_inline_bytes {
            return Err(ProtocolError::InlineTooBig);
        }
        return Ok(Scan::Incomplete {
            needed: buf.len() + 1,
        });
    };
    let line = buf[..newline]
        .strip_suffix(b"\r")
        .unwrap_or(&buf[..newline]);
    let args = split_inline(line)?;
    if args.len() > limits.max_args {
        return Err(ProtocolError::TooManyArgs {
            count: args.len(),
            max: limits.max_args,
        });
    }
    Ok(Scan::Whole {
        consumed: newline + 1,
        args: args.into_iter().map(Arg::Owned).collect(),
    })
}

/// Splits an inline command into arguments the way redis-cli and Redis do
/// (`sdssplitargs`): blanks separate, `"..."` takes `\n \r \t \b \a \\ \" \xHH`
/// escapes, `'...'` takes `\'`; a closing quote must be followed by a blank.
fn split_inline(line: &[u8]) -> Result<Vec<Vec<u8>>, ProtocolError> {
    let mut args = Vec::new();
    let mut at = 0;
    loop {
        while line.get(at).is_some_and(u8::is_ascii_whitespace) {
            at += 1;
        }
        if at >= line.len() {
            return Ok(args);
        }
        let mut arg = Vec::new();
        match line[at] {
            quote @ (b'"' | b'\'') => {
                at += 1;
                loop {
                    let Some(&byte) = line.get(at) else {
                        return Err(ProtocolError::UnbalancedQuotes);
                    };
                    if byte == quote {
                        at += 1;
                        if line.get(at).is_some_and(|next| !next.is_ascii_whitespace()) {
                            return Err(ProtocolError::UnbalancedQuotes);
                        }
                        break;
                    }
                    if byte == b'\\' && quote == b'"' {
                        let (unescaped, used) = unescape(&line[at + 1..]);
                        arg.push(unescaped);
                        at += 1 + used;
                    } else if byte == b'\\' && quote == b'\'' && line.get(at + 1) == Some(&b'\'') {
                        arg.push(b'\'');
                        at += 2;
                    } else {
                        arg.push(byte);
                        at += 1;
                    }
                }
            }
            _ => {
                while let Some(&byte) = line.get(at) {
                    if byte.is_ascii_whitespace() {
                        break;
                    }
                    arg.push(byte);
                    at += 1;
                }
            }
        }
        args.push(arg);
    }
}

/// One escape after a backslash in double quotes: the byte it stands for and
/// how many bytes after the backslash it used.
fn unescape(rest: &[u8]) -> (u8, usize) {
    let hex = |byte: u8| char::from(byte).to_digit(16);
    match rest {
        [b'x', high, low, ..] if hex(*high).is_some() && hex(*low).is_some() => {
            let value = hex(*high).unwrap_or(0) * 16 + hex(*low).unwrap_or(0);
            (u8::try_from(value).unwrap_or(b'?'), 3)
        }
        [b'n', ..] => (b'\n', 1),
        [b'r', ..] => (b'\r', 1),
        [b't', ..] => (b'\t', 1),
        [b'b', ..] => (0x08, 1),
        [b'a', ..] => (0x07, 1),
        [other, ..] => (*other, 1),
        [] => (b'\\', 0),
    }
}

/// Which protocol a connection speaks: RESP2 until `HELLO 3`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Resp2,
    Resp3,
}

impl Protocol {
    pub fn version(self) -> i64 {
        match self {
            Protocol::Resp2 => 2,
            Protocol::Resp3 => 3,
        }
    }
}

/// A reply, in terms of RESP3; RESP2 gets the nearest shape (maps flattened to
/// arrays, sets as arrays, null as the null bulk string, verbatim as bulk).
#[derive(Debug, Clone, PartialEq)]
pub enum Reply {
    Simple(Cow<'static, str>),
    /// The whole error line after `-`, starting with its code (`ERR ...`).
    Error(String),
    Integer(i64),
    Bulk(Bytes),
    Null,
    Array(Vec<Reply>),
    Map(Vec<(Reply, Reply)>),
    Set(Vec<Reply>),
    /// Text (`txt`), as `INFO` answers in RESP3.
    Verbatim(String),
}

impl Reply {
    pub const OK: Reply = Reply::Simple(Cow::Borrowed("OK"));

    pub fn bulk(text: impl Into<Bytes>) -> Reply {
        Reply::Bulk(text.into())
    }

    pub fn text(text: &'static str) -> Reply {
        Reply::Bulk(Bytes::from_static(text.as_bytes()))
    }

    pub fn is_error(&self) -> bool {
        matches!(self, Reply::Error(_))
    }

    /// Appends the reply's bytes in `protocol` to `out`.
    pub fn encode(&self, protocol: Protocol, out: &mut BytesMut) {
        let resp3 = protocol == Protocol::Resp3;
        match self {
            Reply::Simple(text) => line(out, b'+', text.as_bytes()),
            Reply::Error(text) => line(out, b'-', text.as_bytes()),
            Reply::Integer(value) => header(out, b':', *value),
            Reply::Bulk(bytes) => bulk(out, b'$', bytes),
            Reply::Null if resp3 => out.put_slice(b"_\r\n"),
            Reply::Null => out.put_slice(b"$-1\r\n"),
            Reply::Array(items) => {
                header(out, b'*', len_i64(items.len()));
                for item in items {
                    item.encode(protocol, out);
                }
            }
            Reply::Set(items) => {
                header(out, if resp3 { b'~' } else { b'*' }, len_i64(items.len()));
                for item in items {
                    item.encode(protocol, out);
                }
            }
            Reply::Map(pairs) => {
                if resp3 {
                    header(out, b'%', len_i64(pairs.len()));
                } else {
                    header(out, b'*', len_i64(pairs.len()).saturating_mul(2));
                }
                for (key, value) in pairs {
                    key.encode(protocol, out);
                    value.encode(protocol, out);
                }
            }
            Reply::Verbatim(text) if resp3 => {
                header(out, b'=', len_i64(text.len() + 4));
                out.put_slice(b"txt:");
                out.put_slice(text.as_bytes());
                out.put_slice(b"\r\n");
            }
            Reply::Verbatim(text) => bulk(out, b'$', text.as_bytes()),
        }
    }
}

fn len_i64(len: usize) -> i64 {
    i64::try_from(len).unwrap_or(i64::MAX)
}

/// A simple string or error line; CR and LF inside would end the line early, so
/// they become spaces.
fn line(out: &mut BytesMut, kind: u8, text: &[u8]) {
    out.put_u8(kind);
    out.extend(text.iter().map(|byte| {
        if matches!(byte, b'\r' | b'\n') {
            b' '
        } else {
            *byte
        }
    }));
    out.put_slice(b"\r\n");
}

fn header(out: &mut BytesMut, kind: u8, value: i64) {
    out.put_u8(kind);
    out.put_slice(value.to_string().as_bytes());
    out.put_slice(b"\r\n");
}

fn bulk(out: &mut BytesMut, kind: u8, bytes: &[u8]) {
    header(out, kind, len_i64(bytes.len()));
    out.put_slice(bytes);
    out.put_slice(b"\r\n");
}

#[cfg(test)]
#[path = "frame_tests.rs"]
mod tests;
