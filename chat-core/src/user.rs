//! Users and the identity an authenticator vouches for.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::id::UserId;
use crate::time::Timestamp;

/// The role that lets a user see and answer `support` rooms.
pub const SUPPORT_ROLE: &str = "support";

/// The role of anonymous website visitors (`POST /v1/visitor-sessions`), whom
/// the engine keeps to their own support rooms.
pub const VISITOR_ROLE: &str = "visitor";

/// The prefix of the ids of anonymous website visitors.
pub const VISITOR_ID_PREFIX: &str = "visitor:";

/// The longest display name accepted, in characters.
pub const MAX_NAME_CHARS: usize = 100;
/// The most roles one user may hold.
pub const MAX_ROLES: usize = 16;
/// The longest role name, in characters.
pub const MAX_ROLE_CHARS: usize = 32;
/// The longest avatar URL, in bytes.
pub const MAX_AVATAR_URL_BYTES: usize = 2048;

/// A user as other users see them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct User {
    /// The stable id (a token's `sub`).
    pub id: UserId,
    /// Display name.
    pub name: String,
    /// Picture URL, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub avatar_url: Option<String>,
    /// Global roles, such as [`SUPPORT_ROLE`].
    #[serde(default)]
    pub roles: Vec<String>,
}

impl User {
    /// A user with a name and no roles.
    pub fn new(id: UserId, name: impl Into<String>) -> Self {
        User { id, name: name.into(), avatar_url: None, roles: Vec::new() }
    }

    /// Whether the user holds a role.
    pub fn has_role(&self, role: &str) -> bool {
        self.roles.iter().any(|r| r == role)
    }

    /// Whether the user may answer support rooms.
    pub fn is_support(&self) -> bool {
        self.has_role(SUPPORT_ROLE)
    }

    /// Whether the user is an anonymous visitor: the `visitor` role or a
    /// `visitor:` id, either of which is enough, so that a token minted
    /// elsewhere cannot give a visitor's id more than a visitor's rights.
    pub fn is_visitor(&self) -> bool {
        self.has_role(VISITOR_ROLE) || self.id.as_str().starts_with(VISITOR_ID_PREFIX)
    }

    /// Checks the sizes of every field.
    pub fn validate(&self) -> Result<()> {
        validate_name(&self.name)?;
        if let Some(url) = &self.avatar_url {
            if url.len() > MAX_AVATAR_URL_BYTES {
                return Err(Error::too_large("avatar_url is longer than 2048 bytes"));
            }
            if !(url.starts_with("https://") || url.starts_with("http://")) {
                return Err(Error::invalid("avatar_url must be an http(s) URL"));
            }
        }
        validate_roles(&self.roles)
    }
}

/// Checks a display name: 1..=100 characters, none of them a control
/// character or an invisible formatting one (see [`is_hidden_char`]).
pub fn validate_name(name: &str) -> Result<()> {
    let chars = name.chars().count();
    if name.trim().is_empty() {
        return Err(Error::invalid("name must not be empty"));
    }
    if chars > MAX_NAME_CHARS {
        return Err(Error::too_large("name is longer than 100 characters"));
    }
    check_visible("name", name)
}

/// Refuses text with a character that [`is_hidden_char`] names: a name that
/// reverses or hides part of itself can pass for another user's or room's.
pub fn check_visible(field: &str, text: &str) -> Result<()> {
    match text.chars().find(|&c| is_hidden_char(c)) {
        Some(c) => Err(Error::invalid(format!(
            "{field} must not contain control, direction-changing or invisible characters (found U+{:04X})",
            u32::from(c)
        ))),
        None => Ok(()),
    }
}

/// Whether a character is refused in names: control characters, the
/// bidirectional controls (embeddings, overrides, isolates and marks, which
/// reorder the text around them), line and paragraph separators, and the
/// invisible formatting characters (zero-width space, word joiner, invisible
/// operators, the byte-order mark, interlinear annotations, tags). Zero-width
/// joiner and non-joiner stay allowed: emoji sequences and several scripts
/// need them.
pub fn is_hidden_char(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{00AD}'
                | '\u{061C}'
                | '\u{115F}'
                | '\u{1160}'
                | '\u{180E}'
                | '\u{200B}'
                | '\u{200E}'
                | '\u{200F}'
                | '\u{2028}'..='\u{202E}'
                | '\u{2060}'..='\u{206F}'
                | '\u{3164}'
                | '\u{FEFF}'
                | '\u{FFA0}'
                | '\u{FFF9}'..='\u{FFFB}'
                | '\u{1D173}'..='\u{1D17A}'
                | '\u{E0000}'..='\u{E007F}'
        )
}

/// Checks a list of roles.
pub fn validate_roles(roles: &[String]) -> Result<()> {
    if roles.len() > MAX_ROLES {
        return Err(Error::too_large("a user holds at most 16 roles"));
    }
    for role in roles {
        let ok = !role.is_empty()
            && role.len() <= MAX_ROLE_CHARS
            && role.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == ':');
        if !ok {
            return Err(Error::invalid(format!(
                "role {role:?} must be 1 to 32 characters of letters, digits, '-', '_' or ':'"
            )));
        }
    }
    Ok(())
}

/// Who a session belongs to, as established by an [`Authenticator`](crate::Authenticator).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// The user id (`sub`).
    pub user_id: UserId,
    /// Display name from the credentials; when absent the stored name is kept.
    pub name: Option<String>,
    /// Roles from the credentials; when absent the stored roles are kept.
    pub roles: Option<Vec<String>>,
    /// When the credentials stop being valid. The engine closes the session then.
    pub expires_at: Option<Timestamp>,
}

impl Identity {
    /// An identity with only a user id, which never expires.
    pub fn new(user_id: UserId) -> Self {
        Identity { user_id, name: None, roles: None, expires_at: None }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_fields_are_checked() {
        let id = UserId::new("u1").expect("valid");
        let mut u = User::new(id, "Ada");
        assert!(u.validate().is_ok());
        u.name = " ".into();
        assert!(u.validate().is_err());
        u.name = "x".repeat(101);
        assert!(u.validate().is_err());
        u.name = "Ada".into();
        u.roles = vec!["support".into(), "bad role".into()];
        assert!(u.validate().is_err());
        u.roles = vec!["support".into()];
        assert!(u.is_support());
        u.avatar_url = Some("javascript:alert(1)".into());
        assert!(u.validate().is_err());
    }

    /// Names that reorder or hide part of themselves are refused with
    /// `invalid`; the scripts and emoji that need joiners are not.
    #[test]
    fn names_with_direction_changing_or_invisible_characters_are_refused() {
        let refused = [
            "admin\u{202E}gnp.exe",
            "\u{202D}Ada",
            "Ada\u{2066}x\u{2069}",
            "Ada\u{200F}",
            "A\u{200B}da",
            "Ada\u{2060}",
            "\u{FEFF}Ada",
            "Ada\u{2028}Bob",
            "\u{3164}",
            "Ada\u{E0041}",
            "Ada\u{0007}",
        ];
        for name in refused {
            let err = validate_name(name).expect_err(name);
            assert_eq!(err.code(), crate::ErrorCode::Invalid, "{name:?}");
        }
        for name in [
            "Ada Lovelace",
            "\u{0645}\u{062D}\u{0645}\u{062F}",
            "\u{1F469}\u{200D}\u{1F4BB} dev",
            "\u{0645}\u{06CC}\u{200C}\u{062E}\u{0648}\u{0627}\u{0647}\u{0645}",
        ] {
            assert!(validate_name(name).is_ok(), "{name:?}");
        }
    }
}
