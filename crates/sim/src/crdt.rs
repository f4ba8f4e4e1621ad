//! CRDT clients (issue 8): increments of a PN-counter and a G-counter, adds and
//! removes on two OR-sets, and reads, through random nodes with random quorums,
//! under the same faults as the key-value clients. Their history is kept apart
//! from the key-value one (`CrdtEntry`), for `check::crdt`.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use ringkv_cluster::{Write, WriteBody};
use ringkv_core::{Context, CrdtType, Key, Limits, Operation, Record};

use crate::exec::{Owner, lock, oneshot};
use crate::sim::{Event, Fault, Sim};
use crate::workload::Workload;

/// The CRDT keys of every run and their types.
pub const CRDT_KEYS: [(&str, CrdtType); 4] = [
    ("p0", CrdtType::PNCounter),
    ("g0", CrdtType::GCounter),
    ("s0", CrdtType::OrSet),
    ("s1", CrdtType::OrSet),
];

pub fn crdt_keys() -> Vec<(Key, CrdtType)> {
    CRDT_KEYS
        .iter()
        .map(|(name, kind)| {
            let key = Key::parse(*name, &Limits::default()).expect("short keys are valid");
            (key, *kind)
        })
        .collect()
}

/// A CRDT client request.
#[derive(Debug, Clone)]
pub enum CrdtOp {
    Increment(i64),
    Add(String),
    Remove(Vec<String>),
    Read,
}

#[derive(Debug, Clone)]
pub enum CrdtOutcome {
    Acked,
    Read(Option<Record>),
    /// Failed or unknown: a failed operation may still have been applied.
    Failed(String),
}

#[derive(Debug, Clone)]
pub struct CrdtEntry {
    pub client: usize,
    pub node: usize,
    pub quorum: u8,
    /// Index into `CRDT_KEYS`.
    pub key: usize,
    pub op: CrdtOp,
    pub start: u64,
    pub end: u64,
    pub outcome: CrdtOutcome,
}

pub type CrdtHistory = Arc<Mutex<Vec<CrdtEntry>>>;

