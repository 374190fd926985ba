//! Extended attributes: `user.*` names encrypted deterministically, values sealed, both
//! stored as backing xattrs of the same inode; POSIX ACLs the same way (see `acl`).

use std::ffi::OsStr;
use std::os::fd::AsFd;
use std::os::unix::ffi::OsStrExt;
use std::sync::Arc;

use fuser::FileType;

use super::{Caller, SealFs};
use crate::fs::inodes::Node;
use crate::metrics::IntegrityKind;
use crate::volume::backing_xattrs::XattrTarget;
use crate::volume::{Result, VolumeError, names, sealed_xattrs};

impl SealFs {
    pub(super) fn xattr_target(&self, ino: u64) -> Result<(Arc<Node>, XattrTarget<'static>)> {
        let node = self.node(ino)?;
        if node.kind == FileType::Symlink {
            return Err(VolumeError::Unsupported("extended attributes on symlinks"));
        }
        let target = XattrTarget::new(node.fd.as_fd());
        Ok((node, target))
    }

    pub fn setxattr(
        &self,
        ino: u64,
        name: &OsStr,
        value: &[u8],
        flags: i32,
        caller: Caller,
    ) -> Result<()> {
        self.writable()?;
        if is_stats_attribute(ino, name) {
            return Err(reserved());
        }
        let (node, target) = self.xattr_target(ino)?;
        if let Some(kind) = crate::fs::posix_acl::Kind::of(name) {
            if self.acl_off(name) {
                return Err(no_acls());
            }
            return self.set_acl(&node, kind, value, caller);
        }
        let (keys, _lock) = self.keys_for_xattr_write(&node)?;
        sealed_xattrs::set(&target, &keys, name, value, flags)
    }

    /// The keys an xattr written on `node` goes under. A directory's are its policy's, which
    /// a `policy set` or `remove` on it changes: as for a create in it, its lock is taken and
    /// its marker read afresh, and the lock held until the xattr is written.
    pub(super) fn keys_for_xattr_write(
        &self,
        node: &Node,
    ) -> Result<(
        Arc<crate::keys::NameKeys>,
        Option<crate::coord::maintenance::DirectoryLock>,
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
        if self.acl_off(name) {
            return Err(VolumeError::NoAttribute);
        }
        let (node, target) = self.xattr_target(ino)?;
        let keys = self.node_keys(&node)?;
        match sealed_xattrs::get(&target, &keys, name) {
            Err(VolumeError::Unsupported(_)) => Err(VolumeError::NoAttribute),
            other => other,
        }
    }

    pub fn listxattr(&self, ino: u64) -> Result<Vec<u8>> {
        let (node, target) = self.xattr_target(ino)?;
        let keys = self.node_keys(&node)?;
        let mut out = Vec::new();
        // A name under both its versions (a crash between `set`'s two steps) is listed once.
        let mut seen = std::collections::HashSet::new();
        for backing in target.list()? {
            if sealed_xattrs::is_tail(&backing) {
                continue;
            }
            match names::decrypt_xattr_name(&keys, &backing) {
                // A mount with noacl shows no ACL (as ext4's noacl), and keeps those stored.
                Some(plain) if self.acl_off(OsStr::from_bytes(&plain)) => {}
                Some(plain) if seen.insert(plain.clone()) => {
                    out.extend_from_slice(&plain);
                    out.push(0);
                }
                Some(_) => {}
                // Another namespace's attribute (security.*, ...), or another program's
                // user.* one, is not ours to list; one of ours that does not decrypt failed
                // authentication.
                None if names::looks_sealed_xattr_name(&backing) => {
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
        if self.acl_off(name) {
            return Err(no_acls());
        }
        let (node, target) = self.xattr_target(ino)?;
        let (keys, _lock) = self.keys_for_xattr_write(&node)?;
        match sealed_xattrs::remove(&target, &keys, name) {
            Err(VolumeError::Unsupported(_)) => Err(VolumeError::NoAttribute),
            // Removing an ACL a file does not have succeeds (`setfacl -b`, as on ext4).
            Err(VolumeError::Io(e))
                if e.raw_os_error() == Some(libc::ENODATA)
                    && crate::fs::posix_acl::Kind::of(name).is_some() =>
            {
                Ok(())
            }
            other => other,
        }
    }
}

/// The attribute of the mount's root that `sealfs stats` reads (never stored, never listed).
pub const STATS_ATTRIBUTE: &str = "user.sealfs.stats";

fn is_stats_attribute(ino: u64, name: &OsStr) -> bool {
    ino == crate::fs::inodes::ROOT_INO && name == STATS_ATTRIBUTE
}

impl SealFs {
    /// Whether `name` is an ACL on a mount with `-o noacl`, which keeps none (ext4's noacl).
    fn acl_off(&self, name: &OsStr) -> bool {
        !self.tuning.acl && crate::fs::posix_acl::Kind::of(name).is_some()
    }
}

fn no_acls() -> VolumeError {
    VolumeError::Unsupported("POSIX ACLs on a mount with noacl")
}

fn reserved() -> VolumeError {
    VolumeError::Io(std::io::Error::from_raw_os_error(libc::EPERM))
}
