//! Writes that a crash cannot turn into lost data. A sealed block is rewritten in place, and
//! neither a power cut nor a SIGKILL writes it atomically (it spans two pages): a torn rewrite
//! is half old, half new and opens as neither, which would take with it every byte the block
//! held before, fsynced or not. So before a write replaces stored blocks, the data file's
//! undo journal (`format::undo`, kept by the volume) takes a durable copy of each one it has
//! not copied since the file's last fsync; after a crash, a block that does not open is put
//! back from its copy (`DataFile::recovery`). Blocks written since the last fsync hold nothing
//! acknowledged, so their rewrites need no copy: a tear there loses only unsynced bytes, and
//! recovery cuts a torn block past the end the file had at the journal's first record.
//!
//! This module says what `DataFile` asks of the journal's keeper and how a recovery is
//! planned and applied; the keeper (sidecar, epochs, locking) is the volume's.

use std::fs::File;
use std::ops::Range;
use std::os::unix::fs::FileExt;

use super::IoError;
use super::buffers::read_full_at;
use super::holes::LedgerAccess;
use crate::crypto::SEAL_OVERHEAD;
use crate::format::block::Layout;
use crate::format::undo::UndoRecord;

/// What a recovery without a journal reads at a time.
const CHUNK: usize = 1 << 20;

/// The stored blocks of one data file, as a journal keeper reads them before a write.
pub struct StoredBlocks<'a> {
    pub(super) file: &'a File,
    pub(super) layout: &'a Layout,
}

impl<'a> StoredBlocks<'a> {
    /// The stored blocks of data file `file`, laid out as `layout` says.
    pub fn new(file: &'a File, layout: &'a Layout) -> StoredBlocks<'a> {
        StoredBlocks { file, layout }
    }

    /// How the data file's blocks are laid out.
    pub fn layout(&self) -> Layout {
        *self.layout
    }

    /// The data file's backing length now.
    pub fn backing_len(&self) -> Result<u64, IoError> {
        Ok(self.file.metadata()?.len())
    }

    /// The first block that starts at or past backing length `backing_len`.
    pub fn first_block_at_or_past(&self, backing_len: u64) -> u64 {
        backing_len
            .saturating_sub(self.layout.block_offset(0))
            .div_ceil(self.layout.sealed_block_size())
    }

    /// Where block `index` ends in the data file, were it whole.
    pub fn block_end(&self, index: u64) -> u64 {
        self.layout.block_offset(index + 1)
    }

    /// A sealed block's size: what one record holds at most.
    pub fn sealed_block_size(&self) -> u64 {
        self.layout.sealed_block_size()
    }

    /// Starts writing the data file's dirty pages back to the device (no wait, no flush).
    pub fn start_write_back(&self) -> std::io::Result<()> {
        sync_file_range(self.file, 0, 0, libc::SYNC_FILE_RANGE_WRITE)
    }

    /// A second descriptor of the data file.
    pub fn try_clone_file(&self) -> Result<File, IoError> {
        Ok(self.file.try_clone()?)
    }

    /// The stored bytes of `blocks`, back to back, up to backing length `backing_len`.
    pub fn run(&self, blocks: Range<u64>, backing_len: u64) -> Result<Vec<u8>, IoError> {
        let mut bytes = Vec::new();
        self.run_into(blocks, backing_len, &mut bytes)?;
        Ok(bytes)
    }

    /// `run`, into `bytes` (replacing what it held; its allocation is reused).
    pub fn run_into(
        &self,
        blocks: Range<u64>,
        backing_len: u64,
        bytes: &mut Vec<u8>,
    ) -> Result<(), IoError> {
        let at = self.layout.block_offset(blocks.start).min(backing_len);
        let end = self.layout.block_offset(blocks.end).min(backing_len);
        bytes.resize((end - at) as usize, 0);
        let got = read_full_at(self.file, bytes, at)?;
        bytes.truncate(got);
        Ok(())
    }

    /// The stored bytes of block `index` of a data file `backing_len` bytes long (`None` past
    /// the end). A hole's are zeros: a torn write into it leaves it failing as surely as one
    /// into sealed data, and its copy puts it back as a recorded hole.
    pub fn block(&self, index: u64, backing_len: u64) -> Result<Option<Vec<u8>>, IoError> {
        let at = self.layout.block_offset(index);
        if at >= backing_len {
            return Ok(None);
        }
        let len = (backing_len - at).min(self.layout.sealed_block_size()) as usize;
        let mut bytes = vec![0u8; len];
        let got = read_full_at(self.file, &mut bytes, at)?;
        bytes.truncate(got);
        Ok((!bytes.is_empty()).then_some(bytes))
    }
}

