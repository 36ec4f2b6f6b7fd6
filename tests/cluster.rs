//! The cluster fabric with real `chorus start` processes on 127.0.0.1: joining, crash
//! detection, restart, graceful leave, foreign certificates and garbage input.

mod common;

use std::time::{Duration, Instant};

use chorus::membership::RingStatus;
use chorus::node::Liveness;
use common::*;

#[test]
fn five_nodes_join_detect_a_crash_and_welcome_the_restart() {
    let tmp = tempfile::tempdir().unwrap();
    let ca = make_ca(tmp.path(), "ca");
    let seed = NodeProc::start(tmp.path(), "n0", &ca, &[]);
    let mut nodes = vec![seed];
    let seed_addr = nodes[0].quic;
    for i in 1..5 {
        nodes.push(NodeProc::start(
            tmp.path(),
            &format!("n{i}"),
            &ca,
            &[seed_addr],
        ));
    }
    let ids: Vec<String> = nodes.iter().map(|n| n.wait_serving()).collect();

    // Every node reports the same five alive members (the time it took is printed; the bound
    // is only there to end a hopeless wait on a loaded machine).
    let started = Instant::now();
    for n in &nodes {
        let formed = wait_for(Duration::from_secs(60), || {
            n.view().filter(|v| all_alive(v, &ids))
        });
        assert!(
            formed.is_some(),
            "{} never saw 5 alive members: {:?}",
            n.name,
            n.view()
        );
    }
    eprintln!("5 nodes formed a cluster in {:?}", started.elapsed());
    // Joins complete once each joiner pulled its partitions: a bound generous enough for a
    // loaded 2-core machine (the wait ends as soon as they are members).
    for n in &nodes {
        let members = wait_for(Duration::from_secs(60), || {
            n.view()
                .filter(|v| v.members.iter().all(|m| m.status == RingStatus::Member))
        });
        let v = members.unwrap_or_else(|| panic!("{}: not all members: {:?}", n.name, n.view()));
        assert_eq!(v.members.iter().map(|m| m.partitions).sum::<u64>(), 256 * 3);
    }

    // SIGKILL one: every survivor reports it down within 10 s.
    let victim = ids[3].clone();
    nodes[3].kill();
    let killed_at = Instant::now();
    for n in nodes.iter().filter(|n| n.child.is_some()) {
        let down = wait_for(Duration::from_secs(10), || {
            n.view()
                .filter(|v| liveness_of(v, &victim) == Some(Liveness::Down))
        });
        assert!(
            down.is_some(),
            "{} did not see the crash: {:?}",
            n.name,
            n.view()
        );
    }
    eprintln!(
        "crash detected by all survivors after {:?}",
        killed_at.elapsed()
    );

    // Restarted with the same data directory: same id, alive everywhere within 10 s.
    nodes[3].spawn();
    let id_after = nodes[3].wait_serving();
    assert_eq!(id_after, victim, "the node id must survive a restart");
    for n in &nodes {
        let back = wait_for(Duration::from_secs(10), || {
            n.view().filter(|v| all_alive(v, &ids))
        });
        assert!(
            back.is_some(),
            "{} did not see the restart: {:?}",
            n.name,
            n.view()
        );
        let v = back.unwrap();
        let m = v.members.iter().find(|m| m.id == victim).unwrap();
        assert_eq!(m.incarnation, 2, "restart bumps the generation: {m:?}");
    }

    // SIGTERM stops a node cleanly with exit code 0.
    nodes[4].signal("-TERM");
    let status = nodes[4]
        .wait_exit(Duration::from_secs(10))
        .expect("exits after SIGTERM");
    assert_eq!(status.code(), Some(0));
}

