//! Workloads: simulated clients that act on the cluster and record what they did.
//!
//! A [`Workload`] is an actor driven by the scheduler: it is started once at time zero, woken
//! at the times it asks for (with a token of its choosing), and told when the fault phase ends.
//! It acts only through its [`Ctx`]: the cluster's control surface, its own random stream, and
//! the shared [`History`] where every operation is invoked and completed. The scheduler never
//! looks inside a workload, so new clients (replicated reads and writes, anti-entropy probes)
//! plug in by implementing this trait and being added to the run's workload list.
//!
//! - [`membership`]: bootstraps the cluster, then crashes, restarts, adds and removes nodes.
//! - [`register`]: clients that read, write and delete register keys through random nodes.
//! - [`crdt`]: clients that update counters and sets, retrying with the same operation id.
//!   Both write the [`SHARED_KEYS`].
//! - [`nemesis`]: the network nemesis — partitions and degraded periods — recorded as
//!   operations of a client named `nemesis`, as Jepsen does.
//! - [`pause`]: the pause nemesis — a member paused, removed by an operator while paused, and
//!   resumed with its stale view.
//!
//! Workloads that send client requests ([`Ctx::request`]) get each answer back through
//! [`Workload::reply`], which the cluster delivers like a wake-up.

pub mod crdt;
pub mod membership;
pub mod nemesis;
pub mod pause;
pub mod register;

use std::time::Duration;

use chorus::node::{ClientReply, ClientRequest};

use crate::cluster::Cluster;
use crate::history::{History, OpId, OpKind, Outcome};
use crate::rng::SimRng;
use crate::trace::{End, Kind};

/// Keys both the register clients and the CRDT clients write, with the CRDT type the CRDT
/// clients use on each: whichever type a key holds, writes of the other are refused while it
/// lives, and writes of both types racing leave it contested (DESIGN.md §3). A key's first
/// writes are where types race, so the names move on every [`SHARED_GENERATION`]: the key
/// written at time `t` is [`shared_key`]`(i, t)`, fresh for both workloads at once (on both
/// sides of a partition, if one is in effect); and at the very start of each generation both
/// workloads create every shared key at once, through random nodes, so that creations of two
/// types race for real.
pub const SHARED_KEYS: &[(&str, &str)] = &[("x0", "gcounter"), ("x1", "orset"), ("x2", "2pset")];

/// How long the clients write one generation of the shared keys.
pub const SHARED_GENERATION: Duration = Duration::from_secs(30);

/// The start of the first generation of shared keys after `now` (a generation's start is where
/// both workloads race to create its keys, see [`SHARED_KEYS`]).
pub fn next_generation(now: Duration) -> Duration {
    let g = SHARED_GENERATION.as_secs();
    Duration::from_secs((now.as_secs() / g + 1) * g)
}

/// The name of shared key `i` ([`SHARED_KEYS`]) at simulated time `now`, with its CRDT type.
pub fn shared_key(i: usize, now: Duration) -> (String, &'static str) {
    let (base, kind) = SHARED_KEYS[i % SHARED_KEYS.len()];
    let generation = now.as_secs() / SHARED_GENERATION.as_secs();
    (format!("{base}.{generation}"), kind)
}

/// A simulated client.
pub trait Workload {
    /// Short name; also the client name in the history and the label of its random stream.
    fn name(&self) -> &'static str;

