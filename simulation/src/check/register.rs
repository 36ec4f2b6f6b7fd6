//! Register checkers: what the register workload's clients saw must be what a correct
//! multi-value register store gives, and its replicas must hold nothing impossible.
//!
//! From the history (after the heal, judged on the workload's final `r=N` reads):
//!
//! - [`LostWrites`]: every acknowledged write is in the final read of its key, or superseded by
//!   a write or delete whose context covered it (unless every node that acknowledged it was
//!   lost for good, which no replication can survive).
//! - [`DeletesStay`]: a value an acknowledged delete covered never appears in a final read
//!   (unless every node that acknowledged the delete was lost for good).
//! - [`NoPhantoms`]: every value any read or write returned was written by some client.
//! - [`ConcurrentSiblings`]: no answer shows two values one of which a client's context had
//!   already superseded: siblings are only ever truly concurrent writes.
//! - [`StrictWritesSeen`]: a read (at any `r`, `r=1` included, through joins, leaves,
//!   removals and crashes too) never answers that no replica knows a key that a `strict` write
//!   acknowledged by all [`REPLICAS`] replicas wrote before the read began, unless a delete may
//!   have removed it since (or it was lost with removed machines). Every replica holds such a
//!   write, so a replica that says "absent" for it answered for a copy it does not fully have
//!   (a node that just became a replica of the key's partition must say "don't know"). Reads
//!   while some node may still act on an older placement are not judged: during a network
//!   partition and [`VIEW_SETTLE`] after it heals or a node restarts or resumes, and
//!   [`GOSSIP_SETTLE`] after the placement changes (see `stale_view_windows`). A node that has not heard of a new
//!   placement yet still answers for its old one: Chorus agrees on the ring by gossip, not by
//!   consensus. What this checker holds the nodes to is the rest: a node that knows it gained a
//!   partition never answers for it before it has caught up.
//!
//! From the snapshot:
//!
//! - [`HintsDrained`]: after the heal no running node still holds hints.
//! - [`DotsUnique`]: on every disk of every machine, a key's dot names at most one value — a
//!   dot minted twice (Riak's doomstones) would show as one dot with two values.
//! - [`MergesStored`]: no running replica refused to merge a state for its size, and no sender
//!   was refused: client writes are bounded well below what a replica must merge, so states
//!   that were each accepted always merge.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use chorus::causality::{Dot, RegisterValue, VersionVector};

use super::{CheckInput, Checker, Violation};
use crate::history::{DataOp, DataResult, History, OpKind, Operation, Outcome};

/// Every register checker.
pub fn all() -> Vec<Box<dyn Checker>> {
    vec![
        Box::new(LostWrites),
        Box::new(DeletesStay),
        Box::new(NoPhantoms),
        Box::new(ConcurrentSiblings),
        Box::new(StrictWritesSeen),
        Box::new(HintsDrained),
        Box::new(DotsUnique),
        Box::new(MergesStored),
    ]
}

/// A register operation with its history entry.
struct Entry<'a> {
    op: &'a Operation,
    data: &'a DataOp,
}

impl Entry<'_> {
    fn is_write(&self) -> bool {
        matches!(self.op.kind, OpKind::Write { .. } | OpKind::Delete { .. })
    }

    fn value(&self) -> Option<&str> {
        match &self.op.kind {
            OpKind::Write { value, .. } => Some(value),
            _ => None,
        }
    }

    fn dot(&self) -> Option<Dot> {
        match &self.data.result {
            Some(DataResult::Written { dot, .. }) => Some(*dot),
            _ => None,
        }
    }

    fn read_values(&self) -> Option<&[String]> {
        match (&self.op.outcome, &self.data.result) {
            (Some(Outcome::Ok), Some(DataResult::Read { values, .. })) => Some(values),
            _ => None,
        }
    }
}

fn entries<'a>(input: &CheckInput<'a>) -> Vec<Entry<'a>> {
    input
        .history
        .data()
        .iter()
        .filter_map(|d| input.history.get(d.op).map(|op| Entry { op, data: d }))
        .collect()
}

fn covers(context: Option<&VersionVector>, dot: Dot) -> bool {
    context.is_some_and(|c| c.contains(dot))
}

/// The union of the contexts of the given operations: a dot is covered by one of them exactly
/// when the union contains it (contexts are downward closed per actor).
fn union<'a>(ops: impl Iterator<Item = &'a Entry<'a>>) -> VersionVector {
    let mut all = VersionVector::new();
    for e in ops {
        if let Some(c) = &e.data.context {
            all.merge(c);
        }
    }
    all
}

