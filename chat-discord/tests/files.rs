//! Files through the bridge, against the stand-in Discord: a visitor's
//! files are uploaded into the thread (multipart, through the outbox), or
//! named in a line with a link above Discord's limit; an agent's files are
//! copied from Discord's CDN into the chat's storage, so that they outlive
//! Discord's links.

mod support;

use std::time::Duration;

use axum::http::Method;
use chat_core::{Bridge, HistoryQuery};
use serde_json::{Value, json};
use support::*;

/// Bytes that no two files here share.
fn bytes_of(seed: u8, len: usize) -> Vec<u8> {
    (0..len).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed)).collect()
}

fn the_thread(discord: &StandIn) -> Option<u64> {
    discord.lock().threads.first().map(|t| t.0)
}

fn content(message: &Value) -> &str {
    message["content"].as_str().unwrap_or_default()
}

fn attachment_names(message: &Value) -> Vec<String> {
    message["attachments"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|a| a["filename"].as_str().unwrap_or_default().to_owned())
        .collect()
}

/// A visitor's files reach the thread as Discord uploads with identical
/// bytes and their names: with the first post (the forum post), alone (a
/// files-only message), and within Discord's limit only: a larger file is a
/// line with its name, size and a signed link to ours, which its edits keep.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_visitors_files_are_uploaded_into_the_thread() {
    let dir = tempfile::tempdir().expect("dir");
    let discord = StandIn::start().await;
    let mut config = discord.config();
    config.max_upload_bytes = Some(8 * 1024);
    let bridge = std::sync::Arc::new(chat_discord::DiscordBridge::new(config).expect("config"));
    let engine = engine_with_files(memory_store(), bridge.clone(), dir.path(), 1 << 20, "https://chat.example").await;
    let (mut vera, room) = visitor(&engine, "visitor-1", "Vera").await;

    let invoice = bytes_of(1, 5000);
    let file = upload(&engine, "visitor-1", "invoice 2026.pdf", &invoice).await;
    send_files(&mut vera, room, "m1", "here is the invoice", &[&file]).await;
    let photo = bytes_of(2, 3000);
    let file = upload(&engine, "visitor-1", "photo.png", &photo).await;
    send_files(&mut vera, room, "m2", "", &[&file]).await;
    let log = bytes_of(3, 20_000);
    let big = upload(&engine, "visitor-1", "server.log", &log).await;
    let small = "the order number is 1234\n".repeat(4).into_bytes();
    let fits = upload(&engine, "visitor-1", "note.txt", &small).await;
    let sent = send_files(&mut vera, room, "m3", "and the logs", &[&big, &fits]).await;

    eventually("three posts", || the_thread(&discord).is_some_and(|t| discord.thread_messages(t).len() == 3)).await;
    eventually("the outbox drained", || bridge.health().pending == 0).await;
    let thread = discord.lock().threads[0].0;
    let posted = discord.thread_messages(thread);
    assert_eq!(content(&posted[0]), "here is the invoice");
    assert_eq!(attachment_names(&posted[0]), ["invoice 2026.pdf"], "the forum post carries the file");
    assert_eq!(content(&posted[1]), "", "a files-only message");
    assert_eq!(attachment_names(&posted[1]), ["photo.png"]);
    assert_eq!(attachment_names(&posted[2]), ["note.txt"], "only the file within the limit is uploaded");
    let line = format!("📎 server.log (19.5 KiB): <https://chat.example/v1/attachments/{}?exp=", big.id);
    assert!(content(&posted[2]).starts_with(&format!("and the logs\n{line}")), "{}", content(&posted[2]));

    let uploads = discord.lock().uploads.clone();
    let seen: Vec<(&str, &[u8], u64)> =
        uploads.iter().map(|u| (u.filename.as_str(), u.bytes.as_slice(), u.channel)).collect();
    assert_eq!(
        seen,
        [
            ("invoice 2026.pdf", invoice.as_slice(), thread),
            ("photo.png", photo.as_slice(), thread),
            ("note.txt", small.as_slice(), thread),
        ],
        "every upload byte for byte, once"
    );
    assert_eq!(uploads[0].content_type.as_deref(), Some("application/octet-stream"));
    assert_eq!(uploads[2].content_type.as_deref(), Some("text/plain; charset=utf-8"));

    // An edit changes the text; the upload stays, and so does the line.
    edit(&mut vera, room, sent.id, "and the server logs").await;
    eventually("the edit", || content(&discord.thread_messages(thread)[2]).starts_with("and the server logs\n")).await;
    assert!(content(&discord.thread_messages(thread)[2]).contains(&line[..line.len() - 5]));
    assert_eq!(discord.lock().uploads.len(), 3);
    assert_eq!(bridge.health().failed, 0);
    engine.shutdown().await;
}

