//! What clients ask the engine to do, and what it answers.
//!
//! These are the protocol's commands as typed values. Their payloads derive
//! `Deserialize` with the protocol's field names, so that any serde format can
//! decode them; the framing around them (the `type`/`ref`/`data` envelope of the
//! JSON transport, or anything else) belongs to each transport, which maps a
//! command name to a [`CommandKind`] and then calls [`Command::decode`].

use serde::de::{Deserializer, IgnoredAny};
use serde::{Deserialize, Serialize};

use crate::call::{CallMedia, CallState};
use crate::id::{CallId, MessageId, RoomId, UserId};
use crate::message::{HistoryPage, Message};
use crate::presence::{OnlineUser, PresenceStatus};
use crate::room::{MemberReceipts, MemberRole, Room, RoomKind, RoomSummary, Visibility};
use crate::search::SearchPage;
use crate::time::Timestamp;
use crate::user::User;

/// `room:create`
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct CreateRoom {
    /// Direct, group or support.
    pub kind: RoomKind,
    /// Display name.
    #[serde(default)]
    pub name: Option<String>,
    /// Defaults to private.
    #[serde(default)]
    pub visibility: Option<Visibility>,
    /// Other users to add; for a direct room exactly one.
    #[serde(default)]
    pub members: Vec<UserId>,
}

/// `room:join`
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct JoinRoom {
    /// The room.
    pub room_id: RoomId,
    /// Resume point: every message after it is sent before live ones.
    #[serde(default)]
    pub since_seq: Option<u64>,
}

/// A command that names only a room (`room:leave`, `typing:start`, `typing:stop`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct RoomRef {
    /// The room.
    pub room_id: RoomId,
}

/// `room:invite`
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Invite {
    /// The room.
    pub room_id: RoomId,
    /// Who to add.
    pub user_id: UserId,
}

/// `room:update`: a field absent (or `null`) is kept; an empty string clears it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct UpdateRoom {
    /// The room.
    pub room_id: RoomId,
    /// The new display name.
    #[serde(default)]
    pub name: Option<String>,
    /// The new topic.
    #[serde(default)]
    pub topic: Option<String>,
}

/// `room:remove`
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct RemoveMember {
    /// The room.
    pub room_id: RoomId,
    /// The member to remove.
    pub user_id: UserId,
    /// Also bar them from joining or being added until `room:unban`.
    #[serde(default)]
    pub ban: bool,
}

/// A command that names a room and a user (`room:unban`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct MemberRef {
    /// The room.
    pub room_id: RoomId,
    /// The user.
    pub user_id: UserId,
}

/// `room:set_role`
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct SetRole {
    /// The room.
    pub room_id: RoomId,
    /// The member.
    pub user_id: UserId,
    /// `admin` or `member`.
    pub role: MemberRole,
}

/// `room:mute`
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct MuteRoom {
    /// The room.
    pub room_id: RoomId,
    /// When the mute ends; absent or `null`: until `room:unmute`.
    #[serde(default)]
    pub until: Option<Timestamp>,
}

/// `room:history`
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct HistoryRequest {
    /// The room.
    pub room_id: RoomId,
    /// Only messages below this seq.
    #[serde(default)]
    pub before_seq: Option<u64>,
    /// Only messages above this seq.
    #[serde(default)]
    pub after_seq: Option<u64>,
    /// Page size; capped by the configured maximum.
    #[serde(default)]
    pub limit: Option<u32>,
}

/// `message:send`
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct SendMessage {
    /// The room.
    pub room_id: RoomId,
    /// The sender's idempotency key.
    pub client_msg_id: String,
    /// Text.
    pub body: String,
    /// Ids of uploaded attachments.
    #[serde(default)]
    pub attachments: Vec<String>,
    /// The message this one answers.
    #[serde(default)]
    pub reply_to: Option<MessageId>,
}

/// `message:edit`
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct EditMessage {
    /// The room.
    pub room_id: RoomId,
    /// The message.
    pub message_id: MessageId,
    /// New text.
    pub body: String,
}

/// `message:delete`
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct DeleteMessage {
    /// The room.
    pub room_id: RoomId,
    /// The message.
    pub message_id: MessageId,
}

/// `message:delivered` and `message:read`
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Receipt {
    /// The room.
    pub room_id: RoomId,
    /// The cursor's new position.
    pub up_to_seq: u64,
}

/// `presence:update`
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct UpdatePresence {
    /// Online, away, busy or invisible.
    pub status: PresenceStatus,
}

