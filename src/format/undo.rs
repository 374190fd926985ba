//! The undo journal of a data file: copies of stored blocks taken before a write replaced them
//! in place, so that a write torn by a crash or a kill never takes with it what the block held
//! before. Kept in a sidecar `sealfs.headers/<hh>/<id>.undo`; docs/FORMAT.md, "Undo journal",
//! says when records are written, how they are replayed and why they need no seal of their own.
//!
//! Sidecar: `"SEALUND" (7) || version (u8) = 1 || file id (16)`, then records back to back:
//! `block (u64) || epoch length (u64) || length (u32) || stored bytes (length)`: the block's
//! sealed bytes as they were, and the data file's backing length when the epoch (the writes
//! since the file's last fsync) began.
//! A record cut short (the journal's own write torn by the crash) ends the journal.

use super::{FormatError, Id, Reader};

const MAGIC: &[u8; 7] = b"SEALUND";
pub const VERSION: u8 = 1;
/// The sidecar's preamble: magic, version, file id.
pub const PREAMBLE_LEN: u64 = 24;
/// A record's fixed part: block, backing length, length.
pub const RECORD_HEAD_LEN: usize = 20;

/// One stored block as it was before a write replaced it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UndoRecord {
    pub block: u64,
    /// The data file's backing length when the epoch began: every block from there on was
    /// written in it.
    pub backing_len: u64,
    /// The block's stored bytes: a sealed block (nonce, ciphertext, tag), shorter than a whole
    /// one only where it was the file's last.
    pub stored: Vec<u8>,
}

pub fn encode_preamble(file_id: &Id) -> [u8; PREAMBLE_LEN as usize] {
    let mut out = [0u8; PREAMBLE_LEN as usize];
    out[..7].copy_from_slice(MAGIC);
    out[7] = VERSION;
    out[8..].copy_from_slice(file_id);
    out
}

/// Appends the encoding of one record to `out`.
pub fn encode_record(block: u64, backing_len: u64, stored: &[u8], out: &mut Vec<u8>) {
    out.extend_from_slice(&block.to_be_bytes());
    out.extend_from_slice(&backing_len.to_be_bytes());
    out.extend_from_slice(&(stored.len() as u32).to_be_bytes());
    out.extend_from_slice(stored);
}

/// The records of the journal `bytes` of file `file_id`, whose stored blocks are at most
/// `max_stored` bytes. The preamble must be whole and name the file; records are read up to
/// the first that is cut short or whose length is 0 or over `max_stored` (a torn write of the
/// journal itself, or bytes a torn truncation left: nothing after it was ever relied on).
pub fn decode(
    bytes: &[u8],
    file_id: &Id,
    max_stored: usize,
) -> Result<Vec<UndoRecord>, FormatError> {
    Ok(decode_with_end(bytes, file_id, max_stored)?.0)
}

