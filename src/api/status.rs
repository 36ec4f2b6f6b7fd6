//! The live status page (`GET /`) and the figures behind it.
//!
//! - `GET /` → one self-contained HTML page (styles and script inline, served from the
//!   binary) that fetches `GET /v1/status` every few seconds and draws the members, the ring
//!   and this node's partitions.
//! - `GET /v1/node` → this node's own figures ([`NodeStats`]): request rate and latency
//!   percentiles over the last minute, hints and handoff pending, keys held.
//! - `GET /v1/status` → everything the page shows ([`StatusReport`]): the cluster view, each
//!   partition's preference list, this node's partitions with their anti-entropy state, and
//!   every member's [`NodeStats`], asked of the members over the authenticated peer transport
//!   (concurrently, each within [`PEER_STATS_TIMEOUT`], and reused for [`PEER_STATS_TTL`] so
//!   that many open pages do not multiply the fan-out). The question goes to the member's id:
//!   only the node holding that id's certificate can receive or answer it, and no client token
//!   ever leaves the node (an address in the ring is never sent a credential).
//!
//! This module owns the last-minute request window ([`RecentRequests`]), which the API layer
//! feeds with every answered request; it reads the node core only through admin requests.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::Json;
use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};

use super::http::{AdminRequest, ApiState};
use crate::id::NodeId;
use crate::node::{ClusterView, PartitionInfo};

/// A question for the node's driver: ask ring member `node` for its figures over the peer
/// transport, and send back the answer's bytes (a JSON [`NodeStats`], as [`own_stats_bytes`]
/// encodes it). Dropping `reply` means no answer.
#[derive(Debug)]
pub struct PeerStatsRequest {
    /// The member to ask.
    pub node: NodeId,
    /// Where its answer goes.
    pub reply: oneshot::Sender<Vec<u8>>,
}

/// How long a member has to answer for the status report.
pub const PEER_STATS_TIMEOUT: Duration = Duration::from_millis(800);

/// How long fetched member figures are reused.
pub const PEER_STATS_TTL: Duration = Duration::from_secs(2);

/// Width of one slot of the request window.
const SLOT: Duration = Duration::from_secs(10);

/// Slots the window keeps: the current one and the five before it, so the window covers
/// between 50 and 60 seconds once the node has run that long.
const SLOTS: usize = 6;

/// Latencies above this (microseconds) are counted at this value.
const LATENCY_MAX_US: u64 = 120_000_000;

/// The page, served as is.
const PAGE: &str = include_str!("status.html");

struct Slot {
    /// Which 10-second interval since the window's start this slot holds.
    index: u64,
    hist: Histogram<u64>,
}

/// Answered client requests over the last minute: their count and latency distribution.
/// Cheap to feed (one uncontended lock and one histogram increment per request).
pub struct RecentRequests {
    start: Instant,
    slots: Mutex<Vec<Slot>>,
}

impl std::fmt::Debug for RecentRequests {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RecentRequests")
            .field("start", &self.start)
            .finish_non_exhaustive()
    }
}

/// A summary of the request window.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct WindowSummary {
    /// Requests answered in the window.
    pub requests: u64,
    /// Seconds the window covers.
    pub seconds: f64,
    /// Latency percentiles in milliseconds (none without requests).
    pub p50_ms: Option<f64>,
    /// 99th percentile.
    pub p99_ms: Option<f64>,
}

impl RecentRequests {
    /// An empty window starting now.
    pub fn new() -> RecentRequests {
        RecentRequests::starting(Instant::now())
    }

    fn starting(start: Instant) -> RecentRequests {
        let slots = (0..SLOTS)
            .map(|_| Slot {
                index: u64::MAX,
                // Three significant figures over 1 µs..LATENCY_MAX_US.
                hist: Histogram::new_with_bounds(1, LATENCY_MAX_US, 3)
                    .expect("valid histogram bounds"),
            })
            .collect();
        RecentRequests {
            start,
            slots: Mutex::new(slots),
        }
    }

    fn index_at(&self, at: Instant) -> u64 {
        (at.saturating_duration_since(self.start).as_millis() / SLOT.as_millis()) as u64
    }

    /// Records one request answered at `at` that took `took`.
    pub fn record_at(&self, at: Instant, took: Duration) {
        let index = self.index_at(at);
        let micros = (took.as_micros() as u64).clamp(1, LATENCY_MAX_US);
        let mut slots = self.slots.lock().unwrap_or_else(PoisonError::into_inner);
        let slot = &mut slots[(index % SLOTS as u64) as usize];
        if slot.index != index {
            slot.index = index;
            slot.hist.reset();
        }
        slot.hist.saturating_record(micros);
    }

