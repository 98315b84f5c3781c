//! The engine's promises across processes, on a broker (feature `testing`):
//! the same checks run on the in-process bus, on NATS and on Redis, as part
//! of [`broker_conformance!`](crate::broker_conformance). Each starts engines
//! (one per "process") on one [`MemoryStore`] with brokers from the
//! harness, drives sessions through the public API, and checks what a
//! client of another process sees: every message once and in seq order
//! while two processes send, a member's removal applied everywhere before
//! the reply, sessions ended everywhere, and what was sent during the
//! broker's outage read back from the store when it returns.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::broker::BrokerHarness;
use crate::command::{Command, CreateRoom, JoinRoom, Reply, RoomRef, SendMessage};
use crate::engine::{CloseReason, Engine, Output, Ref, Session};
use crate::event::Event;
use crate::id::{RoomId, UserId};
use crate::message::Message;
use crate::room::{RoomKind, Visibility};
use crate::store::MemoryStore;
use crate::user::Identity;

/// How long something that should come may take.
const WAIT: Duration = Duration::from_secs(15);

/// Engines on one store, one broker each.
struct Processes {
    engines: Vec<Engine>,
}

impl Processes {
    async fn start(harness: &dyn BrokerHarness, count: usize) -> Processes {
        let store = Arc::new(MemoryStore::new());
        let mut engines = Vec::new();
        for _ in 0..count {
            let engine = Engine::builder(store.clone())
                .broker(harness.broker().await)
                .start()
                .await
                .unwrap_or_else(|e| panic!("an engine on the broker starts: {e}"));
            engines.push(engine);
        }
        // Until every process has the others' word (heartbeats every 2 s).
        let deadline = Instant::now() + WAIT;
        while engines.iter().any(|e| e.peer_processes() + 1 < count || e.broker_connected() != Some(true)) {
            assert!(Instant::now() < deadline, "the processes did not find each other on the broker");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Processes { engines }
    }

    async fn stop(self) {
        for engine in self.engines {
            engine.shutdown().await;
        }
    }
}

/// One session, as a transport drives it.
struct Client {
    session: Session,
    user: UserId,
    refs: u64,
    events: VecDeque<Event>,
    /// Replies that came while another was awaited (pipelined sends are
    /// answered as their commits finish).
    replies: HashMap<Ref, crate::Result<Reply>>,
}

impl Client {
    async fn open(engine: &Engine, user: &str) -> Client {
        let id = UserId::new(user).unwrap_or_else(|e| panic!("user id {user}: {e}"));
        let (session, _) =
            engine.open_session(Identity::new(id.clone())).await.unwrap_or_else(|e| panic!("{user} connects: {e}"));
        Client { session, user: id, refs: 0, events: VecDeque::new(), replies: HashMap::new() }
    }

    /// The next output that matters to these checks (presence and
    /// keepalives are not what they are about).
    async fn next(&mut self, deadline: Instant) -> Option<Output> {
        loop {
            let out = tokio::time::timeout_at(deadline, self.session.next_output()).await.ok()?;
            match &out {
                Output::Keepalive => continue,
                Output::Event(d) if matches!(d.event(), Event::PresenceChanged(_)) => continue,
                _ => return Some(out),
            }
        }
    }

    async fn submit(&mut self, command: Command) -> Ref {
        self.refs += 1;
        let reference = Ref(format!("\"{}\"", self.refs).into());
        self.session.submit(Some(reference.clone()), command).await;
        reference
    }

    async fn reply_to(&mut self, reference: &Ref) -> crate::Result<Reply> {
        if let Some(result) = self.replies.remove(reference) {
            return result;
        }
        let deadline = Instant::now() + WAIT;
        loop {
            match self.next(deadline).await {
                Some(Output::Reply { reference: Some(r), result }) if r == *reference => return result,
                Some(Output::Reply { reference: Some(r), result }) => {
                    self.replies.insert(r, result);
                }
                Some(Output::Event(d)) => self.events.push_back(d.event().clone()),
                Some(other) => panic!("{}: unexpected {other:?} while waiting for a reply", self.user),
                None => panic!("{}: no reply within {WAIT:?}", self.user),
            }
        }
    }

