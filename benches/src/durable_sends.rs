//! Durable sends through the engine into SQLite (`synchronous=FULL`) and
//! PostgreSQL (`synchronous_commit=on`).
//!
//! Measures, on this machine: the latency of one fsync'd append to a file (the
//! ceiling of one-commit-per-message designs), then acked messages per second
//! and ack latency for N concurrent senders, each waiting for its ack before
//! its next send, writing into one room or spread over many. Each store runs:
//!
//! - the engine with group commit (its default: every send queued while a
//!   commit is in flight goes into the next one);
//! - the engine with batches forced to one message: one commit per message,
//!   one after the other;
//! - no engine: every sender calls `append_messages` with one message at a
//!   time, concurrently, so the store sees N callers and one commit per call.
//!
//! ```text
//! CHAT_BENCH_POSTGRES_URL=postgres://postgres@127.0.0.1:5432/test \
//!   cargo run --release -p chat-benches --bin durable-sends -- [senders] [messages per sender] \
//!   [--backend sqlite|postgres|all] [--scenario one-room|many-rooms|all] [--rooms N] [--runs N] [--quick]
//! ```
//!
//! Without `CHAT_BENCH_POSTGRES_URL`, PostgreSQL is skipped. Each PostgreSQL
//! run works in a schema of its own, dropped afterwards.

use std::fs::OpenOptions;
use std::io::Write;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use chat_benches::{BenchSchema, ms, percentile, postgres_url};
use chat_core::command::{CreateRoom, JoinRoom, SendMessage};
use chat_core::{
    Command, Engine, EngineConfig, Identity, MemberLimits, MemberRole, MessageId, NewMessage, NewRoom, Output, Reply,
    RoomId, RoomKind, Store, Timestamp, UserId, Visibility,
};
use chat_store_sql::{PostgresConfig, PostgresStore, SqliteConfig, SqliteStore, Synchronous};
use clap::{Parser, ValueEnum};
use sqlx::Connection;

/// Durable message:send throughput and ack latency, group commit against one
/// commit per message, on SQLite and PostgreSQL.
#[derive(Debug, Parser)]
struct Args {
    /// Concurrent senders, each waiting for its ack before its next send.
    #[arg(default_value_t = 200)]
    senders: usize,
    /// Messages each sender sends.
    #[arg(default_value_t = 50)]
    per_sender: usize,
    /// The stores to measure (PostgreSQL needs CHAT_BENCH_POSTGRES_URL).
    #[arg(long, value_enum, default_value_t = Which::All)]
    backend: Which,
    /// Where the senders write: all into one room, or spread over --rooms rooms.
    #[arg(long, value_enum, default_value_t = Scenario::All)]
    scenario: Scenario,
    /// Rooms of the many-rooms scenario; senders are dealt out over them in turn.
    #[arg(long, default_value_t = 100)]
    rooms: usize,
    /// Measurements of each row, each on a fresh store; the row shows the
    /// run with the median rate, and the range of all.
    #[arg(long, default_value_t = 1)]
    runs: usize,
    /// A short run (40 senders x 10 messages, 20 rooms) that checks the bench works.
    #[arg(long)]
    quick: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Which {
    Sqlite,
    Postgres,
    All,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Scenario {
    OneRoom,
    ManyRooms,
    All,
}

/// How messages reach the store.
#[derive(Debug, Clone, Copy)]
enum Mode {
    /// Through the engine, whose committer puts every queued send into one commit.
    GroupCommit,
    /// Through the engine with `max_commit_batch = 1`: one commit per message, in turn.
    EngineOnePerCommit,
    /// Straight to the store, one message per `append_messages`, every sender at once.
    StoreOnePerCall,
}

impl Mode {
    fn label(self) -> &'static str {
        match self {
            Mode::GroupCommit => "engine, group commit",
            Mode::EngineOnePerCommit => "engine, one commit per message",
            Mode::StoreOnePerCall => "store, one message per call, concurrent",
        }
    }
}

#[derive(Debug, Clone)]
enum Backend {
    Sqlite,
    Postgres { base_url: String },
}

impl Backend {
    fn label(&self) -> &'static str {
        match self {
            Backend::Sqlite => "SQLite",
            Backend::Postgres { .. } => "PostgreSQL",
        }
    }
}

