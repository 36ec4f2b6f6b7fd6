//! Merkle-tree anti-entropy through real `chorus start` processes on 127.0.0.1: a replica that
//! was down while keys were written, with hints and read repair off, catches up with
//! `chorus repair` alone; afterwards every replica reports the same Merkle roots in
//! `GET /v1/partitions`, and the repaired node serves every key by itself. 2,000 keys by
//! default; `CHORUS_REPAIR_KEYS=100000` runs the size.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::*;

/// Keys written while the replica is down.
fn keys() -> usize {
    std::env::var("CHORUS_REPAIR_KEYS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2_000)
}

fn partitions(http: std::net::SocketAddr) -> Vec<serde_json::Value> {
    let body = ureq::get(format!("http://{http}/v1/partitions"))
        .call()
        .expect("GET /v1/partitions")
        .body_mut()
        .read_to_string()
        .unwrap();
    serde_json::from_str(&body).expect("JSON")
}

/// Partition → (root, keys), as `http` reports it.
fn roots(http: std::net::SocketAddr) -> BTreeMap<u64, (String, u64)> {
    partitions(http)
        .iter()
        .map(|p| {
            (
                p["partition"].as_u64().unwrap(),
                (
                    p["root"].as_str().unwrap().to_owned(),
                    p["keys"].as_u64().unwrap(),
                ),
            )
        })
        .collect()
}

#[test]
fn chorus_repair_alone_brings_back_a_replica_that_missed_writes() {
    let keys = keys();
    let root = tempfile::tempdir().unwrap();
    let flags = [
        "--no-hints",
        "--no-read-repair",
        "--anti-entropy-interval",
        "0",
    ];
    let (mut nodes, ids) = start_cluster_with(root.path(), 3, &flags);
    nodes[2].kill();
    let http0 = nodes[0].http;
    // With hints off no fallback takes n2's share: only the two live replicas get the keys.
    for i in 0..keys {
        let key = format!("key{i:05}");
        let value = format!("value of {key}");
        let a = put(http0, &key, value.as_bytes(), None, "w=2");
        assert_eq!(a.status, 204, "{key}: {a:?}");
    }
    nodes[2].spawn();
    nodes[2].wait_serving();
    // Repair compares with the replicas it sees alive: wait until it sees both, and until both
    // know n2 restarted (a newer generation), which is when they drop their connections to its
    // previous process (answers sent into those would be lost).
    wait_members(&nodes, &ids);
    for n in &nodes[..2] {
        let knows = wait_for(Duration::from_secs(20), || {
            n.view().filter(|v| {
                v.members
                    .iter()
                    .any(|m| m.id == ids[2] && m.incarnation >= 2)
            })
        });
        assert!(knows.is_some(), "{}: {:?}", n.name, n.view());
    }
    let before = roots(nodes[2].http);
    let held: u64 = before.values().map(|(_, k)| k).sum();
    assert!(held < keys as u64, "n2 missed the writes: it holds {held}");

    let started = Instant::now();
    // One run: no peer answers into a connection to n2's previous process.
    let out = chorus()
        .args(["repair", "--http", &format!("http://{}", nodes[2].http)])
        .env("CHORUS_OPERATOR_TOKEN", OPERATOR_TOKEN)
        .output()
        .unwrap();
    let elapsed = started.elapsed();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "chorus repair: {stdout}\n{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        nodes[2].log()
    );
    assert!(stdout.contains("finished"), "{stdout}");
    eprintln!("chorus repair of {keys} keys took {elapsed:?}:\n{stdout}");

    // Every replica reports the same roots (N=3: every node replicates every partition).
    let r: Vec<BTreeMap<u64, (String, u64)>> = nodes.iter().map(|n| roots(n.http)).collect();
    assert_eq!(r[0].len(), 256, "every partition is listed");
    assert_eq!(r[0], r[1]);
    assert_eq!(r[0], r[2], "the repaired replica equals the others");
    let total: u64 = r[2].values().map(|(_, k)| k).sum();
    assert_eq!(total, keys as u64);
    let repaired: u64 = partitions(nodes[2].http)
        .iter()
        .map(|p| p["keys_repaired"].as_u64().unwrap())
        .sum();
    assert!(repaired >= (keys as u64) - held, "repaired {repaired}");

    // The repaired node alone serves every key.
    nodes[0].kill();
    nodes[1].kill();
    for i in (0..keys).step_by(7) {
        let key = format!("key{i:05}");
        let a = get(nodes[2].http, &key, "r=1");
        assert_eq!(a.status, 200, "{key}: {a:?}");
        assert_eq!(a.body, format!("value of {key}").into_bytes());
    }
}

