//! Key-value commands: thin HTTP calls to one node (`--url`, `RINGKV_URL`).

use std::process::ExitCode;

use anyhow::{Context as _, bail};
use clap::Args;
use serde_json::{Value, json};

const DEFAULT_URL: &str = "http://127.0.0.1:8080";

#[derive(Args)]
pub struct UrlArgs {
    /// Node to talk to.
    #[arg(long, env = "RINGKV_URL", default_value = DEFAULT_URL)]
    pub url: String,
}

#[derive(Args)]
pub struct PutArgs {
    key: String,
    value: String,
    /// Seconds until the value expires.
    #[arg(long)]
    ttl: Option<u64>,
    /// Replicas that must acknowledge.
    #[arg(long)]
    w: Option<u8>,
    /// Version token from an earlier read: the write supersedes what was read.
    #[arg(long = "version-token")]
    version_token: Option<String>,
    #[command(flatten)]
    url: UrlArgs,
}

#[derive(Args)]
pub struct GetArgs {
    key: String,
    /// Replicas that must answer.
    #[arg(long)]
    r: Option<u8>,
    /// Print the whole JSON answer (value, version, siblings).
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    url: UrlArgs,
}

#[derive(Args)]
pub struct DeleteArgs {
    key: String,
    #[arg(long)]
    w: Option<u8>,
    #[arg(long = "version-token")]
    version_token: Option<String>,
    #[command(flatten)]
    url: UrlArgs,
}

/// `/v1/kv/{key}` with every byte outside the unreserved set percent-encoded.
fn kv_url(base: &str, key: &str, quorum: Option<(&str, u8)>) -> String {
    let mut url = format!("{}/v1/kv/", base.trim_end_matches('/'));
    for byte in key.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~".contains(&byte) {
            url.push(char::from(byte));
        } else {
            url.push_str(&format!("%{byte:02X}"));
        }
    }
    if let Some((name, count)) = quorum {
        url.push_str(&format!("?{name}={count}"));
    }
    url
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

/// Sends a request and returns the status and JSON body (if any).
pub fn send(request: reqwest::RequestBuilder) -> anyhow::Result<(u16, Value)> {
    runtime()?.block_on(async {
        let response = request
            .send()
            .await
            .context("request failed (is the node running?)")?;
        let status = response.status().as_u16();
        let text = response.text().await.context("cannot read the answer")?;
        let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
        Ok((status, body))
    })
}

pub fn fail(status: u16, body: &Value) -> anyhow::Result<ExitCode> {
    let message = body["error"]["message"]
        .as_str()
        .map_or_else(|| body.to_string(), str::to_owned);
    let code = body["error"]["code"].as_str().unwrap_or("error");
    bail!("{code} (HTTP {status}): {message}")
}

pub fn put(args: PutArgs) -> anyhow::Result<ExitCode> {
    let mut body = json!({"value": args.value});
    if let Some(ttl) = args.ttl {
        body["ttl"] = json!(ttl);
    }
    if let Some(token) = args.version_token {
        body["version"] = json!(token);
    }
    let url = kv_url(&args.url.url, &args.key, args.w.map(|w| ("w", w)));
    let (status, answer) = send(reqwest::Client::new().put(url).json(&body))?;
    if status != 200 {
        return fail(status, &answer);
    }
    println!("ok version={}", answer["version"].as_str().unwrap_or(""));
    Ok(ExitCode::SUCCESS)
}

pub fn get(args: GetArgs) -> anyhow::Result<ExitCode> {
    let url = kv_url(&args.url.url, &args.key, args.r.map(|r| ("r", r)));
    let (status, answer) = send(reqwest::Client::new().get(url))?;
    match status {
        200 | 300 if args.json => println!("{answer:#}"),
        200 => match (&answer["value"], &answer["value_base64"]) {
            (Value::String(text), _) => println!("{text}"),
            (_, Value::String(encoded)) => println!("(base64) {encoded}"),
            _ => println!("{answer}"),
        },
        300 => {
            let siblings = answer["siblings"]
                .as_array()
                .or(answer["siblings_base64"].as_array());
            let siblings = siblings.map(Vec::as_slice).unwrap_or_default();
            println!(
                "{} concurrent values (write with --version-token to resolve):",
                siblings.len()
            );
            for sibling in siblings {
                println!("  {}", sibling.as_str().unwrap_or(""));
            }
            println!("version={}", answer["version"].as_str().unwrap_or(""));
        }
        404 => {
            eprintln!("not found");
            return Ok(ExitCode::from(1));
        }
        _ => return fail(status, &answer),
    }
    Ok(ExitCode::SUCCESS)
}

