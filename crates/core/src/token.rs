//! Ring positions: a key's 128-bit token (xxh3-128) and inclusive token ranges.

use serde::{Deserialize, Serialize};

/// A position on the 2^128 ring: the xxh3-128 hash of a key.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize,
)]
pub struct Token(pub u128);

impl Token {
    pub const MIN: Token = Token(0);
    pub const MAX: Token = Token(u128::MAX);

    /// The token of raw key bytes. Stable across versions and platforms: it decides
    /// where data lives on disk and in the cluster.
    pub fn of(bytes: &[u8]) -> Token {
        Token(xxhash_rust::xxh3::xxh3_128(bytes))
    }

    pub fn to_be_bytes(self) -> [u8; 16] {
        self.0.to_be_bytes()
    }

    pub fn from_be_bytes(bytes: [u8; 16]) -> Token {
        Token(u128::from_be_bytes(bytes))
    }
}

impl std::fmt::Display for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:032x}", self.0)
    }
}

/// Tokens `start..=end`. Ranges that wrap around the ring are split by the caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenRange {
    pub start: Token,
    pub end: Token,
}

impl TokenRange {
    /// Every token.
    pub const FULL: TokenRange = TokenRange {
        start: Token::MIN,
        end: Token::MAX,
    };

    pub fn contains(&self, token: Token) -> bool {
        self.start <= token && token <= self.end
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_is_stable() {
        // Pinned: changing the hash would move every key on disk and in the ring.
        assert_eq!(
            Token::of(b"hello").to_string(),
            format!("{:032x}", xxhash_rust::xxh3::xxh3_128(b"hello"))
        );
        assert_eq!(Token::of(b"hello"), Token::of(b"hello"));
        assert_ne!(Token::of(b"hello"), Token::of(b"hellp"));
    }

    #[test]
    fn big_endian_bytes_sort_like_tokens() {
        let a = Token(1);
        let b = Token(1 << 120);
        assert!(a.to_be_bytes() < b.to_be_bytes());
        assert_eq!(Token::from_be_bytes(b.to_be_bytes()), b);
    }

    #[test]
    fn range_bounds_are_inclusive() {
        let range = TokenRange {
            start: Token(10),
            end: Token(20),
        };
        assert!(range.contains(Token(10)));
        assert!(range.contains(Token(20)));
        assert!(!range.contains(Token(9)));
        assert!(!range.contains(Token(21)));
    }
}
