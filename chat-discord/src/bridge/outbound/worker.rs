//! The worker: runs the outbox's due jobs against Discord, in the lease
//! holder only.
//!
//! The jobs of a room run one at a time, in order; every id Discord hands
//! back is stored before its job counts as done, and a job whose answer may
//! have been lost looks in Discord before it posts again, so that a retry
//! makes no duplicate. Failures are retried with backoff, 429s when Discord
//! says, and a post that fails for good lets its room's later messages go
//! on without it.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use chat_core::{HistoryQuery, Job, RoomId, Timestamp};
use serde_json::json;
use serenity::all::{MessageId as DiscordMessageId, WebhookId};
use serenity::http::{LightMethod, Route};

use super::render::{
    create_thread, execute_webhook, files_of, find_thread, find_webhook_post, hook_target, render, thread_title,
    webhook,
};
use super::{
    ArchiveJob, JOB_ARCHIVE, JOB_DELETE, JOB_EDIT, JOB_POST, PostJob, from_discord, mirrored_state, stored_number,
};
use crate::bridge::{
    LINK_ARCHIVED, LINK_FILE_LINES, LINK_MESSAGE, LINK_MIRRORED, LINK_POSTED, LINK_THREAD, NAME, Shared, parse_channel,
    parse_snowflake,
};
use crate::error::{Error, Result};

