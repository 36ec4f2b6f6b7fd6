//! What a replica stores for one key, and the causal context clients carry.
//!
//! An [`Object`] is a key's replicated state: a multi-value register (dotted version vector
//! set) or one of the CRDT types, whose updates ([`CrdtOp`]) are applied here too. Its stored and wire form is the
//! MessagePack envelope of [`crate::protocol`], so identical states encode to identical bytes.
//!
//! A [`Context`] is the opaque token a client gets back from a read or a write and returns
//! with its next write: the version vector of what it saw, bound to its key. Decoding it checks
//! the binding (a context of key A sent with key B is refused) and refuses counters near the
//! encoding limit, so no client can make a key's state undecodable. This module does no I/O.

use std::collections::BTreeMap;

use base64::Engine as _;
use serde::{Deserialize, Serialize};

use crate::causality::{Register, VersionVector, COUNTER_MAX};
use crate::crdt::{
    Applied, Counter, Crdt, Forgotten, ORSet, OpLog, OpLogPolicy, RowClaim, Site, TwoPSet,
    NOTHING_HELD,
};
use crate::id::NodeId;
use crate::protocol::{self, WireError};
use crate::ring::key_hash;

/// Largest state a client write may leave a key with (a value of 1 MiB with a few concurrent
/// siblings fits); a write that would grow a state past it is refused.
pub const OBJECT_WRITE_BYTES_MAX: usize = 6 * 1024 * 1024;

/// Largest encoded object a replica stores or decodes. States that were each accepted under
/// [`OBJECT_WRITE_BYTES_MAX`] must merge wherever they meet (siblings written on several sides
/// of a partition add up), so this is eight times that; a message carrying one such object
/// fits the wire's frame limit ([`crate::protocol::DEFAULT_FRAME_BYTES_MAX`]). A merge beyond
/// it is refused, counted and left with its sender, never acknowledged.
pub const OBJECT_BYTES_MAX: usize = 8 * OBJECT_WRITE_BYTES_MAX;

/// Messages that carry many objects (handoff pages, hint hand-backs) stop adding objects once
/// they hold this many bytes (always carrying at least one), so they stay within the wire's
/// frame limit.
pub const BATCH_BYTES_MAX: usize = 4 * 1024 * 1024;

/// Largest context token accepted from a client, in characters.
pub const CONTEXT_CHARS_MAX: usize = 16 * 1024;

/// Most version-vector entries a client context may carry.
pub const CONTEXT_ENTRIES_MAX: usize = 1024;

/// Largest counter a client context may carry: far beyond any real history, and far enough
/// below [`COUNTER_MAX`] that writes after it can never push a counter past the limit.
pub const CONTEXT_COUNTER_MAX: u64 = COUNTER_MAX / 2;

/// A key's replicated state.
///
/// A key has one type, fixed by its first write, and nearly always holds one of the single
/// variants. Types are part of the lattice all the same: two states of different types (two
/// coordinators that created the key with different types at once, or a replica that took a
/// write of another type before it had the key's copy) merge into [`Object::Contested`], which
/// keeps each type's part and merges each with its own kind. So replicas of a key always
/// converge, whatever order writes of several types reach them in, and no acknowledged write of
/// any type is lost: a read of a contested key reports it and shows every part
/// ([`Object::parts`]). A contested key stays contested while two or more of its parts are
/// *live* (a register part with a value, or any CRDT part); deleting the register part (a
/// delete with its context) ends the contest when one CRDT part is left.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Object {
    /// A multi-value register.
    Register(Register),
    /// A grow-only counter.
    GCounter(Counter),
    /// A counter that can go down.
    PNCounter(Counter),
    /// A set whose removals are permanent.
    TwoPSet(Logged<TwoPSet<String>>),
    /// An add-wins observed-remove set.
    ORSet(Logged<ORSet<String>>),
    /// Parts of several types (at least two present): see the type's documentation.
    Contested(Box<Parts>),
}

/// The parts of a key that holds several types ([`Object::Contested`]); each merges on its
/// own. Decoding refuses fewer than two parts (that state is a single variant).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "PartsWire")]
pub struct Parts {
    /// The register part.
    pub register: Option<Register>,
    /// The G-Counter part.
    pub gcounter: Option<Counter>,
    /// The PN-Counter part.
    pub pncounter: Option<Counter>,
    /// The 2P-Set part.
    pub twopset: Option<Logged<TwoPSet<String>>>,
    /// The OR-Set part.
    pub orset: Option<Logged<ORSet<String>>>,
}

#[derive(Deserialize)]
struct PartsWire {
    register: Option<Register>,
    gcounter: Option<Counter>,
    pncounter: Option<Counter>,
    twopset: Option<Logged<TwoPSet<String>>>,
    orset: Option<Logged<ORSet<String>>>,
}

impl TryFrom<PartsWire> for Parts {
    type Error = String;

    fn try_from(w: PartsWire) -> Result<Self, Self::Error> {
        let p = Parts {
            register: w.register,
            gcounter: w.gcounter,
            pncounter: w.pncounter,
            twopset: w.twopset,
            orset: w.orset,
        };
        if p.count() < 2 {
            return Err("a contested state holds fewer than two parts".into());
        }
        Ok(p)
    }
}

impl Parts {
    fn count(&self) -> usize {
        usize::from(self.register.is_some())
            + usize::from(self.gcounter.is_some())
            + usize::from(self.pncounter.is_some())
            + usize::from(self.twopset.is_some())
            + usize::from(self.orset.is_some())
    }

