//! The replicated store through real `chorus start` processes on 127.0.0.1: round trips over
//! HTTP, siblings and their resolution, every error status, SIGKILL of one node (sloppy quorum
//! and hinted handoff), SIGKILL of every node during a stream of writes (durability), two
//! clients through one node, and a certificate holder that tries to acknowledge for another
//! node.

mod common;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;

#[test]
fn a_write_on_one_node_is_read_from_the_others() {
    let tmp = tempfile::tempdir().unwrap();
    let (nodes, _) = start_cluster(tmp.path(), 3);
    let w = put(nodes[0].http, "cart%3A42", b"apples", None, "");
    assert_eq!(w.status, 204, "{:?}", String::from_utf8_lossy(&w.body));
    assert!(w.context.is_some());
    assert!(w.acks.as_deref().unwrap().parse::<u32>().unwrap() >= 2);
    assert_eq!(w.sync.as_deref(), Some("always"));
    for n in &nodes {
        let r = get(n.http, "cart%3A42", "r=3");
        assert_eq!(
            (r.status, r.body.as_slice()),
            (200, &b"apples"[..]),
            "{}",
            n.name
        );
        assert!(r.context.is_some());
        let j = get_json(n.http, "cart%3A42");
        assert_eq!(j.status, 200);
        assert_eq!(j.sibling_values(), vec![b"apples".to_vec()]);
    }
    // Binary keys and values round-trip.
    let w = put(nodes[1].http, "%00%FF", &[0, 1, 2, 255], None, "");
    assert_eq!(w.status, 204);
    assert_eq!(get(nodes[2].http, "%00%FF", "").body, vec![0, 1, 2, 255]);
    // Delete with the read's context: 204 with a context; then 404 with the tombstone's.
    let ctx = get(nodes[0].http, "cart%3A42", "").context;
    let d = delete(nodes[2].http, "cart%3A42", ctx.as_deref());
    assert_eq!(d.status, 204);
    assert!(d.context.is_some());
    let r = get(nodes[1].http, "cart%3A42", "r=3");
    assert_eq!(r.status, 404);
    assert!(r.context.is_some(), "a tombstone has a context");
    assert_eq!(get(nodes[1].http, "never-written", "").status, 404);
    assert!(get(nodes[1].http, "never-written", "").context.is_none());
}

#[test]
fn stale_contexts_give_two_siblings_and_the_returned_context_resolves_them() {
    let tmp = tempfile::tempdir().unwrap();
    let (nodes, _) = start_cluster(tmp.path(), 3);
    let first = put(nodes[0].http, "doc", b"v0", None, "");
    let stale = first.context.clone().unwrap();
    let a = put(nodes[1].http, "doc", b"a", Some(&stale), "");
    assert_eq!(a.status, 204);
    let b = put(nodes[2].http, "doc", b"b", Some(&stale), "");
    // The second writer's context covers both values, so it must see both.
    assert_eq!(b.status, 300, "{:?}", String::from_utf8_lossy(&b.body));
    assert_eq!(b.sibling_values(), vec![b"a".to_vec(), b"b".to_vec()]);
    let r = get(nodes[0].http, "doc", "r=3");
    assert_eq!(r.status, 300);
    assert_eq!(r.sibling_values(), vec![b"a".to_vec(), b"b".to_vec()]);
    let resolved = put(nodes[0].http, "doc", b"ab", r.context.as_deref(), "");
    assert_eq!(resolved.status, 204);
    for n in &nodes {
        let r = get(n.http, "doc", "r=3");
        assert_eq!(
            (r.status, r.body.as_slice()),
            (200, &b"ab"[..]),
            "{}",
            n.name
        );
    }
}

