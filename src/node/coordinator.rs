//! The coordinator sub-machine: client requests in flight.
//!
//! For each request it picks the replicas (the key's preference list, with fallbacks holding
//! hints for down replicas unless the request is strict), sends them the work, counts their
//! answers against the request's quorum, answers the client, and repairs stale replicas after a
//! read. It owns the request table — request id, targets, replies so far, deadline, outcome —
//! and nothing else: local state changes go through the replica (a local call to mint, messages
//! like any other replica's), hints through the hints sub-machine on the fallback.
//!
//! Rules:
//!
//! - A write is coordinated by a replica of its key (it mints the dot): a node that is not one
//!   forwards the request to the first reachable replica, and relays the answer. With no
//!   reachable replica, a non-strict write is coordinated where it arrived.
//! - A write is acknowledged to the client once `w` targets hold it durably. A request that
//!   times out first is *indeterminate*: it may still land.
//! - A read waits for `r` replies, answers with their merge, then waits for the remaining
//!   replies (until its deadline) and sends the merge to every replica that answered with
//!   something older.
//! - At most [`DataConfig::requests_in_flight_max`] requests are in flight; more are refused
//!   as overloaded, having changed nothing. A request whose client has its answer and that only
//!   lingers (a write waiting for its slower replicas, a read waiting to repair) does not count:
//!   lingering requests have their own bound of the same size, beyond which the oldest is
//!   finished early (a read repairs with the replies it has; a write stops waiting, which loses
//!   nothing the client was told). Every request has a deadline timer, so none stays in the
//!   table forever.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tracing::debug;

use super::hints::HintsMessage;
use super::object::{Context, Object};
use super::replica::{MintOp, MintOutcome, Minted, ReplicaCall, ReplicaMessage};
use super::request::{
    ClientError, ClientOp, ClientReply, ClientRequest, DataConfig, ReadResult, Resolved,
    UpdateResult, WriteResult,
};
use super::{Call, Effects, Output};
use crate::id::NodeId;

/// Extra time a node waits for a request it forwarded, beyond the request's own timeout.
const FORWARD_GRACE: Duration = Duration::from_millis(500);

/// Messages to a node's coordinator.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum CoordinatorMessage {
    /// The sender durably holds the write of request `req` (as a replica, or a hint).
    Ack {
        /// The request.
        req: u64,
    },
    /// The sender's copy of the key of read `req` (`None`: it has none).
    ReadReply {
        /// The request.
        req: u64,
        /// The copy.
        object: Option<Object>,
    },
    /// The answer to a look ([`ReplicaMessage::Read`] with `look`) from a replica that has not
    /// caught up the key's partition, with the copy it has (`None`: none): what the copy
    /// holds is worth merging, but neither it nor its absence says what the key's replicas
    /// hold, so it counts toward no quorum. (A variant of its own rather than a field of
    /// `ReadReply`, so that a node of an earlier version drops it instead of counting it, and
    /// still decodes every `ReadReply`.)
    PartialCopy {
        /// The request.
        req: u64,
        /// The copy.
        object: Option<Object>,
    },
    /// The sender could not do its part of request `req`.
    Refused {
        /// The request.
        req: u64,
        /// Why.
        error: ClientError,
    },
    /// Coordinate `request` for the sender, and answer with [`CoordinatorMessage::Forwarded`].
    Forward {
        /// The sender's request id.
        req: u64,
        /// The request.
        request: ClientRequest,
    },
    /// The answer to a request the receiver forwarded.
    Forwarded {
        /// The receiver's request id.
        req: u64,
        /// The answer.
        reply: ClientReply,
    },
}

/// Timers of the coordinator: stale ones (for a request that is gone) are ignored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CoordinatorTimer {
    /// Request `req` is out of time.
    Deadline {
        /// The request.
        req: u64,
    },
    /// Time to send write `req` to fallbacks for the targets that have not acknowledged.
    Hedge {
        /// The request.
        req: u64,
    },
}

/// Who gets the answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Origin {
    /// A client of this node (the driver's handle).
    Client(u64),
    /// Another node that forwarded the request.
    Peer { node: NodeId, req: u64 },
}

/// A node a write is sent to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Target {
    node: NodeId,
    /// The down replica whose write it holds as a hint, for a fallback.
    hint_for: Option<NodeId>,
}

