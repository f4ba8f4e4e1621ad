//! Hybrid logical clock: wall-clock milliseconds plus a logical counter, so timestamps
//! move forward even when a wall clock stalls or steps back, and a node that has seen
//! a timestamp never issues a smaller one. Pure: the caller passes the wall time in.

use serde::{Deserialize, Serialize};

const LOGICAL_BITS: u32 = 16;
const LOGICAL_MASK: u64 = (1 << LOGICAL_BITS) - 1;

/// A hybrid-logical-clock timestamp: `wall_ms << 16 | logical`. Ordered as an integer.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize,
)]
pub struct Hlc(pub u64);

impl Hlc {
    pub fn new(wall_ms: u64, logical: u16) -> Hlc {
        Hlc((wall_ms << LOGICAL_BITS) | u64::from(logical))
    }

    pub fn wall_ms(self) -> u64 {
        self.0 >> LOGICAL_BITS
    }

    pub fn logical(self) -> u16 {
        (self.0 & LOGICAL_MASK) as u16
    }

    /// The next timestamp after `self`: the logical counter steps, and when it is
    /// exhausted the wall part steps by one millisecond.
    fn successor(self) -> Hlc {
        Hlc(self.0.saturating_add(1))
    }
}

/// One node's clock. Never goes backwards.
#[derive(Debug, Clone, Default)]
pub struct HlcClock {
    last: Hlc,
}

impl HlcClock {
    /// A timestamp greater than every one issued or observed so far, and at least
    /// `wall_ms` (the caller's reading of the wall clock).
    pub fn now(&mut self, wall_ms: u64) -> Hlc {
        let wall = Hlc::new(wall_ms.min(u64::MAX >> LOGICAL_BITS), 0);
        self.last = if wall > self.last {
            wall
        } else {
            self.last.successor()
        };
        self.last
    }

    /// Takes note of a timestamp seen from elsewhere, so later `now` calls exceed it.
    pub fn observe(&mut self, seen: Hlc) {
        self.last = self.last.max(seen);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clock_never_goes_backwards() {
        let mut clock = HlcClock::default();
        let a = clock.now(1_000);
        let b = clock.now(900); // the wall clock stepped back
        let c = clock.now(1_000);
        assert!(a < b && b < c);
        assert_eq!(b.wall_ms(), 1_000);
        assert_eq!(b.logical(), 1);
    }

    #[test]
    fn observed_timestamps_are_exceeded() {
        let mut clock = HlcClock::default();
        clock.observe(Hlc::new(5_000, 7));
        let next = clock.now(1_000);
        assert!(next > Hlc::new(5_000, 7));
    }

    #[test]
    fn logical_overflow_moves_wall_part() {
        let mut clock = HlcClock::default();
        clock.observe(Hlc::new(10, u16::MAX));
        assert_eq!(clock.now(0), Hlc::new(11, 0));
    }
}