#[test]
fn every_error_status_is_clear_and_changes_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let (mut nodes, _) = start_cluster(tmp.path(), 3);
    let http = nodes[0].http;
    let w = put(http, "k", b"original", None, "");
    assert_eq!(w.status, 204);
    let other = put(http, "other", b"x", None, "").context.unwrap();
    let big_key = "k".repeat(1025);
    let big_value = vec![7u8; 1024 * 1024 + 1];
    let cases: Vec<(&str, Answer, u16, &str)> = vec![
        (
            "garbage context",
            put(http, "k", b"x", Some("!!not-a-context!!"), ""),
            400,
            "bad_request",
        ),
        (
            "context of another key",
            put(http, "k", b"x", Some(&other), ""),
            400,
            "bad_request",
        ),
        ("r=0", get(http, "k", "r=0"), 400, "bad_request"),
        (
            "w=4 with N=3",
            put(http, "k", b"x", None, "w=4"),
            400,
            "bad_request",
        ),
        (
            "unknown parameter",
            put(http, "k", b"x", None, "quorum=all"),
            400,
            "bad_request",
        ),
        (
            "bad timeout",
            put(http, "k", b"x", None, "timeout_ms=soon"),
            400,
            "bad_request",
        ),
        (
            "key over 1 KiB",
            put(http, &big_key, b"x", None, ""),
            413,
            "too_large",
        ),
        (
            "value over 1 MiB",
            put(http, "k", &big_value, None, ""),
            413,
            "too_large",
        ),
        ("absent key", get(http, "absent", ""), 404, "not_found"),
    ];
    for (what, a, status, code) in &cases {
        assert_eq!(
            a.status,
            *status,
            "{what}: {:?}",
            String::from_utf8_lossy(&a.body)
        );
        let j = a.json();
        assert_eq!(j["error"], *code, "{what}: {j}");
        assert!(!j["message"].as_str().unwrap().is_empty(), "{what}");
        let r = get(http, "k", "r=3");
        assert_eq!(r.body, b"original", "{what} changed the data");
    }
    // 503: the quorum cannot be reached. Right after a SIGKILL, before SWIM notices, a write
    // that needs the dead node times out: it may have been applied (it was, on two nodes).
    // (The key exists: a coordinator without a copy of a key would first ask the replicas
    // what it holds, and time out there, with nothing applied.)
    let first = put(http, "k2", b"first", None, "w=3");
    assert_eq!(first.status, 204, "{first:?}");
    let victim = nodes[2].view().unwrap().node_id;
    nodes[2].kill();
    let a = put(http, "k2", b"maybe", None, "w=3&timeout_ms=300");
    assert_eq!(a.status, 503);
    let j = a.json();
    assert_eq!(j["indeterminate"].as_bool(), Some(true), "{j}");
    // Once SWIM holds it down, a strict write is refused at once: certainly not applied.
    let seen_down = wait_for(Duration::from_secs(15), || {
        nodes[0]
            .view()
            .filter(|v| liveness_of(v, &victim) == Some(chorus::node::Liveness::Down))
    });
    assert!(seen_down.is_some(), "SWIM never saw the node down");
    let a = put(http, "k", b"strict", None, "w=3&strict=true");
    assert_eq!(a.status, 503);
    let j = a.json();
    assert_eq!(
        (j["error"].as_str(), j["indeterminate"].as_bool()),
        (Some("unavailable"), Some(false)),
        "{j}"
    );
    assert_eq!(
        get(http, "k", "r=2").body,
        b"original",
        "a refused strict write changed the data"
    );
    // Not strict either, but only two nodes are left: refused at once too.
    let a = put(http, "k", b"nope", None, "w=3");
    assert_eq!(
        (a.status, a.json()["indeterminate"].as_bool()),
        (503, Some(false))
    );
    assert_eq!(get(http, "k", "r=2").body, b"original");
}

#[test]
fn with_a_node_killed_writes_succeed_and_its_hints_come_home() {
    let tmp = tempfile::tempdir().unwrap();
    let (mut nodes, ids) = start_cluster(tmp.path(), 3);
    nodes[2].kill();
    let mut written = BTreeMap::new();
    for i in 0..40 {
        let key = format!("hinted-{i}");
        let value = format!("value-{i}");
        let via = nodes[i % 2].http;
        let a = put(via, &key, value.as_bytes(), None, "w=2");
        assert_eq!(
            a.status,
            204,
            "{key}: {:?}",
            String::from_utf8_lossy(&a.body)
        );
        written.insert(key, value);
    }
    // Replicas that do not answer get hints (kept by the coordinators: there is no fallback
    // in a three-node cluster).
    let held = wait_for(Duration::from_secs(10), || {
        let held: usize = nodes[..2]
            .iter()
            .filter_map(|n| n.view().and_then(|v| v.data))
            .map(|d| d.hints_pending)
            .sum();
        (held >= 40).then_some(held)
    });
    assert!(
        held.is_some(),
        "the survivors hold no hints for the dead node"
    );
    nodes[2].spawn();
    wait_members(&nodes, &ids);
    let drained = wait_for(Duration::from_secs(30), || {
        let total: usize = nodes
            .iter()
            .map(|n| n.view().and_then(|v| v.data).map_or(1, |d| d.hints_pending))
            .sum();
        (total == 0).then_some(())
    });
    assert!(drained.is_some(), "hints never drained");
    // Served by the restarted node alone (its own copy answers first for r=1).
    for (key, value) in &written {
        let r = get(nodes[2].http, key, "r=1");
        assert_eq!(
            (r.status, r.body.as_slice()),
            (200, value.as_bytes()),
            "{key}"
        );
    }
}

