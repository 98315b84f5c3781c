//! Messages, attachments and history pages.

use serde::{Deserialize, Serialize};

use crate::call::CallSummary;
use crate::error::{Error, Result};
use crate::id::{MessageId, RoomId, UserId};
use crate::time::Timestamp;

/// The longest `client_msg_id`, in bytes.
pub const MAX_CLIENT_MSG_ID_BYTES: usize = 128;

/// A file attached to a message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Attachment {
    /// Server-made id.
    pub id: String,
    /// File name as uploaded.
    pub name: String,
    /// MIME type.
    pub content_type: String,
    /// Size in bytes.
    pub size: u64,
    /// Where to fetch the bytes: a signed URL, valid for a while (see
    /// [`UrlSigner`](crate::attachment::UrlSigner)).
    pub url: String,
    /// Width in pixels, for images.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub width: Option<u32>,
    /// Height in pixels, for images.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub height: Option<u32>,
    /// A smaller version (longest side 320 px), for images; signed like `url`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub thumbnail_url: Option<String>,
}

/// A stored message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Message {
    /// Server-made, time-sortable id.
    pub id: MessageId,
    /// The room it was posted in.
    pub room_id: RoomId,
    /// Position in the room: from 1, no gaps, never reused.
    pub seq: u64,
    /// Who wrote it.
    pub sender_id: UserId,
    /// The sender's idempotency key.
    pub client_msg_id: String,
    /// Text; empty once deleted.
    pub body: String,
    /// Attached files; empty once deleted.
    pub attachments: Vec<Attachment>,
    /// The message this one answers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reply_to: Option<MessageId>,
    /// When it was stored.
    pub created_at: Timestamp,
    /// When it was last edited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub edited_at: Option<Timestamp>,
    /// Whether it was deleted (the body is then gone).
    pub deleted: bool,
    /// For the line a call leaves in its room's history (sent by the
    /// caller, with an empty body): how the call went. Boxed: nearly every
    /// message has none, and they stay a pointer larger for it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub call: Option<Box<CallSummary>>,
}

/// A message on its way to the store: everything but the seq, which the store
/// assigns when it commits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewMessage {
    /// The id the message gets if it is new.
    pub id: MessageId,
    /// Target room.
    pub room_id: RoomId,
    /// Author.
    pub sender_id: UserId,
    /// Idempotency key, unique per (room, sender).
    pub client_msg_id: String,
    /// Text.
    pub body: String,
    /// Attached files, already resolved.
    pub attachments: Vec<Attachment>,
    /// The message this one answers.
    pub reply_to: Option<MessageId>,
    /// Creation time.
    pub created_at: Timestamp,
    /// How a call went, for a call's history line.
    pub call: Option<Box<CallSummary>>,
}

impl NewMessage {
    /// The message as stored under `seq`.
    pub fn into_message(self, seq: u64) -> Message {
        Message {
            id: self.id,
            room_id: self.room_id,
            seq,
            sender_id: self.sender_id,
            client_msg_id: self.client_msg_id,
            body: self.body,
            attachments: self.attachments,
            reply_to: self.reply_to,
            created_at: self.created_at,
            edited_at: None,
            deleted: false,
            call: self.call,
        }
    }
}

/// The store's answer to an append.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Appended {
    /// The stored message: the new one, or the one stored earlier under the same
    /// `client_msg_id`.
    pub message: Message,
    /// `false` when the message was a duplicate and nothing was stored.
    pub created: bool,
}

/// Which page of a room's history to read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct HistoryQuery {
    /// Only messages with a seq below this one.
    pub before_seq: Option<u64>,
    /// Only messages with a seq above this one.
    pub after_seq: Option<u64>,
    /// At most this many messages (already capped by the engine).
    pub limit: u32,
}

/// One page of history, ascending by seq.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct HistoryPage {
    /// The messages, oldest first.
    pub messages: Vec<Message>,
    /// Whether more messages lie beyond this page in the direction read.
    pub has_more: bool,
}

/// Checks a message body against the configured limit.
pub fn validate_body(body: &str, max_chars: usize, allow_empty: bool) -> Result<()> {
    if body.trim().is_empty() && !allow_empty {
        return Err(Error::invalid("body must not be empty"));
    }
    // Counting bytes first keeps the common case O(1) for the limit check.
    if body.len() > max_chars && body.chars().count() > max_chars {
        return Err(Error::too_large(format!("body is longer than {max_chars} characters")));
    }
    if body.contains('\0') {
        return Err(Error::invalid("body must not contain NUL characters"));
    }
    Ok(())
}

/// Checks a `client_msg_id`: 1..=128 bytes, printable.
pub fn validate_client_msg_id(id: &str) -> Result<()> {
    if id.is_empty() || id.len() > MAX_CLIENT_MSG_ID_BYTES {
        return Err(Error::invalid("client_msg_id must be 1 to 128 bytes"));
    }
    if id.chars().any(char::is_control) {
        return Err(Error::invalid("client_msg_id must not contain control characters"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_are_checked() {
        assert!(validate_body("hi", 10, false).is_ok());
        assert_eq!(validate_body("  ", 10, false).map_err(|e| e.code().as_str()), Err("invalid"));
        assert!(validate_body("", 10, true).is_ok());
        assert_eq!(validate_body(&"x".repeat(11), 10, false).map_err(|e| e.code().as_str()), Err("too_large"));
        // Ten characters of two bytes each are within a ten-character limit.
        assert!(validate_body(&"é".repeat(10), 10, false).is_ok());
        assert!(validate_body("a\0b", 10, false).is_err());
    }

    #[test]
    fn client_msg_ids_are_checked() {
        assert!(validate_client_msg_id("abc-1").is_ok());
        assert!(validate_client_msg_id("").is_err());
        assert!(validate_client_msg_id(&"x".repeat(129)).is_err());
        assert!(validate_client_msg_id("a\tb").is_err());
    }
}
