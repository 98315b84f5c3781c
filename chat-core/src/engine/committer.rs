//! Group commit: one task takes every pending send, stores them with one
//! `append_messages` call (one durable commit), then fans the new messages out
//! and answers each sender.
//!
//! While a commit is in flight, new sends queue up and form the next batch, so
//! the batch size follows the load by itself: one message per commit when idle,
//! hundreds under load, with no timer adding latency. Because a single task
//! commits and publishes, events leave in seq order for every room.

use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};

use super::Inner;
use crate::bridge::BridgeEvent;
use crate::broker::Audience;
use crate::error::{Error, Result};
use crate::event::{Event, MessageEvent};
use crate::id::SessionId;
use crate::message::{Appended, NewMessage};

/// One send waiting for its commit.
pub(crate) struct CommitRequest {
    pub(crate) message: NewMessage,
    /// The sending session, which gets the message in its reply instead of an event.
    pub(crate) session: Option<SessionId>,
    /// The bridge that posted it, if one did.
    pub(crate) bridge: Option<Arc<str>>,
    pub(crate) reply: oneshot::Sender<Result<Appended>>,
}

#[expect(
    clippy::large_enum_variant,
    reason = "jobs live in the commit queue's slots; boxing the request would allocate once more per send"
)]
pub(crate) enum CommitJob {
    Append(CommitRequest),
    /// Answered once everything queued before it is committed.
    Flush(oneshot::Sender<()>),
}

/// Copies an error for each request of a failed batch, keeping its kind.
fn share_error(err: &Error) -> Error {
    match err {
        Error::Unavailable(source) => Error::unavailable(source.to_string()),
        Error::Internal(source) => Error::internal(source.to_string()),
        Error::NotFound(what) => Error::NotFound(what),
        Error::NotMember => Error::NotMember,
        other => Error::Conflict(other.to_string()),
    }
}

/// The largest batch the committer takes: the configured maximum, kept to at
/// most half of a session's outbound queue.
pub(crate) fn batch_limit(config: &crate::config::EngineConfig) -> usize {
    config.max_commit_batch.min(config.limits.outbound_queue / 2).max(1)
}

pub(crate) async fn run(inner: Arc<Inner>, mut rx: mpsc::Receiver<CommitJob>) {
    // One batch can put a message of one room into every listener's queue at
    // once, so a batch larger than half a session's queue could close a
    // client that reads as fast as it can.
    let max = batch_limit(&inner.config);
    let window = inner.config.commit_window;
    let mut jobs = Vec::with_capacity(max);
    while rx.recv_many(&mut jobs, max).await > 0 {
        if !window.is_zero() && jobs.len() < max {
            // Gather what arrives within the window into this batch too.
            let deadline = tokio::time::Instant::now() + window;
            while jobs.len() < max {
                let room = max - jobs.len();
                match tokio::time::timeout_at(deadline, rx.recv_many(&mut jobs, room)).await {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {}
                }
            }
        }
        let mut messages = Vec::with_capacity(jobs.len());
        let mut waiting = Vec::with_capacity(jobs.len());
        let mut flushes = Vec::new();
        for job in jobs.drain(..) {
            match job {
                CommitJob::Append(req) => {
                    messages.push(req.message);
                    waiting.push((req.session, req.bridge, req.reply));
                }
                CommitJob::Flush(done) => flushes.push(done),
            }
        }
        if !messages.is_empty() {
            let count = messages.len();
            let started = std::time::Instant::now();
            let result = inner.store.append_messages(messages).await;
            inner.metrics.commit(count, started.elapsed(), result.is_ok());
            match result {
                Ok(answers) if answers.len() == count => {
                    for ((session, bridge, reply), mut answer) in waiting.into_iter().zip(answers) {
                        if let Ok(appended) = &mut answer {
                            inner.sign(&mut appended.message);
                        }
                        if let Ok(appended) = &answer
                            && appended.created
                        {
                            after_commit(&inner, appended, session, bridge.as_deref()).await;
                        }
                        // The sender may have gone; the message is stored either way.
                        let _ = reply.send(answer);
                    }
                }
                Ok(appended) => {
                    tracing::error!(sent = count, got = appended.len(), "store answered a batch with the wrong count");
                    for (_, _, reply) in waiting {
                        let _ = reply.send(Err(Error::internal("store answered a batch with the wrong count")));
                    }
                }
                Err(err) => {
                    tracing::warn!(error = %err, source = ?std::error::Error::source(&err), batch = count, "commit failed");
                    for (_, _, reply) in waiting {
                        let _ = reply.send(Err(share_error(&err)));
                    }
                }
            }
        }
        for done in flushes {
            let _ = done.send(());
        }
    }
}

async fn after_commit(inner: &Inner, appended: &Appended, session: Option<SessionId>, bridge: Option<&str>) {
    let message = &appended.message;
    let room_id = message.room_id;
    if inner.typing.stop(room_id, &message.sender_id) {
        inner.publish_typing(room_id, message.sender_id.clone(), false).await;
    }
    let audience = Audience::Room { room_id, except_session: session, except_user: None };
    inner.publish(audience, Event::MessageNew(MessageEvent { message: message.clone() })).await;
    inner.notify_bridges(BridgeEvent::MessageCreated(message.clone()), bridge);
    if message.seq == 1 {
        inner.announce_queued(room_id).await;
    }
}
