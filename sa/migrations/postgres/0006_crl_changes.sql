-- A CRL shard counts the revocations filed under it since its CRL was last signed: an unchanged shard is re-signed
-- only when its CRL grows old.
ALTER TABLE crl_shards ADD COLUMN revocations_pending BIGINT NOT NULL DEFAULT 0;
