//! What reaches Discord when the bridge was not running, dropped events, or
//! ran in several processes at once: the catch-up from the store and the
//! lease, against the stand-in Discord.

mod support;

use std::sync::Arc;
use std::time::Duration;

use chat_core::command::{Command, JoinRoom};
use chat_core::room::{MemberRole, NewRoom, Visibility};
use chat_core::{Bridge, Engine, HistoryQuery, Identity, Output, RoomId, Session, Store, Timestamp, User, UserId};
use chat_discord::{DiscordBridge, DiscordConfig};
use serde_json::Value;
use support::*;

fn contents(messages: &[Value]) -> Vec<String> {
    messages.iter().map(|m| m["content"].as_str().unwrap_or_default().to_owned()).collect()
}

/// An engine without any bridge: what it commits reaches no bridge's
/// channel, as if the bridge had crashed right after each commit.
async fn engine_without_bridge(store: Arc<dyn Store>) -> Engine {
    Engine::builder(store).start().await.expect("engine")
}

fn bridge_with(config: DiscordConfig) -> Arc<DiscordBridge> {
    Arc::new(DiscordBridge::new(config).expect("a valid config"))
}

/// A session of `user` joined to `room`, which they are a member of.
async fn rejoin(engine: &Engine, user: &str, room: RoomId) -> Session {
    let mut identity = Identity::new(UserId::new(user).expect("id"));
    identity.name = Some("Vera".into());
    let (mut session, _) = engine.open_session(identity).await.expect("session");
    session.submit(None, Command::RoomJoin(JoinRoom { room_id: room, since_seq: None })).await;
    let Output::Reply { result: Ok(_), .. } = session.next_output().await else { panic!("expected the join") };
    session
}

fn the_thread(discord: &StandIn, index: usize) -> Option<u64> {
    discord.lock().threads.get(index).map(|t| t.0)
}

/// The bodies of a room's messages written by `sender`, in seq order.
async fn bodies_from(store: &dyn Store, room: RoomId, sender: &str) -> Vec<String> {
    let page = store.history(room, HistoryQuery { limit: 100, ..HistoryQuery::default() }).await.expect("history");
    page.messages.into_iter().filter(|m| m.sender_id.as_str() == sender).map(|m| m.body).collect()
}

