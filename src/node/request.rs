//! Client requests and replies as the node core sees them: what the HTTP API (and later the
//! QUIC client API) hands to [`super::Node::handle_client`] and gets back as
//! [`super::Output::Reply`].
//!
//! Everything a client can send is validated here, before anything changes:
//! [`DataConfig::validate`] turns a request with a key or value over its limit, or quorums
//! outside `1..=N`, into a [`ClientError`]. This module does no I/O.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::object::{Context, ContextKind, CrdtOp, CrdtValue, PartView};
use crate::causality::Dot;
use crate::crdt::{check_op_id, OpLogPolicy};
use crate::id::NodeId;

/// Default bound on a register's siblings (as Riak's `max_siblings`).
pub const SIBLINGS_MAX_DEFAULT: usize = 100;

/// Data-path settings of a node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DataConfig {
    /// Replies a read waits for when the request does not say (R).
    pub r: usize,
    /// Durable acknowledgements a write waits for when the request does not say (W).
    pub w: usize,
    /// Timeout of a request that does not set one.
    pub timeout: Duration,
    /// Longest timeout a request may ask for.
    pub timeout_max: Duration,
    /// Largest key, in bytes.
    pub key_bytes_max: usize,
    /// Largest value, in bytes.
    pub value_bytes_max: usize,
    /// Client requests this node coordinates (or forwarded) at once; beyond, requests are
    /// refused as overloaded (nothing is applied).
    pub requests_in_flight_max: usize,
    /// A write target that has not acknowledged after this long gets a fallback with a hint
    /// (sloppy quorum), unless the request is strict.
    pub hedge_after: Duration,
    /// How often held hints are offered to their owners.
    pub hint_interval: Duration,
    /// Most hints handed back in one message.
    pub hint_batch_max: usize,
    /// How often partition handoff makes progress.
    pub handoff_interval: Duration,
    /// Most keys in one handoff message.
    pub handoff_batch_max: usize,
    /// Bytes of decoded objects the replica keeps in memory for hot keys.
    pub cache_bytes: usize,
    /// Mint dots with a fresh actor at every start (true, the only safe setting). With false
    /// the node id is the actor, as in Riak before per-key epochs: a node that lost writes in
    /// a crash mints their dots again. It exists so the simulator can show that its checkers
    /// catch that; never turn it off.
    pub actor_per_process: bool,
    /// How long, and for how many updates, a key remembers operation ids (the window in which
    /// a retried CRDT update is recognised).
    pub op_log: OpLogPolicy,
    /// Most concurrent values (siblings) a register write may leave its key with; a write
    /// that would leave more is refused (413, nothing changed) and the client resolves them by
    /// writing with the context of a read. 0: no bound.
    pub siblings_max: usize,
    /// Largest set element, in bytes.
    pub element_bytes_max: usize,
    /// Most elements one set update may name.
    pub elements_per_update_max: usize,
    /// How often each partition this node replicates is compared with another replica by
    /// Merkle-tree exchange (spread over the interval); `None` turns periodic anti-entropy off
    /// (on-demand repair still works).
    pub anti_entropy_interval: Option<Duration>,
    /// How often each partition's register tombstones are looked at for purging (`None`:
    /// never purge). See the sync sub-machine's tombstone GC.
    pub tombstone_gc_interval: Option<Duration>,
    /// How long nothing of a key may have been sent to another node before its tombstone may
    /// be purged; at least twice `timeout_max` is used. It must exceed how long any peer
    /// message can be in transit.
    pub tombstone_gc_quiet: Duration,
    /// Most tombstones per GC round.
    pub tombstone_gc_keys: usize,
    /// Purge tombstones without asking anyone: the node that leads a partition deletes every
    /// tombstone it holds there on every member at once. This is the bug tombstone GC exists
    /// to avoid (deleted values come back from replicas that missed the delete); it exists so
    /// the simulator can show that its checkers catch that. Never turn it on.
    pub tombstone_gc_unchecked: bool,
    /// Exchanges this node starts at once.
    pub anti_entropy_in_flight_max: usize,
    /// Bytes per second this node's exchanges may send (digests and objects).
    pub anti_entropy_bytes_per_sec: u64,
    /// Keys one exchange step compares.
    pub anti_entropy_page_keys: usize,
    /// Repair replicas that answered a read with a stale state (off only to show anti-entropy
    /// converging alone).
    pub read_repair: bool,
    /// Keep hints for unreachable replicas (off only to show anti-entropy converging alone).
    pub hints: bool,
}

