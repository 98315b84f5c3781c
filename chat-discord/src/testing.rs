//! A stand-in Discord on loopback, for tests (feature `test-support`): the
//! REST routes the bridge uses and a gateway WebSocket speaking HELLO,
//! IDENTIFY, READY, heartbeats and dispatches. Point a bridge at it with
//! [`StandIn::config`]: REST calls go through the proxy setting, and the
//! gateway URL it hands out is its own, so nothing here can reach Discord.
//!
//! ```no_run
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use chat_discord::testing::StandIn;
//! let discord = StandIn::start().await;
//! let bridge = chat_discord::DiscordBridge::new(discord.config())?;
//! // … start an engine with the bridge, then watch `discord.lock()` …
//! # let _ = bridge;
//! # Ok(())
//! # }
//! ```

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::ws::{Message as WsMessage, WebSocket, WebSocketUpgrade};
use axum::extract::{FromRequest, Path, Query, Request, State};
use axum::http::{Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, patch, post};
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::sync::mpsc;

use crate::DiscordConfig;

/// The stand-in's one server.
pub const GUILD: u64 = 1001;
/// Its forum channel.
pub const FORUM: u64 = 1002;
/// Its support role.
pub const SUPPORT_ROLE: u64 = 1003;
/// The bot's user id.
pub const BOT: u64 = 900;

/// What a scripted failure does to the next matching call.
#[derive(Debug, Clone)]
pub enum Fault {
    /// Answer with this status and body without doing anything.
    Reject(u16, Value),
    /// Do the call, then answer 500 as if the answer was lost.
    LoseAnswer,
}

/// What the stand-in holds and saw. Tests read and change it through [`StandIn::lock`].
#[derive(Debug, Default)]
pub struct Discord {
    next_id: u64,
    /// Threads: (id, name, parent).
    pub threads: Vec<(u64, String, u64)>,
    /// Messages of each channel, oldest first.
    pub messages: HashMap<u64, Vec<Value>>,
    /// Webhooks made on channels.
    pub webhooks: Vec<Value>,
    /// Channels archived by `PATCH /channels/{id}`, once per call.
    pub archived: Vec<u64>,
    /// Tokens of the interactions dispatched and not answered yet, by id.
    interactions: HashMap<u64, String>,
    /// The answers to interactions (`POST /interactions/{id}/{token}/callback`), in order.
    pub interaction_answers: Vec<(u64, Value)>,
    /// `METHOD /path` of every call, in order.
    pub calls: Vec<String>,
    faults: VecDeque<(Method, String, Fault)>,
    /// Whether REST answers at all (503 for everything when down).
    pub down: bool,
    gateway: Option<mpsc::UnboundedSender<Value>>,
    seq: u64,
    /// The guild's members and presences as they are now: what the
    /// GUILD_CREATE sent after every READY and REQUEST_GUILD_MEMBERS (op 8)
    /// answer with. Set by [`StandIn::guild_create`] and
    /// [`StandIn::large_guild`], kept current by the member and presence
    /// events the tests dispatch.
    members: Vec<Value>,
    presences: Vec<Value>,
    /// Members per GUILD_MEMBERS_CHUNK (Discord's 1000 when 0).
    chunk_size: usize,
    /// Whether the guild is large: its GUILD_CREATE carries no members.
    large: bool,
    /// Whether the gateway refuses connections (HTTP 503 on the upgrade),
    /// set by [`StandIn::gateway_down`].
    gateway_refused: bool,
    /// The `d` of every REQUEST_GUILD_MEMBERS received, in order.
    pub member_requests: Vec<Value>,
    /// The GUILD_MEMBERS_CHUNK dispatches sent, in order.
    pub chunks_sent: usize,
    /// Every file uploaded with a message (multipart `files[n]`), in order.
    pub uploads: Vec<Uploaded>,
    /// What the CDN serves, by attachment id: (file name, bytes). Files
    /// uploaded to the stand-in and agents' files are served until removed.
    pub cdn: HashMap<u64, (String, Vec<u8>)>,
    /// How many times the CDN served a file.
    pub cdn_hits: usize,
    /// The guild's upload limit in bytes (0: 8 MiB): button presses carry
    /// it, and larger files are refused (413) as Discord refuses them.
    pub attachment_size_limit: u32,
}

impl Discord {
    fn upload_limit(&self) -> u32 {
        if self.attachment_size_limit == 0 { 8 * 1024 * 1024 } else { self.attachment_size_limit }
    }
}

/// Discord's answer to a file above the guild's limit.
fn too_large() -> Response {
    (StatusCode::PAYLOAD_TOO_LARGE, axum::Json(json!({"message": "Request entity too large", "code": 40005})))
        .into_response()
}

/// A file the bridge uploaded with a message.
#[derive(Debug, Clone)]
pub struct Uploaded {
    /// The message it came with.
    pub message: u64,
    /// The channel (thread) of that message.
    pub channel: u64,
    /// Its name, as the multipart part gave it.
    pub filename: String,
    /// Its type, as the multipart part gave it.
    pub content_type: Option<String>,
    /// Its bytes.
    pub bytes: Vec<u8>,
}

impl Discord {
    fn id(&mut self) -> u64 {
        // Snowflakes, as Discord makes them: milliseconds since 2015 in the
        // top bits, so that an id made later is larger and ids compare with
        // the bridge's time-based cursors; unique and growing within a millisecond.
        let ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        let now = ms.saturating_sub(1_420_070_400_000) << 22;
        self.next_id = (self.next_id + 1).max(now);
        self.next_id
    }
}