/// Messages sent, edited and deleted while no bridge ran (the bridge
/// stopped, the process died between commit and enqueue) reach Discord once
/// a bridge starts on the same store: each post once and in order, a new
/// room's thread made once, the edit and the delete applied once; and a
/// further restart sends nothing again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_was_committed_without_a_bridge_is_mirrored_once_in_order() {
    let discord = StandIn::start().await;
    let store = memory_store();
    let bridge = bridge_for(&discord);
    let engine = engine_with(store.clone(), bridge.clone()).await;
    let (mut vera, room) = visitor(&engine, "visitor-20", "Vera").await;
    send(&mut vera, room, "m0", "first").await;
    let typo = send(&mut vera, room, "m1", "my ordr").await;
    let regret = send(&mut vera, room, "m2", "never mind").await;
    eventually("three posts", || the_thread(&discord, 0).is_some_and(|t| discord.thread_messages(t).len() == 3)).await;
    eventually("the outbox drained", || bridge.health().pending == 0).await;
    drop(vera);
    engine.shutdown().await;

    // No bridge now: the commits' events go nowhere.
    let engine = engine_without_bridge(store.clone()).await;
    let mut vera = rejoin(&engine, "visitor-20", room).await;
    for i in 3..6 {
        send(&mut vera, room, &format!("m{i}"), &format!("message {i}")).await;
    }
    edit(&mut vera, room, typo.id, "my order").await;
    delete(&mut vera, room, regret.id).await;
    let (mut walt, walts_room) = visitor(&engine, "visitor-21", "Walt").await;
    send(&mut walt, walts_room, "w0", "hello?").await;
    send(&mut walt, walts_room, "w1", "anyone?").await;
    drop((vera, walt));
    engine.shutdown().await;
    assert_eq!(discord.calls_matching("POST /webhooks/"), 2, "nothing reached Discord meanwhile");

    let bridge = bridge_for(&discord);
    let engine = engine_with(store.clone(), bridge.clone()).await;
    let thread = the_thread(&discord, 0).expect("Vera's thread");
    let want = ["first", "my order", "message 3", "message 4", "message 5"];
    eventually("Vera's thread caught up", || contents(&discord.thread_messages(thread)) == want).await;
    eventually("Walt's thread", || the_thread(&discord, 1).is_some_and(|t| discord.thread_messages(t).len() == 2))
        .await;
    eventually("the outbox drained", || bridge.health().pending == 0).await;
    let walts = the_thread(&discord, 1).expect("Walt's thread");
    assert_eq!(contents(&discord.thread_messages(walts)), ["hello?", "anyone?"]);
    let calls = |what: &str| discord.calls_matching(what);
    let counts = (
        calls("POST /webhooks/"),
        calls(&format!("POST /channels/{FORUM}/threads")),
        calls("PATCH /channels/"),
        calls("PATCH /webhooks/"),
        calls("DELETE /webhooks/"),
    );
    // Posts: m1, m2 before; m3..m5 and Walt's second now. Threads: two. The
    // edit went through the webhook (m1 is not the forum post's first
    // message), and so did the delete.
    assert_eq!(counts, (6, 2, 0, 1, 1), "(posts, threads, channel edits, webhook edits, webhook deletes)");
    assert_eq!(bridge.health().failed, 0);
    engine.shutdown().await;

    // Another start finds nothing left to do.
    let bridge = bridge_for(&discord);
    let engine = engine_with(store.clone(), bridge.clone()).await;
    eventually("the new bridge holds the lease", || bridge.health().details.get("role").is_some_and(|r| r == "active"))
        .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    eventually("the outbox drained", || bridge.health().pending == 0).await;
    let again = (
        calls("POST /webhooks/"),
        calls(&format!("POST /channels/{FORUM}/threads")),
        calls("PATCH /channels/"),
        calls("PATCH /webhooks/"),
        calls("DELETE /webhooks/"),
    );
    assert_eq!(again, counts, "a second catch-up sends nothing");
    engine.shutdown().await;
}

/// A burst beyond the event queue loses nothing: the events dropped from
/// memory are found in the store, and every message is posted once, in
/// seq order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_event_queue_loses_nothing() {
    let discord = StandIn::start().await;
    let store = memory_store();
    let mut config = discord.config();
    config.event_queue = 1;
    // Only the drop itself may start the catch-up within this test.
    config.catch_up_every = Duration::from_secs(3600);
    let bridge = bridge_with(config);
    let engine = engine_with(store.clone(), bridge.clone()).await;
    let (mut vera, room) = visitor(&engine, "visitor-22", "Vera").await;
    send(&mut vera, room, "m0", "first").await;
    eventually("the thread", || the_thread(&discord, 0).is_some()).await;

    const BURST: usize = 40;
    let mut lost = 0;
    for round in 0..5 {
        // Concurrent sends are committed together, and the committer tells
        // the bridge of each in a row, faster than its enqueuer drains one.
        let mut sends = Vec::new();
        for i in 0..BURST {
            let engine = engine.clone();
            sends.push(tokio::spawn(async move {
                let user = User::new(UserId::new("visitor-22").expect("id"), "Vera");
                engine.post_as("website", user, room, format!("b{round}-{i}"), format!("burst {round}-{i}")).await
            }));
        }
        for task in sends {
            task.await.expect("the send ran").expect("the send was stored");
        }
        lost = bridge.health().details.get("events_caught_up").and_then(|n| n.parse::<u64>().ok()).unwrap_or(0);
        if lost > 0 {
            break;
        }
    }
    assert!(lost > 0, "the burst overflowed the event queue");
    let page = store.history(room, HistoryQuery { limit: 500, ..HistoryQuery::default() }).await.expect("history");
    let want: Vec<String> = page.messages.iter().map(|m| m.body.clone()).collect();
    let thread = the_thread(&discord, 0).expect("the thread");
    eventually("every message in Discord", || discord.thread_messages(thread).len() >= want.len()).await;
    eventually("the outbox drained", || bridge.health().pending == 0).await;
    assert_eq!(contents(&discord.thread_messages(thread)), want, "each message once, in seq order");
    engine.shutdown().await;
}

