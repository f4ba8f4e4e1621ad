//! The `Engine` contract, checked against every engine with one suite
//! (`engine_suite!`), plus what only one engine has: fjall's reopen and group
//! commit, the memory engine's crash.

// Test code (clippy.toml allows unwrap in #[test] fns; these are its helpers).
#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;
use std::sync::Arc;

use bytes::Bytes;
use proptest::prelude::*;
use ringkv_core::{ActorId, Body, Context, Hlc, Key, NodeId, Record, Sibling, Token, TokenRange};
use ringkv_storage::{
    Engine, FjallEngine, FjallOptions, MAX_META_NAME_BYTES, MemoryEngine, StorageError,
};
use tempfile::TempDir;

/// An engine under test, with the directory it lives in (dropped after the engine).
struct Opened<E> {
    engine: Arc<E>,
    _dir: Option<TempDir>,
}

fn memory() -> Opened<MemoryEngine> {
    Opened {
        engine: Arc::new(MemoryEngine::new()),
        _dir: None,
    }
}

fn fjall() -> Opened<FjallEngine> {
    let dir = tempfile::tempdir().unwrap();
    let engine = FjallEngine::open(dir.path(), FjallOptions::default()).unwrap();
    Opened {
        engine: Arc::new(engine),
        _dir: Some(dir),
    }
}

fn key(raw: impl Into<Bytes>) -> Key {
    Key::from_stored(raw.into()).unwrap()
}

/// A record holding one value written by `actor`.
fn record(actor: u64, value: &'static str) -> Record {
    let mut record = Record::default();
    record.update(&Context::default(), ActorId(actor), sibling(actor, value));
    record
}

fn sibling(hlc: u64, value: &str) -> Sibling {
    Sibling {
        hlc: Hlc(hlc),
        expires_at_ms: None,
        body: Body::Bytes(Bytes::copy_from_slice(value.as_bytes())),
    }
}

fn values(record: &Record) -> BTreeSet<Vec<u8>> {
    record
        .siblings()
        .map(|(_, sibling)| match &sibling.body {
            Body::Bytes(bytes) => bytes.to_vec(),
            other => panic!("unexpected body {other:?}"),
        })
        .collect()
}

fn put(engine: &dyn Engine, k: &Key, record: &Record) {
    let to_store = record.clone();
    engine.apply(k, &mut |_| Some(to_store.clone())).unwrap();
}

/// Keys sorted the way every scan must return them.
fn sorted_keys(count: usize) -> Vec<Key> {
    let mut keys: Vec<Key> = (0..count).map(|i| key(format!("key-{i}"))).collect();
    keys.sort_by_key(|k| (k.token(), k.clone()));
    keys
}

fn get_of_absent_key_is_none(engine: &dyn Engine) {
    assert_eq!(engine.get(&key("missing")).unwrap(), None);
}

/// `apply` stores what `change` returns and returns it; `None` leaves storage alone.
fn apply_stores_what_change_returns(engine: &dyn Engine) {
    let k = key("k");
    let mut seen = Vec::new();
    let stored = engine
        .apply(&k, &mut |current| {
            seen.push(current);
            Some(record(1, "a"))
        })
        .unwrap();
    assert_eq!(seen, [None]);
    assert_eq!(stored, Some(record(1, "a")));
    assert_eq!(engine.get(&k).unwrap(), Some(record(1, "a")));

    let unchanged = engine
        .apply(&k, &mut |current| {
            assert_eq!(current, Some(record(1, "a")));
            None
        })
        .unwrap();
    assert_eq!(unchanged, Some(record(1, "a")));
    assert_eq!(engine.get(&k).unwrap(), Some(record(1, "a")));

    let absent = key("absent");
    assert_eq!(engine.apply(&absent, &mut |_| None).unwrap(), None);
    assert_eq!(engine.get(&absent).unwrap(), None);
}

