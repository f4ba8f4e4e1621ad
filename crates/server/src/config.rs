//! Node configuration: every key of DESIGN.md §7, read from flags, `RINGKV_*`
//! environment variables, a TOML file and defaults, in that order of precedence.
//!
//! Parse, don't validate: [`load`] returns a [`Config`] whose every field is already
//! checked (ranges, addresses, cross-key rules), so the rest of the server never
//! re-checks. Bad input is a [`ConfigError`] naming the key, where the value came
//! from, the value and what is allowed: with three sources, "invalid number" alone
//! leaves an operator guessing. Flags are plain strings, not clap-typed, so that
//! flag, env and file values are parsed and reported alike.
//!
//! The keys are declared once, in the `keys!` table below, which generates
//! [`Config`], its `Default`, [`ServerArgs`], loading and [`Config::to_toml`].

use std::fmt::{self, Write as _};
use std::net::SocketAddr;
use std::path::PathBuf;

use ringkv_core::ConflictPolicy;
use ringkv_storage::Durability;
use toml::Value;

/// Upper bound of every `*_ms` key: 30 days.
const MAX_MS: u64 = 30 * 24 * 60 * 60 * 1000;
/// Upper bound of the `u64` size keys: TOML integers are `i64`.
const MAX_SIZE: u64 = i64::MAX as u64;
/// Every `*_ms` key: more than 0, at most 30 days.
const MS: Num = Num::int(1, MAX_MS);
const CONFLICT_POLICIES: &[(&str, ConflictPolicy)] = &[
    ("siblings", ConflictPolicy::Siblings),
    ("lww", ConflictPolicy::Lww),
];
/// Named (R, W) pairs for N = 3 (config key `quorum_preset`); an explicit
/// `read_quorum` / `write_quorum` from any source beats the preset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QuorumPreset {
    /// R=3, W=3.
    Strong,
    /// R=2, W=2 (the default).
    Balanced,
    /// R=1, W=2.
    FastReads,
    /// R=1, W=1.
    Eventual,
}

impl QuorumPreset {
    /// (read quorum, write quorum).
    pub fn quorums(self) -> (u8, u8) {
        match self {
            QuorumPreset::Strong => (3, 3),
            QuorumPreset::Balanced => (2, 2),
            QuorumPreset::FastReads => (1, 2),
            QuorumPreset::Eventual => (1, 1),
        }
    }
}

const QUORUM_PRESETS: &[(&str, QuorumPreset)] = &[
    ("strong", QuorumPreset::Strong),
    ("balanced", QuorumPreset::Balanced),
    ("fast_reads", QuorumPreset::FastReads),
    ("eventual", QuorumPreset::Eventual),
];

const DURABILITIES: &[(&str, Durability)] = &[
    ("fsync", Durability::Fsync),
    ("buffered", Durability::Buffered),
];

