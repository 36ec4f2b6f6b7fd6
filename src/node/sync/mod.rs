//! The sync sub-machine: partition handoff when the owners of a partition change.
//!
//! For every partition it holds data for, the node remembers which of the partition's future
//! owners (the placement once pending leaves complete) already received its copy, and whether
//! its copy changed since (*dirty*). When the owner set changes (a join, a leave, a removal),
//! it pushes its copy to each new owner; and when it stops being an owner of a partition whose
//! copy changed, to every owner — its copy may hold the only replica of a write that reached
//! no other owner. Pushes go a page of keys at a time ([`ReplicaMessage::Merge`]), moving on
//! only once the owner acknowledged the page durably; a page not acknowledged in time is sent
//! again. Keys staged while a push is under way, or in a partition this node no longer owns,
//! are pushed on their own. A leaving node reports through
//! [`PartitionSync::handoff_complete`] when every partition it holds is with all of its future owners:
//! only then may its leave move to `left`. The record of who received what is persisted
//! (`handoff` in the metadata), so a restart does not push everything again.
//!
//! Handoff copies whole partitions page by page. Replicas that drifted apart for any other
//! reason (a replica that was down with hints off or lost, a write that reached too few
//! replicas) are brought together by Merkle-tree anti-entropy ([`exchange`]), which sends only
//! the keys that differ. The sub-machine keeps one incremental Merkle tree per partition the
//! node holds keys of ([`crate::merkle`]), rebuilt by a scan of the store at start and updated
//! with every state the replica stages.
//!
//! # Dropping what this node no longer owns
//!
//! A partition this node neither replicates now nor will once pending changes complete is
//! dropped from its store, a page at a time ([`ReplicaCall::Drop`]), once every future owner
//! holds this node's copy (the handoff record names them all), no push of it is pending and
//! nothing staged since is unsent (*dirty*). Anything written here later (a coordinator with an
//! older view of the ring) makes it dirty again: it is pushed, then dropped again. The replica
//! deletes a copy only if it is unchanged since the page was read, and retires its dot-minting
//! actor when it does (see the replica's note on dots).
//!
//! # Complete copies
//!
//! A replica may answer a read, and say a key is absent, only for a partition whose copy holds
//! every write acknowledged before: [`PartitionSync::held`], persisted with the handoff record. A node
//! becomes a replica of partitions it has no complete copy of when it joins (it pulled them
//! during its intake, but writes went on to the other owners until they saw it a member), when
//! another node leaves (its handoff may still be on the way) or is removed (nothing comes from
//! it), and when it regains a partition it had stopped replicating. Once the placement has
//! stood [`CATCH_UP_SETTLE`] (coordinators still on the old one write to the old replicas
//! only), each such partition is caught up by an anti-entropy exchange with each of its other
//! reachable replicas ([`exchange::AntiEntropy::catch_up`]). It is held once those finished and
//! one of them was with a replica whose own copy is complete (the responder says so), or every
//! other replica answered and none has one (every holder was removed: nobody holds more).
//! Until then the replica answers "don't know" and the coordinator asks another; an update it
//! coordinates first learns what the other replicas hold (the look, which replicas answer from
//! any copy they have). A peer that is down is not waited for unless it is the only one that
//! could hold a complete copy.
//!
//! A node that missed placements (down or cut off while others joined and left) cannot tell
//! from the placement it sees now; the router suspects the partitions such a placement could
//! have moved away and back (a node first seen gone that was never seen a member, or an owner
//! set that jumped by more than one node), and [`PartitionSync::forget_held`] drops them.
//!
//! Not covered: a node that has not heard of a new placement yet still answers for its old one
//! (ring changes spread by gossip, not consensus: a node cut off while the others change the
//! ring, one just restarted, or any node for the moment gossip takes); a write whose
//! coordinator still used the old placement and that reached no replica this node compared with
//! after the write (handoff from an old owner that took such a write brings it later); a
//! catch-up exchange whose repaired keys failed to merge still counts; a data directory
//! restored from an older copy keeps its record.
//!
//! # Purging tombstones
//!
//! Register tombstones are purged by [`gc`]: the node first in a partition's preference list
//! asks every ring member whether it holds exactly the same tombstone (or nothing) and has sent
//! nothing of the key for a while, and when all agree every member deletes its copy. The
//! router shows it every state-carrying message that leaves the node, so it knows which keys
//! were sent recently.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tracing::{debug, info, warn};

mod exchange;
mod gc;

pub(crate) use exchange::AeConfig;
pub use exchange::{AeMessage, PartitionInfo, RepairProgress};
pub(crate) use gc::GcConfig;
pub use gc::GcMessage;

