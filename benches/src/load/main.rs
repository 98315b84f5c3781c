//! `chat-load`: one load generator for `chat-server` and for the reference
//! Socket.IO server in `benches/socketio-ref`, so that both are measured by
//! the same client code (`benches/run.sh` runs every scenario against both).
//!
//! The generator starts the server under test itself, from the shell command
//! given with `--server-cmd` (the caller pins it to a core with `taskset`),
//! so that it can read the server's memory and CPU time from `/proc`, and
//! restart it for the reconnect storm. Each run prints one JSON object (and
//! writes it to `--out`): the parameters, the figures, and the checks: lost,
//! duplicated and out-of-order messages per room, found from the seqs every
//! client received against the seqs the senders' acks reported.
//!
//! ```sh
//! chat-load run --proto native --scenario fanout --addr 127.0.0.1:18080 \
//!     --secret "$SECRET" --server-cmd "env CHAT_LISTEN=127.0.0.1:18080 … chat-server" --quick
//! ```
//!
//! A server may be several `chat-server` processes that are one server
//! through a broker: `--addr` and `--server-cmd` are then given once per
//! process, in matching order. Client `i` connects to process `i mod n`, so
//! that every room (of at least `n` members) has members on every process
//! and its fan-out crosses the broker; CPU time and memory are summed over
//! the processes, and each process's `/metrics` is read before and after
//! the measurement for what it published to the broker and received from
//! it (`benches/cluster.sh`).

mod client;
mod metrics;
mod proto;
mod report;
mod server;
mod stats;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use clap::{Parser, Subcommand, ValueEnum};
use futures_util::StreamExt;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::sync::{Mutex, Semaphore, watch};
use tokio::time::{Instant, sleep};
use tokio_tungstenite::tungstenite::Message;

use client::{Client, Ctx, Phase, Room, connect, source_ip};
use proto::{Event, Native, Protocol, SocketIo};
use server::Servers;
use stats::{Counters, round2};

