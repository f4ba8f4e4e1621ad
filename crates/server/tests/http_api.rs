//! The HTTP API of DESIGN.md §7 against a real node (fjall on a temp dir) started in
//! process on 127.0.0.1 with port 0: happy paths, conflicts, TTL, and every kind of
//! bad input the foundation issue lists (none may panic, hang or change data).

#![allow(clippy::unwrap_used)] // Tests fail loudly on anything unexpected.

mod common;

use std::time::Duration;

use common::{TestNode, error_code, start, start_with, test_config};
use reqwest::StatusCode;
use serde_json::{Value, json};

#[tokio::test]
async fn json_value_round_trips() {
    let node = start().await;
    let (status, put) = node.put_json("greeting", json!({"value": "hello"})).await;
    assert_eq!(status, 200);
    assert_eq!(put["status"], "ok");
    assert!(put["version"].as_str().is_some_and(|v| !v.is_empty()));
    let (status, got) = node.get_json("greeting").await;
    assert_eq!(status, 200);
    assert_eq!(got["value"], "hello");
    assert!(got["version"].is_string());
    node.stop().await;
}

#[tokio::test]
async fn keys_may_contain_slashes_and_any_bytes() {
    let node = start().await;
    assert_eq!(
        node.put_json("a%2Fb/c%FF", json!({"value": "x"})).await.0,
        200
    );
    assert_eq!(node.get_json("a%2Fb/c%FF").await.1["value"], "x");
    assert_eq!(
        node.get_json("a/b/c%FF").await.1["value"],
        "x",
        "%2F and / are the same byte"
    );
    assert_eq!(node.get_json("a/b/c").await.0, 404);
    node.stop().await;
}

#[tokio::test]
async fn raw_bytes_round_trip_with_version_header() {
    let node = start().await;
    let value = vec![0u8, 159, 146, 150, 255];
    let response = node
        .client
        .put(node.url("/v1/kv/raw?ttl=60"))
        .header("content-type", "application/octet-stream")
        .body(value.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let response = node
        .client
        .get(node.url("/v1/kv/raw"))
        .header("accept", "application/octet-stream")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert!(response.headers().contains_key("x-ringkv-version"));
    assert_eq!(response.bytes().await.unwrap().as_ref(), value.as_slice());
    // As JSON, bytes that are not UTF-8 come back base64-encoded.
    let (_, got) = node.get_json("raw").await;
    assert_eq!(got["value_base64"], "AJ+Slv8=");
    assert!(
        got["ttl"]
            .as_u64()
            .is_some_and(|ttl| (59..=60).contains(&ttl))
    );
    node.stop().await;
}

#[tokio::test]
async fn concurrent_blind_writes_give_siblings_and_the_version_resolves_them() {
    let node = start().await;
    assert_eq!(node.put_json("k", json!({"value": "a"})).await.0, 200);
    assert_eq!(node.put_json("k", json!({"value": "b"})).await.0, 200);
    let (status, got) = node.get_json("k").await;
    assert_eq!(status, 300);
    assert_eq!(got["siblings"], json!(["a", "b"]));
    let version = got["version"].as_str().unwrap().to_string();
    assert_eq!(
        node.put_json("k", json!({"value": "c", "version": version}))
            .await
            .0,
        200
    );
    let (status, got) = node.get_json("k").await;
    assert_eq!(status, 200);
    assert_eq!(got["value"], "c");
    node.stop().await;
}

/// `?overwrite=true` supersedes what the node holds without a version (RESP's SET
/// over HTTP): blind overwrites leave one value, siblings included; with a version,
/// or a value other than true/false, it is 400 and nothing changes.
#[tokio::test]
async fn overwrite_supersedes_without_a_version() {
    let node = start().await;
    let put = |query: &'static str, body: Value| {
        let request = node
            .client
            .put(node.url(&format!("/v1/kv/k{query}")))
            .json(&body);
        async move {
            let response = request.send().await.unwrap();
            let status = response.status();
            (
                status,
                response.json::<Value>().await.unwrap_or(Value::Null),
            )
        }
    };
    assert_eq!(node.put_json("k", json!({"value": "a"})).await.0, 200);
    assert_eq!(node.put_json("k", json!({"value": "b"})).await.0, 200);
    assert_eq!(
        node.get_json("k").await.0,
        300,
        "two blind writes: siblings"
    );
    for value in ["c", "d", "e"] {
        assert_eq!(put("?overwrite=true", json!({"value": value})).await.0, 200);
    }
    let (status, got) = node.get_json("k").await;
    assert_eq!((status, &got["value"]), (StatusCode::OK, &json!("e")));
    let version = got["version"].as_str().unwrap().to_string();
    let (status, body) = put("?overwrite=true", json!({"value": "f", "version": version})).await;
    assert_eq!(
        (status, error_code(&body)),
        (StatusCode::BAD_REQUEST, "invalid_request")
    );
    let (status, body) = put("?overwrite=yes", json!({"value": "f"})).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap_or("")
            .contains("overwrite"),
        "{body}"
    );
    assert_eq!(put("?overwrite=false", json!({"value": "g"})).await.0, 200);
    let (status, got) = node.get_json("k").await;
    assert_eq!(
        (status, &got["siblings"]),
        (StatusCode::MULTIPLE_CHOICES, &json!(["e", "g"]))
    );
    node.stop().await;
}

