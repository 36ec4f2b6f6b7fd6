//! The QUIC client API: serves client connections the transport hands over (ALPN
//! `chorus-client/1`) with the protocol of [`crate::protocol::client`].
//!
//! Like the HTTP handlers, nothing here touches the node core: each request becomes a
//! [`CoreCall`] to the driver task, and its [`ClientReply`] goes back on the lane it came on.
//! This module owns the lanes: reading frames, checking the hello's token, bounding what one
//! lane may have in flight, and writing answers in batches.
//!
//! Bounds: a connection has at most `tls::CLIENT_LANES_MAX` lanes (QUIC's stream limit) and no
//! unidirectional streams, and is closed unless one of its lanes says an accepted hello within
//! [`FRAME_TIMEOUT`] (or at once when a hello is refused); at most
//! [`QuicLimits::unverified_max`] connections may be waiting for their hello at once, and a new
//! one beyond that closes the oldest waiting one (so connections that never say hello hold
//! only that many of the transport's client slots, however many addresses they come from, and
//! a real client, which says hello within a round trip, is not locked out); it is closed once
//! it has had nothing in
//! flight and sent nothing for the idle timeout ([`QuicLimits`]); a lane holds at most
//! [`LANE_IN_FLIGHT_MAX`] requests and the whole connection at most
//! [`QuicLimits::connection_in_flight_max`] (beyond, it is not read, which pushes back on the
//! client through flow control), so one connection cannot take the node's whole budget of
//! requests; a frame is at most a hello's size before the hello and the node's
//! value limit plus the key and some overhead after it, and must arrive whole within
//! [`FRAME_TIMEOUT`] of its first byte. Buffers grow with the bytes that arrive, never with
//! what a header declares. Anything malformed is answered with a refusal and logged (through the
//! refusal-log rate limit, `runtime::ratelog`); a frame
//! over the limit is skipped (its bytes dropped as they come) and the lane goes on; anything
//! that breaks the framing ends the lane, never the node.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use quinn::{RecvStream, SendStream, VarInt};
use tokio::sync::{mpsc, oneshot, OwnedSemaphorePermit, Semaphore};
use tokio::time::{timeout, timeout_at, Instant};
use tracing::{debug, warn};

use super::http::{AdminRequest, ApiState, CoreCall};
use super::metrics;
use crate::node::{ClientError, ClientReply};
use crate::protocol::client::{
    decode_body, encode_frame, gather, request_body_max, ClientMessage, FrameBuffer, Refusal,
    ServerMessage, TOKEN_BYTES_MAX,
};
use crate::protocol::WireError;
use crate::runtime::transport::ClientConnection;
use crate::{info_limited, warn_limited};

/// Requests one lane may have in flight at once.
pub const LANE_IN_FLIGHT_MAX: usize = 256;

/// How long the rest of a frame may take once its first byte arrived (and the hello, once the
/// lane is open).
pub const FRAME_TIMEOUT: Duration = Duration::from_secs(30);

/// Stream error code: the lane's framing broke (oversize or truncated frame).
const LANE_BROKEN: VarInt = VarInt::from_u32(1);
/// Stream error code: the hello was refused.
const LANE_REFUSED: VarInt = VarInt::from_u32(2);
/// Connection error code: no lane said an accepted hello (in time).
const CLOSE_UNAUTHENTICATED: VarInt = VarInt::from_u32(3);

/// How long a connection whose hello was refused stays open for the refusal to arrive.
const REFUSED_LINGER: Duration = Duration::from_secs(1);

/// Largest frame before a lane's hello: a hello with the longest token.
const HELLO_BODY_MAX: usize = TOKEN_BYTES_MAX + 256;

/// Connection-level bounds of the QUIC client API.
#[derive(Clone, Copy, Debug)]
pub struct QuicLimits {
    /// A connection with nothing in flight that sent nothing for this long is closed.
    pub idle_timeout: Duration,
    /// Requests one connection may have in flight over all its lanes.
    pub connection_in_flight_max: usize,
    /// Connections waiting for an accepted hello at once; beyond, the oldest is closed.
    pub unverified_max: usize,
}

/// Connections that have not said an accepted hello yet, oldest first (see the module
/// documentation).
struct Unverified {
    max: usize,
    waiting: std::sync::Mutex<std::collections::VecDeque<(quinn::Connection, Arc<AtomicBool>)>>,
}

impl Unverified {
    fn new(max: usize) -> Self {
        Unverified {
            max: max.max(1),
            waiting: Default::default(),
        }
    }

