//! The conformance suite for [`Broker`] implementations (feature `testing`).
//!
//! Every promise of the [`broker`](crate::broker) module docs that a test can
//! observe has a check here: fan-out to the subscribed processes only and
//! never back to the publisher, [`Topic::Cluster`] without subscribing,
//! `subscribe` that returns only once active, `unsubscribe`, per-publisher
//! order without duplicates, awkward user ids, large payloads, an outage and
//! the return from it, and `stop`; and, with engines on the broker (see
//! [`cluster`](super::cluster)), the engine's own promises across processes.
//! Each check is a `pub async fn` that takes a
//! [`BrokerHarness`] (which makes brokers connected to one broker server and
//! can take that server down and bring it back) and panics with a message
//! naming the broken promise. A broker crate runs them all from its own tests
//! with one macro call, which expands to one `#[tokio::test]` per check:
//!
//! ```no_run
//! # use std::sync::Arc;
//! # use chat_core::{Broker, LocalBus};
//! # use chat_core::testing::broker::BrokerHarness;
//! // tests/conformance.rs of a broker crate, with `chat-core = { features = ["testing"] }`,
//! // `async-trait` and `tokio = { features = ["macros", "rt-multi-thread"] }` as dev-dependencies.
//! struct Local(LocalBus);
//!
//! #[async_trait::async_trait]
//! impl BrokerHarness for Local {
//!     async fn broker(&self) -> Arc<dyn Broker> {
//!         Arc::new(self.0.broker())
//!     }
//!     async fn set_down(&self, down: bool) {
//!         self.0.set_available(!down);
//!     }
//! }
//!
//! chat_core::broker_conformance!(async { Local(LocalBus::new()) });
//! # fn main() {}
//! ```
//!
//! The expression is evaluated once per check and must produce a harness or
//! an `Option` of one: `None` skips the check, for brokers whose server the
//! machine may not have (the expression should then say why on stderr). Each
//! check gets a harness of its own, so a check that plays an outage does not
//! disturb the others; a harness that starts a server process per check gives
//! exactly that. To run the suite twice in one test file, name the module each
//! expansion goes into: `broker_conformance!(mod nats, async { … })`.
//!
//! Payloads are short readable strings (`"a:17"`), so that a failure message
//! says which publication went wrong.

use std::collections::BTreeMap;
use std::fmt;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use tokio::sync::watch;

use crate::broker::{Broker, BrokerSink, Topic};
use crate::error::{ErrorCode, Result};
use crate::id::{RoomId, UserId};

/// Makes brokers on one broker server, and plays that server's outage.
#[async_trait]
pub trait BrokerHarness: Send + Sync + 'static {
    /// A new, unstarted broker connected to the same broker server as the
    /// others this harness made.
    async fn broker(&self) -> Arc<dyn Broker>;

    /// Plays an outage of the broker server: `true` stops it or makes it
    /// unreachable, `false` brings it back on the same address (and returns
    /// once it answers).
    async fn set_down(&self, down: bool);
}

/// What a conformance check can run on: a harness, or an `Option` of one,
/// where `None` skips the check.
pub trait IntoBrokerHarness {
    /// The harness, or `None` to skip.
    fn into_harness(self) -> Option<Box<dyn BrokerHarness>>;
}

impl<H: BrokerHarness> IntoBrokerHarness for H {
    fn into_harness(self) -> Option<Box<dyn BrokerHarness>> {
        Some(Box::new(self))
    }
}

impl<H: IntoBrokerHarness> IntoBrokerHarness for Option<H> {
    fn into_harness(self) -> Option<Box<dyn BrokerHarness>> {
        self.and_then(IntoBrokerHarness::into_harness)
    }
}

