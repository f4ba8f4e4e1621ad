//! Causality: dots, causal contexts and the dotted-version-vector set (DESIGN.md §4).
//!
//! Every write is an event with a unique [`Dot`] `(actor, counter)`, made by the
//! replica that coordinates it. A [`Context`] is a set of dots, kept as a version
//! vector plus a "cloud" of dots that do not (yet) extend it contiguously; it is what
//! a client saw. A [`DvvSet`] holds the values whose dots are not superseded, each
//! under its own dot, plus the context of every event the holder has seen.
//!
//! This is the Riak `dvvset` model (`sync`, `update`, `join` = [`DvvSet::context`])
//! with one deliberate difference: a context can name single dots beyond its
//! version vector. That lets a write's response say exactly "you saw what you read
//! plus your own write" even when the same coordinator accepted a concurrent write
//! in between; a plain version vector would claim that one too and make the next
//! write silently drop it.
//!
//! Merge laws (checked by proptest below): `sync` is commutative, associative and
//! idempotent; a value survives a merge unless the other side has seen its dot and
//! no longer holds it.
//!
//! Actors are per data-directory incarnation, not per node: a node that lost its disk
//! must not reuse counters it issued before (see `ActorId`).

use std::collections::{BTreeMap, BTreeSet};

/// Who issued a dot: one data-directory incarnation of a node. A node that loses its
/// data starts under a new actor id, so it never reissues a dot it issued before.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ActorId(pub u64);

/// One write event: the `counter`-th event issued by `actor`. Counters start at 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Dot {
    pub actor: ActorId,
    pub counter: u64,
}

/// Counters above this are refused when decoded, so `counter + 1` never overflows.
pub const MAX_COUNTER: u64 = 1 << 62;

/// A set of dots: a version vector (every counter `1..=n` of each actor) plus a cloud
/// of single dots beyond it.
///
/// Invariant: counters in the vector are ≥ 1; every cloud dot `(a, n)` has
/// `n > vector[a] + 1` (a dot that extends the vector is folded into it).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Context {
    vector: BTreeMap<ActorId, u64>,
    cloud: BTreeSet<Dot>,
}

impl Context {
    /// Builds a context from parts that may not be compact (decoders, tests).
    /// Zero counters are dropped.
    pub fn from_parts(
        vector: impl IntoIterator<Item = (ActorId, u64)>,
        cloud: impl IntoIterator<Item = Dot>,
    ) -> Context {
        let mut context = Context::default();
        for (actor, counter) in vector {
            if counter > 0 {
                let entry = context.vector.entry(actor).or_insert(0);
                *entry = (*entry).max(counter);
            }
        }
        context
            .cloud
            .extend(cloud.into_iter().filter(|dot| dot.counter > 0));
        context.compact();
        context
    }

