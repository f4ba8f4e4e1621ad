use std::collections::{BTreeMap, BTreeSet};

use proptest::prelude::*;

use super::*;
use crate::dvv::Context;

const REPLICAS: usize = 3;

/// One step of a history: an operation on a replica, or a merge into it.
#[derive(Debug, Clone)]
enum Step {
    Op(usize, Operation),
    Merge(usize, usize),
}

fn element() -> impl Strategy<Value = String> {
    prop_oneof![Just("a"), Just("b"), Just("c"), Just("d")].prop_map(str::to_owned)
}

fn operation(kind: CrdtType) -> BoxedStrategy<Operation> {
    match kind {
        CrdtType::GCounter => (0u64..5).prop_map(Operation::GCounterIncrement).boxed(),
        CrdtType::PNCounter => (-5i64..5).prop_map(Operation::PNCounterIncrement).boxed(),
        CrdtType::GSet => prop::collection::vec(element(), 1..3)
            .prop_map(Operation::GSetAdd)
            .boxed(),
        CrdtType::OrSet => (
            prop::collection::btree_set(element(), 0..3),
            prop::collection::btree_set(element(), 0..3),
        )
            .prop_filter_map("an op adds or removes", |(add, remove)| {
                let remove: Vec<String> = remove.difference(&add).cloned().collect();
                let add: Vec<String> = add.into_iter().collect();
                (!add.is_empty() || !remove.is_empty())
                    .then_some(Operation::OrSetUpdate { add, remove })
            })
            .boxed(),
        CrdtType::LwwRegister => element().prop_map(Operation::LwwSet).boxed(),
    }
}

fn steps(kind: CrdtType) -> impl Strategy<Value = Vec<Step>> {
    prop::collection::vec(
        prop_oneof![
            (0..REPLICAS, operation(kind)).prop_map(|(at, op)| Step::Op(at, op)),
            (0..REPLICAS, 0..REPLICAS).prop_map(|(at, from)| Step::Merge(at, from)),
        ],
        0..30,
    )
}

fn any_type() -> impl Strategy<Value = CrdtType> {
    prop::sample::select(CrdtType::ALL.to_vec())
}

/// What every operation did, for the model of what the joined state must show.
#[derive(Default)]
struct Model {
    /// Sum of every increment applied.
    counted: i128,
    /// Per add: the element; `removed` once a remove observed it.
    adds: Vec<(String, bool)>,
    /// Per replica: the adds it has seen (its own, and merged).
    seen: Vec<BTreeSet<usize>>,
    /// The register value of the highest marker.
    register: Option<(Marker, String)>,
}

impl Model {
    fn expected_set(&self) -> Vec<String> {
        let set: BTreeSet<String> = self
            .adds
            .iter()
            .filter(|(_, removed)| !removed)
            .map(|(e, _)| e.clone())
            .collect();
        set.into_iter().collect()
    }
}

/// Runs a history on `REPLICAS` copies (actor = replica + 1, dots numbered per
/// actor as the store numbers a key's dots), recording the model.
fn run(kind: CrdtType, steps: &[Step]) -> (Vec<CrdtState>, Model) {
    let mut states = vec![CrdtState::empty(kind); REPLICAS];
    let mut counters = [0u64; REPLICAS];
    let mut model = Model {
        seen: vec![BTreeSet::new(); REPLICAS],
        ..Model::default()
    };
    for (step, item) in steps.iter().enumerate() {
        match item {
            Step::Op(at, op) => {
                let at = *at;
                let latest_own = counters[at];
                counters[at] += 1;
                let stamp = Stamp {
                    dot: Dot {
                        actor: ActorId(at as u64 + 1),
                        counter: counters[at],
                    },
                    hlc: Hlc(step as u64 + 1),
                    latest_own,
                };
                states[at]
                    .apply(op, &stamp)
                    .expect("ops within limits apply");
                match op {
                    Operation::GCounterIncrement(n) => model.counted += i128::from(*n),
                    Operation::PNCounterIncrement(n) => model.counted += i128::from(*n),
                    Operation::GSetAdd(add) => {
                        for e in add {
                            model.adds.push((e.clone(), false));
                        }
                    }
                    Operation::OrSetUpdate { add, remove } => {
                        for id in model.seen[at].clone() {
                            if remove.contains(&model.adds[id].0) {
                                model.adds[id].1 = true;
                            }
                        }
                        for e in add {
                            model.seen[at].insert(model.adds.len());
                            model.adds.push((e.clone(), false));
                        }
                    }
                    Operation::LwwSet(value) => {
                        let marker = (stamp.hlc.0, stamp.dot.actor.0, stamp.dot.counter);
                        if model.register.as_ref().is_none_or(|(m, _)| *m < marker) {
                            model.register = Some((marker, value.clone()));
                        }
                    }
                }
            }
            Step::Merge(at, from) => {
                let other = states[*from].clone();
                states[*at].join(&other).expect("same type");
                let seen = model.seen[*from].clone();
                model.seen[*at].extend(seen);
            }
        }
    }
    (states, model)
}

