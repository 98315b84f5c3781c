//! Attachments end to end (PROTOCOL.md section 6): uploads over HTTP, posts
//! over the WebSocket, downloads by token and by signed URL, on SQLite and —
//! with `CHAT_TEST_POSTGRES_URL` — on PostgreSQL (those tests say when they
//! skip).

mod support;

use std::time::Duration;

use chat_server::Config;
use chat_store_sql::testing::TempSchema;
use serde_json::{Value, json};
use support::{TestServer, group_with, token};

/// An 800×600 PNG with a gradient, made here so that its bytes are known.
fn png(width: u32, height: u32) -> Vec<u8> {
    let image = image::RgbImage::from_fn(width, height, |x, y| image::Rgb([(x % 256) as u8, (y % 256) as u8, 100]));
    let mut out = std::io::Cursor::new(Vec::new());
    image.write_to(&mut out, image::ImageFormat::Png).expect("encode a PNG");
    out.into_inner()
}

/// Uploads `bytes` as `name` (with a content type the client claims) and
/// answers the status and body.
async fn upload(server: &TestServer, user_token: &str, name: &str, claimed: &str, bytes: Vec<u8>) -> (u16, Value) {
    let part = reqwest::multipart::Part::bytes(bytes).file_name(name.to_string()).mime_str(claimed).expect("mime");
    let form = reqwest::multipart::Form::new().part("file", part);
    let response = server
        .http
        .post(server.url("/v1/attachments"))
        .bearer_auth(user_token)
        .multipart(form)
        .send()
        .await
        .expect("upload");
    support::status_and_json(response).await
}

async fn uploaded(server: &TestServer, user: &str, name: &str, bytes: Vec<u8>) -> Value {
    let (status, body) = upload(server, &token(user), name, "application/octet-stream", bytes).await;
    assert_eq!(status, 201, "{body}");
    body
}

/// GET of a path, with a bearer token or none, and extra headers.
async fn fetch(server: &TestServer, path: &str, bearer: Option<&str>, headers: &[(&str, &str)]) -> reqwest::Response {
    let url = if path.starts_with("http") { path.to_string() } else { server.url(path) };
    let mut request = server.http.get(url);
    if let Some(t) = bearer {
        request = request.bearer_auth(t);
    }
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    request.send().await.expect("GET")
}

async fn status_of(server: &TestServer, path: &str, bearer: Option<&str>) -> u16 {
    fetch(server, path, bearer, &[]).await.status().as_u16()
}

async fn bytes_of(server: &TestServer, path: &str, bearer: Option<&str>) -> Vec<u8> {
    let response = fetch(server, path, bearer, &[]).await;
    assert_eq!(response.status().as_u16(), 200, "GET {path}");
    response.bytes().await.expect("body").to_vec()
}

fn plain_path(attachment: &Value) -> String {
    format!("/v1/attachments/{}", attachment["id"].as_str().expect("id"))
}

fn signed(attachment: &Value, field: &str) -> String {
    attachment[field].as_str().unwrap_or_else(|| panic!("{field} in {attachment}")).to_string()
}

/// The directory the test server keeps attachments in (beside its database).
fn files_on_disk(dir: &std::path::Path) -> Vec<String> {
    let mut out = Vec::new();
    let root = dir.join("chat-attachments");
    for shard in std::fs::read_dir(&root).into_iter().flatten().flatten() {
        if shard.file_name() == ".spool" {
            for f in std::fs::read_dir(shard.path()).into_iter().flatten().flatten() {
                out.push(format!(".spool/{}", f.file_name().to_string_lossy()));
            }
            continue;
        }
        for f in std::fs::read_dir(shard.path()).into_iter().flatten().flatten() {
            out.push(f.file_name().to_string_lossy().into_owned());
        }
    }
    out.sort();
    out
}

/// A server on SQLite, or on a fresh PostgreSQL schema.
async fn server_on(schema: Option<&TempSchema>, tweak: impl FnOnce(&mut Config)) -> TestServer {
    let url = schema.map(|s| s.url());
    TestServer::start_with(move |config| {
        if let Some(url) = url {
            config.database_url = url;
        }
        support::unthrottle(config);
        tweak(config);
    })
    .await
}

