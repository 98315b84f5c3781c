//! The session a transport drives: commands in, ordered output out.
//!
//! A transport owns one [`Session`] per connection and runs one loop:
//!
//! ```text
//! loop {
//!     select! {
//!         frame = socket.next(), if session.accepts_input() => session.submit(ref, command).await,
//!         output = session.next_output() => write(output),   // reply, event or close
//!     }
//! }
//! ```
//!
//! The session keeps the protocol's ordering promises so that every transport
//! gets them for free: after a `room:join` with `since_seq`, the reply comes
//! first, then every stored message after `since_seq`, then live events, with
//! no message twice. Sends are admitted in the order they arrive and answered
//! once committed; other commands are answered at once.

use std::collections::{HashMap, VecDeque};
use std::future::{Future, poll_fn};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use futures_util::future::BoxFuture;
use futures_util::stream::FuturesUnordered;
use serde::Serialize;
use tokio::time::Sleep;

use super::hub::{CloseReason, SessionShared};
use super::{Ctx, Inner};
use crate::command::{Command, Reply};
use crate::config::Limits;
use crate::error::{Error, Result};
use crate::event::{Delivery, Event, MessageEvent};
use crate::id::{RoomId, SessionId};
use crate::message::{HistoryPage, HistoryQuery};
use crate::room::{ReceiptKind, RoomSummary};
use crate::time::Timestamp;
use crate::user::User;

/// How long a session waits for the acks of its pending sends when the
/// server shuts down.
const SHUTDOWN_ACK_WAIT: Duration = Duration::from_secs(5);

/// A client's correlation token for a command, returned untouched in the
/// reply. The engine never looks inside; the JSON transport keeps the raw JSON
/// text of the `ref` field here.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Ref(pub Box<str>);

/// The data of the first frame after authentication.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Ready {
    /// This session's id.
    pub session_id: SessionId,
    /// The authenticated user.
    pub user: User,
    /// Every room the user is a member of.
    pub rooms: Vec<RoomSummary>,
    /// The server's clock.
    pub server_time: Timestamp,
}

/// See [`Session::close_signal`].
#[derive(Debug, Clone)]
pub struct CloseSignal(Arc<SessionShared>);

impl CloseSignal {
    /// Resolves once the session is ended by the engine.
    pub async fn closed(&self) {
        self.0.killed().await
    }

    /// Why the engine ended the session, once it has.
    pub fn reason(&self) -> Option<CloseReason> {
        self.0.close_reason()
    }
}

/// What a session has for its client next.
#[derive(Debug)]
#[non_exhaustive]
pub enum Output {
    /// The answer to a command.
    Reply {
        /// The command's `ref`; `None` when it had none (a failure is then sent
        /// as an `error` frame and a success is not sent at all).
        reference: Option<Ref>,
        /// The reply data or the error.
        result: Result<Reply>,
    },
    /// An event, shared with the other sessions it goes to.
    Event(Arc<Delivery>),
    /// The session is over; close the connection with this reason.
    Close(CloseReason),
    /// The keepalive interval ([`EngineConfig::keepalive_interval`]) has
    /// passed. Nothing is owed to the client: a transport that checks on its
    /// clients does it now (a ping, an idle timeout), others ignore it.
    ///
    /// [`EngineConfig::keepalive_interval`]: crate::EngineConfig::keepalive_interval
    Keepalive,
}

struct Backlog {
    room: RoomId,
    after: u64,
}

/// What a session keeps for rooms joined with `since_seq`.
#[derive(Default)]
struct Resume {
    /// Rooms to replay; while any is pending, live events wait.
    backlog: VecDeque<Backlog>,
    fetch: Option<BacklogFetch>,
    /// Replayed messages not handed out yet.
    out: VecDeque<Output>,
    /// Per room, the highest seq sent as `message:new`; live copies at or
    /// below it were already replayed and are dropped.
    floors: HashMap<RoomId, u64>,
}

/// A page of a room's replay: the room, the seq it was read after, the page.
type BacklogFetch = BoxFuture<'static, (RoomId, u64, Result<HistoryPage>)>;

