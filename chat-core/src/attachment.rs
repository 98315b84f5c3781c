//! Attachments: uploaded files, where their bytes live, and the signed URLs
//! that let a browser's `<img>` fetch them without an `Authorization` header.
//!
//! An upload is two things kept in two places: its bytes in a [`BlobStore`]
//! (a local directory, S3-compatible object storage, or your own), and its
//! record — a [`StoredAttachment`] — in the [`Store`](crate::Store), which
//! says who uploaded it, what it is and where it was posted. The engine
//! decides who may read it from the record and the room's membership in the
//! store; the blob store only moves bytes.
//!
//! The record is written before the bytes, so that a crash in between leaves
//! a record without bytes (which the clean-up removes after
//! [`AttachmentConfig::orphan_after`]) rather than bytes nothing points at.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::stream::BoxStream;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

use crate::error::Result;
use crate::id::{AttachmentId, MessageId, RoomId, UserId};
use crate::message::{Attachment, Message};
use crate::time::Timestamp;

/// The bytes of a blob, or of a range of it, as they are read.
pub type ByteStream = BoxStream<'static, std::io::Result<Bytes>>;

/// Most attachments one message may carry.
pub const MAX_ATTACHMENTS_PER_MESSAGE: usize = 10;

/// Longest file name kept, in bytes (longer names are cut at a character
/// boundary, keeping the extension).
pub const MAX_NAME_BYTES: usize = 255;

/// The least a file counts for against its uploader's quota, so that a
/// quota also bounds how many records one user can make (16 384 per GiB).
pub const MIN_ACCOUNTED_BYTES: u64 = 64 * 1024;

/// Longest side of a thumbnail, in pixels.
pub const THUMBNAIL_SIDE: u32 = 320;

/// A byte range of a blob: `start..end`, end exclusive, never empty.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ByteRange {
    /// First byte.
    pub start: u64,
    /// One past the last byte.
    pub end: u64,
}

/// Where attachment bytes live: put, read (whole or a range), delete.
///
/// Keys are made by the engine from attachment ids (`<id>` for a file,
/// `<id>.thumb` for its thumbnail): ASCII letters, digits, `-` and `.`
/// only. Uploads are first written whole to a spool file on local disk
/// (never held in memory), which is how the upload's size limit can refuse
/// a file before any of it is kept and how its type can be read from its
/// bytes; [`BlobStore::put_file`] then takes that file.
#[async_trait]
pub trait BlobStore: Send + Sync + 'static {
    /// The directory uploads are spooled in before [`BlobStore::put_file`].
    /// A local store keeps it on the same file system as its files, so that
    /// putting a file is a rename.
    fn spool_dir(&self) -> &Path;

    /// Stores the file at `path` under `key`, replacing what was there. The
    /// store may move the file away; the caller removes it if it is still
    /// there afterwards.
    async fn put_file(&self, key: &str, path: &Path) -> Result<()>;

    /// Reads the blob under `key`, or the `range` of it; `None` when there
    /// is no such blob. The range is within the blob's size, which the
    /// caller knows from the record.
    async fn get(&self, key: &str, range: Option<ByteRange>) -> Result<Option<ByteStream>>;

    /// Deletes the blob under `key`; deleting a missing blob is not an error.
    async fn delete(&self, key: &str) -> Result<()>;

    /// Where the blobs are, for logs and `/health` (never a secret).
    fn describe(&self) -> String;
}

/// A thumbnail kept beside an image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Thumbnail {
    /// Its type (`image/png` or `image/jpeg`).
    pub content_type: String,
    /// Its size in bytes.
    pub size: u64,
}

/// Where an attachment was posted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Posted {
    /// The room.
    pub room_id: RoomId,
    /// The message that carries it.
    pub message_id: MessageId,
}

