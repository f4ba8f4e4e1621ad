//! The CRDT part of the HTTP API (DESIGN.md §7, issue 8):
//! `POST /v1/crdt/{type}/{key}` with an operation and `GET /v1/crdt/{type}/{key}` →
//! `{"type": "...", "value": ...}`, with `?r=` / `?w=` / `?consistency=` like any key.
//!
//! Operations: `gcounter` `{"increment": n}` (n ≥ 0), `pncounter`
//! `{"increment": n}`, `gset` `{"add": [...]}`, `orset` `{"add": [...], "remove":
//! [...]}`, `lwwregister` `{"set": "..."}`. Every field is checked here, once (400
//! `invalid_request` naming what is wrong or which limit was hit); the replica that
//! applies the operation checks the type the key holds (409 `wrong_type`).

use std::sync::Arc;

use axum::Json;
use axum::extract::{OriginalUri, Request, State};
use axum::response::{IntoResponse, Response};
use percent_encoding::percent_decode_str;
use ringkv_cluster::{Write, WriteBody};
use ringkv_core::crdt::{self, MAX_ELEMENT_BYTES, MAX_REGISTER_BYTES, MAX_SET_ELEMENTS};
use ringkv_core::{Context, CrdtError, CrdtType, CrdtValue, Key, Limits, Operation};
use serde_json::{Map, Value, json};

use crate::error::ApiError;
use crate::http::AppState;
use crate::request::{self, Query};

const CRDT_PREFIX: &str = "/v1/crdt/";

/// Largest operation body accepted: a full set of the longest elements, escaped.
const MAX_OPERATION_BYTES: usize = {
    let set = MAX_SET_ELEMENTS * (2 * MAX_ELEMENT_BYTES + 4);
    let register = 2 * MAX_REGISTER_BYTES;
    (if set > register { set } else { register }) + 64 * 1024
};

/// The type and key named by a `/v1/crdt/{type}/{key}` path (the key is the rest
/// of the path, percent-decoded, as under `/v1/kv`).
pub fn crdt_path(path: &str, limits: &Limits) -> Result<(CrdtType, Key), ApiError> {
    let rest = path.strip_prefix(CRDT_PREFIX).unwrap_or("");
    let (name, raw_key) = rest.split_once('/').unwrap_or((rest, ""));
    let kind = CrdtType::parse(name).ok_or_else(|| {
        ApiError::invalid(format!(
            "unknown CRDT type `{name}` (known: {})",
            CrdtType::ALL.map(CrdtType::name).join(", ")
        ))
    })?;
    let bytes: Vec<u8> = percent_decode_str(raw_key).collect();
    let key = Key::parse(bytes, limits).map_err(|error| match error {
        ringkv_core::ParseKeyError::TooLong { .. } => ApiError::TooLarge(error.to_string()),
        ringkv_core::ParseKeyError::Empty => {
            ApiError::invalid("key is empty: use /v1/crdt/{type}/{key}")
        }
    })?;
    Ok((kind, key))
}

/// A list of strings under `field`.
fn strings(field: &str, value: &Value) -> Result<Vec<String>, ApiError> {
    let items = value
        .as_array()
        .ok_or_else(|| ApiError::invalid(format!("`{field}` must be an array of strings")))?;
    if items.len() > MAX_SET_ELEMENTS {
        return Err(ApiError::invalid(format!(
            "`{field}` has {} elements, more than a set may hold (MAX_SET_ELEMENTS = \
             {MAX_SET_ELEMENTS})",
            items.len()
        )));
    }
    items
        .iter()
        .map(|item| {
            item.as_str()
                .map(str::to_owned)
                .ok_or_else(|| ApiError::invalid(format!("`{field}` must hold only strings")))
        })
        .collect()
}

