//! Key-value commands through the SDK (`ringkv-client`), which reaches the
//! cluster through `--url` (`RINGKV_URL`) and then each key's replicas; the
//! cluster commands are thin HTTP calls to that node.

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

/// A client of the cluster through `url` (it fetches the ring there and talks to
/// each key's replicas directly).
async fn client(url: &str) -> anyhow::Result<ringkv_client::Client> {
    ringkv_client::Client::connect(&[url], ringkv_client::Options::default())
        .await
        .with_context(|| format!("cannot reach the cluster at {url} (is the node running?)"))
}

fn print_error(error: ringkv_client::Error) -> anyhow::Result<ExitCode> {
    bail!("{error}")
}

pub fn put(args: PutArgs) -> anyhow::Result<ExitCode> {
    runtime()?.block_on(async {
        let client = client(&args.url.url).await?;
        let options = ringkv_client::WriteOptions {
            w: args.w,
            ttl: args.ttl.map(std::time::Duration::from_secs),
            version: args.version_token.map(ringkv_client::Version::from_token),
            overwrite: false,
        };
        match client
            .put(args.key.as_bytes(), args.value.into_bytes(), &options)
            .await
        {
            Ok(version) => {
                println!("ok version={version}");
                Ok(ExitCode::SUCCESS)
            }
            Err(error) => print_error(error),
        }
    })
}

/// Text if it is UTF-8, else `(base64) ...`.
fn show(bytes: &[u8]) -> String {
    match std::str::from_utf8(bytes) {
        Ok(text) => text.to_string(),
        Err(_) => {
            use base64::Engine as _;
            format!(
                "(base64) {}",
                base64::engine::general_purpose::STANDARD.encode(bytes)
            )
        }
    }
}

pub fn get(args: GetArgs) -> anyhow::Result<ExitCode> {
    runtime()?.block_on(async {
        let client = client(&args.url.url).await?;
        let options = ringkv_client::ReadOptions { r: args.r };
        let read = match client.get(args.key.as_bytes(), &options).await {
            Ok(read) => read,
            Err(error) => return print_error(error),
        };
        match read {
            None => {
                eprintln!("not found");
                return Ok(ExitCode::from(1));
            }
            Some(ringkv_client::Read::Value(value)) if args.json => println!(
                "{:#}",
                json!({"value": show(&value.bytes), "version": value.version.as_str()})
            ),
            Some(ringkv_client::Read::Value(value)) => println!("{}", show(&value.bytes)),
            Some(ringkv_client::Read::Siblings(siblings)) if args.json => println!(
                "{:#}",
                json!({
                    "siblings": siblings.values.iter().map(|v| show(v)).collect::<Vec<_>>(),
                    "version": siblings.version.as_str(),
                })
            ),
            Some(ringkv_client::Read::Siblings(siblings)) => {
                println!(
                    "{} concurrent values (write with --version-token to resolve):",
                    siblings.values.len()
                );
                for value in &siblings.values {
                    println!("  {}", show(value));
                }
                println!("version={}", siblings.version);
            }
        }
        Ok(ExitCode::SUCCESS)
    })
}

pub fn delete(args: DeleteArgs) -> anyhow::Result<ExitCode> {
    runtime()?.block_on(async {
        let client = client(&args.url.url).await?;
        let options = ringkv_client::WriteOptions {
            w: args.w,
            ttl: None,
            version: args.version_token.map(ringkv_client::Version::from_token),
            overwrite: false,
        };
        match client.delete(args.key.as_bytes(), &options).await {
            Ok(version) => {
                println!("ok version={version}");
                Ok(ExitCode::SUCCESS)
            }
            Err(error) => print_error(error),
        }
    })
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
