//! The `chorus` command line: run a node, run a local cluster, inspect a cluster, manage
//! certificates, and plan placement.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use serde::Deserialize;

use chorus::api::auth::Token;
use chorus::bench::{self, BenchOptions, Distribution, Protocol, Workload};
use chorus::client::NodeUrl;
use chorus::node::{Liveness, PartitionInfo, RepairProgress};
use chorus::runtime::dev::{self, DevOptions};
use chorus::runtime::tls::{ClusterCa, TlsFiles};
use chorus::runtime::{NodeOptions, SyncPolicy};

use chorus::ring::plan::{self, Change, PlanRequest};
use chorus::ring::{DEFAULT_PARTITIONS, DEFAULT_VNODES};
use chorus::NodeId;

mod data_commands;

/// mimalloc: the node allocates many small, short-lived buffers on several threads; glibc's
/// allocator spent a tenth of the CPU of a benchmark run in its own bookkeeping.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Chorus: a leaderless, Dynamo-style, eventually consistent key-value store.
#[derive(Parser, Debug)]
#[command(name = "chorus", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run one node in the foreground until SIGINT, SIGTERM or a graceful leave.
    Start(Box<StartArgs>),
    /// Start a local multi-node cluster on 127.0.0.1 and keep it running until Ctrl-C.
    Dev(DevArgs),
    /// Show a cluster's members, liveness, ring status and partition counts.
    Status(StatusArgs),
    /// Repair replicas by Merkle-tree anti-entropy: compare every partition the node
    /// replicates (or one) with each of its other replicas, showing progress until done.
    Repair(RepairArgs),
    /// Load-test a running cluster over QUIC or HTTP (YCSB A/B/C, write-only, counters).
    Bench(BenchArgs),
    /// Read a register: its value (or siblings, one per line) on stdout, the context on
    /// stderr. Exit codes: 0 found, 1 not found, 2 failure.
    Get(data_commands::GetArgs),
    /// Write a register value. Exit codes: 0 written, 2 failure, 3 indeterminate (the write
    /// may have been applied).
    Put(data_commands::PutArgs),
    /// Delete a register (what a fresh read sees, or what --context covers).
    Delete(data_commands::DeleteArgs),
    /// Read or increment a counter (G-Counter; PN-Counter once decremented).
    Counter {
        #[command(subcommand)]
        command: data_commands::CounterCommand,
    },
    /// Read a set, or add or remove elements (OR-Set, or 2P-Set with --two-phase).
    Set {
        #[command(subcommand)]
        command: data_commands::SetCommand,
    },
    /// Create a cluster certificate authority or issue node certificates.
    Cert {
        #[command(subcommand)]
        command: CertCommand,
    },
    /// Data placement tools.
    Ring {
        #[command(subcommand)]
        command: RingCommand,
    },
    /// Change the cluster's membership (needs the operator token).
    Cluster {
        #[command(subcommand)]
        command: ClusterCommand,
    },
    /// Make tokens for --client-token-file and --operator-token-file.
    Token {
        #[command(subcommand)]
        command: TokenCommand,
    },
}

#[derive(Subcommand, Debug)]
enum TokenCommand {
    /// Write a new random token (256 bits, as hex) to a new file readable by its owner only.
    New {
        /// The file to create (never overwritten).
        #[arg(long)]
        out: PathBuf,
    },
}

/// Where an operator command is sent, and its credential.
#[derive(Args, Debug)]
struct OperatorArgs {
    /// HTTP address of the node to ask (`https://HOST:PORT` for a node serving HTTPS).
    #[arg(long, default_value = "http://127.0.0.1:7200")]
    http: String,
    /// For an https:// node: the CA certificate its HTTPS certificate must chain to
    /// [default: chorus-dev/ca/ca.pem].
    #[arg(long, value_name = "FILE")]
    ca: Option<PathBuf>,
    /// File holding the operator token [default: $CHORUS_OPERATOR_TOKEN, else
    /// chorus-dev/operator.token].
    #[arg(long)]
    operator_token_file: Option<PathBuf>,
}

#[derive(Subcommand, Debug)]
enum ClusterCommand {
    /// The node at --http leaves the cluster for good: it hands its partitions over and exits.
    Leave(OperatorArgs),
    /// Cancel the leave of the node at --http while it is still handing its partitions over:
    /// it stays a member and keeps its partitions.
    CancelLeave(OperatorArgs),
    /// Write off a dead node for good: its partitions move to the others. Refused for a node
    /// that is not down, unless --force. The removal is signed with the cluster CA key, which
    /// every node checks: no node can remove another on its own.
    Remove {
        /// The node's id (16 hex digits, as `chorus status` shows).
        node: String,
        /// Remove it even if it is not seen down (its machine is gone for good: a removed node
        /// that still runs stops without handing its data off).
        #[arg(long)]
        force: bool,
        /// The cluster CA's directory (ca.pem, ca.key, as `chorus cert ca` made it), whose key
        /// signs the removal [default: $CHORUS_CA_DIR, else chorus-dev/ca].
        #[arg(long)]
        operator_ca: Option<PathBuf>,
        #[command(flatten)]
        target: OperatorArgs,
    },
}