/// A running stand-in Discord. Cheap to clone; clones share the state.
#[derive(Debug, Clone)]
pub struct StandIn {
    /// Where it listens (127.0.0.1).
    pub addr: SocketAddr,
    /// What it holds.
    pub state: Arc<Mutex<Discord>>,
    /// Tells every open gateway connection to drop.
    drop_shards: tokio::sync::broadcast::Sender<()>,
}

/// A message as Discord's API shows it.
pub fn message_json(id: u64, channel: u64, author: Value, content: &str, webhook: Option<u64>) -> Value {
    json!({
        "id": id.to_string(), "channel_id": channel.to_string(), "guild_id": GUILD.to_string(),
        "author": author, "content": content, "timestamp": "2026-01-02T03:04:05.000000+00:00",
        "edited_timestamp": null, "tts": false, "mention_everyone": false, "mentions": [],
        "mention_roles": [], "attachments": [], "embeds": [], "pinned": false, "type": 0,
        "webhook_id": webhook.map(|w| w.to_string()),
    })
}

impl StandIn {
    /// Starts serving on an ephemeral port of 127.0.0.1.
    pub async fn start() -> StandIn {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind the stand-in");
        let addr = listener.local_addr().expect("address");
        let state = Arc::new(Mutex::new(Discord::default()));
        let (drop_shards, _) = tokio::sync::broadcast::channel(4);
        let stand_in = StandIn { addr, state, drop_shards };
        let api = Router::new()
            .route(
                "/users/@me",
                get(|| async { axum::Json(json!({"id": BOT.to_string(), "username": "bridge", "bot": true})) }),
            )
            .route("/gateway", get(gateway_url))
            .route("/channels/{id}/threads", post(create_thread))
            .route("/guilds/{id}/threads/active", get(active_threads))
            .route("/channels/{id}/webhooks", get(list_webhooks).post(create_webhook))
            .route("/webhooks/{id}/{token}", post(execute_webhook))
            .route(
                "/webhooks/{id}/{token}/messages/{message}",
                patch(edit_webhook_message).delete(delete_webhook_message),
            )
            .route("/channels/{id}", patch(patch_channel))
            .route("/interactions/{id}/{token}/callback", post(answer_interaction))
            .route("/channels/{id}/messages", get(list_messages))
            .route(
                "/channels/{id}/messages/{message}",
                get(get_message).patch(edit_bot_message).delete(delete_channel_message),
            );
        let app = Router::new()
            .nest("/api/v10", api)
            .route("/gateway", get(gateway_socket))
            .route("/attachments/{channel}/{id}/{name}", get(cdn_file))
            .layer(middleware::from_fn_with_state(stand_in.clone(), faults))
            .with_state(stand_in.clone());
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        stand_in
    }

    /// Its base URL, for the proxy setting.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Its state, locked.
    pub fn lock(&self) -> std::sync::MutexGuard<'_, Discord> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The next call of `method` to a path starting with `path` meets `fault`.
    pub fn fault(&self, method: Method, path: &str, fault: Fault) {
        self.lock().faults.push_back((method, path.to_owned(), fault));
    }

    /// Sends a gateway dispatch to the connected shard.
    pub fn dispatch(&self, event: &str, data: Value) {
        let mut d = self.lock();
        d.seq += 1;
        let frame = json!({"op": 0, "t": event, "s": d.seq, "d": data});
        if let Some(tx) = &d.gateway {
            let _ = tx.send(frame);
        }
    }

    /// Whether a shard is connected and identified.
    pub fn gateway_connected(&self) -> bool {
        self.lock().gateway.as_ref().is_some_and(|tx| !tx.is_closed())
    }

    /// Takes the gateway down (`true`): open connections drop without a
    /// close frame, as on a lost network, and new ones are refused (HTTP 503
    /// on the upgrade), so resumes and restarts fail; REST goes on. `false`
    /// lets shards connect again.
    pub fn gateway_down(&self, down: bool) {
        self.lock().gateway_refused = down;
        if down {
            let _ = self.drop_shards.send(());
        }
    }

    /// A person writing in a channel, as Discord would store and dispatch it.
    pub fn human_writes(&self, channel: u64, user: u64, name: &str, content: &str, live: bool) -> u64 {
        let message = {
            let mut d = self.lock();
            let id = d.id();
            let author = json!({"id": user.to_string(), "username": name.to_lowercase(), "global_name": name});
            let message = message_json(id, channel, author, content, None);
            d.messages.entry(channel).or_default().push(message.clone());
            message
        };
        if live {
            self.dispatch("MESSAGE_CREATE", message.clone());
        }
        message["id"].as_str().and_then(|s| s.parse().ok()).expect("an id")
    }

    /// A member of [`GUILD`] holding `roles` writing in a channel, seen live:
    /// the MESSAGE_CREATE carries their member object, as Discord's does for
    /// guild messages (messages fetched later carry none).
    pub fn member_writes(&self, channel: u64, user: u64, name: &str, roles: &[u64], content: &str) -> u64 {
        let message = {
            let mut d = self.lock();
            let id = d.id();
            let author = json!({"id": user.to_string(), "username": name.to_lowercase(), "global_name": name});
            let message = message_json(id, channel, author, content, None);
            d.messages.entry(channel).or_default().push(message.clone());
            message
        };
        let mut live = message.clone();
        live["member"] = json!({
            "roles": roles.iter().map(u64::to_string).collect::<Vec<_>>(),
            "joined_at": "2026-01-01T00:00:00.000000+00:00", "deaf": false, "mute": false, "flags": 0,
        });
        self.dispatch("MESSAGE_CREATE", live);
        message["id"].as_str().and_then(|s| s.parse().ok()).expect("an id")
    }

