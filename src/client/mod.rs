//! The Rust client library: reads and writes a Chorus cluster over the QUIC client API or the
//! HTTP API, and handles the cluster's failures for its caller.
//!
//! It builds with `default-features = false, features = ["client"]`: no RocksDB, no server.
//!
//! - **Discovery**: given the HTTP addresses of one or more nodes, it learns the cluster from
//!   `GET /v1/cluster` (the first seed that answers) and refreshes that view in the background.
//! - **HTTPS**: given `https://` addresses (all or none of them), it speaks HTTPS to every node,
//!   verifying certificates against [`Config::ca_pem`] only ([`https`]); members learned from
//!   the cluster are reached with the same scheme at the IP address they report.
//! - **Routing**: it computes each key's preference list from the ring the cluster reports
//!   (placement is a pure function of the members) and sends the request straight to a healthy
//!   replica, rotating among them, which saves the forwarding hop a non-replica would add.
//! - **Retries**: what is safe to retry is retried on another node: reads; CRDT updates (the
//!   client mints the operation id once, so a retry applies at most once); anything refused
//!   before it was applied (overloaded, unreachable node). A register write or delete whose
//!   fate is unknown is retried only with [`Config::retry_register_writes`], since a retry
//!   may leave a sibling.
//! - **Circuit breakers**: one per node ([`breaker`]). A node that cannot be reached, or does
//!   not answer within the request's own timeout, is skipped at once for a cool-down, so a dead
//!   node costs one timeout, not one per request; then single probe requests test it.
//!
//! Results are typed: [`Value::Absent`], [`Value::One`] or [`Value::Siblings`] with the causal
//! [`Context`] to send back with the next write, counter values, set contents. Failures are an
//! [`Error`] with the same codes as the HTTP API and whether a write may have been applied.
//!
//! # Example
//!
//! ```no_run
//! use chorus::client::{Client, Config, Protocol, Value};
//!
//! # async fn demo() -> Result<(), chorus::client::Error> {
//! let mut config = Config::new(["127.0.0.1:7200", "127.0.0.1:7201"]);
//! config.protocol = Protocol::Quic;
//! config.ca_pem = Some(std::fs::read_to_string("chorus-dev/ca/ca.pem").unwrap());
//! let client = Client::connect(config).await?;
//!
//! // A read-modify-write that never leaves a needless sibling: write back with the context.
//! let read = client.get(b"cart:42").await?;
//! let mut cart = match &read.value {
//!     Value::Absent => Vec::new(),
//!     Value::One(v) => v.clone(),
//!     // Concurrent writers: merge the siblings the way the application needs.
//!     Value::Siblings(all) => all.concat(),
//! };
//! cart.extend_from_slice(b",apple");
//! client.put(b"cart:42", cart, read.context.as_ref()).await?;
//!
//! // CRDTs merge by themselves.
//! client.incr(b"visits", 1).await?;
//! client.set_add(b"tags", ["new", "sale"]).await?;
//! println!("{} visits", client.counter(b"visits").await?);
//! # Ok(())
//! # }
//! ```

pub mod breaker;
pub(crate) mod http;
pub mod https;
mod quic;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock, Weak};
use std::time::{Duration, Instant};

use serde::Serialize;

use self::breaker::Breaker;
pub use self::breaker::{BreakerConfig, BreakerState};
pub use self::https::NodeUrl;
pub use self::quic::quic_config;
use crate::node::{ClusterView, Liveness};
pub use crate::node::{Context, CrdtOp, CrdtValue};
use crate::ring::Ring;
use crate::NodeId;

/// Which API the client speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// The QUIC client API (needs the cluster CA certificate).
    Quic,
    /// The HTTP API.
    Http,
}

impl std::str::FromStr for Protocol {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "quic" => Ok(Protocol::Quic),
            "http" => Ok(Protocol::Http),
            other => Err(format!("unknown protocol {other:?} (quic or http)")),
        }
    }
}

impl std::fmt::Display for Protocol {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Protocol::Quic => "quic",
            Protocol::Http => "http",
        })
    }
}