#[derive(Args, Debug)]
struct StartArgs {
    /// TOML file with any of: data_dir, listen, http, join (list), tls_dir, http_tls_dir, sync,
    /// anti_entropy_interval, tombstone_gc_interval, tombstone_gc_quiet, request_timeout_max,
    /// siblings_max, client_token_file, operator_token_file, http_hosts (list).
    /// Flags win.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Directory for the node's id, metadata and data.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// QUIC endpoint (UDP) for peers, e.g. 127.0.0.1:7100.
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// HTTP API endpoint, e.g. 127.0.0.1:7200.
    #[arg(long)]
    http: Option<SocketAddr>,
    /// QUIC address of a node to join through (repeatable).
    #[arg(long)]
    join: Vec<SocketAddr>,
    /// Directory with ca.pem, node.pem and node.key [default: <data-dir>/tls].
    #[arg(long)]
    tls_dir: Option<PathBuf>,
    /// Serve the HTTP API over HTTPS only, with the certificate in this directory: cert.pem
    /// (the chain, leaf first) and key.pem, or a node directory from `chorus cert issue`
    /// (node.pem, node.key; issue it with every name and IP address clients use, --san).
    /// Default: plain HTTP.
    #[arg(long, value_name = "DIR")]
    http_tls_dir: Option<PathBuf>,
    /// When data writes count as durable: `always` syncs the write-ahead log before a write is
    /// acknowledged (many writes share one sync); `never` skips the sync (benchmarks only: a
    /// machine crash may lose acknowledged writes). Default: always.
    #[arg(long)]
    sync: Option<SyncPolicy>,
    /// Keep no hints for unreachable replicas: they catch up by anti-entropy only (for
    /// testing repair; hints are on by default).
    #[arg(long)]
    no_hints: bool,
    /// Do not repair stale replicas found by reads (for testing anti-entropy).
    #[arg(long)]
    no_read_repair: bool,
    /// Seconds between Merkle-tree exchanges of each partition with another replica
    /// (0: periodic anti-entropy off; `chorus repair` still works). Default: 60.
    #[arg(long)]
    anti_entropy_interval: Option<u64>,
    /// Seconds between looks at each partition's deleted keys for tombstones every member
    /// agrees to purge (0: never purge). Default: 60.
    #[arg(long)]
    tombstone_gc_interval: Option<u64>,
    /// Seconds during which nothing of a key may have been sent between nodes before its
    /// tombstone may be purged; twice --request-timeout-max is used if that is longer. It must
    /// exceed how long a message between nodes can be in transit (60 s for this transport).
    /// Default: 300.
    #[arg(long)]
    tombstone_gc_quiet: Option<u64>,
    /// The longest timeout (seconds) a client request may ask for. Default: 120.
    #[arg(long)]
    request_timeout_max: Option<u64>,
    /// Most concurrent values (siblings) a register write may leave a key with; a write that
    /// would leave more is refused (413) until a client resolves them by writing with the
    /// context of a read (0: no bound). Default: 100.
    #[arg(long)]
    siblings_max: Option<usize>,
    /// File holding the token clients must present: `Authorization: Bearer <token>` over HTTP
    /// (every endpoint but /health), in each lane's hello over QUIC. Default: no token, and
    /// then HTTP and QUIC client lanes serve loopback only.
    #[arg(long)]
    client_token_file: Option<PathBuf>,
    /// File holding the operator token: the only credential for leave, remove and repair
    /// (without it they are refused). The file must be readable by its owner only; a token has
    /// at least 32 characters (`chorus token new --out FILE` writes one).
    #[arg(long)]
    operator_token_file: Option<PathBuf>,
    /// A host name clients use to reach this node's HTTP API (repeatable): requests naming
    /// any other host than these, IP addresses and localhost are refused (DNS rebinding).
    #[arg(long = "http-host", value_name = "NAME")]
    http_hosts: Vec<String>,
    /// Record no metrics (`GET /metrics` answers 404); for measuring their overhead.
    #[arg(long)]
    no_metrics: bool,
    /// Log format on stderr: text, or json (one JSON object per line).
    #[arg(long, default_value = "text")]
    log_format: LogFormat,
    #[command(flatten)]
    connections: ConnectionArgs,
}

/// `chorus start`'s connection caps and timeouts.
#[derive(Args, Debug)]
struct ConnectionArgs {
    /// Seconds an HTTP connection may take to send a request's headers, counted from when it
    /// is ready for one: an idle keep-alive connection is closed after this too. Default: 10.
    #[arg(long, value_name = "SECONDS")]
    http_header_timeout: Option<u64>,
    /// Seconds an HTTP request's body may take to arrive after its headers. Default: 30.
    #[arg(long, value_name = "SECONDS")]
    http_body_timeout: Option<u64>,
    /// With --http-tls-dir: seconds a new connection may take to complete its TLS handshake.
    /// Default: 10.
    #[arg(long, value_name = "SECONDS")]
    http_tls_handshake_timeout: Option<u64>,
    /// HTTP connections open at once. Default, and upper bound: what the open-file limit
    /// leaves once RocksDB's share and a reserve are set aside (logged at start).
    #[arg(long, value_name = "N")]
    http_connections_max: Option<usize>,
    /// HTTP connections one source address may hold. Default: 256.
    #[arg(long, value_name = "N")]
    http_connections_per_address_max: Option<usize>,
    /// QUIC client connections open at once. Default: 1024.
    #[arg(long, value_name = "N")]
    quic_clients_max: Option<usize>,
    /// QUIC client connections one source address may hold. Default: 64.
    #[arg(long, value_name = "N")]
    quic_clients_per_address_max: Option<usize>,
    /// Seconds after which a QUIC client connection with nothing in flight that sent nothing
    /// is closed (clients reconnect on their next request). Default: 120.
    #[arg(long, value_name = "SECONDS")]
    quic_client_idle_timeout: Option<u64>,
    /// Requests one QUIC client connection may have in flight over all its lanes (the node
    /// serves 8,192 at once from all clients together). Default: 1024.
    #[arg(long, value_name = "N")]
    quic_connection_in_flight_max: Option<usize>,
    /// QUIC client connections that may be waiting for their hello at once, from all
    /// addresses together; a new one beyond closes the oldest waiting one (so connections
    /// that never authenticate cannot take the client slots). Default: 128.
    #[arg(long, value_name = "N")]
    quic_clients_unverified_max: Option<usize>,
}

