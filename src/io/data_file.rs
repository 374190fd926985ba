//! `DataFile`: one open data file and the key that seals its blocks. Reads and writes at any
//! offset, read-modify-write of the edge blocks only, holes, truncation, space allocation and
//! SEEK_DATA/SEEK_HOLE mapped through the block layout. Callers serialize conflicting calls
//! on one file (see `range_lock`).

use std::fs::File;
use std::io;
use std::os::fd::AsFd;
use std::os::unix::fs::{FileExt, MetadataExt};

use super::IoError;
use super::blocks::{BlockKey, Nonces, any_zero_block, open_run, seal_run};
use super::buffers::{BUFFERS, Buffers, read_full_at, sized};
use super::holes::{Holes, LedgerAccess, Persist};
use crate::crypto::{SEAL_OVERHEAD, Sealer};
use crate::format::Id;
use crate::format::block::{Layout, PREAMBLE_LEN};
use crate::metrics::Metrics;

/// The largest plaintext offset sealfs accepts (2 EiB): backing offsets (plaintext plus
/// per-block overhead, under 6% at the smallest block size) stay below 4 EiB, where the locks
/// programs take begin in a shared mount's backing files (`io::file_lock`).
const MAX_PLAIN_END: u64 = 1 << 61;

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

/// What `seek` looks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SeekTo {
    Data,
    Hole,
}

/// One open data file and the key that seals its blocks.
pub struct DataFile<'a> {
    file: &'a File,
    layout: Layout,
    key: BlockKey<'a>,
    holes: Holes<'a>,
}

impl<'a> DataFile<'a> {
    /// `holes` says the file's format version and how its holes are told from zeroed blocks.
    pub fn new(
        file: &'a File,
        layout: Layout,
        file_id: &'a Id,
        sealer: &'a Sealer,
        holes: Holes<'a>,
    ) -> Self {
        DataFile {
            file,
            layout,
            key: BlockKey {
                file_id,
                sealer,
                version: holes.version(),
            },
            holes,
        }
    }

