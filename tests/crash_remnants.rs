//! What a power cut leaves that is no damage: a data file whose first write never reached the
//! disk (shorter than its preamble, as sqlite's unsynced `-shm` and `-journal` files are after
//! a cut). ext4 shows such a file empty; so does a mount, with no integrity failure, and fsck
//! tells it apart from damage and converges in one repair. And a rewrite torn by the crash:
//! the file's undo journal puts back what the block held, at first open or by fsck.

mod common;

use std::fs;
use std::os::unix::fs::FileExt;

use common::{TestVolume, backing, open_volume};

#[test]
fn a_file_that_never_reached_the_disk_reads_as_empty_and_fsck_converges() {
    let vol = TestVolume::new();
    {
        let m = vol.mount();
        fs::write(m.p("kept"), b"acknowledged").unwrap();
        fs::write(m.p("db-shm"), vec![7u8; 32768]).unwrap();
        fs::write(m.p("db-journal"), b"hot journal").unwrap();
        fs::write(m.p("untouched"), b"never opened again").unwrap();
    }
    // The cut: these data files kept none (or part) of their preamble.
    let volume = open_volume(&vol);
    for (name, len) in [("db-shm", 0), ("db-journal", 10), ("untouched", 23)] {
        let data = fs::OpenOptions::new()
            .write(true)
            .open(backing(&volume, name))
            .unwrap();
        data.set_len(len).unwrap();
    }
    drop(volume);
    {
        let m = vol.mount();
        assert_eq!(fs::read(m.p("db-shm")).unwrap(), b"");
        assert_eq!(fs::metadata(m.p("db-journal")).unwrap().len(), 0);
        assert_eq!(fs::read(m.p("db-journal")).unwrap(), b"");
        fs::write(m.p("db-shm"), b"new shared memory").unwrap();
        assert_eq!(fs::read(m.p("db-shm")).unwrap(), b"new shared memory");
        assert_eq!(fs::read(m.p("kept")).unwrap(), b"acknowledged");
        let log = m.unmount();
        assert!(!log.contains("integrity failure"), "{log}");
        assert!(log.contains("never reached the disk"), "{log}");
    }
    // fsck: the unopened one is a crash remnant, the revived files' old headers orphans;
    // one repair mends all, and the next fsck finds nothing.
    let kinds = fsck_kinds(&vol);
    assert!(kinds.iter().any(|k| k == "empty-remnant"), "{kinds:?}");
    assert!(!kinds.iter().any(|k| k == "bad-preamble"), "{kinds:?}");
    assert_eq!(
        kinds.iter().filter(|k| *k == "orphan-header").count(),
        3,
        "{kinds:?}"
    );
    repair_converges(&vol);
    let m = vol.mount();
    assert_eq!(fs::read(m.p("untouched")).unwrap(), b"");
    assert_eq!(fs::read(m.p("db-shm")).unwrap(), b"new shared memory");
}

/// The kinds of problem `fsck --json` reports (it must report some: exit non-zero).
fn fsck_kinds(vol: &TestVolume) -> Vec<String> {
    let out = vol.run(&["fsck", vol.cipher_str(), "--json"]);
    assert!(!out.status.success(), "fsck found nothing");
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    report["problems"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["kind"].as_str().unwrap().to_string())
        .collect()
}

/// One `fsck --repair` mends everything (exit 1: errors corrected), and fsck is clean after.
fn repair_converges(vol: &TestVolume) {
    let repaired = vol.run(&["fsck", vol.cipher_str(), "--repair"]);
    assert_eq!(
        repaired.status.code(),
        Some(1),
        "{}",
        common::stderr(&repaired)
    );
    vol.assert_fsck_clean();
}

/// The data file of `name` and its undo journal (`sealfs.undo/<id>`).
fn data_and_journal(vol: &TestVolume, name: &str) -> (std::path::PathBuf, std::path::PathBuf) {
    let volume = open_volume(vol);
    let data = backing(&volume, name);
    let id = sealfs::io::read_file_id(&fs::File::open(&data).unwrap()).unwrap();
    let hex = sealfs::format::id_to_hex(&id);
    let journal = vol.cipher.join(format!("sealfs.undo/{hex}"));
    (data, journal)
}

/// Tears the last rewrite of `name` the way a power cut does: of the block its journal copied,
/// the first 1,024 bytes are the new ones, the rest still the old.
fn tear_last_rewrite(vol: &TestVolume, name: &str) {
    let (data, journal) = data_and_journal(vol, name);
    let id = sealfs::io::read_file_id(&fs::File::open(&data).unwrap()).unwrap();
    let records = sealfs::format::undo::decode(&fs::read(&journal).unwrap(), &id, 4096 + 28)
        .expect("a journal");
    let record = records.last().expect("a copy of the rewritten block");
    let at = 24 + record.block * (4096 + 28);
    let file = fs::OpenOptions::new().write(true).open(&data).unwrap();
    file.write_all_at(&record.stored[1024..], at + 1024)
        .unwrap();
}

