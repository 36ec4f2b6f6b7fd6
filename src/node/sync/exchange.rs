//! Merkle-tree anti-entropy: replicas of a partition compare trees and swap exactly the keys
//! that differ.
//!
//! One exchange runs between an *initiator* (which keeps the exchange's state) and a
//! *responder* (which keeps none), over the peer transport (QUIC in production):
//!
//! 1. [`AeMessage::Compare`]: the initiator's [`GROUPS`] group hashes of partition `p`.
//! 2. [`AeMessage::Buckets`]: the responder's bucket digests of every group that differs (none:
//!    the partitions are equal, and the exchange is over).
//! 3. The initiator walks its copy of the partition in storage-key order, a page of keys at a
//!    time, and sends [`AeMessage::Keys`]: the range the page covers, and the leaf digest of
//!    each of its keys in a differing bucket.
//! 4. The responder reads the same range, keeps the keys in those buckets, and answers
//!    [`AeMessage::Diff`]: its state of every key the initiator lacks or holds differently,
//!    the keys it wants in turn, and how far it got (it stops early when the states it sends
//!    fill a batch, or it holds many more keys than the initiator). The initiator merges the
//!    states through its replica, so a finished walk means the data arrived.
//! 5. The initiator sends the wanted keys, and the next page, until the walk reaches the end of
//!    the partition.
//!
//! Both sides merge what they receive through their replica (DVV and CRDT merges, so no
//! sibling is ever lost), which updates their trees. Traffic is the differing keys' states plus
//! the digests of the keys that share their buckets, not the partition.
//!
//! Periodically every partition this node replicates is compared with one of its other
//! replicas in turn, spread over the interval; an operator's repair compares every partition
//! (or one) with every other replica. Exchanges in flight are bounded, and what the initiator
//! sends is throttled by a byte rate. States staged but not yet durable are not in the store
//! yet: a walk may see an older state and swap a key needlessly, which merges make harmless; the
//! next exchange settles it.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tracing::{debug, info, warn};

use super::super::object::{Object, BATCH_BYTES_MAX};
use super::super::replica::{leaf_of, MergeEntry, MergeReply, ReplicaMessage};
use super::super::Effects;
use super::SyncMessage;
use crate::id::NodeId;
use crate::merkle::{differing, BucketSet, Digest, Tree, GROUPS, GROUP_WIDTH};
use crate::ring::PartitionId;
use crate::storage::{data_key, partition_range, split_data_key, ReadStore, Space, SCAN_BYTES_MAX};

/// An exchange that heard nothing for this long is abandoned.
const EXCHANGE_TIMEOUT: Duration = Duration::from_secs(10);

/// Most keys a responder reads for one page (when it holds many the initiator lacks).
const RESPONDER_SCAN_MAX: usize = 4096;
/// Bytes one group digest costs the byte budget (its 16-byte digest).
const GROUP_COST_BYTES: u64 = 16;
/// Bytes one bucket digest costs the byte budget (its index, 2 bytes, and its 16-byte digest).
const BUCKET_COST_BYTES: u64 = 18;

/// Most digests one [`AeMessage::Keys`] may carry, and most keys one [`AeMessage::Diff`] may
/// want (a decoder limit on what a peer may ask of this node).
const KEYS_PER_MESSAGE_MAX: usize = RESPONDER_SCAN_MAX;

/// Anti-entropy messages.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum AeMessage {
    /// Step 1: the initiator's group hashes.
    Compare {
        /// The exchange.
        xid: u64,
        /// The partition.
        p: PartitionId,
        /// Its [`GROUPS`] group hashes.
        groups: Vec<Digest>,
    },
    /// Step 2: the responder's buckets of the differing groups (empty: equal).
    Buckets {
        /// The exchange.
        xid: u64,
        /// (bucket, digest) for every bucket of every differing group.
        buckets: Vec<(u16, Digest)>,
        /// Whether the responder's copy of the partition is complete (it replicates it and
        /// has caught up): a catch-up counts only exchanges with such a copy.
        #[serde(default)]
        complete: bool,
    },
    /// Step 3: one page of the initiator's walk.
    Keys {
        /// The exchange.
        xid: u64,
        /// The partition.
        p: PartitionId,
        /// The buckets that differ.
        buckets: BucketSet,
        /// First storage key of the range.
        #[serde(with = "serde_bytes")]
        from: Vec<u8>,
        /// End of the range (exclusive); empty: the end of the partition.
        #[serde(with = "serde_bytes")]
        to: Vec<u8>,
        /// The initiator's keys in the range and buckets, with their leaf digests.
        digests: Vec<(serde_bytes::ByteBuf, Digest)>,
    },
    /// Step 4: what the responder wants, and how far it compared.
    Diff {
        /// The exchange.
        xid: u64,
        /// The start of the page answered (so a late duplicate is not taken for the next).
        #[serde(with = "serde_bytes")]
        from: Vec<u8>,
        /// Keys whose state the responder wants.
        want: Vec<serde_bytes::ByteBuf>,
        /// The responder stopped early: it compared up to this storage key (inclusive).
        upto: Option<serde_bytes::ByteBuf>,
        /// The responder's states of the keys the initiator lacks or holds differently (within
        /// the batch limit: the responder stops early rather than send more).
        entries: Vec<MergeEntry>,
    },
    /// The responder cannot take part (the exchange is abandoned).
    Refused {
        /// The exchange.
        xid: u64,
        /// Why.
        why: String,
    },
}

