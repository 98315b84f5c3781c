//! Accounts (`users.rs`): who may connect as the store has it, and what the
//! admin API does to users: deactivation, revocation, deletion, profile
//! changes and the user list. The same is checked over HTTP and WebSocket,
//! on every store and across processes, in `server/tests/admin.rs`.

use super::*;
use crate::broker::LocalBus;

/// An identity whose credentials were issued `secs` seconds from now
/// (negative: in the past).
fn issued(id: &str, secs: i64) -> Identity {
    let at = Timestamp::from_secs(Timestamp::now().as_secs() + secs);
    Identity { issued_at: Some(at), ..Identity::new(uid(id)) }
}

/// The error code of a refused session opening.
async fn refused(engine: &Engine, identity: Identity) -> (&'static str, String) {
    match engine.open_session(identity).await {
        Ok((session, _)) => panic!("{} was let in", session.user().id),
        Err(err) => (err.code().as_str(), err.to_string()),
    }
}

fn user_left(ev: Event) -> (RoomId, UserId) {
    match ev {
        Event::UserLeft(e) => (e.room_id, e.user_id),
        other => panic!("expected user:left, got {other:?}"),
    }
}

#[tokio::test(start_paused = true)]
async fn deactivation_ends_every_session_and_refuses_until_reactivated() {
    let engine = engine().await;
    let mut first = connect(&engine, "ada").await;
    let mut second = connect(&engine, "ada").await;
    let mut bob = connect(&engine, "bob").await;
    engine.deactivate_user(&uid("ada")).await.expect("ada is deactivated");
    assert_eq!(first.closed().await, CloseReason::Revoked);
    assert_eq!(second.closed().await, CloseReason::Revoked);
    bob.ok(Command::Ping).await;
    let (code, why) = refused(&engine, Identity::new(uid("ada"))).await;
    assert_eq!((code, why.as_str()), ("unauthorized", "the user is deactivated"));
    assert!(!engine.account(&uid("ada")).await.expect("listed").active);

    engine.reactivate_user(&uid("ada")).await.expect("ada is reactivated");
    let mut back = connect(&engine, "ada").await;
    back.ok(Command::Ping).await;
    assert_eq!(engine.deactivate_user(&uid("nobody")).await.map_err(|e| e.code().as_str()), Err("not_found"));
    assert_eq!(engine.reactivate_user(&uid("nobody")).await.map_err(|e| e.code().as_str()), Err("not_found"));
}

#[tokio::test(start_paused = true)]
async fn revocation_refuses_credentials_issued_until_its_second() {
    let engine = engine().await;
    let mut old = connect_as(&engine, issued("ada", -10)).await;
    engine.revoke_tokens(&uid("ada")).await.expect("revoked");
    assert_eq!(old.closed().await, CloseReason::Revoked);
    for (identity, what) in [
        (issued("ada", -10), "issued before"),
        (issued("ada", 0), "issued in the same second"),
        (Identity::new(uid("ada")), "without an issue time"),
    ] {
        let (code, why) = refused(&engine, identity).await;
        assert_eq!((code, why.as_str()), ("unauthorized", "token revoked"), "credentials {what}");
    }
    let mut fresh = connect_as(&engine, issued("ada", 1)).await;
    fresh.ok(Command::Ping).await;
    // HTTP routes ask the same.
    assert_eq!(engine.authorize(&issued("ada", -1)).await.map_err(|e| e.code().as_str()), Err("unauthorized"));
    assert!(engine.authorize(&issued("ada", 1)).await.is_ok());
    assert_eq!(engine.revoke_tokens(&uid("nobody")).await.map_err(|e| e.code().as_str()), Err("not_found"));
}

