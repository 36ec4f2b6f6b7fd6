//! The client side of the HTTP API: a small pool of keep-alive HTTP/1.1 connections per node
//! (hyper, over TLS when the client was given `https://` addresses), and the translation of
//! each operation to and from the API's requests and answers.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1;
use hyper::header::{HeaderMap, HeaderValue};
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use serde::Deserialize;

use super::{Answer, Config, CrdtRead, Error, ErrorKind, Failure, Op, Options, Read, Updated};
use super::{NodeUrl, Value, Written};
use crate::node::{ClusterView, Context, CrdtOp, CrdtValue};

type Sender = http1::SendRequest<Full<Bytes>>;

/// Idle connections kept per node (one per concurrent requester, up to this many).
const IDLE_MAX: usize = 1024;

/// Largest answer body read.
const BODY_MAX: usize = 64 * 1024 * 1024;

/// What every node's pool shares.
#[derive(Clone)]
pub(crate) struct HttpShared {
    token: Option<String>,
    connect_timeout: Duration,
    /// HTTPS: how node certificates are verified (`None`: plain HTTP).
    tls: Option<tokio_rustls::TlsConnector>,
}

/// How a pooled connection is opened.
#[derive(Clone)]
struct Dial {
    addr: SocketAddr,
    /// HTTPS: the connector and the name the node's certificate must carry.
    tls: Option<(tokio_rustls::TlsConnector, ServerName<'static>)>,
    timeout: Duration,
}

impl HttpShared {
    /// `tls`: speak HTTPS, verifying node certificates with this configuration.
    pub(crate) fn new(config: &Config, tls: Option<Arc<rustls::ClientConfig>>) -> HttpShared {
        HttpShared {
            token: config.token.clone(),
            connect_timeout: config.connect_timeout,
            tls: tls.map(tokio_rustls::TlsConnector::from),
        }
    }

    /// The pool of a member at `addr` (over HTTPS, its certificate must name that IP address).
    pub(crate) fn node(&self, addr: SocketAddr) -> HttpNode {
        self.pool(
            addr,
            addr.to_string(),
            ServerName::IpAddress(addr.ip().into()),
        )
    }

    /// The pool of a node the caller named by URL (over HTTPS, its certificate must name the
    /// URL's host).
    pub(crate) fn seed(&self, url: &NodeUrl) -> Result<HttpNode, Error> {
        let name = url.server_name().map_err(Error::config)?;
        Ok(self.pool(url.addr, url.authority(), name))
    }

    fn pool(&self, addr: SocketAddr, host: String, name: ServerName<'static>) -> HttpNode {
        HttpNode {
            host,
            token: self.token.clone(),
            dial: Dial {
                addr,
                tls: self.tls.clone().map(|c| (c, name)),
                timeout: self.connect_timeout,
            },
            idle: Mutex::new(Vec::new()),
        }
    }

    /// `GET /v1/cluster` from `node`.
    pub(crate) async fn cluster(
        &self,
        node: &HttpNode,
        wait: Duration,
    ) -> Result<ClusterView, Error> {
        self.get_json(node, "/v1/cluster", wait).await
    }

    /// `GET path` from `node`, whose 200 answer is `T` as JSON.
    pub(crate) async fn get_json<T: serde::de::DeserializeOwned>(
        &self,
        node: &HttpNode,
        path: &str,
        wait: Duration,
    ) -> Result<T, Error> {
        let addr = node.dial.addr;
        let req = node.request(Method::GET, path.into(), Bytes::new());
        let (status, _, body) = node.send(req, wait).await.map_err(|f| match f {
            Failure::Answered(e) => e,
            Failure::Unreached(m) | Failure::Lost(m) => {
                Error::new(ErrorKind::Unreachable, "unreachable", m)
            }
        })?;
        if status != StatusCode::OK {
            return Err(error_body(status, &body, false));
        }
        serde_json::from_slice(&body).map_err(|e| {
            Error::new(
                ErrorKind::Internal,
                "internal",
                format!("{addr} answered {path} with something else: {e}"),
            )
        })
    }
}

/// One node's pool.
pub(crate) struct HttpNode {
    /// The `Host` header.
    host: String,
    token: Option<String>,
    dial: Dial,
    idle: Mutex<Vec<Sender>>,
}

/// Opens a connection (TCP, then TLS over HTTPS, each within the dial's timeout).
async fn connect(dial: &Dial) -> Result<Sender, String> {
    let wait = dial.timeout;
    let stream = tokio::time::timeout(wait, tokio::net::TcpStream::connect(dial.addr))
        .await
        .map_err(|_| format!("no TCP connection within {} ms", wait.as_millis()))?
        .map_err(|e| format!("cannot connect: {e}"))?;
    let _ = stream.set_nodelay(true);
    match &dial.tls {
        None => handshake(TokioIo::new(stream)).await,
        Some((connector, name)) => {
            let tls = tokio::time::timeout(wait, connector.connect(name.clone(), stream))
                .await
                .map_err(|_| format!("no TLS handshake within {} ms", wait.as_millis()))?
                .map_err(|e| super::https::explain_io_error(&e))?;
            handshake(TokioIo::new(tls)).await
        }
    }
}

async fn handshake<I>(io: I) -> Result<Sender, String>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (sender, conn) = http1::handshake(io)
        .await
        .map_err(|e| format!("HTTP handshake: {e}"))?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(sender)
}

