//! Many threads and processes on one file and one directory through a real mount, and a
//! hundred open writers: results match what POSIX demands, no torn blocks, no deadlock (every
//! test bounded in time), the daemon's memory and descriptors stay bounded.

mod common;

use std::fs;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::process::Command;
use std::sync::{Arc, Barrier};
use std::time::Duration;

use common::{TestVolume, bounded};

const REGION: usize = 64 * 1024;

#[test]
fn processes_and_threads_share_a_file_and_a_directory() {
    let vol = TestVolume::new();
    let m = vol.mount();
    let root = m.path.clone();
    bounded(Duration::from_secs(120), move || {
        // (1) Eight dd processes write disjoint 64 KiB regions of one file at once.
        fs::write(root.join("shared"), b"").unwrap();
        let writers: Vec<_> = (0..8u8)
            .map(|i| {
                let pattern = root.join(format!("pattern{i}"));
                fs::write(&pattern, vec![b'a' + i; REGION]).unwrap();
                Command::new("dd")
                    .arg(format!("if={}", pattern.display()))
                    .arg(format!("of={}", root.join("shared").display()))
                    .args(["bs=4096", &format!("seek={}", i as usize * REGION / 4096)])
                    .args(["conv=notrunc", "status=none"])
                    .spawn()
                    .unwrap()
            })
            .collect();
        // (2) Meanwhile threads overwrite the same 256 KiB of another file with whole pages,
        // (3) a thread renames files back and forth in the same directory, and (4) one
        // truncates a third file up and down while a reader reads it.
        fs::write(root.join("contended"), vec![0u8; 256 * 1024]).unwrap();
        fs::write(root.join("truncated"), vec![7u8; 100_000]).unwrap();
        for i in 0..20 {
            fs::write(root.join(format!("r{i}")), format!("rename {i}")).unwrap();
        }
        let start = Arc::new(Barrier::new(8));
        let mut threads = Vec::new();
        for t in 0..4u8 {
            let (root, start) = (root.clone(), start.clone());
            threads.push(std::thread::spawn(move || {
                let f = fs::OpenOptions::new()
                    .write(true)
                    .open(root.join("contended"))
                    .unwrap();
                start.wait();
                for round in 0..40usize {
                    let page = (round * 7 + t as usize * 13) % 64;
                    f.write_all_at(&[t + 1; 4096], (page * 4096) as u64)
                        .unwrap();
                }
            }));
        }
        {
            let (root, start) = (root.clone(), start.clone());
            threads.push(std::thread::spawn(move || {
                start.wait();
                for round in 0..10 {
                    for i in 0..20 {
                        let (from, to) = if round % 2 == 0 {
                            (format!("r{i}"), format!("s{i}"))
                        } else {
                            (format!("s{i}"), format!("r{i}"))
                        };
                        fs::rename(root.join(from), root.join(to)).unwrap();
                    }
                }
            }));
        }
        {
            let (root, start) = (root.clone(), start.clone());
            threads.push(std::thread::spawn(move || {
                let f = fs::OpenOptions::new()
                    .write(true)
                    .open(root.join("truncated"))
                    .unwrap();
                start.wait();
                for round in 0..50u64 {
                    f.set_len(if round % 2 == 0 { 5_000 } else { 100_000 })
                        .unwrap();
                }
                f.set_len(100_000).unwrap();
            }));
        }
        {
            let (root, start) = (root.clone(), start.clone());
            threads.push(std::thread::spawn(move || {
                start.wait();
                for _ in 0..50 {
                    let data = fs::read(root.join("truncated")).unwrap();
                    // Bytes are the old 7s or the zeros a truncate-up leaves: never others.
                    assert!(data.iter().all(|&b| b == 7 || b == 0));
                }
            }));
        }
        start.wait();
        for t in threads {
            t.join().unwrap();
        }
        for mut w in writers {
            assert!(w.wait().unwrap().success());
        }

        let shared = fs::read(root.join("shared")).unwrap();
        assert_eq!(shared.len(), 8 * REGION);
        for (i, region) in shared.chunks(REGION).enumerate() {
            assert!(region.iter().all(|&b| b == b'a' + i as u8), "region {i}");
        }
        let contended = fs::read(root.join("contended")).unwrap();
        for (p, page) in contended.chunks(4096).enumerate() {
            assert!(page.iter().all(|&b| b == page[0]), "page {p} is torn");
        }
        for i in 0..20 {
            assert_eq!(
                fs::read_to_string(root.join(format!("r{i}"))).unwrap(),
                format!("rename {i}")
            );
        }
        let truncated = fs::read(root.join("truncated")).unwrap();
        assert_eq!(truncated.len(), 100_000);
        assert!(truncated[..5_000].iter().all(|&b| b == 7));
        assert!(truncated[5_000..].iter().all(|&b| b == 0));
    });
    drop(m);
    let fsck = vol.run(&["fsck", vol.cipher_str()]);
    assert_eq!(
        fsck.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&fsck.stdout)
    );
}

