//! What survives: fjall data across close and reopen, group commit sharing persists,
//! the memory engine's crash losing exactly the unsynced writes.

// Test code (clippy.toml allows unwrap in #[test] fns; these are its helpers).
#![allow(clippy::unwrap_used)]

use std::sync::{Arc, Barrier};

use bytes::Bytes;
use ringkv_core::{ActorId, Body, Context, Hlc, Key, NodeId, Record, Sibling, TokenRange};
use ringkv_storage::{Durability, Engine, FjallEngine, FjallOptions, MemoryEngine, StorageError};

fn key(raw: impl Into<Bytes>) -> Key {
    Key::from_stored(raw.into()).unwrap()
}

fn record(actor: u64, value: &str) -> Record {
    let mut record = Record::default();
    record.update(
        &Context::default(),
        ActorId(actor),
        Sibling {
            hlc: Hlc(actor),
            expires_at_ms: None,
            body: Body::Bytes(Bytes::copy_from_slice(value.as_bytes())),
        },
    );
    record
}

fn put(engine: &dyn Engine, k: &Key, value: &str) {
    let new = record(1, value);
    engine.apply(k, &mut |_| Some(new.clone())).unwrap();
}

/// Writes, syncs, closes; a new engine on the same directory reads it all back.
#[test]
fn fjall_data_synced_survives_close_and_reopen() {
    let dir = tempfile::tempdir().unwrap();
    for durability in [Durability::Fsync, Durability::Buffered] {
        let options = FjallOptions {
            durability,
            ..FjallOptions::default()
        };
        let engine = FjallEngine::open(dir.path(), options).unwrap();
        for i in 0..100 {
            put(
                &engine,
                &key(format!("k{i}")),
                &format!("{durability:?}-{i}"),
            );
        }
        engine.delete(&key("k7")).unwrap();
        engine.meta_put("node_id", b"n1").unwrap();
        engine.sync().wait().unwrap();
        drop(engine);

        let engine = FjallEngine::open(dir.path(), options).unwrap();
        assert_eq!(
            engine.get(&key("k3")).unwrap(),
            Some(record(1, &format!("{durability:?}-3")))
        );
        assert_eq!(engine.get(&key("k7")).unwrap(), None);
        assert_eq!(engine.scan(TokenRange::FULL, None, 1000).unwrap().len(), 99);
        assert_eq!(engine.meta_get("node_id").unwrap(), Some(b"n1".to_vec()));
    }
}

/// Synced hints survive a reopen, with their counts.
#[test]
fn fjall_hints_survive_reopen_with_their_counts() {
    let dir = tempfile::tempdir().unwrap();
    let engine = FjallEngine::open(dir.path(), FjallOptions::default()).unwrap();
    for i in 0..10 {
        engine
            .hint_put(NodeId(9), &key(format!("h{i}")), &record(1, "v"), 5)
            .unwrap();
    }
    engine.sync().wait().unwrap();
    let stats = engine.hint_stats();
    drop(engine);
    let engine = FjallEngine::open(dir.path(), FjallOptions::default()).unwrap();
    assert_eq!(engine.hint_stats(), stats);
    assert_eq!(stats.total().hints, 10);
    assert_eq!(engine.hint_scan(NodeId(9), None, 100).unwrap().len(), 10);
}

/// Writes never synced still reach the disk when the engine closes cleanly.
#[test]
fn fjall_close_persists_unsynced_writes_then_refuses_writes() {
    let dir = tempfile::tempdir().unwrap();
    let engine = FjallEngine::open(dir.path(), FjallOptions::default()).unwrap();
    put(&engine, &key("late"), "v");
    engine.close();
    assert_eq!(engine.sync().wait(), Ok(()), "close made the write durable");
    assert_eq!(
        engine.apply(&key("after"), &mut |_| Some(record(1, "x"))),
        Err(StorageError::Closed)
    );
    assert_eq!(engine.delete(&key("late")), Err(StorageError::Closed));
    assert_eq!(
        engine.get(&key("late")).unwrap(),
        Some(record(1, "v")),
        "reads still work"
    );
    drop(engine);
    let engine = FjallEngine::open(dir.path(), FjallOptions::default()).unwrap();
    assert_eq!(engine.get(&key("late")).unwrap(), Some(record(1, "v")));
}

/// A directory is used by one engine at a time.
#[test]
fn fjall_second_open_of_one_directory_is_locked() {
    let dir = tempfile::tempdir().unwrap();
    let _first = FjallEngine::open(dir.path(), FjallOptions::default()).unwrap();
    let second = FjallEngine::open(dir.path(), FjallOptions::default());
    assert!(
        matches!(second, Err(StorageError::Locked { .. })),
        "{:?}",
        second.err()
    );
}

