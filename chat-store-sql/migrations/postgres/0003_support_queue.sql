-- The support queue: support rooms by newest activity, for agents' room lists.
-- Partial, so that only support rooms pay for it.
CREATE INDEX rooms_support_by_activity ON rooms (last_activity DESC, id DESC) WHERE kind = 'support';
