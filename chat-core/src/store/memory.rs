//! An in-memory [`Store`], for tests and for embedding the engine where nothing
//! needs to outlive the process.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Mutex;

use async_trait::async_trait;

use super::{
    ActiveRoom, AttachmentStore, Joining, MemberLimits, QueueCursor, QueuedRoom, Store, attachment_taken_error,
    banned_error, quota_error,
};
use crate::attachment::{Posted, StoredAttachment};
use crate::bridge::{BridgeStore, Job, JobCounts, JobStatus, NewJob, NewLink};
use crate::call::{Call, CallStart};
use crate::error::{Error, Result};
use crate::id::{AttachmentId, CallId, MessageId, RoomId, SessionId, UserId};
use crate::message::{Appended, HistoryPage, HistoryQuery, Message, NewMessage};
use crate::push::{PushStore, PushSubscription};
use crate::room::{Ban, Member, MemberRole, NewRoom, ReceiptKind, Room, RoomChanges, RoomKind, RoomSummary};
use crate::search::{SearchHit, SearchPage, SearchQuery};
use crate::time::Timestamp;
use crate::user::{User, UserAccount, UserListQuery, UserPatch};

/// Keeps everything in one mutex-guarded map set. Every method holds the lock
/// only for in-memory work, never across an await.
#[derive(Debug, Default)]
pub struct MemoryStore {
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    /// Every user ever stored, deleted ones as [`User::deleted`].
    users: HashMap<UserId, UserAccount>,
    rooms: HashMap<RoomId, RoomState>,
    direct: HashMap<String, RoomId>,
    memberships: HashMap<UserId, HashSet<RoomId>>,
    /// How many rooms each user created or joined by themselves.
    own_rooms: HashMap<UserId, u64>,
    /// Each creator's open support room.
    open_support: HashMap<UserId, RoomId>,
    /// Per room, the users deleted while they were members, in deletion order.
    deleted_members: HashMap<RoomId, Vec<UserId>>,
    /// Bridge jobs by id; ids only grow, so the map is in enqueue order.
    jobs: BTreeMap<i64, Job>,
    last_job_id: i64,
    /// Bridge links by (bridge, kind, local id).
    links: BTreeMap<(String, String, String), String>,
    /// Bridge leases: the holder and the end of its lease, by bridge.
    leases: HashMap<String, (String, Timestamp)>,
    /// Upload records by id.
    attachments: HashMap<AttachmentId, StoredAttachment>,
    /// Server secrets by name.
    secrets: HashMap<String, String>,
    /// Calls by id (ids are time-sortable, so the map is oldest first).
    calls: BTreeMap<CallId, Call>,
    /// Push subscriptions, oldest first (one stored again moves to the end).
    push: Vec<PushSubscription>,
}

#[derive(Debug)]
struct RoomState {
    room: Room,
    last_activity: Timestamp,
    /// When the first message was stored.
    first_message_at: Option<Timestamp>,
    /// The members who joined by themselves.
    self_joined: HashSet<UserId>,
    /// Members in joining order, each with a monotonically growing position.
    members: BTreeMap<u64, Member>,
    member_pos: HashMap<UserId, u64>,
    next_pos: u64,
    messages: Vec<Message>,
    by_id: HashMap<MessageId, usize>,
    idempotency: HashMap<(UserId, String), usize>,
    bans: HashMap<UserId, Ban>,
}

impl State {
    /// Removes a membership and what counts it; `false` when there was none.
    fn remove_member(&mut self, room: RoomId, user: &UserId) -> bool {
        let state = self;
        let Some(rs) = state.rooms.get_mut(&room) else {
            return false;
        };
        let Some(pos) = rs.member_pos.remove(user) else {
            return false;
        };
        rs.members.remove(&pos);
        if rs.self_joined.remove(user)
            && let Some(n) = state.own_rooms.get_mut(user)
        {
            *n -= 1;
            if *n == 0 {
                state.own_rooms.remove(user);
            }
        }
        if let Some(set) = state.memberships.get_mut(user) {
            set.remove(&room);
            if set.is_empty() {
                state.memberships.remove(user);
            }
        }
        true
    }

    /// A user who is not deleted, to change.
    fn live_user_mut(&mut self, id: &UserId) -> Option<&mut UserAccount> {
        self.users.get_mut(id).filter(|a| !a.user.deleted)
    }

    fn own_room_count(&self, user: &UserId) -> u64 {
        self.own_rooms.get(user).copied().unwrap_or(0)
    }

    fn message_mut(&mut self, room: RoomId, id: MessageId) -> Option<&mut Message> {
        let rs = self.rooms.get_mut(&room)?;
        let idx = *rs.by_id.get(&id)?;
        rs.messages.get_mut(idx)
    }
}

impl RoomState {
    fn member_mut(&mut self, user: &UserId) -> Option<&mut Member> {
        let pos = self.member_pos.get(user)?;
        self.members.get_mut(pos)
    }

