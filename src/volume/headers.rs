//! Sidecar headers, one small file per data file, addressed by file id:
//! `sealfs.headers/<first two hex digits>/<32 hex digits>`. Written once, in place under its
//! new name (O_EXCL), and never rewritten in place: replacements go through a temp file and an
//! atomic exchange.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};

use nix::fcntl::{OFlag, RenameFlags, openat, renameat2};
use nix::sys::stat::{Mode, mkdirat};
use nix::unistd::{UnlinkatFlags, unlinkat};

use super::error::{Result, VolumeError};
use crate::format::header::FileHeader;
use crate::format::{Id, id_from_hex, id_to_hex};

pub const HEADERS_DIR: &str = "sealfs.headers";
const MAX_HEADER_FILE: u64 = 64 * 1024;
/// `<id>.holes`: a data file's hole map, beside its header.
pub const HOLES_SUFFIX: &str = ".holes";
const TMP_SUFFIX: &str = ".tmp";
/// Bound on a hole map sidecar read: its range count bound plus framing.
const MAX_HOLES_FILE: u64 = 16 * crate::format::holes::MAX_RANGES as u64 + 1024;

/// What tells one version of a hole map sidecar from the next (it is replaced by rename, so
/// its inode changes with every write).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HolesStamp {
    ino: u64,
    size: i64,
    mtime: (i64, i64),
}

impl HolesStamp {
    fn of(st: &nix::sys::stat::FileStat) -> HolesStamp {
        HolesStamp {
            ino: st.st_ino,
            size: st.st_size,
            mtime: (st.st_mtime, st.st_mtime_nsec),
        }
    }
}

/// `commit_staged` without RENAME_EXCHANGE: replaces `path` by `tmp` with a plain rename if
/// `path` is there. A file deleted between the look and the rename gets its header back as an
/// orphan, which fsck reports and `--repair` removes; nothing readable is ever lost.
fn replace_if_present(dir: BorrowedFd<'_>, tmp: &str, path: &str) -> Result<bool> {
    match nix::sys::stat::fstatat(dir, path, nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW) {
        Ok(_) => {}
        Err(nix::Error::ENOENT) => return Ok(false),
        Err(e) => return Err(e.into()),
    }
    renameat2(dir, tmp, dir, path, RenameFlags::empty())?;
    Ok(true)
}

/// What `HeaderStore::list` found.
#[derive(Debug, Default)]
pub struct HeaderListing {
    pub ids: Vec<Id>,
    /// `hh/<id>.tmp`: a replacement staged by a rewrap that a crash interrupted (older
    /// versions also wrote new headers there first).
    pub temps: Vec<String>,
    /// `hh/<id>.holes`: hole maps, by file id.
    pub holes: Vec<Id>,
    /// Anything else, as `hh` or `hh/name`.
    pub strays: Vec<String>,
}

/// `<id>.holes.<8 hex>`, the stem of a hole map being written.
fn is_holes_temp(stem: &str) -> bool {
    stem.split_once(HOLES_SUFFIX).is_some_and(|(id, rest)| {
        id_from_hex(id).is_ok()
            && rest.len() == 9
            && rest.starts_with('.')
            && rest[1..].bytes().all(|b| b.is_ascii_hexdigit())
    })
}

pub struct HeaderStore {
    dir: OwnedFd,
    /// Which `hh` directories this store has seen exist (by the id's first byte): creating a
    /// header then costs no mkdir. sealfs never removes them (one removed from outside is made
    /// again by `create`). Headers are reached by `hh/<id>` paths from `dir`, so the hot path
    /// opens no directory and holds no descriptor for them.
    made: Box<[AtomicBool]>,
}

impl HeaderStore {
    pub fn open(volume_root: impl AsFd) -> Result<Self> {
        let dir = openat(
            volume_root,
            HEADERS_DIR,
            OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )?;
        Ok(HeaderStore {
            dir,
            made: (0..256).map(|_| AtomicBool::new(false)).collect(),
        })
    }

