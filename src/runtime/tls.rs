//! Cluster PKI and TLS configuration for node-to-node QUIC, and the HTTPS identity of the HTTP
//! API.
//!
//! This module owns the cluster certificate authority ([`ClusterCa`]), node certificates
//! ([`NodeCert`]), their files on disk, and turning them into quinn client and server
//! configurations that enforce mutual TLS 1.3 under the cluster CA ([`quinn_configs`]), and the
//! HTTP API's server certificate ([`HttpsIdentity`], from `chorus start --http-tls-dir`). It
//! uses the `ring` crypto provider, passed explicitly, never a process-wide default.
//!
//! It opens no sockets and spawns no tasks: the transport (`runtime::transport`) does. It reads
//! the wall clock only to pick certificate validity periods and to check a loaded certificate has
//! not expired.
//!
//! # Files
//!
//! A CA directory holds `ca.pem` (certificate) and `ca.key` (private key, mode 0600). A node
//! directory is self-contained: `node.pem`, `node.key` (mode 0600) and a copy of the CA
//! certificate as `ca.pem`, which is all a node needs to join the cluster.
//!
//! An HTTPS directory (`--http-tls-dir`) holds `cert.pem` (the server certificate, leaf first,
//! then any intermediates) and `key.pem` (its private key, PKCS#8, PKCS#1 or SEC1 PEM): the
//! operator's own certificate, from any CA clients trust. A node directory from
//! `chorus cert issue` (no `cert.pem`, but `node.pem` and `node.key`) serves as one too: its
//! certificate names the `--name` and `--san` names given at issue, and clients verify the
//! names they connect to against those (see [`HttpsIdentity::load`]).
//!
//! # Trust model
//!
//! Every node certificate names [`NODE_SERVER_NAME`] as a DNS subject alternative name, and every
//! client verifies the server against that name, so any node signed by the cluster CA can talk to
//! any other whatever its address. Servers demand a client certificate chaining to the same CA.
//! A certificate from any other CA is refused during the handshake.
//!
//! # Roles
//!
//! Every certificate the CA issues says what it is for ([`CertRole`]) in its subject's
//! organizational unit, which the CA signs: [`NODE_ROLE`] for nodes ([`ClusterCa::issue_node`]),
//! [`CLIENT_ROLE`] for clients ([`ClusterCa::issue_client`]: client authentication only, and
//! without the [`NODE_SERVER_NAME`] name, so it can neither serve as a node nor pass as one).
//! Only node certificates speak the peer protocol: the transport closes a peer connection whose
//! certificate is not a node's ([`peer_role_check`]), and a node refuses to start with anything
//! but a node certificate. Certificates issued before roles existed carry none and are refused
//! as peers; `chorus dev` re-issues its own, and `chorus cert issue` issues new ones.

use std::borrow::Cow;
use std::fmt;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use quinn::{IdleTimeout, TransportConfig, VarInt};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};
use rustls::client::danger::ServerCertVerifier;
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::RootCertStore;

use crate::id::NodeId;

/// The DNS name every node certificate carries and every node (and client) verifies nodes
/// against.
pub const NODE_SERVER_NAME: &str = crate::protocol::client::NODE_SERVER_NAME;

/// ALPN protocol identifier of node-to-node traffic (peer RPC, gossip, anti-entropy).
pub const PEER_ALPN: &[u8] = b"chorus-peer/1";

/// File name of the CA certificate, in both CA and node directories.
pub const CA_CERT_FILE: &str = "ca.pem";
/// File name of the CA private key in a CA directory.
pub const CA_KEY_FILE: &str = "ca.key";
/// File name of the node certificate in a node directory.
pub const NODE_CERT_FILE: &str = "node.pem";
/// File name of the node private key in a node directory.
pub const NODE_KEY_FILE: &str = "node.key";
/// File name of the HTTPS server certificate (chain) in an HTTPS directory.
pub const HTTPS_CERT_FILE: &str = "cert.pem";
/// File name of the HTTPS server private key in an HTTPS directory.
pub const HTTPS_KEY_FILE: &str = "key.pem";
/// File name of a client certificate in a client directory.
pub const CLIENT_CERT_FILE: &str = "client.pem";
/// File name of a client private key in a client directory.
pub const CLIENT_KEY_FILE: &str = "client.key";

/// The subject organizational unit of node certificates.
pub const NODE_ROLE: &str = "chorus-node";
/// The subject organizational unit of client certificates.
pub const CLIENT_ROLE: &str = "chorus-client";

/// What a certificate is for, as its CA-signed subject says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CertRole {
    /// A cluster node: may speak the peer protocol.
    Node,
    /// A client: may not speak the peer protocol.
    Client,
}

impl CertRole {
    /// The organizational unit naming the role.
    pub fn unit(self) -> &'static str {
        match self {
            CertRole::Node => NODE_ROLE,
            CertRole::Client => CLIENT_ROLE,
        }
    }

    /// The lowercase name used in the CLI (`node`, `client`).
    pub fn as_str(self) -> &'static str {
        match self {
            CertRole::Node => "node",
            CertRole::Client => "client",
        }
    }
}

/// How long a freshly generated cluster CA is valid.
pub const CA_VALIDITY_DAYS: u32 = 10 * 365;
/// How long a freshly issued node certificate is valid.
pub const NODE_VALIDITY_DAYS: u32 = 5 * 365;
/// Certificates are valid from this long before their creation, to tolerate clock skew.
const BACKDATE_DAYS: u32 = 1;

/// Interval of QUIC keep-alive pings on peer connections, so idle links stay open.
pub const KEEP_ALIVE: Duration = Duration::from_secs(5);
/// A peer connection with no traffic (keep-alives included) for this long is closed.
pub const IDLE_TIMEOUT_MS: u32 = 30_000;
/// Most unidirectional streams a peer may have open towards us at once.
pub const UNI_STREAMS_MAX: u32 = 64;
/// Bytes of received datagrams quinn buffers before dropping the oldest.
pub const DATAGRAM_RECEIVE_BUFFER_BYTES: usize = 1 << 20;

/// Key-file permissions: owner read/write only.
#[cfg(unix)]
const KEY_FILE_MODE: u32 = 0o600;
/// Certificate-file permissions.
#[cfg(unix)]
const CERT_FILE_MODE: u32 = 0o644;