/// The bytes a key keeps as they are in a path: RFC 3986's unreserved characters.
const KEY_KEPT: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// Percent-encodes every byte but the unreserved ones.
fn encode_key(key: &[u8]) -> String {
    percent_encoding::percent_encode(key, KEY_KEPT).to_string()
}

fn query(options: Options, extra: Option<&str>) -> String {
    let mut q: Vec<String> = extra.into_iter().map(str::to_owned).collect();
    if let Some(r) = options.r {
        q.push(format!("r={r}"));
    }
    if let Some(w) = options.w {
        q.push(format!("w={w}"));
    }
    if options.strict {
        q.push("strict=true".into());
    }
    if let Some(t) = options.timeout_ms {
        q.push(format!("timeout_ms={t}"));
    }
    if q.is_empty() {
        String::new()
    } else {
        format!("?{}", q.join("&"))
    }
}

fn op_json(op: &CrdtOp) -> serde_json::Value {
    use serde_json::json;
    match op {
        CrdtOp::GCounter { increment } => json!({"type": "gcounter", "increment": increment}),
        CrdtOp::PNCounter { increment } => json!({"type": "pncounter", "increment": increment}),
        CrdtOp::TwoPSet { add, remove } => json!({"type": "2pset", "add": add, "remove": remove}),
        CrdtOp::ORSet {
            add,
            remove,
            context,
        } => json!({
            "type": "orset",
            "add": add,
            "remove": remove,
            "context": context.as_ref().map(Context::to_token),
        }),
    }
}

fn value_of(v: &serde_json::Value) -> Option<CrdtValue> {
    match v {
        serde_json::Value::Number(n) => n
            .as_i64()
            .map(i128::from)
            .or_else(|| n.as_u64().map(i128::from))
            .map(CrdtValue::Counter),
        serde_json::Value::String(s) => s.parse().ok().map(CrdtValue::Counter),
        serde_json::Value::Array(a) => a
            .iter()
            .map(|e| e.as_str().map(str::to_owned))
            .collect::<Option<Vec<String>>>()
            .map(CrdtValue::Set),
        _ => None,
    }
}

#[derive(Deserialize)]
struct ErrorBody {
    error: String,
    message: String,
    indeterminate: Option<bool>,
}

fn error_body(status: StatusCode, body: &[u8], write: bool) -> Error {
    match serde_json::from_slice::<ErrorBody>(body) {
        Ok(b) => Error::from_code(
            &b.error,
            b.message,
            write && b.indeterminate.unwrap_or(false),
        ),
        Err(_) => Error::new(
            ErrorKind::Internal,
            "internal",
            format!(
                "HTTP {status}: {}",
                String::from_utf8_lossy(&body[..body.len().min(200)])
            ),
        ),
    }
}

/// An answer the client cannot read: for a write, whether it was applied is unknown.
fn malformed(what: &str) -> Failure {
    Failure::Lost(format!("the node's answer is malformed: {what}"))
}

fn context_header(headers: &HeaderMap, key: &[u8]) -> Result<Option<Context>, Failure> {
    match headers.get("x-chorus-context") {
        None => Ok(None),
        Some(v) => {
            let t = v.to_str().map_err(|_| malformed("context header"))?;
            Context::from_token(t, key)
                .map(Some)
                .map_err(|_| malformed("context header"))
        }
    }
}

fn acks_header(headers: &HeaderMap) -> usize {
    headers
        .get("x-chorus-acks")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

#[derive(Deserialize)]
struct SiblingsBody {
    context: Option<String>,
    values: Vec<String>,
}

fn siblings(body: &[u8], key: &[u8]) -> Result<(Value, Option<Context>), Failure> {
    let b: SiblingsBody = serde_json::from_slice(body).map_err(|_| malformed("siblings"))?;
    let b64 = base64::engine::general_purpose::STANDARD;
    let values = b
        .values
        .iter()
        .map(|v| b64.decode(v))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|_| malformed("sibling encoding"))?;
    let context = match b.context {
        Some(t) => Some(Context::from_token(&t, key).map_err(|_| malformed("context"))?),
        None => None,
    };
    Ok((Value::from_values(values), context))
}