#[test]
fn graceful_leave_shows_left_everywhere_and_exits_zero() {
    let tmp = tempfile::tempdir().unwrap();
    let ca = make_ca(tmp.path(), "ca");
    let mut nodes = vec![NodeProc::start(tmp.path(), "n0", &ca, &[])];
    let seed = nodes[0].quic;
    for i in 1..3 {
        nodes.push(NodeProc::start(tmp.path(), &format!("n{i}"), &ca, &[seed]));
    }
    let ids: Vec<String> = nodes.iter().map(|n| n.wait_serving()).collect();
    for n in &nodes {
        assert!(
            wait_for(Duration::from_secs(60), || n
                .view()
                .filter(|v| all_alive(v, &ids)))
            .is_some(),
            "{}: {:?}",
            n.name,
            n.view()
        );
    }

    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(Duration::from_secs(5)))
        .build()
        .into();
    let resp = as_operator(agent.post(format!("http://{}/v1/cluster/leave", nodes[2].http)))
        .send_empty()
        .unwrap();
    assert_eq!(resp.status().as_u16(), 202);
    let status = nodes[2]
        .wait_exit(Duration::from_secs(10))
        .expect("the leaving node exits");
    assert_eq!(status.code(), Some(0));

    for n in &nodes[..2] {
        let left = wait_for(Duration::from_secs(10), || {
            n.view().filter(|v| {
                v.members
                    .iter()
                    .any(|m| m.id == ids[2] && m.status == RingStatus::Left && m.partitions == 0)
            })
        });
        assert!(
            left.is_some(),
            "{} does not show the node left: {:?}",
            n.name,
            n.view()
        );
    }

    // The departed node refuses to start again from the same data directory.
    nodes[2].spawn();
    let status = nodes[2]
        .wait_exit(Duration::from_secs(20))
        .expect("refuses to start");
    assert!(!status.success());
    assert!(
        nodes[2].log().contains("has left the cluster"),
        "{}",
        nodes[2].log()
    );
}

#[test]
fn an_operator_removes_a_dead_node_over_http() {
    let tmp = tempfile::tempdir().unwrap();
    let ca = make_ca(tmp.path(), "ca");
    let mut nodes = vec![NodeProc::start(tmp.path(), "n0", &ca, &[])];
    let seed = nodes[0].quic;
    for i in 1..3 {
        nodes.push(NodeProc::start(tmp.path(), &format!("n{i}"), &ca, &[seed]));
    }
    let ids: Vec<String> = nodes.iter().map(|n| n.wait_serving()).collect();
    wait_members(&nodes, &ids);
    nodes[2].kill();
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(Duration::from_secs(5)))
        .http_status_as_error(false)
        .build()
        .into();
    // Each removal is signed with the CA key (the operator's); `node` picks what is signed.
    let post = |path: &str, node: &str| {
        let mut resp = as_operator(agent.post(format!("http://{}{path}", nodes[0].http)))
            .header("content-type", "application/json")
            .send(removal_body(&ca, node))
            .unwrap();
        let body: serde_json::Value = resp.body_mut().read_json().unwrap();
        (resp.status().as_u16(), body)
    };
    // Bad input is refused and changes nothing.
    let (status, body) = post("/v1/cluster/remove/not-an-id", "00000000000000ab");
    assert_eq!((status, body["error"].as_str()), (400, Some("bad_node_id")));
    let (status, body) = post("/v1/cluster/remove/00000000000000ab", "00000000000000ab");
    assert_eq!(
        (status, body["error"].as_str()),
        (404, Some("unknown_node"))
    );
    let (status, body) = post(&format!("/v1/cluster/remove/{}", ids[0]), &ids[0]);
    assert_eq!((status, body["error"].as_str()), (409, Some("refused")));
    // The operator's signature of another removal proves nothing about this one.
    let (status, body) = post(&format!("/v1/cluster/remove/{}", ids[2]), &ids[1]);
    assert_eq!((status, body["error"].as_str()), (403, Some("not_signed")));
    assert!(
        nodes[0]
            .view()
            .unwrap()
            .members
            .iter()
            .all(|m| m.status == RingStatus::Member),
        "refused removals change nothing"
    );

    // Not yet seen down: refused without force.
    let (status, body) = post(&format!("/v1/cluster/remove/{}", ids[2]), &ids[2]);
    if status == 409 {
        assert_eq!(body["error"], "not_down", "{body}");
    }
    let down = wait_for(Duration::from_secs(30), || {
        nodes[0]
            .view()
            .filter(|v| liveness_of(v, &ids[2]) == Some(Liveness::Down))
    });
    assert!(down.is_some(), "n2 is seen down");
    let (status, body) = post(&format!("/v1/cluster/remove/{}", ids[2]), &ids[2]);
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["status"], "removing");
    for n in &nodes[..2] {
        let removed = wait_for(Duration::from_secs(10), || {
            n.view().filter(|v| {
                v.pending.is_empty()
                    && v.members.iter().any(|m| {
                        m.id == ids[2] && m.status == RingStatus::Left && m.partitions == 0
                    })
            })
        });
        assert!(removed.is_some(), "{}: {:?}", n.name, n.view());
    }
    // The machine comes back after all: it learns it was removed and stops by itself.
    nodes[2].spawn();
    let status = nodes[2]
        .wait_exit(Duration::from_secs(20))
        .expect("a removed node stops");
    assert_eq!(status.code(), Some(0), "{}", nodes[2].log());
    assert!(
        nodes[2].log().contains("removed this node"),
        "{}",
        nodes[2].log()
    );
}

