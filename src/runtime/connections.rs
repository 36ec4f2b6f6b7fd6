//! Connection limits: the node's open-file budget, the table that caps connections in total
//! and per source address (with fair shedding), and the HTTP server that enforces them.
//!
//! # Open files
//!
//! At start the node raises its open-file soft limit to the hard limit ([`FileBudget`]) and
//! splits it: a share for RocksDB's table files (its `max_open_files`), a fixed reserve for
//! everything else the process opens (write-ahead logs, the manifest, RocksDB's log, sockets of
//! the QUIC endpoint and the listener, outgoing requests), and the rest for HTTP connections.
//! QUIC connections all share one UDP socket and need no descriptor of their own. So no number
//! of clients can take the descriptors a storage write needs.
//!
//! # HTTP connections
//!
//! Every accepted TCP connection takes a place in a [`ConnTable`]. An address that already holds
//! its share, or a full table, gets a `503` and the connection is closed at once; when the table
//! is full, a newcomer from an address that holds fewer connections than the address holding
//! the most takes the place of one of the latter's idle connections (fair shedding: one address,
//! or a few, cannot lock the others out). A connection must deliver a request's headers within
//! the header timeout, counted from when it is ready for a request (so an idle keep-alive
//! connection is closed after it too), and the request's body within the body timeout of its
//! headers. Refusals, evictions and timeouts are counted in metrics and logged through the
//! refusal-log rate limit.
//!
//! # HTTPS
//!
//! With a TLS configuration ([`serve_http`]'s `tls`, from `--http-tls-dir`) the port speaks
//! HTTPS only. A connection takes its place in the table before its handshake, so handshakes
//! count against the same caps and can be evicted like idle connections; the handshake must
//! finish within its own timeout ([`ConnectionOptions::http_tls_handshake_timeout`]). A client
//! whose first byte is not a TLS handshake record (plain HTTP) gets a plaintext `400` saying the
//! port serves HTTPS, and the connection is closed: no request is read from it.

use std::collections::HashMap;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Bytes;
use hyper::body::{Body as HttpBody, Frame, SizeHint};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{oneshot, watch};
use tracing::debug;

use crate::api::metrics;
use crate::{info_limited, warn_limited};

/// Open files set aside for everything but RocksDB's table files and HTTP connections.
pub const RESERVED_FILES: u64 = 128;

/// The lowest open-file limit a node starts with.
pub const FILES_MIN: u64 = 256;

/// HTTP connections at most, however high the open-file limit.
pub const HTTP_CONNECTIONS_CEILING: usize = 16_384;

/// Connection limits and timeouts of both client APIs (part of `NodeOptions`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConnectionOptions {
    /// How long an HTTP connection may take to deliver a request's headers, counted from when
    /// it is ready for a request: this also closes an idle keep-alive connection.
    pub http_header_timeout: Duration,
    /// How long an HTTP request's body may take to arrive once its headers have.
    pub http_body_timeout: Duration,
    /// With HTTPS: how long a new connection may take to complete its TLS handshake (counted
    /// from its acceptance; the header timeout starts after it).
    pub http_tls_handshake_timeout: Duration,
    /// HTTP connections open at once (`None`: what the open-file budget allows; a larger
    /// value is lowered to that).
    pub http_connections_max: Option<usize>,
    /// HTTP connections one source address may hold.
    pub http_connections_per_address_max: usize,
    /// QUIC client connections open at once.
    pub quic_clients_max: usize,
    /// QUIC client connections one source address may hold.
    pub quic_clients_per_address_max: usize,
    /// A QUIC client connection with nothing in flight that sends nothing for this long is
    /// closed (clients reconnect on their next request).
    pub quic_client_idle_timeout: Duration,
    /// Requests one QUIC client connection may have in flight over all its lanes (the node
    /// serves 8,192 at once from all clients together).
    pub quic_connection_in_flight_max: usize,
    /// QUIC client connections that may be waiting for their hello at once, from all
    /// addresses together; a new one beyond closes the oldest waiting one.
    pub quic_clients_unverified_max: usize,
}

