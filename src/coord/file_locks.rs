//! Byte-range locks on a backing data file, for mounts that share a cipher dir (`-o shared`):
//! OFD locks (F_OFD_SETLKW), which shared filesystems carry across hosts, taken around every
//! block read-modify-write, truncate and allocation so that non-overlapping plaintext writes
//! from two hosts, which can overlap in one sealed block, never lose each other's bytes.
//!
//! OFD locks belong to an open file description: ranges one description holds merge, and
//! unlocking one range releases it from all of them. Callers therefore take overlapping
//! ranges on one description only one at a time (the in-process `range_lock` sees to it for
//! writes); a read that needs a lock takes it on a description of its own (`reopen`).
//!
//! The locks programs take on a plaintext file (flock(2), fcntl(2)), which shared mounts
//! forward, live on the same backing file in a space of their own: backing offsets from
//! `FORWARDED_BASE` up, where no block lock reaches. So a program's lock never stalls the
//! block locks of its own writes, and both kinds follow the data file through renames and
//! hard links, on every host.

use std::fs::File;
use std::os::fd::{AsFd, BorrowedFd};

use super::CoordError;
use crate::format::block::Layout;

pub use super::TO_END;

/// A held byte-range lock; released when dropped.
pub struct FileRangeLock<'a> {
    fd: BorrowedFd<'a>,
    start: i64,
    len: i64,
}

/// The backing bytes the lock of blocks `first..end` (or `TO_END`) covers: start and length.
fn block_span(layout: &Layout, first: u64, end: u64) -> Result<(i64, i64), CoordError> {
    // Block 0's lock covers the preamble too (no need to tell the two apart), but for its
    // first byte, which is the hole map's lock (`lock_hole_map`).
    let start = if first == 0 {
        HOLE_MAP_LOCK + 1
    } else {
        layout.block_offset(first)
    };
    // Block locks stay below the forwarded-lock range (data files never reach it: their
    // plaintext is capped at 2 EiB).
    if start >= FORWARDED_BASE as u64 {
        return Err(CoordError::TooLarge);
    }
    let len = if end == TO_END {
        // To the end of file, however far it grows: up to where forwarded locks begin.
        FORWARDED_BASE as u64 - start
    } else {
        (layout.block_offset(end) - start).min(FORWARDED_BASE as u64 - start)
    };
    Ok((
        i64::try_from(start).map_err(|_| CoordError::TooLarge)?,
        i64::try_from(len).map_err(|_| CoordError::TooLarge)?,
    ))
}

/// Locks the backing bytes of blocks `first..end` (`end` exclusive, or `TO_END`) of `file`,
/// waiting for other holders: shared for reading, exclusive for writing.
pub fn lock_blocks<'a>(
    file: &'a File,
    layout: &Layout,
    first: u64,
    end: u64,
    exclusive: bool,
) -> Result<FileRangeLock<'a>, CoordError> {
    let (start, len) = block_span(layout, first, end)?;
    let lock = FileRangeLock {
        fd: file.as_fd(),
        start,
        len,
    };
    let kind = if exclusive {
        libc::F_WRLCK
    } else {
        libc::F_RDLCK
    };
    // Try first without waiting: the common case costs the one call it always did, and a
    // lock that must wait is counted with how long it waited (metrics).
    match lock.set(kind, false) {
        Ok(()) => return Ok(lock),
        Err(nix::Error::EAGAIN | nix::Error::EACCES) => {}
        Err(e) => return Err(e.into()),
    }
    let waiting = std::time::Instant::now();
    lock.set(kind, true).map_err(CoordError::from)?;
    crate::metrics::global().lock_waited(waiting.elapsed());
    Ok(lock)
}