/// `decode`, and where the records end: where the next one goes (what follows may be zeros,
/// older records or a record cut short, none of them read).
pub fn decode_with_end(
    bytes: &[u8],
    file_id: &Id,
    max_stored: usize,
) -> Result<(Vec<UndoRecord>, u64), FormatError> {
    let mut r = Reader::new(bytes, "undo journal");
    if r.take(7)? != MAGIC {
        return Err(FormatError::BadMagic("undo journal"));
    }
    let version = r.u8()?;
    if version > VERSION {
        return Err(FormatError::TooNew {
            what: "undo journal",
            found: version.into(),
            supported: VERSION.into(),
        });
    }
    if version == 0 {
        return Err(FormatError::Invalid("undo journal version"));
    }
    if &r.array::<16>()? != file_id {
        return Err(FormatError::Invalid("undo journal of another file"));
    }
    let mut records = Vec::new();
    let mut end = PREAMBLE_LEN;
    while let Ok(head) = r.take(RECORD_HEAD_LEN) {
        let block = u64::from_be_bytes(head[..8].try_into().expect("8 bytes"));
        let backing_len = u64::from_be_bytes(head[8..16].try_into().expect("8 bytes"));
        let len = u32::from_be_bytes(head[16..].try_into().expect("4 bytes")) as usize;
        if len == 0 || len > max_stored {
            break;
        }
        let Ok(stored) = r.take(len) else {
            break;
        };
        records.push(UndoRecord {
            block,
            backing_len,
            stored: stored.to_vec(),
        });
        end += (RECORD_HEAD_LEN + len) as u64;
    }
    Ok((records, end))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const ID: Id = [5; 16];

    fn record() -> impl Strategy<Value = UndoRecord> {
        (
            any::<u64>(),
            any::<u64>(),
            proptest::collection::vec(any::<u8>(), 1..200),
        )
            .prop_map(|(block, backing_len, stored)| UndoRecord {
                block,
                backing_len,
                stored,
            })
    }

    fn encode(records: &[UndoRecord]) -> Vec<u8> {
        let mut out = encode_preamble(&ID).to_vec();
        for r in records {
            encode_record(r.block, r.backing_len, &r.stored, &mut out);
        }
        out
    }

    proptest! {
        #[test]
        fn records_round_trip(records in proptest::collection::vec(record(), 0..6)) {
            prop_assert_eq!(decode(&encode(&records), &ID, 200).unwrap(), records);
        }

        /// Records appended where the decoded ones end extend them, whatever followed.
        #[test]
        fn records_append_at_the_end(
            records in proptest::collection::vec(record(), 0..4),
            more in proptest::collection::vec(record(), 1..3),
            junk in proptest::collection::vec(any::<u8>(), 0..64),
        ) {
            let mut bytes = encode(&records);
            bytes.extend_from_slice(&[0; RECORD_HEAD_LEN]);
            bytes.extend_from_slice(&junk);
            let (_, end) = decode_with_end(&bytes, &ID, 200).unwrap();
            prop_assert_eq!(end, encode(&records).len() as u64);
            bytes.truncate(end as usize);
            for r in &more {
                encode_record(r.block, r.backing_len, &r.stored, &mut bytes);
            }
            let mut all = records.clone();
            all.extend(more);
            prop_assert_eq!(decode(&bytes, &ID, 200).unwrap(), all);
        }

        /// A journal cut anywhere after its preamble (a torn append) gives the records that
        /// were whole, never a record made of the cut one.
        #[test]
        fn a_cut_journal_gives_its_whole_records(
            records in proptest::collection::vec(record(), 1..6),
            cut in any::<prop::sample::Index>(),
        ) {
            let bytes = encode(&records);
            let at = PREAMBLE_LEN as usize + cut.index(bytes.len() - PREAMBLE_LEN as usize);
            let got = decode(&bytes[..at], &ID, 200).unwrap();
            prop_assert!(got.len() <= records.len());
            prop_assert_eq!(&records[..got.len()], &got[..]);
            let whole = encode(&got).len();
            prop_assert!(whole <= at);
            prop_assert!(at - whole < RECORD_HEAD_LEN + records.get(got.len()).map_or(0, |r| r.stored.len()));
        }
    }

    #[test]
    fn a_journal_of_another_file_or_version_is_refused() {
        let bytes = encode(&[]);
        assert!(decode(&bytes, &[6; 16], 10).is_err());
        let mut newer = bytes.clone();
        newer[7] = 2;
        assert!(matches!(
            decode(&newer, &ID, 10),
            Err(FormatError::TooNew { .. })
        ));
        assert!(decode(&bytes[..20], &ID, 10).is_err());
        let mut foreign = bytes;
        foreign[0] = b'X';
        assert_eq!(
            decode(&foreign, &ID, 10),
            Err(FormatError::BadMagic("undo journal"))
        );
    }

    #[test]
    fn an_oversized_or_empty_record_ends_the_journal() {
        let mut bytes = encode(&[UndoRecord {
            block: 1,
            backing_len: 2,
            stored: vec![9; 10],
        }]);
        encode_record(2, 3, &[1; 11], &mut bytes);
        assert_eq!(decode(&bytes, &ID, 10).unwrap().len(), 1);
        let mut zero = encode(&[]);
        zero.extend_from_slice(&[0; RECORD_HEAD_LEN]);
        assert!(decode(&zero, &ID, 10).unwrap().is_empty());
    }
}