/// Parses the JSON body of an operation on a `kind`.
///
/// # Errors
/// 400 for bad JSON, fields that do not belong to `kind`, wrong field types, a
/// non-integer or (gcounter) negative increment, and every limit of
/// `Operation::validate`.
pub fn parse_operation(kind: CrdtType, raw: &[u8]) -> Result<Operation, ApiError> {
    let body: Value = serde_json::from_slice(raw)
        .map_err(|error| ApiError::invalid(format!("invalid JSON body: {error}")))?;
    let Value::Object(fields) = body else {
        return Err(ApiError::invalid("the operation must be a JSON object"));
    };
    let allowed: &[&str] = match kind {
        CrdtType::GCounter | CrdtType::PNCounter => &["increment"],
        CrdtType::GSet => &["add"],
        CrdtType::OrSet => &["add", "remove"],
        CrdtType::LwwRegister => &["set"],
    };
    if let Some(unknown) = fields.keys().find(|name| !allowed.contains(&name.as_str())) {
        return Err(ApiError::invalid(format!(
            "`{unknown}` is not an operation on a {} (expected: {})",
            kind.name(),
            allowed.join(", ")
        )));
    }
    let required = |fields: &Map<String, Value>, name: &str| -> Result<Value, ApiError> {
        fields
            .get(name)
            .cloned()
            .ok_or_else(|| ApiError::invalid(format!("missing `{name}` for a {}", kind.name())))
    };
    let operation = match kind {
        CrdtType::GCounter | CrdtType::PNCounter => {
            let increment = required(&fields, "increment")?;
            let Value::Number(number) = &increment else {
                return Err(ApiError::invalid("`increment` must be an integer"));
            };
            if !(number.is_i64() || number.is_u64()) {
                return Err(ApiError::invalid(format!(
                    "`increment` must be an integer, got {number}"
                )));
            }
            match (kind, number.as_i64(), number.as_u64()) {
                (CrdtType::GCounter, Some(n), _) if n < 0 => {
                    return Err(ApiError::invalid(format!(
                        "a gcounter only grows: `increment` must be ≥ 0, got {n} (use a pncounter)"
                    )));
                }
                (CrdtType::GCounter, _, Some(n)) => Operation::GCounterIncrement(n),
                (_, Some(n), _) => Operation::PNCounterIncrement(n),
                (_, None, _) => {
                    return Err(ApiError::invalid(format!(
                        "counter overflow: increment {number} is beyond the counter range \
                         {}..={}",
                        i64::MIN,
                        i64::MAX
                    )));
                }
            }
        }
        CrdtType::GSet => Operation::GSetAdd(strings("add", &required(&fields, "add")?)?),
        CrdtType::OrSet => {
            let list = |name: &str| match fields.get(name) {
                Some(value) => strings(name, value),
                None => Ok(Vec::new()),
            };
            Operation::OrSetUpdate {
                add: list("add")?,
                remove: list("remove")?,
            }
        }
        CrdtType::LwwRegister => match required(&fields, "set")? {
            Value::String(value) => Operation::LwwSet(value),
            _ => return Err(ApiError::invalid("`set` must be a string")),
        },
    };
    operation
        .validate()
        .map_err(|error| ApiError::invalid(error.to_string()))?;
    Ok(operation)
}

/// The JSON of a value. A counter outside `i64` (concurrent increments through
/// different nodes can each pass the bound and join past it) reads as the bound.
fn value_json(value: CrdtValue) -> Value {
    match value {
        CrdtValue::Counter(count) => {
            let clamped = count.clamp(i128::from(i64::MIN), i128::from(i64::MAX));
            json!(i64::try_from(clamped).unwrap_or(i64::MAX))
        }
        CrdtValue::Set(elements) => json!(elements),
        CrdtValue::Register(text) => json!(text),
    }
}

fn api_error(error: CrdtError) -> ApiError {
    match error {
        CrdtError::WrongType { .. } => ApiError::WrongType(error.to_string()),
        CrdtError::Invalid(message) => ApiError::InvalidRequest(message),
        CrdtError::Corrupt(message) => ApiError::Corrupt(message),
    }
}

/// `GET /v1/crdt/{type}/{key}`: the join of what `r` replicas hold.
pub async fn get_crdt(
    State(app): State<Arc<AppState>>,
    OriginalUri(uri): OriginalUri,
) -> Result<Response, ApiError> {
    let query = Query::parse(uri.query(), &["r", "w", "consistency"])?;
    let (kind, key) = crdt_path(uri.path(), &app.limits)?;
    let required = app.required(&query, &key, "r", false)?;
    let record = app.coordinator.read(&key, required).await?;
    let Some(record) = record else {
        return Err(ApiError::NotFound);
    };
    let state = crdt::state_of(&record, app.node.now_ms())
        .map_err(|error| api_error(error.asking(kind)))?
        .ok_or(ApiError::NotFound)?;
    if state.crdt_type() != kind {
        return Err(api_error(CrdtError::WrongType {
            held: format!("a {}", state.crdt_type().name()),
            asked: kind,
        }));
    }
    Ok(Json(json!({"type": kind.name(), "value": value_json(state.value())})).into_response())
}

