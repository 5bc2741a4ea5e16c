-- Media quality of a call, filled for calls whose media the switch relayed.
ALTER TABLE cdrs ADD COLUMN media_packets BIGINT;
ALTER TABLE cdrs ADD COLUMN media_lost BIGINT;
ALTER TABLE cdrs ADD COLUMN media_jitter_ms BIGINT;
ALTER TABLE cdrs ADD COLUMN media_mos_centi BIGINT;
