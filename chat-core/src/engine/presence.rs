//! Presence: who is connected, aggregated over each user's sessions on this
//! process and, in a cluster, on every other.
//!
//! This is presence's one home. Each process counts its own sessions per
//! user; in a cluster it also keeps a view of every other process's counts,
//! learnt from their gossip on [`Topic::Cluster`](crate::broker::Topic):
//! deltas as they happen, a heartbeat every [`ClusterConfig::heartbeat`]
//! carrying the sender's version (so that a lost delta shows and a snapshot
//! is asked for), snapshots on request, and a goodbye at shutdown. A process
//! not heard from for [`ClusterConfig::node_timeout`] is dropped with all its
//! sessions, which is how a process killed with `-9` takes its users offline
//! everywhere. Nothing here needs more of the broker than publish/subscribe:
//! no key expiry, no stored state.
//!
//! Changes are not broadcast inline: each change marks the user dirty, and one
//! task announces the *current* visible status of dirty users whenever it
//! differs from the last one announced. Quick connect/disconnect flaps thus
//! collapse into at most one event, and announcements can never arrive in an
//! order that leaves observers with a stale status. Every process announces
//! to its own sessions only, from its view of the whole cluster, so a
//! `presence:changed` never crosses the network and is never doubled.
//!
//! [`ClusterConfig::heartbeat`]: crate::ClusterConfig::heartbeat
//! [`ClusterConfig::node_timeout`]: crate::ClusterConfig::node_timeout

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::Notify;
use tokio::time::Instant;
use uuid::Uuid;

use super::Ctx;
use crate::command::{Reply, UpdatePresence};
use crate::error::{Error, Result};
use crate::id::UserId;
use crate::presence::{OnlineUser, PresenceStatus};
use crate::time::Timestamp;
use crate::user::User;

/// Users per snapshot part: a part stays well under a broker's payload limit
/// (NATS: 1 MiB by default).
const SNAPSHOT_PART: usize = 500;

/// A chosen status and when it was chosen (milliseconds since the epoch):
/// across processes, the latest choice wins.
type Chosen = (PresenceStatus, i64);

struct Entry {
    /// Shared with the user's newest session here, or as last heard.
    user: Arc<User>,
    /// Open sessions on this process.
    sessions: u32,
    /// The status chosen on this process, while it has sessions.
    status: Option<Chosen>,
    /// Other processes listing the user.
    remote: u32,
    /// The visible status last announced for the user.
    announced: PresenceStatus,
}

impl Entry {
    /// A user nobody announced yet.
    fn new(user: Arc<User>) -> Self {
        Entry { user, sessions: 0, status: None, remote: 0, announced: PresenceStatus::Offline }
    }
}

/// A user's sessions on another process.
#[derive(Debug, Clone, Copy)]
struct Remote {
    sessions: u32,
    status: Option<Chosen>,
}

/// What this process knows of another one.
struct NodeView {
    /// The version of its last delta or complete snapshot.
    version: u64,
    last_heard: Instant,
    users: HashMap<UserId, Remote>,
    /// A snapshot being received, part by part.
    staging: Option<HashMap<UserId, (User, Remote)>>,
    /// When a snapshot was last asked of it.
    asked: Option<Instant>,
    /// Agents online on the platforms it bridges, by bridge.
    bridges: BTreeMap<String, u32>,
}

impl NodeView {
    fn new(now: Instant) -> Self {
        NodeView {
            version: 0,
            last_heard: now,
            users: HashMap::new(),
            staging: None,
            asked: None,
            bridges: BTreeMap::new(),
        }
    }
}

/// One user's sessions on the sending process, as gossip carries them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct Announce {
    user: User,
    /// Zero: the user has no session there any more.
    sessions: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    status: Option<PresenceStatus>,
    #[serde(default)]
    status_at: i64,
}

