//! The roster: who the agents (the members holding the support role) are,
//! and which of them is available, for `online_agents` and `/health`.
//!
//! Serenity runs every event's handler in a task of its own, so handlers see
//! events in any order. The roster is built instead by a collector on the
//! shard, which sees each event in the order it came: from the answer to the
//! member request made at each GUILD_CREATE, then every later event.

use std::collections::{HashMap, HashSet};
use std::sync::Weak;

use serenity::all::{GuildId, OnlineStatus, Presence};
use serenity::gateway::CollectorCallback;
use serenity::model::event::Event as GatewayEvent;

use super::holds_support;
use crate::bridge::Shared;
use crate::config::DiscordConfig;

/// Who the agents are and whether each is available. Serenity runs every
/// event's handler in a task of its own, so handlers see events in any
/// order (READY's handler may run after GUILD_CREATE's). The roster is built
/// instead by collectors ([`roster_collector`]), which the shard calls for
/// each event in the order it came: from the answer to a member request
/// made after the guild's GUILD_CREATE (a snapshot newer than any event the
/// collector was not there for), then every later event, in order.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(in crate::bridge) struct Roster {
    /// The member request whose answer this roster started from (0: none yet).
    request: u64,
    /// The chunks of that answer received so far.
    chunks: HashSet<u32>,
    /// Whether every chunk of the answer came.
    pub(in crate::bridge) complete: bool,
    /// Whether it holds now: complete, and the gateway not seen lost since
    /// (see [`State::shard_seen`]).
    ///
    /// [`State::shard_seen`]: crate::bridge::State::shard_seen
    pub(in crate::bridge) current: bool,
    /// Members holding the support role.
    agents: HashSet<u64>,
    /// Whether each member is online, idle or dnd.
    available: HashMap<u64, bool>,
    /// Members whose role, and members whose presence, an event after the
    /// answer's first chunk told: newer than what later chunks of the
    /// answer say of them.
    heard_roles: HashSet<u64>,
    heard_presences: HashSet<u64>,
}

/// What a collector saw that changes the roster, of the configured guild.
#[derive(Debug, Clone)]
pub(in crate::bridge) enum Seen {
    /// A chunk answering the member request `nonce`: members (and whether
    /// each holds the support role) and the presences of those not offline.
    Chunk { nonce: u64, index: u32, count: u32, members: Vec<(u64, bool)>, presences: Vec<(u64, bool)> },
    /// GUILD_CREATE: the members and presences it carries, which are all of
    /// them (`whole`) unless the guild is large.
    Guild { members: Vec<(u64, bool)>, presences: Vec<(u64, bool)>, whole: bool },
    /// PRESENCE_UPDATE: whether the member is available now.
    Presence(u64, bool),
    /// A member joined, changed or left: whether they hold the support role now.
    Member(u64, bool),
}

impl Roster {
    /// An empty roster as of member request `request`: the collectors of
    /// earlier requests no longer change it.
    pub(in crate::bridge) fn new(request: u64) -> Self {
        Roster { request, ..Roster::default() }
    }

    /// Applies what the collector of member request `request` saw, in the
    /// order the shard received it. The answer's first chunk starts a new
    /// roster; other events count only for the roster of their own
    /// collector's request (earlier ones are older than its answer).
    pub(in crate::bridge) fn apply(&mut self, request: u64, seen: Seen) {
        if request < self.request {
            return;
        }
        match seen {
            Seen::Chunk { nonce, index, count, members, presences } if nonce == request => {
                if request > self.request {
                    *self = Roster { request, ..Roster::default() };
                }
                for (user, holds) in members {
                    if !self.heard_roles.contains(&user) {
                        self.set_agent(user, holds);
                    }
                    // Asked with presences: a member listed without one is offline.
                    if !self.heard_presences.contains(&user) {
                        self.available.insert(user, false);
                    }
                }
                for (user, available) in presences {
                    if !self.heard_presences.contains(&user) {
                        self.available.insert(user, available);
                    }
                }
                self.chunks.insert(index);
                if self.chunks.len() >= usize::try_from(count).unwrap_or(usize::MAX) {
                    self.complete = true;
                    self.current = true;
                }
            }
            Seen::Chunk { .. } => {}
            _ if request != self.request => {}
            Seen::Guild { members, presences, whole } => {
                if whole {
                    self.agents.retain(|a| members.iter().any(|(m, _)| m == a));
                }
                for (user, holds) in members {
                    self.heard_roles.insert(user);
                    self.set_agent(user, holds);
                    if whole {
                        self.heard_presences.insert(user);
                        self.available.insert(user, false);
                    }
                }
                for (user, available) in presences {
                    self.heard_presences.insert(user);
                    self.available.insert(user, available);
                }
            }
            Seen::Presence(user, available) => {
                self.heard_presences.insert(user);
                self.available.insert(user, available);
            }
            Seen::Member(user, holds) => {
                self.heard_roles.insert(user);
                self.set_agent(user, holds);
            }
        }
    }

