//! The tokio driver: runs one node core against the real world.
//!
//! One task owns the [`Node`] and feeds it inputs — QUIC datagrams (SWIM) and streams (peer
//! messages) from the [`transport`], timer firings, HTTP admin requests — each with the time
//! since the driver started. After every input it performs the core's outputs: sends, timers,
//! and metadata writes to RocksDB. This is the only place (with `storage::rocks`) that touches
//! sockets, clocks, disks and OS randomness; it makes no protocol decision of its own.

pub mod dev;
pub mod tls;
pub mod transport;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use rand::Rng;
use rand_xoshiro::Xoshiro256PlusPlus;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tracing::{error, info, info_span, warn, Instrument};

use crate::api::http::{self, AdminRequest};
use crate::id::NodeId;
use crate::membership::NodeInfo;
use crate::node::{Node, NodeConfig, Output, Persisted, Timer};
use crate::storage::meta::{self, BootInfo, MetaError};
use crate::storage::{RocksStore, StoreError};
use transport::{Inbound, Transport};

/// How long a leaving node keeps its endpoint open so its last messages get out.
const LEAVE_FLUSH: Duration = Duration::from_millis(500);

/// Everything needed to run one node.
#[derive(Clone, Debug)]
pub struct NodeOptions {
    /// Where the node keeps its id, metadata and data.
    pub data_dir: PathBuf,
    /// QUIC endpoint (UDP) for peers and QUIC clients.
    pub listen: SocketAddr,
    /// HTTP API endpoint.
    pub http: SocketAddr,
    /// QUIC addresses of nodes to join through.
    pub join: Vec<SocketAddr>,
    /// Directory with `ca.pem`, `node.pem` and `node.key`; defaults to `<data-dir>/tls`.
    pub tls_dir: Option<PathBuf>,
}

impl NodeOptions {
    /// The TLS directory in effect.
    pub fn tls_dir(&self) -> PathBuf {
        self.tls_dir
            .clone()
            .unwrap_or_else(|| self.data_dir.join("tls"))
    }
}

