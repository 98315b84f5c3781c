//! The engine's rules, checked by driving real sessions the way a transport
//! does: `submit` a command with a `ref`, read `next_output` until its reply,
//! and watch what the other sessions receive.
//!
//! Most tests run on a paused clock. Tokio then moves time forward only when
//! every task is idle, so "nothing arrives within 100 ms" really means that the
//! engine's background tasks (committer, presence, typing) ran and sent
//! nothing, and the six-second typing timeout costs no wall time.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::FutureExt;
use tokio::time::Instant;

use super::{CloseReason, Engine, Output, Ready, Ref, Session, SupportAvailability};
use crate::bridge::{Bridge, BridgeEvent};
use crate::command::{
    Command, CreateRoom, DeleteMessage, EditMessage, HistoryRequest, Invite, JoinRoom, Receipt, Reply, RoomRef,
    SearchUsers, SendMessage, UpdatePresence,
};
use crate::config::{EngineConfig, Limits};
use crate::error::Result;
use crate::event::Event;
use crate::id::{MessageId, RoomId, UserId};
use crate::message::{Appended, HistoryPage, HistoryQuery, Message, NewMessage};
use crate::presence::{OnlineUser, PresenceStatus};
use crate::room::{Member, MemberRole, NewRoom, ReceiptKind, Room, RoomKind, RoomSummary, Visibility};
use crate::store::{Joining, MemberLimits, MemoryStore, QueueCursor, QueuedRoom, Store};
use crate::time::Timestamp;
use crate::user::{Identity, User, UserAccount, UserListQuery, UserPatch};

mod calls;
mod cluster;
mod moderation;
mod users;

/// How long to wait for something that should come.
const WAIT: Duration = Duration::from_secs(5);
/// How long to listen when nothing should come.
const QUIET: Duration = Duration::from_millis(100);

// ---------------------------------------------------------------------------
// Harness
// ---------------------------------------------------------------------------

fn uid(id: &str) -> UserId {
    UserId::new(id).expect("valid user id")
}

async fn engine() -> Engine {
    engine_with(EngineConfig::default()).await
}

async fn engine_with(config: EngineConfig) -> Engine {
    Engine::builder(Arc::new(MemoryStore::new())).config(config).start().await.expect("the engine starts")
}

fn limits(limits: Limits) -> EngineConfig {
    EngineConfig { limits, ..EngineConfig::default() }
}

fn support(id: &str) -> Identity {
    Identity { roles: Some(vec!["support".into()]), ..Identity::new(uid(id)) }
}

/// One connection, as a transport would hold it.
struct Client {
    session: Session,
    ready: Ready,
    refs: u64,
    sent: u64,
    /// Events that arrived while a reply was awaited, in arrival order.
    stash: VecDeque<Event>,
    /// Presence announcements come whenever users connect; most tests are
    /// not about them and skip them.
    ignore_presence: bool,
}

async fn connect(engine: &Engine, id: &str) -> Client {
    connect_as(engine, Identity::new(uid(id))).await
}

async fn connect_as(engine: &Engine, identity: Identity) -> Client {
    let (session, ready) = engine.open_session(identity).await.expect("session opens");
    Client { session, ready, refs: 0, sent: 0, stash: VecDeque::new(), ignore_presence: true }
}

impl Client {
    fn id(&self) -> UserId {
        self.ready.user.id.clone()
    }

    fn skipped(&self, out: &Output) -> bool {
        // Keepalives are for transports; these tests check them on their own.
        matches!(out, Output::Keepalive)
            || self.ignore_presence && matches!(out, Output::Event(d) if matches!(d.event(), Event::PresenceChanged(_)))
    }

    /// The next output that is not skipped, or `None` when none comes in time.
    async fn next_within(&mut self, within: Duration) -> Option<Output> {
        let deadline = Instant::now() + within;
        loop {
            match tokio::time::timeout_at(deadline, self.session.next_output()).await {
                Err(_) => return None,
                Ok(out) if self.skipped(&out) => continue,
                Ok(out) => return Some(out),
            }
        }
    }

    /// Submits a command with a fresh ref, without waiting.
    async fn submit(&mut self, command: Command) -> Ref {
        self.refs += 1;
        let reference = Ref(format!("\"{}-{}\"", self.ready.user.id, self.refs).into());
        self.session.submit(Some(reference.clone()), command).await;
        reference
    }

    /// Runs a command and returns its reply; events that come first are kept
    /// for [`Client::event`].
    async fn call(&mut self, command: Command) -> Result<Reply> {
        let reference = self.submit(command).await;
        loop {
            match self.next_within(WAIT).await {
                Some(Output::Reply { reference: Some(r), result }) if r == reference => return result,
                Some(Output::Event(d)) => self.stash.push_back(d.event().clone()),
                Some(other) => panic!("{}: unexpected {other:?} while waiting for {reference:?}", self.id()),
                None => panic!("{}: no reply to {reference:?} within {WAIT:?}", self.id()),
            }
        }
    }

    async fn ok(&mut self, command: Command) -> Reply {
        let what = format!("{command:?}");
        match self.call(command).await {
            Ok(reply) => reply,
            Err(err) => panic!("{}: {what} failed: {err} ({})", self.id(), err.code()),
        }
    }

    /// Runs a command that must fail and returns its error code.
    async fn err(&mut self, command: Command) -> &'static str {
        let what = format!("{command:?}");
        match self.call(command).await {
            Ok(reply) => panic!("{}: {what} succeeded with {reply:?}", self.id()),
            Err(err) => err.code().as_str(),
        }
    }

    async fn event_within(&mut self, within: Duration) -> Event {
        if let Some(ev) = self.stash.pop_front() {
            return ev;
        }
        match self.next_within(within).await {
            Some(Output::Event(d)) => d.event().clone(),
            Some(other) => panic!("{}: expected an event, got {other:?}", self.id()),
            None => panic!("{}: no event within {within:?}", self.id()),
        }
    }

    async fn event(&mut self) -> Event {
        self.event_within(WAIT).await
    }

    /// Asserts that nothing arrives for a while.
    async fn quiet_for(&mut self, within: Duration) {
        assert!(self.stash.is_empty(), "{}: unexpected events {:?}", self.id(), self.stash);
        if let Some(out) = self.next_within(within).await {
            panic!("{}: expected nothing, got {out:?}", self.id());
        }
    }

    async fn quiet(&mut self) {
        self.quiet_for(QUIET).await
    }

    /// Throws away whatever is pending.
    async fn drain(&mut self) {
        self.stash.clear();
        while self.next_within(QUIET).await.is_some() {}
    }

    /// Waits for the session's end, passing over events still queued.
    async fn closed(&mut self) -> CloseReason {
        loop {
            match self.next_within(WAIT).await {
                Some(Output::Close(reason)) => return reason,
                Some(Output::Event(_)) => continue,
                Some(other) => panic!("{}: expected the close, got {other:?}", self.id()),
                None => panic!("{}: not closed within {WAIT:?}", self.id()),
            }
        }
    }

    /// Makes a group room named "g".
    async fn group(&mut self, visibility: Visibility, members: &[UserId]) -> Room {
        room_of(self.ok(create(RoomKind::Group, Some(visibility), members)).await)
    }

    async fn join(&mut self, room: RoomId) -> Joined {
        joined_of(self.ok(join(room)).await)
    }

    /// Sends a message with a fresh `client_msg_id`.
    async fn say(&mut self, room: RoomId, body: &str) -> Message {
        self.sent += 1;
        let cmid = format!("{}-{}", self.ready.user.id, self.sent);
        message_of(self.ok(send(room, &cmid, body)).await)
    }

    async fn summary(&mut self, room: RoomId) -> RoomSummary {
        let Reply::Rooms { rooms } = self.ok(Command::RoomList).await else { panic!("expected rooms") };
        rooms.into_iter().find(|s| s.room.id == room).expect("the room is listed")
    }
}

// Commands.

fn create(kind: RoomKind, visibility: Option<Visibility>, members: &[UserId]) -> Command {
    Command::RoomCreate(CreateRoom { kind, name: Some("g".into()), visibility, members: members.to_vec() })
}

fn join(room_id: RoomId) -> Command {
    Command::RoomJoin(JoinRoom { room_id, since_seq: None })
}

fn join_since(room_id: RoomId, since: u64) -> Command {
    Command::RoomJoin(JoinRoom { room_id, since_seq: Some(since) })
}

fn leave(room_id: RoomId) -> Command {
    Command::RoomLeave(RoomRef { room_id })
}

fn invite(room_id: RoomId, user_id: &UserId) -> Command {
    Command::RoomInvite(Invite { room_id, user_id: user_id.clone() })
}

fn send(room_id: RoomId, client_msg_id: &str, body: &str) -> Command {
    Command::MessageSend(SendMessage {
        room_id,
        client_msg_id: client_msg_id.into(),
        body: body.into(),
        attachments: vec![],
        reply_to: None,
    })
}

fn edit(room_id: RoomId, message_id: MessageId, body: &str) -> Command {
    Command::MessageEdit(EditMessage { room_id, message_id, body: body.into() })
}

fn delete(room_id: RoomId, message_id: MessageId) -> Command {
    Command::MessageDelete(DeleteMessage { room_id, message_id })
}

fn typing_start(room_id: RoomId) -> Command {
    Command::TypingStart(RoomRef { room_id })
}

fn typing_stop(room_id: RoomId) -> Command {
    Command::TypingStop(RoomRef { room_id })
}

fn delivered(room_id: RoomId, up_to_seq: u64) -> Command {
    Command::MessageDelivered(Receipt { room_id, up_to_seq })
}

fn read(room_id: RoomId, up_to_seq: u64) -> Command {
    Command::MessageRead(Receipt { room_id, up_to_seq })
}

fn history(room_id: RoomId, before_seq: Option<u64>, after_seq: Option<u64>, limit: Option<u32>) -> Command {
    Command::RoomHistory(HistoryRequest { room_id, before_seq, after_seq, limit })
}

fn presence(status: PresenceStatus) -> Command {
    Command::PresenceUpdate(UpdatePresence { status })
}

fn search(q: &str, limit: Option<u32>) -> Command {
    Command::UsersSearch(SearchUsers { q: q.into(), limit })
}

fn find(q: &str, room_id: Option<RoomId>, limit: Option<u32>, before: Option<String>) -> Command {
    Command::MessagesSearch(crate::command::SearchMessages { q: q.into(), room_id, limit, before })
}

// Replies.

#[derive(Debug)]
struct Joined {
    room: Room,
    members: Vec<User>,
    last_seq: u64,
    read_seq: u64,
}

fn room_of(reply: Reply) -> Room {
    match reply {
        Reply::Room { room } => room,
        other => panic!("expected a room, got {other:?}"),
    }
}

fn joined_of(reply: Reply) -> Joined {
    match reply {
        Reply::Joined(j) => Joined { room: j.room, members: j.members, last_seq: j.last_seq, read_seq: j.read_seq },
        other => panic!("expected a join reply, got {other:?}"),
    }
}

fn message_of(reply: Reply) -> Message {
    match reply {
        Reply::Message { message } => message,
        other => panic!("expected a message, got {other:?}"),
    }
}

fn page_of(reply: Reply) -> HistoryPage {
    match reply {
        Reply::History(page) => page,
        other => panic!("expected a history page, got {other:?}"),
    }
}

fn online_of(reply: Reply) -> Vec<OnlineUser> {
    match reply {
        Reply::Online { users } => users,
        other => panic!("expected online users, got {other:?}"),
    }
}

fn seqs(messages: &[Message]) -> Vec<u64> {
    messages.iter().map(|m| m.seq).collect()
}

fn ids(users: &[User]) -> Vec<&str> {
    users.iter().map(|u| u.id.as_str()).collect()
}

// Events.

fn message_new(ev: Event) -> Message {
    match ev {
        Event::MessageNew(e) => e.message,
        other => panic!("expected message:new, got {other:?}"),
    }
}

fn room_added(ev: Event) -> Room {
    match ev {
        Event::RoomAdded(e) => e.room,
        other => panic!("expected room:added, got {other:?}"),
    }
}

fn user_joined(ev: Event) -> (RoomId, UserId) {
    match ev {
        Event::UserJoined(e) => (e.room_id, e.user.id),
        other => panic!("expected user:joined, got {other:?}"),
    }
}

fn typing_of(ev: Event) -> (RoomId, UserId, bool) {
    match ev {
        Event::Typing(e) => (e.room_id, e.user_id, e.typing),
        other => panic!("expected typing:user, got {other:?}"),
    }
}

fn status_of(ev: Event) -> (UserId, ReceiptKind, u64) {
    match ev {
        Event::MessageStatus(e) => (e.user_id, e.status, e.up_to_seq),
        other => panic!("expected message:status, got {other:?}"),
    }
}

fn presence_of(ev: Event) -> (UserId, PresenceStatus, Option<Timestamp>) {
    match ev {
        Event::PresenceChanged(e) => (e.user_id, e.status, e.last_seen),
        other => panic!("expected presence:changed, got {other:?}"),
    }
}

async fn last_seq(engine: &Engine, room: RoomId) -> u64 {
    engine.store().room(room).await.expect("store answers").expect("room exists").last_seq
}

async fn all_messages(engine: &Engine, room: RoomId) -> Vec<Message> {
    let query = HistoryQuery { before_seq: None, after_seq: Some(0), limit: 10_000 };
    engine.store().history(room, query).await.expect("store answers").messages
}