use super::object::{Object, BATCH_BYTES_MAX};
use super::replica::{leaf_of, MergeEntry, MergeReply, ReplicaCall, ReplicaMessage, Staged};
use super::{Call, Effects};
use crate::id::NodeId;
use crate::merkle::Tree;
use crate::ring::PartitionId;
use crate::storage::{
    partition_range, split_data_key, ReadStore, Space, StoreError, SCAN_BYTES_MAX,
};

/// Metadata key of the handoff record.
pub const META_HANDOFF: &str = "handoff";

/// A page not acknowledged within this long is sent again.
const PUSH_TIMEOUT: Duration = Duration::from_secs(10);

/// A push whose owner refused a key (its merged state would be too large) waits this long
/// before it sends again: the key stays pending and reported, without a storm of re-sends.
const REFUSED_BACKOFF: Duration = Duration::from_secs(60);

/// Pages in flight at once, over all partitions and owners.
const PUSHES_IN_FLIGHT_MAX: usize = 4;

/// Most local copies dropped per tick, over all partitions.
const DROP_KEYS_PER_TICK: usize = 4096;

/// How long a placement must have stood before this node starts catching up partitions it
/// gained: coordinators that do not know the placement yet still write to the old replicas
/// only, so an exchange made at once could miss their writes. Gossip brings a healthy cluster
/// to the new placement well within this.
const CATCH_UP_SETTLE: Duration = Duration::from_secs(5);

/// How long a placement must have stood before this node drops copies it no longer owns.
/// Coordinators whose view of the ring is older still send reads here; gossip brings a
/// healthy cluster to the new ring well within this, so in the common case those reads are
/// still answered from the copy rather than refused.
const DROP_GRACE: Duration = Duration::from_secs(20);

/// Messages to a node's sync sub-machine.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum SyncMessage {
    /// The sender durably merged push `batch`, except the entries at the positions in
    /// `refused`, which it did not store: the push of those keys stays pending.
    Pushed {
        /// The push.
        batch: u64,
        /// Positions of entries the sender refused (a merge beyond the stored size limit).
        #[serde(default)]
        refused: Vec<u32>,
    },
    /// Merkle-tree anti-entropy.
    Ae(AeMessage),
    /// Tombstone GC.
    Gc(GcMessage),
}

/// Timers of the sync sub-machine.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SyncTimer {
    /// Time to make progress on pending pushes.
    Tick,
}

/// A pending push of one partition to one owner.
#[derive(Debug, Default)]
struct Task {
    /// The storage key after which the next page starts (empty: from the start).
    cursor: Vec<u8>,
    /// Whether the whole partition has been walked.
    scanned: bool,
    /// Keys staged while this push was pending, with the journal number of their newest
    /// state: pushed on their own once that number is durable (the walk may have read an
    /// older state, or passed them already).
    extras: BTreeMap<Vec<u8>, u64>,
    /// The owner refused a key: nothing is sent before this time.
    paused_until: Duration,
}

#[derive(Debug)]
enum Sent {
    /// A page of the walk, ending at this storage key.
    Page(Vec<u8>),
    /// These extra keys, as of these journal numbers.
    Extras(Vec<(Vec<u8>, u64)>),
}

#[derive(Debug)]
struct Push {
    p: PartitionId,
    to: NodeId,
    sent: Sent,
    /// The storage keys of the entries sent, in order (an acknowledgement names refused
    /// entries by position).
    keys: Vec<Vec<u8>>,
    sent_at: Duration,
}

/// The persisted handoff record.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Record {
    /// Per partition: the future owners that received this node's copy.
    known: BTreeMap<PartitionId, BTreeSet<NodeId>>,
    /// Partitions whose local copy changed since it was last pushed to every owner.
    dirty: BTreeSet<PartitionId>,
    /// This node was a member with this data: its copy of the partitions it owns is complete.
    #[serde(default)]
    complete: bool,
    /// Partitions this node replicates whose copy it knows complete (see the module notes on
    /// complete copies). A record from before this field catches every partition up once.
    #[serde(default)]
    held: BTreeSet<PartitionId>,
}

