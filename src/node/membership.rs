//! The membership sub-machine: SWIM liveness (foca), the ring-state CRDT, joins, leaves and
//! operator removals.
//!
//! It owns who is in the ring and who is reachable, and nothing else: it never looks at keys,
//! requests or storage beyond persisting the ring state. Its inputs come through the router
//! ([`super::Node`]): SWIM packets, [`MembershipMessage`]s, [`MembershipTimer`]s and admin
//! requests; its effects go into the router's [`Outbox`].
//!
//! # Ring changes that must reach the cluster
//!
//! A leave and a removal change a node's ring status for good, so they must not be lost with the
//! node that started them. Each is confirmed by the *ring*, not by a momentary SWIM view: a
//! majority of the ring's members (status `member`, not the subject, not this node) must answer
//! that they recorded the change (they persist before answering). Until then the change keeps
//! being pushed every ring-sync period and is reported as pending, with who is still missing.
//! Nodes that have left never count as confirmers. A removal taken while no other member
//! remains waits for a majority of the leaving nodes instead (or, with none, of the joining
//! ones), so that another node holds it; a leave never waits for other leaving nodes (see
//! `Membership::confirmers`).
//!
//! A leave has two phases. In `leaving` the node still owns its partitions and stays in SWIM
//! (this is where partition handoff belongs); once a majority recorded `leaving`, the node
//! records `left`, leaves SWIM, and reports [`Output::Left`] once a majority recorded `left`.
//! A node that restarts mid-leave resumes where its disk says it was.
//!
//! # Joining
//!
//! A joining node becomes a `member` once it has caught up with the ring state of a member
//! (one it knew as a member before, even if it is leaving by now) and the data path reported
//! ([`Membership::set_data_ready`]) that it pulled every partition it will own from the ring's
//! current owners; a change of owners in between asks for it again. Its
//! ring must still list another member when it does: a joiner never promotes itself while the
//! only owners are leaving (every member left, or was removed, since it caught up). The leaving
//! owners then hand their partitions to the joining nodes (the future placement), and once they
//! are gone, with no owner left, the joiners carry the ring on.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::num::{NonZeroU32, NonZeroUsize};
use std::sync::Arc;
use std::time::Duration;

use foca::{AccumulatingRuntime, Foca, Incarnation, OwnedNotification, State};
use rand::SeedableRng;
use rand_xoshiro::Xoshiro256PlusPlus;
use serde::{Deserialize, Serialize};
use tracing::{debug, error, info, warn};

use super::topology::Topology;
use super::{Outbox, Output, SWIM_PACKET_BYTES_MAX};
use crate::id::NodeId;
use crate::membership::{
    EntryAuth, MergeReport, NodeInfo, PeerId, Removal, RingBroadcast, RingBroadcastHandler,
    RingEntry, RingRefusals, RingState, RingStatus, SharedRefusals, SharedRing, SignedEntry,
    SwimCodec, VERSION_MAX,
};
use crate::ring::{Member, Ring, RingConfig};

/// How often a pending ring change is reported in the log while it waits for confirmations.
const PENDING_REPORT_EVERY: Duration = Duration::from_secs(10);

/// Most addresses re-announced to in one periodic round (seeds and ring nodes SWIM lacks).
const REANNOUNCE_TARGETS_MAX: usize = 8;

/// Membership settings (part of [`super::NodeConfig`]).
#[derive(Clone, Debug)]
pub struct MembershipConfig {
    /// QUIC addresses of nodes to join through. Empty: this node founds a new cluster.
    pub seeds: Vec<SocketAddr>,
    /// Partitions and virtual nodes of the ring.
    pub ring: RingConfig,
    /// Replicas per key (N).
    pub replicas: usize,
    /// SWIM probe period.
    pub probe_period: Duration,
    /// SWIM probe round-trip time before indirect probes.
    pub probe_rtt: Duration,
    /// How long a suspect member has to refute before it is declared down.
    pub suspect_to_down_after: Duration,
    /// How often SWIM announces to members it holds down (heals partitions).
    pub announce_to_down_every: Duration,
    /// Period of the full ring-state exchange with a random member.
    pub ring_sync_interval: Duration,
    /// Period of re-announcing to the seeds and ring members while this node knows no member.
    pub announce_interval: Duration,
    /// Period of re-announcing to the seeds and ring nodes SWIM does not list, even when this
    /// node is connected: how two groups that formed apart find each other.
    pub reannounce_interval: Duration,
}

impl MembershipConfig {
    /// Defaults for a LAN cluster: 1 s probes, 4 s of suspicion, ring sync every 2 s.
    pub fn new(seeds: Vec<SocketAddr>) -> Self {
        MembershipConfig {
            seeds,
            ring: RingConfig::default(),
            replicas: 3,
            probe_period: Duration::from_secs(1),
            probe_rtt: Duration::from_millis(500),
            suspect_to_down_after: Duration::from_secs(4),
            announce_to_down_every: Duration::from_secs(10),
            ring_sync_interval: Duration::from_secs(2),
            announce_interval: Duration::from_secs(1),
            reannounce_interval: Duration::from_secs(10),
        }
    }

    fn foca_config(&self) -> foca::Config {
        let mut c = foca::Config::new_lan(NonZeroU32::new(16).expect("nonzero"));
        c.probe_period = self.probe_period;
        c.probe_rtt = self.probe_rtt;
        c.suspect_to_down_after = self.suspect_to_down_after;
        c.max_packet_size = NonZeroUsize::new(SWIM_PACKET_BYTES_MAX).expect("nonzero");
        // Forget down members after a while; the ring state still lists them.
        c.remove_down_after = Some(Duration::from_secs(3600));
        c.periodic_announce_to_down_members = Some(foca::PeriodicParams {
            frequency: self.announce_to_down_every,
            num_members: NonZeroUsize::new(2).expect("nonzero"),
        });
        c
    }
}

/// A timer of the membership sub-machine.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MembershipTimer {
    /// A SWIM protocol timer.
    Swim(foca::Timer<PeerId>),
    /// Time for a full ring-state exchange (and for pushing pending ring changes).
    RingSync,
    /// Time to re-announce to the seeds.
    Announce,
}

/// When the receiver of a [`MembershipMessage::RingSync`] answers with its own state.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum SyncReply {
    /// Never: this message is itself an answer.
    Never,
    /// When the receiver knows something the sender does not.
    IfNewer,
    /// Always, after persisting what it learned: the sender waits for confirmations of a ring
    /// change (a leave or a removal).
    Always,
}

/// Messages between the membership sub-machines of two nodes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum MembershipMessage {
    /// The sender's full ring-membership state, exchanged periodically so a node that missed
    /// broadcasts catches up, and pushed while a ring change waits for confirmations.
    RingSync {
        /// The sender's whole ring state.
        state: RingState,
        /// Whether and when the receiver answers with its own state.
        reply: SyncReply,
    },
}

/// Reachability of a member as SWIM sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[cfg_attr(feature = "server", derive(utoipa::ToSchema))]
pub enum Liveness {
    /// Answers probes.
    Alive,
    /// Missed probes; may still refute.
    Suspect,
    /// Declared down (or never heard from).
    Down,
}

/// A ring change this node started and is waiting to see confirmed, as reported by
/// `GET /v1/cluster`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "server", derive(utoipa::ToSchema))]
pub struct PendingChange {
    /// The node whose status changes (16 hex digits).
    pub node: String,
    /// The status being confirmed.
    pub status: RingStatus,
    /// `leave` (this node leaves) or `remove` (an operator removed a dead node).
    pub kind: String,
    /// Members that confirmed so far.
    pub confirmed: usize,
    /// Confirmations needed: a majority of the ring's members other than the subject.
    pub needed: usize,
    /// Members whose confirmation is still missing.
    pub waiting_for: Vec<String>,
    /// Whether this node has caught up with a member's ring state (the member may have started
    /// leaving since); until it has, it cannot know the members and the change waits.
    pub caught_up: bool,
}

