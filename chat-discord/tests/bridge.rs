//! The bridge against the stand-in Discord, through serenity itself.

mod support;

use std::time::Duration;

use axum::http::Method;
use chat_core::{Bridge, Event};
use serde_json::{Value, json};
use support::*;

fn contents(messages: &[Value]) -> Vec<String> {
    messages.iter().map(|m| m["content"].as_str().unwrap_or_default().to_owned()).collect()
}

/// The first visitor message opens one thread; later ones follow in order
/// under the visitor's name; an agent's reply and typing reach the visitor.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_support_room_is_answered_from_its_thread() {
    let discord = StandIn::start().await;
    let bridge = bridge_for(&discord);
    let engine = engine_with(memory_store(), bridge.clone()).await;
    let (mut vera, room) = visitor(&engine, "visitor-1", "Vera").await;

    for (i, body) in ["hello", "my order is late", "it is #1234"].iter().enumerate() {
        send(&mut vera, room, &format!("m{i}"), body).await;
    }
    eventually("three messages in one thread", || {
        let d = discord.lock();
        d.threads.len() == 1 && d.messages.get(&d.threads[0].0).is_some_and(|m| m.len() == 3)
    })
    .await;
    let (thread, title, parent) = discord.lock().threads[0].clone();
    assert_eq!(parent, FORUM);
    let short = room.to_string();
    assert_eq!(title, format!("Vera · {}", &short[short.len() - 8..]));
    let posted = discord.thread_messages(thread);
    assert_eq!(contents(&posted), ["hello", "my order is late", "it is #1234"]);
    assert_eq!(posted[1]["author"]["username"], "Vera", "later messages carry the visitor's name");
    assert!(posted[1]["webhook_id"].is_string());

    eventually("the gateway connected", || discord.gateway_connected()).await;
    eventually("the bridge reports connected", || bridge.health().connected).await;
    discord.dispatch(
        "TYPING_START",
        json!({"channel_id": thread.to_string(), "guild_id": GUILD.to_string(), "user_id": "77", "timestamp": 1_767_323_045}),
    );
    match next_event(&mut vera).await {
        Event::Typing(t) => {
            assert_eq!((t.user_id.as_str(), t.room_id, t.typing), ("discord:77", room, true));
        }
        other => panic!("expected typing, got {other:?}"),
    }
    discord.human_writes(thread, 77, "Alice", "Hi Vera, let me check", true);
    let m = next_message(&mut vera).await;
    assert_eq!(m.body, "Hi Vera, let me check");
    assert_eq!(m.sender_id.as_str(), "discord:77");
    let agent = engine.store().user(&chat_discord::agent_user_id(77).expect("id")).await.expect("user");
    assert_eq!(agent.map(|u| u.name).as_deref(), Some("Alice"));

    // Notes and our own posts stay in Discord.
    discord.human_writes(thread, 77, "Alice", "!note she called twice", true);
    discord.human_writes(thread, 77, "Alice", "found it", true);
    assert_eq!(next_message(&mut vera).await.body, "found it", "the note was skipped");
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    assert_eq!(discord.thread_messages(thread).len(), 6, "nothing the agent wrote was echoed back to Discord");
    engine.shutdown().await;
}

/// 500s, 429s and lost answers are retried without posting anything twice,
/// and the order holds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_are_retried_without_duplicates() {
    let discord = StandIn::start().await;
    discord.fault(Method::POST, &format!("/channels/{FORUM}/threads"), Fault::LoseAnswer);
    discord.fault(Method::POST, "/webhooks/", Fault::Reject(500, json!({"message": "oops", "code": 0})));
    discord.fault(
        Method::POST,
        "/webhooks/",
        Fault::Reject(429, json!({"message": "You are being rate limited.", "retry_after": 0.3, "global": false})),
    );
    discord.fault(Method::POST, "/webhooks/", Fault::LoseAnswer);
    let bridge = bridge_for(&discord);
    let engine = engine_with(memory_store(), bridge.clone()).await;
    let (mut vera, room) = visitor(&engine, "visitor-2", "Vera").await;
    for i in 0..4 {
        send(&mut vera, room, &format!("m{i}"), &format!("message {i}")).await;
    }
    eventually("four messages", || {
        let d = discord.lock();
        d.threads.first().and_then(|t| d.messages.get(&t.0)).is_some_and(|m| m.len() >= 4)
    })
    .await;
    eventually("the outbox drained", || bridge.health().pending == 0).await;
    let threads = discord.lock().threads.clone();
    assert_eq!(threads.len(), 1, "a lost answer did not make a second thread");
    let posted = discord.thread_messages(threads[0].0);
    assert_eq!(contents(&posted), ["message 0", "message 1", "message 2", "message 3"]);
    // 500, 429, a lost answer (posted), then one call for each later message;
    // the retry after the lost answer looked in the thread instead of posting.
    assert_eq!(discord.calls_matching("POST /webhooks/"), 5);
    assert_eq!(discord.calls_matching(&format!("POST /channels/{FORUM}/threads")), 1);
    assert_eq!(discord.calls_matching(&format!("GET /guilds/{GUILD}/threads/active")), 1);
    assert_eq!(bridge.health().failed, 0);
    engine.shutdown().await;
}

