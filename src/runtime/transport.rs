//! The node-to-node QUIC transport: one quinn endpoint that both listens and dials.
//!
//! This module owns the node's UDP port, its QUIC connections to and from peers, and moving
//! opaque byte payloads over them: QUIC datagrams (unreliable; SWIM gossip rides these) and whole
//! peer messages, one per unidirectional stream. It does not interpret payloads — decoding and
//! validating them is `protocol`'s job — and it holds no protocol state. TLS material comes
//! from `runtime::tls`.
//!
//! # Shape
//!
//! - Received payloads arrive on the [`Inbound`] channel returned by [`Transport::bind`], tagged
//!   with the peer's node id — derived from the certificate it authenticated with
//!   ([`super::tls::node_id_of`]), never taken from a payload — and its address.
//! - Messages up to [`SMALL_MESSAGE_BYTES`] travel as length-prefixed frames on one long-lived
//!   unidirectional stream per connection, written in batches (everything queued while the
//!   previous write was in progress goes out in one write); larger ones get a stream each, so
//!   they never hold up small ones. A message addressed to a node id is dropped (and logged)
//!   when the certificate at that address names another node.
//! - Sending never blocks and never fails loudly: each peer address has one bounded queue and one
//!   task that dials lazily, keeps one long-lived connection and redials on the next send after
//!   it is lost. A full queue, an unreachable peer or too many peers drop the payload and log it
//!   at debug level ([`Transport::try_send_message`] and [`Transport::try_send_datagram`] also
//!   report it as a [`SendError`]); callers (SWIM, quorum RPC with timeouts) tolerate loss.
//! - Connections in both directions are mutually authenticated by rustls under the cluster CA
//!   before any payload is accepted; a refused handshake is logged with the remote address.
//!   Connections we accept are only read from: replies to a peer go over our own connection to
//!   its address.
//!
//! - The same endpoint serves QUIC API clients: a connection that negotiated the client ALPN
//!   is handed, untouched, to the channel from [`Transport::serve_clients`] (the API layer
//!   reads it); a peer-ALPN connection that presented no certificate is closed unread.
//!
//! Everything is bounded by [`Limits`]: payload sizes, queue lengths, peers, streams in
//! flight, handshake and stream durations. Nothing a peer sends can panic this module.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use quinn::{
    ClientConfig, Connection, ConnectionError, Endpoint, EndpointConfig, ReadToEndError,
    RecvStream, SendDatagramError, ServerConfig, VarInt,
};
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tokio::time::{timeout, timeout_at, Instant};
use tracing::{debug, error, info, warn};

use super::connections::{ConnTable, Ticket};
pub use super::recorder::{Metering, NoMetrics, Recorder};
use super::tls::{node_id_of, peer_role_check, CLIENT_ALPN, NODE_SERVER_NAME};
use crate::id::NodeId;
use crate::warn_limited;

/// Application error code closing connections when the transport shuts down.
const CLOSE_SHUTDOWN: VarInt = VarInt::from_u32(0);
/// Application error code stopping a stream whose message exceeds the size limit.
const STREAM_TOO_LARGE: VarInt = VarInt::from_u32(1);
/// Application error code stopping or resetting a stream that took too long.
const STREAM_TIMEOUT: VarInt = VarInt::from_u32(2);

/// Application error code closing a connection whose certificate yields no node id.
const CLOSE_NO_IDENTITY: VarInt = VarInt::from_u32(3);

/// Application error code closing a connection to a peer's previous process (membership
/// reported that the peer restarted).
const CLOSE_PEER_RESTARTED: VarInt = VarInt::from_u32(4);

/// Application error code closing a peer-protocol connection whose certificate is not a node
/// certificate (a client certificate, or one without a role).
pub const CLOSE_NOT_A_NODE: VarInt = VarInt::from_u32(5);

/// Peer-protocol connections refused because the certificate is not a node's, in this process.
static NOT_A_NODE_REFUSED: AtomicU64 = AtomicU64::new(0);

/// Counts (in metrics and in [`NOT_A_NODE_REFUSED`]) and logs a refused peer connection; the
/// log is rate-limited to the 1st, 2nd, 4th, 8th, ... refusal, each line saying how many so far.
fn refuse_not_a_node(recorder: &dyn Recorder, conn: &Connection, remote: SocketAddr, error: &str) {
    let n = NOT_A_NODE_REFUSED.fetch_add(1, Ordering::Relaxed) + 1;
    recorder.peer_refused_not_a_node();
    if n.is_power_of_two() {
        warn!(peer = %remote, %error, refused = n, "refused a peer connection: not a node certificate (log lines are rate-limited; `refused` counts them all)");
    } else {
        debug!(peer = %remote, %error, refused = n, "refused a peer connection: not a node certificate");
    }
    conn.close(CLOSE_NOT_A_NODE, b"not a node certificate");
}

/// Peer-protocol connections this process refused so far because the certificate was not a
/// node's.
pub fn refused_not_a_node() -> u64 {
    NOT_A_NODE_REFUSED.load(Ordering::Relaxed)
}

/// The first byte of a stream carrying one whole message.
const STREAM_SINGLE: u8 = b'S';
/// The first byte of a stream carrying length-prefixed frames.
const STREAM_FRAMED: u8 = b'F';

/// Incoming handshakes in progress at once; beyond, new ones are refused.
const HANDSHAKES_MAX: usize = 128;

/// Handshakes in progress beyond which a sender whose address QUIC has not validated yet is
/// first asked to prove it (a Retry: one more round trip, no state kept). Initials from
/// spoofed source addresses, which never see the Retry, then hold at most this many places
/// for the connect timeout, and everyone else still gets in.
const HANDSHAKES_UNVALIDATED_MAX: usize = HANDSHAKES_MAX / 4;

/// Handshakes in progress from one IP address beyond which a sender is asked to prove its
/// address even when the node is not busy (a proven address goes on: clients and nodes on one
/// host legitimately open many connections at once; the global budget bounds them).
const HANDSHAKES_PER_ADDRESS_MAX: usize = 16;

/// Handshakes in progress per source IP address (see [`HANDSHAKES_PER_ADDRESS_MAX`]).
#[derive(Default)]
struct HandshakesByAddress(std::sync::Mutex<HashMap<IpAddr, usize>>);

/// One handshake's place under its address's share; given back when dropped.
struct AddressPlace {
    table: Arc<HandshakesByAddress>,
    ip: IpAddr,
}

impl HandshakesByAddress {
    /// A place for a handshake from `ip`, unless it already has its share in progress.
    fn take(self: &Arc<Self>, ip: IpAddr) -> Option<AddressPlace> {
        let mut map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let n = map.entry(ip).or_insert(0);
        if *n >= HANDSHAKES_PER_ADDRESS_MAX {
            return None;
        }
        *n += 1;
        Some(AddressPlace {
            table: self.clone(),
            ip,
        })
    }
}

impl Drop for AddressPlace {
    fn drop(&mut self) {
        let mut map = self.table.0.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = map.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                map.remove(&self.ip);
            }
        }
    }
}

/// Messages up to this size travel on the connection's framed stream; larger ones get their own.
pub const SMALL_MESSAGE_BYTES: usize = 64 * 1024;

/// Most bytes gathered into one write on the framed stream.
const BATCH_BYTES_MAX: usize = 1024 * 1024;

/// A deadline that never comes, for timeouts too large to add to the clock.
const FAR_FUTURE: Duration = Duration::from_secs(100 * 365 * 86_400);

/// A configured queue length or permit count, made usable by tokio (at least one, at most
/// what a semaphore holds), so no setting can make a constructor panic.
fn capacity(n: usize) -> usize {
    n.clamp(1, Semaphore::MAX_PERMITS)
}

/// Limits on everything the transport holds or waits for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Largest peer message, in bytes, sent or received on one stream. Larger incoming streams
    /// are stopped and dropped; larger outgoing messages are refused by
    /// [`Transport::send_message`].
    pub message_bytes_max: usize,
    /// Payloads waiting to be sent to one peer; beyond this, new ones are dropped.
    pub peer_queue_len: usize,
    /// Peers with an outgoing queue at once, and also incoming connections at once.
    pub peers_max: usize,
    /// How long dialing a peer, or accepting a peer's handshake, may take.
    pub connect_timeout: Duration,
    /// How long receiving or sending one whole message may take before the stream is abandoned.
    pub stream_timeout: Duration,
    /// A message still queued (not yet being written) this long after it was handed over is
    /// dropped. With `stream_timeout` it bounds how late a peer message can arrive: the data
    /// path's tombstone GC waits longer than that before it trusts that no old state of a key
    /// is still on its way.
    pub queue_age_max: Duration,
    /// Messages being read from (or written to) one connection at once. Reading more waits,
    /// which pushes back on the sender through QUIC flow control.
    pub streams_in_flight_max: usize,
    /// Received payloads waiting for the consumer of [`Inbound`]. When full, datagrams are
    /// dropped and message streams wait.
    pub inbound_queue_len: usize,
    /// How long [`Transport::shutdown`] waits for connections to close gracefully.
    pub shutdown_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            message_bytes_max: crate::protocol::DEFAULT_FRAME_BYTES_MAX,
            peer_queue_len: 8192,
            peers_max: 1024,
            connect_timeout: Duration::from_secs(3),
            stream_timeout: Duration::from_secs(30),
            queue_age_max: Duration::from_secs(30),
            streams_in_flight_max: 16,
            inbound_queue_len: 16384,
            shutdown_timeout: Duration::from_secs(2),
        }
    }
}

