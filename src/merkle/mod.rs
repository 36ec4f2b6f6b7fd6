//! Incremental per-partition Merkle trees, and the comparison steps of the diff walk.
//!
//! A [`Tree`] summarises one partition's keys as a fixed three-level hash tree: a root over
//! [`GROUPS`] group hashes, each over [`GROUP_WIDTH`] *buckets*. A key falls in the bucket given
//! by the low bits of its [`key_hash`] (the partition uses the high bits, so the buckets of a
//! partition fill evenly); a bucket is the XOR of the [`leaf`] digests of its keys, where a
//! leaf is the BLAKE3 hash of the key and the exact bytes of its stored state.
//!
//! Because a bucket is an XOR, a write updates the tree in O(1) from the key's old and new
//! leaves ([`Tree::update`]): no scan, no per-key memory. Group and root hashes are recomputed
//! lazily, only for groups that changed. Two replicas with identical contents have identical
//! trees, whatever order the writes arrived in (XOR commutes), so identical roots on every node
//! mean identical partitions, up to 128-bit hash collisions.
//!
//! The XOR of digests is a set hash for *accidental* divergence: a party that controls stored
//! bytes could craft colliding sets, which could only hide a difference from anti-entropy
//! (never corrupt data); replicas are trusted peers and clients do not choose stored bytes
//! freely (states carry dots and metadata minted by the nodes).
//!
//! This module does no I/O and knows nothing about the network: the sync sub-machine feeds it
//! writes and walks two trees apart with [`Tree::groups`], [`Tree::group_buckets`] and
//! [`differing`].

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::ring::key_hash;

/// Groups under the root.
pub const GROUPS: usize = 32;
/// Buckets per group.
pub const GROUP_WIDTH: usize = 32;
/// Buckets per tree.
pub const BUCKETS: usize = GROUPS * GROUP_WIDTH;

/// A 128-bit digest (a truncated BLAKE3 hash, or the XOR of such).
#[derive(Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Digest(pub [u8; 16]);

impl Digest {
    /// The digest of nothing (every bucket of an empty tree).
    pub const ZERO: Digest = Digest([0; 16]);

    fn xor(&mut self, other: &Digest) {
        for (a, b) in self.0.iter_mut().zip(other.0.iter()) {
            *a ^= b;
        }
    }

    fn of(hash: blake3::Hash) -> Digest {
        let mut d = [0u8; 16];
        d.copy_from_slice(&hash.as_bytes()[..16]);
        Digest(d)
    }

    /// Lower-case hex.
    pub fn to_hex(&self) -> String {
        self.0.iter().map(|b| format!("{b:02x}")).collect()
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.to_hex())
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.to_hex())
    }
}

/// The leaf digest of `key` holding the encoded state `bytes`.
pub fn leaf(key: &[u8], bytes: &[u8]) -> Digest {
    let mut h = blake3::Hasher::new();
    h.update(&(key.len() as u64).to_le_bytes());
    h.update(key);
    h.update(bytes);
    Digest::of(h.finalize())
}

/// The bucket `key` falls in.
pub fn bucket_of(key: &[u8]) -> u16 {
    // BUCKETS is 1024: the low ten bits (the partition is chosen by the high bits).
    (key_hash(key) as usize % BUCKETS) as u16
}

/// One partition's tree.
#[derive(Clone)]
pub struct Tree {
    buckets: Box<[Digest; BUCKETS]>,
    groups: [Digest; GROUPS],
    root: Digest,
    /// Groups whose hash (and so the root) is stale.
    stale: u32,
    keys: u64,
}

impl Default for Tree {
    fn default() -> Self {
        Tree::new()
    }
}

impl fmt::Debug for Tree {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tree")
            .field("keys", &self.keys)
            .field("stale", &self.stale)
            .finish_non_exhaustive()
    }
}

impl Tree {
    /// The tree of an empty partition.
    pub fn new() -> Tree {
        Tree {
            buckets: Box::new([Digest::ZERO; BUCKETS]),
            groups: [Digest::ZERO; GROUPS],
            root: Digest::ZERO,
            stale: u32::MAX,
            keys: 0,
        }
    }

