//! The HTTP API over HTTPS (`chorus start --http-tls-dir`), with real `chorus` processes on
//! 127.0.0.1: a token-protected cluster serving its node certificates answers the CLI and the
//! Rust client given the CA, and refuses plain HTTP, untrusted CAs, hosts the certificate does
//! not name and requests without the token; TLS handshakes count against the connection caps
//! and are timed out.

mod common;

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::Arc;
use std::time::Duration;

use chorus::client::{BreakerState, Client, Config, ErrorKind, Value};
use common::*;

/// The client token of these tests' nodes.
const CLIENT_TOKEN: &str = "test-client-token-https-0123456789abcdef01";

fn write_secret(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
}

/// Starts a node that serves HTTPS with its own node certificate (issued with
/// `--san 127.0.0.1`), requires [`CLIENT_TOKEN`] and has the operator token.
fn start_https(
    root: &Path,
    name: &str,
    ca: &Path,
    join: &[SocketAddr],
    extra: &[&str],
) -> NodeProc {
    let data_dir = root.join(name);
    let tls_dir = data_dir.join("tls");
    issue_cert_with(ca, name, &tls_dir, &["--san", "127.0.0.1"]);
    let token = root.join(format!("{name}-client.token"));
    write_secret(&token, CLIENT_TOKEN);
    let (quic, http) = free_ports();
    let mut args = vec![
        "--http-tls-dir".to_owned(),
        tls_dir.display().to_string(),
        "--client-token-file".to_owned(),
        token.display().to_string(),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    let mut node = NodeProc {
        name: name.to_owned(),
        data_dir,
        tls_dir,
        quic,
        http,
        join: join.to_vec(),
        extra: args,
        operator: true,
        child: None,
    };
    node.spawn();
    node
}

/// A ureq agent that trusts only the CA certificate in `ca_pem` (a file).
fn tls_agent(ca_pem: &Path) -> ureq::Agent {
    let pem = std::fs::read_to_string(ca_pem).unwrap();
    let roots: Vec<ureq::tls::Certificate<'static>> = chorus::client::https::ca_certs(&pem)
        .unwrap()
        .iter()
        .map(|c| ureq::tls::Certificate::from_der(c.as_ref()).to_owned())
        .collect();
    ureq::Agent::config_builder()
        .timeout_global(Some(Duration::from_secs(20)))
        .http_status_as_error(false)
        .tls_config(
            ureq::tls::TlsConfig::builder()
                .provider(ureq::tls::TlsProvider::Rustls)
                .root_certs(ureq::tls::RootCerts::new_with_certs(&roots))
                .unversioned_rustls_crypto_provider(Arc::new(
                    rustls::crypto::ring::default_provider(),
                ))
                .build(),
        )
        .build()
        .into()
}

/// `GET https://{http}{path}` with the client token: status and body.
fn get_https(agent: &ureq::Agent, http: SocketAddr, path: &str) -> Option<(u16, String)> {
    let mut resp = agent
        .get(format!("https://{http}{path}"))
        .header("authorization", format!("Bearer {CLIENT_TOKEN}"))
        .call()
        .ok()?;
    let status = resp.status().as_u16();
    Some((status, resp.body_mut().read_to_string().unwrap_or_default()))
}

/// The node's `GET /v1/cluster` over HTTPS once it lists `members` alive members.
fn wait_https_members(agent: &ureq::Agent, node: &NodeProc, members: usize) -> serde_json::Value {
    wait_for(Duration::from_secs(60), || {
        let (status, body) = get_https(agent, node.http, "/v1/cluster")?;
        let view: serde_json::Value = serde_json::from_str(&body).ok()?;
        let alive = view["members"]
            .as_array()?
            .iter()
            .filter(|m| m["liveness"] == "alive" && m["status"] == "member")
            .count();
        // Formed means serving: every partition caught up (see `wait_members`).
        let caught_up = view["data"]["partitions_catching_up"]
            .as_u64()
            .is_none_or(|n| n == 0);
        (status == 200 && alive == members && caught_up).then_some(view)
    })
    .unwrap_or_else(|| {
        panic!(
            "{} never listed {members} members over HTTPS:\n{}",
            node.name,
            node.log()
        )
    })
}

/// Runs the CLI with `args`, `CHORUS_TOKEN` set to `token` (or unset).
fn cli(args: &[&str], token: Option<&str>) -> Output {
    let mut cmd = chorus();
    cmd.args(args).env_remove("CHORUS_TOKEN");
    if let Some(t) = token {
        cmd.env("CHORUS_TOKEN", t);
    }
    cmd.output().unwrap()
}

fn text(out: &Output) -> String {
    format!(
        "status {:?}\nstdout: {}\nstderr: {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn client_config(url: String, ca_pem: &Path, token: Option<&str>) -> Config {
    let mut config = Config::new([url]);
    config.ca_pem = Some(std::fs::read_to_string(ca_pem).unwrap());
    config.token = token.map(str::to_owned);
    config
}

#[test]
fn an_https_cluster_answers_the_cli_and_the_client_with_the_ca_and_the_token_only() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let ca = make_ca(root, "ca");
    let ca_pem: PathBuf = ca.join("ca.pem");
    let a = start_https(root, "a", &ca, &[], &[]);
    let b = start_https(root, "b", &ca, &[a.quic], &[]);
    let agent = tls_agent(&ca_pem);
    let view = wait_https_members(&agent, &a, 2);
    wait_https_members(&agent, &b, 2);
    // The node says it serves HTTPS, and logged so at start.
    assert_eq!(view["http_scheme"], "https", "{view}");
    assert!(
        a.log().contains("the HTTP API serves HTTPS only"),
        "{}",
        a.log()
    );
    let url_a = format!("https://{}", a.http);
    let url_b = format!("https://{}", b.http);
    let ca_arg = ca_pem.to_str().unwrap();
    let token_file = root.join("a-client.token");
    let token_arg = token_file.to_str().unwrap();

    // `chorus status` over HTTPS, with the token; refused without it.
    let out = cli(
        &["status", "--http", &url_a, "--ca", ca_arg],
        Some(CLIENT_TOKEN),
    );
    assert!(out.status.success(), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    for m in view["members"].as_array().unwrap() {
        assert!(stdout.contains(m["id"].as_str().unwrap()), "{stdout}");
    }
    let out = cli(&["status", "--http", &url_a, "--ca", ca_arg], None);
    assert!(!out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("401"), "{}", text(&out));

    // Data commands: written through one node, read through the other.
    let out = cli(
        &[
            "put",
            "greeting",
            "hello over tls",
            "--node",
            &url_a,
            "--ca",
            ca_arg,
            "--token-file",
            token_arg,
        ],
        None,
    );
    assert!(out.status.success(), "{}", text(&out));
    let out = cli(
        &[
            "get",
            "greeting",
            "--node",
            &url_b,
            "--ca",
            ca_arg,
            "--token-file",
            token_arg,
        ],
        None,
    );
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "hello over tls"
    );
    let out = cli(&["get", "greeting", "--node", &url_b, "--ca", ca_arg], None);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("unauthorized"), "{}", text(&out));

    // The status endpoints answer over HTTPS.
    for path in [
        "/health",
        "/v1/status",
        "/v1/node",
        "/metrics",
        "/v1/partitions",
    ] {
        let (status, body) = get_https(&agent, a.http, path).expect(path);
        assert_eq!(status, 200, "{path}: {body}");
    }

    // The operator token works as before: a repair starts over HTTPS.
    let operator = a.operator_token_path();
    let out = cli(
        &[
            "repair",
            "--http",
            &url_a,
            "--ca",
            ca_arg,
            "--no-wait",
            "--operator-token-file",
            operator.to_str().unwrap(),
        ],
        Some(CLIENT_TOKEN),
    );
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("started"),
        "{}",
        text(&out)
    );

    // A plain-HTTP request to the HTTPS port, token and all, gets no data: a 400 saying so.
    let mut s = std::net::TcpStream::connect(a.http).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    write!(
        s,
        "GET /v1/kv/greeting HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {CLIENT_TOKEN}\r\n\r\n",
        a.http
    )
    .unwrap();
    let mut raw = String::new();
    let _ = s.read_to_string(&mut raw);
    assert!(raw.starts_with("HTTP/1.1 400"), "{raw}");
    assert!(
        raw.contains("https_required") && !raw.contains("hello"),
        "{raw}"
    );
    let plain_url = format!("http://{}", a.http);
    let out = cli(
        &[
            "get",
            "greeting",
            "--node",
            &plain_url,
            "--token-file",
            token_arg,
        ],
        None,
    );
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("HTTPS only"), "{}", text(&out));
    let out = cli(&["status", "--http", &plain_url], Some(CLIENT_TOKEN));
    assert!(!out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("HTTPS only"), "{}", text(&out));

    // Another CA's certificate file: the node's certificate is refused, and the error says why.
    let other = make_ca(root, "other-ca");
    let other_pem = other.join("ca.pem");
    let out = cli(
        &[
            "status",
            "--http",
            &url_a,
            "--ca",
            other_pem.to_str().unwrap(),
        ],
        Some(CLIENT_TOKEN),
    );
    assert!(!out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("not signed by the CA"),
        "{}",
        text(&out)
    );
    let out = cli(
        &[
            "get",
            "greeting",
            "--node",
            &url_a,
            "--ca",
            other_pem.to_str().unwrap(),
            "--token-file",
            token_arg,
        ],
        None,
    );
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        text(&out).contains("not signed by the CA"),
        "{}",
        text(&out)
    );
    // A host name the certificate does not carry is refused too.
    let out = cli(
        &[
            "status",
            "--http",
            &format!("https://localhost:{}", a.http.port()),
            "--ca",
            ca_arg,
        ],
        Some(CLIENT_TOKEN),
    );
    assert!(!out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("does not name the host"),
        "{}",
        text(&out)
    );

    // The Rust client.
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let client = Client::connect(client_config(url_a.clone(), &ca_pem, Some(CLIENT_TOKEN)))
            .await
            .unwrap();
        // Every data request goes to the members the client learned from /v1/cluster: over
        // HTTPS, each certificate checked against the member's address.
        for i in 0..20 {
            let key = format!("tls-key-{i}");
            client.put(&key, format!("v{i}"), None).await.unwrap();
            let read = client.get(&key).await.unwrap();
            assert_eq!(read.value, Value::One(format!("v{i}").into_bytes()));
        }
        let read = client.get("greeting").await.unwrap();
        assert_eq!(read.value, Value::One(b"hello over tls".to_vec()));
        let nodes = client.nodes();
        assert_eq!(nodes.len(), 2, "{nodes:?}");
        for n in &nodes {
            assert!(n.http_addr == a.http || n.http_addr == b.http, "{nodes:?}");
            assert_eq!(n.breaker, BreakerState::Closed, "{nodes:?}");
        }
        client.refresh().await.unwrap();

        // No token: refused.
        let e = Client::connect(client_config(url_a.clone(), &ca_pem, None))
            .await
            .unwrap_err();
        assert_eq!(e.kind, ErrorKind::Unauthorized, "{e}");
        // The wrong CA: refused, saying why.
        let e = Client::connect(client_config(url_b.clone(), &other_pem, Some(CLIENT_TOKEN)))
            .await
            .unwrap_err();
        assert!(e.message.contains("not signed by the CA"), "{e}");
        // Plain HTTP to the HTTPS port: refused, saying why.
        let e = Client::connect(client_config(
            plain_url.clone(),
            &ca_pem,
            Some(CLIENT_TOKEN),
        ))
        .await
        .unwrap_err();
        assert!(e.message.contains("HTTPS only"), "{e}");
        // https:// without a CA: a configuration error before anything is sent.
        let mut no_ca = client_config(url_a.clone(), &ca_pem, Some(CLIENT_TOKEN));
        no_ca.ca_pem = None;
        let e = Client::connect(no_ca).await.unwrap_err();
        assert_eq!(e.kind, ErrorKind::Config, "{e}");
    });

    // HTTPS to a node serving plain HTTP: refused, saying why.
    let plain = NodeProc::start(root, "plain", &ca, &[]);
    plain.wait_serving();
    let out = cli(
        &[
            "status",
            "--http",
            &format!("https://{}", plain.http),
            "--ca",
            ca_arg,
        ],
        None,
    );
    assert!(!out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("plain HTTP"), "{}", text(&out));
}

