//! G-Counter and PN-Counter state: one entry per writer lineage, joined by max.
//!
//! Why not `crdts::GCounter` / `PNCounter` (one entry per actor, joined by max):
//! a delete supersedes the state that held an actor's entry, and the actor's next
//! increment would start its entry again from zero; a copy of the old state in a
//! sibling concurrent with the delete still holds the old, larger entry, and the
//! join (max) absorbs every new increment below it. Here an entry is keyed by
//! `(actor, since)` and remembers the dot of the last write that changed it
//! (`last`); the actor keeps adding to its newest entry only while that entry
//! reflects its own latest write to the key (`last` = the actor's highest dot in
//! the record's context), which proves no copy anywhere holds more. Otherwise
//! (its last write was a delete, or its state was deleted) it opens a fresh entry
//! `(actor, dot)`, which no other copy can hold. See ARCHITECTURE.md "CRDTs".

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::{CrdtError, Stamp};

/// What one writer lineage counted: increments (`up`) and decrements (`down`, PN
/// only), and the dot counter of the last write that changed it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct CounterEntry {
    pub last: u64,
    pub up: u64,
    pub down: u64,
}

/// A counter: entries by `(actor, since)` (`since`: the dot counter of the write
/// that opened the entry).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Counter {
    entries: BTreeMap<(u64, u64), CounterEntry>,
}

impl Counter {
    /// The counted value: every entry's increments minus its decrements. Exact in
    /// `i128` for any state that fits in memory.
    pub fn value(&self) -> i128 {
        self.entries.values().fold(0i128, |sum, entry| {
            sum.saturating_add(i128::from(entry.up))
                .saturating_sub(i128::from(entry.down))
        })
    }

    pub fn entries(&self) -> usize {
        self.entries.len()
    }

    /// Adds `delta` for the writer of `stamp`. The value must stay within `i64`, and
    /// the writer's own entry within `u64`; otherwise nothing changes.
    ///
    /// # Errors
    /// `CrdtError::Invalid` naming the limit.
    pub fn increment(&mut self, delta: i64, stamp: &Stamp) -> Result<(), CrdtError> {
        let value = self.value();
        let next = value.saturating_add(i128::from(delta));
        if next > i128::from(i64::MAX) || next < i128::from(i64::MIN) {
            return Err(CrdtError::Invalid(format!(
                "counter overflow: {value} + {delta} leaves the counter range \
                 {}..={} (64-bit signed)",
                i64::MIN,
                i64::MAX
            )));
        }
        let actor = stamp.dot.actor.0;
        let newest = self
            .entries
            .range((actor, 0)..=(actor, u64::MAX))
            .next_back()
            .map(|(key, entry)| (*key, *entry));
        let (key, mut entry) = match newest {
            Some((key, entry)) if stamp.latest_own > 0 && entry.last == stamp.latest_own => {
                (key, entry)
            }
            _ => (
                (actor, stamp.dot.counter),
                CounterEntry {
                    last: 0,
                    up: 0,
                    down: 0,
                },
            ),
        };
        let overflow = || {
            CrdtError::Invalid(format!(
                "counter overflow: this node's share of the counter would pass {} \
                 (64-bit unsigned)",
                u64::MAX
            ))
        };
        if delta >= 0 {
            entry.up = entry
                .up
                .checked_add(delta.unsigned_abs())
                .ok_or_else(overflow)?;
        } else {
            entry.down = entry
                .down
                .checked_add(delta.unsigned_abs())
                .ok_or_else(overflow)?;
        }
        entry.last = stamp.dot.counter;
        self.entries.insert(key, entry);
        Ok(())
    }

    /// Joins another copy: per entry the later one (by `last`; equal `last` means
    /// the same write, ties broken by the counts so the join stays a lattice even
    /// for inputs that break that rule).
    pub fn join(&mut self, other: &Counter) {
        for (key, theirs) in &other.entries {
            let ours = self.entries.entry(*key).or_insert(*theirs);
            if *theirs > *ours {
                *ours = *theirs;
            }
        }
    }

    /// Checks what a decoder cannot: no decrements in a G-Counter, `last` at or
    /// after `since`, counters from 1.
    pub(super) fn validate(&self, grow_only: bool) -> Result<(), String> {
        for ((actor, since), entry) in &self.entries {
            if *since == 0 || entry.last < *since {
                return Err(format!(
                    "counter entry ({actor}, {since}) has last write {} before it opened",
                    entry.last
                ));
            }
            if grow_only && entry.down != 0 {
                return Err(format!("g-counter entry ({actor}, {since}) has decrements"));
            }
        }
        Ok(())
    }
}