impl Default for DataConfig {
    fn default() -> Self {
        DataConfig {
            r: 2,
            w: 2,
            timeout: Duration::from_secs(5),
            timeout_max: Duration::from_secs(120),
            key_bytes_max: 1024,
            value_bytes_max: 1024 * 1024,
            requests_in_flight_max: 8192,
            hedge_after: Duration::from_millis(300),
            hint_interval: Duration::from_millis(500),
            hint_batch_max: 64,
            handoff_interval: Duration::from_millis(500),
            handoff_batch_max: 64,
            cache_bytes: 64 * 1024 * 1024,
            actor_per_process: true,
            op_log: OpLogPolicy::default(),
            siblings_max: SIBLINGS_MAX_DEFAULT,
            element_bytes_max: 1024,
            elements_per_update_max: 1024,
            anti_entropy_interval: Some(Duration::from_secs(60)),
            tombstone_gc_interval: Some(Duration::from_secs(60)),
            tombstone_gc_quiet: Duration::from_secs(300),
            tombstone_gc_keys: 1024,
            tombstone_gc_unchecked: false,
            anti_entropy_in_flight_max: 2,
            anti_entropy_bytes_per_sec: 16 * 1024 * 1024,
            anti_entropy_page_keys: 1024,
            read_repair: true,
            hints: true,
        }
    }
}

/// Per-request options (query parameters `r`, `w`, `strict`, `timeout_ms` on the HTTP API).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestOptions {
    /// Replies a read waits for (default: the node's R).
    pub r: Option<usize>,
    /// Durable acknowledgements a write waits for (default: the node's W).
    pub w: Option<usize>,
    /// Refuse sloppy quorum: only the key's own replicas count.
    pub strict: bool,
    /// How long the request may take (default: the node's timeout).
    pub timeout_ms: Option<u64>,
}

/// What a client asks of a key.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ClientOp {
    /// Read every concurrent value and the context.
    Get,
    /// Write a value, superseding what the context covers (no context: a sibling).
    Put {
        /// The value.
        #[serde(with = "serde_bytes")]
        value: Vec<u8>,
        /// What the client saw.
        context: Option<Context>,
    },
    /// Delete: a tombstone superseding what the context covers.
    Delete {
        /// What the client saw.
        context: Option<Context>,
    },
    /// Update a CRDT key.
    Update {
        /// The update.
        op: CrdtOp,
        /// The operation id: the same id applies once, however often it is sent.
        op_id: String,
    },
}

impl ClientOp {
    /// Whether the operation writes (also CRDT updates).
    pub fn is_write(&self) -> bool {
        !matches!(self, ClientOp::Get)
    }
}

/// One client request.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientRequest {
    /// The key.
    #[serde(with = "serde_bytes")]
    pub key: Vec<u8>,
    /// What to do.
    pub op: ClientOp,
    /// Quorums, strictness, timeout.
    pub options: RequestOptions,
}

impl ClientRequest {
    /// Every context the request carries, with the kind of key it must have been issued for
    /// (a register write's or delete's, an OR-Set remove's).
    pub fn contexts(&self) -> impl Iterator<Item = (ContextKind, &Context)> {
        let c = match &self.op {
            ClientOp::Put { context, .. } | ClientOp::Delete { context } => {
                context.as_ref().map(|c| (ContextKind::Register, c))
            }
            ClientOp::Update {
                op: CrdtOp::ORSet { context, .. },
                ..
            } => context.as_ref().map(|c| (ContextKind::ORSet, c)),
            ClientOp::Get | ClientOp::Update { .. } => None,
        };
        c.into_iter()
    }
}

impl ClientReply {
    /// Every context the reply carries, with the kind of key it is for, to be sealed for the
    /// client ([`Context::seal`]).
    pub fn contexts_mut(&mut self) -> Vec<(ContextKind, &mut Context)> {
        match self {
            ClientReply::Read(r) => {
                let kind = ContextKind::of_type(r.type_name.as_deref().unwrap_or(""));
                r.context
                    .iter_mut()
                    .map(|c| (kind, c))
                    .chain(r.parts.iter_mut().filter_map(|p| {
                        let kind = ContextKind::of_type(&p.type_name);
                        p.context.as_mut().map(|c| (kind, c))
                    }))
                    .collect()
            }
            ClientReply::Written(w) => vec![(ContextKind::Register, &mut w.context)],
            ClientReply::Updated(u) => {
                let kind = ContextKind::of_type(&u.type_name);
                u.context.iter_mut().map(|c| (kind, c)).collect()
            }
            ClientReply::Failed(_) => Vec::new(),
        }
    }
}

/// A read's answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReadResult {
    /// The key's type (`None`: no replica knows the key).
    pub type_name: Option<String>,
    /// Every live value of a register (none: absent, deleted, or not a register).
    #[serde(with = "crate::protocol::bytes_list")]
    pub values: Vec<Vec<u8>>,
    /// The value of a CRDT key.
    pub crdt: Option<CrdtValue>,
    /// The context covering them (registers and OR-Sets); `None` when no replica knows the key
    /// at all.
    pub context: Option<Context>,
    /// Whether the key exists only as a tombstone (deleted).
    pub deleted: bool,
    /// Replicas that answered before the reply.
    pub replies: usize,
    /// A contested key (writes of several types raced, see [`super::Object`]): every live
    /// part with its value and context; `type_name` is then `contested`. Empty otherwise.
    #[serde(default)]
    pub parts: Vec<PartView>,
}