/// The store's record of an upload.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredAttachment {
    /// Server-made id; also the blob's key.
    pub id: AttachmentId,
    /// Who uploaded it. Only they may post it.
    pub uploader: UserId,
    /// The file's name as uploaded (made safe: no path, no control characters).
    pub name: String,
    /// The type read from its bytes.
    pub content_type: String,
    /// Size in bytes.
    pub size: u64,
    /// Width in pixels, for images.
    pub width: Option<u32>,
    /// Height in pixels, for images.
    pub height: Option<u32>,
    /// Its thumbnail, for images that could be decoded.
    pub thumbnail: Option<Thumbnail>,
    /// When it was uploaded.
    pub created_at: Timestamp,
    /// The message it was posted with, once it was. An attachment is posted
    /// at most once.
    pub posted: Option<Posted>,
    /// Set when its message was deleted: it is no longer served, and the
    /// clean-up removes its bytes.
    pub removed: bool,
}

impl StoredAttachment {
    /// What the file counts for against its uploader's quota: its size and
    /// its thumbnail's, at least [`MIN_ACCOUNTED_BYTES`].
    pub fn accounted_bytes(&self) -> u64 {
        (self.size + self.thumbnail.as_ref().map_or(0, |t| t.size)).max(MIN_ACCOUNTED_BYTES)
    }

    /// The blob key of the file itself.
    pub fn key(&self) -> String {
        self.id.to_string()
    }

    /// The blob key of its thumbnail.
    pub fn thumbnail_key(&self) -> String {
        thumbnail_key(self.id)
    }

    /// The attachment as messages carry it, with the unsigned path as its
    /// URLs; [`UrlSigner::sign`] makes them fetchable.
    pub fn to_attachment(&self) -> Attachment {
        Attachment {
            id: self.id.to_string(),
            name: self.name.clone(),
            content_type: self.content_type.clone(),
            size: self.size,
            url: attachment_path(&self.id.to_string(), false),
            width: self.width,
            height: self.height,
            thumbnail_url: self.thumbnail.as_ref().map(|_| attachment_path(&self.id.to_string(), true)),
        }
    }
}

/// The blob key of an attachment's thumbnail.
pub fn thumbnail_key(id: AttachmentId) -> String {
    format!("{id}.thumb")
}

fn attachment_path(id: &str, thumbnail: bool) -> String {
    if thumbnail { format!("/v1/attachments/{id}/thumbnail") } else { format!("/v1/attachments/{id}") }
}

/// What [`crate::Engine::store_upload`] records: a spooled file, already
/// examined by the transport.
#[derive(Debug, Clone)]
pub struct Upload {
    /// The name the client gave (made safe by the engine).
    pub name: String,
    /// The type read from the bytes.
    pub content_type: String,
    /// The spooled file.
    pub file: PathBuf,
    /// Its size in bytes.
    pub size: u64,
    /// Width and height, for an image that could be read.
    pub dimensions: Option<(u32, u32)>,
    /// A spooled thumbnail and its type, for an image that could be decoded.
    pub thumbnail: Option<(PathBuf, Thumbnail)>,
}

/// How attachments are kept and limited.
#[derive(Clone)]
#[non_exhaustive]
pub struct AttachmentConfig {
    /// Where the bytes go.
    pub blobs: std::sync::Arc<dyn BlobStore>,
    /// Largest file, in bytes (`CHAT_MAX_ATTACHMENT_BYTES`, default 10 MiB).
    pub max_bytes: u64,
    /// Most bytes one user's attachments may take together, posted or not
    /// (`CHAT_ATTACHMENT_QUOTA_BYTES`, default 1 GiB); 0 is no quota.
    pub quota_bytes: u64,
    /// The same for anonymous visitors (default 50 MiB): anyone on the
    /// internet can become one, so they get less.
    pub visitor_quota_bytes: u64,
    /// Attachments never posted are removed this long after their upload
    /// (default 24 h).
    pub orphan_after: Duration,
    /// How often the clean-up looks for orphans and deleted messages' files.
    pub cleanup_interval: Duration,
    /// How long a signed URL stays valid, at least (at most twice this:
    /// expiries are rounded up so that every process signs the same URL for
    /// a while, and a fanned-out event is serialized once for all).
    pub url_ttl: Duration,
    /// Put before `/v1/attachments/…` in URLs (`CHAT_PUBLIC_URL`), for
    /// clients that do not know the server's address (webhook receivers, a
    /// widget on another site); empty for paths relative to the server.
    pub public_url: String,
}

