-- Accounts for the admin API (section 9 of the wire contract): when each user
-- was first stored and last seen, whether they are active, when their tokens
-- were last revoked and their profile last set by an operator, and when they
-- were deleted. Only the users table changes, so this applies whether or not
-- the migrations numbered before it have run.

-- Users stored before this migration count as made now: nothing older is known.
ALTER TABLE users ADD COLUMN created_at INTEGER NOT NULL DEFAULT 0;
UPDATE users SET created_at = CAST(unixepoch('subsec') * 1000 AS INTEGER);
-- Set when a session opens and when a user's last session on a process closes.
ALTER TABLE users ADD COLUMN last_seen INTEGER;
-- 0 while deactivated: no credential of the user is accepted.
ALTER TABLE users ADD COLUMN active INTEGER NOT NULL DEFAULT 1 CHECK (active IN (0, 1));
-- Credentials issued at or before this second (or without an issue time) are refused.
ALTER TABLE users ADD COLUMN tokens_revoked_at INTEGER;
-- Credentials issued at or before this second no longer set the name and roles.
ALTER TABLE users ADD COLUMN profile_set_at INTEGER;
-- Set once, for good: the row stays so that the id is never given out again,
-- with its name, avatar and roles cleared. The user list walks the primary
-- key's index in id order and skips these.
ALTER TABLE users ADD COLUMN deleted_at INTEGER;

-- The rooms a user was a member of when they were deleted. Their membership
-- is gone (they read, post and count nowhere), but the rooms' member lists go
-- on naming them, as deleted, so that clients can show who wrote the
-- messages they left.
CREATE TABLE deleted_members (
    room_id    TEXT NOT NULL REFERENCES rooms (id) ON DELETE CASCADE,
    user_id    TEXT NOT NULL,
    deleted_at INTEGER NOT NULL,
    PRIMARY KEY (room_id, user_id)
) STRICT, WITHOUT ROWID;