/// `sync_file_range(2)` of `len` bytes of `file` from `at` (0: to the end).
pub fn sync_file_range(file: &File, at: u64, len: u64, flags: libc::c_uint) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    // SAFETY: a plain system call on a descriptor borrowed for its duration.
    let rc = unsafe { libc::sync_file_range(file.as_raw_fd(), at as i64, len as i64, flags) };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// The keeper of a data file's undo journal.
pub trait UndoLedger: Send + Sync {
    /// Called before `blocks` are written in place: every one of them that holds stored bytes
    /// and has no copy in the journal since the file's last fsync gets one, durable before
    /// this returns.
    fn protect(
        &self,
        at: &LedgerAccess<'_>,
        blocks: Range<u64>,
        stored: &StoredBlocks<'_>,
    ) -> Result<(), IoError>;

    /// The file is about to grow past backing length `old_len` (a truncate up, fallocate):
    /// the blocks from there on are new in the epoch, holding nothing acknowledged, and a
    /// write to them needs no copy. Nothing by default.
    fn extended(&self, _old_len: u64, _stored: &StoredBlocks<'_>) -> Result<(), IoError> {
        Ok(())
    }

    /// An fsync of the file: `sync` makes its data durable, after which the copies are spent
    /// and a new epoch begins. The caller keeps writes out meanwhile. The keeper may copy, in
    /// parallel, blocks the next epoch is likely to rewrite.
    fn end_epoch(
        &self,
        stored: &StoredBlocks<'_>,
        sync: &(dyn Fn() -> Result<(), IoError> + Sync),
    ) -> Result<(), IoError>;
}

/// What a recovery does to a data file after a crash.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Recovery {
    /// Blocks that do not open, with their copies from the journal (which do), by index.
    pub restore: Vec<(u64, Vec<u8>)>,
    /// The backing length to cut the file to: the end of a block put back that was the last
    /// then, or the start of a torn block written since the journal's first record (unsynced).
    pub cut_to: Option<u64>,
}

impl Recovery {
    pub fn is_empty(&self) -> bool {
        self.restore.is_empty() && self.cut_to.is_none()
    }

    /// Blocks put back, and the bytes a cut drops, for logs and fsck.
    pub fn describe(&self, backing_len: u64) -> String {
        let mut parts = Vec::new();
        if !self.restore.is_empty() {
            let blocks: Vec<String> = self.restore.iter().map(|(i, _)| i.to_string()).collect();
            parts.push(format!(
                "block(s) {} torn by a crash, put back from the undo journal",
                blocks.join(", ")
            ));
        }
        if let Some(cut) = self.cut_to {
            parts.push(format!(
                "{} unsynced backing byte(s) torn by a crash cut off",
                backing_len.saturating_sub(cut)
            ));
        }
        parts.join("; ")
    }
}

impl<'a> super::DataFile<'a> {
    /// Tells the undo journal the file is about to grow past its backing length now.
    pub(super) fn note_extension(&self) -> Result<(), IoError> {
        match self.undo {
            Some(undo) => undo.extended(
                self.backing_len()?,
                &StoredBlocks {
                    file: self.file,
                    layout: &self.layout,
                },
            ),
            None => Ok(()),
        }
    }

    /// A sealed block's size: what one undo record holds at most.
    pub fn sealed_block_size(&self) -> u64 {
        self.layout.sealed_block_size()
    }

