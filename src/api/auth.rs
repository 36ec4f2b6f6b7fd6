//! Who may do what over the client APIs, and the guards every HTTP request passes first.
//!
//! Two bearer credentials, each configured from a file:
//!
//! - The **client token** (`--client-token-file`): when set, every request over HTTP
//!   (`Authorization: Bearer <token>`, on every endpoint but `/health` and the static status
//!   page `/`, which asks for the token itself) and every QUIC lane (in
//!   its hello) must carry it (or the operator token). Without it the data plane is open to
//!   whoever reaches the node.
//! - The **operator token** (`--operator-token-file`): the only credential for actions that
//!   change the cluster (leave, cancel a leave, remove a node, start a repair). Without it those
//!   actions are refused (403), whatever else is configured; the client token never suffices.
//!
//! A node without a client token serves its data plane (HTTP, and QUIC client lanes) to
//! loopback only (see `runtime` and `api::quic`).
//!
//! Tokens are at least [`TOKEN_CHARS_MIN`] printable characters (128 bits as hex); a token file
//! readable or writable by anyone but its owner is refused. Only a hash of each token is kept for
//! checking, and offered tokens are compared by hash in constant time. The scheme (`Bearer`) is
//! case-insensitive. A right token always passes; an address that keeps presenting wrong
//! tokens is slowed: past [`FAILURES_BURST`] of them it gets 429, a second late, for about a
//! second per further wrong token ([`FailureLimiter`]). Requests without a token do not count
//! (so no web page can lock a token holder out by making token-less requests).
//!
//! Every HTTP request but `/health` also passes the **browser guards** ([`guard`]): a `Host`
//! the node does not serve is refused (DNS rebinding), and a state-changing request sent
//! cross-site (an `Origin` that is not the node's own, `Sec-Fetch-Site: cross-site`) or as a
//! form (a `POST` with a content type a browser may send without asking first) is refused.
//!
//! This module owns credentials and request admission only; it never reaches the node core.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::extract::{ConnectInfo, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::Response;
use tracing::warn;

use crate::protocol::client::TOKEN_BYTES_MAX;

/// Fewest characters a token may have: 32, as 128 random bits take in hex.
pub const TOKEN_CHARS_MIN: usize = 32;

/// Failed authentications an address may make at once before it is slowed.
pub const FAILURES_BURST: u32 = 20;

/// Addresses the failure limiter remembers at most (the least recently failing are forgotten).
const FAILURE_ADDRESSES_MAX: usize = 4096;

/// A bearer token (client or operator).
#[derive(Clone)]
pub struct Token {
    hash: blake3::Hash,
    /// The token itself: the node sends the client token when it asks its members for their
    /// figures (the status page), as a cluster shares one token.
    secret: String,
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Token(..)")
    }
}

/// Why a token file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// The file could not be read.
    #[error("cannot read the token file {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// Users other than the owner may read or change the file.
    #[error(
        "the token file {path} is accessible to other users (mode {mode:03o}): run `chmod 600 {path}`"
    )]
    Exposed {
        /// The file.
        path: String,
        /// Its permission bits.
        mode: u32,
    },
    /// The token is too short, too long, or not printable ASCII.
    #[error("the token in {path} {problem}")]
    Invalid {
        /// The file.
        path: String,
        /// What is wrong with it.
        problem: &'static str,
    },
}

