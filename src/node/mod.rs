//! The sans-IO node: one value per Chorus node that takes inputs and yields effects.
//!
//! [`Node`] is a router. It decodes each input, hands it to the one sub-machine that owns it,
//! and collects what the sub-machines emit into one queue of [`Output`]s. Sub-machines never
//! call each other; they own their messages and timers:
//!
//! - [`membership`]: SWIM liveness (foca), the ring-state CRDT, joins, leaves and removals.
//!
//! # Inputs
//!
//! Every input carries `now`, a [`Duration`] since an epoch the driver chooses (monotonic):
//!
//! - [`Node::start`], once, before anything else;
//! - [`Node::handle_gossip`]: a SWIM packet (a QUIC datagram);
//! - [`Node::handle_message`]: a peer message (an encoded [`PeerEnvelope`]);
//! - [`Node::handle_timer`]: a [`Timer`] the node asked for is due;
//! - admin requests: [`Node::leave`], [`Node::remove`]; queries: [`Node::cluster_view`] and
//!   friends, which change nothing.
//!
//! # Outputs
//!
//! After every input the driver calls [`Node::poll_output`] until it returns `None` and
//! performs each [`Output`] **in order**. Persist outputs are barriers: an output after a
//! [`Output::PersistRing`] (a message confirming what was persisted, say) must not be performed
//! before the write is durable. A driver that crashes part-way through the queue loses the rest,
//! which the protocols tolerate.
//!
//! The node owns no socket, clock, thread or ambient randomness: randomness comes from a seed
//! the driver passes in. The tokio runtime and the simulator drive this same type.

pub mod membership;

use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tracing::warn;

use crate::id::NodeId;
use crate::membership::{NodeInfo, RingState, RingStatus};
use crate::protocol;
use crate::ring::{Ring, RingConfig};

use membership::Membership;
pub use membership::{
    Liveness, MembershipConfig, MembershipError, MembershipMessage, MembershipTimer, PendingChange,
    RemoveError, SyncReply,
};

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
    /// Membership settings (seeds, ring, SWIM timings).
    pub membership: MembershipConfig,
}

impl NodeConfig {
    /// Defaults for a LAN cluster, joining through `seeds` (none: found a new cluster).
    pub fn new(id: NodeId, generation: u64, info: NodeInfo, seeds: Vec<SocketAddr>) -> Self {
        NodeConfig {
            id,
            generation,
            info,
            membership: MembershipConfig::new(seeds),
        }
    }
}

/// What a driver loads from disk for a start.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Persisted {
    /// The ring state as last persisted ([`Output::PersistRing`]; empty on first start).
    pub ring: RingState,
    /// Whether this node's leave completed ([`Output::Left`] was performed).
    pub leave_complete: bool,
}

/// A timer the node asks its driver to fire. Timers are never cancelled: a stale one is
/// ignored when it fires.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Timer {
    /// A timer of the membership sub-machine.
    Membership(MembershipTimer),
}

/// Everything nodes say to each other outside SWIM, one enum per sub-machine.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum PeerMessage {
    /// For the membership sub-machine.
    Membership(MembershipMessage),
}

impl From<MembershipMessage> for PeerMessage {
    fn from(m: MembershipMessage) -> Self {
        PeerMessage::Membership(m)
    }
}

/// A peer message with the sender's id, as it travels in the wire envelope.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerEnvelope {
    /// The sending node.
    pub from: NodeId,
    /// What it says.
    pub message: PeerMessage,
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
    /// Send a peer message (an encoded [`PeerEnvelope`]) to a node.
    Message {
        /// The destination node, when known (a seed is known only by its address).
        to: Option<NodeId>,
        /// Its QUIC endpoint.
        addr: SocketAddr,
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
    /// Persist the ring state (it changed). A barrier: later outputs wait until it is durable.
    PersistRing(RingState),
    /// Persist this node's generation: SWIM renewed its identity, and the next start must use
    /// a newer generation than this one.
    PersistGeneration(u64),
    /// The node has left the cluster (or an operator removed it) and a majority of the members
    /// confirmed it. The driver persists that the leave is complete (so the data directory
    /// never starts again), then shuts down once sends are flushed.
    Left,
}

/// Where sub-machines put their effects; the router's single output queue.
#[derive(Debug)]
pub(crate) struct Outbox {
    from: NodeId,
    queue: VecDeque<Output>,
}

impl Outbox {
    fn new(from: NodeId) -> Self {
        Outbox {
            from,
            queue: VecDeque::new(),
        }
    }

    /// Queues an output.
    pub(crate) fn push(&mut self, output: Output) {
        self.queue.push_back(output);
    }

    /// Queues a peer message to node `to` (`None`: a seed known only by address) at `addr`.
    pub(crate) fn send(
        &mut self,
        to: Option<NodeId>,
        addr: SocketAddr,
        message: impl Into<PeerMessage>,
    ) {
        let envelope = PeerEnvelope {
            from: self.from,
            message: message.into(),
        };
        match protocol::encode(&envelope) {
            Ok(bytes) => self.push(Output::Message { to, addr, bytes }),
            Err(e) => warn!(error = %e, "cannot encode peer message"),
        }
    }