#[test]
fn tls_handshakes_hold_places_under_the_caps_and_are_timed_out() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let ca = make_ca(root, "ca");
    let ca_pem = ca.join("ca.pem");
    let node = start_https(
        root,
        "n",
        &ca,
        &[],
        &[
            "--http-tls-handshake-timeout",
            "1",
            "--http-connections-per-address-max",
            "2",
        ],
    );
    let agent = tls_agent(&ca_pem);
    wait_https_members(&agent, &node, 1);
    let http = node.http;
    let tls =
        chorus::client::https::https_client_config(&std::fs::read_to_string(&ca_pem).unwrap())
            .unwrap();

    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async move {
        // From 127.0.0.2, so nothing else holds a place of that address.
        let connect = || async move {
            let socket = tokio::net::TcpSocket::new_v4().unwrap();
            socket.bind("127.0.0.2:0".parse().unwrap()).unwrap();
            socket.connect(http).await.unwrap()
        };
        let read_all = |mut s: tokio::net::TcpStream| async move {
            let mut buf = Vec::new();
            let r = tokio::time::timeout(Duration::from_secs(20), s.read_to_end(&mut buf)).await;
            (r.is_ok(), String::from_utf8_lossy(&buf).into_owned())
        };
        // Two connections that never start their handshake hold the address's two places.
        let silent = [connect().await, connect().await];
        tokio::time::sleep(Duration::from_millis(200)).await;
        let (closed, answer) = read_all(connect().await).await;
        assert!(closed && answer.starts_with("HTTP/1.1 503"), "{answer}");
        // Both are closed once the handshake timeout passes, without a byte.
        for s in silent {
            let (closed, answer) = read_all(s).await;
            assert!(closed && answer.is_empty(), "{answer}");
        }
        // Then the address's places are free again: a full HTTPS request from it succeeds.
        let connector = tokio_rustls::TlsConnector::from(tls);
        let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
        let mut answer = String::new();
        for _ in 0..100 {
            let stream = connect().await;
            if let Ok(mut s) = connector.connect(name.clone(), stream).await {
                s.write_all(
                    b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n",
                )
                .await
                .unwrap();
                let mut buf = Vec::new();
                let _ =
                    tokio::time::timeout(Duration::from_secs(20), s.read_to_end(&mut buf)).await;
                answer = String::from_utf8_lossy(&buf).into_owned();
                if answer.starts_with("HTTP/1.1 200") {
                    break;
                }
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    });
    assert!(
        node.log()
            .contains("did not complete its TLS handshake in time"),
        "{}",
        node.log()
    );
}