impl AttachmentConfig {
    /// Defaults around a blob store.
    pub fn new(blobs: std::sync::Arc<dyn BlobStore>) -> Self {
        AttachmentConfig {
            blobs,
            max_bytes: 10 * 1024 * 1024,
            quota_bytes: 1024 * 1024 * 1024,
            visitor_quota_bytes: 50 * 1024 * 1024,
            orphan_after: Duration::from_secs(24 * 3600),
            cleanup_interval: Duration::from_secs(600),
            url_ttl: Duration::from_secs(3600),
            public_url: String::new(),
        }
    }
}

impl fmt::Debug for AttachmentConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AttachmentConfig")
            .field("blobs", &self.blobs.describe())
            .field("max_bytes", &self.max_bytes)
            .field("quota_bytes", &self.quota_bytes)
            .field("visitor_quota_bytes", &self.visitor_quota_bytes)
            .field("orphan_after", &self.orphan_after)
            .field("url_ttl", &self.url_ttl)
            .field("public_url", &self.public_url)
            .finish_non_exhaustive()
    }
}

/// Signs and checks attachment URLs: `…/v1/attachments/{id}?exp=…&sig=…`,
/// where `sig` is an HMAC-SHA256 of the id and the expiry under a key every
/// process of a server shares (kept in the store).
#[derive(Clone)]
pub struct UrlSigner {
    key: Vec<u8>,
    base: String,
    ttl_secs: i64,
}

impl fmt::Debug for UrlSigner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UrlSigner").field("base", &self.base).field("ttl_secs", &self.ttl_secs).finish_non_exhaustive()
    }
}

impl UrlSigner {
    /// A signer with `key`, putting `base` (may be empty) before the paths,
    /// making URLs valid for at least `ttl`.
    pub fn new(key: &[u8], base: &str, ttl: Duration) -> Self {
        UrlSigner {
            key: key.to_vec(),
            base: base.trim_end_matches('/').to_string(),
            ttl_secs: (ttl.as_secs() as i64).max(60),
        }
    }

    /// The expiry of URLs signed at `now`: the end of the next ttl-long
    /// period, so between one and two ttls away.
    pub fn expiry(&self, now: Timestamp) -> i64 {
        (now.as_secs().div_euclid(self.ttl_secs) + 2) * self.ttl_secs
    }

    fn mac(&self, id: &str, exp: i64) -> Hmac<Sha256> {
        // A key of any length is accepted by HMAC.
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&self.key).unwrap_or_else(|_| unreachable!());
        mac.update(id.as_bytes());
        mac.update(b":");
        mac.update(exp.to_string().as_bytes());
        mac
    }

    fn signature(&self, id: &str, exp: i64) -> String {
        let tag = self.mac(id, exp).finalize().into_bytes();
        tag[..16].iter().map(|b| format!("{b:02x}")).collect()
    }

    /// The signed URL of an attachment, or of its thumbnail.
    pub fn url(&self, id: &str, thumbnail: bool, now: Timestamp) -> String {
        let exp = self.expiry(now);
        format!("{}{}?exp={exp}&sig={}", self.base, attachment_path(id, thumbnail), self.signature(id, exp))
    }

    /// Whether `sig` is this server's signature of `id` until `exp`, and
    /// `exp` has not passed. Compared in constant time.
    pub fn verify(&self, id: &str, exp: i64, sig: &str, now: Timestamp) -> bool {
        if exp <= now.as_secs() || sig.len() != 32 {
            return false;
        }
        let Some(bytes) = decode_hex(sig) else { return false };
        self.mac(id, exp).verify_truncated_left(&bytes).is_ok()
    }

    /// Gives every attachment of `message` its signed URLs.
    pub fn sign(&self, message: &mut Message, now: Timestamp) {
        for file in &mut message.attachments {
            self.sign_attachment(file, now);
        }
    }

    /// Signs an attachment on its own (the answer to an upload).
    pub fn sign_attachment(&self, file: &mut Attachment, now: Timestamp) {
        file.url = self.url(&file.id, false, now);
        if file.thumbnail_url.is_some() {
            file.thumbnail_url = Some(self.url(&file.id, true, now));
        }
    }
}