    /// Registers a new connection (its `authenticated` flag is set by its first accepted
    /// hello), first closing the oldest waiting ones when the budget is spent.
    fn admit(&self, conn: &quinn::Connection, authenticated: &Arc<AtomicBool>) {
        let mut waiting = self
            .waiting
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        waiting.retain(|(c, a)| !a.load(Ordering::Relaxed) && c.close_reason().is_none());
        while waiting.len() >= self.max {
            let Some((oldest, said_hello)) = waiting.pop_front() else {
                break;
            };
            // Its hello may have been accepted since the `retain` above.
            if said_hello.load(Ordering::Relaxed) {
                continue;
            }
            metrics::quic_connection_evicted_before_hello();
            info_limited!("connections", client = %oldest.remote_address(), "closing a client connection that has not said hello, to make room for a newer one");
            oldest.close(CLOSE_UNAUTHENTICATED, b"no accepted hello");
        }
        waiting.push_back((conn.clone(), authenticated.clone()));
    }
}

/// Connection error code: the connection was idle for the idle timeout.
const CLOSE_IDLE: VarInt = VarInt::from_u32(4);

/// Serves every client connection from `connections` until the channel ends.
pub async fn serve(
    mut connections: mpsc::Receiver<ClientConnection>,
    api: ApiState,
    limits: QuicLimits,
) {
    let unverified = Arc::new(Unverified::new(limits.unverified_max));
    while let Some(c) = connections.recv().await {
        tokio::spawn(serve_connection(c, api.clone(), limits, unverified.clone()));
    }
}

/// When a connection last sent something (milliseconds since it opened).
struct Activity {
    opened: Instant,
    last_ms: AtomicU64,
}

impl Activity {
    fn touch(&self) {
        let ms = self.opened.elapsed().as_millis();
        self.last_ms
            .store(u64::try_from(ms).unwrap_or(u64::MAX), Ordering::Relaxed);
    }

    fn last(&self) -> Instant {
        self.opened + Duration::from_millis(self.last_ms.load(Ordering::Relaxed))
    }
}

/// Closes `conn` once it has had nothing in flight and sent nothing for `idle`.
async fn idle_watchdog(
    conn: quinn::Connection,
    activity: Arc<Activity>,
    in_flight: Arc<Semaphore>,
    in_flight_max: usize,
    idle: Duration,
) {
    loop {
        let due = activity.last() + idle;
        if Instant::now() < due {
            tokio::time::sleep_until(due).await;
            continue;
        }
        if in_flight.available_permits() < in_flight_max {
            // A request is being served: that is not idle.
            activity.touch();
            continue;
        }
        metrics::quic_connection_idle();
        info_limited!("connections", client = %conn.remote_address(), ?idle, "closing an idle QUIC client connection");
        conn.close(CLOSE_IDLE, b"idle");
        return;
    }
}

async fn serve_connection(
    client: ClientConnection,
    api: ApiState,
    limits: QuicLimits,
    unverified: Arc<Unverified>,
) {
    let conn = client.conn.clone();
    let remote = conn.remote_address();
    debug!(client = %remote, "QUIC client connected");
    let mut meter = metrics::ConnectionMeter::new("client", conn.clone());
    // The client API reads only bidirectional streams: refuse unidirectional ones outright so
    // that nothing can be buffered on them.
    conn.set_max_concurrent_uni_streams(VarInt::from_u32(0));
    // A connection that has not opened a lane with an accepted hello within the frame timeout
    // gives its slot back.
    let authenticated = Arc::new(AtomicBool::new(false));
    unverified.admit(&conn, &authenticated);
    let watchdog = {
        let conn = conn.clone();
        let authenticated = authenticated.clone();
        tokio::spawn(async move {
            tokio::time::sleep(FRAME_TIMEOUT).await;
            if !authenticated.load(Ordering::Relaxed) {
                info_limited!("connections", client = %remote, "closing a client connection with no accepted lane");
                conn.close(CLOSE_UNAUTHENTICATED, b"no accepted hello");
            }
        })
    };
    let in_flight_max = limits
        .connection_in_flight_max
        .clamp(1, Semaphore::MAX_PERMITS);
    let in_flight = Arc::new(Semaphore::new(in_flight_max));
    let activity = Arc::new(Activity {
        opened: Instant::now(),
        last_ms: AtomicU64::new(0),
    });
    let idle = tokio::spawn(idle_watchdog(
        conn.clone(),
        activity.clone(),
        in_flight.clone(),
        in_flight_max,
        limits.idle_timeout,
    ));
    {
        let metering = async {
            meter.run().await;
            std::future::pending::<std::convert::Infallible>().await
        };
        tokio::pin!(metering);
        loop {
            let accepted = tokio::select! {
                a = conn.accept_bi() => a,
                never = &mut metering => match never {},
            };
            match accepted {
                Ok((send, recv)) => {
                    activity.touch();
                    let lane = Lane {
                        conn: conn.clone(),
                        remote,
                        api: api.clone(),
                        authenticated: authenticated.clone(),
                        activity: activity.clone(),
                        in_flight: in_flight.clone(),
                    };
                    tokio::spawn(lane.serve(send, recv));
                }
                Err(e) => {
                    debug!(client = %remote, reason = %e, "QUIC client connection ended");
                    break;
                }
            }
        }
    }
    watchdog.abort();
    idle.abort();
    drop(meter);
    drop(client);
}

