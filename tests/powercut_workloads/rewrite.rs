//! The rewrite workload of tests/powercut.rs: a 3 MiB file grown by 256 KiB (ftruncate) and
//! rewritten whole, front to back in 256 KiB writes, then fsynced, again and again: a sequential overwrite of fsynced data, whose
//! undo copies a lone mount takes window by window on a copier thread ahead of the writes.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;

use crate::common::Rng;

const LEN: usize = 3 << 20;
const WRITE: usize = 256 << 10;

/// Runs `steps` rewrites of `root/data`; `ack` gets the file's bytes after each fsync returned.
pub fn run(root: &Path, rng: &mut Rng, steps: usize, mut ack: impl FnMut(&[u8])) {
    let f = File::create(root.join("data")).unwrap();
    for step in 0..steps {
        let seed = rng.next();
        // Each rewrite grows the file by one write first (ftruncate, as fio lays files out):
        // the blocks past the old end are new in the epoch and need no copy.
        let len = LEN + step * WRITE;
        f.set_len(len as u64).unwrap();
        let model: Vec<u8> = (0..len as u64)
            .map(|i| (i.wrapping_mul(0x9e37_79b9).wrapping_add(seed) >> 13) as u8)
            .collect();
        for at in (0..len).step_by(WRITE) {
            f.write_all_at(&model[at..at + WRITE], at as u64).unwrap();
        }
        f.sync_all().unwrap();
        ack(&model);
    }
}
