//! `max_buffered_request_bytes`: the request bytes a node buffers at once, across
//! HTTP bodies and large RESP commands, against a real node started in process on
//! 127.0.0.1 with port 0.

#![allow(clippy::unwrap_used)] // Tests fail loudly on anything unexpected.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::{TestNode, error_code, start_with, test_config};
use reqwest::StatusCode;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A node whose budget is 100,000 bytes. Its max_value_bytes is 1024, so the
/// largest JSON PUT is 2 × 1024 + 64 KiB = 67,584 bytes: below the budget, which
/// is used as given.
async fn start_budgeted() -> TestNode {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    config.max_buffered_request_bytes = 100_000;
    start_with(dir, config).await
}

/// PUTs a valid JSON body of `size` bytes (value "x", padded with spaces).
async fn put(node: &TestNode, key: &str, size: usize) -> reqwest::Response {
    let mut body = br#"{"value": "x"}"#.to_vec();
    body.resize(size, b' ');
    node.client
        .put(node.url(&format!("/v1/kv/{key}")))
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap()
}

/// Starts a JSON PUT of `key` announcing `length` bytes, sends its first few and
/// returns the connection, to send the rest (or nothing) at the caller's pace.
async fn start_slow_put(addr: SocketAddr, key: &str, length: usize) -> TcpStream {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "PUT /v1/kv/{key} HTTP/1.1\r\nhost: {addr}\r\ncontent-type: application/json\r\n\
         content-length: {length}\r\n\r\n{{\"value\": "
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    stream
}

/// PUTs `size` bytes under `key(attempt)` every 20 ms until the answer is `until`
/// (returned), for 10 s at most: another share may be taken or given back a moment
/// after the test's own step. Meanwhile only `meanwhile` is accepted.
async fn put_until(
    node: &TestNode,
    key: impl Fn(usize) -> String,
    size: usize,
    until: StatusCode,
    meanwhile: StatusCode,
    never: &str,
) -> reqwest::Response {
    let deadline = Instant::now() + Duration::from_secs(10);
    for attempt in 0.. {
        let response = put(node, &key(attempt), size).await;
        if response.status() == until {
            return response;
        }
        let status = response.status();
        assert_eq!(
            status,
            meanwhile,
            "{}",
            response.text().await.unwrap_or_default()
        );
        assert!(Instant::now() < deadline, "{never}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    unreachable!("the attempts are unbounded; the deadline ends them")
}

/// The start of a RESP command announcing 100 arguments of 1,000 bytes: its first
/// `args` of them.
fn partial_command(args: usize) -> Vec<u8> {
    let mut command = b"*100\r\n".to_vec();
    for _ in 0..args {
        command.extend_from_slice(b"$1000\r\n");
        command.extend_from_slice(&[b'x'; 1000]);
        command.extend_from_slice(b"\r\n");
    }
    command
}

/// Everything `stream` sends until it closes (10 s at most).
async fn read_until_closed(stream: &mut TcpStream) -> String {
    let mut answer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut answer));
    read.await.expect("closed within 10 s").unwrap_or_default();
    String::from_utf8_lossy(&answer).into_owned()
}

/// Sends `PING` on `stream` and checks the answer is `+PONG`.
async fn ping(stream: &mut TcpStream) {
    stream.write_all(b"PING\r\n").await.unwrap();
    let mut pong = [0u8; 7];
    stream.read_exact(&mut pong).await.unwrap();
    assert_eq!(&pong, b"+PONG\r\n");
}

/// Request bodies count against the node's budget (`max_buffered_request_bytes`)
/// from before their first byte is read until they are answered: a slow sender
/// holds its whole announced length, a body the rest of the budget cannot hold gets
/// 503 `overloaded` at once, a smaller one still goes through, and the share comes
/// back when the slow request ends.
#[tokio::test]
async fn bodies_beyond_the_nodes_buffer_budget_are_503_until_shares_come_back() {
    let node = start_budgeted().await;
    let addr = node.server.as_ref().unwrap().http_addr();
    // A slow client announces 60,000 bytes and sends a few.
    let slow = start_slow_put(addr, "slow", 60_000).await;
    // 60,000 + 50,000 is over the budget once the slow request holds its share
    // (fresh keys: the writes that got through meanwhile must not pile up siblings).
    let refused = put_until(
        &node,
        |attempt| format!("second-{attempt}"),
        50_000,
        StatusCode::SERVICE_UNAVAILABLE,
        StatusCode::OK,
        "a body beyond the budget was never refused",
    )
    .await;
    let body: Value = refused.json().await.unwrap();
    assert_eq!(error_code(&body), "overloaded", "{body}");
    // What is left of the budget still serves a smaller body.
    assert_eq!(put(&node, "small", 30_000).await.status(), 200);
    // The slow client goes away: its share comes back (refused writes store
    // nothing, so the same key can be retried).
    drop(slow);
    put_until(
        &node,
        |_| "third".to_owned(),
        50_000,
        StatusCode::OK,
        StatusCode::SERVICE_UNAVAILABLE,
        "the slow request's share never came back",
    )
    .await;
    assert_eq!(node.get_json("third").await.1["value"], "x");
    node.stop().await;
}

