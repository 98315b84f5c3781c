//! Presence aggregated over each user's sessions on this node.
//!
//! Changes are not broadcast inline: each change marks the user dirty, and one
//! task announces the *current* visible status of dirty users whenever it
//! differs from the last one announced. Quick connect/disconnect flaps thus
//! collapse into at most one event, and announcements can never arrive in an
//! order that leaves observers with a stale status.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;

use crate::id::UserId;
use crate::presence::{OnlineUser, PresenceStatus};
use crate::time::Timestamp;
use crate::user::User;

struct Entry {
    /// Shared with the user's newest session.
    user: Arc<User>,
    /// Open sessions. At zero the user is offline, and the entry stays only
    /// until that is announced.
    sessions: u32,
    status: PresenceStatus,
    /// The visible status last announced for the user.
    announced: PresenceStatus,
}

#[derive(Default)]
pub(crate) struct PresenceTracker {
    /// Users who are connected, or whose going offline is not announced yet.
    entries: Mutex<HashMap<UserId, Entry>>,
    /// Users whose status may have changed since it was last announced.
    dirty: Mutex<HashSet<UserId>>,
    pub(crate) wake: Notify,
}

impl std::fmt::Debug for PresenceTracker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PresenceTracker").finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl PresenceTracker {
    fn mark(&self, user: &UserId) {
        lock(&self.dirty).insert(user.clone());
        self.wake.notify_one();
    }

    /// A session of `user` opened. The first one makes the user online.
    pub(crate) fn connect(&self, user: &Arc<User>) {
        {
            let mut entries = lock(&self.entries);
            let entry = entries.entry(user.id.clone()).or_insert_with(|| Entry {
                user: user.clone(),
                sessions: 0,
                status: PresenceStatus::Online,
                announced: PresenceStatus::Offline,
            });
            if entry.sessions == 0 {
                // Back before going offline was announced: a fresh start.
                entry.status = PresenceStatus::Online;
            }
            entry.sessions += 1;
            entry.user = user.clone();
        }
        self.mark(&user.id);
    }

    /// A session of `user` closed. The last one makes the user offline.
    pub(crate) fn disconnect(&self, user: &UserId) {
        {
            let mut entries = lock(&self.entries);
            if let Some(entry) = entries.get_mut(user) {
                entry.sessions = entry.sessions.saturating_sub(1);
                if entry.sessions == 0 && entry.announced == PresenceStatus::Offline {
                    entries.remove(user);
                }
            }
        }
        self.mark(user);
    }

    /// The user chose a status (for all their sessions).
    pub(crate) fn set_status(&self, user: &UserId, status: PresenceStatus) {
        if let Some(entry) = lock(&self.entries).get_mut(user).filter(|e| e.sessions > 0) {
            entry.status = status;
        }
        self.mark(user);
    }

    /// The status the user chose, `offline` when not connected.
    #[cfg(test)]
    pub(crate) fn status(&self, user: &UserId) -> PresenceStatus {
        lock(&self.entries).get(user).map_or(PresenceStatus::Offline, Entry::current)
    }

    /// Connected users who are visible, with their visible status.
    pub(crate) fn online_users(&self) -> Vec<OnlineUser> {
        let entries = lock(&self.entries);
        let mut out: Vec<OnlineUser> = entries
            .values()
            .filter(|e| e.current().is_visible_online())
            .map(|e| OnlineUser { user: User::clone(&e.user), status: e.status.visible() })
            .collect();
        out.sort_by(|a, b| a.user.name.cmp(&b.user.name).then_with(|| a.user.id.cmp(&b.user.id)));
        out
    }

    /// The ids of the users holding the support role who have a session
    /// here, whatever their status: an agent who shows as away or invisible
    /// still works the queue.
    pub(crate) fn support_agents_connected(&self) -> Vec<crate::id::UserId> {
        lock(&self.entries).values().filter(|e| e.user.is_support()).map(|e| e.user.id.clone()).collect()
    }

    /// Visible users holding the support role.
    pub(crate) fn online_support_agents(&self) -> u32 {
        lock(&self.entries).values().filter(|e| e.current().is_visible_online() && e.user.is_support()).count() as u32
    }

    /// Takes the dirty users and returns, for each whose visible status differs
    /// from what was last announced, the status to announce now (with a
    /// last-seen time when it is offline). Records them as announced.
    pub(crate) fn take_changes(&self) -> Vec<(UserId, PresenceStatus, Option<Timestamp>)> {
        // Taken whole, so that a burst of connections leaves no large empty
        // set behind.
        let dirty = std::mem::take(&mut *lock(&self.dirty));
        let mut out = Vec::new();
        let mut entries = lock(&self.entries);
        for user in dirty {
            let Some(entry) = entries.get_mut(&user) else { continue };
            let now = entry.current().visible();
            if now == entry.announced {
                continue;
            }
            entry.announced = now;
            if now == PresenceStatus::Offline {
                if entry.sessions == 0 {
                    entries.remove(&user);
                }
                out.push((user, now, Some(Timestamp::now())));
            } else {
                out.push((user, now, None));
            }
        }
        out
    }
}

impl Entry {
    /// The status the user chose, `offline` once no session is open.
    fn current(&self) -> PresenceStatus {
        if self.sessions == 0 { PresenceStatus::Offline } else { self.status }
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

    #[test]
    fn online_while_any_session_is_open() {
        let p = PresenceTracker::default();
        let a = user("a", &[]);
        p.connect(&a);
        p.connect(&a);
        assert_eq!(p.take_changes(), vec![(a.id.clone(), PresenceStatus::Online, None)]);
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
        assert_eq!(lock(&p.entries).len(), 2, "kept until the offline is announced");
        assert_eq!(p.status(&a.id), PresenceStatus::Offline);
        assert!(p.online_users().is_empty());
        assert_eq!(p.take_changes().len(), 2);
        assert_eq!(lock(&p.entries).len(), 0);
        // Gone before coming online was announced: nothing to say, nothing kept.
        p.connect(&a);
        p.disconnect(&a.id);
        assert!(p.take_changes().is_empty());
        assert_eq!(lock(&p.entries).len(), 0);
        assert_eq!(lock(&p.dirty).capacity(), 0, "the dirty set is given back");
    }
}
