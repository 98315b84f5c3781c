//! The outbound catch-up: what the store holds and the outbox does not
//! reflect is enqueued.
//!
//! The enqueuer misses a change when a process dies between a commit and
//! its job, or when `on_event` drops an event from a full channel. Rather
//! than make those impossible, the catch-up compares the store with each
//! room's cursors (`posted` for messages, `changes` for edits and deletes):
//! in the lease holder when it takes the lease and then every
//! `catch_up_every`, and in any process at once after it dropped an event.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use chat_core::{HistoryQuery, NewJob, Room, RoomKind, Timestamp};

use super::enqueue::{archive_job, job_for_room};
use super::{JOB_DELETE, JOB_EDIT, JOB_POST, from_discord, mirrored_state, stored_number};
use crate::bridge::{LINK_ARCHIVED, LINK_CHANGES, LINK_MESSAGE, LINK_MIRRORED, LINK_POSTED, NAME, Shared};
use crate::error::Result;

/// Support rooms a catch-up looks at, newest activity first: a message moves
/// its room to the front, so only edits in rooms quiet for longer are missed.
const CATCH_UP_ROOMS: u32 = 1000;
/// How far before its cursor a catch-up looks for changes: edits are stamped
/// by the clock of the process that made them, and commit a little later.
const CHANGE_SLACK_MS: i64 = 60_000;

/// Runs the outbound catch-up while this process holds the lease (when it
/// takes it, then every `catch_up_every`), and in any process at once after
/// it dropped an event.
pub(in crate::bridge) async fn catch_up_loop(shared: Arc<Shared>) {
    loop {
        let _ = tokio::time::timeout(shared.config.catch_up_every, shared.catch_up.notified()).await;
        let overflowed = shared.overflowed.swap(false, Ordering::SeqCst);
        if !overflowed && !shared.state().active {
            continue;
        }
        if let Err(err) = catch_up_outbound(&shared).await {
            tracing::warn!(error = %err, "discord bridge: cannot catch up from the store; trying again");
            shared.record_error(&err);
            if overflowed {
                shared.overflowed.store(true, Ordering::SeqCst);
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
            shared.catch_up.notify_one();
        }
    }
}

/// Enqueues what the store holds and the outbox does not reflect: for each
/// support room and mapped group room, a post job for its newest message
/// when messages came after its `posted` cursor (that job posts every one
/// missing, in order), and an edit or delete job for each posted message
/// whose change Discord does not show. Jobs already pending are not
/// enqueued twice, and a job that finds nothing to do sends nothing, so a
/// catch-up may repeat what the enqueuer did.
async fn catch_up_outbound(shared: &Shared) -> Result<()> {
    let store = shared.host()?.store();
    let outbox = shared.outbox()?;
    let mut rooms = store.support_rooms(CATCH_UP_ROOMS).await?;
    for (room, _) in &shared.config.channels {
        if let Some(room) = store.room(*room).await?
            && room.kind == RoomKind::Group
        {
            rooms.push(room);
        }
    }
    let mut jobs = Vec::new();
    for room in rooms {
        let key = room.id.to_string();
        if room.closed && outbox.remote_of(NAME, LINK_ARCHIVED, &key).await?.is_some() {
            continue;
        }
        let posted = stored_number(outbox, LINK_POSTED, &key).await?.unwrap_or(0);
        if room.last_seq > posted {
            let newest = HistoryQuery { after_seq: Some(room.last_seq - 1), before_seq: None, limit: 1 };
            if let Some(message) = store.history(room.id, newest).await?.messages.first() {
                jobs.extend(job_for_room(&room, shared, JOB_POST, message)?);
            }
        }
        jobs.extend(missed_changes(shared, &room).await?);
        if room.closed && room.kind == RoomKind::Support {
            jobs.push(archive_job(room.id)?);
        }
    }
    if !jobs.is_empty() {
        outbox.enqueue_jobs(jobs).await?;
        shared.wake.notify_one();
    }
    Ok(())
}

/// The edit and delete jobs of a room's posted messages whose last change
/// Discord does not show, and moves the room's change cursor.
async fn missed_changes(shared: &Shared, room: &Room) -> Result<Vec<NewJob>> {
    let store = shared.host()?.store();
    let outbox = shared.outbox()?;
    let key = room.id.to_string();
    let cursor = stored_number(outbox, LINK_CHANGES, &key).await?;
    let since = cursor.map_or(0, |c| i64::try_from(c).unwrap_or(i64::MAX).saturating_sub(CHANGE_SLACK_MS).max(0));
    let changed = store.changed_messages(room.id, Timestamp::from_millis(since), 1000).await?;
    let mut jobs = Vec::new();
    for message in &changed {
        // What agents change comes from Discord, which shows it already.
        if from_discord(message) {
            continue;
        }
        let id = message.id.to_string();
        if outbox.remote_of(NAME, LINK_MESSAGE, &id).await?.is_none() {
            // Not posted yet: its post sends the message as it is then.
            continue;
        }
        if outbox.remote_of(NAME, LINK_MIRRORED, &id).await?.as_deref() == Some(mirrored_state(message).as_str()) {
            continue;
        }
        let kind = if message.deleted { JOB_DELETE } else { JOB_EDIT };
        jobs.extend(job_for_room(room, shared, kind, message)?);
    }
    if let Some(newest) = changed.iter().filter_map(|m| m.edited_at).max() {
        let newest = u64::try_from(newest.as_millis()).unwrap_or(0);
        if cursor.is_none_or(|c| c < newest) {
            outbox.set_link(NAME, LINK_CHANGES, &key, &newest.to_string()).await?;
        }
    }
    Ok(jobs)
}
