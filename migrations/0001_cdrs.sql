-- Call detail records: exactly one row per call, keyed by the switch's call id.
-- Portable SQL (SQLite and PostgreSQL). Times are Unix epoch milliseconds (UTC).
CREATE TABLE cdrs (
    call_id          TEXT PRIMARY KEY,
    node_id          TEXT NOT NULL,
    direction        TEXT NOT NULL,
    business_number  TEXT,
    customer_wa_id   TEXT,
    wa_call_id       TEXT,
    sip_call_id      TEXT,
    trunk            TEXT,
    offered_at       BIGINT NOT NULL,
    ringing_at       BIGINT,
    answered_at      BIGINT,
    ended_at         BIGINT NOT NULL,
    duration_ms      BIGINT NOT NULL,
    outcome          TEXT NOT NULL,
    hangup_by        TEXT NOT NULL,
    end_cause        TEXT NOT NULL,
    failure          TEXT
);

CREATE INDEX cdrs_offered_at ON cdrs (offered_at);
CREATE INDEX cdrs_business_number ON cdrs (business_number, offered_at);
