//! Checkers of CRDT keys: what clients of counters and sets saw, and what replicas hold.
//!
//! They judge the latest final read of each key (a read at `r=N` after the heal) against every
//! update in the history, grouped by operation id: an id is *acknowledged* if any attempt was,
//! *maybe* if none was but one may have been applied (indeterminate), and *never applied* if
//! every attempt failed for certain.
//!
//! - [`CounterBounds`]: a counter's value is the acknowledged increments plus some subset of the
//!   maybe ones, each id counted once: with the workload's ±1 steps, exactly the integers from
//!   `acked + maybe_negative` to `acked + maybe_positive`.
//! - [`TwoPSetRemovals`]: a 2P-Set never holds an element once a remove of it was acknowledged
//!   (and not reported as having had no effect); it holds every element with an acknowledged,
//!   effective add and no remove that may have been applied; it holds nothing never added.
//! - [`ORSetBounds`]: an OR-Set holds every element with an acknowledged add that no remove
//!   (of any outcome but certain failure) may have observed, and nothing never added.
//! - [`TypeKept`]: a key keeps the type of its first acknowledged update: no update of another
//!   type is acknowledged, and the final read shows a value of that type. Keys *created in a
//!   race* with an update of another type ([`contested`]) are left out by every checker: their
//!   replicas may each keep the type they got first, which they report as type conflicts.
//! - [`CrdtConvergence`]: every running replica of a CRDT key (by the placement of the members
//!   the observers list) holds the same state.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use chorus::membership::RingStatus;
use chorus::node::{CrdtOp, CrdtValue, Object};
use chorus::ring::{Member, Ring, RingConfig};
use chorus::NodeId;

use super::{CheckInput, Checker, Violation};
use crate::history::{CrdtRecord, CrdtResult, History, Outcome};

/// Every CRDT checker.
pub fn all() -> Vec<Box<dyn Checker>> {
    vec![
        Box::new(TypeKept),
        Box::new(CounterBounds),
        Box::new(TwoPSetRemovals),
        Box::new(ORSetBounds),
        Box::new(CrdtConvergence),
    ]
}

/// What became of one operation id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Fate {
    Never,
    Maybe,
    Acked,
}

/// The nodes an operator removed for good: what only they acknowledged is lost with them, which
/// no replication can survive (as in the register checkers).
fn lost_nodes(input: &CheckInput<'_>) -> BTreeSet<NodeId> {
    input
        .snapshot
        .nodes
        .iter()
        .filter(|n| n.removed)
        .map(|n| n.id)
        .collect()
}

/// Keys of which an operator's removal lost something, with when (see
/// [`crate::snapshot::ClusterSnapshot::lost`]).
pub type LostKeys = BTreeMap<Vec<u8>, Duration>;

/// Whether the record `r` belongs to its key's current life: it started after the last
/// removal that lost something of the key. What came before may be gone, and the key may
/// have been created anew, of another type.
fn current(history: &History, lost_keys: &LostKeys, r: &CrdtRecord) -> bool {
    let Some(at) = lost_keys.get(r.key.as_bytes()) else {
        return true;
    };
    history.get(r.op).is_some_and(|o| o.start > *at)
}