/// A payload received from a peer.
///
/// `peer` is the node id bound to the certificate the peer authenticated with: the only
/// trustworthy statement of who sent it. `from` is the remote address of the connection it came
/// on (for logs): because a transport dials from its listening socket, that is the peer's listen
/// address whenever the peer binds a specific IP.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Inbound {
    /// A QUIC datagram: unreliable, unordered, at most one packet.
    Datagram {
        /// The authenticated sender.
        peer: NodeId,
        /// The peer's remote address.
        from: SocketAddr,
        /// The payload.
        bytes: Bytes,
    },
    /// One whole message.
    Message {
        /// The authenticated sender.
        peer: NodeId,
        /// The peer's remote address.
        from: SocketAddr,
        /// The payload, at most [`Limits::message_bytes_max`] bytes.
        bytes: Vec<u8>,
    },
}

/// Why the transport could not start.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    /// [`Transport::bind`] was called outside a tokio runtime.
    #[error("the QUIC transport must be started inside a tokio runtime")]
    NoRuntime,
    /// The UDP socket could not be bound or set up.
    #[error("cannot bind QUIC endpoint on {addr}: {source}")]
    Bind {
        /// The requested listen address.
        addr: SocketAddr,
        /// The underlying error.
        source: std::io::Error,
    },
}

/// Why a payload was dropped instead of queued. Dropping is normal under loss or overload and
/// has already been logged; nothing else changed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    /// The transport has shut down.
    #[error("transport is shut down")]
    Closed,
    /// The queue to this peer is full (the peer is slow, or unreachable and being dialed).
    #[error("send queue to {to} is full")]
    QueueFull {
        /// The peer.
        to: SocketAddr,
    },
    /// Queues to [`Limits::peers_max`] other peers exist already.
    #[error("already sending to {max} peers; not opening a queue to {to}")]
    TooManyPeers {
        /// The peer.
        to: SocketAddr,
        /// The limit in force.
        max: usize,
    },
    /// The payload is larger than the limit for its kind: [`Limits::message_bytes_max`]
    /// for messages, the connection's current maximum datagram size for datagrams.
    #[error("{len}-byte payload to {to} exceeds the {max}-byte limit")]
    TooLarge {
        /// The peer.
        to: SocketAddr,
        /// Size of the payload.
        len: usize,
        /// The limit in force.
        max: usize,
    },
    /// The peer's connection does not accept datagrams.
    #[error("{to} does not accept datagrams")]
    DatagramsUnsupported {
        /// The peer.
        to: SocketAddr,
    },
}

/// A connection from a QUIC API client (ALPN `chorus-client/1`), handed to whoever called
/// [`Transport::serve_clients`]. It holds one of the transport's client places (in total and
/// for its source address) until dropped.
#[derive(Debug)]
pub struct ClientConnection {
    /// The connection, handshake done; the client presented no certificate (or any).
    pub conn: Connection,
    _slot: Ticket,
}

/// Where client connections go, and how many may be open at once.
type ClientSink = Arc<Mutex<Option<(mpsc::Sender<ClientConnection>, Arc<ConnTable>)>>>;

/// A payload waiting in a peer's queue.
enum Outbound {
    Datagram(Bytes),
    /// A message, the node it is for (checked against the peer's certificate), and when it was
    /// queued.
    Message(Bytes, Option<NodeId>, Instant),
}

/// One peer's queue, owned by the peer's task.
struct Peer {
    /// Distinguishes successive tasks for the same address.
    id: u64,
    queue: mpsc::Sender<Outbound>,
    /// The task's current connection, for sending datagrams without a queue hop.
    conn: Option<Connection>,
}

/// State shared by the transport handles and its tasks.
struct Shared {
    endpoint: Endpoint,
    client_config: ClientConfig,
    limits: Limits,
    local_addr: SocketAddr,
    runtime: tokio::runtime::Handle,
    peers: Mutex<HashMap<SocketAddr, Peer>>,
    next_peer_id: AtomicU64,
    closed: AtomicBool,
    /// Taken on close, so the [`Inbound`] channel ends once every task has.
    inbound: Mutex<Option<mpsc::Sender<Inbound>>>,
    /// Set by [`Transport::serve_clients`]; taken on close.
    clients: ClientSink,
    /// Where metrics go.
    recorder: Arc<dyn Recorder>,
}

impl Shared {
    fn peers(&self) -> MutexGuard<'_, HashMap<SocketAddr, Peer>> {
        self.peers.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn inbound_sender(&self) -> Option<mpsc::Sender<Inbound>> {
        self.inbound
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn set_conn(&self, to: SocketAddr, id: u64, conn: Option<Connection>) {
        if let Some(peer) = self.peers().get_mut(&to).filter(|p| p.id == id) {
            peer.conn = conn;
        }
    }

    fn remove_peer(&self, to: SocketAddr, id: u64) {
        let mut peers = self.peers();
        if peers.get(&to).is_some_and(|p| p.id == id) {
            peers.remove(&to);
        }
    }

    /// Closes the current connection to `to`, if any: the peer's task dials afresh for its next
    /// payload.
    fn reset_peer(&self, to: SocketAddr) {
        let conn = self.peers().get_mut(&to).and_then(|p| p.conn.take());
        if let Some(conn) = conn {
            debug!(peer = %to, "closing the connection to a peer's previous process");
            conn.close(CLOSE_PEER_RESTARTED, b"peer restarted");
        }
    }

    /// Stops accepting work: closes the endpoint and every connection, drops every queue (their
    /// tasks then end) and the inbound sender.
    fn close(&self) {
        if self.closed.swap(true, Ordering::SeqCst) {
            return;
        }
        self.endpoint.close(CLOSE_SHUTDOWN, b"shutdown");
        self.peers().clear();
        self.inbound
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        self.clients
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
    }
}

/// Closes the transport when the last [`Transport`] handle is dropped.
struct CloseGuard(Arc<Shared>);

impl Drop for CloseGuard {
    fn drop(&mut self) {
        self.0.close();
    }
}

/// The node's QUIC transport. Cheap to clone; all clones share one endpoint. Dropping the last
/// clone closes it, like [`Transport::shutdown`] without the wait.
#[derive(Clone)]
pub struct Transport {
    shared: Arc<Shared>,
    _guard: Arc<CloseGuard>,
}

impl std::fmt::Debug for Transport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Transport")
            .field("local_addr", &self.shared.local_addr)
            .finish()
    }
}

impl Transport {
    /// Binds a QUIC endpoint on `listen` that accepts peers with `server_config` and dials them
    /// with `client_config` (both from `tls::quinn_configs`), with a random stateless-reset key.
    ///
    /// Returns the transport and the channel of everything peers send. Must be called inside a
    /// tokio runtime; the transport's tasks run on that runtime. Records nothing in metrics
    /// (see [`Transport::bind_with_endpoint_config`]).
    pub fn bind(
        listen: SocketAddr,
        server_config: ServerConfig,
        client_config: ClientConfig,
        limits: Limits,
    ) -> Result<(Transport, mpsc::Receiver<Inbound>), TransportError> {
        Transport::bind_with_endpoint_config(
            listen,
            EndpointConfig::default(),
            server_config,
            client_config,
            limits,
            Arc::new(NoMetrics),
        )
    }

    /// Like [`Transport::bind`], with an explicit endpoint configuration. Pass
    /// `NodeCert::endpoint_config()` so that after a restart on the same address peers learn at
    /// once (by stateless reset) that their old connections are gone, instead of after the idle
    /// timeout. What the transport counts goes to `recorder`.
    pub fn bind_with_endpoint_config(
        listen: SocketAddr,
        endpoint_config: EndpointConfig,
        server_config: ServerConfig,
        client_config: ClientConfig,
        limits: Limits,
        recorder: Arc<dyn Recorder>,
    ) -> Result<(Transport, mpsc::Receiver<Inbound>), TransportError> {
        let runtime =
            tokio::runtime::Handle::try_current().map_err(|_| TransportError::NoRuntime)?;
        let bind_err = |source| TransportError::Bind {
            addr: listen,
            source,
        };
        let socket = std::net::UdpSocket::bind(listen).map_err(bind_err)?;
        let endpoint = Endpoint::new(
            endpoint_config,
            Some(server_config),
            socket,
            Arc::new(quinn::TokioRuntime),
        )
        .map_err(bind_err)?;
        let local_addr = endpoint.local_addr().map_err(bind_err)?;
        let (inbound_tx, inbound_rx) = mpsc::channel(capacity(limits.inbound_queue_len));
        let shared = Arc::new(Shared {
            endpoint: endpoint.clone(),
            client_config,
            limits,
            local_addr,
            runtime: runtime.clone(),
            peers: Mutex::new(HashMap::new()),
            next_peer_id: AtomicU64::new(0),
            closed: AtomicBool::new(false),
            inbound: Mutex::new(Some(inbound_tx.clone())),
            clients: Arc::new(Mutex::new(None)),
            recorder,
        });
        runtime.spawn(accept_loop(
            endpoint,
            inbound_tx,
            shared.clients.clone(),
            shared.limits.clone(),
            Arc::new(Semaphore::new(
                shared.limits.peers_max.min(Semaphore::MAX_PERMITS),
            )),
            shared.recorder.clone(),
        ));
        info!(addr = %local_addr, "QUIC transport listening");
        let guard = Arc::new(CloseGuard(shared.clone()));
        Ok((
            Transport {
                shared,
                _guard: guard,
            },
            inbound_rx,
        ))
    }

