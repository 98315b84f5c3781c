//! Calls' one home: placing, answering, declining and ending one-to-one
//! calls, relaying their signalling, and the timers that end them.
//!
//! - **The store decides.** The caller and the callee may be on different
//!   processes, so no process's memory says what a call is. Placing a call
//!   is [`Store::start_call`](crate::Store::start_call), which answers busy
//!   and glare in its own transaction; every later step reads the call, works
//!   out the next state and writes it with
//!   [`Store::update_call`](crate::Store::update_call), a compare-and-set on
//!   the call's version. Of racing steps (two sessions accepting, a hang-up
//!   racing the ring timeout on another process) exactly one wins; the
//!   others read the call again and see what happened.
//! - **The winner announces.** Only the step that changed the call publishes
//!   its events and, for the step that ended it, writes the call's line in
//!   the room's history (before `call:ended` goes out), through the
//!   committer like any message (its `client_msg_id` is made from the call
//!   id, so a second write would store nothing either).
//! - **Timers.** The process that placed a call ends it when ringing times
//!   out; the process of a session that closed ends the call when the grace
//!   ([`CallConfig::disconnect_grace`](crate::CallConfig)) passes without a
//!   `call:rejoin`. Every process also sweeps the store every
//!   [`CallConfig::sweep_interval`](crate::CallConfig): it renews the lease
//!   of each side whose session is open here, ends the live calls whose
//!   deadline passed (whatever process was meant to end them: it may have
//!   died), and writes the history lines a dead process left unwritten.
//! - **Signalling** (`call:signal`) goes to the other side's session alone:
//!   to its user's topic, where only the process holding that session
//!   delivers it. It is never stored.
//!
//! `legs` is this process's note of which of its sessions take part in a
//! call. It only says which timers to start and which leases to renew;
//! whatever it says is checked against the store before anything changes.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use tokio::sync::oneshot;

use super::committer::{CommitJob, CommitRequest};
use super::{Ctx, Inner};
use crate::broker::Audience;
use crate::call::{Call, CallParty, CallStart, CallState, EndReason};
use crate::command::{CallPlaced, CallRejoined, InviteCall, Reply, SignalCall};
use crate::error::{Error, Result};
use crate::event::{CallEnded, CallIncoming, CallJoined, CallRejected, CallSignal, Event};
use crate::id::{CallId, MessageId, SessionId, UserId};
use crate::message::NewMessage;
use crate::time::Timestamp;

/// How often a step re-reads a call that changed under it before giving up.
const ATTEMPTS: usize = 8;
/// Calls the sweep handles per store read.
const SWEEP_BATCH: u32 = 200;
/// How long an ended call's own process has to write its history line
/// before the sweep of any process writes it instead.
const LOG_GRACE: Duration = Duration::from_secs(10);

/// Which sessions of this process take part in which call. See the
/// [module docs](self).
#[derive(Debug, Default)]
pub(crate) struct CallLegs {
    legs: Mutex<HashMap<SessionId, CallId>>,
}

impl CallLegs {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<SessionId, CallId>> {
        self.legs.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn bind(&self, session: SessionId, call: CallId) {
        self.lock().insert(session, call);
    }

    /// Forgets the sessions here that took part in `call`.
    fn release(&self, call: CallId) {
        self.lock().retain(|_, c| *c != call);
    }

    fn take(&self, session: SessionId) -> Option<CallId> {
        self.lock().remove(&session)
    }

    fn snapshot(&self) -> Vec<(CallId, SessionId)> {
        self.lock().iter().map(|(s, c)| (*c, *s)).collect()
    }
}

fn session_of(ctx: &Ctx) -> Result<SessionId> {
    ctx.session.ok_or_else(|| Error::invalid("calls are made from a session"))
}

/// What a step does to a call: `Ok(None)` leaves it as it is.
type Decision = Result<Option<Call>>;

impl Inner {
    /// The ICE servers for `user`, from the configured source.
    pub(crate) fn ice_servers_for(&self, user: &UserId) -> Vec<serde_json::Value> {
        self.ice_servers.as_ref().map(|source| source.ice_servers(user)).unwrap_or_default()
    }