/// The sync sub-machine: handoff, anti-entropy, tombstone GC and complete copies, per
/// partition (named so as not to shadow the standard `Sync` trait).
pub(crate) struct PartitionSync {
    store: Box<dyn ReadStore>,
    interval: Duration,
    batch_max: usize,
    /// What survives restarts: who received which partition, and which copies changed since.
    record: Record,
    /// Pending pushes, by (partition, owner).
    tasks: BTreeMap<(PartitionId, NodeId), Task>,
    in_flight: BTreeMap<u64, Push>,
    next_batch: u64,
    /// The placement version the tasks were computed for.
    seen_version: Option<u64>,
    /// The current placement version and when this node first saw it.
    placement_since: Option<(u64, Duration)>,
    /// A Merkle tree per partition this node holds keys of (rebuilt from the store at start,
    /// then updated with every staged state).
    trees: BTreeMap<PartitionId, Tree>,
    ae: exchange::AntiEntropy,
    gc: gc::Gc,
    /// Keys a new owner refused to store since start (their push stays pending).
    refused: u64,
    /// The placement version and anti-entropy run events `held` was last brought up to date
    /// with.
    catch_up_seen: Option<(u64, u64)>,
    /// Partitions replicated here but not caught up, as of the last look.
    catching_up: usize,
}

impl PartitionSync {
    /// The sync sub-machine with the handoff record in `store`.
    pub(crate) fn new(
        store: Box<dyn ReadStore>,
        interval: Duration,
        batch_max: usize,
        first_batch: u64,
        ae: AeConfig,
        gc: GcConfig,
    ) -> Result<Self, StoreError> {
        let record = match store.get(Space::Meta, META_HANDOFF.as_bytes())? {
            None => Record::default(),
            Some(bytes) => match crate::protocol::decode::<Record>(&bytes) {
                Ok(r) => r,
                Err(e) => {
                    warn!(error = %e, "unreadable handoff record; every partition will be pushed again");
                    Record::default()
                }
            },
        };
        let trees = rebuild_trees(&*store)?;
        Ok(PartitionSync {
            store,
            interval,
            batch_max: batch_max.max(1),
            record,
            tasks: BTreeMap::new(),
            in_flight: BTreeMap::new(),
            // Random per process, like the hints' delivery numbers.
            next_batch: first_batch,
            seen_version: None,
            placement_since: None,
            trees,
            ae: exchange::AntiEntropy::new(ae, first_batch.rotate_left(32)),
            gc: gc::Gc::new(gc, first_batch.rotate_left(16)),
            refused: 0,
            catch_up_seen: None,
            catching_up: 0,
        })
    }

    /// The partitions this node replicates, with their Merkle roots and exchange figures.
    pub(crate) fn partitions(&mut self, fx: &Effects<'_>) -> Vec<PartitionInfo> {
        self.ae.partitions(&mut self.trees, fx)
    }

    /// The Merkle root of every partition this node holds keys of.
    pub(crate) fn roots(&mut self) -> BTreeMap<PartitionId, crate::merkle::Digest> {
        self.trees
            .iter_mut()
            .map(|(p, t)| (*p, t.root()))
            .filter(|(_, r)| *r != crate::merkle::Digest::ZERO)
            .collect()
    }

    /// Whether this node was a member with its data (the topology's `complete`).
    pub(crate) fn complete(&self) -> bool {
        self.record.complete
    }

    /// Partitions this node replicates with a complete copy (the topology's `held`).
    pub(crate) fn held(&self) -> &BTreeSet<PartitionId> {
        &self.record.held
    }

