//! The browser side, embedded in the binary: the chat page (`/`), the
//! support widget (`/widget.js`) and the client library both are built on
//! (`/chat-client.js`, with TypeScript declarations in `/chat-client.d.ts`),
//! and the page's service worker for Web Push (`/push-sw.js`, served from the
//! root so that its scope can be the whole site).
//!
//! The files live in `web/` beside this crate and are compiled in with
//! `include_bytes!`, so serving them needs no front-end build and no files at
//! run time. Every answer carries an `ETag` (a hash computed at compile time)
//! and `Cache-Control: no-cache`: browsers keep a copy but ask each time
//! whether it is still current, so an upgraded server is picked up at once and
//! an unchanged file costs a 304 (browsers also check a service worker's
//! script at least once a day whatever it says). The page gets a
//! Content-Security-Policy that allows scripts, styles, connections and
//! workers from its own origin only, and lets only the allowed origins
//! (`CHAT_ALLOWED_ORIGINS`) frame it.

use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use crate::config::OriginPolicy;

/// One embedded file and how it is served.
#[derive(Debug)]
pub(crate) struct Asset {
    /// The URL path it is served at.
    pub(crate) path: &'static str,
    pub(crate) body: &'static [u8],
    pub(crate) content_type: &'static str,
    /// A strong validator: FNV-1a of the body, computed at compile time.
    etag: u64,
    kind: Kind,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// The chat page: scripts from this origin only, framed by the allowed origins only.
    Page,
    /// Scripts and styles of the page and the widget. The widget's files are
    /// loaded by other sites' pages, so they may be read cross-origin
    /// (`Cross-Origin-Resource-Policy: cross-origin`); CORS headers for the
    /// module import come from the router's CORS layer and its allow-list.
    Script,
}

const fn fnv1a(bytes: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    let mut i = 0;
    while i < bytes.len() {
        hash ^= bytes[i] as u64;
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
        i += 1;
    }
    hash
}

macro_rules! asset {
    ($path:literal, $file:literal, $content_type:literal, $kind:expr) => {{
        const BODY: &[u8] = include_bytes!(concat!("../web/", $file));
        Asset { path: $path, body: BODY, content_type: $content_type, etag: fnv1a(BODY), kind: $kind }
    }};
}

/// Every embedded file.
pub(crate) static ASSETS: &[Asset] = &[
    asset!("/", "index.html", "text/html; charset=utf-8", Kind::Page),
    asset!("/app.js", "app.js", "text/javascript; charset=utf-8", Kind::Script),
    asset!("/app.css", "app.css", "text/css; charset=utf-8", Kind::Script),
    asset!("/chat-client.js", "chat-client.js", "text/javascript; charset=utf-8", Kind::Script),
    asset!("/chat-client.d.ts", "chat-client.d.ts", "application/typescript; charset=utf-8", Kind::Script),
    asset!("/widget.js", "widget.js", "text/javascript; charset=utf-8", Kind::Script),
    asset!("/push-sw.js", "push-sw.js", "text/javascript; charset=utf-8", Kind::Script),
];

/// The page may load scripts, styles and images from its own origin, open
/// WebSockets and HTTP calls to it, and register its service worker
/// (`/push-sw.js`) from it; nothing inline, no plugins. Who may frame it is
/// appended from the allowed origins.
pub const PAGE_CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
     connect-src 'self'; worker-src 'self'; base-uri 'none'; form-action 'none'";

/// The chat page's framing headers, made once from the allowed origins: with
/// none listed, no one may frame the page (`frame-ancestors 'none'` and
/// `X-Frame-Options: DENY`); with a list, the page itself and those origins
/// may (`frame-ancestors 'self' <origins>`), so that a product can embed it
/// for its signed-in users; with `*`, any page may.
#[derive(Debug, Clone)]
pub(crate) struct PageHeaders {
    csp: HeaderValue,
    deny_framing: bool,
}

impl PageHeaders {
    pub(crate) fn new(origins: &OriginPolicy) -> Self {
        let (ancestors, deny_framing) = match origins {
            OriginPolicy::Any => ("*".to_owned(), false),
            OriginPolicy::List(list) => {
                let sources: Vec<&str> = list.iter().map(String::as_str).filter(|o| is_origin_source(o)).collect();
                if sources.is_empty() {
                    ("'none'".to_owned(), true)
                } else {
                    (format!("'self' {}", sources.join(" ")), false)
                }
            }
        };
        let csp = format!("{PAGE_CSP}; frame-ancestors {ancestors}");
        let csp = HeaderValue::from_str(&csp).unwrap_or_else(|_| {
            HeaderValue::from_static(concat!(
                "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; ",
                "connect-src 'self'; worker-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
            ))
        });
        PageHeaders { csp, deny_framing }
    }
}

/// Whether an allowed origin can stand in a CSP source list as it is: a
/// scheme, `://` and a host with an optional port, nothing that could end the
/// directive or the header.
fn is_origin_source(origin: &str) -> bool {
    let Some((scheme, authority)) = origin.split_once("://") else { return false };
    !scheme.is_empty()
        && scheme.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"+.-".contains(&b))
        && !authority.is_empty()
        && authority.bytes().all(|b| b.is_ascii_alphanumeric() || b".-:[]".contains(&b))
}

