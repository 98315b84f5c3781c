-- One holder per bridge: of several processes configured with one bridge,
-- the one holding its lease runs the outbox worker and the connection.
-- A holder renews its lease before it ends; once it ended, another may take
-- it. Times are milliseconds since the Unix epoch, as elsewhere.
CREATE TABLE bridge_leases (
    bridge     TEXT NOT NULL PRIMARY KEY,
    holder     TEXT NOT NULL,
    expires_at BIGINT NOT NULL
);

-- Store::changed_messages: a bridge's catch-up asks each room for messages
-- edited or deleted since a time. Only changed messages are in it, so sends
-- pay nothing for it.
CREATE INDEX messages_changed ON messages (room_id, edited_at) WHERE edited_at IS NOT NULL;
