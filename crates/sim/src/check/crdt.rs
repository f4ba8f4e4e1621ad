//! CRDT invariants after heal (issue 8), on the merge of the replicas' records of
//! each CRDT key (convergence itself is `state::convergence` over the CRDT keys):
//! * the record reads as one state of the key's type (no wrong type, no corrupt
//!   state), and so did every read during the run;
//! * a counter's value is at least the sum of acknowledged increments plus every
//!   failed decrement, and at most that sum plus every failed increment (an
//!   operation counts once or not at all: acked ones must, failed ones may);
//! * an OR-set holds only elements some client added, and every acknowledged add,
//!   unless a remove of it was attempted and an applied write whose version
//!   includes the add's dot (it observed the add) holds a state without it;
//! * a dot is issued once per CRDT key (ground truth of applied writes).

use std::collections::{BTreeMap, BTreeSet};

use ringkv_core::crdt::{CrdtState, state_of};
use ringkv_core::{Body, CrdtType, Dot, Key, Record};

use crate::crdt::{CRDT_KEYS, CrdtEntry, CrdtOp, CrdtOutcome};
use crate::sim::Applied;

/// The or-set state an applied write stored, if it is one.
fn applied_set(applied: &Applied) -> Option<ringkv_core::crdt::OrSet> {
    match &applied.sibling.body {
        Body::Crdt(bytes) => match CrdtState::decode(bytes) {
            Ok(CrdtState::OrSet(set)) => Some(set),
            _ => None,
        },
        _ => None,
    }
}

pub fn crdt_invariants(
    history: &[CrdtEntry],
    applied: &[Applied],
    keys: &[(Key, CrdtType)],
    merged: &[Option<Record>],
) -> Vec<String> {
    let mut violations = Vec::new();
    for (index, ((key, kind), record)) in keys.iter().zip(merged).enumerate() {
        let name = CRDT_KEYS[index].0;
        let entries: Vec<&CrdtEntry> = history.iter().filter(|e| e.key == index).collect();
        let applied: Vec<&Applied> = applied
            .iter()
            .filter(|a| a.key.as_ref() == key.as_bytes())
            .collect();
        let mut dots = BTreeSet::new();
        for write in &applied {
            if !dots.insert(write.dot) {
                violations.push(format!("{name}: dot {:?} applied twice", write.dot));
            }
        }
        for entry in &entries {
            if let CrdtOutcome::Read(Some(read)) = &entry.outcome {
                match state_of(read, 0) {
                    Ok(Some(state)) if state.crdt_type() != *kind => violations.push(format!(
                        "{name}: a read at {} showed a {}",
                        entry.end,
                        state.crdt_type().name()
                    )),
                    Ok(_) => {}
                    Err(error) => violations.push(format!("{name}: a read failed: {error}")),
                }
            }
        }
        let acked_any = entries
            .iter()
            .any(|e| matches!(e.outcome, CrdtOutcome::Acked));
        let state = match record.as_ref().map(|record| state_of(record, 0)) {
            None | Some(Ok(None)) => {
                if acked_any {
                    violations.push(format!("{name}: acked operations, but nothing is held"));
                }
                continue;
            }
            Some(Err(error)) => {
                violations.push(format!("{name}: the merged record: {error}"));
                continue;
            }
            Some(Ok(Some(state))) => state,
        };
        if state.crdt_type() != *kind {
            violations.push(format!("{name}: holds a {}", state.crdt_type().name()));
            continue;
        }
        match state {
            CrdtState::GCounter(counter) | CrdtState::PNCounter(counter) => {
                let (mut low, mut high) = (0i128, 0i128);
                for entry in &entries {
                    let CrdtOp::Increment(by) = entry.op else {
                        continue;
                    };
                    let by = i128::from(by);
                    match entry.outcome {
                        CrdtOutcome::Acked => {
                            low += by;
                            high += by;
                        }
                        _ if by < 0 => low += by,
                        _ => high += by,
                    }
                }
                let value = counter.value();
                if value < low || value > high {
                    violations.push(format!(
                        "{name}: counter reads {value}, outside {low}..={high} (acked and \
                         attempted increments)"
                    ));
                }
            }
            CrdtState::OrSet(set) => {
                let attempted: BTreeSet<&str> = entries
                    .iter()
                    .filter_map(|e| match &e.op {
                        CrdtOp::Add(element) => Some(element.as_str()),
                        _ => None,
                    })
                    .collect();
                let removes: BTreeSet<&str> = entries
                    .iter()
                    .filter_map(|e| match &e.op {
                        CrdtOp::Remove(elements) => Some(elements),
                        _ => None,
                    })
                    .flatten()
                    .map(String::as_str)
                    .collect();
                for element in set.elements() {
                    if !attempted.contains(element) {
                        violations.push(format!("{name}: holds {element}, which nobody added"));
                    }
                }
                // The dot of each add, from the state its write stored.
                let mut add_dot: BTreeMap<&str, Dot> = BTreeMap::new();
                for write in &applied {
                    if let Some(stored) = applied_set(write) {
                        for element in &attempted {
                            if stored.dots(element).any(|dot| dot == write.dot) {
                                add_dot.insert(element, write.dot);
                            }
                        }
                    }
                }
                for entry in &entries {
                    let (CrdtOp::Add(element), CrdtOutcome::Acked) = (&entry.op, &entry.outcome)
                    else {
                        continue;
                    };
                    if set.contains(element) {
                        continue;
                    }
                    let Some(dot) = add_dot.get(element.as_str()) else {
                        violations
                            .push(format!("{name}: acked add of {element} was never applied"));
                        continue;
                    };
                    let observed_removal = removes.contains(element.as_str())
                        && applied.iter().any(|write| {
                            write.version.contains(*dot)
                                && applied_set(write)
                                    .is_some_and(|stored| !stored.dots(element).any(|d| d == *dot))
                        });
                    if !observed_removal {
                        violations.push(format!(
                            "{name}: acked add of {element} ({dot:?}) is lost: no remove \
                             observed it"
                        ));
                    }
                }
            }
            _ => {}
        }
    }
    violations
}