    fn add(&mut self, member: Member) -> bool {
        if self.member_pos.contains_key(&member.user_id) {
            return false;
        }
        let pos = self.next_pos;
        self.next_pos += 1;
        self.member_pos.insert(member.user_id.clone(), pos);
        self.members.insert(pos, member);
        true
    }
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave the maps half-updated in a
        // way later calls would trip over, so a poisoned lock is still usable.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[async_trait]
impl Store for MemoryStore {
    async fn upsert_user(&self, user: &User) -> Result<()> {
        let mut state = self.lock();
        match state.users.get_mut(&user.id) {
            Some(account) if account.user.deleted => Err(Error::conflict("the user was deleted")),
            Some(account) => {
                account.user = User { deleted: false, ..user.clone() };
                Ok(())
            }
            None => {
                let account = UserAccount {
                    user: User { deleted: false, ..user.clone() },
                    active: true,
                    created_at: Timestamp::now(),
                    last_seen: None,
                    tokens_revoked_at: None,
                    profile_set_at: None,
                };
                state.users.insert(user.id.clone(), account);
                Ok(())
            }
        }
    }

    async fn user(&self, id: &UserId) -> Result<Option<User>> {
        Ok(self.lock().users.get(id).map(|a| a.user.clone()))
    }

    async fn users(&self, ids: &[UserId]) -> Result<Vec<User>> {
        let state = self.lock();
        Ok(ids.iter().filter_map(|id| state.users.get(id).map(|a| a.user.clone())).collect())
    }

    async fn search_users(&self, query: &str, limit: u32) -> Result<Vec<User>> {
        let needle = query.to_ascii_lowercase();
        let state = self.lock();
        let mut found: Vec<User> =
            state.users.values().map(|a| &a.user).filter(|u| !u.deleted && user_matches(u, &needle)).cloned().collect();
        found.sort_by(|a, b| a.name.cmp(&b.name).then_with(|| a.id.cmp(&b.id)));
        found.truncate(limit as usize);
        Ok(found)
    }

    async fn account(&self, id: &UserId) -> Result<Option<UserAccount>> {
        Ok(self.lock().users.get(id).cloned())
    }

    async fn list_accounts(&self, query: &UserListQuery) -> Result<Vec<UserAccount>> {
        let needle = query.text.as_deref().map(str::to_ascii_lowercase);
        let state = self.lock();
        let mut found: Vec<&UserAccount> = state
            .users
            .values()
            .filter(|a| !a.user.deleted)
            .filter(|a| query.after.as_ref().is_none_or(|after| a.user.id.as_str() > after.as_str()))
            .filter(|a| needle.as_deref().is_none_or(|n| user_matches(&a.user, n)))
            .collect();
        found.sort_by(|a, b| a.user.id.as_str().cmp(b.user.id.as_str()));
        Ok(found.into_iter().take(query.limit as usize).cloned().collect())
    }

    async fn update_user(&self, id: &UserId, patch: &UserPatch, at: Timestamp) -> Result<Option<User>> {
        let mut state = self.lock();
        let Some(account) = state.live_user_mut(id) else { return Ok(None) };
        account.user = patch.apply(account.user.clone());
        account.profile_set_at = Some(at);
        Ok(Some(account.user.clone()))
    }

    async fn set_user_active(&self, id: &UserId, active: bool) -> Result<bool> {
        let mut state = self.lock();
        let Some(account) = state.live_user_mut(id) else { return Ok(false) };
        account.active = active;
        Ok(true)
    }

    async fn revoke_tokens(&self, id: &UserId, at: Timestamp) -> Result<bool> {
        let mut state = self.lock();
        let Some(account) = state.live_user_mut(id) else { return Ok(false) };
        // Never back: a process whose clock is behind cannot let older
        // tokens in again.
        account.tokens_revoked_at = account.tokens_revoked_at.max(Some(at));
        Ok(true)
    }

    async fn delete_user(&self, id: &UserId, at: Timestamp) -> Result<Option<Vec<RoomId>>> {
        // The order of deletions is the order of calls; `at` is not kept.
        let _ = at;
        let mut state = self.lock();
        let Some(account) = state.live_user_mut(id) else { return Ok(None) };
        account.user = User::deleted(id.clone());
        let rooms: Vec<RoomId> = state.memberships.remove(id).map(|set| set.into_iter().collect()).unwrap_or_default();
        for room in &rooms {
            if let Some(rs) = state.rooms.get_mut(room)
                && let Some(pos) = rs.member_pos.remove(id)
            {
                rs.members.remove(&pos);
                rs.self_joined.remove(id);
            }
            state.deleted_members.entry(*room).or_default().push(id.clone());
        }
        state.own_rooms.remove(id);
        state.push.retain(|s| &s.user_id != id);
        Ok(Some(rooms))
    }

    async fn deleted_members(&self, room: RoomId) -> Result<Vec<UserId>> {
        Ok(self.lock().deleted_members.get(&room).cloned().unwrap_or_default())
    }

    async fn touch_user(&self, id: &UserId, at: Timestamp) -> Result<Option<UserAccount>> {
        let mut state = self.lock();
        let Some(account) = state.users.get_mut(id) else { return Ok(None) };
        account.last_seen = Some(at);
        Ok(Some(account.clone()))
    }