// ---------------------------------------------------------------------------
// room:create
// ---------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn direct_room_is_made_once_per_pair() {
    let engine = engine().await;
    let mut alice = connect(&engine, "alice").await;
    let mut bob = connect(&engine, "bob").await;

    let first = room_of(alice.ok(create(RoomKind::Direct, None, &[bob.id()])).await);
    assert_eq!(first.kind, RoomKind::Direct);
    assert_eq!(first.visibility, Visibility::Private);
    assert_eq!(room_added(bob.event().await).id, first.id);

    let by_bob = room_of(bob.ok(create(RoomKind::Direct, None, &[alice.id()])).await);
    assert_eq!(by_bob.id, first.id, "the other member gets the same room");
    let again = room_of(alice.ok(create(RoomKind::Direct, None, &[bob.id()])).await);
    assert_eq!(again.id, first.id, "the creator gets the same room");

    // Nothing new was made, so nothing new is announced.
    bob.quiet().await;
    alice.quiet().await;
    let Reply::Rooms { rooms } = alice.ok(Command::RoomList).await else { panic!("expected rooms") };
    assert_eq!(rooms.len(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_full_room_quota_still_finds_the_existing_direct_room() {
    let engine = engine_with(limits(Limits { max_rooms_per_user: 1, ..Limits::default() })).await;
    let mut alice = connect(&engine, "alice").await;
    let bob = connect(&engine, "bob").await;
    let carol = connect(&engine, "carol").await;
    let first = room_of(alice.ok(create(RoomKind::Direct, None, &[bob.id()])).await);
    let again = room_of(alice.ok(create(RoomKind::Direct, None, &[bob.id()])).await);
    assert_eq!(again.id, first.id);
    assert_eq!(alice.err(create(RoomKind::Direct, None, &[carol.id()])).await, "forbidden");
}

#[tokio::test(start_paused = true)]
async fn direct_room_needs_exactly_one_other_member() {
    let engine = engine().await;
    let mut alice = connect(&engine, "alice").await;
    let bob = connect(&engine, "bob").await;
    let carol = connect(&engine, "carol").await;

    let cases: [(&str, Vec<UserId>); 3] =
        [("nobody", vec![]), ("two others", vec![bob.id(), carol.id()]), ("only oneself", vec![alice.id()])];
    for (case, members) in cases {
        assert_eq!(alice.err(create(RoomKind::Direct, None, &members)).await, "invalid", "{case}");
    }
    let Reply::Rooms { rooms } = alice.ok(Command::RoomList).await else { panic!("expected rooms") };
    assert!(rooms.is_empty(), "no room was made");
}

#[tokio::test(start_paused = true)]
async fn support_room_cannot_name_members() {
    let engine = engine().await;
    let mut visitor = connect(&engine, "visitor").await;
    let agent = connect_as(&engine, support("agent")).await;

    assert_eq!(visitor.err(create(RoomKind::Support, None, &[agent.id()])).await, "invalid");
    let room = room_of(visitor.ok(create(RoomKind::Support, None, &[])).await);
    assert_eq!(room.kind, RoomKind::Support);
    assert_eq!(room.visibility, Visibility::Private);
    assert_eq!(room.created_by, visitor.id());
}

#[tokio::test(start_paused = true)]
async fn only_group_rooms_can_be_public() {
    let engine = engine().await;
    let mut alice = connect(&engine, "alice").await;
    let bob = connect(&engine, "bob").await;

    let public = Some(Visibility::Public);
    assert_eq!(alice.err(create(RoomKind::Direct, public, &[bob.id()])).await, "invalid");
    assert_eq!(alice.err(create(RoomKind::Support, public, &[])).await, "invalid");
    assert_eq!(room_of(alice.ok(create(RoomKind::Group, public, &[])).await).visibility, Visibility::Public);
    assert_eq!(room_of(alice.ok(create(RoomKind::Group, None, &[])).await).visibility, Visibility::Private);
}

#[tokio::test(start_paused = true)]
async fn unknown_member_is_not_found() {
    let engine = engine().await;
    let mut alice = connect(&engine, "alice").await;
    let mut bob = connect(&engine, "bob").await;

    let ghost = uid("ghost");
    assert_eq!(alice.err(create(RoomKind::Group, None, &[bob.id(), ghost.clone()])).await, "not_found");
    assert_eq!(alice.err(create(RoomKind::Direct, None, &[ghost])).await, "not_found");
    bob.quiet().await;
    assert!(engine.store().rooms_of_user(&alice.id()).await.expect("store answers").is_empty());
}

#[tokio::test(start_paused = true)]
async fn room_added_reaches_members_and_the_creators_other_sessions() {
    let engine = engine().await;
    let mut alice1 = connect(&engine, "alice").await;
    let mut alice2 = connect(&engine, "alice").await;
    let mut bob1 = connect(&engine, "bob").await;
    let mut bob2 = connect(&engine, "bob").await;
    let mut carol = connect(&engine, "carol").await;

    let room = alice1.group(Visibility::Private, &[bob1.id()]).await;
    for other in [&mut alice2, &mut bob1, &mut bob2] {
        assert_eq!(room_added(other.event().await), room, "{}", other.id());
    }
    alice1.quiet().await; // the creating session has the room in its reply
    carol.quiet().await;
}

#[tokio::test(start_paused = true)]
async fn room_name_is_checked() {
    let engine = engine().await;
    let mut alice = connect(&engine, "alice").await;
    let named = |name: String| {
        Command::RoomCreate(CreateRoom { kind: RoomKind::Group, name: Some(name), visibility: None, members: vec![] })
    };
    assert_eq!(alice.err(named("x".repeat(101))).await, "too_large");
    assert_eq!(alice.err(named("   ".into())).await, "invalid");
    assert_eq!(alice.err(named("a\u{7}b".into())).await, "invalid");
    assert_eq!(room_of(alice.ok(named("é".repeat(100))).await).name, Some("é".repeat(100)));

    // The limit is the configured one, in both directions.
    let short = engine_with(limits(Limits { max_room_name_chars: 10, ..Limits::default() })).await;
    let mut alice = connect(&short, "alice").await;
    assert_eq!(alice.err(named("x".repeat(11))).await, "too_large");
    alice.ok(named("x".repeat(10))).await;

    let long = engine_with(limits(Limits { max_room_name_chars: 200, ..Limits::default() })).await;
    let mut alice = connect(&long, "alice").await;
    alice.ok(named("x".repeat(150))).await;
    assert_eq!(alice.err(named("x".repeat(201))).await, "too_large");
}

// ---------------------------------------------------------------------------
// room:join
// ---------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn public_group_is_joinable_by_anyone() {
    let engine = engine().await;
    let mut alice = connect(&engine, "alice").await;
    let mut bob = connect(&engine, "bob").await;
    let room = alice.group(Visibility::Public, &[]).await;
    alice.join(room.id).await;

    let joined = bob.join(room.id).await;
    assert_eq!(joined.room.id, room.id);
    assert_eq!(ids(&joined.members), ["alice", "bob"]);
    assert_eq!((joined.last_seq, joined.read_seq), (0, 0));
    assert_eq!(user_joined(alice.event().await), (room.id, bob.id()));
    bob.quiet().await; // not told about himself

    // Bob is now a member whose session follows the room.
    alice.say(room.id, "hi").await;
    assert_eq!(message_new(bob.event().await).body, "hi");
}

#[tokio::test(start_paused = true)]
async fn private_group_is_joinable_by_members_only() {
    let engine = engine().await;
    let mut alice = connect(&engine, "alice").await;
    let mut bob = connect(&engine, "bob").await;
    let mut carol = connect(&engine, "carol").await;
    let room = alice.group(Visibility::Private, &[bob.id()]).await;

    assert_eq!(carol.err(join(room.id)).await, "forbidden");
    assert!(engine.store().member(room.id, &carol.id()).await.expect("store answers").is_none());
    assert_eq!(ids(&bob.join(room.id).await.members), ["alice", "bob"]);
}

#[tokio::test(start_paused = true)]
async fn support_room_is_for_its_visitor_and_support_agents() {
    let engine = engine().await;
    let mut visitor = connect(&engine, "visitor").await;
    let mut agent = connect_as(&engine, support("agent")).await;
    let mut stranger = connect(&engine, "stranger").await;
    let room = room_of(visitor.ok(create(RoomKind::Support, None, &[])).await);

    assert_eq!(ids(&visitor.join(room.id).await.members), ["visitor"]);
    assert_eq!(stranger.err(join(room.id)).await, "forbidden");
    assert_eq!(ids(&agent.join(room.id).await.members), ["visitor", "agent"]);
    assert_eq!(user_joined(visitor.event().await), (room.id, agent.id()));
}

/// An agent who was away sees the support rooms waiting for an answer, in
/// `ready` and in `room:list`; joining one makes it theirs like any room.
#[tokio::test(start_paused = true)]
async fn agents_see_the_support_queue_in_their_room_list() {
    let engine = engine().await;
    let mut visitor = connect(&engine, "visitor").await;
    let room = room_of(visitor.ok(create(RoomKind::Support, None, &[])).await);
    visitor.join(room.id).await;
    visitor.say(room.id, "is anyone there?").await;

    let mut agent = connect_as(&engine, support("agent")).await;
    let queued = agent.ready.rooms.iter().find(|s| s.room.id == room.id).expect("the waiting room is in ready");
    assert_eq!((queued.read_seq, queued.unread), (0, 1), "everything in it is unread");
    assert_eq!(agent.summary(room.id).await.unread, 1, "room:list lists it too");
    assert_eq!(ids(&agent.join(room.id).await.members), ["visitor", "agent"]);
    assert_eq!(
        agent.ready.rooms.iter().filter(|s| s.room.id == room.id).count(),
        1,
        "a room the agent is in is listed once"
    );
    let Reply::Rooms { rooms } = agent.ok(Command::RoomList).await else { panic!("expected rooms") };
    assert_eq!(rooms.iter().filter(|s| s.room.id == room.id).count(), 1, "listed once after joining");

    // Users without the support role see only their own rooms.
    let mut stranger = connect(&engine, "stranger").await;
    assert!(stranger.ready.rooms.is_empty());
    let Reply::Rooms { rooms } = stranger.ok(Command::RoomList).await else { panic!("expected rooms") };
    assert!(rooms.is_empty());
}

#[tokio::test(start_paused = true)]
async fn direct_room_is_for_its_two_members() {
    let engine = engine().await;
    let mut alice = connect(&engine, "alice").await;
    let mut bob = connect(&engine, "bob").await;
    let mut carol = connect(&engine, "carol").await;
    let mut agent = connect_as(&engine, support("agent")).await;
    let room = room_of(alice.ok(create(RoomKind::Direct, None, &[bob.id()])).await);

    assert_eq!(carol.err(join(room.id)).await, "forbidden");
    assert_eq!(agent.err(join(room.id)).await, "forbidden");
    assert_eq!(ids(&bob.join(room.id).await.members), ["alice", "bob"]);
}

#[tokio::test(start_paused = true)]
async fn joining_an_unknown_room_is_not_found() {
    let engine = engine().await;
    let mut alice = connect(&engine, "alice").await;
    assert_eq!(alice.err(join(RoomId::generate())).await, "not_found");
}

#[tokio::test(start_paused = true)]
async fn join_reply_carries_last_seq_and_the_read_cursor() {
    let engine = engine().await;
    let mut alice = connect(&engine, "alice").await;
    let mut bob = connect(&engine, "bob").await;
    let room = alice.group(Visibility::Private, &[bob.id()]).await;
    for body in ["one", "two", "three"] {
        alice.say(room.id, body).await;
    }
    bob.ok(read(room.id, 2)).await;

    let joined = bob.join(room.id).await;
    assert_eq!((joined.last_seq, joined.read_seq), (3, 2));
    assert_eq!(joined.room.last_seq, 3);
    let joined = alice.join(room.id).await;
    assert_eq!(joined.read_seq, 3, "a sender has read their own messages");
}

// ---------------------------------------------------------------------------
// Resume with since_seq
// ---------------------------------------------------------------------------

/// Reads one session's raw output: the join reply must come first, then
/// `message:new` events; returns their seqs up to and including `until`.
async fn resumed(client: &mut Client, reference: &Ref, until: u64) -> Vec<u64> {
    match client.next_within(WAIT).await {
        Some(Output::Reply { reference: Some(r), result: Ok(Reply::Joined(_)) }) if r == *reference => {}
        other => panic!("{}: expected the join reply first, got {other:?}", client.id()),
    }
    let mut got = Vec::new();
    while got.last().is_none_or(|s| *s < until) {
        match client.next_within(WAIT).await {
            Some(Output::Event(d)) => match d.event() {
                Event::MessageNew(e) => got.push(e.message.seq),
                Event::UserJoined(_) => {}
                other => panic!("{}: unexpected {other:?} during the resume", client.id()),
            },
            other => panic!("{}: expected message:new after {got:?}, got {other:?}", client.id()),
        }
    }
    got
}

#[tokio::test(start_paused = true)]
async fn resume_replays_after_since_seq_then_goes_live() {
    let engine = engine().await;
    let mut alice = connect(&engine, "alice").await;
    let mut bob = connect(&engine, "bob").await;
    let room = alice.group(Visibility::Private, &[bob.id()]).await;
    bob.drain().await;
    for i in 1..=5 {
        alice.say(room.id, &format!("m{i}")).await;
    }

    let reference = bob.submit(join_since(room.id, 2)).await;
    // These reach Bob's queue live while his replay has not run yet.
    alice.say(room.id, "m6").await;
    alice.say(room.id, "m7").await;
    assert_eq!(resumed(&mut bob, &reference, 7).await, [3, 4, 5, 6, 7]);
    bob.quiet().await; // and no duplicate of 6 or 7

    alice.say(room.id, "m8").await;
    assert_eq!(message_new(bob.event().await).seq, 8);
    bob.quiet().await;
}

#[tokio::test(start_paused = true)]
async fn resume_backlog_larger_than_one_chunk() {
    let engine = engine_with(EngineConfig { backlog_chunk: 3, ..EngineConfig::default() }).await;
    let mut alice = connect(&engine, "alice").await;
    let mut bob1 = connect(&engine, "bob").await;
    let mut bob2 = connect(&engine, "bob").await;
    let room = alice.group(Visibility::Private, &[bob1.id()]).await;
    bob1.drain().await;
    bob2.drain().await;
    for i in 1..=10 {
        alice.say(room.id, &format!("m{i}")).await;
    }

    let from_start = bob1.submit(join_since(room.id, 0)).await;
    let from_four = bob2.submit(join_since(room.id, 4)).await;
    alice.say(room.id, "m11").await;
    alice.say(room.id, "m12").await;
    assert_eq!(resumed(&mut bob1, &from_start, 12).await, (1..=12).collect::<Vec<_>>());
    assert_eq!(resumed(&mut bob2, &from_four, 12).await, (5..=12).collect::<Vec<_>>());
    bob1.quiet().await;
    bob2.quiet().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_while_another_session_sends() {
    const TOTAL: u64 = 300;
    // Alice sends more than the default burst allows.
    let limits = Limits { command_burst: 1000, ..Limits::default() };
    let engine = engine_with(EngineConfig { backlog_chunk: 7, limits, ..EngineConfig::default() }).await;
    let mut alice = connect(&engine, "alice").await;
    let room = alice.group(Visibility::Public, &[]).await;
    for i in 1..=20 {
        alice.say(room.id, &format!("m{i}")).await;
    }

    let sender = tokio::spawn(async move {
        for i in 21..=TOTAL {
            alice.say(room.id, &format!("m{i}")).await;
        }
    });
    // Each joiner resumes at a different point of the stream, while it flows.
    let mut joiners = Vec::new();
    for (name, start_at, since) in [("bob", 40, 5), ("carol", 120, 0), ("dave", 200, 150)] {
        let engine = engine.clone();
        joiners.push(tokio::spawn(async move {
            let mut client = connect(&engine, name).await;
            while last_seq(&engine, room.id).await < start_at {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            let reference = client.submit(join_since(room.id, since)).await;
            let got = resumed(&mut client, &reference, TOTAL).await;
            (name, since, got)
        }));
    }
    sender.await.expect("the sender finishes");
    for joiner in joiners {
        let (name, since, got) = joiner.await.expect("the joiner finishes");
        assert_eq!(got, (since + 1..=TOTAL).collect::<Vec<_>>(), "{name} resumed from {since}");
    }
}

/// A memory store some of whose answers take a while, as a database's do, so
/// that other work can happen in between. `history` reads at once and answers
/// late (the page is a snapshot older than its arrival); `member` waits first.
struct Laggy {
    inner: MemoryStore,
    history: Duration,
    member: Duration,
}

#[async_trait::async_trait]
impl Store for Laggy {
    async fn upsert_user(&self, user: &User) -> Result<()> {
        self.inner.upsert_user(user).await
    }
    async fn user(&self, id: &UserId) -> Result<Option<User>> {
        self.inner.user(id).await
    }
    async fn users(&self, ids: &[UserId]) -> Result<Vec<User>> {
        self.inner.users(ids).await
    }
    async fn search_users(&self, query: &str, limit: u32) -> Result<Vec<User>> {
        self.inner.search_users(query, limit).await
    }
    async fn account(&self, id: &UserId) -> Result<Option<UserAccount>> {
        self.inner.account(id).await
    }
    async fn list_accounts(&self, query: &UserListQuery) -> Result<Vec<UserAccount>> {
        self.inner.list_accounts(query).await
    }
    async fn update_user(&self, id: &UserId, patch: &UserPatch, at: Timestamp) -> Result<Option<User>> {
        self.inner.update_user(id, patch, at).await
    }
    async fn set_user_active(&self, id: &UserId, active: bool) -> Result<bool> {
        self.inner.set_user_active(id, active).await
    }
    async fn revoke_tokens(&self, id: &UserId, at: Timestamp) -> Result<bool> {
        self.inner.revoke_tokens(id, at).await
    }
    async fn delete_user(&self, id: &UserId, at: Timestamp) -> Result<Option<Vec<RoomId>>> {
        self.inner.delete_user(id, at).await
    }
    async fn deleted_members(&self, room: RoomId) -> Result<Vec<UserId>> {
        self.inner.deleted_members(room).await
    }
    async fn touch_user(&self, id: &UserId, at: Timestamp) -> Result<Option<UserAccount>> {
        self.inner.touch_user(id, at).await
    }
    async fn create_room(&self, room: NewRoom, limits: MemberLimits) -> Result<(Room, bool)> {
        self.inner.create_room(room, limits).await
    }
    async fn room(&self, id: RoomId) -> Result<Option<Room>> {
        self.inner.room(id).await
    }
    async fn claim_room(&self, id: RoomId, user: &UserId) -> Result<Option<(Room, bool)>> {
        self.inner.claim_room(id, user).await
    }
    async fn close_room(&self, id: RoomId) -> Result<Option<(Room, bool)>> {
        self.inner.close_room(id).await
    }
    async fn rooms_of_user(&self, user: &UserId) -> Result<Vec<RoomSummary>> {
        self.inner.rooms_of_user(user).await
    }
    async fn support_queue(&self, after: Option<QueueCursor>, limit: u32) -> Result<Vec<QueuedRoom>> {
        self.inner.support_queue(after, limit).await
    }
    async fn support_rooms(&self, limit: u32) -> Result<Vec<Room>> {
        self.inner.support_rooms(limit).await
    }
    async fn rooms_active_since(
        &self,
        since: Timestamp,
        after: Option<RoomId>,
        limit: u32,
    ) -> Result<Vec<crate::store::ActiveRoom>> {
        self.inner.rooms_active_since(since, after, limit).await
    }
    async fn room_count_of_user(&self, user: &UserId) -> Result<u64> {
        self.inner.room_count_of_user(user).await
    }
    async fn member(&self, room: RoomId, user: &UserId) -> Result<Option<Member>> {
        tokio::time::sleep(self.member).await;
        self.inner.member(room, user).await
    }
    async fn members(&self, room: RoomId) -> Result<Vec<Member>> {
        self.inner.members(room).await
    }
    async fn member_count(&self, room: RoomId) -> Result<u64> {
        self.inner.member_count(room).await
    }
    async fn add_member(&self, room: RoomId, user: &UserId, joining: Joining, limits: MemberLimits) -> Result<bool> {
        self.inner.add_member(room, user, joining, limits).await
    }
    async fn remove_member(&self, room: RoomId, user: &UserId) -> Result<bool> {
        self.inner.remove_member(room, user).await
    }
    async fn update_room(&self, id: RoomId, changes: &crate::room::RoomChanges) -> Result<Option<Room>> {
        self.inner.update_room(id, changes).await
    }
    async fn ban_member(&self, room: RoomId, ban: &crate::room::Ban) -> Result<bool> {
        self.inner.ban_member(room, ban).await
    }
    async fn unban_member(&self, room: RoomId, user: &UserId) -> Result<bool> {
        self.inner.unban_member(room, user).await
    }
    async fn bans(&self, room: RoomId, limit: u32) -> Result<Vec<crate::room::Ban>> {
        self.inner.bans(room, limit).await
    }
    async fn set_member_role(&self, room: RoomId, user: &UserId, role: MemberRole) -> Result<bool> {
        self.inner.set_member_role(room, user, role).await
    }
    async fn set_muted(&self, room: RoomId, user: &UserId, until: Option<Timestamp>) -> Result<bool> {
        self.inner.set_muted(room, user, until).await
    }
    async fn co_members(&self, user: &UserId) -> Result<Vec<UserId>> {
        self.inner.co_members(user).await
    }
    async fn append_messages(&self, batch: Vec<NewMessage>) -> Result<Vec<Result<Appended>>> {
        self.inner.append_messages(batch).await
    }
    async fn message(&self, room: RoomId, id: MessageId) -> Result<Option<Message>> {
        self.inner.message(room, id).await
    }
    async fn edit_message(&self, room: RoomId, id: MessageId, body: &str, at: Timestamp) -> Result<Option<Message>> {
        self.inner.edit_message(room, id, body, at).await
    }
    async fn delete_message(&self, room: RoomId, id: MessageId, at: Timestamp) -> Result<Option<Message>> {
        self.inner.delete_message(room, id, at).await
    }
    async fn history(&self, room: RoomId, query: HistoryQuery) -> Result<HistoryPage> {
        let page = self.inner.history(room, query).await;
        tokio::time::sleep(self.history).await;
        page
    }
    async fn advance_cursor(&self, room: RoomId, user: &UserId, kind: ReceiptKind, up_to: u64) -> Result<Option<u64>> {
        self.inner.advance_cursor(room, user, kind, up_to).await
    }
    async fn ping(&self) -> Result<()> {
        self.inner.ping().await
    }
}

async fn laggy_engine(history: Duration, member: Duration) -> Engine {
    let store = Laggy { inner: MemoryStore::new(), history, member };
    let config = EngineConfig { backlog_chunk: 2, ..EngineConfig::default() };
    Engine::builder(Arc::new(store)).config(config).start().await.expect("the engine starts")
}

#[tokio::test(start_paused = true)]
async fn resume_holds_live_messages_back_while_the_backlog_loads() {
    let engine = laggy_engine(Duration::from_millis(50), Duration::ZERO).await;
    let mut alice = connect(&engine, "alice").await;
    let mut bob = connect(&engine, "bob").await;
    let room = alice.group(Visibility::Private, &[bob.id()]).await;
    alice.join(room.id).await; // so that her sends need no store lookup
    bob.drain().await;
    for i in 1..=5 {
        alice.say(room.id, &format!("m{i}")).await;
    }

    let reference = bob.submit(join_since(room.id, 0)).await;
    // While each page of Bob's replay is on its way, Alice goes on sending.
    let sender = tokio::spawn(async move {
        for i in 6..=12 {
            tokio::time::sleep(Duration::from_millis(20)).await;
            alice.say(room.id, &format!("m{i}")).await;
        }
    });
    assert_eq!(resumed(&mut bob, &reference, 12).await, (1..=12).collect::<Vec<_>>());
    sender.await.expect("the sender finishes");
    bob.quiet().await;
}

#[tokio::test(start_paused = true)]
async fn joining_again_replays_from_the_new_since_seq() {
    let engine = laggy_engine(Duration::from_millis(50), Duration::ZERO).await;
    let mut alice = connect(&engine, "alice").await;
    let mut bob = connect(&engine, "bob").await;
    let room = alice.group(Visibility::Private, &[bob.id()]).await;
    bob.drain().await;
    for i in 1..=6 {
        alice.say(room.id, &format!("m{i}")).await;
    }

    // A replay from 4 is under way (its page is on its way from the store)
    // when the client joins again from 0.
    let from_four = bob.submit(join_since(room.id, 4)).await;
    assert!(matches!(bob.next_within(WAIT).await, Some(Output::Reply { reference: Some(r), .. }) if r == from_four));
    assert!(bob.next_within(Duration::from_millis(10)).await.is_none());
    let from_zero = bob.submit(join_since(room.id, 0)).await;
    assert_eq!(resumed(&mut bob, &from_zero, 6).await, (1..=6).collect::<Vec<_>>());
    bob.quiet().await;

    // The same when part of the first replay is already waiting to go out.
    let mut carol = connect(&engine, "carol").await;
    alice.ok(invite(room.id, &carol.id())).await;
    carol.drain().await;
    let from_zero = carol.submit(join_since(room.id, 0)).await;
    assert!(matches!(carol.next_within(WAIT).await, Some(Output::Reply { reference: Some(r), .. }) if r == from_zero));
    assert_eq!(message_new(carol.event().await).seq, 1); // seq 2 is ready behind it
    let from_four = carol.submit(join_since(room.id, 4)).await;
    assert_eq!(resumed(&mut carol, &from_four, 6).await, [5, 6]);
    carol.quiet().await;
}

#[tokio::test(start_paused = true)]
async fn join_reply_last_seq_is_read_after_subscribing() {
    // Joining reads the room, then waits for the membership lookup; a message
    // committed in between must be counted in last_seq or arrive live.
    let engine = laggy_engine(Duration::ZERO, Duration::from_millis(10)).await;
    let mut alice = connect(&engine, "alice").await;
    let mut bob = connect(&engine, "bob").await;
    let room = alice.group(Visibility::Private, &[bob.id()]).await;
    alice.join(room.id).await;
    bob.drain().await;

    let sender = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(5)).await;
        alice.say(room.id, "during the join").await;
        alice
    });
    let joined = bob.join(room.id).await;
    let mut alice = sender.await.expect("the sender finishes");
    alice.say(room.id, "after the join").await;
    let first_live = message_new(bob.event().await);
    assert_eq!(first_live.seq, joined.last_seq + 1, "no gap between the join reply and the live messages");
    bob.quiet().await;
}

