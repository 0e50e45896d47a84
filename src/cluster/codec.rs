//! How a message becomes bytes on the wire between nodes, and back.

use std::marker::PhantomData;

use bytes::Bytes;

use crate::sync::ValueArc;

/// Turns a message into the bytes a Redis publication carries, and back.
///
/// The registry's `M` is generic, so the application says how it crosses the wire.
/// [`Raw`] passes byte and string messages through as they are; [`Json`] uses serde.
///
/// # Examples
///
/// ```
/// use switchboard::cluster::{Codec, Raw};
///
/// let bytes = Codec::<String>::encode(&Raw, &"hi".to_owned())?;
/// assert_eq!(Codec::<String>::decode(&Raw, &bytes)?, "hi");
/// # Ok::<(), switchboard::cluster::CodecError>(())
/// ```
pub trait Codec<M>: Send + Sync + 'static {
    /// The bytes that carry `msg`.
    ///
    /// # Errors
    ///
    /// [`CodecError`] if `msg` cannot be encoded.
    fn encode(&self, msg: &M) -> Result<Bytes, CodecError>;

    /// The message `bytes` carry.
    ///
    /// # Errors
    ///
    /// [`CodecError`] if `bytes` are not a valid message; they come from another
    /// node, so this must never panic.
    fn decode(&self, bytes: &[u8]) -> Result<M, CodecError>;
}

/// A message that could not be encoded or decoded.
#[derive(Debug, thiserror::Error)]
#[error("codec: {0}")]
pub struct CodecError(pub String);

/// The identity codec for `Bytes`, `Vec<u8>`, `String` and `Arc<str>`; strings must
/// be UTF-8 when they come back.
#[derive(Debug, Clone, Copy, Default)]
pub struct Raw;

impl Codec<Bytes> for Raw {
    fn encode(&self, msg: &Bytes) -> Result<Bytes, CodecError> {
        Ok(msg.clone())
    }
    fn decode(&self, bytes: &[u8]) -> Result<Bytes, CodecError> {
        Ok(Bytes::copy_from_slice(bytes))
    }
}

impl Codec<Vec<u8>> for Raw {
    fn encode(&self, msg: &Vec<u8>) -> Result<Bytes, CodecError> {
        Ok(Bytes::copy_from_slice(msg))
    }
    fn decode(&self, bytes: &[u8]) -> Result<Vec<u8>, CodecError> {
        Ok(bytes.to_vec())
    }
}

fn utf8(bytes: &[u8]) -> Result<&str, CodecError> {
    std::str::from_utf8(bytes).map_err(|e| CodecError(e.to_string()))
}

impl Codec<String> for Raw {
    fn encode(&self, msg: &String) -> Result<Bytes, CodecError> {
        Ok(Bytes::copy_from_slice(msg.as_bytes()))
    }
    fn decode(&self, bytes: &[u8]) -> Result<String, CodecError> {
        utf8(bytes).map(str::to_owned)
    }
}

impl Codec<ValueArc<str>> for Raw {
    fn encode(&self, msg: &ValueArc<str>) -> Result<Bytes, CodecError> {
        Ok(Bytes::copy_from_slice(msg.as_bytes()))
    }
    fn decode(&self, bytes: &[u8]) -> Result<ValueArc<str>, CodecError> {
        utf8(bytes).map(ValueArc::from)
    }
}

/// A serde codec: JSON on the wire, for any `Serialize + DeserializeOwned` message.
///
/// # Examples
///
/// ```
/// use switchboard::cluster::{Codec, Json};
///
/// #[derive(serde::Serialize, serde::Deserialize, Clone, PartialEq, Debug)]
/// struct Move { x: i32 }
///
/// let codec = Json::<Move>::new();
/// let bytes = codec.encode(&Move { x: 3 })?;
/// assert_eq!(codec.decode(&bytes)?, Move { x: 3 });
/// # Ok::<(), switchboard::cluster::CodecError>(())
/// ```
pub struct Json<M>(PhantomData<fn() -> M>);

impl<M> Json<M> {
    /// The JSON codec for `M`.
    #[must_use]
    pub fn new() -> Self {
        Self(PhantomData)
    }
}

impl<M> Default for Json<M> {
    fn default() -> Self {
        Self::new()
    }
}

impl<M> std::fmt::Debug for Json<M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Json")
    }
}

impl<M> Codec<M> for Json<M>
where
    M: serde::Serialize + serde::de::DeserializeOwned + 'static,
{
    fn encode(&self, msg: &M) -> Result<Bytes, CodecError> {
        serde_json::to_vec(msg)
            .map(Bytes::from)
            .map_err(|e| CodecError(e.to_string()))
    }
    fn decode(&self, bytes: &[u8]) -> Result<M, CodecError> {
        serde_json::from_slice(bytes).map_err(|e| CodecError(e.to_string()))
    }
}
