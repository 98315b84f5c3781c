-- Full-text search over messages (messages:search). `search` holds the words
-- of the current text (case and accents folded by the server, as
-- chat_core::search has them) as a tsvector of the 'simple' configuration,
-- set with the body by every insert and edit and cleared by a delete, so
-- that a search never finds a deleted message or words an edit removed.
-- Messages stored before this migration get theirs from the server at its
-- next start (PostgresStore::connect), found through messages_unsearched.
ALTER TABLE messages ADD COLUMN search tsvector;
CREATE INDEX messages_search ON messages USING gin (search);
CREATE INDEX messages_unsearched ON messages (room_id, seq) WHERE search IS NULL AND NOT deleted;
