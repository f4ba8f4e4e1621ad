//! Keys and the limits that bound them.
//!
//! A `Key` is built once at the edge (HTTP, RESP, internal frames, disk) and never
//! re-checked inside: holding a `Key` means it is 1..=`MAX_KEY_BYTES` long.

use bytes::Bytes;

use crate::Token;

/// Hard upper bound on a key, whatever the configuration says: keys read back from
/// disk or from peers are checked against it. Well below what the LSM tree can hold
/// (a u16 length, including the 16-byte token prefix).
pub const MAX_KEY_BYTES: usize = 32 * 1024;

/// Size limits configured for one cluster (`max_key_bytes`, `max_value_bytes`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub max_key_bytes: usize,
    pub max_value_bytes: usize,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_key_bytes: 8 * 1024,
            max_value_bytes: 16 * 1024 * 1024,
        }
    }
}

/// A validated key. Invariant: 1..=`MAX_KEY_BYTES` bytes long.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Key(Bytes);

/// Why raw bytes are not a valid key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseKeyError {
    #[error("key is empty")]
    Empty,
    #[error("key is {len} bytes, more than the limit of {max} bytes")]
    TooLong { len: usize, max: usize },
}

impl Key {
    /// Parses a key that came from a client, against the configured limit.
    ///
    /// # Errors
    /// `Empty` or `TooLong` when the key is outside 1..=`limits.max_key_bytes`.
    pub fn parse(raw: impl Into<Bytes>, limits: &Limits) -> Result<Key, ParseKeyError> {
        Key::checked(raw.into(), limits.max_key_bytes.min(MAX_KEY_BYTES))
    }

    /// Parses a key read back from disk or a peer, against the hard limit only (the
    /// configured limit may have shrunk since the key was written).
    ///
    /// # Errors
    /// `Empty` or `TooLong` when the key is outside 1..=`MAX_KEY_BYTES`.
    pub fn from_stored(raw: Bytes) -> Result<Key, ParseKeyError> {
        Key::checked(raw, MAX_KEY_BYTES)
    }

    fn checked(raw: Bytes, max: usize) -> Result<Key, ParseKeyError> {
        if raw.is_empty() {
            return Err(ParseKeyError::Empty);
        }
        if raw.len() > max {
            return Err(ParseKeyError::TooLong {
                len: raw.len(),
                max,
            });
        }
        Ok(Key(raw))
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    pub fn to_bytes(&self) -> Bytes {
        self.0.clone()
    }

    /// The key's position on the ring.
    pub fn token(&self) -> Token {
        Token::of(&self.0)
    }

    /// The key for humans and logs: printable ASCII as is, the rest escaped.
    pub fn to_escaped(&self) -> String {
        self.0.escape_ascii().to_string()
    }
}

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Key(\"{}\")", self.to_escaped())
    }
}

impl std::fmt::Display for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.to_escaped())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_and_oversized_keys_are_rejected() {
        let limits = Limits {
            max_key_bytes: 4,
            ..Limits::default()
        };
        assert_eq!(Key::parse(Bytes::new(), &limits), Err(ParseKeyError::Empty));
        assert_eq!(
            Key::parse(&b"12345"[..], &limits),
            Err(ParseKeyError::TooLong { len: 5, max: 4 })
        );
        assert!(Key::parse(&b"1234"[..], &limits).is_ok());
    }

    #[test]
    fn configured_limit_never_exceeds_the_hard_limit() {
        let limits = Limits {
            max_key_bytes: usize::MAX,
            ..Limits::default()
        };
        let raw = vec![b'k'; MAX_KEY_BYTES + 1];
        assert!(Key::parse(raw, &limits).is_err());
    }

    #[test]
    fn keys_print_escaped() {
        let key = Key::from_stored(Bytes::from_static(b"a/b\xff\n")).unwrap();
        assert_eq!(key.to_escaped(), "a/b\\xff\\n");
    }
}
