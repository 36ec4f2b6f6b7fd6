//! Operating a cluster: `GET /metrics` counts what a known workload did, answers carry
//! `x-request-id`, and `--log-format json` writes one JSON object per line carrying it.

mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use chorus::client::{Client, Config, Protocol};
use common::*;

/// The samples of a Prometheus text exposition: `name{labels}` → value.
fn scrape(http: SocketAddr) -> BTreeMap<String, f64> {
    let body = ureq::get(format!("http://{http}/metrics"))
        .call()
        .expect("GET /metrics")
        .body_mut()
        .read_to_string()
        .unwrap();
    body.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| {
            let (name, value) = l.rsplit_once(' ')?;
            Some((name.to_string(), value.parse().ok()?))
        })
        .collect()
}

/// The sum of every sample named `name` whose labels include all of `labels`, over nodes.
fn total(scrapes: &[BTreeMap<String, f64>], name: &str, labels: &[&str]) -> f64 {
    scrapes
        .iter()
        .flat_map(|s| s.iter())
        .filter(|(k, _)| {
            (k.as_str() == name || k.starts_with(&format!("{name}{{")))
                && labels.iter().all(|l| k.contains(l))
        })
        .map(|(_, v)| v)
        .sum()
}

#[test]
fn metrics_count_a_known_workload_and_requests_carry_ids() {
    let tmp = tempfile::tempdir().unwrap();
    let (nodes, _) = start_cluster_with(tmp.path(), 3, &["--log-format", "json"]);
    let http = nodes[0].http;
    let before: Vec<_> = nodes.iter().map(|n| scrape(n.http)).collect();
    assert_eq!(
        total(&before, "chorus_members", &["liveness=\"alive\""]),
        9.0
    );

    // 40 writes and 25 reads over HTTP, all to node 0.
    for i in 0..40 {
        assert_eq!(put(http, &format!("m{i}"), b"v", None, "").status, 204);
    }
    for i in 0..25 {
        assert_eq!(get(http, &format!("m{i}"), "").status, 200);
    }
    // 3 failures: r=9 is a bad request.
    for _ in 0..3 {
        assert_eq!(get(http, "m0", "r=9").status, 400);
    }
    // 30 writes and 12 counter updates over QUIC, wherever the client routes them.
    let rt = tokio::runtime::Runtime::new().unwrap();
    let _client = rt.block_on(async {
        let mut c = Config::new(nodes.iter().map(|n| n.http.to_string()));
        c.protocol = Protocol::Quic;
        c.ca_pem = Some(std::fs::read_to_string(tmp.path().join("ca/ca.pem")).unwrap());
        let client = Client::connect(c).await.unwrap();
        for i in 0..30 {
            client.put(format!("q{i}"), "v", None).await.unwrap();
        }
        for _ in 0..12 {
            client
                .update("ctr", chorus::client::CrdtOp::GCounter { increment: 1 })
                .await
                .unwrap();
        }
        // Kept open until the scrape (its connections count).
        client
    });

    let after: Vec<_> = nodes.iter().map(|n| scrape(n.http)).collect();
    let moved =
        |name: &str, labels: &[&str]| total(&after, name, labels) - total(&before, name, labels);
    let req = "chorus_requests_total";
    assert_eq!(
        moved(req, &["api=\"http\"", "op=\"put\"", "outcome=\"ok\""]),
        40.0
    );
    assert_eq!(
        moved(req, &["api=\"http\"", "op=\"get\"", "outcome=\"ok\""]),
        25.0
    );
    assert_eq!(
        moved(
            req,
            &["api=\"http\"", "op=\"get\"", "outcome=\"bad_request\""]
        ),
        3.0
    );
    assert_eq!(
        moved(req, &["api=\"quic\"", "op=\"put\"", "outcome=\"ok\""]),
        30.0
    );
    assert_eq!(
        moved(req, &["api=\"quic\"", "op=\"update\"", "outcome=\"ok\""]),
        12.0
    );
    // Node 0 alone saw the HTTP requests; its latency histogram counted each.
    let n0 = |name: &str, labels: &[&str]| {
        total(&after[..1], name, labels) - total(&before[..1], name, labels)
    };
    assert_eq!(
        n0(
            "chorus_request_duration_seconds_count",
            &["api=\"http\"", "op=\"put\""]
        ),
        40.0
    );
    // Register reads answered by the core (the three refused ones never reached it).
    assert_eq!(n0("chorus_read_values_count", &[]), 25.0);
    // Every write was made durable by some group commit on node 0.
    assert!(n0("chorus_group_commit_duration_seconds_count", &[]) >= 1.0);
    assert!(total(&after, "chorus_keys", &[]) >= 3.0 * 71.0);
    // Each node accepted a connection from each other node; the QUIC client is connected to
    // at least one node.
    assert!(total(&after, "chorus_quic_connections", &["kind=\"peer\""]) >= 6.0);
    assert!(total(&after, "chorus_quic_connections", &["kind=\"client\""]) >= 1.0);
    // Replica side: every write was acknowledged durably by at least two replicas (w = 2),
    // each ack timed from the write's arrival to its release.
    assert!(
        moved("chorus_replica_write_duration_seconds_count", &[]) >= 2.0 * (40.0 + 30.0),
        "{}",
        moved("chorus_replica_write_duration_seconds_count", &[])
    );
    // Nothing was shed.
    assert_eq!(moved("chorus_requests_shed_total", &[]), 0.0);
    // Bytes of the open peer connections are counted while they are open (every 5 s).
    let counted = wait_for(Duration::from_secs(20), || {
        let now: Vec<_> = nodes.iter().map(|n| scrape(n.http)).collect();
        let rx = total(
            &now,
            "chorus_quic_bytes_total",
            &["kind=\"peer\"", "direction=\"rx\""],
        );
        (rx > 10_000.0).then_some(rx)
    });
    assert!(
        counted.is_some(),
        "no bytes counted on open peer connections"
    );

    // Request ids: minted, or the client's own, echoed and on the request's log lines.
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    let r = agent.get(format!("http://{http}/v1/kv/m1")).call().unwrap();
    let minted = r
        .headers()
        .get("x-request-id")
        .unwrap()
        .to_str()
        .unwrap()
        .to_owned();
    assert!(!minted.is_empty());
    let r = agent
        .get(format!("http://{http}/v1/kv/m1?r=9"))
        .header("x-request-id", "ops-test-42")
        .call()
        .unwrap();
    assert_eq!(r.status().as_u16(), 400);
    assert_eq!(r.headers().get("x-request-id").unwrap(), "ops-test-42");
    let found = wait_for(Duration::from_secs(5), || {
        nodes[0].log().lines().find_map(|l| {
            let j: serde_json::Value = serde_json::from_str(l).ok()?;
            (j["span"]["request_id"] == "ops-test-42").then_some(j)
        })
    });
    let line =
        found.unwrap_or_else(|| panic!("no JSON line with the request id:\n{}", nodes[0].log()));
    assert_eq!(line["level"], "DEBUG", "{line}");
    // Every line of the log is one JSON object.
    for l in nodes[0].log().lines().filter(|l| !l.trim().is_empty()) {
        assert!(
            serde_json::from_str::<serde_json::Value>(l).is_ok(),
            "not JSON: {l}"
        );
    }
}
