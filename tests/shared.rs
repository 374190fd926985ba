//! Several mounts of one cipher dir: refused unless every one is `-o shared`, naming the
//! holder; a claim left by a killed mount locks nobody out; shared mounts see each other's
//! closed files. Two mounts of a local cipher dir take the same locks as two hosts on a
//! shared filesystem; they skip only the reopen and flush a network filesystem needs around
//! each write, since both mounts share this host's page cache (tests/juicefs.rs runs the whole
//! path on two JuiceFS clients).

mod common;

use std::fs;
use std::io::Write;

use common::{Mounted, TestVolume, is_mounted};

/// Tries a daemonizing mount: its stderr when it fails.
fn refused(vol: &TestVolume, options: &[&str]) -> String {
    let mut args = vec!["mount", vol.cipher_str(), vol.mnt.to_str().unwrap()];
    args.extend_from_slice(options);
    let out = vol.run(&args);
    if out.status.success() {
        let _ = vol.run(&["umount", vol.mnt.to_str().unwrap()]);
        panic!("the mount was not refused");
    }
    assert!(!is_mounted(&vol.mnt));
    common::stderr(&out)
}

#[test]
fn a_second_mount_is_refused_unless_all_are_shared() {
    let vol = TestVolume::new();
    let other = vol.second_mountpoint();
    let first = vol.mount();
    let why = refused(&other, &[]);
    assert!(
        why.contains(&format!("pid {}", first.pid())) && why.contains("exclusive"),
        "names the holder: {why}"
    );
    let why = refused(&other, &["-o", "shared"]);
    assert!(why.contains(&format!("pid {}", first.pid())), "{why}");
    first.unmount();

    let a = vol.mount_with(&["-o", "shared"]);
    let b = other.mount_with(&["-o", "shared"]);
    let third = vol.second_mountpoint();
    let why = refused(&third, &[]);
    assert!(why.contains("shared"), "{why}");
    // fsck --repair is refused while any host has it mounted, and says by whom.
    let out = vol.run(&["fsck", vol.cipher_str(), "--repair"]);
    assert_eq!(out.status.code(), Some(8));
    assert!(common::stderr(&out).contains(&format!("pid {}", a.pid())));

    // Close-to-open: what one shared mount wrote and closed, the other reads at once, even
    // with the file's old attributes cached.
    fs::write(a.p("f"), b"first").unwrap();
    assert_eq!(fs::read(b.p("f")).unwrap(), b"first");
    let mut f = fs::OpenOptions::new().append(true).open(a.p("f")).unwrap();
    f.write_all(b" and more").unwrap();
    drop(f);
    assert_eq!(fs::read(b.p("f")).unwrap(), b"first and more");
    fs::write(b.p("f"), b"cut").unwrap();
    assert_eq!(fs::read(a.p("f")).unwrap(), b"cut");
    a.unmount();
    b.unmount();
    vol.mount().unmount();
}

