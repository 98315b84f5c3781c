//! Endpoints: where events go, which events, and the secret they are signed
//! with; what is accepted of each.

use chat_core::Timestamp;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// The id of the endpoint from the server's configuration. Endpoints added
/// through the admin API get UUIDs, so the two never meet.
pub const CONFIGURED_ID: &str = "config";

/// Longest endpoint URL, in bytes.
pub const MAX_URL_BYTES: usize = 2048;

/// Shortest and longest secret, in bytes.
pub const SECRET_BYTES: std::ops::RangeInclusive<usize> = 16..=256;

/// What happened, as a webhook's `type` says it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, utoipa::ToSchema)]
pub enum EventType {
    /// `message.created`: a message was stored. `{"room_id","message"}`.
    #[serde(rename = "message.created")]
    MessageCreated,
    /// `message.updated`: a message was edited. `{"room_id","message"}`.
    #[serde(rename = "message.updated")]
    MessageUpdated,
    /// `message.deleted`: a message was deleted. `{"room_id","message_id"}`.
    #[serde(rename = "message.deleted")]
    MessageDeleted,
    /// `room.created`: a room was made. `{"room"}`.
    #[serde(rename = "room.created")]
    RoomCreated,
    /// `room.updated` (an extension of the contract): a group room's name or
    /// topic changed. `{"room"}`.
    #[serde(rename = "room.updated")]
    RoomUpdated,
    /// `member.added`: a user became a member, the members named when a
    /// room was made included (not its creator). `{"room_id","user"}`.
    #[serde(rename = "member.added")]
    MemberAdded,
    /// `member.removed`: a member left or was removed. `{"room_id","user_id"}`.
    #[serde(rename = "member.removed")]
    MemberRemoved,
    /// `support.opened`: a support room's first message was stored. `{"room"}`.
    #[serde(rename = "support.opened")]
    SupportOpened,
    /// `support.claimed`: an agent claimed a support room. `{"room"}`.
    #[serde(rename = "support.claimed")]
    SupportClaimed,
    /// `support.closed`: a support room was closed. `{"room"}`.
    #[serde(rename = "support.closed")]
    SupportClosed,
}

impl EventType {
    /// Every event type.
    pub const ALL: [EventType; 10] = [
        EventType::MessageCreated,
        EventType::MessageUpdated,
        EventType::MessageDeleted,
        EventType::RoomCreated,
        EventType::RoomUpdated,
        EventType::MemberAdded,
        EventType::MemberRemoved,
        EventType::SupportOpened,
        EventType::SupportClaimed,
        EventType::SupportClosed,
    ];

    /// The name in a webhook's `type`.
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::MessageCreated => "message.created",
            EventType::MessageUpdated => "message.updated",
            EventType::MessageDeleted => "message.deleted",
            EventType::RoomCreated => "room.created",
            EventType::RoomUpdated => "room.updated",
            EventType::MemberAdded => "member.added",
            EventType::MemberRemoved => "member.removed",
            EventType::SupportOpened => "support.opened",
            EventType::SupportClaimed => "support.claimed",
            EventType::SupportClosed => "support.closed",
        }
    }

    /// Parses [`EventType::as_str`] output.
    pub fn parse(name: &str) -> Option<Self> {
        EventType::ALL.into_iter().find(|t| t.as_str() == name)
    }

    /// Parses a list of names (the admin API's `events`, or
    /// `CHAT_WEBHOOK_EVENTS` split at commas), sorted and without repeats.
    /// An unknown name is an error naming it.
    pub fn parse_list<'a>(names: impl IntoIterator<Item = &'a str>) -> Result<Vec<EventType>> {
        let mut types = Vec::new();
        for name in names {
            let name = name.trim();
            let known = EventType::parse(name).ok_or_else(|| {
                let all: Vec<&str> = EventType::ALL.iter().map(|t| t.as_str()).collect();
                Error::Invalid(format!("unknown event {name:?}; the events are {}", all.join(", ")))
            })?;
            types.push(known);
        }
        types.sort();
        types.dedup();
        Ok(types)
    }
}

impl std::fmt::Display for EventType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Checks an endpoint URL: `http` or `https` with a host, at most
/// [`MAX_URL_BYTES`].
pub(crate) fn validate_url(url: &str) -> Result<()> {
    if url.len() > MAX_URL_BYTES {
        return Err(Error::Invalid(format!("url must be at most {MAX_URL_BYTES} bytes")));
    }
    let parsed = webhook_reqwest::Url::parse(url).map_err(|e| Error::Invalid(format!("url is not a URL: {e}")))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(Error::Invalid("url must start with http:// or https://".into()));
    }
    if parsed.host_str().is_none_or(str::is_empty) {
        return Err(Error::Invalid("url must name a host".into()));
    }
    Ok(())
}

/// Checks a secret: [`SECRET_BYTES`] long.
pub(crate) fn validate_secret(secret: &str) -> Result<()> {
    if !SECRET_BYTES.contains(&secret.len()) {
        return Err(Error::Invalid(format!("secret must be {} to {} bytes", SECRET_BYTES.start(), SECRET_BYTES.end())));
    }
    Ok(())
}

