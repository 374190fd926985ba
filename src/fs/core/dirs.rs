//! Directories: listings (names decrypted at opendir, served from the handle), and sync.

use std::ffi::OsStr;
use std::fs::File;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::os::unix::ffi::OsStrExt;
use std::sync::Arc;

use nix::fcntl::AtFlags;
use nix::sys::stat::fstatat;

use super::{Handle, SealFs, open_dir};
use crate::shell::attr::{entry_type, file_type};
use crate::volume::{Result, VolumeError, names};

/// A forward listing's entry: node id, type and plaintext name.
pub type DirEntry = crate::shell::DirEntry;

impl SealFs {
    pub fn opendir(&self, ino: u64) -> Result<u64> {
        let node = self.node(ino)?;
        let fd = open_dir(&node)?;
        let mut entries = DirEntry::dots(node.ino);
        let mut dir = nix::dir::Dir::from_fd(fd)?;
        let dir_fd = unsafe { BorrowedFd::borrow_raw(dir.as_raw_fd()) };
        for entry in dir.iter() {
            let entry = entry?;
            let raw = OsStr::from_bytes(entry.file_name().to_bytes());
            if raw == "." || raw == ".." {
                continue;
            }
            let name = match names::decrypt_entry(&self.volume.keys, dir_fd, raw) {
                Ok(Some(name)) => name,
                Ok(None) => continue,
                Err(e) => {
                    tracing::error!(entry = ?raw, error = %e, "skipping a directory entry whose name does not decrypt");
                    continue;
                }
            };
            let kind = match entry.file_type() {
                Some(t) => entry_type(t),
                None => match fstatat(dir_fd, raw, AtFlags::AT_SYMLINK_NOFOLLOW) {
                    Ok(st) => file_type(st.st_mode),
                    Err(_) => continue,
                },
            };
            entries.push(DirEntry {
                ino: self.inodes.node_id(entry.ino()),
                kind,
                name,
                target: (),
            });
        }
        Ok(self.add_handle(Handle::Dir(Arc::new(entries))))
    }

    pub fn dir_entries(&self, fh: u64) -> Result<Arc<Vec<DirEntry>>> {
        match crate::sync::lock(&self.handles).get(&fh) {
            Some(Handle::Dir(entries)) => Ok(entries.clone()),
            _ => Err(VolumeError::BadHandle),
        }
    }

    pub fn releasedir(&self, fh: u64) {
        crate::sync::lock(&self.handles).remove(&fh);
    }

    pub fn fsyncdir(&self, ino: u64) -> Result<()> {
        let node = self.node(ino)?;
        let fd = open_dir(&node)?;
        File::from(fd).sync_all()?;
        Ok(())
    }

    pub fn statfs(&self) -> Result<nix::sys::statvfs::Statvfs> {
        Ok(nix::sys::statvfs::fstatvfs(&self.volume.root)?)
    }
}
