//! The enqueuer: engine events become outbox jobs.
//!
//! `Bridge::on_event` hands events to a bounded channel and never waits;
//! this task, in every process, reads them in the order they came and
//! writes a job per change into its room's queue, waiting while the store
//! is down. A job carries ids only: what a message says is read when its
//! job runs.

use std::sync::Arc;
use std::time::Duration;

use chat_core::{BridgeEvent, NewJob, Room, RoomId, RoomKind, Timestamp};
use tokio::sync::mpsc;

use super::{ArchiveJob, JOB_ARCHIVE, JOB_DELETE, JOB_EDIT, JOB_POST, PostJob};
use crate::bridge::{NAME, Shared};
use crate::error::{Error, Result};

/// Writes engine events into the outbox, in the order they came.
pub(in crate::bridge) async fn enqueue(shared: Arc<Shared>, mut events: mpsc::Receiver<BridgeEvent>) {
    let mut batch = Vec::new();
    while events.recv_many(&mut batch, 256).await > 0 {
        let mut jobs = Vec::new();
        for event in batch.drain(..) {
            let (kind, message) = match event {
                BridgeEvent::MessageCreated(message) => (JOB_POST, message),
                BridgeEvent::MessageUpdated(message) => (JOB_EDIT, message),
                BridgeEvent::MessageDeleted(message) => (JOB_DELETE, message),
                BridgeEvent::RoomUpdated(room) => {
                    match archive_job(room.id) {
                        Ok(job) => jobs.push(job),
                        Err(err) => shared.record_error(&err),
                    }
                    continue;
                }
                _ => continue,
            };
            match job_for(&shared, kind, &message).await {
                Ok(Some(job)) => jobs.push(job),
                Ok(None) => {}
                Err(err) => {
                    tracing::warn!(error = %err, "discord bridge: cannot read the room of a message");
                    shared.record_error(&err);
                }
            }
        }
        if jobs.is_empty() {
            continue;
        }
        // The store may be down for a while; the jobs wait here (the channel
        // behind pushes back on `on_event`, which then logs what it drops).
        let mut delay = Duration::from_millis(100);
        loop {
            let result = async { Ok::<_, Error>(shared.outbox()?.enqueue_jobs(jobs.clone()).await?) }.await;
            match result {
                Ok(_) => break,
                Err(err) => {
                    tracing::warn!(error = %err, "discord bridge: cannot write to the outbox; retrying");
                    shared.record_error(&err);
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(10));
                }
            }
        }
        shared.wake.notify_one();
    }
}

/// The job mirroring a change of a support room's message. Jobs of a room
/// share its queue, so an edit or a delete runs after the post it changes.
async fn job_for(shared: &Shared, kind: &str, message: &chat_core::Message) -> Result<Option<NewJob>> {
    match shared.host()?.store().room(message.room_id).await? {
        Some(room) => job_for_room(&room, shared, kind, message),
        None => Ok(None),
    }
}

/// The job of [`job_for`], the room at hand: none unless the room is a
/// support room or a mapped group room.
pub(super) fn job_for_room(
    room: &Room,
    shared: &Shared,
    kind: &str,
    message: &chat_core::Message,
) -> Result<Option<NewJob>> {
    let mapped = shared.config.channel_of(room.id).is_some();
    if room.kind != RoomKind::Support && !(mapped && room.kind == RoomKind::Group) {
        return Ok(None);
    }
    let payload = PostJob { room_id: message.room_id, message_id: message.id };
    // An edit job sends the text the message has when it runs; it is keyed by
    // the edit's time, so that an edit made while an earlier one is running
    // gets a job of its own instead of being taken for a duplicate.
    let dedupe_key = match kind {
        JOB_EDIT => format!("edit:{}:{}", message.id, message.edited_at.map_or(0, |t| t.as_millis())),
        _ => format!("{kind}:{}", message.id),
    };
    Ok(Some(NewJob {
        bridge: NAME.into(),
        queue: message.room_id.to_string(),
        dedupe_key,
        kind: kind.into(),
        payload: serde_json::to_string(&payload).map_err(|e| Error::Unexpected(e.to_string()))?,
        created_at: Timestamp::now(),
    }))
}

/// The job archiving a closed room's thread. It shares the room's queue, so
/// it runs after the room's last messages reached the thread; the engine
/// announces a close once, so it is enqueued once.
pub(super) fn archive_job(room: RoomId) -> Result<NewJob> {
    Ok(NewJob {
        bridge: NAME.into(),
        queue: room.to_string(),
        dedupe_key: format!("{JOB_ARCHIVE}:{room}"),
        kind: JOB_ARCHIVE.into(),
        payload: serde_json::to_string(&ArchiveJob { room_id: room }).map_err(|e| Error::Unexpected(e.to_string()))?,
        created_at: Timestamp::now(),
    })
}