/// Where an exchange stands.
#[derive(Debug)]
enum Stage {
    /// Waiting for [`AeMessage::Buckets`].
    Comparing,
    /// Waiting for the [`AeMessage::Diff`] of the page covering `[from, to)`.
    Walking {
        buckets: BucketSet,
        to: Vec<u8>,
        waiting: bool,
        /// Where the next page starts.
        cursor: Vec<u8>,
    },
}

#[derive(Debug)]
struct Exchange {
    p: PartitionId,
    peer: NodeId,
    stage: Stage,
    heard_at: Duration,
    keys_repaired: u64,
    bytes_sent: u64,
    /// The repair run it belongs to.
    run: Option<u64>,
    /// The responder said its copy of the partition is complete.
    peer_complete: bool,
}

/// Per-partition anti-entropy figures.
#[derive(Clone, Debug, Default)]
struct PartitionStats {
    last_exchange: Option<Duration>,
    keys_repaired: u64,
    bytes_sent: u64,
}

/// An operator's repair: every (partition, other replica) pair, compared once.
#[derive(Debug)]
struct RepairRun {
    id: u64,
    queue: VecDeque<(PartitionId, NodeId)>,
    partitions: BTreeSet<PartitionId>,
    /// Exchanges not yet finished, per partition.
    open: BTreeMap<PartitionId, usize>,
    partitions_done: u64,
    keys_repaired: u64,
    bytes_sent: u64,
    failed: u64,
    /// A joining node's intake: a failed exchange is tried again rather than counted.
    retry: bool,
    /// Partitions with an exchange that finished with a replica whose copy is complete.
    reached: BTreeSet<PartitionId>,
    /// The (partition, replica) exchanges that finished (not skipped for a peer down).
    answered: BTreeSet<(PartitionId, NodeId)>,
}

/// Progress of a repair, as `chorus repair` and `POST /v1/repair` report it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "server", derive(utoipa::ToSchema))]
pub struct RepairProgress {
    /// The run.
    pub id: u64,
    /// Partitions to compare.
    pub partitions: u64,
    /// Partitions compared with every other replica.
    pub partitions_done: u64,
    /// Keys sent either way.
    pub keys_repaired: u64,
    /// Bytes this node sent (digests and states).
    pub bytes_sent: u64,
    /// Exchanges abandoned (a replica unreachable or refusing); a later run retries them.
    pub exchanges_failed: u64,
    /// Whether every exchange finished.
    pub done: bool,
}

/// One partition as `GET /v1/partitions` shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "server", derive(utoipa::ToSchema))]
pub struct PartitionInfo {
    /// The partition.
    pub partition: u16,
    /// Its Merkle root (hex; all zeros when empty).
    pub root: String,
    /// Keys this node holds in it.
    pub keys: u64,
    /// Seconds since its last finished exchange, if any.
    pub last_exchange: Option<u64>,
    /// Keys sent either way by this node's exchanges of it.
    pub keys_repaired: u64,
    /// Bytes this node's exchanges of it sent.
    pub bytes_sent: u64,
    /// Bytes of the keys and states this node holds in it: only when asked for
    /// (`GET /v1/partitions?bytes=true`), as it takes a read of every key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes: Option<u64>,
}

/// Settings of anti-entropy.
#[derive(Clone, Debug)]
pub(crate) struct AeConfig {
    pub(crate) interval: Option<Duration>,
    pub(crate) in_flight_max: usize,
    pub(crate) bytes_per_sec: u64,
    pub(crate) page_keys: usize,
}

/// The anti-entropy half of the sync sub-machine.
pub(crate) struct AntiEntropy {
    config: AeConfig,
    exchanges: BTreeMap<u64, Exchange>,
    next_xid: u64,
    stats: BTreeMap<PartitionId, PartitionStats>,
    /// When each replicated partition is next compared.
    due: BTreeMap<PartitionId, Duration>,
    /// Rotates the replica each partition is compared with.
    rounds: BTreeMap<PartitionId, usize>,
    /// Byte allowance of the throttle, and when it was last refilled.
    allowance: i64,
    refilled_at: Duration,
    runs: Vec<RepairRun>,
    next_run: u64,
    /// The placement version `due` was computed for.
    seen_version: Option<u64>,
    /// A joining node's intake: the owners it was planned for, and its run.
    intake: Option<(Vec<NodeId>, u64)>,
    /// A member's catch-up of partitions it replicates without a complete copy: what was
    /// planned (each partition with its replicas), and the run.
    catch_up: Option<(BTreeMap<PartitionId, Vec<NodeId>>, u64)>,
    /// Bumped whenever an exchange of a run ends (so callers can tell when to look again).
    run_events: u64,
}