    /// Brings the set of complete copies up to date with the placement and with the catch-up
    /// exchanges (see the module notes); returns whether it changed. Cheap when neither moved.
    pub(crate) fn catch_up(&mut self, fx: &mut Effects<'_>) -> bool {
        let mark = (fx.topo.placement_version, self.ae.run_events());
        if self.catch_up_seen == Some(mark) {
            return false;
        }
        self.catch_up_seen = Some(mark);
        let never_a_member = fx.topo.leaving && !self.record.complete;
        let mine: BTreeMap<PartitionId, Vec<NodeId>> =
            if fx.topo.left || fx.topo.joining || never_a_member {
                // Left: it serves nothing. Joining: its pulled copies are snapshots; once a member
                // it catches up again (writes made during its intake went to the other owners).
                // Leaving without ever having been a member with this data (asked to leave while
                // joining): it never will be, so nothing it holds is known complete; seeing itself
                // as the only node owning partitions (it knew no member yet) proves nothing.
                BTreeMap::new()
            } else if (fx.topo.member || fx.topo.leaving) && fx.topo.ring.is_some() {
                fx.topo
                    .partition_ids()
                    .map(|p| (p, fx.topo.primaries(p)))
                    .filter(|(_, replicas)| replicas.contains(&fx.me))
                    .collect()
            } else {
                // Its own status or the placement is not known yet.
                return false;
            };
        let before = self.record.held.len();
        // A partition this node stops replicating is no longer known complete: if it comes
        // back, the writes made meanwhile went elsewhere.
        self.record.held.retain(|p| mine.contains_key(p));
        let mut changed = self.record.held.len() != before;
        let gaps: BTreeMap<PartitionId, Vec<NodeId>> = mine
            .into_iter()
            .filter(|(p, _)| !self.record.held.contains(p))
            .collect();
        let gaps_before = gaps.len();
        let settled = self.placement_since.is_some_and(|(v, at)| {
            v == fx.topo.placement_version && fx.now >= at + CATCH_UP_SETTLE
        });
        // (A partition with no other replica has nobody to wait for.)
        let alone = gaps.values().all(|r| r.iter().all(|&n| n == fx.me));
        let done = if settled || alone {
            self.ae.catch_up(gaps, fx.me)
        } else {
            // Looked at again on a tick, once the placement has stood long enough.
            Vec::new()
        };
        let catching_up = gaps_before - done.len();
        if !done.is_empty() {
            self.record.held.extend(done.iter().copied());
            changed = true;
            debug!(
                partitions = done.len(),
                still_catching_up = catching_up,
                "partitions caught up: this node answers reads of them"
            );
            if catching_up == 0 {
                info!(
                    partitions = self.record.held.len(),
                    "every partition this node replicates is caught up"
                );
            }
        }
        if changed {
            self.persist(fx);
        }
        let counted = catching_up != self.catching_up;
        self.catching_up = catching_up;
        changed || counted
    }

    /// This node may have missed writes of partitions `suspect` (placements came and went
    /// while it was down or cut off, see the router's `missed_placements`): their copies here
    /// are no longer known complete, and are caught up again before it answers reads of them.
    pub(crate) fn forget_held(&mut self, suspect: &BTreeSet<PartitionId>, fx: &mut Effects<'_>) {
        let before = self.record.held.len();
        self.record.held.retain(|p| !suspect.contains(p));
        let forgotten = before - self.record.held.len();
        if forgotten > 0 {
            warn!(
                partitions = forgotten,
                "this node missed placement changes; it catches those partitions up before answering reads of them"
            );
            self.persist(fx);
        }
        self.catch_up_seen = None;
    }

    /// Partitions this node replicates but has not caught up yet (as of the last
    /// [`PartitionSync::catch_up`]).
    pub(crate) fn catching_up(&self) -> usize {
        self.catching_up
    }

    /// Keys a new owner refused to store since start (each push stays pending).
    pub(crate) fn refused(&self) -> u64 {
        self.refused
    }

    /// Keys this node holds, over every partition.
    pub(crate) fn keys_held(&self) -> u64 {
        self.trees.values().map(Tree::keys).sum()
    }

    /// Starts a repair of one partition or all; returns its id.
    pub(crate) fn start_repair(&mut self, only: Option<PartitionId>, fx: &Effects<'_>) -> u64 {
        self.ae.start_repair(only, fx)
    }

    /// Progress of repair `id` (0: the latest).
    pub(crate) fn repair_progress(&self, id: u64) -> Option<RepairProgress> {
        self.ae.repair_progress(id)
    }

    /// For a joining node: the owners it pulled its future partitions from, once done (see
    /// [`exchange::AntiEntropy::intake_ready`]).
    pub(crate) fn intake_ready(&mut self, fx: &Effects<'_>) -> Option<Vec<NodeId>> {
        self.ae.intake_ready(fx)
    }

    /// Anti-entropy exchanges this node started that are in flight.
    pub(crate) fn exchanges_in_flight(&self) -> usize {
        self.ae.in_flight()
    }

    /// Arms the progress timer.
    pub(crate) fn start(&mut self, fx: &mut Effects<'_>) {
        fx.set_timer(self.interval, SyncTimer::Tick);
    }

    /// Pushes still to make (partition, owner).
    pub(crate) fn pending(&self) -> usize {
        self.tasks.len()
    }

    /// Whether every partition this node holds is with all of its future owners, as of the
    /// current placement: a leaving node may then go.
    pub(crate) fn handoff_complete(&self, fx: &Effects<'_>) -> bool {
        self.seen_version == Some(fx.topo.placement_version) && self.tasks.is_empty()
    }