#[derive(Parser, Debug)]
#[command(about = "Load generator for chat-server and the Socket.IO reference server")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Start the server, run one scenario against it, print the result as JSON.
    Run(Box<RunArgs>),
    /// Hold idle connections for the `idle` scenario (started by it).
    IdleWorker(WorkerArgs),
    /// Merge the JSON of each scenario run into one results file.
    Combine {
        /// The results file to write.
        #[arg(long)]
        out: String,
        /// A JSON object describing the machine.
        #[arg(long)]
        machine: String,
        /// `quick` or `full`.
        #[arg(long)]
        mode: String,
        /// The command that produced the run.
        #[arg(long)]
        command: String,
        /// The date of the run.
        #[arg(long)]
        date: String,
        files: Vec<String>,
    },
    /// Render a results file into docs/BENCHMARKS.md and an SVG chart.
    Report {
        results: String,
        #[arg(long)]
        doc: String,
        #[arg(long)]
        svg: String,
    },
    /// Exit non-zero when a results file shows a lost, duplicated or
    /// out-of-order message, or a failed connection.
    Check { results: String },
    /// Print the Markdown tables of fan-out runs on one or more processes
    /// (`benches/cluster.sh`), from their JSON files or a results file of
    /// several, in the order given.
    ClusterTable { files: Vec<String> },
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum ProtoName {
    Native,
    Socketio,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum Scenario {
    Idle,
    Fanout,
    Mix,
    Durable,
    /// The durable scenario with each server on PostgreSQL (the server
    /// command names the database; the load is the same).
    DurablePg,
    Reconnect,
}

impl Scenario {
    /// The name in results files, as given on the command line.
    fn name(self) -> String {
        self.to_possible_value().map(|v| v.get_name().to_owned()).unwrap_or_default()
    }
}

#[derive(clap::Args, Debug)]
struct RunArgs {
    #[arg(long, value_enum)]
    proto: ProtoName,
    #[arg(long, value_enum)]
    scenario: Scenario,
    /// Where the server listens; must be a 127.0.0.x address. Repeated for
    /// a server of several processes, one per `--server-cmd`, in the same
    /// order; client `i` connects to the `i mod n`th.
    #[arg(long, required = true)]
    addr: Vec<SocketAddr>,
    /// The HS256 secret the server verifies tokens with.
    #[arg(long, env = "CHAT_JWT_SECRET", hide_env_values = true)]
    secret: String,
    /// Shell command starting the server (run with `exec`, so its pid is the
    /// server's). Repeated, one per `--addr`: the processes of one server
    /// (same database, same broker).
    #[arg(long, required = true)]
    server_cmd: Vec<String>,
    /// File the server's output is appended to; with several processes the
    /// second one's goes to `<file>.1`, and so on.
    #[arg(long, default_value = "/tmp/chat-load-server.log")]
    server_log: String,
    /// The key the server's `/metrics` asks for as a bearer token, if any.
    #[arg(long, env = "CHAT_API_KEY", hide_env_values = true)]
    api_key: Option<String>,
    /// Another process whose CPU time the fan-out reports per step, as
    /// `name=pid` (a broker, say). Repeatable.
    #[arg(long)]
    watch_pid: Vec<String>,
    /// A name for this run in the results (`benches/cluster.sh` names its
    /// variants).
    #[arg(long)]
    label: Option<String>,
    /// The server's name in the results, when not the protocol's:
    /// `benches/run.sh` names chat-server driven over Socket.IO
    /// `ours-socketio`, the Node reference being `socketio`.
    #[arg(long)]
    server_name: Option<String>,
    /// Small counts and a few seconds, for CI.
    #[arg(long)]
    quick: bool,
    /// Exit with status 3 when any message was lost, repeated or out of
    /// order, a send was refused, or none was acknowledged.
    #[arg(long)]
    strict: bool,
    /// Write the JSON result here too.
    #[arg(long)]
    out: Option<String>,
    /// Idle: connection counts, each on a fresh server process.
    #[arg(long, value_delimiter = ',')]
    counts: Option<Vec<usize>>,
    /// Clients (mix, durable, reconnect).
    #[arg(long)]
    clients: Option<usize>,
    /// Fan-out: rooms and members per room.
    #[arg(long)]
    rooms: Option<usize>,
    #[arg(long)]
    members: Option<usize>,
    /// Seconds per step (fan-out) or of measurement (mix, durable).
    #[arg(long)]
    seconds: Option<f64>,
    /// Reconnect: server restarts.
    #[arg(long)]
    cycles: Option<usize>,
    /// Directory on the database's disk, where the durable scenario measures fsync.
    #[arg(long, default_value = "/tmp")]
    fsync_dir: String,
}

#[derive(clap::Args, Debug)]
struct WorkerArgs {
    #[arg(long, value_enum)]
    proto: ProtoName,
    #[arg(long)]
    addr: SocketAddr,
    #[arg(long, env = "CHAT_JWT_SECRET", hide_env_values = true)]
    secret: String,
    /// Index of this worker's first client (user `u<index>`).
    #[arg(long)]
    first: usize,
    #[arg(long)]
    count: usize,
    #[arg(long, default_value_t = 4)]
    src_ips: u8,
}

fn protocol(p: ProtoName) -> Arc<dyn Protocol> {
    match p {
        ProtoName::Native => Arc::new(Native),
        ProtoName::Socketio => Arc::new(SocketIo),
    }
}

/// An HS256 token for user `u<index>`, good for a day: the same token
/// works on both servers.
fn token(secret: &str, index: usize) -> anyhow::Result<String> {
    let exp = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs() + 86_400;
    let claims = json!({"sub": format!("u{index}"), "name": format!("u{index}"), "exp": exp});
    Ok(jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )?)
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    // One thread: the load runs on the one core it is pinned to.
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    match cli.command {
        Cmd::IdleWorker(args) => rt.block_on(idle_worker(args)),
        Cmd::Combine { out, machine, mode, command, date, files } => {
            let mut runs = Vec::new();
            for f in &files {
                let text = std::fs::read_to_string(f).with_context(|| format!("reading {f}"))?;
                runs.push(serde_json::from_str::<Value>(&text).with_context(|| format!("parsing {f}"))?);
            }
            let machine: Value = serde_json::from_str(&machine).context("--machine is not JSON")?;
            let all = json!({"date": date, "mode": mode, "command": command, "machine": machine, "runs": runs});
            std::fs::write(&out, serde_json::to_string_pretty(&all)?)?;
            Ok(())
        }
        Cmd::Report { results, doc, svg } => {
            let run: Value = serde_json::from_str(&std::fs::read_to_string(&results)?)?;
            let svg_name = std::path::Path::new(&svg).file_name().and_then(|n| n.to_str()).unwrap_or("chart.svg");
            let generated = report::markdown(&run, svg_name)?;
            let text = std::fs::read_to_string(&doc).with_context(|| format!("reading {doc}"))?;
            std::fs::write(&doc, report::splice(&text, &generated))?;
            std::fs::write(&svg, report::svg(&run))?;
            Ok(())
        }
        Cmd::Check { results } => {
            let run: Value = serde_json::from_str(&std::fs::read_to_string(&results)?)?;
            report::check(&run)
        }
        Cmd::ClusterTable { files } => {
            let mut runs = Vec::new();
            for f in &files {
                let text = std::fs::read_to_string(f).with_context(|| format!("reading {f}"))?;
                let value = serde_json::from_str::<Value>(&text).with_context(|| format!("parsing {f}"))?;
                // A results file of several runs, or one run's JSON.
                match value.get("runs").and_then(Value::as_array) {
                    Some(all) => runs.extend(all.iter().cloned()),
                    None => runs.push(value),
                }
            }
            print!("{}", report::cluster_table(&runs)?);
            Ok(())
        }
        Cmd::Run(args) => {
            for addr in &args.addr {
                let ip = addr.ip();
                if !matches!(ip, std::net::IpAddr::V4(v4) if v4.octets()[0] == 127) {
                    bail!("--addr must be a 127.0.0.x address, not {ip}");
                }
            }
            if args.addr.len() != args.server_cmd.len() {
                bail!(
                    "{} --addr for {} --server-cmd: give one address per server process, in the same order",
                    args.addr.len(),
                    args.server_cmd.len()
                );
            }
            if args.addr.len() > 1 && matches!(args.scenario, Scenario::Idle | Scenario::Reconnect) {
                bail!("the {} scenario measures one server process; give one --addr", args.scenario.name());
            }
            let strict = args.strict;
            let out = args.out.clone();
            let result = rt.block_on(run(*args))?;
            let text = serde_json::to_string_pretty(&result)?;
            println!("{text}");
            if let Some(path) = out {
                std::fs::write(&path, &text).with_context(|| format!("writing {path}"))?;
            }
            let bad = report::problems(&result["checks"]);
            if strict && !bad.is_empty() {
                eprintln!("FAILED: {}", bad.join(", "));
                std::process::exit(3);
            }
            Ok(())
        }
    }
}

