//! FUSE operations both mounts (forward and reverse) answer the same way, without work.

/// Trait methods for `impl fuser::Filesystem`: FLUSH and IOCTL (`ioctl_unanswered!` alone for
/// a mount that answers FLUSH itself: shared forward mounts drop fcntl locks there).
///
/// FLUSH: the kernel writes dirty pages back before it sends FLUSH, and durability is fsync's
/// job, so there is nothing to do; ENOSYS tells the kernel so once, and it stops sending FLUSH
/// on every close (one round trip less per small file; bench/README.md). Close still reports
/// writeback errors.
///
/// IOCTL: none is passed through (lsattr, FICLONE and the like would need the plaintext file).
/// Answered here because fuser's default logs a warning for each one, and programs issue them
/// all the time: Python's open() asks every file whether it is a terminal (TCGETS), which
/// flooded the log with one line per opened file. ENOTTY is what a regular file on ext4 answers
/// for an ioctl it does not know.
macro_rules! flush_and_ioctl_unanswered {
    () => {
        fn flush(
            &self,
            _req: &fuser::Request,
            _ino: fuser::INodeNo,
            _fh: fuser::FileHandle,
            _lock_owner: fuser::LockOwner,
            reply: fuser::ReplyEmpty,
        ) {
            let _request = $crate::metrics::request($crate::metrics::Op::Flush);
            reply.error(fuser::Errno::ENOSYS);
        }

        $crate::shell::unanswered::ioctl_unanswered!();
    };
}

macro_rules! ioctl_unanswered {
    () => {
        fn ioctl(
            &self,
            _req: &fuser::Request,
            _ino: fuser::INodeNo,
            _fh: fuser::FileHandle,
            _flags: fuser::IoctlFlags,
            _cmd: u32,
            _in_data: &[u8],
            _out_size: u32,
            reply: fuser::ReplyIoctl,
        ) {
            let _request = $crate::metrics::request($crate::metrics::Op::Ioctl);
            reply.error(fuser::Errno::ENOTTY);
        }
    };
}

pub(crate) use flush_and_ioctl_unanswered;
pub(crate) use ioctl_unanswered;
