//! The simulated cluster: node slots, their processes and disks, and the step loop.
//!
//! A *slot* is one machine: a fixed node id, its addresses, a [`Disk`], and at most one running
//! process — a production [`Node`]. The cluster is the simulated driver of those nodes: it feeds
//! each node its inputs (datagrams, messages, timer firings) at their simulated time, drains the
//! node's outputs after every input, hands sends to the [`Network`], queues timers, and writes
//! persisted state to the disk — what `chorus::runtime` does with sockets, clocks and RocksDB,
//! and nothing more. It makes no protocol decision.
//!
//! # Outputs, durability and crashes at any point
//!
//! A node's outputs go into the slot's outbox and are performed in order. Every write goes to
//! the disk unsynced; a sync takes simulated time ([`ClusterConfig::disk_sync`]) and covers
//! everything written before it started, and writes made while one runs wait for the next (group
//! commit). A metadata write is a barrier: nothing after it in the outbox is performed until a
//! sync covering it completes — what the core's documentation asks of every driver. Data batches
//! are not barriers: the node learns they are durable through `handle_durable` when a sync
//! covering them completes. A crash loses the outbox and every unsynced write, and every client
//! request in flight at the node ends as a lost connection. [`Cluster::crash_after_outputs`] arms a crash that fires
//! between two outputs of the node (after `k` more are performed), so a crash can fall between a
//! persist and the message that depends on it, not only between events.
//!
//! Workloads act on the cluster through its control surface ([`Cluster::add_node`],
//! [`Cluster::start`], [`Cluster::crash`], [`Cluster::leave`], [`Cluster::network_mut`]) and read
//! it through [`Cluster::view`] and [`Cluster::snapshot`]. The cluster owns the event queue and
//! the trace; wake-ups it cannot handle itself (a workload's timer) are returned from
//! [`Cluster::step`] to the caller, which owns the workloads.

use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::time::Duration;

use chorus::crdt::OpLogPolicy;
use chorus::membership::{NodeInfo, RingStatus};
use chorus::node::{
    CancelLeaveError, ClientError, ClientReply, ClientRequest, ClusterView, Node, NodeConfig,
    NodeError, Object, Output, Persisted, RemoveError, Timer,
};
use chorus::NodeId;

use crate::check::datapath::{Asked, DataPathMonitor};
use crate::check::dots::DotMonitor;
use crate::disk::{Disk, DiskError};
use crate::network::{DatagramFate, NetConfig, Network};
use crate::rng::{self, SimRng};
use crate::scheduler::{Scheduler, EVENTS_PENDING_MAX};
pub use crate::snapshot::ProcessState;
use crate::snapshot::{ClusterSnapshot, NodeObservation, NodeSnapshot, Observation};
use crate::trace::{End, Kind, Trace};

/// How long a node that left keeps running so its last sends get out (the runtime's
/// `LEAVE_FLUSH`).
pub const LEAVE_FLUSH: Duration = Duration::from_millis(500);

/// Most node slots a cluster can have (addresses are `10.0.x.y`).
pub const SLOTS_MAX: usize = 1000;

/// Static parameters of a simulated cluster.
#[derive(Debug, Clone)]
pub struct ClusterConfig {
    /// The network model.
    pub net: NetConfig,
    /// How long a node runs after it has left.
    pub leave_flush: Duration,
    /// How long a disk sync (fsync) takes: uniform in this range, and now and then (one in
    /// [`ClusterConfig::disk_slow_one_in`]) ten times the upper end.
    pub disk_sync: (Duration, Duration),
    /// One sync in this many is slow.
    pub disk_slow_one_in: u32,
    /// Bound on pending events.
    pub events_pending_max: usize,
    /// Record an [`Observation`] after every step (for the per-step safety checker).
    pub observe: bool,
    /// Adjusts every node's configuration before it starts (scenarios that plant a bug).
    pub tune: Option<fn(&mut NodeConfig)>,
    /// How often nodes compare each partition by Merkle-tree exchange (shorter than a real
    /// node's default, so that the quiet phase sees several rounds); `None`: off.
    pub anti_entropy_interval: Option<Duration>,
    /// Turn read repair and hints off: replicas converge by anti-entropy alone.
    pub repairs_off: bool,
    /// How often nodes look for tombstones to purge (shorter than a real node's default);
    /// `None`: never. The quiet window is [`TOMBSTONE_GC_QUIET`], and client requests may
    /// last at most [`CLIENT_TIMEOUT_MAX`].
    pub tombstone_gc_interval: Option<Duration>,
    /// How long, and for how many updates, every node remembers CRDT operation ids (`None`:
    /// the node's default). The tiny op-log profile shrinks it ([`crate::profile`]).
    pub op_log: Option<OpLogPolicy>,
}

/// Tombstone GC's quiet window in the simulator: longer than any message stays in the
/// simulated network (the stream timeout plus the capped latency tail) and than twice
/// [`CLIENT_TIMEOUT_MAX`].
pub const TOMBSTONE_GC_QUIET: Duration = Duration::from_secs(30);

/// The longest client request timeout simulated nodes accept.
pub const CLIENT_TIMEOUT_MAX: Duration = Duration::from_secs(10);

impl Default for ClusterConfig {
    fn default() -> Self {
        ClusterConfig {
            net: NetConfig::default(),
            leave_flush: LEAVE_FLUSH,
            disk_sync: (Duration::from_micros(200), Duration::from_millis(4)),
            disk_slow_one_in: 50,
            events_pending_max: EVENTS_PENDING_MAX,
            observe: true,
            tune: None,
            anti_entropy_interval: Some(Duration::from_secs(15)),
            repairs_off: false,
            tombstone_gc_interval: Some(Duration::from_secs(10)),
            op_log: None,
        }
    }
}

/// Why a control action was refused. Each refusal leaves the cluster unchanged, except
/// [`ControlError::Start`], after which the disk's generation has been bumped (as a real start
/// attempt would) and the slot counts as crashed.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// The slot does not exist.
    #[error("no node n{0}")]
    NoSuchNode(usize),
    /// The action needs a running process.
    #[error("n{node} is not running ({state})")]
    NotRunning {
        /// The slot.
        node: usize,
        /// Its state.
        state: ProcessState,
    },
    /// The action needs a stopped process.
    #[error("n{node} is already running ({state})")]
    Running {
        /// The slot.
        node: usize,
        /// Its state.
        state: ProcessState,
    },
    /// The node's metadata could not be loaded.
    #[error("n{node}: {source}")]
    Disk {
        /// The slot.
        node: usize,
        /// The disk error.
        source: DiskError,
    },
    /// The node core refused to start.
    #[error("n{node}: {source}")]
    Start {
        /// The slot.
        node: usize,
        /// The core's error.
        source: NodeError,
    },
    /// No more slots.
    #[error("too many nodes (at most {SLOTS_MAX})")]
    TooManyNodes,
    /// The node refused to cancel its leave.
    #[error("n{node} refused to cancel its leave: {source}")]
    CancelLeave {
        /// The node.
        node: usize,
        /// Why.
        source: CancelLeaveError,
    },
    /// The node refused the removal.
    #[error("n{via} refused to remove n{node}: {source}")]
    Remove {
        /// The node asked.
        via: usize,
        /// The node to remove.
        node: usize,
        /// Why.
        source: RemoveError,
    },
}

