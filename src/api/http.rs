//! The HTTP API (axum). Handlers never touch the node core: they send an [`AdminRequest`] or a
//! [`CoreCall`] to the driver task that owns the core and await its answer.
//!
//! Cluster endpoints:
//! - `GET /health` → 200 once the node serves.
//! - `GET /metrics` → the Prometheus text exposition (see [`super::metrics`]).
//! - `GET /`, `GET /v1/status`, `GET /v1/node` → the status page and its figures (see
//!   [`super::status`]).
//! - `GET /v1/openapi.json` → the OpenAPI 3.1 document of all of this (see [`super::openapi`]):
//!   the router is built from the handlers' descriptions ([`routes`]), so the two agree.
//! - `GET /v1/cluster` → the cluster as this node sees it ([`ClusterView`] as JSON, plus
//!   `http_scheme`: `https` when this node serves HTTPS, else `http`).
//! - `POST /v1/cluster/leave` → 202 `{"status":"leaving"}`; the node leaves gracefully and
//!   exits once a majority of the ring's members confirmed its departure (until then
//!   `GET /v1/cluster` lists the leave under `pending`).
//! - `DELETE /v1/cluster/leave` → 200 `{"status":"member"}`: cancels this node's leave while
//!   it is still handing its partitions over; 409 `not_leaving`, `leave_completed` once
//!   `left` is recorded or the node was removed, or `not_cancellable` for a leave that began
//!   while the node was joining or that resumed after a restart.
//! - `POST /v1/cluster/remove/{node}[?force=true]` with `{"signature": "<base64url>"}` → 202
//!   `{"status":"removing","node":"..."}`: an operator writes off a dead node; its partitions
//!   move to the others. The signature is the operator's (the cluster CA key's) of the removal
//!   ([`crate::membership::removal_message`]; `chorus cluster remove` makes it): every node
//!   checks it, so no node can remove another. Progress shows under `pending` in
//!   `GET /v1/cluster`. 400 for a malformed id or body, 403 `not_signed`, 404 for a node not
//!   in the ring, 409 when the node is not seen down (without force), is this one (use
//!   leave), or this node is leaving.
//! - `GET /v1/partitions` → the partitions this node replicates, each with `partition`,
//!   `root` (its Merkle root, hex), `keys`, `last_exchange` (seconds since its last finished
//!   anti-entropy exchange, or null), `keys_repaired` and `bytes_sent`.
//! - `POST /v1/repair[?partition=P]` → 202 with the new repair's progress: every partition this
//!   node replicates (or P) is compared by Merkle-tree exchange with each of its other
//!   replicas. `GET /v1/repair/{id}` (or `GET /v1/repair` for the latest) → its progress:
//!   `partitions`, `partitions_done`, `keys_repaired`, `bytes_sent`, `exchanges_failed`,
//!   `done`; 404 for an unknown id.
//!
//! Data endpoints, each with the query parameters `r`, `w`, `strict` and `timeout_ms`. The key
//! is the rest of the path, percent-decoded to bytes (so any byte string up to the limit can be
//! a key):
//! - `PUT /v1/kv/{key}`: the body is the value; optional `x-chorus-context`. 204 when the write
//!   left one value, 300 with the siblings' JSON when concurrent values remain; either way with
//!   `x-chorus-context` (the new context), `x-chorus-acks` and `x-chorus-sync`.
//! - `GET /v1/kv/{key}`: 200 with the raw value and `x-chorus-context` for one value; 300 with
//!   `{"context": "...", "values": ["<base64>", ...]}` for siblings (200 for any count with
//!   `Accept: application/json`); 404 when absent or deleted (with `x-chorus-context` when a
//!   tombstone exists).
//! - `DELETE /v1/kv/{key}`: optional `x-chorus-context`; 204 with the new context, or 300 with
//!   the JSON of the values the context did not cover, when any remain.
//!
//! CRDT endpoints (same query parameters, and `return=value` on updates): see
//! [`super::crdt`].
//!
//! Every answer carries `x-request-id` (the client's, when it sent a valid one), which the
//! request's log lines carry too.
//!
//! Every request but `/health` first passes [`super::auth::guard`]: the browser guards (421 for
//! a `Host` the node does not serve, 403/415 `cross_site`), then the credentials: with a client
//! token (`--client-token-file`) every endpoint answers 401 `unauthorized` unless the request
//! carries `Authorization: Bearer <token>` (the client or the operator token); leave, remove
//! and repair need the operator token (`--operator-token-file`) and answer 403
//! `operator_disabled` on a node without one. An address that keeps failing gets 429.
//!
//! Errors are JSON `{"error": "<code>", "message": "..."}`, with `"indeterminate": true|false`
//! on 503s that concern a write: 400 malformed input, 413 key or value over the limit, 409 a
//! key of another type, 503 quorum not reached, node overloaded (its queue of requests is full)
//! or shutting down, 500 internal failure. Bad input is refused before anything changes.

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Path, RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::{Json, Router};
use base64::Engine as _;
use serde::Serialize;
use tokio::sync::{mpsc, oneshot};

use crate::id::NodeId;
use crate::node::{
    CancelLeaveError, ClientError, ClientOp, ClientReply, ClientRequest, ClusterView, Context,
    PartitionInfo, RemoveError, RepairProgress, RequestOptions,
};

/// Request header carrying a causal context.
pub const CONTEXT_HEADER: &str = "x-chorus-context";
/// Response header: replicas that acknowledged durably.
pub const ACKS_HEADER: &str = "x-chorus-acks";
/// Response header: the sync policy that applied to the write.
pub const SYNC_HEADER: &str = "x-chorus-sync";
/// Request and response header: the operation id of a CRDT update.
pub const OP_ID_HEADER: &str = "x-chorus-op-id";

/// The path prefix of the data endpoints.
const KV_PREFIX: &str = "/v1/kv/";

