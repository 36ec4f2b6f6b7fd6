//! Membership checkers: after the quiet phase, every running node's view of the cluster must
//! match the ground truth and every other running node's view.
//!
//! - [`Agreement`]: all running nodes list the same members with the same ring status, and
//!   every running machine is listed.
//! - [`Liveness`]: running nodes are seen `alive`; crashed nodes and nodes that left are `down`.
//! - [`RingStatus`]: running nodes are `member` (their join completed); nodes that left are
//!   `left`; crashed nodes are not `left`.
//! - [`Restart`]: a crashed-and-restarted node is back: listed, `alive`, with an incarnation at
//!   least the generation it restarted with (newer than the one that crashed).
//! - [`LeftStaysGone`] (from the history): a node whose `leave` completed never runs again —
//!   every later `restart` of it must have failed.
//! - [`Placement`]: every observer's partition counts are the pure placement of the member set
//!   it lists.
//! - [`Operations`] (from the history): every join, leave and removal completed, within a bound
//!   after the heal, and no node is still leaving.
//!
//! The "observers" are the running nodes that are not leaving. Crashed or departed nodes that
//! nobody ever heard of (they crashed or left before reaching anyone) may be absent from views;
//! if one observer lists them, all must.

use std::time::Duration;

use chorus::membership::RingStatus as Status;
use chorus::node::{ClusterView, Liveness as Seen, MemberView};
use chorus::ring::{Member, Ring, RingConfig};

use super::{CheckInput, Checker, ClusterSnapshot, NodeSnapshot, Violation};
use crate::history::{OpKind, Outcome};
use crate::snapshot::ProcessState;

/// Every membership checker; membership operations must complete within `bound` of the heal.
pub fn all(bound: Duration) -> Vec<Box<dyn Checker>> {
    vec![
        Box::new(Agreement),
        Box::new(Liveness),
        Box::new(RingStatus),
        Box::new(Restart),
        Box::new(LeftStaysGone),
        Box::new(Placement),
        Box::new(Operations { bound }),
    ]
}

fn violation(
    checker: &'static str,
    snap: &ClusterSnapshot,
    observer: Option<usize>,
    subject: Option<usize>,
    message: String,
) -> Violation {
    Violation {
        checker,
        at: snap.at,
        observer,
        subject,
        message,
    }
}

/// The machine a view's member is, or a violation naming the stranger.
fn subject_of<'a>(
    checker: &'static str,
    snap: &'a ClusterSnapshot,
    observer: &NodeSnapshot,
    m: &MemberView,
    out: &mut Vec<Violation>,
) -> Option<&'a NodeSnapshot> {
    let found = snap.by_id(&m.id);
    if found.is_none() {
        out.push(violation(
            checker,
            snap,
            Some(observer.slot),
            None,
            format!("lists node id {} which belongs to no machine", m.id),
        ));
    }
    found
}

fn find<'v>(view: &'v ClusterView, node: &NodeSnapshot) -> Option<&'v MemberView> {
    let id = node.id.to_string();
    view.members.iter().find(|m| m.id == id)
}

/// All running nodes agree on the member set and every member's ring status, and list every
/// running machine.
#[derive(Debug, Clone, Copy, Default)]
pub struct Agreement;

impl Checker for Agreement {
    fn name(&self) -> &'static str {
        "agreement"
    }

    fn check(&self, input: &CheckInput<'_>, out: &mut Vec<Violation>) {
        let snap = input.snapshot;
        let name = self.name();
        let observers: Vec<_> = snap.observers().collect();
        for &(o, view) in &observers {
            for n in &snap.nodes {
                if n.process == ProcessState::Up && find(view, n).is_none() {
                    out.push(violation(
                        name,
                        snap,
                        Some(o.slot),
                        Some(n.slot),
                        format!("does not list n{}, which is {}", n.slot, n.process),
                    ));
                }
            }
        }
        let Some(&(reference, ref_view)) = observers.first() else {
            return;
        };
        for &(o, view) in &observers[1..] {
            for n in &snap.nodes {
                let (a, b) = (find(ref_view, n), find(view, n));
                let msg = match (a, b) {
                    (Some(a), None) => format!(
                        "does not list n{} ({}), which n{} lists as {}",
                        n.slot,
                        n.process,
                        reference.slot,
                        a.status.as_str()
                    ),
                    (None, Some(b)) => format!(
                        "lists n{} ({}) as {}, which n{} does not list",
                        n.slot,
                        n.process,
                        b.status.as_str(),
                        reference.slot
                    ),
                    (Some(a), Some(b)) if a.status != b.status => format!(
                        "sees n{} as {}, but n{} sees it as {}",
                        n.slot,
                        b.status.as_str(),
                        reference.slot,
                        a.status.as_str()
                    ),
                    _ => continue,
                };
                out.push(violation(name, snap, Some(o.slot), Some(n.slot), msg));
            }
        }
    }
}

