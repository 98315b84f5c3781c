//! Spooling an upload to local disk, within a size limit.

use std::path::{Path, PathBuf};

use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use tokio::io::AsyncWriteExt;

/// How many of a file's first bytes are kept in memory for [`examine`](crate::examine).
pub const HEAD_BYTES: usize = 8 * 1024;

/// A spool file, removed when dropped (unless a blob store moved it away).
#[derive(Debug)]
pub struct SpoolFile {
    path: PathBuf,
}

impl SpoolFile {
    /// A new, not yet created, file name in `dir`.
    pub fn new_in(dir: &Path, what: &str) -> Self {
        SpoolFile { path: dir.join(format!("{what}-{}", uuid::Uuid::now_v7().simple())) }
    }

    /// Where it is.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for SpoolFile {
    fn drop(&mut self) {
        // Gone already when a blob store moved it: nothing to do then.
        if let Err(err) = std::fs::remove_file(&self.path)
            && err.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!(path = %self.path.display(), error = %err, "could not remove a spool file");
        }
    }
}

/// An upload written whole to a spool file.
#[derive(Debug)]
pub struct Spooled {
    /// The file.
    pub file: SpoolFile,
    /// Its size in bytes.
    pub size: u64,
    /// Its first bytes (at most [`HEAD_BYTES`]).
    pub head: Vec<u8>,
}

/// Why an upload was not spooled. Nothing of it is left on disk.
#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    /// The body went past the limit.
    #[error("the file is larger than {0} bytes")]
    TooLarge(u64),
    /// Reading the body failed (the client went away, a malformed part).
    #[error("the upload could not be read: {0}")]
    Body(String),
    /// Writing the spool file failed.
    #[error("the upload could not be written: {0}")]
    Io(#[from] std::io::Error),
}

/// Writes `body` to a new file in `dir`, refusing it as soon as it passes
/// `limit` bytes. Memory stays at one chunk of the body, whatever its size.
/// The file is synced before this returns, so that a blob store that keeps
/// it by renaming keeps it durably.
pub async fn spool<S, E>(dir: &Path, body: S, limit: u64) -> Result<Spooled, SpoolError>
where
    S: Stream<Item = Result<Bytes, E>> + Send,
    E: std::fmt::Display,
{
    let file = SpoolFile::new_in(dir, "upload");
    let mut out = tokio::fs::OpenOptions::new().write(true).create_new(true).open(file.path()).await?;
    let mut size: u64 = 0;
    let mut head = Vec::with_capacity(HEAD_BYTES);
    let mut body = std::pin::pin!(body);
    while let Some(chunk) = body.next().await {
        let chunk = chunk.map_err(|e| SpoolError::Body(e.to_string()))?;
        size += chunk.len() as u64;
        if size > limit {
            return Err(SpoolError::TooLarge(limit));
        }
        if head.len() < HEAD_BYTES {
            let take = (HEAD_BYTES - head.len()).min(chunk.len());
            head.extend_from_slice(&chunk[..take]);
        }
        out.write_all(&chunk).await?;
    }
    out.flush().await?;
    out.sync_all().await?;
    Ok(Spooled { file, size, head })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunks(sizes: &[usize]) -> impl Stream<Item = Result<Bytes, std::io::Error>> + Send {
        let parts: Vec<Result<Bytes, std::io::Error>> =
            sizes.iter().enumerate().map(|(i, &n)| Ok(Bytes::from(vec![i as u8; n]))).collect();
        futures_util::stream::iter(parts)
    }

    #[tokio::test]
    async fn a_body_within_the_limit_is_spooled_whole() {
        let dir = tempfile::tempdir().expect("dir");
        let spooled = spool(dir.path(), chunks(&[5000, 5000]), 10_000).await.expect("spooled");
        assert_eq!(spooled.size, 10_000);
        assert_eq!(spooled.head.len(), HEAD_BYTES);
        let bytes = std::fs::read(spooled.file.path()).expect("read");
        assert_eq!(bytes.len(), 10_000);
        assert_eq!((bytes[0], bytes[9_999]), (0, 1));
        let path = spooled.file.path().to_path_buf();
        drop(spooled);
        assert!(!path.exists(), "dropped, the spool file is removed");
    }

    #[tokio::test]
    async fn a_body_past_the_limit_leaves_nothing() {
        let dir = tempfile::tempdir().expect("dir");
        let err = spool(dir.path(), chunks(&[6000, 6000]), 10_000).await.expect_err("too large");
        assert!(matches!(err, SpoolError::TooLarge(10_000)));
        assert_eq!(std::fs::read_dir(dir.path()).expect("list").count(), 0, "nothing left on disk");
    }
}
