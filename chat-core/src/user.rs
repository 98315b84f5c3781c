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

/// The name every deleted user is shown with.
pub const DELETED_USER_NAME: &str = "Deleted user";

/// A user as other users see them.
///
/// A deleted user keeps only their id: [`User::deleted`] is how every store
/// hands them out, and their JSON is `{"id","name":"Deleted user","deleted":true}`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
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
    /// Whether an operator deleted the user (`DELETE /v1/admin/users/{id}`).
    #[serde(default)]
    pub deleted: bool,
}

impl Serialize for User {
    /// `{"id","name","avatar_url"?,"roles"}`, or for a deleted user
    /// `{"id","name","deleted":true}`: nothing of who they were is shown.
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> std::result::Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut map = serializer.serialize_map(None)?;
        map.serialize_entry("id", &self.id)?;
        map.serialize_entry("name", &self.name)?;
        if self.deleted {
            map.serialize_entry("deleted", &true)?;
        } else {
            if let Some(url) = &self.avatar_url {
                map.serialize_entry("avatar_url", url)?;
            }
            map.serialize_entry("roles", &self.roles)?;
        }
        map.end()
    }
}

impl User {
    /// A user with a name and no roles.
    pub fn new(id: UserId, name: impl Into<String>) -> Self {
        User { id, name: name.into(), avatar_url: None, roles: Vec::new(), deleted: false }
    }

    /// What is left of a deleted user: the id, [`DELETED_USER_NAME`], no
    /// avatar, no roles.
    pub fn deleted(id: UserId) -> Self {
        User { deleted: true, ..User::new(id, DELETED_USER_NAME) }
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
            validate_avatar_url(url)?;
        }
        validate_roles(&self.roles)
    }
}

/// Checks an avatar URL: http(s), at most [`MAX_AVATAR_URL_BYTES`].
pub fn validate_avatar_url(url: &str) -> Result<()> {
    if url.len() > MAX_AVATAR_URL_BYTES {
        return Err(Error::too_large("avatar_url is longer than 2048 bytes"));
    }
    if !(url.starts_with("https://") || url.starts_with("http://")) {
        return Err(Error::invalid("avatar_url must be an http(s) URL"));
    }
    Ok(())
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
    /// When the credentials were issued (a JWT's `iat`), if they say. Tokens
    /// issued at or before the second of a user's last revocation, and tokens
    /// that do not say once a user's tokens were ever revoked, are refused
    /// (see [`UserAccount::admits`]).
    pub issued_at: Option<Timestamp>,
}

impl Identity {
    /// An identity with only a user id, which never expires.
    pub fn new(user_id: UserId) -> Self {
        Identity { user_id, name: None, roles: None, expires_at: None, issued_at: None }
    }

    /// Whether these credentials were issued in a later second than `at`.
    /// Token times have whole seconds, so anything issued in the same second
    /// as `at` may have come before it and does not count as later.
    pub fn issued_after(&self, at: Timestamp) -> bool {
        self.issued_at.is_some_and(|iat| iat.as_secs() > at.as_secs())
    }
}

/// A user as operators see them: the [`User`], and what the admin API keeps
/// about their account.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserAccount {
    /// The user; for a deleted one, [`User::deleted`].
    pub user: User,
    /// `false` while deactivated: none of their credentials are accepted.
    pub active: bool,
    /// When the user was first stored.
    pub created_at: Timestamp,
    /// When a session of theirs last opened, or their last session on a
    /// server process closed.
    pub last_seen: Option<Timestamp>,
    /// When their tokens were last revoked: credentials issued at or before
    /// that second, or without an issue time, are refused.
    pub tokens_revoked_at: Option<Timestamp>,
    /// When an operator last set their name, avatar or roles. Credentials
    /// issued before that second no longer change them (see
    /// [`UserAccount::claims_apply`]).
    pub profile_set_at: Option<Timestamp>,
}

impl UserAccount {
    /// Whether the user's credentials in `identity` are accepted, as this
    /// account has it: refused for a deleted or deactivated user, and for
    /// credentials issued before their tokens were revoked.
    pub fn admits(&self, identity: &Identity) -> Result<()> {
        if self.user.deleted {
            return Err(Error::Unauthorized("the user was deleted".into()));
        }
        if !self.active {
            return Err(Error::Unauthorized("the user is deactivated".into()));
        }
        if let Some(revoked) = self.tokens_revoked_at
            && !identity.issued_after(revoked)
        {
            return Err(Error::Unauthorized("token revoked".into()));
        }
        Ok(())
    }

    /// Whether the name and roles that `identity` carries should replace the
    /// stored ones: always, until an operator set the user's profile; after
    /// that, only from credentials issued in a later second. Tokens the
    /// server made before an operator's change carry the old name and roles,
    /// and must not undo it; one made after it carries the new ones.
    pub fn claims_apply(&self, identity: &Identity) -> bool {
        self.profile_set_at.is_none_or(|at| identity.issued_after(at))
    }
}

/// A change an operator makes to a user (`PATCH /v1/admin/users/{id}`):
/// each field that is `Some` replaces the stored one.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UserPatch {
    /// A new display name.
    pub name: Option<String>,
    /// A new avatar URL; `Some(None)` removes it.
    pub avatar_url: Option<Option<String>>,
    /// New global roles.
    pub roles: Option<Vec<String>>,
}

impl UserPatch {
    /// A patch that sets every field to `user`'s.
    pub fn from_user(user: &User) -> Self {
        UserPatch {
            name: Some(user.name.clone()),
            avatar_url: Some(user.avatar_url.clone()),
            roles: Some(user.roles.clone()),
        }
    }

    /// Checks each field it sets, as [`User::validate`] does.
    pub fn validate(&self) -> Result<()> {
        if let Some(name) = &self.name {
            validate_name(name)?;
        }
        if let Some(Some(url)) = &self.avatar_url {
            validate_avatar_url(url)?;
        }
        if let Some(roles) = &self.roles {
            validate_roles(roles)?;
        }
        Ok(())
    }

    /// `user` with this patch applied.
    pub fn apply(&self, mut user: User) -> User {
        if let Some(name) = &self.name {
            user.name.clone_from(name);
        }
        if let Some(url) = &self.avatar_url {
            user.avatar_url.clone_from(url);
        }
        if let Some(roles) = &self.roles {
            user.roles.clone_from(roles);
        }
        user
    }
}

/// One page of the user list an operator reads (`GET /v1/admin/users`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserListQuery {
    /// Only users whose id sorts after this one (byte order).
    pub after: Option<UserId>,
    /// Only users whose id or name contains this text, ignoring ASCII case.
    pub text: Option<String>,
    /// At most this many users.
    pub limit: u32,
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
