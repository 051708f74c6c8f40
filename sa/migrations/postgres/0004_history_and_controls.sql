-- The rest of the schema the CA needs: precertificates (the linting copy stored before signing, so that a
-- certificate is revocable even when later steps fail), revoked certificates by issuer and CRL shard, CRL shard
-- leases, paused identifiers and rate-limit overrides.

CREATE TABLE precertificates (
    serial TEXT PRIMARY KEY,
    account_id BIGINT NOT NULL,
    der BYTEA NOT NULL,
    issued BIGINT NOT NULL,
    expires BIGINT NOT NULL,
    issuer_id BIGINT NOT NULL
);

CREATE TABLE revoked_certificates (
    issuer_id BIGINT NOT NULL,
    shard_idx BIGINT NOT NULL,
    serial TEXT NOT NULL UNIQUE,
    revoked_date BIGINT NOT NULL,
    revoked_reason BIGINT NOT NULL,
    -- notAfter truncated to the hour, as Boulder keys it: a CRL lists entries whose hour has not passed.
    not_after_hour BIGINT NOT NULL
);
-- Covering: a CRL shard is read from the index alone.
CREATE INDEX revoked_certificates_shard
    ON revoked_certificates (issuer_id, shard_idx, not_after_hour, serial, revoked_date, revoked_reason);

CREATE TABLE crl_shards (
    issuer_id BIGINT NOT NULL,
    idx BIGINT NOT NULL,
    this_update BIGINT NOT NULL DEFAULT 0,
    next_update BIGINT NOT NULL DEFAULT 0,
    leased_until BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (issuer_id, idx)
);

CREATE TABLE paused_identifiers (
    account_id BIGINT NOT NULL,
    identifier_type TEXT NOT NULL,
    identifier_value TEXT NOT NULL,
    paused_at BIGINT NOT NULL,
    -- 0 while paused.
    unpaused_at BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (account_id, identifier_type, identifier_value)
);

CREATE TABLE rate_limit_overrides (
    limit_name TEXT NOT NULL,
    bucket_key TEXT NOT NULL,
    count BIGINT NOT NULL,
    period_secs BIGINT NOT NULL,
    burst BIGINT NOT NULL,
    comment TEXT NOT NULL DEFAULT '',
    enabled BIGINT NOT NULL DEFAULT 1,
    updated_at BIGINT NOT NULL,
    PRIMARY KEY (limit_name, bucket_key)
);

-- Per-domain issuance counts read the names' index alone (the serial is counted too).
DROP INDEX issued_names_name;
CREATE INDEX issued_names_name ON issued_names (reversed_name, not_before, serial);