    /// A member of [`GUILD`] holding `roles` writing in a channel with files
    /// (name, bytes), seen live: the MESSAGE_CREATE carries the files as
    /// Discord's attachments, with URLs on this stand-in's CDN, which serves
    /// them until [`StandIn::cdn_forgets`]. Returns the message id and the
    /// attachment ids.
    pub fn member_writes_files(
        &self,
        channel: u64,
        user: u64,
        name: &str,
        roles: &[u64],
        content: &str,
        files: &[(&str, &[u8])],
    ) -> (u64, Vec<u64>) {
        let (message, ids) = {
            let mut d = self.lock();
            let id = d.id();
            let author = json!({"id": user.to_string(), "username": name.to_lowercase(), "global_name": name});
            let mut message = message_json(id, channel, author, content, None);
            let mut ids = Vec::new();
            let mut attachments = Vec::new();
            for (filename, bytes) in files {
                let file = d.id();
                ids.push(file);
                attachments.push(attachment_json(self.addr, channel, file, filename, bytes.len(), None));
                d.cdn.insert(file, ((*filename).to_owned(), bytes.to_vec()));
            }
            message["attachments"] = json!(attachments);
            d.messages.entry(channel).or_default().push(message.clone());
            (message, ids)
        };
        let mut live = message.clone();
        live["member"] = json!({
            "roles": roles.iter().map(u64::to_string).collect::<Vec<_>>(),
            "joined_at": "2026-01-01T00:00:00.000000+00:00", "deaf": false, "mute": false, "flags": 0,
        });
        self.dispatch("MESSAGE_CREATE", live);
        (message["id"].as_str().and_then(|s| s.parse().ok()).expect("an id"), ids)
    }

    /// The CDN stops serving a file (404), as Discord's links expire.
    pub fn cdn_forgets(&self, attachment: u64) {
        self.lock().cdn.remove(&attachment);
    }

    /// A person editing their message, as Discord would store and dispatch it.
    pub fn human_edits(&self, channel: u64, message: u64, content: &str) {
        let edited = {
            let mut d = self.lock();
            let Some(found) = find_message(&mut d, channel, message) else { return };
            found["content"] = json!(content);
            found["edited_timestamp"] = json!("2026-01-02T03:05:00.000000+00:00");
            found.clone()
        };
        self.dispatch("MESSAGE_UPDATE", edited);
    }

    /// A person deleting a message, as Discord would remove and dispatch it.
    pub fn human_deletes(&self, channel: u64, message: u64) {
        remove_message(self, channel, message);
    }

    /// Dispatches GUILD_CREATE for [`GUILD`] with these members (id, name,
    /// roles) and presences (id, `online`/`idle`/`dnd`/`offline`), as
    /// Discord does after READY with the members and presences intents.
    /// The guild keeps these members and presences: the GUILD_CREATE
    /// after the next READY and member requests answer with them.
    pub fn guild_create(&self, members: &[(u64, &str, &[u64])], presences: &[(u64, &str)]) {
        let members = members_json(members);
        let presences = presences_json(presences);
        let count = members.len();
        {
            let mut d = self.lock();
            d.members = members.clone();
            d.presences = presences.clone();
            d.large = false;
        }
        self.dispatch("GUILD_CREATE", guild_json(members, presences, false, count));
    }

    /// Dispatches GUILD_CREATE for a large [`GUILD`] of `member_count`
    /// members, as Discord does past the large threshold: marked `large`,
    /// without members or presences. The members come from
    /// REQUEST_GUILD_MEMBERS, answered from [`StandIn::large_guild`].
    pub fn large_guild_create(&self, member_count: usize) {
        self.dispatch("GUILD_CREATE", guild_json(Vec::new(), Vec::new(), true, member_count));
    }

    /// Sets the guild's members (id, name, roles) and presences without
    /// dispatching anything: the GUILD_CREATE after each READY carries them,
    /// as Discord's does, and member requests answer with them.
    pub fn guild(&self, members: &[(u64, &str, &[u64])], presences: &[(u64, &str)]) {
        let mut d = self.lock();
        d.members = members_json(members);
        d.presences = presences_json(presences);
        d.large = false;
    }

    /// Makes the guild large: the GUILD_CREATE after each READY carries no
    /// members, and REQUEST_GUILD_MEMBERS answers with these members (id,
    /// name, roles) and presences, `chunk_size` members per
    /// GUILD_MEMBERS_CHUNK (Discord sends up to 1000).
    pub fn large_guild(&self, members: &[(u64, &str, &[u64])], presences: &[(u64, &str)], chunk_size: usize) {
        let mut d = self.lock();
        d.members = members_json(members);
        d.presences = presences_json(presences);
        d.chunk_size = chunk_size.max(1);
        d.large = true;
    }

    /// Dispatches GUILD_MEMBER_ADD: someone joined [`GUILD`] with `roles`.
    pub fn member_joins(&self, user: u64, name: &str, roles: &[u64]) {
        let mut member = members_json(&[(user, name, roles)]).remove(0);
        keep_member(&mut self.lock(), user, Some(member.clone()));
        member["guild_id"] = json!(GUILD.to_string());
        self.dispatch("GUILD_MEMBER_ADD", member);
    }

    /// Dispatches GUILD_MEMBER_REMOVE: someone left [`GUILD`].
    pub fn member_leaves(&self, user_id: u64, name: &str) {
        keep_member(&mut self.lock(), user_id, None);
        let user = json!({"id": user_id.to_string(), "username": name.to_lowercase(), "global_name": name});
        self.dispatch("GUILD_MEMBER_REMOVE", json!({"guild_id": GUILD.to_string(), "user": user}));
    }
}

