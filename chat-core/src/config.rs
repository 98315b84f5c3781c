//! Limits and timings of the engine. Every limit has a default that suits a
//! public deployment; embedders and operators can change each one.

use std::time::Duration;

/// Size and rate limits.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Limits {
    /// Longest message body, in characters.
    pub max_body_chars: usize,
    /// Longest room name, in characters.
    pub max_room_name_chars: usize,
    /// Longest room topic (`room:update`), in characters.
    pub max_room_topic_chars: usize,
    /// Largest history page.
    pub max_history_page: u32,
    /// History page when the client gives no limit.
    pub default_history_page: u32,
    /// Most rooms one user may have created or joined by themselves. Rooms
    /// others added them to do not count (nobody can fill another's quota),
    /// nor, for a support agent, the support rooms they answer.
    pub max_rooms_per_user: u64,
    /// Rooms one user may create, plus users they may invite, per minute
    /// (all their sessions on one process together); 0 is no limit. Bounds
    /// how fast anyone can add others to rooms.
    pub room_actions_per_minute: u32,
    /// Most members one room may have.
    pub max_members_per_room: u64,
    /// Most members `room:create` may name at once.
    pub max_initial_members: usize,
    /// Most sessions one user may have open on one server process.
    pub max_connections_per_user: usize,
    /// Sustained commands per second per session.
    pub commands_per_second: u32,
    /// Commands a session may send in a burst above the sustained rate.
    pub command_burst: u32,
    /// Events queued for one session before it counts as a slow consumer and is closed.
    pub outbound_queue: usize,
    /// Commands of one session being processed at once (sends waiting for their commit).
    pub max_in_flight: usize,
    /// Largest `users:search` result.
    pub max_search_results: u32,
    /// Support rooms a support agent's room list shows besides their own
    /// rooms: the first page of the support queue (longest waiting first).
    pub support_queue: u32,
    /// Bad frames tolerated within [`Limits::bad_frame_window`] before the session is closed.
    pub max_bad_frames: u32,
    /// The window for [`Limits::max_bad_frames`].
    pub bad_frame_window: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_body_chars: 4000,
            max_room_name_chars: 100,
            max_room_topic_chars: 500,
            max_history_page: 100,
            default_history_page: 50,
            max_rooms_per_user: 1000,
            room_actions_per_minute: 30,
            max_members_per_room: 10_000,
            max_initial_members: 100,
            max_connections_per_user: 16,
            commands_per_second: 50,
            command_burst: 200,
            outbound_queue: 1024,
            max_in_flight: 256,
            max_search_results: 50,
            support_queue: 50,
            max_bad_frames: 20,
            bad_frame_window: Duration::from_secs(10),
        }
    }
}

/// Everything the engine can be tuned by.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct EngineConfig {
    /// Size and rate limits.
    pub limits: Limits,
    /// Typing ends by itself this long after the last `typing:start`.
    pub typing_timeout: Duration,
    /// A session stays open this long past its credentials' expiry.
    pub expiry_leeway: Duration,
    /// Most messages committed together in one store call. The engine keeps
    /// it to at most half of [`Limits::outbound_queue`], so that one batch
    /// cannot fill the queue of a client that keeps up.
    pub max_commit_batch: usize,
    /// How long the committer keeps a batch open for more sends once it holds
    /// one, while the store is idle. Zero commits at once. A few milliseconds
    /// turn many small commits (each one fsync) into a few larger ones when
    /// sends arrive steadily, at that much extra latency per send.
    pub commit_window: Duration,
    /// Messages fetched per store call when replaying a room after `since_seq`.
    pub backlog_chunk: u32,
    /// How often each session yields [`Output::Keepalive`](crate::Output),
    /// for transports that check on their clients (the WebSocket transport
    /// pings, and closes a connection that stayed silent past its idle
    /// timeout). Zero turns it off.
    pub keepalive_interval: Duration,
    /// How processes of a cluster keep in step (used only with a broker).
    pub cluster: ClusterConfig,
    /// The timings of calls.
    pub calls: CallConfig,
}

/// The timings and limits of calls (`engine/calls.rs`).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct CallConfig {
    /// How long a call rings before it ends with `timeout`.
    pub ring_timeout: Duration,
    /// How long a participant whose session closed has to come back
    /// (`call:rejoin`) before the call ends with `disconnected`.
    pub disconnect_grace: Duration,
    /// How long a participant's session counts as present without its
    /// process saying so again. The process renews it for its open sessions
    /// every [`CallConfig::sweep_interval`]; a process that died stops, and
    /// any other ends its calls once the lease has run out.
    pub lease: Duration,
    /// How often each process renews its sessions' leases and ends the
    /// calls whose deadline passed in the store (whichever process placed
    /// them), and writes the history lines a dead process left unwritten.
    pub sweep_interval: Duration,
    /// Largest `call:signal` payload, in bytes of JSON.
    pub max_signal_bytes: usize,
}

impl Default for CallConfig {
    fn default() -> Self {
        CallConfig {
            ring_timeout: Duration::from_secs(30),
            disconnect_grace: Duration::from_secs(10),
            lease: Duration::from_secs(30),
            sweep_interval: Duration::from_secs(5),
            max_signal_bytes: 16 * 1024,
        }
    }
}

/// The timings of a cluster of processes (an engine with a broker).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ClusterConfig {
    /// How often a process tells the others it is alive (and its presence
    /// version, so that a lost update shows).
    pub heartbeat: Duration,
    /// A process not heard from for this long is taken for dead: its users'
    /// sessions no longer count as online. Several heartbeats, so that one
    /// lost heartbeat is not a death.
    pub node_timeout: Duration,
    /// How long a message that arrived ahead of its predecessor waits for it
    /// before the gap is filled from the store.
    pub gap_hold: Duration,
    /// How often a process compares each room it serves with the store, to
    /// find messages that were stored but never published (their process
    /// died in between) or lost on the way.
    pub audit_interval: Duration,
    /// How long an operation that must reach the other processes before it
    /// is answered (leaving a room) waits for the broker.
    pub flush_timeout: Duration,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        ClusterConfig {
            heartbeat: Duration::from_secs(2),
            node_timeout: Duration::from_secs(10),
            gap_hold: Duration::from_millis(200),
            audit_interval: Duration::from_secs(5),
            flush_timeout: Duration::from_secs(3),
        }
    }
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            limits: Limits::default(),
            typing_timeout: Duration::from_secs(6),
            expiry_leeway: Duration::from_secs(5),
            max_commit_batch: 512,
            commit_window: Duration::ZERO,
            backlog_chunk: 500,
            keepalive_interval: Duration::from_secs(30),
            cluster: ClusterConfig::default(),
            calls: CallConfig::default(),
        }
    }
}
