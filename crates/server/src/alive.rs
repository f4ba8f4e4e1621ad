//! When this node was last alive, kept in its data directory, and why a node that
//! was away longer than `tombstone_gc_grace_ms` refuses to start over its old data.
//!
//! Tombstone GC by grace (`ringkv_cluster::tombstone`) forgets a delete once it is
//! older than the grace, whether or not every replica got it. A node that was down
//! for longer may still hold a value deleted meanwhile, and once the others forgot
//! the tombstone, anti-entropy would spread that value back: a resurrection. So the
//! node stamps the wall clock into its metadata at start and after every purge
//! round, and at the next start refuses if the stamp is older than the grace. The
//! way out is the one for a lost disk: wipe the data directory and start the node
//! again with the same `node_id`; it takes back its ring tokens empty and
//! anti-entropy refills it with what the cluster holds now.
//!
//! Not covered: a node that keeps running but is cut off from its peers for longer
//! than the grace (it stamps on); see ARCHITECTURE.md.

use std::path::Path;

use ringkv_storage::{Engine, StorageError};

/// Metadata name of the stamp: wall-clock ms since the Unix epoch, 8 B big-endian.
const ALIVE_MS: &str = "alive_ms";

#[derive(Debug, thiserror::Error)]
pub enum AliveError {
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error("stored {ALIVE_MS} is corrupt ({len} bytes)")]
    Corrupt { len: usize },
    #[error(
        "node {node_id} was last alive {} ago, longer than tombstone_gc_grace_ms = {grace_ms} ms \
         ({}): the cluster may have forgotten deletes this node never got, and its data \
         would bring them back. Wipe its data directory ({data_dir}) and start it again with \
         node_id = {node_id}: it rejoins empty, takes back its ring tokens, and anti-entropy \
         refills it",
        hours(*away_ms), hours(*grace_ms)
    )]
    AwayTooLong {
        node_id: u64,
        away_ms: u64,
        grace_ms: u64,
        data_dir: String,
    },
}

fn hours(ms: u64) -> String {
    format!("{:.1} h", ms as f64 / 3_600_000.0)
}

/// The stamp stored, if any.
///
/// # Errors
/// Storage errors, or a stamp of the wrong size.
pub fn last_alive(engine: &dyn Engine) -> Result<Option<u64>, AliveError> {
    match engine.meta_get(ALIVE_MS)? {
        None => Ok(None),
        Some(raw) => {
            let bytes: [u8; 8] = raw
                .as_slice()
                .try_into()
                .map_err(|_| AliveError::Corrupt { len: raw.len() })?;
            Ok(Some(u64::from_be_bytes(bytes)))
        }
    }
}

/// Stores `now_ms` as the time this node was last alive (durably: `meta_put`).
///
/// # Errors
/// Storage errors.
pub fn stamp(engine: &dyn Engine, now_ms: u64) -> Result<(), StorageError> {
    engine.meta_put(ALIVE_MS, &now_ms.to_be_bytes())
}

/// At start: refuses when the node was last alive more than `grace_ms` before
/// `now_ms`, else stamps `now_ms`. A data directory without a stamp (new, or from
/// before stamps existed) passes.
///
/// # Errors
/// `AwayTooLong` (nothing is stamped), storage errors, a corrupt stamp.
pub fn check_and_stamp(
    engine: &dyn Engine,
    now_ms: u64,
    grace_ms: u64,
    node_id: u64,
    data_dir: &Path,
) -> Result<(), AliveError> {
    if let Some(last) = last_alive(engine)? {
        let away_ms = now_ms.saturating_sub(last);
        if away_ms > grace_ms {
            return Err(AliveError::AwayTooLong {
                node_id,
                away_ms,
                grace_ms,
                data_dir: data_dir.display().to_string(),
            });
        }
    }
    stamp(engine, now_ms)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use ringkv_storage::MemoryEngine;

    const HOUR: u64 = 3_600_000;

    #[test]
    fn a_node_away_longer_than_the_grace_is_refused_and_nothing_is_stamped() {
        let engine = MemoryEngine::new();
        let dir = Path::new("/data/n1");
        // A new data directory passes, and is stamped.
        check_and_stamp(&engine, 100 * HOUR, 24 * HOUR, 1, dir).unwrap();
        assert_eq!(last_alive(&engine).unwrap(), Some(100 * HOUR));
        // Back within the grace: passes, stamped anew.
        check_and_stamp(&engine, 124 * HOUR, 24 * HOUR, 1, dir).unwrap();
        assert_eq!(last_alive(&engine).unwrap(), Some(124 * HOUR));
        // Away a millisecond longer than the grace: refused.
        let error = check_and_stamp(&engine, 148 * HOUR + 1, 24 * HOUR, 1, dir).unwrap_err();
        assert!(matches!(
            error,
            AliveError::AwayTooLong {
                away_ms,
                grace_ms,
                ..
            } if away_ms == 24 * HOUR + 1 && grace_ms == 24 * HOUR
        ));
        let message = error.to_string();
        for needed in [
            "tombstone_gc_grace_ms",
            "Wipe its data directory",
            "/data/n1",
            "node_id = 1",
        ] {
            assert!(message.contains(needed), "{message}");
        }
        assert_eq!(last_alive(&engine).unwrap(), Some(124 * HOUR));
    }

    #[test]
    fn a_corrupt_stamp_is_an_error() {
        let engine = MemoryEngine::new();
        engine.meta_put(ALIVE_MS, b"x").unwrap();
        assert!(matches!(
            check_and_stamp(&engine, 1, 1, 1, Path::new("d")),
            Err(AliveError::Corrupt { len: 1 })
        ));
    }
}