#[derive(Debug)]
enum State {
    Read {
        /// The replicas asked so far.
        targets: Vec<NodeId>,
        /// Reachable replicas not asked yet (asked when one is slow).
        spare: Vec<NodeId>,
        replies: BTreeMap<NodeId, Option<Object>>,
        merged: Option<Object>,
        answered: bool,
    },
    Minting {
        targets: Vec<Target>,
        /// Down replicas no fallback could take: this node keeps their hints.
        orphans: Vec<NodeId>,
    },
    /// A write whose coordinating replica has no copy of the key: the other replicas are
    /// asked for theirs first (the key's type, and contents to start from).
    Looking {
        targets: Vec<Target>,
        orphans: Vec<NodeId>,
        op: MintOp,
        context: Option<Context>,
        asked: Vec<NodeId>,
        replies: BTreeMap<NodeId, Option<Object>>,
        /// Replies from replicas with a complete copy of the key's partition (the others
        /// are merged but count toward nothing).
        complete: usize,
        /// Complete replies needed: with this node, a majority of the key's replicas.
        need: usize,
    },
    Writing {
        object: Object,
        outcome: MintOutcome,
        targets: Vec<Target>,
        acked: BTreeSet<NodeId>,
        /// Replicas this node already keeps a hint for (no fallback could take them).
        hinted: BTreeSet<NodeId>,
        /// The client has its answer; the request lingers to hint silent replicas.
        answered: bool,
    },
    Forwarded {
        to: NodeId,
        write: bool,
    },
}

#[derive(Debug)]
struct Request {
    origin: Origin,
    /// The client's request id (HTTP `x-request-id`), for this node's log lines about it.
    trace: Option<Arc<str>>,
    key: Vec<u8>,
    opts: Resolved,
    /// The operation id of a CRDT update.
    op_id: Option<String>,
    /// The type a CRDT update is for.
    update_type: Option<&'static str>,
    state: State,
}

/// A replica's answer to a look: its copy, if any, and whether that copy is partial (sent as
/// [`CoordinatorMessage::PartialCopy`]).
struct Looked {
    object: Option<Object>,
    partial: bool,
}

/// The coordinator sub-machine.
pub(crate) struct Coordinator {
    config: DataConfig,
    next_req: u64,
    requests: BTreeMap<u64, Request>,
    /// Requests in `requests` whose client has its answer, oldest (lowest id) first.
    lingering: BTreeSet<u64>,
    /// Read repairs sent since start (stale replicas sent the merged state).
    read_repairs: u64,
}

impl Coordinator {
    /// A coordinator whose request ids start at `first` (random per process, so that a late
    /// answer to a previous process's request never matches one of this process's).
    pub(crate) fn new(config: DataConfig, first: u64) -> Self {
        Coordinator {
            config,
            next_req: first.max(1),
            requests: BTreeMap::new(),
            lingering: BTreeSet::new(),
            read_repairs: 0,
        }
    }

    /// Read repairs sent since start.
    pub(crate) fn read_repairs(&self) -> u64 {
        self.read_repairs
    }

    /// Requests in flight, lingering ones included.
    pub(crate) fn in_flight(&self) -> usize {
        self.requests.len()
    }

    /// Removes request `req` from the table.
    fn take(&mut self, req: u64) -> Option<Request> {
        self.lingering.remove(&req);
        self.requests.remove(&req)
    }

    /// Request `req` answered its client and lingers; finishes the oldest lingering request
    /// when there are too many.
    fn linger(&mut self, req: u64, fx: &mut Effects<'_>) {
        self.lingering.insert(req);
        while self.lingering.len() > self.config.requests_in_flight_max {
            let Some(oldest) = self.lingering.pop_first() else {
                break;
            };
            if let Some(r) = self.requests.remove(&oldest) {
                if matches!(r.state, State::Read { .. }) {
                    self.read_repairs += finish_read(oldest, r, self.config.read_repair, fx);
                }
            }
        }
    }

    /// A client request arrived at this node; `client` is the driver's handle for the answer.
    pub(crate) fn handle_client(
        &mut self,
        client: u64,
        request: ClientRequest,
        trace: Option<Arc<str>>,
        fx: &mut Effects<'_>,
    ) {
        self.start(Origin::Client(client), request, trace, fx);
    }

    /// A message from node `from`.
    pub(crate) fn handle_message(
        &mut self,
        from: NodeId,
        msg: CoordinatorMessage,
        fx: &mut Effects<'_>,
    ) {
        match msg {
            CoordinatorMessage::Forward { req, request } => {
                self.start(Origin::Peer { node: from, req }, request, None, fx)
            }
            CoordinatorMessage::Forwarded { req, reply } => {
                let relayed = matches!(
                    self.requests.get(&req).map(|r| &r.state),
                    Some(State::Forwarded { to, .. }) if *to == from
                );
                if relayed {
                    if let Some(r) = self.take(req) {
                        answer(r.origin, reply, fx);
                    }
                }
            }
            CoordinatorMessage::Ack { req } => self.on_ack(req, from, fx),
            CoordinatorMessage::ReadReply { req, object } => {
                if self.looking(req) {
                    let reply = Some(Looked {
                        object,
                        partial: false,
                    });
                    self.on_look_reply(req, from, reply, fx)
                } else {
                    self.on_read_reply(req, from, Some(object), fx)
                }
            }
            CoordinatorMessage::PartialCopy { req, object } => {
                if self.looking(req) {
                    let reply = Some(Looked {
                        object,
                        partial: true,
                    });
                    self.on_look_reply(req, from, reply, fx)
                } else {
                    // Only a look is answered from a partial copy: this one is late (the
                    // request moved on) or forged, and counts for nothing.
                    debug!(req, %from, "ignored a partial copy that answers no look");
                }
            }
            CoordinatorMessage::Refused { req, error } => {
                let Some(r) = self.requests.get(&req) else {
                    debug!(req, %from, %error, "a replica refused its part");
                    return;
                };
                let request_id = r.trace.as_deref();
                debug!(req, request_id, %from, %error, "a replica refused its part");
                match &r.state {
                    State::Read { .. } => self.on_read_reply(req, from, None, fx),
                    State::Looking { .. } => self.on_look_reply(req, from, None, fx),
                    // A target that refuses a write's state (it stores every merge but one
                    // beyond its size limit) simply does not acknowledge: the write waits for
                    // others, a fallback, or its deadline. Never a type conflict: replicas
                    // merge states of every type.
                    _ => {}
                }
            }
        }
    }

