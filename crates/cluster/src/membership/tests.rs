//! Tests of the member table, gossip targets, removal and the failure detector.

use super::*;
use crate::ManualClock;
use ringkv_core::Token;

const DETECTOR: Detector = Detector {
    suspicion_ms: 100,
    down_ms: 300,
    permanent_ms: 1_000,
};

fn member(id: u64, generation: u64, heartbeat: u64) -> Member {
    Member {
        id: NodeId(id),
        generation,
        heartbeat,
        state: MemberState::Normal,
        peer_addr: format!("127.0.0.1:{}", 7000 + id),
        http_addr: String::new(),
        resp_addr: String::new(),
        vnodes: 1,
        tokens: vec![Token(u128::from(id) << 100)],
    }
}

fn table() -> (Membership, Arc<ManualClock>) {
    let clock = Arc::new(ManualClock::new(0));
    let membership = Membership::new(member(0, 1, 0), clock.clone(), DETECTOR);
    membership.merge(vec![member(1, 1, 0), member(2, 1, 0)]);
    (membership, clock)
}

#[test]
fn a_removal_sticks_for_the_run_and_the_removed_node_learns_it() {
    let (membership, clock) = table();
    assert!(matches!(
        membership.remove(NodeId(1), false),
        Err(RemoveError::Alive { .. })
    ));
    assert_eq!(
        membership.remove(NodeId(0), true),
        Err(RemoveError::Myself(NodeId(0)))
    );
    assert_eq!(
        membership.remove(NodeId(9), true),
        Err(RemoveError::Unknown(NodeId(9)))
    );
    clock.advance(1_000);
    assert!(
        membership.remove_permanently_failed().is_empty(),
        "alone of three: a minority removes nobody"
    );
    assert_eq!(membership.remove(NodeId(1), false), Ok(true));
    assert_eq!(membership.remove(NodeId(1), false), Ok(false), "once");
    assert!(!membership.ring().nodes().any(|id| id == NodeId(1)));
    // Its next heartbeats of the same run do not bring it back...
    membership.merge(vec![member(1, 1, 5)]);
    assert_eq!(
        membership.member(NodeId(1)).unwrap().state,
        MemberState::Left
    );
    // ...nor does a run it started that nobody had heard of...
    membership.merge(vec![member(1, 2, 9)]);
    assert_eq!(
        membership.member(NodeId(1)).unwrap().state,
        MemberState::Left
    );
    // ...a run started once it heard of its removal does (it joins again).
    membership.merge(vec![member(1, 2 + REMOVAL_GENERATION_LEAP, 0)]);
    assert_eq!(
        membership.member(NodeId(1)).unwrap().state,
        MemberState::Normal
    );

    // The removed node hears of its removal, and leaves.
    let removed = Membership::new(member(1, 2, 3), clock.clone(), DETECTOR);
    let mut news = member(1, 1 + REMOVAL_GENERATION_LEAP, 1);
    news.state = MemberState::Left;
    removed.merge(vec![news.clone()]);
    assert_eq!(removed.myself().state, MemberState::Left);
    assert!(removed.myself().supersedes(&news));
    assert!(removed.ring().is_empty());
}

#[test]
fn permanently_failed_members_are_removed_only_with_a_majority_up() {
    let (membership, clock) = table();
    membership.merge(vec![member(3, 1, 0), member(4, 1, 0)]);
    clock.advance(1_000);
    // Nodes 1 and 3 keep beating; 2 and 4 are silent: 3 of 5 up, a majority.
    membership.merge(vec![member(1, 1, 1), member(3, 1, 1)]);
    assert_eq!(
        membership.remove_permanently_failed(),
        [NodeId(2), NodeId(4)]
    );
    // On a minority side (only itself up among 3 members left) nothing goes.
    let (alone, clock) = table();
    clock.advance(1_000);
    assert!(alone.remove_permanently_failed().is_empty());
    assert_eq!(alone.member(NodeId(1)).unwrap().state, MemberState::Normal);
}

