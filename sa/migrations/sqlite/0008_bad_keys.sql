-- The bad-key revoker (ra `badkeys`): a blocked key stays unchecked until every unexpired certificate with that key has
-- been revoked for key compromise.
ALTER TABLE blocked_keys ADD COLUMN certificates_checked INTEGER NOT NULL DEFAULT 0;
CREATE INDEX blocked_keys_unchecked ON blocked_keys (added) WHERE certificates_checked = 0;