/// Expands to one `#[tokio::test]` per broker conformance check, in a module
/// named `broker_conformance` (or the name given after `mod`).
///
/// The argument is an expression evaluated once per test; awaiting it must give
/// a [`BrokerHarness`](crate::testing::broker::BrokerHarness) or an `Option` of
/// one (`None` skips). The calling crate needs `tokio` with the `macros` and
/// `rt-multi-thread` features as a dev-dependency. See the
/// [module docs](crate::testing::broker).
#[macro_export]
macro_rules! broker_conformance {
    (mod $module:ident, $make:expr $(,)?) => {
        #[allow(unused_imports)]
        mod $module {
            use super::*;

            $crate::__broker_conformance_checks! {
                $make;
                publication_reaches_subscribed_brokers_only,
                subscribe_is_active_when_it_returns,
                subscribing_twice_delivers_once,
                unsubscribe_stops_delivery,
                order_is_kept_per_publisher_without_duplicates,
                awkward_user_ids_are_separate_topics,
                large_payload_arrives_intact,
                outage_is_reported_and_recovered,
                stop_ends_delivery_and_publishing,
                // The engine's promises across processes on this broker.
                engines_deliver_every_message_once_in_seq_order,
                engines_end_a_left_room_on_every_process_before_the_reply,
                engines_end_a_users_sessions_everywhere,
                engines_fill_what_an_outage_lost,
            }
        }
    };
    ($make:expr $(,)?) => {
        $crate::broker_conformance!(mod broker_conformance, $make);
    };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __broker_conformance_checks {
    ($make:expr; $($check:ident),* $(,)?) => {
        $(
            #[::tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $check() {
                let Some(harness) = $crate::testing::broker::IntoBrokerHarness::into_harness(($make).await) else {
                    return;
                };
                $crate::testing::broker::$check(&*harness).await;
            }
        )*
    };
}

// ---------------------------------------------------------------------------
// The recording sink

/// A [`BrokerSink`] for tests: keeps every payload in arrival order, counts
/// [`resubscribed`](BrokerSink::resubscribed) and [`lost`](BrokerSink::lost),
/// and lets a test wait for any of them with a timeout.
pub struct RecordingSink {
    seen: Mutex<Seen>,
    changed: watch::Sender<u64>,
}

#[derive(Debug, Default, Clone)]
struct Seen {
    payloads: Vec<Bytes>,
    resubscribed: usize,
    lost: usize,
}

impl RecordingSink {
    /// An empty sink.
    pub fn new() -> Arc<Self> {
        Arc::new(RecordingSink { seen: Mutex::new(Seen::default()), changed: watch::Sender::new(0) })
    }

    fn seen(&self) -> std::sync::MutexGuard<'_, Seen> {
        self.seen.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn record(&self, change: impl FnOnce(&mut Seen)) {
        change(&mut self.seen());
        self.changed.send_modify(|n| *n += 1);
    }

    /// Every payload received so far, in arrival order.
    pub fn payloads(&self) -> Vec<Bytes> {
        self.seen().payloads.clone()
    }

    /// Every payload received so far, as text (payloads that are not UTF-8
    /// are shown lossily).
    pub fn texts(&self) -> Vec<String> {
        self.seen().payloads.iter().map(|p| String::from_utf8_lossy(p).into_owned()).collect()
    }

    /// How many payloads arrived so far.
    pub fn len(&self) -> usize {
        self.seen().payloads.len()
    }

    /// Whether no payload arrived so far.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// How many times the broker said it resubscribed.
    pub fn resubscribed_count(&self) -> usize {
        self.seen().resubscribed
    }

    /// How many times the broker said publications were lost.
    pub fn lost_count(&self) -> usize {
        self.seen().lost
    }

    /// Waits until `done` holds for what was recorded, up to `timeout`;
    /// whether it did.
    pub async fn wait_until(&self, timeout: Duration, mut done: impl FnMut(&RecordingSink) -> bool) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        // Subscribing before looking means a change made after the look wakes us.
        let mut changes = self.changed.subscribe();
        loop {
            if done(self) {
                return true;
            }
            match tokio::time::timeout_at(deadline, changes.changed()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) | Err(_) => return done(self),
            }
        }
    }

    /// Waits until at least `n` payloads arrived, up to `timeout`, and returns
    /// them all; panics, naming `what` and showing what did arrive, when they
    /// do not.
    pub async fn expect_at_least(&self, n: usize, timeout: Duration, what: &str) -> Vec<Bytes> {
        if !self.wait_until(timeout, |s| s.len() >= n).await {
            panic!("{what}: expected {n} payloads within {timeout:?}, got {}: {:?}", self.len(), short(&self.texts()));
        }
        self.payloads()
    }

    /// Waits until a payload equal to `text` arrived, up to `timeout`;
    /// panics, naming `what`, when it does not.
    pub async fn expect_text(&self, text: &str, timeout: Duration, what: &str) {
        let found = self.wait_until(timeout, |s| s.seen().payloads.iter().any(|p| p.as_ref() == text.as_bytes())).await;
        assert!(found, "{what}: {text:?} did not arrive within {timeout:?}; got {:?}", short(&self.texts()));
    }
}