/// What a lane knows of its connection.
struct Lane {
    conn: quinn::Connection,
    remote: SocketAddr,
    api: ApiState,
    authenticated: Arc<AtomicBool>,
    /// When the connection last sent something.
    activity: Arc<Activity>,
    /// The connection's budget of requests in flight, shared by its lanes.
    in_flight: Arc<Semaphore>,
}

/// Why a lane stopped reading.
enum LaneEnd {
    /// The client finished the stream, or the connection went away.
    Closed,
    /// Framing broke: the refusal was sent and the stream is stopped.
    Broken,
    /// The hello was refused.
    Refused,
}

async fn send_refusal(out: &mpsc::Sender<Vec<u8>>, id: u64, refusal: Refusal) {
    send(out, id, &ServerMessage::Refused(refusal)).await;
}

async fn send(out: &mpsc::Sender<Vec<u8>>, id: u64, message: &ServerMessage) {
    match encode_frame(id, message) {
        Ok(frame) => {
            let _ = out.send(frame).await;
        }
        Err(e) => warn!(id, error = %e, "cannot encode an answer to a client"),
    }
}

/// Writes answers as they come, gathering whatever is ready into one write.
async fn writer(mut send: SendStream, mut answers: mpsc::Receiver<Vec<u8>>, remote: SocketAddr) {
    let mut batch = Vec::with_capacity(16 * 1024);
    while let Some(first) = answers.recv().await {
        gather(&mut batch, &first, || answers.try_recv().ok());
        match timeout(FRAME_TIMEOUT, send.write_all(&batch)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                debug!(client = %remote, error = %e, "client lane closed while answering");
                return;
            }
            Err(_) => {
                warn_limited!("connections", client = %remote, "client not reading its answers; ending the lane");
                let _ = send.reset(LANE_BROKEN);
                return;
            }
        }
    }
    let _ = send.finish();
}

impl Lane {
    /// Serves one lane: the hello, then requests until the client finishes the stream.
    async fn serve(self, send: SendStream, mut recv: RecvStream) {
        let body_max = request_body_max(
            self.api.limits.key_bytes_max,
            self.api.limits.value_bytes_max,
        );
        let (out, answers) = mpsc::channel::<Vec<u8>>(LANE_IN_FLIGHT_MAX);
        let writer = tokio::spawn(writer(send, answers, self.remote));
        let result = serve_lane(&mut recv, &self, body_max, &out).await;
        drop(out);
        match result {
            LaneEnd::Broken => {
                let _ = recv.stop(LANE_BROKEN);
            }
            LaneEnd::Refused => {
                let _ = recv.stop(LANE_REFUSED);
                // Let the refusal reach the client (closing at once could discard it), then
                // close a connection that has no accepted lane.
                let _ = writer.await;
                tokio::time::sleep(REFUSED_LINGER).await;
                if !self.authenticated.load(Ordering::Relaxed) {
                    self.conn.close(CLOSE_UNAUTHENTICATED, b"unauthorized");
                }
                return;
            }
            LaneEnd::Closed => {}
        }
        // Answers still in flight finish on their own; the writer ends after the last.
        let _ = writer.await;
    }
}

