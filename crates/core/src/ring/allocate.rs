//! The search behind [`allocate_tokens`](super::allocate_tokens): place a joining
//! node's tokens one by one where they bring the nodes' replicated shares closest to
//! their targets.
//!
//! Why replicated shares and not just primary ones: a token x placed inside the arc
//! (p, t] of node A takes the primary range (p, x] from A, but replica duty moves from
//! other nodes. The keys of (p, x] had replicas A, B, C and now have X, A, B: C loses
//! them. The keys of the arc just before p (owner Z) had Z, A, B and now have Z, X, A:
//! B loses those. Balancing primary shares alone (stealing from A exactly what A has in
//! excess) left the N = 3 shares up to 27 % off in our measurements; this search keeps
//! the shares of replica sets of size 1, 2 and 3 within about 1 %.
//!
//! `effects` lists, for a candidate arc, every share that moves (for each replica-set
//! size N, each region moves from the N-th distinct node of its old walk to the new
//! node). A candidate's score is the change of Σ ((share − goal) / target)² over the
//! nodes involved, minimised over the amount taken; old nodes aim at their target,
//! the new node at (tokens placed / vnodes) × its target, so its tokens take even
//! amounts. Each token goes to the best of `CANDIDATES_PER_TOKEN` arcs drawn from the
//! seed: scoring every arc for every token costs O(vnodes × V) walks per join (about
//! 0.2 s for the 20th node of 256 vnodes) and the sample does nearly as well. Worst
//! deviation from fair, clusters grown to 20 nodes: 0.3 % scoring every arc (10
//! clusters), 0.8 % with 32 candidates and 1.0 % with 16 (30 clusters).

use std::collections::BTreeMap;

use super::{MAX_ARC_FRACTION, RING_SIZE, Ring, mix};
use crate::{NodeId, Token};

/// Replica-set sizes balanced together: 1 (primary) to 3 (DESIGN.md's default N).
const BALANCED_REPLICAS: usize = 3;

/// Arcs scored per token placed.
const CANDIDATES_PER_TOKEN: usize = 16;

/// How a candidate split moves one share: by `constant + per_amount · a` when the new
/// node takes `a` of the arc (as a share of the ring).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
struct Move {
    constant: f64,
    per_amount: f64,
}

/// The ring while a node joins, with every node's replicated shares kept current.
pub(super) struct Allocation {
    /// Sorted, distinct: the ring's tokens plus the new node's placed so far.
    tokens: Vec<u128>,
    owners: Vec<u32>,
    /// The joining node's index (after every node of the ring).
    new_owner: u32,
    /// Replica-set sizes that can be unbalanced: N < nodes after the join.
    active: usize,
    /// Distinct owners on the ring now: walks never look for more.
    present: usize,
    /// `shares[node][n]`: share of the ring whose first n + 1 replicas include node.
    shares: Vec<[f64; BALANCED_REPLICAS]>,
    /// Fair shares after the join: (n + 1) × weight / total weight, at most 1.
    targets: Vec<[f64; BALANCED_REPLICAS]>,
    /// 1 / target²: the score weighs relative deviations.
    weights: Vec<[f64; BALANCED_REPLICAS]>,
    vnodes: usize,
    /// What each token of the new node takes when all take alike.
    even_take: f64,
    seed: u64,
}

impl Allocation {
    /// Requires a non-empty ring, `vnodes ≥ 1` and `new_node` not on the ring.
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
            new_owner: nodes as u32,
            active: BALANCED_REPLICAS.min(nodes),
            present: nodes,
            shares: Vec::new(),
            even_take: targets[nodes][0] / f64::from(vnodes),
            weights: (targets.iter())
                .map(|row| row.map(|target| 1.0 / target.max(f64::EPSILON).powi(2)))
                .collect(),
            targets,
            vnodes: usize::from(vnodes),
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

    /// Replicated shares from scratch: O(V × walk).
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

    /// The share moves of splitting the arc of vnode `j` (see the module doc), summed
    /// per node and n into `bufs.moves`: row r for `bufs.ahead[r]` (the only nodes that
    /// can lose), the last row for the new node.
    fn effects(&self, j: usize, bufs: &mut Bufs) {
        let Bufs {
            moves,
            ahead,
            behind,
        } = bufs;
        let (new, active) = (self.new_owner, self.active);
        // Enough to name the N-th node of every walk below, even past `behind`.
        self.distinct_from(j, (2 * active - 1).min(self.present), ahead);
        moves.clear();
        moves.resize(ahead.len() + 1, [Move::default(); BALANCED_REPLICAS]);
        let gainer = ahead.len();
        // Keys of (p, x]: the new node comes first, the N-th of the old walk drops out.
        for n in 0..active {
            if ahead[..(n + 1).min(ahead.len())].contains(&new) {
                break; // Already a replica of these keys.
            }
            moves[gainer][n].per_amount += 1.0;
            if n < ahead.len() {
                moves[n][n].per_amount -= 1.0;
            }
        }
        // Keys of the arcs before p: their walks meet the new node right after
        // `behind`, the distinct owners from there to p.
        behind.clear();
        let mut u = j;
        for _ in 1..self.tokens.len() {
            u = self.previous(u);
            let owner = self.owners[u];
            if owner == new {
                break; // Walks from here on meet the new node earlier anyway.
            }
            if !behind.contains(&owner) {
                behind.push(owner);
            }
            let seen = behind.len();
            if seen >= active {
                break;
            }
            let len = self.len_share(u);
            // The old walk from u is `behind`, then the rest of `ahead`: its n-th
            // (0-based) node drops out for every n ≥ seen.
            let mut n = seen;
            let mut met_new = false;
            for (row, owner) in ahead.iter().enumerate() {
                if n == active {
                    break;
                }
                if *owner == new {
                    met_new = true; // Already a replica of these keys from here on.
                    break;
                }
                if !behind.contains(owner) {
                    moves[gainer][n].constant += len;
                    moves[row][n].constant -= len;
                    n += 1;
                }
            }
            if !met_new {
                // Fewer nodes than n + 1: nobody drops out, the new node still gains.
                for gained in &mut moves[gainer][n..active] {
                    gained.constant += len;
                }
            }
        }
    }

