//! Whole-cluster simulations: replay is exact, a calm run passes the checkers, a
//! bounded campaign under every fault passes, and the checkers catch planted bugs.

#![allow(clippy::unwrap_used)] // Tests fail loudly on anything unexpected.

use ringkv_sim::{Canary, Config, Report, nodes_for, run};

fn failing(config: impl Fn(u64) -> Config, seeds: std::ops::Range<u64>) -> Vec<(u64, Vec<String>)> {
    seeds
        .map(|seed| run(&config(seed)))
        .filter(|report| !report.violations.is_empty())
        .map(|report: Report| (report.seed, report.violations))
        .collect()
}

/// Two runs of one seed give the same fingerprint (trace and final state), and
/// keeping the trace as text does not change the run.
#[test]
fn the_same_seed_replays_the_same_run() {
    for seed in [0, 7, 12_345] {
        let config = Config::faulty(seed, nodes_for(seed));
        let first = run(&config);
        let second = run(&config);
        assert_eq!(first.fingerprint, second.fingerprint, "seed {seed}");
        let mut traced = config.clone();
        traced.keep_trace = true;
        let third = run(&traced);
        assert_eq!(first.fingerprint, third.fingerprint, "seed {seed}");
        assert!(!third.trace.is_empty());
        assert_eq!(first.history.len(), third.history.len());
    }
}

/// Different seeds make different runs (the fingerprint is not a constant).
#[test]
fn different_seeds_make_different_runs() {
    let a = run(&Config::faulty(1, 5));
    let b = run(&Config::faulty(2, 5));
    assert_ne!(a.fingerprint, b.fingerprint);
}

/// Without faults every request succeeds and the checkers find nothing.
#[test]
fn a_calm_run_passes_the_checkers() {
    for seed in 0..10 {
        let report = run(&Config::calm(seed, nodes_for(seed)));
        assert!(
            report.violations.is_empty(),
            "seed {seed}: {:?}",
            report.violations
        );
        assert_eq!(
            report.failed(),
            0,
            "seed {seed}: nothing fails without faults"
        );
        assert!(
            report.acked_writes() > 50,
            "seed {seed}: the workload writes"
        );
    }
}

/// 150 seeds with lost and delayed messages, crashes (also right after an ack and
/// of the whole cluster), restarts under new actors, partitions and skewed clocks.
#[test]
fn a_bounded_campaign_under_faults_passes() {
    let failed = failing(|seed| Config::faulty(seed, nodes_for(seed)), 0..150);
    assert!(failed.is_empty(), "failing seeds: {failed:#?}");
}

/// The faults actually bite: requests fail, yet writes get acknowledged.
#[test]
fn faults_make_requests_fail() {
    let report = run(&Config::faulty(3, 3));
    assert!(report.failed() > 0);
    assert!(report.acked_writes() > 0);
}

/// A replica that acks before its write is durable loses acknowledged writes when
/// the power goes: checker (a) must see it within 200 seeds.
#[test]
fn the_checkers_catch_acks_before_durability() {
    let failed = failing(
        |seed| Config {
            canary: Canary::AckBeforeDurable,
            ..Config::faulty(seed, nodes_for(seed))
        },
        0..200,
    );
    assert!(
        failed
            .iter()
            .any(|(_, v)| v.iter().any(|v| v.contains("is lost"))),
        "the canary went unnoticed"
    );
}

/// A replica that acks a `Replicate` it never applied leaves replicas apart:
/// checker (b) must see it within 200 seeds.
#[test]
fn the_checkers_catch_acks_without_the_work() {
    let failed = failing(
        |seed| Config {
            canary: Canary::AckWithoutApplying,
            ..Config::faulty(seed, nodes_for(seed))
        },
        0..20,
    );
    assert!(
        failed
            .iter()
            .any(|(_, v)| v.iter().any(|v| v.contains("diverge"))),
        "the canary went unnoticed"
    );
}