/// Presence news between processes, on the cluster topic.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "g", rename_all = "snake_case")]
pub(crate) enum Gossip {
    /// Users whose sessions on the sender changed.
    Delta { version: u64, users: Vec<Announce> },
    /// The sender is alive, at this version; with the agents online on
    /// bridged platforms, for the bridges whose work it does (the others
    /// are on standby there).
    Heartbeat {
        version: u64,
        #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
        bridges: BTreeMap<String, u32>,
    },
    /// All of the sender's users, in parts.
    Snapshot { version: u64, part: u32, last: bool, users: Vec<Announce> },
    /// Asks one process (or, with no `of`, every one) for its snapshot.
    Sync {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        of: Option<Uuid>,
    },
    /// The sender is shutting down: its sessions are gone.
    Goodbye,
}

/// What receiving gossip asks of this process.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Followup {
    /// Ask this process for its snapshot.
    pub(crate) ask: Option<Uuid>,
    /// Send our snapshot.
    pub(crate) send_snapshot: bool,
}

#[derive(Default)]
struct State {
    /// Users connected here or elsewhere, or whose going offline is not
    /// announced yet.
    entries: HashMap<UserId, Entry>,
    /// Users whose status may have changed since it was last announced.
    dirty: HashSet<UserId>,
    /// Other processes, by node id.
    nodes: HashMap<Uuid, NodeView>,
    /// Users whose sessions here changed since the last delta.
    changed_here: HashSet<UserId>,
    /// This process's presence version: one more per delta sent.
    version: u64,
}

#[derive(Default)]
pub(crate) struct PresenceTracker {
    state: Mutex<State>,
    pub(crate) wake: Notify,
}

impl std::fmt::Debug for PresenceTracker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PresenceTracker").finish_non_exhaustive()
    }
}

impl State {
    /// The user's status over every process.
    fn current(&self, id: &UserId, entry: &Entry) -> PresenceStatus {
        let mut sessions = entry.sessions;
        let mut latest = if entry.sessions > 0 { entry.status } else { None };
        if entry.remote > 0 {
            for node in self.nodes.values() {
                if let Some(r) = node.users.get(id) {
                    sessions += r.sessions;
                    if let Some(s) = r.status
                        && latest.is_none_or(|l| s.1 > l.1)
                    {
                        latest = Some(s);
                    }
                }
            }
        }
        if sessions == 0 { PresenceStatus::Offline } else { latest.map_or(PresenceStatus::Online, |(s, _)| s) }
    }

    fn mark(&mut self, user: &UserId) {
        self.dirty.insert(user.clone());
    }

    fn entry_for(&mut self, user: &User) -> &mut Entry {
        self.entries.entry(user.id.clone()).or_insert_with(|| Entry::new(Arc::new(user.clone())))
    }

    /// Puts a remote user into a node's map (`None` removes it), keeping the
    /// entry's count of listing nodes right.
    fn set_remote(&mut self, node: Uuid, user: &User, remote: Option<Remote>) {
        let Some(view) = self.nodes.get_mut(&node) else { return };
        let before = match remote {
            Some(r) => view.users.insert(user.id.clone(), r),
            None => view.users.remove(&user.id),
        };
        let delta: i64 = i64::from(remote.is_some()) - i64::from(before.is_some());
        if delta == 0 && remote.is_none() {
            return;
        }
        let entry = self.entry_for(user);
        if remote.is_some() {
            // The newest word on the user's name and roles.
            entry.user = Arc::new(user.clone());
        }
        entry.remote = (i64::from(entry.remote) + delta).max(0) as u32;
        self.forget_if_gone(&user.id);
        self.adopt(&user.id);
        self.mark(&user.id);
    }

    /// Drops a node's whole map (it died, left, or sent a full snapshot).
    fn drop_node_users(&mut self, users: HashMap<UserId, Remote>) {
        for id in users.into_keys() {
            if let Some(entry) = self.entries.get_mut(&id) {
                entry.remote = entry.remote.saturating_sub(1);
            }
            self.forget_if_gone(&id);
            self.mark(&id);
        }
    }

    /// Forgets an entry nobody lists any more, unless its going offline is
    /// still to be announced.
    fn forget_if_gone(&mut self, id: &UserId) {
        if let Some(e) = self.entries.get(id)
            && e.sessions == 0
            && e.remote == 0
            && e.announced == PresenceStatus::Offline
        {
            self.entries.remove(id);
        }
    }