#[test]
fn sigkill_of_every_node_loses_no_acknowledged_write() {
    let tmp = tempfile::tempdir().unwrap();
    let (mut nodes, ids) = start_cluster(tmp.path(), 3);
    let acked: Arc<Mutex<Vec<(String, String)>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let writers: Vec<_> = (0..4)
        .map(|w| {
            let (acked, stop) = (acked.clone(), stop.clone());
            let targets: Vec<_> = nodes.iter().map(|n| n.http).collect();
            std::thread::spawn(move || {
                let mut i = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    i += 1;
                    let key = format!("w{w}-{i}");
                    let value = format!("v{w}-{i}");
                    let target = targets[(i as usize + w) % targets.len()];
                    // A connection error (the node died mid-request) is no acknowledgement.
                    let Ok(resp) = std::panic::catch_unwind(|| {
                        put(target, &key, value.as_bytes(), None, "w=2")
                    }) else {
                        continue;
                    };
                    if resp.status == 204 {
                        acked.lock().unwrap().push((key, value));
                    }
                }
            })
        })
        .collect();
    std::thread::sleep(Duration::from_secs(3));
    for n in nodes.iter_mut() {
        n.kill();
    }
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        let _ = w.join();
    }
    let acked = acked.lock().unwrap().clone();
    assert!(
        acked.len() > 20,
        "the stream wrote something: {}",
        acked.len()
    );
    for n in nodes.iter_mut() {
        n.spawn();
    }
    wait_members(&nodes, &ids);
    for (key, value) in &acked {
        let r = get(nodes[0].http, key, "r=2");
        assert_eq!(
            (r.status, r.body.as_slice()),
            (200, value.as_bytes()),
            "acknowledged {key} lost after SIGKILL of every node"
        );
    }
    eprintln!(
        "{} acknowledged writes all survived SIGKILL of every node",
        acked.len()
    );
}

#[test]
fn two_clients_through_one_node_never_lose_each_others_values() {
    let tmp = tempfile::tempdir().unwrap();
    let (nodes, _) = start_cluster(tmp.path(), 3);
    let http = nodes[1].http;
    for round in 0..10 {
        let key = format!("shared-{round}");
        let base = put(http, &key, b"base", None, "");
        let ctx = base.context.unwrap();
        // Both clients write concurrently with the same context.
        let handles: Vec<_> = ["A", "B"]
            .into_iter()
            .map(|who| {
                let (key, ctx) = (key.clone(), ctx.clone());
                std::thread::spawn(move || (who, put(http, &key, who.as_bytes(), Some(&ctx), "")))
            })
            .collect();
        let replies: Vec<(&str, Answer)> = handles.into_iter().map(|h| h.join().unwrap()).collect();
        for (who, reply) in &replies {
            let saw_other = match reply.status {
                204 => false,
                300 => {
                    let values = reply.sibling_values();
                    assert!(values.contains(&who.as_bytes().to_vec()));
                    values.len() == 2
                }
                other => panic!("{who}: status {other}"),
            };
            // A follow-up with what it got back: the other's value survives unless it saw it.
            let next = format!("{who}2");
            let f = put(http, &key, next.as_bytes(), reply.context.as_deref(), "");
            assert!(f.status == 204 || f.status == 300);
            let now = get_json(http, &key).sibling_values();
            let other = if *who == "A" {
                b"B".to_vec()
            } else {
                b"A".to_vec()
            };
            let other2 = [other.clone(), b"2".to_vec()].concat();
            if !saw_other {
                assert!(
                    now.contains(&other) || now.contains(&other2),
                    "round {round}: {who}'s follow-up lost the other's value: {now:?}"
                );
            }
        }
    }
}