impl ConnectionArgs {
    fn options(&self) -> Result<chorus::runtime::ConnectionOptions, String> {
        let d = chorus::runtime::ConnectionOptions::default();
        let secs = |v: Option<u64>, flag: &str, default: Duration| match v {
            None => Ok(default),
            Some(0) => Err(format!("--{flag} must be at least 1 second")),
            Some(s) => Ok(Duration::from_secs(s)),
        };
        let count = |v: Option<usize>, flag: &str, default: usize| match v {
            None => Ok(default),
            Some(0) => Err(format!("--{flag} must be at least 1")),
            Some(n) => Ok(n),
        };
        Ok(chorus::runtime::ConnectionOptions {
            http_header_timeout: secs(
                self.http_header_timeout,
                "http-header-timeout",
                d.http_header_timeout,
            )?,
            http_body_timeout: secs(
                self.http_body_timeout,
                "http-body-timeout",
                d.http_body_timeout,
            )?,
            http_tls_handshake_timeout: secs(
                self.http_tls_handshake_timeout,
                "http-tls-handshake-timeout",
                d.http_tls_handshake_timeout,
            )?,
            http_connections_max: match self.http_connections_max {
                Some(0) => return Err("--http-connections-max must be at least 1".into()),
                n => n,
            },
            http_connections_per_address_max: count(
                self.http_connections_per_address_max,
                "http-connections-per-address-max",
                d.http_connections_per_address_max,
            )?,
            quic_clients_max: count(
                self.quic_clients_max,
                "quic-clients-max",
                d.quic_clients_max,
            )?,
            quic_clients_per_address_max: count(
                self.quic_clients_per_address_max,
                "quic-clients-per-address-max",
                d.quic_clients_per_address_max,
            )?,
            quic_client_idle_timeout: secs(
                self.quic_client_idle_timeout,
                "quic-client-idle-timeout",
                d.quic_client_idle_timeout,
            )?,
            quic_connection_in_flight_max: count(
                self.quic_connection_in_flight_max,
                "quic-connection-in-flight-max",
                d.quic_connection_in_flight_max,
            )?,
            quic_clients_unverified_max: count(
                self.quic_clients_unverified_max,
                "quic-clients-unverified-max",
                d.quic_clients_unverified_max,
            )?,
        })
    }
}

/// How `chorus start` writes its logs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

/// The `chorus start` config file.
#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
struct StartFile {
    data_dir: Option<PathBuf>,
    listen: Option<SocketAddr>,
    http: Option<SocketAddr>,
    #[serde(default)]
    join: Vec<SocketAddr>,
    tls_dir: Option<PathBuf>,
    http_tls_dir: Option<PathBuf>,
    sync: Option<String>,
    anti_entropy_interval: Option<u64>,
    tombstone_gc_interval: Option<u64>,
    tombstone_gc_quiet: Option<u64>,
    request_timeout_max: Option<u64>,
    siblings_max: Option<usize>,
    client_token_file: Option<PathBuf>,
    operator_token_file: Option<PathBuf>,
    #[serde(default)]
    http_hosts: Vec<String>,
}

#[derive(Args, Debug)]
struct DevArgs {
    /// Number of nodes.
    #[arg(long, default_value_t = 3)]
    nodes: u16,
    /// Node i uses QUIC port P+i and HTTP port P+100+i.
    #[arg(long, default_value_t = 7100)]
    base_port: u16,
    /// Directory for the CA and the nodes' data.
    #[arg(long, default_value = "chorus-dev")]
    dir: PathBuf,
    /// Seconds to wait for the cluster to form.
    #[arg(long, default_value_t = 60)]
    timeout: u64,
    /// The nodes' sync policy: always (fsync before acknowledging) or never (benchmarks).
    #[arg(long, default_value = "always")]
    sync: SyncPolicy,
    /// Seconds between the nodes' Merkle-tree exchanges of each partition (0: off).
    #[arg(long, default_value_t = 60)]
    anti_entropy_interval: u64,
    /// Start the nodes without metrics (to measure what metrics cost).
    #[arg(long)]
    no_metrics: bool,
}