/// How a [`Client`] reaches the cluster.
#[derive(Clone, Debug)]
pub struct Config {
    /// HTTP addresses (`IP:PORT`, `host:port`, `http://IP:PORT` or `https://HOST:PORT`) of
    /// nodes to learn the cluster from. `https://` (for all of them, or none) makes the client
    /// speak HTTPS to every node.
    pub nodes: Vec<String>,
    /// QUIC or HTTP.
    pub protocol: Protocol,
    /// The CA certificate(s) (PEM) that node certificates must chain to: the cluster CA for
    /// QUIC; for HTTPS, whichever CA signed the nodes' HTTPS certificates (the cluster CA when
    /// they use their node certificates). Needed for QUIC and for HTTPS.
    pub ca_pem: Option<String>,
    /// The client token, when the nodes require one.
    pub token: Option<String>,
    /// How long connecting to a node may take.
    pub connect_timeout: Duration,
    /// How long the client waits for an answer beyond the request's own timeout (the node's
    /// default, 5 s, unless [`Options::timeout_ms`] says otherwise) before it gives up on the
    /// node.
    pub answer_grace: Duration,
    /// Nodes one request may try.
    pub attempts: usize,
    /// Retry register writes and deletes whose fate is unknown (they may leave a sibling).
    pub retry_register_writes: bool,
    /// The nodes' circuit breakers.
    pub breaker: BreakerConfig,
    /// QUIC: bidirectional streams (lanes) per node connection.
    pub lanes: usize,
    /// How often the cluster view is refreshed.
    pub refresh_interval: Duration,
    /// Default options of every request.
    pub options: Options,
}

impl Config {
    /// A configuration for the nodes at these HTTP addresses, over HTTP, with defaults.
    pub fn new<I, S>(nodes: I) -> Config
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Config {
            nodes: nodes.into_iter().map(Into::into).collect(),
            protocol: Protocol::Http,
            ca_pem: None,
            token: None,
            connect_timeout: Duration::from_secs(2),
            answer_grace: Duration::from_secs(1),
            attempts: 3,
            retry_register_writes: false,
            breaker: BreakerConfig::default(),
            lanes: 4,
            refresh_interval: Duration::from_secs(10),
            options: Options::default(),
        }
    }
}

/// Per-request options: quorums, strictness, timeout (as the HTTP API's query parameters
/// `r`, `w`, `strict`, `timeout_ms`).
pub use crate::node::RequestOptions as Options;

/// A register's value(s).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub enum Value {
    /// No value: never written, or deleted.
    Absent,
    /// One value.
    One(Vec<u8>),
    /// Concurrent values (siblings); the context covers them all.
    Siblings(Vec<Vec<u8>>),
}

impl Value {
    /// From a list of live values.
    pub fn from_values(mut values: Vec<Vec<u8>>) -> Value {
        match values.len() {
            0 => Value::Absent,
            1 => Value::One(values.pop().unwrap_or_default()),
            _ => Value::Siblings(values),
        }
    }

    /// Every value (none when absent).
    pub fn values(&self) -> Vec<&[u8]> {
        match self {
            Value::Absent => Vec::new(),
            Value::One(v) => vec![v],
            Value::Siblings(all) => all.iter().map(Vec::as_slice).collect(),
        }
    }
}

/// A register read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Read {
    /// The value(s).
    pub value: Value,
    /// What to send with the next write or delete of the key (none: no replica knows it).
    pub context: Option<Context>,
    /// The key exists as a tombstone (it was deleted).
    pub deleted: bool,
}

/// A register write's or delete's result.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Written {
    /// The live values after it: the written value alone, or with the siblings the context did
    /// not cover (after a delete: absent, or those siblings).
    pub value: Value,
    /// The new context.
    pub context: Context,
    /// Replicas that acknowledged durably.
    pub acks: usize,
}

/// A CRDT key's value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CrdtRead {
    /// `gcounter`, `pncounter`, `2pset` or `orset`.
    pub type_name: String,
    /// Its value.
    pub value: CrdtValue,
    /// OR-Sets: what a remove sends back to remove exactly what this read saw.
    pub context: Option<Context>,
}

/// A CRDT update's result.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Updated {
    /// The key's type.
    pub type_name: String,
    /// The value on the coordinating replica after the update.
    pub value: CrdtValue,
    /// OR-Sets: the context after the update.
    pub context: Option<Context>,
    /// The operation id (minted by the client unless given).
    pub op_id: String,
    /// The id had been applied before (a retry).
    pub replayed: bool,
    /// Parts of the update that had no effect, and why.
    pub notes: Vec<String>,
    /// Replicas that acknowledged durably.
    pub acks: usize,
}

