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

use base64::Engine as _;
use serde::{Deserialize, Serialize};

use crate::causality::{Register, VersionVector, COUNTER_MAX};
use crate::crdt::{Applied, Counter, Crdt, ORSet, OpLog, OpLogPolicy, TwoPSet};
use crate::id::NodeId;
use crate::protocol::{self, WireError};
use crate::ring::key_hash;

/// Largest encoded object a replica stores or accepts: a value of 1 MiB with a few concurrent
/// siblings fits, and so does a message carrying one such object within the wire's frame limit
/// ([`crate::protocol::DEFAULT_FRAME_BYTES_MAX`], 8 MiB).
pub const OBJECT_BYTES_MAX: usize = 6 * 1024 * 1024;

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

/// A key's replicated state. Its variant is the key's type, fixed by the first write.
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
}

/// A set and the operation ids of its recent updates (so a replayed update changes nothing).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Logged<S> {
    /// The set.
    pub set: S,
    /// Recent operation ids.
    pub log: OpLog,
}

impl<S: Crdt> Logged<S> {
    fn merge(&mut self, other: &Self) {
        self.set.merge(&other.set);
        self.log.merge(&other.log);
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
            CrdtOp::GCounter { .. } => "gcounter",
            CrdtOp::PNCounter { .. } => "pncounter",
            CrdtOp::TwoPSet { .. } => "2pset",
            CrdtOp::ORSet { .. } => "orset",
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
    fn empty(&self) -> Object {
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
}

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

/// Why two states of one key cannot be merged.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the key holds a {held}, not a {offered}")]
pub struct TypeConflict {
    /// The type the replica holds.
    pub held: &'static str,
    /// The type offered.
    pub offered: &'static str,
}

impl Object {
    /// The type's name as the API shows it.
    pub fn type_name(&self) -> &'static str {
        match self {
            Object::Register(_) => "register",
            Object::GCounter(_) => "gcounter",
            Object::PNCounter(_) => "pncounter",
            Object::TwoPSet(_) => "2pset",
            Object::ORSet(_) => "orset",
        }
    }

    /// Merges another replica's state of the same key (commutative, associative, idempotent).
    /// A state of another type is refused and changes nothing.
    pub fn merge(&mut self, other: &Object) -> Result<(), TypeConflict> {
        match (self, other) {
            (Object::Register(a), Object::Register(b)) => a.sync(b),
            (Object::GCounter(a), Object::GCounter(b))
            | (Object::PNCounter(a), Object::PNCounter(b)) => a.merge(b),
            (Object::TwoPSet(a), Object::TwoPSet(b)) => a.merge(b),
            (Object::ORSet(a), Object::ORSet(b)) => a.merge(b),
            (a, b) => {
                return Err(TypeConflict {
                    held: a.type_name(),
                    offered: b.type_name(),
                })
            }
        }
        Ok(())
    }

    /// Applies a CRDT update on behalf of `actor` (this process's actor), at `now_ms` by its
    /// clock; `current` is the local copy (`None`: the key is new). Returns the new state.
    pub fn apply_update(
        current: Option<Object>,
        actor: NodeId,
        op: &CrdtOp,
        op_id: &str,
        now_ms: u64,
        policy: OpLogPolicy,
    ) -> Result<(Object, UpdateEffect), UpdateError> {
        let mut object = current.unwrap_or_else(|| op.empty());
        let mut effect = UpdateEffect::default();
        let invalid = |e: crate::crdt::CrdtError| UpdateError::Invalid(e.to_string());
        match (&mut object, op) {
            (Object::GCounter(c), CrdtOp::GCounter { increment }) => {
                let amount = i64::try_from(*increment)
                    .map_err(|_| UpdateError::Invalid("the increment is too large".into()))?;
                effect.replayed = c
                    .apply(actor, op_id, amount, now_ms, policy)
                    .map_err(invalid)?
                    == Applied::Replayed;
            }
            (Object::PNCounter(c), CrdtOp::PNCounter { increment }) => {
                effect.replayed = c
                    .apply(actor, op_id, *increment, now_ms, policy)
                    .map_err(invalid)?
                    == Applied::Replayed;
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
                    s.log.record_set_update(actor, op_id, now_ms, policy);
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
                    s.log.record_set_update(actor, op_id, now_ms, policy);
                }
            }
            (held, op) => {
                return Err(UpdateError::TypeConflict(TypeConflict {
                    held: held.type_name(),
                    offered: op.type_name(),
                }))
            }
        }
        Ok((object, effect))
    }

    /// The value clients see of a CRDT key (`None` for a register).
    pub fn crdt_value(&self) -> Option<CrdtValue> {
        Some(match self {
            Object::Register(_) => return None,
            Object::GCounter(c) | Object::PNCounter(c) => CrdtValue::Counter(c.value()),
            Object::TwoPSet(s) => CrdtValue::Set(s.set.elements().cloned().collect()),
            Object::ORSet(s) => CrdtValue::Set(s.set.elements().cloned().collect()),
        })
    }

    /// The causal context clients carry for this key, if its type has one (registers, OR-Sets).
    pub fn context(&self, key: &[u8]) -> Option<Context> {
        match self {
            Object::Register(r) => Some(Context::new(key, r.context())),
            Object::ORSet(s) => Some(Context::new(key, s.set.clock().clone())),
            _ => None,
        }
    }

    /// The stored and wire encoding.
    pub fn encode(&self) -> Result<Vec<u8>, WireError> {
        protocol::encode(self)
    }

    /// Decodes a stored or received object, enforcing [`OBJECT_BYTES_MAX`].
    pub fn decode(bytes: &[u8]) -> Result<Object, WireError> {
        protocol::decode_with_limit(bytes, OBJECT_BYTES_MAX)
    }

    /// The register, if this is one.
    pub fn as_register(&self) -> Option<&Register> {
        match self {
            Object::Register(r) => Some(r),
            _ => None,
        }
    }
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
}

/// What a client saw of a key: an opaque token on the API.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Context {
    /// Binds the context to its key: the key's stable hash.
    key: u64,
    /// Every write the client saw.
    seen: VersionVector,
}

impl Context {
    /// The context of `seen` for `key`.
    pub fn new(key: &[u8], seen: VersionVector) -> Self {
        Context {
            key: key_hash(key),
            seen,
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
        oa.merge(&ob).unwrap();
        let bytes = oa.encode().unwrap();
        let back = Object::decode(&bytes).unwrap();
        assert_eq!(back, oa);
        assert_eq!(back.as_register().unwrap().values().count(), 2);
        assert!(Object::decode(b"CH\x01\xc1").is_err());
    }
}
