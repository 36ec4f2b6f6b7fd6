//! CRDT keys through real `chorus start` processes on 127.0.0.1: every type round-trips through
//! different nodes and reads at `r=3` agree; one operation id sent to two nodes counts once; a
//! key keeps the type of its first write (409, nothing changed); bad input is refused and
//! changes nothing; a node SIGKILLed during a stream of increments loses none that were
//! acknowledged.

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .timeout_global(Some(Duration::from_secs(20)))
        .http_status_as_error(false)
        .build()
        .into()
}

/// An answer: status, `x-chorus-op-id`, `x-chorus-acks`, JSON body (null when empty).
#[derive(Debug)]
struct Reply {
    status: u16,
    op_id: Option<String>,
    acks: Option<u32>,
    body: serde_json::Value,
}

fn reply(mut resp: ureq::http::Response<ureq::Body>) -> Reply {
    let h = |name: &str| {
        resp.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let (op_id, acks) = (h("x-chorus-op-id"), h("x-chorus-acks"));
    let body = resp.body_mut().read_to_vec().unwrap_or_default();
    Reply {
        status: resp.status().as_u16(),
        op_id,
        acks: acks.and_then(|a| a.parse().ok()),
        body: serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null),
    }
}

fn post(http: SocketAddr, key: &str, op: &str, op_id: Option<&str>, query: &str) -> Reply {
    let mut req = agent()
        .post(format!("http://{http}/v1/crdt/{key}?{query}"))
        .header("content-type", "application/json");
    if let Some(id) = op_id {
        req = req.header("x-chorus-op-id", id);
    }
    reply(req.send(op.as_bytes()).expect("POST"))
}

fn read(http: SocketAddr, key: &str, query: &str) -> Reply {
    reply(
        agent()
            .get(format!("http://{http}/v1/crdt/{key}?{query}"))
            .call()
            .expect("GET"),
    )
}

fn value(http: SocketAddr, key: &str) -> serde_json::Value {
    let r = read(http, key, "r=3");
    assert_eq!(r.status, 200, "{r:?}");
    r.body["value"].clone()
}

