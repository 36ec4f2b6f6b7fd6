//! The history: every client operation of a run with its start, end and outcome.
//!
//! Clients (workloads, and the nemesis, which is a client that injects faults) record an
//! operation when they invoke it and complete it when they learn its outcome, exactly as a
//! Jepsen history does. An outcome is `ok` (it happened), `failed` (it certainly did not happen)
//! or `indeterminate` (it may or may not have happened: a timeout, a crash in the middle).
//! Checkers read the history after the run; nothing here touches the cluster.

use std::fmt;
use std::time::Duration;

use chorus::causality::{Dot, VersionVector};
use chorus::node::{ClientError, CrdtOp, CrdtValue, ReadResult, RequestOptions};
use chorus::NodeId;

/// Index of an operation in its [`History`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct OpId(pub usize);

/// What an operation does. New workloads add their own variants.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum OpKind {
    /// Start a new node (slot `node`) and wait until it is a ring member.
    Join {
        /// The node slot.
        node: usize,
    },
    /// Kill a node's process; its unsynced writes are lost.
    Crash {
        /// The node slot.
        node: usize,
    },
    /// Start a crashed node's process again from its disk.
    Restart {
        /// The node slot.
        node: usize,
    },
    /// Ask a node to leave the cluster for good.
    Leave {
        /// The node slot.
        node: usize,
    },
    /// Cancel the leave of node `node` while it is still handing its partitions over.
    CancelLeave {
        /// The node slot.
        node: usize,
    },
    /// Ask node `via` to remove the dead node `node` from the ring for good (an operator's
    /// decision after a machine is lost).
    Remove {
        /// The node slot removed.
        node: usize,
        /// The node slot asked to do it.
        via: usize,
    },
    /// Update a CRDT key through node `node` (`what` describes the update and its op id).
    Update {
        /// The key.
        key: String,
        /// The update.
        what: String,
        /// The node asked.
        node: usize,
    },
    /// Read a key through node `node`.
    Read {
        /// The key.
        key: String,
        /// The node asked.
        node: usize,
    },
    /// Write `value` to a register key through node `node`.
    Write {
        /// The key.
        key: String,
        /// The value (unique in a run).
        value: String,
        /// The node asked.
        node: usize,
    },
    /// Delete a register key through node `node`.
    Delete {
        /// The key.
        key: String,
        /// The node asked.
        node: usize,
    },
    /// Pause a node's process, as `SIGSTOP` would.
    Pause {
        /// The node slot.
        node: usize,
    },
    /// Resume a paused node's process.
    Resume {
        /// The node slot.
        node: usize,
    },
    /// Cut the network (the partition's description).
    Partition(String),
    /// End the partition.
    Heal,
    /// Degrade every link (the degradation's description).
    Degrade(String),
    /// End the degraded period.
    Restore,
}

impl OpKind {
    /// The node the operation is about, if it is about one node.
    pub fn node(&self) -> Option<usize> {
        match *self {
            OpKind::Join { node }
            | OpKind::Crash { node }
            | OpKind::Restart { node }
            | OpKind::Leave { node }
            | OpKind::Pause { node }
            | OpKind::Resume { node }
            | OpKind::CancelLeave { node }
            | OpKind::Remove { node, .. } => Some(node),
            OpKind::Read { node, .. }
            | OpKind::Write { node, .. }
            | OpKind::Delete { node, .. }
            | OpKind::Update { node, .. } => Some(node),
            _ => None,
        }
    }
}

impl fmt::Display for OpKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            OpKind::Join { node } => write!(f, "join n{node}"),
            OpKind::Crash { node } => write!(f, "crash n{node}"),
            OpKind::Restart { node } => write!(f, "restart n{node}"),
            OpKind::Leave { node } => write!(f, "leave n{node}"),
            OpKind::CancelLeave { node } => write!(f, "cancel the leave of n{node}"),
            OpKind::Remove { node, via } => write!(f, "remove n{node} via n{via}"),
            OpKind::Pause { node } => write!(f, "pause n{node}"),
            OpKind::Resume { node } => write!(f, "resume n{node}"),
            OpKind::Read { key, node } => write!(f, "read {key} at n{node}"),
            OpKind::Write { key, value, node } => write!(f, "write {key}={value} at n{node}"),
            OpKind::Delete { key, node } => write!(f, "delete {key} at n{node}"),
            OpKind::Update { key, what, node } => write!(f, "update {key} {what} at n{node}"),
            OpKind::Partition(p) => write!(f, "partition ({p})"),
            OpKind::Heal => f.write_str("heal"),
            OpKind::Degrade(d) => write!(f, "degrade ({d})"),
            OpKind::Restore => f.write_str("restore"),
        }
    }
}

