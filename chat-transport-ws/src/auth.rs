//! JWT credentials: verifying them ([`JwtAuthenticator`]) and making them
//! ([`TokenIssuer`]).
//!
//! Following RFC 8725, each key allows exactly one algorithm: an HS256 secret
//! accepts only HS256 tokens, an RSA public key only RS256, an Ed25519 public
//! key only EdDSA. `alg: none` does not parse, and a token signed with another
//! algorithm (the classic confusion of an RSA public key used as an HMAC
//! secret) fails with "algorithm not allowed".

use std::time::Duration;

use async_trait::async_trait;
use chat_core::user::{validate_name, validate_roles};
use chat_core::{Authenticator, Identity, Timestamp, User, UserId};
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Which key checks signatures.
#[derive(Clone)]
#[non_exhaustive]
pub enum VerifyKey {
    /// A shared secret; HS256.
    Hs256(Vec<u8>),
    /// An RSA public key in PEM; RS256.
    Rs256Pem(Vec<u8>),
    /// An Ed25519 public key in PEM; EdDSA.
    EdDsaPem(Vec<u8>),
}

impl std::fmt::Debug for VerifyKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print key material.
        f.write_str(match self {
            VerifyKey::Hs256(_) => "Hs256(..)",
            VerifyKey::Rs256Pem(_) => "Rs256Pem(..)",
            VerifyKey::EdDsaPem(_) => "EdDsaPem(..)",
        })
    }
}

/// How tokens are checked.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct JwtConfig {
    /// The verification key, which also fixes the one allowed algorithm.
    pub key: VerifyKey,
    /// Required `iss`, when set.
    pub issuer: Option<String>,
    /// Required `aud`, when set.
    pub audience: Option<String>,
    /// Clock skew tolerated when checking `exp` and `nbf`.
    pub leeway: Duration,
}

impl JwtConfig {
    /// HS256 with a shared secret, no issuer or audience check, 5 s leeway.
    pub fn hs256(secret: impl Into<Vec<u8>>) -> Self {
        JwtConfig { key: VerifyKey::Hs256(secret.into()), issuer: None, audience: None, leeway: Duration::from_secs(5) }
    }

    /// Uses another key.
    pub fn with_key(mut self, key: VerifyKey) -> Self {
        self.key = key;
        self
    }

    /// Requires this `iss`.
    pub fn with_issuer(mut self, issuer: Option<String>) -> Self {
        self.issuer = issuer;
        self
    }

    /// Requires this `aud`.
    pub fn with_audience(mut self, audience: Option<String>) -> Self {
        self.audience = audience;
        self
    }

    /// Sets the clock-skew leeway.
    pub fn with_leeway(mut self, leeway: Duration) -> Self {
        self.leeway = leeway;
        self
    }
}

/// The claims this server reads and writes.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Claims {
    /// User id.
    pub sub: String,
    /// Expiry, seconds since the epoch.
    pub exp: u64,
    /// Issued at.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iat: Option<u64>,
    /// Display name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Roles such as `support`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub roles: Option<Vec<String>>,
    /// Issuer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iss: Option<String>,
    /// Audience.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aud: Option<String>,
}

/// Verifies JWTs into identities.
pub struct JwtAuthenticator {
    key: DecodingKey,
    validation: Validation,
}

impl std::fmt::Debug for JwtAuthenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwtAuthenticator").field("algorithms", &self.validation.algorithms).finish()
    }
}

