//! Who has a cipher dir mounted, on this host or any other that shares its filesystem. A
//! mount holds a lock on `sealfs.lock` for its whole life: a write lock when it is the only
//! one allowed (the default), a read lock in shared mode, so an exclusive mount and any other
//! mount exclude each other while shared mounts coexist. The locks are the backing
//! filesystem's own (OFD byte-range locks, or flock), which shared filesystems carry across
//! hosts and release when the holder dies: a claim left by a dead mount locks nobody out.
//!
//! To say *who* holds it, each mount also keeps a record, `sealfs.mounts/<random>.json` (host,
//! pid, since, mode), under a write lock of its own. A record whose lock can be taken belongs
//! to a mount that is gone and is removed by whoever finds it.

use std::fs::File;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::FileExt;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use nix::fcntl::{OFlag, RenameFlags, openat, renameat2};
use nix::sys::stat::{Mode, mkdirat};
use nix::unistd::{UnlinkatFlags, unlinkat};
use serde::{Deserialize, Serialize};

use super::file_locks::ofd_lock;
use super::{CoordError, LockKind, Result};

/// The file whose lock is the claim, at the cipher dir's root.
pub const LOCK_FILE: &str = "sealfs.lock";
/// The directory of mount records, at the cipher dir's root.
pub const MOUNTS_DIR: &str = "sealfs.mounts";

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ClaimMode {
    /// The only mount of the cipher dir (and `fsck --repair`, which needs no mount at all).
    Exclusive,
    /// One of any number of shared mounts (`-o shared`).
    Shared,
}

/// A mount record, as found in `sealfs.mounts`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Holder {
    pub host: String,
    pub pid: u32,
    /// Seconds since the epoch.
    pub since: u64,
    pub mode: ClaimMode,
    /// The KEK version the mount wraps new file keys under, once it has said (a mount
    /// rewrites its record when it follows a rotation): a KEK is not retired while a live
    /// mount may still use it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kek: Option<u32>,
}

impl std::fmt::Display for Holder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let since = humantime::format_rfc3339_seconds(
            UNIX_EPOCH + std::time::Duration::from_secs(self.since),
        );
        let mode = match self.mode {
            ClaimMode::Exclusive => "exclusive",
            ClaimMode::Shared => "shared",
        };
        write!(
            f,
            "host {} (pid {}, since {since}, {mode})",
            self.host, self.pid
        )
    }
}

/// A claim on a cipher dir, released when dropped (or when the process ends, however).
pub struct Claim {
    _lock: Option<File>,
    record: Option<(File, Holder)>,
    record_name: Option<String>,
    mounts: Option<OwnedFd>,
}

/// Rewrites a mount's record in place (see `Holder::kek`).
pub struct RecordUpdater {
    record: File,
    holder: Holder,
}

impl RecordUpdater {
    /// Says in the record that new files are wrapped under KEK `kek`. One write at offset 0,
    /// padded with blanks (which JSON ignores) to cover the longest record written before, so
    /// a reader finds the old record or the new one.
    pub fn note_kek(&mut self, kek: u32) -> std::io::Result<()> {
        self.holder.kek = Some(kek);
        let mut json = serde_json::to_vec(&self.holder).expect("a record serializes");
        let before = self.record.metadata()?.len() as usize;
        json.resize(json.len().max(before), b' ');
        self.record.write_all_at(&json, 0)?;
        Ok(())
    }
}

impl Claim {
    /// No claim: for a cipher dir on a read-only filesystem, which no mount can change.
    fn none() -> Self {
        Claim {
            _lock: None,
            record: None,
            record_name: None,
            mounts: None,
        }
    }

    /// What rewrites this claim's record, if it has one. It writes through its own descriptor
    /// of the record's open file, so the record's lock stays with the claim.
    pub fn record_updater(&self) -> Option<RecordUpdater> {
        let (file, holder) = self.record.as_ref()?;
        Some(RecordUpdater {
            record: file.try_clone().ok()?,
            holder: holder.clone(),
        })
    }
}

impl Drop for Claim {
    fn drop(&mut self) {
        if let (Some(dir), Some(name)) = (&self.mounts, &self.record_name) {
            let _ = unlinkat(dir.as_fd(), name.as_str(), UnlinkatFlags::NoRemoveDir);
        }
    }
}

