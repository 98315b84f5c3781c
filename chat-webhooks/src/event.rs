//! What a webhook says: `{"id","type","created_at","data"}`, and the ids
//! that let a receiver drop repeats.
//!
//! An event's id is fixed when the event is made, and a delivery sends the
//! same bytes on every attempt. Events that the catch-up may find again in
//! the store after a crash (a message created, edited or deleted, a room
//! made, its first members, a support room opened or closed) have ids
//! derived from what they are about, so that the copy the catch-up makes
//! carries the id the lost one would have had. The others (a claim, a member
//! added or removed later, a room's settings) are not found again and get
//! fresh ids.

use chat_core::{Message, MessageId, Room, RoomId, Timestamp, User, UserId};
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::endpoint::EventType;

/// One event, on its way to every endpoint that wants its type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Event {
    pub(crate) id: String,
    pub(crate) kind: EventType,
    /// When it happened: the message's time, its edit's, the room's
    /// creation; for the rest, when the bridge heard of it.
    pub(crate) created_at: Timestamp,
    /// The room it belongs to: its deliveries queue behind the room's
    /// earlier ones.
    pub(crate) room_id: RoomId,
    data: Data,
}

/// The `data` of each type, as PROTOCOL.md section 12 has it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(untagged)]
enum Data {
    Message { room_id: RoomId, message: Box<Message> },
    MessageId { room_id: RoomId, message_id: MessageId },
    Room { room: Box<Room> },
    Member { room_id: RoomId, user: Box<User> },
    MemberId { room_id: RoomId, user_id: UserId },
}

#[derive(Serialize)]
struct Body<'a> {
    id: &'a str,
    #[serde(rename = "type")]
    kind: EventType,
    created_at: Timestamp,
    data: &'a Data,
}

impl Event {
    /// The JSON body every attempt of its deliveries sends.
    pub(crate) fn body(&self) -> String {
        let body = Body { id: &self.id, kind: self.kind, created_at: self.created_at, data: &self.data };
        // Plain data: serializing it cannot fail.
        serde_json::to_string(&body).unwrap_or_default()
    }

    pub(crate) fn message_created(message: &Message) -> Event {
        Event {
            id: derived_id(&format!("message.created:{}", message.id)),
            kind: EventType::MessageCreated,
            created_at: message.created_at,
            room_id: message.room_id,
            data: Data::Message { room_id: message.room_id, message: Box::new(message.clone()) },
        }
    }

    /// An edit; its id is the message's and the edit's time, so that each
    /// edit is an event of its own and the same edit is always the same one.
    pub(crate) fn message_updated(message: &Message) -> Event {
        let at = message.edited_at.unwrap_or(message.created_at);
        Event {
            id: derived_id(&format!("message.updated:{}:{}", message.id, at.as_millis())),
            kind: EventType::MessageUpdated,
            created_at: at,
            room_id: message.room_id,
            data: Data::Message { room_id: message.room_id, message: Box::new(message.clone()) },
        }
    }

    pub(crate) fn message_deleted(message: &Message) -> Event {
        Event {
            id: derived_id(&format!("message.deleted:{}", message.id)),
            kind: EventType::MessageDeleted,
            created_at: message.edited_at.unwrap_or_else(Timestamp::now),
            room_id: message.room_id,
            data: Data::MessageId { room_id: message.room_id, message_id: message.id },
        }
    }

    pub(crate) fn room_created(room: &Room) -> Event {
        Event {
            id: derived_id(&format!("room.created:{}", room.id)),
            kind: EventType::RoomCreated,
            created_at: room.created_at,
            room_id: room.id,
            data: Data::Room { room: Box::new(room.clone()) },
        }
    }

    /// A member named when the room was made: found again by a catch-up
    /// with the room, so its id is derived.
    pub(crate) fn initial_member(room: &Room, user: &User) -> Event {
        Event {
            id: derived_id(&format!("member.added:{}:{}:initial", room.id, user.id)),
            kind: EventType::MemberAdded,
            created_at: room.created_at,
            room_id: room.id,
            data: Data::Member { room_id: room.id, user: Box::new(user.clone()) },
        }
    }

    pub(crate) fn member_added(room_id: RoomId, user: &User) -> Event {
        Event {
            id: fresh_id(),
            kind: EventType::MemberAdded,
            created_at: Timestamp::now(),
            room_id,
            data: Data::Member { room_id, user: Box::new(user.clone()) },
        }
    }

    pub(crate) fn member_removed(room_id: RoomId, user_id: &UserId) -> Event {
        Event {
            id: fresh_id(),
            kind: EventType::MemberRemoved,
            created_at: Timestamp::now(),
            room_id,
            data: Data::MemberId { room_id, user_id: user_id.clone() },
        }
    }

    /// A support room's first message was stored; `at` is its time.
    pub(crate) fn support_opened(room: &Room, at: Timestamp) -> Event {
        Event {
            id: derived_id(&format!("support.opened:{}", room.id)),
            kind: EventType::SupportOpened,
            created_at: at,
            room_id: room.id,
            data: Data::Room { room: Box::new(room.clone()) },
        }
    }