fn joined(a: &CrdtState, b: &CrdtState) -> CrdtState {
    let mut out = a.clone();
    out.join(b).expect("same type");
    out
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(400))]

    /// The join of every type is commutative, associative and idempotent on states
    /// reached by any history of operations and merges.
    #[test]
    fn merge_laws_hold_for_every_type((kind, steps) in any_type().prop_flat_map(|k| (Just(k), steps(k)))) {
        let (r, _) = run(kind, &steps);
        prop_assert_eq!(joined(&r[0], &r[1]), joined(&r[1], &r[0]));
        prop_assert_eq!(
            joined(&joined(&r[0], &r[1]), &r[2]),
            joined(&r[0], &joined(&r[1], &r[2]))
        );
        prop_assert_eq!(joined(&r[0], &r[0]), r[0].clone());
        // Encoding is canonical: equal states, equal bytes, and decode inverts it.
        let ab = joined(&r[0], &r[1]).encode();
        prop_assert_eq!(&ab, &joined(&r[1], &r[0]).encode());
        prop_assert_eq!(CrdtState::decode(&ab).unwrap(), joined(&r[0], &r[1]));
    }

    /// Every operation applied on any replica survives every order of merges: all
    /// orders agree, and show what the operations did (counters: the sum of every
    /// increment; G-Set: every add; OR-Set: every add no remove observed; register:
    /// the value of the highest marker).
    #[test]
    fn operations_survive_any_merge_order((kind, steps) in any_type().prop_flat_map(|k| (Just(k), steps(k)))) {
        let (r, model) = run(kind, &steps);
        let orders = [[0, 1, 2], [0, 2, 1], [1, 0, 2], [1, 2, 0], [2, 0, 1], [2, 1, 0]];
        let all: Vec<CrdtState> = orders
            .iter()
            .map(|order| joined(&joined(&r[order[0]], &r[order[1]]), &r[order[2]]))
            .collect();
        for state in &all[1..] {
            prop_assert_eq!(state, &all[0]);
        }
        match all[0].value() {
            CrdtValue::Counter(value) => prop_assert_eq!(value, model.counted),
            CrdtValue::Set(elements) => prop_assert_eq!(elements, model.expected_set()),
            CrdtValue::Register(value) => prop_assert_eq!(
                value,
                model.register.map(|(_, v)| v).unwrap_or_default()
            ),
        }
    }

    /// The same through records (DVV siblings of states, `apply` superseding what
    /// the coordinator held, record merges): reads join siblings, no increment or
    /// add is lost, and the record merge laws hold.
    #[test]
    fn record_writes_and_merges_keep_every_operation((kind, steps) in any_type().prop_flat_map(|k| (Just(k), steps(k)))) {
        let mut records = vec![Record::default(); REPLICAS];
        let mut model = Model { seen: vec![BTreeSet::new(); REPLICAS], ..Model::default() };
        for (step, item) in steps.iter().enumerate() {
            match item {
                Step::Op(at, op) => {
                    let hlc = Hlc(step as u64 + 1);
                    let dot = apply(&mut records[*at], op, ActorId(*at as u64 + 1), 0, hlc, 0)
                        .expect("ops within limits apply");
                    prop_assert_eq!(records[*at].len(), 1, "a CRDT write supersedes all it held");
                    match op {
                        Operation::GCounterIncrement(n) => model.counted += i128::from(*n),
                        Operation::PNCounterIncrement(n) => model.counted += i128::from(*n),
                        Operation::GSetAdd(add) => {
                            model.adds.extend(add.iter().map(|e| (e.clone(), false)));
                        }
                        Operation::OrSetUpdate { add, remove } => {
                            for id in model.seen[*at].clone() {
                                if remove.contains(&model.adds[id].0) {
                                    model.adds[id].1 = true;
                                }
                            }
                            for e in add {
                                model.seen[*at].insert(model.adds.len());
                                model.adds.push((e.clone(), false));
                            }
                        }
                        Operation::LwwSet(value) => {
                            let marker = (hlc.0, dot.actor.0, dot.counter);
                            if model.register.as_ref().is_none_or(|(m, _)| *m < marker) {
                                model.register = Some((marker, value.clone()));
                            }
                        }
                    }
                }
                Step::Merge(at, from) => {
                    let other = records[*from].clone();
                    records[*at].sync(&other);
                    let seen = model.seen[*from].clone();
                    model.seen[*at].extend(seen);
                }
            }
        }
        let mut all = records[0].clone();
        all.sync(&records[1]);
        all.sync(&records[2]);
        let mut other_order = records[2].clone();
        other_order.sync(&records[0]);
        other_order.sync(&records[1]);
        prop_assert_eq!(&all, &other_order);
        let state = state_of(&all, 0).unwrap();
        prop_assert!(state.as_ref().is_none_or(|s| s.crdt_type() == kind));
        let value = state.map(|s| s.value());
        match value {
            None => prop_assert!(steps.iter().all(|s| matches!(s, Step::Merge(..)))),
            Some(CrdtValue::Counter(value)) => prop_assert_eq!(value, model.counted),
            Some(CrdtValue::Set(elements)) => prop_assert_eq!(elements, model.expected_set()),
            Some(CrdtValue::Register(value)) => {
                prop_assert_eq!(Some(value), model.register.map(|(_, v)| v));
            }
        }
    }
}

