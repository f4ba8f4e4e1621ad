//! A node that was away longer than `tombstone_gc_grace_ms` refuses to start over
//! its old data directory, saying what to do; within the grace it starts, and every
//! start refreshes the stamp it is judged by. The stamp is set back by hand (no
//! sleeping through a grace).

#![allow(clippy::unwrap_used)] // Tests fail loudly on anything unexpected.

use std::time::{SystemTime, UNIX_EPOCH};

use ringkv_server::alive::{self, AliveError};
use ringkv_server::{Config, Server, StartError};
use ringkv_storage::{FjallEngine, FjallOptions};

const DAY_MS: u64 = 24 * 3_600_000;

fn now_ms() -> u64 {
    u64::try_from(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_millis(),
    )
    .unwrap()
}

fn config(dir: &std::path::Path, grace_ms: u64) -> Config {
    Config {
        data_dir: dir.to_path_buf(),
        http_addr: "127.0.0.1:0".parse().unwrap(),
        peer_addr: "127.0.0.1:0".parse().unwrap(),
        resp_addr: "127.0.0.1:0".parse().unwrap(),
        tombstone_gc_grace_ms: grace_ms,
        ..Config::default()
    }
}

/// Sets the node's alive stamp to `ms` (the node is stopped).
fn set_stamp(dir: &std::path::Path, ms: u64) {
    let engine = FjallEngine::open(dir, FjallOptions::default()).unwrap();
    alive::stamp(&engine, ms).unwrap();
    engine.close();
}

fn read_stamp(dir: &std::path::Path) -> Option<u64> {
    let engine = FjallEngine::open(dir, FjallOptions::default()).unwrap();
    let stamp = alive::last_alive(&engine).unwrap();
    engine.close();
    stamp
}

#[tokio::test]
async fn a_node_away_longer_than_the_grace_refuses_to_start_until_wiped() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(config(dir.path(), DAY_MS)).await.unwrap();
    let node_id = server.node_id();
    server.stop().await;
    let stamped = read_stamp(dir.path()).unwrap();
    assert!(now_ms().abs_diff(stamped) < 60_000, "stamped at start");

    // Down for a day less a minute: it starts (and stamps again).
    set_stamp(dir.path(), now_ms() - DAY_MS + 60_000);
    let server = Server::start(config(dir.path(), DAY_MS)).await.unwrap();
    server.stop().await;
    assert!(now_ms().abs_diff(read_stamp(dir.path()).unwrap()) < 60_000);

    // Down for two days: refused, with what to do.
    set_stamp(dir.path(), now_ms() - 2 * DAY_MS);
    let refused = Server::start(config(dir.path(), DAY_MS)).await;
    let Err(StartError::Alive(AliveError::AwayTooLong {
        node_id: refused_id,
        away_ms,
        grace_ms,
        ..
    })) = &refused
    else {
        panic!("expected a refusal, got {:?}", refused.err());
    };
    assert_eq!((*refused_id, *grace_ms), (node_id, DAY_MS));
    assert!(*away_ms >= 2 * DAY_MS);
    let message = refused.err().unwrap().to_string();
    assert!(message.contains("Wipe its data directory"), "{message}");
    assert!(
        message.contains(&format!("node_id = {node_id}")),
        "{message}"
    );
    // The refused start released the data directory (fjall's lock).
    drop(FjallEngine::open(dir.path(), FjallOptions::default()).unwrap());

    // A longer grace lets the same data directory start.
    let server = Server::start(config(dir.path(), 3 * DAY_MS)).await.unwrap();
    server.stop().await;

    // Wiped, it starts empty under the same node id.
    set_stamp(dir.path(), now_ms() - 2 * DAY_MS);
    assert!(Server::start(config(dir.path(), DAY_MS)).await.is_err());
    std::fs::remove_dir_all(dir.path()).unwrap();
    let mut wiped = config(dir.path(), DAY_MS);
    wiped.node_id = Some(node_id);
    let server = Server::start(wiped).await.unwrap();
    assert_eq!(server.node_id(), node_id);
    server.stop().await;
}