#[test]
fn every_type_round_trips_through_different_nodes_and_keeps_its_type() {
    let tmp = tempfile::tempdir().unwrap();
    let (nodes, _) = start_cluster(tmp.path(), 3);
    let h = |i: usize| nodes[i].http;

    // G-Counter: increments through every node; every node reads the sum at r=3.
    for (i, n) in [(0, 2), (1, 3), (2, 5)] {
        let r = post(
            h(i),
            "hits",
            &format!(r#"{{"type":"gcounter","increment":{n}}}"#),
            None,
            "",
        );
        assert_eq!(r.status, 204, "{r:?}");
        assert!(r.acks.unwrap() >= 2);
        assert!(r.op_id.is_some(), "a minted op id is returned");
    }
    for i in 0..3 {
        let r = read(h(i), "hits", "r=3");
        assert_eq!(r.body["type"], "gcounter");
        assert_eq!(r.body["value"], 10, "n{i}");
    }
    // The same op id through two different nodes counts once; the second says it replayed.
    let op = r#"{"type":"gcounter","increment":7}"#;
    let first = post(h(0), "hits", op, Some("retry-1"), "return=value");
    assert_eq!(
        (first.status, first.body["value"].clone()),
        (200, 17.into())
    );
    assert_eq!(first.body["replayed"], false);
    assert_eq!(first.op_id.as_deref(), Some("retry-1"));
    let again = post(h(2), "hits", op, Some("retry-1"), "return=value");
    assert_eq!(again.status, 200, "{again:?}");
    assert_eq!(again.body["replayed"], true);
    assert_eq!(value(h(1), "hits"), 17);

    // PN-Counter: up and down.
    assert_eq!(
        post(
            h(1),
            "bal",
            r#"{"type":"pncounter","increment":5}"#,
            None,
            ""
        )
        .status,
        204
    );
    assert_eq!(
        post(
            h(2),
            "bal",
            r#"{"type":"pncounter","increment":-8}"#,
            None,
            ""
        )
        .status,
        204
    );
    assert_eq!(value(h(0), "bal"), -3);

    // 2P-Set: adds, a permanent removal, and honest notes when something had no effect.
    let r = post(
        h(0),
        "tags",
        r#"{"type":"2pset","add":["a","b","c"]}"#,
        None,
        "",
    );
    assert_eq!(r.status, 204, "{r:?}");
    let r = post(
        h(1),
        "tags",
        r#"{"type":"2pset","remove":["b","zz"]}"#,
        None,
        "",
    );
    assert_eq!(
        r.status, 200,
        "a remove of a never-added element says so: {r:?}"
    );
    let notes = r.body["notes"].to_string();
    assert!(
        notes.contains("zz") && notes.contains("never seen it added"),
        "{notes}"
    );
    let r = post(h(2), "tags", r#"{"type":"2pset","add":["b"]}"#, None, "");
    assert_eq!(r.status, 200, "{r:?}");
    assert!(r.body["notes"].to_string().contains("permanent"), "{r:?}");
    assert_eq!(value(h(2), "tags"), serde_json::json!(["a", "c"]));

    // OR-Set: a remove with a read's context removes what that read saw; an add the read did
    // not see survives (add wins).
    assert_eq!(
        post(
            h(0),
            "cart",
            r#"{"type":"orset","add":["x","y"]}"#,
            None,
            ""
        )
        .status,
        204
    );
    let seen = read(h(1), "cart", "r=3");
    let ctx = seen.body["context"].as_str().unwrap().to_owned();
    assert_eq!(
        post(h(2), "cart", r#"{"type":"orset","add":["x"]}"#, None, "").status,
        204
    );
    let rm = format!(r#"{{"type":"orset","remove":["x","y"],"context":"{ctx}"}}"#);
    assert_eq!(post(h(1), "cart", &rm, None, "").status, 204);
    assert_eq!(value(h(0), "cart"), serde_json::json!(["x"]));
    // Without a context: it removes what the coordinating replica saw, and says so.
    let r = post(
        h(0),
        "cart",
        r#"{"type":"orset","remove":["x"]}"#,
        None,
        "return=value",
    );
    assert_eq!(r.status, 200);
    assert!(
        r.body["notes"].to_string().contains("without a context"),
        "{r:?}"
    );
    assert_eq!(value(h(2), "cart"), serde_json::json!([]));

    // A key keeps the type of its first write: 409 everywhere, nothing changed.
    let conflict = post(h(1), "hits", r#"{"type":"2pset","add":["a"]}"#, None, "");
    assert_eq!(conflict.status, 409, "{conflict:?}");
    assert_eq!(conflict.body["error"], "type_conflict");
    assert_eq!(put(h(2), "hits", b"x", None, "").status, 409);
    assert_eq!(get(h(0), "hits", "").status, 409);
    assert_eq!(put(h(0), "reg", b"v", None, "").status, 204);
    assert_eq!(read(h(1), "reg", "").status, 409);
    assert_eq!(
        post(
            h(2),
            "reg",
            r#"{"type":"gcounter","increment":1}"#,
            None,
            ""
        )
        .status,
        409
    );
    assert_eq!(get(h(1), "reg", "r=3").body, b"v");
    assert_eq!(value(h(1), "hits"), 17);

    // Bad input: 400/413, nothing changed.
    for (op, query, op_id, status) in [
        ("{", "", None, 400),
        (r#"{"type":"gcounter","increment":0}"#, "", None, 400),
        (r#"{"type":"gcounter","increment":-1}"#, "", None, 400),
        (r#"{"type":"gcounter","increment":1.5}"#, "", None, 400),
        (r#"{"type":"teapot"}"#, "", None, 400),
        (r#"{"type":"gcounter","increment":1}"#, "w=9", None, 400),
        (
            r#"{"type":"gcounter","increment":1}"#,
            "",
            Some("has space"),
            400,
        ),
        (
            r#"{"type":"gcounter","increment":1}"#,
            "return=all",
            None,
            400,
        ),
    ] {
        let r = post(h(0), "hits", op, op_id, query);
        assert_eq!(r.status, status, "{op} {query}: {r:?}");
    }
    let big = format!(r#"{{"type":"2pset","add":["{}"]}}"#, "e".repeat(1025));
    assert_eq!(post(h(0), "tags", &big, None, "").status, 400);
    // A counter's range is the signed 64-bit range, whichever node coordinates: the top
    // fits, one more is refused through every node (400, nothing changed), and a step back
    // applies.
    let huge = format!(r#"{{"type":"pncounter","increment":{}}}"#, i64::MAX);
    assert_eq!(post(h(0), "big", &huge, None, "").status, 204);
    for i in 0..3 {
        let r = post(
            h(i),
            "big",
            r#"{"type":"pncounter","increment":1}"#,
            None,
            "",
        );
        assert_eq!(r.status, 400, "through node {i}: {r:?}");
        assert!(
            r.body["message"].as_str().unwrap().contains("range"),
            "{r:?}"
        );
    }
    assert_eq!(read(h(1), "big", "r=3").body["value"], i64::MAX);
    let back = r#"{"type":"pncounter","increment":-1}"#;
    assert_eq!(post(h(2), "big", back, None, "").status, 204);
    assert_eq!(read(h(1), "big", "r=3").body["value"], i64::MAX - 1);
    assert_eq!(value(h(1), "hits"), 17);
    assert_eq!(value(h(1), "tags"), serde_json::json!(["a", "c"]));
    assert_eq!(read(h(0), "never-written", "").status, 404);
}

#[test]
fn a_node_killed_during_increments_loses_none_that_were_acknowledged() {
    let tmp = tempfile::tempdir().unwrap();
    let (mut nodes, _) = start_cluster(tmp.path(), 3);
    let targets = [nodes[0].http, nodes[1].http];
    let acked = Arc::new(AtomicU64::new(0));
    let unknown = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let workers: Vec<_> = targets
        .iter()
        .enumerate()
        .map(|(w, &http)| {
            let (acked, unknown, stop) = (acked.clone(), unknown.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut i = 0u64;
                // Bounded: at most 400 increments per worker.
                while !stop.load(Ordering::Relaxed) && i < 400 {
                    i += 1;
                    let id = format!("w{w}-{i}");
                    // A careful client: retry an unknown outcome with the same op id.
                    let mut done = false;
                    for _ in 0..5 {
                        let r = post(
                            http,
                            "stream",
                            r#"{"type":"gcounter","increment":1}"#,
                            Some(&id),
                            "",
                        );
                        if r.status == 204 {
                            acked.fetch_add(1, Ordering::Relaxed);
                            done = true;
                            break;
                        }
                        std::thread::sleep(Duration::from_millis(100));
                    }
                    if !done {
                        unknown.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    // Let some increments land, then SIGKILL a replica mid-stream.
    wait_for(Duration::from_secs(30), || {
        (acked.load(Ordering::Relaxed) >= 50).then_some(())
    })
    .expect("increments flow");
    nodes[2].kill();
    std::thread::sleep(Duration::from_secs(2));
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.join().unwrap();
    }
    let (acked, unknown) = (
        acked.load(Ordering::Relaxed),
        unknown.load(Ordering::Relaxed),
    );
    let read_value = |http| {
        let r = read(http, "stream", "r=2");
        assert_eq!(r.status, 200, "{r:?}");
        r.body["value"].as_u64().unwrap()
    };
    let v = read_value(nodes[0].http);
    assert!(
        v >= acked && v <= acked + unknown,
        "value {v}, acknowledged {acked}, unknown {unknown}"
    );
    // The killed node comes back and agrees once repaired by a read of all three.
    nodes[2].spawn();
    nodes[2].wait_serving();
    let all = wait_for(Duration::from_secs(30), || {
        let r = read(nodes[2].http, "stream", "r=3");
        (r.status == 200).then(|| r.body["value"].as_u64().unwrap())
    })
    .expect("a read at r=3 after the restart");
    assert_eq!(all, v);
}

/// Issue 20, defect 1 (acceptance): an op id retried 5 times at `w=3` through three
/// different nodes answers success every time and counts once; with one node SIGSTOPped,
/// retries at `w=2` succeed. On main every retry at `w=3` timed out with 2 of 3
/// acknowledgements (the coordinator's own was dropped).
#[test]
fn an_op_id_retried_at_w3_through_every_node_succeeds_and_counts_once() {
    let tmp = tempfile::tempdir().unwrap();
    let (nodes, _) = start_cluster(tmp.path(), 3);
    let h = |i: usize| nodes[i].http;
    let op = r#"{"type":"gcounter","increment":1}"#;
    let first = post(h(0), "c5", op, Some("retry-1"), "w=3");
    assert_eq!((first.status, first.acks), (204, Some(3)), "{first:?}");
    for (n, i) in [0, 1, 2, 0, 1].into_iter().enumerate() {
        let r = post(h(i), "c5", op, Some("retry-1"), "w=3&return=value");
        assert_eq!(r.status, 200, "retry {n} through node {i}: {r:?}");
        assert_eq!(r.acks, Some(3), "retry {n} through node {i}: {r:?}");
        assert_eq!(r.body["replayed"], true);
        assert_eq!(r.body["value"], 1);
    }
    assert_eq!(value(h(2), "c5"), 1);
    // One node frozen: it neither answers nor closes its connections.
    nodes[2].signal("-STOP");
    let second = post(h(1), "c5", op, Some("retry-2"), "w=2&timeout_ms=3000");
    assert_eq!(second.status, 204, "{second:?}");
    for (n, i) in [0, 1, 0, 1, 0].into_iter().enumerate() {
        for id in ["retry-1", "retry-2"] {
            let r = post(h(i), "c5", op, Some(id), "w=2&timeout_ms=3000&return=value");
            assert_eq!(r.status, 200, "{id} retry {n} through node {i}: {r:?}");
            assert!(r.acks.unwrap() >= 2, "{r:?}");
            assert_eq!(r.body["replayed"], true, "{r:?}");
        }
    }
    let r = read(h(0), "c5", "r=2");
    assert_eq!(r.body["value"], 2, "{r:?}");
    nodes[2].signal("-CONT");
    let all = wait_for(Duration::from_secs(30), || {
        let r = read(h(2), "c5", "r=3");
        (r.status == 200).then(|| r.body["value"].clone())
    });
    assert_eq!(all, Some(2.into()));
}

/// Issue 20, defect 4 (the issue's reproduction on real nodes): three PN-Counter increments
/// at `w=2` while node C is down; C restarts; a register `PUT` sent to C as soon as it
/// serves. On main it answered 204, and after an anti-entropy interval C held a register
/// while A and B held the counter, for good (reads through C alternated, increments through
/// C answered 409). Now C asks the other replicas first and refuses, and all agree.
#[test]
fn a_restarted_replica_refuses_a_write_of_another_type_and_replicas_agree() {
    let tmp = tempfile::tempdir().unwrap();
    let (mut nodes, _) = start_cluster_with(
        tmp.path(),
        3,
        &["--no-hints", "--anti-entropy-interval", "5"],
    );
    let https: Vec<SocketAddr> = nodes.iter().map(|n| n.http).collect();
    let h = |i: usize| https[i];
    nodes[2].kill();
    for n in 0..3 {
        let r = post(
            h(0),
            "k",
            r#"{"type":"pncounter","increment":10}"#,
            Some(&format!("inc-{n}")),
            "w=2",
        );
        assert_eq!(r.status, 204, "{r:?}");
    }
    nodes[2].spawn();
    nodes[2].wait_serving();
    // Until C sees the other replicas it cannot tell what the key holds (503, certainly not
    // applied); once it does, 409. Never a success.
    let refused = wait_for(Duration::from_secs(20), || {
        let put = reply(
            agent()
                .put(format!("http://{}/v1/kv/k?w=1", h(2)))
                .send(&b"oops"[..])
                .expect("PUT"),
        );
        match put.status {
            409 => Some(put),
            503 => {
                assert_eq!(put.body["indeterminate"], false, "{put:?}");
                None
            }
            _ => panic!("a register write on a counter key: {put:?}"),
        }
    })
    .expect("C refuses with 409 once it sees the other replicas");
    assert_eq!(refused.body["error"], "type_conflict");
    // After anti-entropy has run, every node reads the counter through C, and C takes
    // increments.
    let agreed = wait_for(Duration::from_secs(40), || {
        let ok = (0..3).all(|i| {
            let r = read(h(i), "k", "r=1");
            r.status == 200 && r.body["type"] == "pncounter" && r.body["value"] == 30
        });
        ok.then_some(())
    });
    assert!(agreed.is_some(), "replicas did not agree on the counter");
    let r = post(
        h(2),
        "k",
        r#"{"type":"pncounter","increment":1}"#,
        Some("after"),
        "w=3",
    );
    assert_eq!(r.status, 204, "{r:?}");
    assert_eq!(value(h(0), "k"), 31);
}