/// `merge` is `Record::sync` into what is stored, so concurrent values add up.
fn merge_unions_concurrent_values(engine: &dyn Engine) {
    let k = key("merged");
    assert_eq!(engine.merge(&k, &record(1, "a")).unwrap(), record(1, "a"));
    let merged = engine.merge(&k, &record(2, "b")).unwrap();
    assert_eq!(
        values(&merged),
        BTreeSet::from([b"a".to_vec(), b"b".to_vec()])
    );
    // Idempotent: merging the same record again changes nothing.
    assert_eq!(engine.merge(&k, &record(2, "b")).unwrap(), merged);
    assert_eq!(engine.get(&k).unwrap(), Some(merged));
}

/// A full scan returns every record in (token, key) order; pages of any size
/// stitched with `after` return the same.
fn scan_orders_by_token_and_pages(engine: &dyn Engine) {
    let keys = sorted_keys(40);
    for (i, k) in keys.iter().enumerate() {
        put(engine, k, &record(i as u64 + 1, "v"));
    }
    let all = engine.scan(TokenRange::FULL, None, usize::MAX).unwrap();
    let scanned: Vec<Key> = all.iter().map(|(k, _)| k.clone()).collect();
    assert_eq!(scanned, keys);
    assert_eq!(all[3].1, record(4, "v"));

    for page in [1, 3, 7, 40, 100] {
        let mut paged = Vec::new();
        let mut after: Option<Key> = None;
        for _ in 0..=keys.len() {
            let batch = engine.scan(TokenRange::FULL, after.as_ref(), page).unwrap();
            assert!(batch.len() <= page);
            let Some((last, _)) = batch.last() else { break };
            after = Some(last.clone());
            paged.extend(batch.into_iter().map(|(k, _)| k));
        }
        assert_eq!(paged, keys, "page size {page}");
    }
    assert!(engine.scan(TokenRange::FULL, None, 0).unwrap().is_empty());
}

/// Both range bounds are inclusive; an inverted range is empty.
fn scan_respects_inclusive_range_bounds(engine: &dyn Engine) {
    let keys = sorted_keys(10);
    for k in &keys {
        put(engine, k, &record(1, "v"));
    }
    let range = TokenRange {
        start: keys[2].token(),
        end: keys[6].token(),
    };
    let found: Vec<Key> = engine
        .scan(range, None, usize::MAX)
        .unwrap()
        .into_iter()
        .map(|(k, _)| k)
        .collect();
    assert_eq!(found, keys[2..=6]);
    // Just inside the neighbours' tokens: the ends are excluded.
    let inner = TokenRange {
        start: Token(keys[2].token().0 + 1),
        end: Token(keys[6].token().0 - 1),
    };
    let found: Vec<Key> = engine
        .scan(inner, None, usize::MAX)
        .unwrap()
        .into_iter()
        .map(|(k, _)| k)
        .collect();
    assert_eq!(found, keys[3..=5]);
    // `after` before the range starts at the range; after its end, nothing is left.
    let from_before = engine.scan(range, Some(&keys[0]), 1).unwrap();
    assert_eq!(from_before[0].0, keys[2]);
    assert!(engine.scan(range, Some(&keys[9]), 10).unwrap().is_empty());
    let inverted = TokenRange {
        start: range.end,
        end: range.start,
    };
    assert!(engine.scan(inverted, None, 10).unwrap().is_empty());
}

fn delete_removes_the_record(engine: &dyn Engine) {
    let k = key("gone");
    put(engine, &k, &record(1, "a"));
    engine.delete(&k).unwrap();
    assert_eq!(engine.get(&k).unwrap(), None);
    assert!(engine.scan(TokenRange::FULL, None, 10).unwrap().is_empty());
    // Deleting an absent key is fine.
    engine.delete(&k).unwrap();
    engine.sync().wait().unwrap();
}