/// A config whose lease runs out quickly, so that a takeover fits in a test.
fn short_lease(discord: &StandIn) -> DiscordConfig {
    let mut config = discord.config();
    config.lease_ttl = Duration::from_millis(800);
    config.lease_renew = Duration::from_millis(200);
    config
}

fn role(bridge: &DiscordBridge) -> String {
    bridge.health().details.get("role").cloned().unwrap_or_default()
}

/// The gateway lost, every resume and restart refused (issue #21, defect
/// 8): within seconds the lease holder reports itself disconnected and
/// counts no agent, and so does the process on standby that shows its
/// count; once the gateway is back, both count the agents again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_gateway_counts_no_agent_in_any_process_until_it_is_back() {
    let discord = StandIn::start().await;
    discord.guild(&[(77, "Alice", &[SUPPORT_ROLE][..]), (78, "Bob", &[SUPPORT_ROLE][..])], &[(77, "online")]);
    let store = memory_store();
    let first = bridge_with(short_lease(&discord));
    let engine_a = engine_with(store.clone(), first.clone()).await;
    let second = bridge_with(short_lease(&discord));
    let engine_b = engine_with(store.clone(), second.clone()).await;
    eventually("the holder connected", || first.health().connected && first.online_agents() == 1).await;
    eventually("the standby shows the holder's count", || second.online_agents() == 1).await;

    discord.gateway_down(true);
    let seconds = Duration::from_secs(5);
    within(seconds, "the holder disconnected", || !first.health().connected).await;
    assert_eq!(first.online_agents(), 0, "{:?}", first.health());
    assert_eq!(engine_a.support_availability().online_agents, 0);
    within(seconds, "the standby counts no agent", || second.online_agents() == 0).await;
    assert_eq!(engine_b.support_availability().online_agents, 0);
    // Still so a while later: serenity's restarts keep failing.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(!first.health().connected && first.online_agents() == 0, "{:?}", first.health());
    assert_eq!(role(&first), "active", "the holder keeps its lease");

    discord.gateway_down(false);
    discord.presence(78, "online");
    let back = Duration::from_secs(30);
    within(back, "the holder connected again", || first.health().connected).await;
    assert_eq!(first.online_agents(), 2, "a fresh snapshot: Alice, and Bob who came online meanwhile");
    within(seconds, "the standby shows it", || second.online_agents() == 2).await;
    engine_a.shutdown().await;
    engine_b.shutdown().await;
}