/// The operation ids of `key` with their update, fate and (for acknowledged ones) notes. An
/// id whose every acknowledgement came from nodes in `lost`, or that completed before a
/// removal lost something of the key (`lost_keys`), counts as maybe applied.
fn updates_of<'a>(
    history: &'a History,
    key: &str,
    lost: &BTreeSet<NodeId>,
    lost_keys: &LostKeys,
) -> BTreeMap<&'a str, (&'a CrdtOp, Fate, Vec<String>)> {
    let lost_at = lost_keys.get(key.as_bytes()).copied();
    let mut out: BTreeMap<&str, (&CrdtOp, Fate, Vec<String>)> = BTreeMap::new();
    let mut ackers: BTreeMap<&str, BTreeSet<NodeId>> = BTreeMap::new();
    for r in history.crdt().iter().filter(|r| r.key == key) {
        let Some((op, op_id)) = &r.update else {
            continue;
        };
        let op_rec = history.get(r.op);
        let fate = match op_rec.and_then(|o| o.outcome.as_ref()) {
            Some(Outcome::Ok)
                if lost_at.is_some_and(|at| op_rec.and_then(|o| o.end).is_none_or(|e| e <= at)) =>
            {
                Fate::Maybe
            }
            Some(Outcome::Ok) => Fate::Acked,
            Some(Outcome::Failed(_)) => Fate::Never,
            Some(Outcome::Indeterminate(_)) | None => Fate::Maybe,
        };
        let (notes, acked_by) = match &r.result {
            Some(CrdtResult::Updated { notes, acked_by }) => (notes.clone(), &acked_by[..]),
            _ => (Vec::new(), &[][..]),
        };
        if fate == Fate::Acked {
            ackers
                .entry(op_id.as_str())
                .or_default()
                .extend(acked_by.iter().copied());
        }
        let e = out
            .entry(op_id.as_str())
            .or_insert((op, Fate::Never, Vec::new()));
        if fate > e.1 {
            e.1 = fate;
            if fate == Fate::Acked {
                e.2 = notes;
            }
        }
    }
    for (op_id, by) in ackers {
        if !by.is_empty() && by.is_subset(lost) {
            if let Some(e) = out.get_mut(op_id) {
                e.1 = Fate::Maybe;
            }
        }
    }
    out
}

/// The latest successful final read of `key`, with its value.
fn final_value<'a>(
    history: &'a History,
    key: &str,
) -> Option<(&'a CrdtRecord, Option<&'a CrdtValue>)> {
    history
        .crdt()
        .iter()
        .rev()
        .filter(|r| r.key == key && r.final_read)
        .filter(|r| {
            matches!(
                history.get(r.op).and_then(|o| o.outcome.as_ref()),
                Some(Outcome::Ok)
            )
        })
        .find_map(|r| match &r.result {
            Some(CrdtResult::Read(v)) => Some((r, v.as_ref())),
            _ => None,
        })
}

/// The type of each key: that of its first acknowledged update.
fn key_types<'a>(history: &'a History, lost_keys: &LostKeys) -> BTreeMap<&'a str, &'static str> {
    let mut types = BTreeMap::new();
    for r in history
        .crdt()
        .iter()
        .filter(|r| current(history, lost_keys, r))
    {
        let Some((op, _)) = &r.update else { continue };
        if matches!(
            history.get(r.op).and_then(|o| o.outcome.as_ref()),
            Some(Outcome::Ok)
        ) {
            types.entry(r.key.as_str()).or_insert(op.type_name());
        }
    }
    types
}

/// Keys created in a race: an update of another type than the key's was invoked before the
/// first acknowledged update of the key's type completed, so two coordinators may each have
/// created the key with their own type. Replicas then keep their own type and report the
/// conflict (DESIGN.md §3); the checkers leave such keys out rather than judge a value whose
/// type depends on the replica.
pub fn contested(history: &History, lost_keys: &LostKeys) -> BTreeSet<String> {
    let types = key_types(history, lost_keys);
    let mut established: BTreeMap<&str, std::time::Duration> = BTreeMap::new();
    for r in history
        .crdt()
        .iter()
        .filter(|r| current(history, lost_keys, r))
    {
        let (Some((op, _)), Some(o)) = (&r.update, history.get(r.op)) else {
            continue;
        };
        if matches!(o.outcome, Some(Outcome::Ok))
            && types.get(r.key.as_str()) == Some(&op.type_name())
        {
            if let Some(end) = o.end {
                let e = established.entry(r.key.as_str()).or_insert(end);
                *e = (*e).min(end);
            }
        }
    }
    history
        .crdt()
        .iter()
        .filter(|r| current(history, lost_keys, r))
        .filter(|r| {
            let (Some((op, _)), Some(o)) = (&r.update, history.get(r.op)) else {
                return false;
            };
            types
                .get(r.key.as_str())
                .is_some_and(|&t| t != op.type_name())
                && established
                    .get(r.key.as_str())
                    .is_none_or(|&at| o.start <= at)
        })
        .map(|r| r.key.clone())
        .collect()
}

/// Keys whose type (see [`key_types`]) is `type_name`, contested ones left out.
fn keys_of(history: &History, lost_keys: &LostKeys, type_name: &str) -> BTreeSet<String> {
    let contested = contested(history, lost_keys);
    key_types(history, lost_keys)
        .into_iter()
        .filter(|&(k, t)| t == type_name && !contested.contains(k))
        .map(|(k, _)| k.to_owned())
        .collect()
}