/// What kind of failure an [`Error`] is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// Malformed input; nothing changed.
    BadRequest,
    /// A key, value or update over its limit; nothing changed.
    TooLarge,
    /// The key holds another type; nothing changed.
    TypeConflict,
    /// A read of a contested key: writes of several types raced and the key keeps every
    /// part (the message lists them; the HTTP answer's JSON holds them all).
    Contested,
    /// A wrong or missing client token.
    Unauthorized,
    /// The quorum was not reached.
    Unavailable,
    /// The node had too many requests in flight; nothing was applied.
    Overloaded,
    /// The node is shutting down.
    ShuttingDown,
    /// The node failed internally.
    Internal,
    /// No node could be reached or none answered in time.
    Unreachable,
    /// The client's configuration is unusable (no nodes, bad CA, ...).
    Config,
}

/// Why a request failed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct Error {
    /// The kind.
    pub kind: ErrorKind,
    /// The API's error code (`bad_request`, `unavailable`, ...; `unreachable`, `config` for
    /// failures of the client itself).
    pub code: String,
    /// What happened.
    pub message: String,
    /// For writes: it may have been applied (retry a CRDT update with its op id; read a
    /// register before writing again).
    pub indeterminate: bool,
}

impl Error {
    fn new(kind: ErrorKind, code: &str, message: impl Into<String>) -> Error {
        Error {
            kind,
            code: code.into(),
            message: message.into(),
            indeterminate: false,
        }
    }

    fn config(message: impl Into<String>) -> Error {
        Error::new(ErrorKind::Config, "config", message)
    }

    /// From an API error code and message (both protocols use the same codes).
    pub(crate) fn from_code(code: &str, message: String, indeterminate: bool) -> Error {
        let kind = match code {
            "bad_request" | "bad_node_id" => ErrorKind::BadRequest,
            "too_large" => ErrorKind::TooLarge,
            "type_conflict" => ErrorKind::TypeConflict,
            "contested" => ErrorKind::Contested,
            "unauthorized" => ErrorKind::Unauthorized,
            "unavailable" => ErrorKind::Unavailable,
            "overloaded" => ErrorKind::Overloaded,
            "shutting_down" => ErrorKind::ShuttingDown,
            "https_required" => ErrorKind::Config,
            _ => ErrorKind::Internal,
        };
        Error {
            kind,
            code: code.into(),
            message,
            indeterminate,
        }
    }
}

/// One node as the client sees it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct NodeState {
    /// The node's id (empty for a seed not yet identified).
    pub id: String,
    /// Its HTTP address.
    pub http_addr: SocketAddr,
    /// Its QUIC address, once known.
    pub quic_addr: Option<SocketAddr>,
    /// Its circuit breaker.
    pub breaker: BreakerState,
}

/// What one attempt on one node asks.
#[derive(Clone, Debug)]
pub(crate) enum Op {
    Get,
    GetCrdt,
    Put {
        value: Vec<u8>,
        context: Option<Context>,
    },
    Delete {
        context: Option<Context>,
    },
    Update {
        op: CrdtOp,
        op_id: String,
    },
}

impl Op {
    fn is_register_write(&self) -> bool {
        matches!(self, Op::Put { .. } | Op::Delete { .. })
    }
    fn is_write(&self) -> bool {
        !matches!(self, Op::Get | Op::GetCrdt)
    }
}

/// One attempt's answer.
#[derive(Debug)]
pub(crate) enum Answer {
    Read(Read),
    Crdt(Option<CrdtRead>),
    Written(Written),
    Updated(Updated),
}

/// Why one attempt on one node failed.
#[derive(Debug)]
pub(crate) enum Failure {
    /// The node answered with an error.
    Answered(Error),
    /// The request never reached the node (connect failed): nothing was applied.
    Unreached(String),
    /// The request was sent and no answer came (connection lost, or no answer in time).
    Lost(String),
}

/// A node's connection(s), by protocol.
enum Conn {
    Quic(Box<quic::QuicNode>),
    Http(http::HttpNode),
}

struct Node {
    id: Option<NodeId>,
    http_addr: SocketAddr,
    quic_addr: Option<SocketAddr>,
    conn: Conn,
    breaker: Mutex<Breaker>,
}

/// The cluster as the client last saw it.
struct View {
    nodes: Vec<Arc<Node>>,
    ring: Option<(Ring, usize)>,
}

struct Inner {
    config: Config,
    view: RwLock<Arc<View>>,
    quic: Option<quic::QuicShared>,
    http: http::HttpShared,
    rotate: AtomicUsize,
    refreshing: std::sync::atomic::AtomicBool,
}

/// A client of a Chorus cluster. Cheap to clone; clones share connections and breakers.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
    options: Options,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("protocol", &self.inner.config.protocol)
            .field("nodes", &self.nodes())
            .finish()
    }
}