impl BrokerSink for RecordingSink {
    fn receive(&self, payload: Bytes) {
        self.record(|s| s.payloads.push(payload));
    }

    fn resubscribed(&self) {
        self.record(|s| s.resubscribed += 1);
    }

    fn lost(&self) {
        self.record(|s| s.lost += 1);
    }
}

impl fmt::Debug for RecordingSink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let seen = self.seen();
        f.debug_struct("RecordingSink")
            .field("payloads", &seen.payloads.len())
            .field("resubscribed", &seen.resubscribed)
            .field("lost", &seen.lost)
            .finish()
    }
}

/// The first few of a long list, for failure messages.
fn short(texts: &[String]) -> Vec<String> {
    let mut out: Vec<String> = texts
        .iter()
        .take(20)
        .map(|t| if t.len() > 60 { format!("{}… ({} bytes)", &t[..60], t.len()) } else { t.clone() })
        .collect();
    if texts.len() > 20 {
        out.push(format!("… and {} more", texts.len() - 20));
    }
    out
}

// ---------------------------------------------------------------------------
// Helpers

/// How long a publication may take to arrive when the broker is up.
const DELIVERY: Duration = Duration::from_secs(5);

/// How long to wait before concluding that something did not arrive.
const SETTLE: Duration = Duration::from_millis(300);

/// A broker of the harness, started with a recording sink.
async fn started(harness: &dyn BrokerHarness) -> (Arc<dyn Broker>, Arc<RecordingSink>) {
    let broker = harness.broker().await;
    let sink = RecordingSink::new();
    ok(broker.start(sink.clone()).await, "start");
    (broker, sink)
}

/// Unwraps a broker result, showing the error and its source on failure.
fn ok<T>(r: Result<T>, what: &str) -> T {
    match r {
        Ok(v) => v,
        Err(e) => panic!("{what} failed: {e} ({e:?})"),
    }
}

/// A room topic no other check uses.
fn fresh_room() -> Topic {
    Topic::Room(RoomId::generate())
}

fn text(s: impl Into<String>) -> Bytes {
    Bytes::from(s.into())
}

/// Runs `f` and fails the check if it takes longer than `limit`.
async fn within<T>(limit: Duration, what: &str, f: impl Future<Output = T>) -> T {
    match tokio::time::timeout(limit, f).await {
        Ok(v) => v,
        Err(_) => panic!("{what} did not return within {limit:?}"),
    }
}

