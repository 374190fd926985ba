//! Who else touches a cipher dir, and how sealfs waits for them: every lock sealfs takes on
//! the backing store, built by one primitive (`file_locks::ofd_lock`).
//!
//! - `claim`: who has the cipher dir mounted, on this host or any other sharing its store;
//! - `maintenance`: maintenance commands kept apart (config rewrites, rewraps), and the
//!   directory locks that order creates against a key policy set on their directory;
//! - `file_locks`: byte-range locks on data files for shared mounts (blocks, the hole map)
//!   and the program locks (flock, fcntl) shared mounts forward.
//!
//! What a mount does with a config another host changed (`volume::follow`) belongs to the
//! opened volume; which lock kind a backing store supports is found by its probe
//! (`volume::backing`). Nothing here knows about keys, names or the volume: this folder sits
//! below `io`, which takes block locks through it.

pub mod claim;
pub mod file_locks;
pub mod maintenance;

use thiserror::Error;

use crate::crypto::CryptoError;

/// Everything from a block to the end of file, whatever the end becomes.
pub const TO_END: u64 = u64::MAX;

/// How whole-file locks (the claim, mount records) are taken on a backing store.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LockKind {
    /// OFD byte-range locks (F_OFD_SETLK), which shared filesystems carry across hosts.
    Ofd,
    /// flock(2), where a store has no byte-range locks.
    Flock,
}

#[derive(Debug, Error)]
pub enum CoordError {
    /// Held by someone this claim or lock excludes; the text names them.
    #[error("{0}")]
    InUse(String),
    /// Refused, with the reason a person can act on.
    #[error("{0}")]
    Refused(String),
    #[error(transparent)]
    Io(#[from] std::io::Error),
    /// A lock past the range locks may cover.
    #[error("file offset out of range")]
    TooLarge,
    /// No OS randomness for a record's name.
    #[error("cannot make a random name: {0}")]
    Random(CryptoError),
}

impl From<nix::Error> for CoordError {
    fn from(err: nix::Error) -> Self {
        CoordError::Io(std::io::Error::from(err))
    }
}

pub type Result<T, E = CoordError> = std::result::Result<T, E>;