/// Per key: the latest successful final read that started after every write to the key ended.
/// `Err` says why the key cannot be judged yet.
fn final_reads<'a>(
    all: &'a [Entry<'a>],
    input: &CheckInput<'_>,
) -> BTreeMap<&'a str, Result<&'a Entry<'a>, String>> {
    let Some(healed_at) = input.healed_at else {
        return BTreeMap::new();
    };
    let mut out = BTreeMap::new();
    let keys: BTreeSet<&str> = all.iter().map(|e| e.data.key.as_str()).collect();
    for key in keys {
        let writes: Vec<&Entry<'_>> = all
            .iter()
            .filter(|e| e.data.key == key && e.is_write())
            .collect();
        if writes.is_empty() {
            continue;
        }
        if let Some(open) = writes.iter().find(|e| e.op.end.is_none()) {
            out.insert(key, Err(format!("{} has not completed", open.op.kind)));
            continue;
        }
        let last_end = writes
            .iter()
            .filter_map(|e| e.op.end)
            .max()
            .unwrap_or_default()
            .max(healed_at);
        let read = all
            .iter()
            .filter(|e| e.data.key == key && e.data.final_read && e.op.start > last_end)
            .filter(|e| e.read_values().is_some())
            .max_by_key(|e| e.op.start);
        out.insert(
            key,
            read.ok_or_else(|| {
                format!(
                    "no successful final read of {key} after its last write ended (t={:.3}s)",
                    last_end.as_secs_f64()
                )
            }),
        );
    }
    out
}

fn violation(checker: &'static str, input: &CheckInput<'_>, message: String) -> Violation {
    Violation {
        checker,
        at: input.snapshot.at,
        observer: None,
        subject: None,
        message,
    }
}

/// Every acknowledged write survives, unless superseded or lost with every node that held it.
#[derive(Debug, Clone, Copy, Default)]
pub struct LostWrites;

impl Checker for LostWrites {
    fn name(&self) -> &'static str {
        "lost-writes"
    }

    fn check(&self, input: &CheckInput<'_>, out: &mut Vec<Violation>) {
        let all = entries(input);
        let finals = final_reads(&all, input);
        let removed: BTreeSet<String> = input
            .snapshot
            .nodes
            .iter()
            .filter(|n| n.removed)
            .map(|n| n.id.to_string())
            .collect();
        for (key, fin) in &finals {
            let fin = match fin {
                Ok(f) => f,
                Err(why) => {
                    out.push(violation(self.name(), input, format!("{key}: {why}")));
                    continue;
                }
            };
            let values = fin.read_values().unwrap_or_default();
            let seen = union(all.iter().filter(|e| e.data.key == *key && e.is_write()));
            for w in all.iter().filter(|e| e.data.key == *key) {
                let (Some(value), Some(Outcome::Ok), Some(dot)) =
                    (w.value(), &w.op.outcome, w.dot())
                else {
                    continue;
                };
                if values.iter().any(|v| v == value) {
                    continue;
                }
                if seen.contains(dot) {
                    // Superseded by a write or delete whose context covered it.
                    continue;
                }
                let acked_by = match &w.data.result {
                    Some(DataResult::Written { acked_by, .. }) => acked_by.clone(),
                    _ => Vec::new(),
                };
                if !acked_by.is_empty() && acked_by.iter().all(|n| removed.contains(&n.to_string()))
                {
                    // Every node that held it was lost for good.
                    continue;
                }
                if input.lost_after(key, w.op.end) {
                    // It moved to machines an operator then removed (handoff, drops).
                    continue;
                }
                out.push(violation(
                    self.name(),
                    input,
                    format!(
                        "acknowledged {} (dot {}:{}, acked by {}) is lost: the final read at t={:.3}s returned {:?}",
                        w.op.kind,
                        dot.node,
                        dot.counter,
                        acked_by.iter().map(|n| n.to_string()).collect::<Vec<_>>().join(", "),
                        fin.op.start.as_secs_f64(),
                        values
                    ),
                ));
            }
        }
    }
}

/// A value covered by an acknowledged delete never comes back in a final read.
#[derive(Debug, Clone, Copy, Default)]
pub struct DeletesStay;

