//! Per-seed profiles: what a run stresses beyond the ordinary workloads.
//!
//! Every run has the ordinary workloads (registers, counters and sets, keys shared by the
//! register and the CRDT clients, CRDT updates at `w=3` and `strict` retried until
//! acknowledged). On top of that a seed picks one profile, from its own random stream
//! ([`Profile::for_seed`]), so that an ordinary sweep covers every profile in proportion:
//!
//! - [`Profile::Standard`] (half the seeds): nothing more.
//! - [`Profile::TinyOpLog`] (a quarter): every node remembers CRDT operation ids for a few
//!   seconds and a few records per actor only ([`TINY_OP_LOG`]), and hot-counter clients update
//!   one counter (`h0`) as fast as they can, retrying through other nodes: ids are forgotten
//!   (and the replies say so) while retries are still coming.
//! - [`Profile::LargeValues`] (a quarter): register clients also write values of 300 to 900
//!   KiB, mostly blind (siblings pile up towards the write bound), to keys of their own, through
//!   partitions, joins and leaves: states larger than a frame of old, merged on both sides.
//!
//! A replay command names the profile only when it was forced (`--profile`); otherwise the seed
//! picks it again.

use std::fmt;
use std::str::FromStr;

use chorus::crdt::OpLogPolicy;
use rand::RngExt;

use crate::rng;

/// What a run stresses beyond the ordinary workloads (see the module documentation).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Profile {
    /// The ordinary workloads only.
    Standard,
    /// A tiny operation-id log on every node and a hot counter.
    TinyOpLog,
    /// Register values near the value limit.
    LargeValues,
}

/// The operation-id log of every node in the [`Profile::TinyOpLog`] profile: ids are kept four
/// seconds (and until every replica holds them), eight records per actor and key before stable
/// ones are forgotten early, 32 before unstable ones are.
pub const TINY_OP_LOG: OpLogPolicy = OpLogPolicy {
    window_ms: 4_000,
    per_actor_max: 8,
};

impl Profile {
    /// Every profile.
    pub const ALL: [Profile; 3] = [Profile::Standard, Profile::TinyOpLog, Profile::LargeValues];

    /// The profile seed `seed` runs with: drawn from the seed's own `profile` stream (half
    /// standard, a quarter each of the others).
    pub fn for_seed(seed: u64) -> Profile {
        match rng::stream(seed, "profile").random_range(0..4u32) {
            0 | 1 => Profile::Standard,
            2 => Profile::TinyOpLog,
            _ => Profile::LargeValues,
        }
    }

    /// The name the command line takes.
    pub fn as_str(self) -> &'static str {
        match self {
            Profile::Standard => "standard",
            Profile::TinyOpLog => "tiny-op-log",
            Profile::LargeValues => "large-values",
        }
    }

    /// The operation-id log every node runs with (`None`: the node's default).
    pub fn op_log(self) -> Option<OpLogPolicy> {
        match self {
            Profile::TinyOpLog => Some(TINY_OP_LOG),
            _ => None,
        }
    }
}

impl fmt::Display for Profile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Profile {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Profile::ALL
            .into_iter()
            .find(|p| p.as_str() == s.trim())
            .ok_or_else(|| {
                format!(
                    "unknown profile {s:?}; known profiles: standard, tiny-op-log, large-values"
                )
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_profile_is_drawn_and_parses_back() {
        let mut seen = std::collections::BTreeSet::new();
        for seed in 0..64 {
            seen.insert(Profile::for_seed(seed));
            assert_eq!(Profile::for_seed(seed), Profile::for_seed(seed));
        }
        assert_eq!(seen.len(), 3, "{seen:?}");
        for p in Profile::ALL {
            assert_eq!(p.as_str().parse::<Profile>(), Ok(p));
        }
        assert!("huge".parse::<Profile>().is_err());
    }
}