/// Why an operator removal was refused. Nothing changed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RemoveError {
    /// The node is not in the ring.
    #[error("node {0} is not in the ring")]
    Unknown(NodeId),
    /// A node cannot remove itself; it leaves instead.
    #[error("node {0} is this node: use leave instead of remove")]
    Itself(NodeId),
    /// This node is leaving or has left.
    #[error("this node is leaving the cluster and takes no ring changes")]
    Leaving,
    /// SWIM does not report the node down: it may be running, and removing a running node
    /// makes it stop without handing anything off. Remove it with `force` once it is known to
    /// be gone for good.
    #[error(
        "node {node} is {liveness:?} as this node sees it, not down: stop it first, or remove it \
         with force if its machine is gone for good (a removed node that is still running stops \
         without handing its data off)"
    )]
    NotDown {
        /// The node.
        node: NodeId,
        /// Its liveness as this node sees it.
        liveness: Liveness,
    },
    /// The removal does not carry the operator's signature of it (in a real cluster: made
    /// with the CA key, as `chorus cluster remove` does). No node can remove another.
    #[error(
        "the removal of node {0} is not signed by the cluster's operator key (the CA key): \
         use `chorus cluster remove {0} --operator-ca <CA directory>`"
    )]
    NotSigned(NodeId),
}

/// Why a leave could not be cancelled. Nothing changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum CancelLeaveError {
    /// This node is not leaving.
    #[error("this node is not leaving the cluster")]
    NotLeaving,
    /// The leave went too far to be undone: `left` is recorded (the others may already have
    /// taken the partitions over), or an operator removed this node.
    #[error("this node's leave has completed (or an operator removed it): it cannot be cancelled")]
    Completed,
    /// The leave began while this node was still joining (its copy of its partitions may be
    /// incomplete), or it resumed after a restart (which cannot tell): becoming a member again
    /// would serve reads from a copy that may miss acknowledged writes.
    #[error(
        "this node's leave cannot be cancelled: it began while the node was still joining, or \
         the node restarted since, so it cannot prove it holds a complete copy of its \
         partitions; let the leave complete and join a new node instead"
    )]
    NotCancellable,
    /// This node's ring entry cannot take another version.
    #[error("this node's ring entry version is exhausted")]
    VersionExhausted,
}

/// Why the membership state cannot be set up.
#[derive(Debug, thiserror::Error)]
pub enum MembershipError {
    /// The data directory belongs to a node that left the cluster.
    #[error("node {0} has left the cluster and cannot rejoin; start with an empty data directory")]
    AlreadyLeft(NodeId),
    /// The persisted entry of this node has the largest version there is; it cannot sign a
    /// newer one.
    #[error("node {0}'s ring entry version is exhausted")]
    VersionExhausted(NodeId),
    /// The ring configuration cannot place data.
    #[error("invalid ring: {0}")]
    Ring(#[from] crate::ring::RingError),
}

type Swim = Foca<PeerId, SwimCodec, Xoshiro256PlusPlus, RingBroadcastHandler>;

/// Confirmations gathered for one ring change.
#[derive(Debug, Clone, Default)]
struct Confirmations {
    /// Nodes that answered with a ring state recording the change.
    confirmed: BTreeSet<NodeId>,
    /// When the change (or its current phase) started, for reports.
    since: Duration,
    /// When it was last reported in the log.
    reported: Duration,
}

/// This node's own leave.
#[derive(Debug, Clone)]
struct Leave {
    /// The status being confirmed: `leaving`, then `left`.
    phase: RingStatus,
    confirmations: Confirmations,
    /// Whether [`Output::Left`] was emitted.
    done: bool,
    /// Whether the leave may be cancelled: it began in this process while this node was a
    /// member, so it holds a complete copy of its partitions. A joiner's copy may be
    /// incomplete, and a leave resumed after a restart cannot tell which it was.
    cancellable: bool,
}

/// The membership sub-machine.
pub(crate) struct Membership {
    id: NodeId,
    info: NodeInfo,
    /// Signs this node's entries and checks everyone else's.
    auth: Arc<dyn EntryAuth>,
    /// Ring records not believed so far (SWIM broadcasts and ring syncs).
    refusals: SharedRefusals,
    /// The refusal counts last logged.
    refusals_logged: RingRefusals,
    config: MembershipConfig,
    identity: PeerId,
    swim: Swim,
    swim_effects: AccumulatingRuntime<PeerId>,
    ring: SharedRing,
    /// The ring state as last persisted and placed.
    ring_seen: RingState,
    placement: Option<Ring>,
    rng: Xoshiro256PlusPlus,
    /// Whether a node known as a member has sent us its full ring state since we started (it
    /// may have started leaving since).
    synced: bool,
    /// Whether SWIM has at least one active member (foca's `Active` / `Idle`).
    swim_connected: bool,
    leave: Option<Leave>,
    /// Operator removals this node started, by subject; `None` once confirmed.
    removals: BTreeMap<NodeId, Option<Confirmations>>,
    /// Members SWIM holds as suspect: their incarnation then, and when we first saw it.
    suspects: BTreeMap<PeerId, (Incarnation, Duration)>,
    /// When the seeds were last re-announced to while connected.
    reannounced: Duration,
    /// The placement once pending leaves complete (members only).
    future: Option<Ring>,
    /// Bumped when the owners of the current or future placement change.
    placement_version: u64,
    /// Bumped when anything the data path's topology shows changes (placement, liveness,
    /// addresses).
    topology_version: u64,
    /// Whether the data path reports this node's partitions handed to their future owners
    /// (a leave waits for it before `left`).
    handoff_done: bool,
    /// The ring owners (sorted) for which the data path pulled every partition this node will
    /// own; a joining node becomes a member only when it equals the current owners.
    data_ready_for: Option<Vec<NodeId>>,
    /// The newest generation SWIM reported for each peer (bounded by
    /// [`GENERATIONS_KNOWN_MAX`]), to notice restarts.
    generations: BTreeMap<NodeId, u64>,
}

/// Peers whose generation [`Membership`] remembers to notice their restarts: far more than a
/// ring holds; beyond it a new peer's restarts are not reported (their connections still end
/// by QUIC's stateless reset or idle timeout).
const GENERATIONS_KNOWN_MAX: usize = 4096;

impl Membership {
    /// The membership state of node `id` at `info`, its generation, randomness from `seed`,
    /// the ring state it persisted before (empty on first start), and whether it persisted a
    /// completed leave.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        id: NodeId,
        info: NodeInfo,
        generation: u64,
        config: MembershipConfig,
        seed: u64,
        persisted: RingState,
        leave_complete: bool,
        auth: Arc<dyn EntryAuth>,
    ) -> Result<Membership, MembershipError> {
        let mut ring = persisted;
        if ring.get(id).is_some_and(|e| e.status == RingStatus::Left) && leave_complete {
            return Err(MembershipError::AlreadyLeft(id));
        }
        // This node signs its own entry: anew when its addresses changed (or what it persisted
        // carries no valid signature of its own), with the next version.
        let signed = ring.record(id).map(|r| r.signed.clone());
        let own = match signed {
            Some(s) if s.entry.info == info && s.verify(id, auth.as_ref()) => None,
            Some(s) => Some(RingEntry {
                status: s.entry.status,
                info_version: next_version(s.entry.info_version)
                    .ok_or(MembershipError::VersionExhausted(id))?,
                info,
            }),
            None => Some(RingEntry {
                status: RingStatus::Joining,
                info_version: 1,
                info,
            }),
        };
        if let Some(own) = own {
            let record = crate::membership::RingRecord {
                signed: SignedEntry::sign(id, own, auth.as_ref()),
                removal: None,
            };
            ring.merge_record(id, &record);
        }
        let identity = PeerId {
            node: id,
            addr: info.quic_addr,
            generation,
        };
        let own_status = ring.get(id).map(|e| e.status);
        let shared = SharedRing::new(std::sync::Mutex::new(ring));
        let refusals = SharedRefusals::default();
        let mut seeds = Xoshiro256PlusPlus::seed_from_u64(seed);
        let swim_rng = Xoshiro256PlusPlus::from_rng(&mut seeds);
        let swim = Foca::with_custom_broadcast(
            identity,
            config.foca_config(),
            swim_rng,
            SwimCodec,
            RingBroadcastHandler::new(shared.clone(), auth.clone(), refusals.clone()),
        );
        // A node that crashed or restarted mid-leave resumes where its disk says it was.
        let leave = match own_status {
            Some(s @ (RingStatus::Leaving | RingStatus::Left)) => Some(s),
            _ => None,
        }
        .map(|phase| Leave {
            phase,
            confirmations: Confirmations::default(),
            done: false,
            cancellable: false,
        });
        let mut m = Membership {
            id,
            info,
            auth,
            refusals,
            refusals_logged: RingRefusals::default(),
            config,
            identity,
            swim,
            swim_effects: AccumulatingRuntime::new(),
            ring: shared,
            ring_seen: RingState::new(),
            placement: None,
            rng: seeds,
            synced: false,
            swim_connected: false,
            leave,
            removals: BTreeMap::new(),
            suspects: BTreeMap::new(),
            reannounced: Duration::ZERO,
            generations: BTreeMap::new(),
            future: None,
            placement_version: 0,
            topology_version: 0,
            handoff_done: false,
            data_ready_for: None,
        };
        m.place()?;
        Ok(m)
    }

