//! What a subscription may name: endpoints that are `https` on a public
//! address, keys that are what browsers make. A user hands us the URL, so it
//! is checked like any URL an attacker chooses: when it is added (its form,
//! and its host when that is an address), and again at every connection
//! (the addresses its name resolves to, so that a name cannot be pointed at
//! a private address after it was accepted).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chat_core::push::MAX_ENDPOINT_BYTES;
use serde::Deserialize;
use utoipa::ToSchema;
use webhook_reqwest::dns::{Addrs, Name, Resolve, Resolving};

/// A subscription as `PushSubscription.toJSON()` gives it (the body of
/// `POST /v1/push/subscriptions`).
#[derive(Debug, Clone, Deserialize, ToSchema)]
pub struct NewSubscription {
    /// The push service's URL for this subscription.
    pub endpoint: String,
    /// The subscription's keys.
    pub keys: SubscriptionKeys,
}

/// `{"p256dh","auth"}`, base64url.
#[derive(Debug, Clone, Deserialize, ToSchema)]
pub struct SubscriptionKeys {
    /// The browser's P-256 public key (65 bytes, uncompressed).
    pub p256dh: String,
    /// The browser's authentication secret (16 bytes).
    pub auth: String,
}

fn decode(text: &str, what: &str) -> chat_core::Result<Vec<u8>> {
    URL_SAFE_NO_PAD
        .decode(text.trim_end_matches('='))
        .map_err(|_| chat_core::Error::invalid(format!("keys.{what} is not base64url")))
}

/// Checks a subscription: an endpoint of at most [`MAX_ENDPOINT_BYTES`],
/// `https` (or `http` when private endpoints are allowed) with a host and
/// no credentials, not an address that is not public (unless allowed); a
/// `p256dh` that is a point on P-256 and an `auth` of 16 bytes. Returns the
/// endpoint parsed.
pub(crate) fn validate(new: &NewSubscription, allow_private: bool) -> chat_core::Result<url::Url> {
    if new.endpoint.len() > MAX_ENDPOINT_BYTES {
        return Err(chat_core::Error::invalid(format!("endpoint is longer than {MAX_ENDPOINT_BYTES} bytes")));
    }
    let url = url::Url::parse(&new.endpoint).map_err(|_| chat_core::Error::invalid("endpoint is not a URL"))?;
    match url.scheme() {
        "https" => {}
        "http" if allow_private => {}
        _ => return Err(chat_core::Error::invalid("endpoint must be an https URL")),
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(chat_core::Error::invalid("endpoint must not carry credentials"));
    }
    let public = match url.host() {
        None => return Err(chat_core::Error::invalid("endpoint has no host")),
        Some(url::Host::Ipv4(ip)) => is_public(IpAddr::V4(ip)),
        Some(url::Host::Ipv6(ip)) => is_public(IpAddr::V6(ip)),
        Some(url::Host::Domain(name)) => !is_local_name(name),
    };
    if !public && !allow_private {
        return Err(chat_core::Error::invalid("endpoint must be on a public address"));
    }
    let point = decode(&new.keys.p256dh, "p256dh")?;
    if point.len() != 65 || p256::PublicKey::from_sec1_bytes(&point).is_err() {
        return Err(chat_core::Error::invalid("keys.p256dh is not an uncompressed P-256 public key"));
    }
    if decode(&new.keys.auth, "auth")?.len() != 16 {
        return Err(chat_core::Error::invalid("keys.auth is not 16 bytes"));
    }
    Ok(url)
}

/// Names that never lead to a public address.
fn is_local_name(name: &str) -> bool {
    let name = name.trim_end_matches('.').to_ascii_lowercase();
    name == "localhost" || name.ends_with(".localhost") || name.ends_with(".local") || name.ends_with(".internal")
}

/// Whether an address is one a public push service may have: not loopback,
/// private, link-local, shared (CGNAT), documentation, benchmarking,
/// multicast, reserved or unspecified, in IPv4 or IPv6 (IPv4-mapped and
/// NAT64 addresses are judged by the IPv4 address they carry).
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_public_v4(v4),
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_public_v4(v4);
            }
            let s = v6.segments();
            if s[0] == 0x64 && s[1] == 0xff9b && s[2..6] == [0, 0, 0, 0] {
                let [a, b] = s[6].to_be_bytes();
                let [c, d] = s[7].to_be_bytes();
                return is_public_v4(Ipv4Addr::new(a, b, c, d));
            }
            !(v6.is_unspecified()
                || v6.is_loopback()
                || v6.is_multicast()
                || (s[0] & 0xfe00) == 0xfc00 // unique local
                || (s[0] & 0xffc0) == 0xfe80 // link-local
                || (s[0] & 0xffc0) == 0xfec0 // site-local (deprecated)
                || (s[0] == 0x2001 && s[1] == 0x0db8) // documentation
                || (s[0] == 0x2001 && s[1] < 0x0200) // IETF protocol assignments (Teredo, ORCHID, …)
                || v6 == Ipv6Addr::UNSPECIFIED)
        }
    }
}