#[derive(Args, Debug)]
struct BenchArgs {
    /// HTTP address of any node (`https://IP:PORT` for nodes serving HTTPS); the benchmark
    /// spreads over every live member.
    #[arg(long, alias = "node", default_value = "http://127.0.0.1:7200")]
    http: String,
    /// Operation mix: a (50% read / 50% update), b (95/5), c (read only), w (update only),
    /// counter (G-Counter increments over `--records` counters; no load phase). A comma list
    /// (`a,c`) runs each in turn on the same data set.
    #[arg(long, default_value = "a", value_delimiter = ',')]
    workload: Vec<Workload>,
    /// quic or http; a comma list (`quic,http`) runs every workload over each, in one run.
    #[arg(long, default_value = "http", value_delimiter = ',')]
    protocol: Vec<Protocol>,
    /// The cluster CA certificate, for QUIC, and for https:// the CA the nodes' HTTPS
    /// certificates chain to [default: chorus-dev/ca/ca.pem].
    #[arg(long, value_name = "FILE")]
    ca: Option<PathBuf>,
    /// File holding the client token, if the nodes require one (or set CHORUS_TOKEN).
    #[arg(long, value_name = "FILE")]
    token_file: Option<PathBuf>,
    /// Keys in the data set.
    #[arg(long, default_value_t = 10_000)]
    records: u64,
    /// Bytes per value.
    #[arg(long, default_value_t = 1024)]
    value_size: usize,
    /// Key distribution: zipfian or uniform.
    #[arg(long, default_value = "zipfian")]
    distribution: Distribution,
    /// Concurrent keep-alive connections.
    #[arg(long, default_value_t = 32)]
    connections: usize,
    /// Length of the run phase (e.g. 30s, 2m).
    #[arg(long, default_value = "30s", value_parser = bench::parse_duration)]
    duration: Duration,
    /// Open loop: this many operations per second, latency measured from the intended send
    /// time (default: closed loop).
    #[arg(long)]
    rate: Option<f64>,
    /// Skip the load phase (the records are already there).
    #[arg(long)]
    no_load: bool,
    /// Request options for every request, e.g. `w=3&r=1` (r, w, strict, timeout_ms).
    #[arg(long, default_value = "")]
    query: String,
    /// Seed of the key and operation choices.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Print the summary as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Args, Debug)]
struct StatusArgs {
    /// HTTP address of any node (`https://HOST:PORT` for a node serving HTTPS).
    #[arg(long, default_value = "http://127.0.0.1:7200")]
    http: String,
    /// For an https:// node: the CA certificate its HTTPS certificate must chain to
    /// [default: chorus-dev/ca/ca.pem].
    #[arg(long, value_name = "FILE")]
    ca: Option<PathBuf>,
    /// Print the raw JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Args, Debug)]
struct RepairArgs {
    /// HTTP address of the node to repair from (`https://HOST:PORT` for HTTPS).
    #[arg(long, default_value = "http://127.0.0.1:7200")]
    http: String,
    /// For an https:// node: the CA certificate its HTTPS certificate must chain to
    /// [default: chorus-dev/ca/ca.pem].
    #[arg(long, value_name = "FILE")]
    ca: Option<PathBuf>,
    /// Repair only this partition.
    #[arg(long)]
    partition: Option<u16>,
    /// Start the repair and return without waiting for it.
    #[arg(long)]
    no_wait: bool,
    /// Give up waiting after this many seconds (the repair goes on).
    #[arg(long, default_value_t = 3600)]
    timeout_secs: u64,
    /// File holding the operator token [default: $CHORUS_OPERATOR_TOKEN, else
    /// chorus-dev/operator.token].
    #[arg(long)]
    operator_token_file: Option<PathBuf>,
}

/// `chorus cert issue --role`.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum CertRoleArg {
    /// A node certificate: the only kind that may speak the peer protocol.
    Node,
    /// A client certificate: client authentication only.
    Client,
}

#[derive(Subcommand, Debug)]
enum CertCommand {
    /// Create a new cluster CA (ca.pem, ca.key) in DIR.
    Ca {
        /// Where to write the CA.
        #[arg(long)]
        dir: PathBuf,
    },
    /// Issue a certificate signed by the CA in --ca into --out: a node certificate (node.pem,
    /// node.key, ca.pem) or, with --role client, a client certificate (client.pem, client.key,
    /// ca.pem) that can never speak the peer protocol.
    Issue {
        /// Directory holding the CA.
        #[arg(long)]
        ca: PathBuf,
        /// Name to put in the certificate (e.g. the host name; a DNS name or an IP address).
        #[arg(long)]
        name: String,
        /// Another DNS name or IP address for the node certificate (repeatable): every name
        /// HTTPS clients use to reach the node (`chorus start --http-tls-dir` can serve this
        /// certificate), including the IP address of its --http.
        #[arg(long = "san", value_name = "NAME")]
        sans: Vec<String>,
        /// Output directory: give a node's to `chorus start --tls-dir`.
        #[arg(long)]
        out: PathBuf,
        /// What the certificate is for: `node` (peers) or `client`.
        #[arg(long, value_enum, default_value_t = CertRoleArg::Node)]
        role: CertRoleArg,
    },
}

#[derive(Subcommand, Debug)]
enum RingCommand {
    /// Dry run of placement: per-member load, imbalance, and what a membership change moves.
    Plan(PlanArgs),
}

#[derive(Args, Debug)]
struct PlanArgs {
    /// Members of the sample cluster (ids derived from their index).
    #[arg(long, required_unless_present = "live", conflicts_with = "live")]
    members: Option<u32>,
    /// Plan against the running cluster this node (its HTTP address) is part of: which
    /// partition replicas and how many bytes `--add` or `--leave` would move. Asks every
    /// member for its partition sizes, which reads every key it holds.
    #[arg(long, value_name = "http://IP:PORT")]
    live: Option<String>,
    /// With an https:// --live node: the CA certificate the nodes' HTTPS certificates chain
    /// to [default: chorus-dev/ca/ca.pem].
    #[arg(long, requires = "live", value_name = "FILE")]
    ca: Option<PathBuf>,
    /// With --live: the node (16 hex digits) whose leave to plan.
    #[arg(long, requires = "live", conflicts_with = "add")]
    leave: Option<String>,
    /// Show the effect of adding this many members.
    #[arg(long, conflicts_with = "remove")]
    add: Option<u32>,
    /// Show the effect of removing this many members.
    #[arg(long)]
    remove: Option<u32>,
    /// Replicas per key (N).
    #[arg(long, default_value_t = plan::DEFAULT_REPLICAS)]
    n: u32,
    /// Number of partitions (Q).
    #[arg(long, default_value_t = DEFAULT_PARTITIONS)]
    partitions: u32,
    /// Virtual nodes per member (V).
    #[arg(long, default_value_t = DEFAULT_VNODES)]
    vnodes: u32,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    json: bool,
}

fn ring_plan(args: PlanArgs) -> Result<(), String> {
    if let Some(live) = &args.live {
        return ring_plan_live(live, &args);
    }
    let members = args.members.ok_or("--members or --live is required")?;
    if args.leave.is_some() {
        return Err("--leave plans a live cluster: use it with --live".into());
    }
    let mut request = PlanRequest::new(members);
    request.replicas = args.n;
    request.partitions = args.partitions;
    request.vnodes = args.vnodes;
    if let Some(k) = args.add {
        request = request.with_change(Change::Add(k));
    }
    if let Some(k) = args.remove {
        request = request.with_change(Change::Remove(k));
    }
    let report = plan::plan(&request).map_err(|e| e.to_string())?;
    if args.json {
        let json = serde_json::to_string_pretty(&report).map_err(|e| e.to_string())?;
        println!("{json}");
    } else {
        print!("{report}");
    }
    Ok(())
}

/// `chorus ring plan --live`: the running cluster's ring, changed by `--add K` (sample ids, as
/// a new node's id is drawn when it starts) or `--leave ID`.
fn ring_plan_live(live: &str, args: &PlanArgs) -> Result<(), String> {
    use chorus::ring::{Member, PartitionId, Ring, RingConfig};
    if args.remove.is_some() {
        return Err("with --live, plan a departure with --leave ID".into());
    }
    // Target::new names the flag it usually reads; here the address came with --live.
    let target = Target::new(live, args.ca.as_deref(), Duration::from_secs(600))
        .map_err(|e| e.replacen("--http", "--live", 1))?;
    let view = target
        .cluster()
        .map_err(|e| format!("cannot reach {live}: {e}"))?;
    let config = RingConfig::new(view.ring.partitions, view.ring.vnodes)
        .map_err(|e| format!("the cluster reports an invalid ring: {e}"))?;
    let parse =
        |id: &str| -> Result<NodeId, String> { id.parse::<NodeId>().map_err(|e| e.to_string()) };
    let owners: Vec<&chorus::node::MemberView> = view
        .members
        .iter()
        .filter(|m| m.status.owns_partitions())
        .collect();
    let ids = owners
        .iter()
        .map(|m| parse(&m.id))
        .collect::<Result<Vec<_>, _>>()?;
    if ids.is_empty() {
        return Err("the cluster has no members yet".into());
    }
    let mut after = ids.clone();
    match (&args.leave, args.add) {
        (Some(leave), _) => {
            let id = parse(leave)?;
            if !after.contains(&id) {
                return Err(format!("{leave} is not a member of the ring"));
            }
            after.retain(|&m| m != id);
            if after.is_empty() {
                return Err("the last member cannot leave".into());
            }
        }
        (None, Some(k)) if k > 0 => {
            let mut i = 0;
            while after.len() < ids.len() + k as usize {
                let id = plan::sample_member_id(i);
                if !after.contains(&id) {
                    after.push(id);
                }
                i += 1;
            }
        }
        _ => return Err("with --live, give --add K or --leave ID".into()),
    }
    let old = Ring::new(ids.iter().copied().map(Member::new), config).map_err(|e| e.to_string())?;
    let new =
        Ring::new(after.iter().copied().map(Member::new), config).map_err(|e| e.to_string())?;
    // The largest copy of each partition any current member reports.
    let mut sizes: BTreeMap<PartitionId, u64> = BTreeMap::new();
    for m in &owners {
        let url = target.member_url(m.http_addr, "/v1/partitions?bytes=true");
        match http_json::<Vec<PartitionInfo>>(
            dev::with_token(target.agent.get(&url)).call(),
            "partitions",
        ) {
            Ok(parts) => {
                for p in parts {
                    if let Some(b) = p.bytes {
                        let e = sizes.entry(PartitionId::new(p.partition)).or_default();
                        *e = (*e).max(b);
                    }
                }
            }
            Err(e) => eprintln!("{} ({}): no partition sizes: {e}", m.id, m.http_addr),
        }
    }
    let report = plan::LivePlan::of(&old, &new, view.ring.n, &sizes);
    if args.json {
        let json = serde_json::to_string_pretty(&report).map_err(|e| e.to_string())?;
        println!("{json}");
    } else {
        print!("{report}");
    }
    Ok(())
}

fn start(args: StartArgs) -> Result<(), String> {
    let file = match &args.config {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
            toml::from_str::<StartFile>(&text)
                .map_err(|e| format!("invalid config {}: {e}", path.display()))?
        }
        None => StartFile::default(),
    };
    let missing = |what: &str| {
        format!(
            "--{what} is required (or `{}` in --config)",
            what.replace('-', "_")
        )
    };
    let options = NodeOptions {
        data_dir: args
            .data_dir
            .or(file.data_dir)
            .ok_or_else(|| missing("data-dir"))?,
        listen: args
            .listen
            .or(file.listen)
            .ok_or_else(|| missing("listen"))?,
        http: args.http.or(file.http).ok_or_else(|| missing("http"))?,
        join: if args.join.is_empty() {
            file.join
        } else {
            args.join
        },
        tls_dir: args.tls_dir.or(file.tls_dir),
        http_tls_dir: args.http_tls_dir.or(file.http_tls_dir),
        sync: match (args.sync, file.sync) {
            (Some(s), _) => s,
            (None, Some(s)) => s.parse().map_err(|e| format!("sync in --config: {e}"))?,
            (None, None) => SyncPolicy::Always,
        },
        hints: !args.no_hints,
        read_repair: !args.no_read_repair,
        anti_entropy_interval: match args
            .anti_entropy_interval
            .or(file.anti_entropy_interval)
            .unwrap_or(60)
        {
            0 => None,
            s => Some(Duration::from_secs(s)),
        },
        tombstone_gc_interval: match args
            .tombstone_gc_interval
            .or(file.tombstone_gc_interval)
            .unwrap_or(60)
        {
            0 => None,
            s => Some(Duration::from_secs(s)),
        },
        tombstone_gc_quiet: Duration::from_secs(
            args.tombstone_gc_quiet
                .or(file.tombstone_gc_quiet)
                .unwrap_or(300),
        ),
        request_timeout_max: Duration::from_secs(
            args.request_timeout_max
                .or(file.request_timeout_max)
                .unwrap_or(120)
                .max(1),
        ),
        siblings_max: args
            .siblings_max
            .or(file.siblings_max)
            .unwrap_or(chorus::node::SIBLINGS_MAX_DEFAULT),
        client_token: match args.client_token_file.or(file.client_token_file) {
            Some(path) => Some(Token::load(&path).map_err(|e| e.to_string())?),
            None => None,
        },
        operator_token: match args.operator_token_file.or(file.operator_token_file) {
            Some(path) => Some(Token::load(&path).map_err(|e| e.to_string())?),
            None => None,
        },
        http_hosts: if args.http_hosts.is_empty() {
            file.http_hosts
        } else {
            args.http_hosts
        },
        metrics: !args.no_metrics,
        connections: args.connections.options()?,
    };
    chorus::runtime::run_blocking(options).map_err(|e| e.to_string())
}

