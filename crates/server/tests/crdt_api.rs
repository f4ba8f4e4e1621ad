//! The CRDT endpoints of DESIGN.md §7 (issue 8) against a real node (fjall on a temp
//! dir) started in process on 127.0.0.1 with port 0: every type's operations and
//! reads, `409 wrong_type` both ways, deletes, limits and malformed operations (400,
//! nothing changes), and concurrent operations through one node all counting.

#![allow(clippy::unwrap_used)] // Tests fail loudly on anything unexpected.

mod common;

use common::{TestNode, error_code as code};
use reqwest::StatusCode;
use ringkv_server::Config;
use serde_json::{Value, json};

/// A node with the default limits: CRDT states outgrow the 1 KiB values the other
/// test binaries allow.
async fn start() -> TestNode {
    let dir = tempfile::tempdir().unwrap();
    let defaults = Config::default();
    let config = Config {
        max_value_bytes: defaults.max_value_bytes,
        max_key_bytes: defaults.max_key_bytes,
        ..common::test_config(dir.path())
    };
    common::start_with(dir, config).await
}

impl TestNode {
    async fn send(&self, request: reqwest::RequestBuilder) -> (StatusCode, Value) {
        let response = request.send().await.unwrap();
        let status = response.status();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    async fn post(&self, path: &str, body: &str) -> (StatusCode, Value) {
        let request = self
            .client
            .post(self.url(path))
            .header("content-type", "application/json")
            .body(body.to_owned());
        self.send(request).await
    }

    async fn get(&self, path: &str) -> (StatusCode, Value) {
        self.send(self.client.get(self.url(path))).await
    }

    async fn value(&self, path: &str) -> Value {
        let (status, body) = self.get(path).await;
        assert_eq!(status, 200, "{path}: {body}");
        body["value"].clone()
    }
}

fn message(body: &Value) -> &str {
    body["error"]["message"].as_str().unwrap_or("<none>")
}

#[tokio::test]
async fn every_type_applies_operations_and_reads_back() {
    let node = start().await;
    let ok = |(status, body): (StatusCode, Value)| assert_eq!(status, 200, "{body}");
    ok(node
        .post("/v1/crdt/gcounter/g", r#"{"increment": 5}"#)
        .await);
    ok(node
        .post("/v1/crdt/gcounter/g?w=1", r#"{"increment": 2}"#)
        .await);
    let (status, body) = node.get("/v1/crdt/gcounter/g?r=1").await;
    assert_eq!(status, 200);
    assert_eq!(body, json!({"type": "gcounter", "value": 7}));

    ok(node
        .post("/v1/crdt/pncounter/p", r#"{"increment": 3}"#)
        .await);
    ok(node
        .post(
            "/v1/crdt/pncounter/p?consistency=all",
            r#"{"increment": -10}"#,
        )
        .await);
    assert_eq!(node.value("/v1/crdt/pncounter/p").await, json!(-7));

    ok(node.post("/v1/crdt/gset/s", r#"{"add": ["b", "a"]}"#).await);
    ok(node.post("/v1/crdt/gset/s", r#"{"add": ["a", "c"]}"#).await);
    assert_eq!(node.value("/v1/crdt/gset/s").await, json!(["a", "b", "c"]));

    ok(node
        .post("/v1/crdt/orset/o", r#"{"add": ["x", "y", "z"]}"#)
        .await);
    ok(node
        .post("/v1/crdt/orset/o", r#"{"remove": ["y"], "add": ["w"]}"#)
        .await);
    assert_eq!(node.value("/v1/crdt/orset/o").await, json!(["w", "x", "z"]));
    ok(node
        .post("/v1/crdt/orset/o", r#"{"remove": ["nothing-here"]}"#)
        .await);
    assert_eq!(node.value("/v1/crdt/orset/o").await, json!(["w", "x", "z"]));

    ok(node
        .post("/v1/crdt/lwwregister/r", r#"{"set": "first"}"#)
        .await);
    ok(node
        .post("/v1/crdt/lwwregister/r", r#"{"set": "second"}"#)
        .await);
    assert_eq!(node.value("/v1/crdt/lwwregister/r").await, json!("second"));

    // Keys may hold slashes, as under /v1/kv.
    ok(node
        .post("/v1/crdt/gcounter/a%2Fb/c", r#"{"increment": 1}"#)
        .await);
    assert_eq!(node.value("/v1/crdt/gcounter/a/b/c").await, json!(1));
    assert_eq!(node.get("/v1/crdt/gcounter/missing").await.0, 404);
    node.stop().await;
}

#[tokio::test]
async fn a_key_holds_one_type() {
    let node = start().await;
    let put = node
        .client
        .put(format!("{}/v1/kv/plain", node.base))
        .json(&json!({"value": "bytes"}));
    assert_eq!(node.send(put).await.0, 200);
    let (status, body) = node
        .post("/v1/crdt/gcounter/plain", r#"{"increment": 1}"#)
        .await;
    assert_eq!(status, 409, "{body}");
    assert_eq!(code(&body), "wrong_type");
    let (status, body) = node.get("/v1/crdt/orset/plain").await;
    assert_eq!((status, code(&body)), (StatusCode::CONFLICT, "wrong_type"));

    assert_eq!(
        node.post("/v1/crdt/orset/set", r#"{"add": ["a"]}"#).await.0,
        200
    );
    let (status, body) = node.post("/v1/crdt/gset/set", r#"{"add": ["a"]}"#).await;
    assert_eq!((status, code(&body)), (StatusCode::CONFLICT, "wrong_type"));
    assert!(message(&body).contains("orset"), "{body}");
    let (status, body) = node.get("/v1/crdt/pncounter/set").await;
    assert_eq!((status, code(&body)), (StatusCode::CONFLICT, "wrong_type"));
    let (status, body) = node.get("/v1/kv/set").await;
    assert_eq!((status, code(&body)), (StatusCode::CONFLICT, "wrong_type"));
    let put = node
        .client
        .put(format!("{}/v1/kv/set", node.base))
        .json(&json!({"value": "over"}));
    let (status, body) = node.send(put).await;
    assert_eq!((status, code(&body)), (StatusCode::CONFLICT, "wrong_type"));
    assert_eq!(node.value("/v1/crdt/orset/set").await, json!(["a"]));
    node.stop().await;
}

/// `DELETE /v1/kv/{key}` removes a CRDT like any key; the next operation starts a
/// new one (of any type).
#[tokio::test]
async fn deleting_a_crdt_key_works_like_any_delete() {
    let node = start().await;
    for _ in 0..3 {
        assert_eq!(
            node.post("/v1/crdt/pncounter/c", r#"{"increment": 4}"#)
                .await
                .0,
            200
        );
    }
    assert_eq!(node.value("/v1/crdt/pncounter/c").await, json!(12));
    let delete = node.client.delete(format!("{}/v1/kv/c", node.base));
    assert_eq!(node.send(delete).await.0, 200);
    assert_eq!(node.get("/v1/crdt/pncounter/c").await.0, 404);
    assert_eq!(node.get("/v1/kv/c").await.0, 404);
    assert_eq!(
        node.post("/v1/crdt/pncounter/c", r#"{"increment": 1}"#)
            .await
            .0,
        200
    );
    assert_eq!(node.value("/v1/crdt/pncounter/c").await, json!(1));
    let delete = node.client.delete(format!("{}/v1/kv/c", node.base));
    assert_eq!(node.send(delete).await.0, 200);
    assert_eq!(
        node.post("/v1/crdt/gset/c", r#"{"add": ["new"]}"#).await.0,
        200
    );
    assert_eq!(node.value("/v1/crdt/gset/c").await, json!(["new"]));
    node.stop().await;
}

#[tokio::test]
async fn bad_operations_are_400_and_change_nothing() {
    let node = start().await;
    assert_eq!(
        node.post("/v1/crdt/gcounter/g", r#"{"increment": 1}"#)
            .await
            .0,
        200
    );
    let huge = format!(r#"{{"add": ["{}"]}}"#, "x".repeat(2000));
    let cases: Vec<(&str, String, &str)> = vec![
        (
            "/v1/crdt/gcounter/g",
            r#"{"increment": -1}"#.into(),
            "only grows",
        ),
        (
            "/v1/crdt/gcounter/g",
            r#"{"increment": 0.5}"#.into(),
            "integer",
        ),
        (
            "/v1/crdt/gcounter/g",
            r#"{"increment": "2"}"#.into(),
            "integer",
        ),
        (
            "/v1/crdt/gcounter/g",
            r#"{"increment": 1"#.into(),
            "invalid JSON",
        ),
        (
            "/v1/crdt/gcounter/g",
            r#"{"add": ["a"]}"#.into(),
            "not an operation",
        ),
        (
            "/v1/crdt/gcounter/g",
            r#"{"increment": 9223372036854775807}"#.into(),
            "counter overflow",
        ),
        (
            "/v1/crdt/bag/g",
            r#"{"increment": 1}"#.into(),
            "unknown CRDT type",
        ),
        ("/v1/crdt/gcounter/g?w=9", r#"{"increment": 1}"#.into(), "w"),
        (
            "/v1/crdt/gcounter/g?bogus=1",
            r#"{"increment": 1}"#.into(),
            "bogus",
        ),
        ("/v1/crdt/orset/o", huge, "MAX_ELEMENT_BYTES"),
        (
            "/v1/crdt/lwwregister/r",
            r#"{"set": null}"#.into(),
            "string",
        ),
    ];
    for (path, body, expected) in cases {
        let (status, answer) = node.post(path, &body).await;
        assert_eq!(status, 400, "{path} {body}: {answer}");
        assert_eq!(code(&answer), "invalid_request");
        assert!(
            message(&answer).contains(expected),
            "{path} {body}: {answer}"
        );
    }
    assert_eq!(node.value("/v1/crdt/gcounter/g").await, json!(1));
    assert_eq!(node.get("/v1/crdt/orset/o").await.0, 404);
    assert_eq!(node.get("/v1/crdt/bag/g").await.0, 400);
    node.stop().await;
}

/// Operations racing on one coordinator are applied one after the other under the
/// key's lock: none is lost.
#[tokio::test]
async fn concurrent_increments_through_one_node_all_count() {
    let node = std::sync::Arc::new(start().await);
    let mut tasks = Vec::new();
    for i in 0..40 {
        let node = node.clone();
        tasks.push(tokio::spawn(async move {
            let (status, body) = node
                .post("/v1/crdt/pncounter/race", r#"{"increment": 1}"#)
                .await;
            assert_eq!(status, 200, "{body}");
            let (status, body) = node
                .post(
                    "/v1/crdt/orset/race-set",
                    &format!(r#"{{"add": ["e{i}"]}}"#),
                )
                .await;
            assert_eq!(status, 200, "{body}");
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    assert_eq!(node.value("/v1/crdt/pncounter/race").await, json!(40));
    let set = node.value("/v1/crdt/orset/race-set").await;
    assert_eq!(set.as_array().map(Vec::len), Some(40));
    let node = std::sync::Arc::into_inner(node).expect("tasks are done");
    node.stop().await;
}