/// The placement of the members as the first observer lists them (the membership checkers make
/// sure every observer agrees), with the ring parameters it reports.
pub(crate) fn observed_ring<'a>(
    input: &'a CheckInput<'_>,
) -> Option<(Ring, &'a chorus::node::RingView)> {
    let (_, view) = input.snapshot.observers().next()?;
    let owners: Vec<Member> = view
        .members
        .iter()
        .filter(|m| matches!(m.status, RingStatus::Member | RingStatus::Leaving))
        .filter_map(|m| m.id.parse().ok())
        .map(Member::new)
        .collect();
    let config = RingConfig::new(view.ring.partitions, view.ring.vnodes).ok()?;
    let ring = Ring::new(owners, config).ok()?;
    Some((ring, &view.ring))
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

/// See the module documentation.
#[derive(Debug, Clone, Copy, Default)]
pub struct TypeKept;

impl Checker for TypeKept {
    fn name(&self) -> &'static str {
        "type-kept"
    }

    fn check(&self, input: &CheckInput<'_>, out: &mut Vec<Violation>) {
        let lost_keys = &input.snapshot.lost;
        let types = key_types(input.history, lost_keys);
        let contested = contested(input.history, lost_keys);
        for r in input
            .history
            .crdt()
            .iter()
            .filter(|r| !contested.contains(&r.key) && current(input.history, lost_keys, r))
        {
            let Some((op, op_id)) = &r.update else {
                continue;
            };
            let acked = matches!(
                input.history.get(r.op).and_then(|o| o.outcome.as_ref()),
                Some(Outcome::Ok)
            );
            let held = types.get(r.key.as_str()).copied();
            if acked && held.is_some_and(|t| t != op.type_name()) {
                out.push(violation(
                    self.name(),
                    input,
                    format!(
                        "{} holds a {}, yet a {} update ({op_id}) was acknowledged",
                        r.key,
                        held.unwrap_or_default(),
                        op.type_name()
                    ),
                ));
            }
        }
        if input.healed_at.is_none() {
            return;
        }
        for (key, t) in types.into_iter().filter(|(k, _)| !contested.contains(*k)) {
            let Some((_, Some(value))) = final_value(input.history, key) else {
                continue;
            };
            let counter = matches!(t, "gcounter" | "pncounter");
            if counter != matches!(value, CrdtValue::Counter(_)) {
                out.push(violation(
                    self.name(),
                    input,
                    format!("{key} holds a {t} but reads as {value:?}"),
                ));
            }
        }
    }
}

/// See the module documentation.
#[derive(Debug, Clone, Copy, Default)]
pub struct CounterBounds;

impl Checker for CounterBounds {
    fn name(&self) -> &'static str {
        "counter-bounds"
    }

    fn check(&self, input: &CheckInput<'_>, out: &mut Vec<Violation>) {
        if input.healed_at.is_none() {
            return;
        }
        let lost = lost_nodes(input);
        let lost_keys = &input.snapshot.lost;
        let mut keys = keys_of(input.history, lost_keys, "gcounter");
        keys.extend(keys_of(input.history, lost_keys, "pncounter"));
        for key in keys {
            let (mut acked, mut up, mut down) = (0i128, 0i128, 0i128);
            for (op, fate, _) in updates_of(input.history, &key, &lost, lost_keys).values() {
                let amount = match op {
                    CrdtOp::GCounter { increment } => i128::from(*increment),
                    CrdtOp::PNCounter { increment } => i128::from(*increment),
                    _ => continue,
                };
                match fate {
                    Fate::Acked => acked += amount,
                    Fate::Maybe if amount > 0 => up += amount,
                    Fate::Maybe => down += amount,
                    Fate::Never => {}
                }
            }
            let Some((_, value)) = final_value(input.history, &key) else {
                out.push(violation(
                    self.name(),
                    input,
                    format!("counter {key} has no final read"),
                ));
                continue;
            };
            let v = match value {
                Some(CrdtValue::Counter(v)) => *v,
                None => 0,
                Some(other) => {
                    out.push(violation(
                        self.name(),
                        input,
                        format!("counter {key} reads as {other:?}"),
                    ));
                    continue;
                }
            };
            let (lo, hi) = (acked + down, acked + up);
            if v < lo || v > hi {
                out.push(violation(
                    self.name(),
                    input,
                    format!(
                        "counter {key} reads {v}, outside {lo}..={hi} (acknowledged {acked}, maybe +{up} / {down})"
                    ),
                ));
            }
        }
    }
}