fn remove_if_removes_only_the_record_it_was_given(engine: &dyn Engine) {
    let k = key("collected");
    let old = record(1, "a");
    put(engine, &k, &old);
    // A write landed since the record was read: it stays.
    let mut newer = old.clone();
    newer.sync(&record(2, "b"));
    put(engine, &k, &newer);
    assert!(!engine.remove_if(&k, &old).unwrap());
    assert_eq!(engine.get(&k).unwrap(), Some(newer.clone()));
    assert!(engine.remove_if(&k, &newer).unwrap());
    assert_eq!(engine.get(&k).unwrap(), None);
    assert!(engine.scan(TokenRange::FULL, None, 10).unwrap().is_empty());
    // Nothing to remove: not an error.
    assert!(!engine.remove_if(&k, &newer).unwrap());
    engine.sync().wait().unwrap();
}

fn meta_round_trips_within_limits(engine: &dyn Engine) {
    assert_eq!(engine.meta_get("node_id").unwrap(), None);
    engine.meta_put("node_id", b"n1").unwrap();
    engine.meta_put("actor_id", &7u64.to_be_bytes()).unwrap();
    assert_eq!(engine.meta_get("node_id").unwrap(), Some(b"n1".to_vec()));
    engine.meta_put("node_id", b"n2").unwrap();
    assert_eq!(engine.meta_get("node_id").unwrap(), Some(b"n2".to_vec()));
    // Metadata is not data: a scan does not see it.
    assert!(engine.scan(TokenRange::FULL, None, 10).unwrap().is_empty());
    let long = "n".repeat(MAX_META_NAME_BYTES + 1);
    assert!(matches!(
        engine.meta_get(&long),
        Err(StorageError::InvalidMetaName { .. })
    ));
    assert!(matches!(
        engine.meta_put("", b"x"),
        Err(StorageError::InvalidMetaName { .. })
    ));
    let huge = vec![0; ringkv_storage::MAX_META_VALUE_BYTES + 1];
    assert!(matches!(
        engine.meta_put("big", &huge),
        Err(StorageError::MetaValueTooLarge { .. })
    ));
}

/// 8 threads each add 25 versions to one key (blind writes by distinct actors, so
/// every one is a sibling); an update lost to a race would be a missing sibling.
fn concurrent_applies_on_one_key_lose_no_update(engine: Arc<dyn Engine>) {
    const THREADS: u64 = 8;
    const WRITES: u64 = 25;
    let k = key("contended");
    std::thread::scope(|scope| {
        for actor in 1..=THREADS {
            let (engine, k) = (&engine, &k);
            scope.spawn(move || {
                for i in 0..WRITES {
                    let value = sibling(i, &format!("{actor}-{i}"));
                    engine
                        .apply(k, &mut |current| {
                            let mut record = current.unwrap_or_default();
                            record.update(&Context::default(), ActorId(actor), value.clone());
                            Some(record)
                        })
                        .unwrap();
                }
            });
        }
    });
    let stored = engine.get(&k).unwrap().unwrap();
    let expected: BTreeSet<Vec<u8>> = (1..=THREADS)
        .flat_map(|actor| (0..WRITES).map(move |i| format!("{actor}-{i}").into_bytes()))
        .collect();
    assert_eq!(values(&stored), expected);
}

/// A stored value that does not decode is reported, never overwritten by `apply`,
/// and can be deleted.
fn corrupt_record_is_an_error_and_never_overwritten(
    engine: &dyn Engine,
    insert_raw: &dyn Fn(&Key, &[u8]),
) {
    let k = key("bad\n");
    insert_raw(&k, b"\xffgarbage");
    let Err(StorageError::Corrupt { key: shown, reason }) = engine.get(&k) else {
        panic!("expected Corrupt from get");
    };
    assert_eq!(shown, "bad\\n");
    assert!(!reason.is_empty());
    let mut called = false;
    let result = engine.apply(&k, &mut |_| {
        called = true;
        Some(record(1, "a"))
    });
    assert!(matches!(result, Err(StorageError::Corrupt { .. })));
    assert!(!called, "change must not run on a corrupt record");
    assert!(matches!(
        engine.merge(&k, &record(1, "a")),
        Err(StorageError::Corrupt { .. })
    ));
    assert!(matches!(engine.get(&k), Err(StorageError::Corrupt { .. })));
    assert!(matches!(
        engine.scan(TokenRange::FULL, None, 10),
        Err(StorageError::Corrupt { .. })
    ));
    engine.delete(&k).unwrap();
    assert_eq!(engine.get(&k).unwrap(), None);
}