/// RESP commands draw on the same budget once they outgrow a connection's first
/// 16 KiB: a client in the middle of a large command holds its share, a second one
/// that needs more than is left gets `-ERR overloaded` (and is closed, as Redis does
/// past its query buffer limit), HTTP bodies see the same budget, and all of it
/// comes back when the first client goes away.
#[tokio::test]
async fn large_resp_commands_draw_on_the_same_budget() {
    let node = start_budgeted().await;
    let resp = node.server.as_ref().unwrap().resp_addr();
    // 90 of the 100 announced arguments: ~90 KB buffered, ~74 KB of it past the
    // first 16 KiB.
    let mut first = TcpStream::connect(resp).await.unwrap();
    first.write_all(&partial_command(90)).await.unwrap();
    // Once the first client's command holds its share, a 50 KB HTTP body no longer
    // fits...
    put_until(
        &node,
        |attempt| format!("http-{attempt}"),
        50_000,
        StatusCode::SERVICE_UNAVAILABLE,
        StatusCode::OK,
        "a large RESP command never held its share",
    )
    .await;
    // ...nor does a second large RESP command: refused, then closed.
    let mut second = TcpStream::connect(resp).await.unwrap();
    second.write_all(&partial_command(90)).await.unwrap();
    let answer = read_until_closed(&mut second).await;
    assert!(answer.starts_with("-ERR overloaded"), "{answer}");
    // Small commands are untouched by the budget.
    let mut small = TcpStream::connect(resp).await.unwrap();
    ping(&mut small).await;
    // The first client leaves: its share comes back.
    drop(first);
    put_until(
        &node,
        |_| "after".to_owned(),
        50_000,
        StatusCode::OK,
        StatusCode::SERVICE_UNAVAILABLE,
        "the RESP client's share never came back",
    )
    .await;
    node.stop().await;
}

/// A node with the budget above whose clients may pause 300 ms in mid-request.
async fn start_impatient() -> TestNode {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    config.max_buffered_request_bytes = 100_000;
    config.request_stall_timeout_ms = 300;
    start_with(dir, config).await
}

/// A client that stops sending a body it started (it died, or its network did,
/// without closing) is answered 408 `request_timeout` after
/// `request_stall_timeout_ms`, and the budget it held comes back without the
/// client going away.
#[tokio::test]
async fn a_stalled_http_body_is_408_and_its_share_comes_back() {
    let node = start_impatient().await;
    let addr = node.server.as_ref().unwrap().http_addr();
    let started = Instant::now();
    let mut stalled = start_slow_put(addr, "stalled", 60_000).await;
    let mut answer = vec![0u8; 4096];
    let read = tokio::time::timeout(Duration::from_secs(10), stalled.read(&mut answer));
    let read = read.await.expect("answered within 10 s").unwrap();
    let answer = String::from_utf8_lossy(&answer[..read]);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("request_timeout"), "{answer}");
    assert!(started.elapsed() >= Duration::from_millis(300));
    // The whole budget is free again although the client is still connected.
    assert_eq!(put(&node, "after", 60_000).await.status(), 200);
    assert_eq!(put(&node, "again", 30_000).await.status(), 200);
    drop(stalled);
    node.stop().await;
}

/// The same over RESP: a client that stops in the middle of a command gets
/// `-ERR timeout` and is closed, its budget share back; a client idle between
/// commands is left alone, as in Redis.
#[tokio::test]
async fn a_stalled_resp_command_is_refused_and_its_share_comes_back() {
    let node = start_impatient().await;
    let resp = node.server.as_ref().unwrap().resp_addr();
    let mut idle = TcpStream::connect(resp).await.unwrap();
    ping(&mut idle).await;
    // 60 of the 100 announced arguments, then nothing.
    let command = partial_command(60);
    let mut stalled = TcpStream::connect(resp).await.unwrap();
    let started = Instant::now();
    stalled.write_all(&command).await.unwrap();
    let answer = read_until_closed(&mut stalled).await;
    assert!(answer.starts_with("-ERR timeout"), "{answer}");
    assert!(started.elapsed() >= Duration::from_millis(300));
    // Its share is back: the largest body fits beside a second one.
    assert_eq!(put(&node, "after", 60_000).await.status(), 200);
    // The idle client, silent for longer than the timeout, still gets answers.
    ping(&mut idle).await;
    node.stop().await;
}
