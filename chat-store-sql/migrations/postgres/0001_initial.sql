-- The first schema of the PostgreSQL store.
--
-- Room and message ids are native UUIDs; user ids are TEXT as given; times are
-- BIGINT milliseconds since the Unix epoch, as in the SQLite schema, so that
-- both stores hand out identical values. Every table lives in the first schema
-- of the connection's search_path, so one database can hold several
-- deployments (or test runs) side by side.

CREATE TABLE users (
    id         TEXT NOT NULL PRIMARY KEY,
    name       TEXT NOT NULL,
    avatar_url TEXT,
    roles      TEXT[] NOT NULL DEFAULT '{}'
);

CREATE TABLE rooms (
    id            UUID NOT NULL PRIMARY KEY,
    kind          TEXT NOT NULL CHECK (kind IN ('direct', 'group', 'support')),
    name          TEXT,
    visibility    TEXT NOT NULL CHECK (visibility IN ('public', 'private')),
    created_by    TEXT NOT NULL,
    created_at    BIGINT NOT NULL,
    -- The seq of the newest message. An append locks the room row and moves
    -- this counter inside its transaction: that lock is what keeps seqs
    -- gapless and unique when several processes write to one room.
    last_seq      BIGINT NOT NULL DEFAULT 0 CHECK (last_seq >= 0),
    -- The newest of created_at and every message's created_at; orders a user's rooms.
    last_activity BIGINT NOT NULL,
    -- Set for direct rooms only (NULLs never collide), so that a pair of users
    -- has one direct room even when two servers race to make it.
    direct_key    TEXT UNIQUE
);

CREATE TABLE members (
    room_id       UUID NOT NULL REFERENCES rooms (id) ON DELETE CASCADE,
    user_id       TEXT NOT NULL,
    -- Grows with every insert, so it orders members by joining.
    pos           BIGINT GENERATED ALWAYS AS IDENTITY,
    role          TEXT NOT NULL CHECK (role IN ('member', 'admin', 'owner')),
    joined_at     BIGINT NOT NULL,
    delivered_seq BIGINT NOT NULL DEFAULT 0,
    read_seq      BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (room_id, user_id)
);

-- A user's rooms, their count and their co-members start from the user; the
-- included columns let the unread count come from the index alone.
CREATE INDEX members_by_user ON members (user_id) INCLUDE (room_id, read_seq);
-- A room's member list in joining order, without a sort in rooms of thousands.
CREATE INDEX members_by_room_pos ON members (room_id, pos);

CREATE TABLE messages (
    room_id       UUID NOT NULL REFERENCES rooms (id) ON DELETE CASCADE,
    seq           BIGINT NOT NULL CHECK (seq >= 1),
    id            UUID NOT NULL UNIQUE,
    sender_id     TEXT NOT NULL,
    client_msg_id TEXT NOT NULL,
    body          TEXT NOT NULL,
    attachments   JSONB NOT NULL DEFAULT '[]',
    reply_to      UUID,
    created_at    BIGINT NOT NULL,
    edited_at     BIGINT,
    deleted       BOOLEAN NOT NULL DEFAULT FALSE,
    -- History pages are range scans of this key, in either direction.
    PRIMARY KEY (room_id, seq)
);

-- Idempotency: one message per (room, sender, client_msg_id). This constraint,
-- not a lookup before the insert, is what makes a retried send store once.
CREATE UNIQUE INDEX messages_idempotency ON messages (room_id, sender_id, client_msg_id);