/// Why certificate material could not be generated, read, written or turned into a TLS
/// configuration. No variant leaves a partially written file behind except [`TlsError::Write`]
/// while creating a CA, which names the file.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read (missing, unreadable, not a file).
    #[error("cannot read {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A file or directory could not be written.
    #[error("cannot write {}: {source}", path.display())]
    Write {
        /// The file or directory.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// Saving a cluster CA would overwrite an existing one; nothing was written.
    #[error("{} already exists; refusing to overwrite a cluster CA", path.display())]
    AlreadyExists {
        /// The existing file.
        path: PathBuf,
    },
    /// A file holds no PEM certificate, or a malformed one.
    #[error("{} holds no valid PEM certificate: {reason}", path.display())]
    BadCertificate {
        /// The file.
        path: PathBuf,
        /// What was wrong.
        reason: String,
    },
    /// A file holds no PEM private key, or a malformed or unsupported one.
    #[error("{} holds no usable PEM private key: {reason}", path.display())]
    BadKey {
        /// The file.
        path: PathBuf,
        /// What was wrong.
        reason: String,
    },
    /// A private key does not belong to the certificate it was loaded with.
    #[error("the key in {} does not match the certificate in {}", key.display(), cert.display())]
    KeyMismatch {
        /// The certificate file.
        cert: PathBuf,
        /// The key file.
        key: PathBuf,
    },
    /// A node certificate does not verify under the CA it was loaded with (wrong CA, expired,
    /// or not a node certificate).
    #[error(
        "{} is not a valid node certificate under the CA in {}: {reason}",
        cert.display(),
        ca.display()
    )]
    NotTrusted {
        /// The node certificate file.
        cert: PathBuf,
        /// The CA certificate file.
        ca: PathBuf,
        /// What the verifier reported.
        reason: rustls::Error,
    },
    /// The node name cannot appear in a certificate (must be a DNS name or an IP address).
    #[error("invalid node name {name:?}: must be a DNS name or an IP address")]
    InvalidNodeName {
        /// The rejected name.
        name: String,
    },
    /// Certificate generation failed.
    #[error("certificate generation failed: {0}")]
    Generate(#[from] rcgen::Error),
    /// rustls rejected the configuration.
    #[error("TLS configuration rejected: {0}")]
    Rustls(#[from] rustls::Error),
    /// The client-certificate verifier could not be built.
    #[error("cannot build the client certificate verifier: {0}")]
    ClientVerifier(#[from] rustls::server::VerifierBuilderError),
    /// The TLS configuration lacks the cipher suite QUIC needs for its initial packets.
    #[error("TLS configuration unusable for QUIC: {0}")]
    Quic(#[from] quinn::crypto::rustls::NoInitialCipherSuite),
    /// A certificate's public key cannot be read, so no node id can be derived from it.
    #[error("cannot derive a node id from the certificate: {0}")]
    NoNodeId(String),
    /// An HTTPS directory holds no server certificate.
    #[error(
        "{} holds no HTTPS certificate: put {HTTPS_CERT_FILE} (the chain, leaf first) and \
         {HTTPS_KEY_FILE} in it, or use a node directory from `chorus cert issue` \
         ({NODE_CERT_FILE}, {NODE_KEY_FILE})",
        dir.display()
    )]
    NoHttpsCert {
        /// The directory.
        dir: PathBuf,
    },
    /// A certificate is outside its validity period.
    #[error("{} is not valid now: it is valid from {not_before} to {not_after}", path.display())]
    NotValidNow {
        /// The certificate file.
        path: PathBuf,
        /// Start of validity.
        not_before: String,
        /// End of validity.
        not_after: String,
    },
    /// A certificate is not for the role it is used in (a client certificate given to a node,
    /// or one issued before certificates carried roles).
    #[error(
        "{} is not a {wanted} certificate (it is {found}); issue one with `chorus cert issue --role {wanted}`",
        path.display()
    )]
    WrongRole {
        /// The certificate file.
        path: PathBuf,
        /// The role it must have.
        wanted: &'static str,
        /// What it is instead.
        found: String,
    },
}

/// The role a certificate's subject names, or `None` when it names none (issued before roles
/// existed, or by something else). A subject naming both is neither.
pub fn role_of(cert: &CertificateDer<'_>) -> Result<Option<CertRole>, TlsError> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref())
        .map_err(|e| TlsError::NoNodeId(e.to_string()))?;
    let mut node = false;
    let mut client = false;
    for unit in parsed.subject().iter_organizational_unit() {
        match unit.as_str() {
            Ok(NODE_ROLE) => node = true,
            Ok(CLIENT_ROLE) => client = true,
            _ => {}
        }
    }
    Ok(match (node, client) {
        (true, false) => Some(CertRole::Node),
        (false, true) => Some(CertRole::Client),
        _ => None,
    })
}

/// Checks that a peer's leaf certificate is a node certificate; the error says what it is
/// instead. The transport runs it on every peer-protocol connection, both ways.
pub fn peer_role_check(leaf: &CertificateDer<'_>) -> Result<(), String> {
    match role_of(leaf) {
        Ok(Some(CertRole::Node)) => Ok(()),
        Ok(Some(CertRole::Client)) => Err("the peer presented a client certificate".to_owned()),
        Ok(None) => Err("the peer's certificate names no role (not a node certificate)".to_owned()),
        Err(e) => Err(e.to_string()),
    }
}

fn role_name(role: Option<CertRole>) -> String {
    match role {
        Some(r) => format!("a {} certificate", r.as_str()),
        None => "a certificate without a role".to_owned(),
    }
}

/// The node id bound to a certificate: the first 8 bytes (big-endian) of BLAKE3 over its
/// subject public key info, with a domain-separation prefix. A node's id is therefore fixed by
/// its key: a process holding another node's certificate but not its key cannot complete a
/// handshake, and one with its own certificate can only ever speak as itself.
pub fn node_id_of(cert: &CertificateDer<'_>) -> Result<NodeId, TlsError> {
    Ok(node_id_of_spki(spki_of(cert)?))
}

/// The DER subject public key info of a certificate.
fn spki_of<'a>(cert: &'a CertificateDer<'_>) -> Result<&'a [u8], TlsError> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref())
        .map_err(|e| TlsError::NoNodeId(e.to_string()))?;
    Ok(parsed.tbs_certificate.subject_pki.raw)
}

/// The node id bound to a DER subject public key info (see [`node_id_of`]).
pub fn node_id_of_spki(spki: &[u8]) -> NodeId {
    let mut h = blake3::Hasher::new();
    h.update(b"chorus/node-id/v1\0");
    h.update(spki);
    let mut first = [0u8; 8];
    first.copy_from_slice(&h.finalize().as_bytes()[..8]);
    // Zero is never an id (the core uses it as "nobody"); a key hashing to it is as unlikely as
    // a collision, but map it away anyway.
    NodeId::new(u64::from_be_bytes(first).max(1))
}

/// Signs this node's ring entries with its certificate key (ECDSA P-256, SHA-256) and checks
/// other nodes' signatures. The "public key" a signed entry carries is the signer's whole
/// certificate (DER): it vouches for node `n` only when it is a current node certificate of the
/// cluster CA (role [`NODE_ROLE`]) and `n` is [`node_id_of`] it, exactly as the transport binds
/// ids to certificates. So a member cannot mint phantom members with keys of its own making.
pub struct CertAuth {
    cert: Vec<u8>,
    /// The public keys of the trusted CA certificates: an operator action (a removal) is
    /// believed when one of them signed it.
    operator_keys: Vec<Vec<u8>>,
    key: ring::signature::EcdsaKeyPair,
    rng: ring::rand::SystemRandom,
    verifier: Arc<dyn rustls::server::danger::ClientCertVerifier>,
}

impl fmt::Debug for CertAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CertAuth")
            .field("cert_len", &self.cert.len())
            .finish_non_exhaustive()
    }
}

impl CertAuth {
    /// The signer of the node holding `cert` (an ECDSA P-256 key, as [`ClusterCa`] issues).
    pub fn new(cert: &NodeCert) -> Result<CertAuth, TlsError> {
        let leaf = cert
            .chain
            .first()
            .ok_or_else(|| TlsError::NoNodeId("empty certificate chain".into()))?;
        let rng = ring::rand::SystemRandom::new();
        let roots = Arc::new(root_store(Path::new(CA_CERT_FILE), &cert.ca_certs)?);
        let verifier = WebPkiClientVerifier::builder_with_provider(roots, provider()).build()?;
        let PrivateKeyDer::Pkcs8(pkcs8) = &cert.key else {
            return Err(TlsError::NoNodeId(
                "the node key is not a PKCS#8 ECDSA P-256 key".into(),
            ));
        };
        let key = ring::signature::EcdsaKeyPair::from_pkcs8(
            &ring::signature::ECDSA_P256_SHA256_ASN1_SIGNING,
            pkcs8.secret_pkcs8_der(),
            &rng,
        )
        .map_err(|e| TlsError::NoNodeId(format!("the node key cannot sign ring entries: {e}")))?;
        let operator_keys = cert
            .ca_certs
            .iter()
            .filter_map(|ca| {
                let (_, parsed) = x509_parser::parse_x509_certificate(ca.as_ref()).ok()?;
                Some(
                    parsed
                        .tbs_certificate
                        .subject_pki
                        .subject_public_key
                        .data
                        .to_vec(),
                )
            })
            .collect();
        Ok(CertAuth {
            cert: leaf.as_ref().to_vec(),
            operator_keys,
            key,
            rng,
            verifier,
        })
    }
}

impl crate::membership::EntryAuth for CertAuth {
    fn public_key(&self) -> Vec<u8> {
        self.cert.clone()
    }

    fn sign(&self, message: &[u8]) -> Vec<u8> {
        // Signing fails only if the OS random source does; an empty signature is then refused
        // by every node, and the entry is signed again at its next change.
        self.key
            .sign(&self.rng, message)
            .map(|s| s.as_ref().to_vec())
            .unwrap_or_default()
    }

    fn verify_operator(&self, message: &[u8], signature: &[u8]) -> bool {
        !signature.is_empty()
            && self.operator_keys.iter().any(|key| {
                ring::signature::UnparsedPublicKey::new(
                    &ring::signature::ECDSA_P256_SHA256_ASN1,
                    key,
                )
                .verify(message, signature)
                .is_ok()
            })
    }

