//! Extended attributes of a path through the plain syscalls, as programs set and read them.

use std::path::Path;

pub fn set_xattr(path: &Path, name: &str, value: &[u8]) {
    let (path, name) = (cstr(path), std::ffi::CString::new(name).unwrap());
    let rc = unsafe {
        libc::setxattr(
            path.as_ptr(),
            name.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    assert_eq!(rc, 0, "setxattr: {}", std::io::Error::last_os_error());
}

pub fn get_xattr(path: &Path, name: &str) -> std::io::Result<Vec<u8>> {
    let (path, name) = (cstr(path), std::ffi::CString::new(name).unwrap());
    let size = unsafe { libc::getxattr(path.as_ptr(), name.as_ptr(), std::ptr::null_mut(), 0) };
    if size < 0 {
        return Err(std::io::Error::last_os_error());
    }
    let mut buf = vec![0u8; size as usize];
    let n = unsafe {
        libc::getxattr(
            path.as_ptr(),
            name.as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    };
    if n < 0 {
        return Err(std::io::Error::last_os_error());
    }
    buf.truncate(n as usize);
    Ok(buf)
}

pub fn list_xattrs(path: &Path) -> Vec<String> {
    let path = cstr(path);
    let size = unsafe { libc::listxattr(path.as_ptr(), std::ptr::null_mut(), 0) };
    assert!(size >= 0, "listxattr: {}", std::io::Error::last_os_error());
    let mut buf = vec![0u8; size as usize];
    let n = unsafe { libc::listxattr(path.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    assert!(n >= 0, "listxattr: {}", std::io::Error::last_os_error());
    buf[..n as usize]
        .split(|&b| b == 0)
        .filter(|n| !n.is_empty())
        .map(|n| String::from_utf8_lossy(n).into_owned())
        .collect()
}

fn cstr(path: &Path) -> std::ffi::CString {
    std::ffi::CString::new(std::os::unix::ffi::OsStrExt::as_bytes(path.as_os_str())).unwrap()
}

pub fn remove_xattr(path: &Path, name: &str) {
    let (path, name) = (cstr(path), std::ffi::CString::new(name).unwrap());
    let rc = unsafe { libc::removexattr(path.as_ptr(), name.as_ptr()) };
    assert_eq!(rc, 0, "removexattr: {}", std::io::Error::last_os_error());
}
