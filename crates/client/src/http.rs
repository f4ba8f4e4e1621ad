//! The HTTP API as the client sees it: key URLs, answers (values, siblings,
//! errors) and the ring JSON.

use std::collections::HashMap;

use bytes::Bytes;
use reqwest::StatusCode;
use ringkv_core::ring::Ring;
use ringkv_core::{Key, Limits, NodeId, Token};
use serde_json::Value as Json;

use crate::{Error, Read, Siblings, VERSION_HEADER, Value, Version};

/// The token of a key, checked as the server checks it.
pub(crate) fn token_of(key: &[u8]) -> Result<Token, Error> {
    Key::parse(Bytes::copy_from_slice(key), &Limits::default())
        .map(|key| key.token())
        .map_err(|error| Error::InvalidKey(error.to_string()))
}

/// `{base}/v1/kv/{key}` with every byte outside the unreserved set percent-encoded.
pub(crate) fn kv_url(base: &str, key: &[u8]) -> String {
    let mut url = format!("{base}/v1/kv/");
    for byte in key {
        if byte.is_ascii_alphanumeric() || b"-._~".contains(byte) {
            url.push(char::from(*byte));
        } else {
            url.push_str(&format!("%{byte:02X}"));
        }
    }
    url
}

pub(crate) fn server_error(status: StatusCode, json: &Json, body: &[u8]) -> Error {
    Error::Server {
        status: status.as_u16(),
        code: json["error"]["code"]
            .as_str()
            .unwrap_or("error")
            .to_string(),
        message: json["error"]["message"]
            .as_str()
            .map_or_else(|| String::from_utf8_lossy(body).into_owned(), str::to_owned),
    }
}

/// A GET's answer: raw bytes (200), siblings (300), nothing (404) or an error.
pub(crate) async fn read_answer(response: reqwest::Response) -> Result<Option<Read>, Error> {
    let status = response.status();
    let version = response
        .headers()
        .get(VERSION_HEADER)
        .and_then(|value| value.to_str().ok())
        .map(Version::from_token);
    let body = response
        .bytes()
        .await
        .map_err(|error| Error::Unreachable(error.to_string()))?;
    match status {
        StatusCode::OK => {
            let version =
                version.ok_or_else(|| Error::Protocol("a value without a version".into()))?;
            Ok(Some(Read::Value(Value {
                bytes: body,
                version,
            })))
        }
        StatusCode::MULTIPLE_CHOICES => {
            let json: Json = serde_json::from_slice(&body)
                .map_err(|error| Error::Protocol(format!("siblings: {error}")))?;
            siblings(&json).map(|siblings| Some(Read::Siblings(siblings)))
        }
        StatusCode::NOT_FOUND => Ok(None),
        _ => {
            let json: Json = serde_json::from_slice(&body).unwrap_or(Json::Null);
            Err(server_error(status, &json, &body))
        }
    }
}

fn siblings(json: &Json) -> Result<Siblings, Error> {
    let version = json["version"]
        .as_str()
        .map(Version::from_token)
        .ok_or_else(|| Error::Protocol("siblings without a version".into()))?;
    let values = if let Some(texts) = json["siblings"].as_array() {
        texts
            .iter()
            .map(|text| {
                text.as_str()
                    .map(|text| Bytes::copy_from_slice(text.as_bytes()))
                    .ok_or_else(|| Error::Protocol("a sibling is not a string".into()))
            })
            .collect::<Result<Vec<_>, _>>()?
    } else if let Some(encoded) = json["siblings_base64"].as_array() {
        encoded
            .iter()
            .map(|text| {
                text.as_str()
                    .and_then(decode_base64)
                    .map(Bytes::from)
                    .ok_or_else(|| Error::Protocol("a sibling is not base64".into()))
            })
            .collect::<Result<Vec<_>, _>>()?
    } else {
        return Err(Error::Protocol(format!("no siblings in {json}")));
    };
    Ok(Siblings { values, version })
}

/// Standard base64 with padding (what the server writes); `None` if malformed.
fn decode_base64(text: &str) -> Option<Vec<u8>> {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.decode(text).ok()
}