/// Runs due jobs until `stop` is set (the lease was lost, the bridge stops),
/// never in the middle of a job.
pub(in crate::bridge) async fn work(shared: Arc<Shared>, stop: Arc<AtomicBool>) {
    // Set by a global 429: no call at all before then.
    let mut paused_until: Option<tokio::time::Instant> = None;
    // The first job of each queue run here may have been running in a
    // process that died (or lost the lease) before it heard Discord's
    // answer, so it looks in Discord before posting, as a retry does.
    let mut seen_queues: HashSet<String> = HashSet::new();
    let started = Timestamp::now();
    loop {
        if stop.load(Ordering::SeqCst) {
            return;
        }
        if let Some(until) = paused_until.take() {
            tokio::time::sleep_until(until).await;
        }
        let due = async { Ok::<_, Error>(shared.outbox()?.due_jobs(NAME, Timestamp::now(), 32).await?) }.await;
        let jobs = match due {
            Ok(jobs) => jobs,
            Err(err) => {
                shared.record_error(&err);
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        if jobs.is_empty() {
            shared.refresh_counts().await;
            // New jobs wake the worker; retries come due by themselves.
            let _ = tokio::time::timeout(Duration::from_millis(250), shared.wake.notified()).await;
            continue;
        }
        for job in jobs {
            if stop.load(Ordering::SeqCst) {
                return;
            }
            if !shared.lease.fresh() {
                // The leader renews it or stands down; wait for either.
                tokio::time::sleep(Duration::from_millis(100)).await;
                break;
            }
            let retried = job.attempts > 0 || (job.created_at < started && seen_queues.insert(job.queue.clone()));
            let outcome = run_job(&shared, &job, retried).await;
            if let Err(err) = settle(&shared, &job, outcome, &mut paused_until).await {
                tracing::warn!(error = %err, job = job.id, "discord bridge: cannot record a job's outcome");
                shared.record_error(&err);
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            if paused_until.is_some() {
                break;
            }
        }
        shared.refresh_counts().await;
    }
}

/// Records what became of a job: done, to retry, or failed for good.
async fn settle(
    shared: &Shared,
    job: &Job,
    outcome: Result<()>,
    paused_until: &mut Option<tokio::time::Instant>,
) -> Result<()> {
    let outbox = shared.outbox()?;
    let err = match outcome {
        Ok(()) => {
            outbox.finish_job(NAME, job.id).await?;
            return Ok(());
        }
        Err(err) => err,
    };
    tracing::warn!(error = %err, job = job.id, attempts = job.attempts + 1, "discord bridge: job failed");
    shared.record_error(&err);
    let wait = match &err {
        Error::RateLimited { retry_after, global } => {
            if *global {
                *paused_until = Some(tokio::time::Instant::now() + *retry_after);
            }
            // A 429 says when to come back; it is not a failure of the job.
            *retry_after
        }
        err if err.is_transient() && job.attempts + 1 < shared.config.max_attempts => {
            shared.config.backoff(job.attempts)
        }
        _ => {
            outbox.fail_job(NAME, job.id, &err.to_string()).await?;
            if job.kind == JOB_POST {
                give_up_post(shared, &payload(job)?).await?;
            }
            return Ok(());
        }
    };
    let wait_ms = i64::try_from(wait.as_millis()).unwrap_or(i64::MAX);
    let run_at = Timestamp::from_millis(Timestamp::now().as_millis().saturating_add(wait_ms));
    outbox.retry_job_at(NAME, job.id, run_at, &err.to_string()).await?;
    Ok(())
}

async fn run_job(shared: &Shared, job: &Job, retried: bool) -> Result<()> {
    match job.kind.as_str() {
        JOB_POST => post_message(shared, &payload(job)?, retried).await,
        JOB_EDIT => change_message(shared, &payload(job)?, Change::Edit).await,
        JOB_DELETE => change_message(shared, &payload(job)?, Change::Delete).await,
        JOB_ARCHIVE => {
            let archive: ArchiveJob =
                serde_json::from_str(&job.payload).map_err(|e| Error::Unexpected(format!("bad job payload: {e}")))?;
            archive_thread(shared, archive.room_id).await
        }
        other => Err(Error::Unexpected(format!("unknown job kind {other:?}"))),
    }
}

/// Archives a closed room's thread. A room without a thread, or a thread
/// Discord no longer has, needs nothing; archiving twice is harmless.
async fn archive_thread(shared: &Shared, room: RoomId) -> Result<()> {
    let outbox = shared.outbox()?;
    let Some(thread) = outbox.remote_of(NAME, LINK_THREAD, &room.to_string()).await? else {
        outbox.set_link(NAME, LINK_ARCHIVED, &room.to_string(), "1").await?;
        return Ok(());
    };
    let route = Route::Channel { channel_id: parse_channel(&thread)? };
    let body = json!({ "archived": true });
    match shared.rest.call(LightMethod::Patch, route, Vec::new(), Some(&body)).await {
        Ok(_) | Err(Error::Refused { status: 404, .. }) => {}
        Err(err) => return Err(err),
    }
    // A catch-up leaves the room alone from now on.
    outbox.set_link(NAME, LINK_ARCHIVED, &room.to_string(), "1").await?;
    Ok(())
}

fn payload(job: &Job) -> Result<PostJob> {
    serde_json::from_str(&job.payload).map_err(|e| Error::Unexpected(format!("bad job payload: {e}")))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Change {
    Edit,
    Delete,
}

/// Edits or deletes the Discord copy of a room message. A message that has
/// no copy (its post has not run, or failed) needs nothing: a post sends the
/// text the message has when it runs, and skips deleted messages. A copy
/// Discord no longer has (404) needs nothing either.
async fn change_message(shared: &Shared, job: &PostJob, change: Change) -> Result<()> {
    let outbox = shared.outbox()?;
    let Some(remote) = outbox.remote_of(NAME, LINK_MESSAGE, &job.message_id.to_string()).await? else {
        return Ok(());
    };
    let Some(thread) = outbox.remote_of(NAME, LINK_THREAD, &job.room_id.to_string()).await? else {
        return Ok(());
    };
    let Some(mut message) = shared.host()?.store().message(job.room_id, job.message_id).await? else {
        return Ok(());
    };
    if change == Change::Edit && message.deleted {
        return Ok(());
    }
    let remote_id = parse_snowflake(&remote)?;
    let (method, body) = match change {
        Change::Edit => {
            // The files uploaded with the post stay on it (an edit without
            // `attachments` keeps them); those posted as lines keep their lines.
            let lined = lined_files(shared, &message).await?;
            shared.host()?.sign_attachments(&mut message);
            let body = json!({ "content": render(&message, &lined), "allowed_mentions": { "parse": [] } });
            (LightMethod::Patch, Some(body))
        }
        Change::Delete => (LightMethod::Delete, None),
    };
    // A forum post's first message is the bot's own, and an agent's message
    // is theirs: both are changed through the channel (deleting another's
    // message takes Manage Messages). Visitors' later messages are the
    // webhook's, and only the webhook can edit them.
    let by_webhook = remote != thread && !message.sender_id.as_str().starts_with("discord:");
    let result = if by_webhook {
        let (hook_channel, params) = hook_target(shared, job.room_id, &thread);
        let (webhook_id, token) = webhook(shared, hook_channel).await?;
        let route = Route::WebhookMessage {
            webhook_id: WebhookId::new(webhook_id),
            token: &token,
            message_id: DiscordMessageId::new(remote_id),
        };
        shared.rest.call(method, route, params, body.as_ref()).await
    } else {
        let route =
            Route::ChannelMessage { channel_id: parse_channel(&thread)?, message_id: DiscordMessageId::new(remote_id) };
        shared.rest.call(method, route, Vec::new(), body.as_ref()).await
    };
    match result {
        Ok(_) | Err(Error::Refused { status: 404, .. }) => {}
        Err(err) => return Err(err),
    }
    // A catch-up finds that Discord shows this change already.
    outbox.set_link(NAME, LINK_MIRRORED, &job.message_id.to_string(), &mirrored_state(&message)).await?;
    Ok(())
}

/// Mirrors a room's messages into its thread up to the job's own: first
/// every earlier one after the room's `posted` cursor that is not in Discord
/// yet (its event was lost, or its job was enqueued later by another
/// process), then the job's message, and moves the cursor. `retried` says
/// an earlier attempt may have reached Discord without us hearing back, so
/// Discord is checked before posting.
async fn post_message(shared: &Shared, post: &PostJob, retried: bool) -> Result<()> {
    let outbox = shared.outbox()?;
    let store = shared.host()?.store();
    let Some(target) = store.message(post.room_id, post.message_id).await? else {
        return Ok(());
    };
    let room_key = post.room_id.to_string();
    let posted = stored_number(outbox, LINK_POSTED, &room_key).await?.unwrap_or(0);
    let mut after = posted;
    while after + 1 < target.seq {
        let query = HistoryQuery { after_seq: Some(after), before_seq: Some(target.seq), limit: 100 };
        let page = store.history(post.room_id, query).await?;
        for message in &page.messages {
            post_one(shared, message, retried).await?;
        }
        match page.messages.last() {
            Some(last) if page.has_more => after = last.seq,
            _ => break,
        }
    }
    post_one(shared, &target, retried).await?;
    if target.seq > posted {
        outbox.set_link(NAME, LINK_POSTED, &room_key, &target.seq.to_string()).await?;
    }
    Ok(())
}

/// Discord refused a post's files as too large (its limit is below the one
/// we knew): the post goes with every file as a line, and so do its edits.
async fn all_as_lines(shared: &Shared, signed: &chat_core::Message) -> Result<String> {
    let lined: Vec<String> = signed.attachments.iter().map(|f| f.id.clone()).collect();
    let ids = serde_json::to_string(&lined).map_err(|e| Error::Unexpected(e.to_string()))?;
    shared.outbox()?.set_link(NAME, LINK_FILE_LINES, &signed.id.to_string(), &ids).await?;
    Ok(render(signed, &lined))
}

/// The files of a posted message that reached Discord as lines.
async fn lined_files(shared: &Shared, message: &chat_core::Message) -> Result<Vec<String>> {
    let stored = shared.outbox()?.remote_of(NAME, LINK_FILE_LINES, &message.id.to_string()).await?;
    Ok(stored.and_then(|ids| serde_json::from_str(&ids).ok()).unwrap_or_default())
}

/// A post job failed for good: the later messages of its room go on without
/// it (retried by hand, it posts its own message, late).
async fn give_up_post(shared: &Shared, post: &PostJob) -> Result<()> {
    let outbox = shared.outbox()?;
    let Some(message) = shared.host()?.store().message(post.room_id, post.message_id).await? else {
        return Ok(());
    };
    let room_key = post.room_id.to_string();
    if stored_number(outbox, LINK_POSTED, &room_key).await?.is_none_or(|p| p < message.seq) {
        outbox.set_link(NAME, LINK_POSTED, &room_key, &message.seq.to_string()).await?;
    }
    Ok(())
}

/// Mirrors one room message into its thread, making the thread first when
/// the room has none; nothing when it is in Discord already, was deleted,
/// or came from Discord.
async fn post_one(shared: &Shared, message: &chat_core::Message, retried: bool) -> Result<()> {
    let outbox = shared.outbox()?;
    let store = shared.host()?.store();
    let message_key = message.id.to_string();
    if message.deleted || from_discord(message) {
        return Ok(());
    }
    if outbox.remote_of(NAME, LINK_MESSAGE, &message_key).await?.is_some() {
        return Ok(());
    }
    let post = PostJob { room_id: message.room_id, message_id: message.id };
    let sender = store.user(&message.sender_id).await?;
    let name = sender.map_or_else(|| message.sender_id.to_string(), |u| u.name);
    // The message's files: uploaded with it within Discord's limit, as
    // lines (with a link to ours, signed like a session's) otherwise. Which
    // went as lines is kept for its edits.
    let mut signed = message.clone();
    shared.host()?.sign_attachments(&mut signed);
    let (files, lined) = files_of(shared, &signed).await?;
    if lined.is_empty() {
        // An earlier try may have found a file too large for a guild whose
        // limit has grown since.
        if !message.attachments.is_empty() {
            outbox.delete_link(NAME, LINK_FILE_LINES, &message_key).await?;
        }
    } else {
        let ids = serde_json::to_string(&lined).map_err(|e| Error::Unexpected(e.to_string()))?;
        outbox.set_link(NAME, LINK_FILE_LINES, &message_key, &ids).await?;
    }
    let content = render(&signed, &lined);
    let room_key = post.room_id.to_string();
    match outbox.remote_of(NAME, LINK_THREAD, &room_key).await? {
        None => {
            let title = thread_title(&name, post.room_id);
            let found = if retried { find_thread(shared, &title).await? } else { None };
            let had_files = !files.is_empty();
            let thread = match found {
                Some(thread) => thread,
                None => match create_thread(shared, &title, &content, post.room_id, files).await {
                    Err(Error::Refused { status: 413, .. }) if had_files => {
                        let content = all_as_lines(shared, &signed).await?;
                        create_thread(shared, &title, &content, post.room_id, Vec::new()).await?
                    }
                    other => other?,
                },
            };
            // The room's thread is stored before anything else happens, so
            // that no later step can make a second one.
            outbox.set_link(NAME, LINK_THREAD, &room_key, &thread).await?;
            // A forum post's first message has the thread's id.
            outbox.set_link(NAME, LINK_MESSAGE, &message_key, &thread).await?;
        }
        Some(thread) => {
            let (hook_channel, params) = hook_target(shared, post.room_id, &thread);
            let (webhook_id, token) = webhook(shared, hook_channel).await?;
            let found = if retried {
                let sizes: Vec<u64> = files.iter().map(|f| f.size).collect();
                find_webhook_post(shared, &thread, webhook_id, &name, &content, &sizes).await?
            } else {
                None
            };
            let had_files = !files.is_empty();
            let posted = match found {
                Some(id) => id,
                None => match execute_webhook(shared, webhook_id, &token, params.clone(), &name, &content, files).await
                {
                    Err(Error::Refused { status: 413, .. }) if had_files => {
                        let content = all_as_lines(shared, &signed).await?;
                        execute_webhook(shared, webhook_id, &token, params, &name, &content, Vec::new()).await?
                    }
                    other => other?,
                },
            };
            outbox.set_link(NAME, LINK_MESSAGE, &message_key, &posted).await?;
        }
    }
    if message.edited_at.is_some() {
        // Posted as edited: a catch-up needs no edit job for it.
        outbox.set_link(NAME, LINK_MIRRORED, &message_key, &mirrored_state(message)).await?;
    }
    Ok(())
}
