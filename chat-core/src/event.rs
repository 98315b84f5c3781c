//! What the engine tells sessions, and the shared, encode-once form it travels in.

use std::any::{Any, TypeId};
use std::sync::OnceLock;

use serde::{Deserialize, Serialize, Serializer};

use crate::call::{CallMedia, EndReason};
use crate::id::{CallId, MessageId, RoomId, SessionId, UserId};
use crate::message::Message;
use crate::presence::PresenceStatus;
use crate::room::{MemberRole, ReceiptKind, Room};
use crate::time::Timestamp;
use crate::user::User;

/// `message:new` and `message:updated`
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MessageEvent {
    /// The message as stored.
    pub message: Message,
}

/// `message:deleted`
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MessageDeleted {
    /// The room.
    pub room_id: RoomId,
    /// The deleted message.
    pub message_id: MessageId,
}

/// `user:joined`
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserJoined {
    /// The room.
    pub room_id: RoomId,
    /// The new member.
    pub user: User,
}

/// `user:left`
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserLeft {
    /// The room.
    pub room_id: RoomId,
    /// The member who left.
    pub user_id: UserId,
}

/// `typing:user`
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Typing {
    /// The room.
    pub room_id: RoomId,
    /// Who is typing.
    pub user_id: UserId,
    /// Started (`true`) or stopped.
    pub typing: bool,
}

/// `message:status`
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MessageStatus {
    /// The room.
    pub room_id: RoomId,
    /// Whose cursor moved.
    pub user_id: UserId,
    /// Delivered or read.
    pub status: ReceiptKind,
    /// The cursor's new position.
    pub up_to_seq: u64,
}

/// `presence:changed`
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PresenceChanged {
    /// The user.
    pub user_id: UserId,
    /// Their visible status.
    pub status: PresenceStatus,
    /// When they were last connected, once they are offline.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_seen: Option<Timestamp>,
    /// The status shown before this change, for transports that announce
    /// comings and goings (Socket.IO's `user:online` / `user:offline`). Not
    /// part of the event's data.
    #[serde(skip)]
    pub previous: PresenceStatus,
}

/// `room:added`
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoomAdded {
    /// The room the user now belongs to.
    pub room: Room,
}

/// `room:updated`: a room's settings (`room:update`), claim or state changed
/// (an agent took it, it was closed).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoomUpdated {
    /// The room as it is now.
    pub room: Room,
}

/// `room:removed`: the user is no longer a member of the room (they left
/// it, on any of their sessions, or were removed); nothing more of it reaches
/// their sessions.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoomRemoved {
    /// The room.
    pub room_id: RoomId,
}

/// `room:member_updated`: a member's role in a room changed (`room:set_role`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberUpdated {
    /// The room.
    pub room_id: RoomId,
    /// The member.
    pub user_id: UserId,
    /// Their role now.
    pub role: MemberRole,
}

/// `room:muted`: the user muted or unmuted a room on another of their
/// sessions (`room:mute`, `room:unmute`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoomMuted {
    /// The room.
    pub room_id: RoomId,
    /// Whether it is muted now.
    pub muted: bool,
    /// When the mute ends; absent for a mute until `room:unmute`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub muted_until: Option<Timestamp>,
}

/// `call:incoming`: a call rings for the user (every session of the callee).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CallIncoming {
    /// The call.
    pub call_id: CallId,
    /// The room it was placed in.
    pub room_id: RoomId,
    /// Who calls.
    pub from: User,
    /// Audio or video.
    pub media: CallMedia,
}

/// `call:accepted` (every session of both participants) and `call:rejoined`
/// (the other participant's session): a session of `user_id` now takes part.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CallJoined {
    /// The call.
    pub call_id: CallId,
    /// Who answered, or came back.
    pub user_id: UserId,
    /// Their session that takes part from now on.
    pub session_id: SessionId,
}

/// `call:rejected`: the callee declined.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CallRejected {
    /// The call.
    pub call_id: CallId,
    /// Who declined.
    pub user_id: UserId,
}

/// `call:ended`: the call is over (or, with
/// [`EndReason::AnsweredElsewhere`], over for this session).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CallEnded {
    /// The call.
    pub call_id: CallId,
    /// Why.
    pub reason: EndReason,
    /// How long the two talked, for an answered call.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_s: Option<u64>,
}

/// `call:signal`: SDP or ICE from the other session of the call, opaque to
/// the server and never stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CallSignal {
    /// The call.
    pub call_id: CallId,
    /// The sending participant.
    pub from: UserId,
    /// What the other session sent, as it sent it.
    pub payload: serde_json::Value,
}