/// Discord down for a while: the room works, and everything is delivered in
/// order once it is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outage_delays_but_loses_nothing() {
    let discord = StandIn::start().await;
    discord.lock().down = true;
    let bridge = bridge_for(&discord);
    let engine = engine_with(memory_store(), bridge.clone()).await;
    let (mut vera, room) = visitor(&engine, "visitor-3", "Vera").await;
    for i in 0..5 {
        send(&mut vera, room, &format!("m{i}"), &format!("message {i}")).await;
    }
    eventually("the jobs wait", || bridge.health().pending == 5).await;
    assert!(bridge.health().last_error.is_some());
    discord.lock().down = false;
    eventually("everything delivered", || {
        let d = discord.lock();
        d.threads.first().and_then(|t| d.messages.get(&t.0)).is_some_and(|m| m.len() == 5)
    })
    .await;
    let thread = discord.lock().threads[0].0;
    assert_eq!(contents(&discord.thread_messages(thread)), (0..5).map(|i| format!("message {i}")).collect::<Vec<_>>());
    engine.shutdown().await;
}

/// A restart mid-queue delivers each message exactly once, and what agents
/// wrote while the bridge was away is caught up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_keeps_the_queue_and_catches_up() {
    let discord = StandIn::start().await;
    let store = memory_store();
    let bridge = bridge_for(&discord);
    let engine = engine_with(store.clone(), bridge.clone()).await;
    let (mut vera, room) = visitor(&engine, "visitor-4", "Vera").await;
    send(&mut vera, room, "m0", "first").await;
    eventually("the thread", || discord.lock().threads.len() == 1).await;
    let thread = discord.lock().threads[0].0;
    discord.lock().down = true;
    for i in 1..4 {
        send(&mut vera, room, &format!("m{i}"), &format!("message {i}")).await;
    }
    eventually("three pending", || bridge.health().pending == 3).await;
    drop(vera);
    engine.shutdown().await;

    // Meanwhile an agent answers in the thread; no gateway hears it.
    discord.human_writes(thread, 78, "Bob", "are you there?", false);
    discord.lock().down = false;
    let bridge = bridge_for(&discord);
    let engine = engine_with(store.clone(), bridge.clone()).await;
    eventually("everything delivered once", || discord.thread_messages(thread).len() == 5).await;
    eventually("the outbox drained", || bridge.health().pending == 0).await;
    let from_us: Vec<Value> =
        discord.thread_messages(thread).into_iter().filter(|m| m["author"]["id"] != "78").collect();
    assert_eq!(contents(&from_us), ["first", "message 1", "message 2", "message 3"]);
    let visitor_id = chat_core::UserId::new("visitor-4").expect("id");
    let query = chat_core::HistoryQuery { limit: 50, ..Default::default() };
    let mut caught = Vec::new();
    for _ in 0..200 {
        let page = engine.history(&visitor_id, room, query).await.expect("history");
        caught = page.messages.into_iter().filter(|m| m.sender_id.as_str() == "discord:78").map(|m| m.body).collect();
        if !caught.is_empty() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(caught, ["are you there?"], "the agent's message reached the room once");
    engine.shutdown().await;
}

/// A visitor's edits and deletes reach the thread (the first post through
/// the channel, later ones through the webhook); an agent's reach the
/// visitor; and Discord's echoes of the bridge's own changes go nowhere.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edits_and_deletes_cross_both_ways() {
    let discord = StandIn::start().await;
    let bridge = bridge_for(&discord);
    let engine = engine_with(memory_store(), bridge.clone()).await;
    let (mut vera, room) = visitor(&engine, "visitor-5", "Vera").await;
    eventually("the gateway connected", || discord.gateway_connected()).await;
    let first = send(&mut vera, room, "m0", "helo").await;
    let second = send(&mut vera, room, "m1", "my order is lat").await;
    let third = send(&mut vera, room, "m2", "never mind").await;
    eventually("three posts", || {
        let d = discord.lock();
        d.threads.first().and_then(|t| d.messages.get(&t.0)).is_some_and(|m| m.len() == 3)
    })
    .await;
    let thread = discord.lock().threads[0].0;

    edit(&mut vera, room, first.id, "hello").await;
    edit(&mut vera, room, second.id, "my order is late").await;
    delete(&mut vera, room, third.id).await;
    eventually("the edits and the delete in Discord", || {
        contents(&discord.thread_messages(thread)) == ["hello", "my order is late"]
    })
    .await;
    let posted = discord.thread_messages(thread);
    assert!(posted.iter().all(|m| m["edited_timestamp"].is_string()), "both were edited in place: {posted:?}");
    assert_eq!(
        discord.calls_matching(&format!("PATCH /channels/{thread}/messages/")),
        1,
        "the first post is the bot's"
    );
    assert_eq!(discord.calls_matching("PATCH /webhooks/"), 1, "a later post is the webhook's");
    assert_eq!(discord.calls_matching("DELETE /webhooks/"), 1);

    // An agent answers, corrects it and takes it back.
    let answer = discord.human_writes(thread, 77, "Alice", "It ships tomorow", true);
    let new = next_message(&mut vera).await;
    assert_eq!(new.body, "It ships tomorow");
    discord.human_edits(thread, answer, "It ships tomorrow");
    match next_event(&mut vera).await {
        Event::MessageUpdated(e) => {
            assert_eq!((e.message.id, e.message.body.as_str()), (new.id, "It ships tomorrow"));
            assert!(e.message.edited_at.is_some());
        }
        other => panic!("expected message:updated, got {other:?}"),
    }
    discord.human_deletes(thread, answer);
    match next_event(&mut vera).await {
        Event::MessageDeleted(e) => assert_eq!((e.room_id, e.message_id), (room, new.id)),
        other => panic!("expected message:deleted, got {other:?}"),
    }

    // Discord dispatched an update or a delete for each of the bridge's own
    // changes too; none of them changed the room or went back to Discord.
    eventually("the outbox drained", || bridge.health().pending == 0).await;
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let visitor_id = chat_core::UserId::new("visitor-5").expect("id");
    let page = engine.history(&visitor_id, room, chat_core::HistoryQuery { limit: 50, ..Default::default() }).await;
    let bodies: Vec<(String, bool)> =
        page.expect("history").messages.into_iter().map(|m| (m.body, m.deleted)).collect();
    assert_eq!(bodies[..2], [("hello".into(), false), ("my order is late".into(), false)]);
    assert!(bodies[2].1 && bodies[3].1, "the visitor's and the agent's deleted messages: {bodies:?}");
    assert_eq!(discord.calls_matching("PATCH "), 2, "no echo was sent back: {:?}", discord.lock().calls);
    assert_eq!(discord.calls_matching("DELETE "), 1);
    assert_eq!(bridge.health().failed, 0);
    engine.shutdown().await;
}

