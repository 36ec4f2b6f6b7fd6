//! Connection limits against real `chorus start` processes on 127.0.0.1: idle and slow HTTP
//! connections under a 1,024 open-file limit, a QUIC client-connection flood, and a flood of
//! bad frames that must not flood the log.
//!
//! Attackers connect from other loopback addresses (127.0.0.2 and up: Linux routes all of
//! 127.0.0.0/8 to the loopback interface) so that the per-address caps and fair shedding can
//! be told apart from the legitimate clients on 127.0.0.1.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chorus::client::{Client, Config, Protocol};
use chorus::protocol::client::{
    encode_frame, ClientMessage, FrameHeader, ServerMessage, FRAME_HEADER_BYTES,
};
use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// Starts a node like [`NodeProc::start_with`], but under `prlimit --nofile=N:N`. `None` when
/// `prlimit` is not installed.
fn start_limited(root: &Path, ca: &Path, nofile: u64, extra: &[&str]) -> Option<NodeProc> {
    let prlimit = ["/usr/bin/prlimit", "/bin/prlimit"]
        .into_iter()
        .find(|p| Path::new(p).exists())?;
    let name = "limited";
    let data_dir = root.join(name);
    let tls_dir = data_dir.join("tls");
    issue_cert(ca, name, &tls_dir);
    let (quic, http) = free_ports();
    let mut node = NodeProc {
        name: name.into(),
        data_dir,
        tls_dir,
        quic,
        http,
        join: vec![],
        extra: extra.iter().map(|s| s.to_string()).collect(),
        operator: false,
        child: None,
    };
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(node.log_path())
        .unwrap();
    let mut cmd = std::process::Command::new(prlimit);
    // prlimit sets the limit on itself and executes the node: the pid is the node's.
    cmd.arg(format!("--nofile={nofile}:{nofile}"))
        .arg(env!("CARGO_BIN_EXE_chorus"))
        .arg("start")
        .arg("--data-dir")
        .arg(&node.data_dir)
        .args(["--listen", &quic.to_string(), "--http", &http.to_string()])
        .arg("--tls-dir")
        .arg(&node.tls_dir)
        .args(&node.extra)
        .env("RUST_LOG", "info,chorus=debug")
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log);
    node.child = Some(cmd.spawn().unwrap());
    Some(node)
}

fn agent(timeout: Duration) -> ureq::Agent {
    ureq::Agent::config_builder()
        .timeout_global(Some(timeout))
        .http_status_as_error(false)
        .build()
        .into()
}

/// One request on a fresh connection: its status, or why there was none.
fn fresh_request(method: &str, url: &str, body: &[u8]) -> Result<u16, String> {
    let a = agent(Duration::from_secs(5));
    let resp = match method {
        "PUT" => a.put(url).send(body),
        _ => a.get(url).call(),
    };
    resp.map(|r| r.status().as_u16()).map_err(|e| e.to_string())
}

/// Raises this process's open-file soft limit to `want` (the attack needs thousands of
/// sockets); false when the hard limit is lower.
fn raise_own_nofile(want: u64) -> bool {
    let (soft, hard) = rlimit::Resource::NOFILE.get().unwrap();
    if soft >= want {
        return true;
    }
    hard >= want && rlimit::Resource::NOFILE.set(want, hard).is_ok()
}

/// A TCP connection to `to` from the loopback address `from`.
async fn connect_from(from: [u8; 4], to: SocketAddr) -> std::io::Result<tokio::net::TcpStream> {
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.bind(SocketAddr::from((from, 0)))?;
    socket.connect(to).await
}

/// Reads until the server closes the connection (end of stream or an error); how long after
/// `since` that happened, or `None` if it did not by `until`.
async fn closed_by_server(
    mut read: impl AsyncReadExt + Unpin,
    since: Instant,
    until: tokio::time::Instant,
) -> Option<Duration> {
    let mut buf = [0u8; 1024];
    loop {
        match tokio::time::timeout_at(until, read.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return Some(since.elapsed()),
            Ok(Ok(_)) => continue,
            Err(_) => return None,
        }
    }
}