impl AntiEntropy {
    pub(crate) fn new(mut config: AeConfig, first_xid: u64) -> Self {
        // A page the responder would refuse is useless.
        config.page_keys = config.page_keys.clamp(1, KEYS_PER_MESSAGE_MAX);
        AntiEntropy {
            allowance: i64::try_from(config.bytes_per_sec).unwrap_or(i64::MAX),
            config,
            exchanges: BTreeMap::new(),
            next_xid: first_xid,
            stats: BTreeMap::new(),
            due: BTreeMap::new(),
            rounds: BTreeMap::new(),
            refilled_at: Duration::ZERO,
            runs: Vec::new(),
            next_run: 1,
            seen_version: None,
            intake: None,
            catch_up: None,
            run_events: 0,
        }
    }

    /// Changes whenever an exchange of the catch-up run ends.
    pub(crate) fn run_events(&self) -> u64 {
        self.run_events
    }

    /// For a member: compares each partition of `gaps` (which it replicates without a
    /// complete copy) with each of the partition's other listed replicas, and returns those
    /// now caught up: every exchange of it finished, at least one of them with a peer that
    /// answered (a partition with no other replica is caught up at once). Planned on the first
    /// call for a set of gaps, and planned again when a gap appears or its replicas change;
    /// an exchange that fails is tried again, and a partition whose peers were all down when
    /// its turn came is compared again later.
    pub(crate) fn catch_up(
        &mut self,
        gaps: BTreeMap<PartitionId, Vec<NodeId>>,
        me: NodeId,
    ) -> Vec<PartitionId> {
        if gaps.is_empty() {
            if let Some((_, old)) = self.catch_up.take() {
                self.runs.retain(|r| r.id != old);
            }
            return Vec::new();
        }
        if let Some((plan, id)) = &mut self.catch_up {
            let same = gaps.iter().all(|(p, o)| plan.get(p) == Some(o));
            if let Some(run) = self.runs.iter_mut().find(|r| r.id == *id).filter(|_| same) {
                // Partitions that are no longer gaps (caught up, or no longer replicated here)
                // leave the plan: one that comes back is planned afresh, never taken as done
                // on an exchange from before it left.
                plan.retain(|p, _| gaps.contains_key(p));
                run.queue.retain(|(p, _)| gaps.contains_key(p));
                run.open.retain(|p, _| gaps.contains_key(p));
                run.reached.retain(|p| gaps.contains_key(p));
                run.answered.retain(|(p, _)| gaps.contains_key(p));
                let mut done = Vec::new();
                for (p, replicas) in &gaps {
                    if run.open.get(p).is_some_and(|&n| n > 0) {
                        continue;
                    }
                    let others: Vec<NodeId> =
                        replicas.iter().copied().filter(|&n| n != me).collect();
                    // Caught up: compared with a replica whose copy is complete, or with every
                    // other replica when none has one (they all gained the partition after
                    // every holder was removed: nobody holds more).
                    let all_answered = others.iter().all(|&o| run.answered.contains(&(*p, o)));
                    if others.is_empty() || run.reached.contains(p) || all_answered {
                        done.push(*p);
                    } else {
                        // No complete copy answered (a replica holding one was down when its
                        // turn came): compare again.
                        for peer in others {
                            run.queue.push_back((*p, peer));
                            *run.open.entry(*p).or_insert(0) += 1;
                        }
                    }
                }
                return done;
            }
            let old = *id;
            self.runs.retain(|r| r.id != old);
        }
        let id = self.add_run(
            gaps.iter().map(|(p, o)| (*p, o.clone())).collect(),
            true,
            me,
        );
        self.catch_up = Some((gaps, id));
        // Partitions with no other replica are done at once; the others on later calls.
        self.run_events = self.run_events.wrapping_add(1);
        Vec::new()
    }

    /// For a joining node: the current owners (sorted) once it has pulled every partition it
    /// will own from each of their reachable current replicas (an exchange with each); `None`
    /// while that is under way (it plans the pulls on the first call for a set of owners).
    /// A node that is not joining gets `None`.
    pub(crate) fn intake_ready(&mut self, fx: &Effects<'_>) -> Option<Vec<NodeId>> {
        if !fx.topo.joining {
            self.intake = None;
            return None;
        }
        let owners = fx.topo.owners();
        if owners.is_empty() {
            // Nobody owns data yet: nothing to pull.
            return Some(owners);
        }
        let with_me = fx.topo.with_me.as_ref()?;
        if let Some((planned, run)) = &self.intake {
            if *planned == owners {
                if let Some(p) = self.repair_progress(*run) {
                    return p.done.then_some(owners);
                }
            }
            // The owners changed: the old plan goes.
            let old = *run;
            self.runs.retain(|r| r.id != old);
        }
        // Every partition it will own, from each current replica (peers it does not see alive
        // are not waited for: see `start`).
        let id = self.add_run(
            fx.topo
                .partition_ids()
                .filter(|&p| with_me.preference_list(p, fx.topo.n).contains(&fx.me))
                .map(|p| (p, fx.topo.primaries(p)))
                .collect(),
            true,
            fx.me,
        );
        self.intake = Some((owners, id));
        None
    }

    /// Exchanges in flight.
    pub(crate) fn in_flight(&self) -> usize {
        self.exchanges.len()
    }