/// Members holding the support role count as online agents while their
/// presence is online, idle or dnd; others never do.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn support_role_presences_make_agents_available() {
    let discord = StandIn::start().await;
    let bridge = bridge_for(&discord);
    let engine = engine_with(memory_store(), bridge.clone()).await;
    eventually("the bridge connected", || bridge.health().connected).await;
    assert_eq!(engine.support_availability().online_agents, 0);

    let role: &[u64] = &[SUPPORT_ROLE];
    let members = [(77, "Alice", role), (78, "Bob", role), (79, "Carol", &[][..]), (80, "Dan", role)];
    discord.guild_create(&members, &[(77, "online"), (79, "online"), (80, "offline")]);
    let agents = || engine.support_availability().online_agents;
    eventually("Alice available", || agents() == 1).await;
    assert!(engine.support_availability().available);
    assert_eq!(bridge.health().details.get("online_agents").map(String::as_str), Some("1"));

    let table = [
        ("Bob goes idle", 78, "idle", 2),
        ("Dan is dnd", 80, "dnd", 3),
        ("Carol, not an agent, stays out", 79, "dnd", 3),
        ("Alice goes offline", 77, "offline", 2),
        ("Bob goes invisible", 78, "invisible", 1),
    ];
    for (what, user, status, expected) in table {
        discord.presence(user, status);
        eventually(what, || agents() == expected).await;
    }
    discord.member_roles(79, "Carol", &[SUPPORT_ROLE]);
    eventually("Carol becomes an agent", || agents() == 2).await;
    discord.member_roles(80, "Dan", &[]);
    eventually("Dan is no longer one", || agents() == 1).await;
    engine.shutdown().await;
}

/// Serenity runs each event's handler in a task of its own, so READY's may
/// run after GUILD_CREATE's (issue #21, defect 9: 6 of 20 fresh starts
/// counted no agent). Made certain here by delaying READY's handler: the
/// guild's agents count from the moment the bridge reports connected, and
/// still once READY's handler has run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_count_at_connect_when_the_ready_handler_runs_last() {
    let discord = StandIn::start().await;
    let role: &[u64] = &[SUPPORT_ROLE];
    let members = [(77, "Alice", role), (78, "Bob", role), (79, "Carol", &[][..]), (80, "Dan", role)];
    discord.guild(&members, &[(77, "online"), (78, "idle"), (79, "online"), (80, "offline")]);
    let bridge = bridge_for(&discord);
    bridge.delay_ready_handler(Duration::from_millis(300));
    let engine = engine_with(memory_store(), bridge.clone()).await;
    eventually("the bridge connected", || bridge.health().connected).await;
    assert_eq!(engine.support_availability().online_agents, 2, "Alice and Bob, right after connecting");
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(engine.support_availability().online_agents, 2, "Alice and Bob, after READY's handler ran");
    assert_eq!(bridge.health().details.get("online_agents").map(String::as_str), Some("2"));
    engine.shutdown().await;
}

/// The next `room:updated` a session gets, skipping other events.
async fn next_room_update(session: &mut chat_core::Session) -> chat_core::Room {
    loop {
        if let Event::RoomUpdated(e) = next_event(session).await {
            return e.room;
        }
    }
}

