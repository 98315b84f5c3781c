//! Numbering a batch of sends, the same for every backend: a message whose
//! room is missing or closed, or whose sender is not a member, is refused
//! alone; each new message takes the next seq of its room; a repeat of a
//! stored message, or of an earlier one in the batch, takes none. The backend
//! reads the rooms, the memberships and the stored copies in the transaction
//! that writes, and writes what the plan says.

use std::collections::{HashMap, HashSet};

use chat_core::{Appended, Message, NewMessage, RoomId};

use crate::codec;
use crate::error::Result;

/// Why a message of a batch is not stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// Its room does not exist.
    MissingRoom,
    /// Its room is closed to new messages.
    Closed,
    /// Its sender is not a member of its room.
    NotMember,
    /// One of its attachments is not the sender's, was posted already (or
    /// earlier in the batch), was removed, or is unknown.
    AttachmentTaken,
}

impl Refusal {
    /// The answer the caller gets for the refused message.
    pub(crate) fn error(self) -> chat_core::Error {
        match self {
            Refusal::MissingRoom => chat_core::Error::NotFound("room"),
            Refusal::Closed => chat_core::Error::room_closed(),
            Refusal::NotMember => chat_core::Error::NotMember,
            Refusal::AttachmentTaken => chat_core::store::attachment_taken_error(),
        }
    }
}

/// What becomes of one message of a batch.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Outcome {
    /// Stored now under this seq.
    New(i64),
    /// Stored before this batch: the stored message answers.
    Stored(Message),
    /// Repeats an earlier message of this batch (its index).
    Repeat(usize),
    /// Not stored, and takes no seq.
    Refused(Refusal),
}

/// The idempotency key of a message.
pub(crate) type Key<'a> = (RoomId, &'a str, &'a str);

/// A room of a batch as its transaction found it, under its write lock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RoomState {
    /// Its newest seq.
    pub(crate) last_seq: i64,
    /// Whether it is closed to new messages.
    pub(crate) closed: bool,
}

/// What the first read of an append found: the rooms of the batch that exist
/// and the (room, sender) pairs that are memberships.
#[derive(Debug, Default)]
pub(crate) struct Found<'a> {
    pub(crate) rooms: HashMap<RoomId, RoomState>,
    pub(crate) members: HashSet<(RoomId, &'a str)>,
    /// The attachments the batch names, by id: their uploader, and whether
    /// they may still be posted (never posted, not removed). Read only for
    /// a batch that names any.
    pub(crate) files: HashMap<String, (String, bool)>,
}

/// Whether any message of a batch carries attachments: such a batch reads
/// their records and its stored copies before it plans, and binds the
/// files it posts before it commits.
pub(crate) fn has_files(batch: &[NewMessage]) -> bool {
    batch.iter().any(|m| !m.attachments.is_empty())
}

/// The ids of every attachment a batch names.
pub(crate) fn file_ids(batch: &[NewMessage]) -> Vec<&str> {
    batch.iter().flat_map(|m| m.attachments.iter().map(|a| a.id.as_str())).collect()
}

/// `(attachment id, room id, message id)` of each file a planned batch
/// posts, to bind in the transaction that stores the messages.
pub(crate) fn bindings(batch: &[NewMessage], plan: &[Outcome]) -> Vec<(String, String, String)> {
    let mut out = Vec::new();
    for (new, outcome) in batch.iter().zip(plan) {
        if matches!(outcome, Outcome::New(_)) {
            for file in &new.attachments {
                out.push((file.id.clone(), new.room_id.to_string(), new.id.to_string()));
            }
        }
    }
    out
}

/// The distinct rooms of a batch, sorted: the order in which writers lock them.
pub(crate) fn rooms_of(batch: &[NewMessage]) -> Vec<RoomId> {
    let mut rooms: Vec<RoomId> = batch.iter().map(|m| m.room_id).collect();
    rooms.sort_unstable();
    rooms.dedup();
    rooms
}

/// The distinct (room, sender) pairs of a batch, sorted: the memberships to probe.
pub(crate) fn senders_of(batch: &[NewMessage]) -> Vec<(RoomId, &str)> {
    let mut pairs: Vec<(RoomId, &str)> = batch.iter().map(|m| (m.room_id, m.sender_id.as_str())).collect();
    pairs.sort_unstable();
    pairs.dedup();
    pairs
}

