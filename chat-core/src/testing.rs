//! The conformance suite for [`Store`] implementations (feature `testing`).
//!
//! Every rule in the [`store`](crate::store) module docs has a check here. Each
//! check is a `pub async fn` that takes a fresh, empty store and panics with a
//! message naming the broken rule. A store crate runs them all from its own
//! tests with one macro call, which expands to one `#[tokio::test]` per check
//! so that a failure is reported by name:
//!
//! ```no_run
//! # use chat_core::MemoryStore as MyStore;
//! // tests/store.rs of a store crate, with `chat-core = { features = ["testing"] }`
//! // and `tokio = { features = ["macros", "rt-multi-thread"] }` as dev-dependencies.
//! chat_core::store_conformance!(async { MyStore::new() });
//! # fn main() {}
//! ```
//!
//! The expression is evaluated once per check and must produce either a store
//! or a [`TestStore`] (a store plus a guard that keeps its temporary files alive
//! until the check has finished), or an `Option` of either: `None` skips the
//! check, for stores that need a service the machine may not have (the
//! expression should then say why on stderr). To run the suite twice in one
//! test file, name the module each expansion goes into:
//! `store_conformance!(mod on_disk, async { … })`.
//!
//! The checks use fixed timestamps and ids built from short strings, so a
//! failure message can be read without a debugger.
//!
//! The [`broker`] module is the same for [`Broker`](crate::Broker)
//! implementations: `broker_conformance!` runs it on a harness that makes
//! brokers on one server and can take that server down.

use std::any::Any;
use std::collections::{BTreeSet, HashSet};
use std::fmt;
use std::sync::Arc;

use crate::attachment::StoredAttachment;
use crate::call::{Call, CallMedia, CallOutcome, CallParty, CallStart, CallState, CallSummary, EndReason};
use crate::error::Result;
use crate::id::{CallId, MessageId, RoomId, SessionId, UserId};
use crate::message::{Appended, Attachment, HistoryQuery, Message, NewMessage};
use crate::room::{Ban, MUTED_FOREVER, MemberRole, NewRoom, ReceiptKind, Room, RoomChanges, RoomKind, Visibility};
use crate::search::{SearchPage, SearchQuery, words};
use crate::store::{Joining, MemberLimits, QueueCursor, QueuedRoom, Store};
use crate::time::Timestamp;
use crate::user::{User, UserAccount, UserListQuery, UserPatch};

pub mod broker;
pub mod cluster;

/// A store under test, with whatever must outlive it (a temporary directory,
/// a database handle) dropped only after the store is closed.
pub struct TestStore {
    store: Arc<dyn Store>,
    guard: Option<Box<dyn Any + Send>>,
}

impl TestStore {
    /// Wraps a store that needs nothing else to live.
    pub fn new(store: impl Store) -> Self {
        TestStore { store: Arc::new(store), guard: None }
    }

    /// Wraps a store and a value that must be dropped after it.
    pub fn with_guard(store: impl Store, guard: impl Send + 'static) -> Self {
        TestStore { store: Arc::new(store), guard: Some(Box::new(guard)) }
    }

    /// The store, for the checks that use one task.
    pub fn store(&self) -> &dyn Store {
        &*self.store
    }

    /// The store as a shareable handle, for the checks that spawn tasks.
    pub fn shared(&self) -> Arc<dyn Store> {
        Arc::clone(&self.store)
    }

    /// Closes the store, then drops the guard.
    pub async fn close(self) {
        self.store.close().await;
        drop(self.store);
        drop(self.guard);
    }
}

impl<S: Store> From<S> for TestStore {
    fn from(store: S) -> Self {
        TestStore::new(store)
    }
}

/// What a conformance check can run on: a store, a [`TestStore`], or an
/// `Option` of either, where `None` skips the check.
pub trait IntoTestStore {
    /// The store to check, or `None` to skip.
    fn into_test_store(self) -> Option<TestStore>;
}

impl<S: Store> IntoTestStore for S {
    fn into_test_store(self) -> Option<TestStore> {
        Some(TestStore::new(self))
    }
}

impl IntoTestStore for TestStore {
    fn into_test_store(self) -> Option<TestStore> {
        Some(self)
    }
}

impl<T: IntoTestStore> IntoTestStore for Option<T> {
    fn into_test_store(self) -> Option<TestStore> {
        self.and_then(IntoTestStore::into_test_store)
    }
}

impl fmt::Debug for TestStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TestStore").field("guarded", &self.guard.is_some()).finish_non_exhaustive()
    }
}

/// Expands to one `#[tokio::test]` per conformance check, in a module named
/// `store_conformance` (or the name given after `mod`).
///
/// The argument is an expression evaluated once per test; awaiting it must give
/// a [`Store`], a [`TestStore`](crate::testing::TestStore), or an `Option` of
/// either (`None` skips). The calling crate
/// needs `tokio` with the `macros` and `rt-multi-thread` features as a
/// dev-dependency. See the [module docs](crate::testing).
#[macro_export]
macro_rules! store_conformance {
    (mod $module:ident, $make:expr $(,)?) => {
        #[allow(unused_imports)]
        mod $module {
            use super::*;

            $crate::__store_conformance_checks! {
                $make;
                single:
                ping_answers,
                upsert_user_creates_and_replaces,
                users_skips_unknown_ids,
                search_users_matches_id_or_name_ignoring_case,
                search_users_treats_the_query_literally,
                search_users_orders_by_name_then_id_and_limits,
                create_room_stores_the_room_and_its_members,
                create_room_rejects_a_taken_id,
                direct_rooms_are_deduplicated_whatever_the_member_order,
                direct_room_needs_exactly_two_members,
                members_are_listed_in_joining_order,
                add_member_returns_false_for_an_existing_member,
                add_member_to_a_missing_room_is_not_found,
                own_room_quota_counts_only_rooms_joined_by_oneself,
                room_capacity_is_checked_when_adding,
                existing_direct_and_support_rooms_are_returned_when_the_quota_is_full,
                a_creator_has_one_open_support_room,
                remove_member_reports_whether_it_removed,
                member_and_counts_follow_membership,
                co_members_are_distinct_and_exclude_the_user,
                rooms_of_user_lists_newest_activity_first,
                rooms_of_user_reports_read_cursor_and_unread,
                support_queue_lists_open_rooms_with_messages_longest_waiting_first,
                support_rooms_are_listed_newest_activity_first_closed_ones_too,
                rooms_active_since_pages_by_activity,
                support_queue_pages_visit_every_room_once,
                claim_room_records_the_latest_agent,
                close_room_closes_once,
                seq_starts_at_one_and_follows_batch_order,
                seq_is_independent_per_room,
                last_seqs_names_each_existing_room_once,
                appended_message_keeps_its_fields,
                append_advances_the_senders_cursors,
                duplicate_across_batches_returns_the_first_message,
                duplicate_inside_one_batch_returns_the_first_message,
                idempotency_key_is_per_room_and_sender,
                append_refuses_each_message_alone,
                a_removed_member_is_refused_at_the_next_append,
                message_is_found_only_in_its_room,
                edit_message_replaces_the_body,
                delete_message_clears_content_and_keeps_the_seq,
                changed_messages_are_edits_and_deletes_since,
                history_without_cursor_returns_the_newest,
                history_before_seq_reads_backwards,
                history_after_seq_reads_forwards,
                history_between_cursors,
                history_with_limit_one,
                history_of_an_empty_or_unknown_room_is_empty,
                advance_cursor_only_moves_forward,
                read_cursor_implies_delivered,
                advance_cursor_for_a_non_member_is_none,
                search_finds_whole_words_folded_in_the_users_rooms,
                search_follows_edits_deletes_and_membership,
                search_pages_newest_first,
                update_room_sets_and_clears_name_and_topic,
                a_ban_removes_and_bars_until_unbanned,
                roles_and_mutes_follow_the_member,

                accounts_start_active_and_keep_when_they_were_made,
                update_user_applies_the_patch_and_records_when,
                deactivation_and_revocation_are_recorded,
                revocation_never_moves_back,
                touch_user_records_when_the_user_was_last_seen,
                a_deleted_user_leaves_every_room_and_stays_deleted,
                account_changes_of_unknown_users_change_nothing,
                list_accounts_pages_by_id_in_byte_order,
                list_accounts_filters_by_id_or_name_literally,

                attachment_records_keep_their_fields,
                append_posts_an_attachment_once_and_only_the_senders,
                deleting_a_message_removes_its_attachments,
                purge_lists_orphans_and_removed_files_only,
                server_secrets_keep_the_first_value,
                push_subscriptions_are_one_per_endpoint_and_capped_per_user,
                push_subscriptions_are_removed_by_their_user_or_when_gone,
                push_recipients_are_subscribed_members_who_did_not_mute,
                a_call_line_keeps_its_summary,
                calls_start_unless_someone_is_busy,
                update_call_is_a_compare_and_set,
                due_calls_follow_ringing_and_the_sides_leases,
                unlogged_calls_are_listed_until_marked;
                shared:
                concurrent_appends_are_gapless,
                concurrent_duplicates_store_one_message,
                own_room_quota_holds_under_concurrent_creates,
                own_room_quota_holds_under_concurrent_self_joins,
                room_capacity_holds_under_concurrent_adds,
                concurrent_support_room_creations_make_one_room,
                a_ban_holds_against_racing_joins,
                attachment_quota_holds_under_concurrent_uploads,
                an_attachment_is_posted_once_under_racing_sends,
                racing_invites_of_two_users_make_one_call,
                racing_accepts_have_one_winner,
            }
        }
    };
    ($make:expr $(,)?) => {
        $crate::store_conformance!(mod store_conformance, $make);
    };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __store_conformance_checks {
    ($make:expr; single: $($single:ident),* ; shared: $($shared:ident),* $(,)?) => {
        $(
            #[::tokio::test]
            async fn $single() {
                let Some(fixture) = $crate::testing::IntoTestStore::into_test_store(($make).await) else {
                    return;
                };
                $crate::testing::$single(fixture.store()).await;
                fixture.close().await;
            }
        )*
        $(
            #[::tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $shared() {
                let Some(fixture) = $crate::testing::IntoTestStore::into_test_store(($make).await) else {
                    return;
                };
                $crate::testing::$shared(fixture.shared()).await;
                fixture.close().await;
            }
        )*
    };
}

// ---------------------------------------------------------------------------
// Helpers

/// A fixed point in time; checks add milliseconds to it so that orderings are
/// deterministic.
const T0: i64 = 1_767_323_045_000;

fn at(ms: i64) -> Timestamp {
    Timestamp::from_millis(T0 + ms)
}

fn uid(id: &str) -> UserId {
    UserId::new(id).unwrap_or_else(|e| panic!("test user id {id:?} is invalid: {e}"))
}

/// Unwraps a store result, showing the error and its source on failure.
fn ok<T>(r: Result<T>, what: &str) -> T {
    match r {
        Ok(v) => v,
        Err(e) => panic!("{what} failed: {e} ({e:?})"),
    }
}

fn user(id: &str, name: &str) -> User {
    User::new(uid(id), name)
}

fn new_room(kind: RoomKind, members: &[&str], created: i64) -> NewRoom {
    let mut list: Vec<(UserId, MemberRole)> = Vec::new();
    for (i, m) in members.iter().enumerate() {
        let role = if i == 0 { MemberRole::Owner } else { MemberRole::Member };
        list.push((uid(m), role));
    }
    NewRoom {
        id: RoomId::generate(),
        kind,
        name: (kind == RoomKind::Group).then(|| "a room".to_owned()),
        visibility: Visibility::Private,
        created_by: uid(members.first().copied().unwrap_or("nobody")),
        created_at: at(created),
        members: list,
    }
}

/// Creates a group room whose first member is the owner.
async fn group(store: &dyn Store, members: &[&str], created: i64) -> Room {
    let (room, created) = ok(store.create_room(new_room(RoomKind::Group, members, created), NONE).await, "create_room");
    assert!(created, "create_room of a new group room must report created = true");
    room
}

fn msg(room: RoomId, sender: &str, client_msg_id: &str, created: i64) -> NewMessage {
    NewMessage {
        id: MessageId::generate(),
        room_id: room,
        sender_id: uid(sender),
        client_msg_id: client_msg_id.to_owned(),
        body: format!("{sender} says {client_msg_id}"),
        attachments: Vec::new(),
        reply_to: None,
        created_at: at(created),
        call: None,
    }
}

/// No limit on memberships.
const NONE: MemberLimits = MemberLimits::NONE;

/// Limits of `own` own rooms per user and `members` members per room.
/// Records an upload of `uploader` and returns it as a message carries it.
/// Panics for a store without attachment records.
async fn uploaded(store: &dyn Store, uploader: &str, name: &str, size: u64) -> Attachment {
    record(store, uploader, name, size, at(0)).await.to_attachment()
}

fn stored_attachment(uploader: &str, name: &str, size: u64, created: Timestamp) -> StoredAttachment {
    StoredAttachment {
        id: crate::AttachmentId::generate(),
        uploader: uid(uploader),
        name: name.into(),
        content_type: "application/octet-stream".into(),
        size,
        width: None,
        height: None,
        thumbnail: None,
        created_at: created,
        posted: None,
        removed: false,
    }
}

async fn record(store: &dyn Store, uploader: &str, name: &str, size: u64, created: Timestamp) -> StoredAttachment {
    let files = store.attachment_store().expect("this check needs a store that keeps attachment records");
    let record = stored_attachment(uploader, name, size, created);
    ok(files.insert_attachment(&record, 0).await, "insert_attachment");
    record
}

fn limits(own: u64, members: u64) -> MemberLimits {
    MemberLimits { max_own_rooms: own, max_members: members }
}

/// A membership someone else adds.
fn added(role: MemberRole, at: Timestamp) -> Joining {
    Joining { role, at, self_joined: false }
}

/// A membership the user takes by themselves.
fn joins(at: Timestamp) -> Joining {
    Joining { role: MemberRole::Member, at, self_joined: true }
}

/// Appends a batch and returns every answer, refusals included.
async fn answers(store: &dyn Store, batch: Vec<NewMessage>) -> Vec<Result<Appended>> {
    let n = batch.len();
    let out = ok(store.append_messages(batch).await, "append_messages");
    assert_eq!(out.len(), n, "append_messages must return one answer per input");
    out
}

/// Appends a batch whose every message must be accepted.
async fn append(store: &dyn Store, batch: Vec<NewMessage>) -> Vec<Appended> {
    answers(store, batch)
        .await
        .into_iter()
        .enumerate()
        .map(|(i, a)| ok(a, &format!("message {i} of the batch")))
        .collect()
}

/// The error code of each answer, `"ok"` for a stored message.
fn codes(answers: &[Result<Appended>]) -> Vec<&'static str> {
    answers.iter().map(|a| a.as_ref().map_or_else(|e| e.code().as_str(), |_| "ok")).collect()
}

/// A support room of `visitor`, made at `created`.
async fn support_room(store: &dyn Store, visitor: &str, created: i64) -> Room {
    let new = new_room(RoomKind::Support, &[visitor], created);
    let (room, created) = ok(store.create_room(new, NONE).await, "create_room");
    assert!(created, "{visitor}'s first support room must be created");
    room
}

/// The whole support queue, one page of `page` rooms at a time.
async fn whole_queue(store: &dyn Store, page: u32) -> Vec<QueuedRoom> {
    let mut all: Vec<QueuedRoom> = Vec::new();
    loop {
        let after = all.last().map(|q| QueueCursor { waiting_since: q.waiting_since, room_id: q.room.id });
        let got = ok(store.support_queue(after, page).await, "support_queue");
        assert!(got.len() <= page as usize, "support_queue returned more than its limit");
        let done = got.len() < page as usize;
        all.extend(got);
        assert!(all.len() < 100_000, "support_queue paging does not end");
        if done {
            return all;
        }
    }
}

/// Appends `n` messages from `sender`, one batch, and returns their seqs.
async fn fill(store: &dyn Store, room: RoomId, sender: &str, n: u64) -> Vec<u64> {
    let batch = (0..n).map(|i| msg(room, sender, &format!("fill-{i}"), i as i64)).collect();
    append(store, batch).await.into_iter().map(|a| a.message.seq).collect()
}

async fn last_seq(store: &dyn Store, room: RoomId) -> u64 {
    ok(store.room(room).await, "room").expect("the room exists").last_seq
}

async fn cursors(store: &dyn Store, room: RoomId, user: &str) -> (u64, u64) {
    let m = ok(store.member(room, &uid(user)).await, "member").unwrap_or_else(|| panic!("{user} is a member"));
    (m.delivered_seq, m.read_seq)
}

fn ids(users: &[User]) -> Vec<&str> {
    users.iter().map(|u| u.id.as_str()).collect()
}

fn seqs(messages: &[Message]) -> Vec<u64> {
    messages.iter().map(|m| m.seq).collect()
}

fn q(before_seq: Option<u64>, after_seq: Option<u64>, limit: u32) -> HistoryQuery {
    HistoryQuery { before_seq, after_seq, limit }
}

/// Runs a table of history queries: (query, expected seqs, expected `has_more`).
async fn history_table(store: &dyn Store, room: RoomId, table: &[(HistoryQuery, Vec<u64>, bool)]) {
    for (query, want, more) in table {
        let page = ok(store.history(room, *query).await, "history");
        assert_eq!(seqs(&page.messages), *want, "history({query:?}): wrong messages");
        assert_eq!(page.has_more, *more, "history({query:?}): wrong has_more");
        assert!(page.messages.iter().all(|m| m.room_id == room), "history({query:?}) returned another room's message");
    }
}

// ---------------------------------------------------------------------------
// Users

/// `ping` answers on a working store.
pub async fn ping_answers(store: &dyn Store) {
    ok(store.ping().await, "ping");
}

/// `upsert_user` creates a user, then replaces its name, avatar and roles.
pub async fn upsert_user_creates_and_replaces(store: &dyn Store) {
    assert_eq!(ok(store.user(&uid("ada")).await, "user"), None, "an unknown user must be None");
    let mut ada = user("ada", "Ada");
    ok(store.upsert_user(&ada).await, "upsert_user");
    assert_eq!(ok(store.user(&uid("ada")).await, "user"), Some(ada.clone()));

    ada.name = "Ada Lovelace".into();
    ada.avatar_url = Some("https://example.invalid/ada.png".into());
    ada.roles = vec!["support".into(), "admin".into()];
    ok(store.upsert_user(&ada).await, "upsert_user");
    assert_eq!(ok(store.user(&uid("ada")).await, "user"), Some(ada.clone()), "upsert must replace every field");

    ada.avatar_url = None;
    ada.roles.clear();
    ok(store.upsert_user(&ada).await, "upsert_user");
    assert_eq!(ok(store.user(&uid("ada")).await, "user"), Some(ada), "upsert must clear the avatar and roles");
    assert_eq!(ok(store.search_users("ada", 10).await, "search_users").len(), 1, "upsert must not duplicate a user");
}

/// `users` returns the known users among the ids and skips the others.
pub async fn users_skips_unknown_ids(store: &dyn Store) {
    for (id, name) in [("u1", "One"), ("u2", "Two"), ("u3", "Three")] {
        ok(store.upsert_user(&user(id, name)).await, "upsert_user");
    }
    let found = ok(store.users(&[uid("u3"), uid("nobody"), uid("u1")]).await, "users");
    let mut got = ids(&found);
    got.sort_unstable();
    assert_eq!(got, ["u1", "u3"]);
    assert_eq!(found.iter().find(|u| u.id.as_str() == "u3").map(|u| u.name.as_str()), Some("Three"));
    assert!(ok(store.users(&[]).await, "users").is_empty(), "users(&[]) must be empty");
}

/// `search_users` matches a substring of the id or of the name, ignoring ASCII case.
pub async fn search_users_matches_id_or_name_ignoring_case(store: &dyn Store) {
    for (id, name) in [("alice", "Alice Smith"), ("BOB", "Bobby"), ("carol", "ALICIA KEYS"), ("dave", "Zed")] {
        ok(store.upsert_user(&user(id, name)).await, "upsert_user");
    }
    let table: &[(&str, &[&str])] = &[
        ("ALI", &["alice", "carol"]), // alice by id and name, carol by name
        ("ice s", &["alice"]),        // inside the name, with a space
        ("bob", &["BOB"]),            // by id, whose case differs
        ("zED", &["dave"]),           // by name only
        ("arol", &["carol"]),         // by id only
        ("xyz", &[]),
    ];
    for (query, want) in table {
        let found = ok(store.search_users(query, 10).await, "search_users");
        let mut got = ids(&found);
        got.sort_unstable();
        let mut want = want.to_vec();
        want.sort_unstable();
        assert_eq!(got, want, "search_users({query:?})");
    }
}

/// `search_users` treats `%`, `_` and `\` as ordinary characters.
pub async fn search_users_treats_the_query_literally(store: &dyn Store) {
    for (id, name) in [("a_b", "Under Score"), ("axb", "Plain"), ("pct", "100% sure"), ("bs", "back\\slash")] {
        ok(store.upsert_user(&user(id, name)).await, "upsert_user");
    }
    let table: &[(&str, &[&str])] =
        &[("a_b", &["a_b"]), ("%", &["pct"]), ("0%", &["pct"]), ("_", &["a_b"]), ("\\", &["bs"]), ("%%", &[])];
    for (query, want) in table {
        let found = ok(store.search_users(query, 10).await, "search_users");
        assert_eq!(ids(&found), *want, "search_users({query:?}) must match the query as literal text");
    }
}