/// Claims the cipher dir whose root is `root`, with locks of `kind` (what its backing store
/// has, `volume::Backing::lock_kind`): fails with `CoordError::InUse`, naming the holders,
/// when a conflicting claim is held. `what` says who claims, for the message ("mount",
/// "fsck --repair").
pub fn claim(root: BorrowedFd<'_>, mode: ClaimMode, kind: LockKind, what: &str) -> Result<Claim> {
    let fd = match openat(
        root,
        LOCK_FILE,
        OFlag::O_RDWR | OFlag::O_CREAT | OFlag::O_CLOEXEC | OFlag::O_NOFOLLOW,
        Mode::from_bits_truncate(0o600),
    ) {
        Ok(fd) => fd,
        // A cipher dir nobody can write (a read-only snapshot or medium): nothing to guard.
        Err(nix::Error::EROFS) => {
            tracing::warn!("the cipher dir is read-only: mounting without a claim");
            return Ok(Claim::none());
        }
        Err(e) => return Err(e.into()),
    };
    let lock = File::from(fd);
    let exclusive = mode == ClaimMode::Exclusive;
    match try_lock(lock.as_fd(), kind, exclusive) {
        Ok(true) => {}
        Ok(false) => {
            let holders = holders(root, kind);
            let named = if holders.is_empty() {
                "another mount (its record is not readable yet)".to_string()
            } else {
                holders
                    .iter()
                    .map(Holder::to_string)
                    .collect::<Vec<_>>()
                    .join("; ")
            };
            let hint = match mode {
                ClaimMode::Exclusive => " (every host must mount it with -o shared to share it)",
                ClaimMode::Shared => " (a mount without -o shared holds it alone)",
            };
            return Err(CoordError::InUse(format!(
                "cannot {what}: this volume is mounted by {named}{hint}"
            )));
        }
        Err(e) => return Err(e.into()),
    }
    let (record, record_name, mounts) = match write_record(root, kind, mode) {
        Ok((record, name, dir)) => (Some(record), Some(name), Some(dir)),
        Err(e) => {
            // The claim holds without a record; only the message naming this mount is lost.
            tracing::warn!(error = %e, "could not write the mount record");
            (None, None, None)
        }
    };
    // Records of mounts that died without removing theirs go now (listing prunes them).
    holders(root, kind);
    Ok(Claim {
        _lock: Some(lock),
        record,
        record_name,
        mounts,
    })
}

/// How long a claim waits for a mount of this host that is on its way out: umount(8) returns
/// once the kernel has let go of the mount, a moment before its daemon has exited and so
/// released its claim, and a script that mounts again at once must not be refused.
pub const UNMOUNT_GRACE: Duration = Duration::from_secs(10);

/// `claim`, but while the claim is held only by live processes of this host and `unmounted`
/// says none of them serves a mount any more, it waits for them to exit (up to
/// `UNMOUNT_GRACE`), then claims or refuses as `claim` does.
pub fn claim_waiting(
    root: BorrowedFd<'_>,
    mode: ClaimMode,
    kind: LockKind,
    what: &str,
    unmounted: impl Fn() -> bool,
) -> Result<Claim> {
    let started = Instant::now();
    loop {
        match claim(root, mode, kind, what) {
            Err(CoordError::InUse(why)) if started.elapsed() < UNMOUNT_GRACE => {
                let here = this_host();
                let exiting = holders(root, kind)
                    .iter()
                    .all(|h| h.host == here && h.pid != 0 && process_alive(h.pid))
                    && unmounted();
                if !exiting {
                    return Err(CoordError::InUse(why));
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            other => return other,
        }
    }
}

/// The pids of this host's live holders of the cipher dir at `root`.
pub fn holders_here(root: BorrowedFd<'_>, kind: Option<LockKind>) -> Vec<u32> {
    let here = this_host();
    live_holders(root, kind)
        .into_iter()
        .filter(|h| h.host == here)
        .map(|h| h.pid)
        .collect()
}

fn process_alive(pid: u32) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
}

fn this_host() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "unknown".into())
}

/// The live holders of the cipher dir at `root` (none where its store has no locks of `kind`
/// to hold); records of dead mounts are removed.
pub fn live_holders(root: BorrowedFd<'_>, kind: Option<LockKind>) -> Vec<Holder> {
    kind.map_or_else(Vec::new, |kind| holders(root, kind))
}

