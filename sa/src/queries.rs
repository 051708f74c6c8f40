//! The SQL of the hot queries, shared by the store and the query benchmark (which shows their plans).
//!
//! No query reads `*`: a statement prepared on a connection whose schema is older than the database's (another
//! connection, or another sa replica in a rolling update, has just added a column) is re-prepared by SQLite with
//! more columns than sqlx recorded, and reading it panicked the sa. Named columns mean the same thing on every
//! schema a replica may meet.

macro_rules! authorization_columns {
    () => {
        "id, account_id, identifier_type, identifier_value, status, expires, challenge_types, token, attempted, \
         attempted_at, validated_at, validation_error, validation_records, profile, created, recoveries, attempted_by"
    };
}

macro_rules! order_columns {
    () => {
        "id, account_id, expires, error, certificate_serial, began_processing, created, profile, replaces, \
         not_before, not_after, identifiers, processing_by"
    };
}

/// The columns every read of an authorization names, as a list.
pub const AUTHORIZATION_COLUMNS: &str = authorization_columns!();

/// The columns every read of an order names, as a list.
pub const ORDER_COLUMNS: &str = order_columns!();

/// An authorization by id.
pub const AUTHORIZATION_BY_ID: &str =
    concat!("SELECT ", authorization_columns!(), " FROM authorizations WHERE id = $1");

/// Records a validation's outcome on a pending authorization, answering with the authorization as it left it.
pub const FINALIZE_AUTHORIZATION: &str = concat!(
    "UPDATE authorizations SET status = $1, expires = CASE WHEN $2 THEN $3 ELSE expires END, attempted = $4, \
     attempted_at = $5, validated_at = CASE WHEN $6 THEN $7 ELSE NULL END, validation_records = $8, \
     validation_error = $9 WHERE id = $10 AND status = 'pending' RETURNING ",
    authorization_columns!()
);

/// An order's authorizations, in the order's order.
pub const ORDER_AUTHORIZATIONS: &str = concat!(
    "SELECT ",
    authorization_columns!(),
    " FROM authorizations JOIN order_authorizations ON authorization_id = id WHERE order_id = $1 ORDER BY position"
);

/// [`ORDER_AUTHORIZATIONS`] for PostgreSQL. PostgreSQL plans a prepared statement once for all its executions
/// (after five, by default) from the table sizes of that moment: on a fresh database a join planned while the tables
/// are nearly empty is a hash join over every authorization, kept until autovacuum's first `ANALYZE` about a minute
/// later, and costlier with every row written meanwhile. Each authorization is reached by its key instead, whatever
/// the sizes: `OFFSET 0` keeps the lateral subquery from being flattened into a join the planner may reorder.
pub const ORDER_AUTHORIZATIONS_POSTGRES: &str = concat!(
    "SELECT ",
    authorization_columns!(),
    " FROM order_authorizations l CROSS JOIN LATERAL (SELECT ",
    authorization_columns!(),
    " FROM authorizations WHERE id = l.authorization_id OFFSET 0) a WHERE l.order_id = $1 ORDER BY l.position"
);

/// Creates a pending authorization, answering with it as recorded (as [`AUTHORIZATION_BY_ID`] would read it).
pub const INSERT_AUTHORIZATION: &str = concat!(
    "INSERT INTO authorizations (account_id, identifier_type, identifier_value, status, expires, challenge_types, \
     token, profile, created) VALUES ($1, $2, $3, 'pending', $4, $5, $6, $7, $8) RETURNING ",
    authorization_columns!()
);

/// An order by id.
pub const ORDER_BY_ID: &str = concat!("SELECT ", order_columns!(), " FROM orders WHERE id = $1");

/// Creates an order, answering with it as recorded (as [`ORDER_BY_ID`] would read it).
pub const INSERT_ORDER: &str = concat!(
    "INSERT INTO orders (account_id, expires, created, profile, replaces, identifiers) VALUES ($1, $2, $3, $4, $5, $6) \
     RETURNING ",
    order_columns!()
);

/// A certificate's revocation status by serial.
pub const CERTIFICATE_STATUS_BY_SERIAL: &str =
    "SELECT status, revoked_date, revoked_reason, not_after, issuer_id FROM certificate_status WHERE serial = $1";

/// The account of a key (new-account, every JWS with a jwk).
pub const ACCOUNT_BY_KEY: &str = "SELECT id, jwk, status, contact, terms_of_service_agreed, created_at, external_account_id FROM accounts WHERE key_hash = $1";

/// The newest valid authorization of an account for one identifier (authorization reuse).
pub const VALID_AUTHORIZATION: &str = concat!(
    "SELECT ",
    authorization_columns!(),
    " FROM authorizations WHERE account_id = $1 AND identifier_type = $2 AND identifier_value = $3 AND status = 'valid' AND expires > $4 AND ($5 = '' OR profile = $6) ORDER BY expires DESC LIMIT 1"
);

/// Candidate orders of an account for one set of names (order reuse).
pub const ORDER_REUSE: &str = "SELECT s.order_id FROM order_fqdn_sets s JOIN orders o ON o.id = s.order_id WHERE s.account_id = $1 AND s.set_hash = $2 AND s.expires > $3 AND o.profile = $4 ORDER BY s.order_id DESC LIMIT 5";

/// [`ORDER_REUSE`] for PostgreSQL, each candidate's order reached by its key for the reason
/// [`ORDER_AUTHORIZATIONS_POSTGRES`] gives.
pub const ORDER_REUSE_POSTGRES: &str = "SELECT s.order_id FROM order_fqdn_sets s CROSS JOIN LATERAL (SELECT profile FROM orders WHERE id = s.order_id OFFSET 0) o WHERE s.account_id = $1 AND s.set_hash = $2 AND s.expires > $3 AND o.profile = $4 ORDER BY s.order_id DESC LIMIT 5";

/// Issuance times of one exact set of names (renewal detection, CertificatesPerFQDNSet).
pub const FQDN_SET_TIMES: &str =
    "SELECT issued FROM fqdn_sets WHERE set_hash = $1 AND issued > $2 ORDER BY issued DESC";

/// Issuance times of one order's set of names, by the set's hash recorded with the order (renewal detection at
/// finalization).
pub const ORDER_FQDN_SET_TIMES: &str = "SELECT issued FROM fqdn_sets WHERE set_hash = (SELECT set_hash FROM order_fqdn_sets WHERE order_id = $1) AND issued > $2 ORDER BY issued DESC";

/// Certificates naming a domain or a name under it (CertificatesPerDomain).
pub const CERTIFICATES_FOR_DOMAIN: &str = "SELECT COUNT(DISTINCT serial) FROM issued_names WHERE (reversed_name = $1 OR (reversed_name >= $2 AND reversed_name < $3)) AND not_before > $4";

/// The entries of one CRL shard.
pub const REVOKED_BY_SHARD: &str = "SELECT serial, revoked_date, revoked_reason FROM revoked_certificates WHERE issuer_id = $1 AND shard_idx = $2 AND not_after_hour >= $3";

/// A certificate by serial (download, revocation, ARI).
pub const CERTIFICATE_BY_SERIAL: &str =
    "SELECT serial, account_id, digest, der, issued, expires, issuer_id FROM certificates WHERE serial = $1";