fn bench_cmd(args: BenchArgs) -> Result<(), String> {
    use std::io::IsTerminal;
    let url = NodeUrl::parse(&args.http).map_err(|e| format!("--http {e}"))?;
    let ca_pem = if args.protocol.contains(&Protocol::Quic) || url.https {
        let path = args
            .ca
            .clone()
            .unwrap_or_else(|| PathBuf::from(DEV_CA_FILE));
        Some(std::fs::read_to_string(&path).map_err(|e| {
            format!(
                "cannot read the cluster CA {} (give --ca FILE): {e}",
                path.display()
            )
        })?)
    } else {
        None
    };
    let token = match &args.token_file {
        Some(p) => Some(
            std::fs::read_to_string(p)
                .map_err(|e| format!("cannot read {}: {e}", p.display()))?
                .trim()
                .to_owned(),
        ),
        None => dev::env_token(),
    };
    let runs: Vec<(Workload, Protocol)> = args
        .workload
        .iter()
        .flat_map(|&w| args.protocol.iter().map(move |&p| (w, p)))
        .collect();
    let reports = bench::run_many(
        BenchOptions {
            http: url.addr,
            https: url.https,
            protocol: args.protocol.first().copied().unwrap_or(Protocol::Http),
            ca_pem,
            token,
            workload: args.workload.first().copied().unwrap_or(Workload::A),
            records: args.records,
            value_size: args.value_size,
            distribution: args.distribution,
            connections: args.connections,
            duration: args.duration,
            rate: args.rate,
            load: !args.no_load,
            query: args.query,
            progress: std::io::stderr().is_terminal() && !args.json,
            seed: args.seed,
        },
        &runs,
    )
    .map_err(|e| e.to_string())?;
    if args.json {
        let json = match reports.as_slice() {
            [one] => serde_json::to_string_pretty(one),
            all => serde_json::to_string_pretty(all),
        };
        println!("{}", json.map_err(|e| e.to_string())?);
        return Ok(());
    }
    for r in &reports {
        print!("{r}");
    }
    if reports.len() > 1 {
        println!("\nsummary (run phase):");
        println!(
            "{:<10} {:<6} {:>10} {:>11} {:>11} {:>7}",
            "WORKLOAD", "PROTO", "OPS/S", "READ P99", "UPDATE P99", "ERRORS"
        );
        for r in &reports {
            let p99 = |op: &str| {
                r.run
                    .ops
                    .get(op)
                    .map_or("-".to_string(), |s| format!("{:.2} ms", s.p99_ms))
            };
            println!(
                "{:<10} {:<6} {:>10.0} {:>11} {:>11} {:>7}",
                format!("{:?}", r.workload),
                r.protocol.to_string(),
                r.run.throughput,
                p99("read"),
                p99("update"),
                r.run.errors.values().sum::<u64>()
            );
        }
    }
    Ok(())
}