/// A token bucket: `commands_per_second` sustained, `command_burst` at once.
/// The two limits are read from the configuration at each take rather than
/// kept here, as every session's copy would be the same.
struct RateLimit {
    tokens: f64,
    last: Instant,
}

impl RateLimit {
    fn new(limits: &Limits) -> Self {
        RateLimit { tokens: Self::burst(limits), last: Instant::now() }
    }

    fn burst(limits: &Limits) -> f64 {
        f64::from(limits.command_burst.max(1))
    }

    fn take(&mut self, limits: &Limits) -> bool {
        let now = Instant::now();
        let elapsed = now.duration_since(self.last).as_secs_f64();
        self.last = now;
        let rate = f64::from(limits.commands_per_second.max(1));
        self.tokens = (self.tokens + elapsed * rate).min(Self::burst(limits));
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// One client connection's view of the engine.
///
/// A transport owns one per connection and runs one loop: read a command and
/// [`submit`](Session::submit) it (while [`accepts_input`](Session::accepts_input)),
/// and write whatever [`next_output`](Session::next_output) yields. The
/// session keeps the protocol's ordering promises: after a `room:join` with
/// `since_seq`, the reply comes first, then every stored message after
/// `since_seq`, then live events, with no message twice.
///
/// Dropping the session unregisters it: the user goes offline with their last
/// session, and their typing indicators end.
pub struct Session {
    inner: Arc<Inner>,
    shared: Arc<SessionShared>,
    /// Answers ready to go out, in the order they were produced.
    ready: VecDeque<Output>,
    /// Sends waiting for their commit. Made with the first send: an empty
    /// set still allocates, and most sessions of a large server are idle.
    in_flight: Option<FuturesUnordered<BoxFuture<'static, Output>>>,
    /// The state of `room:join` with `since_seq`, made with the first one.
    resume: Option<Box<Resume>>,
    rate: RateLimit,
    /// When the recent invalid frames came; made with the first one.
    #[expect(clippy::box_collection, reason = "a pointer, not a queue's 32 bytes, in every session")]
    bad_frames: Option<Box<VecDeque<Instant>>>,
    /// When the credentials expire (plus the leeway): the engine's expiry
    /// task ends the session then, and forgets it when it is dropped first.
    expires: Option<tokio::time::Instant>,
    /// At shutdown, how long pending sends may still take to be acked.
    shutdown_wait: Option<Pin<Box<Sleep>>>,
    closed: bool,
    /// The transport's name, for [`TransportCounts`].
    transport: &'static str,
}

/// How many sessions each transport has open, for `/health` and the
/// metrics. Counted when a session opens and when it is dropped, never per
/// event.
#[derive(Debug, Default)]
pub(crate) struct TransportCounts(std::sync::Mutex<std::collections::BTreeMap<&'static str, usize>>);

impl TransportCounts {
    fn lock(&self) -> std::sync::MutexGuard<'_, std::collections::BTreeMap<&'static str, usize>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn opened(&self, transport: &'static str) {
        *self.lock().entry(transport).or_default() += 1;
    }

    fn closed(&self, transport: &'static str) {
        // Kept at zero: the metric of a transport whose sessions all closed
        // reads 0 rather than its last count. A process has a handful of
        // transports, so the map stays small.
        if let Some(n) = self.lock().get_mut(transport) {
            *n = n.saturating_sub(1);
        }
    }

    pub(crate) fn snapshot(&self) -> std::collections::BTreeMap<&'static str, usize> {
        self.lock().clone()
    }
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("id", &self.shared.id)
            .field("user", &self.shared.user_id())
            .field("in_flight", &self.in_flight_len())
            .finish_non_exhaustive()
    }
}

impl Session {
    pub(crate) fn new(
        inner: Arc<Inner>,
        shared: Arc<SessionShared>,
        expires_at: Option<Timestamp>,
        transport: &'static str,
    ) -> Self {
        let limits = &inner.config.limits;
        let rate = RateLimit::new(limits);
        let expires = expires_at.map(|at| {
            let deadline = tokio::time::Instant::now() + at.until() + inner.config.expiry_leeway;
            inner.expiries.add(deadline, shared.id);
            deadline
        });
        inner.transports.opened(transport);
        Session {
            inner,
            shared,
            ready: VecDeque::new(),
            in_flight: None,
            resume: None,
            rate,
            bad_frames: None,
            expires,
            shutdown_wait: None,
            closed: false,
            transport,
        }
    }

