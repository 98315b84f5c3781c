//! One simulated user: a WebSocket, a room, and whatever the current
//! [`Phase`] tells it to do. The same code drives both servers; only the
//! [`Protocol`] differs.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use anyhow::{Context, bail};
use futures_util::{SinkExt, StreamExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::{Mutex, Semaphore, watch};
use tokio::time::{Instant, sleep_until, timeout};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;

use crate::proto::{Event, Msg, Protocol, body};
use crate::stats::{Counters, Receipt, RoomLedger, now_us};

pub(crate) type Ws = WebSocketStream<TcpStream>;

/// How long a connection may take from TCP connect to ready.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(60);

/// A bench room: its id on the server, how many clients are in it, and the
/// highest seq any ack reported.
#[derive(Debug)]
pub(crate) struct Room {
    pub(crate) id: String,
    pub(crate) members: u64,
    pub(crate) last_seq: AtomicU64,
}

/// What every client should be doing now. Clients watch it; the scenario
/// moves it on.
#[derive(Debug, Clone, Default)]
pub(crate) struct Phase {
    /// Bumped by every new phase, so that a client reconnecting in the
    /// middle of one does not repeat its burst.
    pub(crate) generation: u64,
    /// Publishers send one message this often (open loop, random phase).
    pub(crate) send_every: Option<Duration>,
    /// Publishers keep exactly one send in flight, the next sent on its ack.
    pub(crate) closed_loop: bool,
    /// Publishers send this many messages at once when the phase begins.
    pub(crate) burst: u32,
    /// Every client sends `typing:start` this often (random phase).
    pub(crate) typing_every: Option<Duration>,
    /// Close the connection and hand in the ledger.
    pub(crate) stop: bool,
    /// Bumped to make every client drop its connection at once (no close
    /// frame, as when a network path fails), then reconnect and resume.
    pub(crate) drop_generation: u64,
}

/// What the clients of one run share.
#[derive(Debug)]
pub(crate) struct Ctx {
    pub(crate) proto: Arc<dyn Protocol>,
    /// The server's processes; client `i` connects to the `i mod n`th, so
    /// that consecutive clients (the members of a room) are spread evenly.
    pub(crate) addrs: Vec<SocketAddr>,
    pub(crate) src_ips: u8,
    pub(crate) rooms: Vec<Room>,
    pub(crate) body_len: usize,
    pub(crate) counters: Counters,
    pub(crate) phase: watch::Sender<Phase>,
    /// Clients connected and subscribed (incremented once per client).
    pub(crate) joined: AtomicU64,
    /// Clients back and caught up after their latest reconnect.
    pub(crate) resumed: AtomicU64,
    /// Reconnect after the server closes the connection, instead of ending.
    pub(crate) reconnect: bool,
    /// Each client's ledger at the end: (room, ledger).
    pub(crate) ledgers: Mutex<Vec<(usize, RoomLedger)>>,
    /// Bounds the clients connecting at once at the start (not in the storm).
    pub(crate) connect_gate: Semaphore,
}

impl Ctx {
    /// The server process client `index` connects to.
    pub(crate) fn addr_of(&self, index: usize) -> SocketAddr {
        self.addrs[index % self.addrs.len()]
    }
}

impl std::fmt::Debug for dyn Protocol {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// The source address of client `index`: 127.0.0.1 … 127.0.0.<src_ips>, so
/// that more clients than one address has ephemeral ports can connect.
pub(crate) fn source_ip(index: usize, src_ips: u8) -> Ipv4Addr {
    Ipv4Addr::new(127, 0, 0, 1 + (index % usize::from(src_ips.max(1))) as u8)
}

/// Read buffer of each client socket: larger than any frame a scenario sends.
const READ_BUFFER_BYTES: usize = 4096;

/// Opens a WebSocket from `src` and waits until the session is ready.
pub(crate) async fn connect(proto: &dyn Protocol, addr: SocketAddr, src: Ipv4Addr, token: &str) -> anyhow::Result<Ws> {
    let attempt = async {
        let socket = TcpSocket::new_v4()?;
        socket.bind(SocketAddr::V4(SocketAddrV4::new(src, 0))).with_context(|| format!("binding {src}"))?;
        let stream = socket.connect(addr).await.with_context(|| format!("connecting to {addr}"))?;
        stream.set_nodelay(true)?;
        let url = format!("ws://{addr}{}", proto.path(token));
        // tungstenite zeroes its whole read buffer (128 KiB by default) before
        // every read; a small one keeps that from dominating the generator's CPU.
        let config = tungstenite::protocol::WebSocketConfig::default().read_buffer_size(READ_BUFFER_BYTES);
        let (mut ws, _) = tokio_tungstenite::client_async_with_config(url, stream, Some(config))
            .await
            .context("websocket upgrade")?;
        loop {
            let Some(frame) = ws.next().await else { bail!("closed during the handshake") };
            let Message::Text(text) = frame? else { continue };
            match proto.decode(&text)? {
                Event::Open => ws.send(Message::text(proto.auth_frame(token))).await?,
                Event::Ready => return Ok(ws),
                Event::Refused(why) => bail!("refused: {why}"),
                Event::Ping(pong) => ws.send(Message::text(pong)).await?,
                _ => {}
            }
        }
    };
    timeout(HANDSHAKE_TIMEOUT, attempt).await.context("handshake timed out")?
}

/// One client of a room scenario.
#[derive(Debug)]
pub(crate) struct Client {
    pub(crate) index: usize,
    pub(crate) token: String,
    pub(crate) room: usize,
    pub(crate) publisher: bool,
}

enum Pending {
    Send(u64),
    Join,
}

/// The state a client keeps across reconnects.
struct State {
    ledger: RoomLedger,
    pending: HashMap<u64, Pending>,
    next_id: u64,
    msg_no: u64,
    /// While resuming: the room's last seq at the join; resumed once the
    /// ledger's contiguous prefix reaches it.
    resume_target: Option<u64>,
    /// The room's last seq at the latest resuming join: a replayed seq up to
    /// it that the client already had (its own send above its contiguous
    /// prefix, say) is what `since_seq` asked for, not a repeat.
    replay_upto: u64,
    /// The generation of the last phase whose burst this client sent.
    burst_generation: u64,
    /// The last drop this client carried out.
    drop_generation: u64,
}

impl Client {
    /// Runs until the phase says stop (or, without reconnects, until the
    /// connection is lost), then hands in the ledger.
    pub(crate) async fn run(self, ctx: Arc<Ctx>) {
        let mut state = State {
            ledger: RoomLedger::default(),
            pending: HashMap::new(),
            next_id: 1,
            msg_no: 0,
            resume_target: None,
            replay_upto: 0,
            burst_generation: 0,
            drop_generation: ctx.phase.borrow().drop_generation,
        };
        let mut first = true;
        loop {
            let src = source_ip(self.index, ctx.src_ips);
            let ws = if first {
                let permit = ctx.connect_gate.acquire().await;
                let ws = connect(&*ctx.proto, ctx.addr_of(self.index), src, &self.token).await;
                drop(permit);
                match ws {
                    Ok(ws) => ws,
                    Err(e) => {
                        eprintln!("client {} could not connect: {e:#}", self.index);
                        ctx.counters.disconnects.fetch_add(1, Relaxed);
                        break;
                    }
                }
            } else {
                // A server restart: retry until it is back.
                let deadline = Instant::now() + Duration::from_secs(120);
                let mut delay = Duration::from_millis(20);
                loop {
                    match connect(&*ctx.proto, ctx.addr_of(self.index), src, &self.token).await {
                        Ok(ws) => break ws,
                        Err(e) if Instant::now() > deadline => {
                            eprintln!("client {} gave up reconnecting: {e:#}", self.index);
                            ctx.counters.disconnects.fetch_add(1, Relaxed);
                            ctx.ledgers.lock().await.push((self.room, state.ledger));
                            return;
                        }
                        Err(_) => {
                            tokio::time::sleep(delay + Duration::from_millis(fastrand_ms(self.index, 20))).await;
                            delay = (delay * 2).min(Duration::from_millis(500));
                        }
                    }
                }
            };
            let since = if first { None } else { Some(state.ledger.prefix()) };
            match self.session(&ctx, ws, &mut state, since, first).await {
                Ok(true) => break,
                Ok(false) | Err(_) if ctx.reconnect && !ctx.phase.borrow().stop => {
                    state.pending.clear();
                    first = false;
                }
                Ok(false) | Err(_) => {
                    if !ctx.phase.borrow().stop {
                        ctx.counters.disconnects.fetch_add(1, Relaxed);
                    }
                    break;
                }
            }
        }
        ctx.ledgers.lock().await.push((self.room, state.ledger));
    }

    fn id(state: &mut State) -> u64 {
        state.next_id += 1;
        state.next_id
    }

    async fn send_message(&self, ctx: &Ctx, ws: &mut Ws, state: &mut State) -> anyhow::Result<()> {
        let id = Self::id(state);
        state.msg_no += 1;
        let sent = now_us();
        let cmid = format!("c{}-{}", self.index, state.msg_no);
        let text = ctx.proto.send(&ctx.rooms[self.room].id, &cmid, &body(self.room, sent, ctx.body_len), id);
        state.pending.insert(id, Pending::Send(sent));
        ctx.counters.sent.fetch_add(1, Relaxed);
        ws.send(Message::text(text)).await?;
        Ok(())
    }

    /// One connection's life. `Ok(true)`: stopped as asked; `Ok(false)`: the
    /// server closed it.
    async fn session(
        &self,
        ctx: &Ctx,
        mut ws: Ws,
        state: &mut State,
        since: Option<u64>,
        first: bool,
    ) -> anyhow::Result<bool> {
        let room = &ctx.rooms[self.room];
        let id = Self::id(state);
        state.pending.insert(id, Pending::Join);
        ws.send(Message::text(ctx.proto.join(&room.id, since, id))).await?;

        let mut phase_rx = ctx.phase.subscribe();
        let mut phase = phase_rx.borrow_and_update().clone();
        let far = Instant::now() + Duration::from_secs(86_400 * 365);
        let mut next_send = far;
        let mut next_typing = far;
        let mut joined = false;
        let mut phase_pending = true;

        loop {
            if joined && phase_pending {
                phase_pending = false;
                if phase.stop {
                    let _ = ws.close(None).await;
                    return Ok(true);
                }
                if phase.drop_generation > state.drop_generation {
                    state.drop_generation = phase.drop_generation;
                    // Dropping the socket closes it without a WebSocket close.
                    return Ok(false);
                }
                let now = Instant::now();
                next_send = match (self.publisher, phase.send_every) {
                    (true, Some(every)) => now + every.mul_f64(fastrand_unit(self.index, state.msg_no)),
                    _ => far,
                };
                next_typing = match phase.typing_every {
                    Some(every) => now + every.mul_f64(fastrand_unit(self.index + 7919, state.msg_no)),
                    None => far,
                };
                if self.publisher && phase.generation > state.burst_generation {
                    state.burst_generation = phase.generation;
                    for _ in 0..phase.burst {
                        self.send_message(ctx, &mut ws, state).await?;
                    }
                }
                if self.publisher && phase.closed_loop && !state.pending.values().any(|p| matches!(p, Pending::Send(_)))
                {
                    self.send_message(ctx, &mut ws, state).await?;
                }
            }
            tokio::select! {
                frame = ws.next() => {
                    let text = match frame {
                        None => return Ok(false),
                        Some(Err(e)) => return Err(e.into()),
                        Some(Ok(Message::Text(text))) => text,
                        Some(Ok(Message::Close(_))) => return Ok(false),
                        Some(Ok(_)) => continue,
                    };
                    match ctx.proto.decode(&text)? {
                        Event::Ping(pong) => ws.send(Message::text(pong)).await?,
                        Event::Message(m) => self.on_message(ctx, state, m),
                        Event::Typing => { ctx.counters.typing.fetch_add(1, Relaxed); }
                        Event::Reply { id, result } => match (state.pending.remove(&id), result) {
                            (Some(Pending::Send(sent)), Ok(reply)) => {
                                let c = &ctx.counters;
                                c.ack.record(now_us().saturating_sub(sent));
                                c.acked.fetch_add(1, Relaxed);
                                c.expected.fetch_add(room.members - 1, Relaxed);
                                let seq = reply.seq.context("send reply without seq")?;
                                state.ledger.own(seq);
                                room.last_seq.fetch_max(seq, Relaxed);
                                if phase.closed_loop && self.publisher && !phase.stop {
                                    self.send_message(ctx, &mut ws, state).await?;
                                }
                            }
                            (Some(Pending::Send(_)), Err(e)) => {
                                if ctx.counters.send_errors.fetch_add(1, Relaxed) < 5 {
                                    eprintln!("client {}: send failed: {e}", self.index);
                                }
                            }
                            (Some(Pending::Join), Ok(reply)) => {
                                if !joined {
                                    joined = true;
                                    if first {
                                        ctx.joined.fetch_add(1, Relaxed);
                                    }
                                }
                                if since.is_some() {
                                    // The replay of what followed `since`
                                    // comes next, as `message:new` events.
                                    let target = reply.last_seq.unwrap_or(0);
                                    state.resume_target = Some(target);
                                    state.replay_upto = state.replay_upto.max(target);
                                    self.check_resumed(ctx, state);
                                }
                            }
                            (Some(_), Err(e)) => bail!("client {}: command failed: {e}", self.index),
                            (None, _) => bail!("client {}: reply to an unknown command {id}", self.index),
                        },
                        Event::Refused(why) => bail!("client {}: {why}", self.index),
                        Event::Open | Event::Ready | Event::Other => {}
                    }
                }
                _ = sleep_until(next_send) => {
                    // A phase change not yet seen may have stopped sending:
                    // see it first, or a send could follow the scenario's
                    // final drain and go unanswered.
                    if phase_rx.has_changed().unwrap_or(true) {
                        next_send = far;
                        continue;
                    }
                    self.send_message(ctx, &mut ws, state).await?;
                    let every = phase.send_every.unwrap_or(Duration::from_secs(1));
                    next_send += every;
                    // Behind by more than a period: skip, so that a slow
                    // client does not burst.
                    if next_send < Instant::now() { next_send = Instant::now() + every; }
                }
                _ = sleep_until(next_typing) => {
                    ws.send(Message::text(ctx.proto.typing(&room.id))).await?;
                    next_typing += phase.typing_every.unwrap_or(Duration::from_secs(1));
                }
                changed = phase_rx.changed() => {
                    if changed.is_err() { return Ok(true); }
                    phase = phase_rx.borrow_and_update().clone();
                    phase_pending = true;
                }
            }
        }
    }

    fn on_message(&self, ctx: &Ctx, state: &mut State, m: Msg) {
        let c = &ctx.counters;
        if m.seq <= state.replay_upto {
            if state.ledger.has(m.seq) {
                return;
            }
        } else {
            c.delivery.record(now_us().saturating_sub(m.sent_us));
        }
        c.delivered.fetch_add(1, Relaxed);
        match state.ledger.receive(m.seq) {
            Receipt::New => {}
            Receipt::Duplicate => {
                c.duplicated.fetch_add(1, Relaxed);
            }
            Receipt::OutOfOrder => {
                c.out_of_order.fetch_add(1, Relaxed);
            }
        }
        if m.room != self.room {
            c.out_of_order.fetch_add(1, Relaxed);
        }
        self.check_resumed(ctx, state);
    }

    fn check_resumed(&self, ctx: &Ctx, state: &mut State) {
        if let Some(target) = state.resume_target
            && state.ledger.prefix() >= target
        {
            state.resume_target = None;
            ctx.resumed.fetch_add(1, Relaxed);
        }
    }
}

/// A cheap deterministic pseudo-random fraction in [0, 1) from two numbers,
/// to spread clients' timers without a random-number dependency.
pub(crate) fn fastrand_unit(a: usize, b: u64) -> f64 {
    let mut x = (a as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ b.wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x ^= x >> 31;
    x = x.wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^= x >> 29;
    (x >> 11) as f64 / (1u64 << 53) as f64
}

fn fastrand_ms(a: usize, max: u64) -> u64 {
    (fastrand_unit(a, now_us()) * max as f64) as u64
}
