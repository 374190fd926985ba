//! Which all-zero stored blocks read as zeros. A version 1 data file takes any all-zero block
//! for a hole; a version 2 data file only those its hole map records (`format::holes`), so a
//! block zeroed by someone who can write the cipher dir reads as EIO, not as zeros. The map's
//! keeping (loading, caching, sidecar updates, locks between mounts) is the volume's: this
//! module says what `DataFile` asks of it.

use std::fs::File;
use std::ops::Range;

use super::IoError;
use crate::crypto::Sealer;
use crate::format::Id;

/// What a ledger call may need: the data file (for the lock between mounts) and its key
/// (which seals the map).
pub struct LedgerAccess<'a> {
    pub file: &'a File,
    pub file_id: &'a Id,
    pub sealer: &'a Sealer,
}

/// When a newly recorded hole must reach the sidecar.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Persist {
    /// Before the call returns: the caller is about to zero blocks that may hold data (punch,
    /// truncate up), and another reader must not see them zeroed but unrecorded.
    Now,
    /// With the next write of the map (fsync, close): the blocks were never written (a gap a
    /// write past the end leaves). A crash before then leaves them unrecorded, which fsck
    /// reports and `--repair` records.
    Later,
}

/// The hole map of one version 2 data file.
pub trait HoleLedger: Send + Sync {
    /// Whether block `block`, stored as all zeros, is a recorded hole.
    fn allows(&self, at: &LedgerAccess<'_>, block: u64) -> Result<bool, IoError>;
    /// Records `blocks` as holes.
    fn record(
        &self,
        at: &LedgerAccess<'_>,
        blocks: Range<u64>,
        persist: Persist,
    ) -> Result<(), IoError>;
    /// `blocks` hold sealed data now, or are cut off by a truncate: no longer holes.
    fn clear(&self, at: &LedgerAccess<'_>, blocks: Range<u64>) -> Result<(), IoError>;
}

/// How a data file treats all-zero stored blocks: its format version.
#[derive(Clone, Copy)]
pub enum Holes<'a> {
    /// Version 1: every all-zero stored block is a hole (unauthenticated, as in gocryptfs).
    AnyZeroBlock,
    /// Version 2: only blocks the ledger records.
    Recorded(&'a dyn HoleLedger),
}

impl Holes<'_> {
    /// The data file format version this stands for (its preamble's, and its blocks' associated
    /// data's).
    pub fn version(&self) -> u8 {
        match self {
            Holes::AnyZeroBlock => 1,
            Holes::Recorded(_) => 2,
        }
    }
}
