-- ACME Renewal Information (RFC 9773): the order that replaces a certificate. One row per replaced serial; a later
-- replacement order overwrites an expired or failed one, and `replaced` becomes 1 once the order is finalized.
CREATE TABLE replacement_orders (
    serial TEXT PRIMARY KEY,
    order_id BIGINT NOT NULL REFERENCES orders (id),
    order_expires BIGINT NOT NULL,
    replaced BIGINT NOT NULL DEFAULT 0
);
CREATE INDEX replacement_orders_order ON replacement_orders (order_id);
