-- Every recording the switch keeps: its own (a policy's, one started on demand, an app's)
-- and Meta's (a call's recording or transcript, fetched when Meta announces it). `path` is
-- the local file, or the object's key when `storage` is 's3'; `sha256` is the hex digest of
-- the bytes kept; `customer` (the customer's WhatsApp id) is what the audit trail of a
-- retention sweep is keyed by.
ALTER TABLE recordings ADD COLUMN sha256 TEXT;
ALTER TABLE recordings ADD COLUMN storage TEXT NOT NULL DEFAULT 'local';
ALTER TABLE recordings ADD COLUMN media_type TEXT NOT NULL DEFAULT 'audio/wav';
ALTER TABLE recordings ADD COLUMN source TEXT NOT NULL DEFAULT 'switch';
ALTER TABLE recordings ADD COLUMN kind TEXT NOT NULL DEFAULT 'audio';
ALTER TABLE recordings ADD COLUMN customer TEXT;
CREATE INDEX IF NOT EXISTS recordings_created ON recordings (created_at_ms);
CREATE INDEX IF NOT EXISTS recordings_call ON recordings (call_id);

-- The call's recording (the switch's: id, where it is kept, digest) and Meta's recording
-- and transcript of it, by recording id.
ALTER TABLE cdrs ADD COLUMN recording_id TEXT;
ALTER TABLE cdrs ADD COLUMN recording_file TEXT;
ALTER TABLE cdrs ADD COLUMN recording_sha256 TEXT;
ALTER TABLE cdrs ADD COLUMN meta_recording_id TEXT;
ALTER TABLE cdrs ADD COLUMN meta_transcript_id TEXT;
CREATE INDEX IF NOT EXISTS cdrs_wa_call_id ON cdrs (wa_call_id);