#[test]
fn a_claim_left_by_a_killed_mount_locks_nobody_out() {
    let vol = TestVolume::new();
    let dead: Mounted = vol.mount();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(dead.pid() as i32),
        nix::sys::signal::SIGKILL,
    )
    .unwrap();
    // The kernel keeps the dead FUSE mount until it is unmounted; the claim went with the
    // process.
    drop(dead);
    let other = vol.second_mountpoint();
    let m = other.mount();
    fs::write(m.p("after"), b"ok").unwrap();
    m.unmount();
    let records: Vec<_> = fs::read_dir(vol.cipher.join("sealfs.mounts"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .filter(|n| n.to_string_lossy().ends_with(".json"))
        .collect();
    assert!(
        records.is_empty(),
        "the dead mount's record is cleared: {records:?}"
    );
}

/// Two hosts writing disjoint bytes of one 4 KiB block: each write is a read-modify-write of
/// the whole sealed block, so without locks across mounts one writer's bytes are lost (or a
/// block reads torn). Each writer checks after every write that its bytes are there.
#[test]
fn disjoint_bytes_of_one_block_from_two_shared_mounts_are_all_kept() {
    use std::os::unix::fs::FileExt;
    const ROUNDS: usize = 150;
    let vol = TestVolume::new();
    let other = vol.second_mountpoint();
    let a = vol.mount_with(&["-o", "shared"]);
    let b = other.mount_with(&["-o", "shared"]);
    fs::write(a.p("block"), vec![0u8; 4096]).unwrap();
    let writers: Vec<_> = [(a.p("block"), 0u64), (b.p("block"), 2048u64)]
        .into_iter()
        .map(|(path, at)| {
            move || {
                for round in 0..ROUNDS {
                    let mine = vec![(round % 250) as u8 + 1 + at as u8 % 3; 2048];
                    let f = fs::OpenOptions::new().write(true).open(&path).unwrap();
                    f.write_all_at(&mine, at).unwrap();
                    drop(f);
                    let mut back = vec![0u8; 2048];
                    let f = fs::File::open(&path).unwrap();
                    f.read_exact_at(&mut back, at)
                        .unwrap_or_else(|e| panic!("round {round}: {e}"));
                    assert!(
                        back == mine,
                        "round {round}: the other mount's write lost these bytes"
                    );
                }
            }
        })
        .collect();
    common::run_together(std::time::Duration::from_secs(120), writers);
    let whole = fs::read(a.p("block")).unwrap();
    assert_eq!(whole.len(), 4096);
    a.unmount();
    b.unmount();
    let (code, _) = (vol.run(&["fsck", vol.cipher_str()]).status.code(), ());
    assert_eq!(code, Some(0), "fsck clean");
}

/// O_APPEND writers on two mounts: every line lands whole, none is lost or overwritten.
#[test]
fn appends_from_two_shared_mounts_all_land_whole() {
    const LINES: usize = 200;
    let vol = TestVolume::new();
    let other = vol.second_mountpoint();
    let a = vol.mount_with(&["-o", "shared"]);
    let b = other.mount_with(&["-o", "shared"]);
    fs::write(a.p("log"), b"").unwrap();
    let writers: Vec<_> = [(a.p("log"), 'A'), (b.p("log"), 'B')]
        .into_iter()
        .map(|(path, tag)| {
            move || {
                let mut f = fs::OpenOptions::new().append(true).open(&path).unwrap();
                for i in 0..LINES {
                    f.write_all(format!("{tag} {i:04}\n").as_bytes()).unwrap();
                }
            }
        })
        .collect();
    common::run_together(std::time::Duration::from_secs(120), writers);
    let text = String::from_utf8(fs::read(b.p("log")).unwrap()).unwrap();
    let mut lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 2 * LINES, "every line kept");
    lines.sort();
    let mut expected: Vec<String> = ['A', 'B']
        .iter()
        .flat_map(|t| (0..LINES).map(move |i| format!("{t} {i:04}")))
        .collect();
    expected.sort();
    assert_eq!(lines, expected, "each line whole");
    a.unmount();
    b.unmount();
}