enum Process {
    NotStarted,
    Up(Box<Node>),
    Leaving(Box<Node>),
    Left,
    Crashed,
}

/// A client request in flight at a node.
struct ClientCall {
    /// The workload that sent it, and its token.
    actor: usize,
    token: u64,
    /// What a success must prove (writes and updates; `None` for reads).
    asked: Option<Asked>,
}

struct Slot {
    id: NodeId,
    info: NodeInfo,
    seeds: Vec<SocketAddr>,
    disk: Disk,
    process: Process,
    /// Number of processes started in this slot; identifies the current one.
    epoch: u64,
    /// Generation of the current (or last) process.
    generation: u64,
    /// Whether the node's leave completed: it reported [`Output::Left`] and the mark is durable.
    left_reported: bool,
    /// Outputs taken from the node and not yet performed.
    outbox: VecDeque<Output>,
    /// A metadata write is not yet durable: the outbox waits for it.
    barrier: bool,
    /// Metadata writes so far in this process (a sync covers those made before it started).
    meta_writes: u64,
    /// The completed-leave mark was written as metadata write number this.
    left_written: Option<u64>,
    /// Highest data batch written to the disk.
    data_written: u64,
    /// Highest data batch reported durable to the node.
    data_reported: u64,
    /// The sync in flight: (data batch, metadata writes) it covers.
    sync_in_flight: Option<(u64, u64)>,
    /// Client requests in flight at this node, by handle.
    clients: BTreeMap<u64, ClientCall>,
    /// Crash after performing this many more outputs.
    crash_trap: Option<u32>,
    /// An operator removed this machine from the ring.
    removed: bool,
    /// The write quorum its current (or last) process uses when a request names none.
    default_w: usize,
    /// Its replicas per key (N).
    ring_n: usize,
    /// The process is paused ([`Cluster::pause`]): the events it would have handled meanwhile
    /// (timer firings, sync completions), in order, handed to it when it resumes.
    paused: Option<Vec<Event>>,
}

impl Slot {
    fn state(&self) -> ProcessState {
        match self.process {
            Process::NotStarted => ProcessState::NotStarted,
            Process::Up(_) if self.paused.is_some() => ProcessState::Paused,
            Process::Up(_) => ProcessState::Up,
            Process::Leaving(_) => ProcessState::Leaving,
            Process::Left => ProcessState::Left,
            Process::Crashed => ProcessState::Crashed,
        }
    }

    fn node(&self) -> Option<&Node> {
        match &self.process {
            Process::Up(n) | Process::Leaving(n) => Some(n),
            _ => None,
        }
    }

    fn node_mut(&mut self) -> Option<&mut Node> {
        match &mut self.process {
            Process::Up(n) | Process::Leaving(n) => Some(n),
            _ => None,
        }
    }
}

/// A peer message in flight.
struct InFlight {
    from: usize,
    to: usize,
    /// The sender's process when it sent.
    from_epoch: u64,
    /// The destination's process when the message was sent, if one was running: the
    /// connection belongs to it.
    to_epoch: Option<u64>,
    sent_at: Duration,
    bytes: Vec<u8>,
}

enum Event {
    Gossip {
        from: usize,
        to: usize,
        bytes: Vec<u8>,
    },
    Message(Box<InFlight>),
    Timer {
        node: usize,
        epoch: u64,
        timer: Timer,
    },
    SyncDone {
        node: usize,
        epoch: u64,
    },
    ClientReply {
        actor: usize,
        token: u64,
        reply: Box<ClientReply>,
    },
    CrashDeadline {
        node: usize,
        epoch: u64,
    },
    StopLeft {
        node: usize,
        epoch: u64,
    },
    Wake {
        actor: usize,
        token: u64,
    },
}

/// What [`Cluster::step`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// No event is due by the horizon.
    Idle,
    /// An event was handled inside the cluster.
    Handled,
    /// A workload's wake-up is due; the caller dispatches it.
    Wake {
        /// The workload's index.
        actor: usize,
        /// The token it asked to be woken with.
        token: u64,
    },
    /// The answer to a workload's client request arrived; the caller dispatches it.
    Reply {
        /// The workload's index.
        actor: usize,
        /// The token it sent the request with.
        token: u64,
        /// The answer.
        reply: Box<ClientReply>,
    },
}

/// Counters of what the network and the nodes did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stats {
    /// Events handled.
    pub events: u64,
    /// Datagrams delivered.
    pub gossip_delivered: u64,
    /// Messages delivered.
    pub messages_delivered: u64,
    /// Timer firings delivered.
    pub timers: u64,
    /// Dropped datagrams and messages by reason.
    pub dropped: BTreeMap<&'static str, u64>,
    /// Disk syncs completed.
    pub syncs: u64,
    /// Outputs lost because their process crashed before performing them.
    pub outputs_lost: u64,
}

/// The simulated cluster.
pub struct Cluster {
    config: ClusterConfig,
    seed: u64,
    now: Duration,
    queue: Scheduler<Event>,
    net: Network,
    slots: Vec<Slot>,
    by_addr: BTreeMap<SocketAddr, usize>,
    /// Addresses handed out so far (a restart may move a machine to a new one).
    hosts: u32,
    disk_rng: SimRng,
    trace: Trace,
    stats: Stats,
    observations: Vec<Observation>,
    next_client: u64,
    /// Keys an operator's removal lost something of, with the time of the last such removal.
    lost: BTreeMap<Vec<u8>, Duration>,
    /// The acknowledgement contract, checked at every message sent.
    datapath: DataPathMonitor,
    /// No dot minted twice, checked at every data write.
    dots: DotMonitor,
    /// Each slot's ring partition count (from its configuration at its last start).
    partitions: BTreeMap<usize, u32>,
}

impl Cluster {
    /// An empty cluster for the run with `seed`, recording into `trace`.
    pub fn new(config: ClusterConfig, seed: u64, trace: Trace) -> Self {
        Cluster {
            net: Network::new(config.net.clone(), seed),
            queue: Scheduler::new(config.events_pending_max),
            config,
            seed,
            now: Duration::ZERO,
            slots: Vec::new(),
            by_addr: BTreeMap::new(),
            hosts: 0,
            disk_rng: rng::stream(seed, "disk"),
            trace,
            stats: Stats::default(),
            observations: Vec::new(),
            next_client: 0,
            lost: BTreeMap::new(),
            datapath: DataPathMonitor::new(),
            dots: DotMonitor::new(),
            partitions: BTreeMap::new(),
        }
    }

