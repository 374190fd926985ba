//! The filesystem's operations as plain methods returning `Result`: everything a FUSE request
//! does, minus the reply. The `fuser` shell in `fuse.rs` only dispatches and replies.

use std::collections::HashMap;
use std::ffi::{CString, OsStr, OsString};
use std::fs::File;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use fuser::{FileAttr, FileType, TimeOrNow};
use nix::fcntl::{AT_FDCWD, AtFlags, OFlag, RenameFlags, openat, readlinkat, renameat2};
use nix::sys::stat::{
    FchmodatFlags, FileStat, Mode, SFlag, fchmodat, fstat, fstatat, mkdirat, mknodat,
};
use nix::sys::time::TimeSpec;
use nix::unistd::{Gid, Uid, UnlinkatFlags, fchownat, linkat, symlinkat, unlinkat};

use super::attr::to_attr;
use super::inodes::{Content, InodeTable, Node};
use crate::io::{DataFile, SeekTo, range_lock};
use crate::volume::{Result, Volume, VolumeError, names, proc_fd_path};

/// Who asks: the caller's credentials, for ownership of what it creates.
#[derive(Clone, Copy, Debug)]
pub struct Caller {
    pub uid: u32,
    pub gid: u32,
}

pub struct FileHandle {
    pub node: Arc<Node>,
    pub file: File,
    pub content: Arc<Content>,
}

pub struct DirEntry {
    pub ino: u64,
    pub kind: FileType,
    pub name: OsString,
}

enum Handle {
    File(Arc<FileHandle>),
    Dir(Arc<Vec<DirEntry>>),
}

/// Kernel-facing knobs, chosen at mount.
#[derive(Clone, Copy, Debug)]
pub struct Tuning {
    /// Let the kernel cache and merge writes (FUSE_WRITEBACK_CACHE).
    pub writeback_cache: bool,
}

impl Default for Tuning {
    fn default() -> Self {
        Tuning {
            writeback_cache: true,
        }
    }
}

pub struct SealFs {
    pub volume: Volume,
    pub tuning: Tuning,
    pub inodes: Arc<InodeTable>,
    handles: Mutex<HashMap<u64, Handle>>,
    next_handle: AtomicU64,
    read_only: bool,
    /// Only root can give files to their caller; others create files as themselves.
    chown_new_files: bool,
    /// The daemon's own ids: a caller with these already owns what the daemon creates.
    own_ids: (u32, u32),
}

fn o_path(dir: BorrowedFd<'_>, name: &str) -> Result<OwnedFd> {
    Ok(openat(
        dir,
        name,
        OFlag::O_PATH | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::empty(),
    )?)
}

/// A readable fd on a directory node (its own fd is O_PATH).
fn open_dir(node: &Node) -> Result<OwnedFd> {
    Ok(openat(
        node.fd.as_fd(),
        ".",
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )?)
}

fn stat_fd(fd: BorrowedFd<'_>) -> Result<FileStat> {
    Ok(fstatat(
        fd,
        "",
        AtFlags::AT_EMPTY_PATH | AtFlags::AT_SYMLINK_NOFOLLOW,
    )?)
}

fn time_spec(t: Option<TimeOrNow>) -> TimeSpec {
    match t {
        None => TimeSpec::UTIME_OMIT,
        Some(TimeOrNow::Now) => TimeSpec::UTIME_NOW,
        Some(TimeOrNow::SpecificTime(t)) => {
            let d = t.duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
            TimeSpec::new(d.as_secs() as i64, d.subsec_nanos() as i64)
        }
    }
}

impl SealFs {
    pub fn new(volume: Volume, read_only: bool, tuning: Tuning) -> Result<Self> {
        let root = openat(
            volume.root.as_fd(),
            ".",
            OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )?;
        let stat = fstat(root.as_fd())?;
        Ok(SealFs {
            inodes: Arc::new(InodeTable::new(root, &stat)),
            volume,
            tuning,
            handles: Mutex::new(HashMap::new()),
            next_handle: AtomicU64::new(1),
            read_only,
            chown_new_files: nix::unistd::geteuid().is_root(),
            own_ids: (
                nix::unistd::geteuid().as_raw(),
                nix::unistd::getegid().as_raw(),
            ),
        })
    }

