//! The consistent-hash ring (DESIGN.md §5): which nodes hold a token, and where a
//! joining node puts its own tokens.
//!
//! Every node owns `vnodes` tokens; a token `t` owns the arc `(previous token, t]`,
//! wrapping around 2^128. A key's preference list is the walk clockwise from its token,
//! keeping distinct physical nodes: the first N replicate it, the rest are the
//! fallbacks of the sloppy quorum.
//!
//! Why tokens are *allocated* and not hashed: a node's share of the keys is the sum of
//! its arcs, and with random tokens that sum is noisy: in 179 of 200 random clusters
//! of 20 nodes × 256 tokens some node's primary share was more than 10 % off fair, and
//! the noise only shrinks with the square root of `vnodes`. So a joining node
//! (`allocate_tokens`) looks at the ring as it is and takes from the existing nodes
//! exactly their surplus over the fair share after the join, token by token, choosing
//! the splits so that the shares of replica sets (N = 1, 2, 3), not only of primary
//! ranges, come out even: within about 1 % however many nodes join. Existing tokens
//! never move, so a join only moves keys *to* the new node, never between old ones
//! (minimal movement).
//!
//! Not handled here: a node leaving hands its arcs to its successors, which then hold
//! more than their share until tokens are re-allocated.
//!
//! Everything here is deterministic: the only randomness is the `seed` argument.

use std::collections::{BTreeMap, BTreeSet};

use crate::{Member, NodeId, Token, TokenRange};
use allocate::Allocation;

mod allocate;

/// 2^128 as `f64`: the size of the token space, to turn arc lengths into shares.
const RING_SIZE: f64 = 340_282_366_920_938_463_463_374_607_431_768_211_456.0;

/// The largest fraction of an existing arc that one new token takes: the old owner
/// keeps at least a tenth, so tokens do not crowd and arcs stay comparable in size.
const MAX_ARC_FRACTION: f64 = 0.9;

/// The ring of vnode tokens, built from the members' tokens.
///
/// Kept as parallel sorted vectors (tokens, owner indexes) rather than one
/// `Vec<(Token, NodeId)>`: the binary search of every request touches only tokens.
///
/// Invariant: `tokens` is sorted and free of duplicates; `owners[i]` indexes `nodes`
/// (sorted, distinct) and owns `tokens[i]`; every node in `nodes` owns a token.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Ring {
    tokens: Vec<Token>,
    owners: Vec<u32>,
    nodes: Vec<NodeId>,
}

/// The nodes of a key's token in walk order (clockwise from the token): the first N
/// distinct nodes are its replicas, all other nodes follow as fallbacks.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PreferenceList {
    /// Every node of the ring once, in walk order.
    nodes: Vec<NodeId>,
    /// How many of `nodes` are replicas: min(N, nodes).
    replica_count: usize,
}

impl PreferenceList {
    /// The first min(N, nodes) distinct nodes of the walk: the nodes that hold the key.
    pub fn replicas(&self) -> &[NodeId] {
        &self.nodes[..self.replica_count]
    }

    /// The other nodes of the ring, in walk order: where a write goes (with a hint)
    /// when replicas are down.
    pub fn fallbacks(&self) -> &[NodeId] {
        &self.nodes[self.replica_count..]
    }

    /// Replicas then fallbacks: every node of the ring exactly once.
    pub fn nodes(&self) -> &[NodeId] {
        &self.nodes
    }

    /// Whether `node` is one of the replicas.
    pub fn is_replica(&self, node: NodeId) -> bool {
        self.replicas().contains(&node)
    }
}