    /// Records one request that started at `started` and is answered now.
    pub fn record(&self, started: Instant) {
        let now = Instant::now();
        self.record_at(now, now.saturating_duration_since(started));
    }

    /// The window as of `at`.
    pub fn summary_at(&self, at: Instant) -> WindowSummary {
        let now = self.index_at(at);
        let oldest = now.saturating_sub(SLOTS as u64 - 1);
        let slots = self.slots.lock().unwrap_or_else(PoisonError::into_inner);
        let mut merged: Option<Histogram<u64>> = None;
        for s in slots.iter().filter(|s| s.index >= oldest && s.index <= now) {
            match &mut merged {
                None => merged = Some(s.hist.clone()),
                // Same bounds everywhere, so adding cannot fail.
                Some(m) => {
                    let _ = m.add(&s.hist);
                }
            }
        }
        drop(slots);
        let elapsed = at.saturating_duration_since(self.start);
        let window_start = SLOT * oldest as u32;
        let seconds = elapsed
            .saturating_sub(window_start)
            .as_secs_f64()
            .max(0.001);
        let requests = merged.as_ref().map_or(0, |h| h.len());
        let ms = |q: f64| {
            merged
                .as_ref()
                .filter(|h| !h.is_empty())
                .map(|h| h.value_at_quantile(q) as f64 / 1000.0)
        };
        WindowSummary {
            requests,
            seconds,
            p50_ms: ms(0.5),
            p99_ms: ms(0.99),
        }
    }
}

impl Default for RecentRequests {
    fn default() -> Self {
        RecentRequests::new()
    }
}

/// One node's own figures (`GET /v1/node`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct NodeStats {
    /// The node's id.
    pub node_id: String,
    /// Seconds since the node started serving.
    pub uptime_secs: u64,
    /// Client requests this node answered per second over the last minute.
    pub requests_per_sec: f64,
    /// Client requests this node answered over the last minute.
    pub requests_last_minute: u64,
    /// Median latency of those requests, milliseconds (null without requests).
    pub p50_ms: Option<f64>,
    /// 99th percentile latency of those requests, milliseconds (null without requests).
    pub p99_ms: Option<f64>,
    /// Client requests in flight.
    pub requests_in_flight: u64,
    /// Hints held for other nodes.
    pub hints_pending: u64,
    /// Hints their owners acknowledged since start.
    pub hints_delivered: u64,
    /// Partition pushes still to make.
    pub handoff_pending: u64,
    /// Keys this node holds.
    pub keys_held: u64,
    /// Partitions this node replicates but has not caught up yet (it refuses their reads).
    #[serde(default)]
    pub partitions_catching_up: u64,
    /// Anti-entropy exchanges in flight.
    pub exchanges_in_flight: u64,
    /// Read repairs sent since start.
    pub read_repairs: u64,
    /// Register writes refused since start because their key had too many siblings.
    #[serde(default)]
    pub siblings_refused: u64,
    /// The keys with the most siblings this node stored lately, most first.
    #[serde(default)]
    pub crowded_keys: Vec<crate::node::CrowdedKey>,
}

/// A member's figures, or why they are missing.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct MemberStats {
    /// The member's id.
    pub id: String,
    /// Its figures, when it answered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stats: Option<NodeStats>,
    /// Why it has none (unreachable, no answer in time...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Everything the status page shows (`GET /v1/status`).
#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct StatusReport {
    /// The cluster as this node sees it.
    pub cluster: ClusterView,
    /// For each partition in order, its preference list as indexes into `cluster.members`
    /// (first: the partition's primary). Empty when the ring has no owner.
    pub owners: Vec<Vec<u32>>,
    /// The partitions this node replicates, with their anti-entropy state.
    pub partitions: Vec<PartitionInfo>,
    /// Every member's figures, in `cluster.members` order.
    pub nodes: Vec<MemberStats>,
}

/// Members' figures by id, as last fetched.
type PeerFigures = Arc<BTreeMap<String, MemberStats>>;

/// What the status endpoints keep between requests.
pub struct StatusState {
    /// The last-minute request window.
    pub recent: RecentRequests,
    started: Instant,
    peers: mpsc::Sender<PeerStatsRequest>,
    cache: tokio::sync::Mutex<Option<(Instant, PeerFigures)>>,
}

impl std::fmt::Debug for StatusState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StatusState")
            .field("started", &self.started)
            .finish_non_exhaustive()
    }
}

impl StatusState {
    /// Fresh state; members' figures are asked through `peers` (the node's driver, which asks
    /// over the peer transport).
    pub fn new(peers: mpsc::Sender<PeerStatsRequest>) -> StatusState {
        StatusState {
            recent: RecentRequests::new(),
            started: Instant::now(),
            peers,
            cache: tokio::sync::Mutex::new(None),
        }
    }
}

