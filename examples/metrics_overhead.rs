//! What recording metrics costs a node per client request: the time of each recording call
//! the request path makes, with the Prometheus recorder `chorus start` installs and without
//! one (`--no-metrics`, where only the status page's last-minute window records).
//!
//! Run: `cargo run --release --example metrics_overhead`. Compare the figures with the node
//! CPU time per operation that `chorus bench` implies (hundreds of microseconds per YCSB-A
//! operation over three nodes on this machine) to get the overhead.

use std::hint::black_box;
use std::time::{Duration, Instant};

use chorus::api::metrics;
use chorus::api::status::RecentRequests;
use chorus::node::{ClientReply, ReadResult};

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
        metrics::request(recent, "http", "get", black_box(started), reply)
    });
    let request = per_call(N, || {
        metrics::request(recent, "http", "get", black_box(started), black_box(reply))
    });
    let replica = per_call(N, || {
        metrics::replica_write(black_box(Duration::from_micros(700)))
    });
    println!("{label:<34} request {request:>7.1} ns   replica write {replica:>6.1} ns");
    (request, replica)
}

fn main() {
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
    let handle = chorus::runtime::install_metrics().expect("install the recorder");
    let (on_req, on_rep) = measure("Prometheus recorder (default)", &recent, &reply);
    // Histogram samples wait in lock-free buffers until a scrape drains them: part of their
    // cost is paid at render. The recorder run above left 2 samples per request (latency and
    // values read) and 1 per replica write.
    let samples = 2.0 * f64::from(N + WARM_UP) + f64::from(N);
    let t = Instant::now();
    let text = handle.render();
    let render = t.elapsed();
    let drain = render.as_nanos() as f64 / samples;
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