    /// A support room announced as changed: closed (once, for good) or
    /// claimed (the latest claim wins, so each claim is an event of its own).
    pub(crate) fn support_changed(room: &Room) -> Event {
        let (id, kind) = if room.closed {
            (derived_id(&format!("support.closed:{}", room.id)), EventType::SupportClosed)
        } else {
            (fresh_id(), EventType::SupportClaimed)
        };
        Event {
            id,
            kind,
            created_at: Timestamp::now(),
            room_id: room.id,
            data: Data::Room { room: Box::new(room.clone()) },
        }
    }

    /// A group or direct room's settings changed (`room:update`).
    pub(crate) fn room_updated(room: &Room) -> Event {
        Event {
            id: fresh_id(),
            kind: EventType::RoomUpdated,
            created_at: Timestamp::now(),
            room_id: room.id,
            data: Data::Room { room: Box::new(room.clone()) },
        }
    }
}

/// A new, time-ordered id (UUIDv7).
fn fresh_id() -> String {
    uuid::Uuid::now_v7().to_string()
}

/// The id of the event `name` stands for, the same wherever and whenever it
/// is made: a UUID (version 8) of the first 16 bytes of its SHA-256.
fn derived_id(name: &str) -> String {
    let hash = Sha256::digest(name.as_bytes());
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&hash[..16]);
    uuid::Builder::from_custom_bytes(bytes).into_uuid().to_string()
}

#[cfg(test)]
mod tests {
    use chat_core::{RoomKind, Visibility};
    use serde_json::{Value, json};

    use super::*;

    fn uid(id: &str) -> UserId {
        UserId::new(id).expect("valid user id")
    }

    fn message(room: RoomId, seq: u64) -> Message {
        Message {
            id: MessageId::generate(),
            room_id: room,
            seq,
            sender_id: uid("ada"),
            client_msg_id: format!("c{seq}"),
            body: "hello".into(),
            attachments: Vec::new(),
            reply_to: None,
            created_at: Timestamp::from_millis(1_767_323_045_000),
            edited_at: None,
            deleted: false,
            call: None,
        }
    }

    fn room(kind: RoomKind) -> Room {
        Room {
            id: RoomId::generate(),
            kind,
            name: None,
            topic: None,
            visibility: Visibility::Private,
            created_by: uid("vera"),
            created_at: Timestamp::from_millis(1_767_323_040_000),
            last_seq: 0,
            claimed_by: None,
            closed: false,
        }
    }

    fn body(event: &Event) -> Value {
        serde_json::from_str(&event.body()).expect("the body is JSON")
    }

    #[test]
    fn bodies_carry_id_type_time_and_the_data_of_each_type() {
        let support = room(RoomKind::Support);
        let m = message(support.id, 1);
        let created = body(&Event::message_created(&m));
        assert_eq!(
            created,
            json!({
                "id": created["id"], "type": "message.created", "created_at": "2026-01-02T03:04:05.000Z",
                "data": {"room_id": support.id, "message": m}
            })
        );
        let keys: Vec<&str> = created.as_object().expect("object").keys().map(String::as_str).collect();
        assert_eq!(keys.len(), 4, "{keys:?}");
        assert!(Event::message_created(&m).body().starts_with(r#"{"id":""#), "id first, as documented");
        assert_eq!(body(&Event::message_deleted(&m))["data"], json!({"room_id": support.id, "message_id": m.id}));
        assert_eq!(body(&Event::room_created(&support))["data"], json!({"room": support}));
        let vera = User::new(uid("vera"), "Vera");
        assert_eq!(body(&Event::member_added(support.id, &vera))["data"], json!({"room_id": support.id, "user": vera}));
        assert_eq!(
            body(&Event::member_removed(support.id, &vera.id))["data"],
            json!({"room_id": support.id, "user_id": "vera"})
        );
        let closed = Room { closed: true, ..support.clone() };
        assert_eq!(body(&Event::support_changed(&closed))["type"], "support.closed");
        let claimed = Room { claimed_by: Some(uid("agent")), ..support.clone() };
        assert_eq!(body(&Event::support_changed(&claimed))["type"], "support.claimed");
        assert_eq!(body(&Event::support_opened(&support, m.created_at))["data"], json!({"room": support}));
    }

    #[test]
    fn what_a_catch_up_finds_again_has_the_same_id() {
        let group = room(RoomKind::Group);
        let m = message(group.id, 3);
        assert_eq!(Event::message_created(&m), Event::message_created(&m.clone()));
        let mut edited = m.clone();
        edited.edited_at = Some(Timestamp::from_millis(1_767_323_050_000));
        let first = Event::message_updated(&edited);
        assert_eq!(first.id, Event::message_updated(&edited).id);
        edited.edited_at = Some(Timestamp::from_millis(1_767_323_051_000));
        assert_ne!(first.id, Event::message_updated(&edited).id, "each edit is its own event");
        assert_ne!(Event::message_created(&m).id, Event::message_deleted(&m).id);
        assert_eq!(Event::room_created(&group).id, Event::room_created(&group).id);
        let bob = User::new(uid("bob"), "Bob");
        assert_eq!(Event::initial_member(&group, &bob).id, Event::initial_member(&group, &bob).id);
        assert_ne!(Event::member_added(group.id, &bob).id, Event::member_added(group.id, &bob).id);
        let id = Event::message_created(&m).id;
        assert_eq!(id.parse::<uuid::Uuid>().expect("a UUID").get_version_num(), 8);
    }
}
