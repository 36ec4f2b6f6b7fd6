//! Who may change the cluster, and what browsers and strangers cannot do, with real `chorus`
//! processes on 127.0.0.1: operator actions need the operator token (never the client token),
//! a live node is removed only with `--force`, cross-site and foreign-host requests are refused,
//! failed authentications are slowed, and a node without any credential serves loopback only.

mod common;

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use chorus::membership::RingStatus;
use common::*;

/// The client token of these tests' token-protected nodes.
const CLIENT_TOKEN: &str = "test-client-token-0123456789abcdef0123456";

/// One HTTP/1.1 request over a fresh connection, with exactly the given headers; returns the
/// status and the body.
fn raw(
    http: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (u16, String) {
    let Ok(mut s) = std::net::TcpStream::connect(http) else {
        return (0, String::new()); // not listening (yet)
    };
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut req = format!("{method} {path} HTTP/1.1\r\nConnection: close\r\n");
    if !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("host")) {
        req.push_str(&format!("Host: {http}\r\n"));
    }
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str(&format!("Content-Length: {}\r\n\r\n{body}", body.len()));
    s.write_all(req.as_bytes()).unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    let status = out
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = out.split("\r\n\r\n").nth(1).unwrap_or_default().to_owned();
    (status, body)
}

fn error_code(body: &str) -> String {
    // Bodies may be chunked: take the JSON object inside.
    let start = body.find('{').unwrap_or(0);
    let end = body.rfind('}').map_or(body.len(), |e| e + 1);
    serde_json::from_str::<serde_json::Value>(&body[start..end])
        .ok()
        .and_then(|v| v["error"].as_str().map(str::to_owned))
        .unwrap_or_else(|| format!("<no code in {body:?}>"))
}

fn operator() -> String {
    format!("Bearer {OPERATOR_TOKEN}")
}