impl Token {
    /// A token from its text (surrounding whitespace ignored).
    pub fn new(token: &str) -> Result<Token, &'static str> {
        let token = token.trim();
        if token.is_empty() {
            return Err("is empty");
        }
        if token.len() > TOKEN_BYTES_MAX {
            return Err("is longer than 4096 bytes");
        }
        if !token.bytes().all(|b| b.is_ascii_graphic()) {
            return Err("has characters other than printable ASCII");
        }
        if token.len() < TOKEN_CHARS_MIN {
            return Err(
                "is shorter than 32 characters (use 128 random bits or more: \
                `chorus token new --out FILE` writes one)",
            );
        }
        Ok(Token {
            hash: blake3::hash(token.as_bytes()),
            secret: token.to_owned(),
        })
    }

    /// A fresh random token: 256 bits from the operating system, as 64 hex digits.
    pub fn generate() -> std::io::Result<String> {
        use rand::TryRng as _;
        let mut bytes = [0u8; 32];
        rand::rngs::SysRng.try_fill_bytes(&mut bytes).map_err(|e| {
            std::io::Error::other(format!("the operating system's random source failed: {e}"))
        })?;
        Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
    }

    /// The token's text (for requests this node makes to its members).
    pub fn secret(&self) -> &str {
        &self.secret
    }

    /// Reads a token from a file: its whole content, surrounding whitespace ignored. The file
    /// must be accessible to its owner only.
    pub fn load(path: &Path) -> Result<Token, TokenError> {
        let shown = || path.display().to_string();
        let meta = std::fs::metadata(path).map_err(|source| TokenError::Read {
            path: shown(),
            source,
        })?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = meta.permissions().mode() & 0o777;
            if mode & 0o077 != 0 {
                return Err(TokenError::Exposed {
                    path: shown(),
                    mode,
                });
            }
        }
        #[cfg(not(unix))]
        let _ = meta;
        let text = std::fs::read_to_string(path).map_err(|source| TokenError::Read {
            path: shown(),
            source,
        })?;
        Token::new(&text).map_err(|problem| TokenError::Invalid {
            path: shown(),
            problem,
        })
    }

    /// Whether `offered` is the token (constant time: `blake3::Hash` compares so).
    pub fn accepts(&self, offered: Option<&str>) -> bool {
        offered.is_some_and(|t| blake3::hash(t.trim().as_bytes()) == self.hash)
    }
}

/// Writes a fresh token ([`Token::generate`]) to a new file, readable by its owner only.
pub fn write_new_token(path: &Path) -> std::io::Result<()> {
    use std::io::Write as _;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.mode(0o600);
    }
    let token = Token::generate()?;
    let mut f = options.open(path)?;
    writeln!(f, "{token}")?;
    f.sync_all()
}

/// The credentials a node checks.
#[derive(Clone, Debug, Default)]
pub struct Credentials {
    /// Needed for the data plane and the read-only cluster endpoints, when set.
    pub client: Option<Token>,
    /// Needed for actions that change the cluster; without it they are refused.
    pub operator: Option<Token>,
}

impl Credentials {
    /// Whether any credential is configured.
    pub fn any(&self) -> bool {
        self.client.is_some() || self.operator.is_some()
    }

    /// Whether `offered` may use the data plane: no client token is configured, or it is the
    /// client or the operator token.
    pub fn allows_client(&self, offered: Option<&str>) -> bool {
        match &self.client {
            None => true,
            Some(c) => {
                c.accepts(offered) || self.operator.as_ref().is_some_and(|o| o.accepts(offered))
            }
        }
    }
}

/// Slows addresses that keep failing authentication: a token bucket per IP address of
/// [`FAILURES_BURST`] failures, refilled at one per second. Shared by both APIs.
#[derive(Debug, Default)]
pub struct FailureLimiter {
    buckets: Mutex<HashMap<IpAddr, Bucket>>,
}

#[derive(Clone, Copy, Debug)]
struct Bucket {
    /// Failures still allowed, as of `at`.
    allowance: f64,
    at: Instant,
}

impl Bucket {
    fn refreshed(self, now: Instant) -> Bucket {
        let refill = now.saturating_duration_since(self.at).as_secs_f64();
        Bucket {
            allowance: (self.allowance + refill).min(f64::from(FAILURES_BURST)),
            at: now,
        }
    }
}

impl FailureLimiter {
    /// Whether `ip` may try to authenticate now; if not, how many seconds until it may.
    pub fn check(&self, ip: IpAddr, now: Instant) -> Result<(), u64> {
        let buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        match buckets.get(&ip).map(|b| b.refreshed(now)) {
            Some(b) if b.allowance < 1.0 => Err((1.0 - b.allowance).ceil().max(1.0) as u64),
            _ => Ok(()),
        }
    }

