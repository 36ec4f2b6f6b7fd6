//! The Rust client library, the QUIC client API and the CLI's data commands, against real
//! `chorus start` processes on 127.0.0.1.

mod common;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use chorus::client::{
    BreakerState, Client, Config, CrdtOp, Error, ErrorKind, Options, Protocol, Value,
};
use chorus::protocol::client::{
    encode_frame, ClientMessage, FrameHeader, ServerMessage, FRAME_HEADER_BYTES,
};
use common::*;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

fn config(nodes: &[&NodeProc], protocol: Protocol, ca: &Path) -> Config {
    let mut c = Config::new(nodes.iter().map(|n| n.http.to_string()));
    c.protocol = protocol;
    c.ca_pem = Some(std::fs::read_to_string(ca.join("ca.pem")).unwrap());
    // The node-kill phase needs register writes retried on another node.
    c.retry_register_writes = true;
    c
}

/// A value with its siblings sorted (their order depends on which nodes minted them).
fn show(v: &Value) -> String {
    match v {
        Value::Siblings(all) => {
            let mut all = all.clone();
            all.sort();
            format!("Siblings({all:?})")
        }
        other => format!("{other:?}"),
    }
}

/// The shopping cart, written the way an application should use the client library (the
/// README points here): read, change, write back with the context, so that two devices adding
/// at once leave siblings that the next change merges (a cart is the union of its items)
/// instead of one silently replacing the other. Visits and items ever added are CRDTs, which
/// merge by themselves. Returns the cart as written.
async fn add_to_cart(
    client: &Client,
    user: &str,
    items: &[&str],
) -> Result<BTreeSet<String>, Error> {
    let key = format!("cart:{user}");
    let read = client.get(&key).await?;
    let mut cart = BTreeSet::new();
    for value in read.value.values() {
        cart.extend(
            String::from_utf8_lossy(value)
                .split(',')
                .filter(|s| !s.is_empty())
                .map(str::to_owned),
        );
    }
    cart.extend(items.iter().map(|s| s.to_string()));
    let joined = cart.iter().cloned().collect::<Vec<_>>().join(",");
    // The context says which versions this write replaces.
    client.put(&key, joined, read.context.as_ref()).await?;
    client.incr(format!("visits:{user}"), 1).await?;
    client
        .set_add("items-ever-added", items.iter().copied())
        .await?;
    Ok(cart)
}