/// A fresh, empty store, and what to remove once it is closed.
struct Opened {
    store: Arc<dyn Store>,
    place: Place,
}

enum Place {
    Dir(tempfile::TempDir),
    Schema(BenchSchema),
}

impl Opened {
    async fn open(backend: &Backend) -> anyhow::Result<Opened> {
        match backend {
            Backend::Sqlite => {
                let dir = tempfile::tempdir()?;
                let mut config = SqliteConfig::from_url(format!("sqlite://{}", dir.path().join("bench.db").display()));
                config.synchronous = Synchronous::Full;
                let store = SqliteStore::connect(config).await.context("opening SQLite")?;
                Ok(Opened { store: Arc::new(store), place: Place::Dir(dir) })
            }
            Backend::Postgres { base_url } => {
                let schema = BenchSchema::create(base_url).await?;
                let store = PostgresStore::connect(PostgresConfig::from_url(schema.url()))
                    .await
                    .context("opening PostgreSQL")?;
                Ok(Opened { store: Arc::new(store), place: Place::Schema(schema) })
            }
        }
    }

    async fn close(self) -> anyhow::Result<()> {
        self.store.close().await;
        match self.place {
            Place::Dir(dir) => drop(dir),
            Place::Schema(schema) => schema.drop_now().await?,
        }
        Ok(())
    }
}

struct Run {
    messages: usize,
    elapsed: Duration,
    p50: Duration,
    p99: Duration,
}

impl Run {
    fn rate(&self) -> f64 {
        self.messages as f64 / self.elapsed.as_secs_f64()
    }
}

fn body() -> String {
    "x".repeat(200)
}

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
    Ok((percentile(&samples, 50), percentile(&samples, 99)))
}

/// Waits for the reply to the last command, passing over events.
async fn reply(session: &mut chat_core::Session) -> anyhow::Result<Reply> {
    loop {
        match session.next_output().await {
            Output::Reply { result: Ok(reply), .. } => return Ok(reply),
            Output::Reply { result: Err(e), .. } => anyhow::bail!("command failed: {e}"),
            Output::Close(reason) => anyhow::bail!("closed: {reason:?}"),
            _ => continue,
        }
    }
}

/// Sends through the engine. Sessions open and join before the clock starts;
/// the clock stops when the last ack is in.
async fn engine_run(
    store: Arc<dyn Store>,
    batch: usize,
    senders: usize,
    per_sender: usize,
    rooms: usize,
) -> anyhow::Result<Run> {
    let mut config = EngineConfig::default();
    config.max_commit_batch = batch;
    config.limits.commands_per_second = u32::MAX;
    config.limits.command_burst = u32::MAX;
    // One owner makes every room of the run, faster than a person would.
    config.limits.room_actions_per_minute = 0;
    let engine = Engine::builder(store).config(config).start().await?;

    let (mut owner, _) = engine.open_session(Identity::new(UserId::new("owner")?)).await?;
    let mut room_ids = Vec::with_capacity(rooms);
    for r in 0..rooms {
        let create = CreateRoom {
            kind: RoomKind::Group,
            name: Some(format!("bench {r}")),
            visibility: Some(Visibility::Public),
            members: vec![],
        };
        owner.submit(None, Command::RoomCreate(create)).await;
        match reply(&mut owner).await? {
            Reply::Room { room } => room_ids.push(room.id),
            other => anyhow::bail!("creating a room: {other:?}"),
        }
    }
    // The owner reads nothing from here on; gone, it costs the fan-out nothing.
    drop(owner);

    let mut sessions = Vec::with_capacity(senders);
    for s in 0..senders {
        let (mut session, _) = engine.open_session(Identity::new(UserId::new(format!("u{s}"))?)).await?;
        let room_id = room_ids[s % rooms];
        session.submit(None, Command::RoomJoin(JoinRoom { room_id, since_seq: None })).await;
        reply(&mut session).await?;
        sessions.push((s, room_id, session));
    }

    let start = Instant::now();
    let mut tasks = Vec::with_capacity(senders);
    for (s, room_id, mut session) in sessions {
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::with_capacity(per_sender);
            // Each sender waits for its ack before the next send, as a client
            // that needs each message stored before going on would. Events of
            // the other senders arrive meanwhile and are read and dropped.
            for i in 0..per_sender {
                let sent = Instant::now();
                let send = SendMessage {
                    room_id,
                    client_msg_id: format!("{s}-{i}"),
                    body: body(),
                    attachments: vec![],
                    reply_to: None,
                };
                session.submit(None, Command::MessageSend(send)).await;
                reply(&mut session).await?;
                latencies.push(sent.elapsed());
            }
            anyhow::Ok(latencies)
        }));
    }
    let mut latencies = Vec::with_capacity(senders * per_sender);
    for task in tasks {
        latencies.extend(task.await??);
    }
    let elapsed = start.elapsed();
    engine.shutdown().await;
    latencies.sort();
    Ok(Run { messages: latencies.len(), elapsed, p50: percentile(&latencies, 50), p99: percentile(&latencies, 99) })
}

