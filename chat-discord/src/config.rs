//! The bridge's settings.

use std::time::Duration;

use crate::error::{Error, Result};

/// Settings of a [`DiscordBridge`](crate::DiscordBridge). The ids are
/// Discord snowflakes; the README says where to find each.
#[derive(Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct DiscordConfig {
    /// The bot token (`DISCORD_TOKEN`).
    pub token: String,
    /// The server the bridge works in (`DISCORD_GUILD_ID`).
    pub guild_id: u64,
    /// The forum channel that gets one post per support room (`DISCORD_FORUM_CHANNEL_ID`).
    pub forum_channel_id: u64,
    /// Members holding this role count as support agents (`DISCORD_SUPPORT_ROLE_ID`).
    pub support_role_id: u64,
    /// Where to send REST calls instead of `https://discord.com`
    /// (`DISCORD_PROXY_URL`), such as a shared rate-limit proxy. With a proxy,
    /// serenity's own rate limiter is off (it would bypass the proxy) and the
    /// outbox alone honours 429s.
    pub proxy_url: Option<String>,
    /// Messages in a thread starting with this stay in Discord.
    pub note_prefix: String,
    /// Chat roles for Discord roles: a member holding the Discord role (the
    /// id) gets the chat role (the name) as the user `discord:<id>`, besides
    /// `support`. Applied whenever the bridge acts for them with their roles
    /// at hand (a message seen live, a button press).
    pub role_map: Vec<(u64, String)>,
    /// Group rooms mirrored to Discord text channels, both ways, with the
    /// rules of support threads: (room, channel). A room or a channel appears
    /// once. People writing in a mapped channel join the room as
    /// `discord:<id>` users, so the room must be public.
    pub channels: Vec<(chat_core::RoomId, u64)>,
    /// The longest any REST call may take, connection included. Serenity sets none.
    pub http_timeout: Duration,
    /// The first wait after a failed call; each further failure doubles it, up to `max_backoff`.
    pub min_backoff: Duration,
    /// The longest wait between two attempts of one job.
    pub max_backoff: Duration,
    /// Attempts after which a job that keeps failing (not for a 429) is given up.
    pub max_attempts: u32,
    /// How long the lease lasts that lets one process of several run the
    /// outbox worker and the gateway: if its holder stops renewing it (it
    /// died, or lost the database), another process takes over within this.
    pub lease_ttl: Duration,
    /// How often the lease is renewed, or asked for by a process on standby.
    /// Well below `lease_ttl`: a holder that cannot renew for
    /// `lease_ttl - lease_renew` stops, before another may take over.
    pub lease_renew: Duration,
    /// How often the process holding the lease looks in the store for
    /// messages, edits and deletes whose events did not become jobs (a crash
    /// between commit and enqueue, a full event queue). It also looks when
    /// it takes the lease, and at once after an event was dropped.
    pub catch_up_every: Duration,
    /// Engine events waiting to become outbox jobs. A burst beyond this is
    /// dropped from memory and found again in the store by a catch-up.
    pub event_queue: usize,
    /// The largest file (and files of one message together) uploaded to
    /// Discord (`DISCORD_MAX_UPLOAD_BYTES`). Unset, it is the guild's limit
    /// as Discord tells it (a button press carries it; the guild's boost
    /// tier gives it at each GUILD_CREATE), else 8 MiB. A larger file
    /// reaches Discord as a line with its name and size, and a link to it
    /// when the chat server knows its public URL.
    pub max_upload_bytes: Option<u64>,
    /// Where agents' files may be downloaded from: the origins
    /// (`scheme://host[:port]`) of Discord's CDN. A file's URL comes from the
    /// gateway's message, never from what someone wrote; anything elsewhere
    /// is not fetched.
    pub cdn_origins: Vec<String>,
    /// The longest the download of one agent's file may take.
    pub download_timeout: Duration,
}

