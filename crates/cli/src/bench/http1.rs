//! A lean HTTP/1.1 keep-alive client for the load: one connection per bench client,
//! one request in flight, requests written in one `write` call, answers parsed just
//! enough (status, `Content-Length` or chunked body, `X-Ringkv-Version`,
//! `Connection: close`).
//!
//! Why not reqwest (still used for `/health` and by the SDK): on the 2-vCPU machine
//! where the load shares the cores with the nodes it measures, reqwest's pool and
//! hyper's machinery cost ~33 µs of CPU per request, a sixth of the whole machine's
//! work per write; this client costs about a third of that, like redis-benchmark
//! over RESP. ringkv and etcd (`--protocol etcd`) are loaded through the same client.

use std::net::SocketAddr;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

/// Longest status or header line accepted.
const MAX_LINE: u64 = 16 * 1024;
/// Most header lines accepted in one answer.
const MAX_HEADERS: usize = 100;
/// Largest body accepted (a 16 MiB value as JSON, and then some).
const MAX_BODY: usize = 64 << 20;

/// Where requests go: the address to connect to and the `Host` header.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endpoint {
    pub addr: SocketAddr,
    pub host: String,
}

impl Endpoint {
    /// The endpoint of a base URL `http://host:port` (resolved once, here).
    ///
    /// # Errors
    /// An unparsable URL or a host that does not resolve.
    pub fn of(base: &str) -> anyhow::Result<Endpoint> {
        let url = reqwest::Url::parse(base)?;
        let host = url
            .host_str()
            .ok_or_else(|| anyhow::anyhow!("{base} has no host"))?;
        let port = url.port_or_known_default().unwrap_or(80);
        let addr = url
            .socket_addrs(|| Some(port))?
            .into_iter()
            .next()
            .ok_or_else(|| anyhow::anyhow!("{base} resolves to no address"))?;
        Ok(Endpoint {
            addr,
            host: format!("{host}:{port}"),
        })
    }
}

/// What an answer carried that the load needs.
#[derive(Debug, PartialEq, Eq)]
pub struct Answer {
    pub status: u16,
    /// `X-Ringkv-Version`, if present.
    pub version: Option<String>,
    pub body: Vec<u8>,
    /// The server will close the connection (`Connection: close`).
    pub close: bool,
}

/// One keep-alive connection.
pub struct HttpConn {
    stream: BufReader<TcpStream>,
    /// Scratch buffer for one request.
    out: Vec<u8>,
    /// Requests answered on this connection.
    pub answered: u64,
}

fn invalid(message: impl Into<String>) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, message.into())
}

impl HttpConn {
    pub async fn open(endpoint: &Endpoint) -> std::io::Result<HttpConn> {
        let stream = TcpStream::connect(endpoint.addr).await?;
        stream.set_nodelay(true)?;
        Ok(HttpConn {
            stream: BufReader::new(stream),
            out: Vec::with_capacity(512),
            answered: 0,
        })
    }