/// `search_users` orders by name, then id, and returns at most `limit` users.
pub async fn search_users_orders_by_name_then_id_and_limits(store: &dyn Store) {
    // Same-case ASCII names, so that every reasonable collation agrees on the order.
    for (id, name) in [("m-3", "same"), ("m-1", "same"), ("m-2", "alpha"), ("m-4", "zulu"), ("other", "none")] {
        ok(store.upsert_user(&user(id, name)).await, "upsert_user");
    }
    let table: &[(u32, &[&str])] = &[
        (10, &["m-2", "m-1", "m-3", "m-4"]),
        (4, &["m-2", "m-1", "m-3", "m-4"]),
        (3, &["m-2", "m-1", "m-3"]),
        (1, &["m-2"]),
        (0, &[]),
    ];
    for (limit, want) in table {
        let found = ok(store.search_users("m-", *limit).await, "search_users");
        assert_eq!(ids(&found), *want, "search_users(\"m-\", {limit})");
    }
}

// ---------------------------------------------------------------------------
// Accounts

async fn account_of(store: &dyn Store, id: &str) -> UserAccount {
    ok(store.account(&uid(id)).await, "account").unwrap_or_else(|| panic!("{id} has an account"))
}

/// Every page of `list_accounts` of `page` accounts, with `text`.
async fn all_accounts(store: &dyn Store, text: Option<&str>, page: u32) -> Vec<String> {
    let mut all: Vec<String> = Vec::new();
    loop {
        let query = UserListQuery { after: all.last().map(|id| uid(id)), text: text.map(str::to_owned), limit: page };
        let got = ok(store.list_accounts(&query).await, "list_accounts");
        assert!(got.len() <= page as usize, "list_accounts returned more than its limit");
        let done = got.len() < page as usize;
        all.extend(got.into_iter().map(|a| a.user.id.to_string()));
        assert!(all.len() < 10_000, "list_accounts paging does not end");
        if done {
            return all;
        }
    }
}

/// A new user is active, was made when first stored (the store's clock),
/// has not been seen, nor had tokens revoked or a profile set; replacing
/// them keeps when they were made.
pub async fn accounts_start_active_and_keep_when_they_were_made(store: &dyn Store) {
    assert_eq!(ok(store.account(&uid("ada")).await, "account"), None, "an unknown user has no account");
    let before = Timestamp::now();
    ok(store.upsert_user(&user("ada", "Ada")).await, "upsert_user");
    let after = Timestamp::now();
    let account = account_of(store, "ada").await;
    assert_eq!(account.user, user("ada", "Ada"));
    assert!(account.active, "a new user is active");
    assert!(
        before <= account.created_at && account.created_at <= after,
        "created_at {:?} must be when the user was stored, between {before:?} and {after:?}",
        account.created_at
    );
    assert_eq!((account.last_seen, account.tokens_revoked_at, account.profile_set_at), (None, None, None));
    ok(store.upsert_user(&user("ada", "Ada L.")).await, "upsert_user");
    let again = account_of(store, "ada").await;
    assert_eq!(again.created_at, account.created_at, "replacing a user keeps when they were made");
    assert_eq!(again.user.name, "Ada L.");
}

/// `update_user` changes only the fields its patch sets (an avatar of
/// `Some(None)` is removed), records when, and returns the user as stored.
pub async fn update_user_applies_the_patch_and_records_when(store: &dyn Store) {
    let ada = User {
        avatar_url: Some("https://example.invalid/ada.png".into()),
        roles: vec!["support".into()],
        ..user("ada", "Ada")
    };
    ok(store.upsert_user(&ada).await, "upsert_user");
    let rename = UserPatch { name: Some("Ada Lovelace".into()), ..UserPatch::default() };
    let got = ok(store.update_user(&uid("ada"), &rename, at(5)).await, "update_user");
    let renamed = User { name: "Ada Lovelace".into(), ..ada.clone() };
    assert_eq!(got, Some(renamed.clone()), "a patch of the name keeps the avatar and roles");
    assert_eq!(ok(store.user(&uid("ada")).await, "user"), Some(renamed.clone()));
    assert_eq!(account_of(store, "ada").await.profile_set_at, Some(at(5)));

    let strip = UserPatch { avatar_url: Some(None), roles: Some(Vec::new()), ..UserPatch::default() };
    let got = ok(store.update_user(&uid("ada"), &strip, at(9)).await, "update_user");
    let stripped = User { avatar_url: None, roles: Vec::new(), ..renamed };
    assert_eq!(got, Some(stripped.clone()), "avatar_url Some(None) removes the avatar, roles are replaced");
    let account = account_of(store, "ada").await;
    assert_eq!((account.user, account.profile_set_at), (stripped, Some(at(9))));
    // Upserts (a token's claims, a bridge) do not count as an operator's change.
    ok(store.upsert_user(&user("ada", "Ada")).await, "upsert_user");
    assert_eq!(account_of(store, "ada").await.profile_set_at, Some(at(9)));
}

/// `set_user_active` and `revoke_tokens` are recorded in the account.
pub async fn deactivation_and_revocation_are_recorded(store: &dyn Store) {
    ok(store.upsert_user(&user("ada", "Ada")).await, "upsert_user");
    assert!(ok(store.set_user_active(&uid("ada"), false).await, "set_user_active"));
    assert!(!account_of(store, "ada").await.active, "deactivated");
    assert!(ok(store.set_user_active(&uid("ada"), false).await, "set_user_active"), "deactivating twice is fine");
    assert!(ok(store.set_user_active(&uid("ada"), true).await, "set_user_active"));
    assert!(account_of(store, "ada").await.active, "reactivated");
    assert!(ok(store.revoke_tokens(&uid("ada"), at(7)).await, "revoke_tokens"));
    assert_eq!(account_of(store, "ada").await.tokens_revoked_at, Some(at(7)));
    ok(store.upsert_user(&user("ada", "Ada")).await, "upsert_user");
    let account = account_of(store, "ada").await;
    assert!(account.active && account.tokens_revoked_at == Some(at(7)), "an upsert keeps both: {account:?}");
}

/// A revocation older than the recorded one (a process whose clock is
/// behind) does not let older tokens in again.
pub async fn revocation_never_moves_back(store: &dyn Store) {
    ok(store.upsert_user(&user("ada", "Ada")).await, "upsert_user");
    assert!(ok(store.revoke_tokens(&uid("ada"), at(5_000)).await, "revoke_tokens"));
    assert!(ok(store.revoke_tokens(&uid("ada"), at(3_000)).await, "revoke_tokens"));
    assert_eq!(account_of(store, "ada").await.tokens_revoked_at, Some(at(5_000)));
    assert!(ok(store.revoke_tokens(&uid("ada"), at(6_000)).await, "revoke_tokens"));
    assert_eq!(account_of(store, "ada").await.tokens_revoked_at, Some(at(6_000)));
}

/// `touch_user` records when the user was last seen and answers the
/// account as it is after that, deactivation included.
pub async fn touch_user_records_when_the_user_was_last_seen(store: &dyn Store) {
    assert_eq!(ok(store.touch_user(&uid("ada"), at(1)).await, "touch_user"), None, "an unknown user");
    ok(store.upsert_user(&user("ada", "Ada")).await, "upsert_user");
    let touched = ok(store.touch_user(&uid("ada"), at(3)).await, "touch_user").expect("ada is known");
    assert_eq!(touched.last_seen, Some(at(3)));
    assert_eq!(touched, account_of(store, "ada").await, "touch_user answers the account as stored");
    assert!(ok(store.set_user_active(&uid("ada"), false).await, "set_user_active"));
    let touched = ok(store.touch_user(&uid("ada"), at(4)).await, "touch_user").expect("ada is known");
    assert!(!touched.active, "touch_user shows a deactivation made before it");
    assert_eq!(touched.last_seen, Some(at(4)));
}

/// `delete_user` removes every membership and forgets the profile in one
/// go; the user is then shown as deleted, found nowhere, never made again,
/// and their messages stay.
pub async fn a_deleted_user_leaves_every_room_and_stays_deleted(store: &dyn Store) {
    let ada = User { avatar_url: Some("https://example.invalid/a.png".into()), ..user("ada", "Ada") };
    for u in [ada.clone(), user("bob", "Bob"), user("cy", "Cy")] {
        ok(store.upsert_user(&u).await, "upsert_user");
    }
    let team = group(store, &["bob", "ada", "cy"], 0).await;
    let own = group(store, &["ada", "bob"], 1).await;
    let (direct, _) = ok(store.create_room(new_room(RoomKind::Direct, &["ada", "cy"], 2), NONE).await, "create_room");
    let sent = append(store, vec![msg(team.id, "ada", "a-1", 3)]).await;
    let mut rooms = ok(store.delete_user(&uid("ada"), at(10)).await, "delete_user").expect("ada existed");
    rooms.sort();
    let mut want = vec![team.id, own.id, direct.id];
    want.sort();
    assert_eq!(rooms, want, "delete_user answers every room the user was removed from");

    for room in &want {
        assert_eq!(ok(store.member(*room, &uid("ada")).await, "member"), None, "ada is no member of {room}");
        let members = ok(store.members(*room).await, "members");
        assert!(members.iter().all(|m| m.user_id.as_str() != "ada"), "ada is not listed in {room}");
    }
    assert!(ok(store.rooms_of_user(&uid("ada")).await, "rooms_of_user").is_empty());
    for room in &want {
        let named = ok(store.deleted_members(*room).await, "deleted_members");
        assert_eq!(named, [uid("ada")], "{room} names the deleted user");
    }
    let other = group(store, &["bob", "cy"], 4).await;
    assert!(ok(store.deleted_members(other.id).await, "deleted_members").is_empty(), "only her rooms name her");
    ok(store.add_member(team.id, &uid("dee"), added(MemberRole::Member, at(5)), NONE).await, "add_member");
    assert!(ok(store.delete_user(&uid("cy"), at(11)).await, "delete_user").is_some());
    assert!(ok(store.delete_user(&uid("dee"), at(11)).await, "delete_user").is_none(), "dee was never stored");
    let named = ok(store.deleted_members(team.id).await, "deleted_members");
    assert_eq!(named, [uid("ada"), uid("cy")], "deleted members by the time of their deletion");
    assert!(!ok(store.co_members(&uid("bob")).await, "co_members").iter().any(|u| u.as_str() == "ada"));
    let kept = ok(store.message(team.id, sent[0].message.id).await, "message").expect("the message stays");
    assert_eq!(kept.sender_id.as_str(), "ada", "a deleted user's messages keep their sender");
    assert!(!kept.deleted);
    let refused = answers(store, vec![msg(team.id, "ada", "a-2", 11)]).await;
    assert_eq!(codes(&refused), ["not_member"], "a deleted user cannot post");

    let gone = User::deleted(uid("ada"));
    assert_eq!(ok(store.user(&uid("ada")).await, "user"), Some(gone.clone()), "user() shows the deleted shape");
    let found = ok(store.users(&[uid("ada"), uid("bob")]).await, "users");
    assert!(found.contains(&gone), "users() shows the deleted shape: {found:?}");
    assert!(ok(store.search_users("ada", 10).await, "search_users").is_empty(), "search never finds them");
    assert_eq!(all_accounts(store, None, 10).await, ["bob"], "the user list skips them");
    let account = account_of(store, "ada").await;
    assert_eq!(account.user, gone, "the account keeps nothing of who they were");

    let again = store.upsert_user(&ada).await;
    assert_eq!(again.map_err(|e| e.code().as_str()), Err("conflict"), "a deleted user is not made again");
    assert_eq!(ok(store.user(&uid("ada")).await, "user"), Some(gone), "a refused upsert changes nothing");
    let patch = UserPatch { name: Some("Back".into()), ..UserPatch::default() };
    assert_eq!(ok(store.update_user(&uid("ada"), &patch, at(12)).await, "update_user"), None);
    assert!(!ok(store.set_user_active(&uid("ada"), true).await, "set_user_active"));
    assert!(!ok(store.revoke_tokens(&uid("ada"), at(12)).await, "revoke_tokens"));
    assert_eq!(ok(store.delete_user(&uid("ada"), at(13)).await, "delete_user"), None, "deleting twice");
    let joined = ok(store.add_member(own.id, &uid("eve"), added(MemberRole::Member, at(14)), NONE).await, "add_member");
    assert!(joined, "the rooms of a deleted user go on for the others");
}

/// Account changes of an unknown user change nothing and say so.
pub async fn account_changes_of_unknown_users_change_nothing(store: &dyn Store) {
    let nobody = uid("nobody");
    let patch = UserPatch { name: Some("X".into()), ..UserPatch::default() };
    assert_eq!(ok(store.update_user(&nobody, &patch, at(1)).await, "update_user"), None);
    assert!(!ok(store.set_user_active(&nobody, false).await, "set_user_active"));
    assert!(!ok(store.revoke_tokens(&nobody, at(1)).await, "revoke_tokens"));
    assert_eq!(ok(store.delete_user(&nobody, at(1)).await, "delete_user"), None);
    assert_eq!(ok(store.account(&nobody).await, "account"), None, "nothing was made");
}

/// `list_accounts` walks the users by id in byte order (upper case before
/// lower), from after a cursor, whatever the page size.
pub async fn list_accounts_pages_by_id_in_byte_order(store: &dyn Store) {
    for id in ["b", "a", "Zed", "A", "a-2", "c", "_x", "é"] {
        ok(store.upsert_user(&user(id, "Someone")).await, "upsert_user");
    }
    let want = ["A", "Zed", "_x", "a", "a-2", "b", "c", "é"];
    for page in [1, 2, 3, 8, 50] {
        assert_eq!(all_accounts(store, None, page).await, want, "pages of {page}");
    }
    let query = UserListQuery { after: Some(uid("a")), text: None, limit: 2 };
    let got: Vec<String> =
        ok(store.list_accounts(&query).await, "list_accounts").into_iter().map(|a| a.user.id.to_string()).collect();
    assert_eq!(got, ["a-2", "b"], "the page after a");
    let query = UserListQuery { after: Some(uid("é")), text: None, limit: 2 };
    assert!(ok(store.list_accounts(&query).await, "list_accounts").is_empty(), "nothing after the last");
    let first = ok(store.list_accounts(&UserListQuery { after: None, text: None, limit: 1 }).await, "list_accounts");
    assert_eq!(first.first().map(|a| a.active), Some(true), "accounts come whole");
}

/// `list_accounts` with a text keeps the users whose id or name contains
/// it, ignoring ASCII case, with `%`, `_` and `\` as ordinary characters.
pub async fn list_accounts_filters_by_id_or_name_literally(store: &dyn Store) {
    for (id, name) in [("alice", "Alice Smith"), ("BOB", "Bobby"), ("carol", "ALICIA"), ("a_b", "100% sure")] {
        ok(store.upsert_user(&user(id, name)).await, "upsert_user");
    }
    let table: &[(&str, &[&str])] = &[
        ("ALI", &["alice", "carol"]),
        ("bob", &["BOB"]),
        ("ice s", &["alice"]),
        ("_", &["a_b"]),
        ("%", &["a_b"]),
        ("xyz", &[]),
    ];
    for (text, want) in table {
        for page in [1, 10] {
            assert_eq!(all_accounts(store, Some(text), page).await, *want, "list_accounts({text:?}), pages of {page}");
        }
    }
}

// ---------------------------------------------------------------------------
// Rooms

/// `claim_room` keeps the latest claimer, reports whether it changed, and
/// shows in every read of the room, the room lists included.
pub async fn claim_room_records_the_latest_agent(store: &dyn Store) {
    let room = support_room(store, "vera", 1).await;
    assert_eq!(room.claimed_by, None, "a new room is unclaimed");
    append(store, vec![msg(room.id, "vera", "help", 2)]).await;
    let table = [("alice", true), ("alice", false), ("bob", true)];
    for (agent, changed) in table {
        let got = ok(store.claim_room(room.id, &uid(agent)).await, "claim_room");
        let (claimed, did) = got.unwrap_or_else(|| panic!("claim_room of an existing room must return it"));
        assert_eq!((claimed.claimed_by.as_ref().map(UserId::as_str), did), (Some(agent), changed), "claim by {agent}");
    }
    let stored = ok(store.room(room.id).await, "room").map(|r| r.claimed_by);
    assert_eq!(stored, Some(Some(uid("bob"))), "room() shows the latest claim");
    let listed = ok(store.rooms_of_user(&uid("vera")).await, "rooms_of_user");
    assert_eq!(listed.first().and_then(|s| s.room.claimed_by.clone()), Some(uid("bob")), "rooms_of_user too");
    let queue = ok(store.support_queue(None, 10).await, "support_queue");
    assert_eq!(queue.first().and_then(|q| q.room.claimed_by.clone()), Some(uid("bob")), "support_queue too");
    assert!(!queue[0].room.closed, "claiming does not close");
    assert_eq!(ok(store.claim_room(RoomId::generate(), &uid("bob")).await, "claim_room"), None, "unknown room");
}

/// `close_room` closes a room once: the first call reports the change, later
/// ones do not, and every read of the room shows it closed.
pub async fn close_room_closes_once(store: &dyn Store) {
    let (room, _) = ok(store.create_room(new_room(RoomKind::Support, &["vera"], 1), NONE).await, "create_room");
    assert!(!room.closed, "a new room is open");
    for (attempt, changed) in [(1, true), (2, false)] {
        let got = ok(store.close_room(room.id).await, "close_room");
        let (closed, did) = got.unwrap_or_else(|| panic!("close_room of an existing room must return it"));
        assert_eq!((closed.closed, did), (true, changed), "close number {attempt}");
    }
    assert_eq!(ok(store.room(room.id).await, "room").map(|r| r.closed), Some(true));
    let listed = ok(store.rooms_of_user(&uid("vera")).await, "rooms_of_user");
    assert!(listed.first().is_some_and(|s| s.room.closed), "rooms_of_user shows it closed");
    assert_eq!(ok(store.close_room(RoomId::generate()).await, "close_room"), None, "unknown room");
}

/// `create_room` stores the room with `last_seq` 0 and its members with their roles.
pub async fn create_room_stores_the_room_and_its_members(store: &dyn Store) {
    let new = new_room(RoomKind::Group, &["zoe", "adam", "mia"], 5);
    let (room, created) = ok(store.create_room(new.clone(), NONE).await, "create_room");
    assert!(created);
    let want = Room {
        id: new.id,
        kind: RoomKind::Group,
        name: new.name.clone(),
        topic: None,
        visibility: Visibility::Private,
        created_by: uid("zoe"),
        created_at: at(5),
        last_seq: 0,
        claimed_by: None,
        closed: false,
    };
    assert_eq!(room, want, "create_room must return the room as made");
    assert_eq!(ok(store.room(new.id).await, "room"), Some(want), "room() must return the stored room");
    assert_eq!(ok(store.room(RoomId::generate()).await, "room"), None, "an unknown room must be None");

    let members = ok(store.members(room.id).await, "members");
    let got: Vec<(&str, MemberRole, Timestamp, u64, u64)> =
        members.iter().map(|m| (m.user_id.as_str(), m.role, m.joined_at, m.delivered_seq, m.read_seq)).collect();
    assert_eq!(
        got,
        [
            ("zoe", MemberRole::Owner, at(5), 0, 0),
            ("adam", MemberRole::Member, at(5), 0, 0),
            ("mia", MemberRole::Member, at(5), 0, 0),
        ],
        "initial members, in the given order, with cursors at 0"
    );
    assert!(members.iter().all(|m| m.room_id == room.id));

    // Public visibility and a missing name come back as given too.
    let mut public = new_room(RoomKind::Support, &["visitor"], 6);
    public.visibility = Visibility::Public;
    let (room, _) = ok(store.create_room(public.clone(), NONE).await, "create_room");
    assert_eq!((room.kind, room.visibility, room.name), (RoomKind::Support, Visibility::Public, None));
    let stored = ok(store.room(public.id).await, "room").expect("the support room exists");
    assert_eq!((stored.kind, stored.visibility, stored.name), (RoomKind::Support, Visibility::Public, None));
}

/// A room id can only be used once.
pub async fn create_room_rejects_a_taken_id(store: &dyn Store) {
    let first = new_room(RoomKind::Group, &["a"], 0);
    ok(store.create_room(first.clone(), NONE).await, "create_room");
    let mut again = new_room(RoomKind::Group, &["b"], 1);
    again.id = first.id;
    let err = store.create_room(again, NONE).await.expect_err("a taken room id must be refused");
    assert_eq!(err.code().as_str(), "conflict", "a taken room id is a conflict, got {err:?}");
    let members = ok(store.members(first.id).await, "members");
    assert_eq!(members.len(), 1, "the refused room must not add members");
}