    /// From now on, hand connections that negotiated the client ALPN (`chorus-client/1`) to
    /// the returned channel, at most `max` open at once and `per_address_max` from one source
    /// address (more are closed at once, counted and logged). Before this is called, and after
    /// the transport closes, such connections are closed. The endpoint must have been bound
    /// with a server configuration that offers the client ALPN (`tls::node_quinn_configs`).
    pub fn serve_clients(
        &self,
        max: usize,
        per_address_max: usize,
    ) -> mpsc::Receiver<ClientConnection> {
        let (tx, rx) = mpsc::channel(64);
        let slots = ConnTable::new(capacity(max), capacity(per_address_max));
        *self
            .shared
            .clients
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some((tx, slots));
        rx
    }

    /// The address the endpoint is bound to (with the real port when bound to port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.shared.local_addr
    }

    /// The limits in force.
    pub fn limits(&self) -> &Limits {
        &self.shared.limits
    }

    /// The largest datagram the current connection to `to` can carry, or `None` when there is
    /// no live connection to it yet (or it takes no datagrams).
    pub fn max_datagram_size(&self, to: SocketAddr) -> Option<usize> {
        let conn = self.shared.peers().get(&to).and_then(|p| p.conn.clone())?;
        conn.max_datagram_size()
    }

    /// Sends `bytes` to `to` as one QUIC datagram, without blocking; see
    /// [`Transport::try_send_datagram`]. A dropped datagram is logged, not reported.
    pub fn send_datagram(&self, to: SocketAddr, bytes: Bytes) {
        let _ = self.try_send_datagram(to, bytes);
    }

    /// Drops the connection to the peer at `to` (its queue stays): call it when membership
    /// reports that the peer restarted, so that nothing more is sent into the previous
    /// process's connection, which would be lost until QUIC notices (a stateless reset, or the
    /// idle timeout). The next payload dials the new process.
    pub fn reset_peer(&self, to: SocketAddr) {
        self.shared.reset_peer(to);
    }

    /// Sends `bytes` to `to` as one message, without blocking; see
    /// [`Transport::try_send_message`]. A dropped message is logged, not reported.
    pub fn send_message(&self, to: SocketAddr, bytes: Vec<u8>) {
        let _ = self.try_send_message(to, bytes);
    }

    /// Sends `bytes` to node `node` at `to`, without blocking: like
    /// [`Transport::send_message`], but the message is dropped (and logged) if the certificate
    /// of whoever answers at `to` names another node.
    pub fn send_message_to(&self, node: Option<NodeId>, to: SocketAddr, bytes: Vec<u8>) {
        let _ = self.try_send_message_to(node, to, bytes);
    }

    /// Sends `bytes` to `to` as one QUIC datagram, without blocking, and says if it was dropped.
    ///
    /// Over a live connection it is handed to quinn at once; otherwise it is queued while the
    /// peer is dialed. Delivery is never guaranteed. A datagram larger than the connection's
    /// maximum datagram size is dropped with a warning.
    pub fn try_send_datagram(&self, to: SocketAddr, bytes: Bytes) -> Result<(), SendError> {
        if self.shared.closed.load(Ordering::Relaxed) {
            return Err(SendError::Closed);
        }
        let conn = self.shared.peers().get(&to).and_then(|p| p.conn.clone());
        if let Some(conn) = conn.filter(|c| c.close_reason().is_none()) {
            match send_datagram_on(&conn, to, bytes.clone()) {
                Err(DatagramFailure::Dropped(e)) => return Err(e),
                Err(DatagramFailure::ConnectionLost) => {} // queue it; the task redials
                Ok(()) => return Ok(()),
            }
        }
        self.enqueue(to, Outbound::Datagram(bytes))
    }

    /// Sends `bytes` to `to` as one message on its own unidirectional stream, without blocking,
    /// and says if it was dropped before being queued.
    ///
    /// The message is queued for the peer's task, which dials if needed. It arrives whole or
    /// not at all: if the connection fails after queueing it is dropped (logged at debug level).
    pub fn try_send_message(&self, to: SocketAddr, bytes: Vec<u8>) -> Result<(), SendError> {
        self.try_send_message_to(None, to, bytes)
    }

    /// [`Transport::try_send_message`] to a given node (see [`Transport::send_message_to`]).
    pub fn try_send_message_to(
        &self,
        node: Option<NodeId>,
        to: SocketAddr,
        bytes: Vec<u8>,
    ) -> Result<(), SendError> {
        if self.shared.closed.load(Ordering::Relaxed) {
            return Err(SendError::Closed);
        }
        let max = self.shared.limits.message_bytes_max;
        let len = bytes.len();
        if len > max {
            error!(peer = %to, len, max, "dropping an outgoing message over the size limit");
            return Err(SendError::TooLarge { to, len, max });
        }
        self.enqueue(
            to,
            Outbound::Message(Bytes::from(bytes), node, Instant::now()),
        )
    }

    /// Puts `item` on `to`'s queue, starting the peer's task if it has none.
    fn enqueue(&self, to: SocketAddr, item: Outbound) -> Result<(), SendError> {
        let shared = &self.shared;
        let mut peers = shared.peers();
        if shared.closed.load(Ordering::Relaxed) {
            return Err(SendError::Closed);
        }
        let mut item = item;
        if let Some(peer) = peers.get(&to) {
            match peer.queue.try_send(item) {
                Ok(()) => return Ok(()),
                Err(mpsc::error::TrySendError::Full(_)) => {
                    debug!(peer = %to, "send queue full; dropping payload");
                    return Err(SendError::QueueFull { to });
                }
                Err(mpsc::error::TrySendError::Closed(back)) => {
                    // The task ended (connection lost or dial failed); start afresh below.
                    item = back;
                    peers.remove(&to);
                }
            }
        }
        let max = shared.limits.peers_max;
        if peers.len() >= max {
            debug!(peer = %to, max, "too many peers; dropping payload");
            return Err(SendError::TooManyPeers { to, max });
        }
        let (queue, rx) = mpsc::channel(capacity(shared.limits.peer_queue_len));
        let id = shared.next_peer_id.fetch_add(1, Ordering::Relaxed);
        // A fresh queue has room for one item.
        if queue.try_send(item).is_err() {
            return Err(SendError::QueueFull { to });
        }
        peers.insert(
            to,
            Peer {
                id,
                queue,
                conn: None,
            },
        );
        shared.runtime.spawn(peer_task(shared.clone(), to, id, rx));
        Ok(())
    }

    /// Closes every connection and the endpoint, then waits up to
    /// [`Limits::shutdown_timeout`] for peers to be told. Afterwards sends fail with
    /// [`SendError::Closed`] and the [`Inbound`] channel ends once in-flight deliveries finish.
    pub async fn shutdown(&self) {
        self.shared.close();
        if timeout(
            self.shared.limits.shutdown_timeout,
            self.shared.endpoint.wait_idle(),
        )
        .await
        .is_err()
        {
            let addr = self.shared.local_addr;
            debug!(%addr, "QUIC endpoint did not drain before the shutdown timeout");
        }
        info!(addr = %self.shared.local_addr, "QUIC transport shut down");
    }

    /// Connections open on the endpoint, in both directions.
    #[cfg(test)]
    fn open_connections(&self) -> usize {
        self.shared.endpoint.open_connections()
    }
}

/// Why a datagram did not go out.
enum DatagramFailure {
    /// Dropped for good; already logged.
    Dropped(SendError),
    /// The connection is gone; a new one may carry it.
    ConnectionLost,
}

fn send_datagram_on(
    conn: &Connection,
    to: SocketAddr,
    bytes: Bytes,
) -> Result<(), DatagramFailure> {
    let len = bytes.len();
    match conn.max_datagram_size() {
        None => {
            warn!(peer = %to, "peer does not accept datagrams; dropping one");
            return Err(DatagramFailure::Dropped(SendError::DatagramsUnsupported {
                to,
            }));
        }
        Some(max) if len > max => {
            warn!(peer = %to, len, max, "dropping datagram larger than the connection allows");
            return Err(DatagramFailure::Dropped(SendError::TooLarge {
                to,
                len,
                max,
            }));
        }
        Some(_) => {}
    }
    match conn.send_datagram(bytes) {
        Ok(()) => Ok(()),
        Err(SendDatagramError::ConnectionLost(_)) => Err(DatagramFailure::ConnectionLost),
        Err(SendDatagramError::TooLarge) => {
            warn!(peer = %to, len, "dropping datagram larger than the connection allows");
            Err(DatagramFailure::Dropped(SendError::TooLarge {
                to,
                len,
                max: len.saturating_sub(1),
            }))
        }
        Err(SendDatagramError::UnsupportedByPeer | SendDatagramError::Disabled) => {
            warn!(peer = %to, "peer does not accept datagrams; dropping one");
            Err(DatagramFailure::Dropped(SendError::DatagramsUnsupported {
                to,
            }))
        }
    }
}

