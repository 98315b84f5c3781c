//! What a room and its messages look like in Discord, and the calls that
//! put them there: a support room's forum thread (its title, and its first
//! post, which carries the Claim and Close buttons), a message's text, and
//! the channel's webhook, which posts under chat users' names.
//!
//! The worker decides what to post and when; this module is the shape of
//! each post on Discord's side.

use chat_core::RoomId;
use serde_json::{Value, json};
use serenity::all::{ChannelId, GuildId, WebhookId};
use serenity::http::{LightMethod, Route};

use crate::bridge::{LINK_WEBHOOK, NAME, Shared, buttons, id_of, parse_channel};
use crate::error::{Error, Result};

/// Discord's longest message.
const MAX_CONTENT_CHARS: usize = 2000;

/// A thread's title: the visitor's name and the end of the room id, which
/// is random (its start is a timestamp shared by rooms made together).
pub(super) fn thread_title(visitor: &str, room: RoomId) -> String {
    let id = room.to_string();
    let short = &id[id.len().saturating_sub(8)..];
    let name: String = visitor.chars().take(80).collect();
    format!("{name} · {short}")
}

/// A message as Discord shows it: the body, then each attachment as a link.
pub(super) fn render(message: &chat_core::Message) -> String {
    let mut text = message.body.clone();
    for file in &message.attachments {
        text.push_str(&format!("\n[{}]({})", file.name, file.url));
    }
    if text.chars().count() > MAX_CONTENT_CHARS {
        text = text.chars().take(MAX_CONTENT_CHARS - 1).collect();
        text.push('…');
    }
    text
}

/// Opens the room's forum post. Its first message carries the Claim and
/// Close buttons, whose custom ids name the room.
pub(super) async fn create_thread(shared: &Shared, title: &str, content: &str, room: RoomId) -> Result<String> {
    let channel_id = ChannelId::new(shared.config.forum_channel_id);
    let body = json!({
        "name": title,
        "auto_archive_duration": 10080,
        "message": {
            "content": content,
            "allowed_mentions": { "parse": [] },
            "components": buttons(room),
        },
    });
    let thread =
        shared.rest.call(LightMethod::Post, Route::ChannelForumPosts { channel_id }, Vec::new(), Some(&body)).await?;
    id_of(&thread, "a new thread")
}

/// A thread of the forum with this title, made by an attempt whose answer was lost.
pub(super) async fn find_thread(shared: &Shared, title: &str) -> Result<Option<String>> {
    let guild_id = GuildId::new(shared.config.guild_id);
    let active = shared.rest.call(LightMethod::Get, Route::GuildThreadsActive { guild_id }, Vec::new(), None).await?;
    let forum = shared.config.forum_channel_id.to_string();
    let threads = active.get("threads").and_then(Value::as_array).cloned().unwrap_or_default();
    Ok(threads
        .iter()
        .find(|t| {
            t.get("parent_id").and_then(Value::as_str) == Some(forum.as_str())
                && t.get("name").and_then(Value::as_str) == Some(title)
        })
        .and_then(|t| t.get("id").and_then(Value::as_str).map(str::to_owned)))
}

/// A channel's webhook that posts under chat users' names (the forum's for
/// support threads, a mapped text channel's own): ours when the channel has
/// one, else a new one. Kept in the store.
pub(super) async fn webhook(shared: &Shared, channel: u64) -> Result<(u64, String)> {
    if let Some(hook) = shared.state().webhooks.get(&channel).cloned() {
        return Ok(hook);
    }
    let outbox = shared.outbox()?;
    let forum = channel.to_string();
    let parse = |s: &str| {
        let (id, token) = s.split_once('/')?;
        Some((id.parse::<u64>().ok()?, token.to_owned()))
    };
    let stored = outbox.remote_of(NAME, LINK_WEBHOOK, &forum).await?;
    let hook = match stored.as_deref().and_then(parse) {
        Some(hook) => hook,
        None => {
            let channel_id = ChannelId::new(channel);
            let list =
                shared.rest.call(LightMethod::Get, Route::ChannelWebhooks { channel_id }, Vec::new(), None).await?;
            let bot = shared.state().bot_user.map(|b| b.to_string());
            let existing = list.as_array().into_iter().flatten().find(|w| {
                w.get("token").and_then(Value::as_str).is_some()
                    && w.get("user").and_then(|u| u.get("id")).and_then(Value::as_str) == bot.as_deref()
            });
            let hook = match existing {
                Some(hook) => hook.clone(),
                None => {
                    let body = json!({ "name": "chat bridge" });
                    shared
                        .rest
                        .call(LightMethod::Post, Route::ChannelWebhooks { channel_id }, Vec::new(), Some(&body))
                        .await?
                }
            };
            let id = id_of(&hook, "a webhook")?;
            let token = hook
                .get("token")
                .and_then(Value::as_str)
                .ok_or_else(|| Error::Unexpected("a webhook without a token".into()))?;
            outbox.set_link(NAME, LINK_WEBHOOK, &forum, &format!("{id}/{token}")).await?;
            parse(&format!("{id}/{token}"))
                .ok_or_else(|| Error::Unexpected("a webhook id that is not a number".into()))?
        }
    };
    shared.state().webhooks.insert(channel, hook.clone());
    Ok(hook)
}

/// Where a room's webhook posts go: the channel whose webhook posts them
/// and the query that picks the thread. Support threads live in the forum;
/// a mapped text channel is its own target.
pub(super) fn hook_target(shared: &Shared, room: RoomId, thread: &str) -> (u64, Vec<(&'static str, String)>) {
    match shared.config.channel_of(room) {
        Some(channel) => (channel, Vec::new()),
        None => (shared.config.forum_channel_id, vec![("thread_id", thread.to_owned())]),
    }
}

pub(super) async fn execute_webhook(
    shared: &Shared,
    webhook_id: u64,
    token: &str,
    target: Vec<(&'static str, String)>,
    name: &str,
    content: &str,
) -> Result<String> {
    let body = json!({
        "content": content,
        "username": name,
        "allowed_mentions": { "parse": [] },
    });
    let route = Route::WebhookWithToken { webhook_id: WebhookId::new(webhook_id), token };
    let mut params = vec![("wait", "true".to_owned())];
    params.extend(target);
    let posted = shared.rest.call(LightMethod::Post, route, params, Some(&body)).await?;
    id_of(&posted, "a webhook message")
}

/// A webhook execution carries no nonce, so after a lost answer the only way
/// to know whether it was posted is to look: a recent message of the thread
/// from our webhook with the same name and content.
pub(super) async fn find_webhook_post(
    shared: &Shared,
    thread: &str,
    webhook_id: u64,
    name: &str,
    content: &str,
) -> Result<Option<String>> {
    let channel_id = parse_channel(thread)?;
    let params = vec![("limit", "50".to_owned())];
    let recent = shared.rest.call(LightMethod::Get, Route::ChannelMessages { channel_id }, params, None).await?;
    let hook = webhook_id.to_string();
    Ok(recent.as_array().into_iter().flatten().find_map(|m| {
        let ours = m.get("webhook_id").and_then(Value::as_str) == Some(hook.as_str())
            && m.get("content").and_then(Value::as_str) == Some(content)
            && m.get("author").and_then(|a| a.get("username")).and_then(Value::as_str) == Some(name);
        ours.then(|| m.get("id").and_then(Value::as_str).map(str::to_owned)).flatten()
    }))
}