/// How an operation ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// It happened.
    Ok,
    /// It certainly did not happen (the reason).
    Failed(String),
    /// It may or may not have happened (the reason).
    Indeterminate(String),
}

impl Outcome {
    /// `ok`, `failed` or `indeterminate`.
    pub fn label(&self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Failed(_) => "failed",
            Outcome::Indeterminate(_) => "indeterminate",
        }
    }
}

impl Outcome {
    /// A failure as the data workloads record it: the error's code, a colon, its message.
    pub fn failed(e: &ClientError) -> Outcome {
        Outcome::Failed(format!("{}: {e}", e.code()))
    }

    /// The error code of a failure recorded by [`Outcome::failed`] (`type_conflict`,
    /// `too_large`, `unavailable`, ...).
    pub fn failure_code(&self) -> Option<&str> {
        match self {
            Outcome::Failed(why) => why.split_once(':').map(|(code, _)| code),
            _ => None,
        }
    }

    /// Whether this is a refusal of the write itself (its type, size or content), which a
    /// retry cannot change: `type_conflict`, `too_large` or `bad_request`.
    pub fn is_refusal(&self) -> bool {
        matches!(
            self.failure_code(),
            Some("type_conflict" | "too_large" | "bad_request")
        )
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Outcome::Ok => f.write_str("ok"),
            Outcome::Failed(why) => write!(f, "failed: {why}"),
            Outcome::Indeterminate(why) => write!(f, "indeterminate: {why}"),
        }
    }
}

/// One operation as recorded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Operation {
    /// Its index in the history.
    pub id: OpId,
    /// The client that issued it (e.g. `membership`, `nemesis`).
    pub client: &'static str,
    /// What it does.
    pub kind: OpKind,
    /// When it was invoked.
    pub start: Duration,
    /// When its outcome became known (`None` while pending).
    pub end: Option<Duration>,
    /// Its outcome (`None` while pending).
    pub outcome: Option<Outcome>,
}

/// What a register operation sent and got back, beyond its kind and outcome: what the data
/// checkers judge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DataOp {
    /// The operation.
    pub op: OpId,
    /// The key.
    pub key: String,
    /// The context the client sent (writes and deletes).
    pub context: Option<VersionVector>,
    /// Whether it is one of the reads done after the heal to judge what survived.
    pub final_read: bool,
    /// The request's options (`r`, `w`, `strict`).
    pub options: RequestOptions,
    /// What came back, once something did.
    pub result: Option<DataResult>,
}

/// A register operation's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DataResult {
    /// A read: the live values and the context.
    Read {
        /// The values (strings in the simulator).
        values: Vec<String>,
        /// The context, if the key is known.
        context: Option<VersionVector>,
    },
    /// A write or delete: the live values after it, the new context, the write's dot and who
    /// acknowledged it durably.
    Written {
        /// The values after the write.
        values: Vec<String>,
        /// The new context.
        context: VersionVector,
        /// The write's dot.
        dot: Dot,
        /// Who acknowledged it.
        acked_by: Vec<NodeId>,
    },
}

/// What a CRDT client sent and got back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CrdtRecord {
    /// The operation in the history.
    pub op: OpId,
    /// The key.
    pub key: String,
    /// The update and its operation id (`None`: a read).
    pub update: Option<(CrdtOp, String)>,
    /// Whether this is one of the reads at `r=N` after the heal.
    pub final_read: bool,
    /// The value read, or the notes of an applied update.
    pub result: Option<CrdtResult>,
    /// Which attempt of its operation id an update is (1: the first; retries send the same id
    /// again).
    pub attempt: u32,
    /// How many attempts the client makes at most before it gives up on the id.
    pub attempts_max: u32,
    /// The request's options (`w`, `strict`, timeout).
    pub options: RequestOptions,
}