/// `POST /v1/crdt/{type}/{key}`: applies the operation on one replica (joined with
/// what it holds) and answers once `w` replicas hold the result durably.
pub async fn update_crdt(
    State(app): State<Arc<AppState>>,
    OriginalUri(uri): OriginalUri,
    request: Request,
) -> Result<Response, ApiError> {
    let query = Query::parse(uri.query(), &["r", "w", "consistency"])?;
    let (kind, key) = crdt_path(uri.path(), &app.limits)?;
    let required = app.required(&query, &key, "w", true)?;
    let (parts, body) = request.into_parts();
    let raw = request::read_body(
        body,
        &parts.headers,
        MAX_OPERATION_BYTES,
        &app.body_budget,
        app.stall_timeout,
    )
    .await?;
    let operation = parse_operation(kind, &raw)?;
    let write = Write {
        key,
        body: WriteBody::Crdt(operation),
        seen: Context::default(),
        ttl: None,
    };
    app.coordinator.write(write, required, false).await?;
    Ok(Json(json!({"type": kind.name(), "status": "ok"})).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(kind: CrdtType, body: &str) -> Result<Operation, String> {
        parse_operation(kind, body.as_bytes()).map_err(|error| error.to_string())
    }

    #[test]
    fn paths_name_a_known_type_and_a_key() {
        let limits = Limits::default();
        let (kind, key) = crdt_path("/v1/crdt/orset/a%2Fb/c", &limits).unwrap();
        assert_eq!(kind, CrdtType::OrSet);
        assert_eq!(key.as_bytes(), b"a/b/c");
        assert!(crdt_path("/v1/crdt/bag/k", &limits).is_err());
        assert!(crdt_path("/v1/crdt/gset/", &limits).is_err());
        assert!(crdt_path("/v1/crdt/gset", &limits).is_err());
    }

    #[test]
    fn operations_are_parsed_per_type() {
        assert_eq!(
            parse(CrdtType::PNCounter, r#"{"increment": -3}"#),
            Ok(Operation::PNCounterIncrement(-3))
        );
        assert_eq!(
            parse(CrdtType::GCounter, r#"{"increment": 4}"#),
            Ok(Operation::GCounterIncrement(4))
        );
        assert_eq!(
            parse(CrdtType::OrSet, r#"{"add": ["a"], "remove": ["b"]}"#),
            Ok(Operation::OrSetUpdate {
                add: vec!["a".into()],
                remove: vec!["b".into()]
            })
        );
        assert_eq!(
            parse(CrdtType::LwwRegister, r#"{"set": "x"}"#),
            Ok(Operation::LwwSet("x".into()))
        );
    }

    #[test]
    fn malformed_operations_say_what_is_wrong() {
        let cases = [
            (CrdtType::GCounter, "{", "invalid JSON"),
            (CrdtType::GCounter, "[1]", "JSON object"),
            (CrdtType::GCounter, r#"{"increment": -1}"#, "only grows"),
            (CrdtType::GCounter, r#"{"increment": 1.5}"#, "integer"),
            (CrdtType::GCounter, r#"{"increment": "1"}"#, "integer"),
            (
                CrdtType::GCounter,
                r#"{"increment": 18446744073709551615}"#,
                "overflow",
            ),
            (
                CrdtType::PNCounter,
                r#"{"increment": 9223372036854775808}"#,
                "overflow",
            ),
            (CrdtType::PNCounter, r#"{"add": ["a"]}"#, "not an operation"),
            (CrdtType::PNCounter, r#"{}"#, "missing `increment`"),
            (
                CrdtType::GSet,
                r#"{"add": ["a"], "remove": ["a"]}"#,
                "not an operation",
            ),
            (CrdtType::GSet, r#"{"add": [1]}"#, "only strings"),
            (CrdtType::GSet, r#"{"add": []}"#, "nothing to add"),
            (CrdtType::OrSet, r#"{}"#, "nothing to add or remove"),
            (
                CrdtType::OrSet,
                r#"{"add": ["a"], "remove": ["a"]}"#,
                "both added and removed",
            ),
            (CrdtType::LwwRegister, r#"{"set": 5}"#, "must be a string"),
        ];
        for (kind, body, expected) in cases {
            let error = parse(kind, body).unwrap_err();
            assert!(error.contains(expected), "{body}: {error}");
        }
        let long = format!(r#"{{"add": ["{}"]}}"#, "x".repeat(MAX_ELEMENT_BYTES + 1));
        assert!(
            parse(CrdtType::OrSet, &long)
                .unwrap_err()
                .contains("MAX_ELEMENT_BYTES")
        );
    }

    #[test]
    fn counters_beyond_i64_read_as_the_bound() {
        assert_eq!(value_json(CrdtValue::Counter(i128::MAX)), json!(i64::MAX));
        assert_eq!(value_json(CrdtValue::Counter(-5)), json!(-5));
    }
}