async fn run(args: RunArgs) -> anyhow::Result<Value> {
    let logs: Vec<String> = (0..args.server_cmd.len())
        .map(|i| if i == 0 { args.server_log.clone() } else { format!("{}.{i}", args.server_log) })
        .collect();
    let mut server = Servers::start(&args.server_cmd, &logs, &args.addr).await?;
    let proto = protocol(args.proto);
    let started = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
    // The machine may be shared: say how busy it was around the run.
    let loadavg = || std::fs::read_to_string("/proc/loadavg").unwrap_or_default().trim().to_owned();
    let load_before = loadavg();
    let (params, result, checks) = match args.scenario {
        Scenario::Idle => idle(&args, &mut server).await?,
        Scenario::Fanout => fanout(&args, proto.clone(), &mut server).await?,
        Scenario::Mix => mix(&args, proto.clone(), &mut server).await?,
        Scenario::Durable | Scenario::DurablePg => durable(&args, proto.clone(), &mut server).await?,
        Scenario::Reconnect => reconnect(&args, proto.clone(), &mut server).await?,
    };
    server.stop().await?;
    let load_after = loadavg();
    Ok(json!({
        "loadavg_before": load_before,
        "loadavg_after": load_after,
        "server": args.server_name.as_deref().unwrap_or(proto.name()),
        "label": args.label,
        "server_processes": args.addr.len(),
        "scenario": args.scenario.name(),
        "quick": args.quick,
        "started_unix": started,
        "params": params,
        "result": result,
        "checks": checks,
    }))
}

type Outcome = (Value, Value, Value);

// ---------------------------------------------------------------- room runs

/// A population of clients in rooms, connected and subscribed.
struct Population {
    ctx: Arc<Ctx>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    clients: usize,
}

/// Creates `rooms` rooms of `members` clients each; in each room the first
/// `publishers` members publish. Returns once every client has joined.
async fn populate(
    args: &RunArgs,
    proto: Arc<dyn Protocol>,
    rooms: usize,
    members: usize,
    publishers: usize,
    reconnect: bool,
) -> anyhow::Result<Population> {
    let clients = rooms * members;
    if members < args.addr.len() {
        bail!("rooms of {members} cannot have members on each of {} server processes", args.addr.len());
    }
    let ids = create_rooms(args, &*proto, rooms).await?;
    let (phase, _) = watch::channel(Phase::default());
    let ctx = Arc::new(Ctx {
        proto,
        addrs: args.addr.clone(),
        src_ips: 4,
        rooms: ids.into_iter().map(|id| Room { id, members: members as u64, last_seq: AtomicU64::new(0) }).collect(),
        body_len: 200,
        counters: Counters::new(),
        phase,
        joined: AtomicU64::new(0),
        resumed: AtomicU64::new(0),
        reconnect,
        ledgers: Mutex::new(Vec::new()),
        connect_gate: Semaphore::new(128),
    });
    let mut tasks = Vec::with_capacity(clients);
    for index in 0..clients {
        let client = Client {
            index,
            token: token(&args.secret, index)?,
            room: index / members,
            publisher: index % members < publishers,
        };
        tasks.push(tokio::spawn(client.run(ctx.clone())));
    }
    let t0 = Instant::now();
    let deadline = t0 + Duration::from_secs(600);
    while ctx.joined.load(Relaxed) < clients as u64 {
        let gone = ctx.counters.disconnects.load(Relaxed);
        if gone > 0 {
            bail!("{gone} clients failed to connect or join");
        }
        if Instant::now() > deadline {
            bail!("only {} of {clients} clients joined in 600 s", ctx.joined.load(Relaxed));
        }
        sleep(Duration::from_millis(20)).await;
    }
    eprintln!("{clients} clients connected and joined in {:.1} s", t0.elapsed().as_secs_f64());
    Ok(Population { ctx, tasks, clients })
}

/// Most `room:create`s the owner connection has in flight.
const CREATE_WINDOW: usize = 64;

/// Room ids, as the server made them for one owner connection's
/// `room:create`s.
async fn create_rooms(args: &RunArgs, proto: &dyn Protocol, rooms: usize) -> anyhow::Result<Vec<String>> {
    let owner = token(&args.secret, 9_999_999)?;
    let mut ws = connect(proto, args.addr[0], source_ip(0, 1), &owner).await?;
    let mut ids = vec![String::new(); rooms];
    let mut missing = rooms;
    use futures_util::SinkExt;
    let create = |i: usize| Message::text(proto.create_room(&format!("bench-{i}"), i as u64 + 1));
    // A window of creates in flight, as a client would pipeline them: the
    // Socket.IO transport refuses commands past its queue's bound where
    // the native one pushes back.
    let mut next = rooms.min(CREATE_WINDOW);
    for i in 0..next {
        ws.send(create(i)).await?;
    }
    while missing > 0 {
        let frame = ws.next().await.context("owner connection closed")??;
        let Message::Text(text) = frame else { continue };
        if let Event::Reply { id, result } = proto.decode(&text)? {
            let room = result.map_err(|e| anyhow::anyhow!("room:create failed: {e}"))?;
            ids[(id - 1) as usize] = room.room_id.context("room:create reply without a room id")?;
            missing -= 1;
            if next < rooms {
                ws.send(create(next)).await?;
                next += 1;
            }
        }
    }
    let _ = ws.close(None).await;
    Ok(ids)
}

impl Population {
    fn set_phase(&self, f: impl FnOnce(&mut Phase)) {
        self.ctx.phase.send_modify(|p| {
            p.generation += 1;
            p.burst = 0;
            f(p);
        });
    }