/// An attachment as Discord's API shows it, served by the stand-in's CDN.
fn attachment_json(
    addr: SocketAddr,
    channel: u64,
    id: u64,
    filename: &str,
    size: usize,
    content_type: Option<&str>,
) -> Value {
    let url = format!("http://{addr}/attachments/{channel}/{id}/{filename}?ex=1&is=1&hm=stand-in");
    json!({"id": id.to_string(), "filename": filename, "size": size, "url": url, "proxy_url": url,
        "content_type": content_type})
}

/// The stand-in's CDN: a file by its attachment id, while it serves it.
async fn cdn_file(State(s): State<StandIn>, Path((_channel, id, _name)): Path<(u64, u64, String)>) -> Response {
    let mut d = s.lock();
    let Some((_, bytes)) = d.cdn.get(&id).cloned() else {
        return (StatusCode::NOT_FOUND, "expired").into_response();
    };
    d.cdn_hits += 1;
    bytes.into_response()
}

/// A call's body: JSON, or multipart (Discord's way with files:
/// `payload_json` and `files[n]`).
struct Posted {
    body: Value,
    files: Vec<(String, Option<String>, Vec<u8>)>,
}

async fn read_posted(request: Request) -> Result<Posted, Response> {
    let bad = |what: String| (StatusCode::BAD_REQUEST, axum::Json(json!({"message": what, "code": 50035})));
    let multipart = request
        .headers()
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("multipart/form-data"));
    if !multipart {
        let axum::Json(body) =
            axum::Json::<Value>::from_request(request, &()).await.map_err(|e| bad(e.body_text()).into_response())?;
        return Ok(Posted { body, files: Vec::new() });
    }
    let mut form =
        axum::extract::Multipart::from_request(request, &()).await.map_err(|e| bad(e.body_text()).into_response())?;
    let mut posted = Posted { body: Value::Null, files: Vec::new() };
    let mut named = Vec::new();
    while let Some(field) = form.next_field().await.map_err(|e| bad(e.body_text()).into_response())? {
        let name = field.name().unwrap_or_default().to_owned();
        if name == "payload_json" {
            let text = field.text().await.map_err(|e| bad(e.body_text()).into_response())?;
            posted.body = serde_json::from_str(&text).map_err(|e| bad(e.to_string()).into_response())?;
        } else if let Some(n) = name.strip_prefix("files[").and_then(|n| n.strip_suffix(']')) {
            let filename = field.file_name().unwrap_or_default().to_owned();
            let content_type = field.content_type().map(str::to_owned);
            let bytes = field.bytes().await.map_err(|e| bad(e.body_text()).into_response())?;
            named.push(n.to_owned());
            posted.files.push((filename, content_type, bytes.to_vec()));
        } else {
            return Err(bad(format!("unexpected field {name:?}")).into_response());
        }
    }
    // Discord's rule: `attachments` in the JSON name the files by `n`.
    let listed: Vec<String> = posted
        .body
        .get("attachments")
        .or_else(|| posted.body.get("message").and_then(|m| m.get("attachments")))
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|a| a.get("id").map(|id| id.to_string().trim_matches('"').to_owned()))
        .collect();
    if listed != named {
        return Err(bad(format!("attachments {listed:?} do not name the files {named:?}")).into_response());
    }
    Ok(posted)
}

/// Keeps a message's uploaded files, gives them to its JSON as Discord's
/// attachments, and serves them from the CDN.
fn keep_files(d: &mut Discord, addr: SocketAddr, message: &mut Value, files: Vec<(String, Option<String>, Vec<u8>)>) {
    let channel = message["channel_id"].as_str().and_then(|c| c.parse().ok()).unwrap_or(0);
    let id = message["id"].as_str().and_then(|c| c.parse().ok()).unwrap_or(0);
    let mut attachments = Vec::new();
    for (filename, content_type, bytes) in files {
        let file = d.id();
        attachments.push(attachment_json(addr, channel, file, &filename, bytes.len(), content_type.as_deref()));
        d.cdn.insert(file, (filename.clone(), bytes.clone()));
        d.uploads.push(Uploaded { message: id, channel, filename, content_type, bytes });
    }
    message["attachments"] = json!(attachments);
}

/// Records that a member is now `member` (`None`: left the guild).
fn keep_member(d: &mut Discord, user: u64, member: Option<Value>) {
    let id = user.to_string();
    d.members.retain(|m| m["user"]["id"].as_str() != Some(id.as_str()));
    d.members.extend(member);
}

/// Member objects as Discord sends them in a guild.
fn members_json(members: &[(u64, &str, &[u64])]) -> Vec<Value> {
    members
        .iter()
        .map(|(id, name, roles)| {
            json!({
                "user": {"id": id.to_string(), "username": name.to_lowercase(), "global_name": name},
                "roles": roles.iter().map(u64::to_string).collect::<Vec<_>>(),
                "joined_at": "2026-01-01T00:00:00.000000+00:00",
                "deaf": false, "mute": false, "flags": 0,
            })
        })
        .collect()
}

fn presences_json(presences: &[(u64, &str)]) -> Vec<Value> {
    presences.iter().map(|(id, status)| json!({"user": {"id": id.to_string()}, "status": status})).collect()
}