/// A write's (or delete's) answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WriteResult {
    /// The live values after the write: just the new one, or it and the concurrent siblings
    /// the context did not cover (none after a delete that left no sibling).
    #[serde(with = "crate::protocol::bytes_list")]
    pub values: Vec<Vec<u8>>,
    /// The context covering exactly those values.
    pub context: Context,
    /// Replicas (or fallbacks holding a hint) that acknowledged durably before the reply.
    pub acks: usize,
    /// Who they were.
    pub acked_by: Vec<NodeId>,
    /// The dot the write was given.
    pub dot: Dot,
}

/// A CRDT update's answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpdateResult {
    /// The key's type.
    pub type_name: String,
    /// The value on the coordinating replica after the update.
    pub value: CrdtValue,
    /// The context of an OR-Set after the update.
    pub context: Option<Context>,
    /// The operation id.
    pub op_id: String,
    /// The operation id had been applied before (this reply acknowledges the earlier update).
    pub replayed: bool,
    /// Parts of the update that had no effect, and why.
    pub notes: Vec<String>,
    /// Replicas (or fallbacks holding a hint) that acknowledged durably before the reply.
    pub acks: usize,
    /// Who they were.
    pub acked_by: Vec<NodeId>,
}

/// Why a request failed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum ClientError {
    /// Malformed input (bad context, bad parameter); nothing changed.
    #[error("{0}")]
    BadRequest(String),
    /// A key or value over its limit; nothing changed.
    #[error("{0}")]
    TooLarge(String),
    /// The key holds another type; nothing changed.
    #[error("{0}")]
    TypeConflict(String),
    /// Too many requests in flight on this node; nothing was applied.
    #[error("the node has too many requests in flight; retry later")]
    Overloaded,
    /// The quorum was not reached. With `indeterminate`, the write may still have been applied
    /// (it reached some replicas, or its fate is unknown); without, it certainly was not.
    #[error("{message}")]
    Unavailable {
        /// What happened.
        message: String,
        /// Whether a write may have been applied.
        indeterminate: bool,
        /// Acknowledgements (or read replies) received.
        acks: usize,
        /// How many were needed.
        needed: usize,
    },
    /// The node failed internally (its storage returned an error); nothing was applied by this
    /// node.
    #[error("{0}")]
    Internal(String),
}

impl ClientError {
    /// A short machine-readable code (the HTTP API's `error` field).
    pub fn code(&self) -> &'static str {
        match self {
            ClientError::BadRequest(_) => "bad_request",
            ClientError::TooLarge(_) => "too_large",
            ClientError::TypeConflict(_) => "type_conflict",
            ClientError::Overloaded => "overloaded",
            ClientError::Unavailable { .. } => "unavailable",
            ClientError::Internal(_) => "internal",
        }
    }
}

/// The answer to one client request.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ClientReply {
    /// A read.
    Read(ReadResult),
    /// A write or delete.
    Written(WriteResult),
    /// A CRDT update.
    Updated(UpdateResult),
    /// A failure.
    Failed(ClientError),
}

/// A request with its quorums and timeout resolved against the node's defaults.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Resolved {
    pub(crate) r: usize,
    pub(crate) w: usize,
    pub(crate) strict: bool,
    pub(crate) timeout: Duration,
}

