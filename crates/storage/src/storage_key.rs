//! The stored key: `token (16 bytes, big-endian) ‖ key bytes` (DESIGN.md §3).
//!
//! Big-endian tokens sort like the tokens themselves, so the records of a token range
//! are contiguous on disk and a range scan is one ordered iteration; within a token,
//! keys sort by their bytes, which is `Key`'s own order.

use std::ops::Bound;

use bytes::Bytes;
use ringkv_core::{Key, Token, TokenRange};

use crate::StorageError;

/// Bytes of the token prefix.
pub const TOKEN_BYTES: usize = 16;

/// Longest stored key: fjall writes key lengths as a u16 (and panics past it).
pub const MAX_STORED_KEY_BYTES: usize = u16::MAX as usize;

// Every `Key` fits in a stored key, so `encode` cannot fail and fjall cannot panic.
const _: () = assert!(
    ringkv_core::MAX_KEY_BYTES + TOKEN_BYTES <= MAX_STORED_KEY_BYTES,
    "ringkv_core::MAX_KEY_BYTES leaves no room for the token in a fjall key"
);

/// The stored key of `key`.
pub fn encode(key: &Key) -> Vec<u8> {
    let bytes = key.as_bytes();
    let mut stored = Vec::with_capacity(TOKEN_BYTES + bytes.len());
    stored.extend_from_slice(&key.token().to_be_bytes());
    stored.extend_from_slice(bytes);
    stored
}

/// The key and token stored in `stored`.
///
/// # Errors
/// `Corrupt` when `stored` is too short, the key is not a valid key, or the token is
/// not the key's token (the record would sit in the wrong range).
pub fn decode(stored: &[u8]) -> Result<(Token, Key), StorageError> {
    let corrupt = |reason: String| StorageError::Corrupt {
        key: stored.escape_ascii().to_string(),
        reason,
    };
    let Some((token_bytes, key_bytes)) = stored.split_first_chunk::<TOKEN_BYTES>() else {
        return Err(corrupt(format!(
            "stored key is {} bytes, shorter than its {TOKEN_BYTES}-byte token",
            stored.len()
        )));
    };
    let token = Token::from_be_bytes(*token_bytes);
    let key = Key::from_stored(Bytes::copy_from_slice(key_bytes))
        .map_err(|error| corrupt(format!("stored key is invalid: {error}")))?;
    if key.token() != token {
        return Err(StorageError::Corrupt {
            key: key.to_escaped(),
            reason: format!(
                "stored token {token} is not the key's token {}",
                key.token()
            ),
        });
    }
    Ok((token, key))
}

/// Lower and upper bound of a scan over stored keys.
pub type ScanBounds = (Bound<Vec<u8>>, Bound<Vec<u8>>);

/// Bounds on stored keys selecting the tokens of `range`, strictly after `after`.
/// `None` when nothing can match (an empty range, or `after` beyond it).
pub fn scan_bounds(range: TokenRange, after: Option<&Key>) -> Option<ScanBounds> {
    if range.start > range.end {
        return None;
    }
    let mut lower = Bound::Included(range.start.to_be_bytes().to_vec());
    if let Some(after) = after {
        let token = after.token();
        if token > range.end {
            return None;
        }
        if token >= range.start {
            lower = Bound::Excluded(encode(after));
        }
    }
    // Every stored key of token `end` sorts below the next token's prefix.
    let upper = match range.end.0.checked_add(1) {
        Some(next) => Bound::Excluded(Token(next).to_be_bytes().to_vec()),
        None => Bound::Unbounded,
    };
    Some((lower, upper))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Bytes read from disk never panic the decoder.
        #[test]
        fn decode_of_random_bytes_never_panics(raw in prop::collection::vec(any::<u8>(), 0..64)) {
            if let Ok((token, key)) = decode(&raw) {
                prop_assert_eq!(token, key.token());
                prop_assert_eq!(encode(&key), raw);
            }
        }

        #[test]
        fn stored_keys_sort_like_token_then_key(
            a in prop::collection::vec(any::<u8>(), 1..8),
            b in prop::collection::vec(any::<u8>(), 1..8),
        ) {
            let a = Key::from_stored(Bytes::from(a)).unwrap();
            let b = Key::from_stored(Bytes::from(b)).unwrap();
            prop_assert_eq!(
                encode(&a).cmp(&encode(&b)),
                (a.token(), &a).cmp(&(b.token(), &b))
            );
        }
    }

    fn key(raw: &'static [u8]) -> Key {
        Key::from_stored(Bytes::from_static(raw)).unwrap()
    }

    #[test]
    fn encode_then_decode_is_identity() {
        let k = key(b"user/\xff42");
        let stored = encode(&k);
        assert_eq!(&stored[..TOKEN_BYTES], &k.token().to_be_bytes());
        assert_eq!(decode(&stored).unwrap(), (k.token(), k));
    }

    #[test]
    fn short_stored_key_is_corrupt() {
        assert!(matches!(
            decode(&[1; 16]),
            Err(StorageError::Corrupt { .. })
        ));
        assert!(matches!(decode(&[1; 3]), Err(StorageError::Corrupt { .. })));
        assert!(matches!(decode(&[]), Err(StorageError::Corrupt { .. })));
    }

    #[test]
    fn token_mismatch_is_corrupt() {
        let mut stored = encode(&key(b"a"));
        stored[0] ^= 1;
        let Err(StorageError::Corrupt { key, reason }) = decode(&stored) else {
            panic!("expected Corrupt");
        };
        assert_eq!(key, "a");
        assert!(reason.contains("token"), "{reason}");
    }

    #[test]
    fn longest_key_round_trips() {
        let longest =
            Key::from_stored(Bytes::from(vec![b'k'; ringkv_core::MAX_KEY_BYTES])).unwrap();
        let stored = encode(&longest);
        assert!(stored.len() <= MAX_STORED_KEY_BYTES);
        assert_eq!(decode(&stored).unwrap().1, longest);
    }

    #[test]
    fn empty_and_full_ranges_have_the_right_bounds() {
        let empty = TokenRange {
            start: Token(5),
            end: Token(4),
        };
        assert!(scan_bounds(empty, None).is_none());
        let (lower, upper) = scan_bounds(TokenRange::FULL, None).unwrap();
        assert_eq!(lower, Bound::Included(vec![0; 16]));
        assert_eq!(upper, Bound::Unbounded);
    }

    #[test]
    fn after_outside_the_range_is_handled() {
        let k = key(b"k");
        let t = k.token();
        let before = TokenRange {
            start: Token::MIN,
            end: Token(t.0 - 1),
        };
        assert!(scan_bounds(before, Some(&k)).is_none());
        let beyond = TokenRange {
            start: Token(t.0 + 1),
            end: Token::MAX,
        };
        let (lower, _) = scan_bounds(beyond, Some(&k)).unwrap();
        assert_eq!(
            lower,
            Bound::Included(Token(t.0 + 1).to_be_bytes().to_vec())
        );
        let (lower, _) = scan_bounds(TokenRange::FULL, Some(&k)).unwrap();
        assert_eq!(lower, Bound::Excluded(encode(&k)));
    }
}
