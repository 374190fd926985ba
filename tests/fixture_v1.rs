//! The frozen volume in tests/fixtures/v1, written by format version 1, must read back
//! exactly, by every later sealfs: through a mount and through the library alone.

mod common;

use std::ffi::OsStr;
use std::fs;

use common::{fixture_dir, mount_fixture};
use sealfs::keys::{KeyfileProvider, MasterKeyProvider};
use sealfs::volume::Volume;

fn nested() -> Vec<u8> {
    (0..10000u32).map(|i| (i * 7 % 256) as u8).collect()
}

#[test]
fn fixture_v1_reads_through_a_mount() {
    let (_dir, _vol, m) = mount_fixture("v1");
    assert_eq!(
        fs::read(m.p("hello.txt")).unwrap(),
        b"hello from sealfs format v1\n"
    );
    assert_eq!(fs::read(m.p("dir/nested.bin")).unwrap(), nested());
    assert_eq!(
        fs::read_link(m.p("dir/link")).unwrap().as_os_str(),
        "../hello.txt"
    );
    assert_eq!(
        fs::read(m.p("dir/link")).unwrap(),
        b"hello from sealfs format v1\n"
    );
    assert_eq!(fs::read(m.p(&"L".repeat(200))).unwrap(), b"long name\n");
    assert_eq!(
        fs::read(m.p("h\u{e9}llo-w\u{f6}rld")).unwrap(),
        b"unicode\n"
    );
    let sparse = fs::read(m.p("sparse")).unwrap();
    assert_eq!(sparse.len(), 50003);
    assert!(sparse[..50000].iter().all(|&b| b == 0));
    assert_eq!(&sparse[50000..], b"end");
    let mut names: Vec<_> = fs::read_dir(&m.path)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    names.sort();
    assert_eq!(names.len(), 5);
    assert!(
        fs::write(m.p("new"), b"x").is_err(),
        "ro mount refuses writes"
    );
}

#[test]
fn fixture_v1_reads_through_the_library_without_a_mount() {
    // A copy: opening a volume probes its backing store in a scratch directory, which would
    // race the other test's copy of the committed fixture (and must not touch it anyway).
    let copy = tempfile::tempdir().unwrap();
    common::copy_tree(&fixture_dir("v1"), copy.path());
    let root = copy.path();
    let provider: Box<dyn MasterKeyProvider> =
        Box::new(KeyfileProvider::load(&root.join("master.key")).unwrap());
    let volume = Volume::open(&root.join("cipher"), vec![provider], Default::default()).unwrap();
    let dir_name = volume.encrypt_name(OsStr::new("dir")).unwrap();
    let file_name = volume.encrypt_name(OsStr::new("nested.bin")).unwrap();
    let path = root
        .join("cipher")
        .join(dir_name.entry())
        .join(file_name.entry());
    let file = fs::File::open(path).unwrap();
    let (file_id, material) = volume.open_data_file(&file).unwrap();
    // A version 1 data file: no hole map.
    assert_eq!(sealfs::io::read_preamble(&file).unwrap().version, 1);
    let bf = volume.data_file(&file, &file_id, &material, None);
    assert_eq!(bf.plain_size().unwrap(), 10000);
    assert_eq!(bf.read_at(0, 20000).unwrap(), nested());
}
