//! Audio and video calls between two users: a call as the store keeps it,
//! and the line it leaves in its room's history.
//!
//! The engine decides every step of a call (`engine/calls.rs`); the store is
//! where the decision is made true for every process at once. A call's row
//! carries a `version`, and each change is a compare-and-set on it
//! ([`Store::update_call`](crate::Store::update_call)): of two processes
//! that race to accept or to end one call, exactly one wins, and only the
//! winner announces the change and writes the call's message. Starting a
//! call is the one step the store decides itself
//! ([`Store::start_call`](crate::Store::start_call)), because "is either
//! user already in a call" must be read and acted on in one transaction.
//!
//! Signalling (SDP and ICE) is never stored: it travels from one session to
//! the other through the engine's fan-out.

use serde::{Deserialize, Serialize};

use crate::id::{CallId, RoomId, SessionId, UserId};
use crate::time::Timestamp;

/// What a call carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum CallMedia {
    /// Sound only.
    Audio,
    /// Sound and pictures.
    Video,
}

impl CallMedia {
    /// The protocol name.
    pub fn as_str(self) -> &'static str {
        match self {
            CallMedia::Audio => "audio",
            CallMedia::Video => "video",
        }
    }

    /// Reads a protocol name.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "audio" => Some(CallMedia::Audio),
            "video" => Some(CallMedia::Video),
            _ => None,
        }
    }
}

/// Where a call is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CallState {
    /// The callee's sessions ring; nobody has answered.
    Ringing,
    /// One session of the callee answered: the two sessions talk.
    Accepted,
    /// Over, for a [`EndReason`].
    Ended,
}

impl CallState {
    /// The name kept in the store.
    pub fn as_str(self) -> &'static str {
        match self {
            CallState::Ringing => "ringing",
            CallState::Accepted => "accepted",
            CallState::Ended => "ended",
        }
    }

    /// Reads a stored name.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "ringing" => Some(CallState::Ringing),
            "accepted" => Some(CallState::Accepted),
            "ended" => Some(CallState::Ended),
            _ => None,
        }
    }
}

/// Why a call ended, or (for [`EndReason::AnsweredElsewhere`]) why it ended
/// for one session while it goes on for another.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EndReason {
    /// A participant hung up (`call:end`).
    Hangup,
    /// The callee declined it.
    Rejected,
    /// Nobody answered within the ring time.
    Timeout,
    /// The callee was in another call.
    Busy,
    /// A participant's session went away and did not come back in time.
    Disconnected,
    /// Another session of the callee answered it (sent to the callee's
    /// other sessions only; never a stored reason).
    AnsweredElsewhere,
}

impl EndReason {
    /// The protocol name, also kept in the store.
    pub fn as_str(self) -> &'static str {
        match self {
            EndReason::Hangup => "hangup",
            EndReason::Rejected => "rejected",
            EndReason::Timeout => "timeout",
            EndReason::Busy => "busy",
            EndReason::Disconnected => "disconnected",
            EndReason::AnsweredElsewhere => "answered_elsewhere",
        }
    }

    /// Reads a protocol name.
    pub fn parse(s: &str) -> Option<Self> {
        [
            EndReason::Hangup,
            EndReason::Rejected,
            EndReason::Timeout,
            EndReason::Busy,
            EndReason::Disconnected,
            EndReason::AnsweredElsewhere,
        ]
        .into_iter()
        .find(|r| r.as_str() == s)
    }
}

/// How a call went, as its history line says it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum CallOutcome {
    /// Never answered (timed out, or the caller gave up or went away while it rang).
    Missed,
    /// The callee declined it.
    Rejected,
    /// The callee was in another call.
    Busy,
    /// It was answered and has ended.
    Ended,
}

/// What a call leaves in its room's history: the `call` of a
/// [`Message`](crate::Message) whose sender is the caller and whose body is
/// empty.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct CallSummary {
    /// The call.
    pub call_id: CallId,
    /// Audio or video.
    pub media: CallMedia,
    /// How it went.
    pub outcome: CallOutcome,
    /// How long the two talked, in whole seconds, for an answered call.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_s: Option<u64>,
}

/// One side of a call.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CallParty {
    /// The user.
    pub user_id: UserId,
    /// The session that takes part: the caller's from the start, the
    /// callee's once they accepted; changed by `call:rejoin`.
    pub session: Option<SessionId>,
    /// When this side counts as gone unless its process says otherwise: a
    /// lease that the process of the session renews while the session is
    /// open, cut to the disconnect grace when it closes. Any process ends a
    /// live call one of whose sides is past this time
    /// ([`Store::due_calls`](crate::Store::due_calls)), which is what ends
    /// the calls of a process that died.
    pub until: Option<Timestamp>,
}

