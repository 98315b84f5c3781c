//! Outbound: engine events → outbox → Discord.
//!
//! Every change the bridge mirrors (a message of a support room or of a
//! mapped group room posted, edited or deleted; a support room closed) is a
//! job in the durable outbox that the store keeps, queued per room, so that
//! Discord is never on the path of a send and a restart loses nothing:
//!
//! - `enqueue`: the enqueuer turns the engine's events into jobs, in every
//!   process;
//! - `catch_up`: the catch-up finds in the store what the enqueuer missed;
//! - `worker`: the worker runs due jobs in the lease holder, one room at a
//!   time, in order;
//! - `render`: what a room and its messages become in Discord, and the calls
//!   that put them there.
//!
//! This module holds what they share: the kinds of job and what each
//! carries, and what tells whether Discord shows a message or a change
//! already (a room's cursors, where a message came from, the change last
//! mirrored).

mod catch_up;
mod enqueue;
mod render;
mod worker;

use chat_core::{BridgeStore, MessageId, RoomId};
use serde::{Deserialize, Serialize};

use crate::bridge::NAME;
use crate::error::Result;

pub(super) use catch_up::catch_up_loop;
pub(super) use enqueue::enqueue;
pub(super) use worker::work;

const JOB_POST: &str = "post";
const JOB_EDIT: &str = "edit";
const JOB_DELETE: &str = "delete";
const JOB_ARCHIVE: &str = "archive";

/// What a `post`, `edit` or `delete` job carries: the message, whose
/// current state is read from the store when the job runs.
#[derive(Debug, Serialize, Deserialize)]
struct PostJob {
    room_id: RoomId,
    message_id: MessageId,
}

/// What an `archive` job carries: the closed room.
#[derive(Debug, Serialize, Deserialize)]
struct ArchiveJob {
    room_id: RoomId,
}

/// A number kept in a link (a cursor), if there is one.
async fn stored_number(outbox: &dyn BridgeStore, kind: &str, local: &str) -> Result<Option<u64>> {
    Ok(outbox.remote_of(NAME, kind, local).await?.and_then(|v| v.parse::<u64>().ok()))
}

/// Whether a room message came from Discord (an agent, a channel member):
/// those are never mirrored back.
fn from_discord(message: &chat_core::Message) -> bool {
    message.sender_id.as_str().starts_with("discord:") && message.client_msg_id.starts_with("discord:")
}

/// The change of a message that Discord shows once its edit or delete ran.
fn mirrored_state(message: &chat_core::Message) -> String {
    match (message.deleted, message.edited_at) {
        (true, _) => "deleted".to_owned(),
        (false, Some(at)) => at.as_millis().to_string(),
        (false, None) => String::new(),
    }
}