fn guild_json(members: Vec<Value>, presences: Vec<Value>, large: bool, member_count: usize) -> Value {
    json!({
            "id": GUILD.to_string(), "name": "Support", "owner_id": "1", "icon": null, "splash": null,
            "discovery_splash": null, "verification_level": 0, "default_message_notifications": 0,
            "explicit_content_filter": 0, "roles": [], "emojis": [], "features": [], "mfa_level": 0,
            "system_channel_flags": 0, "premium_tier": 0, "preferred_locale": "en-US", "nsfw_level": 0,
            "stickers": [], "premium_progress_bar_enabled": false, "joined_at": "2026-01-01T00:00:00.000000+00:00",
            "large": large, "member_count": member_count, "voice_states": [], "members": members,
            "channels": [], "threads": [], "presences": presences, "stage_instances": [],
            "guild_scheduled_events": [],
    })
}

impl StandIn {
    /// Dispatches PRESENCE_UPDATE for a member of [`GUILD`].
    pub fn presence(&self, user: u64, status: &str) {
        {
            let mut d = self.lock();
            let id = user.to_string();
            d.presences.retain(|p| p["user"]["id"].as_str() != Some(id.as_str()));
            d.presences.extend(presences_json(&[(user, status)]));
        }
        let presence = json!({"user": {"id": user.to_string()}, "guild_id": GUILD.to_string(), "status": status,
            "activities": [], "client_status": {}});
        self.dispatch("PRESENCE_UPDATE", presence);
    }

    /// Dispatches GUILD_MEMBER_UPDATE: the member's roles are now `roles`.
    pub fn member_roles(&self, user: u64, name: &str, roles: &[u64]) {
        keep_member(&mut self.lock(), user, members_json(&[(user, name, roles)]).pop());
        let member = json!({
            "guild_id": GUILD.to_string(),
            "user": {"id": user.to_string(), "username": name.to_lowercase(), "global_name": name},
            "roles": roles.iter().map(u64::to_string).collect::<Vec<_>>(),
            "joined_at": "2026-01-01T00:00:00.000000+00:00", "deaf": false, "mute": false, "flags": 0,
        });
        self.dispatch("GUILD_MEMBER_UPDATE", member);
    }

    /// A member of [`GUILD`] with these roles presses a button (by its
    /// custom id) on the first post of a thread: dispatches INTERACTION_CREATE
    /// as Discord does. Returns the interaction's id.
    pub fn press_button(&self, thread: u64, user: u64, name: &str, roles: &[u64], custom_id: &str) -> u64 {
        let interaction = {
            let mut d = self.lock();
            let id = d.id();
            let token = format!("interaction-token-{id}");
            d.interactions.insert(id, token.clone());
            let message = d.messages.get(&thread).and_then(|m| m.first().cloned()).unwrap_or(Value::Null);
            json!({
                "id": id.to_string(), "application_id": BOT.to_string(), "type": 3, "token": token,
                "version": 1, "guild_id": GUILD.to_string(), "channel_id": thread.to_string(),
                "locale": "en-US", "guild_locale": "en-US", "entitlements": [],
                "attachment_size_limit": d.upload_limit(), "app_permissions": "0",
                "data": {"custom_id": custom_id, "component_type": 2},
                "member": {
                    "user": {"id": user.to_string(), "username": name.to_lowercase(), "global_name": name},
                    "roles": roles.iter().map(u64::to_string).collect::<Vec<_>>(),
                    "joined_at": "2026-01-01T00:00:00.000000+00:00", "deaf": false, "mute": false,
                    "flags": 0, "permissions": "0",
                },
                "message": message,
            })
        };
        self.dispatch("INTERACTION_CREATE", interaction.clone());
        interaction["id"].as_str().and_then(|s| s.parse().ok()).expect("an id")
    }

    /// The answer given to an interaction, if any.
    pub fn interaction_answer(&self, interaction: u64) -> Option<Value> {
        self.lock().interaction_answers.iter().find(|(id, _)| *id == interaction).map(|(_, a)| a.clone())
    }

    /// The messages of a thread (or any channel), oldest first.
    pub fn thread_messages(&self, thread: u64) -> Vec<Value> {
        self.lock().messages.get(&thread).cloned().unwrap_or_default()
    }

    /// How many calls so far start with `what` (`"POST /webhooks/"`).
    pub fn calls_matching(&self, what: &str) -> usize {
        self.lock().calls.iter().filter(|c| c.starts_with(what)).count()
    }
}

async fn faults(State(s): State<StandIn>, request: Request, next: Next) -> Response {
    let method = request.method().clone();
    let path = request.uri().path().trim_start_matches("/api/v10").to_owned();
    let fault = {
        let mut d = s.lock();
        d.calls.push(format!("{method} {path}"));
        if d.down && path != "/gateway" {
            return (StatusCode::SERVICE_UNAVAILABLE, "down").into_response();
        }
        let at = d.faults.iter().position(|(m, p, _)| *m == method && path.starts_with(p.as_str()));
        at.and_then(|i| d.faults.remove(i)).map(|(_, _, f)| f)
    };
    match fault {
        None => next.run(request).await,
        Some(Fault::Reject(status, body)) => {
            let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            (status, axum::Json(body)).into_response()
        }
        Some(Fault::LoseAnswer) => {
            let _ = next.run(request).await;
            (StatusCode::INTERNAL_SERVER_ERROR, "lost").into_response()
        }
    }
}

async fn gateway_url(State(s): State<StandIn>) -> axum::Json<Value> {
    axum::Json(json!({"url": format!("ws://{}/gateway", s.addr)}))
}

