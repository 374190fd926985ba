//! The one place where errors become errno values. The match is exhaustive so that a new
//! error variant forces a decision here.

use fuser::Errno;

use crate::io::IoError;
use crate::keys::KeyError;
use crate::volume::VolumeError;

pub fn errno_of(err: &VolumeError) -> Errno {
    match err {
        VolumeError::Io(e) | VolumeError::Block(IoError::Io(e)) => raw(e),
        VolumeError::Block(IoError::Integrity { .. }) => Errno::EIO,
        VolumeError::Block(IoError::TooLarge) => Errno::EFBIG,
        VolumeError::Keys(KeyError::Crypto(_)) => Errno::EIO,
        VolumeError::Keys(_) | VolumeError::Format(_) | VolumeError::Corrupt(_) => Errno::EIO,
        VolumeError::NameTooLong => Errno::ENAMETOOLONG,
        VolumeError::InvalidName => Errno::EINVAL,
        VolumeError::Unsupported(_) => Errno::ENOTSUP,
        VolumeError::Usage(_) => Errno::EINVAL,
    }
}

fn raw(e: &std::io::Error) -> Errno {
    Errno::from_i32(e.raw_os_error().unwrap_or(libc::EIO))
}

/// Integrity failures are what an operator must see: they are logged at error level, with
/// what failed (file id, block), never key material. Ordinary errnos are only traced.
pub fn report(op: &'static str, err: &VolumeError) -> Errno {
    let errno = errno_of(err);
    let damage = matches!(
        err,
        VolumeError::Corrupt(_)
            | VolumeError::Format(_)
            | VolumeError::Keys(_)
            | VolumeError::Block(IoError::Integrity { .. })
    );
    if damage {
        tracing::error!(op, error = %err, "integrity failure; returning EIO");
    } else {
        tracing::debug!(op, error = %err, errno = errno.code(), "request failed");
    }
    errno
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mapping() {
        let io = |n| VolumeError::Io(std::io::Error::from_raw_os_error(n));
        assert_eq!(errno_of(&io(libc::ENOTEMPTY)), Errno::ENOTEMPTY);
        assert_eq!(errno_of(&VolumeError::Corrupt("x".into())), Errno::EIO);
        assert_eq!(errno_of(&VolumeError::NameTooLong), Errno::ENAMETOOLONG);
        let integrity = VolumeError::Block(IoError::Integrity {
            file: "f".into(),
            block: 1,
        });
        assert_eq!(errno_of(&integrity), Errno::EIO);
    }
}
