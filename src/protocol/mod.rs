//! The wire envelope: how every Chorus value crosses a process boundary.
//!
//! Every message, peer or client, is a serde type encoded with MessagePack (rmp-serde) inside a
//! small versioned envelope:
//!
//! ```text
//! +------+------+---------+---------------------------+
//! | 'C'  | 'H'  | version | MessagePack body          |
//! +------+------+---------+---------------------------+
//! ```
//!
//! Decoding enforces a size limit before looking at the body, a nesting-depth limit inside it,
//! rejects trailing bytes, and relies on each type's own validation (`try_from` on decode) for
//! semantic invariants. Garbage, truncated or oversized input gives a [`WireError`], never a panic,
//! and never allocates more than the input's size. This module does no I/O.

use std::io::Cursor;

use serde::de::DeserializeOwned;
use serde::Serialize;

/// The two bytes every envelope starts with.
pub const MAGIC: [u8; 2] = *b"CH";

/// The envelope version this build writes and reads.
pub const WIRE_VERSION: u8 = 1;

/// Bytes of envelope before the body.
pub const HEADER_BYTES: usize = MAGIC.len() + 1;

/// Default limit on a whole encoded peer message: one object at the largest size a replica
/// stores (48 MiB, see `node::object::OBJECT_BYTES_MAX`) with room for its key and the
/// message around it. Buffers grow with the bytes that arrive, never with a declared length.
pub const DEFAULT_FRAME_BYTES_MAX: usize = 49 * 1024 * 1024;

/// Deepest nesting of MessagePack containers a decoder accepts.
pub const DEPTH_MAX: usize = 32;

/// Why bytes could not be decoded or a value encoded. Decoding failures never change any state.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    /// The message is larger than the limit the decoder enforces.
    #[error("message of {len} bytes exceeds the limit of {max} bytes")]
    TooLarge {
        /// Size of the message.
        len: usize,
        /// The limit in force.
        max: usize,
    },
    /// Fewer bytes than the envelope header.
    #[error("message of {len} bytes is shorter than the {HEADER_BYTES}-byte envelope header")]
    Truncated {
        /// Size of the message.
        len: usize,
    },
    /// The first bytes are not the Chorus magic: not a Chorus message at all.
    #[error("bad magic {found:02x?}: not a Chorus message")]
    BadMagic {
        /// The bytes found where the magic belongs.
        found: [u8; 2],
    },
    /// An envelope version this build does not speak.
    #[error("unsupported wire version {found} (this build speaks version {WIRE_VERSION})")]
    UnsupportedVersion {
        /// The version in the envelope.
        found: u8,
    },
    /// The body is not a valid encoding of the expected type, or violates its invariants.
    #[error("malformed {what}: {source}")]
    Malformed {
        /// The type that was expected.
        what: &'static str,
        /// What the decoder found wrong.
        source: rmp_serde::decode::Error,
    },
    /// A valid body followed by bytes that belong to nothing.
    #[error("{extra} trailing bytes after a complete {what}")]
    TrailingBytes {
        /// The type that was decoded.
        what: &'static str,
        /// How many bytes were left over.
        extra: usize,
    },
    /// The value could not be encoded (a bug in the caller's type, not bad input).
    #[error("cannot encode {what}: {source}")]
    Encode {
        /// The type being encoded.
        what: &'static str,
        /// The encoder's complaint.
        source: rmp_serde::encode::Error,
    },
}

/// Encodes `value` in a versioned envelope.
pub fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, WireError> {
    let mut out = Vec::with_capacity(64);
    encode_into(&mut out, value)?;
    Ok(out)
}

/// Appends `value` in a versioned envelope to `out`.
pub fn encode_into<T: Serialize>(out: &mut Vec<u8>, value: &T) -> Result<(), WireError> {
    out.extend_from_slice(&MAGIC);
    out.push(WIRE_VERSION);
    rmp_serde::encode::write(out, value).map_err(|source| WireError::Encode {
        what: std::any::type_name::<T>(),
        source,
    })
}

/// Decodes a `T` from an envelope of at most [`DEFAULT_FRAME_BYTES_MAX`] bytes.
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, WireError> {
    decode_with_limit(bytes, DEFAULT_FRAME_BYTES_MAX)
}

/// Decodes a `T` from an envelope of at most `max_bytes` bytes.
pub fn decode_with_limit<T: DeserializeOwned>(
    bytes: &[u8],
    max_bytes: usize,
) -> Result<T, WireError> {
    let what = std::any::type_name::<T>();
    if bytes.len() > max_bytes {
        return Err(WireError::TooLarge {
            len: bytes.len(),
            max: max_bytes,
        });
    }
    if bytes.len() < HEADER_BYTES {
        return Err(WireError::Truncated { len: bytes.len() });
    }
    if bytes[..2] != MAGIC {
        return Err(WireError::BadMagic {
            found: [bytes[0], bytes[1]],
        });
    }
    if bytes[2] != WIRE_VERSION {
        return Err(WireError::UnsupportedVersion { found: bytes[2] });
    }
    let body = &bytes[HEADER_BYTES..];
    let mut de = rmp_serde::Deserializer::new(Cursor::new(body));
    de.set_max_depth(DEPTH_MAX);
    let value = T::deserialize(&mut de).map_err(|source| WireError::Malformed { what, source })?;
    let used = de.position() as usize;
    if used != body.len() {
        return Err(WireError::TrailingBytes {
            what,
            extra: body.len() - used,
        });
    }
    Ok(value)
}

pub mod client;
pub mod crdt_json;

/// Serde helper for a list of byte strings (`#[serde(with = "crate::protocol::bytes_list")]`):
/// each one as MessagePack binary, not as an array of integers (which costs up to twice the
/// bytes and a decode call per byte).
pub mod bytes_list {
    use serde::{Deserialize, Deserializer, Serializer};

    /// Serializes each byte string as binary.
    pub fn serialize<S: Serializer>(values: &[Vec<u8>], s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(values.iter().map(|v| serde_bytes::Bytes::new(v)))
    }

    /// Deserializes a list of binary strings.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Vec<u8>>, D::Error> {
        let list = Vec::<serde_bytes::ByteBuf>::deserialize(d)?;
        Ok(list
            .into_iter()
            .map(serde_bytes::ByteBuf::into_vec)
            .collect())
    }
}

#[cfg(test)]
mod tests;