/// The same barrier works blocking and awaited.
fn sync_resolves_for_blocking_and_async_callers(engine: Arc<dyn Engine>) {
    put(engine.as_ref(), &key("a"), &record(1, "a"));
    engine.sync().wait().unwrap();
    put(engine.as_ref(), &key("b"), &record(1, "b"));
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    runtime.block_on(async { engine.sync().await }).unwrap();
    // Nothing new: resolves at once.
    engine.sync().wait().unwrap();
}

/// The longest key core accepts is stored and scanned like any other.
fn longest_key_is_stored(engine: &dyn Engine) {
    let longest = key(vec![b'k'; ringkv_core::MAX_KEY_BYTES]);
    put(engine, &longest, &record(1, "a"));
    assert_eq!(engine.get(&longest).unwrap(), Some(record(1, "a")));
    let scanned = engine.scan(TokenRange::FULL, None, 10).unwrap();
    assert_eq!(scanned, [(longest.clone(), record(1, "a"))]);
    engine.delete(&longest).unwrap();
    assert_eq!(engine.get(&longest).unwrap(), None);
}

/// Random bytes stored as a record make `get` and `scan` fail cleanly, never panic.
fn garbage_records_never_panic(engine: &dyn Engine, insert_raw: &dyn Fn(&Key, &[u8])) {
    let k = key("fuzzed");
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig::with_cases(256));
    runner
        .run(&prop::collection::vec(any::<u8>(), 0..256), |raw| {
            insert_raw(&k, &raw);
            let got = engine.get(&k);
            let scanned = engine.scan(TokenRange::FULL, None, 10);
            match Record::decode(&raw) {
                Ok(record) => {
                    prop_assert_eq!(got, Ok(Some(record.clone())));
                    prop_assert_eq!(scanned, Ok(vec![(k.clone(), record)]));
                }
                Err(_) => {
                    let got_corrupt = matches!(got, Err(StorageError::Corrupt { .. }));
                    let scanned_corrupt = matches!(scanned, Err(StorageError::Corrupt { .. }));
                    prop_assert!(got_corrupt, "get returned {:?}", got);
                    prop_assert!(scanned_corrupt, "scan returned {:?}", scanned);
                }
            }
            Ok(())
        })
        .unwrap();
}

/// Hints merge per (target, key), are found by key and by target in token order,
/// and go only when unchanged since they were read; the counts follow.
fn hints_merge_scan_and_remove_only_when_unchanged(engine: &dyn Engine) {
    let (a, b) = (NodeId(1), NodeId(2));
    assert!(engine.hint_stats().is_empty());
    assert!(engine.hints_for_key(&key("k")).unwrap().is_empty());
    let keys = sorted_keys(5);
    for k in &keys {
        engine.hint_put(a, k, &record(1, "x"), 100).unwrap();
    }
    engine.hint_put(b, &keys[2], &record(2, "y"), 200).unwrap();
    // A second hint for (a, keys[2]) merges into the first.
    let merged = engine.hint_put(a, &keys[2], &record(3, "z"), 300).unwrap();
    assert_eq!(
        values(&merged.record),
        BTreeSet::from([b"x".to_vec(), b"z".to_vec()])
    );
    assert_eq!(merged.stored_ms, 300);

    let stats = engine.hint_stats();
    assert_eq!(stats.by_target[&a].hints, 5);
    assert_eq!(stats.by_target[&b].hints, 1);
    assert_eq!(stats.total().hints, 6);
    assert!(stats.total().bytes > 0);

    let for_key = engine.hints_for_key(&keys[2]).unwrap();
    assert_eq!(for_key.iter().map(|h| h.target).collect::<Vec<_>>(), [a, b]);

    // Scans are per target, in token order, and page.
    let first = engine.hint_scan(a, None, 3).unwrap();
    let rest = engine.hint_scan(a, Some(&first[2].key), 10).unwrap();
    let scanned: Vec<Key> = first.iter().chain(&rest).map(|h| h.key.clone()).collect();
    assert_eq!(scanned, keys);
    assert_eq!(engine.hint_scan(b, None, 10).unwrap().len(), 1);
    assert!(engine.hint_scan(NodeId(3), None, 10).unwrap().is_empty());

    // A hint merged into after it was read is not removed; the fresh one is.
    let stale = first[0].clone();
    engine
        .hint_put(a, &stale.key, &record(4, "w"), 400)
        .unwrap();
    assert!(!engine.hint_remove(&stale).unwrap());
    let fresh = engine.hint_scan(a, None, 1).unwrap().remove(0);
    assert!(engine.hint_remove(&fresh).unwrap());
    assert!(!engine.hint_remove(&fresh).unwrap(), "already gone");
    assert_eq!(engine.hint_stats().by_target[&a].hints, 4);

    for hint in engine.hint_scan(a, None, 10).unwrap() {
        assert!(engine.hint_remove(&hint).unwrap());
    }
    assert_eq!(
        engine
            .hint_stats()
            .by_target
            .keys()
            .copied()
            .collect::<Vec<_>>(),
        [b]
    );
    // Hints are apart from the records.
    assert_eq!(engine.get(&keys[2]).unwrap(), None);
}

