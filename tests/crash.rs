//! Crash consistency: the mount daemon is killed with SIGKILL (or cut off with a lazy unmount)
//! at random points of a workload of creates, writes, appends, truncates, renames, hard links
//! and unlinks.
//! After every crash: fsck finds nothing worse than orphan headers, crash leftovers and a torn
//! block in the one file being written at the kill, every file fsynced (and unchanged since)
//! reads back exactly, and no file reads back a byte that was never written to it. Rounds: SEALFS_CRASH_ROUNDS (default 6 per mode); seed:
//! SEALFS_CRASH_SEED.

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{BIN, Rng, TestVolume};

#[derive(Clone, Debug, Default)]
struct FileModel {
    /// What the program wrote, as it would read back with no crash.
    intended: Vec<u8>,
    /// `intended` with the write in flight applied: a crash may leave either.
    possible: Vec<u8>,
    /// True once fsynced and not changed since: must survive exactly.
    durable: bool,
    /// Names with the same group are hard links of one file: a write through one is a write
    /// to all.
    group: u64,
}

impl FileModel {
    /// Whether `data` holds only bytes written to this file (or holes).
    fn admits(&self, data: &[u8]) -> bool {
        data.iter().enumerate().all(|(i, &b)| {
            b == 0 || self.intended.get(i) == Some(&b) || self.possible.get(i) == Some(&b)
        })
    }
}

type Model = Arc<Mutex<BTreeMap<String, FileModel>>>;

fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut rng = Rng(seed | 1);
    (0..len).map(|_| (rng.next() % 255 + 1) as u8).collect()
}

/// Group ids of files the workload creates; groups after a crash are inode numbers.
const NEW_GROUP: u64 = 1 << 62;

/// Every name linked with `name` (itself included).
fn linked(m: &mut BTreeMap<String, FileModel>, name: &str) -> Vec<String> {
    let group = m[name].group;
    m.iter()
        .filter(|(_, f)| f.group == group)
        .map(|(n, _)| n.clone())
        .collect()
}

/// Records the change a write in flight makes, before it is made, on every link of the file.
fn begin(model: &Model, name: &str, serial: u64, change: impl Fn(&mut Vec<u8>)) {
    let mut m = model.lock().unwrap();
    m.entry(name.to_string()).or_insert_with(|| FileModel {
        group: NEW_GROUP | serial,
        ..Default::default()
    });
    for name in linked(&mut m, name) {
        let file = m.get_mut(&name).unwrap();
        file.durable = false;
        file.possible = file.intended.clone();
        change(&mut file.possible);
    }
}

/// The write in flight returned: it happened.
fn commit(model: &Model, name: &str) {
    let mut m = model.lock().unwrap();
    for name in linked(&mut m, name) {
        let file = m.get_mut(&name).unwrap();
        file.intended = file.possible.clone();
    }
}

fn synced(model: &Model, name: &str) {
    let mut m = model.lock().unwrap();
    for name in linked(&mut m, name) {
        m.get_mut(&name).unwrap().durable = true;
    }
}

/// One step of the workload; the model always allows for the operation in flight.
fn step(root: &Path, rng: &mut Rng, model: &Model, serial: &mut u64) -> std::io::Result<()> {
    let names: Vec<String> = model.lock().unwrap().keys().cloned().collect();
    let pick = |rng: &mut Rng| names[rng.below(names.len() as u64) as usize].clone();
    *serial += 1;
    let serial_now = *serial;
    match rng.below(11) {
        0..=3 => {
            let name = format!("f{serial}");
            let data = pattern(rng.next(), rng.below(300_000) as usize + 1);
            begin(model, &name, serial_now, |_| {});
            let mut f = fs::File::create(root.join(&name))?;
            for chunk in data.chunks(rng.below(100_000) as usize + 1) {
                begin(model, &name, serial_now, |p| p.extend_from_slice(chunk));
                f.write_all(chunk)?;
                commit(model, &name);
            }
            if rng.below(2) == 0 {
                f.sync_all()?;
                synced(model, &name);
            }
        }
        4 | 5 if !names.is_empty() => {
            let name = pick(rng);
            let extra = pattern(rng.next(), rng.below(50_000) as usize + 1);
            let mut f = fs::OpenOptions::new().append(true).open(root.join(&name))?;
            begin(model, &name, serial_now, |p| p.extend_from_slice(&extra));
            f.write_all(&extra)?;
            commit(model, &name);
            if rng.below(2) == 0 {
                f.sync_all()?;
                synced(model, &name);
            }
        }
        6 if !names.is_empty() => {
            let name = pick(rng);
            let f = fs::OpenOptions::new().write(true).open(root.join(&name))?;
            let len = model.lock().unwrap()[&name].intended.len();
            let new_len = rng.below(len as u64 + 10_000) as usize;
            begin(model, &name, serial_now, |p| p.resize(new_len, 0));
            f.set_len(new_len as u64)?;
            commit(model, &name);
        }
        7 if !names.is_empty() => {
            let from = pick(rng);
            *serial += 1;
            let to = format!("r{serial}");
            fs::rename(root.join(&from), root.join(&to))?;
            let mut m = model.lock().unwrap();
            let entry = m.remove(&from).unwrap();
            m.insert(to, entry);
        }
        8 if names.len() > 5 => {
            let name = pick(rng);
            fs::remove_file(root.join(&name))?;
            model.lock().unwrap().remove(&name);
        }
        9 if !names.is_empty() => {
            let from = pick(rng);
            let to = format!("l{serial}");
            fs::hard_link(root.join(&from), root.join(&to))?;
            let mut m = model.lock().unwrap();
            let file = m[&from].clone();
            m.insert(to, file);
        }
        _ => {}
    }
    Ok(())
}

