//! Calls (protocol sections 7 and 12): the state machine on one process,
//! on the in-memory store and a paused clock. `server/tests/calls.rs` checks
//! the same over real sockets, SQLite, PostgreSQL and several processes.

use super::*;
use crate::call::{CallMedia, CallOutcome, CallSummary, EndReason};
use crate::command::{CallPlaced, CallRef, CallRejoined, InviteCall, SignalCall};
use crate::id::CallId;

fn invite(room_id: RoomId, to: Option<&UserId>) -> Command {
    Command::CallInvite(InviteCall { room_id, media: CallMedia::Video, to: to.cloned() })
}

fn accept(call_id: CallId) -> Command {
    Command::CallAccept(CallRef { call_id })
}

fn reject(call_id: CallId) -> Command {
    Command::CallReject(CallRef { call_id })
}

fn end(call_id: CallId) -> Command {
    Command::CallEnd(CallRef { call_id })
}

fn rejoin(call_id: CallId) -> Command {
    Command::CallRejoin(CallRef { call_id })
}

fn signal(call_id: CallId, to: &UserId, payload: serde_json::Value) -> Command {
    Command::CallSignal(SignalCall { call_id, to: to.clone(), payload })
}

fn placed(reply: Reply) -> CallPlaced {
    match reply {
        Reply::CallPlaced(placed) => *placed,
        other => panic!("expected the call placed, got {other:?}"),
    }
}

/// The next call event, passing over the room's messages.
async fn call_event(client: &mut Client) -> Event {
    loop {
        match client.event().await {
            Event::MessageNew(_) => continue,
            other => return other,
        }
    }
}

/// [`call_event`] for what comes after the ring time or the grace.
async fn long_call_event(client: &mut Client) -> Event {
    loop {
        match client.event_within(Duration::from_secs(60)).await {
            Event::MessageNew(_) => continue,
            other => return other,
        }
    }
}

fn ended(ev: Event) -> (CallId, EndReason, Option<u64>) {
    match ev {
        Event::CallEnded(e) => (e.call_id, e.reason, e.duration_s),
        other => panic!("expected call:ended, got {other:?}"),
    }
}

/// A direct room of two users, each with one session.
async fn pair(engine: &Engine, a: &str, b: &str) -> (Client, Client, RoomId) {
    let mut x = connect(engine, a).await;
    let mut y = connect(engine, b).await;
    let room = room_of(x.ok(create(RoomKind::Direct, None, &[y.id()])).await);
    y.drain().await;
    (x, y, room.id)
}

/// The call lines of a room's history.
async fn call_lines(engine: &Engine, user: &UserId, room: RoomId) -> Vec<(UserId, String, CallSummary)> {
    let page =
        engine.history(user, room, HistoryQuery { limit: 100, ..HistoryQuery::default() }).await.expect("history");
    page.messages.into_iter().filter_map(|m| Some((m.sender_id, m.body, *m.call?))).collect()
}

