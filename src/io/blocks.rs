//! Sealing and opening runs of consecutive blocks of one file through the codec: the block
//! AAD (file id and position), the nonce policy, holes, and when a run is worth splitting
//! over rayon. Forward mounts, the reverse view, fsck and repair all seal and open here.

use rayon::prelude::*;

use super::IoError;
use super::codec;
use crate::crypto::{NONCE_LEN, SEAL_OVERHEAD, Sealer, random_bytes};
use crate::format::Id;
use crate::format::block::{Layout, block_aad};

/// Below this many blocks a run is sealed or opened on the calling thread. Measured on 2
/// cores (bench/README.md): splitting a 1 MiB FUSE request over rayon made sequential reads
/// slower (1.0-1.2 vs 1.1-1.3 GB/s), because the other FUSE threads already fill the cores.
/// Only larger batches (offline tools, 4 KiB blocks x 512 = 2 MiB) are split. The reverse
/// view serves FUSE reads too, so the same figure holds there.
const PARALLEL_MIN_BLOCKS: usize = 512;

/// Where block nonces come from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Nonces {
    /// 96 fresh random bits per sealing: forward mounts, fsck repair.
    Random,
    /// Derived from the block index (4 zero bytes || index, u64 big-endian): the reverse
    /// view, whose output must be the same bytes on every mount. docs/FORMAT.md, "Reverse
    /// mode", says why that is sound under GCM-SIV with a key per file.
    PerIndex,
}

/// The key, identity and format version that seal the blocks of one data file.
#[derive(Clone, Copy)]
pub struct BlockKey<'a> {
    pub file_id: &'a Id,
    pub sealer: &'a Sealer,
    pub version: u8,
}

impl BlockKey<'_> {
    pub(super) fn integrity(&self, block: u64) -> IoError {
        IoError::Integrity {
            file: crate::format::id_to_hex(self.file_id),
            block,
        }
    }

    fn aad(&self, index: u64) -> [u8; 25] {
        block_aad(self.version, self.file_id, index)
    }
}

fn index_nonce(index: u64) -> [u8; NONCE_LEN] {
    let mut nonce = [0u8; NONCE_LEN];
    nonce[4..].copy_from_slice(&index.to_be_bytes());
    nonce
}

/// Seals `blocks` consecutive blocks from `first` into `out` (exactly their sealed lengths,
/// back to back; `span` plaintext bytes in all), block `i` read from `source(i)`. Random
/// nonces come from one call to the OS, kept in `nonce_buf`.
#[allow(clippy::too_many_arguments)]
pub(super) fn seal_run<'s>(
    layout: &Layout,
    key: BlockKey<'_>,
    nonces: Nonces,
    first: u64,
    blocks: usize,
    source: impl Fn(u64) -> &'s [u8] + Sync,
    out: &mut [u8],
    nonce_buf: &mut Vec<u8>,
) -> Result<(), IoError> {
    let sealed_block = layout.sealed_block_size() as usize;
    let random = super::buffers::sized(
        nonce_buf,
        if nonces == Nonces::Random {
            blocks * NONCE_LEN
        } else {
            0
        },
    );
    if nonces == Nonces::Random {
        random_bytes(random).map_err(IoError::Seal)?;
    }
    let random = &*random;
    let seal_one = |(i, out): (usize, &mut [u8])| {
        let index = first + i as u64;
        let derived;
        let nonce: &[u8; NONCE_LEN] = match nonces {
            Nonces::Random => random[i * NONCE_LEN..(i + 1) * NONCE_LEN]
                .try_into()
                .expect("NONCE_LEN bytes"),
            Nonces::PerIndex => {
                derived = index_nonce(index);
                &derived
            }
        };
        codec::seal_block(key.sealer, nonce, &key.aad(index), source(index), out)
            .map_err(IoError::Seal)
    };
    debug_assert_eq!(out.len().div_ceil(sealed_block), blocks);
    if blocks >= PARALLEL_MIN_BLOCKS {
        out.par_chunks_mut(sealed_block)
            .enumerate()
            .try_for_each(seal_one)
    } else {
        out.chunks_mut(sealed_block)
            .enumerate()
            .try_for_each(seal_one)
    }
}

/// Whether an all-zero stored block, by index, is a hole (reads as zeros); else it is an
/// error (`IoError::UnrecordedHole`, or why the answer could not be had).
pub(super) type HoleRule<'a> = &'a (dyn Fn(u64) -> Result<bool, IoError> + Sync);

/// Any all-zero block is a hole: version 1 data files.
pub(super) fn any_zero_block(_: u64) -> Result<bool, IoError> {
    Ok(true)
}

