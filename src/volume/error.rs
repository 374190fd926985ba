use std::io;

use thiserror::Error;

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
    #[error("name too long")]
    NameTooLong,
    #[error("invalid name")]
    InvalidName,
    #[error("not supported: {0}")]
    Unsupported(&'static str),
    /// A mistake in how a command was used: explained to the user, never an errno.
    #[error("{0}")]
    Usage(String),
}

impl From<nix::Error> for VolumeError {
    fn from(err: nix::Error) -> Self {
        VolumeError::Io(io::Error::from(err))
    }
}

pub type Result<T, E = VolumeError> = std::result::Result<T, E>;