    /// The placement may have changed: plan the pushes it calls for. `staged` are the storage
    /// keys with a state staged but maybe not yet in the store, with its journal number.
    pub(crate) fn topology_changed(&mut self, staged: &[(Vec<u8>, u64)], fx: &mut Effects<'_>) {
        if self.placement_since.map(|(v, _)| v) != Some(fx.topo.placement_version) {
            self.placement_since = Some((fx.topo.placement_version, fx.now));
        }
        if fx.topo.member && !self.record.complete {
            self.record.complete = true;
            self.persist(fx);
        }
        if fx.topo.left {
            // Left (or removed): nothing more goes out from here. Everything this node held
            // went to its owners before it recorded `left` (or an operator removed it, and the
            // members refuse what it would send): owners that join later get the data from the
            // others. Its handoff is complete whatever the placement says (recording `left`
            // changes the placement, and with no leave pending there is no future one).
            self.seen_version = Some(fx.topo.placement_version);
            self.tasks.clear();
            self.in_flight.clear();
            return;
        }
        if fx.topo.joining {
            // What a joining node holds are copies it pulled of the partitions it will own:
            // the owners have them already (so a leave before it became a member has nothing
            // of its own to hand over, unless writes reach it later).
            self.seen_version = Some(fx.topo.placement_version);
            let mut changed = false;
            for p in fx.topo.partition_ids() {
                let owners = fx.topo.future_owners(p);
                let known = self.record.known.entry(p).or_default();
                for o in owners.into_iter().filter(|&o| o != fx.me) {
                    changed |= known.insert(o);
                }
            }
            if changed {
                self.persist(fx);
            }
            return;
        }
        if self.seen_version == Some(fx.topo.placement_version) || fx.topo.future.is_none() {
            return;
        }
        self.seen_version = Some(fx.topo.placement_version);
        let mut staged_in: BTreeMap<PartitionId, Vec<(Vec<u8>, u64)>> = BTreeMap::new();
        for (skey, seq) in staged {
            if let Some((p, _)) = split_data_key(skey) {
                staged_in.entry(p).or_default().push((skey.clone(), *seq));
            }
        }
        let mut planned = 0;
        let mut record_changed = false;
        for p in fx.topo.partition_ids() {
            let owners: BTreeSet<NodeId> = fx
                .topo
                .future_owners(p)
                .into_iter()
                .filter(|&n| n != fx.me)
                .collect();
            // Forget pushes to nodes that are no longer owners.
            self.tasks
                .retain(|&(tp, to), _| tp != p || owners.contains(&to));
            let losing = !fx.topo.future_owners(p).contains(&fx.me);
            let missing: Vec<NodeId> = match self.record.known.get(&p) {
                // A copy that changed goes to every owner when this node stops being one.
                Some(_) if losing && self.record.dirty.contains(&p) => {
                    owners.iter().copied().collect()
                }
                Some(known) => owners.difference(known).copied().collect(),
                None => owners.iter().copied().collect(),
            };
            if missing.is_empty() {
                continue;
            }
            let staged_here = staged_in.get(&p).map_or(&[][..], |v| &v[..]);
            if staged_here.is_empty() && !self.holds(p) {
                // Nothing to hand over: the new owners get this partition's writes directly.
                self.record.known.entry(p).or_default().extend(missing);
                record_changed = true;
                continue;
            }
            for to in missing {
                // Keys staged before the push began: the walk may read their older state.
                let task = self.tasks.entry((p, to)).or_default();
                for (skey, seq) in staged_here {
                    note_extra(task, skey, *seq);
                }
                planned += 1;
            }
        }
        self.in_flight
            .retain(|_, push| owners_contain(fx, push.p, push.to));
        if record_changed {
            self.persist(fx);
        }
        if planned > 0 {
            info!(pushes = planned, "partition handoff planned");
            self.progress(fx);
        }
    }

    fn holds(&self, p: PartitionId) -> bool {
        let (from, to) = partition_range(p);
        match self.store.scan(Space::Data, &from, &to, 1) {
            Ok(v) => !v.is_empty(),
            Err(e) => {
                warn!(error = %e, "cannot scan a partition; assuming it holds data");
                true
            }
        }
    }

    fn persist(&self, fx: &mut Effects<'_>) {
        match crate::protocol::encode(&self.record) {
            Ok(bytes) => {
                fx.journal
                    .batch()
                    .put(Space::Meta, META_HANDOFF.as_bytes().to_vec(), bytes)
            }
            Err(e) => warn!(error = %e, "cannot encode the handoff record"),
        }
    }

    /// Notes the states an outgoing message carries (for tombstone GC's quiet window).
    pub(crate) fn note_outgoing(&mut self, message: &super::PeerMessage, now: Duration) {
        self.gc.note_outgoing(message, now);
    }

