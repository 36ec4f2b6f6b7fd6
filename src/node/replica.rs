//! The replica sub-machine: this node's copy of the keys it holds.
//!
//! It owns local reads and writes of objects: it mints dots for writes this node coordinates
//! and applies CRDT updates ([`ReplicaCall::Mint`], a local call only; an update of a key it
//! has no copy of waits until the coordinator asked the other replicas what they hold, so the
//! key's type is known), merges states other nodes send
//! ([`ReplicaMessage::Write`], [`ReplicaMessage::Merge`]), answers reads, and stages every change
//! in the journal, acknowledging a write only once it is durable. It keeps the states staged but
//! not yet durable in an overlay, so reads and later writes see them; the store holds the rest.
//! It never decides who replicates what (that is the coordinator's and the topology's job) and
//! never touches hints or membership.
//!
//! # Dots are never minted twice
//!
//! Dots are minted by an *actor*, a 64-bit id this node draws at random (from the core's seeded
//! generator) when it starts. A new process is a new actor, so a node that lost unsynced writes
//! in a crash, or runs on a restored data directory, cannot mint a dot it minted before: its
//! earlier dots belong to an actor that no longer mints. While an actor mints, the local copy
//! holds every dot it minted for a key (they are staged before anything else sees them), so
//! counters only move forward. Local copies are deleted only by [`ReplicaCall::Drop`], for two
//! reasons:
//!
//! - a partition this node no longer owns, once its owners hold it: the drop retires the actor
//!   (the replica goes on with a new one, derived from the old by a 64-bit mix), so a key it
//!   held once and holds no more never gets a dot, a counter entry or an add tag the old actor
//!   issued;
//! - a register tombstone every replica agreed to purge (the sync sub-machine's tombstone
//!   GC): the actor stays, but the replica remembers the highest counter it had minted in any
//!   purged tombstone (its *dot floor*), and a register write to a key that holds no entry of
//!   the actor mints above it ([`Register::put_above`]). Retiring the actor on every purge
//!   would add an entry per purge round to the clocks of keys written afterwards.
//!
//! # Op-log rows claim only what is durable
//!
//! A CRDT key's op log keeps, per replica, a row saying how far that replica holds each actor's
//! records; an actor forgets a record once every replica's row claims it (see
//! [`crate::crdt::OpLog`]). A state this replica stores leaves it before it is durable (a
//! coordinator's fan-out, a read, anti-entropy), and a crash takes it back: had its row
//! claimed the state, an actor could forget a record that this replica, restarted, then
//! applies again from a client's retry — counted twice, for good. So the row a stored state
//! carries for this node claims only its *durable* copy: the copy in the store when no staged
//! state of the key awaits durability (the overlay holds none), else the newest staged state
//! the journal reported durable (so a key written without pause still moves its row, a group
//! commit behind), and the row stays as it was while neither is known. Rows lag the state by
//! a write; anti-entropy brings them up. "Durable" is what the storage reports: with `--sync
//! never` a machine crash (not a process crash) can take back what a row claimed. Still
//! open: a duplicate that a process applied and sent just before it crashed, delivered late
//! (held in a hint, a delayed message) after an actor forgot the operation (the op log's
//! "Stability" notes).

use std::collections::{BTreeMap, VecDeque};

use serde::{Deserialize, Serialize};
use tracing::{error, warn};

use super::coordinator::CoordinatorMessage;
use super::hints::HintsMessage;
use super::object::{
    Context, CrdtOp, HeldSeqs, Object, TypeConflict, UpdateEffect, UpdateError, OBJECT_BYTES_MAX,
    OBJECT_WRITE_BYTES_MAX,
};
use super::request::ClientError;
use super::sync::SyncMessage;
use super::{Call, Effects};
use crate::causality::{Dot, VersionVector};
use crate::crdt::{OpLogPolicy, RowClaim, Site};
use crate::id::NodeId;
use crate::merkle::{leaf, Digest};
use crate::storage::{data_key, split_data_key, ReadStore, Space};

/// Messages to a node's replica.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ReplicaMessage {
    /// Merge `object` into the local copy of `key`. With `req` other than 0, acknowledge to the
    /// sender ([`CoordinatorMessage::Ack`]) once the result is durable. Read repair sends 0.
    Write {
        /// The coordinator's request, or 0.
        req: u64,
        /// The key.
        #[serde(with = "serde_bytes")]
        key: Vec<u8>,
        /// The state to merge.
        object: Object,
    },
    /// Answer with the local copy of `key` ([`CoordinatorMessage::ReadReply`]).
    Read {
        /// The coordinator's request.
        req: u64,
        /// The key.
        #[serde(with = "serde_bytes")]
        key: Vec<u8>,
        /// The coordinator asks what the key holds before it applies an update (its type and
        /// contents, which the update is merged with), not to answer a client's read: a
        /// replica still catching up the key's partition answers with what it has
        /// ([`CoordinatorMessage::PartialCopy`]).
        #[serde(default)]
        look: bool,
    },
    /// Merge many keys (hints handed back, a partition handed off) and acknowledge all of them
    /// once durable.
    Merge {
        /// Whom to acknowledge.
        reply: MergeReply,
        /// The keys and their states.
        entries: Vec<MergeEntry>,
    },
}