/// Every running node sees running nodes alive and crashed or departed nodes down.
#[derive(Debug, Clone, Copy, Default)]
pub struct Liveness;

impl Checker for Liveness {
    fn name(&self) -> &'static str {
        "liveness"
    }

    fn check(&self, input: &CheckInput<'_>, out: &mut Vec<Violation>) {
        let snap = input.snapshot;
        let name = self.name();
        for (o, view) in snap.observers() {
            for m in &view.members {
                let Some(s) = subject_of(name, snap, o, m, out) else {
                    continue;
                };
                let expected = match s.process {
                    ProcessState::Up => Seen::Alive,
                    // A paused process answers no probe.
                    ProcessState::Leaving
                    | ProcessState::Left
                    | ProcessState::Crashed
                    | ProcessState::Paused
                    | ProcessState::NotStarted => Seen::Down,
                };
                if m.liveness != expected {
                    out.push(violation(
                        name,
                        snap,
                        Some(o.slot),
                        Some(s.slot),
                        format!(
                            "sees n{} as {}, but it is {} (generation {}): expected {}",
                            s.slot,
                            seen(m.liveness),
                            s.process,
                            s.generation,
                            seen(expected)
                        ),
                    ));
                }
            }
        }
    }
}

fn seen(l: Seen) -> &'static str {
    match l {
        Seen::Alive => "alive",
        Seen::Suspect => "suspect",
        Seen::Down => "down",
    }
}

/// Every running node sees running nodes as `member`, departed and removed nodes as `left`,
/// nodes still leaving as `leaving` or `left`, and other crashed nodes as anything but `left`.
#[derive(Debug, Clone, Copy, Default)]
pub struct RingStatus;

impl Checker for RingStatus {
    fn name(&self) -> &'static str {
        "ring-status"
    }

    fn check(&self, input: &CheckInput<'_>, out: &mut Vec<Violation>) {
        let snap = input.snapshot;
        let name = self.name();
        for (o, view) in snap.observers() {
            for m in &view.members {
                let Some(s) = subject_of(name, snap, o, m, out) else {
                    continue;
                };
                let ok = match s.process {
                    _ if s.removed => m.status == Status::Left,
                    ProcessState::Up => m.status == Status::Member,
                    ProcessState::Leaving => m.status >= Status::Leaving,
                    ProcessState::Left => m.status == Status::Left,
                    ProcessState::Crashed | ProcessState::Paused | ProcessState::NotStarted => {
                        m.status != Status::Left
                    }
                };
                if !ok {
                    let expected = match s.process {
                        _ if s.removed => "left (removed)",
                        ProcessState::Up => "member",
                        ProcessState::Leaving => "leaving or left",
                        ProcessState::Left => "left",
                        _ => "not left",
                    };
                    out.push(violation(
                        name,
                        snap,
                        Some(o.slot),
                        Some(s.slot),
                        format!(
                            "sees n{} as {}, but it is {}: expected {}",
                            s.slot,
                            m.status.as_str(),
                            s.process,
                            expected
                        ),
                    ));
                }
            }
        }
    }
}

/// A crashed-and-restarted node is back everywhere with a newer incarnation.
#[derive(Debug, Clone, Copy, Default)]
pub struct Restart;

