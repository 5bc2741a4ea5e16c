-- Each audit record's customer as E.164 digits, however the record spelled its wa_id
-- (`+49…`, `0049…` and `49…` are one customer): the key the trail is searched by. Derived
-- from wa_id, which the record's hash covers and which is never rewritten; the switch fills
-- it in at start for records written before this column existed.
ALTER TABLE audit_records ADD COLUMN customer TEXT;
CREATE INDEX audit_records_customer ON audit_records (business_number, customer, seq);
