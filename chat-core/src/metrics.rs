//! What the engine counts and times, in the Prometheus data model.
//!
//! One [`Metrics`] per engine (not a process-global registry), so that two
//! engines in one process, as in tests, never mix their figures. Updating is
//! a few atomic operations, cheap enough for the paths every message takes;
//! rendering the text exposition happens only when someone scrapes it
//! ([`Engine::encode_metrics`](crate::Engine::encode_metrics)).

use std::collections::BTreeMap;
use std::time::Duration;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// Labels of a command count: its type and how it ended (`ok` or an error code).
type CommandLabels = [(&'static str, &'static str); 2];
/// Labels of an event count: its type.
type EventLabels = [(&'static str, &'static str); 1];
/// Labels of a transport's connection count: its name.
type TransportLabels = [(&'static str, &'static str); 1];

fn latency_histogram() -> Histogram {
    // 100 µs to about 6.5 s, doubling.
    Histogram::new(exponential_buckets(0.000_1, 2.0, 17))
}

fn size_histogram() -> Histogram {
    // 1 to 4096, doubling.
    Histogram::new(exponential_buckets(1.0, 2.0, 13))
}

/// The engine's counters, gauges and histograms.
pub(crate) struct Metrics {
    registry: Registry,
    connections: Gauge,
    transport_connections: Family<TransportLabels, Gauge>,
    commands: Family<CommandLabels, Counter>,
    events: Family<EventLabels, Counter>,
    deliveries: Counter,
    fanout_seconds: Histogram,
    fanout_recipients: Histogram,
    ack_seconds: Histogram,
    commit_seconds: Histogram,
    commit_batch: Histogram,
    commit_failures: Counter,
    slow_consumers: Counter,
    gap_filled: Counter,
    published: Counter,
    received: Counter,
    dropped: Counter,
}

impl Metrics {
    pub(crate) fn new() -> Self {
        let mut registry = Registry::with_prefix("chat");
        let connections = Gauge::default();
        registry.register("connections", "Open sessions on this node", connections.clone());
        let transport_connections = Family::<TransportLabels, Gauge>::default();
        registry.register(
            "transport_connections",
            "Open sessions on this node, by transport (websocket, socketio…)",
            transport_connections.clone(),
        );
        let commands = Family::<CommandLabels, Counter>::default();
        registry.register("commands", "Commands handled, by type and result (ok or error code)", commands.clone());
        let events = Family::<EventLabels, Counter>::default();
        registry.register("events", "Events fanned out on this node, by type (once per event)", events.clone());
        let deliveries = Counter::default();
        registry.register("deliveries", "Events queued to sessions (once per recipient)", deliveries.clone());
        let fanout_seconds = latency_histogram();
        registry.register("fanout_seconds", "Time to queue one event to every local recipient", fanout_seconds.clone());
        let fanout_recipients = size_histogram();
        registry.register("fanout_recipients", "Local recipients of one event", fanout_recipients.clone());
        let ack_seconds = latency_histogram();
        registry.register(
            "message_ack_seconds",
            "Time from accepting a message:send to its answer (durable commit included)",
            ack_seconds.clone(),
        );
        let commit_seconds = latency_histogram();
        registry.register(
            "store_commit_seconds",
            "Time of one store commit of a batch of sends",
            commit_seconds.clone(),
        );
        let commit_batch = size_histogram();
        registry.register(
            "store_commit_batch_size",
            "Sends committed together in one store commit",
            commit_batch.clone(),
        );
        let commit_failures = Counter::default();
        registry.register(
            "store_commit_failures",
            "Store commits that failed (their sends answered with an error)",
            commit_failures.clone(),
        );
        let slow_consumers = Counter::default();
        registry.register(
            "slow_consumer_closes",
            "Sessions closed because their outbound queue was full (close code 4429)",
            slow_consumers.clone(),
        );
        let gap_filled = Counter::default();
        registry.register(
            "cluster_gap_filled_messages",
            "Messages of other processes read from the store because they did not arrive through the broker in time",
            gap_filled.clone(),
        );
        let published = Counter::default();
        registry.register(
            "cluster_publications_sent",
            "Publications this process handed to the broker (events, control messages, presence)",
            published.clone(),
        );
        let received = Counter::default();
        registry.register(
            "cluster_publications_received",
            "Publications of other processes this process received from the broker",
            received.clone(),
        );
        let dropped = Counter::default();
        registry.register(
            "cluster_publications_dropped",
            "Publications dropped because the broker did not keep up or was unreachable",
            dropped.clone(),
        );
        Metrics {
            published,
            received,
            dropped,
            gap_filled,
            registry,
            connections,
            transport_connections,
            commands,
            events,
            deliveries,
            fanout_seconds,
            fanout_recipients,
            ack_seconds,
            commit_seconds,
            commit_batch,
            commit_failures,
            slow_consumers,
        }
    }

