//! Numbering a batch of sends, the same for every backend: each new message
//! takes the next seq of its room; a repeat of a stored message, or of an
//! earlier one in the batch, takes none. The backend reads the counters and
//! the stored copies, and writes what the plan says.

use std::collections::HashMap;

use chat_core::{Appended, Message, NewMessage, RoomId};

use crate::codec;
use crate::error::Result;

/// What becomes of one message of a batch.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Outcome {
    /// Stored now under this seq.
    New(i64),
    /// Stored before this batch: the stored message answers.
    Stored(Message),
    /// Repeats an earlier message of this batch (its index).
    Repeat(usize),
}

/// The idempotency key of a message.
pub(crate) type Key<'a> = (RoomId, &'a str, &'a str);

/// Numbers a batch: each new message takes the next seq of its room, counting
/// from `last_seqs`; a message already stored (in `stored`) or earlier in the
/// batch takes no seq.
pub(crate) fn plan(
    batch: &[NewMessage],
    last_seqs: &HashMap<RoomId, i64>,
    stored: &HashMap<Key<'_>, Message>,
) -> Vec<Outcome> {
    let mut next = last_seqs.clone();
    let mut first: HashMap<Key<'_>, usize> = HashMap::with_capacity(batch.len());
    let mut out = Vec::with_capacity(batch.len());
    for (i, new) in batch.iter().enumerate() {
        let key = (new.room_id, new.sender_id.as_str(), new.client_msg_id.as_str());
        if let Some(message) = stored.get(&key) {
            out.push(Outcome::Stored(message.clone()));
        } else if let Some(&earlier) = first.get(&key) {
            out.push(Outcome::Repeat(earlier));
        } else {
            first.insert(key, i);
            let seq = next.entry(key.0).or_insert(0);
            *seq += 1;
            out.push(Outcome::New(*seq));
        }
    }
    out
}

/// How many messages of a plan are new.
pub(crate) fn new_count(plan: &[Outcome]) -> usize {
    plan.iter().filter(|o| matches!(o, Outcome::New(_))).count()
}

/// What a planned batch moves, sorted so that every writer touches rows in
/// the same order: each room's new last seq and newest activity time, and
/// each (room, sender)'s newest seq (their delivered and read cursors).
pub(crate) struct Moves<'a> {
    pub(crate) rooms: Vec<(RoomId, i64, i64)>,
    pub(crate) cursors: Vec<(RoomId, &'a str, i64)>,
}

pub(crate) fn moves<'a>(batch: &'a [NewMessage], plan: &[Outcome]) -> Moves<'a> {
    let mut rooms: HashMap<RoomId, (i64, i64)> = HashMap::new();
    let mut cursors: HashMap<(RoomId, &str), i64> = HashMap::new();
    for (new, outcome) in batch.iter().zip(plan) {
        let Outcome::New(seq) = *outcome else { continue };
        let at = new.created_at.as_millis();
        let entry = rooms.entry(new.room_id).or_insert((seq, at));
        *entry = (entry.0.max(seq), entry.1.max(at));
        let cursor = cursors.entry((new.room_id, new.sender_id.as_str())).or_insert(seq);
        *cursor = (*cursor).max(seq);
    }
    let mut rooms: Vec<(RoomId, i64, i64)> = rooms.into_iter().map(|(id, (seq, at))| (id, seq, at)).collect();
    rooms.sort_unstable();
    let mut cursors: Vec<(RoomId, &str, i64)> = cursors.into_iter().map(|((r, u), seq)| (r, u, seq)).collect();
    cursors.sort_unstable();
    Moves { rooms, cursors }
}

/// The answer to the batch, in its order, once the plan is written.
pub(crate) fn answers(batch: Vec<NewMessage>, plan: Vec<Outcome>) -> Result<Vec<Appended>> {
    let mut out: Vec<Appended> = Vec::with_capacity(batch.len());
    for (new, outcome) in batch.into_iter().zip(plan) {
        let appended = match outcome {
            Outcome::New(seq) => {
                Appended { message: new.into_message(codec::seq_from_db(seq, "rooms.last_seq")?), created: true }
            }
            Outcome::Stored(message) => Appended { message, created: false },
            Outcome::Repeat(earlier) => Appended { message: out[earlier].message.clone(), created: false },
        };
        out.push(appended);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use chat_core::{MessageId, Timestamp, UserId};

    use super::*;

    fn new(room: RoomId, sender: &str, client_msg_id: &str) -> NewMessage {
        NewMessage {
            id: MessageId::generate(),
            room_id: room,
            sender_id: UserId::new(sender).expect("a valid user id"),
            client_msg_id: client_msg_id.into(),
            body: "hi".into(),
            attachments: vec![],
            reply_to: None,
            created_at: Timestamp::from_millis(1),
        }
    }

    #[test]
    fn plan_numbers_each_room_from_its_counter_and_skips_repeats() {
        let (a, b) = (RoomId::generate(), RoomId::generate());
        let batch =
            [new(a, "ada", "1"), new(b, "ada", "1"), new(a, "ada", "2"), new(a, "ada", "1"), new(a, "bob", "1")];
        let last = HashMap::from([(a, 7), (b, 0)]);
        let outcomes = plan(&batch, &last, &HashMap::new());
        assert_eq!(
            outcomes,
            [Outcome::New(8), Outcome::New(1), Outcome::New(9), Outcome::Repeat(0), Outcome::New(10)],
            "the same key in another room or from another sender is a different message"
        );
    }

    #[test]
    fn plan_answers_stored_copies_without_taking_a_seq() {
        let a = RoomId::generate();
        let batch = [new(a, "ada", "old"), new(a, "ada", "new"), new(a, "ada", "old")];
        let stored_message = batch[0].clone().into_message(3);
        let stored = HashMap::from([((a, "ada", "old"), stored_message.clone())]);
        let outcomes = plan(&batch, &HashMap::from([(a, 5)]), &stored);
        assert_eq!(
            outcomes,
            [Outcome::Stored(stored_message.clone()), Outcome::New(6), Outcome::Stored(stored_message)]
        );
    }
}
