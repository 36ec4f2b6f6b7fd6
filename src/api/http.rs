//! The HTTP API (axum). Handlers never touch the node core directly: they send an
//! [`AdminRequest`] to the driver task that owns the core and await its answer.
//!
//! Stable endpoints:
//! - `GET /health` → 200 once the node serves.
//! - `GET /v1/cluster` → the cluster as this node sees it ([`ClusterView`] as JSON).
//! - `POST /v1/cluster/leave` → 202 `{"status":"leaving"}`; the node leaves gracefully and
//!   exits once a majority of the live members confirmed its departure.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use tokio::sync::{mpsc, oneshot};

use crate::node::ClusterView;

/// A request from the HTTP API to the driver that owns the node core.
#[derive(Debug)]
pub enum AdminRequest {
    /// Report the cluster view.
    Cluster(oneshot::Sender<ClusterView>),
    /// Leave the cluster; answered once the leave has started.
    Leave(oneshot::Sender<()>),
}

/// The router for the HTTP API, forwarding to the driver through `admin`.
pub fn router(admin: mpsc::Sender<AdminRequest>) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/v1/cluster", get(cluster))
        .route("/v1/cluster/leave", post(leave))
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
