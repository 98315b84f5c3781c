//! Accounts: whose credentials are accepted, and what operators do to users
//! (the admin API). This is the one home of those rules:
//!
//! - **Who may connect** is the store's [`UserAccount`], never a process's
//!   memory: a deleted or deactivated user, and credentials issued at or
//!   before the second of a user's last token revocation (or without an
//!   issue time, once there was one), are refused with `unauthorized`. A
//!   session's opening asks twice (`Inner::open_session`): before anything
//!   is done for it, and once it is registered where
//!   [`Engine::end_sessions`] can reach it, so that a change racing the
//!   opening either refuses it or ends it. HTTP requests ask once
//!   ([`Engine::authorize`]).
//! - **An operator's change of a profile** (name, avatar, roles) wins over
//!   the name and roles of credentials issued before it: tokens the server
//!   made earlier carry the old values, and must not undo the change at the
//!   next connect ([`UserAccount::claims_apply`]). Credentials issued in a
//!   later second (the server's own, which carry what is stored, or an
//!   identity provider's) apply as before. A change of roles ends the user's
//!   sessions, so that none goes on with the old ones.
//! - **Deactivating, revoking and deleting** end every session of the user
//!   on every process ([`Engine::end_sessions`], close code 4401 natively)
//!   after the store has the change.
//! - **A deleted user** is gone from every room (each membership removed as
//!   `room:leave` would, `user:left` to the others) and from every list;
//!   their messages stay with their `sender_id`, and wherever the user is
//!   shown they are [`User::deleted`]. Nothing brings them back: the store
//!   refuses to create them again, through the admin API or a token.

use std::time::Duration;

use super::Engine;
use crate::error::{Error, Result};
use crate::id::UserId;
use crate::time::Timestamp;
use crate::user::{Identity, User, UserAccount, UserListQuery, UserPatch};

/// Users per page of [`Engine::accounts`] when the caller names no limit.
pub const DEFAULT_USER_PAGE: u32 = 50;
/// The most users per page of [`Engine::accounts`]; a larger limit is cut to this.
pub const MAX_USER_PAGE: u32 = 200;
/// The longest a token for a user waits for the second after their last
/// revocation to begin ([`Engine::token_subject`]), which only a clock far
/// behind another process's can make longer than a second.
const MAX_REVOCATION_WAIT: Duration = Duration::from_secs(2);

/// One page of the user list, for `GET /v1/admin/users`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccountPage {
    /// The accounts, by id.
    pub accounts: Vec<UserAccount>,
    /// The cursor of the next page, when there may be one.
    pub next: Option<String>,
}

impl Engine {
    /// The user that credentials act as on an HTTP route, when the store
    /// still accepts them ([`UserAccount::admits`]): as stored, with the
    /// roles of the credentials when they name any and may
    /// ([`UserAccount::claims_apply`]), as a session's opening has it. An
    /// unknown user is let through with their id as name (they are made
    /// when they first connect). `unauthorized` otherwise.
    pub async fn authorize(&self, identity: &Identity) -> Result<User> {
        let Some(account) = self.inner.store.account(&identity.user_id).await? else {
            let mut user = User::new(identity.user_id.clone(), identity.user_id.to_string());
            user.roles = identity.roles.clone().unwrap_or_default();
            return Ok(user);
        };
        account.admits(identity)?;
        let claims_apply = account.claims_apply(identity);
        let mut user = account.user;
        if claims_apply && let Some(roles) = &identity.roles {
            user.roles.clone_from(roles);
        }
        Ok(user)
    }

    /// One page of the users who are not deleted, by id (byte order),
    /// after the opaque `cursor` of the previous page, those whose id or
    /// name contains `text` (ignoring ASCII case) only; at most `limit`
    /// ([`DEFAULT_USER_PAGE`] when `None`, cut to [`MAX_USER_PAGE`];
    /// `invalid` when 0).
    pub async fn accounts(&self, cursor: Option<&str>, text: Option<&str>, limit: Option<u32>) -> Result<AccountPage> {
        let limit = match limit {
            Some(0) => return Err(Error::invalid("limit must be at least 1")),
            Some(n) => n.min(MAX_USER_PAGE),
            None => DEFAULT_USER_PAGE,
        };
        let after = match cursor.filter(|c| !c.is_empty()) {
            Some(cursor) => {
                Some(UserId::new(cursor).map_err(|_| Error::invalid("cursor is not one this server gave"))?)
            }
            None => None,
        };
        let text = text.filter(|t| !t.is_empty()).map(str::to_owned);
        // One more than asked says whether another page follows.
        let query = UserListQuery { after, text, limit: limit + 1 };
        let mut accounts = self.inner.store.list_accounts(&query).await?;
        let more = accounts.len() > limit as usize;
        accounts.truncate(limit as usize);
        let next = if more { accounts.last().map(|a| a.user.id.to_string()) } else { None };
        Ok(AccountPage { accounts, next })
    }

