-- Full-text search over messages (messages:search): an FTS5 index of the
-- current text of every message that is not deleted. External content: the
-- text lives in messages alone, the index holds only its tokens. Triggers
-- keep it in step in the transaction of every insert, edit and delete, so
-- that a search never finds a deleted message or words an edit removed.
-- unicode61 with remove_diacritics 2 folds case and accents; words are runs
-- of letters and digits, as chat_core::search has them.
CREATE VIRTUAL TABLE messages_fts USING fts5 (
    body,
    content = 'messages',
    content_rowid = 'rowid',
    tokenize = 'unicode61 remove_diacritics 2'
);
INSERT INTO messages_fts (rowid, body) SELECT rowid, body FROM messages WHERE deleted = 0;

CREATE TRIGGER messages_fts_insert AFTER INSERT ON messages WHEN new.deleted = 0 BEGIN
    INSERT INTO messages_fts (rowid, body) VALUES (new.rowid, new.body);
END;

CREATE TRIGGER messages_fts_delete AFTER DELETE ON messages WHEN old.deleted = 0 BEGIN
    INSERT INTO messages_fts (messages_fts, rowid, body) VALUES ('delete', old.rowid, old.body);
END;

CREATE TRIGGER messages_fts_update AFTER UPDATE OF body, deleted ON messages BEGIN
    INSERT INTO messages_fts (messages_fts, rowid, body) SELECT 'delete', old.rowid, old.body WHERE old.deleted = 0;
    INSERT INTO messages_fts (rowid, body) SELECT new.rowid, new.body WHERE new.deleted = 0;
END;
