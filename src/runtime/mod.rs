//! The tokio driver: runs one node core against the real world.
//!
//! One task owns the [`Node`] and feeds it inputs — QUIC datagrams (SWIM) and peer messages
//! from the [`transport`] with the sender its certificate names, client requests from the HTTP
//! API, timer firings, durability reports — each with the time since the driver started. After
//! every input it performs the core's outputs in order: sends, timers, replies, and writes.
//!
//! Writes take two paths. Metadata writes (ring state, generation, the completed-leave mark) are
//! barriers: written and synced on the spot, before any later output. Data batches go to the
//! storage thread, which commits everything queued since its last sync as one RocksDB write
//! with one WAL sync (group commit) and reports the highest durable batch back; the core
//! releases acknowledgements only then. A failed write stops the node (fail-stop): it must not
//! acknowledge what is not on disk. This module (with `storage::rocks`) is the only place that
//! touches sockets, clocks, disks and OS randomness; it makes no protocol decision of its own.

pub mod cluster_key;
pub mod connections;
pub mod dev;
pub mod ratelog;
pub mod recorder;
pub mod tls;
pub mod transport;

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use rand::Rng;
use rand_xoshiro::Xoshiro256PlusPlus;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tracing::{debug, error, info, info_span, warn, Instrument};

use crate::api::http::{self, AdminRequest, CoreCall};
use crate::api::status::PeerStatsRequest;
use crate::id::NodeId;
use crate::membership::NodeInfo;
use crate::node::{ClientError, ClientReply, Node, NodeConfig, Output, Persisted, Timer};
use crate::storage::meta::{self, MetaError};
use crate::storage::{RocksStore, Store, StoreError, WriteBatch};
pub use connections::ConnectionOptions;
use connections::FileBudget;
use transport::{Inbound, Transport};

/// How long a leaving node keeps its endpoint open so its last messages get out.
const LEAVE_FLUSH: Duration = Duration::from_millis(500);

/// Inputs of one kind handled before the outputs they produced are performed.
const INPUT_BATCH_MAX: usize = 256;

/// Status-page questions to other members in flight at once (each ends with its answer, or
/// when the asker gives up after [`crate::api::status::PEER_STATS_TIMEOUT`]).
const PEER_STATS_ASKED_MAX: usize = 1024;

/// Bytes the storage thread puts into one commit at most (it always takes one batch).
const GROUP_COMMIT_BYTES_MAX: usize = 64 * 1024 * 1024;

/// Batches the storage thread takes into one commit at most.
const GROUP_COMMIT_BATCHES_MAX: usize = 4096;

/// When data writes count as durable.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SyncPolicy {
    /// Sync the write-ahead log before acknowledging (many writes share one sync). The default.
    Always,
    /// Acknowledge once RocksDB has the write, without syncing: a machine crash may lose the
    /// last writes. For benchmarks.
    Never,
}

impl SyncPolicy {
    /// `always` or `never`, as the API reports it.
    pub fn as_str(self) -> &'static str {
        match self {
            SyncPolicy::Always => "always",
            SyncPolicy::Never => "never",
        }
    }
}

