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
const DURABILITIES: &[(&str, Durability)] = &[
    ("fsync", Durability::Fsync),
    ("buffered", Durability::Buffered),
];

/// Generates everything per key from one table: `doc; key: type = default, kind, VALUE_NAME;`.
macro_rules! keys {
    ($($(#[doc = $doc:literal])+ $key:ident: $ty:ty = $default:expr, $kind:expr, $value_name:literal;)*) => {
        /// The effective configuration of one node (DESIGN.md §7). Built by [`load`], every
        /// field is valid alone and with the others (quorums <= N, suspicion < down < permanent).
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
    /// R, default read quorum, 1..=N [default: 2].
    read_quorum: u8 = 2, Num::int(1, 7), "R";
    /// W, default write quorum, 1..=N [default: 2].
    write_quorum: u8 = 2, Num::int(1, 7), "W";
    /// Virtual nodes per node, 1..=4096 [default: 256].
    vnodes: u16 = 256, Num::int(1, 4096), "COUNT";
    /// How concurrent versions resolve: siblings | lww [default: siblings].
    conflict_policy: ConflictPolicy = ConflictPolicy::Siblings, Choice(CONFLICT_POLICIES), "POLICY";
    /// When a write is durable: fsync | buffered [default: fsync].
    durability: Durability = Durability::Fsync, Choice(DURABILITIES), "MODE";
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
    /// Cap on queued hints, e.g. 10GB or 512MiB [default: 10GB].
    max_hints_bytes: u64 = 10_000_000_000, Num::size(MAX_SIZE), "SIZE";
    /// Cap on bootstrap and re-replication streaming [default: 50MB].
    streaming_bytes_per_sec: u64 = 50_000_000, Num::size(MAX_SIZE), "SIZE";
    /// Period of Merkle-tree anti-entropy rounds [default: 60000].
    anti_entropy_interval_ms: u64 = 60_000, MS, "MS";
    /// Coordinator deadline per client request [default: 2000].
    request_timeout_ms: u64 = 2000, MS, "MS";
    /// How long tombstones are kept before purge [default: 864000000, 10 days].
    tombstone_gc_grace_ms: u64 = 864_000_000, MS, "MS";
    /// Longest key, 1..=64KiB [default: 8KiB].
    max_key_bytes: usize = 8192, Num::size(65536), "SIZE";
    /// Longest value, 1..=1GiB [default: 16MiB].
    max_value_bytes: usize = 16 << 20, Num::size(1 << 30), "SIZE";
}

/// Where a configuration value came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// A command-line flag, e.g. `--http-addr`.
    Flag(String),
    /// An environment variable, e.g. `RINGKV_HTTP_ADDR`.
    Env(String),
    /// The TOML file at this path.
    File(PathBuf),
    /// The built-in default.
    Default,
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::Flag(flag) => write!(f, "flag {flag}"),
            Origin::Env(var) => write!(f, "env {var}"),
            Origin::File(path) => write!(f, "file {}", path.display()),
            Origin::Default => f.write_str("the default"),
        }
    }
}