    fn node(&self, ino: u64) -> Result<Arc<Node>> {
        self.inodes.get(ino).ok_or(VolumeError::StaleNode)
    }

    fn writable(&self) -> Result<()> {
        if self.read_only {
            Err(VolumeError::ReadOnly)
        } else {
            Ok(())
        }
    }

    fn attr_of(&self, stat: &FileStat) -> FileAttr {
        to_attr(stat, &self.inodes, &self.volume.layout)
    }

    /// Looks up `entry` in `parent`, the backing name of `name`, and counts a kernel lookup.
    fn entry_of(&self, parent: &Node, name: &OsStr, entry: &str) -> Result<FileAttr> {
        let fd = o_path(parent.fd.as_fd(), entry)?;
        let stat = stat_fd(fd.as_fd())?;
        self.inodes.remember(fd, &stat, parent.ino, name);
        Ok(self.attr_of(&stat))
    }

    pub fn lookup(&self, parent: u64, name: &OsStr) -> Result<FileAttr> {
        let parent = self.node(parent)?;
        let backing = self.volume.encrypt_name(name)?;
        self.entry_of(&parent, name, backing.entry())
    }

    pub fn forget(&self, ino: u64, count: u64) {
        self.inodes.forget(ino, count);
    }

    pub fn getattr(&self, ino: u64) -> Result<FileAttr> {
        let node = self.node(ino)?;
        Ok(self.attr_of(&stat_fd(node.fd.as_fd())?))
    }