    /// `hh`: the id's first byte in hex, the first two digits of its name.
    fn subdir_name(file_id: &Id) -> String {
        format!("{:02x}", file_id[0])
    }

    /// `hh/<id>`, relative to the headers directory.
    fn path_of(file_id: &Id) -> String {
        format!("{}/{}", Self::subdir_name(file_id), id_to_hex(file_id))
    }

    fn make_subdir_of(&self, file_id: &Id) -> Result<()> {
        let made = &self.made[usize::from(file_id[0])];
        if made.load(Ordering::Relaxed) {
            return Ok(());
        }
        let sub = Self::subdir_name(file_id);
        match mkdirat(
            self.dir.as_fd(),
            sub.as_str(),
            Mode::from_bits_truncate(0o700),
        ) {
            Ok(()) | Err(nix::Error::EEXIST) => {}
            Err(e) => return Err(e.into()),
        }
        made.store(true, Ordering::Relaxed);
        Ok(())
    }

    pub(super) fn subdir(&self, name: &str) -> Result<OwnedFd> {
        Ok(openat(
            self.dir.as_fd(),
            name,
            OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )?)
    }

    /// Writes a new header (`durable`: fsynced). Straight under its name, with no temp file
    /// and rename: nothing can look the id up before the data file carrying it is linked,
    /// which happens only once this returns, so the name showing a header still being written
    /// exposes nothing (a kill in between leaves an orphan, as a kill before the data file
    /// does; fsck removes both). The rename was a tenth of a create's kernel time on tmpfs.
    /// On failure (a full disk) nothing is left behind.
    pub fn create(&self, header: &FileHeader, durable: bool) -> Result<()> {
        let bytes = header.encode()?;
        self.make_subdir_of(&header.file_id)?;
        let dir = self.dir.as_fd();
        let path = Self::path_of(&header.file_id);
        let written = write_new(dir, &path, &bytes, durable);
        if matches!(&written, Err(VolumeError::Io(e)) if e.raw_os_error() == Some(libc::ENOENT)) {
            // Its `hh` directory was removed behind the mount's back: make it again.
            self.made[usize::from(header.file_id[0])].store(false, Ordering::Relaxed);
            self.make_subdir_of(&header.file_id)?;
            return write_new(dir, &path, &bytes, durable);
        }
        written
    }

    /// Writes `header` to `<id>.tmp` beside the header it will replace, without fsync: a
    /// batch of staged headers is made durable at once (`sync_staged`) before any replaces its
    /// header (`commit_staged`).
    pub fn stage(&self, header: &FileHeader) -> Result<()> {
        let bytes = header.encode()?;
        let tmp = format!("{}.tmp", Self::path_of(&header.file_id));
        write_new(self.dir.as_fd(), &tmp, &bytes, false)
    }

    /// Makes every staged header durable: one syncfs for a whole batch instead of one fsync
    /// per header.
    pub fn sync_staged(&self) -> Result<()> {
        nix::unistd::syncfs(self.dir.as_fd())?;
        Ok(())
    }

    /// Puts a staged (and synced) header in place with an atomic exchange, then unlinks the
    /// old copy. `Ok(false)` when the header is gone: its file was deleted meanwhile, and an
    /// exchange (unlike a rename) never brings a deleted header back. Where the backing store
    /// has no RENAME_EXCHANGE, a rename over a header checked to be there (`replace_if_present`:
    /// a deletion in between leaves an orphan header for fsck). The caller fsyncs the
    /// header directories once it is done (`sync_dirs`).
    pub fn commit_staged(&self, file_id: &Id) -> Result<bool> {
        let dir = self.dir.as_fd();
        let path = Self::path_of(file_id);
        let tmp = format!("{path}.tmp");
        let exchanged = renameat2(
            dir,
            tmp.as_str(),
            dir,
            path.as_str(),
            RenameFlags::RENAME_EXCHANGE,
        );
        let result = match exchanged {
            Ok(()) => Ok(true),
            Err(nix::Error::ENOENT) => Ok(false),
            // NFS and others have no RENAME_EXCHANGE.
            Err(nix::Error::EINVAL | nix::Error::ENOSYS | nix::Error::EOPNOTSUPP) => {
                replace_if_present(dir, &tmp, &path)
            }
            Err(e) => Err(e.into()),
        };
        let _ = unlinkat(dir, tmp.as_str(), UnlinkatFlags::NoRemoveDir);
        result
    }