/// The thread's first post carries Claim and Close; a support agent's Claim
/// shows the visitor who took the conversation, Close refuses the visitor's
/// later messages, tells them, and archives the thread once. Every press is
/// answered, and a member without the support role changes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claim_and_close_buttons_act_on_the_room() {
    let discord = StandIn::start().await;
    let bridge = bridge_for(&discord);
    let engine = engine_with(memory_store(), bridge.clone()).await;
    let (mut vera, room) = visitor(&engine, "visitor-6", "Vera").await;
    send(&mut vera, room, "m0", "hello").await;
    eventually("the thread", || discord.lock().threads.len() == 1).await;
    let thread = discord.lock().threads[0].0;
    let starter = discord.thread_messages(thread).remove(0);
    let buttons: Vec<(String, String)> = starter["components"][0]["components"]
        .as_array()
        .expect("a row of buttons")
        .iter()
        .map(|b| (b["label"].as_str().unwrap_or_default().into(), b["custom_id"].as_str().unwrap_or_default().into()))
        .collect();
    let (claim, close) = (format!("chat:claim:{room}"), format!("chat:close:{room}"));
    assert_eq!(buttons, [("Claim".to_owned(), claim.clone()), ("Close".to_owned(), close.clone())]);
    eventually("the gateway connected", || discord.gateway_connected()).await;
    eventually("the bridge reports connected", || bridge.health().connected).await;

    let answer_of = |id: u64| discord.interaction_answer(id);
    let refused = discord.press_button(thread, 79, "Carol", &[], &close);
    eventually("Carol's press answered", || answer_of(refused).is_some()).await;
    let answer = answer_of(refused).expect("answered");
    assert_eq!((answer["type"].as_u64(), answer["data"]["flags"].as_u64()), (Some(4), Some(64)), "{answer}");
    assert!(answer["data"]["content"].as_str().is_some_and(|t| t.contains("support team")), "{answer}");
    let stored = engine.store().room(room).await.expect("store").expect("room");
    assert!(!stored.closed && stored.claimed_by.is_none(), "Carol, not an agent, changed nothing");

    let role: &[u64] = &[SUPPORT_ROLE];
    let claimed = discord.press_button(thread, 77, "Alice", role, &claim);
    let seen = next_room_update(&mut vera).await;
    assert_eq!(seen.claimed_by.as_ref().map(chat_core::UserId::as_str), Some("discord:77"));
    assert!(!seen.closed);
    eventually("Alice's claim answered", || answer_of(claimed).is_some()).await;
    let answer = answer_of(claimed).expect("answered");
    assert_eq!(answer["data"]["flags"].as_u64(), Some(64));
    assert!(answer["data"]["content"].as_str().is_some_and(|t| t.contains("You took")), "{answer}");

    let closed = discord.press_button(thread, 78, "Bob", role, &close);
    let seen = next_room_update(&mut vera).await;
    assert!(seen.closed, "the visitor is told the room closed");
    assert_eq!(seen.claimed_by.as_ref().map(chat_core::UserId::as_str), Some("discord:77"), "the claim stays");
    eventually("Bob's close answered", || answer_of(closed).is_some()).await;
    eventually("the thread archived", || discord.lock().archived == [thread]).await;

    // The visitor can no longer write, and nothing more reaches the thread.
    vera.submit(
        None,
        chat_core::command::Command::MessageSend(chat_core::command::SendMessage {
            room_id: room,
            client_msg_id: "m1".into(),
            body: "still there?".into(),
            attachments: vec![],
            reply_to: None,
        }),
    )
    .await;
    loop {
        match tokio::time::timeout(std::time::Duration::from_secs(10), vera.next_output()).await.expect("a reply") {
            chat_core::Output::Reply { result, .. } => {
                let err = result.expect_err("a closed room refuses sends");
                assert_eq!(err.code().as_str(), "forbidden");
                assert_eq!(err.to_string(), "the room is closed");
                break;
            }
            _ => continue,
        }
    }

    // A second Close is answered and archives nothing more.
    let again = discord.press_button(thread, 77, "Alice", role, &close);
    eventually("the second close answered", || answer_of(again).is_some()).await;
    eventually("the outbox drained", || bridge.health().pending == 0).await;
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert_eq!(discord.lock().archived, [thread], "archived exactly once");
    assert_eq!(discord.calls_matching(&format!("PATCH /channels/{thread}")), 1);
    assert_eq!(discord.thread_messages(thread).len(), 1, "the refused message never reached Discord");
    assert_eq!(discord.calls_matching("POST /interactions/"), 4, "every press was answered once");
    assert_eq!(bridge.health().failed, 0);
    engine.shutdown().await;
}

