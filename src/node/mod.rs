//! The sans-IO node: one value per Chorus node that takes inputs and yields effects.
//!
//! [`Node`] is a router. It decodes each input, hands it to the one sub-machine that owns it,
//! and collects what the sub-machines emit into one queue of [`Output`]s. Sub-machines never
//! call each other: each owns its messages and timers, and one reaches another only through the
//! router — a message to this node's own id is delivered locally, never encoded.
//!
//! - [`membership`]: SWIM liveness (foca), the ring-state CRDT, joins, leaves and removals.
//! - [`coordinator`]: client requests in flight — targets, quorums, deadlines, read repair,
//!   sloppy fallbacks, forwarding.
//! - [`replica`]: this node's copy of its keys — minting dots, merging, staging writes.
//! - [`hints`]: writes held for down replicas and their hand-back.
//! - [`sync`]: partition handoff when owners change.
//!
//! Shared plumbing: the [`topology`] (placement and liveness, rebuilt from membership when it
//! changes and lent read-only to the others) and the [`journal`] (staged writes and what waits
//! for them to be durable).
//!
//! # Inputs
//!
//! Every input carries `now`, a [`Duration`] since an epoch the driver chooses (monotonic):
//!
//! - [`Node::start`], once, before anything else;
//! - [`Node::handle_gossip`]: a SWIM packet (a QUIC datagram) from an authenticated peer;
//! - [`Node::handle_message`]: a peer message from an authenticated peer — the sender is the
//!   node id bound to the peer's certificate, never a field of the payload;
//! - [`Node::handle_client`]: a client request, with a handle for its answer;
//! - [`Node::handle_timer`]: a [`Timer`] the node asked for is due;
//! - [`Node::handle_durable`]: every [`Output::Persist`] up to a number is on stable storage;
//! - admin requests: [`Node::leave`], [`Node::remove`]; queries ([`Node::cluster_view`] and
//!   friends) change nothing.
//!
//! # Outputs
//!
//! After every input the driver calls [`Node::poll_output`] until it returns `None` and
//! performs each [`Output`] in order, with one exception: [`Output::Persist`] batches are
//! committed in the background, in number order, as many per sync as convenient (group
//! commit), and reported with [`Node::handle_durable`]; outputs after them need not wait. The
//! metadata outputs ([`Output::PersistRing`], [`Output::PersistGeneration`], [`Output::Left`])
//! are barriers: an output after one (a message confirming what was persisted, say) must not be
//! performed before the write is durable. A driver that cannot persist must stop the node
//! (fail-stop); one that crashes part-way through the queue loses the rest, which the protocols
//! tolerate. The core owns no socket, clock, thread or ambient randomness: randomness comes from
//! a seed the driver passes in. The tokio runtime and the simulator drive this same type.

pub mod coordinator;
pub mod hints;
mod journal;
pub mod membership;
pub mod object;
pub mod replica;
pub mod request;
pub mod sync;
mod topology;

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::net::SocketAddr;
use std::time::Duration;

use rand::SeedableRng;
use rand_xoshiro::Xoshiro256PlusPlus;
use serde::{Deserialize, Serialize};
use tracing::{debug, warn};

use crate::id::NodeId;
use crate::membership::{EntryAuth, NodeInfo, RingState, RingStatus};
use crate::protocol;
use crate::ring::{Member, Ring, RingConfig};
use crate::storage::{ReadStore, StoreError, WriteBatch};

pub use coordinator::{CoordinatorMessage, CoordinatorTimer};
pub use hints::{AdoptedHint, HintsMessage, HintsTimer};
use journal::Journal;
use membership::Membership;
pub use membership::{
    CancelLeaveError, Liveness, MembershipConfig, MembershipError, MembershipMessage,
    MembershipTimer, PendingChange, RemoveError, SyncReply,
};
pub use object::{
    Context, ContextError, ContextKey, ContextKind, CrdtOp, CrdtValue, HeldSeqs, Logged, Object,
    PartView, Parts, TypeConflict, UpdateEffect,
};
pub use replica::{MergeEntry, MergeReply, ReplicaMessage};
pub use request::{
    ClientError, ClientOp, ClientReply, ClientRequest, DataConfig, ReadResult, RequestOptions,
    UpdateResult, WriteResult, SIBLINGS_MAX_DEFAULT,
};
pub use sync::{AeMessage, PartitionInfo, RepairProgress, SyncMessage, SyncTimer};
use topology::Topology;

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
    /// Data-path settings (quorums, limits, timeouts).
    pub data: DataConfig,
    /// Signs this node's ring entries and checks the others' ([`EntryAuth`]): the node's
    /// certificate key in the runtime, a deterministic stand-in in the simulator.
    pub auth: std::sync::Arc<dyn EntryAuth>,
}