/// A request from the HTTP API to the driver that owns the node core.
#[derive(Debug)]
pub enum AdminRequest {
    /// Report the cluster view.
    Cluster(oneshot::Sender<ClusterView>),
    /// Leave the cluster; answered once the leave has started.
    Leave(oneshot::Sender<()>),
    /// Cancel this node's leave while it has not completed.
    CancelLeave(oneshot::Sender<Result<(), CancelLeaveError>>),
    /// Remove a node from the ring: its id, the operator's signature of the removal, and
    /// `force` (even if SWIM does not report it down); answered once the removal has started.
    Remove(
        NodeId,
        Vec<u8>,
        bool,
        oneshot::Sender<Result<(), RemoveError>>,
    ),
    /// Report the partitions this node replicates with their Merkle figures (and, when the
    /// flag is set, the bytes each holds).
    Partitions(bool, oneshot::Sender<Vec<PartitionInfo>>),
    /// Start an anti-entropy repair of one partition or all.
    Repair(
        Option<u16>,
        oneshot::Sender<Result<RepairProgress, ClientError>>,
    ),
    /// Report a repair's progress (0: the latest).
    RepairProgress(u64, oneshot::Sender<Option<RepairProgress>>),
}

/// A client request for the node core, with where to send its answer.
#[derive(Debug)]
pub struct CoreCall {
    /// The request.
    pub request: ClientRequest,
    /// Where the answer goes.
    pub reply: oneshot::Sender<ClientReply>,
    /// The HTTP request's id (`x-request-id`): the core's log lines about the request carry
    /// it.
    pub request_id: Option<std::sync::Arc<str>>,
}

tokio::task_local! {
    /// The id of the HTTP request the current task serves.
    static REQUEST_ID: std::sync::Arc<str>;
}

/// Size limits the API enforces before a request reaches the core (which checks them again).
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Largest key, in bytes.
    pub key_bytes_max: usize,
    /// Largest value, in bytes.
    pub value_bytes_max: usize,
}

/// What the handlers share.
#[derive(Clone, Debug)]
pub struct ApiState {
    /// Admin requests to the driver.
    pub admin: mpsc::Sender<AdminRequest>,
    /// Client requests to the driver.
    pub clients: mpsc::Sender<CoreCall>,
    /// The node's sync policy, reported on writes.
    pub sync: &'static str,
    /// Size limits.
    pub limits: Limits,
    /// The credentials and browser guards every request but `/health` passes.
    pub auth: std::sync::Arc<super::auth::Guard>,
    /// Renders `GET /metrics` (none: metrics off).
    pub metrics: Option<metrics_exporter_prometheus::PrometheusHandle>,
    /// The status page's state (its request window is fed by both APIs).
    pub status: std::sync::Arc<super::status::StatusState>,
    /// The HTTP API serves HTTPS (reported as `http_scheme` by `GET /v1/cluster`).
    pub https: bool,
}

/// The routes of the HTTP API with their OpenAPI descriptions: each route comes from its
/// handler's `#[utoipa::path]`, so the document ([`super::openapi`]) lists exactly what the
/// router serves.
pub(super) fn routes() -> utoipa_axum::router::OpenApiRouter<ApiState> {
    use super::{crdt, openapi, status};
    use utoipa_axum::routes;
    utoipa_axum::router::OpenApiRouter::with_openapi(<openapi::ApiDoc as utoipa::OpenApi>::openapi())
        .routes(routes!(status::page))
        .routes(routes!(health))
        .routes(routes!(metrics_text))
        .routes(routes!(openapi::openapi_json))
        .routes(routes!(status::node))
        .routes(routes!(status::status))
        .routes(routes!(cluster))
        .routes(routes!(leave, cancel_leave))
        .routes(routes!(remove))
        .routes(routes!(partitions))
        .routes(routes!(repair, repair_latest))
        .routes(routes!(repair_progress))
        .routes(routes!(kv_get, kv_put, kv_delete))
        .routes(routes!(crdt::crdt_get, crdt::crdt_post))
}

/// The router for the HTTP API.
pub fn router(state: ApiState) -> Router {
    let body_max = state.limits.value_bytes_max.saturating_add(1);
    let guard = state.auth.clone();
    let (router, _) = routes().split_for_parts();
    let router = router
        .fallback(no_route)
        .layer(DefaultBodyLimit::max(body_max))
        .with_state(state)
        .layer(axum::middleware::from_fn_with_state(
            guard,
            super::auth::guard,
        ));
    // Outermost, so that every answer (refusals included) has an id.
    router.layer(axum::middleware::from_fn(request_id))
}

/// Request and response header: the request's id. A client may choose it (1 to 64 printable
/// ASCII characters); otherwise the node mints one. Every log line the request causes in the
/// API layer carries it (`request_id`).
pub const REQUEST_ID_HEADER: &str = "x-request-id";

async fn request_id(request: axum::extract::Request, next: axum::middleware::Next) -> Response {
    use tracing::Instrument as _;
    let id = request
        .headers()
        .get(REQUEST_ID_HEADER)
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty() && v.len() <= 64 && v.bytes().all(|b| b.is_ascii_graphic()))
        .map(str::to_owned)
        .unwrap_or_else(mint_request_id);
    let span = tracing::info_span!(
        "request",
        request_id = %id,
        method = %request.method(),
        path = %request.uri().path()
    );
    let mut resp = REQUEST_ID
        .scope(std::sync::Arc::from(id.as_str()), next.run(request))
        .instrument(span)
        .await;
    resp.headers_mut().insert(REQUEST_ID_HEADER, header(&id));
    resp
}

/// A fresh request id: random per process, then a counter. For logs and answers only; CRDT
/// operation ids are minted apart from it (`crdt::mint_op_id`), so nothing learnt from request
/// ids predicts them.
pub(super) fn mint_request_id() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::OnceLock;
    static PREFIX: OnceLock<u64> = OnceLock::new();
    static NEXT: AtomicU64 = AtomicU64::new(1);
    let prefix = *PREFIX.get_or_init(|| {
        use rand::RngExt as _;
        let mut rng: rand_xoshiro::Xoshiro256PlusPlus = rand::make_rng();
        rng.random()
    });
    format!("{prefix:016x}-{}", NEXT.fetch_add(1, Ordering::Relaxed))
}