/// Every operation, recorded without contexts (they name the coordinators, which differ).
async fn transcript(client: &Client, p: &str) -> Vec<String> {
    let mut t = Vec::new();
    let k = |s: &str| format!("{p}-{s}");
    let mut log = |line: String| t.push(line);

    // Registers: absent, written, superseded with the context.
    let r = client.get(k("reg")).await.unwrap();
    log(format!("absent {} deleted {}", show(&r.value), r.deleted));
    let w = client.put(k("reg"), "v1", None).await.unwrap();
    log(format!("put {} acks>=2 {}", show(&w.value), w.acks >= 2));
    let r1 = client.get(k("reg")).await.unwrap();
    log(format!(
        "get {} context {}",
        show(&r1.value),
        r1.context.is_some()
    ));
    let w = client
        .put(k("reg"), "v2", r1.context.as_ref())
        .await
        .unwrap();
    log(format!("superseded {}", show(&w.value)));
    // Two writes from the same stale context: siblings, and the read sees both.
    let a = client
        .put(k("reg"), "v3", r1.context.as_ref())
        .await
        .unwrap();
    log(format!("stale write {}", show(&a.value)));
    let r2 = client.get(k("reg")).await.unwrap();
    log(format!("siblings {}", show(&r2.value)));
    // Resolving them with the read's context.
    let w = client
        .put(k("reg"), "v4", r2.context.as_ref())
        .await
        .unwrap();
    log(format!("resolved {}", show(&w.value)));
    let r3 = client.get(k("reg")).await.unwrap();
    let d = client.delete(k("reg"), r3.context.as_ref()).await.unwrap();
    log(format!("deleted {}", show(&d.value)));
    let r = client.get(k("reg")).await.unwrap();
    log(format!(
        "after delete {} deleted {} context {}",
        show(&r.value),
        r.deleted,
        r.context.is_some()
    ));
    // Binary keys and values.
    let key = [p.as_bytes(), &[0, 0xff, b'/', b' ', b'%']].concat();
    client.put(&key, vec![0u8, 1, 255], None).await.unwrap();
    log(format!(
        "binary {:?}",
        client.get(&key).await.unwrap().value
    ));

    // Counters, with an op id applied once however often it is sent.
    client.incr(k("ctr"), 3).await.unwrap();
    let u = client.incr(k("ctr"), 4).await.unwrap();
    log(format!("gcounter {} {:?}", u.type_name, u.value));
    let op = CrdtOp::GCounter { increment: 10 };
    let first = client
        .update_with_id(k("ctr"), op.clone(), "op-1")
        .await
        .unwrap();
    let again = client.update_with_id(k("ctr"), op, "op-1").await.unwrap();
    log(format!(
        "op id replayed {} {}",
        first.replayed, again.replayed
    ));
    log(format!(
        "counter {}",
        client.counter(k("ctr")).await.unwrap()
    ));
    client.incr(k("pn"), -2).await.unwrap();
    client.incr(k("pn"), 5).await.unwrap();
    log(format!(
        "pncounter {}",
        client.counter(k("pn")).await.unwrap()
    ));
    log(format!(
        "never written {:?}",
        client.crdt(k("none")).await.unwrap()
    ));

    // Sets.
    client.set_add(k("or"), ["a", "b", "c"]).await.unwrap();
    let u = client.set_remove(k("or"), ["a"]).await.unwrap();
    log(format!("orset {} {:?}", u.type_name, u.value));
    let (elements, context) = client.set(k("or")).await.unwrap();
    log(format!(
        "orset read {elements:?} context {}",
        context.is_some()
    ));
    let two = CrdtOp::TwoPSet {
        add: vec!["x".into(), "y".into()],
        remove: vec!["x".into()],
    };
    client.update(k("2p"), two).await.unwrap();
    // A removed 2P-Set element never comes back.
    let u = client.set_add(k("2p"), ["x"]).await.unwrap();
    log(format!(
        "2pset {} {:?} notes {}",
        u.type_name,
        u.value,
        !u.notes.is_empty()
    ));

    // Errors: the same codes over both protocols, and nothing changed.
    let e = client.get(k("ctr")).await.unwrap_err();
    log(format!("register read of a counter: {:?}", e.kind));
    let e = client.put(k("ctr"), "x", None).await.unwrap_err();
    log(format!(
        "register write of a counter: {:?} indeterminate {}",
        e.kind, e.indeterminate
    ));
    let e = client.counter(k("or")).await.unwrap_err();
    log(format!("counter read of a set: {:?}", e.kind));
    let e = client.put(vec![b'k'; 2000], "x", None).await.unwrap_err();
    log(format!("long key: {:?}", e.kind));
    let e = client
        .put(k("big"), vec![0u8; 1024 * 1024 + 1], None)
        .await
        .unwrap_err();
    log(format!("big value: {:?}", e.kind));
    let strict = client.with(Options {
        r: Some(4),
        ..Options::default()
    });
    let e = strict.get(k("reg")).await.unwrap_err();
    log(format!("r=4: {:?} {}", e.kind, e.code));
    let all = client.with(Options {
        w: Some(3),
        strict: true,
        ..Options::default()
    });
    let w = all.put(k("w3"), "x", None).await.unwrap();
    log(format!("w=3 acks {}", w.acks));
    t
}