/// Exclusive creates of the same names from two shared mounts: exactly one wins each name, and
/// the file holds the winner's contents. Names made, renamed and removed on one mount show on
/// the other within the attribute timeout.
#[test]
fn exclusive_creates_race_correctly_and_names_show_on_the_other_mount() {
    use std::io::Write;
    use std::time::{Duration, Instant};
    const NAMES: usize = 40;
    let vol = TestVolume::new();
    let other = vol.second_mountpoint();
    let a = vol.mount_with(&["-o", "shared"]);
    let b = other.mount_with(&["-o", "shared"]);
    let racers: Vec<_> = [(a.path.clone(), b'A'), (b.path.clone(), b'B')]
        .into_iter()
        .map(|(root, tag)| {
            move || {
                let mut won = Vec::new();
                for i in 0..NAMES {
                    let created = fs::OpenOptions::new()
                        .write(true)
                        .create_new(true)
                        .open(root.join(format!("race{i}")));
                    match created {
                        Ok(mut f) => {
                            f.write_all(&[tag; 100]).unwrap();
                            won.push(i);
                        }
                        Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::AlreadyExists),
                    }
                }
                won
            }
        })
        .collect();
    let won = common::run_together(Duration::from_secs(120), racers);
    let (won_a, won_b) = (&won[0], &won[1]);
    assert_eq!(
        won_a.len() + won_b.len(),
        NAMES,
        "exactly one winner per name"
    );
    for i in 0..NAMES {
        let tag = if won_a.contains(&i) { b'A' } else { b'B' };
        for m in [&a, &b] {
            assert_eq!(fs::read(m.p(&format!("race{i}"))).unwrap(), vec![tag; 100]);
        }
    }

    // A rename and an unlink on one mount show on the other within the attribute timeout.
    fs::rename(a.p("race0"), a.p("renamed")).unwrap();
    fs::remove_file(a.p("race1")).unwrap();
    // (1 s here; the cap is for a busy machine.)
    let deadline = Instant::now() + Duration::from_secs(30);
    while b.p("race0").exists() || b.p("race1").exists() || !b.p("renamed").exists() {
        assert!(
            Instant::now() < deadline,
            "names did not show on the other mount"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    a.unmount();
    b.unmount();
    let out = vol.run(&["fsck", vol.cipher_str()]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "fsck clean: {}",
        common::stderr(&out)
    );
}

/// One host dies (kill -9 of its sealfs) while both write one file: the other is not blocked
/// (its locks are released with the dead process), keeps every byte it wrote, and fsck
/// afterwards finds at most leftovers, which --repair removes.
#[test]
fn a_host_killed_mid_write_blocks_nobody_and_leaves_at_most_leftovers() {
    use std::os::unix::fs::FileExt;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::time::Duration;
    const BLOCK: u64 = 4096;
    let vol = TestVolume::new();
    let other = vol.second_mountpoint();
    let a = vol.mount_with(&["-o", "shared"]);
    let b = other.mount_with(&["-o", "shared"]);
    fs::write(a.p("f"), vec![0u8; 64 * BLOCK as usize]).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    // Host A writes the even half-blocks, host B the odd ones: every block is shared.
    let spawn = |root: std::path::PathBuf, half: u64, stop: Arc<AtomicBool>| {
        std::thread::spawn(move || {
            let mut last = vec![0u8; 64];
            let mut round = 0u8;
            while !stop.load(Ordering::Relaxed) {
                round = round.wrapping_add(1).max(1);
                let Ok(f) = fs::OpenOptions::new().write(true).open(root.join("f")) else {
                    break;
                };
                for block in 0..64u64 {
                    if f.write_all_at(&[round; 2048], block * BLOCK + half * 2048)
                        .is_err()
                    {
                        return last;
                    }
                    last[block as usize] = round;
                }
            }
            last
        })
    };
    let writer_a = spawn(a.path.clone(), 0, stop.clone());
    let writer_b = spawn(b.path.clone(), 1, stop.clone());
    std::thread::sleep(Duration::from_millis(300));
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(a.pid() as i32),
        nix::sys::signal::SIGKILL,
    )
    .unwrap();
    // Host B goes on writing for a while after A died, then stops.
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, Ordering::Relaxed);
    let last_b = common::bounded(Duration::from_secs(60), move || {
        let _ = writer_a.join();
        writer_b.join().unwrap()
    });
    drop(a);
    // B's every last write is there, whole.
    let data = fs::read(b.p("f")).unwrap();
    for (block, value) in last_b.iter().enumerate() {
        let half = &data[block * 4096 + 2048..(block + 1) * 4096];
        assert!(
            half.iter().all(|x| x == value),
            "block {block}: host B's bytes lost"
        );
    }
    b.unmount();
    let report = vol.run(&["fsck", vol.cipher_str(), "--json"]);
    let json: serde_json::Value = serde_json::from_slice(&report.stdout).unwrap();
    let kinds: Vec<String> = json["problems"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["kind"].as_str().unwrap().to_string())
        .collect();
    assert!(
        kinds.iter().all(|k| k == "leftover"),
        "only leftovers: {json}"
    );
    let repaired = vol.run(&["fsck", vol.cipher_str(), "--repair"]);
    assert!(
        matches!(repaired.status.code(), Some(0 | 1)),
        "{}",
        common::stderr(&repaired)
    );
    assert_eq!(vol.run(&["fsck", vol.cipher_str()]).status.code(), Some(0));
}