/// Any path no route serves: 400 for a data endpoint without a key, 404 otherwise.
async fn no_route(uri: Uri) -> Response {
    match uri.path() {
        "/v1/kv" | "/v1/kv/" | "/v1/crdt" | "/v1/crdt/" => *bad("the key is empty").0,
        other => error(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no such endpoint: {other} (see /v1/openapi.json)"),
        ),
    }
}

/// `GET /health`.
#[utoipa::path(get, path = "/health", tag = "operations",
    responses((status = 200, description = "The node serves (answered without a token too)",
        body = String, content_type = "text/plain", example = "ok")))]
async fn health() -> &'static str {
    "ok\n"
}

/// `GET /metrics`: the Prometheus text exposition, with the sampled gauges refreshed first.
#[utoipa::path(get, path = "/metrics", tag = "operations",
    responses(
        (status = 200, description = "Prometheus text exposition format 0.0.4",
            body = String, content_type = "text/plain; version=0.0.4"),
        (status = 404, description = "Metrics are off on this node (`--no-metrics`)",
            body = ErrorBody),
        (status = 503, description = "The node is shutting down", body = ErrorBody)))]
async fn metrics_text(State(api): State<ApiState>) -> Response {
    let Some(handle) = api.metrics.clone() else {
        return error(
            StatusCode::NOT_FOUND,
            "not_found",
            "metrics are off on this node".into(),
        );
    };
    let (tx, rx) = oneshot::channel();
    let (ptx, prx) = oneshot::channel();
    if api.admin.send(AdminRequest::Cluster(tx)).await.is_err()
        || api
            .admin
            .send(AdminRequest::Partitions(false, ptx))
            .await
            .is_err()
    {
        return unavailable();
    }
    match (rx.await, prx.await) {
        (Ok(view), Ok(parts)) => super::metrics::sample(&view, &parts),
        _ => return unavailable(),
    }
    (
        [(
            axum::http::header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; version=0.0.4"),
        )],
        handle.render(),
    )
        .into_response()
}

/// The body of every error answer.
#[derive(Serialize, utoipa::ToSchema)]
pub(super) struct ErrorBody<'a> {
    /// A stable code: `bad_request`, `unauthorized`, `not_found`, `type_conflict`,
    /// `too_large`, `unavailable`, `overloaded`, `shutting_down`, `internal`, ...
    error: &'a str,
    /// What went wrong, for people.
    message: String,
    /// On a write's 503: whether it may have been applied (`true`: retry only if the write is
    /// idempotent or carries its op id).
    #[serde(skip_serializing_if = "Option::is_none")]
    indeterminate: Option<bool>,
}

pub(super) fn error(status: StatusCode, code: &str, message: String) -> Response {
    (
        status,
        Json(ErrorBody {
            error: code,
            message,
            indeterminate: None,
        }),
    )
        .into_response()
}

pub(super) fn unavailable() -> Response {
    error(
        StatusCode::SERVICE_UNAVAILABLE,
        "shutting_down",
        "the node is shutting down".into(),
    )
}

/// `GET /v1/cluster`.
#[utoipa::path(get, path = "/v1/cluster", tag = "cluster",
    responses(
        (status = 200, description = "The cluster as this node sees it", body = ClusterView),
        (status = 503, description = "The node is shutting down", body = ErrorBody)))]
async fn cluster(State(api): State<ApiState>) -> Response {
    let (tx, rx) = oneshot::channel();
    if api.admin.send(AdminRequest::Cluster(tx)).await.is_err() {
        return unavailable();
    }
    match rx.await {
        Ok(view) => Json(ClusterAnswer {
            view,
            http_scheme: if api.https { "https" } else { "http" },
        })
        .into_response(),
        Err(_) => unavailable(),
    }
}

/// `GET /v1/cluster`'s answer: the view, and the scheme this node's HTTP API serves (`http` or
/// `https`; every node of a cluster is meant to serve the same one, and clients reach the
/// members it lists with the scheme they reached it with).
#[derive(Serialize)]
struct ClusterAnswer {
    #[serde(flatten)]
    view: ClusterView,
    http_scheme: &'static str,
}

/// `GET /v1/partitions`.
#[utoipa::path(get, path = "/v1/partitions", tag = "cluster",
    params(super::openapi::PartitionsParams),
    responses(
        (status = 200, description = "The partitions this node replicates, with their Merkle \
            roots and anti-entropy figures", body = Vec<PartitionInfo>),
        (status = 400, description = "Unknown parameter", body = ErrorBody),
        (status = 503, description = "The node is shutting down, or (`bytes=true`) as many \
            sizings as it runs at once are running (code `busy`)", body = ErrorBody)))]
async fn partitions(State(api): State<ApiState>, RawQuery(query): RawQuery) -> Response {
    /// `bytes=true` reads every key the node holds: at most this many at once.
    static SIZINGS: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(2);
    let pairs: Vec<(String, String)> =
        match serde_urlencoded::from_str(query.as_deref().unwrap_or_default()) {
            Ok(p) => p,
            Err(e) => {
                return error(
                    StatusCode::BAD_REQUEST,
                    "bad_request",
                    format!("bad query string: {e}"),
                )
            }
        };
    let mut bytes = false;
    for (k, v) in pairs {
        match (k.as_str(), v.as_str()) {
            ("bytes", "true" | "1") => bytes = true,
            ("bytes", "false" | "0") => bytes = false,
            _ => {
                return error(
                    StatusCode::BAD_REQUEST,
                    "bad_request",
                    format!("unknown parameter {k}={v} (expected bytes=true|false)"),
                )
            }
        }
    }
    let _sizing = match bytes.then(|| SIZINGS.try_acquire()) {
        Some(Err(_)) => {
            super::metrics::busy("partitions_bytes");
            return error(
                StatusCode::SERVICE_UNAVAILABLE,
                "busy",
                "as many partition sizings as the node runs at once are running; try again later"
                    .into(),
            );
        }
        permit => permit,
    };
    let (tx, rx) = oneshot::channel();
    if api
        .admin
        .send(AdminRequest::Partitions(bytes, tx))
        .await
        .is_err()
    {
        return unavailable();
    }
    match rx.await {
        Ok(list) => Json(list).into_response(),
        Err(_) => unavailable(),
    }
}

