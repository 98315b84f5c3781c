//! chat-server with the Discord bridge on, against the stand-in Discord of
//! `chat_discord::testing`: a visitor over the real WebSocket, an agent in
//! the forum thread, `/health`, and the admin routes of the bridge's outbox.

mod support;

use std::time::Duration;

use axum::http::Method;
use chat_discord::testing::{FORUM, Fault, GUILD, SUPPORT_ROLE, StandIn};
use chat_server::DiscordSettings;
use serde_json::{Value, json};
use support::*;

/// Polls `check` until it gives a value, for up to ten seconds.
async fn eventually<T, F: Future<Output = Option<T>>>(what: &str, check: impl FnMut() -> F) -> T {
    within(Duration::from_secs(10), what, check).await
}

/// Polls `check` until it gives a value, for up to `bound`.
async fn within<T, F: Future<Output = Option<T>>>(bound: Duration, what: &str, mut check: impl FnMut() -> F) -> T {
    let deadline = tokio::time::Instant::now() + bound;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(tokio::time::Instant::now() < deadline, "not within {bound:?}: {what}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// A server whose bridge talks to `discord`.
async fn server_for(discord: &StandIn) -> TestServer {
    let settings = discord_settings(discord);
    TestServer::start_with(move |config| config.discord = settings).await
}

/// A visitor session from the widget's route, connected, with a joined support room.
async fn visitor(server: &TestServer, name: &str) -> (Client, String) {
    let (status, body) = server.post("/v1/visitor-sessions", &json!({"name": name}), None).await;
    assert_eq!(status, 201, "{body}");
    let mut client = server.connect_token(body["token"].as_str().expect("token")).await;
    let room = create_room(&mut client, json!({"kind": "support"})).await;
    let room = room["id"].as_str().expect("room.id").to_owned();
    client.ok("room:join", json!({"room_id": room})).await;
    (client, room)
}

async fn admin_get(server: &TestServer, path: &str, key: Option<&str>) -> (u16, Value) {
    let mut request = server.http.get(server.url(path));
    if let Some(key) = key {
        request = request.header("x-api-key", key);
    }
    status_and_json(request.send().await.expect("GET")).await
}

fn contents(messages: &[Value]) -> Vec<String> {
    messages.iter().map(|m| m["content"].as_str().unwrap_or_default().to_owned()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_visitor_is_answered_from_discord_and_failed_jobs_are_retried_by_an_operator() {
    let discord = StandIn::start().await;
    let server = server_for(&discord).await;
    let (mut vera, room) = visitor(&server, "Vera").await;

    // The visitor's first message opens the room's thread.
    send_message(&mut vera, &room, "m1", "hello, my order is late").await;
    let thread = eventually("the thread", || async {
        let d = discord.lock();
        d.threads.first().map(|t| (t.0, t.1.clone(), t.2))
    })
    .await;
    assert_eq!(thread.1, format!("Vera · {}", &room[room.len() - 8..]));
    assert_eq!(thread.2, FORUM);
    let thread = thread.0;
    assert_eq!(contents(&discord.thread_messages(thread)), ["hello, my order is late"]);

    // `/health` shows the bridge once its gateway is up.
    let health = eventually("the bridge connected in /health", || async {
        let (status, body) = server.get("/health", None).await;
        (status == 200 && body["bridges"]["discord"]["connected"] == true).then_some(body)
    })
    .await;
    assert_eq!(health["status"], "ok", "{health}");
    assert_eq!(health["bridges"]["discord"]["failed"], 0, "{health}");

    // An agent answers in the thread; the visitor's socket gets it.
    discord.human_writes(thread, 77, "Alice", "Hi Vera, let me check", true);
    let new = vera.expect_event("message:new").await;
    assert_eq!(new["message"]["body"], "Hi Vera, let me check", "{new}");
    assert_eq!(new["message"]["sender_id"], "discord:77", "{new}");
    assert_eq!(new["message"]["room_id"], room.as_str(), "{new}");

    // Discord refuses the next post for good: the job fails, and stays listed.
    let refused = json!({"message": "Invalid Form Body", "code": 50035});
    discord.fault(Method::POST, "/webhooks/", Fault::Reject(400, refused));
    send_message(&mut vera, &room, "m2", "it is order #1234").await;
    let path = "/v1/admin/bridges/discord/jobs?status=failed";
    let jobs = eventually("a failed job", || async {
        let (status, body) = admin_get(&server, path, Some(API_KEY)).await;
        assert_eq!(status, 200, "{body}");
        let jobs = body["jobs"].as_array().cloned().unwrap_or_default();
        (!jobs.is_empty()).then_some(jobs)
    })
    .await;
    assert_eq!(jobs.len(), 1, "{jobs:?}");
    let job = &jobs[0];
    assert_eq!(
        (job["kind"].as_str(), job["status"].as_str(), job["queue"].as_str()),
        (Some("post"), Some("failed"), Some(room.as_str()))
    );
    assert!(job["last_error"].as_str().is_some_and(|e| e.contains("400")), "{job}");
    let id = job["id"].as_i64().expect("job id");
    let (status, _) = admin_get(&server, path, None).await;
    assert_eq!(status, 401, "the job list needs the API key");
    let (status, _) = admin_get(&server, "/v1/admin/bridges/matrix/jobs", Some(API_KEY)).await;
    assert_eq!(status, 404, "an unknown bridge");
    let (status, body) = admin_get(&server, "/v1/admin/bridges/discord/jobs?status=stuck", Some(API_KEY)).await;
    assert_eq!(status, 400, "{body}");
    let health = eventually("the failed job in /health", || async {
        let (_, body) = server.get("/health", None).await;
        (body["bridges"]["discord"]["failed"] == 1).then_some(body)
    })
    .await;
    assert!(health["bridges"]["discord"]["last_error"].as_str().is_some_and(|e| e.contains("400")), "{health}");
    assert_eq!(contents(&discord.thread_messages(thread)).len(), 2, "nothing more was posted");

    // The operator retries it: it is posted, once, and no longer failed.
    let retry = format!("/v1/admin/bridges/discord/jobs/{id}/retry");
    let (status, _) = server.post(&retry, &json!({}), None).await;
    assert_eq!(status, 401, "retrying needs the API key");
    let (status, body) = server.post(&retry, &json!({}), Some(API_KEY)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["retried"], true);
    eventually("the retried post", || async { (discord.thread_messages(thread).len() == 3).then_some(()) }).await;
    let posted = discord.thread_messages(thread);
    assert_eq!(contents(&posted)[2], "it is order #1234");
    assert_eq!(posted[2]["author"]["username"], "Vera");
    let (_, body) = admin_get(&server, path, Some(API_KEY)).await;
    assert_eq!(body["jobs"], json!([]), "no failed job is left");
    let (status, _) = server.post(&retry, &json!({}), Some(API_KEY)).await;
    assert_eq!(status, 404, "the job is done, so there is nothing to retry");
    eventually("health counts no failure", || async {
        let (_, body) = server.get("/health", None).await;
        (body["bridges"]["discord"]["failed"] == 0 && body["bridges"]["discord"]["pending"] == 0).then_some(())
    })
    .await;

    vera.close().await;
    server.stop().await.expect("a clean stop");
}

#[tokio::test]
async fn a_token_without_the_ids_is_a_startup_error() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let dir = tempfile::tempdir().expect("temp dir");
    let mut config = base_config(dir.path());
    config.discord = DiscordSettings {
        token: Some("a-token".into()),
        guild_id: Some(GUILD),
        forum_channel_id: Some(FORUM),
        ..DiscordSettings::default()
    };
    let err = chat_server::run(listener, config, std::future::pending()).await.expect_err("refused at start");
    let err = format!("{err:#}");
    assert!(err.contains("DISCORD_SUPPORT_ROLE_ID"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_present_in_discord_count_in_availability_and_health() {
    let discord = StandIn::start().await;
    let server = server_for(&discord).await;
    eventually("the gateway", || async { discord.gateway_connected().then_some(()) }).await;
    let (status, body) = server.get("/v1/support/availability", None).await;
    assert_eq!((status, &body), (200, &json!({"available": false, "online_agents": 0})));

    let role: &[u64] = &[SUPPORT_ROLE];
    discord.guild_create(
        &[(77, "Alice", role), (78, "Bob", role), (79, "Carol", &[][..])],
        &[(77, "online"), (79, "online")],
    );
    discord.presence(78, "dnd");
    eventually("two agents available", || async {
        let (_, body) = server.get("/v1/support/availability", None).await;
        (body == json!({"available": true, "online_agents": 2})).then_some(())
    })
    .await;
    let (_, health) = server.get("/health", None).await;
    assert_eq!(health["support"], json!({"available": true, "online_agents": 2}), "{health}");
    assert_eq!(health["bridges"]["discord"]["details"]["online_agents"], "2", "{health}");

    // An agent connected directly adds to those in Discord.
    let _dora = server.connect_token(&token_with_roles("dora", &["support"])).await;
    eventually("three agents", || async {
        let (_, body) = server.get("/v1/support/availability", None).await;
        (body["online_agents"] == 3).then_some(())
    })
    .await;
    server.stop().await.expect("a clean stop");
}

/// The Discord gateway refuses connections for a while, so serenity's
/// resume and every restart fail (issue #21, defect 8): within seconds
/// `/health` shows the bridge disconnected (degraded) and availability
/// counts no Discord agent; once the gateway is back, the bridge is
/// connected again with a fresh snapshot of who is online.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_gateway_shows_in_health_and_availability_until_it_is_back() {
    let discord = StandIn::start().await;
    let role: &[u64] = &[SUPPORT_ROLE];
    discord.guild(&[(77, "Alice", role), (78, "Bob", role)], &[(77, "online")]);
    let server = server_for(&discord).await;
    let health_and_availability = || async {
        let (_, health) = server.get("/health", None).await;
        let (_, availability) = server.get("/v1/support/availability", None).await;
        (health, availability)
    };
    within(Duration::from_secs(10), "connected, Alice available", || async {
        let (health, availability) = health_and_availability().await;
        (health["bridges"]["discord"]["connected"] == true && availability["online_agents"] == 1).then_some(())
    })
    .await;

    discord.gateway_down(true);
    let (health, availability) = within(Duration::from_secs(5), "the bridge disconnected", || async {
        let (health, availability) = health_and_availability().await;
        (health["bridges"]["discord"]["connected"] == false).then_some((health, availability))
    })
    .await;
    assert_eq!(health["status"], "degraded", "{health}");
    assert_eq!(health["support"], json!({"available": false, "online_agents": 0}), "{health}");
    assert_eq!(health["bridges"]["discord"]["details"]["online_agents"], "0", "{health}");
    assert_eq!(availability, json!({"available": false, "online_agents": 0}));
    // Still so while serenity's restarts keep failing.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (health, availability) = health_and_availability().await;
    assert_eq!(
        (&health["bridges"]["discord"]["connected"], &availability["online_agents"]),
        (&json!(false), &json!(0))
    );

    discord.gateway_down(false);
    discord.presence(78, "online");
    let (health, availability) = within(Duration::from_secs(30), "connected again", || async {
        let (health, availability) = health_and_availability().await;
        (health["bridges"]["discord"]["connected"] == true).then_some((health, availability))
    })
    .await;
    assert_eq!(health["status"], "ok", "{health}");
    assert_eq!(
        availability,
        json!({"available": true, "online_agents": 2}),
        "Alice, and Bob who came online meanwhile"
    );
    server.stop().await.expect("a clean stop");
}

/// Two servers with the bridge on one PostgreSQL database: one holds the
/// bridge's lease and runs the outbox and the gateway, the other stands by
/// (healthy, showing the holder's agents) while its visitor's messages still
/// reach Discord. When the holder stops, the other takes over, and every
/// message is posted once, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_servers_on_one_database_run_the_bridge_once_and_take_over() {
    let Some(schema) =
        chat_store_sql::testing::TempSchema::create("two_servers_on_one_database_run_the_bridge_once_and_take_over")
            .await
    else {
        return;
    };
    let discord = StandIn::start().await;
    let settings = discord_settings(&discord);
    let on_the_database = |settings: DiscordSettings| {
        let url = schema.url();
        move |config: &mut chat_server::Config| {
            config.database_url = url;
            config.discord = settings;
        }
    };
    let health_of = |server: &TestServer| {
        let request = server.http.get(server.url("/health"));
        async move { status_and_json(request.send().await.expect("GET /health")).await.1 }
    };
    let first = TestServer::start_with(on_the_database(settings.clone())).await;
    eventually("the first server holds the lease", || async {
        let health = health_of(&first).await;
        (health["bridges"]["discord"]["details"]["role"] == "active").then_some(())
    })
    .await;
    let second = TestServer::start_with(on_the_database(settings)).await;
    let health = eventually("the second server up", || async {
        let health = health_of(&second).await;
        health["bridges"]["discord"].is_object().then_some(health)
    })
    .await;
    let bridge = &health["bridges"]["discord"];
    assert_eq!(
        (&bridge["details"]["role"], &bridge["standby"], &bridge["connected"]),
        (&json!("standby"), &json!(true), &json!(false)),
        "{health}"
    );
    assert_eq!(health["status"], "ok", "standing by is not degraded: {health}");

    eventually("the holder's gateway", || async { discord.gateway_connected().then_some(()) }).await;
    discord.guild_create(&[(77, "Alice", &[SUPPORT_ROLE][..])], &[(77, "online")]);
    eventually("the standby shows the holder's agents", || async {
        let (_, body) = second.get("/v1/support/availability", None).await;
        (body == json!({"available": true, "online_agents": 1})).then_some(())
    })
    .await;

    let (mut vera, room) = visitor(&second, "Vera").await;
    send_message(&mut vera, &room, "m1", "message 1").await;
    send_message(&mut vera, &room, "m2", "message 2").await;
    let thread = eventually("two posts", || async {
        let d = discord.lock();
        d.threads.first().map(|t| t.0).filter(|t| d.messages.get(t).is_some_and(|m| m.len() == 2))
    })
    .await;

    first.stop().await.expect("a clean stop");
    eventually("the second server took over", || async {
        let health = health_of(&second).await;
        (health["bridges"]["discord"]["details"]["role"] == "active").then_some(())
    })
    .await;
    send_message(&mut vera, &room, "m3", "message 3").await;
    send_message(&mut vera, &room, "m4", "message 4").await;
    eventually("four posts", || async { (discord.thread_messages(thread).len() >= 4).then_some(()) }).await;
    eventually("the new holder connected", || async {
        let health = health_of(&second).await;
        (health["bridges"]["discord"]["connected"] == true && health["bridges"]["discord"]["pending"] == 0)
            .then_some(())
    })
    .await;
    assert_eq!(
        contents(&discord.thread_messages(thread)),
        ["message 1", "message 2", "message 3", "message 4"],
        "each message once, in order"
    );
    assert_eq!(discord.calls_matching(&format!("POST /channels/{FORUM}/threads")), 1, "one thread");
    vera.close().await;
    second.stop().await.expect("a clean stop");
}

/// Files end to end: a visitor's upload over HTTP reaches the thread as a
/// Discord upload with the same bytes, and an agent's Discord file reaches
/// the visitor as one of ours, served by the server with the same bytes
/// after Discord's CDN stopped serving it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_cross_both_ways_through_the_http_upload() {
    let discord = StandIn::start().await;
    let server = server_for(&discord).await;
    let (status, session) = server.post("/v1/visitor-sessions", &json!({"name": "Vera"}), None).await;
    assert_eq!(status, 201, "{session}");
    let token = session["token"].as_str().expect("token").to_owned();
    let mut vera = server.connect_token(&token).await;
    let room = create_room(&mut vera, json!({"kind": "support"})).await;
    let room = room["id"].as_str().expect("room.id").to_owned();
    vera.ok("room:join", json!({"room_id": room})).await;

    let receipt: Vec<u8> = (0..50_000u32).map(|i| (i % 251) as u8).collect();
    let boundary = "chat-test-boundary";
    let mut form = format!(
        "--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"receipt.bin\"\r\n\
         Content-Type: application/octet-stream\r\n\r\n"
    )
    .into_bytes();
    form.extend_from_slice(&receipt);
    form.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    let response = server
        .http
        .post(server.url("/v1/attachments"))
        .bearer_auth(&token)
        .header("content-type", format!("multipart/form-data; boundary={boundary}"))
        .body(form)
        .send()
        .await
        .expect("upload");
    let (status, file) = status_and_json(response).await;
    assert_eq!(status, 201, "{file}");
    let data = json!({"room_id": room, "client_msg_id": "m1", "body": "my receipt", "attachments": [file["id"]]});
    vera.ok("message:send", data).await;

    let uploaded = eventually("the upload in the thread", || async {
        let d = discord.lock();
        d.uploads.first().map(|u| (u.filename.clone(), u.bytes.clone()))
    })
    .await;
    assert_eq!(uploaded.0, "receipt.bin");
    assert!(uploaded.1 == receipt, "Discord got the same bytes");
    let thread = discord.lock().threads[0].0;
    assert_eq!(contents(&discord.thread_messages(thread)), ["my receipt"]);

    eventually("the gateway", || async { discord.gateway_connected().then_some(()) }).await;
    let manual = b"%PDF-1.7\n a manual, of sorts\n".repeat(100);
    let (_, files) =
        discord.member_writes_files(thread, 77, "Alice", &[SUPPORT_ROLE], "here you go", &[("manual.pdf", &manual)]);
    let new = vera.expect_event("message:new").await;
    assert_eq!(new["message"]["body"], "here you go", "{new}");
    let copy = &new["message"]["attachments"][0];
    assert_eq!((copy["name"].as_str(), copy["content_type"].as_str()), (Some("manual.pdf"), Some("application/pdf")));
    let url = copy["url"].as_str().expect("a signed url").to_owned();
    assert!(url.starts_with("/v1/attachments/"), "ours, not Discord's: {url}");
    discord.cdn_forgets(files[0]);
    let response = server.http.get(server.url(&url)).send().await.expect("GET the copy");
    assert_eq!(response.status().as_u16(), 200);
    let bytes = response.bytes().await.expect("bytes");
    assert!(bytes.as_ref() == manual.as_slice(), "the server serves the same bytes, Discord's link gone");

    vera.close().await;
    server.stop().await.expect("a clean stop");
}
