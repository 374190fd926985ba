//! The forward mount's `fuser::Filesystem`: each handler calls one `SealFs` method and
//! replies once through the shared shell (`crate::shell`), errors through its errno map.

use std::ffi::OsStr;
use std::path::Path;

use fuser::{
    AccessFlags, Errno, FileHandle, Filesystem, FopenFlags, Generation, INodeNo, KernelConfig,
    LockOwner, OpenFlags, RenameFlags, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory,
    ReplyDirectoryPlus, ReplyEmpty, ReplyEntry, ReplyLock, ReplyLseek, ReplyOpen, ReplyStatfs,
    ReplyWrite, ReplyXattr, Request, TimeOrNow, WriteFlags,
};

mod replies;

use self::replies::{NO_GENERATION, caller, caller_with, drop_cached_pages, xattr_reply};
use super::core::{AttrChanges, SealFs};
use crate::coord::file_locks::PlainLock;
use crate::metrics::{self, Metrics, Op};
use crate::shell::{self, reply_or_error};

impl Filesystem for SealFs {
    /// Each setting is measured in bench/README.md: request size is the biggest lever on
    /// FUSE throughput, the writeback cache (merging small writes) the second.
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        let _ = config.set_max_write(1 << 20);
        let _ = config.set_max_background(64);
        let _ = config.set_congestion_threshold(48);
        let flags = self.tuning.init_flags(self.attrs_with_listings());
        shell::request_capabilities(config, &flags);
        Ok(())
    }

    fn destroy(&mut self) {
        self.unmounted();
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let _request = metrics::request(Op::Lookup);
        match self.lookup(parent.0, name) {
            Ok(attr) => self.reply_entry(reply, &attr),
            // A lone mount is the only writer: a name that is not there stays absent until this
            // mount makes it, which the kernel sees. So the kernel may remember the miss (a
            // negative entry: node id 0, for the entry TTL) instead of asking again: PATH
            // searches, imports and build tools look up many names that do not exist.
            Err(e)
                if self.tuning.negative_entries()
                    && shell::errno::errno_of(&e) == Errno::ENOENT =>
            {
                reply.entry_with_ttls(
                    &std::time::Duration::ZERO,
                    &self.tuning.entry_ttl,
                    &shell::attr::negative_entry(),
                    NO_GENERATION,
                )
            }
            Err(e) => reply.error(shell::errno::report("lookup", &e)),
        }
    }

    fn forget(&self, _req: &Request, ino: INodeNo, nlookup: u64) {
        let _request = metrics::request(Op::Forget);
        SealFs::forget(self, ino.0, nlookup);
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        let _request = metrics::request(Op::Getattr);
        reply_or_error!("getattr", SealFs::getattr(self, ino.0), reply, |attr| reply
            .attr(&self.tuning.attr_ttl, &attr))
    }

    fn setattr(
        &self,
        req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<std::time::SystemTime>,
        fh: Option<FileHandle>,
        _crtime: Option<std::time::SystemTime>,
        _chgtime: Option<std::time::SystemTime>,
        _bkuptime: Option<std::time::SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let _request = metrics::request(Op::Setattr);
        let changes = AttrChanges {
            mode,
            uid,
            gid,
            size,
            atime,
            mtime,
            fh: fh.map(|f| f.0),
        };
        let result = SealFs::setattr(self, caller(req), ino.0, changes);
        reply_or_error!("setattr", result, reply, |attr| reply
            .attr(&self.tuning.attr_ttl, &attr))
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        let _request = metrics::request(Op::Readlink);
        reply_or_error!("readlink", SealFs::readlink(self, ino.0), reply, |target| {
            reply.data(&target)
        })
    }

    fn mknod(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        rdev: u32,
        reply: ReplyEntry,
    ) {
        let _request = metrics::request(Op::Mknod);
        let result = SealFs::mknod(self, parent.0, name, mode, rdev, caller_with(req, umask));
        reply_or_error!("mknod", result, reply, |attr| self
            .reply_entry(reply, &attr))
    }

    fn mkdir(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        reply: ReplyEntry,
    ) {
        let _request = metrics::request(Op::Mkdir);
        let result = SealFs::mkdir(self, parent.0, name, mode, caller_with(req, umask));
        reply_or_error!("mkdir", result, reply, |attr| self
            .reply_entry(reply, &attr))
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let _request = metrics::request(Op::Unlink);
        reply_or_error!(
            "unlink",
            SealFs::unlink(self, parent.0, name),
            reply,
            |_ok| reply.ok()
        )
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let _request = metrics::request(Op::Rmdir);
        reply_or_error!("rmdir", SealFs::rmdir(self, parent.0, name), reply, |_ok| {
            reply.ok()
        })
    }

    fn symlink(
        &self,
        req: &Request,
        parent: INodeNo,
        link_name: &OsStr,
        target: &Path,
        reply: ReplyEntry,
    ) {
        let _request = metrics::request(Op::Symlink);
        let result = SealFs::symlink(self, parent.0, link_name, target.as_os_str(), caller(req));
        reply_or_error!("symlink", result, reply, |attr| self
            .reply_entry(reply, &attr))
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        let _request = metrics::request(Op::Rename);
        let result = SealFs::rename(self, parent.0, name, newparent.0, newname, flags.bits());
        reply_or_error!("rename", result, reply, |_ok| reply.ok())
    }

    fn link(
        &self,
        _req: &Request,
        ino: INodeNo,
        newparent: INodeNo,
        newname: &OsStr,
        reply: ReplyEntry,
    ) {
        let _request = metrics::request(Op::Link);
        let result = SealFs::link(self, ino.0, newparent.0, newname);
        reply_or_error!("link", result, reply, |attr| self.reply_entry(reply, &attr))
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let _request = metrics::request(Op::Open);
        reply_or_error!(
            "open",
            SealFs::open(self, ino.0, flags.0),
            reply,
            |opened| {
                let mut fopen = if opened.1 {
                    FopenFlags::FOPEN_KEEP_CACHE
                } else {
                    FopenFlags::empty()
                };
                if self.direct_io(flags.0) {
                    fopen |= FopenFlags::FOPEN_DIRECT_IO;
                }
                reply.opened(FileHandle(opened.0), fopen)
            }
        )
    }

    fn read(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let _request = metrics::request(Op::Read);
        // Replies from the decrypting thread's buffer: no copy into a fresh Vec.
        let mut reply = Some(reply);
        let sent = self.read_with(fh.0, offset, size, |data| {
            if let Some(reply) = reply.take() {
                Metrics::add(&metrics::global().plain_read, data.len() as u64);
                reply.data(data);
            }
        });
        if let (Err(e), Some(reply)) = (sent, reply) {
            reply.error(shell::errno::report("read", &e));
        }
    }

    fn write(
        &self,
        req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        let _request = metrics::request(Op::Write);
        let kill_set_id = write_flags
            .contains(WriteFlags::FUSE_WRITE_KILL_SUIDGID)
            .then(|| caller(req));
        reply_or_error!(
            "write",
            SealFs::write(self, fh.0, offset, data, kill_set_id),
            reply,
            |n| {
                Metrics::add(&metrics::global().plain_written, u64::from(n));
                reply.written(n)
            }
        )
    }

    crate::shell::unanswered::ioctl_unanswered!();

    /// A close(2). A lone mount has nothing to do (see `shell::unanswered`: ENOSYS, and the
    /// kernel stops asking). A shared mount drops the closing process's fcntl locks on the
    /// file, as POSIX says a close does.
    fn flush(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        let _request = metrics::request(Op::Flush);
        if !self.tuning.forwards_locks() {
            return reply.error(Errno::ENOSYS);
        }
        self.release_locks(ino.0, lock_owner.0);
        reply.ok();
    }

    fn release(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        let _request = metrics::request(Op::Release);
        // The kernel names the owner when the open file held flock locks.
        if let Some(owner) = lock_owner {
            self.release_locks(ino.0, owner.0);
        }
        SealFs::release(self, fh.0);
        reply.ok();
    }

    fn getlk(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        lock_owner: LockOwner,
        start: u64,
        end: u64,
        typ: i32,
        _pid: u32,
        reply: ReplyLock,
    ) {
        let _request = metrics::request(Op::Getlk);
        let asked = PlainLock {
            start,
            end,
            kind: typ,
        };
        // Who holds a lock on another host is not known here: no pid.
        reply_or_error!(
            "getlk",
            SealFs::getlk(self, ino.0, lock_owner.0, asked),
            reply,
            |found| match found {
                Some(held) => reply.locked(held.start, held.end, held.kind, 0),
                None => reply.locked(start, end, libc::F_UNLCK, 0),
            }
        )
    }

    fn setlk(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        lock_owner: LockOwner,
        start: u64,
        end: u64,
        typ: i32,
        _pid: u32,
        sleep: bool,
        reply: ReplyEmpty,
    ) {
        let _request = metrics::request(Op::Setlk);
        let lock = PlainLock {
            start,
            end,
            kind: typ,
        };
        let result = SealFs::setlk(self, ino.0, fh.0, lock_owner.0, lock);
        let taken = typ != libc::F_UNLCK;
        // Dropping cached pages waits for pages being read, whose READs need a worker: it
        // runs on a thread of its own, before the reply, as does a wait for the lock (the
        // holder's unlock needs a worker too).
        let notifier = self.notifier.clone();
        match result {
            Ok(None) if !taken => reply.ok(),
            Ok(None) => {
                std::thread::spawn(move || {
                    drop_cached_pages(notifier.get(), ino);
                    reply.ok();
                });
            }
            Ok(Some(wait)) if sleep => {
                std::thread::spawn(move || {
                    reply_or_error!("setlk", wait.wait(), reply, |_ok| {
                        drop_cached_pages(notifier.get(), ino);
                        reply.ok()
                    })
                });
            }
            Ok(Some(_)) => reply.error(Errno::EAGAIN),
            Err(e) => reply.error(shell::errno::report("setlk", &e)),
        }
    }

    fn fsync(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        datasync: bool,
        reply: ReplyEmpty,
    ) {
        let _request = metrics::request(Op::Fsync);
        reply_or_error!("fsync", SealFs::fsync(self, fh.0, datasync), reply, |_ok| {
            reply.ok()
        })
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        let _request = metrics::request(Op::Opendir);
        // A lone mount: the kernel may keep listings across opens (dropped on every change).
        let flags = if self.cache_dirs() {
            FopenFlags::FOPEN_CACHE_DIR | FopenFlags::FOPEN_KEEP_CACHE
        } else {
            FopenFlags::empty()
        };
        reply_or_error!("opendir", SealFs::opendir(self, ino.0), reply, |fh| reply
            .opened(FileHandle(fh), flags))
    }

    fn readdir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        reply: ReplyDirectory,
    ) {
        let _request = metrics::request(Op::Readdir);
        shell::reply_readdir(reply, offset, self.dir_entries(fh.0))
    }

    fn readdirplus(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        reply: ReplyDirectoryPlus,
    ) {
        let _request = metrics::request(Op::Readdirplus);
        let listed = self.listed_dir(fh.0);
        let dir = listed.as_ref().ok().map(|(dir, _)| dir.clone());
        shell::reply_readdirplus(
            reply,
            offset,
            listed.map(|(_, entries)| entries),
            |entry| {
                let listed = self.look_up_listed(dir.as_ref()?, entry)?;
                let ttl = (*self.tuning.entry_ttl_of(listed.attr.kind)).min(self.tuning.attr_ttl);
                Some((
                    listed.attr,
                    ttl,
                    Generation(u64::from(listed.generation)),
                    listed,
                ))
            },
            |entry, listed| {
                if let Some(dir) = &dir {
                    self.remember_listed(dir, entry, listed);
                }
            },
        )
    }

    fn releasedir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        let _request = metrics::request(Op::Releasedir);
        SealFs::releasedir(self, fh.0);
        reply.ok();
    }

    fn fsyncdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        let _request = metrics::request(Op::Fsyncdir);
        reply_or_error!("fsyncdir", SealFs::fsyncdir(self, ino.0), reply, |_ok| {
            reply.ok()
        })
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        let _request = metrics::request(Op::Statfs);
        shell::reply_statfs(reply, SealFs::statfs(self))
    }

    fn setxattr(
        &self,
        req: &Request,
        ino: INodeNo,
        name: &OsStr,
        value: &[u8],
        flags: i32,
        _position: u32,
        reply: ReplyEmpty,
    ) {
        let _request = metrics::request(Op::Setxattr);
        reply_or_error!(
            "setxattr",
            SealFs::setxattr(self, ino.0, name, value, flags, caller(req)),
            reply,
            |_ok| reply.ok()
        )
    }

    fn getxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        let _request = metrics::request(Op::Getxattr);
        reply_or_error!(
            "getxattr",
            SealFs::getxattr(self, ino.0, name),
            reply,
            |value| xattr_reply(reply, size, &value)
        )
    }

    fn listxattr(&self, _req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        let _request = metrics::request(Op::Listxattr);
        reply_or_error!("listxattr", SealFs::listxattr(self, ino.0), reply, |list| {
            xattr_reply(reply, size, &list)
        })
    }

    fn removexattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let _request = metrics::request(Op::Removexattr);
        reply_or_error!(
            "removexattr",
            SealFs::removexattr(self, ino.0, name),
            reply,
            |_ok| reply.ok()
        )
    }

    fn access(&self, _req: &Request, ino: INodeNo, mask: AccessFlags, reply: ReplyEmpty) {
        let _request = metrics::request(Op::Access);
        reply_or_error!(
            "access",
            SealFs::access(self, ino.0, mask.bits()),
            reply,
            |_ok| reply.ok()
        )
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        let _request = metrics::request(Op::Create);
        let result = SealFs::create(self, parent.0, name, mode, flags, caller_with(req, umask));
        let fopen = if self.direct_io(flags) {
            FopenFlags::FOPEN_DIRECT_IO
        } else {
            FopenFlags::empty()
        };
        reply_or_error!("create", result, reply, |created| reply.created(
            // One TTL for both: the shorter.
            &self
                .tuning
                .attr_ttl
                .min(*self.tuning.entry_ttl_of(created.0.kind)),
            &created.0,
            self.generation(&created.0),
            FileHandle(created.1),
            fopen
        ))
    }

    fn fallocate(
        &self,
        req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        let _request = metrics::request(Op::Fallocate);
        let result = SealFs::fallocate(self, caller(req), fh.0, offset, length, mode);
        reply_or_error!("fallocate", result, reply, |_ok| reply.ok())
    }

    fn lseek(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: i64,
        whence: i32,
        reply: ReplyLseek,
    ) {
        let _request = metrics::request(Op::Lseek);
        reply_or_error!(
            "lseek",
            SealFs::lseek(self, fh.0, offset, whence),
            reply,
            |pos| reply.offset(pos)
        )
    }
}