    fn ledger_access(&self) -> LedgerAccess<'_> {
        LedgerAccess {
            file: self.file,
            file_id: self.key.file_id,
            sealer: self.key.sealer,
        }
    }

    /// Whether all-zero stored block `index` is a hole.
    fn is_hole(&self, index: u64) -> Result<bool, IoError> {
        match self.holes {
            Holes::AnyZeroBlock => any_zero_block(index),
            Holes::Recorded(ledger) => ledger.allows(&self.ledger_access(), index),
        }
    }

    /// Records `blocks` as holes before they are zeroed or left unwritten.
    fn record_holes(&self, blocks: std::ops::Range<u64>, persist: Persist) -> Result<(), IoError> {
        match self.holes {
            Holes::Recorded(ledger) if !blocks.is_empty() => {
                ledger.record(&self.ledger_access(), blocks, persist)
            }
            _ => Ok(()),
        }
    }

    /// `blocks` hold sealed data now, or are cut off: no longer holes.
    fn clear_holes(&self, blocks: std::ops::Range<u64>) -> Result<(), IoError> {
        match self.holes {
            Holes::Recorded(ledger) if !blocks.is_empty() => {
                ledger.clear(&self.ledger_access(), blocks)
            }
            _ => Ok(()),
        }
    }

    pub fn block_size(&self) -> u64 {
        self.layout.block_size()
    }

    /// Makes what was written visible to other clients of a distributed filesystem (and
    /// durable): fdatasync, which JuiceFS, NFS and CephFS clients take as the point to commit.
    pub fn flush(&self) -> Result<(), IoError> {
        self.file.sync_data()?;
        Ok(())
    }

    /// Locks the backing bytes of blocks `first..end` (`end` exclusive or `file_lock::TO_END`)
    /// against other mounts of the cipher dir, waiting for them (see `io::file_lock`).
    pub fn lock_blocks(
        &self,
        first: u64,
        end: u64,
        exclusive: bool,
    ) -> Result<super::file_lock::FileRangeLock<'a>, IoError> {
        super::file_lock::lock_blocks(self.file, &self.layout, first, end, exclusive)
    }

    pub fn plain_size(&self) -> Result<u64, IoError> {
        Ok(self.layout.plain_size(self.file.metadata()?.len()))
    }

    /// Bytes past the last whole sealed block (a write torn by a crash, or a cut file): 0 for
    /// a sound file.
    pub fn torn_tail(&self) -> Result<u64, IoError> {
        let len = self.file.metadata()?.len();
        Ok(len.saturating_sub(self.layout.backing_size(self.layout.plain_size(len))))
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
            self.read_blocks(first, last, plain, &mut b.sealed)?;
            Ok(reply(
                &plain[(offset - first * bs) as usize..(end - first * bs) as usize],
            ))
        })
    }

    pub fn read_at(&self, offset: u64, len: usize) -> Result<Vec<u8>, IoError> {
        self.read_with(offset, len, <[u8]>::to_vec)
    }

    /// Decrypts blocks `first..=last` into `plain`, which holds exactly their plaintext
    /// lengths back to back; `scratch` holds the ciphertext.
    fn read_blocks(
        &self,
        first: u64,
        last: u64,
        plain: &mut [u8],
        scratch: &mut Vec<u8>,
    ) -> Result<(), IoError> {
        let sealed_len = plain.len() + (last - first + 1) as usize * SEAL_OVERHEAD;
        let sealed = sized(scratch, sealed_len);
        let got = read_full_at(self.file, sealed, self.layout.block_offset(first))?;
        if got < sealed_len {
            // The backing file is shorter than its size says (torn or cut): report, never guess.
            return Err(self
                .key
                .integrity(first + (got / self.layout.sealed_block_size() as usize) as u64));
        }
        let metrics = crate::metrics::global();
        Metrics::add(&metrics.backing_read, got as u64);
        open_run(&self.layout, self.key, first, sealed, plain, &|index| {
            self.is_hole(index)
        })?;
        Metrics::add(&metrics.blocks_opened, last - first + 1);
        Ok(())
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

    /// The plaintext size of a data file of this `extent`.
    pub fn plain_size_of(&self, extent: Extent) -> u64 {
        self.layout.plain_size(extent.len)
    }

    /// `write_at` for a caller that holds the lock on the range and has just read the data
    /// file's `extent`, which nothing can change before this returns.
    pub fn write_at_extent(&self, offset: u64, data: &[u8], extent: Extent) -> Result<(), IoError> {
        if data.is_empty() {
            return Ok(());
        }
        let end = offset
            .checked_add(data.len() as u64)
            .filter(|e| *e <= MAX_PLAIN_END)
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
        // The blocks between the old end and the write stay unwritten: holes.
        self.record_holes(size.div_ceil(bs)..first, Persist::Later)?;
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
                    self.read_blocks(index, index, &mut buf[..old_len], edge_sealed)?;
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
            self.seal_and_write(first, blocks, span, source, sealed, nonces)
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
        match self.fallocate_keep_size(from, to) {
            Ok(()) | Err(nix::Error::EOPNOTSUPP) | Err(nix::Error::ENOSYS) => Ok(()),
            Err(e) => Err(IoError::Io(e.into())),
        }
    }

    fn fallocate_keep_size(&self, from: u64, to: u64) -> nix::Result<()> {
        nix::fcntl::fallocate(
            self.file.as_fd(),
            nix::fcntl::FallocateFlags::FALLOC_FL_KEEP_SIZE,
            from as i64,
            (to - from) as i64,
        )
    }

    /// fallocate(2) mode 0 and KEEP_SIZE: reserves backing space for the plaintext range
    /// `offset..offset + length` (whole blocks, with their overhead) and, unless
    /// `keep_size`, extends the file to its end with zeros.
    pub fn allocate(&self, offset: u64, length: u64, keep_size: bool) -> Result<(), IoError> {
        let end = offset
            .checked_add(length)
            .filter(|e| *e <= MAX_PLAIN_END)
            .ok_or(IoError::TooLarge)?;
        let start = self.layout.block_offset(self.layout.block_index(offset));
        let stop = self.layout.backing_size(end);
        if stop > start {
            self.fallocate_keep_size(start, stop)
                .map_err(|e| IoError::Io(e.into()))?;
        }
        if !keep_size && end > self.plain_size()? {
            self.truncate(end)?;
        }
        Ok(())
    }

    /// fallocate(2) PUNCH_HOLE and ZERO_RANGE: plaintext `offset..offset + length` reads as
    /// zeros afterwards. Whole blocks inside it become holes: their sealed bytes are punched out
    /// of the backing file, or overwritten with zeros where the backing filesystem cannot punch
    /// (an all-zero stored block is a hole, docs/FORMAT.md). The edge blocks it cuts are
    /// re-sealed with those bytes zeroed. Unless `keep_size`, the file grows to the range's end.
    pub fn zero_range(&self, offset: u64, length: u64, keep_size: bool) -> Result<(), IoError> {
        let end = offset
            .checked_add(length)
            .filter(|e| *e <= MAX_PLAIN_END)
            .ok_or(IoError::TooLarge)?;
        let mut size = self.plain_size()?;
        if !keep_size && end > size {
            // What lies past the old end reads as zeros already.
            self.truncate(end)?;
            size = end;
        }
        let end = end.min(size);
        if offset >= end {
            return Ok(());
        }
        let bs = self.layout.block_size();
        // The blocks wholly inside; the file's last block ends at `size`, however short.
        let first = offset.div_ceil(bs);
        let stop = if end == size {
            size.div_ceil(bs)
        } else {
            end / bs
        };
        if first >= stop {
            return self.write_zeros(offset, end);
        }
        self.write_zeros(offset, first * bs)?;
        self.write_zeros((stop * bs).min(end), end)?;
        let backing_end = self.layout.backing_size(size);
        self.record_holes(first..stop, Persist::Now)?;
        self.punch(
            self.layout.block_offset(first),
            self.layout.block_offset(stop).min(backing_end),
        )
    }

    /// Zeros plaintext `from..to` through the block codec (edge blocks: less than two blocks).
    fn write_zeros(&self, from: u64, to: u64) -> Result<(), IoError> {
        if to > from {
            self.write_at(from, &vec![0u8; (to - from) as usize])?;
        }
        Ok(())
    }

    /// Turns backing bytes `from..to` (whole sealed blocks) into a hole, or into zeros.
    fn punch(&self, from: u64, to: u64) -> Result<(), IoError> {
        let punched = nix::fcntl::fallocate(
            self.file.as_fd(),
            nix::fcntl::FallocateFlags::FALLOC_FL_PUNCH_HOLE
                | nix::fcntl::FallocateFlags::FALLOC_FL_KEEP_SIZE,
            from as i64,
            (to - from) as i64,
        );
        match punched {
            Ok(()) => Ok(()),
            Err(nix::Error::EOPNOTSUPP | nix::Error::ENOSYS) => {
                const CHUNK: u64 = 1 << 20;
                let zeros = vec![0u8; CHUNK as usize];
                let mut at = from;
                while at < to {
                    let n = (to - at).min(CHUNK) as usize;
                    self.file.write_all_at(&zeros[..n], at)?;
                    at += n as u64;
                }
                Ok(())
            }
            Err(e) => Err(IoError::Io(e.into())),
        }
    }

    /// SEEK_DATA and SEEK_HOLE from plaintext `offset`, mapped through the block layout.
    /// Holes are reported at block granularity; POSIX allows reporting a hole as data, never
    /// the reverse. `IoError::PastEnd` (ENXIO) when `offset` is at or past the end, or no
    /// data follows it.
    pub fn seek(&self, offset: u64, to: SeekTo) -> Result<u64, IoError> {
        let layout = self.layout;
        let size = self.plain_size()?;
        if offset >= size {
            return Err(IoError::PastEnd);
        }
        let bs = layout.block_size();
        // A block is data when the backing page holding its first byte is (holes are
        // page-granular and a sealed block spans two pages): the one rule both directions
        // answer by, so a data extent never ends where it starts (cp and tar loop on that).
        let first_block_from = |pos: u64| {
            pos.saturating_sub(PREAMBLE_LEN)
                .div_ceil(layout.sealed_block_size())
        };
        let mut from = layout.block_offset(offset / bs);
        loop {
            let pos = match self.backing_seek(from, to)? {
                Some(pos) => pos,
                None => return Err(IoError::PastEnd),
            };
            let block = first_block_from(pos);
            if block * bs >= size {
                return match to {
                    SeekTo::Data => Err(IoError::PastEnd),
                    SeekTo::Hole => Ok(size),
                };
            }
            let start = layout.block_offset(block);
            // In a hole when the next hole starts right there (or the backing file ends).
            let hole = self
                .backing_seek(start, SeekTo::Hole)?
                .is_none_or(|next_hole| next_hole == start);
            if hole == matches!(to, SeekTo::Data) {
                // Not what was asked for: the next page of the other kind starts past it.
                from = start;
                continue;
            }
            return Ok((block * bs).max(offset).min(size));
        }
    }

    /// lseek(2) SEEK_DATA or SEEK_HOLE on the backing file; None for ENXIO (no data there).
    fn backing_seek(&self, from: u64, to: SeekTo) -> Result<Option<u64>, IoError> {
        let whence = match to {
            SeekTo::Data => nix::unistd::Whence::SeekData,
            SeekTo::Hole => nix::unistd::Whence::SeekHole,
        };
        match nix::unistd::lseek(self.file.as_fd(), from as i64, whence) {
            Ok(pos) => Ok(Some(pos as u64)),
            Err(nix::Error::ENXIO) => Ok(None),
            Err(e) => Err(IoError::Io(e.into())),
        }
    }

    /// Sets the plaintext size, re-sealing the one block that changes length.
    pub fn truncate(&self, new_size: u64) -> Result<(), IoError> {
        if new_size > MAX_PLAIN_END {
            return Err(IoError::TooLarge);
        }
        let size = self.plain_size()?;
        let bs = self.layout.block_size();
        if new_size < size && !new_size.is_multiple_of(bs) {
            self.reseal_block(new_size / bs, size, new_size)?;
        } else if new_size > size && size % bs != 0 {
            self.reseal_block(size / bs, size, new_size)?;
        }
        if new_size > size {
            self.record_holes(size.div_ceil(bs)..new_size.div_ceil(bs), Persist::Now)?;
        }
        self.file.set_len(self.layout.backing_size(new_size))?;
        if new_size < size {
            self.clear_holes(new_size.div_ceil(bs)..u64::MAX)?;
        }
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
            self.read_blocks(index, index, &mut plain[..old_len], edge_sealed)?;
            let plain = &plain[..new_len];
            self.seal_and_write(index, 1, new_len, |_| plain, sealed, nonces)
        })
    }

    /// Seals `blocks` consecutive blocks from `first` (`span` plaintext bytes in all) with
    /// fresh random nonces and writes them with one pwrite.
    fn seal_and_write<'s>(
        &self,
        first: u64,
        blocks: usize,
        span: usize,
        source: impl Fn(u64) -> &'s [u8] + Sync,
        sealed: &mut Vec<u8>,
        nonces: &mut Vec<u8>,
    ) -> Result<(), IoError> {
        let sealed = sized(sealed, span + blocks * SEAL_OVERHEAD);
        seal_run(
            &self.layout,
            self.key,
            Nonces::Random,
            first,
            blocks,
            source,
            sealed,
            nonces,
        )?;
        self.file
            .write_all_at(sealed, self.layout.block_offset(first))?;
        let metrics = crate::metrics::global();
        Metrics::add(&metrics.blocks_sealed, blocks as u64);
        Metrics::add(&metrics.backing_written, sealed.len() as u64);
        self.clear_holes(first..first + blocks as u64)
    }
}