    /// Notes that a state of `key` left this node (a read reply).
    pub(crate) fn note_sent(&mut self, key: &[u8], now: Duration) {
        self.gc.note_sent(key, now);
    }

    /// Tombstone GC rounds this node completed since start.
    pub(crate) fn gc_rounds(&self) -> u64 {
        self.gc.rounds()
    }

    /// A message for the sync sub-machine; `hints_held` is how many hints this node holds.
    pub(crate) fn handle_message(
        &mut self,
        from: NodeId,
        msg: SyncMessage,
        hints_held: usize,
        fx: &mut Effects<'_>,
    ) {
        if fx.topo.left {
            // Left, or removed: this node takes part in no exchange, handoff or purge.
            return;
        }
        match msg {
            SyncMessage::Gc(msg) => self.gc.handle(from, msg, &*self.store, hints_held, fx),
            SyncMessage::Ae(msg) => {
                self.ae.handle(from, msg, &mut self.trees, &*self.store, fx);
            }
            SyncMessage::Pushed { batch, refused } => {
                let ok = self.in_flight.get(&batch).is_some_and(|p| p.to == from);
                if !ok {
                    return;
                }
                if let Some(push) = self.in_flight.remove(&batch) {
                    if let Some(task) = self.tasks.get_mut(&(push.p, push.to)) {
                        match push.sent {
                            Sent::Page(last) => task.cursor = last,
                            Sent::Extras(keys) => {
                                // A key staged again since keeps its place.
                                for (k, seq) in keys {
                                    if task.extras.get(&k) == Some(&seq) {
                                        task.extras.remove(&k);
                                    }
                                }
                            }
                        }
                        // What the owner did not store stays pending: pushed again on its
                        // own, so the partition is never counted as handed over without it.
                        let durable = fx.journal.durable_seq();
                        if !refused.is_empty() {
                            task.paused_until = fx.now + REFUSED_BACKOFF;
                        }
                        for i in refused {
                            let Some(k) = push.keys.get(i as usize) else {
                                continue;
                            };
                            self.refused += 1;
                            warn!(partition = %push.p, to = %push.to, "a new owner refused a key (its merged state would be too large); the push stays pending");
                            task.extras.entry(k.clone()).or_insert(durable);
                        }
                    }
                }
                self.progress(fx);
            }
        }
    }

    /// A timer fired; `hints_held` is how many hints this node holds.
    pub(crate) fn handle_timer(
        &mut self,
        timer: SyncTimer,
        hints_held: usize,
        fx: &mut Effects<'_>,
    ) {
        match timer {
            SyncTimer::Tick => {
                if self.catching_up > 0 {
                    // The settle delay may have passed, or a peer come back.
                    self.catch_up_seen = None;
                }
                if !fx.topo.left {
                    self.progress(fx);
                    self.drop_unowned(fx);
                    self.ae.tick(&mut self.trees, &*self.store, fx);
                    self.gc.tick(&*self.store, hints_held, fx);
                }
                fx.set_timer(self.interval, SyncTimer::Tick);
            }
        }
    }

    /// Keys the replica staged, with their journal numbers: every pending push of the key's
    /// partition sends it on its own once durable (its walk may have read the older state, or
    /// be reading it right now), and a key of a partition this node will not own goes to every
    /// future owner before a leave completes.
    pub(crate) fn note_staged(&mut self, keys: Vec<Staged>, fx: &mut Effects<'_>) {
        let mut newly_dirty = false;
        for Staged {
            skey,
            seq,
            old,
            new,
        } in keys
        {
            let Some((p, key)) = split_data_key(&skey) else {
                continue;
            };
            self.gc.note_staged(p, seq);
            let tree = self.trees.entry(p).or_default();
            tree.update(key, old, new);
            if new.is_none() {
                // A copy dropped (see `drop_unowned`): nothing to hand over.
                if tree.keys() == 0 {
                    self.trees.remove(&p);
                }
                continue;
            }
            newly_dirty |= self.record.dirty.insert(p);
            for ((tp, _), task) in self
                .tasks
                .range_mut((p, NodeId::new(0))..=(p, NodeId::new(u64::MAX)))
            {
                debug_assert_eq!(*tp, p);
                note_extra(task, &skey, seq);
            }
            if fx.topo.future.is_none() || fx.topo.joining {
                // (A joining node's keys are copies it pulled from the owners.)
                continue;
            }
            let owners = fx.topo.future_owners(p);
            if owners.contains(&fx.me) {
                continue;
            }
            for to in owners {
                let task = self.tasks.entry((p, to)).or_insert_with(|| Task {
                    scanned: true,
                    ..Task::default()
                });
                note_extra(task, &skey, seq);
            }
        }
        if newly_dirty {
            self.persist(fx);
        }
    }

