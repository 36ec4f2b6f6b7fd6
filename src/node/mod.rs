//! The sans-IO node: one value per Chorus node that takes inputs and yields effects.
//!
//! Inputs are method calls, each with the current time `now` (a [`Duration`] since an epoch the
//! driver chooses): a SWIM packet ([`Node::handle_gossip`]), a peer message
//! ([`Node::handle_message`]), a timer firing ([`Node::handle_timer`]), an admin request
//! ([`Node::leave`], [`Node::cluster_view`]). Effects are [`Output`] values the driver drains
//! with [`Node::poll_output`]: datagrams and messages to send, timers to set, state to persist.
//!
//! The node owns no socket, clock, thread or ambient randomness: randomness comes from a seed
//! the driver passes in. The tokio runtime and the simulator drive this same type.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::net::SocketAddr;
use std::num::{NonZeroU32, NonZeroUsize};
use std::time::Duration;

use foca::{AccumulatingRuntime, Foca, Incarnation, OwnedNotification, State};
use rand::SeedableRng;
use rand_xoshiro::Xoshiro256PlusPlus;
use serde::{Deserialize, Serialize};
use tracing::{debug, info, warn};

use crate::id::NodeId;
use crate::membership::{
    NodeInfo, PeerId, RingBroadcast, RingBroadcastHandler, RingEntry, RingState, RingStatus,
    SharedRing, SwimCodec,
};
use crate::protocol::{self, PeerEnvelope, PeerMessage};
use crate::ring::{Member, Ring, RingConfig};

/// Largest SWIM packet: fits a QUIC datagram on a fresh loopback connection (1162 bytes measured).
pub const SWIM_PACKET_BYTES_MAX: usize = 1100;

/// Settings of one node.
#[derive(Clone, Debug)]
pub struct NodeConfig {
    /// This node's id (persisted by the driver).
    pub id: NodeId,
    /// How many times this node has started, including this start (persisted by the driver).
    pub generation: u64,
    /// Where peers and clients reach this node.
    pub info: NodeInfo,
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
    /// Period of the full ring-state exchange with a random member.
    pub ring_sync_interval: Duration,
    /// Period of re-announcing to the seeds while this node knows no member.
    pub announce_interval: Duration,
}

impl NodeConfig {
    /// Defaults for a LAN cluster: 1 s probes, 4 s of suspicion, ring sync every 2 s.
    pub fn new(id: NodeId, generation: u64, info: NodeInfo, seeds: Vec<SocketAddr>) -> Self {
        NodeConfig {
            id,
            generation,
            info,
            seeds,
            ring: RingConfig::default(),
            replicas: 3,
            probe_period: Duration::from_secs(1),
            probe_rtt: Duration::from_millis(500),
            suspect_to_down_after: Duration::from_secs(4),
            ring_sync_interval: Duration::from_secs(2),
            announce_interval: Duration::from_secs(1),
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
        c
    }
}

/// A timer the node asks its driver to fire.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Timer {
    /// A SWIM protocol timer.
    Swim(foca::Timer<PeerId>),
    /// Time for a full ring-state exchange.
    RingSync,
    /// Time to re-announce to the seeds if still alone.
    Announce,
}

/// An effect for the driver to perform.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Output {
    /// Send a SWIM packet to a node's QUIC endpoint (as a datagram).
    Gossip {
        /// Destination endpoint.
        to: SocketAddr,
        /// The packet.
        bytes: Vec<u8>,
    },
    /// Send a peer message (an encoded [`PeerEnvelope`]) to a node's QUIC endpoint.
    Message {
        /// Destination endpoint.
        to: SocketAddr,
        /// The encoded envelope.
        bytes: Vec<u8>,
    },
    /// Call [`Node::handle_timer`] with `timer` once the time is `at`.
    SetTimer {
        /// When to fire.
        at: Duration,
        /// What to fire.
        timer: Timer,
    },
    /// Persist the ring state (it changed). Performed before any later output.
    PersistRing(RingState),
    /// Persist this node's generation: SWIM renewed its identity, and the next start must use
    /// a newer generation than this one.
    PersistGeneration(u64),
    /// The node has left the cluster and enough members confirmed it; the driver may shut
    /// down once sends are flushed.
    Left,
}