#[derive(Deserialize)]
struct CrdtBody {
    #[serde(rename = "type")]
    type_name: String,
    value: serde_json::Value,
    context: Option<String>,
    #[serde(default)]
    op_id: String,
    #[serde(default)]
    replayed: bool,
    #[serde(default)]
    notes: Vec<String>,
}

impl HttpNode {
    fn request(&self, method: Method, path: String, body: Bytes) -> Request<Full<Bytes>> {
        let mut req = Request::builder()
            .method(method)
            .uri(path)
            .header(hyper::header::HOST, self.host.as_str());
        if let Some(t) = &self.token {
            req = req.header(hyper::header::AUTHORIZATION, format!("Bearer {t}"));
        }
        // Every part above is valid by construction.
        req.body(Full::new(body)).unwrap_or_default()
    }

    async fn send(
        &self,
        req: Request<Full<Bytes>>,
        wait: Duration,
    ) -> Result<(StatusCode, HeaderMap, Bytes), Failure> {
        let pooled = loop {
            let s = self
                .idle
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .pop();
            match s {
                Some(s) if s.is_closed() => continue,
                other => break other,
            }
        };
        let fresh = pooled.is_none();
        let mut sender = match pooled {
            Some(s) => s,
            None => connect(&self.dial).await.map_err(Failure::Unreached)?,
        };
        let dial = self.dial.clone();
        let exchange = async move {
            let mut req = req;
            // A pooled connection may have closed since it was idle: a request it hands back
            // unsent goes once more, on a new connection.
            let mut retried = fresh;
            let resp = loop {
                sender
                    .ready()
                    .await
                    .map_err(|e| Failure::Unreached(format!("connection: {e}")))?;
                match sender.try_send_request(req).await {
                    Ok(resp) => break resp,
                    Err(mut e) => match e.take_message() {
                        Some(unsent) if !retried => {
                            retried = true;
                            req = unsent;
                            sender = connect(&dial).await.map_err(Failure::Unreached)?;
                        }
                        Some(_) => {
                            return Err(Failure::Unreached(format!("request: {}", e.error())))
                        }
                        None => return Err(Failure::Lost(format!("request: {}", e.error()))),
                    },
                }
            };
            let (parts, body) = resp.into_parts();
            let body = http_body_util::Limited::new(body, BODY_MAX)
                .collect()
                .await
                .map_err(|e| Failure::Lost(format!("answer: {e}")))?
                .to_bytes();
            Ok::<_, Failure>(((parts.status, parts.headers, body), sender))
        };
        let (result, sender) = tokio::time::timeout(wait, exchange)
            .await
            .map_err(|_| Failure::Lost(format!("no answer within {} ms", wait.as_millis())))??;
        let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
        if idle.len() < IDLE_MAX {
            idle.push(sender);
        }
        Ok(result)
    }