/// One key of a [`ReplicaMessage::Merge`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MergeEntry {
    /// The key.
    #[serde(with = "serde_bytes")]
    pub key: Vec<u8>,
    /// Its state.
    pub object: Object,
}

/// How to acknowledge a [`ReplicaMessage::Merge`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum MergeReply {
    /// With [`HintsMessage::Delivered`].
    Hints {
        /// The delivery.
        batch: u64,
    },
    /// With [`SyncMessage::Pushed`].
    Handoff {
        /// The push.
        batch: u64,
    },
    /// No acknowledgement: keys sent by an anti-entropy exchange (the next exchange notices
    /// anything that did not land).
    Repair,
}

/// What the local coordinator asks of the replica to write.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum MintOp {
    /// Write a value.
    Put(Vec<u8>),
    /// Write a tombstone.
    Delete,
    /// Apply a CRDT update under an operation id.
    Update {
        /// The update.
        op: CrdtOp,
        /// Its operation id.
        op_id: String,
    },
}

impl MintOp {
    /// The type of key the write is for.
    pub(crate) fn type_name(&self) -> &'static str {
        match self {
            MintOp::Put(_) | MintOp::Delete => super::object::REGISTER,
            MintOp::Update { op, .. } => op.type_name(),
        }
    }
}

/// What a mint did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum MintOutcome {
    /// A register write or delete got this dot.
    Dot(Dot),
    /// A CRDT update was applied (or had been before).
    Update(UpdateEffect),
}

/// The result of a mint, handed back to the local coordinator.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Minted {
    /// The key's state after the write (what the coordinator replicates).
    pub(crate) object: Object,
    /// What the write did.
    pub(crate) outcome: MintOutcome,
    /// The journal number under which the local copy holds the write durably (an update whose
    /// id was applied before, and that changed nothing, may be durable already).
    pub(crate) durable_at: u64,
}

/// Local calls into the replica (never from the network).
#[derive(Debug)]
pub(crate) enum ReplicaCall {
    /// Mint a write for the local coordinator's request `req`; the result comes back as
    /// [`Call::Minted`] at once, with the journal number the local copy is durable under (the
    /// coordinator counts this node's acknowledgement from then). Until the coordinator has
    /// `looked` at the other replicas, a replica without a copy of the key applies nothing
    /// ([`Call::Absent`]): it cannot know the key's type. `seed` is what the other replicas
    /// hold, merged, to start from.
    Mint {
        req: u64,
        key: Vec<u8>,
        op: MintOp,
        context: Option<Context>,
        looked: bool,
        seed: Option<Box<Object>>,
    },
    /// Delete these local copies (storage keys), each only if its Merkle leaf is still the
    /// given one: the sync sub-machine drops a partition this node no longer owns, once every
    /// owner holds it (`purge` false), or purges register tombstones every replica agreed to
    /// purge (`purge` true; only tombstones go).
    Drop {
        keys: Vec<(Vec<u8>, Digest)>,
        purge: bool,
    },
}

/// Recently used objects, decoded, so hot keys skip the store and the decoder: two
/// generations, each up to half the byte budget; a hit in the old one moves the object to the
/// young one, and when the young one is full it becomes the old one (the old one is dropped).
/// Every local write goes through [`Replica::stage`], which updates it, so it never goes stale.
#[derive(Default)]
struct Cache {
    young: BTreeMap<Vec<u8>, (usize, Object, Digest)>,
    old: BTreeMap<Vec<u8>, (usize, Object, Digest)>,
    young_bytes: usize,
    half_bytes: usize,
}

impl Cache {
    fn new(bytes: usize) -> Self {
        Cache {
            half_bytes: bytes / 2,
            ..Cache::default()
        }
    }

    fn get(&mut self, k: &[u8]) -> Option<(Object, Digest)> {
        if let Some((_, o, d)) = self.young.get(k) {
            return Some((o.clone(), *d));
        }
        let (size, o, d) = self.old.remove(k)?;
        self.put(k.to_vec(), size, o.clone(), d);
        Some((o, d))
    }

    fn remove(&mut self, k: &[u8]) {
        if let Some((size, _, _)) = self.young.remove(k) {
            self.young_bytes -= size;
        }
        self.old.remove(k);
    }