/// A call as the store keeps it. See the [module docs](self).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Call {
    /// Server-made, time-sortable id.
    pub id: CallId,
    /// The room it was placed in.
    pub room_id: RoomId,
    /// Audio or video.
    pub media: CallMedia,
    /// Who called.
    pub caller: CallParty,
    /// Who was called.
    pub callee: CallParty,
    /// Where it is.
    pub state: CallState,
    /// When it was placed.
    pub created_at: Timestamp,
    /// When ringing ends with [`EndReason::Timeout`].
    pub ring_until: Timestamp,
    /// When it was answered.
    pub accepted_at: Option<Timestamp>,
    /// When it ended.
    pub ended_at: Option<Timestamp>,
    /// Why it ended.
    pub end_reason: Option<EndReason>,
    /// Whether its history line was written; a call that ended without
    /// one (its process died in between) is found and written by a sweep.
    pub logged: bool,
    /// Bumped by every [`Store::update_call`](crate::Store::update_call);
    /// the compare-and-set that decides races.
    pub version: u64,
}

impl Call {
    /// Whether the call still rings or is answered.
    pub fn is_live(&self) -> bool {
        self.state != CallState::Ended
    }

    /// The side of `user`, if they take part.
    pub fn party(&self, user: &UserId) -> Option<&CallParty> {
        if self.caller.user_id == *user {
            Some(&self.caller)
        } else if self.callee.user_id == *user {
            Some(&self.callee)
        } else {
            None
        }
    }

    /// The side of `user`, to change it.
    pub fn party_mut(&mut self, user: &UserId) -> Option<&mut CallParty> {
        if self.caller.user_id == *user {
            Some(&mut self.caller)
        } else if self.callee.user_id == *user {
            Some(&mut self.callee)
        } else {
            None
        }
    }

    /// The other side of `user`'s.
    pub fn peer_of(&self, user: &UserId) -> Option<&CallParty> {
        if self.caller.user_id == *user {
            Some(&self.callee)
        } else if self.callee.user_id == *user {
            Some(&self.caller)
        } else {
            None
        }
    }

    /// Whether `user` is the caller or the callee.
    pub fn involves(&self, user: &UserId) -> bool {
        self.party(user).is_some()
    }

    /// When the call ends by itself unless something changes: the end of
    /// ringing while it rings, and either side's [`CallParty::until`].
    /// `None` for an ended call.
    pub fn deadline(&self) -> Option<Timestamp> {
        if !self.is_live() {
            return None;
        }
        let ring = (self.state == CallState::Ringing).then_some(self.ring_until);
        [ring, self.caller.until, self.callee.until].into_iter().flatten().min()
    }

    /// How the call went, once it has ended.
    pub fn outcome(&self) -> Option<CallOutcome> {
        let reason = self.end_reason?;
        Some(match (self.accepted_at, reason) {
            (_, EndReason::Busy) => CallOutcome::Busy,
            (None, EndReason::Rejected) => CallOutcome::Rejected,
            (None, _) => CallOutcome::Missed,
            (Some(_), _) => CallOutcome::Ended,
        })
    }

    /// How long the two talked, in whole seconds, for an answered call that ended.
    pub fn duration_s(&self) -> Option<u64> {
        let (Some(from), Some(to)) = (self.accepted_at, self.ended_at) else { return None };
        Some(u64::try_from((to.as_millis() - from.as_millis()).max(0) / 1000).unwrap_or(0))
    }

    /// The line the call leaves in its room's history, once it has ended.
    pub fn summary(&self) -> Option<CallSummary> {
        Some(CallSummary {
            call_id: self.id,
            media: self.media,
            outcome: self.outcome()?,
            duration_s: self.duration_s(),
        })
    }

    /// How [`Store::start_call`](crate::Store::start_call) answers for this
    /// (new, ringing) call, given the live calls of its caller and callee as
    /// read in the transaction that would store it: with
    /// [`CallStart::Started`] the store stores this call, with
    /// [`CallStart::Busy`] the call it holds, and nothing otherwise. Every
    /// store decides with this, so that they decide alike.
    pub fn start_against(&self, live: &[Call]) -> CallStart {
        let (caller, callee) = (&self.caller.user_id, &self.callee.user_id);
        let live = || live.iter().filter(|c| c.is_live());
        if let Some(glare) =
            live().find(|c| c.state == CallState::Ringing && c.caller.user_id == *callee && c.callee.user_id == *caller)
        {
            return CallStart::Glare(glare.clone());
        }
        if let Some(mine) = live().find(|c| c.involves(caller)) {
            return CallStart::CallerBusy(mine.clone());
        }
        if live().any(|c| c.involves(callee)) {
            let mut busy = self.clone();
            busy.state = CallState::Ended;
            busy.end_reason = Some(EndReason::Busy);
            busy.ended_at = Some(self.created_at);
            busy.caller.until = None;
            busy.callee.until = None;
            return CallStart::Busy(busy);
        }
        CallStart::Started
    }

