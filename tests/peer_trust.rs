//! Issue 22, item 2: a certificate from the cluster CA is not automatically a full peer.
//! Real `chorus` processes, attacked from this test process with real certificates.

mod common;

use std::time::Duration;

use chorus::membership::{NodeInfo, RingEntry, RingRecord, RingState, RingStatus, SignedEntry};
use chorus::node::{MembershipMessage, PeerMessage, SyncReply};
use chorus::runtime::tls::{quinn_configs, NodeCert, NODE_SERVER_NAME, PEER_ALPN};
use chorus::runtime::transport::{Limits, Transport, CLOSE_NOT_A_NODE};
use common::*;

fn metrics(http: std::net::SocketAddr) -> String {
    ureq::get(format!("http://{http}/metrics"))
        .call()
        .expect("GET /metrics")
        .body_mut()
        .read_to_string()
        .unwrap()
}

/// A client certificate (`chorus cert issue --role client`) connecting on the peer ALPN is
/// refused: the node closes the connection, counts it, and logs it.
#[test]
fn a_client_certificate_is_refused_on_the_peer_alpn() {
    let tmp = tempfile::tempdir().unwrap();
    let ca = make_ca(tmp.path(), "ca");
    let node = NodeProc::start(tmp.path(), "n0", &ca, &[]);
    node.wait_serving();
    let dir = tmp.path().join("not-a-node");
    let out = chorus()
        .args([
            "cert",
            "issue",
            "--role",
            "client",
            "--name",
            "not-a-node",
            "--ca",
        ])
        .arg(&ca)
        .arg("--out")
        .arg(&dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let cert = NodeCert::load_client(&dir).unwrap();
    let (_, client) = quinn_configs(&cert, &[PEER_ALPN]).unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let closed = rt.block_on(async {
        let ep = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
        let connecting = ep
            .connect_with(client, node.quic, NODE_SERVER_NAME)
            .unwrap();
        let conn = match tokio::time::timeout(Duration::from_secs(10), connecting).await {
            Ok(Ok(conn)) => conn,
            Ok(Err(e)) => return format!("handshake refused: {e}"),
            Err(_) => panic!("handshake hung"),
        };
        // Whatever it tries to send, the node closes the connection.
        if let Ok(mut s) = conn.open_uni().await {
            let _ = s.write_all(b"F\x00\x00\x00\x05hello").await;
        }
        let reason = tokio::time::timeout(Duration::from_secs(10), conn.closed())
            .await
            .expect("the node kept a peer connection from a client certificate open");
        match reason {
            quinn::ConnectionError::ApplicationClosed(c) => {
                assert_eq!(c.error_code, CLOSE_NOT_A_NODE, "{c:?}");
                format!("closed: {c:?}")
            }
            other => panic!("unexpected close: {other}"),
        }
    });
    assert!(closed.contains("not a node certificate"), "{closed}");
    let logged = wait_for(Duration::from_secs(5), || {
        node.log()
            .contains("refused a peer connection: not a node certificate")
            .then_some(())
    });
    assert!(logged.is_some(), "{}", node.log());
    let m = metrics(node.http);
    assert!(
        m.lines()
            .any(|l| l.starts_with("chorus_peer_connections_refused_total")
                && l.contains("not_a_node")
                && l.trim_end().ends_with(" 1")),
        "{m}"
    );
}

/// A node certificate that never joined (`chorus cert issue --name not-a-node`) sends a ring
/// sync with three phantom members, a member's departure and a member's addresses pointing at
/// itself: the node believes none of it, counts it, and the cluster still takes writes at w=2.
#[test]
fn a_certificate_that_never_joined_cannot_rewrite_the_ring() {
    let tmp = tempfile::tempdir().unwrap();
    let (nodes, ids) = start_cluster(tmp.path(), 3);
    let ca = tmp.path().join("ca");
    let dir = tmp.path().join("intruder");
    issue_cert(&ca, "not-a-node", &dir);
    let cert = NodeCert::load(&dir).unwrap();
    let view = nodes[0].view().unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let (server, client) = quinn_configs(&cert, &[PEER_ALPN]).unwrap();
        let (transport, _inbound) = Transport::bind(
            "127.0.0.1:0".parse().unwrap(),
            server,
            client,
            Limits::default(),
        )
        .unwrap();
        let me = transport.local_addr();
        let info = NodeInfo {
            quic_addr: me,
            http_addr: me,
        };
        let mut state = RingState::new();
        // Phantom members, and n1's entry moved to the intruder with a huge version.
        for p in 1..=3u64 {
            let e = RingEntry {
                status: RingStatus::Member,
                info_version: 1,
                info,
            };
            state.merge_entry(chorus::NodeId::new(0xdead_0000 + p), &e);
        }
        let victim: chorus::NodeId = ids[1].parse().unwrap();
        let hijack = RingEntry {
            status: RingStatus::Left,
            info_version: u64::MAX,
            info,
        };
        let record = RingRecord {
            signed: SignedEntry {
                entry: hijack,
                key: Default::default(),
                sig: Default::default(),
            },
            removal: None,
        };
        state.merge_record(victim, &record);
        let message = PeerMessage::Membership(MembershipMessage::RingSync {
            state,
            reply: SyncReply::Always,
        });
        let bytes = chorus::protocol::encode(&message).unwrap();
        for _ in 0..3 {
            transport.send_message(nodes[0].quic, bytes.clone());
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
        transport.shutdown().await;
    });
    let after = nodes[0].view().unwrap();
    let summary = |v: &chorus::node::ClusterView| {
        let mut m: Vec<_> = v
            .members
            .iter()
            .filter(|m| ids.contains(&m.id))
            .map(|m| (m.id.clone(), m.status, m.http_addr))
            .collect();
        m.sort();
        m
    };
    assert_eq!(summary(&after), summary(&view));
    let owners = after
        .members
        .iter()
        .filter(|m| matches!(m.status, RingStatus::Member | RingStatus::Leaving))
        .count();
    assert_eq!(owners, 3, "{after:?}");
    let data = after.data.clone().unwrap_or_default();
    assert!(
        data.ring_entries_ignored + data.ring_entries_refused >= 4,
        "{data:?}"
    );
    for (i, n) in nodes.iter().enumerate() {
        let r = put(n.http, &format!("after-{i}"), b"v", None, "w=2");
        assert_eq!(r.status, 204, "n{i}: {:?}", r.body);
    }
}

