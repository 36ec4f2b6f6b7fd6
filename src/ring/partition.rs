//! Partitions: the fixed cut of the key space into Q equal hash ranges.
//!
//! A key belongs to exactly one partition, chosen by a stable hash of its bytes. The hash is part
//! of the on-disk and on-wire contract: every node, every run and every version must agree on it,
//! so it is keyed BLAKE3 with a constant key (never std's randomly keyed `DefaultHasher`), and the
//! tests pin known key → partition values.

use std::fmt;

use serde::{Deserialize, Serialize};

/// The default number of partitions Q.
pub const DEFAULT_PARTITIONS: u32 = 256;

/// The largest supported number of partitions (every [`PartitionId`] fits in a `u16`).
pub const PARTITIONS_MAX: u32 = 1 << 16;

/// Domain-separation key for hashing keys to partitions. Changing it re-partitions every key.
const KEY_HASH_KEY: &[u8; 32] = b"chorus/ring/v1/key-to-partition.";

/// One partition of the key space: the unit of replication, anti-entropy and handoff.
///
/// Partitions are numbered `0..Q` in hash order: partition `p` holds the keys whose hash lies in
/// the `p`-th of Q equal ranges of the 64-bit hash space.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct PartitionId(u16);

impl PartitionId {
    /// Wraps a raw partition number. It is only meaningful below the ring's partition count.
    pub const fn new(raw: u16) -> Self {
        PartitionId(raw)
    }

    /// The raw partition number.
    pub const fn get(self) -> u16 {
        self.0
    }

    /// The partition number as an index into per-partition tables.
    pub const fn index(self) -> usize {
        self.0 as usize
    }

    /// Partition number `index`, if it is below `partitions` (and `partitions` is valid).
    pub fn checked(index: u32, partitions: u32) -> Option<Self> {
        if index < partitions && partitions <= PARTITIONS_MAX {
            u16::try_from(index).ok().map(PartitionId)
        } else {
            None
        }
    }
}

impl fmt::Display for PartitionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl fmt::Debug for PartitionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PartitionId({})", self.0)
    }
}

/// The stable 64-bit hash of a key: the first 8 bytes (little-endian) of keyed BLAKE3.
pub fn key_hash(key: &[u8]) -> u64 {
    first_u64(blake3::keyed_hash(KEY_HASH_KEY, key))
}

/// The partition that owns `key` when the key space is cut into `partitions` ranges.
///
/// The hash `h` of the key is mapped to `⌊h · Q / 2⁶⁴⌋`, so partition `p` owns exactly the hashes
/// in `[⌈p · 2⁶⁴ / Q⌉, ⌈(p+1) · 2⁶⁴ / Q⌉)`. The answer is identical on every node and release.
///
/// # Panics
///
/// If `partitions` is not in `1..=PARTITIONS_MAX`. The partition count comes from a validated
/// [`RingConfig`](super::RingConfig), never from a peer; prefer
/// [`Ring::partition_of`](super::Ring::partition_of), which cannot fail.
pub fn partition_of(key: &[u8], partitions: u32) -> PartitionId {
    assert!(
        (1..=PARTITIONS_MAX).contains(&partitions),
        "partition count {partitions} outside 1..={PARTITIONS_MAX}"
    );
    partition_of_hash(key_hash(key), partitions)
}

/// The partition that owns hash `h` (see [`partition_of`]); `partitions` must be valid.
pub(crate) fn partition_of_hash(h: u64, partitions: u32) -> PartitionId {
    debug_assert!((1..=PARTITIONS_MAX).contains(&partitions));
    let p = (u128::from(h) * u128::from(partitions)) >> 64;
    // p < partitions <= 2^16, so it fits.
    PartitionId(p as u16)
}

/// The position of partition `p` on the token ring: the midpoint of its hash range.
///
/// Its preference list starts at the first token at or after this point. Using the midpoint
/// rather than the start keeps the ring symmetric around each partition's keys.
pub(crate) fn partition_position(p: u32, partitions: u32) -> u64 {
    debug_assert!(p < partitions && partitions <= PARTITIONS_MAX);
    let num = (2 * u128::from(p) + 1) << 64;
    // (2p+1) / 2Q < 1, so the quotient fits in 64 bits.
    (num / (2 * u128::from(partitions))) as u64
}