fn status(args: StatusArgs) -> Result<(), String> {
    let target = Target::new(&args.http, args.ca.as_deref(), Duration::from_secs(5))?;
    let view = target
        .cluster()
        .map_err(|e| format!("cannot reach {}: {e}", args.http))?;
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&view).map_err(|e| e.to_string())?
        );
        return Ok(());
    }
    println!(
        "node {} | ring: {} partitions, n={}, {} vnodes",
        view.node_id, view.ring.partitions, view.ring.n, view.ring.vnodes
    );
    println!(
        "{:<18} {:<22} {:<22} {:<8} {:<8} {:>4} {:>10}",
        "ID", "QUIC", "HTTP", "LIVENESS", "STATUS", "INC", "PARTITIONS"
    );
    for m in &view.members {
        let liveness = match m.liveness {
            Liveness::Alive => "alive",
            Liveness::Suspect => "suspect",
            Liveness::Down => "down",
        };
        println!(
            "{:<18} {:<22} {:<22} {:<8} {:<8} {:>4} {:>10}",
            m.id,
            m.quic_addr.to_string(),
            m.http_addr.to_string(),
            liveness,
            m.status.as_str(),
            m.incarnation,
            m.partitions
        );
    }
    if let Some(d) = &view.data {
        println!(
            "data on {}: {} hints held, {} handoff pushes pending, {} keys contested here",
            view.node_id, d.hints_pending, d.handoff_pending, d.type_conflicts
        );
        // What must not pass unnoticed: states not stored, operation ids forgotten early.
        if d.merges_refused + d.sends_refused > 0 {
            println!(
                "warning: {} merges refused here and {} hints or handoff keys refused by other nodes (each kept and retried): a key's merged state is over the stored limit; resolve its siblings",
                d.merges_refused, d.sends_refused
            );
        }
        if d.op_ids_forgotten_early + d.op_ids_forgotten_unstable > 0 {
            println!(
                "warning: {} operation ids forgotten within their retry window and {} before every replica held them (hot keys at the op-log memory bound): a retry of one may count again",
                d.op_ids_forgotten_early, d.op_ids_forgotten_unstable
            );
        }
    }
    // Anti-entropy at a glance (older nodes without the endpoint are skipped).
    if let Ok(parts) = http_json::<Vec<PartitionInfo>>(
        dev::with_token(target.agent.get(target.url("/v1/partitions"))).call(),
        "partitions",
    ) {
        let keys: u64 = parts.iter().map(|p| p.keys).sum();
        let repaired: u64 = parts.iter().map(|p| p.keys_repaired).sum();
        let bytes: u64 = parts.iter().map(|p| p.bytes_sent).sum();
        let never = parts.iter().filter(|p| p.last_exchange.is_none()).count();
        let oldest = parts.iter().filter_map(|p| p.last_exchange).max();
        println!(
            "anti-entropy on {}: {} partitions, {keys} keys; oldest exchange {}; {never} never exchanged; {repaired} keys repaired, {bytes} bytes sent",
            view.node_id,
            parts.len(),
            oldest.map_or_else(|| "none yet".to_owned(), |s| format!("{s} s ago")),
        );
    }
    Ok(())
}

