//! The `x-chat-signature` header: `t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>.<body>")>`.
//!
//! The time is signed with the body, so that a receiver that refuses old
//! times (5 minutes is the advice) cannot be fed a recorded delivery later.
//! Each attempt of a delivery is signed anew, with its own time.

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// The header that carries the signature.
pub const SIGNATURE_HEADER: &str = "x-chat-signature";

/// The value of [`SIGNATURE_HEADER`] for `body` sent at `t` (Unix seconds).
pub fn signature(secret: &[u8], t: i64, body: &[u8]) -> String {
    format!("t={t},v1={}", hex(&mac(secret, t, body)))
}

/// Whether `header` is a valid signature of `body` under `secret`, made
/// within `tolerance_s` seconds of `now` (Unix seconds): what a receiver
/// written in Rust checks. Compared in constant time.
pub fn verify(secret: &[u8], header: &str, body: &[u8], now: i64, tolerance_s: i64) -> bool {
    let mut t = None;
    let mut given = Vec::new();
    for part in header.split(',') {
        match part.trim().split_once('=') {
            Some(("t", value)) => t = value.parse::<i64>().ok(),
            Some(("v1", value)) => given.push(value),
            _ => {}
        }
    }
    let Some(t) = t else { return false };
    if (now - t).abs() > tolerance_s {
        return false;
    }
    let expected = hex(&mac(secret, t, body));
    given.iter().any(|v| chat_core::auth::constant_time_eq(v.as_bytes(), expected.as_bytes()))
}

fn mac(secret: &[u8], t: i64, body: &[u8]) -> Vec<u8> {
    // HMAC takes keys of any length; this cannot fail.
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(secret).unwrap_or_else(|_| unreachable!("any key length"));
    mac.update(t.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    mac.finalize().into_bytes().to_vec()
}

fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 15)]));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_signature_is_hmac_sha256_of_time_dot_body_in_hex() {
        // RFC 4231 test case 2 ("Jefe"), with the message split as "<t>.<body>".
        let sig = signature(b"Jefe", 1234, b"what do ya want for nothing?");
        let expected = {
            let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(b"Jefe").expect("key");
            mac.update(b"1234.what do ya want for nothing?");
            hex(&mac.finalize().into_bytes())
        };
        assert_eq!(sig, format!("t=1234,v1={expected}"));
        assert_eq!(hex(&[0x00, 0x0f, 0xa5, 0xff]), "000fa5ff");
    }

    #[test]
    fn verify_checks_key_body_and_time() {
        let body = br#"{"id":"e1"}"#;
        let header = signature(b"sixteen byte key", 1_000, body);
        assert!(verify(b"sixteen byte key", &header, body, 1_100, 300));
        assert!(!verify(b"another key here", &header, body, 1_100, 300), "wrong key");
        assert!(!verify(b"sixteen byte key", &header, br#"{"id":"e2"}"#, 1_100, 300), "changed body");
        assert!(!verify(b"sixteen byte key", &header, body, 1_400, 300), "too old");
        assert!(!verify(b"sixteen byte key", "v1=00", body, 1_000, 300), "no time");
        let later = header.replace("t=1000", "t=1100");
        assert!(!verify(b"sixteen byte key", &later, body, 1_100, 300), "the time is signed");
    }
}