async fn create_thread(State(s): State<StandIn>, Path(forum): Path<u64>, request: Request) -> Response {
    let Posted { body, files } = match read_posted(request).await {
        Ok(posted) => posted,
        Err(refused) => return refused,
    };
    let mut d = s.lock();
    if files.iter().any(|f| f.2.len() > d.upload_limit() as usize) {
        return too_large();
    }
    let id = d.id();
    let name = body["name"].as_str().unwrap_or_default().to_owned();
    d.threads.push((id, name.clone(), forum));
    let author = json!({"id": BOT.to_string(), "username": "bridge", "bot": true});
    let content = body["message"]["content"].as_str().unwrap_or_default();
    let mut starter = message_json(id, id, author, content, None);
    starter["components"] = body["message"].get("components").cloned().unwrap_or_else(|| json!([]));
    keep_files(&mut d, s.addr, &mut starter, files);
    d.messages.entry(id).or_default().push(starter.clone());
    let thread =
        json!({"id": id.to_string(), "name": name, "parent_id": forum.to_string(), "type": 11, "message": starter});
    (StatusCode::CREATED, axum::Json(thread)).into_response()
}

/// Changes a channel; only archiving is modelled.
async fn patch_channel(
    State(s): State<StandIn>,
    Path(channel): Path<u64>,
    axum::Json(body): axum::Json<Value>,
) -> Response {
    let mut d = s.lock();
    let Some((id, name, parent)) = d.threads.iter().find(|t| t.0 == channel).cloned() else {
        return (StatusCode::NOT_FOUND, axum::Json(json!({"message": "Unknown Channel", "code": 10003})))
            .into_response();
    };
    if body["archived"] == json!(true) {
        d.archived.push(id);
    }
    let archived = d.archived.contains(&id);
    let thread = json!({"id": id.to_string(), "name": name, "parent_id": parent.to_string(), "type": 11,
        "thread_metadata": {"archived": archived}});
    axum::Json(thread).into_response()
}

/// Answers an interaction: once, with the token it was dispatched with.
async fn answer_interaction(
    State(s): State<StandIn>,
    Path((id, token)): Path<(u64, String)>,
    axum::Json(body): axum::Json<Value>,
) -> Response {
    let mut d = s.lock();
    if d.interactions.get(&id) != Some(&token) {
        return (StatusCode::NOT_FOUND, axum::Json(json!({"message": "Unknown interaction", "code": 10062})))
            .into_response();
    }
    d.interactions.remove(&id);
    d.interaction_answers.push((id, body));
    StatusCode::NO_CONTENT.into_response()
}

async fn active_threads(State(s): State<StandIn>) -> axum::Json<Value> {
    let d = s.lock();
    let threads: Vec<Value> = d
        .threads
        .iter()
        .map(|(id, name, parent)| json!({"id": id.to_string(), "name": name, "parent_id": parent.to_string()}))
        .collect();
    axum::Json(json!({"threads": threads, "members": []}))
}

async fn list_webhooks(State(s): State<StandIn>, Path(channel): Path<u64>) -> axum::Json<Value> {
    let channel = channel.to_string();
    let d = s.lock();
    let hooks = d.webhooks.iter().filter(|w| w["channel_id"].as_str() == Some(channel.as_str())).cloned();
    axum::Json(Value::Array(hooks.collect()))
}

/// Where a webhook call posts: the thread named by `thread_id`, else the
/// webhook's own channel.
fn webhook_target(d: &Discord, hook: u64, query: &HashMap<String, String>) -> Option<u64> {
    match query.get("thread_id") {
        Some(thread) => thread.parse().ok(),
        None => {
            let hook = hook.to_string();
            let found = d.webhooks.iter().find(|w| w["id"].as_str() == Some(hook.as_str()))?;
            found["channel_id"].as_str()?.parse().ok()
        }
    }
}

async fn create_webhook(State(s): State<StandIn>, Path(channel): Path<u64>) -> axum::Json<Value> {
    let mut d = s.lock();
    let id = d.id();
    let hook = json!({"id": id.to_string(), "token": format!("token-{id}"), "channel_id": channel.to_string(),
        "user": {"id": BOT.to_string(), "username": "bridge"}});
    d.webhooks.push(hook.clone());
    axum::Json(hook)
}

async fn execute_webhook(
    State(s): State<StandIn>,
    Path((hook, token)): Path<(u64, String)>,
    Query(query): Query<HashMap<String, String>>,
    request: Request,
) -> Response {
    let Posted { body, files } = match read_posted(request).await {
        Ok(posted) => posted,
        Err(refused) => return refused,
    };
    let mut d = s.lock();
    let hook_id = hook.to_string();
    let known = d.webhooks.iter().any(|w| w["id"].as_str() == Some(hook_id.as_str()) && w["token"] == token);
    let thread = webhook_target(&d, hook, &query);
    let (true, Some(thread), Some("true")) = (known, thread, query.get("wait").map(String::as_str)) else {
        return (StatusCode::BAD_REQUEST, axum::Json(json!({"message": "bad webhook call", "code": 0})))
            .into_response();
    };
    if files.iter().any(|f| f.2.len() > d.upload_limit() as usize) {
        return too_large();
    }
    let id = d.id();
    let author = json!({"id": hook.to_string(), "username": body["username"], "bot": true});
    let mut message = message_json(id, thread, author, body["content"].as_str().unwrap_or_default(), Some(hook));
    if message["content"] == json!("") && files.is_empty() {
        return (
            StatusCode::BAD_REQUEST,
            axum::Json(json!({"message": "Cannot send an empty message", "code": 50006})),
        )
            .into_response();
    }
    keep_files(&mut d, s.addr, &mut message, files);
    d.messages.entry(thread).or_default().push(message.clone());
    axum::Json(message).into_response()
}

fn find_message(d: &mut Discord, channel: u64, id: u64) -> Option<&mut Value> {
    let id = id.to_string();
    d.messages.get_mut(&channel)?.iter_mut().find(|m| m["id"].as_str() == Some(id.as_str()))
}

