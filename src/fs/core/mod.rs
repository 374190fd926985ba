//! The forward filesystem's operations as plain methods returning `Result`: everything a
//! FUSE request does, minus the reply. The `fuser` shell in `fs/fuse.rs` only dispatches and
//! replies. This file holds the state (inode table, open handles) and its plumbing; the
//! operations are split by concern:
//!
//! - `namespace`: lookups, creating, linking, renaming and removing entries;
//! - `attrs`: attributes, times, access checks and symlink targets;
//! - `tuning`: the kernel-cache policy (TTLs, writeback, negative entries), from the mode;
//! - `access`: the one seam between a lone and a shared mount: how blocks are read and changed;
//! - `file_io`: open files: read, write, truncate, allocate, seek, fsync, release;
//! - `set_id`: when writes, truncates and allocations drop set-user-id and set-group-id;
//! - `dirs`: listings and directory sync;
//! - `xattrs`: encrypted extended attributes;
//! - `acl`: POSIX ACLs (kept as xattrs; what setting one, chmod and inheritance do);
//! - `export`: the lookups of "." and ".." that file handles need (fs/handles.rs);
//! - `locks`: flock and fcntl locks, forwarded to the backing files by shared mounts.

mod access;
mod acl;
mod attrs;
mod dirs;
mod export;
mod file_io;
mod locks;
mod namespace;
mod set_id;
#[cfg(test)]
mod tests;
mod tuning;
mod xattrs;

use std::collections::HashMap;
use std::fs::File;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use fuser::FileAttr;
use nix::fcntl::{AtFlags, OFlag, openat};
use nix::sys::stat::{FileStat, Mode, fstat, fstatat};

pub use attrs::AttrChanges;
pub use dirs::DirEntry;
pub use locks::LockWait;
pub use tuning::Tuning;
pub use xattrs::STATS_ATTRIBUTE;

use super::inodes::{Content, InodeTable, Node, ROOT_INO};
use crate::keys::NameKeys;
use crate::shell::attr::attr_from_stat;
use crate::volume::{Result, VOLUME_POLICY, Volume, VolumeError};

/// Who asks: the caller's credentials, for ownership of what it creates and for the set-id
/// policy (see `set_id`).
#[derive(Clone, Copy, Debug)]
pub struct Caller {
    pub uid: u32,
    pub gid: u32,
    /// The calling process (0 when the kernel names none): its supplementary groups decide
    /// whether a write drops set-group-id (`set_id`).
    pub pid: u32,
    /// The caller's umask, for what it creates: the kernel leaves it to sealfs
    /// (FUSE_DONT_MASK), which applies it unless the directory has a default ACL.
    pub umask: u32,
}

pub struct FileHandle {
    pub node: Arc<Node>,
    pub file: File,
    pub content: Arc<Content>,
    /// Opened with O_APPEND: in shared mode, writes land at the end of file as it is under
    /// the lock, not where this host's kernel last saw it.
    pub append: bool,
    /// The node's lock epoch when this handle was opened (see `Node::lock_epoch`).
    pub opened_in_epoch: u64,
}

enum Handle {
    File(Arc<FileHandle>),
    Dir(Arc<dirs::DirHandle>),
}

pub struct SealFs {
    pub volume: Volume,
    pub tuning: Tuning,
    /// Lone or shared: how blocks are read and changed (`access`), chosen here once.
    access: Box<dyn access::BlockAccess>,
    pub inodes: Arc<InodeTable>,
    handles: Mutex<HashMap<u64, Handle>>,
    next_handle: AtomicU64,
    read_only: bool,
    /// Only root can give files to their caller; others create files as themselves.
    chown_new_files: bool,
    /// The daemon's own ids: a caller with these already owns what the daemon creates.
    own_ids: (u32, u32),
    /// Locks programs hold on files, when shared mounts forward them.
    locks: locks::ForwardedLocks,
    /// The kernel's side of the mount, once mounted: to drop cached pages another host may
    /// have made stale.
    pub notifier: Arc<OnceLock<fuser::Notifier>>,
}

pub(super) fn o_path(dir: BorrowedFd<'_>, name: &str) -> Result<OwnedFd> {
    Ok(openat(
        dir,
        name,
        OFlag::O_PATH | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::empty(),
    )?)
}

/// A readable fd on a directory node (its own fd is O_PATH).
pub(super) fn open_dir(node: &Node) -> Result<OwnedFd> {
    Ok(openat(
        node.fd.as_fd(),
        ".",
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )?)
}