    pub(crate) fn command(&self, kind: &'static str, outcome: &'static str) {
        self.commands.get_or_create(&[("type", kind), ("result", outcome)]).inc();
    }

    pub(crate) fn fanout(&self, event: &'static str, recipients: u64, took: Duration) {
        self.events.get_or_create(&[("type", event)]).inc();
        self.deliveries.inc_by(recipients);
        self.fanout_recipients.observe(recipients as f64);
        self.fanout_seconds.observe(took.as_secs_f64());
    }

    pub(crate) fn ack(&self, took: Duration) {
        self.ack_seconds.observe(took.as_secs_f64());
    }

    pub(crate) fn commit(&self, batch: usize, took: Duration, ok: bool) {
        self.commit_batch.observe(batch as f64);
        self.commit_seconds.observe(took.as_secs_f64());
        if !ok {
            self.commit_failures.inc();
        }
    }

    pub(crate) fn slow_consumer(&self) {
        self.slow_consumers.inc();
    }

    pub(crate) fn cluster_sent(&self, publications: u64) {
        self.published.inc_by(publications);
    }

    pub(crate) fn cluster_received(&self) {
        self.received.inc();
    }

    pub(crate) fn cluster_dropped(&self, publications: u64) {
        self.dropped.inc_by(publications);
    }

    pub(crate) fn gap_filled(&self, messages: u64) {
        self.gap_filled.inc_by(messages);
    }

    /// The text exposition, with the connection gauges set to `connections`
    /// and, per transport, `transports`.
    pub(crate) fn encode(&self, connections: usize, transports: &BTreeMap<&'static str, usize>) -> String {
        self.connections.set(i64::try_from(connections).unwrap_or(i64::MAX));
        for (name, count) in transports {
            self.transport_connections
                .get_or_create(&[("transport", name)])
                .set(i64::try_from(*count).unwrap_or(i64::MAX));
        }
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_exposition_names_every_metric_with_its_labels() {
        let metrics = Metrics::new();
        metrics.command("message:send", "ok");
        metrics.command("message:send", "ok");
        metrics.command("room:join", "not_found");
        metrics.fanout("message:new", 3, Duration::from_micros(250));
        metrics.ack(Duration::from_millis(12));
        metrics.commit(5, Duration::from_millis(2), true);
        metrics.commit(1, Duration::from_millis(2), false);
        metrics.slow_consumer();
        let text = metrics.encode(7, &BTreeMap::from([("websocket", 5), ("socketio", 2)]));
        for line in [
            "chat_connections 7",
            r#"chat_transport_connections{transport="websocket"} 5"#,
            r#"chat_transport_connections{transport="socketio"} 2"#,
            r#"chat_commands_total{type="message:send",result="ok"} 2"#,
            r#"chat_commands_total{type="room:join",result="not_found"} 1"#,
            r#"chat_events_total{type="message:new"} 1"#,
            "chat_deliveries_total 3",
            "chat_fanout_seconds_count 1",
            "chat_message_ack_seconds_count 1",
            "chat_store_commit_batch_size_sum 6.0",
            "chat_store_commit_failures_total 1",
            "chat_slow_consumer_closes_total 1",
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line:?} in:\n{text}");
        }
        assert!(text.contains(r#"chat_message_ack_seconds_bucket{le="0.0256"} 1"#), "{text}");
        assert!(text.ends_with("# EOF\n"));
    }
}