/// Why a node cannot start.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// The data directory belongs to a node that left the cluster.
    #[error("node {0} has left the cluster and cannot rejoin; start with an empty data directory")]
    AlreadyLeft(NodeId),
    /// The ring configuration cannot place data.
    #[error("invalid ring: {0}")]
    Ring(#[from] crate::ring::RingError),
}

/// Reachability of a member as SWIM sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Liveness {
    /// Answers probes.
    Alive,
    /// Missed probes; may still refute.
    Suspect,
    /// Declared down (or never heard from).
    Down,
}

/// One member as reported by `GET /v1/cluster`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberView {
    /// Node id (16 hex digits).
    pub id: String,
    /// QUIC endpoint.
    pub quic_addr: SocketAddr,
    /// HTTP endpoint.
    pub http_addr: SocketAddr,
    /// SWIM liveness.
    pub liveness: Liveness,
    /// Ring status.
    pub status: RingStatus,
    /// The node's generation (starts so far) as last seen by SWIM.
    pub incarnation: u64,
    /// Partition replicas the member holds in the current placement.
    pub partitions: u64,
}

/// Ring parameters as reported by `GET /v1/cluster`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RingView {
    /// Number of partitions (Q).
    pub partitions: u32,
    /// Replicas per key (N).
    pub n: usize,
    /// Virtual nodes per member.
    pub vnodes: u32,
}

/// The cluster as one node sees it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterView {
    /// The reporting node.
    pub node_id: String,
    /// Every node in the ring state, in id order.
    pub members: Vec<MemberView>,
    /// Ring parameters.
    pub ring: RingView,
}

type Swim = Foca<PeerId, SwimCodec, Xoshiro256PlusPlus, RingBroadcastHandler>;

/// One Chorus node's protocol state.
pub struct Node {
    config: NodeConfig,
    identity: PeerId,
    swim: Swim,
    swim_effects: AccumulatingRuntime<PeerId>,
    ring: SharedRing,
    /// The ring state as last persisted and placed.
    ring_seen: RingState,
    placement: Option<Ring>,
    rng: Xoshiro256PlusPlus,
    outputs: VecDeque<Output>,
    /// Whether a peer has sent us its full ring state since we started.
    synced: bool,
    /// Whether SWIM has at least one active member (foca's `Active` / `Idle`).
    swim_connected: bool,
    /// Present once [`Node::leave`] was called.
    leave: Option<LeaveProgress>,
    /// Members SWIM holds as suspect: their incarnation then, and when we first saw it.
    suspects: BTreeMap<PeerId, (Incarnation, Duration)>,
}

/// A leave in progress: the node keeps telling the others until a majority of them confirm.
#[derive(Debug, Clone)]
struct LeaveProgress {
    /// Confirmations needed: a majority of the other nodes SWIM held alive, at least one.
    needed: usize,
    /// Nodes that confirmed they recorded this node as `left`.
    confirmed: BTreeSet<NodeId>,
    /// Whether [`Output::Left`] was emitted.
    done: bool,
}

impl Node {
    /// A node with `config`, randomness from `seed`, and the ring state it persisted before
    /// (empty on first start). Call [`Node::start`] next.
    pub fn new(config: NodeConfig, seed: u64, persisted: RingState) -> Result<Node, NodeError> {
        let id = config.id;
        let mut ring = persisted;
        let own = match ring.get(id) {
            Some(e) if e.status == RingStatus::Left => return Err(NodeError::AlreadyLeft(id)),
            Some(e) if e.info == config.info => *e,
            Some(e) => RingEntry {
                status: e.status,
                info_version: e.info_version + 1,
                info: config.info,
            },
            None => RingEntry {
                status: RingStatus::Joining,
                info_version: 1,
                info: config.info,
            },
        };
        ring.merge_entry(id, &own);
        let identity = PeerId {
            node: id,
            addr: config.info.quic_addr,
            generation: config.generation,
        };
        let shared = SharedRing::new(std::sync::Mutex::new(ring));
        let mut seeds = Xoshiro256PlusPlus::seed_from_u64(seed);
        let swim_rng = Xoshiro256PlusPlus::from_rng(&mut seeds);
        let swim = Foca::with_custom_broadcast(
            identity,
            config.foca_config(),
            swim_rng,
            SwimCodec,
            RingBroadcastHandler::new(shared.clone()),
        );
        let mut node = Node {
            config,
            identity,
            swim,
            swim_effects: AccumulatingRuntime::new(),
            ring: shared,
            ring_seen: RingState::new(),
            placement: None,
            rng: seeds,
            outputs: VecDeque::new(),
            synced: false,
            swim_connected: false,
            leave: None,
            suspects: BTreeMap::new(),
        };
        node.refresh_ring()?;
        Ok(node)
    }

