//! The frozen volume in tests/fixtures/symlink-v2 (symlink target encoding 2: targets longer
//! than 3,043 bytes in sidecars under `sealfs.links`) must read back exactly, by every later
//! sealfs. (Git keeps no hard links, so the fixture has none.)

mod common;

use std::fs;
use std::os::unix::ffi::OsStrExt;

use common::mount_fixture;

/// What make-symlink-v2.sh wrote: "t<LEN>/" then a-z repeating, cut to LEN bytes.
fn target(len: usize) -> Vec<u8> {
    let mut t = format!("t{len}/").into_bytes();
    while t.len() < len {
        t.extend_from_slice(b"abcdefghijklmnopqrstuvwxyz");
    }
    t.truncate(len);
    t
}

#[test]
fn fixture_symlink_v2_reads_through_a_mount() {
    let (_dir, vol, m) = mount_fixture("symlink-v2");
    for (name, len) in [("l1", 1), ("l3043", 3043), ("l3044", 3044), ("l4095", 4095)] {
        let link = m.p(name);
        assert_eq!(
            fs::read_link(&link).unwrap().as_os_str().as_bytes(),
            target(len),
            "{name}"
        );
        assert_eq!(fs::symlink_metadata(&link).unwrap().len(), len as u64);
    }
    assert_eq!(fs::read(m.p("f")).unwrap(), b"a file beside the links\n");
    m.unmount();
    let key = vol.cipher.parent().unwrap().join("master.key");
    let out = vol.run(&["fsck", vol.cipher_str(), "--keyfile", key.to_str().unwrap()]);
    assert!(out.status.success(), "fsck: {}", common::stderr(&out));
}