    /// This session's id.
    pub fn id(&self) -> SessionId {
        self.shared.id
    }

    /// The session's user.
    pub fn user(&self) -> &User {
        &self.shared.user
    }

    fn in_flight_len(&self) -> usize {
        self.in_flight.as_ref().map_or(0, FuturesUnordered::len)
    }

    fn resume(&mut self) -> &mut Resume {
        self.resume.get_or_insert_with(Box::default)
    }

    /// Whether the transport should read the next command. `false` while the
    /// session has as many commands in progress as it may, which pushes back on
    /// a client that sends faster than its commands complete.
    pub fn accepts_input(&self) -> bool {
        !self.closed && self.in_flight_len() + self.ready.len() < self.inner.config.limits.max_in_flight
    }

    /// A handle that resolves once the engine ends the session (slow consumer,
    /// shutdown, expiry). A transport blocked writing to a client that does
    /// not read races it to stop waiting. Unlike the session, it is `Sync`
    /// and cheap to clone.
    pub fn close_signal(&self) -> CloseSignal {
        CloseSignal(self.shared.clone())
    }

    /// Why the engine ended the session, once it has.
    pub fn close_reason(&self) -> Option<CloseReason> {
        self.shared.close_reason()
    }

    /// Ends the session as a slow consumer on the transport's word: its own
    /// buffer for the client is full (the client stopped reading). Counted
    /// with the slow consumers the engine finds itself.
    pub fn fell_behind(&self) {
        if self.shared.close_reason().is_none() {
            self.inner.metrics.slow_consumer();
        }
        self.shared.kill(CloseReason::SlowConsumer);
    }

    fn ctx(&self) -> Ctx {
        Ctx { session: Some(self.shared.id), user: User::clone(&self.shared.user), bridge: None }
    }

    fn answer(&mut self, reference: Option<Ref>, result: Result<Reply>) {
        self.ready.push_back(Output::Reply { reference, result });
    }

