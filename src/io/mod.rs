//! The block path: reads and writes at any offset of a data file, read-modify-write of the
//! edge blocks only, holes, truncation, and parallel sealing of large requests. The hot path
//! lives here and nowhere else; callers serialize conflicting calls on one file (see
//! `range_lock`).

pub mod range_lock;

use std::cell::RefCell;
use std::fs::File;
use std::io;
use std::os::unix::fs::{FileExt, MetadataExt};

use rayon::prelude::*;
use thiserror::Error;

use crate::crypto::{NONCE_LEN, SEAL_OVERHEAD, Sealer, random_bytes};
use crate::format::Id;
use crate::format::block::{Layout, block_aad};

pub mod codec;

/// Below this many blocks a request is sealed on the calling thread. Measured on 2 cores
/// (bench/README.md): splitting a 1 MiB FUSE request over rayon made sequential reads slower
/// (1.0-1.2 vs 1.1-1.3 GB/s), because the other FUSE threads already fill the cores. Only
/// larger batches (offline tools, 4 KiB blocks x 512 = 2 MiB) are split.
const PARALLEL_MIN_BLOCKS: usize = 512;

#[derive(Debug, Error)]
pub enum IoError {
    #[error(transparent)]
    Io(#[from] io::Error),
    #[error("block {block} of file {file} fails authentication")]
    Integrity { file: String, block: u64 },
    #[error("file offset out of range")]
    TooLarge,
}

/// Buffers reused by every request a thread serves, so the hot path allocates nothing
/// block-sized once warm. They grow to the largest request seen (1 MiB with max_write).
#[derive(Default)]
struct Buffers {
    sealed: Vec<u8>,
    plain: Vec<u8>,
    nonces: Vec<u8>,
    edge_plain: Vec<u8>,
    edge_sealed: Vec<u8>,
}

thread_local! {
    static BUFFERS: RefCell<Buffers> = RefCell::new(Buffers::default());
}

fn sized(buf: &mut Vec<u8>, len: usize) -> &mut [u8] {
    if buf.len() < len {
        buf.resize(len, 0);
    }
    &mut buf[..len]
}

/// How long a data file is and how much of it is allocated.
#[derive(Clone, Copy, Debug)]
pub struct Extent {
    pub len: u64,
    pub allocated: u64,
}

impl Extent {
    /// Fewer bytes allocated than the length: some range is a hole, which a write into it
    /// must allocate. (Filesystems that count metadata or preallocation may hide a small
    /// hole; none reports holes that are not there.)
    fn may_have_holes(&self) -> bool {
        self.allocated < self.len
    }
}

/// One open data file and the key that seals its blocks.
pub struct BlockFile<'a> {
    pub file: &'a File,
    pub layout: Layout,
    pub file_id: &'a Id,
    pub sealer: &'a Sealer,
}

