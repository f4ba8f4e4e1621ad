//! The failure detector's verdicts (`Liveness`) and thresholds (`Detector`): a
//! peer's state is a function of how long its heartbeat has not moved.

/// A peer as this node's failure detector sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Liveness {
    Healthy,
    /// Silent past `suspicion_threshold_ms`: still used, with a short timeout.
    Suspicious,
    /// Silent past `down_threshold_ms`: not sent requests; its writes go to hints.
    Down,
    /// Silent past `permanent_failure_threshold_ms`: marked for removal (the
    /// operator's or the topology code's business; still on the ring until then).
    PermanentlyFailed,
}

impl Liveness {
    /// The name `/v1/cluster/status` and `ringkv status` show (DESIGN.md §7).
    pub fn as_str(self) -> &'static str {
        match self {
            Liveness::Healthy => "healthy",
            Liveness::Suspicious => "suspicious",
            Liveness::Down => "down",
            Liveness::PermanentlyFailed => "permanently_failed",
        }
    }

    /// Whether requests may be sent to it.
    pub fn is_up(self) -> bool {
        matches!(self, Liveness::Healthy | Liveness::Suspicious)
    }
}

/// The failure detector's thresholds (config keys `suspicion_threshold_ms`,
/// `down_threshold_ms`, `permanent_failure_threshold_ms`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Detector {
    pub suspicion_ms: u64,
    pub down_ms: u64,
    pub permanent_ms: u64,
}

impl Detector {
    /// DESIGN.md §6 defaults: 5 s, 30 s, 10 min.
    pub const DEFAULT: Detector = Detector {
        suspicion_ms: 5_000,
        down_ms: 30_000,
        permanent_ms: 600_000,
    };

    /// A detector that never suspects anyone (static test clusters).
    pub const NEVER: Detector = Detector {
        suspicion_ms: u64::MAX,
        down_ms: u64::MAX,
        permanent_ms: u64::MAX,
    };

    /// What a peer silent for `silent_ms` is.
    pub fn judge(&self, silent_ms: u64) -> Liveness {
        if silent_ms >= self.permanent_ms {
            Liveness::PermanentlyFailed
        } else if silent_ms >= self.down_ms {
            Liveness::Down
        } else if silent_ms >= self.suspicion_ms {
            Liveness::Suspicious
        } else {
            Liveness::Healthy
        }
    }
}
