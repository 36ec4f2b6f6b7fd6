//! Checkers of CRDT keys: what clients of counters and sets saw, and what replicas hold.
//!
//! They judge the latest final read of each key (a read at `r=N` after the heal) against every
//! update in the history, grouped by operation id: an id is *acknowledged* if any attempt was,
//! *maybe* if none was but one may have been applied (indeterminate), and *never applied* if
//! every attempt failed for certain. A key may hold several types at once (writes of several
//! types raced and the key is *contested*, DESIGN.md §3): each checker judges the part of its
//! type, from the read's parts ([`crate::history::CrdtRead`]), and only the updates of its
//! type; a part the read does not show is an absent (empty) one.
//!
//! - [`CounterBounds`]: a counter's value is the acknowledged increments plus some subset of the
//!   maybe ones, each id counted once: with the workload's ±1 steps, exactly the integers from
//!   `acked + maybe_negative` to `acked + maybe_positive` — widened only where the operation-id
//!   log's contract lets an id count again (see the checker).
//! - [`TwoPSetRemovals`]: a 2P-Set never holds an element once a remove of it was acknowledged
//!   (and not reported as having had no effect); it holds every element with an acknowledged,
//!   effective add and no remove that may have been applied; it holds nothing never added.
//! - [`ORSetBounds`]: an OR-Set holds every element with an acknowledged add that no remove
//!   (of any outcome but certain failure) may have observed, and nothing never added.
//! - [`TypeKept`]: a write refused for its type is stored nowhere; the final read shows a part
//!   of every type with an acknowledged update (and a register part holding values), contested
//!   when there are two or more, and no part of a type nobody may have written.
//! - [`RetriesAcknowledged`]: every update still being retried after the heal (or in flight
//!   then) is acknowledged before the cluster settles, once `w` of its key's replicas are up.
//! - [`CrdtConvergence`]: every running replica of a key with a CRDT part (by the placement of
//!   the members the observers list) holds the same state, contested keys included.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use chorus::causality::RegisterValue;
use chorus::membership::RingStatus;
use chorus::node::{CrdtOp, CrdtValue, Object};
use chorus::ring::{Member, Ring, RingConfig};
use chorus::NodeId;

use super::{CheckInput, Checker, Violation};
use crate::history::{CrdtRead, CrdtRecord, CrdtResult, History, OpKind, Operation, Outcome};

/// Every CRDT checker.
pub fn all() -> Vec<Box<dyn Checker>> {
    vec![
        Box::new(TypeKept),
        Box::new(CounterBounds),
        Box::new(TwoPSetRemovals),
        Box::new(ORSetBounds),
        Box::new(RetriesAcknowledged),
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

/// One operation id of a key: its update, its fate, what it did, and every attempt (in
/// invocation order).
struct IdFate<'a> {
    op: &'a CrdtOp,
    fate: Fate,
    /// The notes of an acknowledgement that applied the update (`None` while the only
    /// acknowledgements were replays of an earlier application, whose effect they do not tell).
    notes: Option<Vec<String>>,
    attempts: Vec<(&'a CrdtRecord, &'a Operation)>,
}

/// The operation ids of `key` whose update is of type `type_name` (every type: `None`). An id
/// whose every acknowledgement came from nodes in `lost`, or that completed before a removal
/// lost something of the key (`lost_keys`), counts as maybe applied.
fn updates_of<'a>(
    history: &'a History,
    key: &str,
    type_name: Option<&str>,
    lost: &BTreeSet<NodeId>,
    lost_keys: &LostKeys,
) -> BTreeMap<&'a str, IdFate<'a>> {
    let lost_at = lost_keys.get(key.as_bytes()).copied();
    let mut out: BTreeMap<&str, IdFate<'a>> = BTreeMap::new();
    let mut ackers: BTreeMap<&str, BTreeSet<NodeId>> = BTreeMap::new();
    for r in history.crdt().iter().filter(|r| r.key == key) {
        let Some((op, op_id)) = &r.update else {
            continue;
        };
        if type_name.is_some_and(|t| t != op.type_name()) {
            continue;
        }
        let Some(op_rec) = history.get(r.op) else {
            continue;
        };
        let fate = match op_rec.outcome.as_ref() {
            Some(Outcome::Ok) if lost_at.is_some_and(|at| op_rec.end.is_none_or(|e| e <= at)) => {
                Fate::Maybe
            }
            Some(Outcome::Ok) => Fate::Acked,
            Some(Outcome::Failed(_)) => Fate::Never,
            Some(Outcome::Indeterminate(_)) | None => Fate::Maybe,
        };
        let (notes, acked_by) = match &r.result {
            Some(CrdtResult::Updated {
                notes,
                acked_by,
                replayed,
            }) => ((!replayed).then(|| notes.clone()), &acked_by[..]),
            _ => (None, &[][..]),
        };
        if fate == Fate::Acked {
            ackers
                .entry(op_id.as_str())
                .or_default()
                .extend(acked_by.iter().copied());
        }
        let e = out.entry(op_id.as_str()).or_insert(IdFate {
            op,
            fate: Fate::Never,
            notes: None,
            attempts: Vec::new(),
        });
        e.attempts.push((r, op_rec));
        e.fate = e.fate.max(fate);
        if fate == Fate::Acked && e.notes.is_none() {
            e.notes = notes;
        }
    }
    for (op_id, by) in ackers {
        if !by.is_empty() && by.is_subset(lost) {
            if let Some(e) = out.get_mut(op_id) {
                e.fate = Fate::Maybe;
            }
        }
    }
    out
}