    /// Starts the protocols: announces this node, contacts the seeds, arms the timers.
    pub(crate) fn start(&mut self, now: Duration, out: &mut Outbox) {
        let own = self.own_entry().status;
        if self.config.seeds.is_empty() || own != RingStatus::Joining {
            // Founding a cluster, or already past joining: nobody to catch up from first.
            self.synced = true;
            self.replace_future();
        }
        self.reannounced = now;
        out.set_timer(
            now,
            self.config.ring_sync_interval,
            MembershipTimer::RingSync,
        );
        out.set_timer(
            now,
            self.config.announce_interval,
            MembershipTimer::Announce,
        );
        if self.out_of_swim() {
            // Resuming the last phase of a leave: only tell the others.
            info!(node = %self.id, "resuming an unfinished leave");
            self.refresh_ring(out);
            self.push_changes(now, out);
            return;
        }
        self.broadcast_own_entry();
        self.announce_to_seeds();
        self.maybe_become_member();
        if let Some(l) = self.leave.as_mut() {
            info!(node = %self.id, "resuming an unfinished leave");
            l.confirmations.since = now;
            l.confirmations.reported = now;
        }
        self.after_input(now, out);
        if self.leave.is_some() {
            self.advance_leave(now, out);
            self.push_changes(now, out);
        }
    }

    /// Whether this node has left SWIM for good (the last phase of its leave).
    fn out_of_swim(&self) -> bool {
        self.leave
            .as_ref()
            .is_some_and(|l| l.phase == RingStatus::Left)
    }

    /// A SWIM packet arrived. Malformed packets are logged and dropped.
    pub(crate) fn handle_gossip(&mut self, bytes: &[u8], now: Duration, out: &mut Outbox) {
        if self.out_of_swim() {
            // Out of SWIM for good: answering probes (or letting foca rejoin when the others
            // declare it down) would bring it back as alive.
            return;
        }
        if let Err(e) = self.swim.handle_data(bytes, &mut self.swim_effects) {
            match e {
                foca::Error::DataFromOurselves => debug!("ignored own SWIM packet"),
                e => warn!(error = %e, len = bytes.len(), "rejected SWIM packet"),
            }
        }
        self.after_input(now, out);
    }

    /// A membership message from node `from` arrived.
    pub(crate) fn handle_message(
        &mut self,
        from: NodeId,
        message: MembershipMessage,
        now: Duration,
        out: &mut Outbox,
    ) {
        match message {
            MembershipMessage::RingSync { state, reply } => {
                self.on_ring_sync(from, state, reply, now, out)
            }
        }
        self.after_input(now, out);
    }

    /// A membership timer fired.
    pub(crate) fn handle_timer(&mut self, timer: MembershipTimer, now: Duration, out: &mut Outbox) {
        match timer {
            MembershipTimer::Swim(_) if self.out_of_swim() => {}
            MembershipTimer::Swim(t) => {
                if let Err(e) = self.swim.handle_timer(t, &mut self.swim_effects) {
                    debug!(error = %e, "SWIM timer");
                }
            }
            MembershipTimer::RingSync => {
                if !self.out_of_swim() {
                    self.expire_stale_suspects(now);
                    self.ring_sync_with_random_member(out);
                }
                self.push_changes(now, out);
                out.set_timer(
                    now,
                    self.config.ring_sync_interval,
                    MembershipTimer::RingSync,
                );
            }
            MembershipTimer::Announce => {
                if !self.out_of_swim() {
                    let alone = !self.swim_connected || self.swim.num_members() == 0;
                    if alone {
                        self.announce_to_seeds();
                        self.announce_to_ring_members();
                        self.reannounced = now;
                    } else if now >= self.reannounced + self.config.reannounce_interval {
                        self.reannounce_to_strangers();
                        self.reannounced = now;
                    }
                }
                out.set_timer(
                    now,
                    self.config.announce_interval,
                    MembershipTimer::Announce,
                );
            }
        }
        self.after_input(now, out);
    }

    /// Starts leaving the cluster for good (see the module documentation). Calling it again
    /// changes nothing.
    pub(crate) fn leave(&mut self, now: Duration, out: &mut Outbox) {
        if self.leave.is_some() {
            return;
        }
        let cancellable = self.own_entry().status == RingStatus::Member;
        self.sign_own_status(RingStatus::Leaving);
        // The data path must hand this node's partitions over under the new placement first.
        self.handoff_done = false;
        self.leave = Some(Leave {
            phase: RingStatus::Leaving,
            confirmations: Confirmations {
                since: now,
                reported: now,
                ..Confirmations::default()
            },
            done: false,
            cancellable,
        });
        info!(node = %self.id, "leaving the cluster");
        self.broadcast_own_entry();
        // Persist `leaving` before anyone hears of it.
        self.refresh_ring(out);
        self.advance_leave(now, out);
        self.push_changes(now, out);
        self.after_input(now, out);
    }

    /// Cancels this node's leave while it is still handing its partitions over (its ring
    /// entry says `leaving`): it signs `member` again with the next version, which supersedes
    /// `leaving` everywhere, keeps its partitions (it still held all of them: a leaving node
    /// owns and stores its partitions until it is gone), and the placement goes back to it.
    /// Once `left` is recorded the leave cannot be cancelled: the others may already have
    /// taken the partitions over.
    pub(crate) fn cancel_leave(
        &mut self,
        now: Duration,
        out: &mut Outbox,
    ) -> Result<(), CancelLeaveError> {
        let removed = self
            .lock_ring()
            .record(self.id)
            .is_some_and(|r| r.removal.is_some());
        if removed {
            return Err(CancelLeaveError::Completed);
        }
        match self.leave.as_ref() {
            None => return Err(CancelLeaveError::NotLeaving),
            Some(l) if l.phase != RingStatus::Leaving || l.done => {
                return Err(CancelLeaveError::Completed)
            }
            Some(l) if !l.cancellable => return Err(CancelLeaveError::NotCancellable),
            Some(_) => {}
        }
        if self.own_entry().status != RingStatus::Leaving {
            return Err(CancelLeaveError::Completed);
        }
        if !self.sign_own_entry(RingStatus::Member) {
            return Err(CancelLeaveError::VersionExhausted);
        }
        self.leave = None;
        info!(node = %self.id, "leave cancelled: this node stays a member");
        self.broadcast_own_entry();
        // Persist `member` (the placement goes back to this node) before anyone hears of it.
        self.refresh_ring(out);
        self.push_changes(now, out);
        self.after_input(now, out);
        Ok(())
    }

