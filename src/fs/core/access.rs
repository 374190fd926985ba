//! How this mount reaches the blocks of data files: the one seam between a lone mount and one
//! of several mounts of a cipher dir (`-o shared`), chosen once at mount (`access_for`).
//! fs/core asks it, never the mode.
//!
//! - `Lone`: the only mount. The node's in-process block-range lock, which the caller holds,
//!   is all a read or a change needs.
//! - `Shared`: mounts on other hosts re-seal the same blocks. A change holds the same blocks
//!   of the backing file (an OFD byte-range lock, `coord::file_locks`); where the cipher dir is not
//!   on a local filesystem it acts through a description opened after that lock (a distributed
//!   filesystem's client serves an open file from what it knew at open: JuiceFS does) and
//!   flushes it before the lock goes. A read takes no lock (the common case pays nothing) and
//!   reads again under a shared lock, through a description of its own, only when a block
//!   fails authentication (another host may have been re-sealing it).

use std::fs::File;
use std::sync::Arc;

use nix::fcntl::OFlag;

use super::{FileHandle, SealFs};
use crate::fs::inodes::{Content, Node};
use crate::io::{DataFile, IoError};
use crate::volume::Result;
use crate::volume::hole_maps::{FileHoles, Writers};
use crate::volume::undo::Keeper;

/// Something done to a data file's blocks.
pub(super) type Act<'f> = dyn FnMut(&DataFile<'_>) -> std::result::Result<(), IoError> + 'f;

pub(super) trait BlockAccess: Send + Sync {
    /// Reads blocks `first..end` of `handle`'s file through `read`, which may be called twice
    /// (and must then do the same again).
    fn read(
        &self,
        fs: &SealFs,
        handle: &FileHandle,
        blocks: (u64, u64),
        read: &mut Act<'_>,
    ) -> Result<()>;

    /// Runs `change` on `file` (of `node`, with `content`) with blocks `first..end` (or to
    /// `range_lock::TO_END`) held against every other writer; the caller holds them in the
    /// node's range lock already.
    fn change(
        &self,
        fs: &SealFs,
        node: &Node,
        file: &File,
        content: &Content,
        blocks: (u64, u64),
        change: &mut Act<'_>,
    ) -> Result<()>;

    /// After a change of the whole file (truncate, allocate): what a lone mount keeps in
    /// memory of the hole map goes to its sidecar now (shared mounts write every change at
    /// once).
    fn after_whole_file_change(&self, fs: &SealFs, file: &File, content: &Content) -> Result<()>;

    /// Whether an O_APPEND write goes to the end of file as found under the lock (another host
    /// may have appended since this host's kernel last looked), served without the page cache.
    fn appends_at_backing_end(&self) -> bool;

    /// Whether this mount is the only writer of the cipher dir: what it saw stays true until it
    /// changes it (a file's cached pages, a directory without a default ACL), and a data file a
    /// crash left without its preamble may be made a new, empty one at open.
    fn sole_writer(&self) -> bool;

    /// The keeper of the hole map of a data file of format `version` (`None`: version 1).
    fn file_holes(&self, fs: &SealFs, version: u8, id: crate::io::FileId)
    -> Option<Arc<FileHoles>>;

    /// The keeper of the undo journal of data file `id`: a lone mount's epochs
    /// (`volume::undo`), or the journal every shared mount appends to (`volume::undo_shared`).
    fn file_undo(&self, fs: &SealFs, id: crate::io::FileId) -> Option<Arc<Keeper>>;

    /// At this mount's last close of a file: a shared mount that journaled writes to it
    /// settles its journal if no mount is writing it (`volume::undo_shared`).
    fn settle(&self, _fs: &SealFs, _node: &Node, _content: &Content) {}

    /// The keeper of the hole map of a data file just made.
    fn new_file_holes(&self, fs: &SealFs, id: crate::io::FileId) -> Arc<FileHoles> {
        let writers = if self.sole_writer() {
            Writers::Sole
        } else {
            Writers::Several
        };
        fs.volume.new_file_holes(id, writers)
    }
}

