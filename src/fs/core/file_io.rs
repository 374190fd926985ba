//! Open files: open and create's handle, read, write, truncate, allocate, seek, fsync and
//! release. Block I/O goes through `io::DataFile` under the node's block-range lock.

use std::fs::File;
use std::os::fd::AsFd;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use fuser::FileType;
use nix::fcntl::{AT_FDCWD, OFlag, openat};
use nix::sys::stat::{Mode, fstat};

use super::{Caller, FileHandle, Handle, SealFs};
use crate::fs::inodes::{Content, Node};
use crate::io::{DataFile, IoError, SeekTo, range_lock};
use crate::volume::remnant;
use crate::volume::{Result, VolumeError, proc_fd_path};

impl SealFs {
    pub(super) fn truncate(&self, node: &Arc<Node>, size: u64, fh: Option<u64>) -> Result<()> {
        if node.kind == FileType::Directory {
            return Err(VolumeError::IsDirectory);
        }
        let handle = fh.and_then(|fh| self.file_handle(fh).ok());
        let owned;
        let (file, content) = match &handle {
            Some(h) if h.file.metadata().is_ok() && is_writable(&h.file) => {
                (&h.file, h.content.clone())
            }
            _ => {
                owned = self.reopen(node, OFlag::O_RDWR)?;
                let content = self.content_of(node, &owned)?;
                (&owned, content)
            }
        };
        self.whole_file_change(node, file, &content, |data_file| data_file.truncate(size))
    }

