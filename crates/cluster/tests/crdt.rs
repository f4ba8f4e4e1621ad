//! CRDT operations through the coordinator over an in-memory network (issue 8):
//! operations through coordinators that cannot see each other's writes become DVV
//! siblings at the storage level, a read joins them, the next operation supersedes
//! them; a key holds one type.

#![allow(clippy::unwrap_used)] // Tests fail loudly on anything unexpected.

mod common;

use common::*;
use ringkv_core::crdt::state_of;
use ringkv_core::{CrdtValue, Operation};

fn op(raw: &str, operation: Operation) -> Write {
    Write {
        key: key(raw),
        body: WriteBody::Crdt(operation),
        seen: Context::default(),
        ttl: None,
    }
}

fn counter(record: &Record) -> i128 {
    match state_of(record, 0).unwrap().map(|state| state.value()) {
        Some(CrdtValue::Counter(value)) => value,
        other => panic!("not a counter: {other:?}"),
    }
}

#[tokio::test]
async fn concurrent_operations_are_siblings_that_reads_join_and_writes_supersede() {
    let cluster = cluster(3, 3);
    let replicas = cluster.coordinator(0).replicas(&key("c"));
    let (a, b, c) = (replicas[0], replicas[1], replicas[2]);
    // a and b each count while the other is cut off: c gets both states.
    cluster.set_down(b, true);
    cluster
        .coordinator(a.0)
        .write(op("c", Operation::PNCounterIncrement(5)), 1, false)
        .await
        .unwrap();
    cluster.set_down(b, false);
    cluster.set_down(a, true);
    cluster
        .coordinator(b.0)
        .write(op("c", Operation::PNCounterIncrement(-2)), 1, false)
        .await
        .unwrap();
    cluster.set_down(a, false);
    // Replication to c runs in the background after the w=1 ack.
    for _ in 0..100 {
        if cluster.local(c, &key("c")).is_some_and(|r| r.len() == 2) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let held = cluster.local(c, &key("c")).unwrap();
    assert_eq!(held.len(), 2, "two concurrent states, as DVV siblings");
    assert_eq!(counter(&held), 3, "a read joins them");
    let read = cluster
        .coordinator(a.0)
        .read(&key("c"), 3)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(counter(&read), 3);

    // An operation through c joins both and supersedes them.
    cluster
        .coordinator(c.0)
        .write(op("c", Operation::PNCounterIncrement(10)), 3, false)
        .await
        .unwrap();
    for replica in [a, b, c] {
        let held = cluster.local(replica, &key("c")).unwrap();
        assert_eq!(held.len(), 1, "replica {replica:?}");
        assert_eq!(counter(&held), 13);
    }
}

#[tokio::test]
async fn a_key_holds_one_type() {
    let cluster = cluster(3, 3);
    cluster
        .coordinator(0)
        .write(put("plain", "bytes", Context::default()), 3, false)
        .await
        .unwrap();
    let error = cluster
        .coordinator(1)
        .write(op("plain", Operation::GCounterIncrement(1)), 2, false)
        .await
        .unwrap_err();
    assert!(matches!(error, CoordinatorError::WrongType(_)), "{error:?}");

    cluster
        .coordinator(0)
        .write(op("set", Operation::GSetAdd(vec!["a".into()])), 3, false)
        .await
        .unwrap();
    let error = cluster
        .coordinator(2)
        .write(put("set", "over", Context::default()), 2, false)
        .await
        .unwrap_err();
    assert!(matches!(error, CoordinatorError::WrongType(_)), "{error:?}");
    let error = cluster
        .coordinator(1)
        .write(op("set", Operation::LwwSet("x".into())), 2, false)
        .await
        .unwrap_err();
    assert!(matches!(error, CoordinatorError::WrongType(_)), "{error:?}");

    // A blind delete removes the CRDT (it supersedes what the replica holds).
    cluster
        .coordinator(1)
        .write(
            Write {
                key: key("set"),
                body: WriteBody::Delete,
                seen: Context::default(),
                ttl: None,
            },
            3,
            false,
        )
        .await
        .unwrap();
    let read = cluster
        .coordinator(2)
        .read(&key("set"), 3)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(state_of(&read, 0).unwrap(), None);
    cluster
        .coordinator(2)
        .write(op("set", Operation::LwwSet("x".into())), 3, false)
        .await
        .unwrap();
}