pub fn delete(args: DeleteArgs) -> anyhow::Result<ExitCode> {
    let url = kv_url(&args.url.url, &args.key, args.w.map(|w| ("w", w)));
    let mut request = reqwest::Client::new().delete(url);
    if let Some(token) = args.version_token {
        request = request.json(&json!({"version": token}));
    }
    let (status, answer) = send(request)?;
    if status != 200 {
        return fail(status, &answer);
    }
    println!("ok version={}", answer["version"].as_str().unwrap_or(""));
    Ok(ExitCode::SUCCESS)
}

pub fn status(args: UrlArgs) -> anyhow::Result<ExitCode> {
    let url = format!("{}/v1/cluster/status", args.url.trim_end_matches('/'));
    let (status, answer) = send(reqwest::Client::new().get(url))?;
    if status != 200 {
        return fail(status, &answer);
    }
    println!(
        "N={} R={} W={} (asked node {})",
        answer["replication_factor"],
        answer["read_quorum"],
        answer["write_quorum"],
        answer["node_id"]
    );
    let nodes = answer["nodes"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default();
    println!(
        "{:<20} {:<18} {:<22} {:<22} {:>6} {:>9} {:>6}",
        "node", "status", "http", "peer", "vnodes", "owns", "hints"
    );
    for node in nodes {
        println!(
            "{:<20} {:<18} {:<22} {:<22} {:>6} {:>8.1}% {:>6}",
            node["id"].to_string(),
            node["status"].as_str().unwrap_or(""),
            node["http_addr"].as_str().unwrap_or(""),
            node["peer_addr"].as_str().unwrap_or(""),
            node["vnodes"].to_string(),
            node["ownership"].as_f64().unwrap_or(0.0) * 100.0,
            node["hints_queued"].to_string(),
        );
    }
    let ae = &answer["anti_entropy"];
    if ae.is_object() {
        let ago = ae["oldest_converged_ms_ago"].as_u64().map_or_else(
            || "never".to_string(),
            |ms| format!("{:.1} s ago", ms as f64 / 1000.0),
        );
        println!(
            "anti-entropy: {} of {} ranges converged (oldest {ago}), {} keys repaired in {} rounds",
            ae["arcs_converged"], ae["arcs"], ae["keys_repaired"], ae["rounds"]
        );
    }
    let purge = &answer["purge"];
    if purge.is_object() {
        println!(
            "purge: {} expired values purged, {} tombstones forgotten ({} confirmed, {} past the grace), {} sweeps",
            purge["ttl_purged"],
            purge["tombstones_purged"]["ack"].as_u64().unwrap_or(0)
                + purge["tombstones_purged"]["grace"].as_u64().unwrap_or(0),
            purge["tombstones_purged"]["ack"],
            purge["tombstones_purged"]["grace"],
            purge["sweeps"]
        );
    }
    Ok(ExitCode::SUCCESS)
}

pub fn ring(args: UrlArgs) -> anyhow::Result<ExitCode> {
    let url = format!("{}/v1/cluster/ring", args.url.trim_end_matches('/'));
    let (status, answer) = send(reqwest::Client::new().get(url))?;
    if status != 200 {
        return fail(status, &answer);
    }
    let nodes = answer["nodes"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default();
    println!("{:<20} {:>6} {:>9}  first tokens", "node", "vnodes", "owns");
    for node in nodes {
        let tokens: Vec<&str> = node["tokens"]
            .as_array()
            .map(|tokens| tokens.iter().take(2).filter_map(Value::as_str).collect())
            .unwrap_or_default();
        println!(
            "{:<20} {:>6} {:>8.1}%  {}",
            node["id"].to_string(),
            node["vnodes"].to_string(),
            node["ownership"].as_f64().unwrap_or(0.0) * 100.0,
            tokens.join(" "),
        );
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_percent_encoded() {
        assert_eq!(
            kv_url("http://h:1/", "a/b c", Some(("w", 2))),
            "http://h:1/v1/kv/a%2Fb%20c?w=2"
        );
    }
}