impl NodeConfig {
    /// Defaults for a LAN cluster, joining through `seeds` (none: found a new cluster), signing
    /// ring entries with `auth`.
    pub fn new(
        id: NodeId,
        generation: u64,
        info: NodeInfo,
        seeds: Vec<SocketAddr>,
        auth: std::sync::Arc<dyn EntryAuth>,
    ) -> Self {
        NodeConfig {
            id,
            generation,
            info,
            membership: MembershipConfig::new(seeds),
            data: DataConfig::default(),
            auth,
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

/// A timer the node asks its driver to fire, one enum per sub-machine. Timers are never
/// cancelled: a stale one is ignored when it fires.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Timer {
    /// A timer of the membership sub-machine.
    Membership(MembershipTimer),
    /// A timer of the coordinator.
    Coordinator(CoordinatorTimer),
    /// A timer of the hints sub-machine.
    Hints(HintsTimer),
    /// A timer of the sync sub-machine.
    Sync(SyncTimer),
}

/// Everything nodes say to each other outside SWIM, one enum per sub-machine. It travels in the
/// wire envelope of [`crate::protocol`]; the sender is never part of it (the transport knows it
/// from the peer's certificate).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum PeerMessage {
    /// For the membership sub-machine.
    Membership(MembershipMessage),
    /// For the coordinator.
    Coordinator(CoordinatorMessage),
    /// For the replica.
    Replica(ReplicaMessage),
    /// For the hints sub-machine.
    Hints(HintsMessage),
    /// For the sync sub-machine.
    Sync(SyncMessage),
    /// A member's figures for the status page, asked of and answered by the drivers.
    Stats(StatsMessage),
}

/// Asking another member for its figures (the status page's per-member numbers), over the
/// authenticated peer transport. The figures are the driver's (request rates, latencies): the
/// core only carries them, as opaque bytes, between members of the ring.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum StatsMessage {
    /// Send me your figures.
    Ask {
        /// The asker's handle, echoed in the answer.
        id: u64,
    },
    /// My figures.
    Answer {
        /// The handle from the question.
        id: u64,
        /// The figures, encoded by the driver (at most [`STATS_BYTES_MAX`]).
        #[serde(with = "serde_bytes")]
        stats: Vec<u8>,
    },
}

/// Largest figures answer carried ([`StatsMessage::Answer`]); larger ones are not sent.
pub const STATS_BYTES_MAX: usize = 64 * 1024;

macro_rules! into_enum {
    ($outer:ident :: $variant:ident ($inner:ty)) => {
        impl From<$inner> for $outer {
            fn from(m: $inner) -> Self {
                $outer::$variant(m)
            }
        }
    };
}
into_enum!(PeerMessage::Membership(MembershipMessage));
into_enum!(PeerMessage::Coordinator(CoordinatorMessage));
into_enum!(PeerMessage::Replica(ReplicaMessage));
into_enum!(PeerMessage::Hints(HintsMessage));
into_enum!(PeerMessage::Sync(SyncMessage));
into_enum!(PeerMessage::Stats(StatsMessage));
into_enum!(Timer::Membership(MembershipTimer));
into_enum!(Timer::Coordinator(CoordinatorTimer));
into_enum!(Timer::Hints(HintsTimer));
into_enum!(Timer::Sync(SyncTimer));

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
    /// a newer generation than this one. A barrier.
    PersistGeneration(u64),
    /// Commit `batch` (after every batch with a smaller number) and report it with
    /// [`Node::handle_durable`] once it is on stable storage. Not a barrier.
    Persist {
        /// The batch's number: consecutive, from 1.
        seq: u64,
        /// The writes.
        batch: WriteBatch,
    },
    /// The answer to the client request the driver submitted with handle `client`.
    Reply {
        /// The driver's handle.
        client: u64,
        /// The answer.
        reply: ClientReply,
    },
    /// Membership learned that the node at `addr` restarted (a newer generation): the driver
    /// drops its connection to the previous process, so that nothing more is lost in it.
    PeerRestarted {
        /// The node.
        node: NodeId,
        /// Its endpoint.
        addr: SocketAddr,
    },
    /// The node has left the cluster (or an operator removed it) and a majority of the members
    /// confirmed it. The driver persists that the leave is complete (so the data directory
    /// never starts again), then shuts down once sends are flushed.
    Left,
    /// Ring member `from` asks for this node's figures: the driver answers with
    /// [`Node::answer_stats`] (or not at all).
    StatsAsked {
        /// The asking member (authenticated by the transport).
        from: NodeId,
        /// Its handle, for the answer.
        id: u64,
    },
    /// Ring member `from` answered [`Node::ask_stats`].
    StatsAnswered {
        /// The answering member (authenticated by the transport).
        from: NodeId,
        /// The handle given to [`Node::ask_stats`].
        id: u64,
        /// The figures, as the other driver encoded them.
        stats: Vec<u8>,
    },
}

/// Where sub-machines put their effects; the router's single output queue.
#[derive(Debug)]
pub(crate) struct Outbox {
    queue: VecDeque<Output>,
}

