//! Applies one operation under a root with the raw system calls a program would make, and
//! returns what a caller sees: the result or errno, and what the call left (bytes read, the
//! mode or times after it). Both sides of the harness go through this one function.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use crate::ops::Op;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    Done,
    /// A write or read: the byte count, and for a read the content's hash.
    Bytes(usize, Option<[u8; 32]>),
    /// What a chmod, chown or utimes left: mode, uid, gid, and after utimes atime and mtime.
    Attrs(u32, u32, u32, Option<[(i64, i64); 2]>),
    /// A device node the harness does not open (open may differ with nodev).
    Device,
    /// What no filesystem may answer (a data extent that SEEK_HOLE says ends where it starts).
    Broken(String),
    Errno(i32),
}

fn c(root: &Path, rel: &str) -> CString {
    CString::new(root.join(rel).as_os_str().as_bytes()).unwrap()
}

fn errno() -> i32 {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

fn check(rc: libc::c_int) -> Result<(), i32> {
    if rc < 0 { Err(errno()) } else { Ok(()) }
}

pub fn lstat(path: &CString) -> Result<libc::stat, i32> {
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    check(unsafe { libc::lstat(path.as_ptr(), &mut st) })?;
    Ok(st)
}

/// An fd of a file the harness may open: no symlink followed, no fifo waited on, no device
/// opened.
struct Fd(libc::c_int);

impl Drop for Fd {
    fn drop(&mut self) {
        unsafe { libc::close(self.0) };
    }
}

fn open(path: &CString, flags: libc::c_int) -> Result<Option<Fd>, i32> {
    if let Ok(st) = lstat(path) {
        let kind = st.st_mode & libc::S_IFMT;
        if kind == libc::S_IFCHR || kind == libc::S_IFBLK {
            return Ok(None);
        }
    }
    let fd = unsafe {
        libc::open(
            path.as_ptr(),
            flags | libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC,
        )
    };
    check(fd)?;
    Ok(Some(Fd(fd)))
}

/// A symlink's atime is left out: a mount reads a long target's backing link to give its
/// length, which relatime may count as an access (docs/GUARANTEES.md). So are the permission
/// bits of a fifo or device node, which a mount chooses itself where the reference keeps an
/// ACL (the tree compares them wherever it keeps none).
fn attrs(path: &CString, times: bool) -> Result<Outcome, i32> {
    let mut st = lstat(path)?;
    if !matches!(
        st.st_mode & libc::S_IFMT,
        libc::S_IFREG | libc::S_IFDIR | libc::S_IFLNK
    ) {
        st.st_mode &= !0o777;
    }
    let atime = if st.st_mode & libc::S_IFMT == libc::S_IFLNK {
        (0, 0)
    } else {
        (st.st_atime, st.st_atime_nsec)
    };
    Ok(Outcome::Attrs(
        st.st_mode,
        st.st_uid,
        st.st_gid,
        times.then_some([atime, (st.st_mtime, st.st_mtime_nsec)]),
    ))
}

pub fn xattr_name(i: u8) -> CString {
    CString::new(format!("user.differential-{i}")).unwrap()
}

/// Runs `f` with the filesystem uid and gid of an unprivileged user (this thread only), who
/// lacks CAP_FSETID and every other file capability while they are in force.
fn as_user<T>(f: impl FnOnce() -> T) -> T {
    unsafe {
        libc::setfsgid(1000);
        libc::setfsuid(1000);
    }
    let out = f();
    unsafe {
        libc::setfsuid(0);
        libc::setfsgid(0);
    }
    out
}

fn write(path: &CString, offset: u64, data: &[u8], append: bool) -> Result<Outcome, i32> {
    let flags = libc::O_WRONLY | if append { libc::O_APPEND } else { 0 };
    let Some(fd) = open(path, flags)? else {
        return Ok(Outcome::Device);
    };
    let n = unsafe {
        if append {
            libc::write(fd.0, data.as_ptr().cast(), data.len())
        } else {
            libc::pwrite(fd.0, data.as_ptr().cast(), data.len(), offset as i64)
        }
    };
    if n < 0 {
        return Err(errno());
    }
    Ok(Outcome::Bytes(n as usize, None))
}

fn read_all(path: &CString) -> Result<Outcome, i32> {
    let Some(fd) = open(path, libc::O_RDONLY)? else {
        return Ok(Outcome::Device);
    };
    let mut content = Vec::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = unsafe { libc::read(fd.0, buf.as_mut_ptr().cast(), buf.len()) };
        if n < 0 {
            let e = errno();
            if e == libc::EAGAIN {
                break;
            }
            return Err(e);
        }
        if n == 0 {
            break;
        }
        content.extend_from_slice(&buf[..n as usize]);
    }
    Ok(Outcome::Bytes(
        content.len(),
        Some(*blake3::hash(&content).as_bytes()),
    ))
}