/// Why a peer-protocol connection's certificate is not acceptable.
enum PeerCertError {
    /// No node id can be derived from it.
    NoIdentity(String),
    /// It is not a node certificate.
    NotANode(String),
}

/// The node id bound to the certificate a connection's peer authenticated with, which must be
/// a node certificate.
fn peer_node(conn: &Connection) -> Result<NodeId, PeerCertError> {
    let identity = conn
        .peer_identity()
        .ok_or_else(|| PeerCertError::NoIdentity("the peer presented no certificate".to_owned()))?;
    let chain = identity
        .downcast::<Vec<rustls::pki_types::CertificateDer<'static>>>()
        .map_err(|_| PeerCertError::NoIdentity("unexpected peer identity type".to_owned()))?;
    let leaf = chain
        .first()
        .ok_or_else(|| PeerCertError::NoIdentity("empty certificate chain".to_owned()))?;
    peer_role_check(leaf).map_err(PeerCertError::NotANode)?;
    node_id_of(leaf).map_err(|e| PeerCertError::NoIdentity(e.to_string()))
}

/// Why dialing a peer failed.
#[derive(Debug, thiserror::Error)]
enum DialError {
    #[error("cannot start connecting: {0}")]
    Connect(#[from] quinn::ConnectError),
    #[error("handshake failed: {0}")]
    Handshake(#[from] ConnectionError),
    #[error("handshake timed out after {0:?}")]
    Timeout(Duration),
}

async fn dial(shared: &Shared, to: SocketAddr) -> Result<Connection, DialError> {
    let connecting =
        shared
            .endpoint
            .connect_with(shared.client_config.clone(), to, NODE_SERVER_NAME)?;
    let limit = shared.limits.connect_timeout;
    match timeout(limit, connecting).await {
        Ok(conn) => Ok(conn?),
        Err(_) => Err(DialError::Timeout(limit)),
    }
}

/// The connection a peer task currently uses.
struct Live {
    conn: Connection,
    /// Whom the peer's certificate names.
    node: NodeId,
    /// The framed stream for small messages, opened on first use.
    framed: Option<quinn::SendStream>,
}

/// Owns the queue to one peer: dials on demand, sends, and ends when the connection is lost
/// with nothing queued, when dialing fails, or when the transport closes.
async fn peer_task(shared: Arc<Shared>, to: SocketAddr, id: u64, mut rx: mpsc::Receiver<Outbound>) {
    let writes = Arc::new(Semaphore::new(capacity(
        shared.limits.streams_in_flight_max,
    )));
    let mut live: Option<Live> = None;
    let mut batch: Vec<u8> = Vec::new();
    loop {
        let item = match &live {
            Some(l) => tokio::select! {
                item = rx.recv() => item,
                reason = l.conn.closed() => {
                    debug!(peer = %to, %reason, "connection to peer lost");
                    live = None;
                    shared.set_conn(to, id, None);
                    if rx.is_empty() {
                        break;
                    }
                    continue;
                }
            },
            None => rx.recv().await,
        };
        let Some(item) = item else { break };
        if live
            .as_ref()
            .is_some_and(|l| l.conn.close_reason().is_some())
        {
            live = None;
        }
        if live.is_none() {
            match dial(&shared, to).await {
                Ok(conn) => {
                    let node = match peer_node(&conn) {
                        Ok(n) => n,
                        Err(PeerCertError::NoIdentity(error)) => {
                            warn!(peer = %to, %error, "peer certificate yields no node id; closing");
                            conn.close(CLOSE_NO_IDENTITY, b"no node id");
                            shared.remove_peer(to, id);
                            return;
                        }
                        Err(PeerCertError::NotANode(error)) => {
                            refuse_not_a_node(&*shared.recorder, &conn, to, &error);
                            shared.remove_peer(to, id);
                            return;
                        }
                    };
                    debug!(peer = %to, %node, "connected to peer");
                    if let Some(inbound) = shared.inbound_sender() {
                        // The peer may also send to us on this connection.
                        shared.runtime.spawn(serve_connection(
                            conn.clone(),
                            inbound,
                            shared.limits.clone(),
                            None,
                            shared.recorder.clone(),
                        ));
                    }
                    shared.set_conn(to, id, Some(conn.clone()));
                    live = Some(Live {
                        conn,
                        node,
                        framed: None,
                    });
                }
                Err(error) => {
                    // Unregister first, so the next send starts a fresh dial.
                    shared.remove_peer(to, id);
                    rx.close();
                    let dropped = rx.len() + 1;
                    debug!(peer = %to, %error, dropped, "cannot reach peer; dropping payloads");
                    return;
                }
            }
        }
        let Some(l) = live.as_mut() else { continue };
        let max_age = shared.limits.queue_age_max;
        // Take this item and everything already queued behind it: small messages go out in
        // one write on the framed stream.
        let mut next = Some(item);
        batch.clear();
        let mut framed_count = 0usize;
        while let Some(item) = next.take() {
            match item {
                Outbound::Datagram(bytes) => {
                    // Dropped datagrams are logged inside; a lost connection shows up above.
                    let _ = send_datagram_on(&l.conn, to, bytes);
                }
                Outbound::Message(bytes, _, queued) if queued.elapsed() > max_age => {
                    debug!(peer = %to, len = bytes.len(), "message queued too long; dropped");
                }
                Outbound::Message(bytes, Some(want), _) if want != l.node => {
                    warn!(
                        peer = %to, expected = %want, found = %l.node,
                        "the node at this address is not the one addressed; dropping a message"
                    );
                    let _ = bytes;
                }
                Outbound::Message(bytes, _, _) if bytes.len() <= SMALL_MESSAGE_BYTES => {
                    batch.extend_from_slice(&(bytes.len() as u32).to_be_bytes());
                    batch.extend_from_slice(&bytes);
                    framed_count += 1;
                }
                Outbound::Message(bytes, _, queued) => {
                    // Its own stream, in its own task: waiting for a stream slot must not hold
                    // up the small messages behind it.
                    let (conn, writes) = (l.conn.clone(), writes.clone());
                    let stream_timeout = shared.limits.stream_timeout;
                    shared.runtime.spawn(async move {
                        if let Ok(permit) = writes.acquire_owned().await {
                            if queued.elapsed() > max_age {
                                debug!(peer = %to, len = bytes.len(), "message waited too long for a stream; dropped");
                                return;
                            }
                            write_message(conn, to, bytes, stream_timeout, permit).await;
                        }
                    });
                }
            }
            if batch.len() < BATCH_BYTES_MAX {
                next = rx.try_recv().ok();
            }
        }
        if framed_count > 0 {
            write_framed(l, to, &batch, framed_count, shared.limits.stream_timeout).await;
        }
    }
    shared.remove_peer(to, id);
    if !rx.is_empty() {
        debug!(peer = %to, dropped = rx.len(), "dropping payloads queued to peer");
    }
}

/// Writes a batch of frames on the connection's framed stream, opening it if needed. On
/// failure the stream is reset (the peer drops a partial frame) and reopened next time; the
/// batch is lost, which callers tolerate like any lost message.
async fn write_framed(l: &mut Live, to: SocketAddr, batch: &[u8], frames: usize, limit: Duration) {
    if l.framed.is_none() {
        match timeout(limit, l.conn.open_uni()).await {
            Ok(Ok(mut send)) => {
                if send.write_all(&[STREAM_FRAMED]).await.is_err() {
                    debug!(peer = %to, frames, "cannot start the framed stream; dropping messages");
                    return;
                }
                l.framed = Some(send);
            }
            Ok(Err(error)) => {
                debug!(peer = %to, frames, %error, "cannot open the framed stream; dropping messages");
                return;
            }
            Err(_) => {
                debug!(peer = %to, frames, "timed out opening the framed stream; dropping messages");
                return;
            }
        }
    }
    let Some(send) = l.framed.as_mut() else {
        return;
    };
    match timeout(limit, send.write_all(batch)).await {
        Ok(Ok(())) => {}
        Ok(Err(error)) => {
            let _ = send.reset(STREAM_TIMEOUT);
            l.framed = None;
            debug!(peer = %to, frames, %error, "framed stream failed; dropping messages");
        }
        Err(_) => {
            let _ = send.reset(STREAM_TIMEOUT);
            l.framed = None;
            debug!(peer = %to, frames, "framed stream write timed out; dropping messages");
        }
    }
}

/// Writes one message on a new unidirectional stream; on any failure the stream is reset so the
/// peer never sees a truncated message as whole.
async fn write_message(
    conn: Connection,
    to: SocketAddr,
    bytes: Bytes,
    stream_timeout: Duration,
    _permit: OwnedSemaphorePermit,
) {
    let now = Instant::now();
    let deadline = now.checked_add(stream_timeout).unwrap_or(now + FAR_FUTURE);
    let len = bytes.len();
    let mut send = match timeout_at(deadline, conn.open_uni()).await {
        Ok(Ok(send)) => send,
        Ok(Err(error)) => {
            debug!(peer = %to, len, %error, "cannot open stream; dropping message");
            return;
        }
        Err(_) => {
            debug!(peer = %to, len, "timed out opening stream; dropping message");
            return;
        }
    };
    let mut header = Vec::with_capacity(1 + len);
    header.push(STREAM_SINGLE);
    header.extend_from_slice(&bytes);
    match timeout_at(deadline, send.write_chunk(Bytes::from(header))).await {
        Ok(Ok(())) => {
            // Quinn keeps sending (and retransmitting) the finished stream after it is dropped.
            let _ = send.finish();
        }
        Ok(Err(error)) => {
            let _ = send.reset(STREAM_TIMEOUT);
            debug!(peer = %to, len, %error, "message stream failed; dropping message");
        }
        Err(_) => {
            let _ = send.reset(STREAM_TIMEOUT);
            debug!(peer = %to, len, ?stream_timeout, "message stream timed out; dropped");
        }
    }
}

/// Accepts incoming connections until the endpoint closes. Each handshake runs in its own task,
/// so a slow or hostile client cannot stall the loop.
async fn accept_loop(
    endpoint: Endpoint,
    inbound: mpsc::Sender<Inbound>,
    clients: ClientSink,
    limits: Limits,
    slots: Arc<Semaphore>,
    recorder: Arc<dyn Recorder>,
) {
    // Handshakes in progress have their own, smaller budget: a stranger without a certificate
    // can hold a handshake slot for the connect timeout at most, never a connection slot.
    let handshakes = Arc::new(Semaphore::new(HANDSHAKES_MAX));
    let by_address = Arc::new(HandshakesByAddress::default());
    let (mut refused, mut retried) = (0u64, 0u64);
    while let Some(incoming) = endpoint.accept().await {
        let remote = incoming.remote_address();
        let busy = HANDSHAKES_MAX - handshakes.available_permits();
        let place = by_address.take(remote.ip());
        let unproven = !incoming.remote_address_validated() && incoming.may_retry();
        if unproven && (busy >= HANDSHAKES_UNVALIDATED_MAX || place.is_none()) {
            retried += 1;
            if retried.is_power_of_two() {
                debug!(peer = %remote, retried, busy, "handshakes under load: asking senders to prove their address");
            }
            // Only fails for a validated address, which `unproven` excludes.
            let _ = incoming.retry();
            continue;
        }
        let Ok(pending) = handshakes.clone().try_acquire_owned() else {
            refused += 1;
            if refused.is_power_of_two() {
                warn!(peer = %remote, refused, "too many handshakes in progress; refusing");
            }
            incoming.refuse();
            continue;
        };
        let inbound = inbound.clone();
        let limits = limits.clone();
        let slots = slots.clone();
        let clients = clients.clone();
        let recorder = recorder.clone();
        tokio::spawn(async move {
            let handshake = async { incoming.accept()?.await };
            let result = timeout(limits.connect_timeout, handshake).await;
            drop((pending, place));
            match result {
                Ok(Ok(conn)) if alpn_of(&conn).as_deref() == Some(CLIENT_ALPN) => {
                    hand_over_client(conn, &clients, &*recorder);
                }
                Ok(Ok(conn)) => {
                    let Ok(slot) = slots.try_acquire_owned() else {
                        warn_limited!("connections", peer = %remote, max = limits.peers_max, "too many peer connections; closing one");
                        conn.close(CLOSE_SHUTDOWN, b"too many connections");
                        return;
                    };
                    debug!(peer = %remote, "accepted peer connection");
                    serve_connection(conn, inbound, limits, Some(slot), recorder).await;
                }
                Ok(Err(error)) => {
                    // Unknown CA, missing client certificate, wrong ALPN, ...
                    warn_limited!("connections", peer = %remote, %error, "incoming handshake failed");
                }
                Err(_) => {
                    let timeout = limits.connect_timeout;
                    info!(peer = %remote, ?timeout, "incoming handshake timed out");
                }
            }
        });
    }
    debug!("accept loop ended: endpoint closed");
}

/// The ALPN protocol a connection negotiated.
fn alpn_of(conn: &Connection) -> Option<Vec<u8>> {
    conn.handshake_data()?
        .downcast::<quinn::crypto::rustls::HandshakeData>()
        .ok()?
        .protocol
}

/// Gives a client connection to the client API, or closes it when none serves or too many are
/// open.
fn hand_over_client(conn: Connection, clients: &ClientSink, recorder: &dyn Recorder) {
    let remote = conn.remote_address();
    let sink = clients
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .clone();
    let Some((tx, slots)) = sink else {
        info!(client = %remote, "closing a client connection: this node serves no QUIC clients");
        conn.close(CLOSE_SHUTDOWN, b"no client API");
        return;
    };
    let slot = match slots.admit(remote.ip(), false) {
        Ok(slot) => slot,
        Err(why) => {
            recorder.client_connection_refused(why.label());
            warn_limited!("connections", client = %remote, reason = why.label(), "refusing a QUIC client connection: {why}");
            conn.close(CLOSE_SHUTDOWN, b"too many connections");
            return;
        }
    };
    if let Err(e) = tx.try_send(ClientConnection { conn, _slot: slot }) {
        let conn = match e {
            mpsc::error::TrySendError::Full(c) | mpsc::error::TrySendError::Closed(c) => c.conn,
        };
        warn_limited!("connections", client = %remote, "client API not keeping up with new connections; closing one");
        conn.close(CLOSE_SHUTDOWN, b"busy");
    }
}

/// Delivers a connection's datagrams and unidirectional streams to `inbound` until it closes.
async fn serve_connection(
    conn: Connection,
    inbound: mpsc::Sender<Inbound>,
    limits: Limits,
    _slot: Option<OwnedSemaphorePermit>,
    recorder: Arc<dyn Recorder>,
) {
    let from = conn.remote_address();
    let peer = match peer_node(&conn) {
        Ok(n) => n,
        Err(PeerCertError::NoIdentity(error)) => {
            warn!(peer = %from, %error, "peer certificate yields no node id; closing");
            conn.close(CLOSE_NO_IDENTITY, b"no node id");
            return;
        }
        Err(PeerCertError::NotANode(error)) => {
            refuse_not_a_node(&*recorder, &conn, from, &error);
            return;
        }
    };
    let mut meter = recorder.meter_peer(&conn);
    let datagrams = async {
        loop {
            match conn.read_datagram().await {
                Ok(bytes) => match inbound.try_send(Inbound::Datagram { peer, from, bytes }) {
                    Ok(()) => {}
                    Err(mpsc::error::TrySendError::Full(_)) => {
                        debug!(peer = %from, "inbound queue full; dropping datagram");
                    }
                    Err(mpsc::error::TrySendError::Closed(_)) => return,
                },
                Err(_) => return,
            }
        }
    };
    let streams = async {
        let reads = Arc::new(Semaphore::new(capacity(limits.streams_in_flight_max)));
        loop {
            let Ok(permit) = reads.clone().acquire_owned().await else {
                return;
            };
            match conn.accept_uni().await {
                Ok(recv) => {
                    tokio::spawn(read_stream(
                        recv,
                        peer,
                        from,
                        inbound.clone(),
                        limits.clone(),
                        permit,
                    ));
                }
                Err(_) => return,
            }
        }
    };
    // The connection's handling ends when reading ends, as before metering; the meter runs
    // beside it, and its drop adds the last bytes.
    let metering = async {
        meter.until_closed().await;
        std::future::pending::<std::convert::Infallible>().await
    };
    tokio::select! {
        _ = async { tokio::join!(datagrams, streams) } => {}
        never = metering => match never {},
    }
    drop(meter);
    let reason = conn.close_reason();
    debug!(peer = %from, ?reason, "peer connection closed");
}

/// Reads one stream: a single whole message, or a sequence of frames. Drops (and logs)
/// oversized, broken, unknown or too-slow streams.
async fn read_stream(
    mut recv: RecvStream,
    peer: NodeId,
    from: SocketAddr,
    inbound: mpsc::Sender<Inbound>,
    limits: Limits,
    _permit: OwnedSemaphorePermit,
) {
    let mut kind = [0u8; 1];
    match timeout(limits.stream_timeout, recv.read_exact(&mut kind)).await {
        Ok(Ok(())) => {}
        Ok(Err(error)) => {
            info!(peer = %from, %error, "dropping a stream that ended before its kind byte");
            return;
        }
        Err(_) => {
            let _ = recv.stop(STREAM_TIMEOUT);
            warn!(peer = %from, "dropping a stream that sent nothing");
            return;
        }
    }
    match kind[0] {
        STREAM_SINGLE => read_message(recv, peer, from, inbound, limits).await,
        STREAM_FRAMED => read_frames(recv, peer, from, inbound, limits).await,
        other => {
            let _ = recv.stop(STREAM_TOO_LARGE);
            warn!(peer = %from, kind = other, "dropping a stream of unknown kind");
        }
    }
}

/// Reads the rest of a single-message stream and delivers it.
async fn read_message(
    mut recv: RecvStream,
    peer: NodeId,
    from: SocketAddr,
    inbound: mpsc::Sender<Inbound>,
    limits: Limits,
) {
    let max = limits.message_bytes_max;
    match timeout(limits.stream_timeout, recv.read_to_end(max)).await {
        Ok(Ok(bytes)) => {
            if inbound
                .send(Inbound::Message { peer, from, bytes })
                .await
                .is_err()
            {
                debug!(peer = %from, "transport closed; dropping received message");
            }
        }
        Ok(Err(ReadToEndError::TooLong)) => {
            let _ = recv.stop(STREAM_TOO_LARGE);
            warn!(peer = %from, max, "dropping message stream over the size limit");
        }
        Ok(Err(ReadToEndError::Read(error))) => {
            info!(peer = %from, %error, "dropping broken message stream");
        }
        Err(_) => {
            let _ = recv.stop(STREAM_TIMEOUT);
            let timeout = limits.stream_timeout;
            warn!(peer = %from, ?timeout, "dropping message stream that took too long");
        }
    }
}

/// Reads length-prefixed frames until the stream ends, delivering each. A frame over the limit,
/// or one that starts and does not complete in time, ends the stream (and is logged).
async fn read_frames(
    mut recv: RecvStream,
    peer: NodeId,
    from: SocketAddr,
    inbound: mpsc::Sender<Inbound>,
    limits: Limits,
) {
    let max = limits.message_bytes_max.min(SMALL_MESSAGE_BYTES);
    loop {
        let mut len = [0u8; 4];
        match recv.read_exact(&mut len).await {
            Ok(()) => {}
            Err(quinn::ReadExactError::FinishedEarly(0)) => return,
            Err(error) => {
                debug!(peer = %from, %error, "framed stream ended");
                return;
            }
        }
        let len = u32::from_be_bytes(len) as usize;
        if len > max {
            let _ = recv.stop(STREAM_TOO_LARGE);
            warn!(peer = %from, len, max, "dropping a framed stream with an oversized frame");
            return;
        }
        let mut bytes = vec![0u8; len];
        match timeout(limits.stream_timeout, recv.read_exact(&mut bytes)).await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => {
                info!(peer = %from, %error, "dropping a framed stream with a truncated frame");
                return;
            }
            Err(_) => {
                let _ = recv.stop(STREAM_TIMEOUT);
                warn!(peer = %from, "dropping a framed stream whose frame took too long");
                return;
            }
        }
        if inbound
            .send(Inbound::Message { peer, from, bytes })
            .await
            .is_err()
        {
            debug!(peer = %from, "transport closed; dropping received messages");
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::tls::{quinn_configs, ClusterCa, NodeCert, PEER_ALPN};

    const TEST_TIMEOUT: Duration = Duration::from_secs(30);

    fn loopback() -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], 0))
    }

    fn test_limits() -> Limits {
        Limits {
            connect_timeout: Duration::from_millis(500),
            ..Limits::default()
        }
    }

    fn start(node: &NodeCert, limits: Limits) -> (Transport, mpsc::Receiver<Inbound>) {
        start_at(node, loopback(), limits).expect("bind")
    }

    fn start_at(
        node: &NodeCert,
        addr: SocketAddr,
        limits: Limits,
    ) -> Result<(Transport, mpsc::Receiver<Inbound>), TransportError> {
        let (server, client) = quinn_configs(node, &[PEER_ALPN]).expect("configs");
        Transport::bind_with_endpoint_config(
            addr,
            node.endpoint_config(),
            server,
            client,
            limits,
            Arc::new(NoMetrics),
        )
    }

    /// Waits for the next inbound payload, or `None` after `wait`.
    async fn next(rx: &mut mpsc::Receiver<Inbound>, wait: Duration) -> Option<Inbound> {
        timeout(wait, rx.recv()).await.ok().flatten()
    }

    /// Waits for the next message whose bytes satisfy `want`, skipping others.
    async fn wait_message(
        rx: &mut mpsc::Receiver<Inbound>,
        want: impl Fn(&[u8]) -> bool,
    ) -> (SocketAddr, Vec<u8>) {
        loop {
            match next(rx, Duration::from_secs(5)).await {
                Some(Inbound::Message { from, bytes, .. }) if want(&bytes) => return (from, bytes),
                Some(_) => {}
                None => panic!("expected message did not arrive"),
            }
        }
    }

    async fn bounded<F: std::future::Future<Output = ()>>(test: F) {
        timeout(TEST_TIMEOUT, test).await.expect("test timed out");
    }

    /// A message that waited in the queue longer than `queue_age_max` is never delivered late:
    /// with a zero bound every message has waited too long by the time it is written.
    #[tokio::test]
    async fn messages_queued_too_long_are_dropped_not_delivered_late() {
        bounded(async {
            let ca = ClusterCa::generate("test").unwrap();
            let (a_cert, b_cert) = (ca.issue_node("a").unwrap(), ca.issue_node("b").unwrap());
            let stale = Limits {
                queue_age_max: Duration::ZERO,
                ..test_limits()
            };
            let (a, _a_rx) = start(&a_cert, stale);
            let (b, mut b_rx) = start(&b_cert, test_limits());
            a.try_send_message(b.local_addr(), b"small".to_vec())
                .unwrap();
            a.try_send_message(b.local_addr(), vec![7; 200_000])
                .unwrap();
            // Datagrams are not held back: the connection works.
            a.try_send_datagram(b.local_addr(), Bytes::from_static(b"ping"))
                .unwrap();
            let mut datagram = false;
            while let Some(got) = next(&mut b_rx, Duration::from_secs(2)).await {
                match got {
                    Inbound::Message { bytes, .. } => {
                        panic!("a stale message arrived: {} bytes", bytes.len())
                    }
                    Inbound::Datagram { .. } => datagram = true,
                }
            }
            assert!(datagram, "the peer was reachable");
        })
        .await;
    }

    #[tokio::test]
    async fn peers_exchange_datagrams_and_messages_both_ways() {
        bounded(async {
            let ca = ClusterCa::generate("test").unwrap();
            let (a_cert, b_cert) = (ca.issue_node("a").unwrap(), ca.issue_node("b").unwrap());
            let (a_id, b_id) = (a_cert.node_id().unwrap(), b_cert.node_id().unwrap());
            let (a, mut a_rx) = start(&a_cert, test_limits());
            let (b, mut b_rx) = start(&b_cert, test_limits());

            a.try_send_message(b.local_addr(), b"hello b".to_vec())
                .unwrap();
            let got = next(&mut b_rx, Duration::from_secs(5)).await;
            assert_eq!(
                got,
                Some(Inbound::Message {
                    peer: a_id,
                    from: a.local_addr(),
                    bytes: b"hello b".to_vec()
                })
            );
            a.try_send_datagram(b.local_addr(), Bytes::from_static(b"ping"))
                .unwrap();
            let got = next(&mut b_rx, Duration::from_secs(5)).await;
            assert_eq!(
                got,
                Some(Inbound::Datagram {
                    peer: a_id,
                    from: a.local_addr(),
                    bytes: Bytes::from_static(b"ping")
                })
            );

            b.try_send_datagram(a.local_addr(), Bytes::from_static(b"pong"))
                .unwrap();
            let got = next(&mut a_rx, Duration::from_secs(5)).await;
            assert_eq!(
                got,
                Some(Inbound::Datagram {
                    peer: b_id,
                    from: b.local_addr(),
                    bytes: Bytes::from_static(b"pong")
                })
            );
            let big: Vec<u8> = (0..3_000_000u32).map(|i| i as u8).collect();
            b.try_send_message(a.local_addr(), big.clone()).unwrap();
            let (from, bytes) = wait_message(&mut a_rx, |_| true).await;
            assert_eq!(from, b.local_addr());
            assert_eq!(bytes, big);

            // Many sends reuse one connection per direction; small messages keep their order
            // on the framed stream.
            for i in 0..5000u32 {
                a.try_send_message(b.local_addr(), i.to_be_bytes().to_vec())
                    .unwrap();
            }
            for i in 0..5000u32 {
                let (_, bytes) = wait_message(&mut b_rx, |_| true).await;
                assert_eq!(bytes, i.to_be_bytes().to_vec());
            }
            // Addressed to the wrong node: dropped; to the right one: delivered.
            a.try_send_message_to(Some(a_id), b.local_addr(), b"for a".to_vec())
                .unwrap();
            a.try_send_message_to(Some(b_id), b.local_addr(), b"for b".to_vec())
                .unwrap();
            let (_, bytes) = wait_message(&mut b_rx, |_| true).await;
            assert_eq!(bytes, b"for b");
            assert_eq!(
                a.open_connections(),
                2,
                "one outgoing and one incoming connection"
            );
            assert!(a
                .max_datagram_size(b.local_addr())
                .is_some_and(|m| m > 1000));

            a.shutdown().await;
            b.shutdown().await;
        })
        .await;
    }

    #[tokio::test]
    async fn oversized_datagram_is_dropped_not_sent() {
        bounded(async {
            let ca = ClusterCa::generate("test").unwrap();
            let (a, _a_rx) = start(&ca.issue_node("a").unwrap(), test_limits());
            let (b, mut b_rx) = start(&ca.issue_node("b").unwrap(), test_limits());
            a.try_send_message(b.local_addr(), b"connect".to_vec())
                .unwrap();
            wait_message(&mut b_rx, |m| m == b"connect").await;

            let max = a.max_datagram_size(b.local_addr()).unwrap();
            let err = a
                .try_send_datagram(b.local_addr(), Bytes::from(vec![7u8; max + 1]))
                .unwrap_err();
            assert!(matches!(err, SendError::TooLarge { .. }), "{err}");
            a.try_send_datagram(b.local_addr(), Bytes::from(vec![8u8; max]))
                .unwrap();
            match next(&mut b_rx, Duration::from_secs(5)).await {
                Some(Inbound::Datagram { bytes, .. }) => assert_eq!(bytes.len(), max),
                other => panic!("unexpected {other:?}"),
            }
            let limit = a.limits().message_bytes_max;
            let err = a
                .try_send_message(b.local_addr(), vec![0u8; limit + 1])
                .unwrap_err();
            assert!(matches!(err, SendError::TooLarge { .. }), "{err}");
        })
        .await;
    }

    #[tokio::test]
    async fn foreign_ca_is_refused_and_good_peers_still_work() {
        bounded(async {
            let ca = ClusterCa::generate("cluster").unwrap();
            let rogue_ca = ClusterCa::generate("cluster").unwrap(); // same name, other key
            let (a, mut a_rx) = start(&ca.issue_node("a").unwrap(), test_limits());
            let (rogue, mut rogue_rx) = start(&rogue_ca.issue_node("a").unwrap(), test_limits());

            for i in 0..20u8 {
                let _ = rogue.try_send_message(a.local_addr(), vec![i]);
                rogue.send_datagram(a.local_addr(), Bytes::from(vec![i]));
                let _ = a.try_send_message(rogue.local_addr(), vec![i]);
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            assert_eq!(next(&mut a_rx, Duration::from_secs(1)).await, None);
            assert_eq!(next(&mut rogue_rx, Duration::from_millis(100)).await, None);

            let (b, _b_rx) = start(&ca.issue_node("b").unwrap(), test_limits());
            b.try_send_message(a.local_addr(), b"still fine".to_vec())
                .unwrap();
            let (from, _) = wait_message(&mut a_rx, |m| m == b"still fine").await;
            assert_eq!(from, b.local_addr());
        })
        .await;
    }

    /// A raw quinn client endpoint with the given rustls client configuration.
    fn raw_client(crypto: rustls::ClientConfig) -> Endpoint {
        let mut endpoint = Endpoint::client(loopback()).unwrap();
        let quic = quinn::crypto::rustls::QuicClientConfig::try_from(crypto).unwrap();
        endpoint.set_default_client_config(ClientConfig::new(Arc::new(quic)));
        endpoint
    }

    #[tokio::test]
    async fn client_without_certificate_or_with_wrong_alpn_is_refused() {
        bounded(async {
            let ca = ClusterCa::generate("cluster").unwrap();
            let (a, mut a_rx) = start(&ca.issue_node("a").unwrap(), test_limits());
            let provider = Arc::new(rustls::crypto::ring::default_provider());
            let mut roots = rustls::RootCertStore::empty();
            roots.add(ca.cert_der().clone()).unwrap();

            let mut no_cert = rustls::ClientConfig::builder_with_provider(provider.clone())
                .with_protocol_versions(&[&rustls::version::TLS13])
                .unwrap()
                .with_root_certificates(roots)
                .with_no_client_auth();
            no_cert.alpn_protocols = vec![PEER_ALPN.to_vec()];
            let client = raw_client(no_cert);
            let result = async {
                let conn = client.connect(a.local_addr(), NODE_SERVER_NAME)?.await?;
                // TLS 1.3: the client may finish before the server rejects its (missing)
                // certificate, so also try to use the connection.
                let mut send = conn.open_uni().await?;
                send.write_all(b"sneaky").await?;
                send.finish()?;
                conn.closed().await;
                Ok::<_, Box<dyn std::error::Error>>(())
            };
            let _ = timeout(Duration::from_secs(3), result).await;
            assert_eq!(next(&mut a_rx, Duration::from_millis(500)).await, None);

            // A proper node certificate but the wrong protocol.
            let node = ca.issue_node("c").unwrap();
            let (_, client_config) = quinn_configs(&node, &[b"not-chorus"]).unwrap();
            let client = Endpoint::client(loopback()).unwrap();
            let conn = client
                .connect_with(client_config, a.local_addr(), NODE_SERVER_NAME)
                .unwrap();
            let result = timeout(Duration::from_secs(3), conn).await.unwrap();
            assert!(result.is_err(), "ALPN mismatch must fail the handshake");
        })
        .await;
    }

    #[tokio::test]
    async fn node_endpoint_hands_clients_over_and_still_refuses_uncertified_peers() {
        use crate::runtime::tls::node_quinn_configs;
        bounded(async {
            let ca = ClusterCa::generate("cluster").unwrap();
            let node = ca.issue_node("a").unwrap();
            let (server, client_cfg) = node_quinn_configs(&node).unwrap();
            let (a, mut a_rx) = Transport::bind_with_endpoint_config(
                loopback(),
                node.endpoint_config(),
                server,
                client_cfg,
                test_limits(),
                Arc::new(NoMetrics),
            )
            .unwrap();
            let mut clients = a.serve_clients(4, 4);
            let provider = Arc::new(rustls::crypto::ring::default_provider());
            let mut roots = rustls::RootCertStore::empty();
            roots.add(ca.cert_der().clone()).unwrap();
            let no_cert = |alpn: &[u8]| {
                let mut c = rustls::ClientConfig::builder_with_provider(provider.clone())
                    .with_protocol_versions(&[&rustls::version::TLS13])
                    .unwrap()
                    .with_root_certificates(roots.clone())
                    .with_no_client_auth();
                c.alpn_protocols = vec![alpn.to_vec()];
                c
            };

            // A client without a certificate, speaking the client ALPN: handed over.
            let client = raw_client(no_cert(CLIENT_ALPN));
            let conn = client
                .connect(a.local_addr(), NODE_SERVER_NAME)
                .unwrap()
                .await
                .unwrap();
            let handed = timeout(Duration::from_secs(3), clients.recv())
                .await
                .unwrap()
                .expect("a client connection");
            assert_eq!(
                handed.conn.remote_address().port(),
                client.local_addr().unwrap().port()
            );
            drop((conn, handed));

            // The same without a certificate but claiming to be a peer: closed, nothing read.
            let client = raw_client(no_cert(PEER_ALPN));
            let conn = client
                .connect(a.local_addr(), NODE_SERVER_NAME)
                .unwrap()
                .await
                .unwrap();
            if let Ok(mut send) = conn.open_uni().await {
                let _ = send.write_all(b"Sneaky").await;
                let _ = send.finish();
            }
            let reason = timeout(Duration::from_secs(3), conn.closed())
                .await
                .unwrap();
            assert!(
                matches!(reason, ConnectionError::ApplicationClosed(_)),
                "{reason:?}"
            );
            assert_eq!(next(&mut a_rx, Duration::from_millis(300)).await, None);

            // Real peers still work (with certificates, dialing with the peer ALPN only).
            let (b, _b_rx) = start(&ca.issue_node("b").unwrap(), test_limits());
            b.send_message(a.local_addr(), b"hello".to_vec());
            let got = next(&mut a_rx, Duration::from_secs(5)).await;
            assert!(
                matches!(got, Some(Inbound::Message { ref bytes, .. }) if bytes == b"hello"),
                "{got:?}"
            );
        })
        .await;
    }

    #[tokio::test]
    async fn garbage_and_hostile_streams_do_not_break_the_transport() {
        bounded(async {
            let ca = ClusterCa::generate("cluster").unwrap();
            let limits = Limits {
                message_bytes_max: 64 * 1024,
                stream_timeout: Duration::from_millis(1000),
                ..test_limits()
            };
            let (a, mut a_rx) = start(&ca.issue_node("a").unwrap(), limits);

            // Raw UDP junk, including things that look like QUIC long and short headers.
            let udp = tokio::net::UdpSocket::bind(loopback()).await.unwrap();
            let mut junk: Vec<Vec<u8>> = vec![vec![], vec![0], vec![0xff; 1500], vec![0x40; 40]];
            let mut long_header = vec![0xc0, 0, 0, 0, 1, 8];
            long_header.extend([0xab; 1194]);
            junk.push(long_header);
            for len in [1usize, 7, 21, 100, 1200, 1350] {
                junk.push((0..len).map(|i| (i * 31 + len) as u8).collect());
            }
            for packet in &junk {
                udp.send_to(packet, a.local_addr()).await.unwrap();
            }

            // A client with a valid certificate sending junk, oversized, reset and stalled
            // streams.
            let node = ca.issue_node("hostile").unwrap();
            let (_, client_config) = quinn_configs(&node, &[PEER_ALPN]).unwrap();
            let client = Endpoint::client(loopback()).unwrap();
            let conn = client
                .connect_with(client_config, a.local_addr(), NODE_SERVER_NAME)
                .unwrap()
                .await
                .unwrap();
            let mut s = conn.open_uni().await.unwrap();
            s.write_all(&[0xde, 0xad, 0xbe, 0xef]).await.unwrap(); // unknown stream kind
            s.finish().unwrap();
            let mut s = conn.open_uni().await.unwrap();
            s.write_all(b"S").await.unwrap();
            s.write_all(&[0xde, 0xad, 0xbe, 0xef]).await.unwrap();
            s.finish().unwrap();
            let mut s = conn.open_uni().await.unwrap();
            s.write_all(b"S").await.unwrap();
            let _ = s.write_all(&vec![1u8; 200 * 1024]).await; // over the limit: stopped
            let _ = s.finish();
            let mut s = conn.open_uni().await.unwrap();
            s.write_all(b"Shalf a mess").await.unwrap();
            s.reset(VarInt::from_u32(9)).unwrap();
            // Frames: one good, then one claiming 4 GiB.
            let mut s = conn.open_uni().await.unwrap();
            s.write_all(b"F\0\0\0\x02ok\xff\xff\xff\xff").await.unwrap();
            let _ = s.finish();
            let mut stalled = conn.open_uni().await.unwrap();
            stalled.write_all(b"Snever finished").await.unwrap();
            conn.send_datagram(Bytes::from_static(b"raw datagram"))
                .unwrap();

            let mut messages = Vec::new();
            let mut datagrams = Vec::new();
            while let Some(item) = next(&mut a_rx, Duration::from_millis(1500)).await {
                match item {
                    Inbound::Message { bytes, .. } => messages.push(bytes),
                    Inbound::Datagram { bytes, .. } => datagrams.push(bytes),
                }
            }
            messages.sort();
            assert_eq!(messages, vec![b"ok".to_vec(), vec![0xde, 0xad, 0xbe, 0xef]]);
            assert_eq!(datagrams, vec![Bytes::from_static(b"raw datagram")]);

            // The same connection still works, and so does a real peer.
            let mut s = conn.open_uni().await.unwrap();
            s.write_all(b"Sgood after bad").await.unwrap();
            s.finish().unwrap();
            wait_message(&mut a_rx, |m| m == b"good after bad").await;
            drop(stalled);
            let (b, _b_rx) = start(&ca.issue_node("b").unwrap(), test_limits());
            b.try_send_message(a.local_addr(), b"from b".to_vec())
                .unwrap();
            wait_message(&mut a_rx, |m| m == b"from b").await;
        })
        .await;
    }

    /// An address nothing listens on.
    fn dead_addr() -> SocketAddr {
        let socket = std::net::UdpSocket::bind(loopback()).unwrap();
        socket.local_addr().unwrap()
    }

    #[tokio::test]
    async fn sending_to_dead_peers_never_blocks() {
        bounded(async {
            let ca = ClusterCa::generate("cluster").unwrap();
            let limits = Limits {
                peers_max: 4,
                peer_queue_len: 8,
                ..test_limits()
            };
            let (a, _a_rx) = start(&ca.issue_node("a").unwrap(), limits);
            let dead = dead_addr();

            let started = std::time::Instant::now();
            let mut queued = 0;
            for i in 0..10_000u32 {
                let result = if i % 2 == 0 {
                    a.try_send_datagram(dead, Bytes::from(i.to_be_bytes().to_vec()))
                } else {
                    a.try_send_message(dead, i.to_be_bytes().to_vec())
                };
                match result {
                    Ok(()) => queued += 1,
                    Err(SendError::QueueFull { to }) => assert_eq!(to, dead),
                    Err(other) => panic!("unexpected {other}"),
                }
            }
            assert!(started.elapsed() < Duration::from_secs(1), "sends blocked");
            assert!(queued <= 9, "queue bound not enforced: {queued}");

            // More dead peers than allowed: refused at once, without blocking.
            let mut refused = 0;
            for _ in 0..8 {
                if let Err(SendError::TooManyPeers { .. }) =
                    a.try_send_message(dead_addr(), vec![1])
                {
                    refused += 1;
                }
            }
            assert!(refused >= 4, "peer bound not enforced: {refused}");

            // After the dials time out the queues are gone and sending works again.
            let started = std::time::Instant::now();
            while !a.shared.peers().is_empty() {
                assert!(
                    started.elapsed() < Duration::from_secs(5),
                    "dead peers not dropped"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            a.try_send_message(dead, vec![1]).unwrap();
            let (b, mut b_rx) = start(&ca.issue_node("b").unwrap(), test_limits());
            a.try_send_message(b.local_addr(), b"alive".to_vec())
                .unwrap();
            wait_message(&mut b_rx, |m| m == b"alive").await;
        })
        .await;
    }

    #[tokio::test]
    async fn crashed_and_restarted_peer_is_redialed_promptly() {
        bounded(async {
            let ca = ClusterCa::generate("cluster").unwrap();
            let b_cert = ca.issue_node("b").unwrap();
            let (a, _a_rx) = start(&ca.issue_node("a").unwrap(), test_limits());

            // B runs on its own runtime so that it can die without closing its connections.
            let b_runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()
                .unwrap();
            let (b, mut b_rx) = {
                let _entered = b_runtime.enter();
                start(&b_cert, test_limits())
            };
            let b_addr = b.local_addr();
            a.try_send_message(b_addr, b"before".to_vec()).unwrap();
            wait_message(&mut b_rx, |m| m == b"before").await;
            b_runtime.shutdown_background();
            drop(b);
            drop(b_rx);

            let started = std::time::Instant::now();
            let (b2, mut b2_rx) = loop {
                match start_at(&b_cert, b_addr, test_limits()) {
                    Ok(bound) => break bound,
                    Err(_) if started.elapsed() < Duration::from_secs(5) => {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                    Err(e) => panic!("cannot rebind {b_addr}: {e}"),
                }
            };

            // A still holds a connection to the dead incarnation. The new one answers its
            // packets with a stateless reset A recognises (same reset key, derived from B's
            // node key), so A redials well before the 30 s idle timeout.
            let started = std::time::Instant::now();
            loop {
                a.send_message(b_addr, b"after".to_vec());
                if let Some(Inbound::Message { bytes, .. }) =
                    next(&mut b2_rx, Duration::from_millis(200)).await
                {
                    assert_eq!(bytes, b"after");
                    break;
                }
                assert!(started.elapsed() < Duration::from_secs(10), "no redial");
            }
            b2.shutdown().await;
        })
        .await;
    }

    /// Once membership reports the restart, the connection to the dead process is dropped, so
    /// the very next message reaches the new one (without the reset it went into the old
    /// connection and was lost).
    #[tokio::test]
    async fn a_reset_peer_gets_the_next_message_on_a_fresh_connection() {
        bounded(async {
            let ca = ClusterCa::generate("cluster").unwrap();
            let b_cert = ca.issue_node("b").unwrap();
            let (a, _a_rx) = start(&ca.issue_node("a").unwrap(), test_limits());
            let b_runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()
                .unwrap();
            let (b, mut b_rx) = {
                let _entered = b_runtime.enter();
                start(&b_cert, test_limits())
            };
            let b_addr = b.local_addr();
            a.try_send_message(b_addr, b"before".to_vec()).unwrap();
            wait_message(&mut b_rx, |m| m == b"before").await;
            b_runtime.shutdown_background();
            drop(b);
            drop(b_rx);
            let started = std::time::Instant::now();
            let (b2, mut b2_rx) = loop {
                match start_at(&b_cert, b_addr, test_limits()) {
                    Ok(bound) => break bound,
                    Err(_) if started.elapsed() < Duration::from_secs(5) => {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                    Err(e) => panic!("cannot rebind {b_addr}: {e}"),
                }
            };
            a.reset_peer(b_addr);
            a.send_message(b_addr, b"after".to_vec());
            match next(&mut b2_rx, Duration::from_secs(5)).await {
                Some(Inbound::Message { bytes, .. }) => assert_eq!(bytes, b"after"),
                other => panic!("the first message after the reset was lost: {other:?}"),
            }
            b2.shutdown().await;
        })
        .await;
    }

    #[tokio::test]
    async fn shutdown_stops_sending_and_ends_inbound() {
        bounded(async {
            let ca = ClusterCa::generate("cluster").unwrap();
            let (a, mut a_rx) = start(&ca.issue_node("a").unwrap(), test_limits());
            let (b, mut b_rx) = start(&ca.issue_node("b").unwrap(), test_limits());
            a.try_send_message(b.local_addr(), b"x".to_vec()).unwrap();
            wait_message(&mut b_rx, |m| m == b"x").await;
            b.try_send_message(a.local_addr(), b"y".to_vec()).unwrap();
            wait_message(&mut a_rx, |m| m == b"y").await;

            a.shutdown().await;
            assert_eq!(
                a.try_send_message(b.local_addr(), vec![1]),
                Err(SendError::Closed)
            );
            assert_eq!(
                a.try_send_datagram(b.local_addr(), Bytes::from(vec![1])),
                Err(SendError::Closed)
            );
            assert_eq!(next(&mut a_rx, Duration::from_secs(5)).await, None);
        })
        .await;
    }

    #[test]
    fn bind_outside_a_runtime_is_an_error() {
        let ca = ClusterCa::generate("cluster").unwrap();
        let node = ca.issue_node("a").unwrap();
        let (server, client) = quinn_configs(&node, &[PEER_ALPN]).unwrap();
        let err = Transport::bind(loopback(), server, client, Limits::default());
        assert!(matches!(err, Err(TransportError::NoRuntime)));
    }
}