    /// `key`'s leaf changed from `old` to `new` (`None`: the key was absent / is gone).
    pub fn update(&mut self, key: &[u8], old: Option<Digest>, new: Option<Digest>) {
        if old == new {
            return;
        }
        let b = usize::from(bucket_of(key));
        let bucket = &mut self.buckets[b];
        if let Some(o) = &old {
            bucket.xor(o);
        }
        if let Some(n) = &new {
            bucket.xor(n);
        }
        match (old.is_some(), new.is_some()) {
            (false, true) => self.keys += 1,
            (true, false) => self.keys = self.keys.saturating_sub(1),
            _ => {}
        }
        self.stale |= 1 << (b / GROUP_WIDTH);
    }

    /// Adds a key found by a scan (a rebuild).
    pub fn insert(&mut self, key: &[u8], leaf: Digest) {
        self.update(key, None, Some(leaf));
    }

    /// Keys in the partition.
    pub fn keys(&self) -> u64 {
        self.keys
    }

    fn refresh(&mut self) {
        if self.stale == 0 {
            return;
        }
        for g in 0..GROUPS {
            if self.stale & (1 << g) != 0 {
                let mut h = blake3::Hasher::new();
                for b in &self.buckets[g * GROUP_WIDTH..(g + 1) * GROUP_WIDTH] {
                    h.update(&b.0);
                }
                self.groups[g] = Digest::of(h.finalize());
            }
        }
        let mut h = blake3::Hasher::new();
        for g in &self.groups {
            h.update(&g.0);
        }
        self.root = if self.keys == 0 && self.buckets.iter().all(|b| *b == Digest::ZERO) {
            Digest::ZERO
        } else {
            Digest::of(h.finalize())
        };
        self.stale = 0;
    }

    /// The root hash ([`Digest::ZERO`] for an empty partition).
    pub fn root(&mut self) -> Digest {
        self.refresh();
        self.root
    }

    /// The group hashes under the root.
    pub fn groups(&mut self) -> [Digest; GROUPS] {
        self.refresh();
        self.groups
    }

    /// The buckets of group `g` (`g < GROUPS`).
    pub fn group_buckets(&self, g: usize) -> &[Digest] {
        let g = g.min(GROUPS - 1);
        &self.buckets[g * GROUP_WIDTH..(g + 1) * GROUP_WIDTH]
    }

    /// The bucket digest `b` (`b < BUCKETS`).
    pub fn bucket(&self, b: usize) -> Digest {
        self.buckets[b.min(BUCKETS - 1)]
    }
}

/// The positions where `a` and `b` differ (a missing position counts as differing).
pub fn differing(a: &[Digest], b: &[Digest]) -> Vec<usize> {
    (0..a.len().max(b.len()))
        .filter(|&i| a.get(i) != b.get(i))
        .collect()
}

/// A set of buckets, as a bitmap (what travels in a key comparison).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BucketSet(#[serde(with = "serde_bytes")] Vec<u8>);

impl Default for BucketSet {
    fn default() -> Self {
        BucketSet(vec![0; BUCKETS / 8])
    }
}

impl fmt::Debug for BucketSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "BucketSet({} buckets)", self.len())
    }
}

impl BucketSet {
    /// Adds bucket `b` (ignored beyond [`BUCKETS`]).
    pub fn insert(&mut self, b: usize) {
        if b < BUCKETS {
            if self.0.len() != BUCKETS / 8 {
                self.0.resize(BUCKETS / 8, 0);
            }
            self.0[b / 8] |= 1 << (b % 8);
        }
    }

    /// Whether bucket `b` is in the set (a malformed bitmap holds nothing).
    pub fn contains(&self, b: usize) -> bool {
        self.0.len() == BUCKETS / 8 && b < BUCKETS && self.0[b / 8] & (1 << (b % 8)) != 0
    }

    /// Whether `key` falls in one of the buckets.
    pub fn holds_key(&self, key: &[u8]) -> bool {
        self.contains(usize::from(bucket_of(key)))
    }

    /// Buckets in the set.
    pub fn len(&self) -> usize {
        if self.0.len() != BUCKETS / 8 {
            return 0;
        }
        self.0.iter().map(|b| b.count_ones() as usize).sum()
    }