    /// A user's account; `not_found` for an unknown or deleted user.
    pub async fn account(&self, id: &UserId) -> Result<UserAccount> {
        self.inner.store.account(id).await?.filter(|a| !a.user.deleted).ok_or(Error::NotFound("user"))
    }

    /// Creates or replaces a user as an operator (`POST /v1/admin/users`):
    /// the name, avatar and roles given win over those of credentials issued
    /// before now. `conflict` for a deleted user, who cannot be made again.
    pub async fn put_user(&self, user: User) -> Result<User> {
        user.validate()?;
        let before = self.inner.store.account(&user.id).await?;
        self.inner.store.upsert_user(&user).await?;
        let stored = self
            .inner
            .store
            .update_user(&user.id, &UserPatch::from_user(&user), Timestamp::now())
            .await?
            .ok_or_else(|| Error::conflict("the user was deleted"))?;
        if let Some(before) = before
            && before.user.roles != stored.roles
        {
            self.end_sessions(&stored.id).await;
        }
        Ok(stored)
    }

    /// Changes a user's name, avatar or roles as an operator (`PATCH
    /// /v1/admin/users/{id}`), each checked as [`User::validate`] does.
    /// Returns the user as they are now; `not_found` for an unknown or
    /// deleted user. When the roles change, the user's sessions end.
    pub async fn update_user(&self, id: &UserId, patch: UserPatch) -> Result<User> {
        patch.validate()?;
        let before = self.account(id).await?;
        if patch == UserPatch::default() {
            // Nothing to change, and nothing to record as an operator's change.
            return Ok(before.user);
        }
        let user = self.inner.store.update_user(id, &patch, Timestamp::now()).await?.ok_or(Error::NotFound("user"))?;
        if before.user.roles != user.roles {
            self.end_sessions(id).await;
        }
        Ok(user)
    }

    /// Deactivates a user: their sessions end on every process and none of
    /// their credentials are accepted until [`Engine::reactivate_user`].
    /// `not_found` for an unknown or deleted user.
    pub async fn deactivate_user(&self, id: &UserId) -> Result<()> {
        if !self.inner.store.set_user_active(id, false).await? {
            return Err(Error::NotFound("user"));
        }
        self.end_sessions(id).await;
        Ok(())
    }

    /// Lets a deactivated user's credentials in again (those issued before
    /// a revocation stay refused). `not_found` for an unknown or deleted user.
    pub async fn reactivate_user(&self, id: &UserId) -> Result<()> {
        if !self.inner.store.set_user_active(id, true).await? {
            return Err(Error::NotFound("user"));
        }
        Ok(())
    }

    /// Revokes every credential of a user issued until now (in whole
    /// seconds: one issued in this second is refused too) and ends their
    /// sessions on every process. Credentials issued from the next second
    /// on are accepted. `not_found` for an unknown or deleted user.
    pub async fn revoke_tokens(&self, id: &UserId) -> Result<()> {
        if !self.inner.store.revoke_tokens(id, Timestamp::now()).await? {
            return Err(Error::NotFound("user"));
        }
        self.end_sessions(id).await;
        Ok(())
    }

    /// Deletes a user for good: their sessions end on every process, they
    /// leave every room (the other members get `user:left`, bridges
    /// `MemberRemoved`), and from then on they are shown as
    /// [`User::deleted`], refused at every connect and never made again.
    /// Their messages stay. `not_found` for an unknown or deleted user.
    pub async fn delete_user(&self, id: &UserId) -> Result<()> {
        let rooms = self.inner.store.delete_user(id, Timestamp::now()).await?.ok_or(Error::NotFound("user"))?;
        self.end_sessions(id).await;
        self.inner.removed_from_rooms(id, &rooms).await;
        for room in rooms {
            self.inner.announce_left(room, id, None).await;
        }
        Ok(())
    }

    /// The user a new token is made for (`POST /v1/admin/users/{id}/tokens`,
    /// dev login): `not_found` for an unknown or deleted user, `conflict`
    /// for a deactivated one. When the user's tokens were revoked in the
    /// current second, waits for the next one, so that the token's `iat`
    /// comes after the revocation and the token is accepted.
    pub async fn token_subject(&self, id: &UserId) -> Result<User> {
        let account = self.account(id).await?;
        if !account.active {
            return Err(Error::conflict("the user is deactivated: reactivate them first"));
        }
        if let Some(revoked) = account.tokens_revoked_at {
            let next_second = Timestamp::from_secs(revoked.as_secs() + 1);
            let wait = next_second.until();
            if wait > MAX_REVOCATION_WAIT {
                tracing::warn!(user = %id, ?wait, "this clock is behind the one that revoked the user's tokens; the token will be refused");
            }
            if !wait.is_zero() {
                tokio::time::sleep(wait.min(MAX_REVOCATION_WAIT)).await;
            }
        }
        Ok(account.user)
    }
}
