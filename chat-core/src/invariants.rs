//! The engine's invariants, checked under random command sequences (feature
//! `testing`).
//!
//! [`check`] starts an [`Engine`] on a store, drives real sessions through a
//! sequence of [`Op`]s the way a transport would (submit a command with a
//! `ref`, read outputs until its reply), keeps a model of what every reply
//! should be, and after each op compares the engine, its sessions and the
//! store with that model. It fails on the first difference, with the op that
//! caused it. The property tests feed it sequences that `proptest` makes,
//! once on [`MemoryStore`](crate::MemoryStore)
//! (`chat-core/tests/engine_invariants.rs`) and once on SQLite
//! (`chat-store-sql/tests/engine_invariants.rs`), so a store and the engine
//! are checked together.
//!
//! What is checked:
//!
//! - **Replies.** Every command gets the reply the model predicts: success,
//!   or exactly the error code the rules call for (`not_found`,
//!   `not_member`, `forbidden`, `invalid`, `rate_limited`). `internal` and
//!   `unavailable` never reach a client, no session is closed, no reply comes
//!   that nobody asked for, and nothing panics, in the checker or in any of
//!   the engine's tasks.
//! - **Gapless seqs.** Each room's full history, paged through
//!   [`Store::history`] a few messages at a time, holds exactly the seqs
//!   `1..=last_seq`, and the message at each seq is the one the model acked.
//! - **Idempotent sends.** A send with the (room, sender, `client_msg_id`) of
//!   an acknowledged one answers with the same message id and seq, also after
//!   the sender left and came back; sends of one key from several sessions
//!   at once ([`Op::ConcurrentSends`]) all get the one message; the history
//!   holds each key at most once.
//! - **Forward-only cursors.** A member's `read_seq` and `delivered_seq`
//!   ([`Store::member`]) never go down while they stay a member (a new
//!   membership starts at 0), `read_seq <= delivered_seq <= last_seq`, and
//!   both are what the model expects (a sender has read their own message).
//! - **Membership.** Each room's members, each user's room count, `ready`'s
//!   rooms and `room:list` are what the model expects.
//! - **Quota exactness.** A user's own rooms (created, or joined by
//!   themselves; not rooms others added them to) never exceed
//!   [`QUOTA`]: a create or self-join below it succeeds, one at it is
//!   `forbidden` (a `direct` room that exists is returned all the same), and
//!   [`Op::ConcurrentCreates`], `n` creates and `j` self-joins at once, gets
//!   exactly `min(n + j, QUOTA - own)` of them through, while another user
//!   may be adding the same user to a room at that moment.
//! - **Presence over sessions.** [`Engine::online_users`] lists exactly the
//!   users with at least one open session whose status is not `invisible`,
//!   with the status they chose (a user's status starts over at `online` when
//!   their first session opens). The tracker is updated synchronously as
//!   sessions open and drop, so this is checked at once after each op, not
//!   after a settling delay.
//! - **Ordering.** Each session receives a room's `message:new` events in
//!   increasing seq order, never one twice, between two of its own
//!   `room:join` or `room:leave` of that room, and each is the stored
//!   message of its seq.
//!
//! Every wait is bounded ([`REPLY_WAIT`]), so a lost reply fails the case
//! rather than hanging the test.
//!
//! # Running
//!
//! `cargo test` runs 256 cases of up to 40 ops on the memory store and 24 on
//! SQLite, about a second and a few seconds. `PROPTEST_CASES` sets how many;
//! a long run:
//!
//! ```text
//! PROPTEST_CASES=5000 cargo test -p chat-core --features testing --test engine_invariants --release
//! PROPTEST_CASES=1000 cargo test -p chat-store-sql --test engine_invariants --release
//! ```
//!
//! A failing case is shrunk, printed as a list of [`Op`]s with the error of
//! the op that broke an invariant, and saved in the crate's
//! `proptest-regressions/engine_invariants.txt`, which runs it first next
//! time. To replay one by hand, pass the printed list to [`check`] in a test.
//!
//! The panic check installs a panic hook that counts panics in the whole
//! process; a test binary that runs [`check`] should not run tests that
//! panic on purpose at the same time.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Once};
use std::time::Duration;

use futures_util::FutureExt;
use futures_util::future::{join, join_all};

use crate::command::{Command, CreateRoom, Invite, JoinRoom, Receipt, Reply, RoomRef, SendMessage, UpdatePresence};
use crate::config::{EngineConfig, Limits};
use crate::engine::{Engine, Output, Ref, Session};
use crate::error::{Error, ErrorCode};
use crate::event::Event;
use crate::id::{MessageId, RoomId, UserId};
use crate::message::HistoryQuery;
use crate::presence::PresenceStatus;
use crate::room::{RoomKind, RoomSummary, Visibility};
use crate::store::Store;
use crate::user::{Identity, User};

/// Users who connect, named `u0` to `u4`, all recorded in the store before
/// the first op. Ops that name another user may also name `u5`, whom the
/// store does not know.
pub const USERS: usize = 5;
/// The own-room quota of the checked engine ([`Limits::max_rooms_per_user`]):
/// small, so that sequences reach it.
pub const QUOTA: u64 = 3;
/// Sessions one user may have open ([`Limits::max_connections_per_user`]).
pub const MAX_CONNECTIONS: usize = 6;
/// How long any reply or store call may take before the case fails.
pub const REPLY_WAIT: Duration = Duration::from_secs(10);
/// Distinct `client_msg_id`s per sender, few so that retries happen.
const KEYS: u8 = 4;
/// The page size used to read a room's history, small so that paging is used.
const HISTORY_PAGE: u32 = 3;