/// Why a node could not start or stopped abnormally.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// The data directory could not be created.
    #[error("cannot create data directory {path}: {source}")]
    DataDir {
        /// The directory.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// Storage failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Stored metadata is unreadable.
    #[error(transparent)]
    Meta(#[from] MetaError),
    /// TLS material is missing or invalid.
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    /// The QUIC endpoint could not be set up.
    #[error(transparent)]
    Transport(#[from] transport::TransportError),
    /// The HTTP listener could not be bound.
    #[error("cannot listen for HTTP on {addr}: {source}")]
    Http {
        /// The address.
        addr: SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
    /// The node core refused to start.
    #[error(transparent)]
    Node(#[from] crate::node::NodeError),
    /// The tokio runtime could not be built.
    #[error("cannot start the async runtime: {0}")]
    Runtime(std::io::Error),
}

/// Runs a node until SIGINT, SIGTERM or a graceful leave. Blocks the calling thread.
pub fn run_blocking(options: NodeOptions) -> Result<(), RuntimeError> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(RuntimeError::Runtime)?;
    rt.block_on(run(options))
}

async fn run(options: NodeOptions) -> Result<(), RuntimeError> {
    std::fs::create_dir_all(&options.data_dir).map_err(|source| RuntimeError::DataDir {
        path: options.data_dir.clone(),
        source,
    })?;
    let mut store = RocksStore::open(&options.data_dir.join("db"))?;
    let mut os_rng: Xoshiro256PlusPlus = rand::make_rng();
    let persisted = meta::boot(&mut store, NodeId::new(os_rng.next_u64()))?;
    let span = info_span!("node", id = %persisted.id);
    run_node(options, store, persisted).instrument(span).await
}

async fn run_node(
    options: NodeOptions,
    mut store: RocksStore,
    persisted: BootInfo,
) -> Result<(), RuntimeError> {
    let node_tls = tls::TlsFiles::in_dir(&options.tls_dir()).load()?;
    let (server_cfg, client_cfg) = tls::quinn_configs(&node_tls, &[tls::PEER_ALPN])?;
    let (transport, mut inbound) = Transport::bind_with_endpoint_config(
        options.listen,
        node_tls.endpoint_config(),
        server_cfg,
        client_cfg,
        transport::Limits::default(),
    )?;
    let quic_addr = transport.local_addr();
    let http_listener = tokio::net::TcpListener::bind(options.http)
        .await
        .map_err(|source| RuntimeError::Http {
            addr: options.http,
            source,
        })?;
    let http_addr = http_listener
        .local_addr()
        .map_err(|source| RuntimeError::Http {
            addr: options.http,
            source,
        })?;

    let info = NodeInfo {
        quic_addr,
        http_addr,
    };
    let config = NodeConfig::new(
        persisted.id,
        persisted.generation,
        info,
        options.join.clone(),
    );
    let mut os_rng: Xoshiro256PlusPlus = rand::make_rng();
    let mut node = Node::new(
        config,
        os_rng.next_u64(),
        Persisted {
            ring: persisted.ring.clone(),
            leave_complete: persisted.leave_complete,
        },
    )?;
    info!(
        node = %persisted.id,
        generation = persisted.generation,
        %quic_addr,
        %http_addr,
        data_dir = %options.data_dir.display(),
        "node starting"
    );

    let (admin_tx, mut admin_rx) = mpsc::channel::<AdminRequest>(64);
    let (http_stop_tx, http_stop_rx) = tokio::sync::oneshot::channel::<()>();
    let http_task = tokio::spawn(
        async move {
            let server =
                axum::serve(http_listener, http::router(admin_tx)).with_graceful_shutdown(async {
                    let _ = http_stop_rx.await;
                });
            if let Err(e) = server.await {
                error!(error = %e, "HTTP server failed");
            }
        }
        .in_current_span(),
    );

    let epoch = Instant::now();
    let mut timers: BTreeMap<(Duration, u64), Timer> = BTreeMap::new();
    let mut timer_seq = 0u64;
    let mut leave_at: Option<Instant> = None;
    let mut signals = Signals::new();

    node.start(epoch.elapsed());
    let result = 'run: loop {
        // Perform every effect the last input produced, in order. A persist that fails stops
        // the node (fail-stop): nothing after it may go out, since it could reveal or confirm
        // what is not on disk.
        while let Some(out) = node.poll_output() {
            match out {
                Output::Gossip { to, bytes } => transport.send_datagram(to, bytes.into()),
                Output::Message { addr, bytes, .. } => transport.send_message(addr, bytes),
                Output::SetTimer { at, timer } => {
                    timer_seq += 1;
                    timers.insert((at, timer_seq), timer);
                }
                Output::PersistRing(state) => {
                    if let Err(e) = meta::persist_ring(&mut store, &state) {
                        error!(error = %e, "cannot persist the ring state; stopping");
                        break 'run Err(RuntimeError::Meta(e));
                    }
                }
                Output::PersistGeneration(generation) => {
                    if let Err(e) = meta::persist_generation(&mut store, generation) {
                        error!(error = %e, "cannot persist the generation; stopping");
                        break 'run Err(RuntimeError::Meta(e));
                    }
                }
                Output::Left => {
                    if let Err(e) = meta::persist_left(&mut store) {
                        error!(error = %e, "cannot record the completed leave; stopping");
                        break 'run Err(RuntimeError::Meta(e));
                    }
                    leave_at = Some(Instant::now() + LEAVE_FLUSH);
                }
            }
        }
        let next_timer = timers.keys().next().map(|&(at, _)| epoch + at);
        let wake = match (next_timer, leave_at) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        tokio::select! {
            Some(msg) = inbound.recv() => match msg {
                Inbound::Datagram { bytes, .. } => node.handle_gossip(&bytes, epoch.elapsed()),
                Inbound::Message { from, bytes } => node.handle_message(from, &bytes, epoch.elapsed()),
            },
            Some(req) = admin_rx.recv() => match req {
                AdminRequest::Cluster(reply) => {
                    let _ = reply.send(node.cluster_view());
                }
                AdminRequest::Leave(reply) => {
                    node.leave(epoch.elapsed());
                    let _ = reply.send(());
                }
                AdminRequest::Remove(id, reply) => {
                    let _ = reply.send(node.remove(id, epoch.elapsed()));
                }
            },
            _ = sleep_until_opt(wake) => {
                if leave_at.is_some_and(|t| t <= Instant::now()) {
                    info!("left the cluster; shutting down");
                    break 'run Ok(());
                }
                let now = epoch.elapsed();
                while let Some(entry) = timers.first_entry() {
                    if entry.key().0 > now {
                        break;
                    }
                    let timer = entry.remove();
                    node.handle_timer(timer, now);
                }
            }
            sig = signals.recv() => {
                info!(signal = sig, "shutting down");
                break 'run Ok(());
            }
        }
    };
    let _ = http_stop_tx.send(());
    transport.shutdown().await;
    let _ = tokio::time::timeout(Duration::from_secs(2), http_task).await;
    info!("node stopped");
    result
}

async fn sleep_until_opt(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// SIGINT and SIGTERM.
struct Signals {
    int: Option<tokio::signal::unix::Signal>,
    term: Option<tokio::signal::unix::Signal>,
}

impl Signals {
    fn new() -> Signals {
        use tokio::signal::unix::{signal, SignalKind};
        let int = signal(SignalKind::interrupt())
            .map_err(|e| warn!(error = %e, "cannot watch SIGINT"))
            .ok();
        let term = signal(SignalKind::terminate())
            .map_err(|e| warn!(error = %e, "cannot watch SIGTERM"))
            .ok();
        Signals { int, term }
    }

    async fn recv(&mut self) -> &'static str {
        async fn wait(s: &mut Option<tokio::signal::unix::Signal>) {
            match s {
                Some(s) => {
                    s.recv().await;
                }
                None => std::future::pending().await,
            }
        }
        tokio::select! {
            _ = wait(&mut self.int) => "SIGINT",
            _ = wait(&mut self.term) => "SIGTERM",
        }
    }
}
