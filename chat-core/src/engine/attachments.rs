//! Attachments' one home: recording uploads (within the uploader's quota),
//! which files a message may carry, who may read a file, the signed URLs
//! every outgoing message's files get, and the clean-up of files never
//! posted or whose message was deleted.
//!
//! Every decision reads the store: the record says whose a file is and where
//! it was posted, the room's membership who may read it. Nothing here is
//! cached, so a member removed on another process cannot read a file
//! through this one.

use std::path::PathBuf;
use std::sync::Arc;

use super::{Engine, Inner};
use crate::attachment::{
    AttachmentConfig, ByteRange, ByteStream, MAX_ATTACHMENTS_PER_MESSAGE, StoredAttachment, Upload, UrlSigner,
    clean_name,
};
use crate::error::{Error, Result};
use crate::id::{AttachmentId, RoomId, UserId};
use crate::message::{Attachment, Message};
use crate::store::AttachmentStore;
use crate::time::Timestamp;
use crate::user::User;

/// The name of the secret that signs attachment URLs.
const URL_KEY: &str = "attachment-url-key";

/// The engine's attachments, when it keeps them.
pub(crate) struct Attachments {
    pub(crate) config: AttachmentConfig,
    pub(crate) signer: UrlSigner,
}

impl Attachments {
    /// Sets up signing with the key every process shares (made by the
    /// first process to start, kept in the store).
    pub(crate) async fn new(config: AttachmentConfig, store: &dyn crate::Store) -> Result<Self> {
        if store.attachment_store().is_none() {
            return Err(Error::invalid("the store keeps no attachment records, so attachments cannot be on"));
        }
        let candidate = random_key()?;
        let key = store.server_secret(URL_KEY, &candidate).await?;
        let signer = UrlSigner::new(key.as_bytes(), &config.public_url, config.url_ttl);
        Ok(Attachments { config, signer })
    }
}

fn random_key() -> Result<String> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(|e| Error::internal(format!("no randomness from the OS: {e}")))?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// How a request for a file proves it may have it.
#[derive(Debug, Clone)]
pub enum AttachmentAccess {
    /// A signed-in user (a bearer token): the uploader, or a member of the
    /// room the file was posted in.
    User(User),
    /// A signed URL's `exp` and `sig`.
    Signed {
        /// Expiry, Unix seconds.
        exp: i64,
        /// The signature.
        sig: String,
    },
}

/// A file a request may read, from [`Engine::open_attachment`].
#[derive(Debug, Clone)]
pub struct OpenedAttachment {
    /// Its record.
    pub record: StoredAttachment,
    /// Whether the thumbnail was asked for.
    pub thumbnail: bool,
    /// The type of what is served.
    pub content_type: String,
    /// The size of what is served.
    pub size: u64,
}

/// What a transport needs to take an upload.
#[derive(Debug, Clone)]
pub struct UploadLimits {
    /// Largest file, in bytes.
    pub max_bytes: u64,
    /// Where to spool the upload (see [`crate::BlobStore::spool_dir`]).
    pub spool_dir: PathBuf,
}

impl Inner {
    fn attachments(&self) -> Result<(&Attachments, &dyn AttachmentStore)> {
        match (&self.attachments, self.store.attachment_store()) {
            (Some(a), Some(store)) => Ok((a, store)),
            _ => Err(Error::invalid("this server does not accept attachments")),
        }
    }

    /// Gives a message's files their signed URLs. Every message leaving the
    /// engine (replies, events, history, search) goes through here.
    pub(crate) fn sign(&self, message: &mut Message) {
        if let Some(a) = &self.attachments
            && !message.attachments.is_empty()
        {
            a.signer.sign(message, Timestamp::now());
        }
    }

