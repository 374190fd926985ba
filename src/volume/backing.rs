//! What the filesystem under a cipher dir can do, found by trying it in a scratch directory
//! (`sealfs.probe.<random>`, removed afterwards) at init, at every mount and by `sealfs info`.
//! Distributed and FUSE filesystems differ from ext4 in ways that lose data silently: on
//! JuiceFS 1.4 a file made with O_TMPFILE and linked with linkat(2) is dropped when its last
//! descriptor closes, though both calls report success. sealfs trusts no feature it has not
//! seen work here (O_TMPFILE it tries only on local filesystems), picks a fallback for each one
//! missing, and refuses to run without the few it cannot do without.

use std::fs::File;
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileExt;

use nix::fcntl::{AT_FDCWD, AtFlags, OFlag, RenameFlags, openat, renameat2};
use nix::sys::stat::{Mode, fstat, mkdirat};
use nix::unistd::{UnlinkatFlags, linkat, unlinkat};
use serde::Serialize;

use super::{Result, VolumeError, proc_fd_path};
use crate::coord::LockKind;
use crate::format::hex;

/// The prefix of the scratch directory a probe works in; fsck treats a leftover one (from a
/// probe killed midway) as garbage.
pub const PROBE_PREFIX: &str = "sealfs.probe.";

/// How a new data file gets its name, best first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum CreateMethod {
    /// O_TMPFILE, preamble written, then linkat: the name appears with its preamble in place.
    TmpfileLink,
    /// Made under a temporary name (`sealfs.new.<random>`), preamble written, then
    /// renameat2(RENAME_NOREPLACE) onto its name: as atomic, and no existing name is replaced.
    TempRename,
    /// Made under its own name with O_EXCL, preamble written after: a crash in between leaves
    /// a file without a preamble, which fsck reports and `--repair` moves to lost+found.
    Exclusive,
}

/// What the probe found. `probed` is false when the cipher dir could not be written to (a
/// read-only snapshot opened by fsck or info): then nothing is assumed to work.
#[derive(Clone, Debug, Serialize)]
pub struct Backing {
    /// The backing filesystem's type as /proc/self/mountinfo names it (ext4, tmpfs,
    /// fuse.juicefs, nfs4, ceph...).
    pub fs_type: String,
    pub probed: bool,
    /// O_TMPFILE files linked into place are still there once closed (tried on local
    /// filesystems only).
    pub tmpfile_link: bool,
    pub rename_noreplace: bool,
    pub rename_exchange: bool,
    pub hard_links: bool,
    /// O_CREAT|O_EXCL refuses an existing name. Required: headers rely on it.
    pub exclusive_create: bool,
    pub flock: bool,
    /// Open-file-description byte-range locks (F_OFD_SETLK).
    pub ofd_locks: bool,
    pub user_xattrs: bool,
    pub fallocate: bool,
}

impl Backing {
    /// What is assumed of a cipher dir that could not be probed: nothing.
    fn unprobed(fs_type: String) -> Self {
        Backing {
            fs_type,
            probed: false,
            tmpfile_link: false,
            rename_noreplace: false,
            rename_exchange: false,
            hard_links: false,
            exclusive_create: false,
            flock: false,
            ofd_locks: false,
            user_xattrs: false,
            fallocate: false,
        }
    }

    /// How the claim and mount records are locked here: OFD locks where the probe saw them
    /// (or could not look: a read-only cipher dir), else flock; None where the store has
    /// neither.
    pub fn lock_kind(&self) -> Option<LockKind> {
        if self.ofd_locks || !self.probed {
            Some(LockKind::Ofd)
        } else if self.flock {
            Some(LockKind::Flock)
        } else {
            None
        }
    }

    /// `lock_kind`, or the refusal a claim gets where the store has no locks at all.
    pub fn claim_lock_kind(&self) -> Result<LockKind> {
        self.lock_kind().ok_or_else(|| {
            VolumeError::Usage(format!(
                "the backing filesystem ({}) has neither byte-range locks nor flock: sealfs cannot tell whether another host mounts this volume",
                self.fs_type
            ))
        })
    }

    pub fn create_method(&self) -> CreateMethod {
        if self.tmpfile_link {
            CreateMethod::TmpfileLink
        } else if self.rename_noreplace {
            CreateMethod::TempRename
        } else {
            CreateMethod::Exclusive
        }
    }