    fn put(&mut self, k: Vec<u8>, size: usize, o: Object, d: Digest) {
        if self.half_bytes == 0 {
            return;
        }
        self.old.remove(&k);
        let size = size + k.len();
        if let Some((old_size, _, _)) = self.young.insert(k, (size, o, d)) {
            self.young_bytes -= old_size;
        }
        self.young_bytes += size;
        if self.young_bytes > self.half_bytes {
            self.old = std::mem::take(&mut self.young);
            self.young_bytes = 0;
        }
    }
}

/// A local copy with its Merkle leaf digest.
type Held = (Object, Digest);

/// How many keys [`Crowded`] remembers.
const CROWDED_KEYS: usize = 16;

/// The keys with the most siblings among those stored lately: a bounded table, updated with
/// every stored register state (a key whose siblings were resolved leaves it).
#[derive(Debug, Default)]
struct Crowded {
    keys: BTreeMap<Vec<u8>, usize>,
}

impl Crowded {
    fn note(&mut self, key: &[u8], siblings: usize) {
        if siblings < 2 {
            self.keys.remove(key);
            return;
        }
        if let Some(n) = self.keys.get_mut(key) {
            *n = siblings;
            return;
        }
        if self.keys.len() >= CROWDED_KEYS {
            // Make room only for a key with more siblings than the fewest kept.
            let Some((least, &n)) = self.keys.iter().min_by_key(|(k, &n)| (n, (*k).clone())) else {
                return;
            };
            if n >= siblings {
                return;
            }
            let least = least.clone();
            self.keys.remove(&least);
        }
        self.keys.insert(key.to_vec(), siblings);
    }

    fn top(&self) -> Vec<(Vec<u8>, usize)> {
        let mut v: Vec<(Vec<u8>, usize)> = self.keys.iter().map(|(k, &n)| (k.clone(), n)).collect();
        v.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        v
    }
}

/// The replica sub-machine.
pub(crate) struct Replica {
    store: Box<dyn ReadStore>,
    /// States staged but maybe not yet durable, by storage key, with their journal number. It
    /// holds only what the driver has not yet committed, so it stays small.
    /// `None`: the key's deletion is staged (a dropped copy).
    overlay: BTreeMap<Vec<u8>, (u64, Option<Held>)>,
    /// Overlay entries in journal order, to prune once durable.
    staged: VecDeque<(u64, Vec<u8>, HeldSeqs)>,
    /// For each key in the overlay, how far its newest durable copy holds each actor's op-log
    /// records (what this node's rows may claim; see the module notes).
    durable_held: BTreeMap<Vec<u8>, HeldSeqs>,
    /// Who mints this process's dots.
    actor: NodeId,
    partitions: u32,
    cache: Cache,
    /// How long keys remember operation ids.
    op_log: OpLogPolicy,
    /// Keys that became contested here (states of several types merged).
    type_conflicts: u64,
    /// Merges refused because the merged state would exceed [`OBJECT_BYTES_MAX`].
    merges_refused: u64,
    /// Operation ids forgotten within their window to stay within the memory bound.
    forgotten_early: u64,
    /// Operation ids forgotten before every replica held them (the hard memory bound).
    forgotten_unstable: u64,
    /// Most siblings a register write may leave (0: no bound).
    siblings_max: usize,
    /// Register writes refused by the sibling guard.
    siblings_refused: u64,
    /// The keys with the most siblings.
    crowded: Crowded,
    /// Local copies dropped since start.
    dropped: u64,
    /// Tombstones purged since start.
    purged: u64,
    /// The highest counter of the actor in any tombstone purged here (see the module notes).
    dot_floor: u64,
}

impl Replica {
    pub(crate) fn new(
        store: Box<dyn ReadStore>,
        actor: NodeId,
        partitions: u32,
        cache_bytes: usize,
    ) -> Self {
        Replica {
            store,
            overlay: BTreeMap::new(),
            staged: VecDeque::new(),
            durable_held: BTreeMap::new(),
            actor,
            partitions,
            cache: Cache::new(cache_bytes),
            op_log: OpLogPolicy::default(),
            type_conflicts: 0,
            merges_refused: 0,
            forgotten_early: 0,
            forgotten_unstable: 0,
            siblings_max: 0,
            siblings_refused: 0,
            crowded: Crowded::default(),
            dropped: 0,
            purged: 0,
            dot_floor: 0,
        }
    }

    /// Sets how long keys remember operation ids.
    pub(crate) fn with_op_log(mut self, policy: OpLogPolicy) -> Self {
        self.op_log = policy;
        self
    }

    /// Sets the sibling guard (0: none).
    pub(crate) fn with_siblings_max(mut self, max: usize) -> Self {
        self.siblings_max = max;
        self
    }