/// Where the CLI's admin commands find the CA certificate for `https://` nodes when `--ca` is
/// not given: the local development cluster's.
const DEV_CA_FILE: &str = "chorus-dev/ca/ca.pem";

/// The node an admin command talks to: its URL, and an agent that speaks its scheme.
struct Target {
    url: NodeUrl,
    agent: ureq::Agent,
}

impl Target {
    /// `flag`: an `--http` value (`http://…` or `https://…`); `ca`: the `--ca` value, read
    /// for `https://` only.
    fn new(flag: &str, ca: Option<&Path>, timeout: Duration) -> Result<Target, String> {
        let url = NodeUrl::parse(flag).map_err(|e| format!("--http {e}"))?;
        let ca_pem = if url.https { Some(read_ca(ca)?) } else { None };
        Ok(Target {
            agent: http_agent(timeout, ca_pem.as_deref())?,
            url,
        })
    }

    /// The URL of `path` on this node.
    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.url.base())
    }

    /// The URL of `path` on a member at its reported HTTP address, with this node's scheme
    /// (every node of a cluster serves the same one).
    fn member_url(&self, addr: SocketAddr, path: &str) -> String {
        format!("{}://{addr}{path}", self.url.scheme())
    }

    /// `GET /v1/cluster`.
    fn cluster(&self) -> Result<chorus::node::ClusterView, String> {
        http_json(
            dev::with_token(self.agent.get(self.url("/v1/cluster"))).call(),
            "GET /v1/cluster",
        )
    }
}

/// The CA certificate (PEM) for `https://` nodes: `--ca`, else the development cluster's.
fn read_ca(ca: Option<&Path>) -> Result<String, String> {
    let path = ca.map_or_else(|| PathBuf::from(DEV_CA_FILE), Path::to_path_buf);
    std::fs::read_to_string(&path).map_err(|e| {
        format!(
            "cannot read the CA certificate {} for https:// (give --ca FILE): {e}",
            path.display()
        )
    })
}

/// An agent with a global timeout that hands error statuses back as answers; with `ca_pem`,
/// it trusts only those CA certificates for `https://` (ring, no system roots).
fn http_agent(timeout: Duration, ca_pem: Option<&str>) -> Result<ureq::Agent, String> {
    let mut config = ureq::Agent::config_builder()
        .timeout_global(Some(timeout))
        .http_status_as_error(false);
    if let Some(pem) = ca_pem {
        let certs = chorus::client::https::ca_certs(pem).map_err(|e| e.message)?;
        let roots: Vec<ureq::tls::Certificate<'static>> = certs
            .iter()
            .map(|c| ureq::tls::Certificate::from_der(c.as_ref()).to_owned())
            .collect();
        config = config.tls_config(
            ureq::tls::TlsConfig::builder()
                .provider(ureq::tls::TlsProvider::Rustls)
                .root_certs(ureq::tls::RootCerts::new_with_certs(&roots))
                .unversioned_rustls_crypto_provider(std::sync::Arc::new(
                    rustls::crypto::ring::default_provider(),
                ))
                .build(),
        );
    }
    Ok(config.build().into())
}

/// A ureq failure in plain words (TLS failures explained).
fn ureq_error(e: &ureq::Error) -> String {
    match e {
        ureq::Error::Rustls(tls) => chorus::client::https::explain_tls_error(tls),
        ureq::Error::Io(io) => chorus::client::https::explain_io_error(io),
        other => other.to_string(),
    }
}

/// Sends a request and decodes the JSON answer, turning an error answer into its message.
fn http_json<T: serde::de::DeserializeOwned>(
    response: Result<ureq::http::Response<ureq::Body>, ureq::Error>,
    what: &str,
) -> Result<T, String> {
    let mut response = response.map_err(|e| format!("{what}: {}", ureq_error(&e)))?;
    let status = response.status();
    let body = response
        .body_mut()
        .read_to_string()
        .map_err(|e| format!("{what}: {}", ureq_error(&e)))?;
    if !status.is_success() {
        let message = serde_json::from_str::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| v.get("message").and_then(|m| m.as_str()).map(str::to_owned))
            .unwrap_or(body);
        return Err(format!("{what}: {status}: {message}"));
    }
    serde_json::from_str(&body).map_err(|e| format!("{what}: unexpected answer: {e}"))
}