/// The elements of a set read (empty when absent).
fn elements(value: Option<&CrdtValue>) -> Result<BTreeSet<&str>, String> {
    match value {
        None => Ok(BTreeSet::new()),
        Some(CrdtValue::Set(s)) => Ok(s.iter().map(String::as_str).collect()),
        Some(other) => Err(format!("reads as {other:?}")),
    }
}

/// Per element: (acknowledged effective add, any add that may have been applied, acknowledged
/// effective remove, any remove that may have been applied).
type ElementFates = BTreeMap<String, (bool, bool, bool, bool)>;

fn element_fates(
    history: &History,
    key: &str,
    lost: &BTreeSet<NodeId>,
    lost_keys: &LostKeys,
) -> ElementFates {
    let mut f: ElementFates = BTreeMap::new();
    for (op, fate, notes) in updates_of(history, key, lost, lost_keys).values() {
        let (add, remove) = match op {
            // (An update of another type was refused, or is the type checker's concern.)
            CrdtOp::TwoPSet { add, remove } | CrdtOp::ORSet { add, remove, .. } => (add, remove),
            _ => continue,
        };
        let no_effect = |e: &str| {
            notes
                .iter()
                .any(|n| n.starts_with(&format!("{e:?} was not")))
        };
        for e in add {
            let x = f.entry(e.clone()).or_default();
            x.0 |= *fate == Fate::Acked && !no_effect(e);
            x.1 |= *fate != Fate::Never;
        }
        for e in remove {
            let x = f.entry(e.clone()).or_default();
            x.2 |= *fate == Fate::Acked && !no_effect(e);
            x.3 |= *fate != Fate::Never;
        }
    }
    f
}

/// See the module documentation.
#[derive(Debug, Clone, Copy, Default)]
pub struct TwoPSetRemovals;

impl Checker for TwoPSetRemovals {
    fn name(&self) -> &'static str {
        "2pset-removals"
    }

    fn check(&self, input: &CheckInput<'_>, out: &mut Vec<Violation>) {
        if input.healed_at.is_none() {
            return;
        }
        for key in keys_of(input.history, &input.snapshot.lost, "2pset") {
            let Some((_, value)) = final_value(input.history, &key) else {
                out.push(violation(
                    self.name(),
                    input,
                    format!("2P-Set {key} has no final read"),
                ));
                continue;
            };
            let held = match elements(value) {
                Ok(h) => h,
                Err(e) => {
                    out.push(violation(self.name(), input, format!("2P-Set {key} {e}")));
                    continue;
                }
            };
            let fates = element_fates(
                input.history,
                &key,
                &lost_nodes(input),
                &input.snapshot.lost,
            );
            for e in &held {
                match fates.get(*e) {
                    None | Some((_, false, _, _)) => out.push(violation(
                        self.name(),
                        input,
                        format!("2P-Set {key} holds {e:?}, which nobody added"),
                    )),
                    Some((_, _, true, _)) => out.push(violation(
                        self.name(),
                        input,
                        format!("2P-Set {key} holds {e:?} after its removal was acknowledged"),
                    )),
                    _ => {}
                }
            }
            for (e, &(acked_add, _, _, maybe_removed)) in &fates {
                if acked_add && !maybe_removed && !held.contains(e.as_str()) {
                    out.push(violation(
                        self.name(),
                        input,
                        format!("2P-Set {key} lost {e:?}: its add was acknowledged and nobody removed it"),
                    ));
                }
            }
        }
    }
}

/// See the module documentation.
#[derive(Debug, Clone, Copy, Default)]
pub struct ORSetBounds;