    /// Records that the dead node `node` is removed from the ring for good (an operator's
    /// decision, carried by the operator's `signature` of it: its partitions move to the
    /// others) and pushes the change until a majority of the members confirm it. Unless
    /// `force`, a node SWIM does not report down is refused.
    pub(crate) fn remove(
        &mut self,
        node: NodeId,
        signature: Vec<u8>,
        force: bool,
        now: Duration,
        out: &mut Outbox,
    ) -> Result<(), RemoveError> {
        if node == self.id {
            return Err(RemoveError::Itself(node));
        }
        let removal = Removal::new(self.id, signature);
        if !removal.verify(node, self.auth.as_ref()) {
            return Err(RemoveError::NotSigned(node));
        }
        if self.leave.is_some() {
            return Err(RemoveError::Leaving);
        }
        let Some(mut record) = self.lock_ring().record(node).cloned() else {
            return Err(RemoveError::Unknown(node));
        };
        if self.removals.contains_key(&node) {
            return Ok(());
        }
        let gone = record.removal.is_some() || record.signed.entry.status == RingStatus::Left;
        if !force && !gone {
            let (liveness, _) = self.liveness_of(node);
            if liveness != Liveness::Down {
                return Err(RemoveError::NotDown { node, liveness });
            }
        }
        if record.removal.is_none() {
            record.removal = Some(removal);
            self.lock_ring().merge_record(node, &record);
        }
        warn!(node = %self.id, removed = %node, "removing a node from the ring by operator request");
        if let Err(e) = self
            .swim
            .add_broadcast(&RingBroadcast { node, record }.encode())
        {
            warn!(error = %e, "ring broadcast");
        }
        self.removals.insert(
            node,
            Some(Confirmations {
                since: now,
                reported: now,
                ..Confirmations::default()
            }),
        );
        self.refresh_ring(out);
        self.check_removals(now);
        self.push_changes(now, out);
        self.after_input(now, out);
        Ok(())
    }

    /// Changes whenever the data path's view of the cluster (placement, liveness, addresses)
    /// may have changed.
    pub(crate) fn topology_version(&self) -> u64 {
        self.topology_version
    }

    /// The data path's view of the cluster, with `n` replicas per key.
    pub(crate) fn topology(&self, n: usize) -> Topology {
        let ring = self.lock_ring().clone();
        let addrs = ring.iter().map(|(id, e)| (id, e.info.quic_addr)).collect();
        let alive = self
            .swim
            .iter_membership_state()
            .filter(|m| m.state() != State::Down)
            .map(|m| m.id().node)
            .collect();
        let joining = self.own_entry().status == RingStatus::Joining;
        let settled = ring
            .iter()
            .all(|(_, e)| matches!(e.status, RingStatus::Member | RingStatus::Left));
        // Where this node will own partitions once it is a member.
        let with_me = if joining && self.synced {
            let members = ring
                .owners()
                .chain(std::iter::once(self.id))
                .map(Member::new);
            Ring::new(members, self.config.ring).ok()
        } else {
            None
        };
        Topology {
            me: self.id,
            n,
            partitions: self.config.ring.partitions(),
            joining,
            with_me,
            ring: self.placement.clone(),
            future: self.future.clone(),
            alive,
            addrs,
            placement_version: self.placement_version,
            leaving: self.own_entry().status >= RingStatus::Leaving,
            member: self.own_entry().status == RingStatus::Member,
            // The router fills these in from the sync sub-machine.
            complete: false,
            held: Default::default(),
            catching_up: 0,
            left: self.own_entry().status == RingStatus::Left,
            settled,
            // The router fills it in from the ring state.
            peers: Default::default(),
        }
    }

    /// The data path reports that a joining node holds every partition it will own, pulled
    /// from the ring's current `owners` (sorted): it may become a member while they stay the
    /// owners.
    pub(crate) fn set_data_ready(&mut self, owners: Vec<NodeId>, now: Duration, out: &mut Outbox) {
        self.data_ready_for = Some(owners);
        self.maybe_become_member();
        self.after_input(now, out);
    }

    /// The data path reports whether this node's partitions are with their future owners; a
    /// leave in its `leaving` phase waits for it.
    pub(crate) fn set_handoff_done(&mut self, done: bool, now: Duration, out: &mut Outbox) {
        self.handoff_done = done;
        if done && self.leave.is_some() {
            self.advance_leave(now, out);
            self.after_input(now, out);
        }
    }

    /// Whether the removal of `node` started here is confirmed by a majority (`None`: no
    /// removal of it was started here).
    pub(crate) fn removal_confirmed(&self, node: NodeId) -> Option<bool> {
        self.removals.get(&node).map(Option::is_none)
    }

    /// Whether this node has started leaving (or was removed).
    pub(crate) fn is_leaving(&self) -> bool {
        self.leave.is_some()
    }

    /// This node's own ring status.
    pub(crate) fn own_status(&self) -> RingStatus {
        self.own_entry().status
    }

    /// The current ring state.
    pub(crate) fn ring_state(&self) -> RingState {
        self.lock_ring().clone()
    }

    /// The current placement (absent while no node owns partitions).
    pub(crate) fn placement(&self) -> Option<&Ring> {
        self.placement.as_ref()
    }

    /// The newest generation SWIM knows for each node it lists.
    pub(crate) fn swim_generations(&self) -> BTreeMap<NodeId, u64> {
        let mut out = BTreeMap::new();
        for m in self.swim.iter_membership_state() {
            let g = out.entry(m.id().node).or_insert(0);
            *g = (*g).max(m.id().generation);
        }
        out
    }

    /// SWIM's view of `id`: its liveness and newest generation.
    pub(crate) fn liveness_of(&self, id: NodeId) -> (Liveness, u64) {
        if id == self.id {
            let liveness = if self.out_of_swim() {
                Liveness::Down
            } else {
                Liveness::Alive
            };
            return (liveness, self.identity.generation);
        }
        // The newest generation SWIM knows of wins.
        let best = self
            .swim
            .iter_membership_state()
            .filter(|m| m.id().node == id)
            .max_by_key(|m| m.id().generation);
        match best {
            Some(m) => {
                let liveness = match m.state() {
                    State::Alive => Liveness::Alive,
                    State::Suspect => Liveness::Suspect,
                    State::Down => Liveness::Down,
                };
                (liveness, m.id().generation)
            }
            None => (Liveness::Down, 0),
        }
    }

    /// The ring changes this node is waiting to see confirmed.
    pub(crate) fn pending_changes(&self) -> Vec<PendingChange> {
        let mut out = Vec::new();
        if let Some(l) = self.leave.as_ref().filter(|l| !l.done) {
            out.push(self.pending_view(self.id, l.phase, "leave", &l.confirmations));
        }
        for (&node, c) in &self.removals {
            if let Some(c) = c {
                out.push(self.pending_view(node, RingStatus::Left, "remove", c));
            }
        }
        out
    }

    fn pending_view(
        &self,
        subject: NodeId,
        status: RingStatus,
        kind: &str,
        c: &Confirmations,
    ) -> PendingChange {
        let eligible = self.confirmers(subject);
        PendingChange {
            node: subject.to_string(),
            status,
            kind: kind.to_owned(),
            confirmed: eligible.intersection(&c.confirmed).count(),
            needed: majority(eligible.len()),
            caught_up: self.synced,
            waiting_for: eligible
                .difference(&c.confirmed)
                .map(NodeId::to_string)
                .collect(),
        }
    }