/// `users:search`
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct SearchUsers {
    /// Text to look for in ids and names.
    pub q: String,
    /// Result count; capped by the configured maximum.
    #[serde(default)]
    pub limit: Option<u32>,
}

/// `messages:search`
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::IntoParams), into_params(parameter_in = Query))]
pub struct SearchMessages {
    /// The words to find, all of them ([`crate::search`]).
    pub q: String,
    /// Only this room.
    #[serde(default)]
    pub room_id: Option<RoomId>,
    /// Result count; capped at [`crate::search::MAX_LIMIT`].
    #[serde(default)]
    pub limit: Option<u32>,
    /// The `next` of the previous page.
    #[serde(default)]
    pub before: Option<String>,
}

/// `call:invite`
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct InviteCall {
    /// The room the call belongs to (its history gets the call's line).
    pub room_id: RoomId,
    /// Audio or video.
    pub media: CallMedia,
    /// Who to call: required in a room of more than two members, and then
    /// a member; in a room of two it may name the other member or be left out.
    #[serde(default)]
    pub to: Option<UserId>,
}

/// A command that names only a call (`call:accept`, `call:reject`,
/// `call:end`, `call:rejoin`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct CallRef {
    /// The call.
    pub call_id: CallId,
}

/// `call:signal`
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct SignalCall {
    /// The call.
    pub call_id: CallId,
    /// The other participant.
    pub to: UserId,
    /// SDP or ICE, opaque to the server; relayed as it is.
    pub payload: serde_json::Value,
}

/// The name of a command, as clients spell it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum CommandKind {
    /// `room:create`
    RoomCreate,
    /// `room:join`
    RoomJoin,
    /// `room:leave`
    RoomLeave,
    /// `room:invite`
    RoomInvite,
    /// `room:list`
    RoomList,
    /// `room:history`
    RoomHistory,
    /// `room:update`
    RoomUpdate,
    /// `room:remove`
    RoomRemove,
    /// `room:unban`
    RoomUnban,
    /// `room:bans`
    RoomBans,
    /// `room:set_role`
    RoomSetRole,
    /// `room:mute`
    RoomMute,
    /// `room:unmute`
    RoomUnmute,
    /// `message:send`
    MessageSend,
    /// `message:edit`
    MessageEdit,
    /// `message:delete`
    MessageDelete,
    /// `typing:start`
    TypingStart,
    /// `typing:stop`
    TypingStop,
    /// `message:delivered`
    MessageDelivered,
    /// `message:read`
    MessageRead,
    /// `presence:update`
    PresenceUpdate,
    /// `users:online`
    UsersOnline,
    /// `users:search`
    UsersSearch,
    /// `messages:search`
    MessagesSearch,
    /// `ping`
    Ping,
    /// `call:invite`
    CallInvite,
    /// `call:accept`
    CallAccept,
    /// `call:reject`
    CallReject,
    /// `call:end`
    CallEnd,
    /// `call:signal`
    CallSignal,
    /// `call:rejoin`
    CallRejoin,
}

impl CommandKind {
    /// Every command, for tables and docs.
    pub const ALL: [CommandKind; 31] = [
        CommandKind::RoomCreate,
        CommandKind::RoomJoin,
        CommandKind::RoomLeave,
        CommandKind::RoomInvite,
        CommandKind::RoomList,
        CommandKind::RoomHistory,
        CommandKind::RoomUpdate,
        CommandKind::RoomRemove,
        CommandKind::RoomUnban,
        CommandKind::RoomBans,
        CommandKind::RoomSetRole,
        CommandKind::RoomMute,
        CommandKind::RoomUnmute,
        CommandKind::MessageSend,
        CommandKind::MessageEdit,
        CommandKind::MessageDelete,
        CommandKind::TypingStart,
        CommandKind::TypingStop,
        CommandKind::MessageDelivered,
        CommandKind::MessageRead,
        CommandKind::PresenceUpdate,
        CommandKind::UsersOnline,
        CommandKind::UsersSearch,
        CommandKind::MessagesSearch,
        CommandKind::Ping,
        CommandKind::CallInvite,
        CommandKind::CallAccept,
        CommandKind::CallReject,
        CommandKind::CallEnd,
        CommandKind::CallSignal,
        CommandKind::CallRejoin,
    ];