    /// This node's id.
    pub fn id(&self) -> NodeId {
        self.config.id
    }

    /// Starts the protocols: announces this node, contacts the seeds, arms the timers.
    pub fn start(&mut self, now: Duration) {
        if self.config.seeds.is_empty() {
            // Founding a cluster: nobody to catch up from.
            self.synced = true;
        }
        self.broadcast_own_entry();
        self.announce_to_seeds();
        self.maybe_become_member();
        self.set_timer(now, self.config.ring_sync_interval, Timer::RingSync);
        self.set_timer(now, self.config.announce_interval, Timer::Announce);
        self.after_input(now);
    }

    /// A SWIM packet arrived. Malformed packets are logged and dropped.
    pub fn handle_gossip(&mut self, bytes: &[u8], now: Duration) {
        if self.leave.is_some() {
            // A leaving node is out of SWIM for good: answering probes (or letting foca rejoin
            // when the others declare it down) would bring it back as alive.
            return;
        }
        if let Err(e) = self.swim.handle_data(bytes, &mut self.swim_effects) {
            match e {
                foca::Error::DataFromOurselves => debug!("ignored own SWIM packet"),
                e => warn!(error = %e, len = bytes.len(), "rejected SWIM packet"),
            }
        }
        self.after_input(now);
    }

    /// A peer message arrived from the endpoint `from`. Malformed messages are logged and dropped.
    pub fn handle_message(&mut self, from: SocketAddr, bytes: &[u8], now: Duration) {
        match protocol::decode::<PeerEnvelope>(bytes) {
            Ok(envelope) => self.dispatch(envelope),
            Err(e) => warn!(%from, error = %e, "rejected peer message"),
        }
        self.after_input(now);
    }

    /// A timer this node asked for fired.
    pub fn handle_timer(&mut self, timer: Timer, now: Duration) {
        match timer {
            Timer::Swim(_) if self.leave.is_some() => {}
            Timer::Swim(t) => {
                if let Err(e) = self.swim.handle_timer(t, &mut self.swim_effects) {
                    debug!(error = %e, "SWIM timer");
                }
            }
            Timer::RingSync => {
                self.expire_stale_suspects(now);
                if self.leave.as_ref().is_some_and(|l| !l.done) {
                    self.push_leave();
                } else {
                    self.ring_sync_with_random_member();
                }
                self.set_timer(now, self.config.ring_sync_interval, Timer::RingSync);
            }
            Timer::Announce => {
                let alone = !self.swim_connected || self.swim.num_members() == 0;
                if alone && self.leave.is_none() {
                    self.announce_to_seeds();
                    self.announce_to_ring_members();
                }
                self.set_timer(now, self.config.announce_interval, Timer::Announce);
            }
        }
        self.after_input(now);
    }

