//! Options of a node's TCP connections (HTTP and RESP clients, peers), read back from
//! the kernel's own table of TCP sockets (`/proc/net/tcp`).

#![allow(clippy::unwrap_used)] // Tests fail loudly on anything unexpected.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// `/proc/net/tcp`'s "ADDR:PORT" for an IPv4 address: the address as a
/// little-endian u32, the port big-endian, both in upper-case hex.
fn proc_address(addr: SocketAddr) -> String {
    let SocketAddr::V4(addr) = addr else {
        panic!("the test node listens on IPv4: {addr}")
    };
    format!(
        "{:08X}:{:04X}",
        u32::from_le_bytes(addr.ip().octets()),
        addr.port()
    )
}

/// The timer the kernel runs for the TCP socket `local` → `remote`, as
/// `/proc/net/tcp` shows it: (kind, clock ticks until it fires). Kind 2 is the
/// keepalive timer, 0 none.
fn socket_timer(local: SocketAddr, remote: SocketAddr) -> (u32, u64) {
    let (local, remote) = (proc_address(local), proc_address(remote));
    let table = std::fs::read_to_string("/proc/net/tcp").unwrap();
    let line = table
        .lines()
        .find(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            fields.get(1) == Some(&local.as_str()) && fields.get(2) == Some(&remote.as_str())
        })
        .unwrap_or_else(|| panic!("no socket {local} -> {remote} in {table}"));
    let timer = line.split_whitespace().nth(5).unwrap();
    let (kind, when) = timer.split_once(':').unwrap();
    (
        u32::from_str_radix(kind, 16).unwrap(),
        u64::from_str_radix(when, 16).unwrap(),
    )
}

/// Waits (5 s at most) until the node's side of `client`'s connection to `server`
/// runs its keepalive timer, and returns the clock ticks left on it.
async fn keepalive_ticks(server: SocketAddr, client: &TcpStream) -> u64 {
    let local = client.local_addr().unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        // Until the last answer is acknowledged the kernel shows its retransmit
        // timer (kind 1) instead.
        let (kind, ticks) = socket_timer(server, local);
        if kind == 2 {
            return ticks;
        }
        assert!(
            Instant::now() < deadline,
            "no keepalive timer on the node's side of {local}: timer kind {kind}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The kernel probes a silent HTTP or RESP client after 60 s (Linux's default is
/// two hours, and only when asked): a client host that vanished without closing its
/// connection does not hold its slot for ever. The clock ticks left are in
/// `USER_HZ` (100 per second).
#[tokio::test]
async fn client_connections_have_tcp_keepalive_after_60_s() {
    let node = common::start().await;
    let server = node.server.as_ref().unwrap();
    let (http, resp) = (server.http_addr(), server.resp_addr());

    let mut resp_client = TcpStream::connect(resp).await.unwrap();
    resp_client.write_all(b"PING\r\n").await.unwrap();
    let mut pong = [0u8; 7];
    resp_client.read_exact(&mut pong).await.unwrap();
    let ticks = keepalive_ticks(resp, &resp_client).await;
    assert!(
        (5_000..=6_000).contains(&ticks),
        "RESP keepalive in {ticks} ticks"
    );

    let mut http_client = TcpStream::connect(http).await.unwrap();
    let request = format!("GET /health HTTP/1.1\r\nhost: {http}\r\n\r\n");
    http_client.write_all(request.as_bytes()).await.unwrap();
    let mut answer = [0u8; 512];
    let read = http_client.read(&mut answer).await.unwrap();
    assert!(answer[..read].starts_with(b"HTTP/1.1 200"));
    let ticks = keepalive_ticks(http, &http_client).await;
    assert!(
        (5_000..=6_000).contains(&ticks),
        "HTTP keepalive in {ticks} ticks"
    );

    node.stop().await;
}

/// The same on the connections between nodes, at both ends: a peer connection only
/// waits for requests, and one from a host that vanished would hold a slot of the
/// listener's `max_connections` for ever.
#[tokio::test]
async fn peer_connections_have_tcp_keepalive_at_both_ends() {
    let first = common::start().await;
    let first_peer = first.server.as_ref().unwrap().peer_addr();
    let dir = tempfile::tempdir().unwrap();
    let mut config = common::test_config(dir.path());
    config.node_id = Some(2);
    config.seeds = vec![first_peer.to_string()];
    let second = common::start_with(dir, config).await;
    let second_peer = second.server.as_ref().unwrap().peer_addr();

    // Every established connection to the first node's peer port is from the
    // second node (its dialer end) and has a twin at the first node (its listener
    // end); both must run the keepalive timer.
    let deadline = Instant::now() + Duration::from_secs(10);
    let (mut dialer_seen, mut listener_seen) = (false, false);
    while !(dialer_seen && listener_seen) {
        assert!(
            Instant::now() < deadline,
            "keepalive on the peer connections: dialer end {dialer_seen}, listener end {listener_seen}"
        );
        let table = std::fs::read_to_string("/proc/net/tcp").unwrap();
        let port = format!(":{:04X}", first_peer.port());
        for line in table.lines() {
            let fields: Vec<&str> = line.split_whitespace().collect();
            // Field 3 is the state, 01 = established; field 5 the timer.
            if fields.get(3) != Some(&"01") || !fields[5].starts_with("02:") {
                continue;
            }
            dialer_seen |= fields[2].ends_with(&port);
            listener_seen |= fields[1].ends_with(&port);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_ne!(first_peer, second_peer);
    second.stop().await;
    first.stop().await;
}
