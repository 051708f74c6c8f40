-- A CRL shard counts the revocations filed under it since its CRL was last signed: an unchanged shard is re-signed
-- only when its CRL grows old.
ALTER TABLE crl_shards ADD COLUMN revocations_pending INTEGER NOT NULL DEFAULT 0;
-- Revocations filed before this migration were not counted: every shard is signed anew once.
UPDATE crl_shards SET revocations_pending = 1;
