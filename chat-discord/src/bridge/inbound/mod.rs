//! Inbound: the gateway → rooms.
//!
//! In the lease holder only, serenity's shard brings what happens in the
//! guild, and what agents do there reaches the chat through the bridge's
//! `BridgeHost`:
//!
//! - `gateway`: keeps the shard connected, hands its events to the inbound
//!   task, answers the Claim and Close buttons at once, and watches the
//!   shard so that a lost gateway shows;
//! - `roster`: who the agents are and who of them is online, built by a
//!   collector on the shard from its events in the order they came;
//! - `deliver`: what agents write, edit, delete and type in a mapped thread
//!   or channel, and members' names and roles, applied to the chat;
//! - `files`: agents' files, copied from Discord's CDN into the chat's
//!   storage before their message is posted;
//! - `catch_up`: after each READY, what the gateway did not bring meanwhile.
//!
//! Serenity runs each event's handler in a task of its own; the handlers
//! therefore only queue work ([`Inbound`]) for one task ([`receive`]), which
//! handles it one item at a time. This module also holds how Discord roles
//! become chat roles, which the button presses, the delivery and the roster
//! share.

mod catch_up;
mod deliver;
mod files;
mod gateway;
pub(super) mod roster;

use std::sync::Arc;

use serenity::all::{ChannelId, Message, MessageId as DiscordMessageId, MessageUpdateEvent, RoleId, TypingStartEvent};
use tokio::sync::mpsc;

use crate::bridge::Shared;
use crate::config::DiscordConfig;
use catch_up::catch_up;
use deliver::{deliver, member_roles, remove, snapshot_roles, typing, update};

pub(super) use gateway::{gateway, watch_gateway};

/// Work for the inbound task, kept in arrival order. `Member` is a member
/// (by id) who joined or changed (display name, roles) or left (`None`);
/// `Snapshot` the members (id, display name, roles) a GUILD_CREATE or a
/// member chunk carried. Both keep chat users' roles up to date.
pub(super) enum Inbound {
    Message(Box<Message>),
    Update(Box<MessageUpdateEvent>),
    Delete { channel: ChannelId, message: DiscordMessageId },
    Typing(Box<TypingStartEvent>),
    Member(u64, Option<(String, Vec<RoleId>)>),
    Snapshot(Vec<(u64, String, Vec<RoleId>)>),
    CatchUp,
}

fn holds_support(config: &DiscordConfig, held: &[RoleId]) -> bool {
    held.iter().any(|r| r.get() == config.support_role_id)
}

/// The chat roles of a member acting in a mapped thread or channel:
/// `support` in a support thread (the people answering there are the support
/// team), then the chat role of each mapped Discord role they hold, each once.
fn chat_roles(config: &DiscordConfig, held: &[RoleId], support: bool) -> Vec<String> {
    let mut roles = Vec::new();
    if support {
        roles.push(chat_core::user::SUPPORT_ROLE.to_owned());
    }
    for (role, name) in &config.role_map {
        // A user holds at most `MAX_ROLES`; more would make every post fail.
        if roles.len() >= chat_core::user::MAX_ROLES {
            break;
        }
        if held.iter().any(|r| r.get() == *role) && !roles.contains(name) {
            roles.push(name.clone());
        }
    }
    roles
}

/// Handles inbound work one item at a time, so that messages of a thread
/// reach the room in the order they came.
pub(super) async fn receive(shared: Arc<Shared>, mut inbound: mpsc::Receiver<Inbound>) {
    while let Some(item) = inbound.recv().await {
        let result = match item {
            Inbound::Message(message) => deliver(&shared, &message).await,
            Inbound::Update(event) => update(&shared, &event).await,
            Inbound::Delete { channel, message } => remove(&shared, channel, message).await,
            Inbound::Typing(event) => typing(&shared, &event).await,
            Inbound::Member(user, now) => member_roles(&shared, user, now).await,
            Inbound::Snapshot(members) => snapshot_roles(&shared, members).await,
            Inbound::CatchUp => catch_up(&shared).await,
        };
        if let Err(err) = result {
            tracing::warn!(error = %err, "discord bridge: inbound event not delivered");
            shared.record_error(&err);
        }
    }
}
