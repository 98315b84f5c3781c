-- One holder per bridge: of several processes configured with one bridge,
-- the one holding its lease runs the outbox worker and the connection.
-- A holder renews its lease before it ends; once it ended, another may take
-- it. Times are milliseconds since the Unix epoch, as elsewhere.
CREATE TABLE bridge_leases (
    bridge     TEXT NOT NULL PRIMARY KEY,
    holder     TEXT NOT NULL,
    expires_at BIGINT NOT NULL
);