    pub fn vector(&self) -> impl Iterator<Item = (ActorId, u64)> + '_ {
        self.vector
            .iter()
            .map(|(actor, counter)| (*actor, *counter))
    }

    pub fn cloud(&self) -> impl Iterator<Item = Dot> + '_ {
        self.cloud.iter().copied()
    }

    pub fn is_empty(&self) -> bool {
        self.vector.is_empty() && self.cloud.is_empty()
    }

    /// Whether the event `dot` is in this context.
    pub fn contains(&self, dot: Dot) -> bool {
        dot.counter <= self.vector.get(&dot.actor).copied().unwrap_or(0)
            || self.cloud.contains(&dot)
    }

    /// The highest counter of `actor` in this context (0 when none).
    pub fn max_counter(&self, actor: ActorId) -> u64 {
        let from_vector = self.vector.get(&actor).copied().unwrap_or(0);
        let from_cloud = self
            .cloud
            .range(
                Dot { actor, counter: 0 }..=Dot {
                    actor,
                    counter: u64::MAX,
                },
            )
            .next_back()
            .map_or(0, |dot| dot.counter);
        from_vector.max(from_cloud)
    }

    /// Adds one event.
    pub fn insert(&mut self, dot: Dot) {
        if dot.counter == 0 || self.contains(dot) {
            return;
        }
        self.cloud.insert(dot);
        self.compact();
    }

    /// Adds every event of `other` (set union).
    pub fn join(&mut self, other: &Context) {
        for (actor, counter) in &other.vector {
            let entry = self.vector.entry(*actor).or_insert(0);
            *entry = (*entry).max(*counter);
        }
        self.cloud.extend(other.cloud.iter().copied());
        self.compact();
    }

    /// Whether every event of `other` is in `self`.
    pub fn includes(&self, other: &Context) -> bool {
        other
            .vector
            .iter()
            .all(|(actor, counter)| self.vector.get(actor).copied().unwrap_or(0) >= *counter)
            && other.cloud.iter().all(|dot| self.contains(*dot))
    }

    /// Restores the invariant: folds cloud dots that extend the vector into it and
    /// drops cloud dots the vector already covers. The cloud is ordered by (actor,
    /// counter), so one pass in order sees each actor's dots from low to high.
    fn compact(&mut self) {
        let cloud = std::mem::take(&mut self.cloud);
        for dot in cloud {
            let top = self.vector.get(&dot.actor).copied().unwrap_or(0);
            if dot.counter <= top {
                continue;
            }
            if dot.counter == top + 1 {
                self.vector.insert(dot.actor, dot.counter);
            } else {
                self.cloud.insert(dot);
            }
        }
    }
}

/// Values under their dots, plus everything the holder has seen.
///
/// Invariant: every value's dot is in `context`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DvvSet<T> {
    context: Context,
    values: BTreeMap<Dot, T>,
}

impl<T> Default for DvvSet<T> {
    fn default() -> Self {
        DvvSet {
            context: Context::default(),
            values: BTreeMap::new(),
        }
    }
}

impl<T: Clone + Ord> DvvSet<T> {
    /// Rebuilds a set from decoded parts.
    ///
    /// # Errors
    /// When a value's dot is not in the context (the invariant), returns that dot.
    pub fn from_parts(context: Context, values: BTreeMap<Dot, T>) -> Result<DvvSet<T>, Dot> {
        if let Some(dot) = values.keys().find(|dot| !context.contains(**dot)) {
            return Err(*dot);
        }
        Ok(DvvSet { context, values })
    }

    /// Everything this set has seen (Riak's `dvvset:join`): handed to clients as the
    /// version of what they read.
    pub fn context(&self) -> &Context {
        &self.context
    }

    /// The values that no write has superseded, by dot.
    pub fn values(&self) -> impl Iterator<Item = (Dot, &T)> {
        self.values.iter().map(|(dot, value)| (*dot, value))
    }