/// Waits until `cond` holds, polling, up to `limit`; whether it did.
async fn eventually(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn stop_all(brokers: &[&Arc<dyn Broker>]) {
    for broker in brokers {
        within(Duration::from_secs(10), "stop", broker.stop()).await;
    }
}

// ---------------------------------------------------------------------------
// The checks

pub use super::cluster::{
    engines_deliver_every_message_once_in_seq_order, engines_end_a_left_room_on_every_process_before_the_reply,
    engines_end_a_users_sessions_everywhere, engines_fill_what_an_outage_lost,
};

/// A publication reaches every other started broker subscribed to its topic,
/// not the publisher (no echo) and not a broker that did not subscribe
/// (interest); [`Topic::Cluster`] reaches every other broker without a
/// subscribe call.
pub async fn publication_reaches_subscribed_brokers_only(harness: &dyn BrokerHarness) {
    let (a, sink_a) = started(harness).await;
    let (b, sink_b) = started(harness).await;
    let (c, sink_c) = started(harness).await;
    let (d, sink_d) = started(harness).await;
    let room = fresh_room();
    for broker in [&a, &b, &c] {
        ok(broker.subscribe(std::slice::from_ref(&room)).await, "subscribe");
    }

    ok(a.publish(&[(room.clone(), text("room from a"))]).await, "publish to a room");
    ok(b.publish(&[(Topic::Cluster, text("cluster from b"))]).await, "publish to the cluster");

    sink_b.expect_text("room from a", DELIVERY, "a subscribed broker (b)").await;
    sink_c.expect_text("room from a", DELIVERY, "a subscribed broker (c)").await;
    sink_a.expect_text("cluster from b", DELIVERY, "Topic::Cluster (to a)").await;
    sink_c.expect_text("cluster from b", DELIVERY, "Topic::Cluster (to c)").await;
    sink_d.expect_text("cluster from b", DELIVERY, "Topic::Cluster (to d, which subscribed to nothing)").await;
    tokio::time::sleep(SETTLE).await;

    assert_eq!(sink_a.texts(), ["cluster from b"], "the publisher a must not get its own publication back");
    assert_eq!(sink_b.texts(), ["room from a"], "the publisher b must not get its own publication back");
    let mut got_c = sink_c.texts();
    got_c.sort();
    assert_eq!(got_c, ["cluster from b", "room from a"], "c gets each publication once");
    assert_eq!(sink_d.texts(), ["cluster from b"], "d did not subscribe to the room and must not get its publications");
    for sink in [&sink_a, &sink_b, &sink_c, &sink_d] {
        assert_eq!((sink.resubscribed_count(), sink.lost_count()), (0, 0), "nothing was lost on a quiet broker");
    }
    for broker in [&a, &b, &c, &d] {
        assert!(broker.is_connected(), "a started broker with its server up is connected");
    }
    stop_all(&[&a, &b, &c, &d]).await;
}

/// `subscribe` returns only once the subscription is active: a publication
/// made by another broker right after it returns is received, every time.
pub async fn subscribe_is_active_when_it_returns(harness: &dyn BrokerHarness) {
    const ROUNDS: usize = 300;
    let (a, sink_a) = started(harness).await;
    let (b, _sink_b) = started(harness).await;
    for round in 0..ROUNDS {
        let room = fresh_room();
        ok(a.subscribe(std::slice::from_ref(&room)).await, "subscribe");
        ok(b.publish(&[(room, text(format!("round {round}")))]).await, "publish");
        if !sink_a.wait_until(DELIVERY, |s| s.len() > round).await {
            panic!(
                "round {round}: a publication made right after subscribe returned was not received: \
                 subscribe must return only once the subscription is active"
            );
        }
    }
    let texts = sink_a.texts();
    let want: Vec<String> = (0..ROUNDS).map(|r| format!("round {r}")).collect();
    assert_eq!(texts, want, "each round's publication arrives once");
    stop_all(&[&a, &b]).await;
}

/// Subscribing to a topic twice (in one call and in two) does not deliver its
/// publications twice, and one unsubscribe ends it.
pub async fn subscribing_twice_delivers_once(harness: &dyn BrokerHarness) {
    let (a, sink_a) = started(harness).await;
    let (b, _sink_b) = started(harness).await;
    let room = fresh_room();
    ok(a.subscribe(&[room.clone(), room.clone()]).await, "subscribe");
    ok(a.subscribe(std::slice::from_ref(&room)).await, "subscribe again");
    ok(a.subscribe(&[Topic::Cluster]).await, "subscribe to the cluster, which start subscribed to");
    ok(b.publish(&[(room.clone(), text("once")), (Topic::Cluster, text("cluster once"))]).await, "publish");
    sink_a.expect_at_least(2, DELIVERY, "the publications").await;
    tokio::time::sleep(SETTLE).await;
    let mut got = sink_a.texts();
    got.sort();
    assert_eq!(got, ["cluster once", "once"], "each publication arrives once however often its topic was subscribed");

    ok(a.unsubscribe(std::slice::from_ref(&room)).await, "unsubscribe");
    tokio::time::sleep(SETTLE).await;
    ok(b.publish(&[(room, text("after"))]).await, "publish");
    tokio::time::sleep(SETTLE).await;
    assert!(!sink_a.texts().contains(&"after".to_owned()), "one unsubscribe ends a topic subscribed twice");
    stop_all(&[&a, &b]).await;
}

/// After `unsubscribe` returns (and a short settle), publications to the
/// topic no longer arrive, while the broker's other topics still do.
pub async fn unsubscribe_stops_delivery(harness: &dyn BrokerHarness) {
    let (a, sink_a) = started(harness).await;
    let (b, _sink_b) = started(harness).await;
    let (gone, kept) = (fresh_room(), fresh_room());
    ok(a.subscribe(&[gone.clone(), kept.clone()]).await, "subscribe");
    ok(b.publish(&[(gone.clone(), text("before"))]).await, "publish");
    sink_a.expect_text("before", DELIVERY, "a subscribed room").await;

    ok(a.unsubscribe(std::slice::from_ref(&gone)).await, "unsubscribe");
    tokio::time::sleep(SETTLE).await;
    for i in 0..50 {
        ok(b.publish(&[(gone.clone(), text(format!("after {i}")))]).await, "publish");
    }
    // Published after the 50 by the same broker: once it is here, the 50 would
    // have been too.
    ok(b.publish(&[(kept.clone(), text("still subscribed"))]).await, "publish");
    sink_a.expect_text("still subscribed", DELIVERY, "a room still subscribed").await;
    tokio::time::sleep(SETTLE).await;
    let leaked: Vec<String> = sink_a.texts().into_iter().filter(|t| t.starts_with("after")).collect();
    assert!(leaked.is_empty(), "publications to an unsubscribed room arrived: {:?}", short(&leaked));
    stop_all(&[&a, &b]).await;
}

/// Two publishers each publish 2000 payloads to one topic, in batches of
/// varied size; two subscribers each get every publisher's payloads
/// complete, in publication order, and none twice.
pub async fn order_is_kept_per_publisher_without_duplicates(harness: &dyn BrokerHarness) {
    const EACH: usize = 2000;
    const BATCHES: [usize; 8] = [1, 7, 50, 3, 200, 1, 13, 90];
    let (s1, sink_1) = started(harness).await;
    let (s2, sink_2) = started(harness).await;
    let (p1, _) = started(harness).await;
    let (p2, _) = started(harness).await;
    let room = fresh_room();
    ok(s1.subscribe(std::slice::from_ref(&room)).await, "subscribe");
    ok(s2.subscribe(std::slice::from_ref(&room)).await, "subscribe");

    let mut tasks = Vec::new();
    for (name, publisher) in [("p1", p1.clone()), ("p2", p2.clone())] {
        let room = room.clone();
        tasks.push(tokio::spawn(async move {
            let mut next = 0;
            let mut sizes = BATCHES.iter().cycle();
            while next < EACH {
                let size = (*sizes.next().unwrap_or(&1)).min(EACH - next);
                let batch: Vec<(Topic, Bytes)> =
                    (next..next + size).map(|n| (room.clone(), text(format!("{name}:{n}")))).collect();
                ok(publisher.publish(&batch).await, "publish");
                next += size;
            }
        }));
    }
    for task in tasks {
        task.await.expect("a publisher task panicked");
    }

    for (name, sink) in [("s1", &sink_1), ("s2", &sink_2)] {
        sink.expect_at_least(2 * EACH, Duration::from_secs(30), name).await;
        tokio::time::sleep(SETTLE).await;
        let mut by_publisher: BTreeMap<String, Vec<usize>> = BTreeMap::new();
        for t in sink.texts() {
            let (publisher, n) = t.split_once(':').unwrap_or_else(|| panic!("{name}: unexpected payload {t:?}"));
            let n: usize = n.parse().unwrap_or_else(|_| panic!("{name}: unexpected payload {t:?}"));
            by_publisher.entry(publisher.to_owned()).or_default().push(n);
        }
        let want: Vec<usize> = (0..EACH).collect();
        for publisher in ["p1", "p2"] {
            let got = by_publisher.get(publisher).cloned().unwrap_or_default();
            if got != want {
                let first_wrong = got.iter().zip(&want).position(|(g, w)| g != w).unwrap_or(got.len().min(EACH));
                panic!(
                    "{name} got {} payloads of {publisher} instead of {EACH} in order (duplicates or gaps): \
                     first difference at index {first_wrong}: {:?}",
                    got.len(),
                    &got[first_wrong.saturating_sub(3)..(first_wrong + 3).min(got.len())]
                );
            }
        }
        assert_eq!(sink.len(), 2 * EACH, "{name}: nothing else arrives, nothing twice");
    }
    stop_all(&[&s1, &s2, &p1, &p2]).await;
}

/// User topics work whatever the user id holds: spaces, dots, NATS wildcards,
/// non-ASCII, 128 characters. Each is a topic of its own: subscribing to the
/// user `*` or `>` does not subscribe to every user.
pub async fn awkward_user_ids_are_separate_topics(harness: &dyn BrokerHarness) {
    let ids = [
        "a b",
        "a.b",
        "a..b.",
        "*",
        ">",
        "a.*",
        "a.>",
        "visitor:Ünïcödé 用户",
        "\u{202e}rtl",
        &"x".repeat(128),
        &"\u{1d11e}".repeat(128),
    ];
    let users: Vec<UserId> = ids.iter().map(|id| ok(UserId::new(*id), "a test user id")).collect();
    let topics: Vec<Topic> = users.iter().cloned().map(Topic::User).collect();
    let (all, sink_all) = started(harness).await;
    let (star, sink_star) = started(harness).await;
    let (gt, sink_gt) = started(harness).await;
    let (publisher, _) = started(harness).await;
    ok(all.subscribe(&topics).await, "subscribe to the awkward users");
    ok(star.subscribe(&[Topic::User(ok(UserId::new("*"), "user id"))]).await, "subscribe to user *");
    ok(gt.subscribe(&[Topic::User(ok(UserId::new(">"), "user id"))]).await, "subscribe to user >");

    let batch: Vec<(Topic, Bytes)> =
        topics.iter().zip(ids).map(|(t, id)| (t.clone(), text(format!("for {id}")))).collect();
    ok(publisher.publish(&batch).await, "publish to the awkward users");
    sink_all.expect_at_least(ids.len(), DELIVERY, "the user topics").await;
    sink_star.expect_text("for *", DELIVERY, "user *").await;
    sink_gt.expect_text("for >", DELIVERY, "user >").await;
    tokio::time::sleep(SETTLE).await;
    // Order is kept per topic, not across topics.
    let mut want: Vec<String> = ids.iter().map(|id| format!("for {id}")).collect();
    want.sort();
    let mut got = sink_all.texts();
    got.sort();
    assert_eq!(got, want, "each user topic delivers its own publication once");
    assert_eq!(sink_star.texts(), ["for *"], "the user * is a topic, not a wildcard");
    assert_eq!(sink_gt.texts(), ["for >"], "the user > is a topic, not a wildcard");
    stop_all(&[&all, &star, &gt, &publisher]).await;
}

/// A payload of 900 KiB arrives byte for byte.
pub async fn large_payload_arrives_intact(harness: &dyn BrokerHarness) {
    let (a, sink_a) = started(harness).await;
    let (b, _) = started(harness).await;
    let room = fresh_room();
    ok(a.subscribe(std::slice::from_ref(&room)).await, "subscribe");
    // Not a repeated byte, so that a shifted or truncated copy shows.
    let payload: Bytes = (0..900 * 1024_u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8).collect();
    ok(b.publish(&[(room.clone(), payload.clone()), (room, text("small after"))]).await, "publish 900 KiB");
    let got = sink_a.expect_at_least(2, Duration::from_secs(10), "a 900 KiB payload and a small one").await;
    assert_eq!(got[0].len(), payload.len(), "the large payload's length");
    assert!(got[0] == payload, "the large payload arrives byte for byte");
    assert_eq!(got[1].as_ref(), b"small after");
    stop_all(&[&a, &b]).await;
}

/// During an outage, `is_connected` turns false and `publish` and
/// `subscribe` fail quickly as `unavailable`, a topic subscribed meanwhile is
/// remembered; once the server is back, every sink hears `resubscribed`,
/// every broker is connected again, and the topics subscribed before and
/// during the outage deliver again without a new subscribe call.
pub async fn outage_is_reported_and_recovered(harness: &dyn BrokerHarness) {
    let (a, sink_a) = started(harness).await;
    let (b, sink_b) = started(harness).await;
    let (c, sink_c) = started(harness).await;
    let (old_a, old_b, during) = (fresh_room(), fresh_room(), fresh_room());
    ok(a.subscribe(std::slice::from_ref(&old_a)).await, "subscribe");
    ok(b.subscribe(std::slice::from_ref(&old_b)).await, "subscribe");
    ok(c.publish(&[(old_a.clone(), text("a before")), (old_b.clone(), text("b before"))]).await, "publish");
    sink_a.expect_text("a before", DELIVERY, "before the outage").await;
    sink_b.expect_text("b before", DELIVERY, "before the outage").await;

    harness.set_down(true).await;
    for (name, broker) in [("a", &a), ("b", &b), ("c", &c)] {
        assert!(
            eventually(Duration::from_secs(5), || !broker.is_connected()).await,
            "{name}.is_connected() must turn false within 5 s of the outage"
        );
    }
    let started_at = Instant::now();
    let published =
        within(Duration::from_secs(6), "publish during the outage", c.publish(&[(old_a.clone(), text("lost"))])).await;
    match published {
        Err(e) => assert_eq!(e.code(), ErrorCode::Unavailable, "publish during an outage: {e:?}"),
        Ok(()) => panic!("publish during an outage must fail"),
    }
    assert!(started_at.elapsed() <= Duration::from_secs(5), "publish took {:?} to fail", started_at.elapsed());
    let subscribed =
        within(Duration::from_secs(6), "subscribe during the outage", b.subscribe(std::slice::from_ref(&during))).await;
    match subscribed {
        Err(e) => assert_eq!(e.code(), ErrorCode::Unavailable, "subscribe during an outage: {e:?}"),
        Ok(()) => panic!("subscribe during an outage must fail (and remember the topic)"),
    }

    harness.set_down(false).await;
    for (name, broker, sink) in [("a", &a, &sink_a), ("b", &b, &sink_b), ("c", &c, &sink_c)] {
        assert!(
            sink.wait_until(Duration::from_secs(10), |s| s.resubscribed_count() >= 1).await,
            "{name}'s sink must hear resubscribed() within 10 s of the server's return"
        );
        assert!(
            eventually(Duration::from_secs(10), || broker.is_connected()).await,
            "{name}.is_connected() must be true again after resubscribed()"
        );
    }
    ok(
        c.publish(&[
            (old_a.clone(), text("a after")),
            (old_b.clone(), text("b after")),
            (during.clone(), text("during after")),
            (Topic::Cluster, text("cluster after")),
        ])
        .await,
        "publish after the outage",
    );
    sink_a.expect_text("a after", DELIVERY, "a topic subscribed before the outage (a)").await;
    sink_b.expect_text("b after", DELIVERY, "a topic subscribed before the outage (b)").await;
    sink_b.expect_text("during after", DELIVERY, "the topic whose subscribe failed during the outage").await;
    sink_a.expect_text("cluster after", DELIVERY, "Topic::Cluster after the outage").await;
    ok(a.publish(&[(old_b, text("from a after"))]).await, "publish from a subscriber after the outage");
    sink_b.expect_text("from a after", DELIVERY, "a publication of another recovered broker").await;
    tokio::time::sleep(SETTLE).await;
    assert!(!sink_a.texts().contains(&"lost".to_owned()), "a publish that failed must not arrive later");
    stop_all(&[&a, &b, &c]).await;
}

/// After `stop`, nothing more is delivered to the broker's sink and its
/// `publish` fails; the other brokers go on.
pub async fn stop_ends_delivery_and_publishing(harness: &dyn BrokerHarness) {
    let (a, sink_a) = started(harness).await;
    let (b, sink_b) = started(harness).await;
    let room = fresh_room();
    ok(a.subscribe(std::slice::from_ref(&room)).await, "subscribe");
    ok(b.subscribe(std::slice::from_ref(&room)).await, "subscribe");
    ok(b.publish(&[(room.clone(), text("before stop"))]).await, "publish");
    sink_a.expect_text("before stop", DELIVERY, "before stop").await;

    within(Duration::from_secs(10), "stop", a.stop()).await;
    ok(b.publish(&[(room.clone(), text("after stop")), (Topic::Cluster, text("cluster after stop"))]).await, "publish");
    tokio::time::sleep(SETTLE * 2).await;
    assert_eq!(sink_a.texts(), ["before stop"], "a stopped broker delivers nothing more");
    let published = within(Duration::from_secs(6), "publish after stop", a.publish(&[(room.clone(), text("x"))])).await;
    assert!(published.is_err(), "publish after stop must fail");

    let (c, _) = started(harness).await;
    ok(c.publish(&[(room, text("others go on"))]).await, "publish");
    sink_b.expect_text("others go on", DELIVERY, "a broker that was not stopped").await;
    stop_all(&[&b, &c]).await;
}
