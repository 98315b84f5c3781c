-- Sends update a member's cursors and a room's counter on every message.
-- PostgreSQL can make those updates in place (HOT: no new index entries, the
-- old version pruned from the page) only when no index covers a changed
-- column and the page has room. The covering index of a user's rooms carried
-- read_seq, so every cursor move added an entry to each of the three member
-- indexes and left a dead row behind.
DROP INDEX members_by_user;
CREATE INDEX members_by_user ON members (user_id) INCLUDE (room_id);

-- Room for the new version of a row on its own page.
ALTER TABLE members SET (fillfactor = 80);
ALTER TABLE rooms SET (fillfactor = 80);

-- Likewise rooms: the support queue's partial index on last_activity stopped
-- HOT for every room, support room or not, since it is the column and not
-- the row that counts. The queue's order now lives in a table of its own,
-- holding support rooms only, moved in the same statement as the room.
DROP INDEX rooms_support_by_activity;
CREATE TABLE support_queue (
    room_id       UUID NOT NULL PRIMARY KEY REFERENCES rooms (id) ON DELETE CASCADE,
    last_activity BIGINT NOT NULL
);
INSERT INTO support_queue (room_id, last_activity) SELECT id, last_activity FROM rooms WHERE kind = 'support';
CREATE INDEX support_queue_by_activity ON support_queue (last_activity DESC, room_id DESC);
