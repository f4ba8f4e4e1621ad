//! The Rust SDK (`ringkv-client`, issue 9) against real processes: it routes each
//! key to its replicas, exposes values, siblings and versions as types, keeps
//! working while a node is dead (reads retry elsewhere, writes that never left
//! are sent to another replica), follows a join, and the CLI works through it.

#![allow(clippy::unwrap_used)] // Tests fail loudly on anything unexpected.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::Cluster;
use ringkv_client::{Client, Options, Read, ReadOptions, WriteOptions};

fn options() -> Options {
    Options {
        request_timeout: Duration::from_secs(5),
        ring_refresh: Duration::from_millis(200),
        ..Options::default()
    }
}

/// The HTTP URLs of `key`'s preference list as the cluster reports it.
async fn preference_urls(cluster: &Cluster, key: &str) -> Vec<String> {
    let debug = cluster.json(0, &format!("/v1/debug/key/{key}")).await;
    debug["preference_list"]
        .as_array()
        .unwrap()
        .iter()
        .map(|id| {
            let node = cluster
                .nodes
                .iter()
                .find(|node| id.as_u64() == Some(node.node_id))
                .unwrap();
            format!("http://{}", node.http_addr)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sdk_routes_to_replicas_and_types_what_it_reads() {
    let mut cluster = Cluster::start(3, &[]).await;
    let url = format!("http://{}", cluster.nodes[0].http_addr);
    let client = Client::connect(&[url.as_str()], options()).await.unwrap();

    // It places keys as the cluster does.
    for key in ["a", "b/c", "key-17", "é"] {
        assert_eq!(
            client.replicas(key.as_bytes()).unwrap(),
            preference_urls(&cluster, &percent(key)).await,
            "{key}"
        );
    }
    assert!(client.replicas(b"").is_err(), "an empty key is refused");

    // Binary values round-trip, and read back identically over HTTP.
    let binary = Bytes::from_static(&[0, 159, 146, 150, 255]);
    let written = client
        .put(
            b"bin",
            binary.clone(),
            &WriteOptions {
                w: Some(3),
                ..WriteOptions::default()
            },
        )
        .await
        .unwrap();
    match client
        .get(b"bin", &ReadOptions { r: Some(1) })
        .await
        .unwrap()
    {
        Some(Read::Value(value)) => {
            assert_eq!(value.bytes, binary);
            assert_eq!(value.version, written);
        }
        other => panic!("expected a value, got {other:?}"),
    }
    let (status, body) = cluster.get(2, "bin").await;
    assert_eq!(status, 200);
    assert_eq!(body["value_base64"], "AJ+Slv8=");

    // Blind racing writes are siblings; writing back with their version resolves.
    let blind = WriteOptions::default();
    client.put(b"race", "one", &blind).await.unwrap();
    client.put(b"race", "two", &blind).await.unwrap();
    let Some(Read::Siblings(siblings)) = client
        .get(b"race", &ReadOptions { r: Some(3) })
        .await
        .unwrap()
    else {
        panic!("expected siblings");
    };
    let mut values = siblings.values.clone();
    values.sort();
    assert_eq!(values, [Bytes::from("one"), Bytes::from("two")]);
    let resolve = WriteOptions {
        version: Some(siblings.version.clone()),
        ..WriteOptions::default()
    };
    client.put(b"race", "both", &resolve).await.unwrap();
    let read = client
        .get(b"race", &ReadOptions { r: Some(3) })
        .await
        .unwrap();
    assert!(
        matches!(&read, Some(Read::Value(value)) if value.bytes == "both"),
        "{read:?}"
    );

    // Deletes, TTLs, and the server's errors as typed errors.
    let version = read.unwrap().version().clone();
    client
        .delete(
            b"race",
            &WriteOptions {
                version: Some(version),
                ..WriteOptions::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(
        client.get(b"race", &ReadOptions::default()).await.unwrap(),
        None
    );
    let ttl = WriteOptions {
        ttl: Some(Duration::from_millis(1_500)),
        ..WriteOptions::default()
    };
    // The server counts the 2 s from the put and shows the time left rounded up: 2
    // while less than 1 s has gone by since the put started, at least 1 after that.
    let put_at = Instant::now();
    client.put(b"brief", "x", &ttl).await.unwrap();
    let (_, body) = cluster.get(0, "brief").await;
    let took = put_at.elapsed();
    let allowed = if took < Duration::from_secs(1) {
        2..=2
    } else {
        1..=2
    };
    assert!(
        body["ttl"]
            .as_u64()
            .is_some_and(|ttl| allowed.contains(&ttl)),
        "1.5 s rounds up to 2 s: ttl {} after {took:?}",
        body["ttl"]
    );
    let error = client
        .get(b"bin", &ReadOptions { r: Some(9) })
        .await
        .unwrap_err();
    assert!(
        matches!(&error, ringkv_client::Error::Server { status: 400, code, .. } if code == "invalid_request"),
        "{error}"
    );

    // A dead node: reads and writes go on through the other replicas (every key
    // has all three nodes as replicas, so a third of the first tries hit it).
    cluster.kill(2);
    for i in 0..30 {
        let key = format!("after-{i}");
        client
            .put(
                key.as_bytes(),
                "v",
                &WriteOptions {
                    w: Some(2),
                    ..WriteOptions::default()
                },
            )
            .await
            .unwrap_or_else(|error| panic!("put {key}: {error}"));
        let read = client
            .get(key.as_bytes(), &ReadOptions { r: Some(2) })
            .await
            .unwrap_or_else(|error| panic!("get {key}: {error}"));
        assert!(matches!(read, Some(Read::Value(_))), "{key}: {read:?}");
    }
    cluster.restart(2).await;

    // A fourth node joins: the client follows the ring.
    let joined = cluster.add(&[]);
    cluster.wait_for_members(4).await;
    client.refresh().await.unwrap();
    let new_url = format!("http://{}", cluster.nodes[joined].http_addr);
    let placed = (0..50)
        .filter(|i| {
            client
                .replicas(format!("k{i}").as_bytes())
                .unwrap()
                .contains(&new_url)
        })
        .count();
    assert!(placed > 10, "the new node replicates {placed} of 50 keys");
    for i in 0..10 {
        let key = format!("k{i}");
        assert_eq!(
            client.replicas(key.as_bytes()).unwrap(),
            preference_urls(&cluster, &key).await
        );
    }

    // The CLI goes through the SDK.
    let cli = |args: &[&str]| {
        let output = Command::new(env!("CARGO_BIN_EXE_ringkv"))
            .args(args)
            .args(["--url", &url])
            .output()
            .unwrap();
        (
            output.status.success(),
            String::from_utf8_lossy(&output.stdout).into_owned(),
        )
    };
    let (ok, out) = cli(&["put", "cli-key", "hello", "--w", "3"]);
    assert!(ok && out.starts_with("ok version="), "{out}");
    let version = out.trim().trim_start_matches("ok version=").to_string();
    let (ok, out) = cli(&["get", "cli-key", "--r", "3"]);
    assert!(ok, "{out}");
    assert_eq!(out.trim(), "hello");
    // (A blind delete would be concurrent with the put: it deletes what it saw.)
    let (ok, _) = cli(&["delete", "cli-key", "--version-token", &version]);
    assert!(ok);
    let (ok, _) = cli(&["get", "cli-key"]);
    assert!(!ok, "a deleted key is not found");
    cluster.stop().await;
}

/// A key as it appears in a URL path.
fn percent(key: &str) -> String {
    key.bytes()
        .map(|byte| {
            if byte.is_ascii_alphanumeric() || b"-._~".contains(&byte) {
                char::from(byte).to_string()
            } else {
                format!("%{byte:02X}")
            }
        })
        .collect()
}