impl Outbox {
    fn new() -> Self {
        Outbox {
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
        match protocol::encode(&message.into()) {
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

/// A message to send once a journal number is durable.
#[derive(Debug)]
pub(crate) struct Deferred {
    to: NodeId,
    message: PeerMessage,
    /// When it started waiting (for the replica-side latency of writes).
    since: Duration,
}

/// Local calls between sub-machines that never cross the network.
#[derive(Debug)]
pub(crate) enum Call {
    /// To the replica.
    Replica(replica::ReplicaCall),
    /// To the coordinator: the replica minted the write of request `req`.
    Minted {
        /// The coordinator's request.
        req: u64,
        /// The minted state and dot, or why not.
        result: Result<replica::Minted, ClientError>,
    },
    /// To the coordinator: the replica has no copy of the key of write `req`, so it applied
    /// nothing; the coordinator looks at the other replicas first (the key's type).
    Absent {
        /// The coordinator's request.
        req: u64,
        /// The write, handed back.
        op: replica::MintOp,
        /// Its context, handed back.
        context: Option<object::Context>,
    },
}

/// What a sub-machine may touch while it handles an input: the topology (read-only), the
/// journal, and the router's queues. Messages to this node's own id are delivered locally.
pub(crate) struct Effects<'a> {
    pub(crate) me: NodeId,
    pub(crate) now: Duration,
    pub(crate) topo: &'a Topology,
    pub(crate) journal: &'a mut Journal<Deferred>,
    pub(crate) mail: &'a mut VecDeque<(NodeId, PeerMessage)>,
    pub(crate) calls: &'a mut VecDeque<Call>,
    pub(crate) out: &'a mut Outbox,
    /// Storage keys of the data the replica staged in this input, with their journal numbers
    /// (for handoff).
    pub(crate) staged: &'a mut Vec<replica::Staged>,
}

impl Effects<'_> {
    /// Sends `message` to node `to` (delivered locally when `to` is this node).
    pub(crate) fn send(&mut self, to: NodeId, message: PeerMessage) {
        self.mail.push_back((to, message));
    }

    /// Sends `message` to `to` once everything staged up to journal number `seq` is durable.
    pub(crate) fn after_durable(&mut self, seq: u64, to: NodeId, message: PeerMessage) {
        let since = self.now;
        if let Some(d) = self
            .journal
            .after_durable(seq, Deferred { to, message, since })
        {
            self.mail.push_back((d.to, d.message));
        }
    }

    /// Asks to be called with `timer` after `after`.
    pub(crate) fn set_timer(&mut self, after: Duration, timer: impl Into<Timer>) {
        self.out.set_timer(self.now, after, timer);
    }
}

/// Why a node cannot start.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// The data directory belongs to a node that left the cluster.
    #[error("node {0} has left the cluster and cannot rejoin; start with an empty data directory")]
    AlreadyLeft(NodeId),
    /// This node's persisted ring entry has the largest version there is.
    #[error("node {0}'s ring entry version is exhausted")]
    VersionExhausted(NodeId),
    /// The ring configuration cannot place data.
    #[error("invalid ring: {0}")]
    Ring(#[from] crate::ring::RingError),
    /// The store could not be read at start.
    #[error("cannot read the store: {0}")]
    Store(#[from] StoreError),
}

impl From<MembershipError> for NodeError {
    fn from(e: MembershipError) -> Self {
        match e {
            MembershipError::AlreadyLeft(id) => NodeError::AlreadyLeft(id),
            MembershipError::VersionExhausted(id) => NodeError::VersionExhausted(id),
            MembershipError::Ring(e) => NodeError::Ring(e),
        }
    }
}

/// One member as reported by `GET /v1/cluster`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "server", derive(utoipa::ToSchema))]
pub struct MemberView {
    /// Node id (16 hex digits).
    pub id: String,
    /// QUIC endpoint.
    #[cfg_attr(feature = "server", schema(value_type = String, example = "127.0.0.1:7100"))]
    pub quic_addr: SocketAddr,
    /// HTTP endpoint.
    #[cfg_attr(feature = "server", schema(value_type = String, example = "127.0.0.1:7200"))]
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
#[cfg_attr(feature = "server", derive(utoipa::ToSchema))]
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
#[cfg_attr(feature = "server", derive(utoipa::ToSchema))]
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
    /// The reporting node's data-path counters, when the driver adds them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<DataStats>,
}

impl ClusterView {
    /// The placement the reported ring gives (members and leaving nodes own partitions), or
    /// none when the report cannot describe a ring (no owner, bad parameters).
    pub fn placement_ring(&self) -> Option<Ring> {
        let ids = self
            .members
            .iter()
            .filter(|m| m.status.owns_partitions())
            .filter_map(|m| m.id.parse::<NodeId>().ok());
        let config = RingConfig::new(self.ring.partitions, self.ring.vnodes).ok()?;
        Ring::new(ids.map(crate::ring::Member::new), config).ok()
    }
}

/// A key with siblings, as [`DataStats::crowded_keys`] lists it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "server", derive(utoipa::ToSchema))]
pub struct CrowdedKey {
    /// The key, as text when it is UTF-8 (lossy otherwise; see `key_base64`).
    pub key: String,
    /// The key's bytes, base64.
    pub key_base64: String,
    /// Its concurrent values.
    pub siblings: usize,
}

impl CrowdedKey {
    fn new(key: &[u8], siblings: usize) -> Self {
        use base64::Engine as _;
        CrowdedKey {
            key: String::from_utf8_lossy(key).into_owned(),
            key_base64: base64::engine::general_purpose::STANDARD.encode(key),
            siblings,
        }
    }
}

/// Counters of the data path, for status pages and checks.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "server", derive(utoipa::ToSchema))]
pub struct DataStats {
    /// Client requests in flight (coordinated here or forwarded).
    pub requests_in_flight: usize,
    /// Hints held for other nodes.
    pub hints_pending: usize,
    /// Partition pushes still to make.
    pub handoff_pending: usize,
    /// Keys staged and not yet durable.
    pub staged_keys: usize,
    /// Events waiting for durability.
    pub waiting_for_durability: usize,
    /// Keys that became contested on this node's replica since it started (writes of several
    /// types raced; the key keeps every part, and reads report it).
    #[serde(default)]
    pub type_conflicts: u64,
    /// Merges this node's replica refused since it started because the merged state would be
    /// larger than a replica stores (the sender keeps them: a hint stays held, a push pending).
    #[serde(default)]
    pub merges_refused: u64,
    /// Hints and handoff keys other replicas refused to store since start (kept and offered
    /// again).
    #[serde(default)]
    pub sends_refused: u64,
    /// Operation ids forgotten within their retry window since start, to keep a hot key
    /// within its memory bound (a late retry of one may count again).
    #[serde(default)]
    pub op_ids_forgotten_early: u64,
    /// Operation ids forgotten before every replica held them since start (the hard memory
    /// bound, reached only while a replica is unreachable and the key stays hot).
    #[serde(default)]
    pub op_ids_forgotten_unstable: u64,
    /// Register writes the sibling guard refused since start.
    #[serde(default)]
    pub siblings_refused: u64,
    /// Data-path messages refused since start because their sender was not a ring member
    /// (it left, was removed, or is unknown).
    #[serde(default)]
    pub refused_senders: u64,
    /// Ring entries refused since start: not signed by their node (a forged entry, a phantom
    /// member, an absurd version) or a removal not signed by a member.
    #[serde(default)]
    pub ring_entries_refused: u64,
    /// Ring entries ignored since start: about another node, from a node that is not a ring
    /// member (it may only speak for itself).
    #[serde(default)]
    pub ring_entries_ignored: u64,
    /// The keys with the most siblings this node stored lately, most first (at most 16).
    #[serde(default)]
    pub crowded_keys: Vec<CrowdedKey>,
    /// Anti-entropy exchanges this node started that are in flight.
    #[serde(default)]
    pub exchanges_in_flight: usize,
    /// Local copies dropped since start: keys of partitions this node no longer owns, once
    /// their owners held them.
    #[serde(default)]
    pub keys_dropped: u64,
    /// Keys this node holds (every partition, owned or not yet dropped).
    #[serde(default)]
    pub keys_held: u64,
    /// Partitions this node replicates but has not caught up with the other replicas since it
    /// became one (a join, a leave or a removal moved them here): it refuses reads of them,
    /// and coordinators ask another replica.
    #[serde(default)]
    pub partitions_catching_up: usize,
    /// Register tombstones purged since start (every member agreed; see tombstone GC).
    #[serde(default)]
    pub tombstones_purged: u64,
    /// Tombstone GC rounds this node led to the end (every member answered) since start.
    #[serde(default)]
    pub gc_rounds: u64,
    /// Read repairs this node sent since start (stale replicas sent the merged state).
    #[serde(default)]
    pub read_repairs: u64,
    /// Hints their owners acknowledged since start.
    #[serde(default)]
    pub hints_delivered: u64,
}

/// One Chorus node's protocol state.
pub struct Node {
    id: NodeId,
    ring_config: RingConfig,
    replicas: usize,
    membership: Membership,
    coordinator: coordinator::Coordinator,
    replica: replica::Replica,
    hints: hints::Hints,
    sync: sync::PartitionSync,
    topo: Topology,
    topo_version: Option<u64>,
    journal: Journal<Deferred>,
    mail: VecDeque<(NodeId, PeerMessage)>,
    calls: VecDeque<Call>,
    out: Outbox,
    /// Storage keys staged by the replica and not yet shown to the sync sub-machine.
    staged: Vec<replica::Staged>,
    /// What the sync sub-machine last said about a leaving node's handoff.
    handoff_done: bool,
    /// What the sync sub-machine last said about a joining node's intake.
    intake_ready: Option<Vec<NodeId>>,
    /// Nodes this node has seen in the ring as members, leaving or gone (see
    /// `missed_placements`), and whether the first placement (the persisted one, at start)
    /// was taken in.
    tenures_seen: BTreeSet<NodeId>,
    topo_primed: bool,
    /// How long each replica write acknowledgement released since the driver last took them
    /// waited for durability (at most [`ACK_WAITS_MAX`]; see [`Node::take_ack_waits`]).
    ack_waits: Vec<Duration>,
    /// Data-path messages refused since start because their sender is not a ring member.
    refused_senders: u64,
    /// Senders already warned about (bounded; later refusals log at debug level).
    warned_senders: std::collections::BTreeSet<NodeId>,
}

/// Most distinct refused senders warned about at `warn` level.
const WARNED_SENDERS_MAX: usize = 64;

/// Replica-side write latencies kept between two [`Node::take_ack_waits`].
pub const ACK_WAITS_MAX: usize = 65_536;

/// Splits the router into the sub-machine it calls and the [`Effects`] it lends it.
macro_rules! fx {
    ($node:ident, $now:expr) => {
        Effects {
            me: $node.id,
            now: $now,
            topo: &$node.topo,
            journal: &mut $node.journal,
            mail: &mut $node.mail,
            calls: &mut $node.calls,
            out: &mut $node.out,
            staged: &mut $node.staged,
        }
    };
}

impl Node {
    /// A node with `config`, randomness from `seed`, what it persisted before (empty on first
    /// start), and read access to its store. Call [`Node::start`] next.
    pub fn new<S: ReadStore + Clone + 'static>(
        config: NodeConfig,
        seed: u64,
        persisted: Persisted,
        store: S,
    ) -> Result<Node, NodeError> {
        let mut rng = Xoshiro256PlusPlus::seed_from_u64(seed);
        let membership_seed = rand::Rng::next_u64(&mut rng);
        // This process's dot-minting actor: fresh at every start (see `replica`).
        let fresh = loop {
            let a = rand::Rng::next_u64(&mut rng);
            if a != 0 {
                break NodeId::new(a);
            }
        };
        let actor = if config.data.actor_per_process {
            fresh
        } else {
            config.id
        };
        let membership = Membership::new(
            config.id,
            config.info,
            config.generation,
            config.membership.clone(),
            membership_seed,
            persisted.ring,
            persisted.leave_complete,
            config.auth.clone(),
        )?;
        let partitions = config.membership.ring.partitions();
        let d = &config.data;
        Ok(Node {
            id: config.id,
            ring_config: config.membership.ring,
            replicas: config.membership.replicas,
            membership,
            coordinator: coordinator::Coordinator::new(d.clone(), rand::Rng::next_u64(&mut rng)),
            replica: replica::Replica::new(
                Box::new(store.clone()),
                actor,
                partitions,
                d.cache_bytes,
            )
            .with_op_log(d.op_log)
            .with_siblings_max(d.siblings_max),
            hints: hints::Hints::new(
                Box::new(store.clone()),
                d.hint_interval,
                d.hint_batch_max,
                rand::Rng::next_u64(&mut rng),
            )?,
            sync: sync::PartitionSync::new(
                Box::new(store),
                d.handoff_interval,
                d.handoff_batch_max,
                rand::Rng::next_u64(&mut rng),
                sync::AeConfig {
                    interval: d.anti_entropy_interval,
                    in_flight_max: d.anti_entropy_in_flight_max.max(1),
                    bytes_per_sec: d.anti_entropy_bytes_per_sec.max(1),
                    page_keys: d.anti_entropy_page_keys.max(1),
                },
                sync::GcConfig {
                    interval: d.tombstone_gc_interval,
                    // Longer than any client request may last (see the GC module's notes).
                    quiet: d.tombstone_gc_quiet.max(d.timeout_max * 2),
                    keys_per_round: d.tombstone_gc_keys.max(1),
                    unchecked: d.tombstone_gc_unchecked,
                },
            )?,
            topo: Topology::default(),
            topo_version: None,
            journal: Journal::new(),
            mail: VecDeque::new(),
            calls: VecDeque::new(),
            out: Outbox::new(),
            staged: Vec::new(),
            handoff_done: false,
            intake_ready: None,
            tenures_seen: BTreeSet::new(),
            topo_primed: false,
            ack_waits: Vec::new(),
            refused_senders: 0,
            warned_senders: std::collections::BTreeSet::new(),
        })
    }

    /// This node's id.
    pub fn id(&self) -> NodeId {
        self.id
    }

    /// The actor that mints this process's dots.
    pub fn actor(&self) -> NodeId {
        self.replica.actor()
    }

    /// Starts the protocols: announces this node, contacts the seeds, arms the timers.
    pub fn start(&mut self, now: Duration) {
        self.membership.start(now, &mut self.out);
        self.refresh_topology(now);
        self.hints.start(&mut fx!(self, now));
        self.sync.start(&mut fx!(self, now));
        self.settle(now);
    }

    /// A SWIM packet arrived from node `from` (the id the transport authenticated). A packet
    /// that claims another sender, or is malformed, is logged and dropped.
    pub fn handle_gossip(&mut self, from: NodeId, bytes: &[u8], now: Duration) {
        match crate::membership::SwimCodec::sender(bytes) {
            Some(claimed) if claimed == from => {
                self.membership.handle_gossip(bytes, now, &mut self.out);
            }
            Some(claimed) => warn!(
                %from, %claimed,
                "rejected SWIM packet: it claims another sender than the authenticated peer"
            ),
            None => warn!(%from, len = bytes.len(), "rejected SWIM packet: malformed header"),
        }
        self.settle(now);
    }

    /// A peer message arrived from node `from` (the id the transport authenticated). Malformed
    /// messages are logged and dropped; they change nothing.
    pub fn handle_message(&mut self, from: NodeId, bytes: &[u8], now: Duration) {
        match protocol::decode::<PeerMessage>(bytes) {
            Ok(message) => self.dispatch(from, message, now),
            Err(e) => warn!(%from, error = %e, "rejected peer message"),
        }
        self.settle(now);
    }

    /// A client request arrived; its answer comes back as [`Output::Reply`] with `client`.
    pub fn handle_client(&mut self, client: u64, request: ClientRequest, now: Duration) {
        self.handle_client_traced(client, request, None, now);
    }

    /// [`Node::handle_client`] for a request with an id (HTTP `x-request-id`) that this
    /// node's log lines about it carry as `request_id`.
    pub fn handle_client_traced(
        &mut self,
        client: u64,
        request: ClientRequest,
        request_id: Option<std::sync::Arc<str>>,
        now: Duration,
    ) {
        self.coordinator
            .handle_client(client, request, request_id, &mut fx!(self, now));
        self.settle(now);
    }

    /// A timer this node asked for fired.
    pub fn handle_timer(&mut self, timer: Timer, now: Duration) {
        match timer {
            Timer::Membership(t) => self.membership.handle_timer(t, now, &mut self.out),
            Timer::Coordinator(t) => self.coordinator.handle_timer(t, &mut fx!(self, now)),
            Timer::Hints(t) => self.hints.handle_timer(t, &mut fx!(self, now)),
            Timer::Sync(t) => self
                .sync
                .handle_timer(t, self.hints.pending(), &mut fx!(self, now)),
        }
        self.settle(now);
    }

    /// Every [`Output::Persist`] numbered up to `seq` is on stable storage.
    pub fn handle_durable(&mut self, seq: u64, now: Duration) {
        for d in self.journal.durable(seq) {
            if matches!(
                d.message,
                PeerMessage::Coordinator(CoordinatorMessage::Ack { .. })
            ) && self.ack_waits.len() < ACK_WAITS_MAX
            {
                self.ack_waits.push(now.saturating_sub(d.since));
            }
            self.mail.push_back((d.to, d.message));
        }
        self.replica.durable(self.journal.durable_seq());
        self.settle(now);
    }

    /// Leaves the cluster for good: the node records `leaving`, hands its partitions to their
    /// future owners, records `left`, each step confirmed by a majority of the ring's members,
    /// then emits [`Output::Left`]. Until then it keeps trying and reports the leave in
    /// [`ClusterView::pending`].
    pub fn leave(&mut self, now: Duration) {
        self.handoff_done = false;
        self.membership.leave(now, &mut self.out);
        self.settle(now);
    }

    /// Cancels this node's leave while it has not completed ([`CancelLeaveError`] otherwise;
    /// nothing changes then): it stays a member and keeps its partitions.
    pub fn cancel_leave(&mut self, now: Duration) -> Result<(), CancelLeaveError> {
        let r = self.membership.cancel_leave(now, &mut self.out);
        self.settle(now);
        r
    }

    /// Removes the dead node `node` from the ring for good (an operator's decision, proven by
    /// the operator's `signature` of [`crate::membership::removal_message`] of `node`, else
    /// [`RemoveError::NotSigned`]); the change is pushed until a majority of the members
    /// confirm it ([`Node::removal_confirmed`]). Unless `force`, a node SWIM does not report
    /// down is refused ([`RemoveError::NotDown`]).
    pub fn remove(
        &mut self,
        node: NodeId,
        signature: Vec<u8>,
        force: bool,
        now: Duration,
    ) -> Result<(), RemoveError> {
        let r = self
            .membership
            .remove(node, signature, force, now, &mut self.out);
        self.settle(now);
        r
    }

    fn dispatch(&mut self, from: NodeId, message: PeerMessage, now: Duration) {
        // Only ring members (joining, member, leaving) take part in the data path. A node that
        // left or was removed may still run with a stale view (a paused VM written off by an
        // operator): its writes, hints, repairs and exchanges could bring back what the
        // members purged since, and its acknowledgements would count for nothing it holds.
        if from != self.id
            && !matches!(message, PeerMessage::Membership(_))
            && !self.topo.peers.contains(&from)
        {
            self.refused_senders += 1;
            if self.warned_senders.len() < WARNED_SENDERS_MAX && self.warned_senders.insert(from) {
                warn!(%from, "refused data-path messages from a node that is not a ring member (left, removed or unknown)");
            } else {
                debug!(%from, "refused a data-path message from a node that is not a ring member");
            }
            return;
        }
        match message {
            PeerMessage::Membership(m) => {
                self.membership.handle_message(from, m, now, &mut self.out)
            }
            PeerMessage::Coordinator(m) => {
                self.coordinator
                    .handle_message(from, m, &mut fx!(self, now))
            }
            PeerMessage::Replica(m) => {
                if let ReplicaMessage::Read { key, .. } = &m {
                    if from != self.id {
                        // The reply carries the key's state to another node.
                        self.sync.note_sent(key, now);
                    }
                }
                self.replica.handle_message(from, m, &mut fx!(self, now))
            }
            PeerMessage::Hints(m) => self.hints.handle_message(from, m, &mut fx!(self, now)),
            PeerMessage::Sync(m) => {
                self.sync
                    .handle_message(from, m, self.hints.pending(), &mut fx!(self, now))
            }
            PeerMessage::Stats(StatsMessage::Ask { id }) => {
                self.out.push(Output::StatsAsked { from, id });
            }
            PeerMessage::Stats(StatsMessage::Answer { id, stats }) => {
                self.out.push(Output::StatsAnswered { from, id, stats });
            }
        }
    }

    /// Asks ring member `to` for its figures over the peer transport; its answer comes back as
    /// [`Output::StatsAnswered`] with `id` (or never: the driver gives up on its own time). The
    /// message goes to the address the ring holds for `to`, and the transport delivers it only
    /// if the certificate there is `to`'s.
    pub fn ask_stats(&mut self, to: NodeId, id: u64, now: Duration) {
        if to != self.id && self.topo.peers.contains(&to) {
            self.transmit(to, StatsMessage::Ask { id }.into());
        }
        self.settle(now);
    }

    /// Answers member `to`'s [`Output::StatsAsked`] `id` with this node's figures, encoded by the
    /// driver; answers larger than [`STATS_BYTES_MAX`] are not sent.
    pub fn answer_stats(&mut self, to: NodeId, id: u64, stats: Vec<u8>, now: Duration) {
        if stats.len() <= STATS_BYTES_MAX && to != self.id {
            self.transmit(to, StatsMessage::Answer { id, stats }.into());
        }
        self.settle(now);
    }

    /// Ring records this node did not believe since start: `(refused, ignored)` — refused for
    /// a missing or bad signature, an absurd version, or a removal not signed by a member;
    /// ignored for being about another node and sent by one that is not a ring member.
    pub fn ring_refusals(&self) -> (u64, u64) {
        let r = self.membership.refusals();
        (r.refused, r.ignored)
    }

    /// Runs local deliveries and calls until none is left, follows membership changes, then
    /// turns the staged writes into one [`Output::Persist`].
    fn settle(&mut self, now: Duration) {
        loop {
            if let Some((to, message)) = self.mail.pop_front() {
                if to == self.id {
                    self.dispatch(to, message, now);
                } else {
                    self.sync.note_outgoing(&message, now);
                    self.transmit(to, message);
                }
                continue;
            }
            if let Some(call) = self.calls.pop_front() {
                match call {
                    Call::Replica(c) => self.replica.handle_call(c, &mut fx!(self, now)),
                    Call::Minted { req, result } => {
                        self.coordinator.on_minted(req, result, &mut fx!(self, now))
                    }
                    Call::Absent { req, op, context } => {
                        self.coordinator
                            .on_absent(req, op, context, &mut fx!(self, now))
                    }
                }
                continue;
            }
            if self.refresh_topology(now) {
                continue;
            }
            // Partitions this node gained are answered for once they caught up.
            if self.sync.catch_up(&mut fx!(self, now)) {
                self.set_held();
                continue;
            }
            if !self.staged.is_empty() {
                let keys = std::mem::take(&mut self.staged);
                self.sync.note_staged(keys, &mut fx!(self, now));
                continue;
            }
            // A leaving node also holds no hint any more (they went to other replicas).
            let done = self.sync.handoff_complete(&fx!(self, now)) && self.hints.pending() == 0;
            if done != self.handoff_done {
                self.handoff_done = done;
                self.membership.set_handoff_done(done, now, &mut self.out);
                continue;
            }
            // A joining node becomes a member only once it holds its partitions.
            let ready = self.sync.intake_ready(&fx!(self, now));
            if ready != self.intake_ready {
                self.intake_ready = ready.clone();
                if let Some(owners) = ready {
                    self.membership.set_data_ready(owners, now, &mut self.out);
                    continue;
                }
            }
            break;
        }
        if let Some((seq, batch)) = self.journal.take_batch() {
            self.out.push(Output::Persist { seq, batch });
        }
    }

    /// Rebuilds the topology when membership changed; tells the sub-machines that care.
    fn refresh_topology(&mut self, now: Duration) -> bool {
        let v = self.membership.topology_version();
        if self.topo_version == Some(v) {
            return false;
        }
        self.topo_version = Some(v);
        let before = self.topo.ring.take();
        self.topo = self.membership.topology(self.replicas);
        self.topo.peers = self
            .membership
            .ring_state()
            .iter()
            .filter(|(_, e)| e.status != RingStatus::Left)
            .map(|(id, _)| id)
            .collect();
        let suspect = self.missed_placements(before.as_ref());
        let staged = self.replica.staged_keys();
        self.topo.complete = self.sync.complete();
        if !suspect.is_empty() {
            self.sync.forget_held(&suspect, &mut fx!(self, now));
        }
        self.sync.topology_changed(&staged, &mut fx!(self, now));
        self.topo.complete = self.sync.complete();
        self.sync.catch_up(&mut fx!(self, now));
        self.set_held();
        self.hints.deliver(&mut fx!(self, now));
        true
    }

    /// Partitions this node replicates now and may have missed writes of, because placements
    /// came and went that it never saw (it was down or cut off meanwhile): while another node
    /// replicated them in its stead, the writes went there. Two signs, given the placement
    /// `before` this refresh:
    ///
    /// - a node first seen gone (`left`) that was never seen a member or leaving: it may have
    ///   been one, unseen, and taken partitions from this node for that while (a failed join
    ///   that an operator removed looks the same; only the partitions it would have taken
    ///   from this node are suspected);
    /// - the owner set changed by more than one node at once: an intermediate placement may
    ///   have moved a partition away and back; every partition whose replicas changed is
    ///   suspected.
    ///
    /// (A change seen as it happens needs nothing: a partition this node stops replicating is no
    /// longer complete, and one it gains is caught up.)
    fn missed_placements(&mut self, before: Option<&Ring>) -> BTreeSet<crate::ring::PartitionId> {
        let mut missed = Vec::new();
        for (id, e) in self.membership.ring_state().iter() {
            match e.status {
                RingStatus::Joining => {}
                RingStatus::Member | RingStatus::Leaving => {
                    self.tenures_seen.insert(id);
                }
                RingStatus::Left => {
                    if self.tenures_seen.insert(id) && self.topo_primed && id != self.id {
                        missed.push(id);
                    }
                }
            }
        }
        self.topo_primed = true;
        let mut suspect = BTreeSet::new();
        let Some(now) = self.topo.ring.as_ref() else {
            return suspect;
        };
        let (n, me) = (self.topo.n, self.id);
        let mine = |r: &Ring, p| r.preference_list(p, n).contains(&me);
        for x in missed {
            let members = now.members().iter().copied().chain([Member::new(x)]);
            let Ok(with_x) = Ring::new(members, now.config()) else {
                continue;
            };
            suspect.extend(
                self.topo
                    .partition_ids()
                    .filter(|&p| mine(now, p) && !mine(&with_x, p)),
            );
        }
        if let Some(before) = before {
            let ids = |r: &Ring| r.members().iter().map(|m| m.id).collect::<BTreeSet<_>>();
            if ids(before).symmetric_difference(&ids(now)).count() > 1 {
                suspect.extend(self.topo.partition_ids().filter(|&p| {
                    mine(now, p) && before.preference_list(p, n) != now.preference_list(p, n)
                }));
            }
        }
        suspect
    }

    /// Copies the sync sub-machine's complete copies into the topology.
    fn set_held(&mut self) {
        self.topo.held = self.sync.held().clone();
        self.topo.catching_up = self.sync.catching_up();
    }

    fn transmit(&mut self, to: NodeId, message: PeerMessage) {
        let Some(addr) = self.topo.addr(to) else {
            debug!(%to, "no address for a peer; message dropped");
            return;
        };
        self.out.send(Some(to), addr, message);
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

    /// Replica-side write latencies since the last call: for each write acknowledgement this
    /// node's replica released after waiting for durability, the time from the write's arrival
    /// to its release (in the driver's time). For metrics; the core keeps at most
    /// [`ACK_WAITS_MAX`] between calls.
    pub fn take_ack_waits(&mut self) -> Vec<Duration> {
        std::mem::take(&mut self.ack_waits)
    }

    /// Counters of the data path.
    pub fn data_stats(&self) -> DataStats {
        DataStats {
            requests_in_flight: self.coordinator.in_flight(),
            hints_pending: self.hints.pending(),
            handoff_pending: self.sync.pending(),
            staged_keys: self.replica.overlay_len(),
            waiting_for_durability: self.journal.waiting(),
            type_conflicts: self.replica.type_conflicts(),
            merges_refused: self.replica.merges_refused(),
            sends_refused: self.hints.refused() + self.sync.refused(),
            op_ids_forgotten_early: self.replica.op_ids_forgotten().0,
            op_ids_forgotten_unstable: self.replica.op_ids_forgotten().1,
            siblings_refused: self.replica.siblings_refused(),
            refused_senders: self.refused_senders,
            ring_entries_refused: self.membership.refusals().refused,
            ring_entries_ignored: self.membership.refusals().ignored,
            crowded_keys: self
                .replica
                .crowded_keys()
                .into_iter()
                .map(|(key, siblings)| CrowdedKey::new(&key, siblings))
                .collect(),
            exchanges_in_flight: self.sync.exchanges_in_flight(),
            keys_dropped: self.replica.keys_dropped(),
            keys_held: self.sync.keys_held(),
            partitions_catching_up: self.topo.catching_up,
            tombstones_purged: self.replica.tombstones_purged(),
            gc_rounds: self.sync.gc_rounds(),
            read_repairs: self.coordinator.read_repairs(),
            hints_delivered: self.hints.delivered(),
        }
    }

    /// Merkle-tree figures of every partition this node replicates (`GET /v1/partitions`).
    pub fn partitions(&mut self, now: Duration) -> Vec<PartitionInfo> {
        self.sync.partitions(&fx!(self, now))
    }

    /// The Merkle root of every partition this node holds keys of (empty partitions left out).
    pub fn merkle_roots(&mut self) -> BTreeMap<crate::ring::PartitionId, crate::merkle::Digest> {
        self.sync.roots()
    }

    /// Starts comparing partition `partition` (or every partition this node replicates) with
    /// every other replica of it by Merkle-tree exchange; returns the repair's id, whose
    /// progress [`Node::repair_progress`] reports. Exchanges start at the next sync tick.
    pub fn start_repair(
        &mut self,
        partition: Option<u16>,
        now: Duration,
    ) -> Result<u64, ClientError> {
        if let Some(p) = partition {
            if u32::from(p) >= self.ring_config.partitions() {
                return Err(ClientError::BadRequest(format!(
                    "partition {p} does not exist: the ring has {} partitions",
                    self.ring_config.partitions()
                )));
            }
        }
        let only = partition.map(crate::ring::PartitionId::new);
        Ok(self.sync.start_repair(only, &fx!(self, now)))
    }

    /// Progress of repair `id` (0: the latest), if this node ran it.
    pub fn repair_progress(&self, id: u64) -> Option<RepairProgress> {
        self.sync.repair_progress(id)
    }

    /// This node's local copy of `key` (for checks and tools; clients read through quorums).
    pub fn local_object(&self, key: &[u8]) -> Result<Option<Object>, ClientError> {
        self.replica.peek(key)
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
            data: None,
        }
    }
}

#[cfg(test)]
mod tests;