// ---------------------------------------------------------------------------
// room:leave and room:invite
// ---------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn leaving_is_announced_and_stops_the_room_events() {
    let engine = engine().await;
    let mut alice = connect(&engine, "alice").await;
    let mut bob1 = connect(&engine, "bob").await;
    let mut bob2 = connect(&engine, "bob").await;
    let room = alice.group(Visibility::Public, &[]).await;
    alice.join(room.id).await;
    bob1.join(room.id).await;
    bob2.join(room.id).await;
    alice.drain().await;

    bob1.ok(leave(room.id)).await;
    match alice.event().await {
        Event::UserLeft(e) => assert_eq!((e.room_id, e.user_id), (room.id, bob1.id())),
        other => panic!("expected user:left, got {other:?}"),
    }
    // Every session of the user hears that the room is gone, then nothing of it.
    for bob in [&mut bob1, &mut bob2] {
        match bob.event().await {
            Event::RoomRemoved(e) => assert_eq!(e.room_id, room.id),
            other => panic!("expected room:removed, got {other:?}"),
        }
    }
    alice.say(room.id, "after").await;
    bob1.quiet().await;
    bob2.quiet().await;
    assert_eq!(bob2.err(history(room.id, None, None, None)).await, "not_member");
    assert_eq!(bob2.err(send(room.id, "c1", "x")).await, "not_member");
    assert_eq!(bob1.err(leave(room.id)).await, "not_member");
}