#[tokio::test(start_paused = true)]
async fn the_first_accept_wins_and_signals_go_to_its_session_alone() {
    let engine = engine().await;
    let (mut ada, mut bob, room) = pair(&engine, "ada", "bob").await;
    let mut bob2 = connect(&engine, "bob").await;
    ada.join(room).await;

    let call = placed(ada.ok(invite(room, None)).await);
    assert!(!call.glare);
    for b in [&mut bob, &mut bob2] {
        match call_event(b).await {
            Event::CallIncoming(e) => {
                assert_eq!((e.call_id, e.room_id, e.media), (call.call_id, room, CallMedia::Video));
                assert_eq!(e.from.id, uid("ada"), "from is the caller as a User");
            }
            other => panic!("expected call:incoming, got {other:?}"),
        }
    }
    ada.quiet().await;
    assert_eq!(ada.err(signal(call.call_id, &uid("bob"), serde_json::json!({"sdp": "x"}))).await, "conflict");

    bob2.ok(accept(call.call_id)).await;
    let chosen = bob2.session.id();
    for c in [&mut ada, &mut bob, &mut bob2] {
        match call_event(c).await {
            Event::CallAccepted(e) => {
                assert_eq!((e.call_id, e.user_id.clone(), e.session_id), (call.call_id, uid("bob"), chosen));
            }
            other => panic!("expected call:accepted, got {other:?}"),
        }
    }
    assert_eq!(ended(call_event(&mut bob).await), (call.call_id, EndReason::AnsweredElsewhere, None));
    assert_eq!(bob.err(accept(call.call_id)).await, "conflict", "the second accept loses");
    bob2.quiet().await;

    let offer = serde_json::json!({"type": "offer", "sdp": "v=0"});
    ada.ok(signal(call.call_id, &uid("bob"), offer.clone())).await;
    match call_event(&mut bob2).await {
        Event::CallSignal(e) => assert_eq!((e.call_id, e.from, e.payload), (call.call_id, uid("ada"), offer)),
        other => panic!("expected call:signal, got {other:?}"),
    }
    bob.quiet().await;
    bob2.ok(signal(call.call_id, &uid("ada"), serde_json::json!({"candidate": "c"}))).await;
    assert!(matches!(call_event(&mut ada).await, Event::CallSignal(e) if e.from == uid("bob")));
    assert_eq!(bob.err(signal(call.call_id, &uid("ada"), serde_json::json!({}))).await, "forbidden");
    assert_eq!(ada.err(signal(call.call_id, &uid("ada"), serde_json::json!({}))).await, "invalid");
    let big = serde_json::Value::String("x".repeat(20_000));
    assert_eq!(ada.err(signal(call.call_id, &uid("bob"), big)).await, "too_large");
    let mut cat = connect(&engine, "cat").await;
    assert_eq!(cat.err(end(call.call_id)).await, "not_found", "outsiders do not see the call");

    ada.ok(end(call.call_id)).await;
    // The line is in the history before anyone hears that the call ended.
    match ada.event().await {
        Event::MessageNew(e) => assert_eq!(e.message.call.as_ref().map(|c| c.call_id), Some(call.call_id)),
        other => panic!("expected the call's line as message:new, got {other:?}"),
    }
    for c in [&mut ada, &mut bob, &mut bob2] {
        let (id, reason, duration) = ended(call_event(c).await);
        assert_eq!((id, reason), (call.call_id, EndReason::Hangup));
        assert!(duration.is_some(), "an answered call ends with its duration");
    }
    ada.ok(end(call.call_id)).await;
    let lines = call_lines(&engine, &uid("ada"), room).await;
    assert_eq!(lines.len(), 1, "one line per call: {lines:?}");
    let (sender, body, summary) = &lines[0];
    assert_eq!((sender.as_str(), body.as_str()), ("ada", ""));
    assert_eq!((summary.call_id, summary.outcome), (call.call_id, CallOutcome::Ended));
    ada.quiet().await;
}

#[tokio::test(start_paused = true)]
async fn rejected_timed_out_and_abandoned_calls_leave_their_lines() {
    let engine = engine().await;
    let (mut ada, mut bob, room) = pair(&engine, "ada", "bob").await;

    let first = placed(ada.ok(invite(room, None)).await).call_id;
    call_event(&mut bob).await;
    assert_eq!(ada.err(reject(first)).await, "invalid", "the caller ends a call, it does not decline it");
    bob.ok(reject(first)).await;
    assert!(matches!(call_event(&mut ada).await, Event::CallRejected(e) if e.user_id == uid("bob")));
    assert_eq!(ended(call_event(&mut ada).await), (first, EndReason::Rejected, None));

    let started = Instant::now();
    let second = placed(ada.ok(invite(room, None)).await).call_id;
    bob.drain().await;
    assert_eq!(ended(long_call_event(&mut ada).await), (second, EndReason::Timeout, None));
    let rang = started.elapsed();
    assert!(rang >= Duration::from_secs(30) && rang < Duration::from_secs(31), "ringing lasts 30 s, not {rang:?}");
    assert_eq!(ended(call_event(&mut bob).await), (second, EndReason::Timeout, None));

    let third = placed(ada.ok(invite(room, None)).await).call_id;
    bob.drain().await;
    ada.ok(end(third)).await;
    assert_eq!(ended(call_event(&mut bob).await), (third, EndReason::Hangup, None));

    let lines = call_lines(&engine, &uid("bob"), room).await;
    let outcomes: Vec<_> = lines.iter().map(|(_, _, s)| (s.call_id, s.outcome, s.duration_s)).collect();
    assert_eq!(
        outcomes,
        [(first, CallOutcome::Rejected, None), (second, CallOutcome::Missed, None), (third, CallOutcome::Missed, None)]
    );
}