/// 32 threads each apply then sync, 20 times, in lockstep: every round's writes are
/// all applied before any of its syncs starts, and the round's syncs all end before
/// the next round writes. One persist covers a round's 32 writes, so the round's 32
/// syncs must share it (however fast the disk is next to the CPU), and every sync
/// must have been served by one.
#[test]
fn fjall_group_commit_shares_persists_between_writers() {
    const THREADS: usize = 32;
    const ROUNDS: usize = 20;
    let dir = tempfile::tempdir().unwrap();
    let engine = Arc::new(FjallEngine::open(dir.path(), FjallOptions::default()).unwrap());
    let (written, synced) = (Barrier::new(THREADS), Barrier::new(THREADS));
    std::thread::scope(|scope| {
        for thread in 0..THREADS {
            let (engine, written, synced) = (&engine, &written, &synced);
            scope.spawn(move || {
                for round in 0..ROUNDS {
                    put(engine.as_ref(), &key(format!("{thread}/{round}")), "v");
                    written.wait();
                    engine.sync().wait().unwrap();
                    synced.wait();
                }
            });
        }
    });
    let stats = engine.sync_stats();
    let writes = (THREADS * ROUNDS) as u64;
    assert_eq!(stats.writes_synced, writes);
    assert!(stats.waiters_served <= writes);
    assert_eq!(
        stats.syncs, ROUNDS as u64,
        "persists for {ROUNDS} rounds of {THREADS} writes: group commit is not batching"
    );
}

/// A sync with nothing new to persist resolves without a persist.
#[test]
fn fjall_sync_of_durable_writes_needs_no_persist() {
    let dir = tempfile::tempdir().unwrap();
    let engine = FjallEngine::open(dir.path(), FjallOptions::default()).unwrap();
    engine.sync().wait().unwrap();
    assert_eq!(engine.sync_stats().syncs, 0);
    put(&engine, &key("a"), "v");
    engine.sync().wait().unwrap();
    engine.sync().wait().unwrap();
    assert_eq!(engine.sync_stats().syncs, 1);
}

/// A power cut loses what was not synced, keeps what was, and brings back what an
/// unsynced delete removed.
#[test]
fn memory_crash_loses_unsynced_writes_only() {
    let engine = MemoryEngine::new();
    put(&engine, &key("synced"), "1");
    put(&engine, &key("deleted"), "1");
    engine.sync().wait().unwrap();
    put(&engine, &key("synced"), "2");
    put(&engine, &key("unsynced"), "1");
    engine.delete(&key("deleted")).unwrap();
    engine.meta_put("node_id", b"n1").unwrap();
    engine.crash();
    assert_eq!(engine.get(&key("synced")).unwrap(), Some(record(1, "1")));
    assert_eq!(engine.get(&key("unsynced")).unwrap(), None);
    assert_eq!(engine.get(&key("deleted")).unwrap(), Some(record(1, "1")));
    assert_eq!(engine.meta_get("node_id").unwrap(), Some(b"n1".to_vec()));
    // Hints alike.
    let (target, k) = (NodeId(4), key("hinted"));
    let synced = engine.hint_put(target, &k, &record(1, "1"), 1).unwrap();
    engine.sync().wait().unwrap();
    engine
        .hint_put(target, &key("unsynced-hint"), &record(1, "1"), 1)
        .unwrap();
    assert!(engine.hint_remove(&synced).unwrap());
    engine.crash();
    assert_eq!(engine.hint_scan(target, None, 10).unwrap(), vec![synced]);
    assert_eq!(engine.hint_stats().total().hints, 1);

    put(&engine, &key("unsynced"), "again");
    engine.sync().wait().unwrap();
    engine.crash();
    assert_eq!(
        engine.get(&key("unsynced")).unwrap(),
        Some(record(1, "again"))
    );
    assert_eq!(engine.syncs(), 2);
}

/// Set in the child process of `fjall_synced_writes_survive_sigkill`: its data dir.
const CHILD_DIR_VAR: &str = "RINGKV_STORAGE_TEST_CHILD_DIR";

/// A process killed with SIGKILL loses nothing a `sync` acknowledged. The test runs
/// itself as a child that writes and syncs keys, printing each one synced; the parent
/// kills it mid-stream and reopens the directory.
#[test]
fn fjall_synced_writes_survive_sigkill() {
    if let Some(dir) = std::env::var_os(CHILD_DIR_VAR) {
        let engine =
            FjallEngine::open(std::path::Path::new(&dir), FjallOptions::default()).unwrap();
        for i in 0u64.. {
            put(&engine, &key(format!("k{i}")), "v");
            engine.sync().wait().unwrap();
            println!("synced {i}");
        }
        return;
    }
    use std::io::BufRead;
    let dir = tempfile::tempdir().unwrap();
    let mut child = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "fjall_synced_writes_survive_sigkill",
            "--exact",
            "--nocapture",
        ])
        .env(CHILD_DIR_VAR, dir.path())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut acknowledged = None;
    for line in std::io::BufReader::new(stdout).lines() {
        if let Some(i) = line.unwrap().strip_prefix("synced ") {
            acknowledged = Some(i.parse::<u64>().unwrap());
            if acknowledged >= Some(200) {
                break;
            }
        }
    }
    child.kill().unwrap(); // SIGKILL on Unix.
    child.wait().unwrap();
    let last = acknowledged.expect("child acknowledged writes");
    let engine = FjallEngine::open(dir.path(), FjallOptions::default()).unwrap();
    for i in 0..=last {
        assert_eq!(
            engine.get(&key(format!("k{i}"))).unwrap(),
            Some(record(1, "v")),
            "k{i}"
        );
    }
}