    /// Gives a new inode to its caller (when running as root), as ext4 would: the group of a
    /// set-group-id directory wins over the caller's.
    fn give_to_caller(&self, dir: BorrowedFd<'_>, entry: &str, caller: Caller) -> Result<()> {
        // The kernel gave the new inode the daemon's ids (or a setgid directory's group), which
        // are the caller's own: nothing to change, and no stat of the directory.
        if !self.chown_new_files || (caller.uid, caller.gid) == self.own_ids {
            return Ok(());
        }
        let dir_stat = stat_fd(dir)?;
        let gid = if dir_stat.st_mode & libc::S_ISGID != 0 {
            dir_stat.st_gid
        } else {
            caller.gid
        };
        fchownat(
            dir,
            entry,
            Some(Uid::from_raw(caller.uid)),
            Some(Gid::from_raw(gid)),
            AtFlags::AT_SYMLINK_NOFOLLOW,
        )?;
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    pub fn setattr(
        &self,
        ino: u64,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        fh: Option<u64>,
    ) -> Result<FileAttr> {
        self.writable()?;
        let node = self.node(ino)?;
        let path = proc_fd_path(node.fd.as_fd());
        if let Some(size) = size {
            self.truncate(&node, size, fh)?;
        }
        if let Some(mode) = mode.filter(|_| node.kind != FileType::Symlink) {
            fchmodat(
                AT_FDCWD,
                path.as_path(),
                Mode::from_bits_truncate(mode & 0o7777),
                FchmodatFlags::FollowSymlink,
            )?;
        }
        if uid.is_some() || gid.is_some() {
            fchownat(
                node.fd.as_fd(),
                "",
                uid.map(Uid::from_raw),
                gid.map(Gid::from_raw),
                AtFlags::AT_EMPTY_PATH | AtFlags::AT_SYMLINK_NOFOLLOW,
            )?;
        }
        if atime.is_some() || mtime.is_some() {
            set_times(node.fd.as_fd(), time_spec(atime), time_spec(mtime))?;
        }
        self.getattr(ino)
    }

    /// Drops set-user-id, and set-group-id where group execute is set, as the kernel does
    /// when someone without CAP_FSETID writes to or truncates a file. Under
    /// FUSE_HANDLE_KILLPRIV_V2 the kernel leaves this to the filesystem.
    pub fn drop_set_id(&self, ino: u64) -> Result<()> {
        self.drop_set_id_of(&*self.node(ino)?)
    }

    /// `drop_set_id` for the file an open handle writes.
    pub fn drop_set_id_of_handle(&self, fh: u64) -> Result<()> {
        self.drop_set_id_of(&self.file_handle(fh)?.node)
    }

    fn drop_set_id_of(&self, node: &Node) -> Result<()> {
        if node.kind != FileType::RegularFile {
            return Ok(());
        }
        let mode = stat_fd(node.fd.as_fd())?.st_mode & 0o7777;
        let mut dropped = libc::S_ISUID;
        if mode & libc::S_IXGRP != 0 {
            dropped |= libc::S_ISGID;
        }
        if mode & dropped == 0 {
            return Ok(());
        }
        fchmodat(
            AT_FDCWD,
            proc_fd_path(node.fd.as_fd()).as_path(),
            Mode::from_bits_truncate(mode & !dropped),
            FchmodatFlags::FollowSymlink,
        )?;
        Ok(())
    }

    fn truncate(&self, node: &Arc<Node>, size: u64, fh: Option<u64>) -> Result<()> {
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
        let _guard = node.ranges.write(0, range_lock::TO_END);
        self.block_file(file, &content).truncate(size)?;
        Ok(())
    }

    fn reopen(&self, node: &Node, access: OFlag) -> Result<File> {
        let path = proc_fd_path(node.fd.as_fd());
        Ok(File::from(openat(
            AT_FDCWD,
            path.as_path(),
            access | OFlag::O_CLOEXEC,
            Mode::empty(),
        )?))
    }

    /// The key of a regular file, through the key cache on every open (so cache limits
    /// apply); the file id, immutable, is read from the data file once per inode.
    fn content_of(&self, node: &Node, file: &File) -> Result<Arc<Content>> {
        let file_id = match node.file_id.get() {
            Some(id) => *id,
            None => {
                let id = crate::io::read_file_id(file)?;
                *node.file_id.get_or_init(|| id)
            }
        };
        let material = self.volume.file_key(&file_id)?;
        Ok(Arc::new(Content { file_id, material }))
    }

    fn block_file<'a>(&'a self, file: &'a File, content: &'a Content) -> DataFile<'a> {
        self.volume
            .data_file(file, &content.file_id, &content.material)
    }

    /// Answers access(2) and chdir, which the kernel asks of the filesystem only on mounts
    /// without default_permissions. There the only caller is the user who mounted, whose
    /// credentials the daemon runs with: the backing inode, whose mode and owner are the
    /// plaintext's, answers for it.
    pub fn access(&self, ino: u64, mask: i32) -> Result<()> {
        let node = self.node(ino)?;
        nix::unistd::faccessat(
            node.fd.as_fd(),
            "",
            nix::unistd::AccessFlags::from_bits_truncate(mask),
            AtFlags::AT_EMPTY_PATH | AtFlags::AT_EACCESS,
        )?;
        Ok(())
    }

    pub fn readlink(&self, ino: u64) -> Result<Vec<u8>> {
        let node = self.node(ino)?;
        let encoded = readlinkat(node.fd.as_fd(), "")?;
        names::decrypt_symlink(&self.volume.keys, &encoded)
    }

    pub fn mknod(&self, parent: u64, name: &OsStr, mode: u32, caller: Caller) -> Result<FileAttr> {
        self.writable()?;
        let kind = SFlag::from_bits_truncate(mode & libc::S_IFMT);
        if kind == SFlag::S_IFREG {
            let (attr, fh) = self.create(parent, name, mode, libc::O_RDWR, caller)?;
            self.release(fh);
            return Ok(attr);
        }
        if kind != SFlag::S_IFIFO && kind != SFlag::S_IFSOCK {
            return Err(VolumeError::Unsupported("device nodes"));
        }
        let parent = self.node(parent)?;
        let backing = self.volume.encrypt_name(name)?;
        names::write_long_sidecar(parent.fd.as_fd(), &backing)?;
        mknodat(
            parent.fd.as_fd(),
            backing.entry(),
            kind,
            Mode::from_bits_truncate(mode & 0o7777),
            0,
        )?;
        self.give_to_caller(parent.fd.as_fd(), backing.entry(), caller)?;
        self.entry_of(&parent, name, backing.entry())
    }

    pub fn mkdir(&self, parent: u64, name: &OsStr, mode: u32, caller: Caller) -> Result<FileAttr> {
        self.writable()?;
        let parent = self.node(parent)?;
        let backing = self.volume.encrypt_name(name)?;
        names::write_long_sidecar(parent.fd.as_fd(), &backing)?;
        mkdirat(
            parent.fd.as_fd(),
            backing.entry(),
            Mode::from_bits_truncate(mode & 0o7777),
        )?;
        self.give_to_caller(parent.fd.as_fd(), backing.entry(), caller)?;
        self.entry_of(&parent, name, backing.entry())
    }

    pub fn symlink(
        &self,
        parent: u64,
        name: &OsStr,
        target: &OsStr,
        caller: Caller,
    ) -> Result<FileAttr> {
        self.writable()?;
        let parent = self.node(parent)?;
        let backing = self.volume.encrypt_name(name)?;
        let encoded = names::encrypt_symlink(&self.volume.keys, target.as_bytes())?;
        names::write_long_sidecar(parent.fd.as_fd(), &backing)?;
        symlinkat(encoded.as_str(), parent.fd.as_fd(), backing.entry())?;
        self.give_to_caller(parent.fd.as_fd(), backing.entry(), caller)?;
        self.entry_of(&parent, name, backing.entry())
    }

    /// The file id of a regular file about to lose its last link, if it is one.
    fn last_link_id(&self, dir: BorrowedFd<'_>, entry: &str) -> Option<(u64, crate::format::Id)> {
        let stat = fstatat(dir, entry, AtFlags::AT_SYMLINK_NOFOLLOW).ok()?;
        if stat.st_mode & libc::S_IFMT != libc::S_IFREG || stat.st_nlink != 1 {
            return None;
        }
        let file = File::from(
            openat(
                dir,
                entry,
                OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
                Mode::empty(),
            )
            .ok()?,
        );
        Some((stat.st_ino, crate::io::read_file_id(&file).ok()?))
    }

    /// A header is removed only once its file's last link is gone and no handle is open.
    fn drop_header(&self, backing_ino: u64, file_id: crate::format::Id) {
        if let Some(node) = self.inodes.peek_backing(backing_ino)
            && node.open_handles.load(Ordering::Acquire) > 0
        {
            *crate::sync::lock(&node.orphaned_header) = Some(file_id);
            return;
        }
        if let Err(e) = self.volume.headers.remove(&file_id) {
            tracing::warn!(error = %e, "could not remove header of deleted file");
        }
    }

    pub fn unlink(&self, parent: u64, name: &OsStr) -> Result<()> {
        self.writable()?;
        let parent = self.node(parent)?;
        let backing = self.volume.encrypt_name(name)?;
        let last = self.last_link_id(parent.fd.as_fd(), backing.entry());
        unlinkat(
            parent.fd.as_fd(),
            backing.entry(),
            UnlinkatFlags::NoRemoveDir,
        )?;
        names::remove_long_sidecar(parent.fd.as_fd(), &backing);
        if let Some((ino, id)) = last {
            self.drop_header(ino, id);
        }
        Ok(())
    }

    pub fn rmdir(&self, parent: u64, name: &OsStr) -> Result<()> {
        self.writable()?;
        let parent = self.node(parent)?;
        let backing = self.volume.encrypt_name(name)?;
        unlinkat(parent.fd.as_fd(), backing.entry(), UnlinkatFlags::RemoveDir)?;
        names::remove_long_sidecar(parent.fd.as_fd(), &backing);
        Ok(())
    }

    pub fn rename(
        &self,
        parent: u64,
        name: &OsStr,
        new_parent: u64,
        new_name: &OsStr,
        flags: u32,
    ) -> Result<()> {
        self.writable()?;
        let parent = self.node(parent)?;
        let new_parent_node = self.node(new_parent)?;
        let old = self.volume.encrypt_name(name)?;
        let new = self.volume.encrypt_name(new_name)?;
        let flags =
            RenameFlags::from_bits(flags).ok_or(VolumeError::Unsupported("rename flags"))?;
        let exchange = flags.contains(RenameFlags::RENAME_EXCHANGE);
        let same = parent.ino == new_parent_node.ino && old == new;
        let replaced = if exchange || same {
            None
        } else {
            self.last_link_id(new_parent_node.fd.as_fd(), new.entry())
        };
        names::write_long_sidecar(new_parent_node.fd.as_fd(), &new)?;
        renameat2(
            parent.fd.as_fd(),
            old.entry(),
            new_parent_node.fd.as_fd(),
            new.entry(),
            flags,
        )?;
        if !exchange && !same {
            names::remove_long_sidecar(parent.fd.as_fd(), &old);
        }
        if let Some((ino, id)) = replaced {
            self.drop_header(ino, id);
        }
        // The moved node is now known to the kernel under its new name.
        if let Ok(st) = fstatat(
            new_parent_node.fd.as_fd(),
            new.entry(),
            AtFlags::AT_SYMLINK_NOFOLLOW,
        ) {
            self.inodes.moved(st.st_ino, new_parent_node.ino, new_name);
        }
        Ok(())
    }

    pub fn link(&self, ino: u64, new_parent: u64, new_name: &OsStr) -> Result<FileAttr> {
        self.writable()?;
        let node = self.node(ino)?;
        let parent = self.node(new_parent)?;
        let backing = self.volume.encrypt_name(new_name)?;
        names::write_long_sidecar(parent.fd.as_fd(), &backing)?;
        let linked = linkat(
            node.fd.as_fd(),
            "",
            parent.fd.as_fd(),
            backing.entry(),
            AtFlags::AT_EMPTY_PATH,
        );
        if let Err(nix::Error::ENOENT | nix::Error::EPERM) = linked {
            // AT_EMPTY_PATH needs CAP_DAC_READ_SEARCH; the /proc link works for the unprivileged.
            let path = proc_fd_path(node.fd.as_fd());
            linkat(
                AT_FDCWD,
                path.as_path(),
                parent.fd.as_fd(),
                backing.entry(),
                AtFlags::AT_SYMLINK_FOLLOW,
            )?;
        } else {
            linked?;
        }
        self.entry_of(&parent, new_name, backing.entry())
    }

    fn add_handle(&self, handle: Handle) -> u64 {
        let fh = self.next_handle.fetch_add(1, Ordering::Relaxed);
        crate::sync::lock(&self.handles).insert(fh, handle);
        fh
    }

    fn file_handle(&self, fh: u64) -> Result<Arc<FileHandle>> {
        match crate::sync::lock(&self.handles).get(&fh) {
            Some(Handle::File(h)) => Ok(h.clone()),
            _ => Err(VolumeError::BadHandle),
        }
    }

    fn open_file_handle(&self, node: Arc<Node>, file: File) -> Result<u64> {
        let content = self.content_of(&node, &file)?;
        node.open_handles.fetch_add(1, Ordering::AcqRel);
        Ok(self.add_handle(Handle::File(Arc::new(FileHandle {
            node,
            file,
            content,
        }))))
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
        let file = self.reopen(&node, access | passed)?;
        let keep_cache = {
            let stamp = *crate::sync::lock(&node.closed_stamp);
            stamp.is_some() && stamp == backing_stamp(&file)
        };
        let truncate = flags & libc::O_TRUNC != 0 && write;
        let fh = self.open_file_handle(node.clone(), file)?;
        if truncate && let Err(e) = self.truncate(&node, 0, Some(fh)) {
            self.release(fh);
            return Err(e);
        }
        Ok((fh, keep_cache && !truncate))
    }

    pub fn create(
        &self,
        parent: u64,
        name: &OsStr,
        mode: u32,
        _flags: i32,
        caller: Caller,
    ) -> Result<(FileAttr, u64)> {
        self.writable()?;
        let parent = self.node(parent)?;
        let backing = self.volume.encrypt_name(name)?;
        let (file, file_id, material) =
            self.volume
                .create_data_file(parent.fd.as_fd(), &backing, mode)?;
        self.give_to_caller(parent.fd.as_fd(), backing.entry(), caller)?;
        let fd = o_path(parent.fd.as_fd(), backing.entry())?;
        let stat = stat_fd(fd.as_fd())?;
        let node = self.inodes.remember(fd, &stat, parent.ino, name);
        let _ = node.file_id.set(file_id);
        node.open_handles.fetch_add(1, Ordering::AcqRel);
        let content = Arc::new(Content { file_id, material });
        let fh = self.add_handle(Handle::File(Arc::new(FileHandle {
            node,
            file,
            content,
        })));
        Ok((self.attr_of(&stat), fh))
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
        Ok(self.block_file(&handle.file, &handle.content).read_with(
            offset,
            size as usize,
            reply,
        )?)
    }

    /// Writes inside the file lock only their blocks; a write that touches the block holding
    /// the end of file (or lies past it) locks from there to the end, since it changes the
    /// size and may re-seal that block. Which range that is comes from the size the last write
    /// left, checked under the lock (and widened when it was stale): one size lookup per write.
    pub fn write(&self, fh: u64, offset: u64, data: &[u8]) -> Result<u32> {
        self.writable()?;
        if data.is_empty() {
            return Ok(0);
        }
        let handle = self.file_handle(fh)?;
        let bf = self.block_file(&handle.file, &handle.content);
        let bs = self.volume.layout.block_size();
        let first = offset / bs;
        let last = offset.saturating_add(data.len() as u64 - 1) / bs;
        let lock_for = |size: u64| {
            let tail = size / bs;
            if last >= tail || first > tail {
                (first.min(tail), range_lock::TO_END)
            } else {
                (first, last + 1)
            }
        };
        let mut range = lock_for(handle.node.size_hint.load(Ordering::Relaxed));
        loop {
            let _guard = handle.node.ranges.write(range.0, range.1);
            let extent = bf.extent()?;
            let size = self.volume.layout.plain_size(extent.len);
            let needed = lock_for(size);
            if range.0 <= needed.0 && range.1 >= needed.1 {
                bf.write_at_extent(offset, data, extent)?;
                let end = offset + data.len() as u64;
                handle
                    .node
                    .size_hint
                    .store(size.max(end), Ordering::Relaxed);
                return Ok(data.len() as u32);
            }
            range = (needed.0.min(range.0), needed.1.max(range.1));
        }
    }

    pub fn fsync(&self, fh: u64, datasync: bool) -> Result<()> {
        let handle = self.file_handle(fh)?;
        // Headers are written without fsync on create: the data is only as durable as the
        // header that holds its key, so that goes to stable storage first.
        if !handle.node.header_durable.load(Ordering::Acquire) {
            self.volume.headers.sync(&handle.content.file_id)?;
            handle.node.header_durable.store(true, Ordering::Release);
        }
        if datasync {
            handle.file.sync_data()?;
        } else {
            handle.file.sync_all()?;
        }
        Ok(())
    }

    pub fn release(&self, fh: u64) {
        let Some(Handle::File(handle)) = crate::sync::lock(&self.handles).remove(&fh) else {
            return;
        };
        *crate::sync::lock(&handle.node.closed_stamp) = backing_stamp(&handle.file);
        if handle.node.open_handles.fetch_sub(1, Ordering::AcqRel) == 1
            && let Some(id) = crate::sync::lock(&handle.node.orphaned_header).take()
            && let Err(e) = self.volume.headers.remove(&id)
        {
            tracing::warn!(error = %e, "could not remove header of deleted file");
        }
    }

    pub fn opendir(&self, ino: u64) -> Result<u64> {
        let node = self.node(ino)?;
        let fd = open_dir(&node)?;
        let mut entries = vec![
            DirEntry {
                ino: node.ino,
                kind: FileType::Directory,
                name: ".".into(),
            },
            DirEntry {
                ino: node.ino,
                kind: FileType::Directory,
                name: "..".into(),
            },
        ];
        let mut dir = nix::dir::Dir::from_fd(fd)?;
        let dir_fd = unsafe { BorrowedFd::borrow_raw(dir.as_raw_fd()) };
        for entry in dir.iter() {
            let entry = entry?;
            let raw = OsStr::from_bytes(entry.file_name().to_bytes());
            if raw == "." || raw == ".." {
                continue;
            }
            let name = match names::decrypt_entry(&self.volume.keys, dir_fd, raw) {
                Ok(Some(name)) => name,
                Ok(None) => continue,
                Err(e) => {
                    tracing::error!(entry = ?raw, error = %e, "skipping a directory entry whose name does not decrypt");
                    continue;
                }
            };
            let kind = match entry.file_type() {
                Some(t) => file_type(t),
                None => match fstatat(dir_fd, raw, AtFlags::AT_SYMLINK_NOFOLLOW) {
                    Ok(st) => super::inodes::file_type(st.st_mode),
                    Err(_) => continue,
                },
            };
            entries.push(DirEntry {
                ino: self.inodes.node_id(entry.ino()),
                kind,
                name,
            });
        }
        Ok(self.add_handle(Handle::Dir(Arc::new(entries))))
    }

    pub fn dir_entries(&self, fh: u64) -> Result<Arc<Vec<DirEntry>>> {
        match crate::sync::lock(&self.handles).get(&fh) {
            Some(Handle::Dir(entries)) => Ok(entries.clone()),
            _ => Err(VolumeError::BadHandle),
        }
    }

    pub fn releasedir(&self, fh: u64) {
        crate::sync::lock(&self.handles).remove(&fh);
    }

    pub fn fsyncdir(&self, ino: u64) -> Result<()> {
        let node = self.node(ino)?;
        let fd = open_dir(&node)?;
        File::from(fd).sync_all()?;
        Ok(())
    }

    pub fn statfs(&self) -> Result<nix::sys::statvfs::Statvfs> {
        Ok(nix::sys::statvfs::fstatvfs(&self.volume.root)?)
    }

    fn xattr_path(&self, ino: u64) -> Result<(Arc<Node>, CString)> {
        let node = self.node(ino)?;
        if node.kind == FileType::Symlink {
            return Err(VolumeError::Unsupported("extended attributes on symlinks"));
        }
        let path = proc_fd_path(node.fd.as_fd());
        let c = CString::new(path.as_os_str().as_bytes()).expect("no NUL in /proc path");
        Ok((node, c))
    }

    pub fn setxattr(&self, ino: u64, name: &OsStr, value: &[u8], flags: i32) -> Result<()> {
        self.writable()?;
        let (_node, path) = self.xattr_path(ino)?;
        let backing = names::encrypt_xattr_name(&self.volume.keys, name)?;
        let sealed = names::seal_xattr_value(&self.volume.keys, &backing, value)?;
        let cname = CString::new(backing).map_err(|_| VolumeError::InvalidName)?;
        let rc = unsafe {
            libc::setxattr(
                path.as_ptr(),
                cname.as_ptr(),
                sealed.as_ptr().cast(),
                sealed.len(),
                flags,
            )
        };
        if rc != 0 {
            return Err(std::io::Error::last_os_error().into());
        }
        Ok(())
    }

    pub fn getxattr(&self, ino: u64, name: &OsStr) -> Result<Vec<u8>> {
        let (_node, path) = self.xattr_path(ino)?;
        let backing = match names::encrypt_xattr_name(&self.volume.keys, name) {
            Err(VolumeError::Unsupported(_)) => {
                return Err(VolumeError::NoAttribute);
            }
            other => other?,
        };
        let cname = CString::new(backing.clone()).map_err(|_| VolumeError::InvalidName)?;
        let sealed = read_xattr(|buf| unsafe {
            libc::getxattr(
                path.as_ptr(),
                cname.as_ptr(),
                buf.as_mut_ptr().cast(),
                buf.len(),
            )
        })?;
        names::open_xattr_value(&self.volume.keys, &backing, &sealed)
    }

    pub fn listxattr(&self, ino: u64) -> Result<Vec<u8>> {
        let (_node, path) = self.xattr_path(ino)?;
        let raw = read_xattr(|buf| unsafe {
            libc::listxattr(path.as_ptr(), buf.as_mut_ptr().cast(), buf.len())
        })?;
        let mut out = Vec::new();
        for backing in raw.split(|&b| b == 0).filter(|n| !n.is_empty()) {
            if let Some(plain) = names::decrypt_xattr_name(&self.volume.keys, backing) {
                out.extend_from_slice(&plain);
                out.push(0);
            }
        }
        Ok(out)
    }

    pub fn removexattr(&self, ino: u64, name: &OsStr) -> Result<()> {
        self.writable()?;
        let (_node, path) = self.xattr_path(ino)?;
        let backing = match names::encrypt_xattr_name(&self.volume.keys, name) {
            Err(VolumeError::Unsupported(_)) => {
                return Err(VolumeError::NoAttribute);
            }
            other => other?,
        };
        let cname = CString::new(backing).map_err(|_| VolumeError::InvalidName)?;
        if unsafe { libc::removexattr(path.as_ptr(), cname.as_ptr()) } != 0 {
            return Err(std::io::Error::last_os_error().into());
        }
        Ok(())
    }

    /// Mode 0 and KEEP_SIZE reserve backing space for the range (and mode 0 extends the
    /// file, with zeros); the other modes are not supported yet.
    pub fn fallocate(&self, fh: u64, offset: u64, length: u64, mode: i32) -> Result<()> {
        self.writable()?;
        if mode & !libc::FALLOC_FL_KEEP_SIZE != 0 {
            return Err(VolumeError::Unsupported("fallocate mode"));
        }
        let handle = self.file_handle(fh)?;
        let _guard = handle.node.ranges.write(0, range_lock::TO_END);
        self.block_file(&handle.file, &handle.content).allocate(
            offset,
            length,
            mode & libc::FALLOC_FL_KEEP_SIZE != 0,
        )?;
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
            .block_file(&handle.file, &handle.content)
            .seek(offset, to)?;
        Ok(pos as i64)
    }
}

