//! ringkv server: the wiring of one node process.
//!
//! It is: configuration (`config`), the HTTP API (`http`, `request`, `error`),
//! the RESP (Redis protocol) listener (`resp`),
//! the internal RPC over TCP (`rpc`) and what this node answers on it (`peer`),
//! metrics (`metrics`), the node's identity (`identity`: ids, generation, ring
//! tokens), when it was last alive (`alive`: a node away longer than the tombstone
//! GC grace refuses to start over its old data), the loops of gossip, hinted
//! handoff, anti-entropy and the purge sweep (`background`), the steps of start-up
//! (`start`: storage, listeners, meeting the seeds, the join decision,
//! `StartError`), and the wiring of it all with graceful shutdown (`Server`). It is not: node logic
//! (that is `ringkv-cluster`) or storage (`ringkv-storage`); handlers only parse,
//! call the node off the async runtime, and answer.
//!
//! Limits: request bodies are bounded by `max_value_bytes` (JSON: twice that, for
//! escapes) and refused with 413 before they are buffered whole, and all of them
//! together by `max_buffered_request_bytes` (`request::BodyBudget`: 503 `overloaded`
//! past it); keys by `max_key_bytes`; a graceful shutdown waits at most
//! `http::SHUTDOWN_GRACE`.
//! RESP commands are bounded likewise (see `resp` for its limits).

pub mod alive;
mod background;
pub mod blocking;
pub mod config;
pub mod crdt_api;
pub mod error;
pub mod http;
pub mod identity;
pub mod metrics;
pub mod peer;
pub mod request;
pub mod resp;
pub mod rpc;
mod socket;
mod start;

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use ringkv_cluster::antientropy::{AntiEntropy, AntiEntropySettings};
use ringkv_cluster::coordinator::{Coordinator, Settings};
use ringkv_cluster::handoff::{Handoff, HandoffSettings};
use ringkv_cluster::membership::{Detector, Membership};
use ringkv_cluster::purge::Purge;
use ringkv_cluster::tombstone::{Collector, TombstoneGc};
use ringkv_cluster::topology::{Topology, TopologySettings};
use ringkv_cluster::{Clock, Node, Peer, Spawn};
use ringkv_core::{Limits, Member, MemberState, NodeId};
use ringkv_storage::{Engine, FjallEngine};
use tokio::task::{JoinHandle, JoinSet};
use tokio_util::sync::CancellationToken;

pub use config::Config;
pub use start::StartError;

/// The wall clock, for production.
struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |elapsed| {
                u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX)
            })
    }

    fn monotonic_ms(&self) -> u64 {
        static ORIGIN: OnceLock<std::time::Instant> = OnceLock::new();
        let origin = *ORIGIN.get_or_init(std::time::Instant::now);
        u64::try_from(origin.elapsed().as_millis()).unwrap_or(u64::MAX)
    }
}

/// A running node.
pub struct Server {
    node_id: u64,
    http_addr: SocketAddr,
    resp_addr: SocketAddr,
    peer_addr: SocketAddr,
    shutdown: CancellationToken,
    tasks: JoinSet<()>,
    http: JoinHandle<()>,
    transport: Arc<rpc::TcpTransport>,
    engine: Arc<FjallEngine>,
}

