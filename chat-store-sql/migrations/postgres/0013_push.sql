-- Web Push subscriptions (section 8 of the wire contract). One row per
-- endpoint: subscribed again, by whoever, it is replaced (and becomes that
-- user's newest). A user keeps at most ten; the store drops the oldest (by id).
CREATE TABLE push_subscriptions (
    id         BIGSERIAL PRIMARY KEY,
    endpoint   TEXT NOT NULL UNIQUE,
    user_id    TEXT NOT NULL,
    p256dh     TEXT NOT NULL,
    auth       TEXT NOT NULL,
    created_at BIGINT NOT NULL
);
CREATE INDEX push_subscriptions_of_user ON push_subscriptions (user_id, id);