    /// Leaves the cluster for good. The node holds no data yet, so there is nothing to hand
    /// off: it records `left`, leaves SWIM, and keeps sending its ring state to every other node
    /// that has not left until a majority of the alive ones (at least one) confirm they recorded
    /// it (they persist it before answering, so the leave survives their restarts). Then it
    /// emits [`Output::Left`].
    pub fn leave(&mut self, now: Duration) {
        if self.leave.is_some() {
            return;
        }
        let id = self.config.id;
        let mut own = self.own_entry();
        own.status = RingStatus::Left;
        self.lock_ring().merge_entry(id, &own);
        let others = self.other_nodes_not_left().len();
        // Wait for a majority of the others SWIM holds alive (at least one), so a leave is not
        // lost with a minority that crashes for good, nor stuck behind members that are gone.
        let alive = self
            .swim
            .iter_members()
            .filter(|m| m.id().node != id)
            .count()
            .min(others);
        self.leave = Some(LeaveProgress {
            needed: alive / 2 + 1,
            confirmed: BTreeSet::new(),
            done: false,
        });
        self.broadcast_own_entry();
        // Persist `left` first: a restart from this data directory must refuse to rejoin.
        self.refresh_ring_logged();
        if self.leave_targets().is_empty() {
            self.finish_leave();
        } else {
            self.push_leave();
        }
        if let Err(e) = self.swim.leave_cluster(&mut self.swim_effects) {
            warn!(error = %e, "SWIM leave");
        }
        info!(node = %id, others, "leaving the cluster");
        self.after_input(now);
    }

    /// Where a leaving node tells of its leave: every other node of the ring that has not left,
    /// and the seeds (a node leaving before it caught up may know nobody else, while the
    /// others already saw it joining).
    fn leave_targets(&self) -> BTreeSet<SocketAddr> {
        let own = self.config.info.quic_addr;
        self.other_nodes_not_left()
            .into_iter()
            .map(|(_, info)| info.quic_addr)
            .chain(self.config.seeds.iter().copied())
            .filter(|&a| a != own)
            .collect()
    }

    fn push_leave(&mut self) {
        let state = self.lock_ring().clone();
        for to in self.leave_targets() {
            self.send(
                to,
                PeerMessage::RingSync {
                    state: state.clone(),
                    reply: true,
                },
            );
        }
    }

    fn finish_leave(&mut self) {
        if let Some(l) = self.leave.as_mut() {
            if !l.done {
                l.done = true;
                info!(node = %self.config.id, confirmed = l.confirmed.len(), "left the cluster");
                self.outputs.push_back(Output::Left);
            }
        }
    }

