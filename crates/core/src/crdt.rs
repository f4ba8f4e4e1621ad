//! CRDT record bodies (DESIGN.md §4, issue 8): G-Counter, PN-Counter, G-Set, OR-Set
//! (add-wins) and LWW-Register, state-based, merged by join.
//!
//! A CRDT key's record holds its state in `Body::Crdt` versions under the DVV set
//! like any other body, so every place where records meet (replication, read
//! repair, hinted handoff, anti-entropy, streaming) merges them with the record
//! merge, unchanged. Concurrent writes through different coordinators can leave
//! several states as siblings; [`state_of`] joins them (a read never shows CRDT
//! siblings), and [`apply`] joins them, applies the operation and stores the result
//! as one new version that supersedes everything the record held: a sibling
//! disappears only into a state that includes it. The record merge laws are the
//! DVV set's; the state join laws are proptested here (`crdt/tests.rs`).
//!
//! The join of every state:
//! * commutative: `a ⊔ b = b ⊔ a`; associative: `(a ⊔ b) ⊔ c = a ⊔ (b ⊔ c)`;
//!   idempotent: `a ⊔ a = a`; and an operation applied on any copy survives every
//!   order of joins.
//!
//! Limits (each refused with `CrdtError::Invalid` naming it): `MAX_SET_ELEMENTS`
//! elements per set, `MAX_ELEMENT_BYTES` per element, `MAX_REGISTER_BYTES` per
//! register value, counter values within `i64`. Stored states are decoded by
//! `CrdtState::decode`, which checks every invariant and returns an error.

mod counter;
mod orset;
#[cfg(test)]
mod tests;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

pub use counter::{Counter, CounterEntry};
pub use orset::OrSet;

use crate::dvv::{ActorId, Dot};
use crate::hlc::Hlc;
use crate::record::{Body, Record, Sibling};

/// Most elements a G-Set or OR-Set may hold; an operation that would leave more is
/// refused. (Concurrent adds through different nodes can each pass the check and
/// join to a few more; reads and merges never refuse a stored state.)
pub const MAX_SET_ELEMENTS: usize = 10_000;
/// Longest set element, in bytes of UTF-8.
pub const MAX_ELEMENT_BYTES: usize = 1024;
/// Longest LWW-Register value, in bytes of UTF-8.
pub const MAX_REGISTER_BYTES: usize = 64 * 1024;

/// Format byte of the encoded state written today.
const STATE_FORMAT_V1: u8 = 1;

/// The CRDT types a key can hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum CrdtType {
    GCounter,
    PNCounter,
    GSet,
    OrSet,
    LwwRegister,
}

impl CrdtType {
    pub const ALL: [CrdtType; 5] = [
        CrdtType::GCounter,
        CrdtType::PNCounter,
        CrdtType::GSet,
        CrdtType::OrSet,
        CrdtType::LwwRegister,
    ];

    /// The name in the HTTP path: `gcounter`, `pncounter`, `gset`, `orset`,
    /// `lwwregister`.
    pub fn name(self) -> &'static str {
        match self {
            CrdtType::GCounter => "gcounter",
            CrdtType::PNCounter => "pncounter",
            CrdtType::GSet => "gset",
            CrdtType::OrSet => "orset",
            CrdtType::LwwRegister => "lwwregister",
        }
    }

    pub fn parse(name: &str) -> Option<CrdtType> {
        CrdtType::ALL.into_iter().find(|kind| kind.name() == name)
    }
}

/// An operation on a CRDT, validated (`Operation::validate`) before it is applied.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Operation {
    GCounterIncrement(u64),
    PNCounterIncrement(i64),
    GSetAdd(Vec<String>),
    OrSetUpdate {
        add: Vec<String>,
        remove: Vec<String>,
    },
    LwwSet(String),
}

impl Operation {
    pub fn crdt_type(&self) -> CrdtType {
        match self {
            Operation::GCounterIncrement(_) => CrdtType::GCounter,
            Operation::PNCounterIncrement(_) => CrdtType::PNCounter,
            Operation::GSetAdd(_) => CrdtType::GSet,
            Operation::OrSetUpdate { .. } => CrdtType::OrSet,
            Operation::LwwSet(_) => CrdtType::LwwRegister,
        }
    }

