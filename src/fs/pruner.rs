//! Keeps the inode table, one O_PATH fd per node, under the process's fd limit. The kernel
//! forgets inodes only under memory pressure, so on a machine with memory to spare a walk of a
//! big tree would hold an fd for every file it met and run into EMFILE. Past a high mark, the
//! least recently used idle entries are invalidated (FUSE notify inval_entry); the kernel then
//! sends FORGET for the inodes nothing holds, which closes their fds. Open files, current
//! directories and the like stay: the kernel keeps what is in use.

use std::sync::Arc;
use std::time::Duration;

use fuser::{INodeNo, Notifier};
use nix::sys::resource::{Resource, getrlimit};

use super::inodes::InodeTable;

/// How often the table size is checked when no growth past the high mark wakes the pruner.
const CHECK_INTERVAL: Duration = Duration::from_millis(100);
/// The least time between two rounds of asking the kernel to forget.
const PRUNE_SPACING: Duration = Duration::from_millis(10);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PruneLimits {
    /// Start pruning when the table holds more nodes than this.
    pub high: usize,
    /// ...and ask the kernel to forget enough to come down to this.
    pub low: usize,
}

impl PruneLimits {
    /// Inodes kept by default: ~200 bytes and one descriptor each, so about 20 MiB of node
    /// table at most, however large the tree a walk goes through.
    pub const DEFAULT_BUDGET: usize = 100_000;

    /// Marks at the smaller of `budget` and 1/2 of the soft RLIMIT_NOFILE, pruning down to half
    /// of that: the other half of the fd limit is headroom for open files, the FUSE channels,
    /// the key services, and for new lookups while a round of invalidations waits on directory
    /// locks held by busy creators.
    pub fn from_fd_limit(budget: usize) -> Self {
        let soft = getrlimit(Resource::RLIMIT_NOFILE)
            .map(|(soft, _)| soft)
            .unwrap_or(1024)
            .min(usize::MAX as u64) as usize;
        Self::for_limit(soft, budget)
    }

    pub fn for_limit(fd_limit: usize, budget: usize) -> Self {
        let high = (fd_limit / 2).min(budget).max(64);
        PruneLimits {
            high,
            low: (high / 2).max(32),
        }
    }
}

/// Runs for the life of the process.
pub fn spawn(inodes: Arc<InodeTable>, notifier: Notifier, limits: PruneLimits) {
    let spawned = std::thread::Builder::new()
        .name("sealfs-pruner".into())
        .spawn(move || {
            inodes.wake_above(std::thread::current(), limits.high);
            loop {
                std::thread::park_timeout(CHECK_INTERVAL);
                let nodes = inodes.len();
                if nodes <= limits.high {
                    continue;
                }
                let candidates = inodes.prune_candidates(nodes - limits.low);
                tracing::debug!(
                    nodes,
                    asked = candidates.len(),
                    "asking the kernel to forget idle inodes"
                );
                for (parent, name) in candidates {
                    // ENOENT: the kernel no longer has that entry (renamed, already gone).
                    if let Err(e) = notifier.inval_entry(INodeNo(parent), &name)
                        && e.raw_os_error() != Some(libc::ENOENT)
                    {
                        tracing::debug!(error = %e, "inval_entry failed");
                        if e.raw_os_error() == Some(libc::ENODEV) {
                            return;
                        }
                    }
                }
                // The kernel forgets asynchronously: give it a moment before asking again.
                std::thread::sleep(PRUNE_SPACING);
            }
        });
    if let Err(e) = spawned {
        tracing::warn!("cannot start the inode pruner, fds are not bounded: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marks_scale_with_the_limit() {
        assert_eq!(
            PruneLimits::for_limit(20_000, PruneLimits::DEFAULT_BUDGET),
            PruneLimits {
                high: 10_000,
                low: 5_000
            }
        );
        assert_eq!(
            PruneLimits::for_limit(1 << 20, PruneLimits::DEFAULT_BUDGET),
            PruneLimits {
                high: 100_000,
                low: 50_000
            },
            "memory is bounded even when descriptors are not"
        );
        let tiny = PruneLimits::for_limit(10, 5);
        assert!(tiny.low <= tiny.high && tiny.high >= 64);
    }
}
