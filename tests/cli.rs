//! The `chorus` commands that do not need a cluster of their own, as a user runs them, and
//! `chorus status` / `GET /health` against a running node.

mod common;

use std::time::Duration;

use common::*;

fn json(out: &std::process::Output) -> serde_json::Value {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("one JSON object")
}

#[test]
fn ring_plan_meets_the_balance_and_movement_targets() {
    let plan = json(
        &chorus()
            .args(["ring", "plan", "--members", "5", "--json"])
            .output()
            .unwrap(),
    );
    let max_over_mean = plan["max_over_mean"].as_f64().unwrap();
    assert!((1.0..=1.25).contains(&max_over_mean), "{plan}");
    let change = json(
        &chorus()
            .args(["ring", "plan", "--members", "5", "--add", "1", "--json"])
            .output()
            .unwrap(),
    );
    let moved = change["moved_fraction"].as_f64().unwrap();
    assert!(moved > 0.0 && moved <= 0.30, "{change}");
    let text = chorus()
        .args(["ring", "plan", "--members", "3", "--remove", "1"])
        .output()
        .unwrap();
    assert!(text.status.success());
    assert!(String::from_utf8_lossy(&text.stdout).contains("moved"));
}

#[test]
fn bad_input_gets_a_clear_error() {
    let out = chorus()
        .args(["ring", "plan", "--members", "2", "--remove", "2"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("at least one must remain"));
    for (args, expected) in [
        (
            &["ring", "plan", "--live", "not-an-address", "--add", "1"][..],
            "--live \"not-an-address\" is not an address",
        ),
        (
            &[
                "ring",
                "plan",
                "--members",
                "3",
                "--leave",
                "00000000000000aa",
            ][..],
            "--live",
        ),
        (&["ring", "plan"][..], "--members"),
    ] {
        let out = chorus().args(args).output().unwrap();
        assert!(!out.status.success(), "{args:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(expected), "{args:?}: {stderr}");
    }
    let out = chorus()
        .args(["start", "--listen", "127.0.0.1:1"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--data-dir is required"));
    let out = chorus()
        .args(["status", "--http", "not-an-address"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("http://IP:PORT or https://HOST:PORT"));
}

#[test]
fn start_reads_a_config_file_and_status_reports_the_node() {
    let tmp = tempfile::tempdir().unwrap();
    let ca = make_ca(tmp.path(), "ca");
    let tls = tmp.path().join("tls");
    issue_cert(&ca, "solo", &tls);
    let (quic, http) = free_ports();
    let config = tmp.path().join("node.toml");
    std::fs::write(
        &config,
        format!(
            "data_dir = {:?}\nlisten = \"{quic}\"\nhttp = \"{http}\"\ntls_dir = {:?}\n",
            tmp.path().join("data"),
            tls
        ),
    )
    .unwrap();
    let mut child = chorus()
        .args(["start", "--config"])
        .arg(&config)
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let health = wait_for(Duration::from_secs(30), || {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .timeout_global(Some(Duration::from_secs(1)))
            .build()
            .into();
        agent.get(format!("http://{http}/health")).call().ok()
    });
    assert!(health.is_some(), "GET /health never answered");
    let out = chorus()
        .args(["status", "--http", &format!("http://{http}")])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains(&quic.to_string()) && text.contains("alive") && text.contains("member"),
        "{text}"
    );
    assert!(text.contains("256 partitions"), "{text}");
    let _ = child.kill();
    let _ = child.wait();
}