    /// Runs a change of the whole data file `file` (truncate, allocate) under the in-process
    /// lock of every block, and held against other mounts (`access`).
    fn whole_file_change(
        &self,
        node: &Node,
        file: &File,
        content: &Content,
        change: impl FnOnce(&DataFile<'_>) -> std::result::Result<(), IoError>,
    ) -> Result<()> {
        let _guard = node.ranges.write(0, range_lock::TO_END);
        let mut change = Some(change);
        self.access.change(
            self,
            node,
            file,
            content,
            (0, range_lock::TO_END),
            &mut |data_file| change.take().expect("run once")(data_file),
        )?;
        self.access.after_whole_file_change(self, file, content)
    }

    /// Writes what this mount changed in the file's hole map to its sidecar (lone mounts;
    /// shared mounts write every change at once).
    pub(super) fn flush_holes(&self, file: &File, content: &Content) -> Result<()> {
        if let Some(holes) = &content.holes {
            holes.flush(&content.ledger_access(file))?;
        }
        Ok(())
    }

    pub(super) fn reopen(&self, node: &Node, access: OFlag) -> Result<File> {
        let path = proc_fd_path(node.fd.as_fd());
        Ok(File::from(openat(
            AT_FDCWD,
            path.as_path(),
            access | OFlag::O_CLOEXEC,
            Mode::empty(),
        )?))
    }

    /// The key of a regular file, through the key cache on every open (so cache limits
    /// apply); the file id and format version, immutable, are read from the data file once
    /// per inode.
    pub(super) fn content_of(&self, node: &Node, file: &File) -> Result<Arc<Content>> {
        let (file_id, holes) = match (node.file_id.get(), node.holes.get()) {
            (Some(id), Some(holes)) => (*id, holes.clone()),
            _ => {
                let preamble = match crate::io::read_preamble(file) {
                    Err(e) if remnant::never_written(file) => self.revive_empty(node, e)?,
                    read => read?,
                };
                let id = *node.file_id.get_or_init(|| preamble.file_id);
                let holes = node
                    .holes
                    .get_or_init(|| self.access.file_holes(self, preamble.version, id));
                (id, holes.clone())
            }
        };
        let material = self.volume.file_key(&file_id)?;
        self.volume
            .check_policy(&file_id, &material, self.policy_of(node)?)?;
        let undo = node
            .undo
            .get_or_init(|| self.access.file_undo(self, file_id))
            .clone();
        let content = Arc::new(Content {
            file_id,
            material,
            holes,
            undo,
        });
        if self.volume.undo.mending() && self.suspect(&file_id, file)? {
            self.mend(node, &content)?;
        }
        Ok(content)
    }

    /// Whether data file `file` (of `file_id`) must be mended before it is served
    /// (`volume::undo`): a crash left it a journal, or it was written in the crashed session
    /// and this mount has not looked at it yet.
    fn suspect(&self, file_id: &crate::io::FileId, file: &File) -> Result<bool> {
        let changed = std::os::unix::fs::MetadataExt::ctime(&file.metadata()?);
        Ok(self.volume.undo.suspect(file_id, changed))
    }

    /// Mends what a crash left in a data file (`volume::undo`): torn blocks put back from its
    /// journal, torn unsynced ones cut off. Only a lone, writable mount does (it alone calls
    /// `begin_session`): elsewhere a torn block stays EIO until fsck.
    fn mend(&self, node: &Node, content: &Content) -> Result<()> {
        let _guard = node.ranges.write(0, range_lock::TO_END);
        let file = self.reopen(node, OFlag::O_RDWR)?;
        if !self.suspect(&content.file_id, &file)? {
            return Ok(());
        }
        self.volume.undo.mend(
            &self.data_file(&file, content),
            &content.file_id,
            &self.volume.layout,
        )?;
        self.flush_holes(&file, content)?;
        self.volume.headers.sync(&content.file_id)?;
        self.volume.undo.mended(&content.file_id)?;
        Ok(())
    }

    /// A regular file a lookup just found, mended first if a crash left it torn: the kernel
    /// then learns its size as mended. Whether it was looked at.
    pub(super) fn mend_if_pending(&self, node: &Node) -> Result<bool> {
        if !self.volume.undo.mending() || node.kind != fuser::FileType::RegularFile {
            return Ok(false);
        }
        let file = self.reopen(node, OFlag::O_RDONLY)?;
        let id = match node.file_id.get() {
            Some(id) => *id,
            None => match crate::io::read_file_id(&file) {
                Ok(id) => id,
                Err(_) => return Ok(false),
            },
        };
        if !self.suspect(&id, &file)? {
            return Ok(false);
        }
        self.content_of(node, &file)?;
        Ok(true)
    }

    /// A data file whose preamble never reached the disk (a crash) opens as an empty file
    /// (`volume::remnant`), under its node's whole-file lock so that two opens make one file
    /// id. Only where nothing else writes the cipher dir: a read-only or shared mount answers
    /// `err` (EIO) and leaves it to fsck.
    fn revive_empty(&self, node: &Node, err: IoError) -> Result<crate::io::Preamble> {
        if self.read_only || !self.access.sole_writer() {
            return Err(err.into());
        }
        let _guard = node.ranges.write(0, range_lock::TO_END);
        let file = self.reopen(node, OFlag::O_RDWR)?;
        match crate::io::read_preamble(&file) {
            Err(_) if remnant::never_written(&file) => {
                Ok(self.volume.revive_empty(&file, self.policy_of(node)?)?)
            }
            read => Ok(read?),
        }
    }

    pub(super) fn data_file<'a>(&'a self, file: &'a File, content: &'a Content) -> DataFile<'a> {
        self.volume
            .data_file(
                file,
                &content.file_id,
                &content.material,
                content.holes.as_deref(),
            )
            .with_undo(
                content
                    .undo
                    .as_deref()
                    .map(|u| u as &dyn crate::io::UndoLedger),
            )
    }

    /// Opens a file; the flag says whether the kernel may keep its cached pages (the backing
    /// file is as the last close left it, and only this mount writes it).
    pub fn open(&self, ino: u64, flags: i32) -> Result<(u64, bool)> {
        let node = self.node(ino)?;
        let write = flags & libc::O_ACCMODE != libc::O_RDONLY;
        if write {
            self.writable()?;
        }
        // Writes read their edge blocks back, so any writable open reads too. O_APPEND is the
        // kernel's to apply (pwrite on an O_APPEND fd would ignore our offsets); O_DIRECT's
        // alignment rules do not survive encryption.
        let access = if write {
            OFlag::O_RDWR
        } else {
            OFlag::O_RDONLY
        };
        let passed =
            OFlag::from_bits_truncate(flags) & (OFlag::O_SYNC | OFlag::O_DSYNC | OFlag::O_NOATIME);
        let epoch = node.lock_epoch.load(Ordering::Acquire);
        let file = self.reopen(&node, access | passed)?;
        // Another mount may have changed it since: shared mounts never keep cached pages.
        let keep_cache = self.access.sole_writer() && {
            let stamp = *crate::sync::lock(&node.closed_stamp);
            stamp.is_some() && stamp == backing_stamp(&file)
        };
        let truncate = flags & libc::O_TRUNC != 0 && write;
        let fh = self.open_file_handle(node.clone(), file, flags & libc::O_APPEND != 0, epoch)?;
        if truncate && let Err(e) = self.truncate(&node, 0, Some(fh)) {
            self.release(fh);
            return Err(e);
        }
        Ok((fh, keep_cache && !truncate))
    }

    pub fn read(&self, fh: u64, offset: u64, size: u32) -> Result<Vec<u8>> {
        self.read_with(fh, offset, size, <[u8]>::to_vec)
    }

    /// Reads and hands the plaintext to `reply` from the thread's reusable buffer.
    pub fn read_with<T>(
        &self,
        fh: u64,
        offset: u64,
        size: u32,
        reply: impl FnOnce(&[u8]) -> T,
    ) -> Result<T> {
        let handle = self.file_handle(fh)?;
        let bs = self.volume.layout.block_size();
        let first = offset / bs;
        let last = offset.saturating_add(u64::from(size.max(1)) - 1) / bs;
        let _guard = handle.node.ranges.read(first, last + 1);
        let mut reply = Some(reply);
        let mut out = None;
        self.access
            .read(self, &handle, (first, last + 1), &mut |data_file| {
                let read = data_file.read_with(offset, size as usize, |data| {
                    reply.take().map(|reply| reply(data))
                })?;
                out = out.take().or(read);
                Ok(())
            })?;
        Ok(out.expect("replied once"))
    }

    /// Whether the kernel should serve this open without its page cache: in shared mode an
    /// O_APPEND writer's data lands where the end of file really is, which its kernel cannot
    /// know, so its pages would sit at the wrong offset.
    pub fn direct_io(&self, flags: i32) -> bool {
        self.access.appends_at_backing_end() && flags & libc::O_APPEND != 0
    }

    /// Writes inside the file lock only their blocks; a write that touches the block holding
    /// the end of file (or lies past it) locks from there to the end, since it changes the
    /// size and may re-seal that block. Which range that is comes from the size the last write
    /// left, checked under the lock (and widened when it was stale): one size lookup per write.
    /// `kill_set_id`: the writer, when the kernel says it lacks CAP_FSETID
    /// (FUSE_WRITE_KILL_SUIDGID), so set-id bits go first.
    pub fn write(
        &self,
        fh: u64,
        offset: u64,
        data: &[u8],
        kill_set_id: Option<Caller>,
    ) -> Result<u32> {
        self.writable()?;
        let handle = self.file_handle(fh)?;
        if let Some(writer) = kill_set_id {
            self.drop_set_id(&handle.node, writer)?;
        }
        if data.is_empty() {
            return Ok(0);
        }
        let bs = self.volume.layout.block_size();
        let len = data.len() as u64;
        // An O_APPEND write goes to the end of file as found under the lock, where other
        // mounts append too.
        let append = self.access.appends_at_backing_end() && handle.append;
        // The blocks a write at `offset` into a file of `size` bytes must hold: its own, or
        // from the first to the end when it touches the block holding the end of file.
        let lock_for = |offset: u64, size: u64| {
            let first = offset / bs;
            let last = offset.saturating_add(len - 1) / bs;
            let tail = size / bs;
            if last >= tail || first > tail {
                (first.min(tail), range_lock::TO_END)
            } else {
                (first, last + 1)
            }
        };
        let hint = handle.node.size_hint.load(Ordering::Relaxed);
        let mut range = lock_for(if append { hint } else { offset }, hint);
        loop {
            let _guard = handle.node.ranges.write(range.0, range.1);
            // Ok((at, size)): written at `at` into a file of `size`; Err: the blocks it needs.
            let mut outcome = None;
            self.access.change(
                self,
                &handle.node,
                &handle.file,
                &handle.content,
                range,
                &mut |target| {
                    let extent = target.extent()?;
                    let size = target.plain_size_of(extent);
                    let at = if append { size } else { offset };
                    let needed = lock_for(at, size);
                    outcome = Some(if range.0 <= needed.0 && range.1 >= needed.1 {
                        target.write_at_extent(at, data, extent)?;
                        Ok((at, size))
                    } else {
                        Err(needed)
                    });
                    Ok(())
                },
            )?;
            match outcome.expect("run once") {
                Ok((at, size)) => {
                    handle
                        .node
                        .size_hint
                        .store(size.max(at + len), Ordering::Relaxed);
                    return Ok(data.len() as u32);
                }
                Err(needed) => range = (needed.0.min(range.0), needed.1.max(range.1)),
            }
        }
    }

    pub fn fsync(&self, fh: u64, datasync: bool) -> Result<()> {
        let handle = self.file_handle(fh)?;
        // Headers are written without fsync on create: the data is only as durable as the
        // header that holds its key, so that goes to stable storage first; so does the hole
        // map when it changed since the last fsync (a hole it does not record reads as EIO).
        let holes_changed = match &handle.content.holes {
            Some(holes) => {
                holes.flush(&handle.content.ledger_access(&handle.file))?;
                holes.take_unsynced()
            }
            None => false,
        };
        if holes_changed || !handle.node.header_durable.load(Ordering::Acquire) {
            self.volume.headers.sync(&handle.content.file_id)?;
            handle.node.header_durable.store(true, Ordering::Release);
        }
        // Once the data is durable the undo journal's copies are spent. No write may be in
        // flight meanwhile (its copy would go with them while its block is half written), so
        // a journaled file is synced holding its whole range shared: writers wait, readers
        // do not (the kernel holds the inode lock through an fsync anyway).
        self.sync_data(&handle, datasync)
    }

    /// Makes the file's data durable and ends its undo epoch; holes written over since the
    /// last time need no record in the sidecar any more.
    fn sync_data(&self, handle: &FileHandle, datasync: bool) -> Result<()> {
        let _guard = handle
            .content
            .undo
            .as_ref()
            .map(|_| handle.node.ranges.read(0, range_lock::TO_END));
        self.data_file(&handle.file, &handle.content)
            .sync(datasync)?;
        if let Some(holes) = &handle.content.holes {
            holes.data_synced();
        }
        Ok(())
    }

    pub fn release(&self, fh: u64) {
        let Some(Handle::File(handle)) = crate::sync::lock(&self.handles).remove(&fh) else {
            return;
        };
        self.release_handle_locks(handle.node.ino, fh);
        *crate::sync::lock(&handle.node.closed_stamp) = backing_stamp(&handle.file);
        if handle.node.open_handles.fetch_sub(1, Ordering::AcqRel) != 1 {
            return;
        }
        // Holes written over stay in the sidecar until their data is durable (a power cut
        // must not leave an all-zero block the map no longer records): durable now, so the
        // map a clean unmount leaves is exact and a block zeroed later reads as EIO. Only an
        // fdatasync: the undo epoch stays open (its copies still hold), and nothing reads the
        // data file, whose atime a program may have just set (a release comes after close(2)
        // has returned).
        if let Some(holes) = &handle.content.holes
            && holes.filled_unsynced()
        {
            match self.data_file(&handle.file, &handle.content).flush() {
                Ok(()) => holes.data_synced(),
                Err(e) => {
                    tracing::error!(error = %e, "could not sync a file whose writes filled holes at close")
                }
            }
        }
        if let Err(e) = self.flush_holes(&handle.file, &handle.content) {
            tracing::error!(error = %e, "could not write a hole map at close");
        }
        if let Some(undo) = &handle.content.undo {
            self.access.settle(self, &handle.node, &handle.content);
            undo.closed();
        }
        self.release_all_locks(handle.node.ino);
        if let Some(id) = crate::sync::lock(&handle.node.orphaned_header).take() {
            self.remove_header(Some(&handle.node), &id);
        }
    }

    /// fallocate(2). Mode 0 and KEEP_SIZE reserve backing space for the range (and mode 0
    /// extends the file, with zeros). PUNCH_HOLE | KEEP_SIZE and ZERO_RANGE (with or without
    /// KEEP_SIZE) make the range read as zeros, whole blocks as holes in the backing file
    /// (`DataFile::zero_range`). COLLAPSE_RANGE and INSERT_RANGE are refused (EOPNOTSUPP):
    /// every block is sealed to its position in the file, so shifting blocks would re-seal
    /// every block after the range, a rewrite of the rest of the file that the caller asked to
    /// avoid. Like a write, it drops set-id bits unless the caller keeps them.
    pub fn fallocate(
        &self,
        caller: Caller,
        fh: u64,
        offset: u64,
        length: u64,
        mode: i32,
    ) -> Result<()> {
        self.writable()?;
        let keep_size = mode & libc::FALLOC_FL_KEEP_SIZE != 0;
        let zero = match mode & !libc::FALLOC_FL_KEEP_SIZE {
            0 => false,
            libc::FALLOC_FL_PUNCH_HOLE if keep_size => true,
            libc::FALLOC_FL_ZERO_RANGE => true,
            // The kernel answers these two itself today (EOPNOTSUPP, and EINVAL for PUNCH_HOLE
            // without KEEP_SIZE) before FUSE sees them; the core says the same if one comes.
            libc::FALLOC_FL_COLLAPSE_RANGE | libc::FALLOC_FL_INSERT_RANGE => {
                return Err(VolumeError::Unsupported(
                    "fallocate COLLAPSE_RANGE/INSERT_RANGE (blocks are sealed to their position)",
                ));
            }
            libc::FALLOC_FL_PUNCH_HOLE => {
                return Err(VolumeError::InvalidArgument(
                    "fallocate PUNCH_HOLE needs KEEP_SIZE",
                ));
            }
            _ => return Err(VolumeError::Unsupported("fallocate mode")),
        };
        let handle = self.file_handle(fh)?;
        self.whole_file_change(&handle.node, &handle.file, &handle.content, |data_file| {
            if zero {
                data_file.zero_range(offset, length, keep_size)
            } else {
                data_file.allocate(offset, length, keep_size)
            }
        })?;
        if !caller.keeps_set_id() {
            self.drop_set_id(&handle.node, caller)?;
        }
        Ok(())
    }

    /// SEEK_DATA and SEEK_HOLE, mapped through the block layout. Holes are reported at block
    /// granularity; POSIX allows reporting a hole as data, never the reverse.
    ///
    /// With the writeback cache the kernel forwards SEEK_DATA/SEEK_HOLE without flushing its
    /// dirty pages, so the backing file can lag behind what the caller wrote: answer ENOSYS
    /// and the kernel falls back to its generic lseek (all data up to its own i_size), which
    /// is always right, only less precise.
    pub fn lseek(&self, fh: u64, offset: i64, whence: i32) -> Result<i64> {
        if self.tuning.writeback_cache {
            return Err(VolumeError::KernelFallback(
                "lseek with the writeback cache",
            ));
        }
        let handle = self.file_handle(fh)?;
        let offset =
            u64::try_from(offset).map_err(|_| VolumeError::InvalidArgument("negative offset"))?;
        let to = match whence {
            libc::SEEK_DATA => SeekTo::Data,
            libc::SEEK_HOLE => SeekTo::Hole,
            _ => return Err(VolumeError::InvalidArgument("lseek whence")),
        };
        let pos = self
            .data_file(&handle.file, &handle.content)
            .seek(offset, to)?;
        Ok(pos as i64)
    }
}

fn backing_stamp(file: &File) -> Option<(i64, i64, i64)> {
    let st = fstat(file.as_fd()).ok()?;
    Some((st.st_mtime, st.st_mtime_nsec, st.st_size))
}

fn is_writable(file: &File) -> bool {
    nix::fcntl::fcntl(file.as_fd(), nix::fcntl::FcntlArg::F_GETFL)
        .map(|fl| fl & libc::O_ACCMODE != libc::O_RDONLY)
        .unwrap_or(false)
}
