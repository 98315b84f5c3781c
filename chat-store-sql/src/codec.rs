//! Conversions between domain values and column values: ids as text, times
//! as integer milliseconds, seqs as signed 64-bit integers, lists as JSON
//! text. SQLite stores every value so; PostgreSQL too, except room and
//! message ids (`UUID`), roles (`TEXT[]`) and attachments (`JSONB`, which its
//! queries cast from and to JSON text).
//!
//! Decoding never trusts the database: a value that does not parse is
//! [`Error::Corrupt`], naming the column, not the value.

// With no backend feature enabled nothing calls these, and that is fine.
#![cfg_attr(not(all(feature = "sqlite", feature = "postgres")), allow(dead_code))]

use chat_core::{Attachment, MemberRole, MessageId, RoomId, RoomKind, Timestamp, UserId, Visibility};

use crate::error::{Error, Result};

/// A seq or cursor as the database stores it.
pub(crate) fn seq_to_db(seq: u64) -> Result<i64> {
    i64::try_from(seq).map_err(|_| Error::Invalid("seq out of range"))
}

/// A seq used only as a bound of a query: values past `i64::MAX` mean the
/// same as `i64::MAX`, since no stored seq gets that far.
pub(crate) fn seq_bound(seq: u64) -> i64 {
    i64::try_from(seq).unwrap_or(i64::MAX)
}

pub(crate) fn seq_from_db(seq: i64, column: &'static str) -> Result<u64> {
    u64::try_from(seq).map_err(|_| Error::Corrupt(column))
}

pub(crate) fn count_from_db(n: i64) -> Result<u64> {
    u64::try_from(n).map_err(|_| Error::Corrupt("count"))
}

pub(crate) fn time_from_db(ms: i64) -> Timestamp {
    Timestamp::from_millis(ms)
}

pub(crate) fn user_id(s: String, column: &'static str) -> Result<UserId> {
    UserId::new(s).map_err(|_| Error::Corrupt(column))
}

pub(crate) fn room_id(s: &str, column: &'static str) -> Result<RoomId> {
    s.parse().map_err(|_| Error::Corrupt(column))
}

pub(crate) fn message_id(s: &str, column: &'static str) -> Result<MessageId> {
    s.parse().map_err(|_| Error::Corrupt(column))
}

pub(crate) fn room_kind(s: &str) -> Result<RoomKind> {
    RoomKind::parse(s).ok_or(Error::Corrupt("rooms.kind"))
}

pub(crate) fn visibility(s: &str) -> Result<Visibility> {
    Visibility::parse(s).ok_or(Error::Corrupt("rooms.visibility"))
}

pub(crate) fn member_role(s: &str) -> Result<MemberRole> {
    MemberRole::parse(s).ok_or(Error::Corrupt("members.role"))
}

pub(crate) fn roles_to_db(roles: &[String]) -> Result<String> {
    serde_json::to_string(roles).map_err(|e| Error::Database(Box::new(e)))
}

pub(crate) fn roles_from_db(json: &str) -> Result<Vec<String>> {
    serde_json::from_str(json).map_err(|_| Error::Corrupt("users.roles"))
}

pub(crate) fn attachments_to_db(attachments: &[Attachment]) -> Result<String> {
    serde_json::to_string(attachments).map_err(|e| Error::Database(Box::new(e)))
}

pub(crate) fn attachments_from_db(json: &str) -> Result<Vec<Attachment>> {
    serde_json::from_str(json).map_err(|_| Error::Corrupt("messages.attachments"))
}

/// A call's history line as JSON text, `None` for other messages.
pub(crate) fn call_summary_to_db(call: Option<&chat_core::CallSummary>) -> Result<Option<String>> {
    call.map(|c| serde_json::to_string(c).map_err(|e| Error::Database(Box::new(e)))).transpose()
}

pub(crate) fn call_summary_from_db(json: Option<&str>) -> Result<Option<Box<chat_core::CallSummary>>> {
    json.map(|j| serde_json::from_str(j).map_err(|_| Error::Corrupt("messages.call"))).transpose()
}

pub(crate) fn call_media(s: &str) -> Result<chat_core::CallMedia> {
    chat_core::CallMedia::parse(s).ok_or(Error::Corrupt("calls.media"))
}

pub(crate) fn call_state(s: &str) -> Result<chat_core::CallState> {
    chat_core::CallState::parse(s).ok_or(Error::Corrupt("calls.state"))
}

pub(crate) fn end_reason(s: Option<&str>) -> Result<Option<chat_core::EndReason>> {
    s.map(|s| chat_core::EndReason::parse(s).ok_or(Error::Corrupt("calls.end_reason"))).transpose()
}

pub(crate) fn version_from_db(v: i64) -> Result<u64> {
    u64::try_from(v).map_err(|_| Error::Corrupt("calls.version"))
}

pub(crate) fn version_to_db(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// A list of user ids as one JSON array, for `IN (SELECT value FROM json_each(?))`.
pub(crate) fn user_ids_to_db(ids: &[UserId]) -> Result<String> {
    let ids: Vec<&str> = ids.iter().map(UserId::as_str).collect();
    serde_json::to_string(&ids).map_err(|e| Error::Database(Box::new(e)))
}

/// A row of `room_bans`: user, banned by, banned at.
pub(crate) fn ban_from_db((banned, by, at): (String, String, i64)) -> Result<chat_core::Ban> {
    Ok(chat_core::Ban {
        user_id: user_id(banned, "room_bans.user_id")?,
        banned_by: user_id(by, "room_bans.banned_by")?,
        banned_at: time_from_db(at),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seqs_round_trip_and_overflow_is_refused() {
        assert_eq!(seq_to_db(5).ok(), Some(5));
        assert!(matches!(seq_to_db(u64::MAX), Err(Error::Invalid(_))));
        assert_eq!(seq_bound(u64::MAX), i64::MAX);
        assert_eq!(seq_from_db(7, "x").ok(), Some(7));
        assert!(matches!(seq_from_db(-1, "messages.seq"), Err(Error::Corrupt("messages.seq"))));
    }

    #[test]
    fn bad_stored_values_are_corrupt_not_panics() {
        assert!(matches!(room_id("not-a-uuid", "rooms.id"), Err(Error::Corrupt("rooms.id"))));
        assert!(matches!(user_id(String::new(), "users.id"), Err(Error::Corrupt("users.id"))));
        assert!(matches!(room_kind("channel"), Err(Error::Corrupt(_))));
        assert!(matches!(roles_from_db("{"), Err(Error::Corrupt(_))));
        assert!(matches!(attachments_from_db("[1]"), Err(Error::Corrupt(_))));
    }

    #[test]
    fn lists_are_json() -> Result<()> {
        let roles = vec!["support".to_owned(), "a\"b".to_owned()];
        assert_eq!(roles_from_db(&roles_to_db(&roles)?)?, roles);
        assert_eq!(roles_to_db(&[])?, "[]");
        let ids = [UserId::new("a").map_err(|_| Error::Invalid("id"))?];
        assert_eq!(user_ids_to_db(&ids)?, r#"["a"]"#);
        Ok(())
    }
}
