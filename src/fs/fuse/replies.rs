//! What the dispatcher's handlers share: who asks (`Caller` from a request), how an entry
//! and an xattr are answered, and dropping a file's cached pages after a lock.

use fuser::{Errno, Generation, INodeNo, ReplyEntry, ReplyXattr, Request};

use crate::fs::core::{Caller, SealFs};

/// The generation of a reply with no node (a negative entry).
pub(super) const NO_GENERATION: Generation = Generation(0);

impl SealFs {
    /// The generation the kernel is told with an entry's node id (fs/handles.rs).
    pub(super) fn generation(&self, attr: &fuser::FileAttr) -> Generation {
        Generation(u64::from(self.inodes.generation(attr.ino.0).unwrap_or(0)))
    }

    /// Replies with a found or made entry, for the TTLs of the mount.
    pub(super) fn reply_entry(&self, reply: ReplyEntry, attr: &fuser::FileAttr) {
        reply.entry_with_ttls(
            &self.tuning.attr_ttl,
            self.tuning.entry_ttl_of(attr.kind),
            attr,
            self.generation(attr),
        )
    }
}

pub(super) fn caller(req: &Request) -> Caller {
    Caller {
        uid: req.uid(),
        gid: req.gid(),
        pid: req.pid(),
        umask: 0,
    }
}

/// The caller of a request that makes an entry, with the umask the kernel passed.
pub(super) fn caller_with(req: &Request, umask: u32) -> Caller {
    Caller {
        umask,
        ..caller(req)
    }
}

/// A lock just taken may guard bytes another host wrote meanwhile: the kernel's cached pages
/// of the file go, as NFS drops them when a lock is taken (sqlite on shared storage relies on
/// it).
pub(super) fn drop_cached_pages(notifier: Option<&fuser::Notifier>, ino: INodeNo) {
    if let Some(notifier) = notifier
        && let Err(e) = notifier.inval_inode(ino, 0, 0)
        && e.raw_os_error() != Some(libc::ENOENT)
    {
        tracing::debug!(error = %e, "could not drop cached pages after a lock");
    }
}

pub(super) fn xattr_reply(reply: ReplyXattr, size: u32, value: &[u8]) {
    if size == 0 {
        reply.size(value.len() as u32);
    } else if value.len() > size as usize {
        reply.error(Errno::ERANGE);
    } else {
        reply.data(value);
    }
}
