//! Settings of the transport.

use std::time::Duration;

/// Which browser origins may open WebSockets and call the HTTP API.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum OriginPolicy {
    /// The server's own origin plus the listed ones (`https://example.com`).
    List(Vec<String>),
    /// Every origin. Only for development or fully public APIs.
    Any,
}

impl OriginPolicy {
    /// Parses the `CHAT_ALLOWED_ORIGINS` form: `*`, or a comma-separated list.
    pub fn parse(text: &str) -> Self {
        if text.trim() == "*" {
            return OriginPolicy::Any;
        }
        OriginPolicy::List(
            text.split(',')
                .map(|o| o.trim().trim_end_matches('/').to_ascii_lowercase())
                .filter(|o| !o.is_empty())
                .collect(),
        )
    }

    /// Whether a request with this `Origin` (and `Host`) is allowed. A
    /// same-origin request (the origin's authority is the `Host`) always is.
    pub fn allows(&self, origin: &str, host: Option<&str>) -> bool {
        let origin = origin.trim_end_matches('/').to_ascii_lowercase();
        match self {
            OriginPolicy::Any => true,
            OriginPolicy::List(list) => {
                let authority = origin.split_once("://").map(|(_, a)| a);
                let same = matches!((authority, host), (Some(a), Some(h)) if a == h.to_ascii_lowercase());
                same || list.contains(&origin)
            }
        }
    }
}

/// Transport settings; every field has a default suited to production.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct WsConfig {
    /// Largest WebSocket message accepted; a larger one closes the connection with 1009.
    pub max_frame_bytes: usize,
    /// How long a connection may take to authenticate before it is closed with 4408.
    pub auth_timeout: Duration,
    /// Allowed browser origins.
    pub origins: OriginPolicy,
    /// The key for `/v1/admin/*` (`x-api-key`); admin routes answer 401 while unset.
    pub api_key: Option<String>,
    /// Visitor sessions one IP address may create per [`WsConfig::visitor_window`].
    pub visitor_sessions_per_ip: u32,
    /// The window of [`WsConfig::visitor_sessions_per_ip`].
    pub visitor_window: Duration,
    /// Lifetime of visitor tokens.
    pub visitor_token_ttl: Duration,
    /// Default lifetime of tokens made by the admin API.
    pub user_token_ttl: Duration,
    /// Take the client address from `X-Forwarded-For` (behind a trusted proxy only).
    /// Per-request limits (visitor sessions) then count the forwarded address;
    /// the connection caps below never do, see [`WsConfig::max_connections_per_ip`].
    pub trust_forwarded_for: bool,
    /// A connection that sends nothing (not even a pong) for this long is
    /// closed. Checked, and the client pinged, at each keepalive beat of the
    /// engine (`EngineConfig::keepalive_interval`), so it should be a few of
    /// those.
    pub idle_timeout: Duration,
    /// A write that cannot complete for this long (the client stopped reading) ends the connection.
    pub write_timeout: Duration,
    /// Largest HTTP request body.
    pub max_http_body_bytes: usize,
    /// How long a client has to send a request's headers, from the moment the
    /// connection is accepted or the first byte of a later request arrives.
    /// Slower connections are closed; the timer is the connection's, so a
    /// header trickled a line at a time does not restart it.
    pub header_timeout: Duration,
    /// How long a keep-alive connection may wait between requests (and a
    /// request in progress may go without reading or writing a byte) before it
    /// is closed. Not applied after an upgrade: a WebSocket has
    /// [`WsConfig::idle_timeout`].
    pub http_idle_timeout: Duration,
    /// How long a request body may take to arrive in full, from the end of
    /// its headers; a slower one is answered 408 and its connection closed.
    pub body_timeout: Duration,
    /// [`WsConfig::body_timeout`] for an upload (`POST /v1/attachments`),
    /// whose body is as large as the attachment limit: long enough for a
    /// slow phone, bounded so that a trickle cannot hold a connection for
    /// ever. Its size is bounded by the engine's attachment limit, not by
    /// [`WsConfig::max_http_body_bytes`].
    pub upload_timeout: Duration,
    /// Most connections open at once from one client address (HTTP and
    /// WebSocket together; IPv6 addresses are counted per /64). Counted when
    /// a connection is accepted, by its TCP peer address: a forwarded header
    /// cannot be trusted before the request is read, so behind a proxy this
    /// caps the proxy's connections. Past it, new connections are answered
    /// 429 (a WebSocket before its upgrade) and closed.
    pub max_connections_per_ip: usize,
    /// Most connections open at once in all; past it, new ones are answered
    /// 503 and closed. Keep it below the process's open-file limit (the
    /// server lowers it to fit at start), or connections past that limit
    /// fail at accept instead.
    pub max_connections: usize,
    /// The version shown by `/health`.
    pub version: String,
    /// Serve `/v1/dev-login`, which gives anyone a token for any name they
    /// type. For trying the chat page on a development machine only; while
    /// off (the default) the route answers 404 like any unknown one.
    pub dev_login: bool,
}

impl Default for WsConfig {
    fn default() -> Self {
        WsConfig {
            max_frame_bytes: 64 * 1024,
            auth_timeout: Duration::from_secs(10),
            origins: OriginPolicy::List(Vec::new()),
            api_key: None,
            visitor_sessions_per_ip: 10,
            visitor_window: Duration::from_secs(60),
            visitor_token_ttl: Duration::from_secs(30 * 24 * 3600),
            user_token_ttl: Duration::from_secs(24 * 3600),
            trust_forwarded_for: false,
            idle_timeout: Duration::from_secs(75),
            write_timeout: Duration::from_secs(10),
            max_http_body_bytes: 64 * 1024,
            header_timeout: Duration::from_secs(10),
            http_idle_timeout: Duration::from_secs(60),
            body_timeout: Duration::from_secs(30),
            upload_timeout: Duration::from_secs(300),
            max_connections_per_ip: 256,
            max_connections: 100_000,
            version: env!("CARGO_PKG_VERSION").to_owned(),
            dev_login: false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins() {
        let table = [
            ("*", "https://evil.example", None, true),
            ("", "http://localhost:8080", Some("localhost:8080"), true),
            ("", "http://evil.example", Some("localhost:8080"), false),
            ("https://app.example, https://b.example/", "https://B.example", Some("x"), true),
            ("https://app.example", "https://app.example.evil", Some("x"), false),
            ("https://app.example", "null", Some("x"), false),
        ];
        for (policy, origin, host, allowed) in table {
            assert_eq!(OriginPolicy::parse(policy).allows(origin, host), allowed, "{policy} {origin}");
        }
    }
}