fn stamp(actor: u64, counter: u64, latest_own: u64) -> Stamp {
    Stamp {
        dot: Dot {
            actor: ActorId(actor),
            counter,
        },
        hlc: Hlc(counter),
        latest_own,
    }
}

fn counter_value(record: &Record) -> i128 {
    match state_of(record, 0).unwrap().map(|s| s.value()) {
        Some(CrdtValue::Counter(value)) => value,
        other => panic!("not a counter: {other:?}"),
    }
}

fn tombstone(record: &mut Record, actor: u64, hlc: u64) {
    let seen = record.context().clone();
    record.update(
        &seen,
        ActorId(actor),
        Sibling {
            hlc: Hlc(hlc),
            expires_at_ms: None,
            body: Body::Tombstone,
        },
    );
}

/// Why counter entries are keyed by lineage, not by actor alone: node 1 counts to
/// 3, node 2 increments concurrently with a delete on node 1, and node 1 counts
/// again after the delete. Keyed by actor (max per actor), node 1's new increments
/// would hide under its old entry in node 2's sibling.
#[test]
fn increments_after_a_delete_are_not_absorbed_by_an_older_entry() {
    let inc = Operation::PNCounterIncrement(1);
    let mut one = Record::default();
    for hlc in 1..=3 {
        apply(&mut one, &inc, ActorId(1), 0, Hlc(hlc), 0).unwrap();
    }
    let mut two = one.clone();
    apply(&mut two, &inc, ActorId(2), 0, Hlc(4), 0).unwrap();
    tombstone(&mut one, 1, 5);
    assert_eq!(state_of(&one, 0).unwrap(), None, "deleted");
    apply(&mut one, &inc, ActorId(1), 0, Hlc(6), 0).unwrap();
    apply(&mut one, &inc, ActorId(1), 0, Hlc(7), 0).unwrap();
    one.sync(&two);
    // Node 2's write (3 + 1) was concurrent with the delete and survives; node 1's
    // two increments after the delete count on top.
    assert_eq!(counter_value(&one), 6);
}