    /// A call that `user` takes part in; `not_found` for anyone else.
    async fn call_of(&self, id: CallId, user: &UserId) -> Result<Call> {
        match self.store.call(id).await? {
            Some(call) if call.involves(user) => Ok(call),
            _ => Err(Error::NotFound("call")),
        }
    }

    /// Reads the call, lets `decide` work out its next state and writes it
    /// if nobody changed the call meanwhile, else reads it again. Returns
    /// the call as it was read and as it is stored now, or `None` when
    /// `decide` left it as it was.
    async fn change_call(&self, id: CallId, mut decide: impl FnMut(&Call) -> Decision) -> Result<Option<(Call, Call)>> {
        for _ in 0..ATTEMPTS {
            let Some(current) = self.store.call(id).await? else { return Err(Error::NotFound("call")) };
            let Some(next) = decide(&current)? else { return Ok(None) };
            if let Some(stored) = self.store.update_call(&next).await? {
                return Ok(Some((current, stored)));
            }
        }
        Err(Error::unavailable("the call kept changing; try again"))
    }

    /// `call:invite`
    pub(crate) async fn call_invite(self: &Arc<Self>, ctx: &Ctx, req: InviteCall) -> Result<Reply> {
        let session = session_of(ctx)?;
        let me = &ctx.user.id;
        // Membership is the store's word, read now: a removed member may not call.
        self.require_member(ctx, req.room_id).await?;
        let room = self.room_or_404(req.room_id).await?;
        if room.closed {
            return Err(Error::room_closed());
        }
        let members = self.store.members(room.id).await?;
        let callee = match req.to {
            Some(to) if to == *me => return Err(Error::invalid("you cannot call yourself")),
            Some(to) if members.iter().any(|m| m.user_id == to) => to,
            Some(_) => return Err(Error::invalid("`to` is not a member of the room")),
            None => {
                let mut others = members.iter().filter(|m| m.user_id != *me);
                match (others.next(), others.next()) {
                    (Some(one), None) => one.user_id.clone(),
                    (None, _) => return Err(Error::invalid("nobody else is in the room")),
                    (Some(_), Some(_)) => {
                        return Err(Error::invalid("name who to call with `to` in a room of more than two members"));
                    }
                }
            }
        };
        let callee_user = self.store.user(&callee).await?.filter(|u| !u.deleted).ok_or(Error::NotFound("user"))?;
        if callee_user.is_visitor() {
            return Err(Error::forbidden("visitors cannot take calls"));
        }
        let now = Timestamp::now();
        let timings = &self.config.calls;
        let call = Call {
            id: CallId::generate(),
            room_id: room.id,
            media: req.media,
            caller: CallParty { user_id: me.clone(), session: Some(session), until: Some(now.plus(timings.lease)) },
            callee: CallParty { user_id: callee.clone(), session: None, until: None },
            state: CallState::Ringing,
            created_at: now,
            ring_until: now.plus(timings.ring_timeout),
            accepted_at: None,
            ended_at: None,
            end_reason: None,
            logged: false,
            version: 0,
        };
        let ice_servers = self.ice_servers_for(me);
        match self.store.start_call(&call).await? {
            CallStart::Started => {
                self.call_legs.bind(session, call.id);
                self.ring_timer(call.id);
                let incoming =
                    CallIncoming { call_id: call.id, room_id: room.id, from: ctx.user.clone(), media: req.media };
                let audience = Audience::Users { users: vec![callee.clone()], except_session: None };
                self.publish(audience, Event::CallIncoming(incoming)).await;
                if !self.presence.is_connected(&callee)
                    && let Some(notifier) = &self.call_notifier
                {
                    notifier.callee_unreachable(&call, &ctx.user);
                }
                Ok(Reply::CallPlaced(Box::new(CallPlaced { call_id: call.id, ice_servers, glare: false })))
            }
            CallStart::Busy(busy) => {
                // Only the caller hears of it: the callee is busy with another call.
                self.log_call(&busy).await;
                let ended = CallEnded { call_id: busy.id, reason: EndReason::Busy, duration_s: None };
                let audience = Audience::Users { users: vec![me.clone()], except_session: None };
                self.publish(audience, Event::CallEnded(ended)).await;
                Ok(Reply::CallPlaced(Box::new(CallPlaced { call_id: busy.id, ice_servers, glare: false })))
            }
            CallStart::CallerBusy(_) => Err(Error::conflict("you are already in a call")),
            CallStart::Glare(older) => {
                // Both called each other: the older invite is the call, and
                // this invite answers it.
                self.accept_as(ctx, session, older.id).await?;
                Ok(Reply::CallPlaced(Box::new(CallPlaced { call_id: older.id, ice_servers, glare: true })))
            }
        }
    }