    /// The features this backing store lacks, and what sealfs does instead, one phrase each.
    pub fn fallbacks(&self) -> Vec<&'static str> {
        if !self.probed {
            return vec!["not probed (the cipher dir is not writable)"];
        }
        let mut out = Vec::new();
        if !self.tmpfile_link {
            out.push(match self.create_method() {
                CreateMethod::TempRename => {
                    "O_TMPFILE + linkat not used: new files are made under a temporary name and renamed"
                }
                _ => "O_TMPFILE + linkat not used: new files are made with O_EXCL",
            });
        }
        if !self.rename_exchange {
            out.push("no RENAME_EXCHANGE: renames that exchange two names are refused");
        }
        if !self.user_xattrs {
            out.push("no user xattrs: extended attributes are refused (EOPNOTSUPP)");
        }
        if !self.fallocate {
            out.push(
                "no fallocate: space is not reserved before writes (a full disk can tear a block)",
            );
        }
        if !self.flock {
            out.push("no flock on the backing store");
        }
        if !self.ofd_locks {
            out.push("no byte-range (OFD) locks on the backing store");
        }
        out
    }

    /// Refuses a backing store sealfs cannot run on safely, in one line naming what is missing.
    pub fn require_usable(&self, cipher_dir: &std::path::Path) -> Result<()> {
        if self.probed && !self.exclusive_create {
            return Err(VolumeError::Usage(format!(
                "{} is on {}, which does not honour O_EXCL (exclusive create): sealfs cannot keep file headers safe there",
                cipher_dir.display(),
                self.fs_type
            )));
        }
        Ok(())
    }

    /// Whether every mount of the cipher dir goes through this host's page cache (a local
    /// filesystem): then a descriptor opened before another mount's write sees it, and no
    /// flush is needed to show it. Shared mounts of a local cipher dir skip both.
    pub fn coherent(&self) -> bool {
        is_local(&self.fs_type)
    }

    /// Whether an overwrite of a file's allocated blocks, once written back
    /// (`sync_file_range`), is made durable by the device flush that any fsync on the same
    /// filesystem issues: ext4 and XFS overwrite in place and flush the device on every
    /// fsync (with barriers, their default). Not so on copy-on-write filesystems (btrfs, ZFS:
    /// an overwrite is new metadata) nor on network or FUSE ones. The undo journal rides its
    /// carried-over copies on the data file's flush where this holds.
    pub fn flush_covers_overwrites(&self) -> bool {
        matches!(self.fs_type.as_str(), "ext4" | "xfs")
    }

    /// Shared mounts keep writes from several hosts apart, and forward programs' locks, with
    /// OFD byte-range locks on the backing files: without them, `-o shared` is refused.
    pub fn require_shareable(&self, cipher_dir: &std::path::Path) -> Result<()> {
        if self.probed && !self.ofd_locks {
            return Err(VolumeError::Usage(format!(
                "{} is on {}, which has no byte-range (OFD) locks: -o shared needs them to keep writes from several hosts apart",
                cipher_dir.display(),
                self.fs_type
            )));
        }
        if self.fs_type == "fuse.glusterfs"
            && let Some((volume, on)) = super::gluster::caches_to_turn_off(cipher_dir)
            && !on.is_empty()
        {
            let commands: Vec<String> = on
                .iter()
                .map(|option| format!("gluster volume set {volume} {option} off"))
                .collect();
            return Err(VolumeError::Usage(format!(
                "{} is on GlusterFS volume {volume}, whose client caches would serve this host what another changed: for -o shared, run `{}` and remount the GlusterFS clients",
                cipher_dir.display(),
                commands.join("; ")
            )));
        }
        Ok(())
    }
}