    /// The newest status chosen for the user on another process.
    fn newest_remote(&self, id: &UserId) -> Option<Chosen> {
        self.nodes.values().filter_map(|n| n.users.get(id)?.status).max_by_key(|c| c.1)
    }

    /// A status chosen elsewhere, newer than the one here, becomes this
    /// process's too (and is told to the others), so that it outlives the
    /// sessions it was chosen on, as on one process: the choice is for all
    /// the user's sessions.
    fn adopt(&mut self, id: &UserId) {
        let newest = self.newest_remote(id);
        let Some(entry) = self.entries.get_mut(id) else { return };
        if entry.sessions == 0 {
            return;
        }
        if let Some(newest) = newest
            && entry.status.is_none_or(|mine| newest.1 > mine.1)
        {
            entry.status = Some(newest);
            self.changed_here.insert(id.clone());
        }
    }

    fn announce_here(&self, id: &UserId) -> Option<Announce> {
        let e = self.entries.get(id)?;
        let (status, status_at) = match e.status {
            Some((s, at)) if e.sessions > 0 => (Some(s), at),
            _ => (None, 0),
        };
        Some(Announce { user: User::clone(&e.user), sessions: e.sessions, status, status_at })
    }
}

fn remote_of(a: &Announce) -> Remote {
    Remote { sessions: a.sessions, status: a.status.map(|s| (s, a.status_at)) }
}

impl PresenceTracker {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn changed(&self, state: &mut State, user: &UserId) {
        state.mark(user);
        state.changed_here.insert(user.clone());
        self.wake.notify_one();
    }

    /// A session of `user` opened. The first one makes the user online.
    pub(crate) fn connect(&self, user: &Arc<User>) {
        let mut state = self.lock();
        let entry = state.entries.entry(user.id.clone()).or_insert_with(|| Entry::new(user.clone()));
        if entry.sessions == 0 {
            // Back before going offline was announced: a fresh start.
            entry.status = None;
        }
        entry.sessions += 1;
        entry.user = user.clone();
        // A status chosen on the user's sessions elsewhere is theirs here too.
        state.adopt(&user.id);
        self.changed(&mut state, &user.id);
    }

    /// A session of `user` closed. The last one here ends their status here.
    pub(crate) fn disconnect(&self, user: &UserId) {
        let mut state = self.lock();
        if let Some(entry) = state.entries.get_mut(user) {
            entry.sessions = entry.sessions.saturating_sub(1);
            if entry.sessions == 0 {
                entry.status = None;
            }
        }
        state.forget_if_gone(user);
        self.changed(&mut state, user);
    }

    /// The user chose a status (for all their sessions, on every process).
    pub(crate) fn set_status(&self, user: &UserId, status: PresenceStatus) {
        let mut state = self.lock();
        if let Some(entry) = state.entries.get_mut(user).filter(|e| e.sessions > 0) {
            entry.status = Some((status, Timestamp::now().as_millis()));
        }
        self.changed(&mut state, user);
    }

    /// Whether the user has a session open on any process (invisible ones
    /// included), as far as this process has heard.
    pub(crate) fn is_connected(&self, user: &UserId) -> bool {
        self.lock().entries.get(user).is_some_and(|e| e.sessions > 0 || e.remote > 0)
    }

    /// The user's status over every process, `offline` when not connected.
    #[cfg(test)]
    pub(crate) fn status(&self, user: &UserId) -> PresenceStatus {
        let state = self.lock();
        state.entries.get(user).map_or(PresenceStatus::Offline, |e| state.current(user, e))
    }

    /// Connected users who are visible, with their visible status, on every process.
    pub(crate) fn online_users(&self) -> Vec<OnlineUser> {
        let state = self.lock();
        let mut out: Vec<OnlineUser> = state
            .entries
            .iter()
            .filter_map(|(id, e)| {
                let now = state.current(id, e).visible();
                now.is_visible_online().then(|| OnlineUser { user: User::clone(&e.user), status: now })
            })
            .collect();
        out.sort_by(|a, b| a.user.name.cmp(&b.user.name).then_with(|| a.user.id.cmp(&b.user.id)));
        out
    }