fn decode_hex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok()).collect()
}

/// Makes a client's file name safe to keep and to put in a
/// `Content-Disposition`: the last path component, without control
/// characters, at most [`MAX_NAME_BYTES`] bytes (keeping the extension);
/// `"file"` when nothing is left.
pub fn clean_name(name: &str) -> String {
    let base = name.rsplit(['/', '\\']).next().unwrap_or_default();
    let cleaned: String = base.chars().filter(|c| !c.is_control()).collect();
    let cleaned = cleaned.trim().trim_start_matches('.').trim();
    if cleaned.is_empty() {
        return "file".to_string();
    }
    if cleaned.len() <= MAX_NAME_BYTES {
        return cleaned.to_string();
    }
    let (stem, ext) = match cleaned.rfind('.') {
        Some(dot) if cleaned.len() - dot <= 16 => (&cleaned[..dot], &cleaned[dot..]),
        _ => (cleaned, ""),
    };
    let mut cut = MAX_NAME_BYTES - ext.len();
    while !stem.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{}{ext}", &stem[..cut])
}

/// Whether a type may be shown inline by a browser (images but SVG, audio,
/// video, PDF); everything else is served as a download.
pub fn inline_allowed(content_type: &str) -> bool {
    let essence = content_type.split(';').next().unwrap_or_default().trim().to_ascii_lowercase();
    (essence.starts_with("image/") && essence != "image/svg+xml")
        || essence.starts_with("audio/")
        || essence.starts_with("video/")
        || essence == "application/pdf"
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signed_urls_verify_until_they_expire() {
        let signer = UrlSigner::new(b"k", "https://chat.example", Duration::from_secs(3600));
        let now = Timestamp::from_secs(1_000_000);
        let url = signer.url("abc", false, now);
        let exp = signer.expiry(now);
        assert!(exp - now.as_secs() > 3600 && exp - now.as_secs() <= 7200, "between one and two ttls");
        assert!(url.starts_with("https://chat.example/v1/attachments/abc?exp="));
        let sig = url.rsplit("sig=").next().expect("a signature");
        assert!(signer.verify("abc", exp, sig, now));
        assert!(!signer.verify("abd", exp, sig, now), "another id");
        assert!(!signer.verify("abc", exp + 1, sig, now), "another expiry");
        assert!(!signer.verify("abc", exp, sig, Timestamp::from_secs(exp)), "expired");
        assert!(!signer.verify("abc", exp, "zz", now));
        let other = UrlSigner::new(b"other", "", Duration::from_secs(3600));
        assert!(!other.verify("abc", exp, sig, now), "another key");
        // Within one period every process signs the same URL.
        assert_eq!(url, signer.url("abc", false, Timestamp::from_secs(1_000_001)));
    }

    #[test]
    fn names_are_made_safe() {
        assert_eq!(clean_name("../../etc/passwd"), "passwd");
        assert_eq!(clean_name("C:\\Users\\me\\report.pdf"), "report.pdf");
        assert_eq!(clean_name("a\u{0}b\nc.txt"), "abc.txt");
        assert_eq!(clean_name(""), "file");
        assert_eq!(clean_name(".."), "file");
        assert_eq!(clean_name(".bashrc"), "bashrc");
        let long = format!("{}.png", "é".repeat(300));
        let cut = clean_name(&long);
        assert!(cut.len() <= MAX_NAME_BYTES && cut.ends_with(".png"));
    }

    #[test]
    fn only_safe_types_are_inline() {
        for t in ["image/png", "image/jpeg", "audio/ogg", "video/mp4", "application/pdf", "IMAGE/GIF"] {
            assert!(inline_allowed(t), "{t}");
        }
        for t in ["image/svg+xml", "text/html", "text/plain; charset=utf-8", "application/octet-stream", ""] {
            assert!(!inline_allowed(t), "{t}");
        }
    }
}
