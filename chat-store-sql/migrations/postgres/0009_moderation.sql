-- Moderation and room settings (protocol section 4): a room's topic, each
-- member's mute, and the users barred from a room until unbanned.

ALTER TABLE rooms ADD COLUMN topic TEXT;

-- Milliseconds; NULL is no mute, a past time an ended one. Not indexed, so
-- that setting it stays a HOT update.
ALTER TABLE members ADD COLUMN muted_until BIGINT;

-- add_member reads it by (room_id, user_id) under the room's lock, in the
-- transaction that would insert; room:bans lists a room's bans newest first.
CREATE TABLE room_bans (
    room_id   UUID NOT NULL REFERENCES rooms (id) ON DELETE CASCADE,
    user_id   TEXT NOT NULL,
    banned_by TEXT NOT NULL,
    banned_at BIGINT NOT NULL,
    PRIMARY KEY (room_id, user_id)
);

CREATE INDEX room_bans_newest ON room_bans (room_id, banned_at DESC);