impl Server {
    /// Opens storage, loads the node's identity, joins the cluster (through `seeds`)
    /// and starts serving.
    ///
    /// # Errors
    /// Storage that cannot be opened, an identity mismatch, an address in use, no
    /// seed reachable on first join.
    pub async fn start(config: Config) -> Result<Server, StartError> {
        let engine = start::open_engine(&config).await?;
        let (identity, generation, stored_tokens, was_joining) = {
            let engine = engine.clone();
            let configured = config.node_id;
            start::blocking(move || -> Result<_, identity::IdentityError> {
                let identity = identity::load(engine.as_ref(), configured)?;
                let generation = identity::next_generation(engine.as_ref())?;
                let tokens = identity::stored_tokens(engine.as_ref())?;
                let joining = identity::is_joining(engine.as_ref())?;
                Ok((identity, generation, tokens, joining))
            })
            .await??
        };
        {
            let (engine, dir) = (engine.clone(), config.data_dir.clone());
            let (grace_ms, node_id) = (config.tombstone_gc_grace_ms, identity.node_id);
            start::blocking(move || {
                alive::check_and_stamp(
                    engine.as_ref(),
                    SystemClock.now_ms(),
                    grace_ms,
                    node_id,
                    &dir,
                )
            })
            .await??;
        }
        let me = NodeId(identity.node_id);
        let (peer_listener, peer_addr) = start::listen("peer_addr", config.peer_addr).await?;
        let (http_listener, http_addr) = start::listen("http_addr", config.http_addr).await?;
        let (resp_listener, resp_addr) = start::listen("resp_addr", config.resp_addr).await?;

        let node = Arc::new(
            Node::new(
                engine.clone() as Arc<dyn Engine>,
                Arc::new(SystemClock),
                identity.actor,
                config.conflict_policy,
            )
            .with_max_hints_bytes(config.max_hints_bytes),
        );
        {
            let node = node.clone();
            start::blocking(move || node.restore_dot_floor())
                .await?
                .map_err(|error| StartError::Task(format!("cannot load the dot floor: {error}")))?;
        }
        let mut member = Member {
            id: me,
            generation,
            heartbeat: 0,
            state: MemberState::Normal,
            peer_addr: peer_addr.to_string(),
            http_addr: http_addr.to_string(),
            resp_addr: resp_addr.to_string(),
            vnodes: config.vnodes,
            tokens: stored_tokens.clone().unwrap_or_default(),
        };
        let membership = Arc::new(Membership::new(
            member.clone(),
            Arc::new(SystemClock),
            Detector {
                suspicion_ms: config.suspicion_threshold_ms,
                down_ms: config.down_threshold_ms,
                permanent_ms: config.permanent_failure_threshold_ms,
            },
        ));
        // The members this node knew had left (a restart must not forget a
        // removal: the removed node, back, must hear it rather than serve).
        let departed = {
            let engine = engine.clone();
            start::blocking(move || ringkv_cluster::node::saved_left_members(engine.as_ref()))
                .await?
                .map_err(|error| StartError::Task(error.to_string()))?
        };
        membership.merge(departed.into_iter().filter(|m| m.id != me).collect());
        // Few threads drain replica work in batches; see `blocking` (measured: on two
        // cores one thread per node beat two by a third in throughput and p99).
        let threads = std::thread::available_parallelism()
            .map_or(1, |n| n.get() / 2)
            .clamp(1, 8);
        let storage = blocking::BlockingPool::new("ringkv-storage", threads);
        let spawner: Arc<dyn Spawn> = Arc::new(peer::TokioSpawn {
            storage: storage.clone(),
        });
        let service = Arc::new(peer::PeerService {
            node: node.clone(),
            storage,
            membership: membership.clone(),
            coordinator: OnceLock::new(),
            topology: OnceLock::new(),
        });
        let self_peer = Peer {
            id: me,
            addr: peer_addr.to_string(),
        };
        let options = rpc::RpcOptions::default();
        let transport = rpc::TcpTransport::new(
            self_peer,
            config.cluster_secret.clone(),
            options.clone(),
            service.clone(),
        );
        let shutdown = CancellationToken::new();
        let mut tasks = JoinSet::new();
        tasks.spawn(rpc::serve(
            peer_listener,
            me,
            config.cluster_secret.clone(),
            options,
            service.clone(),
            shutdown.clone(),
        ));

        // Join: learn the members from a seed; on the first start, take tokens.
        let timeout = Duration::from_millis(config.request_timeout_ms);
        let seeds: Vec<Peer> = config
            .seeds
            .iter()
            .filter(|seed| **seed != peer_addr.to_string())
            .map(|seed| Peer::seed(seed))
            .collect();
        let first_join = stored_tokens.is_none();
        if !seeds.is_empty() {
            let met =
                start::meet_seeds(&membership, transport.as_ref(), &seeds, first_join, timeout)
                    .await;
            if let Err(last_error) = met
                && first_join
            {
                shutdown.cancel();
                return Err(StartError::Join {
                    seeds: config.seeds.join(", "),
                    reason: last_error
                        .map_or_else(|| "no answer".to_string(), |error| error.to_string()),
                });
            }
        }
        // Whatever the cluster remembers of this node, this run's generation must
        // outbid it. A node whose data directory was lost comes back as itself:
        // the cluster remembers its tokens.
        let reported = membership.reported_me();
        if let Some(old) = &reported
            && old.generation >= member.generation
        {
            member.generation = old.generation + 1;
            let (engine, generation) = (engine.clone(), member.generation);
            start::blocking(move || identity::store_generation(engine.as_ref(), generation))
                .await??;
        }
        let saved_state = {
            let node = node.clone();
            start::blocking(move || node.saved_member_state())
                .await?
                .map_err(|error| StartError::Task(error.to_string()))?
        };
        let start::Plan {
            joins,
            resumes,
            adopted,
        } = start::plan(start::Facts {
            reported,
            saved_state,
            was_joining,
            first_join,
            has_seeds: !seeds.is_empty(),
            others: membership
                .members()
                .iter()
                .any(|m| m.id != me && m.state != MemberState::Left),
            vnodes: config.vnodes,
        });
        if let Some(old) = adopted {
            tracing::warn!(
                generation = member.generation,
                "this node's data directory is new but the cluster knows it: taking back its ring tokens; anti-entropy restores its data"
            );
            member.tokens = old.tokens;
            let engine = engine.clone();
            let tokens = member.tokens.clone();
            start::blocking(move || identity::store_tokens(engine.as_ref(), &tokens)).await??;
        } else if first_join {
            member.tokens = start::new_tokens(&membership.members(), me, config.vnodes);
            let engine = engine.clone();
            let tokens = member.tokens.clone();
            start::blocking(move || identity::store_tokens(engine.as_ref(), &tokens)).await??;
        }
        if joins {
            member.state = MemberState::Joining;
            let (engine, node) = (engine.clone(), node.clone());
            start::blocking(move || {
                node.save_member_state(MemberState::Joining)
                    .map_err(|error| StartError::Task(error.to_string()))?;
                identity::store_joining(engine.as_ref(), true).map_err(StartError::from)
            })
            .await??;
            tracing::info!(
                "joining the cluster: streaming the ranges this node takes over before it serves them"
            );
        }
        if let Some(state) = resumes {
            member.state = state;
        }
        membership.update_me(member);
        start::announce(&membership, &transport, &seeds, me, timeout).await;

        let coordinator = Arc::new(Coordinator::new(
            membership.clone(),
            transport.clone(),
            spawner.clone(),
            Settings {
                replication_factor: config.replication_factor,
                request_timeout: timeout,
            },
        ));
        if service.coordinator.set(coordinator.clone()).is_err() {
            unreachable!("the coordinator is set once, here");
        }
        let topology = Arc::new(Topology::new(
            node.clone(),
            membership.clone(),
            transport.clone(),
            spawner.clone(),
            TopologySettings {
                replication_factor: config.replication_factor,
                bytes_per_sec: config.streaming_bytes_per_sec,
                request_timeout: timeout,
            },
        ));
        if service.topology.set(topology.clone()).is_err() {
            unreachable!("the topology is set once, here");
        }
        if resumes == Some(MemberState::Drained) {
            tracing::info!("resuming a decommission: its ranges have moved, telling every member");
            let (topology, shutdown) = (topology.clone(), shutdown.clone());
            tasks.spawn(async move {
                tokio::select! {
                    () = shutdown.cancelled() => {}
                    () = topology.decommission() => {}
                }
            });
        }
        if joins || resumes == Some(MemberState::Joined) {
            let (topology, engine, shutdown) = (topology.clone(), engine.clone(), shutdown.clone());
            tasks.spawn(async move {
                tokio::select! {
                    () = shutdown.cancelled() => {}
                    () = topology.join() => {
                        let stored = tokio::task::spawn_blocking(move || {
                            identity::store_joining(engine.as_ref(), false)
                        })
                        .await;
                        if !matches!(stored, Ok(Ok(()))) {
                            tracing::error!("joined, but could not record it: the next start streams again");
                        }
                    }
                }
            });
        }
        let gossip_interval = Duration::from_millis(config.gossip_interval_ms);
        tasks.spawn(background::gossip(
            membership.clone(),
            transport.clone(),
            seeds,
            gossip_interval,
            timeout,
            shutdown.clone(),
        ));
        let handoff = Handoff::new(
            node.clone(),
            membership.clone(),
            transport.clone(),
            spawner.clone(),
            HandoffSettings {
                hint_ttl_ms: config.hint_ttl_ms,
                bytes_per_round: background::bytes_per_round(
                    config.streaming_bytes_per_sec,
                    gossip_interval,
                ),
                request_timeout: timeout,
                replication_factor: usize::from(config.replication_factor),
            },
        );
        tasks.spawn(background::handoff(
            handoff,
            gossip_interval,
            shutdown.clone(),
        ));
        let anti_entropy_interval = Duration::from_millis(config.anti_entropy_interval_ms);
        let collector = Arc::new(Collector::new(
            node.clone(),
            TombstoneGc::from_settings(
                Duration::from_millis(config.tombstone_gc_grace_ms),
                Duration::from_millis(config.hint_ttl_ms),
                timeout,
            ),
        ));
        let anti_entropy = Arc::new(
            AntiEntropy::new(
                node.clone(),
                membership.clone(),
                transport.clone(),
                spawner.clone(),
                AntiEntropySettings {
                    replication_factor: config.replication_factor,
                    bytes_per_sec: config.streaming_bytes_per_sec,
                    request_timeout: timeout,
                },
            )
            .with_collector(collector.clone()),
        );
        tasks.spawn(background::upkeep(
            topology.clone(),
            gossip_interval,
            shutdown.clone(),
        ));
        tasks.spawn(background::anti_entropy(
            anti_entropy.clone(),
            anti_entropy_interval,
            shutdown.clone(),
        ));
        let purge = Arc::new(Purge::new(
            node.clone(),
            spawner.clone(),
            Some(collector),
            background::PURGE_SETTINGS,
        ));
        tasks.spawn(background::purge(
            purge.clone(),
            engine.clone(),
            Arc::new(SystemClock),
            background::purge_interval(&config),
            shutdown.clone(),
        ));

        let metrics = metrics::handle();
        tasks.spawn(background::metrics_upkeep(
            metrics.clone(),
            background::METRICS_UPKEEP,
            shutdown.clone(),
        ));
        let state = Arc::new(http::AppState {
            node,
            coordinator,
            node_id: identity.node_id,
            limits: Limits {
                max_key_bytes: config.max_key_bytes,
                max_value_bytes: config.max_value_bytes,
            },
            replication_factor: config.replication_factor,
            read_quorum: config.read_quorum,
            write_quorum: config.write_quorum,
            metrics,
            anti_entropy,
            topology,
            purge,
            body_budget: request::BodyBudget::new(
                usize::try_from(config.max_buffered_request_bytes).unwrap_or(usize::MAX),
                http::max_json_body(config.max_value_bytes),
            ),
            stall_timeout: Duration::from_millis(config.request_stall_timeout_ms),
        });
        tasks.spawn(resp::serve(
            resp_listener,
            Arc::new(resp::Shared::new(state.clone(), resp_addr)),
            shutdown.clone(),
        ));
        let app = http::router(state);
        let http = {
            let shutdown = shutdown.clone();
            tokio::spawn(async move {
                let http_listener =
                    http::listener::Limited::new(http_listener, http::listener::MAX_CONNECTIONS);
                let timeout = http::listener::HEADER_READ_TIMEOUT;
                http::listener::serve(http_listener, app, timeout, shutdown).await;
            })
        };
        tracing::info!(node_id = identity.node_id, %http_addr, %resp_addr, %peer_addr, generation, "ringkv node serving");
        Ok(Server {
            node_id: identity.node_id,
            http_addr,
            resp_addr,
            peer_addr,
            shutdown,
            tasks,
            http,
            transport,
            engine,
        })
    }

