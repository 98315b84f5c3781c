//! The catch-up on an engine over the in-memory store: changes committed
//! with no event reaching the bridge (as when a process dies between its
//! commit and its enqueue) are found in the store by the next process and
//! delivered, in order, with the ids they would have had.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use chat_core::{
    Engine, MemberLimits, MemberRole, MemoryStore, MessageId, NewMessage, NewRoom, RoomId, RoomKind, Store, Timestamp,
    User, UserId, Visibility,
};
use chat_webhooks::{ConfiguredEndpoint, WebhookBridge, WebhookConfig};
use serde_json::Value;

const SECRET: &str = "a secret for the catch-up test";

/// A receiver on 127.0.0.1 that answers 200 and keeps every body.
async fn receiver() -> (String, Arc<Mutex<Vec<Value>>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("http://{}/hook", listener.local_addr().expect("addr"));
    let bodies = Arc::new(Mutex::new(Vec::new()));
    let app = Router::new()
        .fallback(|State(bodies): State<Arc<Mutex<Vec<Value>>>>, body: String| async move {
            bodies.lock().expect("not poisoned").push(serde_json::from_str(&body).unwrap_or(Value::Null));
        })
        .with_state(bodies.clone());
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (url, bodies)
}

async fn engine(store: Arc<MemoryStore>, url: &str) -> Engine {
    let mut config = WebhookConfig::default();
    config.endpoint = Some(ConfiguredEndpoint { url: url.into(), secret: SECRET.into(), events: Vec::new() });
    let bridge = WebhookBridge::new(config).expect("valid settings");
    Engine::builder(store).bridge(Arc::new(bridge)).start().await.expect("the engine starts")
}

fn uid(id: &str) -> UserId {
    UserId::new(id).expect("valid user id")
}

async fn wait_for(bodies: &Mutex<Vec<Value>>, n: usize) -> Vec<Value> {
    for _ in 0..400 {
        let got = bodies.lock().expect("not poisoned").clone();
        if got.len() >= n {
            return got;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("fewer than {n} deliveries: {:#?}", bodies.lock().expect("not poisoned"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_was_committed_without_an_event_is_delivered_by_the_next_process() {
    let (url, bodies) = receiver().await;
    let store = Arc::new(MemoryStore::new());
    // A first process runs, and stops: from then on, what the store gets
    // is what a catch-up must look for.
    engine(store.clone(), &url).await.shutdown().await;

    // Committed behind the bridge's back, as by a process that died before
    // its events became deliveries.
    for user in ["ada", "bob"] {
        store.upsert_user(&User::new(uid(user), user)).await.expect("user");
    }
    let now = Timestamp::now();
    let room = NewRoom {
        id: RoomId::generate(),
        kind: RoomKind::Group,
        name: Some("lost".into()),
        visibility: Visibility::Private,
        created_by: uid("ada"),
        created_at: now,
        members: vec![(uid("ada"), MemberRole::Owner), (uid("bob"), MemberRole::Member)],
    };
    let (room, _) = store.create_room(room, MemberLimits::NONE).await.expect("room");
    let batch: Vec<NewMessage> = (0..5)
        .map(|i| NewMessage {
            id: MessageId::generate(),
            room_id: room.id,
            sender_id: uid("ada"),
            client_msg_id: format!("c{i}"),
            body: format!("lost {i}"),
            attachments: Vec::new(),
            reply_to: None,
            created_at: now,
            call: None,
        })
        .collect();
    let stored = store.append_messages(batch).await.expect("appended");
    let third = stored[2].as_ref().expect("stored").message.clone();
    store.edit_message(room.id, third.id, "lost 2, edited", Timestamp::now()).await.expect("edited");

    // The next process finds all of it.
    let engine = engine(store.clone(), &url).await;
    let got = wait_for(&bodies, 8).await;
    let kinds: Vec<&str> = got.iter().map(|b| b["type"].as_str().unwrap_or_default()).collect();
    assert_eq!(
        kinds,
        [
            "room.created",
            "member.added",
            "message.created",
            "message.created",
            "message.created",
            "message.created",
            "message.created",
            "message.updated"
        ]
    );
    assert_eq!(got[1]["data"]["user"]["id"], "bob", "the member named at creation, not its creator");
    let seqs: Vec<u64> = got[2..7].iter().map(|b| b["data"]["message"]["seq"].as_u64().expect("seq")).collect();
    assert_eq!(seqs, [1, 2, 3, 4, 5]);
    assert_eq!(got[7]["data"]["message"]["body"], "lost 2, edited");

    // A second look finds nothing new.
    engine.shutdown().await;
    let engine = self::engine(store.clone(), &url).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(bodies.lock().expect("not poisoned").len(), 8, "what was enqueued is not enqueued again");
    engine.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endpoint_added_later_gets_nothing_from_before_it_was_added() {
    let (url, bodies) = receiver().await;
    let store = Arc::new(MemoryStore::new());
    let plain = || async {
        let bridge = WebhookBridge::new(WebhookConfig::default()).expect("valid settings");
        let engine = Engine::builder(store.clone()).bridge(Arc::new(bridge.clone())).start().await.expect("starts");
        (engine, bridge)
    };
    let (engine, _) = plain().await;
    engine.shutdown().await;
    store.upsert_user(&User::new(uid("ada"), "Ada")).await.expect("user");
    let room = NewRoom {
        id: RoomId::generate(),
        kind: RoomKind::Group,
        name: None,
        visibility: Visibility::Private,
        created_by: uid("ada"),
        created_at: Timestamp::now(),
        members: vec![(uid("ada"), MemberRole::Owner)],
    };
    let (room, _) = store.create_room(room, MemberLimits::NONE).await.expect("room");
    let message = |i: usize| NewMessage {
        id: MessageId::generate(),
        room_id: room.id,
        sender_id: uid("ada"),
        client_msg_id: format!("c{i}"),
        body: format!("message {i}"),
        attachments: Vec::new(),
        reply_to: None,
        created_at: Timestamp::now(),
        call: None,
    };
    store.append_messages(vec![message(0)]).await.expect("appended before the endpoint");
    tokio::time::sleep(Duration::from_millis(20)).await;

    let (engine, bridge) = plain().await;
    let new = serde_json::json!({"url": url, "secret": SECRET, "events": ["message.created"]});
    bridge.add_endpoint(serde_json::from_value(new).expect("an endpoint")).await.expect("added");
    tokio::time::sleep(Duration::from_millis(20)).await;
    engine.shutdown().await;
    store.append_messages(vec![message(1)]).await.expect("appended after the endpoint");

    let (engine, _) = plain().await;
    let got = wait_for(&bodies, 1).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let got_now = bodies.lock().expect("not poisoned").clone();
    assert_eq!(got_now.len(), 1, "{got_now:#?}");
    assert_eq!(got[0]["data"]["message"]["body"], "message 1", "only what came after the endpoint");
    engine.shutdown().await;
}