    /// The data-path monitor: violations of the acknowledgement contract seen so far.
    pub fn datapath(&self) -> &DataPathMonitor {
        &self.datapath
    }

    /// The dot monitor: dots minted twice seen so far.
    pub fn dots(&self) -> &DotMonitor {
        &self.dots
    }

    /// The current simulated time.
    pub fn now(&self) -> Duration {
        self.now
    }

    /// Number of node slots (started or not).
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    /// Whether there is no node slot.
    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// A slot's process state.
    pub fn state(&self, node: usize) -> ProcessState {
        self.slots
            .get(node)
            .map_or(ProcessState::NotStarted, Slot::state)
    }

    /// A slot's node id.
    pub fn id(&self, node: usize) -> Option<NodeId> {
        self.slots.get(node).map(|s| s.id)
    }

    /// Generation of a slot's current (or last) process; 0 if never started.
    pub fn generation(&self, node: usize) -> u64 {
        self.slots.get(node).map_or(0, |s| s.generation)
    }

    /// The QUIC address of a slot.
    pub fn addr(&self, node: usize) -> Option<SocketAddr> {
        self.slots.get(node).map(|s| s.info.quic_addr)
    }

    /// The cluster as a running node sees it.
    pub fn view(&self, node: usize) -> Option<ClusterView> {
        self.slots.get(node)?.node().map(Node::cluster_view)
    }

    /// How many partitions a running node replicates but has not caught up yet (it refuses
    /// their reads meanwhile).
    pub fn catching_up(&self, node: usize) -> Option<usize> {
        self.slots
            .get(node)?
            .node()
            .map(|n| n.data_stats().partitions_catching_up)
    }

    /// A running node's own ring status.
    pub fn own_status(&self, node: usize) -> Option<RingStatus> {
        Some(self.slots.get(node)?.node()?.own_status())
    }

    /// Whether the removal of `node` that `via` started is confirmed by a majority (`None`:
    /// `via` is not running or started no such removal).
    pub fn removal_confirmed(&self, via: usize, node: usize) -> Option<bool> {
        let id = self.id(node)?;
        self.slots.get(via)?.node()?.removal_confirmed(id)
    }

    /// Whether an operator removed the machine.
    pub fn removed(&self, node: usize) -> bool {
        self.slots.get(node).is_some_and(|s| s.removed)
    }

    /// Takes the observations recorded since the last call (see [`ClusterConfig::observe`]).
    pub fn take_observations(&mut self) -> Vec<Observation> {
        std::mem::take(&mut self.observations)
    }

    /// The network, to read its state.
    pub fn network(&self) -> &Network {
        &self.net
    }

    /// The network, to inject or heal faults.
    pub fn network_mut(&mut self) -> &mut Network {
        &mut self.net
    }

    /// The trace.
    pub fn trace(&self) -> &Trace {
        &self.trace
    }

    /// The trace, to record workload operations.
    pub fn trace_mut(&mut self) -> &mut Trace {
        &mut self.trace
    }

    /// Counters so far.
    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// Whether the event queue ever overflowed (the run is then invalid).
    pub fn overflowed(&self) -> bool {
        self.queue.overflowed()
    }

    /// Adds a machine (not started) that will join through the nodes `seeds`; returns its slot.
    pub fn add_node(&mut self, seeds: &[usize]) -> Result<usize, ControlError> {
        let i = self.slots.len();
        if i >= SLOTS_MAX {
            return Err(ControlError::TooManyNodes);
        }
        let info = self.next_address();
        let mut raw = rng::derive(self.seed, "node-id", i as u64);
        while raw == 0 || self.slots.iter().any(|s| s.id.get() == raw) {
            raw = rng::mix64(raw);
        }
        let seeds = seeds
            .iter()
            .filter(|&&s| s != i)
            .filter_map(|&s| self.addr(s))
            .collect();
        self.slots.push(Slot {
            id: NodeId::new(raw),
            info,
            seeds,
            disk: Disk::new(),
            process: Process::NotStarted,
            epoch: 0,
            generation: 0,
            left_reported: false,
            outbox: VecDeque::new(),
            barrier: false,
            meta_writes: 0,
            left_written: None,
            data_written: 0,
            data_reported: 0,
            sync_in_flight: None,
            clients: BTreeMap::new(),
            crash_trap: None,
            removed: false,
            default_w: 0,
            ring_n: 0,
            paused: None,
        });
        self.by_addr.insert(info.quic_addr, i);
        self.trace.text(
            self.now,
            Kind::Process,
            End::Node(i),
            End::None,
            format_args!(
                "machine n{i}: id {} at {}",
                NodeId::new(raw),
                info.quic_addr
            ),
        );
        Ok(i)
    }

    /// A fresh address (`10.0.x.y`) no machine has had.
    fn next_address(&mut self) -> NodeInfo {
        self.hosts += 1;
        let host = self.hosts;
        let ip = [
            10,
            (host >> 16) as u8,
            (host >> 8) as u8,
            (host & 0xff) as u8,
        ];
        NodeInfo {
            quic_addr: SocketAddr::from((ip, 7000)),
            http_addr: SocketAddr::from((ip, 8000)),
        }
    }

    /// Moves a stopped machine to a new address (its next start announces it): what happens
    /// when a machine comes back with another IP.
    pub fn move_address(&mut self, node: usize) -> Result<SocketAddr, ControlError> {
        let state = self.state(node);
        if node >= self.slots.len() {
            return Err(ControlError::NoSuchNode(node));
        }
        if state.is_running() {
            return Err(ControlError::Running { node, state });
        }
        let info = self.next_address();
        let old = std::mem::replace(&mut self.slots[node].info, info);
        self.by_addr.remove(&old.quic_addr);
        self.by_addr.insert(info.quic_addr, node);
        self.trace.text(
            self.now,
            Kind::Process,
            End::Node(node),
            End::None,
            format_args!(
                "machine n{node} moves from {} to {}",
                old.quic_addr, info.quic_addr
            ),
        );
        Ok(info.quic_addr)
    }

