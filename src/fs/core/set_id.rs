//! Set-user-id and set-group-id bits. sealfs negotiates FUSE_HANDLE_KILLPRIV_V2, so the
//! kernel leaves dropping them to the filesystem (and stops asking for security.capability
//! before every write). The rule is the kernel's (setattr_should_drop_suidgid): a write,
//! truncate or allocation by someone without CAP_FSETID drops set-user-id, and set-group-id
//! where group execute is set or the writer is not in the file's group.

use std::os::fd::AsFd;

use fuser::FileType;
use nix::fcntl::AT_FDCWD;
use nix::sys::stat::{FchmodatFlags, Mode, fchmodat};

use super::{Caller, SealFs, stat_fd};
use crate::fs::inodes::Node;
use crate::volume::{Result, proc_fd_path};

impl Caller {
    /// Whether a truncate or allocation by this caller keeps set-id bits (CAP_FSETID). fuser
    /// passes on neither the kernel's flag for it nor the caller's capabilities, so root is
    /// taken to hold it and everyone else not. Writes follow the kernel's own flag instead
    /// (FUSE_WRITE_KILL_SUIDGID).
    pub fn keeps_set_id(&self) -> bool {
        self.uid == 0
    }

    /// Whether the caller is in group `gid`: its own group, or one of its process's
    /// supplementary groups (/proc/PID/status; none known without a pid).
    pub(super) fn in_group(&self, gid: u32) -> bool {
        if self.gid == gid {
            return true;
        }
        if self.pid == 0 {
            return false;
        }
        std::fs::read_to_string(format!("/proc/{}/status", self.pid)).is_ok_and(|status| {
            status
                .lines()
                .find_map(|l| l.strip_prefix("Groups:"))
                .is_some_and(|groups| groups.split_whitespace().any(|g| g == gid.to_string()))
        })
    }
}

impl SealFs {
    /// Drops set-user-id, and set-group-id where group execute is set or `writer` is not in
    /// the file's group, from a regular file.
    pub(super) fn drop_set_id(&self, node: &Node, writer: Caller) -> Result<()> {
        if node.kind != FileType::RegularFile {
            return Ok(());
        }
        let st = stat_fd(node.fd.as_fd())?;
        let mode = st.st_mode & 0o7777;
        if mode & (libc::S_ISUID | libc::S_ISGID) == 0 {
            return Ok(());
        }
        let mut dropped = libc::S_ISUID;
        if mode & libc::S_IXGRP != 0 || !writer.in_group(st.st_gid) {
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
        // The kernel keeps the mode it cached (a write's reply carries no attributes): drop its
        // copy, or `stat` shows the set-id bits until the attribute timeout.
        if let Some(notifier) = self.notifier.get()
            && let Err(e) = notifier.inval_inode(fuser::INodeNo(node.ino), -1, 0)
        {
            tracing::debug!(error = %e, "could not drop cached attributes after a set-id drop");
        }
        Ok(())
    }
}
