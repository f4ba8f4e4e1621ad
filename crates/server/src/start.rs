//! Steps of a node's start-up that `Server::start` runs in order: opening storage
//! (`open_engine`) and other storage work off the runtime (`blocking`), binding the
//! listeners (`listen`), meeting the seeds (`meet_seeds`), deciding what this run
//! does about its place in the ring (`plan`, `new_tokens` on a first join), and
//! telling every member about this run (`announce`).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use ringkv_cluster::membership::Membership;
use ringkv_cluster::{Peer, Transport, TransportError};
use ringkv_core::ring::{Ring, allocate_tokens};
use ringkv_core::{Member, MemberState, NodeId, Token};
use ringkv_storage::{FjallEngine, FjallOptions};
use tokio::net::TcpListener;
use tokio::task::JoinSet;

use crate::{Config, alive, identity};

/// Why a node could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    // The causes below are in the message and not `source`s, so a report that
    // prints the chain (`{:#}`) says them once.
    #[error("cannot open storage in {path}: {error}")]
    Storage {
        path: String,
        error: ringkv_storage::StorageError,
    },
    #[error(transparent)]
    Identity(#[from] identity::IdentityError),
    #[error(transparent)]
    Alive(#[from] alive::AliveError),
    #[error("cannot listen on {addr} ({name}): {error}")]
    Bind {
        name: &'static str,
        addr: SocketAddr,
        error: std::io::Error,
    },
    #[error(
        "cannot join the cluster through {seeds}: {reason}; check the seeds, the cluster_secret and that a seed is running"
    )]
    Join { seeds: String, reason: String },
    #[error("start-up task failed: {0}")]
    Task(String),
}

/// Rounds of seed exchanges on a first start (a seed may be starting too).
const JOIN_ATTEMPTS: u32 = 60;
const JOIN_RETRY: Duration = Duration::from_millis(500);

/// Runs a blocking start-up step (storage, identity files) off the async runtime.
///
/// # Errors
/// `Task` when the step panicked or the runtime is shutting down.
pub(crate) async fn blocking<T: Send + 'static>(
    step: impl FnOnce() -> T + Send + 'static,
) -> Result<T, StartError> {
    tokio::task::spawn_blocking(step)
        .await
        .map_err(|error| StartError::Task(error.to_string()))
}

/// Learns the members from `seeds`: up to `JOIN_ATTEMPTS` rounds on a first start
/// (two otherwise), stopping early when one answered or every seed refused (a wrong
/// secret or protocol will not change by waiting). Returns whether one answered,
/// and else the last error.
pub(crate) async fn meet_seeds(
    membership: &Membership,
    transport: &dyn Transport,
    seeds: &[Peer],
    first_join: bool,
    timeout: Duration,
) -> Result<(), Option<TransportError>> {
    let attempts = if first_join { JOIN_ATTEMPTS } else { 2 };
    let mut last_error = None;
    for _ in 0..attempts {
        let mut joined = false;
        let mut refused = 0;
        for seed in seeds {
            match membership.exchange(transport, seed, timeout).await {
                Ok(()) => joined = true,
                Err(error) => {
                    refused += usize::from(matches!(error, TransportError::Protocol { .. }));
                    last_error = Some(error);
                }
            }
        }
        if joined {
            return Ok(());
        }
        if refused == seeds.len() {
            break;
        }
        tokio::time::sleep(JOIN_RETRY).await;
    }
    Err(last_error)
}

/// Opens (or creates) the node's storage in `data_dir`.
pub(crate) async fn open_engine(config: &Config) -> Result<Arc<FjallEngine>, StartError> {
    let data_dir = config.data_dir.clone();
    let options = FjallOptions {
        durability: config.durability,
        sync_interval: std::time::Duration::from_micros(config.group_commit_interval_us),
        ..FjallOptions::default()
    };
    let engine = blocking(move || {
        std::fs::create_dir_all(&data_dir).map_err(|error| StartError::Storage {
            path: data_dir.display().to_string(),
            error: ringkv_storage::StorageError::Open {
                path: data_dir.clone(),
                reason: error.to_string(),
            },
        })?;
        FjallEngine::open(&data_dir, options).map_err(|error| StartError::Storage {
            path: data_dir.display().to_string(),
            error,
        })
    })
    .await??;
    Ok(Arc::new(engine))
}