/// Reads a file as `cp` and backup tools read a sparse one: SEEK_DATA to the next data, SEEK_HOLE
/// to its end, pread of what lies between; the content so built must be the file's.
fn sparse_read(path: &CString) -> Result<Outcome, i32> {
    let Some(fd) = open(path, libc::O_RDONLY)? else {
        return Ok(Outcome::Device);
    };
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    check(unsafe { libc::fstat(fd.0, &mut st) })?;
    if st.st_mode & libc::S_IFMT != libc::S_IFREG {
        return Ok(Outcome::Done);
    }
    let size = st.st_size;
    let mut content = vec![0u8; size as usize];
    let mut offset = 0i64;
    for _ in 0..10_000 {
        let data = unsafe { libc::lseek(fd.0, offset, libc::SEEK_DATA) };
        if data < 0 {
            match errno() {
                libc::ENXIO => break,
                e => return Err(e),
            }
        }
        if data < offset || data >= size {
            return Ok(Outcome::Broken(format!(
                "SEEK_DATA({offset}) = {data} in a file of {size} bytes"
            )));
        }
        let hole = unsafe { libc::lseek(fd.0, data, libc::SEEK_HOLE) };
        if hole <= data {
            return Ok(Outcome::Broken(format!(
                "SEEK_HOLE({data}) = {hole} after SEEK_DATA({offset}) = {data}, size {size}"
            )));
        }
        let end = hole.min(size);
        let slice = &mut content[data as usize..end as usize];
        let n = unsafe { libc::pread(fd.0, slice.as_mut_ptr().cast(), slice.len(), data) };
        if n < 0 {
            return Err(errno());
        }
        offset = end;
        if offset >= size {
            break;
        }
    }
    Ok(Outcome::Bytes(
        content.len(),
        Some(*blake3::hash(&content).as_bytes()),
    ))
}