/// An event for sessions. Serde derives give the tagged form used between
/// processes (by brokers); [`Event::data`] gives the protocol's `data` object.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", content = "data")]
#[non_exhaustive]
pub enum Event {
    /// `message:new`
    #[serde(rename = "message:new")]
    MessageNew(MessageEvent),
    /// `message:updated`
    #[serde(rename = "message:updated")]
    MessageUpdated(MessageEvent),
    /// `message:deleted`
    #[serde(rename = "message:deleted")]
    MessageDeleted(MessageDeleted),
    /// `user:joined`
    #[serde(rename = "user:joined")]
    UserJoined(UserJoined),
    /// `user:left`
    #[serde(rename = "user:left")]
    UserLeft(UserLeft),
    /// `typing:user`
    #[serde(rename = "typing:user")]
    Typing(Typing),
    /// `message:status`
    #[serde(rename = "message:status")]
    MessageStatus(MessageStatus),
    /// `presence:changed`
    #[serde(rename = "presence:changed")]
    PresenceChanged(PresenceChanged),
    /// `room:added`
    #[serde(rename = "room:added")]
    RoomAdded(RoomAdded),
    /// `room:updated`
    #[serde(rename = "room:updated")]
    RoomUpdated(RoomUpdated),
    /// `room:removed`
    #[serde(rename = "room:removed")]
    RoomRemoved(RoomRemoved),
    /// `room:member_updated`
    #[serde(rename = "room:member_updated")]
    MemberUpdated(MemberUpdated),
    /// `room:muted`
    #[serde(rename = "room:muted")]
    RoomMuted(RoomMuted),
    /// `call:incoming`
    #[serde(rename = "call:incoming")]
    CallIncoming(CallIncoming),
    /// `call:accepted`
    #[serde(rename = "call:accepted")]
    CallAccepted(CallJoined),
    /// `call:rejected`
    #[serde(rename = "call:rejected")]
    CallRejected(CallRejected),
    /// `call:ended`
    #[serde(rename = "call:ended")]
    CallEnded(CallEnded),
    /// `call:signal`
    #[serde(rename = "call:signal")]
    CallSignal(CallSignal),
    /// `call:rejoined`
    #[serde(rename = "call:rejoined")]
    CallRejoined(CallJoined),
}

impl Event {
    /// The protocol name of the event.
    pub fn name(&self) -> &'static str {
        match self {
            Event::MessageNew(_) => "message:new",
            Event::MessageUpdated(_) => "message:updated",
            Event::MessageDeleted(_) => "message:deleted",
            Event::UserJoined(_) => "user:joined",
            Event::UserLeft(_) => "user:left",
            Event::Typing(_) => "typing:user",
            Event::MessageStatus(_) => "message:status",
            Event::PresenceChanged(_) => "presence:changed",
            Event::RoomAdded(_) => "room:added",
            Event::RoomUpdated(_) => "room:updated",
            Event::RoomRemoved(_) => "room:removed",
            Event::MemberUpdated(_) => "room:member_updated",
            Event::RoomMuted(_) => "room:muted",
            Event::CallIncoming(_) => "call:incoming",
            Event::CallAccepted(_) => "call:accepted",
            Event::CallRejected(_) => "call:rejected",
            Event::CallEnded(_) => "call:ended",
            Event::CallSignal(_) => "call:signal",
            Event::CallRejoined(_) => "call:rejoined",
        }
    }

    /// The room the event is about, if any.
    pub fn room_id(&self) -> Option<RoomId> {
        match self {
            Event::MessageNew(e) | Event::MessageUpdated(e) => Some(e.message.room_id),
            Event::MessageDeleted(e) => Some(e.room_id),
            Event::UserJoined(e) => Some(e.room_id),
            Event::UserLeft(e) => Some(e.room_id),
            Event::Typing(e) => Some(e.room_id),
            Event::MessageStatus(e) => Some(e.room_id),
            Event::PresenceChanged(_) => None,
            Event::RoomAdded(e) => Some(e.room.id),
            Event::RoomUpdated(e) => Some(e.room.id),
            Event::RoomRemoved(e) => Some(e.room_id),
            Event::MemberUpdated(e) => Some(e.room_id),
            Event::RoomMuted(e) => Some(e.room_id),
            // Calls go to users, not to the sessions joined to a room: a
            // callee rings whether or not they opened the room.
            Event::CallIncoming(_)
            | Event::CallAccepted(_)
            | Event::CallRejected(_)
            | Event::CallEnded(_)
            | Event::CallSignal(_)
            | Event::CallRejoined(_) => None,
        }
    }

    /// A view that serializes as the protocol's `data` object, without the name.
    pub fn data(&self) -> EventData<'_> {
        EventData(self)
    }
}

/// Serializes an [`Event`]'s payload alone; see [`Event::data`].
#[derive(Debug, Clone, Copy)]
pub struct EventData<'a>(&'a Event);

