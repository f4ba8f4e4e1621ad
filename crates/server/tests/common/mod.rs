//! A real node (fjall on a temp dir) started in process on 127.0.0.1 with OS-chosen
//! ports, and an HTTP client for it: what the HTTP test binaries share.

#![allow(dead_code)] // Each test binary uses a different part of this module.
#![allow(clippy::unwrap_used)] // Tests fail loudly on anything unexpected.

use reqwest::StatusCode;
use ringkv_server::{Config, Server};
use serde_json::Value;

pub struct TestNode {
    pub server: Option<Server>,
    pub base: String,
    pub client: reqwest::Client,
    pub _dir: tempfile::TempDir,
}

impl TestNode {
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub async fn put_json(&self, key: &str, body: Value) -> (StatusCode, Value) {
        let response = self
            .client
            .put(self.url(&format!("/v1/kv/{key}")))
            .json(&body)
            .send()
            .await
            .unwrap();
        let status = response.status();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    pub async fn get_json(&self, key: &str) -> (StatusCode, Value) {
        let response = self
            .client
            .get(self.url(&format!("/v1/kv/{key}")))
            .send()
            .await
            .unwrap();
        let status = response.status();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    pub async fn stop(mut self) {
        if let Some(server) = self.server.take() {
            server.stop().await;
        }
    }
}

pub fn test_config(dir: &std::path::Path) -> Config {
    Config {
        data_dir: dir.to_path_buf(),
        http_addr: "127.0.0.1:0".parse().unwrap(),
        peer_addr: "127.0.0.1:0".parse().unwrap(),
        resp_addr: "127.0.0.1:0".parse().unwrap(),
        max_value_bytes: 1024,
        max_key_bytes: 64,
        ..Config::default()
    }
}

pub async fn start_with(dir: tempfile::TempDir, config: Config) -> TestNode {
    let server = Server::start(config).await.expect("server starts");
    let base = format!("http://{}", server.http_addr());
    TestNode {
        server: Some(server),
        base,
        client: reqwest::Client::new(),
        _dir: dir,
    }
}

pub async fn start() -> TestNode {
    let dir = tempfile::tempdir().unwrap();
    let config = test_config(dir.path());
    start_with(dir, config).await
}

pub fn error_code(body: &Value) -> &str {
    body["error"]["code"].as_str().unwrap_or("<none>")
}
