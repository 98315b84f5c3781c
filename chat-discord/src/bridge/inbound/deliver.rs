//! Delivery into rooms: what agents do in a mapped thread or channel
//! becomes what they do in its room, as the chat user `discord:<id>`.
//!
//! A message is posted once (its Discord id is the `client_msg_id`); edits
//! and deletes apply only to what agents wrote (visitors' messages change in
//! the chat, and reach Discord from there); typing shows as typing; and
//! members who are chat users already get the names and roles Discord gives
//! them. Every message seen in a thread moves the thread's cursor, from
//! which the catch-up after the next READY starts.

use std::collections::HashMap;

use chat_core::{BridgeStore, MessageId, RoomId, User, UserId};
use serenity::all::{ChannelId, Message, MessageId as DiscordMessageId, MessageUpdateEvent, RoleId, TypingStartEvent};

use super::files::copy_files;
use super::{chat_roles, holds_support};
use crate::bridge::{LINK_CURSOR, LINK_LINES_IN, LINK_MESSAGE, LINK_THREAD, NAME, Shared, agent_user_id};
use crate::config::DiscordConfig;
use crate::error::Result;

/// Posts a message written in a mapped thread into its room, once: the
/// Discord message id is the `client_msg_id`, so a message seen live and
/// again by a catch-up is stored once.
pub(super) async fn deliver(shared: &Shared, message: &Message) -> Result<()> {
    let outbox = shared.outbox()?;
    let thread = message.channel_id.get().to_string();
    let Some(room) = outbox.local_of(NAME, LINK_THREAD, &thread).await? else {
        return Ok(());
    };
    advance_cursor(outbox, &thread, message.id.get()).await?;
    let bot = shared.state().bot_user;
    if message.author.bot || message.webhook_id.is_some() || Some(message.author.id.get()) == bot {
        return Ok(());
    }
    if message.content.trim_start().starts_with(shared.config.note_prefix.as_str()) {
        return Ok(());
    }
    let room: RoomId = room.parse()?;
    let discord_id = message.id.get().to_string();
    // Seen before (live, then by a catch-up): posted already, and its files
    // are not fetched again.
    if outbox.local_of(NAME, LINK_MESSAGE, &discord_id).await?.is_some() {
        return Ok(());
    }
    if message.content.trim().is_empty() && message.attachments.is_empty() {
        return Ok(());
    }
    // In a support thread, the people writing are the support team; in a
    // mapped text channel, they are anyone of the server.
    let support = shared.config.channel_of(room).is_none();
    let name = message
        .member
        .as_ref()
        .and_then(|m| m.nick.clone())
        .or_else(|| message.author.global_name.clone())
        .unwrap_or_else(|| message.author.name.clone());
    let mut user = User::new(agent_user_id(message.author.id.get())?, name);
    user.roles = match &message.member {
        Some(member) => {
            let support = support || holds_support(&shared.config, &member.roles);
            chat_roles(&shared.config, &member.roles, support)
        }
        // Fetched messages carry no member: the roles last seen stay.
        None => match shared.host()?.store().user(&user.id).await? {
            Some(known) if !known.roles.is_empty() => known.roles,
            _ => chat_roles(&shared.config, &[], support),
        },
    };
    let copied = copy_files(shared, &user, &message.attachments).await?;
    let lines = copied.lines.join("\n");
    let body = with_lines(&message.content, &lines);
    let client_msg_id = format!("discord:{discord_id}");
    let host = shared.host()?;
    let posted = if copied.ids.is_empty() {
        host.post_as(NAME, user, room, client_msg_id, body).await?
    } else {
        match host.post_files_as(NAME, user.clone(), room, client_msg_id.clone(), body.clone(), copied.ids).await {
            Ok(posted) => posted,
            // Copies made by an earlier try are posted already when that
            // try's post went through and only its link was not kept: the
            // message is stored under its client_msg_id, which answers it.
            Err(err) if copied.reused && err.code() == chat_core::ErrorCode::Conflict => {
                host.post_as(NAME, user, room, client_msg_id, body).await?
            }
            Err(err) => return Err(err.into()),
        }
    };
    let local = posted.id.to_string();
    if !lines.is_empty() {
        outbox.set_link(NAME, LINK_LINES_IN, &local, &lines).await?;
    }
    outbox.set_link(NAME, LINK_MESSAGE, &local, &discord_id).await?;
    Ok(())
}

/// A message's text and the lines naming its files that were not copied.
fn with_lines(content: &str, lines: &str) -> String {
    match (content.is_empty(), lines.is_empty()) {
        (_, true) => content.to_owned(),
        (true, false) => lines.to_owned(),
        (false, false) => format!("{content}\n{lines}"),
    }
}

/// The room message a Discord message of a mapped thread was delivered as,
/// if it was one an agent wrote: the bridge changes only what it posted for
/// agents (visitors' messages change in the chat, and reach Discord from there).
async fn agent_message(
    shared: &Shared,
    channel: ChannelId,
    message: DiscordMessageId,
) -> Result<Option<chat_core::Message>> {
    let outbox = shared.outbox()?;
    let Some(room) = outbox.local_of(NAME, LINK_THREAD, &channel.get().to_string()).await? else {
        return Ok(None);
    };
    let Some(local) = outbox.local_of(NAME, LINK_MESSAGE, &message.get().to_string()).await? else {
        return Ok(None);
    };
    let room: RoomId = room.parse()?;
    let local: MessageId = local.parse()?;
    let found = shared.host()?.store().message(room, local).await?;
    Ok(found.filter(|m| m.sender_id.as_str().starts_with("discord:") && !m.deleted))
}