/// Without a public URL the line names the file and its size only (a
/// relative link would lead nowhere from Discord).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_public_url_a_large_file_is_named_without_a_link() {
    let dir = tempfile::tempdir().expect("dir");
    let discord = StandIn::start().await;
    let mut config = discord.config();
    config.max_upload_bytes = Some(1024);
    let bridge = std::sync::Arc::new(chat_discord::DiscordBridge::new(config).expect("config"));
    let engine = engine_with_files(memory_store(), bridge.clone(), dir.path(), 1 << 20, "").await;
    let (mut vera, room) = visitor(&engine, "visitor-1", "Vera").await;
    let big = upload(&engine, "visitor-1", "scan.jpg", &bytes_of(5, 4096)).await;
    send_files(&mut vera, room, "m1", "", &[&big]).await;
    eventually("the post", || the_thread(&discord).is_some_and(|t| !discord.thread_messages(t).is_empty())).await;
    let thread = discord.lock().threads[0].0;
    assert_eq!(content(&discord.thread_messages(thread)[0]), "📎 scan.jpg (4.0 KiB)");
    assert!(discord.lock().uploads.is_empty());
    engine.shutdown().await;
}

/// A post whose answer was lost is found in Discord rather than uploaded
/// again; and a files-only post that failed is posted, not taken for the
/// earlier files-only post that looks the same.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_post_uploads_its_files_once() {
    let dir = tempfile::tempdir().expect("dir");
    let discord = StandIn::start().await;
    let bridge = bridge_for(&discord);
    let engine = engine_with_files(memory_store(), bridge.clone(), dir.path(), 1 << 20, "").await;
    let (mut vera, room) = visitor(&engine, "visitor-1", "Vera").await;
    send(&mut vera, room, "m0", "hello").await;
    eventually("the thread", || discord.lock().threads.len() == 1).await;
    eventually("the outbox drained", || bridge.health().pending == 0).await;
    let thread = discord.lock().threads[0].0;

    discord.fault(Method::POST, "/webhooks/", Fault::LoseAnswer);
    let first = upload(&engine, "visitor-1", "a.bin", &bytes_of(6, 2000)).await;
    send_files(&mut vera, room, "m1", "", &[&first]).await;
    eventually("posted and retried", || bridge.health().pending == 0 && discord.calls_matching("GET /channels/") > 0)
        .await;
    // The same size again, files only: it looks like the first in Discord.
    discord.fault(Method::POST, "/webhooks/", Fault::Reject(500, json!({"message": "oops", "code": 0})));
    let second = upload(&engine, "visitor-1", "a.bin", &bytes_of(7, 2000)).await;
    send_files(&mut vera, room, "m2", "", &[&second]).await;
    eventually("both posted", || discord.thread_messages(thread).len() == 3).await;
    eventually("the outbox drained", || bridge.health().pending == 0).await;
    tokio::time::sleep(Duration::from_millis(300)).await;

    let uploads = discord.lock().uploads.clone();
    assert_eq!(
        uploads.len(),
        2,
        "each file uploaded once: {:?}",
        uploads.iter().map(|u| u.message).collect::<Vec<_>>()
    );
    assert_eq!(
        (uploads[0].bytes.as_slice(), uploads[1].bytes.as_slice()),
        (bytes_of(6, 2000).as_slice(), bytes_of(7, 2000).as_slice())
    );
    assert_eq!(discord.thread_messages(thread).len(), 3, "no duplicate post");
    assert_eq!(discord.calls_matching("POST /webhooks/"), 3, "m1 (its answer lost), m2 (refused), m2 again");
    assert_eq!(bridge.health().failed, 0);
    engine.shutdown().await;
}