fn holders(root: BorrowedFd<'_>, kind: LockKind) -> Vec<Holder> {
    let Ok(dir) = openat(
        root,
        MOUNTS_DIR,
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC | OFlag::O_NOFOLLOW,
        Mode::empty(),
    ) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for name in record_names(dir.as_fd()) {
        let name = name.as_str();
        let Ok(fd) = openat(
            dir.as_fd(),
            name,
            OFlag::O_RDWR | OFlag::O_CLOEXEC | OFlag::O_NOFOLLOW,
            Mode::empty(),
        ) else {
            continue;
        };
        let file = File::from(fd);
        match try_lock(file.as_fd(), kind, true) {
            // Nobody holds it: its mount is gone.
            Ok(true) => {
                let _ = unlinkat(dir.as_fd(), name, UnlinkatFlags::NoRemoveDir);
            }
            Ok(false) => {
                // A record being rewritten (`note_kek`) may read half-written once.
                let read = || {
                    let mut bytes = vec![0u8; 4096];
                    let got = read_record(&file, &mut bytes);
                    serde_json::from_slice::<Holder>(&bytes[..got]).ok()
                };
                // A live mount whose record does not parse still holds the volume: it is
                // listed, saying nothing of its KEK (a retirement then waits for it).
                out.push(read().or_else(read).unwrap_or_else(|| Holder {
                    host: format!("unknown (record {name} unreadable)"),
                    pid: 0,
                    since: 0,
                    mode: ClaimMode::Shared,
                    kek: None,
                }));
            }
            Err(_) => {}
        }
    }
    out
}

/// Writes this mount's record under a temporary name, locks it, then renames it into place,
/// so no reader ever finds a record nobody holds yet.
fn write_record(
    root: BorrowedFd<'_>,
    kind: LockKind,
    mode: ClaimMode,
) -> Result<((File, Holder), String, OwnedFd)> {
    match mkdirat(root, MOUNTS_DIR, Mode::from_bits_truncate(0o700)) {
        Ok(()) | Err(nix::Error::EEXIST) => {}
        Err(e) => return Err(e.into()),
    }
    let dir = openat(
        root,
        MOUNTS_DIR,
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC | OFlag::O_NOFOLLOW,
        Mode::empty(),
    )?;
    let name = crate::format::hex(&crate::crypto::random_array::<8>().map_err(CoordError::Random)?);
    let temp = format!(".{name}.tmp");
    let fd = openat(
        dir.as_fd(),
        temp.as_str(),
        OFlag::O_RDWR | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_CLOEXEC,
        Mode::from_bits_truncate(0o600),
    )?;
    let record = File::from(fd);
    let holder = Holder {
        host: this_host(),
        pid: std::process::id(),
        since: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs(),
        mode,
        kek: None,
    };
    let json = serde_json::to_vec(&holder).expect("a record serializes");
    let placed = record
        .write_all_at(&json, 0)
        .map_err(CoordError::from)
        .and_then(|()| match try_lock(record.as_fd(), kind, true) {
            Ok(true) => Ok(()),
            Ok(false) => Err(CoordError::Refused("own mount record is locked".into())),
            Err(e) => Err(e.into()),
        })
        .and_then(|()| {
            let final_name = format!("{name}.json");
            renameat2(
                dir.as_fd(),
                temp.as_str(),
                dir.as_fd(),
                final_name.as_str(),
                RenameFlags::empty(),
            )?;
            Ok(final_name)
        });
    match placed {
        Ok(final_name) => Ok(((record, holder), final_name, dir)),
        Err(e) => {
            let _ = unlinkat(dir.as_fd(), temp.as_str(), UnlinkatFlags::NoRemoveDir);
            Err(e)
        }
    }
}

/// The names of the mount records in `dir` (a `sealfs.mounts` directory), read through a
/// descriptor of its own so the listing starts at the beginning.
fn record_names(dir: BorrowedFd<'_>) -> Vec<String> {
    let Ok(fd) = openat(
        dir,
        ".",
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    ) else {
        return Vec::new();
    };
    let Ok(mut listing) = nix::dir::Dir::from_fd(fd) else {
        return Vec::new();
    };
    listing
        .iter()
        .flatten()
        .filter_map(|e| e.file_name().to_str().ok().map(str::to_owned))
        .filter(|n| n.ends_with(".json"))
        .collect()
}

/// A record's bytes, as many as there are (a record is one small write).
fn read_record(file: &File, bytes: &mut [u8]) -> usize {
    let mut got = 0;
    while got < bytes.len() {
        match file.read_at(&mut bytes[got..], got as u64) {
            Ok(0) | Err(_) => break,
            Ok(n) => got += n,
        }
    }
    got
}