#[test]
fn a_node_with_a_foreign_certificate_never_becomes_a_member() {
    let tmp = tempfile::tempdir().unwrap();
    let ca = make_ca(tmp.path(), "ca");
    let other_ca = make_ca(tmp.path(), "other-ca");
    let a = NodeProc::start(tmp.path(), "a", &ca, &[]);
    let b = NodeProc::start(tmp.path(), "b", &ca, &[a.quic]);
    let intruder = NodeProc::start(tmp.path(), "intruder", &other_ca, &[a.quic, b.quic]);
    let ids = vec![a.wait_serving(), b.wait_serving()];
    let intruder_id = intruder.wait_serving();
    for n in [&a, &b] {
        assert!(
            wait_for(Duration::from_secs(60), || n
                .view()
                .filter(|v| all_alive(v, &ids)))
            .is_some(),
            "{}: {:?}",
            n.name,
            n.view()
        );
    }
    // Give the intruder ample time to try.
    std::thread::sleep(Duration::from_secs(5));
    for n in [&a, &b] {
        let v = n.view().unwrap();
        assert!(
            v.members.iter().all(|m| m.id != intruder_id),
            "{} lists the intruder: {v:?}",
            n.name
        );
        assert!(all_alive(&v, &ids));
    }
    let v = intruder.view().unwrap();
    assert_eq!(
        v.members.len(),
        1,
        "the intruder must not learn the cluster: {v:?}"
    );
    let logs = format!("{}{}", a.log(), b.log());
    assert!(logs.contains("handshake"), "the refusal is logged:\n{logs}");
}

#[test]
fn garbage_on_the_udp_port_and_junk_streams_are_rejected() {
    let tmp = tempfile::tempdir().unwrap();
    let ca = make_ca(tmp.path(), "ca");
    let a = NodeProc::start(tmp.path(), "a", &ca, &[]);
    let b = NodeProc::start(tmp.path(), "b", &ca, &[a.quic]);
    let ids = vec![a.wait_serving(), b.wait_serving()];
    assert!(wait_for(Duration::from_secs(10), || a
        .view()
        .filter(|v| all_alive(v, &ids)))
    .is_some());

    // Raw garbage datagrams at the QUIC port.
    let sock = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    for i in 0..200u32 {
        let junk: Vec<u8> = (0..(i % 1300)).map(|j| (j * 31 + i) as u8).collect();
        sock.send_to(&junk, a.quic).unwrap();
    }

    // A client with a valid cluster certificate that sends junk peer messages and SWIM packets.
    let client_tls = tmp.path().join("junk-client");
    issue_cert(&ca, "junk", &client_tls);
    junk_client(&client_tls, a.quic);

    // The node keeps serving, the cluster is intact, and the rejection is logged.
    std::thread::sleep(Duration::from_secs(2));
    let v = a.view().expect("still serving HTTP");
    assert!(all_alive(&v, &ids), "{v:?}");
    let log = a.log();
    assert!(log.contains("rejected peer message"), "{log}");
    assert!(log.contains("rejected SWIM packet"), "{log}");
}