/// A second direct room for the same pair returns the first, in either member order.
pub async fn direct_rooms_are_deduplicated_whatever_the_member_order(store: &dyn Store) {
    let first = new_room(RoomKind::Direct, &["ann", "ben"], 0);
    let (room, created) = ok(store.create_room(first.clone(), NONE).await, "create_room");
    assert!(created, "the first direct room of a pair is created");
    assert_eq!(room.id, first.id);

    for (members, t) in [(["ben", "ann"], 1), (["ann", "ben"], 2)] {
        let again = new_room(RoomKind::Direct, &members, t);
        let (room, created) = ok(store.create_room(again.clone(), NONE).await, "create_room");
        assert!(!created, "direct room {members:?} already exists: created must be false");
        assert_eq!(room.id, first.id, "the existing direct room must come back");
        assert_eq!(room.created_at, at(0), "the existing room must come back unchanged");
        assert_eq!(ok(store.room(again.id).await, "room"), None, "no second room may be stored");
    }
    assert_eq!(ok(store.room_count_of_user(&uid("ann")).await, "room_count_of_user"), 1);
    assert_eq!(ok(store.member_count(first.id).await, "member_count"), 2);

    // Another pair gets its own room, and so does a group of the same two users.
    let (other, created) =
        ok(store.create_room(new_room(RoomKind::Direct, &["ann", "cat"], 3), NONE).await, "create_room");
    assert!(created && other.id != first.id, "a different pair gets a new direct room");
    let (_, created) = ok(store.create_room(new_room(RoomKind::Group, &["ann", "ben"], 4), NONE).await, "create_room");
    assert!(created, "a group room of the same pair is not a direct room");
}

/// A direct room with other than two members is `invalid` and stores nothing.
pub async fn direct_room_needs_exactly_two_members(store: &dyn Store) {
    for members in [&["solo"][..], &["a", "b", "c"][..], &[][..]] {
        let new = new_room(RoomKind::Direct, members, 0);
        let err = store.create_room(new.clone(), NONE).await.expect_err("a direct room needs two members");
        assert_eq!(err.code().as_str(), "invalid", "direct room with {members:?}: got {err:?}");
        assert_eq!(ok(store.room(new.id).await, "room"), None, "the refused room must not be stored");
    }
    assert_eq!(ok(store.room_count_of_user(&uid("a")).await, "room_count_of_user"), 0);
}

// ---------------------------------------------------------------------------
// Membership

/// `members` lists members in joining order, a re-joined member last.
pub async fn members_are_listed_in_joining_order(store: &dyn Store) {
    let room = group(store, &["zed", "amy"], 0).await;
    for (u, t) in [("mo", 1), ("bea", 2), ("cy", 3)] {
        assert!(ok(store.add_member(room.id, &uid(u), added(MemberRole::Member, at(t)), NONE).await, "add_member"));
    }
    let names = |ms: Vec<crate::room::Member>| ms.into_iter().map(|m| m.user_id.to_string()).collect::<Vec<_>>();
    assert_eq!(names(ok(store.members(room.id).await, "members")), ["zed", "amy", "mo", "bea", "cy"]);

    assert!(ok(store.remove_member(room.id, &uid("amy")).await, "remove_member"));
    assert!(ok(store.add_member(room.id, &uid("amy"), added(MemberRole::Admin, at(9)), NONE).await, "add_member"));
    assert_eq!(
        names(ok(store.members(room.id).await, "members")),
        ["zed", "mo", "bea", "cy", "amy"],
        "a member who left and joined again is last"
    );
    let amy = ok(store.member(room.id, &uid("amy")).await, "member").expect("amy is a member again");
    assert_eq!((amy.role, amy.joined_at, amy.read_seq, amy.delivered_seq), (MemberRole::Admin, at(9), 0, 0));
    assert!(ok(store.members(RoomId::generate()).await, "members").is_empty(), "an unknown room has no members");
}

/// `add_member` of an existing member returns `false` and changes nothing.
pub async fn add_member_returns_false_for_an_existing_member(store: &dyn Store) {
    let room = group(store, &["own", "mem"], 0).await;
    fill(store, room.id, "mem", 2).await;
    let before = ok(store.member(room.id, &uid("mem")).await, "member");
    let again = ok(store.add_member(room.id, &uid("mem"), added(MemberRole::Admin, at(50)), NONE).await, "add_member");
    assert!(!again, "adding an existing member must return false");
    assert_eq!(ok(store.member(room.id, &uid("mem")).await, "member"), before, "the membership must not change");
    assert_eq!(ok(store.member_count(room.id).await, "member_count"), 2);
    assert!(!ok(store.add_member(room.id, &uid("own"), added(MemberRole::Member, at(51)), NONE).await, "add_member"));
    let own = ok(store.member(room.id, &uid("own")).await, "member").expect("own is a member");
    assert_eq!(own.role, MemberRole::Owner, "the owner keeps the role");
}

/// `add_member` to a room that does not exist is `not_found`.
pub async fn add_member_to_a_missing_room_is_not_found(store: &dyn Store) {
    let missing = RoomId::generate();
    let err =
        store.add_member(missing, &uid("u"), added(MemberRole::Member, at(0)), NONE).await.expect_err("no such room");
    assert_eq!(err.code().as_str(), "not_found", "got {err:?}");
    assert_eq!(ok(store.room_count_of_user(&uid("u")).await, "room_count_of_user"), 0);
}

/// Only rooms a user created or joined by themselves count towards their
/// quota: being added to rooms by others fills nobody's quota.
pub async fn own_room_quota_counts_only_rooms_joined_by_oneself(store: &dyn Store) {
    let two = limits(2, u64::MAX);
    for i in 0..50 {
        group(store, &["boss", "u"], i).await;
    }
    let shared = group(store, &["boss"], 50).await;
    assert_eq!(ok(store.room_count_of_user(&uid("u")).await, "room_count_of_user"), 50, "u is in 50 rooms");
    let (mine, created) = ok(store.create_room(new_room(RoomKind::Group, &["u"], 51), two).await, "create_room");
    assert!(created, "rooms others added u to do not count");
    let (direct, _) = ok(store.create_room(new_room(RoomKind::Direct, &["u", "v"], 52), two).await, "create_room");
    let err = store.create_room(new_room(RoomKind::Group, &["u"], 53), two).await.expect_err("u's quota is full");
    assert_eq!(err.code().as_str(), "forbidden", "got {err:?}");
    assert!(err.to_string().contains("(2)"), "the message names the limit: {err}");
    let err = store.add_member(shared.id, &uid("u"), joins(at(54)), two).await.expect_err("joining counts too");
    assert_eq!(err.code().as_str(), "forbidden", "got {err:?}");
    assert_eq!(ok(store.member(shared.id, &uid("u")).await, "member"), None, "a refused join adds nothing");
    // Being added by someone else is not limited by the quota.
    assert!(ok(store.add_member(shared.id, &uid("u"), added(MemberRole::Member, at(55)), two).await, "add_member"));
    assert_eq!(ok(store.room_count_of_user(&uid("u")).await, "room_count_of_user"), 53, "every membership counts here");
    // v was added to the direct room by u: v's quota is untouched.
    let (_, created) =
        ok(store.create_room(new_room(RoomKind::Group, &["v"], 56), limits(1, u64::MAX)).await, "create_room");
    assert!(created, "v was added to u's direct room, which is not v's own");
    // Leaving an own room frees its place.
    assert!(ok(store.remove_member(mine.id, &uid("u")).await, "remove_member"));
    let other = group(store, &["boss"], 57).await;
    assert!(ok(store.add_member(other.id, &uid("u"), joins(at(58)), two).await, "add_member"), "a place was freed");
    let err = store.create_room(new_room(RoomKind::Group, &["u"], 59), two).await.expect_err("full again");
    assert_eq!(err.code().as_str(), "forbidden", "got {err:?}");
    assert!(ok(store.member(direct.id, &uid("u")).await, "member").is_some());
    // A limit of 0 refuses every own room; an existing member is no new one.
    let err = store.create_room(new_room(RoomKind::Group, &["w"], 60), limits(0, u64::MAX)).await.expect_err("0");
    assert_eq!(err.code().as_str(), "forbidden", "got {err:?}");
    assert!(!ok(store.add_member(other.id, &uid("u"), joins(at(61)), limits(0, 0)).await, "add_member"));
}

/// A room with `max_members` members takes no more, by whatever way; an
/// existing member is answered `false` first, a missing room `not_found`.
pub async fn room_capacity_is_checked_when_adding(store: &dyn Store) {
    let three = limits(u64::MAX, 3);
    let room = group(store, &["o", "a"], 0).await;
    assert!(ok(store.add_member(room.id, &uid("b"), added(MemberRole::Member, at(1)), three).await, "add_member"));
    for joining in [added(MemberRole::Member, at(2)), joins(at(2))] {
        let err = store.add_member(room.id, &uid("c"), joining, three).await.expect_err("the room is full");
        assert_eq!(err.code().as_str(), "forbidden", "got {err:?}");
        assert!(err.to_string().contains("full"), "{err}");
    }
    assert!(!ok(store.add_member(room.id, &uid("a"), added(MemberRole::Admin, at(3)), three).await, "add_member"));
    assert_eq!(ok(store.member_count(room.id).await, "member_count"), 3);
    let err = store.add_member(RoomId::generate(), &uid("c"), joins(at(4)), limits(0, 0)).await.expect_err("missing");
    assert_eq!(err.code().as_str(), "not_found", "got {err:?}");
    assert!(ok(store.remove_member(room.id, &uid("b")).await, "remove_member"));
    assert!(ok(store.add_member(room.id, &uid("c"), joins(at(5)), three).await, "add_member"), "a place was freed");
    let c = ok(store.member(room.id, &uid("c")).await, "member").expect("c is a member");
    assert_eq!((c.role, c.joined_at), (MemberRole::Member, at(5)));
}

/// A direct room of the pair, and the creator's open support room, come
/// back even when the creator's quota is full; another room does not.
pub async fn existing_direct_and_support_rooms_are_returned_when_the_quota_is_full(store: &dyn Store) {
    let (direct, _) = ok(store.create_room(new_room(RoomKind::Direct, &["v", "u"], 0), NONE).await, "create_room");
    let support = support_room(store, "u", 1).await;
    group(store, &["u"], 2).await;
    let full = limits(1, u64::MAX);
    let (again, created) =
        ok(store.create_room(new_room(RoomKind::Direct, &["u", "v"], 3), full).await, "create_room of a direct room");
    assert_eq!((again.id, created), (direct.id, false));
    let (again, created) =
        ok(store.create_room(new_room(RoomKind::Support, &["u"], 4), full).await, "create_room of a support room");
    assert_eq!((again.id, created), (support.id, false));
    for kind in [RoomKind::Group, RoomKind::Direct] {
        let members: &[&str] = if kind == RoomKind::Direct { &["u", "w"] } else { &["u"] };
        let err = store.create_room(new_room(kind, members, 5), full).await.expect_err("a new room is over the quota");
        assert_eq!(err.code().as_str(), "forbidden", "{kind:?}: got {err:?}");
    }
    ok(store.close_room(support.id).await, "close_room");
    let err = store.create_room(new_room(RoomKind::Support, &["u"], 6), full).await.expect_err("no open support room");
    assert_eq!(err.code().as_str(), "forbidden", "got {err:?}");
    assert_eq!(ok(store.room_count_of_user(&uid("u")).await, "room_count_of_user"), 3);
}

/// A creator has at most one open support room: asking again returns it;
/// once it is closed, the next request makes a new one. Others have theirs.
pub async fn a_creator_has_one_open_support_room(store: &dyn Store) {
    let first = support_room(store, "vis", 0).await;
    let second = new_room(RoomKind::Support, &["vis"], 1);
    let (room, created) = ok(store.create_room(second.clone(), NONE).await, "create_room");
    assert_eq!((room.id, created, room.created_at), (first.id, false, at(0)), "the open room comes back unchanged");
    assert_eq!(ok(store.room(second.id).await, "room"), None, "no second room is stored");
    let other = support_room(store, "someone-else", 2).await;
    assert_ne!(other.id, first.id);
    ok(store.claim_room(first.id, &uid("agent")).await, "claim_room");
    let (room, created) = ok(store.create_room(new_room(RoomKind::Support, &["vis"], 3), NONE).await, "create_room");
    assert_eq!((room.id, created, room.claimed_by), (first.id, false, Some(uid("agent"))), "claimed is still open");

    ok(store.close_room(first.id).await, "close_room");
    let third = support_room(store, "vis", 4).await;
    assert_ne!(third.id, first.id, "a closed room is not returned");
    let (room, created) = ok(store.create_room(new_room(RoomKind::Support, &["vis"], 5), NONE).await, "create_room");
    assert_eq!((room.id, created), (third.id, false));
    assert_eq!(ok(store.room_count_of_user(&uid("vis")).await, "room_count_of_user"), 2);
    // Group rooms are not limited to one.
    group(store, &["vis"], 6).await;
    group(store, &["vis"], 7).await;
}

/// `remove_member` returns whether the user was a member, and every view follows.
pub async fn remove_member_reports_whether_it_removed(store: &dyn Store) {
    let room = group(store, &["a", "b", "c"], 0).await;
    let other = group(store, &["b", "d"], 1).await;
    assert!(ok(store.remove_member(room.id, &uid("b")).await, "remove_member"), "b was a member");
    assert!(!ok(store.remove_member(room.id, &uid("b")).await, "remove_member"), "b is no longer a member");
    assert!(!ok(store.remove_member(room.id, &uid("zz")).await, "remove_member"), "zz never was a member");
    assert!(!ok(store.remove_member(RoomId::generate(), &uid("a")).await, "remove_member"), "unknown room");

    assert_eq!(ok(store.member(room.id, &uid("b")).await, "member"), None);
    assert_eq!(ok(store.member_count(room.id).await, "member_count"), 2);
    let members: Vec<String> =
        ok(store.members(room.id).await, "members").iter().map(|m| m.user_id.to_string()).collect();
    assert_eq!(members, ["a", "c"]);
    assert_eq!(ok(store.room_count_of_user(&uid("b")).await, "room_count_of_user"), 1);
    let listed: Vec<RoomId> =
        ok(store.rooms_of_user(&uid("b")).await, "rooms_of_user").iter().map(|s| s.room.id).collect();
    assert_eq!(listed, [other.id], "rooms_of_user must drop the room left");
    let mut co = ok(store.co_members(&uid("a")).await, "co_members");
    co.sort();
    assert_eq!(co, [uid("c")], "co_members must drop the member who left");
    // The room itself stays.
    assert!(ok(store.room(room.id).await, "room").is_some());
}

/// `member`, `member_count` and `room_count_of_user` follow the memberships.
pub async fn member_and_counts_follow_membership(store: &dyn Store) {
    let r1 = group(store, &["a", "b"], 0).await;
    let r2 = group(store, &["a"], 1).await;
    let m = ok(store.member(r1.id, &uid("b")).await, "member").expect("b is a member of r1");
    assert_eq!((m.room_id, m.user_id.as_str(), m.role), (r1.id, "b", MemberRole::Member));
    assert_eq!(ok(store.member(r2.id, &uid("b")).await, "member"), None, "b is not in r2");
    assert_eq!(ok(store.member(RoomId::generate(), &uid("a")).await, "member"), None);
    assert_eq!(ok(store.member_count(r1.id).await, "member_count"), 2);
    assert_eq!(ok(store.member_count(r2.id).await, "member_count"), 1);
    assert_eq!(ok(store.member_count(RoomId::generate()).await, "member_count"), 0);
    assert_eq!(ok(store.room_count_of_user(&uid("a")).await, "room_count_of_user"), 2);
    assert_eq!(ok(store.room_count_of_user(&uid("b")).await, "room_count_of_user"), 1);
    assert_eq!(ok(store.room_count_of_user(&uid("nobody")).await, "room_count_of_user"), 0);
    assert!(ok(store.add_member(r2.id, &uid("b"), added(MemberRole::Member, at(2)), NONE).await, "add_member"));
    assert_eq!(ok(store.room_count_of_user(&uid("b")).await, "room_count_of_user"), 2);
    assert_eq!(ok(store.member_count(r2.id).await, "member_count"), 2);
}

/// `co_members` lists each user sharing a room once, never the user asked about.
pub async fn co_members_are_distinct_and_exclude_the_user(store: &dyn Store) {
    group(store, &["a", "b", "c"], 0).await;
    group(store, &["b", "a", "d"], 1).await;
    group(store, &["e", "f"], 2).await;
    group(store, &["a"], 3).await;
    let mut co = ok(store.co_members(&uid("a")).await, "co_members");
    co.sort();
    assert_eq!(co, [uid("b"), uid("c"), uid("d")]);
    let mut co = ok(store.co_members(&uid("e")).await, "co_members");
    co.sort();
    assert_eq!(co, [uid("f")]);
    assert!(ok(store.co_members(&uid("nobody")).await, "co_members").is_empty());
}

/// `rooms_of_user` lists the user's rooms by newest activity (creation or last message).
pub async fn rooms_of_user_lists_newest_activity_first(store: &dyn Store) {
    let r1 = group(store, &["u", "x"], 10).await;
    let r2 = group(store, &["u"], 20).await;
    let r3 = group(store, &["x", "u"], 30).await;
    group(store, &["x"], 40).await;
    let order = |list: Vec<crate::room::RoomSummary>| list.into_iter().map(|s| s.room.id).collect::<Vec<_>>();
    assert_eq!(order(ok(store.rooms_of_user(&uid("u")).await, "rooms_of_user")), [r3.id, r2.id, r1.id]);

    append(store, vec![msg(r1.id, "x", "m1", 50)]).await;
    assert_eq!(
        order(ok(store.rooms_of_user(&uid("u")).await, "rooms_of_user")),
        [r1.id, r3.id, r2.id],
        "a new message makes its room the newest"
    );
    append(store, vec![msg(r2.id, "u", "m2", 60), msg(r3.id, "u", "m3", 70)]).await;
    assert_eq!(order(ok(store.rooms_of_user(&uid("u")).await, "rooms_of_user")), [r3.id, r2.id, r1.id]);
    // A message stamped earlier than the room's newest activity (a bridged
    // import, a clock step) does not make the room look older.
    append(store, vec![msg(r3.id, "x", "late", 5)]).await;
    assert_eq!(
        order(ok(store.rooms_of_user(&uid("u")).await, "rooms_of_user")),
        [r3.id, r2.id, r1.id],
        "activity is the newest time seen, never moved back"
    );
    assert!(ok(store.rooms_of_user(&uid("nobody")).await, "rooms_of_user").is_empty());
}

/// `support_rooms` lists support rooms only, closed ones too, newest
/// activity first, up to the limit: what bridges catch up from.
pub async fn support_rooms_are_listed_newest_activity_first_closed_ones_too(store: &dyn Store) {
    let s1 = support_room(store, "v1", 10).await;
    group(store, &["x"], 15).await;
    let s2 = support_room(store, "v2", 20).await;
    let s3 = support_room(store, "v3", 30).await;
    let ids = |rooms: Vec<Room>| rooms.into_iter().map(|r| r.id).collect::<Vec<_>>();
    assert_eq!(ids(ok(store.support_rooms(10).await, "support_rooms")), [s3.id, s2.id, s1.id], "groups are left out");
    append(store, vec![msg(s1.id, "v1", "hello", 40)]).await;
    assert_eq!(
        ids(ok(store.support_rooms(10).await, "support_rooms")),
        [s1.id, s3.id, s2.id],
        "a new message puts its room first"
    );
    ok(store.close_room(s1.id).await, "close_room");
    assert_eq!(
        ids(ok(store.support_rooms(2).await, "support_rooms")),
        [s1.id, s3.id],
        "closed rooms stay; the limit holds"
    );
    let first = &ok(store.support_rooms(1).await, "support_rooms")[0];
    assert_eq!((first.kind, first.last_seq, first.closed), (RoomKind::Support, 1, true), "rooms come whole");
}

/// `rooms_active_since` lists rooms of every kind whose newest activity
/// (creation or message) is at or after the time, oldest activity first
/// (ties by id), with that activity, a page at a time after the last room.
pub async fn rooms_active_since_pages_by_activity(store: &dyn Store) {
    let old = group(store, &["a"], 10).await;
    let direct = ok(store.create_room(new_room(RoomKind::Direct, &["a", "b"], 20), NONE).await, "create_room").0;
    let support = support_room(store, "v1", 30).await;
    let quiet = group(store, &["a"], 40).await;
    append(store, vec![msg(old.id, "a", "m1", 50)]).await;
    // Two rooms active in the same millisecond are ordered by id.
    let (t1, t2) = (group(store, &["a"], 60).await, group(store, &["b"], 60).await);
    let tied = if t1.id < t2.id { [t1.id, t2.id] } else { [t2.id, t1.id] };
    let page = |since: i64, after: Option<RoomId>, limit: u32| async move {
        ok(store.rooms_active_since(at(since), after, limit).await, "rooms_active_since")
            .into_iter()
            .map(|a| (a.room.id, a.last_activity))
            .collect::<Vec<_>>()
    };
    assert_eq!(
        page(20, None, 10).await,
        [
            (direct.id, at(20)),
            (support.id, at(30)),
            (quiet.id, at(40)),
            (old.id, at(50)),
            (tied[0], at(60)),
            (tied[1], at(60))
        ],
        "every kind, oldest activity first, a message moves its room, ties by id"
    );
    assert_eq!(page(41, None, 10).await.len(), 3, "only rooms active at or after `since`");
    assert_eq!(page(20, None, 2).await, [(direct.id, at(20)), (support.id, at(30))], "the limit holds");
    assert_eq!(page(30, Some(support.id), 2).await, [(quiet.id, at(40)), (old.id, at(50))], "the next page");
    assert_eq!(page(60, Some(tied[0]), 2).await, [(tied[1], at(60))], "a page may start inside a tie");
    assert!(page(60, Some(tied[1]), 2).await.is_empty(), "the last page ends it");
    let first = &ok(store.rooms_active_since(at(50), None, 1).await, "rooms_active_since")[0];
    assert_eq!((first.room.id, first.room.last_seq), (old.id, 1), "rooms come whole");
}

