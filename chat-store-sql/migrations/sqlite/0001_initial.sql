-- The first schema of the SQLite store.
--
-- Ids are TEXT (user ids as given, UUIDs in their hyphenated form), times are
-- INTEGER milliseconds since the Unix epoch, lists are JSON text. Tables are
-- STRICT so that a wrongly typed bind fails instead of being stored.

CREATE TABLE users (
    id         TEXT NOT NULL PRIMARY KEY,
    name       TEXT NOT NULL,
    avatar_url TEXT,
    roles      TEXT NOT NULL DEFAULT '[]'
) STRICT;

CREATE TABLE rooms (
    id            TEXT NOT NULL PRIMARY KEY,
    kind          TEXT NOT NULL CHECK (kind IN ('direct', 'group', 'support')),
    name          TEXT,
    visibility    TEXT NOT NULL CHECK (visibility IN ('public', 'private')),
    created_by    TEXT NOT NULL,
    created_at    INTEGER NOT NULL,
    -- The seq of the newest message. Appends bump it inside their transaction,
    -- which is what makes seqs gapless and unique.
    last_seq      INTEGER NOT NULL DEFAULT 0 CHECK (last_seq >= 0),
    -- The newest of created_at and every message's created_at; orders a user's rooms.
    last_activity INTEGER NOT NULL,
    -- Set for direct rooms only (NULLs never collide), so the pair of users can
    -- have one direct room even when two writers race to make it.
    direct_key    TEXT UNIQUE
) STRICT;

CREATE TABLE members (
    -- The rowid: it grows with every insert, so it orders members by joining.
    pos           INTEGER PRIMARY KEY,
    room_id       TEXT NOT NULL REFERENCES rooms (id) ON DELETE CASCADE,
    user_id       TEXT NOT NULL,
    role          TEXT NOT NULL CHECK (role IN ('member', 'admin', 'owner')),
    joined_at     INTEGER NOT NULL,
    delivered_seq INTEGER NOT NULL DEFAULT 0,
    read_seq      INTEGER NOT NULL DEFAULT 0,
    UNIQUE (room_id, user_id)
) STRICT;

-- A user's rooms, their count and their co-members start from the user.
CREATE INDEX members_by_user ON members (user_id, room_id);

CREATE TABLE messages (
    room_id       TEXT NOT NULL REFERENCES rooms (id) ON DELETE CASCADE,
    seq           INTEGER NOT NULL CHECK (seq >= 1),
    id            TEXT NOT NULL UNIQUE,
    sender_id     TEXT NOT NULL,
    client_msg_id TEXT NOT NULL,
    body          TEXT NOT NULL,
    attachments   TEXT NOT NULL DEFAULT '[]',
    reply_to      TEXT,
    created_at    INTEGER NOT NULL,
    edited_at     INTEGER,
    deleted       INTEGER NOT NULL DEFAULT 0 CHECK (deleted IN (0, 1)),
    -- History pages are range scans of this key.
    PRIMARY KEY (room_id, seq)
) STRICT;

-- Idempotency: one message per (room, sender, client_msg_id), looked up on every retry.
CREATE UNIQUE INDEX messages_idempotency ON messages (room_id, sender_id, client_msg_id);
