//! Tests of the ring: preference lists and ranges on hand-made and random rings, and
//! the determinism of `allocate_tokens`; its balance and minimal movement in `balance`.

use proptest::prelude::*;

use super::*;
use crate::MemberState;

mod balance;

const VNODES: u16 = 256;
fn ring_of(members: &[(u64, &[u128])]) -> Ring {
    Ring::new(
        members
            .iter()
            .map(|(node, tokens)| (NodeId(*node), tokens.iter().map(|t| Token(*t)).collect())),
    )
}

fn ids(nodes: &[NodeId]) -> Vec<u64> {
    nodes.iter().map(|node| node.0).collect()
}

fn range(start: u128, end: u128) -> TokenRange {
    TokenRange {
        start: Token(start),
        end: Token(end),
    }
}

/// The rings of 1, 2, … nodes (ids 1, 2, …) joining one by one with `allocate_tokens`;
/// `vnodes[i]` is the weight of node i + 1.
fn grow(vnodes: &[u16], seed: u64) -> Vec<Ring> {
    let mut members = Vec::new();
    let mut weights = BTreeMap::new();
    let mut rings: Vec<Ring> = Vec::new();
    for (index, count) in vnodes.iter().enumerate() {
        let node = NodeId(index as u64 + 1);
        let ring = rings.last().cloned().unwrap_or_default();
        let tokens = allocate_tokens(
            &ring,
            &weights,
            node,
            *count,
            seed.wrapping_add(index as u64),
        );
        assert_eq!(tokens.len(), usize::from(*count));
        members.push((node, tokens));
        weights.insert(node, *count);
        rings.push(Ring::new(members.clone()));
    }
    rings
}

/// A naive preference list: every vnode in walk order, keeping first sightings.
fn walk(ring: &Ring, token: Token) -> Vec<NodeId> {
    let vnodes: Vec<(Token, NodeId)> = ring.vnodes().collect();
    let start = vnodes.iter().position(|(t, _)| *t >= token).unwrap_or(0);
    let mut order = Vec::new();
    for (_, node) in vnodes[start..].iter().chain(&vnodes[..start]) {
        if !order.contains(node) {
            order.push(*node);
        }
    }
    order
}

/// Rings of up to 6 nodes with up to 12 random tokens each (ids may repeat: a node
/// listed twice holds both lists; tokens may collide).
fn small_rings() -> impl Strategy<Value = Ring> {
    prop::collection::vec((1u64..7, prop::collection::vec(any::<u128>(), 1..12)), 1..6).prop_map(
        |members| {
            Ring::new(
                members
                    .into_iter()
                    .map(|(node, tokens)| (NodeId(node), tokens.into_iter().map(Token).collect())),
            )
        },
    )
}

/// A member in `state` holding one token.
fn member(id: u64, state: MemberState, token: u128) -> Member {
    Member {
        id: NodeId(id),
        generation: 1,
        heartbeat: 0,
        state,
        peer_addr: String::new(),
        http_addr: String::new(),
        resp_addr: String::new(),
        vnodes: 1,
        tokens: vec![Token(token)],
    }
}

/// Before the first node joins: no owner, empty lists and ranges, no panic.
#[test]
fn an_empty_ring_answers_with_nothing() {
    let ring = Ring::new(Vec::new());
    assert!(ring.is_empty());
    assert_eq!(ring.len(), 0);
    assert_eq!(ring.owner(Token(5)), None);
    assert!(ring.preference_list(Token(5), 3).nodes().is_empty());
    assert!(ring.ranges(NodeId(1), 3).is_empty());
    assert!(ring.ownership().is_empty());
}

/// N = 3 on a one-node ring: one replica, no fallbacks, the whole ring.
#[test]
fn one_node_is_the_only_replica_whatever_n() {
    let ring = ring_of(&[(4, &[100, 200])]);
    let list = ring.preference_list(Token(150), 3);
    assert_eq!(ids(list.replicas()), [4]);
    assert!(list.fallbacks().is_empty());
    assert_eq!(ring.ranges(NodeId(4), 1), [TokenRange::FULL]);
    assert_eq!(ring.ownership()[&NodeId(4)], 1.0);
}