    /// The protocol name.
    pub fn name(self) -> &'static str {
        match self {
            CommandKind::RoomCreate => "room:create",
            CommandKind::RoomJoin => "room:join",
            CommandKind::RoomLeave => "room:leave",
            CommandKind::RoomInvite => "room:invite",
            CommandKind::RoomList => "room:list",
            CommandKind::RoomHistory => "room:history",
            CommandKind::RoomUpdate => "room:update",
            CommandKind::RoomRemove => "room:remove",
            CommandKind::RoomUnban => "room:unban",
            CommandKind::RoomBans => "room:bans",
            CommandKind::RoomSetRole => "room:set_role",
            CommandKind::RoomMute => "room:mute",
            CommandKind::RoomUnmute => "room:unmute",
            CommandKind::MessageSend => "message:send",
            CommandKind::MessageEdit => "message:edit",
            CommandKind::MessageDelete => "message:delete",
            CommandKind::TypingStart => "typing:start",
            CommandKind::TypingStop => "typing:stop",
            CommandKind::MessageDelivered => "message:delivered",
            CommandKind::MessageRead => "message:read",
            CommandKind::PresenceUpdate => "presence:update",
            CommandKind::UsersOnline => "users:online",
            CommandKind::UsersSearch => "users:search",
            CommandKind::MessagesSearch => "messages:search",
            CommandKind::Ping => "ping",
            CommandKind::CallInvite => "call:invite",
            CommandKind::CallAccept => "call:accept",
            CommandKind::CallReject => "call:reject",
            CommandKind::CallEnd => "call:end",
            CommandKind::CallSignal => "call:signal",
            CommandKind::CallRejoin => "call:rejoin",
        }
    }

    /// Looks a protocol name up.
    pub fn from_name(name: &str) -> Option<Self> {
        CommandKind::ALL.into_iter().find(|k| k.name() == name)
    }
}

/// A decoded command.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Command {
    /// `room:create`
    RoomCreate(CreateRoom),
    /// `room:join`
    RoomJoin(JoinRoom),
    /// `room:leave`
    RoomLeave(RoomRef),
    /// `room:invite`
    RoomInvite(Invite),
    /// `room:list`
    RoomList,
    /// `room:history`
    RoomHistory(HistoryRequest),
    /// `room:update`
    RoomUpdate(UpdateRoom),
    /// `room:remove`
    RoomRemove(RemoveMember),
    /// `room:unban`
    RoomUnban(MemberRef),
    /// `room:bans`
    RoomBans(RoomRef),
    /// `room:set_role`
    RoomSetRole(SetRole),
    /// `room:mute`
    RoomMute(MuteRoom),
    /// `room:unmute`
    RoomUnmute(RoomRef),
    /// `message:send`
    MessageSend(SendMessage),
    /// `message:edit`
    MessageEdit(EditMessage),
    /// `message:delete`
    MessageDelete(DeleteMessage),
    /// `typing:start`
    TypingStart(RoomRef),
    /// `typing:stop`
    TypingStop(RoomRef),
    /// `message:delivered`
    MessageDelivered(Receipt),
    /// `message:read`
    MessageRead(Receipt),
    /// `presence:update`
    PresenceUpdate(UpdatePresence),
    /// `users:online`
    UsersOnline,
    /// `users:search`
    UsersSearch(SearchUsers),
    /// `messages:search`
    MessagesSearch(SearchMessages),
    /// `ping`
    Ping,
    /// `call:invite`
    CallInvite(InviteCall),
    /// `call:accept`
    CallAccept(CallRef),
    /// `call:reject`
    CallReject(CallRef),
    /// `call:end`
    CallEnd(CallRef),
    /// `call:signal`
    CallSignal(SignalCall),
    /// `call:rejoin`
    CallRejoin(CallRef),
}

