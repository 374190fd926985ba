//! The crash-state copy of the lower tree, made in this process (see `copy_dir`).

use std::collections::HashMap;
use std::ffi::CString;
use std::fs::File;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};

use nix::fcntl::AT_FDCWD;
use nix::sys::stat::{FchmodatFlags, Mode, SFlag, UtimensatFlags, fchmodat, utimensat};
use nix::sys::time::TimeSpec;

use super::{c_path, check, nx, xattr_bytes};

/// Copies the tree `from` into `to` (made here), keeping hard links, modes, owners, times,
/// xattrs and holes (every 4 KiB of zeros becomes one). In this process, never by a child: a
/// snapshot is taken inside a FUSE handler, and a child, when it execs, closes what it
/// inherited from the test's threads; closing a file of the sealfs mount on top waits for
/// sealfs, which waits for this very handler.
pub(super) fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    copy_entries(from, to, &mut HashMap::new());
}

/// Copies the entries of directory `from` into `to`; `links` maps the (device, inode) of each
/// file with more than one name to its first copy.
fn copy_entries(from: &Path, to: &Path, links: &mut HashMap<(u64, u64), PathBuf>) {
    for entry in std::fs::read_dir(from).unwrap() {
        let src = entry.unwrap().path();
        let dst = to.join(src.file_name().unwrap());
        let meta = std::fs::symlink_metadata(&src).unwrap();
        let kind = meta.file_type();
        if let Some(first) = links.get(&(meta.dev(), meta.ino())) {
            std::fs::hard_link(first, &dst).unwrap();
            continue;
        }
        if kind.is_dir() {
            std::fs::create_dir(&dst).unwrap();
            copy_entries(&src, &dst, links);
        } else if kind.is_symlink() {
            std::os::unix::fs::symlink(std::fs::read_link(&src).unwrap(), &dst).unwrap();
        } else if kind.is_file() {
            copy_data(&src, &dst, meta.len());
        } else {
            let kind = SFlag::from_bits_truncate(meta.mode() & SFlag::S_IFMT.bits());
            nix::sys::stat::mknod(&dst, kind, Mode::empty(), meta.rdev()).unwrap();
        }
        if !kind.is_dir() && meta.nlink() > 1 {
            links.insert((meta.dev(), meta.ino()), dst.clone());
        }
        copy_attrs(&src, &dst, &meta);
    }
}

/// A regular file's bytes, with holes where `src` has 4 KiB of zeros.
fn copy_data(src: &Path, dst: &Path, len: u64) {
    let (src, dst) = (File::open(src).unwrap(), File::create(dst).unwrap());
    let mut buf = vec![0u8; 4096];
    let mut offset = 0;
    while offset < len {
        let n = src.read_at(&mut buf, offset).unwrap();
        if n == 0 {
            break;
        }
        if buf[..n].iter().any(|&b| b != 0) {
            dst.write_all_at(&buf[..n], offset).unwrap();
        }
        offset += n as u64;
    }
    dst.set_len(len).unwrap();
}

/// Xattrs, owner, mode and times of `src` onto its copy `dst`.
fn copy_attrs(src: &Path, dst: &Path, meta: &std::fs::Metadata) {
    let (src_c, dst_c) = (c_path(src), c_path(dst));
    // SAFETY: NUL-terminated paths and buffers of the lengths given.
    let names =
        xattr_bytes(|buf, len| unsafe { libc::llistxattr(src_c.as_ptr(), buf.cast(), len) })
            .unwrap();
    for name in names.split(|&b| b == 0).filter(|n| !n.is_empty()) {
        let name = CString::new(name).unwrap();
        let value = xattr_bytes(|buf, len| unsafe {
            libc::lgetxattr(src_c.as_ptr(), name.as_ptr(), buf, len)
        })
        .unwrap();
        let (value_ptr, value_len) = (value.as_ptr().cast(), value.len());
        check(unsafe { libc::lsetxattr(dst_c.as_ptr(), name.as_ptr(), value_ptr, value_len, 0) })
            .unwrap_or_else(|e| panic!("copy xattr {name:?} of {}: {e:?}", src.display()));
    }
    std::os::unix::fs::lchown(dst, Some(meta.uid()), Some(meta.gid())).unwrap();
    if !meta.file_type().is_symlink() {
        let perm = Mode::from_bits_truncate(meta.mode() & 0o7777);
        nx(fchmodat(AT_FDCWD, dst, perm, FchmodatFlags::FollowSymlink)).unwrap();
    }
    let atime = TimeSpec::new(meta.atime(), meta.atime_nsec());
    let mtime = TimeSpec::new(meta.mtime(), meta.mtime_nsec());
    utimensat(
        AT_FDCWD,
        dst,
        &atime,
        &mtime,
        UtimensatFlags::NoFollowSymlink,
    )
    .unwrap();
}