    /// The local replica minted the write of request `req`.
    pub(crate) fn on_minted(
        &mut self,
        req: u64,
        result: Result<Minted, ClientError>,
        fx: &mut Effects<'_>,
    ) {
        let Some(r) = self.requests.get_mut(&req) else {
            return;
        };
        let State::Minting { targets, orphans } = &mut r.state else {
            return;
        };
        let (targets, orphans) = (std::mem::take(targets), std::mem::take(orphans));
        let Minted {
            object,
            outcome,
            durable_at,
        } = match result {
            Ok(m) => m,
            Err(e) => {
                if let Some(r) = self.take(req) {
                    answer(r.origin, ClientReply::Failed(e), fx);
                }
                return;
            }
        };
        // This node's own acknowledgement, once its copy holds the write durably: registered
        // here, after the request is writing, so an update whose id was applied before (its
        // copy durable already) counts at once instead of arriving while still minting.
        let local = targets
            .iter()
            .any(|t| t.node == fx.me && t.hint_for.is_none());
        if local {
            fx.after_durable(durable_at, fx.me, CoordinatorMessage::Ack { req }.into());
        }
        let holders = holders_of(&targets, fx);
        for t in &targets {
            if t.node == fx.me && t.hint_for.is_none() {
                // The local replica's acknowledgement comes with durability of the mint.
                continue;
            }
            // (This node as a fallback for a down replica keeps the hint like any fallback.)
            send_to_target(req, &r.key, &object, *t, &holders, fx);
        }
        for primary in orphans {
            fx.send(
                fx.me,
                HintsMessage::Store {
                    req: 0,
                    target: primary,
                    key: r.key.clone(),
                    object: object.clone(),
                    holders: holders.clone(),
                }
                .into(),
            );
        }
        fx.set_timer(self.config.hedge_after, CoordinatorTimer::Hedge { req });
        r.state = State::Writing {
            object,
            outcome,
            targets,
            acked: BTreeSet::new(),
            hinted: BTreeSet::new(),
            answered: false,
        };
    }

    /// The local replica has no copy of the key of write `req`: ask the key's other reachable
    /// replicas for theirs before applying (so a write of another type than the key's is
    /// refused, and the write starts from the key's contents).
    pub(crate) fn on_absent(
        &mut self,
        req: u64,
        op: MintOp,
        context: Option<Context>,
        fx: &mut Effects<'_>,
    ) {
        let Some(r) = self.requests.get_mut(&req) else {
            return;
        };
        let State::Minting { targets, orphans } = &mut r.state else {
            return;
        };
        let (targets, orphans) = (std::mem::take(targets), std::mem::take(orphans));
        let p = fx.topo.partition(&r.key);
        let primaries = fx.topo.primaries(p);
        let asked: Vec<NodeId> = primaries
            .iter()
            .copied()
            .filter(|&n| n != fx.me && fx.topo.is_alive(n))
            .collect();
        // The key's type is what its replicas hold: learn it from a majority of them (this node
        // counting when it is one with a complete copy of the partition), or apply nothing.
        let majority = primaries.len() / 2 + 1;
        let me = usize::from(primaries.contains(&fx.me) && fx.topo.holds(p));
        let need = majority.saturating_sub(me);
        if asked.len() < need {
            let error = unavailable(
                &format!(
                    "the key has no complete copy here and only {} of its {} replicas are reachable to say what it holds; nothing was applied",
                    asked.len() + me,
                    primaries.len()
                ),
                false,
                0,
                r.opts.w,
            );
            if let Some(r) = self.take(req) {
                answer(r.origin, ClientReply::Failed(error), fx);
            }
            return;
        }
        for &n in &asked {
            fx.send(
                n,
                ReplicaMessage::Read {
                    req,
                    key: r.key.clone(),
                    look: true,
                }
                .into(),
            );
        }
        r.state = State::Looking {
            targets,
            orphans,
            op,
            context,
            asked,
            replies: BTreeMap::new(),
            complete: 0,
            need,
        };
        if need == 0 {
            self.apply_after_look(req, fx);
        } else {
            fx.set_timer(self.config.hedge_after, CoordinatorTimer::Hedge { req });
        }
    }