    async fn create_room(&self, new: NewRoom, limits: MemberLimits) -> Result<(Room, bool)> {
        let mut state = self.lock();
        let direct_key = match (new.kind, new.members.as_slice()) {
            (RoomKind::Direct, [(a, _), (b, _)]) => Some(NewRoom::direct_key(a, b)),
            (RoomKind::Direct, _) => return Err(Error::invalid("a direct room has exactly two members")),
            _ => None,
        };
        if let Some(key) = &direct_key
            && let Some(existing) = state.direct.get(key).and_then(|id| state.rooms.get(id))
        {
            return Ok((existing.room.clone(), false));
        }
        if new.kind == RoomKind::Support
            && let Some(existing) = state.open_support.get(&new.created_by).and_then(|id| state.rooms.get(id))
        {
            return Ok((existing.room.clone(), false));
        }
        if state.own_room_count(&new.created_by) >= limits.max_own_rooms {
            return Err(limits.own_rooms_error());
        }
        if state.rooms.contains_key(&new.id) {
            return Err(Error::conflict("room id already taken"));
        }
        let room = new.room();
        let mut rs = RoomState {
            room: room.clone(),
            last_activity: new.created_at,
            first_message_at: None,
            self_joined: HashSet::from([new.created_by.clone()]),
            members: BTreeMap::new(),
            member_pos: HashMap::new(),
            next_pos: 0,
            messages: Vec::new(),
            by_id: HashMap::new(),
            idempotency: HashMap::new(),
            bans: HashMap::new(),
        };
        for (user_id, role) in new.members {
            state.memberships.entry(user_id.clone()).or_default().insert(room.id);
            rs.add(Member {
                room_id: room.id,
                user_id,
                role,
                joined_at: new.created_at,
                delivered_seq: 0,
                read_seq: 0,
                muted_until: None,
            });
        }
        if let Some(key) = direct_key {
            state.direct.insert(key, room.id);
        }
        if room.kind == RoomKind::Support {
            state.open_support.insert(room.created_by.clone(), room.id);
        }
        *state.own_rooms.entry(room.created_by.clone()).or_default() += 1;
        state.rooms.insert(room.id, rs);
        Ok((room, true))
    }

    async fn room(&self, id: RoomId) -> Result<Option<Room>> {
        Ok(self.lock().rooms.get(&id).map(|r| r.room.clone()))
    }

    async fn claim_room(&self, id: RoomId, user: &UserId) -> Result<Option<(Room, bool)>> {
        let mut state = self.lock();
        let Some(rs) = state.rooms.get_mut(&id) else { return Ok(None) };
        let changed = rs.room.claimed_by.as_ref() != Some(user);
        rs.room.claimed_by = Some(user.clone());
        Ok(Some((rs.room.clone(), changed)))
    }

    async fn close_room(&self, id: RoomId) -> Result<Option<(Room, bool)>> {
        let mut state = self.lock();
        let Some(rs) = state.rooms.get_mut(&id) else { return Ok(None) };
        let changed = !rs.room.closed;
        rs.room.closed = true;
        let room = rs.room.clone();
        if state.open_support.get(&room.created_by) == Some(&room.id) {
            state.open_support.remove(&room.created_by);
        }
        Ok(Some((room, changed)))
    }

    async fn update_room(&self, id: RoomId, changes: &RoomChanges) -> Result<Option<Room>> {
        let mut state = self.lock();
        let Some(rs) = state.rooms.get_mut(&id) else { return Ok(None) };
        changes.apply(&mut rs.room);
        Ok(Some(rs.room.clone()))
    }