impl Ring {
    /// The ring of these nodes and their tokens.
    ///
    /// Two nodes claiming one token is a conflict every node must settle the same way
    /// without talking: the lower `NodeId` keeps the token, the other loses that vnode.
    /// A node without tokens (or whose tokens were all lost that way) is not on the
    /// ring. The same node listed twice holds the union of its tokens.
    pub fn new(members: impl IntoIterator<Item = (NodeId, Vec<Token>)>) -> Ring {
        let mut vnodes: Vec<(Token, NodeId)> = members
            .into_iter()
            .flat_map(|(node, tokens)| tokens.into_iter().map(move |token| (token, node)))
            .collect();
        // Sorting by (token, node) puts the lowest node first among equal tokens, and
        // `dedup_by_key` keeps the first of each run.
        vnodes.sort_unstable();
        vnodes.dedup_by_key(|(token, _)| *token);
        let nodes: Vec<NodeId> = vnodes
            .iter()
            .map(|(_, node)| *node)
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        assert!(u32::try_from(nodes.len()).is_ok());
        let owners = vnodes
            .iter()
            .map(|(_, node)| {
                let index = nodes.binary_search(node).expect("nodes holds every owner");
                index as u32
            })
            .collect();
        let ring = Ring {
            tokens: vnodes.into_iter().map(|(token, _)| token).collect(),
            owners,
            nodes,
        };
        debug_assert!(ring.tokens.windows(2).all(|pair| pair[0] < pair[1]));
        ring
    }

    /// The current ring: the members that serve reads of their ranges now
    /// (`MemberState::in_current_ring`; left ones hold no tokens).
    pub fn from_members(members: &[Member]) -> Ring {
        Ring::new(
            members
                .iter()
                .filter(|member| member.state.in_current_ring())
                .map(|member| (member.id, member.tokens.clone())),
        )
    }

    /// The other ring writes must reach while a join or leave is under way: the
    /// next ring while the changing node streams, the previous one once its data
    /// moved (`MemberState::in_next_ring`); `None` when no change is under way
    /// (it equals the current ring).
    pub fn next_from_members(members: &[Member]) -> Option<Ring> {
        members
            .iter()
            .any(|member| member.state.is_changing())
            .then(|| {
                Ring::new(
                    members
                        .iter()
                        .filter(|member| member.state.in_next_ring())
                        .map(|member| (member.id, member.tokens.clone())),
                )
            })
    }