/// Locks the backing bytes of blocks `first..end` (or `TO_END`) of `file` exclusively if no one
/// holds any of them (`None` otherwise): a shared mount's settling of an undo journal, which
/// must not wait for writers (it runs again later).
pub fn try_lock_blocks<'a>(
    file: &'a File,
    layout: &Layout,
    first: u64,
    end: u64,
) -> Result<Option<FileRangeLock<'a>>, CoordError> {
    let (start, len) = block_span(layout, first, end)?;
    let lock = FileRangeLock {
        fd: file.as_fd(),
        start,
        len,
    };
    match lock.set(libc::F_WRLCK, false) {
        Ok(()) => Ok(Some(lock)),
        Err(nix::Error::EAGAIN | nix::Error::EACCES) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// Locks all of `file` (an undo journal shared mounts append to) exclusively, waiting for
/// other holders. The lock belongs to `file`'s open file description: it goes when that
/// description is closed.
pub fn lock_whole_file(file: &File) -> Result<(), CoordError> {
    ofd_lock(file.as_fd(), libc::F_WRLCK, 0, 0, true).map_err(CoordError::from)
}

/// The backing byte whose lock guards a data file's hole map sidecar (`volume::hole_maps`):
/// the preamble's first, which no block lock covers (and a sealfs before hole maps only ever
/// locked it together with block 0, which merely waits).
const HOLE_MAP_LOCK: u64 = 0;

/// Locks `file`'s hole map against other mounts while one changes it, waiting for them.
pub fn lock_hole_map(file: &File) -> Result<FileRangeLock<'_>, CoordError> {
    let lock = FileRangeLock {
        fd: file.as_fd(),
        start: HOLE_MAP_LOCK as i64,
        len: 1,
    };
    lock.set(libc::F_WRLCK, true).map_err(CoordError::from)?;
    Ok(lock)
}

impl FileRangeLock<'_> {
    fn set(&self, kind: libc::c_int, wait: bool) -> nix::Result<()> {
        ofd_lock(self.fd, kind, self.start, self.len, wait)
    }
}

/// Sets an OFD byte-range lock on `fd`'s open file description: `kind` F_RDLCK, F_WRLCK or
/// F_UNLCK over `len` bytes from `start` (0: to infinity), waiting for other holders when
/// `wait` (EAGAIN or EACCES without). A signal never ends a wait (EINTR retries). Every lock
/// sealfs takes on the backing store (block ranges, hole maps, forwarded program locks, the
/// mount claim, maintenance and directory locks, the probe) is taken here.
pub fn ofd_lock(
    fd: BorrowedFd<'_>,
    kind: libc::c_int,
    start: i64,
    len: i64,
    wait: bool,
) -> nix::Result<()> {
    let lock = flock(kind, start, len);
    loop {
        let arg = if wait {
            nix::fcntl::FcntlArg::F_OFD_SETLKW(&lock)
        } else {
            nix::fcntl::FcntlArg::F_OFD_SETLK(&lock)
        };
        match nix::fcntl::fcntl(fd, arg) {
            Err(nix::Error::EINTR) => continue,
            other => return other.map(drop),
        }
    }
}

/// The one builder of a `struct flock`: `kind` (F_RDLCK, F_WRLCK, F_UNLCK) over `len` bytes
/// from `start` (0: to infinity).
fn flock(kind: libc::c_int, start: i64, len: i64) -> libc::flock {
    // SAFETY: flock is plain old data; zero is a valid start before the fields are set.
    let mut lock: libc::flock = unsafe { std::mem::zeroed() };
    lock.l_type = kind as libc::c_short;
    lock.l_whence = libc::SEEK_SET as libc::c_short;
    lock.l_start = start;
    lock.l_len = len;
    lock
}

/// Where forwarded locks begin in the backing file: 4 EiB, beyond any data file's size
/// (plaintext is capped at 2 EiB, `io::data_file`).
const FORWARDED_BASE: i64 = 1 << 62;

/// The largest offset FUSE passes as the end of a lock (OFFSET_MAX: "to end of file").
const OFFSET_MAX: u64 = i64::MAX as u64;

/// A program's lock on plaintext bytes `start..=end` (FUSE's inclusive form; `end` is
/// OFFSET_MAX for "to end of file"), as the kernel forwards it: `kind` is F_RDLCK, F_WRLCK or
/// F_UNLCK.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PlainLock {
    pub start: u64,
    pub end: u64,
    pub kind: i32,
}

impl PlainLock {
    /// The backing range: shifted up by `FORWARDED_BASE`. Offsets past 4 EiB share the last
    /// backing byte (no file gets there), and a range reaching that far runs to infinity.
    fn backing(&self) -> (i64, i64) {
        let limit = FORWARDED_BASE as u64 - 1;
        let start = self.start.min(limit);
        let len = if self.end >= limit {
            0
        } else {
            self.end.saturating_sub(start) + 1
        };
        (FORWARDED_BASE + start as i64, len as i64)
    }