/// `support_queue` lists open support rooms that have a message, by the time
/// of their first message (then id), with that time; empty, closed and other
/// rooms never show, and later messages do not move a room.
pub async fn support_queue_lists_open_rooms_with_messages_longest_waiting_first(store: &dyn Store) {
    let empty = support_room(store, "v0", 0).await;
    let s1 = support_room(store, "v1", 1).await;
    let s2 = support_room(store, "v2", 2).await;
    let s3 = support_room(store, "v3", 3).await;
    let s4 = support_room(store, "v4", 4).await;
    let closed = support_room(store, "v5", 5).await;
    let group_room = group(store, &["g"], 6).await;
    let queue = |after: Option<QueueCursor>, limit: u32| async move {
        let got = ok(store.support_queue(after, limit).await, "support_queue");
        got.into_iter().map(|q| (q.room.id, q.waiting_since)).collect::<Vec<_>>()
    };
    assert!(queue(None, 10).await.is_empty(), "rooms without messages never show: {:?}", empty.id);

    append(store, vec![msg(s1.id, "v1", "a", 50), msg(group_room.id, "g", "a", 10), msg(closed.id, "v5", "a", 5)])
        .await;
    append(store, vec![msg(s2.id, "v2", "a", 30)]).await;
    append(store, vec![msg(s3.id, "v3", "a", 30)]).await;
    // A batch's first message to a room is its first message, whatever the
    // times of the ones after it.
    append(store, vec![msg(s4.id, "v4", "a", 70), msg(s4.id, "v4", "b", 20)]).await;
    ok(store.close_room(closed.id).await, "close_room");
    // Later messages, even stamped earlier, leave the waiting time alone.
    append(store, vec![msg(s2.id, "v2", "b", 90), msg(s1.id, "v1", "b", 1)]).await;

    let mut tied = [(s2.id, at(30)), (s3.id, at(30))];
    tied.sort();
    let want = vec![tied[0], tied[1], (s1.id, at(50)), (s4.id, at(70))];
    assert_eq!(queue(None, 10).await, want, "by first message, then room id; group and closed rooms left out");
    assert_eq!(queue(None, 2).await, want[..2], "the limit holds");
    let after = |i: usize| Some(QueueCursor { waiting_since: want[i].1, room_id: want[i].0 });
    assert_eq!(queue(after(0), 10).await, want[1..], "strictly after the cursor, ties by id");
    assert_eq!(queue(after(1), 1).await, want[2..3]);
    assert!(queue(after(3), 10).await.is_empty());
    let first = ok(store.support_queue(None, 1).await, "support_queue").remove(0);
    assert_eq!(
        (first.room.kind, first.room.last_seq, first.room.closed),
        (RoomKind::Support, 2, false),
        "rooms come whole"
    );

    ok(store.close_room(s1.id).await, "close_room");
    let left: Vec<RoomId> = queue(None, 10).await.into_iter().map(|(id, _)| id).collect();
    assert_eq!(left, [want[0].0, want[1].0, s4.id], "a closed room leaves the queue");
}

/// Paging through the queue with the cursor of each page's last room visits
/// every waiting room once, in order, however many support rooms are empty.
pub async fn support_queue_pages_visit_every_room_once(store: &dyn Store) {
    for i in 0..120 {
        support_room(store, &format!("idle-{i}"), i).await;
    }
    let mut want = Vec::new();
    for i in 0..7_i64 {
        let room = support_room(store, &format!("waiting-{i}"), 200 + i).await;
        // Pairs of rooms wait since the same millisecond.
        let first = 1_000 + (i / 2) * 10;
        append(store, vec![msg(room.id, &format!("waiting-{i}"), "hello", first)]).await;
        want.push((at(first), room.id));
    }
    want.sort();
    for page in [3, 1, 7, 100] {
        let got: Vec<(Timestamp, RoomId)> =
            whole_queue(store, page).await.into_iter().map(|q| (q.waiting_since, q.room.id)).collect();
        assert_eq!(got, want, "pages of {page}");
    }
}

/// `rooms_of_user` carries the read cursor and `unread = last_seq - read_seq`.
pub async fn rooms_of_user_reports_read_cursor_and_unread(store: &dyn Store) {
    let room = group(store, &["reader", "writer"], 0).await;
    fill(store, room.id, "writer", 5).await;
    let summary = |list: Vec<crate::room::RoomSummary>| {
        let s = list.into_iter().next().expect("one room");
        (s.room.last_seq, s.read_seq, s.unread)
    };
    assert_eq!(summary(ok(store.rooms_of_user(&uid("reader")).await, "rooms_of_user")), (5, 0, 5));
    assert_eq!(summary(ok(store.rooms_of_user(&uid("writer")).await, "rooms_of_user")), (5, 5, 0));
    ok(store.advance_cursor(room.id, &uid("reader"), ReceiptKind::Read, 3).await, "advance_cursor");
    assert_eq!(summary(ok(store.rooms_of_user(&uid("reader")).await, "rooms_of_user")), (5, 3, 2));
    ok(store.advance_cursor(room.id, &uid("reader"), ReceiptKind::Delivered, 5).await, "advance_cursor");
    assert_eq!(
        summary(ok(store.rooms_of_user(&uid("reader")).await, "rooms_of_user")),
        (5, 3, 2),
        "delivery does not count as reading"
    );
    append(store, vec![msg(room.id, "reader", "reply", 9)]).await;
    assert_eq!(
        summary(ok(store.rooms_of_user(&uid("reader")).await, "rooms_of_user")),
        (6, 6, 0),
        "sending reads everything up to the sent message"
    );
    assert_eq!(summary(ok(store.rooms_of_user(&uid("writer")).await, "rooms_of_user")), (6, 5, 1));
}

// ---------------------------------------------------------------------------
// Moderation

/// `update_room` sets or clears each field it names and keeps the others.
pub async fn update_room_sets_and_clears_name_and_topic(store: &dyn Store) {
    let room = group(store, &["o"], 0).await;
    assert_eq!(room.topic, None);
    let set = RoomChanges { name: None, topic: Some(Some("Release planning".into())) };
    let after = ok(store.update_room(room.id, &set).await, "update_room").expect("the room exists");
    assert_eq!((after.name.as_deref(), after.topic.as_deref()), (Some("a room"), Some("Release planning")));
    let stored = ok(store.room(room.id).await, "room").expect("the room exists");
    assert_eq!(stored, after, "the stored room is the one returned");
    let both = RoomChanges { name: Some(Some("Renamed".into())), topic: Some(None) };
    let after = ok(store.update_room(room.id, &both).await, "update_room").expect("the room exists");
    assert_eq!((after.name.as_deref(), after.topic), (Some("Renamed"), None));
    let cleared = RoomChanges { name: Some(None), topic: None };
    let after = ok(store.update_room(room.id, &cleared).await, "update_room").expect("the room exists");
    assert_eq!(after.name, None);
    assert_eq!(after.last_seq, room.last_seq);
    let listed = ok(store.rooms_of_user(&uid("o")).await, "rooms_of_user");
    assert_eq!(listed[0].room, after, "rooms_of_user shows the settings");
    assert_eq!(ok(store.update_room(RoomId::generate(), &set).await, "update_room"), None);
}

/// `ban_member` removes the member and bars them (and pre-emptively a
/// non-member) from joining and being added until `unban_member`.
pub async fn a_ban_removes_and_bars_until_unbanned(store: &dyn Store) {
    let room = group(store, &["o", "troll", "bystander"], 0).await;
    let ban = |who: &str, t: i64| Ban { user_id: uid(who), banned_by: uid("o"), banned_at: at(t) };
    assert!(ok(store.ban_member(room.id, &ban("troll", 10)).await, "ban_member"), "troll was a member");
    assert_eq!(ok(store.member(room.id, &uid("troll")).await, "member"), None, "the ban removes");
    assert_eq!(ok(store.room_count_of_user(&uid("troll")).await, "room_count_of_user"), 0);
    for joining in [joins(at(11)), added(MemberRole::Member, at(11))] {
        let err = store.add_member(room.id, &uid("troll"), joining, NONE).await.expect_err("banned");
        assert_eq!(err.code().as_str(), "forbidden", "{err}");
    }
    assert_eq!(ok(store.member(room.id, &uid("troll")).await, "member"), None);
    // A non-member may be banned ahead; a second ban keeps the first.
    assert!(!ok(store.ban_member(room.id, &ban("stranger", 20)).await, "ban_member"), "not a member");
    assert!(!ok(store.ban_member(room.id, &ban("troll", 30)).await, "ban_member"), "banned again");
    let bans = ok(store.bans(room.id, 10).await, "bans");
    assert_eq!(bans, [ban("stranger", 20), ban("troll", 10)], "newest first, the first ban kept");
    assert_eq!(ok(store.bans(room.id, 1).await, "bans"), [ban("stranger", 20)], "limited");
    assert!(ok(store.bans(RoomId::generate(), 10).await, "bans").is_empty());
    let err = store.add_member(room.id, &uid("stranger"), joins(at(21)), NONE).await.expect_err("banned ahead");
    assert_eq!(err.code().as_str(), "forbidden", "{err}");
    let err = store.ban_member(RoomId::generate(), &ban("troll", 40)).await.expect_err("no room");
    assert_eq!(err.code().as_str(), "not_found", "{err}");
    // A ban is per room.
    let other = group(store, &["o"], 1).await;
    assert!(ok(store.add_member(other.id, &uid("troll"), joins(at(41)), NONE).await, "add_member"));

    assert!(ok(store.unban_member(room.id, &uid("troll")).await, "unban_member"));
    assert!(!ok(store.unban_member(room.id, &uid("troll")).await, "unban_member"), "no ban left");
    assert!(ok(store.add_member(room.id, &uid("troll"), joins(at(50)), NONE).await, "add_member"));
    assert_eq!(ok(store.bans(room.id, 10).await, "bans"), [ban("stranger", 20)]);
    assert!(ok(store.member(room.id, &uid("bystander")).await, "member").is_some(), "others stay");
}

/// `set_member_role` and `set_muted` change one membership, which `member`,
/// `members` and `rooms_of_user` show.
pub async fn roles_and_mutes_follow_the_member(store: &dyn Store) {
    let room = group(store, &["o", "m"], 0).await;
    assert!(ok(store.set_member_role(room.id, &uid("m"), MemberRole::Admin).await, "set_member_role"));
    let m = ok(store.member(room.id, &uid("m")).await, "member").expect("a member");
    assert_eq!((m.role, m.muted_until), (MemberRole::Admin, None));
    let roles: Vec<MemberRole> = ok(store.members(room.id).await, "members").iter().map(|m| m.role).collect();
    assert_eq!(roles, [MemberRole::Owner, MemberRole::Admin]);
    assert!(!ok(store.set_member_role(room.id, &uid("x"), MemberRole::Admin).await, "set_member_role"));
    assert!(ok(store.set_member_role(room.id, &uid("m"), MemberRole::Member).await, "set_member_role"));

    let summary = |list: Vec<crate::room::RoomSummary>| {
        let s = list.into_iter().next().expect("one room");
        (s.muted, s.muted_until)
    };
    assert_eq!(summary(ok(store.rooms_of_user(&uid("m")).await, "rooms_of_user")), (false, None));
    let later = Timestamp::now().plus(std::time::Duration::from_secs(3600));
    assert!(ok(store.set_muted(room.id, &uid("m"), Some(later)).await, "set_muted"));
    assert_eq!(ok(store.member(room.id, &uid("m")).await, "member").and_then(|m| m.muted_until), Some(later));
    assert_eq!(summary(ok(store.rooms_of_user(&uid("m")).await, "rooms_of_user")), (true, Some(later)));
    assert_eq!(summary(ok(store.rooms_of_user(&uid("o")).await, "rooms_of_user")), (false, None), "per member");
    assert!(ok(store.set_muted(room.id, &uid("m"), Some(MUTED_FOREVER)).await, "set_muted"));
    assert_eq!(summary(ok(store.rooms_of_user(&uid("m")).await, "rooms_of_user")), (true, None));
    assert!(ok(store.set_muted(room.id, &uid("m"), Some(at(1))).await, "set_muted"));
    assert_eq!(summary(ok(store.rooms_of_user(&uid("m")).await, "rooms_of_user")), (false, None), "ended");
    assert!(ok(store.set_muted(room.id, &uid("m"), None).await, "set_muted"));
    assert_eq!(ok(store.member(room.id, &uid("m")).await, "member").and_then(|m| m.muted_until), None);
    assert!(!ok(store.set_muted(room.id, &uid("x"), None).await, "set_muted"), "not a member");
}

// ---------------------------------------------------------------------------
// Appending

/// Seqs start at 1, have no gaps and follow the batch order, across batches.
pub async fn seq_starts_at_one_and_follows_batch_order(store: &dyn Store) {
    let room = group(store, &["s"], 0).await;
    let batch: Vec<NewMessage> = (0..5).map(|i| msg(room.id, "s", &format!("a{i}"), i)).collect();
    let ids: Vec<MessageId> = batch.iter().map(|m| m.id).collect();
    let out = append(store, batch).await;
    assert_eq!(out.iter().map(|a| a.message.seq).collect::<Vec<_>>(), [1, 2, 3, 4, 5]);
    assert!(out.iter().all(|a| a.created), "new messages are created");
    assert_eq!(out.iter().map(|a| a.message.id).collect::<Vec<_>>(), ids, "results follow the input order");
    assert_eq!(last_seq(store, room.id).await, 5, "room.last_seq follows the newest message");

    let out = append(store, (0..3).map(|i| msg(room.id, "s", &format!("b{i}"), 10 + i)).collect()).await;
    assert_eq!(out.iter().map(|a| a.message.seq).collect::<Vec<_>>(), [6, 7, 8]);
    let out = append(store, vec![msg(room.id, "s", "c", 20)]).await;
    assert_eq!(out[0].message.seq, 9);
    assert_eq!(last_seq(store, room.id).await, 9);
    assert!(append(store, Vec::new()).await.is_empty(), "an empty batch appends nothing");
    assert_eq!(last_seq(store, room.id).await, 9);
}

/// Each room counts its own seqs, also when one batch mixes rooms.
pub async fn seq_is_independent_per_room(store: &dyn Store) {
    let r1 = group(store, &["s"], 0).await;
    let r2 = group(store, &["s"], 1).await;
    fill(store, r2.id, "s", 2).await;
    let batch = vec![
        msg(r1.id, "s", "x1", 1),
        msg(r2.id, "s", "x2", 2),
        msg(r1.id, "s", "x3", 3),
        msg(r2.id, "s", "x4", 4),
        msg(r2.id, "s", "x5", 5),
    ];
    let out = append(store, batch).await;
    let got: Vec<(RoomId, u64)> = out.iter().map(|a| (a.message.room_id, a.message.seq)).collect();
    assert_eq!(got, [(r1.id, 1), (r2.id, 3), (r1.id, 2), (r2.id, 4), (r2.id, 5)]);
    assert_eq!(last_seq(store, r1.id).await, 2);
    assert_eq!(last_seq(store, r2.id).await, 5);
}

/// `last_seqs` answers for every existing room asked about, once, and
/// leaves out rooms that do not exist.
pub async fn last_seqs_names_each_existing_room_once(store: &dyn Store) {
    let r1 = group(store, &["s"], 0).await;
    let r2 = group(store, &["s"], 1).await;
    let empty = group(store, &["s"], 2).await;
    fill(store, r1.id, "s", 3).await;
    fill(store, r2.id, "s", 1).await;
    let missing = RoomId::generate();
    let mut got = ok(store.last_seqs(&[r1.id, missing, r2.id, empty.id]).await, "last_seqs");
    got.sort();
    let mut want = vec![(r1.id, 3), (r2.id, 1), (empty.id, 0)];
    want.sort();
    assert_eq!(got, want);
    assert!(ok(store.last_seqs(&[]).await, "last_seqs of nothing").is_empty());
    // Many at once (a process serving many rooms asks in chunks of 500).
    let mut many = vec![r1.id; 1];
    many.extend((0..600).map(|_| RoomId::generate()));
    assert_eq!(ok(store.last_seqs(&many).await, "last_seqs of 601").len(), 1);
}

/// A stored message keeps every field of the input and starts unedited.
pub async fn appended_message_keeps_its_fields(store: &dyn Store) {
    let room = group(store, &["s"], 0).await;
    let first = append(store, vec![msg(room.id, "s", "first", 1)]).await.remove(0).message;
    let mut new = msg(room.id, "s", "with-everything", 2);
    new.body = "héllo \u{1F600} wörld".into();
    new.reply_to = Some(first.id);
    new.attachments = vec![uploaded(store, "s", "cat.png", 12_345).await, uploaded(store, "s", "notes.txt", 1).await];
    let want = Message {
        id: new.id,
        room_id: room.id,
        seq: 2,
        sender_id: uid("s"),
        client_msg_id: "with-everything".into(),
        body: new.body.clone(),
        attachments: new.attachments.clone(),
        reply_to: Some(first.id),
        created_at: at(2),
        edited_at: None,
        deleted: false,
        call: None,
    };
    let out = append(store, vec![new]).await;
    assert_eq!(out, [Appended { message: want.clone(), created: true }]);
    assert_eq!(ok(store.message(room.id, want.id).await, "message"), Some(want.clone()), "message() after append");
    let page = ok(store.history(room.id, q(None, None, 10)).await, "history");
    assert_eq!(page.messages.last(), Some(&want), "history after append");
}

/// The sender's read and delivered cursors move up to the message; others' stay.
pub async fn append_advances_the_senders_cursors(store: &dyn Store) {
    let room = group(store, &["a", "b"], 0).await;
    fill(store, room.id, "b", 3).await;
    assert_eq!(cursors(store, room.id, "b").await, (3, 3));
    assert_eq!(cursors(store, room.id, "a").await, (0, 0));
    append(store, vec![msg(room.id, "a", "hi", 5), msg(room.id, "b", "yo", 6)]).await;
    assert_eq!(cursors(store, room.id, "a").await, (4, 4), "a's cursors move to a's message");
    assert_eq!(cursors(store, room.id, "b").await, (5, 5), "b's cursors move to b's message");
    // Cursors already beyond the new message stay where they are.
    ok(store.advance_cursor(room.id, &uid("a"), ReceiptKind::Read, 9).await, "advance_cursor");
    append(store, vec![msg(room.id, "a", "again", 7)]).await;
    assert_eq!(cursors(store, room.id, "a").await, (9, 9), "sending never moves a cursor back");
    assert_eq!(cursors(store, room.id, "b").await, (5, 5));
}

/// Re-sending a `client_msg_id` in a later batch returns the first message and stores nothing.
pub async fn duplicate_across_batches_returns_the_first_message(store: &dyn Store) {
    let room = group(store, &["s", "t"], 0).await;
    let first = append(store, vec![msg(room.id, "s", "same", 1)]).await.remove(0);
    assert!(first.created);
    let mut retry = msg(room.id, "s", "same", 2);
    retry.body = "a different body".into();
    let out = append(store, vec![retry, msg(room.id, "t", "other", 3)]).await;
    assert_eq!(out[0], Appended { message: first.message.clone(), created: false }, "the first message comes back");
    assert_eq!(out[1].message.seq, 2, "a duplicate does not use up a seq");
    assert!(out[1].created);
    assert_eq!(last_seq(store, room.id).await, 2);
    let page = ok(store.history(room.id, q(None, None, 10)).await, "history");
    assert_eq!(seqs(&page.messages), [1, 2]);
    assert_eq!(page.messages[0].body, first.message.body, "the stored body is the first one");
    // Still a duplicate after other messages, and after an edit.
    ok(store.edit_message(room.id, first.message.id, "edited", at(4)).await, "edit_message");
    let again = append(store, vec![msg(room.id, "s", "same", 5)]).await.remove(0);
    assert!(!again.created);
    assert_eq!((again.message.id, again.message.seq, again.message.body.as_str()), (first.message.id, 1, "edited"));
    assert_eq!(append(store, vec![msg(room.id, "s", "new", 6)]).await[0].message.seq, 3, "no gap after duplicates");
}

/// A `client_msg_id` repeated inside one batch stores one message; the repeat returns it.
pub async fn duplicate_inside_one_batch_returns_the_first_message(store: &dyn Store) {
    let room = group(store, &["s"], 0).await;
    let x = msg(room.id, "s", "x", 1);
    let mut x_again = msg(room.id, "s", "x", 3);
    x_again.body = "other".into();
    let batch =
        vec![x.clone(), msg(room.id, "s", "y", 2), x_again, msg(room.id, "s", "z", 4), msg(room.id, "s", "x", 5)];
    let out = append(store, batch).await;
    let got: Vec<(u64, bool)> = out.iter().map(|a| (a.message.seq, a.created)).collect();
    assert_eq!(got, [(1, true), (2, true), (1, false), (3, true), (1, false)]);
    assert_eq!(out[2].message, out[0].message, "the repeat returns the first message");
    assert_eq!(out[0].message.id, x.id);
    assert_eq!(out[0].message.body, x.body);
    assert_eq!(last_seq(store, room.id).await, 3);
    assert_eq!(seqs(&ok(store.history(room.id, q(None, None, 10)).await, "history").messages), [1, 2, 3]);
}

