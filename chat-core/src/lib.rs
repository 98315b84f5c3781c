//! The chat engine and its domain, independent of any transport or database.
//!
//! `chat-core` holds the rules of the chat (rooms and who may enter them,
//! messages with gapless per-room sequence numbers, idempotent sends, receipts,
//! presence, typing) and the [`Engine`] that applies them. Everything with I/O
//! sits behind a trait, so each adapter crate implements one seam:
//!
//! | you are writing | implement | then |
//! |---|---|---|
//! | a database backend | [`Store`] | run the conformance suite (`testing` feature) against it |
//! | a transport (WebSocket, TCP, …) | nothing: drive a [`Session`] | decode commands with [`Command::decode`], encode [`Output`]s |
//! | credentials | [`Authenticator`] | hand the [`Identity`] (with `issued_at`, so that revocations can tell tokens apart) to [`Engine::open_session`], or to [`Engine::authorize`] for a request without a session |
//! | many server processes | [`Broker`] | move each publication to the processes subscribed to its [`Topic`]; run the broker suite (`testing` feature) |
//! | a bridge to another platform | [`Bridge`] | act through the [`BridgeHost`] it is started with; keep its outbox in [`BridgeStore`] |
//! | a store that bridges can use | [`BridgeStore`] too | return it from [`Store::bridge_store`]; run `bridge_store_conformance!` |
//! | a store that keeps uploads' records | [`store::AttachmentStore`] too | return it from [`Store::attachment_store`]; the store conformance suite checks it |
//! | where attachment bytes go | [`BlobStore`] | hand it to [`EngineBuilder::attachments`] in an [`AttachmentConfig`] (`chat-attachments` has a directory and S3) |
//!
//! The engine does no I/O of its own beyond calling these traits and Tokio
//! timers and channels.
//!
//! # Example
//!
//! ```
//! use std::sync::Arc;
//! use chat_core::command::{Command, CreateRoom, SendMessage};
//! use chat_core::{Engine, Identity, MemoryStore, Output, RoomKind, UserId};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> chat_core::Result<()> {
//! let engine = Engine::builder(Arc::new(MemoryStore::new())).start().await?;
//! let (mut session, ready) = engine.open_session(Identity::new(UserId::new("ada")?)).await?;
//! assert!(ready.rooms.is_empty());
//!
//! session
//!     .submit(None, Command::RoomCreate(CreateRoom {
//!         kind: RoomKind::Group, name: Some("general".into()), visibility: None, members: vec![],
//!     }))
//!     .await;
//! let Output::Reply { result: Ok(chat_core::command::Reply::Room { room }), .. } = session.next_output().await
//! else { panic!("expected a room") };
//!
//! session
//!     .submit(None, Command::MessageSend(SendMessage {
//!         room_id: room.id, client_msg_id: "m1".into(), body: "hello".into(),
//!         attachments: vec![], reply_to: None,
//!     }))
//!     .await;
//! // The reply comes once the message is committed.
//! let Output::Reply { result: Ok(chat_core::command::Reply::Message { message }), .. } = session.next_output().await
//! else { panic!("expected the stored message") };
//! assert_eq!(message.seq, 1);
//! engine.shutdown().await;
//! # Ok(())
//! # }
//! ```

pub mod attachment;
pub mod auth;
pub mod bridge;
pub mod broker;
pub mod call;
pub mod command;
pub mod config;
pub mod engine;
pub mod error;
pub mod event;
pub mod id;
#[cfg(feature = "testing")]
pub mod invariants;
pub mod message;
mod metrics;
#[cfg(feature = "openapi")]
mod openapi;
pub mod presence;
pub mod push;
pub mod room;
pub mod search;
pub mod store;
#[cfg(feature = "testing")]
pub mod testing;
pub mod time;
pub mod user;

pub use attachment::{AttachmentConfig, BlobStore, StoredAttachment, UrlSigner};
pub use auth::{Authenticator, StaticTokens};
pub use bridge::{
    Bridge, BridgeEvent, BridgeHealth, BridgeHost, BridgeStore, Job, JobCounts, JobStatus, NewJob, NewLink,
};
pub use broker::{Audience, Broker, BrokerSink, Fanout, LocalBroker, LocalBus, Topic};
pub use call::{
    Call, CallMedia, CallNotifier, CallOutcome, CallParty, CallStart, CallState, CallSummary, EndReason, IceServers,
};
pub use command::{Command, CommandKind, Reply};
pub use config::{CallConfig, ClusterConfig, EngineConfig, Limits};
pub use engine::{
    AccountPage, CloseReason, CloseSignal, Engine, EngineBuilder, Output, Ready, Ref, Session, SupportAvailability,
    SupportQueuePage,
};
pub use error::{BoxError, Error, ErrorCode, Result};
pub use event::{Delivery, Event, EventCodec};
pub use id::{AttachmentId, CallId, MessageId, RoomId, SessionId, UserId};
pub use message::{Appended, Attachment, HistoryPage, HistoryQuery, Message, NewMessage};
pub use presence::{OnlineUser, PresenceStatus};
pub use push::{PushStore, PushSubscription};
pub use room::{
    Ban, Member, MemberReceipts, MemberRole, NewRoom, ReceiptKind, Room, RoomChanges, RoomKind, RoomSummary, Visibility,
};
pub use search::{SearchHit, SearchPage, SearchQuery};
pub use store::{ActiveRoom, Joining, MemberLimits, MemoryStore, QueueCursor, QueuedRoom, Store};
pub use time::Timestamp;
pub use user::{Identity, User, UserAccount, UserListQuery, UserPatch};