    /// Keys that became contested on this replica since it started.
    pub(crate) fn type_conflicts(&self) -> u64 {
        self.type_conflicts
    }

    /// Operation ids this replica forgot before it was safe since it started: within their
    /// window, and before every replica held them (the memory bounds; see the op log).
    pub(crate) fn op_ids_forgotten(&self) -> (u64, u64) {
        (self.forgotten_early, self.forgotten_unstable)
    }

    /// Merges this replica refused since it started because the merged state would be larger
    /// than it stores (the sender keeps them).
    pub(crate) fn merges_refused(&self) -> u64 {
        self.merges_refused
    }

    /// The actor minting this process's dots.
    pub(crate) fn actor(&self) -> NodeId {
        self.actor
    }

    fn storage_key(&self, key: &[u8]) -> Vec<u8> {
        data_key(crate::ring::partition_of(key, self.partitions.max(1)), key)
    }

    /// The local copy of `key`, staged or stored, without touching the cache (for queries).
    pub(crate) fn peek(&self, key: &[u8]) -> Result<Option<Object>, ClientError> {
        let skey = self.storage_key(key);
        if let Some((_, staged)) = self.overlay.get(&skey) {
            return Ok(staged.as_ref().map(|(o, _)| o.clone()));
        }
        self.read_store(&skey).map(|o| o.map(|(_, o, _)| o))
    }

    fn load(&mut self, key: &[u8]) -> Result<Option<Object>, ClientError> {
        let skey = self.storage_key(key);
        Ok(self.load_storage_key(&skey)?.map(|(o, _)| o))
    }

    /// The local copy with its Merkle leaf digest.
    fn load_storage_key(&mut self, skey: &[u8]) -> Result<Option<(Object, Digest)>, ClientError> {
        if let Some((_, staged)) = self.overlay.get(skey) {
            return Ok(staged.clone());
        }
        if let Some(found) = self.cache.get(skey) {
            return Ok(Some(found));
        }
        let found = self.read_store(skey)?;
        Ok(found.map(|(size, o, d)| {
            self.cache.put(skey.to_vec(), size, o.clone(), d);
            (o, d)
        }))
    }

    /// The stored copy, its encoded size and its Merkle leaf digest.
    fn read_store(&self, skey: &[u8]) -> Result<Option<(usize, Object, Digest)>, ClientError> {
        match self.store.get(Space::Data, skey) {
            Ok(None) => Ok(None),
            Ok(Some(bytes)) => Object::decode(&bytes)
                .map(|o| Some((bytes.len(), o, leaf_of(skey, &bytes))))
                .map_err(|e| {
                    error!(error = %e, "corrupt object in the store");
                    ClientError::Internal(format!("corrupt object in the store: {e}"))
                }),
            Err(e) => {
                error!(error = %e, "store read failed");
                Err(ClientError::Internal(format!("store read failed: {e}")))
            }
        }
    }

    /// The journal number `key`'s local copy becomes (or became) durable under.
    fn durable_point(&self, skey: &[u8], fx: &Effects<'_>) -> u64 {
        self.overlay
            .get(skey)
            .map_or(fx.journal.durable_seq(), |(s, _)| *s)
    }

    /// Stages `object` as the new local copy, replacing the one with leaf digest `old`;
    /// returns its journal number. A client `write` is held to the write bound (see
    /// [`Replica::check_write_size`]), a merge to the stored bound only.
    ///
    /// `durable` is what [`Replica::durable_claim`] said before the change: when no state of
    /// the key was staged, it is the durable copy this state replaces.
    fn stage(
        &mut self,
        skey: Vec<u8>,
        object: Object,
        old: Option<Digest>,
        durable: Option<HeldSeqs>,
        write: bool,
        fx: &mut Effects<'_>,
    ) -> Result<u64, ClientError> {
        let bytes = object.encode().map_err(|e| {
            warn!(error = %e, "cannot encode an object");
            ClientError::TooLarge(format!("the key's state cannot be stored: {e}"))
        })?;
        if write {
            self.check_write_size(&skey, bytes.len())?;
        }
        if bytes.len() > OBJECT_BYTES_MAX {
            self.merges_refused += 1;
            return Err(ClientError::TooLarge(format!(
                "the key's merged state would be {} bytes, more than a replica stores ({OBJECT_BYTES_MAX})",
                bytes.len()
            )));
        }
        let seq = fx.journal.staging_seq();
        let new = leaf_of(&skey, &bytes);
        if let Some((_, key)) = split_data_key(&skey) {
            self.note_siblings(key, &object);
        }
        self.cache
            .put(skey.clone(), bytes.len(), object.clone(), new);
        fx.journal.batch().put(Space::Data, skey.clone(), bytes);
        fx.staged.push(Staged {
            skey: skey.clone(),
            seq,
            old,
            new: Some(new),
        });
        let held = object.held_seqs();
        let previous = self
            .overlay
            .insert(skey.clone(), (seq, Some((object, new))));
        if let (None, Some(d)) = (previous, durable) {
            self.durable_held.insert(skey.clone(), d);
        }
        self.staged.push_back((seq, skey, held));
        Ok(seq)
    }

