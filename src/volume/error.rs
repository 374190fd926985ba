use std::io;

use thiserror::Error;

use crate::crypto::CryptoError;
use crate::format::FormatError;
use crate::io::IoError;
use crate::keys::KeyError;

#[derive(Debug, Error)]
pub enum VolumeError {
    #[error(transparent)]
    Io(#[from] io::Error),
    #[error(transparent)]
    Keys(#[from] KeyError),
    #[error(transparent)]
    Format(#[from] FormatError),
    #[error(transparent)]
    Block(#[from] IoError),
    /// Ciphertext, a header or a name failed authentication or does not parse.
    #[error("integrity failure: {0}")]
    Corrupt(String),
    /// Sealing a name, symlink target or xattr value failed (no OS randomness, or the
    /// cipher refused): nothing was written.
    #[error("cannot seal: {0}")]
    Seal(CryptoError),
    #[error("name too long")]
    NameTooLong,
    /// An encrypted extended attribute name would exceed the backing store's 255 bytes.
    #[error("extended attribute name too long once encrypted")]
    XattrNameTooLong,
    #[error("invalid name")]
    InvalidName,
    #[error("invalid argument: {0}")]
    InvalidArgument(&'static str),
    #[error("not supported: {0}")]
    Unsupported(&'static str),
    /// Left to the kernel's generic implementation (ENOSYS makes it fall back).
    #[error("answered by the kernel: {0}")]
    KernelFallback(&'static str),
    #[error("no such file or directory")]
    NotFound,
    /// A node id the kernel still uses but this mount no longer knows.
    #[error("stale node id")]
    StaleNode,
    #[error("bad file handle")]
    BadHandle,
    #[error("read-only file system")]
    ReadOnly,
    #[error("is a directory")]
    IsDirectory,
    #[error("not a directory")]
    NotDirectory,
    #[error("no such extended attribute")]
    NoAttribute,
    /// A rename or link between directories of two key policies (see `fs::core::namespace`).
    #[error("the entry belongs to another key policy (tenant); copy it instead")]
    CrossPolicy,
    /// The cipher dir is claimed by a mount that excludes this one (see `coord::claim`).
    #[error("{0}")]
    InUse(String),
    /// A program waited for a file lock and its owner let go meanwhile (the kernel gave up on
    /// the request): the wait ends.
    #[error("the lock's owner let go while waiting for it")]
    LockAbandoned,
    /// A mistake in how a command was used: explained to the user. Commands raise it, not
    /// requests; should one reach a request it answers EIO and is logged.
    #[error("{0}")]
    Usage(String),
}

impl From<crate::coord::CoordError> for VolumeError {
    fn from(err: crate::coord::CoordError) -> Self {
        use crate::coord::CoordError;
        match err {
            CoordError::InUse(why) => VolumeError::InUse(why),
            CoordError::Io(e) => VolumeError::Io(e),
            CoordError::TooLarge => VolumeError::Block(IoError::TooLarge),
            CoordError::Random(e) => VolumeError::Seal(e),
            CoordError::Refused(why) => VolumeError::Usage(why),
        }
    }
}

impl From<nix::Error> for VolumeError {
    fn from(err: nix::Error) -> Self {
        VolumeError::Io(io::Error::from(err))
    }
}

pub type Result<T, E = VolumeError> = std::result::Result<T, E>;
