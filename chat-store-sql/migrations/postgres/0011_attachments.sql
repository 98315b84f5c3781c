-- Attachments (section 6 of the wire contract): the record of each upload.
-- Its bytes live in the blob store under the id. `message_id` is set once, in
-- the transaction that stores the message posting it (which locks the row);
-- `removed` when that message is deleted, or when the clean-up takes a file
-- never posted.
CREATE TABLE attachments (
    id             UUID PRIMARY KEY,
    uploader       TEXT NOT NULL,
    name           TEXT NOT NULL,
    content_type   TEXT NOT NULL,
    size           BIGINT NOT NULL CHECK (size >= 0),
    width          INTEGER,
    height         INTEGER,
    thumbnail_type TEXT,
    thumbnail_size BIGINT,
    created_at     BIGINT NOT NULL,
    room_id        UUID,
    message_id     UUID,
    removed        BOOLEAN NOT NULL DEFAULT FALSE
);
-- A user's usage (the quota), over their files that still count.
CREATE INDEX attachments_of_uploader ON attachments (uploader) WHERE NOT removed;
-- A deleted message's files.
CREATE INDEX attachments_of_message ON attachments (message_id) WHERE message_id IS NOT NULL;
-- What the clean-up may take: files removed, and files never posted (by age).
CREATE INDEX attachments_to_purge ON attachments (created_at) WHERE message_id IS NULL OR removed;

-- Secrets every process of a server shares (the key that signs attachment
-- URLs): the first value stored under a name stays.
CREATE TABLE server_secrets (
    name  TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
