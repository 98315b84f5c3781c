//! Micro-benchmarks of the paths every message takes: parsing and checking a
//! client frame, fanning one event out to many sessions (serialised once),
//! and appending a batch to the store. Run with
//! `cargo bench -p chat-benches --bench hot_paths`; figures go to
//! `docs/BENCHMARKS.md`, never into tests.

use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use chat_core::command::{CreateRoom, JoinRoom, SendMessage};
use chat_core::{
    Command, Engine, EngineConfig, Identity, MemberLimits, MemberRole, MemoryStore, MessageId, NewMessage, NewRoom,
    Output, Reply, RoomId, RoomKind, Session, Store, Timestamp, UserId, Visibility,
};
use chat_store_sql::{SqliteConfig, SqliteStore, Synchronous};
use chat_transport_ws::wire::{JsonCodec, decode};
use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use tokio::runtime::Runtime;

fn runtime() -> Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("a runtime")
}

fn uid(id: &str) -> UserId {
    UserId::new(id).expect("a valid user id")
}

fn frame_parse(c: &mut Criterion) {
    let room = RoomId::generate();
    let body = "x".repeat(200);
    let send = format!(
        r#"{{"type":"message:send","ref":42,"data":{{"room_id":"{room}","client_msg_id":"c-123","body":"{body}"}}}}"#
    );
    let typing = format!(r#"{{"type":"typing:start","ref":"7","data":{{"room_id":"{room}"}}}}"#);
    let unknown_field = format!(r#"{{"type":"room:join","data":{{"room_id":"{room}","since_seq":-1}}}}"#);
    let mut group = c.benchmark_group("frame_parse");
    group.throughput(Throughput::Bytes(send.len() as u64));
    group.bench_function("message_send_200b", |b| b.iter(|| decode(black_box(&send)).expect("a valid frame")));
    group.bench_function("typing_start", |b| b.iter(|| decode(black_box(&typing)).expect("a valid frame")));
    group.bench_function("rejected_frame", |b| b.iter(|| decode(black_box(&unknown_field)).expect_err("a bad frame")));
    group.bench_function("not_json", |b| b.iter(|| decode(black_box("{\"type\":")).expect_err("a bad frame")));
    group.finish();
}

async fn next_reply(session: &mut Session) -> Reply {
    loop {
        if let Output::Reply { result, .. } = session.next_output().await {
            return result.expect("the command succeeds");
        }
    }
}

/// An engine with `n` sessions joined to one public room; the first one sends.
async fn room_of(n: usize) -> (Engine, Vec<Session>, RoomId) {
    let mut config = EngineConfig::default();
    config.limits.commands_per_second = 1_000_000;
    config.limits.command_burst = 1_000_000;
    let engine = Engine::builder(Arc::new(MemoryStore::new())).config(config).start().await.expect("engine");
    let mut sessions = Vec::with_capacity(n);
    for i in 0..n {
        let (session, _) = engine.open_session(Identity::new(uid(&format!("u{i}")))).await.expect("session");
        sessions.push(session);
    }
    sessions[0]
        .submit(
            None,
            Command::RoomCreate(CreateRoom {
                kind: RoomKind::Group,
                name: Some("bench".into()),
                visibility: Some(Visibility::Public),
                members: vec![],
            }),
        )
        .await;
    let Reply::Room { room } = next_reply(&mut sessions[0]).await else { panic!("expected a room") };
    for session in &mut sessions {
        session.submit(None, Command::RoomJoin(JoinRoom { room_id: room.id, since_seq: None })).await;
        next_reply(session).await;
    }
    (engine, sessions, room.id)
}

fn fanout(c: &mut Criterion) {
    let rt = runtime();
    let mut group = c.benchmark_group("fanout");
    group.measurement_time(Duration::from_secs(5));
    for n in [10usize, 100, 1000] {
        let (engine, mut sessions, room) = rt.block_on(room_of(n));
        let mut k = 0u64;
        group.throughput(Throughput::Elements((n - 1) as u64));
        // One send, committed to the in-memory store, fanned out to n - 1
        // sessions, each of which takes the frame as a transport would: the
        // JSON is encoded by the first and shared by the rest.
        group.bench_function(format!("send_to_{}_sessions", n - 1), |b| {
            b.iter(|| {
                rt.block_on(async {
                    k += 1;
                    let send = SendMessage {
                        room_id: room,
                        client_msg_id: format!("m{k}"),
                        body: "hello there, a message of some length".into(),
                        attachments: vec![],
                        reply_to: None,
                    };
                    sessions[0].submit(None, Command::MessageSend(send)).await;
                    next_reply(&mut sessions[0]).await;
                    for session in &mut sessions[1..] {
                        match session.next_output().await {
                            Output::Event(delivery) => {
                                black_box(delivery.encoded(&JsonCodec));
                            }
                            other => panic!("expected the event, got {other:?}"),
                        }
                    }
                })
            })
        });
        drop(sessions);
        rt.block_on(engine.shutdown());
    }
    group.finish();
}

fn store_append(c: &mut Criterion) {
    let rt = runtime();
    let mut group = c.benchmark_group("store_append");
    for batch in [1usize, 64, 512] {
        let mut config = SqliteConfig::from_url("sqlite::memory:");
        config.synchronous = Synchronous::Off;
        let store = rt.block_on(SqliteStore::connect(config)).expect("store");
        let room = RoomId::generate();
        let ada = uid("ada");
        rt.block_on(store.create_room(
            NewRoom {
                id: room,
                kind: RoomKind::Group,
                name: Some("bench".into()),
                visibility: Visibility::Public,
                created_by: ada.clone(),
                created_at: Timestamp::now(),
                members: vec![(ada.clone(), MemberRole::Owner)],
            },
            MemberLimits::NONE,
        ))
        .expect("room");
        let mut k = 0u64;
        group.throughput(Throughput::Elements(batch as u64));
        // The store's own cost of a batch, without the disk: SQLite in
        // memory, no syncing. The durable figures are in durable-sends.
        group.bench_function(format!("sqlite_memory_batch_{batch}"), |b| {
            b.iter_batched(
                || {
                    (0..batch)
                        .map(|_| {
                            k += 1;
                            NewMessage {
                                id: MessageId::generate(),
                                room_id: room,
                                sender_id: ada.clone(),
                                client_msg_id: format!("m{k}"),
                                body: "x".repeat(200),
                                attachments: vec![],
                                reply_to: None,
                                created_at: Timestamp::now(),
                                call: None,
                            }
                        })
                        .collect::<Vec<_>>()
                },
                |messages| rt.block_on(store.append_messages(messages)).expect("append"),
                BatchSize::SmallInput,
            )
        });
        rt.block_on(store.close());
    }
    group.finish();
}

criterion_group!(benches, frame_parse, fanout, store_append);
criterion_main!(benches);
