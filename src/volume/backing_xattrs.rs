//! The raw extended attributes of a backing inode, named by an fd. An `O_PATH` fd (which the
//! f*xattr calls refuse) goes through `/proc/self/fd/N`; an fd opened for reading is used as
//! it is, which spares a path walk through procfs per call. What the names and values mean is
//! `names`' business; this module only moves bytes.

use std::ffi::CString;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::os::unix::ffi::OsStrExt;

use super::error::{Result, VolumeError};
use super::names::USER_XATTR_PREFIX;
use super::proc_fd_path;

/// The inode an fd opens, as the xattr calls take it.
pub enum XattrTarget<'fd> {
    /// Any fd, `O_PATH` ones included, by its /proc path.
    Proc(CString),
    /// An fd opened for reading (not `O_PATH`).
    Open(BorrowedFd<'fd>),
}

impl<'fd> XattrTarget<'fd> {
    /// Works for every fd, `O_PATH` ones included.
    pub fn new(fd: BorrowedFd<'_>) -> Self {
        XattrTarget::Proc(
            CString::new(proc_fd_path(fd).as_os_str().as_bytes()).expect("no NUL in a /proc path"),
        )
    }

    /// For an fd opened for reading or writing; the calls fail with EBADF on an `O_PATH` one.
    pub fn open(fd: BorrowedFd<'fd>) -> Self {
        XattrTarget::Open(fd)
    }

    /// Every backing xattr name (every namespace).
    pub fn list(&self) -> Result<Vec<Vec<u8>>> {
        // SAFETY: a valid C string and a buffer of the length given.
        let raw = read_xattr(|buf| unsafe {
            match self {
                XattrTarget::Proc(path) => {
                    libc::listxattr(path.as_ptr(), buf.as_mut_ptr().cast(), buf.len())
                }
                XattrTarget::Open(fd) => {
                    libc::flistxattr(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len())
                }
            }
        })?;
        Ok(raw
            .split(|&b| b == 0)
            .filter(|n| !n.is_empty())
            .map(<[u8]>::to_vec)
            .collect())
    }

    /// How many bytes a listing of every name takes (each with its NUL).
    pub fn list_size(&self) -> Result<usize> {
        // SAFETY: a valid C string; a zero-length buffer asks for the size only.
        let rc = unsafe {
            match self {
                XattrTarget::Proc(path) => libc::listxattr(path.as_ptr(), std::ptr::null_mut(), 0),
                XattrTarget::Open(fd) => libc::flistxattr(fd.as_raw_fd(), std::ptr::null_mut(), 0),
            }
        };
        if rc < 0 {
            return Err(std::io::Error::last_os_error().into());
        }
        Ok(rc as usize)
    }

    /// The `user.*` names, the ones sealfs seals; none where the backing store has no xattrs.
    pub fn list_user(&self) -> Result<Vec<Vec<u8>>> {
        match self.list() {
            Ok(names) => Ok(names
                .into_iter()
                .filter(|n| n.starts_with(USER_XATTR_PREFIX))
                .collect()),
            Err(VolumeError::Io(e)) if e.raw_os_error() == Some(libc::ENOTSUP) => Ok(vec![]),
            Err(e) => Err(e),
        }
    }

    pub fn get(&self, name: &[u8]) -> Result<Vec<u8>> {
        let name = c_name(name)?;
        // SAFETY: valid C strings and a buffer of the length given.
        read_xattr(|buf| unsafe {
            match self {
                XattrTarget::Proc(path) => libc::getxattr(
                    path.as_ptr(),
                    name.as_ptr(),
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                ),
                XattrTarget::Open(fd) => libc::fgetxattr(
                    fd.as_raw_fd(),
                    name.as_ptr(),
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                ),
            }
        })
    }