/// Calls the store directly: every sender appends one message per call and
/// waits for it, all senders at once.
async fn store_run(store: Arc<dyn Store>, senders: usize, per_sender: usize, rooms: usize) -> anyhow::Result<Run> {
    let owner = UserId::new("owner")?;
    let mut room_ids = Vec::with_capacity(rooms);
    for r in 0..rooms {
        let mut members = vec![(owner.clone(), MemberRole::Owner)];
        for s in (r..senders).step_by(rooms) {
            members.push((UserId::new(format!("u{s}"))?, MemberRole::Member));
        }
        let new = NewRoom {
            id: RoomId::generate(),
            kind: RoomKind::Group,
            name: Some(format!("bench {r}")),
            visibility: Visibility::Public,
            created_by: owner.clone(),
            created_at: Timestamp::now(),
            members,
        };
        room_ids.push(store.create_room(new, MemberLimits::NONE).await?.0.id);
    }

    let start = Instant::now();
    let mut tasks = Vec::with_capacity(senders);
    for s in 0..senders {
        let store = store.clone();
        let room_id = room_ids[s % rooms];
        let sender_id = UserId::new(format!("u{s}"))?;
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::with_capacity(per_sender);
            for i in 0..per_sender {
                let sent = Instant::now();
                let new = NewMessage {
                    id: MessageId::generate(),
                    room_id,
                    sender_id: sender_id.clone(),
                    client_msg_id: format!("{s}-{i}"),
                    body: body(),
                    attachments: vec![],
                    reply_to: None,
                    created_at: Timestamp::now(),
                    call: None,
                };
                for answer in store.append_messages(vec![new]).await? {
                    answer?;
                }
                latencies.push(sent.elapsed());
            }
            anyhow::Ok(latencies)
        }));
    }
    let mut latencies = Vec::with_capacity(senders * per_sender);
    for task in tasks {
        latencies.extend(task.await??);
    }
    let elapsed = start.elapsed();
    latencies.sort();
    Ok(Run { messages: latencies.len(), elapsed, p50: percentile(&latencies, 50), p99: percentile(&latencies, 99) })
}

/// One measurement on a fresh store.
async fn measure(
    backend: &Backend,
    mode: Mode,
    senders: usize,
    per_sender: usize,
    rooms: usize,
) -> anyhow::Result<Run> {
    let opened = Opened::open(backend).await?;
    let store = opened.store.clone();
    let result = match mode {
        Mode::GroupCommit => engine_run(store, 512, senders, per_sender, rooms).await,
        Mode::EngineOnePerCommit => engine_run(store, 1, senders, per_sender, rooms).await,
        Mode::StoreOnePerCall => store_run(store, senders, per_sender, rooms).await,
    };
    opened.close().await?;
    result
}

