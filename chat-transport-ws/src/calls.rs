//! ICE servers for calls (protocol sections 7 and 12): the RTCIceServer
//! objects of the configuration, with TURN credentials made per user in the
//! TURN REST scheme that coturn checks with `use-auth-secret`:
//! `username` is `"<expiry unix time>:<user id>"` and `credential` is
//! base64(HMAC-SHA1(secret, username)). The TURN server needs only the same
//! secret; nothing is shared with it per user.

use std::time::Duration;

use base64::Engine as _;
use chat_core::{Timestamp, UserId};
use hmac::{Hmac, Mac};
use serde_json::Value;

/// Where calls get their ICE servers; the engine's [`chat_core::IceServers`].
#[derive(Clone, Default)]
pub struct IceConfig {
    servers: Vec<Value>,
    turn_secret: Option<String>,
    ttl: Duration,
}

impl std::fmt::Debug for IceConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IceConfig")
            .field("servers", &self.servers)
            .field("turn_secret", &self.turn_secret.as_ref().map(|_| "***"))
            .field("ttl", &self.ttl)
            .finish()
    }
}

impl IceConfig {
    /// The servers of `json` (a JSON array of RTCIceServer objects, each
    /// with `urls`: a string or an array of strings), with credentials made
    /// from `turn_secret` for TURN entries, valid for `ttl`.
    pub fn new(json: &str, turn_secret: Option<String>, ttl: Duration) -> Result<Self, String> {
        Ok(IceConfig { servers: parse_servers(json)?, turn_secret: turn_secret.filter(|s| !s.is_empty()), ttl })
    }

    /// The servers for `user` at `now`.
    pub fn servers_for(&self, user: &UserId, now: Timestamp) -> Vec<Value> {
        let Some(secret) = &self.turn_secret else { return self.servers.clone() };
        let expiry = now.plus(self.ttl).as_secs();
        let username = format!("{expiry}:{user}");
        let credential = turn_credential(secret, &username);
        self.servers
            .iter()
            .map(|server| {
                let mut server = server.clone();
                if is_turn(&server)
                    && let Some(object) = server.as_object_mut()
                {
                    object.insert("username".into(), Value::String(username.clone()));
                    object.insert("credential".into(), Value::String(credential.clone()));
                }
                server
            })
            .collect()
    }
}

impl chat_core::IceServers for IceConfig {
    fn ice_servers(&self, user: &UserId) -> Vec<Value> {
        self.servers_for(user, Timestamp::now())
    }
}

/// base64(HMAC-SHA1(secret, username)), as coturn computes it.
pub fn turn_credential(secret: &str, username: &str) -> String {
    // HMAC takes a key of any length, so this cannot fail.
    let Ok(mut mac) = Hmac::<sha1::Sha1>::new_from_slice(secret.as_bytes()) else { return String::new() };
    mac.update(username.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
}

fn urls(server: &Value) -> Vec<&str> {
    match server.get("urls") {
        Some(Value::String(url)) => vec![url.as_str()],
        Some(Value::Array(urls)) => urls.iter().filter_map(Value::as_str).collect(),
        _ => Vec::new(),
    }
}

fn is_turn(server: &Value) -> bool {
    urls(server).iter().any(|u| u.starts_with("turn:") || u.starts_with("turns:"))
}

/// Reads `CHAT_ICE_SERVERS`: empty (or blank) is none.
fn parse_servers(json: &str) -> Result<Vec<Value>, String> {
    if json.trim().is_empty() {
        return Ok(Vec::new());
    }
    let servers: Vec<Value> = serde_json::from_str(json)
        .map_err(|e| format!("ice_servers is not a JSON array of RTCIceServer objects: {e}"))?;
    for (i, server) in servers.iter().enumerate() {
        let ok_urls = match server.get("urls") {
            Some(Value::String(u)) => !u.is_empty(),
            Some(Value::Array(list)) => {
                !list.is_empty() && list.iter().all(|u| u.as_str().is_some_and(|u| !u.is_empty()))
            }
            _ => false,
        };
        if !server.is_object() || !ok_urls {
            return Err(format!("ice_servers[{i}] needs \"urls\": a URL or a list of URLs"));
        }
    }
    Ok(servers)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn turn_entries_get_credentials_coturn_accepts() {
        let json =
            r#"[{"urls":"stun:stun.example.org"},{"urls":["turn:t.example.org:3478","turns:t.example.org:5349"]}]"#;
        let config = IceConfig::new(json, Some("s3cret".into()), Duration::from_secs(86_400)).expect("valid");
        let user = UserId::new("ada").expect("valid");
        let servers = config.servers_for(&user, Timestamp::from_secs(1_700_000_000));
        assert_eq!(servers[0], serde_json::json!({"urls": "stun:stun.example.org"}), "STUN gets nothing");
        assert_eq!(servers[1]["username"], "1700086400:ada");
        // `echo -n 1700086400:ada | openssl dgst -sha1 -hmac s3cret -binary | base64`
        assert_eq!(servers[1]["credential"], "pX/NAqXvXpRBSkTFuq5SONASfw4=");
    }

    #[test]
    fn without_a_secret_entries_pass_as_written() {
        let json = r#"[{"urls":"turn:t.example.org","username":"u","credential":"c"}]"#;
        let config = IceConfig::new(json, None, Duration::from_secs(60)).expect("valid");
        let user = UserId::new("ada").expect("valid");
        assert_eq!(config.servers_for(&user, Timestamp::now())[0]["username"], "u");
    }

    #[test]
    fn bad_lists_are_refused_and_empty_is_none() {
        assert!(IceConfig::new("", None, Duration::ZERO).is_ok());
        assert!(IceConfig::new("{\"urls\":\"stun:x\"}", None, Duration::ZERO).is_err());
        assert!(IceConfig::new("[{\"url\":\"stun:x\"}]", None, Duration::ZERO).is_err());
        assert!(IceConfig::new("[{\"urls\":[]}]", None, Duration::ZERO).is_err());
    }
}
