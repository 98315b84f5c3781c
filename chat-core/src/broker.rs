//! The fan-out seam between nodes.
//!
//! Every event the engine emits becomes a [`Fanout`]: an event plus the
//! audience it is for. The engine publishes it to its [`Broker`], and the broker
//! hands it to the [`FanoutSink`] of every node (this one included), which
//! delivers it to that node's local sessions. [`LocalBroker`] is the single-node
//! broker: publishing is a direct call into the local sink. A multi-node broker
//! (Redis, NATS) serializes fan-outs (they derive serde) and delivers them from
//! its subscription.

use std::sync::{Arc, OnceLock};

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::event::Event;
use crate::id::{RoomId, SessionId, UserId};

/// Who an event is for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum Audience {
    /// Sessions that joined the room, except one session or all sessions of one user.
    Room {
        /// The room.
        room_id: RoomId,
        /// Skip this session (it got the result in its reply).
        except_session: Option<SessionId>,
        /// Skip every session of this user (events about the user's own action).
        except_user: Option<UserId>,
    },
    /// Every session of these users, except one session.
    Users {
        /// The users.
        users: Vec<UserId>,
        /// Skip this session.
        except_session: Option<SessionId>,
    },
}

/// An event and its audience.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fanout {
    /// Who gets it.
    pub audience: Audience,
    /// What they get.
    pub event: Event,
}

/// Where a broker delivers fan-outs on one node.
pub trait FanoutSink: Send + Sync + 'static {
    /// Delivers to this node's sessions. Must not block.
    fn deliver(&self, fanout: Fanout);
}

/// Carries fan-outs to every node.
#[async_trait]
pub trait Broker: Send + Sync + 'static {
    /// Starts delivering to `sink`. The engine calls this once, before its
    /// first publish.
    async fn start(&self, sink: Arc<dyn FanoutSink>) -> Result<()>;

    /// Sends a fan-out to every node, this one included. Fan-outs published by
    /// one caller in order must be delivered in that order on every node.
    async fn publish(&self, fanout: Fanout) -> Result<()>;

    /// Stops delivering. Called once at shutdown.
    async fn stop(&self) {}
}

/// The broker of a single node: publishing delivers at once, in call order.
#[derive(Default)]
pub struct LocalBroker {
    sink: OnceLock<Arc<dyn FanoutSink>>,
}

impl std::fmt::Debug for LocalBroker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalBroker").field("started", &self.sink.get().is_some()).finish()
    }
}

impl LocalBroker {
    /// A broker that is not started yet.
    pub fn new() -> Self {
        Self::default()
    }
}

#[async_trait]
impl Broker for LocalBroker {
    async fn start(&self, sink: Arc<dyn FanoutSink>) -> Result<()> {
        self.sink.set(sink).map_err(|_| Error::conflict("the broker was started twice"))
    }

    async fn publish(&self, fanout: Fanout) -> Result<()> {
        match self.sink.get() {
            Some(sink) => {
                sink.deliver(fanout);
                Ok(())
            }
            None => Err(Error::internal("the broker was not started")),
        }
    }
}
