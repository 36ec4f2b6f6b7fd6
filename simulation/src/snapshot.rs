//! What checkers see of the cluster: the ground truth about each machine and each running
//! node's own view, as plain values.
//!
//! This is a leaf module: it depends on the node's own types (`chorus`) and nothing else of the
//! simulator, so the checkers that read these values never depend on the harness that makes
//! them, and can be tested with hand-made snapshots that plant violations.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

use chorus::crdt::OpLogPolicy;
use chorus::membership::{RingState, RingStatus};
use chorus::merkle::Digest;
use chorus::node::{ClusterView, DataStats, Object};
use chorus::ring::PartitionId;
use chorus::NodeId;

/// What a slot's process is doing, as the simulator (the ground truth) knows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum ProcessState {
    /// Never started.
    NotStarted,
    /// Running.
    Up,
    /// Running, and leaving the cluster (asked to, or resuming a leave after a restart) until
    /// the node reports it has left and its last sends are flushed.
    Leaving,
    /// Left the cluster and stopped for good.
    Left,
    /// Crashed (or failed to start) and not running.
    Crashed,
    /// Running but stopped, as by `SIGSTOP` (a paused VM, a long GC pause): the process keeps
    /// its state and its view, but takes no step, receives and sends nothing until resumed.
    Paused,
}

impl ProcessState {
    /// Whether a process exists (it takes inputs, or will once resumed if it is paused).
    pub fn is_running(self) -> bool {
        matches!(
            self,
            ProcessState::Up | ProcessState::Leaving | ProcessState::Paused
        )
    }

    /// Lowercase name.
    pub fn as_str(self) -> &'static str {
        match self {
            ProcessState::NotStarted => "not started",
            ProcessState::Up => "up",
            ProcessState::Leaving => "leaving",
            ProcessState::Left => "left",
            ProcessState::Crashed => "crashed",
            ProcessState::Paused => "paused",
        }
    }
}

impl fmt::Display for ProcessState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One machine at the moment of a snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeSnapshot {
    /// Its slot (shown as `n<slot>`).
    pub slot: usize,
    /// Its node id.
    pub id: NodeId,
    /// What its process is doing (ground truth).
    pub process: ProcessState,
    /// Generation of its current (or last) process; 0 if never started.
    pub generation: u64,
    /// Whether an operator removed it from the ring (a removal was requested; the machine is
    /// gone for good).
    pub removed: bool,
    /// The cluster as the node sees it, if it is running.
    pub view: Option<ClusterView>,
    /// The node's data-path counters, if it is running.
    pub data: Option<DataStats>,
    /// Every object on its disk (durable or not), by user key, running or not.
    pub objects: Vec<(Vec<u8>, Object)>,
    /// Hints on its disk.
    pub hints_on_disk: usize,
    /// The Merkle root of each non-empty partition, from the running node's trees (empty when
    /// it is not running).
    pub roots: BTreeMap<PartitionId, Digest>,
    /// The same, computed afresh from every object on its disk (durable or not).
    pub disk_roots: BTreeMap<PartitionId, Digest>,
}

/// Every machine of the cluster at one simulated instant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterSnapshot {
    /// When the snapshot was taken.
    pub at: Duration,
    /// Every slot, in slot order.
    pub nodes: Vec<NodeSnapshot>,
    /// Keys of which an operator's removal of a machine lost something no remaining machine
    /// held, with the time of the last such removal: what was acknowledged of them before may
    /// be gone, and a CRDT key may have been created anew, of any type.
    pub lost: BTreeMap<Vec<u8>, Duration>,
    /// How long, and for how many updates, every node remembers CRDT operation ids: a retry
    /// later than the window after its id's first application may count again.
    pub op_log: OpLogPolicy,
}

impl ClusterSnapshot {
    /// The machine with node id `id` (as shown in views: 16 hex digits).
    pub fn by_id(&self, id: &str) -> Option<&NodeSnapshot> {
        self.nodes.iter().find(|n| n.id.to_string() == id)
    }

    /// Running machines that are not leaving, with their views: the nodes whose opinion counts.
    pub fn observers(&self) -> impl Iterator<Item = (&NodeSnapshot, &ClusterView)> + '_ {
        self.nodes
            .iter()
            .filter(|n| n.process == ProcessState::Up)
            .filter_map(|n| n.view.as_ref().map(|v| (n, v)))
    }
}

/// What the per-step safety checker learns after one simulated step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Observation {
    /// A process started in a slot (the node core accepted the start).
    Started {
        /// The slot.
        slot: usize,
        /// The node id it runs as.
        id: NodeId,
        /// The process number in this slot (1 for the first process).
        epoch: u64,
        /// Its generation.
        generation: u64,
        /// Its address.
        addr: SocketAddr,
        /// Its own ring status as its disk had it (`None`: never recorded).
        initial: Option<RingStatus>,
    },
    /// A running process stopped (crashed, or stopped after leaving).
    Stopped {
        /// The slot.
        slot: usize,
        /// The node id it ran as.
        id: NodeId,
        /// The process number in this slot.
        epoch: u64,
    },
    /// An operator removed the machine in this slot for good.
    Removed {
        /// The slot.
        slot: usize,
    },
    /// A running node handled an input; its state afterwards.
    Node(NodeObservation),
}

/// A running node's state after it handled an input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeObservation {
    /// The slot.
    pub slot: usize,
    /// The process number in this slot.
    pub epoch: u64,
    /// The node id.
    pub id: NodeId,
    /// Whether the simulator counts the process as up (not leaving).
    pub process: ProcessState,
    /// The node's ring state.
    pub ring: RingState,
    /// The newest generation its SWIM knows for each node.
    pub generations: BTreeMap<NodeId, u64>,
    /// Whether the node has reported that its leave completed.
    pub left_reported: bool,
    /// Whether the node was started without seeds (it founds the cluster).
    pub founder: bool,
}

impl NodeObservation {
    /// The node's own ring status.
    pub fn own_status(&self) -> Option<RingStatus> {
        self.ring.get(self.id).map(|e| e.status)
    }
}