/// Runs one CRDT client: half of `w.ops_per_client` requests, one after the other
/// (two such clients put about one key-value client's load on the cluster).
pub async fn crdt_client(sim: Arc<Sim>, id: usize, history: CrdtHistory, w: Workload) {
    let nodes = lock(&sim.nodes).len();
    let keys = crdt_keys();
    // What this client last read of each set, and what it added.
    let mut last_read: BTreeMap<usize, Vec<String>> = BTreeMap::new();
    let mut added: Vec<(usize, String)> = Vec::new();
    for n in 0..w.ops_per_client.div_ceil(2) {
        let think = sim.random(|rng| rng.range(0, 40));
        sim.sleep(think).await;
        let (node, key, quorum, roll, amount, pick) = sim.random(|rng| {
            (
                rng.index(nodes),
                rng.index(keys.len()),
                u8::try_from(rng.range(1, u64::from(w.replication_factor))).unwrap_or(1),
                rng.below(100),
                rng.range(0, 7),
                rng.next_u64(),
            )
        });
        let kind = keys[key].1;
        let op = match kind {
            _ if roll >= 75 => CrdtOp::Read,
            CrdtType::PNCounter => CrdtOp::Increment(i64::try_from(amount).unwrap_or(0) - 2),
            CrdtType::GCounter => CrdtOp::Increment(i64::try_from(amount).unwrap_or(0) + 1),
            _ if roll < 45 => CrdtOp::Add(format!("c{id}-{n}")),
            _ => {
                // Remove something seen in the last read, else something added.
                let seen = last_read.get(&key).filter(|seen| !seen.is_empty());
                let mine: Vec<&String> = added
                    .iter()
                    .filter(|(k, _)| *k == key)
                    .map(|(_, e)| e)
                    .collect();
                match (seen, mine.is_empty()) {
                    (Some(seen), _) => {
                        CrdtOp::Remove(vec![seen[(pick as usize) % seen.len()].clone()])
                    }
                    (None, false) => {
                        CrdtOp::Remove(vec![mine[(pick as usize) % mine.len()].clone()])
                    }
                    (None, true) => CrdtOp::Add(format!("c{id}-{n}")),
                }
            }
        };
        let quorum = if w.disk_loss && !matches!(op, CrdtOp::Read) {
            quorum.max(2).min(w.replication_factor)
        } else {
            quorum
        };
        let operation = match (&op, kind) {
            (CrdtOp::Increment(by), CrdtType::GCounter) => {
                Some(Operation::GCounterIncrement(by.unsigned_abs()))
            }
            (CrdtOp::Increment(by), _) => Some(Operation::PNCounterIncrement(*by)),
            (CrdtOp::Add(element), _) => Some(Operation::OrSetUpdate {
                add: vec![element.clone()],
                remove: vec![],
            }),
            (CrdtOp::Remove(elements), _) => Some(Operation::OrSetUpdate {
                add: vec![],
                remove: elements.clone(),
            }),
            (CrdtOp::Read, _) => None,
        };
        if let CrdtOp::Add(element) = &op {
            added.push((key, element.clone()));
        }
        let start = sim.now();
        let outcome = request(&sim, node, keys[key].0.clone(), operation, quorum).await;
        if let (CrdtOutcome::Read(record), CrdtType::OrSet) = (&outcome, kind) {
            let elements = record
                .as_ref()
                .and_then(|record| ringkv_core::crdt::state_of(record, 0).ok().flatten())
                .map(|state| match state.value() {
                    ringkv_core::CrdtValue::Set(elements) => elements,
                    _ => Vec::new(),
                })
                .unwrap_or_default();
            last_read.insert(key, elements);
        }
        let result = match &outcome {
            CrdtOutcome::Acked => "ok".to_string(),
            CrdtOutcome::Read(record) => format!(
                "ok {} versions",
                record.as_ref().map_or(0, |record| record.len())
            ),
            CrdtOutcome::Failed(why) => format!("FAILED {why}"),
        };
        sim.log(&format!(
            "crdt c{id} via n{node} q={quorum} {op:?} {} -> {result}",
            CRDT_KEYS[key].0
        ));
        lock(&history).push(CrdtEntry {
            client: id,
            node,
            quorum,
            key,
            op,
            start,
            end: sim.now(),
            outcome,
        });
    }
}

/// One CRDT request through node `node`'s coordinator, as that node's task (a
/// crash kills it); `operation` `None` is a read.
async fn request(
    sim: &Arc<Sim>,
    node: usize,
    key: Key,
    operation: Option<Operation>,
    quorum: u8,
) -> CrdtOutcome {
    let Some(target) = sim.node(node) else {
        return CrdtOutcome::Failed("connection refused".into());
    };
    let (tx, rx) = oneshot();
    let coordinator = target.coordinator.clone();
    sim.spawn(
        Owner::Node(node),
        Box::pin(async move {
            let outcome = match operation {
                Some(operation) => {
                    let write = Write {
                        key,
                        body: WriteBody::Crdt(operation),
                        seen: Context::default(),
                        ttl: None,
                    };
                    match coordinator.write_acked(write, quorum, false).await {
                        Ok(_) => CrdtOutcome::Acked,
                        Err(error) => CrdtOutcome::Failed(error.to_string()),
                    }
                }
                None => match coordinator.read(&key, quorum).await {
                    Ok(record) => CrdtOutcome::Read(record),
                    Err(error) => CrdtOutcome::Failed(error.to_string()),
                },
            };
            tx.send(outcome);
        }),
    );
    let outcome = rx
        .await
        .unwrap_or_else(|| CrdtOutcome::Failed("node crashed during the request".into()));
    if matches!(outcome, CrdtOutcome::Acked) {
        // As for key-value writes: the coordinator may die the moment it answered.
        let mut core = lock(&sim.core);
        let per_mille = core.crash_coordinator_per_mille;
        if core.crash_now(per_mille) {
            let now = core.now;
            core.schedule(now, Event::Fault(Fault::Crash(node)));
        }
    }
    outcome
}