    /// Runs a command. Its answer comes out of [`Session::next_output`]:
    /// at once for most commands, after the commit for `message:send`.
    pub async fn submit(&mut self, reference: Option<Ref>, command: Command) {
        let kind = command.kind().name();
        if !self.rate.take(&self.inner.config.limits) {
            self.inner.metrics.command(kind, "rate_limited");
            self.answer(reference, Err(Error::RateLimited("too many commands; slow down".into())));
            return;
        }
        if self.user().is_visitor() && !super::handlers::visitor_may(command.kind()) {
            self.inner.metrics.command(kind, "forbidden");
            self.answer(reference, Err(Error::forbidden(format!("visitors may not use {kind}"))));
            return;
        }
        let inner = self.inner.clone();
        let ctx = self.ctx();
        let result = match command {
            Command::MessageSend(req) => match inner.send(&ctx, req).await {
                Ok(pending) => {
                    let accepted = Instant::now();
                    self.in_flight.get_or_insert_with(FuturesUnordered::new).push(Box::pin(async move {
                        let result = match pending.await {
                            Ok(result) => result.map(|a| Reply::Message { message: a.message }),
                            Err(_) => Err(Error::unavailable("the commit was abandoned")),
                        };
                        inner.metrics.ack(accepted.elapsed());
                        inner.metrics.command(kind, outcome(&result));
                        Output::Reply { reference, result }
                    }));
                    return;
                }
                Err(err) => Err(err),
            },
            Command::RoomJoin(req) => {
                let result = inner.join_room(&ctx, req.room_id).await;
                if let (Ok(reply), Some(since)) = (&result, req.since_seq) {
                    // A `since_seq` beyond the room's newest message (a stale
                    // or foreign cursor) must not hide the live messages to come.
                    let since = match reply {
                        Reply::Joined(joined) => since.min(joined.last_seq),
                        _ => since,
                    };
                    self.forget_replay(req.room_id);
                    let resume = self.resume();
                    resume.floors.insert(req.room_id, since);
                    resume.backlog.push_back(Backlog { room: req.room_id, after: since });
                }
                result
            }
            Command::RoomCreate(req) => inner.create_room(&ctx, req).await,
            Command::RoomLeave(req) => {
                let result = inner.leave_room(&ctx, req.room_id).await;
                if result.is_ok() {
                    if let Some(resume) = self.resume.as_mut() {
                        resume.floors.remove(&req.room_id);
                    }
                    self.forget_replay(req.room_id);
                }
                result
            }
            Command::RoomInvite(req) => inner.invite(&ctx, req).await,
            Command::RoomUpdate(req) => inner.update_room(&ctx, req).await,
            Command::RoomRemove(req) => inner.remove_member_by(&ctx, req).await,
            Command::RoomUnban(req) => inner.unban(&ctx, req).await,
            Command::RoomBans(req) => inner.list_bans(&ctx, req.room_id).await,
            Command::RoomSetRole(req) => inner.set_role(&ctx, req).await,
            Command::RoomMute(req) => inner.mute(&ctx, req).await,
            Command::RoomUnmute(req) => inner.unmute(&ctx, req.room_id).await,
            Command::RoomList => inner.list_rooms(&ctx).await,
            Command::RoomHistory(req) => {
                inner.history(&ctx, req.room_id, req.before_seq, req.after_seq, req.limit).await.map(Reply::History)
            }
            Command::MessageEdit(req) => inner.edit(&ctx, req).await,
            Command::MessageDelete(req) => inner.delete(&ctx, req).await,
            Command::TypingStart(req) => inner.typing(&ctx, req.room_id, true).await,
            Command::TypingStop(req) => inner.typing(&ctx, req.room_id, false).await,
            Command::MessageDelivered(req) => inner.receipt(&ctx, req, ReceiptKind::Delivered).await,
            Command::MessageRead(req) => inner.receipt(&ctx, req, ReceiptKind::Read).await,
            Command::PresenceUpdate(req) => inner.update_presence(&ctx, req),
            Command::UsersOnline => Ok(Reply::Online { users: inner.presence.online_users() }),
            Command::UsersSearch(req) => inner.search_users(req).await,
            Command::MessagesSearch(req) => inner.search_messages(&ctx, req).await.map(Reply::Search),
            Command::Ping => Ok(Reply::Pong { server_time: Timestamp::now() }),
            Command::CallInvite(req) => inner.call_invite(&ctx, req).await,
            Command::CallAccept(req) => inner.call_accept(&ctx, req.call_id).await,
            Command::CallReject(req) => inner.call_reject(&ctx, req.call_id).await,
            Command::CallEnd(req) => inner.call_hang_up(&ctx, req.call_id).await,
            Command::CallSignal(req) => inner.call_signal(&ctx, req).await,
            Command::CallRejoin(req) => inner.call_rejoin(&ctx, req.call_id).await,
        };
        self.inner.metrics.command(kind, outcome(&result));
        if let Err(err) = &result
            && err.is_backend()
        {
            tracing::warn!(session = %self.shared.id, error = %err, source = ?std::error::Error::source(err), "command failed");
        }
        self.answer(reference, result);
    }

    /// Records a frame the transport could not decode. Returns the close
    /// reason once the client has sent too many within the window.
    pub fn note_bad_frame(&mut self) -> Option<CloseReason> {
        let limits = &self.inner.config.limits;
        let now = Instant::now();
        let bad_frames = self.bad_frames.get_or_insert_with(Box::default);
        while bad_frames.front().is_some_and(|t| now.duration_since(*t) > limits.bad_frame_window) {
            bad_frames.pop_front();
        }
        bad_frames.push_back(now);
        (bad_frames.len() as u32 > limits.max_bad_frames).then_some(CloseReason::Abuse)
    }