/// The implementation for a mount: shared or not, on a coherent (local) backing store or not.
pub(super) fn access_for(shared: bool, coherent: bool) -> Box<dyn BlockAccess> {
    if shared {
        Box::new(Shared { coherent })
    } else {
        Box::new(Lone)
    }
}

struct Lone;

impl BlockAccess for Lone {
    fn read(
        &self,
        fs: &SealFs,
        handle: &FileHandle,
        _blocks: (u64, u64),
        read: &mut Act<'_>,
    ) -> Result<()> {
        Ok(read(&fs.data_file(&handle.file, &handle.content))?)
    }

    fn change(
        &self,
        fs: &SealFs,
        _node: &Node,
        file: &File,
        content: &Content,
        _blocks: (u64, u64),
        change: &mut Act<'_>,
    ) -> Result<()> {
        Ok(change(&fs.data_file(file, content))?)
    }

    fn after_whole_file_change(&self, fs: &SealFs, file: &File, content: &Content) -> Result<()> {
        fs.flush_holes(file, content)
    }

    fn appends_at_backing_end(&self) -> bool {
        false
    }

    fn sole_writer(&self) -> bool {
        true
    }

    fn file_holes(
        &self,
        fs: &SealFs,
        version: u8,
        id: crate::io::FileId,
    ) -> Option<Arc<FileHoles>> {
        fs.volume.file_holes(version, id, Writers::Sole)
    }

    fn file_undo(&self, fs: &SealFs, id: crate::io::FileId) -> Option<Arc<Keeper>> {
        Some(Arc::new(Keeper::Lone(fs.volume.undo.keeper(id))))
    }
}

struct Shared {
    /// The cipher dir is on a local filesystem: every mount shares this host's page cache, so
    /// no description needs opening afresh or flushing for the others to see a change.
    coherent: bool,
}

impl Shared {
    /// The description reads go through: the handle's own, unless a program took a lock on
    /// the file since it was opened (and the cipher dir is not local, where every description
    /// sees every write); then one opened after that lock (see `Node::lock_epoch`), shared by
    /// the node's handles until the next lock.
    fn reader_since_lock(&self, fs: &SealFs, handle: &FileHandle) -> Result<Option<Arc<File>>> {
        let epoch = handle
            .node
            .lock_epoch
            .load(std::sync::atomic::Ordering::Acquire);
        if epoch == handle.opened_in_epoch || self.coherent {
            return Ok(None);
        }
        if let Some((at, file)) = crate::sync::lock(&handle.node.reader).as_ref()
            && *at == epoch
        {
            return Ok(Some(file.clone()));
        }
        let file = Arc::new(fs.reopen(&handle.node, OFlag::O_RDONLY)?);
        crate::volume::backing::refresh(&file);
        *crate::sync::lock(&handle.node.reader) = Some((epoch, file.clone()));
        Ok(Some(file))
    }
}

impl Shared {
    /// `change` once, under the blocks' lock: its own error apart from the lock's.
    fn change_once(
        &self,
        fs: &SealFs,
        node: &Node,
        file: &File,
        content: &Content,
        blocks: (u64, u64),
        change: &mut Act<'_>,
    ) -> Result<std::result::Result<(), IoError>> {
        let held = fs.data_file(file, content);
        let _held = held.lock_blocks(blocks.0, blocks.1, true)?;
        if self.coherent {
            return Ok(change(&held));
        }
        let fresh = fs.reopen(node, OFlag::O_RDWR)?;
        crate::volume::backing::refresh(&fresh);
        let target = fs.data_file(&fresh, content);
        Ok(change(&target).and_then(|()| target.flush()))
    }

