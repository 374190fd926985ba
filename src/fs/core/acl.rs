//! POSIX ACLs. The mount negotiates FUSE_POSIX_ACL: the kernel checks permissions against a
//! file's ACL itself, and leaves to the filesystem what ext4 does when an ACL is set, a mode
//! changed or an entry made (`fs::posix_acl` has those rules). ACLs are stored sealed, like
//! user xattrs, under the names `system.posix_acl_access` and `_default`.

use std::ffi::OsStr;
use std::os::fd::{AsFd, BorrowedFd};
use std::sync::atomic::Ordering;

use fuser::FileType;
use nix::fcntl::AT_FDCWD;
use nix::sys::stat::{FchmodatFlags, Mode, fchmodat};

use super::{Caller, SealFs, stat_fd};
use crate::fs::inodes::{ACL_NONE, ACL_SET_HERE, ACL_UNKNOWN, Node};
use crate::fs::posix_acl::{Acl, Kind};
use crate::keys::NameKeys;
use crate::volume::backing_xattrs::XattrTarget;
use crate::volume::{Result, VolumeError, proc_fd_path, sealed_xattrs};

/// What a new entry gets from its directory: its mode, and the ACLs to store on it.
pub(super) struct Inherited {
    pub mode: u32,
    access: Option<Acl>,
    default: Option<Acl>,
}

impl SealFs {
    /// For an entry of kind `kind` about to be made in `dir` (whose xattrs are under `keys`)
    /// with `mode` by `caller`: a directory's default ACL decides its mode and ACLs, else the
    /// caller's umask. A fifo, socket or device node keeps no ACL (the backing store keeps
    /// user xattrs on files and directories only): it gets a mode that gives nobody more than
    /// the ACL would have (`Acl::restrictive_mode_bits`).
    pub(super) fn inherit_acls(
        &self,
        dir: &Node,
        keys: &NameKeys,
        mode: u32,
        kind: FileType,
        caller: Caller,
    ) -> Result<Inherited> {
        let umasked = Inherited {
            mode: mode & !(caller.umask & 0o777),
            access: None,
            default: None,
        };
        if !self.tuning.acl {
            return Ok(umasked);
        }
        // A lone mount is the only writer: a directory it found without a default ACL keeps
        // none unless this mount sets one. Creates then skip a backing getxattr and a name
        // seal. (A create racing a setfacl on its directory is ordered before it.)
        let trusted = self.access.sole_writer();
        if trusted && dir.default_acl.load(Ordering::Acquire) == ACL_NONE {
            return Ok(umasked);
        }
        let target = XattrTarget::new(dir.fd.as_fd());
        Ok(match stored_acl(keys, &target, Kind::Default)? {
            None => {
                if trusted {
                    let _ = dir.default_acl.compare_exchange(
                        ACL_UNKNOWN,
                        ACL_NONE,
                        Ordering::AcqRel,
                        Ordering::Acquire,
                    );
                }
                umasked
            }
            Some(default) => {
                let (mut mode, access) = default.inherit(mode);
                let access = match access {
                    Some(acl) if !keeps_acls(kind) => {
                        mode = (mode & !0o777) | acl.restrictive_mode_bits();
                        None
                    }
                    kept => kept,
                };
                Inherited {
                    mode,
                    access,
                    default: (kind == FileType::Directory).then_some(default),
                }
            }
        })
    }

    /// Stores on a new entry (`fd`, its xattrs under `keys`) the ACLs it inherited.
    pub(super) fn give_acls(
        &self,
        keys: &NameKeys,
        fd: BorrowedFd<'_>,
        inherited: &Inherited,
    ) -> Result<()> {
        if inherited.access.is_none() && inherited.default.is_none() {
            return Ok(());
        }
        let target = XattrTarget::new(fd);
        store_acl(keys, &target, Kind::Access, inherited.access.as_ref())?;
        store_acl(keys, &target, Kind::Default, inherited.default.as_ref())
    }

