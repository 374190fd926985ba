//! The resize workload of tests/powercut.rs: a 256 KiB file cut shorter and grown again
//! (ftruncate), holes punched and ranges zeroed (fallocate, keeping the size), space
//! allocated past the end (fallocate growing the size) and bytes written, each step fsynced;
//! the model is what ext4 keeps.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::Path;

use crate::common::Rng;

const LEN: u64 = 256 * 1024;

fn fallocate(f: &File, mode: i32, at: u64, len: u64) {
    let rc = unsafe { libc::fallocate(f.as_raw_fd(), mode, at as i64, len as i64) };
    assert_eq!(
        rc,
        0,
        "fallocate mode {mode}: {}",
        std::io::Error::last_os_error()
    );
}

/// Runs `steps` steps on `root/data`; `ack` gets the file's bytes after each fsync returned.
pub fn run(root: &Path, rng: &mut Rng, steps: usize, mut ack: impl FnMut(&[u8])) {
    let f = File::create(root.join("data")).unwrap();
    let mut model: Vec<u8> = (0..LEN).map(|_| rng.next() as u8).collect();
    f.write_all_at(&model, 0).unwrap();
    f.sync_all().unwrap();
    ack(&model);
    for _ in 0..steps {
        let size = model.len() as u64;
        let at = rng.below(size + 1);
        let len = 1 + rng.below(20_000);
        match rng.below(5) {
            0 => {
                // Shorter or longer, at a block boundary or not.
                let to = rng.below(LEN + 8192);
                f.set_len(to).unwrap();
                model.resize(to as usize, 0);
            }
            1 => {
                let len = len.min(size - at);
                fallocate(
                    &f,
                    libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                    at,
                    len.max(1),
                );
                let end = (at + len).min(size) as usize;
                model[at as usize..end].fill(0);
            }
            2 => {
                let len = len.min(size - at).max(1);
                fallocate(&f, libc::FALLOC_FL_ZERO_RANGE, at, len);
                let end = (at + len) as usize;
                model.resize(model.len().max(end), 0);
                model[at as usize..end].fill(0);
            }
            3 => {
                // Space past the end: the size grows, the new bytes read as zeros.
                fallocate(&f, 0, size, len);
                model.resize((size + len) as usize, 0);
            }
            _ => {
                let bytes: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
                f.write_all_at(&bytes, at).unwrap();
                let end = (at + len) as usize;
                model.resize(model.len().max(end), 0);
                model[at as usize..end].copy_from_slice(&bytes);
            }
        }
        f.sync_all().unwrap();
        ack(&model);
    }
}
