//! One push to one push service: the payload encrypted for the subscription
//! (RFC 8291 `aes128gcm`), signed for with VAPID (RFC 8292), and what the
//! push service's answer means for the outbox.

use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chat_core::Timestamp;
use chat_core::push::PushSubscription;

use crate::vapid::VapidKey;

/// What became of one attempt.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// The push service took it.
    Sent,
    /// The subscription is gone (404, 410): forget it.
    Gone,
    /// Try again (429, 5xx, no answer), not before the time given if the
    /// push service named one (`Retry-After`).
    Retry(String, Option<Duration>),
    /// Refused for good (another 4xx, a subscription whose keys cannot be used).
    Refused(String),
}

/// What a push carries besides its payload.
pub(crate) struct Headers<'a> {
    pub(crate) ttl: Duration,
    pub(crate) urgency: &'a str,
    pub(crate) topic: &'a str,
}

/// Encrypts `payload` for `subscription` and POSTs it.
pub(crate) async fn push(
    client: &webhook_reqwest::Client,
    key: &VapidKey,
    subject: &str,
    subscription: &PushSubscription,
    payload: &[u8],
    headers: Headers<'_>,
) -> Outcome {
    let url: url::Url = match subscription.endpoint.parse() {
        Ok(url) => url,
        Err(_) => return Outcome::Refused("the stored endpoint is not a URL".into()),
    };
    let body = match encrypt(subscription, payload) {
        Ok(body) => body,
        Err(why) => return Outcome::Refused(why),
    };
    let response = client
        .post(url.clone())
        .header("TTL", headers.ttl.as_secs().to_string())
        .header("Urgency", headers.urgency)
        .header("Topic", headers.topic)
        .header("Content-Encoding", "aes128gcm")
        .header("Content-Type", "application/octet-stream")
        .header("Authorization", key.authorization(&url, subject, Timestamp::now()))
        .body(body)
        .send()
        .await;
    let response = match response {
        Ok(response) => response,
        Err(err) if err.is_timeout() => return Outcome::Retry("no answer in time".into(), None),
        Err(err) => return Outcome::Retry(chat_core::error::root_cause(&err.without_url()), None),
    };
    let status = response.status().as_u16();
    let retry_after = response
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(|s| Duration::from_secs(s.min(3600)));
    match status {
        200..=299 => Outcome::Sent,
        404 | 410 => Outcome::Gone,
        429 | 500..=599 => Outcome::Retry(format!("answered HTTP {status}"), retry_after),
        _ => Outcome::Refused(format!("answered HTTP {status}")),
    }
}

/// The `aes128gcm` body for a subscription's keys.
fn encrypt(subscription: &PushSubscription, payload: &[u8]) -> Result<Vec<u8>, String> {
    let decode = |s: &str| URL_SAFE_NO_PAD.decode(s.trim_end_matches('='));
    let point = decode(&subscription.p256dh).map_err(|_| "the stored p256dh is not base64url".to_owned())?;
    let public =
        p256::PublicKey::from_sec1_bytes(&point).map_err(|_| "the stored p256dh is no P-256 key".to_owned())?;
    let auth = decode(&subscription.auth).map_err(|_| "the stored auth is not base64url".to_owned())?;
    if auth.len() != 16 {
        return Err("the stored auth is not 16 bytes".into());
    }
    let mut secret = web_push_native::Auth::default();
    secret.copy_from_slice(&auth);
    web_push_native::encrypt(payload.to_vec(), &public, &secret).map_err(|e| format!("cannot encrypt: {e}"))
}

/// A `Topic` header (at most 32 characters of base64url) for `key`: a newer
/// push with the same topic replaces one the push service still holds.
pub(crate) fn topic(key: &str) -> String {
    use sha2::Digest as _;
    URL_SAFE_NO_PAD.encode(&sha2::Sha256::digest(key.as_bytes())[..24])
}

#[cfg(test)]
mod tests {
    use super::*;
    use p256::elliptic_curve::sec1::ToEncodedPoint as _;

    #[test]
    fn a_payload_decrypts_with_the_subscriptions_private_key() {
        let browser = p256::SecretKey::from_slice(&[3u8; 32]).expect("valid");
        let auth = [8u8; 16];
        let subscription = PushSubscription {
            user_id: chat_core::UserId::new("u").expect("valid"),
            endpoint: "https://push.example/x".into(),
            p256dh: URL_SAFE_NO_PAD.encode(browser.public_key().to_encoded_point(false).as_bytes()),
            auth: URL_SAFE_NO_PAD.encode(auth),
            created_at: Timestamp::from_millis(0),
        };
        let body = encrypt(&subscription, br#"{"type":"message"}"#).expect("encrypted");
        let mut secret = web_push_native::Auth::default();
        secret.copy_from_slice(&auth);
        let plain = web_push_native::decrypt(body, &browser, &secret).expect("decrypts");
        assert_eq!(plain, br#"{"type":"message"}"#);
        assert_eq!(topic("room:1").len(), 32);
        assert_ne!(topic("room:1"), topic("room:2"));
    }
}