    pub fn len(&self) -> usize {
        self.values.len()
    }

    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }

    /// Merges `other` into `self` (Riak's `dvvset:sync`). A value is kept when both
    /// hold it, or when the side without it has not seen its dot.
    pub fn sync(&mut self, other: &DvvSet<T>) {
        self.values
            .retain(|dot, _| other.values.contains_key(dot) || !other.context.contains(*dot));
        for (dot, value) in &other.values {
            match self.values.get_mut(dot) {
                // One dot is one event, so both copies should be equal; if a bug ever
                // made them differ, keeping the larger keeps `sync` commutative.
                Some(mine) => {
                    if value > mine {
                        *mine = value.clone();
                    }
                }
                None => {
                    if !self.context.contains(*dot) {
                        self.values.insert(*dot, value.clone());
                    }
                }
            }
        }
        self.context.join(&other.context);
    }

    /// Records a new write by `actor` that saw `seen`: it supersedes every value whose
    /// dot is in `seen` and is concurrent with the rest. Returns the new dot, which
    /// is higher than any dot of `actor` in `self` or `seen`.
    pub fn update(&mut self, seen: &Context, actor: ActorId, value: T) -> Dot {
        self.update_above(seen, actor, 0, value)
    }

    /// `update`, with the new dot also above `floor`, and every dot `(actor, 1..=floor)`
    /// added to the context without superseding a value held here.
    ///
    /// Why: once a node forgets a key (tombstone GC), its record no longer says which
    /// counters `actor` issued for the key, and a plain `update` would issue them
    /// again while other replicas or clients still know them: the new write would be
    /// taken for the old, deleted one. `floor` is at least every counter of `actor` in
    /// any record the node forgot; those events are all dead (superseded or
    /// tombstones), so claiming them seen hides nothing alive, and folding them into
    /// the version vector keeps the context one entry, not a cloud of gaps.
    pub fn update_above(&mut self, seen: &Context, actor: ActorId, floor: u64, value: T) -> Dot {
        let top = self
            .context
            .max_counter(actor)
            .max(seen.max_counter(actor))
            .max(floor);
        let dot = Dot {
            actor,
            counter: top.saturating_add(1),
        };
        self.values.retain(|dot, _| !seen.contains(*dot));
        self.context.join(seen);
        if floor > 0 {
            self.context
                .join(&Context::from_parts([(actor, floor)], []));
        }
        self.context.insert(dot);
        self.values.insert(dot, value);
        dot
    }

    /// Rewrites values in place under their dots (the context is untouched, so the
    /// invariant holds). `change` returns whether it changed the value.
    pub fn change_values(&mut self, mut change: impl FnMut(Dot, &mut T) -> bool) -> usize {
        let mut changed = 0;
        for (dot, value) in &mut self.values {
            changed += usize::from(change(*dot, value));
        }
        changed
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn dot(actor: u64, counter: u64) -> Dot {
        Dot {
            actor: ActorId(actor),
            counter,
        }
    }

    /// A set produced by a random history of updates and syncs among three replicas,
    /// so it satisfies every invariant real sets satisfy.
    fn history() -> impl Strategy<Value = Vec<DvvSet<u32>>> {
        // (replica doing it, op: 0 = blind write, 1 = write with its own context,
        //  2 = sync from another replica)
        prop::collection::vec((0usize..3, 0u8..3, 0usize..3), 0..24).prop_map(|ops| {
            let mut replicas = vec![DvvSet::<u32>::default(); 3];
            for (step, (at, op, from)) in ops.into_iter().enumerate() {
                let value = step as u32;
                match op {
                    0 => {
                        replicas[at].update(&Context::default(), ActorId(at as u64), value);
                    }
                    1 => {
                        let seen = replicas[at].context().clone();
                        replicas[at].update(&seen, ActorId(at as u64), value);
                    }
                    _ => {
                        let other = replicas[from].clone();
                        replicas[at].sync(&other);
                    }
                }
            }
            replicas
        })
    }

    fn synced(a: &DvvSet<u32>, b: &DvvSet<u32>) -> DvvSet<u32> {
        let mut out = a.clone();
        out.sync(b);
        out
    }

    proptest! {
        #[test]
        fn merge_is_commutative(r in history()) {
            prop_assert_eq!(synced(&r[0], &r[1]), synced(&r[1], &r[0]));
        }

        #[test]
        fn merge_is_associative(r in history()) {
            let left = synced(&synced(&r[0], &r[1]), &r[2]);
            let right = synced(&r[0], &synced(&r[1], &r[2]));
            prop_assert_eq!(left, right);
        }

        #[test]
        fn merge_is_idempotent(r in history()) {
            prop_assert_eq!(synced(&r[0], &r[0]), r[0].clone());
        }

        /// A write that carries a context removes exactly the values whose dots are in
        /// that context, and every other value survives next to it.
        #[test]
        fn write_with_context_supersedes_exactly_what_it_saw(r in history(), pick in 0usize..3) {
            let seen = r[pick].context().clone();
            let mut target = r[0].clone();
            let before: Vec<Dot> = target.values().map(|(d, _)| d).collect();
            let new = target.update(&seen, ActorId(9), 999);
            for d in before {
                let kept = target.values().any(|(x, _)| x == d);
                prop_assert_eq!(kept, !seen.contains(d));
            }
            prop_assert!(target.values().any(|(d, v)| d == new && *v == 999));
        }

        /// Writes that did not see each other are all kept after any merge.
        #[test]
        fn concurrent_writes_are_all_kept(r in history()) {
            let mut a = r[0].clone();
            let mut b = r[0].clone();
            let da = a.update(&Context::default(), ActorId(7), 1_000);
            let db = b.update(&Context::default(), ActorId(8), 2_000);
            let merged = synced(&a, &b);
            prop_assert!(merged.values().any(|(d, _)| d == da));
            prop_assert!(merged.values().any(|(d, _)| d == db));
        }

        /// A write above a floor gets a dot above the floor, claims every dot of its
        /// actor up to the floor, and drops only what it saw: a blind one keeps every
        /// value, even one of its own actor below the floor.
        #[test]
        fn a_write_above_a_floor_claims_the_floor_and_supersedes_only_what_it_saw(
            r in history(), floor in 0u64..40, pick in 0usize..3,
        ) {
            let mut target = r[0].clone();
            let before: Vec<Dot> = target.values().map(|(d, _)| d).collect();
            let seen = if pick == 0 { Context::default() } else { r[pick].context().clone() };
            let actor = ActorId(1);
            let new = target.update_above(&seen, actor, floor, 999);
            prop_assert!(new.counter > floor);
            prop_assert!(new.counter > r[0].context().max_counter(actor));
            for counter in 1..=floor {
                let claimed = Dot { actor, counter };
                prop_assert!(target.context().contains(claimed));
            }
            for d in before {
                let kept = target.values().any(|(x, _)| x == d);
                prop_assert_eq!(kept, !seen.contains(d));
            }
        }

        /// A value is never dropped by a merge with someone who has not seen it.
        #[test]
        fn merge_only_drops_seen_values(r in history()) {
            let merged = synced(&r[0], &r[1]);
            for (d, _) in r[0].values() {
                let kept = merged.values().any(|(x, _)| x == d);
                let dropped_legally = r[1].context().contains(d) && !r[1].values().any(|(x, _)| x == d);
                prop_assert_eq!(kept, !dropped_legally);
            }
            prop_assert!(merged.context().includes(r[0].context()));
            prop_assert!(merged.context().includes(r[1].context()));
        }
    }

    #[test]
    fn context_folds_contiguous_dots() {
        let mut context = Context::default();
        context.insert(dot(1, 2));
        assert!(context.contains(dot(1, 2)));
        assert!(!context.contains(dot(1, 1)));
        context.insert(dot(1, 1));
        assert_eq!(context.vector().collect::<Vec<_>>(), vec![(ActorId(1), 2)]);
        assert_eq!(context.cloud().count(), 0);
        assert_eq!(context.max_counter(ActorId(1)), 2);
    }

    /// The case a plain version vector gets wrong: the same coordinator accepts a
    /// blind write between a client's read and that client's write.
    #[test]
    fn response_context_does_not_cover_interleaved_write() {
        let mut set = DvvSet::<u32>::default();
        set.update(&Context::default(), ActorId(1), 1);
        let read = set.context().clone();
        let blind = set.update(&Context::default(), ActorId(1), 2);
        let mine = set.update(&read, ActorId(1), 3);
        let mut response = read.clone();
        response.insert(mine);
        assert!(!response.contains(blind));
        // A later write with that response keeps the blind write as a sibling.
        let mut later = set.clone();
        later.update(&response, ActorId(1), 4);
        assert!(later.values().any(|(d, _)| d == blind));
        assert!(!later.values().any(|(d, _)| d == mine));
    }

    #[test]
    fn from_parts_rejects_values_outside_context() {
        let mut values = BTreeMap::new();
        values.insert(dot(1, 3), 0u32);
        let context = Context::from_parts([(ActorId(1), 2)], []);
        assert_eq!(DvvSet::from_parts(context, values), Err(dot(1, 3)));
    }
}