    /// Whether request `req` is asking the key's replicas what the key holds.
    fn looking(&self, req: u64) -> bool {
        matches!(
            self.requests.get(&req).map(|r| &r.state),
            Some(State::Looking { .. })
        )
    }

    /// A replica answered a look (`Some`: with its copy, if any) or refused it (`None`).
    fn on_look_reply(
        &mut self,
        req: u64,
        from: NodeId,
        reply: Option<Looked>,
        fx: &mut Effects<'_>,
    ) {
        let Some(r) = self.requests.get_mut(&req) else {
            return;
        };
        let State::Looking {
            op,
            asked,
            replies,
            complete,
            need,
            ..
        } = &mut r.state
        else {
            return;
        };
        if !asked.contains(&from) || replies.contains_key(&from) {
            return;
        }
        let need = *need;
        if let Some(held) = reply
            .as_ref()
            .and_then(|l| l.object.as_ref())
            .filter(|o| !o.allows(op.type_name()))
            .map(Object::type_name)
        {
            let conflict = super::object::TypeConflict {
                held,
                offered: op.type_name(),
            };
            let error = ClientError::TypeConflict(format!("{conflict}; nothing was applied"));
            if let Some(r) = self.take(req) {
                answer(r.origin, ClientReply::Failed(error), fx);
            }
            return;
        }
        // A refusal (a replica that could not read) is no answer; a partial copy is merged
        // but counts toward nothing.
        match reply {
            Some(Looked { object, partial }) => {
                replies.insert(from, object);
                *complete += usize::from(!partial);
            }
            None => asked.retain(|&n| n != from),
        }
        let (got, left, complete) = (replies.len(), asked.len(), *complete);
        // Those that could still count: the complete replies, and the asked not answered
        // (every reply is from an asked node: `got <= left`).
        let possible = complete + left.saturating_sub(got);
        if got >= left && complete >= need {
            self.apply_after_look(req, fx);
        } else if possible < need {
            let error = unavailable(
                "too few replicas could say what the key holds; nothing was applied",
                false,
                0,
                r.opts.w,
            );
            if let Some(r) = self.take(req) {
                answer(r.origin, ClientReply::Failed(error), fx);
            }
        }
    }

    /// Done looking (a majority answered, and every asked replica or the hedge timer): apply
    /// the update on the local replica, starting from what the others hold.
    fn apply_after_look(&mut self, req: u64, fx: &mut Effects<'_>) {
        let Some(r) = self.requests.get_mut(&req) else {
            return;
        };
        let State::Looking {
            targets,
            orphans,
            op,
            context,
            replies,
            ..
        } = &mut r.state
        else {
            return;
        };
        let mut seed: Option<Object> = None;
        for o in replies.values().flatten() {
            match &mut seed {
                None => seed = Some(o.clone()),
                Some(s) => s.merge(o),
            }
        }
        if let Some(s) = seed.as_ref().filter(|s| !s.allows(op.type_name())) {
            let conflict = super::object::TypeConflict {
                held: s.type_name(),
                offered: op.type_name(),
            };
            let error = ClientError::TypeConflict(format!("{conflict}; nothing was applied"));
            if let Some(r) = self.take(req) {
                answer(r.origin, ClientReply::Failed(error), fx);
            }
            return;
        }
        let (op, context) = (op.clone(), context.take());
        let (targets, orphans) = (std::mem::take(targets), std::mem::take(orphans));
        r.state = State::Minting { targets, orphans };
        fx.calls.push_back(Call::Replica(ReplicaCall::Mint {
            req,
            key: r.key.clone(),
            op,
            context,
            looked: true,
            seed: seed.map(Box::new),
        }));
    }

    /// A timer fired.
    pub(crate) fn handle_timer(&mut self, timer: CoordinatorTimer, fx: &mut Effects<'_>) {
        match timer {
            CoordinatorTimer::Deadline { req } => self.on_deadline(req, fx),
            CoordinatorTimer::Hedge { req } => self.on_hedge(req, fx),
        }
    }