    /// Partitions this node replicates in the current placement, with their figures.
    pub(crate) fn partitions(
        &self,
        trees: &mut BTreeMap<PartitionId, Tree>,
        fx: &Effects<'_>,
    ) -> Vec<PartitionInfo> {
        fx.topo
            .partition_ids()
            .filter(|&p| fx.topo.primaries(p).contains(&fx.me))
            .map(|p| {
                let (root, keys) = trees
                    .get_mut(&p)
                    .map_or((Digest::ZERO, 0), |t| (t.root(), t.keys()));
                let s = self.stats.get(&p).cloned().unwrap_or_default();
                PartitionInfo {
                    partition: p.get(),
                    root: root.to_hex(),
                    keys,
                    last_exchange: s
                        .last_exchange
                        .map(|at| fx.now.saturating_sub(at).as_secs()),
                    keys_repaired: s.keys_repaired,
                    bytes_sent: s.bytes_sent,
                    bytes: None,
                }
            })
            .collect()
    }

    /// Starts a repair of partition `only` (or every partition this node replicates) with
    /// every other reachable replica; returns its id.
    pub(crate) fn start_repair(&mut self, only: Option<PartitionId>, fx: &Effects<'_>) -> u64 {
        let plan = fx
            .topo
            .partition_ids()
            .filter(|&p| only.is_none_or(|o| o == p))
            .map(|p| (p, fx.topo.primaries(p)))
            .filter(|(_, owners)| owners.contains(&fx.me))
            .collect();
        self.add_run(plan, false, fx.me)
    }

    /// Adds a run comparing each partition of `plan` with each of its listed replicas (`me`
    /// left out; a partition with no other replica is done at once); returns its id.
    fn add_run(&mut self, plan: Vec<(PartitionId, Vec<NodeId>)>, retry: bool, me: NodeId) -> u64 {
        let id = self.next_run;
        self.next_run += 1;
        let mut queue = VecDeque::new();
        let mut partitions = BTreeSet::new();
        let mut open = BTreeMap::new();
        for (p, replicas) in plan {
            partitions.insert(p);
            for peer in replicas.into_iter().filter(|&n| n != me) {
                queue.push_back((p, peer));
                *open.entry(p).or_insert(0) += 1;
            }
        }
        let partitions_done = partitions.iter().filter(|p| !open.contains_key(p)).count() as u64;
        info!(
            run = id,
            partitions = partitions.len(),
            exchanges = queue.len(),
            intake = retry,
            "anti-entropy run planned"
        );
        self.runs.push(RepairRun {
            id,
            queue,
            partitions,
            open,
            partitions_done,
            keys_repaired: 0,
            bytes_sent: 0,
            failed: 0,
            retry,
            reached: BTreeSet::new(),
            answered: BTreeSet::new(),
        });
        self.evict_runs();
        id
    }

    /// Keeps the last few operator runs (for their progress); never drops an intake.
    fn evict_runs(&mut self) {
        while self.runs.iter().filter(|r| !r.retry).count() > 8 {
            let Some(i) = self.runs.iter().position(|r| !r.retry) else {
                break;
            };
            self.runs.remove(i);
        }
    }

    /// Progress of repair run `id` (0: the latest).
    pub(crate) fn repair_progress(&self, id: u64) -> Option<RepairProgress> {
        let run = if id == 0 {
            self.runs.iter().rev().find(|r| !r.retry)?
        } else {
            self.runs.iter().find(|r| r.id == id)?
        };
        Some(RepairProgress {
            id: run.id,
            partitions: run.partitions.len() as u64,
            partitions_done: run.partitions_done,
            keys_repaired: run.keys_repaired,
            bytes_sent: run.bytes_sent,
            exchanges_failed: run.failed,
            done: run.queue.is_empty() && run.open.values().all(|&n| n == 0),
        })
    }

    /// Time passed: abandon silent exchanges, start due ones.
    pub(crate) fn tick(
        &mut self,
        trees: &mut BTreeMap<PartitionId, Tree>,
        store: &dyn ReadStore,
        fx: &mut Effects<'_>,
    ) {
        let now = fx.now;
        let silent: Vec<u64> = self
            .exchanges
            .iter()
            // (A walk the throttle holds back is not silent: it waits for this node.)
            .filter(|(_, x)| !matches!(x.stage, Stage::Walking { waiting: false, .. }))
            .filter(|(_, x)| now.saturating_sub(x.heard_at) > EXCHANGE_TIMEOUT)
            .map(|(&xid, _)| xid)
            .collect();
        for xid in silent {
            if let Some(x) = self.exchanges.remove(&xid) {
                debug!(xid, partition = %x.p, peer = %x.peer, "anti-entropy exchange timed out");
                self.finish(x, false, fx);
            }
        }
        self.schedule(fx);
        self.progress_with(trees, store, fx);
    }

    /// Plans when each replicated partition is compared, spread over the interval.
    fn schedule(&mut self, fx: &Effects<'_>) {
        let Some(interval) = self.config.interval else {
            return;
        };
        if self.seen_version == Some(fx.topo.placement_version) {
            return;
        }
        self.seen_version = Some(fx.topo.placement_version);
        let q = u128::from(fx.topo.partitions.max(1));
        let mine: BTreeSet<PartitionId> = fx
            .topo
            .partition_ids()
            .filter(|&p| fx.topo.primaries(p).len() > 1 && fx.topo.primaries(p).contains(&fx.me))
            .collect();
        self.due.retain(|p, _| mine.contains(p));
        for p in mine {
            self.due.entry(p).or_insert_with(|| {
                let offset = interval.as_nanos() * u128::from(p.get()) / q;
                let offset = Duration::from_nanos(u64::try_from(offset).unwrap_or(u64::MAX));
                fx.now.checked_add(offset).unwrap_or(Duration::MAX)
            });
        }
    }