    /// Adds a single-type state to its part (merging with what the part holds).
    fn absorb(&mut self, object: Object) {
        fn join<T: Crdt>(slot: &mut Option<T>, v: T) {
            match slot {
                Some(mine) => mine.merge(&v),
                None => *slot = Some(v),
            }
        }
        match object {
            Object::Register(r) => match &mut self.register {
                Some(mine) => mine.sync(&r),
                None => self.register = Some(r),
            },
            Object::GCounter(c) => join(&mut self.gcounter, c),
            Object::PNCounter(c) => join(&mut self.pncounter, c),
            Object::TwoPSet(s) => join(&mut self.twopset, s),
            Object::ORSet(s) => join(&mut self.orset, s),
            Object::Contested(p) => {
                for part in p.into_objects() {
                    self.absorb(part);
                }
            }
        }
    }

    /// Each part as a single-type state, in type order.
    fn into_objects(self) -> Vec<Object> {
        let mut v = Vec::new();
        v.extend(self.register.map(Object::Register));
        v.extend(self.gcounter.map(Object::GCounter));
        v.extend(self.pncounter.map(Object::PNCounter));
        v.extend(self.twopset.map(Object::TwoPSet));
        v.extend(self.orset.map(Object::ORSet));
        v
    }

    /// Each part as a single-type state, borrowed, in type order.
    fn objects(&self) -> Vec<Object> {
        self.clone().into_objects()
    }

    /// Takes the part of type `name` out, if present.
    fn take(&mut self, name: &str) -> Option<Object> {
        match name {
            REGISTER => self.register.take().map(Object::Register),
            GCOUNTER => self.gcounter.take().map(Object::GCounter),
            PNCOUNTER => self.pncounter.take().map(Object::PNCounter),
            TWOPSET => self.twopset.take().map(Object::TwoPSet),
            ORSET => self.orset.take().map(Object::ORSet),
            _ => None,
        }
    }

    /// The canonical object of these parts: a single variant when only one part is present.
    fn into_object(mut self) -> Object {
        if self.count() >= 2 {
            return Object::Contested(Box::new(self));
        }
        for name in TYPES {
            if let Some(o) = self.take(name) {
                return o;
            }
        }
        // No part at all cannot be built by any write; an empty register stands for it.
        Object::Register(Register::new())
    }
}

/// Type names as the API shows them.
pub const REGISTER: &str = "register";
/// See [`REGISTER`].
pub const GCOUNTER: &str = "gcounter";
/// See [`REGISTER`].
pub const PNCOUNTER: &str = "pncounter";
/// See [`REGISTER`].
pub const TWOPSET: &str = "2pset";
/// See [`REGISTER`].
pub const ORSET: &str = "orset";
/// The name a read reports for a key that holds several live types.
pub const CONTESTED: &str = "contested";
/// Every type, in the order parts are listed.
pub const TYPES: [&str; 5] = [REGISTER, GCOUNTER, PNCOUNTER, TWOPSET, ORSET];

/// One live part of a key, as a read reports it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartView {
    /// The part's type.
    pub type_name: String,
    /// A register part's live values (empty for CRDT parts).
    #[serde(with = "crate::protocol::bytes_list")]
    pub values: Vec<Vec<u8>>,
    /// A CRDT part's value.
    pub crdt: Option<CrdtValue>,
    /// The part's context (register and OR-Set parts): a delete with a register part's context
    /// removes exactly the values it covers.
    pub context: Option<Context>,
}

/// A set and the operation ids of its recent updates (so a replayed update changes nothing).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Logged<S> {
    /// The set.
    pub set: S,
    /// Recent operation ids.
    pub log: OpLog,
}

impl<S: Crdt> Crdt for Logged<S> {
    fn merge(&mut self, other: &Self) {
        self.set.merge(&other.set);
        self.log.merge(&other.log);
    }

    fn leq(&self, other: &Self) -> bool {
        self.set.leq(&other.set) && self.log.leq(&other.log)
    }
}

/// One update of a CRDT key, as a client asks for it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum CrdtOp {
    /// Add `increment` (at least 1) to a G-Counter.
    GCounter {
        /// The amount.
        increment: u64,
    },
    /// Add `increment` (may be negative) to a PN-Counter.
    PNCounter {
        /// The amount.
        increment: i64,
    },
    /// Add and remove elements of a 2P-Set (removes after adds).
    TwoPSet {
        /// Elements to add.
        add: Vec<String>,
        /// Elements to remove for good.
        remove: Vec<String>,
    },
    /// Add and remove elements of an OR-Set (removes after adds).
    ORSet {
        /// Elements to add.
        add: Vec<String>,
        /// Elements to remove.
        remove: Vec<String>,
        /// What the client saw: a remove takes back exactly the adds it saw. Without it, a
        /// remove takes back what the coordinating replica has seen.
        context: Option<Context>,
    },
}

impl CrdtOp {
    /// The type's name as the API shows it.
    pub fn type_name(&self) -> &'static str {
        match self {
            CrdtOp::GCounter { .. } => GCOUNTER,
            CrdtOp::PNCounter { .. } => PNCOUNTER,
            CrdtOp::TwoPSet { .. } => TWOPSET,
            CrdtOp::ORSet { .. } => ORSET,
        }
    }

    /// The elements the operation names.
    pub fn elements(&self) -> impl Iterator<Item = &String> + '_ {
        let (add, remove): (&[String], &[String]) = match self {
            CrdtOp::TwoPSet { add, remove } | CrdtOp::ORSet { add, remove, .. } => (add, remove),
            _ => (&[], &[]),
        };
        add.iter().chain(remove)
    }

    /// An empty state of the operation's type.
    pub fn empty(&self) -> Object {
        match self {
            CrdtOp::GCounter { .. } => Object::GCounter(Counter::new()),
            CrdtOp::PNCounter { .. } => Object::PNCounter(Counter::new()),
            CrdtOp::TwoPSet { .. } => Object::TwoPSet(Logged::default()),
            CrdtOp::ORSet { .. } => Object::ORSet(Logged::default()),
        }
    }
}