    /// Starts a process on a stopped slot, from what its disk holds: the generation is bumped,
    /// the ring state loaded, as the production runtime does. Returns the new generation.
    /// Starting a slot that left is allowed — it is what an operator might try — and the core
    /// is expected to refuse it. A node that resumes an unfinished leave runs as
    /// [`ProcessState::Leaving`].
    pub fn start(&mut self, node: usize) -> Result<u64, ControlError> {
        let now = self.now;
        let slot = self
            .slots
            .get_mut(node)
            .ok_or(ControlError::NoSuchNode(node))?;
        let state = slot.state();
        if state.is_running() {
            return Err(ControlError::Running { node, state });
        }
        let persisted = slot
            .disk
            .load_for_start(slot.id)
            .map_err(|source| ControlError::Disk { node, source })?;
        slot.generation = persisted.generation;
        // Ring entries are signed with a deterministic stand-in for the certificate keys.
        let auth = std::sync::Arc::new(chorus::membership::InsecureTestAuth::new(persisted.id));
        let mut config = NodeConfig::new(
            persisted.id,
            persisted.generation,
            slot.info,
            slot.seeds.clone(),
            auth,
        );
        config.data.anti_entropy_interval = self.config.anti_entropy_interval;
        config.data.tombstone_gc_interval = self.config.tombstone_gc_interval;
        config.data.tombstone_gc_quiet = TOMBSTONE_GC_QUIET;
        config.data.timeout_max = CLIENT_TIMEOUT_MAX;
        if let Some(policy) = self.config.op_log {
            config.data.op_log = policy;
        }
        if self.config.repairs_off {
            config.data.read_repair = false;
            config.data.hints = false;
        }
        if let Some(tune) = self.config.tune {
            tune(&mut config);
        }
        self.partitions
            .insert(node, config.membership.ring.partitions());
        self.datapath
            .partitions(node, config.membership.ring.partitions());
        slot.default_w = config.data.w;
        slot.ring_n = config.membership.replicas;
        let node_seed = rng::derive(self.seed, "node-rng", ((node as u64) << 32) | slot.epoch);
        let initial = persisted.ring.get(persisted.id).map(|e| e.status);
        let saved = Persisted {
            ring: persisted.ring,
            leave_complete: persisted.leave_complete,
        };
        match Node::new(config, node_seed, saved, slot.disk.handle()) {
            Ok(mut n) => {
                slot.epoch += 1;
                slot.outbox.clear();
                slot.barrier = false;
                slot.meta_writes = 0;
                slot.left_written = None;
                slot.data_written = 0;
                slot.data_reported = 0;
                slot.sync_in_flight = None;
                slot.crash_trap = None;
                let _log = crate::log::enter(node, now);
                n.start(now);
                let leaving = n.has_left();
                slot.process = if leaving {
                    Process::Leaving(Box::new(n))
                } else {
                    Process::Up(Box::new(n))
                };
                let (generation, epoch, id, addr) =
                    (slot.generation, slot.epoch, slot.id, slot.info.quic_addr);
                self.trace.text(
                    now,
                    Kind::Process,
                    End::Node(node),
                    End::None,
                    format_args!(
                        "start generation {generation}{}",
                        if leaving { " (resuming a leave)" } else { "" }
                    ),
                );
                if self.config.observe {
                    self.observations.push(Observation::Started {
                        slot: node,
                        id,
                        epoch,
                        generation,
                        addr,
                        initial,
                    });
                }
                self.drain(node);
                Ok(generation)
            }
            Err(source) => {
                // A node that left stays left (the core refuses it); any other failed start
                // leaves a stopped process behind.
                if state != ProcessState::Left {
                    slot.process = Process::Crashed;
                }
                self.trace.text(
                    now,
                    Kind::Process,
                    End::Node(node),
                    End::None,
                    format_args!("start failed: {source}"),
                );
                Err(ControlError::Start { node, source })
            }
        }
    }

    /// Kills a running process: pending outputs, timers and in-flight connections die with it,
    /// and its disk loses every unsynced write.
    pub fn crash(&mut self, node: usize) -> Result<(), ControlError> {
        let slot = self
            .slots
            .get_mut(node)
            .ok_or(ControlError::NoSuchNode(node))?;
        let state = slot.state();
        if !state.is_running() {
            return Err(ControlError::NotRunning { node, state });
        }
        self.kill(node, "crash");
        Ok(())
    }

    /// Arms a crash of a running process between two of its outputs: it crashes right before
    /// performing its `k`-th output from now (its outbox and unsynced writes are lost), or at
    /// `deadline` from now if it has not performed that many by then.
    pub fn crash_after_outputs(
        &mut self,
        node: usize,
        k: u32,
        deadline: Duration,
    ) -> Result<(), ControlError> {
        let slot = self
            .slots
            .get_mut(node)
            .ok_or(ControlError::NoSuchNode(node))?;
        let state = slot.state();
        if !state.is_running() {
            return Err(ControlError::NotRunning { node, state });
        }
        slot.crash_trap = Some(k);
        let epoch = slot.epoch;
        self.queue
            .schedule(self.now + deadline, Event::CrashDeadline { node, epoch });
        // Outputs already waiting behind a sync count too: the crash may fall among them.
        self.pump(node);
        Ok(())
    }

    fn kill(&mut self, node: usize, why: &str) {
        let slot = &mut self.slots[node];
        slot.process = Process::Crashed;
        // A paused process dies too (`SIGKILL` reaches a stopped process).
        slot.paused = None;
        self.stats.outputs_lost += slot.outbox.len() as u64;
        slot.outbox.clear();
        slot.barrier = false;
        slot.sync_in_flight = None;
        slot.crash_trap = None;
        slot.disk.crash();
        let (id, epoch) = (slot.id, slot.epoch);
        self.lose_clients(node);
        self.trace.text(
            self.now,
            Kind::Process,
            End::Node(node),
            End::None,
            format_args!("{why}"),
        );
        if self.config.observe {
            self.observations.push(Observation::Stopped {
                slot: node,
                id,
                epoch,
            });
        }
    }

    /// Clients of a process that stopped lose their connection: a write's fate is unknown.
    fn lose_clients(&mut self, node: usize) {
        let lost = std::mem::take(&mut self.slots[node].clients);
        for (
            _,
            ClientCall {
                actor,
                token,
                asked,
            },
        ) in lost
        {
            let reply = ClientReply::Failed(ClientError::Unavailable {
                message: "connection lost: the node stopped".into(),
                indeterminate: asked.is_some(),
                acks: 0,
                needed: 1,
            });
            self.queue.schedule(
                self.now + Duration::from_millis(1),
                Event::ClientReply {
                    actor,
                    token,
                    reply: Box::new(reply),
                },
            );
        }
    }

    /// Asks the running node `via` to remove the stopped or paused machine `node` from the ring
    /// for good (an operator's decision: the machine is gone). From now on the machine counts
    /// as removed; it must not be started again (a paused one may still resume, see
    /// [`Cluster::pause`]).
    pub fn remove(&mut self, via: usize, node: usize) -> Result<(), ControlError> {
        let now = self.now;
        let target = self.slots.get(node).ok_or(ControlError::NoSuchNode(node))?;
        let state = target.state();
        // A paused machine may be written off too (nothing shows it running), and a removal
        // may be asked again of a machine already written off, whatever it does since.
        if state.is_running() && state != ProcessState::Paused && !target.removed {
            return Err(ControlError::Running { node, state });
        }
        let id = target.id;
        let v = self
            .slots
            .get_mut(via)
            .ok_or(ControlError::NoSuchNode(via))?;
        let vstate = v.state();
        let Some(n) = v.node_mut().filter(|_| vstate != ProcessState::Paused) else {
            return Err(ControlError::NotRunning {
                node: via,
                state: vstate,
            });
        };
        let result = {
            let _log = crate::log::enter(via, now);
            // The operator knows the machine is gone (it is not running): a forced removal,
            // signed with the (stand-in) operator key.
            let signature = chorus::membership::InsecureTestAuth::operator_sign(
                &chorus::membership::removal_message(id),
            );
            n.remove(id, signature, true, now)
        };
        result.map_err(|source| ControlError::Remove { via, node, source })?;
        self.slots[node].removed = true;
        self.observations.push(Observation::Removed { slot: node });
        self.note_losses(node);
        self.trace.text(
            now,
            Kind::Process,
            End::Node(via),
            End::Node(node),
            format_args!("remove n{node} requested"),
        );
        self.drain(via);
        Ok(())
    }

