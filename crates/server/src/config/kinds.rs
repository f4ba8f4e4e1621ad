//! How each configuration key's text is parsed and rendered back: the `Kind`s the
//! `keys!` table in `config.rs` names (`Num`, `Choice`, `Addr`, ...), and the small
//! parsers they share (sizes like "512MiB", `host:port`).

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;

use toml::Value;

/// The TOML types a key accepts.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Shape {
    Text,
    TextOrInt,
    TextOrList,
}

impl Shape {
    pub(super) fn expected(self) -> &'static str {
        match self {
            Shape::Text => "a string",
            Shape::TextOrInt => "an integer or a string",
            Shape::TextOrList => "an array of strings or a comma-separated string",
        }
    }
}

/// How one key's text is parsed and its value rendered back as TOML.
pub(super) trait Kind<T> {
    const SHAPE: Shape = Shape::Text;
    /// Error messages show only the length of a secret.
    const SECRET: bool = false;
    /// What the key accepts, for error messages.
    const EXPECTED: &'static str = "";
    /// [`Kind::EXPECTED`], or built from the instance.
    fn expected(&self) -> String {
        Self::EXPECTED.to_owned()
    }
    /// The value of `text` (flag, env, TOML string or integer), `None` if invalid.
    fn parse(&self, text: &str) -> Option<T>;
    /// `value` as TOML, `None` to leave the key out.
    fn render(&self, value: &T) -> Option<String>;
}

/// An integer in `min..=max`; with `size`, also text like "512MiB" or "10 GB".
pub(super) struct Num {
    min: u64,
    max: u64,
    size: bool,
}

impl Num {
    pub(super) const fn int(min: u64, max: u64) -> Num {
        Num {
            min,
            max,
            size: false,
        }
    }
    pub(super) const fn size(max: u64) -> Num {
        Num::size_from(1, max)
    }
    pub(super) const fn size_from(min: u64, max: u64) -> Num {
        Num {
            min,
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

pub(super) struct NodeId;

impl Kind<Option<u64>> for NodeId {
    const SHAPE: Shape = Shape::TextOrInt;
    const EXPECTED: &'static str = "an integer 0..=18446744073709551615";
    fn parse(&self, text: &str) -> Option<Option<u64>> {
        text.trim().parse().ok().map(Some)
    }
    fn render(&self, value: &Option<u64>) -> Option<String> {
        // TOML integers are i64: larger ids go out as strings, which parse back alike.
        value.map(|id| i64::try_from(id).map_or_else(|_| quote(&id.to_string()), |i| i.to_string()))
    }
}

pub(super) struct Path;

impl Kind<PathBuf> for Path {
    const EXPECTED: &'static str = "a non-empty path";
    fn parse(&self, text: &str) -> Option<PathBuf> {
        (!text.is_empty()).then(|| PathBuf::from(text))
    }
    fn render(&self, value: &PathBuf) -> Option<String> {
        Some(quote(&value.to_string_lossy()))
    }
}

pub(super) struct Addr;

impl Kind<SocketAddr> for Addr {
    const EXPECTED: &'static str = "an ip:port address, e.g. 127.0.0.1:8080";
    fn parse(&self, text: &str) -> Option<SocketAddr> {
        text.trim().parse().ok()
    }
    fn render(&self, value: &SocketAddr) -> Option<String> {
        Some(quote(&value.to_string()))
    }
}

pub(super) struct Seeds;

impl Kind<Vec<String>> for Seeds {
    const SHAPE: Shape = Shape::TextOrList;
    const EXPECTED: &'static str = "host:port peers, comma-separated, each port 1..=65535";
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

pub(super) struct Secret;

impl Kind<Option<String>> for Secret {
    const SECRET: bool = true;
    const EXPECTED: &'static str = "a secret of 16..=1024 bytes";
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
pub(super) struct Choice<T: 'static>(pub(super) &'static [(&'static str, T)]);

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

pub(super) fn quote(text: &str) -> String {
    Value::String(text.to_owned()).to_string()
}

/// Parses "100", "50 MB", "512MiB": decimal (KB..TB) or binary (KiB..TiB) units,
/// case-insensitive. `None` on bad syntax or overflow.
pub(super) fn parse_size(text: &str) -> Option<u64> {
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
pub(super) fn is_host_port(seed: &str) -> bool {
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