/// Parses `IP:PORT`, `host:port`, `http://IP:PORT[/]` or `https://HOST:PORT[/]` to the
/// address it resolves to (see [`NodeUrl::parse`] to keep the scheme and host).
pub fn parse_http_addr(s: &str) -> Result<SocketAddr, String> {
    NodeUrl::parse(s).map(|u| u.addr)
}

impl Client {
    /// Connects to the cluster: learns it from the first of `config.nodes` that answers
    /// `GET /v1/cluster`. Must be called inside a tokio runtime.
    pub async fn connect(config: Config) -> Result<Client, Error> {
        if config.nodes.is_empty() {
            return Err(Error::config("no node addresses given"));
        }
        let seeds = config
            .nodes
            .iter()
            .map(|s| NodeUrl::parse(s))
            .collect::<Result<Vec<_>, _>>()
            .map_err(Error::config)?;
        let https = seeds.iter().any(|s| s.https);
        if https && !seeds.iter().all(|s| s.https) {
            return Err(Error::config(
                "the node addresses mix http:// and https://: a cluster serves one scheme",
            ));
        }
        let tls = if https {
            let pem = config.ca_pem.as_deref().ok_or_else(|| {
                Error::config(
                    "https:// needs the CA certificate that signed the nodes' HTTPS \
                     certificates (ca_pem, --ca)",
                )
            })?;
            Some(https::https_client_config(pem)?)
        } else {
            None
        };
        let quic = match config.protocol {
            Protocol::Quic => {
                let pem = config.ca_pem.as_deref().ok_or_else(|| {
                    Error::config("the QUIC protocol needs the cluster CA certificate (ca_pem)")
                })?;
                Some(quic::QuicShared::new(pem, &config)?)
            }
            Protocol::Http => None,
        };
        let http = http::HttpShared::new(&config, tls);
        let mut cluster = None;
        let mut errors = Vec::new();
        for seed in &seeds {
            let node = http.seed(seed)?;
            match http.cluster(&node, config.connect_timeout * 3).await {
                Ok(view) => {
                    cluster = Some(view);
                    break;
                }
                Err(e) if e.kind == ErrorKind::Unauthorized => return Err(e),
                Err(e) => errors.push(format!("{}: {}", seed.base(), e.message)),
            }
        }
        let Some(cluster) = cluster else {
            return Err(Error::new(
                ErrorKind::Unreachable,
                "unreachable",
                format!("no node answered GET /v1/cluster ({})", errors.join("; ")),
            ));
        };
        let inner = Arc::new(Inner {
            view: RwLock::new(Arc::new(View {
                nodes: Vec::new(),
                ring: None,
            })),
            quic,
            http,
            rotate: AtomicUsize::new(0),
            refreshing: std::sync::atomic::AtomicBool::new(false),
            config,
        });
        inner.install(&cluster);
        let client = Client {
            options: inner.config.options,
            inner,
        };
        tokio::spawn(refresher(Arc::downgrade(&client.inner)));
        Ok(client)
    }

    /// This client with other default options for the requests made through it.
    pub fn with(&self, options: Options) -> Client {
        Client {
            inner: self.inner.clone(),
            options,
        }
    }

    /// The nodes the client knows, with their breakers.
    pub fn nodes(&self) -> Vec<NodeState> {
        let now = Instant::now();
        let view = self.inner.view();
        view.nodes
            .iter()
            .map(|n| NodeState {
                id: n.id.map(|i| i.to_string()).unwrap_or_default(),
                http_addr: n.http_addr,
                quic_addr: n.quic_addr,
                breaker: n
                    .breaker
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .state(now),
            })
            .collect()
    }

    /// The breaker of the node with this HTTP address (`None`: not a known node).
    pub fn breaker(&self, http_addr: SocketAddr) -> Option<BreakerState> {
        self.nodes()
            .into_iter()
            .find(|n| n.http_addr == http_addr)
            .map(|n| n.breaker)
    }

    /// Asks a node for the cluster view now (and uses it for routing).
    pub async fn refresh(&self) -> Result<ClusterView, Error> {
        self.inner.refresh().await
    }

    /// Reads a register.
    pub async fn get(&self, key: impl AsRef<[u8]>) -> Result<Read, Error> {
        match self.run(key.as_ref(), Op::Get).await? {
            Answer::Read(r) => Ok(r),
            _ => Err(wrong_answer()),
        }
    }