    /// Every header present, by file id, and what else lies in the header directories: temp
    /// files left by a crash and names that are no header at all. Reads directories only.
    pub fn list(&self) -> Result<HeaderListing> {
        let mut listing = HeaderListing::default();
        for sub in read_names(self.dir.as_fd())? {
            let valid_sub = sub.len() == 2
                && sub
                    .bytes()
                    .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase());
            let dir = match self.subdir(&sub) {
                Ok(dir) if valid_sub => dir,
                _ => {
                    listing.strays.push(sub);
                    continue;
                }
            };
            for name in read_names(dir.as_fd())? {
                let path = format!("{sub}/{name}");
                if let Some(stem) = name.strip_suffix(TMP_SUFFIX)
                    && (id_from_hex(stem).is_ok() || is_holes_temp(stem))
                {
                    listing.temps.push(path);
                    continue;
                }
                if let Some(stem) = name.strip_suffix(HOLES_SUFFIX)
                    && let Ok(id) = id_from_hex(stem)
                    && stem.starts_with(&sub)
                {
                    listing.holes.push(id);
                    continue;
                }
                match id_from_hex(&name) {
                    Ok(id) if name.starts_with(&sub) => listing.ids.push(id),
                    _ => listing.strays.push(path),
                }
            }
        }
        Ok(listing)
    }

    /// Removes `sub/name` found by `list` (a temp file or a stray). Never a directory.
    pub fn remove_listed(&self, path: &str) -> Result<()> {
        let (sub, name) = path
            .split_once('/')
            .ok_or_else(|| VolumeError::Usage(format!("not a header path: {path}")))?;
        let dir = self.subdir(sub)?;
        unlinkat(dir.as_fd(), name, UnlinkatFlags::NoRemoveDir)?;
        Ok(())
    }

    /// fsyncs every header directory, making replaced headers durable.
    pub fn sync_dirs(&self) -> Result<()> {
        for sub in read_names(self.dir.as_fd())? {
            if let Ok(dir) = self.subdir(&sub) {
                File::from(dir).sync_all()?;
            }
        }
        File::from(self.dir.try_clone()?).sync_all()?;
        Ok(())
    }

    /// Held by a mount for its life (shared) and by `fsck --repair` (exclusive): only with no
    /// mount can a header no data file claims be proven an orphan. Never waits.
    pub fn lock_shared(&self) -> Result<nix::fcntl::Flock<File>> {
        self.lock(nix::fcntl::FlockArg::LockSharedNonblock)
    }

    pub fn lock_exclusive(&self) -> Result<nix::fcntl::Flock<File>> {
        self.lock(nix::fcntl::FlockArg::LockExclusiveNonblock)
    }

    fn lock(&self, how: nix::fcntl::FlockArg) -> Result<nix::fcntl::Flock<File>> {
        // A fresh open file description: a dup would share (and on drop release) our lock.
        let fd = openat(
            self.dir.as_fd(),
            ".",
            OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )?;
        nix::fcntl::Flock::lock(File::from(fd), how).map_err(|(_, e)| e.into())
    }

    /// Makes a header written without fsync durable: its data, then its directory entry.
    pub fn sync(&self, file_id: &Id) -> Result<()> {
        let fd = openat(
            self.dir.as_fd(),
            Self::path_of(file_id).as_str(),
            OFlag::O_RDONLY | OFlag::O_CLOEXEC | OFlag::O_NOFOLLOW,
            Mode::empty(),
        )?;
        File::from(fd).sync_all()?;
        self.sync_holes_file(file_id)?;
        File::from(self.subdir(&Self::subdir_name(file_id))?).sync_all()?;
        File::from(self.dir.try_clone()?).sync_all()?;
        Ok(())
    }

    /// `hh/<id>.holes`: the hole map of a version 2 data file (`format::holes`).
    fn holes_path(file_id: &Id) -> String {
        format!("{}{HOLES_SUFFIX}", Self::path_of(file_id))
    }

    /// The hole map sidecar of `file_id` and the stamp it had when read, or `None` where there
    /// is none (no holes).
    pub fn read_holes(&self, file_id: &Id) -> Result<Option<(Vec<u8>, HolesStamp)>> {
        let fd = match openat(
            self.dir.as_fd(),
            Self::holes_path(file_id).as_str(),
            OFlag::O_RDONLY | OFlag::O_CLOEXEC | OFlag::O_NOFOLLOW,
            Mode::empty(),
        ) {
            Ok(fd) => fd,
            Err(nix::Error::ENOENT) => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        let stamp = HolesStamp::of(&nix::sys::stat::fstat(fd.as_fd())?);
        let mut bytes = Vec::new();
        File::from(fd)
            .take(MAX_HOLES_FILE)
            .read_to_end(&mut bytes)?;
        Ok(Some((bytes, stamp)))
    }

    /// The stamp of the hole map sidecar of `file_id` as it is now (`None`: there is none),
    /// to tell whether another mount changed it since it was read.
    pub fn holes_stamp(&self, file_id: &Id) -> Result<Option<HolesStamp>> {
        match nix::sys::stat::fstatat(
            self.dir.as_fd(),
            Self::holes_path(file_id).as_str(),
            nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
        ) {
            Ok(st) => Ok(Some(HolesStamp::of(&st))),
            Err(nix::Error::ENOENT) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Replaces the hole map sidecar of `file_id` atomically (a new file, fdatasynced, renamed
    /// over it), or removes it (`None`: no holes). The rename is not made durable here: `sync`
    /// does that, before the data file's fsync.
    pub fn write_holes(&self, file_id: &Id, bytes: Option<&[u8]>) -> Result<()> {
        let dir = self.dir.as_fd();
        let path = Self::holes_path(file_id);
        let Some(bytes) = bytes else {
            return match unlinkat(dir, path.as_str(), UnlinkatFlags::NoRemoveDir) {
                Ok(()) | Err(nix::Error::ENOENT) => Ok(()),
                Err(e) => Err(e.into()),
            };
        };
        self.make_subdir_of(file_id)?;
        // A name of its own per writer: two mounts replacing one map each write their own
        // (they hold the map lock, but a crashed one may have left its file behind).
        let tmp = format!(
            "{path}.{}{TMP_SUFFIX}",
            crate::format::hex(&crate::crypto::random_array::<4>().map_err(VolumeError::Seal)?)
        );
        // Durable before the rename: a crash must find the old map or the whole new one, never
        // a name whose bytes did not land (found by the power-cut simulator: sqlite's -shm
        // and -wal files read "hole map is truncated" after a cut).
        write_new(dir, &tmp, bytes, true)?;
        let renamed = renameat2(dir, tmp.as_str(), dir, path.as_str(), RenameFlags::empty());
        if renamed.is_err() {
            let _ = unlinkat(dir, tmp.as_str(), UnlinkatFlags::NoRemoveDir);
        }
        Ok(renamed?)
    }

    fn sync_holes_file(&self, file_id: &Id) -> Result<()> {
        match openat(
            self.dir.as_fd(),
            Self::holes_path(file_id).as_str(),
            OFlag::O_RDONLY | OFlag::O_CLOEXEC | OFlag::O_NOFOLLOW,
            Mode::empty(),
        ) {
            Ok(fd) => Ok(File::from(fd).sync_all()?),
            Err(nix::Error::ENOENT) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// The header of `file_id`'s status (`None`: absent).
    pub fn stat(&self, file_id: &Id) -> Option<nix::sys::stat::FileStat> {
        self.stat_of(file_id)
    }

    /// Whether a header for `file_id` is present (whatever it holds).
    pub fn exists(&self, file_id: &Id) -> bool {
        self.stat_of(file_id).is_some()
    }

    /// Whether the header for `file_id` is present and empty: a crash leftover, or a header
    /// a mount is writing this instant (it creates the name, then writes).
    pub fn is_empty(&self, file_id: &Id) -> bool {
        self.stat_of(file_id).is_some_and(|st| st.st_size == 0)
    }

    fn stat_of(&self, file_id: &Id) -> Option<nix::sys::stat::FileStat> {
        nix::sys::stat::fstatat(
            self.dir.as_fd(),
            Self::path_of(file_id).as_str(),
            nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
        )
        .ok()
    }

    pub fn load(&self, file_id: &Id) -> Result<FileHeader> {
        let missing = |e: nix::Error| {
            if e == nix::Error::ENOENT {
                VolumeError::Corrupt(format!("header of file {} is missing", id_to_hex(file_id)))
            } else {
                e.into()
            }
        };
        // A missing `hh` directory is a missing header too (ENOENT either way).
        let fd = openat(
            self.dir.as_fd(),
            Self::path_of(file_id).as_str(),
            OFlag::O_RDONLY | OFlag::O_CLOEXEC | OFlag::O_NOFOLLOW,
            Mode::empty(),
        )
        .map_err(missing)?;
        let mut bytes = Vec::new();
        File::from(fd)
            .take(MAX_HEADER_FILE)
            .read_to_end(&mut bytes)?;
        let header = FileHeader::decode(&bytes).map_err(|e| {
            VolumeError::Corrupt(format!("header of file {}: {e}", id_to_hex(file_id)))
        })?;
        if header.file_id != *file_id {
            return Err(VolumeError::Corrupt(format!(
                "header stored for file {} belongs to file {}",
                id_to_hex(file_id),
                id_to_hex(&header.file_id)
            )));
        }
        Ok(header)
    }

    /// Removes the header of a file whose last link is gone. A header already missing is only
    /// worth a warning: the file it served no longer exists.
    pub fn remove(&self, file_id: &Id) -> Result<()> {
        let path = Self::path_of(file_id);
        // Its hole map first: a crash in between leaves a header without one (no holes), never
        // a hole map without its header.
        let _ = self.write_holes(file_id, None);
        match unlinkat(self.dir.as_fd(), path.as_str(), UnlinkatFlags::NoRemoveDir) {
            Ok(()) => Ok(()),
            Err(nix::Error::ENOENT) => {
                tracing::warn!(file = %id_to_hex(file_id), "header to remove was already gone");
                Ok(())
            }
            Err(e) => Err(e.into()),
        }
    }
}

/// Writes `bytes` to the new file `name` in `dir` (mode 0600, fsynced when `durable`); on
/// failure (a full disk) removes it again.
pub(super) fn write_new(
    dir: BorrowedFd<'_>,
    name: &str,
    bytes: &[u8],
    durable: bool,
) -> Result<()> {
    let written = (|| -> Result<()> {
        // O_EXCL | O_NOFOLLOW: never write through a planted symlink, never into another
        // writer's file (a concurrent rewrap then fails that header, harmlessly).
        let fd = openat(
            dir.as_fd(),
            name,
            OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::from_bits_truncate(0o600),
        )?;
        let mut file = File::from(fd);
        file.write_all(bytes)?;
        if durable {
            file.sync_data()?;
        }
        Ok(())
    })();
    match &written {
        Err(VolumeError::Io(e)) if e.raw_os_error() == Some(libc::EEXIST) => {}
        Err(_) => {
            let _ = unlinkat(dir.as_fd(), name, UnlinkatFlags::NoRemoveDir);
        }
        Ok(()) => {}
    }
    written
}

/// The entry names in a directory, without `.` and `..`.
pub(crate) fn read_names(dir: std::os::fd::BorrowedFd<'_>) -> Result<Vec<String>> {
    Ok(super::tree::list(dir)?
        .into_iter()
        .map(|name| name.to_string_lossy().into_owned())
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::{FileKeys, HeaderKeys, VolumeKeys};
    use std::sync::Arc;

    fn header() -> FileHeader {
        let keys = VolumeKeys::from_keyring([1; 16], VolumeKeys::generate_keyring().unwrap());
        FileKeys::volume_mode(Arc::new(keys.unwrap()))
            .new_header()
            .unwrap()
            .0
    }

    /// The path of a store without RENAME_EXCHANGE: a present header is replaced, a deleted one
    /// is not brought back.
    #[test]
    fn replacing_without_exchange_keeps_deleted_headers_deleted() {
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir(root.path().join(HEADERS_DIR)).unwrap();
        let store = HeaderStore::open(File::open(root.path()).unwrap()).unwrap();
        let old = header();
        store.create(&old, false).unwrap();
        let mut new = header();
        new.file_id = old.file_id;
        store.stage(&new).unwrap();
        let path = HeaderStore::path_of(&old.file_id);
        let tmp = format!("{path}.tmp");
        assert!(replace_if_present(store.dir.as_fd(), &tmp, &path).unwrap());
        assert_eq!(
            store.load(&old.file_id).unwrap().encode().unwrap(),
            new.encode().unwrap()
        );
        store.stage(&old).unwrap();
        store.remove(&old.file_id).unwrap();
        assert!(!replace_if_present(store.dir.as_fd(), &tmp, &path).unwrap());
        assert!(!store.exists(&old.file_id));
    }

    #[test]
    fn headers_round_trip_and_a_removed_directory_is_made_again() {
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir(root.path().join(HEADERS_DIR)).unwrap();
        let store = HeaderStore::open(File::open(root.path()).unwrap()).unwrap();
        let first = header();
        store.create(&first, false).unwrap();
        assert!(store.exists(&first.file_id));
        assert_eq!(store.load(&first.file_id).unwrap().file_id, first.file_id);
        store.remove(&first.file_id).unwrap();
        assert!(!store.exists(&first.file_id));
        let sub = root
            .path()
            .join(HEADERS_DIR)
            .join(HeaderStore::subdir_name(&first.file_id));
        std::fs::remove_dir(&sub).unwrap();
        let mut again = header();
        again.file_id = first.file_id;
        store.create(&again, true).unwrap();
        assert!(store.exists(&again.file_id));
        assert!(matches!(
            store.load(&[0xff; 16]),
            Err(VolumeError::Corrupt(m)) if m.contains("missing")
        ));
    }

    #[test]
    fn a_new_header_is_written_in_place_once_and_never_over_another() {
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir(root.path().join(HEADERS_DIR)).unwrap();
        let store = HeaderStore::open(File::open(root.path()).unwrap()).unwrap();
        let first = header();
        store.create(&first, false).unwrap();
        let listing = store.list().unwrap();
        assert_eq!(listing.ids, vec![first.file_id]);
        assert!(listing.temps.is_empty() && listing.strays.is_empty());
        assert!(!store.is_empty(&first.file_id));
        // The same id again (a collision, or a planted file) fails and keeps the first.
        let mut second = header();
        second.file_id = first.file_id;
        assert!(store.create(&second, false).is_err());
        let kept = store.load(&first.file_id).unwrap();
        assert_eq!(kept.encode().unwrap(), first.encode().unwrap());
        // What a kill between creating the name and writing it leaves: empty, and known so.
        let torn = [7u8; 16];
        store.make_subdir_of(&torn).unwrap();
        File::create(
            root.path()
                .join(HEADERS_DIR)
                .join(HeaderStore::path_of(&torn)),
        )
        .unwrap();
        assert!(store.is_empty(&torn));
        assert!(matches!(store.load(&torn), Err(VolumeError::Corrupt(_))));
    }
}