/// `POST /v1/repair`.
#[utoipa::path(post, path = "/v1/repair", tag = "cluster",
    params(super::openapi::RepairParams),
    responses(
        (status = 202, description = "A repair started: every partition this node replicates \
            (or the one asked for) is compared by Merkle-tree exchange with its other replicas",
            body = RepairProgress),
        (status = 400, description = "Bad parameter, or a partition this node does not \
            replicate", body = ErrorBody),
        (status = 401, description = "No or a wrong operator token (`unauthorized`)", body = ErrorBody),
        (status = 403, description = "The node has no operator token (`operator_disabled`)", body = ErrorBody),
        (status = 503, description = "The node is shutting down", body = ErrorBody)),
    security(("operator_token" = [])))]
async fn repair(State(api): State<ApiState>, RawQuery(query): RawQuery) -> Response {
    let mut partition = None;
    let pairs: Vec<(String, String)> =
        match serde_urlencoded::from_str(query.as_deref().unwrap_or_default()) {
            Ok(p) => p,
            Err(e) => {
                return error(
                    StatusCode::BAD_REQUEST,
                    "bad_request",
                    format!("bad query string: {e}"),
                )
            }
        };
    for (k, v) in pairs {
        match k.as_str() {
            "partition" => match v.parse::<u16>() {
                Ok(p) => partition = Some(p),
                Err(_) => {
                    return error(
                        StatusCode::BAD_REQUEST,
                        "bad_request",
                        format!("partition={v}: expected a partition number"),
                    )
                }
            },
            other => {
                return error(
                    StatusCode::BAD_REQUEST,
                    "bad_request",
                    format!("unknown query parameter {other:?}"),
                )
            }
        }
    }
    let (tx, rx) = oneshot::channel();
    if api
        .admin
        .send(AdminRequest::Repair(partition, tx))
        .await
        .is_err()
    {
        return unavailable();
    }
    match rx.await {
        Ok(Ok(progress)) => (StatusCode::ACCEPTED, Json(progress)).into_response(),
        Ok(Err(e)) => error(StatusCode::BAD_REQUEST, "bad_request", e.to_string()),
        Err(_) => unavailable(),
    }
}

/// `GET /v1/repair`.
#[utoipa::path(get, path = "/v1/repair", tag = "cluster",
    responses(
        (status = 200, description = "The latest repair's progress", body = RepairProgress),
        (status = 404, description = "No repair ran on this node", body = ErrorBody)))]
async fn repair_latest(State(api): State<ApiState>) -> Response {
    repair_status(api, 0).await
}

/// `GET /v1/repair/{id}`.
#[utoipa::path(get, path = "/v1/repair/{id}", tag = "cluster",
    params(("id" = u64, Path, description = "The repair's id (from `POST /v1/repair`)")),
    responses(
        (status = 200, description = "The repair's progress", body = RepairProgress),
        (status = 400, description = "Not a repair id", body = ErrorBody),
        (status = 404, description = "No such repair on this node", body = ErrorBody)))]
async fn repair_progress(State(api): State<ApiState>, Path(id): Path<String>) -> Response {
    match id.parse::<u64>() {
        Ok(id) if id > 0 => repair_status(api, id).await,
        _ => error(
            StatusCode::BAD_REQUEST,
            "bad_request",
            format!("{id:?} is not a repair id"),
        ),
    }
}

async fn repair_status(api: ApiState, id: u64) -> Response {
    let (tx, rx) = oneshot::channel();
    if api
        .admin
        .send(AdminRequest::RepairProgress(id, tx))
        .await
        .is_err()
    {
        return unavailable();
    }
    match rx.await {
        Ok(Some(p)) => Json(p).into_response(),
        Ok(None) => error(
            StatusCode::NOT_FOUND,
            "not_found",
            "no such repair on this node".into(),
        ),
        Err(_) => unavailable(),
    }
}

/// The answer to a leave, or to its cancellation.
#[derive(Serialize, utoipa::ToSchema)]
struct Leaving {
    /// `leaving`, or `member` once cancelled.
    status: &'static str,
}

/// `DELETE /v1/cluster/leave`.
#[utoipa::path(delete, path = "/v1/cluster/leave", tag = "cluster",
    responses(
        (status = 200, description = "The leave is cancelled: the node stays a member and keeps \
            its partitions", body = Leaving),
        (status = 401, description = "No or a wrong operator token (`unauthorized`)", body = ErrorBody),
        (status = 403, description = "The node has no operator token (`operator_disabled`)", body = ErrorBody),
        (status = 409, description = "The node is not leaving (`not_leaving`), or its leave has \
            completed (`left` recorded) or it was removed (`leave_completed`), or it began while \
            the node was joining or the node restarted since (`not_cancellable`)", body = ErrorBody),
        (status = 503, description = "The node is shutting down", body = ErrorBody)),
    security(("operator_token" = [])))]
async fn cancel_leave(State(api): State<ApiState>) -> Response {
    let (tx, rx) = oneshot::channel();
    if api.admin.send(AdminRequest::CancelLeave(tx)).await.is_err() {
        return unavailable();
    }
    match rx.await {
        Ok(Ok(())) => (StatusCode::OK, Json(Leaving { status: "member" })).into_response(),
        Ok(Err(e @ CancelLeaveError::NotLeaving)) => {
            error(StatusCode::CONFLICT, "not_leaving", e.to_string())
        }
        Ok(Err(e @ CancelLeaveError::NotCancellable)) => {
            error(StatusCode::CONFLICT, "not_cancellable", e.to_string())
        }
        Ok(Err(e)) => error(StatusCode::CONFLICT, "leave_completed", e.to_string()),
        Err(_) => unavailable(),
    }
}

