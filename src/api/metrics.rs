//! Prometheus metrics: what the node exports at `GET /metrics`, through the `metrics` facade and
//! `metrics-exporter-prometheus` (never hand-formatted).
//!
//! Recorded as they happen: client requests by API, operation and outcome, and their latency
//! as the coordinating node sees it (from the request's arrival to its answer); reads by sibling
//! count; indeterminate writes; requests shed by the in-flight bound (outcome `overloaded`);
//! group-commit batch sizes and sync latency (by the storage thread). Sampled at each scrape
//! from the node core's own counters: members by liveness, hints held and delivered, read
//! repairs, handoff, anti-entropy figures, type conflicts, tombstones purged, requests in
//! flight.
//!
//! The node core records nothing itself (it stays deterministic); the driver and the API layer
//! do. With no recorder installed (tests, tools) every call here is a no-op.

use std::future::Future;
use std::pin::Pin;
use std::time::Instant;

use metrics::{counter, gauge, histogram};

use super::status::RecentRequests;
use crate::node::{ClientError, ClientOp, ClientReply, ClusterView, Liveness, PartitionInfo};

/// Metric names (one place, so the test and the docs agree with the code).
pub mod names {
    /// Client requests, by `api` (http, quic), `op` (get, put, delete, update) and `outcome`
    /// (ok, or the error code).
    pub const REQUESTS: &str = "chorus_requests_total";
    /// Latency of client requests on the node that received them, seconds, by `api` and `op`.
    pub const REQUEST_SECONDS: &str = "chorus_request_duration_seconds";
    /// Replica side: time from a replica write's arrival to its acknowledgement (the wait for
    /// durability), seconds.
    pub const REPLICA_WRITE_SECONDS: &str = "chorus_replica_write_duration_seconds";
    /// Client requests shed (refused unapplied) because the node's queue of requests was full,
    /// by `api`.
    pub const SHED: &str = "chorus_requests_shed_total";
    /// Client requests refused because a context they carried was not issued by the cluster.
    pub const FORGED_CONTEXTS: &str = "chorus_forged_contexts_total";
    /// Writes answered "may have been applied".
    pub const INDETERMINATE: &str = "chorus_indeterminate_writes_total";
    /// Values per register read (1 = no siblings).
    pub const READ_VALUES: &str = "chorus_read_values";
    /// Batches per group commit.
    pub const COMMIT_BATCHES: &str = "chorus_group_commit_batches";
    /// Duration of one group commit (write and, with `--sync always`, the WAL sync), seconds.
    pub const COMMIT_SECONDS: &str = "chorus_group_commit_duration_seconds";
    /// Ring members by SWIM `liveness`.
    pub const MEMBERS: &str = "chorus_members";
    /// Hints held for other nodes.
    pub const HINTS_PENDING: &str = "chorus_hints_pending";
    /// Partition pushes still to make.
    pub const HANDOFF_PENDING: &str = "chorus_handoff_pending";
    /// Client requests in flight on this node.
    pub const IN_FLIGHT: &str = "chorus_requests_in_flight";
    /// Keys that became contested on this node since start (writes of several types raced).
    pub const TYPE_CONFLICTS: &str = "chorus_crdt_type_conflicts";
    /// Merges this node refused since start because the merged state would be larger than a
    /// replica stores (the sender keeps them).
    pub const MERGES_REFUSED: &str = "chorus_merges_refused_total";
    /// Hints and handoff keys other nodes refused to store since start (kept, offered again).
    pub const SENDS_REFUSED: &str = "chorus_sends_refused_total";
    /// Operation ids forgotten before it was safe since start, by `reason`: `early` (within
    /// the retry window, a hot key's memory bound) or `unstable` (before every replica held
    /// them, the hard bound).
    pub const OP_IDS_FORGOTTEN: &str = "chorus_op_ids_forgotten_total";
    /// Keys this node holds.
    pub const KEYS: &str = "chorus_keys";
    /// Partitions replicated here but not caught up yet.
    pub const CATCHING_UP: &str = "chorus_partitions_catching_up";
    /// Register tombstones purged since start.
    pub const TOMBSTONES_PURGED: &str = "chorus_tombstones_purged";
    /// Keys repaired by anti-entropy since start (over this node's partitions).
    pub const AE_KEYS: &str = "chorus_anti_entropy_keys_repaired";
    /// Bytes anti-entropy sent since start.
    pub const AE_BYTES: &str = "chorus_anti_entropy_bytes_sent";
    /// Anti-entropy exchanges in flight.
    pub const AE_IN_FLIGHT: &str = "chorus_anti_entropy_exchanges_in_flight";
    /// Read repairs sent since start.
    pub const READ_REPAIRS: &str = "chorus_read_repairs_total";
    /// Hints their owners acknowledged since start.
    pub const HINTS_DELIVERED: &str = "chorus_hints_delivered_total";
    /// QUIC connections open, by `kind` (client, or peer for those peers opened to us).
    pub const QUIC_CONNECTIONS: &str = "chorus_quic_connections";
    /// Bytes of QUIC connections (UDP payload), by `kind` and `direction` (rx, tx): of open
    /// ones every few seconds, of closed ones in full.
    pub const QUIC_BYTES: &str = "chorus_quic_bytes_total";
    /// HTTP connections open.
    pub const HTTP_CONNECTIONS: &str = "chorus_http_connections";
    /// HTTP connections refused at once (a 503 and closed), by `reason` (`per_address`: the
    /// address has its share open; `full`: the node has every connection it may hold).
    pub const HTTP_REFUSED: &str = "chorus_http_connections_refused_total";
    /// Idle HTTP connections closed to make room for an address holding fewer.
    pub const HTTP_EVICTED: &str = "chorus_http_connections_evicted_total";
    /// HTTP connections closed for being too slow, by `phase` (`header`: a request's headers,
    /// or the next request of an idle connection; `body`: a request body).
    pub const HTTP_TIMED_OUT: &str = "chorus_http_connections_timed_out_total";
    /// QUIC client connections refused, by `reason` (`per_address`, `full`).
    pub const QUIC_REFUSED: &str = "chorus_quic_connections_refused_total";
    /// QUIC client connections closed after sending nothing for the idle timeout.
    pub const QUIC_IDLE: &str = "chorus_quic_connections_closed_idle_total";
    /// QUIC client connections closed, still waiting for their hello, to make room for a
    /// newer one (the pre-hello budget, `--quic-clients-unverified-max`).
    pub const QUIC_UNVERIFIED_EVICTED: &str = "chorus_quic_connections_evicted_before_hello_total";
    /// Log lines suppressed by the refusal-log rate limit, by `category`.
    pub const LOG_SUPPRESSED: &str = "chorus_log_lines_suppressed_total";
    /// Requests to an expensive endpoint refused (503) because as many were running, by
    /// `endpoint`.
    pub const BUSY: &str = "chorus_requests_busy_total";
    /// Peer connections refused, by reason (`not_a_node`: the certificate is not a node's).
    pub const PEERS_REFUSED: &str = "chorus_peer_connections_refused_total";
}