    /// Mends and settles `node`'s undo journal (`volume::undo_shared`) holding every block of
    /// the file: waiting for writers on every mount where `mend` (a block failed with no
    /// writer on it), else only if no mount holds any block. Whether it ran.
    fn settle_journal(
        &self,
        fs: &SealFs,
        node: &Node,
        content: &Content,
        mend: bool,
    ) -> Result<bool> {
        let Some(Keeper::Shared(keeper)) = content.undo.as_deref() else {
            return Ok(false);
        };
        if fs.read_only {
            return Ok(false);
        }
        // Without touching the atime, which a program may have just set (a settle comes
        // after fsync(2) or close(2) returned), where this process may (it owns the file).
        let file = fs
            .reopen(node, OFlag::O_RDWR | OFlag::O_NOATIME)
            .or_else(|_| fs.reopen(node, OFlag::O_RDWR))?;
        if mend && keeper.fruitless(&file.metadata()?) {
            return Ok(false);
        }
        let data = fs.data_file(&file, content);
        let _all = if mend {
            data.lock_blocks(0, crate::io::range_lock::TO_END, true)?
        } else {
            match data.try_lock_whole()? {
                Some(lock) => lock,
                None => return Ok(false),
            }
        };
        if !self.coherent {
            crate::volume::backing::refresh(&file);
        }
        keeper.settle(&data, mend)?;
        Ok(true)
    }
}

impl BlockAccess for Shared {
    fn read(
        &self,
        fs: &SealFs,
        handle: &FileHandle,
        blocks: (u64, u64),
        read: &mut Act<'_>,
    ) -> Result<()> {
        let since_lock = self.reader_since_lock(fs, handle)?;
        let file = since_lock.as_deref().unwrap_or(&handle.file);
        match read(&fs.data_file(file, &handle.content)) {
            Err(IoError::Integrity { .. } | IoError::UnrecordedHole { .. }) => {}
            other => return Ok(other?),
        }
        for mended in [false, true] {
            let file = fs.reopen(&handle.node, OFlag::O_RDONLY)?;
            let locked = fs.data_file(&file, &handle.content);
            let shared = locked.lock_blocks(blocks.0, blocks.1, false)?;
            if !self.coherent {
                crate::volume::backing::refresh(&file);
            }
            match read(&locked) {
                // Failing with no writer on them: torn by a crash (mended, then read once
                // more) or tampered with (EIO).
                Err(e @ (IoError::Integrity { .. } | IoError::UnrecordedHole { .. }))
                    if !mended =>
                {
                    drop(shared);
                    if !self.settle_journal(fs, &handle.node, &handle.content, true)? {
                        return Err(e.into());
                    }
                }
                other => return Ok(other?),
            }
        }
        unreachable!("the second pass returns")
    }

    fn change(
        &self,
        fs: &SealFs,
        node: &Node,
        file: &File,
        content: &Content,
        blocks: (u64, u64),
        change: &mut Act<'_>,
    ) -> Result<()> {
        if matches!(content.undo.as_deref(), Some(Keeper::Shared(k)) if k.wants_settle()) {
            // A journal grown long (writes and no fsync): cut back if nothing else is in flight.
            self.settle_journal(fs, node, content, false)?;
        }
        match self.change_once(fs, node, file, content, blocks, change)? {
            // A block the change reads back fails with no writer on it: torn by a crash
            // (mended, then the change made once more) or tampered with (EIO).
            Err(IoError::Integrity { .. } | IoError::UnrecordedHole { .. })
                if self.settle_journal(fs, node, content, true)? =>
            {
                Ok(self.change_once(fs, node, file, content, blocks, change)??)
            }
            other => Ok(other?),
        }
    }

    fn after_whole_file_change(
        &self,
        _fs: &SealFs,
        _file: &File,
        _content: &Content,
    ) -> Result<()> {
        Ok(())
    }

    fn appends_at_backing_end(&self) -> bool {
        true
    }

    fn sole_writer(&self) -> bool {
        false
    }

    fn file_holes(
        &self,
        fs: &SealFs,
        version: u8,
        id: crate::io::FileId,
    ) -> Option<Arc<FileHoles>> {
        fs.volume.file_holes(version, id, Writers::Several)
    }

    fn file_undo(&self, fs: &SealFs, id: crate::io::FileId) -> Option<Arc<Keeper>> {
        let keeper = fs.volume.undo.shared_keeper(id, self.coherent);
        Some(Arc::new(Keeper::Shared(keeper)))
    }

    fn settle(&self, fs: &SealFs, node: &Node, content: &Content) {
        let appended = matches!(content.undo.as_deref(), Some(Keeper::Shared(k)) if k.appended());
        if appended && let Err(e) = self.settle_journal(fs, node, content, false) {
            tracing::warn!(error = %e, "could not settle an undo journal; the next close does");
        }
    }
}
