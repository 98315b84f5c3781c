-- Membership limits, one open support room per visitor, and the support queue
-- by waiting time.

-- Whether the member joined by themselves (created or joined the room) rather
-- than being added by someone else: only these count towards a user's quota
-- of rooms, so that nobody can fill another user's quota. Before this column,
-- a room's owner was its creator.
ALTER TABLE members ADD COLUMN self_joined INTEGER NOT NULL DEFAULT 0 CHECK (self_joined IN (0, 1));
UPDATE members SET self_joined = 1 WHERE role = 'owner';
-- Counting a user's own rooms reads their entries here only.
CREATE INDEX members_own_by_user ON members (user_id) WHERE self_joined;

-- The creator of a support room while it is open (NULL once closed, and for
-- other kinds): UNIQUE, so that a creator has one open support room even when
-- two writers race to make it, as direct_key does for direct rooms. Only the
-- newest open support room of each creator gets it here, so that existing
-- duplicates cannot fail the migration.
ALTER TABLE rooms ADD COLUMN open_support_of TEXT;
UPDATE rooms SET open_support_of = created_by
WHERE id IN (SELECT id FROM (SELECT id, row_number() OVER (PARTITION BY created_by ORDER BY created_at DESC, id DESC) AS n
                             FROM rooms WHERE kind = 'support' AND closed = 0)
             WHERE n = 1);
CREATE UNIQUE INDEX rooms_open_support_of ON rooms (open_support_of);

-- When the room's first message was stored; set by the append that stores it.
-- The support queue lists open support rooms that have one, longest waiting
-- first: a range of this partial index, however many support rooms never got
-- a message. The order by newest activity (rooms_support_by_activity) stays,
-- for the bridges' catch-up.
ALTER TABLE rooms ADD COLUMN first_message_at INTEGER;
UPDATE rooms SET first_message_at = (SELECT m.created_at FROM messages m WHERE m.room_id = rooms.id ORDER BY m.seq LIMIT 1)
WHERE last_seq > 0;
CREATE INDEX rooms_support_queue ON rooms (first_message_at, id)
WHERE kind = 'support' AND closed = 0 AND first_message_at IS NOT NULL;