/// Generates everything per key from one table: `doc; key: type = default, kind, VALUE_NAME;`.
macro_rules! keys {
    ($($(#[doc = $doc:literal])+ $key:ident: $ty:ty = $default:expr, $kind:expr, $value_name:literal;)*) => {
        /// The effective configuration of one node (DESIGN.md §7). Built by [`load`], every
        /// field is valid alone (each `*_ms` is 1..=30 days) and with the others:
        /// R, W <= N and suspicion < down < permanent failure threshold.
        #[derive(Debug, Clone, PartialEq, Eq)]
        pub struct Config {
            $($(#[doc = $doc])+ pub $key: $ty,)*
        }

        impl Default for Config {
            fn default() -> Self {
                Config { $($key: $default,)* }
            }
        }

        /// Flags of `ringkv server`: `--config`, `--print-config` and one `--<key>` per
        /// configuration key, kept as text so that [`load`] reports every bad value alike.
        #[derive(clap::Args, Debug, Clone, Default)]
        pub struct ServerArgs {
            /// TOML configuration file [env: RINGKV_CONFIG].
            #[arg(long, value_name = "FILE")]
            pub config: Option<PathBuf>,
            /// Print the effective configuration as TOML and exit.
            #[arg(long)]
            pub print_config: bool,
            $($(#[doc = $doc])+ #[arg(long, value_name = $value_name)] pub $key: Option<String>,)*
        }

        /// Every configuration key, in DESIGN.md §7 order.
        const KEYS: &[&str] = &[$(stringify!($key)),*];

        impl ServerArgs {
            fn flag(&self, key: &str) -> Option<&str> {
                match key {
                    $(stringify!($key) => self.$key.as_deref(),)*
                    _ => None,
                }
            }
        }

        impl Sources<'_> {
            /// Every key from its highest-precedence source, each checked alone.
            fn config(&self) -> Result<Config, ConfigError> {
                Ok(Config { $($key: self.load::<$ty, _>(stringify!($key), $default, &$kind)?,)* })
            }
        }

        impl Config {
            /// Renders every key with its effective value as TOML (`node_id` only when set,
            /// sizes as byte counts); loading the output as `--config` yields `self` again.
            /// It includes `cluster_secret` when set: treat the output as a secret.
            pub fn to_toml(&self) -> String {
                let mut out = String::from("# ringkv effective configuration (DESIGN.md §7)\n");
                $(if let Some(value) = $kind.render(&self.$key) {
                    // Writing to a String cannot fail.
                    let _ = writeln!(out, "{} = {value}", stringify!($key));
                })*
                out
            }
        }
    };
}

keys! {
    /// Node id; unset: generated once and kept in data_dir.
    node_id: Option<u64> = None, NodeId, "ID";
    /// Data directory [default: ./ringkv-data].
    data_dir: PathBuf = PathBuf::from("./ringkv-data"), Path, "DIR";
    /// HTTP API listen address [default: 127.0.0.1:8080].
    http_addr: SocketAddr = SocketAddr::from(([127, 0, 0, 1], 8080)), Addr, "ADDR";
    /// RESP (Redis protocol) listen address [default: 127.0.0.1:6380].
    resp_addr: SocketAddr = SocketAddr::from(([127, 0, 0, 1], 6380)), Addr, "ADDR";
    /// Internal RPC listen address [default: 127.0.0.1:7080].
    peer_addr: SocketAddr = SocketAddr::from(([127, 0, 0, 1], 7080)), Addr, "ADDR";
    /// host:port peers to join, comma-separated; none: start a new cluster.
    seeds: Vec<String> = Vec::new(), Seeds, "A,B";
    /// Secret checked in the peer handshake, 16..=1024 bytes; unset: no check.
    cluster_secret: Option<String> = None, Secret, "SECRET";
    /// N, replicas per key, 1..=7 [default: 3].
    replication_factor: u8 = 3, Num::int(1, 7), "N";
    /// Named R/W: strong (3/3) | balanced (2/2) | fast_reads (1/2) | eventual (1/1) [default: balanced].
    quorum_preset: QuorumPreset = QuorumPreset::Balanced, Choice(QUORUM_PRESETS), "PRESET";
    /// R, default read quorum, 1..=N [default: from quorum_preset].
    read_quorum: u8 = 2, Num::int(1, 7), "R";
    /// W, default write quorum, 1..=N [default: from quorum_preset].
    write_quorum: u8 = 2, Num::int(1, 7), "W";
    /// Virtual nodes per node, 1..=4096 [default: 256].
    vnodes: u16 = 256, Num::int(1, 4096), "COUNT";
    /// How concurrent versions resolve: siblings | lww [default: siblings].
    conflict_policy: ConflictPolicy = ConflictPolicy::Siblings, Choice(CONFLICT_POLICIES), "POLICY";
    /// When a write is durable: fsync | buffered [default: fsync].
    durability: Durability = Durability::Fsync, Choice(DURABILITIES), "MODE";
    /// Under load, the shortest time between two journal syncs, 0..=100000 µs; 0: sync as soon as asked [default: 2000].
    group_commit_interval_us: u64 = 2000, Num::int(0, 100_000), "US";
    /// Gossip round period [default: 1000].
    gossip_interval_ms: u64 = 1000, MS, "MS";
    /// Silence before a peer is suspicious [default: 5000].
    suspicion_threshold_ms: u64 = 5000, MS, "MS";
    /// Silence before a peer is down [default: 30000].
    down_threshold_ms: u64 = 30_000, MS, "MS";
    /// Silence before a peer is permanently failed and re-replicated [default: 600000].
    permanent_failure_threshold_ms: u64 = 600_000, MS, "MS";
    /// How long a hint is kept [default: 10800000, 3 hours].
    hint_ttl_ms: u64 = 10_800_000, MS, "MS";
    /// Cap on the hints this node holds for others, e.g. 10GB or 512MiB; 0 takes none [default: 10GB].
    max_hints_bytes: u64 = 10_000_000_000, Num::size_from(0, MAX_SIZE), "SIZE";
    /// Cap on bootstrap and re-replication streaming [default: 50MB].
    streaming_bytes_per_sec: u64 = 50_000_000, Num::size(MAX_SIZE), "SIZE";
    /// Period of Merkle-tree anti-entropy rounds [default: 60000].
    anti_entropy_interval_ms: u64 = 60_000, MS, "MS";
    /// Coordinator deadline per client request [default: 2000].
    request_timeout_ms: u64 = 2000, MS, "MS";
    /// How long tombstones are kept before purge [default: 864000000, 10 days].
    tombstone_gc_grace_ms: u64 = 864_000_000, MS, "MS";
    /// Period of the purge sweep (expired values, collectable tombstones) [default: 60000].
    purge_interval_ms: u64 = 60_000, MS, "MS";
    /// Longest key, 1..=32KiB [default: 8KiB].
    max_key_bytes: usize = 8192, Num::size(ringkv_core::MAX_KEY_BYTES as u64), "SIZE";
    /// Longest value, 1..=1GiB [default: 16MiB].
    max_value_bytes: usize = 16 << 20, Num::size(1 << 30), "SIZE";
    /// Cap on the request bytes a node buffers at once: HTTP bodies, RESP commands past 16KiB; never less than one largest PUT [default: 1GiB].
    max_buffered_request_bytes: u64 = 1 << 30, Num::size(MAX_SIZE), "SIZE";
    /// Longest pause in the middle of a request (an HTTP body, a RESP command) before the node gives up on it and frees its bytes [default: 30000].
    request_stall_timeout_ms: u64 = 30_000, MS, "MS";
}

/// Where a configuration value came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// The command-line flag of this key, e.g. `http_addr`: `--http-addr`.
    Flag(&'static str),
    /// The environment variable of this key, e.g. `http_addr`: `RINGKV_HTTP_ADDR`.
    Env(&'static str),
    /// The TOML file at this path.
    File(PathBuf),
    /// The built-in default.
    Default,
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::Flag(key) => write!(f, "flag --{}", key.replace('_', "-")),
            Origin::Env(key) => write!(f, "env RINGKV_{}", key.to_ascii_uppercase()),
            Origin::File(path) => write!(f, "file {}", path.display()),
            Origin::Default => f.write_str("the default"),
        }
    }
}

/// Why the configuration could not be loaded; the message says what to fix where.
#[derive(thiserror::Error, Debug)]
pub enum ConfigError {
    /// The `--config` / `RINGKV_CONFIG` file could not be read.
    #[error("cannot read config file {}: {error}", .path.display())]
    ReadFile {
        /// The file.
        path: PathBuf,
        /// The I/O error (in the message, not a `source`: printed once).
        error: std::io::Error,
    },
    /// The config file is not valid TOML.
    #[error("config file {} is not valid TOML: {error}", .path.display())]
    ParseFile {
        /// The file.
        path: PathBuf,
        /// The parse error, with line and column (boxed: it is large).
        error: Box<toml::de::Error>,
    },
    /// The config file has a key ringkv does not know, probably a typo.
    #[error("unknown key `{key}` in config file {}{}", .path.display(),
        .suggestion.map(|s| format!(" (did you mean `{s}`?)")).unwrap_or_default())]
    UnknownKey {
        /// The unknown key.
        key: String,
        /// The file.
        path: PathBuf,
        /// The closest known key, if one is close.
        suggestion: Option<&'static str>,
    },
    /// A TOML value has the wrong type, e.g. an integer for an address.
    #[error("wrong type for {key} (from {origin}): found {found} {value}, expected {expected}")]
    WrongType {
        /// The key.
        key: &'static str,
        /// Where the value came from.
        origin: Origin,
        /// The TOML type found.
        found: &'static str,
        /// The value, as TOML.
        value: String,
        /// The TOML types the key accepts.
        expected: &'static str,
    },
    /// A value does not parse or is out of range.
    #[error("invalid value {value:?} for {key} (from {origin}): expected {expected}")]
    Invalid {
        /// The key.
        key: &'static str,
        /// Where the value came from.
        origin: Origin,
        /// The value (only its length for `cluster_secret`).
        value: String,
        /// What the key accepts.
        expected: String,
    },
    /// Two keys are valid alone but not together, e.g. `read_quorum` > `replication_factor`.
    #[error(
        "{key} = {value} (from {origin}) must be {relation} {other_key} = {other_value} (from {other_origin})"
    )]
    Inconsistent {
        /// The first key.
        key: &'static str,
        /// Its value.
        value: u64,
        /// Where it came from.
        origin: Origin,
        /// The required relation: `<` or `<=`.
        relation: &'static str,
        /// The second key.
        other_key: &'static str,
        /// Its value.
        other_value: u64,
        /// Where it came from.
        other_origin: Origin,
    },
}