    /// Asks the replica to drop a page of every partition this node holds keys of but neither
    /// replicates nor will, once all of its future owners hold this node's copy (see the module
    /// notes).
    fn drop_unowned(&mut self, fx: &mut Effects<'_>) {
        if fx.topo.joining
            || fx.topo.left
            || fx.topo.future.is_none()
            || self.seen_version != Some(fx.topo.placement_version)
            || self
                .placement_since
                .is_none_or(|(v, at)| v != fx.topo.placement_version || fx.now < at + DROP_GRACE)
        {
            return;
        }
        let mut keys = Vec::new();
        let (mut partitions, mut bytes) = (0, 0usize);
        let candidates: Vec<PartitionId> = self.trees.keys().copied().collect();
        for p in candidates {
            if keys.len() >= DROP_KEYS_PER_TICK || bytes >= SCAN_BYTES_MAX {
                break;
            }
            if fx.topo.replicates(p)
                || self.record.dirty.contains(&p)
                || self.tasks.keys().any(|(tp, _)| *tp == p)
                || self.in_flight.values().any(|push| push.p == p)
            {
                continue;
            }
            let owners = fx.topo.future_owners(p);
            let known = self.record.known.get(&p);
            if owners.is_empty() || !owners.iter().all(|o| known.is_some_and(|k| k.contains(o))) {
                continue;
            }
            let (from, to) = partition_range(p);
            // Bounded in bytes too: what is not dropped this tick is dropped at the next.
            let limit = DROP_KEYS_PER_TICK - keys.len();
            let page = match self.store.scan_page(
                Space::Data,
                &from,
                &to,
                limit,
                SCAN_BYTES_MAX.saturating_sub(bytes),
            ) {
                Ok(page) => page.entries,
                Err(e) => {
                    warn!(error = %e, partition = %p, "cannot scan a partition to drop");
                    continue;
                }
            };
            partitions += 1;
            bytes += page.iter().map(|(k, v)| k.len() + v.len()).sum::<usize>();
            keys.extend(page.into_iter().map(|(k, v)| {
                let leaf = leaf_of(&k, &v);
                (k, leaf)
            }));
        }
        if !keys.is_empty() {
            debug!(
                keys = keys.len(),
                partitions, "dropping copies of partitions this node no longer owns"
            );
            fx.calls
                .push_back(Call::Replica(ReplicaCall::Drop { keys, purge: false }));
        }
    }

