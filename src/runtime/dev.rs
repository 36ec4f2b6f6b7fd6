//! `chorus dev`: a local multi-node cluster in one command.
//!
//! Creates a cluster CA (once) and a certificate per node, starts N `chorus start` processes on
//! 127.0.0.1 with their own data directories, waits until every node reports all N members
//! alive, prints a table, and on SIGINT/SIGTERM stops every node and exits 0. Re-running with the
//! same directory restarts the same nodes (same ids, same data).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::id::NodeId;
use crate::node::{ClusterView, Liveness};
use crate::runtime::tls::{ClusterCa, TlsFiles};

/// Settings of a local cluster.
#[derive(Clone, Debug)]
pub struct DevOptions {
    /// Number of nodes.
    pub nodes: u16,
    /// Node i listens for QUIC on `base_port + i` and for HTTP on `base_port + 100 + i`.
    pub base_port: u16,
    /// Directory holding the CA and one data directory per node.
    pub dir: PathBuf,
    /// How long to wait for the cluster to form.
    pub form_timeout: Duration,
    /// The nodes' sync policy (`always` or `never`).
    pub sync: super::SyncPolicy,
    /// Seconds between Merkle-tree exchanges of each partition (0: off).
    pub anti_entropy_interval: u64,
    /// Start the nodes with `--no-metrics` (to measure what metrics cost).
    pub no_metrics: bool,
}

/// Why the local cluster could not be run.
#[derive(Debug, thiserror::Error)]
pub enum DevError {
    /// Bad options.
    #[error("{0}")]
    Options(String),
    /// File system trouble.
    #[error("cannot prepare {path}: {source}")]
    Io {
        /// The path.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// Certificates could not be created.
    #[error(transparent)]
    Tls(#[from] crate::runtime::tls::TlsError),
    /// A node process could not be started or died early.
    #[error("node {index}: {message}")]
    Node {
        /// Node index.
        index: u16,
        /// What went wrong.
        message: String,
    },
    /// The cluster did not form in time.
    #[error("the cluster did not form within {0:?}; see the node logs in {1}")]
    Timeout(Duration, PathBuf),
}

/// One running node process.
struct DevNode {
    index: u16,
    quic: SocketAddr,
    http: SocketAddr,
    child: Child,
}

/// Ports of node `i`.
pub fn node_addrs(base_port: u16, i: u16) -> Result<(SocketAddr, SocketAddr), DevError> {
    let quic = base_port.checked_add(i);
    let http = base_port.checked_add(100).and_then(|p| p.checked_add(i));
    match (quic, http) {
        (Some(q), Some(h)) => Ok((
            SocketAddr::from(([127, 0, 0, 1], q)),
            SocketAddr::from(([127, 0, 0, 1], h)),
        )),
        _ => Err(DevError::Options(format!(
            "--base-port {base_port} is too high for {} nodes",
            i + 1
        ))),
    }
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> DevError + '_ {
    move |source| DevError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Creates the CA (if absent) and node `i`'s certificate (if absent).
fn prepare_tls(dir: &Path, i: u16) -> Result<PathBuf, DevError> {
    let ca_dir = dir.join("ca");
    let ca = if ca_dir.join("ca.pem").exists() {
        ClusterCa::load(&ca_dir)?
    } else {
        std::fs::create_dir_all(&ca_dir).map_err(io(&ca_dir))?;
        let ca = ClusterCa::generate("Chorus dev cluster CA")?;
        ca.save(&ca_dir)?;
        ca
    };
    let tls_dir = dir.join(format!("node-{i}")).join("tls");
    if TlsFiles::in_dir(&tls_dir).load().is_err() {
        std::fs::create_dir_all(&tls_dir).map_err(io(&tls_dir))?;
        ca.issue_node(&format!("node-{i}"))?.save(&tls_dir)?;
    }
    let key = |e: super::cluster_key::ClusterKeyError| DevError::Options(e.to_string());
    super::cluster_key::ensure(&ca_dir).map_err(key)?;
    super::cluster_key::copy(&ca_dir, &tls_dir).map_err(key)?;
    Ok(tls_dir)
}

fn spawn_node(
    exe: &Path,
    dir: &Path,
    i: u16,
    base_port: u16,
    sync: super::SyncPolicy,
    anti_entropy_interval: u64,
    no_metrics: bool,
) -> Result<DevNode, DevError> {
    let (quic, http) = node_addrs(base_port, i)?;
    let tls_dir = prepare_tls(dir, i)?;
    let operator_token = dir.join(OPERATOR_TOKEN_FILE);
    let data_dir = dir.join(format!("node-{i}"));
    let log_path = data_dir.join("node.log");
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .map_err(io(&log_path))?;
    let log_err = log.try_clone().map_err(io(&log_path))?;
    let mut cmd = Command::new(exe);
    cmd.arg("start")
        .arg("--data-dir")
        .arg(&data_dir)
        .arg("--listen")
        .arg(quic.to_string())
        .arg("--http")
        .arg(http.to_string())
        .arg("--tls-dir")
        .arg(&tls_dir)
        .arg("--sync")
        .arg(sync.as_str())
        .arg("--anti-entropy-interval")
        .arg(anti_entropy_interval.to_string())
        .arg("--operator-token-file")
        .arg(&operator_token);
    if no_metrics {
        cmd.arg("--no-metrics");
    }
    if i > 0 {
        let (seed, _) = node_addrs(base_port, 0)?;
        cmd.arg("--join").arg(seed.to_string());
    }
    let child = cmd
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log_err)
        .spawn()
        .map_err(|e| DevError::Node {
            index: i,
            message: format!("cannot start {}: {e}", exe.display()),
        })?;
    Ok(DevNode {
        index: i,
        quic,
        http,
        child,
    })
}

/// Fetches `GET /v1/cluster` from a node.
pub fn fetch_cluster(http: SocketAddr, timeout: Duration) -> Result<ClusterView, String> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(timeout))
        .build()
        .into();
    let body = with_token(agent.get(format!("http://{http}/v1/cluster")))
        .call()
        .map_err(|e| e.to_string())?
        .body_mut()
        .read_to_string()
        .map_err(|e| e.to_string())?;
    serde_json::from_str::<ClusterView>(&body).map_err(|e| format!("bad /v1/cluster reply: {e}"))
}

