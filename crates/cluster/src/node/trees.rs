//! What anti-entropy and range streaming read from the local replica: the Merkle
//! trees of the arcs this node replicates (DESIGN.md §6), key digests, and pages of
//! records in token order.

use ringkv_core::merkle::{FANOUT, Forest};
use ringkv_core::{Body, Key, Record, TokenRange};

use super::{Node, NodeError, digest};

impl Node {
    /// Builds the Merkle trees of `arcs` from what storage holds now (at start, and
    /// when the arcs this node replicates change). Writes that land during the scan
    /// may be counted twice or not at all in the new trees; anti-entropy then
    /// compares key digests computed from storage, so the cost is a wasted exchange
    /// or a difference found one rebuild later, never a wrong repair.
    ///
    /// # Errors
    /// Storage errors (the old trees stay).
    pub fn rebuild_trees(&self, arcs: Vec<TokenRange>) -> Result<(), NodeError> {
        let mut forest = Forest::new(arcs.clone());
        for arc in arcs {
            let mut after: Option<Key> = None;
            loop {
                let page = self.engine.scan(arc, after.as_ref(), 1024)?;
                for (key, record) in &page {
                    forest.toggle(key.token(), digest(key, record));
                }
                match page.last() {
                    Some((key, _)) if page.len() == 1024 => after = Some(key.clone()),
                    _ => break,
                }
            }
        }
        let mut trees = self.trees.lock().expect("tree lock is never poisoned");
        self.changes().rebuilt(forest.trees().len());
        *trees = forest;
        Ok(())
    }

    /// The arcs this node keeps trees of.
    pub fn tree_arcs(&self) -> Vec<TokenRange> {
        self.trees
            .lock()
            .expect("tree lock is never poisoned")
            .ranges()
    }

    /// The Merkle root of each arc (`None` for an arc without a tree here).
    pub fn tree_roots(&self, arcs: &[TokenRange]) -> Vec<Option<u64>> {
        let trees = self.trees.lock().expect("tree lock is never poisoned");
        arcs.iter()
            .map(|arc| trees.tree(*arc).map(|tree| tree.root()))
            .collect()
    }

    /// The children of an arc's tree (`child` = `None`) or the leaves under one
    /// child; `None` without a tree of the arc or for a child past `FANOUT`.
    pub fn tree_hashes(&self, arc: TokenRange, child: Option<usize>) -> Option<[u64; FANOUT]> {
        let trees = self.trees.lock().expect("tree lock is never poisoned");
        let tree = trees.tree(arc)?;
        match child {
            None => Some(tree.children()),
            Some(child) if child < FANOUT => Some(tree.leaves_of(child)),
            Some(_) => None,
        }
    }

    /// The token range of leaf `leaf` of `arc`'s tree.
    pub fn leaf_range(&self, arc: TokenRange, leaf: usize) -> Option<TokenRange> {
        let trees = self.trees.lock().expect("tree lock is never poisoned");
        trees.tree(arc)?.leaf_range(leaf)
    }

    /// Every key stored in `range` with its digest, in token order, at most `limit`;
    /// the flag says whether that was all of them.
    ///
    /// # Errors
    /// Storage errors.
    pub fn digests(
        &self,
        range: TokenRange,
        limit: usize,
    ) -> Result<(Vec<(Key, u64)>, bool), NodeError> {
        let page = self.engine.scan(range, None, limit.saturating_add(1))?;
        let complete = page.len() <= limit;
        Ok((
            page.iter()
                .take(limit)
                .map(|(key, record)| (key.clone(), digest(key, record)))
                .collect(),
            complete,
        ))
    }

    /// Records stored in `range` after `after`, in token order, about `max_bytes` of
    /// keys and encoded records (at least one record when the range holds any, at
    /// most `MAX_RECORDS_PER_PAGE`); the flag says whether the range holds nothing
    /// after them (range streaming).
    ///
    /// # Errors
    /// Storage errors.
    pub fn page(
        &self,
        range: TokenRange,
        after: Option<&Key>,
        max_bytes: usize,
    ) -> Result<(Vec<(Key, Record)>, bool), NodeError> {
        const BATCH: usize = 256;
        let mut out = Vec::new();
        let mut bytes = 0usize;
        let mut cursor = after.cloned();
        loop {
            let batch = self.engine.scan(range, cursor.as_ref(), BATCH)?;
            let exhausted = batch.len() < BATCH;
            for (key, record) in batch {
                if !out.is_empty()
                    && (bytes >= max_bytes || out.len() >= ringkv_core::wire::MAX_RECORDS_PER_PAGE)
                {
                    return Ok((out, false));
                }
                bytes += key.as_bytes().len() + approximate_size(&record);
                cursor = Some(key.clone());
                out.push((key, record));
            }
            if exhausted {
                return Ok((out, true));
            }
        }
    }
}

/// About the encoded size of a record: its bodies plus a little per version.
fn approximate_size(record: &Record) -> usize {
    record
        .siblings()
        .map(|(_, sibling)| {
            32 + match &sibling.body {
                Body::Bytes(bytes) | Body::Crdt(bytes) => bytes.len(),
                Body::Tombstone => 0,
            }
        })
        .sum::<usize>()
        + 16
}