/// What an applied CRDT update did.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpdateEffect {
    /// The operation id had been applied before: nothing changed.
    pub replayed: bool,
    /// What parts of the update had no effect, or a weaker one than asked, and why.
    pub notes: Vec<String>,
    /// Operation ids the key forgot before it was safe to, to stay within its memory bound.
    #[serde(skip)]
    pub forgotten: Forgotten,
}

/// The range every counter's value stays in: a G-Counter's from 0, a PN-Counter's from
/// `i64::MIN`, both up to `i64::MAX`. An update that would take the value out of it is refused
/// whichever node coordinates it.
pub const COUNTER_RANGE: (i128, i128) = (i64::MIN as i128, i64::MAX as i128);

/// Why an update could not be applied. Nothing changed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UpdateError {
    /// The key holds another type.
    #[error(transparent)]
    TypeConflict(#[from] TypeConflict),
    /// The update is not valid for the state (a counter overflow).
    #[error("{0}")]
    Invalid(String),
}

/// A CRDT key's value as clients see it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum CrdtValue {
    /// A counter's value.
    Counter(i128),
    /// A set's elements, sorted.
    Set(Vec<String>),
}

/// Why a write of one type cannot apply to a key: it holds another (nothing changed).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", conflict_message(held, offered))]
pub struct TypeConflict {
    /// The type the replica holds.
    pub held: &'static str,
    /// The type offered.
    pub offered: &'static str,
}

fn conflict_message(held: &str, offered: &str) -> String {
    if held == CONTESTED {
        format!("the key is contested (it holds several types) and none of them is a {offered}")
    } else {
        format!("the key holds a {held}, not a {offered}")
    }
}