    async fn ok(&mut self, command: Command) -> Reply {
        let what = format!("{command:?}");
        let reference = self.submit(command).await;
        self.reply_to(&reference).await.unwrap_or_else(|e| panic!("{}: {what} failed: {e}", self.user))
    }

    async fn event_within(&mut self, within: Duration) -> Option<Event> {
        if let Some(event) = self.events.pop_front() {
            return Some(event);
        }
        let deadline = Instant::now() + within;
        loop {
            match self.next(deadline).await? {
                Output::Event(d) => return Some(d.event().clone()),
                Output::Reply { reference: Some(r), result } => {
                    self.replies.insert(r, result);
                }
                Output::Reply { .. } => continue,
                other => panic!("{}: unexpected {other:?}", self.user),
            }
        }
    }

    /// `count` messages of `message:new` (other events are passed over),
    /// failing on one out of order or seen twice.
    async fn messages(&mut self, count: usize) -> Vec<Message> {
        let mut got: Vec<Message> = Vec::new();
        while got.len() < count {
            match self.event_within(WAIT).await {
                Some(Event::MessageNew(e)) => {
                    if let Some(last) = got.last() {
                        assert!(
                            e.message.seq > last.seq,
                            "{}: seq {} after {}: out of order or twice",
                            self.user,
                            e.message.seq,
                            last.seq
                        );
                    }
                    got.push(e.message);
                }
                Some(_) => {}
                None => panic!("{}: {} of {count} messages within {WAIT:?}", self.user, got.len()),
            }
        }
        got
    }

    /// Asserts that no event comes within `window`.
    async fn quiet(&mut self, window: Duration) {
        if let Some(event) = self.event_within(window).await {
            panic!("{}: expected nothing, got {event:?}", self.user);
        }
    }

    async fn public_room(&mut self) -> RoomId {
        let create = CreateRoom {
            kind: RoomKind::Group,
            name: Some("cluster".into()),
            visibility: Some(Visibility::Public),
            members: Vec::new(),
        };
        match self.ok(Command::RoomCreate(create)).await {
            Reply::Room { room } => room.id,
            other => panic!("expected a room, got {other:?}"),
        }
    }