#[test]
fn a_counter_keeps_one_entry_per_node_while_nodes_take_turns() {
    let mut records = [Record::default(), Record::default()];
    for round in 0..20u64 {
        let at = (round % 2) as usize;
        let op = Operation::PNCounterIncrement(if round % 3 == 0 { -2 } else { 5 });
        apply(
            &mut records[at],
            &op,
            ActorId(at as u64 + 1),
            0,
            Hlc(round + 1),
            0,
        )
        .unwrap();
        let other = records[at].clone();
        records[1 - at].sync(&other);
    }
    let Some(CrdtState::PNCounter(counter)) = state_of(&records[0], 0).unwrap() else {
        panic!("a pn-counter");
    };
    assert_eq!(counter.entries(), 2);
    assert_eq!(counter.value(), 7 * -2 + 13 * 5);
}

#[test]
fn counters_refuse_to_leave_the_i64_range() {
    let mut counter = Counter::default();
    counter.increment(i64::MAX, &stamp(1, 1, 0)).unwrap();
    let error = counter.increment(1, &stamp(1, 2, 1)).unwrap_err();
    assert!(error.to_string().contains("counter overflow"), "{error}");
    assert_eq!(counter.value(), i128::from(i64::MAX), "unchanged");
    counter.increment(i64::MIN, &stamp(1, 2, 1)).unwrap();
    assert_eq!(counter.value(), -1);
    let too_big = Operation::GCounterIncrement(u64::MAX);
    assert!(matches!(too_big.validate(), Err(CrdtError::Invalid(_))));
}

#[test]
fn sets_refuse_elements_past_their_limits() {
    let long = "x".repeat(MAX_ELEMENT_BYTES + 1);
    let error = Operation::GSetAdd(vec![long]).validate().unwrap_err();
    assert!(error.to_string().contains("MAX_ELEMENT_BYTES"), "{error}");
    let mut set = CrdtState::empty(CrdtType::OrSet);
    let many: Vec<String> = (0..MAX_SET_ELEMENTS).map(|i| i.to_string()).collect();
    let fill = Operation::OrSetUpdate {
        add: many,
        remove: vec![],
    };
    set.apply(&fill, &stamp(1, 1, 0)).unwrap();
    let one_more = Operation::OrSetUpdate {
        add: vec!["extra".into()],
        remove: vec![],
    };
    let error = set.apply(&one_more, &stamp(1, 2, 1)).unwrap_err();
    assert!(error.to_string().contains("MAX_SET_ELEMENTS"), "{error}");
    let both = Operation::OrSetUpdate {
        add: vec!["a".into()],
        remove: vec!["a".into()],
    };
    assert!(both.validate().is_err());
}

#[test]
fn an_or_set_forgets_removed_elements() {
    let mut set = CrdtState::empty(CrdtType::OrSet);
    for i in 0..100u64 {
        let op = Operation::OrSetUpdate {
            add: vec![format!("e{i}")],
            remove: if i > 0 {
                vec![format!("e{}", i - 1)]
            } else {
                vec![]
            },
        };
        set.apply(&op, &stamp(1, i + 1, i)).unwrap();
    }
    assert_eq!(set.value(), CrdtValue::Set(vec!["e99".into()]));
    assert!(
        set.encode().len() < 32,
        "no tombstones: {} bytes",
        set.encode().len()
    );
}

