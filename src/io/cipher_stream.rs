//! The reverse direction: the bytes of the data file that would hold a plaintext file,
//! computed on the fly from the plaintext (the reverse view serves these). Blocks are sealed
//! with per-index nonces so the same plaintext gives the same bytes on every mount.

use std::fs::File;

use super::IoError;
use super::blocks::{BlockKey, Nonces, seal_run};
use super::buffers::read_full_at;
use super::preamble::preamble;
use crate::crypto::Sealer;
use crate::format::Id;
use crate::format::block::{Layout, PREAMBLE_LEN};

/// Length of the data file that holds a plaintext file of `plain_size` bytes.
pub fn sealed_len(layout: &Layout, plain_size: u64) -> u64 {
    layout.backing_size(plain_size)
}

/// Up to `len` bytes at `offset` of the data file sealing `plain` (a plaintext file) under
/// file id `file_id` and `sealer`. A file that shrinks meanwhile ends where it now ends.
pub fn read_sealed(
    plain: &File,
    layout: &Layout,
    file_id: &Id,
    sealer: &Sealer,
    offset: u64,
    len: u64,
) -> Result<Vec<u8>, IoError> {
    let mut plain_size = plain.metadata()?.len();
    let end = offset
        .saturating_add(len)
        .min(layout.backing_size(plain_size));
    if offset >= end {
        return Ok(Vec::new());
    }
    let mut out = Vec::with_capacity((end - offset) as usize);
    if offset < PREAMBLE_LEN {
        // Version 1: the view must stay byte-identical across sealfs versions (it never
        // stores holes, so version 2's hole map would add nothing to it).
        let preamble = preamble(1, file_id);
        out.extend_from_slice(&preamble[offset as usize..end.min(PREAMBLE_LEN) as usize]);
    }
    if end <= PREAMBLE_LEN {
        return Ok(out);
    }
    let sealed_block = layout.sealed_block_size();
    let body_start = offset.max(PREAMBLE_LEN) - PREAMBLE_LEN;
    let body_end = end - PREAMBLE_LEN;
    let first = body_start / sealed_block;
    let last = (body_end - 1) / sealed_block;
    let bs = layout.block_size();
    let plain_start = first * bs;
    let plain_end = ((last + 1) * bs).min(plain_size);
    let mut text = vec![0u8; (plain_end - plain_start) as usize];
    let got = read_full_at(plain, &mut text, plain_start)?;
    if got < text.len() {
        // Shrunk since the stat: the view ends where the file now ends.
        text.truncate(got);
        plain_size = plain_start + got as u64;
    }
    let sealed_len = layout
        .backing_size(plain_size)
        .saturating_sub(layout.block_offset(first))
        .min((last - first + 1) * sealed_block) as usize;
    let mut sealed = vec![0u8; sealed_len];
    let blocks = sealed_len.div_ceil(sealed_block as usize);
    let source = |index: u64| {
        let at = ((index - first) * bs) as usize;
        &text[at.min(text.len())..(at + bs as usize).min(text.len())]
    };
    let key = BlockKey {
        file_id,
        sealer,
        version: 1,
    };
    seal_run(
        layout,
        key,
        Nonces::PerIndex,
        first,
        blocks,
        source,
        &mut sealed,
        &mut Vec::new(),
    )?;
    // A reverse view's numbers: the plaintext it read and the blocks it sealed (the
    // ciphertext it serves counts as ciphertext read, in its FUSE shell).
    let metrics = crate::metrics::global();
    crate::metrics::Metrics::add(&metrics.plain_read, text.len() as u64);
    crate::metrics::Metrics::add(&metrics.blocks_sealed, blocks as u64);
    let from = (body_start - first * sealed_block) as usize;
    let to = ((body_end - first * sealed_block) as usize).min(sealed.len());
    if from < to {
        out.extend_from_slice(&sealed[from..to]);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::SecretKey;
    use crate::io::DataFile;
    use std::io::Write;

    /// What the stream yields is a data file a forward reader opens, read whole or in
    /// arbitrary pieces.
    #[test]
    fn the_stream_is_a_data_file_the_forward_path_reads() {
        let dir = tempfile::tempdir().unwrap();
        let plain: Vec<u8> = (0..10_000u32).map(|i| (i * 7) as u8).collect();
        let path = dir.path().join("p");
        File::create(&path).unwrap().write_all(&plain).unwrap();
        let source = File::open(&path).unwrap();
        let layout = Layout::new(512).unwrap();
        let sealer = Sealer::new(&SecretKey::from_array([2; 32]));
        let id = [8; 16];
        let total = sealed_len(&layout, plain.len() as u64);
        let whole = read_sealed(&source, &layout, &id, &sealer, 0, total + 100).unwrap();
        assert_eq!(whole.len() as u64, total);
        let mut pieces = Vec::new();
        let mut at = 0;
        for step in [1u64, 23, 540, 541, 1000, 7, 100_000] {
            let piece = read_sealed(&source, &layout, &id, &sealer, at, step).unwrap();
            at += piece.len() as u64;
            pieces.extend_from_slice(&piece);
        }
        assert_eq!(pieces, whole, "pieces at any offsets agree with the whole");
        let sealed_path = dir.path().join("s");
        std::fs::write(&sealed_path, &whole).unwrap();
        let sealed = File::open(&sealed_path).unwrap();
        assert_eq!(crate::io::read_file_id(&sealed).unwrap(), id);
        let forward = DataFile::new(
            &sealed,
            layout,
            &id,
            &sealer,
            crate::io::Holes::AnyZeroBlock,
        );
        assert_eq!(forward.read_at(0, 20_000).unwrap(), plain);
    }
}