#[tokio::test(start_paused = true)]
async fn a_deleted_user_leaves_their_rooms_and_is_shown_as_deleted() {
    let engine = engine().await;
    let mut ada = connect(&engine, "ada").await;
    let mut bob = connect(&engine, "bob").await;
    let room = ada.group(Visibility::Private, &[uid("bob")]).await;
    ada.join(room.id).await;
    bob.join(room.id).await;
    bob.drain().await;
    let said = ada.say(room.id, "before").await;
    assert_eq!(message_new(bob.event().await).id, said.id);
    ada.ok(typing_start(room.id)).await;
    assert!(typing_of(bob.event().await).2);

    engine.delete_user(&uid("ada")).await.expect("ada is deleted");
    assert_eq!(ada.closed().await, CloseReason::Revoked);
    // Her typing ends with her, then the room hears she left.
    assert_eq!(typing_of(bob.event().await), (room.id, uid("ada"), false));
    assert_eq!(user_left(bob.event().await), (room.id, uid("ada")));

    let joined = bob.join(room.id).await;
    assert_eq!(ids(&joined.members), ["bob", "ada"], "she is listed after the members");
    assert_eq!(joined.members[1], User::deleted(uid("ada")), "as a deleted user");
    assert_eq!(engine.store().member_count(room.id).await.expect("count"), 1, "she is no member any more");
    let page = page_of(bob.ok(history(room.id, None, None, None)).await);
    assert_eq!(page.messages.iter().map(|m| m.sender_id.as_str()).collect::<Vec<_>>(), ["ada"], "her message stays");
    let shown = engine.store().users(&[uid("ada")]).await.expect("users");
    assert_eq!(shown, [User::deleted(uid("ada"))]);
    assert_eq!(
        serde_json::to_value(&shown[0]).expect("json"),
        serde_json::json!({"id": "ada", "name": "Deleted user", "deleted": true})
    );

    let (code, why) = refused(&engine, Identity::new(uid("ada"))).await;
    assert_eq!((code, why.as_str()), ("unauthorized", "the user was deleted"));
    assert_eq!(bob.err(invite(room.id, &uid("ada"))).await, "not_found");
    assert_eq!(bob.err(create(RoomKind::Direct, None, &[uid("ada")])).await, "not_found");
    let Reply::Users { users } = bob.ok(search("ada", None)).await else { panic!("expected users") };
    assert!(users.is_empty(), "search never finds her");
    let again = engine.put_user(User::new(uid("ada"), "Ada")).await;
    assert_eq!(again.map_err(|e| e.code().as_str()), Err("conflict"), "she is not made again");
    assert_eq!(engine.upsert_user(User::new(uid("ada"), "Ada")).await.map_err(|e| e.code().as_str()), Err("conflict"));
    assert_eq!(engine.account(&uid("ada")).await.map_err(|e| e.code().as_str()), Err("not_found"));
    assert_eq!(engine.delete_user(&uid("ada")).await.map_err(|e| e.code().as_str()), Err("not_found"));
    assert!(engine.accounts(None, None, None).await.expect("list").accounts.iter().all(|a| a.user.id != uid("ada")));
    bob.quiet().await;
}

#[tokio::test(start_paused = true)]
async fn an_operators_profile_wins_over_the_claims_of_older_credentials() {
    let engine = engine().await;
    let claims = Identity { name: Some("Ada".into()), roles: Some(vec!["support".into()]), ..issued("ada", -5) };
    let mut ada = connect_as(&engine, claims.clone()).await;
    assert!(ada.ready.user.is_support());
    // An empty change changes nothing, and is no operator's change.
    let same = engine.update_user(&uid("ada"), crate::user::UserPatch::default()).await.expect("nothing to do");
    assert_eq!(same.name, "Ada");
    assert_eq!(engine.account(&uid("ada")).await.expect("ada").profile_set_at, None);

    // A new name alone leaves the session be; new roles end it.
    let renamed = crate::user::UserPatch { name: Some("Ada L.".into()), ..Default::default() };
    assert_eq!(engine.update_user(&uid("ada"), renamed).await.expect("patched").name, "Ada L.");
    ada.ok(Command::Ping).await;
    let demoted = crate::user::UserPatch { roles: Some(Vec::new()), ..Default::default() };
    assert!(engine.update_user(&uid("ada"), demoted).await.expect("patched").roles.is_empty());
    assert_eq!(ada.closed().await, CloseReason::Revoked);

    // The same credentials come back: the stored profile wins over them.
    let again = connect_as(&engine, claims.clone()).await;
    assert_eq!((again.ready.user.name.as_str(), again.ready.user.roles.len()), ("Ada L.", 0));
    assert!(!engine.authorize(&claims).await.expect("let in").is_support(), "nor do they give roles over HTTP");
    // Credentials issued after the change apply, as before.
    let newer = Identity { name: Some("Ada N.".into()), roles: Some(vec!["support".into()]), ..issued("ada", 1) };
    let newest = connect_as(&engine, newer).await;
    assert_eq!(newest.ready.user.name, "Ada N.");
    assert!(newest.ready.user.is_support());

    let bad = crate::user::UserPatch { name: Some(" ".into()), ..Default::default() };
    assert_eq!(engine.update_user(&uid("ada"), bad).await.map_err(|e| e.code().as_str()), Err("invalid"));
    let nobody = crate::user::UserPatch::default();
    assert_eq!(engine.update_user(&uid("nobody"), nobody).await.map_err(|e| e.code().as_str()), Err("not_found"));
}