impl Default for ConnectionOptions {
    fn default() -> Self {
        ConnectionOptions {
            http_header_timeout: Duration::from_secs(10),
            http_body_timeout: Duration::from_secs(30),
            http_tls_handshake_timeout: Duration::from_secs(10),
            http_connections_max: None,
            http_connections_per_address_max: 256,
            quic_clients_max: 1024,
            quic_clients_per_address_max: 64,
            quic_client_idle_timeout: Duration::from_secs(120),
            quic_connection_in_flight_max: 1024,
            quic_clients_unverified_max: 128,
        }
    }
}

/// Why the open-file limit cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum FileLimitError {
    /// The limit could not be read or raised.
    #[error("cannot read or raise the open-file limit: {0}")]
    Os(std::io::Error),
    /// Even at the hard limit there are too few.
    #[error(
        "the open-file limit is {limit} (hard limit {hard}); a node needs at least {FILES_MIN}: \
         raise it (ulimit -n, or LimitNOFILE= for systemd)"
    )]
    TooLow {
        /// The soft limit after raising it.
        limit: u64,
        /// The hard limit.
        hard: u64,
    },
}

/// How the node's open files are shared out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FileBudget {
    /// The soft limit before the node raised it.
    pub limit_before: u64,
    /// The soft limit now (the hard limit, where the OS allows).
    pub limit: u64,
    /// RocksDB's table files open at once (its `max_open_files`).
    pub rocksdb_files: u64,
    /// Kept for write-ahead logs, the manifest, logs, sockets and outgoing requests.
    pub reserved: u64,
    /// HTTP connections the rest allows.
    pub http_connections: usize,
}

impl FileBudget {
    /// Splits an open-file limit.
    pub fn split(limit_before: u64, limit: u64, hard: u64) -> Result<FileBudget, FileLimitError> {
        if limit < FILES_MIN {
            return Err(FileLimitError::TooLow { limit, hard });
        }
        let rocksdb_files = (limit / 4).clamp(64, 65_536);
        let rest = limit - rocksdb_files - RESERVED_FILES;
        Ok(FileBudget {
            limit_before,
            limit,
            rocksdb_files,
            reserved: RESERVED_FILES,
            http_connections: usize::try_from(rest)
                .unwrap_or(usize::MAX)
                .min(HTTP_CONNECTIONS_CEILING),
        })
    }

    /// Raises this process's open-file soft limit to its hard limit and splits it.
    pub fn raise() -> Result<FileBudget, FileLimitError> {
        let (before, hard) = rlimit::Resource::NOFILE.get().map_err(FileLimitError::Os)?;
        let limit = rlimit::increase_nofile_limit(u64::MAX).map_err(FileLimitError::Os)?;
        FileBudget::split(before, limit, hard)
    }
}

/// Why a connection was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    /// Its source address holds its share already.
    #[error("this address has {0} connections open, the most one address may hold")]
    PerAddress(usize),
    /// The node holds every connection it may, none of them can make room.
    #[error("the node has {0} connections open, the most it holds")]
    Full(usize),
}

impl Refused {
    /// The metrics label.
    pub fn label(self) -> &'static str {
        match self {
            Refused::PerAddress(_) => "per_address",
            Refused::Full(_) => "full",
        }
    }
}

/// Connections open, in total and by source address, with their caps.
#[derive(Debug)]
pub struct ConnTable {
    total_max: usize,
    per_address_max: usize,
    inner: Mutex<Tables>,
}

#[derive(Debug, Default)]
struct Tables {
    total: usize,
    next_id: u64,
    by_address: HashMap<IpAddr, Vec<Held>>,
}