    /// The sibling guard: a register write that leaves more than `siblings_max` values and
    /// more than the key had (`before`) is refused, changing nothing; one that resolves
    /// siblings always goes through.
    fn check_siblings(
        &mut self,
        key: &[u8],
        before: usize,
        object: &Object,
    ) -> Result<(), ClientError> {
        let after = object.as_register().map_or(0, |r| r.values().count());
        if self.siblings_max == 0 || after <= self.siblings_max || after <= before {
            return Ok(());
        }
        self.siblings_refused += 1;
        warn!(key = ?String::from_utf8_lossy(key), siblings = before, "refused a write: the key has too many siblings");
        Err(ClientError::TooLarge(format!(
            "the key has {before} concurrent values (siblings), the most this node keeps is {}; read the key and write with its context to resolve them",
            self.siblings_max
        )))
    }

    /// Notes a register's sibling count after a change, for the keys with the most siblings.
    fn note_siblings(&mut self, key: &[u8], object: &Object) {
        let n = object.as_register().map_or(0, |r| r.values().count());
        self.crowded.note(key, n);
    }

    /// The keys with the most siblings this node has stored lately, most first.
    pub(crate) fn crowded_keys(&self) -> Vec<(Vec<u8>, usize)> {
        self.crowded.top()
    }

    /// Register writes refused by the sibling guard since start.
    pub(crate) fn siblings_refused(&self) -> u64 {
        self.siblings_refused
    }

    /// Whether a client write may leave a state of `size` bytes under storage key `skey`: at
    /// most [`OBJECT_WRITE_BYTES_MAX`], or no larger than the current copy (a write that
    /// shrinks an oversized state, resolving siblings, is let through). Merges are bounded by
    /// [`OBJECT_BYTES_MAX`] only: states that were each accepted must merge wherever they meet.
    fn check_write_size(&mut self, skey: &[u8], size: usize) -> Result<(), ClientError> {
        if size <= OBJECT_WRITE_BYTES_MAX {
            return Ok(());
        }
        let before = match self.load_storage_key(skey)? {
            Some((o, _)) => o.encode().map(|b| b.len()).unwrap_or(0),
            None => 0,
        };
        if size <= before {
            return Ok(());
        }
        Err(ClientError::TooLarge(format!(
            "the key's state would be {size} bytes, more than {OBJECT_WRITE_BYTES_MAX} (too many large siblings); read the key and write with its context to resolve them"
        )))
    }

    /// Deletes the local copies of `keys` (storage keys) whose Merkle leaf is still the given
    /// one (a copy that changed since the caller looked stays); returns how many went. A drop
    /// retires the actor; a purge deletes only register tombstones and raises the dot floor
    /// (see the module notes).
    fn drop_copies(
        &mut self,
        keys: Vec<(Vec<u8>, Digest)>,
        purge: bool,
        fx: &mut Effects<'_>,
    ) -> usize {
        let mut dropped = 0;
        for (skey, expected) in keys {
            match self.load_storage_key(&skey) {
                Ok(Some((Object::Register(r), d))) if purge && d == expected && r.is_deleted() => {
                    self.dot_floor = self.dot_floor.max(r.context().get(self.actor));
                }
                Ok(Some(_)) if purge => continue,
                Ok(Some((_, d))) if d == expected => {}
                Ok(_) => continue,
                Err(e) => {
                    warn!(error = %e, "cannot read a copy to drop; keeping it");
                    continue;
                }
            }
            let seq = fx.journal.staging_seq();
            self.cache.remove(&skey);
            fx.journal.batch().delete(Space::Data, skey.clone());
            fx.staged.push(Staged {
                skey: skey.clone(),
                seq,
                old: Some(expected),
                new: None,
            });
            self.overlay.insert(skey.clone(), (seq, None));
            self.staged.push_back((seq, skey, HeldSeqs::default()));
            dropped += 1;
        }
        if purge {
            self.purged += dropped as u64;
        } else if dropped > 0 {
            self.retire_actor();
            self.dropped += dropped as u64;
        }
        dropped
    }

    /// Tombstones purged since start.
    pub(crate) fn tombstones_purged(&self) -> u64 {
        self.purged
    }

