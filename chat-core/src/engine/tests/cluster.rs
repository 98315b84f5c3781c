//! Several engines on one store and one [`LocalBus`]: the rules of section 11
//! (many processes are one server) checked in process, on a paused clock.
//! The same properties are checked with real processes, PostgreSQL, NATS and
//! Redis in `server/tests/cluster.rs`.

use super::*;
use crate::broker::{Broker, LocalBroker, LocalBus};

struct Cluster {
    bus: LocalBus,
    store: Arc<MemoryStore>,
    engines: Vec<Engine>,
    brokers: Vec<Arc<LocalBroker>>,
}

async fn cluster(processes: usize) -> Cluster {
    cluster_with(processes, EngineConfig::default()).await
}

async fn cluster_with(processes: usize, config: EngineConfig) -> Cluster {
    let bus = LocalBus::new();
    let store = Arc::new(MemoryStore::new());
    let mut engines = Vec::new();
    let mut brokers = Vec::new();
    for _ in 0..processes {
        let broker = Arc::new(bus.broker());
        let engine = Engine::builder(store.clone())
            .config(config.clone())
            .broker(broker.clone())
            .start()
            .await
            .expect("the engine starts");
        engines.push(engine);
        brokers.push(broker);
    }
    // Let every process hear of the others.
    tokio::time::sleep(Duration::from_millis(50)).await;
    Cluster { bus, store, engines, brokers }
}

