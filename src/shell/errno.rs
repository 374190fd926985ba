//! The one place where errors become errno values. The matches are exhaustive so that a new
//! error variant forces a decision here.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use fuser::Errno;

use crate::io::IoError;
use crate::keys::{KeyError, RemoteFailure};
use crate::metrics::IntegrityKind;
use crate::volume::VolumeError;

pub fn errno_of(err: &VolumeError) -> Errno {
    match err {
        VolumeError::Io(e) | VolumeError::Block(IoError::Io(e)) => raw(e),
        VolumeError::Block(
            IoError::Integrity { .. }
            | IoError::UnrecordedHole { .. }
            | IoError::HoleMap { .. }
            | IoError::Preamble(_)
            | IoError::Seal(_),
        ) => Errno::EIO,
        VolumeError::Block(IoError::TooLarge) => Errno::EFBIG,
        VolumeError::Block(IoError::PastEnd) => Errno::ENXIO,
        VolumeError::Keys(key) => key_errno(key),
        VolumeError::Format(_) | VolumeError::Corrupt(_) | VolumeError::Seal(_) => Errno::EIO,
        VolumeError::NameTooLong => Errno::ENAMETOOLONG,
        VolumeError::XattrNameTooLong => Errno::ERANGE,
        VolumeError::InvalidName | VolumeError::InvalidArgument(_) => Errno::EINVAL,
        VolumeError::Unsupported(_) => Errno::ENOTSUP,
        VolumeError::KernelFallback(_) => Errno::ENOSYS,
        VolumeError::NotFound => Errno::ENOENT,
        VolumeError::StaleNode => Errno::ESTALE,
        VolumeError::BadHandle => Errno::EBADF,
        VolumeError::ReadOnly => Errno::EROFS,
        VolumeError::IsDirectory => Errno::EISDIR,
        VolumeError::NotDirectory => Errno::ENOTDIR,
        VolumeError::NoAttribute => Errno::ENODATA,
        VolumeError::CrossPolicy => Errno::EXDEV,
        VolumeError::InUse(_) => Errno::EBUSY,
        VolumeError::LockAbandoned => Errno::EINTR,
        VolumeError::Usage(_) => Errno::EIO,
    }
}

fn key_errno(err: &KeyError) -> Errno {
    match err {
        KeyError::HeaderIo { errno, .. } => Errno::from_i32(*errno),
        KeyError::Remote { failure, .. } => match failure {
            RemoteFailure::Unavailable => Errno::EIO,
            RemoteFailure::KeyDisabled => Errno::from_i32(libc::EKEYREVOKED),
            RemoteFailure::Denied => Errno::EACCES,
            RemoteFailure::Rejected => Errno::EIO,
        },
        KeyError::PolicyRemoved(_) => Errno::from_i32(libc::EKEYREVOKED),
        KeyError::TenantKeyUnavailable { .. } => Errno::from_i32(libc::ENOKEY),
        KeyError::WrongKey(_)
        | KeyError::UnknownPolicy(_)
        | KeyError::PolicyMismatch { .. }
        | KeyError::NoSlotForProvider(..)
        | KeyError::SlotDamaged(_)
        | KeyError::ConfigTampered
        | KeyError::KeyFile { .. }
        | KeyError::Passphrase(_)
        | KeyError::Header { .. }
        | KeyError::LoadPanicked
        | KeyError::UnknownKek(_)
        | KeyError::InconsistentKek(_)
        | KeyError::NoProvider
        | KeyError::Format(_)
        | KeyError::Crypto(_) => Errno::EIO,
    }
}

fn raw(e: &std::io::Error) -> Errno {
    Errno::from_i32(e.raw_os_error().unwrap_or(libc::EIO))
}

/// A KMS or HSM outage fails every request that needs it: say why once a minute per kind of
/// failure, not once per request.
const REMOTE_LOG_INTERVAL: Duration = Duration::from_secs(60);

fn remote_log_due(provider: &str, failure: RemoteFailure) -> bool {
    static LAST: Mutex<Option<HashMap<(String, String), Instant>>> = Mutex::new(None);
    let mut last = crate::sync::lock(&LAST);
    let map = last.get_or_insert_with(HashMap::new);
    let key = (provider.to_string(), format!("{failure:?}"));
    let now = Instant::now();
    match map.get(&key) {
        Some(at) if now.duration_since(*at) < REMOTE_LOG_INTERVAL => false,
        _ => {
            map.insert(key, now);
            true
        }
    }
}