    /// Whether the set is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    fn tree_of(entries: &BTreeMap<Vec<u8>, Vec<u8>>) -> Tree {
        let mut t = Tree::new();
        for (k, v) in entries {
            t.insert(k, leaf(k, v));
        }
        t
    }

    #[test]
    fn an_empty_tree_has_the_zero_root_and_one_key_changes_it() {
        let mut t = Tree::new();
        assert_eq!(t.root(), Digest::ZERO);
        t.insert(b"k", leaf(b"k", b"v"));
        assert_ne!(t.root(), Digest::ZERO);
        assert_eq!(t.keys(), 1);
        t.update(b"k", Some(leaf(b"k", b"v")), None);
        assert_eq!(t.root(), Digest::ZERO);
        assert_eq!(t.keys(), 0);
    }

    #[test]
    fn the_walk_finds_exactly_the_bucket_of_a_differing_key() {
        let mut entries: BTreeMap<Vec<u8>, Vec<u8>> = (0..500u32)
            .map(|i| (format!("key{i}").into_bytes(), vec![i as u8; 10]))
            .collect();
        let mut a = tree_of(&entries);
        entries.insert(b"key7".to_vec(), b"changed".to_vec());
        let mut b = tree_of(&entries);
        assert_ne!(a.root(), b.root());
        let groups = differing(&a.groups(), &b.groups());
        assert_eq!(groups.len(), 1);
        let g = groups[0];
        let buckets = differing(a.group_buckets(g), b.group_buckets(g));
        assert_eq!(buckets.len(), 1);
        assert_eq!(
            g * GROUP_WIDTH + buckets[0],
            usize::from(bucket_of(b"key7"))
        );
    }

    #[test]
    fn a_bucket_set_round_trips_and_a_malformed_one_holds_nothing() {
        let mut s = BucketSet::default();
        s.insert(3);
        s.insert(1023);
        s.insert(5000);
        assert_eq!(s.len(), 2);
        assert!(s.contains(3) && s.contains(1023) && !s.contains(4));
        let bytes = crate::protocol::encode(&s).unwrap();
        let back: BucketSet = crate::protocol::decode(&bytes).unwrap();
        assert_eq!(back, s);
        let bad = BucketSet(vec![0xff; 3]);
        assert!(!bad.contains(0) && bad.is_empty());
    }

    proptest! {
        /// Incremental updates in any order give the tree a rebuild gives.
        #[test]
        fn incremental_updates_equal_a_rebuild(
            writes in prop::collection::vec((0u8..40, prop::option::of(any::<u8>())), 0..200),
            shuffle in any::<u64>(),
        ) {
            let mut state: BTreeMap<Vec<u8>, Vec<u8>> = BTreeMap::new();
            let mut t = Tree::new();
            for (k, v) in &writes {
                let key = vec![*k];
                let old = state.get(&key).map(|v| leaf(&key, v));
                let new = v.map(|v| vec![v]);
                let new_leaf = new.as_ref().map(|v| leaf(&key, v));
                match new {
                    Some(v) => { state.insert(key.clone(), v); }
                    None => { state.remove(&key); }
                }
                t.update(&key, old, new_leaf);
            }
            let mut rebuilt = tree_of(&state);
            prop_assert_eq!(t.root(), rebuilt.root());
            prop_assert_eq!(t.keys(), state.len() as u64);
            // Insertion order does not matter.
            let mut items: Vec<_> = state.iter().collect();
            let n = items.len().max(1);
            items.rotate_left((shuffle as usize) % n);
            items.reverse();
            let mut other = Tree::new();
            for (k, v) in items {
                other.insert(k, leaf(k, v));
            }
            prop_assert_eq!(other.root(), rebuilt.root());
        }

        /// Different contents give different roots (no accidental collisions).
        #[test]
        fn different_contents_give_different_roots(
            a in prop::collection::btree_map(prop::collection::vec(any::<u8>(), 1..8), prop::collection::vec(any::<u8>(), 0..8), 0..30),
            b in prop::collection::btree_map(prop::collection::vec(any::<u8>(), 1..8), prop::collection::vec(any::<u8>(), 0..8), 0..30),
        ) {
            let (mut ta, mut tb) = (tree_of(&a), tree_of(&b));
            prop_assert_eq!(a == b, ta.root() == tb.root());
        }
    }
}