    /// Sends the next page (or extra keys) of every task that has none in flight, up to the
    /// bound.
    fn progress(&mut self, fx: &mut Effects<'_>) {
        let now = fx.now;
        self.in_flight
            .retain(|_, p| now.saturating_sub(p.sent_at) <= PUSH_TIMEOUT);
        let busy: BTreeSet<(PartitionId, NodeId)> =
            self.in_flight.values().map(|p| (p.p, p.to)).collect();
        let ready: Vec<(PartitionId, NodeId)> = self
            .tasks
            .keys()
            .copied()
            .filter(|t| !busy.contains(t) && fx.topo.is_alive(t.1))
            .filter(|t| {
                self.tasks
                    .get(t)
                    .is_some_and(|task| task.paused_until <= now)
            })
            .collect();
        let mut done = Vec::new();
        for (p, to) in ready {
            if self.in_flight.len() >= PUSHES_IN_FLIGHT_MAX {
                break;
            }
            let Some(task) = self.tasks.get_mut(&(p, to)) else {
                continue;
            };
            // Extra keys whose newest state is durable (a state still staged is not in the
            // store yet: the store would give the older one).
            let durable = fx.journal.durable_seq();
            let mut found = Vec::new();
            let mut entries = Vec::new();
            let mut sent_keys = Vec::new();
            let mut bytes = 0;
            for (k, &seq) in task.extras.iter() {
                if found.len() >= self.batch_max || bytes >= BATCH_BYTES_MAX {
                    break;
                }
                if seq > durable {
                    continue;
                }
                match self.store.get(Space::Data, k) {
                    Ok(Some(v)) => {
                        bytes += v.len() + k.len();
                        match (split_data_key(k), Object::decode(&v)) {
                            (Some((_, key)), Ok(object)) => {
                                entries.push(MergeEntry {
                                    key: key.to_vec(),
                                    object,
                                });
                                sent_keys.push(k.clone());
                            }
                            _ => warn!("skipping an unreadable object in handoff"),
                        }
                    }
                    Ok(None) => {}
                    Err(e) => {
                        warn!(error = %e, "cannot read a key for handoff");
                        continue;
                    }
                }
                found.push((k.clone(), seq));
            }
            let (entries, sent) = if !found.is_empty() {
                (entries, Sent::Extras(found))
            } else if !task.scanned {
                let (start, end) = partition_range(p);
                let from = if task.cursor.is_empty() {
                    start
                } else {
                    let mut k = task.cursor.clone();
                    k.push(0);
                    k
                };
                // Within the wire's frame limit: the page stops once it holds enough bytes.
                let page = match self.store.scan_page(
                    Space::Data,
                    &from,
                    &end,
                    self.batch_max,
                    BATCH_BYTES_MAX,
                ) {
                    Ok(page) => page.entries,
                    Err(e) => {
                        warn!(error = %e, partition = %p, "cannot scan for handoff");
                        continue;
                    }
                };
                let Some((last, _)) = page.last() else {
                    task.scanned = true;
                    if task.extras.is_empty() {
                        done.push((p, to));
                    }
                    continue;
                };
                let last = last.clone();
                let mut entries = Vec::with_capacity(page.len());
                for (k, v) in page {
                    let Some((_, key)) = split_data_key(&k) else {
                        continue;
                    };
                    match Object::decode(&v) {
                        Ok(object) => {
                            entries.push(MergeEntry {
                                key: key.to_vec(),
                                object,
                            });
                            sent_keys.push(k.clone());
                        }
                        Err(e) => warn!(error = %e, "skipping an unreadable object in handoff"),
                    }
                }
                (entries, Sent::Page(last))
            } else if task.extras.is_empty() {
                done.push((p, to));
                continue;
            } else {
                // Only keys not yet durable are left: next time.
                continue;
            };
            let batch = self.next_batch;
            self.next_batch = self.next_batch.wrapping_add(1);
            debug!(partition = %p, %to, keys = entries.len(), batch, "handing a partition page over");
            fx.send(
                to,
                ReplicaMessage::Merge {
                    reply: MergeReply::Handoff { batch },
                    entries,
                }
                .into(),
            );
            self.in_flight.insert(
                batch,
                Push {
                    p,
                    to,
                    sent,
                    keys: sent_keys,
                    sent_at: now,
                },
            );
        }
        if !done.is_empty() {
            for (p, to) in done {
                self.tasks.remove(&(p, to));
                self.record.known.entry(p).or_default().insert(to);
                let owners = fx.topo.future_owners(p);
                let everyone = owners
                    .iter()
                    .all(|o| *o == fx.me || self.record.known[&p].contains(o));
                let pending = self.tasks.keys().any(|(tp, _)| *tp == p);
                if everyone && !pending && !owners.contains(&fx.me) {
                    // Every owner has this node's copy now.
                    self.record.dirty.remove(&p);
                }
                debug!(partition = %p, %to, "partition handed over");
            }
            self.persist(fx);
            if self.tasks.is_empty() {
                info!("partition handoff complete");
            }
        }
    }
}

/// Page size of the start-up scan that rebuilds the Merkle trees.
const REBUILD_PAGE: usize = 4096;

/// The Merkle tree of every partition with keys in `store`, by a scan of it.
fn rebuild_trees(store: &dyn ReadStore) -> Result<BTreeMap<PartitionId, Tree>, StoreError> {
    let mut trees: BTreeMap<PartitionId, Tree> = BTreeMap::new();
    let mut from = Vec::new();
    let mut keys = 0u64;
    loop {
        let page = store.scan_page(Space::Data, &from, &[], REBUILD_PAGE, SCAN_BYTES_MAX)?;
        let next = page.next_from();
        for (skey, value) in &page.entries {
            if let Some((p, key)) = split_data_key(skey) {
                trees
                    .entry(p)
                    .or_default()
                    .insert(key, leaf_of(skey, value));
                keys += 1;
            }
        }
        match next {
            Some(n) => from = n,
            None => break,
        }
    }
    info!(
        keys,
        partitions = trees.len(),
        "Merkle trees rebuilt from the store"
    );
    Ok(trees)
}

/// Adds `skey`, staged under journal number `seq`, to `task`'s extra keys.
fn note_extra(task: &mut Task, skey: &[u8], seq: u64) {
    let e = task.extras.entry(skey.to_vec()).or_insert(seq);
    *e = (*e).max(seq);
}

fn owners_contain(fx: &Effects<'_>, p: PartitionId, node: NodeId) -> bool {
    fx.topo.future_owners(p).contains(&node)
}
