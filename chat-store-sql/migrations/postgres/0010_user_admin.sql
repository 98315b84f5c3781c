-- Accounts for the admin API (section 9 of the wire contract): when each user
-- was first stored and last seen, whether they are active, when their tokens
-- were last revoked and their profile last set by an operator, and when they
-- were deleted. Only the users table changes, so this applies whether or not
-- the migrations numbered before it have run.

ALTER TABLE users
    -- now() is fixed for the statement, so PostgreSQL adds the column
    -- without rewriting the table: users stored before count as made now.
    ADD COLUMN created_at        BIGINT NOT NULL DEFAULT (extract(epoch FROM now()) * 1000)::bigint,
    -- Set when a session opens and when a user's last session on a process closes.
    ADD COLUMN last_seen         BIGINT,
    -- FALSE while deactivated: no credential of the user is accepted.
    ADD COLUMN active            BOOLEAN NOT NULL DEFAULT TRUE,
    -- Credentials issued at or before this second (or without an issue time) are refused.
    ADD COLUMN tokens_revoked_at BIGINT,
    -- Credentials issued at or before this second no longer set the name and roles.
    ADD COLUMN profile_set_at    BIGINT,
    -- Set once, for good: the row stays so that the id is never given out
    -- again, with its name, avatar and roles cleared.
    ADD COLUMN deleted_at        BIGINT;

-- The user list: users who are not deleted, in byte order of their ids (as
-- every store pages them), a range of this index from the previous page's
-- last id.
CREATE INDEX users_listed ON users (id COLLATE "C") WHERE deleted_at IS NULL;

-- The rooms a user was a member of when they were deleted. Their membership
-- is gone (they read, post and count nowhere), but the rooms' member lists go
-- on naming them, as deleted, so that clients can show who wrote the
-- messages they left.
CREATE TABLE deleted_members (
    room_id    UUID NOT NULL REFERENCES rooms (id) ON DELETE CASCADE,
    user_id    TEXT NOT NULL,
    deleted_at BIGINT NOT NULL,
    PRIMARY KEY (room_id, user_id)
);