/// Numbers a batch: a message to a missing or closed room, or from a sender
/// who is not a member, is refused; each other new message takes the next seq
/// of its room, counting from `found`; a message already stored (in `stored`)
/// or earlier in the batch takes no seq.
pub(crate) fn plan(batch: &[NewMessage], found: &Found<'_>, stored: &HashMap<Key<'_>, Message>) -> Vec<Outcome> {
    let mut next: HashMap<RoomId, i64> = found.rooms.iter().map(|(&id, room)| (id, room.last_seq)).collect();
    let mut first: HashMap<Key<'_>, usize> = HashMap::with_capacity(batch.len());
    let mut taken: HashSet<&str> = HashSet::new();
    let mut out = Vec::with_capacity(batch.len());
    for (i, new) in batch.iter().enumerate() {
        let key = (new.room_id, new.sender_id.as_str(), new.client_msg_id.as_str());
        let refusal = match found.rooms.get(&new.room_id) {
            None => Some(Refusal::MissingRoom),
            Some(room) if room.closed => Some(Refusal::Closed),
            Some(_) if !found.members.contains(&(key.0, key.1)) => Some(Refusal::NotMember),
            Some(_) => None,
        };
        if let Some(refusal) = refusal {
            out.push(Outcome::Refused(refusal));
        } else if let Some(message) = stored.get(&key) {
            out.push(Outcome::Stored(message.clone()));
        } else if let Some(&earlier) = first.get(&key) {
            out.push(Outcome::Repeat(earlier));
        } else if !new.attachments.iter().enumerate().all(|(n, file)| {
            let id = file.id.as_str();
            let once = !new.attachments[..n].iter().any(|earlier| earlier.id == id) && !taken.contains(id);
            once && found.files.get(id).is_some_and(|(uploader, postable)| *postable && uploader == key.1)
        }) {
            out.push(Outcome::Refused(Refusal::AttachmentTaken));
        } else {
            taken.extend(new.attachments.iter().map(|f| f.id.as_str()));
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

/// A room's moves: its new last seq, its newest activity time, and the time
/// of its first new message in this batch (its first message ever when it had
/// none: what the support queue orders by).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct RoomMove {
    pub(crate) id: RoomId,
    pub(crate) last_seq: i64,
    pub(crate) last_activity: i64,
    pub(crate) first_at: i64,
}

/// What a planned batch moves, sorted so that every writer touches rows in
/// the same order: each room's counter and times, and each (room, sender)'s
/// newest seq (their delivered and read cursors).
pub(crate) struct Moves<'a> {
    pub(crate) rooms: Vec<RoomMove>,
    pub(crate) cursors: Vec<(RoomId, &'a str, i64)>,
}

pub(crate) fn moves<'a>(batch: &'a [NewMessage], plan: &[Outcome]) -> Moves<'a> {
    let mut rooms: HashMap<RoomId, RoomMove> = HashMap::new();
    let mut cursors: HashMap<(RoomId, &str), i64> = HashMap::new();
    for (new, outcome) in batch.iter().zip(plan) {
        let Outcome::New(seq) = *outcome else { continue };
        let at = new.created_at.as_millis();
        let room = rooms.entry(new.room_id).or_insert(RoomMove {
            id: new.room_id,
            last_seq: seq,
            last_activity: at,
            first_at: at,
        });
        room.last_seq = room.last_seq.max(seq);
        room.last_activity = room.last_activity.max(at);
        let cursor = cursors.entry((new.room_id, new.sender_id.as_str())).or_insert(seq);
        *cursor = (*cursor).max(seq);
    }
    let mut rooms: Vec<RoomMove> = rooms.into_values().collect();
    rooms.sort_unstable();
    let mut cursors: Vec<(RoomId, &str, i64)> = cursors.into_iter().map(|((r, u), seq)| (r, u, seq)).collect();
    cursors.sort_unstable();
    Moves { rooms, cursors }
}

