//! The browser side served by the server itself: the chat page, the widget and
//! the client library with their content types and headers, conditional
//! requests, CORS for the widget's host pages, and the dev-login route that
//! exists only when the operator turns it on.

mod support;

use reqwest::StatusCode;
use reqwest::header::{self, HeaderMap};
use serde_json::json;
use support::{TestServer, status_and_json};

fn header<'a>(headers: &'a HeaderMap, name: &str) -> &'a str {
    headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_asset_has_its_type_and_headers() {
    let server = TestServer::start().await;
    // path, content type, whether it is the page (with a CSP) or a script
    // that other sites may load (with CORP cross-origin), a text it must hold.
    let table = [
        ("/", "text/html; charset=utf-8", true, "<script type=\"module\" src=\"/app.js\">"),
        ("/index.html", "text/html; charset=utf-8", true, "<script type=\"module\" src=\"/app.js\">"),
        ("/app.js", "text/javascript; charset=utf-8", false, "from '/chat-client.js'"),
        ("/app.css", "text/css; charset=utf-8", false, "@media (max-width: 720px)"),
        ("/chat-client.js", "text/javascript; charset=utf-8", false, "export class ChatClient"),
        ("/chat-client.d.ts", "application/typescript; charset=utf-8", false, "export class ChatClient"),
        ("/widget.js", "text/javascript; charset=utf-8", false, "attachShadow"),
        ("/push-sw.js", "text/javascript; charset=utf-8", false, "addEventListener('notificationclick'"),
    ];
    for (path, content_type, page, needle) in table {
        let response = server.http.get(server.url(path)).send().await.expect("GET");
        assert_eq!(response.status(), StatusCode::OK, "{path}");
        let headers = response.headers().clone();
        assert_eq!(header(&headers, "content-type"), content_type, "{path}");
        assert_eq!(header(&headers, "cache-control"), "no-cache", "{path}");
        assert_eq!(header(&headers, "x-content-type-options"), "nosniff", "{path}");
        let etag = header(&headers, "etag").to_owned();
        assert!(etag.starts_with('"') && etag.len() == 18, "{path}: etag {etag:?}");
        if page {
            let csp = header(&headers, "content-security-policy");
            for directive in [
                "default-src 'none'",
                "script-src 'self'",
                "connect-src 'self'",
                "worker-src 'self'",
                "frame-ancestors 'none'",
            ] {
                assert!(csp.contains(directive), "{path}: {directive} missing from {csp:?}");
            }
            assert!(!csp.contains("unsafe-inline") && !csp.contains("unsafe-eval"), "{csp}");
            assert_eq!(header(&headers, "x-frame-options"), "DENY");
        } else {
            assert!(headers.get("content-security-policy").is_none(), "{path}");
            assert_eq!(header(&headers, "cross-origin-resource-policy"), "cross-origin", "{path}");
        }
        let body = response.text().await.expect("body");
        assert!(body.contains(needle), "{path} does not contain {needle:?}");

        // The same ETag makes a 304 without a body; another one the whole file.
        let again = server.http.get(server.url(path)).header(header::IF_NONE_MATCH, &etag).send().await.expect("GET");
        assert_eq!(again.status(), StatusCode::NOT_MODIFIED, "{path}");
        assert_eq!(header(again.headers(), "etag"), etag);
        assert!(again.bytes().await.expect("body").is_empty());
        let other = server.http.get(server.url(path)).header(header::IF_NONE_MATCH, "\"0\"").send().await.expect("GET");
        assert_eq!(other.status(), StatusCode::OK, "{path}");
        assert_eq!(other.text().await.expect("body"), body);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_allowed_origins_may_frame_the_page() {
    let server =
        TestServer::start_with(|c| c.allowed_origins = "https://app.example, http://localhost:3000".into()).await;
    let response = server.http.get(server.url("/")).send().await.expect("GET");
    let headers = response.headers();
    let csp = header(headers, "content-security-policy");
    assert!(csp.ends_with("frame-ancestors 'self' https://app.example http://localhost:3000"), "{csp}");
    assert!(headers.get("x-frame-options").is_none(), "X-Frame-Options cannot list origins; the CSP decides");
    // Scripts are never framed, so they carry no framing headers either way.
    let script = server.http.get(server.url("/app.js")).send().await.expect("GET");
    assert!(script.headers().get("content-security-policy").is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_loads_only_files_the_server_has() {
    let server = TestServer::start().await;
    let page = server.http.get(server.url("/")).send().await.expect("GET").text().await.expect("body");
    let mut references = Vec::new();
    for attribute in ["src=\"", "href=\""] {
        for (i, _) in page.match_indices(attribute) {
            let rest = &page[i + attribute.len()..];
            references.push(rest[..rest.find('"').expect("closing quote")].to_owned());
        }
    }
    assert!(references.len() >= 2, "{references:?}");
    for reference in references {
        assert!(reference.starts_with('/'), "{reference} is not on this server");
        let status = server.http.get(server.url(&reference)).send().await.expect("GET").status();
        assert_eq!(status, StatusCode::OK, "{reference}");
    }
    // An unknown file is the API's 404, not the page.
    let (status, body) = server.get("/nope.js", None).await;
    assert_eq!(status, 404);
    assert_eq!(body["error"]["code"], "not_found");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn widget_files_are_readable_from_allowed_origins_only() {
    let server = TestServer::start_with(|c| c.allowed_origins = "http://shop.example".into()).await;
    for path in ["/widget.js", "/chat-client.js"] {
        let allowed =
            server.http.get(server.url(path)).header(header::ORIGIN, "http://shop.example").send().await.expect("GET");
        assert_eq!(allowed.status(), StatusCode::OK);
        assert_eq!(header(allowed.headers(), "access-control-allow-origin"), "http://shop.example", "{path}");
        let other =
            server.http.get(server.url(path)).header(header::ORIGIN, "http://evil.example").send().await.expect("GET");
        assert!(other.headers().get("access-control-allow-origin").is_none(), "{path}");
    }
    // The visitor session the widget asks for follows the same list.
    let preflight = server
        .http
        .request(reqwest::Method::OPTIONS, server.url("/v1/visitor-sessions"))
        .header(header::ORIGIN, "http://shop.example")
        .header("access-control-request-method", "POST")
        .header("access-control-request-headers", "content-type")
        .send()
        .await
        .expect("OPTIONS");
    assert!(preflight.status().is_success());
    assert_eq!(header(preflight.headers(), "access-control-allow-origin"), "http://shop.example");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dev_login_is_not_there_by_default() {
    let server = TestServer::start().await;
    let (status, body) = server.get("/v1/dev-login", None).await;
    assert_eq!((status, body["error"]["code"].clone()), (404, json!("not_found")));
    let (status, body) = server.post("/v1/dev-login", &json!({"name": "Ada"}), None).await;
    assert_eq!((status, body["error"]["code"].clone()), (404, json!("not_found")));
    assert!(body.get("token").is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dev_login_gives_a_working_token_for_a_name_when_on() {
    let server = TestServer::start_with(|c| c.dev_login = true).await;
    let (status, body) = server.get("/v1/dev-login", None).await;
    assert_eq!((status, body), (200, json!({"enabled": true})));

    let (status, body) =
        server.post("/v1/dev-login", &json!({"name": "  Ada Lovelace ", "roles": ["support"]}), None).await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["user"], json!({"id": "ada-lovelace", "name": "Ada Lovelace", "roles": ["support"]}));
    let token = body["token"].as_str().expect("token");
    let ada = server.connect_token(token).await;
    assert_eq!(ada.ready["user"], body["user"]);

    // The same name is the same user.
    let (_, again) = server.post("/v1/dev-login", &json!({"name": "ada lovelace"}), None).await;
    assert_eq!(again["user"]["id"], "ada-lovelace");

    let bad = [json!({"name": "!!!"}), json!({"name": ""}), json!({}), json!({"name": "x", "roles": [""]})];
    for request in bad {
        let (status, body) = server.post("/v1/dev-login", &request, None).await;
        assert_eq!((status, body["error"]["code"].clone()), (400, json!("invalid")), "{request}");
    }
    let response = server.http.post(server.url("/v1/dev-login")).send().await.expect("POST");
    let (status, _) = status_and_json(response).await;
    assert_eq!(status, 400, "a body is required");
}