/// The ring JSON (`GET /v1/cluster/ring`): the nodes that serve reads, their
/// tokens and HTTP addresses, and N.
pub(crate) fn parse_ring(json: &Json) -> Result<(Ring, HashMap<NodeId, String>, usize), Error> {
    let bad = |what: &str| Error::Protocol(format!("ring: {what}"));
    let n = json["replication_factor"]
        .as_u64()
        .and_then(|n| usize::try_from(n).ok())
        .filter(|n| (1..=16).contains(n))
        .ok_or_else(|| bad("no replication_factor"))?;
    let nodes = json["nodes"].as_array().ok_or_else(|| bad("no nodes"))?;
    let mut members = Vec::new();
    let mut urls = HashMap::new();
    for node in nodes {
        let id = NodeId(
            node["id"]
                .as_u64()
                .ok_or_else(|| bad("a node without an id"))?,
        );
        // Only nodes that serve reads (older servers do not say: all do).
        let serving = node["state"]
            .as_str()
            .is_none_or(|state| matches!(state, "normal" | "leaving" | "joined"));
        if !serving {
            continue;
        }
        let tokens = node["tokens"]
            .as_array()
            .ok_or_else(|| bad("a node without tokens"))?
            .iter()
            .map(|token| {
                token
                    .as_str()
                    .and_then(|hex| u128::from_str_radix(hex, 16).ok())
                    .map(Token)
                    .ok_or_else(|| bad("a malformed token"))
            })
            .collect::<Result<Vec<_>, _>>()?;
        if let Some(addr) = node["http_addr"].as_str().filter(|addr| !addr.is_empty()) {
            urls.insert(id, format!("http://{addr}"));
        }
        members.push((id, tokens));
    }
    Ok((Ring::new(members), urls, n))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn keys_are_percent_encoded() {
        assert_eq!(kv_url("http://h:1", b"a/b c"), "http://h:1/v1/kv/a%2Fb%20c");
    }

    #[test]
    fn base64_decodes_what_the_server_writes_and_refuses_garbage() {
        assert_eq!(decode_base64("aGk=").as_deref(), Some(&b"hi"[..]));
        assert_eq!(decode_base64("/w==").as_deref(), Some(&[0xff][..]));
        assert_eq!(decode_base64("").as_deref(), Some(&[][..]));
        assert_eq!(decode_base64("a"), None);
        assert_eq!(decode_base64("a==="), None);
        assert_eq!(decode_base64("a!b="), None);
    }

    #[test]
    fn the_ring_keeps_serving_nodes_and_their_addresses() {
        let ring = json!({
            "replication_factor": 2,
            "nodes": [
                {"id": 1, "state": "normal", "http_addr": "127.0.0.1:1", "tokens": [format!("{:032x}", 10u128)]},
                {"id": 2, "state": "joining", "http_addr": "127.0.0.1:2", "tokens": [format!("{:032x}", 20u128)]},
                {"id": 3, "state": "normal", "http_addr": "127.0.0.1:3", "tokens": [format!("{:032x}", 30u128)]},
            ],
        });
        let (ring, urls, n) = parse_ring(&ring).unwrap();
        assert_eq!(n, 2);
        assert_eq!(ring.nodes().collect::<Vec<_>>(), [NodeId(1), NodeId(3)]);
        assert_eq!(urls[&NodeId(3)], "http://127.0.0.1:3");
        assert!(parse_ring(&json!({"replication_factor": 0, "nodes": []})).is_err());
        assert!(
            parse_ring(&json!({"replication_factor": 3, "nodes": [{"id": 1, "tokens": ["zz"]}]}))
                .is_err()
        );
    }

    #[test]
    fn siblings_come_as_text_or_base64() {
        let text = siblings(&json!({"siblings": ["a", "b"], "version": "v"})).unwrap();
        assert_eq!(text.values, [Bytes::from("a"), Bytes::from("b")]);
        assert_eq!(text.version.as_str(), "v");
        let binary = siblings(&json!({"siblings_base64": ["/w=="], "version": "v"})).unwrap();
        assert_eq!(binary.values, [Bytes::from_static(&[0xff])]);
        assert!(siblings(&json!({"siblings": ["a"]})).is_err());
    }
}