#[tokio::test(start_paused = true)]
async fn direct_rooms_cannot_be_left() {
    let engine = engine().await;
    let mut alice = connect(&engine, "alice").await;
    let mut bob = connect(&engine, "bob").await;
    let room = room_of(alice.ok(create(RoomKind::Direct, None, &[bob.id()])).await);
    bob.join(room.id).await;
    bob.drain().await;

    assert_eq!(bob.err(leave(room.id)).await, "forbidden");
    alice.say(room.id, "still here?").await;
    assert_eq!(message_new(bob.event().await).body, "still here?");
}

#[tokio::test(start_paused = true)]
async fn leave_needs_membership_and_a_room() {
    let engine = engine().await;
    let mut alice = connect(&engine, "alice").await;
    let mut carol = connect(&engine, "carol").await;
    let room = alice.group(Visibility::Public, &[]).await;
    assert_eq!(carol.err(leave(room.id)).await, "not_member");
    assert_eq!(carol.err(leave(RoomId::generate())).await, "not_found");
}

#[tokio::test(start_paused = true)]
async fn invite_is_for_members_and_adds_the_invitee() {
    let engine = engine().await;
    let mut alice = connect(&engine, "alice").await;
    let mut bob1 = connect(&engine, "bob").await;
    let mut bob2 = connect(&engine, "bob").await;
    let mut carol = connect(&engine, "carol").await;
    let room = alice.group(Visibility::Private, &[]).await;
    alice.join(room.id).await;

    assert_eq!(carol.err(invite(room.id, &bob1.id())).await, "not_member");
    bob1.quiet().await;

    alice.ok(invite(room.id, &bob1.id())).await;
    assert_eq!(room_added(bob1.event().await).id, room.id);
    assert_eq!(room_added(bob2.event().await).id, room.id);
    assert_eq!(user_joined(alice.event().await), (room.id, bob1.id()));
    assert_eq!(ids(&bob1.join(room.id).await.members), ["alice", "bob"]);

    assert_eq!(alice.err(invite(room.id, &uid("ghost"))).await, "not_found");
    assert_eq!(alice.err(invite(RoomId::generate(), &carol.id())).await, "not_found");
    let direct = room_of(alice.ok(create(RoomKind::Direct, None, &[bob1.id()])).await);
    assert_eq!(alice.err(invite(direct.id, &carol.id())).await, "forbidden");
}

#[tokio::test(start_paused = true)]
async fn support_room_accepts_only_support_invitees() {
    let engine = engine().await;
    let mut visitor = connect(&engine, "visitor").await;
    let mut friend = connect(&engine, "friend").await;
    let mut agent = connect_as(&engine, support("agent")).await;
    let room = room_of(visitor.ok(create(RoomKind::Support, None, &[])).await);

    assert_eq!(visitor.err(invite(room.id, &friend.id())).await, "forbidden");
    friend.quiet().await;
    visitor.ok(invite(room.id, &agent.id())).await;
    assert_eq!(room_added(agent.event().await).id, room.id);
}