/// Opens the sealed blocks `first..` held back to back in `sealed` into `plain`, which holds
/// exactly their plaintext lengths. An all-zero stored block reads as zeros if `is_hole` says
/// it is a hole.
pub(super) fn open_run(
    layout: &Layout,
    key: BlockKey<'_>,
    first: u64,
    sealed: &[u8],
    plain: &mut [u8],
    is_hole: HoleRule<'_>,
) -> Result<(), IoError> {
    let bs = layout.block_size() as usize;
    let open_one = |(i, (plain, sealed)): (usize, (&mut [u8], &[u8]))| {
        let index = first + i as u64;
        if all_zero(sealed) {
            if is_hole(index)? {
                plain.fill(0);
                return Ok(());
            }
            return Err(IoError::UnrecordedHole {
                file: crate::format::id_to_hex(key.file_id),
                block: index,
            });
        }
        codec::open_block(key.sealer, &key.aad(index), sealed, plain)
            .map_err(|_| key.integrity(index))
    };
    let sealed_block = bs + SEAL_OVERHEAD;
    if plain.len().div_ceil(bs) >= PARALLEL_MIN_BLOCKS {
        plain
            .par_chunks_mut(bs)
            .zip(sealed.par_chunks(sealed_block))
            .enumerate()
            .try_for_each(open_one)
    } else {
        plain
            .chunks_mut(bs)
            .zip(sealed.chunks(sealed_block))
            .enumerate()
            .try_for_each(open_one)
    }
}

/// An all-zero stored block: never written (a sparse region, truncate up, a write past the
/// end) or punched. No sealed block is all zeros (its tag would have to be).
fn all_zero(sealed: &[u8]) -> bool {
    sealed.iter().all(|&b| b == 0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::SecretKey;

    fn sealed_run(nonces: Nonces, first: u64, plain: &[u8], layout: &Layout) -> Vec<u8> {
        let sealer = Sealer::new(&SecretKey::from_array([4; 32]));
        let key = BlockKey {
            file_id: &[1; 16],
            sealer: &sealer,
            version: 2,
        };
        let bs = layout.block_size() as usize;
        let blocks = plain.len().div_ceil(bs);
        let mut out = vec![0u8; plain.len() + blocks * SEAL_OVERHEAD];
        let source = |i: u64| {
            let at = (i - first) as usize * bs;
            &plain[at..(at + bs).min(plain.len())]
        };
        seal_run(
            layout,
            key,
            nonces,
            first,
            blocks,
            source,
            &mut out,
            &mut Vec::new(),
        )
        .unwrap();
        let mut back = vec![0u8; plain.len()];
        open_run(layout, key, first, &out, &mut back, &any_zero_block).unwrap();
        assert_eq!(back, plain);
        out
    }

    #[test]
    fn per_index_nonces_are_deterministic_and_random_ones_are_not() {
        let layout = Layout::new(512).unwrap();
        let plain: Vec<u8> = (0..5000u32).map(|i| i as u8).collect();
        assert_eq!(
            sealed_run(Nonces::PerIndex, 3, &plain, &layout),
            sealed_run(Nonces::PerIndex, 3, &plain, &layout)
        );
        assert_ne!(
            sealed_run(Nonces::Random, 3, &plain, &layout),
            sealed_run(Nonces::Random, 3, &plain, &layout)
        );
    }

    #[test]
    fn parallel_and_serial_runs_agree() {
        let layout = Layout::new(512).unwrap();
        let plain = vec![7u8; 512 * (PARALLEL_MIN_BLOCKS + 3) + 100];
        let all = sealed_run(Nonces::PerIndex, 0, &plain, &layout);
        // The last three blocks and the tail sealed alone (serial path) match the parallel run.
        let from = PARALLEL_MIN_BLOCKS as u64;
        let tail = sealed_run(
            Nonces::PerIndex,
            from,
            &plain[from as usize * 512..],
            &layout,
        );
        assert_eq!(&all[from as usize * (512 + SEAL_OVERHEAD)..], &tail[..]);
    }

    #[test]
    fn a_block_opens_only_at_its_own_index() {
        let layout = Layout::new(512).unwrap();
        let sealed = sealed_run(Nonces::Random, 0, &[9u8; 512], &layout);
        let sealer = Sealer::new(&SecretKey::from_array([4; 32]));
        let key = BlockKey {
            file_id: &[1; 16],
            sealer: &sealer,
            version: 2,
        };
        let mut plain = [0u8; 512];
        assert!(matches!(
            open_run(&layout, key, 1, &sealed, &mut plain, &any_zero_block),
            Err(IoError::Integrity { block: 1, .. })
        ));
        // Another version's associated data: refused too.
        let v1 = BlockKey { version: 1, ..key };
        assert!(open_run(&layout, v1, 0, &sealed, &mut plain, &any_zero_block).is_err());
        // An all-zero block is a hole only where the rule says so.
        let zeros = vec![0u8; 512 + SEAL_OVERHEAD];
        assert!(open_run(&layout, key, 0, &zeros, &mut plain, &any_zero_block).is_ok());
        assert!(matches!(
            open_run(&layout, key, 0, &zeros, &mut plain, &|_| Ok(false)),
            Err(IoError::UnrecordedHole { block: 0, .. })
        ));
    }
}