    fn start(
        &mut self,
        origin: Origin,
        request: ClientRequest,
        trace: Option<Arc<str>>,
        fx: &mut Effects<'_>,
    ) {
        if self.requests.len() - self.lingering.len() >= self.config.requests_in_flight_max {
            answer(origin, ClientReply::Failed(ClientError::Overloaded), fx);
            return;
        }
        if fx.topo.left {
            // Left, or removed by an operator: this node serves no data any more.
            let why = "this node has left the cluster (or an operator removed it); send the request to a member";
            answer(
                origin,
                ClientReply::Failed(unavailable(why, false, 0, 1)),
                fx,
            );
            return;
        }
        // Quorums are bounded by the replicas that exist: N, or every owner when there are fewer.
        let opts = match self.config.validate(&request, fx.topo.replicas().max(1)) {
            Ok(o) => o,
            Err(e) => {
                answer(origin, ClientReply::Failed(e), fx);
                return;
            }
        };
        let p = fx.topo.partition(&request.key);
        let primaries = fx.topo.primaries(p);
        if primaries.is_empty() {
            let error = unavailable("no node owns partitions yet", false, 0, 1);
            answer(origin, ClientReply::Failed(error), fx);
            return;
        }
        let req = self.next_req;
        // (0 means "no acknowledgement wanted" on the wire: never use it.)
        self.next_req = self.next_req.wrapping_add(1).max(1);
        let ClientRequest { key, op, .. } = request.clone();
        let (op_id, update_type) = match &op {
            ClientOp::Update { op_id, op } => (Some(op_id.clone()), Some(op.type_name())),
            _ => (None, None),
        };
        let state = match op {
            ClientOp::Get => {
                // Ask r reachable replicas, this node first when it is one (its copy costs no
                // message); the others are asked only if one of those is slow.
                let mut reachable: Vec<NodeId> = primaries
                    .iter()
                    .copied()
                    .filter(|&n| fx.topo.is_alive(n))
                    .collect();
                if let Some(i) = reachable.iter().position(|&n| n == fx.me) {
                    reachable[..=i].rotate_right(1);
                }
                if reachable.len() < opts.r {
                    let error = unavailable(
                        &format!(
                            "only {} of the key's {} replicas are reachable; r={}",
                            reachable.len(),
                            primaries.len(),
                            opts.r
                        ),
                        false,
                        reachable.len(),
                        opts.r,
                    );
                    answer(origin, ClientReply::Failed(error), fx);
                    return;
                }
                let spare = reachable.split_off(opts.r);
                let targets = reachable;
                fx.set_timer(self.config.hedge_after, CoordinatorTimer::Hedge { req });
                for &t in &targets {
                    fx.send(
                        t,
                        ReplicaMessage::Read {
                            req,
                            key: key.clone(),
                            look: false,
                        }
                        .into(),
                    );
                }
                State::Read {
                    targets,
                    spare,
                    replies: BTreeMap::new(),
                    merged: None,
                    answered: false,
                }
            }
            ClientOp::Put { .. } | ClientOp::Delete { .. } | ClientOp::Update { .. } => {
                let first_alive = primaries.iter().copied().find(|&n| fx.topo.is_alive(n));
                let forward_to = match (origin, first_alive) {
                    (Origin::Client(_), Some(f)) if !primaries.contains(&fx.me) => Some(f),
                    _ => None,
                };
                // A CRDT update is applied only by a replica of its key: its operation log
                // forgets a record once every replica holds it, which tells nothing of a node
                // outside the preference list that applied it too.
                if matches!(op, ClientOp::Update { .. })
                    && forward_to.is_none()
                    && !primaries.contains(&fx.me)
                {
                    let why = "no replica of the key is reachable to apply the update; nothing was applied";
                    answer(
                        origin,
                        ClientReply::Failed(unavailable(why, false, 0, opts.w)),
                        fx,
                    );
                    return;
                }
                if let Some(to) = forward_to {
                    fx.send(to, CoordinatorMessage::Forward { req, request }.into());
                    fx.set_timer(
                        opts.timeout + FORWARD_GRACE,
                        CoordinatorTimer::Deadline { req },
                    );
                    self.requests.insert(
                        req,
                        Request {
                            origin,
                            trace,
                            key,
                            opts,
                            op_id,
                            update_type,
                            state: State::Forwarded { to, write: true },
                        },
                    );
                    return;
                }
                let (targets, orphans) = self.write_targets(&primaries, p, &opts, fx);
                let reachable = targets.len();
                if reachable < opts.w {
                    let why = if opts.strict {
                        format!(
                            "only {reachable} of the key's {} replicas are reachable and the request is strict; w={}",
                            primaries.len(),
                            opts.w
                        )
                    } else {
                        format!("only {reachable} nodes can take the write; w={}", opts.w)
                    };
                    answer(
                        origin,
                        ClientReply::Failed(unavailable(&why, false, 0, opts.w)),
                        fx,
                    );
                    return;
                }
                let (mint, context) = match op {
                    ClientOp::Put { value, context } => (MintOp::Put(value), context),
                    ClientOp::Delete { context } => (MintOp::Delete, context),
                    ClientOp::Update { op, op_id } => (MintOp::Update { op, op_id }, None),
                    // (Reads took the branch above.)
                    ClientOp::Get => return,
                };
                fx.calls.push_back(Call::Replica(ReplicaCall::Mint {
                    req,
                    key: key.clone(),
                    op: mint,
                    context,
                    looked: false,
                    seed: None,
                }));
                State::Minting { targets, orphans }
            }
        };
        fx.set_timer(opts.timeout, CoordinatorTimer::Deadline { req });
        self.requests.insert(
            req,
            Request {
                origin,
                trace,
                key,
                opts,
                op_id,
                update_type,
                state,
            },
        );
    }