    async fn rooms_of_user(&self, user: &UserId) -> Result<Vec<RoomSummary>> {
        let now = Timestamp::now();
        let state = self.lock();
        let Some(ids) = state.memberships.get(user) else {
            return Ok(Vec::new());
        };
        let mut rooms: Vec<(Timestamp, RoomSummary)> = ids
            .iter()
            .filter_map(|id| state.rooms.get(id))
            .filter_map(|rs| {
                let m = rs.member_pos.get(user).and_then(|p| rs.members.get(p))?;
                let summary = RoomSummary::new(rs.room.clone(), m.read_seq).with_mute(m.muted_until, now);
                Some((rs.last_activity, summary))
            })
            .collect();
        rooms.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| b.1.room.id.cmp(&a.1.room.id)));
        Ok(rooms.into_iter().map(|(_, s)| s).collect())
    }

    async fn support_queue(&self, after: Option<QueueCursor>, limit: u32) -> Result<Vec<QueuedRoom>> {
        let state = self.lock();
        let mut rooms: Vec<(Timestamp, RoomId, &Room)> = state
            .rooms
            .values()
            .filter(|rs| rs.room.kind == RoomKind::Support && !rs.room.closed)
            .filter_map(|rs| Some((rs.first_message_at?, rs.room.id, &rs.room)))
            .filter(|(at, id, _)| after.is_none_or(|c| (*at, *id) > (c.waiting_since, c.room_id)))
            .collect();
        rooms.sort_by_key(|r| (r.0, r.1));
        Ok(rooms
            .into_iter()
            .take(limit as usize)
            .map(|(waiting_since, _, room)| QueuedRoom { room: room.clone(), waiting_since })
            .collect())
    }

    async fn support_rooms(&self, limit: u32) -> Result<Vec<Room>> {
        let state = self.lock();
        let mut rooms: Vec<(Timestamp, &Room)> = state
            .rooms
            .values()
            .filter(|rs| rs.room.kind == RoomKind::Support)
            .map(|rs| (rs.last_activity, &rs.room))
            .collect();
        rooms.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| b.1.id.cmp(&a.1.id)));
        Ok(rooms.into_iter().take(limit as usize).map(|(_, room)| room.clone()).collect())
    }

    async fn rooms_active_since(&self, since: Timestamp, after: Option<RoomId>, limit: u32) -> Result<Vec<ActiveRoom>> {
        let state = self.lock();
        let mut rooms: Vec<(Timestamp, RoomId, &Room)> = state
            .rooms
            .values()
            .map(|rs| (rs.last_activity, rs.room.id, &rs.room))
            .filter(|(at, id, _)| match after {
                Some(after) => (*at, *id) > (since, after),
                None => *at >= since,
            })
            .collect();
        rooms.sort_by_key(|r| (r.0, r.1));
        Ok(rooms
            .into_iter()
            .take(limit as usize)
            .map(|(last_activity, _, room)| ActiveRoom { room: room.clone(), last_activity })
            .collect())
    }

    async fn room_count_of_user(&self, user: &UserId) -> Result<u64> {
        Ok(self.lock().memberships.get(user).map_or(0, |s| s.len() as u64))
    }

    async fn member(&self, room: RoomId, user: &UserId) -> Result<Option<Member>> {
        let state = self.lock();
        Ok(state.rooms.get(&room).and_then(|rs| rs.member_pos.get(user).and_then(|p| rs.members.get(p))).cloned())
    }

    async fn members(&self, room: RoomId) -> Result<Vec<Member>> {
        let state = self.lock();
        Ok(state.rooms.get(&room).map(|rs| rs.members.values().cloned().collect()).unwrap_or_default())
    }

    async fn member_count(&self, room: RoomId) -> Result<u64> {
        Ok(self.lock().rooms.get(&room).map_or(0, |rs| rs.members.len() as u64))
    }

    async fn add_member(&self, room: RoomId, user: &UserId, joining: Joining, limits: MemberLimits) -> Result<bool> {
        let mut state = self.lock();
        let own = state.own_room_count(user);
        let Some(rs) = state.rooms.get_mut(&room) else {
            return Err(Error::NotFound("room"));
        };
        if rs.member_pos.contains_key(user) {
            return Ok(false);
        }
        if rs.bans.contains_key(user) {
            return Err(banned_error());
        }
        limits.check_join(rs.members.len() as u64, own, joining.self_joined)?;
        let Joining { role, at, self_joined } = joining;
        rs.add(Member {
            room_id: room,
            user_id: user.clone(),
            role,
            joined_at: at,
            delivered_seq: 0,
            read_seq: 0,
            muted_until: None,
        });
        if self_joined {
            rs.self_joined.insert(user.clone());
            *state.own_rooms.entry(user.clone()).or_default() += 1;
        }
        state.memberships.entry(user.clone()).or_default().insert(room);
        Ok(true)
    }

    async fn remove_member(&self, room: RoomId, user: &UserId) -> Result<bool> {
        Ok(self.lock().remove_member(room, user))
    }

    async fn ban_member(&self, room: RoomId, ban: &Ban) -> Result<bool> {
        let mut state = self.lock();
        let Some(rs) = state.rooms.get_mut(&room) else {
            return Err(Error::NotFound("room"));
        };
        rs.bans.entry(ban.user_id.clone()).or_insert_with(|| ban.clone());
        Ok(state.remove_member(room, &ban.user_id))
    }

    async fn unban_member(&self, room: RoomId, user: &UserId) -> Result<bool> {
        Ok(self.lock().rooms.get_mut(&room).is_some_and(|rs| rs.bans.remove(user).is_some()))
    }

    async fn bans(&self, room: RoomId, limit: u32) -> Result<Vec<Ban>> {
        let state = self.lock();
        let mut bans: Vec<Ban> =
            state.rooms.get(&room).map(|rs| rs.bans.values().cloned().collect()).unwrap_or_default();
        bans.sort_by(|a, b| b.banned_at.cmp(&a.banned_at).then_with(|| a.user_id.cmp(&b.user_id)));
        bans.truncate(limit as usize);
        Ok(bans)
    }

    async fn set_member_role(&self, room: RoomId, user: &UserId, role: MemberRole) -> Result<bool> {
        let mut state = self.lock();
        let Some(member) = state.rooms.get_mut(&room).and_then(|rs| rs.member_mut(user)) else {
            return Ok(false);
        };
        member.role = role;
        Ok(true)
    }

    async fn set_muted(&self, room: RoomId, user: &UserId, until: Option<Timestamp>) -> Result<bool> {
        let mut state = self.lock();
        let Some(member) = state.rooms.get_mut(&room).and_then(|rs| rs.member_mut(user)) else {
            return Ok(false);
        };
        member.muted_until = until;
        Ok(true)
    }

    async fn co_members(&self, user: &UserId) -> Result<Vec<UserId>> {
        let state = self.lock();
        let mut out = HashSet::new();
        for room in state.memberships.get(user).into_iter().flatten() {
            if let Some(rs) = state.rooms.get(room) {
                out.extend(rs.member_pos.keys().filter(|u| *u != user).cloned());
            }
        }
        Ok(out.into_iter().collect())
    }

    async fn append_messages(&self, batch: Vec<NewMessage>) -> Result<Vec<Result<Appended>>> {
        let mut state = self.lock();
        let mut out = Vec::with_capacity(batch.len());
        for new in batch {
            let Some(rs) = state.rooms.get_mut(&new.room_id) else {
                out.push(Err(Error::NotFound("room")));
                continue;
            };
            if rs.room.closed {
                out.push(Err(Error::room_closed()));
                continue;
            }
            if !rs.member_pos.contains_key(&new.sender_id) {
                out.push(Err(Error::NotMember));
                continue;
            }
            let key = (new.sender_id.clone(), new.client_msg_id.clone());
            if let Some(&idx) = rs.idempotency.get(&key) {
                out.push(Ok(Appended { message: rs.messages[idx].clone(), created: false }));
                continue;
            }
            let seq = rs.room.last_seq + 1;
            let ids: Vec<AttachmentId> = new.attachments.iter().filter_map(|a| a.id.parse().ok()).collect();
            let postable = ids.len() == new.attachments.len()
                && ids.iter().all(|id| {
                    state
                        .attachments
                        .get(id)
                        .is_some_and(|a| a.uploader == new.sender_id && a.posted.is_none() && !a.removed)
                });
            if !postable {
                out.push(Err(attachment_taken_error()));
                continue;
            }
            for id in &ids {
                if let Some(a) = state.attachments.get_mut(id) {
                    a.posted = Some(Posted { room_id: new.room_id, message_id: new.id });
                }
            }
            let Some(rs) = state.rooms.get_mut(&new.room_id) else {
                out.push(Err(Error::NotFound("room")));
                continue;
            };
            let message = new.into_message(seq);
            rs.room.last_seq = seq;
            // The newest time seen: a message stamped earlier must not make the room look older.
            rs.last_activity = rs.last_activity.max(message.created_at);
            rs.first_message_at.get_or_insert(message.created_at);
            let idx = rs.messages.len();
            rs.messages.push(message.clone());
            rs.by_id.insert(message.id, idx);
            rs.idempotency.insert(key, idx);
            if let Some(m) = rs.member_mut(&message.sender_id) {
                m.read_seq = m.read_seq.max(seq);
                m.delivered_seq = m.delivered_seq.max(seq);
            }
            out.push(Ok(Appended { message, created: true }));
        }
        Ok(out)
    }

    async fn message(&self, room: RoomId, id: MessageId) -> Result<Option<Message>> {
        let state = self.lock();
        Ok(state.rooms.get(&room).and_then(|rs| rs.by_id.get(&id).map(|&i| rs.messages[i].clone())))
    }

    async fn edit_message(&self, room: RoomId, id: MessageId, body: &str, at: Timestamp) -> Result<Option<Message>> {
        let mut state = self.lock();
        let Some(msg) = state.message_mut(room, id) else {
            return Ok(None);
        };
        msg.body = body.to_owned();
        msg.edited_at = Some(at);
        Ok(Some(msg.clone()))
    }

    async fn delete_message(&self, room: RoomId, id: MessageId, at: Timestamp) -> Result<Option<Message>> {
        let mut state = self.lock();
        let Some(msg) = state.message_mut(room, id) else {
            return Ok(None);
        };
        msg.body.clear();
        let files = std::mem::take(&mut msg.attachments);
        msg.deleted = true;
        msg.edited_at = Some(at);
        let msg = msg.clone();
        for file in files {
            if let Some(a) = file.id.parse().ok().and_then(|id: AttachmentId| state.attachments.get_mut(&id)) {
                a.removed = true;
            }
        }
        Ok(Some(msg))
    }

    async fn history(&self, room: RoomId, q: HistoryQuery) -> Result<HistoryPage> {
        let state = self.lock();
        let Some(rs) = state.rooms.get(&room) else {
            return Ok(HistoryPage { messages: Vec::new(), has_more: false });
        };
        // Messages sit at index seq - 1, so a seq range is a slice.
        let total = rs.messages.len() as u64;
        let lo = q.after_seq.map_or(0, |a| a.min(total)); // first index included
        let hi = q.before_seq.map_or(total, |b| b.saturating_sub(1).min(total)); // end index, excluded
        if lo >= hi {
            return Ok(HistoryPage { messages: Vec::new(), has_more: false });
        }
        let limit = u64::from(q.limit);
        let (start, end, has_more) = if q.after_seq.is_some() {
            let end = (lo + limit).min(hi);
            (lo, end, end < hi)
        } else {
            let start = hi.saturating_sub(limit).max(lo);
            (start, hi, start > lo)
        };
        Ok(HistoryPage { messages: rs.messages[start as usize..end as usize].to_vec(), has_more })
    }

    async fn search_messages(&self, query: &SearchQuery) -> Result<SearchPage> {
        // Newest first by id (ids are time-ordered); the cursor is the id of
        // the last result given.
        let before = match &query.before {
            Some(text) => {
                Some(text.parse::<MessageId>().map_err(|_| Error::invalid("cursor is not one this server gave"))?)
            }
            None => None,
        };
        let state = self.lock();
        let Some(rooms) = state.memberships.get(&query.user) else {
            return Ok(SearchPage { results: Vec::new(), next: None });
        };
        let mut hits: Vec<(&Message, &Room)> = rooms
            .iter()
            .filter(|id| query.room.is_none_or(|only| only == **id))
            .filter_map(|id| state.rooms.get(id))
            .flat_map(|rs| rs.messages.iter().map(move |m| (m, &rs.room)))
            .filter(|(m, _)| !m.deleted && before.is_none_or(|b| m.id < b))
            .filter(|(m, _)| crate::search::matches(&m.body, &query.words))
            .collect();
        hits.sort_by_key(|(m, _)| std::cmp::Reverse(m.id));
        let limit = query.limit as usize;
        let more = hits.len() > limit;
        hits.truncate(limit);
        let next = more.then(|| hits.last().map(|(m, _)| m.id.to_string())).flatten();
        let results = hits.into_iter().map(|(m, r)| SearchHit { message: m.clone(), room: r.clone() }).collect();
        Ok(SearchPage { results, next })
    }

    async fn advance_cursor(&self, room: RoomId, user: &UserId, kind: ReceiptKind, up_to: u64) -> Result<Option<u64>> {
        let mut state = self.lock();
        let Some(m) = state.rooms.get_mut(&room).and_then(|rs| rs.member_mut(user)) else {
            return Ok(None);
        };
        let moved = match kind {
            ReceiptKind::Delivered => {
                let moved = up_to > m.delivered_seq;
                m.delivered_seq = m.delivered_seq.max(up_to);
                moved
            }
            ReceiptKind::Read => {
                let moved = up_to > m.read_seq;
                m.read_seq = m.read_seq.max(up_to);
                m.delivered_seq = m.delivered_seq.max(up_to);
                moved
            }
        };
        Ok(moved.then_some(up_to))
    }

    fn attachment_store(&self) -> Option<&dyn AttachmentStore> {
        Some(self)
    }

    async fn server_secret(&self, name: &str, candidate: &str) -> Result<String> {
        Ok(self.lock().secrets.entry(name.to_string()).or_insert_with(|| candidate.to_string()).clone())
    }

    async fn start_call(&self, call: &Call) -> Result<CallStart> {
        let mut state = self.lock();
        if state.calls.contains_key(&call.id) {
            return Err(Error::Conflict("call id taken".into()));
        }
        let live: Vec<Call> = state
            .calls
            .values()
            .filter(|c| c.is_live() && (c.involves(&call.caller.user_id) || c.involves(&call.callee.user_id)))
            .cloned()
            .collect();
        let start = call.start_against(&live);
        match &start {
            CallStart::Started => {
                state.calls.insert(call.id, call.clone());
            }
            CallStart::Busy(busy) => {
                state.calls.insert(busy.id, busy.clone());
            }
            _ => {}
        }
        Ok(start)
    }

    async fn call(&self, id: CallId) -> Result<Option<Call>> {
        Ok(self.lock().calls.get(&id).cloned())
    }

    async fn update_call(&self, call: &Call) -> Result<Option<Call>> {
        let mut state = self.lock();
        let Some(stored) = state.calls.get_mut(&call.id) else { return Ok(None) };
        if stored.version != call.version {
            return Ok(None);
        }
        stored.state = call.state;
        stored.caller.session = call.caller.session;
        stored.caller.until = call.caller.until;
        stored.callee.session = call.callee.session;
        stored.callee.until = call.callee.until;
        stored.accepted_at = call.accepted_at;
        stored.ended_at = call.ended_at;
        stored.end_reason = call.end_reason;
        stored.logged = call.logged;
        stored.version += 1;
        Ok(Some(stored.clone()))
    }

    async fn renew_calls(&self, legs: &[(CallId, SessionId)], until: Timestamp) -> Result<()> {
        let mut state = self.lock();
        for (id, session) in legs {
            let Some(call) = state.calls.get_mut(id).filter(|c| c.is_live()) else { continue };
            for party in [&mut call.caller, &mut call.callee] {
                if party.session == Some(*session) {
                    party.until = Some(until);
                }
            }
        }
        Ok(())
    }

    async fn due_calls(&self, now: Timestamp, limit: u32) -> Result<Vec<Call>> {
        let state = self.lock();
        let due = state.calls.values().filter(|c| c.deadline().is_some_and(|d| d <= now));
        Ok(due.take(limit as usize).cloned().collect())
    }

    async fn unlogged_calls(&self, before: Timestamp, limit: u32) -> Result<Vec<Call>> {
        let state = self.lock();
        let unlogged =
            state.calls.values().filter(|c| !c.is_live() && !c.logged && c.ended_at.is_some_and(|at| at <= before));
        Ok(unlogged.take(limit as usize).cloned().collect())
    }

    async fn mark_call_logged(&self, id: CallId) -> Result<()> {
        if let Some(call) = self.lock().calls.get_mut(&id) {
            call.logged = true;
        }
        Ok(())
    }

    fn bridge_store(&self) -> Option<&dyn BridgeStore> {
        Some(self)
    }

    fn push_store(&self) -> Option<&dyn PushStore> {
        Some(self)
    }

    async fn ping(&self) -> Result<()> {
        Ok(())
    }
}

