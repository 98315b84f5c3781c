//! Small pieces every backend uses around sqlx calls.

use std::collections::HashMap;

use chat_core::{HistoryPage, HistoryQuery, Message, Room, RoomId, SearchHit};

use crate::error::Result;
#[cfg(feature = "postgres")]
use crate::error::{Backend, Error};

/// Commits `tx` when `result` is `Ok`, rolls it back otherwise.
#[cfg(feature = "postgres")]
pub(crate) async fn finish<DB: sqlx::Database + Backend, T>(
    tx: sqlx::Transaction<'static, DB>,
    result: Result<T>,
) -> Result<T> {
    match result {
        Ok(value) => {
            tx.commit().await.map_err(Error::from_sqlx::<DB>)?;
            Ok(value)
        }
        Err(err) => {
            // Dropping the transaction would roll back too, but only when the
            // connection is next used; doing it now releases the locks at once.
            if let Err(rollback) = tx.rollback().await {
                tracing::warn!(error = %rollback, "rolling back a failed store write failed");
            }
            Err(err)
        }
    }
}

/// A history page from the rows of its query, which asked for one row more
/// than `q.limit` (that row only tells whether more lie beyond). Queries
/// without `after_seq` read newest first to find the page; the page is handed
/// out oldest first either way.
#[cfg_attr(not(any(feature = "sqlite", feature = "postgres")), allow(dead_code))]
pub(crate) fn history_page<R>(
    mut rows: Vec<R>,
    q: &HistoryQuery,
    decode: impl Fn(&R) -> Result<Message>,
) -> Result<HistoryPage> {
    let has_more = rows.len() > q.limit as usize;
    rows.truncate(q.limit as usize);
    let mut messages = rows.iter().map(decode).collect::<Result<Vec<_>>>()?;
    if q.after_seq.is_none() {
        messages.reverse();
    }
    Ok(HistoryPage { messages, has_more })
}

/// A limit as a SQL `bigint`, to compare counts with: `u64::MAX` (no limit)
/// and anything above `i64::MAX` become `i64::MAX`.
#[cfg(feature = "postgres")]
pub(crate) fn limit_to_db(limit: u64) -> i64 {
    i64::try_from(limit).unwrap_or(i64::MAX)
}

/// The distinct rooms of a page of search results, sorted: the second
/// query of a search reads them all at once.
#[cfg_attr(not(any(feature = "sqlite", feature = "postgres")), allow(dead_code))]
pub(crate) fn distinct_rooms(messages: &[Message]) -> Vec<RoomId> {
    let mut rooms: Vec<RoomId> = messages.iter().map(|m| m.room_id).collect();
    rooms.sort_unstable();
    rooms.dedup();
    rooms
}

/// Each message with its room, in the messages' order; a message whose room
/// is gone by the time the rooms were read is left out.
#[cfg_attr(not(any(feature = "sqlite", feature = "postgres")), allow(dead_code))]
pub(crate) fn search_hits(messages: Vec<Message>, rooms: Vec<Room>) -> Vec<SearchHit> {
    let rooms: HashMap<RoomId, Room> = rooms.into_iter().map(|r| (r.id, r)).collect();
    messages
        .into_iter()
        .filter_map(|message| rooms.get(&message.room_id).cloned().map(|room| SearchHit { message, room }))
        .collect()
}