fn unknown_message() -> Response {
    (StatusCode::NOT_FOUND, axum::Json(json!({"message": "Unknown Message", "code": 10008}))).into_response()
}

/// Removes a message and dispatches MESSAGE_DELETE, as Discord does for any
/// deletion (ours included). `false` when there was no such message.
fn remove_message(s: &StandIn, channel: u64, id: u64) -> bool {
    let removed = {
        let mut d = s.lock();
        let key = id.to_string();
        let list = d.messages.entry(channel).or_default();
        let before = list.len();
        list.retain(|m| m["id"].as_str() != Some(key.as_str()));
        before != list.len()
    };
    if removed {
        let event = json!({"id": id.to_string(), "channel_id": channel.to_string(), "guild_id": GUILD.to_string()});
        s.dispatch("MESSAGE_DELETE", event);
    }
    removed
}

/// Changes a message's content and dispatches MESSAGE_UPDATE, as Discord
/// does for any edit (ours included).
fn edit_message(s: &StandIn, channel: u64, id: u64, body: &Value, may: impl Fn(&Value) -> bool) -> Response {
    let edited = {
        let mut d = s.lock();
        let Some(found) = find_message(&mut d, channel, id) else { return unknown_message() };
        if !may(found) {
            let body = json!({"message": "Cannot edit a message authored by another user", "code": 50005});
            return (StatusCode::FORBIDDEN, axum::Json(body)).into_response();
        }
        if let Some(content) = body.get("content") {
            found["content"] = content.clone();
        }
        if let Some(components) = body.get("components") {
            found["components"] = components.clone();
        }
        found["edited_timestamp"] = json!("2026-01-02T03:05:00.000000+00:00");
        found.clone()
    };
    s.dispatch("MESSAGE_UPDATE", edited.clone());
    axum::Json(edited).into_response()
}

fn known_webhook(d: &Discord, hook: u64, token: &str) -> bool {
    let hook = hook.to_string();
    d.webhooks.iter().any(|w| w["id"].as_str() == Some(hook.as_str()) && w["token"] == token)
}

async fn edit_webhook_message(
    State(s): State<StandIn>,
    Path((hook, token, message)): Path<(u64, String, u64)>,
    Query(query): Query<HashMap<String, String>>,
    axum::Json(body): axum::Json<Value>,
) -> Response {
    let (known, thread) = {
        let d = s.lock();
        (known_webhook(&d, hook, &token), webhook_target(&d, hook, &query))
    };
    let (true, Some(thread)) = (known, thread) else {
        return (StatusCode::BAD_REQUEST, axum::Json(json!({"message": "bad webhook call", "code": 0})))
            .into_response();
    };
    let hook = hook.to_string();
    edit_message(&s, thread, message, &body, |m| m["webhook_id"].as_str() == Some(hook.as_str()))
}

async fn delete_webhook_message(
    State(s): State<StandIn>,
    Path((hook, token, message)): Path<(u64, String, u64)>,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    let (known, thread) = {
        let d = s.lock();
        (known_webhook(&d, hook, &token), webhook_target(&d, hook, &query))
    };
    let (true, Some(thread)) = (known, thread) else {
        return (StatusCode::BAD_REQUEST, axum::Json(json!({"message": "bad webhook call", "code": 0})))
            .into_response();
    };
    let hook = hook.to_string();
    let ours = {
        let mut d = s.lock();
        find_message(&mut d, thread, message).map(|m| m["webhook_id"].as_str() == Some(hook.as_str()))
    };
    match ours {
        None => unknown_message(),
        Some(false) => (StatusCode::FORBIDDEN, axum::Json(json!({"message": "Unknown Webhook message", "code": 0})))
            .into_response(),
        Some(true) => {
            remove_message(&s, thread, message);
            StatusCode::NO_CONTENT.into_response()
        }
    }
}

/// One message, with its components (none unless it was posted or edited with some).
async fn get_message(State(s): State<StandIn>, Path((channel, message)): Path<(u64, u64)>) -> Response {
    let mut d = s.lock();
    let Some(found) = find_message(&mut d, channel, message) else { return unknown_message() };
    let mut found = found.clone();
    if found.get("components").is_none() {
        found["components"] = json!([]);
    }
    axum::Json(found).into_response()
}

/// The bot edits only its own messages.
async fn edit_bot_message(
    State(s): State<StandIn>,
    Path((channel, message)): Path<(u64, u64)>,
    axum::Json(body): axum::Json<Value>,
) -> Response {
    let bot = BOT.to_string();
    edit_message(&s, channel, message, &body, |m| m["author"]["id"].as_str() == Some(bot.as_str()))
}

/// The bot deletes any message (it has Manage Messages here).
async fn delete_channel_message(State(s): State<StandIn>, Path((channel, message)): Path<(u64, u64)>) -> Response {
    if remove_message(&s, channel, message) { StatusCode::NO_CONTENT.into_response() } else { unknown_message() }
}

async fn list_messages(
    State(s): State<StandIn>,
    Path(channel): Path<u64>,
    Query(query): Query<HashMap<String, String>>,
) -> axum::Json<Value> {
    let d = s.lock();
    let after: u64 = query.get("after").and_then(|a| a.parse().ok()).unwrap_or(0);
    let limit: usize = query.get("limit").and_then(|l| l.parse().ok()).unwrap_or(50);
    let all = d.messages.get(&channel).cloned().unwrap_or_default();
    let mut picked: Vec<Value> = if query.contains_key("after") {
        let newer: Vec<Value> =
            all.into_iter().filter(|m| m["id"].as_str().and_then(|i| i.parse::<u64>().ok()) > Some(after)).collect();
        newer.into_iter().take(limit).collect()
    } else {
        let skip = all.len().saturating_sub(limit);
        all.into_iter().skip(skip).collect()
    };
    // Discord lists newest first.
    picked.reverse();
    axum::Json(Value::Array(picked))
}

