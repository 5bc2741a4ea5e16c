-- How a call's audio crossed the switch: "PCMU pass-through", "opus <-> PCMA (transcoded)".
ALTER TABLE cdrs ADD COLUMN codec_path TEXT;