fn write_secret(path: &Path, text: &str, mode: u32) {
    std::fs::write(path, text).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

fn members_all(node: &NodeProc, status: RingStatus, ids: &[String]) -> bool {
    node.view().is_some_and(|v| {
        v.pending.is_empty()
            && v.members.len() == ids.len()
            && v.members.iter().all(|m| m.status == status)
    })
}

/// Before: `POST /v1/cluster/remove/{live node}` without any credential answered 202 and the
/// live node stopped for good; `POST /v1/cluster/leave` likewise took any node out.
#[test]
fn cluster_changes_need_the_operator_token_and_live_nodes_need_force() {
    let tmp = tempfile::tempdir().unwrap();
    let (mut nodes, ids) = start_cluster(tmp.path(), 2);
    let h0 = nodes[0].http;
    let remove = format!("/v1/cluster/remove/{}", ids[1]);

    // No token, a made-up one, a client-looking one: 401, and nothing changes.
    let wrong = format!("Bearer {CLIENT_TOKEN}");
    for headers in [vec![], vec![("Authorization", wrong.as_str())]] {
        let (status, body) = raw(h0, "POST", &remove, &headers, "");
        assert_eq!(
            (status, error_code(&body).as_str()),
            (401, "unauthorized"),
            "{body}"
        );
        let (status, body) = raw(nodes[1].http, "POST", "/v1/cluster/leave", &headers, "");
        assert_eq!(
            (status, error_code(&body).as_str()),
            (401, "unauthorized"),
            "{body}"
        );
    }
    // The operator token (scheme in lower case) on a live node without force: 409 not_down.
    let ca = tmp.path().join("ca");
    let lower = format!("bearer {OPERATOR_TOKEN}");
    let json = ("Content-Type", "application/json");
    let signed = removal_body(&ca, &ids[1]);
    let (status, body) = raw(
        h0,
        "POST",
        &remove,
        &[("Authorization", &lower), json],
        &signed,
    );
    assert_eq!(
        (status, error_code(&body).as_str()),
        (409, "not_down"),
        "{body}"
    );
    assert!(body.contains("force"), "{body}");
    // The operator token alone does not remove a node, even with force: the removal must be
    // signed with the CA key, which every node checks (so no node, and no holder of a node's
    // token, can write another off). Unsigned: 400; signed by another CA: 403.
    let forced = format!("{remove}?force=true");
    let (status, body) = raw(h0, "POST", &forced, &[("Authorization", &lower)], "");
    assert_eq!(
        (status, error_code(&body).as_str()),
        (400, "bad_request"),
        "{body}"
    );
    assert!(body.contains("CA key"), "{body}");
    let rogue = make_ca(tmp.path(), "rogue-ca");
    let (status, body) = raw(
        h0,
        "POST",
        &forced,
        &[("Authorization", &lower), json],
        &removal_body(&rogue, &ids[1]),
    );
    assert_eq!(
        (status, error_code(&body).as_str()),
        (403, "not_signed"),
        "{body}"
    );
    // The CLI says the same, and fails.
    let out = chorus()
        .args(["cluster", "remove", &ids[1], "--http", &h0.to_string()])
        .arg("--operator-ca")
        .arg(&ca)
        .env("CHORUS_OPERATOR_TOKEN", OPERATOR_TOKEN)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("not down"), "{err}");
    // Without a token the CLI is refused too, and without the CA key it sends nothing.
    let out = chorus()
        .args(["cluster", "remove", &ids[1], "--http", &h0.to_string()])
        .args(["--operator-token-file", "/nonexistent/operator.token"])
        .arg("--operator-ca")
        .arg(&ca)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let out = chorus()
        .args([
            "cluster",
            "remove",
            &ids[1],
            "--force",
            "--http",
            &h0.to_string(),
        ])
        .args(["--operator-ca", "/nonexistent/ca"])
        .env("CHORUS_OPERATOR_TOKEN", OPERATOR_TOKEN)
        .current_dir(tmp.path())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("ca.pem"), "{err}");

    std::thread::sleep(Duration::from_secs(2));
    for n in &nodes {
        assert!(
            members_all(n, RingStatus::Member, &ids),
            "refused requests change nothing: {:?}",
            n.view()
        );
    }
    assert!(
        nodes[1]
            .child
            .as_mut()
            .unwrap()
            .try_wait()
            .unwrap()
            .is_none(),
        "n1 runs"
    );

    // With --force the operator writes the live node off: it learns it and stops.
    let out = chorus()
        .args([
            "cluster",
            "remove",
            &ids[1],
            "--force",
            "--http",
            &h0.to_string(),
        ])
        .args(["--operator-token-file"])
        .arg(nodes[0].operator_token_path())
        .arg("--operator-ca")
        .arg(&ca)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        nodes[1].wait_exit(Duration::from_secs(60)).is_some(),
        "the removed node stops:\n{}",
        nodes[1].log()
    );
}