impl BlockFile<'_> {
    pub fn plain_size(&self) -> Result<u64, IoError> {
        Ok(self.layout.plain_size(self.file.metadata()?.len()))
    }

    /// Reads up to `len` bytes at `offset` (shorter at end of file) and hands them to `reply`
    /// straight from this thread's buffer.
    pub fn read_with<T>(
        &self,
        offset: u64,
        len: usize,
        reply: impl FnOnce(&[u8]) -> T,
    ) -> Result<T, IoError> {
        let size = self.plain_size()?;
        if offset >= size || len == 0 {
            return Ok(reply(&[]));
        }
        let end = size.min(offset.saturating_add(len as u64));
        let bs = self.layout.block_size();
        let first = offset / bs;
        let last = (end - 1) / bs;
        let span = (size.min((last + 1) * bs) - first * bs) as usize;
        BUFFERS.with_borrow_mut(|b| {
            let plain = sized(&mut b.plain, span);
            self.read_blocks(first, last, size, plain, &mut b.sealed)?;
            Ok(reply(
                &plain[(offset - first * bs) as usize..(end - first * bs) as usize],
            ))
        })
    }

    pub fn read_at(&self, offset: u64, len: usize) -> Result<Vec<u8>, IoError> {
        self.read_with(offset, len, <[u8]>::to_vec)
    }

    /// Decrypts blocks `first..=last` of a file of `size` bytes into `plain`, which holds
    /// exactly their plaintext lengths back to back; `scratch` holds the ciphertext.
    fn read_blocks(
        &self,
        first: u64,
        last: u64,
        size: u64,
        plain: &mut [u8],
        scratch: &mut Vec<u8>,
    ) -> Result<(), IoError> {
        let sealed_len = plain.len() + (last - first + 1) as usize * SEAL_OVERHEAD;
        let sealed = sized(scratch, sealed_len);
        let got = read_full_at(self.file, sealed, self.layout.block_offset(first))?;
        if got < sealed_len {
            // The backing file is shorter than its size says (torn or cut): report, never guess.
            return Err(
                self.integrity(first + (got / self.layout.sealed_block_size() as usize) as u64)
            );
        }
        let bs = self.layout.block_size() as usize;
        let open_one = |(i, (plain, sealed)): (usize, (&mut [u8], &[u8]))| {
            let index = first + i as u64;
            debug_assert_eq!(plain.len() as u64, self.layout.block_len(index, size));
            if is_hole(sealed) {
                plain.fill(0);
                return Ok(());
            }
            codec::open_block(self.sealer, &block_aad(self.file_id, index), sealed, plain)
                .map_err(|_| self.integrity(index))
        };
        let blocks = plain.len().div_ceil(bs);
        if blocks >= PARALLEL_MIN_BLOCKS {
            plain
                .par_chunks_mut(bs)
                .zip(sealed.par_chunks(bs + SEAL_OVERHEAD))
                .enumerate()
                .try_for_each(open_one)
        } else {
            plain
                .chunks_mut(bs)
                .zip(sealed.chunks(bs + SEAL_OVERHEAD))
                .enumerate()
                .try_for_each(open_one)
        }
    }

    /// Writes `data` at `offset`, growing the file as needed; gaps become holes. Whole blocks
    /// are sealed straight from `data`; only partly covered edge blocks are merged with their
    /// old contents first.
    pub fn write_at(&self, offset: u64, data: &[u8]) -> Result<(), IoError> {
        self.write_at_extent(offset, data, self.extent()?)
    }

    /// The data file's length and allocation, for `write_at_extent`.
    pub fn extent(&self) -> Result<Extent, IoError> {
        let meta = self.file.metadata()?;
        Ok(Extent {
            len: meta.len(),
            allocated: meta.blocks().saturating_mul(512),
        })
    }

    /// `write_at` for a caller that holds the lock on the range and has just read the data
    /// file's `extent`, which nothing can change before this returns.
    pub fn write_at_extent(&self, offset: u64, data: &[u8], extent: Extent) -> Result<(), IoError> {
        if data.is_empty() {
            return Ok(());
        }
        let end = offset
            .checked_add(data.len() as u64)
            .filter(|e| *e <= i64::MAX as u64 / 2)
            .ok_or(IoError::TooLarge)?;
        let backing = extent.len;
        let size = self.layout.plain_size(backing);
        let new_size = size.max(end);
        let bs = self.layout.block_size();
        let first = offset / bs;
        let last = (end - 1) / bs;
        let write_from = self.layout.block_offset(first);
        let write_to = self
            .layout
            .backing_size(new_size)
            .min(self.layout.block_offset(last + 1));
        // A partial tail block before the written range becomes an inner block: widen it.
        let tail_widens = !size.is_multiple_of(bs) && size / bs < first;
        // A write that only adds blocks past the end rewrites nothing: if the disk fills up
        // midway, cutting the file back to its old end undoes it, so it needs no reservation
        // (for a new small file that fallocate was a twentieth of the create's kernel time).
        let appends_only = !tail_widens && write_from >= backing;
        if !appends_only {
            if tail_widens {
                self.reserve(backing, self.layout.block_offset(size / bs + 1))?;
            }
            // What will be written past the end (a write far past it leaves a hole, not an
            // allocation) and, in a file with holes, what it fills inside: the kernel's
            // writeback sends a big file's pages out of order, so a file being written holds
            // holes that a later request fills.
            let from = if extent.may_have_holes() {
                write_from
            } else {
                backing.max(write_from)
            };
            self.reserve(from, write_to)?;
        }
        if tail_widens {
            self.reseal_block(size / bs, size, (size / bs + 1) * bs)?;
        }
        let written = self.write_blocks(offset, data, size, new_size);
        if written.is_err() && appends_only {
            let _ = self.file.set_len(backing);
        }
        written
    }

    /// The sealing half of `write_at`: edge blocks merged with their old contents, then all
    /// blocks of the range sealed and written at once.
    fn write_blocks(
        &self,
        offset: u64,
        data: &[u8],
        size: u64,
        new_size: u64,
    ) -> Result<(), IoError> {
        let end = offset + data.len() as u64;
        let bs = self.layout.block_size();
        let first = offset / bs;
        let last = (end - 1) / bs;
        BUFFERS.with_borrow_mut(|b| {
            let Buffers {
                sealed,
                nonces,
                edge_plain,
                edge_sealed,
                ..
            } = b;
            // Merged plaintext of the (at most two) partly covered edge blocks.
            let edges = sized(edge_plain, 2 * bs as usize);
            let (head, tail) = edges.split_at_mut(bs as usize);
            let mut partial = [None, None];
            for (slot, index) in [first, last].into_iter().enumerate() {
                if slot == 1 && first == last {
                    break;
                }
                let block_start = index * bs;
                let new_len = self.layout.block_len(index, new_size) as usize;
                if offset <= block_start && end >= block_start + new_len as u64 {
                    continue;
                }
                let buf = if slot == 0 {
                    &mut head[..new_len]
                } else {
                    &mut tail[..new_len]
                };
                buf.fill(0);
                let old_len = self.layout.block_len(index, size) as usize;
                if old_len > 0 {
                    self.read_blocks(index, index, size, &mut buf[..old_len], edge_sealed)?;
                }
                let from = offset.max(block_start);
                let to = end.min(block_start + new_len as u64);
                buf[(from - block_start) as usize..(to - block_start) as usize]
                    .copy_from_slice(&data[(from - offset) as usize..(to - offset) as usize]);
                partial[slot] = Some(index);
            }
            let source = |index: u64| -> &[u8] {
                let new_len = self.layout.block_len(index, new_size) as usize;
                if partial[0] == Some(index) {
                    &head[..new_len]
                } else if partial[1] == Some(index) {
                    &tail[..new_len]
                } else {
                    let at = (index * bs - offset) as usize;
                    &data[at..at + new_len]
                }
            };
            let blocks = (last - first + 1) as usize;
            let span = (new_size.min((last + 1) * bs) - first * bs) as usize;
            self.seal_blocks(first, blocks, span, source, sealed, nonces)
        })
    }

    /// Allocates the backing bytes a growing write will need before anything is written, so a
    /// full disk fails the write cleanly with ENOSPC instead of leaving a block half written
    /// (which would read as a torn, unauthenticated tail). Filesystems without fallocate
    /// skip this.
    fn reserve(&self, from: u64, to: u64) -> Result<(), IoError> {
        if to <= from {
            return Ok(());
        }
        let reserved = nix::fcntl::fallocate(
            self.file,
            nix::fcntl::FallocateFlags::FALLOC_FL_KEEP_SIZE,
            from as i64,
            (to - from) as i64,
        );
        match reserved {
            Ok(()) | Err(nix::Error::EOPNOTSUPP) | Err(nix::Error::ENOSYS) => Ok(()),
            Err(e) => Err(IoError::Io(e.into())),
        }
    }

    /// Sets the plaintext size, re-sealing the one block that changes length.
    pub fn truncate(&self, new_size: u64) -> Result<(), IoError> {
        if new_size > i64::MAX as u64 / 2 {
            return Err(IoError::TooLarge);
        }
        let size = self.plain_size()?;
        let bs = self.layout.block_size();
        if new_size < size && !new_size.is_multiple_of(bs) {
            self.reseal_block(new_size / bs, size, new_size)?;
        } else if new_size > size && size % bs != 0 {
            self.reseal_block(size / bs, size, new_size)?;
        }
        self.file.set_len(self.layout.backing_size(new_size))?;
        Ok(())
    }

    /// Re-seals block `index` of a file of `size` bytes at the length it has in a file of
    /// `new_size` bytes: cut, or zero-extended.
    fn reseal_block(&self, index: u64, size: u64, new_size: u64) -> Result<(), IoError> {
        let old_len = self.layout.block_len(index, size) as usize;
        let new_len = self.layout.block_len(index, new_size) as usize;
        BUFFERS.with_borrow_mut(|b| {
            let Buffers {
                sealed,
                nonces,
                edge_plain,
                edge_sealed,
                ..
            } = b;
            let plain = sized(edge_plain, old_len.max(new_len));
            plain.fill(0);
            self.read_blocks(index, index, size, &mut plain[..old_len], edge_sealed)?;
            let plain = &plain[..new_len];
            self.seal_blocks(index, 1, new_len, |_| plain, sealed, nonces)
        })
    }

    /// Seals `blocks` consecutive blocks from `first` (`span` plaintext bytes in all), each
    /// read from `source(index)`, and writes them with one pwrite. All nonces come from one
    /// call to the OS.
    fn seal_blocks<'s>(
        &self,
        first: u64,
        blocks: usize,
        span: usize,
        source: impl Fn(u64) -> &'s [u8] + Sync,
        sealed: &mut Vec<u8>,
        nonces: &mut Vec<u8>,
    ) -> Result<(), IoError> {
        let bs = self.layout.block_size() as usize;
        let nonces = sized(nonces, blocks * NONCE_LEN);
        random_bytes(nonces).map_err(|e| IoError::Io(io::Error::other(e)))?;
        let sealed = sized(sealed, span + blocks * SEAL_OVERHEAD);
        let seal_one = |(i, (out, nonce)): (usize, (&mut [u8], &[u8]))| {
            let index = first + i as u64;
            let nonce: &[u8; NONCE_LEN] = nonce.try_into().expect("NONCE_LEN chunks");
            codec::seal_block(
                self.sealer,
                nonce,
                &block_aad(self.file_id, index),
                source(index),
                out,
            )
            .map_err(|e| IoError::Io(io::Error::other(e)))
        };
        if blocks >= PARALLEL_MIN_BLOCKS {
            sealed
                .par_chunks_mut(bs + SEAL_OVERHEAD)
                .zip(nonces.par_chunks(NONCE_LEN))
                .enumerate()
                .try_for_each(seal_one)?;
        } else {
            sealed
                .chunks_mut(bs + SEAL_OVERHEAD)
                .zip(nonces.chunks(NONCE_LEN))
                .enumerate()
                .try_for_each(seal_one)?;
        }
        self.file
            .write_all_at(sealed, self.layout.block_offset(first))?;
        Ok(())
    }

    fn integrity(&self, block: u64) -> IoError {
        IoError::Integrity {
            file: crate::format::id_to_hex(self.file_id),
            block,
        }
    }
}

