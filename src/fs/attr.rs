use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fuser::FileAttr;
use nix::sys::stat::FileStat;

use super::inodes::{InodeTable, file_type};
use crate::format::block::Layout;
use crate::format::name::symlink_plain_len;

pub(crate) fn time(secs: i64, nsecs: i64) -> SystemTime {
    if secs >= 0 {
        UNIX_EPOCH + Duration::new(secs as u64, nsecs as u32)
    } else {
        UNIX_EPOCH - Duration::from_secs(secs.unsigned_abs()) + Duration::from_nanos(nsecs as u64)
    }
}

/// The attributes the user sees: the backing inode's, with the plaintext size.
pub fn to_attr(stat: &FileStat, table: &InodeTable, layout: &Layout) -> FileAttr {
    let size = match file_type(stat.st_mode) {
        fuser::FileType::RegularFile => layout.plain_size(stat.st_size as u64),
        fuser::FileType::Symlink => symlink_plain_len(stat.st_size as u64),
        _ => stat.st_size as u64,
    };
    attr_from_stat(
        table.node_id(stat.st_ino),
        stat,
        size,
        stat.st_blocks as u64,
        layout.block_size() as u32,
    )
}

/// `stat`'s type, mode, owner, links, device and times under node id `ino`, with the size,
/// block count and block size the view shows (the forward mount's plaintext, the reverse
/// view's ciphertext).
pub(crate) fn attr_from_stat(
    ino: u64,
    stat: &FileStat,
    size: u64,
    blocks: u64,
    blksize: u32,
) -> FileAttr {
    FileAttr {
        ino: fuser::INodeNo(ino),
        size,
        blocks,
        atime: time(stat.st_atime, stat.st_atime_nsec),
        mtime: time(stat.st_mtime, stat.st_mtime_nsec),
        ctime: time(stat.st_ctime, stat.st_ctime_nsec),
        crtime: time(stat.st_ctime, stat.st_ctime_nsec),
        kind: file_type(stat.st_mode),
        perm: (stat.st_mode & 0o7777) as u16,
        nlink: stat.st_nlink as u32,
        uid: stat.st_uid,
        gid: stat.st_gid,
        rdev: stat.st_rdev as u32,
        blksize,
        flags: 0,
    }
}