#[derive(Debug)]
struct Held {
    id: u64,
    /// Requests the connection is serving (an evictable connection with none is idle).
    busy: Arc<AtomicUsize>,
    /// Tells an evictable connection to close.
    evict: Option<oneshot::Sender<()>>,
}

/// A place in a [`ConnTable`], given back when dropped.
#[derive(Debug)]
pub struct Ticket {
    table: Arc<ConnTable>,
    address: IpAddr,
    id: u64,
    /// Requests the connection is serving.
    pub busy: Arc<AtomicUsize>,
    /// Fires when the table takes the place back for another address (evictable places).
    pub evicted: Option<oneshot::Receiver<()>>,
}

impl ConnTable {
    /// A table of at most `total_max` connections, `per_address_max` from one address.
    pub fn new(total_max: usize, per_address_max: usize) -> Arc<ConnTable> {
        Arc::new(ConnTable {
            total_max: total_max.max(1),
            per_address_max: per_address_max.max(1),
            inner: Mutex::new(Tables::default()),
        })
    }

    /// Connections open.
    pub fn open(&self) -> usize {
        self.inner
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .total
    }

    /// A place for a connection from `address`. When the table is full, an idle evictable
    /// connection of the address holding the most is closed to make room, provided that
    /// address holds at least two more than `address` does.
    pub fn admit(self: &Arc<Self>, address: IpAddr, evictable: bool) -> Result<Ticket, Refused> {
        let mut t = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        let mine = t.by_address.get(&address).map_or(0, Vec::len);
        if mine >= self.per_address_max {
            return Err(Refused::PerAddress(mine));
        }
        if t.total >= self.total_max {
            let victim = t
                .by_address
                .iter_mut()
                .filter(|(a, held)| **a != address && held.len() > mine + 1)
                .max_by_key(|(_, held)| held.len())
                .and_then(|(a, held)| {
                    let at = held
                        .iter()
                        .position(|h| h.evict.is_some() && h.busy.load(Ordering::Relaxed) == 0)?;
                    Some((*a, held.remove(at)))
                });
            let Some((from, held)) = victim else {
                return Err(Refused::Full(t.total));
            };
            if t.by_address.get(&from).is_some_and(Vec::is_empty) {
                t.by_address.remove(&from);
            }
            t.total -= 1;
            if let Some(evict) = held.evict {
                let _ = evict.send(());
            }
        }
        t.next_id += 1;
        let id = t.next_id;
        let busy = Arc::new(AtomicUsize::new(0));
        let (evict, evicted) = if evictable {
            let (tx, rx) = oneshot::channel();
            (Some(tx), Some(rx))
        } else {
            (None, None)
        };
        t.by_address.entry(address).or_default().push(Held {
            id,
            busy: busy.clone(),
            evict,
        });
        t.total += 1;
        Ok(Ticket {
            table: self.clone(),
            address,
            id,
            busy,
            evicted,
        })
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        let mut t = self
            .table
            .inner
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let Some(held) = t.by_address.get_mut(&self.address) else {
            return;
        };
        let Some(at) = held.iter().position(|h| h.id == self.id) else {
            // Evicted: its place was given away already.
            return;
        };
        held.remove(at);
        if held.is_empty() {
            t.by_address.remove(&self.address);
        }
        t.total -= 1;
    }
}

/// The HTTP server's limits.
#[derive(Clone, Copy, Debug)]
pub struct HttpLimits {
    /// See [`ConnectionOptions::http_header_timeout`].
    pub header_timeout: Duration,
    /// See [`ConnectionOptions::http_body_timeout`].
    pub body_timeout: Duration,
    /// See [`ConnectionOptions::http_tls_handshake_timeout`] (HTTPS only).
    pub tls_handshake_timeout: Duration,
    /// Connections at once.
    pub connections_max: usize,
    /// Connections from one address at once.
    pub per_address_max: usize,
}