    /// Waits until every send is answered and every delivery the acks call
    /// for has arrived, or `limit` passes. True when everything arrived.
    async fn drain(&self, limit: Duration) -> bool {
        let c = &self.ctx.counters;
        // Let every client see the phase that stopped its sends first.
        sleep(Duration::from_millis(100)).await;
        let deadline = Instant::now() + limit;
        loop {
            let answered = Counters::get(&c.acked) + Counters::get(&c.send_errors) >= Counters::get(&c.sent);
            if answered && Counters::get(&c.delivered) >= Counters::get(&c.expected) {
                return true;
            }
            if Instant::now() > deadline {
                return false;
            }
            sleep(Duration::from_millis(10)).await;
        }
    }

    /// Stops every client and checks every client's ledger against the
    /// rooms' last seqs.
    async fn finish(self) -> anyhow::Result<Value> {
        self.set_phase(|p| {
            p.send_every = None;
            p.closed_loop = false;
            p.typing_every = None;
            p.stop = true;
        });
        for t in self.tasks {
            let _ = tokio::time::timeout(Duration::from_secs(30), t).await;
        }
        let ledgers = self.ctx.ledgers.lock().await;
        let mut lost = 0;
        for (room, ledger) in ledgers.iter() {
            lost += ledger.missing(self.ctx.rooms[*room].last_seq.load(Relaxed));
        }
        let c = &self.ctx.counters;
        let unanswered = Counters::get(&c.sent) - Counters::get(&c.acked) - Counters::get(&c.send_errors);
        Ok(json!({
            "clients": self.clients,
            "ledgers": ledgers.len(),
            "messages_sent": Counters::get(&c.sent),
            "messages_acked": Counters::get(&c.acked),
            "send_errors": Counters::get(&c.send_errors),
            "unanswered_sends": unanswered,
            "deliveries": Counters::get(&c.delivered),
            "expected_deliveries": Counters::get(&c.expected),
            "lost": lost + unanswered,
            "duplicated": Counters::get(&c.duplicated),
            "out_of_order": Counters::get(&c.out_of_order),
            "disconnects": Counters::get(&c.disconnects),
        }))
    }
}

// ---------------------------------------------------------------- scenarios

/// Waits (up to 60 s) until the server has been nearly idle for a second:
/// after thousands of joins it may still be sending their events or
/// checkpointing, and a measurement should not start on that tail.
async fn settle(server: &Servers) -> anyhow::Result<f64> {
    let t0 = Instant::now();
    loop {
        let before = server.cpu_seconds()?;
        sleep(Duration::from_secs(1)).await;
        let busy = server.cpu_seconds()? - before;
        if busy < 0.05 * server.len() as f64 || t0.elapsed() > Duration::from_secs(60) {
            return Ok(round2(t0.elapsed().as_secs_f64()));
        }
    }
}

/// The start of a measured window: every process's counters (on our
/// server, which has `/metrics`) and the sends acknowledged so far.
struct Window {
    before: Vec<anyhow::Result<metrics::Scrape>>,
    acked: u64,
}

impl Window {
    async fn start(args: &RunArgs, c: &Counters) -> Option<Window> {
        if args.proto != ProtoName::Native {
            return None;
        }
        let acked = Counters::get(&c.acked);
        Some(Window { before: metrics::scrape_all(&args.addr, args.api_key.as_deref()).await, acked })
    }

    /// What the processes published to the broker and received from it
    /// since the start, per message acknowledged since (null on Socket.IO).
    async fn end(window: Option<Window>, args: &RunArgs, c: &Counters) -> Value {
        let Some(w) = window else { return Value::Null };
        let messages = Counters::get(&c.acked) - w.acked;
        let after = metrics::scrape_all(&args.addr, args.api_key.as_deref()).await;
        metrics::cluster_report(&args.addr, &w.before, &after, messages)
    }
}

/// The processes named by `--watch-pid`, as (name, pid).
fn watched(args: &RunArgs) -> anyhow::Result<Vec<(String, String)>> {
    args.watch_pid
        .iter()
        .map(|w| match w.split_once('=') {
            Some((name, pid)) if !name.is_empty() && pid.parse::<u32>().is_ok() => {
                Ok((name.to_owned(), pid.to_owned()))
            }
            _ => bail!("--watch-pid takes name=pid, not {w:?}"),
        })
        .collect()
}

/// The CPU seconds each watched process has used so far.
fn watched_cpu(list: &[(String, String)]) -> anyhow::Result<Vec<f64>> {
    list.iter()
        .map(|(name, pid)| {
            server::cpu_seconds_of(pid).with_context(|| format!("reading the CPU time of {name} ({pid})"))
        })
        .collect()
}

/// Fan-out steps run between the last passing and first failing rate.
const REFINE_STEPS: usize = 2;