/// Why the configuration could not be loaded; the message says what to fix where.
#[derive(thiserror::Error, Debug)]
pub enum ConfigError {
    /// The `--config` / `RINGKV_CONFIG` file could not be read.
    #[error("cannot read config file {}: {source}", .path.display())]
    ReadFile {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The config file is not valid TOML.
    #[error("config file {} is not valid TOML: {source}", .path.display())]
    ParseFile {
        /// The file.
        path: PathBuf,
        /// The parse error, with line and column.
        source: toml::de::Error,
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
    let config = src.config()?;
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
    fn get(&self, key: &str) -> Option<(Value, Origin)> {
        if let Some(text) = self.args.flag(key) {
            let flag = format!("--{}", key.replace('_', "-"));
            return Some((Value::String(text.to_owned()), Origin::Flag(flag)));
        }
        let var = format!("RINGKV_{}", key.to_ascii_uppercase());
        if let Some(text) = nonempty((self.env)(&var)) {
            return Some((Value::String(text), Origin::Env(var)));
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

/// The TOML types a key accepts.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Shape {
    Text,
    TextOrInt,
    TextOrList,
}

impl Shape {
    fn expected(self) -> &'static str {
        match self {
            Shape::Text => "a string",
            Shape::TextOrInt => "an integer or a string",
            Shape::TextOrList => "an array of strings or a comma-separated string",
        }
    }
}

/// How one key's text is parsed and its value rendered back as TOML.
trait Kind<T> {
    const SHAPE: Shape = Shape::Text;
    /// Error messages show only the length of a secret.
    const SECRET: bool = false;
    /// What the key accepts, for error messages.
    fn expected(&self) -> String;
    /// The value of `text` (flag, env, TOML string or integer), `None` if invalid.
    fn parse(&self, text: &str) -> Option<T>;
    /// `value` as TOML, `None` to leave the key out.
    fn render(&self, value: &T) -> Option<String>;
}

/// An integer in `min..=max`; with `size`, also text like "512MiB" or "10 GB".
struct Num {
    min: u64,
    max: u64,
    size: bool,
}

impl Num {
    const fn int(min: u64, max: u64) -> Num {
        Num {
            min,
            max,
            size: false,
        }
    }
    const fn size(max: u64) -> Num {
        Num {
            min: 1,
            max,
            size: true,
        }
    }
}

impl<T: TryFrom<u64> + fmt::Display> Kind<T> for Num {
    const SHAPE: Shape = Shape::TextOrInt;
    fn expected(&self) -> String {
        let (min, max) = (self.min, self.max);
        if self.size {
            format!("a size {min}..={max} bytes: an integer or e.g. \"16MiB\", \"10GB\"")
        } else {
            format!("an integer {min}..={max}")
        }
    }
    fn parse(&self, text: &str) -> Option<T> {
        let n = if self.size {
            parse_size(text)?
        } else {
            text.trim().parse().ok()?
        };
        (self.min..=self.max)
            .contains(&n)
            .then(|| T::try_from(n).ok())
            .flatten()
    }
    fn render(&self, value: &T) -> Option<String> {
        Some(value.to_string())
    }
}

struct NodeId;

impl Kind<Option<u64>> for NodeId {
    const SHAPE: Shape = Shape::TextOrInt;
    fn expected(&self) -> String {
        format!("an integer 0..={}", u64::MAX)
    }
    fn parse(&self, text: &str) -> Option<Option<u64>> {
        text.trim().parse().ok().map(Some)
    }
    fn render(&self, value: &Option<u64>) -> Option<String> {
        // TOML integers are i64: larger ids go out as strings, which parse back alike.
        value.map(|id| i64::try_from(id).map_or_else(|_| quote(&id.to_string()), |i| i.to_string()))
    }
}

struct Path;

impl Kind<PathBuf> for Path {
    fn expected(&self) -> String {
        "a non-empty path".to_owned()
    }
    fn parse(&self, text: &str) -> Option<PathBuf> {
        (!text.is_empty()).then(|| PathBuf::from(text))
    }
    fn render(&self, value: &PathBuf) -> Option<String> {
        Some(quote(&value.to_string_lossy()))
    }
}

struct Addr;

impl Kind<SocketAddr> for Addr {
    fn expected(&self) -> String {
        "an ip:port address, e.g. 127.0.0.1:8080".to_owned()
    }
    fn parse(&self, text: &str) -> Option<SocketAddr> {
        text.trim().parse().ok()
    }
    fn render(&self, value: &SocketAddr) -> Option<String> {
        Some(quote(&value.to_string()))
    }
}

struct Seeds;

impl Kind<Vec<String>> for Seeds {
    const SHAPE: Shape = Shape::TextOrList;
    fn expected(&self) -> String {
        "host:port peers, comma-separated, each port 1..=65535".to_owned()
    }
    fn parse(&self, text: &str) -> Option<Vec<String>> {
        let seeds = text
            .split(',')
            .map(str::trim)
            .filter(|seed| !seed.is_empty());
        seeds
            .map(|seed| is_host_port(seed).then(|| seed.to_owned()))
            .collect()
    }
    fn render(&self, value: &Vec<String>) -> Option<String> {
        Some(Value::Array(value.iter().cloned().map(Value::String).collect()).to_string())
    }
}

struct Secret;

impl Kind<Option<String>> for Secret {
    const SECRET: bool = true;
    fn expected(&self) -> String {
        "a secret of 16..=1024 bytes".to_owned()
    }
    fn parse(&self, text: &str) -> Option<Option<String>> {
        (16..=1024)
            .contains(&text.len())
            .then(|| Some(text.to_owned()))
    }
    fn render(&self, value: &Option<String>) -> Option<String> {
        value.as_deref().map(quote)
    }
}

/// One of a fixed set of names, case-insensitive.
struct Choice<T: 'static>(&'static [(&'static str, T)]);

impl<T: Copy + PartialEq> Kind<T> for Choice<T> {
    fn expected(&self) -> String {
        let names: Vec<_> = self.0.iter().map(|(name, _)| format!("{name:?}")).collect();
        format!("one of {}", names.join(", "))
    }
    fn parse(&self, text: &str) -> Option<T> {
        self.0
            .iter()
            .find(|(name, _)| name.eq_ignore_ascii_case(text.trim()))
            .map(|&(_, v)| v)
    }
    fn render(&self, value: &T) -> Option<String> {
        self.0
            .iter()
            .find(|(_, v)| v == value)
            .map(|(name, _)| quote(name))
    }
}

fn read_file(path: PathBuf) -> Result<(PathBuf, toml::Table), ConfigError> {
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(source) => return Err(ConfigError::ReadFile { path, source }),
    };
    let table: toml::Table = match toml::from_str(&text) {
        Ok(table) => table,
        Err(source) => return Err(ConfigError::ParseFile { path, source }),
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

fn quote(text: &str) -> String {
    Value::String(text.to_owned()).to_string()
}

/// Parses "100", "50 MB", "512MiB": decimal (KB..TB) or binary (KiB..TiB) units,
/// case-insensitive. `None` on bad syntax or overflow.
fn parse_size(text: &str) -> Option<u64> {
    let text = text.trim();
    let (digits, unit) = text.split_at(
        text.find(|c: char| !c.is_ascii_digit())
            .unwrap_or(text.len()),
    );
    let multiplier: u64 = match unit.trim_start().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "kb" => 1_000,
        "mb" => 1_000_000,
        "gb" => 1_000_000_000,
        "tb" => 1_000_000_000_000,
        "kib" => 1 << 10,
        "mib" => 1 << 20,
        "gib" => 1 << 30,
        "tib" => 1 << 40,
        _ => return None,
    };
    digits.parse::<u64>().ok()?.checked_mul(multiplier)
}

/// `host:port` with a host (an IPv6 one in brackets) and a port 1..=65535.
fn is_host_port(seed: &str) -> bool {
    let Some((host, port)) = seed.rsplit_once(':') else {
        return false;
    };
    let bracketed = host.starts_with('[') && host.ends_with(']');
    let host_ok = !host.is_empty()
        && !host.contains(char::is_whitespace)
        && (bracketed || !host.contains(':'));
    let port_ok =
        port.bytes().all(|b| b.is_ascii_digit()) && port.parse::<u16>().is_ok_and(|p| p > 0);
    host_ok && port_ok
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

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser as _;

    #[derive(clap::Parser)]
    struct Cli {
        #[command(flatten)]
        args: ServerArgs,
    }

    fn toml_file(text: &str) -> tempfile::NamedTempFile {
        let file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(file.path(), text).unwrap();
        file
    }

    /// Loads with these clap-parsed flags, env variables and, if not empty, TOML file.
    fn load_with(flags: &[&str], env: &[(&str, &str)], toml: &str) -> Result<Config, ConfigError> {
        let file = toml_file(toml);
        let mut argv = vec!["ringkv".to_owned()];
        if !toml.is_empty() {
            argv.extend(["--config".to_owned(), file.path().display().to_string()]);
        }
        argv.extend(flags.iter().map(|flag| flag.to_string()));
        let args = Cli::try_parse_from(argv).unwrap().args;
        load_from(&args, &|var| {
            env.iter()
                .find(|(k, _)| *k == var)
                .map(|(_, v)| v.to_string())
        })
    }

    fn error_with(flags: &[&str], env: &[(&str, &str)], toml: &str) -> String {
        load_with(flags, env, toml).unwrap_err().to_string()
    }

    #[test]
    fn defaults_apply_when_nothing_is_set() {
        let config = load_with(&[], &[], "").unwrap();
        assert_eq!(config, Config::default());
        assert_eq!(config.http_addr.to_string(), "127.0.0.1:8080");
        assert_eq!(
            (config.replication_factor, config.read_quorum, config.vnodes),
            (3, 2, 256)
        );
        assert_eq!(config.max_value_bytes, 16 * 1024 * 1024);
        assert_eq!(config.tombstone_gc_grace_ms, 10 * 24 * 3600 * 1000);
        assert_eq!(
            (config.conflict_policy, config.durability),
            (ConflictPolicy::Siblings, Durability::Fsync)
        );
        assert_eq!((config.node_id, config.cluster_secret), (None, None));
    }

    /// Each key is set in a different subset of sources; the highest one must win.
    #[test]
    fn flag_beats_env_beats_file_beats_default() {
        let toml = "replication_factor = 5\nvnodes = 64\nhttp_addr = \"0.0.0.0:1\"\ndurability = \"BUFFERED\"";
        let env = [
            ("RINGKV_REPLICATION_FACTOR", "6"),
            ("RINGKV_VNODES", "32"),
            ("RINGKV_NODE_ID", ""),
        ];
        let config = load_with(&["--replication-factor", "4"], &env, toml).unwrap();
        assert_eq!(config.replication_factor, 4);
        assert_eq!(config.vnodes, 32);
        assert_eq!(config.http_addr.to_string(), "0.0.0.0:1");
        assert_eq!(config.durability, Durability::Buffered);
        assert_eq!(config.read_quorum, 2);
        assert_eq!(
            config.node_id, None,
            "an empty env variable counts as unset"
        );
    }

    #[test]
    fn config_file_may_be_named_by_env() {
        let file = toml_file("vnodes = 7\nnode_id = 42\n");
        let path = file.path().display().to_string();
        let config = load_with(&["--print-config"], &[("RINGKV_CONFIG", &path)], "").unwrap();
        assert_eq!((config.vnodes, config.node_id), (7, Some(42)));
        assert!(
            Cli::try_parse_from(["ringkv", "--print-config"])
                .unwrap()
                .args
                .print_config
        );
    }

    #[test]
    fn bad_value_names_key_source_value_and_what_is_allowed() {
        let message = error_with(&[], &[("RINGKV_REPLICATION_FACTOR", "7x")], "");
        let expected = "invalid value \"7x\" for replication_factor (from env RINGKV_REPLICATION_FACTOR): \
                        expected an integer 1..=7";
        assert_eq!(message, expected);
    }

    #[test]
    fn cross_key_error_names_both_keys_and_sources() {
        let message = error_with(&["--read-quorum", "4"], &[], "");
        let expected = "read_quorum = 4 (from flag --read-quorum) must be <= replication_factor = 3 (from the default)";
        assert_eq!(message, expected);
    }

    /// Each case is `SOURCE => FRAGMENTS`: SOURCE is `flag --k=v ...`, `env VAR=value` or
    /// `file TOML`; the error message must contain every `|`-separated fragment.
    #[test]
    fn bad_inputs_are_errors_naming_the_key() {
        let cases = [
            "flag --vnodes=4097 => vnodes|flag --vnodes|1..=4096",
            "flag --node-id=-1 => node_id|\"-1\"",
            "file gossip_interval_ms = 0 => gossip_interval_ms|\"0\"|(from file /",
            "file hint_ttl_ms = 2592000001 => hint_ttl_ms|1..=2592000000",
            "file max_key_bytes = 65537 => max_key_bytes|1..=65536",
            "file max_value_bytes = \"2GiB\" => max_value_bytes|\"2GiB\"",
            "env RINGKV_MAX_HINTS_BYTES=10 GiBs => max_hints_bytes|\"10 GiBs\"",
            "file streaming_bytes_per_sec = 0 => streaming_bytes_per_sec|\"0\"",
            "flag --http-addr=localhost => http_addr|flag --http-addr|ip:port",
            "env RINGKV_PEER_ADDR=1.2.3.4 => peer_addr|env RINGKV_PEER_ADDR",
            "env RINGKV_CONFLICT_POLICY=newest => conflict_policy|\"siblings\", \"lww\"",
            "flag --durability=sometimes => durability|\"fsync\", \"buffered\"",
            "flag --data-dir= => data_dir|non-empty",
            "file replicaton_factor = 3 => `replicaton_factor`|did you mean `replication_factor`?",
            "file [server]\nport = 1 => unknown key `server`",
            "file http_addr = 8080 => wrong type for http_addr|found integer 8080|a string",
            "file vnodes = 1.5 => vnodes|found float",
            "file durability = true => durability|found boolean",
            "file seeds = [\"a:1\", 2] => seeds|found array|array of strings",
            "file seeds = 7 => seeds|found integer",
            "env RINGKV_REPLICATION_FACTOR=1 => read_quorum|env RINGKV_REPLICATION_FACTOR",
            "flag --write-quorum=3 --replication-factor=2 => write_quorum = 3|replication_factor = 2",
            "file suspicion_threshold_ms = 30000 => suspicion_threshold_ms|< down_threshold_ms",
            "file down_threshold_ms = 600000 => down_threshold_ms|< permanent_failure_threshold_ms",
        ];
        for case in cases {
            let (source, fragments) = case.split_once(" => ").unwrap();
            let message = match source.split_once(' ').unwrap() {
                ("flag", flags) => error_with(&flags.split(' ').collect::<Vec<_>>(), &[], ""),
                ("env", pair) => error_with(&[], &[pair.split_once('=').unwrap()], ""),
                (_, toml) => error_with(&[], &[], toml),
            };
            for fragment in fragments.split('|') {
                assert!(
                    message.contains(fragment),
                    "{case}: {message:?} lacks {fragment:?}"
                );
            }
        }
    }

    #[test]
    fn cluster_secret_is_checked_but_never_echoed() {
        let message = error_with(&["--cluster-secret", "hunter2"], &[], "");
        assert!(
            message.contains("cluster_secret") && message.contains("7 bytes"),
            "{message}"
        );
        assert!(!message.contains("hunter2"), "{message}");
        let config = load_with(&[], &[("RINGKV_CLUSTER_SECRET", "0123456789abcdef")], "").unwrap();
        assert_eq!(config.cluster_secret.as_deref(), Some("0123456789abcdef"));
    }

    #[test]
    fn unreadable_or_invalid_file_is_an_error_naming_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.toml");
        let args = ServerArgs {
            config: Some(missing.clone()),
            ..ServerArgs::default()
        };
        let message = load_from(&args, &|_| None).unwrap_err().to_string();
        assert!(
            message.contains(&missing.display().to_string()),
            "{message}"
        );
        let file = toml_file("vnodes = = 3\n");
        let args = ServerArgs {
            config: Some(file.path().to_owned()),
            ..ServerArgs::default()
        };
        let message = load_from(&args, &|_| None).unwrap_err().to_string();
        assert!(
            message.contains(&file.path().display().to_string()),
            "{message}"
        );
        assert!(message.contains("not valid TOML"), "{message}");
    }

    #[test]
    fn sizes_accept_integers_and_units() {
        let cases = [
            ("100", 100),
            ("100B", 100),
            ("1KiB", 1024),
            ("512MiB", 512 << 20),
            ("50 MB", 50_000_000),
            ("10gb", 10_000_000_000),
            (" 2 TiB ", 2 << 40),
            ("1kb", 1000),
            ("3TB", 3_000_000_000_000),
        ];
        for (text, bytes) in cases {
            assert_eq!(parse_size(text), Some(bytes), "{text}");
        }
        for bad in [
            "",
            "MB",
            "1.5GB",
            "-1",
            "10 XB",
            "99999999999999999999",
            "20000000TB",
            "1 K",
        ] {
            assert_eq!(parse_size(bad), None, "{bad}");
        }
        let config = load_with(
            &[],
            &[],
            "max_hints_bytes = 12345\nstreaming_bytes_per_sec = \"1 MiB\"",
        )
        .unwrap();
        assert_eq!(
            (config.max_hints_bytes, config.streaming_bytes_per_sec),
            (12345, 1 << 20)
        );
        let config = load_with(&["--max-key-bytes", "64KiB"], &[], "").unwrap();
        assert_eq!(config.max_key_bytes, 65536);
    }

    #[test]
    fn seeds_come_from_lists_or_comma_separated_text() {
        let toml = "seeds = [\"10.0.0.1:7080\", \"node-b.example:7080\", \"[::1]:7081\"]";
        let config = load_with(&[], &[], toml).unwrap();
        assert_eq!(
            config.seeds,
            ["10.0.0.1:7080", "node-b.example:7080", "[::1]:7081"]
        );
        assert_eq!(
            load_with(&[], &[], "seeds = \"a:1, b:2,\"").unwrap().seeds,
            ["a:1", "b:2"]
        );
        assert_eq!(
            load_with(&["--seeds", "a:1,b:2"], &[], "").unwrap().seeds,
            ["a:1", "b:2"]
        );
        assert_eq!(
            load_with(&[], &[("RINGKV_SEEDS", "x:65535")], "")
                .unwrap()
                .seeds,
            ["x:65535"]
        );
        for bad in [
            "a", ":7080", "a:0", "a:65536", "a:+80", "a:", "::1:7080", "a b:1",
        ] {
            let message = error_with(&["--seeds", &format!("ok:1,{bad}")], &[], "");
            assert!(
                message.contains("for seeds (from flag --seeds)") && message.contains(bad),
                "{message}"
            );
        }
    }

    /// Every key differs from its default, so a key missing from the output would fail.
    #[test]
    fn to_toml_round_trips() {
        let config = Config {
            node_id: Some(u64::MAX),
            data_dir: PathBuf::from("/var/lib/ringkv \"x\""),
            http_addr: "[::1]:1".parse().unwrap(),
            resp_addr: "0.0.0.0:2".parse().unwrap(),
            peer_addr: "10.1.2.3:3".parse().unwrap(),
            seeds: vec!["a:1".into(), "[::1]:2".into()],
            cluster_secret: Some("s3cret\\with\"quotes\"".into()),
            replication_factor: 5,
            read_quorum: 4,
            write_quorum: 1,
            vnodes: 16,
            conflict_policy: ConflictPolicy::Lww,
            durability: Durability::Buffered,
            gossip_interval_ms: 10,
            suspicion_threshold_ms: 20,
            down_threshold_ms: 30,
            permanent_failure_threshold_ms: 40,
            hint_ttl_ms: 50,
            max_hints_bytes: 60,
            streaming_bytes_per_sec: 70,
            anti_entropy_interval_ms: 80,
            request_timeout_ms: 90,
            tombstone_gc_grace_ms: 100,
            max_key_bytes: 110,
            max_value_bytes: 120,
        };
        for original in [
            config,
            Config::default(),
            Config {
                node_id: Some(7),
                ..Config::default()
            },
        ] {
            let text = original.to_toml();
            assert_eq!(load_with(&[], &[], &text).unwrap(), original, "{text}");
        }
        let text = Config::default().to_toml();
        assert!(
            !text.contains("node_id") && text.contains("max_hints_bytes = 10000000000\n"),
            "{text}"
        );
        assert_eq!(
            text.lines().filter(|line| line.contains(" = ")).count(),
            KEYS.len() - 2
        );
    }
}
