//! The authentication seam.
//!
//! A transport receives credentials (a bearer token, say), asks an
//! [`Authenticator`] who they belong to, and opens a session for that
//! [`Identity`]. The reference server verifies JWTs; [`StaticTokens`] maps fixed
//! tokens to identities, which suits service accounts, tests and embedding.

use std::collections::HashMap;

use async_trait::async_trait;

use crate::error::{Error, Result};
use crate::user::Identity;

/// Turns credentials into an identity.
#[async_trait]
pub trait Authenticator: Send + Sync + 'static {
    /// Checks a token. Fails with [`Error::Unauthorized`] (the text says why:
    /// malformed, expired, bad signature…) when the token is not acceptable.
    async fn authenticate(&self, token: &str) -> Result<Identity>;
}

/// A fixed table of tokens. Tokens are compared in constant time, so response
/// timing does not reveal how much of a guess was right.
#[derive(Debug, Default, Clone)]
pub struct StaticTokens {
    tokens: HashMap<String, Identity>,
}

impl StaticTokens {
    /// An empty table.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a token.
    pub fn with(mut self, token: impl Into<String>, identity: Identity) -> Self {
        self.tokens.insert(token.into(), identity);
        self
    }
}

/// Compares secrets in time that depends only on their length, so timing
/// does not reveal how much of a guess was right.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[async_trait]
impl Authenticator for StaticTokens {
    async fn authenticate(&self, token: &str) -> Result<Identity> {
        // Scan every entry rather than hashing the guess, keeping the comparison
        // constant-time per entry.
        let mut found = None;
        for (known, identity) in &self.tokens {
            if constant_time_eq(known.as_bytes(), token.as_bytes()) {
                found = Some(identity);
            }
        }
        found.cloned().ok_or_else(|| Error::Unauthorized("unknown token".into()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::id::UserId;

    #[tokio::test]
    async fn static_tokens_accept_only_known_tokens() {
        let alice = Identity::new(UserId::new("alice").expect("valid"));
        let auth = StaticTokens::new().with("s3cret", alice.clone());
        assert_eq!(auth.authenticate("s3cret").await.expect("known"), alice);
        let err = auth.authenticate("s3cre").await.expect_err("unknown");
        assert_eq!(err.code().as_str(), "unauthorized");
    }
}