    /// Goes on minting with a new actor, derived from the current one (splitmix64's finaliser:
    /// a bijection, so two actors never derive the same successor).
    fn retire_actor(&mut self) {
        let mut z = self.actor.get().wrapping_add(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        self.actor = NodeId::new(z.max(1));
    }

    /// Local copies dropped since start.
    pub(crate) fn keys_dropped(&self) -> u64 {
        self.dropped
    }

    /// Merges `incoming` into the local copy of `key`; returns the journal number the result is
    /// durable under. A type conflict keeps the local copy.
    fn merge_in(
        &mut self,
        key: &[u8],
        incoming: &Object,
        fx: &mut Effects<'_>,
    ) -> Result<u64, ClientError> {
        let skey = self.storage_key(key);
        let loaded = self.load_storage_key(&skey)?;
        // Rows claim only what this node holds durably (module notes).
        let durable = self.durable_claim(&skey, loaded.as_ref().map(|(o, _)| o));
        let (merged, old) = match loaded {
            None => {
                let mut o = incoming.clone();
                o.observe_durable(fx.me, &replicas_of(key, fx), durable.as_ref());
                (o, None)
            }
            Some((mut mine, old)) => {
                let before = mine.clone();
                mine.merge(incoming);
                mine.observe_durable(fx.me, &replicas_of(key, fx), durable.as_ref());
                if mine != before && mine.is_contested() && !before.is_contested() {
                    self.type_conflicts += 1;
                    warn!(key = ?String::from_utf8_lossy(key), types = ?mine.live_types(), "the key is now contested: writes of several types raced");
                }
                if mine == before {
                    return Ok(self.durable_point(&skey, fx));
                }
                (mine, Some(old))
            }
        };
        self.stage(skey, merged, old, durable, false, fx)
    }

    /// Handles a message from node `from`.
    pub(crate) fn handle_message(
        &mut self,
        from: NodeId,
        msg: ReplicaMessage,
        fx: &mut Effects<'_>,
    ) {
        if fx.topo.left {
            // This node has left (or was removed): a write acknowledged here would leave with
            // it, and its copy may be older than what the members purged since. The sender
            // finds another replica (a coordinator hedges or asks a spare; hints and handoff
            // re-route).
            if let ReplicaMessage::Write { req, .. } | ReplicaMessage::Read { req, .. } = msg {
                if req != 0 {
                    let error = ClientError::Unavailable {
                        message: "this node has left the cluster".into(),
                        indeterminate: false,
                        acks: 0,
                        needed: 1,
                    };
                    fx.send(from, CoordinatorMessage::Refused { req, error }.into());
                }
            }
            return;
        }
        match msg {
            ReplicaMessage::Write { req, key, object } => match self.merge_in(&key, &object, fx) {
                Ok(seq) if req != 0 => {
                    fx.after_durable(seq, from, CoordinatorMessage::Ack { req }.into());
                }
                Ok(_) => {}
                Err(e) => {
                    if req != 0 {
                        fx.send(from, CoordinatorMessage::Refused { req, error: e }.into());
                    }
                }
            },
            ReplicaMessage::Read { req, key, look } => {
                let p = fx.topo.partition(&key);
                // (A look is answered from any copy of a partition this node replicates, once it
                // was a member with its data: the merge with the update keeps whatever it lacks
                // elsewhere. A partial copy answers as such: it, or its absence, says nothing of
                // what the key's replicas hold, and counts toward no majority.)
                let complete =
                    fx.topo.holds(p) || (look && fx.topo.complete && fx.topo.replicates(p));
                let refuse = |message: &str| {
                    let error = ClientError::Unavailable {
                        message: message.into(),
                        indeterminate: false,
                        acks: 0,
                        needed: 1,
                    };
                    CoordinatorMessage::Refused { req, error }
                };
                let reply = match self.load(&key) {
                    // A node whose copy of the key's partition is not complete must not answer
                    // "absent", which would count for the read quorum: it does not replicate
                    // the key (a coordinator with an older view of the ring asked, and this
                    // node dropped the partition, or never held it), or it became a replica
                    // and has not caught up with the others yet (a join, a leave or a
                    // removal moved the partition here), or it never was a member with its
                    // data (asked to leave while still joining). The coordinator asks another
                    // replica instead.
                    Ok(None) if !complete => {
                        refuse("this node has no complete copy of the key's partition")
                    }
                    // Nor may it answer from such a copy: a counter or a register there may lack
                    // acknowledged updates (a partition it has not caught up yet, or one it
                    // stopped replicating, which may never have been complete here).
                    Ok(Some(_)) if !complete => {
                        refuse("this node has no complete copy of the key's partition")
                    }
                    Ok(object) if !fx.topo.holds(p) => {
                        CoordinatorMessage::PartialCopy { req, object }
                    }
                    Ok(object) => CoordinatorMessage::ReadReply { req, object },
                    Err(error) => CoordinatorMessage::Refused { req, error },
                };
                fx.send(from, reply.into());
            }
            ReplicaMessage::Merge { reply, entries } => {
                // The acknowledgement names every entry this replica did not store, so the
                // sender keeps exactly those (a hint stays held, a handoff stays pending).
                let mut last = fx.journal.durable_seq();
                let mut refused = Vec::new();
                for (i, e) in entries.iter().enumerate() {
                    match self.merge_in(&e.key, &e.object, fx) {
                        Ok(seq) => last = last.max(seq),
                        Err(ClientError::TooLarge(why)) => {
                            error!(key = ?String::from_utf8_lossy(&e.key), %why, "cannot merge a key: too large; the sender keeps it");
                            refused.push(u32::try_from(i).unwrap_or(u32::MAX));
                        }
                        // Anything else (storage failing): do not acknowledge at all.
                        Err(_) => return,
                    }
                }
                let ack = match reply {
                    MergeReply::Hints { batch } => {
                        HintsMessage::Delivered { batch, refused }.into()
                    }
                    MergeReply::Handoff { batch } => SyncMessage::Pushed { batch, refused }.into(),
                    MergeReply::Repair => return,
                };
                fx.after_durable(last, from, ack);
            }
        }
    }

    /// Handles a local call.
    pub(crate) fn handle_call(&mut self, call: ReplicaCall, fx: &mut Effects<'_>) {
        match call {
            ReplicaCall::Mint {
                req,
                key,
                op,
                context,
                looked,
                seed,
            } => {
                if fx.topo.left {
                    // A request this node's coordinator took before it left (or was removed):
                    // a copy written now would never reach the members.
                    let error = ClientError::Unavailable {
                        message: "this node has left the cluster; send the request to a member"
                            .into(),
                        indeterminate: false,
                        acks: 0,
                        needed: 1,
                    };
                    fx.calls.push_back(Call::Minted {
                        req,
                        result: Err(error),
                    });
                    return;
                }
                // Without a copy here, or with a copy of a partition this node has not caught
                // up yet (it may lack the key's type, updates, or the record of an operation id
                // being retried), the coordinator first learns what the other replicas hold.
                let partial = !fx.topo.holds(fx.topo.partition(&key));
                if !looked && (partial || matches!(self.load(&key), Ok(None))) {
                    fx.calls.push_back(Call::Absent { req, op, context });
                    return;
                }
                let result = self.mint(&key, op, context.as_ref(), seed, fx);
                fx.calls.push_back(Call::Minted { req, result });
            }
            ReplicaCall::Drop { keys, purge } => {
                let asked = keys.len();
                let dropped = self.drop_copies(keys, purge, fx);
                if purge {
                    tracing::debug!(asked, purged = dropped, "purged tombstones");
                } else {
                    tracing::debug!(asked, dropped, "dropped copies no longer owned");
                }
            }
        }
    }

    fn mint(
        &mut self,
        key: &[u8],
        op: MintOp,
        context: Option<&Context>,
        seed: Option<Box<Object>>,
        fx: &mut Effects<'_>,
    ) -> Result<Minted, ClientError> {
        let skey = self.storage_key(key);
        let (mut current, old) = match self.load_storage_key(&skey)? {
            Some((o, d)) => (Some(o), Some(d)),
            None => (None, None),
        };
        // What this node's op-log rows may claim: its durable copy (module notes).
        let durable = self.durable_claim(&skey, current.as_ref());
        // Start from what the other replicas hold (the key's type and contents).
        let seeded = seed.is_some();
        if let Some(seed) = seed {
            match &mut current {
                None => current = Some(*seed),
                Some(mine) => mine.merge(&seed),
            }
        }
        let conflict = |c: TypeConflict| ClientError::TypeConflict(c.to_string());
        let (object, outcome, changed) = match op {
            MintOp::Update { op, op_id } => {
                let now_ms = now_ms(fx);
                let replicas = fx.topo.primaries(fx.topo.partition(key));
                let site = Site {
                    node: fx.me,
                    replicas: &replicas,
                    claim: durable
                        .as_ref()
                        .map_or(RowClaim::Unchanged, |h| h.claim(op.type_name())),
                };
                let (mut object, effect) = Object::apply_update(
                    current,
                    self.actor,
                    &op,
                    &op_id,
                    now_ms,
                    self.op_log,
                    site,
                )
                .map_err(|e| match e {
                    UpdateError::TypeConflict(c) => conflict(c),
                    UpdateError::Invalid(why) => ClientError::BadRequest(why),
                })?;
                object.observe_durable(fx.me, &replicas, durable.as_ref());
                self.forgotten_early += u64::from(effect.forgotten.early);
                self.forgotten_unstable += u64::from(effect.forgotten.unstable);
                // A replayed id changed nothing (unless the seed did): the earlier update's
                // state is acknowledged again.
                let changed = !effect.replayed || seeded;
                (object, MintOutcome::Update(effect), changed)
            }
            MintOp::Put(value) => {
                let empty = VersionVector::new();
                let seen = context.map_or(&empty, Context::seen);
                let (actor, floor) = (self.actor, self.dot_floor);
                let before = current
                    .as_ref()
                    .and_then(Object::as_register)
                    .map_or(0, |r| r.values().count());
                let (mut object, dot) =
                    Object::write_register(current, |r| r.put_above(actor, seen, value, floor))
                        .map_err(conflict)?;
                self.check_siblings(key, before, &object)?;
                object.observe_durable(fx.me, &replicas_of(key, fx), durable.as_ref());
                (object, MintOutcome::Dot(dot), true)
            }
            MintOp::Delete => {
                let empty = VersionVector::new();
                let seen = context.map_or(&empty, Context::seen);
                let (actor, floor) = (self.actor, self.dot_floor);
                let (mut object, dot) =
                    Object::write_register(current, |r| r.delete_above(actor, seen, floor))
                        .map_err(conflict)?;
                object.observe_durable(fx.me, &replicas_of(key, fx), durable.as_ref());
                (object, MintOutcome::Dot(dot), true)
            }
        };
        let durable_at = if changed {
            self.stage(skey, object.clone(), old, durable, true, fx)?
        } else {
            self.durable_point(&skey, fx)
        };
        Ok(Minted {
            object,
            outcome,
            durable_at,
        })
    }

    /// How far this node's durable copy of storage key `skey` holds each actor's op-log
    /// records, `loaded` being its copy as reads see it: that copy when no state of the key
    /// is staged (the store's copy is durable), else the newest staged state known durable
    /// (`None`: not known, the rows stay as they are).
    fn durable_claim(&self, skey: &[u8], loaded: Option<&Object>) -> Option<HeldSeqs> {
        if self.overlay.contains_key(skey) {
            self.durable_held.get(skey).cloned()
        } else {
            Some(loaded.map(Object::held_seqs).unwrap_or_default())
        }
    }

    /// Everything up to journal number `seq` is durable: drop it from the overlay (the store has
    /// it now).
    pub(crate) fn durable(&mut self, seq: u64) {
        while self.staged.front().is_some_and(|(s, _, _)| *s <= seq) {
            let Some((s, skey, held)) = self.staged.pop_front() else {
                break;
            };
            if self.overlay.get(&skey).is_some_and(|(cur, _)| *cur == s) {
                self.overlay.remove(&skey);
                self.durable_held.remove(&skey);
            } else if self.overlay.contains_key(&skey) {
                // A newer state of the key is staged: this one is its durable copy now.
                self.durable_held.insert(skey, held);
            }
        }
    }

    /// Keys staged and not yet durable.
    pub(crate) fn overlay_len(&self) -> usize {
        self.overlay.len()
    }

    /// The storage keys with a state staged and maybe not yet in the store, with the journal
    /// number of their newest staged state.
    pub(crate) fn staged_keys(&self) -> Vec<(Vec<u8>, u64)> {
        self.overlay
            .iter()
            .map(|(k, (seq, _))| (k.clone(), *seq))
            .collect()
    }
}

/// The input's time in milliseconds (the clock operation logs use).
fn now_ms(fx: &Effects<'_>) -> u64 {
    u64::try_from(fx.now.as_millis()).unwrap_or(u64::MAX)
}

/// The Merkle leaf digest of the state `bytes` stored under storage key `skey`.
pub(crate) fn leaf_of(skey: &[u8], bytes: &[u8]) -> Digest {
    leaf(split_data_key(skey).map_or(skey, |(_, k)| k), bytes)
}

/// A state the replica staged, for the sync sub-machine: the key's Merkle leaf went from `old`
/// to `new`, and the state is durable once journal number `seq` is.
#[derive(Clone, Debug)]
pub(crate) struct Staged {
    /// The storage key.
    pub(crate) skey: Vec<u8>,
    /// The journal number.
    pub(crate) seq: u64,
    /// The leaf before (`None`: the key was absent).
    pub(crate) old: Option<Digest>,
    /// The leaf after (`None`: the copy was dropped).
    pub(crate) new: Option<Digest>,
}

/// The current replicas of `key` (whose rows a CRDT's operation log keeps).
fn replicas_of(key: &[u8], fx: &Effects<'_>) -> Vec<NodeId> {
    fx.topo.primaries(fx.topo.partition(key))
}