/// Makes this host's view of a backing file on a distributed filesystem current, after the
/// lock: its size and times asked of the filesystem's client (statx with AT_STATX_FORCE_SYNC;
/// a FUSE client's attributes are otherwise cached for a while, and a stale size puts the end
/// of file, and so the block a write re-seals, in the wrong place), and this kernel's cached
/// pages of it dropped (a FUSE client such as GlusterFS's lets the kernel keep them across
/// opens). The file was just opened: its pages are clean.
pub fn refresh(file: &std::fs::File) {
    use std::os::fd::AsRawFd;
    // SAFETY: a valid fd, an empty C path with AT_EMPTY_PATH, and a statx buffer.
    let mut stx: libc::statx = unsafe { std::mem::zeroed() };
    let rc = unsafe {
        libc::statx(
            file.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_EMPTY_PATH | libc::AT_STATX_FORCE_SYNC,
            libc::STATX_SIZE | libc::STATX_MTIME,
            &mut stx,
        )
    };
    if rc != 0 {
        tracing::debug!(error = %std::io::Error::last_os_error(), "could not refresh a backing file's size");
    }
    if let Err(e) = nix::fcntl::posix_fadvise(
        file,
        0,
        0,
        nix::fcntl::PosixFadviseAdvice::POSIX_FADV_DONTNEED,
    ) {
        tracing::debug!(error = %e, "could not drop a backing file's cached pages");
    }
}

/// Probes the filesystem holding the directory `root`.
pub fn probe(root: BorrowedFd<'_>) -> Backing {
    let fs_type = fs_type(root).unwrap_or_else(|| "unknown".into());
    let scratch = match random_name(PROBE_PREFIX) {
        Ok(name) => name,
        Err(_) => return Backing::unprobed(fs_type),
    };
    if mkdirat(root, scratch.as_str(), Mode::from_bits_truncate(0o700)).is_err() {
        return Backing::unprobed(fs_type);
    }
    let dir = openat(
        root,
        scratch.as_str(),
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::empty(),
    );
    let found = match &dir {
        Ok(dir) => run_probes(dir.as_fd(), fs_type.clone()),
        Err(_) => Backing::unprobed(fs_type),
    };
    // Some distributed filesystems finish removing a file after unlink returns (JuiceFS
    // still counts it in the directory for a moment): retry for up to a second.
    for attempt in 0..20 {
        if let Ok(dir) = &dir {
            empty_dir(dir.as_fd());
        }
        match unlinkat(root, scratch.as_str(), UnlinkatFlags::RemoveDir) {
            Err(nix::Error::ENOTEMPTY) if attempt < 19 => {
                std::thread::sleep(std::time::Duration::from_millis(50))
            }
            Err(e) => {
                let left = dir
                    .as_ref()
                    .map(|d| names_in(d.as_fd()))
                    .unwrap_or_default();
                tracing::warn!(dir = %scratch, error = %e, ?left, "could not remove the backing-store probe directory");
                break;
            }
            Ok(()) => break,
        }
    }
    found
}

/// Local filesystems: every mount on this host sees them through one page cache, and they
/// are where O_TMPFILE is worth probing. On network and FUSE filesystems it is not tried at all: JuiceFS 1.4.2 drops a linked-in O_TMPFILE file when it is closed and
/// leaves its name behind as a dangling entry (readdir hides it, create says EEXIST, unlink
/// ENOENT, the directory can no longer be removed), so even probing it would leave damage.
fn is_local(fs_type: &str) -> bool {
    matches!(
        fs_type,
        "ext2"
            | "ext3"
            | "ext4"
            | "xfs"
            | "btrfs"
            | "tmpfs"
            | "f2fs"
            | "zfs"
            | "overlay"
            | "bcachefs"
            | "ramfs"
            | "jfs"
    )
}

fn run_probes(dir: BorrowedFd<'_>, fs_type: String) -> Backing {
    Backing {
        probed: true,
        exclusive_create: exclusive_create(dir),
        tmpfile_link: is_local(&fs_type) && tmpfile_link_kept(dir),
        rename_noreplace: rename_noreplace(dir),
        rename_exchange: rename_exchange(dir),
        hard_links: hard_links(dir),
        flock: flock(dir),
        ofd_locks: ofd_locks(dir),
        user_xattrs: user_xattrs(dir),
        fallocate: fallocate(dir),
        fs_type,
    }
}

/// A name that no other process (on this host or another) picks: prefix + 64 random bits.
pub fn random_name(prefix: &str) -> Result<String> {
    let bytes: [u8; 8] = crate::crypto::random_array().map_err(|e| VolumeError::Keys(e.into()))?;
    Ok(format!("{prefix}{}", hex(&bytes)))
}

fn create(dir: BorrowedFd<'_>, name: &str, contents: &[u8]) -> nix::Result<File> {
    let fd = openat(
        dir,
        name,
        OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_RDWR | OFlag::O_CLOEXEC,
        Mode::from_bits_truncate(0o600),
    )?;
    let file = File::from(fd);
    file.write_all_at(contents, 0).map_err(io_to_nix)?;
    Ok(file)
}

