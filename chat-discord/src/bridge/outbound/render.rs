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

use crate::bridge::{LINK_MESSAGE, LINK_WEBHOOK, NAME, Shared, buttons, human_size, id_of, parse_channel};
use crate::error::{Error, Result};
use crate::rest::FilePart;

/// Discord's longest message.
const MAX_CONTENT_CHARS: usize = 2000;
/// The most files Discord takes with one message.
const MAX_FILES: usize = 10;

/// A thread's title: the visitor's name and the end of the room id, which
/// is random (its start is a timestamp shared by rooms made together).
pub(super) fn thread_title(visitor: &str, room: RoomId) -> String {
    let id = room.to_string();
    let short = &id[id.len().saturating_sub(8)..];
    let name: String = visitor.chars().take(80).collect();
    format!("{name} · {short}")
}

/// A message as Discord shows it: the body, then a line for each file that
/// is not uploaded with it (`lined`, by id): its name and size, and a link
/// when its URL is absolute (the server knows its public URL). Files
/// uploaded with it show as Discord's own attachments.
pub(super) fn render(message: &chat_core::Message, lined: &[String]) -> String {
    let mut text = message.body.clone();
    if let Some(call) = &message.call {
        // A call's line in the history has no body: say what it was.
        if !text.is_empty() {
            text.push('\n');
        }
        text.push_str(&call_line(call));
    }
    for file in message.attachments.iter().filter(|f| lined.contains(&f.id)) {
        if !text.is_empty() {
            text.push('\n');
        }
        text.push_str(&file_line(file));
    }
    if text.chars().count() > MAX_CONTENT_CHARS {
        text = text.chars().take(MAX_CONTENT_CHARS - 1).collect();
        text.push('…');
    }
    text
}

/// A call's history line as Discord shows it: `📞 Video call, 1:05`,
/// `📞 Missed audio call`, `📞 Video call declined`, `📞 Audio call, busy`.
fn call_line(call: &chat_core::call::CallSummary) -> String {
    use chat_core::call::{CallMedia, CallOutcome};
    let (kind, lower) = match call.media {
        CallMedia::Audio => ("Audio call", "audio call"),
        CallMedia::Video => ("Video call", "video call"),
    };
    match call.outcome {
        CallOutcome::Ended => {
            let s = call.duration_s.unwrap_or(0);
            let length = if s >= 3600 {
                format!("{}:{:02}:{:02}", s / 3600, s / 60 % 60, s % 60)
            } else {
                format!("{}:{:02}", s / 60, s % 60)
            };
            format!("📞 {kind}, {length}")
        }
        CallOutcome::Missed => format!("📞 Missed {lower}"),
        CallOutcome::Rejected => format!("📞 {kind} declined"),
        CallOutcome::Busy => format!("📞 {kind}, busy"),
    }
}

/// A file that is not uploaded, as a line: `📎 name (size)`, and `: <url>`
/// when the URL is absolute (in angle brackets, so that Discord shows no
/// preview of it).
fn file_line(file: &chat_core::Attachment) -> String {
    let mut line = format!("📎 {} ({})", file.name, human_size(file.size));
    if file.url.starts_with("https://") || file.url.starts_with("http://") {
        line.push_str(&format!(": <{}>", file.url));
    }
    line
}

/// Text with the signatures of our links taken out (`?exp=…` up to the
/// link's closing `>`): a link signed again on a retry differs in them only.
fn unsigned(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find("?exp=") {
        out.push_str(&rest[..at]);
        rest = &rest[at..];
        match rest.find('>') {
            Some(end) => rest = &rest[end..],
            None => rest = "",
        }
    }
    out.push_str(rest);
    out
}

/// The files a post uploads, and those that go as lines instead: over
/// Discord's limit (for one file, or with the files before it), past ten,
/// or removed since the message was sent. The files' bytes are opened here
/// and read as they are sent.
pub(super) async fn files_of(shared: &Shared, message: &chat_core::Message) -> Result<(Vec<FilePart>, Vec<String>)> {
    let limit = shared.upload_limit();
    let host = shared.host()?;
    let mut upload = Vec::new();
    let mut lined = Vec::new();
    let mut total = 0u64;
    for file in &message.attachments {
        if upload.len() >= MAX_FILES || total.saturating_add(file.size) > limit {
            lined.push(file.id.clone());
            continue;
        }
        match host.attachment(&file.id).await {
            Ok((record, bytes)) => {
                total = total.saturating_add(record.size);
                upload.push(FilePart {
                    name: file.name.clone(),
                    content_type: record.content_type,
                    size: record.size,
                    bytes,
                });
            }
            Err(err) if err.code() == chat_core::ErrorCode::NotFound => lined.push(file.id.clone()),
            Err(err) => return Err(err.into()),
        }
    }
    Ok((upload, lined))
}

/// The `attachments` of a message's JSON body that name its uploads
/// (`files[n]` by `n`).
fn attachments_json(files: &[FilePart]) -> Value {
    files.iter().enumerate().map(|(n, f)| json!({ "id": n, "filename": f.name })).collect()
}