/// rotate, rewrap and a KEK's retirement while both shared mounts create and rewrite files:
/// new files on both follow the rotation without a remount, each mount says in its record
/// which KEK it uses, the retirement waits for both, and every file reads back on both mounts.
#[test]
fn rotation_rewrap_and_retirement_reach_every_shared_mount() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    let content = |tag: char, i: usize| format!("{tag} {i} ").repeat(1 + i % 200).into_bytes();
    let vol = TestVolume::new();
    let other = vol.second_mountpoint();
    let a = vol.mount_with(&["-o", "shared"]);
    let b = other.mount_with(&["-o", "shared"]);
    let stop = Arc::new(AtomicBool::new(false));
    let made = Arc::new(AtomicUsize::new(0));
    let writers: Vec<_> = [(a.path.clone(), 'a'), (b.path.clone(), 'b')]
        .into_iter()
        .map(|(root, tag)| {
            let (stop, made) = (stop.clone(), made.clone());
            std::thread::spawn(move || {
                let mut i = 0;
                while !stop.load(Ordering::SeqCst) || i < 40 {
                    fs::write(root.join(format!("{tag}{i}")), content(tag, i)).unwrap();
                    if i > 10 {
                        // Rewrite an older file too, across the rotation and the rewrap.
                        fs::write(root.join(format!("{tag}{}", i / 2)), content(tag, i / 2))
                            .unwrap();
                    }
                    i += 1;
                    made.fetch_add(1, Ordering::SeqCst);
                }
                i
            })
        })
        .collect();
    let wait_for = |n: usize| {
        while made.load(Ordering::SeqCst) < n {
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
    };
    wait_for(40);
    common::ok(vol.run(&["rotate", vol.cipher_str()]));
    wait_for(made.load(Ordering::SeqCst) + 40);
    let report = common::ok(vol.run(&["rewrap", vol.cipher_str()]));
    assert!(report.contains("0 failed"), "{report}");
    common::ok(vol.run(&["rewrap", vol.cipher_str(), "--retire-kek", "1"]));
    stop.store(true, Ordering::SeqCst);
    let counts: Vec<usize> = writers.into_iter().map(|w| w.join().unwrap()).collect();

    let info: serde_json::Value =
        serde_json::from_str(&common::ok(vol.run(&["info", vol.cipher_str(), "--json"]))).unwrap();
    assert_eq!(
        info["files"]["by_kek"]["1"].as_u64().unwrap_or(0),
        0,
        "{info}"
    );
    let records: Vec<String> = fs::read_dir(vol.cipher.join("sealfs.mounts"))
        .unwrap()
        .map(|e| fs::read_to_string(e.unwrap().path()).unwrap())
        .collect();
    assert_eq!(records.len(), 2, "{records:?}");
    assert!(
        records.iter().all(|r| r.contains("\"kek\":2")),
        "both mounts say they use KEK 2: {records:?}"
    );
    for (tag, count) in ['a', 'b'].into_iter().zip(counts) {
        for i in 0..count {
            let name = format!("{tag}{i}");
            assert_eq!(
                fs::read(a.p(&name)).unwrap(),
                content(tag, i),
                "{name} on a"
            );
            assert_eq!(
                fs::read(b.p(&name)).unwrap(),
                content(tag, i),
                "{name} on b"
            );
        }
    }
    a.unmount();
    b.unmount();
    vol.assert_fsck_clean();
}

