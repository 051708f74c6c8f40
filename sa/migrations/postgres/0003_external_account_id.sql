-- External account binding (RFC 8555 §7.3.4): which external account an ACME account was bound to at creation.
ALTER TABLE accounts ADD COLUMN external_account_id TEXT NOT NULL DEFAULT '';