    fn verify(&self, node: NodeId, key: &[u8], message: &[u8], signature: &[u8]) -> bool {
        if key.is_empty() {
            return false;
        }
        let cert = CertificateDer::from(key);
        if node_id_of(&cert).ok() != Some(node)
            || peer_role_check(&cert).is_err()
            || self
                .verifier
                .verify_client_cert(&cert, &[], UnixTime::now())
                .is_err()
        {
            return false;
        }
        let Ok((_, parsed)) = x509_parser::parse_x509_certificate(key) else {
            return false;
        };
        ring::signature::UnparsedPublicKey::new(
            &ring::signature::ECDSA_P256_SHA256_ASN1,
            &parsed.tbs_certificate.subject_pki.subject_public_key.data,
        )
        .verify(message, signature)
        .is_ok()
    }
}

/// The crypto provider every configuration here uses: `ring`, passed explicitly.
fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The cluster certificate authority: signs node certificates.
///
/// Holds the CA private key; keep its directory off the nodes in production and hand each node
/// only its [`NodeCert`] directory.
pub struct ClusterCa {
    issuer: Issuer<'static, KeyPair>,
    cert_pem: String,
    cert_der: CertificateDer<'static>,
}

impl fmt::Debug for ClusterCa {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClusterCa").finish_non_exhaustive()
    }
}

impl ClusterCa {
    /// Generates a new CA (ECDSA P-256) whose subject common name is `common_name`.
    pub fn generate(common_name: &str) -> Result<ClusterCa, TlsError> {
        let mut params = CertificateParams::default();
        params.distinguished_name = distinguished_name(common_name);
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        set_validity(&mut params, CA_VALIDITY_DAYS);
        let key = KeyPair::generate()?;
        let cert = params.self_signed(&key)?;
        Ok(ClusterCa {
            cert_pem: cert.pem(),
            cert_der: cert.der().clone(),
            issuer: Issuer::new(params, key),
        })
    }

    /// The operator's signature of `message` with the CA key (ECDSA P-256, ASN.1 DER): what
    /// an operator action such as a removal carries, and what every node checks against the
    /// CA certificate ([`CertAuth`]'s [`crate::membership::EntryAuth::verify_operator`]).
    pub fn sign_operator(&self, message: &[u8]) -> Result<Vec<u8>, TlsError> {
        let bad = |reason: String| TlsError::BadKey {
            path: PathBuf::from(CA_KEY_FILE),
            reason,
        };
        // Nodes check operator signatures as ECDSA P-256 (ASN.1), whatever key rcgen loaded.
        let key = self.issuer.key();
        if key.algorithm() != &rcgen::PKCS_ECDSA_P256_SHA256 {
            return Err(bad("the CA key is not an ECDSA P-256 key".into()));
        }
        rcgen::SigningKey::sign(key, message).map_err(|e| bad(format!("cannot sign: {e}")))
    }

    /// The CA certificate in PEM form (what nodes trust).
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The CA certificate in DER form.
    pub fn cert_der(&self) -> &CertificateDer<'static> {
        &self.cert_der
    }

    /// Writes `ca.pem` and `ca.key` (mode 0600) into `dir`, creating it if needed.
    ///
    /// Refuses to overwrite an existing CA: losing a cluster's CA key is not recoverable.
    pub fn save(&self, dir: &Path) -> Result<(), TlsError> {
        let cert_path = dir.join(CA_CERT_FILE);
        let key_path = dir.join(CA_KEY_FILE);
        for path in [&cert_path, &key_path] {
            if path.exists() {
                return Err(TlsError::AlreadyExists { path: path.clone() });
            }
        }
        create_dir(dir)?;
        write_new(
            &key_path,
            self.issuer.key().serialize_pem().as_bytes(),
            true,
        )?;
        write_new(&cert_path, self.cert_pem.as_bytes(), false)?;
        Ok(())
    }

    /// Reads a CA saved by [`ClusterCa::save`] from `dir`.
    pub fn load(dir: &Path) -> Result<ClusterCa, TlsError> {
        let cert_path = dir.join(CA_CERT_FILE);
        let key_path = dir.join(CA_KEY_FILE);
        let cert_pem = read_string(&cert_path)?;
        let key_pem = read_string(&key_path)?;
        let cert_der = parse_certs(&cert_path, &cert_pem)?.swap_remove(0);
        let key = KeyPair::from_pem(&key_pem).map_err(|e| TlsError::BadKey {
            path: key_path.clone(),
            reason: e.to_string(),
        })?;
        let key_der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        check_keys_match(&cert_path, &key_path, &cert_der, key_der)?;
        let issuer =
            Issuer::from_ca_cert_der(&cert_der, key).map_err(|e| TlsError::BadCertificate {
                path: cert_path.clone(),
                reason: e.to_string(),
            })?;
        Ok(ClusterCa {
            issuer,
            cert_pem,
            cert_der,
        })
    }

    /// Loads the CA in `dir`, or, if `dir` holds neither `ca.pem` nor `ca.key`, generates one
    /// named `common_name` and saves it there: how a local development cluster gets its CA.
    /// A directory holding only one of the two files is an error naming the missing one.
    pub fn load_or_generate(dir: &Path, common_name: &str) -> Result<ClusterCa, TlsError> {
        let cert_exists = dir.join(CA_CERT_FILE).exists();
        let key_exists = dir.join(CA_KEY_FILE).exists();
        if cert_exists || key_exists {
            return ClusterCa::load(dir);
        }
        let ca = ClusterCa::generate(common_name)?;
        ca.save(dir)?;
        Ok(ca)
    }

    /// Issues a node certificate for `name` (a DNS name or IP address), with subject alternative
    /// names [`NODE_SERVER_NAME`] and `name`, usable for both server and client authentication.
    pub fn issue_node(&self, name: &str) -> Result<NodeCert, TlsError> {
        self.issue_node_with_names(name, &[])
    }

    /// Like [`ClusterCa::issue_node`], with more subject alternative names (DNS names or IP
    /// addresses): every name HTTPS clients use to reach the node (`chorus start
    /// --http-tls-dir` serves this certificate), including the IP address of its `--http`,
    /// which is how clients reach the members they learn from `GET /v1/cluster`.
    pub fn issue_node_with_names(
        &self,
        name: &str,
        extra: &[String],
    ) -> Result<NodeCert, TlsError> {
        let mut sans = vec![NODE_SERVER_NAME.to_owned()];
        for n in std::iter::once(name).chain(extra.iter().map(String::as_str)) {
            if n.is_empty() || ServerName::try_from(n).is_err() {
                return Err(TlsError::InvalidNodeName { name: n.to_owned() });
            }
            if !sans.iter().any(|s| s == n) {
                sans.push(n.to_owned());
            }
        }
        let mut params = CertificateParams::new(sans)?;
        params.distinguished_name = distinguished_name(name);
        params
            .distinguished_name
            .push(DnType::OrganizationalUnitName, NODE_ROLE);
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.use_authority_key_identifier_extension = true;
        set_validity(&mut params, NODE_VALIDITY_DAYS);
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(NodeCert {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            ca_pem: self.cert_pem.clone(),
            chain: vec![cert.der().clone()],
            key: PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
            ca_certs: vec![self.cert_der.clone()],
        })
    }
}

impl ClusterCa {
    /// Issues a client certificate for `name` (any printable name, put in the subject's common
    /// name): role [`CLIENT_ROLE`], client authentication only, and no subject alternative name,
    /// so it cannot serve as a node nor speak the peer protocol. Save it with
    /// [`NodeCert::save_client`].
    pub fn issue_client(&self, name: &str) -> Result<NodeCert, TlsError> {
        if name.is_empty() || name.len() > 64 || name.chars().any(|c| c.is_control()) {
            return Err(TlsError::InvalidNodeName {
                name: name.to_owned(),
            });
        }
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.distinguished_name = distinguished_name(name);
        params
            .distinguished_name
            .push(DnType::OrganizationalUnitName, CLIENT_ROLE);
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.use_authority_key_identifier_extension = true;
        set_validity(&mut params, NODE_VALIDITY_DAYS);
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(NodeCert {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            ca_pem: self.cert_pem.clone(),
            chain: vec![cert.der().clone()],
            key: PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
            ca_certs: vec![self.cert_der.clone()],
        })
    }
}