    /// Sends one operation and translates the answer.
    pub(crate) async fn call(
        &self,
        key: &[u8],
        op: &Op,
        options: Options,
        wait: Duration,
    ) -> Result<Answer, Failure> {
        let k = encode_key(key);
        let (method, path, body) = match op {
            Op::Get => (
                Method::GET,
                format!("/v1/kv/{k}{}", query(options, None)),
                Bytes::new(),
            ),
            Op::GetCrdt => (
                Method::GET,
                format!("/v1/crdt/{k}{}", query(options, None)),
                Bytes::new(),
            ),
            Op::Put { value, .. } => (
                Method::PUT,
                format!("/v1/kv/{k}{}", query(options, None)),
                Bytes::from(value.clone()),
            ),
            Op::Delete { .. } => (
                Method::DELETE,
                format!("/v1/kv/{k}{}", query(options, None)),
                Bytes::new(),
            ),
            Op::Update { op, .. } => (
                Method::POST,
                format!("/v1/crdt/{k}{}", query(options, Some("return=value"))),
                Bytes::from(op_json(op).to_string()),
            ),
        };
        let mut req = self.request(method, path, body);
        let h = req.headers_mut();
        match op {
            Op::Get => {
                h.insert(
                    hyper::header::ACCEPT,
                    HeaderValue::from_static("application/json"),
                );
            }
            Op::Put {
                context: Some(c), ..
            }
            | Op::Delete { context: Some(c) } => {
                if let Ok(v) = HeaderValue::from_str(&c.to_token()) {
                    h.insert("x-chorus-context", v);
                }
            }
            Op::Update { op_id, .. } => {
                let v = HeaderValue::from_str(op_id).map_err(|_| {
                    Failure::Answered(Error::new(
                        ErrorKind::BadRequest,
                        "bad_request",
                        "the op id is not printable ASCII",
                    ))
                })?;
                h.insert("x-chorus-op-id", v);
                h.insert(
                    hyper::header::CONTENT_TYPE,
                    HeaderValue::from_static("application/json"),
                );
            }
            _ => {}
        }
        let (status, headers, body) = self.send(req, wait).await?;
        match (op, status) {
            (Op::Get, StatusCode::OK | StatusCode::MULTIPLE_CHOICES) => {
                let (value, context) = siblings(&body, key)?;
                Ok(Answer::Read(Read {
                    value,
                    context,
                    deleted: false,
                }))
            }
            (Op::Get, StatusCode::NOT_FOUND) => {
                let context = context_header(&headers, key)?;
                Ok(Answer::Read(Read {
                    value: Value::Absent,
                    deleted: context.is_some(),
                    context,
                }))
            }
            (Op::GetCrdt, StatusCode::NOT_FOUND) => Ok(Answer::Crdt(None)),
            (Op::GetCrdt, StatusCode::OK) => {
                let b: CrdtBody = serde_json::from_slice(&body).map_err(|_| malformed("CRDT"))?;
                Ok(Answer::Crdt(Some(CrdtRead {
                    value: value_of(&b.value).ok_or_else(|| malformed("CRDT value"))?,
                    context: crdt_context(b.context, key)?,
                    type_name: b.type_name,
                })))
            }
            (Op::Put { value, .. }, StatusCode::NO_CONTENT) => Ok(Answer::Written(Written {
                value: Value::One(value.clone()),
                context: context_header(&headers, key)?.ok_or_else(|| malformed("no context"))?,
                acks: acks_header(&headers),
            })),
            (Op::Delete { .. }, StatusCode::NO_CONTENT) => Ok(Answer::Written(Written {
                value: Value::Absent,
                context: context_header(&headers, key)?.ok_or_else(|| malformed("no context"))?,
                acks: acks_header(&headers),
            })),
            (Op::Put { .. } | Op::Delete { .. }, StatusCode::MULTIPLE_CHOICES) => {
                let (value, context) = siblings(&body, key)?;
                Ok(Answer::Written(Written {
                    value,
                    context: context.ok_or_else(|| malformed("no context"))?,
                    acks: acks_header(&headers),
                }))
            }
            (Op::Update { .. }, StatusCode::OK) => {
                let b: CrdtBody = serde_json::from_slice(&body).map_err(|_| malformed("CRDT"))?;
                Ok(Answer::Updated(Updated {
                    value: value_of(&b.value).ok_or_else(|| malformed("CRDT value"))?,
                    context: crdt_context(b.context, key)?,
                    type_name: b.type_name,
                    op_id: b.op_id,
                    replayed: b.replayed,
                    notes: b.notes,
                    acks: acks_header(&headers),
                }))
            }
            (_, s) if s.is_client_error() || s.is_server_error() => {
                Err(Failure::Answered(error_body(s, &body, op.is_write())))
            }
            (_, s) => Err(malformed(&format!("unexpected HTTP status {s}"))),
        }
    }
}

fn crdt_context(token: Option<String>, key: &[u8]) -> Result<Option<Context>, Failure> {
    match token {
        None => Ok(None),
        Some(t) => Context::from_token(&t, key)
            .map(Some)
            .map_err(|_| malformed("context")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_percent_encoded_and_queries_built() {
        assert_eq!(encode_key(b"a/b c:\xff"), "a%2Fb%20c%3A%FF");
        assert_eq!(encode_key(b"user-1_x.y~"), "user-1_x.y~");
        let o = Options {
            r: Some(1),
            w: Some(3),
            strict: true,
            timeout_ms: Some(250),
        };
        assert_eq!(
            query(o, Some("return=value")),
            "?return=value&r=1&w=3&strict=true&timeout_ms=250"
        );
        assert_eq!(query(Options::default(), None), "");
    }

    #[test]
    fn crdt_values_parse_from_json() {
        assert_eq!(value_of(&serde_json::json!(5)), Some(CrdtValue::Counter(5)));
        assert_eq!(
            value_of(&serde_json::json!(-5)),
            Some(CrdtValue::Counter(-5))
        );
        assert_eq!(
            value_of(&serde_json::json!(
                "170141183460469231731687303715884105727"
            )),
            Some(CrdtValue::Counter(i128::MAX))
        );
        assert_eq!(
            value_of(&serde_json::json!(["a", "b"])),
            Some(CrdtValue::Set(vec!["a".into(), "b".into()]))
        );
        assert_eq!(value_of(&serde_json::json!({"x": 1})), None);
    }
}