impl std::fmt::Debug for DiscordConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DiscordConfig")
            .field("token", &"***")
            .field("guild_id", &self.guild_id)
            .field("forum_channel_id", &self.forum_channel_id)
            .field("support_role_id", &self.support_role_id)
            .field("proxy_url", &self.proxy_url)
            .field("note_prefix", &self.note_prefix)
            .field("role_map", &self.role_map)
            .field("channels", &self.channels)
            .field("http_timeout", &self.http_timeout)
            .field("lease_ttl", &self.lease_ttl)
            .field("lease_renew", &self.lease_renew)
            .field("max_upload_bytes", &self.max_upload_bytes)
            .field("cdn_origins", &self.cdn_origins)
            .finish_non_exhaustive()
    }
}

impl DiscordConfig {
    /// The default settings for a bot token and the three ids.
    pub fn new(token: impl Into<String>, guild_id: u64, forum_channel_id: u64, support_role_id: u64) -> Self {
        DiscordConfig {
            token: token.into(),
            guild_id,
            forum_channel_id,
            support_role_id,
            proxy_url: None,
            note_prefix: "!note".into(),
            role_map: Vec::new(),
            channels: Vec::new(),
            http_timeout: Duration::from_secs(15),
            min_backoff: Duration::from_millis(500),
            max_backoff: Duration::from_secs(300),
            max_attempts: 20,
            lease_ttl: Duration::from_secs(15),
            lease_renew: Duration::from_secs(5),
            catch_up_every: Duration::from_secs(60),
            event_queue: 4096,
            max_upload_bytes: None,
            cdn_origins: vec!["https://cdn.discordapp.com".into(), "https://media.discordapp.net".into()],
            download_timeout: Duration::from_secs(60),
        }
    }

    /// Checks what can be checked without asking Discord.
    pub fn validate(&self) -> Result<()> {
        if self.token.trim().is_empty() {
            return Err(Error::Config("the bot token is empty".into()));
        }
        if self.guild_id == 0 || self.forum_channel_id == 0 || self.support_role_id == 0 {
            return Err(Error::Config("the guild, forum channel and support role ids must be set".into()));
        }
        if let Some(proxy) = &self.proxy_url
            && !(proxy.starts_with("http://") || proxy.starts_with("https://"))
        {
            return Err(Error::Config("the proxy URL must start with http:// or https://".into()));
        }
        for (role, name) in &self.role_map {
            if *role == 0 {
                return Err(Error::Config("a mapped Discord role id must be set".into()));
            }
            chat_core::user::validate_roles(std::slice::from_ref(name))
                .map_err(|e| Error::Config(format!("the chat role mapped from {role}: {e}")))?;
        }
        for (i, (room, channel)) in self.channels.iter().enumerate() {
            if *channel == 0 || *channel == self.forum_channel_id {
                return Err(Error::Config(format!("room {room} needs a text channel id other than the forum's")));
            }
            if self.channels[..i].iter().any(|(r, c)| r == room || c == channel) {
                return Err(Error::Config(format!("room {room} or channel {channel} is mapped twice")));
            }
        }
        if self.http_timeout.is_zero() {
            return Err(Error::Config("the HTTP timeout must be positive".into()));
        }
        if self.lease_renew.is_zero() || self.lease_renew.saturating_mul(2) > self.lease_ttl {
            return Err(Error::Config("the lease must be renewed at most every half of its time".into()));
        }
        if self.catch_up_every.is_zero() || self.event_queue == 0 {
            return Err(Error::Config("the catch-up interval and the event queue must be positive".into()));
        }
        if self.max_upload_bytes == Some(0) || self.download_timeout.is_zero() {
            return Err(Error::Config("the upload limit and the download timeout must be positive".into()));
        }
        for origin in &self.cdn_origins {
            let rest = origin.strip_prefix("https://").or_else(|| origin.strip_prefix("http://"));
            if rest.is_none_or(|host| host.is_empty() || host.contains('/')) {
                return Err(Error::Config(format!("a CDN origin is scheme://host[:port], not {origin:?}")));
            }
        }
        Ok(())
    }

    /// Whether a file URL the gateway gave is on one of [`cdn_origins`](Self::cdn_origins).
    pub(crate) fn on_cdn(&self, url: &str) -> bool {
        self.cdn_origins
            .iter()
            .any(|origin| url.strip_prefix(origin.as_str()).is_some_and(|rest| rest.starts_with('/')))
    }