    /// The nodes a write goes to: each reachable replica, and for each unreachable one the next
    /// reachable fallback (not for a strict request). Replicas no fallback can cover are
    /// returned apart: this node keeps their hints.
    fn write_targets(
        &self,
        primaries: &[NodeId],
        p: crate::ring::PartitionId,
        opts: &Resolved,
        fx: &Effects<'_>,
    ) -> (Vec<Target>, Vec<NodeId>) {
        let mut targets: Vec<Target> = Vec::new();
        let mut orphans = Vec::new();
        let mut fallbacks = fx
            .topo
            .fallbacks(p)
            .into_iter()
            .filter(|&n| fx.topo.is_alive(n));
        for &node in primaries {
            if fx.topo.is_alive(node) {
                targets.push(Target {
                    node,
                    hint_for: None,
                });
            } else if opts.strict {
                continue;
            } else if let Some(fb) = fallbacks.next() {
                targets.push(Target {
                    node: fb,
                    hint_for: Some(node),
                });
            } else {
                orphans.push(node);
            }
        }
        (targets, orphans)
    }

    fn on_ack(&mut self, req: u64, from: NodeId, fx: &mut Effects<'_>) {
        let Some(r) = self.requests.get_mut(&req) else {
            return;
        };
        let State::Writing {
            targets,
            acked,
            answered,
            ..
        } = &mut r.state
        else {
            return;
        };
        if !targets.iter().any(|t| t.node == from) {
            // Not one of this request's targets: an acknowledgement nobody asked for counts
            // for nothing.
            let request_id = r.trace.as_deref();
            debug!(
                req,
                request_id,
                %from,
                "ignored an acknowledgement from a node that is not a target"
            );
            return;
        }
        acked.insert(from);
        let everyone = targets.iter().all(|t| acked.contains(&t.node));
        let mut now_answered = false;
        if !*answered && acked.len() >= r.opts.w {
            *answered = true;
            now_answered = true;
            let (origin, reply) = (r.origin, written(r));
            answer(origin, reply, fx);
        }
        if everyone {
            self.take(req);
        } else if now_answered {
            self.linger(req, fx);
        }
    }

    fn on_read_reply(
        &mut self,
        req: u64,
        from: NodeId,
        object: Option<Option<Object>>,
        fx: &mut Effects<'_>,
    ) {
        let Some(r) = self.requests.get_mut(&req) else {
            return;
        };
        let State::Read {
            targets,
            spare,
            replies,
            merged,
            answered,
        } = &mut r.state
        else {
            return;
        };
        if !targets.contains(&from) || replies.contains_key(&from) {
            return;
        }
        match object {
            Some(obj) => {
                if let Some(o) = &obj {
                    match merged {
                        None => *merged = Some(o.clone()),
                        Some(m) => {
                            m.merge(o);
                            if m.is_contested() {
                                let request_id = r.trace.as_deref();
                                debug!(req, request_id, %from, types = ?m.live_types(), "the key is contested");
                            }
                        }
                    }
                }
                replies.insert(from, obj);
            }
            // A refusal: no longer waited for, not a reply for the quorum or repair; a spare
            // replica is asked instead, if one is left.
            None => {
                targets.retain(|&t| t != from);
                if !spare.is_empty() {
                    let next = spare.remove(0);
                    targets.push(next);
                    fx.send(
                        next,
                        ReplicaMessage::Read {
                            req,
                            key: r.key.clone(),
                            look: false,
                        }
                        .into(),
                    );
                }
            }
        }
        let answers = replies.len();
        let mut now_answered = false;
        if !*answered && answers >= r.opts.r {
            *answered = true;
            now_answered = true;
            let reply = read_result(&r.key, merged.as_ref(), answers);
            answer(r.origin, ClientReply::Read(reply), fx);
        }
        if replies.len() < targets.len() {
            if now_answered {
                self.linger(req, fx);
            }
        } else if let Some(r) = self.take(req) {
            let (origin, needed, answered) = (
                r.origin,
                r.opts.r,
                matches!(r.state, State::Read { answered: true, .. }),
            );
            self.read_repairs += finish_read(req, r, self.config.read_repair, fx);
            if !answered {
                // Every replica that could answer did, and too few could.
                let error = unavailable(
                    &format!("only {answers} replicas could answer; r={needed}"),
                    false,
                    answers,
                    needed,
                );
                answer(origin, ClientReply::Failed(error), fx);
            }
        }
    }