/// The answer to a removal.
#[derive(Serialize, utoipa::ToSchema)]
struct Removing {
    /// `removing`.
    status: &'static str,
    /// The node being removed.
    node: String,
}

/// `POST /v1/cluster/leave`.
#[utoipa::path(post, path = "/v1/cluster/leave", tag = "cluster",
    responses(
        (status = 202, description = "The node leaves gracefully: it hands its partitions over \
            and exits once a majority of the members confirmed", body = Leaving),
        (status = 401, description = "No or a wrong operator token (`unauthorized`)", body = ErrorBody),
        (status = 403, description = "The node has no operator token (`operator_disabled`)", body = ErrorBody),
        (status = 503, description = "The node is shutting down", body = ErrorBody)),
    security(("operator_token" = [])))]
async fn leave(State(api): State<ApiState>) -> Response {
    let (tx, rx) = oneshot::channel();
    if api.admin.send(AdminRequest::Leave(tx)).await.is_err() {
        return unavailable();
    }
    match rx.await {
        Ok(()) => (StatusCode::ACCEPTED, Json(Leaving { status: "leaving" })).into_response(),
        Err(_) => unavailable(),
    }
}

/// `POST /v1/cluster/remove/{node}`.
#[utoipa::path(post, path = "/v1/cluster/remove/{node}", tag = "cluster",
    params(("node" = String, Path, description = "The dead node's id (16 hex digits)"),
        ("force" = Option<bool>, Query, description = "Remove it even if this node does not \
            see it down (its machine is gone for good; a removed node that still runs stops \
            without handing its data off)")),
    responses(
        (status = 202, description = "The node is written off; its partitions move to the \
            others (progress under `pending` in `GET /v1/cluster`)", body = Removing),
        (status = 400, description = "Malformed node id (`bad_node_id`), query or body \
            (`bad_request`)", body = ErrorBody),
        (status = 401, description = "No or a wrong operator token (`unauthorized`)", body = ErrorBody),
        (status = 403, description = "The node has no operator token (`operator_disabled`)", body = ErrorBody),
        (status = 403, description = "The removal is not signed by the operator key, the \
            cluster CA's (`not_signed`)", body = ErrorBody),
        (status = 404, description = "Not in the ring (`unknown_node`)", body = ErrorBody),
        (status = 409, description = "The node is not down as this node sees it and `force` \
            was not given (`not_down`), is this one (use leave), or this node is leaving \
            (`refused`)", body = ErrorBody),
        (status = 503, description = "The node is shutting down", body = ErrorBody)),
    security(("operator_token" = [])))]
async fn remove(
    State(api): State<ApiState>,
    Path(node): Path<String>,
    RawQuery(query): RawQuery,
    body: Bytes,
) -> Response {
    let id = match node.parse::<NodeId>() {
        Ok(id) => id,
        Err(e) => return error(StatusCode::BAD_REQUEST, "bad_node_id", e.to_string()),
    };
    let signature = match removal_signature(&body) {
        Ok(s) => s,
        Err(why) => {
            return error(
                StatusCode::BAD_REQUEST,
                "bad_request",
                format!(
                    "{why}: a removal carries the operator's signature of it, made with the \
                     cluster CA key, as {{\"signature\": \"<base64url>\"}}; \
                     `chorus cluster remove {id} --operator-ca <CA directory>` makes and sends it"
                ),
            )
        }
    };
    let force = match query.as_deref().unwrap_or("") {
        "" | "force=false" => false,
        "force" | "force=true" => true,
        other => {
            return error(
                StatusCode::BAD_REQUEST,
                "bad_request",
                format!("unknown query {other:?}: the only parameter is force=true|false"),
            )
        }
    };
    let (tx, rx) = oneshot::channel();
    if api
        .admin
        .send(AdminRequest::Remove(id, signature, force, tx))
        .await
        .is_err()
    {
        return unavailable();
    }
    match rx.await {
        Ok(Ok(())) => (
            StatusCode::ACCEPTED,
            Json(Removing {
                status: "removing",
                node: id.to_string(),
            }),
        )
            .into_response(),
        Ok(Err(e @ RemoveError::Unknown(_))) => {
            error(StatusCode::NOT_FOUND, "unknown_node", e.to_string())
        }
        Ok(Err(e @ RemoveError::NotDown { .. })) => {
            error(StatusCode::CONFLICT, "not_down", e.to_string())
        }
        Ok(Err(e @ RemoveError::NotSigned(_))) => {
            error(StatusCode::FORBIDDEN, "not_signed", e.to_string())
        }
        Ok(Err(e)) => error(StatusCode::CONFLICT, "refused", e.to_string()),
        Err(_) => unavailable(),
    }
}

/// The operator's signature in a removal's body, `{"signature": "<base64url>"}`.
fn removal_signature(body: &[u8]) -> Result<Vec<u8>, String> {
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Body {
        signature: String,
    }
    if body.is_empty() {
        return Err("no signature".into());
    }
    let b: Body = serde_json::from_slice(body).map_err(|e| format!("bad body: {e}"))?;
    let sig = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(b.signature.trim_end_matches('='))
        .map_err(|e| format!("the signature is not base64url: {e}"))?;
    if sig.is_empty() || sig.len() > 512 {
        return Err(format!("a signature of {} bytes", sig.len()));
    }
    Ok(sig)
}

/// Why a request was refused before reaching the core.
pub(super) struct Refusal(pub(super) Box<Response>);

pub(super) fn bad(message: impl Into<String>) -> Refusal {
    Refusal(Box::new(error(
        StatusCode::BAD_REQUEST,
        "bad_request",
        message.into(),
    )))
}

/// The key: the path after `/v1/kv/`, percent-decoded to bytes.
fn key_of(uri: &Uri, limits: &Limits) -> Result<Vec<u8>, Refusal> {
    key_after(uri, KV_PREFIX, limits)
}