/// What PostgreSQL promises for a commit, as the server reports it.
async fn describe_postgres(base_url: &str) -> anyhow::Result<()> {
    let mut conn = sqlx::PgConnection::connect(base_url).await.context("connecting to PostgreSQL")?;
    let version: String = sqlx::query_scalar("SELECT version()").fetch_one(&mut conn).await?;
    println!("PostgreSQL: {version}");
    for setting in ["synchronous_commit", "fsync", "wal_sync_method", "commit_delay", "shared_buffers"] {
        let value: String = sqlx::query_scalar("SELECT current_setting($1)").bind(setting).fetch_one(&mut conn).await?;
        println!("  {setting} = {value}");
    }
    conn.close().await?;
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = Args::parse();
    if args.quick {
        (args.senders, args.per_sender, args.rooms) = (40, 10, 20);
    }
    anyhow::ensure!(args.senders > 0 && args.rooms > 0, "senders and rooms must be at least 1");
    let rooms_many = args.rooms.min(args.senders);

    let mut backends = Vec::new();
    if matches!(args.backend, Which::Sqlite | Which::All) {
        backends.push(Backend::Sqlite);
    }
    if matches!(args.backend, Which::Postgres | Which::All)
        && let Some(base_url) = postgres_url()
    {
        describe_postgres(&base_url).await?;
        backends.push(Backend::Postgres { base_url });
    }
    let mut scenarios = Vec::new();
    if matches!(args.scenario, Scenario::OneRoom | Scenario::All) {
        scenarios.push(("one room", 1));
    }
    if matches!(args.scenario, Scenario::ManyRooms | Scenario::All) {
        scenarios.push(("many rooms", rooms_many));
    }

    let dir = tempfile::tempdir()?;
    let (fsync_p50, fsync_p99) = fsync_latency(dir.path())?;
    println!("fsync of a 512-byte append: p50 {}, p99 {}", ms(fsync_p50), ms(fsync_p99));
    println!("one commit per message is capped near {:.0} messages/s on this disk", 1.0 / fsync_p50.as_secs_f64());
    println!(
        "{} concurrent senders x {} messages of 200 bytes, each waiting for its ack:",
        args.senders, args.per_sender
    );

    let mut table = Vec::new();
    for backend in &backends {
        for &(scenario, rooms) in &scenarios {
            for mode in [Mode::GroupCommit, Mode::EngineOnePerCommit, Mode::StoreOnePerCall] {
                let mut runs = Vec::with_capacity(args.runs.max(1));
                for _ in 0..args.runs.max(1) {
                    runs.push(measure(backend, mode, args.senders, args.per_sender, rooms).await?);
                }
                runs.sort_by(|a, b| a.rate().total_cmp(&b.rate()));
                let range = format!("{:.0}–{:.0}", runs[0].rate(), runs[runs.len() - 1].rate());
                let r = &runs[runs.len() / 2];
                let where_ = if rooms == 1 { scenario.to_owned() } else { format!("{scenario} ({rooms})") };
                println!(
                    "  {:<10} {:<17} {:<40} {:>8.0} acked msg/s ({range})   ack p50 {:>9}   p99 {:>9}   \
                     ({} messages in {:.2?})",
                    backend.label(),
                    where_,
                    mode.label(),
                    r.rate(),
                    ms(r.p50),
                    ms(r.p99),
                    r.messages,
                    r.elapsed
                );
                table.push(format!(
                    "| {} | {} | {} | {:.0} | {range} | {} | {} |",
                    backend.label(),
                    where_,
                    mode.label(),
                    r.rate(),
                    ms(r.p50),
                    ms(r.p99)
                ));
            }
        }
    }
    println!();
    println!("| store | rooms | path | acked messages/s | range of {} runs | ack p50 | ack p99 |", args.runs.max(1));
    println!("|---|---|---|---:|---:|---:|---:|");
    println!(
        "| disk alone | | fsync of a 512-byte append | ≈ {:.0} (1 / p50) | | {} | {} |",
        1.0 / fsync_p50.as_secs_f64(),
        ms(fsync_p50),
        ms(fsync_p99)
    );
    for row in table {
        println!("{row}");
    }
    Ok(())
}
