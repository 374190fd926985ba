//! Extended attributes: `user.*` names encrypted deterministically, values sealed, both
//! stored as backing xattrs of the same inode.

use std::ffi::{CString, OsStr};
use std::os::fd::AsFd;
use std::os::unix::ffi::OsStrExt;
use std::sync::Arc;

use fuser::FileType;

use super::SealFs;
use crate::fs::inodes::Node;
use crate::metrics::IntegrityKind;
use crate::volume::names::read_xattr;
use crate::volume::{Result, VolumeError, names, proc_fd_path};

impl SealFs {
    pub(super) fn xattr_path(&self, ino: u64) -> Result<(Arc<Node>, CString)> {
        let node = self.node(ino)?;
        if node.kind == FileType::Symlink {
            return Err(VolumeError::Unsupported("extended attributes on symlinks"));
        }
        let path = proc_fd_path(node.fd.as_fd());
        let c = CString::new(path.as_os_str().as_bytes()).expect("no NUL in /proc path");
        Ok((node, c))
    }

    pub fn setxattr(&self, ino: u64, name: &OsStr, value: &[u8], flags: i32) -> Result<()> {
        self.writable()?;
        if is_stats_attribute(ino, name) {
            return Err(reserved());
        }
        let (node, path) = self.xattr_path(ino)?;
        let (keys, _lock) = self.keys_for_xattr_write(&node)?;
        let backing = names::encrypt_xattr_name(&keys, name)?;
        let sealed = names::seal_xattr_value(&keys, &backing, value)?;
        let cname = CString::new(backing).map_err(|_| VolumeError::InvalidName)?;
        let rc = unsafe {
            libc::setxattr(
                path.as_ptr(),
                cname.as_ptr(),
                sealed.as_ptr().cast(),
                sealed.len(),
                flags,
            )
        };
        if rc != 0 {
            return Err(std::io::Error::last_os_error().into());
        }
        Ok(())
    }

    /// The keys an xattr written on `node` goes under. A directory's are its policy's, which
    /// a `policy set` or `remove` on it changes: as for a create in it, its lock is taken and
    /// its marker read afresh, and the lock held until the xattr is written.
    fn keys_for_xattr_write(
        &self,
        node: &Node,
    ) -> Result<(
        Arc<crate::keys::NameKeys>,
        Option<crate::volume::maintenance::DirectoryLock>,
    )> {
        if node.kind != FileType::Directory {
            return Ok((self.node_keys(node)?, None));
        }
        let (_, keys, lock) = self.keys_for_new_entry(node)?;
        Ok((keys, lock))
    }

    pub fn getxattr(&self, ino: u64, name: &OsStr) -> Result<Vec<u8>> {
        if is_stats_attribute(ino, name) {
            // The mount's numbers, for `sealfs stats`: whoever may reach the mount may read
            // them, no key needed (nothing in them names a file or holds a key).
            return serde_json::to_vec(&crate::metrics::global().snapshot())
                .map_err(|e| VolumeError::Usage(format!("stats: {e}")));
        }
        let (node, path) = self.xattr_path(ino)?;
        let keys = self.node_keys(&node)?;
        let backing = match names::encrypt_xattr_name(&keys, name) {
            Err(VolumeError::Unsupported(_)) => {
                return Err(VolumeError::NoAttribute);
            }
            other => other?,
        };
        let cname = CString::new(backing.clone()).map_err(|_| VolumeError::InvalidName)?;
        let sealed = read_xattr(|buf| unsafe {
            libc::getxattr(
                path.as_ptr(),
                cname.as_ptr(),
                buf.as_mut_ptr().cast(),
                buf.len(),
            )
        })?;
        names::open_xattr_value(&keys, &backing, &sealed)
    }

    pub fn listxattr(&self, ino: u64) -> Result<Vec<u8>> {
        let (node, path) = self.xattr_path(ino)?;
        let keys = self.node_keys(&node)?;
        let raw = read_xattr(|buf| unsafe {
            libc::listxattr(path.as_ptr(), buf.as_mut_ptr().cast(), buf.len())
        })?;
        let mut out = Vec::new();
        for backing in raw.split(|&b| b == 0).filter(|n| !n.is_empty()) {
            match names::decrypt_xattr_name(&keys, backing) {
                Some(plain) => {
                    out.extend_from_slice(&plain);
                    out.push(0);
                }
                // Another namespace's attribute (security.*, ...) is not ours to list; a
                // user.* one that does not decrypt failed authentication.
                None if backing.starts_with(names::USER_XATTR_PREFIX) => {
                    tracing::error!("skipping an extended attribute whose name does not decrypt");
                    crate::metrics::global().integrity_failure(IntegrityKind::Metadata);
                }
                None => {}
            }
        }
        Ok(out)
    }

    pub fn removexattr(&self, ino: u64, name: &OsStr) -> Result<()> {
        self.writable()?;
        if is_stats_attribute(ino, name) {
            return Err(reserved());
        }
        let (node, path) = self.xattr_path(ino)?;
        let (keys, _lock) = self.keys_for_xattr_write(&node)?;
        let backing = match names::encrypt_xattr_name(&keys, name) {
            Err(VolumeError::Unsupported(_)) => {
                return Err(VolumeError::NoAttribute);
            }
            other => other?,
        };
        let cname = CString::new(backing).map_err(|_| VolumeError::InvalidName)?;
        if unsafe { libc::removexattr(path.as_ptr(), cname.as_ptr()) } != 0 {
            return Err(std::io::Error::last_os_error().into());
        }
        Ok(())
    }
}

/// The attribute of the mount's root that `sealfs stats` reads (never stored, never listed).
pub const STATS_ATTRIBUTE: &str = "user.sealfs.stats";

fn is_stats_attribute(ino: u64, name: &OsStr) -> bool {
    ino == crate::fs::inodes::ROOT_INO && name == STATS_ATTRIBUTE
}

fn reserved() -> VolumeError {
    VolumeError::Io(std::io::Error::from_raw_os_error(libc::EPERM))
}