#[tokio::test(start_paused = true)]
async fn last_seen_follows_connects_and_disconnects() {
    let engine = engine().await;
    let before = Timestamp::now();
    let ada = connect(&engine, "ada").await;
    // Written behind the opening, by the engine's last-seen task.
    let mut seen = None;
    for _ in 0..100 {
        seen = engine.account(&uid("ada")).await.expect("ada").last_seen;
        if seen.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let seen = seen.expect("seen at the connect");
    assert!(seen >= before);
    // Back-date it, to see the close write over it.
    let long_ago = Timestamp::from_millis(1);
    engine.store().touch_user(&uid("ada"), long_ago).await.expect("touched");
    drop(ada);
    // The close is recorded in the background.
    let mut last = Some(long_ago);
    for _ in 0..100 {
        tokio::time::sleep(Duration::from_millis(1)).await;
        last = engine.account(&uid("ada")).await.expect("ada").last_seen;
        if last != Some(long_ago) {
            break;
        }
    }
    assert!(last.is_some_and(|t| t >= seen), "the close is recorded: {last:?}");
}

#[tokio::test(start_paused = true)]
async fn the_user_list_pages_by_id_and_caps_its_limit() {
    let engine = engine().await;
    for i in 0..205 {
        engine.put_user(User::new(uid(&format!("u{i:03}")), format!("User {i}"))).await.expect("made");
    }
    let first = engine.accounts(None, None, None).await.expect("page");
    assert_eq!(first.accounts.len(), 50, "50 by default");
    assert_eq!(first.next.as_deref(), Some("u049"));
    let capped = engine.accounts(None, None, Some(1000)).await.expect("page");
    assert_eq!(capped.accounts.len(), 200, "at most 200");
    let rest = engine.accounts(capped.next.as_deref(), None, Some(1000)).await.expect("page");
    assert_eq!(
        rest.accounts.iter().map(|a| a.user.id.as_str()).collect::<Vec<_>>(),
        ["u200", "u201", "u202", "u203", "u204"]
    );
    assert_eq!(rest.next, None, "the last page says so");
    let found = engine.accounts(None, Some("USER 20"), None).await.expect("page");
    let found: Vec<&str> = found.accounts.iter().map(|a| a.user.id.as_str()).collect();
    assert_eq!(found, ["u020", "u200", "u201", "u202", "u203", "u204"]);
    assert_eq!(engine.accounts(None, None, Some(0)).await.map_err(|e| e.code().as_str()).err(), Some("invalid"));
    let long = "x".repeat(200);
    assert_eq!(engine.accounts(Some(&long), None, None).await.map_err(|e| e.code().as_str()).err(), Some("invalid"));
}

/// A store that deactivates a user just before the engine asks it the
/// second time, as an operator on another process might: the session must
/// not open. (The flag: whether the victim's account was read once.)
struct DeactivatedMeanwhile(MemoryStore, std::sync::atomic::AtomicBool);

#[async_trait::async_trait]
impl Store for DeactivatedMeanwhile {
    async fn upsert_user(&self, user: &User) -> Result<()> {
        self.0.upsert_user(user).await
    }
    async fn user(&self, id: &UserId) -> Result<Option<User>> {
        self.0.user(id).await
    }
    async fn users(&self, ids: &[UserId]) -> Result<Vec<User>> {
        self.0.users(ids).await
    }
    async fn search_users(&self, query: &str, limit: u32) -> Result<Vec<User>> {
        self.0.search_users(query, limit).await
    }
    async fn account(&self, id: &UserId) -> Result<Option<UserAccount>> {
        if id.as_str().starts_with("victim") && self.1.swap(true, std::sync::atomic::Ordering::SeqCst) {
            self.0.set_user_active(id, false).await?;
        }
        self.0.account(id).await
    }
    async fn list_accounts(&self, query: &UserListQuery) -> Result<Vec<UserAccount>> {
        self.0.list_accounts(query).await
    }
    async fn update_user(&self, id: &UserId, patch: &UserPatch, at: Timestamp) -> Result<Option<User>> {
        self.0.update_user(id, patch, at).await
    }
    async fn set_user_active(&self, id: &UserId, active: bool) -> Result<bool> {
        self.0.set_user_active(id, active).await
    }
    async fn revoke_tokens(&self, id: &UserId, at: Timestamp) -> Result<bool> {
        self.0.revoke_tokens(id, at).await
    }
    async fn delete_user(&self, id: &UserId, at: Timestamp) -> Result<Option<Vec<RoomId>>> {
        self.0.delete_user(id, at).await
    }
    async fn deleted_members(&self, room: RoomId) -> Result<Vec<UserId>> {
        self.0.deleted_members(room).await
    }
    async fn touch_user(&self, id: &UserId, at: Timestamp) -> Result<Option<UserAccount>> {
        self.0.touch_user(id, at).await
    }
    async fn create_room(&self, room: NewRoom, limits: MemberLimits) -> Result<(Room, bool)> {
        self.0.create_room(room, limits).await
    }
    async fn room(&self, id: RoomId) -> Result<Option<Room>> {
        self.0.room(id).await
    }
    async fn claim_room(&self, id: RoomId, user: &UserId) -> Result<Option<(Room, bool)>> {
        self.0.claim_room(id, user).await
    }
    async fn close_room(&self, id: RoomId) -> Result<Option<(Room, bool)>> {
        self.0.close_room(id).await
    }
    async fn rooms_of_user(&self, user: &UserId) -> Result<Vec<RoomSummary>> {
        self.0.rooms_of_user(user).await
    }
    async fn support_queue(&self, after: Option<QueueCursor>, limit: u32) -> Result<Vec<QueuedRoom>> {
        self.0.support_queue(after, limit).await
    }
    async fn support_rooms(&self, limit: u32) -> Result<Vec<Room>> {
        self.0.support_rooms(limit).await
    }
    async fn room_count_of_user(&self, user: &UserId) -> Result<u64> {
        self.0.room_count_of_user(user).await
    }
    async fn member(&self, room: RoomId, user: &UserId) -> Result<Option<Member>> {
        self.0.member(room, user).await
    }
    async fn members(&self, room: RoomId) -> Result<Vec<Member>> {
        self.0.members(room).await
    }
    async fn member_count(&self, room: RoomId) -> Result<u64> {
        self.0.member_count(room).await
    }
    async fn add_member(&self, room: RoomId, user: &UserId, joining: Joining, limits: MemberLimits) -> Result<bool> {
        self.0.add_member(room, user, joining, limits).await
    }
    async fn remove_member(&self, room: RoomId, user: &UserId) -> Result<bool> {
        self.0.remove_member(room, user).await
    }
    async fn update_room(&self, id: RoomId, changes: &crate::room::RoomChanges) -> Result<Option<Room>> {
        self.0.update_room(id, changes).await
    }
    async fn rooms_active_since(
        &self,
        since: Timestamp,
        after: Option<RoomId>,
        limit: u32,
    ) -> Result<Vec<crate::store::ActiveRoom>> {
        self.0.rooms_active_since(since, after, limit).await
    }
    async fn ban_member(&self, room: RoomId, ban: &crate::room::Ban) -> Result<bool> {
        self.0.ban_member(room, ban).await
    }
    async fn unban_member(&self, room: RoomId, user: &UserId) -> Result<bool> {
        self.0.unban_member(room, user).await
    }
    async fn bans(&self, room: RoomId, limit: u32) -> Result<Vec<crate::room::Ban>> {
        self.0.bans(room, limit).await
    }
    async fn set_member_role(&self, room: RoomId, user: &UserId, role: MemberRole) -> Result<bool> {
        self.0.set_member_role(room, user, role).await
    }
    async fn set_muted(&self, room: RoomId, user: &UserId, until: Option<Timestamp>) -> Result<bool> {
        self.0.set_muted(room, user, until).await
    }
    async fn co_members(&self, user: &UserId) -> Result<Vec<UserId>> {
        self.0.co_members(user).await
    }
    async fn append_messages(&self, batch: Vec<NewMessage>) -> Result<Vec<Result<Appended>>> {
        self.0.append_messages(batch).await
    }
    async fn message(&self, room: RoomId, id: MessageId) -> Result<Option<Message>> {
        self.0.message(room, id).await
    }
    async fn edit_message(&self, room: RoomId, id: MessageId, body: &str, at: Timestamp) -> Result<Option<Message>> {
        self.0.edit_message(room, id, body, at).await
    }
    async fn delete_message(&self, room: RoomId, id: MessageId, at: Timestamp) -> Result<Option<Message>> {
        self.0.delete_message(room, id, at).await
    }
    async fn history(&self, room: RoomId, query: HistoryQuery) -> Result<HistoryPage> {
        self.0.history(room, query).await
    }
    async fn advance_cursor(&self, room: RoomId, user: &UserId, kind: ReceiptKind, up_to: u64) -> Result<Option<u64>> {
        self.0.advance_cursor(room, user, kind, up_to).await
    }
    async fn ping(&self) -> Result<()> {
        Ok(())
    }
}

#[tokio::test(start_paused = true)]
async fn a_deactivation_racing_a_connect_refuses_it() {
    let engine = Engine::builder(Arc::new(DeactivatedMeanwhile(MemoryStore::new(), Default::default())))
        .start()
        .await
        .expect("the engine starts");
    let (code, why) = refused(&engine, Identity::new(uid("victim"))).await;
    assert_eq!((code, why.as_str()), ("unauthorized", "the user is deactivated"));
    assert_eq!(engine.connections(), 0, "the refused session is forgotten");
    assert!(engine.online_users().is_empty(), "and was never online");
    let mut other = connect(&engine, "bystander").await;
    other.ok(Command::Ping).await;
}

#[tokio::test(start_paused = true)]
async fn a_deactivation_on_one_process_ends_sessions_on_another() {
    let bus = LocalBus::new();
    let store = Arc::new(MemoryStore::new());
    let mut engines = Vec::new();
    for _ in 0..2 {
        let engine = Engine::builder(store.clone()).broker(Arc::new(bus.broker())).start().await.expect("starts");
        engines.push(engine);
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    let mut there = connect(&engines[1], "ada").await;
    let mut bob = connect(&engines[1], "bob").await;
    let room = bob.group(Visibility::Private, &[uid("ada")]).await;
    bob.join(room.id).await;
    there.join(room.id).await;
    engines[0].deactivate_user(&uid("ada")).await.expect("deactivated");
    assert_eq!(there.closed().await, CloseReason::Revoked);
    assert_eq!(refused(&engines[1], Identity::new(uid("ada"))).await.0, "unauthorized");
    engines[0].reactivate_user(&uid("ada")).await.expect("reactivated");
    let mut back = connect(&engines[1], "ada").await;
    back.join(room.id).await;

    // A deletion on the first process ends her session on the second, and
    // Bob, there too, hears that she left the room.
    engines[0].delete_user(&uid("ada")).await.expect("deleted");
    assert_eq!(back.closed().await, CloseReason::Revoked);
    assert_eq!(user_left(bob.event().await), (room.id, uid("ada")));
}