/// The status page's per-member figures travel over the peer transport: with a client token
/// configured, `GET /v1/status` (with the token) shows every member's figures, although no
/// node holds a credential for another's HTTP API any more (the status code has no HTTP
/// client: it asks the driver, which asks the member by id over QUIC).
#[test]
fn status_fan_out_works_with_a_client_token_over_the_peer_transport() {
    let tmp = tempfile::tempdir().unwrap();
    let token_file = tmp.path().join("token");
    let token = "0123456789abcdef0123456789abcdef";
    std::fs::write(&token_file, token).unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&token_file, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    let tf = token_file.to_str().unwrap();
    let extra = ["--client-token-file", tf];
    let ca = make_ca(tmp.path(), "ca");
    let mut nodes = vec![NodeProc::start_with(tmp.path(), "n0", &ca, &[], &extra)];
    let seed = nodes[0].quic;
    for i in 1..3 {
        let name = format!("n{i}");
        nodes.push(NodeProc::start_with(
            tmp.path(),
            &name,
            &ca,
            &[seed],
            &extra,
        ));
    }
    // Wait (with the token) until all three are members and the page shows their figures.
    let status = wait_for(Duration::from_secs(60), || {
        let mut r = ureq::get(format!("http://{}/v1/status", nodes[0].http))
            .header("Authorization", format!("Bearer {token}"))
            .call()
            .ok()?;
        let v: serde_json::Value =
            serde_json::from_str(&r.body_mut().read_to_string().ok()?).ok()?;
        let listed = v["nodes"].as_array()?;
        let all = listed.len() == 3 && listed.iter().all(|n| n["stats"].is_object());
        all.then_some(v)
    })
    .unwrap_or_else(|| panic!("members' figures never arrived; log:\n{}", nodes[0].log()));
    let listed: Vec<&str> = status["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["stats"]["node_id"].as_str().unwrap())
        .collect();
    let ids: Vec<&str> = status["cluster"]["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert_eq!(listed, ids, "{status}");
}