/// Whether a user's id or name contains `needle` (already in ASCII lower
/// case), ignoring ASCII case.
fn user_matches(user: &User, needle: &str) -> bool {
    user.id.as_str().to_ascii_lowercase().contains(needle) || user.name.to_ascii_lowercase().contains(needle)
}

impl State {
    fn job_mut(&mut self, bridge: &str, id: i64) -> Option<&mut Job> {
        self.jobs.get_mut(&id).filter(|j| j.bridge == bridge)
    }

    /// Adds the jobs whose key is not taken; returns how many.
    fn enqueue(&mut self, jobs: Vec<NewJob>) -> u64 {
        let mut added = 0;
        for new in jobs {
            if self.jobs.values().any(|j| j.bridge == new.bridge && j.dedupe_key == new.dedupe_key) {
                continue;
            }
            self.last_job_id += 1;
            let id = self.last_job_id;
            let job = Job {
                id,
                bridge: new.bridge,
                queue: new.queue,
                dedupe_key: new.dedupe_key,
                kind: new.kind,
                payload: new.payload,
                status: JobStatus::Pending,
                attempts: 0,
                run_at: new.created_at,
                last_error: None,
                created_at: new.created_at,
            };
            self.jobs.insert(id, job);
            added += 1;
        }
        added
    }
}