    /// Called once at time zero.
    fn start(&mut self, cx: &mut Ctx<'_>);

    /// A wake-up this workload asked for with [`Ctx::wake_at`] is due.
    fn wake(&mut self, token: u64, cx: &mut Ctx<'_>);

    /// The fault phase is over: undo any fault still in effect and start nothing new.
    /// Operations already in progress may still complete during the quiet phase.
    fn quiesce(&mut self, cx: &mut Ctx<'_>);

    /// The answer to a client request this workload sent with [`Ctx::request`] arrived.
    fn reply(&mut self, token: u64, reply: ClientReply, cx: &mut Ctx<'_>) {
        let _ = (token, reply, cx);
    }
}

/// The wake-ups a workload has asked for, each with what it will do then: a token per
/// wake-up, so a workload only keeps the state of its own plans.
#[derive(Debug)]
pub struct Wakeups<P> {
    pending: std::collections::BTreeMap<u64, P>,
    next_token: u64,
}

impl<P> Default for Wakeups<P> {
    fn default() -> Self {
        Wakeups {
            pending: std::collections::BTreeMap::new(),
            next_token: 0,
        }
    }
}

impl<P> Wakeups<P> {
    /// Plans `what` for simulated time `at`.
    pub fn schedule(&mut self, cx: &mut Ctx<'_>, at: Duration, what: P) {
        self.next_token += 1;
        self.pending.insert(self.next_token, what);
        cx.wake_at(at, self.next_token);
    }

    /// What was planned for the wake-up `token`, once.
    pub fn take(&mut self, token: u64) -> Option<P> {
        self.pending.remove(&token)
    }
}

/// What a workload may touch while it runs.
pub struct Ctx<'a> {
    actor: usize,
    client: &'static str,
    cluster: &'a mut Cluster,
    history: &'a mut History,
    rng: &'a mut SimRng,
}

impl<'a> Ctx<'a> {
    /// A context for workload number `actor` named `client`.
    pub fn new(
        actor: usize,
        client: &'static str,
        cluster: &'a mut Cluster,
        history: &'a mut History,
        rng: &'a mut SimRng,
    ) -> Self {
        Ctx {
            actor,
            client,
            cluster,
            history,
            rng,
        }
    }

    /// The current simulated time.
    pub fn now(&self) -> Duration {
        self.cluster.now()
    }

    /// This workload's random stream.
    pub fn rng(&mut self) -> &mut SimRng {
        self.rng
    }

    /// The cluster, to read.
    pub fn cluster(&self) -> &Cluster {
        self.cluster
    }

    /// The cluster, to act on.
    pub fn cluster_mut(&mut self) -> &mut Cluster {
        self.cluster
    }

    /// Asks to be woken at `at` with `token`.
    pub fn wake_at(&mut self, at: Duration, token: u64) {
        self.cluster.schedule_wake(self.actor, at, token);
    }

    /// Sends a client request to node `node`; its answer comes back through
    /// [`Workload::reply`] with `token`.
    pub fn request(&mut self, node: usize, token: u64, request: ClientRequest) {
        self.cluster
            .client_request(node, self.actor, token, request);
    }

    /// The history, to record operation details.
    pub fn history_mut(&mut self) -> &mut History {
        self.history
    }

    /// Asks to be woken after `after` with `token`.
    pub fn wake_after(&mut self, after: Duration, token: u64) {
        let at = self.now() + after;
        self.wake_at(at, token);
    }

    /// Records the invocation of an operation (in the history and the trace).
    pub fn invoke(&mut self, kind: OpKind) -> OpId {
        let now = self.now();
        let subject = kind.node().map_or(End::None, End::Node);
        self.cluster.trace_mut().text(
            now,
            Kind::Operation,
            End::None,
            subject,
            format_args!("{} invoke {kind}", self.client),
        );
        self.history.invoke(self.client, kind, now)
    }

    /// Records the outcome of an operation (in the history and the trace).
    pub fn complete(&mut self, id: OpId, outcome: Outcome) {
        let now = self.now();
        if let Some(op) = self.history.get(id) {
            let subject = op.kind.node().map_or(End::None, End::Node);
            let kind = &op.kind;
            self.cluster.trace_mut().text(
                now,
                Kind::Operation,
                End::None,
                subject,
                format_args!("{} {outcome} {kind}", self.client),
            );
        }
        self.history.complete(id, now, outcome);
    }

    /// Invokes and completes an instantaneous operation.
    pub fn instant(&mut self, kind: OpKind, outcome: Outcome) -> OpId {
        let id = self.invoke(kind);
        self.complete(id, outcome);
        id
    }
}

/// Fisher–Yates shuffle driven by a simulation stream.
pub fn shuffle<T>(rng: &mut SimRng, items: &mut [T]) {
    use rand::RngExt;
    for i in (1..items.len()).rev() {
        let j = rng.random_range(0..=i);
        items.swap(i, j);
    }
}

/// A uniformly chosen element.
pub fn pick<T: Copy>(rng: &mut SimRng, items: &[T]) -> Option<T> {
    use rand::RngExt;
    if items.is_empty() {
        return None;
    }
    Some(items[rng.random_range(0..items.len())])
}
