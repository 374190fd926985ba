//! What a power cut leaves that is no damage: a data file whose first write never reached the
//! disk (shorter than its preamble, as sqlite's unsynced `-shm` and `-journal` files are after
//! a cut). ext4 shows such a file empty; so does a mount, with no integrity failure, and fsck
//! tells it apart from damage and converges in one repair.

mod common;

use std::fs;

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
    let out = vol.run(&["fsck", vol.cipher_str(), "--json"]);
    assert!(!out.status.success());
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let kinds: Vec<&str> = report["problems"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["kind"].as_str().unwrap())
        .collect();
    assert!(kinds.contains(&"empty-remnant"), "{kinds:?}");
    assert!(!kinds.contains(&"bad-preamble"), "{kinds:?}");
    assert_eq!(
        kinds.iter().filter(|k| **k == "orphan-header").count(),
        3,
        "{kinds:?}"
    );
    let repaired = vol.run(&["fsck", vol.cipher_str(), "--repair"]);
    assert_eq!(
        repaired.status.code(),
        Some(1),
        "{}",
        common::stderr(&repaired)
    );
    vol.assert_fsck_clean();
    let m = vol.mount();
    assert_eq!(fs::read(m.p("untouched")).unwrap(), b"");
    assert_eq!(fs::read(m.p("db-shm")).unwrap(), b"new shared memory");
}