impl CrdtRecord {
    /// A record of attempt 1 of 1 with default options (what tests build).
    pub fn new(
        op: OpId,
        key: &str,
        update: Option<(CrdtOp, String)>,
        final_read: bool,
        result: Option<CrdtResult>,
    ) -> Self {
        CrdtRecord {
            op,
            key: key.to_owned(),
            update,
            final_read,
            result,
            attempt: 1,
            attempts_max: 1,
            options: RequestOptions::default(),
        }
    }
}

/// One live part of a contested key as a read showed it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartRead {
    /// The part's type.
    pub type_name: String,
    /// A CRDT part's value.
    pub value: Option<CrdtValue>,
    /// A register part's live values (as the register workload names them).
    pub values: Vec<String>,
}

/// What a read of a key showed, as the CRDT checkers need it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CrdtRead {
    /// The key's type (`None`: no replica knows the key; `contested`: see `parts`).
    pub type_name: Option<String>,
    /// The value of a key with one live CRDT part.
    pub value: Option<CrdtValue>,
    /// The register part's live values (also of a contested key).
    pub values: Vec<String>,
    /// Every live part of a contested key (empty otherwise).
    pub parts: Vec<PartRead>,
}

impl CrdtRead {
    /// A read of a key with one CRDT type (`None`: absent).
    pub fn single(type_name: &str, value: Option<CrdtValue>) -> Self {
        CrdtRead {
            type_name: value.as_ref().map(|_| type_name.to_owned()),
            value,
            ..CrdtRead::default()
        }
    }

    /// What a node's read answer shows; register values are named by `name` (see the register
    /// workload's large values).
    pub fn from_result(r: &ReadResult, name: impl Fn(&[u8]) -> String) -> Self {
        CrdtRead {
            type_name: r.type_name.clone(),
            value: r.crdt.clone(),
            values: r.values.iter().map(|v| name(v)).collect(),
            parts: r
                .parts
                .iter()
                .map(|p| PartRead {
                    type_name: p.type_name.clone(),
                    value: p.crdt.clone(),
                    values: p.values.iter().map(|v| name(v)).collect(),
                })
                .collect(),
        }
    }

    /// Whether the read shows a live part of type `type_name`.
    pub fn has(&self, type_name: &str) -> bool {
        if self.parts.is_empty() {
            self.type_name.as_deref() == Some(type_name)
        } else {
            self.parts.iter().any(|p| p.type_name == type_name)
        }
    }

    /// The value of the part of CRDT type `type_name` (`None`: the key has no such part).
    pub fn part(&self, type_name: &str) -> Option<&CrdtValue> {
        if self.parts.is_empty() {
            (self.type_name.as_deref() == Some(type_name))
                .then_some(self.value.as_ref())
                .flatten()
        } else {
            self.parts
                .iter()
                .find(|p| p.type_name == type_name)
                .and_then(|p| p.value.as_ref())
        }
    }

    /// The types of the live parts shown (one, or several for a contested key).
    pub fn live_types(&self) -> Vec<&str> {
        if self.parts.is_empty() {
            match self.type_name.as_deref() {
                // A deleted register holds no live type.
                Some("register") if self.values.is_empty() => Vec::new(),
                Some(t) => vec![t],
                None => Vec::new(),
            }
        } else {
            self.parts.iter().map(|p| p.type_name.as_str()).collect()
        }
    }
}

/// The answer to a CRDT operation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CrdtResult {
    /// A read: what it showed.
    Read(CrdtRead),
    /// An update was acknowledged, with what it said had no effect.
    Updated {
        /// The reply's notes.
        notes: Vec<String>,
        /// The nodes that acknowledged it durably.
        acked_by: Vec<NodeId>,
        /// The id had been applied before: the reply acknowledges that earlier update, and its
        /// notes say nothing of what that update did.
        replayed: bool,
    },
}

/// Every operation of a run, in invocation order.
#[derive(Debug, Clone, Default)]
pub struct History {
    ops: Vec<Operation>,
    data: Vec<DataOp>,
    crdt: Vec<CrdtRecord>,
}

/// How many operations ended each way.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OutcomeCounts {
    /// Operations that happened.
    pub ok: usize,
    /// Operations that certainly did not happen.
    pub failed: usize,
    /// Operations that may or may not have happened.
    pub indeterminate: usize,
    /// Operations without an outcome yet.
    pub pending: usize,
}

impl History {
    /// An empty history.
    pub fn new() -> Self {
        Self::default()
    }

