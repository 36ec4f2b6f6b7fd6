//! The HTTP API (axum). Handlers never touch the node core directly: they send an
//! [`AdminRequest`] to the driver task that owns the core and await its answer.
//!
//! Stable endpoints:
//! - `GET /health` → 200 once the node serves.
//! - `GET /v1/cluster` → the cluster as this node sees it ([`ClusterView`] as JSON).
//! - `POST /v1/cluster/leave` → 202 `{"status":"leaving"}`; the node leaves gracefully and
//!   exits once a majority of the ring's members confirmed its departure (until then
//!   `GET /v1/cluster` lists the leave under `pending`).
//! - `POST /v1/cluster/remove/{node}` → 202 `{"status":"removing","node":"..."}`: an operator
//!   writes off a dead node; its partitions move to the others. Progress shows under `pending`
//!   in `GET /v1/cluster`. 400 for a malformed id, 404 for a node not in the ring, 409 when the
//!   node is this one (use leave) or this node is leaving.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use tokio::sync::{mpsc, oneshot};

use crate::id::NodeId;
use crate::node::{ClusterView, RemoveError};

/// A request from the HTTP API to the driver that owns the node core.
#[derive(Debug)]
pub enum AdminRequest {
    /// Report the cluster view.
    Cluster(oneshot::Sender<ClusterView>),
    /// Leave the cluster; answered once the leave has started.
    Leave(oneshot::Sender<()>),
    /// Remove a dead node from the ring; answered once the removal has started.
    Remove(NodeId, oneshot::Sender<Result<(), RemoveError>>),
}

/// The router for the HTTP API, forwarding to the driver through `admin`.
pub fn router(admin: mpsc::Sender<AdminRequest>) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/v1/cluster", get(cluster))
        .route("/v1/cluster/leave", post(leave))
        .route("/v1/cluster/remove/{node}", post(remove))
        .with_state(admin)
}

async fn health() -> &'static str {
    "ok\n"
}

fn unavailable() -> Response {
    (
        StatusCode::SERVICE_UNAVAILABLE,
        Json(serde_json::json!({"error": "the node is shutting down"})),
    )
        .into_response()
}

async fn cluster(State(admin): State<mpsc::Sender<AdminRequest>>) -> Response {
    let (tx, rx) = oneshot::channel();
    if admin.send(AdminRequest::Cluster(tx)).await.is_err() {
        return unavailable();
    }
    match rx.await {
        Ok(view) => Json(view).into_response(),
        Err(_) => unavailable(),
    }
}

async fn leave(State(admin): State<mpsc::Sender<AdminRequest>>) -> Response {
    let (tx, rx) = oneshot::channel();
    if admin.send(AdminRequest::Leave(tx)).await.is_err() {
        return unavailable();
    }
    match rx.await {
        Ok(()) => (
            StatusCode::ACCEPTED,
            Json(serde_json::json!({"status": "leaving"})),
        )
            .into_response(),
        Err(_) => unavailable(),
    }
}

fn error(status: StatusCode, code: &str, message: String) -> Response {
    (
        status,
        Json(serde_json::json!({"error": code, "message": message})),
    )
        .into_response()
}

async fn remove(
    State(admin): State<mpsc::Sender<AdminRequest>>,
    Path(node): Path<String>,
) -> Response {
    let id = match node.parse::<NodeId>() {
        Ok(id) => id,
        Err(e) => return error(StatusCode::BAD_REQUEST, "bad_node_id", e.to_string()),
    };
    let (tx, rx) = oneshot::channel();
    if admin.send(AdminRequest::Remove(id, tx)).await.is_err() {
        return unavailable();
    }
    match rx.await {
        Ok(Ok(())) => (
            StatusCode::ACCEPTED,
            Json(serde_json::json!({"status": "removing", "node": id.to_string()})),
        )
            .into_response(),
        Ok(Err(e @ RemoveError::Unknown(_))) => {
            error(StatusCode::NOT_FOUND, "unknown_node", e.to_string())
        }
        Ok(Err(e)) => error(StatusCode::CONFLICT, "refused", e.to_string()),
        Err(_) => unavailable(),
    }
}