fn junk_client(tls_dir: &std::path::Path, target: std::net::SocketAddr) {
    use chorus::runtime::tls::{quinn_configs, TlsFiles, PEER_ALPN};
    use chorus::runtime::transport::{Limits, Transport};
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let (server, client) = quinn_configs(&TlsFiles::in_dir(tls_dir), &[PEER_ALPN]).unwrap();
        let (t, _inbound) = Transport::bind(
            "127.0.0.1:0".parse().unwrap(),
            server,
            client,
            Limits::default(),
        )
        .unwrap();
        for i in 0..20u8 {
            t.send_message(target, vec![i; 100 + i as usize * 10]);
            t.send_message(target, b"CH\x01\x92\xc1\xc1".to_vec());
            t.send_datagram(target, vec![0xde, 0xad, i].into());
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
        t.shutdown().await;
    });
}

/// Issue 21, item 1 (acceptance): a node SIGSTOPped, removed with `POST
/// /v1/cluster/remove/{id}` from another node, then SIGCONTed, changes no key's value and
/// resurrects no deleted key (checked at `r=3` after anti-entropy and tombstone GC have run),
/// and what it sends is refused by the members (counted in `refused_senders`); it learns it
/// was removed and stops.
#[test]
fn a_paused_node_removed_then_resumed_changes_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let flags = [
        "--anti-entropy-interval",
        "3",
        "--tombstone-gc-interval",
        "3",
        "--tombstone-gc-quiet",
        "10",
        "--request-timeout-max",
        "5",
    ];
    let (mut nodes, ids) = start_cluster_with(tmp.path(), 4, &flags);
    let h: Vec<std::net::SocketAddr> = nodes.iter().map(|n| n.http).collect();
    let keys: Vec<String> = (0..24).map(|i| format!("k{i}")).collect();
    for k in &keys {
        assert_eq!(put(h[0], k, b"old", None, "w=3").status, 204, "{k}");
    }
    nodes[3].signal("-STOP");
    let down = wait_for(Duration::from_secs(30), || {
        nodes[0]
            .view()
            .filter(|v| liveness_of(v, &ids[3]) == Some(Liveness::Down))
    });
    assert!(down.is_some(), "n3 is seen down");
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(Duration::from_secs(5)))
        .http_status_as_error(false)
        .build()
        .into();
    let resp = as_operator(agent.post(format!("http://{}/v1/cluster/remove/{}", h[0], ids[3])))
        .header("content-type", "application/json")
        .send(removal_body(&tmp.path().join("ca"), &ids[3]))
        .unwrap();
    assert_eq!(resp.status().as_u16(), 202);
    for n in &nodes[..3] {
        let removed = wait_for(Duration::from_secs(30), || {
            n.view().filter(|v| {
                v.pending.is_empty()
                    && v.members
                        .iter()
                        .any(|m| m.id == ids[3] && m.status == RingStatus::Left)
            })
        });
        assert!(removed.is_some(), "{}: {:?}", n.name, n.view());
    }
    // The members took over its partitions: they answer reads of them once caught up.
    wait_caught_up(&nodes[..3]);
    // Half the keys get a new value, the other half are deleted (with their contexts).
    let (changed, deleted) = keys.split_at(keys.len() / 2);
    for k in changed {
        let r = get(h[1], k, "r=3");
        assert_eq!(
            put(h[1], k, b"new", r.context.as_deref(), "w=3").status,
            204
        );
    }
    for k in deleted {
        let r = get(h[1], k, "r=3");
        assert_eq!(delete(h[1], k, r.context.as_deref()).status, 204, "{k}");
    }
    // Tombstone GC purges the deletes on the three members.
    let purged = wait_for(Duration::from_secs(90), || {
        let all: Vec<u64> = nodes[..3]
            .iter()
            .filter_map(|n| n.view()?.data.map(|d| d.tombstones_purged))
            .collect();
        (all.len() == 3 && all.iter().all(|&p| p >= deleted.len() as u64)).then_some(all)
    });
    assert!(
        purged.is_some(),
        "tombstones were purged: {:?}",
        nodes[0].view()
    );
    nodes[3].signal("-CONT");
    let status = nodes[3]
        .wait_exit(Duration::from_secs(40))
        .expect("the removed node learns it and stops");
    assert_eq!(status.code(), Some(0), "{}", nodes[3].log());
    // Anti-entropy runs a few rounds among the members, then every key reads as it should.
    std::thread::sleep(Duration::from_secs(8));
    for k in changed {
        let r = get(h[2], k, "r=3");
        assert_eq!(
            (r.status, r.body.as_slice()),
            (200, &b"new"[..]),
            "{k}: {r:?}"
        );
    }
    for k in deleted {
        let r = get(h[2], k, "r=3");
        assert_eq!(r.status, 404, "{k} came back: {r:?}");
    }
    let refused: u64 = nodes[..3]
        .iter()
        .filter_map(|n| n.view()?.data.map(|d| d.refused_senders))
        .sum();
    let logged = nodes[..3].iter().any(|n| {
        n.log()
            .contains("refused data-path messages from a node that is not a ring member")
    });
    assert_eq!(refused > 0, logged, "every refusal is counted and logged");
    eprintln!("messages from the removed node refused by the members: {refused}");
}

