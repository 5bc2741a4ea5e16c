-- The nodes of a cluster sharing this database, and which node owns which call.
-- A node writes its heartbeat every second; one silent for 5 s is taken as gone.
CREATE TABLE IF NOT EXISTS cluster_nodes (
    node_id TEXT PRIMARY KEY,
    url TEXT NOT NULL,
    heartbeat_at BIGINT NOT NULL,
    state TEXT NOT NULL
);
-- A call's owner, by the switch's call id (`call:<id>`) and by each of Meta's ids of it
-- (`wa:<wacid>`): a webhook received by another node is forwarded there. The owner renews
-- its leases while the call lives; a lease past its end names nobody.
CREATE TABLE IF NOT EXISTS call_owners (
    key TEXT PRIMARY KEY,
    node_id TEXT NOT NULL,
    lease_until BIGINT NOT NULL
);
CREATE INDEX IF NOT EXISTS call_owners_node ON call_owners (node_id);
