//! The audit trail of permissions and business-initiated calls: append-only records, each
//! carrying the hash of the one before, so an edited, deleted or reordered record breaks
//! the chain and [`Verifier`] says where.
//!
//! A leaf, sans-IO: hashing, checking and CSV. The permission service decides what is
//! recorded; the store appends and reads the records.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Who did something to a permission.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Actor {
    /// The customer (a reply, a revocation, an opt-out).
    Customer,
    /// The business (through the API or its PBX).
    Business,
    /// Meta on its own (an automatic grant after a callback, an automatic revocation).
    Meta,
    /// The switch (expiry, policy).
    Switch,
}

/// The `prev_hash` of the first record.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// What is appended: one permission or call event of one (business number, customer) pair.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AuditEntry {
    /// When it happened (epoch ms).
    pub at: i64,
    /// The business's WhatsApp number.
    pub business_number: String,
    /// The customer's WhatsApp id.
    pub wa_id: String,
    /// What happened (`requested`, `granted`, `call_blocked`, ...).
    pub kind: String,
    /// Who did it.
    pub actor: Actor,
    /// The event's fields and context (purpose, Meta's ids, the call's id, reasons,
    /// durations), as JSON text; hashed exactly as stored.
    pub detail: String,
}

/// A stored record: the entry, its place in the chain and the chain's hashes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AuditRecord {
    /// Position in the trail, from 1, without gaps.
    pub seq: i64,
    /// The entry.
    #[serde(flatten)]
    pub entry: AuditEntry,
    /// The previous record's hash ([`GENESIS`] for the first).
    pub prev_hash: String,
    /// This record's hash: SHA-256 over `prev_hash` and every field.
    pub hash: String,
}

impl AuditRecord {
    /// The record that follows `prev` (`None`: the first) for `entry`.
    pub fn next(prev: Option<(i64, &str)>, entry: AuditEntry) -> AuditRecord {
        let (seq, prev_hash) = match prev {
            Some((seq, hash)) => (seq + 1, hash.to_string()),
            None => (1, GENESIS.to_string()),
        };
        let hash = record_hash(seq, &prev_hash, &entry);
        AuditRecord {
            seq,
            entry,
            prev_hash,
            hash,
        }
    }
}

/// SHA-256 (lower-case hex) over the previous hash and every field of the record, each
/// field length-prefixed so no two records hash the same text.
pub fn record_hash(seq: i64, prev_hash: &str, e: &AuditEntry) -> String {
    let mut h = Sha256::new();
    let actor = serde_json::to_value(e.actor)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default();
    for field in [
        prev_hash,
        &seq.to_string(),
        &e.at.to_string(),
        &e.business_number,
        &e.wa_id,
        &e.kind,
        &actor,
        &e.detail,
    ] {
        h.update((field.len() as u64).to_be_bytes());
        h.update(field.as_bytes());
    }
    hex(&h.finalize())
}

fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(char::from(DIGITS[usize::from(b >> 4)]));
        s.push(char::from(DIGITS[usize::from(b & 15)]));
    }
    s
}

/// What is wrong with a trail.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, thiserror::Error)]
#[serde(tag = "problem", rename_all = "snake_case")]
pub enum Broken {
    /// A record's content no longer matches its hash (edited).
    #[error("record {seq} was altered: its content does not match its hash")]
    Altered {
        /// The record.
        seq: i64,
    },
    /// Records are missing before this one (deleted).
    #[error("record {expected} is missing (the next record is {found})")]
    Missing {
        /// The position that should come next.
        expected: i64,
        /// The position found instead.
        found: i64,
    },
    /// A record does not follow the one before it (reordered, or one replaced).
    #[error("record {seq} does not follow record {}: the chain is broken", seq - 1)]
    Unchained {
        /// The record.
        seq: i64,
    },
    /// The trail ends before its recorded head (records deleted at the end).
    #[error("the trail ends at record {last} but {head} were written")]
    Truncated {
        /// The last record present.
        last: i64,
        /// How many were written.
        head: i64,
    },
    /// The trail's head does not match its last record.
    #[error("the last record {seq} does not match the trail's recorded head")]
    HeadMismatch {
        /// The last record.
        seq: i64,
    },
}

/// Checks a trail record by record, in `seq` order; feed every record, then
/// [`Verifier::finish`] with the recorded head.
#[derive(Debug, Default)]
pub struct Verifier {
    last: Option<(i64, String)>,
    checked: u64,
}

impl Verifier {
    /// A verifier at the start of the trail.
    pub fn new() -> Verifier {
        Verifier::default()
    }

    /// Checks the next record.
    pub fn check(&mut self, r: &AuditRecord) -> Result<(), Broken> {
        let expected = self.last.as_ref().map_or(1, |(s, _)| s + 1);
        if r.seq > expected {
            return Err(Broken::Missing {
                expected,
                found: r.seq,
            });
        }
        if r.seq < expected {
            return Err(Broken::Unchained { seq: r.seq });
        }
        let prev = self.last.as_ref().map_or(GENESIS, |(_, h)| h.as_str());
        if record_hash(r.seq, &r.prev_hash, &r.entry) != r.hash {
            return Err(Broken::Altered { seq: r.seq });
        }
        if r.prev_hash != prev {
            return Err(Broken::Unchained { seq: r.seq });
        }
        self.last = Some((r.seq, r.hash.clone()));
        self.checked += 1;
        Ok(())
    }

    /// Checks the end of the trail against its recorded head (`seq`, `hash` of the last
    /// record written); the number of records checked.
    pub fn finish(self, head_seq: i64, head_hash: &str) -> Result<u64, Broken> {
        let (last, hash) = self.last.unwrap_or((0, GENESIS.to_string()));
        if last < head_seq {
            return Err(Broken::Truncated {
                last,
                head: head_seq,
            });
        }
        if last != head_seq || hash != head_hash {
            return Err(Broken::HeadMismatch { seq: last });
        }
        Ok(self.checked)
    }
}

