//! The push bridge's settings.

use std::time::Duration;

use crate::vapid::VapidKey;

/// How the push bridge behaves. [`PushConfig::new`] has the defaults of
/// section 8 of the wire contract.
#[derive(Debug, Clone)]
pub struct PushConfig {
    /// The VAPID `sub` claim: a `mailto:` or `https:` URL where the push
    /// services can reach the operator (`CHAT_VAPID_SUBJECT`).
    pub subject: String,
    /// The VAPID key from a file (`CHAT_VAPID_PRIVATE_KEY_FILE`); `None`
    /// keeps one in the store, made on the first start.
    pub key: Option<VapidKey>,
    /// Whether endpoints may be `http` or on addresses that are not public
    /// (`CHAT_PUSH_ALLOW_PRIVATE_ENDPOINTS`; tests, private push services).
    pub allow_private_endpoints: bool,
    /// At most one push per room and user this often; later messages are
    /// folded into the next push, with a count.
    pub fold_window: Duration,
    /// How long a push service keeps a message push for a device that is
    /// offline (the `TTL` header), and how long the outbox retries it.
    pub message_ttl: Duration,
    /// How long a push service's answer may take.
    pub timeout: Duration,
    /// Pushes in flight at once.
    pub max_in_flight: usize,
    /// How often the process sending pushes looks for what other processes
    /// enqueued.
    pub poll_every: Duration,
    /// How long the lease that lets one process of several send lasts.
    pub lease_ttl: Duration,
    /// How often it is renewed.
    pub lease_renew: Duration,
}

impl PushConfig {
    /// The defaults, with the VAPID subject.
    pub fn new(subject: impl Into<String>) -> Self {
        Self {
            subject: subject.into(),
            key: None,
            allow_private_endpoints: false,
            fold_window: Duration::from_secs(10),
            message_ttl: Duration::from_secs(24 * 3600),
            timeout: Duration::from_secs(10),
            max_in_flight: 32,
            poll_every: Duration::from_secs(1),
            lease_ttl: Duration::from_secs(15),
            lease_renew: Duration::from_secs(5),
        }
    }

    /// Checks that the settings can work.
    pub fn validate(&self) -> chat_core::Result<()> {
        if !(self.subject.starts_with("mailto:") || self.subject.starts_with("https://")) {
            return Err(chat_core::Error::invalid("the VAPID subject must be a mailto: or https: URL"));
        }
        if self.timeout.is_zero() || self.max_in_flight == 0 || self.poll_every.is_zero() {
            return Err(chat_core::Error::invalid("push: timeout, max_in_flight and poll_every must not be zero"));
        }
        if self.lease_renew * 2 > self.lease_ttl {
            return Err(chat_core::Error::invalid("push: the lease must be renewed at least twice in its life"));
        }
        Ok(())
    }

    /// The wait before retry `attempts + 1`: 1 s, 2 s, 4 s… at most 5 minutes.
    pub(crate) fn backoff(&self, attempts: u32) -> Duration {
        Duration::from_secs(1u64 << attempts.min(9)).min(Duration::from_secs(300))
    }
}