/// The value of a counter (summed over its labels) in a Prometheus text page.
fn counter(page: &str, name: &str) -> f64 {
    page.lines()
        .filter(|l| l.starts_with(name) && !l.starts_with('#'))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Issue 22, item 3: 2,000 idle TCP connections and a slowloris of 200 connections sending
/// one byte a second, against a node with a 1,024 descriptor limit, while a writer keeps
/// writing on fresh connections: every write is acknowledged and readable afterwards,
/// `/health` answers throughout, and the server closes every idle or slow connection within
/// its timeouts.
#[test]
fn idle_and_slow_connections_cannot_exhaust_a_node() {
    if !raise_own_nofile(4096) {
        eprintln!("SKIPPED: this test needs an open-file limit of 4,096 for its own sockets");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let ca = make_ca(tmp.path(), "ca");
    const HEADER_S: u64 = 3;
    const BODY_S: u64 = 3;
    let Some(mut node) = start_limited(
        tmp.path(),
        &ca,
        1024,
        &[
            "--http-header-timeout",
            &HEADER_S.to_string(),
            "--http-body-timeout",
            &BODY_S.to_string(),
            // Each attacking address opens more than its share; together they open more than
            // the node holds (1,024 descriptors leave 640 for HTTP).
            "--http-connections-per-address-max",
            "64",
        ],
    ) else {
        eprintln!("SKIPPED: prlimit is not installed (util-linux)");
        return;
    };
    node.wait_serving();
    let http = node.http;
    let log = node.log();
    assert!(
        log.contains("open-file limit"),
        "no figures at start:\n{log}"
    );

    // The writer and the health checker: fresh connections from 127.0.0.1 throughout.
    let stop = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(Mutex::new(Vec::<String>::new()));
    let failures = Arc::new(Mutex::new(Vec::<String>::new()));
    let writer = {
        let (stop, acked, failures) = (stop.clone(), acked.clone(), failures.clone());
        std::thread::spawn(move || {
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) && i < 5_000 {
                let key = format!("w{i}");
                let url = format!("http://{http}/v1/kv/{key}");
                match fresh_request("PUT", &url, key.as_bytes()) {
                    Ok(s) if (200..300).contains(&s) => acked.lock().unwrap().push(key),
                    other => failures
                        .lock()
                        .unwrap()
                        .push(format!("PUT {key}: {other:?}")),
                }
                i += 1;
                std::thread::sleep(Duration::from_millis(20));
            }
        })
    };
    let health = {
        let (stop, failures) = (stop.clone(), failures.clone());
        std::thread::spawn(move || {
            let mut n = 0u32;
            while !stop.load(Ordering::Relaxed) && n < 1_000 {
                match fresh_request("GET", &format!("http://{http}/health"), b"") {
                    Ok(200) => {}
                    other => failures.lock().unwrap().push(format!("/health: {other:?}")),
                }
                n += 1;
                std::thread::sleep(Duration::from_millis(200));
            }
        })
    };

    let rt = runtime();
    let (idle, slow, trickle, connect_errors) = rt.block_on(async move {
        let start = tokio::time::Instant::now();
        let until = start + Duration::from_secs(25);
        let mut connect_errors = 0u32;
        // 2,000 idle connections from 20 addresses (127.0.0.10 to .29), 100 from each in turn.
        let mut idle = Vec::new();
        for i in 0..2000u32 {
            let from = [127, 0, 0, 10 + (i / 100) as u8];
            match connect_from(from, http).await {
                Ok(s) => {
                    let since = Instant::now();
                    idle.push(tokio::spawn(closed_by_server(s, since, until)));
                }
                Err(_) => connect_errors += 1,
            }
        }
        // A slowloris: 200 connections from 127.0.0.5 sending a header one byte a second.
        let mut slow = Vec::new();
        for _ in 0..200 {
            let Ok(s) = connect_from([127, 0, 0, 5], http).await else {
                connect_errors += 1;
                continue;
            };
            let since = Instant::now();
            let (r, mut w) = s.into_split();
            slow.push(tokio::spawn(async move {
                let writing = async move {
                    let _ = w
                        .write_all(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
                        .await;
                    for _ in 0..15 {
                        if w.write_all(b"a").await.is_err() {
                            break;
                        }
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                    std::future::pending::<()>().await;
                };
                tokio::select! {
                    closed = closed_by_server(r, since, until) => closed,
                    _ = writing => None,
                }
            }));
        }
        // A request body declared at 10^14 bytes and trickled, from 127.0.0.6.
        let mut trickle = Vec::new();
        for i in 0..10 {
            let Ok(s) = connect_from([127, 0, 0, 6], http).await else {
                connect_errors += 1;
                continue;
            };
            let since = Instant::now();
            let (r, mut w) = s.into_split();
            trickle.push(tokio::spawn(async move {
                let writing = async move {
                    let head = format!(
                        "PUT /v1/kv/trickle{i} HTTP/1.1\r\nHost: 127.0.0.1\r\n\
                         Content-Length: 100000000000000\r\n\r\n"
                    );
                    let _ = w.write_all(head.as_bytes()).await;
                    for _ in 0..15 {
                        if w.write_all(b"b").await.is_err() {
                            break;
                        }
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                    std::future::pending::<()>().await;
                };
                tokio::select! {
                    closed = closed_by_server(r, since, until) => closed,
                    _ = writing => None,
                }
            }));
        }
        let mut out = (Vec::new(), Vec::new(), Vec::new(), connect_errors);
        for t in idle {
            out.0.push(t.await.unwrap());
        }
        for t in slow {
            out.1.push(t.await.unwrap());
        }
        for t in trickle {
            out.2.push(t.await.unwrap());
        }
        out
    });
    // A little more writing after the attack, then stop.
    std::thread::sleep(Duration::from_secs(1));
    stop.store(true, Ordering::Relaxed);
    writer.join().unwrap();
    health.join().unwrap();

    assert!(
        node.child.as_mut().unwrap().try_wait().unwrap().is_none(),
        "the node stopped:\n{}",
        node.log()
    );
    let failures = failures.lock().unwrap().clone();
    assert!(
        failures.is_empty(),
        "{} requests of the writer or /health failed, e.g. {:?}\n{}",
        failures.len(),
        &failures[..failures.len().min(5)],
        node.log()
            .lines()
            .rev()
            .take(40)
            .collect::<Vec<_>>()
            .join("\n")
    );
    let acked = acked.lock().unwrap().clone();
    assert!(acked.len() > 100, "only {} writes", acked.len());
    for key in &acked {
        let a = get(http, key, "");
        assert_eq!(
            (a.status, a.body.as_slice()),
            (200, key.as_bytes()),
            "{key}"
        );
    }
    // Every idle or slow connection was closed by the server within its timeout (with slack
    // for a loaded machine), or refused at once.
    let slack = Duration::from_secs(6);
    for (what, closed, limit) in [
        ("idle", &idle, HEADER_S),
        ("slowloris", &slow, HEADER_S),
        ("trickled body", &trickle, BODY_S),
    ] {
        let open = closed.iter().filter(|c| c.is_none()).count();
        let late = closed
            .iter()
            .flatten()
            .filter(|d| **d > Duration::from_secs(limit) + slack)
            .count();
        assert_eq!(
            (open, late),
            (0, 0),
            "{what}: {open} of {} never closed, {late} closed late",
            closed.len()
        );
    }
    eprintln!(
        "{} idle, {} slow, {} trickling connections closed; {connect_errors} connects failed; \
         {} writes acknowledged",
        idle.len(),
        slow.len(),
        trickle.len(),
        acked.len()
    );
    let page = fresh_metrics(http);
    let figures: Vec<&str> = page
        .lines()
        .filter(|l| l.starts_with("chorus_http_connections"))
        .collect();
    eprintln!("{}", figures.join("\n"));
    for (name, what) in [
        (
            "chorus_http_connections_refused_total{reason=\"per_address\"}",
            "connections refused per address",
        ),
        (
            "chorus_http_connections_refused_total{reason=\"full\"}",
            "connections refused for a full node",
        ),
        (
            "chorus_http_connections_timed_out_total{phase=\"header\"}",
            "header timeouts",
        ),
        (
            "chorus_http_connections_timed_out_total{phase=\"body\"}",
            "body timeouts",
        ),
        ("chorus_http_connections_evicted_total", "evictions"),
    ] {
        assert!(counter(&page, name) > 0.0, "no {what} counted:\n{page}");
    }
}

fn fresh_metrics(http: SocketAddr) -> String {
    agent(Duration::from_secs(5))
        .get(format!("http://{http}/metrics"))
        .call()
        .unwrap()
        .body_mut()
        .read_to_string()
        .unwrap()
}

/// A raw QUIC client connection from `from` with one lane that said hello; `None` when the
/// node refused or closed it.
async fn raw_client(
    ep: &quinn::Endpoint,
    cfg: quinn::ClientConfig,
    to: SocketAddr,
) -> Option<quinn::Connection> {
    let conn = tokio::time::timeout(
        Duration::from_secs(5),
        ep.connect_with(cfg, to, "chorus-node").ok()?,
    )
    .await
    .ok()?
    .ok()?;
    let (mut send, mut recv) = tokio::time::timeout(Duration::from_secs(5), conn.open_bi())
        .await
        .ok()?
        .ok()?;
    let hello = encode_frame(0, &ClientMessage::Hello { token: None }).unwrap();
    send.write_all(&hello).await.ok()?;
    match read_answer(&mut recv).await? {
        (_, ServerMessage::Ready) => {}
        _ => return None,
    }
    // Keep the lane open: it is dropped with the connection.
    std::mem::forget((send, recv));
    Some(conn)
}

async fn read_answer(recv: &mut quinn::RecvStream) -> Option<(u64, ServerMessage)> {
    let mut header = [0u8; FRAME_HEADER_BYTES];
    tokio::time::timeout(Duration::from_secs(10), recv.read_exact(&mut header))
        .await
        .ok()?
        .ok()?;
    let h = FrameHeader::parse(&header, 1 << 26).ok()?;
    let mut body = vec![0u8; h.body_len];
    recv.read_exact(&mut body).await.ok()?;
    Some((
        h.id,
        chorus::protocol::client::decode_body(&body, 1 << 26).ok()?,
    ))
}

fn quic_client(node: &NodeProc, ca: &Path) -> Config {
    let mut c = Config::new([node.http.to_string()]);
    c.protocol = Protocol::Quic;
    c.ca_pem = Some(std::fs::read_to_string(ca.join("ca.pem")).unwrap());
    c
}

/// Issue 22, item 3: 1,100 QUIC client connections from one address (more than the 1,024
/// client slots) used to hold every slot for good. The per-address cap refuses all but a few,
/// a client on another address still works, and the connections held are closed once idle.
#[test]
fn a_quic_client_flood_is_capped_per_address_and_idle_connections_close() {
    let tmp = tempfile::tempdir().unwrap();
    let ca = make_ca(tmp.path(), "ca");
    const PER_ADDRESS: usize = 16;
    // Longer than the flood takes on a loaded machine, so that none of its connections is
    // closed as idle (giving its place to another) while it runs.
    const IDLE_S: u64 = 10;
    let node = NodeProc::start_with(
        tmp.path(),
        "n0",
        &ca,
        &[],
        &[
            "--quic-clients-per-address-max",
            &PER_ADDRESS.to_string(),
            "--quic-client-idle-timeout",
            &IDLE_S.to_string(),
        ],
    );
    node.wait_serving();
    let ca_pem = std::fs::read_to_string(ca.join("ca.pem")).unwrap();
    let rt = runtime();
    let quic = node.quic;
    let held = rt.block_on(async {
        let ep = quinn::Endpoint::client("127.0.0.2:0".parse().unwrap()).unwrap();
        let cfg = chorus::client::quic_config(&ca_pem).unwrap();
        let mut held = Vec::new();
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..1100 {
            while tasks.len() >= 64 {
                if let Some(Ok(Some(c))) = tasks.join_next().await {
                    held.push(c);
                }
            }
            let (ep, cfg) = (ep.clone(), cfg.clone());
            tasks.spawn(async move { raw_client(&ep, cfg, quic).await });
        }
        while let Some(r) = tasks.join_next().await {
            if let Ok(Some(c)) = r {
                held.push(c);
            }
        }
        (ep, held)
    });
    let (ep, held) = held;
    // Connections the node closed as idle while the flood ran do not count.
    let held: Vec<quinn::Connection> = held
        .into_iter()
        .filter(|c| c.close_reason().is_none())
        .collect();
    eprintln!("the flood holds {} of 1,100 connections", held.len());
    // The cap, as the client sees it. (Some runs end with none of the 16 admitted connections
    // open on the client's side although the node logged them connected; the cause is not
    // found yet, so the node's own count of refusals, below, is what proves the cap.)
    assert!(
        held.len() <= PER_ADDRESS,
        "the flood holds {} connections (cap {PER_ADDRESS})",
        held.len()
    );
    // A client on 127.0.0.1 still works.
    rt.block_on(async {
        let client = Client::connect(quic_client(&node, &ca)).await.unwrap();
        client.put("legit", "yes", None).await.unwrap();
        let read = client.get("legit").await.unwrap();
        assert_eq!(read.value, chorus::client::Value::One(b"yes".to_vec()));
    });
    // The flood's connections are closed once idle.
    rt.block_on(async {
        let since = Instant::now();
        for c in &held {
            let closed = tokio::time::timeout(Duration::from_secs(IDLE_S + 10), c.closed()).await;
            assert!(closed.is_ok(), "a held connection was not closed when idle");
        }
        let took = since.elapsed();
        assert!(took < Duration::from_secs(IDLE_S + 10), "{took:?}");
        drop(ep);
    });
    let page = fresh_metrics(node.http);
    assert!(
        counter(&page, "chorus_quic_connections_refused_total") >= (1100 - PER_ADDRESS) as f64,
        "refusals not counted:\n{page}"
    );
}

/// Issue 22, item 3 (from the review): connections that never say hello used to hold ordinary
/// client slots for the whole hello timeout (30 s), so a few hundred of them from a handful of
/// addresses (under the per-address cap each) locked every real client out. Now at most
/// `--quic-clients-unverified-max` wait for their hello at once; each newer one closes the
/// oldest waiting, and a real client, which says hello at once, gets in.
#[test]
fn connections_that_never_say_hello_cannot_lock_clients_out() {
    let tmp = tempfile::tempdir().unwrap();
    let ca = make_ca(tmp.path(), "ca");
    const SLOTS: usize = 128;
    const UNVERIFIED: usize = 32;
    // Set CHORUS_TEST_UNVERIFIED_MAX=100000 to see the lock-out this test guards against.
    let unverified = std::env::var("CHORUS_TEST_UNVERIFIED_MAX")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
        .unwrap_or(UNVERIFIED);
    let node = NodeProc::start_with(
        tmp.path(),
        "n0",
        &ca,
        &[],
        &[
            "--quic-clients-max",
            &SLOTS.to_string(),
            "--quic-clients-unverified-max",
            &unverified.to_string(),
        ],
    );
    node.wait_serving();
    let ca_pem = std::fs::read_to_string(ca.join("ca.pem")).unwrap();
    let rt = runtime();
    let quic = node.quic;
    // 4 addresses × 48 silent connections: more than the node's 128 client slots, under the
    // per-address cap (64) each.
    let (endpoints, silent) = rt.block_on(async {
        let cfg = chorus::client::quic_config(&ca_pem).unwrap();
        let mut endpoints = Vec::new();
        let mut silent = Vec::new();
        for a in 2..6u8 {
            let ep = quinn::Endpoint::client(SocketAddr::from(([127, 0, 0, a], 0))).unwrap();
            for _ in 0..48 {
                let connecting = ep.connect_with(cfg.clone(), quic, "chorus-node").unwrap();
                if let Ok(Ok(c)) = tokio::time::timeout(Duration::from_secs(5), connecting).await {
                    silent.push(c);
                }
            }
            endpoints.push(ep);
        }
        (endpoints, silent)
    });
    assert!(
        silent.len() >= SLOTS,
        "the handshakes of {} silent connections completed",
        silent.len()
    );
    // Well within the silent connections' 30 s hello timeout, a real client gets in.
    rt.block_on(async {
        let client = tokio::time::timeout(
            Duration::from_secs(10),
            Client::connect(quic_client(&node, &ca)),
        )
        .await
        .expect("connects in time")
        .expect("connects");
        client.put("legit", "yes", None).await.unwrap();
        let read = client.get("legit").await.unwrap();
        assert_eq!(read.value, chorus::client::Value::One(b"yes".to_vec()));
    });
    // At most the budget of silent connections is still open; the rest were closed for it.
    rt.block_on(async { tokio::time::sleep(Duration::from_millis(500)).await });
    let open = silent.iter().filter(|c| c.close_reason().is_none()).count();
    assert!(open <= UNVERIFIED, "{open} silent connections still open");
    let page = fresh_metrics(node.http);
    assert!(
        counter(&page, "chorus_quic_connections_evicted_before_hello_total")
            >= (silent.len() - UNVERIFIED) as f64,
        "evictions not counted:\n{page}"
    );
    drop((silent, endpoints));
}

/// Issue 22, item 5: 2,000 malformed frames on one lane used to write 2,000 warnings. The
/// refusal lines are rate-limited, and say how many were suppressed.
#[test]
fn a_flood_of_bad_frames_writes_a_bounded_number_of_log_lines() {
    let tmp = tempfile::tempdir().unwrap();
    let ca = make_ca(tmp.path(), "ca");
    let node = NodeProc::start(tmp.path(), "n0", &ca, &[]);
    node.wait_serving();
    let ca_pem = std::fs::read_to_string(ca.join("ca.pem")).unwrap();
    let rt = runtime();
    let quic = node.quic;
    let refused = rt.block_on(async {
        let ep = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
        let cfg = chorus::client::quic_config(&ca_pem).unwrap();
        let conn = ep
            .connect_with(cfg, quic, "chorus-node")
            .unwrap()
            .await
            .unwrap();
        let (mut send, mut recv) = conn.open_bi().await.unwrap();
        let hello = encode_frame(0, &ClientMessage::Hello { token: None }).unwrap();
        send.write_all(&hello).await.unwrap();
        assert!(matches!(
            read_answer(&mut recv).await,
            Some((_, ServerMessage::Ready))
        ));
        // A frame whose body is not a message: refused, and the lane goes on.
        let reader = tokio::spawn(async move {
            let mut n = 0;
            while n < 2000 {
                match read_answer(&mut recv).await {
                    Some((_, ServerMessage::Refused(_))) => n += 1,
                    other => {
                        eprintln!("after {n} refusals: {other:?}");
                        break;
                    }
                }
            }
            n
        });
        let mut bad = Vec::new();
        for id in 1..=2000u64 {
            // A well-framed envelope whose MessagePack is garbage (0xc1 is never valid).
            let mut frame = encode_frame(id, &ClientMessage::Cluster).unwrap();
            for b in &mut frame[FRAME_HEADER_BYTES + 3..] {
                *b = 0xc1;
            }
            bad.extend_from_slice(&frame);
        }
        send.write_all(&bad).await.unwrap();
        let refused = reader.await.unwrap();
        conn.close(0u32.into(), b"done");
        refused
    });
    // Let the log catch up.
    let log = node.log();
    assert_eq!(refused, 2000, "{log}");
    std::thread::sleep(Duration::from_millis(500));
    let log = node.log();
    let lines: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("refusing a malformed client request"))
        .collect();
    eprintln!("{} refusal lines for 2,000 bad frames", lines.len());
    assert!(!lines.is_empty(), "no refusal logged:\n{log}");
    assert!(
        lines.len() <= 50,
        "{} refusal lines for 2,000 bad frames",
        lines.len()
    );
    let page = fresh_metrics(node.http);
    let suppressed = counter(
        &page,
        "chorus_log_lines_suppressed_total{category=\"client_frames\"}",
    );
    assert!(
        suppressed >= 1900.0,
        "{suppressed} lines counted as suppressed"
    );
    // The node still serves.
    let a = put(node.http, "after", b"ok", None, "");
    assert!((200..300).contains(&a.status), "{a:?}");
}

/// Issue 22, item 5: `GET /v1/partitions?bytes=true` reads every key; sixteen of them at once
/// used to run sixteen scans of the store. At most two run at once; the others get 503 `busy`
/// at once.
#[test]
fn partition_sizing_is_limited_in_concurrency() {
    let tmp = tempfile::tempdir().unwrap();
    let ca = make_ca(tmp.path(), "ca");
    let node = NodeProc::start(tmp.path(), "n0", &ca, &[]);
    node.wait_serving();
    let http = node.http;
    for i in 0..200 {
        let a = put(http, &format!("k{i}"), &[7u8; 512], None, "");
        assert!((200..300).contains(&a.status), "{a:?}");
    }
    let mut busy = 0;
    for _round in 0..10 {
        let barrier = Arc::new(std::sync::Barrier::new(16));
        let answers: Vec<(u16, String)> = (0..16)
            .map(|_| {
                let barrier = barrier.clone();
                std::thread::spawn(move || {
                    barrier.wait();
                    let mut resp = agent(Duration::from_secs(20))
                        .get(format!("http://{http}/v1/partitions?bytes=true"))
                        .call()
                        .unwrap();
                    let status = resp.status().as_u16();
                    (status, resp.body_mut().read_to_string().unwrap_or_default())
                })
            })
            .collect::<Vec<_>>()
            .into_iter()
            .map(|t| t.join().unwrap())
            .collect();
        for (status, body) in &answers {
            match status {
                200 => {}
                503 => {
                    assert!(body.contains("\"busy\""), "{body}");
                    busy += 1;
                }
                other => panic!("{other}: {body}"),
            }
        }
        assert!(answers.iter().any(|(s, _)| *s == 200), "none served");
        if busy > 0 {
            break;
        }
    }
    assert!(busy > 0, "sixteen sizings at once were never refused");
    let page = fresh_metrics(http);
    assert!(counter(&page, "chorus_requests_busy_total") >= busy as f64);
}

/// Issue 22, item 3: one client connection cannot take the node's whole in-flight budget. With
/// a replica stopped, writes at `w=2` wait for their timeout; one connection sends 40 of them,
/// but the node takes at most `--quic-connection-in-flight-max` (8) from it at once, and another
/// connection is still served at once.
#[test]
fn one_quic_connection_cannot_take_the_whole_in_flight_budget() {
    use chorus::node::{ClientOp, ClientRequest, RequestOptions};
    let tmp = tempfile::tempdir().unwrap();
    const CAP: u64 = 8;
    let (nodes, _ids) =
        start_cluster_with(tmp.path(), 2, &["--quic-connection-in-flight-max", "8"]);
    let ca_pem = std::fs::read_to_string(tmp.path().join("ca").join("ca.pem")).unwrap();
    nodes[1].signal("-STOP");
    let http = nodes[0].http;
    let rt = runtime();
    let quic = nodes[0].quic;
    let seen = rt.block_on(async {
        let ep = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
        let cfg = chorus::client::quic_config(&ca_pem).unwrap();
        let conn = ep
            .connect_with(cfg.clone(), quic, "chorus-node")
            .unwrap()
            .await
            .unwrap();
        let mut lanes = Vec::new();
        for _ in 0..4 {
            let (mut send, mut recv) = conn.open_bi().await.unwrap();
            let hello = encode_frame(0, &ClientMessage::Hello { token: None }).unwrap();
            send.write_all(&hello).await.unwrap();
            assert!(matches!(
                read_answer(&mut recv).await,
                Some((_, ServerMessage::Ready))
            ));
            lanes.push((send, recv));
        }
        for i in 0..40u64 {
            let put = ClientMessage::Request(ClientRequest {
                key: format!("slow{i}").into_bytes(),
                op: ClientOp::Put {
                    value: b"v".to_vec(),
                    context: None,
                },
                options: RequestOptions {
                    w: Some(2),
                    timeout_ms: Some(6000),
                    ..RequestOptions::default()
                },
            });
            let lane = &mut lanes[(i % 4) as usize].0;
            lane.write_all(&encode_frame(i + 1, &put).unwrap())
                .await
                .unwrap();
        }
        tokio::time::sleep(Duration::from_millis(1500)).await;
        // Another connection is served at once.
        let other = ep
            .connect_with(cfg, quic, "chorus-node")
            .unwrap()
            .await
            .unwrap();
        let (mut send, mut recv) = other.open_bi().await.unwrap();
        let hello = encode_frame(0, &ClientMessage::Hello { token: None }).unwrap();
        send.write_all(&hello).await.unwrap();
        assert!(matches!(
            read_answer(&mut recv).await,
            Some((_, ServerMessage::Ready))
        ));
        let get = ClientMessage::Request(ClientRequest {
            key: b"other".to_vec(),
            op: ClientOp::Get,
            options: RequestOptions {
                r: Some(1),
                ..RequestOptions::default()
            },
        });
        let asked = Instant::now();
        send.write_all(&encode_frame(1, &get).unwrap())
            .await
            .unwrap();
        let answer = read_answer(&mut recv).await;
        assert!(
            matches!(answer, Some((1, ServerMessage::Reply(_)))),
            "{answer:?}"
        );
        assert!(
            asked.elapsed() < Duration::from_secs(2),
            "{:?}",
            asked.elapsed()
        );
        let seen = tokio::task::spawn_blocking(move || {
            chorus::runtime::dev::fetch_cluster(http, Duration::from_secs(2))
                .ok()
                .and_then(|v| v.data)
                .map(|d| d.requests_in_flight)
        })
        .await
        .unwrap();
        drop(lanes);
        seen
    });
    nodes[1].signal("-CONT");
    eprintln!("requests in flight on the node: {seen:?} (cap {CAP} per connection)");
    let seen = seen.expect("the node's figures");
    assert!((1..=CAP).contains(&(seen as u64)), "{seen} in flight");
}

/// Review of issue 22 (a hostile peer's view): the node takes at most 128 QUIC handshakes in
/// progress at once, shared by peers and clients, each held for the 3 s connect timeout. A
/// sender that never sees an answer (spoofed source addresses) filled them with one Initial
/// packet each, about 43 a second, and every new client and peer was refused. Now, past a
/// quarter of the budget, a sender must first prove its address (a QUIC Retry): Initials that
/// never answer hold at most that quarter, and real clients get in.
#[test]
fn initials_from_senders_that_never_answer_cannot_fill_the_handshake_budget() {
    let tmp = tempfile::tempdir().unwrap();
    let ca = make_ca(tmp.path(), "ca");
    let node = NodeProc::start(tmp.path(), "n0", &ca, &[]);
    node.wait_serving();
    let ca_pem = std::fs::read_to_string(ca.join("ca.pem")).unwrap();
    let cfg = chorus::client::quic_config(&ca_pem).unwrap();
    let quic = node.quic;
    // 240 Initials from 120 addresses, sent from sockets that never read an answer: the
    // first flight of a handshake and nothing more, as from a spoofed address.
    let mut proto = quinn_proto::Endpoint::new(
        Arc::new(quinn_proto::EndpointConfig::default()),
        None,
        true,
        None,
    );
    let mut sockets = Vec::new();
    let mut buf = Vec::new();
    for i in 0..240usize {
        let from = std::net::Ipv4Addr::new(127, 0, 1, 2 + (i % 120) as u8);
        let sock = std::net::UdpSocket::bind((from, 0)).unwrap();
        let now = std::time::Instant::now();
        let (_, mut conn) = proto
            .connect(now, cfg.clone(), quic, "chorus-node")
            .unwrap();
        buf.clear();
        let t = conn.poll_transmit(now, 1, &mut buf).expect("an Initial");
        sock.send_to(&buf[..t.size], quic).unwrap();
        sockets.push(sock);
    }
    // Within the 3 s those handshakes would hold their places, a real client connects.
    let rt = runtime();
    rt.block_on(async {
        let client = tokio::time::timeout(
            Duration::from_secs(2),
            Client::connect(quic_client(&node, &ca)),
        )
        .await
        .expect("connects in time")
        .expect("connects");
        client.put("through", "yes", None).await.unwrap();
    });
    drop(sockets);
}