/// One step of a sequence. Indices are raw and taken modulo what exists
/// when the op runs: `session` picks one of the open sessions in opening
/// order (when none is open, a session of user `session % 5` is opened
/// first); `room` below 128 picks one of the rooms of the session's user (or
/// of all rooms, when they have none), and from 128 one of all the rooms made
/// so far or, as the index one past the last, a room that does not exist;
/// `user` is `u0`..`u4` where it connects and `u0`..`u5` where it is named.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// Opens a session for a user (refused once they have [`MAX_CONNECTIONS`]).
    Connect {
        /// The user.
        user: u8,
    },
    /// Drops a session.
    Disconnect {
        /// The session.
        session: u8,
    },
    /// `room:create` of a group, naming members (possibly the creator, or an
    /// unknown user).
    CreateGroup {
        /// The creator's session.
        session: u8,
        /// Public or private.
        public: bool,
        /// The members named.
        members: Vec<u8>,
    },
    /// `room:create` of a direct room with one other user.
    CreateDirect {
        /// The creator's session.
        session: u8,
        /// The other user.
        other: u8,
    },
    /// `n` private groups created, and up to `joins` public groups joined,
    /// at once by one user, from their open sessions and as many new ones as
    /// needed, while `adder` (if connected and not the same user) creates a
    /// group with the user as a member.
    ConcurrentCreates {
        /// The user.
        user: u8,
        /// How many creates, 1 to 4.
        n: u8,
        /// How many public groups the user is not in to join, 0 to 2 (fewer
        /// when there are fewer such rooms).
        joins: u8,
        /// Who adds the user to a room meanwhile.
        adder: Option<u8>,
    },
    /// One `message:send` per key at once, each from its own session of one
    /// user (their open sessions first, then new ones), into one room: a
    /// key named twice is sent twice at the same moment.
    ConcurrentSends {
        /// The sender.
        user: u8,
        /// The room, picked as for the user's session.
        room: u8,
        /// The idempotency keys, 2 to 4 of them.
        keys: Vec<u8>,
    },
    /// `room:join`, with or without `since_seq`.
    Join {
        /// The session.
        session: u8,
        /// The room.
        room: u8,
        /// The resume point.
        since: Option<u64>,
    },
    /// `room:leave`.
    Leave {
        /// The session.
        session: u8,
        /// The room.
        room: u8,
    },
    /// `room:invite`.
    Invite {
        /// The inviter's session.
        session: u8,
        /// The room.
        room: u8,
        /// Who is invited.
        user: u8,
    },
    /// `message:send` with the `client_msg_id` `k{key % 4}`.
    Send {
        /// The sender's session.
        session: u8,
        /// The room.
        room: u8,
        /// The idempotency key.
        key: u8,
    },
    /// `message:read`.
    Read {
        /// The session.
        session: u8,
        /// The room.
        room: u8,
        /// The cursor's new position.
        up_to: u64,
    },
    /// `message:delivered`.
    Delivered {
        /// The session.
        session: u8,
        /// The room.
        room: u8,
        /// The cursor's new position.
        up_to: u64,
    },
    /// `presence:update` (`offline` is refused).
    SetStatus {
        /// The session.
        session: u8,
        /// The status.
        status: PresenceStatus,
    },
    /// `typing:start` or `typing:stop`.
    Typing {
        /// The session.
        session: u8,
        /// The room.
        room: u8,
        /// Start or stop.
        start: bool,
    },
    /// `room:list`.
    ListRooms {
        /// The session.
        session: u8,
    },
}

impl Op {
    /// Makes an op from four random bytes, the first choosing the kind (with
    /// weights: sends, joins and connects are the most common), the others
    /// its fields. All zeros is `Connect { user: 0 }`, so shrinking a byte
    /// towards zero moves towards simpler ops. A generator of sequences is
    /// then `vec(any::<[u8; 4]>().prop_map(Op::from_bytes), 1..=40)`.
    pub fn from_bytes([kind, a, b, c]: [u8; 4]) -> Op {
        let room = b;
        match kind % 26 {
            0..=1 => Op::Connect { user: a },
            2 => Op::Disconnect { session: a },
            3..=5 => Op::CreateGroup {
                session: a,
                public: c % 2 == 1,
                // Users u0..u4 by bit; the unknown u5 in one case of eight.
                members: (0..USERS as u8)
                    .filter(|u| b & (1 << u) != 0)
                    .chain((b & 0xe0 == 0xe0).then_some(USERS as u8))
                    .collect(),
            },
            6 => Op::CreateDirect { session: a, other: b },
            7 => {
                Op::ConcurrentCreates { user: a, n: 1 + c % 4, joins: c / 4 % 3, adder: (b % 2 == 1).then_some(b / 2) }
            }
            8..=10 => Op::Join { session: a, room, since: (c % 4 != 0).then_some(u64::from(c / 4 % 6)) },
            11 => Op::Leave { session: a, room },
            12..=13 => Op::Invite { session: a, room, user: c },
            14..=18 => Op::Send { session: a, room, key: c },
            19..=20 => Op::Read { session: a, room, up_to: u64::from(c % 4) },
            21 => Op::Delivered { session: a, room, up_to: u64::from(c % 4) },
            22 => Op::SetStatus {
                session: a,
                status: match c % 5 {
                    0 => PresenceStatus::Online,
                    1 => PresenceStatus::Away,
                    2 => PresenceStatus::Busy,
                    3 => PresenceStatus::Invisible,
                    _ => PresenceStatus::Offline,
                },
            },
            23 => Op::Typing { session: a, room, start: c % 2 == 0 },
            24 => Op::ListRooms { session: a },
            _ => {
                Op::ConcurrentSends { user: a, room, keys: (0..2 + (c >> 6) % 3).map(|j| (c >> (2 * j)) & 3).collect() }
            }
        }
    }
}

/// The configuration of the checked engine: the small [`QUOTA`], no limit on
/// room actions per minute, command rates no sequence reaches, and no
/// keepalives.
pub fn config() -> EngineConfig {
    EngineConfig {
        limits: Limits {
            max_rooms_per_user: QUOTA,
            room_actions_per_minute: 0,
            max_connections_per_user: MAX_CONNECTIONS,
            commands_per_second: 100_000,
            command_burst: 100_000,
            ..Limits::default()
        },
        keepalive_interval: Duration::ZERO,
        ..EngineConfig::default()
    }
}

/// The property tests' settings: proptest's defaults, which read
/// `PROPTEST_*` from the environment, with `default_cases` cases unless
/// `PROPTEST_CASES` says how many. Failing cases are kept in
/// `proptest-regressions/engine_invariants.txt` of the crate under test (an
/// integration test has no `lib.rs` for proptest's default location to be
/// found from).
pub fn proptest_config(default_cases: u32) -> proptest::test_runner::Config {
    let mut config = proptest::test_runner::Config::default();
    if std::env::var_os("PROPTEST_CASES").is_none() {
        config.cases = default_cases;
    }
    config.failure_persistence = Some(Box::new(proptest::test_runner::FileFailurePersistence::Direct(
        "proptest-regressions/engine_invariants.txt",
    )));
    config
}

/// Random op sequences of 1 to `max_ops` ops; shrinking moves towards
/// shorter sequences of simpler ops.
pub fn ops(max_ops: usize) -> impl proptest::strategy::Strategy<Value = Vec<Op>> {
    use proptest::prelude::*;
    proptest::collection::vec(any::<[u8; 4]>().prop_map(Op::from_bytes), 1..=max_ops)
}

/// Runs [`check`] on the store `make` gives, on a runtime of its own (one
/// per case), as a proptest case's result.
pub fn run_case<S, F>(make: impl FnOnce() -> F, ops: &[Op]) -> Result<(), proptest::test_runner::TestCaseError>
where
    F: Future<Output = S>,
    S: StoreHandle,
{
    use proptest::test_runner::TestCaseError;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| TestCaseError::fail(format!("no Tokio runtime: {e}")))?;
    runtime
        .block_on(async {
            let handle = make().await;
            let result = check(handle.store(), ops).await;
            // The engine closes the store when it shuts down; whatever the
            // handle keeps (a temporary file) goes after that.
            drop(handle);
            result
        })
        .map_err(TestCaseError::fail)
}

