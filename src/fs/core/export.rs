//! Export support: the lookups the kernel makes for file handles (open_by_handle_at, NFS
//! re-export) and only for them, of "." (a node by its id, perhaps one it forgot) and ".." (a
//! directory's parent). See fs/handles.rs for the handles themselves.

use std::os::fd::{AsFd, OwnedFd};

use fuser::{FileAttr, FileType};
use nix::fcntl::{OFlag, openat};
use nix::sys::stat::Mode;

use super::{SealFs, stat_fd};
use crate::fs::inodes::ROOT_INO;
use crate::volume::{Result, VOLUME_POLICY, VolumeError};

/// Deeper than any path can be (PATH_MAX / 2): a walk up that goes on is a loop.
const MAX_DEPTH: usize = 2048;

impl SealFs {
    /// LOOKUP of "." in node `ino`: the node itself, counted as a lookup; opened again from its
    /// backing handle if the kernel had forgotten it. ENOENT (the kernel says ESTALE) for a
    /// node never known to this mount, too long forgotten, or whose inode is gone.
    pub(super) fn lookup_self(&self, ino: u64) -> Result<FileAttr> {
        if let Some(node) = self.inodes.get(ino) {
            let fd = node.fd.try_clone()?;
            return self.count_found(fd);
        }
        let (fd, retired) = self
            .inodes
            .revive(ino, self.volume.root.as_fd())
            .ok_or(VolumeError::NotFound)?;
        let stat = stat_fd(fd.as_fd())?;
        if self.inodes.node_id(stat.st_ino) != ino {
            return Err(VolumeError::NotFound);
        }
        let attr = self.attr_of(fd.as_fd(), &stat);
        let walked = if attr.kind == FileType::Directory {
            Some(self.policy_by_walk(fd.try_clone()?)?)
        } else {
            None
        };
        let node = self.inodes.count_lookup(fd, &stat);
        match walked {
            Some(policy) => node.set_policy(self.volume.tenants.generation() as u32, policy),
            None => node.restore_policy(retired.policy),
        }
        Ok(attr)
    }

    /// LOOKUP of ".." in directory `ino`: its parent as the backing tree has it now.
    pub(super) fn lookup_parent(&self, ino: u64) -> Result<FileAttr> {
        let node = self.node(ino)?;
        if node.kind != FileType::Directory {
            return Err(VolumeError::NotDirectory);
        }
        if ino == ROOT_INO {
            return self.lookup_self(ROOT_INO);
        }
        let up = dot_dot(&node.fd)?;
        let parent = self.inodes.node_id(stat_fd(up.as_fd())?.st_ino);
        if self.inodes.get(parent).is_some() {
            return self.lookup_self(parent);
        }
        let policy = self.policy_by_walk(up.try_clone()?)?;
        let attr = self.count_found(up)?;
        if let Some(found) = self.inodes.get(parent) {
            found.set_policy(self.volume.tenants.generation() as u32, policy);
        }
        Ok(attr)
    }

    /// Counts a lookup of the inode `fd` refers to; its attributes.
    fn count_found(&self, fd: OwnedFd) -> Result<FileAttr> {
        let stat = stat_fd(fd.as_fd())?;
        let attr = self.attr_of(fd.as_fd(), &stat);
        self.inodes.count_lookup(fd, &stat);
        Ok(attr)
    }

    /// The key policy of backing directory `dir`, from the markers of it and every directory
    /// above it up to the cipher dir's root.
    fn policy_by_walk(&self, dir: OwnedFd) -> Result<u32> {
        let mut chain = vec![dir];
        loop {
            let top = chain.last().expect("never empty");
            if self.inodes.node_id(stat_fd(top.as_fd())?.st_ino) == ROOT_INO {
                break;
            }
            if chain.len() > MAX_DEPTH {
                return Err(VolumeError::Corrupt(
                    "a directory's parents never reach the cipher dir's root".into(),
                ));
            }
            let up = dot_dot(top)?;
            chain.push(up);
        }
        chain.pop();
        chain
            .iter()
            .rev()
            .try_fold(VOLUME_POLICY, |inherited, dir| {
                self.volume.dir_policy(dir.as_fd(), inherited)
            })
    }
}

/// The parent of backing directory `dir`, as an `O_PATH` fd.
fn dot_dot(dir: &OwnedFd) -> Result<OwnedFd> {
    Ok(openat(
        dir.as_fd(),
        "..",
        OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )?)
}