impl Checker for DeletesStay {
    fn name(&self) -> &'static str {
        "deletes-stay"
    }

    fn check(&self, input: &CheckInput<'_>, out: &mut Vec<Violation>) {
        let all = entries(input);
        let finals = final_reads(&all, input);
        let removed: BTreeSet<chorus::NodeId> = input
            .snapshot
            .nodes
            .iter()
            .filter(|n| n.removed)
            .map(|n| n.id)
            .collect();
        for (key, fin) in &finals {
            let Ok(fin) = fin else { continue };
            let values = fin.read_values().unwrap_or_default();
            let deletes: Vec<&Entry<'_>> = all
                .iter()
                .filter(|e| {
                    e.data.key == *key
                        && matches!(e.op.kind, OpKind::Delete { .. })
                        && e.op.outcome == Some(Outcome::Ok)
                })
                // A delete only nodes removed for good acknowledged was lost with them.
                .filter(|e| match &e.data.result {
                    Some(DataResult::Written { acked_by, .. }) => {
                        acked_by.is_empty() || !acked_by.iter().all(|n| removed.contains(n))
                    }
                    _ => true,
                })
                .filter(|e| !input.lost_after(key, e.op.end))
                .collect();
            for w in all.iter().filter(|e| e.data.key == *key) {
                let (Some(value), Some(dot)) = (w.value(), w.dot()) else {
                    continue;
                };
                if !values.iter().any(|v| v == value) {
                    continue;
                }
                if let Some(d) = deletes
                    .iter()
                    .find(|d| covers(d.data.context.as_ref(), dot))
                {
                    out.push(violation(
                        self.name(),
                        input,
                        format!(
                            "{key}={value} came back in the final read at t={:.3}s after {} (t={:.3}s) deleted it",
                            fin.op.start.as_secs_f64(),
                            d.op.kind,
                            d.op.start.as_secs_f64()
                        ),
                    ));
                }
            }
        }
    }
}

/// Replicas per key in the simulated cluster (the node's default N).
pub const REPLICAS: usize = 3;

/// How long after a heal, a restart or a resume nodes may still act on an older placement.
pub const VIEW_SETTLE: Duration = Duration::from_secs(10);

/// How long after a placement change every node has heard of it, when nothing else is wrong:
/// shorter than the nodes' own wait before they catch up a partition they gained, so a node
/// that answers for one before it has caught up is judged.
pub const GOSSIP_SETTLE: Duration = Duration::from_secs(3);

/// Times at which some node may act on a placement older than the cluster's: while a network
/// partition is in force and [`VIEW_SETTLE`] after it heals; [`VIEW_SETTLE`] after a node
/// restarts or resumes; and [`GOSSIP_SETTLE`] after the placement changes (a join or a leave
/// completes, an operator removes a node, a leave is cancelled). A node cut off while the others change the ring (or down, or paused,
/// meanwhile) keeps replicating what it replicated, and cannot know better until gossip reaches
/// it: Chorus agrees on ring changes by gossip, not by consensus, so no read is promised to see
/// a write made under a placement its replicas have not heard of yet.
fn stale_view_windows(history: &History) -> Vec<(Duration, Duration)> {
    let mut windows = Vec::new();
    let mut cut_since: Option<Duration> = None;
    for op in history.ops() {
        match op.kind {
            OpKind::Partition(_) => {
                cut_since.get_or_insert(op.start);
            }
            OpKind::Heal => {
                if let Some(from) = cut_since.take() {
                    windows.push((from, op.start + VIEW_SETTLE));
                }
            }
            OpKind::Restart { .. } | OpKind::Resume { .. } => {
                windows.push((op.start, op.end.unwrap_or(op.start) + VIEW_SETTLE));
            }
            OpKind::Remove { .. } | OpKind::CancelLeave { .. } => {
                windows.push((op.start, op.end.unwrap_or(op.start) + GOSSIP_SETTLE));
            }
            // The placement changes when a joiner becomes a member and when a leave completes;
            // gossip takes a moment to carry that to every coordinator.
            OpKind::Join { .. } | OpKind::Leave { .. } => {
                if let Some(end) = op.end {
                    windows.push((end, end + GOSSIP_SETTLE));
                }
            }
            _ => {}
        }
    }
    if let Some(from) = cut_since {
        windows.push((from, Duration::MAX));
    }
    windows
}

/// No read answers "no replica knows the key" after a `strict` write on every replica.
#[derive(Debug, Clone, Copy, Default)]
pub struct StrictWritesSeen;