    fn on_deadline(&mut self, req: u64, fx: &mut Effects<'_>) {
        let Some(r) = self.take(req) else {
            return;
        };
        match &r.state {
            State::Read { answered: true, .. } => {
                self.read_repairs += finish_read(req, r, self.config.read_repair, fx);
            }
            State::Read { replies, .. } => {
                let got = replies.len();
                let error = unavailable(
                    &format!(
                        "timed out after {} ms with {got} of {} replies",
                        r.opts.timeout.as_millis(),
                        r.opts.r
                    ),
                    false,
                    got,
                    r.opts.r,
                );
                let (origin, needed) = (r.origin, r.opts.r);
                let _ = needed;
                self.read_repairs += finish_read(req, r, self.config.read_repair, fx);
                answer(origin, ClientReply::Failed(error), fx);
            }
            State::Writing { answered: true, .. } => {}
            State::Looking {
                replies,
                complete,
                need,
                ..
            } => {
                // Nothing was applied yet.
                let error = unavailable(
                    &format!(
                        "timed out after {} ms while reading the key's type ({} replies, {complete} of them from complete copies; {need} needed); nothing was applied",
                        r.opts.timeout.as_millis(),
                        replies.len()
                    ),
                    false,
                    0,
                    r.opts.w,
                );
                answer(r.origin, ClientReply::Failed(error), fx);
            }
            State::Minting { .. } | State::Writing { .. } => {
                let acks = match &r.state {
                    State::Writing { acked, .. } => acked.len(),
                    _ => 0,
                };
                let error = unavailable(
                    &format!(
                        "timed out after {} ms with {acks} of {} acknowledgements; the write may still be applied",
                        r.opts.timeout.as_millis(),
                        r.opts.w
                    ),
                    true,
                    acks,
                    r.opts.w,
                );
                answer(r.origin, ClientReply::Failed(error), fx);
            }
            State::Forwarded { to, write } => {
                let error = unavailable(
                    &format!("no answer from {to}, which coordinates the request"),
                    *write,
                    0,
                    r.opts.w,
                );
                answer(r.origin, ClientReply::Failed(error), fx);
            }
        }
    }

    /// Write `req` has targets that have not acknowledged after a while: each gets a fallback
    /// holding a hint for the replica (not for a strict request), or, when no fallback is left,
    /// this node keeps the hint itself, so the replica gets the write when it is back.
    fn on_hedge(&mut self, req: u64, fx: &mut Effects<'_>) {
        let Some(r) = self.requests.get_mut(&req) else {
            return;
        };
        if let State::Looking { complete, need, .. } = &r.state {
            // Slow replicas: go on once a majority with complete copies answered (else keep
            // waiting, until the deadline).
            if *complete >= *need {
                self.apply_after_look(req, fx);
            } else {
                fx.set_timer(self.config.hedge_after, CoordinatorTimer::Hedge { req });
            }
            return;
        }
        if let State::Read {
            targets,
            spare,
            replies,
            answered,
            ..
        } = &mut r.state
        {
            // A read still short of its quorum asks one more replica per silent one.
            if !*answered {
                let silent = targets.iter().filter(|t| !replies.contains_key(t)).count();
                for _ in 0..silent {
                    if spare.is_empty() {
                        break;
                    }
                    let next = spare.remove(0);
                    targets.push(next);
                    fx.send(
                        next,
                        ReplicaMessage::Read {
                            req,
                            key: r.key.clone(),
                            look: false,
                        }
                        .into(),
                    );
                }
                fx.set_timer(self.config.hedge_after, CoordinatorTimer::Hedge { req });
            }
            return;
        }
        let State::Writing {
            object,
            targets,
            acked,
            hinted,
            ..
        } = &mut r.state
        else {
            return;
        };
        let p = fx.topo.partition(&r.key);
        let used: BTreeSet<NodeId> = targets.iter().map(|t| t.node).collect();
        let candidates: Vec<NodeId> = if r.opts.strict {
            Vec::new()
        } else {
            fx.topo
                .fallbacks(p)
                .into_iter()
                .filter(|&n| fx.topo.is_alive(n) && !used.contains(&n) && n != fx.me)
                .collect()
        };
        let mut fallbacks = candidates.into_iter();
        let covered: BTreeSet<NodeId> = targets
            .iter()
            .filter_map(|t| t.hint_for)
            .chain(hinted.iter().copied())
            .collect();
        let silent: Vec<Target> = targets
            .iter()
            .copied()
            .filter(|t| !acked.contains(&t.node))
            .collect();
        let mut added = Vec::new();
        let mut kept = Vec::new();
        for t in silent {
            let primary = t.hint_for.unwrap_or(t.node);
            if t.hint_for.is_none() && covered.contains(&primary) {
                continue;
            }
            match fallbacks.next() {
                // The placement may have moved since the write started: a fallback that is the
                // silent replica itself takes a plain write, not a hint for itself.
                Some(fb) => added.push(Target {
                    node: fb,
                    hint_for: (fb != primary).then_some(primary),
                }),
                None if primary != fx.me && hinted.insert(primary) => kept.push(primary),
                None => {}
            }
        }
        targets.extend(added.iter().copied());
        // Every node the write went to, these included.
        let holders = holders_of(targets, fx);
        for extra in added {
            send_to_target(req, &r.key, object, extra, &holders, fx);
        }
        if !self.config.hints {
            // Hints are turned off: an unreachable replica catches up by anti-entropy.
            kept.clear();
        }
        for primary in kept {
            fx.send(
                fx.me,
                HintsMessage::Store {
                    req: 0,
                    target: primary,
                    key: r.key.clone(),
                    object: object.clone(),
                    holders: holders.clone(),
                }
                .into(),
            );
        }
        fx.set_timer(self.config.hedge_after, CoordinatorTimer::Hedge { req });
    }
}