async fn serve_lane(
    recv: &mut RecvStream,
    lane: &Lane,
    body_max: usize,
    out: &mpsc::Sender<Vec<u8>>,
) -> LaneEnd {
    let (remote, api) = (lane.remote, &lane.api);
    let mut frames = FrameBuffer::new(HELLO_BODY_MAX);
    let mut ready = false;
    let hello_by = Instant::now() + FRAME_TIMEOUT;
    // When the frame now being received started arriving.
    let mut frame_since: Option<Instant> = None;
    let in_flight = Arc::new(Semaphore::new(LANE_IN_FLIGHT_MAX));
    loop {
        if out.is_closed() {
            // The writer is gone (the client stopped reading): serve no more.
            return LaneEnd::Closed;
        }
        // Every complete frame buffered, then read more.
        loop {
            let (id, message) = match frames.next_frame() {
                Ok(Some((id, body))) => (id, decode_body::<ClientMessage>(body, body_max)),
                Ok(None) => break,
                Err(e) => {
                    let code = if matches!(e.error, WireError::TooLarge { .. }) {
                        "too_large"
                    } else {
                        "bad_request"
                    };
                    send_refusal(out, e.id, Refusal::new(code, e.error.to_string())).await;
                    if e.skipped && ready {
                        warn_limited!("client_frames", client = %remote, id = e.id, error = %e.error, "refusing a client frame; skipping it");
                        continue;
                    }
                    warn_limited!("client_frames", client = %remote, id = e.id, error = %e.error, "refusing a client frame; ending the lane");
                    return LaneEnd::Broken;
                }
            };
            if !ready {
                match hello(message, api, remote) {
                    Ok(()) => {
                        send(out, id, &ServerMessage::Ready).await;
                        ready = true;
                        lane.authenticated.store(true, Ordering::Relaxed);
                        frames.set_body_max(body_max);
                        continue;
                    }
                    Err((refusal, end)) => {
                        send_refusal(out, id, refusal).await;
                        return end;
                    }
                }
            }
            match message {
                Ok(ClientMessage::Request(request)) => {
                    let Ok(permit) = in_flight.clone().acquire_owned().await else {
                        return LaneEnd::Closed;
                    };
                    let Ok(conn_permit) = lane.in_flight.clone().acquire_owned().await else {
                        return LaneEnd::Closed;
                    };
                    let permit = (permit, conn_permit);
                    let started = std::time::Instant::now();
                    let op = metrics::op_name(&request.op);
                    let write = request.op.is_write();
                    let (tx, rx) = oneshot::channel();
                    // QUIC requests are numbered per lane by the client; there is no
                    // request id header to echo.
                    let call = CoreCall {
                        request,
                        reply: tx,
                        request_id: None,
                    };
                    match api.clients.try_send(call) {
                        Ok(()) => {
                            let asked = Asked {
                                id,
                                op,
                                write,
                                started,
                            };
                            tokio::spawn(answer(
                                rx,
                                out.clone(),
                                asked,
                                permit,
                                api.status.clone(),
                            ));
                        }
                        Err(mpsc::error::TrySendError::Full(_)) => {
                            // Refused before the core saw it: nothing was applied.
                            metrics::refused(&api.status.recent, "quic", op, started, "overloaded");
                            let e = ClientError::Overloaded;
                            send(out, id, &ServerMessage::Reply(ClientReply::Failed(e))).await;
                        }
                        Err(mpsc::error::TrySendError::Closed(_)) => {
                            metrics::refused(
                                &api.status.recent,
                                "quic",
                                op,
                                started,
                                "shutting_down",
                            );
                            send_refusal(out, id, shutting_down(write, false)).await;
                        }
                    }
                }
                Ok(ClientMessage::Cluster) => {
                    let Ok(permit) = in_flight.clone().acquire_owned().await else {
                        return LaneEnd::Closed;
                    };
                    let (tx, rx) = oneshot::channel();
                    if api.admin.send(AdminRequest::Cluster(tx)).await.is_err() {
                        send_refusal(out, id, shutting_down(false, false)).await;
                        continue;
                    }
                    let out = out.clone();
                    tokio::spawn(async move {
                        let message = match rx.await {
                            Ok(view) => ServerMessage::Cluster(Box::new(view)),
                            Err(_) => ServerMessage::Refused(shutting_down(false, false)),
                        };
                        send(&out, id, &message).await;
                        drop(permit);
                    });
                }
                Ok(ClientMessage::Hello { .. }) => {
                    send_refusal(
                        out,
                        id,
                        Refusal::new("bad_request", "this lane already said hello"),
                    )
                    .await;
                }
                Err(e) => {
                    warn_limited!("client_frames", client = %remote, id, error = %e, "refusing a malformed client request");
                    send_refusal(out, id, Refusal::new("bad_request", e.to_string())).await;
                }
            }
        }
        // The hello must come promptly, and so must the rest of a frame that has started; an
        // idle lane between frames may wait as long as the connection lives.
        frame_since = match (frames.mid_frame(), frame_since) {
            (false, _) => None,
            (true, None) => Some(Instant::now()),
            (true, since) => since,
        };
        let deadline = if !ready {
            Some(hello_by)
        } else {
            frame_since.map(|t| t + FRAME_TIMEOUT)
        };
        let read = recv.read(frames.spare());
        let result = match deadline {
            None => read.await,
            Some(at) => match timeout_at(at, read).await {
                Ok(r) => r,
                Err(_) => {
                    if ready {
                        warn_limited!("client_frames", client = %remote, "client frame took too long; ending the lane");
                    } else {
                        warn_limited!("client_frames", client = %remote, "client lane sent no hello in time; ending it");
                    }
                    return LaneEnd::Broken;
                }
            },
        };
        match result {
            Ok(Some(n)) => {
                lane.activity.touch();
                frames.filled(n);
            }
            Ok(None) if frames.mid_frame() => {
                let id = frames.partial_id().unwrap_or(0);
                info_limited!("client_frames", client = %remote, id, "client frame cut short; ending the lane");
                send_refusal(
                    out,
                    id,
                    Refusal::new("bad_request", "the stream ended inside a frame"),
                )
                .await;
                return LaneEnd::Closed;
            }
            Ok(None) => return LaneEnd::Closed,
            Err(e) => {
                debug!(client = %remote, error = %e, "client lane ended");
                return LaneEnd::Closed;
            }
        }
    }
}