    fn refill(&mut self, now: Duration) {
        let rate = i64::try_from(self.config.bytes_per_sec).unwrap_or(i64::MAX);
        let dt = now.saturating_sub(self.refilled_at);
        let add = i128::from(rate) * dt.as_nanos() as i128 / 1_000_000_000;
        self.allowance = (i128::from(self.allowance) + add).min(i128::from(rate)) as i64;
        self.refilled_at = now;
    }

    /// Starts exchanges (repairs first, then due partitions) up to the bound, and sends the
    /// next page of walks the throttle held back.
    fn progress_with(
        &mut self,
        trees: &mut BTreeMap<PartitionId, Tree>,
        store: &dyn ReadStore,
        fx: &mut Effects<'_>,
    ) {
        self.refill(fx.now);
        // Walks waiting for the throttle.
        let held: Vec<u64> = self
            .exchanges
            .iter()
            .filter(|(_, x)| matches!(x.stage, Stage::Walking { waiting: false, .. }))
            .map(|(&xid, _)| xid)
            .collect();
        for xid in held {
            self.send_page(xid, store, fx);
        }
        let busy: BTreeSet<PartitionId> = self.exchanges.values().map(|x| x.p).collect();
        // Repairs.
        let mut starts: Vec<(PartitionId, NodeId, Option<u64>)> = Vec::new();
        let mut slots = self
            .config
            .in_flight_max
            .saturating_sub(self.exchanges.len());
        for run in &mut self.runs {
            let mut deferred = VecDeque::new();
            while slots > 0 {
                let Some((p, peer)) = run.queue.pop_front() else {
                    break;
                };
                if busy.contains(&p) || starts.iter().any(|s| s.0 == p) {
                    deferred.push_back((p, peer));
                    continue;
                }
                starts.push((p, peer, Some(run.id)));
                slots -= 1;
            }
            deferred.append(&mut run.queue);
            run.queue = deferred;
        }
        // Due partitions.
        if let Some(interval) = self.config.interval {
            let due: Vec<PartitionId> = self
                .due
                .iter()
                .filter(|(p, &at)| at <= fx.now && !busy.contains(p))
                .map(|(&p, _)| p)
                .collect();
            for p in due {
                if slots == 0 {
                    break;
                }
                if starts.iter().any(|s| s.0 == p) {
                    continue;
                }
                let peers: Vec<NodeId> = fx
                    .topo
                    .primaries(p)
                    .into_iter()
                    .filter(|&n| n != fx.me && fx.topo.is_alive(n))
                    .collect();
                if let Some(at) = self.due.get_mut(&p) {
                    *at = fx.now.checked_add(interval).unwrap_or(Duration::MAX);
                }
                if peers.is_empty() {
                    continue;
                }
                let round = self.rounds.entry(p).or_insert(0);
                let peer = peers[*round % peers.len()];
                *round = round.wrapping_add(1);
                starts.push((p, peer, None));
                slots -= 1;
            }
        }
        for (p, peer, run) in starts {
            self.start(p, peer, run, trees, fx);
        }
    }

    fn start(
        &mut self,
        p: PartitionId,
        peer: NodeId,
        run: Option<u64>,
        trees: &mut BTreeMap<PartitionId, Tree>,
        fx: &mut Effects<'_>,
    ) {
        if !fx.topo.is_alive(peer) {
            if let Some(id) = run {
                // An intake cannot wait for a replica that is down (its writes reach the
                // others, or come by anti-entropy later); a repair counts it as failed.
                let retry = self.runs.iter().any(|r| r.id == id && r.retry);
                self.exchange_done(id, p, peer, retry, 0, 0);
            }
            return;
        }
        let xid = self.next_xid;
        self.next_xid = self.next_xid.wrapping_add(1);
        let groups = trees.entry(p).or_default().groups().to_vec();
        debug!(xid, partition = %p, %peer, "anti-entropy exchange started");
        let bytes = groups.len() as u64 * GROUP_COST_BYTES;
        fx.send(
            peer,
            SyncMessage::Ae(AeMessage::Compare { xid, p, groups }).into(),
        );
        self.exchanges.insert(
            xid,
            Exchange {
                p,
                peer,
                stage: Stage::Comparing,
                heard_at: fx.now,
                keys_repaired: 0,
                bytes_sent: bytes,
                run,
                peer_complete: false,
            },
        );
    }

    /// An exchange ended (well or not): record its figures.
    fn finish(&mut self, x: Exchange, ok: bool, fx: &Effects<'_>) {
        let s = self.stats.entry(x.p).or_default();
        s.keys_repaired = s.keys_repaired.saturating_add(x.keys_repaired);
        s.bytes_sent = s.bytes_sent.saturating_add(x.bytes_sent);
        if ok {
            s.last_exchange = Some(fx.now);
            if x.keys_repaired > 0 {
                info!(partition = %x.p, peer = %x.peer, keys = x.keys_repaired, bytes = x.bytes_sent, "anti-entropy repaired keys");
            }
        }
        if let Some(id) = x.run {
            if ok {
                if let Some(r) = self.runs.iter_mut().find(|r| r.id == id) {
                    r.answered.insert((x.p, x.peer));
                    if x.peer_complete {
                        r.reached.insert(x.p);
                    }
                }
            }
            self.exchange_done(id, x.p, x.peer, ok, x.keys_repaired, x.bytes_sent);
        }
    }

