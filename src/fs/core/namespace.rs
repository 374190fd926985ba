//! The namespace: looking names up, creating files, directories, symlinks and special files
//! owned by their caller, linking, renaming and removing entries (and the headers of files
//! whose last link goes).

use std::ffi::OsStr;
use std::fs::File;
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::ffi::OsStrExt;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use fuser::{FileAttr, FileType};
use nix::fcntl::{AT_FDCWD, AtFlags, OFlag, RenameFlags, openat, readlinkat, renameat2};
use nix::sys::stat::{Mode, SFlag, fstatat, mkdirat, mknodat};
use nix::unistd::{Gid, Uid, UnlinkatFlags, fchownat, linkat, symlinkat, unlinkat};

use super::{Caller, FileHandle, Handle, SealFs, o_path, stat_fd};
use crate::fs::inodes::{Content, Node, ROOT_INO};
use crate::io::FileId;
use crate::keys::NameKeys;
use crate::volume::long_links::{LONG_TARGET_LEN, LongTarget};
use crate::volume::{Result, VolumeError, names, proc_fd_path};

/// What an entry's last link takes with it.
pub(super) enum LastLink {
    DataFile(u64, FileId),
    LongSymlink(LongTarget),
}

/// What an operation making an entry needs (`SealFs::keys_for_new_entry`): the directory's
/// policy, its name keys, and its lock, held until the entry is made.
pub(super) type NewEntryKeys = (
    u32,
    Arc<NameKeys>,
    Option<crate::coord::maintenance::DirectoryLock>,
);

impl SealFs {
    /// Looks up `entry` in `parent` (of key policy `policy`), the backing name of `name`, and
    /// counts a kernel lookup.
    pub(super) fn entry_of(
        &self,
        parent: &Node,
        policy: u32,
        name: &OsStr,
        entry: &str,
    ) -> Result<FileAttr> {
        let fd = o_path(parent.fd.as_fd(), entry)?;
        let stat = stat_fd(fd.as_fd())?;
        let attr = self.attr_of(fd.as_fd(), &stat);
        let node = self.inodes.remember(fd, &stat, parent.ino, name);
        self.note_policy(&node, policy)?;
        if self.mend_if_pending(&node)? {
            return Ok(self.attr_of(node.fd.as_fd(), &stat_fd(node.fd.as_fd())?));
        }
        Ok(attr)
    }

    pub fn lookup(&self, parent: u64, name: &OsStr) -> Result<FileAttr> {
        // Only file handles make the kernel ask for these (the VFS answers them itself).
        match name.as_bytes() {
            b"." => return self.lookup_self(parent),
            b".." => return self.lookup_parent(parent),
            _ => {}
        }
        let parent = self.node(parent)?;
        let lookup = || {
            let (policy, keys) = self.dir_keys(&parent)?;
            let backing = names::encrypt_name(&keys, name)?;
            self.entry_of(&parent, policy, name, backing.entry())
        };
        match lookup() {
            // Not found under the keys this mount takes the directory's to be: a policy set on
            // it a moment ago (by another process or host) may have changed them. One look at
            // the config (an fstatat) tells.
            Err(e) if is_not_found(&e) && self.policies_moved() => lookup(),
            found => found,
        }
    }

    /// Follows the config; whether the set of policies (or the config, so maybe a marker)
    /// changed since this mount last looked.
    pub(super) fn policies_moved(&self) -> bool {
        let before = self.volume.tenants.generation();
        self.volume.follow_config();
        self.volume.tenants.generation() != before
    }

    /// For operations that make an entry in `dir`: the directory locked against a policy set
    /// on it or removed from it (`maintenance::lock_directory`), the config followed, and the
    /// directory's policy found from its marker read afresh under the lock, so that a policy
    /// set a moment ago, on this host or another, applies at once. The caller keeps what this
    /// returns (and so the lock) until its entry is made.
    pub(super) fn keys_for_new_entry(&self, dir: &Node) -> Result<NewEntryKeys> {
        // The root never takes a policy; creates there need no lock, but while this mount
        // mends what a crash left (its sweep of unused long-name sidecars locks a directory).
        let lock = if dir.ino == ROOT_INO && !self.volume.undo.mending() {
            None
        } else {
            crate::coord::maintenance::lock_directory(
                self.volume.root.as_fd(),
                dir.fd.as_fd(),
                false,
            )?
        };
        self.volume.follow_config();
        let policy = self.policy_of_afresh(dir)?;
        Ok((policy, self.volume.name_keys(policy)?, lock))
    }

    pub fn forget(&self, ino: u64, count: u64) {
        self.inodes.forget(ino, count);
    }