/// The key: the path after `prefix`, percent-decoded to bytes.
pub(super) fn key_after(uri: &Uri, prefix: &str, limits: &Limits) -> Result<Vec<u8>, Refusal> {
    let raw = uri.path().strip_prefix(prefix).unwrap_or_default();
    let key = percent_decode(raw).ok_or_else(|| bad("the key is not validly percent-encoded"))?;
    if key.is_empty() {
        return Err(bad("the key is empty"));
    }
    if key.len() > limits.key_bytes_max {
        return Err(Refusal(Box::new(error(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_large",
            format!(
                "the key is {} bytes, more than the limit of {}",
                key.len(),
                limits.key_bytes_max
            ),
        ))));
    }
    Ok(key)
}

/// `s` percent-decoded, or `None` when a `%` is not followed by two hex digits (the decoder
/// would keep such a `%` as it is; a key must be encoded exactly).
fn percent_decode(s: &str) -> Option<Vec<u8>> {
    let b = s.as_bytes();
    let well_formed = b.iter().enumerate().all(|(i, &c)| {
        c != b'%'
            || b.get(i + 1..i + 3)
                .is_some_and(|h| h.iter().all(u8::is_ascii_hexdigit))
    });
    well_formed.then(|| percent_encoding::percent_decode(b).collect())
}

/// `r`, `w`, `strict`, `timeout_ms` from the query string; anything else is refused.
pub(super) fn options_of(query: Option<String>) -> Result<RequestOptions, Refusal> {
    let mut o = RequestOptions::default();
    let Some(q) = query else { return Ok(o) };
    let pairs: Vec<(String, String)> =
        serde_urlencoded::from_str(&q).map_err(|e| bad(format!("bad query string: {e}")))?;
    for (k, v) in pairs {
        let number = |v: &str| {
            v.parse::<u64>()
                .map_err(|_| bad(format!("{k}={v:?} is not a non-negative integer")))
        };
        match k.as_str() {
            "r" => o.r = Some(number(&v)? as usize),
            "w" => o.w = Some(number(&v)? as usize),
            "timeout_ms" => o.timeout_ms = Some(number(&v)?),
            "strict" => {
                o.strict = match v.as_str() {
                    "" | "true" | "1" => true,
                    "false" | "0" => false,
                    _ => return Err(bad(format!("strict={v:?} is not true or false"))),
                }
            }
            other => return Err(bad(format!("unknown parameter {other:?}"))),
        }
    }
    Ok(o)
}

pub(super) fn context_of(headers: &HeaderMap, key: &[u8]) -> Result<Option<Context>, Refusal> {
    let Some(v) = headers.get(CONTEXT_HEADER) else {
        return Ok(None);
    };
    let token = v
        .to_str()
        .map_err(|_| bad("the context header is not ASCII"))?;
    Context::from_token(token, key)
        .map(Some)
        .map_err(|e| bad(e.to_string()))
}

fn wants_json(headers: &HeaderMap) -> bool {
    headers
        .get(axum::http::header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("application/json"))
}

pub(super) async fn call(api: &ApiState, request: ClientRequest) -> Result<ClientReply, Response> {
    let started = std::time::Instant::now();
    let op = super::metrics::op_name(&request.op);
    let write = request.op.is_write();
    let (tx, rx) = oneshot::channel();
    let request_id = REQUEST_ID.try_with(std::sync::Arc::clone).ok();
    match api.clients.try_send(CoreCall {
        request,
        reply: tx,
        request_id,
    }) {
        Ok(()) => {}
        // Refused before the core saw it: nothing was applied.
        Err(mpsc::error::TrySendError::Full(_)) => {
            super::metrics::refused(&api.status.recent, "http", op, started, "overloaded");
            return Err(failure(&ClientError::Overloaded, write));
        }
        Err(mpsc::error::TrySendError::Closed(_)) => {
            super::metrics::refused(&api.status.recent, "http", op, started, "shutting_down");
            return Err(stopping(write, false));
        }
    }
    match rx.await {
        Ok(reply) => {
            super::metrics::request(&api.status.recent, "http", op, started, &reply);
            Ok(reply)
        }
        // The node stopped with the request in flight: a write may have been applied.
        Err(_) => {
            super::metrics::refused(&api.status.recent, "http", op, started, "shutting_down");
            Err(stopping(write, true))
        }
    }
}

/// 503: the node is shutting down (with, for a write, whether it may have been applied).
fn stopping(write: bool, maybe_applied: bool) -> Response {
    (
        StatusCode::SERVICE_UNAVAILABLE,
        Json(ErrorBody {
            error: "shutting_down",
            message: "the node is shutting down".into(),
            indeterminate: write.then_some(maybe_applied),
        }),
    )
        .into_response()
}

/// 500: the core answered with the wrong kind of reply (a bug).
pub(super) fn wrong_reply() -> Response {
    error(
        StatusCode::INTERNAL_SERVER_ERROR,
        "internal",
        "the node answered with the wrong kind of reply".into(),
    )
}

pub(super) fn failure(e: &ClientError, write: bool) -> Response {
    tracing::debug!(code = e.code(), "request failed: {e}");
    let (status, indeterminate) = match e {
        ClientError::BadRequest(_) => (StatusCode::BAD_REQUEST, None),
        ClientError::TooLarge(_) => (StatusCode::PAYLOAD_TOO_LARGE, None),
        ClientError::TypeConflict(_) => (StatusCode::CONFLICT, None),
        ClientError::Overloaded => (StatusCode::SERVICE_UNAVAILABLE, write.then_some(false)),
        ClientError::Unavailable { indeterminate, .. } => (
            StatusCode::SERVICE_UNAVAILABLE,
            write.then_some(*indeterminate),
        ),
        ClientError::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, write.then_some(false)),
    };
    (
        status,
        Json(ErrorBody {
            error: e.code(),
            message: e.to_string(),
            indeterminate,
        }),
    )
        .into_response()
}

/// A contested key: writes of several types raced, and the key keeps every part.
#[derive(Serialize, utoipa::ToSchema)]
pub(super) struct ContestedBody {
    /// `contested`.
    error: &'static str,
    /// What happened and how to end it.
    message: String,
    /// Every live part of the key.
    parts: Vec<PartJson>,
}