#[async_trait]
impl BridgeStore for MemoryStore {
    async fn enqueue_jobs(&self, jobs: Vec<NewJob>) -> Result<u64> {
        Ok(self.lock().enqueue(jobs))
    }

    async fn enqueue_and_link(&self, jobs: Vec<NewJob>, links: Vec<NewLink>) -> Result<u64> {
        // One lock, so that nobody sees the jobs without the links.
        let mut state = self.lock();
        let added = state.enqueue(jobs);
        for link in links {
            state.links.insert((link.bridge, link.kind, link.local), link.remote);
        }
        Ok(added)
    }

    async fn due_jobs(&self, bridge: &str, now: Timestamp, limit: u32) -> Result<Vec<Job>> {
        let state = self.lock();
        let mut seen = HashSet::new();
        Ok(state
            .jobs
            .values()
            .filter(|j| j.bridge == bridge && j.status == JobStatus::Pending)
            // The first pending job of each queue is its head; later ones wait.
            .filter(|j| seen.insert(j.queue.as_str()))
            .filter(|j| j.run_at <= now)
            .take(limit as usize)
            .cloned()
            .collect())
    }

    async fn job(&self, bridge: &str, id: i64) -> Result<Option<Job>> {
        Ok(self.lock().jobs.get(&id).filter(|j| j.bridge == bridge).cloned())
    }