/// Loads the configuration from `args`, the process environment, the file and defaults.
///
/// # Errors
/// As [`load_from`].
pub fn load(args: &ServerArgs) -> Result<Config, ConfigError> {
    load_from(args, &|var| std::env::var(var).ok())
}

/// Loads the configuration with `env` as the environment. Per key, the flag wins, then
/// `RINGKV_<KEY>` (an empty variable counts as unset), then the file named by
/// `--config` or `RINGKV_CONFIG`, then the default.
///
/// # Errors
/// A [`ConfigError`] for an unreadable or invalid file, an unknown key or wrong TOML
/// type in it, an invalid or out-of-range value, or two inconsistent keys.
pub fn load_from(
    args: &ServerArgs,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Config, ConfigError> {
    let path = args
        .config
        .clone()
        .or_else(|| nonempty(env("RINGKV_CONFIG")).map(PathBuf::from));
    let file = path.map(read_file).transpose()?;
    let src = Sources { args, env, file };
    let mut config = src.config()?;
    let (preset_r, preset_w) = config.quorum_preset.quorums();
    if src.get("read_quorum").is_none() {
        config.read_quorum = preset_r;
    }
    if src.get("write_quorum").is_none() {
        config.write_quorum = preset_w;
    }
    let n = u64::from(config.replication_factor);
    let (r, w) = (config.read_quorum.into(), config.write_quorum.into());
    src.at_most(("read_quorum", r), ("replication_factor", n))?;
    src.at_most(("write_quorum", w), ("replication_factor", n))?;
    let (s, d) = (config.suspicion_threshold_ms, config.down_threshold_ms);
    let p = config.permanent_failure_threshold_ms;
    src.below(("suspicion_threshold_ms", s), ("down_threshold_ms", d))?;
    src.below(
        ("down_threshold_ms", d),
        ("permanent_failure_threshold_ms", p),
    )?;
    Ok(config)
}

/// The three sources, queried per key in precedence order.
struct Sources<'a> {
    args: &'a ServerArgs,
    env: &'a dyn Fn(&str) -> Option<String>,
    file: Option<(PathBuf, toml::Table)>,
}

