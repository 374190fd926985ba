//! Attributes: getattr and setattr (mode, owner, size, times), access(2), and reading
//! symlink targets.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd};

use fuser::{FileAttr, FileType, TimeOrNow};
use nix::fcntl::{AT_FDCWD, AtFlags, readlinkat};
use nix::sys::stat::{FchmodatFlags, Mode, fchmodat};
use nix::sys::time::TimeSpec;
use nix::unistd::{Gid, Uid, fchownat};

use super::{Caller, SealFs, stat_fd};
use crate::volume::{Result, proc_fd_path};

fn time_spec(t: Option<TimeOrNow>) -> TimeSpec {
    match t {
        None => TimeSpec::UTIME_OMIT,
        Some(TimeOrNow::Now) => TimeSpec::UTIME_NOW,
        Some(TimeOrNow::SpecificTime(t)) => {
            let (secs, nanos) = crate::shell::attr::request_time_parts(t);
            TimeSpec::new(secs, nanos)
        }
    }
}

/// What a setattr request changes; `None` leaves it as it is.
#[derive(Clone, Copy, Debug, Default)]
pub struct AttrChanges {
    pub mode: Option<u32>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub size: Option<u64>,
    pub atime: Option<TimeOrNow>,
    pub mtime: Option<TimeOrNow>,
    /// The handle a truncate came through (ftruncate), if any.
    pub fh: Option<u64>,
}

impl SealFs {
    pub fn getattr(&self, ino: u64) -> Result<FileAttr> {
        let node = self.node(ino)?;
        Ok(self.attr_of(node.fd.as_fd(), &stat_fd(node.fd.as_fd())?))
    }

    /// Changes what is given, in this order: size (dropping set-id bits first unless the
    /// caller keeps them or sets a mode at once), mode, owner, times.
    pub fn setattr(&self, caller: Caller, ino: u64, changes: AttrChanges) -> Result<FileAttr> {
        let AttrChanges {
            mode,
            uid,
            gid,
            size,
            atime,
            mtime,
            fh,
        } = changes;
        self.writable()?;
        let node = self.node(ino)?;
        if size.is_some() && mode.is_none() && !caller.keeps_set_id() {
            self.drop_set_id(&node, caller)?;
        }
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
            self.chmod_acl(&node, mode)?;
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
        self.volume.open_symlink(&*self.node_keys(&node)?, &encoded)
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