fn repair(args: RepairArgs) -> Result<(), String> {
    let target = Target::new(&args.http, args.ca.as_deref(), Duration::from_secs(10))?;
    let addr = target.url.authority();
    let agent = &target.agent;
    let mut url = target.url("/v1/repair");
    if let Some(p) = args.partition {
        url.push_str(&format!("?partition={p}"));
    }
    let operator = dev::operator_token(args.operator_token_file.as_deref())?;
    let started: RepairProgress = http_json(
        dev::with_operator(agent.post(&url), &operator).send_empty(),
        "starting the repair",
    )?;
    println!(
        "repair {} started on {addr}: {} partitions",
        started.id, started.partitions
    );
    if args.no_wait {
        return Ok(());
    }
    let begun = std::time::Instant::now();
    let deadline = begun + Duration::from_secs(args.timeout_secs);
    let mut last = None;
    loop {
        let p: RepairProgress = http_json(
            dev::with_token(agent.get(target.url(&format!("/v1/repair/{}", started.id)))).call(),
            "reading the repair's progress",
        )?;
        let line = format!(
            "partitions {}/{} | keys repaired {} | bytes sent {}{}",
            p.partitions_done,
            p.partitions,
            p.keys_repaired,
            p.bytes_sent,
            if p.exchanges_failed > 0 {
                format!(" | exchanges failed {}", p.exchanges_failed)
            } else {
                String::new()
            }
        );
        if last.as_ref() != Some(&line) {
            println!("{line}");
            last = Some(line);
        }
        if p.done {
            println!(
                "repair {} finished in {:.1} s",
                p.id,
                begun.elapsed().as_secs_f64()
            );
            return if p.exchanges_failed > 0 {
                Err(format!(
                    "{} exchanges failed (a replica was unreachable); run the repair again",
                    p.exchanges_failed
                ))
            } else {
                Ok(())
            };
        }
        if std::time::Instant::now() >= deadline {
            return Err(format!(
                "gave up waiting after {} s; the repair goes on (GET /v1/repair/{})",
                args.timeout_secs, p.id
            ));
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

fn cert(command: CertCommand) -> Result<(), String> {
    match command {
        CertCommand::Ca { dir } => {
            if dir.join("ca.key").exists() {
                return Err(format!(
                    "{} already holds a CA; refusing to overwrite it",
                    dir.display()
                ));
            }
            std::fs::create_dir_all(&dir)
                .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
            let ca = ClusterCa::generate("Chorus cluster CA").map_err(|e| e.to_string())?;
            ca.save(&dir).map_err(|e| e.to_string())?;
            chorus::runtime::cluster_key::ensure(&dir).map_err(|e| e.to_string())?;
            println!(
                "created cluster CA in {} (keep ca.key and cluster.key secret)",
                dir.display()
            );
        }
        CertCommand::Issue {
            ca: ca_dir,
            name,
            sans,
            out,
            role,
        } => {
            if role == CertRoleArg::Client && !sans.is_empty() {
                return Err(
                    "--san is for node certificates (client certificates name no host)".into(),
                );
            }
            let ca = ClusterCa::load(&ca_dir).map_err(|e| e.to_string())?;
            std::fs::create_dir_all(&out)
                .map_err(|e| format!("cannot create {}: {e}", out.display()))?;
            match role {
                CertRoleArg::Node => {
                    let cert = ca
                        .issue_node_with_names(&name, &sans)
                        .map_err(|e| e.to_string())?;
                    cert.save(&out).map_err(|e| e.to_string())?;
                    TlsFiles::in_dir(&out).load().map_err(|e| e.to_string())?;
                    // The cluster's shared secret travels with the node certificate (a CA made
                    // before it existed gets one now). Client certificates never carry it.
                    chorus::runtime::cluster_key::ensure(&ca_dir).map_err(|e| e.to_string())?;
                    chorus::runtime::cluster_key::copy(&ca_dir, &out).map_err(|e| e.to_string())?;
                    println!("issued node certificate {name:?} in {}", out.display());
                }
                CertRoleArg::Client => {
                    let cert = ca.issue_client(&name).map_err(|e| e.to_string())?;
                    cert.save_client(&out).map_err(|e| e.to_string())?;
                    TlsFiles::client_in_dir(&out)
                        .load_client()
                        .map_err(|e| e.to_string())?;
                    println!("issued client certificate {name:?} in {}", out.display());
                }
            }
        }
    }
    Ok(())
}

fn cluster_cmd(command: ClusterCommand) -> Result<(), String> {
    let (target, path, what, body) = match &command {
        ClusterCommand::Leave(t) => (t, "/v1/cluster/leave".to_owned(), "leaving", None),
        ClusterCommand::CancelLeave(t) => {
            let node = Target::new(&t.http, t.ca.as_deref(), Duration::from_secs(10))?;
            let operator = dev::operator_token(t.operator_token_file.as_deref())?;
            let answer: serde_json::Value = http_json(
                dev::with_operator(node.agent.delete(node.url("/v1/cluster/leave")), &operator)
                    .call(),
                "cancelling the leave",
            )?;
            println!("{answer}");
            return Ok(());
        }
        ClusterCommand::Remove {
            node,
            force,
            operator_ca,
            target,
        } => {
            let id = node
                .parse::<chorus::id::NodeId>()
                .map_err(|e| format!("bad node id {node:?}: {e}"))?;
            (
                target,
                format!(
                    "/v1/cluster/remove/{id}{}",
                    if *force { "?force=true" } else { "" }
                ),
                "removing",
                Some(dev::removal_body(id, operator_ca.as_deref())?),
            )
        }
    };
    let node = Target::new(&target.http, target.ca.as_deref(), Duration::from_secs(10))?;
    let operator = dev::operator_token(target.operator_token_file.as_deref())?;
    let request = dev::with_operator(node.agent.post(node.url(&path)), &operator);
    let answer: serde_json::Value = http_json(
        match body {
            Some(body) => request
                .header("content-type", "application/json")
                .send(body),
            None => request.send_empty(),
        },
        what,
    )?;
    println!("{answer}");
    Ok(())
}

fn init_logging(format: LogFormat) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let fmt = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        // One JSON object per line, with the fields of every enclosing span (node id, request
        // id) flattened into it.
        LogFormat::Json => fmt
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .init(),
        LogFormat::Text => fmt
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init(),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Start(args) => {
            init_logging(args.log_format);
            start(*args)
        }
        Command::Dev(args) => dev::run(DevOptions {
            nodes: args.nodes,
            base_port: args.base_port,
            dir: args.dir,
            form_timeout: Duration::from_secs(args.timeout),
            sync: args.sync,
            anti_entropy_interval: args.anti_entropy_interval,
            no_metrics: args.no_metrics,
        })
        .map_err(|e| e.to_string()),
        Command::Bench(args) => bench_cmd(args),
        Command::Get(args) => return data_commands::get(args),
        Command::Put(args) => return data_commands::put(args),
        Command::Delete(args) => return data_commands::delete(args),
        Command::Counter { command } => return data_commands::counter(command),
        Command::Set { command } => return data_commands::set(command),
        Command::Status(args) => status(args),
        Command::Repair(args) => repair(args),
        Command::Cert { command } => cert(command),
        Command::Ring {
            command: RingCommand::Plan(args),
        } => ring_plan(args),
        Command::Cluster { command } => cluster_cmd(command),
        Command::Token {
            command: TokenCommand::New { out },
        } => chorus::api::auth::write_new_token(&out)
            .map(|()| println!("wrote a new token to {} (mode 600)", out.display()))
            .map_err(|e| format!("cannot write {}: {e}", out.display())),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
