-- Each CRL shard keeps its latest signed CRL, served at the URL its certificates name.
ALTER TABLE crl_shards ADD COLUMN der BYTEA;
