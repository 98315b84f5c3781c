//! Presence: what status a user shows, aggregated over all their sessions.

use serde::{Deserialize, Serialize};

use crate::user::User;

/// A user's status.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum PresenceStatus {
    /// Connected and available.
    Online,
    /// Connected, away from the keyboard.
    Away,
    /// Connected, do not disturb.
    Busy,
    /// Connected, but shown to others as offline.
    Invisible,
    /// No session open.
    #[default]
    Offline,
}

impl PresenceStatus {
    /// The status other users see: `invisible` shows as `offline`.
    pub fn visible(self) -> Self {
        match self {
            PresenceStatus::Invisible => PresenceStatus::Offline,
            other => other,
        }
    }

    /// Whether others see the user as connected.
    pub fn is_visible_online(self) -> bool {
        !matches!(self.visible(), PresenceStatus::Offline)
    }

    /// The name used on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            PresenceStatus::Online => "online",
            PresenceStatus::Away => "away",
            PresenceStatus::Busy => "busy",
            PresenceStatus::Invisible => "invisible",
            PresenceStatus::Offline => "offline",
        }
    }
}

/// A connected user and their visible status, as `users:online` lists them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct OnlineUser {
    /// The user.
    pub user: User,
    /// Their visible status (never `invisible` or `offline`).
    pub status: PresenceStatus,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invisible_shows_as_offline() {
        assert_eq!(PresenceStatus::Invisible.visible(), PresenceStatus::Offline);
        assert_eq!(PresenceStatus::Busy.visible(), PresenceStatus::Busy);
        assert!(!PresenceStatus::Invisible.is_visible_online());
        assert!(PresenceStatus::Away.is_visible_online());
    }
}