#[tokio::test(start_paused = true)]
async fn a_callee_in_a_call_is_busy_and_a_caller_in_one_cannot_call() {
    let engine = engine().await;
    let (mut ada, mut bob, room) = pair(&engine, "ada", "bob").await;
    let mut cat = connect(&engine, "cat").await;
    let cat_bob = room_of(cat.ok(create(RoomKind::Direct, None, &[bob.id()])).await).id;
    let cat_ada = room_of(cat.ok(create(RoomKind::Direct, None, &[ada.id()])).await).id;
    ada.drain().await;
    bob.drain().await;

    let call = placed(ada.ok(invite(room, None)).await).call_id;
    call_event(&mut bob).await;
    bob.ok(accept(call)).await;
    ada.drain().await;
    bob.drain().await;

    let busy = placed(cat.ok(invite(cat_bob, None)).await).call_id;
    assert_eq!(ended(call_event(&mut cat).await), (busy, EndReason::Busy, None));
    bob.quiet().await;
    let _ = placed(cat.ok(invite(cat_ada, None)).await);
    assert!(matches!(ended(call_event(&mut cat).await), (_, EndReason::Busy, None)), "the caller is busy too");
    assert_eq!(ada.err(invite(cat_ada, None)).await, "conflict", "someone in a call cannot place another");
    let lines = call_lines(&engine, &uid("cat"), cat_bob).await;
    assert_eq!(lines.len(), 1);
    assert_eq!((lines[0].0.as_str(), lines[0].2.outcome), ("cat", CallOutcome::Busy));
}

#[tokio::test(start_paused = true)]
async fn two_users_calling_each_other_get_one_call() {
    let engine = engine().await;
    let (mut ada, mut bob, room) = pair(&engine, "ada", "bob").await;
    let older = placed(ada.ok(invite(room, None)).await).call_id;
    let glare = placed(bob.ok(invite(room, None)).await);
    assert_eq!((glare.call_id, glare.glare), (older, true), "bob's invite answers ada's");
    match call_event(&mut ada).await {
        Event::CallAccepted(e) => assert_eq!((e.call_id, e.session_id), (older, bob.session.id())),
        other => panic!("expected call:accepted, got {other:?}"),
    }
    assert!(matches!(call_event(&mut bob).await, Event::CallIncoming(e) if e.call_id == older));
    assert!(matches!(call_event(&mut bob).await, Event::CallAccepted(e) if e.call_id == older));
    ada.ok(signal(older, &uid("bob"), serde_json::json!({"type": "offer"}))).await;
    assert!(matches!(call_event(&mut bob).await, Event::CallSignal(_)), "the two talk in the one call");
}

#[tokio::test(start_paused = true)]
async fn a_participant_may_come_back_within_the_grace_and_not_after() {
    let engine = engine().await;
    let (mut ada, mut bob, room) = pair(&engine, "ada", "bob").await;
    let call = placed(ada.ok(invite(room, None)).await).call_id;
    call_event(&mut bob).await;
    bob.ok(accept(call)).await;
    ada.drain().await;
    bob.drain().await;

    drop(ada);
    tokio::time::sleep(Duration::from_secs(5)).await;
    let mut back = connect(&engine, "ada").await;
    let rejoined = match back.ok(rejoin(call)).await {
        Reply::CallRejoined(r) => *r,
        other => panic!("expected the rejoined call, got {other:?}"),
    };
    assert_eq!(
        rejoined,
        CallRejoined {
            call_id: call,
            room_id: room,
            media: CallMedia::Video,
            state: crate::call::CallState::Accepted,
            peer: uid("bob"),
            caller: true,
            ice_servers: Vec::new(),
        }
    );
    match call_event(&mut bob).await {
        Event::CallRejoined(e) => assert_eq!((e.user_id, e.session_id), (uid("ada"), back.session.id())),
        other => panic!("expected call:rejoined, got {other:?}"),
    }
    tokio::time::sleep(Duration::from_secs(20)).await;
    bob.quiet().await;
    back.ok(signal(call, &uid("bob"), serde_json::json!({"type": "offer"}))).await;
    assert!(matches!(call_event(&mut bob).await, Event::CallSignal(_)), "signals reach the new session's peer");

    drop(back);
    let started = Instant::now();
    assert_eq!(ended(long_call_event(&mut bob).await).1, EndReason::Disconnected);
    assert!(started.elapsed() >= Duration::from_secs(10), "after the grace, not before");
    let mut late = connect(&engine, "ada").await;
    assert_eq!(late.err(rejoin(call)).await, "conflict", "an ended call cannot be rejoined");
    let lines = call_lines(&engine, &uid("bob"), room).await;
    assert_eq!(lines.iter().map(|(_, _, s)| s.outcome).collect::<Vec<_>>(), [CallOutcome::Ended]);
}

