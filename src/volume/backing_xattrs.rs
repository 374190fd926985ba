//! The raw extended attributes of a backing inode, named by an fd. They go through
//! `/proc/self/fd/N` so that an `O_PATH` fd (which the f*xattr calls refuse) works too.
//! What the names and values mean is `names`' business; this module only moves bytes.

use std::ffi::CString;
use std::os::fd::BorrowedFd;
use std::os::unix::ffi::OsStrExt;

use super::error::{Result, VolumeError};
use super::names::{USER_XATTR_PREFIX, read_xattr};
use super::proc_fd_path;

/// The inode an fd opens, as a path the xattr calls take.
pub struct XattrTarget(CString);

impl XattrTarget {
    pub fn new(fd: BorrowedFd<'_>) -> Self {
        XattrTarget(
            CString::new(proc_fd_path(fd).as_os_str().as_bytes()).expect("no NUL in a /proc path"),
        )
    }

    /// Every backing xattr name (every namespace).
    pub fn list(&self) -> Result<Vec<Vec<u8>>> {
        // SAFETY: a valid C string and a buffer of the length given.
        let raw = read_xattr(|buf| unsafe {
            libc::listxattr(self.0.as_ptr(), buf.as_mut_ptr().cast(), buf.len())
        })?;
        Ok(raw
            .split(|&b| b == 0)
            .filter(|n| !n.is_empty())
            .map(<[u8]>::to_vec)
            .collect())
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
            libc::getxattr(
                self.0.as_ptr(),
                name.as_ptr(),
                buf.as_mut_ptr().cast(),
                buf.len(),
            )
        })
    }

    /// `flags`: 0, `XATTR_CREATE` or `XATTR_REPLACE`, as setxattr(2).
    pub fn set(&self, name: &[u8], value: &[u8], flags: i32) -> Result<()> {
        let name = c_name(name)?;
        // SAFETY: valid C strings and a value of the length given.
        let rc = unsafe {
            libc::setxattr(
                self.0.as_ptr(),
                name.as_ptr(),
                value.as_ptr().cast(),
                value.len(),
                flags,
            )
        };
        if rc != 0 {
            return Err(std::io::Error::last_os_error().into());
        }
        Ok(())
    }

    pub fn remove(&self, name: &[u8]) -> Result<()> {
        let name = c_name(name)?;
        // SAFETY: valid C strings.
        if unsafe { libc::removexattr(self.0.as_ptr(), name.as_ptr()) } != 0 {
            return Err(std::io::Error::last_os_error().into());
        }
        Ok(())
    }
}

fn c_name(name: &[u8]) -> Result<CString> {
    CString::new(name).map_err(|_| VolumeError::InvalidName)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    #[test]
    fn set_list_get_remove_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let file = std::fs::File::create(dir.path().join("f")).unwrap();
        let target = XattrTarget::new(file.as_fd());
        target.set(b"user.a", b"value", 0).unwrap();
        assert_eq!(target.list_user().unwrap(), vec![b"user.a".to_vec()]);
        assert_eq!(target.get(b"user.a").unwrap(), b"value");
        target.remove(b"user.a").unwrap();
        assert!(target.list_user().unwrap().is_empty());
        assert!(target.get(b"user.a").is_err());
    }
}
