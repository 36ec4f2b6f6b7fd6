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

use std::collections::{BTreeMap, VecDeque};

use serde::{Deserialize, Serialize};
use tracing::{error, warn};

use super::client::ClientError;
use super::coordinator::CoordinatorMessage;
use super::hints::HintsMessage;
use super::object::{Context, CrdtOp, Object, TypeConflict, UpdateEffect, UpdateError};
use super::sync::SyncMessage;
use super::{Call, Effects};
use crate::causality::{Dot, Register, VersionVector};
use crate::crdt::OpLogPolicy;
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
        /// Whether the coordinator already looked at the other replicas; until it has, a
        /// replica without a copy applies nothing (it cannot know the key's type).
        looked: bool,
        /// What the other replicas hold, merged, to start from.
        seed: Option<Box<Object>>,
    },
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
}

/// Local calls into the replica (never from the network).
#[derive(Debug)]
pub(crate) enum ReplicaCall {
    /// Mint a write for the local coordinator's request `req`; the result comes back as
    /// [`Call::Minted`] at once, and an acknowledgement as [`CoordinatorMessage::Ack`] from
    /// this node once durable.
    Mint {
        req: u64,
        key: Vec<u8>,
        op: MintOp,
        context: Option<Context>,
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

/// The replica sub-machine.
pub(crate) struct Replica {
    store: Box<dyn ReadStore>,
    /// States staged but maybe not yet durable, by storage key, with their journal number. It
    /// holds only what the driver has not yet committed, so it stays small.
    /// `None`: the key's deletion is staged (a dropped copy).
    overlay: BTreeMap<Vec<u8>, (u64, Option<Held>)>,
    /// Overlay entries in journal order, to prune once durable.
    staged: VecDeque<(u64, Vec<u8>)>,
    /// Who mints this process's dots.
    actor: NodeId,
    partitions: u32,
    cache: Cache,
    /// How long keys remember operation ids.
    op_log: OpLogPolicy,
    /// States of another type refused by merges (a type conflict while a first write spreads).
    type_conflicts: u64,
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
            actor,
            partitions,
            cache: Cache::new(cache_bytes),
            op_log: OpLogPolicy::default(),
            type_conflicts: 0,
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

    /// States of another type this replica refused to merge since it started.
    pub(crate) fn type_conflicts(&self) -> u64 {
        self.type_conflicts
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
    /// returns its journal number.
    fn stage(
        &mut self,
        skey: Vec<u8>,
        object: Object,
        old: Option<Digest>,
        fx: &mut Effects<'_>,
    ) -> Result<u64, ClientError> {
        let bytes = object.encode().map_err(|e| {
            warn!(error = %e, "cannot encode an object");
            ClientError::TooLarge(format!("the key's state cannot be stored: {e}"))
        })?;
        if bytes.len() > super::object::OBJECT_BYTES_MAX {
            return Err(ClientError::TooLarge(format!(
                "the key's state would be {} bytes (too many large siblings); resolve them first",
                bytes.len()
            )));
        }
        let seq = fx.journal.staging_seq();
        let new = leaf_of(&skey, &bytes);
        self.cache
            .put(skey.clone(), bytes.len(), object.clone(), new);
        fx.journal.batch().put(Space::Data, skey.clone(), bytes);
        fx.staged.push(Staged {
            skey: skey.clone(),
            seq,
            old,
            new: Some(new),
        });
        self.overlay
            .insert(skey.clone(), (seq, Some((object, new))));
        self.staged.push_back((seq, skey));
        Ok(seq)
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
            self.staged.push_back((seq, skey));
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
        let (merged, old) = match self.load_storage_key(&skey)? {
            None => (incoming.clone(), None),
            Some((mut mine, old)) => {
                let before = mine.clone();
                if let Err(TypeConflict { held, offered }) = mine.merge(incoming) {
                    self.type_conflicts += 1;
                    warn!(held, offered, key = ?String::from_utf8_lossy(key), "refused a state of another type");
                    return Err(ClientError::TypeConflict(format!(
                        "the key holds a {held}, not a {offered}"
                    )));
                }
                if mine == before {
                    return Ok(self.durable_point(&skey, fx));
                }
                (mine, Some(old))
            }
        };
        self.stage(skey, merged, old, fx)
    }

    /// Handles a message from node `from`.
    pub(crate) fn handle_message(
        &mut self,
        from: NodeId,
        msg: ReplicaMessage,
        fx: &mut Effects<'_>,
    ) {
        if fx.topo.left && !matches!(msg, ReplicaMessage::Read { .. }) {
            // This node has left: a write acknowledged here would leave with it. The sender
            // finds another replica (a coordinator hedges; hints and handoff re-route).
            if let ReplicaMessage::Write { req, .. } = msg {
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
            ReplicaMessage::Read { req, key } => {
                let reply = match self.load(&key) {
                    // A node that does not replicate the key (a coordinator with an older view
                    // of the ring asked, and this node dropped the partition, or never held
                    // it), or whose copy is not complete (asked to leave while it was still
                    // pulling its partitions), must not answer "absent": that would count for
                    // the read quorum.
                    Ok(None)
                        if !fx.topo.complete || !fx.topo.replicates(fx.topo.partition(&key)) =>
                    {
                        let error = ClientError::Unavailable {
                            message: "this node does not replicate the key".into(),
                            indeterminate: false,
                            acks: 0,
                            needed: 1,
                        };
                        CoordinatorMessage::Refused { req, error }
                    }
                    Ok(object) => CoordinatorMessage::ReadReply { req, object },
                    Err(error) => CoordinatorMessage::Refused { req, error },
                };
                fx.send(from, reply.into());
            }
            ReplicaMessage::Merge { reply, entries } => {
                let mut last = fx.journal.durable_seq();
                for e in &entries {
                    match self.merge_in(&e.key, &e.object, fx) {
                        Ok(seq) => last = last.max(seq),
                        // A conflicting type stays as it is, and a merge too large to store
                        // cannot be stored (the other copies keep it); the sender must not retry
                        // these forever, so they count as handled.
                        Err(ClientError::TypeConflict(_)) => {}
                        Err(ClientError::TooLarge(why)) => {
                            error!(key = ?String::from_utf8_lossy(&e.key), %why, "cannot merge a key: too large");
                        }
                        // Anything else (storage failing): do not acknowledge.
                        Err(_) => return,
                    }
                }
                let ack = match reply {
                    MergeReply::Hints { batch } => HintsMessage::Delivered { batch }.into(),
                    MergeReply::Handoff { batch } => SyncMessage::Pushed { batch }.into(),
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
            } => {
                if let MintOp::Update {
                    op, looked: false, ..
                } = &op
                {
                    if matches!(self.load(&key), Ok(None)) {
                        let op = op.clone();
                        fx.calls.push_back(Call::Absent { req, op });
                        return;
                    }
                }
                let result = self.mint(&key, op, context.as_ref(), fx);
                if let Ok((_, seq)) = &result {
                    fx.after_durable(*seq, fx.me, CoordinatorMessage::Ack { req }.into());
                }
                fx.calls.push_back(Call::Minted {
                    req,
                    result: result.map(|(m, _)| m),
                });
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
        fx: &mut Effects<'_>,
    ) -> Result<(Minted, u64), ClientError> {
        let skey = self.storage_key(key);
        let (mut current, old) = match self.load_storage_key(&skey)? {
            Some((o, d)) => (Some(o), Some(d)),
            None => (None, None),
        };
        if let MintOp::Update {
            op, op_id, seed, ..
        } = op
        {
            // Start from what the other replicas hold (the key's type and contents).
            let seeded = seed.is_some();
            if let Some(seed) = seed {
                match &mut current {
                    None => current = Some(*seed),
                    Some(mine) => mine.merge(&seed).map_err(|c| {
                        self.type_conflicts += 1;
                        ClientError::TypeConflict(c.to_string())
                    })?,
                }
            }
            let now_ms = u64::try_from(fx.now.as_millis()).unwrap_or(u64::MAX);
            let (object, effect) =
                Object::apply_update(current, self.actor, &op, &op_id, now_ms, self.op_log)
                    .map_err(|e| match e {
                        UpdateError::TypeConflict(c) => ClientError::TypeConflict(c.to_string()),
                        UpdateError::Invalid(why) => ClientError::BadRequest(why),
                    })?;
            // A replayed id changed nothing (unless the seed did): the earlier update's state is
            // acknowledged again.
            let seq = if effect.replayed && !seeded {
                self.durable_point(&skey, fx)
            } else {
                self.stage(skey, object.clone(), old, fx)?
            };
            let outcome = MintOutcome::Update(effect);
            return Ok((Minted { object, outcome }, seq));
        }
        let mut register = match current {
            None => Register::new(),
            Some(Object::Register(r)) => r,
            Some(other) => {
                return Err(ClientError::TypeConflict(format!(
                    "the key holds a {}, not a register",
                    other.type_name()
                )))
            }
        };
        let empty = VersionVector::new();
        let seen = context.map_or(&empty, Context::seen);
        let dot = match op {
            MintOp::Put(value) => register.put_above(self.actor, seen, value, self.dot_floor),
            MintOp::Delete => register.delete_above(self.actor, seen, self.dot_floor),
            MintOp::Update { .. } => {
                return Err(ClientError::Internal(
                    "a CRDT update reached the register path".into(),
                ))
            }
        };
        let object = Object::Register(register);
        let seq = self.stage(skey, object.clone(), old, fx)?;
        let outcome = MintOutcome::Dot(dot);
        Ok((Minted { object, outcome }, seq))
    }

    /// Everything up to journal number `seq` is durable: drop it from the overlay (the store has
    /// it now).
    pub(crate) fn durable(&mut self, seq: u64) {
        while self.staged.front().is_some_and(|(s, _)| *s <= seq) {
            let Some((s, skey)) = self.staged.pop_front() else {
                break;
            };
            if self.overlay.get(&skey).is_some_and(|(cur, _)| *cur == s) {
                self.overlay.remove(&skey);
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
