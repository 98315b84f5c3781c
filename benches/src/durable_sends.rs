//! Durable sends through the engine into SQLite with `synchronous=FULL`.
//!
//! Measures, on this machine: the latency of one fsync'd commit (the ceiling
//! of one-commit-per-message designs), then acked messages per second and ack
//! latency for N concurrent senders, once with group commit (the engine's
//! default) and once with batches of one message.
//!
//! ```text
//! cargo run --release -p chat-benches --bin durable-sends -- [senders] [messages per sender]
//! ```

use std::fs::OpenOptions;
use std::io::Write;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use chat_core::command::{CreateRoom, JoinRoom, SendMessage};
use chat_core::{Command, Engine, EngineConfig, Identity, Output, Reply, RoomKind, UserId, Visibility};
use chat_store_sql::{SqliteConfig, SqliteStore, Synchronous};

/// The median and worst of a few fsyncs of a small write, like a commit.
fn fsync_latency(dir: &std::path::Path) -> anyhow::Result<(Duration, Duration)> {
    let path = dir.join("fsync-probe");
    let mut file = OpenOptions::new().create(true).append(true).open(&path)?;
    let mut samples = Vec::new();
    for _ in 0..200 {
        let start = Instant::now();
        file.write_all(&[0u8; 512])?;
        file.sync_data()?;
        samples.push(start.elapsed());
    }
    samples.sort();
    Ok((samples[samples.len() / 2], samples[samples.len() * 99 / 100]))
}

struct Run {
    messages: usize,
    elapsed: Duration,
    p50: Duration,
    p99: Duration,
}

async fn run(batch: usize, senders: usize, per_sender: usize) -> anyhow::Result<Run> {
    let dir = tempfile::tempdir()?;
    let mut sqlite = SqliteConfig::from_url(format!("sqlite://{}", dir.path().join("bench.db").display()));
    sqlite.synchronous = Synchronous::Full;
    let store = SqliteStore::connect(sqlite).await.context("opening SQLite")?;
    let mut config = EngineConfig::default();
    config.max_commit_batch = batch;
    config.limits.commands_per_second = u32::MAX;
    config.limits.command_burst = u32::MAX;
    let engine = Engine::builder(Arc::new(store)).config(config).start().await?;

    let (mut owner, _) = engine.open_session(Identity::new(UserId::new("owner")?)).await?;
    owner
        .submit(
            None,
            Command::RoomCreate(CreateRoom {
                kind: RoomKind::Group,
                name: Some("bench".into()),
                visibility: Some(Visibility::Public),
                members: vec![],
            }),
        )
        .await;
    let room = match owner.next_output().await {
        Output::Reply { result: Ok(Reply::Room { room }), .. } => room,
        other => anyhow::bail!("creating the room: {other:?}"),
    };

    let start = Instant::now();
    let mut tasks = Vec::new();
    for s in 0..senders {
        let engine = engine.clone();
        tasks.push(tokio::spawn(async move {
            let (mut session, _) = engine.open_session(Identity::new(UserId::new(format!("u{s}"))?)).await?;
            session.submit(None, Command::RoomJoin(JoinRoom { room_id: room.id, since_seq: None })).await;
            let _ = session.next_output().await;
            let mut latencies = Vec::with_capacity(per_sender);
            // Each sender waits for its ack before the next send, as a client
            // that needs each message stored before going on would.
            for i in 0..per_sender {
                let sent = Instant::now();
                let send = SendMessage {
                    room_id: room.id,
                    client_msg_id: format!("{s}-{i}"),
                    body: "x".repeat(200),
                    attachments: vec![],
                    reply_to: None,
                };
                session.submit(None, Command::MessageSend(send)).await;
                loop {
                    match session.next_output().await {
                        Output::Reply { result: Ok(_), .. } => break,
                        Output::Reply { result: Err(e), .. } => anyhow::bail!("send failed: {e}"),
                        Output::Close(reason) => anyhow::bail!("closed: {reason:?}"),
                        _ => continue,
                    }
                }
                latencies.push(sent.elapsed());
            }
            anyhow::Ok(latencies)
        }));
    }
    let mut latencies = Vec::new();
    for task in tasks {
        latencies.extend(task.await??);
    }
    let elapsed = start.elapsed();
    engine.shutdown().await;
    latencies.sort();
    Ok(Run {
        messages: latencies.len(),
        elapsed,
        p50: latencies[latencies.len() / 2],
        p99: latencies[latencies.len() * 99 / 100],
    })
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let senders: usize = args.next().map(|a| a.parse()).transpose()?.unwrap_or(200);
    let per_sender: usize = args.next().map(|a| a.parse()).transpose()?.unwrap_or(50);

    let dir = tempfile::tempdir()?;
    let (fsync_p50, fsync_p99) = fsync_latency(dir.path())?;
    println!("fsync of a 512-byte append: p50 {fsync_p50:.2?}, p99 {fsync_p99:.2?}");
    println!("one commit per message is capped near {:.0} messages/s on this disk", 1.0 / fsync_p50.as_secs_f64());
    println!("{senders} concurrent senders x {per_sender} messages, each waiting for its ack:");
    for (label, batch) in [("group commit", 512), ("one commit per message", 1)] {
        let r = run(batch, senders, per_sender).await?;
        println!(
            "  {label:<24} {:>8.0} acked msg/s   ack p50 {:>8.2?}   p99 {:>8.2?}   ({} messages in {:.2?})",
            r.messages as f64 / r.elapsed.as_secs_f64(),
            r.p50,
            r.p99,
            r.messages,
            r.elapsed
        );
    }
    Ok(())
}