/// `GET /`: the status page.
#[utoipa::path(get, path = "/", tag = "operations",
    responses((status = 200, description = "The live status page (self-contained HTML; it \
        polls `GET /v1/status`)", body = String, content_type = "text/html")))]
pub async fn page() -> Response {
    (
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/html; charset=utf-8"),
            ),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
        ],
        PAGE,
    )
        .into_response()
}

async fn view(api: &ApiState) -> Option<(ClusterView, Vec<PartitionInfo>)> {
    let (tx, rx) = oneshot::channel();
    let (ptx, prx) = oneshot::channel();
    api.admin.send(AdminRequest::Cluster(tx)).await.ok()?;
    api.admin
        .send(AdminRequest::Partitions(false, ptx))
        .await
        .ok()?;
    Some((rx.await.ok()?, prx.await.ok()?))
}

/// This node's figures as a member asking over the peer transport receives them (JSON).
pub fn own_stats_bytes(state: &StatusState, view: &ClusterView) -> Vec<u8> {
    serde_json::to_vec(&own_stats(state, view)).unwrap_or_default()
}

fn own_stats(state: &StatusState, view: &ClusterView) -> NodeStats {
    let w = state.recent.summary_at(Instant::now());
    let d = view.data.clone().unwrap_or_default();
    NodeStats {
        node_id: view.node_id.clone(),
        uptime_secs: state.started.elapsed().as_secs(),
        requests_per_sec: w.requests as f64 / w.seconds,
        requests_last_minute: w.requests,
        p50_ms: w.p50_ms,
        p99_ms: w.p99_ms,
        requests_in_flight: d.requests_in_flight as u64,
        hints_pending: d.hints_pending as u64,
        hints_delivered: d.hints_delivered,
        handoff_pending: d.handoff_pending as u64,
        keys_held: d.keys_held,
        partitions_catching_up: d.partitions_catching_up as u64,
        exchanges_in_flight: d.exchanges_in_flight as u64,
        read_repairs: d.read_repairs,
        siblings_refused: d.siblings_refused,
        crowded_keys: d.crowded_keys,
    }
}

/// `GET /v1/node`: this node's own figures.
#[utoipa::path(get, path = "/v1/node", tag = "operations",
    responses(
        (status = 200, description = "This node's figures over the last minute", body = NodeStats),
        (status = 503, description = "The node is shutting down",
            body = super::http::ErrorBody)))]
pub async fn node(State(api): State<ApiState>) -> Response {
    let Some((view, _)) = view(&api).await else {
        return super::http::unavailable();
    };
    Json(own_stats(&api.status, &view)).into_response()
}

/// `GET /v1/status`: what the status page draws.
#[utoipa::path(get, path = "/v1/status", tag = "operations",
    responses(
        (status = 200, description = "The cluster view, the placement, this node's partitions \
            and every member's figures", body = StatusReport),
        (status = 503, description = "The node is shutting down",
            body = super::http::ErrorBody)))]
pub async fn status(State(api): State<ApiState>) -> Response {
    let Some((cluster, partitions)) = view(&api).await else {
        return super::http::unavailable();
    };
    let own = own_stats(&api.status, &cluster);
    let others: Vec<String> = cluster
        .members
        .iter()
        .filter(|m| m.id != cluster.node_id && m.status != crate::membership::RingStatus::Left)
        .map(|m| m.id.clone())
        .collect();
    let fetched = peer_stats(&api.status, others).await;
    let nodes = cluster
        .members
        .iter()
        .map(|m| {
            if m.id == cluster.node_id {
                MemberStats {
                    id: m.id.clone(),
                    stats: Some(own.clone()),
                    error: None,
                }
            } else {
                fetched.get(&m.id).cloned().unwrap_or_else(|| MemberStats {
                    id: m.id.clone(),
                    stats: None,
                    error: Some("not asked (the node left)".into()),
                })
            }
        })
        .collect();
    let owners = owners(&cluster);
    Json(StatusReport {
        cluster,
        owners,
        partitions,
        nodes,
    })
    .into_response()
}

