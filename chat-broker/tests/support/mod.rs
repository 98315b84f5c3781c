//! What the broker tests share: a harness per broker server, on a server
//! process of each test's own.

#![allow(dead_code, unreachable_pub)]

use std::sync::Arc;

use chat_broker::Options;
use chat_broker::testing::{NatsServer, RedisServer};
use chat_core::Broker;
use chat_core::testing::broker::BrokerHarness;

/// A broker server process the harness can stop and restart.
#[async_trait::async_trait]
pub trait Server: Send + Sync + 'static {
    fn url(&self) -> String;
    async fn stop(&self);
    async fn restart(&self);
}

#[async_trait::async_trait]
impl Server for NatsServer {
    fn url(&self) -> String {
        NatsServer::url(self)
    }
    async fn stop(&self) {
        NatsServer::stop(self).await;
    }
    async fn restart(&self) {
        NatsServer::restart(self).await;
    }
}

#[async_trait::async_trait]
impl Server for RedisServer {
    fn url(&self) -> String {
        RedisServer::url(self)
    }
    async fn stop(&self) {
        RedisServer::stop(self).await;
    }
    async fn restart(&self) {
        RedisServer::restart(self).await;
    }
}

/// Brokers made by [`chat_broker::connect`] on one server of the test's own.
pub struct Harness<S> {
    pub server: S,
    pub options: Options,
}

impl<S: Server> Harness<S> {
    pub fn new(server: S) -> Self {
        Harness { server, options: Options::default() }
    }

    /// A broker on this harness's server with other options.
    pub async fn broker_with(&self, options: Options) -> Arc<dyn Broker> {
        chat_broker::connect(&self.server.url(), options).await.unwrap_or_else(|e| panic!("connect: {e} ({e:?})"))
    }
}

#[async_trait::async_trait]
impl<S: Server> BrokerHarness for Harness<S> {
    async fn broker(&self) -> Arc<dyn Broker> {
        self.broker_with(self.options.clone()).await
    }

    async fn set_down(&self, down: bool) {
        if down {
            self.server.stop().await;
        } else {
            self.server.restart().await;
        }
    }
}

pub async fn nats() -> Option<Harness<NatsServer>> {
    Some(Harness::new(NatsServer::start().await?))
}

pub async fn redis() -> Option<Harness<RedisServer>> {
    Some(Harness::new(RedisServer::start().await?))
}
