//! Node identity.
//!
//! A [`NodeId`] names one Chorus node for its whole life: it is created once, persisted in the
//! node's data directory, and survives restarts. It is the actor in every dot and version vector,
//! the key of every counter entry, and the owner of ring tokens. It is a plain value: this module
//! does no I/O and creates no randomness (callers that need a fresh id draw it from their own
//! seeded or OS RNG and call [`NodeId::new`]).

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// The identity of one node, a 64-bit number shown as 16 lowercase hex digits.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct NodeId(u64);

impl NodeId {
    /// Wraps a raw 64-bit id.
    pub const fn new(raw: u64) -> Self {
        NodeId(raw)
    }

    /// The raw 64-bit id.
    pub const fn get(self) -> u64 {
        self.0
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

impl fmt::Debug for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "NodeId({:016x})", self.0)
    }
}

/// Why a string is not a node id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid node id {input:?}: expected 1 to 16 hex digits")]
pub struct ParseNodeIdError {
    input: String,
}

impl FromStr for NodeId {
    type Err = ParseNodeIdError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || ParseNodeIdError {
            input: s.chars().take(64).collect(),
        };
        if s.is_empty() || s.len() > 16 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(err());
        }
        u64::from_str_radix(s, 16).map(NodeId).map_err(|_| err())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_and_parse_round_trip() {
        let id = NodeId::new(0x00ab_cdef_0123_4567);
        assert_eq!(id.to_string(), "00abcdef01234567");
        assert_eq!("00abcdef01234567".parse::<NodeId>(), Ok(id));
        assert_eq!("ABCDEF".parse::<NodeId>(), Ok(NodeId::new(0xabcdef)));
    }

    #[test]
    fn parse_rejects_garbage() {
        for bad in ["", "xyz", "+12", "00000000000000000", "12 34", "-1"] {
            assert!(bad.parse::<NodeId>().is_err(), "{bad:?} parsed");
        }
    }
}