    /// Records the invocation of an operation.
    pub fn invoke(&mut self, client: &'static str, kind: OpKind, now: Duration) -> OpId {
        let id = OpId(self.ops.len());
        self.ops.push(Operation {
            id,
            client,
            kind,
            start: now,
            end: None,
            outcome: None,
        });
        id
    }

    /// Records the outcome of a pending operation. Completing an operation twice or with an
    /// unknown id is ignored (the first outcome stands).
    pub fn complete(&mut self, id: OpId, now: Duration, outcome: Outcome) {
        if let Some(op) = self.ops.get_mut(id.0) {
            if op.outcome.is_none() {
                op.end = Some(now);
                op.outcome = Some(outcome);
            }
        }
    }

    /// Invokes and completes an instantaneous operation.
    pub fn instant(
        &mut self,
        client: &'static str,
        kind: OpKind,
        now: Duration,
        outcome: Outcome,
    ) -> OpId {
        let id = self.invoke(client, kind, now);
        self.complete(id, now, outcome);
        id
    }

    /// Marks every pending operation indeterminate at `now` (the run is over).
    pub fn close(&mut self, now: Duration) {
        for op in self.ops.iter_mut().filter(|op| op.outcome.is_none()) {
            op.end = Some(now);
            op.outcome = Some(Outcome::Indeterminate(
                "still pending when the run ended".into(),
            ));
        }
    }

    /// Every operation, in invocation order.
    pub fn ops(&self) -> &[Operation] {
        &self.ops
    }

    /// Records the details of a register operation.
    pub fn record_data(&mut self, data: DataOp) {
        self.data.push(data);
    }

    /// Sets what a register operation got back.
    pub fn data_result(&mut self, op: OpId, result: DataResult) {
        if let Some(d) = self.data.iter_mut().rev().find(|d| d.op == op) {
            d.result = Some(result);
        }
    }

    /// Every register operation's details, in invocation order.
    pub fn data(&self) -> &[DataOp] {
        &self.data
    }

    /// What register operations sent, to edit (checker tests build histories with it).
    #[cfg(test)]
    pub fn data_mut(&mut self) -> &mut [DataOp] {
        &mut self.data
    }

    /// Records what a CRDT operation sent.
    pub fn record_crdt(&mut self, record: CrdtRecord) {
        self.crdt.push(record);
    }

    /// Records what a CRDT operation got back.
    pub fn crdt_result(&mut self, op: OpId, result: CrdtResult) {
        if let Some(d) = self.crdt.iter_mut().rev().find(|d| d.op == op) {
            d.result = Some(result);
        }
    }

    /// Every CRDT operation's record.
    pub fn crdt(&self) -> &[CrdtRecord] {
        &self.crdt
    }

    /// One operation.
    pub fn get(&self, id: OpId) -> Option<&Operation> {
        self.ops.get(id.0)
    }

    /// Outcome counts over the whole history.
    pub fn counts(&self) -> OutcomeCounts {
        let mut c = OutcomeCounts::default();
        for op in &self.ops {
            match &op.outcome {
                Some(Outcome::Ok) => c.ok += 1,
                Some(Outcome::Failed(_)) => c.failed += 1,
                Some(Outcome::Indeterminate(_)) => c.indeterminate += 1,
                None => c.pending += 1,
            }
        }
        c
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn operations_complete_once_and_close_marks_the_rest_indeterminate() {
        let mut h = History::new();
        let t = Duration::from_secs;
        let a = h.invoke("membership", OpKind::Join { node: 3 }, t(1));
        let b = h.invoke("membership", OpKind::Leave { node: 1 }, t(2));
        h.instant("nemesis", OpKind::Heal, t(3), Outcome::Ok);
        h.complete(a, t(4), Outcome::Ok);
        h.complete(a, t(5), Outcome::Failed("late".into()));
        assert_eq!(h.get(a).unwrap().end, Some(t(4)));
        assert_eq!(h.counts().pending, 1);
        h.close(t(9));
        assert_eq!(
            h.get(b).unwrap().outcome.as_ref().unwrap().label(),
            "indeterminate"
        );
        assert_eq!(
            h.counts(),
            OutcomeCounts {
                ok: 2,
                failed: 0,
                indeterminate: 1,
                pending: 0
            }
        );
    }
}