impl Checker for ORSetBounds {
    fn name(&self) -> &'static str {
        "orset-bounds"
    }

    fn check(&self, input: &CheckInput<'_>, out: &mut Vec<Violation>) {
        if input.healed_at.is_none() {
            return;
        }
        for key in keys_of(input.history, &input.snapshot.lost, "orset") {
            let Some((_, value)) = final_value(input.history, &key) else {
                out.push(violation(
                    self.name(),
                    input,
                    format!("OR-Set {key} has no final read"),
                ));
                continue;
            };
            let held = match elements(value) {
                Ok(h) => h,
                Err(e) => {
                    out.push(violation(self.name(), input, format!("OR-Set {key} {e}")));
                    continue;
                }
            };
            let fates = element_fates(
                input.history,
                &key,
                &lost_nodes(input),
                &input.snapshot.lost,
            );
            for e in &held {
                if !fates.get(*e).is_some_and(|f| f.1) {
                    out.push(violation(
                        self.name(),
                        input,
                        format!("OR-Set {key} holds {e:?}, which nobody added"),
                    ));
                }
            }
            for (e, &(acked_add, _, _, maybe_removed)) in &fates {
                if acked_add && !maybe_removed && !held.contains(e.as_str()) {
                    out.push(violation(
                        self.name(),
                        input,
                        format!("OR-Set {key} lost {e:?}: its add was acknowledged and no remove was attempted"),
                    ));
                }
            }
        }
    }
}

/// See the module documentation.
#[derive(Debug, Clone, Copy, Default)]
pub struct CrdtConvergence;