/// The idempotency key is (room, sender, `client_msg_id`): other senders and rooms may reuse it.
pub async fn idempotency_key_is_per_room_and_sender(store: &dyn Store) {
    let r1 = group(store, &["a", "b"], 0).await;
    let r2 = group(store, &["a"], 1).await;
    let out = append(store, vec![msg(r1.id, "a", "k", 1), msg(r1.id, "b", "k", 2), msg(r2.id, "a", "k", 3)]).await;
    let got: Vec<(u64, bool)> = out.iter().map(|a| (a.message.seq, a.created)).collect();
    assert_eq!(got, [(1, true), (2, true), (1, true)]);
    let again = append(store, vec![msg(r1.id, "b", "k", 4)]).await.remove(0);
    assert_eq!((again.message.id, again.created), (out[1].message.id, false));
}

/// A message to a missing or closed room, or from a sender who is not a
/// member, is refused alone: it takes no seq, stores nothing and moves no
/// cursor, and the rest of its batch is stored and numbered without gaps.
pub async fn append_refuses_each_message_alone(store: &dyn Store) {
    let open = group(store, &["a", "b"], 0).await;
    let closed = group(store, &["a"], 1).await;
    append(store, vec![msg(closed.id, "a", "before", 2)]).await;
    ok(store.close_room(closed.id).await, "close_room");
    let missing = RoomId::generate();
    let batch = vec![
        msg(open.id, "a", "a-1", 3),
        msg(open.id, "eve", "eve-1", 4),
        msg(closed.id, "a", "a-2", 5),
        msg(missing, "a", "a-3", 6),
        msg(open.id, "b", "b-1", 7),
        msg(open.id, "eve", "eve-1", 8),
    ];
    let out = answers(store, batch).await;
    assert_eq!(codes(&out), ["ok", "not_member", "forbidden", "not_found", "ok", "not_member"]);
    let seqs_of: Vec<u64> = out.iter().flatten().map(|a| a.message.seq).collect();
    assert_eq!(seqs_of, [1, 2], "the stored messages are numbered without gaps");
    assert!(out.iter().flatten().all(|a| a.created));
    assert_eq!(last_seq(store, open.id).await, 2);
    assert_eq!(last_seq(store, closed.id).await, 1, "a closed room takes no message");
    let page = ok(store.history(open.id, q(None, None, 10)).await, "history");
    let stored: Vec<(&str, &str)> =
        page.messages.iter().map(|m| (m.sender_id.as_str(), m.client_msg_id.as_str())).collect();
    assert_eq!(stored, [("a", "a-1"), ("b", "b-1")], "nothing of the refused messages is stored");
    assert_eq!(seqs(&ok(store.history(closed.id, q(None, None, 10)).await, "history").messages), [1]);
    assert!(ok(store.history(missing, q(None, None, 10)).await, "history").messages.is_empty());
    assert_eq!(ok(store.room(missing).await, "room"), None, "a refused message makes no room");
    assert_eq!((cursors(store, open.id, "a").await, cursors(store, open.id, "b").await), ((1, 1), (2, 2)));
    assert_eq!(
        ok(store.member(open.id, &uid("eve")).await, "member"),
        None,
        "a refused sender does not become a member"
    );

    // A batch refused whole stores nothing and fails nothing.
    let out = answers(store, vec![msg(missing, "a", "x", 9), msg(closed.id, "a", "y", 9)]).await;
    assert_eq!(codes(&out), ["not_found", "forbidden"]);
    // The refused keys are still free once the sender may write.
    assert!(ok(store.add_member(open.id, &uid("eve"), added(MemberRole::Member, at(10)), NONE).await, "add_member"));
    let out = append(store, vec![msg(open.id, "eve", "eve-1", 11)]).await;
    assert_eq!((out[0].message.seq, out[0].created), (3, true));
    assert_eq!(last_seq(store, open.id).await, 3);
}

/// A member removed from a room is refused at their next append, also for
/// a retry of a message they stored while a member; the others go on.
pub async fn a_removed_member_is_refused_at_the_next_append(store: &dyn Store) {
    let room = group(store, &["a", "b"], 0).await;
    let first = append(store, vec![msg(room.id, "b", "b-1", 1)]).await.remove(0);
    assert!(ok(store.remove_member(room.id, &uid("b")).await, "remove_member"));
    let out =
        answers(store, vec![msg(room.id, "b", "b-2", 2), msg(room.id, "b", "b-1", 3), msg(room.id, "a", "a-1", 4)])
            .await;
    assert_eq!(codes(&out), ["not_member", "not_member", "ok"]);
    assert_eq!(out[2].as_ref().map(|a| a.message.seq).ok(), Some(2));
    let page = ok(store.history(room.id, q(None, None, 10)).await, "history");
    assert_eq!(page.messages[0].id, first.message.id, "what b stored while a member stays");
    assert_eq!(seqs(&page.messages), [1, 2]);
}

// ---------------------------------------------------------------------------
// Reading, editing, deleting

/// `message` finds a message by room and id, and nothing in another room.
pub async fn message_is_found_only_in_its_room(store: &dyn Store) {
    let r1 = group(store, &["s"], 0).await;
    let r2 = group(store, &["s"], 1).await;
    let m = append(store, vec![msg(r1.id, "s", "m", 2)]).await.remove(0).message;
    assert_eq!(ok(store.message(r1.id, m.id).await, "message"), Some(m.clone()));
    assert_eq!(ok(store.message(r2.id, m.id).await, "message"), None, "wrong room");
    assert_eq!(ok(store.message(r1.id, MessageId::generate()).await, "message"), None, "unknown id");
    assert_eq!(ok(store.message(RoomId::generate(), m.id).await, "message"), None, "unknown room");
}

/// `edit_message` replaces the body and sets `edited_at`; a miss is `None`.
pub async fn edit_message_replaces_the_body(store: &dyn Store) {
    let r1 = group(store, &["s"], 0).await;
    let r2 = group(store, &["s"], 1).await;
    let out = append(store, vec![msg(r1.id, "s", "a", 2), msg(r1.id, "s", "b", 3)]).await;
    let m = out[0].message.clone();
    let edited = ok(store.edit_message(r1.id, m.id, "new body", at(10)).await, "edit_message").expect("message exists");
    let want = Message { body: "new body".into(), edited_at: Some(at(10)), ..m.clone() };
    assert_eq!(edited, want);
    assert_eq!(ok(store.message(r1.id, m.id).await, "message"), Some(want.clone()), "the edit is stored");
    assert_eq!(
        ok(store.message(r1.id, out[1].message.id).await, "message"),
        Some(out[1].message.clone()),
        "others untouched"
    );

    assert_eq!(ok(store.edit_message(r2.id, m.id, "hijack", at(11)).await, "edit_message"), None, "wrong room");
    assert_eq!(ok(store.edit_message(r1.id, MessageId::generate(), "x", at(11)).await, "edit_message"), None);
    assert_eq!(ok(store.message(r1.id, m.id).await, "message"), Some(want), "a missed edit changes nothing");
    assert_eq!(last_seq(store, r1.id).await, 2, "an edit takes no seq");
}

/// `delete_message` clears body and attachments, keeps the seq, and stays in history.
pub async fn delete_message_clears_content_and_keeps_the_seq(store: &dyn Store) {
    let r1 = group(store, &["s"], 0).await;
    let r2 = group(store, &["s"], 1).await;
    let mut new = msg(r1.id, "s", "doomed", 2);
    new.attachments = vec![uploaded(store, "s", "a.bin", 3).await];
    let out = append(store, vec![msg(r1.id, "s", "before", 1), new, msg(r1.id, "s", "after", 3)]).await;
    let m = out[1].message.clone();

    assert_eq!(ok(store.delete_message(r2.id, m.id, at(9)).await, "delete_message"), None, "wrong room");
    assert_eq!(ok(store.message(r1.id, m.id).await, "message"), Some(m.clone()), "a missed delete changes nothing");
    assert_eq!(ok(store.delete_message(r1.id, MessageId::generate(), at(9)).await, "delete_message"), None);

    let deleted = ok(store.delete_message(r1.id, m.id, at(10)).await, "delete_message").expect("message exists");
    assert!(deleted.deleted);
    assert!(deleted.body.is_empty() && deleted.attachments.is_empty(), "body and attachments are cleared");
    assert_eq!((deleted.id, deleted.seq, deleted.sender_id.as_str()), (m.id, 2, "s"), "identity and seq stay");
    assert_eq!(ok(store.message(r1.id, m.id).await, "message"), Some(deleted.clone()));

    let page = ok(store.history(r1.id, q(None, None, 10)).await, "history");
    assert_eq!(seqs(&page.messages), [1, 2, 3], "a deleted message keeps its place in history");
    assert_eq!(page.messages[1], deleted);
    assert_eq!(last_seq(store, r1.id).await, 3);
    let next = append(store, vec![msg(r1.id, "s", "later", 11)]).await.remove(0);
    assert_eq!(next.message.seq, 4, "the deleted seq is never reused");
    // A retry of the deleted message's send still finds it, deleted.
    let retry = append(store, vec![msg(r1.id, "s", "doomed", 12)]).await.remove(0);
    assert_eq!((retry.message.id, retry.created, retry.message.deleted), (m.id, false, true));
}

/// `changed_messages` lists a room's messages edited or deleted at or after
/// a time, by change time, and nothing else.
pub async fn changed_messages_are_edits_and_deletes_since(store: &dyn Store) {
    let r1 = group(store, &["s"], 0).await;
    let r2 = group(store, &["s"], 1).await;
    let out = append(
        store,
        vec![msg(r1.id, "s", "a", 2), msg(r1.id, "s", "b", 3), msg(r1.id, "s", "c", 4), msg(r1.id, "s", "d", 5)],
    )
    .await;
    let other = append(store, vec![msg(r2.id, "s", "x", 6)]).await.remove(0).message;
    let ids: Vec<MessageId> = out.iter().map(|a| a.message.id).collect();
    assert!(ok(store.changed_messages(r1.id, at(0), 10).await, "changed_messages").is_empty(), "nothing changed");
    ok(store.edit_message(r1.id, ids[2], "c2", at(20)).await, "edit_message");
    ok(store.delete_message(r1.id, ids[0], at(30)).await, "delete_message");
    ok(store.edit_message(r1.id, ids[1], "b2", at(10)).await, "edit_message");
    ok(store.edit_message(r2.id, other.id, "x2", at(40)).await, "edit_message");
    let changed = ok(store.changed_messages(r1.id, at(0), 10).await, "changed_messages");
    let got: Vec<(u64, &str, bool)> = changed.iter().map(|m| (m.seq, m.body.as_str(), m.deleted)).collect();
    assert_eq!(got, [(2, "b2", false), (3, "c2", false), (1, "", true)], "by change time, deletes included");
    let since = ok(store.changed_messages(r1.id, at(20), 10).await, "changed_messages");
    assert_eq!(seqs(&since), [3, 1], "changes at `since` count, older ones do not");
    assert_eq!(seqs(&ok(store.changed_messages(r1.id, at(0), 1).await, "changed_messages")), [2], "the limit applies");
    assert!(ok(store.changed_messages(RoomId::generate(), at(0), 10).await, "changed_messages").is_empty());
}

// ---------------------------------------------------------------------------
// History: a room with messages 1..=10.

async fn ten(store: &dyn Store) -> RoomId {
    let room = group(store, &["s"], 0).await;
    assert_eq!(fill(store, room.id, "s", 10).await, (1..=10).collect::<Vec<_>>());
    room.id
}

/// No cursor: the newest `limit` messages, `has_more` when older ones exist.
pub async fn history_without_cursor_returns_the_newest(store: &dyn Store) {
    let room = ten(store).await;
    history_table(
        store,
        room,
        &[
            (q(None, None, 3), vec![8, 9, 10], true),
            (q(None, None, 9), (2..=10).collect(), true),
            (q(None, None, 10), (1..=10).collect(), false),
            (q(None, None, 50), (1..=10).collect(), false),
        ],
    )
    .await;
}

/// `before_seq`: the newest `limit` below it, `has_more` when older ones exist.
pub async fn history_before_seq_reads_backwards(store: &dyn Store) {
    let room = ten(store).await;
    history_table(
        store,
        room,
        &[
            (q(Some(5), None, 2), vec![3, 4], true),
            (q(Some(5), None, 3), vec![2, 3, 4], true),
            (q(Some(5), None, 4), vec![1, 2, 3, 4], false),
            (q(Some(5), None, 10), vec![1, 2, 3, 4], false),
            (q(Some(3), None, 2), vec![1, 2], false),
            (q(Some(2), None, 5), vec![1], false),
            (q(Some(1), None, 5), vec![], false),
            (q(Some(0), None, 5), vec![], false),
            (q(Some(11), None, 3), vec![8, 9, 10], true),
            (q(Some(100), None, 3), vec![8, 9, 10], true),
            (q(Some(100), None, 10), (1..=10).collect(), false),
            (q(Some(u64::MAX), None, 2), vec![9, 10], true),
        ],
    )
    .await;
}

/// `after_seq`: the oldest `limit` above it, `has_more` when newer ones exist.
pub async fn history_after_seq_reads_forwards(store: &dyn Store) {
    let room = ten(store).await;
    history_table(
        store,
        room,
        &[
            (q(None, Some(0), 3), vec![1, 2, 3], true),
            (q(None, Some(5), 2), vec![6, 7], true),
            (q(None, Some(5), 5), vec![6, 7, 8, 9, 10], false),
            (q(None, Some(5), 6), vec![6, 7, 8, 9, 10], false),
            (q(None, Some(8), 2), vec![9, 10], false),
            (q(None, Some(9), 5), vec![10], false),
            (q(None, Some(10), 5), vec![], false),
            (q(None, Some(100), 5), vec![], false),
            (q(None, Some(u64::MAX), 5), vec![], false),
        ],
    )
    .await;
}

/// Both cursors: the oldest `limit` strictly between, `has_more` when more lie between.
pub async fn history_between_cursors(store: &dyn Store) {
    let room = ten(store).await;
    history_table(
        store,
        room,
        &[
            (q(Some(9), Some(2), 3), vec![3, 4, 5], true),
            (q(Some(9), Some(2), 5), vec![3, 4, 5, 6, 7], true),
            (q(Some(9), Some(2), 6), vec![3, 4, 5, 6, 7, 8], false),
            (q(Some(9), Some(2), 50), vec![3, 4, 5, 6, 7, 8], false),
            (q(Some(4), Some(2), 5), vec![3], false),
            (q(Some(3), Some(2), 5), vec![], false),
            (q(Some(5), Some(5), 5), vec![], false),
            (q(Some(3), Some(8), 5), vec![], false),
            (q(Some(100), Some(7), 2), vec![8, 9], true),
            (q(Some(100), Some(7), 3), vec![8, 9, 10], false),
            (q(Some(100), Some(50), 3), vec![], false),
            (q(Some(4), Some(0), 2), vec![1, 2], true),
        ],
    )
    .await;
}

/// `limit` 1 at both edges of the room.
pub async fn history_with_limit_one(store: &dyn Store) {
    let room = ten(store).await;
    history_table(
        store,
        room,
        &[
            (q(None, None, 1), vec![10], true),
            (q(Some(2), None, 1), vec![1], false),
            (q(Some(3), None, 1), vec![2], true),
            (q(Some(11), None, 1), vec![10], true),
            (q(None, Some(0), 1), vec![1], true),
            (q(None, Some(9), 1), vec![10], false),
            (q(None, Some(8), 1), vec![9], true),
            (q(Some(3), Some(1), 1), vec![2], false),
            (q(Some(4), Some(1), 1), vec![2], true),
        ],
    )
    .await;
}

/// An empty room, and a room that does not exist, have empty history whatever the cursor.
pub async fn history_of_an_empty_or_unknown_room_is_empty(store: &dyn Store) {
    let empty = group(store, &["s"], 0).await.id;
    let queries =
        [q(None, None, 10), q(Some(5), None, 10), q(None, Some(0), 10), q(Some(5), Some(1), 10), q(None, None, 1)];
    for room in [empty, RoomId::generate()] {
        let table: Vec<_> = queries.iter().map(|query| (*query, vec![], false)).collect();
        history_table(store, room, &table).await;
    }
}

// ---------------------------------------------------------------------------
// Cursors

/// One step of a cursor table: (kind, `up_to`, expected answer, expected
/// (delivered, read) afterwards).
type CursorStep = (ReceiptKind, u64, Option<u64>, (u64, u64));

/// A cursor moves only forward; the answer is the new value, or `None` when it did not move.
pub async fn advance_cursor_only_moves_forward(store: &dyn Store) {
    let room = group(store, &["r", "w"], 0).await;
    fill(store, room.id, "w", 8).await;
    let r = uid("r");
    let table: &[CursorStep] = &[
        (ReceiptKind::Delivered, 3, Some(3), (3, 0)),
        (ReceiptKind::Delivered, 2, None, (3, 0)),
        (ReceiptKind::Delivered, 3, None, (3, 0)),
        (ReceiptKind::Delivered, 5, Some(5), (5, 0)),
        (ReceiptKind::Read, 2, Some(2), (5, 2)),
        (ReceiptKind::Read, 1, None, (5, 2)),
        (ReceiptKind::Read, 2, None, (5, 2)),
        (ReceiptKind::Read, 0, None, (5, 2)),
        (ReceiptKind::Delivered, 0, None, (5, 2)),
    ];
    for (kind, up_to, want, after) in table {
        let got = ok(store.advance_cursor(room.id, &r, *kind, *up_to).await, "advance_cursor");
        assert_eq!(got, *want, "advance_cursor({kind:?}, {up_to})");
        assert_eq!(cursors(store, room.id, "r").await, *after, "(delivered, read) after {kind:?} to {up_to}");
    }
    assert_eq!(cursors(store, room.id, "w").await, (8, 8), "another member's cursors do not move");
}

/// Reading moves the delivered cursor too, but never backwards.
pub async fn read_cursor_implies_delivered(store: &dyn Store) {
    let room = group(store, &["r", "w"], 0).await;
    fill(store, room.id, "w", 8).await;
    let r = uid("r");
    let table: &[CursorStep] = &[
        (ReceiptKind::Read, 4, Some(4), (4, 4)),
        (ReceiptKind::Delivered, 2, None, (4, 4)),
        (ReceiptKind::Delivered, 6, Some(6), (6, 4)),
        (ReceiptKind::Read, 5, Some(5), (6, 5)),
        (ReceiptKind::Read, 8, Some(8), (8, 8)),
    ];
    for (kind, up_to, want, after) in table {
        let got = ok(store.advance_cursor(room.id, &r, *kind, *up_to).await, "advance_cursor");
        assert_eq!(got, *want, "advance_cursor({kind:?}, {up_to})");
        assert_eq!(cursors(store, room.id, "r").await, *after, "(delivered, read) after {kind:?} to {up_to}");
    }
}

/// A user who is not a member, or a room that does not exist, gives `None`.
pub async fn advance_cursor_for_a_non_member_is_none(store: &dyn Store) {
    let room = group(store, &["m"], 0).await;
    fill(store, room.id, "m", 2).await;
    for kind in [ReceiptKind::Read, ReceiptKind::Delivered] {
        assert_eq!(ok(store.advance_cursor(room.id, &uid("stranger"), kind, 2).await, "advance_cursor"), None);
        assert_eq!(ok(store.advance_cursor(RoomId::generate(), &uid("m"), kind, 2).await, "advance_cursor"), None);
    }
    assert_eq!(ok(store.member(room.id, &uid("stranger")).await, "member"), None, "no membership appears");
    assert_eq!(ok(store.member_count(room.id).await, "member_count"), 1);
}

// ---------------------------------------------------------------------------
// Concurrency

/// Tasks appending at once.
const TASKS: usize = 8;
/// Messages each task appends.
const PER_TASK: usize = 50;

