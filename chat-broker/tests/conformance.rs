//! The broker conformance suite of `chat_core::testing::broker`, once on
//! NATS and once on Redis, each test on a server process of its own that the
//! outage check kills and restarts.

mod support;

#[cfg(feature = "nats")]
chat_core::broker_conformance!(mod nats, support::nats());
#[cfg(feature = "redis")]
chat_core::broker_conformance!(mod redis, support::redis());