    /// The length of the value under `name`; none when there is no such attribute.
    pub fn size(&self, name: &[u8]) -> Result<Option<usize>> {
        let name = c_name(name)?;
        // SAFETY: valid C strings; a zero-length buffer asks for the size only.
        let rc = unsafe {
            match self {
                XattrTarget::Proc(path) => {
                    libc::getxattr(path.as_ptr(), name.as_ptr(), std::ptr::null_mut(), 0)
                }
                XattrTarget::Open(fd) => {
                    libc::fgetxattr(fd.as_raw_fd(), name.as_ptr(), std::ptr::null_mut(), 0)
                }
            }
        };
        if rc < 0 {
            let err = std::io::Error::last_os_error();
            if err.raw_os_error() == Some(libc::ENODATA) {
                return Ok(None);
            }
            return Err(err.into());
        }
        Ok(Some(rc as usize))
    }

    /// Removes `name`, if it is there.
    pub fn remove_if_there(&self, name: &[u8]) -> Result<()> {
        match self.remove(name) {
            Err(VolumeError::Io(e)) if e.raw_os_error() == Some(libc::ENODATA) => Ok(()),
            other => other,
        }
    }

    /// `flags`: 0, `XATTR_CREATE` or `XATTR_REPLACE`, as setxattr(2).
    pub fn set(&self, name: &[u8], value: &[u8], flags: i32) -> Result<()> {
        let name = c_name(name)?;
        // SAFETY: valid C strings and a value of the length given.
        let (value_ptr, len) = (value.as_ptr().cast(), value.len());
        let rc = unsafe {
            match self {
                XattrTarget::Proc(path) => {
                    libc::setxattr(path.as_ptr(), name.as_ptr(), value_ptr, len, flags)
                }
                XattrTarget::Open(fd) => {
                    libc::fsetxattr(fd.as_raw_fd(), name.as_ptr(), value_ptr, len, flags)
                }
            }
        };
        if rc != 0 {
            return Err(std::io::Error::last_os_error().into());
        }
        Ok(())
    }

    pub fn remove(&self, name: &[u8]) -> Result<()> {
        let name = c_name(name)?;
        // SAFETY: valid C strings.
        let rc = unsafe {
            match self {
                XattrTarget::Proc(path) => libc::removexattr(path.as_ptr(), name.as_ptr()),
                XattrTarget::Open(fd) => libc::fremovexattr(fd.as_raw_fd(), name.as_ptr()),
            }
        };
        if rc != 0 {
            return Err(std::io::Error::last_os_error().into());
        }
        Ok(())
    }
}

fn c_name(name: &[u8]) -> Result<CString> {
    CString::new(name).map_err(|_| VolumeError::InvalidName)
}

/// Calls a size-probing xattr syscall twice: once for the size, once to read.
fn read_xattr(call: impl Fn(&mut [u8]) -> isize) -> Result<Vec<u8>> {
    loop {
        let size = call(&mut []);
        if size < 0 {
            return Err(std::io::Error::last_os_error().into());
        }
        let mut buf = vec![0u8; size as usize];
        let got = call(&mut buf);
        if got < 0 {
            let err = std::io::Error::last_os_error();
            if err.raw_os_error() == Some(libc::ERANGE) {
                continue;
            }
            return Err(err.into());
        }
        buf.truncate(got as usize);
        return Ok(buf);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    #[test]
    fn set_list_get_remove_round_trip_by_proc_path_and_by_open_fd() {
        let dir = tempfile::tempdir().unwrap();
        let file = std::fs::File::create(dir.path().join("f")).unwrap();
        let o_path = nix::fcntl::open(
            &dir.path().join("f"),
            nix::fcntl::OFlag::O_PATH,
            nix::sys::stat::Mode::empty(),
        )
        .unwrap();
        for target in [
            XattrTarget::new(o_path.as_fd()),
            XattrTarget::open(file.as_fd()),
        ] {
            target.set(b"user.a", b"value", 0).unwrap();
            assert_eq!(target.list_user().unwrap(), vec![b"user.a".to_vec()]);
            assert_eq!(target.get(b"user.a").unwrap(), b"value");
            target.remove(b"user.a").unwrap();
            assert!(target.list_user().unwrap().is_empty());
            assert!(target.get(b"user.a").is_err());
        }
        // Why `new` exists: the f*xattr calls refuse an O_PATH fd.
        assert!(XattrTarget::open(o_path.as_fd()).list().is_err());
    }
}
