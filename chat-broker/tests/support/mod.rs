//! What the broker tests share: a harness per broker server, on a server
//! process of each test's own.

#![allow(dead_code, unreachable_pub)]

use std::sync::Arc;

use chat_broker::Options;
use chat_broker::testing::BrokerServer;
use chat_core::Broker;
use chat_core::testing::broker::BrokerHarness;

/// Brokers made by [`chat_broker::connect`] on one server of the test's own.
pub struct Harness {
    pub server: BrokerServer,
    pub options: Options,
}

impl Harness {
    pub fn new(server: BrokerServer) -> Self {
        Harness { server, options: Options::default() }
    }

    /// A broker on this harness's server with other options.
    pub async fn broker_with(&self, options: Options) -> Arc<dyn Broker> {
        chat_broker::connect(&self.server.url(), options).await.unwrap_or_else(|e| panic!("connect: {e} ({e:?})"))
    }
}

#[async_trait::async_trait]
impl BrokerHarness for Harness {
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

pub async fn nats() -> Option<Harness> {
    Some(Harness::new(BrokerServer::nats().await?))
}

pub async fn redis() -> Option<Harness> {
    Some(Harness::new(BrokerServer::redis().await?))
}
