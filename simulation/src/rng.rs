//! Randomness: every random choice in a run comes from a stream derived from the run's seed.
//!
//! Each consumer (network, nemesis, each workload, node seeds and ids) owns its own
//! [`SimRng`] (xoshiro256++) stream, derived from the seed and a label with [`stream`]. Streams are
//! independent, so adding a draw in one consumer does not shift every other consumer's choices.
//! Nothing here reads the OS, the clock or thread state.

use std::time::Duration;

use rand::{RngExt, SeedableRng};
pub use rand_xoshiro::Xoshiro256PlusPlus as SimRng;

/// SplitMix64's finaliser: a bijective, well-mixing hash of a `u64`.
pub fn mix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A deterministic 64-bit value for (`seed`, `label`, `index`), e.g. a per-link parameter.
pub fn derive(seed: u64, label: &str, index: u64) -> u64 {
    let mut h = blake3::Hasher::new();
    h.update(&seed.to_le_bytes());
    h.update(label.as_bytes());
    h.update(&index.to_le_bytes());
    let bytes = h.finalize();
    let mut first = [0u8; 8];
    first.copy_from_slice(&bytes.as_bytes()[..8]);
    u64::from_le_bytes(first)
}

/// The random stream named `label` of the run with `seed`.
pub fn stream(seed: u64, label: &str) -> SimRng {
    SimRng::seed_from_u64(derive(seed, label, 0))
}

/// A duration drawn uniformly from `[low, high]` (millisecond resolution).
pub fn uniform(rng: &mut SimRng, low: Duration, high: Duration) -> Duration {
    let (a, b) = (low.as_millis() as u64, high.as_millis() as u64);
    if b <= a {
        return low;
    }
    Duration::from_millis(rng.random_range(a..=b))
}

/// A duration drawn from an exponential distribution with the given mean, capped at
/// `cap_factor` times the mean so that no single draw is unbounded (microsecond resolution).
pub fn exponential(rng: &mut SimRng, mean: Duration, cap_factor: f64) -> Duration {
    let mean_us = mean.as_secs_f64() * 1e6;
    // random::<f64>() is in [0, 1); 1 - u is in (0, 1], so ln is finite.
    let u: f64 = rng.random();
    let us = (-mean_us * (1.0 - u).ln()).min(mean_us * cap_factor);
    Duration::from_micros(us as u64)
}

/// True with probability `p` (clamped to [0, 1]).
pub fn chance(rng: &mut SimRng, p: f64) -> bool {
    if p <= 0.0 {
        return false;
    }
    rng.random_bool(p.min(1.0))
}

#[cfg(test)]
mod tests {
    use rand::Rng;

    use super::*;

    #[test]
    fn streams_are_deterministic_and_independent() {
        let mut a = stream(7, "network");
        let mut b = stream(7, "network");
        let mut c = stream(7, "nemesis");
        let xs: Vec<u64> = (0..4).map(|_| a.next_u64()).collect();
        let ys: Vec<u64> = (0..4).map(|_| b.next_u64()).collect();
        let zs: Vec<u64> = (0..4).map(|_| c.next_u64()).collect();
        assert_eq!(xs, ys);
        assert_ne!(xs, zs);
        assert_ne!(derive(1, "x", 0), derive(2, "x", 0));
    }

    #[test]
    fn exponential_is_capped_and_has_roughly_the_mean() {
        let mut r = stream(1, "t");
        let mean = Duration::from_millis(10);
        let n = 20_000;
        let total: Duration = (0..n).map(|_| exponential(&mut r, mean, 20.0)).sum();
        let avg = total / n;
        assert!(
            avg > Duration::from_millis(9) && avg < Duration::from_millis(11),
            "{avg:?}"
        );
        for _ in 0..1000 {
            assert!(exponential(&mut r, mean, 3.0) <= Duration::from_millis(30));
        }
    }
}