    async fn join(&mut self, room: RoomId) {
        self.ok(Command::RoomJoin(JoinRoom { room_id: room, since_seq: None })).await;
    }
}

fn send(room: RoomId, client_msg_id: String) -> Command {
    Command::MessageSend(SendMessage {
        room_id: room,
        body: format!("body of {client_msg_id}"),
        client_msg_id,
        attachments: Vec::new(),
        reply_to: None,
    })
}

/// Two processes take sends for one room at once; a client of a third sees
/// every message once, in seq order, and each sender the other's.
pub async fn engines_deliver_every_message_once_in_seq_order(harness: &dyn BrokerHarness) {
    let p = Processes::start(harness, 3).await;
    let mut alice = Client::open(&p.engines[0], "alice").await;
    let mut bob = Client::open(&p.engines[1], "bob").await;
    let mut carol = Client::open(&p.engines[2], "carol").await;
    let room = alice.public_room().await;
    for c in [&mut alice, &mut bob, &mut carol] {
        c.join(room).await;
    }
    let n = 100;
    let mut alice_refs = Vec::new();
    let mut bob_refs = Vec::new();
    for i in 0..n {
        alice_refs.push(alice.submit(send(room, format!("a{i}"))).await);
        bob_refs.push(bob.submit(send(room, format!("b{i}"))).await);
    }
    let seen = carol.messages(2 * n).await;
    let seqs: Vec<u64> = seen.iter().map(|m| m.seq).collect();
    assert_eq!(seqs, (1..=2 * n as u64).collect::<Vec<_>>(), "every message once, in seq order");
    for r in &alice_refs {
        alice.reply_to(r).await.unwrap_or_else(|e| panic!("alice's send failed: {e}"));
    }
    for r in &bob_refs {
        bob.reply_to(r).await.unwrap_or_else(|e| panic!("bob's send failed: {e}"));
    }
    let at_alice = alice.messages(n).await;
    assert!(at_alice.iter().all(|m| m.sender_id.as_str() == "bob"), "alice gets bob's messages, her own as replies");
    let at_bob = bob.messages(n).await;
    assert!(at_bob.iter().all(|m| m.sender_id.as_str() == "alice"));
    carol.quiet(Duration::from_millis(300)).await;
    p.stop().await;
}

/// Leaving through one process ends the room on the user's sessions on
/// every process before the reply: each gets `room:removed`, and nothing
/// posted afterwards.
pub async fn engines_end_a_left_room_on_every_process_before_the_reply(harness: &dyn BrokerHarness) {
    let p = Processes::start(harness, 2).await;
    let mut alice = Client::open(&p.engines[0], "alice").await;
    let mut bob_here = Client::open(&p.engines[0], "bob").await;
    let mut bob_there = Client::open(&p.engines[1], "bob").await;
    let room = alice.public_room().await;
    for c in [&mut alice, &mut bob_here, &mut bob_there] {
        c.join(room).await;
    }
    bob_here.ok(Command::RoomLeave(RoomRef { room_id: room })).await;
    for bob in [&mut bob_here, &mut bob_there] {
        match bob.event_within(WAIT).await {
            Some(Event::RoomRemoved(e)) => assert_eq!(e.room_id, room),
            other => panic!("expected room:removed, got {other:?}"),
        }
    }
    alice.ok(send(room, "after".into())).await;
    bob_there.quiet(Duration::from_millis(500)).await;
    bob_here.quiet(Duration::from_millis(100)).await;
    p.stop().await;
}

/// Ending a user's sessions on one process ends them on every process.
pub async fn engines_end_a_users_sessions_everywhere(harness: &dyn BrokerHarness) {
    let p = Processes::start(harness, 2).await;
    let mut here = Client::open(&p.engines[0], "mallory").await;
    let mut there = Client::open(&p.engines[1], "mallory").await;
    let mut other = Client::open(&p.engines[1], "alice").await;
    p.engines[0].end_sessions(&UserId::new("mallory").expect("valid")).await;
    for session in [&mut here, &mut there] {
        let deadline = Instant::now() + WAIT;
        loop {
            match session.next(deadline).await {
                Some(Output::Close(reason)) => {
                    assert_eq!(reason, CloseReason::Revoked);
                    break;
                }
                Some(_) => continue,
                None => panic!("mallory's session was not ended within {WAIT:?}"),
            }
        }
    }
    other.ok(Command::Ping).await;
    p.stop().await;
}

/// While the broker is down each process serves its own clients; when it
/// is back, a client of another process gets what it missed, once and in
/// order, without reconnecting.
pub async fn engines_fill_what_an_outage_lost(harness: &dyn BrokerHarness) {
    let p = Processes::start(harness, 2).await;
    let mut alice = Client::open(&p.engines[0], "alice").await;
    let mut dora = Client::open(&p.engines[0], "dora").await;
    let mut bob = Client::open(&p.engines[1], "bob").await;
    let room = alice.public_room().await;
    for c in [&mut alice, &mut dora, &mut bob] {
        c.join(room).await;
    }
    alice.ok(send(room, "before".into())).await;
    assert_eq!(bob.messages(1).await[0].seq, 1);
    assert_eq!(dora.messages(1).await[0].seq, 1);

    harness.set_down(true).await;
    let deadline = Instant::now() + Duration::from_secs(5);
    while p.engines.iter().any(|e| e.broker_connected() != Some(false)) {
        assert!(Instant::now() < deadline, "an outage shows within 5 s");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for i in 0..5 {
        alice.ok(send(room, format!("during{i}"))).await;
    }
    let local: Vec<u64> = dora.messages(5).await.iter().map(|m| m.seq).collect();
    assert_eq!(local, vec![2, 3, 4, 5, 6], "the clients of the same process are served during the outage");

    harness.set_down(false).await;
    let back = Instant::now();
    let filled: Vec<u64> = bob.messages(5).await.iter().map(|m| m.seq).collect();
    assert_eq!(filled, vec![2, 3, 4, 5, 6]);
    assert!(back.elapsed() <= Duration::from_secs(10), "filled {:?} after the broker's return", back.elapsed());
    alice.ok(send(room, "after".into())).await;
    assert_eq!(bob.messages(1).await[0].seq, 7);
    bob.quiet(Duration::from_millis(500)).await;
    p.stop().await;
}