    /// Gives a new inode to its caller (when running as root), as ext4 would: the group of a
    /// set-group-id directory wins over the caller's.
    pub(super) fn give_to_caller(
        &self,
        dir: BorrowedFd<'_>,
        entry: &str,
        caller: Caller,
    ) -> Result<()> {
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

    /// Regular files (as `create`), fifos, sockets and device nodes. A device node is a device
    /// node in the cipher dir too, with its rdev (major and minor are metadata, like mode and
    /// owner; only root may make one: the backing mknod says EPERM otherwise). The FUSE mount
    /// is `nodev` unless mounted with `dev`, so the kernel opens none through it by default.
    pub fn mknod(
        &self,
        parent: u64,
        name: &OsStr,
        mode: u32,
        rdev: u32,
        caller: Caller,
    ) -> Result<FileAttr> {
        self.writable()?;
        let kind = SFlag::from_bits_truncate(mode & libc::S_IFMT);
        if kind == SFlag::S_IFREG {
            let (attr, fh) = self.create(parent, name, mode, libc::O_RDWR, caller)?;
            self.release(fh);
            return Ok(attr);
        }
        let rdev = match kind {
            SFlag::S_IFIFO | SFlag::S_IFSOCK => 0,
            // FUSE passes the kernel's encoding, which is glibc's for 32-bit device numbers.
            SFlag::S_IFCHR | SFlag::S_IFBLK => libc::dev_t::from(rdev),
            _ => return Err(VolumeError::InvalidArgument("mknod file type")),
        };
        let parent = self.node(parent)?;
        let (policy, keys, _lock) = self.keys_for_new_entry(&parent)?;
        let backing = names::encrypt_name(&keys, name)?;
        let inherited = self.inherit_acls(&parent, &keys, mode, file_type(kind), caller)?;
        names::write_long_sidecar(parent.fd.as_fd(), &backing)?;
        mknodat(
            parent.fd.as_fd(),
            backing.entry(),
            kind,
            Mode::from_bits_truncate(inherited.mode & 0o7777),
            rdev,
        )?;
        self.give_to_caller(parent.fd.as_fd(), backing.entry(), caller)?;
        let fd = o_path(parent.fd.as_fd(), backing.entry())?;
        self.give_acls(&keys, fd.as_fd(), &inherited)?;
        self.entry_of(&parent, policy, name, backing.entry())
    }

    pub fn mkdir(&self, parent: u64, name: &OsStr, mode: u32, caller: Caller) -> Result<FileAttr> {
        self.writable()?;
        let parent = self.node(parent)?;
        let (policy, keys, _lock) = self.keys_for_new_entry(&parent)?;
        let backing = names::encrypt_name(&keys, name)?;
        let inherited = self.inherit_acls(&parent, &keys, mode, FileType::Directory, caller)?;
        names::write_long_sidecar(parent.fd.as_fd(), &backing)?;
        mkdirat(
            parent.fd.as_fd(),
            backing.entry(),
            Mode::from_bits_truncate(inherited.mode & 0o7777),
        )?;
        self.give_to_caller(parent.fd.as_fd(), backing.entry(), caller)?;
        let fd = o_path(parent.fd.as_fd(), backing.entry())?;
        self.give_acls(&keys, fd.as_fd(), &inherited)?;
        self.entry_of(&parent, policy, name, backing.entry())
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
        let (policy, keys, _lock) = self.keys_for_new_entry(&parent)?;
        let backing = names::encrypt_name(&keys, name)?;
        let encoded = self.volume.seal_symlink(&keys, target.as_bytes())?;
        let long = LongTarget::decode(encoded.as_bytes());
        let made = names::write_long_sidecar(parent.fd.as_fd(), &backing).and_then(|()| {
            Ok(symlinkat(
                encoded.as_str(),
                parent.fd.as_fd(),
                backing.entry(),
            )?)
        });
        if let (Err(_), Some(long)) = (&made, long) {
            crate::volume::long_links::remove(self.volume.root.as_fd(), &long);
        }
        made?;
        self.give_to_caller(parent.fd.as_fd(), backing.entry(), caller)?;
        self.entry_of(&parent, policy, name, backing.entry())
    }

    /// What goes with entry `entry` if it is the last link of its inode: a data file's header
    /// (by backing inode and file id) or a long symlink target's sidecar.
    pub(super) fn last_link(&self, dir: BorrowedFd<'_>, entry: &str) -> Option<LastLink> {
        let stat = fstatat(dir, entry, AtFlags::AT_SYMLINK_NOFOLLOW).ok()?;
        if stat.st_nlink != 1 {
            return None;
        }
        match stat.st_mode & libc::S_IFMT {
            libc::S_IFREG => {}
            libc::S_IFLNK if stat.st_size as u64 == LONG_TARGET_LEN => {
                let target = readlinkat(dir, entry).ok()?;
                return LongTarget::decode(target.as_bytes()).map(LastLink::LongSymlink);
            }
            _ => return None,
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
        Some(LastLink::DataFile(
            stat.st_ino,
            crate::io::read_file_id(&file).ok()?,
        ))
    }

    /// Drops what `last_link` found, once the link is gone.
    fn drop_last_link(&self, last: Option<LastLink>) {
        match last {
            Some(LastLink::DataFile(ino, id)) => self.drop_header(ino, id),
            Some(LastLink::LongSymlink(long)) => {
                crate::volume::long_links::remove(self.volume.root.as_fd(), &long)
            }
            None => {}
        }
    }

    /// A header is removed only once its file's last link is gone and no handle is open.
    pub(super) fn drop_header(&self, backing_ino: u64, file_id: FileId) {
        let node = self.inodes.peek_backing(backing_ino);
        if let Some(node) = &node
            && node.open_handles.load(Ordering::Acquire) > 0
        {
            *crate::sync::lock(&node.orphaned_header) = Some(file_id);
            return;
        }
        self.remove_header(node.as_deref(), &file_id);
    }

    /// Removes the header (and hole map) of a file whose last link and last handle are gone.
    /// The node's hole keeper is told first, so that a close finishing on another thread
    /// cannot write the map back after it was removed.
    pub(super) fn remove_header(&self, node: Option<&Node>, file_id: &FileId) {
        if let Some(Some(holes)) = node.and_then(|n| n.holes.get()) {
            holes.discard();
        }
        if let Some(Some(undo)) = node.and_then(|n| n.undo.get()) {
            undo.discard();
        }
        if let Err(e) = self.volume.headers.remove(file_id) {
            tracing::warn!(error = %e, "could not remove header of deleted file");
        }
    }

    pub fn unlink(&self, parent: u64, name: &OsStr) -> Result<()> {
        self.writable()?;
        let parent = self.node(parent)?;
        let (_, keys) = self.dir_keys(&parent)?;
        let backing = names::encrypt_name(&keys, name)?;
        let last = self.last_link(parent.fd.as_fd(), backing.entry());
        unlinkat(
            parent.fd.as_fd(),
            backing.entry(),
            UnlinkatFlags::NoRemoveDir,
        )?;
        names::remove_long_sidecar(parent.fd.as_fd(), &backing);
        self.drop_last_link(last);
        Ok(())
    }

    pub fn rmdir(&self, parent: u64, name: &OsStr) -> Result<()> {
        self.writable()?;
        let parent = self.node(parent)?;
        let (_, keys) = self.dir_keys(&parent)?;
        let backing = names::encrypt_name(&keys, name)?;
        match unlinkat(parent.fd.as_fd(), backing.entry(), UnlinkatFlags::RemoveDir) {
            // An empty tenant directory still holds its policy marker.
            Err(nix::Error::ENOTEMPTY)
                if crate::volume::policy_dirs::rmdir_policy_root(
                    self.volume.root.as_fd(),
                    parent.fd.as_fd(),
                    backing.entry(),
                )? => {}
            other => other?,
        }
        names::remove_long_sidecar(parent.fd.as_fd(), &backing);
        Ok(())
    }

    /// A rename between directories of two key policies is refused with EXDEV, so `mv`
    /// copies and the copy is the new tenant's: an entry's file key, symlink target and the
    /// names beneath it are its tenant's. The one exception is a directory carrying its own
    /// marker: its policy goes with it, and only its name (under its parent's keys) changes.
    fn same_policy_for_move(
        &self,
        parent: &Node,
        old: &crate::volume::names::BackingName,
        from: u32,
        to: u32,
    ) -> Result<()> {
        if from == to {
            return Ok(());
        }
        let fd = o_path(parent.fd.as_fd(), old.entry())?;
        let stat = stat_fd(fd.as_fd())?;
        let carries_own = stat.st_mode & libc::S_IFMT == libc::S_IFDIR
            && crate::volume::policy_dirs::read_marker(fd.as_fd())?.is_some();
        if carries_own {
            Ok(())
        } else {
            Err(VolumeError::CrossPolicy)
        }
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
        let (from_policy, from_keys) = self.dir_keys(&parent)?;
        let (to_policy, to_keys, _lock) = self.keys_for_new_entry(&new_parent_node)?;
        let old = names::encrypt_name(&from_keys, name)?;
        let new = names::encrypt_name(&to_keys, new_name)?;
        self.same_policy_for_move(&parent, &old, from_policy, to_policy)?;
        let flags =
            RenameFlags::from_bits(flags).ok_or(VolumeError::Unsupported("rename flags"))?;
        let exchange = flags.contains(RenameFlags::RENAME_EXCHANGE);
        if exchange && from_policy != to_policy {
            return Err(VolumeError::CrossPolicy);
        }
        let same = parent.ino == new_parent_node.ino && old == new;
        let replaced = if exchange || same {
            None
        } else {
            self.last_link(new_parent_node.fd.as_fd(), new.entry())
        };
        names::write_long_sidecar(new_parent_node.fd.as_fd(), &new)?;
        let exists = |dir: &Node, entry: &str| {
            fstatat(dir.fd.as_fd(), entry, AtFlags::AT_SYMLINK_NOFOLLOW).is_ok()
        };
        // Counted before and after: a sweep walking across it keeps what it cannot place.
        self.volume.undo.entry_moved();
        let renamed = renameat2(
            parent.fd.as_fd(),
            old.entry(),
            new_parent_node.fd.as_fd(),
            new.entry(),
            flags,
        );
        self.volume.undo.entry_moved();
        if let Err(e) = renamed {
            if !exists(&new_parent_node, new.entry()) {
                names::remove_long_sidecar(new_parent_node.fd.as_fd(), &new);
            }
            return Err(e.into());
        }
        // The old name's sidecar goes with the old name, and only then: RENAME_WHITEOUT leaves
        // a whiteout under it, and a rename between two links of one inode changes nothing.
        if !exchange && !same && !exists(&parent, old.entry()) {
            names::remove_long_sidecar(parent.fd.as_fd(), &old);
        }
        self.drop_last_link(replaced);
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
        let (policy, keys, _lock) = self.keys_for_new_entry(&parent)?;
        if self.policy_of(&node)? != policy {
            // A file's key is its tenant's; a link elsewhere would put it under another's.
            return Err(VolumeError::CrossPolicy);
        }
        let backing = names::encrypt_name(&keys, new_name)?;
        names::write_long_sidecar(parent.fd.as_fd(), &backing)?;
        self.volume.undo.entry_moved();
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
        self.volume.undo.entry_moved();
        self.entry_of(&parent, policy, new_name, backing.entry())
    }

    /// Creates and opens a regular file: a new data file with its own key and header.
    pub fn create(
        &self,
        parent: u64,
        name: &OsStr,
        mode: u32,
        flags: i32,
        caller: Caller,
    ) -> Result<(FileAttr, u64)> {
        self.writable()?;
        let parent = self.node(parent)?;
        let (policy, keys, _lock) = self.keys_for_new_entry(&parent)?;
        let backing = names::encrypt_name(&keys, name)?;
        let inherited = self.inherit_acls(&parent, &keys, mode, FileType::RegularFile, caller)?;
        let (file, file_id, material) =
            self.volume
                .create_data_file(parent.fd.as_fd(), &backing, inherited.mode, policy)?;
        self.give_to_caller(parent.fd.as_fd(), backing.entry(), caller)?;
        let fd = o_path(parent.fd.as_fd(), backing.entry())?;
        self.give_acls(&keys, fd.as_fd(), &inherited)?;
        let stat = stat_fd(fd.as_fd())?;
        let attr = self.attr_of(fd.as_fd(), &stat);
        let node = self.inodes.remember(fd, &stat, parent.ino, name);
        node.set_policy(self.volume.tenants.generation() as u32, policy);
        let _ = node.file_id.set(file_id);
        let holes = node
            .holes
            .get_or_init(|| Some(self.access.new_file_holes(self, file_id)))
            .clone();
        let undo = node
            .undo
            .get_or_init(|| self.access.file_undo(self, file_id))
            .clone();
        self.volume.undo.made_here(&file_id);
        node.open_handles.fetch_add(1, Ordering::AcqRel);
        let content = Arc::new(Content {
            file_id,
            material,
            holes,
            undo,
        });
        let fh = self.add_handle(Handle::File(Arc::new(FileHandle {
            node,
            file,
            content,
            append: flags & libc::O_APPEND != 0,
            // Before any lock: a lock taken on the new file already moves reads to a
            // description opened after it (an older epoch is always the safe side).
            opened_in_epoch: 0,
        })));
        Ok((attr, fh))
    }
}

fn file_type(kind: SFlag) -> FileType {
    match kind {
        SFlag::S_IFIFO => FileType::NamedPipe,
        SFlag::S_IFSOCK => FileType::Socket,
        SFlag::S_IFCHR => FileType::CharDevice,
        SFlag::S_IFBLK => FileType::BlockDevice,
        _ => FileType::RegularFile,
    }
}

fn is_not_found(e: &VolumeError) -> bool {
    match e {
        VolumeError::NotFound => true,
        VolumeError::Io(io) => io.kind() == std::io::ErrorKind::NotFound,
        _ => false,
    }
}