/// The latest successful final read of `key`.
fn final_read<'a>(history: &'a History, key: &str) -> Option<(&'a CrdtRecord, &'a CrdtRead)> {
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
            Some(CrdtResult::Read(v)) => Some((r, v)),
            _ => None,
        })
}

/// Keys with an update of type `type_name` in their current life.
fn keys_of(history: &History, lost_keys: &LostKeys, type_name: &str) -> BTreeSet<String> {
    history
        .crdt()
        .iter()
        .filter(|r| current(history, lost_keys, r))
        .filter(|r| {
            r.update
                .as_ref()
                .is_some_and(|(op, _)| op.type_name() == type_name)
        })
        .map(|r| r.key.clone())
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

/// Whether `object` (a replica's copy) holds the update `op_id` of `op`'s type: its part of that
/// type remembers the id, or holds an element only that update adds (the workload gives the
/// updates it expects refused elements of their own, `z-<op id>`).
fn holds_update(object: &Object, op: &CrdtOp, op_id: &str) -> bool {
    let Some(part) = object.part(op.type_name()) else {
        return false;
    };
    let own = |e: &String| e.starts_with("z-");
    match (part.as_ref(), op) {
        (Object::GCounter(c) | Object::PNCounter(c), _) => c.log().contains(op_id),
        (Object::TwoPSet(s), CrdtOp::TwoPSet { add, .. }) => {
            s.log.contains(op_id)
                || add
                    .iter()
                    .filter(|e| own(e))
                    .any(|e| s.set.contains(e.as_str()) || s.set.is_removed(e.as_str()))
        }
        (Object::ORSet(s), CrdtOp::ORSet { add, .. }) => {
            s.log.contains(op_id)
                || add
                    .iter()
                    .filter(|e| own(e))
                    .any(|e| s.set.elements().any(|x| x == e))
        }
        _ => false,
    }
}

/// Whether `object` holds the register value named `name` (see
/// [`crate::workload::register::value_name`]: a large value starts with its name and `@`).
fn holds_value(object: &Object, name: &str) -> bool {
    let Some(reg) = object.as_register() else {
        return false;
    };
    reg.dvvset().dotted_values().any(|(_, v)| {
        let RegisterValue::Bytes(bytes) = v else {
            return false;
        };
        bytes == name.as_bytes()
            || (bytes.len() > name.len()
                && bytes.starts_with(name.as_bytes())
                && bytes[name.len()] == b'@')
    })
}

/// See the module documentation.
///
/// A write refused for its type (409, `type_conflict`) was stored by no replica: no copy of the
/// key on any disk holds the refused update's id or its own element, or the refused register
/// value. After the heal, the final read shows a live part of every CRDT type with an
/// acknowledged update; when that makes two or more live types (a register part with values
/// counts), it reports the key as contested; and every part it shows is of a type some write
/// that may have been applied had.
#[derive(Debug, Clone, Copy, Default)]
pub struct TypeKept;

impl Checker for TypeKept {
    fn name(&self) -> &'static str {
        "type-kept"
    }

    fn check(&self, input: &CheckInput<'_>, out: &mut Vec<Violation>) {
        let lost = lost_nodes(input);
        let lost_keys = &input.snapshot.lost;
        let copies = |key: &str| -> Vec<(usize, &Object)> {
            input
                .snapshot
                .nodes
                .iter()
                .filter_map(|n| {
                    n.objects
                        .iter()
                        .find(|(k, _)| k.as_slice() == key.as_bytes())
                        .map(|(_, o)| (n.slot, o))
                })
                .collect()
        };
        // Refused CRDT updates: no attempt of the id may have been applied.
        let keys: BTreeSet<&str> = input
            .history
            .crdt()
            .iter()
            .map(|r| r.key.as_str())
            .collect();
        for &key in &keys {
            for (op_id, f) in updates_of(input.history, key, None, &lost, lost_keys) {
                let refused = f.attempts.iter().any(|(_, o)| {
                    o.outcome
                        .as_ref()
                        .is_some_and(|x| x.failure_code() == Some("type_conflict"))
                });
                if f.fate != Fate::Never || !refused {
                    continue;
                }
                if let Some((slot, _)) = copies(key)
                    .into_iter()
                    .find(|(_, o)| holds_update(o, f.op, op_id))
                {
                    out.push(violation(
                        self.name(),
                        input,
                        format!(
                            "the {} update {op_id} of {key} was refused for its type, yet n{slot} holds it",
                            f.op.type_name()
                        ),
                    ));
                }
            }
        }
        // Refused register writes.
        for d in input.history.data() {
            let Some(op) = input.history.get(d.op) else {
                continue;
            };
            let (OpKind::Write { value, .. }, Some(o)) = (&op.kind, &op.outcome) else {
                continue;
            };
            if o.failure_code() != Some("type_conflict") {
                continue;
            }
            if let Some((slot, _)) = copies(&d.key)
                .into_iter()
                .find(|(_, obj)| holds_value(obj, value))
            {
                out.push(violation(
                    self.name(),
                    input,
                    format!(
                        "{} was refused for its type, yet n{slot} holds {value:?}",
                        op.kind
                    ),
                ));
            }
        }
        if input.healed_at.is_none() {
            return;
        }
        for &key in &keys {
            let Some((_, read)) = final_read(input.history, key) else {
                continue;
            };
            let ids = updates_of(input.history, key, None, &lost, lost_keys);
            let mut acked: BTreeMap<&str, &str> = BTreeMap::new();
            let mut maybe: BTreeSet<&str> = BTreeSet::new();
            for (op_id, f) in &ids {
                if f.fate == Fate::Acked && current(input.history, lost_keys, f.attempts[0].0) {
                    acked.entry(f.op.type_name()).or_insert(op_id);
                }
                if f.fate != Fate::Never {
                    maybe.insert(f.op.type_name());
                }
            }
            if input.history.data().iter().any(|d| {
                d.key == key
                    && input.history.get(d.op).is_some_and(|o| {
                        matches!(o.kind, OpKind::Write { .. })
                            && !matches!(o.outcome, Some(Outcome::Failed(_)))
                    })
            }) {
                maybe.insert("register");
            }
            let shown = read.live_types();
            for (t, op_id) in &acked {
                if !read.has(t) {
                    out.push(violation(
                        self.name(),
                        input,
                        format!(
                            "{key}: a {t} update ({op_id}) was acknowledged, but the final read shows no {t} part (it shows {shown:?})"
                        ),
                    ));
                }
            }
            let mut live: BTreeSet<&str> = acked.keys().copied().collect();
            if !read.values.is_empty() {
                live.insert("register");
            }
            if live.len() >= 2 && read.type_name.as_deref() != Some("contested") {
                out.push(violation(
                    self.name(),
                    input,
                    format!(
                        "{key} has live parts of types {live:?}, but the final read calls it {:?} (parts {shown:?})",
                        read.type_name
                    ),
                ));
            }
            for t in &shown {
                if !maybe.contains(t) {
                    out.push(violation(
                        self.name(),
                        input,
                        format!(
                            "{key} reads with a {t} part, but no {t} write may have been applied"
                        ),
                    ));
                }
            }
        }
    }
}

