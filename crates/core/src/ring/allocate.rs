//! The greedy behind [`allocate_tokens`](super::allocate_tokens): place a joining
//! node's tokens one by one where they bring every node's replicated share closest to
//! its fair share.
//!
//! A new token x inside the arc (p, t] of vnode j changes the replica sets of the keys
//! in (p, x] (x's node comes first) and of the keys in the few arcs before p whose walk
//! now meets x's node among its first N distinct nodes. For each replica-set size
//! N = 1..=`BALANCED_REPLICAS` each such region moves from one old node (the N-th
//! distinct node of the old walk) to the new node. `effects` lists these moves; the
//! score of a candidate is the change of Σ ((share − target) / target)² over the old
//! nodes, plus how far the new node's gain is from an even 1/vnodes of its target.
//!
//! Old nodes only ever lose share while a node joins, so a score computed earlier can
//! only have been too good: the search is lazy (a heap of scores, recomputed when
//! popped stale), and a split only forces recomputing the candidates around it.

use std::cmp::Ordering;
use std::collections::{BTreeMap, BinaryHeap};

use super::{MAX_ARC_FRACTION, RING_SIZE, Ring, mix};
use crate::{NodeId, Token};

/// Replica-set sizes balanced together: 1 (primary) to 3 (DESIGN.md's default N).
pub(super) const BALANCED_REPLICAS: usize = 3;

/// Walk length (in distinct nodes) past which a split cannot change a candidate: the
/// forward walk of `effects` needs 2·N − 1 distinct nodes, the backward one N.
const WINDOW_DISTINCT: usize = 2 * BALANCED_REPLICAS + 1;

/// One share change of a candidate split: `node`'s share for replica-set size `n + 1`
/// changes by `constant + per_amount · a` when the new node takes `a` of the arc.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Term {
    node: u32,
    n: usize,
    constant: f64,
    per_amount: f64,
}

/// A scored candidate: split the arc ending at `token`, as of pick `stamp`.
#[derive(Debug, Clone, Copy)]
struct Entry {
    score: f64,
    tie: u64,
    token: u128,
    version: u32,
    stamp: usize,
}

impl PartialEq for Entry {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for Entry {}

impl PartialOrd for Entry {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Entry {
    /// `BinaryHeap` pops the greatest: the lowest score, then the lowest tie-breaker.
    fn cmp(&self, other: &Self) -> Ordering {
        (other.score.total_cmp(&self.score))
            .then_with(|| other.tie.cmp(&self.tie))
            .then_with(|| other.token.cmp(&self.token))
    }
}

/// The ring while a node joins, with every node's replicated shares kept current.
pub(super) struct Allocation {
    tokens: Vec<u128>,
    owners: Vec<u32>,
    /// Bumped when a split nearby changes what a candidate would do.
    versions: Vec<u32>,
    new_owner: u32,
    /// Replica-set sizes that can be unbalanced: N < nodes after the join.
    active: usize,
    /// `shares[node][n]`: share of the ring whose first n + 1 replicas include node.
    shares: Vec<[f64; BALANCED_REPLICAS]>,
    targets: Vec<[f64; BALANCED_REPLICAS]>,
    /// What the new node takes of the ring per token when all its tokens are alike.
    even_take: f64,
    seed: u64,
}

impl Allocation {
    /// Requires a non-empty ring and `vnodes ≥ 1`.
    pub(super) fn new(
        ring: &Ring,
        weights: &BTreeMap<NodeId, u16>,
        vnodes: u16,
        seed: u64,
    ) -> Allocation {
        assert!(!ring.is_empty());
        assert!(vnodes > 0);
        let nodes = ring.nodes.len();
        let mut held = vec![0usize; nodes];
        for owner in &ring.owners {
            held[*owner as usize] += 1;
        }
        // A node missing from `weights` weighs what it holds.
        let mut node_weights: Vec<f64> = (ring.nodes.iter().zip(&held))
            .map(|(node, held)| {
                weights
                    .get(node)
                    .map_or(*held as f64, |weight| f64::from(*weight))
            })
            .collect();
        node_weights.push(f64::from(vnodes));
        let total: f64 = node_weights.iter().sum();
        let targets: Vec<[f64; BALANCED_REPLICAS]> = (node_weights.iter())
            .map(|weight| std::array::from_fn(|n| ((n + 1) as f64 * weight / total).min(1.0)))
            .collect();
        let mut allocation = Allocation {
            tokens: ring.tokens.iter().map(|token| token.0).collect(),
            owners: ring.owners.clone(),
            versions: vec![0; ring.tokens.len()],
            new_owner: nodes as u32,
            active: BALANCED_REPLICAS.min(nodes),
            shares: Vec::new(),
            even_take: targets[nodes][0] / f64::from(vnodes),
            targets,
            seed,
        };
        allocation.shares = allocation.computed_shares();
        allocation
    }

