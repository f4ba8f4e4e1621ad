//! A node's background loops (DESIGN.md §6): gossip, hinted handoff, anti-entropy,
//! the purge sweep. Each runs one round per interval until shutdown; a round in
//! progress is dropped at shutdown (every round is safe to interrupt: the next
//! start redoes it).

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use ringkv_cluster::antientropy::AntiEntropy;
use ringkv_cluster::handoff::Handoff;
use ringkv_cluster::membership::Membership;
use ringkv_cluster::purge::{Purge, PurgeSettings};
use ringkv_cluster::{Clock, Peer};
use ringkv_storage::Engine;
use tokio_util::sync::CancellationToken;

use crate::{Config, alive, rpc};

/// How much one purge round reads: 64 Ki records in pages of 512 (one blocking
/// storage call each), so a round stays short and a sweep of N records takes
/// N / 64 Ki rounds.
pub(crate) const PURGE_SETTINGS: PurgeSettings = PurgeSettings {
    page_keys: 512,
    keys_per_round: 65_536,
};

/// Runs `round(n)` for n = 0, 1, … once per `interval`, the first at `first`
/// after start (rounds that overrun delay the next, never pile up), until
/// `shutdown`.
async fn every<F, R>(interval: Duration, first: Duration, shutdown: CancellationToken, mut round: R)
where
    R: FnMut(u64) -> F,
    F: Future<Output = ()>,
{
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + first, interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    for n in 0u64.. {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            () = round(n) => {}
        }
    }
}

/// The handoff budget of one round of `interval` at `bytes_per_sec` (at least one
/// hint's worth: a round always sends something).
pub(crate) fn bytes_per_round(bytes_per_sec: u64, interval: Duration) -> u64 {
    let per_round = u128::from(bytes_per_sec) * interval.as_millis() / 1000;
    u64::try_from(per_round).unwrap_or(u64::MAX).max(1)
}

/// Hands hints back to their healthy targets, one round per `interval`.
pub(crate) async fn handoff(handoff: Handoff, interval: Duration, shutdown: CancellationToken) {
    every(interval, Duration::ZERO, shutdown, |_| async {
        handoff.round().await;
    })
    .await;
}

/// One anti-entropy round per `interval`, the first one interval after start (when
/// the node has heard from its peers); it builds the Merkle trees.
pub(crate) async fn anti_entropy(
    anti_entropy: Arc<AntiEntropy>,
    interval: Duration,
    shutdown: CancellationToken,
) {
    every(interval, interval, shutdown, |_| async {
        anti_entropy.round().await;
    })
    .await;
}

/// How often the metrics recorder folds recorded histogram samples into its
/// buckets (`PrometheusHandle::run_upkeep`): a recorder built by hand does not,
/// and samples would pile up in memory until the next scrape (without scrapes,
/// forever).
pub(crate) const METRICS_UPKEEP: Duration = Duration::from_secs(5);

/// Runs the metrics recorder's upkeep every `interval`.
pub(crate) async fn metrics_upkeep(
    handle: metrics_exporter_prometheus::PrometheusHandle,
    interval: Duration,
    shutdown: CancellationToken,
) {
    every(interval, interval, shutdown, |_| {
        handle.run_upkeep();
        std::future::ready(())
    })
    .await;
}

/// Ring-change upkeep (`Topology::upkeep`): records the members that left and
/// drops the copies of ranges a finished change gave to other nodes, every
/// `interval` (the gossip interval: soon after this node learns of it).
pub(crate) async fn upkeep(
    topology: Arc<ringkv_cluster::topology::Topology>,
    interval: Duration,
    shutdown: CancellationToken,
) {
    every(interval, interval, shutdown, |_| async {
        topology.upkeep().await;
    })
    .await;
}

/// The period of purge rounds: `purge_interval_ms`, or half of
/// `tombstone_gc_grace_ms` if that is shorter, because every round also refreshes
/// the alive stamp a restart is judged by (`alive`): a node stopped just before its
/// next stamp must not look away for longer than it was.
pub(crate) fn purge_interval(config: &Config) -> Duration {
    Duration::from_millis(
        config
            .purge_interval_ms
            .min(config.tombstone_gc_grace_ms / 2)
            .max(1),
    )
}

