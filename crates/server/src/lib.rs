//! ringkv server: the wiring of one node process.
//!
//! It is: configuration (`config`), the HTTP API (`http`, `request`, `error`),
//! metrics (`metrics`), the node's identity (`identity`), and start-up / graceful
//! shutdown (`Server`). It is not: node logic (that is `ringkv-cluster`) or storage
//! (`ringkv-storage`); handlers only parse, call the node off the async runtime, and
//! answer.
//!
//! Limits: request bodies are bounded by `max_value_bytes` (JSON: twice that, for
//! escapes) and refused with 413 before they are buffered whole; keys by
//! `max_key_bytes`; a graceful shutdown waits at most `http::SHUTDOWN_GRACE`.

pub mod config;
pub mod error;
pub mod http;
pub mod identity;
pub mod metrics;
pub mod request;

use std::net::SocketAddr;
use std::sync::Arc;

use ringkv_cluster::{Clock, Node};
use ringkv_core::Limits;
use ringkv_storage::{Engine, FjallEngine, FjallOptions};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub use config::Config;

/// Why a node could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot open storage in {path}: {source}")]
    Storage {
        path: String,
        source: ringkv_storage::StorageError,
    },
    #[error(transparent)]
    Identity(#[from] identity::IdentityError),
    #[error("cannot listen on {addr} (http_addr): {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("start-up task failed: {0}")]
    Task(String),
}

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
}

/// A running node.
pub struct Server {
    node_id: u64,
    http_addr: SocketAddr,
    shutdown: CancellationToken,
    http: JoinHandle<()>,
    upkeep: JoinHandle<()>,
    engine: Arc<FjallEngine>,
}

impl Server {
    /// Opens storage, loads the node's identity and starts serving.
    ///
    /// # Errors
    /// Storage that cannot be opened, an identity mismatch, an address in use.
    pub async fn start(config: Config) -> Result<Server, StartError> {
        let data_dir = config.data_dir.clone();
        let options = FjallOptions {
            durability: config.durability,
            ..FjallOptions::default()
        };
        let engine = tokio::task::spawn_blocking(move || {
            std::fs::create_dir_all(&data_dir).map_err(|error| StartError::Storage {
                path: data_dir.display().to_string(),
                source: ringkv_storage::StorageError::Open {
                    path: data_dir.clone(),
                    reason: error.to_string(),
                },
            })?;
            FjallEngine::open(&data_dir, options).map_err(|source| StartError::Storage {
                path: data_dir.display().to_string(),
                source,
            })
        })
        .await
        .map_err(|error| StartError::Task(error.to_string()))??;
        let engine = Arc::new(engine);
        let identity = {
            let engine = engine.clone();
            let configured = config.node_id;
            tokio::task::spawn_blocking(move || identity::load(engine.as_ref(), configured))
                .await
                .map_err(|error| StartError::Task(error.to_string()))??
        };
        let listener = TcpListener::bind(config.http_addr)
            .await
            .map_err(|source| StartError::Bind {
                addr: config.http_addr,
                source,
            })?;
        let http_addr = listener.local_addr().map_err(|source| StartError::Bind {
            addr: config.http_addr,
            source,
        })?;

        let node = Arc::new(Node::new(
            engine.clone() as Arc<dyn Engine>,
            Arc::new(SystemClock),
            identity.actor,
            config.conflict_policy,
        ));
        // A cluster of one until membership lands: every key has one replica.
        let replicas = config.replication_factor.min(1);
        if config.read_quorum > replicas || config.write_quorum > replicas {
            tracing::warn!(
                "read_quorum = {} / write_quorum = {} exceed the {replicas} replica(s) a key has in a \
                 cluster of one; requests without r/w use {replicas}",
                config.read_quorum,
                config.write_quorum
            );
        }
        let metrics = metrics::handle();
        let state = Arc::new(http::AppState {
            node,
            node_id: identity.node_id,
            limits: Limits {
                max_key_bytes: config.max_key_bytes,
                max_value_bytes: config.max_value_bytes,
            },
            replication_factor: config.replication_factor,
            replicas,
            read_quorum: config.read_quorum,
            write_quorum: config.write_quorum,
            http_addr: http_addr.to_string(),
            peer_addr: config.peer_addr.to_string(),
            vnodes: config.vnodes,
            metrics: metrics.clone(),
        });
        if !config.seeds.is_empty() {
            tracing::warn!(
                seeds = ?config.seeds,
                "seeds are configured, but this build does not replicate yet: the node serves alone"
            );
        }

        let shutdown = CancellationToken::new();
        let app = http::router(state);
        let http = {
            let shutdown = shutdown.clone();
            tokio::spawn(async move {
                let serve = axum::serve(listener, app)
                    .with_graceful_shutdown(shutdown.clone().cancelled_owned());
                if let Err(error) = serve.await {
                    tracing::error!("http server failed: {error}");
                }
            })
        };
        let upkeep = {
            let shutdown = shutdown.clone();
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(std::time::Duration::from_secs(5));
                loop {
                    tokio::select! {
                        _ = shutdown.cancelled() => break,
                        _ = tick.tick() => metrics.run_upkeep(),
                    }
                }
            })
        };
        tracing::info!(node_id = identity.node_id, %http_addr, "ringkv node serving");
        Ok(Server {
            node_id: identity.node_id,
            http_addr,
            shutdown,
            http,
            upkeep,
            engine,
        })
    }

    pub fn http_addr(&self) -> SocketAddr {
        self.http_addr
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
        let _ = self.upkeep.await;
        if let Err(error) = self.engine.sync().await {
            tracing::error!("final sync failed: {error}");
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
    println!(
        "ringkv node {} serving http on {}",
        server.node_id(),
        server.http_addr()
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