/// A node's certificate, its private key, and the CA certificate(s) it trusts: everything
/// [`quinn_configs`] needs. (A client certificate from [`ClusterCa::issue_client`] has the same
/// parts.)
pub struct NodeCert {
    cert_pem: String,
    key_pem: String,
    ca_pem: String,
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    ca_certs: Vec<CertificateDer<'static>>,
}

impl Clone for NodeCert {
    fn clone(&self) -> Self {
        NodeCert {
            cert_pem: self.cert_pem.clone(),
            key_pem: self.key_pem.clone(),
            ca_pem: self.ca_pem.clone(),
            chain: self.chain.clone(),
            key: self.key.clone_key(),
            ca_certs: self.ca_certs.clone(),
        }
    }
}

impl fmt::Debug for NodeCert {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NodeCert")
            .field("chain_len", &self.chain.len())
            .field("ca_certs_len", &self.ca_certs.len())
            .finish_non_exhaustive()
    }
}

impl NodeCert {
    /// Writes `node.pem`, `node.key` (mode 0600) and `ca.pem` into `dir`, creating it if
    /// needed. Each file is replaced atomically, so re-issuing a node's certificate is safe.
    pub fn save(&self, dir: &Path) -> Result<(), TlsError> {
        create_dir(dir)?;
        let files = TlsFiles::in_dir(dir);
        write_replace(&files.key, self.key_pem.as_bytes(), true)?;
        write_replace(&files.cert, self.cert_pem.as_bytes(), false)?;
        write_replace(&files.ca_cert, self.ca_pem.as_bytes(), false)?;
        Ok(())
    }

    /// Reads a node directory written by [`NodeCert::save`]; see [`TlsFiles::load`].
    pub fn load(dir: &Path) -> Result<NodeCert, TlsError> {
        TlsFiles::in_dir(dir).load()
    }

    /// Writes a client certificate as `client.pem`, `client.key` (mode 0600) and `ca.pem` into
    /// `dir`, creating it if needed.
    pub fn save_client(&self, dir: &Path) -> Result<(), TlsError> {
        create_dir(dir)?;
        let files = TlsFiles::client_in_dir(dir);
        write_replace(&files.key, self.key_pem.as_bytes(), true)?;
        write_replace(&files.cert, self.cert_pem.as_bytes(), false)?;
        write_replace(&files.ca_cert, self.ca_pem.as_bytes(), false)?;
        Ok(())
    }

    /// Reads a client directory written by [`NodeCert::save_client`]: the files must parse, the
    /// key match, and the certificate be a current client certificate of the CA beside it.
    pub fn load_client(dir: &Path) -> Result<NodeCert, TlsError> {
        TlsFiles::client_in_dir(dir).load_client()
    }

    /// The node certificate in PEM form.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The trusted CA certificate(s) in PEM form.
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// The node's certificate chain, leaf first, in DER form.
    pub fn chain(&self) -> &[CertificateDer<'static>] {
        &self.chain
    }

    /// The node id this certificate binds ([`node_id_of`] its leaf).
    pub fn node_id(&self) -> Result<NodeId, TlsError> {
        let leaf = self
            .chain
            .first()
            .ok_or_else(|| TlsError::NoNodeId("empty certificate chain".into()))?;
        node_id_of(leaf)
    }

    /// A quinn endpoint configuration that lets this node's peers notice at once when it
    /// restarts.
    ///
    /// A node that crashes and restarts on the same address leaves its peers holding
    /// connections to its previous incarnation; with quinn's defaults they only notice after
    /// the idle timeout (30 s), and everything they send meanwhile is lost. This configuration
    /// derives the stateless-reset key from the node's private key (HMAC-SHA256 with a fixed
    /// label: stable across restarts, revealing nothing about the key) and accepts any
    /// connection ID as possibly its own, so the new incarnation answers such packets with a
    /// stateless reset the peer recognises, and the peer reconnects on its next send.
    pub fn endpoint_config(&self) -> quinn::EndpointConfig {
        let secret_key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, self.key.secret_der());
        let reset_secret = ring::hmac::sign(&secret_key, b"chorus quic stateless reset key v1");
        let cid_secret = ring::hmac::sign(&secret_key, b"chorus quic connection id key v1");
        let reset_key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, reset_secret.as_ref());
        let cid_key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, cid_secret.as_ref());
        let mut config = quinn::EndpointConfig::new(Arc::new(reset_key));
        config.cid_generator(move || Box::new(RandomCidGenerator::new(cid_key.clone())));
        config
    }
}

/// Length of the connection IDs this node issues.
const CID_LEN: usize = 8;

/// Issues random 8-byte connection IDs and, unlike quinn's default generator (whose IDs carry
/// a per-process checksum), treats every ID as possibly its own, so a restarted node answers
/// packets for its previous incarnation's connections with a stateless reset instead of
/// silently dropping them. Resets are smaller than the packets that provoke them and
/// rate-limited by quinn, so this cannot amplify traffic.
struct RandomCidGenerator {
    rng: ring::rand::SystemRandom,
    /// Fallback if the OS random source fails: a keyed PRF over a counter and the clock.
    fallback_key: ring::hmac::Key,
    fallback_counter: u64,
}

impl RandomCidGenerator {
    fn new(fallback_key: ring::hmac::Key) -> RandomCidGenerator {
        RandomCidGenerator {
            rng: ring::rand::SystemRandom::new(),
            fallback_key,
            fallback_counter: 0,
        }
    }
}

impl quinn::ConnectionIdGenerator for RandomCidGenerator {
    fn generate_cid(&mut self) -> quinn::ConnectionId {
        use ring::rand::SecureRandom;
        let mut cid = [0u8; CID_LEN];
        if self.rng.fill(&mut cid).is_err() {
            self.fallback_counter = self.fallback_counter.wrapping_add(1);
            let nanos = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos());
            let mut input = [0u8; 24];
            input[..8].copy_from_slice(&self.fallback_counter.to_le_bytes());
            input[8..].copy_from_slice(&nanos.to_le_bytes());
            let tag = ring::hmac::sign(&self.fallback_key, &input);
            cid.copy_from_slice(&tag.as_ref()[..CID_LEN]);
        }
        quinn::ConnectionId::new(&cid)
    }

    fn cid_len(&self) -> usize {
        CID_LEN
    }

    fn cid_lifetime(&self) -> Option<Duration> {
        None
    }
}

/// Paths of the three files a node's TLS needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// PEM file of the cluster CA certificate(s) to trust.
    pub ca_cert: PathBuf,
    /// PEM file of this node's certificate (leaf first, then any intermediates).
    pub cert: PathBuf,
    /// PEM file of this node's private key.
    pub key: PathBuf,
}

impl TlsFiles {
    /// The standard layout of a node directory: `ca.pem`, `node.pem`, `node.key`.
    pub fn in_dir(dir: &Path) -> TlsFiles {
        TlsFiles {
            ca_cert: dir.join(CA_CERT_FILE),
            cert: dir.join(NODE_CERT_FILE),
            key: dir.join(NODE_KEY_FILE),
        }
    }

    /// The layout of a client directory: `ca.pem`, `client.pem`, `client.key`.
    pub fn client_in_dir(dir: &Path) -> TlsFiles {
        TlsFiles {
            ca_cert: dir.join(CA_CERT_FILE),
            cert: dir.join(CLIENT_CERT_FILE),
            key: dir.join(CLIENT_KEY_FILE),
        }
    }

