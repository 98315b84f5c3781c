-- Support rooms: the agent who took the conversation, and whether it was
-- closed to new messages (a bridge's Claim and Close buttons).
ALTER TABLE rooms ADD COLUMN claimed_by TEXT;
ALTER TABLE rooms ADD COLUMN closed BOOLEAN NOT NULL DEFAULT false;