/// The client token from the `CHORUS_TOKEN` environment variable, if set.
pub fn env_token() -> Option<String> {
    std::env::var("CHORUS_TOKEN")
        .ok()
        .map(|t| t.trim().to_owned())
        .filter(|t| !t.is_empty())
}

/// The file `chorus dev` keeps its cluster's operator token in, under its directory.
pub const OPERATOR_TOKEN_FILE: &str = "operator.token";

/// The operator token for a command that changes the cluster: from `file` if given, else the
/// `CHORUS_OPERATOR_TOKEN` environment variable, else `chorus-dev/operator.token` (the local
/// cluster's) when it exists.
pub fn operator_token(file: Option<&Path>) -> Result<String, String> {
    if let Some(path) = file {
        return crate::api::auth::Token::load(path)
            .map(|t| t.secret().to_owned())
            .map_err(|e| e.to_string());
    }
    if let Some(t) = std::env::var("CHORUS_OPERATOR_TOKEN")
        .ok()
        .map(|t| t.trim().to_owned())
        .filter(|t| !t.is_empty())
    {
        return Ok(t);
    }
    let dev = Path::new("chorus-dev").join(OPERATOR_TOKEN_FILE);
    if dev.exists() {
        return crate::api::auth::Token::load(&dev)
            .map(|t| t.secret().to_owned())
            .map_err(|e| e.to_string());
    }
    Err(
        "this command changes the cluster and needs the operator token: give \
         --operator-token-file FILE or set CHORUS_OPERATOR_TOKEN"
            .into(),
    )
}

/// The body of `POST /v1/cluster/remove/{node}`: the operator's signature of the removal of
/// `node`, made with the cluster CA key in `ca_dir` (default: `$CHORUS_CA_DIR`, else
/// `chorus-dev/ca`, the local cluster's CA).
pub fn removal_body(node: NodeId, ca_dir: Option<&Path>) -> Result<String, String> {
    let dir = match ca_dir {
        Some(d) => d.to_path_buf(),
        None => match std::env::var_os("CHORUS_CA_DIR").filter(|d| !d.is_empty()) {
            Some(d) => PathBuf::from(d),
            None if Path::new("chorus-dev/ca").join("ca.key").exists() => {
                PathBuf::from("chorus-dev/ca")
            }
            None => {
                return Err(
                    "a removal is signed with the cluster CA key: give --operator-ca DIR (the \
                     directory `chorus cert ca` made, with ca.pem and ca.key) or set \
                     CHORUS_CA_DIR"
                        .into(),
                )
            }
        },
    };
    let ca = ClusterCa::load(&dir).map_err(|e| e.to_string())?;
    let sig = ca
        .sign_operator(&crate::membership::removal_message(node))
        .map_err(|e| e.to_string())?;
    use base64::Engine as _;
    let sig = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(sig);
    Ok(serde_json::json!({ "signature": sig }).to_string())
}

/// Adds `Authorization: Bearer <operator token>` to an HTTP request.
pub fn with_operator<B>(req: ureq::RequestBuilder<B>, token: &str) -> ureq::RequestBuilder<B> {
    req.header("authorization", format!("Bearer {token}"))
}

/// Adds `Authorization: Bearer $CHORUS_TOKEN` to an HTTP request when the variable is set (for
/// nodes started with `--client-token-file`).
pub fn with_token<B>(req: ureq::RequestBuilder<B>) -> ureq::RequestBuilder<B> {
    match env_token() {
        Some(t) => req.header("authorization", format!("Bearer {t}")),
        None => req,
    }
}

