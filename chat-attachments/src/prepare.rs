//! From a spooled file to what [`chat_core::Engine::store_upload`] takes:
//! the one flow that every way in (the HTTP upload, a bridge copying a file
//! in from its platform) follows.

use chat_core::attachment::Upload;

use crate::probe::examine;
use crate::spool::{SpoolFile, Spooled};

/// The spool files an [`Upload`] points at, removed when this drops: keep it
/// until `store_upload` has answered (the blob store may have moved them
/// away by then, which is fine).
#[derive(Debug)]
pub struct SpoolGuard {
    _file: SpoolFile,
    _thumbnail: Option<SpoolFile>,
}

/// Examines a spooled file ([`examine`]: its type from its bytes, and for
/// images their dimensions and a thumbnail) and makes the [`Upload`] to hand
/// to `store_upload`, named `name` (the engine makes the name safe).
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let dir = std::env::temp_dir();
/// let body = futures_util::stream::iter([Ok::<_, std::io::Error>(bytes::Bytes::from_static(b"hello"))]);
/// let spooled = chat_attachments::spool(&dir, body, 1024).await?;
/// let (upload, guard) = chat_attachments::prepare(spooled, "hello.txt").await;
/// assert_eq!((upload.size, upload.content_type.as_str()), (5, "text/plain; charset=utf-8"));
/// assert!(upload.file.exists());
/// drop(guard);
/// assert!(!upload.file.exists(), "the spool file goes with its guard");
/// # Ok(())
/// # }
/// ```
pub async fn prepare(spooled: Spooled, name: impl Into<String>) -> (Upload, SpoolGuard) {
    let examined = examine(&spooled).await;
    let (thumbnail, thumbnail_file) = match examined.thumbnail {
        Some((file, thumb)) => (Some((file.path().to_path_buf(), thumb)), Some(file)),
        None => (None, None),
    };
    let upload = Upload {
        name: name.into(),
        content_type: examined.content_type,
        file: spooled.file.path().to_path_buf(),
        size: spooled.size,
        dimensions: examined.dimensions,
        thumbnail,
    };
    (upload, SpoolGuard { _file: spooled.file, _thumbnail: thumbnail_file })
}