/// One purge round per `interval` (the first one interval after start, once
/// anti-entropy may have confirmed something), each followed by the alive stamp.
pub(crate) async fn purge(
    purge: Arc<Purge>,
    engine: Arc<dyn Engine>,
    clock: Arc<dyn Clock>,
    interval: Duration,
    shutdown: CancellationToken,
) {
    every(interval, interval, shutdown, |_| async {
        purge.round().await;
        let (engine, now_ms) = (engine.clone(), clock.now_ms());
        match tokio::task::spawn_blocking(move || alive::stamp(engine.as_ref(), now_ms)).await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => tracing::warn!("cannot store the alive stamp: {error}"),
            Err(error) => tracing::warn!("alive stamp task failed: {error}"),
        }
    })
    .await;
}

/// One gossip round per interval (`Membership::gossip_round`), and every tenth
/// round an exchange with a seed too (so a node cut off from every member finds its
/// way back).
pub(crate) async fn gossip(
    membership: Arc<Membership>,
    transport: Arc<rpc::TcpTransport>,
    seeds: Vec<Peer>,
    interval: Duration,
    timeout: Duration,
    shutdown: CancellationToken,
) {
    every(interval, Duration::ZERO, shutdown, |round| {
        let (membership, transport, seeds) = (&membership, &transport, &seeds);
        async move {
            // A round's exchanges wait at most one interval: a paused peer must not
            // hold up the heartbeats the others spread.
            membership
                .gossip_round(transport.as_ref(), timeout.min(interval))
                .await;
            if !seeds.is_empty() && round % 10 == 0 {
                let seed = &seeds[usize::try_from(round / 10).unwrap_or(0) % seeds.len()];
                let _ = membership.exchange(transport.as_ref(), seed, timeout).await;
            }
        }
    })
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_round_budget_is_the_rate_over_the_interval_and_never_zero() {
        assert_eq!(
            bytes_per_round(50_000_000, Duration::from_secs(1)),
            50_000_000
        );
        assert_eq!(bytes_per_round(1_000, Duration::from_millis(200)), 200);
        assert_eq!(bytes_per_round(1, Duration::from_millis(1)), 1);
        assert_eq!(
            bytes_per_round(u64::MAX, Duration::from_secs(3_600)),
            u64::MAX
        );
    }

    #[test]
    fn purge_rounds_come_at_least_twice_per_grace() {
        let config = |purge_interval_ms, tombstone_gc_grace_ms| Config {
            purge_interval_ms,
            tombstone_gc_grace_ms,
            ..Config::default()
        };
        assert_eq!(purge_interval(&Config::default()), Duration::from_secs(60));
        assert_eq!(
            purge_interval(&config(60_000, 1_000)),
            Duration::from_millis(500)
        );
        assert_eq!(purge_interval(&config(60_000, 1)), Duration::from_millis(1));
    }

    #[tokio::test]
    async fn every_runs_numbered_rounds_until_shutdown() {
        let shutdown = CancellationToken::new();
        let rounds = Arc::new(std::sync::Mutex::new(Vec::new()));
        let task = {
            let (shutdown, rounds) = (shutdown.clone(), rounds.clone());
            tokio::spawn(async move {
                every(Duration::from_millis(10), Duration::ZERO, shutdown, |n| {
                    let rounds = rounds.clone();
                    async move { rounds.lock().unwrap().push(n) }
                })
                .await;
            })
        };
        // Until three rounds ran (however slow the machine), then shut down.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while rounds.lock().unwrap().len() < 3 {
            assert!(
                std::time::Instant::now() < deadline,
                "rounds after 10 s: {:?}",
                rounds.lock().unwrap()
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        shutdown.cancel();
        task.await.unwrap();
        let seen = rounds.lock().unwrap().clone();
        assert!(seen.len() >= 3, "{seen:?}");
        assert!(
            seen.iter().enumerate().all(|(i, n)| *n == i as u64),
            "{seen:?}"
        );
        tokio::time::sleep(Duration::from_millis(30)).await;
        assert_eq!(
            rounds.lock().unwrap().len(),
            seen.len(),
            "no round after shutdown"
        );
    }
}