    /// Checks the limits an operation can break on its own.
    ///
    /// # Errors
    /// `CrdtError::Invalid` naming the limit.
    pub fn validate(&self) -> Result<(), CrdtError> {
        let elements = |list: &[String], what: &str| -> Result<(), CrdtError> {
            if list.len() > MAX_SET_ELEMENTS {
                return Err(CrdtError::Invalid(format!(
                    "{} elements to {what}, more than a set may hold \
                     (MAX_SET_ELEMENTS = {MAX_SET_ELEMENTS})",
                    list.len()
                )));
            }
            if let Some(long) = list.iter().find(|e| e.len() > MAX_ELEMENT_BYTES) {
                return Err(CrdtError::Invalid(format!(
                    "a set element is {} bytes, more than MAX_ELEMENT_BYTES = {MAX_ELEMENT_BYTES}",
                    long.len()
                )));
            }
            Ok(())
        };
        match self {
            Operation::GCounterIncrement(n) if i64::try_from(*n).is_err() => {
                Err(CrdtError::Invalid(format!(
                    "counter overflow: increment {n} is beyond the counter range (at most {})",
                    i64::MAX
                )))
            }
            Operation::GCounterIncrement(_) | Operation::PNCounterIncrement(_) => Ok(()),
            Operation::GSetAdd(add) => {
                if add.is_empty() {
                    return Err(CrdtError::Invalid("nothing to add".into()));
                }
                elements(add, "add")
            }
            Operation::OrSetUpdate { add, remove } => {
                if add.is_empty() && remove.is_empty() {
                    return Err(CrdtError::Invalid("nothing to add or remove".into()));
                }
                elements(add, "add")?;
                elements(remove, "remove")?;
                if let Some(both) = add.iter().find(|e| remove.contains(e)) {
                    return Err(CrdtError::Invalid(format!(
                        "element {both:?} is both added and removed in one operation"
                    )));
                }
                Ok(())
            }
            Operation::LwwSet(value) if value.len() > MAX_REGISTER_BYTES => {
                Err(CrdtError::Invalid(format!(
                    "register value is {} bytes, more than MAX_REGISTER_BYTES = \
                     {MAX_REGISTER_BYTES}",
                    value.len()
                )))
            }
            Operation::LwwSet(_) => Ok(()),
        }
    }
}

/// Why a CRDT operation or read failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CrdtError {
    /// The key holds something else (bytes, another CRDT type, or a mix).
    #[error("key holds {held}, not a {}", asked.name())]
    WrongType { held: String, asked: CrdtType },
    /// The operation breaks a limit or is malformed.
    #[error("{0}")]
    Invalid(String),
    /// A stored state does not decode.
    #[error("stored CRDT state is corrupt: {0}")]
    Corrupt(String),
}

impl CrdtError {
    /// The same error, about an operation or read of type `asked`.
    pub fn asking(self, asked: CrdtType) -> CrdtError {
        match self {
            CrdtError::WrongType { held, .. } => CrdtError::WrongType { held, asked },
            other => other,
        }
    }
}

/// Who applies an operation, and when: the new version's dot and HLC timestamp,
/// and the writer's highest counter in the record's context before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    pub dot: Dot,
    pub hlc: Hlc,
    pub latest_own: u64,
}

/// The LWW-Register marker: HLC timestamp, then the dot (unique per write, so two
/// different values never share a marker).
pub type Marker = (u64, u64, u64);

/// A CRDT state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum CrdtState {
    GCounter(Counter),
    PNCounter(Counter),
    GSet(crdts::GSet<String>),
    OrSet(OrSet),
    LwwRegister(crdts::LWWReg<String, Marker>),
}

/// What a client is shown.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CrdtValue {
    Counter(i128),
    /// Sorted.
    Set(Vec<String>),
    Register(String),
}

impl CrdtState {
    pub fn empty(kind: CrdtType) -> CrdtState {
        match kind {
            CrdtType::GCounter => CrdtState::GCounter(Counter::default()),
            CrdtType::PNCounter => CrdtState::PNCounter(Counter::default()),
            CrdtType::GSet => CrdtState::GSet(crdts::GSet::new()),
            CrdtType::OrSet => CrdtState::OrSet(OrSet::default()),
            CrdtType::LwwRegister => CrdtState::LwwRegister(crdts::LWWReg {
                val: String::new(),
                marker: (0, 0, 0),
            }),
        }
    }

    pub fn crdt_type(&self) -> CrdtType {
        match self {
            CrdtState::GCounter(_) => CrdtType::GCounter,
            CrdtState::PNCounter(_) => CrdtType::PNCounter,
            CrdtState::GSet(_) => CrdtType::GSet,
            CrdtState::OrSet(_) => CrdtType::OrSet,
            CrdtState::LwwRegister(_) => CrdtType::LwwRegister,
        }
    }

    pub fn value(&self) -> CrdtValue {
        match self {
            CrdtState::GCounter(counter) | CrdtState::PNCounter(counter) => {
                CrdtValue::Counter(counter.value())
            }
            CrdtState::GSet(set) => CrdtValue::Set(set.read().into_iter().collect()),
            CrdtState::OrSet(set) => CrdtValue::Set(set.elements().map(str::to_owned).collect()),
            CrdtState::LwwRegister(register) => CrdtValue::Register(register.val.clone()),
        }
    }