    /// [`Inner::sign`] for many.
    pub(crate) fn sign_all<'a>(&self, messages: impl IntoIterator<Item = &'a mut Message>) {
        for message in messages {
            self.sign(message);
        }
    }

    /// The files a `message:send` names, checked for a clear answer before
    /// the send is queued: known, the sender's, not posted yet, each once.
    /// The store checks the same again in the commit, which decides.
    pub(crate) async fn resolve_attachments(
        &self,
        sender: &UserId,
        room: RoomId,
        client_msg_id: &str,
        ids: &[String],
    ) -> Result<Vec<Attachment>> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let (_, store) = self.attachments()?;
        if ids.len() > MAX_ATTACHMENTS_PER_MESSAGE {
            return Err(Error::too_large(format!(
                "a message carries at most {MAX_ATTACHMENTS_PER_MESSAGE} attachments"
            )));
        }
        let mut parsed: Vec<AttachmentId> = Vec::with_capacity(ids.len());
        for id in ids {
            let id: AttachmentId = id.parse()?;
            if parsed.contains(&id) {
                return Err(Error::invalid("an attachment may appear once in a message"));
            }
            parsed.push(id);
        }
        let records = store.attachments(&parsed).await?;
        let mut out = Vec::with_capacity(parsed.len());
        for id in parsed {
            let Some(record) = records.iter().find(|r| r.id == id) else {
                return Err(Error::NotFound("attachment"));
            };
            // Someone else's file is as good as unknown: its id tells nothing.
            if &record.uploader != sender || record.removed {
                return Err(Error::NotFound("attachment"));
            }
            if let Some(posted) = record.posted {
                // A retry of the send that posted it is answered by the store
                // with the stored message; anything else is a second post.
                let retry = posted.room_id == room
                    && self
                        .store
                        .message(room, posted.message_id)
                        .await?
                        .is_some_and(|m| m.client_msg_id == client_msg_id && &m.sender_id == sender);
                if !retry {
                    return Err(Error::conflict("the attachment was already posted"));
                }
            }
            out.push(record.to_attachment());
        }
        Ok(out)
    }
}

impl Engine {
    /// How large an upload may be and where to spool it; `invalid` when
    /// this server keeps no attachments. Also refuses at once a user whose
    /// quota is used up, before any byte is read.
    pub async fn upload_limits(&self, user: &User) -> Result<UploadLimits> {
        let (a, store) = self.inner.attachments()?;
        let quota = quota_of(&a.config, user);
        if quota > 0 && store.attachment_usage(&user.id).await? >= quota {
            return Err(crate::store::quota_error(quota));
        }
        Ok(UploadLimits { max_bytes: a.config.max_bytes, spool_dir: a.config.blobs.spool_dir().to_path_buf() })
    }

    /// Records a spooled upload of `user` and moves its bytes (and its
    /// thumbnail's) to the blob store. The record is written first, within
    /// the user's quota (`too_large` past it, and nothing is kept); if the
    /// bytes cannot be stored, the record is marked for the clean-up and the
    /// error returned. Answers the attachment with signed URLs.
    ///
    /// The caller removes the spooled files afterwards, whatever the answer
    /// (the blob store may have moved them already).
    pub async fn store_upload(&self, user: &User, upload: Upload) -> Result<Attachment> {
        let (a, store) = self.inner.attachments()?;
        if upload.size > a.config.max_bytes {
            return Err(Error::too_large(format!("a file may have at most {} bytes", a.config.max_bytes)));
        }
        if upload.size == 0 {
            return Err(Error::invalid("the file is empty"));
        }
        let record = StoredAttachment {
            id: AttachmentId::generate(),
            uploader: user.id.clone(),
            name: clean_name(&upload.name),
            content_type: upload.content_type,
            size: upload.size,
            width: upload.dimensions.map(|d| d.0),
            height: upload.dimensions.map(|d| d.1),
            thumbnail: upload.thumbnail.as_ref().map(|(_, t)| t.clone()),
            created_at: Timestamp::now(),
            posted: None,
            removed: false,
        };
        store.insert_attachment(&record, quota_of(&a.config, user)).await?;
        let mut stored = a.config.blobs.put_file(&record.key(), &upload.file).await;
        if stored.is_ok()
            && let Some((file, _)) = &upload.thumbnail
        {
            stored = a.config.blobs.put_file(&record.thumbnail_key(), file).await;
        }
        if let Err(err) = stored {
            tracing::warn!(error = %err, source = ?std::error::Error::source(&err), "could not store an upload");
            // The record stays unposted: the clean-up removes it and whatever
            // bytes made it, once it counts as an orphan.
            return Err(err);
        }
        let mut file = record.to_attachment();
        a.signer.sign_attachment(&mut file, Timestamp::now());
        Ok(file)
    }

    /// Checks that `access` may read a file (or its thumbnail). Anything it
    /// may not read, including a file whose message was deleted, is
    /// `not_found`, as an unknown id is; a signed URL that is forged or
    /// expired is `unauthorized`.
    pub async fn open_attachment(
        &self,
        access: &AttachmentAccess,
        id: &str,
        thumbnail: bool,
    ) -> Result<OpenedAttachment> {
        let (a, store) = self.inner.attachments()?;
        let Ok(parsed) = id.parse::<AttachmentId>() else {
            return Err(Error::NotFound("attachment"));
        };
        if let AttachmentAccess::Signed { exp, sig } = access
            && !a.signer.verify(id, *exp, sig, Timestamp::now())
        {
            return Err(Error::Unauthorized("the link expired or is not valid: fetch the message again".into()));
        }
        // `delete_message` marks its files removed in the transaction that
        // deletes it, so the record alone says whether the message is gone.
        let record = store.attachment(parsed).await?.filter(|r| !r.removed).ok_or(Error::NotFound("attachment"))?;
        if let AttachmentAccess::User(user) = access {
            let allowed = if record.uploader == user.id {
                true
            } else if let Some(posted) = record.posted {
                self.inner.store.member(posted.room_id, &user.id).await?.is_some()
            } else {
                false
            };
            if !allowed {
                return Err(Error::NotFound("attachment"));
            }
        }
        let (content_type, size) = match (&record.thumbnail, thumbnail) {
            (_, false) => (record.content_type.clone(), record.size),
            (Some(t), true) => (t.content_type.clone(), t.size),
            (None, true) => return Err(Error::NotFound("thumbnail")),
        };
        Ok(OpenedAttachment { record, thumbnail, content_type, size })
    }