fn status_kib(pid: u32, field: &str) -> u64 {
    fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap()
}

#[test]
fn a_hundred_open_writers_keep_memory_and_descriptors_bounded() {
    let vol = TestVolume::new();
    let m = vol.mount();
    let pid = m.pid();
    let root = m.path.clone();
    let (rss, fds) = bounded(Duration::from_secs(120), move || {
        let mut files: Vec<fs::File> = (0..100)
            .map(|i| fs::File::create(root.join(format!("w{i}"))).unwrap())
            .collect();
        let chunk = vec![0xabu8; 64 * 1024];
        for _ in 0..16 {
            for f in files.iter_mut() {
                f.write_all(&chunk).unwrap();
            }
        }
        for f in &files {
            f.sync_all().unwrap();
        }
        let rss = status_kib(pid, "VmHWM:");
        let fds = fs::read_dir(format!("/proc/{pid}/fd")).unwrap().count();
        drop(files);
        for i in 0..100 {
            assert_eq!(
                fs::metadata(root.join(format!("w{i}"))).unwrap().len(),
                16 * 64 * 1024
            );
        }
        (rss, fds)
    });
    eprintln!("100 open writers, 1 MiB each: peak RSS {rss} KiB, {fds} fds");
    // Bounds from docs/GUARANTEES.md: per-thread buffers and a bounded key cache, not per file.
    assert!(rss < 256 * 1024, "peak RSS {rss} KiB");
    // One O_PATH node fd and one data-file fd per open file, plus a fixed few.
    assert!(fds < 2 * 100 + 64, "{fds} fds for 100 open files");
}

/// A walk through more files than the inode cache holds: memory and descriptors stay bounded
/// by `--inode-cache`, not by the tree. SEALFS_WALK_FILES (default 10,000) and
/// SEALFS_WALK_INODE_CACHE (default 1,000) scale it up for a soak.
#[test]
fn a_walk_of_many_files_keeps_memory_and_descriptors_bounded() {
    let env = |name: &str, default: usize| {
        std::env::var(name)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    };
    let files = env("SEALFS_WALK_FILES", 10_000);
    let cache = env("SEALFS_WALK_INODE_CACHE", 1_000);
    let vol = TestVolume::new();
    let m = vol.mount_with(&["--inode-cache", &cache.to_string()]);
    let pid = m.pid();
    let root = m.path.clone();
    let (rss, fds, walked) = bounded(Duration::from_secs(3600), move || {
        let dirs = files.div_ceil(1000).max(1);
        let fd_count = || fs::read_dir(format!("/proc/{pid}/fd")).unwrap().count();
        let mut most = 0;
        for d in 0..dirs {
            fs::create_dir(root.join(format!("d{d}"))).unwrap();
        }
        for i in 0..files {
            fs::write(root.join(format!("d{}/f{i}", i % dirs)), i.to_string()).unwrap();
            if i % 1000 == 0 {
                most = most.max(fd_count());
            }
        }
        // The walk a backup or `find` makes: list, stat and read everything, twice.
        let mut walked = 0;
        for _ in 0..2 {
            for d in 0..dirs {
                for entry in fs::read_dir(root.join(format!("d{d}"))).unwrap() {
                    let path = entry.unwrap().path();
                    let meta = fs::metadata(&path).unwrap();
                    assert_eq!(fs::read(&path).unwrap().len() as u64, meta.len());
                    walked += 1;
                    if walked % 1000 == 0 {
                        most = most.max(fd_count());
                    }
                }
            }
        }
        (status_kib(pid, "VmHWM:"), most, walked)
    });
    eprintln!(
        "{files} files created and walked twice ({walked} visits), inode cache {cache}: peak RSS {rss} KiB, at most {fds} fds"
    );
    assert_eq!(walked, 2 * files);
    // The node table holds at most `cache` nodes (+ what rounds of pruning let through
    // between checks), each with one descriptor.
    assert!(
        fds < cache + 1_000,
        "{fds} fds with an inode cache of {cache}"
    );
    assert!(rss < 256 * 1024, "peak RSS {rss} KiB");
}
