//! FUSE attributes from backing stats, for both frontends: the file type, times, and the
//! attribute record with the size each view shows.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fuser::{FileAttr, FileType};
use nix::sys::stat::FileStat;

/// The FUSE file type of a `st_mode`.
pub fn file_type(mode: u32) -> FileType {
    match mode & libc::S_IFMT {
        libc::S_IFDIR => FileType::Directory,
        libc::S_IFLNK => FileType::Symlink,
        libc::S_IFIFO => FileType::NamedPipe,
        libc::S_IFSOCK => FileType::Socket,
        libc::S_IFCHR => FileType::CharDevice,
        libc::S_IFBLK => FileType::BlockDevice,
        _ => FileType::RegularFile,
    }
}

/// The FUSE file type of a directory entry's `d_type`.
pub fn entry_type(t: nix::dir::Type) -> FileType {
    use nix::dir::Type;
    match t {
        Type::Directory => FileType::Directory,
        Type::Symlink => FileType::Symlink,
        Type::Fifo => FileType::NamedPipe,
        Type::Socket => FileType::Socket,
        Type::CharacterDevice => FileType::CharDevice,
        Type::BlockDevice => FileType::BlockDevice,
        Type::File => FileType::RegularFile,
    }
}

/// Attributes for an entry the kernel does not keep ("." and ".." of a readdirplus reply).
pub fn placeholder(ino: u64, kind: FileType) -> FileAttr {
    FileAttr {
        ino: fuser::INodeNo(ino),
        size: 0,
        blocks: 0,
        atime: UNIX_EPOCH,
        mtime: UNIX_EPOCH,
        ctime: UNIX_EPOCH,
        crtime: UNIX_EPOCH,
        kind,
        perm: 0,
        nlink: 1,
        uid: 0,
        gid: 0,
        rdev: 0,
        blksize: 4096,
        flags: 0,
    }
}

pub fn time(secs: i64, nsecs: i64) -> SystemTime {
    if secs >= 0 {
        UNIX_EPOCH + Duration::new(secs as u64, nsecs as u32)
    } else {
        UNIX_EPOCH - Duration::from_secs(secs.unsigned_abs()) + Duration::from_nanos(nsecs as u64)
    }
}

/// The seconds and nanoseconds the kernel sent for a time that fuser hands over as a
/// `SystemTime` (setattr). Before 1970 fuser 0.18 builds it as EPOCH - (|secs| s + nsec ns)
/// from the kernel's (secs, nsec), whose nanoseconds count forward: undone here, so utimensat
/// gets what the caller set (tested through a mount in tests/posix.rs).
pub fn request_time_parts(t: SystemTime) -> (i64, i64) {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => (d.as_secs() as i64, i64::from(d.subsec_nanos())),
        Err(before) => {
            let d = before.duration();
            (-(d.as_secs() as i64), i64::from(d.subsec_nanos()))
        }
    }
}

/// `stat`'s type, mode, owner, links, device and times under node id `ino`, with the size,
/// block count and block size the view shows (the forward mount's plaintext, the reverse
/// view's ciphertext).
pub fn attr_from_stat(ino: u64, stat: &FileStat, size: u64, blocks: u64, blksize: u32) -> FileAttr {
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

/// The reply to a lookup of a name that is not there, for the kernel to keep as a negative
/// entry: node id 0 (FUSE's "no such entry, but remember it").
pub fn negative_entry() -> FileAttr {
    FileAttr {
        nlink: 0,
        blksize: 0,
        ..placeholder(0, FileType::RegularFile)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn types_and_times_map() {
        assert_eq!(file_type(libc::S_IFDIR | 0o755), FileType::Directory);
        assert_eq!(file_type(libc::S_IFCHR), FileType::CharDevice);
        assert_eq!(file_type(libc::S_IFREG | 0o4755), FileType::RegularFile);
        assert_eq!(entry_type(nix::dir::Type::Symlink), FileType::Symlink);
        assert_eq!(
            time(-1, 500_000_000),
            UNIX_EPOCH - Duration::from_millis(500)
        );
        assert_eq!(time(2, 5), UNIX_EPOCH + Duration::new(2, 5));
        // fuser 0.18's encoding of a request's time before 1970, undone.
        let fuser = |secs: i64, nanos: u32| UNIX_EPOCH - Duration::new(secs.unsigned_abs(), nanos);
        assert_eq!(
            request_time_parts(fuser(-337_689_764, 822_137_477)),
            (-337_689_764, 822_137_477)
        );
        assert_eq!(request_time_parts(fuser(-5, 0)), (-5, 0));
        assert_eq!(request_time_parts(UNIX_EPOCH + Duration::new(2, 5)), (2, 5));
    }
}
