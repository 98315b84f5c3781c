//! The inbound catch-up: after each READY, what the gateway did not bring
//! while it was away.
//!
//! Serenity often identifies anew instead of resuming, and then Discord
//! replays nothing. So for every mapped thread, what was written after its
//! cursor is delivered, oldest first, and its latest messages are read again
//! for the edits and deletes agents made meanwhile; and the first posts of
//! support threads opened before the Claim and Close buttons existed are
//! given them, once.

use chat_core::{RoomId, RoomKind};
use serde_json::{Value, json};
use serenity::all::{Message, MessageId as DiscordMessageId};
use serenity::http::{LightMethod, Route};

use super::deliver::{apply_edit, deliver};
use crate::bridge::{
    LINK_BUTTONS, LINK_CURSOR, LINK_MESSAGE, LINK_THREAD, NAME, Shared, buttons, parse_channel, parse_snowflake,
};
use crate::error::{Error, Result};

/// How many of a thread's latest messages a catch-up reads again for the
/// edits and deletes it missed: Discord's largest page, so one call per
/// thread, and at most this many link reads. Older changes are not caught up.
const RECHECK_WINDOW: usize = 100;

/// After READY, catches up every mapped thread: what was written there after
/// the newest message seen is delivered, oldest first; then the latest
/// messages are read again for agents' edits and deletes made meanwhile. A
/// thread that cannot be read (deleted, no access) does not stop the others.
pub(super) async fn catch_up(shared: &Shared) -> Result<()> {
    let outbox = shared.outbox()?;
    let mut failure = None;
    for (room, thread) in outbox.links(NAME, LINK_THREAD).await? {
        let caught = async {
            fetch_missed(shared, &thread).await?;
            recheck_recent(shared, &room, &thread).await
        };
        if let Err(err) = caught.await {
            tracing::warn!(error = %err, thread, "discord bridge: a thread was not caught up");
            failure = Some(err);
        }
    }
    if let Err(err) = add_missing_buttons(shared).await {
        failure = Some(err);
    }
    failure.map_or(Ok(()), Err)
}

/// Gives the first post of every open support thread that lacks them the
/// Claim and Close buttons (posts opened before the buttons existed), once:
/// each room is recorded when done, or when closed (a closed room stays
/// closed) or refused, so a later READY costs one link read per thread and
/// no call. A transient failure leaves the room for the next READY.
async fn add_missing_buttons(shared: &Shared) -> Result<()> {
    let outbox = shared.outbox()?;
    let store = shared.host()?.store();
    let mut failure = None;
    for (room_key, thread) in outbox.links(NAME, LINK_THREAD).await? {
        if outbox.remote_of(NAME, LINK_BUTTONS, &room_key).await?.is_some() {
            continue;
        }
        let Ok(room) = room_key.parse::<RoomId>() else { continue };
        if shared.config.channel_of(room).is_some() {
            continue;
        }
        let Some(found) = store.room(room).await? else { continue };
        if found.kind != RoomKind::Support {
            continue;
        }
        let done = if found.closed { Ok("closed") } else { give_buttons(shared, room, &thread).await.map(|()| "done") };
        match done {
            Ok(how) => outbox.set_link(NAME, LINK_BUTTONS, &room_key, how).await?,
            // Refused (the post is not the bot's, no access): asking again
            // at every READY would be refused again.
            Err(err) if !err.is_transient() => {
                tracing::warn!(error = %err, thread, "discord bridge: a post cannot be given its buttons");
                outbox.set_link(NAME, LINK_BUTTONS, &room_key, "refused").await?;
            }
            Err(err) => {
                tracing::warn!(error = %err, thread, "discord bridge: cannot give a post its buttons now");
                failure = Some(err);
            }
        }
    }
    failure.map_or(Ok(()), Err)
}

/// Adds the buttons to a thread's first post if it has no components. A
/// post Discord no longer has needs nothing.
async fn give_buttons(shared: &Shared, room: RoomId, thread: &str) -> Result<()> {
    let channel_id = parse_channel(thread)?;
    // A forum post's first message has the thread's id.
    let message_id = DiscordMessageId::new(parse_snowflake(thread)?);
    let route = || Route::ChannelMessage { channel_id, message_id };
    let first = match shared.rest.call(LightMethod::Get, route(), Vec::new(), None).await {
        Ok(first) => first,
        Err(Error::Refused { status: 404, .. }) => return Ok(()),
        Err(err) => return Err(err),
    };
    if first.get("components").and_then(Value::as_array).is_some_and(|c| !c.is_empty()) {
        return Ok(());
    }
    // Only the components change; the text stays as the outbox left it.
    let body = json!({ "components": buttons(room) });
    match shared.rest.call(LightMethod::Patch, route(), Vec::new(), Some(&body)).await {
        Ok(_) | Err(Error::Refused { status: 404, .. }) => Ok(()),
        Err(err) => Err(err),
    }
}