impl Object {
    /// The type's name as the API shows it: the one live type, [`CONTESTED`] when several
    /// parts are live, and `register` for a register that holds only tombstones.
    pub fn type_name(&self) -> &'static str {
        match self {
            Object::Contested(_) => {
                let live = self.live_types();
                match live.as_slice() {
                    [] => REGISTER,
                    [one] => one,
                    _ => CONTESTED,
                }
            }
            single => single.part_type(),
        }
    }

    /// The type of a single-variant state (`contested` for [`Object::Contested`]).
    fn part_type(&self) -> &'static str {
        match self {
            Object::Register(_) => REGISTER,
            Object::GCounter(_) => GCOUNTER,
            Object::PNCounter(_) => PNCOUNTER,
            Object::TwoPSet(_) => TWOPSET,
            Object::ORSet(_) => ORSET,
            Object::Contested(_) => CONTESTED,
        }
    }

    /// The types of the live parts, in type order: a register with a value, and every CRDT
    /// part (CRDT keys are never deleted). A register that holds only tombstones is not live.
    pub fn live_types(&self) -> Vec<&'static str> {
        let live_register = |r: &Register| r.values().next().is_some();
        match self {
            Object::Contested(p) => {
                let mut v = Vec::new();
                if p.register.as_ref().is_some_and(live_register) {
                    v.push(REGISTER);
                }
                for (present, name) in [
                    (p.gcounter.is_some(), GCOUNTER),
                    (p.pncounter.is_some(), PNCOUNTER),
                    (p.twopset.is_some(), TWOPSET),
                    (p.orset.is_some(), ORSET),
                ] {
                    if present {
                        v.push(name);
                    }
                }
                v
            }
            Object::Register(r) if !live_register(r) => Vec::new(),
            single => vec![single.part_type()],
        }
    }

    /// Whether the key has several live types (see [`Object`]).
    pub fn is_contested(&self) -> bool {
        self.live_types().len() > 1
    }

    /// Whether a write of type `name` may apply to this state: the key has no live type yet
    /// (new, or a deleted register), or `name` is one of its live types.
    pub fn allows(&self, name: &str) -> bool {
        let live = self.live_types();
        live.is_empty() || live.contains(&name)
    }

    fn conflict(&self, offered: &'static str) -> TypeConflict {
        TypeConflict {
            held: self.type_name(),
            offered,
        }
    }

    /// Merges another replica's state of the same key: the least upper bound (commutative,
    /// associative, idempotent). States of different types merge into [`Object::Contested`];
    /// nothing is ever refused or lost.
    pub fn merge(&mut self, other: &Object) {
        match (&mut *self, other) {
            (Object::Register(a), Object::Register(b)) => a.sync(b),
            (Object::GCounter(a), Object::GCounter(b))
            | (Object::PNCounter(a), Object::PNCounter(b)) => a.merge(b),
            (Object::TwoPSet(a), Object::TwoPSet(b)) => a.merge(b),
            (Object::ORSet(a), Object::ORSet(b)) => a.merge(b),
            _ => {
                let mine = std::mem::replace(self, Object::Register(Register::new()));
                let mut parts = Parts::default();
                parts.absorb(mine);
                parts.absorb(other.clone());
                *self = parts.into_object();
            }
        }
    }

    /// Splits `current` into the part of type `name` (if any) and the other parts (if any),
    /// after checking that a write of type `name` may apply.
    fn split(
        current: Option<Object>,
        name: &'static str,
    ) -> Result<(Option<Object>, Option<Parts>), TypeConflict> {
        let Some(current) = current else {
            return Ok((None, None));
        };
        if !current.allows(name) {
            return Err(current.conflict(name));
        }
        Ok(match current {
            Object::Contested(p) => {
                let mut p = *p;
                let part = p.take(name);
                (part, Some(p))
            }
            single if single.part_type() == name => (Some(single), None),
            other => {
                // A deleted register taking its first write of another type.
                let mut p = Parts::default();
                p.absorb(other);
                (None, Some(p))
            }
        })
    }

    /// Puts an updated part back among the others.
    fn join_parts(part: Object, rest: Option<Parts>) -> Object {
        match rest {
            None => part,
            Some(mut p) => {
                p.absorb(part);
                p.into_object()
            }
        }
    }

    /// Writes the register of `current` (`None`: the key is new) with `write`; returns the new
    /// state and what `write` returned. Refused, changing nothing, when the key has a live
    /// part of another type and no live register.
    pub fn write_register<T>(
        current: Option<Object>,
        write: impl FnOnce(&mut Register) -> T,
    ) -> Result<(Object, T), TypeConflict> {
        let (part, rest) = Self::split(current, REGISTER)?;
        let mut register = match part {
            Some(Object::Register(r)) => r,
            _ => Register::new(),
        };
        let out = write(&mut register);
        Ok((Self::join_parts(Object::Register(register), rest), out))
    }

    /// Applies a CRDT update on behalf of `actor` (this process's actor) on `site`, at
    /// `now_ms` by its clock; `current` is the local copy (`None`: the key is new). Returns the
    /// new state.
    pub fn apply_update(
        current: Option<Object>,
        actor: NodeId,
        op: &CrdtOp,
        op_id: &str,
        now_ms: u64,
        policy: OpLogPolicy,
        site: Site<'_>,
    ) -> Result<(Object, UpdateEffect), UpdateError> {
        let (part, rest) = Self::split(current, op.type_name())?;
        let applying = Applying {
            actor,
            op_id,
            now_ms,
            policy,
            site,
        };
        let (part, mut effect) = Self::apply_to_part(part, op, &applying)?;
        if effect.forgotten.any() {
            let f = effect.forgotten;
            effect.notes.push(format!(
                "this key takes updates faster than it may forget their operation ids: to stay within its memory bound it forgot {} ids within {} s of their update and {} not yet on every replica, so a retry of one of those may count again",
                f.early,
                policy.window_ms / 1000,
                f.unstable
            ));
        }
        Ok((Self::join_parts(part, rest), effect))
    }

    fn apply_to_part(
        part: Option<Object>,
        op: &CrdtOp,
        a: &Applying<'_>,
    ) -> Result<(Object, UpdateEffect), UpdateError> {
        let Applying {
            actor,
            op_id,
            now_ms,
            policy,
            site,
        } = *a;
        let mut object = part.unwrap_or_else(|| op.empty());
        let mut effect = UpdateEffect::default();
        let invalid = |e: crate::crdt::CrdtError| UpdateError::Invalid(e.to_string());
        match (&mut object, op) {
            (Object::GCounter(c), CrdtOp::GCounter { increment }) => {
                let amount = i64::try_from(*increment)
                    .map_err(|_| UpdateError::Invalid("the increment is too large".into()))?;
                if !c.log().contains(op_id) {
                    check_range(c.value(), amount, 0)?;
                }
                let (applied, forgotten) = c
                    .apply(actor, op_id, amount, now_ms, policy, site)
                    .map_err(invalid)?;
                effect.replayed = applied == Applied::Replayed;
                effect.forgotten = forgotten;
            }
            (Object::PNCounter(c), CrdtOp::PNCounter { increment }) => {
                if !c.log().contains(op_id) {
                    check_range(c.value(), *increment, COUNTER_RANGE.0)?;
                }
                let (applied, forgotten) = c
                    .apply(actor, op_id, *increment, now_ms, policy, site)
                    .map_err(invalid)?;
                effect.replayed = applied == Applied::Replayed;
                effect.forgotten = forgotten;
            }
            (Object::TwoPSet(s), CrdtOp::TwoPSet { add, remove }) => {
                if s.log.contains(op_id) {
                    effect.replayed = true;
                } else {
                    for e in add {
                        if s.set.is_removed(e.as_str()) {
                            effect.notes.push(format!(
                                "{e:?} was not added: it was removed before, and a 2P-Set removal is permanent"
                            ));
                        } else {
                            s.set.add(e.clone());
                        }
                    }
                    for e in remove {
                        if s.set.contains(e.as_str()) {
                            s.set.remove(e.clone());
                        } else if s.set.is_removed(e.as_str()) {
                            effect.notes.push(format!("{e:?} was already removed"));
                        } else {
                            effect.notes.push(format!(
                                "{e:?} was not removed: the coordinating replica has never seen it added (a 2P-Set remove of an element never added would block it for good)"
                            ));
                        }
                    }
                    effect.forgotten = s.log.record_set_update(actor, op_id, now_ms, policy, site);
                }
            }
            (
                Object::ORSet(s),
                CrdtOp::ORSet {
                    add,
                    remove,
                    context,
                },
            ) => {
                if s.log.contains(op_id) {
                    effect.replayed = true;
                } else {
                    for e in add {
                        s.set.add(actor, e.clone()).map_err(invalid)?;
                    }
                    for e in remove {
                        match context {
                            Some(ctx) => {
                                s.set.remove_with_context(e.clone(), ctx.seen());
                            }
                            None => {
                                if !s.set.remove(e.as_str()) {
                                    effect.notes.push(format!(
                                        "{e:?} was not present on the coordinating replica"
                                    ));
                                }
                            }
                        }
                    }
                    if context.is_none() && !remove.is_empty() {
                        effect.notes.push(
                            "without a context, the remove took back the adds the coordinating replica had seen".into(),
                        );
                    }
                    effect.forgotten = s.log.record_set_update(actor, op_id, now_ms, policy, site);
                }
            }
            (held, op) => {
                return Err(UpdateError::TypeConflict(TypeConflict {
                    held: held.part_type(),
                    offered: op.type_name(),
                }))
            }
        }
        Ok((object, effect))
    }

    /// Notes that replica `node` holds this state (every CRDT part's operation log keeps a row
    /// per replica, see [`crate::crdt::OpLog::observe`]), with the key's current `replicas` as
    /// it sees them: rows of other sets, or of other nodes, are dropped. For a state stored
    /// durably as it is; the node's replica uses [`Object::observe_durable`].
    pub fn observe(&mut self, node: NodeId, replicas: &[NodeId]) {
        self.observe_parts(node, replicas, |_| RowClaim::State);
    }

    /// [`Object::observe`] for a replica whose copy may be lost in a crash until it is
    /// durable: each row claims only what `durable` (the replica's durable copy, see
    /// [`Object::held_seqs`]) holds, or stays as it is when that copy is not known (`None`).
    pub fn observe_durable(
        &mut self,
        node: NodeId,
        replicas: &[NodeId],
        durable: Option<&HeldSeqs>,
    ) {
        self.observe_parts(node, replicas, |part| {
            durable.map_or(RowClaim::Unchanged, |h| h.claim(part))
        });
    }

    fn observe_parts<'h>(
        &mut self,
        node: NodeId,
        replicas: &[NodeId],
        claim: impl Fn(&'static str) -> RowClaim<'h>,
    ) {
        match self {
            Object::Register(_) => {}
            Object::GCounter(c) => c.observe_claiming(node, replicas, claim(GCOUNTER)),
            Object::PNCounter(c) => c.observe_claiming(node, replicas, claim(PNCOUNTER)),
            Object::TwoPSet(s) => s.log.observe_claiming(node, replicas, claim(TWOPSET)),
            Object::ORSet(s) => s.log.observe_claiming(node, replicas, claim(ORSET)),
            Object::Contested(p) => {
                if let Some(c) = &mut p.gcounter {
                    c.observe_claiming(node, replicas, claim(GCOUNTER));
                }
                if let Some(c) = &mut p.pncounter {
                    c.observe_claiming(node, replicas, claim(PNCOUNTER));
                }
                if let Some(s) = &mut p.twopset {
                    s.log.observe_claiming(node, replicas, claim(TWOPSET));
                }
                if let Some(s) = &mut p.orset {
                    s.log.observe_claiming(node, replicas, claim(ORSET));
                }
            }
        }
    }

    /// How far this state holds each actor's operation records, by part: what a replica's
    /// rows may claim while this is its durable copy.
    pub fn held_seqs(&self) -> HeldSeqs {
        let mut held = BTreeMap::new();
        let mut note = |part: &'static str, log: &OpLog| {
            held.insert(part, log.held_seqs());
        };
        match self {
            Object::Register(_) => {}
            Object::GCounter(c) => note(GCOUNTER, c.log()),
            Object::PNCounter(c) => note(PNCOUNTER, c.log()),
            Object::TwoPSet(s) => note(TWOPSET, &s.log),
            Object::ORSet(s) => note(ORSET, &s.log),
            Object::Contested(p) => {
                if let Some(c) = &p.gcounter {
                    note(GCOUNTER, c.log());
                }
                if let Some(c) = &p.pncounter {
                    note(PNCOUNTER, c.log());
                }
                if let Some(s) = &p.twopset {
                    note(TWOPSET, &s.log);
                }
                if let Some(s) = &p.orset {
                    note(ORSET, &s.log);
                }
            }
        }
        HeldSeqs(held)
    }

    /// Whether two states of a key hold the same data, leaving aside the replica rows of
    /// operation logs (copies that differ only there are reconciled by anti-entropy; read
    /// repair does not send them).
    pub fn same_data(&self, other: &Object) -> bool {
        match (self, other) {
            (Object::GCounter(a), Object::GCounter(b))
            | (Object::PNCounter(a), Object::PNCounter(b)) => a.same_data(b),
            (Object::TwoPSet(a), Object::TwoPSet(b)) => {
                a.set == b.set && a.log.same_records(&b.log)
            }
            (Object::ORSet(a), Object::ORSet(b)) => a.set == b.set && a.log.same_records(&b.log),
            (Object::Contested(a), Object::Contested(b)) => {
                let (a, b) = (a.objects(), b.objects());
                a.len() == b.len() && a.iter().zip(&b).all(|(x, y)| x.same_data(y))
            }
            (a, b) => a == b,
        }
    }

    /// The single live part, borrowed when this is a single variant.
    fn live_part(&self) -> Option<std::borrow::Cow<'_, Object>> {
        use std::borrow::Cow;
        match self {
            Object::Contested(p) => {
                let mut live: Vec<Object> = p
                    .objects()
                    .into_iter()
                    .filter(|o| !o.live_types().is_empty())
                    .collect();
                (live.len() == 1).then(|| Cow::Owned(live.remove(0)))
            }
            single => Some(Cow::Borrowed(single)),
        }
    }

    /// The part of type `name`, if present (borrowed when this is a single variant).
    pub fn part(&self, name: &str) -> Option<std::borrow::Cow<'_, Object>> {
        use std::borrow::Cow;
        match self {
            Object::Contested(p) => p.clone().take(name).map(Cow::Owned),
            single if single.part_type() == name => Some(Cow::Borrowed(single)),
            _ => None,
        }
    }

    /// The value clients see of a CRDT key (`None` for a register or a contested key).
    pub fn crdt_value(&self) -> Option<CrdtValue> {
        Some(match self.live_part()?.as_ref() {
            Object::Register(_) | Object::Contested(_) => return None,
            Object::GCounter(c) | Object::PNCounter(c) => CrdtValue::Counter(c.value()),
            Object::TwoPSet(s) => CrdtValue::Set(s.set.elements().cloned().collect()),
            Object::ORSet(s) => CrdtValue::Set(s.set.elements().cloned().collect()),
        })
    }

    /// The causal context clients carry for this key, if its type has one (registers, OR-Sets;
    /// `None` for a contested key, whose parts carry theirs).
    pub fn context(&self, key: &[u8]) -> Option<Context> {
        match self {
            Object::Register(r) => Some(Context::new(key, r.context())),
            Object::ORSet(s) => Some(Context::new(key, s.set.clock().clone())),
            Object::Contested(p) if !self.is_contested() => match self.type_name() {
                ORSET => p
                    .orset
                    .as_ref()
                    .map(|s| Context::new(key, s.set.clock().clone())),
                REGISTER => p.register.as_ref().map(|r| Context::new(key, r.context())),
                _ => None,
            },
            _ => None,
        }
    }

    /// Every live part with its value and context (one entry unless the key is contested).
    pub fn parts(&self, key: &[u8]) -> Vec<PartView> {
        let objects = match self {
            Object::Contested(p) => p.objects(),
            single => vec![single.clone()],
        };
        objects
            .iter()
            .filter(|o| !o.live_types().is_empty())
            .map(|o| PartView {
                type_name: o.part_type().to_owned(),
                values: o
                    .as_register()
                    .map_or_else(Vec::new, |r| r.values().map(<[u8]>::to_vec).collect()),
                crdt: o.crdt_value(),
                context: o.context(key),
            })
            .collect()
    }

    /// The stored and wire encoding.
    pub fn encode(&self) -> Result<Vec<u8>, WireError> {
        protocol::encode(self)
    }

    /// Decodes a stored or received object, enforcing [`OBJECT_BYTES_MAX`].
    pub fn decode(bytes: &[u8]) -> Result<Object, WireError> {
        protocol::decode_with_limit(bytes, OBJECT_BYTES_MAX)
    }

    /// The register part, if the key has one (live or only tombstones).
    pub fn as_register(&self) -> Option<&Register> {
        match self {
            Object::Register(r) => Some(r),
            Object::Contested(p) => p.register.as_ref(),
            _ => None,
        }
    }

    /// Whether the operation log of a CRDT part records an update with operation id `id`
    /// (false for a register, and for an id the log has forgotten).
    pub fn knows_op(&self, id: &str) -> bool {
        match self {
            Object::Register(_) => false,
            Object::GCounter(c) | Object::PNCounter(c) => c.log().contains(id),
            Object::TwoPSet(s) => s.log.contains(id),
            Object::ORSet(s) => s.log.contains(id),
            Object::Contested(p) => {
                p.gcounter.as_ref().is_some_and(|c| c.log().contains(id))
                    || p.pncounter.as_ref().is_some_and(|c| c.log().contains(id))
                    || p.twopset.as_ref().is_some_and(|s| s.log.contains(id))
                    || p.orset.as_ref().is_some_and(|s| s.log.contains(id))
            }
        }
    }

    /// Whether the state is only a register's tombstones (what tombstone GC may purge).
    pub fn is_tombstone(&self) -> bool {
        matches!(self, Object::Register(r) if r.is_deleted())
    }
}

