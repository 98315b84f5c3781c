-- Calls (sections 7 and 12 of the wire contract). Migration 10 is kept for
-- attachments, built beside this; nothing here depends on it.
--
-- A call's row is the truth every process decides on: whether a user is in
-- a live call (busy, glare) is read in the transaction that stores a new
-- call, and every later change is a compare-and-set on `version`. Times are
-- milliseconds, as everywhere; `*_until` is when a side counts as gone unless
-- its process renews it (see chat_core::call).
CREATE TABLE calls (
    id             TEXT PRIMARY KEY,
    room_id        TEXT NOT NULL,
    media          TEXT NOT NULL CHECK (media IN ('audio', 'video')),
    caller_id      TEXT NOT NULL,
    caller_session TEXT,
    caller_until   INTEGER,
    callee_id      TEXT NOT NULL,
    callee_session TEXT,
    callee_until   INTEGER,
    state          TEXT NOT NULL CHECK (state IN ('ringing', 'accepted', 'ended')),
    created_at     INTEGER NOT NULL,
    ring_until     INTEGER NOT NULL,
    accepted_at    INTEGER,
    ended_at       INTEGER,
    end_reason     TEXT,
    logged         INTEGER NOT NULL DEFAULT 0 CHECK (logged IN (0, 1)),
    version        INTEGER NOT NULL DEFAULT 0
);
-- The live calls of a user, read by every new call; the sweep's scan of
-- live calls; the ended calls whose history line is still to write.
CREATE INDEX calls_live_caller ON calls (caller_id) WHERE state <> 'ended';
CREATE INDEX calls_live_callee ON calls (callee_id) WHERE state <> 'ended';
CREATE INDEX calls_live ON calls (id) WHERE state <> 'ended';
CREATE INDEX calls_unlogged ON calls (id) WHERE state = 'ended' AND logged = 0;

-- The line a call leaves in its room's history: how it went, as JSON
-- ({"call_id","media","outcome","duration_s"?}); NULL for other messages.
ALTER TABLE messages ADD COLUMN call TEXT;
