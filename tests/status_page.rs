//! The status page (`GET /`) rendered by headless Chromium against a real 3-node cluster, and
//! the JSON behind it (`GET /v1/status`, `GET /v1/node`).
//!
//! Chromium is found at `$CHORUS_CHROMIUM`, else as `chromium` on the PATH; `.dev/test` (the
//! README's test command) installs Debian's `chromium` when it is missing.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::*;

fn get_json(http: SocketAddr, path: &str) -> serde_json::Value {
    let mut r = ureq::get(format!("http://{http}{path}"))
        .call()
        .unwrap_or_else(|e| panic!("GET {path}: {e}"));
    serde_json::from_str(&r.body_mut().read_to_string().unwrap()).unwrap()
}

fn chromium() -> String {
    if let Ok(p) = std::env::var("CHORUS_CHROMIUM") {
        return p;
    }
    let found = Command::new("chromium")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        found,
        "this test needs Chromium: run the tests with .dev/test (it installs Debian's chromium), \
         or set CHORUS_CHROMIUM to a Chromium binary"
    );
    "chromium".into()
}

/// The page at `url` as Chromium's DOM after its script ran (and, with `shot`, a screenshot).
fn render(url: &str, profile: &Path, shot: Option<&Path>) -> String {
    let mut cmd = Command::new(chromium());
    cmd.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--window-size=1400,1000",
        // Lets the page's fetch and drawing finish before the DOM is taken.
        "--virtual-time-budget=5000",
    ])
    .arg(format!("--user-data-dir={}", profile.display()));
    match shot {
        Some(p) => cmd.arg(format!("--screenshot={}", p.display())),
        None => cmd.arg("--dump-dom"),
    };
    let out = cmd.arg(url).output().expect("run chromium");
    assert!(
        out.status.success(),
        "chromium failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn status_page_lists_every_member_and_draws_the_ring_in_chromium() {
    let tmp = tempfile::tempdir().unwrap();
    let (mut nodes, ids) = start_cluster(tmp.path(), 3);
    let http = nodes[0].http;
    for i in 0..30 {
        assert_eq!(put(http, &format!("s{i}"), b"v", None, "").status, 204);
    }

    // The JSON behind the page.
    let own = get_json(http, "/v1/node");
    assert_eq!(own["node_id"], ids[0].as_str());
    assert!(own["requests_last_minute"].as_u64().unwrap() >= 30, "{own}");
    assert!(own["p99_ms"].as_f64().unwrap() > 0.0, "{own}");
    let status = get_json(http, "/v1/status");
    let q = status["cluster"]["ring"]["partitions"].as_u64().unwrap() as usize;
    let owners = status["owners"].as_array().unwrap();
    assert_eq!(owners.len(), q);
    assert!(owners.iter().all(|o| o.as_array().unwrap().len() == 3));
    let members = status["cluster"]["members"].as_array().unwrap();
    let figures = status["nodes"].as_array().unwrap();
    assert_eq!(figures.len(), 3);
    for (m, f) in members.iter().zip(figures) {
        assert_eq!(m["id"], f["id"]);
        assert!(f["stats"]["keys_held"].as_u64().unwrap() >= 30, "{f}");
    }
    // Node 0's partitions: with 3 nodes and N = 3, all of them.
    assert_eq!(status["partitions"].as_array().unwrap().len(), q);

    // The page itself, rendered.
    let url = format!("http://{http}/");
    let dom = render(&url, &tmp.path().join("chromium-1"), None);
    assert!(
        dom.contains("data-rendered="),
        "the script never drew:\n{dom}"
    );
    for id in &ids {
        assert!(
            dom.contains(&format!("data-node=\"{id}\"")),
            "member {id} missing:\n{dom}"
        );
    }
    assert!(dom.contains(&format!("{} (this node)", ids[0])));
    assert_eq!(dom.matches("class=\"partition\"").count(), q, "ring arcs");
    assert_eq!(dom.matches("class=\"own-replica\"").count(), q, "own marks");
    assert_eq!(
        dom.matches("<tr data-partition=").count(),
        q,
        "anti-entropy rows"
    );
    assert!(dom.contains(">alive<"));
    assert!(
        dom.contains("<span id=\"error\"></span>"),
        "the page reports an error"
    );

    // A member goes down: the page still draws, says so, and has no figures for it.
    nodes[2].kill();
    let down = wait_for(Duration::from_secs(30), || {
        let s = get_json(http, "/v1/status");
        let m = s["cluster"]["members"]
            .as_array()?
            .iter()
            .position(|m| m["id"] == ids[2].as_str())?;
        (s["cluster"]["members"][m]["liveness"] == "down" && s["nodes"][m]["stats"].is_null())
            .then_some(s)
    });
    let down = down.expect("node 2 never reported down without figures");
    assert!(down["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .any(|n| n["error"].is_string()));
    let dom = render(&url, &tmp.path().join("chromium-2"), None);
    assert!(dom.contains(">down<"), "{dom}");
    assert!(dom.contains(">no figures<"), "{dom}");
    assert_eq!(dom.matches("class=\"partition\"").count(), q);

    // A screenshot, for people (kept in the target directory when asked for).
    if let Ok(dir) = std::env::var("CHORUS_STATUS_SCREENSHOT_DIR") {
        let shot = Path::new(&dir).join("status.png");
        render(&url, &tmp.path().join("chromium-3"), Some(&shot));
        assert!(std::fs::metadata(&shot).unwrap().len() > 10_000);
    }
}

/// With a client token the page asks for it, keeps it for the tab (given as `#token=`), and
/// then draws; a wrong token is said to be refused.
#[test]
fn status_page_asks_for_the_token_on_a_protected_node() {
    use std::os::unix::fs::PermissionsExt as _;
    let tmp = tempfile::tempdir().unwrap();
    let ca = make_ca(tmp.path(), "ca");
    let token = "status-page-client-token-0123456789abcdef";
    let token_file = tmp.path().join("client.token");
    std::fs::write(&token_file, token).unwrap();
    std::fs::set_permissions(&token_file, std::fs::Permissions::from_mode(0o600)).unwrap();
    let node = NodeProc::start_with(
        tmp.path(),
        "n0",
        &ca,
        &[],
        &["--client-token-file", token_file.to_str().unwrap()],
    );
    let id = wait_for(Duration::from_secs(30), || {
        let out = chorus()
            .args(["status", "--json", "--http", &node.http.to_string()])
            .env("CHORUS_TOKEN", token)
            .output()
            .ok()?;
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
        v["node_id"].as_str().map(str::to_owned)
    })
    .unwrap_or_else(|| panic!("never served:\n{}", node.log()));
    let url = format!("http://{}/", node.http);

    // Without a token: the form, no figures.
    let dom = render(&url, &tmp.path().join("chromium-t1"), None);
    assert!(
        !dom.contains("data-rendered="),
        "drew without a token:\n{dom}"
    );
    assert!(
        dom.contains("id=\"token-form\" class=\"\""),
        "no token form shown:\n{dom}"
    );
    assert!(dom.contains("this node needs a token"), "{dom}");
    // A wrong one: refused, and said so.
    let dom = render(
        &format!("{url}#token=wrong-token-0123456789abcdef0123456789"),
        &tmp.path().join("chromium-t2"),
        None,
    );
    assert!(!dom.contains("data-rendered="), "{dom}");
    assert!(dom.contains("that token was refused"), "{dom}");
    // The client token, and the operator token: the page draws this node.
    for (i, t) in [token, OPERATOR_TOKEN].into_iter().enumerate() {
        let dom = render(
            &format!("{url}#token={t}"),
            &tmp.path().join(format!("chromium-t3{i}")),
            None,
        );
        assert!(dom.contains("data-rendered="), "never drew:\n{dom}");
        assert!(dom.contains(&format!("data-node=\"{id}\"")), "{dom}");
        assert!(!dom.contains(t), "the token stays out of the page");
    }
}

/// Every `"$ref"` string anywhere in `v`.
fn refs(v: &serde_json::Value, out: &mut Vec<String>) {
    match v {
        serde_json::Value::Object(m) => {
            for (k, x) in m {
                match (k.as_str(), x) {
                    ("$ref", serde_json::Value::String(r)) => out.push(r.clone()),
                    _ => refs(x, out),
                }
            }
        }
        serde_json::Value::Array(a) => a.iter().for_each(|x| refs(x, out)),
        _ => {}
    }
}

#[test]
fn openapi_document_is_valid_3_1_and_matches_the_router() {
    let tmp = tempfile::tempdir().unwrap();
    let (nodes, _) = start_cluster(tmp.path(), 1);
    let http = nodes[0].http;
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    let mut r = agent
        .get(format!("http://{http}/v1/openapi.json"))
        .call()
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(r.headers().get("content-type").unwrap(), "application/json");
    let text = r.body_mut().read_to_string().unwrap();

    // A valid OpenAPI 3.1 document: it parses as one, its version is 3.1, and every reference
    // in it resolves.
    let spec = oas3::from_json(&text).expect("parses as an OpenAPI 3.1 document");
    let version = spec.validate_version().expect("OpenAPI 3.1.x");
    assert_eq!((version.major, version.minor), (3, 1));
    let raw: serde_json::Value = serde_json::from_str(&text).unwrap();
    let mut all = Vec::new();
    refs(&raw, &mut all);
    assert!(!all.is_empty());
    for r in &all {
        let pointer = r
            .strip_prefix('#')
            .unwrap_or_else(|| panic!("external ref {r}"));
        assert!(raw.pointer(pointer).is_some(), "dangling ref {r}");
    }

    let mut documented: Vec<(String, String)> = Vec::new();
    let mut ids = std::collections::BTreeSet::new();
    for (path, method, op) in spec.operations() {
        documented.push((path.clone(), method.to_string()));
        let params = op.parameters(&spec).expect("parameters resolve");
        // Every template segment is a required path parameter, and every path parameter is
        // in the template.
        let template: Vec<&str> = path
            .split('/')
            .filter_map(|s| s.strip_prefix('{')?.strip_suffix('}'))
            .collect();
        for t in &template {
            let p = params
                .iter()
                .find(|p| p.name == *t && p.location == oas3::spec::ParameterIn::Path);
            assert!(
                p.is_some_and(|p| p.required == Some(true)),
                "{method} {path}: {t}"
            );
        }
        for p in params
            .iter()
            .filter(|p| p.location == oas3::spec::ParameterIn::Path)
        {
            assert!(
                template.contains(&p.name.as_str()),
                "{method} {path}: {}",
                p.name
            );
        }
        op.request_body(&spec).expect("request body resolves");
        let responses = op.responses(&spec);
        assert!(!responses.is_empty(), "{method} {path} has no answers");
        assert_eq!(
            responses.len(),
            op.responses.as_ref().map_or(0, |r| r.len()),
            "{method} {path}: an answer does not resolve"
        );
        let id = op.operation_id.clone().expect("operation id");
        assert!(ids.insert(id.clone()), "operation id {id} twice");
    }
    documented.sort();

    // Every data endpoint documents its parameters, its bodies and its error shape.
    let kv_put = spec
        .operations()
        .find(|(p, m, _)| p == "/v1/kv/{key}" && m.as_str() == "PUT")
        .map(|(_, _, op)| op)
        .expect("PUT /v1/kv/{key}");
    let names: Vec<String> = kv_put
        .parameters(&spec)
        .unwrap()
        .into_iter()
        .map(|p| p.name)
        .collect();
    for n in ["key", "r", "w", "strict", "timeout_ms", "x-chorus-context"] {
        assert!(names.iter().any(|x| x == n), "PUT /v1/kv: {n} in {names:?}");
    }
    let answers = kv_put.responses(&spec);
    for code in ["204", "300", "400", "409", "413", "503"] {
        assert!(answers.contains_key(code), "PUT /v1/kv answers {code}");
    }
    assert!(answers["204"].headers.contains_key("x-chorus-context"));
    assert_eq!(
        raw["paths"]["/v1/kv/{key}"]["put"]["responses"]["503"]["content"]["application/json"]
            ["schema"]["$ref"],
        "#/components/schemas/ErrorBody"
    );
    let error_body = &raw["components"]["schemas"]["ErrorBody"]["properties"];
    for f in ["error", "message", "indeterminate"] {
        assert!(error_body.get(f).is_some(), "ErrorBody.{f}");
    }
    assert!(raw["components"]["securitySchemes"]["client_token"].is_object());

    // The router serves exactly what the document says: a method no route uses (PATCH) on each
    // documented path answers 405 listing that path's methods (axum adds HEAD to GET), and a
    // path outside the document is not served.
    let mut paths: Vec<&String> = documented.iter().map(|(p, _)| p).collect();
    paths.dedup();
    for path in paths {
        let concrete = path
            .replace("{key}", "some/key")
            .replace("{node}", "0000000000000001")
            .replace("{id}", "1");
        let r = agent
            .patch(format!("http://{http}{concrete}"))
            .send_empty()
            .unwrap();
        assert_eq!(r.status().as_u16(), 405, "PATCH {concrete}");
        let mut allowed: Vec<String> = r
            .headers()
            .get("allow")
            .unwrap()
            .to_str()
            .unwrap()
            .split(',')
            .map(|m| m.trim().to_ascii_uppercase())
            .filter(|m| m != "HEAD")
            .collect();
        allowed.sort();
        let mut expected: Vec<String> = documented
            .iter()
            .filter(|(p, _)| p == path)
            .map(|(_, m)| m.to_ascii_uppercase())
            .collect();
        expected.sort();
        assert_eq!(allowed, expected, "{path}");
    }
    for path in ["/v1", "/v1/kvx", "/admin", "/v1/cluster/join"] {
        let mut r = agent.get(format!("http://{http}{path}")).call().unwrap();
        assert_eq!(r.status().as_u16(), 404, "{path}");
        let body: serde_json::Value =
            serde_json::from_str(&r.body_mut().read_to_string().unwrap()).unwrap();
        assert_eq!(body["error"], "not_found");
    }
    // An empty key is a bad request, as documented.
    let r = agent.get(format!("http://{http}/v1/kv/")).call().unwrap();
    assert_eq!(r.status().as_u16(), 400);
}