/// A hand-made ring of three nodes, probed inside arcs, on tokens and past the end.
#[test]
fn preference_list_walks_clockwise_from_the_owning_token_and_wraps() {
    // Node 1 owns (40, 10] and (20, 30]; node 2 (10, 20]; node 3 (30, 40].
    let ring = ring_of(&[(1, &[10, 30]), (2, &[20]), (3, &[40])]);
    let list = ring.preference_list(Token(15), 2);
    assert_eq!(ids(list.replicas()), [2, 1]);
    assert_eq!(ids(list.fallbacks()), [3]);
    assert!(list.is_replica(NodeId(1)));
    assert!(!list.is_replica(NodeId(3)));
    // A vnode token owns itself: (10, 20] includes 20.
    assert_eq!(ids(ring.preference_list(Token(20), 3).nodes()), [2, 1, 3]);
    assert_eq!(ids(ring.preference_list(Token(21), 3).nodes()), [1, 3, 2]);
    // Past the last token the walk wraps to the first.
    assert_eq!(ids(ring.preference_list(Token(41), 3).nodes()), [1, 2, 3]);
    assert_eq!(ids(ring.preference_list(Token::MAX, 1).replicas()), [1]);
    assert_eq!(ids(ring.preference_list(Token::MIN, 1).replicas()), [1]);
    assert_eq!(ring.owner(Token(41)), Some(NodeId(1)));
    assert_eq!(ring.owner(Token(35)), Some(NodeId(3)));
    assert_eq!(
        ring.nodes().collect::<Vec<_>>(),
        [NodeId(1), NodeId(2), NodeId(3)]
    );
}

/// Collisions are settled without talking: every node keeps the lower id's claim.
#[test]
fn a_token_claimed_twice_goes_to_the_lower_node_id() {
    let ring = ring_of(&[(7, &[5, 9]), (3, &[9, 12])]);
    assert_eq!(ring.owner(Token(9)), Some(NodeId(3)));
    assert_eq!(ring.tokens_of(NodeId(7)), [Token(5)]);
    assert_eq!(ring.tokens_of(NodeId(3)), [Token(9), Token(12)]);
    // A node whose every token was taken is not on the ring.
    let ring = ring_of(&[(2, &[1]), (1, &[1])]);
    assert_eq!(ring.nodes().collect::<Vec<_>>(), [NodeId(1)]);
}

/// `from_members` drops `Left` members; their keys go to the next token.
#[test]
fn members_that_left_are_not_on_the_ring() {
    let ring = Ring::from_members(&[
        member(1, MemberState::Normal, 10),
        member(2, MemberState::Left, 20),
        member(3, MemberState::Normal, 30),
    ]);
    assert_eq!(ring.nodes().collect::<Vec<_>>(), [NodeId(1), NodeId(3)]);
    assert_eq!(ring.owner(Token(20)), Some(NodeId(3)));
}

/// Joining members are only on the next ring, leaving ones only on the current
/// one; with neither there is no next ring.
#[test]
fn joining_and_leaving_members_are_on_one_ring_each() {
    let steady = [
        member(1, MemberState::Normal, 10),
        member(2, MemberState::Normal, 20),
    ];
    assert_eq!(Ring::next_from_members(&steady), None);
    let changing = [
        member(1, MemberState::Normal, 10),
        member(2, MemberState::Leaving, 20),
        member(3, MemberState::Joining, 30),
    ];
    let current = Ring::from_members(&changing);
    let next = Ring::next_from_members(&changing).expect("a change is under way");
    assert_eq!(current.nodes().collect::<Vec<_>>(), [NodeId(1), NodeId(2)]);
    assert_eq!(next.nodes().collect::<Vec<_>>(), [NodeId(1), NodeId(3)]);
}

/// A change's two phases swap the rings: once its data moved, a joined node is
/// read from (current) and the old owners are only written to (next); a drained
/// node is only written to.
#[test]
fn the_second_phase_of_a_change_swaps_the_rings() {
    let joined = [
        member(1, MemberState::Normal, 10),
        member(2, MemberState::Normal, 20),
        member(3, MemberState::Joined, 30),
    ];
    let nodes = |ring: &Ring| ring.nodes().collect::<Vec<_>>();
    assert_eq!(
        nodes(&Ring::from_members(&joined)),
        [NodeId(1), NodeId(2), NodeId(3)]
    );
    let next = Ring::next_from_members(&joined).expect("the change is not over");
    assert_eq!(nodes(&next), [NodeId(1), NodeId(2)]);
    let drained = [
        member(1, MemberState::Normal, 10),
        member(2, MemberState::Drained, 20),
    ];
    assert_eq!(nodes(&Ring::from_members(&drained)), [NodeId(1)]);
    let next = Ring::next_from_members(&drained).expect("the change is not over");
    assert_eq!(nodes(&next), [NodeId(1), NodeId(2)]);
}