fn io_to_nix(e: std::io::Error) -> nix::Error {
    nix::Error::from_raw(e.raw_os_error().unwrap_or(libc::EIO))
}

/// The contents of `name` in `dir`, opened afresh (not through a cached descriptor).
fn contents(dir: BorrowedFd<'_>, name: &str) -> Option<Vec<u8>> {
    let fd = openat(
        dir,
        name,
        OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .ok()?;
    let file = File::from(fd);
    let mut buf = vec![0u8; 64];
    let got = crate::io::read_full_at(&file, &mut buf, 0).ok()?;
    buf.truncate(got);
    Some(buf)
}

/// Whether `name` is in a fresh listing of `dir` (readdir reaches the filesystem; a lookup
/// may be answered from the kernel's dentry cache).
fn listed(dir: BorrowedFd<'_>, name: &str) -> bool {
    names_in(dir)
        .iter()
        .any(|n| n.as_bytes() == name.as_bytes())
}

fn exclusive_create(dir: BorrowedFd<'_>) -> bool {
    create(dir, "excl", b"1").is_ok()
        && matches!(create(dir, "excl", b"2"), Err(nix::Error::EEXIST))
        && contents(dir, "excl").as_deref() == Some(b"1")
}

/// The way `Volume::create_data_file` uses O_TMPFILE, checked after the descriptor closes.
fn tmpfile_link_kept(dir: BorrowedFd<'_>) -> bool {
    let Ok(fd) = openat(
        dir,
        ".",
        OFlag::O_TMPFILE | OFlag::O_RDWR | OFlag::O_CLOEXEC,
        Mode::from_bits_truncate(0o600),
    ) else {
        return false;
    };
    let file = File::from(fd);
    if file.write_all_at(b"kept", 0).is_err()
        || link_open_file(file.as_fd(), dir, "tmpfile").is_err()
    {
        return false;
    }
    drop(file);
    listed(dir, "tmpfile") && contents(dir, "tmpfile").as_deref() == Some(b"kept")
}

/// Gives the open (possibly unnamed) file `fd` the name `name` in `dir`, through its
/// /proc/self/fd link (AT_EMPTY_PATH needs CAP_DAC_READ_SEARCH).
pub fn link_open_file(fd: BorrowedFd<'_>, dir: BorrowedFd<'_>, name: &str) -> nix::Result<()> {
    linkat(
        AT_FDCWD,
        proc_fd_path(fd).as_path(),
        dir,
        name,
        AtFlags::AT_SYMLINK_FOLLOW,
    )
}

fn rename_noreplace(dir: BorrowedFd<'_>) -> bool {
    create(dir, "r1", b"r1").is_ok()
        && create(dir, "r2", b"r2").is_ok()
        && matches!(
            renameat2(dir, "r1", dir, "r2", RenameFlags::RENAME_NOREPLACE),
            Err(nix::Error::EEXIST)
        )
        && contents(dir, "r2").as_deref() == Some(b"r2")
        && renameat2(dir, "r1", dir, "r3", RenameFlags::RENAME_NOREPLACE).is_ok()
        && listed(dir, "r3")
        && !listed(dir, "r1")
}

fn rename_exchange(dir: BorrowedFd<'_>) -> bool {
    create(dir, "x1", b"x1").is_ok()
        && create(dir, "x2", b"x2").is_ok()
        && renameat2(dir, "x1", dir, "x2", RenameFlags::RENAME_EXCHANGE).is_ok()
        && contents(dir, "x1").as_deref() == Some(b"x2")
        && contents(dir, "x2").as_deref() == Some(b"x1")
}

fn hard_links(dir: BorrowedFd<'_>) -> bool {
    create(dir, "l1", b"l1").is_ok()
        && linkat(dir, "l1", dir, "l2", AtFlags::empty()).is_ok()
        && contents(dir, "l2").as_deref() == Some(b"l1")
}

fn open_rw(dir: BorrowedFd<'_>, name: &str) -> Option<File> {
    create(dir, name, b"lock").ok()
}

fn flock(dir: BorrowedFd<'_>) -> bool {
    let Some(file) = open_rw(dir, "flock") else {
        return false;
    };
    nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusiveNonblock).is_ok()
}