    /// Other nodes whose ring status is not `left`, with their addresses.
    fn other_nodes_not_left(&self) -> Vec<(NodeId, NodeInfo)> {
        self.lock_ring()
            .iter()
            .filter(|&(n, e)| n != self.config.id && e.status != RingStatus::Left)
            .map(|(n, e)| (n, e.info))
            .collect()
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
        }
    }

    /// Whether this node has started leaving the cluster.
    pub fn has_left(&self) -> bool {
        self.leave.is_some()
    }

    /// The next effect to perform, if any.
    pub fn poll_output(&mut self) -> Option<Output> {
        self.outputs.pop_front()
    }

    /// The current ring state.
    pub fn ring_state(&self) -> RingState {
        self.lock_ring().clone()
    }

    /// The current placement (absent while no node owns partitions).
    pub fn placement(&self) -> Option<&Ring> {
        self.placement.as_ref()
    }

    /// The cluster as this node sees it.
    pub fn cluster_view(&self) -> ClusterView {
        let ring = self.lock_ring().clone();
        let counts = self
            .placement
            .as_ref()
            .map(|p| p.replica_counts(self.config.replicas))
            .unwrap_or_default();
        let members = ring
            .iter()
            .map(|(id, entry)| {
                let (liveness, incarnation) = self.liveness_of(id);
                MemberView {
                    id: id.to_string(),
                    quic_addr: entry.info.quic_addr,
                    http_addr: entry.info.http_addr,
                    liveness,
                    status: entry.status,
                    incarnation,
                    partitions: counts.get(&id).copied().unwrap_or(0),
                }
            })
            .collect();
        ClusterView {
            node_id: self.config.id.to_string(),
            members,
            ring: RingView {
                partitions: self.config.ring.partitions(),
                n: self.config.replicas,
                vnodes: self.config.ring.vnodes(),
            },
        }
    }

    fn liveness_of(&self, id: NodeId) -> (Liveness, u64) {
        if id == self.config.id {
            let liveness = if self.leave.is_some() {
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

    fn dispatch(&mut self, envelope: PeerEnvelope) {
        let from = envelope.from;
        match envelope.message {
            PeerMessage::RingSync { state, reply } => {
                let knew_all = state.covers(&self.lock_ring());
                self.lock_ring().merge(&state);
                // Persist before answering: an answer confirms what we now know.
                self.refresh_ring_logged();
                self.synced = true;
                let sender_left = state
                    .get(from)
                    .is_some_and(|e| e.status == RingStatus::Left);
                if reply && (!knew_all || sender_left) {
                    let info = self.lock_ring().get(from).map(|e| e.info);
                    if let Some(info) = info {
                        let mine = self.lock_ring().clone();
                        self.send(
                            info.quic_addr,
                            PeerMessage::RingSync {
                                state: mine,
                                reply: false,
                            },
                        );
                    }
                }
                self.note_leave_confirmation(from, &state);
                self.announce_if_strange(from);
                self.maybe_become_member();
            }
        }
    }

    /// A ring node that talks to us but is not among SWIM's active members: one of the two
    /// SWIM views is stale (it may hold us down, or we it). Announcing to it makes SWIM sort
    /// it out: a node held down is told so and rejoins with a new identity.
    fn announce_if_strange(&mut self, from: NodeId) {
        if self.leave.is_some() || from == self.config.id {
            return;
        }
        let Some(entry) = self.lock_ring().get(from).copied() else {
            return;
        };
        let addr = entry.info.quic_addr;
        let known = self.swim.iter_members().any(|m| m.id().addr == addr);
        if entry.status != RingStatus::Left && !known {
            if let Err(e) = self
                .swim
                .announce(PeerId::seed(addr), &mut self.swim_effects)
            {
                debug!(%addr, error = %e, "announce");
            }
        }
    }

    fn note_leave_confirmation(&mut self, from: NodeId, state: &RingState) {
        let id = self.config.id;
        let Some(l) = self.leave.as_mut() else { return };
        if from != id && state.get(id).is_some_and(|e| e.status == RingStatus::Left) {
            l.confirmed.insert(from);
            if l.confirmed.len() >= l.needed {
                self.finish_leave();
            }
        }
    }

    /// The periodic full-state exchange: with a random member SWIM holds alive, and also with
    /// a random ring node SWIM does not (down, or out of SWIM because it is leaving). The second
    /// exchange is how a leaving node, whose known peers may all be gone, learns about nodes that
    /// joined after it left SWIM, so its leave reaches them.
    fn ring_sync_with_random_member(&mut self) {
        let active: BTreeSet<SocketAddr> = self.swim.iter_members().map(|m| m.id().addr).collect();
        let unreachable: Vec<SocketAddr> = self
            .other_nodes_not_left()
            .into_iter()
            .map(|(_, info)| info.quic_addr)
            .filter(|a| !active.contains(a))
            .collect();
        let state = self.lock_ring().clone();
        for pool in [active.into_iter().collect::<Vec<_>>(), unreachable] {
            if pool.is_empty() {
                continue;
            }
            let pick = rand::RngExt::random_range(&mut self.rng, 0..pool.len());
            self.send(
                pool[pick],
                PeerMessage::RingSync {
                    state: state.clone(),
                    reply: true,
                },
            );
        }
    }

    /// Announces to every other node of the ring that has not left: how a node that SWIM
    /// disconnected (after a partition, or a renewed identity) finds its way back even when
    /// its seeds are gone.
    fn announce_to_ring_members(&mut self) {
        for (_, info) in self.other_nodes_not_left() {
            if let Err(e) = self
                .swim
                .announce(PeerId::seed(info.quic_addr), &mut self.swim_effects)
            {
                debug!(addr = %info.quic_addr, error = %e, "announce");
            }
        }
    }

    fn announce_to_seeds(&mut self) {
        for &seed in &self.config.seeds {
            if seed == self.config.info.quic_addr {
                continue;
            }
            if let Err(e) = self
                .swim
                .announce(PeerId::seed(seed), &mut self.swim_effects)
            {
                debug!(%seed, error = %e, "announce");
            }
        }
    }

    fn maybe_become_member(&mut self) {
        let mut own = self.own_entry();
        if own.status == RingStatus::Joining && self.synced && self.leave.is_none() {
            own.status = RingStatus::Member;
            self.lock_ring().merge_entry(self.config.id, &own);
            info!(node = %self.config.id, "joined the ring as a member");
            self.broadcast_own_entry();
        }
    }

    fn own_entry(&self) -> RingEntry {
        // The node's own entry is inserted in `new` and entries are never removed.
        *self
            .lock_ring()
            .get(self.config.id)
            .expect("own ring entry present")
    }

    fn broadcast_own_entry(&mut self) {
        let item = RingBroadcast {
            node: self.config.id,
            entry: self.own_entry(),
        };
        // The handler merges the item into the ring (already there) and keys it for spreading;
        // the key is new whenever the entry changed, so foca re-spreads it.
        if let Err(e) = self.swim.add_broadcast(&item.encode()) {
            warn!(error = %e, "ring broadcast");
        }
    }

    fn send(&mut self, to: SocketAddr, message: PeerMessage) {
        let envelope = PeerEnvelope {
            from: self.config.id,
            message,
        };
        match protocol::encode(&envelope) {
            Ok(bytes) => self.outputs.push_back(Output::Message { to, bytes }),
            Err(e) => warn!(error = %e, "cannot encode peer message"),
        }
    }

    fn set_timer(&mut self, now: Duration, after: Duration, timer: Timer) {
        self.outputs.push_back(Output::SetTimer {
            at: now + after,
            timer,
        });
    }

    fn lock_ring(&self) -> std::sync::MutexGuard<'_, RingState> {
        self.ring.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Turns SWIM's effects into outputs and reacts to ring changes.
    fn after_input(&mut self, now: Duration) {
        while let Some((to, data)) = self.swim_effects.to_send() {
            self.outputs.push_back(Output::Gossip {
                to: to.addr,
                bytes: data.to_vec(),
            });
        }
        while let Some((after, timer)) = self.swim_effects.to_schedule() {
            self.set_timer(now, after, Timer::Swim(timer));
        }
        while let Some(n) = self.swim_effects.to_notify() {
            match n {
                OwnedNotification::MemberUp(p) => {
                    info!(member = %p.node, addr = %p.addr, generation = p.generation, "member up")
                }
                OwnedNotification::MemberDown(p) => {
                    info!(member = %p.node, addr = %p.addr, "member down")
                }
                OwnedNotification::Rename(a, b) => {
                    info!(member = %b.node, from = a.generation, to = b.generation, "member restarted")
                }
                OwnedNotification::Defunct => {
                    self.swim_connected = false;
                    warn!("the cluster declared this node down; rejoining");
                }
                OwnedNotification::Rejoin(p) => {
                    self.swim_connected = false;
                    self.identity = p;
                    self.outputs
                        .push_back(Output::PersistGeneration(p.generation));
                    info!(generation = p.generation, "rejoined with a new identity");
                }
                OwnedNotification::Active => {
                    self.swim_connected = true;
                    // Catch up with the ring right away rather than at the next periodic sync:
                    // a joining node becomes a member as soon as it has.
                    self.ring_sync_with_random_member();
                }
                OwnedNotification::Idle => self.swim_connected = false,
            }
        }
        self.refresh_ring_logged();
    }

    fn refresh_ring_logged(&mut self) {
        if let Err(e) = self.refresh_ring() {
            warn!(error = %e, "cannot place the ring");
        }
    }

    /// Persists and re-places the ring when its state changed.
    fn refresh_ring(&mut self) -> Result<(), NodeError> {
        let current = self.lock_ring().clone();
        if current == self.ring_seen {
            return Ok(());
        }
        let owners_changed = current.owners().ne(self.ring_seen.owners());
        if owners_changed || self.placement.is_none() {
            let members: Vec<Member> = current.owners().map(Member::new).collect();
            self.placement = if members.is_empty() {
                None
            } else {
                Some(Ring::new(members, self.config.ring)?)
            };
        }
        self.outputs.push_back(Output::PersistRing(current.clone()));
        self.ring_seen = current;
        Ok(())
    }
}

#[cfg(test)]
mod tests;