#[test]
fn a_certificate_holder_cannot_acknowledge_for_another_node() {
    use chorus::node::{CoordinatorMessage, PeerMessage};
    use chorus::runtime::tls::{quinn_configs, TlsFiles, PEER_ALPN};
    use chorus::runtime::transport::{Limits, Transport};

    let tmp = tempfile::tempdir().unwrap();
    let (mut nodes, _) = start_cluster(tmp.path(), 3);
    let victim_addr = nodes[2].quic;
    nodes[2].kill();
    // An impostor with a valid certificate from the cluster CA takes the dead node's address
    // before SWIM notices, and acknowledges every request id it can think of.
    let impostor_tls = tmp.path().join("impostor");
    issue_cert(&tmp.path().join("ca"), "impostor", &impostor_tls);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (transport, mut inbound) = rt.block_on(async {
        let (server, client) =
            quinn_configs(&TlsFiles::in_dir(&impostor_tls), &[PEER_ALPN]).unwrap();
        Transport::bind(victim_addr, server, client, Limits::default()).unwrap()
    });
    let coordinator = nodes[0].quic;
    let forge = transport.clone();
    let flood = rt.spawn(async move {
        for _ in 0..200 {
            for req in 1..=64u64 {
                let ack = PeerMessage::Coordinator(CoordinatorMessage::Ack { req });
                forge.send_message(coordinator, chorus::protocol::encode(&ack).unwrap());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
    // Whatever the cluster sends the impostor is drained and ignored.
    let drain = rt.spawn(async move { while inbound.recv().await.is_some() {} });
    // w=3 needs the dead node: forged acknowledgements must not complete it.
    for i in 0..5 {
        let a = put(
            nodes[0].http,
            &format!("guarded-{i}"),
            b"x",
            None,
            "w=3&timeout_ms=1000",
        );
        assert_eq!(
            a.status, 503,
            "write {i} counted an impostor's acknowledgement"
        );
    }
    rt.block_on(flood).unwrap();
    // (Request ids are random per process, so guessing them is hopeless; the node-level test
    // `an_acknowledgement_from_a_node_that_is_not_a_target_counts_for_nothing` forges an
    // acknowledgement with the real id.) The cluster still serves the quorum it has.
    let ok = put(nodes[0].http, "guarded-after", b"x", None, "w=2");
    assert_eq!(ok.status, 204, "a w=2 write after the flood");
    rt.block_on(transport.shutdown());
    drain.abort();
}

#[test]
fn chorus_bench_loads_runs_and_reports_json() {
    let tmp = tempfile::tempdir().unwrap();
    let (nodes, _) = start_cluster(tmp.path(), 3);
    let out = chorus()
        .args(["bench", "--http"])
        .arg(format!("http://{}", nodes[0].http))
        .args([
            "--records",
            "300",
            "--connections",
            "4",
            "--duration",
            "2s",
            "--value-size",
            "100",
            "--json",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        report["nodes"].as_array().unwrap().len(),
        3,
        "spread over every node"
    );
    assert_eq!(report["load"]["ops"]["insert"]["count"], 300);
    let run = &report["run"];
    for op in ["read", "update"] {
        let s = &run["ops"][op];
        assert!(s["count"].as_u64().unwrap() > 10, "{op}: {s}");
        assert!(s["p50_ms"].as_f64().unwrap() > 0.0);
        assert!(s["p99_ms"].as_f64().unwrap() >= s["p50_ms"].as_f64().unwrap());
    }
    assert!(run["errors"].as_object().unwrap().is_empty(), "{run}");
    // The loaded records are really there (concurrent updates may have left siblings).
    let r = get_json(nodes[2].http, "user000000000123");
    assert_eq!(r.status, 200);
    let values = r.sibling_values();
    assert!(
        !values.is_empty() && values.iter().all(|v| v.len() == 100),
        "{values:?}"
    );
    // Open loop at a modest rate, and bad options are refused clearly.
    let out = chorus()
        .args(["bench", "--http"])
        .arg(format!("http://{}", nodes[1].http))
        .args([
            "--records",
            "300",
            "--no-load",
            "--duration",
            "2s",
            "--rate",
            "200",
            "--json",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["rate"].as_f64(), Some(200.0), "{report}");
    // About every request due in the 2 s window is sent (200/s over 32 connections).
    let run = &report["run"];
    let sent: u64 = ["read", "update"]
        .iter()
        .map(|op| run["ops"][op]["count"].as_u64().unwrap_or(0))
        .sum();
    assert!((380..=440).contains(&sent), "sent {sent}: {run}");
    let out = chorus()
        .args(["bench", "--http"])
        .arg(format!("http://{}", nodes[1].http))
        .args(["--rate", "0.0001"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--rate must be between"));
    let out = chorus()
        .args(["bench", "--workload", "z"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown workload"));
}