    /// Reads and checks a client certificate's files (see [`NodeCert::load_client`]).
    pub fn load_client(&self) -> Result<NodeCert, TlsError> {
        let ca_pem = read_string(&self.ca_cert)?;
        let cert_pem = read_string(&self.cert)?;
        let key_pem = read_string(&self.key)?;
        let ca_certs = parse_certs(&self.ca_cert, &ca_pem)?;
        let chain = parse_certs(&self.cert, &cert_pem)?;
        let key =
            PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(|e| TlsError::BadKey {
                path: self.key.clone(),
                reason: e.to_string(),
            })?;
        check_keys_match(&self.cert, &self.key, &chain[0], key.clone_key())?;
        let roots = Arc::new(root_store(&self.ca_cert, &ca_certs)?);
        let verifier = WebPkiClientVerifier::builder_with_provider(roots, provider())
            .build()
            .map_err(|e| TlsError::BadCertificate {
                path: self.ca_cert.clone(),
                reason: e.to_string(),
            })?;
        verifier
            .verify_client_cert(&chain[0], &chain[1..], UnixTime::now())
            .map_err(|reason| TlsError::NotTrusted {
                cert: self.cert.clone(),
                ca: self.ca_cert.clone(),
                reason,
            })?;
        let role = role_of(&chain[0])?;
        if role != Some(CertRole::Client) {
            return Err(TlsError::WrongRole {
                path: self.cert.clone(),
                wanted: CertRole::Client.as_str(),
                found: role_name(role),
            });
        }
        Ok(NodeCert {
            cert_pem,
            key_pem,
            ca_pem,
            chain,
            key,
            ca_certs,
        })
    }

    /// Reads and checks the three files: each must parse, the key must match the certificate,
    /// and the certificate must verify under the CA as a current node certificate (name
    /// [`NODE_SERVER_NAME`], role [`NODE_ROLE`], not expired). Errors name the offending file.
    pub fn load(&self) -> Result<NodeCert, TlsError> {
        let ca_pem = read_string(&self.ca_cert)?;
        let cert_pem = read_string(&self.cert)?;
        let key_pem = read_string(&self.key)?;
        let ca_certs = parse_certs(&self.ca_cert, &ca_pem)?;
        let chain = parse_certs(&self.cert, &cert_pem)?;
        let key =
            PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(|e| TlsError::BadKey {
                path: self.key.clone(),
                reason: e.to_string(),
            })?;
        check_keys_match(&self.cert, &self.key, &chain[0], key.clone_key())?;
        let roots = root_store(&self.ca_cert, &ca_certs)?;
        let verifier = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider())
            .build()
            .map_err(|e| TlsError::BadCertificate {
                path: self.ca_cert.clone(),
                reason: e.to_string(),
            })?;
        let server_name = ServerName::try_from(NODE_SERVER_NAME)
            .map_err(|e| TlsError::Rustls(rustls::Error::General(e.to_string())))?;
        verifier
            .verify_server_cert(&chain[0], &chain[1..], &server_name, &[], UnixTime::now())
            .map_err(|reason| TlsError::NotTrusted {
                cert: self.cert.clone(),
                ca: self.ca_cert.clone(),
                reason,
            })?;
        let role = role_of(&chain[0])?;
        if role != Some(CertRole::Node) {
            return Err(TlsError::WrongRole {
                path: self.cert.clone(),
                wanted: CertRole::Node.as_str(),
                found: role_name(role),
            });
        }
        Ok(NodeCert {
            cert_pem,
            key_pem,
            ca_pem,
            chain,
            key,
            ca_certs,
        })
    }
}

/// The HTTP API's server certificate and the rustls configuration serving it (HTTP/1.1 over
/// TLS 1.2 or 1.3, no client certificates: clients authenticate with tokens).
#[derive(Clone)]
pub struct HttpsIdentity {
    /// The certificate file it was read from.
    pub cert: PathBuf,
    /// The key file it was read from.
    pub key: PathBuf,
    /// The DNS names and IP addresses the certificate names (what clients may connect to).
    pub names: Vec<String>,
    /// When the certificate expires (as the certificate says).
    pub not_after: String,
    config: Arc<rustls::ServerConfig>,
}

impl fmt::Debug for HttpsIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HttpsIdentity")
            .field("cert", &self.cert)
            .field("key", &self.key)
            .field("names", &self.names)
            .finish_non_exhaustive()
    }
}

impl HttpsIdentity {
    /// Reads the HTTPS identity in `dir`: `cert.pem` and `key.pem`, or, when neither exists,
    /// a node directory's `node.pem` and `node.key`. The certificate must parse, be valid now
    /// and match the key; errors name the file at fault. Nothing checks who signed it: that is
    /// for clients to verify.
    pub fn load(dir: &Path) -> Result<HttpsIdentity, TlsError> {
        let (cert_path, key_path) = {
            let cert = dir.join(HTTPS_CERT_FILE);
            let key = dir.join(HTTPS_KEY_FILE);
            let node_cert = dir.join(NODE_CERT_FILE);
            if cert.exists() || key.exists() || !node_cert.exists() {
                if !cert.exists() && !key.exists() {
                    return Err(TlsError::NoHttpsCert {
                        dir: dir.to_owned(),
                    });
                }
                (cert, key)
            } else {
                (node_cert, dir.join(NODE_KEY_FILE))
            }
        };
        let cert_pem = read_string(&cert_path)?;
        let key_pem = read_string(&key_path)?;
        let chain = parse_certs(&cert_path, &cert_pem)?;
        let key =
            PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(|e| TlsError::BadKey {
                path: key_path.clone(),
                reason: e.to_string(),
            })?;
        check_keys_match(&cert_path, &key_path, &chain[0], key.clone_key())?;
        let bad = |reason: String| TlsError::BadCertificate {
            path: cert_path.clone(),
            reason,
        };
        let (_, leaf) = x509_parser::parse_x509_certificate(chain[0].as_ref())
            .map_err(|e| bad(e.to_string()))?;
        let validity = leaf.validity();
        let not_after = validity.not_after.to_string();
        if !validity.is_valid() {
            return Err(TlsError::NotValidNow {
                path: cert_path.clone(),
                not_before: validity.not_before.to_string(),
                not_after,
            });
        }
        let mut names = Vec::new();
        if let Ok(Some(san)) = leaf.subject_alternative_name() {
            for name in &san.value.general_names {
                match name {
                    x509_parser::extensions::GeneralName::DNSName(d) => names.push(d.to_string()),
                    x509_parser::extensions::GeneralName::IPAddress(ip) => {
                        let ip = match ip.len() {
                            4 => <[u8; 4]>::try_from(*ip).ok().map(std::net::IpAddr::from),
                            16 => <[u8; 16]>::try_from(*ip).ok().map(std::net::IpAddr::from),
                            _ => None,
                        };
                        names.extend(ip.map(|ip| ip.to_string()));
                    }
                    _ => {}
                }
            }
        }
        let mut config = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_single_cert(chain, key)?;
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(HttpsIdentity {
            cert: cert_path,
            key: key_path,
            names,
            not_after,
            config: Arc::new(config),
        })
    }

    /// The rustls server configuration.
    pub fn server_config(&self) -> Arc<rustls::ServerConfig> {
        self.config.clone()
    }
}

/// Certificate material [`quinn_configs`] accepts: a [`NodeCert`] already in memory, or the
/// [`TlsFiles`] to load one from.
pub trait TlsMaterial {
    /// The node certificate, loaded (and checked) if need be.
    fn node_cert(&self) -> Result<Cow<'_, NodeCert>, TlsError>;
}

impl TlsMaterial for NodeCert {
    fn node_cert(&self) -> Result<Cow<'_, NodeCert>, TlsError> {
        Ok(Cow::Borrowed(self))
    }
}

impl TlsMaterial for TlsFiles {
    fn node_cert(&self) -> Result<Cow<'_, NodeCert>, TlsError> {
        self.load().map(Cow::Owned)
    }
}

/// The QUIC transport parameters of peer connections: keep-alive every [`KEEP_ALIVE`], idle
/// timeout [`IDLE_TIMEOUT_MS`], datagrams enabled, at most [`UNI_STREAMS_MAX`] concurrent
/// unidirectional streams per peer and no bidirectional streams (the peer transport neither
/// opens nor accepts them; raise the limit before using them).
pub fn peer_transport_config() -> TransportConfig {
    let mut config = TransportConfig::default();
    config
        .keep_alive_interval(Some(KEEP_ALIVE))
        .max_idle_timeout(Some(IdleTimeout::from(VarInt::from_u32(IDLE_TIMEOUT_MS))))
        .max_concurrent_uni_streams(VarInt::from_u32(UNI_STREAMS_MAX))
        .max_concurrent_bidi_streams(VarInt::from_u32(0))
        .datagram_receive_buffer_size(Some(DATAGRAM_RECEIVE_BUFFER_BYTES));
    config
}