/// Sets times on whatever an O_PATH fd refers to, symlinks included (utimensat with
/// AT_EMPTY_PATH; nix has no flag for it).
fn set_times(fd: BorrowedFd<'_>, atime: TimeSpec, mtime: TimeSpec) -> Result<()> {
    let times = [*atime.as_ref(), *mtime.as_ref()];
    let flags = libc::AT_EMPTY_PATH | libc::AT_SYMLINK_NOFOLLOW;
    // SAFETY: a valid fd, a NUL-terminated empty path and two timespecs.
    let rc = unsafe { libc::utimensat(fd.as_raw_fd(), c"".as_ptr(), times.as_ptr(), flags) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error().into());
    }
    Ok(())
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

fn file_type(t: nix::dir::Type) -> FileType {
    use nix::dir::Type;
    match t {
        Type::Directory => FileType::Directory,
        Type::Symlink => FileType::Symlink,
        Type::Fifo => FileType::NamedPipe,
        Type::Socket => FileType::Socket,
        Type::CharacterDevice => FileType::CharDevice,
        Type::BlockDevice => FileType::BlockDevice,
        Type::File => FileType::RegularFile,
    }
}

/// Calls a size-probing xattr syscall twice: once for the size, once to read.
fn read_xattr(call: impl Fn(&mut [u8]) -> isize) -> Result<Vec<u8>> {
    loop {
        let size = call(&mut []);
        if size < 0 {
            return Err(std::io::Error::last_os_error().into());
        }
        let mut buf = vec![0u8; size as usize];
        let got = call(&mut buf);
        if got < 0 {
            let err = std::io::Error::last_os_error();
            if err.raw_os_error() == Some(libc::ERANGE) {
                continue;
            }
            return Err(err.into());
        }
        buf.truncate(got as usize);
        return Ok(buf);
    }
}
