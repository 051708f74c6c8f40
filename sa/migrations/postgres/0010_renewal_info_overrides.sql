-- quarry dev's Pebble `POST /set-renewal-info/`: the renewal-information answer (RFC 9773) a client test suite chose
-- for a certificate, served verbatim by every wfe whose [client_testing] reads overrides. Only an sa whose
-- [client_testing] takes them writes here, so the table stays empty in every other environment. Keyed by the
-- certificate's serial as `certificates` holds it.
CREATE TABLE renewal_info_overrides (
    serial TEXT PRIMARY KEY,
    response TEXT NOT NULL,
    set_at BIGINT NOT NULL
);