    /// The number of physical nodes on the ring.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Whether no node holds a token.
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// The physical nodes, sorted, each once.
    pub fn nodes(&self) -> impl ExactSizeIterator<Item = NodeId> + '_ {
        self.nodes.iter().copied()
    }

    /// Every vnode as (token, owner), in token order.
    pub fn vnodes(&self) -> impl ExactSizeIterator<Item = (Token, NodeId)> + '_ {
        self.tokens
            .iter()
            .zip(&self.owners)
            .map(|(token, owner)| (*token, self.nodes[*owner as usize]))
    }

    /// The tokens `node` holds, sorted (empty when it is not on the ring).
    pub fn tokens_of(&self, node: NodeId) -> Vec<Token> {
        self.vnodes()
            .filter(|(_, owner)| *owner == node)
            .map(|(token, _)| token)
            .collect()
    }

    /// The index of the vnode owning `token`: the first vnode token ≥ `token`, wrapping
    /// to the first vnode. Requires a non-empty ring.
    fn first_vnode(&self, token: Token) -> usize {
        debug_assert!(!self.tokens.is_empty());
        let index = self.tokens.partition_point(|vnode| *vnode < token);
        if index == self.tokens.len() { 0 } else { index }
    }

    /// The preference list of `token` for replication factor `n`: the walk clockwise
    /// from the first vnode token ≥ `token` (wrapping), keeping distinct nodes. The
    /// first min(n, nodes) are the replicas, every other node follows as a fallback.
    /// Empty for an empty ring.
    ///
    /// Cost: a binary search plus a walk until every node was seen (about
    /// nodes × ln(nodes) vnodes when tokens interleave well).
    pub fn preference_list(&self, token: Token, n: usize) -> PreferenceList {
        if self.tokens.is_empty() {
            return PreferenceList::default();
        }
        let total = self.nodes.len();
        let words = total.div_ceil(64);
        let mut seen_inline = [0u64; 4];
        let mut seen_heap = Vec::new();
        let seen: &mut [u64] = if words <= seen_inline.len() {
            &mut seen_inline[..words]
        } else {
            seen_heap.resize(words, 0);
            &mut seen_heap
        };
        let mut nodes = Vec::with_capacity(total);
        let start = self.first_vnode(token);
        for index in (start..self.tokens.len()).chain(0..start) {
            let owner = self.owners[index] as usize;
            let (word, bit) = (owner / 64, 1u64 << (owner % 64));
            if seen[word] & bit == 0 {
                seen[word] |= bit;
                nodes.push(self.nodes[owner]);
                if nodes.len() == total {
                    break;
                }
            }
        }
        debug_assert_eq!(nodes.len(), total);
        PreferenceList {
            replica_count: n.min(nodes.len()),
            nodes,
        }
    }

    /// The primary owner of `token` (its first replica); `None` for an empty ring.
    pub fn owner(&self, token: Token) -> Option<NodeId> {
        if self.tokens.is_empty() {
            return None;
        }
        let owner = self.owners[self.first_vnode(token)];
        Some(self.nodes[owner as usize])
    }

    /// Whether `node` (an index into `nodes`) is among the first `n` distinct nodes of
    /// the walk starting at vnode `start`. `distinct` is scratch space.
    fn is_among_first(&self, start: usize, n: usize, node: u32, distinct: &mut Vec<u32>) -> bool {
        distinct.clear();
        for index in (start..self.tokens.len()).chain(0..start) {
            let owner = self.owners[index];
            if owner == node {
                return true;
            }
            if !distinct.contains(&owner) {
                distinct.push(owner);
                if distinct.len() == n {
                    return false;
                }
            }
        }
        false
    }

    /// The token ranges for which `node` is one of the first `n` replicas: sorted,
    /// merged where adjacent, none wrapping (an arc across 2^128 → 0 comes back as two
    /// ranges). Empty when `node` is not on the ring or `n` is 0.
    pub fn ranges(&self, node: NodeId, n: usize) -> Vec<TokenRange> {
        let Ok(target) = self.nodes.binary_search(&node) else {
            return Vec::new();
        };
        if n == 0 {
            return Vec::new();
        }
        if n >= self.nodes.len() {
            return vec![TokenRange::FULL];
        }
        let target = target as u32;
        let mut ranges: Vec<TokenRange> = Vec::new();
        let mut push = |start: u128, end: u128| {
            debug_assert!(start <= end);
            if let Some(last) = ranges.last_mut()
                && last.end.0.checked_add(1) == Some(start)
            {
                last.end = Token(end);
            } else {
                ranges.push(TokenRange {
                    start: Token(start),
                    end: Token(end),
                });
            }
        };
        let last = self.tokens.len() - 1;
        let mut scratch = Vec::with_capacity(n);
        let holds_first = self.is_among_first(0, n, target, &mut scratch);
        // Vnode 0 owns (tokens[last], 2^128) and [0, tokens[0]]: the low part first.
        if holds_first {
            push(0, self.tokens[0].0);
        }
        for index in 1..=last {
            if self.is_among_first(index, n, target, &mut scratch) {
                push(self.tokens[index - 1].0 + 1, self.tokens[index].0);
            }
        }
        if holds_first && self.tokens[last] < Token::MAX {
            push(self.tokens[last].0 + 1, u128::MAX);
        }
        ranges
    }

    /// Every vnode arc for which `node` is one of the first `n` replicas, each with
    /// its replicas, not merged (so two nodes with the same ring agree on every arc
    /// they share: the unit of anti-entropy). The arc across 2^128 → 0 comes back as
    /// two arcs with the same replicas. Empty when `node` is not on the ring.
    pub fn arcs(&self, node: NodeId, n: usize) -> Vec<(TokenRange, Vec<NodeId>)> {
        if self.nodes.binary_search(&node).is_err() || n == 0 {
            return Vec::new();
        }
        let mut arcs = Vec::new();
        let last = self.tokens.len() - 1;
        let range = |start: u128, end: u128| TokenRange {
            start: Token(start),
            end: Token(end),
        };
        for index in 0..=last {
            let list = self.preference_list(self.tokens[index], n);
            if !list.is_replica(node) {
                continue;
            }
            let replicas = list.replicas().to_vec();
            if index == 0 {
                arcs.push((range(0, self.tokens[0].0), replicas.clone()));
                if self.tokens[last] < Token::MAX {
                    arcs.push((range(self.tokens[last].0 + 1, u128::MAX), replicas));
                }
            } else if self.tokens[index - 1] < self.tokens[index] {
                arcs.push((
                    range(self.tokens[index - 1].0 + 1, self.tokens[index].0),
                    replicas,
                ));
            }
        }
        arcs.sort_by_key(|(range, _)| range.start);
        arcs
    }

    /// The tokens `node` replicates (as one of the first `n`) on this ring but not on
    /// `next`: where the copies a change gave away are. Sorted, merged where
    /// adjacent; empty when `node` keeps everything it had (as in any cluster of at
    /// most `n` nodes).
    pub fn moved_away(&self, next: &Ring, node: NodeId, n: usize) -> Vec<TokenRange> {
        let mut moved: Vec<TokenRange> = Vec::new();
        for range in self.ranges(node, n) {
            for (piece, replicas) in next.pieces(range, n) {
                if replicas.contains(&node) {
                    continue;
                }
                match moved.last_mut() {
                    Some(last) if last.end.0.checked_add(1) == Some(piece.start.0) => {
                        last.end = piece.end;
                    }
                    _ => moved.push(piece),
                }
            }
        }
        moved
    }

    /// `range` cut where this ring's vnode arcs end, each piece with its first `n`
    /// replicas here: how a range of another ring (the next one, during a join or a
    /// leave) maps onto this one. Empty for an empty ring.
    pub fn pieces(&self, range: TokenRange, n: usize) -> Vec<(TokenRange, Vec<NodeId>)> {
        if self.tokens.is_empty() || range.start > range.end {
            return Vec::new();
        }
        let mut pieces = Vec::new();
        let mut start = range.start;
        // The vnode tokens inside the range end pieces; the last piece runs to the
        // range's end.
        let first = self.tokens.partition_point(|token| *token < range.start);
        for token in self.tokens[first..]
            .iter()
            .take_while(|token| **token <= range.end)
        {
            pieces.push(TokenRange { start, end: *token });
            match token.0.checked_add(1) {
                Some(next) => start = Token(next),
                None => break,
            }
        }
        if pieces.last().is_none_or(|last| last.end < range.end) {
            pieces.push(TokenRange {
                start,
                end: range.end,
            });
        }
        pieces
            .into_iter()
            .map(|piece| {
                let replicas = self.preference_list(piece.end, n).replicas().to_vec();
                (piece, replicas)
            })
            .collect()
    }

    /// Each node's share of the token space as primary owner (the sum of its arcs over
    /// 2^128). The shares sum to 1 (up to rounding); empty for an empty ring.
    pub fn ownership(&self) -> BTreeMap<NodeId, f64> {
        let mut shares = vec![0.0; self.nodes.len()];
        let count = self.tokens.len();
        for (index, owner) in self.owners.iter().enumerate() {
            let previous = self.tokens[if index == 0 { count - 1 } else { index - 1 }];
            shares[*owner as usize] += match self.tokens[index].0.wrapping_sub(previous.0) {
                0 => 1.0, // A lone token owns the whole ring.
                len => len as f64 / RING_SIZE,
            };
        }
        self.nodes.iter().copied().zip(shares).collect()
    }
}