/// Builds the server and client halves of mutual TLS 1.3 for one endpoint.
///
/// `material` is a loaded [`NodeCert`] or the [`TlsFiles`] to load it from. The server demands a
/// client certificate that chains to the node's CA certificates; the client presents the node's
/// certificate and accepts only a server certificate that chains to the same CAs and names
/// [`NODE_SERVER_NAME`]. Both offer exactly the `alpn` protocols (use `&[PEER_ALPN]` for
/// node-to-node traffic), so a peer offering none of them is refused, and both use
/// [`peer_transport_config`].
pub fn quinn_configs(
    material: &impl TlsMaterial,
    alpn: &[&[u8]],
) -> Result<(quinn::ServerConfig, quinn::ClientConfig), TlsError> {
    configs(material, alpn, alpn, false)
}

/// The configurations a node runs with: like [`quinn_configs`] for [`PEER_ALPN`], except that
/// the server also accepts QUIC API clients ([`CLIENT_ALPN`]), which present no certificate.
///
/// A client certificate is therefore optional in the handshake (one that is presented must
/// still chain to the cluster CA); the transport closes any peer-ALPN connection that did not
/// present one before reading a byte from it. Clients may open up to [`CLIENT_LANES_MAX`]
/// bidirectional streams.
pub fn node_quinn_configs(
    material: &impl TlsMaterial,
) -> Result<(quinn::ServerConfig, quinn::ClientConfig), TlsError> {
    configs(material, &[PEER_ALPN, CLIENT_ALPN], &[PEER_ALPN], true)
}

/// Bidirectional streams (lanes) a QUIC API client may have open on one connection.
pub const CLIENT_LANES_MAX: u32 = 32;

/// ALPN protocol identifier of the QUIC client API.
pub const CLIENT_ALPN: &[u8] = crate::protocol::client::CLIENT_ALPN;

fn configs(
    material: &impl TlsMaterial,
    server_alpn: &[&[u8]],
    client_alpn: &[&[u8]],
    serve_clients: bool,
) -> Result<(quinn::ServerConfig, quinn::ClientConfig), TlsError> {
    let node = material.node_cert()?;
    let provider = provider();
    let alpn = |list: &[&[u8]]| -> Vec<Vec<u8>> { list.iter().map(|p| p.to_vec()).collect() };
    let roots = Arc::new(root_store(Path::new(CA_CERT_FILE), &node.ca_certs)?);
    let transport = Arc::new(peer_transport_config());

    let verifier = WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone());
    let client_verifier = if serve_clients {
        verifier.allow_unauthenticated().build()?
    } else {
        verifier.build()?
    };
    let mut server = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(client_verifier)
        .with_single_cert(node.chain.clone(), node.key.clone_key())?;
    server.alpn_protocols = alpn(server_alpn);
    let mut server_config =
        quinn::ServerConfig::with_crypto(Arc::new(QuicServerConfig::try_from(server)?));
    if serve_clients {
        let mut t = peer_transport_config();
        t.max_concurrent_bidi_streams(VarInt::from_u32(CLIENT_LANES_MAX));
        server_config.transport_config(Arc::new(t));
    } else {
        server_config.transport_config(transport.clone());
    }

    let mut client = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(roots)
        .with_client_auth_cert(node.chain.clone(), node.key.clone_key())?;
    client.alpn_protocols = alpn(client_alpn);
    let mut client_config = quinn::ClientConfig::new(Arc::new(QuicClientConfig::try_from(client)?));
    client_config.transport_config(transport);

    Ok((server_config, client_config))
}

fn distinguished_name(common_name: &str) -> DistinguishedName {
    let mut name = DistinguishedName::new();
    name.push(DnType::OrganizationName, "Chorus");
    name.push(DnType::CommonName, common_name);
    name
}

/// Valid from [`BACKDATE_DAYS`] before today (UTC midnight) for `days` days.
fn set_validity(params: &mut CertificateParams, days: u32) {
    let today = time::OffsetDateTime::from(SystemTime::now()).replace_time(time::Time::MIDNIGHT);
    params.not_before = today - time::Duration::days(BACKDATE_DAYS.into());
    params.not_after = today + time::Duration::days(days.into());
}

fn root_store(path: &Path, certs: &[CertificateDer<'static>]) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in certs {
        roots
            .add(cert.clone())
            .map_err(|e| TlsError::BadCertificate {
                path: path.to_owned(),
                reason: format!("not usable as a trust anchor: {e}"),
            })?;
    }
    Ok(roots)
}

/// Checks that `key` is the private key of `cert`.
fn check_keys_match(
    cert_path: &Path,
    key_path: &Path,
    cert: &CertificateDer<'static>,
    key: PrivateKeyDer<'static>,
) -> Result<(), TlsError> {
    let signing_key =
        provider()
            .key_provider
            .load_private_key(key)
            .map_err(|e| TlsError::BadKey {
                path: key_path.to_owned(),
                reason: e.to_string(),
            })?;
    rustls::sign::CertifiedKey::new(vec![cert.clone()], signing_key)
        .keys_match()
        .map_err(|_| TlsError::KeyMismatch {
            cert: cert_path.to_owned(),
            key: key_path.to_owned(),
        })
}

/// All certificates of a PEM file; at least one.
fn parse_certs(path: &Path, pem: &str) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::BadCertificate {
            path: path.to_owned(),
            reason: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(TlsError::BadCertificate {
            path: path.to_owned(),
            reason: "no CERTIFICATE block".to_owned(),
        });
    }
    Ok(certs)
}

fn read_string(path: &Path) -> Result<String, TlsError> {
    std::fs::read_to_string(path).map_err(|source| TlsError::Read {
        path: path.to_owned(),
        source,
    })
}

fn create_dir(dir: &Path) -> Result<(), TlsError> {
    std::fs::create_dir_all(dir).map_err(|source| TlsError::Write {
        path: dir.to_owned(),
        source,
    })
}

fn open_options(secret: bool) -> std::fs::OpenOptions {
    let mut options = std::fs::OpenOptions::new();
    options.write(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(if secret {
            KEY_FILE_MODE
        } else {
            CERT_FILE_MODE
        });
    }
    #[cfg(not(unix))]
    let _ = secret;
    options
}

/// Creates `path`, failing if it exists, and writes `bytes` durably.
fn write_new(path: &Path, bytes: &[u8], secret: bool) -> Result<(), TlsError> {
    let wrap = |source| TlsError::Write {
        path: path.to_owned(),
        source,
    };
    let mut file = open_options(secret)
        .create_new(true)
        .open(path)
        .map_err(|e| {
            if e.kind() == std::io::ErrorKind::AlreadyExists {
                TlsError::AlreadyExists {
                    path: path.to_owned(),
                }
            } else {
                wrap(e)
            }
        })?;
    file.write_all(bytes).map_err(wrap)?;
    file.sync_all().map_err(wrap)
}

