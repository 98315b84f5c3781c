//! The bridge's settings.

use std::time::Duration;

use crate::endpoint::{EventType, validate_secret, validate_url};
use crate::error::{Error, Result};

/// The endpoint a deployment names in its configuration
/// (`CHAT_WEBHOOK_URL`, `CHAT_WEBHOOK_SECRET`, `CHAT_WEBHOOK_EVENTS`), beside
/// those added through the admin API.
#[derive(Clone, PartialEq, Eq)]
pub struct ConfiguredEndpoint {
    /// Where events are POSTed: `http://` or `https://`.
    pub url: String,
    /// The HMAC key of the signatures, 16 to 256 bytes.
    pub secret: String,
    /// The events it receives; empty for all.
    pub events: Vec<EventType>,
}

impl std::fmt::Debug for ConfiguredEndpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConfiguredEndpoint")
            .field("url", &self.url)
            .field("secret", &"***")
            .field("events", &self.events)
            .finish()
    }
}

/// Settings of a [`WebhookBridge`](crate::WebhookBridge).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct WebhookConfig {
    /// The endpoint of the configuration, if one is set.
    pub endpoint: Option<ConfiguredEndpoint>,
    /// How long a receiver has to answer a delivery, connection included;
    /// no 2xx within it is a failed attempt.
    pub timeout: Duration,
    /// The wait after a delivery's first failed attempt; each further
    /// failure doubles it, up to `max_retry_wait`.
    pub first_retry: Duration,
    /// The longest wait between two attempts of one delivery.
    pub max_retry_wait: Duration,
    /// How long after it was enqueued a delivery is retried before it is
    /// given up as failed (24 h; tests shorten it).
    pub give_up_after: Duration,
    /// Deliveries in flight at once, in all.
    pub max_in_flight: usize,
    /// Deliveries in flight at once to one endpoint, so that a slow one
    /// cannot take every slot from the others.
    pub max_in_flight_per_endpoint: usize,
    /// Endpoints the admin API may add (the configured one not counted).
    pub max_endpoints: usize,
    /// How often the worker reads each endpoint's outbox for deliveries it
    /// was not told about: those enqueued by other processes, and retries
    /// coming due. Its own process's enqueues wake it at once.
    pub poll_every: Duration,
    /// How long the lease lasts that lets one process of several deliver:
    /// if its holder stops renewing it, another takes over within this.
    pub lease_ttl: Duration,
    /// How often the lease is renewed, or asked for by a process on standby.
    pub lease_renew: Duration,
    /// How often the process holding the lease looks in the store for
    /// changes whose events never became deliveries (a process that
    /// crashed between a commit and its enqueue). It also looks when it
    /// takes the lease, every process looks when it starts, and any
    /// process looks at once after it dropped an event.
    pub catch_up_every: Duration,
    /// Engine events waiting to become deliveries. A burst beyond this is
    /// dropped from memory and found again in the store by a catch-up.
    pub event_queue: usize,
    /// The `user-agent` of deliveries.
    pub user_agent: String,
}

impl Default for WebhookConfig {
    fn default() -> Self {
        WebhookConfig {
            endpoint: None,
            timeout: Duration::from_secs(5),
            first_retry: Duration::from_secs(1),
            max_retry_wait: Duration::from_secs(300),
            give_up_after: Duration::from_secs(24 * 3600),
            max_in_flight: 16,
            max_in_flight_per_endpoint: 4,
            max_endpoints: 20,
            poll_every: Duration::from_secs(1),
            lease_ttl: Duration::from_secs(15),
            lease_renew: Duration::from_secs(5),
            catch_up_every: Duration::from_secs(60),
            event_queue: 4096,
            user_agent: format!("chat-webhooks/{}", env!("CARGO_PKG_VERSION")),
        }
    }
}

impl WebhookConfig {
    /// Checks the settings, the configured endpoint included.
    pub fn validate(&self) -> Result<()> {
        if let Some(endpoint) = &self.endpoint {
            validate_url(&endpoint.url).map_err(|e| Error::Config(format!("the webhook URL: {e}")))?;
            validate_secret(&endpoint.secret).map_err(|e| Error::Config(format!("the webhook secret: {e}")))?;
        }
        let positive = [
            ("timeout", self.timeout),
            ("first_retry", self.first_retry),
            ("give_up_after", self.give_up_after),
            ("poll_every", self.poll_every),
            ("catch_up_every", self.catch_up_every),
        ];
        if let Some((name, _)) = positive.iter().find(|(_, d)| d.is_zero()) {
            return Err(Error::Config(format!("{name} must be positive")));
        }
        if self.max_retry_wait < self.first_retry {
            return Err(Error::Config("max_retry_wait must be at least first_retry".into()));
        }
        if self.max_in_flight == 0 || self.max_in_flight_per_endpoint == 0 || self.event_queue == 0 {
            return Err(Error::Config(
                "max_in_flight, max_in_flight_per_endpoint and event_queue must be positive".into(),
            ));
        }
        if self.lease_renew.is_zero() || self.lease_renew.saturating_mul(2) > self.lease_ttl {
            return Err(Error::Config("the lease must be renewed at most every half of its time".into()));
        }
        Ok(())
    }

    /// How long to wait before attempt `attempts + 1` of a delivery: the
    /// first retry, doubled for each failure after the first, at most
    /// `max_retry_wait`.
    pub(crate) fn backoff(&self, attempts: u32) -> Duration {
        let factor = 1u32.checked_shl(attempts.min(20)).unwrap_or(u32::MAX);
        self.first_retry.saturating_mul(factor).min(self.max_retry_wait)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_start_at_a_second_and_double_up_to_five_minutes() {
        let config = WebhookConfig::default();
        let waits: Vec<u64> = (0..12).map(|n| config.backoff(n).as_secs()).collect();
        assert_eq!(waits, [1, 2, 4, 8, 16, 32, 64, 128, 256, 300, 300, 300]);
        assert_eq!(config.backoff(u32::MAX), Duration::from_secs(300));
    }

    #[test]
    fn settings_that_cannot_work_are_refused() {
        assert!(WebhookConfig::default().validate().is_ok());
        let endpoint =
            |url: &str, secret: &str| ConfiguredEndpoint { url: url.into(), secret: secret.into(), events: Vec::new() };
        let table = [
            (
                WebhookConfig {
                    endpoint: Some(endpoint("https://example.com/hook", "sixteen bytes ok")),
                    ..Default::default()
                },
                true,
            ),
            (
                WebhookConfig {
                    endpoint: Some(endpoint("ftp://example.com/hook", "sixteen bytes ok")),
                    ..Default::default()
                },
                false,
            ),
            (
                WebhookConfig { endpoint: Some(endpoint("https://example.com/hook", "short")), ..Default::default() },
                false,
            ),
            (WebhookConfig { timeout: Duration::ZERO, ..Default::default() }, false),
            (WebhookConfig { max_retry_wait: Duration::from_millis(10), ..Default::default() }, false),
            (WebhookConfig { lease_renew: Duration::from_secs(10), ..Default::default() }, false),
            (WebhookConfig { max_in_flight_per_endpoint: 0, ..Default::default() }, false),
        ];
        for (config, valid) in table {
            assert_eq!(config.validate().is_ok(), valid, "{config:?}");
        }
        let shown = format!("{:?}", endpoint("https://example.com/hook", "a secret not to show"));
        assert!(!shown.contains("not to show"), "{shown}");
    }
}
