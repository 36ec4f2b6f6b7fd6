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

/// The operator token every test node is started with (`--operator-token-file`, written next
/// to its data directory by [`NodeProc::spawn`]).
pub const OPERATOR_TOKEN: &str = "test-operator-token-0123456789abcdef0123";

/// Writes [`OPERATOR_TOKEN`] to `path` (mode 600) unless it is there.
pub fn write_operator_token(path: &Path) {
    if path.exists() {
        return;
    }
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .unwrap();
    writeln!(f, "{OPERATOR_TOKEN}").unwrap();
}

/// Adds the operator token to a request (leave, remove, repair).
pub fn as_operator<B>(req: ureq::RequestBuilder<B>) -> ureq::RequestBuilder<B> {
    req.header("authorization", format!("Bearer {OPERATOR_TOKEN}"))
}

/// The body of `POST /v1/cluster/remove/{node}`: the removal of `node` signed with the key of
/// the CA in `ca` (the operator's key), as `chorus cluster remove` sends it.
pub fn removal_body(ca: &Path, node: &str) -> String {
    chorus::runtime::dev::removal_body(node.parse().expect("a node id"), Some(ca))
        .expect("signs the removal")
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
    issue_cert_with(ca, name, out, &[]);
}

/// [`issue_cert`] with extra `chorus cert issue` flags (e.g. `--san 127.0.0.1`).
pub fn issue_cert_with(ca: &Path, name: &str, out: &Path, extra: &[&str]) {
    let res = chorus()
        .args(["cert", "issue", "--ca"])
        .arg(ca)
        .args(["--name", name, "--out"])
        .arg(out)
        .args(extra)
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
    /// Extra `chorus start` flags.
    pub extra: Vec<String>,
    /// Started with `--operator-token-file` (holding [`OPERATOR_TOKEN`]).
    pub operator: bool,
    pub child: Option<Child>,
}

impl NodeProc {
    /// Issues a certificate from `ca` (with `chorus cert issue`) and starts the node.
    pub fn start(root: &Path, name: &str, ca: &Path, join: &[SocketAddr]) -> NodeProc {
        NodeProc::start_with(root, name, ca, join, &[])
    }

    /// [`NodeProc::start`] with extra `chorus start` flags.
    pub fn start_with(
        root: &Path,
        name: &str,
        ca: &Path,
        join: &[SocketAddr],
        extra: &[&str],
    ) -> NodeProc {
        NodeProc::start_opts(root, name, ca, join, extra, true)
    }

    /// [`NodeProc::start_with`], with the operator token (`--operator-token-file`, holding
    /// [`OPERATOR_TOKEN`]) or without any.
    pub fn start_opts(
        root: &Path,
        name: &str,
        ca: &Path,
        join: &[SocketAddr],
        extra: &[&str],
        operator: bool,
    ) -> NodeProc {
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
            extra: extra.iter().map(|s| s.to_string()).collect(),
            operator,
            child: None,
        };
        node.spawn();
        node
    }

    /// (Re)starts the process with the same data directory and addresses.
    pub fn spawn(&mut self) {
        std::fs::create_dir_all(&self.data_dir).unwrap();
        let operator_token = self.operator_token_path();
        if self.operator {
            write_operator_token(&operator_token);
        }
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
        if self.operator && !self.extra.iter().any(|a| a == "--operator-token-file") {
            cmd.arg("--operator-token-file").arg(&operator_token);
        }
        cmd.args(&self.extra);
        self.child = Some(cmd.spawn().unwrap());
    }

    /// The node's operator token file (it holds [`OPERATOR_TOKEN`]).
    pub fn operator_token_path(&self) -> PathBuf {
        self.data_dir.join("operator.token")
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

/// An HTTP answer: status, the headers we care about, body.
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: u16,
    pub context: Option<String>,
    pub acks: Option<String>,
    pub sync: Option<String>,
    pub body: Vec<u8>,
}

impl Answer {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", String::from_utf8_lossy(&self.body)))
    }

    /// The values of a siblings JSON body, decoded.
    pub fn sibling_values(&self) -> Vec<Vec<u8>> {
        use base64::Engine as _;
        let mut v: Vec<Vec<u8>> = self.json()["values"]
            .as_array()
            .expect("values")
            .iter()
            .map(|s| {
                base64::engine::general_purpose::STANDARD
                    .decode(s.as_str().unwrap())
                    .unwrap()
            })
            .collect();
        v.sort();
        v
    }
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .timeout_global(Some(Duration::from_secs(20)))
        .http_status_as_error(false)
        // 300 Multiple Choices is an answer here, not a redirect.
        .max_redirects(0)
        .build()
        .into()
}