/// Two processes with the bridge on one store: only the lease holder posts
/// and holds the gateway, the other stands by (and says so in `/health`,
/// with the holder's count of online agents) while its messages still
/// reach Discord through the outbox. When the holder stops, the other takes
/// over and every message is posted exactly once, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_processes_share_the_outbox_and_one_takes_over() {
    let discord = StandIn::start().await;
    let store = memory_store();
    let first = bridge_with(short_lease(&discord));
    let engine_a = engine_with(store.clone(), first.clone()).await;
    let second = bridge_with(short_lease(&discord));
    let engine_b = engine_with(store.clone(), second.clone()).await;
    assert_eq!((role(&first), role(&second)), ("active".to_owned(), "standby".to_owned()));
    eventually("the holder connected", || first.health().connected).await;
    let health = second.health();
    assert!(health.standby && !health.connected, "the other stands by: {health:?}");
    assert!(!first.health().standby);

    let role_ids: &[u64] = &[SUPPORT_ROLE];
    discord.guild_create(&[(77, "Alice", role_ids)], &[(77, "online")]);
    eventually("the holder counts Alice", || first.online_agents() == 1).await;
    eventually("the standby shows the holder's count", || second.online_agents() == 1).await;
    assert_eq!(engine_b.support_availability().online_agents, 1);

    // Vera's connection is to the process on standby.
    let (mut vera, room) = visitor(&engine_b, "visitor-23", "Vera").await;
    for i in 0..3 {
        send(&mut vera, room, &format!("m{i}"), &format!("message {i}")).await;
    }
    eventually("three posts", || the_thread(&discord, 0).is_some_and(|t| discord.thread_messages(t).len() == 3)).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(role(&second), "standby", "the holder renewed its lease");

    engine_a.shutdown().await;
    eventually("the other took over", || role(&second) == "active").await;
    for i in 3..6 {
        send(&mut vera, room, &format!("m{i}"), &format!("message {i}")).await;
    }
    let thread = the_thread(&discord, 0).expect("the thread");
    eventually("six posts", || discord.thread_messages(thread).len() >= 6).await;
    eventually("the new holder connected", || second.health().connected).await;
    eventually("the outbox drained", || second.health().pending == 0).await;
    let want: Vec<String> = (0..6).map(|i| format!("message {i}")).collect();
    assert_eq!(contents(&discord.thread_messages(thread)), want, "each message once, in order");
    assert_eq!(discord.calls_matching(&format!("POST /channels/{FORUM}/threads")), 1);
    engine_b.shutdown().await;
}

/// A holder that dies without handing its lease back (here: a lease held by
/// a process that is gone) is replaced once the lease runs out; what was
/// sent meanwhile waits in the outbox and is posted once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_left_by_a_dead_process_is_taken_when_it_runs_out() {
    let discord = StandIn::start().await;
    let store = memory_store();
    let config = short_lease(&discord);
    let outbox = store.bridge_store().expect("a bridge store");
    let now = Timestamp::now();
    let until = Timestamp::from_millis(now.as_millis() + 1_500);
    assert!(outbox.acquire_lease("discord", "a-process-that-died", now, until).await.expect("lease"));
    let bridge = bridge_with(config);
    let engine = engine_with(store.clone(), bridge.clone()).await;
    assert_eq!(role(&bridge), "standby");
    let (mut vera, room) = visitor(&engine, "visitor-24", "Vera").await;
    send(&mut vera, room, "m0", "anyone?").await;
    send(&mut vera, room, "m1", "hello?").await;
    eventually("the jobs wait", || bridge.health().pending == 2).await;
    assert!(discord.lock().threads.is_empty(), "nobody posts while the dead process's lease lasts");
    assert!(!discord.gateway_connected());

    eventually("the lease taken", || role(&bridge) == "active").await;
    assert!(Timestamp::now() >= until, "not before the old lease ran out");
    eventually("both posted", || the_thread(&discord, 0).is_some_and(|t| discord.thread_messages(t).len() == 2)).await;
    let thread = the_thread(&discord, 0).expect("the thread");
    assert_eq!(contents(&discord.thread_messages(thread)), ["anyone?", "hello?"]);
    eventually("the gateway connected", || discord.gateway_connected()).await;
    engine.shutdown().await;
}