/// A store for [`run_case`], with whatever must outlive the run beside it.
pub trait StoreHandle {
    /// The store to run the engine on.
    fn store(&self) -> Arc<dyn Store>;
}

impl StoreHandle for Arc<dyn Store> {
    fn store(&self) -> Arc<dyn Store> {
        self.clone()
    }
}

impl StoreHandle for crate::testing::TestStore {
    fn store(&self) -> Arc<dyn Store> {
        self.shared()
    }
}

/// Runs `ops` on an engine over `store` and checks the invariants of the
/// [module docs](self) after each one and at the end. The engine is shut down
/// (which closes the store) before this returns. The error names the op
/// that broke an invariant and how.
pub async fn check(store: Arc<dyn Store>, ops: &[Op]) -> Result<(), String> {
    count_panics();
    let panics_before = PANICS.load(Ordering::SeqCst);
    let engine = within("starting the engine", Engine::builder(store.clone()).config(config()).start())
        .await?
        .map_err(|e| format!("the engine did not start: {e}"))?;
    let result = match Checker::new(engine.clone(), store) {
        Ok(mut checker) => checker.run(ops).await,
        Err(e) => Err(e),
    };
    // The checker (and with it every session) is gone before the shutdown.
    let shutdown = within("shutting the engine down", engine.shutdown()).await;
    let panics = PANICS.load(Ordering::SeqCst) - panics_before;
    result?;
    shutdown?;
    if panics > 0 {
        return Err(format!("{panics} panic(s) during the run; see the output above"));
    }
    Ok(())
}

static PANICS: AtomicUsize = AtomicUsize::new(0);

/// Counts panics in every thread, including those of tasks that Tokio would
/// otherwise catch quietly, then runs the hook that was there before.
fn count_panics() {
    static HOOK: Once = Once::new();
    HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            PANICS.fetch_add(1, Ordering::SeqCst);
            previous(info);
        }));
    });
}

/// Awaits `fut` for at most [`REPLY_WAIT`].
async fn within<T>(what: &str, fut: impl Future<Output = T>) -> Result<T, String> {
    tokio::time::timeout(REPLY_WAIT, fut).await.map_err(|_| format!("{what}: no answer within {REPLY_WAIT:?}"))
}

/// Awaits a store call for at most [`REPLY_WAIT`]; its errors fail the case.
async fn store_call<T>(what: &str, fut: impl Future<Output = crate::Result<T>>) -> Result<T, String> {
    within(what, fut).await?.map_err(|e| format!("{what} failed: {e} ({})", e.code()))
}

// ---------------------------------------------------------------------------
// The model
// ---------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct MemberModel {
    /// Joined by themselves (counts towards the quota).
    own: bool,
    read: u64,
    delivered: u64,
}

impl MemberModel {
    fn new(own: bool) -> Self {
        MemberModel { own, read: 0, delivered: 0 }
    }
}

#[derive(Debug)]
struct MessageModel {
    id: MessageId,
    sender: usize,
    key: String,
}

#[derive(Debug)]
struct RoomModel {
    id: RoomId,
    kind: RoomKind,
    public: bool,
    members: BTreeMap<usize, MemberModel>,
    /// The message of each seq, at `seq - 1`.
    messages: Vec<MessageModel>,
    /// The seq and id of each acknowledged (sender, `client_msg_id`).
    acked: HashMap<(usize, String), (u64, MessageId)>,
}

impl RoomModel {
    fn last_seq(&self) -> u64 {
        self.messages.len() as u64
    }

    fn message(&self, seq: u64) -> Option<&MessageModel> {
        self.messages.get(usize::try_from(seq).ok()?.checked_sub(1)?)
    }
}

#[derive(Debug, Default)]
struct Model {
    /// The status each user chose.
    status: [Option<PresenceStatus>; USERS],
    rooms: Vec<RoomModel>,
    /// The direct room of each pair, (lower, higher).
    direct: HashMap<(usize, usize), usize>,
}

impl Model {
    fn own(&self, user: usize) -> u64 {
        self.rooms.iter().filter(|r| r.members.get(&user).is_some_and(|m| m.own)).count() as u64
    }

    fn rooms_of(&self, user: usize) -> BTreeSet<RoomId> {
        self.rooms.iter().filter(|r| r.members.contains_key(&user)).map(|r| r.id).collect()
    }

    fn add_room(&mut self, id: RoomId, kind: RoomKind, public: bool, creator: usize, others: &[usize]) -> usize {
        let mut members = BTreeMap::from([(creator, MemberModel::new(true))]);
        for &other in others {
            members.insert(other, MemberModel::new(false));
        }
        self.rooms.push(RoomModel { id, kind, public, members, messages: Vec::new(), acked: HashMap::new() });
        self.rooms.len() - 1
    }
}

/// What a room index names.
#[derive(Debug, Clone, Copy)]
enum Target {
    Room(usize),
    /// A room id that was never created.
    Missing,
}

// ---------------------------------------------------------------------------
// Sessions
// ---------------------------------------------------------------------------

/// What a session received that is checked after the op, in arrival order.
#[derive(Debug)]
enum Seen {
    Message {
        room: RoomId,
        seq: u64,
        id: MessageId,
    },
    /// The session joined or left the room: its stream of the room starts over.
    Restart(RoomId),
}

struct Client {
    user: usize,
    session: Session,
    refs: u64,
    log: Vec<Seen>,
    /// Per room, the seq of the last `message:new` since the last restart.
    last_seen: HashMap<RoomId, u64>,
}

impl Client {
    fn new(user: usize, session: Session) -> Self {
        Client { user, session, refs: 0, log: Vec::new(), last_seen: HashMap::new() }
    }

    /// Runs a command and returns its reply. Outputs that come first are
    /// noted; a missing reply, a close or an internal error fails the case.
    async fn call(&mut self, command: Command) -> Result<Result<Reply, Error>, String> {
        self.refs += 1;
        let reference = Ref(format!("\"{}\"", self.refs).into());
        match &command {
            Command::RoomJoin(JoinRoom { room_id, .. }) | Command::RoomLeave(RoomRef { room_id }) => {
                self.log.push(Seen::Restart(*room_id));
            }
            _ => {}
        }
        let what = format!("{command:?}");
        self.session.submit(Some(reference.clone()), command).await;
        let deadline = tokio::time::Instant::now() + REPLY_WAIT;
        loop {
            let out = tokio::time::timeout_at(deadline, self.session.next_output())
                .await
                .map_err(|_| format!("no reply to {what} within {REPLY_WAIT:?}"))?;
            match out {
                Output::Reply { reference: Some(r), result } if r == reference => {
                    if let Err(e) = &result
                        && matches!(e.code(), ErrorCode::Internal | ErrorCode::Unavailable)
                    {
                        return Err(format!("{what} answered {} ({e})", e.code()));
                    }
                    return Ok(result);
                }
                other => self.note(other)?,
            }
        }
    }

