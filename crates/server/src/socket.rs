//! Options every TCP connection of a node gets: its clients' (HTTP, RESP) and its
//! peers' (internal RPC, both ends).

use std::time::Duration;

use socket2::{SockRef, TcpKeepalive};
use tokio::net::TcpStream;

/// Silence after which the kernel starts probing a client.
pub const KEEPALIVE_IDLE: Duration = Duration::from_secs(60);
/// Time between two unanswered probes.
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);
/// Unanswered probes before the connection is dropped.
pub const KEEPALIVE_PROBES: u32 = 3;

/// `TCP_NODELAY`: answers go out when written (without it, a response written in
/// two parts waits for the client's delayed ACK of the first).
///
/// TCP keepalive: a client or peer whose host vanished without closing its
/// connection (a crash, a power cut, a NAT that forgot it) would hold its
/// connection slot for ever, as RESP clients may stay idle as long as they like and
/// a peer connection waits for requests; probed, it is dropped after about
/// `KEEPALIVE_IDLE` + `KEEPALIVE_PROBES` × `KEEPALIVE_INTERVAL` (90 s). Redis does
/// the same (`tcp-keepalive`, 300 s).
pub fn configure(stream: &TcpStream, listener: &'static str) {
    if let Err(error) = stream.set_nodelay(true) {
        tracing::debug!("{listener}: cannot set TCP_NODELAY: {error}");
    }
    let keepalive = TcpKeepalive::new()
        .with_time(KEEPALIVE_IDLE)
        .with_interval(KEEPALIVE_INTERVAL)
        .with_retries(KEEPALIVE_PROBES);
    if let Err(error) = SockRef::from(stream).set_tcp_keepalive(&keepalive) {
        tracing::debug!("{listener}: cannot set TCP keepalive: {error}");
    }
}