/// Scenario 2: rooms × members, publish rate raised stepwise until a step
/// loses a message or its delivery p99 passes 100 ms, then narrowed down by
/// [`REFINE_STEPS`] bisection steps.
async fn fanout(args: &RunArgs, proto: Arc<dyn Protocol>, server: &mut Servers) -> anyhow::Result<Outcome> {
    let rooms = args.rooms.unwrap_or(if args.quick { 10 } else { 100 });
    let members = args.members.unwrap_or(if args.quick { 10 } else { 100 });
    let step_secs = args.seconds.unwrap_or(if args.quick { 1.5 } else { 5.0 });
    let max_steps = if args.quick { 2 } else { 30 };
    let publishers_per_room = 5.min(members);
    let start_rate = if args.quick { 50.0 } else { 100.0 };
    let factor = 1.4;
    let pop = populate(args, proto, rooms, members, publishers_per_room, false).await?;
    let publishers = (rooms * publishers_per_room) as f64;
    let c = &pop.ctx.counters;
    let mut steps = Vec::new();
    let mut best: Option<Value> = None;
    let mut rate = start_rate;
    let mut stop_reason = "step limit".to_owned();
    let settled_s = settle(server).await?;
    // Memory with every client joined and nothing queued, comparable
    // between runs; the figure at the end also holds what the last steps'
    // queues left behind.
    let rss_settled = server.rss_kib_each()?;
    let watch = watched(args)?;
    let window = Window::start(args, c).await;
    // A warm-up at the first rate, not recorded.
    pop.set_phase(|p| p.send_every = Some(Duration::from_secs_f64(publishers / rate)));
    sleep(Duration::from_secs_f64(step_secs.min(3.0))).await;
    pop.set_phase(|p| p.send_every = None);
    pop.drain(Duration::from_secs(5)).await;
    let mut retried = false;
    let (mut passed, mut failed, mut refined) = (None::<f64>, None::<f64>, 0);
    let refine_steps = if args.quick { 0 } else { REFINE_STEPS };
    for _ in 0..max_steps + refine_steps {
        c.delivery.reset();
        c.ack.reset();
        let (d0, e0, a0, x0) = (
            Counters::get(&c.delivered),
            Counters::get(&c.expected),
            Counters::get(&c.acked),
            Counters::get(&c.disconnects),
        );
        let cpu0 = server.cpu_seconds_each()?;
        let watched0 = watched_cpu(&watch)?;
        let load_cpu0 = server::cpu_seconds_of("self")?;
        let every = Duration::from_secs_f64(publishers / rate);
        pop.set_phase(|p| p.send_every = Some(every));
        let t0 = Instant::now();
        sleep(Duration::from_secs_f64(step_secs)).await;
        pop.set_phase(|p| p.send_every = None);
        let elapsed = t0.elapsed().as_secs_f64();
        let drained = pop.drain(Duration::from_secs(5)).await;
        let cpu_each: Vec<f64> = server.cpu_seconds_each()?.iter().zip(&cpu0).map(|(b, a)| round2(b - a)).collect();
        let cpu: f64 = cpu_each.iter().sum();
        let watched_s: serde_json::Map<String, Value> = watch
            .iter()
            .zip(watched_cpu(&watch)?.iter().zip(&watched0))
            .map(|((name, _), (b, a))| (name.clone(), json!(round2(b - a))))
            .collect();
        let load_cpu = server::cpu_seconds_of("self")? - load_cpu0;
        let delivered = Counters::get(&c.delivered) - d0;
        let expected = Counters::get(&c.expected) - e0;
        let acked = Counters::get(&c.acked) - a0;
        let disconnects = Counters::get(&c.disconnects) - x0;
        let lost = expected.saturating_sub(delivered) + u64::from(!drained && expected <= delivered);
        let lat = c.delivery.summary();
        let step = json!({
            "target_messages_per_s": round2(rate),
            "messages_per_s": round2(acked as f64 / elapsed),
            "deliveries_per_s": round2(delivered as f64 / elapsed),
            "delivery_latency": lat,
            "ack_latency": c.ack.summary(),
            "lost": lost,
            "disconnects": disconnects,
            "server_cpu_s": round2(cpu),
            "server_cpu_s_by_process": cpu_each,
            "watched_cpu_s": watched_s,
            "load_cpu_s": round2(load_cpu),
            "seconds": round2(elapsed),
        });
        eprintln!("fanout step: {step}");
        steps.push(step.clone());
        let failure = if lost > 0 || disconnects > 0 {
            Some(format!("loss at {rate:.0} messages/s ({lost} lost, {disconnects} disconnected)"))
        } else if lat.p99_ms > 100.0 {
            // The machine is shared: a step whose p99 alone fails is run
            // once more before it counts.
            if !retried {
                retried = true;
                continue;
            }
            Some(format!("p99 {} ms at {rate:.0} messages/s (twice)", lat.p99_ms))
        } else {
            None
        };
        retried = false;
        match failure {
            None => {
                best = Some(step);
                passed = Some(rate);
            }
            Some(reason) => {
                stop_reason = reason;
                // Clients that were cut off would spoil every later step.
                if disconnects > 0 {
                    break;
                }
                failed = Some(rate);
            }
        }
        // Past the first failure, steps bisect (geometrically) between the
        // highest passing rate and the lowest failing one, so that the figure
        // is not only as fine as the 1.4× ladder.
        rate = match (passed, failed) {
            (_, None) => rate * factor,
            (Some(low), Some(high)) if refined < refine_steps => {
                refined += 1;
                (low * high).sqrt()
            }
            _ => break,
        };
    }
    let cluster = Window::end(window, args, c).await;
    let rss_each = server.rss_kib_each()?;
    let checks = pop.finish().await?;
    let params = json!({"rooms": rooms, "members": members, "body_bytes": 200, "step_seconds": step_secs,
        "settled_s": settled_s,
        "publishers_per_room": publishers_per_room, "start_messages_per_s": start_rate, "rate_factor": factor,
        "refine_steps": refine_steps});
    let best_rate = best.as_ref().map(|b| b["deliveries_per_s"].clone()).unwrap_or(json!(0));
    Ok((
        params,
        json!({"max_zero_loss_deliveries_per_s": best_rate, "best_step": best, "stop_reason": stop_reason, "steps": steps,
            "server_rss_kib_settled": rss_settled.iter().sum::<u64>(), "server_rss_kib_settled_by_process": rss_settled,
            "server_rss_kib": rss_each.iter().sum::<u64>(), "server_rss_kib_by_process": rss_each,
            "cluster": cluster}),
        checks,
    ))
}

