//! Where the chat toolkit keeps attachments, and what it learns of an upload
//! before it keeps it.
//!
//! - [`LocalBlobs`]: a directory (the default, beside the SQLite database;
//!   no set-up). One process, or several sharing one file system.
//! - `S3Blobs` (feature `s3`): S3-compatible object storage through
//!   `object_store`, for several processes on several machines.
//! - [`spool`]: writes an upload's body to a file in the blob store's spool
//!   directory, refusing it past a size limit before it is kept anywhere, so
//!   that no upload is ever held whole in memory.
//! - [`examine`]: the type of a spooled file read from its bytes (not the
//!   client's word), and for images their dimensions and a thumbnail.
//! - [`prepare`]: both, as every way in uses them: a spooled file becomes
//!   the `Upload` that `Engine::store_upload` takes, and a guard that
//!   removes its spool files afterwards.
//!
//! Pick a store from a URL with [`open`]:
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> chat_core::Result<()> {
//! let dir = std::env::temp_dir().join("chat-attachments-doc");
//! let blobs = chat_attachments::open(&format!("file://{}", dir.display())).await?;
//! assert!(blobs.describe().starts_with("file://"));
//! # Ok(())
//! # }
//! ```

mod local;
mod prepare;
mod probe;
#[cfg(feature = "s3")]
mod s3;
mod spool;

use std::sync::Arc;

use chat_core::{BlobStore, Error, Result};

pub use local::LocalBlobs;
pub use prepare::{SpoolGuard, prepare};
pub use probe::{Examined, examine};
#[cfg(feature = "s3")]
pub use s3::S3Blobs;
pub use spool::{HEAD_BYTES, SpoolError, SpoolFile, Spooled, spool};

/// Opens the blob store a URL names: `file:///path/to/dir` (or a bare path)
/// for a local directory, `s3://bucket/prefix` for S3-compatible storage
/// (with the `s3` feature; credentials, region and endpoint from the usual
/// `AWS_*` variables).
pub async fn open(url: &str) -> Result<Arc<dyn BlobStore>> {
    open_with(url, &S3Options::default()).await
}

/// Settings of S3-compatible storage that win over the `AWS_*` variables,
/// for operators who keep them with the server's other settings (and for
/// tests, which cannot change the environment of their process).
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct S3Options {
    /// The endpoint of an S3-compatible server (`https://minio.example:9000`).
    pub endpoint: Option<String>,
    /// The region.
    pub region: Option<String>,
    /// The access key id.
    pub access_key_id: Option<String>,
    /// The secret access key.
    pub secret_access_key: Option<String>,
    /// Allows an `http://` endpoint.
    pub allow_http: bool,
}

/// [`open`], with S3 settings that win over the environment's.
pub async fn open_with(url: &str, s3: &S3Options) -> Result<Arc<dyn BlobStore>> {
    #[cfg(not(feature = "s3"))]
    let _ = s3;
    if let Some(path) = url.strip_prefix("file://") {
        return Ok(Arc::new(LocalBlobs::open(path).await?));
    }
    if url.starts_with("s3://") {
        #[cfg(feature = "s3")]
        return Ok(Arc::new(S3Blobs::open(url, s3).await?));
        #[cfg(not(feature = "s3"))]
        return Err(Error::invalid("this build has no S3 support (cargo feature `s3` of chat-attachments)"));
    }
    if url.contains("://") {
        return Err(Error::invalid(format!(
            "attachment storage must be file://… or s3://…, not {}",
            url.split("://").next().unwrap_or_default()
        )));
    }
    Ok(Arc::new(LocalBlobs::open(url).await?))
}

/// Checks a blob key: what the engine makes (`<uuid>`, `<uuid>.thumb`), and
/// nothing that could leave a directory or a prefix.
pub(crate) fn check_key(key: &str) -> Result<()> {
    let ok = !key.is_empty()
        && key.len() <= 64
        && !key.starts_with('.')
        && key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.');
    if ok { Ok(()) } else { Err(Error::invalid("a blob key has only letters, digits, '-' and '.'")) }
}

#[cfg(test)]
mod tests {
    use super::check_key;

    #[test]
    fn keys_cannot_leave_the_store() {
        assert!(check_key("0190c7b2-4c1e-7a4b-9f1e-3b2a1c0d9e8f").is_ok());
        assert!(check_key("0190c7b2-4c1e-7a4b-9f1e-3b2a1c0d9e8f.thumb").is_ok());
        for bad in ["", "../x", "a/b", ".hidden", "a\\b", "a b", &"x".repeat(65)] {
            assert!(check_key(bad).is_err(), "{bad:?}");
        }
    }
}