pub(super) fn stat_fd(fd: BorrowedFd<'_>) -> Result<FileStat> {
    Ok(fstatat(
        fd,
        "",
        AtFlags::AT_EMPTY_PATH | AtFlags::AT_SYMLINK_NOFOLLOW,
    )?)
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
        let access = access::access_for(tuning.shared, volume.backing.coherent());
        if !read_only && access.sole_writer() {
            volume.undo.begin_session(&volume.headers)?;
        }
        Ok(SealFs {
            inodes: Arc::new(InodeTable::new(root, &stat)),
            access,
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
            locks: locks::ForwardedLocks::default(),
            notifier: Arc::default(),
        })
    }

    /// The mount ends: open epochs of undo journals settled (their files made durable), the
    /// audit log told, cached keys wiped.
    pub fn unmounted(&self) {
        self.volume.undo.settle();
        tracing::info!(key_cache = %self.volume.key_cache.stats, "unmounted; wiping cached keys");
        if let Some(audit) = &self.volume.audit {
            audit.flush_unwrap_summary();
            audit.record(
                "unmount",
                serde_json::json!({ "key_cache": self.volume.key_cache.stats.to_string() }),
            );
        }
        self.volume.key_cache.clear();
    }

    fn node(&self, ino: u64) -> Result<Arc<Node>> {
        self.inodes.get(ino).ok_or(VolumeError::StaleNode)
    }

    /// The key policy protecting `node` (see `Node::policy_in`): as found at its lookup, or,
    /// once the set of policies changed, found again (a directory's marker read anew, the
    /// rest from its parent). The root is always under the volume's own keys.
    fn policy_of(&self, node: &Node) -> Result<u32> {
        if node.ino == ROOT_INO {
            return Ok(VOLUME_POLICY);
        }
        let generation = self.volume.tenants.generation() as u32;
        if let Some(policy) = node.policy_in(generation) {
            return Ok(policy);
        }
        let inherited = match node.parent().and_then(|p| self.inodes.get(p)) {
            Some(parent) => self.policy_of(&parent)?,
            None => node.last_policy(),
        };
        let policy = if node.kind == fuser::FileType::Directory {
            self.volume.dir_policy(node.fd.as_fd(), inherited)?
        } else {
            inherited
        };
        node.set_policy(generation, policy);
        Ok(policy)
    }

    /// The policy of directory `dir` from its marker read now (a policy set on it a moment
    /// ago may not have moved the generation yet); remembered.
    fn policy_of_afresh(&self, dir: &Node) -> Result<u32> {
        if dir.ino == ROOT_INO {
            return Ok(VOLUME_POLICY);
        }
        let generation = self.volume.tenants.generation() as u32;
        let inherited = match dir.parent().and_then(|p| self.inodes.get(p)) {
            Some(parent) => self.policy_of(&parent)?,
            None => dir.last_policy(),
        };
        let policy = self.volume.dir_policy(dir.fd.as_fd(), inherited)?;
        dir.set_policy(generation, policy);
        Ok(policy)
    }

    /// The policy of directory `dir` and the name keys of its entries.
    fn dir_keys(&self, dir: &Node) -> Result<(u32, Arc<NameKeys>)> {
        let policy = self.policy_of(dir)?;
        Ok((policy, self.volume.name_keys(policy)?))
    }

    /// The name keys protecting `node` itself (its xattrs, a symlink's target).
    fn node_keys(&self, node: &Node) -> Result<Arc<NameKeys>> {
        self.volume.name_keys(self.policy_of(node)?)
    }

    /// Records the policy of `child`, just looked up in a directory of policy `parent_policy`.
    fn note_policy(&self, child: &Node, parent_policy: u32) -> Result<()> {
        let generation = self.volume.tenants.generation() as u32;
        let policy = if child.kind == fuser::FileType::Directory {
            self.volume.dir_policy(child.fd.as_fd(), parent_policy)?
        } else {
            parent_policy
        };
        child.set_policy(generation, policy);
        Ok(())
    }

    fn writable(&self) -> Result<()> {
        if self.read_only {
            Err(VolumeError::ReadOnly)
        } else {
            Ok(())
        }
    }

    /// The attributes the user sees: the backing inode's, with the plaintext size.
    /// `fd`: the inode's own (O_PATH) descriptor.
    fn attr_of(&self, fd: BorrowedFd<'_>, stat: &FileStat) -> FileAttr {
        attr_from_stat(
            self.inodes.node_id(stat.st_ino),
            stat,
            self.volume
                .plain_size(fd, stat.st_mode, stat.st_size as u64),
            stat.st_blocks as u64,
            self.volume.layout.block_size() as u32,
        )
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

    /// `opened_in_epoch`: the node's lock epoch read before `file` was opened (a lock taken
    /// in between must count as newer than the description).
    fn open_file_handle(
        &self,
        node: Arc<Node>,
        file: File,
        append: bool,
        opened_in_epoch: u64,
    ) -> Result<u64> {
        let content = self.content_of(&node, &file)?;
        node.open_handles.fetch_add(1, Ordering::AcqRel);
        Ok(self.add_handle(Handle::File(Arc::new(FileHandle {
            node,
            file,
            content,
            append,
            opened_in_epoch,
        }))))
    }
}
