//! Bench ops through the Rust SDK (`--protocol sdk`): the SDK picks the node, a
//! replica of the key.

use super::client::{Failure, Success, Target, detail};
use super::keys::{Op, key_name};
use super::report::ErrorKind;

/// What an SDK error counts as.
fn sdk_failure(error: &ringkv_client::Error) -> Failure {
    let kind = match error {
        ringkv_client::Error::Server { status, .. } => ErrorKind::Status(*status),
        ringkv_client::Error::Unreachable(message) if message.contains("timed out") => {
            ErrorKind::Timeout
        }
        _ => ErrorKind::Connection,
    };
    Failure {
        kind,
        detail: detail(error.to_string().as_bytes()),
    }
}

impl Target {
    /// An op through the SDK, which picks the node (a replica of the key).
    pub(super) async fn send_sdk(&self, op: Op) -> Result<Success, Failure> {
        let Some(sdk) = &self.sdk else {
            return Err(Failure {
                kind: ErrorKind::Connection,
                detail: "the SDK is not connected".into(),
            });
        };
        let key = key_name(op.key_index());
        let read = ringkv_client::ReadOptions { r: self.r };
        let mut write = ringkv_client::WriteOptions {
            w: self.w,
            overwrite: !self.blind,
            ..ringkv_client::WriteOptions::default()
        };
        match op {
            Op::Read(_) => match sdk.get(key.as_bytes(), &read).await {
                Ok(Some(_)) => Ok(Success::Hit),
                Ok(None) => Ok(Success::Miss),
                Err(error) => Err(sdk_failure(&error)),
            },
            Op::Write(_) | Op::Update(_) => {
                if let Op::Update(_) = op {
                    let found = sdk.get(key.as_bytes(), &read).await;
                    write.version = found
                        .map_err(|error| sdk_failure(&error))?
                        .map(|read| read.version().clone());
                    write.overwrite = write.version.is_none() && !self.blind;
                }
                sdk.put(key.as_bytes(), self.resp_value.clone(), &write)
                    .await
                    .map(|_| Success::Hit)
                    .map_err(|error| sdk_failure(&error))
            }
        }
    }
}