fn ofd_locks(dir: BorrowedFd<'_>) -> bool {
    let Some(file) = open_rw(dir, "ofd") else {
        return false;
    };
    crate::coord::file_locks::ofd_lock(file.as_fd(), libc::F_WRLCK, 0, 4096, false).is_ok()
}

fn user_xattrs(dir: BorrowedFd<'_>) -> bool {
    let Some(file) = open_rw(dir, "xattr") else {
        return false;
    };
    super::backing_xattrs::XattrTarget::new(file.as_fd())
        .set(b"user.sealfs.probe", b"1", 0)
        .is_ok()
}

fn fallocate(dir: BorrowedFd<'_>) -> bool {
    let Some(file) = open_rw(dir, "fallocate") else {
        return false;
    };
    nix::fcntl::fallocate(
        file.as_fd(),
        nix::fcntl::FallocateFlags::FALLOC_FL_KEEP_SIZE,
        0,
        8192,
    )
    .is_ok()
}

/// The names in `dir`, but "." and "..".
pub(crate) fn names_in(dir: BorrowedFd<'_>) -> Vec<std::ffi::OsString> {
    super::tree::list(dir).unwrap_or_default()
}

/// Removes the files in `dir` (a probe makes no subdirectories).
pub(crate) fn empty_dir(dir: BorrowedFd<'_>) {
    for name in names_in(dir) {
        let _ = unlinkat(dir, name.as_os_str(), UnlinkatFlags::NoRemoveDir);
    }
}

/// The type of the filesystem holding `dir`, from /proc/self/mountinfo (its device number
/// against each mount's); FUSE filesystems show their subtype (fuse.juicefs).
fn fs_type(dir: BorrowedFd<'_>) -> Option<String> {
    let st = fstat(dir).ok()?;
    let dev = format!(
        "{}:{}",
        nix::sys::stat::major(st.st_dev),
        nix::sys::stat::minor(st.st_dev)
    );
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    mountinfo.lines().rev().find_map(|line| {
        let mut fields = line.split(' ');
        if fields.nth(2)? != dev {
            return None;
        }
        let (_, after) = line.split_once(" - ")?;
        after.split(' ').next().map(str::to_string)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_local_filesystem_has_everything_and_the_probe_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let root = File::open(dir.path()).unwrap();
        let found = probe(root.as_fd());
        assert!(found.probed);
        assert!(found.exclusive_create && found.tmpfile_link && found.rename_noreplace);
        assert!(found.rename_exchange && found.hard_links && found.flock && found.ofd_locks);
        assert!(found.fallocate);
        assert_eq!(found.create_method(), CreateMethod::TmpfileLink);
        assert_ne!(found.fs_type, "unknown");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[test]
    fn a_read_only_directory_is_reported_unprobed() {
        let dir = tempfile::tempdir().unwrap();
        // A file is not a directory: mkdirat below it fails like on a read-only mount.
        let file = dir.path().join("f");
        std::fs::write(&file, b"").unwrap();
        let root = File::open(&file).unwrap();
        let found = probe(root.as_fd());
        assert!(!found.probed);
        assert_eq!(found.create_method(), CreateMethod::Exclusive);
        assert!(found.require_usable(dir.path()).is_ok());
    }

    #[test]
    fn fallbacks_name_what_is_missing() {
        let mut found = Backing::unprobed("fuse.juicefs".into());
        found.probed = true;
        found.exclusive_create = true;
        found.rename_noreplace = true;
        found.rename_exchange = true;
        found.flock = true;
        found.ofd_locks = true;
        found.fallocate = true;
        assert_eq!(found.create_method(), CreateMethod::TempRename);
        let fallbacks = found.fallbacks();
        assert_eq!(fallbacks.len(), 2, "{fallbacks:?}");
        assert!(fallbacks[0].contains("temporary name"));
        assert!(fallbacks[1].contains("xattrs"));
        assert!(found.require_shareable(std::path::Path::new("/x")).is_ok());
        found.ofd_locks = false;
        let refused = found.require_shareable(std::path::Path::new("/x"));
        assert!(refused.unwrap_err().to_string().contains("OFD"));
        found.exclusive_create = false;
        assert!(found.require_usable(std::path::Path::new("/x")).is_err());
    }
}