/// Checks a lane's first message: a hello with the right token.
fn hello(
    message: Result<ClientMessage, WireError>,
    api: &ApiState,
    remote: SocketAddr,
) -> Result<(), (Refusal, LaneEnd)> {
    match message {
        Ok(ClientMessage::Hello { token }) => {
            let creds = &api.auth.credentials;
            if creds.client.is_none() {
                // Without a client token the data plane serves this machine only (as HTTP
                // does): the QUIC port is open to the network for the peers.
                if remote.ip().is_loopback() {
                    return Ok(());
                }
                warn_limited!("auth", client = %remote, "refused a QUIC client lane from another host: this node has no client token");
                return Err((
                    Refusal::new(
                        "unauthorized",
                        "this node has no client token: its client API serves loopback only",
                    ),
                    LaneEnd::Refused,
                ));
            }
            if creds.allows_client(token.as_deref()) {
                return Ok(());
            }
            if token.is_some() {
                let now = std::time::Instant::now();
                if let Err(wait_s) = api.auth.failures.check(remote.ip(), now) {
                    return Err((
                        Refusal::new(
                            "too_many_failures",
                            format!("too many wrong tokens: try again in {wait_s} s"),
                        ),
                        LaneEnd::Refused,
                    ));
                }
                api.auth.failures.failed(remote.ip(), now);
            }
            let what = if token.is_some() { "a wrong" } else { "no" };
            warn_limited!("auth", client = %remote, "refused a QUIC client lane with {what} client token");
            Err((
                Refusal::new("unauthorized", format!("{what} client token")),
                LaneEnd::Refused,
            ))
        }
        Ok(_) => {
            warn_limited!("client_frames", client = %remote, "client lane did not start with a hello; ending it");
            Err((
                Refusal::new("bad_request", "a lane starts with a hello"),
                LaneEnd::Broken,
            ))
        }
        Err(e) => {
            warn_limited!("client_frames", client = %remote, error = %e, "malformed hello; ending the lane");
            Err((Refusal::new("bad_request", e.to_string()), LaneEnd::Broken))
        }
    }
}

fn shutting_down(write: bool, maybe_applied: bool) -> Refusal {
    Refusal {
        code: "shutting_down".into(),
        message: "the node is shutting down".into(),
        indeterminate: write.then_some(maybe_applied),
    }
}

/// A request the core is working on.
struct Asked {
    id: u64,
    op: &'static str,
    write: bool,
    started: std::time::Instant,
}

/// Waits for the core's answer and sends it back.
async fn answer(
    rx: oneshot::Receiver<ClientReply>,
    out: mpsc::Sender<Vec<u8>>,
    asked: Asked,
    _permits: (OwnedSemaphorePermit, OwnedSemaphorePermit),
    status: Arc<super::status::StatusState>,
) {
    let message = match rx.await {
        Ok(reply) => {
            metrics::request(&status.recent, "quic", asked.op, asked.started, &reply);
            ServerMessage::Reply(reply)
        }
        // The node stopped with the request in flight: a write may have been applied.
        Err(_) => {
            metrics::refused(
                &status.recent,
                "quic",
                asked.op,
                asked.started,
                "shutting_down",
            );
            ServerMessage::Refused(shutting_down(asked.write, true))
        }
    };
    send(&out, asked.id, &message).await;
}
