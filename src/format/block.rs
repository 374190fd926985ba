//! Data files: a 24-byte preamble (magic, version, file id) followed by sealed blocks, each
//! nonce || ciphertext || tag. Only the last block may be shorter than the block size.

use super::{FormatError, Id, Reader};
use crate::crypto::SEAL_OVERHEAD;

pub const DATA_MAGIC: &[u8; 7] = b"SEALDAT";
/// The newest data file version (preamble and block sealing), which forward mounts write:
/// 2, whose all-zero blocks are holes only where its hole map says so (`format::holes`).
/// Version 1 (any all-zero block is a hole) is still read, and the reverse view writes it.
pub const DATA_VERSION: u8 = 2;
pub const PREAMBLE_LEN: u64 = 24;
pub const MIN_BLOCK_SIZE: u32 = 512;
pub const MAX_BLOCK_SIZE: u32 = 1 << 20;
pub const DEFAULT_BLOCK_SIZE: u32 = 4096;

/// What a data file's preamble says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Preamble {
    pub version: u8,
    pub file_id: Id,
}

pub fn encode_preamble(version: u8, file_id: &Id) -> [u8; PREAMBLE_LEN as usize] {
    let mut out = [0u8; PREAMBLE_LEN as usize];
    out[..7].copy_from_slice(DATA_MAGIC);
    out[7] = version;
    out[8..].copy_from_slice(file_id);
    out
}

pub fn decode_preamble(bytes: &[u8]) -> Result<Preamble, FormatError> {
    let mut r = Reader::new(bytes, "data file preamble");
    if r.take(7)? != DATA_MAGIC {
        return Err(FormatError::BadMagic("data file"));
    }
    let version = r.u8()?;
    if version == 0 || version > DATA_VERSION {
        return Err(FormatError::TooNew {
            what: "data file",
            found: version.into(),
            supported: DATA_VERSION.into(),
        });
    }
    let file_id = r.array()?;
    r.finish()?;
    Ok(Preamble { version, file_id })
}

/// Associated data of block `index` of file `file_id` (data file `version`): binds version,
/// file and position, so a block moved within or between files fails authentication.
pub fn block_aad(version: u8, file_id: &Id, index: u64) -> [u8; 25] {
    let mut aad = [0u8; 25];
    aad[0] = version;
    aad[1..17].copy_from_slice(file_id);
    aad[17..].copy_from_slice(&index.to_be_bytes());
    aad
}

pub fn validate_block_size(block_size: u32) -> Result<(), FormatError> {
    if block_size.is_power_of_two() && (MIN_BLOCK_SIZE..=MAX_BLOCK_SIZE).contains(&block_size) {
        Ok(())
    } else {
        Err(FormatError::Invalid("block size"))
    }
}

/// Offset arithmetic between plaintext and the backing data file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Layout {
    block_size: u64,
}

impl Layout {
    pub fn new(block_size: u32) -> Result<Self, FormatError> {
        validate_block_size(block_size)?;
        Ok(Layout {
            block_size: block_size.into(),
        })
    }

    pub fn block_size(&self) -> u64 {
        self.block_size
    }

    pub fn sealed_block_size(&self) -> u64 {
        self.block_size + SEAL_OVERHEAD as u64
    }

    /// Backing offset where block `index` starts.
    pub fn block_offset(&self, index: u64) -> u64 {
        PREAMBLE_LEN + index * self.sealed_block_size()
    }

    pub fn block_index(&self, plain_offset: u64) -> u64 {
        plain_offset / self.block_size
    }

    /// Backing file length holding `plain_size` plaintext bytes.
    pub fn backing_size(&self, plain_size: u64) -> u64 {
        let full = plain_size / self.block_size;
        let rest = plain_size % self.block_size;
        let tail = if rest == 0 {
            0
        } else {
            rest + SEAL_OVERHEAD as u64
        };
        PREAMBLE_LEN + full * self.sealed_block_size() + tail
    }

    /// Plaintext size of a backing file of `backing_size` bytes. A tail too short to be a sealed
    /// block (torn by a crash, or tampered) counts as nothing; reading it reports the damage.
    pub fn plain_size(&self, backing_size: u64) -> u64 {
        let Some(body) = backing_size.checked_sub(PREAMBLE_LEN) else {
            return 0;
        };
        let full = body / self.sealed_block_size();
        let rest = body % self.sealed_block_size();
        full * self.block_size + rest.saturating_sub(SEAL_OVERHEAD as u64)
    }

    /// Plaintext length of block `index` in a file of `plain_size` bytes (0 past the end).
    pub fn block_len(&self, index: u64, plain_size: u64) -> u64 {
        let start = index * self.block_size;
        plain_size.saturating_sub(start).min(self.block_size)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn preamble_round_trip_and_bit_flips() {
        let id = [9u8; 16];
        let bytes = encode_preamble(DATA_VERSION, &id);
        assert_eq!(
            decode_preamble(&bytes).unwrap(),
            Preamble {
                version: DATA_VERSION,
                file_id: id
            }
        );
        assert_eq!(
            decode_preamble(&encode_preamble(1, &id)).unwrap().version,
            1
        );
        assert!(decode_preamble(&encode_preamble(3, &id)).is_err());
        for bit in 0..64 {
            let mut bad = bytes;
            bad[bit / 8] ^= 1 << (bit % 8);
            assert!(decode_preamble(&bad).is_err(), "bit {bit}");
        }
        assert!(decode_preamble(&bytes[..10]).is_err());
    }

    #[test]
    fn block_sizes_validated() {
        assert!(Layout::new(4096).is_ok());
        assert!(Layout::new(4095).is_err());
        assert!(Layout::new(256).is_err());
        assert!(Layout::new(2 << 20).is_err());
    }

    proptest! {
        #[test]
        fn sizes_round_trip(plain in 0u64..1 << 40, shift in 9u32..=20) {
            let layout = Layout::new(1 << shift).unwrap();
            prop_assert_eq!(layout.plain_size(layout.backing_size(plain)), plain);
        }

        #[test]
        fn plain_size_is_monotonic(a in 0u64..1 << 30, b in 0u64..1 << 30) {
            let layout = Layout::new(4096).unwrap();
            let (lo, hi) = if a <= b { (a, b) } else { (b, a) };
            prop_assert!(layout.plain_size(lo) <= layout.plain_size(hi));
        }

        #[test]
        fn block_len_sums_to_size(plain in 0u64..1 << 20) {
            let layout = Layout::new(4096).unwrap();
            let blocks = plain.div_ceil(4096);
            let sum: u64 = (0..blocks).map(|i| layout.block_len(i, plain)).sum();
            prop_assert_eq!(sum, plain);
        }
    }
}