/// How far a replica's durable copy of a key holds each actor's operation records, by part
/// type ([`Object::held_seqs`]): all a replica's rows may claim (see the op log's
/// "Stability": a crash takes back what is not durable).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HeldSeqs(BTreeMap<&'static str, BTreeMap<NodeId, u64>>);

impl HeldSeqs {
    /// What a row of part `part` may claim.
    pub fn claim(&self, part: &str) -> RowClaim<'_> {
        RowClaim::Upto(self.0.get(part).unwrap_or(&NOTHING_HELD))
    }
}

/// Who applies an update, and how its key remembers operation ids.
#[derive(Clone, Copy, Debug)]
struct Applying<'a> {
    actor: NodeId,
    op_id: &'a str,
    now_ms: u64,
    policy: OpLogPolicy,
    site: Site<'a>,
}

/// Refuses adding `amount` to a counter worth `value` when the result would leave
/// [`low`, `i64::MAX`] and move further from it (a value already outside, which concurrent
/// updates through different nodes can leave, may always come back).
fn check_range(value: i128, amount: i64, low: i128) -> Result<(), UpdateError> {
    let high = COUNTER_RANGE.1;
    let next = value.saturating_add(i128::from(amount));
    let away = (next > high && next > value) || (next < low && next < value);
    if away {
        return Err(UpdateError::Invalid(format!(
            "the counter is {value}; adding {amount} would take it outside its range {low} to {high}, so nothing was changed"
        )));
    }
    Ok(())
}