/// How long accepting pauses after it failed (out of descriptors, say).
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// Serves `router` on `listener` within `limits` until `stop` fires (or its sender goes), then
/// lets requests in progress finish. With `tls`, the port serves HTTPS only.
pub async fn serve_http(
    listener: TcpListener,
    router: axum::Router,
    limits: HttpLimits,
    tls: Option<Arc<rustls::ServerConfig>>,
    mut stop: oneshot::Receiver<()>,
) {
    let tls = tls.map(tokio_rustls::TlsAcceptor::from);
    let router = router.layer(axum::middleware::from_fn_with_state(
        limits.body_timeout,
        body_deadline,
    ));
    let table = ConnTable::new(limits.connections_max, limits.per_address_max);
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let mut conns = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            _ = &mut stop => break,
            Some(_) = conns.join_next(), if !conns.is_empty() => {
                metrics::http_connections_open(table.open());
            }
            accepted = listener.accept() => match accepted {
                Ok((stream, remote)) => match table.admit(remote.ip(), true) {
                    Ok(ticket) => {
                        metrics::http_connections_open(table.open());
                        conns.spawn(serve_connection(
                            stream,
                            remote,
                            router.clone(),
                            ticket,
                            limits,
                            tls.clone(),
                            shutdown_rx.clone(),
                        ));
                    }
                    Err(why) => refuse(stream, remote, why),
                },
                Err(e) => {
                    warn_limited!("connections", error = %e, "cannot accept an HTTP connection");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                }
            }
        }
    }
    let _ = shutdown_tx.send(true);
    while conns.join_next().await.is_some() {}
}

/// Answers 503 on a connection the table refused, and closes it.
fn refuse(stream: TcpStream, remote: SocketAddr, why: Refused) {
    metrics::connection_refused("http", why.label());
    warn_limited!("connections", client = %remote, reason = why.label(), "refusing an HTTP connection: {why}");
    let body = format!("{{\"error\":\"overloaded\",\"message\":\"{why}; try again later\"}}");
    let response = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n\
         content-length: {}\r\nretry-after: 1\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    // A fresh connection's send buffer has room for this; if not, closing says enough.
    let _ = stream.try_write(response.as_bytes());
}

/// Counts a request as in progress on its connection while it lives.
struct Busy(Arc<AtomicUsize>);

