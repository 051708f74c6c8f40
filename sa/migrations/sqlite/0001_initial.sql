-- Quarry's storage schema for SQLite, modelled on Boulder's tables. Timestamps are Unix seconds.

CREATE TABLE accounts (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    jwk BLOB NOT NULL,
    key_hash BLOB NOT NULL UNIQUE,
    status TEXT NOT NULL,
    contact TEXT NOT NULL DEFAULT '[]',
    terms_of_service_agreed INTEGER NOT NULL DEFAULT 0,
    created_at INTEGER NOT NULL
);

CREATE TABLE authorizations (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    account_id INTEGER NOT NULL REFERENCES accounts(id),
    identifier_type TEXT NOT NULL,
    -- As the order asked for it: "*.example.com" for a wildcard.
    identifier_value TEXT NOT NULL,
    status TEXT NOT NULL,
    expires INTEGER NOT NULL,
    challenge_types TEXT NOT NULL,
    token TEXT NOT NULL,
    attempted TEXT,
    attempted_at INTEGER,
    validated_at INTEGER,
    validation_error TEXT,
    validation_records TEXT,
    profile TEXT NOT NULL,
    created INTEGER NOT NULL
);
CREATE INDEX authorizations_reuse ON authorizations (account_id, identifier_type, identifier_value, status, expires);
CREATE INDEX authorizations_expires ON authorizations (expires);

CREATE TABLE orders (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    account_id INTEGER NOT NULL REFERENCES accounts(id),
    expires INTEGER NOT NULL,
    error TEXT,
    certificate_serial TEXT NOT NULL DEFAULT '',
    began_processing INTEGER NOT NULL DEFAULT 0,
    created INTEGER NOT NULL,
    profile TEXT NOT NULL,
    replaces TEXT NOT NULL DEFAULT '',
    not_before INTEGER NOT NULL DEFAULT 0,
    not_after INTEGER NOT NULL DEFAULT 0,
    identifiers TEXT NOT NULL
);
CREATE INDEX orders_account ON orders (account_id, created);

CREATE TABLE order_authorizations (
    order_id INTEGER NOT NULL REFERENCES orders(id),
    authorization_id INTEGER NOT NULL REFERENCES authorizations(id),
    position INTEGER NOT NULL,
    PRIMARY KEY (order_id, authorization_id)
);
CREATE INDEX order_authorizations_authorization ON order_authorizations (authorization_id);

CREATE TABLE order_fqdn_sets (
    set_hash BLOB NOT NULL,
    order_id INTEGER NOT NULL REFERENCES orders(id),
    account_id INTEGER NOT NULL,
    expires INTEGER NOT NULL
);
CREATE INDEX order_fqdn_sets_reuse ON order_fqdn_sets (account_id, set_hash, expires);
CREATE INDEX order_fqdn_sets_order ON order_fqdn_sets (order_id);

CREATE TABLE serials (
    serial TEXT NOT NULL UNIQUE,
    account_id INTEGER NOT NULL,
    created INTEGER NOT NULL,
    expires INTEGER NOT NULL
);
CREATE INDEX serials_account ON serials (account_id);

CREATE TABLE certificates (
    serial TEXT NOT NULL UNIQUE,
    account_id INTEGER NOT NULL,
    digest TEXT NOT NULL,
    der BLOB NOT NULL,
    issued INTEGER NOT NULL,
    expires INTEGER NOT NULL,
    issuer_id INTEGER NOT NULL
);
CREATE INDEX certificates_account ON certificates (account_id);
CREATE INDEX certificates_issued ON certificates (issued);

CREATE TABLE certificate_status (
    serial TEXT NOT NULL UNIQUE,
    status TEXT NOT NULL,
    revoked_date INTEGER NOT NULL DEFAULT 0,
    revoked_reason INTEGER NOT NULL DEFAULT 0,
    not_after INTEGER NOT NULL,
    issuer_id INTEGER NOT NULL
);
CREATE INDEX certificate_status_not_after ON certificate_status (not_after);

CREATE TABLE fqdn_sets (
    set_hash BLOB NOT NULL,
    serial TEXT NOT NULL,
    issued INTEGER NOT NULL,
    expires INTEGER NOT NULL
);
CREATE INDEX fqdn_sets_hash ON fqdn_sets (set_hash, issued);
CREATE INDEX fqdn_sets_serial ON fqdn_sets (serial);

CREATE TABLE issued_names (
    reversed_name TEXT NOT NULL,
    not_before INTEGER NOT NULL,
    serial TEXT NOT NULL,
    renewal INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX issued_names_name ON issued_names (reversed_name, not_before);

CREATE TABLE key_hash_to_serial (
    key_hash BLOB NOT NULL,
    cert_not_after INTEGER NOT NULL,
    serial TEXT NOT NULL,
    UNIQUE (key_hash, serial)
);
CREATE INDEX key_hash_to_serial_expiry ON key_hash_to_serial (key_hash, cert_not_after);

CREATE TABLE blocked_keys (
    key_hash BLOB NOT NULL UNIQUE,
    added INTEGER NOT NULL,
    source TEXT NOT NULL,
    comment TEXT NOT NULL DEFAULT ''
);
