//! What can go wrong in storage, with what to do about it.
//!
//! Errors are `Clone` because one failed persist is reported to every caller that
//! waited on it; causes are therefore kept as text.

use std::path::PathBuf;

/// Why a storage operation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StorageError {
    /// Stored bytes of one key do not decode. Nothing was written over them; the key
    /// can be repaired from another replica (read repair, anti-entropy) or `delete`d.
    #[error(
        "stored record of key \"{key}\" is corrupt ({reason}); repair it from a replica or delete it"
    )]
    Corrupt {
        /// The key, escaped for humans (`Key::to_escaped`).
        key: String,
        reason: String,
    },

    /// A metadata name is empty or too long.
    #[error("metadata name \"{name}\" must be 1..={max_bytes} bytes")]
    InvalidMetaName { name: String, max_bytes: usize },

    /// A metadata value is too large: metadata is for ids, not data.
    #[error("metadata value \"{name}\" is {len} bytes, more than {max_bytes} bytes")]
    MetaValueTooLarge {
        name: String,
        len: usize,
        max_bytes: usize,
    },

    /// The disk or the LSM tree failed during `operation`.
    #[error("storage {operation} failed: {reason}; check the disk and the node log")]
    Io {
        operation: &'static str,
        reason: String,
    },

    /// Writing or syncing the journal failed once, so the engine refuses every further
    /// write: what reached the disk is unknown. Restart the node (recovery replays the
    /// journal); if it fails again, replace the disk and rebuild from replicas.
    #[error(
        "storage is poisoned after a failed journal write or fsync ({reason}); restart the node"
    )]
    Poisoned { reason: String },

    /// Another process (or engine in this process) holds the data directory.
    #[error("data directory {} is in use by another ringkv process", path.display())]
    Locked { path: PathBuf },

    /// The data directory could not be opened or recovered.
    #[error("cannot open storage at {}: {reason}", path.display())]
    Open { path: PathBuf, reason: String },

    /// The engine was closed (shutdown); the operation was not performed.
    #[error("storage engine is closed (node shutting down)")]
    Closed,
}

impl StorageError {
    /// Maps a fjall error met during `operation`.
    pub(crate) fn from_fjall(operation: &'static str, error: fjall::Error) -> StorageError {
        match error {
            fjall::Error::Poisoned => StorageError::Poisoned {
                reason: format!("fjall refused {operation}: database poisoned"),
            },
            other => StorageError::Io {
                operation,
                reason: other.to_string(),
            },
        }
    }
}
