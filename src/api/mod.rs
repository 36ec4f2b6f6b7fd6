//! User-facing APIs: the HTTP API (axum) and the QUIC client API, both thin translators in
//! front of the node core, the client token both check, the Prometheus metrics both
//! record, and the live status page. The Rust client library that
//! speaks them is [`crate::client`].

pub mod auth;
pub mod crdt;
pub mod http;
pub mod metrics;
pub mod openapi;
pub mod quic;
pub mod status;