/// The nodes a write goes to (this node, which minted it, included), sorted.
fn holders_of(targets: &[Target], fx: &Effects<'_>) -> Vec<NodeId> {
    let mut h: Vec<NodeId> = targets.iter().map(|t| t.node).collect();
    h.push(fx.me);
    h.sort_unstable();
    h.dedup();
    h
}

fn send_to_target(
    req: u64,
    key: &[u8],
    object: &Object,
    t: Target,
    holders: &[NodeId],
    fx: &mut Effects<'_>,
) {
    let msg = match t.hint_for {
        None => ReplicaMessage::Write {
            req,
            key: key.to_vec(),
            object: object.clone(),
        }
        .into(),
        Some(primary) => HintsMessage::Store {
            req,
            target: primary,
            key: key.to_vec(),
            object: object.clone(),
            holders: holders.to_vec(),
        }
        .into(),
    };
    fx.send(t.node, msg);
}

/// After a read: send the merged state to every replica that answered with less (unless read
/// repair is turned off).
/// Sends the merged state to every replica whose reply differed; returns how many.
fn finish_read(req: u64, r: Request, read_repair: bool, fx: &mut Effects<'_>) -> u64 {
    let State::Read {
        replies, merged, ..
    } = r.state
    else {
        return 0;
    };
    let Some(merged) = merged else { return 0 };
    if !read_repair {
        return 0;
    }
    let mut sent = 0;
    for (node, reply) in replies {
        // A copy that differs only in its operation logs' replica rows is left to
        // anti-entropy: otherwise every read after a CRDT update would repair.
        if reply.as_ref().is_none_or(|o| !o.same_data(&merged)) {
            sent += 1;
            debug!(req, request_id = r.trace.as_deref(), %node, "read repair");
            fx.send(
                node,
                ReplicaMessage::Write {
                    req: 0,
                    key: r.key.clone(),
                    object: merged.clone(),
                }
                .into(),
            );
        }
    }
    sent
}

fn read_result(key: &[u8], merged: Option<&Object>, replies: usize) -> ReadResult {
    let reg = merged.and_then(Object::as_register);
    let contested = merged.is_some_and(Object::is_contested);
    ReadResult {
        type_name: merged.map(|o| o.type_name().to_owned()),
        values: reg.map_or_else(Vec::new, |r| r.values().map(<[u8]>::to_vec).collect()),
        crdt: merged.and_then(Object::crdt_value),
        context: merged.and_then(|o| o.context(key)),
        deleted: merged.is_some_and(|o| o.live_types().is_empty())
            && reg.is_some_and(|r| r.is_deleted()),
        replies,
        parts: if contested {
            merged.map_or_else(Vec::new, |o| o.parts(key))
        } else {
            Vec::new()
        },
    }
}

fn written(r: &Request) -> ClientReply {
    let State::Writing {
        object,
        outcome,
        acked,
        ..
    } = &r.state
    else {
        return ClientReply::Failed(ClientError::Internal("not a write".into()));
    };
    let acked_by: Vec<NodeId> = acked.iter().copied().collect();
    match outcome {
        MintOutcome::Dot(dot) => match object.as_register() {
            Some(reg) => ClientReply::Written(WriteResult {
                values: reg.values().map(<[u8]>::to_vec).collect(),
                context: Context::new(&r.key, reg.context()),
                acks: acked.len(),
                acked_by,
                dot: *dot,
            }),
            None => ClientReply::Failed(ClientError::Internal(
                "a register write left no register".into(),
            )),
        },
        MintOutcome::Update(effect) => {
            // The part the update applied to (the key may hold others: contested).
            let part = r.update_type.and_then(|t| object.part(t));
            let value = part.as_deref().and_then(Object::crdt_value);
            match (part.as_deref(), value) {
                (Some(p), Some(value)) => ClientReply::Updated(UpdateResult {
                    type_name: p.type_name().to_owned(),
                    value,
                    context: p.context(&r.key),
                    op_id: r.op_id.clone().unwrap_or_default(),
                    replayed: effect.replayed,
                    notes: effect.notes.clone(),
                    acks: acked.len(),
                    acked_by,
                }),
                _ => ClientReply::Failed(ClientError::Internal(
                    "the write's outcome does not match the key's type".into(),
                )),
            }
        }
    }
}

fn unavailable(message: &str, indeterminate: bool, acks: usize, needed: usize) -> ClientError {
    ClientError::Unavailable {
        message: message.to_owned(),
        indeterminate,
        acks,
        needed,
    }
}

fn answer(origin: Origin, reply: ClientReply, fx: &mut Effects<'_>) {
    match origin {
        Origin::Client(client) => fx.out.push(Output::Reply { client, reply }),
        Origin::Peer { node, req } => {
            fx.send(node, CoordinatorMessage::Forwarded { req, reply }.into())
        }
    }
}
