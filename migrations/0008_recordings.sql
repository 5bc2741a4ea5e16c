-- Recordings made by HTTP apps' `record` verb: where the file is, and whose call it was
-- (the business number scopes who may download or delete it).
CREATE TABLE IF NOT EXISTS recordings (
    id TEXT PRIMARY KEY,
    call_id TEXT NOT NULL,
    business_number TEXT NOT NULL,
    app TEXT NOT NULL,
    path TEXT NOT NULL,
    bytes BIGINT NOT NULL,
    created_at_ms BIGINT NOT NULL
);
