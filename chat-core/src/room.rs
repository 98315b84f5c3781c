//! Rooms, their members and the summaries a user sees.

use serde::{Deserialize, Serialize};

use crate::id::{RoomId, UserId};
use crate::time::Timestamp;

/// What a room is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum RoomKind {
    /// Two users; made once per pair.
    Direct,
    /// Any number of users.
    Group,
    /// A website visitor and the users holding the `support` role.
    Support,
}

impl RoomKind {
    /// The name used on the wire and in stores.
    pub fn as_str(self) -> &'static str {
        match self {
            RoomKind::Direct => "direct",
            RoomKind::Group => "group",
            RoomKind::Support => "support",
        }
    }

    /// Parses [`RoomKind::as_str`] output.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "direct" => Some(RoomKind::Direct),
            "group" => Some(RoomKind::Group),
            "support" => Some(RoomKind::Support),
            _ => None,
        }
    }
}

/// Who may join a room.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum Visibility {
    /// Any user may join (group rooms only).
    Public,
    /// Only members, and those a member adds.
    Private,
}

impl Visibility {
    /// The name used on the wire and in stores.
    pub fn as_str(self) -> &'static str {
        match self {
            Visibility::Public => "public",
            Visibility::Private => "private",
        }
    }

    /// Parses [`Visibility::as_str`] output.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "public" => Some(Visibility::Public),
            "private" => Some(Visibility::Private),
            _ => None,
        }
    }
}

/// A member's role inside one room.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum MemberRole {
    /// An ordinary member.
    Member,
    /// May delete others' messages.
    Admin,
    /// The creator; everything an admin may do.
    Owner,
}

impl MemberRole {
    /// The name used on the wire and in stores.
    pub fn as_str(self) -> &'static str {
        match self {
            MemberRole::Member => "member",
            MemberRole::Admin => "admin",
            MemberRole::Owner => "owner",
        }
    }

    /// Parses [`MemberRole::as_str`] output.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "member" => Some(MemberRole::Member),
            "admin" => Some(MemberRole::Admin),
            "owner" => Some(MemberRole::Owner),
            _ => None,
        }
    }

    /// Admins and owners moderate the room.
    pub fn is_admin(self) -> bool {
        self >= MemberRole::Admin
    }
}

/// A room.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Room {
    /// Server-made id.
    pub id: RoomId,
    /// Direct, group or support.
    pub kind: RoomKind,
    /// Optional display name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// What the room is about, as its owner or an admin set it (`room:update`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub topic: Option<String>,
    /// Public or private.
    pub visibility: Visibility,
    /// The user who made it (for a support room: the visitor).
    pub created_by: UserId,
    /// When it was made.
    pub created_at: Timestamp,
    /// The seq of the newest message; 0 when there is none.
    pub last_seq: u64,
    /// The support agent who took the conversation, if one did (a bridge's
    /// "Claim"); the latest claim wins.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub claimed_by: Option<UserId>,
    /// Whether the room was closed to new messages (a bridge's "Close").
    /// Closing is for good: sends are refused from then on.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub closed: bool,
}

/// A room as one user sees it in their list.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct RoomSummary {
    /// The room.
    #[serde(flatten)]
    pub room: Room,
    /// Messages after the user's read cursor.
    pub unread: u64,
    /// The user's read cursor.
    pub read_seq: u64,
    /// Whether the user muted the room (`room:mute`) and the mute holds now.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub muted: bool,
    /// When a mute with an end ends; absent for a mute until `room:unmute`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub muted_until: Option<Timestamp>,
}

impl RoomSummary {
    /// Builds a summary from a room and the user's read cursor.
    pub fn new(room: Room, read_seq: u64) -> Self {
        let unread = room.last_seq.saturating_sub(read_seq);
        RoomSummary { room, unread, read_seq, muted: false, muted_until: None }
    }

    /// The same, with the user's mute as the store keeps it
    /// ([`Member::muted_until`]), judged at `now`.
    pub fn with_mute(mut self, muted_until: Option<Timestamp>, now: Timestamp) -> Self {
        let mute = mute_at(muted_until, now);
        self.muted = mute.is_some();
        self.muted_until = mute.flatten();
        self
    }
}

/// The stored end of a mute that lasts until `room:unmute`: far beyond any
/// real date, so that "muted at `t`" is one comparison for every mute.
pub const MUTED_FOREVER: Timestamp = Timestamp::from_millis(253_402_300_799_999);

/// How a stored `muted_until` reads at `now`: `None`, not muted (never, or
/// the mute ended); `Some(None)`, muted until `room:unmute`; `Some(Some(t))`,
/// muted until `t`.
pub fn mute_at(muted_until: Option<Timestamp>, now: Timestamp) -> Option<Option<Timestamp>> {
    match muted_until {
        Some(t) if t >= MUTED_FOREVER => Some(None),
        Some(t) if t > now => Some(Some(t)),
        _ => None,
    }
}