    /// The machine `node` is gone for good: every key whose copy on its disk holds something
    /// that no machine still in the cluster holds (in its data or in a hint) lost that
    /// something with it. Recorded so the checkers excuse what was acknowledged before; data
    /// moves between machines (handoff, drops by old owners), so who acknowledged a write says
    /// nothing about who holds it now.
    fn note_losses(&mut self, node: usize) {
        let gone = self.slots[node].disk.holdings();
        if gone.is_empty() {
            return;
        }
        let mut kept: BTreeMap<Vec<u8>, Object> = BTreeMap::new();
        for s in self
            .slots
            .iter()
            .filter(|s| !s.removed && !matches!(s.process, Process::Left | Process::NotStarted))
        {
            for (key, object) in s.disk.holdings() {
                if !gone.contains_key(&key) {
                    continue;
                }
                match kept.get_mut(&key) {
                    Some(k) => {
                        k.merge(&object);
                    }
                    None => {
                        kept.insert(key, object);
                    }
                }
            }
        }
        let now = self.now;
        for (key, object) in gone {
            let covered = kept.get(&key).is_some_and(|k| {
                let mut with = k.clone();
                with.merge(&object);
                with == *k
            });
            if !covered {
                self.lost.insert(key, now);
            }
        }
    }

    /// Asks a running node to leave the cluster (the admin `leave` request). From now on the
    /// slot is [`ProcessState::Leaving`]; it stops [`ClusterConfig::leave_flush`] after the node
    /// reports that it has left ([`Cluster::left_reported`]).
    pub fn leave(&mut self, node: usize) -> Result<(), ControlError> {
        let now = self.now;
        let slot = self
            .slots
            .get_mut(node)
            .ok_or(ControlError::NoSuchNode(node))?;
        let state = slot.state();
        if state != ProcessState::Up {
            return Err(ControlError::NotRunning { node, state });
        }
        let Process::Up(mut n) = std::mem::replace(&mut slot.process, Process::Left) else {
            return Err(ControlError::NotRunning { node, state });
        };
        {
            let _log = crate::log::enter(node, now);
            n.leave(now);
        }
        slot.process = Process::Leaving(n);
        self.trace.text(
            now,
            Kind::Process,
            End::Node(node),
            End::None,
            format_args!("leave requested"),
        );
        self.drain(node);
        Ok(())
    }

    /// Asks leaving node `node` to cancel its leave (an operator's `DELETE /v1/cluster/leave`):
    /// once it accepts, it runs as an up node again.
    pub fn cancel_leave(&mut self, node: usize) -> Result<(), ControlError> {
        let now = self.now;
        let slot = self
            .slots
            .get_mut(node)
            .ok_or(ControlError::NoSuchNode(node))?;
        let state = slot.state();
        if state != ProcessState::Leaving {
            return Err(ControlError::NotRunning { node, state });
        }
        let Process::Leaving(mut n) = std::mem::replace(&mut slot.process, Process::Left) else {
            return Err(ControlError::NotRunning { node, state });
        };
        let result = {
            let _log = crate::log::enter(node, now);
            n.cancel_leave(now)
        };
        slot.process = match result {
            Ok(()) => Process::Up(n),
            Err(_) => Process::Leaving(n),
        };
        self.drain(node);
        if let Err(source) = result {
            return Err(ControlError::CancelLeave { node, source });
        }
        self.trace.text(
            now,
            Kind::Process,
            End::Node(node),
            End::None,
            format_args!("leave cancelled"),
        );
        Ok(())
    }

    /// Sends a client request to node `node` for workload `actor`; the answer comes back from
    /// [`Cluster::step`] as [`Step::Reply`] with `token`. A node that is not running answers
    /// at once that the connection was refused (nothing applied).
    pub fn client_request(
        &mut self,
        node: usize,
        actor: usize,
        token: u64,
        request: ClientRequest,
    ) {
        let now = self.now;
        let write = request.op.is_write();
        let Some(slot) = self
            .slots
            .get_mut(node)
            .filter(|s| s.state() == ProcessState::Up)
        else {
            let reply = ClientReply::Failed(ClientError::Unavailable {
                message: format!("connection refused: n{node} is not serving"),
                indeterminate: false,
                acks: 0,
                needed: 1,
            });
            self.queue.schedule(
                now + Duration::from_millis(1),
                Event::ClientReply {
                    actor,
                    token,
                    reply: Box::new(reply),
                },
            );
            return;
        };
        self.next_client += 1;
        let handle = self.next_client;
        // The node's default W is bounded by the replicas that exist as the coordinating node
        // sees them: this node's view when it replicates the key, else that of the replica it
        // forwards the request to, unknown here (then only one acknowledgement is certain).
        let placement = slot.node().and_then(Node::placement);
        let default_w = placement.map_or(1, |ring| {
            let replicas = slot.ring_n.min(ring.member_count()).max(1);
            let own = ring
                .preference_list(ring.partition_of(&request.key), slot.ring_n)
                .contains(&slot.id);
            if own {
                slot.default_w.min(replicas).max(1)
            } else {
                1
            }
        });
        let asked = write.then(|| Asked {
            key: request.key.clone(),
            w: request.options.w.unwrap_or(default_w),
            at: now,
        });
        slot.clients.insert(
            handle,
            ClientCall {
                actor,
                token,
                asked,
            },
        );
        if let Some(n) = slot.node_mut() {
            let _log = crate::log::enter(node, now);
            n.handle_client(handle, request, now);
        }
        self.drain(node);
    }

    /// How many hints the disk of node `node` holds (synced or not).
    pub fn hints_held(&self, node: usize) -> usize {
        self.slots.get(node).map_or(0, |s| s.disk.hints())
    }

    /// Whether node `node` is paused ([`Cluster::pause`]).
    pub fn paused(&self, node: usize) -> bool {
        self.slots.get(node).is_some_and(|s| s.paused.is_some())
    }

    /// Whether a node asked to leave has reported that it left ([`Output::Left`]).
    pub fn left_reported(&self, node: usize) -> bool {
        self.slots.get(node).is_some_and(|s| s.left_reported)
    }