impl Serialize for EventData<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self.0 {
            Event::MessageNew(e) | Event::MessageUpdated(e) => e.serialize(s),
            Event::MessageDeleted(e) => e.serialize(s),
            Event::UserJoined(e) => e.serialize(s),
            Event::UserLeft(e) => e.serialize(s),
            Event::Typing(e) => e.serialize(s),
            Event::MessageStatus(e) => e.serialize(s),
            Event::PresenceChanged(e) => e.serialize(s),
            Event::RoomAdded(e) => e.serialize(s),
            Event::RoomUpdated(e) => e.serialize(s),
            Event::RoomRemoved(e) => e.serialize(s),
            Event::MemberUpdated(e) => e.serialize(s),
            Event::RoomMuted(e) => e.serialize(s),
            Event::CallIncoming(e) => e.serialize(s),
            Event::CallAccepted(e) | Event::CallRejoined(e) => e.serialize(s),
            Event::CallRejected(e) => e.serialize(s),
            Event::CallEnded(e) => e.serialize(s),
            Event::CallSignal(e) => e.serialize(s),
        }
    }
}

/// Turns an event into one frame of some transport.
pub trait EventCodec: Send + Sync + 'static {
    /// The encoded frame; cloning it must be cheap (reference-counted bytes).
    type Frame: Clone + Send + Sync + 'static;

    /// Encodes one event.
    fn encode(&self, event: &Event) -> Self::Frame;
}

/// An event on its way to many sessions. It is shared by reference, and
/// encoded once per codec: the first session's transport encodes it, every
/// other session reuses those bytes.
pub struct Delivery {
    event: Event,
    /// One frame per codec, for up to [`CODECS`] codecs (a process runs a
    /// transport or two: native and Socket.IO clients in one room each get
    /// bytes encoded once).
    encoded: [OnceLock<(TypeId, Box<dyn Any + Send + Sync>)>; CODECS],
}

/// How many codecs' frames a [`Delivery`] keeps; a further codec encodes
/// for every session.
const CODECS: usize = 2;

impl std::fmt::Debug for Delivery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Delivery").field("event", &self.event).finish_non_exhaustive()
    }
}

impl Delivery {
    /// Wraps an event.
    pub fn new(event: Event) -> Self {
        Delivery { event, encoded: Default::default() }
    }

    /// The event.
    pub fn event(&self) -> &Event {
        &self.event
    }

    /// The event's frame under `codec`, encoding it on first use. Frames of
    /// two codecs are kept (two transports on one node); a third codec
    /// encodes without caching.
    pub fn encoded<C: EventCodec>(&self, codec: &C) -> C::Frame {
        // Keyed by the codec's type, not the frame's: two codecs may share a
        // frame type and still encode differently.
        let key = TypeId::of::<C>();
        for slot in &self.encoded {
            let (cached_key, cached) = slot.get_or_init(|| (key, Box::new(codec.encode(&self.event))));
            if *cached_key == key
                && let Some(frame) = cached.downcast_ref::<C::Frame>()
            {
                return frame.clone();
            }
        }
        codec.encode(&self.event)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    struct Counting(AtomicUsize);

    impl EventCodec for Counting {
        type Frame = std::sync::Arc<str>;

        fn encode(&self, event: &Event) -> Self::Frame {
            self.0.fetch_add(1, Ordering::SeqCst);
            serde_json::to_string(&event.data()).expect("serializes").into()
        }
    }

    fn typing() -> Event {
        Event::Typing(Typing { room_id: RoomId::generate(), user_id: UserId::new("u").expect("valid"), typing: true })
    }

    #[test]
    fn a_delivery_is_encoded_once_for_many_sessions() {
        let codec = Counting(AtomicUsize::new(0));
        let d = Delivery::new(typing());
        let first = d.encoded(&codec);
        for _ in 0..100 {
            assert_eq!(d.encoded(&codec), first);
        }
        assert_eq!(codec.0.load(Ordering::SeqCst), 1);
    }

    struct Other(AtomicUsize);

    impl EventCodec for Other {
        type Frame = std::sync::Arc<str>;

        fn encode(&self, event: &Event) -> Self::Frame {
            self.0.fetch_add(1, Ordering::SeqCst);
            format!("other {}", event.name()).into()
        }
    }

    #[test]
    fn two_codecs_are_each_encoded_once() {
        let (a, b) = (Counting(AtomicUsize::new(0)), Other(AtomicUsize::new(0)));
        let d = Delivery::new(typing());
        for _ in 0..10 {
            assert_eq!(&*d.encoded(&b), "other typing:user");
            assert!(d.encoded(&a).contains("typing"));
        }
        assert_eq!((a.0.load(Ordering::SeqCst), b.0.load(Ordering::SeqCst)), (1, 1));
    }

    #[test]
    fn data_is_the_payload_and_serde_is_tagged() {
        let ev = typing();
        let data = serde_json::to_value(ev.data()).expect("serializes");
        assert_eq!(data["typing"], true);
        let tagged = serde_json::to_value(&ev).expect("serializes");
        assert_eq!(tagged["type"], "typing:user");
        let back: Event = serde_json::from_value(tagged).expect("round trip");
        assert_eq!(back, ev);
        assert_eq!(ev.name(), "typing:user");
    }
}
