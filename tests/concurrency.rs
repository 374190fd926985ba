//! The block-range locking, exercised through the filesystem core without a mount (so the
//! kernel's own per-inode locks do not serialize anything for us): many threads writing
//! disjoint and overlapping blocks of one file, extending it and truncating above them,
//! checked against a model. Every test is bounded in time.

mod common;

use std::ffi::OsStr;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use common::{Rng, bounded};
use sealfs::fs::core::{AttrChanges, Caller};
use sealfs::fs::{SealFs, Tuning};
use sealfs::keys::{KeyfileProvider, MasterKeyProvider, write_new_keyfile};
use sealfs::volume::{InitOptions, Volume};

const ROOT: u64 = 1;
const BS: u64 = 4096;

fn filesystem(dir: &std::path::Path) -> Arc<SealFs> {
    let key = dir.join("k");
    write_new_keyfile(&key).unwrap();
    let provider = || -> Vec<Box<dyn MasterKeyProvider>> {
        vec![Box::new(KeyfileProvider::load(&key).unwrap())]
    };
    let cipher = dir.join("c");
    Volume::init(&cipher, &InitOptions::default(), &provider(), [7; 16]).unwrap();
    let volume = Volume::open(&cipher, provider(), Default::default()).unwrap();
    Arc::new(SealFs::new(volume, false, Tuning::default()).unwrap())
}

#[test]
fn parallel_writers_to_disjoint_regions_match_the_model() {
    let dir = tempfile::tempdir().unwrap();
    let fs = filesystem(dir.path());
    let (_, fh) = fs
        .create(
            ROOT,
            OsStr::new("f"),
            0o644,
            libc::O_RDWR,
            Caller {
                uid: 0,
                gid: 0,
                pid: 0,
                umask: 0,
            },
        )
        .unwrap();
    const THREADS: u64 = 8;
    const REGION: u64 = 16 * BS + 123; // not block aligned: neighbours share edge blocks
    let fs2 = fs.clone();
    let models = bounded(Duration::from_secs(120), move || {
        let barrier = Arc::new(Barrier::new(THREADS as usize));
        let threads: Vec<_> = (0..THREADS)
            .map(|t| {
                let (fs, barrier) = (fs2.clone(), barrier.clone());
                std::thread::spawn(move || {
                    let mut rng = Rng(0x9e37_79b9 + t);
                    let mut model = vec![0u8; REGION as usize];
                    barrier.wait();
                    for i in 0..200u64 {
                        let off = rng.below(REGION);
                        let len = 1 + rng.below(REGION - off).min(3 * BS);
                        let byte = (t * 31 + i) as u8 | 1;
                        let data = vec![byte; len as usize];
                        fs.write(fh, t * REGION + off, &data, None).unwrap();
                        model[off as usize..(off + len) as usize].fill(byte);
                    }
                    model
                })
            })
            .collect();
        threads
            .into_iter()
            .map(|t| t.join().unwrap())
            .collect::<Vec<_>>()
    });
    let whole = fs.read(fh, 0, (THREADS * REGION) as u32 + 100).unwrap();
    assert!(whole.len() as u64 <= THREADS * REGION);
    for (t, model) in models.iter().enumerate() {
        let start = t * REGION as usize;
        let got: Vec<u8> = (start..start + REGION as usize)
            .map(|i| whole.get(i).copied().unwrap_or(0))
            .collect();
        assert!(got == *model, "region {t} differs from its writer's model");
    }
    fs.release(fh);
}

#[test]
fn overlapping_whole_block_writes_never_tear_a_block() {
    let dir = tempfile::tempdir().unwrap();
    let fs = filesystem(dir.path());
    let (_, fh) = fs
        .create(
            ROOT,
            OsStr::new("g"),
            0o644,
            libc::O_RDWR,
            Caller {
                uid: 0,
                gid: 0,
                pid: 0,
                umask: 0,
            },
        )
        .unwrap();
    const BLOCKS: u64 = 16;
    let fs2 = fs.clone();
    bounded(Duration::from_secs(120), move || {
        let threads: Vec<_> = (0..6u64)
            .map(|t| {
                let fs = fs2.clone();
                std::thread::spawn(move || {
                    let mut rng = Rng(77 + t);
                    for _ in 0..300 {
                        // Two to three whole blocks, sometimes straddling others' writes.
                        let first = rng.below(BLOCKS - 2);
                        let n = 2 + rng.below(2);
                        let data = vec![t as u8 + 1; (n * BS) as usize];
                        fs.write(fh, first * BS, &data, None).unwrap();
                        let back = fs.read(fh, first * BS, BS as u32).unwrap();
                        assert!(back.iter().all(|&b| b == back[0]), "a torn block was read");
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
    });
    let all = fs.read(fh, 0, (BLOCKS * BS) as u32).unwrap();
    for block in all.chunks(BS as usize) {
        assert!(
            block.iter().all(|&b| b == block[0]),
            "every block is one writer's"
        );
    }
    fs.release(fh);
}

#[test]
fn writers_below_a_truncater_keep_their_data() {
    let dir = tempfile::tempdir().unwrap();
    let fs = filesystem(dir.path());
    let (attr, fh) = fs
        .create(
            ROOT,
            OsStr::new("h"),
            0o644,
            libc::O_RDWR,
            Caller {
                uid: 0,
                gid: 0,
                pid: 0,
                umask: 0,
            },
        )
        .unwrap();
    let ino = attr.ino.0;
    const FLOOR: u64 = 8 * BS + 100;
    fs.write(fh, 0, &vec![0u8; FLOOR as usize], None).unwrap();
    let fs2 = fs.clone();
    let started = Instant::now();
    let model = bounded(Duration::from_secs(120), move || {
        let fs_t = fs2.clone();
        let truncater = std::thread::spawn(move || {
            let mut rng = Rng(5);
            for _ in 0..300 {
                let size = FLOOR + rng.below(6 * BS);
                let changes = AttrChanges {
                    size: Some(size),
                    ..AttrChanges::default()
                };
                fs_t.setattr(
                    Caller {
                        uid: 0,
                        gid: 0,
                        pid: 0,
                        umask: 0,
                    },
                    ino,
                    changes,
                )
                .unwrap();
            }
        });
        let fs_w = fs2.clone();
        let writer = std::thread::spawn(move || {
            let mut rng = Rng(6);
            let mut model = vec![0u8; FLOOR as usize];
            for i in 0..300u64 {
                let off = rng.below(FLOOR - 10);
                let len = 1 + rng.below((FLOOR - off).min(2 * BS));
                let byte = (i % 250) as u8 + 1;
                fs_w.write(fh, off, &vec![byte; len as usize], None)
                    .unwrap();
                model[off as usize..(off + len) as usize].fill(byte);
                // Past the floor too: these bytes may be cut by the truncater, never corrupt.
                fs_w.write(fh, FLOOR + rng.below(4 * BS), b"above", None)
                    .unwrap();
            }
            model
        });
        truncater.join().unwrap();
        writer.join().unwrap()
    });
    let got = fs.read(fh, 0, FLOOR as u32).unwrap();
    assert!(got == model, "data below every truncation point survives");
    let rest = fs.read(fh, FLOOR, (10 * BS) as u32).unwrap();
    assert!(
        rest.iter().all(|&b| b == 0 || b"above".contains(&b)),
        "only zeros or written bytes above"
    );
    eprintln!("truncate/write race: 600 ops in {:?}", started.elapsed());
    fs.release(fh);
}