/// Runs every case of the shared suite against one engine type, each on a fresh
/// engine from `$open`.
macro_rules! engine_suite {
    ($engine:ident, $open:path) => {
        mod $engine {
            use super::*;

            #[test]
            fn get_of_absent_key_is_none() {
                super::get_of_absent_key_is_none($open().engine.as_ref());
            }
            #[test]
            fn apply_stores_what_change_returns() {
                super::apply_stores_what_change_returns($open().engine.as_ref());
            }
            #[test]
            fn merge_unions_concurrent_values() {
                super::merge_unions_concurrent_values($open().engine.as_ref());
            }
            #[test]
            fn scan_orders_by_token_and_pages() {
                super::scan_orders_by_token_and_pages($open().engine.as_ref());
            }
            #[test]
            fn scan_respects_inclusive_range_bounds() {
                super::scan_respects_inclusive_range_bounds($open().engine.as_ref());
            }
            #[test]
            fn delete_removes_the_record() {
                super::delete_removes_the_record($open().engine.as_ref());
            }
            #[test]
            fn remove_if_removes_only_the_record_it_was_given() {
                super::remove_if_removes_only_the_record_it_was_given($open().engine.as_ref());
            }
            #[test]
            fn meta_round_trips_within_limits() {
                super::meta_round_trips_within_limits($open().engine.as_ref());
            }
            #[test]
            fn concurrent_applies_on_one_key_lose_no_update() {
                super::concurrent_applies_on_one_key_lose_no_update($open().engine.clone());
            }
            #[test]
            fn corrupt_record_is_an_error_and_never_overwritten() {
                let opened = $open();
                let engine = opened.engine.as_ref();
                let insert_raw = |k: &Key, raw: &[u8]| engine.insert_raw_for_test(k, raw).unwrap();
                super::corrupt_record_is_an_error_and_never_overwritten(engine, &insert_raw);
            }
            #[test]
            fn sync_resolves_for_blocking_and_async_callers() {
                super::sync_resolves_for_blocking_and_async_callers($open().engine.clone());
            }
            #[test]
            fn hints_merge_scan_and_remove_only_when_unchanged() {
                super::hints_merge_scan_and_remove_only_when_unchanged($open().engine.as_ref());
            }
            #[test]
            fn longest_key_is_stored() {
                super::longest_key_is_stored($open().engine.as_ref());
            }
            #[test]
            fn garbage_records_never_panic() {
                let opened = $open();
                let engine = opened.engine.as_ref();
                let insert_raw = |k: &Key, raw: &[u8]| engine.insert_raw_for_test(k, raw).unwrap();
                super::garbage_records_never_panic(engine, &insert_raw);
            }
        }
    };
}

engine_suite!(memory_engine, memory);
engine_suite!(fjall_engine, fjall);