    /// setxattr of an ACL (`setfacl`, `cp -a`, `rsync -A`, `tar --acls`). An access ACL also
    /// sets the mode's permission bits (the mask stands for the group's) and is kept only if
    /// the mode does not say it all; set-group-id goes if the caller is neither in the file's
    /// group nor root. A default ACL only a directory has.
    pub(super) fn set_acl(
        &self,
        node: &Node,
        kind: Kind,
        value: &[u8],
        caller: Caller,
    ) -> Result<()> {
        if !keeps_acls(node.kind) {
            return Err(VolumeError::Unsupported(
                "POSIX ACLs on fifos, sockets and device nodes",
            ));
        }
        let acl = Acl::parse(value).map_err(|_| VolumeError::InvalidArgument("POSIX ACL"))?;
        let (keys, _lock) = self.keys_for_xattr_write(node)?;
        let target = XattrTarget::new(node.fd.as_fd());
        if kind == Kind::Default {
            if node.kind != FileType::Directory {
                return Err(std::io::Error::from_raw_os_error(libc::EACCES).into());
            }
            node.default_acl.store(ACL_SET_HERE, Ordering::Release);
            return store_acl(&keys, &target, kind, Some(&acl));
        }
        let st = stat_fd(node.fd.as_fd())?;
        let old = st.st_mode & 0o7777;
        let mut mode = (old & !0o777) | acl.mode_bits();
        if !caller.keeps_set_id() && !caller.in_group(st.st_gid) {
            mode &= !libc::S_ISGID;
        }
        store_acl(&keys, &target, kind, (!acl.is_mode_only()).then_some(&acl))?;
        if mode != old {
            chmod(node.fd.as_fd(), mode)?;
        }
        Ok(())
    }

    /// After a chmod of `node`: its access ACL, if it has one, takes the new permission bits.
    pub(super) fn chmod_acl(&self, node: &Node, mode: u32) -> Result<()> {
        if !self.tuning.acl || !keeps_acls(node.kind) {
            return Ok(());
        }
        let (keys, _lock) = self.keys_for_xattr_write(node)?;
        let target = XattrTarget::new(node.fd.as_fd());
        if let Some(mut acl) = stored_acl(&keys, &target, Kind::Access)? {
            acl.chmod(mode & 0o777);
            store_acl(&keys, &target, Kind::Access, Some(&acl))?;
        }
        Ok(())
    }
}

/// Whether an inode of this kind can keep an ACL: the backing store keeps user xattrs only on
/// regular files and directories.
fn keeps_acls(kind: FileType) -> bool {
    matches!(kind, FileType::RegularFile | FileType::Directory)
}

fn chmod(fd: BorrowedFd<'_>, mode: u32) -> Result<()> {
    fchmodat(
        AT_FDCWD,
        proc_fd_path(fd).as_path(),
        Mode::from_bits_truncate(mode),
        FchmodatFlags::FollowSymlink,
    )?;
    Ok(())
}

/// The ACL of kind `kind` stored on `target` (its xattrs under `keys`), if any.
fn stored_acl(keys: &NameKeys, target: &XattrTarget<'_>, kind: Kind) -> Result<Option<Acl>> {
    let plain = match sealed_xattrs::get(target, keys, OsStr::new(kind.name())) {
        Ok(plain) => plain,
        Err(VolumeError::Io(e))
            if matches!(e.raw_os_error(), Some(libc::ENODATA | libc::ENOTSUP)) =>
        {
            return Ok(None);
        }
        Err(e) => return Err(e),
    };
    Acl::parse(&plain)
        .map(Some)
        .map_err(|e| VolumeError::Corrupt(e.to_string()))
}

/// Stores `acl` as `target`'s ACL of kind `kind`, or removes it (`None`; none there is fine).
fn store_acl(
    keys: &NameKeys,
    target: &XattrTarget<'_>,
    kind: Kind,
    acl: Option<&Acl>,
) -> Result<()> {
    let name = OsStr::new(kind.name());
    match acl {
        Some(acl) => sealed_xattrs::set(target, keys, name, &acl.to_bytes(), 0),
        None => match sealed_xattrs::remove(target, keys, name) {
            Err(VolumeError::Io(e)) if e.raw_os_error() == Some(libc::ENODATA) => Ok(()),
            other => other,
        },
    }
}