impl Command {
    /// Decodes a command's payload with any serde deserializer. Commands without
    /// fields accept any object (and transports may pass an empty one when the
    /// payload is absent).
    pub fn decode<'de, D: Deserializer<'de>>(kind: CommandKind, data: D) -> Result<Self, D::Error> {
        Ok(match kind {
            CommandKind::RoomCreate => Command::RoomCreate(CreateRoom::deserialize(data)?),
            CommandKind::RoomJoin => Command::RoomJoin(JoinRoom::deserialize(data)?),
            CommandKind::RoomLeave => Command::RoomLeave(RoomRef::deserialize(data)?),
            CommandKind::RoomInvite => Command::RoomInvite(Invite::deserialize(data)?),
            CommandKind::RoomList => {
                IgnoredAny::deserialize(data)?;
                Command::RoomList
            }
            CommandKind::RoomHistory => Command::RoomHistory(HistoryRequest::deserialize(data)?),
            CommandKind::RoomUpdate => Command::RoomUpdate(UpdateRoom::deserialize(data)?),
            CommandKind::RoomRemove => Command::RoomRemove(RemoveMember::deserialize(data)?),
            CommandKind::RoomUnban => Command::RoomUnban(MemberRef::deserialize(data)?),
            CommandKind::RoomBans => Command::RoomBans(RoomRef::deserialize(data)?),
            CommandKind::RoomSetRole => Command::RoomSetRole(SetRole::deserialize(data)?),
            CommandKind::RoomMute => Command::RoomMute(MuteRoom::deserialize(data)?),
            CommandKind::RoomUnmute => Command::RoomUnmute(RoomRef::deserialize(data)?),
            CommandKind::MessageSend => Command::MessageSend(SendMessage::deserialize(data)?),
            CommandKind::MessageEdit => Command::MessageEdit(EditMessage::deserialize(data)?),
            CommandKind::MessageDelete => Command::MessageDelete(DeleteMessage::deserialize(data)?),
            CommandKind::TypingStart => Command::TypingStart(RoomRef::deserialize(data)?),
            CommandKind::TypingStop => Command::TypingStop(RoomRef::deserialize(data)?),
            CommandKind::MessageDelivered => Command::MessageDelivered(Receipt::deserialize(data)?),
            CommandKind::MessageRead => Command::MessageRead(Receipt::deserialize(data)?),
            CommandKind::PresenceUpdate => Command::PresenceUpdate(UpdatePresence::deserialize(data)?),
            CommandKind::UsersOnline => {
                IgnoredAny::deserialize(data)?;
                Command::UsersOnline
            }
            CommandKind::UsersSearch => Command::UsersSearch(SearchUsers::deserialize(data)?),
            CommandKind::MessagesSearch => Command::MessagesSearch(SearchMessages::deserialize(data)?),
            CommandKind::Ping => {
                IgnoredAny::deserialize(data)?;
                Command::Ping
            }
            CommandKind::CallInvite => Command::CallInvite(InviteCall::deserialize(data)?),
            CommandKind::CallAccept => Command::CallAccept(CallRef::deserialize(data)?),
            CommandKind::CallReject => Command::CallReject(CallRef::deserialize(data)?),
            CommandKind::CallEnd => Command::CallEnd(CallRef::deserialize(data)?),
            CommandKind::CallSignal => Command::CallSignal(SignalCall::deserialize(data)?),
            CommandKind::CallRejoin => Command::CallRejoin(CallRef::deserialize(data)?),
        })
    }

    /// Which command this is.
    pub fn kind(&self) -> CommandKind {
        match self {
            Command::RoomCreate(_) => CommandKind::RoomCreate,
            Command::RoomJoin(_) => CommandKind::RoomJoin,
            Command::RoomLeave(_) => CommandKind::RoomLeave,
            Command::RoomInvite(_) => CommandKind::RoomInvite,
            Command::RoomList => CommandKind::RoomList,
            Command::RoomHistory(_) => CommandKind::RoomHistory,
            Command::RoomUpdate(_) => CommandKind::RoomUpdate,
            Command::RoomRemove(_) => CommandKind::RoomRemove,
            Command::RoomUnban(_) => CommandKind::RoomUnban,
            Command::RoomBans(_) => CommandKind::RoomBans,
            Command::RoomSetRole(_) => CommandKind::RoomSetRole,
            Command::RoomMute(_) => CommandKind::RoomMute,
            Command::RoomUnmute(_) => CommandKind::RoomUnmute,
            Command::MessageSend(_) => CommandKind::MessageSend,
            Command::MessageEdit(_) => CommandKind::MessageEdit,
            Command::MessageDelete(_) => CommandKind::MessageDelete,
            Command::TypingStart(_) => CommandKind::TypingStart,
            Command::TypingStop(_) => CommandKind::TypingStop,
            Command::MessageDelivered(_) => CommandKind::MessageDelivered,
            Command::MessageRead(_) => CommandKind::MessageRead,
            Command::PresenceUpdate(_) => CommandKind::PresenceUpdate,
            Command::UsersOnline => CommandKind::UsersOnline,
            Command::UsersSearch(_) => CommandKind::UsersSearch,
            Command::MessagesSearch(_) => CommandKind::MessagesSearch,
            Command::Ping => CommandKind::Ping,
            Command::CallInvite(_) => CommandKind::CallInvite,
            Command::CallAccept(_) => CommandKind::CallAccept,
            Command::CallReject(_) => CommandKind::CallReject,
            Command::CallEnd(_) => CommandKind::CallEnd,
            Command::CallSignal(_) => CommandKind::CallSignal,
            Command::CallRejoin(_) => CommandKind::CallRejoin,
        }
    }
}