impl Sources<'_> {
    /// The highest-precedence value of `key`; flag and env values are TOML strings.
    fn get(&self, key: &'static str) -> Option<(Value, Origin)> {
        if let Some(text) = self.args.flag(key) {
            return Some((Value::String(text.to_owned()), Origin::Flag(key)));
        }
        if let Some(text) = nonempty((self.env)(&format!("RINGKV_{}", key.to_ascii_uppercase()))) {
            return Some((Value::String(text), Origin::Env(key)));
        }
        let (path, table) = self.file.as_ref()?;
        Some((table.get(key)?.clone(), Origin::File(path.clone())))
    }

    /// Fails unless `a` <= `b`.
    fn at_most(&self, a: (&'static str, u64), b: (&'static str, u64)) -> Result<(), ConfigError> {
        self.ordered(a.1 <= b.1, a, "<=", b)
    }

    /// Fails unless `a` < `b`.
    fn below(&self, a: (&'static str, u64), b: (&'static str, u64)) -> Result<(), ConfigError> {
        self.ordered(a.1 < b.1, a, "<", b)
    }

    fn ordered(
        &self,
        ok: bool,
        (key, value): (&'static str, u64),
        relation: &'static str,
        (other_key, other_value): (&'static str, u64),
    ) -> Result<(), ConfigError> {
        if ok {
            return Ok(());
        }
        let origin = |key| self.get(key).map_or(Origin::Default, |(_, origin)| origin);
        let (origin, other_origin) = (origin(key), origin(other_key));
        Err(ConfigError::Inconsistent {
            key,
            value,
            origin,
            relation,
            other_key,
            other_value,
            other_origin,
        })
    }

    /// `key` parsed by `kind` from its highest-precedence source, or `default`.
    fn load<T, K: Kind<T>>(
        &self,
        key: &'static str,
        default: T,
        kind: &K,
    ) -> Result<T, ConfigError> {
        let Some((value, origin)) = self.get(key) else {
            return Ok(default);
        };
        let text = match value {
            Value::String(text) => text,
            Value::Integer(i) if K::SHAPE == Shape::TextOrInt => i.to_string(),
            Value::Array(items)
                if K::SHAPE == Shape::TextOrList && items.iter().all(Value::is_str) =>
            {
                items
                    .iter()
                    .filter_map(Value::as_str)
                    .collect::<Vec<_>>()
                    .join(",")
            }
            other => {
                let (found, value, expected) =
                    (other.type_str(), other.to_string(), K::SHAPE.expected());
                return Err(ConfigError::WrongType {
                    key,
                    origin,
                    found,
                    value,
                    expected,
                });
            }
        };
        kind.parse(&text).ok_or_else(|| {
            let value = if K::SECRET {
                format!("<redacted, {} bytes>", text.len())
            } else {
                text
            };
            ConfigError::Invalid {
                key,
                origin,
                value,
                expected: kind.expected(),
            }
        })
    }
}

fn read_file(path: PathBuf) -> Result<(PathBuf, toml::Table), ConfigError> {
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(error) => return Err(ConfigError::ReadFile { path, error }),
    };
    let table: toml::Table = match toml::from_str(&text) {
        Ok(table) => table,
        Err(error) => {
            let error = Box::new(error);
            return Err(ConfigError::ParseFile { path, error });
        }
    };
    if let Some(key) = table.keys().find(|key| !KEYS.contains(&key.as_str())) {
        let distance = |known: &&str| edit_distance(known, key);
        let suggestion = KEYS
            .iter()
            .copied()
            .filter(|k| distance(k) <= 3)
            .min_by_key(distance);
        return Err(ConfigError::UnknownKey {
            key: key.clone(),
            path,
            suggestion,
        });
    }
    Ok((path, table))
}

fn nonempty(text: Option<String>) -> Option<String> {
    text.filter(|text| !text.is_empty())
}

/// Levenshtein distance, for "did you mean" on unknown keys.
fn edit_distance(a: &str, b: &str) -> usize {
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.bytes().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, cb) in b.bytes().enumerate() {
            let substituted = diagonal + usize::from(ca != cb);
            diagonal = row[j + 1];
            row[j + 1] = substituted.min(row[j] + 1).min(diagonal + 1);
        }
    }
    row[b.len()]
}

mod kinds;
#[cfg(test)]
mod tests;

use kinds::{Addr, Choice, Kind, NodeId, Num, Path, Secret, Seeds, Shape};