impl Checker for StrictWritesSeen {
    fn name(&self) -> &'static str {
        "strict-writes-seen"
    }

    fn check(&self, input: &CheckInput<'_>, out: &mut Vec<Violation>) {
        let all = entries(input);
        let removed: BTreeSet<chorus::NodeId> = input
            .snapshot
            .nodes
            .iter()
            .filter(|n| n.removed)
            .map(|n| n.id)
            .collect();
        // Acknowledged strict writes on every replica, per key.
        let mut strict: BTreeMap<&str, Vec<&Entry<'_>>> = BTreeMap::new();
        for w in &all {
            let on_every_replica = w.data.options.strict && w.data.options.w == Some(REPLICAS);
            if !on_every_replica || w.value().is_none() || w.op.outcome != Some(Outcome::Ok) {
                continue;
            }
            if let Some(DataResult::Written { acked_by, .. }) = &w.data.result {
                if acked_by.iter().all(|n| removed.contains(n)) {
                    // Every node that held it was lost for good.
                    continue;
                }
            }
            strict.entry(w.data.key.as_str()).or_default().push(w);
        }
        let stale = stale_view_windows(input.history);
        for r in &all {
            let unknown = matches!(
                &r.data.result,
                Some(DataResult::Read { values, context: None }) if values.is_empty()
            );
            if !unknown || r.op.outcome != Some(Outcome::Ok) {
                continue;
            }
            let read_end = r.op.end.unwrap_or(r.op.start);
            if stale
                .iter()
                .any(|&(from, to)| from <= read_end && r.op.start <= to)
            {
                continue;
            }
            let Some(writes) = strict.get(r.data.key.as_str()) else {
                continue;
            };
            for w in writes {
                let Some(w_end) = w.op.end.filter(|&e| e < r.op.start) else {
                    continue;
                };
                // A delete that may have covered it (one invoked after the write began: a
                // context from before cannot hold the write's dot) may have been purged since.
                let deleted = all.iter().any(|d| {
                    d.data.key == r.data.key
                        && matches!(d.op.kind, OpKind::Delete { .. })
                        && !matches!(d.op.outcome, Some(Outcome::Failed(_)))
                        && d.op.start >= w.op.start
                        && d.op.start < read_end
                });
                if deleted || input.lost_after(&r.data.key, Some(w_end)) {
                    continue;
                }
                out.push(violation(
                    self.name(),
                    input,
                    format!(
                        "{} (r={}) at t={:.3}s answered that no replica knows {}, after {} (strict, w={REPLICAS}) was acknowledged at t={:.3}s",
                        r.op.kind,
                        r.data.options.r.map_or("default".to_owned(), |n| n.to_string()),
                        r.op.start.as_secs_f64(),
                        r.data.key,
                        w.op.kind,
                        w_end.as_secs_f64()
                    ),
                ));
                break;
            }
        }
    }
}

/// Every value returned was written by some client.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoPhantoms;

impl Checker for NoPhantoms {
    fn name(&self) -> &'static str {
        "no-phantoms"
    }

    fn check(&self, input: &CheckInput<'_>, out: &mut Vec<Violation>) {
        let all = entries(input);
        let written: BTreeSet<(&str, &str)> = all
            .iter()
            .filter_map(|e| e.value().map(|v| (e.data.key.as_str(), v)))
            .collect();
        for e in &all {
            let values: &[String] = match &e.data.result {
                Some(DataResult::Read { values, .. })
                | Some(DataResult::Written { values, .. }) => values,
                None => continue,
            };
            for v in values {
                if !written.contains(&(e.data.key.as_str(), v.as_str())) {
                    out.push(violation(
                        self.name(),
                        input,
                        format!(
                            "{} at t={:.3}s returned {v:?}, which no client wrote to {}",
                            e.op.kind,
                            e.op.start.as_secs_f64(),
                            e.data.key
                        ),
                    ));
                }
            }
        }
    }
}

/// What a checker knows of one write: its dot (if it was answered) and the context it sent.
type WriteFacts<'a> = (Option<Dot>, Option<&'a VersionVector>);

/// No answer shows a value next to one whose write had seen (superseded) it.
#[derive(Debug, Clone, Copy, Default)]
pub struct ConcurrentSiblings;