async fn gateway_socket(State(s): State<StandIn>, ws: WebSocketUpgrade) -> Response {
    if s.lock().gateway_refused {
        return (StatusCode::SERVICE_UNAVAILABLE, "the gateway is down").into_response();
    }
    ws.on_upgrade(move |socket| shard(s, socket))
}

/// One shard connection: HELLO, then READY and the guild's GUILD_CREATE
/// after IDENTIFY (or an invalid session after RESUME), heartbeat ACKs, and
/// whatever the test dispatches. It drops when the gateway goes down.
async fn shard(s: StandIn, socket: WebSocket) {
    let mut dropped = s.drop_shards.subscribe();
    if s.lock().gateway_refused {
        return;
    }
    let (mut sink, mut stream) = socket.split();
    let (tx, mut rx) = mpsc::unbounded_channel::<Value>();
    let hello = json!({"op": 10, "d": {"heartbeat_interval": 41_250}});
    if sink.send(WsMessage::Text(hello.to_string().into())).await.is_err() {
        return;
    }
    loop {
        tokio::select! {
            frame = stream.next() => {
                let Some(Ok(WsMessage::Text(text))) = frame else { break };
                let Ok(payload) = serde_json::from_str::<Value>(&text) else { continue };
                let replies = match payload["op"].as_u64() {
                    Some(1) => vec![json!({"op": 11})],
                    Some(8) => member_chunks(&s, &payload["d"]),
                    Some(2) => {
                        let mut d = s.lock();
                        d.gateway = Some(tx.clone());
                        ready_and_guild(&mut d, s.addr)
                    }
                    // No resumable sessions here: invalid session, not resumable.
                    Some(6) => vec![json!({"op": 9, "d": false})],
                    _ => Vec::new(),
                };
                for reply in replies {
                    if sink.send(WsMessage::Text(reply.to_string().into())).await.is_err() {
                        return;
                    }
                }
            }
            Some(frame) = rx.recv() => {
                if sink.send(WsMessage::Text(frame.to_string().into())).await.is_err() {
                    break;
                }
            }
            // Dropped as a lost network drops it: no close frame.
            _ = dropped.recv() => return,
        }
    }
}

/// READY, then the guild's GUILD_CREATE, as Discord sends them after an
/// IDENTIFY (with the guild members and presences intents).
fn ready_and_guild(d: &mut Discord, addr: SocketAddr) -> Vec<Value> {
    d.seq += 1;
    let ready = json!({"op": 0, "t": "READY", "s": d.seq, "d": {
        "v": 10, "user": {"id": BOT.to_string(), "username": "bridge", "bot": true},
        "guilds": [{"id": GUILD.to_string(), "unavailable": true}],
        "session_id": format!("session-{}", d.seq), "resume_gateway_url": format!("ws://{addr}/gateway"),
        "application": {"id": BOT.to_string(), "flags": 0},
    }});
    let guild = if d.large {
        guild_json(Vec::new(), Vec::new(), true, d.members.len())
    } else {
        guild_json(d.members.clone(), d.presences.clone(), false, d.members.len())
    };
    d.seq += 1;
    vec![ready, json!({"op": 0, "t": "GUILD_CREATE", "s": d.seq, "d": guild})]
}

/// Answers REQUEST_GUILD_MEMBERS for [`GUILD`] (everyone: an empty query,
/// no limit) with GUILD_MEMBERS_CHUNK dispatches, with presences if asked.
fn member_chunks(s: &StandIn, request: &Value) -> Vec<Value> {
    let mut d = s.lock();
    d.member_requests.push(request.clone());
    if request["guild_id"].as_str() != Some(GUILD.to_string().as_str()) {
        return Vec::new();
    }
    let with_presences = request["presences"] == json!(true);
    let size = if d.chunk_size == 0 { 1000 } else { d.chunk_size };
    let members = d.members.clone();
    let count = members.len().div_ceil(size).max(1);
    let mut frames = Vec::new();
    for index in 0..count {
        let part: Vec<Value> = members.iter().skip(index * size).take(size).cloned().collect();
        let ids: Vec<&Value> = part.iter().map(|m| &m["user"]["id"]).collect();
        let mut chunk = json!({"guild_id": GUILD.to_string(), "members": part, "chunk_index": index,
            "chunk_count": count, "nonce": request["nonce"]});
        if with_presences {
            let presences: Vec<Value> =
                d.presences.iter().filter(|p| ids.contains(&&p["user"]["id"])).cloned().collect();
            chunk["presences"] = json!(presences);
        }
        d.seq += 1;
        frames.push(json!({"op": 0, "t": "GUILD_MEMBERS_CHUNK", "s": d.seq, "d": chunk}));
    }
    d.chunks_sent += frames.len();
    frames
}

impl StandIn {
    /// Bridge settings for this stand-in: its URL as the proxy, its ids, and
    /// short backoffs so that retries happen within a test.
    pub fn config(&self) -> DiscordConfig {
        let mut config = DiscordConfig::new("stand-in-token", GUILD, FORUM, SUPPORT_ROLE);
        config.proxy_url = Some(self.url());
        config.min_backoff = Duration::from_millis(50);
        config.max_backoff = Duration::from_millis(400);
        config.http_timeout = Duration::from_secs(5);
        // Its CDN is itself.
        config.cdn_origins = vec![self.url()];
        config.download_timeout = Duration::from_secs(5);
        config
    }
}