    /// `call:accept`
    pub(crate) async fn call_accept(self: &Arc<Self>, ctx: &Ctx, id: CallId) -> Result<Reply> {
        let session = session_of(ctx)?;
        let call = self.call_of(id, &ctx.user.id).await?;
        self.require_member(ctx, call.room_id).await?;
        self.accept_as(ctx, session, id).await?;
        Ok(Reply::empty())
    }

    /// The callee's `session` answers the call: the first to do so wins.
    async fn accept_as(self: &Arc<Self>, ctx: &Ctx, session: SessionId, id: CallId) -> Result<()> {
        let me = &ctx.user.id;
        let now = Timestamp::now();
        let lease = now.plus(self.config.calls.lease);
        let changed = self
            .change_call(id, |c| {
                if c.callee.user_id != *me {
                    return Err(if c.involves(me) {
                        Error::invalid("only the callee accepts a call")
                    } else {
                        Error::NotFound("call")
                    });
                }
                match c.state {
                    CallState::Ringing => {}
                    CallState::Accepted if c.callee.session == Some(session) => return Ok(None),
                    CallState::Accepted => return Err(Error::conflict("the call was answered elsewhere")),
                    CallState::Ended => return Err(Error::conflict("the call has ended")),
                }
                let mut next = c.clone();
                next.state = CallState::Accepted;
                next.accepted_at = Some(now);
                next.callee.session = Some(session);
                next.callee.until = Some(lease);
                Ok(Some(next))
            })
            .await?;
        let Some((_, call)) = changed else { return Ok(()) };
        self.call_legs.bind(session, call.id);
        let joined = CallJoined { call_id: call.id, user_id: me.clone(), session_id: session };
        let both = vec![call.caller.user_id.clone(), call.callee.user_id.clone()];
        self.publish(Audience::Users { users: both, except_session: None }, Event::CallAccepted(joined)).await;
        let elsewhere = CallEnded { call_id: call.id, reason: EndReason::AnsweredElsewhere, duration_s: None };
        let others = Audience::Users { users: vec![me.clone()], except_session: Some(session) };
        self.publish(others, Event::CallEnded(elsewhere)).await;
        Ok(())
    }

    /// `call:reject`: the callee declines a ringing call.
    pub(crate) async fn call_reject(self: &Arc<Self>, ctx: &Ctx, id: CallId) -> Result<Reply> {
        let me = &ctx.user.id;
        let call = self.call_of(id, me).await?;
        if call.callee.user_id != *me {
            return Err(Error::invalid("only the callee declines a call; the caller ends it with call:end"));
        }
        match call.state {
            CallState::Accepted => return Err(Error::conflict("the call was answered; end it with call:end")),
            CallState::Ended => return Ok(Reply::empty()),
            CallState::Ringing => {}
        }
        self.end_call(id, |c| match c.state {
            CallState::Ringing => Ok(Some(EndReason::Rejected)),
            CallState::Accepted => Err(Error::conflict("the call was answered; end it with call:end")),
            CallState::Ended => Ok(None),
        })
        .await?;
        Ok(Reply::empty())
    }