impl Checker for CrdtConvergence {
    fn name(&self) -> &'static str {
        "crdt-convergence"
    }

    fn check(&self, input: &CheckInput<'_>, out: &mut Vec<Violation>) {
        if input.healed_at.is_none() {
            return;
        }
        let Some((ring, view)) = observed_ring(input) else {
            return;
        };
        let contested = contested(input.history, &input.snapshot.lost);
        let mut keys: BTreeSet<&[u8]> = BTreeSet::new();
        for n in &input.snapshot.nodes {
            for (k, o) in &n.objects {
                let raced = contested.contains(String::from_utf8_lossy(k).as_ref());
                if !matches!(o, Object::Register(_)) && !raced {
                    keys.insert(k);
                }
            }
        }
        for key in keys {
            let replicas = ring.preference_list(ring.partition_of(key), view.n);
            let mut states: Vec<(usize, Option<&Object>)> = Vec::new();
            for n in &input.snapshot.nodes {
                if !n.process.is_running() || !replicas.contains(&n.id) {
                    continue;
                }
                let copy = n
                    .objects
                    .iter()
                    .find(|(k, _)| k.as_slice() == key)
                    .map(|(_, o)| o);
                states.push((n.slot, copy));
            }
            if let Some(&(first, a)) = states.first() {
                for &(slot, b) in &states[1..] {
                    if a != b {
                        out.push(Violation {
                            checker: self.name(),
                            at: input.snapshot.at,
                            observer: Some(slot),
                            subject: Some(first),
                            message: format!(
                                "replicas of {} differ: n{first} and n{slot} hold different states",
                                String::from_utf8_lossy(key)
                            ),
                        });
                        break;
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;
    use std::time::Duration;

    use chorus::crdt::{Counter, OpLogPolicy};
    use chorus::node::{ClusterView, Liveness, Logged, MemberView, RingView};
    use chorus::NodeId;

    use super::*;
    use crate::history::{OpId, OpKind};
    use crate::snapshot::{ClusterSnapshot, NodeSnapshot, ProcessState};

    const AT: Duration = Duration::from_secs(400);

    fn id(slot: usize) -> NodeId {
        NodeId::new(100 + slot as u64)
    }

    /// Three running members that all see each other.
    fn snapshot() -> ClusterSnapshot {
        let members: Vec<MemberView> = (0..3)
            .map(|slot| MemberView {
                id: id(slot).to_string(),
                quic_addr: SocketAddr::from(([10, 0, 0, slot as u8 + 1], 7000)),
                http_addr: SocketAddr::from(([10, 0, 0, slot as u8 + 1], 8000)),
                liveness: Liveness::Alive,
                status: RingStatus::Member,
                incarnation: 1,
                partitions: 256,
            })
            .collect();
        let nodes = (0..3)
            .map(|slot| NodeSnapshot {
                slot,
                id: id(slot),
                process: ProcessState::Up,
                generation: 1,
                removed: false,
                view: Some(ClusterView {
                    node_id: id(slot).to_string(),
                    members: members.clone(),
                    ring: RingView {
                        partitions: 256,
                        n: 3,
                        vnodes: 64,
                    },
                    pending: Vec::new(),
                    data: None,
                }),
                data: None,
                objects: Vec::new(),
                hints_on_disk: 0,
                roots: Default::default(),
                disk_roots: Default::default(),
            })
            .collect();
        ClusterSnapshot {
            at: AT,
            nodes,
            lost: Default::default(),
        }
    }

    /// A history builder for CRDT keys.
    #[derive(Default)]
    struct H(History);

    impl H {
        fn update(
            &mut self,
            key: &str,
            op: CrdtOp,
            op_id: &str,
            outcome: Outcome,
            notes: &[&str],
        ) -> OpId {
            // Each update starts after the previous one ended.
            let start = Duration::from_secs(10 + 2 * self.0.ops().len() as u64);
            let id = self.0.invoke(
                "crdt",
                OpKind::Update {
                    key: key.into(),
                    what: op_id.into(),
                    node: 0,
                },
                start,
            );
            self.0.record_crdt(CrdtRecord {
                op: id,
                key: key.into(),
                update: Some((op, op_id.into())),
                final_read: false,
                result: None,
            });
            if outcome == Outcome::Ok {
                let notes = notes.iter().map(|s| s.to_string()).collect();
                self.0.crdt_result(
                    id,
                    CrdtResult::Updated {
                        notes,
                        acked_by: vec![NodeId::new(100)],
                    },
                );
            }
            self.0.complete(id, start + Duration::from_secs(1), outcome);
            id
        }

        fn incr(&mut self, key: &str, n: u64, op_id: &str, outcome: Outcome) {
            self.update(key, CrdtOp::GCounter { increment: n }, op_id, outcome, &[]);
        }

        fn final_read(&mut self, key: &str, value: Option<CrdtValue>) {
            let id = self.0.invoke(
                "crdt",
                OpKind::Read {
                    key: key.into(),
                    node: 1,
                },
                Duration::from_secs(300),
            );
            self.0.record_crdt(CrdtRecord {
                op: id,
                key: key.into(),
                update: None,
                final_read: true,
                result: Some(CrdtResult::Read(value)),
            });
            self.0.complete(id, Duration::from_secs(301), Outcome::Ok);
        }
    }

    fn check(c: &dyn Checker, h: &History, snap: &ClusterSnapshot) -> Vec<Violation> {
        let mut out = Vec::new();
        c.check(
            &CheckInput {
                snapshot: snap,
                history: h,
                healed_at: Some(AT),
            },
            &mut out,
        );
        out
    }

    fn maybe() -> Outcome {
        Outcome::Indeterminate("timed out".into())
    }

    #[test]
    fn a_counter_outside_its_bounds_is_caught_and_retries_count_once() {
        let counter = |value: i128| {
            let mut h = H::default();
            h.incr("g", 1, "a", Outcome::Ok);
            // "b" timed out, then its retry was acknowledged: one increment.
            h.incr("g", 1, "b", maybe());
            h.incr("g", 1, "b", Outcome::Ok);
            h.incr("g", 1, "c", maybe());
            h.incr("g", 1, "d", Outcome::Failed("refused".into()));
            h.final_read("g", Some(CrdtValue::Counter(value)));
            check(&CounterBounds, &h.0, &snapshot())
        };
        assert!(counter(2).is_empty(), "{:?}", counter(2));
        assert!(
            counter(3).is_empty(),
            "the indeterminate one may have landed"
        );
        let lost = counter(1);
        assert_eq!(lost.len(), 1, "{lost:?}");
        assert!(
            lost[0].message.contains("outside 2..=3"),
            "{}",
            lost[0].message
        );
        assert_eq!(counter(4).len(), 1, "a retried id counted twice is caught");
        let mut h = H::default();
        h.incr("g", 1, "a", Outcome::Ok);
        assert!(check(&CounterBounds, &h.0, &snapshot())[0]
            .message
            .contains("no final read"));
    }

    #[test]
    fn an_increment_held_only_by_removed_nodes_may_be_missing_and_no_other() {
        // Every update of the builder is acknowledged by n0 alone.
        let mut h = H::default();
        h.incr("g", 1, "a", Outcome::Ok);
        h.incr("g", 1, "b", Outcome::Ok);
        h.final_read("g", Some(CrdtValue::Counter(1)));
        let v = check(&CounterBounds, &h.0, &snapshot());
        assert_eq!(v.len(), 1, "n0 is still in the cluster: {v:?}");
        let mut snap = snapshot();
        snap.nodes[0].removed = true;
        let v = check(&CounterBounds, &h.0, &snap);
        assert!(v.is_empty(), "n0 was removed for good: {v:?}");
        h.final_read("g", Some(CrdtValue::Counter(3)));
        let v = check(&CounterBounds, &h.0, &snap);
        assert_eq!(v.len(), 1, "never more than was added: {v:?}");
    }

    #[test]
    fn a_key_lost_with_removed_machines_may_come_back_with_another_type() {
        // g is a counter (updates end at 11 s and 13 s); a 2P-Set update (14..15 s) is
        // acknowledged and the final read is a set.
        let mut h = H::default();
        h.incr("g", 1, "a", Outcome::Ok);
        h.incr("g", 1, "b", Outcome::Ok);
        h.update("g", two_p(&["x"], &[]), "c", Outcome::Ok, &[]);
        h.final_read("g", set(&["x"]));
        let judge = |lost_at: Option<u64>| {
            let mut snap = snapshot();
            if let Some(ms) = lost_at {
                snap.lost.insert(b"g".to_vec(), Duration::from_millis(ms));
            }
            let mut v = check(&TypeKept, &h.0, &snap);
            v.extend(check(&CounterBounds, &h.0, &snap));
            v.extend(check(&TwoPSetRemovals, &h.0, &snap));
            v
        };
        let v = judge(None);
        assert!(
            v.iter().any(|v| v.message.contains("yet a 2pset update")),
            "nothing was lost: {v:?}"
        );
        // Both increments were acknowledged before a removal lost the key: it may be created
        // anew, as a set, and the set's own add must be there.
        assert!(judge(Some(13_500)).is_empty(), "{:?}", judge(Some(13_500)));
        // Lost after the first increment only: the second made it a counter again.
        let v = judge(Some(11_500));
        assert!(
            v.iter().any(|v| v.message.contains("yet a 2pset update")),
            "{v:?}"
        );
        // The set's add is still judged after a loss.
        let mut h2 = H::default();
        h2.update("s", two_p(&["x"], &[]), "a", Outcome::Ok, &[]);
        h2.final_read("s", set(&[]));
        let mut snap = snapshot();
        snap.lost.insert(b"s".to_vec(), Duration::from_secs(5));
        assert_eq!(check(&TwoPSetRemovals, &h2.0, &snap).len(), 1);
    }
    fn two_p(add: &[&str], remove: &[&str]) -> CrdtOp {
        CrdtOp::TwoPSet {
            add: add.iter().map(|s| s.to_string()).collect(),
            remove: remove.iter().map(|s| s.to_string()).collect(),
        }
    }

    fn set(elements: &[&str]) -> Option<CrdtValue> {
        Some(CrdtValue::Set(
            elements.iter().map(|s| s.to_string()).collect(),
        ))
    }

    #[test]
    fn a_2pset_element_back_after_its_removal_is_caught() {
        let run = |final_value: &[&str], remove_note: &[&str]| {
            let mut h = H::default();
            h.update("s", two_p(&["a", "b", "c"], &[]), "1", Outcome::Ok, &[]);
            h.update("s", two_p(&[], &["a"]), "2", Outcome::Ok, remove_note);
            h.update("s", two_p(&[], &["c"]), "3", maybe(), &[]);
            h.final_read("s", set(final_value));
            check(&TwoPSetRemovals, &h.0, &snapshot())
        };
        assert!(run(&["b"], &[]).is_empty());
        assert!(
            run(&["b", "c"], &[]).is_empty(),
            "c's removal may not have landed"
        );
        let back = run(&["a", "b"], &[]);
        assert_eq!(back.len(), 1, "{back:?}");
        assert!(back[0]
            .message
            .contains("after its removal was acknowledged"));
        // A remove that said it had no effect did not remove.
        assert!(run(&["a", "b"], &["\"a\" was not removed: never seen"]).is_empty());
        let lost = run(&[], &[]);
        assert_eq!(lost.len(), 1, "{lost:?}");
        assert!(lost[0].message.contains("lost \"b\""));
        let phantom = run(&["b", "zz"], &[]);
        assert!(phantom[0].message.contains("nobody added"), "{phantom:?}");
    }

    #[test]
    fn an_orset_that_loses_an_add_or_invents_one_is_caught() {
        let or = |add: &[&str], remove: &[&str]| CrdtOp::ORSet {
            add: add.iter().map(|s| s.to_string()).collect(),
            remove: remove.iter().map(|s| s.to_string()).collect(),
            context: None,
        };
        let run = |final_value: &[&str]| {
            let mut h = H::default();
            h.update("o", or(&["a", "b"], &[]), "1", Outcome::Ok, &[]);
            h.update("o", or(&[], &["b"]), "2", maybe(), &[]);
            h.final_read("o", set(final_value));
            check(&ORSetBounds, &h.0, &snapshot())
        };
        assert!(run(&["a"]).is_empty());
        assert!(
            run(&["a", "b"]).is_empty(),
            "b's remove may not have landed"
        );
        assert!(run(&["b"])[0].message.contains("lost \"a\""));
        assert!(run(&["a", "x"])[0].message.contains("nobody added"));
    }

    #[test]
    fn an_update_of_another_type_acknowledged_is_caught() {
        let run = |second: Outcome| {
            let mut h = H::default();
            h.incr("g", 1, "a", Outcome::Ok);
            h.update("g", two_p(&["x"], &[]), "b", second, &[]);
            h.final_read("g", Some(CrdtValue::Counter(1)));
            check(&TypeKept, &h.0, &snapshot())
        };
        assert!(run(Outcome::Failed("type_conflict".into())).is_empty());
        let v = run(Outcome::Ok);
        assert_eq!(v.len(), 1, "{v:?}");
        assert!(v[0]
            .message
            .contains("holds a gcounter, yet a 2pset update"));
        let mut h = H::default();
        h.incr("g", 1, "a", Outcome::Ok);
        h.final_read("g", set(&["x"]));
        assert!(check(&TypeKept, &h.0, &snapshot())[0]
            .message
            .contains("reads as"));
    }

    #[test]
    fn a_key_created_in_a_race_with_another_type_is_left_out() {
        let mut h = H::default();
        // The 2P-Set update starts before the first counter update is acknowledged.
        h.update(
            "g",
            two_p(&["x"], &[]),
            "b",
            Outcome::Failed("type_conflict".into()),
            &[],
        );
        h.incr("g", 1, "a", Outcome::Ok);
        h.final_read("g", set(&[]));
        assert!(contested(&h.0, &LostKeys::new()).contains("g"));
        assert!(check(&TypeKept, &h.0, &snapshot()).is_empty());
        assert!(check(&CounterBounds, &h.0, &snapshot()).is_empty());
    }

    #[test]
    fn replicas_that_differ_are_caught() {
        let policy = OpLogPolicy::default();
        let counter = |n: i64| {
            let mut c = Counter::new();
            c.apply(NodeId::new(1), "op", n, 0, policy).unwrap();
            Object::GCounter(c)
        };
        let mut snap = snapshot();
        for n in &mut snap.nodes {
            n.objects = vec![(b"g".to_vec(), counter(1))];
        }
        let h = History::new();
        assert!(check(&CrdtConvergence, &h, &snap).is_empty());
        snap.nodes[2].objects = vec![(b"g".to_vec(), counter(2))];
        let v = check(&CrdtConvergence, &h, &snap);
        assert_eq!(v.len(), 1, "{v:?}");
        assert!(v[0].message.contains("replicas of g differ"));
        // A replica missing the key altogether differs too.
        snap.nodes[2].objects.clear();
        assert_eq!(check(&CrdtConvergence, &h, &snap).len(), 1);
        // Registers are left to the register checkers.
        let mut snap = snapshot();
        snap.nodes[0].objects = vec![(b"s".to_vec(), Object::TwoPSet(Logged::default()))];
        assert_eq!(check(&CrdtConvergence, &h, &snap).len(), 1);
    }
}