    fn note(&mut self, out: Output) -> Result<(), String> {
        match out {
            Output::Event(delivery) => {
                if let Event::MessageNew(e) = delivery.event() {
                    let m = &e.message;
                    self.log.push(Seen::Message { room: m.room_id, seq: m.seq, id: m.id });
                }
                Ok(())
            }
            Output::Keepalive => Ok(()),
            Output::Reply { reference, result } => {
                Err(format!("a reply nobody waited for: ref {reference:?}, {result:?}"))
            }
            Output::Close(reason) => Err(format!("the session was closed: {reason:?}")),
        }
    }

    /// Checks the `message:new` events received since the last call: in
    /// increasing seq order per room between restarts, each the acked
    /// message of its seq.
    fn check_log(&mut self, model: &Model) -> Result<(), String> {
        for seen in std::mem::take(&mut self.log) {
            let (room, seq, id) = match seen {
                Seen::Restart(room) => {
                    self.last_seen.remove(&room);
                    continue;
                }
                Seen::Message { room, seq, id } => (room, seq, id),
            };
            if let Some(last) = self.last_seen.insert(room, seq)
                && seq <= last
            {
                return Err(format!("message:new seq {seq} of room {room} came after seq {last}"));
            }
            let acked = model.rooms.iter().find(|r| r.id == room).and_then(|r| r.message(seq));
            if acked.is_none_or(|m| m.id != id) {
                return Err(format!("message:new {id} as seq {seq} of room {room} is not the acked message"));
            }
        }
        Ok(())
    }

