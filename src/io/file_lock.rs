//! Byte-range locks on a backing data file, for mounts that share a cipher dir (`-o shared`):
//! OFD locks (F_OFD_SETLKW), which shared filesystems carry across hosts, taken around every
//! block read-modify-write, truncate and allocation so that non-overlapping plaintext writes
//! from two hosts, which can overlap in one sealed block, never lose each other's bytes.
//!
//! OFD locks belong to an open file description: ranges one description holds merge, and
//! unlocking one range releases it from all of them. Callers therefore take overlapping
//! ranges on one description only one at a time (the in-process `range_lock` sees to it for
//! writes); a read that needs a lock takes it on a description of its own (`reopen`).

use std::fs::File;
use std::os::fd::{AsFd, BorrowedFd};

use super::IoError;
use crate::format::block::Layout;

/// Everything from a block to the end of file, whatever the end becomes (the same mark as
/// the in-process range lock's).
pub use super::range_lock::TO_END;

/// A held byte-range lock; released when dropped.
pub struct FileRangeLock<'a> {
    fd: BorrowedFd<'a>,
    start: i64,
    len: i64,
}

/// Locks the backing bytes of blocks `first..end` (`end` exclusive, or `TO_END`) of `file`,
/// waiting for other holders: shared for reading, exclusive for writing.
pub fn lock_blocks<'a>(
    file: &'a File,
    layout: &Layout,
    first: u64,
    end: u64,
    exclusive: bool,
) -> Result<FileRangeLock<'a>, IoError> {
    // Block 0's lock covers the preamble too: no need to tell the two apart.
    let start = if first == 0 {
        0
    } else {
        layout.block_offset(first)
    };
    let len = if end == TO_END {
        0 // to the end of file, however far it grows
    } else {
        layout.block_offset(end) - start
    };
    let lock = FileRangeLock {
        fd: file.as_fd(),
        start: i64::try_from(start).map_err(|_| IoError::TooLarge)?,
        len: i64::try_from(len).map_err(|_| IoError::TooLarge)?,
    };
    let kind = if exclusive {
        libc::F_WRLCK
    } else {
        libc::F_RDLCK
    };
    loop {
        match lock.set(kind, true) {
            Ok(()) => return Ok(lock),
            Err(nix::Error::EINTR) => continue,
            Err(e) => return Err(IoError::Io(e.into())),
        }
    }
}

impl FileRangeLock<'_> {
    fn set(&self, kind: libc::c_int, wait: bool) -> nix::Result<()> {
        // SAFETY: flock is plain old data; zero is a valid start before the fields are set.
        let mut lock: libc::flock = unsafe { std::mem::zeroed() };
        lock.l_type = kind as libc::c_short;
        lock.l_whence = libc::SEEK_SET as libc::c_short;
        lock.l_start = self.start;
        lock.l_len = self.len;
        let arg = if wait {
            nix::fcntl::FcntlArg::F_OFD_SETLKW(&lock)
        } else {
            nix::fcntl::FcntlArg::F_OFD_SETLK(&lock)
        };
        nix::fcntl::fcntl(self.fd, arg).map(drop)
    }
}

impl Drop for FileRangeLock<'_> {
    fn drop(&mut self) {
        if let Err(e) = self.set(libc::F_UNLCK, false) {
            tracing::warn!(error = %e, "could not release a byte-range lock on a data file");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn try_lock(file: &File, start: i64, len: i64, exclusive: bool) -> bool {
        let probe = FileRangeLock {
            fd: file.as_fd(),
            start,
            len,
        };
        let ok = probe
            .set(
                if exclusive {
                    libc::F_WRLCK
                } else {
                    libc::F_RDLCK
                },
                false,
            )
            .is_ok();
        if ok {
            // Release only what this probe took (it held nothing before).
            drop(probe);
        } else {
            std::mem::forget(probe);
        }
        ok
    }

    #[test]
    fn block_ranges_exclude_only_what_they_overlap() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("d");
        std::fs::write(&path, vec![0u8; 10_000]).unwrap();
        let open = || File::options().read(true).write(true).open(&path).unwrap();
        let (a, b) = (open(), open());
        let layout = Layout::new(512).unwrap();
        let held = lock_blocks(&a, &layout, 2, 4, true).unwrap();
        // Other descriptions: blocks 2..4 are taken, blocks 0..2 and 4.. are free.
        assert!(!try_lock(&b, layout.block_offset(3) as i64, 1, false));
        assert!(try_lock(&b, 0, layout.block_offset(2) as i64, true));
        assert!(try_lock(&b, layout.block_offset(4) as i64, 100, true));
        drop(held);
        assert!(try_lock(&b, layout.block_offset(3) as i64, 1, true));
        // To the end: covers whatever the file grows to.
        let tail = lock_blocks(&a, &layout, 5, TO_END, true).unwrap();
        assert!(!try_lock(&b, 1 << 40, 1, false));
        drop(tail);
        assert!(try_lock(&b, 1 << 40, 1, true));
    }
}