    /// `call:end`: either participant hangs up (the callee, while it rings,
    /// declines).
    pub(crate) async fn call_hang_up(self: &Arc<Self>, ctx: &Ctx, id: CallId) -> Result<Reply> {
        let me = ctx.user.id.clone();
        self.call_of(id, &me).await?;
        self.end_call(id, |c| {
            Ok(match c.state {
                CallState::Ended => None,
                CallState::Ringing if c.callee.user_id == me => Some(EndReason::Rejected),
                _ => Some(EndReason::Hangup),
            })
        })
        .await?;
        Ok(Reply::empty())
    }

    /// `call:signal`: relayed to the other side's session alone.
    pub(crate) async fn call_signal(&self, ctx: &Ctx, req: SignalCall) -> Result<Reply> {
        let session = session_of(ctx)?;
        let max = self.config.calls.max_signal_bytes;
        let size = serde_json::to_vec(&req.payload).map_or(usize::MAX, |bytes| bytes.len());
        if size > max {
            return Err(Error::too_large(format!("a signal's payload may be at most {max} bytes")));
        }
        let me = &ctx.user.id;
        let call = self.call_of(req.call_id, me).await?;
        match call.state {
            CallState::Accepted => {}
            CallState::Ringing => return Err(Error::conflict("the call has not been answered yet")),
            CallState::Ended => return Err(Error::conflict("the call has ended")),
        }
        if call.party(me).and_then(|p| p.session) != Some(session) {
            return Err(Error::forbidden("another session of yours takes part in this call"));
        }
        let Some(peer) = call.peer_of(me) else { return Err(Error::NotFound("call")) };
        if req.to != peer.user_id {
            return Err(Error::invalid("`to` must be the other participant"));
        }
        let Some(peer_session) = peer.session else {
            return Err(Error::conflict("the other participant has no session in the call"));
        };
        let signal = CallSignal { call_id: call.id, from: me.clone(), payload: req.payload };
        let audience = Audience::Session { user_id: peer.user_id.clone(), session_id: peer_session };
        self.publish(audience, Event::CallSignal(signal)).await;
        Ok(Reply::empty())
    }

    /// `call:rejoin`: this session takes its user's side of a live call over
    /// (after a reconnect, within the disconnect grace).
    pub(crate) async fn call_rejoin(self: &Arc<Self>, ctx: &Ctx, id: CallId) -> Result<Reply> {
        let session = session_of(ctx)?;
        let me = ctx.user.id.clone();
        let lease = Timestamp::now().plus(self.config.calls.lease);
        let changed = self
            .change_call(id, |c| {
                let Some(mine) = c.party(&me) else { return Err(Error::NotFound("call")) };
                match c.state {
                    CallState::Ended => return Err(Error::conflict("the call has ended")),
                    CallState::Ringing if c.callee.user_id == me => {
                        return Err(Error::conflict("the call has not been answered; accept it"));
                    }
                    _ => {}
                }
                if mine.session == Some(session) {
                    return Ok(None);
                }
                let mut next = c.clone();
                if let Some(side) = next.party_mut(&me) {
                    side.session = Some(session);
                    side.until = Some(lease);
                }
                Ok(Some(next))
            })
            .await?;
        let call = match changed {
            Some((before, call)) => {
                self.call_legs.bind(session, call.id);
                // The session it replaces, if still open, is out of the call.
                if let Some(old) = before.party(&me).and_then(|p| p.session) {
                    let ended = CallEnded { call_id: call.id, reason: EndReason::AnsweredElsewhere, duration_s: None };
                    let audience = Audience::Session { user_id: me.clone(), session_id: old };
                    self.publish(audience, Event::CallEnded(ended)).await;
                }
                if let Some(peer) = call.peer_of(&me)
                    && let Some(peer_session) = peer.session
                    && call.state == CallState::Accepted
                {
                    let joined = CallJoined { call_id: call.id, user_id: me.clone(), session_id: session };
                    let audience = Audience::Session { user_id: peer.user_id.clone(), session_id: peer_session };
                    self.publish(audience, Event::CallRejoined(joined)).await;
                }
                call
            }
            None => self.call_of(id, &me).await?,
        };
        let peer = call.peer_of(&me).map(|p| p.user_id.clone()).ok_or(Error::NotFound("call"))?;
        Ok(Reply::CallRejoined(Box::new(CallRejoined {
            call_id: call.id,
            room_id: call.room_id,
            media: call.media,
            state: call.state,
            peer,
            caller: call.caller.user_id == me,
            ice_servers: self.ice_servers_for(&me),
        })))
    }