// ---------------------------------------------------------------------------
// message:send
// ---------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn send_is_answered_after_commit_with_gapless_seqs() {
    let engine = engine().await;
    let mut alice = connect(&engine, "alice").await;
    let room = alice.group(Visibility::Private, &[]).await;
    for expected in 1..=5 {
        let message = alice.say(room.id, &format!("m{expected}")).await;
        assert_eq!(message.seq, expected);
        assert_eq!(message.sender_id, alice.id());
        let stored = engine.store().message(room.id, message.id).await.expect("store answers");
        assert_eq!(stored, Some(message), "the reply comes after the commit");
    }
    assert_eq!(last_seq(&engine, room.id).await, 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_sends_reach_a_listener_in_seq_order() {
    const SENDERS: u64 = 4;
    const EACH: u64 = 50;
    let engine = engine().await;
    let mut owner = connect(&engine, "owner").await;
    let room = owner.group(Visibility::Public, &[]).await;
    let mut listener = connect(&engine, "listener").await;
    listener.join(room.id).await;

    let mut senders = Vec::new();
    for s in 0..SENDERS {
        let mut client = connect(&engine, &format!("sender{s}")).await;
        client.join(room.id).await;
        senders.push(tokio::spawn(async move {
            let mut refs = Vec::new();
            for i in 0..EACH {
                refs.push(client.submit(send(room.id, &format!("c{i}"), &format!("{s}/{i}"))).await);
                tokio::task::yield_now().await;
            }
            let mut seqs = Vec::new();
            while seqs.len() < refs.len() {
                match client.next_within(WAIT).await {
                    Some(Output::Reply { result, .. }) => seqs.push(message_of(result.expect("send ok")).seq),
                    Some(Output::Event(_)) => {}
                    other => panic!("sender{s}: unexpected {other:?}"),
                }
            }
            seqs
        }));
    }

    let mut heard = Vec::new();
    while heard.len() < (SENDERS * EACH) as usize {
        match listener.event().await {
            Event::MessageNew(e) => heard.push(e.message.seq),
            Event::UserJoined(_) => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(heard, (1..=SENDERS * EACH).collect::<Vec<_>>());
    let mut acked = Vec::new();
    for sender in senders {
        acked.extend(sender.await.expect("the sender finishes"));
    }
    acked.sort_unstable();
    assert_eq!(acked, (1..=SENDERS * EACH).collect::<Vec<_>>());
    assert_eq!(last_seq(&engine, room.id).await, SENDERS * EACH);
}

#[tokio::test(start_paused = true)]
async fn the_sender_gets_a_reply_and_its_other_sessions_an_event() {
    let engine = engine().await;
    let mut alice1 = connect(&engine, "alice").await;
    let mut alice2 = connect(&engine, "alice").await;
    let mut bob = connect(&engine, "bob").await;
    let room = alice1.group(Visibility::Private, &[bob.id()]).await;
    for client in [&mut alice1, &mut alice2, &mut bob] {
        client.join(room.id).await;
        client.drain().await;
    }

    let message = alice1.say(room.id, "hello").await;
    alice1.quiet().await;
    assert_eq!(message_new(alice2.event().await), message);
    assert_eq!(message_new(bob.event().await), message);
}

#[tokio::test(start_paused = true)]
async fn resending_a_client_msg_id_returns_the_first_message() {
    let engine = engine().await;
    let mut alice = connect(&engine, "alice").await;
    let mut bob = connect(&engine, "bob").await;
    let room = alice.group(Visibility::Private, &[bob.id()]).await;
    bob.join(room.id).await;
    bob.drain().await;

    let first = message_of(alice.ok(send(room.id, "same", "one")).await);
    assert_eq!(message_new(bob.event().await), first);
    let again = message_of(alice.ok(send(room.id, "same", "two")).await);
    assert_eq!(again, first, "the first message comes back, body included");
    bob.quiet().await;
    assert_eq!(last_seq(&engine, room.id).await, 1);
    assert_eq!(all_messages(&engine, room.id).await, std::slice::from_ref(&first));

    // The key is per sender: Bob's "same" is a message of its own.
    let bobs = message_of(bob.ok(send(room.id, "same", "mine")).await);
    assert_eq!(bobs.seq, 2);
    assert_ne!(bobs.id, first.id);
}

#[tokio::test(start_paused = true)]
async fn bad_sends_get_their_error_codes_and_store_nothing() {
    let engine = engine().await;
    let mut alice = connect(&engine, "alice").await;
    let mut carol = connect(&engine, "carol").await;
    let room = alice.group(Visibility::Private, &[]).await;
    let base = SendMessage {
        room_id: room.id,
        client_msg_id: "c1".into(),
        body: "hi".into(),
        attachments: vec![],
        reply_to: None,
    };
    let cases: Vec<(&str, SendMessage, &str)> = vec![
        ("empty body", SendMessage { body: String::new(), ..base.clone() }, "invalid"),
        ("blank body", SendMessage { body: " \n ".into(), ..base.clone() }, "invalid"),
        ("long body", SendMessage { body: "x".repeat(4001), ..base.clone() }, "too_large"),
        ("empty client_msg_id", SendMessage { client_msg_id: String::new(), ..base.clone() }, "invalid"),
        ("long client_msg_id", SendMessage { client_msg_id: "c".repeat(129), ..base.clone() }, "invalid"),
        ("control in client_msg_id", SendMessage { client_msg_id: "a\nb".into(), ..base.clone() }, "invalid"),
        ("attachments", SendMessage { attachments: vec!["att-1".into()], ..base.clone() }, "invalid"),
        ("unknown reply_to", SendMessage { reply_to: Some(MessageId::generate()), ..base.clone() }, "not_found"),
        ("unknown room", SendMessage { room_id: RoomId::generate(), ..base.clone() }, "not_found"),
    ];
    for (case, req, code) in cases {
        assert_eq!(alice.err(Command::MessageSend(req)).await, code, "{case}");
    }
    assert_eq!(carol.err(Command::MessageSend(base.clone())).await, "not_member");
    assert_eq!(last_seq(&engine, room.id).await, 0);

    let ok = message_of(alice.ok(Command::MessageSend(SendMessage { body: "x".repeat(4000), ..base })).await);
    let answer = message_of(
        alice
            .ok(Command::MessageSend(SendMessage {
                room_id: room.id,
                client_msg_id: "c2".into(),
                body: "re".into(),
                attachments: vec![],
                reply_to: Some(ok.id),
            }))
            .await,
    );
    assert_eq!(answer.reply_to, Some(ok.id));
}

// ---------------------------------------------------------------------------
// message:edit and message:delete
// ---------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn only_the_sender_may_edit() {
    let engine = engine().await;
    let mut alice1 = connect(&engine, "alice").await;
    let mut alice2 = connect(&engine, "alice").await;
    let mut bob = connect(&engine, "bob").await;
    let room = alice1.group(Visibility::Private, &[bob.id()]).await;
    for client in [&mut alice1, &mut alice2, &mut bob] {
        client.join(room.id).await;
    }
    let message = alice1.say(room.id, "draft").await;
    alice2.drain().await;
    bob.drain().await;

    assert_eq!(bob.err(edit(room.id, message.id, "hijacked")).await, "forbidden");
    alice2.quiet().await;

    let edited = message_of(alice1.ok(edit(room.id, message.id, "final")).await);
    assert_eq!((edited.id, edited.seq, edited.body.as_str()), (message.id, 1, "final"));
    assert!(edited.edited_at.is_some());
    for other in [&mut bob, &mut alice2] {
        match other.event().await {
            Event::MessageUpdated(e) => assert_eq!(e.message, edited),
            ev => panic!("expected message:updated, got {ev:?}"),
        }
    }
    alice1.quiet().await;
    assert_eq!(all_messages(&engine, room.id).await, [edited]);
    assert_eq!(alice1.err(edit(room.id, MessageId::generate(), "x")).await, "not_found");
    assert_eq!(alice1.err(edit(room.id, message.id, "")).await, "invalid");
}

#[tokio::test(start_paused = true)]
async fn delete_is_for_the_sender_or_a_room_admin() {
    let engine = engine().await;
    let mut alice = connect(&engine, "alice").await; // the owner
    let mut bob = connect(&engine, "bob").await;
    let mut carol = connect(&engine, "carol").await;
    let room = alice.group(Visibility::Private, &[bob.id(), carol.id()]).await;
    for client in [&mut alice, &mut bob, &mut carol] {
        client.join(room.id).await;
    }
    let by_bob = bob.say(room.id, "bob's").await;
    let by_carol = carol.say(room.id, "carol's").await;
    let by_alice = alice.say(room.id, "alice's").await;
    for client in [&mut alice, &mut bob, &mut carol] {
        client.drain().await;
    }

    assert_eq!(carol.err(delete(room.id, by_bob.id)).await, "forbidden");
    assert_eq!(bob.err(delete(room.id, by_alice.id)).await, "forbidden");

    bob.ok(delete(room.id, by_bob.id)).await;
    for other in [&mut alice, &mut carol] {
        match other.event().await {
            Event::MessageDeleted(e) => assert_eq!((e.room_id, e.message_id), (room.id, by_bob.id)),
            ev => panic!("expected message:deleted, got {ev:?}"),
        }
    }
    bob.quiet().await;
    alice.ok(delete(room.id, by_carol.id)).await; // the owner moderates
    assert!(matches!(carol.event().await, Event::MessageDeleted(e) if e.message_id == by_carol.id));

    let messages = all_messages(&engine, room.id).await;
    assert_eq!(seqs(&messages), [1, 2, 3], "deleted messages keep their seq");
    let shown: Vec<(bool, &str)> = messages.iter().map(|m| (m.deleted, m.body.as_str())).collect();
    assert_eq!(shown, [(true, ""), (true, ""), (false, "alice's")]);
    assert_eq!(bob.err(edit(room.id, by_bob.id, "resurrected")).await, "conflict");
    let page = page_of(alice.ok(history(room.id, None, None, None)).await);
    assert_eq!(page.messages[0].body, "", "history shows the body cleared");
}

// ---------------------------------------------------------------------------
// Typing
// ---------------------------------------------------------------------------

/// Alice (two sessions) and Bob, all joined to one room, nothing pending.
async fn typing_room(engine: &Engine) -> (Client, Client, Client, RoomId) {
    let mut alice1 = connect(engine, "alice").await;
    let mut alice2 = connect(engine, "alice").await;
    let mut bob = connect(engine, "bob").await;
    let room = alice1.group(Visibility::Private, &[bob.id()]).await;
    for client in [&mut alice1, &mut alice2, &mut bob] {
        client.join(room.id).await;
        client.drain().await;
    }
    (alice1, alice2, bob, room.id)
}

#[tokio::test(start_paused = true)]
async fn typing_reaches_other_members_but_not_the_typist() {
    let engine = engine().await;
    let (mut alice1, mut alice2, mut bob, room) = typing_room(&engine).await;

    alice1.ok(typing_start(room)).await;
    assert_eq!(typing_of(bob.event().await), (room, alice1.id(), true));
    alice1.quiet().await;
    alice2.quiet().await;

    alice1.ok(typing_stop(room)).await;
    assert_eq!(typing_of(bob.event().await), (room, alice1.id(), false));
    // A stopped indicator does not end a second time when its deadline passes.
    bob.quiet_for(Duration::from_secs(7)).await;
    alice2.quiet().await;

    let mut carol = connect(&engine, "carol").await;
    assert_eq!(carol.err(typing_start(room)).await, "not_member");
}

#[tokio::test(start_paused = true)]
async fn typing_ends_six_seconds_after_the_last_start() {
    let engine = engine().await;
    let (mut alice, _alice2, mut bob, room) = typing_room(&engine).await;

    let t0 = Instant::now();
    alice.ok(typing_start(room)).await;
    assert_eq!(typing_of(bob.event().await), (room, alice.id(), true));
    tokio::time::sleep(Duration::from_secs(4)).await;
    alice.ok(typing_start(room)).await;
    // Re-arming is silent and moves the end to 4 + 6 = 10 s.
    let until = t0 + Duration::from_millis(9_900);
    bob.quiet_for(until - Instant::now()).await;
    assert_eq!(typing_of(bob.event_within(Duration::from_secs(1)).await), (room, alice.id(), false));
    let ended = t0.elapsed();
    assert!(ended >= Duration::from_secs(10) && ended < Duration::from_millis(10_200), "ended after {ended:?}");
    bob.quiet_for(Duration::from_secs(10)).await;
}

#[tokio::test(start_paused = true)]
async fn sending_a_message_ends_typing() {
    let engine = engine().await;
    let (mut alice, _alice2, mut bob, room) = typing_room(&engine).await;

    alice.ok(typing_start(room)).await;
    assert!(typing_of(bob.event().await).2);
    let message = alice.say(room, "done typing").await;
    assert_eq!(typing_of(bob.event().await), (room, alice.id(), false));
    assert_eq!(message_new(bob.event().await), message);
    bob.quiet_for(Duration::from_secs(7)).await;
}

#[tokio::test(start_paused = true)]
async fn leaving_or_disconnecting_ends_typing() {
    let engine = engine().await;
    let (mut alice1, alice2, mut bob, room) = typing_room(&engine).await;
    let mut carol = connect(&engine, "carol").await;
    alice1.ok(invite(room, &carol.id())).await;
    carol.join(room).await;
    carol.ok(typing_start(room)).await;
    alice1.ok(typing_start(room)).await;
    bob.drain().await;

    carol.ok(leave(room)).await;
    assert_eq!(typing_of(bob.event().await), (room, carol.id(), false));
    assert!(matches!(bob.event().await, Event::UserLeft(_)));

    // Closing one of Alice's two sessions changes nothing; closing the last ends her typing.
    drop(alice2);
    bob.quiet().await;
    drop(alice1);
    assert_eq!(typing_of(bob.event().await), (room, uid("alice"), false));
}

// ---------------------------------------------------------------------------
// Receipts and unread counts
// ---------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn receipts_move_forward_only() {
    let engine = engine().await;
    let mut alice = connect(&engine, "alice").await;
    let mut bob1 = connect(&engine, "bob").await;
    let mut bob2 = connect(&engine, "bob").await;
    let room = alice.group(Visibility::Private, &[bob1.id()]).await;
    alice.join(room.id).await;
    bob2.join(room.id).await;
    for i in 1..=5 {
        alice.say(room.id, &format!("m{i}")).await;
    }
    bob1.drain().await;
    bob2.drain().await;
    let bob = bob1.id();

    bob1.ok(delivered(room.id, 3)).await;
    assert_eq!(status_of(alice.event().await), (bob.clone(), ReceiptKind::Delivered, 3));
    bob1.ok(delivered(room.id, 2)).await; // backwards: accepted, but nothing moves
    bob1.ok(delivered(room.id, 3)).await; // same place: nothing moves either
    alice.quiet().await;

    bob1.ok(read(room.id, 4)).await;
    assert_eq!(status_of(alice.event().await), (bob.clone(), ReceiptKind::Read, 4));
    bob1.ok(delivered(room.id, 4)).await; // reading 4 delivered it too
    alice.quiet().await;
    bob1.ok(delivered(room.id, 5)).await;
    assert_eq!(status_of(alice.event().await), (bob.clone(), ReceiptKind::Delivered, 5));
    bob1.ok(read(room.id, 1)).await;
    alice.quiet().await;

    assert_eq!(bob1.err(read(room.id, 6)).await, "invalid");
    assert_eq!(bob1.err(delivered(room.id, 6)).await, "invalid");
    bob2.quiet().await; // a user is not told about their own receipts
    let member = engine.store().member(room.id, &bob).await.expect("store answers").expect("member");
    assert_eq!((member.delivered_seq, member.read_seq), (5, 4));

    let mut carol = connect(&engine, "carol").await;
    assert_eq!(carol.err(read(room.id, 1)).await, "not_member");
}

#[tokio::test(start_paused = true)]
async fn unread_counts_in_room_list_and_ready() {
    let engine = engine().await;
    let mut alice = connect(&engine, "alice").await;
    let mut bob = connect(&engine, "bob").await;
    let room = alice.group(Visibility::Private, &[bob.id()]).await;
    for i in 1..=3 {
        alice.say(room.id, &format!("m{i}")).await;
    }

    let mine = alice.summary(room.id).await;
    assert_eq!((mine.unread, mine.read_seq, mine.room.last_seq), (0, 3, 3), "own messages are not unread");
    let theirs = bob.summary(room.id).await;
    assert_eq!((theirs.unread, theirs.read_seq), (3, 0));

    bob.ok(read(room.id, 1)).await;
    assert_eq!(bob.summary(room.id).await.unread, 2);
    let again = connect(&engine, "bob").await;
    let summary = again.ready.rooms.iter().find(|s| s.room.id == room.id).expect("listed in ready");
    assert_eq!((summary.unread, summary.read_seq, summary.room.last_seq), (2, 1, 3));

    bob.say(room.id, "reply").await;
    assert_eq!(bob.summary(room.id).await.unread, 0, "sending reads the room up to one's own message");
    assert_eq!(alice.summary(room.id).await.unread, 1);
    let alice_again = connect(&engine, "alice").await;
    assert_eq!(alice_again.ready.rooms[0].unread, 1);
}

// ---------------------------------------------------------------------------
// Presence
// ---------------------------------------------------------------------------

/// Makes Alice and Bob share a room and returns Bob's session, listening for
/// presence, with Alice offline again and nothing pending.
async fn presence_setup(engine: &Engine) -> Client {
    let mut bob = connect(engine, "bob").await;
    let mut alice = connect(engine, "alice").await;
    alice.group(Visibility::Private, &[bob.id()]).await;
    drop(alice);
    bob.drain().await;
    bob.ignore_presence = false;
    bob.drain().await;
    bob
}

#[tokio::test(start_paused = true)]
async fn online_while_any_session_is_open() {
    let engine = engine().await;
    let mut bob = presence_setup(&engine).await;
    let mut carol = connect(&engine, "carol").await; // shares no room with Alice
    carol.ignore_presence = false;
    carol.drain().await;

    let alice1 = connect(&engine, "alice").await;
    assert_eq!(presence_of(bob.event().await), (uid("alice"), PresenceStatus::Online, None));
    let alice2 = connect(&engine, "alice").await;
    bob.quiet().await;
    drop(alice1);
    bob.quiet().await;
    assert!(engine.online_users().iter().any(|u| u.user.id.as_str() == "alice"));

    let before = Timestamp::now();
    drop(alice2);
    let (user, status, last_seen) = presence_of(bob.event().await);
    assert_eq!((user.as_str(), status), ("alice", PresenceStatus::Offline));
    assert!(last_seen.is_some_and(|t| t >= before), "offline carries last_seen");
    assert!(!engine.online_users().iter().any(|u| u.user.id.as_str() == "alice"));
    carol.quiet().await;
}

#[tokio::test(start_paused = true)]
async fn invisible_shows_as_offline_and_is_not_listed() {
    let engine = engine().await;
    let mut bob = presence_setup(&engine).await;
    let mut alice = connect(&engine, "alice").await;
    assert_eq!(presence_of(bob.event().await).1, PresenceStatus::Online);

    alice.ok(presence(PresenceStatus::Invisible)).await;
    let (user, status, _) = presence_of(bob.event().await);
    assert_eq!((user, status), (alice.id(), PresenceStatus::Offline));
    let listed = online_of(bob.ok(Command::UsersOnline).await);
    assert_eq!(listed.iter().map(|u| u.user.id.as_str()).collect::<Vec<_>>(), ["bob"]);
    assert!(!engine.online_users().iter().any(|u| u.user.id == alice.id()));

    alice.ok(presence(PresenceStatus::Busy)).await;
    assert_eq!(presence_of(bob.event().await), (alice.id(), PresenceStatus::Busy, None));
    let listed = online_of(alice.ok(Command::UsersOnline).await);
    let alice_listed = listed.iter().find(|u| u.user.id == alice.id()).expect("listed again");
    assert_eq!(alice_listed.status, PresenceStatus::Busy);

    assert_eq!(alice.err(presence(PresenceStatus::Offline)).await, "invalid");
}

#[tokio::test(start_paused = true)]
async fn support_availability_counts_visible_agents() {
    let engine = engine().await;
    let none = SupportAvailability { available: false, online_agents: 0 };
    assert_eq!(engine.support_availability(), none);

    let agent1 = connect_as(&engine, support("agent1")).await;
    let agent1_again = connect_as(&engine, support("agent1")).await;
    let mut agent2 = connect_as(&engine, support("agent2")).await;
    let _visitor = connect(&engine, "visitor").await;
    assert_eq!(engine.support_availability(), SupportAvailability { available: true, online_agents: 2 });

    agent2.ok(presence(PresenceStatus::Invisible)).await;
    assert_eq!(engine.support_availability().online_agents, 1);
    agent2.ok(presence(PresenceStatus::Away)).await;
    assert_eq!(engine.support_availability().online_agents, 2);
    drop(agent2);
    drop(agent1);
    assert_eq!(engine.support_availability().online_agents, 1, "agent1 still has a session");
    drop(agent1_again);
    assert_eq!(engine.support_availability(), none);
}

// ---------------------------------------------------------------------------
// users:search, ping, room:history
// ---------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn users_search_matches_ids_and_names() {
    let engine = engine().await;
    let named = |id: &str, name: &str| Identity { name: Some(name.into()), ..Identity::new(uid(id)) };
    let mut ann = connect_as(&engine, named("ann", "Ann Lee")).await;
    connect_as(&engine, named("annette", "Annette")).await;
    connect_as(&engine, named("u-17", "Bob Leeds")).await;
    connect_as(&engine, named("zed", "Zed")).await;

    let found = |reply: Reply| match reply {
        Reply::Users { users } => users.into_iter().map(|u| u.name).collect::<Vec<_>>(),
        other => panic!("expected users, got {other:?}"),
    };
    assert_eq!(found(ann.ok(search("ANN", None)).await), ["Ann Lee", "Annette"]);
    assert_eq!(found(ann.ok(search("lee", None)).await), ["Ann Lee", "Bob Leeds"]);
    assert_eq!(found(ann.ok(search("u-1", None)).await), ["Bob Leeds"]);
    assert_eq!(found(ann.ok(search("e", Some(1))).await), ["Ann Lee"]);
    assert!(found(ann.ok(search("nobody", None)).await).is_empty());
    assert_eq!(ann.err(search("  ", None)).await, "invalid");
    assert_eq!(ann.err(search(&"q".repeat(101), None)).await, "too_large");
}