impl Checker for ConcurrentSiblings {
    fn name(&self) -> &'static str {
        "concurrent-siblings"
    }

    fn check(&self, input: &CheckInput<'_>, out: &mut Vec<Violation>) {
        let all = entries(input);
        // Per (key, value): the write's dot (when known) and the context it sent.
        let mut writes: BTreeMap<(&str, &str), WriteFacts<'_>> = BTreeMap::new();
        for e in &all {
            if let Some(v) = e.value() {
                writes.insert((e.data.key.as_str(), v), (e.dot(), e.data.context.as_ref()));
            }
        }
        for e in &all {
            let values: &[String] = match &e.data.result {
                Some(DataResult::Read { values, .. })
                | Some(DataResult::Written { values, .. }) => values,
                None => continue,
            };
            for a in values {
                for b in values {
                    let key = e.data.key.as_str();
                    let (Some((Some(dot_a), _)), Some((_, ctx_b))) = (
                        writes.get(&(key, a.as_str())),
                        writes.get(&(key, b.as_str())),
                    ) else {
                        continue;
                    };
                    if a != b && covers(*ctx_b, *dot_a) {
                        out.push(violation(
                            self.name(),
                            input,
                            format!(
                                "{} at t={:.3}s returned {a:?} beside {b:?}, whose write had already seen (superseded) it",
                                e.op.kind,
                                e.op.start.as_secs_f64()
                            ),
                        ));
                    }
                }
            }
        }
    }
}

/// After the heal, no running node holds hints any more.
#[derive(Debug, Clone, Copy, Default)]
pub struct HintsDrained;

impl Checker for HintsDrained {
    fn name(&self) -> &'static str {
        "hints-drained"
    }

    fn check(&self, input: &CheckInput<'_>, out: &mut Vec<Violation>) {
        if input.healed_at.is_none() {
            return;
        }
        for n in &input.snapshot.nodes {
            let Some(d) = &n.data else { continue };
            if d.hints_pending > 0 {
                out.push(Violation {
                    checker: self.name(),
                    at: input.snapshot.at,
                    observer: Some(n.slot),
                    subject: None,
                    message: format!("n{} still holds {} hints", n.slot, d.hints_pending),
                });
            }
        }
    }
}

/// No running node refused a merge, or was refused one, for size (see the module notes). The
/// simulator's states stay far below the merge bound (48 MiB): values of at most 1 MiB, client
/// writes refused beyond 6 MiB, and at most a few such states meeting.
#[derive(Debug, Clone, Copy, Default)]
pub struct MergesStored;

impl Checker for MergesStored {
    fn name(&self) -> &'static str {
        "merges-stored"
    }

    fn check(&self, input: &CheckInput<'_>, out: &mut Vec<Violation>) {
        for n in &input.snapshot.nodes {
            let Some(d) = &n.data else { continue };
            if d.merges_refused > 0 || d.sends_refused > 0 {
                out.push(Violation {
                    checker: self.name(),
                    at: input.snapshot.at,
                    observer: Some(n.slot),
                    subject: None,
                    message: format!(
                        "n{} refused {} merges for size and had {} of its sends refused",
                        n.slot, d.merges_refused, d.sends_refused
                    ),
                });
            }
        }
    }
}

/// On every disk, each dot of a key names one value only.
#[derive(Debug, Clone, Copy, Default)]
pub struct DotsUnique;