    fn exchange_done(
        &mut self,
        run: u64,
        p: PartitionId,
        peer: NodeId,
        ok: bool,
        keys: u64,
        bytes: u64,
    ) {
        if self.catch_up.as_ref().is_some_and(|(_, c)| *c == run) {
            self.run_events = self.run_events.wrapping_add(1);
        }
        let Some(r) = self.runs.iter_mut().find(|r| r.id == run) else {
            return;
        };
        r.keys_repaired = r.keys_repaired.saturating_add(keys);
        r.bytes_sent = r.bytes_sent.saturating_add(bytes);
        if !ok && r.retry {
            // Try again later (an intake must hold every partition before the join).
            r.queue.push_back((p, peer));
            return;
        }
        if !ok {
            r.failed += 1;
        }
        if let Some(n) = r.open.get_mut(&p).filter(|n| **n > 0) {
            *n -= 1;
            if *n == 0 {
                r.partitions_done += 1;
            }
        }
        // (A catch-up run, which a member may re-plan and re-fill often, is told of by the
        // sync sub-machine as its partitions come back.)
        let catch_up = self.catch_up.as_ref().is_some_and(|(_, c)| *c == run);
        if !catch_up && r.queue.is_empty() && r.open.values().all(|&n| n == 0) {
            info!(
                run = r.id,
                partitions = r.partitions.len(),
                keys_repaired = r.keys_repaired,
                bytes_sent = r.bytes_sent,
                failed = r.failed,
                "repair finished"
            );
        }
    }

    /// Handles an anti-entropy message from `from`.
    pub(crate) fn handle(
        &mut self,
        from: NodeId,
        msg: AeMessage,
        trees: &mut BTreeMap<PartitionId, Tree>,
        store: &dyn ReadStore,
        fx: &mut Effects<'_>,
    ) {
        let before = self.exchanges.len();
        self.dispatch(from, msg, trees, store, fx);
        if self.exchanges.len() < before {
            // A slot freed up: start the next due exchange now rather than at the next tick.
            self.progress_with(trees, store, fx);
        }
    }