    /// The idempotency key of the call's history line: one message per call,
    /// whoever writes it and however often.
    pub fn client_msg_id(&self) -> String {
        format!("call:{}", self.id)
    }
}

/// The store's answer to [`Store::start_call`](crate::Store::start_call).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum CallStart {
    /// The call was stored, ringing.
    Started,
    /// The callee is in a live call: the new call was stored as ended with
    /// [`EndReason::Busy`] (at its `created_at`), and is returned as stored.
    Busy(Call),
    /// The caller is in a live call (this one): nothing was stored.
    CallerBusy(Call),
    /// The callee is calling the caller right now (this ringing call):
    /// nothing was stored, and the older invite is the one kept.
    Glare(Call),
}

/// Where the engine gets the ICE servers (STUN and TURN, as RTCIceServer
/// objects) that `call:invite`, `call:rejoin` and `GET
/// /v1/calls/ice-servers` hand a user. TURN credentials are per user, so the
/// answer may differ by user. Without one the engine answers an empty list
/// (peers on one network still connect).
pub trait IceServers: Send + Sync + 'static {
    /// The RTCIceServer objects for `user`'s peer connections.
    fn ice_servers(&self, user: &UserId) -> Vec<serde_json::Value>;
}

/// The seam where a call reaches a user who cannot hear it ring: told when
/// a call is placed to a user with no open session on any process (as far
/// as presence knows). Push notifications plug in here; the engine has no
/// default.
pub trait CallNotifier: Send + Sync + 'static {
    /// `call` rings for its callee, who has no open session anywhere; `from` is the caller.
    fn callee_unreachable(&self, call: &Call, from: &crate::user::User);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call() -> Call {
        let t = Timestamp::from_millis(1_000_000);
        Call {
            id: CallId::generate(),
            room_id: RoomId::generate(),
            media: CallMedia::Video,
            caller: CallParty { user_id: UserId::new("a").expect("valid"), session: None, until: None },
            callee: CallParty { user_id: UserId::new("b").expect("valid"), session: None, until: None },
            state: CallState::Ringing,
            created_at: t,
            ring_until: t.plus(std::time::Duration::from_secs(30)),
            accepted_at: None,
            ended_at: None,
            end_reason: None,
            logged: false,
            version: 1,
        }
    }

    #[test]
    fn outcomes_follow_how_the_call_ended() {
        let at = Timestamp::from_millis(1_000_000);
        let table = [
            (None, EndReason::Hangup, CallOutcome::Missed, None),
            (None, EndReason::Timeout, CallOutcome::Missed, None),
            (None, EndReason::Disconnected, CallOutcome::Missed, None),
            (None, EndReason::Rejected, CallOutcome::Rejected, None),
            (None, EndReason::Busy, CallOutcome::Busy, None),
            (Some(at), EndReason::Hangup, CallOutcome::Ended, Some(61)),
            (Some(at), EndReason::Disconnected, CallOutcome::Ended, Some(61)),
        ];
        for (accepted_at, reason, outcome, duration) in table {
            let mut c = call();
            c.state = CallState::Ended;
            c.accepted_at = accepted_at;
            c.ended_at = Some(at.plus(std::time::Duration::from_millis(61_900)));
            c.end_reason = Some(reason);
            let summary = c.summary().expect("ended");
            assert_eq!((summary.outcome, summary.duration_s), (outcome, duration), "{reason:?}");
        }
        assert_eq!(call().summary(), None, "a live call has no line yet");
    }

    #[test]
    fn the_deadline_is_the_earliest_of_ringing_and_the_sides() {
        let mut c = call();
        assert_eq!(c.deadline(), Some(c.ring_until));
        c.caller.until = Some(c.created_at.plus(std::time::Duration::from_secs(10)));
        assert_eq!(c.deadline(), c.caller.until);
        c.state = CallState::Accepted;
        c.caller.until = None;
        assert_eq!(c.deadline(), None, "an answered call with both sides present has none");
        c.state = CallState::Ended;
        c.callee.until = Some(c.created_at);
        assert_eq!(c.deadline(), None);
    }

    #[test]
    fn names_round_trip() {
        for r in [EndReason::Hangup, EndReason::Busy, EndReason::AnsweredElsewhere] {
            assert_eq!(EndReason::parse(r.as_str()), Some(r));
        }
        for s in [CallState::Ringing, CallState::Accepted, CallState::Ended] {
            assert_eq!(CallState::parse(s.as_str()), Some(s));
        }
        assert_eq!(CallMedia::parse("video"), Some(CallMedia::Video));
        assert_eq!(CallMedia::parse("smell"), None);
    }
}