/// The CSV header of [`csv_line`].
pub const CSV_HEADER: &str = "seq,at,business_number,wa_id,kind,actor,detail,prev_hash,hash\n";

/// One record as a CSV line (RFC 4180 quoting), ending in a newline.
pub fn csv_line(r: &AuditRecord) -> String {
    let actor = serde_json::to_value(r.entry.actor)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default();
    let fields = [
        r.seq.to_string(),
        r.entry.at.to_string(),
        r.entry.business_number.clone(),
        r.entry.wa_id.clone(),
        r.entry.kind.clone(),
        actor,
        r.entry.detail.clone(),
        r.prev_hash.clone(),
        r.hash.clone(),
    ];
    let mut line = String::new();
    for (i, f) in fields.iter().enumerate() {
        if i > 0 {
            line.push(',');
        }
        if f.contains([',', '"', '\n', '\r']) {
            line.push('"');
            line.push_str(&f.replace('"', "\"\""));
            line.push('"');
        } else {
            line.push_str(f);
        }
    }
    line.push('\n');
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(k: i64) -> AuditEntry {
        AuditEntry {
            at: 1_700_000_000_000 + k,
            business_number: "15551112222".into(),
            wa_id: format!("49151{k}"),
            kind: "granted".into(),
            actor: Actor::Customer,
            detail: format!("{{\"event\":\"granted\",\"n\":{k}}}"),
        }
    }

    fn chain(n: i64) -> Vec<AuditRecord> {
        let mut out: Vec<AuditRecord> = Vec::new();
        for k in 0..n {
            let prev = out.last().map(|r| (r.seq, r.hash.as_str()));
            let r = AuditRecord::next(prev, entry(k));
            out.push(r);
        }
        out
    }

    fn verify(records: &[AuditRecord], head: (i64, &str)) -> Result<u64, Broken> {
        let mut v = Verifier::new();
        for r in records {
            v.check(r)?;
        }
        v.finish(head.0, head.1)
    }

    #[test]
    fn an_intact_trail_verifies_and_each_kind_of_tampering_is_named() {
        let records = chain(5);
        let head = (5, records[4].hash.clone());
        assert_eq!(verify(&records, (head.0, &head.1)), Ok(5));

        let mut edited = records.clone();
        edited[2].entry.detail = "{\"event\":\"declined\"}".into();
        assert_eq!(
            verify(&edited, (head.0, &head.1)),
            Err(Broken::Altered { seq: 3 })
        );

        let mut deleted = records.clone();
        deleted.remove(1);
        assert_eq!(
            verify(&deleted, (head.0, &head.1)),
            Err(Broken::Missing {
                expected: 2,
                found: 3
            })
        );

        // Two records swapped, their positions renumbered to look contiguous.
        let mut reordered = records.clone();
        reordered.swap(1, 2);
        reordered[1].seq = 2;
        reordered[2].seq = 3;
        assert!(matches!(
            verify(&reordered, (head.0, &head.1)),
            Err(Broken::Altered { seq: 2 })
        ));
        // Swapped with their hashes recomputed (a forger who knows the scheme): the
        // chain still breaks.
        let mut forged = reordered.clone();
        for r in &mut forged[1..3] {
            r.hash = record_hash(r.seq, &r.prev_hash, &r.entry);
        }
        assert_eq!(
            verify(&forged, (head.0, &head.1)),
            Err(Broken::Unchained { seq: 2 })
        );

        let truncated = &records[..4];
        assert_eq!(
            verify(truncated, (head.0, &head.1)),
            Err(Broken::Truncated { last: 4, head: 5 })
        );
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(500))]

        /// Whatever one record is changed in, removed or moved, the trail no longer
        /// verifies; untouched, it does.
        #[test]
        fn any_single_tampering_is_detected(
            n in 2i64..40,
            pick in 0usize..1000,
            other in 0usize..1000,
            how in 0u8..8,
            text in "[a-z0-9 ]{1,12}",
        ) {
            let records = chain(n);
            let head_hash = records[records.len() - 1].hash.clone();
            proptest::prop_assert_eq!(verify(&records, (n, &head_hash)), Ok(n as u64));
            let i = pick % records.len();
            let j = other % records.len();
            let mut t = records.clone();
            match how {
                0 => t[i].entry.detail.push_str(&text),
                1 => t[i].entry.at += 1,
                2 => t[i].entry.wa_id.push('9'),
                3 => t[i].entry.kind = format!("{}-{text}", t[i].entry.kind),
                4 => t[i].entry.actor = Actor::Switch,
                5 => { t.remove(i); }
                6 => {
                    proptest::prop_assume!(i != j);
                    t.swap(i, j);
                    // Renumbered to look contiguous.
                    for (k, r) in t.iter_mut().enumerate() {
                        r.seq = k as i64 + 1;
                    }
                }
                _ => t[i].prev_hash = GENESIS.replace('0', "1"),
            }
            proptest::prop_assert!(verify(&t, (n, &head_hash)).is_err(), "undetected: {how} at {i}");
        }
    }

    #[test]
    fn csv_quotes_what_needs_quoting() {
        let r = &chain(1)[0];
        let line = csv_line(r);
        assert!(line
            .starts_with("1,1700000000000,15551112222,491510,granted,customer,\"{\"\"event\"\":"));
        // Eight separators, and the one comma inside the quoted detail.
        assert_eq!(line.matches(',').count(), 9, "{line}");
    }
}