/// The tokens a joining node `new_node` takes, sorted; `vnodes` of them.
///
/// `weights` are the vnodes (weights) of the current members; a node on the ring
/// missing from it weighs as many tokens as it holds. A node's fair share after the
/// join is its weight over the total weight (`vnodes` counts for `new_node`) of the
/// primary ranges, and N times that of the replica ranges.
///
/// * Empty ring: `vnodes` evenly spaced tokens, rotated by a seed-derived offset.
/// * Otherwise the existing nodes give what they hold beyond their fair share after
///   the join, token by token. Each token splits an existing arc (p, t] of some node A
///   at x: the new node gets (p, x], A keeps (x, t]. The token takes between ½ and 2 ×
///   an even 1/vnodes of the new node's share, at most 90 % of the arc, and goes to
///   the arc (the best of 16 drawn from the seed) that brings the shares of replica
///   sets of size 1, 2 and 3 closest to fair at once; see `ring/allocate.rs` for why
///   primary balance alone is not enough. Measured (`ring/tests.rs`): growing to 20
///   or 40 equal nodes, every node's share stays within about 1 % of fair for
///   N = 1, 2 and 3. N > 3 is not optimised (about ±12 % at N = 5).
///
/// Guarantees: the tokens are distinct and never equal an existing token; existing
/// tokens never move, so the join only moves keys to `new_node`; the same (ring,
/// weights, new_node, vnodes, seed) give the same tokens. If `new_node` is already on
/// the ring its tokens are returned unchanged (a node keeps its tokens). Fewer than
/// `vnodes` tokens come back only when the ring has no free token left.
///
/// Cost: O(vnodes × (16 short walks + V)) for V vnodes on the ring: about 1 ms for
/// the 20th node of 256 vnodes each (release build).
pub fn allocate_tokens(
    ring: &Ring,
    weights: &BTreeMap<NodeId, u16>,
    new_node: NodeId,
    vnodes: u16,
    seed: u64,
) -> Vec<Token> {
    if ring.nodes.binary_search(&new_node).is_ok() {
        return ring.tokens_of(new_node);
    }
    let count = usize::from(vnodes);
    if count == 0 {
        return Vec::new();
    }
    if ring.is_empty() {
        return evenly_spaced(count, seed);
    }
    let mut tokens = Allocation::new(ring, weights, vnodes, seed).run();
    fill(ring, &mut tokens, count);
    tokens.sort_unstable();
    debug_assert!(tokens.windows(2).all(|pair| pair[0] < pair[1]));
    debug_assert!(
        tokens
            .iter()
            .all(|token| ring.tokens.binary_search(token).is_err())
    );
    tokens
}

