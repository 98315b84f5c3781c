-- Moderation and room settings (protocol section 4): a room's topic, each
-- member's mute, and the users barred from a room until unbanned.

ALTER TABLE rooms ADD COLUMN topic TEXT;

-- Milliseconds; NULL is no mute, a past time an ended one.
ALTER TABLE members ADD COLUMN muted_until INTEGER;

-- add_member reads it by (room_id, user_id) in the transaction that would
-- insert; room:bans lists a room's bans newest first.
CREATE TABLE room_bans (
    room_id   TEXT NOT NULL REFERENCES rooms (id) ON DELETE CASCADE,
    user_id   TEXT NOT NULL,
    banned_by TEXT NOT NULL,
    banned_at INTEGER NOT NULL,
    PRIMARY KEY (room_id, user_id)
) STRICT, WITHOUT ROWID;

CREATE INDEX room_bans_newest ON room_bans (room_id, banned_at DESC);