fn answer(mut resp: ureq::http::Response<ureq::Body>) -> Answer {
    let h = |name: &str| {
        resp.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let (context, acks, sync) = (
        h("x-chorus-context"),
        h("x-chorus-acks"),
        h("x-chorus-sync"),
    );
    Answer {
        status: resp.status().as_u16(),
        context,
        acks,
        sync,
        body: resp
            .body_mut()
            .with_config()
            .limit(16 * 1024 * 1024)
            .read_to_vec()
            .unwrap_or_default(),
    }
}

/// `PUT /v1/kv/{key}?{query}` with an optional context.
pub fn put(
    http: SocketAddr,
    key: &str,
    value: &[u8],
    context: Option<&str>,
    query: &str,
) -> Answer {
    let mut req = agent().put(format!("http://{http}/v1/kv/{key}?{query}"));
    if let Some(c) = context {
        req = req.header("x-chorus-context", c);
    }
    answer(req.send(value).expect("PUT"))
}

/// `GET /v1/kv/{key}?{query}`.
pub fn get(http: SocketAddr, key: &str, query: &str) -> Answer {
    answer(
        agent()
            .get(format!("http://{http}/v1/kv/{key}?{query}"))
            .call()
            .expect("GET"),
    )
}

/// `GET` asking for the JSON form.
pub fn get_json(http: SocketAddr, key: &str) -> Answer {
    answer(
        agent()
            .get(format!("http://{http}/v1/kv/{key}"))
            .header("accept", "application/json")
            .call()
            .expect("GET"),
    )
}

/// `DELETE /v1/kv/{key}` with an optional context.
pub fn delete(http: SocketAddr, key: &str, context: Option<&str>) -> Answer {
    let mut req = agent().delete(format!("http://{http}/v1/kv/{key}"));
    if let Some(c) = context {
        req = req.header("x-chorus-context", c);
    }
    answer(req.call().expect("DELETE"))
}

/// Starts `n` nodes joining through the first, and waits until all are alive members.
pub fn start_cluster(root: &Path, n: usize) -> (Vec<NodeProc>, Vec<String>) {
    start_cluster_with(root, n, &[])
}

/// [`start_cluster`] with extra `chorus start` flags for every node.
pub fn start_cluster_with(root: &Path, n: usize, extra: &[&str]) -> (Vec<NodeProc>, Vec<String>) {
    let ca = make_ca(root, "ca");
    let mut nodes = vec![NodeProc::start_with(root, "n0", &ca, &[], extra)];
    let seed = nodes[0].quic;
    for i in 1..n {
        nodes.push(NodeProc::start_with(
            root,
            &format!("n{i}"),
            &ca,
            &[seed],
            extra,
        ));
    }
    let ids: Vec<String> = nodes.iter().map(|n| n.wait_serving()).collect();
    wait_members(&nodes, &ids);
    (nodes, ids)
}

/// Waits until every running node of `nodes` has caught up every partition it replicates
/// (after a removal or a leave the others gain partitions, and refuse their reads until then).
pub fn wait_caught_up(nodes: &[NodeProc]) {
    for n in nodes.iter().filter(|n| n.child.is_some()) {
        let ok = wait_for(Duration::from_secs(60), || {
            n.view()
                .and_then(|v| v.data)
                .filter(|d| d.partitions_catching_up == 0)
        });
        assert!(ok.is_some(), "{}: {:?}\n{}", n.name, n.view(), n.log());
    }
}

/// Waits until every running node lists exactly `ids`, all alive members, and has caught up
/// every partition it replicates (it answers reads of all of them).
pub fn wait_members(nodes: &[NodeProc], ids: &[String]) {
    // Generous for a loaded 2-core machine: the wait ends as soon as the cluster is formed.
    for n in nodes.iter().filter(|n| n.child.is_some()) {
        let ok = wait_for(Duration::from_secs(60), || {
            n.view().filter(|v| {
                all_alive(v, ids)
                    && v.members
                        .iter()
                        .all(|m| m.status == chorus::membership::RingStatus::Member)
                    && v.data
                        .as_ref()
                        .is_none_or(|d| d.partitions_catching_up == 0)
            })
        });
        assert!(ok.is_some(), "{}: {:?}\n{}", n.name, n.view(), n.log());
    }
}
