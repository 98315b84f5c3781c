-- Calls (sections 7 and 12 of the wire contract). Migration 11 is kept for
-- attachments, built beside this; nothing here depends on it.
--
-- A call's row is the truth every process decides on. A new call is stored
-- under transaction-long advisory locks on both users' calls (taken in a
-- fixed order), so that of two users inviting each other at the same moment
-- on two processes one stores its call and the other finds it (glare).
-- Every later change is a compare-and-set on `version`. Times are
-- milliseconds, as everywhere; `*_until` is when a side counts as gone
-- unless its process renews it (see chat_core::call).
CREATE TABLE calls (
    id             UUID PRIMARY KEY,
    room_id        UUID NOT NULL,
    media          TEXT NOT NULL CHECK (media IN ('audio', 'video')),
    caller_id      TEXT NOT NULL,
    caller_session UUID,
    caller_until   BIGINT,
    callee_id      TEXT NOT NULL,
    callee_session UUID,
    callee_until   BIGINT,
    state          TEXT NOT NULL CHECK (state IN ('ringing', 'accepted', 'ended')),
    created_at     BIGINT NOT NULL,
    ring_until     BIGINT NOT NULL,
    accepted_at    BIGINT,
    ended_at       BIGINT,
    end_reason     TEXT,
    logged         BOOLEAN NOT NULL DEFAULT FALSE,
    version        BIGINT NOT NULL DEFAULT 0
);
CREATE INDEX calls_live_caller ON calls (caller_id) WHERE state <> 'ended';
CREATE INDEX calls_live_callee ON calls (callee_id) WHERE state <> 'ended';
CREATE INDEX calls_live ON calls (id) WHERE state <> 'ended';
CREATE INDEX calls_unlogged ON calls (id) WHERE state = 'ended' AND NOT logged;

-- The line a call leaves in its room's history; NULL for other messages.
ALTER TABLE messages ADD COLUMN call JSONB;
