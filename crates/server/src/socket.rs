//! Options every TCP connection of a node gets: its clients' (HTTP, RESP) and its
//! peers' (internal RPC, both ends).

use std::time::{Duration, Instant};

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

/// Least time between two warnings that a listener is at its connection limit.
const LIMIT_WARNING_EVERY: Duration = Duration::from_secs(10);

/// A listener at its connection limit: counts every wait for a free slot in
/// `counter`, and says so in the log at most every `LIMIT_WARNING_EVERY` (a storm
/// of connections must not become a storm of log lines).
pub struct AtLimit {
    listener: &'static str,
    counter: &'static str,
    limit: usize,
    warned: Option<Instant>,
}

impl AtLimit {
    pub fn new(listener: &'static str, counter: &'static str, limit: usize) -> AtLimit {
        AtLimit {
            listener,
            counter,
            limit,
            warned: None,
        }
    }

    /// A new client must wait for a connection to close.
    pub fn wait_begins(&mut self) {
        metrics::counter!(self.counter).increment(1);
        if self
            .warned
            .is_none_or(|at| at.elapsed() >= LIMIT_WARNING_EVERY)
        {
            self.warned = Some(Instant::now());
            tracing::warn!(
                "{} {} clients connected; new ones wait (said at most every {} s)",
                self.limit,
                self.listener,
                LIMIT_WARNING_EVERY.as_secs()
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_listener_at_its_limit_warns_once_per_interval() {
        let mut at_limit = AtLimit::new("HTTP", "ringkv_test_waits_total", 1);
        at_limit.wait_begins();
        let first = at_limit.warned.expect("the first wait warns");
        at_limit.wait_begins();
        assert_eq!(at_limit.warned, Some(first), "warned again at once");
        // Once the interval passed, the next wait warns again.
        let Some(long_ago) = first.checked_sub(LIMIT_WARNING_EVERY) else {
            return; // The machine booted less than 10 s ago: nothing earlier exists.
        };
        at_limit.warned = Some(long_ago);
        at_limit.wait_begins();
        assert!(at_limit.warned.is_some_and(|at| at >= first));
    }
}
