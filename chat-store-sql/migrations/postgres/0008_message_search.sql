-- Full-text search over messages (messages:search). `search` holds the words
-- of the current text (case and accents folded by the server, as
-- chat_core::search has them) as a tsvector of exactly those lexemes,
-- set with the body by every insert and edit and cleared by a delete, so
-- that a search never finds a deleted message or words an edit removed.
-- Messages stored before this migration get theirs from the server at its
-- next start (PostgresStore::connect), found through messages_unsearched.
ALTER TABLE messages ADD COLUMN search tsvector;
-- New entries go to the index's pending list, which the insert that fills it
-- merges into the index. At the default 4 MB that merge stalls one commit
-- for long enough to double the durable sends' p99 (76 ms against 36 ms
-- without the index); at 512 kB the merges are small and the p99 is 40-46 ms
-- at the same throughput. Without a pending list (fastupdate off) every
-- insert pays the merge: 8 % fewer sends. See docs/BENCHMARKS.md.
CREATE INDEX messages_search ON messages USING gin (search) WITH (gin_pending_list_limit = 512);
CREATE INDEX messages_unsearched ON messages (room_id, seq) WHERE search IS NULL AND NOT deleted;