/// Delivers what was written in a thread after the newest message seen there.
async fn fetch_missed(shared: &Shared, thread: &str) -> Result<()> {
    let outbox = shared.outbox()?;
    let channel_id = parse_channel(thread)?;
    {
        loop {
            let after = outbox.remote_of(NAME, LINK_CURSOR, thread).await?.unwrap_or_else(|| thread.to_owned());
            let params = vec![("after", after), ("limit", "100".to_owned())];
            let page = shared.rest.call(LightMethod::Get, Route::ChannelMessages { channel_id }, params, None).await?;
            let mut messages: Vec<Message> =
                serde_json::from_value(page).map_err(|e| Error::Unexpected(format!("a message list: {e}")))?;
            if messages.is_empty() {
                break;
            }
            messages.sort_by_key(|m| m.id);
            let full = messages.len() >= 100;
            for message in &messages {
                deliver(shared, message).await?;
            }
            if !full {
                break;
            }
        }
    }
    Ok(())
}

/// Applies the edits and deletes of agents' messages that the gateway did
/// not bring: the room's latest [`RECHECK_WINDOW`] messages that agents
/// wrote are compared with the thread's latest [`RECHECK_WINDOW`]. An edited
/// one gets its current text; a linked one missing from a window that must
/// hold it is deleted. Threads whose recent room messages include no
/// agent's cost no call to Discord.
async fn recheck_recent(shared: &Shared, room: &str, thread: &str) -> Result<()> {
    let host = shared.host()?;
    let outbox = shared.outbox()?;
    let room: RoomId = room.parse()?;
    let query = chat_core::HistoryQuery { limit: RECHECK_WINDOW as u32, ..Default::default() };
    let recent = host.store().history(room, query).await?;
    let mut linked = Vec::new();
    for message in recent.messages {
        if !message.sender_id.as_str().starts_with("discord:") || message.deleted {
            continue;
        }
        let remote = outbox.remote_of(NAME, LINK_MESSAGE, &message.id.to_string()).await?;
        if let Some(remote) = remote.and_then(|r| r.parse::<u64>().ok()) {
            linked.push((message, remote));
        }
    }
    if linked.is_empty() {
        return Ok(());
    }
    let channel_id = parse_channel(thread)?;
    let params = vec![("limit", RECHECK_WINDOW.to_string())];
    let page = shared.rest.call(LightMethod::Get, Route::ChannelMessages { channel_id }, params, None).await?;
    let window: Vec<Message> =
        serde_json::from_value(page).map_err(|e| Error::Unexpected(format!("a message list: {e}")))?;
    let ids: Vec<u64> = window.iter().map(|m| m.id.get()).collect();
    for (message, remote) in linked {
        match window.iter().find(|m| m.id.get() == remote) {
            // Never edited since it was posted: nothing to compare.
            Some(now) if now.edited_timestamp.is_none() => {}
            Some(now) => apply_edit(shared, &message, &now.content).await?,
            None if deleted_meanwhile(remote, &ids) => {
                host.delete_as(NAME, &message.sender_id, room, message.id).await?;
            }
            None => {}
        }
    }
    Ok(())
}

/// Whether a message missing from the thread's latest messages (`window`,
/// ids as Discord listed them) was deleted: a window shorter than
/// [`RECHECK_WINDOW`] is the whole thread; a full one covers only ids from
/// its oldest on.
fn deleted_meanwhile(remote: u64, window: &[u64]) -> bool {
    if window.contains(&remote) {
        return false;
    }
    window.len() < RECHECK_WINDOW || window.iter().min().is_some_and(|&oldest| remote > oldest)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_message_missing_from_a_window_that_covers_it_was_deleted() {
        // A full window: the thread's latest messages, with gaps between ids.
        let full: Vec<u64> = (1_000..1_000 + RECHECK_WINDOW as u64).map(|i| i * 2).collect();
        assert_eq!(full.len(), RECHECK_WINDOW);
        let table: [(&str, u64, &[u64], bool); 6] = [
            ("still there", 11, &[10, 11, 12], false),
            ("missing from the whole thread", 11, &[10, 12], true),
            ("the thread is empty now", 11, &[], true),
            ("missing inside a full window", 2_051, &full[..], true),
            ("older than a full window: unknown", 1_999, &full[..], false),
            ("present in a full window", 2_050, &full[..], false),
        ];
        for (what, remote, window, deleted) in table {
            assert_eq!(deleted_meanwhile(remote, window), deleted, "{what}");
        }
    }
}