    pub fn http_addr(&self) -> SocketAddr {
        self.http_addr
    }

    pub fn peer_addr(&self) -> SocketAddr {
        self.peer_addr
    }

    pub fn resp_addr(&self) -> SocketAddr {
        self.resp_addr
    }

    pub fn node_id(&self) -> u64 {
        self.node_id
    }

    /// Stops accepting requests, lets in-flight ones finish (at most
    /// `http::SHUTDOWN_GRACE`), then makes everything written durable and closes
    /// storage.
    pub async fn stop(self) {
        self.shutdown.cancel();
        let mut http = self.http;
        if tokio::time::timeout(http::SHUTDOWN_GRACE, &mut http)
            .await
            .is_err()
        {
            tracing::warn!("in-flight requests did not finish within the grace period; closing");
            http.abort();
        }
        let mut tasks = self.tasks;
        if tokio::time::timeout(http::SHUTDOWN_GRACE, async {
            while tasks.join_next().await.is_some() {}
        })
        .await
        .is_err()
        {
            tracing::warn!("background tasks did not stop within the grace period");
            tasks.abort_all();
        }
        self.transport.shutdown();
        match self.engine.sync().await {
            Ok(()) => {
                let engine = self.engine.clone();
                let marked =
                    tokio::task::spawn_blocking(move || identity::mark_clean_stop(engine.as_ref()))
                        .await;
                if !matches!(marked, Ok(Ok(()))) {
                    tracing::warn!(
                        "could not record the clean stop; the next start takes a new actor id"
                    );
                }
            }
            Err(error) => tracing::error!("final sync failed: {error}"),
        }
        let engine = self.engine;
        let _ = tokio::task::spawn_blocking(move || engine.close()).await;
        tracing::info!("ringkv node stopped");
    }
}

/// Runs a node until SIGTERM or SIGINT, then stops it gracefully.
///
/// # Errors
/// Whatever stops the node from starting.
pub async fn run(config: Config) -> Result<(), StartError> {
    let server = Server::start(config).await?;
    // One line on stdout that scripts and tests read:
    // "... http on ADDR peer ADDR resp ADDR".
    println!(
        "ringkv node {} serving http on {} peer {} resp {}",
        server.node_id(),
        server.http_addr(),
        server.peer_addr(),
        server.resp_addr()
    );
    wait_for_signal().await;
    tracing::info!("shutting down");
    server.stop().await;
    Ok(())
}

async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        }
        _ => {
            tracing::warn!("cannot install signal handlers; stopping on Ctrl-C only");
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