    /// Schedules a workload wake-up; [`Cluster::step`] returns it when it is due.
    pub fn schedule_wake(&mut self, actor: usize, at: Duration, token: u64) {
        self.queue
            .schedule(at.max(self.now), Event::Wake { actor, token });
    }

    /// Handles the next event due at or before `until`, advancing the clock to it. When
    /// nothing is due, the clock moves to `until` and [`Step::Idle`] is returned.
    pub fn step(&mut self, until: Duration) -> Step {
        let Some((at, event)) = self.queue.pop_due(until) else {
            self.now = self.now.max(until);
            return Step::Idle;
        };
        self.now = at;
        self.stats.events += 1;
        let Some(event) = self.defer_if_paused(event) else {
            return Step::Handled;
        };
        match event {
            Event::Gossip { from, to, bytes } => self.arrive_gossip(from, to, bytes),
            Event::Message(m) => self.arrive_message(*m),
            Event::Timer { node, epoch, timer } => self.fire_timer(node, epoch, timer),
            Event::SyncDone { node, epoch } => self.sync_done(node, epoch),
            Event::ClientReply {
                actor,
                token,
                reply,
            } => {
                return Step::Reply {
                    actor,
                    token,
                    reply,
                }
            }
            Event::CrashDeadline { node, epoch } => {
                let slot = &self.slots[node];
                if slot.epoch == epoch && slot.state().is_running() && slot.crash_trap.is_some() {
                    self.kill(node, "crash (deadline of an armed crash)");
                }
            }
            Event::StopLeft { node, epoch } => self.stop_left(node, epoch),
            Event::Wake { actor, token } => return Step::Wake { actor, token },
        }
        Step::Handled
    }

    /// Keeps a timer firing or a sync completion for a paused process until it resumes;
    /// returns every other event.
    fn defer_if_paused(&mut self, event: Event) -> Option<Event> {
        let (Event::Timer { node, epoch, .. } | Event::SyncDone { node, epoch }) = &event else {
            return Some(event);
        };
        let slot = &mut self.slots[*node];
        match &mut slot.paused {
            Some(deferred) if slot.epoch == *epoch => {
                deferred.push(event);
                None
            }
            _ => Some(event),
        }
    }

    /// Pauses the running node `node`, as `SIGSTOP` would: it keeps its state, its view and
    /// its unperformed outputs, but handles nothing until [`Cluster::resume`] — timers and
    /// sync completions wait for the resume, datagrams to it are lost, messages to it are
    /// retransmitted until the stream times out, client connections are refused. A crash
    /// still kills it.
    pub fn pause(&mut self, node: usize) -> Result<(), ControlError> {
        let slot = self
            .slots
            .get_mut(node)
            .ok_or(ControlError::NoSuchNode(node))?;
        let state = slot.state();
        if state != ProcessState::Up {
            return Err(ControlError::NotRunning { node, state });
        }
        slot.paused = Some(Vec::new());
        self.trace.text(
            self.now,
            Kind::Process,
            End::Node(node),
            End::None,
            format_args!("pause"),
        );
        Ok(())
    }

    /// Resumes the paused node `node` where it stopped: the timers and sync completions due
    /// meanwhile reach it now, in order, and its waiting outputs are performed. Nothing
    /// happens to a node that is not paused (it may have crashed meanwhile).
    pub fn resume(&mut self, node: usize) -> Result<(), ControlError> {
        let slot = self
            .slots
            .get_mut(node)
            .ok_or(ControlError::NoSuchNode(node))?;
        let Some(deferred) = slot.paused.take() else {
            return Ok(());
        };
        for event in deferred {
            self.queue.schedule(self.now, event);
        }
        self.trace.text(
            self.now,
            Kind::Process,
            End::Node(node),
            End::None,
            format_args!("resume"),
        );
        self.pump(node);
        if self.slots[node].state().is_running() {
            self.observe(node);
        }
        Ok(())
    }

    /// What the per-step checker sees of a running node now.
    fn observe(&mut self, node: usize) {
        if !self.config.observe {
            return;
        }
        let slot = &self.slots[node];
        let Some(n) = slot.node() else { return };
        self.observations.push(Observation::Node(NodeObservation {
            slot: node,
            epoch: slot.epoch,
            id: slot.id,
            process: slot.state(),
            ring: n.ring_state(),
            generations: n.swim_generations(),
            left_reported: slot.left_reported,
            founder: slot.seeds.is_empty(),
        }));
    }

    /// Every slot as the ground truth knows it, with each running node's view.
    pub fn snapshot(&mut self) -> ClusterSnapshot {
        let nodes = self
            .slots
            .iter_mut()
            .enumerate()
            .map(|(i, s)| NodeSnapshot {
                roots: s.node_mut().map(Node::merkle_roots).unwrap_or_default(),
                disk_roots: s.disk.merkle_roots(),
                slot: i,
                id: s.id,
                process: s.state(),
                generation: s.generation,
                removed: s.removed,
                view: s.node().map(Node::cluster_view),
                data: s.node().map(Node::data_stats),
                objects: s.disk.objects(),
                hints_on_disk: s.disk.hints(),
            })
            .collect();
        ClusterSnapshot {
            at: self.now,
            nodes,
            lost: self.lost.clone(),
            op_log: self.config.op_log.unwrap_or_default(),
        }
    }

    fn drop_reason(&mut self, reason: &'static str) {
        *self.stats.dropped.entry(reason).or_default() += 1;
    }

    fn arrive_gossip(&mut self, from: usize, to: usize, bytes: Vec<u8>) {
        let now = self.now;
        let reason = if self.net.blocked(from, to) {
            Some("partition")
        } else if !self.state(to).is_running() {
            Some("destination down")
        } else if self.state(to) == ProcessState::Paused {
            Some("destination paused")
        } else {
            None
        };
        if let Some(reason) = reason {
            self.drop_reason(reason);
            self.trace.bytes(
                now,
                Kind::GossipDropped,
                End::Node(from),
                End::Node(to),
                &bytes,
                reason,
            );
            return;
        }
        self.stats.gossip_delivered += 1;
        self.trace.bytes(
            now,
            Kind::GossipDelivered,
            End::Node(from),
            End::Node(to),
            &bytes,
            "",
        );
        let from_id = self.slots[from].id;
        if let Some(n) = self.slots[to].node_mut() {
            let _log = crate::log::enter(to, now);
            n.handle_gossip(from_id, &bytes, now);
        }
        self.drain(to);
    }