    /// Asks to be called with `timer` after `after`.
    pub(crate) fn set_timer(&mut self, now: Duration, after: Duration, timer: impl Into<Timer>) {
        self.push(Output::SetTimer {
            at: now + after,
            timer: timer.into(),
        });
    }
}

impl From<MembershipTimer> for Timer {
    fn from(t: MembershipTimer) -> Self {
        Timer::Membership(t)
    }
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

impl From<MembershipError> for NodeError {
    fn from(e: MembershipError) -> Self {
        match e {
            MembershipError::AlreadyLeft(id) => NodeError::AlreadyLeft(id),
            MembershipError::Ring(e) => NodeError::Ring(e),
        }
    }
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
    /// Ring changes this node started that a majority of the members has not yet confirmed
    /// (its own leave, operator removals).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pending: Vec<PendingChange>,
}

/// One Chorus node's protocol state.
pub struct Node {
    id: NodeId,
    ring_config: RingConfig,
    replicas: usize,
    membership: Membership,
    out: Outbox,
}

impl Node {
    /// A node with `config`, randomness from `seed`, and what it persisted before (empty on
    /// first start). Call [`Node::start`] next.
    pub fn new(config: NodeConfig, seed: u64, persisted: Persisted) -> Result<Node, NodeError> {
        let membership = Membership::new(
            config.id,
            config.info,
            config.generation,
            config.membership.clone(),
            seed,
            persisted.ring,
            persisted.leave_complete,
        )?;
        Ok(Node {
            id: config.id,
            ring_config: config.membership.ring,
            replicas: config.membership.replicas,
            membership,
            out: Outbox::new(config.id),
        })
    }

    /// This node's id.
    pub fn id(&self) -> NodeId {
        self.id
    }

    /// Starts the protocols: announces this node, contacts the seeds, arms the timers.
    pub fn start(&mut self, now: Duration) {
        self.membership.start(now, &mut self.out);
    }

    /// A SWIM packet arrived. Malformed packets are logged and dropped.
    pub fn handle_gossip(&mut self, bytes: &[u8], now: Duration) {
        self.membership.handle_gossip(bytes, now, &mut self.out);
    }

    /// A peer message arrived from the endpoint `from`. Malformed messages are logged and
    /// dropped; they change nothing.
    pub fn handle_message(&mut self, from: SocketAddr, bytes: &[u8], now: Duration) {
        match protocol::decode::<PeerEnvelope>(bytes) {
            Ok(envelope) => match envelope.message {
                PeerMessage::Membership(m) => {
                    self.membership
                        .handle_message(envelope.from, m, now, &mut self.out)
                }
            },
            Err(e) => warn!(%from, error = %e, "rejected peer message"),
        }
    }

    /// A timer this node asked for fired.
    pub fn handle_timer(&mut self, timer: Timer, now: Duration) {
        match timer {
            Timer::Membership(t) => self.membership.handle_timer(t, now, &mut self.out),
        }
    }

    /// Leaves the cluster for good: the node records `leaving`, then `left`, each confirmed by
    /// a majority of the ring's members, then emits [`Output::Left`]. Until then it keeps
    /// trying and reports the leave in [`ClusterView::pending`].
    pub fn leave(&mut self, now: Duration) {
        self.membership.leave(now, &mut self.out);
    }

    /// Removes the dead node `node` from the ring for good (an operator's decision); the change
    /// is pushed until a majority of the members confirm it ([`Node::removal_confirmed`]).
    pub fn remove(&mut self, node: NodeId, now: Duration) -> Result<(), RemoveError> {
        self.membership.remove(node, now, &mut self.out)
    }

    /// Whether the removal of `node` started here is confirmed (`None`: not started here).
    pub fn removal_confirmed(&self, node: NodeId) -> Option<bool> {
        self.membership.removal_confirmed(node)
    }

    /// Whether this node has started leaving the cluster (or was removed).
    pub fn has_left(&self) -> bool {
        self.membership.is_leaving()
    }

    /// This node's own ring status.
    pub fn own_status(&self) -> RingStatus {
        self.membership.own_status()
    }

    /// The next effect to perform, if any.
    pub fn poll_output(&mut self) -> Option<Output> {
        self.out.queue.pop_front()
    }

    /// The current ring state.
    pub fn ring_state(&self) -> RingState {
        self.membership.ring_state()
    }

    /// The current placement (absent while no node owns partitions).
    pub fn placement(&self) -> Option<&Ring> {
        self.membership.placement()
    }

    /// The newest generation SWIM knows for each node it lists (for invariant checks).
    pub fn swim_generations(&self) -> BTreeMap<NodeId, u64> {
        self.membership.swim_generations()
    }

    /// The cluster as this node sees it.
    pub fn cluster_view(&self) -> ClusterView {
        let ring = self.membership.ring_state();
        let counts = self
            .membership
            .placement()
            .map(|p| p.replica_counts(self.replicas))
            .unwrap_or_default();
        let members = ring
            .iter()
            .map(|(id, entry)| {
                let (liveness, incarnation) = self.membership.liveness_of(id);
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
            node_id: self.id.to_string(),
            members,
            ring: RingView {
                partitions: self.ring_config.partitions(),
                n: self.replicas,
                vnodes: self.ring_config.vnodes(),
            },
            pending: self.membership.pending_changes(),
        }
    }
}

#[cfg(test)]
mod tests;