/// Where events go.
#[derive(Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct Endpoint {
    /// [`CONFIGURED_ID`] for the endpoint of the configuration, a UUID for
    /// those of the admin API.
    pub id: String,
    /// Where events are POSTed.
    pub url: String,
    /// The events it receives; empty for all.
    pub events: Vec<EventType>,
    /// When it was added (for the configured one: when this process started).
    pub created_at: Timestamp,
    /// `config` or `api`: where it was set.
    #[schema(value_type = String)]
    pub source: &'static str,
    /// The HMAC key; never shown.
    #[serde(skip)]
    #[schema(ignore)]
    pub(crate) secret: String,
}

impl std::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Endpoint")
            .field("id", &self.id)
            .field("url", &self.url)
            .field("events", &self.events)
            .field("source", &self.source)
            .finish_non_exhaustive()
    }
}

impl Endpoint {
    /// Whether it receives events of this type.
    pub fn wants(&self, kind: EventType) -> bool {
        self.events.is_empty() || self.events.contains(&kind)
    }

    /// The name its deliveries are kept under in the outbox: one per
    /// endpoint, so that each endpoint's deliveries are read, counted,
    /// listed and dropped on their own.
    pub(crate) fn outbox_name(&self) -> String {
        outbox_name(&self.id)
    }

    /// An endpoint as the admin API keeps it (in a link of the store).
    pub(crate) fn from_stored(id: String, text: &str) -> Option<Self> {
        let stored: Stored = serde_json::from_str(text).ok()?;
        Some(Endpoint {
            id,
            url: stored.url,
            events: stored.events,
            created_at: stored.created_at,
            source: "api",
            secret: stored.secret,
        })
    }

    /// What [`Endpoint::from_stored`] reads.
    pub(crate) fn to_stored(&self) -> String {
        let stored = Stored {
            url: self.url.clone(),
            secret: self.secret.clone(),
            events: self.events.clone(),
            created_at: self.created_at,
        };
        serde_json::to_string(&stored).unwrap_or_default()
    }
}

/// The outbox name of an endpoint's deliveries.
pub(crate) fn outbox_name(endpoint_id: &str) -> String {
    format!("webhook:{endpoint_id}")
}

#[derive(Serialize, Deserialize)]
struct Stored {
    url: String,
    secret: String,
    #[serde(default)]
    events: Vec<EventType>,
    created_at: Timestamp,
}

/// An endpoint to add through the admin API.
#[derive(Clone, Deserialize, utoipa::ToSchema)]
pub struct NewEndpoint {
    /// Where events are POSTed.
    pub url: String,
    /// The HMAC key of the signatures.
    pub secret: String,
    /// The events it receives; empty or absent for all.
    #[serde(default)]
    pub events: Vec<String>,
}

impl std::fmt::Debug for NewEndpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NewEndpoint").field("url", &self.url).field("events", &self.events).finish_non_exhaustive()
    }
}

impl NewEndpoint {
    /// The endpoint it makes, with a fresh id, once its URL, secret and
    /// events pass.
    pub(crate) fn validate(self, now: Timestamp) -> Result<Endpoint> {
        validate_url(&self.url)?;
        validate_secret(&self.secret)?;
        let events = EventType::parse_list(self.events.iter().map(String::as_str))?;
        Ok(Endpoint {
            id: uuid::Uuid::now_v7().to_string(),
            url: self.url,
            events,
            created_at: now,
            source: "api",
            secret: self.secret,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        let long = format!("https://example.com/{}", "a".repeat(MAX_URL_BYTES));
        let table = [
            ("https://example.com/hooks/chat", true),
            ("http://127.0.0.1:9000/hook?x=1", true),
            ("HTTPS://EXAMPLE.COM", true),
            ("ftp://example.com/hook", false),
            ("https://", false),
            ("example.com/hook", false),
            ("", false),
            (long.as_str(), false),
        ];
        for (url, ok) in table {
            assert_eq!(validate_url(url).is_ok(), ok, "{url}");
        }
    }

    #[test]
    fn secrets_are_16_to_256_bytes() {
        for (len, ok) in [(0, false), (15, false), (16, true), (256, true), (257, false)] {
            assert_eq!(validate_secret(&"s".repeat(len)).is_ok(), ok, "{len} bytes");
        }
    }

    #[test]
    fn event_lists_are_known_names_sorted_without_repeats() {
        let parsed = EventType::parse_list(["support.closed", " message.created", "support.closed"]).expect("valid");
        assert_eq!(parsed, [EventType::MessageCreated, EventType::SupportClosed]);
        let err = EventType::parse_list(["message.created", "message.sent"]).expect_err("unknown").to_string();
        assert!(err.contains("message.sent") && err.contains("member.added"), "{err}");
        for t in EventType::ALL {
            assert_eq!(EventType::parse(t.as_str()), Some(t));
            assert_eq!(serde_json::to_value(t).expect("serializes"), t.as_str());
        }
    }

    #[test]
    fn stored_endpoints_keep_their_secret_and_show_none() {
        let new = NewEndpoint {
            url: "https://example.com/hook".into(),
            secret: "a secret of some length".into(),
            events: vec!["member.added".into()],
        };
        let endpoint = new.validate(Timestamp::from_millis(1_000)).expect("valid");
        let back = Endpoint::from_stored(endpoint.id.clone(), &endpoint.to_stored()).expect("reads back");
        assert_eq!(back, endpoint);
        assert!(back.wants(EventType::MemberAdded) && !back.wants(EventType::MessageCreated));
        let shown = serde_json::to_string(&back).expect("serializes");
        assert!(!shown.contains("a secret") && !format!("{back:?}").contains("a secret"), "{shown}");
    }
}
