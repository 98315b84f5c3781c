-- Membership limits, one open support room per visitor, and the support queue
-- by waiting time.

-- Whether the member joined by themselves (created or joined the room) rather
-- than being added by someone else: only these count towards a user's quota
-- of rooms, so that nobody can fill another user's quota. Before this column,
-- a room's owner was its creator. Never updated, so the partial index below
-- costs cursor moves nothing (they stay HOT).
ALTER TABLE members ADD COLUMN self_joined BOOLEAN NOT NULL DEFAULT false;
UPDATE members SET self_joined = true WHERE role = 'owner';
-- Counting a user's own rooms reads their entries here only.
CREATE INDEX members_own_by_user ON members (user_id) WHERE self_joined;

-- The creator of a support room while it is open (NULL once closed, and for
-- other kinds): UNIQUE, so that a creator has one open support room even when
-- two servers race to make it, as direct_key does for direct rooms. Only the
-- newest open support room of each creator gets it here, so that existing
-- duplicates cannot fail the migration. Sends never change it.
ALTER TABLE rooms ADD COLUMN open_support_of TEXT UNIQUE;
UPDATE rooms SET open_support_of = created_by
WHERE id IN (SELECT DISTINCT ON (created_by) id FROM rooms
             WHERE kind = 'support' AND NOT closed
             ORDER BY created_by, created_at DESC, id DESC);

-- The support queue agents see is now the open support rooms that have a
-- message, longest waiting first: `waiting_since` is the time of the room's
-- first message, set by the append that stores it (in the statement that
-- moves the room's counter) and never moved after; closing the room clears
-- it. The order by newest activity stays, closed rooms included, for the
-- bridges' catch-up.
ALTER TABLE support_queue ADD COLUMN waiting_since BIGINT;
UPDATE support_queue q
SET waiting_since = (SELECT m.created_at FROM messages m WHERE m.room_id = q.room_id ORDER BY m.seq LIMIT 1)
FROM rooms r WHERE r.id = q.room_id AND NOT r.closed;
CREATE INDEX support_queue_waiting ON support_queue (waiting_since, room_id) WHERE waiting_since IS NOT NULL;