async fn round_trip(schema: Option<&TempSchema>) {
    let server = server_on(schema, |_| {}).await;
    let mut ada = server.connect("ada").await;
    let mut bob = server.connect("bob").await;
    let carol = token("carol");
    let _carol_session = server.connect("carol").await;
    let room = group_with(&mut ada, "private", &["bob"]).await;
    bob.ok("room:join", json!({"room_id": room})).await;

    let picture = png(800, 600);
    let image = uploaded(&server, "ada", "holiday photo.png", picture.clone()).await;
    assert_eq!(image["content_type"], "image/png");
    assert_eq!((image["width"].as_u64(), image["height"].as_u64()), (Some(800), Some(600)));
    assert_eq!(image["size"], picture.len());
    assert_eq!(image["name"], "holiday photo.png");
    let notes = b"line one\nline two\n".to_vec();
    let text = uploaded(&server, "ada", "notes.txt", notes.clone()).await;
    assert_eq!(text["content_type"], "text/plain; charset=utf-8");
    assert!(text.get("thumbnail_url").is_none() && text.get("width").is_none(), "{text}");

    // Before it is posted, only the uploader may read it.
    assert_eq!(bytes_of(&server, &plain_path(&image), Some(&token("ada"))).await, picture);
    assert_eq!(status_of(&server, &plain_path(&image), Some(&token("bob"))).await, 404);
    assert_eq!(status_of(&server, &plain_path(&image), None).await, 401, "no credentials");

    let data = json!({"room_id": room, "client_msg_id": "m1", "body": "", "attachments": [image["id"], text["id"]]});
    let message = ada.ok("message:send", data).await["message"].clone();
    let files = message["attachments"].as_array().expect("attachments").clone();
    assert_eq!(files.len(), 2);
    assert_eq!(files[0]["id"], image["id"]);
    assert_eq!(files[0]["width"], 800);
    assert_eq!(bob.expect_event("message:new").await["message"], message, "members get the same message");

    // A member, by token and by the signed URLs; the thumbnail is an image
    // of at most 320 px.
    assert_eq!(bytes_of(&server, &plain_path(&image), Some(&token("bob"))).await, picture);
    assert_eq!(bytes_of(&server, &signed(&files[0], "url"), None).await, picture);
    assert_eq!(bytes_of(&server, &signed(&files[1], "url"), None).await, notes);
    let thumbnail = bytes_of(&server, &signed(&files[0], "thumbnail_url"), None).await;
    let decoded = image::load_from_memory(&thumbnail).expect("a thumbnail that decodes");
    assert_eq!((decoded.width(), decoded.height()), (320, 240));
    // Not a member: as if it did not exist. A forged or expired link: 401.
    assert_eq!(status_of(&server, &plain_path(&image), Some(&carol)).await, 404);
    let forged = signed(&files[0], "url").replace("sig=", "sig=0").chars().take(200).collect::<String>();
    assert_eq!(status_of(&server, &forged, None).await, 401);
    let expired = format!("{}?exp=1000&sig={}", plain_path(&image), "0".repeat(32));
    assert_eq!(status_of(&server, &expired, None).await, 401);
    assert_eq!(status_of(&server, "/v1/attachments/not-an-id", Some(&token("ada"))).await, 404);

    // History and a later join carry signed URLs too.
    let history = bob.ok("room:history", json!({"room_id": room})).await;
    let listed = &history["messages"][0]["attachments"][0];
    assert_eq!(bytes_of(&server, &signed(listed, "url"), None).await, picture);

    // A file belongs to one message; someone else's is unknown.
    let again = json!({"room_id": room, "client_msg_id": "m2", "body": "again", "attachments": [image["id"]]});
    assert_eq!(ada.fail("message:send", again).await, "conflict");
    let theirs = uploaded(&server, "bob", "b.txt", b"bob's".to_vec()).await;
    let stolen = json!({"room_id": room, "client_msg_id": "m3", "body": "x", "attachments": [theirs["id"]]});
    assert_eq!(ada.fail("message:send", stolen).await, "not_found");
    let twice = uploaded(&server, "ada", "t.txt", b"twice".to_vec()).await;
    let doubled =
        json!({"room_id": room, "client_msg_id": "m4", "body": "x", "attachments": [twice["id"], twice["id"]]});
    assert_eq!(ada.fail("message:send", doubled).await, "invalid");
    // A retry of the first send answers the stored message.
    let retry = json!({"room_id": room, "client_msg_id": "m1", "body": "", "attachments": [image["id"], text["id"]]});
    assert_eq!(ada.ok("message:send", retry).await["message"]["id"], message["id"]);

    // Leaving the room ends a member's access; deleting the message ends everyone's.
    bob.ok("room:leave", json!({"room_id": room})).await;
    assert_eq!(status_of(&server, &plain_path(&image), Some(&token("bob"))).await, 404, "after leaving");
    assert_eq!(status_of(&server, &plain_path(&image), Some(&token("ada"))).await, 200, "the uploader still");
    ada.ok("message:delete", json!({"room_id": room, "message_id": message["id"]})).await;
    assert_eq!(status_of(&server, &plain_path(&image), Some(&token("ada"))).await, 404, "uploader, after delete");
    assert_eq!(status_of(&server, &signed(&files[0], "url"), None).await, 404, "signed, after delete");
    assert_eq!(status_of(&server, &signed(&files[0], "thumbnail_url"), None).await, 404);
    server.stop().await.expect("clean stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_are_uploaded_posted_and_served_to_members_on_sqlite() {
    round_trip(None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_are_uploaded_posted_and_served_to_members_on_postgres() {
    let Some(schema) = TempSchema::create("files_are_uploaded_posted_and_served_to_members_on_postgres").await else {
        return;
    };
    round_trip(Some(&schema)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_type_comes_from_the_bytes_and_only_safe_types_are_inline() {
    let server = server_on(None, |_| {}).await;
    let ada = token("ada");
    // HTML that claims to be a PNG is HTML, and downloads.
    let (status, lying) =
        upload(&server, &ada, "cat.png", "image/png", b"<!DOCTYPE html><script>x()</script>".to_vec()).await;
    assert_eq!(status, 201, "{lying}");
    assert!(lying["content_type"].as_str().is_some_and(|t| t.starts_with("text/html")), "{lying}");
    let response = fetch(&server, &plain_path(&lying), Some(&ada), &[]).await;
    let header = |name: &str| response.headers().get(name).and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
    assert!(header("content-type").starts_with("text/html"));
    assert_eq!(header("x-content-type-options"), "nosniff");
    assert!(header("content-disposition").starts_with("attachment;"), "{}", header("content-disposition"));
    assert!(header("content-security-policy").contains("sandbox"));
    // SVG downloads too.
    let (_, svg) =
        upload(&server, &ada, "x.svg", "image/svg+xml", b"<svg xmlns='http://www.w3.org/2000/svg'/>".to_vec()).await;
    assert_eq!(svg["content_type"], "image/svg+xml");
    let response = fetch(&server, &plain_path(&svg), Some(&ada), &[]).await;
    assert!(response.headers()["content-disposition"].to_str().expect("ascii").starts_with("attachment;"));
    // A PNG sent as a download is a PNG, shown inline, with its name in UTF-8.
    let (_, real) = upload(&server, &ada, "été.bin", "application/octet-stream", png(10, 10)).await;
    assert_eq!(real["content_type"], "image/png");
    let response = fetch(&server, &plain_path(&real), Some(&ada), &[]).await;
    let disposition = response.headers()["content-disposition"].to_str().expect("ascii").to_string();
    assert!(
        disposition.starts_with("inline;") && disposition.contains("filename*=UTF-8''%C3%A9t%C3%A9.bin"),
        "{disposition}"
    );
    // A name with a path keeps only its last part.
    let (_, named) = upload(&server, &ada, "../../etc/passwd", "text/plain", b"root".to_vec()).await;
    assert_eq!(named["name"], "passwd");
    // A form without `file`, or not a form at all.
    let form = reqwest::multipart::Form::new().text("other", "x");
    let response = server.http.post(server.url("/v1/attachments")).bearer_auth(&ada).multipart(form).send().await;
    assert_eq!(response.expect("POST").status().as_u16(), 400);
    let response = server.http.post(server.url("/v1/attachments")).bearer_auth(&ada).json(&json!({})).send().await;
    assert_eq!(response.expect("POST").status().as_u16(), 400);
    let (status, _) = upload(&server, "not a token", "a.txt", "text/plain", b"x".to_vec()).await;
    assert_eq!(status, 401);
    let (status, empty) = upload(&server, &ada, "empty.txt", "text/plain", Vec::new()).await;
    assert_eq!((status, empty["error"]["code"].as_str()), (400, Some("invalid")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ranges_and_etags_follow_rfc_9110() {
    let server = server_on(None, |_| {}).await;
    let ada = token("ada");
    let bytes: Vec<u8> = (0..=255u8).cycle().take(100_000).collect();
    let file = uploaded(&server, "ada", "data.bin", bytes.clone()).await;
    let path = plain_path(&file);
    let part = fetch(&server, &path, Some(&ada), &[("range", "bytes=1000-1999")]).await;
    assert_eq!(part.status().as_u16(), 206);
    assert_eq!(part.headers()["content-range"], "bytes 1000-1999/100000");
    assert_eq!(part.bytes().await.expect("body").to_vec(), bytes[1000..2000]);
    let tail = fetch(&server, &path, Some(&ada), &[("range", "bytes=-10")]).await;
    assert_eq!(tail.status().as_u16(), 206);
    assert_eq!(tail.bytes().await.expect("body").to_vec(), bytes[99_990..]);
    let past = fetch(&server, &path, Some(&ada), &[("range", "bytes=100000-")]).await;
    assert_eq!(past.status().as_u16(), 416);
    assert_eq!(past.headers()["content-range"], "bytes */100000");
    let whole = fetch(&server, &path, Some(&ada), &[]).await;
    assert_eq!(whole.headers()["accept-ranges"], "bytes");
    let etag = whole.headers()["etag"].to_str().expect("etag").to_string();
    let again = fetch(&server, &path, Some(&ada), &[("if-none-match", etag.as_str())]).await;
    assert_eq!(again.status().as_u16(), 304);
    // A range for another version of the file is ignored.
    let stale = fetch(&server, &path, Some(&ada), &[("range", "bytes=0-9"), ("if-range", "\"other\"")]).await;
    assert_eq!(stale.status().as_u16(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_over_the_limit_is_refused_and_nothing_is_kept() {
    let server = server_on(None, |c| c.max_attachment_bytes = 50_000).await;
    let ada = token("ada");
    let (status, body) = upload(&server, &ada, "big.bin", "application/octet-stream", vec![7; 50_001]).await;
    assert_eq!((status, body["error"]["code"].as_str()), (413, Some("too_large")), "{body}");
    let (status, _) = upload(&server, &ada, "fits.bin", "application/octet-stream", vec![7; 50_000]).await;
    assert_eq!(status, 201);
    let dir = server.stop().await.expect("clean stop");
    let kept = files_on_disk(dir.path());
    assert_eq!(kept.len(), 1, "only the file that fit, no spool leftovers: {kept:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quota_bounds_each_users_files_and_deleting_frees_it() {
    // Each file counts at least 64 KiB: three fit in 200 000 bytes, not four.
    let server = server_on(None, |c| {
        c.attachment_quota_bytes = 200_000;
        c.visitor_attachment_quota_bytes = 70_000;
    })
    .await;
    let mut ada = server.connect("ada").await;
    let room = group_with(&mut ada, "private", &[]).await;
    let mut ids = Vec::new();
    for i in 0..3 {
        ids.push(uploaded(&server, "ada", &format!("f{i}.txt"), b"small".to_vec()).await["id"].clone());
    }
    let (status, body) = upload(&server, &token("ada"), "f3.txt", "text/plain", b"one more".to_vec()).await;
    assert_eq!((status, body["error"]["code"].as_str()), (413, Some("too_large")), "{body}");
    assert!(body["error"]["message"].as_str().is_some_and(|m| m.contains("quota")), "{body}");
    // Someone else's quota is theirs.
    uploaded(&server, "bob", "b.txt", b"bob".to_vec()).await;
    // Deleting the message that carries a file gives its room back.
    let data = json!({"room_id": room, "client_msg_id": "q", "body": "", "attachments": [ids[0]]});
    let message = ada.ok("message:send", data).await["message"].clone();
    ada.ok("message:delete", json!({"room_id": room, "message_id": message["id"]})).await;
    uploaded(&server, "ada", "f4.txt", b"fits again".to_vec()).await;
    // Visitors get less.
    let (status, visitor) = server.post("/v1/visitor-sessions", &json!({}), None).await;
    assert_eq!(status, 201, "{visitor}");
    let visitor_token = visitor["token"].as_str().expect("a visitor token");
    let (status, _) = upload(&server, visitor_token, "v.txt", "text/plain", b"v".to_vec()).await;
    assert_eq!(status, 201);
    let (status, _) = upload(&server, visitor_token, "v2.txt", "text/plain", b"v".to_vec()).await;
    assert_eq!(status, 413, "a visitor's quota holds one file here");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_never_posted_and_deleted_messages_files_are_removed() {
    let server = server_on(None, |c| {
        c.attachment_orphan_after_s = 1;
        c.attachment_cleanup_s = 1;
    })
    .await;
    let mut ada = server.connect("ada").await;
    let room = group_with(&mut ada, "private", &[]).await;
    let orphan = uploaded(&server, "ada", "orphan.txt", b"never posted".to_vec()).await;
    let posted = uploaded(&server, "ada", "kept.png", png(40, 40)).await;
    let doomed = uploaded(&server, "ada", "doomed.txt", b"deleted later".to_vec()).await;
    let data = json!({"room_id": room, "client_msg_id": "k", "body": "", "attachments": [posted["id"]]});
    ada.ok("message:send", data).await;
    let data = json!({"room_id": room, "client_msg_id": "d", "body": "", "attachments": [doomed["id"]]});
    let message = ada.ok("message:send", data).await["message"].clone();
    ada.ok("message:delete", json!({"room_id": room, "message_id": message["id"]})).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    while status_of(&server, &plain_path(&orphan), Some(&token("ada"))).await != 404 {
        assert!(tokio::time::Instant::now() < deadline, "the orphan was not removed within 15 s");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    // Give the round that removed it time to take the deleted message's file too.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(status_of(&server, &plain_path(&posted), Some(&token("ada"))).await, 200, "a posted file stays");
    let dir = server.stop().await.expect("clean stop");
    let id = |v: &Value| v["id"].as_str().expect("id").to_string();
    let kept = files_on_disk(dir.path());
    assert_eq!(kept, [id(&posted), format!("{}.thumb", id(&posted))], "only the posted file and its thumbnail");
}

/// With a broker, processes on one database must share their attachment
/// storage: one whose local directory is not the others' refuses to start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_process_with_another_local_directory_than_the_others_refuses_to_start() {
    let Some(schema) =
        TempSchema::create("a_process_with_another_local_directory_than_the_others_refuses_to_start").await
    else {
        return;
    };
    let Some(broker) = chat_broker::testing::BrokerServer::nats().await else { return };
    let shared = tempfile::tempdir().expect("dir");
    let other = tempfile::tempdir().expect("dir");
    let config = |dir: &std::path::Path| {
        let mut config = support::base_config(dir);
        config.database_url = schema.url();
        config.broker_url = Some(broker.url());
        config.broker_prefix = format!("att{}", std::process::id());
        config.attachments_url = Some(format!("file://{}", dir.join("files").display()));
        config
    };
    let serve = |config: Config| async move {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(chat_server::run(listener, config, async move {
            let _ = stopped.await;
        }));
        (stop, task)
    };
    let (stop_a, a) = serve(config(shared.path())).await;
    // Give the first process the time to start and leave its marker.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(!a.is_finished(), "the first process serves");
    let (_stop_b, b) = serve(config(other.path())).await;
    let refused = tokio::time::timeout(Duration::from_secs(20), b).await.expect("refused in time").expect("task");
    let message = format!("{:#}", refused.expect_err("another directory is refused"));
    assert!(message.contains("is not the one the other processes"), "{message}");
    let (stop_c, c) = serve(config(shared.path())).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(!c.is_finished(), "a process on the shared directory starts");
    for (stop, task) in [(stop_a, a), (stop_c, c)] {
        let _ = stop.send(());
        tokio::time::timeout(Duration::from_secs(10), task).await.expect("stops").expect("task").expect("clean run");
    }
}