    /// The bytes of a file [`Engine::open_attachment`] allowed, or a range
    /// of them (within its size). `not_found` when the blob store has lost
    /// them.
    pub async fn read_attachment(&self, opened: &OpenedAttachment, range: Option<ByteRange>) -> Result<ByteStream> {
        let (a, _) = self.inner.attachments()?;
        let key = if opened.thumbnail { opened.record.thumbnail_key() } else { opened.record.key() };
        a.config.blobs.get(&key, range).await?.ok_or(Error::NotFound("attachment"))
    }

    /// A file's record and bytes for a bridge, which mirrors whole rooms and
    /// so reads any file posted in one (a file never posted, or removed, is
    /// `not_found`).
    pub async fn attachment_for_bridge(&self, id: &str) -> Result<(StoredAttachment, ByteStream)> {
        let (a, store) = self.inner.attachments()?;
        let id: AttachmentId = id.parse().map_err(|_| Error::NotFound("attachment"))?;
        let record = store
            .attachment(id)
            .await?
            .filter(|r| !r.removed && r.posted.is_some())
            .ok_or(Error::NotFound("attachment"))?;
        let bytes = a.config.blobs.get(&record.key(), None).await?.ok_or(Error::NotFound("attachment"))?;
        Ok((record, bytes))
    }

    /// Gives a message's files their signed URLs, for messages read from
    /// the store by an embedder or a bridge rather than handed out by the
    /// engine (which signs everything it hands out).
    pub fn sign_message(&self, message: &mut Message) {
        self.inner.sign(message);
    }

    /// Runs one round of the clean-up now: removes the bytes and records of
    /// files never posted within [`AttachmentConfig::orphan_after`] and of
    /// files whose message was deleted. Returns how many were removed.
    pub async fn clean_attachments(&self) -> Result<u64> {
        clean_once(&self.inner).await
    }
}

fn quota_of(config: &AttachmentConfig, user: &User) -> u64 {
    if user.is_visitor() { config.visitor_quota_bytes } else { config.quota_bytes }
}

/// Most records one clean-up round looks at, so that a round is bounded
/// however many orphans piled up (the next round takes the rest).
const PURGE_ROUND: u32 = 1000;
const PURGE_PAGE: u32 = 100;

async fn clean_once(inner: &Inner) -> Result<u64> {
    let (a, store) = inner.attachments()?;
    let now = Timestamp::now();
    let before = Timestamp::from_millis(now.as_millis().saturating_sub(a.config.orphan_after.as_millis() as i64));
    let mut removed = 0;
    let mut seen = 0;
    while seen < PURGE_ROUND {
        let page = store.attachments_to_purge(before, PURGE_PAGE).await?;
        if page.is_empty() {
            break;
        }
        let full = page.len() as u32 == PURGE_PAGE;
        seen += page.len() as u32;
        for record in page {
            // Marked removed first, in the store, so that no message can
            // take it any more (one posted meanwhile is kept); then the
            // bytes; the record last, so that bytes are never left without
            // one pointing at them.
            if !store.mark_removed(record.id, before).await? {
                continue;
            }
            if record.thumbnail.is_some() {
                a.config.blobs.delete(&record.thumbnail_key()).await?;
            }
            a.config.blobs.delete(&record.key()).await?;
            store.forget_attachment(record.id).await?;
            removed += 1;
        }
        if !full {
            break;
        }
    }
    Ok(removed)
}

/// The clean-up task: one round every [`AttachmentConfig::cleanup_interval`].
/// Every process runs it; two removing the same file is harmless.
pub(crate) async fn clean_up(inner: Arc<Inner>) {
    let Some(interval) = inner.attachments.as_ref().map(|a| a.config.cleanup_interval) else { return };
    let mut tick = tokio::time::interval(interval.max(std::time::Duration::from_millis(100)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        match clean_once(&inner).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(removed = n, "removed attachments never posted or deleted"),
            Err(err) => tracing::warn!(error = %err, "attachment clean-up failed; trying again later"),
        }
    }
}