/// Binds `addr` (config key `name`): the listener and the address it got (the OS
/// picks the port for port 0).
pub(crate) async fn listen(
    name: &'static str,
    addr: SocketAddr,
) -> Result<(TcpListener, SocketAddr), StartError> {
    let failed = |error| StartError::Bind { name, addr, error };
    let listener = TcpListener::bind(addr).await.map_err(failed)?;
    let bound = listener.local_addr().map_err(failed)?;
    Ok((listener, bound))
}

/// Tokens for a node's first join: it splits the ranges of every member that holds
/// or takes tokens, joining ones included (two nodes joining at once must not split
/// the same).
pub(crate) fn new_tokens(members: &[Member], me: NodeId, vnodes: u16) -> Vec<Token> {
    let holders: Vec<&Member> = members
        .iter()
        .filter(|m| m.id != me && m.state != MemberState::Left)
        .collect();
    let ring = Ring::new(holders.iter().map(|m| (m.id, m.tokens.clone())));
    let weights = holders.iter().map(|m| (m.id, m.vnodes)).collect();
    allocate_tokens(&ring, &weights, me, vnodes, identity::random_u64())
}

/// What this run does about the node's place in the ring.
#[derive(Debug, PartialEq)]
pub(crate) struct Plan {
    /// It joins: takes (or takes back) ranges, streaming them before it serves them.
    pub joins: bool,
    /// A ring change in its second phase (`Joined`, `Drained`) that this run ends.
    pub resumes: Option<MemberState>,
    /// The cluster's record of this node, whose tokens a node whose data directory
    /// is new takes back (anti-entropy then restores its data).
    pub adopted: Option<Member>,
}

/// What a start knows when it decides its `Plan`.
pub(crate) struct Facts {
    /// The cluster's record of this node, if any member reported one.
    pub reported: Option<Member>,
    /// The ring-change state this node saved last (`Node::saved_member_state`).
    pub saved_state: Option<MemberState>,
    /// The join marker was set (a join began and did not finish).
    pub was_joining: bool,
    /// No tokens stored: the first start over this data directory.
    pub first_join: bool,
    /// Started with seeds.
    pub has_seeds: bool,
    /// Another member is in the ring (not `Left`).
    pub others: bool,
    /// The configured vnodes (an adopted record must have as many tokens).
    pub vnodes: u16,
}

/// Decides what this run does about the ring (see `Plan`).
pub(crate) fn plan(facts: Facts) -> Plan {
    let Facts {
        reported,
        saved_state,
        was_joining,
        first_join,
        has_seeds,
        others,
        vnodes,
    } = facts;
    // The cluster took this node out (decommissioned, or removed as dead): it joins
    // again, streaming before it serves reads.
    let was_removed = saved_state == Some(MemberState::Left)
        || reported
            .as_ref()
            .is_some_and(|old| old.state == MemberState::Left);
    let adopted = reported.filter(|old| {
        first_join
            && old.state.in_current_ring()
            && !old.tokens.is_empty()
            && old.tokens.len() == usize::from(vnodes)
    });
    // A join interrupted after its streaming (`Joined`, or `Normal` just before the
    // marker was cleared) resumes from there: streaming again would take the node
    // back to `Joining`, out of the reads some members already send it.
    let streamed = matches!(saved_state, Some(MemberState::Joined | MemberState::Normal));
    // (The state is recorded before the marker: either says a join began.)
    let began_joining = was_joining || saved_state == Some(MemberState::Joining);
    let joins = has_seeds
        && others
        && ((began_joining && !streamed) || was_removed || (first_join && adopted.is_none()));
    // A change in its second phase (data moved, the news spreading) ends.
    let resumes = saved_state
        .filter(|state| !joins && matches!(state, MemberState::Joined | MemberState::Drained));
    Plan {
        joins,
        resumes,
        adopted,
    }
}