impl Checker for DotsUnique {
    fn name(&self) -> &'static str {
        "dots-unique"
    }

    fn check(&self, input: &CheckInput<'_>, out: &mut Vec<Violation>) {
        let mut seen: BTreeMap<(&[u8], Dot), (&RegisterValue, usize)> = BTreeMap::new();
        let mut reported = BTreeSet::new();
        for n in &input.snapshot.nodes {
            for (key, object) in &n.objects {
                // (The register part of a contested key too.)
                let Some(reg) = object.as_register() else {
                    continue;
                };
                for (dot, value) in reg.dvvset().dotted_values() {
                    match seen.get(&(key.as_slice(), dot)) {
                        None => {
                            seen.insert((key.as_slice(), dot), (value, n.slot));
                        }
                        Some(&(first, slot)) if first != value => {
                            if reported.insert((key.clone(), dot)) {
                                out.push(Violation {
                                    checker: self.name(),
                                    at: input.snapshot.at,
                                    observer: Some(n.slot),
                                    subject: Some(slot),
                                    message: format!(
                                        "dot {}:{} of key {} names two values ({first:?} on n{slot}, {value:?} on n{}): a dot was minted twice",
                                        dot.node,
                                        dot.counter,
                                        String::from_utf8_lossy(key),
                                        n.slot
                                    ),
                                });
                            }
                        }
                        Some(_) => {}
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {

    use chorus::causality::Register;
    use chorus::node::DataStats;
    use chorus::node::Object;
    use chorus::node::RequestOptions;
    use chorus::NodeId;

    use super::*;
    use crate::history::History;
    use crate::snapshot::{ClusterSnapshot, NodeSnapshot, ProcessState};

    fn t(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    fn node(slot: usize, removed: bool) -> NodeSnapshot {
        NodeSnapshot {
            slot,
            id: NodeId::new(100 + slot as u64),
            process: if removed {
                ProcessState::Crashed
            } else {
                ProcessState::Up
            },
            generation: 1,
            removed,
            view: None,
            data: Some(DataStats::default()),
            objects: Vec::new(),
            hints_on_disk: 0,
            roots: Default::default(),
            disk_roots: Default::default(),
        }
    }

    fn snapshot() -> ClusterSnapshot {
        ClusterSnapshot {
            at: t(400),
            nodes: (0..3).map(|i| node(i, false)).collect(),
            lost: Default::default(),
            op_log: Default::default(),
        }
    }

    fn vv(pairs: &[(u64, u64)]) -> VersionVector {
        pairs.iter().map(|&(n, c)| (NodeId::new(n), c)).collect()
    }

    /// A history builder for one key `k`.
    struct H(History);

    impl H {
        fn write(
            &mut self,
            at: u64,
            value: &str,
            ctx: Option<VersionVector>,
            dot: Option<(u64, u64)>,
            outcome: Outcome,
        ) {
            let op = self.0.invoke(
                "register",
                OpKind::Write {
                    key: "k".into(),
                    value: value.into(),
                    node: 0,
                },
                t(at),
            );
            self.0.record_data(DataOp {
                op,
                key: "k".into(),
                context: ctx,
                final_read: false,
                options: RequestOptions::default(),
                result: None,
            });
            if let Some((n, c)) = dot {
                self.0.data_result(
                    op,
                    DataResult::Written {
                        values: vec![value.into()],
                        context: vv(&[(n, c)]),
                        dot: Dot::new(NodeId::new(n), c),
                        acked_by: vec![NodeId::new(100), NodeId::new(101)],
                    },
                );
            }
            self.0.complete(op, t(at + 1), outcome);
        }

        fn delete(&mut self, at: u64, ctx: VersionVector) {
            let op = self.0.invoke(
                "register",
                OpKind::Delete {
                    key: "k".into(),
                    node: 0,
                },
                t(at),
            );
            self.0.record_data(DataOp {
                op,
                key: "k".into(),
                context: Some(ctx),
                final_read: false,
                options: RequestOptions::default(),
                result: None,
            });
            self.0.complete(op, t(at + 1), Outcome::Ok);
        }

        fn read(&mut self, at: u64, values: &[&str], final_read: bool) {
            let op = self.0.invoke(
                "register",
                OpKind::Read {
                    key: "k".into(),
                    node: 1,
                },
                t(at),
            );
            self.0.record_data(DataOp {
                op,
                key: "k".into(),
                context: None,
                final_read,
                options: RequestOptions::default(),
                result: None,
            });
            self.0.data_result(
                op,
                DataResult::Read {
                    values: values.iter().map(|v| v.to_string()).collect(),
                    context: None,
                },
            );
            self.0.complete(op, t(at), Outcome::Ok);
        }
    }

    fn run(c: &dyn Checker, h: &History, snap: &ClusterSnapshot) -> Vec<Violation> {
        let mut out = Vec::new();
        c.check(
            &CheckInput {
                snapshot: snap,
                history: h,
                healed_at: Some(t(300)),
            },
            &mut out,
        );
        out
    }

    #[test]
    fn a_correct_history_passes_every_checker() {
        let mut h = H(History::new());
        h.write(10, "a", None, Some((1, 1)), Outcome::Ok);
        h.write(20, "b", Some(vv(&[(1, 1)])), Some((2, 1)), Outcome::Ok);
        h.write(30, "c", None, Some((3, 1)), Outcome::Ok);
        h.read(40, &["b", "c"], false);
        h.read(310, &["b", "c"], true);
        let snap = snapshot();
        for c in all() {
            assert!(run(c.as_ref(), &h.0, &snap).is_empty(), "{}", c.name());
        }
    }

    #[test]
    fn a_lost_acknowledged_write_is_caught_unless_superseded_or_lost_with_its_nodes() {
        let mut h = H(History::new());
        h.write(10, "a", None, Some((1, 1)), Outcome::Ok);
        h.write(20, "b", None, Some((2, 1)), Outcome::Ok);
        h.read(310, &["b"], true);
        let snap = snapshot();
        let vs = run(&LostWrites, &h.0, &snap);
        assert_eq!(vs.len(), 1, "{vs:#?}");
        assert!(vs[0].message.contains("write k=a at n0"), "{}", vs[0]);
        assert!(
            vs[0]
                .message
                .contains("acked by 0000000000000064, 0000000000000065"),
            "{}",
            vs[0]
        );
        // Lost with every node that acknowledged it: excused.
        let mut gone = snap.clone();
        gone.nodes[0].removed = true;
        gone.nodes[1].removed = true;
        assert!(run(&LostWrites, &h.0, &gone).is_empty());
        // Its copies moved (handoff, drops by old owners) to machines an operator then
        // removed, leaving nothing of it on the rest: excused if it completed before.
        let mut moved = snap.clone();
        moved.lost.insert(b"k".to_vec(), t(12));
        assert!(run(&LostWrites, &h.0, &moved).is_empty());
        moved.lost.insert(b"k".to_vec(), t(5));
        assert_eq!(run(&LostWrites, &h.0, &moved).len(), 1);
        // A later indeterminate write whose context covered it: superseded, not lost.
        h.write(
            30,
            "c",
            Some(vv(&[(1, 1)])),
            None,
            Outcome::Indeterminate("timeout".into()),
        );
        h.read(320, &["b"], true);
        assert!(run(&LostWrites, &h.0, &snap).is_empty());
    }

    #[test]
    fn a_key_without_a_final_read_or_with_a_pending_write_is_not_judged_yet() {
        let mut h = H(History::new());
        h.write(10, "a", None, Some((1, 1)), Outcome::Ok);
        let vs = run(&LostWrites, &h.0, &snapshot());
        assert!(
            vs[0].message.contains("no successful final read"),
            "{vs:#?}"
        );
        h.0.invoke(
            "register",
            OpKind::Write {
                key: "k".into(),
                value: "x".into(),
                node: 0,
            },
            t(299),
        );
        let d = h.0.ops().last().unwrap().id;
        h.0.record_data(DataOp {
            op: d,
            key: "k".into(),
            context: None,
            final_read: false,
            options: RequestOptions::default(),
            result: None,
        });
        let vs = run(&LostWrites, &h.0, &snapshot());
        assert!(vs[0].message.contains("has not completed"), "{vs:#?}");
    }

    #[test]
    fn a_deleted_value_that_comes_back_is_caught() {
        let mut h = H(History::new());
        h.write(10, "a", None, Some((1, 1)), Outcome::Ok);
        h.delete(20, vv(&[(1, 1)]));
        h.read(310, &["a"], true);
        let vs = run(&DeletesStay, &h.0, &snapshot());
        assert_eq!(vs.len(), 1, "{vs:#?}");
        assert!(vs[0].message.contains("k=a came back"), "{}", vs[0]);
    }

    #[test]
    fn a_delete_lost_with_every_node_that_acknowledged_it_may_be_undone() {
        let mut h = H(History::new());
        h.write(10, "a", None, Some((1, 1)), Outcome::Ok);
        h.delete(20, vv(&[(1, 1)]));
        let delete = h.0.data().last().map(|d| d.op).unwrap();
        h.0.data_result(
            delete,
            DataResult::Written {
                values: Vec::new(),
                context: vv(&[(1, 1), (100, 1)]),
                dot: Dot {
                    node: NodeId::new(100),
                    counter: 1,
                },
                acked_by: vec![NodeId::new(100)],
            },
        );
        h.read(310, &["a"], true);
        assert_eq!(
            run(&DeletesStay, &h.0, &snapshot()).len(),
            1,
            "n0 is still there"
        );
        let mut snap = snapshot();
        snap.nodes[0] = node(0, true);
        let vs = run(&DeletesStay, &h.0, &snap);
        assert!(vs.is_empty(), "n0 was removed for good: {vs:#?}");
    }

    /// Sets the options of the last operation recorded.
    fn with_options(h: &mut H, options: RequestOptions) {
        let i = h.0.data().len() - 1;
        h.0.data_mut()[i].options = options;
    }

    #[test]
    fn a_read_that_misses_a_strict_write_on_every_replica_is_caught() {
        let every = RequestOptions {
            w: Some(REPLICAS),
            strict: true,
            ..RequestOptions::default()
        };
        let one = RequestOptions {
            r: Some(1),
            ..RequestOptions::default()
        };
        let mut h = H(History::new());
        h.write(10, "a", None, Some((1, 1)), Outcome::Ok);
        with_options(&mut h, every);
        // Found, then "nobody knows the key" at r=1.
        h.read(20, &["a"], false);
        h.read(30, &[], false);
        with_options(&mut h, one);
        let snap = snapshot();
        let vs = run(&StrictWritesSeen, &h.0, &snap);
        assert_eq!(vs.len(), 1, "the second read said nobody knows k: {vs:#?}");
        assert!(vs[0].message.contains("read k at n1 (r=1)"), "{}", vs[0]);
        // Lost with machines an operator removed: excused.
        let mut moved = snap.clone();
        moved.lost.insert(b"k".to_vec(), t(25));
        assert!(run(&StrictWritesSeen, &h.0, &moved).is_empty());

        // A write that is not on every replica, or not strict, may be missed by a read.
        for options in [
            RequestOptions::default(),
            RequestOptions {
                w: Some(REPLICAS),
                ..RequestOptions::default()
            },
            RequestOptions {
                strict: true,
                ..RequestOptions::default()
            },
        ] {
            let mut h = H(History::new());
            h.write(10, "a", None, Some((1, 1)), Outcome::Ok);
            with_options(&mut h, options);
            h.read(30, &[], false);
            assert!(
                run(&StrictWritesSeen, &h.0, &snap).is_empty(),
                "{options:?}"
            );
        }

        // A delete since (its tombstone may have been purged), or a read that began before the
        // write ended: no violation.
        let mut h = H(History::new());
        h.write(10, "a", None, Some((1, 1)), Outcome::Ok);
        with_options(&mut h, every);
        h.read(11, &[], false);
        h.delete(20, vv(&[(1, 1)]));
        h.read(30, &[], false);
        assert!(run(&StrictWritesSeen, &h.0, &snap).is_empty());
    }

    #[test]
    fn a_value_nobody_wrote_is_caught() {
        let mut h = H(History::new());
        h.write(10, "a", None, Some((1, 1)), Outcome::Ok);
        h.read(40, &["a", "zzz"], false);
        let vs = run(&NoPhantoms, &h.0, &snapshot());
        assert_eq!(vs.len(), 1, "{vs:#?}");
        assert!(vs[0].message.contains("\"zzz\""));
    }

    #[test]
    fn a_superseded_value_shown_as_a_sibling_is_caught() {
        let mut h = H(History::new());
        h.write(10, "a", None, Some((1, 1)), Outcome::Ok);
        h.write(20, "b", Some(vv(&[(1, 1)])), Some((1, 2)), Outcome::Ok);
        h.read(40, &["a", "b"], false);
        let vs = run(&ConcurrentSiblings, &h.0, &snapshot());
        assert_eq!(vs.len(), 1, "{vs:#?}");
        assert!(vs[0].message.contains("returned \"a\" beside \"b\""));
    }

    #[test]
    fn undelivered_hints_after_the_heal_are_caught() {
        let mut snap = snapshot();
        snap.nodes[2].data = Some(DataStats {
            hints_pending: 2,
            ..DataStats::default()
        });
        let vs = run(&HintsDrained, &History::new(), &snap);
        assert_eq!(vs.len(), 1);
        assert!(vs[0].message.contains("n2 still holds 2 hints"));
    }

    #[test]
    fn a_dot_minted_twice_is_caught() {
        // n0 wrote "old" as (7, 1), lost it in a crash, restarted as the same actor and minted
        // (7, 1) again for "new"; n1 still holds the first.
        let mut first = Register::new();
        first.put(NodeId::new(7), &VersionVector::new(), b"old".to_vec());
        let mut second = Register::new();
        second.put(NodeId::new(7), &VersionVector::new(), b"new".to_vec());
        let mut snap = snapshot();
        snap.nodes[0].objects = vec![(b"k".to_vec(), Object::Register(second))];
        snap.nodes[1].objects = vec![(b"k".to_vec(), Object::Register(first.clone()))];
        snap.nodes[2].objects = vec![(b"k".to_vec(), Object::Register(first))];
        let vs = run(&DotsUnique, &History::new(), &snap);
        assert_eq!(vs.len(), 1, "{vs:#?}");
        assert!(vs[0].message.contains("a dot was minted twice"));
    }
}