/// `TASKS` tasks append `PER_TASK` messages each into one room at the same time,
/// in batches of 1 to 3: every message is stored once, seqs are exactly
/// `1..=TASKS * PER_TASK`, and each task's messages keep their order.
pub async fn concurrent_appends_are_gapless(store: Arc<dyn Store>) {
    let senders: Vec<String> = (0..TASKS).map(|t| format!("sender-{t}")).collect();
    let names: Vec<&str> = senders.iter().map(String::as_str).collect();
    let room = group(&*store, &names, 0).await.id;
    let other = group(&*store, &names, 1).await.id;

    let mut tasks = Vec::new();
    for (t, sender) in senders.iter().cloned().enumerate() {
        let store = Arc::clone(&store);
        tasks.push(tokio::spawn(async move {
            let mut mine = Vec::with_capacity(PER_TASK);
            let mut i = 0;
            let mut batch_len = 1 + t % 3;
            while i < PER_TASK {
                let n = batch_len.min(PER_TASK - i);
                let mut batch: Vec<NewMessage> =
                    (i..i + n).map(|k| msg(room, &sender, &format!("c-{k}"), k as i64)).collect();
                // Every fourth batch also writes to another room, so that batches mix rooms.
                if i % 4 == 0 {
                    batch.push(msg(other, &sender, &format!("o-{i}"), i as i64));
                }
                let out = ok(store.append_messages(batch).await, "append_messages");
                let out = out.into_iter().map(|a| ok(a, "a member's message"));
                for a in out.filter(|a| a.message.room_id == room) {
                    assert!(a.created, "{sender}: a fresh message must be created");
                    mine.push(a.message.seq);
                }
                i += n;
                batch_len = batch_len % 3 + 1;
            }
            mine
        }));
    }
    let mut all = Vec::new();
    for task in tasks {
        let mine = task.await.expect("an appending task panicked");
        assert_eq!(mine.len(), PER_TASK);
        assert!(mine.windows(2).all(|w| w[0] < w[1]), "one task's messages must get increasing seqs: {mine:?}");
        all.extend(mine);
    }
    all.sort_unstable();
    let total = (TASKS * PER_TASK) as u64;
    assert_eq!(all, (1..=total).collect::<Vec<_>>(), "returned seqs must be exactly 1..={total}");
    assert_eq!(last_seq(&*store, room).await, total);

    // Read everything back in pages and check every message is there once.
    let mut stored = Vec::new();
    let mut after = 0;
    loop {
        let page = ok(store.history(room, q(None, Some(after), 100)).await, "history");
        stored.extend(page.messages);
        after = stored.last().map_or(0, |m| m.seq);
        if !page.has_more {
            break;
        }
    }
    assert_eq!(seqs(&stored), (1..=total).collect::<Vec<_>>(), "stored seqs must be exactly 1..={total}");
    let keys: HashSet<(String, String)> =
        stored.iter().map(|m| (m.sender_id.to_string(), m.client_msg_id.clone())).collect();
    assert_eq!(keys.len(), TASKS * PER_TASK, "every (sender, client_msg_id) must be stored once");
    let other_seqs = seqs(&ok(store.history(other, q(None, None, 1000)).await, "history").messages);
    let n_other = other_seqs.len() as u64;
    assert_eq!(other_seqs, (1..=n_other).collect::<Vec<_>>(), "the other room's seqs are gapless too");
    assert_eq!(last_seq(&*store, other).await, n_other);
    for sender in &senders {
        let (delivered, read) = cursors(&*store, room, sender).await;
        assert!(read > 0 && delivered >= read, "{sender}'s cursors must have moved");
    }
}

/// Tasks racing to append the same (room, sender, `client_msg_id`) store exactly
/// one message, and every task gets that message back.
pub async fn concurrent_duplicates_store_one_message(store: Arc<dyn Store>) {
    let room = group(&*store, &["dup"], 0).await.id;
    const ROUNDS: usize = 5;
    let mut tasks = Vec::new();
    for t in 0..TASKS {
        let store = Arc::clone(&store);
        tasks.push(tokio::spawn(async move {
            let mut seen = Vec::new();
            for r in 0..ROUNDS {
                // Each round sends one key twice in a batch, plus one key shared by all tasks.
                let batch = vec![
                    msg(room, "dup", "shared", (t * ROUNDS + r) as i64),
                    msg(room, "dup", &format!("round-{r}"), r as i64),
                    msg(room, "dup", "shared", 0),
                ];
                let out = ok(store.append_messages(batch).await, "append_messages");
                let out: Vec<Appended> = out.into_iter().map(|a| ok(a, "a member's message")).collect();
                assert_eq!(out.len(), 3);
                assert!(!out[2].created, "a repeat inside the batch is never created");
                assert_eq!(out[2].message, out[0].message, "the repeat returns the same message");
                seen.extend(out.into_iter().take(2));
            }
            seen
        }));
    }
    let mut created = Vec::new();
    let mut shared = BTreeSet::new();
    let mut by_key = std::collections::HashMap::new();
    for task in tasks {
        for a in task.await.expect("an appending task panicked") {
            if a.created {
                created.push(a.message.client_msg_id.clone());
            }
            if a.message.client_msg_id == "shared" {
                shared.insert((a.message.id, a.message.seq));
            }
            let entry = by_key.entry(a.message.client_msg_id.clone()).or_insert_with(|| a.message.id);
            assert_eq!(*entry, a.message.id, "every task must get the same message for {:?}", a.message.client_msg_id);
        }
    }
    created.sort();
    let mut want: Vec<String> = (0..ROUNDS).map(|r| format!("round-{r}")).collect();
    want.push("shared".into());
    want.sort();
    assert_eq!(created, want, "each key must be created exactly once");
    assert_eq!(shared.len(), 1, "all tasks must see one shared message: {shared:?}");
    let total = (ROUNDS + 1) as u64;
    assert_eq!(last_seq(&*store, room).await, total, "duplicates must not use up seqs");
    let page = ok(store.history(room, q(None, None, 100)).await, "history");
    assert_eq!(seqs(&page.messages), (1..=total).collect::<Vec<_>>());
}

/// Racing requests.
const RACERS: usize = 20;

/// Runs `RACERS` calls of `call` at once, each on its own task, and returns
/// their answers.
async fn race<T: Send + 'static, F: std::future::Future<Output = Result<T>> + Send + 'static>(
    store: &Arc<dyn Store>,
    call: impl Fn(Arc<dyn Store>, usize) -> F,
) -> Vec<Result<T>> {
    let tasks: Vec<_> = (0..RACERS).map(|i| tokio::spawn(call(Arc::clone(store), i))).collect();
    let mut out = Vec::with_capacity(RACERS);
    for task in tasks {
        out.push(task.await.expect("a racing task panicked"));
    }
    out
}

/// Tells accepted answers from refusals, failing on any other error.
fn accepted<T>(answers: Vec<Result<T>>) -> Vec<T> {
    let mut ok_answers = Vec::new();
    for answer in answers {
        match answer {
            Ok(value) => ok_answers.push(value),
            Err(e) => assert_eq!(e.code().as_str(), "forbidden", "a racer may only be refused: {e} ({e:?})"),
        }
    }
    ok_answers
}

/// `RACERS` rooms created at once by one user whose quota is 5: exactly 5
/// are made.
pub async fn own_room_quota_holds_under_concurrent_creates(store: Arc<dyn Store>) {
    let out = race(&store, |store, i| async move {
        store.create_room(new_room(RoomKind::Group, &["u"], i as i64), limits(5, u64::MAX)).await
    })
    .await;
    let made = accepted(out);
    assert_eq!(made.len(), 5, "exactly the quota is created");
    assert!(made.iter().all(|(_, created)| *created));
    let listed = ok(store.rooms_of_user(&uid("u")).await, "rooms_of_user");
    assert_eq!(listed.len(), 5, "exactly the quota is stored");
}

/// One user joining `RACERS` rooms at once with a quota of 5: exactly 5 joins.
pub async fn own_room_quota_holds_under_concurrent_self_joins(store: Arc<dyn Store>) {
    let mut rooms = Vec::new();
    for i in 0..RACERS {
        rooms.push(group(&*store, &["boss"], i as i64).await.id);
    }
    let rooms = Arc::new(rooms);
    let out = race(&store, move |store, i| {
        let rooms = Arc::clone(&rooms);
        async move { store.add_member(rooms[i], &uid("u"), joins(at(100)), limits(5, u64::MAX)).await }
    })
    .await;
    let joined = accepted(out);
    assert_eq!(joined, [true; 5], "exactly the quota is joined");
    assert_eq!(ok(store.room_count_of_user(&uid("u")).await, "room_count_of_user"), 5);
}

/// `RACERS` users added at once to a room of one member that holds 5: exactly 4 join.
pub async fn room_capacity_holds_under_concurrent_adds(store: Arc<dyn Store>) {
    let room = group(&*store, &["owner"], 0).await.id;
    let out = race(&store, move |store, i| async move {
        store.add_member(room, &uid(&format!("guest-{i}")), added(MemberRole::Member, at(1)), limits(u64::MAX, 5)).await
    })
    .await;
    let added_ones = accepted(out);
    assert_eq!(added_ones, [true; 4], "exactly the room's free places are taken");
    assert_eq!(ok(store.member_count(room).await, "member_count"), 5);
}

/// `RACERS` support rooms requested at once by one creator: one is made and
/// every request gets it.
pub async fn concurrent_support_room_creations_make_one_room(store: Arc<dyn Store>) {
    let out = race(&store, |store, i| async move {
        store.create_room(new_room(RoomKind::Support, &["vis"], i as i64), NONE).await
    })
    .await;
    let rooms: Vec<(Room, bool)> = out.into_iter().map(|r| ok(r, "create_room")).collect();
    assert_eq!(rooms.iter().filter(|(_, created)| *created).count(), 1, "one request creates the room");
    let ids: HashSet<RoomId> = rooms.iter().map(|(room, _)| room.id).collect();
    assert_eq!(ids.len(), 1, "every request gets the one room: {ids:?}");
    assert_eq!(ok(store.rooms_of_user(&uid("vis")).await, "rooms_of_user").len(), 1);
}

/// A user joining `RACERS` rooms while each of them bans the user at the
/// same time: whichever comes first, the user ends up in none of them.
pub async fn a_ban_holds_against_racing_joins(store: Arc<dyn Store>) {
    let mut rooms = Vec::with_capacity(RACERS);
    for i in 0..RACERS {
        rooms.push(group(&*store, &["owner"], i as i64).await.id);
    }
    let rooms = Arc::new(rooms);
    let joined = {
        let rooms = Arc::clone(&rooms);
        race(&store, move |store, i| {
            let room = rooms[i];
            async move { store.add_member(room, &uid("troll"), joins(at(100)), NONE).await }
        })
    };
    let banned = {
        let rooms = Arc::clone(&rooms);
        race(&store, move |store, i| {
            let room = rooms[i];
            let ban = Ban { user_id: uid("troll"), banned_by: uid("owner"), banned_at: at(100) };
            async move { store.ban_member(room, &ban).await }
        })
    };
    let (joined, banned) = tokio::join!(joined, banned);
    accepted(joined);
    for ban in banned {
        ok(ban, "ban_member");
    }
    for room in rooms.iter() {
        assert_eq!(ok(store.member(*room, &uid("troll")).await, "member"), None, "a banned user stays out");
    }
    assert_eq!(ok(store.room_count_of_user(&uid("troll")).await, "room_count_of_user"), 0);
}

// ---------------------------------------------------------------------------
// Calls

fn ringing(room: RoomId, caller: &str, callee: &str, created: i64) -> Call {
    Call {
        id: CallId::generate(),
        room_id: room,
        media: CallMedia::Audio,
        caller: CallParty {
            user_id: uid(caller),
            session: Some(SessionId::generate()),
            until: Some(at(created + 500)),
        },
        callee: CallParty { user_id: uid(callee), session: None, until: None },
        state: CallState::Ringing,
        created_at: at(created),
        ring_until: at(created + 300),
        accepted_at: None,
        ended_at: None,
        end_reason: None,
        logged: false,
        version: 0,
    }
}

async fn start(store: &dyn Store, call: &Call) -> CallStart {
    ok(store.start_call(call).await, "start_call")
}

async fn stored_call(store: &dyn Store, id: CallId) -> Call {
    ok(store.call(id).await, "call").unwrap_or_else(|| panic!("call {id} is stored"))
}

/// Ends a call through the compare-and-set, as the engine does.
async fn hang_up(store: &dyn Store, id: CallId, when: i64) -> Call {
    let mut call = stored_call(store, id).await;
    call.state = CallState::Ended;
    call.end_reason = Some(EndReason::Hangup);
    call.ended_at = Some(at(when));
    ok(store.update_call(&call).await, "update_call").expect("nobody else changed the call")
}

/// A call's history line (a message with a `call`) comes back as stored.
pub async fn a_call_line_keeps_its_summary(store: &dyn Store) {
    let room = group(store, &["a", "b"], 0).await;
    let mut new = msg(room.id, "a", "call:1", 1);
    new.body = String::new();
    let summary = CallSummary {
        call_id: CallId::generate(),
        media: CallMedia::Video,
        outcome: CallOutcome::Ended,
        duration_s: Some(75),
    };
    new.call = Some(Box::new(summary.clone()));
    let stored = append(store, vec![new, msg(room.id, "a", "plain", 2)]).await;
    assert_eq!(stored[0].message.call.as_deref(), Some(&summary), "append answers the call's summary");
    assert_eq!(stored[1].message.call, None, "a plain message has no call");
    let page = ok(store.history(room.id, q(None, None, 10)).await, "history");
    assert_eq!(page.messages[0].call.as_deref(), Some(&summary), "history keeps the call's summary");
    assert_eq!(page.messages[0].body, "", "a call's line has an empty body");
    assert_eq!(page.messages[1].call, None);
}

/// A call rings unless its caller is in a live call (nothing stored) or its
/// callee is (stored as ended, busy); the callee calling the caller back at
/// once is glare (the older invite is kept); an ended call busies nobody.
pub async fn calls_start_unless_someone_is_busy(store: &dyn Store) {
    let room = group(store, &["a", "b", "c"], 0).await;
    let first = ringing(room.id, "a", "b", 10);
    assert_eq!(start(store, &first).await, CallStart::Started);
    assert_eq!(stored_call(store, first.id).await, first, "the call is stored as given");

    let to_busy = ringing(room.id, "c", "b", 11);
    let CallStart::Busy(busy) = start(store, &to_busy).await else { panic!("a call to a callee in a call is busy") };
    assert_eq!((busy.id, busy.state, busy.end_reason), (to_busy.id, CallState::Ended, Some(EndReason::Busy)));
    assert_eq!(busy.ended_at, Some(at(11)), "a busy call ends when it was placed");
    assert_eq!(stored_call(store, to_busy.id).await, busy, "the busy call is stored, ended");

    let from_busy = ringing(room.id, "a", "c", 12);
    assert_eq!(start(store, &from_busy).await, CallStart::CallerBusy(first.clone()));
    assert_eq!(ok(store.call(from_busy.id).await, "call"), None, "a busy caller's call is not stored");

    let back = ringing(room.id, "b", "a", 13);
    assert_eq!(start(store, &back).await, CallStart::Glare(first.clone()), "calling back a ringing caller is glare");
    assert_eq!(ok(store.call(back.id).await, "call"), None, "glare stores nothing");

    hang_up(store, first.id, 20).await;
    let after = ringing(room.id, "c", "b", 21);
    assert_eq!(start(store, &after).await, CallStart::Started, "an ended call busies nobody");
    let taken = Call { id: after.id, ..ringing(room.id, "x", "y", 22) };
    assert!(store.start_call(&taken).await.is_err(), "a call id is never stored twice");
}

/// [`Store::update_call`] writes only over the version it read, and bumps it.
pub async fn update_call_is_a_compare_and_set(store: &dyn Store) {
    let room = group(store, &["a", "b"], 0).await;
    let call = ringing(room.id, "a", "b", 10);
    start(store, &call).await;
    let mut accepted = call.clone();
    accepted.state = CallState::Accepted;
    accepted.accepted_at = Some(at(15));
    accepted.callee.session = Some(SessionId::generate());
    accepted.callee.until = Some(at(600));
    let stored = ok(store.update_call(&accepted).await, "update_call").expect("the first write wins");
    assert_eq!(stored, Call { version: call.version + 1, ..accepted.clone() });
    assert_eq!(stored_call(store, call.id).await, stored);

    let mut stale = call.clone();
    stale.state = CallState::Ended;
    stale.end_reason = Some(EndReason::Timeout);
    assert_eq!(ok(store.update_call(&stale).await, "update_call"), None, "a write over an old version is refused");
    assert_eq!(stored_call(store, call.id).await, stored, "and changes nothing");

    let mut ended = stored.clone();
    ended.state = CallState::Ended;
    ended.end_reason = Some(EndReason::Hangup);
    ended.ended_at = Some(at(80));
    ended.logged = true;
    let last = ok(store.update_call(&ended).await, "update_call").expect("the current version is written");
    assert_eq!(last, Call { version: stored.version + 1, ..ended });
    let unknown = ringing(room.id, "a", "b", 90);
    assert_eq!(ok(store.update_call(&unknown).await, "update_call"), None, "an unknown call is not written");
}

/// Due calls: ringing past its end, or a side past its `until`; renewals
/// move the `until` of the sides whose session they name, in live calls only.
pub async fn due_calls_follow_ringing_and_the_sides_leases(store: &dyn Store) {
    let room = group(store, &["a", "b", "c", "d"], 0).await;
    let call = ringing(room.id, "a", "b", 0); // rings until 300, caller's lease until 500
    let other = ringing(room.id, "c", "d", 50); // rings until 350
    start(store, &call).await;
    start(store, &other).await;
    let due = |now| async move {
        let calls = ok(store.due_calls(at(now), 100).await, "due_calls");
        calls.into_iter().map(|c| c.id).collect::<Vec<_>>()
    };
    assert_eq!(due(299).await, [], "nothing is due before its deadline");
    assert_eq!(due(300).await, [call.id], "a call is due when ringing ends");
    assert_eq!(due(400).await, [call.id, other.id], "oldest first");

    let mut accepted = call.clone();
    accepted.state = CallState::Accepted;
    accepted.accepted_at = Some(at(100));
    let callee_session = SessionId::generate();
    accepted.callee.session = Some(callee_session);
    accepted.callee.until = Some(at(700));
    let accepted = ok(store.update_call(&accepted).await, "update_call").expect("written");
    assert_eq!(due(400).await, [other.id], "an answered call no longer rings");
    assert_eq!(due(500).await, [call.id, other.id], "the caller's lease ran out");

    let caller_session = call.caller.session.expect("the caller has a session");
    let stranger = SessionId::generate();
    let legs = [(call.id, caller_session), (call.id, stranger), (other.id, callee_session)];
    ok(store.renew_calls(&legs, at(900)).await, "renew_calls");
    let renewed = stored_call(store, call.id).await;
    assert_eq!((renewed.caller.until, renewed.callee.until), (Some(at(900)), Some(at(700))), "only named sessions");
    assert_eq!(renewed.version, accepted.version, "a renewal is no change of state");
    assert_eq!(due(699).await, [other.id], "the renewed caller is not due");
    assert_eq!(due(700).await, [call.id, other.id], "the callee's lease was not renewed");

    hang_up(store, call.id, 950).await;
    ok(store.renew_calls(&[(call.id, caller_session)], at(5_000)).await, "renew_calls");
    assert_eq!(stored_call(store, call.id).await.caller.until, Some(at(900)), "an ended call is not renewed");
    assert_eq!(due(10_000).await, [other.id], "an ended call is never due");
    assert_eq!(ok(store.due_calls(at(10_000), 0).await, "due_calls"), [], "the limit holds");
}

/// Ended calls without their history line are listed, oldest first, until
/// marked; live ones never are.
pub async fn unlogged_calls_are_listed_until_marked(store: &dyn Store) {
    let room = group(store, &["a", "b", "c", "d"], 0).await;
    let one = ringing(room.id, "a", "b", 0);
    let two = ringing(room.id, "c", "d", 1);
    let live = ringing(room.id, "a", "c", 2);
    start(store, &one).await;
    start(store, &two).await;
    hang_up(store, one.id, 100).await;
    hang_up(store, two.id, 200).await;
    assert_eq!(start(store, &live).await, CallStart::Started);
    let unlogged = |before| async move {
        let calls = ok(store.unlogged_calls(at(before), 100).await, "unlogged_calls");
        calls.into_iter().map(|c| c.id).collect::<Vec<_>>()
    };
    assert_eq!(unlogged(99).await, [], "only calls ended at or before the time");
    assert_eq!(unlogged(1_000).await, [one.id, two.id]);
    ok(store.mark_call_logged(one.id).await, "mark_call_logged");
    assert_eq!(unlogged(1_000).await, [two.id]);
    let marked = stored_call(store, one.id).await;
    assert!(marked.logged, "the mark is kept");
    ok(store.mark_call_logged(CallId::generate()).await, "marking an unknown call is no error");
}

/// Two users inviting each other at the same moment, round after round:
/// each round makes exactly one call, and the other invite meets it as glare.
pub async fn racing_invites_of_two_users_make_one_call(store: Arc<dyn Store>) {
    let room = group(&*store, &["a", "b"], 0).await;
    for round in 0..20 {
        let there = ringing(room.id, "a", "b", round * 10);
        let back = ringing(room.id, "b", "a", round * 10);
        let (x, y) = {
            let (s1, s2) = (Arc::clone(&store), Arc::clone(&store));
            let (c1, c2) = (there.clone(), back.clone());
            let t1 = tokio::spawn(async move { s1.start_call(&c1).await });
            let t2 = tokio::spawn(async move { s2.start_call(&c2).await });
            (
                ok(t1.await.expect("a racer panicked"), "start_call"),
                ok(t2.await.expect("a racer panicked"), "start_call"),
            )
        };
        let (kept, other) = match (&x, &y) {
            (CallStart::Started, CallStart::Glare(g)) => (&there, g),
            (CallStart::Glare(g), CallStart::Started) => (&back, g),
            _ => panic!("round {round}: one call and one glare, got {x:?} and {y:?}"),
        };
        assert_eq!(other.id, kept.id, "round {round}: the glare names the call that was kept");
        let mut stored = 0;
        for id in [there.id, back.id] {
            if ok(store.call(id).await, "call").is_some() {
                stored += 1;
            }
        }
        assert_eq!(stored, 1, "round {round}: one call is stored");
        hang_up(&*store, kept.id, round * 10 + 5).await;
    }
}