#[tokio::test(start_paused = true)]
async fn who_may_call_whom() {
    let engine = engine().await;
    let mut ada = connect(&engine, "ada").await;
    let bob = connect(&engine, "bob").await;
    let cat = connect(&engine, "cat").await;
    let group = ada.group(Visibility::Private, &[bob.id(), cat.id()]).await;
    assert_eq!(ada.err(invite(group.id, None)).await, "invalid", "a room of three needs `to`");
    assert_eq!(ada.err(invite(group.id, Some(&uid("ada")))).await, "invalid");
    assert_eq!(ada.err(invite(group.id, Some(&uid("zed")))).await, "invalid", "`to` must be a member");
    let call = placed(ada.ok(invite(group.id, Some(&bob.id()))).await).call_id;
    ada.ok(end(call)).await;

    let mut dan = connect(&engine, "dan").await;
    assert_eq!(dan.err(invite(group.id, Some(&bob.id()))).await, "not_member");
    let alone = dan.group(Visibility::Private, &[]).await;
    assert_eq!(dan.err(invite(alone.id, None)).await, "invalid", "nobody to call");

    let mut visitor =
        connect_as(&engine, Identity { roles: Some(vec!["visitor".into()]), ..Identity::new(uid("visitor:v1")) }).await;
    assert_eq!(visitor.err(invite(alone.id, None)).await, "forbidden", "visitors may not call");
    assert_eq!(visitor.err(accept(call)).await, "forbidden");
}

/// A call whose process died (its sides' leases ran out in the store, and
/// nobody is left to time anything) is ended by the sweep of another
/// process, which also writes its line; so is one that rang past its time.
/// On the real clock: deadlines are wall-clock times in the store.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sweep_ends_the_calls_a_dead_process_left() {
    use crate::call::{Call, CallParty, CallState};
    use crate::id::SessionId;
    let mut config = EngineConfig::default();
    config.calls.sweep_interval = Duration::from_millis(50);
    let store = Arc::new(MemoryStore::new());
    let engine = Engine::builder(store.clone()).config(config).start().await.expect("the engine starts");
    let (mut ada, mut bob, room) = pair(&engine, "ada", "bob").await;
    let now = Timestamp::now();
    let gone = Timestamp::from_millis(now.as_millis() - 1_000);
    let party = |user: &str, until| CallParty { user_id: uid(user), session: Some(SessionId::generate()), until };
    let answered = Call {
        id: CallId::generate(),
        room_id: room,
        media: CallMedia::Audio,
        caller: party("ada", Some(gone)),
        callee: party("bob", Some(now.plus(Duration::from_secs(60)))),
        state: CallState::Accepted,
        created_at: Timestamp::from_millis(now.as_millis() - 5_000),
        ring_until: Timestamp::from_millis(now.as_millis() - 4_000),
        accepted_at: Some(Timestamp::from_millis(now.as_millis() - 4_000)),
        ended_at: None,
        end_reason: None,
        logged: false,
        version: 0,
    };
    assert_eq!(store.start_call(&answered).await.expect("stored"), crate::call::CallStart::Started);
    for client in [&mut ada, &mut bob] {
        match long_call_event(client).await {
            Event::CallEnded(e) => {
                assert_eq!((e.call_id, e.reason), (answered.id, EndReason::Disconnected));
                assert!(e.duration_s.is_some_and(|d| d >= 3), "{e:?}");
            }
            other => panic!("expected call:ended, got {other:?}"),
        }
    }
    let rang_out = Call {
        id: CallId::generate(),
        state: CallState::Ringing,
        caller: party("bob", Some(now.plus(Duration::from_secs(60)))),
        callee: CallParty { user_id: uid("ada"), session: None, until: None },
        accepted_at: None,
        ..answered.clone()
    };
    store.start_call(&rang_out).await.expect("stored");
    match long_call_event(&mut bob).await {
        Event::CallEnded(e) => assert_eq!((e.call_id, e.reason), (rang_out.id, EndReason::Timeout)),
        other => panic!("expected call:ended, got {other:?}"),
    }
    let lines = call_lines(&engine, &uid("ada"), room).await;
    let outcomes: Vec<_> = lines.iter().map(|(sender, _, s)| (sender.as_str(), s.outcome)).collect();
    assert_eq!(outcomes, [("ada", CallOutcome::Ended), ("bob", CallOutcome::Missed)]);
    engine.shutdown().await;
}