/// The xattr a `setfacl` sends; ACLs on fifos and device nodes are a documented difference
/// (docs/GUARANTEES.md), so the harness sets none there.
fn set_acl(
    path: &CString,
    default: bool,
    perms: &[u16],
    named: &[(bool, u32, u16)],
) -> Result<Outcome, i32> {
    let st = lstat(path)?;
    if !matches!(st.st_mode & libc::S_IFMT, libc::S_IFREG | libc::S_IFDIR) {
        return Ok(Outcome::Device);
    }
    let name = if default {
        c"system.posix_acl_default"
    } else {
        c"system.posix_acl_access"
    };
    if perms.is_empty() {
        return check(unsafe { libc::lremovexattr(path.as_ptr(), name.as_ptr()) })
            .map(|()| Outcome::Done);
    }
    let mut value = 2u32.to_le_bytes().to_vec();
    let mut entry = |tag: u16, perm: u16, id: u32| {
        value.extend_from_slice(&tag.to_le_bytes());
        value.extend_from_slice(&perm.to_le_bytes());
        value.extend_from_slice(&id.to_le_bytes());
    };
    entry(0x01, perms[0], u32::MAX);
    for (_, id, perm) in named.iter().filter(|n| n.0) {
        entry(0x02, *perm, *id);
    }
    entry(0x04, perms[1], u32::MAX);
    for (_, id, perm) in named.iter().filter(|n| !n.0) {
        entry(0x08, *perm, *id);
    }
    if !named.is_empty() {
        entry(0x10, perms[3], u32::MAX);
    }
    entry(0x20, perms[2], u32::MAX);
    check(unsafe {
        libc::lsetxattr(
            path.as_ptr(),
            name.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    })?;
    let st = lstat(path)?;
    Ok(Outcome::Attrs(st.st_mode, st.st_uid, st.st_gid, None))
}

pub fn apply(root: &Path, op: &Op) -> Outcome {
    match run(root, op) {
        Ok(outcome) => outcome,
        Err(e) => Outcome::Errno(e),
    }
}

fn run(root: &Path, op: &Op) -> Result<Outcome, i32> {
    let done = |rc| check(rc).map(|()| Outcome::Done);
    unsafe {
        match op {
            Op::Create { path, mode } => {
                let fd = libc::open(
                    c(root, path).as_ptr(),
                    libc::O_CREAT | libc::O_EXCL | libc::O_WRONLY | libc::O_CLOEXEC,
                    *mode,
                );
                check(fd)?;
                libc::close(fd);
                Ok(Outcome::Done)
            }
            Op::Write {
                path,
                offset,
                len,
                fill,
                append,
                as_user: user,
            } => {
                let data: Vec<u8> = (0..*len).map(|i| fill.wrapping_add(i as u8)).collect();
                let p = c(root, path);
                // Who may open a fifo made under a default ACL differs on purpose (no ACL
                // there, a mode no more permissive: docs/GUARANTEES.md); the tree compares it.
                let fifo = lstat(&p).is_ok_and(|st| st.st_mode & libc::S_IFMT == libc::S_IFIFO);
                if *user && fifo {
                    return Ok(Outcome::Device);
                }
                if *user {
                    as_user(|| write(&p, *offset, &data, *append))
                } else {
                    write(&p, *offset, &data, *append)
                }
            }
            Op::Truncate { path, size } => {
                done(libc::truncate(c(root, path).as_ptr(), *size as i64))
            }
            Op::Fallocate {
                path,
                mode,
                offset,
                len,
            } => {
                let Some(fd) = open(&c(root, path), libc::O_WRONLY)? else {
                    return Ok(Outcome::Device);
                };
                done(libc::fallocate(fd.0, *mode, *offset as i64, *len as i64))
            }
            Op::Rename { from, to, flags } => done(libc::renameat2(
                libc::AT_FDCWD,
                c(root, from).as_ptr(),
                libc::AT_FDCWD,
                c(root, to).as_ptr(),
                *flags,
            )),
            Op::Link { from, to } => done(libc::linkat(
                libc::AT_FDCWD,
                c(root, from).as_ptr(),
                libc::AT_FDCWD,
                c(root, to).as_ptr(),
                0,
            )),
            Op::Unlink { path } => done(libc::unlink(c(root, path).as_ptr())),
            Op::Mkdir { path } => done(libc::mkdir(c(root, path).as_ptr(), 0o755)),
            Op::Rmdir { path } => done(libc::rmdir(c(root, path).as_ptr())),
            Op::Symlink { target, path } => {
                let t = CString::new(target.as_bytes()).unwrap();
                done(libc::symlink(t.as_ptr(), c(root, path).as_ptr()))
            }
            Op::Mknod { path, fifo } => {
                let (kind, dev) = if *fifo {
                    (libc::S_IFIFO, 0)
                } else {
                    (libc::S_IFCHR, libc::makedev(1, 3))
                };
                done(libc::mknod(c(root, path).as_ptr(), kind | 0o644, dev))
            }
            Op::SetXattr {
                path,
                name,
                len,
                fill,
                flags,
            } => {
                let value: Vec<u8> = (0..*len).map(|i| fill.wrapping_add(i as u8)).collect();
                done(libc::lsetxattr(
                    c(root, path).as_ptr(),
                    xattr_name(*name).as_ptr(),
                    value.as_ptr().cast(),
                    value.len(),
                    *flags,
                ))
            }
            Op::RemoveXattr { path, name } => done(libc::lremovexattr(
                c(root, path).as_ptr(),
                xattr_name(*name).as_ptr(),
            )),
            Op::Chown { path, uid, gid } => {
                let p = c(root, path);
                check(libc::lchown(p.as_ptr(), *uid, *gid))?;
                attrs(&p, false)
            }
            Op::Chmod { path, mode } => {
                let p = c(root, path);
                check(libc::chmod(p.as_ptr(), *mode))?;
                attrs(&p, false)
            }
            Op::Utimes { path, secs, nanos } => {
                let p = c(root, path);
                let times = [
                    libc::timespec {
                        tv_sec: *secs / 2,
                        tv_nsec: *nanos,
                    },
                    libc::timespec {
                        tv_sec: *secs,
                        tv_nsec: *nanos,
                    },
                ];
                check(libc::utimensat(
                    libc::AT_FDCWD,
                    p.as_ptr(),
                    times.as_ptr(),
                    libc::AT_SYMLINK_NOFOLLOW,
                ))?;
                attrs(&p, true)
            }
            Op::Read { path } => read_all(&c(root, path)),
            Op::SparseRead { path } => sparse_read(&c(root, path)),
            Op::SetAcl {
                path,
                default,
                perms,
                named,
            } => set_acl(&c(root, path), *default, perms, named),
            Op::Fsync { path } => {
                let Some(fd) = open(&c(root, path), libc::O_RDONLY)? else {
                    return Ok(Outcome::Device);
                };
                done(libc::fsync(fd.0))
            }
        }
    }
}
