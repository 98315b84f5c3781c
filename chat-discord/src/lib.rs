//! A Discord bridge for the chat toolkit: website visitors write in `support`
//! rooms, and the support team answers from threads of a Discord forum.
//!
//! [`DiscordBridge`] implements [`chat_core::Bridge`]. Give it to the engine
//! builder; it starts with the engine:
//!
//! - the first message of a support room opens a forum post titled with the
//!   visitor's name and a short room id; later messages go into that thread
//!   under the visitor's name (through a webhook);
//! - what a person writes in the thread reaches the room as the user
//!   `discord:<id>`, with their display name; their typing shows as typing;
//!   messages starting with the note prefix (`!note`) stay in Discord;
//! - files cross too: a visitor's are uploaded into the thread within
//!   Discord's limit ([`DiscordConfig::max_upload_bytes`]; a line with a
//!   link above it), an agent's are copied from Discord's CDN into the
//!   chat's storage, so that they outlive Discord's expiring links;
//! - edits and deletes cross in both directions;
//! - the thread's first post carries Claim and Close buttons for the support
//!   team: a claim shows the visitor who took the conversation, a close ends
//!   it (sends refused, the visitor told, the thread archived);
//! - group rooms listed in [`DiscordConfig::channels`] cross to text
//!   channels the same way, and [`DiscordConfig::role_map`] turns Discord
//!   roles into chat roles;
//! - every call to Discord goes through a durable outbox kept in the store
//!   ([`chat_core::BridgeStore`]), retried with backoff and honouring 429s,
//!   so a slow or absent Discord never delays the chat, and a restart loses
//!   nothing.
//!
//! # Example
//!
//! ```no_run
//! use std::sync::Arc;
//! use chat_discord::{DiscordBridge, DiscordConfig};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let config = DiscordConfig::new(std::env::var("DISCORD_TOKEN")?, 1111, 2222, 3333);
//! let bridge = Arc::new(DiscordBridge::new(config)?);
//! let engine = chat_core::Engine::builder(Arc::new(chat_core::MemoryStore::new()))
//!     .bridge(bridge.clone())
//!     .start()
//!     .await?;
//! // … serve clients; `/health` shows `bridge.health()` …
//! engine.shutdown().await;
//! # Ok(())
//! # }
//! ```

mod bridge;
mod config;
pub mod error;
mod rest;
#[cfg(feature = "test-support")]
pub mod testing;

pub use bridge::{DiscordBridge, NAME, agent_user_id};
pub use config::DiscordConfig;
pub use error::{Error, Result};
