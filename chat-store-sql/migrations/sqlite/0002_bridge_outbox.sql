-- What bridges keep: an outbox of calls to the remote platform, and links
-- between local and remote ids (a room and its thread, a message and its copy).

CREATE TABLE bridge_jobs (
    -- AUTOINCREMENT: ids never come back after a delete, so they order jobs
    -- by enqueue for as long as the database lives.
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    bridge     TEXT NOT NULL,
    -- Jobs of one queue run one after the other, in id order.
    queue      TEXT NOT NULL,
    dedupe_key TEXT NOT NULL,
    kind       TEXT NOT NULL,
    payload    TEXT NOT NULL,
    status     TEXT NOT NULL CHECK (status IN ('pending', 'failed')),
    attempts   INTEGER NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    run_at     INTEGER NOT NULL,
    last_error TEXT,
    created_at INTEGER NOT NULL,
    UNIQUE (bridge, dedupe_key)
) STRICT;

-- The head of each queue: the lowest pending id per (bridge, queue).
CREATE INDEX bridge_jobs_by_queue ON bridge_jobs (bridge, status, queue, id);

CREATE TABLE bridge_links (
    bridge    TEXT NOT NULL,
    kind      TEXT NOT NULL,
    local_id  TEXT NOT NULL,
    remote_id TEXT NOT NULL,
    PRIMARY KEY (bridge, kind, local_id)
) STRICT;

CREATE INDEX bridge_links_by_remote ON bridge_links (bridge, kind, remote_id);