/// Describes every metric (help text in the exposition).
pub fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
    describe_counter!(
        names::REQUESTS,
        "Client requests by API, operation and outcome"
    );
    describe_histogram!(
        names::REQUEST_SECONDS,
        Unit::Seconds,
        "Client request latency on the receiving node"
    );
    describe_histogram!(
        names::REPLICA_WRITE_SECONDS,
        Unit::Seconds,
        "Replica write latency: arrival to durable acknowledgement"
    );
    describe_counter!(
        names::SHED,
        "Client requests shed by the in-flight bound (refused unapplied)"
    );
    describe_counter!(
        names::FORGED_CONTEXTS,
        "Client requests refused for a context the cluster did not issue"
    );
    describe_counter!(names::INDETERMINATE, "Writes answered as possibly applied");
    describe_histogram!(names::READ_VALUES, "Values per register read (siblings)");
    describe_histogram!(names::COMMIT_BATCHES, "Write batches per group commit");
    describe_histogram!(
        names::COMMIT_SECONDS,
        Unit::Seconds,
        "Group commit duration (write and sync)"
    );
    describe_gauge!(names::MEMBERS, "Ring members by SWIM liveness");
    describe_gauge!(names::HINTS_PENDING, "Hints held for other nodes");
    describe_gauge!(names::HANDOFF_PENDING, "Partition pushes still to make");
    describe_gauge!(names::IN_FLIGHT, "Client requests in flight");
    describe_gauge!(
        names::TYPE_CONFLICTS,
        "Keys that became contested here since start (writes of several types raced)"
    );
    describe_counter!(
        names::MERGES_REFUSED,
        "Merges refused since start because the merged state would exceed the stored limit"
    );
    describe_counter!(
        names::SENDS_REFUSED,
        "Hints and handoff keys another node refused to store since start (kept)"
    );
    describe_counter!(
        names::OP_IDS_FORGOTTEN,
        "Operation ids forgotten before it was safe since start (memory bounds), by reason"
    );
    describe_gauge!(names::KEYS, "Keys held");
    describe_gauge!(
        names::CATCHING_UP,
        "Partitions this node replicates but has not caught up with the other replicas yet (it refuses their reads)"
    );
    describe_gauge!(names::TOMBSTONES_PURGED, "Tombstones purged since start");
    describe_gauge!(names::AE_KEYS, "Keys repaired by anti-entropy since start");
    describe_gauge!(names::AE_BYTES, "Bytes sent by anti-entropy since start");
    describe_gauge!(names::AE_IN_FLIGHT, "Anti-entropy exchanges in flight");
    describe_gauge!(names::QUIC_CONNECTIONS, "QUIC connections open");
    describe_counter!(names::READ_REPAIRS, "Read repairs sent since start");
    describe_counter!(
        names::HINTS_DELIVERED,
        "Hints their owners acknowledged since start"
    );
    describe_counter!(
        names::QUIC_BYTES,
        Unit::Bytes,
        "Bytes of QUIC connections (open ones every 5 s)"
    );
    describe_gauge!(names::HTTP_CONNECTIONS, "HTTP connections open");
    describe_counter!(
        names::HTTP_REFUSED,
        "HTTP connections refused at once (503), by reason (per_address, full)"
    );
    describe_counter!(
        names::HTTP_EVICTED,
        "Idle HTTP connections closed to make room for an address holding fewer"
    );
    describe_counter!(
        names::HTTP_TIMED_OUT,
        "HTTP connections closed for slow headers (or idle) or a slow body, by phase"
    );
    describe_counter!(
        names::QUIC_REFUSED,
        "QUIC client connections refused, by reason (per_address, full)"
    );
    describe_counter!(names::QUIC_IDLE, "QUIC client connections closed when idle");
    describe_counter!(
        names::QUIC_UNVERIFIED_EVICTED,
        "QUIC client connections without an accepted hello closed to make room for newer ones"
    );
    describe_counter!(
        names::LOG_SUPPRESSED,
        "Refusal log lines suppressed by the rate limit, by category"
    );
    describe_counter!(
        names::BUSY,
        "Requests to an expensive endpoint refused (503) because as many were running"
    );
    describe_counter!(
        names::PEERS_REFUSED,
        "Peer connections refused, by reason (not_a_node: not a node certificate)"
    );
}

