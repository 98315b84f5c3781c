//! The broker conformance suite against the in-process reference broker
//! (`LocalBroker` on a `LocalBus`), whose outage is `set_available(false)`.

use std::sync::Arc;

use chat_core::testing::broker::BrokerHarness;
use chat_core::{Broker, LocalBus};

/// Brokers on one bus; the bus plays the server.
struct Local(LocalBus);

#[async_trait::async_trait]
impl BrokerHarness for Local {
    async fn broker(&self) -> Arc<dyn Broker> {
        Arc::new(self.0.broker())
    }

    async fn set_down(&self, down: bool) {
        self.0.set_available(!down);
    }
}

chat_core::broker_conformance!(async { Local(LocalBus::new()) });
