//! Who this node is, kept in the data directory: the node id (configured or made up
//! on first start) and the actor id that stamps this incarnation's writes.
//!
//! The actor id is new whenever the data directory is new, and after every start that
//! did not follow a clean stop: a write's dot can reach other replicas before the
//! coordinator's own copy is durable (the coordinator fsyncs in parallel with them),
//! so after a crash the node may have lost dots that others hold, and must not issue
//! those counters again under the same actor (see `ringkv_core::ActorId`). A clean
//! stop syncs everything first, so the actor can continue.

use std::hash::{BuildHasher, Hasher};

use ringkv_core::{ActorId, Token};
use ringkv_storage::{Engine, StorageError};

const NODE_ID: &str = "node_id";
const ACTOR_ID: &str = "actor_id";
const GENERATION: &str = "generation";
const CLEAN_STOP: &str = "clean_stop";
const TOKENS: &str = "tokens";
const JOINING: &str = "joining";

#[derive(Debug, Clone, Copy)]
pub struct Identity {
    pub node_id: u64,
    pub actor: ActorId,
}

#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error(
        "the data directory belongs to node {stored}, but node_id = {configured} was configured; \
         use that node's own data_dir or remove the node_id setting"
    )]
    NodeIdMismatch { stored: u64, configured: u64 },
    #[error("node_id = {0} is too large: node ids are below 2^63 (larger ids name seeds)")]
    NodeIdTooLarge(u64),
    #[error("stored {name} is corrupt ({len} bytes)")]
    Corrupt { name: &'static str, len: usize },
}

/// A random u64 from the OS-seeded hasher keys (no extra dependency for one number).
pub fn random_u64() -> u64 {
    let mut hasher = std::hash::RandomState::new().build_hasher();
    hasher.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |elapsed| elapsed.as_nanos()),
    );
    hasher.write_u32(std::process::id());
    hasher.finish()
}

fn stored_u64(engine: &dyn Engine, name: &'static str) -> Result<Option<u64>, IdentityError> {
    match engine.meta_get(name)? {
        None => Ok(None),
        Some(raw) => {
            let bytes: [u8; 8] = raw
                .as_slice()
                .try_into()
                .map_err(|_| IdentityError::Corrupt {
                    name,
                    len: raw.len(),
                })?;
            Ok(Some(u64::from_be_bytes(bytes)))
        }
    }
}

/// Loads this node's identity, creating what is missing (durably).
///
/// # Errors
/// Storage errors, corrupt metadata, or a configured node id that differs from the
/// one the data directory was created with.
pub fn load(engine: &dyn Engine, configured: Option<u64>) -> Result<Identity, IdentityError> {
    if let Some(id) =
        configured.filter(|id| ringkv_cluster::transport::is_seed_id(ringkv_core::NodeId(*id)))
    {
        return Err(IdentityError::NodeIdTooLarge(id));
    }
    let node_id = match (stored_u64(engine, NODE_ID)?, configured) {
        (Some(stored), Some(configured)) if stored != configured => {
            return Err(IdentityError::NodeIdMismatch { stored, configured });
        }
        (Some(stored), _) => stored,
        (None, wanted) => {
            let id = wanted.unwrap_or_else(|| random_u64() >> 1);
            engine.meta_put(NODE_ID, &id.to_be_bytes())?;
            id
        }
    };
    let clean = engine.meta_get(CLEAN_STOP)?.as_deref() == Some(&[1]);
    let actor = match stored_u64(engine, ACTOR_ID)? {
        Some(actor) if clean => actor,
        _ => {
            let actor = random_u64();
            engine.meta_put(ACTOR_ID, &actor.to_be_bytes())?;
            actor
        }
    };
    // Until the next clean stop, this run's dots may escape before they are durable.
    engine.meta_put(CLEAN_STOP, &[0])?;
    Ok(Identity {
        node_id,
        actor: ActorId(actor),
    })
}

/// The generation of this start: one more than the last start's, stored durably
/// before the node announces itself, so news about this run beats news about the last.
///
/// # Errors
/// Storage errors or corrupt metadata.
pub fn next_generation(engine: &dyn Engine) -> Result<u64, IdentityError> {
    let generation = stored_u64(engine, GENERATION)?
        .unwrap_or(0)
        .saturating_add(1);
    engine.meta_put(GENERATION, &generation.to_be_bytes())?;
    Ok(generation)
}