impl JwtAuthenticator {
    /// Builds a verifier; fails when the key does not parse.
    pub fn new(config: &JwtConfig) -> Result<Self> {
        let (key, alg) = match &config.key {
            VerifyKey::Hs256(secret) => {
                if secret.len() < 32 {
                    return Err(Error::Key("an HS256 secret must be at least 32 bytes".into()));
                }
                (DecodingKey::from_secret(secret), Algorithm::HS256)
            }
            VerifyKey::Rs256Pem(pem) => (
                DecodingKey::from_rsa_pem(pem).map_err(|e| Error::Key(format!("RSA public key: {e}")))?,
                Algorithm::RS256,
            ),
            VerifyKey::EdDsaPem(pem) => (
                DecodingKey::from_ed_pem(pem).map_err(|e| Error::Key(format!("Ed25519 public key: {e}")))?,
                Algorithm::EdDSA,
            ),
        };
        let mut validation = Validation::new(alg);
        validation.algorithms = vec![alg];
        validation.leeway = config.leeway.as_secs();
        validation.set_required_spec_claims(&["exp", "sub"]);
        validation.validate_exp = true;
        validation.validate_nbf = true;
        match &config.audience {
            Some(aud) => validation.set_audience(&[aud]),
            None => validation.validate_aud = false,
        }
        if let Some(iss) = &config.issuer {
            validation.set_issuer(&[iss]);
        }
        Ok(JwtAuthenticator { key, validation })
    }

    /// Checks a token and returns its claims.
    pub fn verify(&self, token: &str) -> chat_core::Result<Claims> {
        let data = jsonwebtoken::decode::<Claims>(token, &self.key, &self.validation).map_err(|e| {
            let why = match e.kind() {
                ErrorKind::ExpiredSignature => "token expired",
                ErrorKind::ImmatureSignature => "token not valid yet",
                ErrorKind::InvalidSignature => "invalid token signature",
                ErrorKind::InvalidAlgorithm | ErrorKind::InvalidAlgorithmName | ErrorKind::UnsupportedAlgorithm => {
                    "token algorithm not allowed"
                }
                ErrorKind::InvalidIssuer => "token issuer not accepted",
                ErrorKind::InvalidAudience => "token audience not accepted",
                ErrorKind::MissingRequiredClaim(_) => "token lacks a required claim (sub, exp)",
                _ => "malformed token",
            };
            chat_core::Error::Unauthorized(why.into())
        })?;
        Ok(data.claims)
    }
}

#[async_trait]
impl Authenticator for JwtAuthenticator {
    async fn authenticate(&self, token: &str) -> chat_core::Result<Identity> {
        let claims = self.verify(token)?;
        let bad = |why: &str| chat_core::Error::Unauthorized(format!("invalid token claims: {why}"));
        let user_id = UserId::new(claims.sub).map_err(|_| bad("sub must be 1 to 128 characters"))?;
        if let Some(name) = &claims.name {
            validate_name(name).map_err(|e| bad(&format!("name: {e}")))?;
        }
        if let Some(roles) = &claims.roles {
            validate_roles(roles).map_err(|e| bad(&format!("roles: {e}")))?;
        }
        let expires_at = i64::try_from(claims.exp).ok().map(Timestamp::from_secs);
        let issued_at = claims.iat.and_then(|iat| i64::try_from(iat).ok()).map(Timestamp::from_secs);
        Ok(Identity { user_id, name: claims.name, roles: claims.roles, expires_at, issued_at })
    }
}

/// Which key signs tokens the server makes.
#[derive(Clone)]
#[non_exhaustive]
pub enum SignKey {
    /// A shared secret; HS256.
    Hs256(Vec<u8>),
    /// An RSA private key in PEM; RS256.
    Rs256Pem(Vec<u8>),
    /// An Ed25519 private key in PEM; EdDSA.
    EdDsaPem(Vec<u8>),
}

impl std::fmt::Debug for SignKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SignKey(..)")
    }
}

/// Makes tokens: for visitors, for the admin API, for the `token` subcommand.
pub struct TokenIssuer {
    key: EncodingKey,
    alg: Algorithm,
    issuer: Option<String>,
    audience: Option<String>,
}

impl std::fmt::Debug for TokenIssuer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenIssuer").field("alg", &self.alg).finish_non_exhaustive()
    }
}