/// Why a client's context token was refused. Nothing was changed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ContextError {
    /// Not a token this cluster issues (bad base64, bad encoding, too long).
    #[error("malformed context token: {0}")]
    Malformed(String),
    /// A token issued for another key.
    #[error("the context belongs to another key")]
    WrongKey,
    /// A counter beyond what any real history reaches.
    #[error("the context carries a counter beyond {CONTEXT_COUNTER_MAX}")]
    CounterTooLarge,
    /// More entries than any real history has.
    #[error("the context carries more than {CONTEXT_ENTRIES_MAX} entries")]
    TooManyEntries,
    /// Its tag does not match: the cluster did not issue it (or it was changed).
    #[error("the context was not issued by this cluster (send back a context exactly as a read or write returned it)")]
    Forged,
}

/// What a context was issued for: a register's writes, or an OR-Set's adds. A context of one is
/// refused as the other (an old register's counters would look like a set's future adds).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ContextKind {
    /// A register (writes and deletes; a contested key's register part).
    Register = 1,
    /// An OR-Set (removes).
    ORSet = 2,
}

impl ContextKind {
    /// The kind of context a key of type `type_name` hands out.
    pub fn of_type(type_name: &str) -> ContextKind {
        if type_name == ORSET {
            ContextKind::ORSet
        } else {
            ContextKind::Register
        }
    }
}