/// Many writers accept one ringing call at once: exactly one write lands.
pub async fn racing_accepts_have_one_winner(store: Arc<dyn Store>) {
    let room = group(&*store, &["a", "b"], 0).await;
    let call = ringing(room.id, "a", "b", 0);
    start(&*store, &call).await;
    let out = race(&store, move |store, i| {
        let mut accepted = call.clone();
        accepted.state = CallState::Accepted;
        accepted.accepted_at = Some(at(10 + i as i64));
        accepted.callee.session = Some(SessionId::generate());
        async move { store.update_call(&accepted).await }
    })
    .await;
    let winners: Vec<Call> = out.into_iter().filter_map(|r| ok(r, "update_call")).collect();
    assert_eq!(winners.len(), 1, "one accept wins: {winners:?}");
    assert_eq!(stored_call(&*store, winners[0].id).await, winners[0], "the winner's write is what is stored");
}

// ---------------------------------------------------------------------------
// Bridge stores

/// Expands to one `#[tokio::test]` per check of a [`BridgeStore`](crate::BridgeStore),
/// in a module named `bridge_store_conformance` (or the name given after
/// `mod`). The argument is the same kind of expression as for
/// [`store_conformance!`]; the store must return itself from
/// [`Store::bridge_store`].
#[macro_export]
macro_rules! bridge_store_conformance {
    (mod $module:ident, $make:expr $(,)?) => {
        #[allow(unused_imports)]
        mod $module {
            use super::*;

            $crate::__store_conformance_checks! {
                $make;
                single:
                bridge_jobs_run_in_order_one_per_queue,
                bridge_jobs_are_deduplicated_while_kept,
                bridge_job_retries_wait_and_keep_order,
                bridge_failed_jobs_are_listed_and_requeued,
                bridge_jobs_are_scoped_by_bridge,
                bridge_links_read_both_ways,
                bridge_links_are_deleted_one_at_a_time,
                bridge_jobs_and_links_are_stored_together,
                bridge_jobs_are_cleared_per_bridge,
                bridge_lease_has_one_holder_until_it_runs_out,
                bridge_lease_is_released_by_its_holder_only;
                shared:
                bridge_lease_goes_to_one_of_racing_holders,
            }
        }
    };
    ($make:expr $(,)?) => {
        $crate::bridge_store_conformance!(mod bridge_store_conformance, $make);
    };
}

fn outbox(store: &dyn Store) -> &dyn crate::bridge::BridgeStore {
    store.bridge_store().expect("the store must return itself from Store::bridge_store")
}

fn job(bridge: &str, queue: &str, key: &str, created: i64) -> crate::bridge::NewJob {
    crate::bridge::NewJob {
        bridge: bridge.to_owned(),
        queue: queue.to_owned(),
        dedupe_key: key.to_owned(),
        kind: "post".to_owned(),
        payload: format!("{{\"key\":\"{key}\"}}"),
        created_at: at(created),
    }
}

fn keys(jobs: &[crate::bridge::Job]) -> Vec<&str> {
    jobs.iter().map(|j| j.dedupe_key.as_str()).collect()
}

/// Only the oldest pending job of each queue is due, in id order, and
/// finishing it makes the next one of its queue due.
pub async fn bridge_jobs_run_in_order_one_per_queue(store: &dyn Store) {
    let out = outbox(store);
    let batch =
        vec![job("b", "r1", "a1", 0), job("b", "r2", "b1", 1), job("b", "r1", "a2", 2), job("b", "r1", "a3", 3)];
    assert_eq!(ok(out.enqueue_jobs(batch).await, "enqueue_jobs"), 4);
    let due = ok(out.due_jobs("b", at(10), 10).await, "due_jobs");
    assert_eq!(keys(&due), ["a1", "b1"], "one job per queue, the oldest, in id order");
    assert!(due[0].id < due[1].id, "ids grow with enqueue order");
    let first = &due[0];
    assert_eq!(first.queue, "r1");
    assert_eq!(first.kind, "post");
    assert_eq!(first.payload, "{\"key\":\"a1\"}");
    assert_eq!(
        (first.status, first.attempts, first.run_at, first.created_at),
        (crate::bridge::JobStatus::Pending, 0, at(0), at(0))
    );
    assert_eq!(first.last_error, None);
    assert_eq!(ok(out.job("b", first.id).await, "job").as_ref(), Some(first));
    assert!(ok(out.finish_job("b", first.id).await, "finish_job"));
    assert!(!ok(out.finish_job("b", first.id).await, "finish_job"), "a finished job is gone");
    assert_eq!(ok(out.job("b", first.id).await, "job"), None);
    let due = ok(out.due_jobs("b", at(10), 10).await, "due_jobs");
    assert_eq!(keys(&due), ["b1", "a2"]);
    let due = ok(out.due_jobs("b", at(10), 1).await, "due_jobs");
    assert_eq!(keys(&due), ["b1"], "the limit applies");
    let due = ok(out.due_jobs("b", at(0), 10).await, "due_jobs");
    assert!(due.is_empty(), "jobs created after `now` are not due: {:?}", keys(&due));
    let counts = ok(out.job_counts("b").await, "job_counts");
    assert_eq!((counts.pending, counts.failed), (3, 0));
}

/// A job whose key is pending or failed is not enqueued again; once
/// finished, the key is free.
pub async fn bridge_jobs_are_deduplicated_while_kept(store: &dyn Store) {
    let out = outbox(store);
    let batch = vec![job("b", "r1", "k", 0), job("b", "r1", "k", 1)];
    assert_eq!(ok(out.enqueue_jobs(batch).await, "enqueue_jobs"), 1, "a duplicate inside one batch is skipped");
    assert_eq!(ok(out.enqueue_jobs(vec![job("b", "r2", "k", 2)]).await, "enqueue_jobs"), 0);
    let due = ok(out.due_jobs("b", at(10), 10).await, "due_jobs");
    assert_eq!(due.len(), 1);
    ok(out.fail_job("b", due[0].id, "gone").await, "fail_job");
    assert_eq!(
        ok(out.enqueue_jobs(vec![job("b", "r1", "k", 3)]).await, "enqueue_jobs"),
        0,
        "a failed job keeps its key"
    );
    ok(out.requeue_job("b", due[0].id, at(4)).await, "requeue_job");
    assert!(ok(out.finish_job("b", due[0].id).await, "finish_job"));
    assert_eq!(
        ok(out.enqueue_jobs(vec![job("b", "r1", "k", 5)]).await, "enqueue_jobs"),
        1,
        "a finished job frees its key"
    );
}

/// A retried job records the attempt and error, is not due before its time,
/// and still holds back the later jobs of its queue (but not other queues).
pub async fn bridge_job_retries_wait_and_keep_order(store: &dyn Store) {
    let out = outbox(store);
    let batch = vec![job("b", "r1", "a1", 0), job("b", "r1", "a2", 1), job("b", "r2", "b1", 2)];
    ok(out.enqueue_jobs(batch).await, "enqueue_jobs");
    let due = ok(out.due_jobs("b", at(10), 10).await, "due_jobs");
    let a1 = due[0].id;
    ok(out.retry_job_at("b", a1, at(100), "429 too many requests").await, "retry_job_at");
    ok(out.retry_job_at("b", a1, at(200), "500 server error").await, "retry_job_at");
    let due = ok(out.due_jobs("b", at(150), 10).await, "due_jobs");
    assert_eq!(keys(&due), ["b1"], "a waiting head holds back its own queue only");
    let due = ok(out.due_jobs("b", at(200), 10).await, "due_jobs");
    assert_eq!(keys(&due), ["a1", "b1"]);
    assert_eq!(due[0].attempts, 2);
    assert_eq!(due[0].run_at, at(200));
    assert_eq!(due[0].last_error.as_deref(), Some("500 server error"));
}

/// A failed job leaves the queue (the next job runs), is listed with its
/// error, and runs again, first, once requeued.
pub async fn bridge_failed_jobs_are_listed_and_requeued(store: &dyn Store) {
    use crate::bridge::JobStatus;
    let out = outbox(store);
    ok(out.enqueue_jobs(vec![job("b", "r1", "a1", 0), job("b", "r1", "a2", 1)]).await, "enqueue_jobs");
    let a1 = ok(out.due_jobs("b", at(10), 10).await, "due_jobs")[0].id;
    ok(out.fail_job("b", a1, "403 missing access").await, "fail_job");
    assert_eq!(keys(&ok(out.due_jobs("b", at(10), 10).await, "due_jobs")), ["a2"]);
    let failed = ok(out.jobs("b", JobStatus::Failed, 10).await, "jobs");
    assert_eq!(keys(&failed), ["a1"]);
    assert_eq!(failed[0].status, JobStatus::Failed);
    assert_eq!(failed[0].attempts, 1);
    assert_eq!(failed[0].last_error.as_deref(), Some("403 missing access"));
    assert_eq!(keys(&ok(out.jobs("b", JobStatus::Pending, 10).await, "jobs")), ["a2"]);
    let counts = ok(out.job_counts("b").await, "job_counts");
    assert_eq!((counts.pending, counts.failed), (1, 1));
    assert!(!ok(out.requeue_job("b", a1 + 1000, at(20)).await, "requeue_job"), "no such job");
    let a2 = ok(out.due_jobs("b", at(10), 10).await, "due_jobs")[0].id;
    assert!(!ok(out.requeue_job("b", a2, at(20)).await, "requeue_job"), "a pending job is not requeued");
    assert!(ok(out.requeue_job("b", a1, at(20)).await, "requeue_job"));
    let due = ok(out.due_jobs("b", at(20), 10).await, "due_jobs");
    assert_eq!(keys(&due), ["a1"], "the requeued job is again the head of its queue");
    assert_eq!((due[0].status, due[0].attempts, due[0].run_at), (JobStatus::Pending, 0, at(20)));
}

/// Jobs of one bridge are invisible to another.
pub async fn bridge_jobs_are_scoped_by_bridge(store: &dyn Store) {
    use crate::bridge::JobStatus;
    let out = outbox(store);
    ok(out.enqueue_jobs(vec![job("b", "r1", "k", 0), job("c", "r1", "k", 1)]).await, "enqueue_jobs");
    let b = ok(out.due_jobs("b", at(10), 10).await, "due_jobs");
    let c = ok(out.due_jobs("c", at(10), 10).await, "due_jobs");
    assert_eq!((b.len(), c.len()), (1, 1), "the same key and queue in two bridges are two jobs");
    assert_eq!(ok(out.job("c", b[0].id).await, "job"), None);
    assert!(!ok(out.finish_job("c", b[0].id).await, "finish_job"));
    assert!(out.fail_job("c", b[0].id, "x").await.is_err(), "failing another bridge's job is not found");
    assert_eq!(ok(out.jobs("b", JobStatus::Failed, 10).await, "jobs").len(), 0);
    assert_eq!(ok(out.job_counts("c").await, "job_counts").pending, 1);
}

/// A link reads from local to remote and back, is replaced by a later one,
/// and is scoped by bridge and kind.
pub async fn bridge_links_read_both_ways(store: &dyn Store) {
    let out = outbox(store);
    ok(out.set_link("b", "thread", "room-1", "111").await, "set_link");
    ok(out.set_link("b", "thread", "room-2", "222").await, "set_link");
    ok(out.set_link("b", "message", "room-1", "999").await, "set_link");
    ok(out.set_link("c", "thread", "room-1", "333").await, "set_link");
    assert_eq!(ok(out.remote_of("b", "thread", "room-1").await, "remote_of").as_deref(), Some("111"));
    assert_eq!(ok(out.local_of("b", "thread", "222").await, "local_of").as_deref(), Some("room-2"));
    assert_eq!(ok(out.local_of("b", "thread", "999").await, "local_of"), None, "kinds are separate");
    assert_eq!(ok(out.remote_of("b", "thread", "room-3").await, "remote_of"), None);
    ok(out.set_link("b", "thread", "room-1", "112").await, "set_link");
    assert_eq!(ok(out.remote_of("b", "thread", "room-1").await, "remote_of").as_deref(), Some("112"));
    assert_eq!(ok(out.local_of("b", "thread", "111").await, "local_of"), None, "the replaced link is gone");
    let links = ok(out.links("b", "thread").await, "links");
    let want = [("room-1".to_owned(), "112".to_owned()), ("room-2".to_owned(), "222".to_owned())];
    assert_eq!(links, want);
}

/// `delete_link` removes one link, in both directions, and says whether it
/// was there.
pub async fn bridge_links_are_deleted_one_at_a_time(store: &dyn Store) {
    let out = outbox(store);
    ok(out.set_link("b", "endpoint", "e1", "{\"url\":1}").await, "set_link");
    ok(out.set_link("b", "endpoint", "e2", "{\"url\":2}").await, "set_link");
    ok(out.set_link("c", "endpoint", "e1", "other").await, "set_link");
    assert!(ok(out.delete_link("b", "endpoint", "e1").await, "delete_link"));
    assert!(!ok(out.delete_link("b", "endpoint", "e1").await, "delete_link"), "deleted already");
    assert!(!ok(out.delete_link("b", "thread", "e2").await, "delete_link"), "kinds are separate");
    assert_eq!(ok(out.remote_of("b", "endpoint", "e1").await, "remote_of"), None);
    assert_eq!(ok(out.local_of("b", "endpoint", "{\"url\":1}").await, "local_of"), None);
    let links = ok(out.links("b", "endpoint").await, "links");
    assert_eq!(links, [("e2".to_owned(), "{\"url\":2}".to_owned())]);
    assert_eq!(ok(out.remote_of("c", "endpoint", "e1").await, "remote_of").as_deref(), Some("other"), "per bridge");
}

/// `enqueue_and_link` adds the jobs (skipping taken keys) and sets the links,
/// replacing earlier ones.
pub async fn bridge_jobs_and_links_are_stored_together(store: &dyn Store) {
    let out = outbox(store);
    let link = |local: &str, remote: &str| crate::bridge::NewLink {
        bridge: "b".into(),
        kind: "cursor".into(),
        local: local.into(),
        remote: remote.into(),
    };
    ok(out.enqueue_jobs(vec![job("b", "r1", "a1", 0)]).await, "enqueue_jobs");
    ok(out.set_link("b", "cursor", "r1", "1").await, "set_link");
    let jobs = vec![job("b", "r1", "a1", 1), job("b", "r1", "a2", 2), job("b", "r2", "b1", 3)];
    let added = ok(out.enqueue_and_link(jobs, vec![link("r1", "2"), link("r2", "1")]).await, "enqueue_and_link");
    assert_eq!(added, 2, "a taken key is skipped");
    assert_eq!(keys(&ok(out.due_jobs("b", at(10), 10).await, "due_jobs")), ["a1", "b1"], "queues keep their order");
    assert_eq!(ok(out.remote_of("b", "cursor", "r1").await, "remote_of").as_deref(), Some("2"), "replaced");
    assert_eq!(ok(out.remote_of("b", "cursor", "r2").await, "remote_of").as_deref(), Some("1"));
    assert_eq!(ok(out.enqueue_and_link(Vec::new(), Vec::new()).await, "enqueue_and_link"), 0, "nothing at all");
}

/// `clear_jobs` removes every job of one bridge, pending and failed, and
/// leaves other bridges' jobs and its own links alone; the keys are free again.
pub async fn bridge_jobs_are_cleared_per_bridge(store: &dyn Store) {
    use crate::bridge::JobStatus;
    let out = outbox(store);
    let batch = vec![job("b", "r1", "a1", 0), job("b", "r2", "b1", 1), job("c", "r1", "a1", 2)];
    ok(out.enqueue_jobs(batch).await, "enqueue_jobs");
    ok(out.set_link("b", "thread", "r1", "1").await, "set_link");
    let a1 = ok(out.due_jobs("b", at(10), 10).await, "due_jobs")[0].id;
    ok(out.fail_job("b", a1, "gone").await, "fail_job");
    assert_eq!(ok(out.clear_jobs("b").await, "clear_jobs"), 2, "the pending and the failed one");
    let counts = ok(out.job_counts("b").await, "job_counts");
    assert_eq!((counts.pending, counts.failed), (0, 0));
    assert!(ok(out.jobs("b", JobStatus::Failed, 10).await, "jobs").is_empty());
    assert_eq!(ok(out.job_counts("c").await, "job_counts").pending, 1, "another bridge keeps its jobs");
    assert_eq!(ok(out.remote_of("b", "thread", "r1").await, "remote_of").as_deref(), Some("1"), "links stay");
    assert_eq!(ok(out.clear_jobs("b").await, "clear_jobs"), 0);
    assert_eq!(ok(out.enqueue_jobs(vec![job("b", "r1", "a1", 3)]).await, "enqueue_jobs"), 1, "the key is free");
}

/// A lease has one holder: others are refused while it lasts, its holder
/// renews it, and once it ran out another takes it (and the old holder
/// learns it lost it).
pub async fn bridge_lease_has_one_holder_until_it_runs_out(store: &dyn Store) {
    let out = outbox(store);
    assert!(ok(out.acquire_lease("b", "p1", at(0), at(100)).await, "acquire_lease"), "a free lease is granted");
    assert!(!ok(out.acquire_lease("b", "p2", at(50), at(150)).await, "acquire_lease"), "a held lease is refused");
    assert!(ok(out.acquire_lease("c", "p2", at(50), at(150)).await, "acquire_lease"), "leases are per bridge");
    assert!(ok(out.acquire_lease("b", "p1", at(60), at(160)).await, "acquire_lease"), "its holder renews it");
    assert!(!ok(out.acquire_lease("b", "p2", at(120), at(220)).await, "acquire_lease"), "the renewal counts");
    assert!(ok(out.acquire_lease("b", "p2", at(160), at(260)).await, "acquire_lease"), "a lease that ran out is taken");
    assert!(!ok(out.acquire_lease("b", "p1", at(170), at(270)).await, "acquire_lease"), "the old holder lost it");
}

/// A holder gives its lease up and another takes it at once; a release by
/// anyone else changes nothing.
pub async fn bridge_lease_is_released_by_its_holder_only(store: &dyn Store) {
    let out = outbox(store);
    assert!(ok(out.acquire_lease("b", "p1", at(0), at(100)).await, "acquire_lease"));
    assert!(!ok(out.release_lease("b", "p2").await, "release_lease"), "not p2's to release");
    assert!(!ok(out.acquire_lease("b", "p2", at(10), at(110)).await, "acquire_lease"));
    assert!(ok(out.release_lease("b", "p1").await, "release_lease"));
    assert!(!ok(out.release_lease("b", "p1").await, "release_lease"), "released already");
    assert!(ok(out.acquire_lease("b", "p2", at(20), at(120)).await, "acquire_lease"), "free again at once");
}

/// Holders racing for a free lease, many times over: exactly one wins each time.
pub async fn bridge_lease_goes_to_one_of_racing_holders(store: Arc<dyn Store>) {
    for round in 0..20_i64 {
        let bridge = format!("race-{round}");
        let mut tasks = Vec::new();
        for holder in 0..8 {
            let store = store.clone();
            let bridge = bridge.clone();
            tasks.push(tokio::spawn(async move {
                let out = store.bridge_store().expect("a bridge store");
                ok(out.acquire_lease(&bridge, &format!("p{holder}"), at(0), at(1000)).await, "acquire_lease")
            }));
        }
        let mut winners = 0;
        for task in tasks {
            if task.await.expect("the task ran") {
                winners += 1;
            }
        }
        assert_eq!(winners, 1, "round {round}: one holder wins");
    }
}

// ---------------------------------------------------------------------------
// Search

/// A message with this body.
fn said(room: RoomId, sender: &str, client_msg_id: &str, created: i64, body: &str) -> NewMessage {
    NewMessage { body: body.to_owned(), ..msg(room, sender, client_msg_id, created) }
}

/// `user`'s search for `q`, in `room` only when given.
fn search_for(user: &str, q: &str, room: Option<RoomId>, limit: u32, before: Option<String>) -> SearchQuery {
    SearchQuery { user: uid(user), words: words(q), room, limit, before }
}

async fn search(store: &dyn Store, query: SearchQuery) -> SearchPage {
    let what = format!("search_messages({query:?})");
    let page = ok(store.search_messages(&query).await, &what);
    assert!(page.results.len() <= query.limit as usize, "{what} returned more than its limit");
    for hit in &page.results {
        assert_eq!(hit.room.id, hit.message.room_id, "{what}: a result's room is its message's");
    }
    page
}

/// The bodies found, in order.
fn bodies(page: &SearchPage) -> Vec<&str> {
    page.results.iter().map(|h| h.message.body.as_str()).collect()
}