    fn arrive_message(&mut self, m: InFlight) {
        let now = self.now;
        let (from, to) = (m.from, m.to);
        let dst = &self.slots[to];
        let dst_running = dst.state().is_running();
        // A paused destination does not read its streams: the sender retransmits.
        let dst_paused = dst.state() == ProcessState::Paused;
        let sender_alive = self.slots[from].epoch == m.from_epoch && self.state(from).is_running();
        let verdict: Result<(), &'static str> = match m.to_epoch {
            // The connection belonged to a process that is gone.
            Some(e) if e != dst.epoch || !dst_running => {
                Err("connection reset: destination restarted or crashed")
            }
            _ if !self.net.blocked(from, to) && dst_running && !dst_paused => Ok(()),
            // The path is cut or nobody listens yet: QUIC keeps retransmitting until it gives up.
            _ if !sender_alive => Err("sender gone before delivery"),
            _ if now + self.config.net.retransmit_after
                > m.sent_at + self.config.net.stream_timeout =>
            {
                Err(if dst_paused {
                    "stream timeout: destination paused"
                } else if dst_running {
                    "stream timeout: partition"
                } else {
                    "stream timeout: destination down"
                })
            }
            _ => {
                let at = now + self.config.net.retransmit_after;
                self.queue.schedule(at, Event::Message(Box::new(m)));
                return;
            }
        };
        match verdict {
            Ok(()) => {
                self.stats.messages_delivered += 1;
                self.trace.bytes(
                    now,
                    Kind::MessageDelivered,
                    End::Node(from),
                    End::Node(to),
                    &m.bytes,
                    "",
                );
                // The simulated handshake authenticates the sending machine's node id.
                let from_id = self.slots[from].id;
                self.datapath
                    .delivered(now, to, self.slots[to].epoch, from_id, &m.bytes);
                if let Some(n) = self.slots[to].node_mut() {
                    let _log = crate::log::enter(to, now);
                    n.handle_message(from_id, &m.bytes, now);
                }
                self.drain(to);
            }
            Err(reason) => {
                self.drop_reason(reason);
                self.trace.bytes(
                    now,
                    Kind::MessageDropped,
                    End::Node(from),
                    End::Node(to),
                    &m.bytes,
                    reason,
                );
            }
        }
    }

    fn fire_timer(&mut self, node: usize, epoch: u64, timer: Timer) {
        let now = self.now;
        let slot = &mut self.slots[node];
        if slot.epoch != epoch || !slot.state().is_running() {
            // A timer of a process that no longer exists.
            return;
        }
        self.stats.timers += 1;
        self.trace.text(
            now,
            Kind::Timer,
            End::Node(node),
            End::Node(node),
            format_args!("{timer:?}"),
        );
        if let Some(n) = self.slots[node].node_mut() {
            let _log = crate::log::enter(node, now);
            n.handle_timer(timer, now);
        }
        self.drain(node);
    }

    fn stop_left(&mut self, node: usize, epoch: u64) {
        let slot = &mut self.slots[node];
        if slot.epoch != epoch || slot.state() != ProcessState::Leaving {
            return;
        }
        slot.process = Process::Left;
        slot.outbox.clear();
        let id = slot.id;
        self.trace.text(
            self.now,
            Kind::Process,
            End::Node(node),
            End::None,
            format_args!("stopped after leaving"),
        );
        self.lose_clients(node);
        if self.config.observe {
            self.observations.push(Observation::Stopped {
                slot: node,
                id,
                epoch,
            });
        }
    }

    /// Takes every output the node produced into its outbox and performs what it can.
    fn drain(&mut self, node: usize) {
        let slot = &mut self.slots[node];
        if let Some(n) = slot.node_mut() {
            let mut outs = Vec::new();
            while let Some(o) = n.poll_output() {
                outs.push(o);
            }
            slot.outbox.extend(outs);
        }
        self.pump(node);
        if self.slots[node].state().is_running() {
            self.observe(node);
        }
    }

    /// Performs the outbox in order until it is empty, a metadata write must become durable
    /// first, or an armed crash fires.
    fn pump(&mut self, node: usize) {
        loop {
            let slot = &mut self.slots[node];
            if slot.barrier || !slot.state().is_running() || slot.paused.is_some() {
                return;
            }
            if slot.outbox.is_empty() {
                return;
            }
            if slot.crash_trap == Some(0) {
                self.kill(node, "crash (between two outputs)");
                return;
            }
            if let Some(k) = slot.crash_trap.as_mut() {
                *k -= 1;
            }
            let Some(out) = slot.outbox.pop_front() else {
                return;
            };
            self.perform(node, out);
        }
    }

    fn perform(&mut self, node: usize, out: Output) {
        match out {
            Output::Gossip { to, bytes } => self.send_gossip(node, to, bytes),
            Output::Message { addr, bytes, .. } => self.send_message(node, addr, bytes),
            Output::SetTimer { at, timer } => {
                let epoch = self.slots[node].epoch;
                self.queue
                    .schedule(at.max(self.now), Event::Timer { node, epoch, timer });
            }
            Output::PersistRing(state) => {
                if let Err(e) = self.slots[node].disk.write_ring(&state) {
                    // An encoding failure is a core bug worth seeing in the trace.
                    self.trace.text(
                        self.now,
                        Kind::Process,
                        End::Node(node),
                        End::None,
                        format_args!("cannot persist ring: {e}"),
                    );
                }
                self.meta_written(node);
            }
            Output::PersistGeneration(generation) => {
                if let Err(e) = self.slots[node].disk.write_generation(generation) {
                    self.trace.text(
                        self.now,
                        Kind::Process,
                        End::Node(node),
                        End::None,
                        format_args!("cannot persist generation: {e}"),
                    );
                }
                self.meta_written(node);
            }
            // The simulated network has no connections to drop: a restarted node's streams
            // reach its new process at once.
            Output::PeerRestarted { .. } => {}
            // The simulated drivers keep no figures for a status page: questions go
            // unanswered, as a real driver may leave them.
            Output::StatsAsked { .. } | Output::StatsAnswered { .. } => {}
            Output::Left => {
                self.slots[node].disk.write_left();
                self.meta_written(node);
                let slot = &mut self.slots[node];
                slot.left_written = Some(slot.meta_writes);
            }
            Output::Persist { seq, batch } => {
                {
                    let slot = &self.slots[node];
                    let disk = slot.disk.handle();
                    let store = disk.lock();
                    self.datapath
                        .persisted(node, slot.epoch, &batch, self.now, &store);
                }
                self.dots.persisted(node, &batch, self.now);
                let slot = &mut self.slots[node];
                slot.disk.write_batch(&batch);
                slot.data_written = slot.data_written.max(seq);
                self.request_sync(node);
            }
            Output::Reply { client, reply } => {
                if let Some(ClientCall {
                    actor,
                    token,
                    asked,
                }) = self.slots[node].clients.remove(&client)
                {
                    if let Some(asked) = asked {
                        self.check_reply(node, &asked, &reply);
                    }
                    let latency = self.net.latency(node, node);
                    self.queue.schedule(
                        self.now + latency,
                        Event::ClientReply {
                            actor,
                            token,
                            reply: Box::new(reply),
                        },
                    );
                }
            }
        }
    }

    /// Checks a successful write's acknowledgers against their disks
    /// ([`DataPathMonitor::replied`]).
    fn check_reply(&mut self, node: usize, asked: &Asked, reply: &ClientReply) {
        if !matches!(reply, ClientReply::Written(_) | ClientReply::Updated(_)) {
            return;
        }
        let handles: Vec<_> = self.slots.iter().map(|s| (s.id, s.disk.handle())).collect();
        let stores: Vec<_> = handles.iter().map(|(id, h)| (*id, h.lock())).collect();
        let op_ids_kept = self.config.op_log.is_none();
        self.datapath
            .replied(self.now, node, asked, reply, op_ids_kept, |id| {
                stores
                    .iter()
                    .position(|(i, _)| *i == id)
                    .map(|slot| (slot, &*stores[slot].1))
            });
    }

    /// A metadata write went to the disk: later outputs wait until a sync covers it.
    fn meta_written(&mut self, node: usize) {
        let slot = &mut self.slots[node];
        slot.meta_writes += 1;
        slot.barrier = true;
        self.request_sync(node);
    }

    /// Starts a sync unless one is in flight (then the next one starts when it completes).
    fn request_sync(&mut self, node: usize) {
        if self.slots[node].sync_in_flight.is_some() {
            return;
        }
        let (lo, hi) = self.config.disk_sync;
        let mut latency =
            lo + (hi.saturating_sub(lo)).mul_f64(rand::RngExt::random::<f64>(&mut self.disk_rng));
        if self.config.disk_slow_one_in > 0
            && rand::RngExt::random_range(&mut self.disk_rng, 0..self.config.disk_slow_one_in) == 0
        {
            latency = hi * 10;
        }
        let slot = &mut self.slots[node];
        slot.sync_in_flight = Some((slot.data_written, slot.meta_writes));
        let epoch = slot.epoch;
        self.queue
            .schedule(self.now + latency, Event::SyncDone { node, epoch });
    }

    fn sync_done(&mut self, node: usize, epoch: u64) {
        let slot = &mut self.slots[node];
        if slot.epoch != epoch || !slot.state().is_running() {
            return;
        }
        let Some((data, meta)) = slot.sync_in_flight.take() else {
            return;
        };
        // The disk model syncs everything written so far; the node is told only of what the
        // sync covered when it started.
        slot.disk.sync();
        self.stats.syncs += 1;
        if slot.barrier && meta == slot.meta_writes {
            slot.barrier = false;
        }
        let left_now = slot.left_written.is_some_and(|w| w <= meta) && !slot.left_reported;
        let report = (data > slot.data_reported).then_some(data);
        let again = slot.data_written > data || slot.meta_writes > meta;
        if let Some(seq) = report {
            slot.data_reported = seq;
        }
        if left_now {
            self.left_durable(node);
        }
        if let Some(seq) = report {
            let now = self.now;
            if let Some(n) = self.slots[node].node_mut() {
                let _log = crate::log::enter(node, now);
                n.handle_durable(seq, now);
                // Replica-side latencies are for the runtime's metrics; the simulator keeps
                // none.
                drop(n.take_ack_waits());
            }
            let slot = &mut self.slots[node];
            if let Some(n) = slot.node_mut() {
                let mut outs = Vec::new();
                while let Some(o) = n.poll_output() {
                    outs.push(o);
                }
                slot.outbox.extend(outs);
            }
        }
        if again {
            self.request_sync(node);
        }
        self.pump(node);
        if self.slots[node].state().is_running() {
            self.observe(node);
        }
    }

    /// The node's completed leave is on disk: it stops once its last sends are out.
    fn left_durable(&mut self, node: usize) {
        let slot = &mut self.slots[node];
        if slot.left_reported {
            return;
        }
        slot.left_reported = true;
        // Normally the slot is already leaving (it asked); a node may also learn that an
        // operator removed it.
        slot.process = match std::mem::replace(&mut slot.process, Process::Left) {
            Process::Up(n) | Process::Leaving(n) => Process::Leaving(n),
            other => other,
        };
        let epoch = slot.epoch;
        let at = self.now + self.config.leave_flush;
        self.queue.schedule(at, Event::StopLeft { node, epoch });
        self.trace.text(
            self.now,
            Kind::Process,
            End::Node(node),
            End::None,
            format_args!(
                "left the cluster; stopping in {:?}",
                self.config.leave_flush
            ),
        );
    }

    fn resolve(&mut self, from: usize, to: SocketAddr, kind: Kind, bytes: &[u8]) -> Option<usize> {
        match self.by_addr.get(&to) {
            Some(&i) => Some(i),
            None => {
                self.drop_reason("no node at address");
                self.trace.bytes(
                    self.now,
                    kind,
                    End::Node(from),
                    End::None,
                    bytes,
                    &format!("no node at {to}"),
                );
                None
            }
        }
    }

    fn send_gossip(&mut self, from: usize, to: SocketAddr, bytes: Vec<u8>) {
        let Some(to) = self.resolve(from, to, Kind::GossipDropped, &bytes) else {
            return;
        };
        match self.net.datagram(from, to) {
            DatagramFate::Lost => {
                self.drop_reason("loss");
                self.trace.bytes(
                    self.now,
                    Kind::GossipDropped,
                    End::Node(from),
                    End::Node(to),
                    &bytes,
                    "loss",
                );
            }
            DatagramFate::Arrives(first, second) => {
                if let Some(second) = second {
                    let copy = bytes.clone();
                    self.queue.schedule(
                        self.now + second,
                        Event::Gossip {
                            from,
                            to,
                            bytes: copy,
                        },
                    );
                }
                self.queue
                    .schedule(self.now + first, Event::Gossip { from, to, bytes });
            }
        }
    }

    fn send_message(&mut self, from: usize, to: SocketAddr, bytes: Vec<u8>) {
        let Some(to) = self.resolve(from, to, Kind::MessageDropped, &bytes) else {
            return;
        };
        if let Some(&partitions) = self.partitions.get(&from) {
            let slot = &self.slots[from];
            let disk = slot.disk.handle();
            let store = disk.lock();
            self.datapath.sending(
                self.now,
                from,
                slot.epoch,
                self.slots[to].id,
                &bytes,
                &store,
                partitions,
            );
        }
        let dst = &self.slots[to];
        let m = InFlight {
            from,
            to,
            from_epoch: self.slots[from].epoch,
            to_epoch: dst.state().is_running().then_some(dst.epoch),
            sent_at: self.now,
            bytes,
        };
        match self.net.message_delay(from, to) {
            Some(delay) => self
                .queue
                .schedule(self.now + delay, Event::Message(Box::new(m))),
            None => {
                self.drop_reason("stream timeout: loss");
                self.trace.bytes(
                    self.now,
                    Kind::MessageDropped,
                    End::Node(from),
                    End::Node(to),
                    &m.bytes,
                    "stream timeout: loss",
                );
            }
        }
    }
}