    /// The ids of the users holding the support role who have a session
    /// on any process, whatever their status: an agent who shows as away or
    /// invisible still works the queue.
    pub(crate) fn support_agents_connected(&self) -> Vec<UserId> {
        let state = self.lock();
        state
            .entries
            .iter()
            .filter(|(id, e)| e.user.is_support() && state.current(id, e) != PresenceStatus::Offline)
            .map(|(id, _)| id.clone())
            .collect()
    }

    /// Visible users holding the support role, on every process.
    pub(crate) fn online_support_agents(&self) -> u32 {
        let state = self.lock();
        state.entries.iter().filter(|(id, e)| e.user.is_support() && state.current(id, e).is_visible_online()).count()
            as u32
    }

    /// Takes the dirty users and returns, for each whose visible status differs
    /// from what was last announced, the status to announce now (with a
    /// last-seen time when it is offline). Records them as announced.
    /// Each user whose visible status changed since the last call: the user,
    /// the status now, when they were last seen (once offline) and the
    /// status announced before.
    pub(crate) fn take_changes(&self) -> Vec<(UserId, PresenceStatus, Option<Timestamp>, PresenceStatus)> {
        let mut state = self.lock();
        // Taken whole, so that a burst of connections leaves no large empty
        // set behind.
        let dirty = std::mem::take(&mut state.dirty);
        let mut out = Vec::new();
        for user in dirty {
            let Some(entry) = state.entries.get(&user) else { continue };
            let now = state.current(&user, entry).visible();
            let before = entry.announced;
            if now == before {
                continue;
            }
            if let Some(entry) = state.entries.get_mut(&user) {
                entry.announced = now;
            }
            if now == PresenceStatus::Offline {
                state.forget_if_gone(&user);
                out.push((user, now, Some(Timestamp::now()), before));
            } else {
                out.push((user, now, None, before));
            }
        }
        out
    }

    // --- the cluster ---

    /// The changes of this process's sessions since the last delta, for the
    /// other processes; `None` when nothing changed.
    pub(crate) fn take_delta(&self) -> Option<Gossip> {
        let mut state = self.lock();
        if state.changed_here.is_empty() {
            return None;
        }
        let changed = std::mem::take(&mut state.changed_here);
        let users: Vec<Announce> = changed
            .iter()
            .map(|id| {
                state.announce_here(id).unwrap_or_else(|| Announce {
                    // Gone here and forgotten: only the id matters to the others.
                    user: User::new(id.clone(), id.as_str()),
                    sessions: 0,
                    status: None,
                    status_at: 0,
                })
            })
            .collect();
        state.version += 1;
        Some(Gossip::Delta { version: state.version, users })
    }

    /// This process's heartbeat, with the agents online on the platforms
    /// whose bridges work here.
    pub(crate) fn heartbeat(&self, bridges: BTreeMap<String, u32>) -> Gossip {
        Gossip::Heartbeat { version: self.lock().version, bridges }
    }

    /// The agents online on a bridged platform, as the process doing the
    /// bridge's work last said; `None` when no process says.
    pub(crate) fn bridge_agents(&self, bridge: &str) -> Option<u32> {
        self.lock().nodes.values().filter_map(|n| n.bridges.get(bridge).copied()).max()
    }

    /// Every user with a session here, in snapshot parts (at least one).
    pub(crate) fn snapshot(&self) -> Vec<Gossip> {
        let state = self.lock();
        let users: Vec<Announce> = state
            .entries
            .iter()
            .filter(|(_, e)| e.sessions > 0)
            .filter_map(|(id, _)| state.announce_here(id))
            .collect();
        let version = state.version;
        let mut parts: Vec<Gossip> = users
            .chunks(SNAPSHOT_PART)
            .enumerate()
            .map(|(i, chunk)| Gossip::Snapshot { version, part: i as u32, last: false, users: chunk.to_vec() })
            .collect();
        if parts.is_empty() {
            parts.push(Gossip::Snapshot { version, part: 0, last: true, users: Vec::new() });
        }
        if let Some(Gossip::Snapshot { last, .. }) = parts.last_mut() {
            *last = true;
        }
        parts
    }