    /// Writes a register value; pass the context of the last read to supersede what it saw
    /// (without one, the value becomes a sibling of whatever is there).
    pub async fn put(
        &self,
        key: impl AsRef<[u8]>,
        value: impl Into<Vec<u8>>,
        context: Option<&Context>,
    ) -> Result<Written, Error> {
        let op = Op::Put {
            value: value.into(),
            context: context.cloned(),
        };
        match self.run(key.as_ref(), op).await? {
            Answer::Written(w) => Ok(w),
            _ => Err(wrong_answer()),
        }
    }

    /// Deletes a register: a tombstone superseding what the context covers.
    pub async fn delete(
        &self,
        key: impl AsRef<[u8]>,
        context: Option<&Context>,
    ) -> Result<Written, Error> {
        let op = Op::Delete {
            context: context.cloned(),
        };
        match self.run(key.as_ref(), op).await? {
            Answer::Written(w) => Ok(w),
            _ => Err(wrong_answer()),
        }
    }

    /// Reads a CRDT key (`None`: never written).
    pub async fn crdt(&self, key: impl AsRef<[u8]>) -> Result<Option<CrdtRead>, Error> {
        match self.run(key.as_ref(), Op::GetCrdt).await? {
            Answer::Crdt(c) => Ok(c),
            _ => Err(wrong_answer()),
        }
    }

    /// Applies a CRDT update under a fresh operation id.
    pub async fn update(&self, key: impl AsRef<[u8]>, op: CrdtOp) -> Result<Updated, Error> {
        let op_id = self.mint_op_id();
        self.update_with_id(key, op, op_id).await
    }

    /// Applies a CRDT update under the caller's operation id: however often it is sent, to
    /// whichever nodes, it applies once (within the nodes' op-id window).
    pub async fn update_with_id(
        &self,
        key: impl AsRef<[u8]>,
        op: CrdtOp,
        op_id: impl Into<String>,
    ) -> Result<Updated, Error> {
        let op = Op::Update {
            op,
            op_id: op_id.into(),
        };
        match self.run(key.as_ref(), op).await? {
            Answer::Updated(u) => Ok(u),
            _ => Err(wrong_answer()),
        }
    }

    /// A counter's value (G-Counter or PN-Counter; 0 when never written).
    pub async fn counter(&self, key: impl AsRef<[u8]>) -> Result<i128, Error> {
        match self.crdt(key).await? {
            None => Ok(0),
            Some(CrdtRead {
                value: CrdtValue::Counter(n),
                ..
            }) => Ok(n),
            Some(c) => Err(not_a("counter", &c.type_name)),
        }
    }

    /// Adds `n` to a counter: a G-Counter when `n` is positive (unless the key is a
    /// PN-Counter), a PN-Counter when it is negative (use [`Client::update`] to choose the type
    /// yourself). One round trip when the type is right the first time.
    pub async fn incr(&self, key: impl AsRef<[u8]>, n: i64) -> Result<Updated, Error> {
        let key = key.as_ref();
        let op_id = self.mint_op_id();
        if n > 0 {
            let g = CrdtOp::GCounter {
                increment: n.unsigned_abs(),
            };
            match self.update_with_id(key, g, op_id.as_str()).await {
                // A PN-Counter: the G-Counter update changed nothing; apply it as what it is.
                Err(e) if e.kind == ErrorKind::TypeConflict => {}
                other => return other,
            }
        }
        self.update_with_id(key, CrdtOp::PNCounter { increment: n }, op_id)
            .await
    }

    /// A set's elements (empty when never written) and, for an OR-Set, its context.
    pub async fn set(
        &self,
        key: impl AsRef<[u8]>,
    ) -> Result<(Vec<String>, Option<Context>), Error> {
        match self.crdt(key).await? {
            None => Ok((Vec::new(), None)),
            Some(CrdtRead {
                value: CrdtValue::Set(elements),
                context,
                ..
            }) => Ok((elements, context)),
            Some(c) => Err(not_a("set", &c.type_name)),
        }
    }

