//! Helpers for tests that run real `chorus` processes on 127.0.0.1.
#![allow(dead_code)]

use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use chorus::node::{ClusterView, Liveness};
use chorus::runtime::dev::fetch_cluster;

/// The `chorus` binary under test.
pub fn chorus() -> Command {
    Command::new(env!("CARGO_BIN_EXE_chorus"))
}

/// A UDP port and a TCP port on 127.0.0.1 that were free a moment ago.
pub fn free_ports() -> (SocketAddr, SocketAddr) {
    let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
    let tcp = TcpListener::bind("127.0.0.1:0").unwrap();
    (udp.local_addr().unwrap(), tcp.local_addr().unwrap())
}

/// Polls `f` every 100 ms until it returns `Some` or `timeout` passes.
pub fn wait_for<T>(timeout: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Creates a CA with `chorus cert ca` and returns its directory.
pub fn make_ca(root: &Path, name: &str) -> PathBuf {
    let dir = root.join(name);
    let out = chorus()
        .args(["cert", "ca", "--dir"])
        .arg(&dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "cert ca: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    dir
}

/// Issues a node certificate from the CA in `ca` into `out` with `chorus cert issue`.
pub fn issue_cert(ca: &Path, name: &str, out: &Path) {
    let res = chorus()
        .args(["cert", "issue", "--ca"])
        .arg(ca)
        .args(["--name", name, "--out"])
        .arg(out)
        .output()
        .unwrap();
    assert!(
        res.status.success(),
        "cert issue: {}",
        String::from_utf8_lossy(&res.stderr)
    );
}

/// One `chorus start` process.
pub struct NodeProc {
    pub name: String,
    pub data_dir: PathBuf,
    pub tls_dir: PathBuf,
    pub quic: SocketAddr,
    pub http: SocketAddr,
    pub join: Vec<SocketAddr>,
    pub child: Option<Child>,
}

impl NodeProc {
    /// Issues a certificate from `ca` (with `chorus cert issue`) and starts the node.
    pub fn start(root: &Path, name: &str, ca: &Path, join: &[SocketAddr]) -> NodeProc {
        let data_dir = root.join(name);
        let tls_dir = data_dir.join("tls");
        issue_cert(ca, name, &tls_dir);
        let (quic, http) = free_ports();
        let mut node = NodeProc {
            name: name.to_string(),
            data_dir,
            tls_dir,
            quic,
            http,
            join: join.to_vec(),
            child: None,
        };
        node.spawn();
        node
    }

    /// (Re)starts the process with the same data directory and addresses.
    pub fn spawn(&mut self) {
        std::fs::create_dir_all(&self.data_dir).unwrap();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .unwrap();
        let mut cmd = chorus();
        cmd.arg("start")
            .arg("--data-dir")
            .arg(&self.data_dir)
            .args([
                "--listen",
                &self.quic.to_string(),
                "--http",
                &self.http.to_string(),
            ])
            .arg("--tls-dir")
            .arg(&self.tls_dir)
            .env("RUST_LOG", "info,chorus=debug")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        for j in &self.join {
            cmd.args(["--join", &j.to_string()]);
        }
        self.child = Some(cmd.spawn().unwrap());
    }

    pub fn log_path(&self) -> PathBuf {
        self.data_dir.join("node.log")
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    pub fn view(&self) -> Option<ClusterView> {
        fetch_cluster(self.http, Duration::from_secs(2)).ok()
    }

    /// Waits for the node to answer `GET /v1/cluster`, and returns its id.
    pub fn wait_serving(&self) -> String {
        wait_for(Duration::from_secs(30), || self.view())
            .unwrap_or_else(|| panic!("{} never served; log:\n{}", self.name, self.log()))
            .node_id
    }

    pub fn signal(&self, sig: &str) {
        let pid = self.child.as_ref().expect("running").id();
        let status = Command::new("kill")
            .args([sig, &pid.to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// SIGKILL, and reap.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Waits up to `timeout` for the process to exit.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let child = self.child.as_mut()?;
        let status = wait_for(timeout, || child.try_wait().ok().flatten());
        if status.is_some() {
            self.child = None;
        }
        status
    }
}

impl Drop for NodeProc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Liveness of `id` as `view` reports it.
pub fn liveness_of(view: &ClusterView, id: &str) -> Option<Liveness> {
    view.members.iter().find(|m| m.id == id).map(|m| m.liveness)
}

/// Whether `view` lists exactly `ids`, all alive.
pub fn all_alive(view: &ClusterView, ids: &[String]) -> bool {
    view.members.len() == ids.len()
        && ids
            .iter()
            .all(|id| liveness_of(view, id) == Some(Liveness::Alive))
}