    /// Applies gossip from process `node` (never this one).
    pub(crate) fn receive(&self, me: Uuid, node: Uuid, gossip: Gossip, now: Instant, ask_every: Duration) -> Followup {
        let mut follow = Followup::default();
        let mut state = self.lock();
        let known = state.nodes.contains_key(&node);
        if !known && !matches!(gossip, Gossip::Goodbye) {
            state.nodes.insert(node, NodeView::new(now));
        }
        if let Some(view) = state.nodes.get_mut(&node) {
            view.last_heard = now;
        }
        // Asks for the node's snapshot, at most once per `ask_every`.
        let mut ask = |state: &mut State| {
            if let Some(view) = state.nodes.get_mut(&node)
                && view.asked.is_none_or(|at| now.duration_since(at) >= ask_every)
            {
                view.asked = Some(now);
                follow.ask = Some(node);
            }
        };
        match gossip {
            Gossip::Delta { version, users } => {
                let expected = state.nodes.get(&node).map(|v| v.version + 1);
                for a in &users {
                    let remote = (a.sessions > 0).then(|| remote_of(a));
                    state.set_remote(node, &a.user, remote);
                }
                if let Some(view) = state.nodes.get_mut(&node) {
                    view.version = version;
                }
                if !known || expected != Some(version) {
                    ask(&mut state);
                }
            }
            Gossip::Heartbeat { version, bridges } => {
                if let Some(view) = state.nodes.get_mut(&node) {
                    view.bridges = bridges;
                }
                if !known || state.nodes.get(&node).is_some_and(|v| v.version != version) {
                    ask(&mut state);
                }
            }
            Gossip::Snapshot { version, part, last, users } => {
                let Some(view) = state.nodes.get_mut(&node) else { return follow };
                if part == 0 {
                    view.staging = Some(HashMap::new());
                }
                let Some(staging) = view.staging.as_mut() else {
                    // The start was missed; the next heartbeat asks again.
                    return follow;
                };
                for a in users {
                    if a.sessions > 0 {
                        let remote = remote_of(&a);
                        staging.insert(a.user.id.clone(), (a.user, remote));
                    }
                }
                if last {
                    let fresh = view.staging.take().unwrap_or_default();
                    view.version = version;
                    let old = std::mem::take(&mut view.users);
                    state.drop_node_users(old);
                    let mut users = HashMap::with_capacity(fresh.len());
                    for (id, (user, remote)) in fresh {
                        let entry = state.entry_for(&user);
                        entry.user = Arc::new(user);
                        entry.remote += 1;
                        state.mark(&id);
                        users.insert(id, remote);
                    }
                    let ids: Vec<UserId> = users.keys().cloned().collect();
                    if let Some(view) = state.nodes.get_mut(&node) {
                        view.users = users;
                    }
                    for id in ids {
                        state.adopt(&id);
                    }
                }
            }
            Gossip::Sync { of } => {
                if of.is_none_or(|of| of == me) {
                    follow.send_snapshot = true;
                }
            }
            Gossip::Goodbye => {
                if let Some(view) = state.nodes.remove(&node) {
                    state.drop_node_users(view.users);
                }
            }
        }
        if !state.dirty.is_empty() {
            self.wake.notify_one();
        }
        follow
    }

    /// Drops the processes not heard from within `timeout`; how many.
    pub(crate) fn expire_nodes(&self, now: Instant, timeout: Duration) -> usize {
        let mut state = self.lock();
        let dead: Vec<Uuid> =
            state.nodes.iter().filter(|(_, v)| now.duration_since(v.last_heard) > timeout).map(|(id, _)| *id).collect();
        for id in &dead {
            if let Some(view) = state.nodes.remove(id) {
                tracing::info!(node = %id, users = view.users.len(), "a server process went silent; its sessions are offline");
                state.drop_node_users(view.users);
            }
        }
        if !dead.is_empty() {
            self.wake.notify_one();
        }
        dead.len()
    }

    /// Other processes heard from recently.
    pub(crate) fn node_count(&self) -> usize {
        self.lock().nodes.len()
    }
}