    /// Adds elements to a set: an OR-Set (what a new key becomes), or the 2P-Set the key
    /// already is.
    pub async fn set_add<I, S>(&self, key: impl AsRef<[u8]>, elements: I) -> Result<Updated, Error>
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let add: Vec<String> = elements.into_iter().map(Into::into).collect();
        let key = key.as_ref();
        let op_id = self.mint_op_id();
        let or = CrdtOp::ORSet {
            add: add.clone(),
            remove: Vec::new(),
            context: None,
        };
        match self.update_with_id(key, or, op_id.as_str()).await {
            // A 2P-Set: the OR-Set update changed nothing.
            Err(e) if e.kind == ErrorKind::TypeConflict => {
                let two = CrdtOp::TwoPSet {
                    add,
                    remove: Vec::new(),
                };
                self.update_with_id(key, two, op_id).await
            }
            other => other,
        }
    }

    /// Removes elements from a set: from an OR-Set exactly the adds a fresh read saw; from a
    /// 2P-Set for good.
    pub async fn set_remove<I, S>(
        &self,
        key: impl AsRef<[u8]>,
        elements: I,
    ) -> Result<Updated, Error>
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let remove: Vec<String> = elements.into_iter().map(Into::into).collect();
        let key = key.as_ref();
        let op = match self.crdt(key).await? {
            Some(c) if c.type_name == "2pset" => CrdtOp::TwoPSet {
                add: Vec::new(),
                remove,
            },
            Some(c) => CrdtOp::ORSet {
                add: Vec::new(),
                remove,
                context: c.context,
            },
            None => CrdtOp::ORSet {
                add: Vec::new(),
                remove,
                context: None,
            },
        };
        self.update(key, op).await
    }

    /// A fresh operation id: 128 bits from the operating system's random source, as 32
    /// lowercase hex characters. Unguessable, so no other client can send it first; mint it
    /// once per operation and send every retry with it, so that the operation applies once.
    ///
    /// # Panics
    ///
    /// If the operating system cannot supply random bytes.
    pub fn mint_op_id(&self) -> String {
        random_op_id()
    }

    /// Runs one operation: picks nodes, retries what is safe, feeds the breakers.
    async fn run(&self, key: &[u8], op: Op) -> Result<Answer, Error> {
        let inner = &self.inner;
        let options = self.options;
        let wait =
            Duration::from_millis(options.timeout_ms.unwrap_or(5_000)) + inner.config.answer_grace;
        let candidates = inner.candidates(key);
        let mut last: Option<Error> = None;
        let mut indeterminate = false;
        for node in candidates.into_iter().take(inner.config.attempts.max(1)) {
            let result = match &node.conn {
                Conn::Quic(q) => q.call(key, &op, options, wait).await,
                Conn::Http(h) => h.call(key, &op, options, wait).await,
            };
            let now = Instant::now();
            let breaker = &inner.config.breaker;
            let b = || node.breaker.lock().unwrap_or_else(PoisonError::into_inner);
            let (error, applied_maybe) = match result {
                Ok(answer) => {
                    b().success(breaker);
                    return Ok(answer);
                }
                Err(Failure::Answered(e)) => {
                    match e.kind {
                        ErrorKind::Overloaded | ErrorKind::ShuttingDown | ErrorKind::Internal => {
                            b().failure(now, false, breaker)
                        }
                        _ => b().success(breaker),
                    }
                    let retry = matches!(
                        e.kind,
                        ErrorKind::Overloaded
                            | ErrorKind::ShuttingDown
                            | ErrorKind::Unavailable
                            | ErrorKind::Internal
                    );
                    if !retry {
                        let mut e = e;
                        e.indeterminate |= indeterminate;
                        return Err(e);
                    }
                    let maybe = e.indeterminate;
                    (e, maybe)
                }
                Err(Failure::Unreached(message)) => {
                    b().failure(now, true, breaker);
                    let e = Error::new(
                        ErrorKind::Unreachable,
                        "unreachable",
                        format!("{}: {message}", node.http_addr),
                    );
                    (e, false)
                }
                Err(Failure::Lost(message)) => {
                    b().failure(now, true, breaker);
                    let e = Error::new(
                        ErrorKind::Unreachable,
                        "unreachable",
                        format!("{}: {message}", node.http_addr),
                    );
                    (e, op.is_write())
                }
            };
            indeterminate |= applied_maybe;
            // Report what a node said over a node that could not be reached.
            let answered = error.kind != ErrorKind::Unreachable;
            if answered
                || last
                    .as_ref()
                    .is_none_or(|l| l.kind == ErrorKind::Unreachable)
            {
                last = Some(error);
            }
            // A register write that may have landed is retried only when the caller allows
            // it: the retry may leave a sibling.
            if applied_maybe && op.is_register_write() && !inner.config.retry_register_writes {
                break;
            }
        }
        let mut e = last.unwrap_or_else(|| {
            Error::new(
                ErrorKind::Unreachable,
                "unreachable",
                "the client knows no node to send the request to",
            )
        });
        e.indeterminate = indeterminate && op.is_write();
        Err(e)
    }
}