impl Busy {
    fn new(count: &Arc<AtomicUsize>) -> Busy {
        count.fetch_add(1, Ordering::Relaxed);
        Busy(count.clone())
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The first byte of every TLS connection: a handshake record.
const TLS_HANDSHAKE_RECORD: u8 = 0x16;

async fn serve_connection(
    stream: TcpStream,
    remote: SocketAddr,
    router: axum::Router,
    mut ticket: Ticket,
    limits: HttpLimits,
    tls: Option<tokio_rustls::TlsAcceptor>,
    mut shutdown: watch::Receiver<bool>,
) {
    let _ = stream.set_nodelay(true);
    let evicted = ticket.evicted.take();
    let evicted = async move {
        let evicted = match evicted {
            Some(rx) => rx.await.is_ok(),
            None => false,
        };
        if !evicted {
            std::future::pending::<()>().await;
        }
    };
    tokio::pin!(evicted);
    match tls {
        None => {
            let io = hyper_util::rt::TokioIo::new(stream);
            serve_io(io, remote, router, &ticket, limits, evicted, shutdown).await;
        }
        Some(acceptor) => {
            let handshake = tokio::time::timeout(
                limits.tls_handshake_timeout,
                tls_handshake(stream, remote, &acceptor),
            );
            let stream = tokio::select! {
                done = handshake => match done {
                    Ok(Some(stream)) => stream,
                    Ok(None) => return,
                    Err(_) => {
                        metrics::http_connection_timed_out("tls_handshake");
                        info_limited!("connections", client = %remote, timeout = ?limits.tls_handshake_timeout, "closing an HTTPS connection that did not complete its TLS handshake in time");
                        return;
                    }
                },
                () = &mut evicted => {
                    metrics::http_connection_evicted();
                    info_limited!("connections", client = %remote, "closing an HTTPS connection still in its handshake to make room for another address");
                    return;
                }
                _ = shutdown.changed() => return,
            };
            let io = hyper_util::rt::TokioIo::new(stream);
            serve_io(io, remote, router, &ticket, limits, evicted, shutdown).await;
        }
    }
    drop(ticket);
}

/// The server side of a TLS handshake; `None` when it failed (logged). A client whose first
/// byte shows plain HTTP is told, in plain HTTP, that this port serves HTTPS.
async fn tls_handshake(
    stream: TcpStream,
    remote: SocketAddr,
    acceptor: &tokio_rustls::TlsAcceptor,
) -> Option<tokio_rustls::server::TlsStream<TcpStream>> {
    let mut first = [0u8; 1];
    match stream.peek(&mut first).await {
        Ok(0) | Err(_) => return None,
        Ok(_) => {}
    }
    if first[0] != TLS_HANDSHAKE_RECORD {
        info_limited!("connections", client = %remote, "refusing a plain-HTTP request on the HTTPS port");
        let body = "{\"error\":\"https_required\",\"message\":\"this port serves HTTPS only: use an https:// URL (and the CA that signed the node's certificate)\"}";
        let response = format!(
            "HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\n\
             content-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        );
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let mut stream = stream;
        // Read what the client sent before answering, and until it closes after: closing with
        // unread bytes would reset the connection and could lose the answer.
        let mut sink = [0u8; 4096];
        let _ = stream.read(&mut sink).await;
        let _ = stream.write_all(response.as_bytes()).await;
        let _ = stream.shutdown().await;
        while matches!(stream.read(&mut sink).await, Ok(n) if n > 0) {}
        return None;
    }
    match acceptor.accept(stream).await {
        Ok(stream) => Some(stream),
        Err(e) => {
            info_limited!("connections", client = %remote, error = %e, "TLS handshake failed");
            None
        }
    }
}

/// Serves HTTP/1.1 on one connection (plain or TLS) until it ends, is evicted, or the server
/// shuts down (then requests in progress finish).
async fn serve_io<I, E>(
    io: I,
    remote: SocketAddr,
    router: axum::Router,
    ticket: &Ticket,
    limits: HttpLimits,
    mut evicted: Pin<&mut E>,
    mut shutdown: watch::Receiver<bool>,
) where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    E: Future<Output = ()>,
{
    use hyper::service::Service as _;
    let header_timeout = limits.header_timeout;
    let busy = ticket.busy.clone();
    let service = hyper_util::service::TowerToHyperService::new(router);
    let service = hyper::service::service_fn(move |mut request: hyper::Request<_>| {
        // Handlers may ask where a request came from, as with axum's own server.
        request
            .extensions_mut()
            .insert(axum::extract::ConnectInfo(remote));
        let busy = Busy::new(&busy);
        let answer = service.call(request);
        async move {
            let response = answer.await;
            drop(busy);
            response
        }
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(header_timeout);
    let conn = builder.serve_connection(io, service);
    tokio::pin!(conn);
    let mut draining = false;
    loop {
        tokio::select! {
            result = conn.as_mut() => {
                match result {
                    Err(e) if e.is_timeout() => {
                        metrics::http_connection_timed_out("header");
                        info_limited!("connections", client = %remote, timeout = ?header_timeout, "closing an HTTP connection that sent no complete request in time");
                    }
                    Err(e) => debug!(client = %remote, error = %e, "HTTP connection ended"),
                    Ok(()) => {}
                }
                break;
            }
            () = evicted.as_mut(), if !draining => {
                metrics::http_connection_evicted();
                info_limited!("connections", client = %remote, "closing an idle HTTP connection to make room for another address");
                break;
            }
            changed = shutdown.changed(), if !draining => {
                draining = true;
                if changed.is_ok() {
                    conn.as_mut().graceful_shutdown();
                }
            }
        }
    }
}

/// Middleware: a request body must arrive whole within `limit` of the request's headers.
async fn body_deadline(
    axum::extract::State(limit): axum::extract::State<Duration>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    if request.body().is_end_stream() {
        return next.run(request).await;
    }
    let (parts, body) = request.into_parts();
    let body = axum::body::Body::new(Deadline {
        inner: body,
        limit,
        sleep: Box::pin(tokio::time::sleep(limit)),
        fired: false,
    });
    next.run(axum::extract::Request::from_parts(parts, body))
        .await
}

/// A request body that fails once its deadline passes.
struct Deadline {
    inner: axum::body::Body,
    limit: Duration,
    sleep: Pin<Box<tokio::time::Sleep>>,
    fired: bool,
}

/// The error a [`Deadline`] body ends with.
#[derive(Debug, thiserror::Error)]
#[error("the request body did not arrive within {0:?}")]
pub struct BodyTimeout(Duration);

impl HttpBody for Deadline {
    type Data = Bytes;
    type Error = axum::BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        if this.fired {
            return Poll::Ready(None);
        }
        if this.sleep.as_mut().poll(cx).is_ready() {
            this.fired = true;
            metrics::http_connection_timed_out("body");
            info_limited!("connections", timeout = ?this.limit, "refusing an HTTP request whose body came too slowly");
            return Poll::Ready(Some(Err(BodyTimeout(this.limit).into())));
        }
        Pin::new(&mut this.inner)
            .poll_frame(cx)
            .map_err(axum::BoxError::from)
    }

    fn is_end_stream(&self) -> bool {
        self.fired || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(last: u8) -> IpAddr {
        IpAddr::from([127, 0, 0, last])
    }

    #[test]
    fn the_file_budget_keeps_descriptors_for_storage() {
        let b = FileBudget::split(1024, 1024, 1024).unwrap();
        assert_eq!(b.rocksdb_files, 256);
        assert_eq!(
            b.http_connections as u64 + b.rocksdb_files + b.reserved,
            1024
        );
        let big = FileBudget::split(1024, 1 << 20, 1 << 20).unwrap();
        assert_eq!(big.http_connections, HTTP_CONNECTIONS_CEILING);
        assert!(matches!(
            FileBudget::split(100, 100, 100),
            Err(FileLimitError::TooLow { limit: 100, .. })
        ));
    }

    #[test]
    fn caps_refuse_per_address_and_a_full_table_sheds_the_biggest_holder() {
        let table = ConnTable::new(4, 3);
        let mut a: Vec<Ticket> = (0..3).map(|_| table.admit(ip(2), true).unwrap()).collect();
        assert_eq!(
            table.admit(ip(2), true).unwrap_err(),
            Refused::PerAddress(3)
        );
        let b = table.admit(ip(3), true).unwrap();
        assert_eq!(table.open(), 4);
        // Full: a newcomer from 127.0.0.4 takes an idle place of 127.0.0.2 (it holds 3).
        let mut c = table.admit(ip(4), true).unwrap();
        assert_eq!(table.open(), 4);
        assert!(a[0].evicted.as_mut().unwrap().try_recv().is_ok());
        // 127.0.0.2 holds 2 now, 127.0.0.3 and .4 one each: nobody holds two more than .4.
        assert_eq!(table.admit(ip(4), true).unwrap_err(), Refused::Full(4));
        // A busy connection is never evicted.
        for t in &a[1..] {
            t.busy.fetch_add(1, Ordering::Relaxed);
        }
        assert_eq!(table.admit(ip(5), true).unwrap_err(), Refused::Full(4));
        // Places come back when tickets drop, the evicted one's only once.
        a.clear();
        drop(b);
        assert_eq!(table.open(), 1);
        assert!(c.evicted.as_mut().unwrap().try_recv().is_err());
        drop(c);
        assert_eq!(table.open(), 0);
    }
}