/// Scenario 3: clients in rooms of six, a message per client every
/// `interval`, typing at a total rate; latency and server CPU per delivery.
async fn mix(args: &RunArgs, proto: Arc<dyn Protocol>, server: &mut Servers) -> anyhow::Result<Outcome> {
    let clients = args.clients.unwrap_or(if args.quick { 120 } else { 5000 });
    let room_size = 6;
    let rooms = clients / room_size;
    let interval = Duration::from_secs(5);
    let seconds = args.seconds.unwrap_or(if args.quick { 4.0 } else { 60.0 });
    let typing_per_s = 5.0;
    let pop = populate(args, proto, rooms, room_size, room_size, false).await?;
    let clients = pop.clients;
    let typing_every = Duration::from_secs_f64(clients as f64 / typing_per_s);
    settle(server).await?;
    pop.set_phase(|p| {
        p.send_every = Some(interval);
        p.typing_every = Some(typing_every);
    });
    // One interval for every client's timer to have started.
    sleep(interval).await;
    let c = &pop.ctx.counters;
    c.delivery.reset();
    c.ack.reset();
    let window = Window::start(args, c).await;
    let (d0, a0, t0c) = (Counters::get(&c.delivered), Counters::get(&c.acked), Counters::get(&c.typing));
    let (user0, sys0) = server.cpu_split()?;
    let load_cpu0 = server::cpu_seconds_of("self")?;
    let t0 = Instant::now();
    sleep(Duration::from_secs_f64(seconds)).await;
    let (user1, sys1) = server.cpu_split()?;
    let (user, sys) = (user1 - user0, sys1 - sys0);
    let cpu = user + sys;
    let load_cpu = server::cpu_seconds_of("self")? - load_cpu0;
    let elapsed = t0.elapsed().as_secs_f64();
    let delivered = Counters::get(&c.delivered) - d0;
    let acked = Counters::get(&c.acked) - a0;
    let typing = Counters::get(&c.typing) - t0c;
    let rss = server.rss_kib_each()?;
    let delivery = c.delivery.summary();
    let ack = c.ack.summary();
    pop.set_phase(|p| {
        p.send_every = None;
        p.typing_every = None;
    });
    pop.drain(Duration::from_secs(10)).await;
    let cluster = Window::end(window, args, c).await;
    let checks = pop.finish().await?;
    let per_million = if delivered > 0 { cpu / (delivered as f64 / 1e6) } else { 0.0 };
    Ok((
        json!({"clients": clients, "room_size": room_size, "message_interval_s": interval.as_secs_f64(),
            "typing_per_s": typing_per_s, "seconds": seconds, "body_bytes": 200}),
        json!({
            "messages_per_s": round2(acked as f64 / elapsed),
            "deliveries_per_s": round2(delivered as f64 / elapsed),
            "typing_events_received": typing,
            "delivery_latency": delivery,
            "ack_latency": ack,
            "server_cpu_s": round2(cpu),
            "server_user_cpu_s": round2(user),
            "server_system_cpu_s": round2(sys),
            "load_cpu_s": round2(load_cpu),
            "cpu_s_per_million_deliveries": round2(per_million),
            "server_rss_kib": rss.iter().sum::<u64>(),
            "server_rss_kib_by_process": rss,
            "cluster": cluster,
        }),
        checks,
    ))
}

/// Scenario 4: every client keeps one send in flight; a send counts once
/// the server acked it, which both servers do only after the commit.
async fn durable(args: &RunArgs, proto: Arc<dyn Protocol>, server: &mut Servers) -> anyhow::Result<Outcome> {
    let clients = args.clients.unwrap_or(if args.quick { 20 } else { 400 });
    let room_size = 2;
    let seconds = args.seconds.unwrap_or(if args.quick { 2.0 } else { 10.0 });
    let fsync = measure_fsync(&args.fsync_dir, if args.quick { 100 } else { 2000 })?;
    let pop = populate(args, proto, clients / room_size, room_size, room_size, false).await?;
    settle(server).await?;
    let c = &pop.ctx.counters;
    c.ack.reset();
    let window = Window::start(args, c).await;
    let a0 = Counters::get(&c.acked);
    pop.set_phase(|p| p.closed_loop = true);
    let t0 = Instant::now();
    sleep(Duration::from_secs_f64(seconds)).await;
    let acked = Counters::get(&c.acked) - a0;
    let elapsed = t0.elapsed().as_secs_f64();
    let ack = c.ack.summary();
    pop.set_phase(|p| p.closed_loop = false);
    pop.drain(Duration::from_secs(10)).await;
    let cluster = Window::end(window, args, c).await;
    let checks = pop.finish().await?;
    Ok((
        json!({"clients": pop_clients(clients, room_size), "room_size": room_size, "in_flight_per_client": 1,
            "seconds": seconds, "body_bytes": 200}),
        json!({"acked_per_s": round2(acked as f64 / elapsed), "ack_latency": ack, "fsync": fsync, "cluster": cluster}),
        checks,
    ))
}

fn pop_clients(clients: usize, room_size: usize) -> usize {
    clients / room_size * room_size
}

/// The latency of appending 512 bytes to a file and `fdatasync`ing it, in
/// the directory of the database: the ceiling of one commit per message.
fn measure_fsync(dir: &str, samples: usize) -> anyhow::Result<Value> {
    use std::io::Write;
    let path = std::path::Path::new(dir).join(format!("chat-load-fsync-{}", std::process::id()));
    let mut file = std::fs::File::create(&path)?;
    let h = stats::Histogram::new();
    let block = [b'x'; 512];
    for _ in 0..samples {
        let t = std::time::Instant::now();
        file.write_all(&block)?;
        file.sync_data()?;
        h.record(t.elapsed().as_micros() as u64);
    }
    drop(file);
    std::fs::remove_file(&path)?;
    let s = h.summary();
    Ok(json!({"samples": samples, "p50_ms": s.p50_ms, "p99_ms": s.p99_ms,
        "per_s_at_p50": if s.p50_ms > 0.0 { round2(1000.0 / s.p50_ms) } else { 0.0 }}))
}