impl std::str::FromStr for SyncPolicy {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "always" => Ok(SyncPolicy::Always),
            "never" => Ok(SyncPolicy::Never),
            other => Err(format!("unknown sync policy {other:?} (always, never)")),
        }
    }
}

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
    /// Serve the HTTP API over HTTPS only, with the certificate in this directory
    /// (`cert.pem` and `key.pem`, or a node directory's `node.pem` and `node.key`: see
    /// [`tls::HttpsIdentity::load`]). `None`: plain HTTP.
    pub http_tls_dir: Option<PathBuf>,
    /// When data writes count as durable.
    pub sync: SyncPolicy,
    /// Keep hints for unreachable replicas (default true; off to test anti-entropy alone).
    pub hints: bool,
    /// Repair stale replicas found by reads (default true).
    pub read_repair: bool,
    /// How often each partition is compared with another replica (`None`: periodic
    /// anti-entropy off; repairs on demand still work).
    pub anti_entropy_interval: Option<Duration>,
    /// How often each partition's tombstones are looked at for purging (`None`: never).
    pub tombstone_gc_interval: Option<Duration>,
    /// Tombstone GC's quiet window (at least twice `request_timeout_max` is used).
    pub tombstone_gc_quiet: Duration,
    /// The longest timeout a client request may ask for.
    pub request_timeout_max: Duration,
    /// Most siblings a register write may leave its key with (0: no bound).
    pub siblings_max: usize,
    /// The token clients must present (HTTP and QUIC), if any.
    pub client_token: Option<crate::api::auth::Token>,
    /// The operator's token: without it, leave, remove and repair are refused.
    pub operator_token: Option<crate::api::auth::Token>,
    /// Host names served over HTTP besides IP addresses and `localhost` (a request naming
    /// another host is refused: DNS rebinding).
    pub http_hosts: Vec<String>,
    /// Record metrics and serve `GET /metrics` (default true).
    pub metrics: bool,
    /// Connection caps and timeouts of the HTTP and QUIC client APIs.
    pub connections: ConnectionOptions,
}

/// Installs the process-wide Prometheus recorder, as `chorus start` does (once per process; a
/// second node in the same process shares it). The metrics-overhead measurement
/// (`api::metrics`) installs it too.
pub fn install_metrics() -> Option<metrics_exporter_prometheus::PrometheusHandle> {
    use metrics_exporter_prometheus::{Matcher, PrometheusBuilder};
    static HANDLE: std::sync::OnceLock<Option<metrics_exporter_prometheus::PrometheusHandle>> =
        std::sync::OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let seconds = [
                0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0,
            ];
            let counts = [
                1.0, 2.0, 3.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 1024.0,
            ];
            let built = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("seconds".into()), &seconds)
                .and_then(|b| b.set_buckets_for_metric(Matcher::Suffix("batches".into()), &counts))
                .and_then(|b| b.set_buckets_for_metric(Matcher::Suffix("values".into()), &counts))
                .and_then(|b| b.install_recorder());
            match built {
                Ok(handle) => {
                    crate::api::metrics::describe();
                    Some(handle)
                }
                Err(e) => {
                    warn!(error = %e, "metrics are off: cannot install the recorder");
                    None
                }
            }
        })
        .clone()
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
    /// The cluster key (for context tags) is missing or invalid.
    #[error(transparent)]
    ClusterKey(#[from] cluster_key::ClusterKeyError),
    /// The data directory belongs to another node than the certificate.
    #[error(
        "the certificate in {tls_dir} belongs to node {cert}, but the data directory {data_dir} \
         belongs to node {stored}; start with this node's own certificate or an empty data directory"
    )]
    IdentityMismatch {
        /// Node id bound to the certificate.
        cert: NodeId,
        /// Node id stored in the data directory.
        stored: NodeId,
        /// The TLS directory.
        tls_dir: PathBuf,
        /// The data directory.
        data_dir: PathBuf,
    },
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
    /// The open-file limit cannot be raised, or is too low.
    #[error(transparent)]
    FileLimit(#[from] connections::FileLimitError),
    /// The tokio runtime could not be built.
    #[error("cannot start the async runtime: {0}")]
    Runtime(std::io::Error),
    /// The storage thread stopped.
    #[error("the storage thread failed: {0}")]
    StorageThread(String),
}

