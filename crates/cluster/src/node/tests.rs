//! Tests of the replica-side storage work.

use super::*;
use ringkv_core::{Limits, ReadView};
use ringkv_storage::MemoryEngine;

use crate::ManualClock;

fn node(policy: ConflictPolicy) -> (Node, Arc<ManualClock>) {
    let clock = Arc::new(ManualClock::new(1_000));
    let node = Node::new(
        Arc::new(MemoryEngine::new()),
        clock.clone(),
        ActorId(1),
        policy,
    );
    (node, clock)
}

fn key(raw: &'static str) -> Key {
    Key::parse(raw, &Limits::default()).unwrap()
}

fn put(node: &Node, k: &'static str, value: &'static str, seen: &Context) -> Context {
    let written = node
        .write(Write {
            key: key(k),
            body: WriteBody::Value(Bytes::from_static(value.as_bytes())),
            seen: seen.clone(),
            ttl: None,
        })
        .unwrap();
    written.durable.wait().unwrap();
    written.version
}

fn bodies(node: &Node, k: &'static str) -> Vec<Bytes> {
    let record = node.read(&key(k)).unwrap().unwrap_or_default();
    match record.view(node.policy(), node.now_ms()) {
        ReadView::Absent => vec![],
        ReadView::Value(s) => vec![body(s)],
        ReadView::Siblings(all) => all.into_iter().map(body).collect(),
    }
}

fn body(sibling: &Sibling) -> Bytes {
    match &sibling.body {
        Body::Bytes(b) => b.clone(),
        other => panic!("unexpected body {other:?}"),
    }
}

/// An `Overwrite` (RESP's `SET`) supersedes every version the replica holds,
/// even under `siblings`; a plain `Value` beside them is a sibling.
#[test]
fn an_overwrite_supersedes_what_the_replica_holds() {
    let (node, _) = node(ConflictPolicy::Siblings);
    put(&node, "k", "a", &Context::default());
    put(&node, "k", "b", &Context::default());
    assert_eq!(bodies(&node, "k").len(), 2, "blind writes are siblings");
    let written = node
        .write(Write {
            key: key("k"),
            body: WriteBody::Overwrite(Bytes::from_static(b"c")),
            seen: Context::default(),
            ttl: None,
        })
        .unwrap();
    written.durable.wait().unwrap();
    assert_eq!(bodies(&node, "k"), [Bytes::from_static(b"c")]);
    put(&node, "k", "d", &Context::default());
    assert_eq!(bodies(&node, "k").len(), 2);
}

/// The departed members survive in metadata (without tokens, so any number of
/// vnodes fits), only members that left are kept, and garbage is an error.
#[test]
fn departed_members_round_trip_and_garbage_is_refused() {
    let (node, _) = node(ConflictPolicy::Siblings);
    let member = |id: u64, state| ringkv_core::Member {
        id: ringkv_core::NodeId(id),
        generation: 1_001,
        heartbeat: 7,
        state,
        peer_addr: format!("127.0.0.1:{}", 7000 + id),
        http_addr: String::new(),
        resp_addr: String::new(),
        vnodes: 256,
        tokens: (0..256).map(ringkv_core::Token).collect(),
    };
    assert!(saved_left_members(node.engine.as_ref()).unwrap().is_empty());
    node.save_left_members(&[
        member(1, ringkv_core::MemberState::Left),
        member(2, ringkv_core::MemberState::Normal),
    ])
    .unwrap();
    let saved = saved_left_members(node.engine.as_ref()).unwrap();
    assert_eq!(saved.len(), 1);
    assert_eq!(saved[0].id, ringkv_core::NodeId(1));
    assert_eq!(saved[0].generation, 1_001);
    assert!(saved[0].tokens.is_empty() && saved[0].vnodes == 0);
    node.engine.meta_put(LEFT_MEMBERS, &[0xff; 9]).unwrap();
    assert!(matches!(
        saved_left_members(node.engine.as_ref()),
        Err(NodeError::CorruptMetadata { .. })
    ));
}

#[test]
fn blind_writes_become_siblings_and_a_versioned_write_resolves_them() {
    let (node, _) = node(ConflictPolicy::Siblings);
    put(&node, "k", "a", &Context::default());
    let v2 = put(&node, "k", "b", &Context::default());
    assert_eq!(bodies(&node, "k"), ["a", "b"]);
    // The version from writing "b" covers only "b": "a" stays.
    put(&node, "k", "c", &v2);
    assert_eq!(bodies(&node, "k"), ["a", "c"]);
    let read = node.read(&key("k")).unwrap().unwrap().context().clone();
    put(&node, "k", "d", &read);
    assert_eq!(bodies(&node, "k"), ["d"]);
}

#[test]
fn lww_write_supersedes_what_the_node_holds() {
    let (node, _) = node(ConflictPolicy::Lww);
    put(&node, "k", "a", &Context::default());
    put(&node, "k", "b", &Context::default());
    assert_eq!(node.read(&key("k")).unwrap().unwrap().len(), 1);
    assert_eq!(bodies(&node, "k"), ["b"]);
}

#[test]
fn ttl_expires_and_delete_hides() {
    let (node, clock) = node(ConflictPolicy::Siblings);
    let written = node
        .write(Write {
            key: key("t"),
            body: WriteBody::Value(Bytes::from_static(b"x")),
            seen: Context::default(),
            ttl: Some(Duration::from_secs(2)),
        })
        .unwrap();
    written.durable.wait().unwrap();
    assert_eq!(bodies(&node, "t"), ["x"]);
    clock.advance(2_000);
    assert!(bodies(&node, "t").is_empty());

    let v = put(&node, "d", "x", &Context::default());
    node.write(Write {
        key: key("d"),
        body: WriteBody::Delete,
        seen: v,
        ttl: None,
    })
    .unwrap();
    assert!(bodies(&node, "d").is_empty());
    assert_eq!(
        node.read(&key("d")).unwrap().unwrap().len(),
        1,
        "tombstone kept"
    );
}

#[test]
fn blind_writes_past_the_sibling_limit_are_refused_until_resolved() {
    let (node, _) = node(ConflictPolicy::Siblings);
    for _ in 0..MAX_SIBLINGS {
        put(&node, "k", "x", &Context::default());
    }
    let refused = node.write(Write {
        key: key("k"),
        body: WriteBody::Value(Bytes::from_static(b"y")),
        seen: Context::default(),
        ttl: None,
    });
    assert!(
        matches!(refused, Err(NodeError::TooManySiblings { siblings }) if siblings == MAX_SIBLINGS)
    );
    assert_eq!(
        node.read(&key("k")).unwrap().unwrap().len(),
        MAX_SIBLINGS,
        "nothing stored"
    );
    // A write with the key's version resolves them all.
    let seen = node.read(&key("k")).unwrap().unwrap().context().clone();
    put(&node, "k", "z", &seen);
    assert_eq!(bodies(&node, "k"), ["z"]);
}

#[test]
fn absurd_ttl_is_an_error() {
    let (node, _) = node(ConflictPolicy::Siblings);
    let result = node.write(Write {
        key: key("t"),
        body: WriteBody::Value(Bytes::new()),
        seen: Context::default(),
        ttl: Some(Duration::from_secs(u64::MAX)),
    });
    assert!(matches!(result, Err(NodeError::TtlOverflow { .. })));
}