/// One live part of a contested key.
#[derive(Serialize, utoipa::ToSchema)]
pub(super) struct PartJson {
    /// The part's type.
    #[serde(rename = "type")]
    type_name: String,
    /// A register part's values, base64.
    #[serde(skip_serializing_if = "Option::is_none")]
    values: Option<Vec<String>>,
    /// A CRDT part's value.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Object)]
    value: Option<serde_json::Value>,
    /// The part's context: a `DELETE /v1/kv/{key}` with a register part's context removes
    /// exactly the values it covers.
    #[serde(skip_serializing_if = "Option::is_none")]
    context: Option<String>,
}

/// The answer to a read of a contested key, on either API: 409 `contested` with every part.
pub(super) fn contested(read: &crate::node::ReadResult) -> Response {
    let b64 = base64::engine::general_purpose::STANDARD;
    let shown: Vec<String> = read
        .parts
        .iter()
        .map(|p| match &p.crdt {
            Some(v) => format!("{} = {}", p.type_name, super::crdt::value_json(v)),
            None => format!("{} with {} value(s)", p.type_name, p.values.len()),
        })
        .collect();
    let message = format!(
        "the key holds several types at once: {}; writes of different types raced and every one was kept; a CRDT part is permanent, a register part ends with a delete carrying its context",
        shown.join(", ")
    );
    let parts = read
        .parts
        .iter()
        .map(|p| PartJson {
            type_name: p.type_name.clone(),
            values: (p.type_name == "register")
                .then(|| p.values.iter().map(|v| b64.encode(v)).collect()),
            value: p.crdt.as_ref().map(super::crdt::value_json),
            context: p.context.as_ref().map(Context::to_token),
        })
        .collect();
    (
        StatusCode::CONFLICT,
        Json(ContestedBody {
            error: "contested",
            message,
            parts,
        }),
    )
        .into_response()
}

/// Concurrent values of a register.
#[derive(Serialize, utoipa::ToSchema)]
struct Siblings {
    /// The causal context covering every value (send it back with the write that resolves
    /// them).
    context: Option<String>,
    /// The values, base64 (standard alphabet, padded).
    values: Vec<String>,
}

fn siblings_json(values: &[Vec<u8>], context: Option<&Context>) -> Json<Siblings> {
    let b64 = base64::engine::general_purpose::STANDARD;
    Json(Siblings {
        context: context.map(Context::to_token),
        values: values.iter().map(|v| b64.encode(v)).collect(),
    })
}

pub(super) fn header(v: &str) -> HeaderValue {
    HeaderValue::from_str(v).unwrap_or_else(|_| HeaderValue::from_static(""))
}

/// `GET /v1/kv/{key}`.
#[utoipa::path(get, path = "/v1/kv/{*key}", tag = "kv",
    params(
        ("key" = String, Path, description = "The key, percent-encoded (any bytes)"),
        super::openapi::DataParams,
        ("accept" = Option<String>, Header,
            description = "`application/json`: answer 200 with the JSON of the values for any \
            count (siblings included)"),
        ("x-request-id" = Option<String>, Header, description = "The request's id (1 to 64 \
            printable ASCII characters); minted when absent, returned either way")),
    responses(
        (status = 200, description = "One value (raw bytes), or with `Accept: \
            application/json` the values as JSON",
            headers(("x-chorus-context" = String, description = "The causal context to send \
                back with the next write")),
            content(([u8] = "application/octet-stream"), (Siblings = "application/json"))),
        (status = 300, description = "Concurrent values (siblings)", body = Siblings,
            headers(("x-chorus-context" = String, description = "Covers every sibling"))),
        (status = 404, description = "Absent or deleted (`not_found`); with \
            `x-chorus-context` when a tombstone exists", body = ErrorBody),
        super::openapi::DataErrors))]
async fn kv_get(
    State(api): State<ApiState>,
    uri: Uri,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Response {
    let request = match (key_of(&uri, &api.limits), options_of(query)) {
        (Ok(key), Ok(options)) => ClientRequest {
            key,
            op: ClientOp::Get,
            options,
        },
        (Err(r), _) | (_, Err(r)) => return *r.0,
    };
    let reply = match call(&api, request).await {
        Ok(r) => r,
        Err(resp) => return resp,
    };
    let read = match reply {
        ClientReply::Read(r) => r,
        ClientReply::Failed(e) => return failure(&e, false),
        ClientReply::Written(_) | ClientReply::Updated(_) => return wrong_reply(),
    };
    if !read.parts.is_empty() {
        return contested(&read);
    }
    if let Some(t) = read.type_name.as_deref().filter(|&t| t != "register") {
        let e = ClientError::TypeConflict(format!(
            "the key holds a {t}, not a register; read it at /v1/crdt/"
        ));
        return failure(&e, false);
    }
    let mut resp = if read.values.is_empty() {
        error(
            StatusCode::NOT_FOUND,
            "not_found",
            if read.deleted {
                "the key was deleted".into()
            } else {
                "no such key".into()
            },
        )
    } else if wants_json(&headers) {
        siblings_json(&read.values, read.context.as_ref()).into_response()
    } else if read.values.len() == 1 {
        let mut r = read.values[0].clone().into_response();
        r.headers_mut().insert(
            axum::http::header::CONTENT_TYPE,
            HeaderValue::from_static("application/octet-stream"),
        );
        r
    } else {
        (
            StatusCode::MULTIPLE_CHOICES,
            siblings_json(&read.values, read.context.as_ref()),
        )
            .into_response()
    };
    if let Some(c) = &read.context {
        resp.headers_mut()
            .insert(CONTEXT_HEADER, header(&c.to_token()));
    }
    resp
}

/// `PUT /v1/kv/{key}`.
#[utoipa::path(put, path = "/v1/kv/{*key}", tag = "kv",
    params(
        ("key" = String, Path, description = "The key, percent-encoded (any bytes)"),
        super::openapi::DataParams,
        ("x-chorus-context" = Option<String>, Header, description = "The context of the read \
            this write follows: it supersedes what the read saw. Without one the write is \
            concurrent with every existing value"),
        ("x-request-id" = Option<String>, Header, description = "The request's id")),
    request_body(content = [u8], content_type = "application/octet-stream",
        description = "The value (up to the node's value limit)"),
    responses(
        (status = 204, description = "Written; one value remains",
            headers(
                ("x-chorus-context" = String, description = "The new context"),
                ("x-chorus-acks" = u32, description = "Replicas that acknowledged durably"),
                ("x-chorus-sync" = String, description = "The sync policy that applied"))),
        (status = 300, description = "Written; concurrent values remain beside it",
            body = Siblings,
            headers(
                ("x-chorus-context" = String, description = "The new context"),
                ("x-chorus-acks" = u32, description = "Replicas that acknowledged durably"),
                ("x-chorus-sync" = String, description = "The sync policy that applied"))),
        super::openapi::DataErrors))]