/// `messages:search` through a session: the store's results in the reply
/// `{"results","next"?}`, and the rules of section 12 checked before the
/// store is asked.
#[tokio::test(start_paused = true)]
async fn messages_search_checks_its_input_and_the_membership() {
    let engine = engine().await;
    let mut alice = connect(&engine, "alice").await;
    let mut bob = connect(&engine, "bob").await;
    let room = alice.group(Visibility::Private, &[]).await;
    let theirs = bob.group(Visibility::Private, &[]).await;
    let first = alice.say(room.id, "Crème brûlée for dessert").await;
    alice.say(room.id, "creme of the crop").await;
    bob.say(theirs.id, "brulee too").await;

    let page = |reply: Reply| match reply {
        Reply::Search(page) => page,
        other => panic!("expected search results, got {other:?}"),
    };
    let found = page(alice.ok(find("BRULEE", None, None, None)).await);
    assert_eq!(found.results.iter().map(|h| h.message.id).collect::<Vec<_>>(), [first.id]);
    assert_eq!(found.results[0].room.id, room.id);
    let json = serde_json::to_value(Reply::Search(found)).expect("serializes");
    assert!(json["results"][0]["message"]["body"].is_string() && json.get("next").is_none(), "{json}");
    let two = page(alice.ok(find("creme", Some(room.id), Some(1), None)).await);
    assert_eq!(two.results.len(), 1);
    let rest = page(alice.ok(find("creme", Some(room.id), Some(1), two.next.clone())).await);
    assert_eq!(rest.results[0].message.id, first.id, "the next page is older");
    assert!(two.next.is_some() && rest.next.is_none());
    assert_eq!(page(alice.ok(find("creme", None, Some(500), None)).await).results.len(), 2, "a large limit is capped");

    for (what, command, code) in [
        ("a room of others", find("brulee", Some(theirs.id), None, None), "forbidden"),
        ("a room that does not exist", find("brulee", Some(RoomId::generate()), None, None), "forbidden"),
        ("no word", find(" ?! ", None, None, None), "invalid"),
        (
            "too many words",
            find(&(0..17).map(|i| format!("w{i}")).collect::<Vec<_>>().join(" "), None, None, None),
            "invalid",
        ),
        ("a long query", find(&"q".repeat(201), None, None, None), "too_large"),
        ("limit 0", find("creme", None, Some(0), None), "invalid"),
        ("a made-up cursor", find("creme", None, None, Some("zzz".into())), "invalid"),
    ] {
        assert_eq!(alice.err(command).await, code, "{what}");
    }
    // The same over the engine's HTTP entry point; visitors are refused.
    let request = crate::command::SearchMessages { q: "brulee".into(), room_id: None, limit: None, before: None };
    let over_http = engine.search_messages(&Identity::new(uid("bob")), request.clone()).await.expect("searches");
    assert_eq!(over_http.results.len(), 1);
    let refused = engine.search_messages(&visitor("v9"), request).await.expect_err("visitors may not");
    assert_eq!(refused.code(), crate::ErrorCode::Forbidden);
}

#[tokio::test]
async fn ping_answers_with_the_server_time() {
    let engine = engine().await;
    let mut alice = connect(&engine, "alice").await;
    let before = Timestamp::now();
    let Reply::Pong { server_time } = alice.ok(Command::Ping).await else { panic!("expected a pong") };
    assert!(server_time >= before && server_time <= Timestamp::now());
}

#[tokio::test(start_paused = true)]
async fn history_pages_through_the_session() {
    let engine = engine().await;
    let mut alice = connect(&engine, "alice").await;
    let mut carol = connect(&engine, "carol").await;
    let room = alice.group(Visibility::Private, &[]).await;
    for i in 1..=120 {
        alice.say(room.id, &format!("m{i}")).await;
    }

    let page = page_of(alice.ok(history(room.id, None, None, None)).await);
    assert_eq!(seqs(&page.messages), (71..=120).collect::<Vec<_>>(), "the latest 50 by default");
    assert!(page.has_more);
    let page = page_of(alice.ok(history(room.id, None, None, Some(1000))).await);
    assert_eq!(seqs(&page.messages), (21..=120).collect::<Vec<_>>(), "the limit is clamped to 100");
    assert!(page.has_more);
    let page = page_of(alice.ok(history(room.id, Some(21), None, Some(30))).await);
    assert_eq!(seqs(&page.messages), (1..=20).collect::<Vec<_>>());
    assert!(!page.has_more);
    let page = page_of(alice.ok(history(room.id, None, Some(100), Some(10))).await);
    assert_eq!(seqs(&page.messages), (101..=110).collect::<Vec<_>>());
    assert!(page.has_more);

    assert_eq!(alice.err(history(room.id, None, None, Some(0))).await, "invalid");
    assert_eq!(carol.err(history(room.id, None, None, None)).await, "not_member");
    assert_eq!(carol.err(history(RoomId::generate(), None, None, None)).await, "not_found");

    // The same rules through the engine, as the HTTP API uses them.
    let query = HistoryQuery { before_seq: Some(3), after_seq: None, limit: 10 };
    let page = engine.history(&alice.id(), room.id, query).await.expect("member reads");
    assert_eq!(seqs(&page.messages), [1, 2]);
    let err = engine.history(&carol.id(), room.id, query).await.expect_err("not a member");
    assert_eq!(err.code().as_str(), "not_member");
    let err = engine.history(&alice.id(), room.id, HistoryQuery { limit: 0, ..query }).await.expect_err("limit 0");
    assert_eq!(err.code().as_str(), "invalid");
}

// ---------------------------------------------------------------------------
// Limits
// ---------------------------------------------------------------------------

#[tokio::test]
async fn commands_over_the_rate_are_rate_limited() {
    // The bucket runs on the real clock.
    let engine = engine_with(limits(Limits { commands_per_second: 1, command_burst: 3, ..Limits::default() })).await;
    let mut alice1 = connect(&engine, "alice").await;
    let mut alice2 = connect(&engine, "alice").await;
    for _ in 0..3 {
        alice1.ok(Command::Ping).await;
    }
    assert_eq!(alice1.err(Command::Ping).await, "rate_limited");
    alice2.ok(Command::Ping).await; // each session has its own bucket

    tokio::time::sleep(Duration::from_millis(1100)).await;
    alice1.ok(Command::Ping).await;
    assert_eq!(alice1.err(Command::Ping).await, "rate_limited");
}

#[tokio::test]
async fn too_many_bad_frames_close_with_abuse() {
    // The window runs on the real clock.
    let engine = engine_with(limits(Limits {
        max_bad_frames: 3,
        bad_frame_window: Duration::from_millis(300),
        ..Limits::default()
    }))
    .await;
    let mut alice = connect(&engine, "alice").await;
    for _ in 0..3 {
        assert_eq!(alice.session.note_bad_frame(), None);
    }
    assert_eq!(alice.session.note_bad_frame(), Some(CloseReason::Abuse));

    let mut bob = connect(&engine, "bob").await;
    for _ in 0..3 {
        assert_eq!(bob.session.note_bad_frame(), None);
    }
    tokio::time::sleep(Duration::from_millis(400)).await;
    for _ in 0..3 {
        assert_eq!(bob.session.note_bad_frame(), None, "old bad frames left the window");
    }
    assert_eq!(bob.session.note_bad_frame(), Some(CloseReason::Abuse));
}

#[tokio::test(start_paused = true)]
async fn a_slow_consumer_is_closed_and_the_others_keep_receiving() {
    let engine = engine_with(limits(Limits { outbound_queue: 4, ..Limits::default() })).await;
    let mut alice = connect(&engine, "alice").await;
    let mut slow = connect(&engine, "bob").await;
    let mut carol = connect(&engine, "carol").await;
    let room = alice.group(Visibility::Public, &[]).await;
    slow.join(room.id).await;
    carol.join(room.id).await;
    slow.drain().await;
    carol.drain().await;

    for i in 1..=10 {
        let message = alice.say(room.id, &format!("m{i}")).await;
        assert_eq!(message_new(carol.event().await).seq, message.seq);
    }
    assert_eq!(slow.session.close_reason(), Some(CloseReason::SlowConsumer));
    match slow.next_within(WAIT).await {
        Some(Output::Close(CloseReason::SlowConsumer)) => {}
        other => panic!("expected the slow consumer's close first, got {other:?}"),
    }
    assert!(!slow.session.accepts_input());
    alice.say(room.id, "still flowing").await;
    assert_eq!(message_new(carol.event().await).body, "still flowing");
    assert_eq!(carol.session.close_reason(), None);
}

#[tokio::test(start_paused = true)]
async fn an_expired_token_closes_the_session_after_the_leeway() {
    let engine = engine().await; // leeway 5 s
    let start = Instant::now();
    let expiring =
        Identity { expires_at: Some(Timestamp::now().plus(Duration::from_secs(2))), ..Identity::new(uid("bob")) };
    let mut bob = connect_as(&engine, expiring).await;
    let mut alice = connect(&engine, "alice").await;

    bob.quiet_for(Duration::from_millis(6_900)).await;
    assert_eq!(bob.closed().await, CloseReason::TokenExpired);
    let closed_after = start.elapsed();
    assert!(closed_after <= Duration::from_millis(7_100), "closed after {closed_after:?}");
    alice.ok(Command::Ping).await;
    assert_eq!(alice.session.close_reason(), None);
}

#[tokio::test(start_paused = true)]
async fn a_transport_may_close_a_slow_consumer_and_it_is_counted_once() {
    let engine = engine().await;
    let mut bob = connect(&engine, "bob").await;
    let mut alice = connect(&engine, "alice").await;
    bob.session.fell_behind();
    bob.session.fell_behind();
    assert_eq!(bob.closed().await, CloseReason::SlowConsumer);
    assert_eq!(metric(&engine, "chat_slow_consumer_closes_total"), 1.0);
    alice.ok(Command::Ping).await;
    assert_eq!(alice.session.close_reason(), None);
}

#[tokio::test(start_paused = true)]
async fn each_session_gets_a_keepalive_every_interval_between_its_other_output() {
    let config = EngineConfig { keepalive_interval: Duration::from_secs(10), ..EngineConfig::default() };
    let engine = engine_with(config).await;
    let start = Instant::now();
    let mut ada = connect(&engine, "ada").await;
    tokio::time::advance(Duration::from_secs(4)).await;
    let mut bob = connect(&engine, "bob").await;
    let room = ada.group(Visibility::Private, &[uid("bob")]).await;
    bob.join(room.id).await;

    async fn keepalive(client: &mut Client) {
        loop {
            match client.session.next_output().await {
                Output::Keepalive => return,
                Output::Event(_) => continue,
                other => panic!("expected a keepalive, got {other:?}"),
            }
        }
    }
    // Ada's first beat comes 10 s after she connected, bob's 10 s after he
    // did, and each again 10 s later.
    let mut beats = Vec::new();
    for _ in 0..2 {
        keepalive(&mut ada).await;
        beats.push(("ada", start.elapsed().as_secs()));
        keepalive(&mut bob).await;
        beats.push(("bob", start.elapsed().as_secs()));
    }
    assert_eq!(beats, [("ada", 10), ("bob", 14), ("ada", 20), ("bob", 24)]);
    // Beats do not hold back anything else.
    ada.say(room.id, "after the beats").await;
    assert_eq!(message_new(bob.event().await).body, "after the beats");
    drop(ada);
    drop(bob);
    let later = Instant::now() + Duration::from_secs(60);
    let next = engine.inner.keepalives.take_due(later, |ids| engine.inner.hub.beat(ids));
    assert_eq!(next, None, "closed sessions leave the queue");
}

#[tokio::test(start_paused = true)]
async fn keepalives_can_be_turned_off() {
    let engine = engine_with(EngineConfig { keepalive_interval: Duration::ZERO, ..EngineConfig::default() }).await;
    let mut ada = connect(&engine, "ada").await;
    let out = tokio::time::timeout(Duration::from_secs(120), ada.session.next_output()).await;
    assert!(out.is_err(), "nothing comes, not even a keepalive: {out:?}");
}

#[tokio::test(start_paused = true)]
async fn connections_per_user_are_limited() {
    let engine = engine_with(limits(Limits { max_connections_per_user: 2, ..Limits::default() })).await;
    let first = connect(&engine, "alice").await;
    let _second = connect(&engine, "alice").await;
    let err = engine.open_session(Identity::new(uid("alice"))).await.expect_err("a third is refused");
    assert_eq!(err.code().as_str(), "rate_limited");
    let _bob = connect(&engine, "bob").await;
    assert_eq!(engine.connections(), 3);
    drop(first);
    let _third = connect(&engine, "alice").await;
}