    /// Joins another state of the same type into this one.
    ///
    /// # Errors
    /// `WrongType` when the types differ (nothing changes).
    pub fn join(&mut self, other: &CrdtState) -> Result<(), CrdtError> {
        match (self, other) {
            (CrdtState::GCounter(ours), CrdtState::GCounter(theirs))
            | (CrdtState::PNCounter(ours), CrdtState::PNCounter(theirs)) => ours.join(theirs),
            (CrdtState::GSet(ours), CrdtState::GSet(theirs)) => {
                crdts::CvRDT::merge(ours, theirs.clone());
            }
            (CrdtState::OrSet(ours), CrdtState::OrSet(theirs)) => ours.join(theirs),
            (CrdtState::LwwRegister(ours), CrdtState::LwwRegister(theirs)) => {
                // Markers are unique per write; for states that break that, the
                // larger value wins a tie so the join stays commutative.
                if theirs.marker == ours.marker {
                    if theirs.val > ours.val {
                        ours.val = theirs.val.clone();
                    }
                } else {
                    crdts::CvRDT::merge(ours, theirs.clone());
                }
            }
            (ours, theirs) => {
                return Err(CrdtError::WrongType {
                    held: format!("a {}", ours.crdt_type().name()),
                    asked: theirs.crdt_type(),
                });
            }
        }
        Ok(())
    }

    /// Applies a validated operation of this state's type under `stamp`. Nothing
    /// changes when it fails.
    ///
    /// # Errors
    /// `WrongType` for an operation of another type; `Invalid` when a limit would be
    /// broken (set size, counter range).
    pub fn apply(&mut self, operation: &Operation, stamp: &Stamp) -> Result<(), CrdtError> {
        let too_many = |count: usize| {
            CrdtError::Invalid(format!(
                "the set would hold {count} elements, more than MAX_SET_ELEMENTS = \
                 {MAX_SET_ELEMENTS}"
            ))
        };
        match (&mut *self, operation) {
            (CrdtState::GCounter(counter), Operation::GCounterIncrement(n)) => {
                let n = i64::try_from(*n).map_err(|_| {
                    CrdtError::Invalid(format!("counter overflow: increment {n} is too large"))
                })?;
                counter.increment(n, stamp)
            }
            (CrdtState::PNCounter(counter), Operation::PNCounterIncrement(n)) => {
                counter.increment(*n, stamp)
            }
            (CrdtState::GSet(set), Operation::GSetAdd(add)) => {
                let mut all = set.read();
                all.extend(add.iter().cloned());
                if all.len() > MAX_SET_ELEMENTS {
                    return Err(too_many(all.len()));
                }
                for element in add {
                    set.insert(element.clone());
                }
                Ok(())
            }
            (CrdtState::OrSet(set), Operation::OrSetUpdate { add, remove }) => {
                let after = set.len_after(add, remove);
                if after > MAX_SET_ELEMENTS && after > set.len() {
                    return Err(too_many(after));
                }
                set.apply(add, remove, stamp.dot);
                Ok(())
            }
            (CrdtState::LwwRegister(register), Operation::LwwSet(value)) => {
                register.update(
                    value.clone(),
                    (stamp.hlc.0, stamp.dot.actor.0, stamp.dot.counter),
                );
                Ok(())
            }
            (state, operation) => Err(CrdtError::WrongType {
                held: format!("a {}", state.crdt_type().name()),
                asked: operation.crdt_type(),
            }),
        }
    }

    /// The stored form: a format byte, then postcard. Equal states encode equally
    /// (every map is ordered), so Merkle digests of equal records agree.
    pub fn encode(&self) -> Bytes {
        let mut out = vec![STATE_FORMAT_V1];
        out = postcard::to_extend(self, out).expect("CRDT state encoding is infallible");
        Bytes::from(out)
    }

