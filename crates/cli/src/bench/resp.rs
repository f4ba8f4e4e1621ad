//! The load's RESP client: one connection per bench client, commands written as
//! arrays of bulk strings, replies parsed just enough (bounded lines and bulks).

use std::time::Duration;

use anyhow::Context as _;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

use super::client::{Failure, MAX_DETAIL_CHARS, Success, Target};
use super::keys::{Op, key_name};
use super::report::ErrorKind;

/// One client's RESP connection (opened on first use, dropped on any error).
pub struct RespConn {
    stream: BufReader<TcpStream>,
    /// Scratch buffer for one command.
    out: Vec<u8>,
}

/// Longest reply line accepted (a bulk header, `+OK`, an error text).
const MAX_REPLY_LINE: usize = 64 * 1024;
/// Largest bulk reply accepted (a 16 MiB value, and then some).
const MAX_REPLY_BULK: usize = 64 << 20;

impl RespConn {
    async fn open(addr: &str) -> std::io::Result<RespConn> {
        let stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        Ok(RespConn {
            stream: BufReader::new(stream),
            out: Vec::with_capacity(256),
        })
    }

    /// Sends one command (a RESP array of bulk strings).
    async fn send(&mut self, args: &[&[u8]]) -> std::io::Result<()> {
        self.out.clear();
        self.out
            .extend_from_slice(format!("*{}\r\n", args.len()).as_bytes());
        for arg in args {
            self.out
                .extend_from_slice(format!("${}\r\n", arg.len()).as_bytes());
            self.out.extend_from_slice(arg);
            self.out.extend_from_slice(b"\r\n");
        }
        self.stream.get_mut().write_all(&self.out).await
    }

    /// Reads one reply: `Ok(true)` for a value or `+OK`/`+PONG`, `Ok(false)` for a
    /// null, `Err` with the text for an error reply or a broken stream.
    async fn reply(&mut self) -> Result<bool, Failure> {
        let broken = |detail: String| Failure {
            kind: ErrorKind::Connection,
            detail,
        };
        let mut line = Vec::new();
        let read = (&mut self.stream)
            .take(MAX_REPLY_LINE as u64)
            .read_until(b'\n', &mut line)
            .await
            .map_err(|error| broken(error.to_string()))?;
        if read == 0 || !line.ends_with(b"\r\n") {
            return Err(broken(
                "the connection closed or sent a broken reply".into(),
            ));
        }
        line.truncate(line.len() - 2);
        let text = String::from_utf8_lossy(&line[1..]).into_owned();
        match line.first() {
            Some(b'+') => Ok(true),
            Some(b'-') => Err(Failure {
                kind: ErrorKind::Resp,
                detail: text.chars().take(MAX_DETAIL_CHARS).collect(),
            }),
            Some(b'_') => Ok(false),
            Some(b'$') if text == "-1" => Ok(false),
            Some(b'$') => {
                let len: usize = text
                    .parse()
                    .ok()
                    .filter(|len| *len <= MAX_REPLY_BULK)
                    .ok_or_else(|| broken(format!("a bad bulk length {text:?}")))?;
                // The bulk and its CRLF, read and dropped.
                let mut rest = vec![0; len + 2];
                self.stream
                    .read_exact(&mut rest)
                    .await
                    .map_err(|error| broken(error.to_string()))?;
                Ok(true)
            }
            _ => Err(broken(format!("an unexpected reply {text:?}"))),
        }
    }
}

/// Opens a RESP connection to `addr` and checks it answers `PING`.
///
/// # Errors
/// Connection failures, a timeout, or an answer other than `+PONG`.
pub async fn resp_ping(addr: &str, timeout: Duration) -> anyhow::Result<()> {
    tokio::time::timeout(timeout, async {
        let mut conn = RespConn::open(addr).await?;
        conn.send(&[b"PING"]).await?;
        match conn.reply().await {
            Ok(true) => Ok(()),
            Ok(false) => anyhow::bail!("PING answered null"),
            Err(failure) => anyhow::bail!("PING failed: {}", failure.detail),
        }
    })
    .await
    .context("no answer in time")?
}

impl Target {
    /// Runs `op` over the client's RESP connection to node `index` (opened if
    /// needed; dropped on a connection error or a timeout).
    pub(super) async fn send_resp(
        &self,
        index: usize,
        op: Op,
        conn: &mut Option<RespConn>,
    ) -> Result<Success, Failure> {
        let base = &self.urls[index];
        match tokio::time::timeout(self.timeout, self.resp_op(base, op, conn)).await {
            Ok(Ok(success)) => Ok(success),
            Ok(Err(failure)) => {
                if failure.kind == ErrorKind::Connection {
                    *conn = None;
                }
                Err(failure)
            }
            Err(_elapsed) => {
                // A reply may still come: the connection is out of step.
                *conn = None;
                Err(Failure {
                    kind: ErrorKind::Timeout,
                    detail: format!("no reply from {base} in {:?}", self.timeout),
                })
            }
        }
    }

    async fn resp_op(
        &self,
        addr: &str,
        op: Op,
        conn: &mut Option<RespConn>,
    ) -> Result<Success, Failure> {
        let connection = match conn {
            Some(connection) => connection,
            None => conn.insert(RespConn::open(addr).await.map_err(|error| Failure {
                kind: ErrorKind::Connection,
                detail: format!("{addr}: {error}"),
            })?),
        };
        let key = key_name(op.key_index());
        let broken = |error: std::io::Error| Failure {
            kind: ErrorKind::Connection,
            detail: format!("{addr}: {error}"),
        };
        if let Op::Update(_) = op {
            // Read, then write (RESP resolves by LWW: the SET needs no version).
            connection
                .send(&[b"GET", key.as_bytes()])
                .await
                .map_err(broken)?;
            connection.reply().await?;
        }
        let sent = match op {
            Op::Read(_) => connection.send(&[b"GET", key.as_bytes()]).await,
            Op::Write(_) | Op::Update(_) => {
                connection
                    .send(&[b"SET", key.as_bytes(), &self.resp_value])
                    .await
            }
        };
        sent.map_err(broken)?;
        match (op, connection.reply().await?) {
            (_, true) => Ok(Success::Hit),
            (Op::Read(_), false) => Ok(Success::Miss),
            (Op::Write(_) | Op::Update(_), false) => Err(Failure {
                kind: ErrorKind::Resp,
                detail: "SET answered null".into(),
            }),
        }
    }
}