#[test]
fn concurrent_add_wins_over_remove() {
    let mut a = CrdtState::empty(CrdtType::OrSet);
    let add = |e: &str| Operation::OrSetUpdate {
        add: vec![e.into()],
        remove: vec![],
    };
    let remove = |e: &str| Operation::OrSetUpdate {
        add: vec![],
        remove: vec![e.into()],
    };
    a.apply(&add("x"), &stamp(1, 1, 0)).unwrap();
    let mut b = a.clone();
    a.apply(&remove("x"), &stamp(1, 2, 1)).unwrap();
    b.apply(&add("x"), &stamp(2, 1, 0)).unwrap();
    a.join(&b).unwrap();
    assert_eq!(a.value(), CrdtValue::Set(vec!["x".into()]));
    // A remove that saw both adds wins.
    a.apply(&remove("x"), &stamp(1, 3, 2)).unwrap();
    a.join(&b).unwrap();
    assert_eq!(a.value(), CrdtValue::Set(vec![]));
}

#[test]
fn wrong_types_are_refused_and_bytes_are_not_a_crdt() {
    let mut record = Record::default();
    apply(
        &mut record,
        &Operation::GCounterIncrement(1),
        ActorId(1),
        0,
        Hlc(1),
        0,
    )
    .unwrap();
    let error = apply(
        &mut record,
        &Operation::LwwSet("x".into()),
        ActorId(1),
        0,
        Hlc(2),
        0,
    )
    .unwrap_err();
    assert_eq!(
        error,
        CrdtError::WrongType {
            held: "a gcounter".into(),
            asked: CrdtType::LwwRegister
        }
    );
    let mut bytes = Record::default();
    bytes.update(
        &Context::default(),
        ActorId(1),
        Sibling {
            hlc: Hlc(1),
            expires_at_ms: None,
            body: Body::Bytes(Bytes::from_static(b"v")),
        },
    );
    let error = apply(
        &mut bytes,
        &Operation::GSetAdd(vec!["a".into()]),
        ActorId(1),
        0,
        Hlc(2),
        0,
    )
    .unwrap_err();
    assert!(matches!(
        error,
        CrdtError::WrongType {
            asked: CrdtType::GSet,
            ..
        }
    ));
    assert_eq!(bytes.len(), 1, "nothing changed");
    // Deleted: a CRDT op creates it afresh.
    tombstone(&mut bytes, 1, 3);
    apply(
        &mut bytes,
        &Operation::GSetAdd(vec!["a".into()]),
        ActorId(1),
        0,
        Hlc(4),
        0,
    )
    .unwrap();
    assert_eq!(
        state_of(&bytes, 0).unwrap().map(|s| s.value()),
        Some(CrdtValue::Set(vec!["a".into()]))
    );
}

#[test]
fn corrupt_states_are_errors_not_panics() {
    let mut state = CrdtState::empty(CrdtType::OrSet);
    state
        .apply(
            &Operation::OrSetUpdate {
                add: vec!["a".into(), "b".into()],
                remove: vec![],
            },
            &stamp(1, 1, 0),
        )
        .unwrap();
    let good = state.encode();
    assert_eq!(CrdtState::decode(&good).unwrap(), state);
    assert!(CrdtState::decode(&[]).is_err());
    assert!(CrdtState::decode(&[9]).is_err());
    let mut trailing = good.to_vec();
    trailing.push(0);
    assert!(CrdtState::decode(&trailing).is_err());
    for cut in 0..good.len() {
        assert!(CrdtState::decode(&good[..cut]).is_err(), "cut at {cut}");
    }
    // Flipping any byte never panics (it may still decode to another valid state).
    for at in 0..good.len() {
        for flip in [1u8, 0x80, 0xff] {
            let mut bad = good.to_vec();
            bad[at] ^= flip;
            let _ = CrdtState::decode(&bad);
        }
    }
    // A dot outside the clock is an invariant broken, not a state.
    let mut outside = BTreeMap::new();
    outside.insert("a".to_string(), BTreeMap::from([(7u64, 9u64)]));
    // (Variant 3 is `OrSet`: its clock, then its entries.)
    let forged = postcard::to_stdvec(&(3u32, BTreeMap::<u64, u64>::new(), outside)).unwrap();
    let mut bytes = vec![STATE_FORMAT_V1];
    bytes.extend_from_slice(&forged);
    let error = CrdtState::decode(&bytes).unwrap_err();
    assert!(error.to_string().contains("outside its clock"), "{error}");
}