    /// Sends one request and reads its answer.
    ///
    /// # Errors
    /// I/O errors, a closed connection, or an answer that is not HTTP/1.1 as this
    /// client reads it.
    pub async fn request(
        &mut self,
        endpoint: &Endpoint,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> std::io::Result<Answer> {
        self.out.clear();
        self.out.extend_from_slice(method.as_bytes());
        self.out.push(b' ');
        self.out.extend_from_slice(path.as_bytes());
        self.out.extend_from_slice(b" HTTP/1.1\r\nHost: ");
        self.out.extend_from_slice(endpoint.host.as_bytes());
        for (name, value) in headers {
            self.out.extend_from_slice(b"\r\n");
            self.out.extend_from_slice(name.as_bytes());
            self.out.extend_from_slice(b": ");
            self.out.extend_from_slice(value.as_bytes());
        }
        if !body.is_empty() || method != "GET" {
            self.out
                .extend_from_slice(format!("\r\nContent-Length: {}", body.len()).as_bytes());
        }
        self.out.extend_from_slice(b"\r\n\r\n");
        self.out.extend_from_slice(body);
        self.stream.get_mut().write_all(&self.out).await?;
        let answer = self.read_answer().await?;
        self.answered += 1;
        Ok(answer)
    }

    async fn line(&mut self, line: &mut Vec<u8>) -> std::io::Result<()> {
        line.clear();
        let read = (&mut self.stream)
            .take(MAX_LINE)
            .read_until(b'\n', line)
            .await?;
        if read == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "the connection closed",
            ));
        }
        if !line.ends_with(b"\r\n") {
            return Err(invalid("a line without CRLF (or too long)"));
        }
        line.truncate(line.len() - 2);
        Ok(())
    }

    async fn read_answer(&mut self) -> std::io::Result<Answer> {
        let mut line = Vec::with_capacity(128);
        self.line(&mut line).await?;
        // "HTTP/1.1 200 OK"
        let status = line
            .strip_prefix(b"HTTP/1.1 ")
            .or_else(|| line.strip_prefix(b"HTTP/1.0 "))
            .and_then(|rest| rest.get(..3))
            .and_then(|code| std::str::from_utf8(code).ok())
            .and_then(|code| code.parse::<u16>().ok())
            .ok_or_else(|| {
                invalid(format!(
                    "not an HTTP/1.1 status line: {:?}",
                    String::from_utf8_lossy(&line)
                ))
            })?;
        let (mut length, mut chunked, mut close, mut version) = (None, false, false, None);
        for count in 0.. {
            self.line(&mut line).await?;
            if line.is_empty() {
                break;
            }
            if count >= MAX_HEADERS {
                return Err(invalid("too many header lines"));
            }
            let text = String::from_utf8_lossy(&line);
            let Some((name, value)) = text.split_once(':') else {
                return Err(invalid(format!("a header without a colon: {text:?}")));
            };
            let value = value.trim();
            if name.eq_ignore_ascii_case("content-length") {
                let parsed = value
                    .parse::<usize>()
                    .map_err(|_| invalid(format!("a bad Content-Length {value:?}")))?;
                length = Some(parsed);
            } else if name.eq_ignore_ascii_case("transfer-encoding") {
                chunked = value.eq_ignore_ascii_case("chunked");
            } else if name.eq_ignore_ascii_case("connection") {
                close = value.eq_ignore_ascii_case("close");
            } else if name.eq_ignore_ascii_case("x-ringkv-version") {
                version = Some(value.to_owned());
            }
        }
        let body = if chunked {
            self.chunked_body(&mut line).await?
        } else {
            let length = match length {
                Some(length) => length,
                // No body on these; anything else without a length is refused.
                None if status == 204 || status == 304 || (100..200).contains(&status) => 0,
                None => return Err(invalid("an answer with neither length nor chunks")),
            };
            if length > MAX_BODY {
                return Err(invalid(format!("a {length}-byte body")));
            }
            let mut body = vec![0; length];
            self.stream.read_exact(&mut body).await?;
            body
        };
        Ok(Answer {
            status,
            version,
            body,
            close,
        })
    }

    async fn chunked_body(&mut self, line: &mut Vec<u8>) -> std::io::Result<Vec<u8>> {
        let mut body = Vec::new();
        loop {
            self.line(line).await?;
            let text = String::from_utf8_lossy(line);
            let size = text.split(';').next().unwrap_or("").trim();
            let size = usize::from_str_radix(size, 16)
                .map_err(|_| invalid(format!("a bad chunk size {text:?}")))?;
            if size == 0 {
                // Trailers, then the empty line.
                loop {
                    self.line(line).await?;
                    if line.is_empty() {
                        return Ok(body);
                    }
                }
            }
            if size > MAX_BODY.saturating_sub(body.len()) {
                return Err(invalid("a chunked body over the limit"));
            }
            let start = body.len();
            body.resize(start + size, 0);
            self.stream.read_exact(&mut body[start..]).await?;
            self.line(line).await?;
            if !line.is_empty() {
                return Err(invalid("a chunk not followed by CRLF"));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    /// A server on 127.0.0.1 that answers each request (read up to its blank line
    /// and body) with the next canned answer, and hands back what it read.
    async fn serve(answers: Vec<&'static str>) -> (Endpoint, tokio::task::JoinHandle<Vec<u8>>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let (stream, _) = listener.accept().await.unwrap();
            let mut stream = BufReader::new(stream);
            let mut seen = Vec::new();
            for answer in answers {
                let mut length = 0;
                loop {
                    let mut line = String::new();
                    stream.read_line(&mut line).await.unwrap();
                    seen.extend_from_slice(line.as_bytes());
                    if let Some(value) = line.strip_prefix("Content-Length: ") {
                        length = value.trim().parse().unwrap();
                    }
                    if line == "\r\n" {
                        break;
                    }
                }
                let mut body = vec![0; length];
                stream.read_exact(&mut body).await.unwrap();
                seen.extend_from_slice(&body);
                stream.get_mut().write_all(answer.as_bytes()).await.unwrap();
            }
            seen
        });
        let endpoint = Endpoint {
            addr,
            host: addr.to_string(),
        };
        (endpoint, server)
    }

    #[tokio::test]
    async fn keep_alive_requests_read_lengths_chunks_and_the_version() {
        let (endpoint, server) = serve(vec![
            "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-Ringkv-Version: abc\r\n\r\nhello",
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\n{\"a\r\n2;x=y\r\n\"}\r\n0\r\n\r\n",
            "HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\nConnection: close\r\n\r\n",
        ])
        .await;
        let mut conn = HttpConn::open(&endpoint).await.unwrap();
        let first = conn
            .request(
                &endpoint,
                "PUT",
                "/v1/kv/k",
                &[("Content-Type", "application/json")],
                b"{}",
            )
            .await
            .unwrap();
        assert_eq!(
            (
                first.status,
                first.version.as_deref(),
                &first.body[..],
                first.close
            ),
            (200, Some("abc"), &b"hello"[..], false)
        );
        let second = conn
            .request(&endpoint, "POST", "/v3/kv/range", &[], b"x")
            .await
            .unwrap();
        assert_eq!(second.body, b"{\"a\"}");
        let third = conn
            .request(&endpoint, "GET", "/v1/kv/k", &[], b"")
            .await
            .unwrap();
        assert_eq!((third.status, third.close), (404, true));
        assert_eq!(conn.answered, 3);
        let seen = String::from_utf8(server.await.unwrap()).unwrap();
        let host = format!("Host: {}", endpoint.host);
        assert!(seen.starts_with(&format!(
            "PUT /v1/kv/k HTTP/1.1\r\n{host}\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{{}}"
        )));
        assert!(
            seen.contains(&format!("GET /v1/kv/k HTTP/1.1\r\n{host}\r\n\r\n")),
            "{seen}"
        );
    }

    /// Garbage, a missing length, an oversized body and a closed connection are
    /// errors, never a hang or a panic.
    #[tokio::test]
    async fn broken_answers_are_errors() {
        for answer in [
            "SMTP ready\r\n\r\n",
            "HTTP/1.1 200 OK\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: 99999999999\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n",
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nffffffffffffffff\r\n",
            "HTTP/1.1 200 OK\r\nno colon here\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort",
        ] {
            let (endpoint, server) = serve(vec![answer]).await;
            let mut conn = HttpConn::open(&endpoint).await.unwrap();
            let result = tokio::time::timeout(
                std::time::Duration::from_secs(5),
                conn.request(&endpoint, "GET", "/", &[], b""),
            );
            // The server task ends after its one answer, closing the connection: a
            // short body ends in EOF rather than a wait.
            let outcome = result.await.expect("no hang");
            assert!(outcome.is_err(), "{answer:?} gave {outcome:?}");
            server.await.unwrap();
        }
    }

    #[test]
    fn endpoints_resolve_with_their_port() {
        let endpoint = Endpoint::of("http://127.0.0.1:18080").unwrap();
        assert_eq!(endpoint.addr, "127.0.0.1:18080".parse().unwrap());
        assert_eq!(endpoint.host, "127.0.0.1:18080");
        assert_eq!(Endpoint::of("http://127.0.0.1").unwrap().addr.port(), 80);
    }
}
