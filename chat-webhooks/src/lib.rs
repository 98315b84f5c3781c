//! Signed, durable, retried webhooks for the chat toolkit.
//!
//! [`WebhookBridge`] implements [`chat_core::Bridge`]: every change the
//! engine commits (messages created, edited, deleted; rooms made; members
//! added and removed; support rooms opened, claimed, closed) becomes an
//! event `{"id","type","created_at","data"}` that is POSTed to each endpoint
//! that wants its type, signed with the endpoint's secret in the
//! `x-chat-signature` header ([`sign`]). Endpoints come from the server's
//! configuration ([`WebhookConfig::endpoint`]) and from the admin API
//! ([`routes`]).
//!
//! - **Durable.** Nothing is sent from the engine's path: each event is
//!   written to the store's outbox ([`chat_core::BridgeStore`]), one
//!   delivery per endpoint, and sent from there. A crash between a commit
//!   and its enqueue is made good by a catch-up from the store.
//! - **In order per room.** An endpoint's deliveries of one room go one
//!   at a time, in the order of the events; endpoints and rooms do not wait
//!   for each other.
//! - **Retried.** A delivery that gets no 2xx within 5 s is tried again
//!   after 1 s, then 2, 4… (at most 5 minutes apart) until 24 h after it was
//!   enqueued; then it is failed, listed and retried by hand through the
//!   admin API.
//! - **At least once.** A delivery whose answer was lost, or an event the
//!   catch-up finds again, comes again with the same `id`: receivers drop
//!   repeats by it.
//! - **One sender.** Of several processes on one database, the one holding
//!   the bridge's lease sends; the others enqueue, and take over when it stops.
//!
//! `docs/webhooks.md` is the operator's and receiver's guide.
//!
//! # Example
//!
//! ```no_run
//! use std::sync::Arc;
//! use chat_webhooks::{ConfiguredEndpoint, WebhookBridge, WebhookConfig};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let mut config = WebhookConfig::default();
//! config.endpoint = Some(ConfiguredEndpoint {
//!     url: "https://example.com/hooks/chat".into(),
//!     secret: std::env::var("CHAT_WEBHOOK_SECRET")?,
//!     events: Vec::new(),
//! });
//! let webhooks = WebhookBridge::new(config)?;
//! let engine = chat_core::Engine::builder(Arc::new(chat_core::MemoryStore::new()))
//!     .bridge(Arc::new(webhooks.clone()))
//!     .start()
//!     .await?;
//! // Serve the admin routes beside the others:
//! // chat_transport_ws::router_with(state, chat_webhooks::routes(webhooks))
//! engine.shutdown().await;
//! # Ok(())
//! # }
//! ```

mod bridge;
mod config;
mod endpoint;
pub mod error;
mod event;
mod routes;
pub mod sign;

pub use bridge::{Delivery, NAME, WebhookBridge};
pub use config::{ConfiguredEndpoint, WebhookConfig};
pub use endpoint::{CONFIGURED_ID, Endpoint, EventType, MAX_URL_BYTES, NewEndpoint, SECRET_BYTES};
pub use error::{Error, Result};
pub use routes::routes;
pub use sign::{SIGNATURE_HEADER, signature, verify};
