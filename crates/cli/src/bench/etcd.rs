//! Bench ops against etcd's v3 JSON gateway (`--protocol etcd`), over the same
//! HTTP/1.1 client as ringkv's HTTP API.

use super::client::{Failure, Success, Target, detail};
use super::http1::HttpConn;
use super::keys::{Op, key_name};
use super::report::ErrorKind;

impl Target {
    /// An op against etcd's v3 JSON gateway. YCSB F's update is a range then a put
    /// (blind, as over RESP).
    pub(super) async fn send_etcd(
        &self,
        index: usize,
        op: Op,
        conn: &mut Option<HttpConn>,
    ) -> Result<Success, Failure> {
        use base64::Engine as _;
        let key = base64::engine::general_purpose::STANDARD.encode(key_name(op.key_index()));
        if let Op::Read(_) | Op::Update(_) = op {
            let body = format!(r#"{{"key":"{key}"}}"#);
            let found = self.etcd_call(index, conn, "range", body).await?;
            // A range that found nothing has no `kvs`.
            let hit = serde_json::from_slice::<serde_json::Value>(&found)
                .ok()
                .is_some_and(|json| json["kvs"].as_array().is_some_and(|kvs| !kvs.is_empty()));
            if let Op::Read(_) = op {
                return Ok(if hit { Success::Hit } else { Success::Miss });
            }
        }
        let body = format!(r#"{{"key":"{key}","value":"{}"}}"#, self.etcd_value);
        self.etcd_call(index, conn, "put", body).await?;
        Ok(Success::Hit)
    }

    /// `POST /v3/kv/{method}`: the answer's body if it is 200.
    async fn etcd_call(
        &self,
        index: usize,
        conn: &mut Option<HttpConn>,
        method: &str,
        body: String,
    ) -> Result<Vec<u8>, Failure> {
        let path = format!("/v3/kv/{method}");
        let headers = [("Content-Type", "application/json")];
        let answer = self
            .http_call(index, conn, "POST", &path, &headers, body.as_bytes())
            .await?;
        if answer.status == 200 {
            Ok(answer.body)
        } else {
            Err(Failure {
                kind: ErrorKind::Status(answer.status),
                detail: detail(&answer.body),
            })
        }
    }
}