    async fn finish_job(&self, bridge: &str, id: i64) -> Result<bool> {
        let mut state = self.lock();
        if state.job_mut(bridge, id).is_none() {
            return Ok(false);
        }
        Ok(state.jobs.remove(&id).is_some())
    }

    async fn retry_job_at(&self, bridge: &str, id: i64, run_at: Timestamp, error: &str) -> Result<()> {
        let mut state = self.lock();
        let job = state.job_mut(bridge, id).ok_or(Error::NotFound("job"))?;
        job.attempts = job.attempts.saturating_add(1);
        job.run_at = run_at;
        job.last_error = Some(error.to_owned());
        Ok(())
    }

    async fn fail_job(&self, bridge: &str, id: i64, error: &str) -> Result<()> {
        let mut state = self.lock();
        let job = state.job_mut(bridge, id).ok_or(Error::NotFound("job"))?;
        job.attempts = job.attempts.saturating_add(1);
        job.status = JobStatus::Failed;
        job.last_error = Some(error.to_owned());
        Ok(())
    }

    async fn requeue_job(&self, bridge: &str, id: i64, now: Timestamp) -> Result<bool> {
        let mut state = self.lock();
        match state.job_mut(bridge, id) {
            Some(job) if job.status == JobStatus::Failed => {
                job.status = JobStatus::Pending;
                job.attempts = 0;
                job.run_at = now;
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    async fn jobs(&self, bridge: &str, status: JobStatus, limit: u32) -> Result<Vec<Job>> {
        let state = self.lock();
        Ok(state
            .jobs
            .values()
            .filter(|j| j.bridge == bridge && j.status == status)
            .take(limit as usize)
            .cloned()
            .collect())
    }

    async fn clear_jobs(&self, bridge: &str) -> Result<u64> {
        let mut state = self.lock();
        let before = state.jobs.len();
        state.jobs.retain(|_, j| j.bridge != bridge);
        Ok((before - state.jobs.len()) as u64)
    }

    async fn job_counts(&self, bridge: &str) -> Result<JobCounts> {
        let state = self.lock();
        let mut counts = JobCounts::default();
        for job in state.jobs.values().filter(|j| j.bridge == bridge) {
            match job.status {
                JobStatus::Pending => counts.pending += 1,
                JobStatus::Failed => counts.failed += 1,
            }
        }
        Ok(counts)
    }

    async fn set_link(&self, bridge: &str, kind: &str, local: &str, remote: &str) -> Result<()> {
        let key = (bridge.to_owned(), kind.to_owned(), local.to_owned());
        self.lock().links.insert(key, remote.to_owned());
        Ok(())
    }

    async fn remote_of(&self, bridge: &str, kind: &str, local: &str) -> Result<Option<String>> {
        let key = (bridge.to_owned(), kind.to_owned(), local.to_owned());
        Ok(self.lock().links.get(&key).cloned())
    }

    async fn delete_link(&self, bridge: &str, kind: &str, local: &str) -> Result<bool> {
        let key = (bridge.to_owned(), kind.to_owned(), local.to_owned());
        Ok(self.lock().links.remove(&key).is_some())
    }

    async fn local_of(&self, bridge: &str, kind: &str, remote: &str) -> Result<Option<String>> {
        let state = self.lock();
        Ok(state
            .links
            .iter()
            .find(|((b, k, _), r)| b == bridge && k == kind && *r == remote)
            .map(|((_, _, local), _)| local.clone()))
    }

    async fn acquire_lease(&self, bridge: &str, holder: &str, now: Timestamp, until: Timestamp) -> Result<bool> {
        let mut state = self.lock();
        let granted = match state.leases.get(bridge) {
            Some((current, ends)) => current == holder || *ends <= now,
            None => true,
        };
        if granted {
            state.leases.insert(bridge.to_owned(), (holder.to_owned(), until));
        }
        Ok(granted)
    }

    async fn release_lease(&self, bridge: &str, holder: &str) -> Result<bool> {
        let mut state = self.lock();
        let held = state.leases.get(bridge).is_some_and(|(current, _)| current == holder);
        if held {
            state.leases.remove(bridge);
        }
        Ok(held)
    }

    async fn links(&self, bridge: &str, kind: &str) -> Result<Vec<(String, String)>> {
        let state = self.lock();
        Ok(state
            .links
            .iter()
            .filter(|((b, k, _), _)| b == bridge && k == kind)
            .map(|((_, _, local), remote)| (local.clone(), remote.clone()))
            .collect())
    }
}

#[async_trait]
impl PushStore for MemoryStore {
    async fn add_push_subscription(&self, subscription: &PushSubscription, max: u32) -> Result<()> {
        let mut state = self.lock();
        state.push.retain(|s| s.endpoint != subscription.endpoint);
        state.push.push(subscription.clone());
        let user = &subscription.user_id;
        let mut excess = state.push.iter().filter(|s| &s.user_id == user).count().saturating_sub(max as usize);
        state.push.retain(|s| {
            let drop = excess > 0 && &s.user_id == user;
            excess -= usize::from(drop);
            !drop
        });
        Ok(())
    }

    async fn remove_push_subscription(&self, user: &UserId, endpoint: &str) -> Result<bool> {
        let mut state = self.lock();
        let before = state.push.len();
        state.push.retain(|s| !(s.endpoint == endpoint && &s.user_id == user));
        Ok(state.push.len() < before)
    }

    async fn forget_push_endpoint(&self, endpoint: &str, stored_at: Timestamp) -> Result<bool> {
        let mut state = self.lock();
        let before = state.push.len();
        state.push.retain(|s| !(s.endpoint == endpoint && s.created_at <= stored_at));
        Ok(state.push.len() < before)
    }

    async fn push_subscription(&self, endpoint: &str) -> Result<Option<PushSubscription>> {
        Ok(self.lock().push.iter().find(|s| s.endpoint == endpoint).cloned())
    }

    async fn push_subscriptions(&self, user: &UserId) -> Result<Vec<PushSubscription>> {
        Ok(self.lock().push.iter().filter(|s| &s.user_id == user).cloned().collect())
    }

    async fn any_push_subscription(&self) -> Result<bool> {
        Ok(!self.lock().push.is_empty())
    }

    async fn push_recipients(&self, rooms: &[RoomId], now: Timestamp) -> Result<Vec<(RoomId, UserId)>> {
        let state = self.lock();
        let subscribed: HashSet<&UserId> = state.push.iter().map(|s| &s.user_id).collect();
        let mut out = Vec::new();
        for room in rooms.iter().collect::<HashSet<_>>() {
            let Some(rs) = state.rooms.get(room) else { continue };
            let members = rs.members.values().filter(|m| !m.is_muted(now) && subscribed.contains(&m.user_id));
            let members = members.filter(|m| state.users.get(&m.user_id).is_none_or(|a| a.active && !a.user.deleted));
            out.extend(members.map(|m| (*room, m.user_id.clone())));
        }
        Ok(out)
    }
}

#[async_trait]
impl AttachmentStore for MemoryStore {
    async fn insert_attachment(&self, attachment: &StoredAttachment, quota: u64) -> Result<()> {
        let mut state = self.lock();
        if quota > 0 {
            let used: u64 = state
                .attachments
                .values()
                .filter(|a| a.uploader == attachment.uploader && !a.removed)
                .map(StoredAttachment::accounted_bytes)
                .sum();
            if used + attachment.accounted_bytes() > quota {
                return Err(quota_error(quota));
            }
        }
        if state.attachments.contains_key(&attachment.id) {
            return Err(Error::conflict("the attachment exists"));
        }
        state.attachments.insert(attachment.id, attachment.clone());
        Ok(())
    }

    async fn attachment(&self, id: AttachmentId) -> Result<Option<StoredAttachment>> {
        Ok(self.lock().attachments.get(&id).cloned())
    }

    async fn attachments(&self, ids: &[AttachmentId]) -> Result<Vec<StoredAttachment>> {
        let state = self.lock();
        Ok(ids.iter().filter_map(|id| state.attachments.get(id).cloned()).collect())
    }

    async fn attachment_usage(&self, user: &UserId) -> Result<u64> {
        let state = self.lock();
        Ok(state
            .attachments
            .values()
            .filter(|a| &a.uploader == user && !a.removed)
            .map(StoredAttachment::accounted_bytes)
            .sum())
    }

    async fn attachments_to_purge(&self, orphaned_before: Timestamp, limit: u32) -> Result<Vec<StoredAttachment>> {
        let state = self.lock();
        let mut out: Vec<StoredAttachment> =
            state.attachments.values().filter(|a| purgeable(a, orphaned_before)).cloned().collect();
        out.sort_by_key(|a| a.id);
        out.truncate(limit as usize);
        Ok(out)
    }

    async fn mark_removed(&self, id: AttachmentId, orphaned_before: Timestamp) -> Result<bool> {
        let mut state = self.lock();
        match state.attachments.get_mut(&id) {
            Some(a) if purgeable(a, orphaned_before) => {
                a.removed = true;
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    async fn forget_attachment(&self, id: AttachmentId) -> Result<()> {
        let mut state = self.lock();
        if state.attachments.get(&id).is_some_and(|a| a.removed) {
            state.attachments.remove(&id);
        }
        Ok(())
    }
}

fn purgeable(a: &StoredAttachment, orphaned_before: Timestamp) -> bool {
    a.removed || (a.posted.is_none() && a.created_at < orphaned_before)
}