/// A connection refused by `api` (http, quic) for `reason` (per_address, full).
pub fn connection_refused(api: &'static str, reason: &'static str) {
    let name = if api == "http" {
        names::HTTP_REFUSED
    } else {
        names::QUIC_REFUSED
    };
    counter!(name, "reason" => reason).increment(1);
}

/// An idle HTTP connection closed to make room.
pub fn http_connection_evicted() {
    counter!(names::HTTP_EVICTED).increment(1);
}

/// An HTTP connection closed for being slow in `phase` (header, body).
pub fn http_connection_timed_out(phase: &'static str) {
    counter!(names::HTTP_TIMED_OUT, "phase" => phase).increment(1);
}

/// The HTTP connections open now.
pub fn http_connections_open(n: usize) {
    gauge!(names::HTTP_CONNECTIONS).set(n as f64);
}

/// A QUIC client connection closed when idle.
pub fn quic_connection_idle() {
    counter!(names::QUIC_IDLE).increment(1);
}

/// A QUIC client connection without an accepted hello closed to make room for a newer one.
pub fn quic_connection_evicted_before_hello() {
    counter!(names::QUIC_UNVERIFIED_EVICTED).increment(1);
}

/// A refusal log line of `category` suppressed.
pub fn log_line_suppressed(category: &'static str) {
    counter!(names::LOG_SUPPRESSED, "category" => category).increment(1);
}