/// The first 8 bytes of a BLAKE3 output as a little-endian `u64`.
pub(crate) fn first_u64(hash: blake3::Hash) -> u64 {
    let bytes = hash.as_bytes();
    u64::from_le_bytes([
        bytes[0], bytes[1], bytes[2], bytes[3], bytes[4], bytes[5], bytes[6], bytes[7],
    ])
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn pinned_key_to_partition_values() {
        // These values are a compatibility contract: if this test fails, the key hash changed
        // and every stored key would land in a different partition.
        let got: Vec<(u64, u16, u16, u16)> = [&b""[..], b"a", b"hello", b"user:42", &[0xff; 40]]
            .iter()
            .map(|k| {
                (
                    key_hash(k),
                    partition_of(k, 256).get(),
                    partition_of(k, 1024).get(),
                    partition_of(k, PARTITIONS_MAX).get(),
                )
            })
            .collect();
        assert_eq!(got, PINNED);
    }

    const PINNED: [(u64, u16, u16, u16); 5] = [
        (3552245391610250128, 49, 197, 12620),
        (17964483283730332320, 249, 997, 63822),
        (5222250238668036246, 72, 289, 18553),
        (8827736245561258026, 122, 490, 31362),
        (3944263371359219199, 54, 218, 14012),
    ];

    #[test]
    fn single_partition_takes_everything() {
        for k in [&b""[..], b"x", b"\xff\xff"] {
            assert_eq!(partition_of(k, 1), PartitionId::new(0));
        }
    }

    #[test]
    fn hash_extremes_map_to_first_and_last_partition() {
        for q in [1, 2, 3, 7, 256, 1000, PARTITIONS_MAX] {
            assert_eq!(partition_of_hash(0, q).get(), 0);
            assert_eq!(u32::from(partition_of_hash(u64::MAX, q).get()), q - 1);
        }
    }

    #[test]
    fn positions_are_midpoints_and_increasing() {
        assert_eq!(partition_position(0, 1), 1 << 63);
        assert_eq!(partition_position(0, 2), 1 << 62);
        assert_eq!(partition_position(1, 2), 3 << 62);
        for q in [3, 256, PARTITIONS_MAX] {
            let mut prev = None;
            for p in 0..q {
                let pos = partition_position(p, q);
                // A partition's position hashes into that partition.
                assert_eq!(u32::from(partition_of_hash(pos, q).get()), p);
                assert!(prev < Some(pos));
                prev = Some(pos);
            }
        }
    }

    #[test]
    #[should_panic(expected = "partition count 0")]
    fn zero_partitions_panics() {
        partition_of(b"k", 0);
    }

    #[test]
    fn checked_respects_bounds() {
        assert_eq!(PartitionId::checked(0, 1), Some(PartitionId::new(0)));
        assert_eq!(PartitionId::checked(255, 256), Some(PartitionId::new(255)));
        assert_eq!(PartitionId::checked(256, 256), None);
        assert_eq!(
            PartitionId::checked(65535, PARTITIONS_MAX),
            Some(PartitionId::new(65535))
        );
        assert_eq!(PartitionId::checked(0, PARTITIONS_MAX + 1), None);
    }

    #[test]
    fn serde_is_a_bare_number() {
        let p = PartitionId::new(513);
        assert_eq!(serde_json::to_string(&p).unwrap(), "513");
        assert_eq!(serde_json::from_str::<PartitionId>("513").unwrap(), p);
        assert!(serde_json::from_str::<PartitionId>("65536").is_err());
        assert!(serde_json::from_str::<PartitionId>("-1").is_err());
    }

    proptest! {
        #![proptest_config(crate::testing::proptest_config())]

        #[test]
        fn partition_is_in_range(key in proptest::collection::vec(any::<u8>(), 0..64),
                                 q in 1..=PARTITIONS_MAX) {
            let p = partition_of(&key, q);
            prop_assert!(u32::from(p.get()) < q);
            prop_assert_eq!(p, partition_of(&key, q));
        }

        #[test]
        fn partitions_are_monotone_in_hash(a: u64, b: u64, q in 1..=PARTITIONS_MAX) {
            let (lo, hi) = (a.min(b), a.max(b));
            prop_assert!(partition_of_hash(lo, q) <= partition_of_hash(hi, q));
        }

        #[test]
        fn ranges_are_equal_within_one(q in 1..=PARTITIONS_MAX, p_frac in 0.0f64..1.0) {
            // Partition p owns [ceil(p 2^64 / q), ceil((p+1) 2^64 / q)): check both boundaries.
            let p = ((f64::from(q) * p_frac) as u32).min(q - 1);
            let start = ((u128::from(p) << 64).div_ceil(u128::from(q))) as u64;
            prop_assert_eq!(u32::from(partition_of_hash(start, q).get()), p);
            if p > 0 {
                prop_assert_eq!(u32::from(partition_of_hash(start - 1, q).get()), p - 1);
            }
        }
    }
}