impl Checker for Restart {
    fn name(&self) -> &'static str {
        "restart"
    }

    fn check(&self, input: &CheckInput<'_>, out: &mut Vec<Violation>) {
        let snap = input.snapshot;
        let name = self.name();
        let restarted = snap
            .nodes
            .iter()
            .filter(|n| n.process == ProcessState::Up && n.generation > 1);
        for r in restarted {
            for (o, view) in snap.observers() {
                let msg = match find(view, r) {
                    None => format!(
                        "does not list n{}, restarted with generation {}",
                        r.slot, r.generation
                    ),
                    Some(m) if m.liveness != Seen::Alive => format!(
                        "sees restarted n{} as {} (incarnation {}), expected alive with incarnation >= {}",
                        r.slot,
                        seen(m.liveness),
                        m.incarnation,
                        r.generation
                    ),
                    Some(m) if m.incarnation < r.generation => format!(
                        "sees restarted n{} at incarnation {}, older than its generation {}",
                        r.slot, m.incarnation, r.generation
                    ),
                    Some(_) => continue,
                };
                out.push(violation(name, snap, Some(o.slot), Some(r.slot), msg));
            }
        }
    }
}

/// A node that has left never comes back: no `restart` after a completed `leave` succeeds.
#[derive(Debug, Clone, Copy, Default)]
pub struct LeftStaysGone;

impl Checker for LeftStaysGone {
    fn name(&self) -> &'static str {
        "left-stays-gone"
    }

    fn check(&self, input: &CheckInput<'_>, out: &mut Vec<Violation>) {
        let ops = input.history.ops();
        for leave in ops
            .iter()
            .filter(|o| matches!(o.kind, OpKind::Leave { .. }))
        {
            let (Some(Outcome::Ok), Some(left_at), Some(node)) =
                (&leave.outcome, leave.end, leave.kind.node())
            else {
                continue;
            };
            let restarts = ops.iter().filter(|o| {
                o.kind == OpKind::Restart { node }
                    && o.start >= left_at
                    && o.outcome == Some(Outcome::Ok)
            });
            for r in restarts {
                out.push(Violation {
                    checker: self.name(),
                    at: r.end.unwrap_or(r.start),
                    observer: None,
                    subject: Some(node),
                    message: format!(
                        "n{node} left at t={:.3}s but was restarted successfully at t={:.3}s",
                        left_at.as_secs_f64(),
                        r.start.as_secs_f64()
                    ),
                });
            }
        }
    }
}

/// Every observer's partition counts are what the pure placement function gives for the
/// member set (members and leaving nodes) it lists: the view is computed from the ring state it
/// shows, with no stale placement.
#[derive(Debug, Clone, Copy, Default)]
pub struct Placement;

impl Checker for Placement {
    fn name(&self) -> &'static str {
        "placement"
    }

    fn check(&self, input: &CheckInput<'_>, out: &mut Vec<Violation>) {
        let snap = input.snapshot;
        let name = self.name();
        for (o, view) in snap.observers() {
            let config = match RingConfig::new(view.ring.partitions, view.ring.vnodes) {
                Ok(c) => c,
                Err(e) => {
                    out.push(violation(
                        name,
                        snap,
                        Some(o.slot),
                        None,
                        format!("reports an impossible ring: {e}"),
                    ));
                    continue;
                }
            };
            // Owners straight from the statuses the view lists (members and leaving nodes), not
            // through the node's own helper: the checker must not share the code it judges.
            let owners: Vec<Member> = view
                .members
                .iter()
                .filter(|m| matches!(m.status, Status::Member | Status::Leaving))
                .filter_map(|m| m.id.parse().ok())
                .map(Member::new)
                .collect();
            let expected = if owners.is_empty() {
                Default::default()
            } else {
                match Ring::new(owners, config) {
                    Ok(r) => r.replica_counts(view.ring.n),
                    Err(e) => {
                        out.push(violation(
                            name,
                            snap,
                            Some(o.slot),
                            None,
                            format!("lists owners that cannot be placed: {e}"),
                        ));
                        continue;
                    }
                }
            };
            for m in &view.members {
                let want =
                    m.id.parse()
                        .ok()
                        .and_then(|id| expected.get(&id).copied())
                        .unwrap_or(0);
                if m.partitions != want {
                    let subject = snap.by_id(&m.id).map(|s| s.slot);
                    out.push(violation(
                        name,
                        snap,
                        Some(o.slot),
                        subject,
                        format!(
                            "says {} ({}) holds {} partition replicas, but the placement of the members it lists gives {}",
                            m.id,
                            m.status.as_str(),
                            m.partitions,
                            want
                        ),
                    ));
                }
            }
        }
    }
}

