//! How long-running volume walks (rewrap, fsck) report progress, so the library stays free
//! of terminal handling: the CLI draws a bar or prints lines.

pub trait Progress: Sync {
    /// The number of items the walk will visit, once known.
    fn set_total(&self, _total: u64) {}
    /// `n` more items done.
    fn advance(&self, _n: u64) {}
}

/// No reporting (tests, library callers).
pub struct Silent;

impl Progress for Silent {}