/// The cluster's secret for context tags ([`Context::seal`]): 32 bytes every node shares,
/// created with the cluster CA (`cluster.key`) and copied with each node certificate.
#[derive(Clone, PartialEq, Eq)]
pub struct ContextKey([u8; 32]);

impl std::fmt::Debug for ContextKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ContextKey(..)")
    }
}

impl ContextKey {
    /// A key from its 32 bytes.
    pub fn from_bytes(bytes: [u8; 32]) -> ContextKey {
        ContextKey(bytes)
    }

    fn tag(&self, kind: ContextKind, key: u64, seen: &VersionVector) -> [u64; 2] {
        let mut h = blake3::Hasher::new_keyed(&self.0);
        h.update(b"chorus/context/v1\0");
        h.update(&[kind as u8]);
        h.update(&key.to_be_bytes());
        h.update(&(seen.len() as u64).to_be_bytes());
        for (node, counter) in seen.iter() {
            h.update(&node.get().to_be_bytes());
            h.update(&counter.to_be_bytes());
        }
        let out = h.finalize();
        let b = out.as_bytes();
        let word = |i: usize| {
            let mut w = [0u8; 8];
            w.copy_from_slice(&b[i * 8..i * 8 + 8]);
            u64::from_be_bytes(w)
        };
        [word(0), word(1)]
    }
}

/// What a client saw of a key: an opaque token on the API.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Context {
    /// Binds the context to its key: the key's stable hash.
    key: u64,
    /// Every write the client saw.
    seen: VersionVector,
    /// A keyed hash of the two under the cluster's [`ContextKey`], set by the node that
    /// answers the client ([`Context::seal`]); zero until then. The core never looks at it:
    /// the runtime checks it on every client request ([`Context::verify`]).
    tag: [u64; 2],
}

impl Context {
    /// The context of `seen` for `key` (not sealed yet).
    pub fn new(key: &[u8], seen: VersionVector) -> Self {
        Context {
            key: key_hash(key),
            seen,
            tag: [0; 2],
        }
    }

    /// Tags the context as issued by the cluster holding `secret`, for a key of `kind`.
    pub fn seal(&mut self, secret: &ContextKey, kind: ContextKind) {
        self.tag = secret.tag(kind, self.key, &self.seen);
    }

    /// Whether the cluster holding `secret` issued the context for a key of `kind` (in
    /// constant time).
    pub fn verify(&self, secret: &ContextKey, kind: ContextKind) -> Result<(), ContextError> {
        let want = secret.tag(kind, self.key, &self.seen);
        let diff = (want[0] ^ self.tag[0]) | (want[1] ^ self.tag[1]);
        if diff == 0 {
            Ok(())
        } else {
            Err(ContextError::Forged)
        }
    }

    /// The writes the client saw.
    pub fn seen(&self) -> &VersionVector {
        &self.seen
    }

    /// Whether the context was issued for `key`.
    pub fn is_for(&self, key: &[u8]) -> bool {
        self.key == key_hash(key)
    }

    /// The token: URL-safe base64 of the MessagePack encoding.
    pub fn to_token(&self) -> String {
        // A struct of integers cannot fail to encode.
        let bytes = rmp_serde::to_vec(self).unwrap_or_default();
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    }

    /// Decodes and validates a client's token for `key`.
    pub fn from_token(token: &str, key: &[u8]) -> Result<Context, ContextError> {
        let token = token.trim();
        if token.len() > CONTEXT_CHARS_MAX {
            return Err(ContextError::Malformed(format!(
                "{} characters, more than {CONTEXT_CHARS_MAX}",
                token.len()
            )));
        }
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(token)
            .map_err(|e| ContextError::Malformed(e.to_string()))?;
        let mut de = rmp_serde::Deserializer::new(std::io::Cursor::new(&bytes[..]));
        de.set_max_depth(protocol::DEPTH_MAX);
        let ctx =
            Context::deserialize(&mut de).map_err(|e| ContextError::Malformed(e.to_string()))?;
        if de.position() as usize != bytes.len() {
            return Err(ContextError::Malformed("trailing bytes".into()));
        }
        ctx.check(key)?;
        Ok(ctx)
    }