fn wrong_answer() -> Error {
    Error::new(
        ErrorKind::Internal,
        "internal",
        "the node answered with the wrong kind of reply",
    )
}

/// A read found a contested key (see [`crate::node::Object`]): every part, in the message.
fn contested(parts: &[crate::node::PartView]) -> Error {
    let shown: Vec<String> = parts
        .iter()
        .map(|p| match &p.crdt {
            Some(crate::node::CrdtValue::Counter(n)) => format!("{} = {n}", p.type_name),
            Some(crate::node::CrdtValue::Set(e)) => format!("{} = {e:?}", p.type_name),
            None => format!("{} with {} value(s)", p.type_name, p.values.len()),
        })
        .collect();
    Error::new(
        ErrorKind::Contested,
        "contested",
        format!(
            "the key holds several types at once: {}; writes of different types raced and every one was kept",
            shown.join(", ")
        ),
    )
}

fn not_a(what: &str, held: &str) -> Error {
    Error::new(
        ErrorKind::TypeConflict,
        "type_conflict",
        format!("the key holds a {held}, not a {what}"),
    )
}

impl Inner {
    fn view(&self) -> Arc<View> {
        self.view
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Installs a cluster view, keeping the connections and breakers of nodes already known.
    fn install(&self, cluster: &ClusterView) {
        let old = self.view();
        let mut nodes = Vec::new();
        for m in &cluster.members {
            if !m.status.owns_partitions() && m.status != crate::membership::RingStatus::Joining {
                continue;
            }
            let id = m.id.parse::<NodeId>().ok();
            let kept = old
                .nodes
                .iter()
                .find(|n| n.http_addr == m.http_addr && n.quic_addr == Some(m.quic_addr))
                .cloned();
            let node = match kept {
                Some(n) => n,
                None => Arc::new(Node {
                    id,
                    http_addr: m.http_addr,
                    quic_addr: Some(m.quic_addr),
                    conn: match &self.quic {
                        Some(q) => Conn::Quic(Box::new(q.node(m.quic_addr))),
                        None => Conn::Http(self.http.node(m.http_addr)),
                    },
                    breaker: Mutex::new(Breaker::new(&self.config.breaker)),
                }),
            };
            // A node the cluster reports down starts with its breaker open (it is probed
            // after the cool-down, like any other).
            if m.liveness == Liveness::Down {
                let mut b = node.breaker.lock().unwrap_or_else(PoisonError::into_inner);
                if b.state(Instant::now()) == BreakerState::Closed {
                    b.failure(Instant::now(), true, &self.config.breaker);
                }
            }
            nodes.push(node);
        }
        let ring = cluster.placement_ring().map(|r| (r, cluster.ring.n));
        *self.view.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(View { nodes, ring });
    }

    async fn refresh(&self) -> Result<ClusterView, Error> {
        let view = self.view();
        let mut last = Error::config("no node to ask");
        let now = Instant::now();
        // Healthy nodes first.
        let mut order: Vec<&Arc<Node>> = view.nodes.iter().collect();
        order.sort_by_key(|n| {
            n.breaker
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .state(now)
                != BreakerState::Closed
        });
        for node in order {
            let pool = self.http.node(node.http_addr);
            match self
                .http
                .cluster(&pool, self.config.connect_timeout * 3)
                .await
            {
                Ok(cluster) => {
                    self.install(&cluster);
                    return Ok(cluster);
                }
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    /// The nodes to try for `key`, best first: a node due for its half-open probe, then the
    /// key's replicas (rotating which goes first), then the others, all with closed breakers;
    /// nodes whose breaker is open only when every breaker is (soonest-to-reopen first).
    fn candidates(&self, key: &[u8]) -> Vec<Arc<Node>> {
        let view = self.view();
        let rotate = self.rotate.fetch_add(1, Ordering::Relaxed);
        let mut ordered: Vec<Arc<Node>> = Vec::with_capacity(view.nodes.len());
        if let Some((ring, n)) = &view.ring {
            let replicas = ring.preference_list(ring.partition_of(key), *n);
            let k = replicas.len().max(1);
            for i in 0..replicas.len() {
                let id = replicas[(rotate + i) % k];
                if let Some(node) = view.nodes.iter().find(|n| n.id == Some(id)) {
                    ordered.push(node.clone());
                }
            }
        }
        let start = rotate % view.nodes.len().max(1);
        for i in 0..view.nodes.len() {
            let node = &view.nodes[(start + i) % view.nodes.len()];
            if !ordered.iter().any(|o| Arc::ptr_eq(o, node)) {
                ordered.push(node.clone());
            }
        }
        let now = Instant::now();
        let breaker = &self.config.breaker;
        let state = |n: &Arc<Node>| {
            n.breaker
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .state(now)
        };
        let mut closed = Vec::with_capacity(ordered.len());
        let mut open = Vec::new();
        let mut probe = None;
        for node in ordered {
            match state(&node) {
                BreakerState::Closed => closed.push(node),
                // One node whose cool-down is over goes first, as this request's probe (claimed
                // here, so no request that would not send it uses it up).
                BreakerState::HalfOpen
                    if probe.is_none()
                        && node
                            .breaker
                            .lock()
                            .unwrap_or_else(PoisonError::into_inner)
                            .allow(now, breaker) =>
                {
                    probe = Some(node)
                }
                _ => open.push(node),
            }
        }
        let mut chosen: Vec<Arc<Node>> = probe.into_iter().chain(closed).collect();
        if chosen.is_empty() {
            // Every breaker open: try the node that reopens soonest rather than none.
            open.sort_by_key(|n| {
                n.breaker
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .open_until()
            });
            chosen = open;
        }
        chosen
    }
}

/// Refreshes the cluster view every `refresh_interval` while the client lives.
async fn refresher(inner: Weak<Inner>) {
    loop {
        let interval = match inner.upgrade() {
            Some(i) => i.config.refresh_interval,
            None => return,
        };
        tokio::time::sleep(interval).await;
        let Some(i) = inner.upgrade() else { return };
        if i.refreshing.swap(true, Ordering::SeqCst) {
            continue;
        }
        let _ = i.refresh().await;
        i.refreshing.store(false, Ordering::SeqCst);
    }
}

/// 128 bits from the operating system's random source as 32 lowercase hex characters.
fn random_op_id() -> String {
    use rand::TryRng as _;
    let mut bits = [0u8; 16];
    rand::rngs::SysRng
        .try_fill_bytes(&mut bits)
        .unwrap_or_else(|e| panic!("the operating system's random source failed: {e}"));
    format!("{:032x}", u128::from_be_bytes(bits))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn op_ids_are_128_random_bits_in_hex() {
        let ids: Vec<String> = (0..1000).map(|_| random_op_id()).collect();
        for id in &ids {
            assert_eq!(id.len(), 32, "{id}");
            assert!(
                id.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')),
                "{id}"
            );
            assert!(crate::crdt::check_op_id(id).is_ok());
        }
        let distinct: std::collections::HashSet<&String> = ids.iter().collect();
        assert_eq!(distinct.len(), ids.len());
        let common =
            |a: &str, b: &str| a.bytes().zip(b.bytes()).take_while(|(x, y)| x == y).count();
        // Not a prefix and a counter: consecutive ids share no prefix or suffix beyond what
        // chance gives, and no two of the 1,000 share 11 leading characters.
        for pair in ids.windows(2) {
            let (a, b) = (&pair[0], &pair[1]);
            assert!(common(a, b) < 8, "{a} {b}");
            let (ra, rb): (String, String) = (a.chars().rev().collect(), b.chars().rev().collect());
            assert!(common(&ra, &rb) < 8, "{a} {b}");
        }
        let mut sorted = ids.clone();
        sorted.sort();
        for pair in sorted.windows(2) {
            assert!(common(&pair[0], &pair[1]) <= 10, "{pair:?}");
        }
        let ones: u32 = ids
            .iter()
            .map(|id| u128::from_str_radix(id, 16).unwrap().count_ones())
            .sum();
        assert!((62_000..66_000).contains(&ones), "{ones} bits set");
    }

    #[test]
    fn values_and_addresses() {
        assert_eq!(Value::from_values(vec![]), Value::Absent);
        assert_eq!(
            Value::from_values(vec![b"a".to_vec()]),
            Value::One(b"a".to_vec())
        );
        let two = Value::from_values(vec![b"a".to_vec(), b"b".to_vec()]);
        assert_eq!(two.values(), vec![&b"a"[..], &b"b"[..]]);
        assert_eq!(
            parse_http_addr("http://127.0.0.1:7200/"),
            Ok("127.0.0.1:7200".parse().unwrap())
        );
        assert!(parse_http_addr("nope").is_err());
        assert_eq!(
            Error::from_code("overloaded", "x".into(), false).kind,
            ErrorKind::Overloaded
        );
    }
}
