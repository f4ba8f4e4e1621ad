//! ringkv core: the pure types and algorithms every other crate shares.
//!
//! It is: keys and tokens, the hybrid logical clock, causality (dots, contexts, the
//! DVV set), records and their byte formats. It is not: I/O, async, clocks or
//! randomness of its own; every input (wall time, bytes) is passed in.
//!
//! * `key`: `Key` (validated 1..=`max_key_bytes`), `Limits`.
//! * `token`: `Token` (xxh3-128 of the key), `TokenRange`.
//! * `hlc`: `Hlc`, `HlcClock`.
//! * `dvv`: `ActorId`, `Dot`, `Context`, `DvvSet` with `sync` / `update`.
//! * `record`: `Record` (siblings of a key), `Sibling`, `Body`, `ReadView`, `ConflictPolicy`.
//! * `crdt`: CRDT record bodies (`CrdtState`, `Operation`), joined on read, applied on
//!   write (`crdt::apply`).
//! * `codec`: the stored record format and the client version token.
//! * `member`: `NodeId`, `Member` (what nodes tell each other about a node).
//! * `merkle`: `RangeTree` / `Forest`, XOR Merkle trees over token ranges (anti-entropy).
//! * `ring`: `Ring` (vnode tokens → `PreferenceList`, ranges, ownership) and
//!   `allocate_tokens` (balanced tokens for a joining node).
//! * `wire`: `PeerRequest` / `PeerResponse`, the messages of the internal RPC.
//!
//! Limits: keys ≤ `MAX_KEY_BYTES` (32 KiB) whatever the config says; version tokens ≤
//! `MAX_VERSION_TOKEN_LEN`; dot counters ≤ `MAX_COUNTER`.

pub mod codec;
pub mod crdt;
pub mod dvv;
pub mod hlc;
pub mod key;
pub mod member;
pub mod merkle;
pub mod record;
pub mod ring;
pub mod token;
pub mod wire;

pub use codec::{DecodeRecordError, MAX_VERSION_TOKEN_LEN, ParseVersionError};
pub use crdt::{CrdtError, CrdtState, CrdtType, CrdtValue, Operation};
pub use dvv::{ActorId, Context, Dot, DvvSet, MAX_COUNTER};
pub use hlc::{Hlc, HlcClock};
pub use key::{Key, Limits, MAX_KEY_BYTES, ParseKeyError};
pub use member::{Member, MemberState, NodeId};
pub use record::{Body, ConflictPolicy, ReadView, Record, Sibling};
pub use ring::{PreferenceList, Ring, allocate_tokens};
pub use token::{Token, TokenRange};