/// Scenario 5: the server restarts under every client; each reconnects and
/// resumes from the last seq it holds. Timed from the stop signal to the
/// moment the last client has caught up. Then as many storms without a
/// restart (every client drops its socket at once), for the server's RSS
/// after each.
async fn reconnect(args: &RunArgs, proto: Arc<dyn Protocol>, server: &mut Servers) -> anyhow::Result<Outcome> {
    let clients = args.clients.unwrap_or(if args.quick { 200 } else { 10_000 });
    let room_size = 10;
    let cycles = args.cycles.unwrap_or(if args.quick { 2 } else { 10 });
    let burst = 2;
    let pop = populate(args, proto, clients / room_size, room_size, 1, true).await?;
    let c = &pop.ctx.counters;
    let mut results = Vec::new();
    for cycle in 1..=cycles {
        // Messages go out just before the restart: some deliveries may be
        // cut off by it, and the resume must bring them.
        pop.set_phase(|p| p.burst = burst);
        let deadline = Instant::now() + Duration::from_secs(60);
        while Counters::get(&c.acked) + Counters::get(&c.send_errors) < Counters::get(&c.sent)
            || Counters::get(&c.sent) < (cycle * burst as usize * pop.ctx.rooms.len()) as u64
        {
            if Instant::now() > deadline {
                bail!("sends before restart {cycle} were not answered in 60 s");
            }
            sleep(Duration::from_millis(5)).await;
        }
        pop.ctx.resumed.store(0, Relaxed);
        let t0 = Instant::now();
        server.restart().await?;
        let restart_ms = t0.elapsed().as_secs_f64() * 1000.0;
        let deadline = Instant::now() + Duration::from_secs(300);
        while pop.ctx.resumed.load(Relaxed) < pop.clients as u64 {
            if Instant::now() > deadline {
                bail!("only {} of {} clients resumed within 300 s", pop.ctx.resumed.load(Relaxed), pop.clients);
            }
            sleep(Duration::from_millis(5)).await;
        }
        let resumed_ms = t0.elapsed().as_secs_f64() * 1000.0;
        sleep(Duration::from_secs(1)).await;
        let rss = server.rss_kib()?;
        let r = json!({"cycle": cycle, "all_resumed_ms": round2(resumed_ms), "server_restart_ms": round2(restart_ms),
            "rss_kib": rss});
        eprintln!("reconnect: {r}");
        results.push(r);
    }
    // The same storm without a restart: every client drops its connection
    // at once and comes back to the same server process, cycle after cycle.
    // Its RSS after each shows whether a storm leaves memory behind, which
    // restarts would hide.
    let mut drops = Vec::new();
    for cycle in 1..=cycles {
        pop.set_phase(|p| p.burst = burst);
        let deadline = Instant::now() + Duration::from_secs(60);
        let want = ((cycles + cycle) * burst as usize * pop.ctx.rooms.len()) as u64;
        while Counters::get(&c.acked) + Counters::get(&c.send_errors) < Counters::get(&c.sent)
            || Counters::get(&c.sent) < want
        {
            if Instant::now() > deadline {
                bail!("sends before drop {cycle} were not answered in 60 s");
            }
            sleep(Duration::from_millis(5)).await;
        }
        pop.ctx.resumed.store(0, Relaxed);
        let t0 = Instant::now();
        pop.set_phase(|p| p.drop_generation += 1);
        let deadline = Instant::now() + Duration::from_secs(300);
        while pop.ctx.resumed.load(Relaxed) < pop.clients as u64 {
            if Instant::now() > deadline {
                bail!(
                    "only {} of {} clients resumed within 300 s of drop {cycle}",
                    pop.ctx.resumed.load(Relaxed),
                    pop.clients
                );
            }
            sleep(Duration::from_millis(5)).await;
        }
        let resumed_ms = t0.elapsed().as_secs_f64() * 1000.0;
        sleep(Duration::from_secs(1)).await;
        let r = json!({"cycle": cycle, "all_resumed_ms": round2(resumed_ms), "rss_kib": server.rss_kib()?});
        eprintln!("reconnect (drop): {r}");
        drops.push(r);
    }
    let drained = pop.drain(Duration::from_secs(10)).await;
    let checks = pop.finish().await?;
    let rss_first = drops.first().and_then(|r| r["rss_kib"].as_u64()).unwrap_or(0);
    let rss_last = drops.last().and_then(|r| r["rss_kib"].as_u64()).unwrap_or(0);
    let mut drop_times: Vec<f64> = drops.iter().filter_map(|r| r["all_resumed_ms"].as_f64()).collect();
    drop_times.sort_by(f64::total_cmp);
    let mut times: Vec<f64> = results.iter().filter_map(|r| r["all_resumed_ms"].as_f64()).collect();
    times.sort_by(f64::total_cmp);
    Ok((
        json!({"clients": pop_clients(clients, room_size), "room_size": room_size, "cycles": cycles,
            "messages_per_room_before_each_restart": burst}),
        json!({
            "median_all_resumed_ms": times.get(times.len() / 2).copied().unwrap_or(0.0),
            "max_all_resumed_ms": times.last().copied().unwrap_or(0.0),
            "median_drop_resumed_ms": drop_times.get(drop_times.len() / 2).copied().unwrap_or(0.0),
            "rss_after_first_kib": rss_first,
            "rss_after_last_kib": rss_last,
            "rss_growth_pct": if rss_first > 0 { round2((rss_last as f64 / rss_first as f64 - 1.0) * 100.0) } else { 0.0 },
            "drained": drained,
            "cycles": results,
            "drop_cycles": drops,
        }),
        checks,
    ))
}