/// Tells the seeds and every member learnt from them about this run (its new
/// generation, its tokens), all at once: each sees it healthy again at once instead
/// of after a few gossip rounds. Answers are not awaited beyond `timeout`.
pub(crate) async fn announce<T: Transport + 'static>(
    membership: &Arc<Membership>,
    transport: &Arc<T>,
    seeds: &[Peer],
    me: NodeId,
    timeout: Duration,
) {
    let mut announce = JoinSet::new();
    let others = membership.members().into_iter().filter(|m| m.id != me);
    let peers = seeds.iter().cloned().chain(others.map(|m| Peer {
        id: m.id,
        addr: m.peer_addr,
    }));
    for peer in peers {
        let (membership, transport) = (membership.clone(), transport.clone());
        announce.spawn(async move {
            let _ = membership
                .exchange(transport.as_ref(), &peer, timeout)
                .await;
        });
    }
    announce.join_all().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn me(state: MemberState, tokens: usize) -> Member {
        Member {
            id: NodeId(1),
            generation: 1,
            heartbeat: 0,
            state,
            peer_addr: "127.0.0.1:1".into(),
            http_addr: "127.0.0.1:2".into(),
            resp_addr: "127.0.0.1:3".into(),
            vnodes: 4,
            tokens: (0..tokens as u128).map(ringkv_core::Token).collect(),
        }
    }

    fn facts() -> Facts {
        Facts {
            reported: None,
            saved_state: None,
            was_joining: false,
            first_join: false,
            has_seeds: true,
            others: true,
            vnodes: 4,
        }
    }

    #[test]
    fn a_first_start_joins_unless_the_cluster_knows_its_tokens() {
        let fresh = plan(Facts {
            first_join: true,
            ..facts()
        });
        assert!(fresh.joins && fresh.adopted.is_none());
        let known = plan(Facts {
            first_join: true,
            reported: Some(me(MemberState::Normal, 4)),
            ..facts()
        });
        assert!(!known.joins);
        assert_eq!(known.adopted, Some(me(MemberState::Normal, 4)));
        // A record with another vnode count is not taken back.
        let other_vnodes = plan(Facts {
            first_join: true,
            reported: Some(me(MemberState::Normal, 3)),
            ..facts()
        });
        assert!(other_vnodes.joins && other_vnodes.adopted.is_none());
    }

    #[test]
    fn a_restart_joins_only_when_removed_or_mid_join() {
        assert!(!plan(facts()).joins);
        assert!(
            plan(Facts {
                saved_state: Some(MemberState::Left),
                ..facts()
            })
            .joins
        );
        assert!(
            plan(Facts {
                was_joining: true,
                ..facts()
            })
            .joins
        );
        // Streamed already: the join resumes from its second phase instead.
        let streamed = plan(Facts {
            was_joining: true,
            saved_state: Some(MemberState::Joined),
            ..facts()
        });
        assert!(!streamed.joins);
        assert_eq!(streamed.resumes, Some(MemberState::Joined));
        let drained = plan(Facts {
            saved_state: Some(MemberState::Drained),
            ..facts()
        });
        assert_eq!(drained.resumes, Some(MemberState::Drained));
        // Alone, or without seeds, a node never joins.
        for lonely in [
            Facts {
                others: false,
                first_join: true,
                ..facts()
            },
            Facts {
                has_seeds: false,
                was_joining: true,
                ..facts()
            },
        ] {
            assert!(!plan(lonely).joins);
        }
    }
}