    fn dispatch(
        &mut self,
        from: NodeId,
        msg: AeMessage,
        trees: &mut BTreeMap<PartitionId, Tree>,
        store: &dyn ReadStore,
        fx: &mut Effects<'_>,
    ) {
        match msg {
            AeMessage::Compare { xid, p, groups } => {
                if p.get() as u32 >= fx.topo.partitions || groups.len() != GROUPS {
                    warn!(%from, xid, "malformed anti-entropy comparison dropped");
                    return;
                }
                // A partition this node holds nothing of compares as empty (without keeping a
                // tree for it).
                let mut empty = Tree::new();
                let tree = trees.get_mut(&p).unwrap_or(&mut empty);
                let buckets = differing(&tree.groups(), &groups)
                    .into_iter()
                    .flat_map(|g| {
                        tree.group_buckets(g)
                            .iter()
                            .enumerate()
                            .map(move |(i, d)| ((g * GROUP_WIDTH + i) as u16, *d))
                    })
                    .collect::<Vec<_>>();
                if !buckets.is_empty() {
                    let st = self.stats.entry(p).or_default();
                    st.bytes_sent = st
                        .bytes_sent
                        .saturating_add(buckets.len() as u64 * BUCKET_COST_BYTES);
                }
                let complete = fx.topo.holds(p);
                fx.send(
                    from,
                    SyncMessage::Ae(AeMessage::Buckets {
                        xid,
                        buckets,
                        complete,
                    })
                    .into(),
                );
            }
            AeMessage::Buckets {
                xid,
                buckets,
                complete,
            } => {
                let Some(x) = self.exchanges.get_mut(&xid) else {
                    return;
                };
                if x.peer != from || !matches!(x.stage, Stage::Comparing) {
                    return;
                }
                x.heard_at = fx.now;
                x.peer_complete = complete;
                let tree = trees.entry(x.p).or_default();
                let mut set = BucketSet::default();
                for (b, d) in buckets {
                    if tree.bucket(usize::from(b)) != d {
                        set.insert(usize::from(b));
                    }
                }
                if set.is_empty() {
                    if let Some(x) = self.exchanges.remove(&xid) {
                        self.finish(x, true, fx);
                    }
                    return;
                }
                debug!(xid, partition = %x.p, buckets = set.len(), "anti-entropy walk");
                x.stage = Stage::Walking {
                    buckets: set,
                    to: Vec::new(),
                    waiting: false,
                    cursor: partition_range(x.p).0,
                };
                self.refill(fx.now);
                self.send_page(xid, store, fx);
            }
            AeMessage::Keys {
                xid,
                p,
                buckets,
                from: start,
                to,
                digests,
            } => self.respond(from, xid, p, &buckets, start, to, digests, store, fx),
            AeMessage::Diff {
                xid,
                from: page,
                want,
                upto,
                entries,
            } => {
                let Some(x) = self.exchanges.get_mut(&xid) else {
                    return;
                };
                let Stage::Walking {
                    to,
                    waiting,
                    cursor,
                    ..
                } = &mut x.stage
                else {
                    return;
                };
                if x.peer != from || !*waiting || page != *cursor {
                    // Not the answer to the page in flight (a duplicate, or late).
                    return;
                }
                let (p_start, p_end) = partition_range(x.p);
                let upto_ok = upto.as_ref().is_none_or(|u| {
                    u.as_slice() >= cursor.as_slice()
                        && u.as_slice() >= p_start.as_slice()
                        && (to.is_empty() || u.as_slice() < to.as_slice())
                        && (p_end.is_empty() || u.as_slice() < p_end.as_slice())
                });
                if want.len() > KEYS_PER_MESSAGE_MAX || !upto_ok {
                    warn!(%from, xid, "malformed anti-entropy answer; exchange abandoned");
                    if let Some(x) = self.exchanges.remove(&xid) {
                        self.finish(x, false, fx);
                    }
                    return;
                }
                x.heard_at = fx.now;
                *waiting = false;
                x.keys_repaired = x.keys_repaired.saturating_add(entries.len() as u64);
                let p = x.p;
                if !entries.is_empty() {
                    // Merged here, through this node's replica.
                    fx.send(
                        fx.me,
                        ReplicaMessage::Merge {
                            reply: MergeReply::Repair,
                            entries,
                        }
                        .into(),
                    );
                }
                let mut wanted = Vec::new();
                for k in want {
                    match store.get(Space::Data, &data_key(p, &k)) {
                        Ok(Some(bytes)) => match Object::decode(&bytes) {
                            Ok(object) => wanted.push((k.into_vec(), object, bytes.len())),
                            Err(e) => {
                                warn!(error = %e, "unreadable object skipped by anti-entropy")
                            }
                        },
                        Ok(None) => {}
                        Err(e) => warn!(error = %e, "cannot read a key for anti-entropy"),
                    }
                }
                let (keys, bytes) = send_entries(from, wanted, fx);
                x.keys_repaired = x.keys_repaired.saturating_add(keys);
                x.bytes_sent = x.bytes_sent.saturating_add(bytes);
                self.allowance = self
                    .allowance
                    .saturating_sub(i64::try_from(bytes).unwrap_or(i64::MAX));
                // Where the next page starts.
                let next = match upto {
                    Some(u) => {
                        let mut k = u.into_vec();
                        k.push(0);
                        Some(k)
                    }
                    None if to.is_empty() => None,
                    None => Some(std::mem::take(to)),
                };
                match next {
                    Some(k) => {
                        *cursor = k;
                        self.send_page(xid, store, fx);
                    }
                    None => {
                        if let Some(x) = self.exchanges.remove(&xid) {
                            self.finish(x, true, fx);
                        }
                    }
                }
            }
            AeMessage::Refused { xid, why } => {
                if self.exchanges.get(&xid).is_some_and(|x| x.peer == from) {
                    debug!(xid, %from, %why, "anti-entropy exchange refused");
                    if let Some(x) = self.exchanges.remove(&xid) {
                        self.finish(x, false, fx);
                    }
                }
            }
        }
    }

    /// Sends the next page of walk `xid` if the throttle allows (else the tick does later).
    fn send_page(&mut self, xid: u64, store: &dyn ReadStore, fx: &mut Effects<'_>) {
        if self.allowance <= 0 {
            return;
        }
        let Some(x) = self.exchanges.get_mut(&xid) else {
            return;
        };
        let Stage::Walking {
            buckets,
            to,
            waiting,
            cursor,
        } = &mut x.stage
        else {
            return;
        };
        if *waiting {
            return;
        }
        let end = partition_range(x.p).1;
        let limit = self.config.page_keys.max(1);
        let page = match store.scan_page(Space::Data, cursor, &end, limit, SCAN_BYTES_MAX) {
            Ok(page) => page,
            Err(e) => {
                warn!(error = %e, partition = %x.p, "cannot scan for anti-entropy");
                return;
            }
        };
        let page_end = page.next_from().unwrap_or_default();
        let page = page.entries;
        let mut digests = Vec::new();
        let mut bytes = 0u64;
        for (skey, value) in &page {
            let Some((_, key)) = split_data_key(skey) else {
                continue;
            };
            if buckets.holds_key(key) {
                bytes += (key.len() + 16) as u64;
                digests.push((
                    serde_bytes::ByteBuf::from(key.to_vec()),
                    leaf_of(skey, value),
                ));
            }
        }
        *to = page_end.clone();
        *waiting = true;
        x.heard_at = fx.now;
        x.bytes_sent = x.bytes_sent.saturating_add(bytes);
        self.allowance = self
            .allowance
            .saturating_sub(i64::try_from(bytes).unwrap_or(i64::MAX));
        let msg = AeMessage::Keys {
            xid,
            p: x.p,
            buckets: buckets.clone(),
            from: cursor.clone(),
            to: page_end,
            digests,
        };
        fx.send(x.peer, SyncMessage::Ae(msg).into());
    }

