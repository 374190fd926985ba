//! Sidecar headers, one small file per data file, addressed by file id:
//! `sealfs.headers/<first two hex digits>/<32 hex digits>`. Written once (temp, fsync,
//! rename without replace) and never rewritten in place.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsFd, OwnedFd};

use nix::fcntl::{OFlag, RenameFlags, openat, renameat2};
use nix::sys::stat::{Mode, mkdirat};
use nix::unistd::{UnlinkatFlags, unlinkat};

use super::error::{Result, VolumeError};
use crate::format::header::FileHeader;
use crate::format::{Id, id_to_hex};

pub const HEADERS_DIR: &str = "sealfs.headers";
const MAX_HEADER_FILE: u64 = 64 * 1024;

pub struct HeaderStore {
    dir: OwnedFd,
}

impl HeaderStore {
    pub fn open(volume_root: impl AsFd) -> Result<Self> {
        let dir = openat(
            volume_root,
            HEADERS_DIR,
            OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )?;
        Ok(HeaderStore { dir })
    }

    fn location(file_id: &Id) -> (String, String) {
        let hex = id_to_hex(file_id);
        (hex[..2].to_string(), hex)
    }

    fn subdir(&self, name: &str, create: bool) -> Result<OwnedFd> {
        if create {
            match mkdirat(self.dir.as_fd(), name, Mode::from_bits_truncate(0o700)) {
                Ok(()) | Err(nix::Error::EEXIST) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(openat(
            self.dir.as_fd(),
            name,
            OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )?)
    }

    /// Writes a new header durably. `durable` = fsync before the rename.
    pub fn create(&self, header: &FileHeader, durable: bool) -> Result<()> {
        let bytes = header.encode()?;
        let (sub, name) = Self::location(&header.file_id);
        let dir = self.subdir(&sub, true)?;
        let tmp = format!("{name}.tmp");
        let fd = openat(
            dir.as_fd(),
            tmp.as_str(),
            OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_TRUNC | OFlag::O_CLOEXEC,
            Mode::from_bits_truncate(0o600),
        )?;
        let mut file = File::from(fd);
        file.write_all(&bytes)?;
        if durable {
            file.sync_data()?;
        }
        drop(file);
        renameat2(
            dir.as_fd(),
            tmp.as_str(),
            dir.as_fd(),
            name.as_str(),
            RenameFlags::RENAME_NOREPLACE,
        )?;
        Ok(())
    }

    /// Makes a header written without fsync durable: its data, then its directory entry.
    pub fn sync(&self, file_id: &Id) -> Result<()> {
        let (sub, name) = Self::location(file_id);
        let dir = self.subdir(&sub, false)?;
        let fd = openat(
            dir.as_fd(),
            name.as_str(),
            OFlag::O_RDONLY | OFlag::O_CLOEXEC | OFlag::O_NOFOLLOW,
            Mode::empty(),
        )?;
        File::from(fd).sync_all()?;
        let dir = openat(
            self.dir.as_fd(),
            sub.as_str(),
            OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )?;
        File::from(dir).sync_all()?;
        File::from(self.dir.try_clone()?).sync_all()?;
        Ok(())
    }

    pub fn load(&self, file_id: &Id) -> Result<FileHeader> {
        let (sub, name) = Self::location(file_id);
        let missing = |e: nix::Error| {
            if e == nix::Error::ENOENT {
                VolumeError::Corrupt(format!("header of file {} is missing", id_to_hex(file_id)))
            } else {
                e.into()
            }
        };
        let dir = self.subdir(&sub, false).map_err(|e| match e {
            VolumeError::Io(io) if io.raw_os_error() == Some(libc::ENOENT) => {
                missing(nix::Error::ENOENT)
            }
            other => other,
        })?;
        let fd = openat(
            dir.as_fd(),
            name.as_str(),
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
        let (sub, name) = Self::location(file_id);
        let dir = match self.subdir(&sub, false) {
            Ok(dir) => dir,
            Err(_) => return Ok(()),
        };
        match unlinkat(dir.as_fd(), name.as_str(), UnlinkatFlags::NoRemoveDir) {
            Ok(()) => Ok(()),
            Err(nix::Error::ENOENT) => {
                tracing::warn!(file = %id_to_hex(file_id), "header to remove was already gone");
                Ok(())
            }
            Err(e) => Err(e.into()),
        }
    }
}
