//! `chorus dev` brings up a working local cluster and stops it on Ctrl-C.

mod common;

use std::io::{BufRead, BufReader};
use std::net::{TcpListener, UdpSocket};
use std::process::Stdio;
use std::sync::mpsc;
use std::time::Duration;

use chorus::runtime::dev::fetch_cluster;
use common::*;

/// A base port P such that P..P+n (UDP) and P+100..P+100+n (TCP) are free right now.
fn free_range(n: u16) -> u16 {
    for attempt in 0..200u32 {
        let base = 20_000 + ((std::process::id() * 7 + attempt * 211) % 30_000) as u16;
        let ok = (0..n).all(|i| {
            UdpSocket::bind(("127.0.0.1", base + i)).is_ok()
                && TcpListener::bind(("127.0.0.1", base + 100 + i)).is_ok()
        });
        if ok {
            return base;
        }
    }
    panic!("no free port range");
}

#[test]
fn dev_starts_a_three_node_cluster_and_stops_on_sigint() {
    let tmp = tempfile::tempdir().unwrap();
    let base = free_range(3);
    let mut child = chorus()
        .args([
            "dev",
            "--nodes",
            "3",
            "--base-port",
            &base.to_string(),
            "--dir",
        ])
        .arg(tmp.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let mut lines = Vec::new();
    let formed = loop {
        match rx.recv_timeout(Duration::from_secs(90)) {
            Ok(line) => {
                let done = line.contains("cluster formed");
                lines.push(line);
                if done {
                    break true;
                }
            }
            Err(_) => break false,
        }
    };
    if !formed {
        let _ = child.kill();
        panic!("chorus dev did not form a cluster; output: {lines:#?}");
    }
    // The table lists three nodes, and each one serves the cluster view.
    let http = |i: u16| std::net::SocketAddr::from(([127, 0, 0, 1], base + 100 + i));
    for i in 0..3 {
        let v = fetch_cluster(http(i), Duration::from_secs(2)).unwrap();
        assert_eq!(v.members.len(), 3);
        assert!(lines.iter().any(|l| l.contains(&v.node_id)), "{lines:#?}");
    }
    let pid = child.id().to_string();
    assert!(std::process::Command::new("kill")
        .args(["-INT", &pid])
        .status()
        .unwrap()
        .success());
    let status = wait_for(Duration::from_secs(20), || child.try_wait().ok().flatten());
    let status = status.unwrap_or_else(|| {
        let _ = child.kill();
        panic!("chorus dev did not stop on SIGINT")
    });
    assert_eq!(status.code(), Some(0));
    // Every node process is gone: their HTTP ports no longer answer.
    for i in 0..3 {
        assert!(fetch_cluster(http(i), Duration::from_secs(1)).is_err());
    }
}
