//! The client side of the QUIC client API: one connection per node, a few lanes on it, each
//! with a writer task (requests written in batches) and a reader task (answers matched to
//! their requests by id). See [`crate::protocol::client`] for the protocol.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use quinn::crypto::rustls::QuicClientConfig;
use quinn::{Endpoint, IdleTimeout, RecvStream, SendStream, TransportConfig, VarInt};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use tokio::sync::{mpsc, oneshot};

use super::{Answer, Config, CrdtRead, Error, ErrorKind, Failure, Op, Options, Read, Updated};
use super::{Value, Written};
use crate::node::{ClientError, ClientOp, ClientReply, ClientRequest};
use crate::protocol::client::{
    decode_body, encode_frame, gather, ClientMessage, FrameBuffer, ServerMessage, HELLO_ID,
    NODE_SERVER_NAME,
};

/// Largest answer frame the client accepts (a read may carry several large siblings).
const ANSWER_BODY_MAX: usize = 64 * 1024 * 1024;

/// The QUIC client configuration the library connects with: TLS 1.3, the node's certificate
/// verified against `ca_pem` (the cluster CA, PEM) for the name every node certificate
/// carries, the client ALPN, no client certificate, keep-alive every 5 s.
pub fn quic_config(ca_pem: &str) -> Result<quinn::ClientConfig, Error> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        let cert = cert.map_err(|e| Error::config(format!("the CA certificate: {e}")))?;
        roots
            .add(cert)
            .map_err(|e| Error::config(format!("the CA certificate: {e}")))?;
    }
    if roots.is_empty() {
        return Err(Error::config("the CA file holds no certificate"));
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| Error::config(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    tls.alpn_protocols = vec![crate::protocol::client::CLIENT_ALPN.to_vec()];
    let crypto = QuicClientConfig::try_from(tls).map_err(|e| Error::config(e.to_string()))?;
    let mut quic = quinn::ClientConfig::new(Arc::new(crypto));
    let mut transport = TransportConfig::default();
    transport
        .keep_alive_interval(Some(Duration::from_secs(5)))
        .max_idle_timeout(Some(IdleTimeout::from(VarInt::from_u32(30_000))))
        .max_concurrent_uni_streams(VarInt::from_u32(0));
    quic.transport_config(Arc::new(transport));
    Ok(quic)
}

/// What every node connection shares: the endpoint and the TLS configuration.
pub(crate) struct QuicShared {
    endpoint: Mutex<Option<Endpoint>>,
    config: quinn::ClientConfig,
    token: Option<String>,
    lanes: usize,
    connect_timeout: Duration,
}

impl QuicShared {
    pub(crate) fn new(ca_pem: &str, config: &Config) -> Result<QuicShared, Error> {
        let quic = quic_config(ca_pem)?;
        Ok(QuicShared {
            endpoint: Mutex::new(None),
            config: quic,
            token: config.token.clone(),
            lanes: config.lanes.clamp(1, 16),
            connect_timeout: config.connect_timeout,
        })
    }

    /// The client endpoint (bound on first use, inside the runtime).
    fn endpoint(&self, to: SocketAddr) -> Result<Endpoint, String> {
        let mut e = self.endpoint.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(ep) = e.as_ref() {
            return Ok(ep.clone());
        }
        let bind: SocketAddr = if to.is_ipv4() {
            ([0, 0, 0, 0], 0).into()
        } else {
            (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
        };
        let ep = Endpoint::client(bind).map_err(|e| format!("cannot open a UDP socket: {e}"))?;
        *e = Some(ep.clone());
        Ok(ep)
    }

    pub(crate) fn node(&self, addr: SocketAddr) -> QuicNode {
        QuicNode {
            addr,
            shared: SharedRef {
                config: self.config.clone(),
                token: self.token.clone(),
                lanes: self.lanes,
                connect_timeout: self.connect_timeout,
                endpoint: self.endpoint(addr).ok(),
            },
            conn: tokio::sync::Mutex::new(None),
            next_lane: AtomicUsize::new(0),
            failed: Mutex::new(None),
        }
    }
}

struct SharedRef {
    config: quinn::ClientConfig,
    token: Option<String>,
    lanes: usize,
    connect_timeout: Duration,
    endpoint: Option<Endpoint>,
}

type Pending = Arc<Mutex<HashMap<u64, oneshot::Sender<ServerMessage>>>>;

struct Lane {
    tx: mpsc::Sender<Vec<u8>>,
    pending: Pending,
    dead: Arc<AtomicBool>,
}

struct Live {
    conn: quinn::Connection,
    lanes: Vec<Lane>,
}

impl Live {
    fn usable(&self) -> bool {
        self.conn.close_reason().is_none()
            && self.lanes.iter().all(|l| !l.dead.load(Ordering::Relaxed))
    }
}

/// One node's connection.
pub(crate) struct QuicNode {
    addr: SocketAddr,
    shared: SharedRef,
    conn: tokio::sync::Mutex<Option<Arc<Live>>>,
    next_lane: AtomicUsize,
    /// When the last connection attempt failed, and why: requests within a second of it fail
    /// at once instead of queueing for attempts of their own.
    failed: Mutex<Option<(std::time::Instant, String)>>,
}

/// How long a failed connection attempt answers for the node.
const RECONNECT_AFTER: Duration = Duration::from_secs(1);

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

impl QuicNode {
    async fn live(&self) -> Result<Arc<Live>, Failure> {
        let mut slot = self.conn.lock().await;
        if let Some(l) = slot.as_ref().filter(|l| l.usable()) {
            return Ok(l.clone());
        }
        if let Some(old) = slot.take() {
            old.conn.close(VarInt::from_u32(0), b"replaced");
        }
        if let Some((at, why)) = self
            .failed
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()
        {
            if at.elapsed() < RECONNECT_AFTER {
                return Err(Failure::Unreached(why.clone()));
            }
        }
        match self.connect().await {
            Ok(live) => {
                let live = Arc::new(live);
                *slot = Some(live.clone());
                Ok(live)
            }
            Err(Failure::Unreached(why)) => {
                *self.failed.lock().unwrap_or_else(PoisonError::into_inner) =
                    Some((std::time::Instant::now(), why.clone()));
                Err(Failure::Unreached(why))
            }
            Err(other) => Err(other),
        }
    }

    async fn connect(&self) -> Result<Live, Failure> {
        let s = &self.shared;
        let endpoint = s
            .endpoint
            .clone()
            .ok_or_else(|| Failure::Unreached("no UDP socket for the client".into()))?;
        let connecting = endpoint
            .connect_with(s.config.clone(), self.addr, NODE_SERVER_NAME)
            .map_err(|e| Failure::Unreached(format!("cannot connect: {e}")))?;
        let conn = match tokio::time::timeout(s.connect_timeout, connecting).await {
            Ok(Ok(c)) => c,
            Ok(Err(e)) => return Err(Failure::Unreached(describe_connect_error(&e))),
            Err(_) => {
                return Err(Failure::Unreached(format!(
                    "no QUIC handshake within {} ms",
                    s.connect_timeout.as_millis()
                )))
            }
        };
        let mut lanes = Vec::with_capacity(s.lanes);
        for _ in 0..s.lanes {
            let (send, recv) = match tokio::time::timeout(s.connect_timeout, conn.open_bi()).await {
                Ok(Ok(pair)) => pair,
                Ok(Err(e)) => return Err(Failure::Unreached(format!("cannot open a lane: {e}"))),
                Err(_) => return Err(Failure::Unreached("cannot open a lane in time".into())),
            };
            let lane = start_lane(send, recv);
            // The hello.
            let (tx, rx) = oneshot::channel();
            lane.pending
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .insert(HELLO_ID, tx);
            let hello = ClientMessage::Hello {
                token: s.token.clone(),
            };
            let frame = encode_frame(HELLO_ID, &hello)
                .map_err(|e| Failure::Answered(Error::config(e.to_string())))?;
            if lane.tx.send(frame).await.is_err() {
                return Err(Failure::Unreached("the lane closed at once".into()));
            }
            match tokio::time::timeout(s.connect_timeout, rx).await {
                Ok(Ok(ServerMessage::Ready)) => {}
                Ok(Ok(ServerMessage::Refused(r))) => {
                    return Err(Failure::Answered(Error::from_code(
                        &r.code, r.message, false,
                    )))
                }
                Ok(Ok(_)) => {
                    return Err(Failure::Answered(Error::new(
                        ErrorKind::Internal,
                        "internal",
                        "the node answered the hello with something else",
                    )))
                }
                Ok(Err(_)) => return Err(Failure::Unreached("the node closed the lane".into())),
                Err(_) => return Err(Failure::Unreached("no answer to the hello in time".into())),
            }
            lanes.push(lane);
        }
        Ok(Live { conn, lanes })
    }

    /// Sends one request and waits for its answer, all within `wait`.
    pub(crate) async fn call(
        &self,
        key: &[u8],
        op: &Op,
        options: Options,
        wait: Duration,
    ) -> Result<Answer, Failure> {
        let deadline = tokio::time::Instant::now() + wait;
        let live = match tokio::time::timeout_at(deadline, self.live()).await {
            Ok(live) => live?,
            Err(_) => {
                return Err(Failure::Unreached(format!(
                    "no connection within {} ms",
                    wait.as_millis()
                )))
            }
        };
        let op_wire = match op {
            Op::Get | Op::GetCrdt => ClientOp::Get,
            Op::Put { value, context } => ClientOp::Put {
                value: value.clone(),
                context: context.clone(),
            },
            Op::Delete { context } => ClientOp::Delete {
                context: context.clone(),
            },
            Op::Update { op, op_id } => ClientOp::Update {
                op: op.clone(),
                op_id: op_id.clone(),
            },
        };
        let request = ClientMessage::Request(ClientRequest {
            key: key.to_vec(),
            op: op_wire,
            options,
        });
        let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
        let frame = encode_frame(id, &request).map_err(|e| {
            Failure::Answered(Error::new(
                ErrorKind::BadRequest,
                "bad_request",
                e.to_string(),
            ))
        })?;
        let lane = &live.lanes[self.next_lane.fetch_add(1, Ordering::Relaxed) % live.lanes.len()];
        let (tx, rx) = oneshot::channel();
        lane.pending
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(id, tx);
        let queued = match tokio::time::timeout_at(deadline, lane.tx.send(frame)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(Failure::Unreached("the connection closed".into())),
            Err(_) => Err(Failure::Unreached(
                "the node is not reading requests".into(),
            )),
        };
        if let Err(f) = queued {
            lane.pending
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .remove(&id);
            return Err(f);
        }
        let message = match tokio::time::timeout_at(deadline, rx).await {
            Ok(Ok(m)) => m,
            Ok(Err(_)) => return Err(Failure::Lost("the connection was lost".into())),
            Err(_) => {
                lane.pending
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .remove(&id);
                return Err(Failure::Lost(format!(
                    "no answer within {} ms",
                    wait.as_millis()
                )));
            }
        };
        answer_of(op, message)
    }
}

fn describe_connect_error(e: &quinn::ConnectionError) -> String {
    let text = e.to_string();
    if text.contains("certificate") || text.contains("UnknownIssuer") || text.contains("crypto") {
        format!(
            "the node's certificate is not trusted (is it signed by the configured CA?): {text}"
        )
    } else {
        format!("cannot connect: {text}")
    }
}

/// Turns a node's answer into the operation's typed result.
fn answer_of(op: &Op, message: ServerMessage) -> Result<Answer, Failure> {
    let reply = match message {
        ServerMessage::Reply(r) => r,
        ServerMessage::Refused(r) => {
            let maybe = r.indeterminate.unwrap_or(false);
            return Err(Failure::Answered(Error::from_code(
                &r.code, r.message, maybe,
            )));
        }
        ServerMessage::Ready | ServerMessage::Cluster(_) => return Err(wrong_kind()),
    };
    match (op, reply) {
        (_, ClientReply::Failed(e)) => Err(Failure::Answered(error_of(e))),
        (Op::Get | Op::GetCrdt, ClientReply::Read(r)) if !r.parts.is_empty() => {
            Err(Failure::Answered(super::contested(&r.parts)))
        }
        (Op::Get, ClientReply::Read(r)) => {
            if let Some(t) = r.type_name.as_deref().filter(|&t| t != "register") {
                return Err(Failure::Answered(super::not_a("register", t)));
            }
            Ok(Answer::Read(Read {
                value: Value::from_values(r.values),
                context: r.context,
                deleted: r.deleted,
            }))
        }
        (Op::GetCrdt, ClientReply::Read(r)) => match (r.type_name, r.crdt) {
            (None, _) => Ok(Answer::Crdt(None)),
            (Some(t), Some(value)) => Ok(Answer::Crdt(Some(CrdtRead {
                type_name: t,
                value,
                context: r.context,
            }))),
            (Some(t), None) => Err(Failure::Answered(super::not_a("CRDT", &t))),
        },
        (Op::Put { .. } | Op::Delete { .. }, ClientReply::Written(w)) => {
            Ok(Answer::Written(Written {
                value: Value::from_values(w.values),
                context: w.context,
                acks: w.acks,
            }))
        }
        (Op::Update { .. }, ClientReply::Updated(u)) => Ok(Answer::Updated(Updated {
            type_name: u.type_name,
            value: u.value,
            context: u.context,
            op_id: u.op_id,
            replayed: u.replayed,
            notes: u.notes,
            acks: u.acks,
        })),
        _ => Err(wrong_kind()),
    }
}

/// An answer of the wrong kind: for a write, whether it was applied is unknown.
fn wrong_kind() -> Failure {
    Failure::Lost("the node answered with the wrong kind of reply".into())
}

/// The core's failure as a client error (the same code the HTTP API gives).
pub(crate) fn error_of(e: ClientError) -> Error {
    let indeterminate = matches!(
        e,
        ClientError::Unavailable {
            indeterminate: true,
            ..
        }
    );
    Error::from_code(e.code(), e.to_string(), indeterminate)
}

fn start_lane(send: SendStream, recv: RecvStream) -> Lane {
    let (tx, rx) = mpsc::channel::<Vec<u8>>(1024);
    let pending: Pending = Arc::new(Mutex::new(HashMap::new()));
    let dead = Arc::new(AtomicBool::new(false));
    tokio::spawn(writer(send, rx, dead.clone()));
    tokio::spawn(reader(recv, pending.clone(), dead.clone()));
    Lane { tx, pending, dead }
}

async fn writer(mut send: SendStream, mut rx: mpsc::Receiver<Vec<u8>>, dead: Arc<AtomicBool>) {
    let mut batch = Vec::with_capacity(16 * 1024);
    while let Some(first) = rx.recv().await {
        gather(&mut batch, &first, || rx.try_recv().ok());
        if send.write_all(&batch).await.is_err() {
            dead.store(true, Ordering::Relaxed);
            return;
        }
    }
    let _ = send.finish();
}

async fn reader(mut recv: RecvStream, pending: Pending, dead: Arc<AtomicBool>) {
    let mut frames = FrameBuffer::new(ANSWER_BODY_MAX);
    'read: loop {
        loop {
            let (id, message) = match frames.next_frame() {
                Ok(Some((id, body))) => (id, decode_body::<ServerMessage>(body, ANSWER_BODY_MAX)),
                Ok(None) => break,
                Err(e) => {
                    tracing::warn!(id = e.id, error = %e.error, "unreadable answer frame from a node");
                    break 'read;
                }
            };
            let waiter = pending
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .remove(&id);
            match message {
                Ok(message) => {
                    if let Some(w) = waiter {
                        let _ = w.send(message);
                    }
                }
                // Its request learns that no usable answer came.
                Err(e) => tracing::warn!(id, error = %e, "malformed answer from a node"),
            }
        }
        match recv.read(frames.spare()).await {
            Ok(Some(n)) => frames.filled(n),
            Ok(None) | Err(_) => break,
        }
    }
    dead.store(true, Ordering::Relaxed);
    // Every request still waiting learns the connection is gone.
    pending
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .clear();
}
