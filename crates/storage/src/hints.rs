//! Hints (DESIGN.md §6, sloppy quorum): records this node holds for another node
//! that could not take them, until they can be handed off.
//!
//! A hint is stored under `target (8 B, big-endian) ‖ storage key`, so one target's
//! hints are one contiguous range in token order (handoff walks it), and a read of one
//! key finds its hints with one point lookup per target that has any. Its value is
//! `format (1 B) ‖ stored_ms (8 B, big-endian) ‖ Record::encode`. Two hints for the
//! same (target, key) merge into one (`Record::sync`), so a hint is never larger than
//! the record it stands for.

use std::collections::BTreeMap;

use ringkv_core::{Key, NodeId, Record};

use crate::{StorageError, decode_record, storage_key};

/// Format byte of a stored hint value.
const HINT_FORMAT: u8 = 1;
/// Bytes before the record in a stored hint value.
const HEADER_BYTES: usize = 1 + 8;
/// Bytes of the target prefix of a hint's stored key.
const TARGET_BYTES: usize = 8;

/// A record held for `target`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hint {
    pub target: NodeId,
    pub key: Key,
    pub record: Record,
    /// When it was last stored or merged into (the holder's wall clock): `hint_ttl`
    /// counts from here.
    pub stored_ms: u64,
}

/// What one node holds for one target.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HintCount {
    pub hints: u64,
    /// Stored bytes (keys and values).
    pub bytes: u64,
}

/// Every hint a node holds, by target.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HintStats {
    pub by_target: BTreeMap<NodeId, HintCount>,
}

impl HintStats {
    pub fn total(&self) -> HintCount {
        self.by_target
            .values()
            .fold(HintCount::default(), |sum, count| HintCount {
                hints: sum.hints + count.hints,
                bytes: sum.bytes + count.bytes,
            })
    }

    pub fn is_empty(&self) -> bool {
        self.by_target.is_empty()
    }

    /// Counts a hint found in storage under `stored` with a value of `value_len`
    /// bytes (counting what is held at open).
    pub(crate) fn count_stored(&mut self, stored: &[u8], value_len: usize) {
        if let Some(target) = target_of(stored) {
            self.count(target, (stored.len() + value_len) as u64, true);
        }
    }

    /// Counts a stored hint of `bytes` (`added`) or its removal.
    pub(crate) fn count(&mut self, target: NodeId, bytes: u64, added: bool) {
        let count = self.by_target.entry(target).or_default();
        if added {
            count.hints += 1;
            count.bytes += bytes;
        } else {
            count.hints = count.hints.saturating_sub(1);
            count.bytes = count.bytes.saturating_sub(bytes);
        }
        if count.hints == 0 {
            self.by_target.remove(&target);
        }
    }
}

/// The stored key of `target`'s hint for `key`.
pub(crate) fn encode_key(target: NodeId, key: &Key) -> Vec<u8> {
    let stored = storage_key::encode(key);
    let mut out = Vec::with_capacity(TARGET_BYTES + stored.len());
    out.extend_from_slice(&target.0.to_be_bytes());
    out.extend_from_slice(&stored);
    out
}

/// The target a stored hint key is for (`None` for a key too short to have one).
pub(crate) fn target_of(stored: &[u8]) -> Option<NodeId> {
    stored
        .first_chunk::<TARGET_BYTES>()
        .map(|target| NodeId(u64::from_be_bytes(*target)))
}

/// The first stored key of `target`'s range, or the one right after `after`.
pub(crate) fn range_start(target: NodeId, after: Option<&Key>) -> Vec<u8> {
    match after {
        Some(key) => {
            let mut start = encode_key(target, key);
            start.push(0);
            start
        }
        None => target.0.to_be_bytes().to_vec(),
    }
}

/// Whether a stored key belongs to `target`'s range.
pub(crate) fn is_for(stored: &[u8], target: NodeId) -> bool {
    stored.get(..TARGET_BYTES) == Some(&target.0.to_be_bytes()[..])
}

/// Decodes a stored hint.
///
/// # Errors
/// `Corrupt` when the key or value does not decode.
pub(crate) fn decode(stored: &[u8], value: &[u8]) -> Result<Hint, StorageError> {
    let corrupt = |reason: String| StorageError::Corrupt {
        key: format!("hint {}", String::from_utf8_lossy(stored).escape_default()),
        reason,
    };
    let (target, rest) = stored
        .split_first_chunk::<TARGET_BYTES>()
        .ok_or_else(|| corrupt("hint key shorter than its target".into()))?;
    let (_, key) = storage_key::decode(rest)?;
    let (header, record) = value
        .split_first_chunk::<HEADER_BYTES>()
        .ok_or_else(|| corrupt("hint value shorter than its header".into()))?;
    if header[0] != HINT_FORMAT {
        return Err(corrupt(format!("unknown hint format {}", header[0])));
    }
    let mut stored_ms = [0u8; 8];
    stored_ms.copy_from_slice(&header[1..]);
    let record = decode_record(&key, record)?;
    Ok(Hint {
        target: NodeId(u64::from_be_bytes(*target)),
        key,
        record,
        stored_ms: u64::from_be_bytes(stored_ms),
    })
}

/// The stored value of a hint.
pub(crate) fn encode_value(record: &Record, stored_ms: u64) -> Vec<u8> {
    let record = record.encode();
    let mut out = Vec::with_capacity(HEADER_BYTES + record.len());
    out.push(HINT_FORMAT);
    out.extend_from_slice(&stored_ms.to_be_bytes());
    out.extend_from_slice(&record);
    out
}

/// The hint to store: `incoming` merged into what is stored (if anything).
pub(crate) fn merged(stored: Option<Hint>, incoming: &Record) -> Record {
    let mut record = stored.map(|hint| hint.record).unwrap_or_default();
    record.sync(incoming);
    record
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    #[test]
    fn round_trip_and_garbage() {
        let key = Key::from_stored(Bytes::from_static(b"k")).unwrap();
        let stored = encode_key(NodeId(7), &key);
        let value = encode_value(&Record::default(), 42);
        let hint = decode(&stored, &value).unwrap();
        assert_eq!(hint.target, NodeId(7));
        assert_eq!(hint.key, key);
        assert_eq!(hint.stored_ms, 42);
        assert!(is_for(&stored, NodeId(7)));
        assert!(!is_for(&stored, NodeId(8)));
        assert!(range_start(NodeId(7), Some(&key)) > stored);
        assert!(range_start(NodeId(7), None) < stored);
        for bad_value in [&b""[..], &[1u8, 0, 0][..], &[9u8; 20][..]] {
            assert!(matches!(
                decode(&stored, bad_value),
                Err(StorageError::Corrupt { .. })
            ));
        }
        assert!(decode(&stored[..5], &value).is_err());
    }

    #[test]
    fn stats_count_and_forget_targets() {
        let mut stats = HintStats::default();
        stats.count(NodeId(1), 10, true);
        stats.count(NodeId(1), 5, true);
        stats.count(NodeId(2), 1, true);
        assert_eq!(
            stats.total(),
            HintCount {
                hints: 3,
                bytes: 16
            }
        );
        stats.count(NodeId(1), 10, false);
        stats.count(NodeId(1), 5, false);
        assert_eq!(
            stats.by_target.keys().copied().collect::<Vec<_>>(),
            [NodeId(2)]
        );
    }
}