impl DataConfig {
    /// Checks a request against the limits and resolves its options with replicas `n`.
    pub(crate) fn validate(&self, req: &ClientRequest, n: usize) -> Result<Resolved, ClientError> {
        if req.key.is_empty() {
            return Err(ClientError::BadRequest("the key is empty".into()));
        }
        if req.key.len() > self.key_bytes_max {
            return Err(ClientError::TooLarge(format!(
                "the key is {} bytes, more than the limit of {}",
                req.key.len(),
                self.key_bytes_max
            )));
        }
        if let ClientOp::Put { value, .. } = &req.op {
            if value.len() > self.value_bytes_max {
                return Err(ClientError::TooLarge(format!(
                    "the value is {} bytes, more than the limit of {}",
                    value.len(),
                    self.value_bytes_max
                )));
            }
        }
        if let ClientOp::Put {
            context: Some(c), ..
        }
        | ClientOp::Delete { context: Some(c) } = &req.op
        {
            // Contexts from the HTTP API were checked when decoded; one forwarded by a peer is
            // checked here the same way.
            c.check(&req.key)
                .map_err(|e| ClientError::BadRequest(e.to_string()))?;
        }
        if let ClientOp::Update { op, op_id } = &req.op {
            self.validate_update(op, op_id, &req.key)?;
        }
        let quorum = |name: &str, v: Option<usize>, default: usize| match v {
            None => Ok(default.min(n).max(1)),
            Some(v) if (1..=n).contains(&v) => Ok(v),
            Some(v) => Err(ClientError::BadRequest(format!(
                "{name}={v} is outside 1..={n} (the key has {n} replicas)"
            ))),
        };
        let r = quorum("r", req.options.r, self.r)?;
        let w = quorum("w", req.options.w, self.w)?;
        let timeout = match req.options.timeout_ms {
            None => self.timeout,
            Some(0) => {
                return Err(ClientError::BadRequest(
                    "timeout_ms must be positive".into(),
                ))
            }
            Some(ms) if Duration::from_millis(ms) > self.timeout_max => {
                return Err(ClientError::BadRequest(format!(
                    "timeout_ms={ms} exceeds the limit of {}",
                    self.timeout_max.as_millis()
                )))
            }
            Some(ms) => Duration::from_millis(ms),
        };
        Ok(Resolved {
            r,
            w,
            // Without hints there are no sloppy fallbacks.
            strict: req.options.strict || !self.hints,
            timeout,
        })
    }
}

impl DataConfig {
    fn validate_update(&self, op: &CrdtOp, op_id: &str, key: &[u8]) -> Result<(), ClientError> {
        check_op_id(op_id).map_err(|e| ClientError::BadRequest(e.to_string()))?;
        match op {
            CrdtOp::GCounter { increment: 0 } => {
                return Err(ClientError::BadRequest(
                    "a gcounter increment is at least 1".into(),
                ))
            }
            CrdtOp::GCounter { increment } if i64::try_from(*increment).is_err() => {
                return Err(ClientError::BadRequest(format!(
                    "the increment {increment} is beyond the counter's range"
                )))
            }
            CrdtOp::ORSet {
                context: Some(c), ..
            } => c
                .check(key)
                .map_err(|e| ClientError::BadRequest(e.to_string()))?,
            _ => {}
        }
        let mut n = 0;
        for e in op.elements() {
            n += 1;
            if e.len() > self.element_bytes_max {
                return Err(ClientError::BadRequest(format!(
                    "an element is {} bytes, more than the limit of {}",
                    e.len(),
                    self.element_bytes_max
                )));
            }
        }
        if n > self.elements_per_update_max {
            return Err(ClientError::TooLarge(format!(
                "the update names {n} elements, more than the limit of {}",
                self.elements_per_update_max
            )));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::causality::VersionVector;

    fn put(key: &[u8], value: usize, options: RequestOptions) -> ClientRequest {
        ClientRequest {
            key: key.to_vec(),
            op: ClientOp::Put {
                value: vec![0; value],
                context: None,
            },
            options,
        }
    }

    #[test]
    fn limits_and_quorums_are_validated() {
        let c = DataConfig::default();
        let ok = c
            .validate(&put(b"k", 10, RequestOptions::default()), 3)
            .unwrap();
        assert_eq!((ok.r, ok.w, ok.strict), (2, 2, false));
        assert_eq!(ok.timeout, Duration::from_secs(5));
        assert!(matches!(
            c.validate(&put(&[7; 1025], 1, RequestOptions::default()), 3),
            Err(ClientError::TooLarge(_))
        ));
        assert!(matches!(
            c.validate(&put(b"k", 1024 * 1024 + 1, RequestOptions::default()), 3),
            Err(ClientError::TooLarge(_))
        ));
        assert!(matches!(
            c.validate(&put(b"", 1, RequestOptions::default()), 3),
            Err(ClientError::BadRequest(_))
        ));
        for (r, w) in [(Some(0), None), (None, Some(4)), (Some(9), None)] {
            let o = RequestOptions {
                r,
                w,
                ..RequestOptions::default()
            };
            assert!(matches!(
                c.validate(&put(b"k", 1, o), 3),
                Err(ClientError::BadRequest(_))
            ));
        }
        let o = RequestOptions {
            timeout_ms: Some(0),
            ..RequestOptions::default()
        };
        assert!(c.validate(&put(b"k", 1, o), 3).is_err());
        // One replica: defaults shrink to fit.
        let one = c
            .validate(&put(b"k", 1, RequestOptions::default()), 1)
            .unwrap();
        assert_eq!((one.r, one.w), (1, 1));
        // A context from another key.
        let req = ClientRequest {
            key: b"a".to_vec(),
            op: ClientOp::Delete {
                context: Some(Context::new(b"b", VersionVector::new())),
            },
            options: RequestOptions::default(),
        };
        assert!(matches!(
            c.validate(&req, 3),
            Err(ClientError::BadRequest(m)) if m.contains("another key")
        ));
    }
}
