//! Merkle trees for anti-entropy (DESIGN.md §6): one small tree per token range a
//! node replicates, whose leaves split the range into `LEAVES` equal sub-ranges.
//!
//! A leaf's hash is the XOR of the digests of the keys in it (`key_digest`: key and
//! record bytes), and every inner hash is the XOR of its children's. So a write
//! updates its tree in O(1) without reading anything else: XOR out the digest of the
//! record it replaced and XOR in the new one (`RangeTree::toggle`, twice); order
//! does not matter. Two replicas holding the same records in a range have the same
//! tree; where they differ, only the differing children and leaves need be compared,
//! and only the keys of differing leaves exchanged.
//!
//! Shape: root ← `FANOUT` children ← `FANOUT` leaves each (`LEAVES` = 256).

use crate::{Token, TokenRange};

/// Children per inner node.
pub const FANOUT: usize = 16;
/// Leaves per tree.
pub const LEAVES: usize = FANOUT * FANOUT;

/// What a key contributes to its leaf: a hash of its bytes and of its stored record
/// (`Record::encode`, deterministic). An absent key contributes nothing.
pub fn key_digest(key: &[u8], record: &[u8]) -> u64 {
    let mut hasher = xxhash_rust::xxh3::Xxh3::new();
    hasher.update(&(key.len() as u64).to_le_bytes());
    hasher.update(key);
    hasher.update(record);
    hasher.digest()
}

/// The tree of one token range.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RangeTree {
    range: TokenRange,
    /// Tokens per leaf (the last leaf may hold fewer; leaves past the end none).
    step: u128,
    children: [u64; FANOUT],
    leaves: Box<[u64; LEAVES]>,
}

impl RangeTree {
    /// An empty tree (no keys) over `range`.
    pub fn new(range: TokenRange) -> RangeTree {
        let width = range.end.0.saturating_sub(range.start.0);
        RangeTree {
            range,
            step: width / LEAVES as u128 + 1,
            children: [0; FANOUT],
            leaves: Box::new([0; LEAVES]),
        }
    }

    pub fn range(&self) -> TokenRange {
        self.range
    }

    /// The leaf `token` falls in, `None` outside the range.
    pub fn leaf_of(&self, token: Token) -> Option<usize> {
        if !self.range.contains(token) {
            return None;
        }
        usize::try_from((token.0 - self.range.start.0) / self.step).ok()
    }

    /// XORs `digest` into the leaf of `token` and its ancestors: adds a key's digest,
    /// or removes it when it was there. Returns false (and changes nothing) for a
    /// token outside the range.
    pub fn toggle(&mut self, token: Token, digest: u64) -> bool {
        let Some(leaf) = self.leaf_of(token) else {
            return false;
        };
        self.leaves[leaf] ^= digest;
        self.children[leaf / FANOUT] ^= digest;
        true
    }

    pub fn root(&self) -> u64 {
        self.children.iter().fold(0, |root, child| root ^ child)
    }

    pub fn children(&self) -> [u64; FANOUT] {
        self.children
    }

    /// The leaves under child `child` (`0..FANOUT`; others are empty).
    pub fn leaves_of(&self, child: usize) -> [u64; FANOUT] {
        let mut leaves = [0; FANOUT];
        if child < FANOUT {
            leaves.copy_from_slice(&self.leaves[child * FANOUT..(child + 1) * FANOUT]);
        }
        leaves
    }

    /// The tokens of leaf `leaf` (`0..LEAVES`), `None` when it lies past the range's
    /// end (holds no token).
    pub fn leaf_range(&self, leaf: usize) -> Option<TokenRange> {
        let offset = self.step.checked_mul(u128::try_from(leaf).ok()?)?;
        let start = self.range.start.0.checked_add(offset)?;
        if leaf >= LEAVES || start > self.range.end.0 {
            return None;
        }
        let end = start.saturating_add(self.step - 1).min(self.range.end.0);
        Some(TokenRange {
            start: Token(start),
            end: Token(end),
        })
    }
}

/// The trees of every range a node replicates, found by token.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Forest {
    /// Sorted by start; ranges do not overlap.
    trees: Vec<RangeTree>,
}

impl Forest {
    /// Empty trees over `ranges` (non-overlapping; any order).
    pub fn new(mut ranges: Vec<TokenRange>) -> Forest {
        ranges.sort_by_key(|range| range.start);
        Forest {
            trees: ranges.into_iter().map(RangeTree::new).collect(),
        }
    }

    pub fn trees(&self) -> &[RangeTree] {
        &self.trees
    }

    pub fn ranges(&self) -> Vec<TokenRange> {
        self.trees.iter().map(RangeTree::range).collect()
    }