/// Whether an update's note says it forgot operation ids early, and how many it forgot that not
/// every replica held yet (the note of [`chorus::node::Object::apply_update`]; unreadable: all).
fn forgot(note: &str) -> Option<u64> {
    if !note.contains("forgot") {
        return None;
    }
    let unstable = note
        .split(" not yet on every replica")
        .next()
        .and_then(|head| head.rsplit(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(u64::MAX);
    Some(unstable)
}

/// See the module documentation.
///
/// The bounds are widened only where the operation-id log's contract (DESIGN.md §3 and
/// `chorus::crdt` "Forgetting") lets an id count again, and every such place is below:
///
/// - An id's record is kept at least the log's window (`ClusterSnapshot::op_log`) after its
///   application; an attempt that may have been applied later than the window after the id's
///   first attempt started may count again (a client that retries later than it agreed to).
/// - Beyond its memory bound a key forgets records early, and the update that did so says so in
///   its reply ("forgot"). Such an update may have forgotten the record of any id first sent
///   before it ended; a retry of that id that may have been applied after the update started
///   may then count again; and if the reply said it forgot records not yet on every replica, a
///   retry of that id at any time may (a duplicate applied concurrently elsewhere counts
///   twice). Each such retry widens the bound by its amount, once per attempt. (A forgetting
///   whose reply was lost goes unreported here; in a hot key the next update forgets and
///   reports too.)
///
/// Without a "forgot" reply and with retries within the window, the bound is exact: each id
/// counts once.
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
        let window = Duration::from_millis(input.snapshot.op_log.window_ms);
        for t in ["gcounter", "pncounter"] {
            for key in keys_of(input.history, lost_keys, t) {
                let ids = updates_of(input.history, &key, Some(t), &lost, lost_keys);
                // The updates whose replies reported forgetting ids early: (start, end, whether
                // some were not yet on every replica).
                let mut reports: Vec<(Duration, Duration, bool)> = Vec::new();
                for f in ids.values() {
                    for (r, o) in &f.attempts {
                        let Some(CrdtResult::Updated { notes, .. }) = &r.result else {
                            continue;
                        };
                        for n in notes.iter().filter_map(|n| forgot(n)) {
                            reports.push((o.start, o.end.unwrap_or(Duration::MAX), n > 0));
                        }
                    }
                }
                let (mut acked, mut up, mut down) = (0i128, 0i128, 0i128);
                let (mut again_up, mut again_down, mut again) = (0i128, 0i128, 0usize);
                for f in ids.values() {
                    let amount = match f.op {
                        CrdtOp::GCounter { increment } => i128::from(*increment),
                        CrdtOp::PNCounter { increment } => i128::from(*increment),
                        _ => continue,
                    };
                    match f.fate {
                        Fate::Acked => acked += amount,
                        Fate::Maybe if amount > 0 => up += amount,
                        Fate::Maybe => down += amount,
                        Fate::Never => continue,
                    }
                    let Some(first) = f.attempts.iter().map(|(_, o)| o.start).min() else {
                        continue;
                    };
                    for (_, o) in f.attempts.iter().skip(1) {
                        if matches!(o.outcome, Some(Outcome::Failed(_))) {
                            continue;
                        }
                        let applied_by = o.end.unwrap_or(Duration::MAX);
                        let late = applied_by.saturating_sub(first) > window;
                        // A report's update forgot records applied before it ended; a retry
                        // applied after it started may find its id's record gone, and a
                        // duplicate of an unstable record counts twice whenever it was made.
                        let forgotten = reports.iter().any(|&(start, end, unstable)| {
                            first <= end && (unstable || applied_by >= start)
                        });
                        if late || forgotten {
                            again += 1;
                            if amount > 0 {
                                again_up += amount;
                            } else {
                                again_down += amount;
                            }
                        }
                    }
                }
                let Some((_, read)) = final_read(input.history, &key) else {
                    out.push(violation(
                        self.name(),
                        input,
                        format!("counter {key} has no final read"),
                    ));
                    continue;
                };
                let v = match read.part(t) {
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
                let (lo, hi) = (acked + down + again_down, acked + up + again_up);
                if v < lo || v > hi {
                    let widened = if again > 0 {
                        format!(
                            "; widened by {again} retries that may count again (+{again_up} / {again_down})"
                        )
                    } else {
                        String::new()
                    };
                    out.push(violation(
                        self.name(),
                        input,
                        format!(
                            "{t} {key} reads {v}, outside {lo}..={hi} (acknowledged {acked}, maybe +{up} / {down}{widened})"
                        ),
                    ));
                }
            }
        }
    }
}

/// The elements of a set part (empty when absent).
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
    type_name: &str,
    lost: &BTreeSet<NodeId>,
    lost_keys: &LostKeys,
) -> ElementFates {
    let mut f: ElementFates = BTreeMap::new();
    for id in updates_of(history, key, Some(type_name), lost, lost_keys).values() {
        let (add, remove) = match id.op {
            CrdtOp::TwoPSet { add, remove } | CrdtOp::ORSet { add, remove, .. } => (add, remove),
            _ => continue,
        };
        // What the acknowledged application did to `e`: `Some(true)` took effect, `None`
        // unknown (only replays were acknowledged).
        let effect = |e: &str| {
            id.notes.as_ref().map(|notes| {
                !notes
                    .iter()
                    .any(|n| n.starts_with(&format!("{e:?} was not")))
            })
        };
        for e in add {
            let x = f.entry(e.clone()).or_default();
            // (An add without effect had a remove before it, which the bounds allow for.)
            x.0 |= id.fate == Fate::Acked && effect(e) != Some(false);
            x.1 |= id.fate != Fate::Never;
        }
        for e in remove {
            let x = f.entry(e.clone()).or_default();
            // Only a remove known to have taken effect is certain.
            x.2 |= id.fate == Fate::Acked && effect(e) == Some(true);
            x.3 |= id.fate != Fate::Never;
        }
    }
    f
}

