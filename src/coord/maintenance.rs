//! Locks that keep maintenance commands apart on this host and on every host that shares the
//! cipher dir: a command that rewrites the config (rotate, key add/remove, passwd, a KEK's
//! retirement) waits for any other, so none loses another's change; a rewrap runs alone, and a
//! KEK is not retired while one runs.
//!
//! The locks are OFD byte-range locks on `sealfs.maintenance` at the cipher dir's root, one
//! byte each (shared filesystems carry them across hosts and drop them when the holder dies),
//! plus the flock on the cipher dir that sealfs versions before them take for the config, so
//! those still exclude on this host. Where the backing store has no OFD locks, the flock alone
//! remains (one host).
//!
//! The same file holds the directory locks (`lock_directory`): one byte per backing directory,
//! from `DIRECTORY_LOCKS_AT` on, which order the entries made in a directory against a key
//! policy set on it or removed from it. Not a flock on the directory: FUSE and NFS clients
//! keep a directory's flocks to their own host.

use std::fs::File;
use std::os::fd::{AsFd, BorrowedFd};
use std::path::Path;

use nix::fcntl::{Flock, FlockArg, OFlag, open, openat};
use nix::sys::stat::Mode;

use super::file_locks::ofd_lock;
use super::{CoordError, Result};

/// The file whose bytes are the maintenance locks.
pub const MAINTENANCE_FILE: &str = "sealfs.maintenance";

/// Which lock: the byte of `MAINTENANCE_FILE` it is taken on.
#[derive(Clone, Copy)]
enum Slot {
    Config = 0,
    Rewrap = 1,
}

/// A held maintenance lock; released when dropped.
pub struct MaintenanceLock {
    _dir: Option<Flock<File>>,
    _file: Option<File>,
}

/// Takes the config lock, waiting for whoever holds it, here or on another host.
pub fn lock_config(cipher_dir: &Path) -> Result<MaintenanceLock> {
    let dir = Flock::lock(File::open(cipher_dir)?, FlockArg::LockExclusive)
        .map_err(|(_, e)| CoordError::from(e))?;
    Ok(MaintenanceLock {
        _dir: Some(dir),
        _file: take(cipher_dir, Slot::Config, true)?,
    })
}

/// Takes the rewrap lock without waiting: refused in one line while a rewrap (or a KEK's
/// retirement) runs anywhere.
pub fn lock_rewrap(cipher_dir: &Path) -> Result<MaintenanceLock> {
    match take(cipher_dir, Slot::Rewrap, false) {
        Err(CoordError::Io(e)) if e.raw_os_error() == Some(libc::EAGAIN) => {
            Err(CoordError::Refused(
                "a rewrap or a KEK retirement is running on this volume (on this host or another); run this again when it is done".into(),
            ))
        }
        other => Ok(MaintenanceLock {
            _dir: None,
            _file: other?,
        }),
    }
}

