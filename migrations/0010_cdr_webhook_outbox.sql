-- CDRs the CDR webhook has still to deliver, written in the same transaction as the CDR:
-- a node that stops or dies before the receiver took them sends them when it starts again,
-- and in a cluster a survivor adopts the rows of a node that is gone. A row leaves when the
-- receiver answered 2xx; one the receiver refused for good, or that ran out of attempts,
-- stays with `gave_up_at` set, for the operator.
CREATE TABLE IF NOT EXISTS cdr_webhook_outbox (
    call_id TEXT PRIMARY KEY,
    node_id TEXT NOT NULL,
    ended_at BIGINT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    gave_up_at BIGINT
);
CREATE INDEX IF NOT EXISTS cdr_webhook_outbox_node ON cdr_webhook_outbox (node_id, ended_at);