/// Waits (on the paused clock) until `check` holds, at most `within`.
async fn eventually(within: Duration, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !check() {
        assert!(Instant::now() < deadline, "not within {within:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Reads message:new events until `count` arrived, failing on anything out
/// of order or doubled.
async fn messages(client: &mut Client, count: usize) -> Vec<Message> {
    let mut got: Vec<Message> = Vec::new();
    while got.len() < count {
        match client.event().await {
            Event::MessageNew(e) => {
                if let Some(last) = got.last() {
                    assert!(e.message.seq > last.seq, "{}: seq {} after {}", client.id(), e.message.seq, last.seq);
                }
                got.push(e.message);
            }
            other => panic!("{}: expected message:new, got {other:?}", client.id()),
        }
    }
    got
}

async fn send_all(client: &mut Client, room: RoomId, n: usize) {
    for i in 0..n {
        let command = send(room, &format!("{}-{i}", client.id()), "hi");
        client.submit(command).await;
    }
}

#[tokio::test(start_paused = true)]
async fn messages_reach_every_process_once_and_in_seq_order_while_two_send() {
    let c = cluster(3).await;
    let mut alice = connect(&c.engines[0], "alice").await;
    let mut bob = connect(&c.engines[1], "bob").await;
    let mut carol = connect(&c.engines[2], "carol").await;
    let room = alice.group(Visibility::Public, &[]).await;
    alice.join(room.id).await;
    bob.join(room.id).await;
    carol.join(room.id).await;
    alice.drain().await;
    bob.drain().await;

    let n = 60;
    tokio::join!(send_all(&mut alice, room.id, n), send_all(&mut bob, room.id, n));
    let seen = messages(&mut carol, 2 * n).await;
    assert_eq!(seqs(&seen), (1..=2 * n as u64).collect::<Vec<_>>());
    carol.quiet().await;
    // Each sender got the other's messages as events (its own as replies).
    let mut from_bob = 0;
    while from_bob < n {
        match alice.next_within(WAIT).await {
            Some(Output::Event(d)) => match d.event() {
                Event::MessageNew(e) => {
                    assert_eq!(e.message.sender_id, bob.id());
                    from_bob += 1;
                }
                other => panic!("unexpected {other:?}"),
            },
            Some(Output::Reply { result, .. }) => assert!(result.is_ok()),
            other => panic!("unexpected {other:?}"),
        }
    }
}

#[tokio::test(start_paused = true)]
async fn typing_receipts_joins_and_room_added_cross_processes() {
    let c = cluster(2).await;
    let mut alice = connect(&c.engines[0], "alice").await;
    let mut bob = connect(&c.engines[1], "bob").await;
    let room = alice.group(Visibility::Private, &[bob.id()]).await;
    assert_eq!(room_added(bob.event().await).id, room.id, "room:added reaches the other process");
    alice.join(room.id).await;
    bob.join(room.id).await;
    bob.ok(typing_start(room.id)).await;
    assert_eq!(typing_of(alice.event().await), (room.id, bob.id(), true));
    // Bob's message ends his typing, before it arrives.
    bob.say(room.id, "hello").await;
    assert_eq!(typing_of(alice.event().await), (room.id, bob.id(), false));
    assert_eq!(message_new(alice.event().await).body, "hello");
    // Typing on one process ends when a message comes from another.
    let mut bob2 = connect(&c.engines[0], "bob").await;
    bob2.join(room.id).await;
    bob.ok(typing_start(room.id)).await;
    assert_eq!(typing_of(alice.event().await), (room.id, bob.id(), true));
    bob2.ok(send(room.id, "bob2-1", "from elsewhere")).await;
    let mut got = vec![alice.event().await, alice.event().await];
    got.sort_by_key(|e| e.name());
    assert_eq!(message_new(got.remove(0)).body, "from elsewhere");
    assert_eq!(typing_of(got.remove(0)), (room.id, bob.id(), false));
    bob.drain().await;
    alice.ok(read(room.id, 2)).await;
    assert_eq!(status_of(bob.event().await), (alice.id(), ReceiptKind::Read, 2));
    // A member invited on one process is seen joining on the other.
    let mut carol = connect(&c.engines[1], "carol").await;
    alice.ok(invite(room.id, &carol.id())).await;
    assert_eq!(user_joined(bob.event().await), (room.id, carol.id()));
    assert_eq!(room_added(carol.event().await).id, room.id);
}

#[tokio::test(start_paused = true)]
async fn leaving_on_one_process_ends_the_room_on_all_of_the_users_sessions() {
    let c = cluster(2).await;
    let mut alice = connect(&c.engines[0], "alice").await;
    let mut bob_here = connect(&c.engines[0], "bob").await;
    let mut bob_there = connect(&c.engines[1], "bob").await;
    let room = alice.group(Visibility::Public, &[]).await;
    alice.join(room.id).await;
    bob_here.join(room.id).await;
    bob_there.join(room.id).await;
    alice.drain().await;
    bob_here.ok(leave(room.id)).await;
    // After the reply, the session on the other process is out of the room.
    for bob in [&mut bob_here, &mut bob_there] {
        match bob.event().await {
            Event::RoomRemoved(e) => assert_eq!(e.room_id, room.id),
            other => panic!("expected room:removed, got {other:?}"),
        }
    }
    alice.say(room.id, "after").await;
    bob_there.quiet_for(Duration::from_secs(1)).await;
    bob_here.quiet().await;
    assert_eq!(bob_there.err(send(room.id, "c1", "x")).await, "not_member");
}

#[tokio::test(start_paused = true)]
async fn a_member_removed_and_banned_on_one_process_is_out_on_every_process() {
    let c = cluster(2).await;
    let mut alice = connect(&c.engines[0], "alice").await;
    let mut bob = connect(&c.engines[1], "bob").await;
    let mut troll = connect(&c.engines[1], "troll").await;
    let room = alice.group(Visibility::Public, &[]).await;
    for client in [&mut alice, &mut bob, &mut troll] {
        client.join(room.id).await;
    }
    for client in [&mut alice, &mut bob, &mut troll] {
        client.drain().await;
    }
    alice
        .ok(Command::RoomRemove(crate::command::RemoveMember { room_id: room.id, user_id: troll.id(), ban: true }))
        .await;
    // After the reply, the troll's session on the other process is out.
    match troll.event().await {
        Event::RoomRemoved(e) => assert_eq!(e.room_id, room.id),
        other => panic!("expected room:removed, got {other:?}"),
    }
    match bob.event().await {
        Event::UserLeft(e) => assert_eq!((e.room_id, e.user_id.as_str()), (room.id, "troll")),
        other => panic!("expected user:left, got {other:?}"),
    }
    alice.say(room.id, "after").await;
    assert_eq!(bob.event().await.name(), "message:new");
    troll.quiet_for(Duration::from_secs(1)).await;
    assert_eq!(troll.err(send(room.id, "t1", "x")).await, "not_member");
    assert_eq!(troll.err(join(room.id)).await, "forbidden", "the ban holds on the other process");
}

#[tokio::test(start_paused = true)]
async fn presence_and_support_availability_count_every_process() {
    let c = cluster(2).await;
    let mut alice = connect(&c.engines[0], "alice").await;
    alice.ignore_presence = false;
    let bob = connect(&c.engines[1], "bob").await;
    let room = alice.group(Visibility::Private, &[bob.id()]).await;
    alice.drain().await;
    let agent = connect_as(&c.engines[1], support("agent")).await;
    eventually(WAIT, || c.engines[0].support_availability().online_agents == 1).await;
    let online: Vec<String> = c.engines[0].online_users().into_iter().map(|u| u.user.id.to_string()).collect();
    assert_eq!(online, vec!["agent", "alice", "bob"]);
    drop(agent);
    eventually(WAIT, || c.engines[0].support_availability().online_agents == 0).await;

    // Bob goes away on his process; alice hears it on hers, once.
    let _ = room;
    let mut bob = bob;
    bob.ok(presence(PresenceStatus::Away)).await;
    let (who, status, _) = presence_of(alice.event().await);
    assert_eq!((who, status), (bob.id(), PresenceStatus::Away));
    // A second session on another process changes nothing visible.
    let bob2 = connect(&c.engines[0], "bob").await;
    drop(bob);
    alice.quiet_for(Duration::from_secs(1)).await;
    drop(bob2);
    let (who, status, last_seen) = presence_of(alice.event().await);
    assert_eq!((who, status), (uid("bob"), PresenceStatus::Offline));
    assert!(last_seen.is_some());
}

#[tokio::test(start_paused = true)]
async fn a_process_gone_silent_takes_its_users_offline_elsewhere() {
    let c = cluster(2).await;
    let mut alice = connect(&c.engines[0], "alice").await;
    alice.ignore_presence = false;
    let bob = connect(&c.engines[1], "bob").await;
    alice.group(Visibility::Private, &[bob.id()]).await;
    eventually(WAIT, || c.engines[0].online_users().len() == 2).await;
    alice.drain().await;
    // Bob's process stops talking (as if killed): no goodbye.
    c.brokers[1].stop().await;
    let started = Instant::now();
    let (who, status, _) = presence_of(alice.event_within(Duration::from_secs(20)).await);
    assert_eq!((who, status), (bob.id(), PresenceStatus::Offline));
    assert!(started.elapsed() <= Duration::from_secs(15), "took {:?}", started.elapsed());
    assert_eq!(c.engines[0].online_users().len(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_broker_outage_loses_nothing_and_doubles_nothing() {
    let c = cluster(2).await;
    let mut alice = connect(&c.engines[0], "alice").await;
    let mut dora = connect(&c.engines[0], "dora").await;
    let mut bob = connect(&c.engines[1], "bob").await;
    let room = alice.group(Visibility::Public, &[]).await;
    alice.join(room.id).await;
    dora.join(room.id).await;
    bob.join(room.id).await;
    alice.drain().await;
    dora.drain().await;
    c.bus.set_available(false);
    eventually(WAIT, || c.engines[0].broker_connected() == Some(false)).await;
    for i in 0..5 {
        alice.say(room.id, &format!("during {i}")).await;
    }
    // Clients of the same process are served as usual.
    assert_eq!(seqs(&messages(&mut dora, 5).await), vec![1, 2, 3, 4, 5]);
    bob.quiet().await;
    c.bus.set_available(true);
    assert_eq!(seqs(&messages(&mut bob, 5).await), vec![1, 2, 3, 4, 5]);
    alice.say(room.id, "after").await;
    assert_eq!(seqs(&messages(&mut bob, 1).await), vec![6]);
    bob.quiet_for(Duration::from_secs(6)).await;
    assert_eq!(c.engines[1].broker_connected(), Some(true));
}

#[tokio::test(start_paused = true)]
async fn a_message_ahead_of_a_lost_one_waits_for_it() {
    let c = cluster(2).await;
    let mut alice = connect(&c.engines[0], "alice").await;
    let mut bob = connect(&c.engines[1], "bob").await;
    let room = alice.group(Visibility::Public, &[]).await;
    alice.join(room.id).await;
    bob.join(room.id).await;
    c.bus.lose_room_publications(1);
    alice.say(room.id, "lost").await;
    alice.say(room.id, "second").await;
    let got = messages(&mut bob, 2).await;
    assert_eq!(seqs(&got), vec![1, 2]);
    assert_eq!(got[0].body, "lost");
    bob.quiet().await;
}

#[tokio::test(start_paused = true)]
async fn a_message_never_published_reaches_other_processes_by_the_audit() {
    let c = cluster(2).await;
    let mut alice = connect(&c.engines[0], "alice").await;
    let mut bob = connect(&c.engines[1], "bob").await;
    let room = alice.group(Visibility::Public, &[]).await;
    alice.join(room.id).await;
    bob.join(room.id).await;
    // Stored by a process that dies before publishing it: played by losing
    // the publication, with nothing after it to show the gap.
    c.bus.lose_room_publications(1);
    let started = Instant::now();
    alice.say(room.id, "orphan").await;
    let got = message_new(bob.event_within(Duration::from_secs(15)).await);
    assert_eq!(got.body, "orphan");
    assert!(started.elapsed() <= Duration::from_secs(15), "took {:?}", started.elapsed());
    let _ = &c.store;
}

#[tokio::test(start_paused = true)]
async fn a_client_moving_to_another_process_resumes_with_since_seq() {
    let c = cluster(2).await;
    let mut alice = connect(&c.engines[0], "alice").await;
    let room = alice.group(Visibility::Public, &[]).await;
    alice.join(room.id).await;
    let mut bob = connect(&c.engines[0], "bob").await;
    bob.join(room.id).await;
    alice.say(room.id, "one").await;
    assert_eq!(seqs(&messages(&mut bob, 1).await), vec![1]);
    drop(bob);
    alice.say(room.id, "two").await;
    alice.say(room.id, "three").await;
    let mut bob = connect(&c.engines[1], "bob").await;
    bob.ok(join_since(room.id, 1)).await;
    alice.say(room.id, "four").await;
    assert_eq!(seqs(&messages(&mut bob, 3).await), vec![2, 3, 4]);
    bob.quiet().await;
}

#[tokio::test(start_paused = true)]
async fn ending_a_users_sessions_reaches_every_process() {
    let c = cluster(2).await;
    let mut here = connect(&c.engines[0], "mallory").await;
    let mut there = connect(&c.engines[1], "mallory").await;
    let mut other = connect(&c.engines[1], "alice").await;
    c.engines[0].end_sessions(&uid("mallory")).await;
    assert_eq!(here.closed().await, CloseReason::Revoked);
    assert_eq!(there.closed().await, CloseReason::Revoked);
    other.ok(Command::Ping).await;
}

#[tokio::test(start_paused = true)]
async fn a_closed_room_is_known_closed_on_every_process() {
    let c = cluster(2).await;
    let mut visitor = connect_as(&c.engines[1], Identity::new(uid("visitor:v1"))).await;
    let room = room_of(visitor.ok(create(RoomKind::Support, None, &[])).await);
    visitor.join(room.id).await;
    visitor.say(room.id, "help").await;
    let agent = connect_as(&c.engines[0], support("agent")).await;
    c.engines[0].close_room_as("test", User::clone(&agent.ready.user), room.id).await.expect("closes");
    match visitor.event().await {
        Event::RoomUpdated(e) => assert!(e.room.closed),
        other => panic!("expected room:updated, got {other:?}"),
    }
    assert_eq!(visitor.err(send(room.id, "late", "x")).await, "forbidden");
}

#[tokio::test(start_paused = true)]
async fn a_replay_stops_when_the_user_leaves_through_another_process() {
    let config = EngineConfig { backlog_chunk: 2, ..EngineConfig::default() };
    let c = cluster_with(2, config).await;
    let mut alice = connect(&c.engines[0], "alice").await;
    let room = alice.group(Visibility::Public, &[]).await;
    alice.join(room.id).await;
    for i in 0..6 {
        alice.say(room.id, &format!("m{i}")).await;
    }
    let mut bob_here = connect(&c.engines[0], "bob").await;
    let mut bob_there = connect(&c.engines[1], "bob").await;
    bob_here.join(room.id).await;
    // The replay is answered, not yet read; bob leaves through the other process.
    bob_there.ok(join_since(room.id, 0)).await;
    bob_here.ok(leave(room.id)).await;
    match bob_there.event().await {
        Event::RoomRemoved(e) => assert_eq!(e.room_id, room.id),
        other => panic!("expected room:removed and no more of the room, got {other:?}"),
    }
    bob_there.quiet().await;
}

/// The two participants of a call on two processes hang up at the same
/// moment: the store lets one end it, so each hears `call:ended` once and
/// the room gets one line.
#[tokio::test(start_paused = true)]
async fn a_call_ended_on_two_processes_at_once_ends_once() {
    use crate::call::{CallMedia, EndReason};
    use crate::command::{CallRef, InviteCall};
    let c = cluster(2).await;
    let mut ada = connect(&c.engines[0], "ada").await;
    let mut bob = connect(&c.engines[1], "bob").await;
    let room = room_of(ada.ok(create(RoomKind::Direct, None, &[bob.id()])).await);
    bob.drain().await;
    let placed =
        match ada.ok(Command::CallInvite(InviteCall { room_id: room.id, media: CallMedia::Audio, to: None })).await {
            Reply::CallPlaced(placed) => placed,
            other => panic!("expected the call placed, got {other:?}"),
        };
    let call_id = placed.call_id;
    assert!(matches!(bob.event().await, Event::CallIncoming(e) if e.call_id == call_id), "the call rings on B");
    bob.ok(Command::CallAccept(CallRef { call_id })).await;
    ada.drain().await;
    bob.drain().await;

    let end = || Command::CallEnd(CallRef { call_id });
    let (a, b) = tokio::join!(ada.call(end()), bob.call(end()));
    assert!(a.is_ok() && b.is_ok(), "both hang-ups are answered: {a:?} {b:?}");
    for client in [&mut ada, &mut bob] {
        let mut ended = Vec::new();
        while let Some(out) = client.next_within(QUIET).await {
            if let Output::Event(d) = out
                && let Event::CallEnded(e) = d.event()
            {
                ended.push(e.reason);
            }
        }
        ended.extend(client.stash.drain(..).filter_map(|e| match e {
            Event::CallEnded(e) => Some(e.reason),
            _ => None,
        }));
        assert_eq!(ended, [EndReason::Hangup], "{}: call:ended once", client.id());
    }
    let page = c.store.history(room.id, HistoryQuery { limit: 10, ..HistoryQuery::default() }).await.expect("history");
    let lines: Vec<_> = page.messages.iter().filter_map(|m| m.call.as_ref()).collect();
    assert_eq!(lines.len(), 1, "one line for the call: {lines:?}");
}