    fn previous(&self, index: usize) -> usize {
        if index == 0 {
            self.tokens.len() - 1
        } else {
            index - 1
        }
    }

    /// Length of the arc of vnode `index` in tokens; a lone token's arc is 2^128 − 1.
    fn len_units(&self, index: usize) -> u128 {
        match self.tokens[index].wrapping_sub(self.tokens[self.previous(index)]) {
            0 => u128::MAX,
            len => len,
        }
    }

    fn len_share(&self, index: usize) -> f64 {
        self.len_units(index) as f64 / RING_SIZE
    }

    /// The first `limit` distinct owners walking clockwise from vnode `start`.
    fn distinct_from(&self, start: usize, limit: usize, out: &mut Vec<u32>) {
        out.clear();
        let count = self.tokens.len();
        let mut index = start;
        for _ in 0..count {
            let owner = self.owners[index];
            if !out.contains(&owner) {
                out.push(owner);
                if out.len() == limit {
                    return;
                }
            }
            index = if index + 1 == count { 0 } else { index + 1 };
        }
    }

    /// Replicated shares from scratch: O(vnodes × walk).
    fn computed_shares(&self) -> Vec<[f64; BALANCED_REPLICAS]> {
        let mut shares = vec![[0.0; BALANCED_REPLICAS]; self.targets.len()];
        let mut distinct = Vec::new();
        for index in 0..self.tokens.len() {
            self.distinct_from(index, self.active, &mut distinct);
            let len = self.len_share(index);
            for (position, owner) in distinct.iter().enumerate() {
                for share in &mut shares[*owner as usize][position..self.active] {
                    *share += len;
                }
            }
        }
        shares
    }

    /// The share moves of splitting the arc of vnode `j` (see the module doc), grouped
    /// by (node, n) into `terms`.
    fn effects(
        &self,
        j: usize,
        terms: &mut Vec<Term>,
        ahead: &mut Vec<u32>,
        behind: &mut Vec<u32>,
    ) {
        fn add(terms: &mut Vec<Term>, node: u32, n: usize, constant: f64, per_amount: f64) {
            match terms
                .iter_mut()
                .find(|term| term.node == node && term.n == n)
            {
                Some(term) => {
                    term.constant += constant;
                    term.per_amount += per_amount;
                }
                None => terms.push(Term {
                    node,
                    n,
                    constant,
                    per_amount,
                }),
            }
        }
        terms.clear();
        let (new, active) = (self.new_owner, self.active);
        self.distinct_from(j, 2 * active - 1, ahead);
        // (p, x]: the new node goes first, the N-th of the old walk drops out.
        for n in 0..active {
            if ahead[..(n + 1).min(ahead.len())].contains(&new) {
                continue;
            }
            add(terms, new, n, 0.0, 1.0);
            if let Some(loser) = ahead.get(n) {
                add(terms, *loser, n, 0.0, -1.0);
            }
        }
        // Arcs before p: the new node enters the walk right after their `behind` nodes.
        behind.clear();
        let mut u = j;
        for _ in 1..self.tokens.len() {
            u = self.previous(u);
            let owner = self.owners[u];
            if owner == new {
                break;
            }
            if !behind.contains(&owner) {
                behind.push(owner);
            }
            let seen = behind.len();
            if seen >= active {
                break;
            }
            let len = self.len_share(u);
            let mut rest = ahead.iter().filter(|owner| !behind.contains(owner));
            for n in seen..active {
                // The old walk from u: `behind`, then `rest`; its n-th (0-based) node.
                let loser = rest.next();
                if loser == Some(&new) {
                    break; // Already a replica of these keys.
                }
                add(terms, new, n, len, 0.0);
                if let Some(loser) = loser {
                    add(terms, *loser, n, -len, 0.0);
                }
            }
        }
    }

    /// The best split of the arc of vnode `j` now: (score, amount taken as a share).
    /// `None` when the new node owns the arc or it has no room for a token.
    fn score(&self, j: usize, bufs: &mut Bufs) -> Option<(f64, f64)> {
        if self.owners[j] == self.new_owner || self.len_units(j) < 2 {
            return None;
        }
        self.effects(j, &mut bufs.terms, &mut bufs.ahead, &mut bufs.behind);
        // score(a) = Σ weight · (base + per_amount · a)², minimised over a.
        let (mut quadratic, mut linear, mut constant) = (0.0, 0.0, 0.0);
        for term in &bufs.terms {
            let target = self.targets[term.node as usize][term.n];
            let weight = 1.0 / (target * target);
            let base = if term.node == self.new_owner {
                // An even gain per token: (n + 1) · even_take.
                term.constant - (term.n + 1) as f64 * self.even_take
            } else {
                let surplus = self.shares[term.node as usize][term.n] - target;
                constant -= weight * surplus * surplus;
                surplus + term.constant
            };
            quadratic += weight * term.per_amount * term.per_amount;
            linear += weight * term.per_amount * base;
            constant += weight * base * base;
        }
        let most = (2.0 * self.even_take).min(MAX_ARC_FRACTION * self.len_share(j));
        let least = (0.5 * self.even_take).min(most);
        let amount = if quadratic > 0.0 {
            (-linear / quadratic).clamp(least, most)
        } else {
            least
        };
        Some((
            quadratic * amount * amount + 2.0 * linear * amount + constant,
            amount,
        ))
    }

