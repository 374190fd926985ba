//! The shared-mount workload of tests/powercut.rs (mounted `-o shared`): a 64 KiB file made
//! before the cuts, then 37-byte appends and 100-byte overwrites at random offsets,
//! alternately, each fdatasynced: every rewrite is copied into the journal all shared mounts
//! keep.

use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;
use std::path::Path;

use crate::common::Rng;

/// The file before the steps.
pub fn initial() -> Vec<u8> {
    (0..64 * 1024u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
        .collect()
}

/// Runs `steps` steps on `root/data`; `ack` gets the file's bytes after each fdatasync.
pub fn run(root: &Path, rng: &mut Rng, steps: usize, mut ack: impl FnMut(&[u8])) {
    let f = OpenOptions::new()
        .write(true)
        .open(root.join("data"))
        .unwrap();
    let mut model = initial();
    for i in 0..steps {
        let (offset, len) = if i % 2 == 0 {
            (model.len() as u64, 37)
        } else {
            (rng.below(model.len() as u64 - 100), 100)
        };
        let data: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
        f.write_all_at(&data, offset).unwrap();
        f.sync_data().unwrap();
        let end = offset as usize + len;
        model.resize(model.len().max(end), 0);
        model[offset as usize..end].copy_from_slice(&data);
        ack(&model);
    }
}
