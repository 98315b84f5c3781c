//! The HTTP API on the same listener: health, support availability, the
//! online list, room history, visitor sessions, the admin API, errors and CORS.

mod support;

use serde_json::{Value, json};
use support::{API_KEY, TestServer, group_with, status_and_json, token, token_with_roles};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_reports_status_and_connections() {
    let server = TestServer::start().await;
    let (status, body) = server.get("/health", None).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["status"], "ok");
    assert_eq!(body["store"], "ok");
    assert_eq!(body["connections"], 0);
    assert!(body["version"].is_string() && body["uptime_s"].is_u64() && body["bridges"].is_object(), "{body}");
    let _a = server.connect("ada").await;
    let _b = server.connect("bob").await;
    let (_, body) = server.get("/health", None).await;
    assert_eq!(body["connections"], 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn support_availability_counts_visible_agents() {
    let server = TestServer::start().await;
    let availability = |body: Value| (body["available"].clone(), body["online_agents"].clone());
    let (status, body) = server.get("/v1/support/availability", None).await;
    assert_eq!(status, 200);
    assert_eq!(availability(body), (json!(false), json!(0)));
    let _customer = server.connect("customer").await;
    let mut agent = server.connect_token(&token_with_roles("agent", &["support"])).await;
    let (_, body) = server.get("/v1/support/availability", None).await;
    assert_eq!(availability(body), (json!(true), json!(1)));
    agent.ok("presence:update", json!({"status": "invisible"})).await;
    let (_, body) = server.get("/v1/support/availability", None).await;
    assert_eq!(availability(body), (json!(false), json!(0)));
    agent.ok("presence:update", json!({"status": "away"})).await;
    let (_, body) = server.get("/v1/support/availability", None).await;
    assert_eq!(availability(body), (json!(true), json!(1)), "away is still visible");
    agent.close().await;
    // The close handshake can finish before the server has dropped the
    // session behind it; the agent must be gone within a moment.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let (_, body) = server.get("/v1/support/availability", None).await;
        if availability(body.clone()) == (json!(false), json!(0)) {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "the agent still counts after closing: {body}");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_online_needs_a_token() {
    let server = TestServer::start().await;
    let _ada = server.connect("ada").await;
    let (status, body) = server.get("/v1/users/online", None).await;
    assert_eq!(status, 401, "{body}");
    assert_eq!(body["error"]["code"], "unauthorized");
    let forged = support::mint_with(
        &json!({"sub": "x", "exp": support::now_secs() + 60}),
        b"wrong-secret-wrong-secret-wrong-secret",
    );
    let (status, _) = server.get("/v1/users/online", Some(&forged)).await;
    assert_eq!(status, 401);
    let (status, body) = server.get("/v1/users/online", Some(&token("bob"))).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["users"], json!([{"user": {"id": "ada", "name": "ada", "roles": []}, "status": "online"}]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn room_messages_pages_for_members_only() {
    let server = TestServer::start().await;
    let mut ada = server.connect("ada").await;
    let room = group_with(&mut ada, "private", &[]).await;
    for i in 1..=12 {
        support::send_message(&mut ada, &room, &format!("m{i}"), &format!("body {i}")).await;
    }
    let ada_token = token("ada");
    let seqs = |body: &Value| support::seqs(body["messages"].as_array().expect("messages"));
    let table = [
        ("", (1..=12).collect::<Vec<u64>>(), false),
        ("?limit=5", (8..=12).collect(), true),
        ("?before_seq=8&limit=5", (3..=7).collect(), true),
        ("?before_seq=3", vec![1, 2], false),
        ("?after_seq=10", vec![11, 12], false),
    ];
    for (query, expected, has_more) in table {
        let (status, body) = server.get(&format!("/v1/rooms/{room}/messages{query}"), Some(&ada_token)).await;
        assert_eq!(status, 200, "{query}: {body}");
        assert_eq!(seqs(&body), expected, "{query}");
        assert_eq!(body["has_more"], has_more, "{query}");
    }
    let (_, body) = server.get(&format!("/v1/rooms/{room}/messages?limit=1"), Some(&ada_token)).await;
    assert_eq!(body["messages"][0]["body"], "body 12");
    assert_eq!(body["messages"][0]["sender_id"], "ada");

    let cases = [
        (format!("/v1/rooms/{room}/messages"), Some(token("eve")), 403, "not_member"),
        (format!("/v1/rooms/{room}/messages"), None, 401, "unauthorized"),
        ("/v1/rooms/not-a-room/messages".to_owned(), Some(ada_token.clone()), 400, "invalid"),
        (format!("/v1/rooms/{room}/messages?limit=0"), Some(ada_token.clone()), 400, "invalid"),
        (format!("/v1/rooms/{room}/messages?limit=many"), Some(ada_token.clone()), 400, "invalid"),
        (
            "/v1/rooms/01900000-0000-7000-8000-000000000000/messages".to_owned(),
            Some(ada_token.clone()),
            404,
            "not_found",
        ),
    ];
    for (path, token, status, code) in cases {
        let (got, body) = server.get(&path, token.as_deref()).await;
        assert_eq!(got, status, "{path}: {body}");
        assert_eq!(body["error"]["code"], code, "{path}");
        assert!(body["error"]["message"].is_string(), "{path}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn visitor_sessions_make_working_tokens_and_are_rate_limited() {
    let server = TestServer::start_with(|c| c.visitor_sessions_per_minute = 2).await;
    let (status, first) = server.post("/v1/visitor-sessions", &json!({"name": "Vera"}), None).await;
    assert_eq!(status, 201, "{first}");
    assert_eq!(first["user"]["name"], "Vera");
    let id = first["user"]["id"].as_str().expect("user.id");
    assert!(id.starts_with("visitor:"), "{id}");
    let client = server.connect_token(first["token"].as_str().expect("token")).await;
    assert_eq!(client.ready["user"], first["user"]);
    // An empty body is fine too.
    let response = server.http.post(server.url("/v1/visitor-sessions")).send().await.expect("POST");
    let (status, second) = status_and_json(response).await;
    assert_eq!(status, 201, "{second}");
    assert_ne!(second["user"]["id"], first["user"]["id"]);
    let (status, third) = server.post("/v1/visitor-sessions", &json!({}), None).await;
    assert_eq!(status, 429, "{third}");
    assert_eq!(third["error"]["code"], "rate_limited");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_api_needs_the_key() {
    let server = TestServer::start().await;
    let user = json!({"id": "agent-1", "name": "Agent One", "roles": ["support"]});
    for key in [None, Some("wrong"), Some("")] {
        let (status, body) = server.post("/v1/admin/users", &user, key).await;
        assert_eq!(status, 401, "{key:?}: {body}");
        assert_eq!(body["error"]["code"], "unauthorized");
        let (status, _) = server.post("/v1/admin/users/agent-1/tokens", &json!({}), key).await;
        assert_eq!(status, 401, "{key:?}");
    }
    let (status, body) = server.post("/v1/admin/users", &user, Some(API_KEY)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["user"], json!({"id": "agent-1", "name": "Agent One", "roles": ["support"]}));
    for bad in [json!({"name": "no id"}), json!({"id": "x"}), json!({"id": "", "name": "empty"}), json!([1])] {
        let (status, body) = server.post("/v1/admin/users", &bad, Some(API_KEY)).await;
        assert_eq!(status, 400, "{bad}: {body}");
        assert_eq!(body["error"]["code"], "invalid");
    }
    let response = server
        .http
        .post(server.url("/v1/admin/users"))
        .header("x-api-key", API_KEY)
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .expect("POST");
    assert_eq!(status_and_json(response).await.0, 400);

    let (status, body) = server.post("/v1/admin/users/nobody/tokens", &json!({}), Some(API_KEY)).await;
    assert_eq!(status, 404, "{body}");
    assert_eq!(body["error"]["code"], "not_found");
    let (status, body) = server.post("/v1/admin/users/agent-1/tokens", &json!({"ttl_s": 600}), Some(API_KEY)).await;
    assert_eq!(status, 200, "{body}");
    assert!(body["expires_at"].is_string(), "{body}");
    let client = server.connect_token(body["token"].as_str().expect("token")).await;
    assert_eq!(client.ready["user"]["id"], "agent-1");
    assert_eq!(client.ready["user"]["roles"], json!(["support"]));
    let (_, availability) = server.get("/v1/support/availability", None).await;
    assert_eq!(availability["online_agents"], 1, "the issued token carries the role");
    let (status, _) = server.post("/v1/admin/users/agent-1/tokens", &json!({"ttl_s": 0}), Some(API_KEY)).await;
    assert_eq!(status, 400);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_api_is_off_without_a_key() {
    let server = TestServer::start_with(|c| c.api_key = None).await;
    let (status, body) = server.post("/v1/admin/users", &json!({"id": "a", "name": "A"}), Some(API_KEY)).await;
    assert_eq!(status, 401, "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_routes_are_404_json() {
    let server = TestServer::start().await;
    for path in ["/nope", "/v1", "/v1/rooms", "/v1/admin"] {
        let (status, body) = server.get(path, None).await;
        assert_eq!(status, 404, "{path}");
        assert_eq!(body["error"]["code"], "not_found", "{path}: {body}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cors_preflight_follows_the_origin_policy() {
    let server = TestServer::start_with(|c| c.allowed_origins = "https://app.example".into()).await;
    for (origin, allowed) in [("https://app.example", true), ("https://evil.example", false)] {
        let response = server
            .http
            .request(reqwest::Method::OPTIONS, server.url("/v1/users/online"))
            .header("origin", origin)
            .header("access-control-request-method", "GET")
            .header("access-control-request-headers", "authorization")
            .send()
            .await
            .expect("OPTIONS");
        let allow = response.headers().get("access-control-allow-origin").map(|v| v.to_str().unwrap_or("").to_owned());
        if allowed {
            assert_eq!(allow.as_deref(), Some(origin), "{origin}");
            let headers =
                response.headers().get("access-control-allow-headers").map(|v| v.to_str().unwrap_or("").to_lowercase());
            assert!(headers.is_some_and(|h| h.contains("authorization")), "{origin}");
        } else {
            assert_eq!(allow, None, "{origin}");
        }
    }
    // A simple request from an allowed origin carries the header as well.
    let response =
        server.http.get(server.url("/health")).header("origin", "https://app.example").send().await.expect("GET");
    assert_eq!(
        response.headers().get("access-control-allow-origin").and_then(|v| v.to_str().ok()),
        Some("https://app.example")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_commands_events_and_commits_behind_the_api_key() {
    let server = TestServer::start().await;
    let url = server.url("/metrics");
    let (status, _) = status_and_json(server.http.get(&url).send().await.expect("GET")).await;
    assert_eq!(status, 401, "with an API key configured, metrics need it");

    let mut ada = server.connect("ada").await;
    let mut bob = server.connect("bob").await;
    let room = group_with(&mut ada, "public", &[]).await;
    bob.ok("room:join", json!({"room_id": room})).await;
    for i in 0..3 {
        support::send_message(&mut ada, &room, &format!("m{i}"), "hello").await;
    }
    assert_eq!(ada.fail("room:join", json!({"room_id": "01a20cb9-9dbf-7690-b804-64b008deb66c"})).await, "not_found");
    for _ in 0..3 {
        bob.expect_event("message:new").await;
    }

    let response = server.http.get(&url).bearer_auth(API_KEY).send().await.expect("GET");
    assert_eq!(response.status(), 200);
    let kind = response.headers()["content-type"].to_str().expect("content type").to_owned();
    assert!(kind.starts_with("application/openmetrics-text"), "{kind}");
    let text = response.text().await.expect("body");
    assert_eq!(support::metric(&text, "chat_connections"), 2.0);
    assert_eq!(support::metric(&text, r#"chat_commands_total{type="message:send",result="ok"}"#), 3.0);
    assert_eq!(support::metric(&text, r#"chat_commands_total{type="room:join",result="not_found"}"#), 1.0);
    assert_eq!(support::metric(&text, r#"chat_events_total{type="message:new"}"#), 3.0);
    assert!(support::metric(&text, "chat_deliveries_total") >= 3.0, "bob got three messages");
    assert_eq!(support::metric(&text, "chat_message_ack_seconds_count"), 3.0);
    assert_eq!(support::metric(&text, "chat_store_commit_batch_size_sum"), 3.0, "three messages committed");
    assert_eq!(support::metric(&text, "chat_store_commit_failures_total"), 0.0);
    assert_eq!(support::metric(&text, "chat_slow_consumer_closes_total"), 0.0);
    // The x-api-key header works too.
    let response = server.http.get(&url).header("x-api-key", API_KEY).send().await.expect("GET");
    assert_eq!(response.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_are_open_without_an_api_key() {
    let server = TestServer::start_with(|config| config.api_key = None).await;
    let response = server.http.get(server.url("/metrics")).send().await.expect("GET");
    assert_eq!(response.status(), 200);
    let text = response.text().await.expect("body");
    assert_eq!(support::metric(&text, "chat_connections"), 0.0);
    assert!(text.ends_with("# EOF\n"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_websocket_endpoint_answers_requests_it_cannot_upgrade() {
    let server = TestServer::start().await;
    let upgrade = [("connection", "Upgrade"), ("upgrade", "websocket")];
    let key = ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==");
    type Header<'a> = (&'a str, &'a str);
    // (request headers, status, the header naming what would be accepted)
    let cases: [(Vec<Header>, u16, Option<Header>); 4] = [
        (vec![], 426, Some(("upgrade", "websocket"))),
        (vec![("connection", "keep-alive"), ("upgrade", "websocket"), key], 426, Some(("upgrade", "websocket"))),
        ([&upgrade[..], &[("sec-websocket-version", "8"), key]].concat(), 426, Some(("sec-websocket-version", "13"))),
        ([&upgrade[..], &[("sec-websocket-version", "13")]].concat(), 400, None),
    ];
    for (headers, status, accepted) in cases {
        let mut request = server.http.get(server.url("/v1/ws"));
        for (name, value) in &headers {
            request = request.header(*name, *value);
        }
        let response = request.send().await.expect("response");
        let named =
            accepted.map(|(name, _)| response.headers().get(name).and_then(|v| v.to_str().ok()).map(str::to_owned));
        let (got, body) = status_and_json(response).await;
        assert_eq!(got, status, "{headers:?}: {body}");
        assert_eq!(body["error"]["code"], "invalid", "{headers:?}: {body}");
        assert!(body["error"]["message"].as_str().is_some_and(|m| !m.is_empty()), "{body}");
        if let (Some(named), Some((_, value))) = (named, accepted) {
            assert_eq!(named.as_deref(), Some(value), "{headers:?}");
        }
    }
    // The same endpoint still upgrades a proper request.
    let mut ada = server.connect("ada").await;
    ada.ok("ping", json!({})).await;
}