impl super::Inner {
    pub(crate) fn update_presence(&self, ctx: &Ctx, req: UpdatePresence) -> Result<Reply> {
        if req.status == PresenceStatus::Offline {
            return Err(Error::invalid("status must be online, away, busy or invisible"));
        }
        self.presence.set_status(&ctx.user.id, req.status);
        Ok(Reply::empty())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(id: &str, roles: &[&str]) -> Arc<User> {
        let mut u = User::new(UserId::new(id).expect("valid"), id);
        u.roles = roles.iter().map(|r| r.to_string()).collect();
        Arc::new(u)
    }

    fn entries(p: &PresenceTracker) -> usize {
        p.lock().entries.len()
    }

    #[test]
    fn online_while_any_session_is_open() {
        let p = PresenceTracker::default();
        let a = user("a", &[]);
        p.connect(&a);
        p.connect(&a);
        assert_eq!(p.take_changes(), vec![(a.id.clone(), PresenceStatus::Online, None, PresenceStatus::Offline)]);
        p.disconnect(&a.id);
        assert_eq!(p.status(&a.id), PresenceStatus::Online);
        assert!(p.take_changes().is_empty(), "one session closing of two changes nothing");
        p.disconnect(&a.id);
        let changes = p.take_changes();
        assert_eq!(changes.len(), 1);
        assert_eq!(changes[0].1, PresenceStatus::Offline);
        assert!(changes[0].2.is_some(), "offline carries last_seen");
    }

    #[test]
    fn invisible_is_announced_as_offline_and_not_listed() {
        let p = PresenceTracker::default();
        let a = user("a", &["support"]);
        p.connect(&a);
        p.take_changes();
        assert_eq!(p.online_support_agents(), 1);
        p.set_status(&a.id, PresenceStatus::Invisible);
        let changes = p.take_changes();
        assert_eq!(changes[0].1, PresenceStatus::Offline);
        assert!(p.online_users().is_empty());
        assert_eq!(p.online_support_agents(), 0);
        p.set_status(&a.id, PresenceStatus::Busy);
        assert_eq!(p.take_changes()[0].1, PresenceStatus::Busy);
        assert_eq!(p.online_users()[0].status, PresenceStatus::Busy);
    }

    #[test]
    fn flaps_collapse() {
        let p = PresenceTracker::default();
        let a = user("a", &[]);
        p.connect(&a);
        p.take_changes();
        p.disconnect(&a.id);
        p.connect(&a);
        assert!(p.take_changes().is_empty());
    }

    #[test]
    fn a_user_is_forgotten_once_going_offline_is_announced() {
        let p = PresenceTracker::default();
        let (a, b) = (user("a", &[]), user("b", &[]));
        p.connect(&a);
        p.connect(&b);
        p.take_changes();
        p.disconnect(&a.id);
        p.disconnect(&b.id);
        assert_eq!(entries(&p), 2, "kept until the offline is announced");
        assert_eq!(p.status(&a.id), PresenceStatus::Offline);
        assert!(p.online_users().is_empty());
        assert_eq!(p.take_changes().len(), 2);
        assert_eq!(entries(&p), 0);
        // Gone before coming online was announced: nothing to say, nothing kept.
        p.connect(&a);
        p.disconnect(&a.id);
        assert!(p.take_changes().is_empty());
        assert_eq!(entries(&p), 0);
        assert_eq!(p.lock().dirty.capacity(), 0, "the dirty set is given back");
    }

    /// Two trackers that gossip by hand.
    fn pass(from: &PresenceTracker, from_id: Uuid, to: &PresenceTracker, to_id: Uuid, now: Instant) -> Followup {
        let mut follow = Followup::default();
        if let Some(delta) = from.take_delta() {
            follow = to.receive(to_id, from_id, delta, now, Duration::ZERO);
        }
        follow
    }

    #[test]
    fn a_user_is_online_while_a_session_is_open_on_any_process() {
        let (p, q) = (PresenceTracker::default(), PresenceTracker::default());
        let (pid, qid) = (Uuid::now_v7(), Uuid::now_v7());
        let now = Instant::now();
        let a = user("a", &["support"]);
        p.connect(&a);
        q.connect(&a);
        pass(&p, pid, &q, qid, now);
        pass(&q, qid, &p, pid, now);
        assert_eq!(p.take_changes().len(), 1);
        assert_eq!(q.take_changes().len(), 1);
        p.disconnect(&a.id);
        pass(&p, pid, &q, qid, now);
        assert_eq!(p.status(&a.id), PresenceStatus::Online, "still connected on q");
        assert!(p.take_changes().is_empty() && q.take_changes().is_empty());
        assert_eq!(p.online_support_agents(), 1);
        // Away chosen on q shows on p.
        q.set_status(&a.id, PresenceStatus::Away);
        pass(&q, qid, &p, pid, now);
        assert_eq!(p.take_changes(), vec![(a.id.clone(), PresenceStatus::Away, None, PresenceStatus::Online)]);
        q.disconnect(&a.id);
        pass(&q, qid, &p, pid, now);
        assert_eq!(p.take_changes()[0].1, PresenceStatus::Offline);
        assert_eq!(entries(&p), 0, "nothing kept once offline is announced");
    }

    #[test]
    fn a_silent_process_takes_its_users_offline() {
        let (p, q) = (PresenceTracker::default(), PresenceTracker::default());
        let (pid, qid) = (Uuid::now_v7(), Uuid::now_v7());
        let start = Instant::now();
        let a = user("a", &[]);
        q.connect(&a);
        pass(&q, qid, &p, pid, start);
        assert_eq!(p.take_changes()[0].1, PresenceStatus::Online);
        assert_eq!(p.expire_nodes(start + Duration::from_secs(5), Duration::from_secs(10)), 0);
        assert_eq!(p.expire_nodes(start + Duration::from_secs(11), Duration::from_secs(10)), 1);
        assert_eq!(p.take_changes()[0].1, PresenceStatus::Offline);
        assert!(p.online_users().is_empty());
    }

    #[test]
    fn a_lost_delta_is_noticed_and_a_snapshot_repairs_it() {
        let (p, q) = (PresenceTracker::default(), PresenceTracker::default());
        let (pid, qid) = (Uuid::now_v7(), Uuid::now_v7());
        let now = Instant::now();
        let (a, b) = (user("a", &[]), user("b", &[]));
        q.connect(&a);
        pass(&q, qid, &p, pid, now);
        // Lost on the way:
        q.connect(&b);
        q.disconnect(&a.id);
        q.take_delta();
        let follow = p.receive(pid, qid, q.heartbeat(BTreeMap::new()), now, Duration::ZERO);
        assert_eq!(follow.ask, Some(qid), "the heartbeat's version shows the loss");
        let follow = q.receive(qid, pid, Gossip::Sync { of: Some(qid) }, now, Duration::ZERO);
        assert!(follow.send_snapshot);
        for part in q.snapshot() {
            p.receive(pid, qid, part, now, Duration::ZERO);
        }
        let online: Vec<String> = p.online_users().into_iter().map(|u| u.user.id.to_string()).collect();
        assert_eq!(online, vec!["b".to_owned()]);
        assert_eq!(p.receive(pid, qid, q.heartbeat(BTreeMap::new()), now, Duration::ZERO), Followup::default());
    }

    #[test]
    fn large_snapshots_come_in_parts() {
        let (p, q) = (PresenceTracker::default(), PresenceTracker::default());
        let (pid, qid) = (Uuid::now_v7(), Uuid::now_v7());
        for i in 0..1_234 {
            q.connect(&user(&format!("u{i}"), &[]));
        }
        let parts = q.snapshot();
        assert_eq!(parts.len(), 3);
        for part in parts {
            p.receive(pid, qid, part, Instant::now(), Duration::ZERO);
        }
        assert_eq!(p.online_users().len(), 1_234);
        assert_eq!(p.node_count(), 1);
        p.receive(pid, qid, Gossip::Goodbye, Instant::now(), Duration::ZERO);
        assert!(p.online_users().is_empty());
        assert_eq!(p.node_count(), 0);
    }
}