/// What failed authentication, if `err` is an authentication failure (for the metrics).
fn integrity_kind(err: &VolumeError) -> Option<IntegrityKind> {
    match err {
        VolumeError::Block(IoError::Integrity { .. }) => Some(IntegrityKind::Block),
        VolumeError::Block(IoError::UnrecordedHole { .. }) => Some(IntegrityKind::Hole),
        VolumeError::Block(IoError::HoleMap { .. }) => Some(IntegrityKind::HoleMap),
        VolumeError::Block(IoError::Preamble(_)) => Some(IntegrityKind::Preamble),
        VolumeError::Keys(
            KeyError::Header { .. }
            | KeyError::PolicyMismatch { .. }
            | KeyError::Format(_)
            | KeyError::Crypto(crate::crypto::CryptoError::Authentication),
        ) => Some(IntegrityKind::Header),
        VolumeError::Corrupt(_) | VolumeError::Format(_) => Some(IntegrityKind::Metadata),
        _ => None,
    }
}

/// Integrity failures are what an operator must see: logged at error level, with what
/// failed (file id, block), never key material. Ordinary errnos are only traced.
pub fn report(op: &'static str, err: &VolumeError) -> Errno {
    let errno = errno_of(err);
    let metrics = crate::metrics::global();
    metrics.request_failed(op, errno.code());
    if let Some(kind) = integrity_kind(err) {
        metrics.integrity_failure(kind);
    }
    match err {
        VolumeError::Keys(KeyError::Remote {
            provider, failure, ..
        }) => {
            if remote_log_due(provider, *failure) {
                tracing::error!(op, error = %err, "key service failure (repeats are not logged for a minute)");
            }
        }
        VolumeError::Keys(KeyError::HeaderIo { .. }) => {
            tracing::debug!(op, error = %err, errno = errno.code(), "header unreadable")
        }
        VolumeError::Seal(_)
        | VolumeError::Block(IoError::Seal(_))
        | VolumeError::Keys(KeyError::LoadPanicked)
        | VolumeError::Usage(_) => {
            tracing::error!(op, error = %err, "request failed; returning EIO");
        }
        VolumeError::Corrupt(_)
        | VolumeError::Format(_)
        | VolumeError::Keys(_)
        | VolumeError::Block(
            IoError::Integrity { .. }
            | IoError::UnrecordedHole { .. }
            | IoError::HoleMap { .. }
            | IoError::Preamble(_),
        ) => {
            tracing::error!(op, error = %err, "integrity failure; returning EIO");
        }
        _ => tracing::debug!(op, error = %err, errno = errno.code(), "request failed"),
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
        assert_eq!(errno_of(&VolumeError::StaleNode), Errno::ESTALE);
        assert_eq!(errno_of(&VolumeError::XattrNameTooLong), Errno::ERANGE);
        assert_eq!(errno_of(&VolumeError::Usage("x".into())), Errno::EIO);
        let header_io = VolumeError::Keys(KeyError::HeaderIo {
            file: "f".into(),
            errno: libc::EMFILE,
        });
        assert_eq!(errno_of(&header_io), Errno::EMFILE);
        let integrity = VolumeError::Block(IoError::Integrity {
            file: "f".into(),
            block: 1,
        });
        assert_eq!(errno_of(&integrity), Errno::EIO);
        let remote = |failure| {
            VolumeError::Keys(KeyError::Remote {
                provider: "kms".into(),
                failure,
                reason: String::new(),
            })
        };
        assert_eq!(errno_of(&remote(RemoteFailure::Unavailable)), Errno::EIO);
        assert_eq!(
            errno_of(&remote(RemoteFailure::KeyDisabled)).code(),
            libc::EKEYREVOKED
        );
        assert_eq!(errno_of(&remote(RemoteFailure::Denied)), Errno::EACCES);
    }

    #[test]
    fn remote_failures_log_once_per_interval() {
        assert!(remote_log_due("test-provider", RemoteFailure::Unavailable));
        assert!(!remote_log_due("test-provider", RemoteFailure::Unavailable));
        assert!(remote_log_due("test-provider", RemoteFailure::KeyDisabled));
    }
}