#[test]
fn a_leave_that_has_not_completed_can_be_cancelled_and_the_node_keeps_its_data() {
    let tmp = tempfile::tempdir().unwrap();
    let (mut nodes, ids) = start_cluster(tmp.path(), 3);
    let h: Vec<std::net::SocketAddr> = nodes.iter().map(|n| n.http).collect();
    let keys: Vec<String> = (0..16).map(|i| format!("stay-{i}")).collect();
    for k in &keys {
        assert_eq!(put(h[0], k, b"kept", None, "w=3").status, 204, "{k}");
    }
    // The two others stall: nobody can confirm the leave, so it stays `leaving`.
    nodes[0].signal("-STOP");
    nodes[1].signal("-STOP");
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(Duration::from_secs(5)))
        .http_status_as_error(false)
        .build()
        .into();
    let leave = format!("http://{}/v1/cluster/leave", h[2]);
    // Not leaving yet: nothing to cancel.
    let mut resp = as_operator(agent.delete(&leave)).call().unwrap();
    assert_eq!(resp.status().as_u16(), 409);
    let body = resp.body_mut().read_to_string().unwrap();
    assert!(body.contains("not_leaving"), "{body}");
    // Without the operator token the cancel is refused like every administrative action.
    let resp = agent.delete(&leave).call().unwrap();
    assert_eq!(resp.status().as_u16(), 401);
    let resp = as_operator(agent.post(&leave)).send_empty().unwrap();
    assert_eq!(resp.status().as_u16(), 202);
    assert!(
        wait_for(Duration::from_secs(10), || nodes[2].view().filter(|v| v
            .members
            .iter()
            .any(|m| m.id == ids[2] && m.status == RingStatus::Leaving)))
        .is_some()
    );
    // The CLI cancels it.
    let out = chorus()
        .args([
            "cluster",
            "cancel-leave",
            "--http",
            &format!("http://{}", h[2]),
        ])
        .args([
            "--operator-token-file",
            nodes[2].operator_token_path().to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("member"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    nodes[0].signal("-CONT");
    nodes[1].signal("-CONT");
    // Everyone sees it a member again, with its share of the partitions; it keeps running.
    wait_members(&nodes, &ids);
    for n in &nodes {
        let v = n.view().unwrap();
        let m = v.members.iter().find(|m| m.id == ids[2]).unwrap();
        assert!(m.partitions > 0, "{}: {m:?}", n.name);
        assert!(v.pending.is_empty(), "{}: {:?}", n.name, v.pending);
    }
    assert!(
        nodes[2].wait_exit(Duration::from_secs(5)).is_none(),
        "it stays"
    );
    // Nothing was lost on the way: every key reads back through it.
    for k in &keys {
        let r = get(h[2], k, "r=3");
        assert_eq!((r.status, r.body.as_slice()), (200, &b"kept"[..]), "{k}");
    }
    // Once the leave completes it cannot be undone (the node exits at once after `left`,
    // so its own answer is whatever came first: 409 or no answer at all).
    let resp = as_operator(agent.post(&leave)).send_empty().unwrap();
    assert_eq!(resp.status().as_u16(), 202);
    let status = nodes[2]
        .wait_exit(Duration::from_secs(30))
        .expect("the second leave completes");
    assert_eq!(status.code(), Some(0));
}