fn formed(nodes: &[DevNode]) -> Option<Vec<ClusterView>> {
    let mut views = Vec::new();
    for n in nodes {
        let view = fetch_cluster(n.http, Duration::from_secs(1)).ok()?;
        let alive = view
            .members
            .iter()
            .filter(|m| m.liveness == Liveness::Alive)
            .count();
        if alive != nodes.len() || view.members.len() != nodes.len() {
            return None;
        }
        // Formed means serving: a node that just joined answers reads of its partitions once
        // it has caught up with the other replicas.
        if view
            .data
            .as_ref()
            .is_some_and(|d| d.partitions_catching_up > 0)
        {
            return None;
        }
        views.push(view);
    }
    Some(views)
}

fn stop_all(nodes: &mut [DevNode]) {
    for n in nodes.iter() {
        // SIGTERM: each node shuts down cleanly.
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(n.child.id().to_string())
            .status();
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    for n in nodes.iter_mut() {
        while Instant::now() < deadline {
            if let Ok(Some(_)) = n.child.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = n.child.kill();
        let _ = n.child.wait();
    }
}

/// Runs the local cluster until SIGINT or SIGTERM.
pub fn run(options: DevOptions) -> Result<(), DevError> {
    if options.nodes == 0 {
        return Err(DevError::Options("--nodes must be at least 1".into()));
    }
    node_addrs(options.base_port, options.nodes - 1)?;
    std::fs::create_dir_all(&options.dir).map_err(io(&options.dir))?;
    // The operator token: what leave, remove and repair need (the CLI finds it here).
    let token_path = options.dir.join(OPERATOR_TOKEN_FILE);
    if !token_path.exists() {
        crate::api::auth::write_new_token(&token_path).map_err(io(&token_path))?;
    }
    let exe = std::env::current_exe().map_err(|e| DevError::Options(e.to_string()))?;
    let stop =
        signal_flag().map_err(|e| DevError::Options(format!("cannot watch signals: {e}")))?;

    let mut nodes = Vec::new();
    for i in 0..options.nodes {
        match spawn_node(
            &exe,
            &options.dir,
            i,
            options.base_port,
            options.sync,
            options.anti_entropy_interval,
            options.no_metrics,
        ) {
            Ok(n) => nodes.push(n),
            Err(e) => {
                stop_all(&mut nodes);
                return Err(e);
            }
        }
    }
    let deadline = Instant::now() + options.form_timeout;
    let views = loop {
        for n in nodes.iter_mut() {
            if let Ok(Some(status)) = n.child.try_wait() {
                let index = n.index;
                let log = options.dir.join(format!("node-{index}/node.log"));
                stop_all(&mut nodes);
                return Err(DevError::Node {
                    index,
                    message: format!("exited early ({status}); see {}", log.display()),
                });
            }
        }
        if let Some(views) = formed(&nodes) {
            break views;
        }
        if Instant::now() > deadline || stop.load(std::sync::atomic::Ordering::SeqCst) {
            stop_all(&mut nodes);
            return Err(DevError::Timeout(options.form_timeout, options.dir.clone()));
        }
        std::thread::sleep(Duration::from_millis(200));
    };

    println!(
        "Chorus dev cluster: {} nodes, data in {}",
        nodes.len(),
        options.dir.display()
    );
    println!("{:<4} {:<18} {:<22} {:<22}", "#", "NODE ID", "QUIC", "HTTP");
    for (n, view) in nodes.iter().zip(&views) {
        println!(
            "{:<4} {:<18} {:<22} {:<22}",
            n.index,
            view.node_id,
            n.quic.to_string(),
            format!("http://{}", n.http)
        );
    }
    println!(
        "HTTP serves loopback only. Leave, remove and repair need the operator token in {}.",
        token_path.display()
    );
    println!(
        "cluster formed: every node sees {} alive members. Press Ctrl-C to stop.",
        nodes.len()
    );

    let mut exited = vec![false; nodes.len()];
    while !stop.load(std::sync::atomic::Ordering::SeqCst) {
        for (n, done) in nodes.iter_mut().zip(exited.iter_mut()) {
            if *done {
                continue;
            }
            if let Ok(Some(status)) = n.child.try_wait() {
                eprintln!("node {} exited ({status})", n.index);
                *done = true;
            }
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    println!("stopping {} nodes", nodes.len());
    stop_all(&mut nodes);
    Ok(())
}

/// A flag raised by SIGINT or SIGTERM, watched on a small runtime thread.
fn signal_flag() -> std::io::Result<std::sync::Arc<std::sync::atomic::AtomicBool>> {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    let flag = Arc::new(AtomicBool::new(false));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    // Register the handlers before returning, so no signal is missed after this call.
    let (mut int, mut term) = rt.block_on(async {
        use tokio::signal::unix::{signal, SignalKind};
        Ok::<_, std::io::Error>((
            signal(SignalKind::interrupt())?,
            signal(SignalKind::terminate())?,
        ))
    })?;
    let raised = flag.clone();
    std::thread::spawn(move || {
        rt.block_on(async move {
            tokio::select! {
                _ = int.recv() => {}
                _ = term.recv() => {}
            }
            raised.store(true, Ordering::SeqCst);
        });
    });
    Ok(flag)
}
