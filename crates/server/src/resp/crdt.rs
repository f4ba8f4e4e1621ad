//! Counter (`INCR`, `INCRBY`, `DECR`, `DECRBY` on PN-counters) and set (`SADD`,
//! `SREM`, `SMEMBERS` on OR-sets) commands, DESIGN.md §7, over the same CRDT
//! operations as `POST /v1/crdt/{type}/{key}` (the key is the same key: a counter
//! made with `INCR` reads under `/v1/crdt/pncounter/{key}`).
//!
//! Differences from Redis, by design: a counter is a PN-counter, not a string
//! holding digits, so `INCR` on a key set with `SET` is `WRONGTYPE` (and `GET` of
//! a counter too); `INCR` answers the counter as a quorum read sees it right after
//! the increment (other clients' concurrent increments may be in it); `SADD` and
//! `SREM` answer how many members were new (or present) per a quorum read just
//! before, which concurrent writers can make approximate. Set members must be
//! UTF-8 (the OR-set holds text).

use bytes::Bytes;
use ringkv_cluster::{Write, WriteBody};
use ringkv_core::crdt::{self as types, CrdtState, CrdtType, CrdtValue, Operation};
use ringkv_core::{Context, Key};

use super::command::{ErrorReply, Outcome, integer, printable};
use super::frame::Reply;
use crate::http::AppState;
use crate::request::Query;

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

pub async fn execute(app: &AppState, command: CrdtCommand, args: &[Bytes]) -> Outcome {
    let key = Key::parse(args[0].clone(), &app.limits).map_err(ErrorReply::err)?;
    match command {
        CrdtCommand::Incr => increment(app, key, 1).await,
        CrdtCommand::Decr => increment(app, key, -1).await,
        CrdtCommand::IncrBy => increment(app, key, integer(&args[1])?).await,
        CrdtCommand::DecrBy => {
            let by = integer(&args[1])?;
            let by = by
                .checked_neg()
                .ok_or_else(|| ErrorReply::err("decrement would overflow"))?;
            increment(app, key, by).await
        }
        CrdtCommand::SAdd => {
            let members = members(&args[1..])?;
            let held = set_members(app, &key).await?;
            let added = distinct(&members)
                .filter(|member| !held.contains(member))
                .count();
            update(
                app,
                key,
                Operation::OrSetUpdate {
                    add: members,
                    remove: Vec::new(),
                },
            )
            .await?;
            Ok(Reply::Integer(i64::try_from(added).unwrap_or(i64::MAX)))
        }
        CrdtCommand::SRem => {
            let members = members(&args[1..])?;
            let held = set_members(app, &key).await?;
            let removed = distinct(&members)
                .filter(|member| held.contains(member))
                .count();
            if removed > 0 {
                update(
                    app,
                    key,
                    Operation::OrSetUpdate {
                        add: Vec::new(),
                        remove: members,
                    },
                )
                .await?;
            }
            Ok(Reply::Integer(i64::try_from(removed).unwrap_or(i64::MAX)))
        }
        CrdtCommand::SMembers => {
            let held = set_members(app, &key).await?;
            Ok(Reply::Set(held.into_iter().map(Reply::bulk).collect()))
        }
    }
}

/// Each member once, in the order given.
fn distinct(members: &[String]) -> impl Iterator<Item = &String> {
    members
        .iter()
        .enumerate()
        .filter(|(index, member)| !members[..*index].contains(member))
        .map(|(_, member)| member)
}

fn members(args: &[Bytes]) -> Result<Vec<String>, ErrorReply> {
    args.iter()
        .map(|arg| {
            String::from_utf8(arg.to_vec()).map_err(|_| {
                ErrorReply::err(format!(
                    "set members must be UTF-8 text: '{}' is not",
                    printable(arg)
                ))
            })
        })
        .collect()
}

/// Applies `by` to the PN-counter at `key`; answers its value read right after.
async fn increment(app: &AppState, key: Key, by: i64) -> Outcome {
    update(app, key.clone(), Operation::PNCounterIncrement(by)).await?;
    match read_state(app, &key, CrdtType::PNCounter).await? {
        Some(CrdtValue::Counter(value)) => {
            let clamped = value.clamp(i128::from(i64::MIN), i128::from(i64::MAX));
            Ok(Reply::Integer(i64::try_from(clamped).unwrap_or(i64::MAX)))
        }
        // Deleted meanwhile by another client: the increment is gone with it.
        _ => Ok(Reply::Integer(0)),
    }
}

/// The members of the OR-set at `key` (none if it does not exist).
async fn set_members(app: &AppState, key: &Key) -> Result<Vec<String>, ErrorReply> {
    match read_state(app, key, CrdtType::OrSet).await? {
        Some(CrdtValue::Set(members)) => Ok(members),
        _ => Ok(Vec::new()),
    }
}

/// The value of the CRDT at `key` after a quorum read, if it holds one of `kind`;
/// `WRONGTYPE` if it holds bytes or another type.
async fn read_state(
    app: &AppState,
    key: &Key,
    kind: CrdtType,
) -> Result<Option<CrdtValue>, ErrorReply> {
    let required = app.required(&Query::empty(), key, "r", false)?;
    let Some(record) = app.coordinator.read(key, required).await? else {
        return Ok(None);
    };
    let state: Option<CrdtState> =
        types::state_of(&record, app.node.now_ms()).map_err(|error| match error {
            types::CrdtError::WrongType { .. } => ErrorReply::wrong_type(),
            other => ErrorReply::err(other),
        })?;
    match state {
        Some(state) if state.crdt_type() != kind => Err(ErrorReply::wrong_type()),
        Some(state) => Ok(Some(state.value())),
        None => Ok(None),
    }
}

/// Sends a CRDT operation through the coordinator with the default W.
async fn update(app: &AppState, key: Key, operation: Operation) -> Result<(), ErrorReply> {
    operation.validate().map_err(ErrorReply::err)?;
    let required = app.required(&Query::empty(), &key, "w", true)?;
    let write = Write {
        key,
        body: WriteBody::Crdt(operation),
        seen: Context::default(),
        ttl: None,
    };
    app.coordinator.write(write, required, false).await?;
    Ok(())
}