    fn from_backing(lock: &libc::flock) -> PlainLock {
        let start = (lock.l_start - FORWARDED_BASE).max(0) as u64;
        PlainLock {
            start,
            end: if lock.l_len == 0 {
                OFFSET_MAX
            } else {
                start + lock.l_len as u64 - 1
            },
            kind: i32::from(lock.l_type),
        }
    }
}

/// Sets (or, for F_UNLCK, releases) a forwarded lock on `file`'s open file description,
/// without waiting: EAGAIN when another description holds a conflicting one.
pub fn set_forwarded(file: &File, lock: PlainLock) -> nix::Result<()> {
    let (start, len) = lock.backing();
    match ofd_lock(file.as_fd(), lock.kind, start, len, false) {
        Err(nix::Error::EACCES) => Err(nix::Error::EAGAIN),
        other => other,
    }
}

/// The first forwarded lock of another description that conflicts with `lock`, if any (F_GETLK).
pub fn conflicting_forwarded(file: &File, lock: PlainLock) -> nix::Result<Option<PlainLock>> {
    let (start, len) = lock.backing();
    let mut probe = flock(lock.kind, start, len);
    nix::fcntl::fcntl(file.as_fd(), nix::fcntl::FcntlArg::F_OFD_GETLK(&mut probe))?;
    Ok((i32::from(probe.l_type) != libc::F_UNLCK).then(|| PlainLock::from_backing(&probe)))
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

    /// Two open file descriptions of one data file (two mounts, or two owners), and a layout.
    fn two_descriptions() -> (tempfile::TempDir, File, File, Layout) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("d");
        std::fs::write(&path, vec![0u8; 10_000]).unwrap();
        let open = || File::options().read(true).write(true).open(&path).unwrap();
        let (a, b) = (open(), open());
        (dir, a, b, Layout::new(512).unwrap())
    }

    #[test]
    fn block_ranges_exclude_only_what_they_overlap() {
        let (_dir, a, b, layout) = two_descriptions();
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

    fn plain(start: u64, end: u64, kind: i32) -> PlainLock {
        PlainLock { start, end, kind }
    }

    #[test]
    fn forwarded_locks_exclude_each_other_but_never_block_locks() {
        let (_dir, a, b, layout) = two_descriptions();
        // A program's lock over the whole file (sqlite's and flock's shape) ...
        set_forwarded(&a, plain(0, OFFSET_MAX, libc::F_WRLCK)).unwrap();
        // ... leaves every block lock of another description free, to the end of file,
        let tail = lock_blocks(&b, &layout, 0, TO_END, true).unwrap();
        drop(tail);
        // ... and excludes other descriptions' forwarded locks, which can see who holds it.
        assert_eq!(
            set_forwarded(&b, plain(100, 100, libc::F_RDLCK)),
            Err(nix::Error::EAGAIN)
        );
        assert_eq!(
            conflicting_forwarded(&b, plain(5, 9, libc::F_RDLCK)).unwrap(),
            Some(plain(0, OFFSET_MAX, libc::F_WRLCK))
        );
        // Byte-exact ranges: sqlite's lock bytes sit next to each other.
        set_forwarded(&a, plain(0, OFFSET_MAX, libc::F_UNLCK)).unwrap();
        set_forwarded(&a, plain(0x4000_0000, 0x4000_0000, libc::F_WRLCK)).unwrap();
        set_forwarded(&b, plain(0x4000_0001, 0x4000_0001, libc::F_WRLCK)).unwrap();
        assert_eq!(
            conflicting_forwarded(&b, plain(0x3fff_ffff, 0x4000_0000, libc::F_RDLCK)).unwrap(),
            Some(plain(0x4000_0000, 0x4000_0000, libc::F_WRLCK))
        );
        assert_eq!(
            conflicting_forwarded(&a, plain(0, 0x3fff_ffff, libc::F_WRLCK)).unwrap(),
            None
        );
        // Past 4 EiB everything shares the last byte: no conflict is ever missed.
        set_forwarded(&a, plain(1 << 62, OFFSET_MAX, libc::F_RDLCK)).unwrap();
        assert_eq!(
            set_forwarded(&b, plain(u64::MAX >> 2, (u64::MAX >> 2) + 5, libc::F_WRLCK)),
            Err(nix::Error::EAGAIN)
        );
    }
}
