//! The frozen volume in tests/fixtures/xattr-v2 (extended attribute names version 2; values
//! over 65,508 bytes split over two backing attributes) must read back exactly, by every later
//! sealfs. Git keeps no xattrs: the fixture's backing attributes are in `xattrs.txt`, put back
//! on a copy on tmpfs (which holds values of 64 KiB) before the mount, and the empty backing
//! directory of `d` made again.

mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use common::xattrs::{get_xattr, list_xattrs, set_xattr};
use common::{TestVolume, copy_tree, fixture_dir};

/// What make-xattr-v2.sh wrote.
fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| ((i * 31 + 7) % 256) as u8).collect()
}

fn unhex(text: &str) -> Vec<u8> {
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).unwrap())
        .collect()
}

#[test]
fn fixture_xattr_v2_reads_through_a_mount() {
    let shm = Path::new("/dev/shm");
    assert!(shm.is_dir(), "this test needs /dev/shm (tmpfs)");
    let dir = tempfile::tempdir_in(shm).unwrap();
    copy_tree(&fixture_dir("xattr-v2"), dir.path());
    let cipher = dir.path().join("cipher");
    let dump = fs::read_to_string(dir.path().join("xattrs.txt")).unwrap();
    for line in dump.lines() {
        let mut fields = line.split('\t');
        let (path, name, value) = (
            fields.next().unwrap(),
            fields.next().unwrap(),
            fields.next().unwrap(),
        );
        let path = cipher.join(path);
        // Git keeps no empty directories either (`d`'s backing directory is one).
        if !path.exists() {
            fs::create_dir_all(&path).unwrap();
        }
        set_xattr(&path, name, &unhex(value));
    }
    let key = dir.path().join("master.key");
    fs::set_permissions(&key, fs::Permissions::from_mode(0o600)).unwrap();
    let vol = TestVolume::existing(
        tempfile::tempdir().unwrap(),
        cipher,
        dir.path().join("keys"),
    );
    let m = vol.mount_with(&["--keyfile", key.to_str().unwrap(), "-o", "ro"]);
    let f = m.p("f");
    let mut listed = list_xattrs(&f);
    listed.sort();
    assert_eq!(
        listed,
        [
            "system.posix_acl_access",
            "user.big",
            "user.edge",
            "user.small"
        ]
    );
    assert_eq!(get_xattr(&f, "user.small").unwrap(), b"a small value");
    assert_eq!(get_xattr(&f, "user.edge").unwrap(), pattern(65_508));
    assert_eq!(get_xattr(&f, "user.big").unwrap(), pattern(65_536));
    let acl = common::ok(
        std::process::Command::new("getfacl")
            .args(["-n", "--omit-header"])
            .arg(&f)
            .output()
            .unwrap(),
    );
    assert!(acl.contains("user:1000:r--"), "{acl}");
    assert_eq!(get_xattr(&m.p("d"), "user.dir").unwrap(), b"on a directory");
    assert_eq!(fs::read(&f).unwrap(), b"a file with attributes\n");
    m.unmount();
    let out = vol.run(&["fsck", vol.cipher_str(), "--keyfile", key.to_str().unwrap()]);
    assert!(out.status.success(), "fsck: {}", common::stderr(&out));
}
