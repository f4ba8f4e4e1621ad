//! How many replicas must answer a request: `?r=`, `?w=` or `?consistency=`,
//! validated against the replication factor N (DESIGN.md §5, §7).

/// A requested quorum, before it is resolved against N.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Quorum {
    One,
    /// A majority: N / 2 + 1.
    Majority,
    All,
    /// An explicit count, 1..=N.
    Exactly(u8),
}

/// Why a requested quorum cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QuorumError {
    #[error(
        "{name}={value} is out of range: must be 1..={replication_factor} (the replication factor)"
    )]
    OutOfRange {
        name: &'static str,
        value: u8,
        replication_factor: u8,
    },
}

impl Quorum {
    /// The number of replicas this quorum needs when keys have `replication_factor`
    /// replicas. `name` (`r` or `w`) is for the error message.
    ///
    /// # Errors
    /// An explicit count outside 1..=N.
    pub fn required(self, name: &'static str, replication_factor: u8) -> Result<u8, QuorumError> {
        let n = replication_factor.max(1);
        match self {
            Quorum::One => Ok(1),
            Quorum::Majority => Ok(n / 2 + 1),
            Quorum::All => Ok(n),
            Quorum::Exactly(value) if (1..=n).contains(&value) => Ok(value),
            Quorum::Exactly(value) => Err(QuorumError::OutOfRange {
                name,
                value,
                replication_factor: n,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quorums_resolve_against_n() {
        assert_eq!(Quorum::One.required("r", 3), Ok(1));
        assert_eq!(Quorum::Majority.required("r", 3), Ok(2));
        assert_eq!(Quorum::Majority.required("r", 4), Ok(3));
        assert_eq!(Quorum::All.required("w", 5), Ok(5));
        assert_eq!(Quorum::Exactly(3).required("w", 3), Ok(3));
        assert!(Quorum::Exactly(0).required("w", 3).is_err());
        let error = Quorum::Exactly(4).required("w", 3).unwrap_err();
        assert!(error.to_string().contains("w=4"), "{error}");
    }
}