/// An all-zero stored block is a hole (sparse region, truncate up, write past EOF): it reads
/// as zeros. Documented in docs/FORMAT.md as the one unauthenticated case, as in gocryptfs.
fn is_hole(sealed: &[u8]) -> bool {
    sealed.iter().all(|&b| b == 0)
}

fn read_full_at(file: &File, buf: &mut [u8], offset: u64) -> io::Result<usize> {
    let mut done = 0;
    while done < buf.len() {
        match file.read_at(&mut buf[done..], offset + done as u64) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::SecretKey;
    use crate::format::block::{PREAMBLE_LEN, encode_preamble};
    use proptest::prelude::*;

    struct Fixture {
        file: File,
        sealer: Sealer,
        id: Id,
        layout: Layout,
        _dir: tempfile::TempDir,
    }

    impl Fixture {
        fn new(block_size: u32) -> Self {
            let dir = tempfile::tempdir().unwrap();
            let file = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(true)
                .open(dir.path().join("data"))
                .unwrap();
            let id = [7; 16];
            file.write_all_at(&encode_preamble(&id), 0).unwrap();
            Fixture {
                file,
                sealer: Sealer::new(&SecretKey::from_array([1; 32])),
                id,
                layout: Layout::new(block_size).unwrap(),
                _dir: dir,
            }
        }

        fn bf(&self) -> BlockFile<'_> {
            BlockFile {
                file: &self.file,
                layout: self.layout,
                file_id: &self.id,
                sealer: &self.sealer,
            }
        }
    }

    #[derive(Debug, Clone)]
    enum Op {
        Write(u64, Vec<u8>),
        Truncate(u64),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (0u64..5000, proptest::collection::vec(any::<u8>(), 1..3000))
                .prop_map(|(o, d)| Op::Write(o, d)),
            (0u64..6000).prop_map(Op::Truncate),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        #[test]
        fn matches_a_plain_vec_model(ops in proptest::collection::vec(op(), 1..12)) {
            let fx = Fixture::new(512);
            let bf = fx.bf();
            let mut model: Vec<u8> = Vec::new();
            for op in ops {
                match op {
                    Op::Write(o, d) => {
                        bf.write_at(o, &d).unwrap();
                        let end = o as usize + d.len();
                        if model.len() < end { model.resize(end, 0); }
                        model[o as usize..end].copy_from_slice(&d);
                    }
                    Op::Truncate(n) => {
                        bf.truncate(n).unwrap();
                        model.resize(n as usize, 0);
                    }
                }
                prop_assert_eq!(bf.plain_size().unwrap(), model.len() as u64);
                prop_assert_eq!(bf.read_at(0, model.len() + 10).unwrap(), model.clone());
            }
        }
    }

    #[test]
    fn large_parallel_write_round_trips() {
        let fx = Fixture::new(4096);
        let data: Vec<u8> = (0..1 << 20).map(|i| (i * 31 % 251) as u8).collect();
        fx.bf().write_at(100, &data).unwrap();
        assert_eq!(fx.bf().read_at(100, data.len()).unwrap(), data);
        assert_eq!(fx.bf().read_at(0, 100).unwrap(), vec![0; 100]);
    }

    #[test]
    fn flipped_bit_and_moved_block_give_integrity_errors() {
        let fx = Fixture::new(512);
        fx.bf().write_at(0, &[0x55; 2048]).unwrap();
        let mut byte = [0u8; 1];
        let at = PREAMBLE_LEN + 600;
        fx.file.read_exact_at(&mut byte, at).unwrap();
        fx.file.write_all_at(&[byte[0] ^ 4], at).unwrap();
        assert!(matches!(
            fx.bf().read_at(0, 2048),
            Err(IoError::Integrity { block: 1, .. })
        ));
        assert!(fx.bf().read_at(0, 512).is_ok());
        // Copy block 2 over block 3: same key, wrong position.
        let sbs = fx.layout.sealed_block_size() as usize;
        let mut block = vec![0u8; sbs];
        fx.file
            .read_exact_at(&mut block, fx.layout.block_offset(2))
            .unwrap();
        fx.file
            .write_all_at(&block, fx.layout.block_offset(3))
            .unwrap();
        assert!(matches!(
            fx.bf().read_at(1536, 512),
            Err(IoError::Integrity { block: 3, .. })
        ));
    }

    #[test]
    fn holes_read_as_zeros_and_stay_sparse() {
        let fx = Fixture::new(4096);
        fx.bf().write_at(10 << 20, b"end").unwrap();
        assert_eq!(fx.bf().plain_size().unwrap(), (10 << 20) + 3);
        assert_eq!(fx.bf().read_at(5 << 20, 4).unwrap(), vec![0; 4]);
        assert!(fx.file.metadata().unwrap().blocks() * 512 < 1 << 20);
    }
}