    /// The tree over exactly `range`.
    pub fn tree(&self, range: TokenRange) -> Option<&RangeTree> {
        let index = self
            .trees
            .binary_search_by_key(&range.start, |tree| tree.range().start)
            .ok()?;
        Some(&self.trees[index]).filter(|tree| tree.range() == range)
    }

    /// The index (in `trees()`) of the tree whose range holds `token`.
    pub fn position(&self, token: Token) -> Option<usize> {
        let index = self
            .trees
            .partition_point(|tree| tree.range().start <= token)
            .checked_sub(1)?;
        self.trees[index].range().contains(token).then_some(index)
    }

    /// `RangeTree::toggle` on the tree holding `token`; false when none does.
    pub fn toggle(&mut self, token: Token, digest: u64) -> bool {
        match self.position(token) {
            Some(index) => self.trees[index].toggle(token, digest),
            None => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn range(start: u128, end: u128) -> TokenRange {
        TokenRange {
            start: Token(start),
            end: Token(end),
        }
    }

    #[test]
    fn leaves_partition_the_range() {
        for r in [
            range(0, 0),
            range(5, 300),
            range(1_000, 1_255),
            range(1_000, 1_256),
            TokenRange::FULL,
        ] {
            let tree = RangeTree::new(r);
            let leaves: Vec<TokenRange> = (0..LEAVES).filter_map(|i| tree.leaf_range(i)).collect();
            assert_eq!(leaves[0].start, r.start);
            assert_eq!(leaves.last().map(|leaf| leaf.end), Some(r.end));
            for pair in leaves.windows(2) {
                assert_eq!(pair[0].end.0 + 1, pair[1].start.0, "{r:?}");
            }
            for (index, leaf) in leaves.iter().enumerate() {
                assert_eq!(tree.leaf_of(leaf.start), Some(index));
                assert_eq!(tree.leaf_of(leaf.end), Some(index));
            }
            assert!(tree.leaf_range(LEAVES).is_none());
        }
        let tree = RangeTree::new(range(10, 20));
        assert_eq!(tree.leaf_of(Token(9)), None);
        assert_eq!(tree.leaf_of(Token(21)), None);
    }

    #[test]
    fn forest_finds_the_tree_of_a_token() {
        let mut forest = Forest::new(vec![range(100, 199), range(0, 9), range(500, 500)]);
        assert!(forest.toggle(Token(150), 7));
        assert!(forest.toggle(Token(9), 1));
        assert!(forest.toggle(Token(500), 2));
        assert!(!forest.toggle(Token(10), 3));
        assert!(!forest.toggle(Token(200), 3));
        assert!(!forest.toggle(Token(u128::MAX), 3));
        assert_eq!(forest.position(Token(150)), Some(1));
        assert_eq!(forest.position(Token(0)), Some(0));
        assert_eq!(forest.position(Token(200)), None);
        assert_eq!(forest.position(Token(500)), Some(2));
        assert_eq!(forest.tree(range(100, 199)).map(RangeTree::root), Some(7));
        assert_eq!(forest.tree(range(0, 9)).map(RangeTree::root), Some(1));
        assert_eq!(forest.tree(range(100, 198)), None);
    }

    proptest! {
        /// Same keys in any order give the same tree; toggling a key twice removes it;
        /// one differing key shows in exactly one child and one leaf.
        #[test]
        fn order_free_and_one_difference_is_one_leaf(
            tokens in prop::collection::btree_set(0u128..1_000_000, 1..200),
            seed in any::<u64>(),
        ) {
            let r = range(0, 999_999);
            let digests: Vec<(Token, u64)> = tokens
                .iter()
                .map(|t| (Token(*t), key_digest(&t.to_le_bytes(), &seed.to_le_bytes())))
                .collect();
            let mut forward = RangeTree::new(r);
            let mut backward = RangeTree::new(r);
            for (token, digest) in &digests {
                forward.toggle(*token, *digest);
            }
            for (token, digest) in digests.iter().rev() {
                backward.toggle(*token, *digest);
            }
            prop_assert_eq!(&forward, &backward);

            let (token, digest) = digests[0];
            backward.toggle(token, digest);
            let differing_children = (0..FANOUT)
                .filter(|c| forward.children()[*c] != backward.children()[*c])
                .collect::<Vec<_>>();
            prop_assert_eq!(differing_children.len(), 1);
            let child = differing_children[0];
            let differing_leaves = (0..FANOUT)
                .filter(|l| forward.leaves_of(child)[*l] != backward.leaves_of(child)[*l])
                .count();
            prop_assert_eq!(differing_leaves, 1);
            prop_assert_ne!(forward.root(), backward.root());
            backward.toggle(token, digest);
            prop_assert_eq!(&forward, &backward);
        }
    }
}