/// How far one member of a room has received and read, as the `receipts` of
/// a `room:join` reply: a client that (re)joins learns the ticks of messages
/// whose `message:status` events it missed while away.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberReceipts {
    /// The member.
    pub user_id: UserId,
    /// Highest seq their clients have acknowledged receiving.
    pub delivered_seq: u64,
    /// Highest seq they have read.
    pub read_seq: u64,
}

/// One user's membership of one room.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    /// The room.
    pub room_id: RoomId,
    /// The member.
    pub user_id: UserId,
    /// Their role in this room.
    pub role: MemberRole,
    /// When they became a member.
    pub joined_at: Timestamp,
    /// Highest seq their clients have acknowledged receiving.
    pub delivered_seq: u64,
    /// Highest seq they have read.
    pub read_seq: u64,
    /// Until when they muted the room ([`MUTED_FOREVER`] for a mute until
    /// `room:unmute`); a past time is no mute.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub muted_until: Option<Timestamp>,
}

impl Member {
    /// Whether the member's mute holds at `now`.
    pub fn is_muted(&self, now: Timestamp) -> bool {
        mute_at(self.muted_until, now).is_some()
    }
}

/// A user barred from a room (`room:remove` with `ban`) until `room:unban`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ban {
    /// The banned user.
    pub user_id: UserId,
    /// The owner or admin who banned them.
    pub banned_by: UserId,
    /// When.
    pub banned_at: Timestamp,
}

/// What `room:update` changes: `None` keeps a field, `Some(None)` clears it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RoomChanges {
    /// The new name.
    pub name: Option<Option<String>>,
    /// The new topic.
    pub topic: Option<Option<String>>,
}

impl RoomChanges {
    /// Whether nothing would change.
    pub fn is_empty(&self) -> bool {
        self.name.is_none() && self.topic.is_none()
    }

    /// Applies the changes to a room.
    pub fn apply(&self, room: &mut Room) {
        if let Some(name) = &self.name {
            room.name.clone_from(name);
        }
        if let Some(topic) = &self.topic {
            room.topic.clone_from(topic);
        }
    }
}

/// Everything needed to make a room.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewRoom {
    /// The id the room will have.
    pub id: RoomId,
    /// Direct, group or support.
    pub kind: RoomKind,
    /// Optional display name.
    pub name: Option<String>,
    /// Public or private.
    pub visibility: Visibility,
    /// The creator (owner).
    pub created_by: UserId,
    /// When it is made.
    pub created_at: Timestamp,
    /// Initial members with their roles, the creator included.
    pub members: Vec<(UserId, MemberRole)>,
}

impl NewRoom {
    /// The room this describes, before any message.
    pub fn room(&self) -> Room {
        Room {
            id: self.id,
            kind: self.kind,
            name: self.name.clone(),
            topic: None,
            visibility: self.visibility,
            created_by: self.created_by.clone(),
            created_at: self.created_at,
            last_seq: 0,
            claimed_by: None,
            closed: false,
        }
    }

    /// The key that makes a direct room unique per pair of users, whatever their order.
    pub fn direct_key(a: &UserId, b: &UserId) -> String {
        let (lo, hi) = if a <= b { (a, b) } else { (b, a) };
        // Lengths first, so that no pair of ids can produce the same key as another pair.
        format!("{}:{}:{}", lo.as_str().len(), lo, hi)
    }
}

/// Which cursor a receipt moves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ReceiptKind {
    /// The user's clients received messages up to a seq.
    Delivered,
    /// The user read messages up to a seq (which implies delivered).
    Read,
}

impl ReceiptKind {
    /// The name used on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            ReceiptKind::Delivered => "delivered",
            ReceiptKind::Read => "read",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn direct_key_ignores_order_and_cannot_collide() {
        let a = UserId::new("a:b").expect("valid");
        let b = UserId::new("c").expect("valid");
        assert_eq!(NewRoom::direct_key(&a, &b), NewRoom::direct_key(&b, &a));
        let c = UserId::new("a").expect("valid");
        let d = UserId::new("b:c").expect("valid");
        assert_ne!(NewRoom::direct_key(&a, &b), NewRoom::direct_key(&c, &d));
    }

    #[test]
    fn unread_is_what_lies_after_the_read_cursor() {
        let room = Room {
            id: RoomId::generate(),
            kind: RoomKind::Group,
            name: None,
            topic: None,
            visibility: Visibility::Public,
            created_by: UserId::new("u").expect("valid"),
            created_at: Timestamp::now(),
            last_seq: 10,
            claimed_by: None,
            closed: false,
        };
        assert_eq!(RoomSummary::new(room.clone(), 4).unread, 6);
        assert_eq!(RoomSummary::new(room, 12).unread, 0);
    }

    #[test]
    fn owners_and_admins_moderate() {
        assert!(MemberRole::Owner.is_admin());
        assert!(MemberRole::Admin.is_admin());
        assert!(!MemberRole::Member.is_admin());
    }
}