    /// Drops a room's replay, including replayed messages not handed out yet:
    /// the room was left, or is joined again from another `since_seq`.
    fn forget_replay(&mut self, room: RoomId) {
        let Some(resume) = self.resume.as_mut() else { return };
        resume.backlog.retain(|b| b.room != room);
        resume.out.retain(|out| !matches!(out, Output::Event(d) if d.event().room_id() == Some(room)));
    }

    fn start_backlog_fetch(&mut self) {
        let Some(resume) = self.resume.as_mut() else { return };
        if resume.fetch.is_some() {
            return;
        }
        // A room the session no longer follows (its user left it, maybe
        // through another session or process) is not replayed any further.
        while let Some(job) = resume.backlog.front() {
            if self.inner.hub.is_subscribed(self.shared.id, job.room) {
                break;
            }
            let room = job.room;
            resume.backlog.retain(|b| b.room != room);
            resume.floors.remove(&room);
            resume.out.retain(|out| !matches!(out, Output::Event(d) if d.event().room_id() == Some(room)));
        }
        let Some(job) = resume.backlog.front() else { return };
        let store = self.inner.store.clone();
        let (room, after) = (job.room, job.after);
        let limit = self.inner.config.backlog_chunk.max(1);
        resume.fetch = Some(Box::pin(async move {
            let query = HistoryQuery { before_seq: None, after_seq: Some(after), limit };
            (room, after, store.history(room, query).await)
        }));
    }

    fn backlog_fetched(&mut self, room: RoomId, after: u64, mut result: Result<HistoryPage>) {
        if let Ok(page) = &mut result {
            self.inner.sign_all(&mut page.messages);
        }
        let resume = self.resume();
        resume.fetch = None;
        // A page read for another position is stale: the room was left, or
        // joined again from another `since_seq`, while it was on its way.
        let Some(pos) = resume.backlog.iter().position(|b| b.room == room && b.after == after) else {
            return;
        };
        match result {
            Ok(page) => {
                let floor = resume.floors.entry(room).or_insert(0);
                for message in page.messages {
                    *floor = (*floor).max(message.seq);
                    resume.backlog[pos].after = message.seq;
                    let event = Event::MessageNew(MessageEvent { message });
                    resume.out.push_back(Output::Event(Arc::new(Delivery::new(event))));
                }
                if !page.has_more {
                    resume.backlog.remove(pos);
                }
            }
            Err(err) => {
                // Live events would now arrive with a gap before them, so the
                // session leaves the room's stream; the client can join again.
                resume.backlog.remove(pos);
                resume.floors.remove(&room);
                let reply = Error::unavailable(format!("replaying room {room} failed"));
                resume.out.push_back(Output::Reply { reference: None, result: Err(reply) });
                tracing::warn!(session = %self.shared.id, %room, error = %err, "replaying a room failed");
                if self.inner.hub.unsubscribe_session(self.shared.id, room) {
                    self.inner.rooms_emptied(&[room]);
                }
            }
        }
    }

    /// Whether a live event should go out (it was not already replayed).
    fn admit(&mut self, delivery: &Delivery) -> bool {
        if let Event::MessageNew(e) = delivery.event() {
            let seq = e.message.seq;
            if let Some(floor) = self.resume.as_mut().and_then(|r| r.floors.get_mut(&e.message.room_id)) {
                if seq <= *floor {
                    return false;
                }
                *floor = seq;
            }
        }
        true
    }

    /// The next thing to send to the client. Cancel-safe: it can be raced
    /// against reading the socket in `select!` without losing anything.
    ///
    /// Order: answers first, then replayed messages, then finished sends, then
    /// live events (held back while a replay is pending). After
    /// [`Output::Close`] the session is over.
    pub async fn next_output(&mut self) -> Output {
        poll_fn(|cx| self.poll_next_output(cx)).await
    }

