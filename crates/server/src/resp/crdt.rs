//! Counter (`INCR`, `INCRBY`, `DECR`, `DECRBY` on PN-counters) and set (`SADD`,
//! `SREM`, `SMEMBERS` on OR-sets) commands, DESIGN.md §7.
//!
//! Not served yet: the CRDT types are not in `core` yet. Until then every one of
//! these answers an `ERR` that says so, after Redis's argument checks (arity in the
//! table, integers here), so clients already see Redis's errors for bad input. To
//! serve them, implement `execute` (arguments after the name, arity checked) and
//! answer `WRONGTYPE` for a key that holds bytes (`keyspace::Current::Value`).

use bytes::Bytes;

use super::command::{ErrorReply, Outcome, integer};
use crate::http::AppState;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CrdtCommand {
    Incr,
    IncrBy,
    Decr,
    DecrBy,
    SAdd,
    SRem,
    SMembers,
}

impl CrdtCommand {
    pub fn name(self) -> &'static str {
        match self {
            CrdtCommand::Incr => "incr",
            CrdtCommand::IncrBy => "incrby",
            CrdtCommand::Decr => "decr",
            CrdtCommand::DecrBy => "decrby",
            CrdtCommand::SAdd => "sadd",
            CrdtCommand::SRem => "srem",
            CrdtCommand::SMembers => "smembers",
        }
    }
}

pub async fn execute(_app: &AppState, command: CrdtCommand, args: &[Bytes]) -> Outcome {
    if matches!(command, CrdtCommand::IncrBy | CrdtCommand::DecrBy) {
        integer(&args[1])?;
    }
    Err(ErrorReply::err(format!(
        "'{}' needs the CRDT types (PN-counter, OR-set), which this ringkv version does not have yet",
        command.name()
    )))
}