    fn set_agent(&mut self, user: u64, holds_role: bool) {
        if holds_role {
            self.agents.insert(user);
        } else {
            self.agents.remove(&user);
        }
    }

    /// Agents online, idle or dnd.
    pub(in crate::bridge) fn online(&self) -> usize {
        self.agents.iter().filter(|a| self.available.get(a).copied().unwrap_or(false)).count()
    }
}

/// What a gateway event changes in the roster, if it concerns the guild.
fn seen(config: &DiscordConfig, event: &GatewayEvent) -> Option<Seen> {
    let guild = config.guild_id;
    let presence = |p: &Presence| (p.user.id.get(), is_available(p.status));
    match event {
        GatewayEvent::GuildMembersChunk(chunk) if chunk.guild_id.get() == guild => {
            let nonce = chunk.nonce.as_deref()?.strip_prefix(NONCE_PREFIX)?.parse().ok()?;
            Some(Seen::Chunk {
                nonce,
                index: chunk.chunk_index,
                count: chunk.chunk_count,
                members: chunk.members.values().map(|m| (m.user.id.get(), holds_support(config, &m.roles))).collect(),
                presences: chunk.presences.iter().flatten().map(presence).collect(),
            })
        }
        GatewayEvent::GuildCreate(event) if event.guild.id.get() == guild => {
            let g = &event.guild;
            let carried = u64::try_from(g.members.len()).unwrap_or(u64::MAX);
            Some(Seen::Guild {
                members: g.members.values().map(|m| (m.user.id.get(), holds_support(config, &m.roles))).collect(),
                presences: g.presences.values().map(presence).collect(),
                whole: !g.large && carried >= g.member_count,
            })
        }
        GatewayEvent::PresenceUpdate(event) if event.presence.guild_id.map(GuildId::get) == Some(guild) => {
            let (user, available) = presence(&event.presence);
            Some(Seen::Presence(user, available))
        }
        GatewayEvent::GuildMemberAdd(event) if event.member.guild_id.get() == guild => {
            Some(Seen::Member(event.member.user.id.get(), holds_support(config, &event.member.roles)))
        }
        GatewayEvent::GuildMemberUpdate(event) if event.guild_id.get() == guild => {
            Some(Seen::Member(event.user.id.get(), holds_support(config, &event.roles)))
        }
        GatewayEvent::GuildMemberRemove(event) if event.guild_id.get() == guild => {
            Some(Seen::Member(event.user.id.get(), false))
        }
        _ => None,
    }
}

/// The collector of member request `request`: applies the shard's events to
/// the roster as they come, until a newer request's answer replaced it (or
/// the bridge is gone). Called by serenity's shard runner for each event
/// before any handler runs, with the runner's list of collectors locked: it
/// only takes the state's lock.
pub(super) fn roster_collector(shared: Weak<Shared>, request: u64) -> CollectorCallback {
    CollectorCallback(Box::new(move |event| {
        let Some(shared) = shared.upgrade() else { return false };
        let seen = seen(&shared.config, event);
        let mut state = shared.state();
        if request < state.roster.request {
            return false;
        }
        if let Some(seen) = seen {
            state.roster.apply(request, seen);
        }
        true
    }))
}

/// The prefix of the nonce of our member requests; the request's number follows.
pub(super) const NONCE_PREFIX: &str = "chat-bridge:";