/// A request to the expensive `endpoint` refused because as many were running.
pub fn busy(endpoint: &'static str) {
    counter!(names::BUSY, "endpoint" => endpoint).increment(1);
}

/// How often an open QUIC connection's byte counts are added to the counters.
pub const CONNECTION_METER_INTERVAL: std::time::Duration = std::time::Duration::from_secs(5);

/// Meters one QUIC connection: counts it open while it lives, and adds its bytes to the
/// counters every [`CONNECTION_METER_INTERVAL`] while [`ConnectionMeter::run`] is polled and
/// once more when the meter is dropped (when it counts the connection closed).
pub struct ConnectionMeter {
    kind: &'static str,
    conn: quinn::Connection,
    rx: metrics::Counter,
    tx: metrics::Counter,
    seen_rx: u64,
    seen_tx: u64,
}

impl ConnectionMeter {
    /// Starts metering `conn`, a connection of `kind` (client, peer).
    pub fn new(kind: &'static str, conn: quinn::Connection) -> ConnectionMeter {
        gauge!(names::QUIC_CONNECTIONS, "kind" => kind).increment(1.0);
        ConnectionMeter {
            kind,
            conn,
            rx: counter!(names::QUIC_BYTES, "kind" => kind, "direction" => "rx"),
            tx: counter!(names::QUIC_BYTES, "kind" => kind, "direction" => "tx"),
            seen_rx: 0,
            seen_tx: 0,
        }
    }

    fn add(&mut self) {
        let stats = self.conn.stats();
        self.rx
            .increment(stats.udp_rx.bytes.saturating_sub(self.seen_rx));
        self.tx
            .increment(stats.udp_tx.bytes.saturating_sub(self.seen_tx));
        self.seen_rx = self.seen_rx.max(stats.udp_rx.bytes);
        self.seen_tx = self.seen_tx.max(stats.udp_tx.bytes);
    }

    /// Adds the connection's bytes every few seconds until it closes.
    pub async fn run(&mut self) {
        let mut tick = tokio::time::interval(CONNECTION_METER_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = self.conn.closed() => return,
                _ = tick.tick() => self.add(),
            }
        }
    }
}

impl crate::runtime::recorder::Metering for ConnectionMeter {
    fn until_closed(&mut self) -> Pin<Box<dyn Future<Output = ()> + Send + '_>> {
        Box::pin(self.run())
    }
}

/// The transport's metrics: refused peer and client connections, and peer connection traffic
/// (handed to [`crate::runtime::transport::Transport::bind_with_endpoint_config`]).
#[derive(Debug, Clone, Copy, Default)]
pub struct TransportMetrics;

impl crate::runtime::recorder::Recorder for TransportMetrics {
    fn peer_refused_not_a_node(&self) {
        counter!(names::PEERS_REFUSED, "reason" => "not_a_node").increment(1);
    }

    fn client_connection_refused(&self, reason: &'static str) {
        connection_refused("quic", reason);
    }

    fn meter_peer(&self, conn: &quinn::Connection) -> Box<dyn crate::runtime::recorder::Metering> {
        Box::new(ConnectionMeter::new("peer", conn.clone()))
    }
}

impl Drop for ConnectionMeter {
    fn drop(&mut self) {
        self.add();
        gauge!(names::QUIC_CONNECTIONS, "kind" => self.kind).decrement(1.0);
    }
}

/// The operation's name in metrics.
pub fn op_name(op: &ClientOp) -> &'static str {
    match op {
        ClientOp::Get => "get",
        ClientOp::Put { .. } => "put",
        ClientOp::Delete { .. } => "delete",
        ClientOp::Update { .. } => "update",
    }
}