/// Raises the stored generation to `generation` (when the cluster remembers a run of
/// this node newer than its data directory does: the directory was lost).
///
/// # Errors
/// Storage errors.
pub fn store_generation(engine: &dyn Engine, generation: u64) -> Result<(), IdentityError> {
    engine.meta_put(GENERATION, &generation.to_be_bytes())?;
    Ok(())
}

/// The ring tokens this node took when it first joined, if it has joined before.
///
/// # Errors
/// Storage errors or corrupt metadata.
pub fn stored_tokens(engine: &dyn Engine) -> Result<Option<Vec<Token>>, IdentityError> {
    let Some(raw) = engine.meta_get(TOKENS)? else {
        return Ok(None);
    };
    if raw.len() % 16 != 0 {
        return Err(IdentityError::Corrupt {
            name: TOKENS,
            len: raw.len(),
        });
    }
    Ok(Some(
        raw.chunks_exact(16)
            .map(|chunk| {
                let mut bytes = [0u8; 16];
                bytes.copy_from_slice(chunk);
                Token::from_be_bytes(bytes)
            })
            .collect(),
    ))
}

/// Keeps this node's ring tokens (durably) so restarts reuse them.
///
/// # Errors
/// Storage errors.
pub fn store_tokens(engine: &dyn Engine, tokens: &[Token]) -> Result<(), IdentityError> {
    let raw: Vec<u8> = tokens
        .iter()
        .flat_map(|token| token.to_be_bytes())
        .collect();
    engine.meta_put(TOKENS, &raw)?;
    Ok(())
}

/// Whether this node took its tokens but has not finished streaming the ranges it
/// takes over (a join interrupted by a stop: the next start joins again).
///
/// # Errors
/// Storage errors.
pub fn is_joining(engine: &dyn Engine) -> Result<bool, IdentityError> {
    Ok(engine.meta_get(JOINING)?.as_deref() == Some(&[1]))
}

/// Marks the join under way (before its streaming) or done (after it).
///
/// # Errors
/// Storage errors.
pub fn store_joining(engine: &dyn Engine, joining: bool) -> Result<(), IdentityError> {
    engine.meta_put(JOINING, &[u8::from(joining)])?;
    Ok(())
}

/// Records that this run stopped cleanly: every write it applied is durable, so the
/// next start may keep the actor id. Call only after the final sync succeeded.
///
/// # Errors
/// Storage errors.
pub fn mark_clean_stop(engine: &dyn Engine) -> Result<(), IdentityError> {
    engine.meta_put(CLEAN_STOP, &[1])?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use ringkv_storage::MemoryEngine;

    #[test]
    fn actor_changes_after_a_crash_but_not_after_a_clean_stop() {
        let engine = MemoryEngine::new();
        let first = load(&engine, Some(7)).unwrap();
        // No clean stop recorded: a crash. Dots of the last run may have escaped.
        let after_crash = load(&engine, Some(7)).unwrap();
        assert_ne!(first.actor, after_crash.actor);
        mark_clean_stop(&engine).unwrap();
        let after_clean_stop = load(&engine, None).unwrap();
        assert_eq!(after_clean_stop.actor, after_crash.actor);
        assert_eq!(after_clean_stop.node_id, 7);
    }

    #[test]
    fn node_id_is_checked_against_the_data_directory() {
        let engine = MemoryEngine::new();
        load(&engine, Some(1)).unwrap();
        assert!(matches!(
            load(&engine, Some(2)),
            Err(IdentityError::NodeIdMismatch {
                stored: 1,
                configured: 2
            })
        ));
        assert!(matches!(
            load(&MemoryEngine::new(), Some(u64::MAX)),
            Err(IdentityError::NodeIdTooLarge(_))
        ));
    }

    #[test]
    fn generations_grow_and_tokens_round_trip() {
        let engine = MemoryEngine::new();
        assert_eq!(next_generation(&engine).unwrap(), 1);
        assert_eq!(next_generation(&engine).unwrap(), 2);
        assert_eq!(stored_tokens(&engine).unwrap(), None);
        let tokens = vec![Token(1), Token(u128::MAX)];
        store_tokens(&engine, &tokens).unwrap();
        assert_eq!(stored_tokens(&engine).unwrap(), Some(tokens));
        engine.meta_put(TOKENS, &[1, 2, 3]).unwrap();
        assert!(stored_tokens(&engine).is_err());
    }
}