    fn on_ring_sync(
        &mut self,
        from: NodeId,
        state: RingState,
        reply: SyncReply,
        now: Duration,
        out: &mut Outbox,
    ) {
        let knew_all = state.covers(&self.lock_ring());
        // A member's view counts for catching up only if it was a member before this message:
        // a stranger's own entry (all this message can teach us of a non-owner) is no view of
        // the ring. It still counts if the member started leaving in the meantime (it still
        // owns its partitions): a joiner that first heard of the last member just before it
        // started leaving would otherwise wait for good, holding every partition handed to it.
        // A node never seen as a member does not count even if it is leaving now: a joiner
        // asked to leave goes straight to `leaving` without ever having caught up itself.
        let from_member = self.lock_ring().get(from).map(|e| e.status) == Some(RingStatus::Member);
        let report = self
            .lock_ring()
            .merge_verified(from, &state, self.auth.as_ref());
        self.note_refusals(from, report);
        // Persist before answering: an answer confirms what we now know.
        self.refresh_ring(out);
        let still_owner = self
            .lock_ring()
            .get(from)
            .is_some_and(|e| e.status.owns_partitions());
        if from_member && still_owner {
            // Caught up with a member's view of the ring: a joining node may become a member
            // (once it pulled its partitions, which the data path plans from the topology).
            if !self.synced {
                self.synced = true;
                self.topology_version += 1;
                self.replace_future();
            }
        }
        let answer = match reply {
            SyncReply::Never => false,
            SyncReply::IfNewer => !knew_all,
            SyncReply::Always => true,
        };
        if answer {
            let addr = self.lock_ring().get(from).map(|e| e.info.quic_addr);
            if let Some(addr) = addr {
                let mine = self.lock_ring().clone();
                out.send(
                    Some(from),
                    addr,
                    MembershipMessage::RingSync {
                        state: mine,
                        reply: SyncReply::Never,
                    },
                );
            }
        }
        self.note_confirmations(from, &state, now, out);
        self.announce_if_strange(from);
        self.maybe_become_member();
    }

    /// Counts and logs (rate-limited: at the 1st, 2nd, 4th, ... refusal) ring records this node
    /// did not believe.
    fn note_refusals(&mut self, from: NodeId, report: MergeReport) {
        if report.refused == 0 && report.ignored == 0 {
            return;
        }
        let total = {
            let mut r = self.refusals.lock().unwrap_or_else(|p| p.into_inner());
            r.refused += report.refused;
            r.ignored += report.ignored;
            *r
        };
        self.log_refusals(Some(from), total);
    }

    fn log_refusals(&mut self, from: Option<NodeId>, total: RingRefusals) {
        let crossed =
            |before: u64, now: u64| now > before && (before + 1..=now).any(|n| n.is_power_of_two());
        if crossed(self.refusals_logged.refused, total.refused) {
            warn!(
                from = ?from,
                refused = total.refused,
                "refused ring entries not signed by their node (or removals not signed by a member); log lines are rate-limited, `refused` counts them all"
            );
        }
        if crossed(self.refusals_logged.ignored, total.ignored) {
            // Joining nodes send what they know of others too: routine, so not a warning.
            debug!(
                from = ?from,
                ignored = total.ignored,
                "ignored ring state about others from a node that is not a ring member (it may only speak for itself)"
            );
        }
        self.refusals_logged = total;
    }