/// Replaces `path` atomically (write a temporary file beside it, then rename).
fn write_replace(path: &Path, bytes: &[u8], secret: bool) -> Result<(), TlsError> {
    let wrap = |source| TlsError::Write {
        path: path.to_owned(),
        source,
    };
    let mut tmp_name = path.file_name().unwrap_or_default().to_os_string();
    tmp_name.push(format!(".tmp-{}", std::process::id()));
    let tmp = path.with_file_name(tmp_name);
    let result = (|| {
        let mut file = open_options(secret)
            .create(true)
            .truncate(true)
            .open(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.map_err(wrap)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fresh, empty directory under the system temp dir, removed on drop.
    pub(crate) struct TempDir(pub(crate) PathBuf);

    impl TempDir {
        pub(crate) fn new(label: &str) -> TempDir {
            use std::sync::atomic::{AtomicU32, Ordering};
            static NEXT: AtomicU32 = AtomicU32::new(0);
            let n = NEXT.fetch_add(1, Ordering::Relaxed);
            let path =
                std::env::temp_dir().join(format!("chorus-tls-{label}-{}-{n}", std::process::id()));
            let _ = std::fs::remove_dir_all(&path);
            std::fs::create_dir_all(&path).expect("create temp dir");
            TempDir(path)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    #[test]
    fn certificates_are_valid_from_yesterday_midnight_for_the_days_asked() {
        let mut params = CertificateParams::default();
        set_validity(&mut params, 30);
        let now = time::OffsetDateTime::now_utc();
        assert_eq!(params.not_before.time(), time::Time::MIDNIGHT);
        assert_eq!(params.not_before.offset(), time::UtcOffset::UTC);
        assert!(params.not_before < now - time::Duration::days(1) + time::Duration::minutes(1));
        assert!(params.not_before > now - time::Duration::days(2));
        assert_eq!(
            params.not_after - params.not_before,
            time::Duration::days(31)
        );
    }

    #[test]
    fn ca_save_load_round_trip_and_issue() {
        let dir = TempDir::new("ca");
        let ca = ClusterCa::generate("test cluster").unwrap();
        ca.save(&dir.0).unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.0.join(CA_KEY_FILE))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600, "ca.key must be private");
        }
        let loaded = ClusterCa::load(&dir.0).unwrap();
        assert_eq!(loaded.cert_der(), ca.cert_der());
        assert_eq!(loaded.cert_pem(), ca.cert_pem());

        // A node issued by the reloaded CA verifies under the original CA certificate.
        let node = loaded.issue_node("node-1.example").unwrap();
        let node_dir = TempDir::new("node");
        node.save(&node_dir.0).unwrap();
        std::fs::write(node_dir.0.join(CA_CERT_FILE), ca.cert_pem()).unwrap();
        let reloaded = NodeCert::load(&node_dir.0).unwrap();
        assert_eq!(reloaded.chain(), node.chain());
        // The node id is bound to the key: stable across save and load, distinct per node.
        assert_eq!(reloaded.node_id().unwrap(), node.node_id().unwrap());
        let other = loaded.issue_node("node-1.example").unwrap();
        assert_ne!(other.node_id().unwrap(), node.node_id().unwrap());
        quinn_configs(&reloaded, &[PEER_ALPN]).unwrap();
        quinn_configs(&TlsFiles::in_dir(&node_dir.0), &[PEER_ALPN]).unwrap();
        let err = quinn_configs(&TlsFiles::in_dir(&dir.0), &[PEER_ALPN]).unwrap_err();
        assert!(err.to_string().contains(NODE_CERT_FILE), "{err}");
    }

    #[test]
    fn load_or_generate_creates_once() {
        let dir = TempDir::new("ca-auto");
        let first = ClusterCa::load_or_generate(&dir.0, "dev").unwrap();
        let second = ClusterCa::load_or_generate(&dir.0, "dev").unwrap();
        assert_eq!(first.cert_der(), second.cert_der());
        std::fs::remove_file(dir.0.join(CA_KEY_FILE)).unwrap();
        let err = ClusterCa::load_or_generate(&dir.0, "dev").unwrap_err();
        assert!(err.to_string().contains(CA_KEY_FILE), "{err}");
    }

    #[test]
    fn ca_save_refuses_to_overwrite() {
        let dir = TempDir::new("ca-twice");
        ClusterCa::generate("one").unwrap().save(&dir.0).unwrap();
        let before = std::fs::read(dir.0.join(CA_KEY_FILE)).unwrap();
        let err = ClusterCa::generate("two")
            .unwrap()
            .save(&dir.0)
            .unwrap_err();
        assert!(matches!(err, TlsError::AlreadyExists { .. }), "{err}");
        assert_eq!(std::fs::read(dir.0.join(CA_KEY_FILE)).unwrap(), before);
    }

    #[test]
    fn node_save_load_round_trip() {
        let ca = ClusterCa::generate("test cluster").unwrap();
        let node = ca.issue_node("10.0.0.7").unwrap();
        let dir = TempDir::new("node-rt");
        node.save(&dir.0).unwrap();
        for file in [CA_CERT_FILE, NODE_CERT_FILE, NODE_KEY_FILE] {
            assert!(dir.0.join(file).is_file(), "{file} missing");
        }
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.0.join(NODE_KEY_FILE))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600, "node.key must be private");
        }
        let loaded = NodeCert::load(&dir.0).unwrap();
        assert_eq!(loaded.chain(), node.chain());
        assert_eq!(loaded.ca_pem(), ca.cert_pem());
        // Saving again replaces the files in place.
        let renewed = ca.issue_node("10.0.0.7").unwrap();
        renewed.save(&dir.0).unwrap();
        assert_eq!(NodeCert::load(&dir.0).unwrap().chain(), renewed.chain());
    }

    #[test]
    fn missing_files_are_named() {
        let dir = TempDir::new("missing");
        let err = ClusterCa::load(&dir.0).unwrap_err();
        assert!(err.to_string().contains(CA_CERT_FILE), "{err}");
        let err = NodeCert::load(&dir.0).unwrap_err();
        assert!(matches!(err, TlsError::Read { .. }), "{err}");
        assert!(err.to_string().contains(CA_CERT_FILE), "{err}");

        let ca = ClusterCa::generate("c").unwrap();
        ca.issue_node("n1").unwrap().save(&dir.0).unwrap();
        std::fs::remove_file(dir.0.join(NODE_KEY_FILE)).unwrap();
        let err = NodeCert::load(&dir.0).unwrap_err();
        assert!(err.to_string().contains(NODE_KEY_FILE), "{err}");

        // Only the certificate of a CA directory present.
        let ca_dir = TempDir::new("missing-ca-key");
        ca.save(&ca_dir.0).unwrap();
        std::fs::remove_file(ca_dir.0.join(CA_KEY_FILE)).unwrap();
        let err = ClusterCa::load(&ca_dir.0).unwrap_err();
        assert!(err.to_string().contains(CA_KEY_FILE), "{err}");
    }

    #[test]
    fn garbage_and_mismatched_files_are_rejected() {
        let ca = ClusterCa::generate("c").unwrap();
        let dir = TempDir::new("garbage");
        ca.issue_node("n1").unwrap().save(&dir.0).unwrap();

        std::fs::write(dir.0.join(NODE_CERT_FILE), "not pem at all").unwrap();
        let err = NodeCert::load(&dir.0).unwrap_err();
        assert!(matches!(err, TlsError::BadCertificate { .. }), "{err}");
        assert!(err.to_string().contains(NODE_CERT_FILE), "{err}");

        // Certificate of one node with the key of another.
        let other = ca.issue_node("n2").unwrap();
        std::fs::write(dir.0.join(NODE_CERT_FILE), other.cert_pem()).unwrap();
        let err = NodeCert::load(&dir.0).unwrap_err();
        assert!(matches!(err, TlsError::KeyMismatch { .. }), "{err}");

        // A node certificate under a different CA than the ca.pem beside it.
        let foreign = ClusterCa::generate("foreign")
            .unwrap()
            .issue_node("n1")
            .unwrap();
        foreign.save(&dir.0).unwrap();
        std::fs::write(dir.0.join(CA_CERT_FILE), ca.cert_pem()).unwrap();
        let err = NodeCert::load(&dir.0).unwrap_err();
        assert!(matches!(err, TlsError::NotTrusted { .. }), "{err}");

        std::fs::write(
            dir.0.join(NODE_KEY_FILE),
            "-----BEGIN PRIVATE KEY-----\n!!\n",
        )
        .unwrap();
        let err = NodeCert::load(&dir.0).unwrap_err();
        assert!(
            matches!(
                err,
                TlsError::BadKey { .. } | TlsError::BadCertificate { .. }
            ),
            "{err}"
        );
    }

    /// Issue 22, item 2: ring entries are signed with the node's certificate key, and only the
    /// node whose id that key yields can vouch for its entry.
    #[test]
    fn cert_auth_binds_signatures_to_node_ids() {
        use crate::membership::EntryAuth;
        let ca = ClusterCa::generate("c").unwrap();
        let (a, b) = (ca.issue_node("a").unwrap(), ca.issue_node("b").unwrap());
        let (auth_a, auth_b) = (CertAuth::new(&a).unwrap(), CertAuth::new(&b).unwrap());
        let (id_a, id_b) = (a.node_id().unwrap(), b.node_id().unwrap());
        let sig = auth_a.sign(b"entry");
        assert!(auth_b.verify(id_a, &auth_a.public_key(), b"entry", &sig));
        assert!(!auth_b.verify(id_b, &auth_a.public_key(), b"entry", &sig));
        assert!(!auth_b.verify(id_a, &auth_a.public_key(), b"other", &sig));
        assert!(!auth_b.verify(id_b, &auth_b.public_key(), b"entry", &sig));
        assert!(!auth_b.verify(id_a, b"", b"entry", &sig));
        // A node certificate of another CA (a key of the attacker's making) vouches for nothing.
        let rogue = ClusterCa::generate("rogue")
            .unwrap()
            .issue_node("p")
            .unwrap();
        let auth_rogue = CertAuth::new(&rogue).unwrap();
        let sig = auth_rogue.sign(b"entry");
        assert!(!auth_b.verify(
            rogue.node_id().unwrap(),
            &auth_rogue.public_key(),
            b"entry",
            &sig
        ));
        assert!(auth_rogue.verify(
            rogue.node_id().unwrap(),
            &auth_rogue.public_key(),
            b"entry",
            &sig
        ));
        // Nor does a client certificate of the right CA.
        let client = ca.issue_client("c").unwrap();
        let id_c = client.node_id().unwrap();
        let auth_c = CertAuth::new(&client).unwrap();
        let sig = auth_c.sign(b"entry");
        assert!(!auth_b.verify(id_c, &auth_c.public_key(), b"entry", &sig));
    }

    /// Issue 22, item 2: a removal is believed only when the CA key signed it; no node key,
    /// and no other CA's key, makes one.
    #[test]
    fn only_the_ca_key_signs_operator_actions() {
        use crate::membership::{removal_message, EntryAuth};
        let ca = ClusterCa::generate("c").unwrap();
        let (a, b) = (ca.issue_node("a").unwrap(), ca.issue_node("b").unwrap());
        let (auth_a, auth_b) = (CertAuth::new(&a).unwrap(), CertAuth::new(&b).unwrap());
        let m = removal_message(b.node_id().unwrap());
        let sig = ca.sign_operator(&m).unwrap();
        assert!(auth_a.verify_operator(&m, &sig));
        assert!(!auth_a.verify_operator(&removal_message(a.node_id().unwrap()), &sig));
        assert!(
            !auth_a.verify_operator(&m, &auth_b.sign(&m)),
            "a node's key"
        );
        assert!(!auth_a.verify_operator(&m, b""));
        let rogue = ClusterCa::generate("rogue").unwrap();
        assert!(!auth_a.verify_operator(&m, &rogue.sign_operator(&m).unwrap()));
        // A CA loaded from its files signs as the one that made them.
        let dir = TempDir::new("operator");
        ca.save(&dir.0).unwrap();
        let loaded = ClusterCa::load(&dir.0).unwrap();
        assert!(auth_a.verify_operator(&m, &loaded.sign_operator(&m).unwrap()));
    }

    /// Issue 22, item 2: certificates say what they are for.
    #[test]
    fn roles_are_marked_and_checked() {
        let ca = ClusterCa::generate("c").unwrap();
        let node = ca.issue_node("n1").unwrap();
        let client = ca.issue_client("not-a-node").unwrap();
        assert_eq!(role_of(&node.chain()[0]).unwrap(), Some(CertRole::Node));
        assert_eq!(role_of(&client.chain()[0]).unwrap(), Some(CertRole::Client));
        assert!(peer_role_check(&node.chain()[0]).is_ok());
        assert!(peer_role_check(&client.chain()[0]).is_err());
        let dir = TempDir::new("client");
        client.save_client(&dir.0).unwrap();
        NodeCert::load_client(&dir.0).unwrap();
        // A client certificate cannot run a node.
        std::fs::copy(dir.0.join(CLIENT_CERT_FILE), dir.0.join(NODE_CERT_FILE)).unwrap();
        std::fs::copy(dir.0.join(CLIENT_KEY_FILE), dir.0.join(NODE_KEY_FILE)).unwrap();
        let err = NodeCert::load(&dir.0).unwrap_err();
        assert!(err.to_string().contains("node certificate"), "{err}");
    }

    #[test]
    fn invalid_node_names_are_rejected() {
        let ca = ClusterCa::generate("c").unwrap();
        for name in ["", "has space", "bad/slash"] {
            let err = ca.issue_node(name).unwrap_err();
            assert!(
                matches!(err, TlsError::InvalidNodeName { .. }),
                "{name:?}: {err}"
            );
        }
        ca.issue_node(NODE_SERVER_NAME).unwrap();
        ca.issue_node("::1").unwrap();
    }

    #[test]
    fn https_dirs_load_node_or_operator_certificates_and_name_the_bad_file() {
        let ca = ClusterCa::generate("c").unwrap();
        let node = ca
            .issue_node_with_names("node-1", &["127.0.0.1".into(), "db.example.com".into()])
            .unwrap();

        // A node directory from `chorus cert issue` serves as it is, with its names.
        let node_dir = TempDir::new("https-node");
        node.save(&node_dir.0).unwrap();
        let id = HttpsIdentity::load(&node_dir.0).unwrap();
        assert_eq!(id.cert, node_dir.0.join(NODE_CERT_FILE));
        for name in [NODE_SERVER_NAME, "node-1", "127.0.0.1", "db.example.com"] {
            assert!(
                id.names.iter().any(|n| n == name),
                "{name} in {:?}",
                id.names
            );
        }

        // cert.pem + key.pem, with a chain (leaf, then the CA) in cert.pem.
        let dir = TempDir::new("https-own");
        let chain = format!("{}{}", node.cert_pem(), ca.cert_pem());
        std::fs::write(dir.0.join(HTTPS_CERT_FILE), &chain).unwrap();
        std::fs::write(dir.0.join(HTTPS_KEY_FILE), &node.key_pem).unwrap();
        let id = HttpsIdentity::load(&dir.0).unwrap();
        assert_eq!(id.cert, dir.0.join(HTTPS_CERT_FILE));
        assert_eq!(id.key, dir.0.join(HTTPS_KEY_FILE));

        // Nothing there: the error names the directory and the files it wants.
        let empty = TempDir::new("https-empty");
        let err = HttpsIdentity::load(&empty.0).unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, TlsError::NoHttpsCert { .. }), "{msg}");
        assert!(
            msg.contains(&empty.0.display().to_string()) && msg.contains("cert.pem"),
            "{msg}"
        );

        // cert.pem without key.pem: the missing key file is named.
        let half = TempDir::new("https-half");
        std::fs::write(half.0.join(HTTPS_CERT_FILE), &chain).unwrap();
        let err = HttpsIdentity::load(&half.0).unwrap_err();
        assert!(
            matches!(err, TlsError::Read { ref path, .. } if path.ends_with(HTTPS_KEY_FILE)),
            "{err}"
        );

        // A certificate file that is not PEM: named.
        std::fs::write(half.0.join(HTTPS_KEY_FILE), &node.key_pem).unwrap();
        std::fs::write(half.0.join(HTTPS_CERT_FILE), "not a certificate").unwrap();
        let err = HttpsIdentity::load(&half.0).unwrap_err();
        assert!(
            matches!(err, TlsError::BadCertificate { ref path, .. } if path.ends_with(HTTPS_CERT_FILE)),
            "{err}"
        );
        assert!(err.to_string().contains("cert.pem"), "{err}");

        // A key file that is not PEM: named.
        std::fs::write(half.0.join(HTTPS_CERT_FILE), &chain).unwrap();
        std::fs::write(
            half.0.join(HTTPS_KEY_FILE),
            "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
        )
        .unwrap();
        let err = HttpsIdentity::load(&half.0).unwrap_err();
        assert!(
            matches!(err, TlsError::BadKey { ref path, .. } if path.ends_with(HTTPS_KEY_FILE)),
            "{err}"
        );

        // Another certificate's key: both files named.
        let other = ca.issue_node("node-2").unwrap();
        std::fs::write(half.0.join(HTTPS_KEY_FILE), &other.key_pem).unwrap();
        let err = HttpsIdentity::load(&half.0).unwrap_err();
        assert!(matches!(err, TlsError::KeyMismatch { .. }), "{err}");

        // Extra names are checked like the node name.
        assert!(matches!(
            ca.issue_node_with_names("node-1", &["bad name".into()]),
            Err(TlsError::InvalidNodeName { ref name }) if name == "bad name"
        ));
    }
}