#[tokio::test]
async fn write_with_read_version_supersedes_and_delete_hides() {
    let node = start().await;
    let (_, first) = node.put_json("k", json!({"value": "a"})).await;
    let (_, second) = node
        .put_json("k", json!({"value": "b", "version": first["version"]}))
        .await;
    assert_eq!(node.get_json("k").await.1["value"], "b");
    let response = node
        .client
        .delete(node.url("/v1/kv/k"))
        .json(&json!({"version": second["version"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["status"], "ok");
    assert_eq!(node.get_json("k").await.0, 404);
    // Deleting a key that never existed is fine too.
    let response = node
        .client
        .delete(node.url("/v1/kv/never"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    node.stop().await;
}

#[tokio::test]
async fn expired_values_read_as_absent() {
    let node = start().await;
    assert_eq!(
        node.put_json("t", json!({"value": "x", "ttl": 1})).await.0,
        200
    );
    assert_eq!(node.get_json("t").await.0, 200);
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    assert_eq!(node.get_json("t").await.0, 404);
    node.stop().await;
}

#[tokio::test]
async fn bad_json_bodies_are_400_and_change_nothing() {
    let node = start().await;
    node.put_json("k", json!({"value": "original"})).await;
    let bad_bodies: Vec<Vec<u8>> = vec![
        b"{not json".to_vec(),
        br#"{"value": 5}"#.to_vec(),
        br#"{"value": "x", "ttl": "ten"}"#.to_vec(),
        br#"{"value": "x", "tll": 10}"#.to_vec(),
        br#"{"ttl": 10}"#.to_vec(),
        b"{\"value\": \"\xff\xfe\"}".to_vec(),
        br#"{"value": "x", "value_base64": "eA=="}"#.to_vec(),
        br#"{"value_base64": "***"}"#.to_vec(),
        br#"[1, 2]"#.to_vec(),
        Vec::new(),
    ];
    for body in bad_bodies {
        let response = node
            .client
            .put(node.url("/v1/kv/k"))
            .header("content-type", "application/json")
            .body(body.clone())
            .send()
            .await
            .unwrap();
        let status = response.status();
        let answer: Value = response.json().await.unwrap();
        assert_eq!(status, 400, "body {:?}", String::from_utf8_lossy(&body));
        assert_eq!(error_code(&answer), "invalid_request");
        assert!(
            answer["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty())
        );
    }
    assert_eq!(node.get_json("k").await.1["value"], "original");
    node.stop().await;
}

#[tokio::test]
async fn bad_ttls_are_400() {
    let node = start().await;
    for ttl in [
        json!(0),
        json!(-5),
        json!(1.5),
        json!(u64::MAX),
        json!(400_000_000u64),
    ] {
        let (status, body) = node.put_json("k", json!({"value": "x", "ttl": ttl})).await;
        assert_eq!(status, 400, "ttl {ttl}");
        assert_eq!(error_code(&body), "invalid_request");
    }
    for query in ["ttl=0", "ttl=-1", "ttl=abc", "ttl=99999999999"] {
        let response = node
            .client
            .put(node.url(&format!("/v1/kv/k?{query}")))
            .header("content-type", "application/octet-stream")
            .body("x")
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 400, "{query}");
    }
    assert_eq!(node.get_json("k").await.0, 404, "nothing was stored");
    node.stop().await;
}

#[tokio::test]
async fn bad_version_tokens_are_400() {
    let node = start().await;
    for token in ["not base64!", "AAAA", "AQ", ""] {
        let (status, body) = node
            .put_json("k", json!({"value": "x", "version": token}))
            .await;
        assert_eq!(status, 400, "token {token:?}");
        assert_eq!(error_code(&body), "invalid_request");
    }
    let response = node
        .client
        .delete(node.url("/v1/kv/k"))
        .header("x-ringkv-version", "%%%")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    node.stop().await;
}

#[tokio::test]
async fn bad_keys_and_query_parameters() {
    let node = start().await;
    // Empty key.
    assert_eq!(node.put_json("", json!({"value": "x"})).await.0, 400);
    assert_eq!(node.get_json("").await.0, 400);
    // Key over max_key_bytes (64 in these tests).
    let (status, body) = node.put_json(&"k".repeat(65), json!({"value": "x"})).await;
    assert_eq!(status, 413);
    assert_eq!(error_code(&body), "too_large");
    // Unknown, repeated or out-of-range parameters.
    for path in [
        "/v1/kv/k?bogus=1",
        "/v1/kv/k?r=1&r=1",
        "/v1/kv/k?r=0",
        "/v1/kv/k?r=9",
        "/v1/kv/k?consistency=some",
        "/v1/kv/k?r=1&consistency=all",
    ] {
        let response = node.client.get(node.url(path)).send().await.unwrap();
        assert_eq!(response.status(), 400, "{path}");
        let body: Value = response.json().await.unwrap();
        assert_eq!(error_code(&body), "invalid_request", "{path}");
    }
    node.stop().await;
}

#[tokio::test]
async fn quorums_beyond_the_replicas_that_exist_are_unavailable() {
    let node = start().await;
    // N = 3 by default, but a cluster of one holds one replica of each key.
    let (status, body) = node.put_json("k?w=2", json!({"value": "x"})).await;
    assert_eq!(status, 503);
    assert_eq!(error_code(&body), "quorum_unavailable");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.contains("0 of 2"), "{message}");
    // one / quorum / all resolve against the replicas a key has.
    assert_eq!(
        node.put_json("k?consistency=all", json!({"value": "x"}))
            .await
            .0,
        200
    );
    assert_eq!(node.get_json("k?r=1").await.0, 200);
    node.stop().await;
}

#[tokio::test]
async fn oversized_values_are_413_before_buffering_and_store_nothing() {
    let node = start().await;
    // Announced by Content-Length.
    let response = node
        .client
        .put(node.url("/v1/kv/big"))
        .header("content-type", "application/octet-stream")
        .body(vec![b'x'; 1025])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 413);
    // Streamed without a length: refused once the limit is crossed.
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
        (0..64).map(|_| Ok(vec![b'x'; 512])).collect();
    let response = node
        .client
        .put(node.url("/v1/kv/big"))
        .header("content-type", "application/octet-stream")
        .body(reqwest::Body::wrap_stream(futures_util_stream(chunks)))
        .send()
        .await;
    if let Ok(response) = response {
        assert_eq!(response.status(), 413);
    } // else: the server closed the connection mid-upload, also a refusal.
    // A JSON value over the limit.
    let (status, body) = node
        .put_json("big", json!({"value": "x".repeat(1025)}))
        .await;
    assert_eq!(status, 413);
    assert_eq!(error_code(&body), "too_large");
    // A value exactly at the limit is fine.
    assert_eq!(
        node.put_json("edge", json!({"value": "x".repeat(1024)}))
            .await
            .0,
        200
    );
    assert_eq!(node.get_json("big").await.0, 404);
    node.stop().await;
}

/// A stream of chunks without a known length (so the request is chunked).
fn futures_util_stream(
    chunks: Vec<Result<Vec<u8>, std::io::Error>>,
) -> impl futures_core::Stream<Item = Result<Vec<u8>, std::io::Error>> {
    tokio_stream::iter(chunks)
}

#[tokio::test]
async fn corrupt_record_answers_500_and_the_node_keeps_serving() {
    let dir = tempfile::tempdir().unwrap();
    {
        let engine = ringkv_storage::FjallEngine::open(dir.path(), Default::default()).unwrap();
        let key = ringkv_core::Key::parse("broken", &Default::default()).unwrap();
        engine.insert_raw_for_test(&key, b"\x01garbage").unwrap();
        use ringkv_storage::Engine as _;
        engine.sync().await.unwrap();
        engine.close();
    }
    let config = test_config(dir.path());
    let node = start_with(dir, config).await;
    let (status, body) = node.get_json("broken").await;
    assert_eq!(status, 500);
    assert_eq!(error_code(&body), "corrupt_record");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("broken")
    );
    // A write on top does not overwrite it blindly either.
    assert_eq!(node.put_json("broken", json!({"value": "x"})).await.0, 500);
    // Everything else still works.
    assert_eq!(node.put_json("fine", json!({"value": "x"})).await.0, 200);
    assert_eq!(node.get_json("fine").await.0, 200);
    node.stop().await;
}

#[tokio::test]
async fn health_metrics_and_status() {
    let node = start().await;
    assert_eq!(
        node.client
            .get(node.url("/health"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    node.put_json("m", json!({"value": "x"})).await;
    node.get_json("m").await;
    node.get_json("absent").await;
    let metrics = node
        .client
        .get(node.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("ringkv_http_requests_total{op=\"put\",status=\"200\"}"),
        "{metrics}"
    );
    assert!(
        metrics.contains("ringkv_http_requests_total{op=\"get\",status=\"404\"}"),
        "{metrics}"
    );
    assert!(
        metrics.contains("ringkv_http_request_duration_seconds_bucket"),
        "{metrics}"
    );
    // Batch sizes are counted in writes, not seconds: the bucket past the largest
    // latency bucket (10) exists, and the latency buckets are not used for it.
    assert!(
        metrics.contains("ringkv_storage_sync_batch_writes_bucket{le=\"65536\"}"),
        "{metrics}"
    );
    assert!(
        !metrics.contains("ringkv_storage_sync_batch_writes_bucket{le=\"0.0001\"}"),
        "{metrics}"
    );
    let status: Value = node
        .client
        .get(node.url("/v1/cluster/status"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(status["nodes"][0]["status"], "healthy");
    assert_eq!(
        node.client
            .get(node.url("/nope"))
            .send()
            .await
            .unwrap()
            .status(),
        404
    );
    node.stop().await;
}

#[tokio::test]
async fn data_survives_a_graceful_restart() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_path_buf();
    let node = start_with(dir, test_config(&path)).await;
    node.put_json("kept", json!({"value": "yes"})).await;
    let TestNode { server, _dir, .. } = node;
    server.unwrap().stop().await;
    let node = start_with(_dir, test_config(&path)).await;
    assert_eq!(node.get_json("kept").await.1["value"], "yes");
    node.stop().await;
}

#[tokio::test]
async fn blind_writes_past_the_sibling_limit_are_refused_with_a_way_out() {
    let node = start().await;
    for i in 0..ringkv_cluster::MAX_SIBLINGS {
        let (status, _) = node
            .put_json("hot", json!({"value": format!("v{i}")}))
            .await;
        assert_eq!(status, 200);
    }
    let (status, body) = node.put_json("hot", json!({"value": "one more"})).await;
    assert_eq!(status, 400);
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("write back with its version"),
        "{body}"
    );
    let (status, read) = node.get_json("hot").await;
    assert_eq!(status, 300);
    assert_eq!(
        read["siblings"].as_array().unwrap().len(),
        ringkv_cluster::MAX_SIBLINGS
    );
    let (status, _) = node
        .put_json(
            "hot",
            json!({"value": "resolved", "version": read["version"]}),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(node.get_json("hot").await.1["value"], "resolved");
    node.stop().await;
}
