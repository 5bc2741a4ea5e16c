-- The audit trail of call permissions and business-initiated calls: append-only, each record
-- chained to the one before by its hash (SHA-256 over the previous hash and every field).
-- Portable SQL (SQLite and PostgreSQL). Times are Unix epoch milliseconds (UTC).
CREATE TABLE audit_records (
    seq              BIGINT PRIMARY KEY,
    at               BIGINT NOT NULL,
    business_number  TEXT NOT NULL,
    wa_id            TEXT NOT NULL,
    kind             TEXT NOT NULL,
    actor            TEXT NOT NULL,
    detail           TEXT NOT NULL,
    prev_hash        TEXT NOT NULL,
    hash             TEXT NOT NULL
);
CREATE INDEX audit_records_pair ON audit_records (business_number, wa_id, seq);
CREATE INDEX audit_records_at ON audit_records (at);

-- The last record written: appends lock this row, so the chain has one writer at a time
-- even across nodes, and a trail cut short at its end is detected.
CREATE TABLE audit_head (
    id    INTEGER PRIMARY KEY,
    seq   BIGINT NOT NULL,
    hash  TEXT NOT NULL
);
INSERT INTO audit_head (id, seq, hash)
VALUES (1, 0, '0000000000000000000000000000000000000000000000000000000000000000');