/// An agent's Discord files are copied in: the room's message carries them
/// as the chat's own attachments, byte for byte, still readable once
/// Discord's CDN no longer serves them; a file above the chat's limit is a
/// line instead; the message seen again is not posted or fetched twice; and
/// an edit changes the text and keeps the files and the line.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agents_files_are_copied_in() {
    let dir = tempfile::tempdir().expect("dir");
    let discord = StandIn::start().await;
    let bridge = bridge_for(&discord);
    let engine = engine_with_files(memory_store(), bridge.clone(), dir.path(), 64 * 1024, "").await;
    let (mut vera, room) = visitor(&engine, "visitor-1", "Vera").await;
    send(&mut vera, room, "m0", "hello").await;
    eventually("the thread", || discord.lock().threads.len() == 1).await;
    let thread = discord.lock().threads[0].0;
    eventually("the gateway connected", || bridge.health().connected).await;

    let manual = bytes_of(8, 30_000);
    let huge = bytes_of(9, 100 * 1024);
    let (sent, files) = discord.member_writes_files(
        thread,
        77,
        "Alice",
        &[SUPPORT_ROLE],
        "see the manual",
        &[("manual.pdf", &manual), ("huge.bin", &huge)],
    );
    let m = next_message(&mut vera).await;
    assert_eq!(m.sender_id.as_str(), "discord:77");
    assert_eq!(
        m.body,
        "see the manual\n📎 huge.bin (100.0 KiB) was not copied: larger than the chat's limit of 64.0 KiB"
    );
    assert_eq!(m.attachments.len(), 1);
    let copy = &m.attachments[0];
    assert_eq!((copy.name.as_str(), copy.size), ("manual.pdf", 30_000));
    assert_eq!(file_bytes(&engine, "visitor-1", &copy.id).await, manual, "the room reads the same bytes");
    assert_eq!(discord.lock().cdn_hits, 1, "only the file within the limit was fetched");

    // Discord's link expires; ours does not.
    discord.cdn_forgets(files[0]);
    assert_eq!(file_bytes(&engine, "visitor-1", &copy.id).await, manual);

    // The message seen again (a replayed dispatch, a catch-up) is not
    // posted again, nor its files fetched.
    let again = discord.thread_messages(thread).into_iter().find(|m| m["id"] == json!(sent.to_string()));
    discord.dispatch("MESSAGE_CREATE", again.expect("the agent's message"));
    discord.human_writes(thread, 77, "Alice", "anything else?", true);
    assert_eq!(next_message(&mut vera).await.body, "anything else?", "nothing came in between");

    // An edit changes the text; the file and the line stay.
    discord.human_edits(thread, sent, "see the manual, page 3");
    let edited = loop {
        if let chat_core::Event::MessageUpdated(u) = next_event(&mut vera).await {
            break u.message;
        }
    };
    assert!(
        edited.body.starts_with("see the manual, page 3\n📎 huge.bin (100.0 KiB) was not copied"),
        "{}",
        edited.body
    );
    assert_eq!(edited.attachments.len(), 1);

    let history = engine.store().history(room, HistoryQuery { limit: 100, ..HistoryQuery::default() }).await;
    let agents =
        history.expect("history").messages.into_iter().filter(|m| m.sender_id.as_str() == "discord:77").count();
    assert_eq!(agents, 2, "one copy of each agent message");
    assert_eq!(discord.lock().cdn_hits, 1);
    engine.shutdown().await;
}

