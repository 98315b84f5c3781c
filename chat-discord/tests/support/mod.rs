//! Engine-side helpers over the stand-in Discord of `chat_discord::testing`
//! (feature `test-support`): a bridge pointed at it, visitors with support
//! rooms, and waiting for events.

#![allow(dead_code, unreachable_pub)]

use std::sync::Arc;
use std::time::Duration;

use chat_core::command::{Command, CreateRoom, SendMessage};
use chat_core::{Engine, Event, Identity, MemoryStore, Output, Reply, RoomId, RoomKind, Session, Store, UserId};
use chat_discord::DiscordBridge;

pub use chat_discord::testing::*;

/// A bridge configured for the stand-in, with short backoffs.
pub fn bridge_for(stand_in: &StandIn) -> Arc<DiscordBridge> {
    Arc::new(DiscordBridge::new(stand_in.config()).expect("a valid config"))
}

pub async fn engine_with(store: Arc<dyn Store>, bridge: Arc<DiscordBridge>) -> Engine {
    Engine::builder(store).bridge(bridge).start().await.expect("engine")
}

/// An engine that keeps attachments in `dir`, at most `max_bytes` a file,
/// with links under `public_url` (empty: relative links).
pub async fn engine_with_files(
    store: Arc<dyn Store>,
    bridge: Arc<DiscordBridge>,
    dir: &std::path::Path,
    max_bytes: u64,
    public_url: &str,
) -> Engine {
    let blobs = chat_attachments::open(&format!("file://{}", dir.display())).await.expect("blob store");
    let mut files = chat_core::attachment::AttachmentConfig::new(blobs);
    files.max_bytes = max_bytes;
    files.public_url = public_url.to_owned();
    Engine::builder(store).attachments(files).bridge(bridge).start().await.expect("engine")
}

/// Uploads `bytes` as `user`'s file named `name`, as the HTTP route does.
pub async fn upload(engine: &Engine, user: &str, name: &str, bytes: &[u8]) -> chat_core::Attachment {
    let user = engine.store().user(&UserId::new(user).expect("id")).await.expect("read").expect("a known user");
    let limits = engine.upload_limits(&user).await.expect("limits");
    let body = futures_util::stream::iter([Ok::<_, std::io::Error>(bytes::Bytes::copy_from_slice(bytes))]);
    let spooled = chat_attachments::spool(&limits.spool_dir, body, limits.max_bytes).await.expect("spooled");
    let (upload, guard) = chat_attachments::prepare(spooled, name).await;
    let stored = engine.store_upload(&user, upload).await.expect("stored");
    drop(guard);
    stored
}

/// Sends a message with files.
pub async fn send_files(
    session: &mut Session,
    room: RoomId,
    id: &str,
    body: &str,
    files: &[&chat_core::Attachment],
) -> chat_core::Message {
    session
        .submit(
            None,
            Command::MessageSend(SendMessage {
                room_id: room,
                client_msg_id: id.into(),
                body: body.into(),
                attachments: files.iter().map(|f| f.id.clone()).collect(),
                reply_to: None,
            }),
        )
        .await;
    // Events that came before (a claim, say) are skipped.
    loop {
        match session.next_output().await {
            Output::Reply { result: Ok(Reply::Message { message }), .. } => return message,
            Output::Event(_) => continue,
            other => panic!("expected the stored message, got {other:?}"),
        }
    }
}

/// The bytes of a file, read through the engine as `user` (the uploader or
/// a member of a room it was posted in).
pub async fn file_bytes(engine: &Engine, user: &str, id: &str) -> Vec<u8> {
    use futures_util::StreamExt;
    let user = chat_core::User::new(UserId::new(user).expect("id"), "reader");
    let access = chat_core::engine::AttachmentAccess::User(user);
    let opened = engine.open_attachment(&access, id, false).await.expect("may read it");
    let mut stream = engine.read_attachment(&opened, None).await.expect("bytes");
    let mut out = Vec::new();
    while let Some(chunk) = stream.next().await {
        out.extend_from_slice(&chunk.expect("a chunk"));
    }
    out
}

pub fn memory_store() -> Arc<dyn Store> {
    Arc::new(MemoryStore::new())
}

/// A visitor with a support room.
pub async fn visitor(engine: &Engine, id: &str, name: &str) -> (Session, RoomId) {
    let mut identity = Identity::new(UserId::new(id).expect("id"));
    identity.name = Some(name.to_owned());
    let (mut session, _) = engine.open_session(identity).await.expect("session");
    session
        .submit(
            None,
            Command::RoomCreate(CreateRoom { kind: RoomKind::Support, name: None, visibility: None, members: vec![] }),
        )
        .await;
    let Output::Reply { result: Ok(Reply::Room { room }), .. } = session.next_output().await else {
        panic!("expected a room");
    };
    session.submit(None, Command::RoomJoin(chat_core::command::JoinRoom { room_id: room.id, since_seq: None })).await;
    let Output::Reply { result: Ok(_), .. } = session.next_output().await else { panic!("expected the join") };
    (session, room.id)
}

pub async fn send(session: &mut Session, room: RoomId, id: &str, body: &str) -> chat_core::Message {
    session
        .submit(
            None,
            Command::MessageSend(SendMessage {
                room_id: room,
                client_msg_id: id.into(),
                body: body.into(),
                attachments: vec![],
                reply_to: None,
            }),
        )
        .await;
    let Output::Reply { result: Ok(Reply::Message { message }), .. } = session.next_output().await else {
        panic!("expected the stored message");
    };
    message
}

/// Edits a message the session sent.
pub async fn edit(session: &mut Session, room: RoomId, message: chat_core::MessageId, body: &str) {
    let edit = chat_core::command::EditMessage { room_id: room, message_id: message, body: body.into() };
    session.submit(None, Command::MessageEdit(edit)).await;
    let Output::Reply { result: Ok(_), .. } = session.next_output().await else { panic!("expected the edit") };
}

/// Deletes a message the session sent.
pub async fn delete(session: &mut Session, room: RoomId, message: chat_core::MessageId) {
    let delete = chat_core::command::DeleteMessage { room_id: room, message_id: message };
    session.submit(None, Command::MessageDelete(delete)).await;
    let Output::Reply { result: Ok(_), .. } = session.next_output().await else { panic!("expected the delete") };
}

/// The next event a session gets, within a few seconds.
pub async fn next_event(session: &mut Session) -> Event {
    loop {
        let output =
            tokio::time::timeout(Duration::from_secs(10), session.next_output()).await.expect("an event in time");
        if let Output::Event(delivery) = output {
            return delivery.event().clone();
        }
    }
}

/// Waits until `check` holds, for up to ten seconds.
pub async fn eventually(what: &str, check: impl FnMut() -> bool) {
    within(Duration::from_secs(10), what, check).await;
}

/// Waits until `check` holds, for up to `bound`.
pub async fn within(bound: Duration, what: &str, mut check: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + bound;
    while !check() {
        assert!(tokio::time::Instant::now() < deadline, "not within {bound:?}: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The next new message a session gets, skipping other events.
pub async fn next_message(session: &mut Session) -> chat_core::Message {
    loop {
        if let Event::MessageNew(m) = next_event(session).await {
            return m.message;
        }
    }
}