    /// Records a failed authentication from `ip`.
    pub fn failed(&self, ip: IpAddr, now: Instant) {
        let mut buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        if buckets.len() >= FAILURE_ADDRESSES_MAX && !buckets.contains_key(&ip) {
            // Forget the addresses whose allowance has refilled; if none has, the oldest half.
            buckets.retain(|_, b| b.refreshed(now).allowance < f64::from(FAILURES_BURST));
            if buckets.len() >= FAILURE_ADDRESSES_MAX {
                let mut ats: Vec<Instant> = buckets.values().map(|b| b.at).collect();
                ats.sort_unstable();
                let cut = ats[ats.len() / 2];
                buckets.retain(|_, b| b.at > cut);
            }
        }
        let b = buckets.entry(ip).or_insert(Bucket {
            allowance: f64::from(FAILURES_BURST),
            at: now,
        });
        let mut fresh = b.refreshed(now);
        fresh.allowance = (fresh.allowance - 1.0).max(0.0);
        *b = fresh;
    }
}

/// What the HTTP guards need: the credentials, the failure limiter, and the host names the
/// node serves besides IP addresses and `localhost`.
#[derive(Debug, Default)]
pub struct Guard {
    /// The configured credentials.
    pub credentials: Credentials,
    /// Slows addresses that keep failing authentication (HTTP and QUIC).
    pub failures: FailureLimiter,
    /// Host names (lowercase, without port) accepted in `Host`, besides IP literals and
    /// `localhost`.
    pub hosts: Vec<String>,
}

/// What a request needs to be served.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Need {
    /// Nothing (`/health`).
    Nothing,
    /// The client token, when one is configured.
    Client,
    /// The operator token.
    Operator,
}

/// What `method path` needs: changing the cluster needs the operator.
pub fn need_of(method: &Method, path: &str) -> Need {
    let changes = *method == Method::POST || *method == Method::DELETE;
    // The status page is static (it asks for a token before it fetches any figures).
    if path == "/health" || (path == "/" && *method == Method::GET) {
        Need::Nothing
    } else if changes
        && (path == "/v1/cluster/leave"
            || path.starts_with("/v1/cluster/remove/")
            || path == "/v1/repair")
    {
        Need::Operator
    } else {
        Need::Client
    }
}

/// The token of an `Authorization: Bearer <token>` header (the scheme in any case).
pub fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?.trim();
    let (scheme, token) = value.split_once(char::is_whitespace)?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then_some(token.trim())
}

/// Whether a `Host` header names this node: an IP literal, `localhost`, or a configured name.
fn host_allowed(host: &str, names: &[String]) -> bool {
    let name = match host.strip_prefix('[') {
        // `[v6]` or `[v6]:port`, and nothing else after the bracket.
        Some(rest) => {
            return rest.split_once(']').is_some_and(|(addr, tail)| {
                addr.parse::<std::net::Ipv6Addr>().is_ok()
                    && (tail.is_empty()
                        || tail
                            .strip_prefix(':')
                            .is_some_and(|port| port.parse::<u16>().is_ok()))
            })
        }
        None => match host.rsplit_once(':') {
            Some((h, port)) if port.parse::<u16>().is_ok() => h,
            Some(_) => return false,
            None => host,
        },
    };
    let name = name.trim_end_matches('.').to_ascii_lowercase();
    name.parse::<IpAddr>().is_ok()
        || name == "localhost"
        || names.iter().any(|n| n.eq_ignore_ascii_case(&name))
}

/// Why a state-changing request looks cross-site, if it does.
fn cross_site(request: &Request) -> Option<String> {
    let headers = request.headers();
    if headers
        .get("sec-fetch-site")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("cross-site"))
    {
        return Some("the request was sent from another site (Sec-Fetch-Site: cross-site)".into());
    }
    if let Some(origin) = headers.get(header::ORIGIN) {
        let origin = origin.to_str().unwrap_or("?");
        let host = headers
            .get(header::HOST)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        let own = origin
            .strip_prefix("http://")
            .or_else(|| origin.strip_prefix("https://"))
            .is_some_and(|o| !host.is_empty() && o.eq_ignore_ascii_case(host));
        if !own {
            return Some(format!(
                "the request comes from the page of another origin ({origin})"
            ));
        }
    }
    if *request.method() == Method::POST {
        let ct = headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase();
        if matches!(
            ct.as_str(),
            "application/x-www-form-urlencoded" | "multipart/form-data" | "text/plain"
        ) {
            return Some(format!(
                "a POST with Content-Type {ct} (a form a browser may send from any site): \
                 send application/json, or no body"
            ));
        }
    }
    None
}