/// Tops `tokens` up to `count` when arcs had no room (degenerate rings only): midpoints
/// of the largest gaps between all tokens, old and new.
fn fill(ring: &Ring, tokens: &mut Vec<Token>, count: usize) {
    if tokens.len() >= count {
        return;
    }
    let mut all: BTreeSet<u128> = ring
        .tokens
        .iter()
        .chain(tokens.iter())
        .map(|token| token.0)
        .collect();
    for _ in tokens.len()..count {
        let (Some(first), Some(last)) = (all.first().copied(), all.last().copied()) else {
            break;
        };
        let wrap_gap = (last, first.wrapping_sub(last));
        let widest = all
            .iter()
            .zip(all.iter().skip(1))
            .map(|(a, b)| (*a, b - a))
            .chain(std::iter::once(wrap_gap))
            .max_by_key(|(start, gap)| (*gap, std::cmp::Reverse(*start)));
        let Some((start, gap)) = widest.filter(|(_, gap)| *gap >= 2 || all.len() == 1) else {
            break;
        };
        let gap = if all.len() == 1 { u128::MAX } else { gap };
        let token = start.wrapping_add(gap / 2);
        all.insert(token);
        tokens.push(Token(token));
    }
}

/// `count` (≥ 1) evenly spaced tokens, rotated by an offset drawn from `seed`.
fn evenly_spaced(count: usize, seed: u64) -> Vec<Token> {
    let step = u128::MAX / count as u128;
    let offset = ((u128::from(mix(seed)) << 64) | u128::from(mix(!seed))) % step;
    (0..count as u128)
        .map(|k| Token(offset + k * step))
        .collect()
}

/// SplitMix64's finalizer: a well-mixed 64-bit value from `x`.
fn mix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests;
