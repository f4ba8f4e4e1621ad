//! Striped key locks: the per-key exclusion behind `Engine::apply`.
//!
//! One mutex per key would need a map that grows with the keys; a fixed array of
//! mutexes picked by token is bounded and cheap. Keys sharing a stripe serialize,
//! which only costs throughput, never correctness.

use std::sync::{Mutex, MutexGuard};

use ringkv_core::Token;

/// Number of stripes: far more than concurrent writers, so unrelated keys rarely meet.
pub const STRIPES: usize = 1024;

pub struct Stripes {
    locks: Box<[Mutex<()>]>,
}

impl Stripes {
    pub fn new() -> Stripes {
        Stripes {
            locks: (0..STRIPES).map(|_| Mutex::new(())).collect(),
        }
    }

    /// Locks the stripe of `token` until the guard drops.
    pub fn lock(&self, token: Token) -> MutexGuard<'_, ()> {
        // The low bits of an xxh3 token are as uniform as the high ones.
        let index = (token.0 % STRIPES as u128) as usize;
        // A panic inside `change` poisons the stripe; the guarded data is `()`, and
        // storage was not written, so the lock is still good to use.
        self.locks[index]
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}
