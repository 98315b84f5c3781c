//! Attachments in S3-compatible object storage.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use chat_core::attachment::{ByteRange, ByteStream};
use chat_core::{BlobStore, Error, Result};
use futures_util::{StreamExt, TryStreamExt};
use object_store::aws::AmazonS3Builder;
use object_store::buffered::BufWriter;
use object_store::path::Path as ObjectPath;
use object_store::{GetOptions, GetRange, ObjectStore};
use tokio::io::AsyncWriteExt;

use crate::check_key;

/// Parts of a multipart upload: S3's least part size, so that a 10 MiB
/// file is two requests and memory per upload stays at one part.
const PART_BYTES: usize = 5 * 1024 * 1024;

/// Blobs as objects under a prefix of a bucket: `s3://bucket/prefix`.
/// Credentials, region and endpoint come from the usual variables
/// (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_REGION`,
/// `AWS_ENDPOINT_URL` for S3-compatible servers, `AWS_ALLOW_HTTP=true` for
/// one on plain HTTP). Uploads are spooled in the system's temporary
/// directory and streamed to the bucket in parts.
#[derive(Debug, Clone)]
pub struct S3Blobs {
    store: Arc<dyn ObjectStore>,
    url: String,
    prefix: String,
    spool: PathBuf,
}

impl S3Blobs {
    /// Connects to the bucket `url` names. Nothing is sent until the first
    /// blob is written or read.
    pub async fn open(url: &str, options: &crate::S3Options) -> Result<Self> {
        let parsed = url::Url::parse(url).map_err(|e| Error::invalid(format!("{url} is not a URL: {e}")))?;
        let bucket = parsed.host_str().filter(|b| !b.is_empty()).ok_or(Error::invalid("s3:// needs a bucket"))?;
        let prefix = parsed.path().trim_matches('/').to_string();
        let mut builder = AmazonS3Builder::from_env().with_bucket_name(bucket);
        if let Some(endpoint) = &options.endpoint {
            builder = builder.with_endpoint(endpoint);
        }
        if let Some(region) = &options.region {
            builder = builder.with_region(region);
        }
        if let Some(key) = &options.access_key_id {
            builder = builder.with_access_key_id(key);
        }
        if let Some(secret) = &options.secret_access_key {
            builder = builder.with_secret_access_key(secret);
        }
        if options.allow_http {
            builder = builder.with_allow_http(true);
        }
        let store = builder.build().map_err(|e| Error::invalid(format!("S3 attachment storage: {e}")))?;
        let spool = std::env::temp_dir().join("chat-attachments-spool");
        tokio::fs::create_dir_all(&spool)
            .await
            .map_err(|e| Error::unavailable(format!("the spool directory {}: {e}", spool.display())))?;
        Ok(S3Blobs { store: Arc::new(store), url: format!("s3://{bucket}/{prefix}"), prefix, spool })
    }

    fn path_of(&self, key: &str) -> Result<ObjectPath> {
        check_key(key)?;
        Ok(if self.prefix.is_empty() {
            ObjectPath::from(key)
        } else {
            ObjectPath::from(format!("{}/{key}", self.prefix))
        })
    }
}

fn unavailable(err: impl std::fmt::Display) -> Error {
    Error::unavailable(format!("S3 attachment storage: {err}"))
}

#[async_trait]
impl BlobStore for S3Blobs {
    fn spool_dir(&self) -> &Path {
        &self.spool
    }

    async fn put_file(&self, key: &str, path: &Path) -> Result<()> {
        let target = self.path_of(key)?;
        let mut file = tokio::fs::File::open(path).await.map_err(unavailable)?;
        let mut writer = BufWriter::with_capacity(self.store.clone(), target, PART_BYTES);
        if let Err(err) = tokio::io::copy(&mut file, &mut writer).await {
            let _ = writer.abort().await;
            return Err(unavailable(err));
        }
        writer.shutdown().await.map_err(unavailable)
    }

    async fn get(&self, key: &str, range: Option<ByteRange>) -> Result<Option<ByteStream>> {
        let target = self.path_of(key)?;
        let options = GetOptions { range: range.map(|r| GetRange::Bounded(r.start..r.end)), ..GetOptions::default() };
        match self.store.get_opts(&target, options).await {
            Ok(found) => Ok(Some(found.into_stream().map_err(std::io::Error::other).boxed())),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(err) => Err(unavailable(err)),
        }
    }

    async fn delete(&self, key: &str) -> Result<()> {
        let target = self.path_of(key)?;
        match self.store.delete(&target).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(err) => Err(unavailable(err)),
        }
    }

    fn describe(&self) -> String {
        self.url.clone()
    }
}