    /// The text channel a group room is mirrored to, if it is.
    pub(crate) fn channel_of(&self, room: chat_core::RoomId) -> Option<u64> {
        self.channels.iter().find(|(r, _)| *r == room).map(|(_, c)| *c)
    }

    /// How long to wait before attempt `attempts + 1` of a job.
    pub(crate) fn backoff(&self, attempts: u32) -> Duration {
        let factor = 1u32.checked_shl(attempts.min(20)).unwrap_or(u32::MAX);
        self.min_backoff.saturating_mul(factor).min(self.max_backoff)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let c = DiscordConfig::new("t", 1, 2, 3);
        let table = [(0, 500), (1, 1_000), (2, 2_000), (9, 256_000), (10, 300_000), (1_000, 300_000)];
        for (attempts, ms) in table {
            assert_eq!(c.backoff(attempts), Duration::from_millis(ms), "after {attempts} attempts");
        }
    }

    #[test]
    fn settings_are_checked() {
        assert!(DiscordConfig::new("t", 1, 2, 3).validate().is_ok());
        assert!(DiscordConfig::new(" ", 1, 2, 3).validate().is_err());
        assert!(DiscordConfig::new("t", 0, 2, 3).validate().is_err());
        let mut c = DiscordConfig::new("t", 1, 2, 3);
        c.proxy_url = Some("127.0.0.1:9".into());
        assert!(c.validate().is_err());
        let mut c = DiscordConfig::new("t", 1, 2, 3);
        c.role_map = vec![(4, "admin".into())];
        assert!(c.validate().is_ok());
        for bad in [(0, "admin"), (4, ""), (4, "has space")] {
            c.role_map = vec![(bad.0, bad.1.into())];
            assert!(c.validate().is_err(), "{bad:?} is refused");
        }
        let (a, b) = (chat_core::RoomId::generate(), chat_core::RoomId::generate());
        let table = [
            (vec![(a, 10), (b, 11)], true),
            (vec![(a, 0)], false),
            (vec![(a, 2)], false),
            (vec![(a, 10), (a, 11)], false),
            (vec![(a, 10), (b, 10)], false),
        ];
        for (channels, ok) in table {
            let mut c = DiscordConfig::new("t", 1, 2, 3);
            c.channels = channels.clone();
            assert_eq!(c.validate().is_ok(), ok, "{channels:?}");
        }
        assert!(!format!("{c:?}").contains("\"t\""), "the token is not shown");
        let mut c = DiscordConfig::new("t", 1, 2, 3);
        c.lease_renew = Duration::from_secs(8);
        assert!(c.validate().is_err(), "a renewal that may come too late is refused");
        c.lease_renew = Duration::ZERO;
        assert!(c.validate().is_err());
        let mut c = DiscordConfig::new("t", 1, 2, 3);
        c.max_upload_bytes = Some(0);
        assert!(c.validate().is_err(), "no upload limit of zero");
        for (origin, ok) in [
            ("http://127.0.0.1:9", true),
            ("https://cdn.example", true),
            ("cdn.example", false),
            ("https://cdn.example/x", false),
            ("https://", false),
        ] {
            let mut c = DiscordConfig::new("t", 1, 2, 3);
            c.cdn_origins = vec![origin.into()];
            assert_eq!(c.validate().is_ok(), ok, "{origin}");
        }
    }

    #[test]
    fn files_are_fetched_from_the_cdn_only() {
        let c = DiscordConfig::new("t", 1, 2, 3);
        let table = [
            ("https://cdn.discordapp.com/attachments/1/2/a.png?ex=1", true),
            ("https://media.discordapp.net/attachments/1/2/a.png", true),
            ("https://cdn.discordapp.com.evil.example/a.png", false),
            ("https://cdn.discordapp.com@evil.example/a.png", false),
            ("http://cdn.discordapp.com/a.png", false),
            ("https://evil.example/https://cdn.discordapp.com/a.png", false),
            ("https://cdn.discordapp.com", false),
        ];
        for (url, ok) in table {
            assert_eq!(c.on_cdn(url), ok, "{url}");
        }
    }
}