#[test]
fn repair_requests_are_validated() {
    let root = tempfile::tempdir().unwrap();
    let (nodes, _ids) = start_cluster(root.path(), 1);
    let http = nodes[0].http;
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    let status = |r: Result<ureq::http::Response<ureq::Body>, ureq::Error>| {
        r.expect("answer").status().as_u16()
    };
    assert_eq!(
        status(
            as_operator(agent.post(format!("http://{http}/v1/repair?partition=256"))).send_empty()
        ),
        400,
        "a partition beyond the ring"
    );
    assert_eq!(
        status(
            as_operator(agent.post(format!("http://{http}/v1/repair?partition=x"))).send_empty()
        ),
        400
    );
    assert_eq!(
        status(agent.get(format!("http://{http}/v1/repair/77")).call()),
        404
    );
    // A single node repairs trivially: nothing to compare with.
    assert_eq!(
        status(
            as_operator(agent.post(format!("http://{http}/v1/repair?partition=3"))).send_empty()
        ),
        202
    );
    let out = chorus()
        .args([
            "repair",
            "--http",
            &format!("http://{http}"),
            "--partition",
            "9",
        ])
        .env("CHORUS_OPERATOR_TOKEN", OPERATOR_TOKEN)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Tombstone GC through real processes: deleted keys end purged on every node (every member
/// agreed), read as never written, and a key written again afterwards is kept. Short GC
/// settings (a quiet window this short is only safe on a loopback test network).
#[test]
fn deleted_keys_are_purged_on_every_node_and_stay_deleted() {
    const GC_KEYS: usize = 300;
    let tmp = tempfile::tempdir().unwrap();
    let flags = [
        "--tombstone-gc-interval",
        "1",
        "--tombstone-gc-quiet",
        "4",
        "--request-timeout-max",
        "2",
        "--anti-entropy-interval",
        "5",
    ];
    let (nodes, _ids) = start_cluster_with(tmp.path(), 3, &flags);
    for i in 0..GC_KEYS {
        let key = format!("gone-{i}");
        let w = put(nodes[i % 3].http, &key, b"value", None, "w=3");
        assert_eq!(w.status, 204, "{w:?}");
        let d = delete(nodes[(i + 1) % 3].http, &key, w.context.as_deref());
        assert!((200..300).contains(&d.status), "{d:?}");
    }
    let deleted = get(nodes[0].http, "gone-0", "r=3");
    assert_eq!(deleted.status, 404);
    assert!(
        deleted.context.is_some(),
        "a tombstone answers with its context"
    );
    let started = Instant::now();
    let purged = wait_for(Duration::from_secs(120), || {
        let total: u64 = nodes
            .iter()
            .map(|n| {
                n.view()
                    .and_then(|v| v.data)
                    .map_or(0, |d| d.tombstones_purged)
            })
            .sum();
        (total == 3 * GC_KEYS as u64).then_some(total)
    });
    assert!(
        purged.is_some(),
        "every replica purged every tombstone: {:?}\n{}",
        nodes
            .iter()
            .map(|n| n.view().and_then(|v| v.data))
            .collect::<Vec<_>>(),
        nodes[0].log()
    );
    eprintln!(
        "{} tombstones purged on 3 nodes {:?} after the deletes",
        3 * GC_KEYS,
        started.elapsed()
    );
    for n in &nodes {
        let held: u64 = roots(n.http).values().map(|(_, keys)| keys).sum();
        assert_eq!(held, 0, "nothing left on {}", n.name);
    }
    for i in (0..GC_KEYS).step_by(7) {
        let key = format!("gone-{i}");
        let r = get(nodes[i % 3].http, &key, "r=3");
        assert_eq!(r.status, 404, "{key}: {r:?}");
        assert!(r.context.is_none(), "{key} reads as never written: {r:?}");
    }
    // A key lives again after its purge.
    let again = put(nodes[1].http, "gone-0", b"again", None, "w=3");
    assert_eq!(again.status, 204, "{again:?}");
    for n in &nodes {
        let r = get(n.http, "gone-0", "r=1");
        assert_eq!(
            (r.status, r.body.as_slice()),
            (200, &b"again"[..]),
            "{}",
            n.name
        );
    }
}