/// Runs a node until SIGINT, SIGTERM or a graceful leave. Blocks the calling thread.
pub fn run_blocking(options: NodeOptions) -> Result<(), RuntimeError> {
    // Worker threads: CHORUS_WORKER_THREADS (default 1). The core is one task; the transport and
    // the HTTP server are light. Fewer threads mean fewer cross-thread wake-ups, which on a
    // small machine running several nodes cost more than they save.
    let workers = std::env::var("CHORUS_WORKER_THREADS")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
        .unwrap_or(1)
        .clamp(1, 64);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
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
    let node_tls = tls::TlsFiles::in_dir(&options.tls_dir()).load()?;
    let context_key = cluster_key::load(&options.tls_dir())?;
    let https = options
        .http_tls_dir
        .as_deref()
        .map(tls::HttpsIdentity::load)
        .transpose()?;
    let cert_id = node_tls.node_id()?;
    // Before anything opens many files: RocksDB gets its share, HTTP connections the rest.
    let files = FileBudget::raise()?;
    let mut store =
        RocksStore::open_with_files(&options.data_dir.join("db"), Some(files.rocksdb_files))?;
    let persisted = meta::boot(&mut store, cert_id)?;
    if persisted.id != cert_id {
        return Err(RuntimeError::IdentityMismatch {
            cert: cert_id,
            stored: persisted.id,
            tls_dir: options.tls_dir(),
            data_dir: options.data_dir.clone(),
        });
    }
    let span = info_span!("node", id = %persisted.id);
    run_node(
        options,
        node_tls,
        https,
        context_key,
        store,
        persisted,
        files,
    )
    .instrument(span)
    .await
}

/// A data batch for the storage thread.
struct Job {
    seq: u64,
    batch: WriteBatch,
}

/// What the storage thread reports: a single value it overwrites (a `watch` channel), so the
/// channel holds at most one report however far the node loop falls behind.
#[derive(Clone, Debug, Default)]
struct Committed {
    /// Every batch up to this number is durable.
    durable: u64,
    /// A write failed: the node must stop.
    failed: Option<String>,
}

/// Batches queued for the storage thread at most; beyond, the node loop waits for room
/// (backpressure) rather than queue without bound.
const STORAGE_JOBS_MAX: usize = 1024;

/// The storage thread: commits queued batches in groups, one write and one sync per group.
fn storage_thread(
    mut store: RocksStore,
    sync: SyncPolicy,
    mut jobs: mpsc::Receiver<Job>,
    done: tokio::sync::watch::Sender<Committed>,
) {
    while let Some(first) = jobs.blocking_recv() {
        let mut last = first.seq;
        let mut group = first.batch;
        let mut batches = 1;
        while batches < GROUP_COMMIT_BATCHES_MAX && group.bytes() < GROUP_COMMIT_BYTES_MAX {
            match jobs.try_recv() {
                Ok(job) => {
                    last = job.seq;
                    group.extend(job.batch);
                    batches += 1;
                }
                Err(_) => break,
            }
        }
        let started = std::time::Instant::now();
        match store.write(&group, sync == SyncPolicy::Always) {
            Ok(()) => {
                crate::api::metrics::group_commit(batches, started);
                if done
                    .send(Committed {
                        durable: last,
                        failed: None,
                    })
                    .is_err()
                {
                    return;
                }
            }
            Err(e) => {
                let _ = done.send(Committed {
                    durable: 0,
                    failed: Some(e.to_string()),
                });
                return;
            }
        }
    }
}

