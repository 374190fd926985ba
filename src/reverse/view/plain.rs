//! Resolving plaintext paths: every open goes through openat2 beneath the plaintext root with
//! no symlinks and no mount crossings, so nothing swapped into the tree leads the view outside
//! it. Which entries belong in the view (not the private config, not excluded, not on another
//! filesystem), and finding an entry by its encrypted name.

use std::ffi::{OsStr, OsString};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use fuser::FileType;
use nix::fcntl::{AtFlags, OFlag, OpenHow, ResolveFlag, openat2};
use nix::sys::stat::{FileStat, fstat, fstatat};

use super::ReverseView;
use super::nodes::{NodeKind, virtual_node};
use crate::format::config::{CONFIG_FILE, REVERSE_PRIVATE_PREFIX};
use crate::format::name::{BackingName, EntryKind, LONG_NAME_SUFFIX, LONG_PREFIX, classify_entry};
use crate::shell::attr::{entry_type, file_type};
use crate::volume::headers::HEADERS_DIR;
use crate::volume::names::{decrypt_encoded, encrypt_name};
use crate::volume::{Result, VolumeError};

impl ReverseView {
    pub(super) fn open_beneath(&self, relative: &Path, flags: OFlag) -> Result<OwnedFd> {
        let path = if relative.as_os_str().is_empty() {
            Path::new(".")
        } else {
            relative
        };
        let how = OpenHow::new()
            .flags(flags | OFlag::O_CLOEXEC | OFlag::O_NOFOLLOW)
            .resolve(
                ResolveFlag::RESOLVE_BENEATH
                    | ResolveFlag::RESOLVE_NO_SYMLINKS
                    | ResolveFlag::RESOLVE_NO_XDEV,
            );
        openat2(self.root.as_fd(), path, how).map_err(|e| match e {
            // A symlink or a mount point where a directory was: not part of the view.
            nix::Error::ELOOP | nix::Error::EXDEV => VolumeError::NotFound,
            e => e.into(),
        })
    }

    pub(super) fn stat_plain(&self, relative: &Path) -> Result<FileStat> {
        let fd = self.open_beneath(relative, OFlag::O_PATH)?;
        Ok(fstat(&fd)?)
    }

    pub(super) fn hidden(&self, parent: &Path, name: &OsStr) -> bool {
        parent.as_os_str().is_empty()
            && name
                .as_bytes()
                .starts_with(REVERSE_PRIVATE_PREFIX.as_bytes())
    }

    pub(super) fn lookup_plain(
        &self,
        dir: &Path,
        name: &OsStr,
    ) -> Result<(u64, NodeKind, PathBuf)> {
        let at_root = dir.as_os_str().is_empty();
        if at_root && name == CONFIG_FILE {
            return Ok((virtual_node(b"config"), NodeKind::Config, PathBuf::new()));
        }
        if at_root && name == HEADERS_DIR {
            return Ok((
                virtual_node(b"headers"),
                NodeKind::HeadersRoot,
                PathBuf::new(),
            ));
        }
        let text = name.to_str().ok_or(VolumeError::NotFound)?;
        let plain = match classify_entry(text) {
            EntryKind::Encrypted(encoded) => decrypt_encoded(&self.volume_keys().names, encoded)
                .map_err(|_| VolumeError::NotFound)?,
            EntryKind::Long(hashed) => self.find_long(dir, hashed)?,
            EntryKind::Internal => {
                let hashed = text
                    .strip_suffix(LONG_NAME_SUFFIX)
                    .filter(|h| h.starts_with(LONG_PREFIX))
                    .ok_or(VolumeError::NotFound)?;
                let plain = self.find_long(dir, hashed)?;
                let path = dir.join(&plain);
                self.visible(&path, &plain)?;
                let node = virtual_node(&[b"sidecar\0", path.as_os_str().as_bytes()].concat());
                return Ok((node, NodeKind::LongSidecar, path));
            }
        };
        if self.hidden(dir, &plain) {
            return Err(VolumeError::NotFound);
        }
        let path = dir.join(&plain);
        let stat = self.visible(&path, &plain)?;
        Ok((self.plain_node(stat.st_ino), NodeKind::Plain, path))
    }

    /// The stat of a plaintext entry that is part of the view; ENOENT for one that is not.
    pub(super) fn visible(&self, path: &Path, name: &OsStr) -> Result<FileStat> {
        let parent = path.parent().unwrap_or(Path::new(""));
        if self.hidden(parent, name) {
            return Err(VolumeError::NotFound);
        }
        // A mount point anywhere on the path fails to resolve (RESOLVE_NO_XDEV): st_dev is
        // not compared, as overlayfs reports the underlying filesystem's for files.
        let stat = self.stat_plain(path)?;
        let is_dir = file_type(stat.st_mode) == FileType::Directory;
        if self.excludes.excludes(path, is_dir) {
            return Err(VolumeError::NotFound);
        }
        Ok(stat)
    }

    /// The plaintext name in `dir` whose encrypted name is the long entry `hashed`.
    pub(super) fn find_long(&self, dir: &Path, hashed: &str) -> Result<OsString> {
        for (name, _, _) in self.list_plain(dir)? {
            if let Ok(BackingName::Long { hashed: h, .. }) =
                encrypt_name(&self.volume_keys().names, &name)
                && h == hashed
            {
                return Ok(name);
            }
        }
        Err(VolumeError::NotFound)
    }

    /// The entries of a plaintext directory that belong in the view: (name, type, inode).
    pub(super) fn list_plain(&self, dir: &Path) -> Result<Vec<(OsString, FileType, u64)>> {
        let fd = self.open_beneath(dir, OFlag::O_RDONLY | OFlag::O_DIRECTORY)?;
        let mut handle = nix::dir::Dir::from_fd(fd)?;
        let dir_fd = unsafe { BorrowedFd::borrow_raw(handle.as_raw_fd()) };
        let mut out = Vec::new();
        for entry in handle.iter() {
            let entry = entry?;
            let name = OsStr::from_bytes(entry.file_name().to_bytes());
            if name == "." || name == ".." || self.hidden(dir, name) {
                continue;
            }
            let known = entry.file_type().map(entry_type);
            // Directories are stat'ed to leave out other filesystems mounted on them.
            let kind = match known {
                Some(kind) if kind != FileType::Directory => kind,
                _ => match fstatat(dir_fd, name, AtFlags::AT_SYMLINK_NOFOLLOW) {
                    Ok(st) if st.st_dev == self.root_dev => file_type(st.st_mode),
                    _ => continue,
                },
            };
            let path = dir.join(name);
            if self.excludes.excludes(&path, kind == FileType::Directory) {
                continue;
            }
            out.push((name.to_os_string(), kind, entry.ino()));
        }
        Ok(out)
    }
}