/// Asks member `id` for its figures through the driver, within [`PEER_STATS_TIMEOUT`].
async fn ask_member(peers: &mpsc::Sender<PeerStatsRequest>, id: &str) -> Result<NodeStats, String> {
    let node: NodeId = id.parse().map_err(|e| format!("{e}"))?;
    let (tx, rx) = oneshot::channel();
    let asked = async {
        peers
            .send(PeerStatsRequest { node, reply: tx })
            .await
            .map_err(|_| "the node is shutting down".to_owned())?;
        rx.await
            .map_err(|_| "not asked (not reachable as a ring member)".to_owned())
    };
    let bytes = tokio::time::timeout(PEER_STATS_TIMEOUT, asked)
        .await
        .map_err(|_| format!("no answer within {} ms", PEER_STATS_TIMEOUT.as_millis()))??;
    let stats: NodeStats =
        serde_json::from_slice(&bytes).map_err(|e| format!("malformed figures: {e}"))?;
    if stats.node_id != id {
        return Err(format!("the answer names node {}", stats.node_id));
    }
    Ok(stats)
}

/// Each partition's preference list, as indexes into the view's members.
fn owners(cluster: &ClusterView) -> Vec<Vec<u32>> {
    let Some(ring) = cluster.placement_ring() else {
        return Vec::new();
    };
    let index: BTreeMap<crate::NodeId, u32> = cluster
        .members
        .iter()
        .enumerate()
        .filter_map(|(i, m)| Some((m.id.parse().ok()?, i as u32)))
        .collect();
    ring.partition_ids()
        .map(|p| {
            ring.preference_list(p, cluster.ring.n)
                .iter()
                .filter_map(|id| index.get(id).copied())
                .collect()
        })
        .collect()
}

/// The other members' figures: from the cache when it is fresh, else asked of every member at
/// once.
async fn peer_stats(state: &StatusState, members: Vec<String>) -> PeerFigures {
    let mut cache = state.cache.lock().await;
    if let Some((at, map)) = cache.as_ref() {
        if at.elapsed() < PEER_STATS_TTL && members.iter().all(|id| map.contains_key(id)) {
            return map.clone();
        }
    }
    let mut tasks = tokio::task::JoinSet::new();
    for id in members {
        let peers = state.peers.clone();
        tasks.spawn(async move {
            let (stats, error) = match ask_member(&peers, &id).await {
                Ok(s) => (Some(s), None),
                Err(e) => (None, Some(e)),
            };
            MemberStats { id, stats, error }
        });
    }
    let mut map = BTreeMap::new();
    while let Some(done) = tasks.join_next().await {
        if let Ok(m) = done {
            map.insert(m.id.clone(), m);
        }
    }
    let map = Arc::new(map);
    *cache = Some((Instant::now(), map.clone()));
    map
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_window_counts_the_last_minute_and_forgets_older_requests() {
        let t0 = Instant::now();
        let w = RecentRequests::starting(t0);
        assert_eq!(w.summary_at(t0).requests, 0);
        assert_eq!(w.summary_at(t0).p99_ms, None);
        // 100 requests of 1 ms at second 5, one of 200 ms at second 30.
        for _ in 0..100 {
            w.record_at(t0 + Duration::from_secs(5), Duration::from_millis(1));
        }
        w.record_at(t0 + Duration::from_secs(30), Duration::from_millis(200));
        let s = w.summary_at(t0 + Duration::from_secs(40));
        assert_eq!(s.requests, 101);
        assert!((s.seconds - 40.0).abs() < 1e-9, "{s:?}");
        let p50 = s.p50_ms.unwrap_or_default();
        assert!((0.99..=1.01).contains(&p50), "{s:?}");
        // The 99th percentile of 101 requests falls on the slowest but one... or the slowest.
        let p99 = s.p99_ms.unwrap_or_default();
        assert!((0.99..=200.5).contains(&p99), "{s:?}");
        // At second 65 the slot of second 5 is out of the window (50..60 s covered).
        let s = w.summary_at(t0 + Duration::from_secs(65));
        assert_eq!(s.requests, 1, "{s:?}");
        assert!((s.seconds - 55.0).abs() < 1e-9, "{s:?}");
        let p99 = s.p99_ms.unwrap_or_default();
        assert!((199.5..=200.5).contains(&p99), "{s:?}");
        // A request at second 75 lands in the slot that held second 5's and clears it first.
        w.record_at(t0 + Duration::from_secs(75), Duration::from_millis(3));
        let s = w.summary_at(t0 + Duration::from_secs(79));
        assert_eq!(s.requests, 2, "{s:?}");
        // Long after, nothing is left.
        assert_eq!(w.summary_at(t0 + Duration::from_secs(600)).requests, 0);
    }

    #[test]
    fn slow_requests_saturate_instead_of_failing() {
        let t0 = Instant::now();
        let w = RecentRequests::starting(t0);
        w.record_at(t0, Duration::from_secs(3600));
        w.record_at(t0, Duration::ZERO);
        let s = w.summary_at(t0 + Duration::from_secs(1));
        assert_eq!(s.requests, 2);
        assert!(s.p99_ms.unwrap_or_default() >= 119_000.0, "{s:?}");
    }
}
