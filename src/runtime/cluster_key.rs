//! The cluster's shared secret (`cluster.key`): the key every node tags the contexts it hands
//! to clients with ([`ContextKey`], [`crate::node::Context::seal`]), so that a context the
//! cluster did not issue is refused.
//!
//! It is created with the cluster CA (`chorus cert ca` writes it beside `ca.key`) and copied
//! into each node's TLS directory with its certificate (`chorus cert issue`); a node refuses to
//! start without it. Like `ca.key` it must stay secret: the file is 64 hex digits (32 random
//! bytes), mode 600, and one readable by other users is refused.
//!
//! This module reads and writes that file only; it opens no sockets.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use crate::node::ContextKey;

/// File name of the cluster key, in CA and node TLS directories.
pub const CLUSTER_KEY_FILE: &str = "cluster.key";

/// Why the cluster key cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ClusterKeyError {
    /// The file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The file is missing.
    #[error(
        "no cluster key in {dir} ({CLUSTER_KEY_FILE}): copy it from the cluster CA's directory \
         (`chorus cert issue` puts it beside the node certificate; `chorus cert ca` creates it)"
    )]
    Missing {
        /// The directory searched.
        dir: PathBuf,
    },
    /// Users other than the owner may read or change the file.
    #[error("{path} is accessible to other users (mode {mode:03o}): run `chmod 600 {path}`")]
    Exposed {
        /// The file.
        path: String,
        /// Its permission bits.
        mode: u32,
    },
    /// The content is not 64 hex digits.
    #[error("{path} does not hold a cluster key (64 hex digits)")]
    Malformed {
        /// The file.
        path: PathBuf,
    },
    /// The operating system's random source failed.
    #[error("the operating system's random source failed: {0}")]
    Random(String),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> ClusterKeyError + '_ {
    move |source| ClusterKeyError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn write_new(path: &Path, hex: &str) -> Result<(), ClusterKeyError> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.mode(0o600);
    }
    let mut f = options.open(path).map_err(io(path))?;
    writeln!(f, "{hex}").map_err(io(path))?;
    f.sync_all().map_err(io(path))
}

/// Creates a new cluster key in `dir` unless one is there.
pub fn ensure(dir: &Path) -> Result<(), ClusterKeyError> {
    let path = dir.join(CLUSTER_KEY_FILE);
    if path.exists() {
        return Ok(());
    }
    use rand::TryRng as _;
    let mut bytes = [0u8; 32];
    rand::rngs::SysRng
        .try_fill_bytes(&mut bytes)
        .map_err(|e| ClusterKeyError::Random(e.to_string()))?;
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    write_new(&path, &hex)
}

/// Copies the cluster key from the CA directory `ca_dir` into the node directory `node_dir`
/// (unless one is there already).
pub fn copy(ca_dir: &Path, node_dir: &Path) -> Result<(), ClusterKeyError> {
    let to = node_dir.join(CLUSTER_KEY_FILE);
    if to.exists() {
        return Ok(());
    }
    load(ca_dir)?;
    let from = ca_dir.join(CLUSTER_KEY_FILE);
    let text = std::fs::read_to_string(&from).map_err(io(&from))?;
    write_new(&to, text.trim())
}

/// Reads the cluster key from `dir`.
pub fn load(dir: &Path) -> Result<ContextKey, ClusterKeyError> {
    let path = dir.join(CLUSTER_KEY_FILE);
    let meta = match std::fs::metadata(&path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(ClusterKeyError::Missing {
                dir: dir.to_path_buf(),
            })
        }
        Err(e) => return Err(io(&path)(e)),
    };
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(ClusterKeyError::Exposed {
                path: path.display().to_string(),
                mode,
            });
        }
    }
    #[cfg(not(unix))]
    let _ = meta;
    let text = std::fs::read_to_string(&path).map_err(io(&path))?;
    let hex = text.trim().as_bytes();
    let malformed = || ClusterKeyError::Malformed { path: path.clone() };
    if hex.len() != 64 {
        return Err(malformed());
    }
    let mut bytes = [0u8; 32];
    for (i, pair) in hex.chunks(2).enumerate() {
        let s = std::str::from_utf8(pair).map_err(|_| malformed())?;
        bytes[i] = u8::from_str_radix(s, 16).map_err(|_| malformed())?;
    }
    Ok(ContextKey::from_bytes(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn created_copied_loaded_and_guarded() {
        let dir = tempfile::tempdir().unwrap();
        let (ca, node) = (dir.path().join("ca"), dir.path().join("node"));
        std::fs::create_dir_all(&ca).unwrap();
        std::fs::create_dir_all(&node).unwrap();
        assert!(matches!(load(&node), Err(ClusterKeyError::Missing { .. })));
        assert!(copy(&ca, &node).is_err(), "nothing to copy yet");
        ensure(&ca).unwrap();
        let first = std::fs::read_to_string(ca.join(CLUSTER_KEY_FILE)).unwrap();
        ensure(&ca).unwrap();
        assert_eq!(
            std::fs::read_to_string(ca.join(CLUSTER_KEY_FILE)).unwrap(),
            first,
            "never replaced"
        );
        copy(&ca, &node).unwrap();
        assert_eq!(load(&ca).unwrap(), load(&node).unwrap());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let p = node.join(CLUSTER_KEY_FILE);
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
            assert!(matches!(load(&node), Err(ClusterKeyError::Exposed { .. })));
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
            std::fs::write(&p, "not hex").unwrap();
            assert!(matches!(
                load(&node),
                Err(ClusterKeyError::Malformed { .. })
            ));
        }
    }
}