/// Opens the room's forum post. Its first message carries the Claim and
/// Close buttons, whose custom ids name the room.
pub(super) async fn create_thread(
    shared: &Shared,
    title: &str,
    content: &str,
    room: RoomId,
    files: Vec<FilePart>,
) -> Result<String> {
    let channel_id = ChannelId::new(shared.config.forum_channel_id);
    let mut body = json!({
        "name": title,
        "auto_archive_duration": 10080,
        "message": {
            "content": content,
            "allowed_mentions": { "parse": [] },
            "components": buttons(room),
        },
    });
    let route = Route::ChannelForumPosts { channel_id };
    let thread = if files.is_empty() {
        shared.rest.call(LightMethod::Post, route, Vec::new(), Some(&body)).await?
    } else {
        body["message"]["attachments"] = attachments_json(&files);
        shared.rest.call_with_files(LightMethod::Post, route, Vec::new(), &body, files).await?
    };
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
    files: Vec<FilePart>,
) -> Result<String> {
    let mut body = json!({
        "content": content,
        "username": name,
        "allowed_mentions": { "parse": [] },
    });
    let route = Route::WebhookWithToken { webhook_id: WebhookId::new(webhook_id), token };
    let mut params = vec![("wait", "true".to_owned())];
    params.extend(target);
    let posted = if files.is_empty() {
        shared.rest.call(LightMethod::Post, route, params, Some(&body)).await?
    } else {
        body["attachments"] = attachments_json(&files);
        shared.rest.call_with_files(LightMethod::Post, route, params, &body, files).await?
    };
    id_of(&posted, "a webhook message")
}

/// A webhook execution carries no nonce, so after a lost answer the only way
/// to know whether it was posted is to look: a recent message of the thread
/// from our webhook with the same name, the same content (but for our
/// links' signatures, which a retry may sign anew) and files of the same
/// sizes (Discord may rename files), that no other room message is linked
/// to already (a files-only message looks like the one before it).
pub(super) async fn find_webhook_post(
    shared: &Shared,
    thread: &str,
    webhook_id: u64,
    name: &str,
    content: &str,
    sizes: &[u64],
) -> Result<Option<String>> {
    let channel_id = parse_channel(thread)?;
    let params = vec![("limit", "50".to_owned())];
    let recent = shared.rest.call(LightMethod::Get, Route::ChannelMessages { channel_id }, params, None).await?;
    let hook = webhook_id.to_string();
    let content = unsigned(content);
    let mut sizes = sizes.to_vec();
    sizes.sort_unstable();
    let candidates: Vec<String> = recent
        .as_array()
        .into_iter()
        .flatten()
        .filter(|m| {
            let mut theirs: Vec<u64> = m
                .get("attachments")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(|a| a.get("size").and_then(Value::as_u64))
                .collect();
            theirs.sort_unstable();
            m.get("webhook_id").and_then(Value::as_str) == Some(hook.as_str())
                && m.get("content").and_then(Value::as_str).map(unsigned).as_deref() == Some(content.as_str())
                && m.get("author").and_then(|a| a.get("username")).and_then(Value::as_str) == Some(name)
                && theirs == sizes
        })
        .filter_map(|m| m.get("id").and_then(Value::as_str).map(str::to_owned))
        .collect();
    let outbox = shared.outbox()?;
    for id in candidates {
        if outbox.local_of(NAME, LINK_MESSAGE, &id).await?.is_none() {
            return Ok(Some(id));
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_are_left_out_when_posts_are_compared() {
        let table = [
            ("plain", "plain"),
            (
                "📎 a.png (1.0 KiB): <https://chat.example/v1/attachments/x?exp=1&sig=ab>",
                "📎 a.png (1.0 KiB): <https://chat.example/v1/attachments/x>",
            ),
            ("<u?exp=1&sig=a>\n<v?exp=2&sig=b> end", "<u>\n<v> end"),
            ("cut ?exp=1", "cut "),
        ];
        for (text, want) in table {
            assert_eq!(unsigned(text), want, "{text}");
        }
    }

    #[test]
    fn a_calls_line_says_what_it_was() {
        use chat_core::call::{CallMedia, CallOutcome, CallSummary};
        let line = |media, outcome, duration_s| {
            let call_id = "01900000-0000-7000-8000-000000000000".parse().expect("a call id");
            call_line(&CallSummary { call_id, media, outcome, duration_s })
        };
        assert_eq!(line(CallMedia::Video, CallOutcome::Ended, Some(65)), "📞 Video call, 1:05");
        assert_eq!(line(CallMedia::Audio, CallOutcome::Ended, Some(3725)), "📞 Audio call, 1:02:05");
        assert_eq!(line(CallMedia::Audio, CallOutcome::Missed, None), "📞 Missed audio call");
        assert_eq!(line(CallMedia::Video, CallOutcome::Rejected, None), "📞 Video call declined");
        assert_eq!(line(CallMedia::Audio, CallOutcome::Busy, None), "📞 Audio call, busy");
    }
}
