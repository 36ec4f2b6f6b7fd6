//! Chorus: a leaderless, Dynamo-style, eventually consistent key-value store.
//!
//! # Layout
//!
//! The deterministic core does no I/O, reads no clock and draws no ambient randomness; the
//! production runtime and the simulator both drive it.
//!
//! - [`id`]: node identity.
//! - [`causality`]: dots, version vectors, dotted version vector sets (multi-value registers).
//! - [`crdt`]: G-Counter, PN-Counter, 2P-Set and add-wins OR-Set behind one [`crdt::Crdt`] trait.
//! - [`ring`]: partitions, the consistent-hash ring with virtual nodes, preference lists, and
//!   placement plans for operators.
//! - [`protocol`]: the versioned wire envelope and its limits, peer messages.
//! - [`membership`]: ring membership as a CRDT, and the SWIM (`foca`) glue.
//! - [`merkle`]: incremental per-partition Merkle trees for anti-entropy.
//! - [`node`]: the sans-IO node core that both drivers run.
//! - [`storage`]: the `Store` trait, an in-memory store with crash semantics and (with the
//!   `server` feature) RocksDB.
//!
//! With the `server` feature (the default), the production driver:
//!
//! - `runtime`: the tokio driver, QUIC transport with mutual TLS, the `chorus dev` supervisor.
//! - `api`: the HTTP API.
//! - `bench`: the `chorus bench` load generator (a client of the cluster, over QUIC or HTTP).
//!
//! With the `client` feature (part of `server`, or alone without RocksDB): `client`, the Rust
//! client library.
#![forbid(unsafe_code)]
#![warn(missing_docs, unreachable_pub)]

#[cfg(feature = "server")]
pub mod api;
#[cfg(feature = "server")]
pub mod bench;
pub mod causality;
#[cfg(feature = "client")]
pub mod client;
pub mod crdt;
#[doc(hidden)]
pub mod fuzzing;
pub mod id;
pub mod membership;
pub mod merkle;
pub mod node;
pub mod protocol;
pub mod ring;
#[cfg(feature = "server")]
pub mod runtime;
pub mod storage;

#[cfg(test)]
pub(crate) mod testing;

pub use id::NodeId;
