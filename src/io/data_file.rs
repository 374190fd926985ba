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
use super::undo::{StoredBlocks, UndoLedger};
use crate::crypto::{SEAL_OVERHEAD, Sealer};
use crate::format::Id;
use crate::format::block::{Layout, PREAMBLE_LEN};
use crate::metrics::Metrics;

/// The largest plaintext offset sealfs accepts (2 EiB): backing offsets (plaintext plus
/// per-block overhead, under 6% at the smallest block size) stay below 4 EiB, where the locks
/// programs take begin in a shared mount's backing files (`coord::file_locks`).
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
    pub(super) file: &'a File,
    pub(super) layout: Layout,
    pub(super) key: BlockKey<'a>,
    holes: Holes<'a>,
    /// The keeper of the undo journal (`io::undo`): `None` where nothing is journaled (a
    /// shared mount, offline tools, the reverse view).
    pub(super) undo: Option<&'a dyn UndoLedger>,
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
            undo: None,
        }
    }

    /// Writes that replace stored blocks copy them to `undo` first.
    pub fn with_undo(mut self, undo: Option<&'a dyn UndoLedger>) -> Self {
        self.undo = undo;
        self
    }

    fn ledger_access(&self) -> LedgerAccess<'_> {
        LedgerAccess {
            file: self.file,
            file_id: self.key.file_id,
            sealer: self.key.sealer,
        }
    }

    /// Whether all-zero stored block `index` is a hole.
    pub(super) fn is_hole(&self, index: u64) -> Result<bool, IoError> {
        match self.holes {
            Holes::AnyZeroBlock => any_zero_block(index),
            Holes::Recorded(ledger) => ledger.allows(&self.ledger_access(), index),
        }
    }

    /// Records `blocks` as holes before they are zeroed or left unwritten.
    pub(super) fn record_holes(
        &self,
        blocks: std::ops::Range<u64>,
        persist: Persist,
    ) -> Result<(), IoError> {
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

    /// Locks the backing bytes of blocks `first..end` (`end` exclusive or `coord::TO_END`)
    /// against other mounts of the cipher dir, waiting for them (see `coord::file_locks`).
    pub fn lock_blocks(
        &self,
        first: u64,
        end: u64,
        exclusive: bool,
    ) -> Result<crate::coord::file_locks::FileRangeLock<'a>, IoError> {
        Ok(crate::coord::file_locks::lock_blocks(
            self.file,
            &self.layout,
            first,
            end,
            exclusive,
        )?)
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
                // Zeros written over sealed blocks tear like any write.
                let sealed = self.layout.sealed_block_size();
                let start = self.layout.block_offset(0);
                self.protect((from - start) / sealed..(to - start).div_ceil(sealed))?;
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
            self.note_extension()?;
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

    /// Before `blocks` are written in place: the undo journal copies those that hold what a
    /// torn write would destroy (`io::undo`).
    fn protect(&self, blocks: std::ops::Range<u64>) -> Result<(), IoError> {
        match self.undo {
            Some(undo) => undo.protect(
                &self.ledger_access(),
                blocks,
                &StoredBlocks {
                    file: self.file,
                    layout: &self.layout,
                },
            ),
            None => Ok(()),
        }
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
        self.protect(first..first + blocks as u64)?;
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
#[path = "data_file_tests.rs"]
mod tests;