#[test]
fn a_torn_rewrite_is_mended_from_the_undo_journal_at_first_open_and_by_fsck() {
    let vol = TestVolume::new();
    let acked: Vec<u8> = (0..10_000u32).map(|i| (i % 251) as u8 + 1).collect();
    {
        let m = vol.mount();
        let mut f = fs::File::create(m.p("log")).unwrap();
        std::io::Write::write_all(&mut f, &acked).unwrap();
        f.sync_all().unwrap();
        // Unsynced: the append rewrites the fsynced tail block, which is copied first.
        std::io::Write::write_all(&mut f, &[b'x'; 37]).unwrap();
        drop(f);
        // The power cut: the daemon dies with the journal and the rewritten block on disk.
        m.kill();
    }
    tear_last_rewrite(&vol, "log");
    let torn = common::test_dir();
    common::copy_tree(&vol.cipher, &torn.path().join("cipher"));
    // Without the journal's copy this block would fail: the tear is real.
    {
        let m = vol.mount_with(&["-o", "ro"]);
        let err = fs::read(m.p("log")).unwrap_err();
        assert_eq!(
            err.raw_os_error(),
            Some(libc::EIO),
            "a read-only mount mends nothing"
        );
        m.unmount();
    }
    {
        let m = vol.mount();
        let got = fs::read(m.p("log")).unwrap();
        assert!(
            got == acked,
            "the fsynced bytes back, the torn unsynced append gone: {} bytes, {}",
            got.len(),
            m.log_text()
        );
        let mut f = fs::OpenOptions::new()
            .append(true)
            .open(m.p("log"))
            .unwrap();
        std::io::Write::write_all(&mut f, b"more").unwrap();
        drop(f);
        assert_eq!(
            fs::read(m.p("log")).unwrap(),
            [&acked[..], b"more"].concat()
        );
        let log = m.unmount();
        assert!(log.contains("put back from the undo journal"), "{log}");
        assert!(!log.contains("integrity failure"), "{log}");
        // The append after the mend was journaled too; a clean unmount leaves no journal.
        let left: Vec<_> = fs::read_dir(vol.cipher.join("sealfs.undo"))
            .unwrap()
            .collect();
        assert!(left.is_empty(), "{left:?}");
    }
    vol.assert_fsck_clean();
    // The same state mended offline: fsck names it a torn write (a crash remnant, not a bad
    // block), one repair mends it, the next fsck is clean.
    let torn_cipher = torn.path().join("cipher");
    let offline = TestVolume::existing(torn, torn_cipher, vol.keys.clone());
    assert_eq!(fsck_kinds(&offline), ["torn-write"]);
    repair_converges(&offline);
    let m = offline.mount();
    assert_eq!(fs::read(m.p("log")).unwrap(), acked);
    m.unmount();
}

/// What a create or a delete cut short leaves (an orphan header, a `sealfs.new.*` data file)
/// is swept by the next mount after the crash: fsck then finds nothing, and every file reads.
#[test]
fn the_mount_after_a_crash_sweeps_orphan_headers_and_create_temps() {
    let vol = TestVolume::new();
    let m = vol.mount();
    fs::create_dir(m.p("dir")).unwrap();
    let long = "l".repeat(240);
    fs::write(m.p(&format!("dir/{long}")), b"a long name").unwrap();
    for i in 0..20 {
        fs::write(m.p(&format!("dir/f{i}")), format!("file {i}")).unwrap();
    }
    fs::write(m.p("kept"), b"kept").unwrap();
    // The crash: the daemon dies mid-session, then what a create cut short would leave is put
    // beside the real files (a header no data file names, a temp data file naming another).
    m.kill();
    let (data, _) = data_and_journal(&vol, "kept");
    let id = sealfs::io::read_file_id(&fs::File::open(&data).unwrap()).unwrap();
    let hex = sealfs::format::id_to_hex(&id);
    let header = vol
        .cipher
        .join(format!("sealfs.headers/{}/{hex}", &hex[..2]));
    let orphan = "00".to_string() + &"5a".repeat(15);
    fs::create_dir_all(vol.cipher.join("sealfs.headers/00")).unwrap();
    fs::copy(
        &header,
        vol.cipher.join(format!("sealfs.headers/00/{orphan}")),
    )
    .unwrap();
    let temp_dir = backing(&open_volume(&vol), "dir");
    fs::write(temp_dir.join("sealfs.new.0123456789abcdef"), [0u8; 24]).unwrap();
    // A long name's sidecar whose entry was never made (a create cut between the two), and
    // one whose entry exists (made in the session too): only the first goes.
    let unused = "sealfs.long.".to_string() + &"A".repeat(43) + ".name";
    fs::write(temp_dir.join(&unused), b"not a name anyone made").unwrap();
    let before = vol.run(&["fsck", vol.cipher_str()]);
    assert!(!before.status.success(), "fsck sees the leftovers first");
    {
        let m = vol.mount();
        assert_eq!(fs::read(m.p("kept")).unwrap(), b"kept");
        let log = m.unmount();
        assert!(log.contains("swept what the crash left"), "{log}");
        assert!(
            log.contains("orphan_headers=1 temp_files=1 unused_sidecars=1"),
            "{log}"
        );
    }
    assert!(!temp_dir.join(&unused).exists());
    vol.assert_fsck_clean();
    assert!(
        !vol.cipher
            .join(format!("sealfs.headers/00/{orphan}"))
            .exists()
    );
    assert!(header.exists(), "a header a file names stays");
    let m = vol.mount();
    for i in 0..20 {
        assert_eq!(
            fs::read(m.p(&format!("dir/f{i}"))).unwrap(),
            format!("file {i}").as_bytes()
        );
    }
    assert_eq!(
        fs::read(m.p(&format!("dir/{long}"))).unwrap(),
        b"a long name"
    );
    m.unmount();
}