#[test]
fn silence_walks_through_the_states_and_a_heartbeat_brings_it_back() {
    let (membership, clock) = table();
    let peer = NodeId(1);
    let mut seen = Vec::new();
    for (at, beat) in [(99, 0), (100, 0), (299, 0), (300, 0), (999, 0), (1_000, 0)] {
        clock.set(at);
        membership.merge(vec![member(1, 1, beat)]);
        seen.push(membership.liveness(peer));
    }
    use Liveness::*;
    assert_eq!(
        seen,
        [
            Healthy,
            Suspicious,
            Suspicious,
            Down,
            Down,
            PermanentlyFailed
        ]
    );
    // Stale news (the same beat) does not revive it; a moved heartbeat does.
    membership.merge(vec![member(1, 1, 0)]);
    assert_eq!(membership.liveness(peer), PermanentlyFailed);
    membership.merge(vec![member(1, 1, 1)]);
    assert_eq!(membership.liveness(peer), Healthy);
    // A restart (new generation, heartbeat from zero) is a move too.
    clock.advance(500);
    assert_eq!(membership.liveness(peer), Down);
    membership.merge(vec![member(1, 2, 0)]);
    assert_eq!(membership.liveness(peer), Healthy);
    assert_eq!(membership.liveness(NodeId(0)), Healthy, "itself");
}

#[test]
fn tick_reports_each_transition_once() {
    let (membership, clock) = table();
    assert!(membership.tick().is_empty());
    clock.set(150);
    membership.merge(vec![member(2, 1, 1)]);
    assert_eq!(
        membership.tick(),
        [(NodeId(1), Liveness::Healthy, Liveness::Suspicious)]
    );
    assert!(membership.tick().is_empty());
    clock.set(400);
    membership.merge(vec![member(1, 1, 1)]);
    assert_eq!(
        membership.tick(),
        [
            (NodeId(1), Liveness::Suspicious, Liveness::Healthy),
            (NodeId(2), Liveness::Healthy, Liveness::Suspicious),
        ]
    );
}

#[test]
fn heartbeats_alone_keep_the_ring() {
    let (membership, _) = table();
    let ring = membership.ring();
    membership.beat();
    membership.merge(vec![member(1, 1, 5), member(2, 1, 9)]);
    assert!(Arc::ptr_eq(&ring, &membership.ring()));
    let mut moved = member(1, 1, 6);
    moved.tokens = vec![Token(7)];
    membership.merge(vec![moved]);
    assert!(!Arc::ptr_eq(&ring, &membership.ring()));
    assert_eq!(membership.member(NodeId(0)).map(|me| me.heartbeat), Some(1));
}

#[test]
fn gossip_picks_a_live_peer_and_sometimes_a_down_one() {
    let (membership, clock) = table();
    clock.set(DETECTOR.down_ms);
    membership.merge(vec![member(1, 1, 1)]); // 2 stays silent: down
    let mut live_picks = 0;
    let mut down_picks = 0;
    for _ in 0..200 {
        let targets = membership.gossip_targets();
        assert_eq!(targets[0].id, NodeId(1), "the only live peer comes first");
        live_picks += 1;
        down_picks += targets.iter().filter(|p| p.id == NodeId(2)).count();
    }
    assert_eq!(live_picks, 200);
    // Chance down / (live + 1) = 1/2.
    assert!((60..=140).contains(&down_picks), "{down_picks}");
}

/// A change ends when the other ring goes: each end is reported once, with the
/// ring it left behind (without the joined node) and the one it made.
#[test]
fn the_end_of_a_change_is_reported_once_with_both_rings() {
    let (membership, _) = table();
    let joining = |state, heartbeat| Member {
        state,
        ..member(3, 1, heartbeat)
    };
    membership.merge(vec![joining(MemberState::Joining, 1)]);
    assert!(membership.next_ring().is_some());
    membership.merge(vec![joining(MemberState::Joined, 2)]);
    assert!(membership.take_ended_changes().is_empty(), "not over yet");
    membership.merge(vec![joining(MemberState::Normal, 3)]);
    assert!(membership.next_ring().is_none());
    let ended = membership.take_ended_changes();
    assert_eq!(ended.len(), 1);
    let (old, new) = &ended[0];
    assert!(!old.nodes().any(|id| id == NodeId(3)));
    assert!(new.nodes().any(|id| id == NodeId(3)));
    assert!(Arc::ptr_eq(new, &membership.ring()));
    assert!(membership.take_ended_changes().is_empty(), "reported once");
}