async fn run_node(
    options: NodeOptions,
    node_tls: tls::NodeCert,
    https: Option<tls::HttpsIdentity>,
    context_key: crate::node::ContextKey,
    mut store: RocksStore,
    persisted: meta::BootInfo,
    files: FileBudget,
) -> Result<(), RuntimeError> {
    let (server_cfg, client_cfg) = tls::node_quinn_configs(&node_tls)?;
    let (transport, mut inbound) = Transport::bind_with_endpoint_config(
        options.listen,
        node_tls.endpoint_config(),
        server_cfg,
        client_cfg,
        transport::Limits::default(),
        std::sync::Arc::new(crate::api::metrics::TransportMetrics),
    )?;
    let quic_addr = transport.local_addr();
    let credentials = crate::api::auth::Credentials {
        client: options.client_token.clone(),
        operator: options.operator_token.clone(),
    };
    // Without a client token the data plane is open: it serves this machine only (the QUIC
    // client API refuses other hosts the same way).
    let http_bind = if credentials.client.is_some() || options.http.ip().is_loopback() {
        options.http
    } else {
        let loopback = SocketAddr::new(std::net::Ipv4Addr::LOCALHOST.into(), options.http.port());
        warn!(
            requested = %options.http,
            serving = %loopback,
            "no client token is configured: HTTP and the QUIC client API serve loopback only \
             (give --client-token-file to serve other hosts)"
        );
        loopback
    };
    let http_listener = tokio::net::TcpListener::bind(http_bind)
        .await
        .map_err(|source| RuntimeError::Http {
            addr: http_bind,
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
    let auth = tls::CertAuth::new(&node_tls)?;
    let mut config = NodeConfig::new(
        persisted.id,
        persisted.generation,
        info,
        options.join.clone(),
        std::sync::Arc::new(auth),
    );
    config.data.hints = options.hints;
    config.data.read_repair = options.read_repair;
    config.data.anti_entropy_interval = options.anti_entropy_interval;
    config.data.tombstone_gc_interval = options.tombstone_gc_interval;
    config.data.tombstone_gc_quiet = options.tombstone_gc_quiet;
    config.data.timeout_max = options.request_timeout_max;
    config.data.siblings_max = options.siblings_max;
    let transport_bound = {
        let l = transport::Limits::default();
        l.queue_age_max + l.stream_timeout * 2
    };
    let quiet = options
        .tombstone_gc_quiet
        .max(options.request_timeout_max * 2);
    if options.tombstone_gc_interval.is_some() && quiet <= transport_bound {
        warn!(
            quiet_s = quiet.as_secs(),
            transport_bound_s = transport_bound.as_secs(),
            "the tombstone GC quiet window is not longer than a message between nodes may be in transit: a purged delete could come back (use this only for tests)"
        );
    }
    let limits = http::Limits {
        key_bytes_max: config.data.key_bytes_max,
        value_bytes_max: config.data.value_bytes_max,
    };
    let mut os_rng: Xoshiro256PlusPlus = rand::make_rng();
    let started = Instant::now();
    let mut node = Node::new(
        config,
        os_rng.next_u64(),
        Persisted {
            ring: persisted.ring.clone(),
            leave_complete: persisted.leave_complete,
        },
        store.clone(),
    )?;
    info!(
        elapsed_ms = started.elapsed().as_millis() as u64,
        "node state loaded (Merkle trees rebuilt from the store)"
    );
    info!(
        node = %persisted.id,
        generation = persisted.generation,
        %quic_addr,
        %http_addr,
        http_scheme = if https.is_some() { "https" } else { "http" },
        sync = options.sync.as_str(),
        data_dir = %options.data_dir.display(),
        "node starting"
    );

    match &https {
        Some(h) => info!(
            url = %format!("https://{http_addr}"),
            cert = %h.cert.display(),
            names = ?h.names,
            not_after = %h.not_after,
            tls_handshake_timeout_s = options.connections.http_tls_handshake_timeout.as_secs_f64(),
            "the HTTP API serves HTTPS only"
        ),
        None => info!(
            url = %format!("http://{http_addr}"),
            "the HTTP API serves plain HTTP (give --http-tls-dir to serve HTTPS)"
        ),
    }
    let caps = &options.connections;
    let http_limits = connections::HttpLimits {
        header_timeout: caps.http_header_timeout,
        body_timeout: caps.http_body_timeout,
        tls_handshake_timeout: caps.http_tls_handshake_timeout,
        connections_max: caps
            .http_connections_max
            .unwrap_or(files.http_connections)
            .min(files.http_connections),
        per_address_max: caps.http_connections_per_address_max,
    };
    if caps
        .http_connections_max
        .is_some_and(|n| n > files.http_connections)
    {
        warn!(
            asked = caps.http_connections_max,
            allowed = files.http_connections,
            "lowering the HTTP connection cap to what the open-file limit allows"
        );
    }
    info!(
        open_file_limit = files.limit,
        raised_from = files.limit_before,
        rocksdb_files = files.rocksdb_files,
        reserved_files = files.reserved,
        http_connections_max = http_limits.connections_max,
        http_connections_per_address_max = http_limits.per_address_max,
        http_header_timeout_s = http_limits.header_timeout.as_secs_f64(),
        http_body_timeout_s = http_limits.body_timeout.as_secs_f64(),
        quic_clients_max = caps.quic_clients_max,
        quic_clients_per_address_max = caps.quic_clients_per_address_max,
        quic_client_idle_timeout_s = caps.quic_client_idle_timeout.as_secs_f64(),
        "open-file limit and the connection caps drawn from it"
    );

    let (jobs_tx, jobs_rx) = mpsc::channel::<Job>(STORAGE_JOBS_MAX);
    let (done_tx, mut done_rx) = tokio::sync::watch::channel(Committed::default());
    let storage = {
        let store = store.clone();
        let sync = options.sync;
        std::thread::Builder::new()
            .name("chorus-storage".into())
            .spawn(move || storage_thread(store, sync, jobs_rx, done_tx))
            .map_err(|e| RuntimeError::StorageThread(e.to_string()))?
    };

    let (admin_tx, mut admin_rx) = mpsc::channel::<AdminRequest>(64);
    // The status page's questions to other members, asked over the peer transport.
    let (stats_tx, mut stats_rx) = mpsc::channel::<PeerStatsRequest>(PEER_STATS_ASKED_MAX);
    let status_state = std::sync::Arc::new(crate::api::status::StatusState::new(stats_tx));
    let mut stats_asked: HashMap<u64, (NodeId, oneshot::Sender<Vec<u8>>)> = HashMap::new();
    let mut next_stats = 0u64;
    let (client_tx, mut client_rx) = mpsc::channel::<CoreCall>(4096);
    let (http_stop_tx, http_stop_rx) = oneshot::channel::<()>();
    let api = http::ApiState {
        admin: admin_tx,
        clients: client_tx,
        sync: options.sync.as_str(),
        limits,
        auth: std::sync::Arc::new(crate::api::auth::Guard {
            credentials,
            failures: Default::default(),
            hosts: options
                .http_hosts
                .iter()
                .map(|h| h.to_ascii_lowercase())
                .collect(),
        }),
        metrics: if options.metrics {
            install_metrics()
        } else {
            None
        },
        status: status_state.clone(),
        https: https.is_some(),
    };
    let quic_api = tokio::spawn(
        crate::api::quic::serve(
            transport.serve_clients(caps.quic_clients_max, caps.quic_clients_per_address_max),
            api.clone(),
            crate::api::quic::QuicLimits {
                idle_timeout: caps.quic_client_idle_timeout,
                connection_in_flight_max: caps.quic_connection_in_flight_max,
                unverified_max: caps.quic_clients_unverified_max,
            },
        )
        .in_current_span(),
    );
    let router = http::router(api);
    let http_task = tokio::spawn(
        connections::serve_http(
            http_listener,
            router,
            http_limits,
            https.map(|h| h.server_config()),
            http_stop_rx,
        )
        .in_current_span(),
    );

    let epoch = Instant::now();
    let mut timers: BTreeMap<(Duration, u64), Timer> = BTreeMap::new();
    let mut timer_seq = 0u64;
    let mut leave_at: Option<Instant> = None;
    let mut signals = Signals::new();
    let mut pending: HashMap<u64, oneshot::Sender<ClientReply>> = HashMap::new();
    let mut next_client = 0u64;

    node.start(epoch.elapsed());
    let result = 'run: loop {
        // Perform every effect the last input produced, in order. A metadata write that fails
        // stops the node (fail-stop): nothing after it may go out, since it could reveal or
        // confirm what is not on disk.
        while let Some(out) = node.poll_output() {
            match out {
                Output::Gossip { to, bytes } => transport.send_datagram(to, bytes.into()),
                Output::Message { to, addr, bytes } => transport.send_message_to(to, addr, bytes),
                Output::SetTimer { at, timer } => {
                    timer_seq += 1;
                    timers.insert((at, timer_seq), timer);
                }
                Output::Persist { seq, batch } => {
                    if jobs_tx.send(Job { seq, batch }).await.is_err() {
                        break 'run Err(RuntimeError::StorageThread("stopped".into()));
                    }
                }
                Output::Reply { client, mut reply } => {
                    if let Some(tx) = pending.remove(&client) {
                        // Contexts leave the node tagged as the cluster's own.
                        for (kind, c) in reply.contexts_mut() {
                            c.seal(&context_key, kind);
                        }
                        let _ = tx.send(reply);
                    }
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
                Output::PeerRestarted { node: peer, addr } => {
                    debug!(%peer, %addr, "peer restarted; dropping the connection to its previous process");
                    transport.reset_peer(addr);
                }
                Output::StatsAsked { from, id } => {
                    let mut view = node.cluster_view();
                    view.data = Some(node.data_stats());
                    let figures = crate::api::status::own_stats_bytes(&status_state, &view);
                    node.answer_stats(from, id, figures, epoch.elapsed());
                }
                Output::StatsAnswered { from, id, stats } => {
                    // Only the member asked may answer (the transport authenticated `from`).
                    if stats_asked
                        .get(&id)
                        .is_some_and(|(asked, _)| *asked == from)
                    {
                        if let Some((_, reply)) = stats_asked.remove(&id) {
                            let _ = reply.send(stats);
                        }
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
            Some(msg) = inbound.recv() => {
                // Take everything already waiting before performing outputs: replies and
                // acknowledgements then leave in batches, not one wake-up each.
                let now = epoch.elapsed();
                let mut next = Some(msg);
                let mut taken = 0;
                while let Some(msg) = next.take() {
                    match msg {
                        Inbound::Datagram { peer, bytes, .. } => node.handle_gossip(peer, &bytes, now),
                        Inbound::Message { peer, bytes, .. } => node.handle_message(peer, &bytes, now),
                    }
                    taken += 1;
                    if taken < INPUT_BATCH_MAX {
                        next = inbound.try_recv().ok();
                    }
                }
            },
            Some(call) = client_rx.recv() => {
                let now = epoch.elapsed();
                let mut next = Some(call);
                let mut taken = 0;
                while let Some(call) = next.take() {
                    // A context the cluster did not issue is refused before the core sees it.
                    let forged = call
                        .request
                        .contexts()
                        .find_map(|(kind, c)| c.verify(&context_key, kind).err());
                    if let Some(e) = forged {
                        crate::api::metrics::refused_context();
                        let _ = call
                            .reply
                            .send(ClientReply::Failed(ClientError::BadRequest(e.to_string())));
                    } else {
                        next_client += 1;
                        pending.insert(next_client, call.reply);
                        // The core's log lines about the request carry its HTTP request id.
                        node.handle_client_traced(next_client, call.request, call.request_id, now);
                    }
                    taken += 1;
                    if taken < INPUT_BATCH_MAX {
                        next = client_rx.try_recv().ok();
                    }
                }
            }
            Ok(()) = done_rx.changed() => {
                let done = done_rx.borrow_and_update().clone();
                if let Some(e) = done.failed {
                    error!(error = %e, "a data write failed; stopping");
                    break 'run Err(RuntimeError::StorageThread(format!("a data write failed: {e}")));
                }
                node.handle_durable(done.durable, epoch.elapsed());
                for wait in node.take_ack_waits() {
                    crate::api::metrics::replica_write(wait);
                }
            }
            Some(ask) = stats_rx.recv() => {
                // Questions whose asker gave up are forgotten; beyond the cap, new ones wait
                // for no answer (the page shows the member without figures).
                stats_asked.retain(|_, (_, reply)| !reply.is_closed());
                if stats_asked.len() < PEER_STATS_ASKED_MAX {
                    next_stats += 1;
                    stats_asked.insert(next_stats, (ask.node, ask.reply));
                    node.ask_stats(ask.node, next_stats, epoch.elapsed());
                }
            }
            Some(req) = admin_rx.recv() => match req {
                AdminRequest::Cluster(reply) => {
                    let mut view = node.cluster_view();
                    view.data = Some(node.data_stats());
                    let _ = reply.send(view);
                }
                AdminRequest::Leave(reply) => {
                    node.leave(epoch.elapsed());
                    let _ = reply.send(());
                }
                AdminRequest::CancelLeave(reply) => {
                    let _ = reply.send(node.cancel_leave(epoch.elapsed()));
                }
                AdminRequest::Remove(id, signature, force, reply) => {
                    let _ = reply.send(node.remove(id, signature, force, epoch.elapsed()));
                }
                AdminRequest::Partitions(sizes, reply) => {
                    let mut list = node.partitions(epoch.elapsed());
                    if sizes {
                        // A read of every key: off the node's loop.
                        let store = store.clone();
                        tokio::task::spawn_blocking(move || {
                            for info in &mut list {
                                info.bytes = partition_bytes(&store, info.partition);
                            }
                            let _ = reply.send(list);
                        });
                    } else {
                        let _ = reply.send(list);
                    }
                }
                AdminRequest::Repair(partition, reply) => {
                    let started = node
                        .start_repair(partition, epoch.elapsed())
                        .map(|id| node.repair_progress(id).unwrap_or_default());
                    let _ = reply.send(started);
                }
                AdminRequest::RepairProgress(id, reply) => {
                    let _ = reply.send(node.repair_progress(id));
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
    // Requests still in flight get their answer now (the HTTP API tells writes they may have
    // been applied), so the HTTP server can drain at once.
    drop(pending);
    drop(client_rx);
    let _ = http_stop_tx.send(());
    transport.shutdown().await;
    quic_api.abort();
    let abort = http_task.abort_handle();
    if tokio::time::timeout(Duration::from_secs(2), http_task)
        .await
        .is_err()
    {
        abort.abort();
    }
    // Let the storage thread finish what it was given (a hung disk cannot hold the exit).
    drop(jobs_tx);
    let joined = tokio::time::timeout(
        Duration::from_secs(10),
        tokio::task::spawn_blocking(move || storage.join()),
    )
    .await;
    if !matches!(joined, Ok(Ok(Ok(())))) {
        warn!("the storage thread did not stop cleanly");
    }
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

/// Bytes of the keys and states `store` holds in partition `p` (`None` if the store fails).
fn partition_bytes(store: &RocksStore, p: u16) -> Option<u64> {
    use crate::storage::{partition_range, ReadStore as _, Space};
    const PAGE: usize = 4096;
    let (mut from, to) = partition_range(crate::ring::PartitionId::new(p));
    let mut total = 0u64;
    loop {
        let page = match store.scan(Space::Data, &from, &to, PAGE) {
            Ok(page) => page,
            Err(e) => {
                warn!(error = %e, partition = p, "cannot size a partition");
                return None;
            }
        };
        total += page
            .iter()
            .map(|(k, v)| (k.len() + v.len()) as u64)
            .sum::<u64>();
        match page.last() {
            Some((last, _)) if page.len() == PAGE => {
                from = last.clone();
                from.push(0);
            }
            _ => return Some(total),
        }
    }
}