fn static_header(name: &'static str, value: &'static str) -> (HeaderName, HeaderValue) {
    (HeaderName::from_static(name), HeaderValue::from_static(value))
}

impl Asset {
    fn etag(&self) -> String {
        format!("\"{:016x}\"", self.etag)
    }

    fn matches(&self, headers: &HeaderMap) -> bool {
        let etag = self.etag();
        headers
            .get_all(header::IF_NONE_MATCH)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(|tag| tag.trim().trim_start_matches("W/"))
            .any(|tag| tag == "*" || tag == etag)
    }

    fn respond(&self, request: &Request, page: &PageHeaders) -> Response {
        let mut headers = HeaderMap::new();
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
        if let Ok(etag) = HeaderValue::from_str(&self.etag()) {
            headers.insert(header::ETAG, etag);
        }
        headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
        match self.kind {
            Kind::Page => {
                headers.insert(header::CONTENT_SECURITY_POLICY, page.csp.clone());
                if page.deny_framing {
                    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
                }
                for (name, value) in [
                    static_header("referrer-policy", "no-referrer"),
                    static_header("cross-origin-opener-policy", "same-origin"),
                ] {
                    headers.insert(name, value);
                }
            }
            Kind::Script => {
                headers.insert(
                    HeaderName::from_static("cross-origin-resource-policy"),
                    HeaderValue::from_static("cross-origin"),
                );
            }
        }
        if self.matches(request.headers()) {
            return (StatusCode::NOT_MODIFIED, headers).into_response();
        }
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(self.content_type));
        (StatusCode::OK, headers, self.body).into_response()
    }
}

/// The embedded file at `path`, if there is one.
pub(crate) fn find(path: &str) -> Option<&'static Asset> {
    let path = if path == "/index.html" { "/" } else { path };
    ASSETS.iter().find(|a| a.path == path)
}

/// Serves the embedded file the request's path names.
pub(crate) async fn serve(State(state): State<crate::AppState>, request: Request) -> Response {
    match find(request.uri().path()) {
        Some(asset) => asset.respond(&request, &state.page_headers),
        None => crate::http::not_found().await.into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_allowed_origins_may_frame_the_page() {
        let csp = |policy: &OriginPolicy| {
            let headers = PageHeaders::new(policy);
            (headers.csp.to_str().expect("ascii").to_owned(), headers.deny_framing)
        };
        let (none, deny) = csp(&OriginPolicy::List(Vec::new()));
        assert!(none.ends_with("frame-ancestors 'none'") && deny, "{none}");
        let list = OriginPolicy::parse("https://shop.example, http://localhost:3000");
        let (listed, deny) = csp(&list);
        assert!(listed.ends_with("frame-ancestors 'self' https://shop.example http://localhost:3000"), "{listed}");
        assert!(!deny);
        assert!(csp(&OriginPolicy::Any).0.ends_with("frame-ancestors *"));
        // Nothing that could end the directive gets in.
        let hostile = OriginPolicy::List(vec!["https://a.example; script-src *".into(), "javascript:alert(1)".into()]);
        let (safe, deny) = csp(&hostile);
        assert!(safe.ends_with("frame-ancestors 'none'") && deny, "{safe}");
    }

    #[test]
    fn every_asset_is_found_and_distinct() {
        for asset in ASSETS {
            assert!(!asset.body.is_empty(), "{} is empty", asset.path);
            assert_eq!(find(asset.path).map(|a| a.path), Some(asset.path));
        }
        assert_eq!(find("/index.html").map(|a| a.path), Some("/"));
        assert!(find("/nope.js").is_none());
        let tags: std::collections::HashSet<u64> = ASSETS.iter().map(|a| a.etag).collect();
        assert_eq!(tags.len(), ASSETS.len(), "each file has its own ETag");
    }

    #[test]
    fn the_service_worker_is_served_from_the_root_as_a_script() {
        // A service worker's scope is at most the folder of its script: at
        // the root, it covers the page's deep links (`/#room=…`).
        let worker = find("/push-sw.js").expect("the service worker is embedded");
        assert_eq!(worker.content_type, "text/javascript; charset=utf-8");
        assert_eq!(worker.kind, Kind::Script);
        let body = std::str::from_utf8(worker.body).expect("utf-8");
        for handler in ["'push'", "'notificationclick'"] {
            assert!(body.contains(&format!("addEventListener({handler}")), "no {handler} handler");
        }
        // The page's CSP lets it register the worker, and only from its own origin.
        assert!(PAGE_CSP.contains("worker-src 'self'"), "{PAGE_CSP}");
    }

    #[test]
    fn if_none_match_lists_and_weak_tags() {
        let asset = &ASSETS[0];
        let table = [
            (asset.etag(), true),
            (format!("W/{}", asset.etag()), true),
            (format!("\"other\", {}", asset.etag()), true),
            ("*".to_owned(), true),
            ("\"other\"".to_owned(), false),
        ];
        for (given, expected) in table {
            let mut headers = HeaderMap::new();
            headers.insert(header::IF_NONE_MATCH, HeaderValue::from_str(&given).expect("header"));
            assert_eq!(asset.matches(&headers), expected, "{given}");
        }
    }
}