    /// Ends a live call for the reason `decide` gives (`None`: leave it).
    /// The step that ends it announces `call:ended` to both participants
    /// and writes the call's history line; a racing one does nothing.
    async fn end_call(
        self: &Arc<Self>,
        id: CallId,
        mut decide: impl FnMut(&Call) -> Result<Option<EndReason>>,
    ) -> Result<Option<Call>> {
        let now = Timestamp::now();
        let changed = self
            .change_call(id, |c| {
                if !c.is_live() {
                    return Ok(None);
                }
                let Some(reason) = decide(c)? else { return Ok(None) };
                let mut next = c.clone();
                next.state = CallState::Ended;
                next.end_reason = Some(reason);
                next.ended_at = Some(now);
                next.caller.until = None;
                next.callee.until = None;
                Ok(Some(next))
            })
            .await?;
        let Some((_, call)) = changed else { return Ok(None) };
        self.call_legs.release(call.id);
        // The line first: a client that reads the history when it hears
        // `call:ended` finds it there.
        self.log_call(&call).await;
        let both = vec![call.caller.user_id.clone(), call.callee.user_id.clone()];
        let reason = call.end_reason.unwrap_or(EndReason::Hangup);
        if reason == EndReason::Rejected {
            let rejected = CallRejected { call_id: call.id, user_id: call.callee.user_id.clone() };
            let audience = Audience::Users { users: both.clone(), except_session: None };
            self.publish(audience, Event::CallRejected(rejected)).await;
        }
        let ended = CallEnded { call_id: call.id, reason, duration_s: call.duration_s() };
        self.publish(Audience::Users { users: both, except_session: None }, Event::CallEnded(ended)).await;
        Ok(Some(call))
    }

    /// Writes an ended call's line in its room's history, through the
    /// committer, and records that it did. A failure leaves the call for
    /// the sweep to log.
    async fn log_call(&self, call: &Call) {
        let Some(summary) = call.summary() else { return };
        let (reply, answer) = oneshot::channel();
        let request = CommitRequest {
            message: NewMessage {
                id: MessageId::generate(),
                room_id: call.room_id,
                sender_id: call.caller.user_id.clone(),
                client_msg_id: call.client_msg_id(),
                body: String::new(),
                attachments: Vec::new(),
                reply_to: None,
                created_at: Timestamp::now(),
                call: Some(Box::new(summary)),
            },
            session: None,
            bridge: None,
            reply,
        };
        if self.commits.send(CommitJob::Append(request)).await.is_err() {
            tracing::warn!(call = %call.id, "a call's history line was not written: the committer has stopped");
            return;
        }
        let done = match answer.await {
            Ok(Ok(_)) => true,
            // The caller left the room, or it was closed or removed: the
            // line cannot be written, now or later.
            Ok(Err(Error::NotMember | Error::NotFound(_) | Error::Forbidden(_))) => true,
            Ok(Err(err)) => {
                tracing::warn!(call = %call.id, error = %err, "a call's history line was not written; the sweep will try again");
                false
            }
            Err(_) => false,
        };
        if done && let Err(err) = self.store.mark_call_logged(call.id).await {
            tracing::debug!(call = %call.id, error = %err, "a call's history line was not marked written");
        }
    }

    /// Ends the call with `timeout` once it has rung for its time, unless
    /// it was answered or ended first (here or on another process).
    fn ring_timer(self: &Arc<Self>, id: CallId) {
        let weak = Arc::downgrade(self);
        let ring = self.config.calls.ring_timeout;
        tokio::spawn(async move {
            tokio::time::sleep(ring).await;
            let Some(inner) = weak.upgrade() else { return };
            let timed_out = |c: &Call| Ok((c.state == CallState::Ringing).then_some(EndReason::Timeout));
            if let Err(err) = inner.end_call(id, timed_out).await {
                tracing::warn!(call = %id, error = %err, "a ringing call did not time out; the sweep will end it");
            }
        });
    }