    /// [`Session::next_output`] as a poll, for a transport that drives its
    /// connection by hand: `Pending` registers the task to be woken when there
    /// is output. A loop that waits on this, the socket and a timer with
    /// `poll_fn` keeps no future per source, so an idle connection's task
    /// stays small.
    pub fn poll_next_output(&mut self, cx: &mut Context<'_>) -> Poll<Output> {
        // Registered before anything is looked at, so that an event or a
        // kill arriving in between wakes the task.
        self.shared.register_owner(cx.waker());
        loop {
            if self.closed {
                return Poll::Ready(Output::Close(self.shared.close_reason().unwrap_or(CloseReason::Shutdown)));
            }
            if let Some(reason) = self.shared.close_reason() {
                if reason == CloseReason::Shutdown {
                    // The engine commits every send it accepted before the
                    // store closes; their acks go out before the close frame,
                    // so clients need not resend what is already stored.
                    if let Some(out) = self.ready.pop_front() {
                        return Poll::Ready(out);
                    }
                    if let Some(out) = ready!(self.poll_acks_at_shutdown(cx)) {
                        return Poll::Ready(out);
                    }
                }
                self.closed = true;
                return Poll::Ready(Output::Close(reason));
            }
            if let Some(out) = self.ready.pop_front() {
                return Poll::Ready(out);
            }
            if let Some(out) = self.resume.as_mut().and_then(|r| r.out.pop_front()) {
                let left = matches!(&out, Output::Event(d)
                    if d.event().room_id().is_some_and(|room| !self.inner.hub.is_subscribed(self.shared.id, room)));
                if left {
                    continue;
                }
                return Poll::Ready(out);
            }
            self.start_backlog_fetch();
            if let Some(fetch) = self.resume.as_mut().and_then(|r| r.fetch.as_mut())
                && let Poll::Ready((room, after, result)) = fetch.as_mut().poll(cx)
            {
                self.backlog_fetched(room, after, result);
                continue;
            }
            if let Some(in_flight) = self.in_flight.as_mut().filter(|f| !f.is_empty())
                && let Poll::Ready(Some(out)) = in_flight.poll_next_unpin(cx)
            {
                return Poll::Ready(out);
            }
            if self.shared.take_keepalive() {
                return Poll::Ready(Output::Keepalive);
            }
            // Live events wait while a replay is pending.
            if self.resume.as_ref().is_some_and(|r| !r.backlog.is_empty()) {
                return Poll::Pending;
            }
            match self.shared.take_event() {
                Some(delivery) => {
                    if self.admit(&delivery) {
                        return Poll::Ready(Output::Event(delivery));
                    }
                }
                None => return Poll::Pending,
            }
        }
    }

    /// At shutdown: the next ack of a pending send, `None` once there are
    /// none left or [`SHUTDOWN_ACK_WAIT`] has passed since the first call.
    fn poll_acks_at_shutdown(&mut self, cx: &mut Context<'_>) -> Poll<Option<Output>> {
        let Some(in_flight) = self.in_flight.as_mut().filter(|f| !f.is_empty()) else {
            return Poll::Ready(None);
        };
        if let Poll::Ready(Some(out)) = in_flight.poll_next_unpin(cx) {
            return Poll::Ready(Some(out));
        }
        let wait = self.shutdown_wait.get_or_insert_with(|| Box::pin(tokio::time::sleep(SHUTDOWN_ACK_WAIT)));
        ready!(wait.as_mut().poll(cx));
        self.in_flight = None;
        Poll::Ready(None)
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        if let Some(at) = self.expires {
            self.inner.expiries.remove(at, self.shared.id);
        }
        self.inner.transports.closed(self.transport);
        self.inner.session_closed(&self.shared);
    }
}

/// How a command ended, as a metrics label: `ok` or the error code.
fn outcome(result: &Result<Reply>) -> &'static str {
    match result {
        Ok(_) => "ok",
        Err(err) => err.code().as_str(),
    }
}
