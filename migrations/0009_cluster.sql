-- The nodes of a cluster sharing this database, and which node owns which call.
-- A node writes its heartbeat every second (state `up` or `draining`); one silent for 3 s
-- is taken as `lost` by a survivor, which closes its calls out; one that stopped in good
-- order is `left`.
CREATE TABLE IF NOT EXISTS cluster_nodes (
    node_id TEXT PRIMARY KEY,
    url TEXT NOT NULL,
    heartbeat_at BIGINT NOT NULL,
    state TEXT NOT NULL
);
-- A call's owner, by the switch's call id (`call:<id>`) and by each of Meta's ids of it
-- (`wa:<wacid>`): a webhook received by another node is forwarded there. The owner renews
-- its leases while the call lives; a lease past its end names nobody. The `call:` row also
-- keeps what a survivor needs to write the call's CDR if its node is lost.
CREATE TABLE IF NOT EXISTS call_owners (
    key TEXT PRIMARY KEY,
    node_id TEXT NOT NULL,
    call_id TEXT NOT NULL,
    lease_until BIGINT NOT NULL,
    detail TEXT,
    answered_at BIGINT
);
CREATE INDEX IF NOT EXISTS call_owners_node ON call_owners (node_id);