/// The answer to the batch, in its order, once the plan is written.
pub(crate) fn answers(batch: Vec<NewMessage>, plan: Vec<Outcome>) -> Result<Vec<chat_core::Result<Appended>>> {
    let mut out: Vec<chat_core::Result<Appended>> = Vec::with_capacity(batch.len());
    // Each message's refusal, for its repeats (which the plan refuses
    // itself, since a repeat has the room and sender of what it repeats).
    let mut refusals: Vec<Option<Refusal>> = Vec::with_capacity(batch.len());
    for (new, outcome) in batch.into_iter().zip(plan) {
        let (answer, refusal) = match outcome {
            Outcome::New(seq) => {
                let message = new.into_message(codec::seq_from_db(seq, "rooms.last_seq")?);
                (Ok(Appended { message, created: true }), None)
            }
            Outcome::Stored(message) => (Ok(Appended { message, created: false }), None),
            Outcome::Repeat(earlier) => match (&out[earlier], refusals[earlier]) {
                (Ok(first), _) => (Ok(Appended { message: first.message.clone(), created: false }), None),
                (Err(_), refusal) => {
                    let refusal = refusal.unwrap_or(Refusal::NotMember);
                    (Err(refusal.error()), Some(refusal))
                }
            },
            Outcome::Refused(refusal) => (Err(refusal.error()), Some(refusal)),
        };
        out.push(answer);
        refusals.push(refusal);
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
            call: None,
        }
    }

    /// What an append finds: every room open at the given counter, and every
    /// sender a member of every room.
    fn found<'a>(rooms: &[(RoomId, i64)], senders: &[&'a str]) -> Found<'a> {
        Found {
            rooms: rooms.iter().map(|&(id, last_seq)| (id, RoomState { last_seq, closed: false })).collect(),
            members: rooms.iter().flat_map(|&(id, _)| senders.iter().map(move |&s| (id, s))).collect(),
            files: HashMap::new(),
        }
    }

    #[test]
    fn plan_numbers_each_room_from_its_counter_and_skips_repeats() {
        let (a, b) = (RoomId::generate(), RoomId::generate());
        let batch =
            [new(a, "ada", "1"), new(b, "ada", "1"), new(a, "ada", "2"), new(a, "ada", "1"), new(a, "bob", "1")];
        let outcomes = plan(&batch, &found(&[(a, 7), (b, 0)], &["ada", "bob"]), &HashMap::new());
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
        let outcomes = plan(&batch, &found(&[(a, 5)], &["ada"]), &stored);
        assert_eq!(
            outcomes,
            [Outcome::Stored(stored_message.clone()), Outcome::New(6), Outcome::Stored(stored_message)]
        );
    }

    #[test]
    fn plan_refuses_alone_and_numbers_the_rest_without_gaps() {
        let (open, closed, missing) = (RoomId::generate(), RoomId::generate(), RoomId::generate());
        let mut rooms = found(&[(open, 2), (closed, 4)], &["ada"]);
        rooms.rooms.insert(closed, RoomState { last_seq: 4, closed: true });
        let batch = [
            new(open, "ada", "1"),
            new(open, "eve", "1"),
            new(closed, "ada", "1"),
            new(missing, "ada", "1"),
            new(open, "eve", "1"),
            new(open, "ada", "2"),
        ];
        // A refused message is refused even when a stored copy exists: the
        // sender may no longer write there.
        let stored_message = batch[1].clone().into_message(1);
        let stored = HashMap::from([((open, "eve", "1"), stored_message)]);
        let outcomes = plan(&batch, &rooms, &stored);
        assert_eq!(
            outcomes,
            [
                Outcome::New(3),
                Outcome::Refused(Refusal::NotMember),
                Outcome::Refused(Refusal::Closed),
                Outcome::Refused(Refusal::MissingRoom),
                Outcome::Refused(Refusal::NotMember),
                Outcome::New(4),
            ]
        );
        let m = moves(&batch, &outcomes);
        assert_eq!(
            m.rooms.iter().map(|r| (r.id, r.last_seq)).collect::<Vec<_>>(),
            [(open, 4)],
            "refusals move nothing"
        );
        assert_eq!(m.cursors, [(open, "ada", 4)]);
        let codes: Vec<&str> = answers(batch.to_vec(), outcomes)
            .expect("answers")
            .iter()
            .map(|a| a.as_ref().map_or_else(|e| e.code().as_str(), |_| "ok"))
            .collect();
        assert_eq!(codes, ["ok", "not_member", "forbidden", "not_found", "not_member", "ok"]);
    }

    #[test]
    fn moves_carry_each_rooms_first_new_message_time() {
        let a = RoomId::generate();
        let mut batch = [new(a, "ada", "1"), new(a, "ada", "2"), new(a, "ada", "3")];
        for (m, at) in batch.iter_mut().zip([50, 90, 10]) {
            m.created_at = Timestamp::from_millis(at);
        }
        let outcomes = plan(&batch, &found(&[(a, 0)], &["ada"]), &HashMap::new());
        let m = moves(&batch, &outcomes);
        assert_eq!(m.rooms, [RoomMove { id: a, last_seq: 3, last_activity: 90, first_at: 50 }]);
    }
}