    fn entry(&self, j: usize, stamp: usize, bufs: &mut Bufs) -> Option<Entry> {
        let (score, _) = self.score(j, bufs)?;
        let token = self.tokens[j];
        Some(Entry {
            score,
            tie: mix(self.seed ^ mix(token as u64) ^ (token >> 64) as u64),
            token,
            version: self.versions[j],
            stamp,
        })
    }

    /// Places `vnodes` tokens (fewer only if no arc has room) and returns them.
    pub(super) fn run(mut self, vnodes: usize) -> Vec<Token> {
        let mut bufs = Bufs::default();
        let mut heap: BinaryHeap<Entry> = (0..self.tokens.len())
            .filter_map(|j| self.entry(j, 0, &mut bufs))
            .collect();
        let mut placed = Vec::with_capacity(vnodes);
        for pick in 0..vnodes {
            let Some(j) = self.best(&mut heap, pick, &mut bufs) else {
                break;
            };
            placed.push(Token(self.split(j, pick, &mut heap, &mut bufs)));
        }
        debug_assert!(self.shares_are_current());
        placed
    }

    /// Pops the best candidate for pick `pick`, recomputing stale scores on the way.
    fn best(&self, heap: &mut BinaryHeap<Entry>, pick: usize, bufs: &mut Bufs) -> Option<usize> {
        // Every round discards an entry or makes one current: bounded by the heap.
        for _ in 0..=heap.len() {
            let entry = heap.pop()?;
            let Ok(j) = self.tokens.binary_search(&entry.token) else {
                continue;
            };
            if self.versions[j] != entry.version {
                continue; // Superseded by the entry pushed after a split nearby.
            }
            if entry.stamp == pick {
                debug_assert_eq!(
                    self.score(j, bufs).map(|(score, _)| score),
                    Some(entry.score)
                );
                return Some(j);
            }
            heap.extend(self.entry(j, pick, bufs));
        }
        None
    }

    /// Splits the arc of vnode `j` with a new-node token, updates the shares and
    /// rescores the candidates whose walks can see the split. Returns the token.
    fn split(
        &mut self,
        j: usize,
        pick: usize,
        heap: &mut BinaryHeap<Entry>,
        bufs: &mut Bufs,
    ) -> u128 {
        let (_, amount) = self.score(j, bufs).expect("the candidate was scored");
        let len = self.len_units(j);
        let units = ((amount * RING_SIZE) as u128).clamp(1, len - 1);
        let amount = units as f64 / RING_SIZE;
        self.effects(j, &mut bufs.terms, &mut bufs.ahead, &mut bufs.behind);
        for term in &bufs.terms {
            self.shares[term.node as usize][term.n] += term.constant + term.per_amount * amount;
        }
        let token = self.tokens[self.previous(j)].wrapping_add(units);
        let at = self.tokens.partition_point(|existing| *existing < token);
        self.tokens.insert(at, token);
        self.owners.insert(at, self.new_owner);
        self.versions.insert(at, 0);
        let count = self.tokens.len();
        let (before, after) = (self.window(at, count - 1), self.window(at, 1));
        for offset in 0..=(before + after).min(count - 1) {
            let index = (at + count - before + offset) % count;
            self.versions[index] = self.versions[index].wrapping_add(1);
            heap.extend(self.entry(index, pick + 1, bufs));
        }
        token
    }

    /// How many steps (`step` = 1 forward, `count − 1` backward) from `at` until
    /// `WINDOW_DISTINCT` distinct owners were passed: no walk reaches further.
    fn window(&self, at: usize, step: usize) -> usize {
        let count = self.tokens.len();
        let mut seen: Vec<u32> = Vec::with_capacity(WINDOW_DISTINCT);
        let mut index = at;
        for steps in 1..count {
            index = (index + step) % count;
            if !seen.contains(&self.owners[index]) {
                seen.push(self.owners[index]);
                if seen.len() == WINDOW_DISTINCT {
                    return steps;
                }
            }
        }
        count - 1
    }

    fn shares_are_current(&self) -> bool {
        let computed = self.computed_shares();
        (computed.iter().flatten().zip(self.shares.iter().flatten()))
            .all(|(a, b)| (a - b).abs() < 1e-9)
    }
}

/// Scratch space reused across candidates.
#[derive(Default)]
struct Bufs {
    terms: Vec<Term>,
    ahead: Vec<u32>,
    behind: Vec<u32>,
}
