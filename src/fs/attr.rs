use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fuser::FileAttr;
use nix::sys::stat::FileStat;

use super::inodes::{InodeTable, file_type};
use crate::format::block::Layout;
use crate::format::name::symlink_plain_len;

fn time(secs: i64, nsecs: i64) -> SystemTime {
    if secs >= 0 {
        UNIX_EPOCH + Duration::new(secs as u64, nsecs as u32)
    } else {
        UNIX_EPOCH - Duration::from_secs(secs.unsigned_abs()) + Duration::from_nanos(nsecs as u64)
    }
}

/// The attributes the user sees: the backing inode's, with the plaintext size.
pub fn to_attr(stat: &FileStat, table: &InodeTable, layout: &Layout) -> FileAttr {
    let kind = file_type(stat.st_mode);
    let size = match kind {
        fuser::FileType::RegularFile => layout.plain_size(stat.st_size as u64),
        fuser::FileType::Symlink => symlink_plain_len(stat.st_size as u64),
        _ => stat.st_size as u64,
    };
    FileAttr {
        ino: fuser::INodeNo(table.node_id(stat.st_ino)),
        size,
        blocks: stat.st_blocks as u64,
        atime: time(stat.st_atime, stat.st_atime_nsec),
        mtime: time(stat.st_mtime, stat.st_mtime_nsec),
        ctime: time(stat.st_ctime, stat.st_ctime_nsec),
        crtime: time(stat.st_ctime, stat.st_ctime_nsec),
        kind,
        perm: (stat.st_mode & 0o7777) as u16,
        nlink: stat.st_nlink as u32,
        uid: stat.st_uid,
        gid: stat.st_gid,
        rdev: stat.st_rdev as u32,
        blksize: layout.block_size() as u32,
        flags: 0,
    }
}
