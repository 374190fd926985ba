//! The frozen volume in tests/fixtures/undo-v1 (undo journal 1): a file whose rewritten last
//! block a crash tore, beside the journal holding that block's copy. Every later sealfs must
//! read the journal and mend the file: the fsynced 10,000 bytes back, the torn append gone.

mod common;

use std::fs;

use common::{TestVolume, copy_tree, fixture_dir};

fn acked() -> Vec<u8> {
    (0..10_000u32).map(|i| (i % 251) as u8 + 1).collect()
}

#[test]
fn fixture_undo_v1_is_mended_at_first_lookup() {
    // A writable mount of a copy: a read-only one mends nothing.
    let dir = tempfile::tempdir().unwrap();
    copy_tree(&fixture_dir("undo-v1"), dir.path());
    let key = dir.path().join("master.key");
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(&key, fs::Permissions::from_mode(0o600)).unwrap();
    let vol = TestVolume::existing(
        tempfile::tempdir().unwrap(),
        dir.path().join("cipher"),
        dir.path().join("keys"),
    );
    let m = vol.mount_with(&["--keyfile", key.to_str().unwrap()]);
    assert!(
        fs::read(m.p("log")).unwrap() == acked(),
        "the fsynced bytes"
    );
    let log = m.unmount();
    assert!(log.contains("put back from the undo journal"), "{log}");
    let out = vol.run(&["fsck", vol.cipher_str(), "--keyfile", key.to_str().unwrap()]);
    assert!(out.status.success(), "fsck: {}", common::stderr(&out));
    let left = fs::read_dir(vol.cipher.join("sealfs.undo"))
        .unwrap()
        .count();
    assert_eq!(left, 0, "the journal is spent");
}

#[test]
fn fixture_undo_v1_journal_decodes() {
    let cipher = fixture_dir("undo-v1").join("cipher");
    let journals = common::files_under(&cipher.join("sealfs.undo"));
    assert_eq!(journals.len(), 1);
    let name = journals[0]
        .file_name()
        .unwrap()
        .to_str()
        .unwrap()
        .to_string();
    let id = sealfs::format::id_from_hex(&name).unwrap();
    let records =
        sealfs::format::undo::decode(&fs::read(&journals[0]).unwrap(), &id, 4096 + 28).unwrap();
    assert_eq!(records.len(), 1);
    assert_eq!(
        records[0].block, 2,
        "the partial last block of 10,000 bytes"
    );
    assert_eq!(records[0].stored.len(), 10_000 - 2 * 4096 + 28);
    assert_eq!(
        records[0].backing_len,
        24 + 2 * (4096 + 28) + records[0].stored.len() as u64
    );
}