// ---------------------------------------------------------------- idle

/// Clients one worker process holds: under the 20 000 files a process may open.
const PER_WORKER: usize = 9_000;

/// Scenario 1: idle authenticated connections held by worker processes;
/// the server's RSS growth divided by the connections. Each count runs on a
/// fresh server process.
async fn idle(args: &RunArgs, server: &mut Servers) -> anyhow::Result<Outcome> {
    let counts = args.counts.clone().unwrap_or(if args.quick { vec![200] } else { vec![5_000, 10_000, 19_000] });
    let exe = std::env::current_exe()?;
    let proto_name = format!("{:?}", args.proto).to_lowercase();
    let mut rows = Vec::new();
    let mut failed_total = 0;
    for (i, &count) in counts.iter().enumerate() {
        if i > 0 {
            server.restart().await?;
        }
        sleep(Duration::from_secs(1)).await;
        let before = server.rss_kib()?;
        let workers = count.div_ceil(PER_WORKER);
        // Past ~28k connections one source address runs out of ports.
        let src_ips = (count / 20_000 + 1).min(250) as u8 + 1;
        let mut children = Vec::new();
        let t0 = Instant::now();
        for w in 0..workers {
            let first = w * PER_WORKER;
            let n = PER_WORKER.min(count - first);
            let mut child = tokio::process::Command::new(&exe)
                .args(["idle-worker", "--proto", &proto_name, "--addr", &args.addr[0].to_string()])
                .args(["--first", &first.to_string(), "--count", &n.to_string(), "--src-ips", &src_ips.to_string()])
                .env("CHAT_JWT_SECRET", &args.secret)
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::piped())
                .kill_on_drop(true)
                .spawn()?;
            let stdout = BufReader::new(child.stdout.take().context("worker stdout")?).lines();
            children.push((child, stdout));
        }
        let mut connected = 0;
        let mut failed = 0;
        for (_, lines) in children.iter_mut() {
            let line = lines.next_line().await?.context("worker ended before reporting")?;
            let mut parts = line.split_whitespace().skip(1);
            connected += parts.next().and_then(|v| v.parse::<usize>().ok()).unwrap_or(0);
            failed += parts.next().and_then(|v| v.parse::<usize>().ok()).unwrap_or(0);
        }
        let connect_s = t0.elapsed().as_secs_f64();
        sleep(Duration::from_secs(3)).await;
        let after = server.rss_kib()?;
        let mut alive = 0;
        for (child, lines) in children.iter_mut() {
            if let Some(stdin) = child.stdin.as_mut() {
                stdin.write_all(b"STOP\n").await?;
            }
            if let Some(line) = lines.next_line().await? {
                alive += line.split_whitespace().nth(1).and_then(|v| v.parse::<usize>().ok()).unwrap_or(0);
            }
            child.wait().await?;
        }
        failed_total += failed + connected.saturating_sub(alive);
        let row = json!({
            "connections": count, "connected": connected, "failed": failed, "alive_at_end": alive,
            "connect_seconds": round2(connect_s), "workers": workers,
            "rss_before_kib": before, "rss_after_kib": after,
            "bytes_per_connection": if connected > 0 { ((after.saturating_sub(before)) * 1024) / connected as u64 } else { 0 },
        });
        eprintln!("idle: {row}");
        rows.push(row);
    }
    Ok((
        json!({"counts": counts, "per_worker_process": PER_WORKER}),
        json!({"rows": rows}),
        json!({"lost": 0, "duplicated": 0, "out_of_order": 0, "failed_connections": failed_total}),
    ))
}

/// Connects `count` clients, prints `READY <connected> <failed>`, holds them
/// (answering keep-alives) until a line arrives on stdin, then prints
/// `ALIVE <still open>` and exits.
async fn idle_worker(args: WorkerArgs) -> anyhow::Result<()> {
    let proto = protocol(args.proto);
    let alive = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicU64::new(0));
    let gate = Arc::new(Semaphore::new(128));
    for i in args.first..args.first + args.count {
        let (proto, alive, failed, done, gate) =
            (proto.clone(), alive.clone(), failed.clone(), done.clone(), gate.clone());
        let token = token(&args.secret, i)?;
        let addr = args.addr;
        let src = source_ip(i, args.src_ips);
        tokio::spawn(async move {
            let permit = gate.acquire().await;
            let ws = connect(&*proto, addr, src, &token).await;
            drop(permit);
            done.fetch_add(1, Relaxed);
            let mut ws = match ws {
                Ok(ws) => ws,
                Err(e) => {
                    if failed.fetch_add(1, Relaxed) < 3 {
                        eprintln!("idle client {i}: {e:#}");
                    }
                    return;
                }
            };
            alive.fetch_add(1, Relaxed);
            use futures_util::SinkExt;
            while let Some(Ok(frame)) = ws.next().await {
                if let Message::Text(text) = frame
                    && let Ok(Event::Ping(pong)) = proto.decode(&text)
                    && ws.send(Message::text(pong)).await.is_err()
                {
                    break;
                }
            }
            alive.fetch_sub(1, Relaxed);
        });
    }
    while done.load(Relaxed) < args.count as u64 {
        sleep(Duration::from_millis(20)).await;
    }
    println!("READY {} {}", alive.load(Relaxed), failed.load(Relaxed));
    let mut stdin = BufReader::new(tokio::io::stdin()).lines();
    let _ = stdin.next_line().await;
    println!("ALIVE {}", alive.load(Relaxed));
    Ok(())
}