fn is_safe(method: &Method) -> bool {
    matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS)
}

/// Axum middleware, outermost after the request id: the browser guards, then the credentials.
pub(super) async fn guard(
    State(guard): State<Arc<Guard>>,
    request: Request,
    next: Next,
) -> Response {
    let need = need_of(request.method(), request.uri().path());
    // `/health` answers whatever the Host (load balancers probe by address); everything else,
    // the static status page included, only for a host this node serves (DNS rebinding).
    if request.uri().path() == "/health" {
        return next.run(request).await;
    }
    if let Some(host) = request.headers().get(header::HOST) {
        let host = host.to_str().unwrap_or("");
        if !host_allowed(host, &guard.hosts) {
            warn!(
                host,
                "refused an HTTP request for a host this node does not serve"
            );
            return super::http::error(
                StatusCode::MISDIRECTED_REQUEST,
                "unknown_host",
                format!(
                    "this node does not serve the host {host:?} (IP addresses, localhost and \
                     the names given with --http-host are served)"
                ),
            );
        }
    }
    if !is_safe(request.method()) {
        if let Some(why) = cross_site(&request) {
            warn!(path = %request.uri().path(), "refused a cross-site request");
            let status = if why.starts_with("a POST with") {
                StatusCode::UNSUPPORTED_MEDIA_TYPE
            } else {
                StatusCode::FORBIDDEN
            };
            return super::http::error(status, "cross_site", why);
        }
    }
    if need == Need::Nothing {
        return next.run(request).await;
    }
    let creds = &guard.credentials;
    if need == Need::Client && creds.client.is_none() {
        return next.run(request).await;
    }
    if need == Need::Operator && creds.operator.is_none() {
        return super::http::error(
            StatusCode::FORBIDDEN,
            "operator_disabled",
            "this action changes the cluster and needs the operator token, but this node has \
             none: start it with --operator-token-file"
                .to_owned(),
        );
    }
    let ip = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip())
        .unwrap_or(IpAddr::from([0, 0, 0, 0]));
    // A right token always passes, whatever the address did before: so nobody can lock out
    // the holders of a token (behind the same NAT, or from a page in their browser).
    let offered = bearer(request.headers());
    let ok = match need {
        Need::Operator => creds.operator.as_ref().is_some_and(|o| o.accepts(offered)),
        _ => creds.allows_client(offered),
    };
    if ok {
        return next.run(request).await;
    }
    // Only wrong tokens presented count as failures; an address past its allowance is answered
    // 429, a second late.
    if offered.is_some() {
        let now = Instant::now();
        if let Err(wait_s) = guard.failures.check(ip, now) {
            tokio::time::sleep(std::time::Duration::from_secs(1)).await;
            let mut resp = super::http::error(
                StatusCode::TOO_MANY_REQUESTS,
                "too_many_failures",
                format!("too many wrong tokens from {ip}: try again in {wait_s} s"),
            );
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(wait_s));
            return resp;
        }
        guard.failures.failed(ip, now);
    }
    let what = if offered.is_some() { "a wrong" } else { "no" };
    let which = if need == Need::Operator {
        "operator"
    } else {
        "client"
    };
    if let Some(suppressed) = crate::runtime::ratelog::AUTH.check() {
        warn!(suppressed, path = %request.uri().path(), client = %ip, "refused an HTTP request with {what} {which} token");
    }
    let mut resp = super::http::error(
        StatusCode::UNAUTHORIZED,
        "unauthorized",
        format!("{what} {which} token: send Authorization: Bearer <token>"),
    );
    resp.headers_mut()
        .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: &str = "0123456789abcdef0123456789abcdef";

    #[test]
    fn tokens_are_checked_and_bad_ones_refused() {
        let t = Token::new(&format!(" {T}\n")).unwrap();
        assert!(t.accepts(Some(T)));
        assert!(!t.accepts(Some(&T[1..])));
        assert!(!t.accepts(Some("")));
        assert!(!t.accepts(None));
        assert!(Token::new("  ").is_err());
        assert!(Token::new("a b").is_err());
        assert!(Token::new("s3cret").is_err(), "short tokens are refused");
        assert!(Token::new(&T[1..]).is_err(), "31 characters are too few");
        assert!(Token::new(&"x".repeat(5000)).is_err());
        let g = Token::generate().unwrap();
        assert_eq!(g.len(), 64);
        assert_ne!(g, Token::generate().unwrap());
        assert!(Token::new(&g).is_ok());
    }

    #[cfg(unix)]
    #[test]
    fn token_files_open_to_others_are_refused() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t");
        write_new_token(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert!(Token::load(&path).is_ok());
        assert!(write_new_token(&path).is_err(), "never overwrites");
        for mode in [0o644, 0o640, 0o602] {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
            let e = Token::load(&path).unwrap_err();
            assert!(e.to_string().contains("chmod 600"), "{e}");
        }
    }

    #[test]
    fn bearer_scheme_is_case_insensitive() {
        let mut h = HeaderMap::new();
        for v in ["Bearer abc", "bearer abc", "BEARER   abc ", "bEaReR\tabc"] {
            h.insert(header::AUTHORIZATION, HeaderValue::from_str(v).unwrap());
            assert_eq!(bearer(&h), Some("abc"), "{v}");
        }
        for v in ["Basic abc", "Bearerabc", "abc"] {
            h.insert(header::AUTHORIZATION, HeaderValue::from_str(v).unwrap());
            assert_eq!(bearer(&h), None, "{v}");
        }
    }

    #[test]
    fn cluster_changes_need_the_operator() {
        use Need::*;
        let cases = [
            (Method::POST, "/v1/cluster/leave", Operator),
            (Method::DELETE, "/v1/cluster/leave", Operator),
            (
                Method::POST,
                "/v1/cluster/remove/00000000000000ab",
                Operator,
            ),
            (Method::POST, "/v1/repair", Operator),
            (Method::GET, "/v1/repair", Client),
            (Method::GET, "/v1/cluster", Client),
            (Method::POST, "/v1/crdt/k", Client),
            (Method::PUT, "/v1/kv/k", Client),
            (Method::GET, "/health", Nothing),
            (Method::GET, "/", Nothing),
            (Method::GET, "/v1/status", Client),
        ];
        for (m, p, need) in cases {
            assert_eq!(need_of(&m, p), need, "{m} {p}");
        }
    }

    #[test]
    fn hosts_are_ip_literals_localhost_or_configured_names() {
        let names = vec!["db.example.com".to_owned()];
        for ok in [
            "127.0.0.1:7200",
            "10.1.2.3",
            "[::1]:7200",
            "localhost:7200",
            "LOCALHOST",
            "db.example.com:7200",
            "DB.example.com.",
        ] {
            assert!(host_allowed(ok, &names), "{ok}");
        }
        for bad in [
            "evil.example:7200",
            "127.0.0.1.evil.example",
            "[evil]:1",
            "[::1].evil.example",
            "[::1]evil",
            "[::1]:80.evil.example",
            "[127.0.0.1]:1",
            "localhost:http",
            "127.0.0.1:99999",
            "x",
        ] {
            assert!(!host_allowed(bad, &names), "{bad}");
        }
    }

    #[test]
    fn failing_addresses_are_slowed_and_recover() {
        let l = FailureLimiter::default();
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        let other: IpAddr = "10.0.0.2".parse().unwrap();
        let t0 = Instant::now();
        for _ in 0..FAILURES_BURST {
            assert!(l.check(ip, t0).is_ok());
            l.failed(ip, t0);
        }
        assert_eq!(l.check(ip, t0), Err(1));
        assert!(l.check(other, t0).is_ok(), "other addresses are not slowed");
        let later = t0 + std::time::Duration::from_millis(1100);
        assert!(l.check(ip, later).is_ok(), "one more try after a second");
        l.failed(ip, later);
        assert!(l.check(ip, later).is_err());
    }

    #[test]
    fn the_limiter_stays_bounded() {
        let l = FailureLimiter::default();
        let t0 = Instant::now();
        for i in 0..(FAILURE_ADDRESSES_MAX as u32 + 100) {
            l.failed(IpAddr::from(i.to_be_bytes()), t0);
        }
        assert!(l.buckets.lock().unwrap().len() <= FAILURE_ADDRESSES_MAX);
    }
}