    /// A session of this process closed: if it took part in a call, its
    /// side gets the disconnect grace to come back (`call:rejoin`, from any
    /// process), after which the call ends with `disconnected`.
    pub(crate) fn call_session_closed(self: &Arc<Self>, session: SessionId) {
        let Some(id) = self.call_legs.take(session) else { return };
        let Ok(rt) = tokio::runtime::Handle::try_current() else { return };
        let weak = Arc::downgrade(self);
        let grace = self.config.calls.disconnect_grace;
        rt.spawn(async move {
            let Some(inner) = weak.upgrade() else { return };
            let until = Timestamp::now().plus(grace);
            // The lease is cut to the grace in the store, so that the sweep
            // of another process ends the call if this one dies meanwhile.
            let cut = inner
                .change_call(id, |c| {
                    let mut next = c.clone();
                    let side = [&mut next.caller, &mut next.callee].into_iter().find(|p| p.session == Some(session));
                    match side {
                        Some(side) if c.is_live() => side.until = Some(until),
                        _ => return Ok(None),
                    }
                    Ok(Some(next))
                })
                .await;
            match cut {
                Ok(None) => return,
                Ok(Some(_)) => {}
                Err(err) => tracing::debug!(call = %id, error = %err, "a call's grace was not recorded"),
            }
            drop(inner);
            tokio::time::sleep(grace).await;
            let Some(inner) = weak.upgrade() else { return };
            let gone = |c: &Call| {
                let still = c.caller.session == Some(session) || c.callee.session == Some(session);
                Ok(still.then_some(EndReason::Disconnected))
            };
            if let Err(err) = inner.end_call(id, gone).await {
                tracing::warn!(call = %id, error = %err, "a call was not ended after its grace; the sweep will end it");
            }
        });
    }

    /// One round of the sweep; see the [module docs](self).
    async fn sweep_calls(self: &Arc<Self>) -> Result<()> {
        let now = Timestamp::now();
        let legs = self.call_legs.snapshot();
        if !legs.is_empty() {
            self.store.renew_calls(&legs, now.plus(self.config.calls.lease)).await?;
        }
        for call in self.store.due_calls(now, SWEEP_BATCH).await? {
            let due = |c: &Call| {
                Ok(match c.deadline() {
                    Some(d) if d <= now && c.state == CallState::Ringing && c.ring_until <= now => {
                        Some(EndReason::Timeout)
                    }
                    Some(d) if d <= now => Some(EndReason::Disconnected),
                    _ => None,
                })
            };
            if let Err(err) = self.end_call(call.id, due).await {
                tracing::warn!(call = %call.id, error = %err, "a call past its deadline was not ended");
            }
        }
        let before = Timestamp::from_millis(now.as_millis().saturating_sub(LOG_GRACE.as_millis() as i64));
        for call in self.store.unlogged_calls(before, SWEEP_BATCH).await? {
            self.log_call(&call).await;
        }
        Ok(())
    }
}

/// Sweeps the store for calls every [`CallConfig::sweep_interval`](crate::CallConfig).
pub(crate) async fn sweep(inner: Weak<Inner>) {
    let Some(strong) = inner.upgrade() else { return };
    let interval = strong.config.calls.sweep_interval.max(Duration::from_millis(10));
    drop(strong);
    let mut ticks = tokio::time::interval(interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticks.tick().await;
    loop {
        ticks.tick().await;
        let Some(inner) = inner.upgrade() else { return };
        if !inner.accepting.load(std::sync::atomic::Ordering::SeqCst) {
            return;
        }
        if let Err(err) = inner.sweep_calls().await {
            tracing::debug!(error = %err, "the calls' sweep failed; trying again at the next");
        }
    }
}