/// One mount writes the first 60 KiB of a file while the other truncates it to sizes that cut
/// its last block (so each truncate re-seals that block): neither loses the other's bytes,
/// nothing reads torn, and the tail the truncates made is zeros.
#[test]
fn truncates_on_one_shared_mount_and_writes_on_the_other_keep_both() {
    use std::os::unix::fs::FileExt;
    const ROUNDS: u64 = 120;
    const WRITTEN: u64 = 60 * 1024;
    let vol = TestVolume::new();
    let other = vol.second_mountpoint();
    let a = vol.mount_with(&["-o", "shared"]);
    let b = other.mount_with(&["-o", "shared"]);
    fs::write(a.p("f"), vec![0u8; 70_000]).unwrap();
    let (path_a, path_b) = (a.p("f"), b.p("f"));
    let writer = move || {
        for round in 0..ROUNDS {
            let at = (round * 2048 * 7) % (WRITTEN - 2048);
            let mine = vec![(round % 250) as u8 + 1; 2048];
            let f = fs::OpenOptions::new().write(true).open(&path_a).unwrap();
            f.write_all_at(&mine, at).unwrap();
            drop(f);
            let mut back = vec![0u8; 2048];
            fs::File::open(&path_a)
                .unwrap()
                .read_exact_at(&mut back, at)
                .unwrap_or_else(|e| panic!("round {round}: {e}"));
            assert!(back == mine, "round {round}: the writer's bytes were lost");
        }
    };
    let truncater = move || {
        for round in 0..ROUNDS {
            let size = 70_000 + (round * 997) % 50_000;
            fs::OpenOptions::new()
                .write(true)
                .open(&path_b)
                .unwrap()
                .set_len(size)
                .unwrap();
            let data = fs::read(&path_b).unwrap_or_else(|e| panic!("round {round}: {e}"));
            assert_eq!(data.len() as u64, size, "round {round}");
            assert!(
                data[WRITTEN as usize..].iter().all(|&x| x == 0),
                "round {round}: the tail is not zeros"
            );
        }
    };
    let jobs: Vec<Box<dyn FnOnce() + Send>> = vec![Box::new(writer), Box::new(truncater)];
    common::run_together(std::time::Duration::from_secs(300), jobs);
    a.unmount();
    b.unmount();
    vol.assert_fsck_clean();
}

/// Holes across shared mounts: a range one mount punches reads as zeros on the other, a block
/// the other then writes into it reads back on both, and a written block zeroed in the cipher
/// dir reads as EIO on both (neither takes it for a hole, whichever changed the map last).
#[test]
fn holes_punched_and_filled_on_two_shared_mounts_stay_authenticated() {
    use std::os::unix::fs::FileExt;
    const BS: usize = 4096;
    let vol = TestVolume::new();
    let other = vol.second_mountpoint();
    let a = vol.mount_with(&["-o", "shared"]);
    let b = other.mount_with(&["-o", "shared"]);
    fs::write(a.p("f"), vec![b'x'; 16 * BS]).unwrap();
    let fb = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(b.p("f"))
        .unwrap();
    nix::fcntl::fallocate(
        &fb,
        nix::fcntl::FallocateFlags::FALLOC_FL_PUNCH_HOLE
            | nix::fcntl::FallocateFlags::FALLOC_FL_KEEP_SIZE,
        4 * BS as i64,
        4 * BS as i64,
    )
    .unwrap();
    let mut want = vec![b'x'; 16 * BS];
    want[4 * BS..8 * BS].fill(0);
    assert_eq!(fs::read(a.p("f")).unwrap(), want, "a sees b's punch");
    let fa = fs::OpenOptions::new().write(true).open(a.p("f")).unwrap();
    fa.write_all_at(&vec![b'z'; BS], 5 * BS as u64).unwrap();
    drop(fa);
    want[5 * BS..6 * BS].fill(b'z');
    let mut back = vec![0u8; 16 * BS];
    fb.read_exact_at(&mut back, 0).unwrap();
    assert_eq!(back, want, "b sees a's write into the hole");
    drop(fb);
    // Zero the block a wrote into the hole, straight in the cipher dir.
    let data = common::files_under(&vol.cipher)
        .into_iter()
        .find(|p| !p.to_string_lossy().contains("sealfs."))
        .unwrap();
    let layout = sealfs::format::block::Layout::new(BS as u32).unwrap();
    fs::OpenOptions::new()
        .write(true)
        .open(&data)
        .unwrap()
        .write_all_at(
            &vec![0u8; layout.sealed_block_size() as usize],
            layout.block_offset(5),
        )
        .unwrap();
    for (name, m) in [("a", &a), ("b", &b)] {
        let err = fs::File::open(m.p("f"))
            .unwrap()
            .read_exact_at(&mut back[..BS], 5 * BS as u64)
            .unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EIO), "mount {name}");
        let mut hole = vec![1u8; BS];
        fs::File::open(m.p("f"))
            .unwrap()
            .read_exact_at(&mut hole, 6 * BS as u64)
            .unwrap();
        assert_eq!(
            hole,
            vec![0u8; BS],
            "mount {name}: the rest of the punch is a hole"
        );
    }
    a.unmount();
    b.unmount();
}
