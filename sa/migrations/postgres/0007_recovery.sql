-- Recovery of work a crash interrupted. The order a serial was reserved for, so that an order left processing by a
-- crashed ra can be finished from its stored precertificate; how often a stuck validation was taken over (retried
-- once, then failed); which ra replica runs each validation and issuance, and each replica's heartbeat, so that the
-- work of one that died is taken over at once; and the indexes the sweeper's look-ups need (only rows still mid-way
-- are indexed).
ALTER TABLE serials ADD COLUMN order_id BIGINT NOT NULL DEFAULT 0;
CREATE INDEX serials_order ON serials (order_id);
ALTER TABLE authorizations ADD COLUMN recoveries BIGINT NOT NULL DEFAULT 0;
CREATE INDEX authorizations_in_validation ON authorizations (attempted_at)
    WHERE status = 'pending' AND attempted IS NOT NULL;
CREATE INDEX orders_processing ON orders (began_processing)
    WHERE began_processing != 0 AND certificate_serial = '' AND error IS NULL;
ALTER TABLE authorizations ADD COLUMN attempted_by TEXT NOT NULL DEFAULT '';
ALTER TABLE orders ADD COLUMN processing_by TEXT NOT NULL DEFAULT '';
CREATE TABLE ra_heartbeats (
    instance TEXT PRIMARY KEY,
    alive_until BIGINT NOT NULL
);