/// What people write in a mapped text channel while the bridge is down
/// reaches its group room once the bridge is back, once each and in order,
/// and a further restart delivers nothing twice. What was written there
/// before the channel was first mapped stays out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mapped_channel_is_caught_up_after_a_restart() {
    const CHANNEL: u64 = 2600;
    let discord = StandIn::start().await;
    let store = memory_store();
    let gina = UserId::new("gina").expect("id");
    let new_room = NewRoom {
        id: RoomId::generate(),
        kind: chat_core::RoomKind::Group,
        name: Some("team".into()),
        visibility: Visibility::Public,
        created_by: gina.clone(),
        created_at: Timestamp::now(),
        members: vec![(gina.clone(), MemberRole::Owner)],
    };
    let (room, _) = store.create_room(new_room, chat_core::MemberLimits::NONE).await.expect("room");
    discord.human_writes(CHANNEL, 81, "Hana", "before the mapping", false);
    // Discord ids grow with time: the mapping's cursor must come after this one.
    tokio::time::sleep(Duration::from_millis(5)).await;
    let mut config = discord.config();
    config.channels = vec![(room.id, CHANNEL)];
    let hana = "discord:81";

    let bridge = bridge_with(config.clone());
    let engine = engine_with(store.clone(), bridge.clone()).await;
    eventually("the gateway connected", || discord.gateway_connected()).await;
    eventually("the bridge reports connected", || bridge.health().connected).await;
    discord.member_writes(CHANNEL, 81, "Hana", &[], "live");
    let mut seen = Vec::new();
    for _ in 0..200 {
        seen = bodies_from(store.as_ref(), room.id, hana).await;
        if !seen.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(seen, ["live"]);
    engine.shutdown().await;

    // The bridge is down; Hana and Ivo write on.
    discord.human_writes(CHANNEL, 81, "Hana", "while you were away", false);
    discord.human_writes(CHANNEL, 82, "Ivo", "me too", false);
    discord.human_writes(CHANNEL, 81, "Hana", "still here", false);
    let bridge = bridge_with(config.clone());
    let engine = engine_with(store.clone(), bridge.clone()).await;
    let page = || async {
        let page =
            store.history(room.id, HistoryQuery { limit: 100, ..HistoryQuery::default() }).await.expect("history");
        page.messages.into_iter().map(|m| (m.sender_id.to_string(), m.body)).collect::<Vec<_>>()
    };
    let want: Vec<(String, String)> =
        [(hana, "live"), (hana, "while you were away"), ("discord:82", "me too"), (hana, "still here")]
            .iter()
            .map(|(s, b)| ((*s).to_owned(), (*b).to_owned()))
            .collect();
    let mut got = Vec::new();
    for _ in 0..200 {
        got = page().await;
        if got.len() >= want.len() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(got, want, "caught up once each, in order, and nothing from before the mapping");
    eventually("the gateway connected", || discord.gateway_connected()).await;
    engine.shutdown().await;

    let bridge = bridge_with(config);
    let engine = engine_with(store.clone(), bridge.clone()).await;
    eventually("the gateway connected", || discord.gateway_connected()).await;
    eventually("the bridge reports connected", || bridge.health().connected).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(page().await, want, "a second catch-up delivers nothing twice");
    assert!(discord.thread_messages(CHANNEL).iter().all(|m| m["webhook_id"].is_null()), "nothing echoed");
    engine.shutdown().await;
}

/// A holder whose lease another took (its renewals came too late, say)
/// notices at its next renewal: it stops posting and closes the gateway,
/// and takes over again once the lease is free.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_holder_that_lost_its_lease_stops() {
    let discord = StandIn::start().await;
    let store = memory_store();
    let bridge = bridge_with(short_lease(&discord));
    let engine = engine_with(store.clone(), bridge.clone()).await;
    assert_eq!(role(&bridge), "active");
    eventually("the gateway connected", || discord.gateway_connected()).await;

    // Another process, whose clock says the lease ran out, takes it.
    let outbox = store.bridge_store().expect("a bridge store");
    let later = Timestamp::from_millis(Timestamp::now().as_millis() + 60_000);
    assert!(outbox.acquire_lease("discord", "another-process", later, later).await.expect("lease"));
    eventually("the bridge stood down", || role(&bridge) == "standby").await;
    eventually("the gateway closed", || !discord.gateway_connected()).await;
    let (mut vera, room) = visitor(&engine, "visitor-25", "Vera").await;
    send(&mut vera, room, "m0", "hello?").await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(discord.lock().threads.is_empty(), "a process without the lease posts nothing");

    assert!(outbox.release_lease("discord", "another-process").await.expect("release"));
    eventually("the lease taken back", || role(&bridge) == "active").await;
    eventually("the post", || the_thread(&discord, 0).is_some_and(|t| discord.thread_messages(t).len() == 1)).await;
    engine.shutdown().await;
}