/// The reason for the two phases: two coordinators whose views of a change are
/// one step apart (news reaches nodes at different times) each read from a ring
/// the other writes W of, so a quorum read meets every acknowledged write.
#[test]
fn views_one_step_apart_read_what_the_other_writes() {
    let with = |state: MemberState| {
        [
            member(1, MemberState::Normal, 10),
            member(2, MemberState::Normal, 20),
            member(3, state, 30),
        ]
    };
    let writes = |members: &[Member]| -> Vec<Ring> {
        let mut rings = vec![Ring::from_members(members)];
        rings.extend(Ring::next_from_members(members));
        rings
    };
    // A node that is not there yet is a `Left` one as far as rings go.
    let join = [
        MemberState::Left,
        MemberState::Joining,
        MemberState::Joined,
        MemberState::Normal,
    ];
    let leave = [
        MemberState::Normal,
        MemberState::Leaving,
        MemberState::Drained,
        MemberState::Left,
    ];
    for steps in [join, leave] {
        for pair in steps.windows(2) {
            let (a, b) = (with(pair[0]), with(pair[1]));
            assert!(writes(&b).contains(&Ring::from_members(&a)), "{pair:?}");
            assert!(writes(&a).contains(&Ring::from_members(&b)), "{pair:?}");
        }
    }
    // Skipping the second phase would break it: a node that sees the join done
    // writes only the new ring while one that sees it streaming reads the old.
    let (streaming, done) = (with(MemberState::Joining), with(MemberState::Normal));
    assert!(!writes(&done).contains(&Ring::from_members(&streaming)));
}

/// Exact ranges on hand-made rings, for N = 0, 1, 2 and a token at 2^128 − 1.
#[test]
fn ranges_merge_adjacent_arcs_and_split_at_the_wrap() {
    // Node 1 owns (30, 10] and (10, 20]; node 2 owns (20, 30].
    let ring = ring_of(&[(1, &[10, 20]), (2, &[30])]);
    assert_eq!(
        ring.ranges(NodeId(1), 1),
        [range(0, 20), range(31, u128::MAX)]
    );
    assert_eq!(ring.ranges(NodeId(2), 1), [range(21, 30)]);
    assert_eq!(ring.ranges(NodeId(2), 2), [TokenRange::FULL]);
    assert!(ring.ranges(NodeId(2), 0).is_empty());
    assert!(ring.ranges(NodeId(9), 1).is_empty());
    // Replica sets of 2: (30, 10] → {1, 2}, (10, 20] → {2, 3}, (20, 30] → {3, 1}.
    let ring = ring_of(&[(1, &[10]), (2, &[20]), (3, &[30])]);
    assert_eq!(
        ring.ranges(NodeId(1), 2),
        [range(0, 10), range(21, u128::MAX)]
    );
    assert_eq!(
        ring.ranges(NodeId(2), 2),
        [range(0, 20), range(31, u128::MAX)]
    );
    assert_eq!(ring.ranges(NodeId(3), 2), [range(11, 30)]);
    // A token at the very top: nothing wraps.
    let ring = ring_of(&[(1, &[u128::MAX]), (2, &[5])]);
    assert_eq!(ring.ranges(NodeId(1), 1), [range(6, u128::MAX)]);
    assert_eq!(ring.ranges(NodeId(2), 1), [range(0, 5)]);
}

/// Empty ring: equal gaps, and the seed moves them.
#[test]
fn the_first_node_gets_evenly_spaced_tokens_rotated_by_the_seed() {
    let tokens = allocate_tokens(&Ring::default(), &BTreeMap::new(), NodeId(1), VNODES, 7);
    assert_eq!(tokens.len(), usize::from(VNODES));
    let step = u128::MAX / u128::from(VNODES);
    assert!(tokens.windows(2).all(|pair| pair[1].0 - pair[0].0 == step));
    let other = allocate_tokens(&Ring::default(), &BTreeMap::new(), NodeId(1), VNODES, 8);
    assert_ne!(tokens[0], other[0]);
}

/// Re-allocating for a member returns its tokens; zero vnodes gives none.
#[test]
fn a_node_already_on_the_ring_keeps_its_tokens() {
    let ring = ring_of(&[(1, &[10, 20]), (2, &[30])]);
    let tokens = allocate_tokens(&ring, &BTreeMap::new(), NodeId(1), 4, 0);
    assert_eq!(tokens, [Token(10), Token(20)]);
    assert!(allocate_tokens(&ring, &BTreeMap::new(), NodeId(3), 0, 0).is_empty());
}

