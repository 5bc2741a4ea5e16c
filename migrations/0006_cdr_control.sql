-- What call control did on the call (an IVR's path, digits, voicemail, messages and
-- callback requests), as JSON; NULL for calls no script drove.
ALTER TABLE cdrs ADD COLUMN control TEXT;
