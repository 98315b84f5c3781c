//! The gateway: serenity's shard, the handler of its events, and the
//! watcher.
//!
//! [`gateway`] keeps the shard running, checking the bot user and the
//! gateway URL through the proxy before each start; the [`Handler`] turns
//! the guild's events into work for the inbound task, puts the roster's
//! collector on the shard at each GUILD_CREATE, and answers button presses
//! itself (Discord takes the answer only within three seconds);
//! [`watch_gateway`] reads the shard runner's stage, since serenity tells
//! handlers nothing when a resume or a restart fails.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chat_core::{RoomId, User};
use serde_json::{Value, json};
use serenity::all::{
    ChannelId, ChunkGuildFilter, ClientBuilder, ComponentInteraction, ConnectionStage, Context, EventHandler,
    GatewayIntents, Guild, GuildId, GuildMemberUpdateEvent, GuildMembersChunkEvent, Interaction, InteractionId, Member,
    Message, MessageId as DiscordMessageId, MessageUpdateEvent, PremiumTier, Ready, ResumedEvent, RoleId,
    TypingStartEvent, User as DiscordUser,
};
use serenity::http::{LightMethod, Route};
use tokio::sync::mpsc;

use super::roster::{NONCE_PREFIX, roster_collector};
use super::{Inbound, chat_roles};
use crate::bridge::lease::publish_agents;
use crate::bridge::{CLAIM_PREFIX, CLOSE_PREFIX, NAME, Shared, agent_user_id, id_of};
use crate::error::{Error, Result};

/// An interaction answer only the clicking agent sees.
const EPHEMERAL: u64 = 1 << 6;

/// Keeps serenity's shard running. Before each start it checks, through the
/// proxy, the bot user and the gateway URL, and hands that URL to the shard
/// itself: serenity would otherwise fall back to the real gateway when the
/// call fails.
pub(in crate::bridge) async fn gateway(shared: Arc<Shared>, inbound: mpsc::Sender<Inbound>) {
    let mut delay = Duration::from_secs(1);
    loop {
        match run_gateway(&shared, inbound.clone()).await {
            Ok(()) => delay = Duration::from_secs(1),
            Err(err) => {
                tracing::warn!(error = %err, "discord bridge: gateway not running");
                shared.record_error(&err);
            }
        }
        // The client is gone, and its shards with it.
        *shared.shards.lock().unwrap_or_else(|e| e.into_inner()) = None;
        shared.state().shard_seen(false);
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(60));
    }
}

/// How often the gateway watcher looks at the shard.
const WATCH_EVERY: Duration = Duration::from_millis(250);

/// Looks at serenity's shard runner every [`WATCH_EVERY`]: whether it is
/// connected ([`State::shard_seen`]), since serenity tells handlers nothing
/// when a resume or a restart fails. When the count of online agents
/// changes, processes on standby are told at once rather than at the next
/// renewal of the lease, so that none of them counts agents of a gateway
/// that is gone.
///
/// [`State::shard_seen`]: crate::bridge::State::shard_seen
pub(in crate::bridge) async fn watch_gateway(shared: Arc<Shared>) {
    let mut published = None;
    loop {
        tokio::time::sleep(WATCH_EVERY).await;
        let shards = shared.shards.lock().unwrap_or_else(|e| e.into_inner()).clone();
        match shards {
            Some(shards) => {
                // Applied with the runners locked: serenity records a
                // runner's stage (there) before it hands the event that
                // changed it (READY, RESUMED) to collectors and handlers, so
                // no older look can undo what such an event set.
                let runners = shards.runners.lock().await;
                let up = runners.values().any(|runner| runner.stage == ConnectionStage::Connected);
                shared.state().shard_seen(up);
                drop(runners);
            }
            None => shared.state().shard_seen(false),
        }
        let count = shared.state().online_agents();
        if published != Some(count) && shared.lease.fresh() {
            let Some(until) = shared.lease.until() else { continue };
            match publish_agents(&shared, until).await {
                Ok(()) => published = Some(count),
                Err(err) => tracing::debug!(error = %err, "discord bridge: cannot share the count of online agents"),
            }
        }
    }
}

