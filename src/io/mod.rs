//! The data file: the one place that knows how a regular file's ciphertext is laid out and
//! sealed. Its preamble, the block layout, sealing and opening runs of blocks (random nonces
//! forward, per-index nonces for the reverse view), read-modify-write of edge blocks, holes,
//! truncation, allocation and seeking. The forward mount, the reverse view, fsck and repair
//! all go through it; nothing else reads or writes block bytes. The hot path lives here.

mod blocks;
mod buffers;
mod cipher_stream;
pub mod codec;
mod data_file;
pub mod holes;
mod preamble;
pub mod range_lock;
pub mod undo;

use std::io;

use thiserror::Error;

use crate::crypto::CryptoError;
use crate::format::FormatError;

pub use blocks::Nonces;
pub use buffers::read_full_at;
pub use cipher_stream::{read_sealed, sealed_len};
pub use data_file::{DataFile, Extent, SeekTo};
pub use holes::{HoleLedger, Holes, LedgerAccess, Persist};
pub use preamble::{preamble, read_file_id, read_preamble, write_preamble};
pub use undo::{Recovery, StoredBlocks, UndoLedger, sync_file_range};

/// A file id: what binds a data file's blocks and names its header.
pub use crate::format::Id as FileId;
/// The block layout of a volume (block size, offsets between plaintext and data file).
pub use crate::format::block::{Layout, Preamble};

#[derive(Debug, Error)]
pub enum IoError {
    #[error(transparent)]
    Io(#[from] io::Error),
    #[error("block {block} of file {file} fails authentication")]
    Integrity { file: String, block: u64 },
    /// An all-zero stored block of a version 2 data file that its hole map does not record:
    /// zeroed by someone who can write the cipher dir, or a hole a crash left unrecorded.
    #[error("block {block} of file {file} is all zeros but not a recorded hole")]
    UnrecordedHole { file: String, block: u64 },
    /// The hole map sidecar does not parse or open: holes cannot be told from zeroed blocks.
    #[error("hole map of file {file}: {why}")]
    HoleMap { file: String, why: String },
    /// The data file does not start with a valid preamble: no file id to find its key by.
    #[error("data file preamble: {0}")]
    Preamble(FormatError),
    /// Sealing failed (no OS randomness, or the cipher refused): nothing was written.
    #[error("cannot seal a block: {0}")]
    Seal(CryptoError),
    #[error("file offset out of range")]
    TooLarge,
    /// SEEK_DATA or SEEK_HOLE at or past the end of file, or no data after the offset.
    #[error("no data past this offset")]
    PastEnd,
}

impl From<crate::coord::CoordError> for IoError {
    fn from(err: crate::coord::CoordError) -> Self {
        use crate::coord::CoordError;
        match err {
            CoordError::Io(e) => IoError::Io(e),
            CoordError::TooLarge => IoError::TooLarge,
            other => IoError::Io(io::Error::other(other.to_string())),
        }
    }
}
