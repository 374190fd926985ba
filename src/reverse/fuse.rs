//! The `fuser::Filesystem` shell of the reverse view: each handler calls one `ReverseView`
//! method and replies once. The mount is read-only (MS_RDONLY), so the kernel answers every
//! write, create and rename with EROFS before it reaches us.

use std::ffi::OsStr;
use std::time::Duration;

use fuser::{
    AccessFlags, FileHandle, Filesystem, FopenFlags, Generation, INodeNo, InitFlags, KernelConfig,
    LockOwner, OpenFlags, ReplyAttr, ReplyData, ReplyDirectory, ReplyDirectoryPlus, ReplyEmpty,
    ReplyEntry, ReplyOpen, ReplyStatfs, Request,
};

use super::view::ReverseView;

use crate::metrics::{self, Op};
use crate::shell::{self, reply_or_error};

/// The plaintext tree changes under the view at any time; a short TTL makes changes show
/// within a second while keeping a backup tool's stat-then-open pairs cheap.
const TTL: Duration = Duration::from_secs(1);
const GENERATION: Generation = Generation(0);

impl Filesystem for ReverseView {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        let _ = config.set_max_background(64);
        // readdirplus hands the kernel each entry's attributes with the listing, saving a
        // LOOKUP per file of a backup walk (bench/README.md).
        shell::request_capabilities(
            config,
            &[
                InitFlags::FUSE_PARALLEL_DIROPS,
                InitFlags::FUSE_DO_READDIRPLUS | InitFlags::FUSE_READDIRPLUS_AUTO,
            ],
        );
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let _request = metrics::request(Op::Lookup);
        reply_or_error!("lookup", self.lookup(parent.0, name), reply, |attr| reply
            .entry(&TTL, &attr, GENERATION))
    }

    fn forget(&self, _req: &Request, ino: INodeNo, nlookup: u64) {
        let _request = metrics::request(Op::Forget);
        ReverseView::forget(self, ino.0, nlookup);
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        let _request = metrics::request(Op::Getattr);
        reply_or_error!("getattr", self.getattr(ino.0), reply, |attr| reply
            .attr(&TTL, &attr))
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        let _request = metrics::request(Op::Readlink);
        reply_or_error!("readlink", ReverseView::readlink(self, ino.0), reply, |t| {
            reply.data(&t)
        })
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let _request = metrics::request(Op::Open);
        // No FOPEN_KEEP_CACHE: each open reads what the plaintext holds now.
        reply_or_error!(
            "open",
            ReverseView::open(self, ino.0, flags.0),
            reply,
            |fh| { reply.opened(FileHandle(fh), FopenFlags::empty()) }
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
        reply_or_error!(
            "read",
            ReverseView::read(self, fh.0, offset, size),
            reply,
            |d| {
                metrics::Metrics::add(&metrics::global().backing_read, d.len() as u64);
                reply.data(&d)
            }
        )
    }

    crate::shell::unanswered::flush_and_ioctl_unanswered!();

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        let _request = metrics::request(Op::Release);
        ReverseView::release(self, fh.0);
        reply.ok();
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        let _request = metrics::request(Op::Opendir);
        reply_or_error!("opendir", ReverseView::opendir(self, ino.0), reply, |fh| {
            reply.opened(FileHandle(fh), FopenFlags::empty())
        })
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
        shell::reply_readdirplus(
            reply,
            offset,
            self.dir_entries(fh.0),
            |entry| {
                self.entry_attr(entry)
                    .map(|attr| (attr, TTL, GENERATION, ()))
            },
            |entry, ()| self.remember_entry(entry),
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
        ReverseView::release(self, fh.0);
        reply.ok();
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        let _request = metrics::request(Op::Statfs);
        shell::reply_statfs(reply, ReverseView::statfs(self))
    }

    fn access(&self, _req: &Request, _ino: INodeNo, _mask: AccessFlags, reply: ReplyEmpty) {
        let _request = metrics::request(Op::Access);
        // Mounted with default_permissions: the kernel checks modes itself.
        reply.ok();
    }
}