/// The data of a successful reply. Serializes as the protocol's reply `data`
/// object.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
#[non_exhaustive]
pub enum Reply {
    /// `{}`
    Empty {},
    /// `{"room"}`
    Room {
        /// The room.
        room: Room,
    },
    /// The answer to `room:join` (boxed: it is the largest answer by far).
    Joined(Box<Joined>),
    /// `{"rooms"}`
    Rooms {
        /// The user's rooms.
        rooms: Vec<RoomSummary>,
    },
    /// `{"messages","has_more"}`
    History(HistoryPage),
    /// `{"message"}`
    Message {
        /// The message.
        message: Message,
    },
    /// `{"users"}` of `users:search`
    Users {
        /// Matching users.
        users: Vec<User>,
    },
    /// `{"users"}` of `users:online`
    Online {
        /// Connected, visible users.
        users: Vec<OnlineUser>,
    },
    /// `{"bans"}` of `room:bans`
    Bans {
        /// The room's bans, newest first.
        bans: Vec<BanEntry>,
    },
    /// `{"results","next"?}` of `messages:search`
    Search(SearchPage),
    /// `{"server_time"}`
    Pong {
        /// The server's clock.
        server_time: Timestamp,
    },
    /// The answer to `call:invite` (boxed, as every answer larger than a few words).
    CallPlaced(Box<CallPlaced>),
    /// The answer to `call:rejoin`.
    CallRejoined(Box<CallRejoined>),
}

/// The answer to `call:invite`: `{"call_id","ice_servers","glare"?}`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CallPlaced {
    /// The call: the new one, or with `glare`, the callee's own invite to
    /// the caller, which this invite answered.
    pub call_id: CallId,
    /// RTCIceServer objects for the session's `RTCPeerConnection`.
    pub ice_servers: Vec<serde_json::Value>,
    /// The callee was calling the caller at the same moment: the older
    /// invite (theirs) is kept, and this one accepted it for this session,
    /// which is now the callee of an answered call (the other side makes
    /// the offer).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub glare: bool,
}

/// The answer to `call:rejoin`: the call this session now takes part in.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CallRejoined {
    /// The call.
    pub call_id: CallId,
    /// Its room.
    pub room_id: RoomId,
    /// Audio or video.
    pub media: CallMedia,
    /// `ringing` or `accepted`.
    pub state: CallState,
    /// The other participant.
    pub peer: UserId,
    /// Whether this session's user placed the call.
    pub caller: bool,
    /// RTCIceServer objects, as `call:invite` gives them.
    pub ice_servers: Vec<serde_json::Value>,
}

/// The answer to `room:join`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Joined {
    /// The room.
    pub room: Room,
    /// Its members.
    pub members: Vec<User>,
    /// Newest seq.
    pub last_seq: u64,
    /// The joining user's read cursor.
    pub read_seq: u64,
    /// Every member's delivered and read cursors, in joining order.
    pub receipts: Vec<MemberReceipts>,
    /// Every member's role in the room, by user id.
    pub roles: std::collections::BTreeMap<UserId, MemberRole>,
}

/// One ban as `room:bans` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BanEntry {
    /// The banned user (as far as the server knows them).
    pub user: User,
    /// Who banned them.
    pub banned_by: UserId,
    /// When.
    pub banned_at: Timestamp,
}

impl Reply {
    /// `{}`
    pub fn empty() -> Self {
        Reply::Empty {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_round_trips_its_name() {
        for kind in CommandKind::ALL {
            assert_eq!(CommandKind::from_name(kind.name()), Some(kind));
        }
        assert_eq!(CommandKind::from_name("room:explode"), None);
    }

    #[test]
    fn payloads_decode_with_protocol_names() {
        let json = r#"{"room_id":"0192f0c4-6f0e-7c3a-9c1e-3b1d2a4f5e6d","client_msg_id":"c1","body":"hi"}"#;
        let mut de = serde_json::Deserializer::from_str(json);
        let cmd = Command::decode(CommandKind::MessageSend, &mut de).expect("decodes");
        match cmd {
            Command::MessageSend(s) => {
                assert_eq!(s.body, "hi");
                assert!(s.attachments.is_empty());
            }
            other => panic!("unexpected {other:?}"),
        }
        let mut de = serde_json::Deserializer::from_str(r#"{"room_id":"nope"}"#);
        assert!(Command::decode(CommandKind::RoomLeave, &mut de).is_err());
        let mut de = serde_json::Deserializer::from_str(r#"{"status":"dancing"}"#);
        assert!(Command::decode(CommandKind::PresenceUpdate, &mut de).is_err());
    }

    #[test]
    fn empty_reply_is_an_empty_object() {
        assert_eq!(serde_json::to_string(&Reply::empty()).expect("serializes"), "{}");
    }
}