async fn kv_put(
    State(api): State<ApiState>,
    uri: Uri,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let body = match body {
        Ok(b) => b,
        Err(e) if e.status() == StatusCode::PAYLOAD_TOO_LARGE => {
            return error(
                StatusCode::PAYLOAD_TOO_LARGE,
                "too_large",
                format!(
                    "the value is more than the limit of {} bytes",
                    api.limits.value_bytes_max
                ),
            )
        }
        Err(e) => return error(StatusCode::BAD_REQUEST, "bad_request", e.body_text()),
    };
    write(&api, uri, query, &headers, Some(body.to_vec())).await
}

/// `DELETE /v1/kv/{key}`.
#[utoipa::path(delete, path = "/v1/kv/{*key}", tag = "kv",
    params(
        ("key" = String, Path, description = "The key, percent-encoded (any bytes)"),
        super::openapi::DataParams,
        ("x-chorus-context" = Option<String>, Header, description = "The context of the read \
            this delete follows: it removes what the read saw"),
        ("x-request-id" = Option<String>, Header, description = "The request's id")),
    responses(
        (status = 204, description = "Deleted",
            headers(
                ("x-chorus-context" = String, description = "The new context"),
                ("x-chorus-acks" = u32, description = "Replicas that acknowledged durably"),
                ("x-chorus-sync" = String, description = "The sync policy that applied"))),
        (status = 300, description = "Values the context did not cover remain",
            body = Siblings),
        super::openapi::DataErrors))]
async fn kv_delete(
    State(api): State<ApiState>,
    uri: Uri,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Response {
    write(&api, uri, query, &headers, None).await
}

enum Kind {
    Put,
    Delete,
}

async fn write(
    api: &ApiState,
    uri: Uri,
    query: Option<String>,
    headers: &HeaderMap,
    value: Option<Vec<u8>>,
) -> Response {
    let key = match key_of(&uri, &api.limits) {
        Ok(k) => k,
        Err(r) => return *r.0,
    };
    let (options, context) = match (options_of(query), context_of(headers, &key)) {
        (Ok(o), Ok(c)) => (o, c),
        (Err(r), _) | (_, Err(r)) => return *r.0,
    };
    let request_kind = if value.is_some() {
        Kind::Put
    } else {
        Kind::Delete
    };
    let op = match value {
        Some(value) => ClientOp::Put { value, context },
        None => ClientOp::Delete { context },
    };
    let request = ClientRequest { key, op, options };
    let reply = match call(api, request).await {
        Ok(r) => r,
        Err(resp) => return resp,
    };
    let w = match reply {
        ClientReply::Written(w) => w,
        ClientReply::Failed(e) => return failure(&e, true),
        ClientReply::Read(_) | ClientReply::Updated(_) => return wrong_reply(),
    };
    // A context that covers a sibling never reaches a client without that sibling: a write
    // answers 300 when values beside its own remain, a delete when any value remains.
    let delete = matches!(request_kind, Kind::Delete);
    let mut resp = if w.values.len() > 1 || (delete && !w.values.is_empty()) {
        (
            StatusCode::MULTIPLE_CHOICES,
            siblings_json(&w.values, Some(&w.context)),
        )
            .into_response()
    } else {
        StatusCode::NO_CONTENT.into_response()
    };
    let h = resp.headers_mut();
    h.insert(CONTEXT_HEADER, header(&w.context.to_token()));
    h.insert(ACKS_HEADER, header(&w.acks.to_string()));
    h.insert(SYNC_HEADER, header(api.sync));
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_percent_decoded_to_bytes() {
        let limits = Limits {
            key_bytes_max: 8,
            value_bytes_max: 8,
        };
        let k = |p: &str| key_of(&p.parse::<Uri>().unwrap(), &limits).map_err(|r| r.0.status());
        assert_eq!(k("/v1/kv/cart%3A1"), Ok(b"cart:1".to_vec()));
        assert_eq!(k("/v1/kv/a/b"), Ok(b"a/b".to_vec()));
        assert_eq!(k("/v1/kv/%FF%00"), Ok(vec![0xff, 0]));
        assert_eq!(k("/v1/kv/%zz"), Err(StatusCode::BAD_REQUEST));
        assert_eq!(k("/v1/kv/%4"), Err(StatusCode::BAD_REQUEST));
        assert_eq!(k("/v1/kv/a%+F"), Err(StatusCode::BAD_REQUEST));
        assert_eq!(k("/v1/kv/"), Err(StatusCode::BAD_REQUEST));
        assert_eq!(k("/v1/kv/123456789"), Err(StatusCode::PAYLOAD_TOO_LARGE));
    }

    #[test]
    fn options_parse_and_refuse_unknown_or_malformed_parameters() {
        let o = options_of(Some("r=3&w=1&strict=true&timeout_ms=250".into()))
            .ok()
            .unwrap();
        assert_eq!(
            (o.r, o.w, o.strict, o.timeout_ms),
            (Some(3), Some(1), true, Some(250))
        );
        for q in ["r=-1", "w=x", "strict=maybe", "nope=1", "timeout_ms=1.5"] {
            assert!(options_of(Some(q.into())).is_err(), "{q}");
        }
        assert!(options_of(None).is_ok());
    }
}
