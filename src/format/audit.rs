//! The audit log: one JSON record per line, each chained to the one before by a keyed blake3
//! MAC over the record and the previous record's MAC, so that editing, deleting or reordering
//! records breaks the chain. Pure: the MAC key and the bytes come from the caller.

use serde::{Deserialize, Serialize};

use super::{FormatError, hex, hex32};

/// `prev` of the first record.
pub const GENESIS: [u8; 32] = [0; 32];
/// A record longer than this is refused (and never written).
pub const MAX_RECORD_LEN: usize = 16 * 1024;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditRecord {
    /// 0 for the first record, then +1 each.
    pub seq: u64,
    /// RFC 3339, UTC, milliseconds.
    pub time: String,
    pub event: String,
    pub pid: u32,
    /// What happened, event by event (slot ids, KEK versions, counts, error kinds): never
    /// key material.
    pub details: serde_json::Value,
    /// hex: the previous record's `mac`, or 64 zeros for the first.
    pub prev: String,
    /// hex: blake3 keyed MAC over this record serialized compactly with `mac` empty.
    pub mac: String,
}

impl AuditRecord {
    /// The bytes the MAC covers: the compact JSON of the record with `mac` empty (serde_json
    /// writes fields in declaration order, and `details` as given).
    pub fn mac_input(&self) -> Vec<u8> {
        let mut copy = self.clone();
        copy.mac.clear();
        serde_json::to_vec(&copy).expect("record serializes")
    }

    pub fn set_mac(&mut self, mac: &[u8; 32]) {
        self.mac = hex(mac);
    }

    pub fn mac_bytes(&self) -> Result<[u8; 32], FormatError> {
        hex32(&self.mac).ok_or(FormatError::Invalid("audit record MAC"))
    }

    pub fn prev_bytes(&self) -> Result<[u8; 32], FormatError> {
        hex32(&self.prev).ok_or(FormatError::Invalid("audit record chain link"))
    }

    pub fn chain_to(&mut self, prev: &[u8; 32]) {
        self.prev = hex(prev);
    }

    /// One line, without the newline.
    pub fn to_line(&self) -> Result<String, FormatError> {
        let line = serde_json::to_string(self).expect("record serializes");
        if line.len() > MAX_RECORD_LEN {
            return Err(FormatError::Invalid("audit record (too long)"));
        }
        Ok(line)
    }

    pub fn parse(line: &str) -> Result<Self, FormatError> {
        if line.len() > MAX_RECORD_LEN {
            return Err(FormatError::Invalid("audit record (too long)"));
        }
        let record: AuditRecord =
            serde_json::from_str(line).map_err(|_| FormatError::Invalid("audit record JSON"))?;
        record.mac_bytes()?;
        record.prev_bytes()?;
        Ok(record)
    }
}

/// What is wrong at one line of a log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ChainBreak {
    /// Not a record at all: a torn write if it is the last line, damage otherwise.
    Unparsable,
    /// The record's own MAC does not match: it was edited (or forged without the key).
    BadMac,
    /// The record does not chain to the record before it: something between was deleted, or
    /// records were reordered.
    BadLink { expected_seq: u64, found_seq: u64 },
}

/// Checks a whole log. `mac` computes the keyed MAC of a record's MAC input. Returns the number
/// of intact records and every break, by line number (1-based).
pub fn verify_chain(
    text: &str,
    mac: impl Fn(&[u8]) -> [u8; 32],
) -> (u64, Vec<(usize, ChainBreak)>) {
    let mut breaks = Vec::new();
    let mut prev = GENESIS;
    let mut next_seq = 0u64;
    let mut intact = 0;
    for (index, line) in text.lines().enumerate() {
        let line_no = index + 1;
        if line.is_empty() {
            continue;
        }
        let Ok(record) = AuditRecord::parse(line) else {
            breaks.push((line_no, ChainBreak::Unparsable));
            continue;
        };
        let stored = record.mac_bytes().unwrap_or_default();
        if !crate::crypto::constant_time_eq(&mac(&record.mac_input()), &stored) {
            // Edited in place: report it, and follow the chain on past it so that one edit
            // is one break.
            breaks.push((line_no, ChainBreak::BadMac));
            prev = stored;
            next_seq = record.seq.saturating_add(1);
            continue;
        }
        let linked = record.prev_bytes().unwrap_or_default();
        if record.seq != next_seq || !crate::crypto::constant_time_eq(&linked, &prev) {
            breaks.push((
                line_no,
                ChainBreak::BadLink {
                    expected_seq: next_seq,
                    found_seq: record.seq,
                },
            ));
        }
        intact += 1;
        prev = stored;
        next_seq = record.seq.saturating_add(1);
    }
    (intact, breaks)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn key_mac(data: &[u8]) -> [u8; 32] {
        *blake3::keyed_hash(&[7; 32], data).as_bytes()
    }

    fn log(n: u64) -> Vec<String> {
        let mut prev = GENESIS;
        (0..n)
            .map(|seq| {
                let mut record = AuditRecord {
                    seq,
                    time: "2026-11-22T00:00:00.000Z".into(),
                    event: "test".into(),
                    pid: 1,
                    details: serde_json::json!({ "n": seq }),
                    prev: String::new(),
                    mac: String::new(),
                };
                record.chain_to(&prev);
                let mac = key_mac(&record.mac_input());
                record.set_mac(&mac);
                prev = mac;
                record.to_line().unwrap()
            })
            .collect()
    }

    fn verify(lines: &[String]) -> (u64, Vec<(usize, ChainBreak)>) {
        verify_chain(&(lines.join("\n") + "\n"), key_mac)
    }

    #[test]
    fn intact_log_verifies() {
        assert_eq!(verify(&log(5)), (5, vec![]));
    }

    #[test]
    fn edit_delete_reorder_are_detected() {
        let mut edited = log(5);
        edited[2] = edited[2].replace("\"n\":2", "\"n\":9");
        assert_eq!(verify(&edited).1, vec![(3, ChainBreak::BadMac)]);

        let mut deleted = log(5);
        deleted.remove(2);
        assert!(matches!(
            verify(&deleted).1[..],
            [(3, ChainBreak::BadLink { .. })]
        ));

        let mut reordered = log(5);
        reordered.swap(1, 3);
        assert!(!verify(&reordered).1.is_empty());

        let mut first_gone = log(5);
        first_gone.remove(0);
        assert!(matches!(
            verify(&first_gone).1[..],
            [(1, ChainBreak::BadLink { .. })]
        ));
    }

    #[test]
    fn forged_record_without_key_is_detected() {
        let mut lines = log(3);
        let mut record = AuditRecord::parse(&lines[2]).unwrap();
        record.event = "forged".into();
        record.set_mac(blake3::keyed_hash(&[8; 32], &record.mac_input()).as_bytes());
        lines[2] = record.to_line().unwrap();
        assert_eq!(verify(&lines).1, vec![(3, ChainBreak::BadMac)]);
    }

    proptest! {
        #[test]
        fn parse_and_verify_never_panic(text in ".{0,600}") {
            let _ = AuditRecord::parse(&text);
            let _ = verify_chain(&text, key_mac);
        }
    }
}
