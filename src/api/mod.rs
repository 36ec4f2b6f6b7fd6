//! User-facing APIs: the HTTP API (axum). The QUIC client API and the Rust client library
//! arrive with the replicated key-value store.

pub mod crdt;
pub mod http;
