-- Agents added through the REST API (PUT /v1/agents/{user}), next to those of the
-- configuration file. Their digest secrets (HA1 for MD5 and SHA-256), never the password.
CREATE TABLE IF NOT EXISTS agents (
    user_name TEXT PRIMARY KEY,
    ha1_md5 TEXT NOT NULL,
    ha1_sha256 TEXT NOT NULL,
    display_name TEXT,
    queues TEXT NOT NULL,
    updated_at_ms BIGINT NOT NULL
);