enum Crash {
    Kill,
    LazyUnmount,
}

fn run_rounds(crash: Crash, salt: u64) {
    let rounds: u64 = std::env::var("SEALFS_CRASH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(6);
    let seed: u64 = std::env::var("SEALFS_CRASH_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0x5eed_f00d)
        ^ salt;
    let vol = TestVolume::new();
    let model: Model = Arc::default();
    let mut rng = Rng(seed);
    let mut total_ops = 0;
    let mut torn_files = 0;
    let mut mended_files = 0;
    for round in 0..rounds {
        let m = vol.mount();
        // Through an open directory, as a program inside the mount would: after a lazy
        // unmount the detached mount keeps serving it (a path would reach the directory
        // underneath instead).
        let root_dir = fs::File::open(&m.path).unwrap();
        let root = std::path::PathBuf::from(format!(
            "/proc/self/fd/{}",
            std::os::fd::AsRawFd::as_raw_fd(&root_dir)
        ));
        let stop = Arc::new(AtomicBool::new(false));
        let worker = {
            let (model, stop) = (model.clone(), stop.clone());
            let mut rng = Rng(rng.next() | 1);
            std::thread::spawn(move || {
                let mut serial = round * 1_000_000;
                let mut ops = 0u64;
                while !stop.load(Ordering::SeqCst) {
                    if step(&root, &mut rng, &model, &mut serial).is_err() {
                        break;
                    }
                    ops += 1;
                }
                ops
            })
        };
        std::thread::sleep(Duration::from_millis(100 + rng.below(400)));
        match crash {
            Crash::Kill => {
                nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(m.pid() as i32),
                    nix::sys::signal::SIGKILL,
                )
                .unwrap();
            }
            Crash::LazyUnmount => {
                let out = std::process::Command::new(BIN)
                    .args(["umount", "--lazy"])
                    .arg(&m.path)
                    .output()
                    .unwrap();
                assert!(out.status.success());
            }
        }
        std::thread::sleep(Duration::from_millis(50));
        stop.store(true, Ordering::SeqCst);
        total_ops += worker.join().unwrap();
        drop(root_dir);
        drop(m);

        let fsck = vol.run(&["fsck", vol.cipher_str(), "--json"]);
        let report: serde_json::Value = serde_json::from_slice(&fsck.stdout).unwrap();
        let mut torn = Vec::new();
        let mut mended = Vec::new();
        for problem in report["problems"].as_array().unwrap() {
            let kind = problem["kind"].as_str().unwrap();
            if kind == "torn-write" {
                // A rewrite torn by the kill, which the file's undo journal mends (a mount at
                // first open, fsck --repair here): its blocks come back as they were before
                // the write (bytes written to it earlier, so not held to the model's latest).
                let name = problem["path"].as_str().unwrap().trim_start_matches('/');
                let file = model.lock().unwrap().get(name).cloned();
                assert!(
                    matches!(file, Some(ref f) if !f.durable),
                    "round {round} (seed {seed}): {problem} in a file with no write in flight"
                );
                mended.push(name.to_string());
                continue;
            }
            if kind == "bad-block" || kind == "torn-tail" {
                // A kill lands inside the daemon's pwrite of a sealed block: the kernel stops
                // a write to a file at a page boundary when the writer gets SIGKILL, and a
                // sealed block spans two pages, so the block being rewritten reads EIO
                // (docs/GUARANTEES.md, "Kills and power loss"). Only a file written since its
                // last fsync can have a write in flight.
                let name = problem["path"].as_str().unwrap().trim_start_matches('/');
                let file = model.lock().unwrap().get(name).cloned();
                assert!(
                    matches!(file, Some(ref f) if !f.durable),
                    "round {round} (seed {seed}): {problem} in a file with no write in flight"
                );
                torn.push(name.to_string());
                continue;
            }
            assert!(
                kind == "orphan-header" || kind == "leftover",
                "round {round} (seed {seed}): fsck found {problem}"
            );
        }
        assert!(
            torn.len() <= 1,
            "round {round} (seed {seed}): more than one torn file: {torn:?}"
        );
        if !torn.is_empty() {
            // The torn file goes, with every name linked to it; what follows checks the rest.
            torn_files += 1;
            let m = vol.mount();
            let mut model = model.lock().unwrap();
            for name in linked(&mut model, &torn[0]) {
                fs::remove_file(m.p(&name)).unwrap();
                model.remove(&name);
            }
        }
        let repaired = vol.run(&["fsck", vol.cipher_str(), "--repair"]);
        assert!(
            repaired.status.code().unwrap() <= 1,
            "round {round}: repair"
        );

        let m = vol.mount();
        let mut model = model.lock().unwrap();
        let present: Vec<String> = fs::read_dir(&m.path)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        // A rename or unlink in flight at the crash may have happened or not: follow the
        // disk for names, and hold every file's bytes to what was written to it.
        let mut by_content: Vec<FileModel> = model.values().cloned().collect();
        let mut next: BTreeMap<String, FileModel> = BTreeMap::new();
        let mut inode_of_group: BTreeMap<u64, u64> = BTreeMap::new();
        for name in &present {
            let data = fs::read(m.p(name)).unwrap_or_else(|e| {
                panic!(
                    "round {round} (seed {seed}): {name}: {e}; fsck found {}; mount log: {}",
                    report["problems"],
                    m.log_text()
                )
            });
            let inode = std::os::unix::fs::MetadataExt::ino(&fs::metadata(m.p(name)).unwrap());
            if let Some(file) = model.get(name) {
                // Hard links made before the crash are links still.
                let first = *inode_of_group.entry(file.group).or_insert(inode);
                assert_eq!(
                    first, inode,
                    "round {round} (seed {seed}): {name} is no longer linked with its group"
                );
            }
            let file = match model.get(name) {
                Some(file) => file.clone(),
                None => {
                    // Renamed in flight: it is one of the files the model knows.
                    let found = by_content.iter().position(|f| f.admits(&data));
                    by_content.remove(found.unwrap_or_else(|| {
                        panic!("round {round} (seed {seed}): {name} matches no file written")
                    }))
                }
            };
            if file.durable {
                assert_eq!(data, file.intended, "round {round}: fsynced {name} changed");
            } else if mended.contains(name) {
                mended_files += 1;
            } else {
                assert!(
                    file.admits(&data),
                    "round {round} (seed {seed}): {name} holds bytes never written to it"
                );
            }
            // What is on disk now is what the next round builds on.
            next.insert(
                name.clone(),
                FileModel {
                    intended: data.clone(),
                    possible: data,
                    durable: true,
                    group: inode,
                },
            );
        }
        // Only the operation in flight (a rename or an unlink) may take a name away.
        let missing: Vec<&String> = model.keys().filter(|n| !present.contains(n)).collect();
        assert!(
            missing.len() <= 1,
            "round {round} (seed {seed}): files vanished: {missing:?}"
        );
        *model = next;
        drop(m);
    }
    assert!(
        total_ops > rounds,
        "the workload ran ({total_ops} operations)"
    );
    eprintln!(
        "crash rounds: {rounds}, operations: {total_ops}, files with a torn block: {torn_files}, \
         files mended from their undo journal: {mended_files}, seed: {seed}"
    );
}

#[test]
fn kill_9_at_random_points_loses_nothing_fsynced() {
    run_rounds(Crash::Kill, 1);
}

#[test]
fn lazy_unmount_at_random_points_loses_nothing_fsynced() {
    run_rounds(Crash::LazyUnmount, 2);
}