/// Discord roles mapped in the settings become chat roles of the
/// `discord:<id>` users, from live messages and button presses; a message
/// fetched later (which carries no roles) keeps the roles last seen.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mapped_discord_roles_become_chat_roles() {
    const ADMINS: u64 = 2001;
    const LEADS: u64 = 2002;
    let discord = StandIn::start().await;
    let bridge_with_roles = |discord: &StandIn| {
        let mut config = discord.config();
        config.role_map = vec![(ADMINS, "admin".into()), (LEADS, "lead".into()), (LEADS, "admin".into())];
        std::sync::Arc::new(chat_discord::DiscordBridge::new(config).expect("a valid config"))
    };
    let bridge = bridge_with_roles(&discord);
    let store = memory_store();
    let engine = engine_with(store.clone(), bridge.clone()).await;
    let (mut vera, room) = visitor(&engine, "visitor-7", "Vera").await;
    send(&mut vera, room, "m0", "hello").await;
    eventually("the thread", || discord.lock().threads.len() == 1).await;
    let thread = discord.lock().threads[0].0;
    eventually("the gateway connected", || discord.gateway_connected()).await;
    eventually("the bridge reports connected", || bridge.health().connected).await;

    let roles_of = |user: u64| {
        let store = store.clone();
        async move {
            let id = chat_discord::agent_user_id(user).expect("id");
            store.user(&id).await.expect("store").map(|u| u.roles).unwrap_or_default()
        }
    };
    let table: [(u64, &str, &[u64], &[&str]); 3] = [
        (77, "Alice", &[SUPPORT_ROLE, ADMINS], &["support", "admin"]),
        (78, "Bob", &[SUPPORT_ROLE, LEADS, ADMINS], &["support", "admin", "lead"]),
        (79, "Carol", &[SUPPORT_ROLE, 2999], &["support"]),
    ];
    for (user, name, held, want) in table {
        discord.member_writes(thread, user, name, held, &format!("{name} here"));
        assert_eq!(next_message(&mut vera).await.sender_id.as_str(), format!("discord:{user}"));
        assert_eq!(roles_of(user).await, want, "{name}'s roles");
    }

    // A press applies the roles the member holds now.
    let pressed = discord.press_button(thread, 79, "Carol", &[SUPPORT_ROLE, LEADS], &format!("chat:claim:{room}"));
    eventually("Carol's claim answered", || discord.interaction_answer(pressed).is_some()).await;
    assert_eq!(roles_of(79).await, ["support", "lead", "admin"]);

    // A message the gateway missed is fetched without a member after a
    // restart: Alice keeps the roles last seen.
    drop(vera);
    engine.shutdown().await;
    discord.human_writes(thread, 77, "Alice", "while you were away", false);
    let engine = engine_with(store.clone(), bridge_with_roles(&discord)).await;
    let visitor_id = chat_core::UserId::new("visitor-7").expect("id");
    let query = chat_core::HistoryQuery { limit: 50, ..Default::default() };
    let mut caught = false;
    for _ in 0..200 {
        let page = engine.history(&visitor_id, room, query).await.expect("history");
        caught = page.messages.iter().any(|m| m.body == "while you were away");
        if caught {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(caught, "the missed message was fetched");
    let alice = chat_discord::agent_user_id(77).expect("id");
    let roles = engine.store().user(&alice).await.expect("store").map(|u| u.roles);
    assert_eq!(roles, Some(vec!["support".to_owned(), "admin".to_owned()]));
    engine.shutdown().await;
}

/// A group room mapped to a text channel crosses both ways like a support
/// thread: members' messages and edits reach the channel through its own
/// webhook, people writing there reach the room (without the support role);
/// an unmapped group room stays local.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mapped_group_room_crosses_to_its_text_channel() {
    use chat_core::room::{MemberRole, NewRoom, Visibility};
    const CHANNEL: u64 = 2500;
    let discord = StandIn::start().await;
    let store = memory_store();
    let gina = chat_core::UserId::new("gina").expect("id");
    let new_room = |name: &str| NewRoom {
        id: chat_core::RoomId::generate(),
        kind: chat_core::RoomKind::Group,
        name: Some(name.into()),
        visibility: Visibility::Public,
        created_by: gina.clone(),
        created_at: chat_core::Timestamp::now(),
        members: vec![(gina.clone(), MemberRole::Owner)],
    };
    let (mapped, _) = store.create_room(new_room("team"), chat_core::MemberLimits::NONE).await.expect("room");
    let (local, _) = store.create_room(new_room("local"), chat_core::MemberLimits::NONE).await.expect("room");
    let mut config = discord.config();
    config.channels = vec![(mapped.id, CHANNEL)];
    let bridge = std::sync::Arc::new(chat_discord::DiscordBridge::new(config).expect("a valid config"));
    let engine = engine_with(store.clone(), bridge.clone()).await;
    let mut identity = chat_core::Identity::new(gina.clone());
    identity.name = Some("Gina".into());
    let (mut session, _) = engine.open_session(identity).await.expect("session");
    for room in [mapped.id, local.id] {
        let join = chat_core::command::JoinRoom { room_id: room, since_seq: None };
        session.submit(None, chat_core::command::Command::RoomJoin(join)).await;
        let chat_core::Output::Reply { result: Ok(_), .. } = session.next_output().await else { panic!("joined") };
    }
    eventually("the gateway connected", || discord.gateway_connected()).await;
    eventually("the bridge reports connected", || bridge.health().connected).await;

    let first = send(&mut session, mapped.id, "g0", "standup in 5").await;
    send(&mut session, local.id, "l0", "stays here").await;
    send(&mut session, mapped.id, "g1", "bring coffee").await;
    eventually("two posts in the channel", || discord.thread_messages(CHANNEL).len() == 2).await;
    let posted = discord.thread_messages(CHANNEL);
    assert_eq!(contents(&posted), ["standup in 5", "bring coffee"]);
    assert_eq!(posted[0]["author"]["username"], "Gina");
    assert!(posted.iter().all(|m| m["webhook_id"].is_string()), "posted through a webhook");
    let hooks = discord.lock().webhooks.clone();
    assert_eq!(hooks.len(), 1);
    assert_eq!(hooks[0]["channel_id"], CHANNEL.to_string(), "the channel's own webhook");
    assert!(discord.lock().threads.is_empty(), "no forum post for a group room");

    edit(&mut session, mapped.id, first.id, "standup in 10").await;
    eventually("the edit in Discord", || {
        contents(&discord.thread_messages(CHANNEL)) == ["standup in 10", "bring coffee"]
    })
    .await;

    discord.member_writes(CHANNEL, 81, "Hana", &[], "on my way");
    let m = next_message(&mut session).await;
    assert_eq!((m.room_id, m.sender_id.as_str(), m.body.as_str()), (mapped.id, "discord:81", "on my way"));
    let hana = store.user(&chat_discord::agent_user_id(81).expect("id")).await.expect("store").expect("user");
    assert!(hana.roles.is_empty(), "a channel's writers are not the support team: {:?}", hana.roles);

    eventually("the outbox drained", || bridge.health().pending == 0).await;
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    assert_eq!(discord.thread_messages(CHANNEL).len(), 3, "nothing from the local room, no echo");
    assert_eq!(bridge.health().failed, 0);
    engine.shutdown().await;
}

