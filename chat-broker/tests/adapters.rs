//! What the adapters promise beyond the conformance suite: on both servers,
//! starting with the server down and prefixes that keep servers apart; on
//! NATS, a slow consumer reported as `lost`.

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use chat_broker::Options;
use chat_broker::testing::BrokerServer;
use chat_core::testing::broker::{BrokerHarness, RecordingSink};
use chat_core::{BrokerSink, RoomId, Topic};
use support::Harness;

/// A broker started while its server is down returns at once, degraded, and
/// comes up by itself when the server does, with what it was asked to
/// subscribe meanwhile.
async fn starts_degraded_and_recovers(harness: Harness) {
    let room = Topic::Room(RoomId::generate());
    let (up, _) = (harness.broker().await, ());
    up.start(RecordingSink::new()).await.expect("start");

    harness.set_down(true).await;
    let down = harness.broker().await;
    let sink = RecordingSink::new();
    let began = Instant::now();
    down.start(sink.clone()).await.expect("start with the server down");
    assert!(began.elapsed() < Duration::from_secs(2), "start took {:?} with the server down", began.elapsed());
    assert!(!down.is_connected());
    let refused = down.subscribe(std::slice::from_ref(&room)).await;
    assert!(refused.is_err(), "subscribe with the server down must fail and remember the topic");

    harness.set_down(false).await;
    assert!(
        sink.wait_until(Duration::from_secs(10), |s| s.resubscribed_count() >= 1).await,
        "the broker started degraded must say resubscribed once the server is up"
    );
    assert!(down.is_connected());
    let deadline = Instant::now() + Duration::from_secs(10);
    while !up.is_connected() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    up.publish(&[(room, Bytes::from_static(b"hello")), (Topic::Cluster, Bytes::from_static(b"all"))])
        .await
        .expect("publish");
    sink.expect_text("hello", Duration::from_secs(5), "the topic subscribed while down").await;
    sink.expect_text("all", Duration::from_secs(5), "the cluster topic subscribed by start while down").await;
    up.stop().await;
    down.stop().await;
}

/// Brokers with different prefixes on one server do not hear each other.
async fn prefixes_keep_servers_apart(harness: Harness) {
    let a = harness.broker_with(Options { prefix: "one".into(), ..Options::default() }).await;
    let b = harness.broker_with(Options { prefix: "two".into(), ..Options::default() }).await;
    let c = harness.broker_with(Options { prefix: "two".into(), ..Options::default() }).await;
    let (sink_a, sink_b) = (RecordingSink::new(), RecordingSink::new());
    a.start(sink_a.clone()).await.expect("start");
    b.start(sink_b.clone()).await.expect("start");
    c.start(RecordingSink::new()).await.expect("start");
    c.publish(&[(Topic::Cluster, Bytes::from_static(b"for two"))]).await.expect("publish");
    sink_b.expect_text("for two", Duration::from_secs(5), "the same prefix").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(sink_a.is_empty(), "another prefix must not hear it: {:?}", sink_a.texts());
    for broker in [a, b, c] {
        broker.stop().await;
    }
}

/// A sink that takes 1 ms per payload: far slower than a publisher, so
/// that the broker's buffers fill.
struct SlowSink(Arc<RecordingSink>);

impl BrokerSink for SlowSink {
    fn receive(&self, payload: Bytes) {
        std::thread::sleep(Duration::from_millis(1));
        self.0.receive(payload);
    }
    fn resubscribed(&self) {
        self.0.resubscribed();
    }
    fn lost(&self) {
        self.0.lost();
    }
}

/// NATS drops what a subscription cannot hold and says so; the broker tells
/// the sink `lost` (once per burst, not once per dropped message), and the
/// subscription goes on delivering.
#[cfg(feature = "nats")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_slow_consumer_is_reported_as_lost() {
    let Some(harness) = support::nats().await else { return };
    let room = Topic::Room(RoomId::generate());
    let (slow, publisher) = (harness.broker().await, harness.broker().await);
    let recorded = RecordingSink::new();
    slow.start(Arc::new(SlowSink(recorded.clone()))).await.expect("start");
    publisher.start(RecordingSink::new()).await.expect("start");
    slow.subscribe(std::slice::from_ref(&room)).await.expect("subscribe");
    for batch in 0..40 {
        let payloads: Vec<(Topic, Bytes)> =
            (0..500).map(|i| (room.clone(), Bytes::from(format!("{batch}:{i}")))).collect();
        publisher.publish(&payloads).await.expect("publish");
    }
    assert!(
        recorded.wait_until(Duration::from_secs(10), |s| s.lost_count() >= 1).await,
        "20 000 publications into a sink that takes 1 ms each must overflow and be reported as lost"
    );
    assert!(recorded.lost_count() < 20, "lost() is coalesced, not said per message: {}", recorded.lost_count());
    assert!(recorded.len() < 20_000, "some were dropped");
    assert!(slow.is_connected(), "a slow consumer keeps its subscriptions");
    slow.stop().await;
    publisher.stop().await;
}

/// A server that wants a password is reached with the one in the URL, and
/// a wrong one leaves the broker degraded rather than hanging or panicking.
async fn credentials_in_the_url_are_used(server: BrokerServer) {
    let room = Topic::Room(RoomId::generate());
    let connect = |url: String| async move {
        chat_broker::connect(&url, Options::default()).await.unwrap_or_else(|e| panic!("connect: {e}"))
    };
    let (a, b) = (connect(server.url()).await, connect(server.url()).await);
    let sink = RecordingSink::new();
    a.start(RecordingSink::new()).await.expect("start");
    b.start(sink.clone()).await.expect("start");
    b.subscribe(std::slice::from_ref(&room)).await.expect("subscribe with the right password");
    a.publish(&[(room.clone(), Bytes::from_static(b"signed in"))]).await.expect("publish");
    sink.expect_text("signed in", Duration::from_secs(5), "a publication between authenticated brokers").await;

    let wrong = connect(server.url_with(Some("not-the-password"))).await;
    wrong.start(RecordingSink::new()).await.expect("start is not refused: the broker stays degraded");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!wrong.is_connected(), "a wrong password must not look connected");
    let began = Instant::now();
    assert!(wrong.publish(&[(room, Bytes::from_static(b"intruder"))]).await.is_err());
    assert!(began.elapsed() < Duration::from_secs(5), "a refused publish fails in bounded time");
    for broker in [a, b, wrong] {
        broker.stop().await;
    }
}

#[cfg(feature = "nats")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_credentials_in_the_url_are_used() {
    let Some(server) = BrokerServer::nats_with_password("s3cret-nats").await else { return };
    credentials_in_the_url_are_used(server).await;
}

#[cfg(feature = "redis")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_credentials_in_the_url_are_used() {
    let Some(server) = BrokerServer::redis_with_password("s3cret-redis").await else { return };
    credentials_in_the_url_are_used(server).await;
}

macro_rules! on_both {
    ($($check:ident),*) => {
        #[cfg(feature = "nats")]
        mod nats {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $check() {
                    let Some(harness) = super::support::nats().await else { return };
                    super::$check(harness).await;
                }
            )*
        }
        #[cfg(feature = "redis")]
        mod redis {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $check() {
                    let Some(harness) = super::support::redis().await else { return };
                    super::$check(harness).await;
                }
            )*
        }
    };
}

on_both!(starts_degraded_and_recovers, prefixes_keep_servers_apart);