/// The set part of type `type_name` of `key`'s final read, or the violation's text.
fn final_set<'a>(
    history: &'a History,
    key: &str,
    type_name: &str,
) -> Result<BTreeSet<&'a str>, String> {
    let Some((_, read)) = final_read(history, key) else {
        return Err("has no final read".into());
    };
    elements(read.part(type_name))
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
            let held = match final_set(input.history, &key, "2pset") {
                Ok(h) => h,
                Err(e) => {
                    out.push(violation(self.name(), input, format!("2P-Set {key} {e}")));
                    continue;
                }
            };
            let fates = element_fates(
                input.history,
                &key,
                "2pset",
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
            let held = match final_set(input.history, &key, "orset") {
                Ok(h) => h,
                Err(e) => {
                    out.push(violation(self.name(), input, format!("OR-Set {key} {e}")));
                    continue;
                }
            };
            let fates = element_fates(
                input.history,
                &key,
                "orset",
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

/// The quorum a write waits for when the request does not say (the nodes' default W).
const W_DEFAULT: usize = 2;

/// A client that gave up on an update is reported only if it made an attempt this long after
/// the heal or later.
const GIVE_UP_GRACE: Duration = Duration::from_secs(10);

/// See the module documentation.
///
/// An update is *still being retried* after the heal when none of its attempts was
/// acknowledged, its last attempt was not refused for good (type, size, content), and that
/// attempt is in flight or a retry of it is coming (attempts left). Once as many of its key's
/// replicas as it asks acknowledgements from (`w`, the default W otherwise) are running, such
/// an update must be acknowledged before the cluster settles (the settle loop runs every check
/// until all pass, so this bounds it by the settle limit). A client that ran out of attempts
/// with the replicas up is reported too, if one of its attempts started [`GIVE_UP_GRACE`] or
/// more after the heal.
#[derive(Debug, Clone, Copy, Default)]
pub struct RetriesAcknowledged;

impl Checker for RetriesAcknowledged {
    fn name(&self) -> &'static str {
        "retries-acknowledged"
    }

    fn check(&self, input: &CheckInput<'_>, out: &mut Vec<Violation>) {
        let Some(healed_at) = input.healed_at else {
            return;
        };
        let Some((ring, view)) = observed_ring(input) else {
            return;
        };
        let running: BTreeSet<NodeId> = input
            .snapshot
            .nodes
            .iter()
            .filter(|n| n.process.is_running())
            .map(|n| n.id)
            .collect();
        let mut ids: BTreeMap<(&str, &str), Vec<(&CrdtRecord, &Operation)>> = BTreeMap::new();
        for r in input.history.crdt() {
            let (Some((_, op_id)), Some(o)) = (&r.update, input.history.get(r.op)) else {
                continue;
            };
            ids.entry((r.key.as_str(), op_id.as_str()))
                .or_default()
                .push((r, o));
        }
        for ((key, op_id), attempts) in ids {
            if attempts
                .iter()
                .any(|(_, o)| matches!(o.outcome, Some(Outcome::Ok)))
            {
                continue;
            }
            let Some(&(last, o)) = attempts.last() else {
                continue;
            };
            let state = match &o.outcome {
                None => "in flight".to_owned(),
                Some(x) if x.is_refusal() => continue,
                Some(x) if last.attempt < last.attempts_max => {
                    format!("a retry is coming after {}", x.label())
                }
                // The client gave up: fine unless it still had attempts to make well after the
                // heal (the network and the failure detectors need a moment to recover).
                Some(_)
                    if attempts
                        .iter()
                        .all(|(_, o)| o.start < healed_at + GIVE_UP_GRACE) =>
                {
                    continue
                }
                Some(x) => format!("the client gave up after the last one ended {}", x.label()),
            };
            let w = last.options.w.unwrap_or(W_DEFAULT);
            let replicas = ring.preference_list(ring.partition_of(key.as_bytes()), view.n);
            let up = replicas.iter().filter(|id| running.contains(id)).count();
            if up < w {
                continue;
            }
            out.push(violation(
                self.name(),
                input,
                format!(
                    "update {op_id} of {key} (w={w}{}) is not acknowledged {:.0} s after the heal with {up} of its replicas up: {} attempts of {}, {state}",
                    if last.options.strict { ", strict" } else { "" },
                    input.snapshot.at.saturating_sub(healed_at).as_secs_f64(),
                    last.attempt,
                    last.attempts_max,
                ),
            ));
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
        let mut keys: BTreeSet<&[u8]> = BTreeSet::new();
        for n in &input.snapshot.nodes {
            for (k, o) in &n.objects {
                if !matches!(o, Object::Register(_)) {
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
                        let types = |o: Option<&Object>| o.map_or("nothing", Object::type_name);
                        out.push(Violation {
                            checker: self.name(),
                            at: input.snapshot.at,
                            observer: Some(slot),
                            subject: Some(first),
                            message: format!(
                                "replicas of {} differ: n{first} ({}) and n{slot} ({}) hold different states",
                                String::from_utf8_lossy(key),
                                types(a),
                                types(b)
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
            op_log: OpLogPolicy::default(),
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
            self.0.record_crdt(CrdtRecord::new(
                id,
                key,
                Some((op, op_id.into())),
                false,
                None,
            ));
            if outcome == Outcome::Ok {
                let notes = notes.iter().map(|s| s.to_string()).collect();
                self.0.crdt_result(
                    id,
                    CrdtResult::Updated {
                        notes,
                        acked_by: vec![NodeId::new(100)],
                        replayed: false,
                    },
                );
            }
            self.0.complete(id, start + Duration::from_secs(1), outcome);
            id
        }

        fn incr(&mut self, key: &str, n: u64, op_id: &str, outcome: Outcome) {
            self.update(key, CrdtOp::GCounter { increment: n }, op_id, outcome, &[]);
        }

        fn final_read(&mut self, key: &str, read: CrdtRead) {
            let id = self.0.invoke(
                "crdt",
                OpKind::Read {
                    key: key.into(),
                    node: 1,
                },
                Duration::from_secs(300),
            );
            self.0.record_crdt(CrdtRecord::new(
                id,
                key,
                None,
                true,
                Some(CrdtResult::Read(read)),
            ));
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
            h.final_read("g", count(value));
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
        h.final_read("g", count(1));
        let v = check(&CounterBounds, &h.0, &snapshot());
        assert_eq!(v.len(), 1, "n0 is still in the cluster: {v:?}");
        let mut snap = snapshot();
        snap.nodes[0].removed = true;
        let v = check(&CounterBounds, &h.0, &snap);
        assert!(v.is_empty(), "n0 was removed for good: {v:?}");
        h.final_read("g", count(3));
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
        h.final_read("g", set("2pset", &["x"]));
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
            v.iter()
                .any(|v| v.message.contains("shows no gcounter part")),
            "nothing was lost: {v:?}"
        );
        // Both increments were acknowledged before a removal lost the key: it may be created
        // anew, as a set, and the set's own add must be there.
        assert!(judge(Some(13_500)).is_empty(), "{:?}", judge(Some(13_500)));
        // Lost after the first increment only: the second must still be there.
        let v = judge(Some(11_500));
        assert!(
            v.iter()
                .any(|v| v.message.contains("shows no gcounter part")),
            "{v:?}"
        );
        // The set's add is still judged after a loss.
        let mut h2 = H::default();
        h2.update("s", two_p(&["x"], &[]), "a", Outcome::Ok, &[]);
        h2.final_read("s", set("2pset", &[]));
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

    fn set(type_name: &str, elements: &[&str]) -> CrdtRead {
        CrdtRead::single(
            type_name,
            Some(CrdtValue::Set(
                elements.iter().map(|s| s.to_string()).collect(),
            )),
        )
    }

    fn count(v: i128) -> CrdtRead {
        CrdtRead::single("gcounter", Some(CrdtValue::Counter(v)))
    }

    #[test]
    fn a_2pset_element_back_after_its_removal_is_caught() {
        let run = |final_value: &[&str], remove_note: &[&str]| {
            let mut h = H::default();
            h.update("s", two_p(&["a", "b", "c"], &[]), "1", Outcome::Ok, &[]);
            h.update("s", two_p(&[], &["a"]), "2", Outcome::Ok, remove_note);
            h.update("s", two_p(&[], &["c"]), "3", maybe(), &[]);
            h.final_read("s", set("2pset", final_value));
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
    fn a_remove_acknowledged_only_as_a_replay_may_have_had_no_effect() {
        let run = |replayed: bool| {
            let mut h = H::default();
            h.update("s", two_p(&["a"], &[]), "1", Outcome::Ok, &[]);
            let id = h.update("s", two_p(&[], &["a"]), "2", Outcome::Ok, &[]);
            h.0.crdt_result(
                id,
                CrdtResult::Updated {
                    notes: Vec::new(),
                    acked_by: vec![NodeId::new(100)],
                    replayed,
                },
            );
            h.final_read("s", set("2pset", &["a"]));
            check(&TwoPSetRemovals, &h.0, &snapshot())
        };
        assert_eq!(run(false).len(), 1, "an effective removal");
        // The first application (whose reply was lost) may have found "a" not yet added.
        assert!(run(true).is_empty(), "{:?}", run(true));
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
            h.final_read("o", set("orset", final_value));
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

    fn contested(parts: &[(&str, CrdtValue)]) -> CrdtRead {
        CrdtRead {
            type_name: Some("contested".into()),
            value: None,
            values: Vec::new(),
            parts: parts
                .iter()
                .map(|(t, v)| crate::history::PartRead {
                    type_name: (*t).to_owned(),
                    value: Some(v.clone()),
                    values: Vec::new(),
                })
                .collect(),
        }
    }

    #[test]
    fn acknowledged_updates_of_two_types_must_read_as_contested_with_both_parts() {
        let run = |second: Outcome, read: CrdtRead| {
            let mut h = H::default();
            h.incr("g", 1, "a", Outcome::Ok);
            h.update("g", two_p(&["z-b"], &[]), "b", second, &[]);
            h.final_read("g", read);
            let mut v = check(&TypeKept, &h.0, &snapshot());
            v.extend(check(&CounterBounds, &h.0, &snapshot()));
            v.extend(check(&TwoPSetRemovals, &h.0, &snapshot()));
            v
        };
        let refused = || Outcome::Failed("type_conflict: the key holds a gcounter".into());
        assert!(run(refused(), count(1)).is_empty());
        let both = contested(&[
            ("gcounter", CrdtValue::Counter(1)),
            ("2pset", CrdtValue::Set(vec!["z-b".into()])),
        ]);
        assert!(
            run(Outcome::Ok, both.clone()).is_empty(),
            "{:?}",
            run(Outcome::Ok, both)
        );
        // Both acknowledged, one type shown: the other's write is lost.
        let v = run(Outcome::Ok, count(1));
        assert!(
            v.iter().any(|v| v.message.contains("shows no 2pset part")),
            "{v:?}"
        );
        assert!(v.iter().any(|v| v.message.contains("calls it")), "{v:?}");
        assert!(
            v.iter().any(|v| v.message.contains("lost \"z-b\"")),
            "{v:?}"
        );
        // A part of a type whose every write was refused.
        let v = run(refused(), both);
        assert!(
            v.iter()
                .any(|v| v.message.contains("no 2pset write may have been applied")),
            "{v:?}"
        );
        // Each checker judges its own part of a contested key.
        let v = run(
            Outcome::Ok,
            contested(&[
                ("gcounter", CrdtValue::Counter(2)),
                ("2pset", CrdtValue::Set(vec!["z-b".into()])),
            ]),
        );
        assert_eq!(v.len(), 1, "{v:?}");
        assert!(v[0].message.contains("gcounter g reads 2"), "{v:?}");
    }

    #[test]
    fn an_update_refused_for_its_type_that_a_replica_holds_is_caught() {
        use chorus::crdt::Site;
        let mut h = H::default();
        h.incr("g", 1, "a", Outcome::Ok);
        let op = two_p(&["z-b"], &[]);
        h.update(
            "g",
            op.clone(),
            "b",
            Outcome::Failed("type_conflict: the key holds a gcounter".into()),
            &[],
        );
        h.final_read("g", count(1));
        let site = Site {
            node: NodeId::new(1),
            replicas: &[],
            claim: chorus::crdt::RowClaim::State,
        };
        let (set, _) = Object::apply_update(
            None,
            NodeId::new(1),
            &op,
            "b",
            0,
            OpLogPolicy::default(),
            site,
        )
        .unwrap();
        let mut snap = snapshot();
        assert!(check(&TypeKept, &h.0, &snap).is_empty());
        snap.nodes[1].objects = vec![(b"g".to_vec(), set)];
        let v = check(&TypeKept, &h.0, &snap);
        assert_eq!(v.len(), 1, "{v:?}");
        assert!(
            v[0].message
                .contains("update b of g was refused for its type, yet n1 holds it"),
            "{v:?}"
        );
    }

    #[test]
    fn a_retry_counts_again_only_after_a_forgetting_report_or_past_the_window() {
        let forgot = "this key takes updates faster than it may forget their operation ids: to stay within its memory bound it forgot 3 ids within 4 s of their update and 0 not yet on every replica, so a retry of one of those may count again";
        // a (10..11 s), b's first attempt (12..13 s), c (14..15 s, perhaps reporting that it
        // forgot ids), b's retry (16..17 s).
        let run = |note: Option<&str>, window_ms: u64, value: i128| {
            let mut h = H::default();
            let notes: Vec<&str> = note.into_iter().collect();
            h.incr("g", 1, "a", Outcome::Ok);
            h.incr("g", 1, "b", maybe());
            h.update(
                "g",
                CrdtOp::GCounter { increment: 1 },
                "c",
                Outcome::Ok,
                &notes,
            );
            h.incr("g", 1, "b", Outcome::Ok);
            h.final_read("g", count(value));
            let mut snap = snapshot();
            snap.op_log.window_ms = window_ms;
            check(&CounterBounds, &h.0, &snap)
        };
        assert!(run(None, 600_000, 3).is_empty());
        let twice = run(None, 600_000, 4);
        assert_eq!(twice.len(), 1, "b counted twice: {twice:?}");
        assert!(run(Some(forgot), 600_000, 4).is_empty(), "reported");
        assert_eq!(run(Some(forgot), 600_000, 5).len(), 1, "once more at most");
        // The retry ended 5 s after the first attempt started: past a 1 s window it may
        // count again, within a 10 s one it may not.
        assert!(run(None, 1_000, 4).is_empty());
        assert_eq!(run(None, 10_000, 4).len(), 1);
        // A report before b was first sent cannot have forgotten b.
        let mut h = H::default();
        h.update(
            "g",
            CrdtOp::GCounter { increment: 1 },
            "a",
            Outcome::Ok,
            &[forgot],
        );
        h.incr("g", 1, "b", maybe());
        h.incr("g", 1, "b", Outcome::Ok);
        h.final_read("g", count(3));
        assert_eq!(check(&CounterBounds, &h.0, &snapshot()).len(), 1);
    }

    fn attempt(h: &mut H, op_id: &str, n: u32, w: Option<usize>, outcome: Option<Outcome>) {
        // Attempts 1.. before the heal (at 400 s), attempt 40 after it.
        let start = Duration::from_secs(if n < 40 { 390 + u64::from(n) } else { 410 });
        let id = h.0.invoke(
            "crdt",
            OpKind::Update {
                key: "g".into(),
                what: op_id.into(),
                node: 0,
            },
            start,
        );
        let mut r = CrdtRecord::new(
            id,
            "g",
            Some((CrdtOp::GCounter { increment: 1 }, op_id.into())),
            false,
            None,
        );
        r.attempt = n;
        r.attempts_max = 40;
        r.options.w = w;
        h.0.record_crdt(r);
        if let Some(o) = outcome {
            h.0.complete(id, start + Duration::from_secs(1), o);
        }
    }

    #[test]
    fn an_update_still_retried_after_the_heal_must_be_acknowledged_once_its_replicas_are_up() {
        let judge = |h: &H, down: usize| {
            let mut snap = snapshot();
            for n in snap.nodes.iter_mut().take(down) {
                n.process = ProcessState::Crashed;
            }
            check(&RetriesAcknowledged, &h.0, &snap)
        };
        let mut h = H::default();
        attempt(&mut h, "a", 1, Some(3), Some(maybe()));
        let v = judge(&h, 0);
        assert_eq!(v.len(), 1, "{v:?}");
        assert!(
            v[0].message.contains("update a of g (w=3)")
                && v[0].message.contains("a retry is coming"),
            "{v:?}"
        );
        assert!(judge(&h, 1).is_empty(), "w=3 with one replica down");
        attempt(&mut h, "a", 2, Some(3), None);
        assert!(judge(&h, 0)[0].message.contains("in flight"));
        attempt(&mut h, "a", 3, Some(3), Some(Outcome::Ok));
        assert!(judge(&h, 0).is_empty());
        // A refusal ends the retries.
        let mut h = H::default();
        attempt(&mut h, "b", 1, None, Some(maybe()));
        attempt(
            &mut h,
            "b",
            2,
            None,
            Some(Outcome::Failed("type_conflict: x".into())),
        );
        assert!(judge(&h, 0).is_empty());
        // Giving up after the heal is not acknowledging.
        let mut h = H::default();
        attempt(&mut h, "c", 40, None, Some(maybe()));
        assert!(judge(&h, 0)[0].message.contains("gave up"));
        assert_eq!(judge(&h, 1).len(), 1, "w=2 with two replicas up");
    }

    #[test]
    fn replicas_that_differ_are_caught() {
        let policy = OpLogPolicy::default();
        let counter = |n: i64| {
            let mut c = Counter::new();
            let site = chorus::crdt::Site {
                node: NodeId::new(1),
                replicas: &[],
                claim: chorus::crdt::RowClaim::State,
            };
            c.apply(NodeId::new(1), "op", n, 0, policy, site).unwrap();
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
        // Contested keys are judged too.
        let mut snap = snapshot();
        snap.nodes[0].objects = vec![(b"s".to_vec(), Object::TwoPSet(Logged::default()))];
        assert_eq!(check(&CrdtConvergence, &h, &snap).len(), 1);
    }
}