/// Records one answered client request (here and in the status page's window).
pub fn request(
    recent: &RecentRequests,
    api: &'static str,
    op: &'static str,
    started: Instant,
    reply: &ClientReply,
) {
    let outcome = match reply {
        ClientReply::Failed(e) => {
            if matches!(
                e,
                ClientError::Unavailable {
                    indeterminate: true,
                    ..
                }
            ) {
                counter!(names::INDETERMINATE, "api" => api).increment(1);
            }
            e.code()
        }
        ClientReply::Read(r) => {
            if r.type_name.as_deref() == Some("register") {
                histogram!(names::READ_VALUES).record(r.values.len() as f64);
            }
            "ok"
        }
        ClientReply::Written(_) | ClientReply::Updated(_) => "ok",
    };
    finish(recent, api, op, started, outcome);
}

/// Records a request refused before the core answered (`outcome`: its error code).
pub fn refused(
    recent: &RecentRequests,
    api: &'static str,
    op: &'static str,
    started: Instant,
    outcome: &'static str,
) {
    if outcome == "overloaded" {
        counter!(names::SHED, "api" => api).increment(1);
    }
    finish(recent, api, op, started, outcome);
}

fn finish(
    recent: &RecentRequests,
    api: &'static str,
    op: &'static str,
    started: Instant,
    outcome: &'static str,
) {
    recent.record(started);
    counter!(names::REQUESTS, "api" => api, "op" => op, "outcome" => outcome).increment(1);
    histogram!(names::REQUEST_SECONDS, "api" => api, "op" => op)
        .record(started.elapsed().as_secs_f64());
}

/// Records a client request refused for a context the cluster did not issue.
pub fn refused_context() {
    counter!(names::FORGED_CONTEXTS).increment(1);
}

/// Records one replica write acknowledgement that waited `wait` for durability.
pub fn replica_write(wait: std::time::Duration) {
    histogram!(names::REPLICA_WRITE_SECONDS).record(wait.as_secs_f64());
}

/// Records one group commit.
pub fn group_commit(batches: usize, started: Instant) {
    histogram!(names::COMMIT_BATCHES).record(batches as f64);
    histogram!(names::COMMIT_SECONDS).record(started.elapsed().as_secs_f64());
}

/// Sets the sampled gauges from the node's view of itself.
pub fn sample(view: &ClusterView, partitions: &[PartitionInfo]) {
    for (liveness, name) in [
        (Liveness::Alive, "alive"),
        (Liveness::Suspect, "suspect"),
        (Liveness::Down, "down"),
    ] {
        let n = view
            .members
            .iter()
            .filter(|m| m.liveness == liveness)
            .count();
        gauge!(names::MEMBERS, "liveness" => name).set(n as f64);
    }
    if let Some(d) = &view.data {
        gauge!(names::HINTS_PENDING).set(d.hints_pending as f64);
        gauge!(names::HANDOFF_PENDING).set(d.handoff_pending as f64);
        gauge!(names::IN_FLIGHT).set(d.requests_in_flight as f64);
        gauge!(names::TYPE_CONFLICTS).set(d.type_conflicts as f64);
        gauge!(names::KEYS).set(d.keys_held as f64);
        gauge!(names::CATCHING_UP).set(d.partitions_catching_up as f64);
        gauge!(names::TOMBSTONES_PURGED).set(d.tombstones_purged as f64);
        gauge!(names::AE_IN_FLIGHT).set(d.exchanges_in_flight as f64);
        counter!(names::READ_REPAIRS).absolute(d.read_repairs);
        counter!(names::HINTS_DELIVERED).absolute(d.hints_delivered);
        counter!(names::MERGES_REFUSED).absolute(d.merges_refused);
        counter!(names::SENDS_REFUSED).absolute(d.sends_refused);
        counter!(names::OP_IDS_FORGOTTEN, "reason" => "early").absolute(d.op_ids_forgotten_early);
        counter!(names::OP_IDS_FORGOTTEN, "reason" => "unstable")
            .absolute(d.op_ids_forgotten_unstable);
    }
    let keys: u64 = partitions.iter().map(|p| p.keys_repaired).sum();
    let bytes: u64 = partitions.iter().map(|p| p.bytes_sent).sum();
    gauge!(names::AE_KEYS).set(keys as f64);
    gauge!(names::AE_BYTES).set(bytes as f64);
}