/// A file the CDN no longer serves becomes a line, and the message is
/// posted with the rest.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_that_cannot_be_fetched_becomes_a_line() {
    let dir = tempfile::tempdir().expect("dir");
    let discord = StandIn::start().await;
    let bridge = bridge_for(&discord);
    let engine = engine_with_files(memory_store(), bridge.clone(), dir.path(), 64 * 1024, "").await;
    let (mut vera, room) = visitor(&engine, "visitor-1", "Vera").await;
    send(&mut vera, room, "m0", "hello").await;
    eventually("the thread", || discord.lock().threads.len() == 1).await;
    let thread = discord.lock().threads[0].0;
    eventually("the gateway connected", || bridge.health().connected).await;

    discord.fault(Method::GET, "/attachments/", Fault::Reject(404, json!({})));
    discord.member_writes_files(thread, 77, "Alice", &[SUPPORT_ROLE], "", &[("gone.png", &bytes_of(10, 500))]);
    let m = next_message(&mut vera).await;
    assert_eq!(m.body, "📎 gone.png (500 B) was not copied: Discord answered 404");
    assert!(m.attachments.is_empty());
    engine.shutdown().await;
}

/// The guild's upload limit, as a button press tells it, decides what is
/// uploaded: a file above it is a line, not a call Discord refuses.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_guilds_upload_limit_comes_from_discord() {
    let dir = tempfile::tempdir().expect("dir");
    let discord = StandIn::start().await;
    discord.lock().attachment_size_limit = 4096;
    let bridge = bridge_for(&discord);
    let engine = engine_with_files(memory_store(), bridge.clone(), dir.path(), 1 << 20, "").await;
    let (mut vera, room) = visitor(&engine, "visitor-1", "Vera").await;
    send(&mut vera, room, "m0", "hello").await;
    eventually("the thread", || discord.lock().threads.len() == 1).await;
    let thread = discord.lock().threads[0].0;
    eventually("the gateway connected", || bridge.health().connected).await;
    let press = discord.press_button(thread, 77, "Alice", &[SUPPORT_ROLE], &format!("chat:claim:{room}"));
    eventually("the press answered", || discord.interaction_answer(press).is_some()).await;

    let big = upload(&engine, "visitor-1", "photo.jpg", &bytes_of(11, 6000)).await;
    let small = upload(&engine, "visitor-1", "small.jpg", &bytes_of(12, 3000)).await;
    send_files(&mut vera, room, "m1", "two photos", &[&big, &small]).await;
    eventually("the post", || discord.thread_messages(thread).len() == 2).await;
    let posted = &discord.thread_messages(thread)[1];
    assert_eq!(content(posted), "two photos\n📎 photo.jpg (5.9 KiB)");
    assert_eq!(attachment_names(posted), ["small.jpg"]);
    assert_eq!(bridge.health().failed, 0, "nothing was refused");
    engine.shutdown().await;
}

/// A guild whose limit is lower than the bridge knew refuses the upload
/// (413): the message is posted with its files as lines rather than lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_discord_refuses_as_too_large_become_lines() {
    let dir = tempfile::tempdir().expect("dir");
    let discord = StandIn::start().await;
    discord.lock().attachment_size_limit = 1000;
    let bridge = bridge_for(&discord);
    let engine = engine_with_files(memory_store(), bridge.clone(), dir.path(), 1 << 20, "").await;
    let (mut vera, room) = visitor(&engine, "visitor-1", "Vera").await;
    let file = upload(&engine, "visitor-1", "photo.jpg", &bytes_of(13, 2000)).await;
    send_files(&mut vera, room, "m1", "a photo", &[&file]).await;
    let file = upload(&engine, "visitor-1", "second.jpg", &bytes_of(14, 2000)).await;
    let sent = send_files(&mut vera, room, "m2", "", &[&file]).await;
    eventually("both posts", || the_thread(&discord).is_some_and(|t| discord.thread_messages(t).len() == 2)).await;
    let thread = discord.lock().threads[0].0;
    let posted = discord.thread_messages(thread);
    assert_eq!(content(&posted[0]), "a photo\n📎 photo.jpg (2.0 KiB)", "the forum post");
    assert_eq!(content(&posted[1]), "📎 second.jpg (2.0 KiB)", "a webhook post");
    assert!(discord.lock().uploads.is_empty());
    // Its edits keep the line.
    edit(&mut vera, room, sent.id, "the second").await;
    eventually("the edit", || content(&discord.thread_messages(thread)[1]) == "the second\n📎 second.jpg (2.0 KiB)")
        .await;
    assert_eq!(bridge.health().failed, 0);
    engine.shutdown().await;
}