/// Before: a cross-site form POST, a request for a foreign Host (DNS rebinding) and the
/// client token were all enough to make a node leave or change data; wrong tokens could be
/// tried at full speed.
#[test]
fn browsers_strangers_and_guessers_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let ca = make_ca(tmp.path(), "ca");
    let token_file = tmp.path().join("client.token");
    write_secret(&token_file, CLIENT_TOKEN, 0o600);
    let node = NodeProc::start_with(
        tmp.path(),
        "n0",
        &ca,
        &[],
        &["--client-token-file", token_file.to_str().unwrap()],
    );
    let h = node.http;
    let client = format!("Bearer {CLIENT_TOKEN}");
    let op = operator();
    wait_for(Duration::from_secs(30), || {
        (raw(h, "GET", "/v1/cluster", &[("Authorization", &client)], "").0 == 200).then_some(())
    })
    .unwrap_or_else(|| panic!("never served:\n{}", node.log()));

    // The client token never suffices for an operator action.
    let (status, body) = raw(
        h,
        "POST",
        "/v1/cluster/leave",
        &[("Authorization", &client)],
        "",
    );
    assert_eq!(
        (status, error_code(&body).as_str()),
        (401, "unauthorized"),
        "{body}"
    );
    // A cross-site page cannot make it leave, even when the browser holds the token.
    let (status, body) = raw(
        h,
        "POST",
        "/v1/cluster/leave",
        &[("Authorization", &op), ("Origin", "http://evil.example")],
        "",
    );
    assert_eq!(
        (status, error_code(&body).as_str()),
        (403, "cross_site"),
        "{body}"
    );
    let (status, _) = raw(
        h,
        "POST",
        "/v1/cluster/leave",
        &[("Authorization", &op), ("Sec-Fetch-Site", "cross-site")],
        "",
    );
    assert_eq!(status, 403);
    // DNS rebinding: a name the node does not serve.
    let (status, body) = raw(
        h,
        "GET",
        "/v1/cluster",
        &[("Authorization", &client), ("Host", "evil.example:7200")],
        "",
    );
    assert_eq!(
        (status, error_code(&body).as_str()),
        (421, "unknown_host"),
        "{body}"
    );
    // The status page too, and a bracketed address followed by a name (not a host header a
    // browser sends, but no name this node serves either); `/health` answers any Host.
    for (path, host) in [("/", "evil.example"), ("/v1/cluster", "[::1].evil.example")] {
        let (status, body) = raw(
            h,
            "GET",
            path,
            &[("Authorization", &client), ("Host", host)],
            "",
        );
        assert_eq!(
            (status, error_code(&body).as_str()),
            (421, "unknown_host"),
            "GET {path} for {host}: {body}"
        );
    }
    let (status, _) = raw(h, "GET", "/health", &[("Host", "evil.example")], "");
    assert_eq!(status, 200, "health checks by address answer any Host");
    // A form-encoded (simple, cross-site-able) POST is refused and changes nothing.
    let update = r#"{"type":"gcounter","increment":5}"#;
    let (status, body) = raw(
        h,
        "POST",
        "/v1/crdt/c?w=1",
        &[("Authorization", &client), ("Content-Type", "text/plain")],
        update,
    );
    assert_eq!(
        (status, error_code(&body).as_str()),
        (415, "cross_site"),
        "{body}"
    );
    let (status, _) = raw(h, "GET", "/v1/crdt/c", &[("Authorization", &client)], "");
    assert_eq!(status, 404, "the refused update changed nothing");
    // The same update as JSON, from the node's own page: applied.
    let own = format!("http://{h}");
    let (status, body) = raw(
        h,
        "POST",
        "/v1/crdt/c?w=1",
        &[
            ("Authorization", &client),
            ("Content-Type", "application/json"),
            ("Origin", &own),
        ],
        update,
    );
    assert_eq!(status, 204, "{body}");
    // None of the refused requests started a leave.
    let (status, body) = raw(h, "GET", "/v1/cluster", &[("Authorization", &client)], "");
    assert_eq!(status, 200);
    assert!(
        body.contains(r#""status":"member""#) && !body.contains("leav"),
        "{body}"
    );

    // Guessing: a burst of wrong tokens answer 401, then the address is slowed (429, a second
    // late); a right token still passes at once, and token-less requests (which any web page
    // can make) never count.
    for i in 0..chorus::api::auth::FAILURES_BURST - 1 {
        let (status, _) = raw(
            h,
            "GET",
            "/v1/cluster",
            &[("Authorization", &format!("Bearer guess-{i}"))],
            "",
        );
        assert_eq!(status, 401, "guess {i}");
    }
    let started = std::time::Instant::now();
    let (status, body) = raw(
        h,
        "GET",
        "/v1/cluster",
        &[("Authorization", "Bearer guess-x")],
        "",
    );
    assert_eq!(
        (status, error_code(&body).as_str()),
        (429, "too_many_failures"),
        "{body}"
    );
    assert!(started.elapsed() >= Duration::from_millis(900), "slowed");
    let (status, _) = raw(h, "GET", "/v1/cluster", &[("Authorization", &client)], "");
    assert_eq!(status, 200, "a right token is never locked out");
    for _ in 0..30 {
        assert_eq!(raw(h, "GET", "/v1/cluster", &[], "").0, 401);
    }
    // /health stays open.
    assert_eq!(raw(h, "GET", "/health", &[], "").0, 200);

    // A node with no operator token refuses operator actions whatever is sent.
    let bare = NodeProc::start_opts(
        tmp.path(),
        "n1",
        &ca,
        &[],
        &["--client-token-file", token_file.to_str().unwrap()],
        false,
    );
    wait_for(Duration::from_secs(30), || {
        (raw(
            bare.http,
            "GET",
            "/v1/cluster",
            &[("Authorization", &client)],
            "",
        )
        .0 == 200)
            .then_some(())
    })
    .unwrap_or_else(|| panic!("never served:\n{}", bare.log()));
    for auth in [&client, &op] {
        let (status, body) = raw(
            bare.http,
            "POST",
            "/v1/cluster/leave",
            &[("Authorization", auth)],
            "",
        );
        assert_eq!(
            (status, error_code(&body).as_str()),
            (403, "operator_disabled"),
            "{body}"
        );
    }
}