/// A large guild's GUILD_CREATE carries no members: the bridge asks for them
/// (op 8, with presences) and counts the agents the chunks bring.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_guild_is_known_through_member_chunks() {
    let discord = StandIn::start().await;
    let role: &[u64] = &[SUPPORT_ROLE];
    let members = [
        (77, "Alice", role),
        (78, "Bob", role),
        (79, "Carol", &[][..]),
        (80, "Dan", role),
        (81, "Erin", role),
        (82, "Finn", &[][..]),
        (83, "Gus", role),
    ];
    let presences = [(77, "online"), (78, "offline"), (79, "online"), (80, "dnd"), (83, "idle")];
    discord.large_guild(&members, &presences, 3);
    let bridge = bridge_for(&discord);
    let engine = engine_with(memory_store(), bridge.clone()).await;
    let agents = || engine.support_availability().online_agents;
    eventually("Alice, Dan and Gus available", || agents() == 3).await;
    let (requests, chunks) = {
        let d = discord.lock();
        (d.member_requests.clone(), d.chunks_sent)
    };
    assert_eq!(requests.len(), 1, "asked once: {requests:?}");
    assert_eq!(requests[0]["guild_id"], GUILD.to_string());
    assert_eq!((requests[0]["query"].as_str(), requests[0]["limit"].as_u64()), (Some(""), Some(0)), "everyone");
    assert_eq!(requests[0]["presences"], true);
    assert_eq!(chunks, 3, "seven members, three a chunk");

    // Members known from chunks change like any other.
    discord.presence(78, "online");
    eventually("Bob comes online", || agents() == 4).await;
    discord.member_roles(83, "Gus", &[]);
    eventually("Gus is no longer an agent", || agents() == 3).await;
    engine.shutdown().await;
}

