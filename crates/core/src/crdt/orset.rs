//! OR-Set state, add-wins, without tombstones: Riak's ORSWOT (riak_dt_orswot).
//!
//! Each element carries the dots of the adds that put it there (at most one per
//! actor), and the set carries a causal context (`clock`, a version vector) of
//! every add it has seen. A remove drops the element and its dots; the clock still
//! covers them, so a merge with a copy that holds the element and no newer dot
//! drops it too, while an add the remover never saw (a dot beyond its clock)
//! survives: add wins. Removed elements leave nothing behind but the clock, which
//! has one entry per actor that ever added.
//!
//! The dots are the store's own DVV dots of the writes (`Stamp::dot`), issued once
//! per key by construction (ARCHITECTURE.md, "a dot is issued once"), so two adds
//! never share one even across deletes and restarts.
//!
//! Why not `crdts::Orswot`: it keeps elements and deferred removes in `HashMap`s,
//! so equal states encode to different bytes (100 of 100 pairs of equal 20-element
//! sets in a probe with crdts 7.3.2 and postcard): Merkle digests of equal records
//! would differ between replicas and anti-entropy would never settle, and the
//! simulator would lose determinism. This is the same algorithm over `BTreeMap`s.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::dvv::Dot;

/// Dots by actor: one per actor (a later add by the same actor replaces its dot).
type Dots = BTreeMap<u64, u64>;

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct OrSet {
    clock: BTreeMap<u64, u64>,
    entries: BTreeMap<String, Dots>,
}

fn covers(clock: &BTreeMap<u64, u64>, actor: u64, counter: u64) -> bool {
    clock.get(&actor).is_some_and(|top| *top >= counter)
}

impl OrSet {
    pub fn contains(&self, element: &str) -> bool {
        self.entries.contains_key(element)
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The dots of the adds that hold `element` in the set.
    pub fn dots(&self, element: &str) -> impl Iterator<Item = Dot> + '_ {
        self.entries.get(element).into_iter().flat_map(|dots| {
            dots.iter().map(|(actor, counter)| Dot {
                actor: crate::dvv::ActorId(*actor),
                counter: *counter,
            })
        })
    }

    /// The elements, sorted.
    pub fn elements(&self) -> impl Iterator<Item = &str> {
        self.entries.keys().map(String::as_str)
    }

    /// How many elements `apply(add, remove, ..)` would leave.
    pub fn len_after(&self, add: &[String], remove: &[String]) -> usize {
        let removed = remove.iter().filter(|e| self.contains(e)).count();
        let added = add.iter().filter(|e| !self.contains(e)).count();
        self.len() - removed + added
    }

    /// Removes `remove` (what this copy observed of them) and adds `add` under
    /// `dot`, which must be beyond every dot of its actor this copy has seen.
    pub fn apply(&mut self, add: &[String], remove: &[String], dot: Dot) {
        for element in remove {
            self.entries.remove(element);
        }
        if add.is_empty() {
            return;
        }
        debug_assert!(!covers(&self.clock, dot.actor.0, dot.counter));
        for element in add {
            self.entries
                .insert(element.clone(), Dots::from([(dot.actor.0, dot.counter)]));
        }
        let top = self.clock.entry(dot.actor.0).or_insert(0);
        *top = (*top).max(dot.counter);
    }

    /// Joins another copy (riak_dt_orswot's merge): an element keeps the dots both
    /// copies hold, and those one holds that the other has not seen; an element left
    /// without dots is gone.
    pub fn join(&mut self, other: &OrSet) {
        let mut joined: BTreeMap<String, Dots> = BTreeMap::new();
        for (element, ours) in &self.entries {
            let theirs = other.entries.get(element);
            let mut dots = Dots::new();
            for (&actor, &counter) in ours {
                let shared = theirs.is_some_and(|t| t.get(&actor) == Some(&counter));
                if shared || !covers(&other.clock, actor, counter) {
                    dots.insert(actor, counter);
                }
            }
            if let Some(theirs) = theirs {
                for (&actor, &counter) in theirs {
                    if !covers(&self.clock, actor, counter) {
                        let kept = dots.entry(actor).or_insert(counter);
                        *kept = (*kept).max(counter);
                    }
                }
            }
            if !dots.is_empty() {
                joined.insert(element.clone(), dots);
            }
        }
        for (element, theirs) in &other.entries {
            if self.entries.contains_key(element) {
                continue;
            }
            let dots: Dots = theirs
                .iter()
                .filter(|(actor, counter)| !covers(&self.clock, **actor, **counter))
                .map(|(actor, counter)| (*actor, *counter))
                .collect();
            if !dots.is_empty() {
                joined.insert(element.clone(), dots);
            }
        }
        self.entries = joined;
        for (&actor, &counter) in &other.clock {
            let top = self.clock.entry(actor).or_insert(0);
            *top = (*top).max(counter);
        }
    }

    /// Checks what a decoder cannot: every element has a dot, and every dot is
    /// covered by the clock.
    pub(super) fn validate(&self) -> Result<(), String> {
        for (element, dots) in &self.entries {
            if dots.is_empty() {
                return Err(format!("or-set element {element:?} has no dot"));
            }
            if let Some((actor, counter)) = dots
                .iter()
                .find(|(actor, counter)| **counter == 0 || !covers(&self.clock, **actor, **counter))
            {
                return Err(format!(
                    "or-set dot ({actor}, {counter}) of {element:?} is outside its clock"
                ));
            }
        }
        Ok(())
    }
}
