//! HTTPS for the client side of the HTTP API: node URLs (`http://` or `https://`), the rustls
//! configuration that verifies a node's certificate against a CA the caller gives, and plain
//! words for TLS failures (an untrusted certificate, a name the certificate does not cover, a
//! plain-HTTP port).
//!
//! Trust is what the caller's CA file says, nothing else: no system roots are consulted. A
//! node's certificate must chain to that CA and name the host the client connects to: the host
//! of a URL the caller gave, or the IP address of a member learned from `GET /v1/cluster`
//! (members are reached at the `http_addr` the cluster reports, with the scheme of the URL the
//! client was given).

use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};

use super::Error;

/// A node's HTTP API address as a user writes it: `IP:PORT`, `host:port`, `http://…` or
/// `https://…` (a trailing `/` is ignored).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeUrl {
    /// The URL said `https://`.
    pub https: bool,
    /// The host as written (a DNS name or an IP address, without brackets), for the `Host`
    /// header and, over HTTPS, the name the certificate must carry.
    pub host: String,
    /// The port.
    pub port: u16,
    /// The address the host resolved to.
    pub addr: SocketAddr,
}

impl NodeUrl {
    /// Parses and resolves a node address.
    pub fn parse(s: &str) -> Result<NodeUrl, String> {
        let t = s.trim();
        let (https, rest) = if let Some(r) = t.strip_prefix("https://") {
            (true, r)
        } else if let Some(r) = t.strip_prefix("http://") {
            (false, r)
        } else if t.contains("://") {
            return Err(format!(
                "{s:?}: unknown scheme (expected http:// or https://)"
            ));
        } else {
            (false, t)
        };
        let authority = rest.trim_end_matches('/');
        let bad = || {
            format!(
                "{s:?} is not an address (expected IP:PORT, http://IP:PORT or https://HOST:PORT)"
            )
        };
        if authority.contains('/') {
            return Err(bad());
        }
        let (host, port) = authority.rsplit_once(':').ok_or_else(bad)?;
        let port: u16 = port.parse().map_err(|_| bad())?;
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if host.is_empty() {
            return Err(bad());
        }
        let addr = (host, port)
            .to_socket_addrs()
            .ok()
            .and_then(|mut a| a.next())
            .ok_or_else(bad)?;
        Ok(NodeUrl {
            https,
            host: host.to_owned(),
            port,
            addr,
        })
    }

    /// `http` or `https`.
    pub fn scheme(&self) -> &'static str {
        if self.https {
            "https"
        } else {
            "http"
        }
    }

    /// `host:port` (IPv6 hosts in brackets), for the `Host` header and URLs.
    pub fn authority(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }

    /// `scheme://host:port`, to which a path is appended.
    pub fn base(&self) -> String {
        format!("{}://{}", self.scheme(), self.authority())
    }

    /// The name a node's certificate must carry for this URL.
    pub fn server_name(&self) -> Result<ServerName<'static>, String> {
        ServerName::try_from(self.host.clone())
            .map_err(|_| format!("{:?} cannot be checked against a certificate", self.host))
    }
}

/// The CA certificates of a PEM text (at least one).
pub fn ca_certs(ca_pem: &str) -> Result<Vec<CertificateDer<'static>>, Error> {
    let certs = CertificateDer::pem_slice_iter(ca_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| Error::config(format!("the CA certificate: {e}")))?;
    if certs.is_empty() {
        return Err(Error::config("the CA file holds no certificate"));
    }
    Ok(certs)
}

/// The rustls configuration the client speaks HTTPS with: TLS 1.2 or 1.3 (ring), HTTP/1.1,
/// server certificates verified against the CA certificate(s) in `ca_pem` only, no client
/// certificate (clients authenticate with tokens).
pub fn https_client_config(ca_pem: &str) -> Result<Arc<rustls::ClientConfig>, Error> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in ca_certs(ca_pem)? {
        roots
            .add(cert)
            .map_err(|e| Error::config(format!("the CA certificate: {e}")))?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::config(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    tls.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(tls))
}

/// What a TLS failure means for someone connecting to a Chorus node over HTTPS.
pub fn explain_tls_error(e: &rustls::Error) -> String {
    use rustls::{CertificateError, Error as E, InvalidMessage};
    match e {
        E::InvalidCertificate(CertificateError::UnknownIssuer)
        | E::InvalidCertificate(CertificateError::BadSignature) => {
            format!("the node's certificate is not signed by the CA given (--ca / ca_pem): {e}")
        }
        E::InvalidCertificate(
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
        ) => format!(
            "the node's certificate does not name the host connected to (issue it with that \
             name: `chorus cert issue --name` or `--san`): {e}"
        ),
        E::InvalidCertificate(
            CertificateError::Expired
            | CertificateError::ExpiredContext { .. }
            | CertificateError::NotValidYet
            | CertificateError::NotValidYetContext { .. },
        ) => format!("the node's certificate is not valid now: {e}"),
        E::InvalidMessage(InvalidMessage::InvalidContentType)
        | E::InvalidMessage(InvalidMessage::MessageTooLarge) => {
            format!("the node did not answer in TLS: its port serves plain HTTP (use http://): {e}")
        }
        _ => format!("TLS: {e}"),
    }
}

/// [`explain_tls_error`] for the I/O error a TLS stream reports, or the error itself.
pub fn explain_io_error(e: &std::io::Error) -> String {
    if let Some(tls) = e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
    {
        return explain_tls_error(tls);
    }
    if e.kind() == std::io::ErrorKind::UnexpectedEof {
        return format!(
            "the connection closed during the TLS handshake (does the node serve HTTPS on this port? \
             a plain-HTTP node closes it): {e}"
        );
    }
    e.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_urls_keep_their_scheme_and_host() {
        let u = NodeUrl::parse("https://localhost:7200/").unwrap();
        assert!(u.https);
        assert_eq!(u.host, "localhost");
        assert_eq!(u.base(), "https://localhost:7200");
        assert!(u.addr.ip().is_loopback());
        let plain = NodeUrl::parse("127.0.0.1:7201").unwrap();
        assert!(!plain.https);
        assert_eq!(plain.addr, "127.0.0.1:7201".parse().unwrap());
        assert_eq!(
            NodeUrl::parse("http://[::1]:7202").unwrap().base(),
            "http://[::1]:7202"
        );
        assert!(NodeUrl::parse("ftp://127.0.0.1:1").is_err());
        assert!(NodeUrl::parse("https://127.0.0.1").is_err());
        assert!(NodeUrl::parse("https://127.0.0.1:7200/v1").is_err());
    }

    #[test]
    fn tls_failures_are_explained() {
        let unknown = rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer);
        assert!(explain_tls_error(&unknown).contains("not signed by the CA"));
        let plain = rustls::Error::InvalidMessage(rustls::InvalidMessage::InvalidContentType);
        assert!(explain_tls_error(&plain).contains("plain HTTP"));
        let wrapped = std::io::Error::new(std::io::ErrorKind::InvalidData, unknown);
        assert!(explain_io_error(&wrapped).contains("not signed by the CA"));
        assert!(https_client_config("not a pem").is_err());
    }
}
