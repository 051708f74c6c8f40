-- The account's orders list (RFC 8555 §7.1.2.1) pages through one account's orders by id (keyset pagination):
-- `orders_account` is by creation time, which neither orders by id nor ends in it on PostgreSQL. An index only, so
-- every release's statements run as before.
CREATE INDEX orders_account_id ON orders (account_id, id);