/// Takes a whole-file lock without waiting: Ok(false) when someone else holds a conflicting one.
fn try_lock(fd: BorrowedFd<'_>, kind: LockKind, exclusive: bool) -> nix::Result<bool> {
    let result = match kind {
        LockKind::Ofd => {
            let kind = if exclusive {
                libc::F_WRLCK
            } else {
                libc::F_RDLCK
            };
            ofd_lock(fd, kind, 0, 0, false)
        }
        LockKind::Flock => {
            let how = if exclusive {
                libc::LOCK_EX
            } else {
                libc::LOCK_SH
            } | libc::LOCK_NB;
            // SAFETY: a valid descriptor; flock(2) takes no pointers.
            let rc = unsafe { libc::flock(std::os::fd::AsRawFd::as_raw_fd(&fd), how) };
            if rc == 0 {
                Ok(())
            } else {
                Err(nix::Error::last())
            }
        }
    };
    match result {
        Ok(()) => Ok(true),
        Err(nix::Error::EAGAIN | nix::Error::EACCES) => Ok(false),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn local() -> (tempfile::TempDir, File) {
        let dir = tempfile::tempdir().unwrap();
        let root = File::open(dir.path()).unwrap();
        (dir, root)
    }

    #[test]
    fn exclusive_and_shared_claims_exclude_each_other_and_name_the_holder() {
        for kind in [LockKind::Ofd, LockKind::Flock] {
            claims_exclude_each_other(kind);
        }
    }

    fn claims_exclude_each_other(kind: LockKind) {
        let (_dir, root) = local();
        let first = claim(root.as_fd(), ClaimMode::Exclusive, kind, "mount").unwrap();
        // OFD locks conflict between open file descriptions, in one process too.
        for mode in [ClaimMode::Exclusive, ClaimMode::Shared] {
            let err = claim(root.as_fd(), mode, kind, "mount")
                .map(drop)
                .unwrap_err();
            let text = err.to_string();
            assert!(matches!(err, CoordError::InUse(_)), "{text}");
            assert!(
                text.contains(&format!("pid {}", std::process::id())),
                "{text}"
            );
            assert!(text.contains("exclusive"), "{text}");
        }
        drop(first);
        let a = claim(root.as_fd(), ClaimMode::Shared, kind, "mount").unwrap();
        let b = claim(root.as_fd(), ClaimMode::Shared, kind, "mount").unwrap();
        assert_eq!(live_holders(root.as_fd(), Some(kind)).len(), 2);
        let err = claim(root.as_fd(), ClaimMode::Exclusive, kind, "fsck --repair")
            .map(drop)
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("cannot fsck --repair"), "{err}");
        assert!(err.contains("shared"), "{err}");
        drop((a, b));
        assert!(live_holders(root.as_fd(), Some(kind)).is_empty());
        claim(root.as_fd(), ClaimMode::Exclusive, kind, "mount").unwrap();
    }

    #[test]
    fn a_mount_record_says_which_kek_its_mount_uses() {
        let (_dir, root) = local();
        let kind = LockKind::Ofd;
        let held = claim(root.as_fd(), ClaimMode::Shared, kind, "mount").unwrap();
        assert_eq!(live_holders(root.as_fd(), Some(kind))[0].kek, None);
        let mut record = held.record_updater().unwrap();
        record.note_kek(12345).unwrap();
        assert_eq!(live_holders(root.as_fd(), Some(kind))[0].kek, Some(12345));
        // A shorter record over a longer one still parses (blank padding).
        record.note_kek(3).unwrap();
        let holders = live_holders(root.as_fd(), Some(kind));
        assert_eq!((holders.len(), holders[0].kek), (1, Some(3)));
    }

    #[test]
    fn a_record_left_by_a_dead_mount_is_removed_and_blocks_nobody() {
        let (dir, root) = local();
        let kind = LockKind::Ofd;
        std::fs::create_dir(dir.path().join(MOUNTS_DIR)).unwrap();
        let stale = Holder {
            host: "gone".into(),
            pid: 1,
            since: 0,
            mode: ClaimMode::Exclusive,
            kek: None,
        };
        let path = dir.path().join(MOUNTS_DIR).join("00.json");
        std::fs::write(&path, serde_json::to_vec(&stale).unwrap()).unwrap();
        assert!(live_holders(root.as_fd(), Some(kind)).is_empty());
        assert!(!path.exists());
        claim(root.as_fd(), ClaimMode::Exclusive, kind, "mount").unwrap();
    }
}