impl TokenIssuer {
    /// Builds an issuer; `issuer` and `audience` go into every token.
    pub fn new(key: &SignKey, issuer: Option<String>, audience: Option<String>) -> Result<Self> {
        let (key, alg) = match key {
            SignKey::Hs256(secret) => {
                if secret.len() < 32 {
                    return Err(Error::Key("an HS256 secret must be at least 32 bytes".into()));
                }
                (EncodingKey::from_secret(secret), Algorithm::HS256)
            }
            SignKey::Rs256Pem(pem) => (
                EncodingKey::from_rsa_pem(pem).map_err(|e| Error::Key(format!("RSA private key: {e}")))?,
                Algorithm::RS256,
            ),
            SignKey::EdDsaPem(pem) => (
                EncodingKey::from_ed_pem(pem).map_err(|e| Error::Key(format!("Ed25519 private key: {e}")))?,
                Algorithm::EdDSA,
            ),
        };
        Ok(TokenIssuer { key, alg, issuer, audience })
    }

    /// A token for `user`, valid for `ttl`. Returns it with its expiry.
    pub fn issue(&self, user: &User, ttl: Duration) -> chat_core::Result<(String, Timestamp)> {
        let now = Timestamp::now();
        let expires_at = Timestamp::from_secs(now.plus(ttl).as_secs());
        let claims = Claims {
            sub: user.id.to_string(),
            exp: expires_at.as_secs().max(0) as u64,
            iat: Some(now.as_secs().max(0) as u64),
            name: Some(user.name.clone()),
            roles: Some(user.roles.clone()),
            iss: self.issuer.clone(),
            aud: self.audience.clone(),
        };
        let token = jsonwebtoken::encode(&Header::new(self.alg), &claims, &self.key)
            .map_err(|e| chat_core::Error::internal(format!("signing a token failed: {e}")))?;
        Ok((token, expires_at))
    }
}

