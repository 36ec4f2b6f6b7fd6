//! The client token: when a node is configured with one (`--client-token-file`), every client
//! request over HTTP (`Authorization: Bearer <token>`, on every endpoint but `/health`) and over
//! QUIC (in each lane's hello) must carry it. Only a hash of the token is kept, and offered
//! tokens are compared by hash in constant time.

use std::path::Path;
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::Response;
use tracing::warn;

use crate::protocol::client::TOKEN_BYTES_MAX;

/// A configured client token.
#[derive(Clone)]
pub struct ClientToken {
    hash: blake3::Hash,
    /// The token itself: the node sends it when it asks its members for their figures (the
    /// status page), as a cluster shares one token.
    secret: String,
}

impl std::fmt::Debug for ClientToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ClientToken(..)")
    }
}

/// Why a token file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// The file could not be read.
    #[error("cannot read the client token file {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// The token is empty, too long, or not printable ASCII.
    #[error("the client token in {path} {problem}")]
    Invalid {
        /// The file.
        path: String,
        /// What is wrong with it.
        problem: &'static str,
    },
}

impl ClientToken {
    /// A token from its text (surrounding whitespace ignored).
    pub fn new(token: &str) -> Result<ClientToken, &'static str> {
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
        Ok(ClientToken {
            hash: blake3::hash(token.as_bytes()),
            secret: token.to_owned(),
        })
    }

    /// The token's text (for requests this node makes to its members).
    pub fn secret(&self) -> &str {
        &self.secret
    }

    /// Reads a token from a file: its whole content, surrounding whitespace ignored.
    pub fn load(path: &Path) -> Result<ClientToken, TokenError> {
        let text = std::fs::read_to_string(path).map_err(|source| TokenError::Read {
            path: path.display().to_string(),
            source,
        })?;
        ClientToken::new(&text).map_err(|problem| TokenError::Invalid {
            path: path.display().to_string(),
            problem,
        })
    }

    /// Whether `offered` is the token (constant time: `blake3::Hash` compares so).
    pub fn accepts(&self, offered: Option<&str>) -> bool {
        offered.is_some_and(|t| blake3::hash(t.trim().as_bytes()) == self.hash)
    }
}

/// Axum middleware: refuses (401) requests without the right bearer token, except `/health`.
pub(super) async fn require_token(
    State(token): State<Arc<ClientToken>>,
    request: Request,
    next: Next,
) -> Response {
    if request.uri().path() == "/health" {
        return next.run(request).await;
    }
    let offered = request
        .headers()
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    if token.accepts(offered) {
        return next.run(request).await;
    }
    let what = if offered.is_some() { "a wrong" } else { "no" };
    if let Some(suppressed) = crate::runtime::ratelog::AUTH.check() {
        warn!(suppressed, path = %request.uri().path(), "refused an HTTP request with {what} client token");
    }
    let mut resp = super::http::error(
        StatusCode::UNAUTHORIZED,
        "unauthorized",
        format!("{what} client token: send Authorization: Bearer <token>"),
    );
    resp.headers_mut().insert(
        axum::http::header::WWW_AUTHENTICATE,
        axum::http::HeaderValue::from_static("Bearer"),
    );
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_checked_and_bad_ones_refused() {
        let t = ClientToken::new(" s3cret\n").unwrap();
        assert!(t.accepts(Some("s3cret")));
        assert!(!t.accepts(Some("s3cre")));
        assert!(!t.accepts(Some("")));
        assert!(!t.accepts(None));
        assert!(ClientToken::new("  ").is_err());
        assert!(ClientToken::new("a b").is_err());
        assert!(ClientToken::new(&"x".repeat(5000)).is_err());
    }
}