/// A member joined, changed or left (`now` is `None`): if they are a chat
/// user already, their name and roles become what Discord says now, without
/// waiting for their next message or button press. `support` follows the
/// support role; mapped roles follow the role map; someone who left the
/// server keeps their name and loses every role. Members who never wrote in
/// a mapped thread or channel are not made chat users.
pub(super) async fn member_roles(shared: &Shared, user: u64, now: Option<(String, Vec<RoleId>)>) -> Result<()> {
    let host = shared.host()?;
    let id = agent_user_id(user)?;
    let Some(known) = host.store().user(&id).await? else {
        return Ok(());
    };
    let next = as_member_now(&shared.config, &known, now);
    if next != known {
        host.upsert_user(next).await?;
    }
    Ok(())
}

/// A GUILD_CREATE or member chunk: the members it carries who are chat
/// users already get their name and roles as Discord says them now, so that
/// role changes made while the gateway was away apply too. A member whose
/// own event was heard in this gateway session is skipped: that event is
/// newer, and is applied already or queued behind this. One store read per
/// snapshot or chunk.
pub(super) async fn snapshot_roles(shared: &Shared, members: Vec<(u64, String, Vec<RoleId>)>) -> Result<()> {
    let host = shared.host()?;
    let ids: Vec<UserId> = members.iter().filter_map(|(user, _, _)| agent_user_id(*user).ok()).collect();
    let known: HashMap<UserId, User> = host.store().users(&ids).await?.into_iter().map(|u| (u.id.clone(), u)).collect();
    for (user, name, held) in members {
        let Some(known) = agent_user_id(user).ok().and_then(|id| known.get(&id)) else { continue };
        if shared.state().members_heard.contains(&user) {
            continue;
        }
        let next = as_member_now(&shared.config, known, Some((name, held)));
        if &next != known {
            host.upsert_user(next).await?;
        }
    }
    Ok(())
}

/// A chat user with the name and roles of the member they are on Discord
/// now, or with no roles when they left (`None`).
fn as_member_now(config: &DiscordConfig, known: &User, now: Option<(String, Vec<RoleId>)>) -> User {
    let mut next = known.clone();
    match now {
        Some((name, held)) => {
            next.roles = chat_roles(config, &held, holds_support(config, &held));
            if chat_core::user::validate_name(&name).is_ok() {
                next.name = name;
            }
        }
        None => next.roles.clear(),
    }
    next
}

/// An agent edited a message in a mapped thread: the room gets the new text.
pub(super) async fn update(shared: &Shared, event: &MessageUpdateEvent) -> Result<()> {
    // Updates without content are Discord's own (embeds unfurled, pins).
    let Some(content) = &event.content else {
        return Ok(());
    };
    let Some(message) = agent_message(shared, event.channel_id, event.id).await? else {
        return Ok(());
    };
    apply_edit(shared, &message, content).await
}

/// Gives an agent's room message the text its Discord message has now,
/// unless that is the same, empty, or a note. Its files stay as they were
/// copied in, and the lines naming those that were not stay too.
pub(super) async fn apply_edit(shared: &Shared, message: &chat_core::Message, content: &str) -> Result<()> {
    if content.trim_start().starts_with(shared.config.note_prefix.as_str()) {
        return Ok(());
    }
    let lines = shared.outbox()?.remote_of(NAME, LINK_LINES_IN, &message.id.to_string()).await?.unwrap_or_default();
    let body = with_lines(content, &lines);
    if (body.trim().is_empty() && message.attachments.is_empty()) || body == message.body {
        return Ok(());
    }
    shared.host()?.edit_as(NAME, &message.sender_id, message.room_id, message.id, body).await?;
    Ok(())
}

/// An agent's message was deleted in a mapped thread: so it is in the room.
pub(super) async fn remove(shared: &Shared, channel: ChannelId, id: DiscordMessageId) -> Result<()> {
    let Some(message) = agent_message(shared, channel, id).await? else {
        return Ok(());
    };
    shared.host()?.delete_as(NAME, &message.sender_id, message.room_id, message.id).await?;
    Ok(())
}

async fn advance_cursor(outbox: &dyn BridgeStore, thread: &str, seen: u64) -> Result<()> {
    let cursor = outbox.remote_of(NAME, LINK_CURSOR, thread).await?.and_then(|c| c.parse::<u64>().ok());
    if cursor.is_none_or(|c| c < seen) {
        outbox.set_link(NAME, LINK_CURSOR, thread, &seen.to_string()).await?;
    }
    Ok(())
}

pub(super) async fn typing(shared: &Shared, event: &TypingStartEvent) -> Result<()> {
    let outbox = shared.outbox()?;
    let thread = event.channel_id.get().to_string();
    let Some(room) = outbox.local_of(NAME, LINK_THREAD, &thread).await? else {
        return Ok(());
    };
    if Some(event.user_id.get()) == shared.state().bot_user {
        return Ok(());
    }
    let room: RoomId = room.parse()?;
    shared.host()?.set_typing_as(&agent_user_id(event.user_id.get())?, room, true).await?;
    Ok(())
}
