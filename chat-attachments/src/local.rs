//! Attachments in a local directory.

use std::io::SeekFrom;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use chat_core::attachment::{ByteRange, ByteStream};
use chat_core::{BlobStore, Error, Result};
use futures_util::StreamExt;
use tokio::io::{AsyncReadExt, AsyncSeekExt};

use crate::check_key;

/// Bytes read from disk at a time when a file is served.
const READ_CHUNK: usize = 64 * 1024;

/// Spool files older than this are leftovers of a crash, removed at start.
const STALE_SPOOL: Duration = Duration::from_secs(3600);

/// Blobs as files in a directory: `<root>/<two hex digits>/<key>`, spread
/// over 256 subdirectories by the random end of the id, with uploads spooled
/// in `<root>/.spool` (the same file system, so that keeping an upload is a
/// rename).
///
/// Several processes may share the directory (a shared mount): every write
/// is a rename of a whole file, so a reader sees a file whole or not at all.
#[derive(Debug, Clone)]
pub struct LocalBlobs {
    root: PathBuf,
    spool: PathBuf,
}

impl LocalBlobs {
    /// Opens (creating it if needed) the directory at `root`, and clears
    /// stale spool files a crash may have left.
    pub async fn open(root: impl AsRef<Path>) -> Result<Self> {
        let root = root.as_ref().to_path_buf();
        let spool = root.join(".spool");
        tokio::fs::create_dir_all(&spool).await.map_err(|e| io_error(&spool, e))?;
        let blobs = LocalBlobs { root, spool };
        blobs.clear_stale_spool().await;
        Ok(blobs)
    }

    /// The directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn path_of(&self, key: &str) -> Result<PathBuf> {
        check_key(key)?;
        // The id's last two characters are random (a UUIDv7's first ones are
        // its time, which would put a day's files in one directory).
        let id = key.split('.').next().unwrap_or(key);
        let shard = id.get(id.len().saturating_sub(2)..).unwrap_or("00");
        Ok(self.root.join(shard).join(key))
    }

    async fn clear_stale_spool(&self) {
        let Ok(mut entries) = tokio::fs::read_dir(&self.spool).await else { return };
        while let Ok(Some(entry)) = entries.next_entry().await {
            let old = entry
                .metadata()
                .await
                .ok()
                .and_then(|m| m.modified().ok())
                .and_then(|t| SystemTime::now().duration_since(t).ok())
                .is_some_and(|age| age > STALE_SPOOL);
            if old {
                let _ = tokio::fs::remove_file(entry.path()).await;
            }
        }
    }
}

fn io_error(path: &Path, err: std::io::Error) -> Error {
    Error::unavailable(format!("attachment storage at {}: {err}", path.display()))
}

#[async_trait]
impl BlobStore for LocalBlobs {
    fn spool_dir(&self) -> &Path {
        &self.spool
    }

    async fn put_file(&self, key: &str, path: &Path) -> Result<()> {
        let dest = self.path_of(key)?;
        let dir = dest.parent().unwrap_or(&self.root).to_path_buf();
        tokio::fs::create_dir_all(&dir).await.map_err(|e| io_error(&dir, e))?;
        match tokio::fs::rename(path, &dest).await {
            Ok(()) => Ok(()),
            // Another file system (a spool elsewhere): copy to a temporary
            // name beside the destination, then rename, so that no reader
            // sees half a file.
            Err(_) => {
                let tmp = dir.join(format!(".{key}.partial"));
                tokio::fs::copy(path, &tmp).await.map_err(|e| io_error(&tmp, e))?;
                tokio::fs::rename(&tmp, &dest).await.map_err(|e| io_error(&dest, e))
            }
        }
    }

    async fn get(&self, key: &str, range: Option<ByteRange>) -> Result<Option<ByteStream>> {
        let path = self.path_of(key)?;
        let mut file = match tokio::fs::File::open(&path).await {
            Ok(file) => file,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_error(&path, e)),
        };
        let stream = match range {
            Some(range) => {
                file.seek(SeekFrom::Start(range.start)).await.map_err(|e| io_error(&path, e))?;
                let reader = file.take(range.end.saturating_sub(range.start));
                tokio_util::io::ReaderStream::with_capacity(reader, READ_CHUNK).boxed()
            }
            None => tokio_util::io::ReaderStream::with_capacity(file, READ_CHUNK).boxed(),
        };
        Ok(Some(stream))
    }

    async fn delete(&self, key: &str) -> Result<()> {
        let path = self.path_of(key)?;
        match tokio::fs::remove_file(&path).await {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io_error(&path, e)),
        }
    }

    fn describe(&self) -> String {
        format!("file://{}", self.root.display())
    }
}