async fn run_gateway(shared: &Arc<Shared>, inbound: mpsc::Sender<Inbound>) -> Result<()> {
    let me = shared.rest.call(LightMethod::Get, Route::UserMe, Vec::new(), None).await?;
    let bot: u64 = id_of(&me, "the bot user")?.parse().map_err(|_| Error::Unexpected("a bot id".into()))?;
    shared.state().bot_user = Some(bot);
    let gateway = shared.rest.call(LightMethod::Get, Route::Gateway, Vec::new(), None).await?;
    let url = gateway
        .get("url")
        .and_then(Value::as_str)
        .filter(|u| u.starts_with("wss://") || u.starts_with("ws://"))
        .ok_or_else(|| Error::Unexpected("no gateway URL".into()))?
        .to_owned();
    let intents = GatewayIntents::GUILDS
        | GatewayIntents::GUILD_MESSAGES
        | GatewayIntents::MESSAGE_CONTENT
        | GatewayIntents::GUILD_MESSAGE_TYPING
        | GatewayIntents::GUILD_MEMBERS
        | GatewayIntents::GUILD_PRESENCES;
    let handler = Handler { shared: shared.clone(), inbound };
    // Built from our `Http` (proxy, timeout), never from a token, which
    // would make serenity build a client without either.
    let mut client = ClientBuilder::new_with_http(shared.rest.serenity_http(), intents)
        .event_handler(handler)
        .await
        .map_err(|e| Error::Unavailable(format!("cannot build the gateway client: {e}")))?;
    *client.ws_url.lock().await = url;
    *shared.shards.lock().unwrap_or_else(|e| e.into_inner()) = Some(client.shard_manager.clone());
    client.start().await.map_err(|e| Error::Unavailable(format!("the gateway stopped: {e}")))
}

struct Handler {
    shared: Arc<Shared>,
    inbound: mpsc::Sender<Inbound>,
}

impl Handler {
    /// A member joined, changed or left (`roles` is `None`): the roles of
    /// their chat user change, through the inbound task so that it is
    /// ordered with their messages. (Whether they count as an agent is the
    /// roster's, which its collector keeps.)
    async fn member_changed(&self, user: &DiscordUser, nick: Option<&str>, roles: Option<&[RoleId]>) {
        self.shared.state().members_heard.insert(user.id.get());
        let name = nick.map(str::to_owned).or_else(|| user.global_name.clone()).unwrap_or_else(|| user.name.clone());
        let now = roles.map(|held| (name, held.to_vec()));
        let _ = self.inbound.send(Inbound::Member(user.id.get(), now)).await;
    }

    /// Hands a snapshot's members to the inbound task, for their chat roles.
    async fn snapshot(&self, members: impl Iterator<Item = &Member>) {
        let members: Vec<_> = members.map(|m| (m.user.id.get(), member_name(m), m.roles.clone())).collect();
        if !members.is_empty() {
            let _ = self.inbound.send(Inbound::Snapshot(members)).await;
        }
    }
}

#[async_trait]
impl EventHandler for Handler {
    async fn ready(&self, _ctx: Context, ready: Ready) {
        #[cfg(feature = "test-support")]
        {
            let delay = *self.shared.ready_delay.lock().unwrap_or_else(|e| e.into_inner());
            tokio::time::sleep(delay).await;
        }
        {
            let mut state = self.shared.state();
            state.bot_user = Some(ready.user.id.get());
            // A new gateway session: member events heard before it are
            // stale. The roster is left alone: this handler may run after
            // those of the events that followed READY, and the roster is
            // replaced, in order, by the answer to the member request that
            // the session's GUILD_CREATE makes.
            state.members_heard.clear();
        }
        // Whether the shard resumed or identified anew, what was written
        // while it was away is fetched: serenity often re-identifies, and
        // then Discord replays nothing.
        let _ = self.inbound.send(Inbound::CatchUp).await;
    }