/// Every membership operation (join, leave, removal) has completed, no later than `bound`
/// after the heal, and no node is still leaving: a protocol that needs an operation to stall
/// forever, or only recovers slowly, is caught here.
#[derive(Debug, Clone, Copy)]
pub struct Operations {
    /// How long after the heal an operation may take to complete.
    pub bound: Duration,
}

impl Checker for Operations {
    fn name(&self) -> &'static str {
        "operations"
    }

    fn check(&self, input: &CheckInput<'_>, out: &mut Vec<Violation>) {
        let Some(healed_at) = input.healed_at else {
            return;
        };
        let snap = input.snapshot;
        let limit = healed_at + self.bound;
        for op in input.history.ops() {
            if !matches!(
                op.kind,
                OpKind::Join { .. } | OpKind::Leave { .. } | OpKind::Remove { .. }
            ) {
                continue;
            }
            let message = match (op.end, &op.outcome) {
                (None, _) | (_, None) => format!(
                    "{} (invoked at t={:.3}s) has not completed",
                    op.kind,
                    op.start.as_secs_f64()
                ),
                (Some(end), Some(outcome)) if end > limit => format!(
                    "{} completed ({}) at t={:.3}s, more than {:?} after the heal at t={:.3}s",
                    op.kind,
                    outcome.label(),
                    end.as_secs_f64(),
                    self.bound,
                    healed_at.as_secs_f64()
                ),
                _ => continue,
            };
            out.push(Violation {
                checker: self.name(),
                at: snap.at,
                observer: None,
                subject: op.kind.node(),
                message,
            });
        }
        // Every machine the workload set out to remove was removed in the end.
        let mut last_remove: std::collections::BTreeMap<usize, (&Outcome, Duration)> =
            std::collections::BTreeMap::new();
        for op in input.history.ops() {
            if let (OpKind::Remove { node, .. }, Some(outcome)) = (&op.kind, &op.outcome) {
                let ok = last_remove
                    .get(node)
                    .is_some_and(|(o, _)| **o == Outcome::Ok);
                if !ok {
                    last_remove.insert(*node, (outcome, op.start));
                }
            }
        }
        for (node, (outcome, at)) in last_remove {
            if *outcome != Outcome::Ok {
                out.push(Violation {
                    checker: self.name(),
                    at: snap.at,
                    observer: None,
                    subject: Some(node),
                    message: format!(
                        "n{node} was never removed: its last removal (t={:.3}s) ended {outcome}",
                        at.as_secs_f64()
                    ),
                });
            }
        }
        for n in &snap.nodes {
            if n.process == ProcessState::Leaving {
                out.push(violation(
                    self.name(),
                    snap,
                    None,
                    Some(n.slot),
                    format!("n{} is still leaving after the heal", n.slot),
                ));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;
    use std::time::Duration;

    use chorus::node::RingView;
    use chorus::NodeId;

    use super::*;
    use crate::check::run_all;
    use crate::history::History;

    const AT: Duration = Duration::from_secs(300);
    const BOUND: Duration = Duration::from_secs(60);

    fn id(slot: usize) -> NodeId {
        NodeId::new(0x1000 + slot as u64)
    }

    fn member(slot: usize, liveness: Seen, status: Status, incarnation: u64) -> MemberView {
        let addr = SocketAddr::from(([10, 0, 0, slot as u8 + 1], 7000));
        MemberView {
            id: id(slot).to_string(),
            quic_addr: addr,
            http_addr: addr,
            liveness,
            status,
            incarnation,
            partitions: 0,
        }
    }

    /// Ground truth: n0, n1 up (n1 restarted, generation 2), n2 crashed, n3 left.
    fn truth() -> Vec<(ProcessState, u64)> {
        vec![
            (ProcessState::Up, 1),
            (ProcessState::Up, 2),
            (ProcessState::Crashed, 1),
            (ProcessState::Left, 1),
        ]
    }

    /// The settled view every observer should have of `truth()`, with the partition counts
    /// of the three owners' placement.
    fn good_members() -> Vec<MemberView> {
        let mut ms = vec![
            member(0, Seen::Alive, Status::Member, 1),
            member(1, Seen::Alive, Status::Member, 2),
            member(2, Seen::Down, Status::Member, 1),
            member(3, Seen::Down, Status::Left, 1),
        ];
        let ring = Ring::new((0..3).map(id).map(Member::new), RingConfig::default()).unwrap();
        let counts = ring.replica_counts(3);
        for (slot, m) in ms.iter_mut().enumerate() {
            m.partitions = counts.get(&id(slot)).copied().unwrap_or(0);
        }
        ms
    }

    /// A snapshot where observer `slot` has the members `edit` makes of the good ones.
    fn snapshot(edit: impl Fn(usize, &mut Vec<MemberView>)) -> ClusterSnapshot {
        let nodes = truth()
            .into_iter()
            .enumerate()
            .map(|(slot, (process, generation))| {
                let view = (process == ProcessState::Up).then(|| {
                    let mut members = good_members();
                    edit(slot, &mut members);
                    ClusterView {
                        node_id: id(slot).to_string(),
                        members,
                        ring: RingView {
                            partitions: 256,
                            n: 3,
                            vnodes: 64,
                        },
                        pending: Vec::new(),
                        data: None,
                    }
                });
                NodeSnapshot {
                    slot,
                    id: id(slot),
                    process,
                    generation,
                    removed: false,
                    view,
                    data: None,
                    objects: Vec::new(),
                    hints_on_disk: 0,
                    roots: Default::default(),
                    disk_roots: Default::default(),
                }
            })
            .collect();
        ClusterSnapshot {
            at: AT,
            nodes,
            lost: Default::default(),
            op_log: Default::default(),
        }
    }

    fn check(c: &dyn Checker, snap: &ClusterSnapshot) -> Vec<Violation> {
        let history = History::new();
        let mut out = Vec::new();
        c.check(
            &CheckInput {
                snapshot: snap,
                history: &history,
                healed_at: Some(AT),
            },
            &mut out,
        );
        out
    }

    fn one(vs: &[Violation], checker: &str, observer: usize, subject: usize, needle: &str) {
        assert_eq!(vs.len(), 1, "{vs:#?}");
        let v = &vs[0];
        assert_eq!(v.checker, checker);
        assert_eq!(
            (v.observer, v.subject),
            (Some(observer), Some(subject)),
            "{v}"
        );
        assert_eq!(v.at, AT);
        assert!(
            v.message.contains(needle),
            "{:?} lacks {needle:?}",
            v.message
        );
    }

    #[test]
    fn a_settled_cluster_passes_every_checker() {
        let snap = snapshot(|_, _| {});
        let history = History::new();
        let vs = run_all(
            &all(BOUND),
            &CheckInput {
                snapshot: &snap,
                history: &history,
                healed_at: Some(AT),
            },
        );
        assert!(vs.is_empty(), "{vs:#?}");
    }

    #[test]
    fn placement_reports_counts_that_do_not_match_the_listed_members() {
        // n0 still counts partitions as if n3 had not left.
        let snap = snapshot(|o, ms| {
            if o == 0 {
                let stale = Ring::new((0..4).map(id).map(Member::new), RingConfig::default())
                    .unwrap()
                    .replica_counts(3);
                for (slot, m) in ms.iter_mut().enumerate() {
                    m.partitions = stale.get(&id(slot)).copied().unwrap_or(0);
                }
            }
        });
        let vs = check(&Placement, &snap);
        assert_eq!(vs.len(), 4, "every member's count is off: {vs:#?}");
        assert!(vs.iter().all(|v| v.observer == Some(0)));
        let about_n3 = vs.iter().find(|v| v.subject == Some(3)).unwrap();
        assert!(
            about_n3.message.contains("(left) holds")
                && about_n3.message.ends_with("members it lists gives 0"),
            "{about_n3}"
        );
    }

    #[test]
    fn ring_status_expects_a_removed_node_to_be_left() {
        let mut snap = snapshot(|_, _| {});
        snap.nodes[2].removed = true;
        let vs = check(&RingStatus, &snap);
        assert_eq!(vs.len(), 2, "both observers: {vs:#?}");
        assert!(vs[0].message.contains("expected left (removed)"));
        let snap = snapshot(|_, ms| ms[2].status = Status::Left);
        let mut snap2 = snap.clone();
        snap2.nodes[2].removed = true;
        assert!(check(&RingStatus, &snap2).is_empty());
    }

    #[test]
    fn operations_reports_a_machine_that_was_never_removed() {
        let t = Duration::from_secs;
        let snap = snapshot(|_, _| {});
        let mut history = History::new();
        let check = |h: &History| {
            let mut out = Vec::new();
            Operations { bound: BOUND }.check(
                &CheckInput {
                    snapshot: &snap,
                    history: h,
                    healed_at: Some(AT),
                },
                &mut out,
            );
            out
        };
        let refused = history.invoke("membership", OpKind::Remove { node: 2, via: 0 }, t(100));
        history.complete(refused, t(100), Outcome::Failed("refused".into()));
        let vs = check(&history);
        assert_eq!(vs.len(), 1, "{vs:#?}");
        assert!(vs[0].message.contains("n2 was never removed"), "{}", vs[0]);
        // A later attempt that succeeds settles it.
        let ok = history.invoke("membership", OpKind::Remove { node: 2, via: 1 }, t(101));
        history.complete(ok, t(102), Outcome::Ok);
        assert!(check(&history).is_empty());
    }

    #[test]
    fn operations_reports_pending_late_and_stuck_leaves() {
        let t = Duration::from_secs;
        let snap = snapshot(|_, _| {});
        let mut history = History::new();
        // Healed at t=300; bound 60 s.
        let ok = history.invoke("membership", OpKind::Join { node: 0 }, t(10));
        history.complete(ok, t(340), Outcome::Ok);
        let interrupted = history.invoke("membership", OpKind::Leave { node: 2 }, t(20));
        history.complete(
            interrupted,
            t(30),
            Outcome::Indeterminate("crashed while leaving".into()),
        );
        let input = |h: &History, s: &ClusterSnapshot, out: &mut Vec<Violation>| {
            Operations { bound: BOUND }.check(
                &CheckInput {
                    snapshot: s,
                    history: h,
                    healed_at: Some(AT),
                },
                out,
            )
        };
        let mut out = Vec::new();
        input(&history, &snap, &mut out);
        assert!(out.is_empty(), "{out:#?}");

        let late = history.invoke("membership", OpKind::Leave { node: 1 }, t(250));
        history.complete(late, t(361), Outcome::Ok);
        history.invoke("membership", OpKind::Remove { node: 2, via: 0 }, t(290));
        let mut stuck = snap.clone();
        stuck.nodes[1].process = ProcessState::Leaving;
        input(&history, &stuck, &mut out);
        let msgs: Vec<&str> = out.iter().map(|v| v.message.as_str()).collect();
        assert_eq!(msgs.len(), 3, "{msgs:#?}");
        assert!(
            msgs[0].contains("leave n1 completed (ok) at t=361.000s, more than 60s after the heal")
        );
        assert!(msgs[1].contains("remove n2 via n0 (invoked at t=290.000s) has not completed"));
        assert!(msgs[2].contains("n1 is still leaving after the heal"));
    }

    #[test]
    fn agreement_reports_a_missing_member_and_a_status_split() {
        // n1 has never heard that n3 left.
        let snap = snapshot(|o, ms| {
            if o == 1 {
                ms.retain(|m| m.id != id(3).to_string());
            }
        });
        one(
            &check(&Agreement, &snap),
            "agreement",
            1,
            3,
            "does not list n3 (left), which n0 lists as left",
        );

        // n1 does not know the running n0 at all.
        let snap = snapshot(|o, ms| {
            if o == 1 {
                ms.retain(|m| m.id != id(0).to_string());
            }
        });
        let vs = check(&Agreement, &snap);
        assert_eq!(vs.len(), 2, "{vs:#?}");
        assert!(vs
            .iter()
            .all(|v| v.observer == Some(1) && v.subject == Some(0)));
        assert!(vs[0].message.contains("does not list n0, which is up"));
        assert!(vs[1].message.contains("which n0 lists as member"));

        let snap = snapshot(|o, ms| {
            if o == 1 {
                ms[2].status = Status::Joining;
            }
        });
        one(
            &check(&Agreement, &snap),
            "agreement",
            1,
            2,
            "sees n2 as joining, but n0 sees it as member",
        );
    }

    #[test]
    fn agreement_reports_a_member_only_some_list() {
        // A crashed node nobody must know, but n1 knows and n0 does not.
        let snap = snapshot(|o, ms| {
            if o == 0 {
                ms.retain(|m| m.id != id(2).to_string());
            }
        });
        one(
            &check(&Agreement, &snap),
            "agreement",
            1,
            2,
            "which n0 does not list",
        );
    }

    #[test]
    fn liveness_reports_a_suspect_live_node_and_an_alive_crashed_one() {
        let snap = snapshot(|o, ms| {
            if o == 0 {
                ms[1].liveness = Seen::Suspect;
            }
        });
        one(
            &check(&Liveness, &snap),
            "liveness",
            0,
            1,
            "sees n1 as suspect, but it is up",
        );

        let snap = snapshot(|o, ms| {
            if o == 1 {
                ms[2].liveness = Seen::Alive;
            }
        });
        one(
            &check(&Liveness, &snap),
            "liveness",
            1,
            2,
            "sees n2 as alive, but it is crashed",
        );

        let snap = snapshot(|o, ms| {
            if o == 1 {
                ms[3].liveness = Seen::Alive;
            }
        });
        one(&check(&Liveness, &snap), "liveness", 1, 3, "but it is left");
    }

    #[test]
    fn ring_status_reports_a_stuck_join_and_a_forgotten_leave() {
        let snap = snapshot(|o, ms| {
            if o == 0 {
                ms[1].status = Status::Joining;
            }
        });
        one(
            &check(&RingStatus, &snap),
            "ring-status",
            0,
            1,
            "sees n1 as joining, but it is up",
        );

        let snap = snapshot(|o, ms| {
            if o == 1 {
                ms[3].status = Status::Member;
            }
        });
        one(
            &check(&RingStatus, &snap),
            "ring-status",
            1,
            3,
            "expected left",
        );

        let snap = snapshot(|o, ms| {
            if o == 1 {
                ms[2].status = Status::Left;
            }
        });
        one(
            &check(&RingStatus, &snap),
            "ring-status",
            1,
            2,
            "expected not left",
        );
    }

    #[test]
    fn restart_reports_an_old_incarnation_and_a_missing_restarted_node() {
        let snap = snapshot(|o, ms| {
            if o == 0 {
                ms[1].incarnation = 1;
            }
        });
        one(
            &check(&Restart, &snap),
            "restart",
            0,
            1,
            "incarnation 1, older than its generation 2",
        );

        let snap = snapshot(|o, ms| {
            if o == 0 {
                ms[1].liveness = Seen::Down;
            }
        });
        one(&check(&Restart, &snap), "restart", 0, 1, "as down");

        let snap = snapshot(|o, ms| {
            if o == 0 {
                ms.retain(|m| m.id != id(1).to_string());
            }
        });
        one(&check(&Restart, &snap), "restart", 0, 1, "does not list n1");
    }

    #[test]
    fn left_stays_gone_reports_a_node_restarted_after_leaving() {
        let t = Duration::from_secs;
        let snap = snapshot(|_, _| {});
        let mut history = History::new();
        let leave = history.invoke("membership", OpKind::Leave { node: 3 }, t(10));
        history.complete(leave, t(11), Outcome::Ok);
        history.instant(
            "membership",
            OpKind::Restart { node: 3 },
            t(20),
            Outcome::Failed("node has left the cluster".into()),
        );
        // A restart before the leave completed is no violation either.
        history.instant("membership", OpKind::Restart { node: 3 }, t(5), Outcome::Ok);
        let mut out = Vec::new();
        LeftStaysGone.check(
            &CheckInput {
                snapshot: &snap,
                history: &history,
                healed_at: None,
            },
            &mut out,
        );
        assert!(out.is_empty(), "{out:#?}");

        history.instant(
            "membership",
            OpKind::Restart { node: 3 },
            t(30),
            Outcome::Ok,
        );
        LeftStaysGone.check(
            &CheckInput {
                snapshot: &snap,
                history: &history,
                healed_at: None,
            },
            &mut out,
        );
        assert_eq!(out.len(), 1, "{out:#?}");
        assert_eq!((out[0].subject, out[0].at), (Some(3), t(30)));
        assert!(out[0]
            .message
            .contains("n3 left at t=11.000s but was restarted successfully at t=30.000s"));
    }

    #[test]
    fn a_stranger_in_a_view_is_reported() {
        let snap = snapshot(|o, ms| {
            if o == 0 {
                ms.push(member(9, Seen::Alive, Status::Member, 1));
            }
        });
        let vs = check(&Liveness, &snap);
        assert_eq!(vs.len(), 1, "{vs:#?}");
        assert!(vs[0].message.contains("belongs to no machine"));
    }
}