    /// Step 4, on the responder.
    #[allow(clippy::too_many_arguments)]
    fn respond(
        &mut self,
        from: NodeId,
        xid: u64,
        p: PartitionId,
        buckets: &BucketSet,
        start: Vec<u8>,
        to: Vec<u8>,
        digests: Vec<(serde_bytes::ByteBuf, Digest)>,
        store: &dyn ReadStore,
        fx: &mut Effects<'_>,
    ) {
        let (p_start, p_end) = partition_range(p);
        let inside = |k: &[u8]| k >= &p_start[..] && (p_end.is_empty() || k <= &p_end[..]);
        if p.get() as u32 >= fx.topo.partitions
            || !inside(&start)
            || (!to.is_empty() && (!inside(&to) || to < start))
            || digests.len() > KEYS_PER_MESSAGE_MAX
        {
            warn!(%from, xid, "malformed anti-entropy page dropped");
            let why = "malformed page".to_owned();
            fx.send(
                from,
                SyncMessage::Ae(AeMessage::Refused { xid, why }).into(),
            );
            return;
        }
        let end = if to.is_empty() { p_end } else { to };
        // Bounded in bytes as well as keys: any peer may ask for a page.
        let page = match store.scan_page(
            Space::Data,
            &start,
            &end,
            RESPONDER_SCAN_MAX,
            SCAN_BYTES_MAX,
        ) {
            Ok(page) => page,
            Err(e) => {
                warn!(error = %e, partition = %p, "cannot scan for anti-entropy");
                let why = format!("cannot read the partition: {e}");
                fx.send(
                    from,
                    SyncMessage::Ae(AeMessage::Refused { xid, why }).into(),
                );
                return;
            }
        };
        let mut upto = (!page.complete)
            .then(|| page.entries.last().map(|(k, _)| k.clone()))
            .flatten();
        let page = page.entries;
        let theirs: BTreeMap<Vec<u8>, Digest> = digests
            .into_iter()
            .map(|(k, d)| (data_key(p, &k), d))
            .collect();
        let mut entries = Vec::new();
        let mut bytes = 0usize;
        let mut mine: BTreeMap<Vec<u8>, Digest> = BTreeMap::new();
        for (skey, value) in page {
            let Some((_, key)) = split_data_key(&skey) else {
                continue;
            };
            if !buckets.holds_key(key) {
                continue;
            }
            let leaf = leaf_of(&skey, &value);
            if theirs.get(&skey) != Some(&leaf) {
                if !entries.is_empty() && bytes + value.len() + key.len() > BATCH_BYTES_MAX {
                    // A full batch: stop before this key; the initiator continues from here.
                    let mut last = mine.keys().next_back().cloned().unwrap_or_default();
                    if last.is_empty() {
                        last = start.clone();
                    }
                    upto = Some(last);
                    break;
                }
                match Object::decode(&value) {
                    Ok(object) => {
                        bytes += value.len() + key.len();
                        entries.push(MergeEntry {
                            key: key.to_vec(),
                            object,
                        });
                    }
                    Err(e) => warn!(error = %e, "unreadable object skipped by anti-entropy"),
                }
            }
            mine.insert(skey, leaf);
        }
        // Keys they hold (up to where this answer covers) that this node lacks or holds
        // differently.
        let want: Vec<serde_bytes::ByteBuf> = theirs
            .iter()
            .filter(|(k, _)| upto.as_ref().is_none_or(|u| *k <= u))
            .filter(|(k, d)| mine.get(*k) != Some(*d))
            .filter_map(|(k, _)| split_data_key(k).map(|(_, key)| key.to_vec().into()))
            .collect();
        // What this node sends counts in its figures of the partition, as the initiator's do.
        let st = self.stats.entry(p).or_default();
        st.bytes_sent = st.bytes_sent.saturating_add(bytes as u64);
        st.keys_repaired = st.keys_repaired.saturating_add(entries.len() as u64);
        fx.send(
            from,
            SyncMessage::Ae(AeMessage::Diff {
                xid,
                from: start,
                want,
                upto: upto.map(serde_bytes::ByteBuf::from),
                entries,
            })
            .into(),
        );
    }
}

/// Sends `entries` to `to`'s replica in merges within the batch limit; returns (keys, bytes).
fn send_entries(
    to: NodeId,
    entries: Vec<(Vec<u8>, Object, usize)>,
    fx: &mut Effects<'_>,
) -> (u64, u64) {
    let (mut keys, mut bytes) = (0u64, 0u64);
    let mut batch = Vec::new();
    let mut batch_bytes = 0;
    for (key, object, size) in entries {
        if !batch.is_empty() && batch_bytes + size + key.len() > BATCH_BYTES_MAX {
            let entries = std::mem::take(&mut batch);
            fx.send(
                to,
                ReplicaMessage::Merge {
                    reply: MergeReply::Repair,
                    entries,
                }
                .into(),
            );
            batch_bytes = 0;
        }
        keys += 1;
        bytes += (size + key.len()) as u64;
        batch_bytes += size + key.len();
        batch.push(MergeEntry { key, object });
    }
    if !batch.is_empty() {
        fx.send(
            to,
            ReplicaMessage::Merge {
                reply: MergeReply::Repair,
                entries: batch,
            }
            .into(),
        );
    }
    (keys, bytes)
}