    /// The session resumed: it goes on, so does the roster.
    async fn resume(&self, _ctx: Context, _event: ResumedEvent) {
        self.shared.state().resumed();
    }

    async fn message(&self, _ctx: Context, message: Message) {
        if message.guild_id.map(GuildId::get) == Some(self.shared.config.guild_id) {
            let _ = self.inbound.send(Inbound::Message(Box::new(message))).await;
        }
    }

    async fn message_update(
        &self,
        _ctx: Context,
        _old: Option<Message>,
        _new: Option<Message>,
        event: MessageUpdateEvent,
    ) {
        if event.guild_id.map(GuildId::get) == Some(self.shared.config.guild_id) {
            let _ = self.inbound.send(Inbound::Update(Box::new(event))).await;
        }
    }

    async fn message_delete(
        &self,
        _ctx: Context,
        channel: ChannelId,
        message: DiscordMessageId,
        guild: Option<GuildId>,
    ) {
        if guild.map(GuildId::get) == Some(self.shared.config.guild_id) {
            let _ = self.inbound.send(Inbound::Delete { channel, message }).await;
        }
    }

    /// The guild is available, at every (re)connection: its members and
    /// presences are asked for (REQUEST_GUILD_MEMBERS, which the
    /// GUILD_MEMBERS intent allows, with presences, which GUILD_PRESENCES
    /// does), and a collector is put on the shard first that builds the
    /// roster from the answer and every event after it, in order (see
    /// [`Roster`]). This handler may run after those of later events; the
    /// answer is newer than all of them. A large guild (over serenity's
    /// `large_threshold` of 250 members) carries only some of its members
    /// here, so it needs the request anyway. The members carried here keep
    /// their chat users' roles current.
    ///
    /// [`Roster`]: super::roster::Roster
    async fn guild_create(&self, ctx: Context, guild: Guild, _is_new: Option<bool>) {
        if guild.id.get() != self.shared.config.guild_id {
            return;
        }
        let request = {
            let mut state = self.shared.state();
            state.requests += 1;
            state.guild_upload_limit = boosted_upload_limit(guild.premium_tier);
            state.requests
        };
        ctx.shard.add_collector(roster_collector(Arc::downgrade(&self.shared), request));
        let nonce = format!("{NONCE_PREFIX}{request}");
        ctx.shard.chunk_guild(guild.id, None, true, ChunkGuildFilter::None, Some(nonce));
        self.snapshot(guild.members.values()).await;
    }

    /// Members asked for after a GUILD_CREATE, up to 1000 a chunk: their
    /// chat users' roles. (The roster's collector counts them.)
    async fn guild_members_chunk(&self, _ctx: Context, chunk: GuildMembersChunkEvent) {
        if chunk.guild_id.get() != self.shared.config.guild_id {
            return;
        }
        self.snapshot(chunk.members.values()).await;
    }

    async fn guild_member_addition(&self, _ctx: Context, member: Member) {
        if member.guild_id.get() == self.shared.config.guild_id {
            self.member_changed(&member.user, member.nick.as_deref(), Some(&member.roles)).await;
        }
    }

    async fn guild_member_update(
        &self,
        _ctx: Context,
        _old: Option<Member>,
        _new: Option<Member>,
        event: GuildMemberUpdateEvent,
    ) {
        if event.guild_id.get() == self.shared.config.guild_id {
            self.member_changed(&event.user, event.nick.as_deref(), Some(&event.roles)).await;
        }
    }

    async fn guild_member_removal(&self, _ctx: Context, guild: GuildId, user: DiscordUser, _member: Option<Member>) {
        if guild.get() == self.shared.config.guild_id {
            self.member_changed(&user, None, None).await;
        }
    }