    /// Checks that the context is for `key` and within the limits.
    pub fn check(&self, key: &[u8]) -> Result<(), ContextError> {
        if self.key != key_hash(key) {
            return Err(ContextError::WrongKey);
        }
        if self.seen.len() > CONTEXT_ENTRIES_MAX {
            return Err(ContextError::TooManyEntries);
        }
        if self.seen.iter().any(|(_, c)| c > CONTEXT_COUNTER_MAX) {
            return Err(ContextError::CounterTooLarge);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::id::NodeId;

    fn vv(pairs: &[(u64, u64)]) -> VersionVector {
        pairs.iter().map(|&(n, c)| (NodeId::new(n), c)).collect()
    }

    #[test]
    fn only_sealed_contexts_verify() {
        use ContextKind::{ORSet as S, Register as R};
        let secret = ContextKey::from_bytes([7; 32]);
        let other = ContextKey::from_bytes([8; 32]);
        let mut c = Context::new(b"cart:1", vv(&[(1, 3), (2, 5)]));
        assert_eq!(c.verify(&secret, R), Err(ContextError::Forged), "unsealed");
        c.seal(&secret, R);
        assert_eq!(c.verify(&secret, R), Ok(()));
        assert_eq!(c.verify(&other, R), Err(ContextError::Forged));
        assert_eq!(
            c.verify(&secret, S),
            Err(ContextError::Forged),
            "a register's is no set's"
        );
        let back = Context::from_token(&c.to_token(), b"cart:1").unwrap();
        assert_eq!(back.verify(&secret, R), Ok(()), "the token keeps the tag");
        // Any change to what it covers breaks the tag.
        let mut grown = back.clone();
        grown.seen = vv(&[(1, 3), (2, 6)]);
        assert_eq!(grown.verify(&secret, R), Err(ContextError::Forged));
        let mut more = back.clone();
        more.seen = vv(&[(1, 3), (2, 5), (9, 1)]);
        assert_eq!(more.verify(&secret, R), Err(ContextError::Forged));
        let mut moved = back;
        moved.key = key_hash(b"cart:2");
        assert_eq!(moved.verify(&secret, R), Err(ContextError::Forged));
    }

    #[test]
    fn contexts_round_trip_and_are_bound_to_their_key() {
        let c = Context::new(b"cart:1", vv(&[(1, 3), (2, 5)]));
        let t = c.to_token();
        assert_eq!(Context::from_token(&t, b"cart:1"), Ok(c));
        assert_eq!(
            Context::from_token(&t, b"cart:2"),
            Err(ContextError::WrongKey)
        );
    }

    #[test]
    fn bad_tokens_are_refused() {
        for bad in ["", "!!!", "AAAA", &"A".repeat(CONTEXT_CHARS_MAX + 1)] {
            assert!(
                matches!(
                    Context::from_token(bad, b"k"),
                    Err(ContextError::Malformed(_))
                ),
                "{bad:?}"
            );
        }
        let huge = Context::new(b"k", vv(&[(1, CONTEXT_COUNTER_MAX + 1)]));
        assert_eq!(
            Context::from_token(&huge.to_token(), b"k"),
            Err(ContextError::CounterTooLarge)
        );
        let wide = Context::new(
            b"k",
            (1..=CONTEXT_ENTRIES_MAX as u64 + 1)
                .map(|n| (NodeId::new(n), 1))
                .collect(),
        );
        assert_eq!(
            Context::from_token(&wide.to_token(), b"k"),
            Err(ContextError::TooManyEntries)
        );
        // A valid token with a byte appended is not valid.
        let mut raw = rmp_serde::to_vec(&Context::new(b"k", vv(&[(1, 1)]))).unwrap();
        raw.push(0);
        let t = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw);
        assert!(matches!(
            Context::from_token(&t, b"k"),
            Err(ContextError::Malformed(_))
        ));
    }

    #[test]
    fn objects_round_trip_and_merge() {
        let mut a = Register::new();
        a.put(NodeId::new(1), &VersionVector::new(), b"x".to_vec());
        let mut b = Register::new();
        b.put(NodeId::new(2), &VersionVector::new(), b"y".to_vec());
        let mut oa = Object::Register(a);
        let ob = Object::Register(b);
        oa.merge(&ob);
        let bytes = oa.encode().unwrap();
        let back = Object::decode(&bytes).unwrap();
        assert_eq!(back, oa);
        assert_eq!(back.as_register().unwrap().values().count(), 2);
        assert!(Object::decode(b"CH\x01\xc1").is_err());
    }

    /// Found by the data-path monitor: two copies of a contested key that differ only in
    /// the replica rows of a part's operation log hold the same data (before, `same_data`
    /// compared contested states whole, rows included).
    #[test]
    fn contested_copies_that_differ_only_in_rows_hold_the_same_data() {
        let mut reg = Register::new();
        reg.put(NodeId::new(1), &VersionVector::new(), b"x".to_vec());
        let mut counter = crate::crdt::Counter::new();
        let replicas = [NodeId::new(1), NodeId::new(2)];
        let site = crate::crdt::Site {
            node: NodeId::new(1),
            replicas: &replicas,
            claim: RowClaim::State,
        };
        counter
            .apply(NodeId::new(1), "op", 1, 0, Default::default(), site)
            .unwrap();
        let mut a = Object::Register(reg);
        a.merge(&Object::GCounter(counter));
        assert!(a.is_contested());
        let mut b = a.clone();
        b.observe(NodeId::new(2), &replicas);
        assert_ne!(a, b, "the rows differ");
        assert!(a.same_data(&b) && b.same_data(&a));
        let mut merged = a.clone();
        merged.merge(&b);
        assert!(merged.same_data(&a));
    }
}