    /// Ring records not believed so far.
    pub(crate) fn refusals(&self) -> RingRefusals {
        *self.refusals.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Nodes whose confirmation counts for a change of `subject`, other than the subject and
    /// this node: the ring's members (status `member`).
    ///
    /// For an operator's removal of another node, when there are no such members, the other
    /// nodes that own partitions (leaving) count instead, and when there are none of those
    /// either, the joining ones: a removal is confirmed only once another node holds it, so it
    /// outlives a crash of the node that took it; only a node alone in the ring confirms one by
    /// itself (`chorus-sim run --seed 449`: a removal taken while every other member was
    /// leaving counted as confirmed by nobody, was lost with the node that took it, and the
    /// leaves waited for good to hand partitions to the dead node). A dead node among those
    /// is removed the same way, which takes it out of this set.
    ///
    /// This node's own leave counts members only: with none left, it hands its partitions to
    /// the joiners (see `future_owners`) without waiting for the other leaving nodes, one of
    /// which may be dead and cannot be removed by a node that is leaving itself.
    fn confirmers(&self, subject: NodeId) -> BTreeSet<NodeId> {
        let ring = self.lock_ring();
        let tiers: &[fn(RingStatus) -> bool] = if subject == self.id {
            &[|s| s == RingStatus::Member]
        } else {
            &[
                |s| s == RingStatus::Member,
                RingStatus::owns_partitions,
                |s| s != RingStatus::Left,
            ]
        };
        for counts in tiers {
            let nodes: BTreeSet<NodeId> = ring
                .iter()
                .filter(|&(n, e)| n != self.id && n != subject && counts(e.status))
                .map(|(n, _)| n)
                .collect();
            if !nodes.is_empty() {
                return nodes;
            }
        }
        BTreeSet::new()
    }

    /// Whether a majority of the members confirmed a change. A node that has not caught up
    /// with a member's ring state yet cannot know who the members are (a node asked to leave
    /// while still joining may know nobody), so it waits until it has.
    fn confirmed_enough(&self, subject: NodeId, c: &Confirmations) -> bool {
        if !self.synced {
            return false;
        }
        let eligible = self.confirmers(subject);
        eligible.intersection(&c.confirmed).count() >= majority(eligible.len())
    }

    fn note_confirmations(
        &mut self,
        from: NodeId,
        state: &RingState,
        now: Duration,
        out: &mut Outbox,
    ) {
        let status_there = |n: NodeId| state.get(n).map(|e| e.status);
        if let Some(l) = self.leave.as_mut() {
            if status_there(self.id) >= Some(l.phase) {
                l.confirmations.confirmed.insert(from);
            }
        }
        for (&node, c) in self.removals.iter_mut() {
            if let Some(c) = c {
                if status_there(node) == Some(RingStatus::Left) {
                    c.confirmed.insert(from);
                }
            }
        }
        self.advance_leave(now, out);
        self.check_removals(now);
    }

    /// Moves this node's leave forward as far as its confirmations allow.
    fn advance_leave(&mut self, now: Duration, out: &mut Outbox) {
        loop {
            let Some(l) = self.leave.as_ref() else { return };
            if l.done {
                return;
            }
            // Another node may have recorded us further along (an operator removed us).
            let own = self.own_entry().status;
            if own > l.phase {
                self.enter_left_phase(now, out);
                continue;
            }
            if !self.confirmed_enough(self.id, &l.confirmations) {
                return;
            }
            match l.phase {
                RingStatus::Leaving if !self.handoff_done => return,
                RingStatus::Leaving => {
                    // Every partition is with its future owners: nothing is lost by going.
                    self.sign_own_status(RingStatus::Left);
                    self.enter_left_phase(now, out);
                }
                // Writes that reached this node late must be with their owners before it goes.
                _ if !self.handoff_done => return,
                _ => {
                    let Some(l) = self.leave.as_mut() else { return };
                    l.done = true;
                    info!(
                        node = %self.id,
                        confirmed = l.confirmations.confirmed.len(),
                        "left the cluster"
                    );
                    out.push(Output::Left);
                    return;
                }
            }
        }
    }

    /// Records `left` (persisted before anyone hears of it), leaves SWIM, and starts gathering
    /// confirmations of `left`.
    fn enter_left_phase(&mut self, now: Duration, out: &mut Outbox) {
        let Some(l) = self.leave.as_mut() else { return };
        l.phase = RingStatus::Left;
        l.confirmations = Confirmations {
            since: now,
            reported: now,
            ..Confirmations::default()
        };
        self.refresh_ring(out);
        if let Err(e) = self.swim.leave_cluster(&mut self.swim_effects) {
            warn!(error = %e, "SWIM leave");
        }
        self.push_changes(now, out);
    }

    fn check_removals(&mut self, now: Duration) {
        let subjects: Vec<NodeId> = self
            .removals
            .iter()
            .filter_map(|(&n, c)| c.as_ref().map(|_| n))
            .collect();
        for node in subjects {
            let done = self.removals[&node]
                .as_ref()
                .is_some_and(|c| self.confirmed_enough(node, c));
            if done {
                let since = self.removals[&node].as_ref().map_or(now, |c| c.since);
                info!(
                    removed = %node,
                    after_ms = now.saturating_sub(since).as_millis() as u64,
                    "removal confirmed by a majority of the members"
                );
                self.removals.insert(node, None);
            }
        }
    }

    /// Pushes every pending ring change to every other node that has not left (those that
    /// already confirmed answer with their newer ring state too, which is how a node out of
    /// SWIM learns of members that joined and of removals that change who must confirm), and
    /// to the seeds until this node has caught up with a member. Reports changes that have
    /// waited long.
    fn push_changes(&mut self, now: Duration, out: &mut Outbox) {
        let pending = self.pending_changes();
        if pending.is_empty() {
            return;
        }
        let to_seeds = !self.synced || pending.iter().any(|p| p.confirmed == 0);
        let ring = self.lock_ring().clone();
        let mut targets: BTreeMap<SocketAddr, Option<NodeId>> = BTreeMap::new();
        for (n, e) in ring.iter() {
            if n != self.id && e.status != RingStatus::Left {
                targets.insert(e.info.quic_addr, Some(n));
            }
        }
        if to_seeds {
            for &s in &self.config.seeds {
                if s != self.info.quic_addr {
                    targets.entry(s).or_insert(None);
                }
            }
        }
        for (addr, to) in targets {
            out.send(
                to,
                addr,
                MembershipMessage::RingSync {
                    state: ring.clone(),
                    reply: SyncReply::Always,
                },
            );
        }
        self.report_pending(now, &pending);
    }

    fn report_pending(&mut self, now: Duration, pending: &[PendingChange]) {
        let due = |c: &mut Confirmations| {
            let due = now >= c.reported + PENDING_REPORT_EVERY;
            if due {
                c.reported = now;
            }
            due.then_some(now.saturating_sub(c.since))
        };
        let mut due_for: BTreeMap<String, Duration> = BTreeMap::new();
        if let Some(l) = self.leave.as_mut().filter(|l| !l.done) {
            if let Some(waited) = due(&mut l.confirmations) {
                due_for.insert(self.id.to_string(), waited);
            }
        }
        for (node, c) in self.removals.iter_mut() {
            if let Some(waited) = c.as_mut().and_then(due) {
                due_for.insert(node.to_string(), waited);
            }
        }
        for p in pending {
            if let Some(waited) = due_for.get(&p.node) {
                warn!(
                    kind = %p.kind,
                    node = %p.node,
                    status = p.status.as_str(),
                    confirmed = p.confirmed,
                    needed = p.needed,
                    waiting_for = ?p.waiting_for,
                    waited_s = waited.as_secs(),
                    "ring change still waiting for confirmations from a majority of the members"
                );
            }
        }
    }

    /// Works around SWIM timers lost when foca renews its identity or goes idle: a member that
    /// stays suspect at one incarnation well past the suspicion timeout is declared down.
    fn expire_stale_suspects(&mut self, now: Duration) {
        let limit = self.config.suspect_to_down_after + self.config.probe_period * 3;
        let current: BTreeMap<PeerId, Incarnation> = self
            .swim
            .iter_membership_state()
            .filter(|m| m.state() == State::Suspect)
            .map(|m| (*m.id(), m.incarnation()))
            .collect();
        self.suspects
            .retain(|p, (inc, _)| current.get(p) == Some(&*inc));
        let mut expired = Vec::new();
        for (p, inc) in current {
            let (_, since) = *self.suspects.entry(p).or_insert((inc, now));
            if now.saturating_sub(since) > limit {
                expired.push(foca::Member::new(p, inc, State::Down));
            }
        }
        if !expired.is_empty() {
            warn!(
                members = expired.len(),
                "declaring members down after a lost suspicion timer"
            );
            if let Err(e) = self
                .swim
                .apply_many(expired.into_iter(), true, &mut self.swim_effects)
            {
                warn!(error = %e, "SWIM apply");
            }
            self.topology_version += 1;
        }
    }

    /// Other nodes whose ring status is not `left`, with their addresses.
    fn other_nodes_not_left(&self) -> Vec<(NodeId, NodeInfo)> {
        self.lock_ring()
            .iter()
            .filter(|&(n, e)| n != self.id && e.status != RingStatus::Left)
            .map(|(n, e)| (n, e.info))
            .collect()
    }

    /// A ring node that talks to us but is not among SWIM's active members: one of the two
    /// SWIM views is stale (it may hold us down, or we it). Announcing to it makes SWIM sort
    /// it out: a node held down is told so and rejoins with a new identity.
    fn announce_if_strange(&mut self, from: NodeId) {
        if self.leave.is_some() || from == self.id {
            return;
        }
        let Some(entry) = self.lock_ring().get(from).copied() else {
            return;
        };
        let addr = entry.info.quic_addr;
        let known = self.swim.iter_members().any(|m| m.id().addr == addr);
        if entry.status != RingStatus::Left && !known {
            self.announce(addr);
        }
    }

    /// The periodic full-state exchange: with a random member SWIM holds alive, and also with
    /// a random ring node SWIM does not (down, or out of SWIM because it is leaving). The second
    /// exchange is how a leaving node, whose known peers may all be gone, learns about nodes that
    /// joined after it left SWIM, so its leave reaches them.
    fn ring_sync_with_random_member(&mut self, out: &mut Outbox) {
        let reachable: Vec<(NodeId, SocketAddr)> = self
            .swim
            .iter_members()
            .map(|m| (m.id().node, m.id().addr))
            .collect();
        let active: BTreeSet<SocketAddr> = reachable.iter().map(|&(_, a)| a).collect();
        let ring = self.lock_ring().clone();
        let unreachable: Vec<(NodeId, SocketAddr)> = ring
            .iter()
            .filter(|&(n, e)| {
                n != self.id && e.status != RingStatus::Left && !active.contains(&e.info.quic_addr)
            })
            .map(|(n, e)| (n, e.info.quic_addr))
            .collect();
        for pool in [reachable, unreachable] {
            if pool.is_empty() {
                continue;
            }
            let pick = rand::RngExt::random_range(&mut self.rng, 0..pool.len());
            let (to, addr) = pool[pick];
            out.send(
                Some(to),
                addr,
                MembershipMessage::RingSync {
                    state: ring.clone(),
                    reply: SyncReply::IfNewer,
                },
            );
        }
    }

    fn announce(&mut self, addr: SocketAddr) {
        if let Err(e) = self
            .swim
            .announce(PeerId::seed(addr), &mut self.swim_effects)
        {
            debug!(%addr, error = %e, "announce");
        }
    }

    /// Announces to every other node of the ring that has not left: how a node that SWIM
    /// disconnected (after a partition, or a renewed identity) finds its way back even when
    /// its seeds are gone.
    fn announce_to_ring_members(&mut self) {
        for (_, info) in self.other_nodes_not_left() {
            self.announce(info.quic_addr);
        }
    }

    fn announce_to_seeds(&mut self) {
        for seed in self.config.seeds.clone() {
            if seed != self.info.quic_addr {
                self.announce(seed);
            }
        }
    }

    /// Announces to the seeds and ring nodes SWIM does not list as active, a few at a time:
    /// two groups that formed apart (their seeds were unreachable at the start) find each other
    /// once the network lets them, even though neither is alone.
    fn reannounce_to_strangers(&mut self) {
        let active: BTreeSet<SocketAddr> = self.swim.iter_members().map(|m| m.id().addr).collect();
        let mut strangers: Vec<SocketAddr> = self
            .config
            .seeds
            .iter()
            .copied()
            .chain(
                self.other_nodes_not_left()
                    .into_iter()
                    .map(|(_, i)| i.quic_addr),
            )
            .filter(|a| *a != self.info.quic_addr && !active.contains(a))
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        while strangers.len() > REANNOUNCE_TARGETS_MAX {
            let drop = rand::RngExt::random_range(&mut self.rng, 0..strangers.len());
            strangers.swap_remove(drop);
        }
        for addr in strangers {
            self.announce(addr);
        }
    }

    fn maybe_become_member(&mut self) {
        let own = self.own_entry();
        let (owners, other_member) = {
            let ring = self.lock_ring();
            let owners: Vec<NodeId> = ring.owners().collect();
            let other_member = ring
                .iter()
                .any(|(n, e)| n != self.id && e.status == RingStatus::Member);
            (owners, other_member)
        };
        // Caught up with a member once is not enough: that member may have left or been
        // removed since, and so may every other. With owners that are all leaving and no member
        // left, the joiners do not promote themselves; the leaving owners hand their partitions
        // to them (see `future_owners`) and go, and once no owner remains the joiners carry the
        // ring on.
        if own.status == RingStatus::Joining
            && self.synced
            && (other_member || owners.is_empty())
            && self.leave.is_none()
            && self.data_ready_for.as_ref() == Some(&owners)
            && self.sign_own_status(RingStatus::Member)
        {
            info!(node = %self.id, "joined the ring as a member");
            self.broadcast_own_entry();
        }
    }

    fn own_entry(&self) -> RingEntry {
        // The node's own entry is inserted in `new` and entries are never removed.
        *self
            .lock_ring()
            .get(self.id)
            .expect("own ring entry present")
    }

    /// Signs and records a new entry of this node with `status` (or its current status, if
    /// that is further along) and the next version; returns whether it could (versions are
    /// bounded by [`VERSION_MAX`]; reaching it takes a node changing status or address every
    /// second for over a century).
    fn sign_own_status(&mut self, status: RingStatus) -> bool {
        let current = self.own_entry().status;
        self.sign_own_entry(current.max(status))
    }

    /// Signs and records a new entry of this node with exactly `status` and the next version
    /// (a cancelled leave goes back from `leaving` to `member`: the newer version wins).
    fn sign_own_entry(&mut self, status: RingStatus) -> bool {
        let Some(current) = self.lock_ring().record(self.id).map(|r| r.signed.entry) else {
            return false;
        };
        let Some(version) = next_version(current.info_version) else {
            error!(node = %self.id, "this node's ring entry version is exhausted; cannot change its status");
            return false;
        };
        let entry = RingEntry {
            status,
            info_version: version,
            info: self.info,
        };
        let record = crate::membership::RingRecord {
            signed: SignedEntry::sign(self.id, entry, self.auth.as_ref()),
            removal: None,
        };
        self.lock_ring().merge_record(self.id, &record);
        true
    }

    fn broadcast_own_entry(&mut self) {
        let Some(record) = self.lock_ring().record(self.id).cloned() else {
            return;
        };
        let item = RingBroadcast {
            node: self.id,
            record,
        };
        // The handler merges the item into the ring (already there) and keys it for spreading;
        // the key is new whenever the entry changed, so foca re-spreads it.
        if let Err(e) = self.swim.add_broadcast(&item.encode()) {
            warn!(error = %e, "ring broadcast");
        }
    }

    fn lock_ring(&self) -> std::sync::MutexGuard<'_, RingState> {
        self.ring.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Persists ring changes first (before anything that could reveal them goes out), then
    /// turns SWIM's effects into outputs.
    fn after_input(&mut self, now: Duration, out: &mut Outbox) {
        let total = self.refusals();
        if total != self.refusals_logged {
            self.log_refusals(None, total);
        }
        self.refresh_ring(out);
        self.handle_notifications(out);
        // Notifications may have changed the ring (a catch-up sync is only a send, but be
        // strict about the order anyway).
        self.refresh_ring(out);
        while let Some((to, data)) = self.swim_effects.to_send() {
            out.push(Output::Gossip {
                to: to.addr,
                bytes: data.to_vec(),
            });
        }
        while let Some((after, timer)) = self.swim_effects.to_schedule() {
            out.set_timer(now, after, MembershipTimer::Swim(timer));
        }
    }

    fn handle_notifications(&mut self, out: &mut Outbox) {
        while let Some(n) = self.swim_effects.to_notify() {
            // Liveness may have changed: the data path routes around down nodes.
            self.topology_version += 1;
            match n {
                OwnedNotification::MemberUp(p) => {
                    info!(member = %p.node, addr = %p.addr, generation = p.generation, "member up");
                    self.note_generation(p, out);
                }
                OwnedNotification::MemberDown(p) => {
                    info!(member = %p.node, addr = %p.addr, "member down")
                }
                OwnedNotification::Rename(a, b) => {
                    info!(member = %b.node, from = a.generation, to = b.generation, "member restarted");
                    self.note_generation(a, out);
                    self.note_generation(b, out);
                }
                OwnedNotification::Defunct => {
                    self.swim_connected = false;
                    warn!("the cluster declared this node down; rejoining");
                }
                OwnedNotification::Rejoin(p) => {
                    self.swim_connected = false;
                    self.identity = p;
                    out.push(Output::PersistGeneration(p.generation));
                    info!(generation = p.generation, "rejoined with a new identity");
                }
                OwnedNotification::Active => {
                    self.swim_connected = true;
                    // Catch up with the ring right away rather than at the next periodic sync:
                    // a joining node becomes a member as soon as it has.
                    self.ring_sync_with_random_member(out);
                }
                OwnedNotification::Idle => self.swim_connected = false,
            }
        }
    }

    /// Records the newest generation SWIM reported for a peer; a newer one than known means the
    /// peer restarted, and the driver is told to drop its connection to the old process.
    fn note_generation(&mut self, p: PeerId, out: &mut Outbox) {
        if p.node == self.id {
            return;
        }
        match self.generations.get(&p.node) {
            Some(&known) if known >= p.generation => {}
            known => {
                if known.is_some() {
                    out.push(Output::PeerRestarted {
                        node: p.node,
                        addr: p.addr,
                    });
                }
                if known.is_some() || self.generations.len() < GENERATIONS_KNOWN_MAX {
                    self.generations.insert(p.node, p.generation);
                }
            }
        }
    }

    /// Persists and re-places the ring when its state changed; notices when an operator
    /// removed this node.
    fn refresh_ring(&mut self, out: &mut Outbox) {
        let current = self.lock_ring().clone();
        if current == self.ring_seen {
            return;
        }
        out.push(Output::PersistRing(current.clone()));
        if let Err(e) = self.place_state(&current) {
            warn!(error = %e, "cannot place the ring");
        }
        self.ring_seen = current;
        self.topology_version += 1;
        let own = self.own_entry().status;
        if own == RingStatus::Left && self.leave.is_none() {
            error!(
                node = %self.id,
                "an operator removed this node from the ring; it stops and cannot rejoin"
            );
            self.leave = Some(Leave {
                phase: RingStatus::Left,
                confirmations: Confirmations::default(),
                done: true,
                cancellable: false,
            });
            if let Err(e) = self.swim.leave_cluster(&mut self.swim_effects) {
                debug!(error = %e, "SWIM leave");
            }
            out.push(Output::Left);
        }
    }

    /// Recomputes the future placement once this node has caught up with a member: which one
    /// it is can depend on that (see [`future_owners`]).
    fn replace_future(&mut self) {
        let current = self.lock_ring().clone();
        if future_owners(&current, true) == future_owners(&current, false) {
            return;
        }
        if let Err(e) = self.place_state(&current) {
            warn!(error = %e, "cannot place the ring");
        }
        self.topology_version += 1;
    }

    fn place(&mut self) -> Result<(), MembershipError> {
        let current = self.lock_ring().clone();
        self.place_state(&current)?;
        self.ring_seen = current;
        Ok(())
    }

    fn place_state(&mut self, current: &RingState) -> Result<(), MembershipError> {
        let owners_changed = current.owners().ne(self.ring_seen.owners());
        if owners_changed || self.placement.is_none() {
            let members: Vec<Member> = current.owners().map(Member::new).collect();
            self.placement = if members.is_empty() {
                None
            } else {
                Some(Ring::new(members, self.config.ring)?)
            };
            self.placement_version += 1;
        }
        let future = future_owners(current, self.synced);
        let mut had: Vec<NodeId> = self
            .future
            .as_ref()
            .map(|r| r.members().iter().map(|m| m.id).collect())
            .unwrap_or_default();
        had.sort_unstable();
        if future != had || self.future.is_none() {
            self.future = if future.is_empty() {
                None
            } else {
                Some(Ring::new(
                    future.into_iter().map(Member::new),
                    self.config.ring,
                )?)
            };
            self.placement_version += 1;
        }
        Ok(())
    }
}

/// The nodes that own partitions once every pending leave completes (sorted): the members.
/// When no member remains but some owners are still leaving (the last members left or were
/// removed while others were leaving), the joining nodes: they cannot become members with no
/// member to catch up from, so the leaving owners hand their partitions to them instead, and
/// they carry the ring on once the leaves complete. Only for a node that has caught up with a
/// member (`synced`): before that, a ring without members may just be one it has not heard of
/// yet (a node asked to leave while still joining may know nobody but other newcomers), and
/// nothing is handed to anyone.
fn future_owners(s: &RingState, synced: bool) -> Vec<NodeId> {
    let with = |status: RingStatus| -> Vec<NodeId> {
        s.iter()
            .filter(|(_, e)| e.status == status)
            .map(|(n, _)| n)
            .collect()
    };
    let members = with(RingStatus::Member);
    if members.is_empty() && synced && s.owners().next().is_some() {
        with(RingStatus::Joining)
    } else {
        members
    }
}

/// The version after `v`, if it stays within [`VERSION_MAX`].
fn next_version(v: u64) -> Option<u64> {
    v.checked_add(1).filter(|&n| n <= VERSION_MAX)
}

/// A majority of `n` (none needed of nobody).
fn majority(n: usize) -> usize {
    if n == 0 {
        0
    } else {
        n / 2 + 1
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;
    use std::time::Duration;

    use std::sync::Arc;

    use super::{majority, Membership, MembershipConfig, MembershipMessage, Outbox, SyncReply};
    use crate::id::NodeId;
    use crate::membership::{
        InsecureTestAuth, NodeInfo, RingEntry, RingRecord, RingState, RingStatus, SignedEntry,
    };

    fn info(i: u16) -> NodeInfo {
        NodeInfo {
            quic_addr: SocketAddr::from(([10, 0, 0, 1], 7000 + i)),
            http_addr: SocketAddr::from(([10, 0, 0, 1], 8000 + i)),
        }
    }

    /// A ring of entries each signed by its node, at version 1 (`member`, `leaving` and
    /// `left` at versions 2, 3 and 4, as their nodes would sign them).
    fn ring(entries: &[(u64, RingStatus)]) -> RingState {
        let mut r = RingState::new();
        for &(n, status) in entries {
            let entry = RingEntry {
                status,
                info_version: 1 + status as u64,
                info: info(n as u16),
            };
            let node = NodeId::new(n);
            let record = RingRecord {
                signed: SignedEntry::sign(node, entry, &InsecureTestAuth::new(node)),
                removal: None,
            };
            r.merge_record(node, &record);
        }
        r
    }

    fn membership(me: u64, seeds: Vec<SocketAddr>) -> Membership {
        let id = NodeId::new(me);
        Membership::new(
            id,
            info(me as u16),
            1,
            MembershipConfig::new(seeds),
            7,
            RingState::new(),
            false,
            Arc::new(InsecureTestAuth::new(id)),
        )
        .unwrap()
    }

    /// A ring sync from node `from` carrying `state`.
    fn sync_from(m: &mut Membership, from: u64, state: RingState, now: Duration) {
        let message = MembershipMessage::RingSync {
            state,
            reply: SyncReply::Never,
        };
        m.handle_message(NodeId::new(from), message, now, &mut Outbox::new());
    }

    /// A member that started leaving still vouches for the ring it knows; a node never seen as
    /// a member does not, even once it is leaving (a joiner asked to leave goes straight to
    /// `leaving` without having caught up itself: found by a hostile review).
    #[test]
    fn a_joiner_catches_up_from_a_member_even_once_it_leaves_but_never_from_a_leaving_newcomer() {
        use RingStatus::*;
        let me = 9;
        let t = Duration::from_secs;
        let mut m = membership(me, vec![info(8).quic_addr]);
        m.start(t(0), &mut Outbox::new());
        sync_from(&mut m, 8, ring(&[(8, Joining), (me, Joining)]), t(1));
        sync_from(&mut m, 8, ring(&[(8, Leaving), (me, Joining)]), t(2));
        sync_from(&mut m, 8, ring(&[(8, Leaving), (me, Joining)]), t(3));
        assert!(!m.synced, "a newcomer that left is no view of the ring");
        sync_from(&mut m, 1, ring(&[(1, Member), (me, Joining)]), t(4));
        assert!(
            !m.synced,
            "a stranger's first message is no view of the ring"
        );
        sync_from(&mut m, 1, ring(&[(1, Leaving), (me, Joining)]), t(5));
        assert!(m.synced, "caught up with n1, a member that started leaving");
    }

    /// Issue 21, item 7 (sim seed 1094): a joiner caught up with a member, then every member
    /// left the `member` status (one leaving, one removed) while it pulled its partitions from
    /// the owners that remained, all leaving. It must not promote itself with no member to catch
    /// up from: the leaving owners hand their partitions to it instead, and once they are gone
    /// it carries the ring on.
    #[test]
    fn a_joiner_does_not_promote_itself_when_every_owner_is_leaving() {
        use RingStatus::*;
        let me = 9;
        let t = Duration::from_secs;
        let mut m = membership(me, vec![info(1).quic_addr]);
        m.start(t(0), &mut Outbox::new());
        let view = ring(&[(1, Member), (2, Member), (me, Joining)]);
        // A stranger's first message teaches only its own entry; the next one, from a member,
        // is a view of the ring.
        sync_from(&mut m, 1, view.clone(), t(1));
        assert!(!m.synced, "a stranger's view is no view of the ring");
        assert!(m.ring_state().get(NodeId::new(2)).is_none());
        sync_from(&mut m, 1, view, t(1));
        assert!(m.synced, "caught up with member n1");
        // n1 starts leaving and an operator removes n2: only leaving owners remain.
        sync_from(&mut m, 1, ring(&[(1, Leaving), (2, Left)]), t(2));
        m.set_data_ready(vec![NodeId::new(1)], t(3), &mut Outbox::new());
        assert_eq!(
            m.own_status(),
            Joining,
            "promoted itself with no member to catch up from"
        );
        // The leaving owner hands its partitions to the joiner.
        let topo = m.topology(3);
        assert!(topo
            .partition_ids()
            .all(|p| topo.future_owners(p) == vec![NodeId::new(me)]));
        // Its leave completes: nobody else owns anything, and the joiner carries the ring on.
        sync_from(&mut m, 1, ring(&[(1, Left)]), t(4));
        assert_eq!(m.own_status(), Joining, "still waits for its intake");
        m.set_data_ready(vec![], t(5), &mut Outbox::new());
        assert_eq!(m.own_status(), Member);
    }

    /// A node asked to leave while still joining, which knows nobody but another newcomer yet,
    /// hands nothing to that newcomer: a ring without members is only the emptied ring to a
    /// node that has caught up with a member.
    #[test]
    fn a_node_that_has_not_caught_up_hands_nothing_to_joiners() {
        use RingStatus::*;
        let me = 9;
        let t = Duration::from_secs;
        let mut m = membership(me, vec![info(8).quic_addr]);
        m.start(t(0), &mut Outbox::new());
        sync_from(&mut m, 8, ring(&[(8, Joining)]), t(1));
        m.leave(t(2), &mut Outbox::new());
        assert_eq!(m.own_status(), Leaving);
        assert!(m.topology(3).future.is_none());
        // It catches up with a member: that is where its partitions go.
        sync_from(&mut m, 1, ring(&[(1, Member), (8, Joining)]), t(3));
        let topo = m.topology(3);
        assert!(topo
            .partition_ids()
            .all(|p| topo.future_owners(p) == vec![NodeId::new(1)]));
    }

    #[test]
    fn majority_of_the_members() {
        assert_eq!(
            (0..6).map(majority).collect::<Vec<_>>(),
            vec![0, 1, 2, 2, 3, 3]
        );
    }
}