    /// A button of a thread's first post was pressed. Answered here rather
    /// than through the outbox: Discord takes the answer only within three
    /// seconds, so a queued one would be worthless.
    async fn interaction_create(&self, _ctx: Context, interaction: Interaction) {
        let Interaction::Component(click) = interaction else { return };
        if click.guild_id.map(GuildId::get) != Some(self.shared.config.guild_id) {
            return;
        }
        // Discord's own word on the guild's upload limit, newer than the tier's.
        if click.attachment_size_limit > 0 {
            self.shared.state().guild_upload_limit = Some(u64::from(click.attachment_size_limit));
        }
        let (text, outcome) = match press(&self.shared, &click).await {
            Ok(text) => (text, None),
            Err(err) => (refusal(&err), Some(err)),
        };
        if let Some(err) = outcome {
            tracing::info!(error = %err, button = %click.data.custom_id, "discord bridge: a button press was refused");
        }
        let answer =
            json!({ "type": 4, "data": { "content": text, "flags": EPHEMERAL, "allowed_mentions": { "parse": [] } } });
        let route =
            Route::InteractionResponse { interaction_id: InteractionId::new(click.id.get()), token: &click.token };
        if let Err(err) = self.shared.rest.call(LightMethod::Post, route, Vec::new(), Some(&answer)).await {
            tracing::warn!(error = %err, "discord bridge: cannot answer a button press");
            self.shared.record_error(&err);
        }
    }

    async fn typing_start(&self, _ctx: Context, event: TypingStartEvent) {
        if event.guild_id.map(GuildId::get) == Some(self.shared.config.guild_id) {
            let _ = self.inbound.send(Inbound::Typing(Box::new(event))).await;
        }
    }
}

/// Claims or closes the room a button names, as the member who pressed it,
/// who must hold the support role. Returns what to tell them.
async fn press(shared: &Shared, click: &ComponentInteraction) -> Result<String> {
    let id = click.data.custom_id.as_str();
    let (claim, room) = match (id.strip_prefix(CLAIM_PREFIX), id.strip_prefix(CLOSE_PREFIX)) {
        (Some(room), _) => (true, room),
        (_, Some(room)) => (false, room),
        _ => return Err(Error::Unexpected(format!("an unknown button {id:?}"))),
    };
    let room: RoomId = room.parse()?;
    let Some(member) = &click.member else {
        return Err(Error::Chat(chat_core::Error::forbidden("only members of the server may do this")));
    };
    if !member.roles.iter().any(|r| r.get() == shared.config.support_role_id) {
        return Err(Error::Chat(chat_core::Error::forbidden("only the support team may do this")));
    }
    let name =
        member.nick.clone().or_else(|| member.user.global_name.clone()).unwrap_or_else(|| member.user.name.clone());
    let mut user = User::new(agent_user_id(member.user.id.get())?, name);
    user.roles = chat_roles(&shared.config, &member.roles, true);
    let host = shared.host()?;
    if claim {
        host.claim_room_as(NAME, user, room).await?;
        Ok("You took this conversation; the visitor sees it.".into())
    } else {
        host.close_room_as(NAME, user, room).await?;
        Ok("The conversation is closed; the visitor was told, and this thread is archived.".into())
    }
}

/// What an agent whose button press failed is told. Chat errors carry a
/// message written for users; anything else stays in the logs.
fn refusal(err: &Error) -> String {
    match err {
        Error::Chat(err)
            if err.code() != chat_core::ErrorCode::Internal && err.code() != chat_core::ErrorCode::Unavailable =>
        {
            format!("Not done: {err}.")
        }
        _ => "Not done: the chat cannot do this right now; try again.".into(),
    }
}

/// The upload limit a guild's boost tier gives, where it is above the
/// default (tiers 2 and 3: 50 and 100 MiB).
fn boosted_upload_limit(tier: PremiumTier) -> Option<u64> {
    match tier {
        PremiumTier::Tier2 => Some(50 * 1024 * 1024),
        PremiumTier::Tier3 => Some(100 * 1024 * 1024),
        _ => None,
    }
}

/// A member's display name in the guild: their nickname, else their global
/// name, else their user name.
fn member_name(member: &Member) -> String {
    member.nick.clone().or_else(|| member.user.global_name.clone()).unwrap_or_else(|| member.user.name.clone())
}