fn run_cli(args: &[&str]) -> (i32, String, String) {
    let out = chorus().args(args).output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn client_library_cli_and_breakers_on_a_three_node_cluster() {
    let tmp = tempfile::tempdir().unwrap();
    let (mut nodes, _) = start_cluster(tmp.path(), 3);
    let ca = tmp.path().join("ca");
    let rt = runtime();

    // 1. Every operation through the library, over QUIC and over HTTP: identical results.
    let (quic, http) = rt.block_on(async {
        let refs: Vec<&NodeProc> = nodes.iter().collect();
        let q = Client::connect(config(&refs, Protocol::Quic, &ca))
            .await
            .unwrap();
        let h = Client::connect(config(&refs, Protocol::Http, &ca))
            .await
            .unwrap();
        (q, h)
    });
    let tq = rt.block_on(transcript(&quic, "q"));
    let th = rt.block_on(transcript(&http, "h"));
    for (a, b) in tq.iter().zip(&th) {
        assert_eq!(a, b);
    }
    assert_eq!(tq.len(), th.len());
    assert!(tq[0].contains("Absent"), "{tq:#?}");
    assert!(
        tq.contains(&"siblings Siblings([[118, 50], [118, 51]])".to_string()),
        "{tq:#?}"
    );
    assert!(tq.contains(&"counter 17".to_string()), "{tq:#?}");
    assert!(tq.contains(&"w=3 acks 3".to_string()), "{tq:#?}");
    // A value written over one protocol reads the same over the other.
    rt.block_on(async {
        quic.put("shared", "from quic", None).await.unwrap();
        assert_eq!(
            http.get("shared").await.unwrap().value,
            Value::One(b"from quic".to_vec())
        );
    });
    for n in quic.nodes() {
        assert_eq!(n.breaker, BreakerState::Closed, "{n:?}");
    }
    assert_eq!(quic.nodes().len(), 3);

    // The cart: two devices add at once (both read before either writes), so the cart has
    // two siblings; the next change merges them and supersedes both.
    rt.block_on(async {
        let (phone, laptop) = (&quic, &http);
        assert_eq!(
            add_to_cart(phone, "alice", &["apple"]).await.unwrap().len(),
            1
        );
        let seen_by_phone = phone.get("cart:alice").await.unwrap();
        let seen_by_laptop = laptop.get("cart:alice").await.unwrap();
        let ctx = |r: &chorus::client::Read| r.context.clone();
        phone
            .put("cart:alice", "apple,pear", ctx(&seen_by_phone).as_ref())
            .await
            .unwrap();
        laptop
            .put("cart:alice", "apple,fig", ctx(&seen_by_laptop).as_ref())
            .await
            .unwrap();
        let both = phone.get("cart:alice").await.unwrap();
        assert!(
            matches!(&both.value, Value::Siblings(v) if v.len() == 2),
            "{both:?}"
        );
        let cart = add_to_cart(laptop, "alice", &["kiwi"]).await.unwrap();
        let want: BTreeSet<String> = ["apple", "fig", "kiwi", "pear"].map(String::from).into();
        assert_eq!(cart, want);
        let after = phone.get("cart:alice").await.unwrap();
        assert_eq!(after.value, Value::One(b"apple,fig,kiwi,pear".to_vec()));
        assert_eq!(phone.counter("visits:alice").await.unwrap(), 2);
        let (mut ever, _) = phone.set("items-ever-added").await.unwrap();
        ever.sort();
        assert_eq!(ever, ["apple", "kiwi"]);
    });

    // 2. The CLI.
    let node = nodes[0].http.to_string();
    let ca_pem = ca.join("ca.pem");
    let cli = |args: &[&str]| {
        let mut all = args.to_vec();
        all.extend(["--node", &node]);
        run_cli(&all)
    };
    let (code, _, err) = cli(&["put", "cli-k", "hello"]);
    assert_eq!(code, 0, "{err}");
    let (code, out, err) = cli(&["get", "cli-k"]);
    assert_eq!((code, out.as_str()), (0, "hello"), "{err}");
    assert!(err.contains("context: "), "{err}");
    // Over QUIC too.
    let (code, out, err) = cli(&[
        "get",
        "cli-k",
        "--protocol",
        "quic",
        "--ca",
        ca_pem.to_str().unwrap(),
    ]);
    assert_eq!((code, out.as_str()), (0, "hello"), "{err}");
    // Two writes without a context: siblings, printed one per line with the context.
    cli(&["put", "cli-s", "first"]);
    let (code, _, err) = cli(&["put", "cli-s", "second", "--w", "3"]);
    assert_eq!(code, 0, "{err}");
    let (code, out, err) = cli(&["get", "cli-s"]);
    assert_eq!(code, 0, "{err}");
    let mut lines: Vec<&str> = out.lines().collect();
    lines.sort();
    assert_eq!(lines, ["first", "second"]);
    assert!(
        err.contains("2 siblings") && err.contains("context: "),
        "{err}"
    );
    let (_, out, _) = cli(&["get", "cli-s", "--json"]);
    let j: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(j["values"].as_array().unwrap().len(), 2, "{j}");
    // Resolve them with the context.
    let token = j["context"].as_str().unwrap().to_owned();
    let (code, _, err) = cli(&["put", "cli-s", "merged", "--context", &token]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(cli(&["get", "cli-s"]).1, "merged");
    // Not found: 1; delete; failure: 2.
    assert_eq!(cli(&["get", "cli-missing"]).0, 1);
    assert_eq!(cli(&["delete", "cli-k"]).0, 0);
    let (code, _, err) = cli(&["get", "cli-k"]);
    assert_eq!(code, 1);
    assert!(err.contains("deleted"), "{err}");
    let (code, _, err) = cli(&["get", "cli-s", "--r", "9"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("bad_request"), "{err}");
    // Counters and sets.
    assert_eq!(cli(&["counter", "incr", "cli-c", "5"]).1.trim(), "5");
    assert_eq!(cli(&["counter", "incr", "cli-c"]).1.trim(), "6");
    assert_eq!(cli(&["counter", "get", "cli-c"]).1.trim(), "6");
    // A G-Counter cannot go down: a type conflict, exit 2, and nothing changed.
    assert_eq!(cli(&["counter", "incr", "cli-c", "-1"]).0, 2);
    assert_eq!(cli(&["counter", "get", "cli-missing"]).0, 1);
    cli(&["set", "add", "cli-set", "x", "y", "z"]);
    let (code, out, _) = cli(&["set", "remove", "cli-set", "x"]);
    assert_eq!((code, out.as_str()), (0, "y\nz\n"));
    assert_eq!(cli(&["set", "get", "cli-set"]).1, "y\nz\n");
    assert_eq!(cli(&["get", "cli-set"]).0, 2, "a register read of a set");

    // 3. One node SIGKILLed: a client given all three addresses keeps working, and the dead
    // node's breaker opens.
    let dead = nodes[2].http;
    nodes[2].kill();
    let mut cfg = config(&nodes.iter().collect::<Vec<_>>(), Protocol::Quic, &ca);
    cfg.options.timeout_ms = Some(1000);
    cfg.answer_grace = Duration::from_millis(500);
    cfg.retry_register_writes = true;
    let killed = quic.with(Options {
        timeout_ms: Some(1000),
        ..Options::default()
    });
    rt.block_on(async {
        let fresh = Client::connect(cfg).await.unwrap();
        for (name, client) in [("existing", &killed), ("new", &fresh)] {
            for i in 0..30 {
                let key = format!("after-kill-{name}-{i}");
                client
                    .put(&key, "v", None)
                    .await
                    .unwrap_or_else(|e| panic!("{name} put {i}: {e}"));
                let r = client
                    .get(&key)
                    .await
                    .unwrap_or_else(|e| panic!("{name} get {i}: {e}"));
                assert_eq!(r.value, Value::One(b"v".to_vec()));
                client
                    .incr("after-kill-ctr", 1)
                    .await
                    .unwrap_or_else(|e| panic!("{name} incr {i}: {e}"));
            }
            let state = client.breaker(dead).unwrap();
            assert_ne!(state, BreakerState::Closed, "{name}: {:?}", client.nodes());
            for n in client.nodes().iter().filter(|n| n.http_addr != dead) {
                assert_eq!(n.breaker, BreakerState::Closed, "{name}: {n:?}");
            }
        }
        assert_eq!(fresh.counter("after-kill-ctr").await.unwrap(), 60);
    });
    // A strict write to all three replicas cannot complete: the CLI says it may have been
    // applied (exit 3), or that it certainly was not (2) when no replica of it took it.
    let (code, _, err) = cli(&[
        "put",
        "cli-strict",
        "v",
        "--w",
        "3",
        "--strict",
        "--timeout-ms",
        "1000",
    ]);
    // The coordinator may know up front that a replica is down and refuse it unapplied (2,
    // unavailable), or try and time out after reaching some replicas (3).
    match code {
        3 => assert!(err.contains("may have been applied"), "{err}"),
        2 => assert!(err.contains("unavailable"), "{err}"),
        _ => panic!("exit code {code}: {err}"),
    }
    // With a second node frozen (SIGSTOP: its sockets stay open, it just never answers), a
    // w=2 write reaches at most the node it is sent to: its fate is unknown, exit 3.
    nodes[1].signal("-STOP");
    let (code, _, err) = cli(&[
        "put",
        "cli-frozen",
        "v",
        "--w",
        "2",
        "--strict",
        "--timeout-ms",
        "800",
    ]);
    nodes[1].signal("-CONT");
    assert_eq!(code, 3, "{err}");
    assert!(err.contains("may have been applied"), "{err}");
}

/// A raw QUIC client lane on `addr`.
async fn raw_lane(
    addr: SocketAddr,
    ca_pem: &str,
) -> (quinn::Endpoint, quinn::SendStream, quinn::RecvStream) {
    let ep = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    let cfg = chorus::client::quic_config(ca_pem).unwrap();
    let conn = ep
        .connect_with(cfg, addr, "chorus-node")
        .unwrap()
        .await
        .unwrap();
    let (send, recv) = conn.open_bi().await.unwrap();
    (ep, send, recv)
}

async fn read_answer(recv: &mut quinn::RecvStream) -> Option<(u64, ServerMessage)> {
    let mut header = [0u8; FRAME_HEADER_BYTES];
    tokio::time::timeout(Duration::from_secs(10), recv.read_exact(&mut header))
        .await
        .ok()?
        .ok()?;
    let h = FrameHeader::parse(&header, 1 << 26).unwrap();
    let mut body = vec![0u8; h.body_len];
    recv.read_exact(&mut body).await.ok()?;
    Some((
        h.id,
        chorus::protocol::client::decode_body(&body, 1 << 26).unwrap(),
    ))
}

fn refused_code(m: &ServerMessage) -> &str {
    match m {
        ServerMessage::Refused(r) => &r.code,
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[test]
fn tokens_foreign_cas_and_malformed_client_streams_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let ca = make_ca(tmp.path(), "ca");
    let token_file = tmp.path().join("token");
    std::fs::write(&token_file, "s3cret-token-0123456789abcdef0123456789\n").unwrap();
    {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(&token_file, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    let node = NodeProc::start_with(
        tmp.path(),
        "n0",
        &ca,
        &[],
        &["--client-token-file", token_file.to_str().unwrap()],
    );
    let ca_pem = std::fs::read_to_string(ca.join("ca.pem")).unwrap();
    let rt = runtime();
    let with_token = |protocol, token: Option<&str>| {
        let mut c = config(&[&node], protocol, &ca);
        c.token = token.map(str::to_owned);
        c.attempts = 1;
        c
    };
    // Wait until it serves (with the token).
    let client = wait_for(Duration::from_secs(30), || {
        rt.block_on(Client::connect(with_token(
            Protocol::Quic,
            Some("s3cret-token-0123456789abcdef0123456789"),
        )))
        .ok()
    })
    .unwrap_or_else(|| panic!("never served:\n{}", node.log()));
    rt.block_on(async {
        client.put("k", "v", None).await.unwrap();
        assert_eq!(
            client.get("k").await.unwrap().value,
            Value::One(b"v".to_vec())
        );
    });

    // HTTP: no token or a wrong one is refused (401) everywhere but /health.
    for token in [None, Some("wrong")] {
        let e = rt
            .block_on(Client::connect(with_token(Protocol::Http, token)))
            .unwrap_err();
        assert_eq!(e.kind, ErrorKind::Unauthorized, "{e}");
    }
    let status_of = |path: &str| {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(node.http).unwrap();
        write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut out = String::new();
        let _ = s.read_to_string(&mut out);
        out.split_whitespace().nth(1).unwrap_or_default().to_owned()
    };
    assert_eq!(status_of("/health"), "200");
    assert_eq!(status_of("/v1/cluster"), "401");
    assert_eq!(status_of("/v1/kv/k"), "401");
    let http_ok = rt
        .block_on(Client::connect(with_token(
            Protocol::Http,
            Some("s3cret-token-0123456789abcdef0123456789"),
        )))
        .unwrap();
    rt.block_on(async {
        assert_eq!(
            http_ok.get("k").await.unwrap().value,
            Value::One(b"v".to_vec())
        )
    });

    // The CLI: the token from a file or CHORUS_TOKEN; without it, unauthorized (exit 2).
    let http_addr = node.http.to_string();
    let (code, _, err) = run_cli(&["get", "k", "--node", &http_addr]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("unauthorized"), "{err}");
    let (code, out, err) = run_cli(&[
        "get",
        "k",
        "--node",
        &http_addr,
        "--token-file",
        token_file.to_str().unwrap(),
    ]);
    assert_eq!((code, out.as_str()), (0, "v"), "{err}");
    let status = chorus()
        .args(["status", "--http", &http_addr])
        .env("CHORUS_TOKEN", "s3cret-token-0123456789abcdef0123456789")
        .output()
        .unwrap();
    assert!(
        status.status.success(),
        "{}",
        String::from_utf8_lossy(&status.stderr)
    );
    let status = chorus()
        .args(["status", "--http", &http_addr])
        .output()
        .unwrap();
    assert!(!status.status.success(), "status without the token");

    // QUIC: a lane whose hello has no token or a wrong one is refused.
    rt.block_on(async {
        for token in [None, Some("wrong".to_string())] {
            let (_ep, mut send, mut recv) = raw_lane(node.quic, &ca_pem).await;
            send.write_all(&encode_frame(0, &ClientMessage::Hello { token }).unwrap())
                .await
                .unwrap();
            let (_, m) = read_answer(&mut recv).await.expect("an answer");
            assert_eq!(refused_code(&m), "unauthorized");
        }
    });

    // A client that trusts another CA refuses the node.
    let other = make_ca(tmp.path(), "other-ca");
    let mut foreign = config(&[&node], Protocol::Quic, &other);
    foreign.token = Some("s3cret-token-0123456789abcdef0123456789".into());
    foreign.attempts = 1;
    let e = rt.block_on(async {
        let c = Client::connect(foreign).await.unwrap();
        c.get("k").await.unwrap_err()
    });
    assert_eq!(e.kind, ErrorKind::Unreachable, "{e}");
    assert!(e.message.contains("not trusted"), "{e}");

    // Malformed streams: each refused with an error and a log line; the node keeps serving.
    let hello = || {
        encode_frame(
            0,
            &ClientMessage::Hello {
                token: Some("s3cret-token-0123456789abcdef0123456789".into()),
            },
        )
        .unwrap()
    };
    rt.block_on(async {
        // Garbage where a frame belongs (after a good hello): a frame with a bad body.
        let (_ep, mut send, mut recv) = raw_lane(node.quic, &ca_pem).await;
        send.write_all(&hello()).await.unwrap();
        assert!(matches!(
            read_answer(&mut recv).await,
            Some((0, ServerMessage::Ready))
        ));
        let body = b"CH\x01not msgpack";
        let mut garbage = ((8 + body.len()) as u32).to_be_bytes().to_vec();
        garbage.extend_from_slice(&7u64.to_be_bytes());
        garbage.extend_from_slice(body);
        send.write_all(&garbage).await.unwrap();
        let (id, m) = read_answer(&mut recv).await.expect("an answer to garbage");
        assert_eq!((id, refused_code(&m)), (7, "bad_request"));
        // The lane still works after a malformed request.
        let get = ClientMessage::Request(chorus::node::ClientRequest {
            key: b"k".to_vec(),
            op: chorus::node::ClientOp::Get,
            options: Default::default(),
        });
        send.write_all(&encode_frame(8, &get).unwrap())
            .await
            .unwrap();
        let (id, m) = read_answer(&mut recv).await.unwrap();
        assert_eq!(id, 8);
        assert!(
            matches!(m, ServerMessage::Reply(chorus::node::ClientReply::Read(_))),
            "{m:?}"
        );
        // A frame over the limit (a put of 2 MiB): refused, skipped, and the lane goes on.
        let big_put = ClientMessage::Request(chorus::node::ClientRequest {
            key: b"big".to_vec(),
            op: chorus::node::ClientOp::Put {
                value: vec![7; 2 << 20],
                context: None,
            },
            options: Default::default(),
        });
        send.write_all(&encode_frame(10, &big_put).unwrap())
            .await
            .unwrap();
        send.write_all(&encode_frame(11, &get).unwrap())
            .await
            .unwrap();
        let (id, m) = read_answer(&mut recv)
            .await
            .expect("an answer to a big frame");
        assert_eq!((id, refused_code(&m)), (10, "too_large"));
        let (id, m) = read_answer(&mut recv).await.expect("the lane goes on");
        assert_eq!(id, 11);
        assert!(
            matches!(m, ServerMessage::Reply(chorus::node::ClientReply::Read(_))),
            "{m:?}"
        );
        // An absurdly declared frame: refused, and the lane ends.
        let mut big = ((100u32 << 20) + 8).to_be_bytes().to_vec();
        big.extend_from_slice(&9u64.to_be_bytes());
        send.write_all(&big).await.unwrap();
        let (id, m) = read_answer(&mut recv)
            .await
            .expect("an answer to an oversize frame");
        assert_eq!((id, refused_code(&m)), (9, "too_large"));

        // A request before the hello.
        let (_ep, mut send, mut recv) = raw_lane(node.quic, &ca_pem).await;
        send.write_all(&encode_frame(1, &get).unwrap())
            .await
            .unwrap();
        let (_, m) = read_answer(&mut recv).await.unwrap();
        assert_eq!(refused_code(&m), "bad_request");

        // A truncated frame: the header promises more than comes before the stream ends.
        let (_ep, mut send, mut recv) = raw_lane(node.quic, &ca_pem).await;
        send.write_all(&hello()).await.unwrap();
        read_answer(&mut recv).await.unwrap();
        let frame = encode_frame(5, &get).unwrap();
        send.write_all(&frame[..frame.len() - 3]).await.unwrap();
        send.finish().unwrap();
        let (id, m) = read_answer(&mut recv)
            .await
            .expect("an answer to a truncated frame");
        assert_eq!((id, refused_code(&m)), (5, "bad_request"));

        // A flood of streams on one connection, each sending garbage and going away.
        let ep = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
        let cfg = chorus::client::quic_config(&ca_pem).unwrap();
        let conn = ep
            .connect_with(cfg, node.quic, "chorus-node")
            .unwrap()
            .await
            .unwrap();
        for i in 0..300u32 {
            let Ok(Ok((mut s, r))) =
                tokio::time::timeout(Duration::from_secs(5), conn.open_bi()).await
            else {
                panic!("stream {i} could not open");
            };
            let _ = s.write_all(b"\xde\xad\xbe\xef garbage").await;
            let _ = s.finish();
            drop(r);
        }
        conn.close(0u32.into(), b"done");
    });
    // Still serving, on both protocols.
    rt.block_on(async {
        client.put("after", "ok", None).await.unwrap();
        assert_eq!(
            http_ok.get("after").await.unwrap().value,
            Value::One(b"ok".to_vec())
        );
    });
    let log = node.log();
    for line in [
        "refused a QUIC client lane with no client token",
        "refused a QUIC client lane with a wrong client token",
        "refused an HTTP request with no client token",
        "refusing a malformed client request",
        "refusing a client frame; ending the lane",
        "refusing a client frame; skipping it",
        "client lane did not start with a hello",
        "client frame cut short",
    ] {
        assert!(log.contains(line), "no {line:?} in the log:\n{log}");
    }
}