    /// The best split of the arc of vnode `j` as the token number `placed` (0-based):
    /// (score, amount taken as a share of the ring). Lower scores are better; `None`
    /// when the new node owns the arc or a token does not fit inside it.
    fn score(&self, j: usize, placed: usize, bufs: &mut Bufs) -> Option<(f64, f64)> {
        if self.owners[j] == self.new_owner || self.len_units(j) < 2 {
            return None;
        }
        self.effects(j, bufs);
        // score(a) = Σ weight · ((off + constant + per_amount · a)² − off²).
        let (mut quadratic, mut linear, mut constant) = (0.0, 0.0, 0.0);
        let gainer = bufs.ahead.len();
        for (row, moves) in bufs.moves.iter().enumerate() {
            let node = if row == gainer {
                self.new_owner
            } else {
                bufs.ahead[row]
            } as usize;
            for (n, delta) in moves[..self.active].iter().enumerate() {
                if delta.constant == 0.0 && delta.per_amount == 0.0 {
                    continue;
                }
                let target = self.targets[node][n];
                let goal = if row == gainer {
                    target * (placed + 1) as f64 / self.vnodes as f64
                } else {
                    target
                };
                let weight = self.weights[node][n];
                let off = self.shares[node][n] - goal;
                let base = off + delta.constant;
                quadratic += weight * delta.per_amount * delta.per_amount;
                linear += weight * delta.per_amount * base;
                constant += weight * (base * base - off * off);
            }
        }
        // Between ½ and 2 even takes, at most `MAX_ARC_FRACTION` of the arc.
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

    /// Places the new node's tokens (fewer only when no arc has room) and returns them.
    pub(super) fn run(mut self) -> Vec<Token> {
        let mut bufs = Bufs::default();
        let mut state = self.seed;
        let mut placed = Vec::with_capacity(self.vnodes);
        for pick in 0..self.vnodes {
            let count = self.tokens.len();
            let mut best: Option<(f64, u64, usize, f64)> = None;
            for _ in 0..CANDIDATES_PER_TOKEN {
                state = mix(state);
                let j = (state % count as u64) as usize;
                let Some((score, amount)) = self.score(j, pick, &mut bufs) else {
                    continue;
                };
                let tie = mix(state ^ self.seed);
                if best.is_none_or(|(best_score, best_tie, _, _)| {
                    (score, tie) < (best_score, best_tie)
                }) {
                    best = Some((score, tie, j, amount));
                }
            }
            if best.is_none() {
                // Every arc drawn was the new node's or full: take the first that is not.
                let start = (state % count as u64) as usize;
                best = (0..count)
                    .map(|offset| (start + offset) % count)
                    .find_map(|j| {
                        self.score(j, pick, &mut bufs)
                            .map(|(score, amount)| (score, 0, j, amount))
                    });
            }
            let Some((_, _, j, amount)) = best else {
                break;
            };
            placed.push(Token(self.split(j, amount, &mut bufs)));
        }
        debug_assert!(self.shares_are_current());
        placed
    }

    /// Splits the arc of vnode `j` with a new-node token taking `amount` of the ring
    /// and updates the shares. Returns the token.
    fn split(&mut self, j: usize, amount: f64, bufs: &mut Bufs) -> u128 {
        let len = self.len_units(j);
        assert!(len >= 2);
        // Strictly inside (p, t]: never equal to an existing token.
        let units = ((amount * RING_SIZE) as u128).clamp(1, len - 1);
        let amount = units as f64 / RING_SIZE;
        self.effects(j, bufs);
        let gainer = bufs.ahead.len();
        for (row, moves) in bufs.moves.iter().enumerate() {
            let node = if row == gainer {
                self.new_owner
            } else {
                bufs.ahead[row]
            } as usize;
            for (share, delta) in self.shares[node].iter_mut().zip(moves) {
                *share += delta.constant + delta.per_amount * amount;
            }
        }
        let token = self.tokens[self.previous(j)].wrapping_add(units);
        let at = self.tokens.partition_point(|existing| *existing < token);
        debug_assert!(self.tokens.get(at) != Some(&token));
        self.tokens.insert(at, token);
        self.owners.insert(at, self.new_owner);
        self.present = self.targets.len();
        token
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
    moves: Vec<[Move; BALANCED_REPLICAS]>,
    ahead: Vec<u32>,
    behind: Vec<u32>,
}
