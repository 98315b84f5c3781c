//! Agents' files, copied in: each file of an agent's Discord message is
//! fetched from the URL the gateway gave (on Discord's CDN only), streamed
//! to a spool file within the chat's upload limit and the size Discord
//! reported, examined, and kept as the agent's upload, so that it outlives
//! Discord's expiring CDN links. A file that cannot be copied becomes a line
//! naming it instead; the message is posted either way.

use chat_core::User;
use serenity::all::Attachment;

use crate::bridge::{LINK_UPLOAD, NAME, Shared, human_size};
use crate::error::{Error, Result};

/// What became of a message's files: the chat's copies (ids, for
/// `post_files_as`), and a line for each file that could not be copied.
#[derive(Debug, Default)]
pub(super) struct Copied {
    pub(super) ids: Vec<String>,
    pub(super) lines: Vec<String>,
    /// Whether some copies were made by an earlier try of this delivery.
    pub(super) reused: bool,
}

/// Copies a message's files in as uploads of `user` (recorded first). A
/// copy made by an earlier try of the same delivery is used again rather
/// than made twice; one the store cannot keep now fails the delivery, to be
/// tried again.
pub(super) async fn copy_files(shared: &Shared, user: &User, files: &[Attachment]) -> Result<Copied> {
    let host = shared.host()?;
    let outbox = shared.outbox()?;
    let mut copied = Copied::default();
    if files.is_empty() {
        return Ok(copied);
    }
    host.upsert_user(user.clone()).await?;
    let limits = host.upload_limits(user).await;
    for file in files {
        let key = file.id.get().to_string();
        if let Some(id) = outbox.remote_of(NAME, LINK_UPLOAD, &key).await? {
            copied.ids.push(id);
            copied.reused = true;
            continue;
        }
        let limits = match &limits {
            Ok(limits) => limits,
            // No attachments on this server, or the agent's quota is used up.
            Err(err) => {
                copied.lines.push(line(file, &err.to_string()));
                continue;
            }
        };
        let size = u64::from(file.size);
        if size > limits.max_bytes {
            copied.lines.push(line(file, &format!("larger than the chat's limit of {}", human_size(limits.max_bytes))));
            continue;
        }
        match copy_one(shared, user, file, limits, size).await {
            Ok(id) => {
                outbox.set_link(NAME, LINK_UPLOAD, &key, &id).await?;
                copied.ids.push(id);
            }
            Err(Error::Chat(err)) if err.code() == chat_core::ErrorCode::Unavailable => return Err(Error::Chat(err)),
            Err(err) => {
                tracing::info!(error = %err, file = %file.filename, "discord bridge: an agent's file was not copied");
                copied.lines.push(line(file, &why(&err)));
            }
        }
    }
    Ok(copied)
}

/// Fetches one file, spools it (never more than `size`, which Discord
/// reported, nor the chat's limit), examines it and stores it as `user`'s.
async fn copy_one(
    shared: &Shared,
    user: &User,
    file: &Attachment,
    limits: &chat_core::engine::UploadLimits,
    size: u64,
) -> Result<String> {
    if !shared.config.on_cdn(&file.url) {
        return Err(Error::Unexpected("not on Discord's CDN".into()));
    }
    let fetch = async {
        let response = shared.rest.download(&file.url).await?;
        if response.content_length().is_some_and(|length| length > size) {
            return Err(Error::Unexpected("larger than Discord said".into()));
        }
        chat_attachments::spool(&limits.spool_dir, response.bytes_stream(), size.min(limits.max_bytes)).await.map_err(
            |err| match err {
                chat_attachments::SpoolError::TooLarge(_) => Error::Unexpected("larger than Discord said".into()),
                chat_attachments::SpoolError::Body(text) => Error::Unavailable(text),
                chat_attachments::SpoolError::Io(err) => Error::Unavailable(format!("cannot spool: {err}")),
            },
        )
    };
    let spooled = tokio::time::timeout(shared.config.download_timeout, fetch)
        .await
        .map_err(|_| Error::Unavailable("the download timed out".into()))??;
    if spooled.size != size {
        return Err(Error::Unexpected("smaller than Discord said".into()));
    }
    let (upload, spool_files) = chat_attachments::prepare(spooled, file.filename.clone()).await;
    let stored = shared.host()?.store_upload(user, upload).await;
    drop(spool_files);
    Ok(stored?.id)
}

/// A line naming a file that was not copied, and why.
fn line(file: &Attachment, why: &str) -> String {
    format!("📎 {} ({}) was not copied: {why}", file.filename, human_size(u64::from(file.size)))
}

/// Why a file was not copied, as the room may read it (no addresses, no
/// internals).
fn why(err: &Error) -> String {
    match err {
        Error::Chat(err) if err.code() != chat_core::ErrorCode::Internal => err.to_string(),
        Error::Unexpected(text) => text.clone(),
        Error::Refused { status, .. } => format!("Discord answered {status}"),
        _ => "it could not be fetched from Discord".into(),
    }
}