    /// Reads a stored state back.
    ///
    /// # Errors
    /// `Corrupt` for anything `encode` could not have written: unknown format,
    /// malformed or trailing bytes, a non-canonical encoding (unsorted or duplicate
    /// entries), a broken invariant.
    pub fn decode(bytes: &[u8]) -> Result<CrdtState, CrdtError> {
        let corrupt = |message: String| CrdtError::Corrupt(message);
        let (&format, rest) = bytes
            .split_first()
            .ok_or_else(|| corrupt("empty state".into()))?;
        if format != STATE_FORMAT_V1 {
            return Err(corrupt(format!(
                "unknown state format {format} (this build reads {STATE_FORMAT_V1})"
            )));
        }
        let (state, trailing) = postcard::take_from_bytes::<CrdtState>(rest)
            .map_err(|error| corrupt(format!("malformed state: {error}")))?;
        if !trailing.is_empty() {
            return Err(corrupt(format!("{} trailing bytes", trailing.len())));
        }
        match &state {
            CrdtState::GCounter(counter) => counter.validate(true),
            CrdtState::PNCounter(counter) => counter.validate(false),
            CrdtState::OrSet(set) => set.validate(),
            CrdtState::GSet(_) | CrdtState::LwwRegister(_) => Ok(()),
        }
        .map_err(corrupt)?;
        // Maps decode from unsorted or repeated entries too; only the canonical form
        // is accepted, so equal states always have equal bytes.
        if state.encode() != bytes {
            return Err(corrupt("state is not in canonical form".into()));
        }
        Ok(state)
    }
}

/// The join of the live CRDT versions of `record` at `now_ms` (what a read of a
/// CRDT key shows); `None` when it holds none (never written, or deleted).
///
/// # Errors
/// `WrongType` when it holds live bytes, or states of different types (concurrent
/// first writes of two types); `Corrupt` when a state does not decode.
pub fn state_of(record: &Record, now_ms: u64) -> Result<Option<CrdtState>, CrdtError> {
    let mut joined: Option<CrdtState> = None;
    let mut bytes = false;
    for (_, sibling) in record.siblings() {
        if !sibling.is_live(now_ms) {
            continue;
        }
        match &sibling.body {
            Body::Bytes(_) => bytes = true,
            Body::Crdt(encoded) => {
                let state = CrdtState::decode(encoded)?;
                match &mut joined {
                    None => joined = Some(state),
                    Some(ours) => {
                        if ours.crdt_type() != state.crdt_type() {
                            return Err(CrdtError::WrongType {
                                held: format!(
                                    "concurrent values of types {} and {} (delete it to \
                                     start over)",
                                    ours.crdt_type().name(),
                                    state.crdt_type().name()
                                ),
                                asked: ours.crdt_type(),
                            });
                        }
                        ours.join(&state)?;
                    }
                }
            }
            Body::Tombstone => {}
        }
    }
    match (bytes, joined) {
        (false, joined) => Ok(joined),
        (true, None) => Err(CrdtError::WrongType {
            held: "a plain value (read it under /v1/kv)".into(),
            asked: CrdtType::GCounter,
        }),
        (true, Some(state)) => Err(CrdtError::WrongType {
            held: format!(
                "both a plain value and a {} (concurrent writes; delete it to start over)",
                state.crdt_type().name()
            ),
            asked: state.crdt_type(),
        }),
    }
}

/// Whether `record` holds a live CRDT version at `now_ms`.
pub fn holds_crdt(record: &Record, now_ms: u64) -> bool {
    record
        .siblings()
        .any(|(_, s)| s.is_live(now_ms) && matches!(s.body, Body::Crdt(_)))
}

/// Applies `operation` to `record` as one new version by `actor` (numbered above
/// `floor`, see `DvvSet::update_above`) at `hlc`: joins the live states, applies
/// the operation and stores the result superseding every version the record held.
/// Returns the new dot. Nothing changes on error.
///
/// # Errors
/// `WrongType` when the record holds something else live; `Invalid` for a broken
/// limit; `Corrupt` when a stored state does not decode.
pub fn apply(
    record: &mut Record,
    operation: &Operation,
    actor: ActorId,
    floor: u64,
    hlc: Hlc,
    now_ms: u64,
) -> Result<Dot, CrdtError> {
    operation.validate()?;
    let asked = operation.crdt_type();
    let mut state = match state_of(record, now_ms).map_err(|error| error.asking(asked))? {
        Some(state) if state.crdt_type() == asked => state,
        Some(state) => {
            return Err(CrdtError::WrongType {
                held: format!("a {}", state.crdt_type().name()),
                asked,
            });
        }
        None => CrdtState::empty(asked),
    };
    let seen = record.context().clone();
    let latest_own = seen.max_counter(actor);
    let dot = Dot {
        actor,
        counter: latest_own.max(floor).saturating_add(1),
    };
    state.apply(
        operation,
        &Stamp {
            dot,
            hlc,
            latest_own,
        },
    )?;
    let sibling = Sibling {
        hlc,
        expires_at_ms: None,
        body: Body::Crdt(state.encode()),
    };
    let stored = record.update_above(&seen, actor, floor, sibling);
    assert_eq!(
        stored, dot,
        "the dot is numbered as update_above numbers it"
    );
    Ok(dot)
}