    /// Takes whatever output is ready without waiting.
    fn drain(&mut self) -> Result<(), String> {
        while let Some(out) = self.session.next_output().now_or_never() {
            self.note(out)?;
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------
// The checker
// ---------------------------------------------------------------------------

struct Checker {
    engine: Engine,
    store: Arc<dyn Store>,
    /// `u0`..`u5`; the last never connects.
    ids: Vec<UserId>,
    model: Model,
    clients: Vec<Client>,
    missing_room: RoomId,
    /// The rooms the current op may have changed.
    touched: BTreeSet<usize>,
    /// The cursors last read from the store, by room and user.
    cursors: HashMap<(RoomId, usize), (u64, u64)>,
}

fn expect_err(got: Result<Reply, Error>, want: ErrorCode) -> Result<(), String> {
    match got {
        Err(e) if e.code() == want => Ok(()),
        Err(e) => Err(format!("expected {want}, got {} ({e})", e.code())),
        Ok(reply) => Err(format!("expected {want}, got success: {reply:?}")),
    }
}

fn expect_ok(got: Result<Reply, Error>) -> Result<Reply, String> {
    got.map_err(|e| format!("expected success, got {} ({e})", e.code()))
}

fn group(public: bool, members: Vec<UserId>) -> Command {
    let visibility = Some(if public { Visibility::Public } else { Visibility::Private });
    Command::RoomCreate(CreateRoom { kind: RoomKind::Group, name: Some("g".into()), visibility, members })
}

impl Checker {
    fn new(engine: Engine, store: Arc<dyn Store>) -> Result<Self, String> {
        let ids = (0..=USERS)
            .map(|u| UserId::new(format!("u{u}")).map_err(|e| format!("user id u{u}: {e}")))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Checker {
            engine,
            store,
            ids,
            model: Model::default(),
            clients: Vec::new(),
            missing_room: RoomId::generate(),
            touched: BTreeSet::new(),
            cursors: HashMap::new(),
        })
    }

    async fn run(&mut self, ops: &[Op]) -> Result<(), String> {
        for u in 0..USERS {
            let user = User::new(self.ids[u].clone(), format!("User {u}"));
            within("upsert_user", self.engine.upsert_user(user))
                .await?
                .map_err(|e| format!("recording u{u} failed: {e}"))?;
        }
        for (i, op) in ops.iter().enumerate() {
            self.touched.clear();
            self.apply(op).await.map_err(|e| format!("op #{i} {op:?}: {e}"))?;
            self.after_op().await.map_err(|e| format!("after op #{i} {op:?}: {e}"))?;
        }
        self.touched = (0..self.model.rooms.len()).collect();
        self.after_op().await.map_err(|e| format!("at the end: {e}"))
    }

    fn user_of(&self, id: &UserId) -> Result<usize, String> {
        self.ids.iter().position(|u| u == id).ok_or_else(|| format!("unexpected user {id}"))
    }

    fn sessions_of(&self, user: usize) -> usize {
        self.clients.iter().filter(|c| c.user == user).count()
    }

    /// The open session `raw` picks; when none is open, a new one of user
    /// `raw % USERS`.
    async fn session(&mut self, raw: u8) -> Result<usize, String> {
        if self.clients.is_empty() {
            self.connect(usize::from(raw) % USERS).await?;
        }
        Ok(usize::from(raw) % self.clients.len())
    }

    fn target(&self, session: usize, raw: u8) -> Target {
        self.target_of(self.clients[session].user, raw)
    }

    fn target_of(&self, user: usize, raw: u8) -> Target {
        let rooms = self.model.rooms.len();
        if raw < 128 {
            let mine: Vec<usize> = (0..rooms).filter(|&i| self.model.rooms[i].members.contains_key(&user)).collect();
            if !mine.is_empty() {
                return Target::Room(mine[usize::from(raw) % mine.len()]);
            }
            if rooms > 0 {
                return Target::Room(usize::from(raw) % rooms);
            }
        }
        let i = usize::from(raw) % (rooms + 1);
        if i == self.model.rooms.len() { Target::Missing } else { Target::Room(i) }
    }

    fn room_id(&self, target: Target) -> RoomId {
        match target {
            Target::Room(i) => self.model.rooms[i].id,
            Target::Missing => self.missing_room,
        }
    }

    /// The error a command on a room must get from a user who is not in it,
    /// or `None` when they are a member.
    fn membership_error(&self, target: Target, user: usize) -> Option<ErrorCode> {
        match target {
            Target::Missing => Some(ErrorCode::NotFound),
            Target::Room(i) if self.model.rooms[i].members.contains_key(&user) => None,
            Target::Room(_) => Some(ErrorCode::NotMember),
        }
    }

    /// Records a session of `user` opening.
    fn opened(&mut self, user: usize) {
        if self.sessions_of(user) == 0 {
            self.model.status[user] = Some(PresenceStatus::Online);
        }
    }

    async fn apply(&mut self, op: &Op) -> Result<(), String> {
        match *op {
            Op::Connect { user } => self.connect(usize::from(user) % USERS).await,
            Op::Disconnect { session } => {
                if !self.clients.is_empty() {
                    self.clients.remove(usize::from(session) % self.clients.len());
                }
                Ok(())
            }
            Op::CreateGroup { session, public, ref members } => {
                let s = self.session(session).await?;
                let named: Vec<usize> = members.iter().map(|&m| usize::from(m) % (USERS + 1)).collect();
                self.create_group(s, public, &named).await
            }
            Op::CreateDirect { session, other } => {
                let s = self.session(session).await?;
                self.create_direct(s, usize::from(other) % (USERS + 1)).await
            }
            Op::ConcurrentCreates { user, n, joins, adder } => {
                let user = usize::from(user) % USERS;
                let adder = adder.map(|a| usize::from(a) % USERS).filter(|&a| a != user);
                self.concurrent_creates(user, usize::from(n.clamp(1, 4)), usize::from(joins.min(2)), adder).await
            }
            Op::ConcurrentSends { user, room, ref keys } => {
                let user = usize::from(user) % USERS;
                let keys: Vec<String> = keys.iter().take(4).map(|k| format!("k{}", k % KEYS)).collect();
                self.concurrent_sends(user, self.target_of(user, room), &keys).await
            }
            Op::Join { session, room, since } => {
                let s = self.session(session).await?;
                self.join(s, self.target(s, room), since).await
            }
            Op::Leave { session, room } => {
                let s = self.session(session).await?;
                self.leave(s, self.target(s, room)).await
            }
            Op::Invite { session, room, user } => {
                let s = self.session(session).await?;
                self.invite(s, self.target(s, room), usize::from(user) % (USERS + 1)).await
            }
            Op::Send { session, room, key } => {
                let s = self.session(session).await?;
                self.send(s, self.target(s, room), key % KEYS).await
            }
            Op::Read { session, room, up_to } => {
                let s = self.session(session).await?;
                self.receipt(s, self.target(s, room), up_to, true).await
            }
            Op::Delivered { session, room, up_to } => {
                let s = self.session(session).await?;
                self.receipt(s, self.target(s, room), up_to, false).await
            }
            Op::SetStatus { session, status } => {
                let s = self.session(session).await?;
                self.set_status(s, status).await
            }
            Op::Typing { session, room, start } => {
                let s = self.session(session).await?;
                let target = self.target(s, room);
                let room_id = self.room_id(target);
                let command = if start {
                    Command::TypingStart(RoomRef { room_id })
                } else {
                    Command::TypingStop(RoomRef { room_id })
                };
                let got = self.clients[s].call(command).await?;
                match self.membership_error(target, self.clients[s].user) {
                    Some(code) => expect_err(got, code),
                    None => expect_ok(got).map(drop),
                }
            }
            Op::ListRooms { session } => {
                let s = self.session(session).await?;
                let user = self.clients[s].user;
                match expect_ok(self.clients[s].call(Command::RoomList).await?)? {
                    Reply::Rooms { rooms } => self.compare_room_list(user, &rooms),
                    other => Err(format!("room:list answered {other:?}")),
                }
            }
        }
    }

    async fn connect(&mut self, user: usize) -> Result<(), String> {
        let got = within("open_session", self.engine.open_session(Identity::new(self.ids[user].clone()))).await?;
        if self.sessions_of(user) >= MAX_CONNECTIONS {
            return expect_err(got.map(|_| Reply::empty()), ErrorCode::RateLimited);
        }
        let (session, ready) = got.map_err(|e| format!("open_session failed: {e} ({})", e.code()))?;
        self.opened(user);
        self.clients.push(Client::new(user, session));
        self.compare_room_list(user, &ready.rooms)
    }

    fn compare_room_list(&self, user: usize, rooms: &[RoomSummary]) -> Result<(), String> {
        let listed: BTreeSet<RoomId> = rooms.iter().map(|s| s.room.id).collect();
        let expected = self.model.rooms_of(user);
        if listed != expected || listed.len() != rooms.len() {
            return Err(format!("u{user} is listed in {listed:?} ({} entries), expected {expected:?}", rooms.len()));
        }
        for summary in rooms {
            let Some(room) = self.model.rooms.iter().find(|r| r.id == summary.room.id) else { continue };
            let read = room.members.get(&user).map_or(0, |m| m.read);
            if summary.room.last_seq != room.last_seq() || summary.read_seq != read {
                return Err(format!(
                    "u{user}'s list shows room {} at last_seq {} read {}, expected {} and {read}",
                    room.id,
                    summary.room.last_seq,
                    summary.read_seq,
                    room.last_seq()
                ));
            }
        }
        Ok(())
    }

    async fn create_group(&mut self, s: usize, public: bool, named: &[usize]) -> Result<(), String> {
        let user = self.clients[s].user;
        let members = named.iter().map(|&u| self.ids[u].clone()).collect();
        let got = self.clients[s].call(group(public, members)).await?;
        let others: Vec<usize> =
            named.iter().copied().filter(|&u| u != user).collect::<BTreeSet<_>>().into_iter().collect();
        if others.iter().any(|&u| u >= USERS) {
            return expect_err(got, ErrorCode::NotFound);
        }
        if self.model.own(user) >= QUOTA {
            return expect_err(got, ErrorCode::Forbidden);
        }
        let room = match expect_ok(got)? {
            Reply::Room { room } => room,
            other => return Err(format!("room:create answered {other:?}")),
        };
        let public_now = room.visibility == Visibility::Public;
        if room.kind != RoomKind::Group || public_now != public || room.created_by != self.ids[user] {
            return Err(format!("room:create made {room:?}"));
        }
        let i = self.model.add_room(room.id, RoomKind::Group, public, user, &others);
        self.touched.insert(i);
        Ok(())
    }

    async fn create_direct(&mut self, s: usize, other: usize) -> Result<(), String> {
        let user = self.clients[s].user;
        let command = Command::RoomCreate(CreateRoom {
            kind: RoomKind::Direct,
            name: None,
            visibility: None,
            members: vec![self.ids[other].clone()],
        });
        let got = self.clients[s].call(command).await?;
        if other == user {
            return expect_err(got, ErrorCode::Invalid);
        }
        if other >= USERS {
            return expect_err(got, ErrorCode::NotFound);
        }
        let pair = (user.min(other), user.max(other));
        let existing = self.model.direct.get(&pair).copied();
        if existing.is_none() && self.model.own(user) >= QUOTA {
            return expect_err(got, ErrorCode::Forbidden);
        }
        let room = match expect_ok(got)? {
            Reply::Room { room } => room,
            other => return Err(format!("room:create answered {other:?}")),
        };
        if room.kind != RoomKind::Direct {
            return Err(format!("room:create of a direct room made {room:?}"));
        }
        match existing {
            Some(i) if self.model.rooms[i].id == room.id => {
                self.touched.insert(i);
            }
            Some(i) => {
                return Err(format!("a second direct room {} for a pair that has {}", room.id, self.model.rooms[i].id));
            }
            None => {
                let i = self.model.add_room(room.id, RoomKind::Direct, false, user, &[other]);
                self.model.direct.insert(pair, i);
                self.touched.insert(i);
            }
        }
        Ok(())
    }

    /// New sessions of `user` for the commands of a concurrent op that their
    /// open sessions cannot carry (at most n <= 4 < [`MAX_CONNECTIONS`]
    /// sessions of a user take part). They close at the end of the op.
    async fn extra_sessions(&mut self, user: usize, n: usize) -> Result<Vec<Client>, String> {
        let mut extra = Vec::new();
        for _ in self.sessions_of(user)..n {
            let identity = Identity::new(self.ids[user].clone());
            let (session, _) = within("open_session", self.engine.open_session(identity))
                .await?
                .map_err(|e| format!("open_session for a concurrent op failed: {e} ({})", e.code()))?;
            if self.sessions_of(user) == 0 && extra.is_empty() {
                self.model.status[user] = Some(PresenceStatus::Online);
            }
            extra.push(Client::new(user, session));
        }
        Ok(extra)
    }

    /// `n` creates and self-joins of up to `joins` public rooms at once by
    /// `user`, while `adder` adds them to a new room.
    async fn concurrent_creates(
        &mut self,
        user: usize,
        n: usize,
        joins: usize,
        adder: Option<usize>,
    ) -> Result<(), String> {
        // Public groups the user may join by themselves, each taken once.
        let joinable: Vec<usize> = (0..self.model.rooms.len())
            .filter(|&i| {
                let room = &self.model.rooms[i];
                room.kind == RoomKind::Group && room.public && !room.members.contains_key(&user)
            })
            .take(joins)
            .collect();
        let mut commands: Vec<Command> = (0..n).map(|_| group(false, Vec::new())).collect();
        commands.extend(
            joinable.iter().map(|&i| Command::RoomJoin(JoinRoom { room_id: self.model.rooms[i].id, since_seq: None })),
        );
        let mut extra = self.extra_sessions(user, commands.len()).await?;
        let own_before = self.model.own(user);
        let adder_own_before = adder.map(|a| self.model.own(a));
        let user_id = self.ids[user].clone();

        let mut sessions: Vec<&mut Client> = Vec::new();
        let mut adding: Option<&mut Client> = None;
        for client in &mut self.clients {
            if client.user == user && sessions.len() < commands.len() {
                sessions.push(client);
            } else if Some(client.user) == adder && adding.is_none() {
                adding = Some(client);
            }
        }
        sessions.extend(extra.iter_mut());
        let own_ops = join_all(sessions.into_iter().zip(commands).map(|(client, command)| client.call(command)));
        let add = async move {
            match adding {
                Some(client) => Some(client.call(group(false, vec![user_id])).await),
                None => None,
            }
        };
        let (replies, added) = join(own_ops, add).await;
        drop(extra);

        let mut made = Vec::new();
        let mut joined = Vec::new();
        for got in replies {
            match got? {
                Ok(Reply::Room { room }) => made.push(room.id),
                Ok(Reply::Joined(reply)) => joined.push(reply.room.id),
                Ok(other) => return Err(format!("a create or join answered {other:?}")),
                Err(e) if e.code() == ErrorCode::Forbidden => {}
                Err(e) => return Err(format!("a concurrent create or join got {} ({e})", e.code())),
            }
        }
        let tries = n + joinable.len();
        let expected = (tries as u64).min(QUOTA.saturating_sub(own_before));
        if (made.len() + joined.len()) as u64 != expected {
            let (tried, got) = ((n, joinable.len()), (made.len(), joined.len()));
            return Err(format!(
                "u{user} with {own_before} own rooms got {got:?} of {tried:?} (creates, joins), not {expected}"
            ));
        }
        for id in made {
            let i = self.model.add_room(id, RoomKind::Group, false, user, &[]);
            self.touched.insert(i);
        }
        for i in joinable {
            if joined.contains(&self.model.rooms[i].id) {
                self.model.rooms[i].members.insert(user, MemberModel::new(true));
                self.touched.insert(i);
            }
        }
        if let (Some(got), Some(a), Some(own)) = (added, adder, adder_own_before) {
            let got = got?;
            if own >= QUOTA {
                return expect_err(got, ErrorCode::Forbidden);
            }
            match expect_ok(got).map_err(|e| format!("u{a} adding u{user} to a new room: {e}"))? {
                Reply::Room { room } => {
                    let i = self.model.add_room(room.id, RoomKind::Group, false, a, &[user]);
                    self.touched.insert(i);
                }
                other => return Err(format!("room:create answered {other:?}")),
            }
        }
        Ok(())
    }

    /// One send per key at once, each from its own session of `user`.
    async fn concurrent_sends(&mut self, user: usize, target: Target, keys: &[String]) -> Result<(), String> {
        let mut extra = self.extra_sessions(user, keys.len()).await?;
        let room_id = self.room_id(target);
        let mut senders: Vec<&mut Client> =
            self.clients.iter_mut().filter(|c| c.user == user).take(keys.len()).collect();
        senders.extend(extra.iter_mut());
        let sends = senders.into_iter().zip(keys).map(|(client, key)| {
            client.call(Command::MessageSend(SendMessage {
                room_id,
                client_msg_id: key.clone(),
                body: format!("{key} from u{user}"),
                attachments: Vec::new(),
                reply_to: None,
            }))
        });
        let replies = join_all(sends).await;
        drop(extra);

        if let Some(code) = self.membership_error(target, user) {
            for got in replies {
                expect_err(got?, code)?;
            }
            return Ok(());
        }
        let Target::Room(i) = target else { return Err("a missing room has members".into()) };
        self.touched.insert(i);
        let room = &mut self.model.rooms[i];
        // Each new key's message, by key: every send of one key must get it.
        let mut new: BTreeMap<String, (u64, MessageId)> = BTreeMap::new();
        for (got, key) in replies.into_iter().zip(keys) {
            let message = match expect_ok(got?)? {
                Reply::Message { message } => message,
                other => return Err(format!("message:send answered {other:?}")),
            };
            if message.room_id != room.id || message.sender_id != self.ids[user] || message.client_msg_id != *key {
                return Err(format!("message:send of {key} answered {message:?}"));
            }
            let first = match room.acked.get(&(user, key.clone())) {
                Some(&first) => first,
                None => *new.entry(key.clone()).or_insert((message.seq, message.id)),
            };
            if (message.seq, message.id) != first {
                return Err(format!(
                    "concurrent sends of {key} by u{user} answered {} at seq {} and {} at seq {}",
                    first.1, first.0, message.id, message.seq
                ));
            }
        }
        let mut by_seq: Vec<(u64, MessageId, String)> =
            new.into_iter().map(|(key, (seq, id))| (seq, id, key)).collect();
        by_seq.sort();
        for (seq, id, key) in by_seq {
            let expected = room.last_seq() + 1;
            if seq != expected {
                return Err(format!("a new message got seq {seq}, expected {expected} (seqs must have no gaps)"));
            }
            room.messages.push(MessageModel { id, sender: user, key: key.clone() });
            room.acked.insert((user, key), (seq, id));
            if let Some(m) = room.members.get_mut(&user) {
                m.read = m.read.max(seq);
                m.delivered = m.delivered.max(seq);
            }
        }
        Ok(())
    }

    async fn join(&mut self, s: usize, target: Target, since: Option<u64>) -> Result<(), String> {
        let user = self.clients[s].user;
        let room_id = self.room_id(target);
        let got = self.clients[s].call(Command::RoomJoin(JoinRoom { room_id, since_seq: since })).await?;
        let Target::Room(i) = target else { return expect_err(got, ErrorCode::NotFound) };
        self.touched.insert(i);
        let own = self.model.own(user);
        let room = &mut self.model.rooms[i];
        if !room.members.contains_key(&user) {
            if !(room.kind == RoomKind::Group && room.public) {
                return expect_err(got, ErrorCode::Forbidden);
            }
            if own >= QUOTA {
                return expect_err(got, ErrorCode::Forbidden);
            }
            if got.is_ok() {
                room.members.insert(user, MemberModel::new(true));
            }
        }
        let room = &self.model.rooms[i];
        match expect_ok(got)? {
            Reply::Joined(reply) => {
                let crate::command::Joined { room: joined, members, last_seq, read_seq, receipts, .. } = *reply;
                let me = room.members.get(&user).copied().unwrap_or(MemberModel::new(false));
                if joined.id != room.id || last_seq != room.last_seq() || read_seq != me.read {
                    return Err(format!(
                        "joined {} at last_seq {last_seq} read {read_seq}, expected {} at {} read {}",
                        joined.id,
                        room.id,
                        room.last_seq(),
                        me.read
                    ));
                }
                let listed = members.iter().map(|u| self.user_of(&u.id)).collect::<Result<BTreeSet<_>, _>>()?;
                let expected: BTreeSet<usize> = room.members.keys().copied().collect();
                if listed != expected {
                    return Err(format!("the join lists members {listed:?}, expected {expected:?}"));
                }
                for r in &receipts {
                    let u = self.user_of(&r.user_id)?;
                    let m = room.members.get(&u).ok_or_else(|| format!("receipts of non-member u{u}"))?;
                    if (r.read_seq, r.delivered_seq) != (m.read, m.delivered) {
                        return Err(format!(
                            "the join shows u{u} at read {} delivered {}, expected {} and {}",
                            r.read_seq, r.delivered_seq, m.read, m.delivered
                        ));
                    }
                }
                Ok(())
            }
            other => Err(format!("room:join answered {other:?}")),
        }
    }

    async fn leave(&mut self, s: usize, target: Target) -> Result<(), String> {
        let user = self.clients[s].user;
        let room_id = self.room_id(target);
        let got = self.clients[s].call(Command::RoomLeave(RoomRef { room_id })).await?;
        let Target::Room(i) = target else { return expect_err(got, ErrorCode::NotFound) };
        self.touched.insert(i);
        let room = &mut self.model.rooms[i];
        if room.kind == RoomKind::Direct {
            return expect_err(got, ErrorCode::Forbidden);
        }
        if !room.members.contains_key(&user) {
            return expect_err(got, ErrorCode::NotMember);
        }
        expect_ok(got)?;
        room.members.remove(&user);
        Ok(())
    }

    async fn invite(&mut self, s: usize, target: Target, invitee: usize) -> Result<(), String> {
        let user = self.clients[s].user;
        let room_id = self.room_id(target);
        let command = Command::RoomInvite(Invite { room_id, user_id: self.ids[invitee].clone() });
        let got = self.clients[s].call(command).await?;
        if let Some(code) = self.membership_error(target, user) {
            return expect_err(got, code);
        }
        let Target::Room(i) = target else { return Err("a missing room has members".into()) };
        self.touched.insert(i);
        if invitee >= USERS {
            return expect_err(got, ErrorCode::NotFound);
        }
        let room = &mut self.model.rooms[i];
        if room.kind == RoomKind::Direct {
            return expect_err(got, ErrorCode::Forbidden);
        }
        expect_ok(got)?;
        room.members.entry(invitee).or_insert(MemberModel::new(false));
        Ok(())
    }

    async fn send(&mut self, s: usize, target: Target, key: u8) -> Result<(), String> {
        let user = self.clients[s].user;
        let room_id = self.room_id(target);
        let key = format!("k{key}");
        let command = Command::MessageSend(SendMessage {
            room_id,
            client_msg_id: key.clone(),
            body: format!("{key} from u{user}"),
            attachments: Vec::new(),
            reply_to: None,
        });
        let got = self.clients[s].call(command).await?;
        if let Some(code) = self.membership_error(target, user) {
            return expect_err(got, code);
        }
        let Target::Room(i) = target else { return Err("a missing room has members".into()) };
        self.touched.insert(i);
        let message = match expect_ok(got)? {
            Reply::Message { message } => message,
            other => return Err(format!("message:send answered {other:?}")),
        };
        let room = &mut self.model.rooms[i];
        if message.room_id != room.id || message.sender_id != self.ids[user] || message.client_msg_id != key {
            return Err(format!("message:send answered {message:?}"));
        }
        match room.acked.get(&(user, key.clone())).copied() {
            Some((seq, id)) => {
                if message.seq != seq || message.id != id {
                    return Err(format!(
                        "a retry of {key} by u{user} answered {} at seq {}; the first send was {id} at seq {seq}",
                        message.id, message.seq
                    ));
                }
            }
            None => {
                let seq = room.last_seq() + 1;
                if message.seq != seq {
                    return Err(format!("a new message got seq {}, expected {seq}", message.seq));
                }
                room.messages.push(MessageModel { id: message.id, sender: user, key: key.clone() });
                room.acked.insert((user, key), (seq, message.id));
                if let Some(m) = room.members.get_mut(&user) {
                    m.read = m.read.max(seq);
                    m.delivered = m.delivered.max(seq);
                }
            }
        }
        Ok(())
    }

    async fn receipt(&mut self, s: usize, target: Target, up_to: u64, read: bool) -> Result<(), String> {
        let user = self.clients[s].user;
        let room_id = self.room_id(target);
        let receipt = Receipt { room_id, up_to_seq: up_to };
        let command = if read { Command::MessageRead(receipt) } else { Command::MessageDelivered(receipt) };
        let got = self.clients[s].call(command).await?;
        if let Some(code) = self.membership_error(target, user) {
            return expect_err(got, code);
        }
        let Target::Room(i) = target else { return Err("a missing room has members".into()) };
        self.touched.insert(i);
        let room = &mut self.model.rooms[i];
        if up_to > room.last_seq() {
            return expect_err(got, ErrorCode::Invalid);
        }
        expect_ok(got)?;
        if let Some(m) = room.members.get_mut(&user) {
            m.delivered = m.delivered.max(up_to);
            if read {
                m.read = m.read.max(up_to);
            }
        }
        Ok(())
    }

    async fn set_status(&mut self, s: usize, status: PresenceStatus) -> Result<(), String> {
        let user = self.clients[s].user;
        let got = self.clients[s].call(Command::PresenceUpdate(UpdatePresence { status })).await?;
        if status == PresenceStatus::Offline {
            return expect_err(got, ErrorCode::Invalid);
        }
        expect_ok(got)?;
        self.model.status[user] = Some(status);
        Ok(())
    }

    // -----------------------------------------------------------------------
    // Checks after each op
    // -----------------------------------------------------------------------

    async fn after_op(&mut self) -> Result<(), String> {
        self.check_sessions()?;
        self.check_presence()?;
        for i in std::mem::take(&mut self.touched) {
            self.check_room(i).await?;
        }
        self.check_counts().await
    }

    /// Reads each session's pending output and checks the `message:new`
    /// events it received since the last op.
    fn check_sessions(&mut self) -> Result<(), String> {
        let Checker { clients, model, .. } = self;
        for client in clients.iter_mut() {
            let user = client.user;
            client.drain().and_then(|()| client.check_log(model)).map_err(|e| format!("a session of u{user}: {e}"))?;
        }
        Ok(())
    }

    fn check_presence(&self) -> Result<(), String> {
        let listed: BTreeMap<UserId, PresenceStatus> =
            self.engine.online_users().into_iter().map(|o| (o.user.id, o.status)).collect();
        let expected: BTreeMap<UserId, PresenceStatus> = (0..USERS)
            .filter(|&u| self.sessions_of(u) > 0)
            .filter_map(|u| {
                let status = self.model.status[u].unwrap_or(PresenceStatus::Online);
                status.is_visible_online().then(|| (self.ids[u].clone(), status))
            })
            .collect();
        if listed != expected {
            return Err(format!("online_users lists {listed:?}, expected {expected:?}"));
        }
        Ok(())
    }

    async fn check_room(&mut self, i: usize) -> Result<(), String> {
        let room = &self.model.rooms[i];
        let stored = store_call("Store::room", self.store.room(room.id))
            .await?
            .ok_or_else(|| format!("room {} is missing from the store", room.id))?;
        if stored.last_seq != room.last_seq() {
            return Err(format!("room {} has last_seq {}, expected {}", room.id, stored.last_seq, room.last_seq()));
        }

        // The whole history, a page at a time, oldest first.
        let mut after = 0;
        let mut keys = HashSet::new();
        for _ in 0..=stored.last_seq + 1 {
            let query = HistoryQuery { after_seq: Some(after), before_seq: None, limit: HISTORY_PAGE };
            let page = stored_page(&*self.store, room.id, query).await?;
            for m in &page.messages {
                if m.seq != after + 1 {
                    return Err(format!("the history of room {} has seq {} after {after}", room.id, m.seq));
                }
                after = m.seq;
                if !keys.insert((m.sender_id.clone(), m.client_msg_id.clone())) {
                    return Err(format!(
                        "room {} holds {} of {} twice (again at seq {})",
                        room.id, m.client_msg_id, m.sender_id, m.seq
                    ));
                }
                let acked =
                    room.message(m.seq).ok_or_else(|| format!("room {} has seq {} beyond last_seq", room.id, m.seq))?;
                if m.id != acked.id || m.sender_id != self.ids[acked.sender] || m.client_msg_id != acked.key {
                    return Err(format!(
                        "seq {} of room {} is {} ({} of {}), but {} was acked there",
                        m.seq, room.id, m.id, m.client_msg_id, m.sender_id, acked.id
                    ));
                }
            }
            if !page.has_more {
                break;
            }
            if page.messages.is_empty() {
                return Err(format!("an empty history page of room {} says has_more", room.id));
            }
        }
        if after != stored.last_seq {
            return Err(format!(
                "the history of room {} ends at seq {after}, last_seq is {}",
                room.id, stored.last_seq
            ));
        }
        // The newest page, as a client without a cursor reads it.
        let newest =
            stored_page(&*self.store, room.id, HistoryQuery { limit: HISTORY_PAGE, ..Default::default() }).await?;
        let top = newest.messages.last().map_or(0, |m| m.seq);
        if top != stored.last_seq {
            return Err(format!("the newest page of room {} ends at {top}, last_seq is {}", room.id, stored.last_seq));
        }

        // Members and their cursors.
        let members = store_call("Store::members", self.store.members(room.id)).await?;
        let listed = members.iter().map(|m| self.user_of(&m.user_id)).collect::<Result<BTreeSet<_>, _>>()?;
        let expected: BTreeSet<usize> = room.members.keys().copied().collect();
        if listed != expected || listed.len() != members.len() {
            return Err(format!("room {} has members {listed:?}, expected {expected:?}", room.id));
        }
        let room_id = room.id;
        let last_seq = room.last_seq();
        for u in 0..=USERS {
            let key = (room_id, u);
            let Some(model) = self.model.rooms[i].members.get(&u).copied() else {
                // A new membership starts over at 0.
                self.cursors.remove(&key);
                continue;
            };
            let member = store_call("Store::member", self.store.member(room_id, &self.ids[u]))
                .await?
                .ok_or_else(|| format!("Store::member has no u{u} in room {room_id}, but members lists them"))?;
            let (read, delivered) = (member.read_seq, member.delivered_seq);
            if let Some(&(was_read, was_delivered)) = self.cursors.get(&key)
                && (read < was_read || delivered < was_delivered)
            {
                let (was, now) = ((was_read, was_delivered), (read, delivered));
                return Err(format!("u{u}'s (read, delivered) in room {room_id} went back from {was:?} to {now:?}"));
            }
            self.cursors.insert(key, (read, delivered));
            if read > delivered || delivered > last_seq {
                return Err(format!(
                    "u{u} in room {room_id}: read {read}, delivered {delivered}, last_seq {last_seq} are out of order"
                ));
            }
            if (read, delivered) != (model.read, model.delivered) {
                return Err(format!(
                    "u{u} in room {room_id} is at read {read} delivered {delivered}, expected read {} delivered {}",
                    model.read, model.delivered
                ));
            }
        }
        Ok(())
    }

    /// Each user's room count, and the quota.
    async fn check_counts(&self) -> Result<(), String> {
        for u in 0..USERS {
            let own = self.model.own(u);
            if own > QUOTA {
                return Err(format!("u{u} has {own} own rooms, more than the quota of {QUOTA}"));
            }
            let count = store_call("Store::room_count_of_user", self.store.room_count_of_user(&self.ids[u])).await?;
            let expected = self.model.rooms_of(u).len() as u64;
            if count != expected {
                return Err(format!("u{u} is in {count} rooms, expected {expected}"));
            }
        }
        Ok(())
    }
}

async fn stored_page(store: &dyn Store, room: RoomId, query: HistoryQuery) -> Result<crate::HistoryPage, String> {
    store_call("Store::history", store.history(room, query)).await
}
