//! Embedding the engine: an application runs chat in-process, with the
//! in-memory store and no network. Sessions are driven exactly as a transport
//! would drive them: commands in with `submit`, replies and events out of
//! `next_output`.
//!
//! Run it with `cargo run -p chat-example-embed`.

use std::sync::Arc;
use std::time::Duration;

use chat_core::command::{CreateRoom, JoinRoom, SendMessage};
use chat_core::{Command, Engine, Event, Identity, MemoryStore, Message, Output, Reply, RoomKind, Session, UserId};

/// Waits for the next reply, skipping events.
async fn reply(session: &mut Session) -> chat_core::Result<Reply> {
    loop {
        match session.next_output().await {
            Output::Reply { result, .. } => return result,
            Output::Close(reason) => return Err(chat_core::Error::invalid(reason.message())),
            _ => continue,
        }
    }
}

/// Waits up to a second for the next `message:new`.
async fn next_message(session: &mut Session) -> Option<Message> {
    let wait = async {
        loop {
            if let Output::Event(delivery) = session.next_output().await
                && let Event::MessageNew(e) = delivery.event()
            {
                return e.message.clone();
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(1), wait).await.ok()
}

/// Ada makes a room and invites Grace; Grace joins and reads what Ada says.
/// Returns the bodies Grace received.
pub async fn conversation() -> chat_core::Result<Vec<String>> {
    let engine = Engine::builder(Arc::new(MemoryStore::new())).start().await?;
    let (mut ada, _) = engine.open_session(Identity::new(UserId::new("ada")?)).await?;
    let (mut grace, _) = engine.open_session(Identity::new(UserId::new("grace")?)).await?;

    ada.submit(
        None,
        Command::RoomCreate(CreateRoom {
            kind: RoomKind::Group,
            name: Some("compilers".into()),
            visibility: None,
            members: vec![UserId::new("grace")?],
        }),
    )
    .await;
    let Reply::Room { room } = reply(&mut ada).await? else {
        return Err(chat_core::Error::invalid("expected a room"));
    };

    grace.submit(None, Command::RoomJoin(JoinRoom { room_id: room.id, since_seq: Some(0) })).await;
    reply(&mut grace).await?;

    let mut received = Vec::new();
    for (i, text) in ["hello", "shall we write a compiler?"].into_iter().enumerate() {
        let send = SendMessage {
            room_id: room.id,
            client_msg_id: format!("ada-{i}"),
            body: text.into(),
            attachments: vec![],
            reply_to: None,
        };
        ada.submit(None, Command::MessageSend(send)).await;
        // The reply arrives once the message is stored.
        reply(&mut ada).await?;
        if let Some(message) = next_message(&mut grace).await {
            received.push(message.body);
        }
    }
    engine.shutdown().await;
    Ok(received)
}

#[tokio::main]
async fn main() -> chat_core::Result<()> {
    for body in conversation().await? {
        println!("grace received: {body}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[tokio::test]
    async fn grace_receives_what_ada_says_in_order() {
        let bodies = super::conversation().await.expect("the conversation runs");
        assert_eq!(bodies, vec!["hello".to_owned(), "shall we write a compiler?".to_owned()]);
    }
}