fn is_available(status: OnlineStatus) -> bool {
    matches!(status, OnlineStatus::Online | OnlineStatus::Idle | OnlineStatus::DoNotDisturb)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn agents(roster: &Roster) -> Vec<u64> {
        let mut agents: Vec<u64> = roster.agents.iter().copied().collect();
        agents.sort_unstable();
        agents
    }

    fn chunk(nonce: u64, index: u32, count: u32, members: &[(u64, bool)], presences: &[(u64, bool)]) -> Seen {
        Seen::Chunk { nonce, index, count, members: members.to_vec(), presences: presences.to_vec() }
    }

    /// The roster follows the shard's events in order: the answer to a
    /// member request starts it, events after its first chunk win over its
    /// later chunks, events its collector saw before the answer are older
    /// than it, and an older request's collector changes nothing.
    #[test]
    fn the_roster_follows_the_events_in_order() {
        // (what, events as (collector's request, event), agents after, online after, complete)
        type Case = (&'static str, Vec<(u64, Seen)>, &'static [u64], usize, bool);
        let table: Vec<Case> = vec![
            ("no answer yet", vec![(1, Seen::Presence(1, true)), (1, Seen::Member(1, true))], &[], 0, false),
            (
                "one chunk: members without a presence are offline",
                vec![(1, chunk(1, 0, 1, &[(1, true), (2, true), (3, false)], &[(1, true), (3, true)]))],
                &[1, 2],
                1,
                true,
            ),
            (
                "later events apply in order",
                vec![
                    (1, chunk(1, 0, 1, &[(1, true), (2, true)], &[(1, true)])),
                    (1, Seen::Presence(2, true)),
                    (1, Seen::Presence(1, false)),
                    (1, Seen::Member(3, true)),
                    (1, Seen::Presence(3, true)),
                    (1, Seen::Member(2, false)),
                ],
                &[1, 3],
                1,
                true,
            ),
            (
                "events after the first chunk win over later chunks",
                vec![
                    (1, chunk(1, 0, 2, &[(1, true)], &[(1, true)])),
                    (1, Seen::Member(2, false)),
                    (1, Seen::Presence(3, false)),
                    (1, chunk(1, 1, 2, &[(2, true), (3, true)], &[(2, true), (3, true)])),
                ],
                &[1, 3],
                1,
                true,
            ),
            ("an answer not yet whole", vec![(1, chunk(1, 0, 2, &[(1, true)], &[(1, true)]))], &[1], 1, false),
            (
                "a newer answer replaces the roster; its collector ignores what came before it",
                vec![
                    (1, chunk(1, 0, 1, &[(1, true), (2, true)], &[(1, true), (2, true)])),
                    (2, Seen::Presence(3, true)),
                    (2, chunk(2, 0, 1, &[(2, true)], &[])),
                    (1, Seen::Presence(2, true)),
                    (1, Seen::Member(4, true)),
                ],
                &[2],
                0,
                true,
            ),
            (
                "a chunk answering another request is not this collector's",
                vec![(2, chunk(1, 0, 1, &[(1, true)], &[(1, true)]))],
                &[],
                0,
                false,
            ),
            (
                "a whole GUILD_CREATE after the answer replaces members and presences",
                vec![
                    (1, chunk(1, 0, 1, &[(1, true), (2, true)], &[(1, true), (2, true)])),
                    (1, Seen::Guild { members: vec![(2, true), (3, true)], presences: vec![(3, true)], whole: true }),
                ],
                &[2, 3],
                1,
                true,
            ),
            (
                "a large one changes only whom it carries",
                vec![
                    (1, chunk(1, 0, 1, &[(1, true), (2, true)], &[(1, true), (2, true)])),
                    (1, Seen::Guild { members: vec![(3, true)], presences: vec![(3, true)], whole: false }),
                ],
                &[1, 2, 3],
                3,
                true,
            ),
        ];
        for (what, events, want_agents, want_online, want_complete) in table {
            let mut roster = Roster::default();
            for (request, seen) in events {
                roster.apply(request, seen);
            }
            assert_eq!(agents(&roster), want_agents, "{what}");
            assert_eq!(roster.online(), want_online, "{what}");
            assert_eq!(roster.complete, want_complete, "{what}");
        }
    }
}