/// Tokens at 0..=7: only the wrapping arc has room, and it takes all 16.
#[test]
fn tokens_fit_between_tiny_arcs() {
    // Arcs of length 1 have no room; the one big arc takes every new token.
    let ring = ring_of(&[(1, &[0, 1, 2, 3, 4, 5, 6, 7])]);
    let tokens = allocate_tokens(&ring, &BTreeMap::from([(NodeId(1), 8)]), NodeId(2), 16, 3);
    assert_eq!(tokens.len(), 16);
    assert!(tokens.windows(2).all(|pair| pair[0] < pair[1]));
    assert!(tokens.iter().all(|token| token.0 > 7));
}

/// `fill` is the fallback for rings without room; it must still give new tokens.
#[test]
fn fill_takes_midpoints_of_the_widest_gaps() {
    let ring = ring_of(&[(1, &[0, 100])]);
    let mut tokens = Vec::new();
    fill(&ring, &mut tokens, 3);
    let half = (u128::MAX - 99) / 2;
    assert_eq!(
        tokens,
        [
            Token(100 + half),
            Token(100 + half / 2),
            Token(100 + half + half / 2)
        ]
    );
}

/// Same inputs, same tokens (also for a whole growth); another seed, other tokens.
#[test]
fn allocation_is_deterministic_and_the_seed_matters() {
    let rings = grow(&[64; 4], 11);
    let ring = &rings[3];
    let weights = (1..=4).map(|id| (NodeId(id), 64)).collect();
    let tokens = allocate_tokens(ring, &weights, NodeId(5), 64, 99);
    assert_eq!(tokens, allocate_tokens(ring, &weights, NodeId(5), 64, 99));
    assert_ne!(tokens, allocate_tokens(ring, &weights, NodeId(5), 64, 100));
    assert_eq!(rings, grow(&[64; 4], 11));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    /// Compares with a naive walk over every vnode.
    #[test]
    fn preference_list_is_every_node_once_replicas_first(
        ring in small_rings(),
        token in any::<u128>(),
        n in 0usize..6,
    ) {
        let list = ring.preference_list(Token(token), n);
        let expected = walk(&ring, Token(token));
        prop_assert_eq!(list.nodes(), expected.as_slice());
        prop_assert_eq!(list.nodes().len(), ring.len());
        prop_assert_eq!(list.replicas().len(), n.min(ring.len()));
        prop_assert_eq!(&[list.replicas(), list.fallbacks()].concat(), &expected);
        prop_assert_eq!(ring.owner(Token(token)), expected.first().copied());
        let nodes: Vec<NodeId> = ring.nodes().collect();
        prop_assert!(nodes.windows(2).all(|pair| pair[0] < pair[1]));
    }

    /// Probes every vnode token, its neighbours, both ends of the ring and random
    /// tokens: a node's ranges contain a token exactly when it is a replica of it.
    #[test]
    fn ranges_agree_with_preference_list(
        ring in small_rings(),
        n in 1usize..5,
        random in prop::collection::vec(any::<u128>(), 16),
    ) {
        let mut probes = random;
        probes.extend([0, u128::MAX]);
        for (token, _) in ring.vnodes() {
            probes.extend([token.0.wrapping_sub(1), token.0, token.0.wrapping_add(1)]);
        }
        for node in ring.nodes() {
            let ranges = ring.ranges(node, n);
            prop_assert!(ranges.iter().all(|range| range.start <= range.end));
            // Sorted, disjoint and merged: a gap of at least one token between ranges.
            prop_assert!(ranges.windows(2).all(|pair| pair[0].end.0 + 1 < pair[1].start.0));
            for probe in &probes {
                let in_ranges = ranges.iter().any(|range| range.contains(Token(*probe)));
                let replica = ring.preference_list(Token(*probe), n).is_replica(node);
                prop_assert_eq!(in_ranges, replica, "node {} token {}", node, probe);
            }
        }
    }

    /// A node's arcs cover exactly its ranges, each arc with the replicas every token
    /// in it has, and nodes sharing an arc see the same arc.
    #[test]
    fn arcs_cover_the_ranges_with_their_replicas(
        ring in small_rings(),
        n in 1usize..5,
        random in prop::collection::vec(any::<u128>(), 8),
    ) {
        for node in ring.nodes() {
            let arcs = ring.arcs(node, n);
            prop_assert!(arcs.windows(2).all(|pair| pair[0].0.end < pair[1].0.start));
            let covered: u128 = arcs.iter().map(|(r, _)| r.end.0 - r.start.0).sum::<u128>()
                .wrapping_add(arcs.len() as u128);
            let ranged: u128 = ring.ranges(node, n).iter().map(|r| r.end.0 - r.start.0).sum::<u128>()
                .wrapping_add(ring.ranges(node, n).len() as u128);
            prop_assert_eq!(covered, ranged);
            for (arc, replicas) in &arcs {
                for token in [arc.start, arc.end] {
                    let list = ring.preference_list(token, n);
                    prop_assert_eq!(list.replicas(), replicas.as_slice());
                }
                for other in replicas {
                    prop_assert!(ring.arcs(*other, n).iter().any(|(a, _)| a == arc));
                }
            }
            for probe in &random {
                let in_arcs = arcs.iter().any(|(arc, _)| arc.contains(Token(*probe)));
                prop_assert_eq!(in_arcs, ring.preference_list(Token(*probe), n).is_replica(node));
            }
        }
    }

    /// `pieces` tiles its range exactly, in order, and every token of a piece has
    /// the piece's replicas.
    #[test]
    fn pieces_tile_the_range_with_their_replicas(
        ring in small_rings(),
        n in 1usize..5,
        a in any::<u128>(),
        b in any::<u128>(),
    ) {
        let range = TokenRange { start: Token(a.min(b)), end: Token(a.max(b)) };
        let pieces = ring.pieces(range, n);
        prop_assert_eq!(pieces.first().map(|(p, _)| p.start), Some(range.start));
        prop_assert_eq!(pieces.last().map(|(p, _)| p.end), Some(range.end));
        for pair in pieces.windows(2) {
            prop_assert_eq!(pair[0].0.end.0.checked_add(1), Some(pair[1].0.start.0));
        }
        for (piece, replicas) in &pieces {
            prop_assert!(piece.start <= piece.end);
            for token in [piece.start, piece.end] {
                let list = ring.preference_list(token, n);
                prop_assert_eq!(list.replicas(), replicas.as_slice());
            }
        }
    }

    /// `moved_away` holds exactly the tokens `node` replicates on the old ring and not
    /// on the next, probed at random and at every edge of its ranges and of both
    /// rings' arcs; its ranges are sorted, apart and merged where adjacent.
    #[test]
    fn moved_away_is_what_the_old_ring_gave_the_node_and_the_next_did_not(
        old in small_rings(),
        next in small_rings(),
        n in 1usize..5,
        pick in any::<prop::sample::Index>(),
        probes in prop::collection::vec(any::<u128>(), 32),
    ) {
        let nodes: Vec<NodeId> = old.nodes().collect();
        prop_assume!(!nodes.is_empty());
        let node = nodes[pick.index(nodes.len())];
        let moved = old.moved_away(&next, node, n);
        for pair in moved.windows(2) {
            prop_assert!(pair[0].end.0.checked_add(1).is_some_and(|after| after < pair[1].start.0));
        }
        let replicates = |ring: &Ring, token: Token| {
            ring.preference_list(token, n).replicas().contains(&node)
        };
        let mut tokens: Vec<u128> = probes;
        for range in moved.iter().chain(old.ranges(node, n).iter()).chain(next.ranges(node, n).iter()) {
            for edge in [range.start.0, range.end.0] {
                tokens.extend([edge.saturating_sub(1), edge, edge.saturating_add(1)]);
            }
        }
        for token in tokens.into_iter().map(Token) {
            let expected = replicates(&old, token) && !replicates(&next, token);
            let found = moved.iter().any(|range| range.contains(token));
            prop_assert_eq!(found, expected, "token {}", token);
        }
    }

    /// Any ring, any weights: the tokens are as many as asked, sorted, new, and the
    /// same for the same inputs.
    #[test]
    fn allocated_tokens_are_new_distinct_and_reproducible(
        ring in small_rings(),
        vnodes in 1u16..48,
        seed in any::<u64>(),
    ) {
        let weights = ring.nodes().map(|node| (node, 8)).collect();
        let tokens = allocate_tokens(&ring, &weights, NodeId(100), vnodes, seed);
        prop_assert_eq!(tokens.len(), usize::from(vnodes));
        prop_assert!(tokens.windows(2).all(|pair| pair[0] < pair[1]));
        prop_assert!(ring.vnodes().all(|(token, _)| tokens.binary_search(&token).is_err()));
        prop_assert_eq!(&tokens, &allocate_tokens(&ring, &weights, NodeId(100), vnodes, seed));
    }
}