/// What recording metrics costs a node per client request: the time of each recording call
/// the request path makes, with the Prometheus recorder `chorus start` installs and without
/// one (`--no-metrics`, where only the status page's last-minute window records). Run:
///
/// ```text
/// cargo test --release --lib metrics_overhead -- --ignored --nocapture
/// ```
///
/// Compare the figures with the node CPU time per operation that `chorus bench` implies
/// (hundreds of microseconds per YCSB-A operation over three nodes on this machine).
#[cfg(test)]
mod overhead {
    use std::hint::black_box;
    use std::time::{Duration, Instant};

    use super::names;
    use crate::api::status::RecentRequests;
    use crate::node::{ClientReply, ReadResult};

    /// Mean nanoseconds per call of `f` over `n` calls.
    fn per_call(n: u32, mut f: impl FnMut()) -> f64 {
        let t = Instant::now();
        for _ in 0..n {
            f();
        }
        t.elapsed().as_nanos() as f64 / f64::from(n)
    }

    /// Calls per measurement.
    const N: u32 = 2_000_000;
    /// Calls before each measurement.
    const WARM_UP: u32 = 10_000;

    fn measure(label: &str, recent: &RecentRequests, reply: &ClientReply) -> (f64, f64) {
        let started = Instant::now();
        // Warm up (first use registers each series).
        per_call(WARM_UP, || {
            super::request(recent, "http", "get", black_box(started), reply)
        });
        let request = per_call(N, || {
            super::request(recent, "http", "get", black_box(started), black_box(reply))
        });
        let replica = per_call(N, || {
            super::replica_write(black_box(Duration::from_micros(700)))
        });
        println!("{label:<34} request {request:>7.1} ns   replica write {replica:>6.1} ns");
        (request, replica)
    }

    #[test]
    #[ignore = "a measurement: run it alone, by name, with --ignored --nocapture"]
    fn metrics_overhead() {
        let reply = ClientReply::Read(ReadResult {
            type_name: Some("register".into()),
            values: vec![b"value".to_vec()],
            crdt: None,
            context: None,
            deleted: false,
            replies: 2,
            parts: Vec::new(),
        });
        let recent = RecentRequests::new();
        let (off_req, off_rep) = measure("no recorder (--no-metrics)", &recent, &reply);
        let handle = crate::runtime::install_metrics().expect("install the recorder");
        let (on_req, on_rep) = measure("Prometheus recorder (default)", &recent, &reply);
        // Histogram samples wait in lock-free buffers until a scrape drains them: part of their
        // cost is paid at render. The recorder run above left 2 samples per request (latency and
        // values read) and 1 per replica write.
        let samples = 2.0 * f64::from(N + WARM_UP) + f64::from(N);
        let t = Instant::now();
        let text = handle.render();
        let render = t.elapsed();
        let drain = render.as_nanos() as f64 / samples;
        // The recorder saw what was measured (else the figures measure nothing).
        for name in [
            names::REQUEST_SECONDS,
            names::READ_VALUES,
            names::REPLICA_WRITE_SECONDS,
        ] {
            assert!(text.contains(name), "{name} missing from the scrape");
        }
        println!(
            "one scrape: {} bytes, {:.1} ms, draining {samples:.0} histogram samples ({drain:.1} ns each)",
            text.len(),
            render.as_secs_f64() * 1e3,
        );
        // A YCSB-A operation is recorded once as a request on the node that received it (2
        // histogram samples), and half of them (the updates) once per replica write
        // acknowledgement (3 replicas).
        let per_op = (on_req - off_req) + 2.0 * drain + 1.5 * (on_rep - off_rep + drain);
        println!("metrics cost per YCSB-A operation: {per_op:.0} ns");
    }
}
