//! VAPID (RFC 8292): the server's P-256 key pair, and the `Authorization`
//! header that proves to a push service that a push comes from the server
//! the subscription was made for.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use p256::ecdsa::signature::Signer as _;
use p256::ecdsa::{Signature, SigningKey};
use p256::elliptic_curve::sec1::ToEncodedPoint as _;
use p256::pkcs8::DecodePrivateKey as _;

use chat_core::{Store, Timestamp};

/// The name the key is kept under in the store ([`Store::server_secret`]).
pub const SECRET_NAME: &str = "vapid_private_key";

/// How long a VAPID token is valid (RFC 8292 allows at most 24 h).
const TOKEN_LIFETIME_S: i64 = 12 * 3600;

/// The server's VAPID key pair.
#[derive(Clone)]
pub struct VapidKey {
    signing: SigningKey,
    public: String,
}

impl std::fmt::Debug for VapidKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VapidKey").field("public", &self.public).finish_non_exhaustive()
    }
}

impl VapidKey {
    /// A key from its private scalar (32 bytes).
    pub fn from_bytes(private: &[u8]) -> chat_core::Result<Self> {
        let signing = SigningKey::from_slice(private)
            .map_err(|_| chat_core::Error::invalid("a VAPID private key is a P-256 scalar of 32 bytes"))?;
        Ok(Self::from_signing(signing))
    }

    fn from_signing(signing: SigningKey) -> Self {
        let point = signing.verifying_key().as_affine().to_encoded_point(false);
        Self { public: URL_SAFE_NO_PAD.encode(point.as_bytes()), signing }
    }

    /// A key from the text of a key file: a PEM private key (`BEGIN PRIVATE
    /// KEY`, as `openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256`
    /// writes, or `BEGIN EC PRIVATE KEY`), or the base64url private key that
    /// `web-push generate-vapid-keys` prints.
    pub fn from_text(text: &str) -> chat_core::Result<Self> {
        let text = text.trim();
        if text.starts_with("-----BEGIN PRIVATE KEY-----") {
            let signing = SigningKey::from_pkcs8_pem(text)
                .map_err(|e| chat_core::Error::invalid(format!("the VAPID key file is not a P-256 PKCS#8 key: {e}")))?;
            return Ok(Self::from_signing(signing));
        }
        if text.starts_with("-----BEGIN EC PRIVATE KEY-----") {
            let secret = p256::SecretKey::from_sec1_pem(text)
                .map_err(|e| chat_core::Error::invalid(format!("the VAPID key file is not a P-256 EC key: {e}")))?;
            return Ok(Self::from_signing(secret.into()));
        }
        let bytes = URL_SAFE_NO_PAD
            .decode(text.trim_end_matches('='))
            .map_err(|_| chat_core::Error::invalid("the VAPID key file holds neither PEM nor a base64url key"))?;
        Self::from_bytes(&bytes)
    }

    /// The key every process of the server shares: the one in the store, or
    /// a new one stored now when there is none (the first start).
    pub async fn from_store(store: &dyn Store) -> chat_core::Result<Self> {
        let candidate = p256::SecretKey::random(&mut p256::elliptic_curve::rand_core::OsRng);
        let candidate = URL_SAFE_NO_PAD.encode(candidate.to_bytes());
        let kept = store.server_secret(SECRET_NAME, &candidate).await?;
        let bytes = URL_SAFE_NO_PAD
            .decode(kept.as_bytes())
            .map_err(|_| chat_core::Error::internal("the stored VAPID key is not base64url"))?;
        Self::from_bytes(&bytes)
    }

    /// The public key, base64url of its uncompressed point: what
    /// `GET /v1/push/vapid-public-key` answers and browsers subscribe with
    /// (`applicationServerKey`).
    pub fn public_key(&self) -> &str {
        &self.public
    }