    /// Locks all blocks of the file exclusively if no one holds any of them (`None` else).
    pub fn try_lock_whole(
        &self,
    ) -> Result<Option<crate::coord::file_locks::FileRangeLock<'a>>, IoError> {
        Ok(crate::coord::file_locks::try_lock_blocks(
            self.file,
            &self.layout,
            0,
            crate::coord::file_locks::TO_END,
        )?)
    }

    /// fsync (`datasync`: fdatasync) of the data file, which ends its undo journal's epoch.
    pub fn sync(&self, datasync: bool) -> Result<(), IoError> {
        let sync = || {
            if datasync {
                self.file.sync_data()
            } else {
                self.file.sync_all()
            }
            .map_err(IoError::from)
        };
        match self.undo {
            Some(undo) => undo.end_epoch(
                &StoredBlocks {
                    file: self.file,
                    layout: &self.layout,
                },
                &sync,
            ),
            None => sync(),
        }
    }

    /// The backing file's length now.
    pub fn backing_len(&self) -> Result<u64, IoError> {
        Ok(self.file.metadata()?.len())
    }

    /// The backing file's metadata.
    pub fn metadata(&self) -> Result<std::fs::Metadata, IoError> {
        Ok(self.file.metadata()?)
    }

    /// Whether `stored` opens as block `index` of this file.
    fn opens(&self, index: u64, stored: &[u8]) -> bool {
        if stored.len() <= SEAL_OVERHEAD || stored.len() as u64 > self.layout.sealed_block_size() {
            return false;
        }
        let mut plain = vec![0u8; stored.len() - SEAL_OVERHEAD];
        super::codec::open_block(
            self.key.sealer,
            &crate::format::block::block_aad(self.key.version, self.key.file_id, index),
            stored,
            &mut plain,
        )
        .is_ok()
    }

    /// Whether block `index`, stored as `stored`, reads: it opens, or it is a hole.
    fn reads(&self, index: u64, stored: &[u8]) -> Result<bool, IoError> {
        if stored.iter().all(|&b| b == 0) {
            return self.is_hole(index);
        }
        Ok(self.opens(index, stored))
    }

    /// What to do to this data file after a crash, given its undo journal's `records`: every
    /// recorded block that is there (not cut off since) but does not read, and whose copy
    /// opens, is put back (the latest copy of a block wins); a torn block past the length the file had when the epoch began
    /// (written since, never fsynced) is cut off with what follows it.
    pub fn recovery(&self, records: &[UndoRecord]) -> Result<Recovery, IoError> {
        self.recovery_with(records, true)
    }

    /// `recovery`, with the scan for torn new blocks past the epoch's length only if `cut`.
    fn recovery_with(&self, records: &[UndoRecord], cut: bool) -> Result<Recovery, IoError> {
        let mut plan = Recovery::default();
        // The last record's epoch length: where the epoch a crash cut began (the records of
        // earlier epochs a journal may still hold concern blocks durable since).
        let Some(first_len) = records.last().map(|r| r.backing_len) else {
            return Ok(plan);
        };
        let stored = StoredBlocks {
            file: self.file,
            layout: &self.layout,
        };
        let backing_len = stored.backing_len()?;
        let mut latest = std::collections::BTreeMap::new();
        for r in records {
            latest.insert(r.block, r);
        }
        let whole = self.layout.sealed_block_size() as usize;
        let mut end = backing_len;
        for (&index, record) in &latest {
            // A block past the end was cut off by a truncate since its copy: it stays so.
            let Some(now) = stored.block(index, backing_len)? else {
                continue;
            };
            if self.reads(index, &now)? {
                continue;
            }
            let hole = record.stored.iter().all(|&b| b == 0);
            if !hole && !self.opens(index, &record.stored) {
                continue;
            }
            if record.stored.len() < whole {
                end = end.min(self.layout.block_offset(index) + record.stored.len() as u64);
            }
            plan.restore.push((index, record.stored.clone()));
        }
        if !cut {
            plan.cut_to = (end < backing_len).then_some(end);
            return Ok(plan);
        }
        // Blocks that start at or past the epoch's first length were written in it.
        let sealed = self.layout.sealed_block_size();
        let mut index = first_len
            .saturating_sub(self.layout.block_offset(0))
            .div_ceil(sealed);
        while self.layout.block_offset(index) < end {
            if latest.contains_key(&index) {
                index += 1;
                continue;
            }
            let now = stored.block(index, end)?.unwrap_or_default();
            if !self.reads(index, &now)? {
                end = self.layout.block_offset(index);
                break;
            }
            index += 1;
        }
        if end < backing_len {
            plan.cut_to = Some(end);
        }
        Ok(plan)
    }

    /// What to do to this data file after a crash when it has no journal but was written in
    /// the session the crash ended: with no copy made since its last fsync, every write since
    /// went past the end that fsync left, so the first block that does not read and all after
    /// it were never fsynced, and are cut (a torn append, or a new file cut short).
    pub fn recovery_without_journal(&self) -> Result<Recovery, IoError> {
        let mut plan = Recovery::default();
        let size = self.plain_size()?;
        let bs = self.layout.block_size();
        let unreadable = |e: &IoError| {
            matches!(
                e,
                IoError::Integrity { .. } | IoError::UnrecordedHole { .. }
            )
        };
        let mut at = 0;
        while at < size {
            match self.read_with(at, CHUNK, |_| ()) {
                Ok(()) => at += CHUNK as u64,
                Err(e) if unreadable(&e) => {
                    // The chunk's first block that does not read, one by one.
                    loop {
                        match self.read_with(at, bs as usize, |_| ()) {
                            Ok(()) => at += bs,
                            Err(e) if unreadable(&e) => break,
                            Err(e) => return Err(e),
                        }
                    }
                    plan.cut_to = Some(self.layout.block_offset(at / bs));
                    return Ok(plan);
                }
                Err(e) => return Err(e),
            }
        }
        if self.torn_tail()? > 0 {
            // 1..28 bytes past the last whole block: a block torn short.
            plan.cut_to = Some(self.layout.backing_size(size));
        }
        Ok(plan)
    }

    /// What a shared mount does to this data file before it cuts its journal back (`mend`
    /// false): the recorded blocks that do not read put back from their copies. And when a
    /// block failed authentication with no writer on it (`mend`: a crash on some host tore
    /// it): `recovery` from the journal's `records` (or, with none,
    /// `recovery_without_journal`), but no cut that would drop a block that reads (another
    /// host may have appended it since, and made it durable): the torn block then stays EIO,
    /// for fsck.
    pub fn recovery_shared(&self, records: &[UndoRecord], mend: bool) -> Result<Recovery, IoError> {
        let mut plan = if !mend {
            self.recovery_with(records, false)?
        } else if records.is_empty() {
            self.recovery_without_journal()?
        } else {
            self.recovery(records)?
        };
        if let Some(cut) = plan.cut_to
            && self.a_block_reads_from(cut)?
        {
            plan.cut_to = None;
        }
        Ok(plan)
    }

    /// Whether a block starting at or past backing offset `at` reads.
    fn a_block_reads_from(&self, at: u64) -> Result<bool, IoError> {
        let stored = StoredBlocks {
            file: self.file,
            layout: &self.layout,
        };
        let backing_len = stored.backing_len()?;
        let mut index = stored.first_block_at_or_past(at);
        while let Some(bytes) = stored.block(index, backing_len)? {
            if self.reads(index, &bytes)? {
                return Ok(true);
            }
            index += 1;
        }
        Ok(false)
    }

    /// Applies `plan` and makes it durable. A hole put back is recorded in the hole map first.
    pub fn recover(&self, plan: &Recovery) -> Result<(), IoError> {
        for (index, bytes) in &plan.restore {
            if bytes.iter().all(|&b| b == 0) {
                self.record_holes(*index..index + 1, super::Persist::Now)?;
            }
            self.file
                .write_all_at(bytes, self.layout.block_offset(*index))?;
        }
        if let Some(len) = plan.cut_to {
            self.file.set_len(len)?;
        }
        self.file.sync_data()?;
        Ok(())
    }
}