/// `search_messages` finds messages holding every word of the query as whole
/// words, case and accents folded, in the rooms the user is a member of (or
/// the one named), newest first.
pub async fn search_finds_whole_words_folded_in_the_users_rooms(store: &dyn Store) {
    let shared = group(store, &["ada", "bob"], 0).await;
    let own = group(store, &["ada"], 1).await;
    let elsewhere = group(store, &["cy"], 2).await;
    append(store, vec![said(shared.id, "bob", "m1", 10, "Élan vital, said Bob")]).await;
    append(store, vec![said(shared.id, "ada", "m2", 11, "the elans are fine")]).await;
    append(store, vec![said(elsewhere.id, "cy", "m3", 12, "elan elsewhere")]).await;
    append(store, vec![said(own.id, "ada", "m4", 13, "ÉLAN in room two!")]).await;
    append(store, vec![said(shared.id, "bob", "m5", 14, "nothing to see")]).await;

    let page = search(store, search_for("ada", "elan", None, 10, None)).await;
    assert_eq!(bodies(&page), ["ÉLAN in room two!", "Élan vital, said Bob"], "whole words, folded, newest first");
    assert_eq!(page.next, None, "one page");
    assert_eq!(page.results[0].room.id, own.id);
    let page = search(store, search_for("ada", "ÉLAN Vital", None, 10, None)).await;
    assert_eq!(bodies(&page), ["Élan vital, said Bob"], "every word must match");
    let page = search(store, search_for("ada", "elan", Some(shared.id), 10, None)).await;
    assert_eq!(bodies(&page), ["Élan vital, said Bob"], "only the room asked for");
    let page = search(store, search_for("cy", "elan", None, 10, None)).await;
    assert_eq!(bodies(&page), ["elan elsewhere"], "only the searcher's rooms");
    let page = search(store, search_for("ada", "elan", Some(elsewhere.id), 10, None)).await;
    assert!(page.results.is_empty(), "never a room the searcher is not in, even when named");
    assert!(search(store, search_for("nobody", "elan", None, 10, None)).await.results.is_empty());
    assert!(search(store, search_for("ada", "ela", None, 10, None)).await.results.is_empty(), "not prefixes");
    let page = search(store, search_for("bob", "\"said* (bob^ -", None, 10, None)).await;
    assert_eq!(bodies(&page), ["Élan vital, said Bob"], "punctuation is no query syntax");
}

/// Only current text is found: an edit changes what matches, a deleted
/// message is never found, and a member who left no longer finds the room's
/// messages.
pub async fn search_follows_edits_deletes_and_membership(store: &dyn Store) {
    let room = group(store, &["ada", "bob"], 0).await;
    let out = append(store, vec![said(room.id, "ada", "m1", 10, "apple pie")]).await;
    let id = out[0].message.id;
    let found = |q: &'static str, user: &'static str| async move {
        search(store, search_for(user, q, None, 10, None))
            .await
            .results
            .iter()
            .map(|h| h.message.id)
            .collect::<Vec<_>>()
    };
    assert_eq!(found("apple", "bob").await, [id]);
    ok(store.edit_message(room.id, id, "banana split", at(11)).await, "edit_message");
    assert!(found("apple", "bob").await.is_empty(), "words an edit removed are not found");
    assert_eq!(found("banana", "bob").await, [id], "the edited text is");
    let page = search(store, search_for("bob", "banana", None, 10, None)).await;
    assert_eq!(page.results[0].message.body, "banana split", "the message as it is now");
    ok(store.delete_message(room.id, id, at(12)).await, "delete_message");
    assert!(found("banana", "bob").await.is_empty(), "a deleted message is not found");

    append(store, vec![said(room.id, "ada", "m2", 13, "cherry tart")]).await;
    assert_eq!(found("cherry", "bob").await.len(), 1);
    assert!(ok(store.remove_member(room.id, &uid("bob")).await, "remove_member"));
    assert!(found("cherry", "bob").await.is_empty(), "a member who left no longer finds the room");
    assert_eq!(found("cherry", "ada").await.len(), 1, "the others still do");
}

/// Results come newest first in pages of `limit`; each page's `next` leads
/// to the next older one, until a page without `next`; every result once.
pub async fn search_pages_newest_first(store: &dyn Store) {
    let r1 = group(store, &["ada"], 0).await;
    let r2 = group(store, &["ada"], 1).await;
    let mut want = Vec::new();
    for i in 0..7 {
        let room = if i % 2 == 0 { r1.id } else { r2.id };
        let out = append(store, vec![said(room, "ada", &format!("m{i}"), 10 + i, &format!("note number {i}"))]).await;
        want.push(out[0].message.id);
        append(store, vec![said(room, "ada", &format!("other{i}"), 10 + i, "unrelated")]).await;
    }
    want.reverse();
    let mut got = Vec::new();
    let mut before = None;
    let mut pages = 0;
    loop {
        let page = search(store, search_for("ada", "NOTE", None, 3, before.take())).await;
        pages += 1;
        got.extend(page.results.iter().map(|h| h.message.id));
        match page.next {
            Some(next) => before = Some(next),
            None => break,
        }
        assert!(pages < 10, "paging does not end");
    }
    assert_eq!(got, want, "every result once, newest first");
    assert_eq!(pages, 3, "pages of 3, 3 and 1");
    let bad = store.search_messages(&search_for("ada", "note", None, 3, Some("not a cursor".into()))).await;
    assert_eq!(bad.map(|p| p.results.len()).map_err(|e| e.code().as_str()), Err("invalid"), "a cursor it did not make");
}

// ---------------------------------------------------------------------------
// Attachments

fn files(store: &dyn Store) -> &dyn crate::store::AttachmentStore {
    store.attachment_store().expect("this check needs a store that keeps attachment records")
}

/// A record comes back as it went in, alone and among others, and counts
/// towards its uploader's usage (at least `MIN_ACCOUNTED_BYTES` each).
pub async fn attachment_records_keep_their_fields(store: &dyn Store) {
    let mut image = stored_attachment("ada", "cat.png", 200_000, at(1));
    image.content_type = "image/png".into();
    image.width = Some(640);
    image.height = Some(480);
    image.thumbnail = Some(crate::attachment::Thumbnail { content_type: "image/jpeg".into(), size: 9_000 });
    ok(files(store).insert_attachment(&image, 0).await, "insert_attachment");
    let small = record(store, "ada", "é.txt", 10, at(2)).await;
    let other = record(store, "bob", "b.bin", 5, at(3)).await;
    assert_eq!(ok(files(store).attachment(image.id).await, "attachment"), Some(image.clone()));
    assert_eq!(ok(files(store).attachment(crate::AttachmentId::generate()).await, "attachment"), None);
    let mut got =
        ok(files(store).attachments(&[small.id, image.id, crate::AttachmentId::generate()]).await, "attachments");
    got.sort_by_key(|a| a.id);
    assert_eq!(got, [image.clone(), small.clone()], "the known ones");
    let usage = ok(files(store).attachment_usage(&uid("ada")).await, "attachment_usage");
    assert_eq!(
        usage,
        209_000 + crate::attachment::MIN_ACCOUNTED_BYTES,
        "sizes, thumbnails and the least a file counts"
    );
    assert_eq!(ok(files(store).attachment_usage(&uid("bob")).await, "usage"), other.accounted_bytes());
    assert_eq!(ok(files(store).attachment_usage(&uid("carol")).await, "usage"), 0);
    // A full quota refuses, and records nothing.
    let quota = usage + 100_000;
    let big = stored_attachment("ada", "big", 100_001, at(4));
    let refused = files(store).insert_attachment(&big, quota).await;
    assert_eq!(refused.map_err(|e| e.code().as_str()), Err("too_large"), "past the quota");
    assert_eq!(ok(files(store).attachment(big.id).await, "attachment"), None, "a refused upload is not recorded");
    let fits = stored_attachment("ada", "fits", 100_000, at(4));
    ok(files(store).insert_attachment(&fits, quota).await, "an upload that fits exactly");
}

/// `append_messages` posts the sender's own attachments that were never
/// posted, binding them to the message; anything else refuses that message
/// alone with `conflict`.
pub async fn append_posts_an_attachment_once_and_only_the_senders(store: &dyn Store) {
    let room = group(store, &["s", "t"], 0).await;
    let mine = uploaded(store, "s", "mine", 1).await;
    let theirs = uploaded(store, "t", "theirs", 1).await;
    let mut first = msg(room.id, "s", "first", 1);
    first.attachments = vec![mine.clone()];
    let mut again = msg(room.id, "s", "again", 2);
    again.attachments = vec![mine.clone()];
    let mut stolen = msg(room.id, "s", "stolen", 3);
    stolen.attachments = vec![theirs.clone()];
    let mut unknown = msg(room.id, "s", "unknown", 4);
    unknown.attachments = vec![
        crate::attachment::StoredAttachment {
            id: crate::AttachmentId::generate(),
            ..stored_attachment("s", "x", 1, at(0))
        }
        .to_attachment(),
    ];
    let plain = msg(room.id, "s", "plain", 5);
    let answers = ok(store.append_messages(vec![first, again, stolen, unknown, plain]).await, "append_messages");
    assert_eq!(codes(&answers), ["ok", "conflict", "conflict", "conflict", "ok"]);
    let posted = answers[0].as_ref().map(|a| a.message.clone()).expect("the first post");
    assert_eq!(posted.attachments, std::slice::from_ref(&mine), "the message carries the file");
    assert_eq!(seqs(&ok(store.history(room.id, q(None, None, 10)).await, "history").messages), [1, 2], "no gap");
    let id: crate::AttachmentId = mine.id.parse().expect("an attachment id");
    let record = ok(files(store).attachment(id).await, "attachment").expect("kept");
    assert_eq!(record.posted, Some(crate::attachment::Posted { room_id: room.id, message_id: posted.id }));
    let theirs_id: crate::AttachmentId = theirs.id.parse().expect("an attachment id");
    assert_eq!(ok(files(store).attachment(theirs_id).await, "attachment").and_then(|r| r.posted), None);
    // A repeat of the first send answers the stored message, not a conflict.
    let mut repeat = msg(room.id, "s", "first", 1);
    repeat.attachments = vec![mine];
    let answers = ok(store.append_messages(vec![repeat]).await, "append_messages");
    assert!(matches!(&answers[0], Ok(a) if !a.created && a.message.id == posted.id), "{answers:?}");
}

/// Deleting a message marks its files removed: no longer counted, listed
/// for the clean-up.
pub async fn deleting_a_message_removes_its_attachments(store: &dyn Store) {
    let room = group(store, &["s"], 0).await;
    let file = uploaded(store, "s", "f", 70_000).await;
    let mut new = msg(room.id, "s", "m", 1);
    new.attachments = vec![file.clone()];
    let m = append(store, vec![new]).await.remove(0).message;
    assert_eq!(ok(files(store).attachment_usage(&uid("s")).await, "usage"), 70_000);
    ok(store.delete_message(room.id, m.id, at(5)).await, "delete_message");
    let id: crate::AttachmentId = file.id.parse().expect("an attachment id");
    let record = ok(files(store).attachment(id).await, "attachment").expect("kept until purged");
    assert!(record.removed, "removed with its message");
    assert_eq!(ok(files(store).attachment_usage(&uid("s")).await, "usage"), 0, "removed files count for nothing");
    let purge = ok(files(store).attachments_to_purge(at(0), 10).await, "attachments_to_purge");
    assert_eq!(purge.iter().map(|a| a.id).collect::<Vec<_>>(), [id]);
}

/// The clean-up's list: removed files, and files never posted uploaded
/// before the cut-off; `mark_removed` spares a file posted meanwhile.
pub async fn purge_lists_orphans_and_removed_files_only(store: &dyn Store) {
    let room = group(store, &["s"], 0).await;
    let old = record(store, "s", "old", 1, at(10)).await;
    let recent = record(store, "s", "recent", 1, at(30)).await;
    let posted_old = record(store, "s", "posted", 1, at(10)).await;
    let mut new = msg(room.id, "s", "m", 40);
    new.attachments = vec![posted_old.to_attachment()];
    append(store, vec![new]).await;
    let cutoff = at(20);
    let listed = ok(files(store).attachments_to_purge(cutoff, 10).await, "attachments_to_purge");
    assert_eq!(listed.iter().map(|a| a.id).collect::<Vec<_>>(), [old.id], "only the old orphan");
    assert!(ok(files(store).attachments_to_purge(cutoff, 0).await, "limit 0").is_empty());
    assert!(!ok(files(store).mark_removed(posted_old.id, cutoff).await, "mark_removed"), "a posted file is kept");
    assert!(!ok(files(store).mark_removed(recent.id, cutoff).await, "mark_removed"), "a recent upload is kept");
    assert!(ok(files(store).mark_removed(old.id, cutoff).await, "mark_removed"));
    // Once marked, no message can take it.
    let mut late = msg(room.id, "s", "late", 50);
    late.attachments = vec![old.to_attachment()];
    let answers = ok(store.append_messages(vec![late]).await, "append_messages");
    assert_eq!(codes(&answers), ["conflict"]);
    ok(files(store).forget_attachment(old.id).await, "forget_attachment");
    assert_eq!(ok(files(store).attachment(old.id).await, "attachment"), None);
    ok(files(store).forget_attachment(recent.id).await, "forget_attachment of a file not removed");
    assert!(ok(files(store).attachment(recent.id).await, "attachment").is_some(), "only removed records are forgotten");
}

// ---------------------------------------------------------------------------
// Push subscriptions

fn push(store: &dyn Store) -> &dyn crate::push::PushStore {
    store.push_store().expect("this check needs a store that keeps push subscriptions")
}

fn subscription(user: &str, endpoint: &str, created: i64) -> crate::push::PushSubscription {
    crate::push::PushSubscription {
        user_id: uid(user),
        endpoint: format!("https://push.example/{endpoint}"),
        p256dh: format!("key-{endpoint}"),
        auth: format!("auth-{endpoint}"),
        created_at: at(created),
    }
}

fn endpoints(list: &[crate::push::PushSubscription]) -> Vec<&str> {
    list.iter().map(|s| s.endpoint.trim_start_matches("https://push.example/")).collect()
}

/// An endpoint is stored once, whoever subscribes it last; a user keeps at
/// most `max`, the oldest going first; the fields come back as stored.
pub async fn push_subscriptions_are_one_per_endpoint_and_capped_per_user(store: &dyn Store) {
    let subs = push(store);
    for i in 0..4 {
        ok(subs.add_push_subscription(&subscription("a", &format!("e{i}"), i), 3).await, "add_push_subscription");
    }
    let mine = ok(subs.push_subscriptions(&uid("a")).await, "push_subscriptions");
    assert_eq!(endpoints(&mine), ["e1", "e2", "e3"], "the oldest went");
    assert_eq!(mine[0], subscription("a", "e1", 1), "fields are kept");

    // The same endpoint again, with new keys: replaced, and now the newest.
    let mut again = subscription("a", "e1", 10);
    again.p256dh = "new-key".into();
    ok(subs.add_push_subscription(&again, 3).await, "add_push_subscription");
    let mine = ok(subs.push_subscriptions(&uid("a")).await, "push_subscriptions");
    assert_eq!(endpoints(&mine), ["e2", "e3", "e1"]);
    assert_eq!(ok(subs.push_subscription(&again.endpoint).await, "push_subscription"), Some(again));

    // Another user subscribes that browser: it is theirs from then on.
    ok(subs.add_push_subscription(&subscription("b", "e2", 11), 3).await, "add_push_subscription");
    assert_eq!(endpoints(&ok(subs.push_subscriptions(&uid("a")).await, "push_subscriptions")), ["e3", "e1"]);
    assert_eq!(endpoints(&ok(subs.push_subscriptions(&uid("b")).await, "push_subscriptions")), ["e2"]);
    assert_eq!(ok(subs.push_subscription("https://push.example/none").await, "push_subscription"), None);
}

/// A user removes only their own subscription; a gone endpoint is removed
/// unless it was stored again after the push that found it gone; deleting
/// a user removes theirs.
pub async fn push_subscriptions_are_removed_by_their_user_or_when_gone(store: &dyn Store) {
    let subs = push(store);
    let mine = subscription("a", "e1", 5);
    ok(subs.add_push_subscription(&mine, 10).await, "add_push_subscription");
    assert!(!ok(subs.remove_push_subscription(&uid("b"), &mine.endpoint).await, "remove"), "not b's");
    assert!(ok(subs.remove_push_subscription(&uid("a"), &mine.endpoint).await, "remove"));
    assert!(!ok(subs.remove_push_subscription(&uid("a"), &mine.endpoint).await, "remove"), "gone already");

    ok(subs.add_push_subscription(&mine, 10).await, "add_push_subscription");
    assert!(!ok(subs.forget_push_endpoint(&mine.endpoint, at(4)).await, "forget"), "stored again since");
    assert_eq!(ok(subs.push_subscriptions(&uid("a")).await, "push_subscriptions").len(), 1);
    assert!(ok(subs.forget_push_endpoint(&mine.endpoint, at(5)).await, "forget"));
    assert!(ok(subs.push_subscriptions(&uid("a")).await, "push_subscriptions").is_empty());

    // A deleted user's subscriptions go with them.
    ok(store.upsert_user(&user("a", "A")).await, "upsert_user");
    ok(subs.add_push_subscription(&mine, 10).await, "add_push_subscription");
    assert!(ok(store.delete_user(&uid("a"), at(9)).await, "delete_user").is_some());
    assert!(ok(subs.push_subscriptions(&uid("a")).await, "push_subscriptions").is_empty());
}

/// Push goes to members with a subscription who did not mute the room until
/// after now and are active, in every room asked about at once.
pub async fn push_recipients_are_subscribed_members_who_did_not_mute(store: &dyn Store) {
    let subs = push(store);
    assert!(!ok(subs.any_push_subscription().await, "any_push_subscription"), "nobody yet");
    let room = group(store, &["s", "a", "b", "c", "d"], 0).await;
    let other = group(store, &["a", "x"], 1).await;
    for (user, endpoint) in [("s", "s1"), ("a", "a1"), ("a", "a2"), ("b", "b1"), ("c", "c1"), ("x", "x1")] {
        ok(subs.add_push_subscription(&subscription(user, endpoint, 1), 10).await, "add_push_subscription");
    }
    assert!(ok(subs.any_push_subscription().await, "any_push_subscription"));
    let now = Timestamp::now();
    assert!(ok(store.set_muted(room.id, &uid("b"), Some(now.plus(std::time::Duration::from_secs(60)))).await, "mute"));
    assert!(ok(store.set_muted(room.id, &uid("c"), Some(at(1))).await, "mute"), "a mute that ended");
    let pairs = |list: Vec<(RoomId, UserId)>| {
        let mut names: Vec<String> = list
            .into_iter()
            .map(|(r, u)| {
                format!(
                    "{}:{u}",
                    if r == room.id {
                        "room"
                    } else if r == other.id {
                        "other"
                    } else {
                        "?"
                    }
                )
            })
            .collect();
        names.sort();
        names
    };
    let both = [room.id, other.id, room.id];
    let to = pairs(ok(subs.push_recipients(&both, now).await, "push_recipients"));
    assert_eq!(
        to,
        ["other:a", "other:x", "room:a", "room:c", "room:s"],
        "d has no subscription, b muted; each pair once"
    );
    assert!(ok(store.set_muted(room.id, &uid("a"), Some(MUTED_FOREVER)).await, "mute"));
    ok(store.upsert_user(&user("c", "C")).await, "upsert_user");
    assert!(ok(store.set_user_active(&uid("c"), false).await, "set_user_active"));
    let to = pairs(ok(subs.push_recipients(&[room.id], now).await, "push_recipients"));
    assert_eq!(to, ["room:s"], "a muted for good, c deactivated");
    let unknown = ok(subs.push_recipients(&[RoomId::generate()], now).await, "push_recipients");
    assert!(unknown.is_empty());
    assert!(ok(subs.push_recipients(&[], now).await, "push_recipients").is_empty());
}

/// `server_secret` stores the first candidate and answers it from then on.
pub async fn server_secrets_keep_the_first_value(store: &dyn Store) {
    assert_eq!(ok(store.server_secret("k", "one").await, "server_secret"), "one");
    assert_eq!(ok(store.server_secret("k", "two").await, "server_secret"), "one");
    assert_eq!(ok(store.server_secret("other", "two").await, "server_secret"), "two");
}

/// Twenty uploads of one user racing for a quota ten of them fit: exactly ten
/// are recorded.
pub async fn attachment_quota_holds_under_concurrent_uploads(store: std::sync::Arc<dyn Store>) {
    let quota = 10 * 100_000;
    let tasks: Vec<_> = (0..20)
        .map(|i| {
            let store = store.clone();
            tokio::spawn(async move {
                let record = stored_attachment("racer", &format!("f{i}"), 100_000, at(i));
                files(store.as_ref()).insert_attachment(&record, quota).await
            })
        })
        .collect();
    let mut stored = 0;
    for task in tasks {
        match task.await.expect("upload task") {
            Ok(()) => stored += 1,
            Err(e) => assert_eq!(e.code().as_str(), "too_large", "{e:?}"),
        }
    }
    assert_eq!(stored, 10, "exactly what the quota holds");
    assert_eq!(ok(files(store.as_ref()).attachment_usage(&uid("racer")).await, "usage"), quota);
}

/// Ten sends racing to post one file: exactly one message carries it.
pub async fn an_attachment_is_posted_once_under_racing_sends(store: std::sync::Arc<dyn Store>) {
    let room = group(store.as_ref(), &["s"], 0).await;
    let file = uploaded(store.as_ref(), "s", "f", 1).await;
    let tasks: Vec<_> = (0..10)
        .map(|i| {
            let (store, file) = (store.clone(), file.clone());
            tokio::spawn(async move {
                let mut new = msg(room.id, "s", &format!("m{i}"), i);
                new.attachments = vec![file];
                store.append_messages(vec![new]).await
            })
        })
        .collect();
    let mut posted = 0;
    for task in tasks {
        let answers = ok(task.await.expect("send task"), "append_messages");
        match &answers[0] {
            Ok(_) => posted += 1,
            Err(e) => assert_eq!(e.code().as_str(), "conflict", "{e:?}"),
        }
    }
    assert_eq!(posted, 1, "one message took the file");
    assert_eq!(seqs(&ok(store.history(room.id, q(None, None, 100)).await, "history").messages), [1], "no gap");
}