    /// The `Authorization` header for a push to `endpoint`: `vapid t=<JWT>,
    /// k=<public key>`, the JWT (ES256) naming the endpoint's origin as
    /// `aud`, `subject` as `sub`, and expiring in 12 hours.
    pub fn authorization(&self, endpoint: &url::Url, subject: &str, now: Timestamp) -> String {
        let audience = endpoint.origin().ascii_serialization();
        let header = URL_SAFE_NO_PAD.encode(br#"{"typ":"JWT","alg":"ES256"}"#);
        let claims = serde_json::json!({ "aud": audience, "exp": now.as_secs() + TOKEN_LIFETIME_S, "sub": subject });
        let claims = URL_SAFE_NO_PAD.encode(claims.to_string());
        let signed = format!("{header}.{claims}");
        let signature: Signature = self.signing.sign(signed.as_bytes());
        let signature = URL_SAFE_NO_PAD.encode(signature.to_bytes());
        format!("vapid t={signed}.{signature}, k={}", self.public)
    }
}

#[cfg(test)]
mod tests {
    use p256::ecdsa::VerifyingKey;
    use p256::ecdsa::signature::Verifier as _;

    use super::*;

    #[test]
    fn the_token_is_an_es256_jwt_for_the_endpoints_origin() {
        let key = VapidKey::from_bytes(&[7u8; 32]).expect("a valid scalar");
        let url: url::Url = "https://push.example.net:8443/wpush/v2/abc?x=1".parse().expect("a URL");
        let header = key.authorization(&url, "mailto:ops@example.com", Timestamp::from_millis(1_000_000));
        let (t, k) = header.strip_prefix("vapid t=").and_then(|h| h.split_once(", k=")).expect("vapid t=…, k=…");
        assert_eq!(k, key.public_key());
        let mut parts = t.split('.');
        let (h, c, s) = (parts.next().expect("h"), parts.next().expect("c"), parts.next().expect("s"));
        let claims: serde_json::Value =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(c).expect("base64url")).expect("JSON");
        assert_eq!(claims["aud"], "https://push.example.net:8443");
        assert_eq!(claims["sub"], "mailto:ops@example.com");
        assert_eq!(claims["exp"], 1_000 + TOKEN_LIFETIME_S);
        let public = VerifyingKey::from_sec1_bytes(&URL_SAFE_NO_PAD.decode(k).expect("base64url")).expect("point");
        let signature = Signature::from_slice(&URL_SAFE_NO_PAD.decode(s).expect("base64url")).expect("r||s");
        public.verify(format!("{h}.{c}").as_bytes(), &signature).expect("the signature verifies");
    }

    #[test]
    fn key_files_in_each_format_give_the_same_key() {
        let raw = VapidKey::from_bytes(&[9u8; 32]).expect("valid");
        let b64 = URL_SAFE_NO_PAD.encode([9u8; 32]);
        assert_eq!(VapidKey::from_text(&format!("  {b64}\n")).expect("base64url").public_key(), raw.public_key());
        use p256::pkcs8::EncodePrivateKey as _;
        let secret = p256::SecretKey::from_slice(&[9u8; 32]).expect("valid");
        let pem = secret.to_pkcs8_pem(Default::default()).expect("PEM");
        assert_eq!(VapidKey::from_text(&pem).expect("PKCS#8").public_key(), raw.public_key());
        let sec1 = secret.to_sec1_pem(Default::default()).expect("PEM");
        assert_eq!(VapidKey::from_text(&sec1).expect("SEC1").public_key(), raw.public_key());
        assert!(VapidKey::from_text("not a key").is_err());
        assert!(VapidKey::from_bytes(&[0u8; 32]).is_err(), "zero is no scalar");
    }

    #[tokio::test]
    async fn every_process_gets_the_key_stored_first() {
        let store = chat_core::MemoryStore::new();
        let a = VapidKey::from_store(&store).await.expect("made");
        let b = VapidKey::from_store(&store).await.expect("kept");
        assert_eq!(a.public_key(), b.public_key());
        assert_eq!(URL_SAFE_NO_PAD.decode(a.public_key()).expect("base64url").len(), 65);
    }
}
