//! Wall time as the node sees it. Production passes the system clock (in `server`);
//! tests and the simulator pass clocks they move by hand.

use std::sync::atomic::{AtomicU64, Ordering};

/// Wall-clock time in milliseconds since the Unix epoch. May jump (NTP, skew): only
/// TTL expiry and HLC timestamps read it, and the HLC never goes backwards.
pub trait Clock: Send + Sync + 'static {
    fn now_ms(&self) -> u64;

    /// Milliseconds on a clock that never jumps (from an arbitrary origin), for
    /// measuring intervals such as a peer's silence. Defaults to `now_ms` for clocks
    /// that only move forward by hand.
    fn monotonic_ms(&self) -> u64 {
        self.now_ms()
    }
}

/// A clock that moves only when told to.
#[derive(Debug, Default)]
pub struct ManualClock {
    now_ms: AtomicU64,
}

impl ManualClock {
    pub fn new(now_ms: u64) -> ManualClock {
        ManualClock {
            now_ms: AtomicU64::new(now_ms),
        }
    }

    pub fn set(&self, now_ms: u64) {
        self.now_ms.store(now_ms, Ordering::SeqCst);
    }

    pub fn advance(&self, by_ms: u64) {
        self.now_ms.fetch_add(by_ms, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now_ms(&self) -> u64 {
        self.now_ms.load(Ordering::SeqCst)
    }
}