fn is_public_v4(ip: Ipv4Addr) -> bool {
    let [a, b, c, _] = ip.octets();
    !(ip.is_unspecified()
        || ip.is_loopback()
        || ip.is_private()
        || ip.is_link_local()
        || ip.is_broadcast()
        || ip.is_documentation()
        || ip.is_multicast()
        || a == 0
        || (a == 100 && (64..128).contains(&b)) // shared address space (CGNAT)
        || (a == 192 && b == 0 && c == 0) // IETF protocol assignments
        || (a == 198 && (18..20).contains(&b)) // benchmarking
        || a >= 240) // reserved
}

/// Resolves names for push requests, keeping only public addresses: a
/// name that resolves to none is an error, so a push never reaches a
/// private network however its endpoint's name is pointed.
#[derive(Debug, Clone, Copy)]
pub(crate) struct PublicOnly;

impl Resolve for PublicOnly {
    fn resolve(&self, name: Name) -> Resolving {
        Box::pin(async move {
            let host = name.as_str().to_owned();
            let found: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let public: Vec<SocketAddr> = found.into_iter().filter(|a| is_public(a.ip())).collect();
            if public.is_empty() {
                let err: Box<dyn std::error::Error + Send + Sync> =
                    format!("{host} resolves to no public address").into();
                return Err(err);
            }
            let addrs: Addrs = Box::new(public.into_iter());
            Ok(addrs)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sub(endpoint: &str) -> NewSubscription {
        let point = p256::SecretKey::from_slice(&[5u8; 32]).expect("valid").public_key();
        use p256::elliptic_curve::sec1::ToEncodedPoint as _;
        NewSubscription {
            endpoint: endpoint.into(),
            keys: SubscriptionKeys {
                p256dh: URL_SAFE_NO_PAD.encode(point.to_encoded_point(false).as_bytes()),
                auth: URL_SAFE_NO_PAD.encode([1u8; 16]),
            },
        }
    }

    #[test]
    fn endpoints_must_be_https_on_public_addresses() {
        let ok = |e: &str, private: bool| validate(&sub(e), private).is_ok();
        assert!(ok("https://fcm.googleapis.com/fcm/send/abc", false));
        assert!(ok("https://updates.push.services.mozilla.com/wpush/v2/x", false));
        assert!(ok("https://93.184.216.34/x", false));
        for bad in [
            "http://push.example.com/x",
            "ftp://push.example.com/x",
            "https://127.0.0.1/x",
            "https://10.1.2.3/x",
            "https://169.254.169.254/latest",
            "https://[::1]/x",
            "https://[fd00::1]/x",
            "https://[::ffff:192.168.0.1]/x",
            "https://localhost/x",
            "https://svc.internal/x",
            "https://user:pw@push.example.com/x",
            "not a url",
        ] {
            assert!(!ok(bad, false), "{bad} is refused");
        }
        assert!(ok("http://127.0.0.1:9/x", true), "allowed for tests and private push services");
        assert!(!ok(&format!("https://push.example.com/{}", "a".repeat(MAX_ENDPOINT_BYTES)), false));
    }

    #[test]
    fn keys_must_be_what_browsers_make() {
        let mut bad = sub("https://push.example.com/x");
        bad.keys.auth = URL_SAFE_NO_PAD.encode([1u8; 15]);
        assert!(validate(&bad, false).is_err());
        let mut bad = sub("https://push.example.com/x");
        bad.keys.p256dh = URL_SAFE_NO_PAD.encode([4u8; 65]);
        assert!(validate(&bad, false).is_err(), "not on the curve");
        let mut bad = sub("https://push.example.com/x");
        bad.keys.p256dh = "***".into();
        assert!(validate(&bad, false).is_err());
    }

    #[test]
    fn public_addresses() {
        for ip in ["8.8.8.8", "2606:4700::1111", "64:ff9b::808:808"] {
            assert!(is_public(ip.parse().expect("ip")), "{ip}");
        }
        for ip in [
            "100.64.0.1",
            "192.0.0.8",
            "198.18.0.1",
            "240.0.0.1",
            "0.1.2.3",
            "fe80::1",
            "64:ff9b::a00:1",
            "2001:db8::1",
        ] {
            assert!(!is_public(ip.parse().expect("ip")), "{ip}");
        }
    }
}