/// A member's role change reaches their chat user at once (not only with
/// their next message): the mapped roles and `support` follow what Discord
/// says, and leaving the server drops them; availability follows too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn member_events_change_chat_roles_at_once() {
    const ADMINS: u64 = 2001;
    let discord = StandIn::start().await;
    let mut config = discord.config();
    config.role_map = vec![(ADMINS, "admin".into())];
    let bridge = std::sync::Arc::new(chat_discord::DiscordBridge::new(config).expect("a valid config"));
    let store = memory_store();
    let engine = engine_with(store.clone(), bridge.clone()).await;
    let (mut vera, room) = visitor(&engine, "visitor-9", "Vera").await;
    send(&mut vera, room, "m0", "hello").await;
    eventually("the thread", || discord.lock().threads.len() == 1).await;
    let thread = discord.lock().threads[0].0;
    eventually("the bridge reports connected", || bridge.health().connected).await;
    discord
        .guild_create(&[(77, "Alice", &[SUPPORT_ROLE, ADMINS]), (78, "Bob", &[])], &[(77, "online"), (78, "online")]);
    discord.member_writes(thread, 77, "Alice", &[SUPPORT_ROLE, ADMINS], "Alice here");
    assert_eq!(next_message(&mut vera).await.sender_id.as_str(), "discord:77");
    let user = |id: u64| {
        let store = store.clone();
        async move { store.user(&chat_discord::agent_user_id(id).expect("id")).await.expect("store") }
    };
    assert_eq!(user(77).await.map(|u| u.roles), Some(vec!["support".to_owned(), "admin".to_owned()]));
    let agents = || engine.support_availability().online_agents;
    eventually("Alice available", || agents() == 1).await;

    // (what, event, Alice's chat roles after, online agents after)
    type Step<'a> = (&'a str, &'a dyn Fn(), &'a [&'a str], u32);
    let steps: [Step<'_>; 4] = [
        ("admin taken away", &|| discord.member_roles(77, "Alice", &[SUPPORT_ROLE]), &["support"], 1),
        ("support taken away", &|| discord.member_roles(77, "Alice", &[ADMINS]), &["admin"], 0),
        ("she left the server", &|| discord.member_leaves(77, "Alice"), &[], 0),
        ("she came back as an agent", &|| discord.member_joins(77, "Alice", &[SUPPORT_ROLE]), &["support"], 1),
    ];
    for (what, event, roles, online) in steps {
        event();
        let want: Vec<String> = roles.iter().map(|r| (*r).to_owned()).collect();
        let mut seen = None;
        for _ in 0..200 {
            seen = user(77).await.map(|u| u.roles);
            if seen.as_ref() == Some(&want) {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        assert_eq!(seen, Some(want), "{what}");
        eventually(what, || agents() == online).await;
    }
    assert_eq!(user(77).await.map(|u| u.name).as_deref(), Some("Alice"));

    // A member who never wrote in a mapped thread is not made a chat user.
    discord.member_roles(78, "Bob", &[SUPPORT_ROLE, ADMINS]);
    eventually("Bob counts as an agent", || agents() == 2).await;
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    assert_eq!(user(78).await, None);
    engine.shutdown().await;
}

/// Agents' edits and deletes made while the bridge was away reach the room
/// after it is back: an edited message gets its new text, a deleted one is
/// deleted, an untouched one stays as it was, and a visitor's message
/// deleted in Discord stays in the chat.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edits_and_deletes_made_while_away_are_caught_up() {
    let discord = StandIn::start().await;
    let store = memory_store();
    let engine = engine_with(store.clone(), bridge_for(&discord)).await;
    let (mut vera, room) = visitor(&engine, "visitor-10", "Vera").await;
    send(&mut vera, room, "m0", "hello").await;
    eventually("the thread", || discord.lock().threads.len() == 1).await;
    let thread = discord.lock().threads[0].0;
    send(&mut vera, room, "m1", "are you there?").await;
    eventually("the second post", || discord.thread_messages(thread).len() == 2).await;
    let visitor_post: u64 = discord.thread_messages(thread)[1]["id"].as_str().and_then(|i| i.parse().ok()).expect("id");
    eventually("the gateway connected", || discord.gateway_connected()).await;
    let mut sent = Vec::new();
    for body in ["It ships tomorow", "wrong room, sorry", "anything else?", "noted"] {
        sent.push(discord.human_writes(thread, 77, "Alice", body, true));
        assert_eq!(next_message(&mut vera).await.body, body);
    }
    drop(vera);
    engine.shutdown().await;

    // While the bridge is away: two edits (one into a note, which stays in
    // Discord), two deletes, one of them the visitor's.
    discord.human_edits(thread, sent[0], "It ships tomorrow");
    discord.human_deletes(thread, sent[1]);
    discord.human_edits(thread, sent[3], "!note she sounds upset");
    discord.human_deletes(thread, visitor_post);
    assert!(!discord.gateway_connected(), "nothing was heard live");

    let engine = engine_with(store.clone(), bridge_for(&discord)).await;
    let visitor_id = chat_core::UserId::new("visitor-10").expect("id");
    let query = chat_core::HistoryQuery { limit: 50, ..Default::default() };
    let want = [
        ("hello", false),
        ("are you there?", false),
        ("It ships tomorrow", false),
        ("", true),
        ("anything else?", false),
        ("noted", false),
    ];
    let mut seen = Vec::new();
    for _ in 0..200 {
        let page = engine.history(&visitor_id, room, query).await.expect("history");
        seen = page.messages.into_iter().map(|m| (m.body, m.deleted, m.edited_at.is_some())).collect::<Vec<_>>();
        if seen.iter().map(|(b, d, _)| (b.as_str(), *d)).eq(want.iter().copied()) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let got: Vec<(&str, bool)> = seen.iter().map(|(b, d, _)| (b.as_str(), *d)).collect();
    assert_eq!(got, want);
    assert!(seen[2].2, "the caught-up edit is marked edited");
    assert!(!seen[4].2 && !seen[5].2, "untouched and note-edited messages are not edited");
    engine.shutdown().await;
}

/// A post opened before the buttons existed gets them after READY, once,
/// if its room is open; a closed room's post is left alone; a refused edit
/// is not asked again, a failed one is retried at the next start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn old_posts_get_their_buttons_once() {
    let discord = StandIn::start().await;
    let store = memory_store();
    let bridge = bridge_for(&discord);
    let engine = engine_with(store.clone(), bridge.clone()).await;
    // The first READY's check ran before the rooms existed.
    eventually("the bridge reports connected", || bridge.health().connected).await;
    let mut rooms = Vec::new();
    for (i, name) in ["Vera", "Walt", "Xena", "Yann"].iter().enumerate() {
        let (mut session, room) = visitor(&engine, &format!("visitor-2{i}"), name).await;
        send(&mut session, room, "m0", &format!("hello from {name}")).await;
        rooms.push(room);
    }
    eventually("four threads", || discord.lock().threads.len() == 4).await;
    let thread_of =
        |title: &str| discord.lock().threads.iter().find(|t| t.1.starts_with(title)).map(|t| t.0).expect("a thread");
    let [open, closed, flaky, refused] = ["Vera", "Walt", "Xena", "Yann"].map(thread_of);
    let mut agent = chat_core::User::new(chat_discord::agent_user_id(77).expect("id"), "Alice");
    agent.roles = vec!["support".into()];
    engine.close_room_as("discord", agent, rooms[1]).await.expect("closed");
    eventually("the closed thread archived", || discord.lock().archived == [closed]).await;
    engine.shutdown().await;

    // Every post as the bridge made them before it had buttons.
    for thread in [open, closed, flaky, refused] {
        let mut d = discord.lock();
        let first = d.messages.get_mut(&thread).and_then(|m| m.first_mut()).expect("a first post");
        first["components"] = json!([]);
    }
    let first_post = |thread: u64| format!("/channels/{thread}/messages/{thread}");
    discord.fault(Method::PATCH, &first_post(flaky), Fault::Reject(500, json!({"message": "oops", "code": 0})));
    let forbidden = json!({"message": "Cannot edit a message authored by another user", "code": 50005});
    discord.fault(Method::PATCH, &first_post(refused), Fault::Reject(403, forbidden));
    let components = |thread: u64| discord.thread_messages(thread)[0]["components"].clone();
    let patches = |thread: u64| discord.calls_matching(&format!("PATCH {}", first_post(thread)));
    let gets = |thread: u64| discord.calls_matching(&format!("GET {}", first_post(thread)));

    let engine = engine_with(store.clone(), bridge_for(&discord)).await;
    eventually("the open room's post has buttons, the others were tried", || {
        components(open) != json!([]) && patches(flaky) == 1 && patches(refused) == 1
    })
    .await;
    let ids: Vec<String> = components(open)[0]["components"]
        .as_array()
        .expect("a row of buttons")
        .iter()
        .map(|b| b["custom_id"].as_str().unwrap_or_default().to_owned())
        .collect();
    assert_eq!(ids, [format!("chat:claim:{}", rooms[0]), format!("chat:close:{}", rooms[0])]);
    assert_eq!(discord.thread_messages(open)[0]["content"], "hello from Vera", "the text stays");
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert_eq!(components(closed), json!([]), "a closed room's post gets none");
    assert_eq!((gets(closed), patches(open)), (0, 1));
    engine.shutdown().await;

    // The next start retries only the post that failed for a while.
    let engine = engine_with(store.clone(), bridge_for(&discord)).await;
    eventually("the failed one has its buttons", || components(flaky) != json!([])).await;
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert_eq!((gets(open), patches(open)), (1, 1), "checked and given once");
    assert_eq!((gets(refused), patches(refused)), (1, 1), "refused, not asked again");
    assert_eq!((gets(flaky), patches(flaky)), (2, 2));
    assert_eq!(components(refused), json!([]));
    engine.shutdown().await;
}

/// Roles changed while the gateway was away reach the chat users with the
/// next GUILD_CREATE, without waiting for their next message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn roles_changed_while_away_apply_with_guild_create() {
    const ADMINS: u64 = 2001;
    let discord = StandIn::start().await;
    let bridge_with_roles = |discord: &StandIn| {
        let mut config = discord.config();
        config.role_map = vec![(ADMINS, "admin".into())];
        std::sync::Arc::new(chat_discord::DiscordBridge::new(config).expect("a valid config"))
    };
    let store = memory_store();
    let bridge = bridge_with_roles(&discord);
    let engine = engine_with(store.clone(), bridge.clone()).await;
    let (mut vera, room) = visitor(&engine, "visitor-13", "Vera").await;
    send(&mut vera, room, "m0", "hello").await;
    eventually("the thread", || discord.lock().threads.len() == 1).await;
    let thread = discord.lock().threads[0].0;
    eventually("the bridge reports connected", || bridge.health().connected).await;
    discord.member_writes(thread, 77, "Alice", &[SUPPORT_ROLE], "Alice here");
    discord.member_writes(thread, 78, "Bob", &[SUPPORT_ROLE, ADMINS], "Bob here");
    next_message(&mut vera).await;
    next_message(&mut vera).await;
    drop(vera);
    engine.shutdown().await;

    let bridge = bridge_with_roles(&discord);
    let engine = engine_with(store.clone(), bridge.clone()).await;
    eventually("the bridge reports connected", || bridge.health().connected).await;
    // Meanwhile Alice became an admin and Bob lost both roles.
    discord.guild_create(&[(77, "Alice", &[SUPPORT_ROLE, ADMINS]), (78, "Bob", &[]), (79, "Carol", &[ADMINS])], &[]);
    let roles = |id: u64| {
        let store = store.clone();
        async move {
            let user = store.user(&chat_discord::agent_user_id(id).expect("id")).await.expect("store");
            user.map(|u| u.roles)
        }
    };
    let alice = vec!["support".to_owned(), "admin".to_owned()];
    for _ in 0..200 {
        if roles(77).await.as_ref() == Some(&alice) && roles(78).await == Some(vec![]) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(roles(77).await, Some(alice));
    assert_eq!(roles(78).await, Some(vec![]));
    assert_eq!(roles(79).await, None, "Carol never wrote: not a chat user");
    engine.shutdown().await;
}