impl From<nix::Error> for IoError {
    fn from(err: nix::Error) -> Self {
        IoError::Io(io::Error::from(err))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::SecretKey;
    use crate::io::holes::{LedgerAccess, Persist};
    use crate::io::preamble::write_preamble;
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
            write_preamble(&file, &id).unwrap();
            Fixture {
                file,
                sealer: Sealer::new(&SecretKey::from_array([1; 32])),
                id,
                layout: Layout::new(block_size).unwrap(),
                _dir: dir,
            }
        }

        fn df(&self) -> DataFile<'_> {
            DataFile::new(
                &self.file,
                self.layout,
                &self.id,
                &self.sealer,
                Holes::AnyZeroBlock,
            )
        }

        /// A version 2 view of the file, its holes kept by `ledger`.
        fn df2<'a>(&'a self, ledger: &'a MapLedger) -> DataFile<'a> {
            DataFile::new(
                &self.file,
                self.layout,
                &self.id,
                &self.sealer,
                Holes::Recorded(ledger),
            )
        }

        /// The blocks stored all-zero, up to the file's last block.
        fn zero_blocks(&self) -> Vec<u64> {
            let size = self.df().plain_size().unwrap();
            let sbs = self.layout.sealed_block_size() as usize;
            let mut bytes = Vec::new();
            std::io::Read::read_to_end(&mut &self.file, &mut bytes).unwrap();
            let _ = std::io::Seek::rewind(&mut &self.file);
            (0..size.div_ceil(self.layout.block_size()))
                .filter(|&b| {
                    let at = self.layout.block_offset(b) as usize;
                    bytes[at..(at + sbs).min(bytes.len())]
                        .iter()
                        .all(|&x| x == 0)
                })
                .collect()
        }
    }

    /// The hole ledger of a lone mount, in memory.
    #[derive(Default)]
    struct MapLedger(std::sync::Mutex<crate::format::holes::HoleMap>);

    impl crate::io::HoleLedger for MapLedger {
        fn allows(&self, _: &LedgerAccess<'_>, block: u64) -> Result<bool, IoError> {
            Ok(self.0.lock().unwrap().contains(block))
        }
        fn record(
            &self,
            _: &LedgerAccess<'_>,
            blocks: std::ops::Range<u64>,
            _: Persist,
        ) -> Result<(), IoError> {
            self.0.lock().unwrap().insert(blocks);
            Ok(())
        }
        fn clear(&self, _: &LedgerAccess<'_>, blocks: std::ops::Range<u64>) -> Result<(), IoError> {
            self.0.lock().unwrap().remove(blocks);
            Ok(())
        }
    }

    impl MapLedger {
        /// The recorded blocks below `end`.
        fn blocks_below(&self, end: u64) -> Vec<u64> {
            self.0
                .lock()
                .unwrap()
                .ranges()
                .flat_map(|r| r.start.min(end)..r.end.min(end))
                .collect()
        }
    }

    #[derive(Debug, Clone)]
    enum Op {
        Write(u64, Vec<u8>),
        Truncate(u64),
        Allocate(u64, u64, bool),
        /// PUNCH_HOLE | KEEP_SIZE (`true`) or ZERO_RANGE without KEEP_SIZE (`false`).
        ZeroRange(u64, u64, bool),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (0u64..5000, proptest::collection::vec(any::<u8>(), 1..3000))
                .prop_map(|(o, d)| Op::Write(o, d)),
            (0u64..6000).prop_map(Op::Truncate),
            (0u64..6000, 1u64..3000, any::<bool>()).prop_map(|(o, l, k)| Op::Allocate(o, l, k)),
            (0u64..6000, 1u64..3000, any::<bool>()).prop_map(|(o, l, k)| Op::ZeroRange(o, l, k)),
        ]
    }

    /// Applies `op` to the data file and to `model`, the plaintext it must hold.
    fn apply(df: &DataFile<'_>, op: Op, model: &mut Vec<u8>) {
        match op {
            Op::Write(o, d) => {
                df.write_at(o, &d).unwrap();
                let end = o as usize + d.len();
                if model.len() < end {
                    model.resize(end, 0);
                }
                model[o as usize..end].copy_from_slice(&d);
            }
            Op::Truncate(n) => {
                df.truncate(n).unwrap();
                model.resize(n as usize, 0);
            }
            Op::ZeroRange(o, l, keep_size) => {
                df.zero_range(o, l, keep_size).unwrap();
                let end = (o + l) as usize;
                if !keep_size && model.len() < end {
                    model.resize(end, 0);
                }
                let stop = end.min(model.len());
                if (o as usize) < stop {
                    model[o as usize..stop].fill(0);
                }
            }
            Op::Allocate(o, l, keep_size) => {
                df.allocate(o, l, keep_size).unwrap();
                if !keep_size && model.len() < (o + l) as usize {
                    model.resize((o + l) as usize, 0);
                }
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        #[test]
        fn matches_a_plain_vec_model(ops in proptest::collection::vec(op(), 1..12)) {
            let fx = Fixture::new(512);
            let df = fx.df();
            let mut model: Vec<u8> = Vec::new();
            for op in ops {
                apply(&df, op, &mut model);
                prop_assert_eq!(df.plain_size().unwrap(), model.len() as u64);
                prop_assert_eq!(df.read_at(0, model.len() + 10).unwrap(), model.clone());
            }
        }

        /// Version 2: the same model, and after every step the hole map records exactly the
        /// blocks stored as zeros (so every hole reads, and nothing else may be zero).
        #[test]
        fn version_2_records_exactly_its_holes(ops in proptest::collection::vec(op(), 1..12)) {
            let fx = Fixture::new(512);
            let ledger = MapLedger::default();
            let df = fx.df2(&ledger);
            let mut model: Vec<u8> = Vec::new();
            for op in ops {
                apply(&df, op, &mut model);
                prop_assert_eq!(df.read_at(0, model.len() + 10).unwrap(), model.clone());
                let blocks = (model.len() as u64).div_ceil(512);
                prop_assert_eq!(ledger.blocks_below(blocks), fx.zero_blocks());
                prop_assert!(ledger.blocks_below(u64::MAX).iter().all(|&b| b < blocks), "nothing past the end");
            }
        }

        /// SEEK_DATA never lands past data, SEEK_HOLE never inside it (block granularity).
        #[test]
        fn seeks_never_report_data_as_a_hole(
            writes in proptest::collection::vec((0u64..64, 1u64..3), 1..6),
            probe in 0u64..(64 * 512),
        ) {
            let fx = Fixture::new(512);
            let df = fx.df();
            let mut written = [false; 66];
            for (block, count) in writes {
                df.write_at(block * 512, &vec![1u8; (count * 512) as usize]).unwrap();
                for b in block..block + count { written[b as usize] = true; }
            }
            let size = df.plain_size().unwrap();
            match df.seek(probe, SeekTo::Data) {
                Ok(pos) => {
                    prop_assert!(pos >= probe && pos < size);
                    // Nothing written between probe and pos.
                    for b in probe / 512..pos / 512 { prop_assert!(!written[b as usize]); }
                    // A data extent never ends where it starts (cp would loop).
                    prop_assert!(df.seek(pos, SeekTo::Hole).unwrap() > pos);
                }
                Err(IoError::PastEnd) => {
                    for b in probe / 512..size.div_ceil(512) { prop_assert!(!written[b as usize]); }
                }
                Err(e) => prop_assert!(false, "{e}"),
            }
            if probe < size {
                let hole = df.seek(probe, SeekTo::Hole).unwrap();
                prop_assert!(hole >= probe && hole <= size);
                if hole < size { prop_assert!(!written[(hole / 512) as usize]); }
            } else {
                prop_assert!(matches!(df.seek(probe, SeekTo::Hole), Err(IoError::PastEnd)));
            }
        }
    }

    /// One byte in block 4 of an empty file (4 KiB blocks): the backing page holding the
    /// end of block 3 holds block 4's start, yet block 3 is a hole. SEEK_DATA from block 1
    /// says block 4, and SEEK_HOLE from there says the end (it once said 12288 for both, and
    /// `cp` looped on the empty extent for ever; the harness found it on a shared mount).
    #[test]
    fn data_and_holes_agree_where_a_page_holds_two_blocks() {
        let fx = Fixture::new(4096);
        let df = fx.df();
        df.write_at(17_918, &[1]).unwrap();
        assert_eq!(df.seek(4096, SeekTo::Data).unwrap(), 16_384);
        assert_eq!(df.seek(16_384, SeekTo::Hole).unwrap(), 17_919);
        // Block 0 shares its first page with the preamble: counted as data (allowed).
        assert_eq!(df.seek(0, SeekTo::Hole).unwrap(), 4096);
        assert_eq!(df.seek(12_288, SeekTo::Hole).unwrap(), 12_288);
    }

    #[test]
    fn large_parallel_write_round_trips() {
        let fx = Fixture::new(4096);
        let data: Vec<u8> = (0..1 << 20).map(|i| (i * 31 % 251) as u8).collect();
        fx.df().write_at(100, &data).unwrap();
        assert_eq!(fx.df().read_at(100, data.len()).unwrap(), data);
        assert_eq!(fx.df().read_at(0, 100).unwrap(), vec![0; 100]);
    }

    #[test]
    fn flipped_bit_and_moved_block_give_integrity_errors() {
        let fx = Fixture::new(512);
        fx.df().write_at(0, &[0x55; 2048]).unwrap();
        let mut byte = [0u8; 1];
        let at = PREAMBLE_LEN + 600;
        fx.file.read_exact_at(&mut byte, at).unwrap();
        fx.file.write_all_at(&[byte[0] ^ 4], at).unwrap();
        assert!(matches!(
            fx.df().read_at(0, 2048),
            Err(IoError::Integrity { block: 1, .. })
        ));
        assert!(fx.df().read_at(0, 512).is_ok());
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
            fx.df().read_at(1536, 512),
            Err(IoError::Integrity { block: 3, .. })
        ));
    }

    /// A written block zeroed in the data file reads as EIO in a version 2 file (as zeros in
    /// a version 1 file, whose holes are not recorded); a recorded hole still reads as zeros.
    #[test]
    fn a_zeroed_block_is_not_a_hole_unless_recorded() {
        let fx = Fixture::new(512);
        let ledger = MapLedger::default();
        let df = fx.df2(&ledger);
        df.write_at(0, &[7u8; 2048]).unwrap();
        df.write_at(8 * 512, b"after a gap").unwrap();
        assert_eq!(ledger.blocks_below(100), vec![4, 5, 6, 7]);
        let sbs = fx.layout.sealed_block_size() as usize;
        fx.file
            .write_all_at(&vec![0u8; sbs], fx.layout.block_offset(1))
            .unwrap();
        assert!(matches!(
            df.read_at(0, 2048),
            Err(IoError::UnrecordedHole { block: 1, .. })
        ));
        assert_eq!(df.read_at(5 * 512, 10).unwrap(), vec![0; 10]);
        assert_eq!(fx.df().read_at(512, 4).unwrap(), vec![0; 4], "version 1");
    }

    #[test]
    fn holes_read_as_zeros_and_stay_sparse() {
        let fx = Fixture::new(4096);
        fx.df().write_at(10 << 20, b"end").unwrap();
        assert_eq!(fx.df().plain_size().unwrap(), (10 << 20) + 3);
        assert_eq!(fx.df().read_at(5 << 20, 4).unwrap(), vec![0; 4]);
        assert!(fx.file.metadata().unwrap().blocks() * 512 < 1 << 20);
        assert!(fx.df().seek(0, SeekTo::Hole).unwrap() <= 4096);
        // Block-granular, and a hole sharing a backing page with data may read as data.
        let data = fx.df().seek(5 << 20, SeekTo::Data).unwrap();
        assert!(((10 << 20) - 2 * 4096..=10 << 20).contains(&data), "{data}");
        assert_eq!(fx.df().torn_tail().unwrap(), 0);
    }
}