/// Locks `slot` on a description of its own; `None` where there is nothing to lock with (a
/// read-only cipher dir, which no command changes, or a store without OFD locks).
fn take(cipher_dir: &Path, slot: Slot, wait: bool) -> Result<Option<File>> {
    let fd = match open(
        &cipher_dir.join(MAINTENANCE_FILE),
        OFlag::O_RDWR | OFlag::O_CREAT | OFlag::O_CLOEXEC | OFlag::O_NOFOLLOW,
        Mode::from_bits_truncate(0o600),
    ) {
        Ok(fd) => fd,
        Err(nix::Error::EROFS) => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    let file = File::from(fd);
    match ofd_lock(file.as_fd(), libc::F_WRLCK, slot as i64, 1, wait) {
        Ok(()) => Ok(Some(file)),
        Err(nix::Error::EACCES | nix::Error::EAGAIN) => Err(nix::Error::EAGAIN.into()),
        Err(nix::Error::EINVAL | nix::Error::EOPNOTSUPP | nix::Error::ENOLCK) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// Makes `MAINTENANCE_FILE` (empty; readable by all, as a read lock needs it to be) owned by
/// the owner of the cipher dir, whoever runs this: a mount by root must not leave the volume's
/// owner a lock file it cannot write.
fn create_maintenance_file(root: BorrowedFd<'_>) -> nix::Result<std::os::fd::OwnedFd> {
    let flags = OFlag::O_CLOEXEC | OFlag::O_NOFOLLOW | OFlag::O_RDWR;
    match openat(
        root,
        MAINTENANCE_FILE,
        flags | OFlag::O_CREAT | OFlag::O_EXCL,
        Mode::from_bits_truncate(0o644),
    ) {
        Ok(fd) => {
            if let Ok(owner) = nix::sys::stat::fstat(root) {
                let _ =
                    nix::unistd::fchown(&fd, Some(owner.st_uid.into()), Some(owner.st_gid.into()));
            }
            Ok(fd)
        }
        // Made by someone else meanwhile.
        Err(nix::Error::EEXIST) => openat(root, MAINTENANCE_FILE, flags, Mode::empty()),
        Err(e) => Err(e),
    }
}

/// Where the directory locks start in `MAINTENANCE_FILE`.
const DIRECTORY_LOCKS_AT: i64 = 1 << 20;
/// How many bytes the directory locks spread over: two directories whose inode numbers are
/// equal modulo this share a lock, which only makes one wait for the other.
const DIRECTORY_LOCK_BYTES: u64 = 1 << 40;

/// The byte of `MAINTENANCE_FILE` that locks the backing directory with inode number `ino`.
pub fn directory_lock_byte(ino: u64) -> i64 {
    DIRECTORY_LOCKS_AT + (ino % DIRECTORY_LOCK_BYTES) as i64
}

/// A directory lock (`lock_directory`), released when dropped.
pub struct DirectoryLock {
    _file: File,
}

/// Locks backing directory `dir` (any descriptor of it, O_PATH too) of the cipher dir whose
/// root is `root`, waiting for whoever holds it here or on another host: shared by whoever
/// makes an entry in it, while it reads the directory's policy marker and makes the entry;
/// exclusive by `policy set` and `remove`, while they check the directory is empty and write
/// or unlink its marker. None where there is nothing to lock with (a read-only cipher dir, a
/// store without OFD locks, a lock file this process may not open): then `policy set` and
/// `remove` want the volume unmounted instead.
pub fn lock_directory(
    root: BorrowedFd<'_>,
    dir: BorrowedFd<'_>,
    exclusive: bool,
) -> Result<Option<DirectoryLock>> {
    let ino = nix::sys::stat::fstat(dir)?.st_ino;
    let flags = OFlag::O_CLOEXEC | OFlag::O_NOFOLLOW;
    let opened =
        openat(root, MAINTENANCE_FILE, flags | OFlag::O_RDWR, Mode::empty()).or_else(|e| match e {
            nix::Error::ENOENT => create_maintenance_file(root),
            // A read lock needs only read access (a mount running as another user than the
            // volume's owner).
            nix::Error::EACCES | nix::Error::EROFS if !exclusive => openat(
                root,
                MAINTENANCE_FILE,
                flags | OFlag::O_RDONLY,
                Mode::empty(),
            ),
            e => Err(e),
        });
    let fd = match opened {
        Ok(fd) => fd,
        Err(e @ (nix::Error::EACCES | nix::Error::EROFS)) => {
            static WARNED: std::sync::Once = std::sync::Once::new();
            WARNED.call_once(|| {
                tracing::warn!(
                    "cannot open {MAINTENANCE_FILE} ({e}): creates are not held off while a key policy is set on their directory; mount as the volume's owner"
                )
            });
            return Ok(None);
        }
        Err(e) => return Err(e.into()),
    };
    let kind = if exclusive {
        libc::F_WRLCK
    } else {
        libc::F_RDLCK
    };
    let file = File::from(fd);
    match ofd_lock(file.as_fd(), kind, directory_lock_byte(ino), 1, true) {
        Ok(()) => Ok(Some(DirectoryLock { _file: file })),
        Err(nix::Error::EINVAL | nix::Error::EOPNOTSUPP | nix::Error::ENOLCK) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_rewrap_at_a_time_and_config_changes_wait_for_each_other() {
        let dir = tempfile::tempdir().unwrap();
        let rewrap = lock_rewrap(dir.path()).unwrap();
        let second = lock_rewrap(dir.path());
        assert!(
            matches!(&second, Err(CoordError::Refused(m)) if m.contains("rewrap")),
            "a second rewrap is refused"
        );
        drop(rewrap);
        drop(lock_rewrap(dir.path()).unwrap());

        let held = lock_config(dir.path()).unwrap();
        let path = dir.path().to_path_buf();
        let (tx, rx) = std::sync::mpsc::channel();
        let waiter = std::thread::spawn(move || {
            let lock = lock_config(&path).unwrap();
            tx.send(()).unwrap();
            drop(lock);
        });
        assert!(
            rx.recv_timeout(std::time::Duration::from_millis(200))
                .is_err(),
            "the second config change waits"
        );
        // The rewrap lock is another byte: free while the config is locked.
        drop(lock_rewrap(dir.path()).unwrap());
        drop(held);
        rx.recv_timeout(std::time::Duration::from_secs(10)).unwrap();
        waiter.join().unwrap();
    }
}