#[tokio::test(start_paused = true)]
async fn sessions_are_counted_by_transport() {
    let engine = engine_with(EngineConfig::default()).await;
    let (ws, _) = engine.open_session_on("websocket", Identity::new(uid("ada"))).await.expect("opens");
    let (sio, _) = engine.open_session_on("socketio", Identity::new(uid("bob"))).await.expect("opens");
    let (sio2, _) = engine.open_session_on("socketio", Identity::new(uid("cy"))).await.expect("opens");
    let _other = connect(&engine, "dee").await;
    let counts = engine.connections_by_transport();
    assert_eq!(counts.get("websocket"), Some(&1));
    assert_eq!(counts.get("socketio"), Some(&2));
    assert_eq!(counts.get("other"), Some(&1));
    assert_eq!(engine.connections(), 4);
    drop((sio, sio2));
    let counts = engine.connections_by_transport();
    assert_eq!(counts.get("socketio"), Some(&0), "a transport whose sessions closed reads 0");
    let metrics = engine.encode_metrics();
    assert!(metrics.contains(r#"chat_transport_connections{transport="socketio"} 0"#), "{metrics}");
    assert!(metrics.contains(r#"chat_transport_connections{transport="websocket"} 1"#), "{metrics}");
    drop(ws);
}

// ---------------------------------------------------------------------------
// Shutdown
// ---------------------------------------------------------------------------

/// The value of one sample line of the engine's metrics.
fn metric(engine: &Engine, name: &str) -> f64 {
    let text = engine.encode_metrics();
    let line = text.lines().find(|l| l.split_whitespace().next() == Some(name));
    line.and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("{name} in {text}"))
}

#[tokio::test(start_paused = true)]
async fn a_commit_window_gathers_sends_into_one_commit() {
    for (window, commits) in [(Duration::ZERO, 5.0), (Duration::from_millis(50), 1.0)] {
        let engine = engine_with(EngineConfig { commit_window: window, ..EngineConfig::default() }).await;
        let mut alice = connect(&engine, "alice").await;
        let room = alice.group(Visibility::Private, &[]).await;
        // Five sends 5 ms apart: each alone in its commit without a window,
        // all in the first one with a 50 ms window.
        for i in 0..5 {
            alice.submit(send(room.id, &format!("c{i}"), "m")).await;
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let mut acked = Vec::new();
        while acked.len() < 5 {
            match alice.next_within(WAIT).await {
                Some(Output::Reply { result: Ok(Reply::Message { message }), .. }) => acked.push(message.seq),
                Some(Output::Event(_)) => continue,
                other => panic!("expected acks, got {other:?}"),
            }
        }
        assert_eq!(acked, [1, 2, 3, 4, 5], "window {window:?}");
        assert_eq!(metric(&engine, "chat_store_commit_batch_size_count"), commits, "window {window:?}");
        assert_eq!(metric(&engine, "chat_store_commit_batch_size_sum"), 5.0, "window {window:?}");
    }
}

#[tokio::test(start_paused = true)]
async fn shutdown_closes_sessions_and_commits_accepted_sends() {
    // A small batch makes the commit queue fill, so sends also wait for room.
    let engine = engine_with(EngineConfig { max_commit_batch: 4, ..EngineConfig::default() }).await;
    let mut alice = connect(&engine, "alice").await;
    let mut bob = connect(&engine, "bob").await;
    let room = alice.group(Visibility::Private, &[bob.id()]).await;
    bob.join(room.id).await;

    for i in 0..50 {
        alice.submit(send(room.id, &format!("c{i}"), &format!("m{i}"))).await;
    }
    engine.shutdown().await;

    // Every accepted send is acknowledged before the close.
    let mut acked = Vec::new();
    let reason = loop {
        match alice.next_within(WAIT).await {
            Some(Output::Reply { result: Ok(Reply::Message { message }), .. }) => acked.push(message.seq),
            Some(Output::Close(reason)) => break reason,
            Some(Output::Event(_)) => continue,
            other => panic!("expected acks then the close, got {other:?}"),
        }
    };
    assert_eq!(reason, CloseReason::Shutdown);
    acked.sort_unstable();
    assert_eq!(acked, (1..=50).collect::<Vec<_>>());
    assert_eq!(bob.closed().await, CloseReason::Shutdown);
    let stored = all_messages(&engine, room.id).await;
    assert_eq!(seqs(&stored), (1..=50).collect::<Vec<_>>());
    assert_eq!(stored[49].body, "m49");

    let err = engine.open_session(Identity::new(uid("carol"))).await.expect_err("refused after shutdown");
    assert_eq!(err.code().as_str(), "unavailable");
    let err = engine
        .post_as("rec", User::new(uid("alice"), "alice"), room.id, "late".into(), "too late".into())
        .await
        .expect_err("refused after shutdown");
    assert_eq!(err.code().as_str(), "unavailable");
    assert_eq!(last_seq(&engine, room.id).await, 50);
}

// ---------------------------------------------------------------------------
// Bridges
// ---------------------------------------------------------------------------

#[derive(Debug)]
struct Seen {
    event: BridgeEvent,
    origin: Option<String>,
    /// For a new message: whether the store already had it when the bridge heard of it.
    stored: bool,
}

struct Recorder {
    store: Arc<MemoryStore>,
    agents: u32,
    seen: Mutex<Vec<Seen>>,
}

impl Recorder {
    fn new(store: Arc<MemoryStore>, agents: u32) -> Arc<Self> {
        Arc::new(Recorder { store, agents, seen: Mutex::new(Vec::new()) })
    }

    fn take(&self) -> Vec<Seen> {
        std::mem::take(&mut *self.seen.lock().expect("not poisoned"))
    }
}

#[async_trait::async_trait]
impl Bridge for Recorder {
    fn name(&self) -> &str {
        "rec"
    }

    fn on_event(&self, event: &BridgeEvent, origin: Option<&str>) {
        let stored = match event {
            // The memory store answers without waiting, so it can be asked from here.
            BridgeEvent::MessageCreated(m) => {
                matches!(self.store.message(m.room_id, m.id).now_or_never(), Some(Ok(Some(_))))
            }
            _ => true,
        };
        let seen = Seen { event: event.clone(), origin: origin.map(str::to_owned), stored };
        self.seen.lock().expect("not poisoned").push(seen);
    }

    fn online_agents(&self) -> u32 {
        self.agents
    }
}

async fn bridged(agents: u32) -> (Engine, Arc<Recorder>) {
    let store = Arc::new(MemoryStore::new());
    let recorder = Recorder::new(store.clone(), agents);
    let engine = Engine::builder(store).bridge(recorder.clone()).start().await.expect("the engine starts");
    (engine, recorder)
}

fn agent_user(id: &str) -> User {
    User { roles: vec!["support".into()], ..User::new(uid(id), id) }
}

#[tokio::test(start_paused = true)]
async fn bridges_see_commits_with_their_origin() {
    let (engine, recorder) = bridged(0).await;
    let mut alice = connect(&engine, "alice").await;
    let room = alice.group(Visibility::Public, &[]).await;
    alice.join(room.id).await;
    recorder.take();

    let sent = alice.say(room.id, "from here").await;
    let seen = recorder.take();
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert_eq!(seen[0].event, BridgeEvent::MessageCreated(sent.clone()));
    assert_eq!(seen[0].origin, None);
    assert!(seen[0].stored, "bridges hear of a message after its commit");

    // A resend stores nothing, so bridges hear nothing.
    alice.ok(send(room.id, &sent.client_msg_id, "from here")).await;
    assert!(recorder.take().is_empty());

    let dave = User::new(uid("dave"), "Dave");
    let posted = engine
        .post_as("rec", dave.clone(), room.id, "d1".into(), "from afar".into())
        .await
        .expect("a public room takes anyone");
    assert_eq!((posted.seq, posted.sender_id.as_str()), (2, "dave"));
    let seen = recorder.take();
    let created: Vec<&Seen> = seen.iter().filter(|s| matches!(s.event, BridgeEvent::MessageCreated(_))).collect();
    assert_eq!(created.len(), 1, "{seen:?}");
    assert_eq!(created[0].event, BridgeEvent::MessageCreated(posted.clone()));
    assert_eq!(created[0].origin.as_deref(), Some("rec"));
    assert!(created[0].stored);
    // Dave's joining is the bridge's own doing too, so it can skip the echo.
    for s in &seen {
        assert_eq!(s.origin.as_deref(), Some("rec"), "{s:?}");
    }
    assert!(seen.iter().any(|s| matches!(&s.event, BridgeEvent::MemberAdded { user, .. } if user.id == dave.id)));

    assert_eq!(user_joined(alice.event().await), (room.id, dave.id));
    assert_eq!(message_new(alice.event().await), posted);
}

#[tokio::test(start_paused = true)]
async fn post_as_an_agent_joins_the_support_room_and_reaches_the_visitor() {
    let (engine, recorder) = bridged(0).await;
    let mut visitor = connect(&engine, "visitor").await;
    let room = room_of(visitor.ok(create(RoomKind::Support, None, &[])).await);
    visitor.join(room.id).await;
    visitor.drain().await;
    recorder.take();

    let agent = agent_user("agent");
    let posted = engine
        .post_as("rec", agent.clone(), room.id, "a1".into(), "How can I help?".into())
        .await
        .expect("an agent may answer");
    assert_eq!(user_joined(visitor.event().await), (room.id, agent.id.clone()));
    assert_eq!(message_new(visitor.event().await), posted);
    assert!(engine.store().member(room.id, &agent.id).await.expect("store answers").is_some());

    let outsider = User::new(uid("outsider"), "Outsider");
    let err =
        engine.post_as("rec", outsider.clone(), room.id, "o1".into(), "hi".into()).await.expect_err("not an agent");
    assert_eq!(err.code().as_str(), "forbidden");
    assert!(engine.store().member(room.id, &outsider.id).await.expect("store answers").is_none());
    assert_eq!(last_seq(&engine, room.id).await, 1);
    visitor.quiet().await;
    let seen = recorder.take();
    assert!(!seen.is_empty() && seen.iter().all(|s| s.origin.as_deref() == Some("rec")), "{seen:?}");
}

#[tokio::test(start_paused = true)]
async fn support_availability_includes_bridged_agents() {
    let (engine, _recorder) = bridged(2).await;
    assert_eq!(engine.support_availability(), SupportAvailability { available: true, online_agents: 2 });
    let _agent = connect_as(&engine, support("agent")).await;
    assert_eq!(engine.support_availability().online_agents, 3);
    assert!(engine.bridge_health().contains_key("rec"));
}

#[tokio::test(start_paused = true)]
async fn bridge_jobs_are_asked_of_the_bridge_by_name() {
    let (engine, _recorder) = bridged(0).await;
    let jobs = engine.bridge_jobs("rec", crate::JobStatus::Failed, 10).await.expect("a bridge without an outbox");
    assert!(jobs.is_empty());
    assert!(!engine.retry_bridge_job("rec", 1).await.expect("a bridge without an outbox"));
    let err = engine.bridge_jobs("nope", crate::JobStatus::Failed, 10).await.expect_err("no such bridge");
    assert_eq!(err.code().as_str(), "not_found");
    let err = engine.retry_bridge_job("nope", 1).await.expect_err("no such bridge");
    assert_eq!(err.code().as_str(), "not_found");
}

#[tokio::test(start_paused = true)]
async fn a_bridge_edits_and_deletes_what_its_user_wrote() {
    let (engine, recorder) = bridged(0).await;
    let mut visitor = connect(&engine, "visitor").await;
    let room = room_of(visitor.ok(create(RoomKind::Support, None, &[])).await);
    visitor.join(room.id).await;
    let own = visitor.say(room.id, "from the visitor").await;
    visitor.drain().await;
    let agent = agent_user("agent");
    let posted = engine.post_as("rec", agent.clone(), room.id, "a1".into(), "helo".into()).await.expect("posted");
    visitor.drain().await;
    recorder.take();

    let edited = engine.edit_as("rec", &agent.id, room.id, posted.id, "hello".into()).await.expect("edited");
    assert_eq!((edited.body.as_str(), edited.edited_at.is_some()), ("hello", true));
    match visitor.event().await {
        Event::MessageUpdated(e) => assert_eq!(e.message, edited),
        other => panic!("expected message:updated, got {other:?}"),
    }
    let seen = recorder.take();
    assert!(
        matches!(&seen[..], [Seen { event: BridgeEvent::MessageUpdated(m), origin: Some(o), .. }] if m.id == posted.id && o == "rec"),
        "{seen:?}"
    );

    // The bridge acts as its user, with that user's rights only.
    let err = engine.edit_as("rec", &agent.id, room.id, own.id, "not mine".into()).await.expect_err("not the sender");
    assert_eq!(err.code().as_str(), "forbidden");
    let err = engine.delete_as("rec", &agent.id, room.id, own.id).await.expect_err("not the sender");
    assert_eq!(err.code().as_str(), "forbidden");

    engine.delete_as("rec", &agent.id, room.id, posted.id).await.expect("deleted");
    match visitor.event().await {
        Event::MessageDeleted(e) => assert_eq!((e.room_id, e.message_id), (room.id, posted.id)),
        other => panic!("expected message:deleted, got {other:?}"),
    }
    engine.delete_as("rec", &agent.id, room.id, posted.id).await.expect("deleting twice is fine");
    let err = engine.edit_as("rec", &agent.id, room.id, posted.id, "again".into()).await.expect_err("deleted");
    assert_eq!(err.code().as_str(), "conflict");
    let seen = recorder.take();
    assert!(
        matches!(&seen[..], [Seen { event: BridgeEvent::MessageDeleted(m), origin: Some(o), .. }] if m.id == posted.id && o == "rec"),
        "{seen:?}"
    );
    visitor.quiet().await;
}

fn room_updated(ev: Event) -> Room {
    match ev {
        Event::RoomUpdated(e) => e.room,
        other => panic!("expected room:updated, got {other:?}"),
    }
}

#[tokio::test(start_paused = true)]
async fn an_agent_claims_and_closes_a_support_room_for_a_bridge() {
    let (engine, recorder) = bridged(0).await;
    let mut visitor = connect(&engine, "visitor").await;
    let room = room_of(visitor.ok(create(RoomKind::Support, None, &[])).await);
    visitor.join(room.id).await;
    visitor.say(room.id, "hello").await;
    visitor.drain().await;
    recorder.take();

    let outsider = User::new(uid("outsider"), "Outsider");
    let err = engine.claim_room_as("rec", outsider.clone(), room.id).await.expect_err("not an agent");
    assert_eq!(err.code().as_str(), "forbidden");
    let err = engine.close_room_as("rec", outsider, room.id).await.expect_err("not an agent");
    assert_eq!(err.code().as_str(), "forbidden");

    let agent = agent_user("agent");
    let claimed = engine.claim_room_as("rec", agent.clone(), room.id).await.expect("an agent claims");
    assert_eq!(claimed.claimed_by, Some(agent.id.clone()));
    assert_eq!(user_joined(visitor.event().await), (room.id, agent.id.clone()), "the claimer joins");
    assert_eq!(room_updated(visitor.event().await), claimed, "the visitor sees who took it");
    engine.claim_room_as("rec", agent.clone(), room.id).await.expect("claiming again is fine");
    visitor.quiet().await;

    let closed = engine.close_room_as("rec", agent.clone(), room.id).await.expect("an agent closes");
    assert!(closed.closed && closed.claimed_by == Some(agent.id.clone()));
    assert_eq!(room_updated(visitor.event().await), closed, "the visitor is told");
    engine.close_room_as("rec", agent.clone(), room.id).await.expect("closing again is fine");
    visitor.quiet().await;
    let updates: Vec<Seen> =
        recorder.take().into_iter().filter(|s| matches!(s.event, BridgeEvent::RoomUpdated(_))).collect();
    assert_eq!(updates.len(), 2, "one claim and one close reach bridges: {updates:?}");
    assert!(updates.iter().all(|s| s.origin.as_deref() == Some("rec")));

    // The joined session, a session joining afresh and the bridge are all refused.
    assert_eq!(visitor.err(send(room.id, "late", "still there?")).await, "forbidden");
    let mut again = connect(&engine, "visitor").await;
    again.join(room.id).await;
    assert_eq!(again.err(send(room.id, "late2", "hello?")).await, "forbidden");
    let err =
        engine.post_as("rec", agent.clone(), room.id, "a9".into(), "bye".into()).await.expect_err("the room is closed");
    assert_eq!(err.code().as_str(), "forbidden");
    let err = engine.claim_room_as("rec", agent, room.id).await.expect_err("a closed room is not claimed");
    assert_eq!(err.code().as_str(), "forbidden");
    assert_eq!(last_seq(&engine, room.id).await, 1);

    let mut alice = connect(&engine, "alice").await;
    let group = alice.group(Visibility::Public, &[]).await;
    let err = engine.close_room_as("rec", agent_user("agent"), group.id).await.expect_err("a group room");
    assert_eq!(err.code().as_str(), "invalid");
}

// ---------------------------------------------------------------------------
// Hardening (issue #21): quotas, visitors, the support queue, who may write
// ---------------------------------------------------------------------------

fn visitor(id: &str) -> Identity {
    Identity { roles: Some(vec!["visitor".into()]), ..Identity::new(uid(&format!("visitor:{id}"))) }
}

fn group_with(name: &str, members: &[UserId]) -> Command {
    Command::RoomCreate(CreateRoom {
        kind: RoomKind::Group,
        name: Some(name.into()),
        visibility: Some(Visibility::Private),
        members: members.to_vec(),
    })
}

/// Others adding a user to rooms never fills that user's quota: the agent
/// below is in many rooms others made and still creates and joins rooms.
#[tokio::test(start_paused = true)]
async fn rooms_others_add_a_user_to_never_lock_them_out() {
    let engine = engine_with(limits(Limits { max_rooms_per_user: 3, ..Limits::default() })).await;
    let mut agent = connect_as(&engine, support("agent")).await;
    for n in 0..4 {
        let mut attacker = connect(&engine, &format!("attacker{n}")).await;
        for i in 0..3 {
            attacker.ok(group_with(&format!("spam {i}"), &[agent.id()])).await;
        }
        assert_eq!(attacker.err(group_with("one more", &[agent.id()])).await, "forbidden", "their own quota holds");
    }
    assert_eq!(engine.store().room_count_of_user(&agent.id()).await.expect("store answers"), 12);
    let mut customer = connect(&engine, "customer").await;
    let support_room = room_of(customer.ok(create(RoomKind::Support, None, &[])).await);
    customer.join(support_room.id).await;
    customer.say(support_room.id, "hello?").await;
    agent.drain().await;
    agent.join(support_room.id).await;
    for i in 0..3 {
        agent.ok(group_with(&format!("mine {i}"), &[])).await;
    }
    assert_eq!(agent.err(group_with("mine 3", &[])).await, "forbidden", "what they did themselves counts");
}

/// Room creations and invitations are limited per user, across sessions.
#[tokio::test(start_paused = true)]
async fn adding_others_is_rate_limited_per_user() {
    let engine = engine_with(limits(Limits { room_actions_per_minute: 4, ..Limits::default() })).await;
    let mut a1 = connect(&engine, "alice").await;
    let mut a2 = connect(&engine, "alice").await;
    let bob = connect(&engine, "bob").await;
    let room = a1.group(Visibility::Private, &[]).await;
    a2.ok(group_with("two", &[bob.id()])).await;
    a1.ok(invite(room.id, &bob.id())).await;
    a2.ok(group_with("four", &[])).await;
    assert_eq!(a1.err(group_with("five", &[])).await, "rate_limited");
    let carol = connect(&engine, "carol").await;
    assert_eq!(a2.err(invite(room.id, &carol.id())).await, "rate_limited", "the other session shares the allowance");
    let mut other = connect(&engine, "dave").await;
    other.ok(group_with("unaffected", &[])).await;
    tokio::time::advance(Duration::from_secs(16)).await;
    a1.ok(invite(room.id, &carol.id())).await;
}

/// A visitor may open their support room and talk in it, and nothing else.
#[tokio::test(start_paused = true)]
async fn visitors_are_kept_to_their_own_support_room() {
    let engine = engine().await;
    let mut v = connect_as(&engine, visitor("v1")).await;
    let mut agent = connect_as(&engine, support("agent")).await;
    let mut alice = connect(&engine, "alice").await;
    let public = alice.group(Visibility::Public, &[]).await;
    let room = room_of(v.ok(create(RoomKind::Support, None, &[])).await);
    v.join(room.id).await;
    v.say(room.id, "hi").await;
    agent.drain().await;
    agent.join(room.id).await;
    let answer = agent.say(room.id, "hello, how can I help?").await;

    let refused: Vec<(&str, Command)> = vec![
        ("a direct room", create(RoomKind::Direct, None, &[alice.id()])),
        ("a group room", create(RoomKind::Group, None, &[])),
        ("joining a public room", join(public.id)),
        ("inviting", invite(room.id, &alice.id())),
        ("searching users", search("a", None)),
        ("searching messages", find("hi", None, None, None)),
        ("listing who is online", Command::UsersOnline),
        ("setting a status", presence(PresenceStatus::Away)),
        ("deleting the agent's message", delete(room.id, answer.id)),
    ];
    for (what, command) in refused {
        assert_eq!(v.err(command).await, "forbidden", "{what}");
    }
    assert!(!engine.store().message(room.id, answer.id).await.expect("store answers").expect("kept").deleted);
    assert_eq!(engine.online_users_for(&visitor("v1")).await.expect_err("refused").code(), crate::ErrorCode::Forbidden);
    // Others cannot pull a visitor into their rooms either.
    let direct = create(RoomKind::Direct, None, &[v.id()]);
    assert_eq!(alice.err(direct).await, "forbidden");
    assert_eq!(alice.err(invite(public.id, &v.id())).await, "forbidden");
    // What a visitor may do.
    let own = v.say(room.id, "typo").await;
    v.ok(edit(room.id, own.id, "fixed")).await;
    v.ok(delete(room.id, own.id)).await;
    v.ok(typing_start(room.id)).await;
    v.ok(read(room.id, 2)).await;
    v.ok(history(room.id, None, None, None)).await;
    v.ok(Command::Ping).await;
}

/// A visitor has one open support room: asking again returns it, also when
/// the requests race; once it is closed, the next request opens a new one.
#[tokio::test(start_paused = true)]
async fn a_visitor_has_one_open_support_room() {
    let engine = engine().await;
    let mut v = connect_as(&engine, visitor("v1")).await;
    let first = room_of(v.ok(create(RoomKind::Support, None, &[])).await);
    let again = room_of(v.ok(create(RoomKind::Support, None, &[])).await);
    assert_eq!(again.id, first.id);
    let agent = User { roles: vec!["support".into()], ..User::new(uid("agent"), "Agent") };
    engine.close_room_as("test", agent, first.id).await.expect("closed");
    let next = room_of(v.ok(create(RoomKind::Support, None, &[])).await);
    assert_ne!(next.id, first.id);
}

/// However many empty support rooms exist, agents see every room with a
/// message, longest waiting first, in `ready` and page by page.
#[tokio::test(start_paused = true)]
async fn agents_see_every_waiting_customer_however_much_spam() {
    let engine = engine_with(limits(Limits { support_queue: 5, ..Limits::default() })).await;
    let mut customers = Vec::new();
    for n in 0..7 {
        let mut c = connect_as(&engine, visitor(&format!("c{n}"))).await;
        let room = room_of(c.ok(create(RoomKind::Support, None, &[])).await);
        c.join(room.id).await;
        c.say(room.id, "help").await;
        customers.push(room.id);
        tokio::time::advance(Duration::from_millis(5)).await;
        for s in 0..20 {
            let mut spam = connect_as(&engine, visitor(&format!("s{n}-{s}"))).await;
            spam.ok(create(RoomKind::Support, None, &[])).await;
        }
    }
    let agent = connect_as(&engine, support("agent")).await;
    let listed: Vec<RoomId> = agent.ready.rooms.iter().map(|s| s.room.id).collect();
    assert_eq!(listed, customers[..5], "the first page of the queue, longest waiting first, no empty room");

    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let page = engine.support_queue(&support("agent"), cursor.as_deref(), Some(3)).await.expect("a page");
        seen.extend(page.rooms.iter().map(|q| q.room.id));
        match page.next {
            Some(next) => cursor = Some(next),
            None => break,
        }
    }
    assert_eq!(seen, customers, "paging visits every waiting room once, in order");
    let stranger = connect(&engine, "stranger").await;
    let refused = engine.support_queue(&Identity::new(stranger.id()), None, None).await.expect_err("agents only");
    assert_eq!(refused.code(), crate::ErrorCode::Forbidden);
    let bad = engine.support_queue(&support("agent"), Some("nonsense"), None).await.expect_err("a bad cursor");
    assert_eq!(bad.code(), crate::ErrorCode::Invalid);
}

/// A support room that gets its first message is announced to the agents
/// connected, without making them members.
#[tokio::test(start_paused = true)]
async fn agents_hear_of_a_room_entering_the_queue() {
    let engine = engine().await;
    let mut agent = connect_as(&engine, support("agent")).await;
    let mut v = connect_as(&engine, visitor("v1")).await;
    let room = room_of(v.ok(create(RoomKind::Support, None, &[])).await);
    v.join(room.id).await;
    agent.quiet().await;
    v.say(room.id, "first").await;
    assert_eq!(room_added(agent.event().await).id, room.id);
    v.say(room.id, "second").await;
    agent.quiet().await;
    assert!(engine.store().member(room.id, &agent.id()).await.expect("store answers").is_none());
}

/// The store decides who may write: a session whose hub still lists a room
/// (as another process's leave would leave it) cannot post once the
/// membership is gone, and nothing is stored.
#[tokio::test(start_paused = true)]
async fn a_former_member_cannot_post_through_a_stale_session() {
    let engine = engine().await;
    let mut alice = connect(&engine, "alice").await;
    let mut bob = connect(&engine, "bob").await;
    let room = alice.group(Visibility::Private, &[bob.id()]).await;
    bob.join(room.id).await;
    bob.say(room.id, "still here").await;
    // Another process removed bob: this process's hub never heard of it.
    assert!(engine.store().remove_member(room.id, &bob.id()).await.expect("store answers"));
    assert_eq!(bob.err(send(room.id, "c-late", "sneaky")).await, "not_member");
    assert_eq!(bob.err(history(room.id, None, None, None)).await, "not_member");
    assert_eq!(last_seq(&engine, room.id).await, 1, "nothing was stored");
    alice.say(room.id, "next").await;
    assert_eq!(last_seq(&engine, room.id).await, 2, "the seq stays gapless");
}

/// Room names that reorder or hide part of themselves are refused.
#[tokio::test(start_paused = true)]
async fn room_names_with_direction_overrides_are_refused() {
    let engine = engine().await;
    let mut alice = connect(&engine, "alice").await;
    for name in ["Team\u{202E}txt.exe", "\u{2067}admins", "a\u{200B}b"] {
        let command = Command::RoomCreate(CreateRoom {
            kind: RoomKind::Group,
            name: Some(name.into()),
            visibility: None,
            members: vec![],
        });
        assert_eq!(alice.err(command).await, "invalid", "{name:?}");
    }
    let bad = Identity { name: Some("Ada\u{202E}".into()), ..Identity::new(uid("mallory")) };
    let err = engine.open_session(bad).await.expect_err("a spoofing display name");
    assert_eq!(err.code(), crate::ErrorCode::Invalid);
}