/// Runs `chorus start` expecting it to refuse to start; returns what it printed.
fn start_refused(args: &[&str]) -> String {
    let mut child = chorus()
        .arg("start")
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let status = wait_for(Duration::from_secs(20), || child.try_wait().unwrap());
    if status.is_none() {
        let _ = child.kill();
        panic!("chorus start {args:?} kept running");
    }
    assert!(!status.unwrap().success());
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    err
}

/// Before: a one-character token and a world-readable token file were accepted, and a node
/// without any credential served HTTP on every interface.
#[test]
fn weak_token_files_are_refused_and_a_node_without_credentials_serves_loopback_only() {
    let tmp = tempfile::tempdir().unwrap();
    let ca = make_ca(tmp.path(), "ca");

    // `chorus token new` writes a strong token, readable by its owner only, never overwriting.
    let made = tmp.path().join("made.token");
    let out = chorus()
        .args(["token", "new", "--out"])
        .arg(&made)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = std::fs::read_to_string(&made).unwrap();
    assert_eq!(text.trim().len(), 64, "{text}");
    assert_eq!(
        std::fs::metadata(&made).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let again = chorus()
        .args(["token", "new", "--out"])
        .arg(&made)
        .output()
        .unwrap();
    assert!(!again.status.success());
    assert_eq!(std::fs::read_to_string(&made).unwrap(), text);

    let (quic, http) = free_ports();
    let data = tmp.path().join("d");
    issue_cert(&ca, "n", &data.join("tls"));
    let base = |token_flag: &'static str, file: &Path| -> Vec<String> {
        vec![
            "--data-dir".into(),
            data.display().to_string(),
            "--listen".into(),
            quic.to_string(),
            "--http".into(),
            http.to_string(),
            token_flag.into(),
            file.display().to_string(),
        ]
    };
    let exposed = tmp.path().join("exposed.token");
    write_secret(&exposed, CLIENT_TOKEN, 0o644);
    let short = tmp.path().join("short.token");
    write_secret(&short, "s3cret", 0o600);
    for flag in ["--client-token-file", "--operator-token-file"] {
        let args = base(flag, &exposed);
        let err = start_refused(&args.iter().map(String::as_str).collect::<Vec<_>>());
        assert!(err.contains("chmod 600"), "{err}");
        let args = base(flag, &short);
        let err = start_refused(&args.iter().map(String::as_str).collect::<Vec<_>>());
        assert!(err.contains("shorter than 32"), "{err}");
    }

    // No credential at all: asked for every interface, it serves loopback only, and says so.
    let (_, free) = free_ports();
    let mut node = NodeProc::start_opts(tmp.path(), "open", &ca, &[], &[], false);
    node.kill();
    node.http = SocketAddr::from(([0, 0, 0, 0], free.port()));
    node.spawn();
    let looped = SocketAddr::from(([127, 0, 0, 1], free.port()));
    let view = wait_for(Duration::from_secs(30), || {
        chorus::runtime::dev::fetch_cluster(looped, Duration::from_secs(2)).ok()
    })
    .unwrap_or_else(|| panic!("never served:\n{}", node.log()));
    assert_eq!(view.members[0].http_addr, looped, "{view:?}");
    assert!(node.log().contains("serve loopback only"), "{}", node.log());
}