/// A new random HS256 secret: 32 bytes, hex-encoded (64 characters).
pub fn generate_secret() -> Result<String> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(|e| Error::Key(format!("no randomness available: {e}")))?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";

    fn user() -> User {
        let mut u = User::new(UserId::new("ada").expect("valid"), "Ada");
        u.roles = vec!["support".into()];
        u
    }

    fn b64(data: &[u8]) -> String {
        const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
        let mut out = String::new();
        for chunk in data.chunks(3) {
            let n = chunk.iter().enumerate().fold(0u32, |acc, (i, b)| acc | (u32::from(*b) << (16 - 8 * i)));
            for i in 0..=chunk.len() {
                out.push(T[((n >> (18 - 6 * i)) & 63) as usize] as char);
            }
        }
        out
    }

    #[tokio::test]
    async fn issued_tokens_verify_into_identities() {
        let issuer = TokenIssuer::new(&SignKey::Hs256(SECRET.to_vec()), None, None).expect("issuer");
        let auth = JwtAuthenticator::new(&JwtConfig::hs256(SECRET)).expect("auth");
        let (token, exp) = issuer.issue(&user(), Duration::from_secs(60)).expect("token");
        let id = auth.authenticate(&token).await.expect("valid");
        assert_eq!(id.user_id.as_str(), "ada");
        assert_eq!(id.name.as_deref(), Some("Ada"));
        assert_eq!(id.roles, Some(vec!["support".to_owned()]));
        assert_eq!(id.expires_at, Some(exp));
    }

    #[tokio::test]
    async fn forged_expired_and_unsigned_tokens_are_refused() {
        let auth = JwtAuthenticator::new(&JwtConfig::hs256(SECRET)).expect("auth");
        let other = TokenIssuer::new(&SignKey::Hs256(b"another-secret-another-secret-xx".to_vec()), None, None)
            .expect("issuer");
        let (forged, _) = other.issue(&user(), Duration::from_secs(60)).expect("token");
        let err = auth.authenticate(&forged).await.expect_err("forged");
        assert_eq!(err.to_string(), "invalid token signature");

        let header = b64(br#"{"alg":"HS256","typ":"JWT"}"#);
        let expired = jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &serde_json::json!({"sub":"ada","exp":1_000_000}),
            &EncodingKey::from_secret(SECRET),
        )
        .expect("encodes");
        assert_eq!(auth.authenticate(&expired).await.expect_err("expired").to_string(), "token expired");

        let none_header = b64(br#"{"alg":"none","typ":"JWT"}"#);
        let body = b64(br#"{"sub":"ada","exp":9999999999}"#);
        let unsigned = format!("{none_header}.{body}.");
        assert!(auth.authenticate(&unsigned).await.is_err());
        assert!(auth.authenticate(&format!("{header}.{body}.")).await.is_err());
        assert!(auth.authenticate("garbage").await.is_err());

        let no_exp = jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &serde_json::json!({"sub":"ada"}),
            &EncodingKey::from_secret(SECRET),
        )
        .expect("encodes");
        assert!(auth.authenticate(&no_exp).await.is_err());
        let long_sub = jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &serde_json::json!({"sub":"x".repeat(129),"exp":9_999_999_999u64}),
            &EncodingKey::from_secret(SECRET),
        )
        .expect("encodes");
        assert!(auth.authenticate(&long_sub).await.is_err());
    }

    #[tokio::test]
    async fn another_algorithm_is_refused_even_with_a_valid_signature() {
        // An HS384 token made with the right secret is still refused: one key, one algorithm.
        let auth = JwtAuthenticator::new(&JwtConfig::hs256(SECRET)).expect("auth");
        let hs384 = jsonwebtoken::encode(
            &Header::new(Algorithm::HS384),
            &serde_json::json!({"sub":"ada","exp":9_999_999_999u64}),
            &EncodingKey::from_secret(SECRET),
        )
        .expect("encodes");
        assert_eq!(auth.authenticate(&hs384).await.expect_err("confused").to_string(), "token algorithm not allowed");
    }

    #[tokio::test]
    async fn issuer_and_audience_are_checked_when_configured() {
        let cfg = JwtConfig::hs256(SECRET).with_issuer(Some("chat".into())).with_audience(Some("web".into()));
        let auth = JwtAuthenticator::new(&cfg).expect("auth");
        let good = TokenIssuer::new(&SignKey::Hs256(SECRET.to_vec()), Some("chat".into()), Some("web".into()))
            .expect("issuer");
        let bad = TokenIssuer::new(&SignKey::Hs256(SECRET.to_vec()), Some("evil".into()), Some("web".into()))
            .expect("issuer");
        let (t, _) = good.issue(&user(), Duration::from_secs(60)).expect("token");
        assert!(auth.authenticate(&t).await.is_ok());
        let (t, _) = bad.issue(&user(), Duration::from_secs(60)).expect("token");
        assert!(auth.authenticate(&t).await.is_err());
    }

    const RSA_PRIVATE: &[u8] = include_bytes!("../tests/keys/rsa_private.pem");
    const RSA_PUBLIC: &[u8] = include_bytes!("../tests/keys/rsa_public.pem");
    const ED_PRIVATE: &[u8] = include_bytes!("../tests/keys/ed25519_private.pem");
    const ED_PUBLIC: &[u8] = include_bytes!("../tests/keys/ed25519_public.pem");

    #[tokio::test]
    async fn asymmetric_keys_verify_their_own_algorithm_only() {
        let table = [
            (SignKey::Rs256Pem(RSA_PRIVATE.to_vec()), VerifyKey::Rs256Pem(RSA_PUBLIC.to_vec()), RSA_PUBLIC),
            (SignKey::EdDsaPem(ED_PRIVATE.to_vec()), VerifyKey::EdDsaPem(ED_PUBLIC.to_vec()), ED_PUBLIC),
        ];
        for (sign, verify, public_pem) in table {
            let auth = JwtAuthenticator::new(&JwtConfig::hs256(SECRET).with_key(verify)).expect("auth");
            let issuer = TokenIssuer::new(&sign, None, None).expect("issuer");
            let (token, _) = issuer.issue(&user(), Duration::from_secs(60)).expect("token");
            assert!(auth.authenticate(&token).await.is_ok());
            // Algorithm confusion: an HS256 token whose "secret" is the public key.
            let confused = jsonwebtoken::encode(
                &Header::new(Algorithm::HS256),
                &serde_json::json!({"sub":"ada","exp":9_999_999_999u64}),
                &EncodingKey::from_secret(public_pem),
            )
            .expect("encodes");
            assert_eq!(
                auth.authenticate(&confused).await.expect_err("confused").to_string(),
                "token algorithm not allowed"
            );
        }
    }

    #[test]
    fn short_secrets_are_refused() {
        assert!(JwtAuthenticator::new(&JwtConfig::hs256(b"short".to_vec())).is_err());
        assert_eq!(generate_secret().expect("random").len(), 64);
    }

    /// Properties of token checking over generated tokens and claims: no
    /// input makes it panic; unsigned, forged, expired, tampered and
    /// other-algorithm tokens are refused; valid ones are accepted with
    /// their claims.
    ///
    /// Each property runs 256 cases; for a long run set `PROPTEST_CASES`,
    /// which proptest's default configuration reads:
    /// `PROPTEST_CASES=20000 cargo test --release -p chat-transport-ws --lib auth::tests::properties`.
    mod properties {
        use super::*;
        use proptest::prelude::*;
        use serde_json::{Value, json};

        fn now() -> u64 {
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("after 1970").as_secs()
        }

        fn auth() -> JwtAuthenticator {
            JwtAuthenticator::new(&JwtConfig::hs256(SECRET)).expect("auth")
        }

        fn block_on<F: std::future::Future>(future: F) -> F::Output {
            tokio::runtime::Builder::new_current_thread().build().expect("a runtime").block_on(future)
        }

        fn sign(claims: &Value, alg: Algorithm, key: &[u8]) -> String {
            jsonwebtoken::encode(&Header::new(alg), claims, &EncodingKey::from_secret(key)).expect("encodes")
        }

        /// Valid claims: a user id, maybe a name and roles, and how long
        /// the token has left.
        #[derive(Debug, Clone)]
        struct Valid {
            sub: String,
            name: Option<String>,
            roles: Option<Vec<String>>,
            ttl: u64,
        }

        impl Valid {
            fn claims(&self, exp: u64) -> Value {
                let mut claims = json!({"sub": self.sub, "exp": exp});
                if let Some(name) = &self.name {
                    claims["name"] = json!(name);
                }
                if let Some(roles) = &self.roles {
                    claims["roles"] = json!(roles);
                }
                claims
            }
        }

        fn valid() -> impl Strategy<Value = Valid> {
            (
                "[A-Za-z0-9:_.@-]{1,128}",
                prop::option::of("[A-Za-z][A-Za-z0-9 .'-]{0,60}"),
                prop::option::of(prop::collection::vec("[a-z][a-z0-9:_-]{0,15}", 0..4)),
                60u64..10_000_000,
            )
                .prop_map(|(sub, name, roles, ttl)| Valid { sub, name, roles, ttl })
        }

        fn b64_json(value: &Value) -> String {
            b64(value.to_string().as_bytes())
        }

        proptest! {
            #![proptest_config(ProptestConfig::default())]

            #[test]
            fn any_token_string_is_refused(token in any::<String>()) {
                prop_assert!(auth().verify(&token).is_err());
            }

            #[test]
            fn dotted_base64_is_refused(parts in prop::collection::vec("[A-Za-z0-9_-]{0,80}", 1..5)) {
                prop_assert!(auth().verify(&parts.join(".")).is_err());
            }

            #[test]
            fn valid_tokens_are_accepted_with_their_claims(claims in valid()) {
                let exp = now() + claims.ttl;
                let token = sign(&claims.claims(exp), Algorithm::HS256, SECRET);
                let identity = block_on(auth().authenticate(&token));
                let identity = identity.map_err(|e| TestCaseError::fail(format!("refused: {e}")))?;
                prop_assert_eq!(identity.user_id.as_str(), claims.sub.as_str());
                prop_assert_eq!(identity.name, claims.name);
                prop_assert_eq!(identity.roles, claims.roles);
                prop_assert_eq!(identity.expires_at, Some(Timestamp::from_secs(exp as i64)));
            }

            #[test]
            fn unsigned_tokens_are_refused(
                claims in valid(),
                alg in prop::sample::select(vec!["none", "None", "NONE", "nOnE", ""]),
                signature in "[A-Za-z0-9_-]{0,64}",
            ) {
                let header = b64_json(&json!({"alg": alg, "typ": "JWT"}));
                let payload = b64_json(&claims.claims(now() + claims.ttl));
                let signed = format!("{header}.{payload}.{signature}");
                let bare = format!("{header}.{payload}");
                prop_assert!(auth().verify(&signed).is_err());
                prop_assert!(auth().verify(&bare).is_err());
            }

            #[test]
            fn tokens_signed_with_another_key_are_refused(
                claims in valid(),
                key in prop::collection::vec(any::<u8>(), 32..64),
            ) {
                prop_assume!(key.as_slice() != SECRET);
                let token = sign(&claims.claims(now() + claims.ttl), Algorithm::HS256, &key);
                let err = auth().verify(&token).map(|_| ()).expect_err("forged");
                prop_assert_eq!(err.to_string(), "invalid token signature");
            }

            #[test]
            fn tokens_of_another_algorithm_are_refused(
                claims in valid(),
                alg in prop::sample::select(vec![Algorithm::HS384, Algorithm::HS512]),
            ) {
                let token = sign(&claims.claims(now() + claims.ttl), alg, SECRET);
                let err = auth().verify(&token).map(|_| ()).expect_err("another algorithm");
                prop_assert_eq!(err.to_string(), "token algorithm not allowed");
            }

            #[test]
            fn expired_tokens_are_refused(claims in valid(), ago in 10u64..1_000_000_000) {
                // Past the 5 s leeway by a few seconds at least.
                let exp = now().saturating_sub(ago).max(1);
                let token = sign(&claims.claims(exp), Algorithm::HS256, SECRET);
                let err = auth().verify(&token).map(|_| ()).expect_err("expired");
                prop_assert_eq!(err.to_string(), "token expired");
            }

            #[test]
            fn a_token_changed_anywhere_is_refused(
                claims in valid(),
                at in any::<prop::sample::Index>(),
                replacement in "[A-Za-z0-9_.=+/-]",
            ) {
                let token = sign(&claims.claims(now() + claims.ttl), Algorithm::HS256, SECRET);
                let i = at.index(token.len());
                prop_assume!(token[i..=i] != replacement);
                let tampered = format!("{}{replacement}{}", &token[..i], &token[i + 1..]);
                prop_assert!(auth().verify(&tampered).is_err(), "{} accepted", tampered);
            }

            #[test]
            fn claims_swapped_under_a_valid_signature_are_refused(claims in valid(), other in "[A-Za-z0-9]{1,32}") {
                prop_assume!(other != claims.sub);
                let exp = now() + claims.ttl;
                let token = sign(&claims.claims(exp), Algorithm::HS256, SECRET);
                let mut parts = token.split('.');
                let (header, _, signature) = (parts.next(), parts.next(), parts.next());
                let forged = Valid { sub: other, ..claims };
                let payload = b64_json(&forged.claims(exp));
                let swapped = format!("{}.{payload}.{}", header.unwrap_or_default(), signature.unwrap_or_default());
                let err = auth().verify(&swapped).map(|_| ()).expect_err("swapped claims");
                prop_assert_eq!(err.to_string(), "invalid token signature");
            }
        }
    }
}