/// Before: a context is not authenticated: a write carrying 1,023 invented actors left a key
/// whose context no client could send back, and a forged OR-Set remove context blocked an
/// element for good. Now a context the cluster did not issue is refused (400) over both APIs
/// and changes nothing; the contexts the cluster hands out keep working.
#[test]
fn contexts_the_cluster_did_not_issue_are_refused() {
    use chorus::causality::VersionVector;
    use chorus::client::{Client, Config, ErrorKind, Protocol};
    use chorus::node::Context;
    use chorus::NodeId;

    let tmp = tempfile::tempdir().unwrap();
    let (nodes, _ids) = start_cluster(tmp.path(), 2);
    let h = nodes[0].http;
    let written = put(h, "k", b"v1", None, "w=2");
    assert_eq!(written.status, 204);
    let genuine = written.context.clone().unwrap();

    // The attack of the review: a context with 1,023 invented actors (and a plain forgery
    // that claims one write more than was made).
    let wide: VersionVector = (1..=1023u64).map(|n| (NodeId::new(n), 1)).collect();
    let claimed: VersionVector = [(NodeId::new(7), 99)].into_iter().collect();
    for seen in [wide, claimed] {
        let forged = Context::new(b"k", seen).to_token();
        let a = put(h, "k", b"evil", Some(&forged), "w=2");
        assert_eq!(a.status, 400, "{}", String::from_utf8_lossy(&a.body));
        assert!(
            String::from_utf8_lossy(&a.body).contains("not issued by this cluster"),
            "{}",
            String::from_utf8_lossy(&a.body)
        );
        let d = delete(h, "k", Some(&forged));
        assert_eq!(d.status, 400);
    }
    // A genuine context of one key is no good for another.
    assert_eq!(put(h, "other", b"x", Some(&genuine), "").status, 400);
    // Nothing changed: one value, and the genuine context still supersedes it.
    let r = get(nodes[1].http, "k", "r=2");
    assert_eq!((r.status, r.body.as_slice()), (200, &b"v1"[..]));
    let next = put(h, "k", b"v2", Some(&genuine), "w=2");
    assert_eq!(next.status, 204, "{}", String::from_utf8_lossy(&next.body));
    assert_eq!(get(h, "k", "r=2").body, b"v2");

    // OR-Set: a forged remove context is refused; the element can still be added and seen.
    let orset = |body: &str| {
        raw(
            h,
            "POST",
            "/v1/crdt/s?w=2",
            &[("Content-Type", "application/json")],
            body,
        )
    };
    let forged_set = Context::new(
        b"s",
        [(NodeId::new(42), 1_000_000)]
            .into_iter()
            .collect::<VersionVector>(),
    )
    .to_token();
    let (status, body) = orset(&format!(
        r#"{{"type":"orset","remove":["x"],"context":"{forged_set}"}}"#
    ));
    assert_eq!(status, 400, "{body}");
    let (status, body) = orset(r#"{"type":"orset","add":["x"]}"#);
    assert_eq!(status, 204, "{body}");
    let (status, body) = raw(h, "GET", "/v1/crdt/s?r=2", &[], "");
    assert!(status == 200 && body.contains("\"x\""), "{status} {body}");

    // A register's (tombstone's) context is no OR-Set context, though the cluster issued it
    // for the same key (it would defer removes of adds the set has not made yet).
    let w = put(h, "rs", b"r", None, "w=2");
    let d = delete(h, "rs", w.context.as_deref());
    assert_eq!(d.status, 204);
    let tomb = d.context.clone().unwrap();
    let on_rs = |body: &str| {
        raw(
            h,
            "POST",
            "/v1/crdt/rs?w=2",
            &[("Content-Type", "application/json")],
            body,
        )
    };
    let (status, body) = on_rs(r#"{"type":"orset","add":["y"]}"#);
    assert_eq!(status, 204, "{body}");
    let (status, body) = on_rs(&format!(
        r#"{{"type":"orset","remove":["x"],"context":"{tomb}"}}"#
    ));
    assert_eq!(status, 400, "{body}");
    let (status, body) = on_rs(r#"{"type":"orset","add":["x"]}"#);
    assert_eq!(status, 204, "{body}");

    // QUIC: the client library's forged context is refused the same way.
    let rt = tokio::runtime::Runtime::new().unwrap();
    let mut config = Config::new([h.to_string()]);
    config.protocol = Protocol::Quic;
    config.ca_pem = Some(std::fs::read_to_string(tmp.path().join("ca/ca.pem")).unwrap());
    let forged = Context::new(b"k", [(NodeId::new(5), 5)].into_iter().collect());
    rt.block_on(async {
        let client = Client::connect(config).await.unwrap();
        let e = client.put("k", "evil", Some(&forged)).await.unwrap_err();
        assert_eq!(e.kind, ErrorKind::BadRequest, "{e}");
        // And a context the cluster issued works over QUIC too.
        let read = client.get("k").await.unwrap();
        client.put("k", "v3", read.context.as_ref()).await.unwrap();
    });
    assert_eq!(get(h, "k", "r=2").body, b"v3");
}
