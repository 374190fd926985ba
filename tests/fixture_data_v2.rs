//! The frozen volume in tests/fixtures/data-v2 (data file version 2: all-zero blocks are holes
//! only where the file's sealed hole map records them) must read back exactly, by every later
//! sealfs. Git stores the holes as zeros, which is what they are.

mod common;

use std::fs;

use common::{fixture_dir, mount_fixture};

const BS: usize = 4096;

fn sparse() -> Vec<u8> {
    let mut want = vec![0u8; 11 * BS + 100];
    want[..BS].fill(b'x');
    want[2 * BS..3 * BS].fill(b'x');
    want[6 * BS..7 * BS].fill(b'y');
    want
}

#[test]
fn fixture_data_v2_reads_through_a_mount() {
    let (dir, vol, m) = mount_fixture("data-v2");
    assert_eq!(fs::read(m.p("sparse")).unwrap(), sparse());
    assert_eq!(fs::read(m.p("plain")).unwrap(), b"a file without holes\n");
    m.unmount();
    let key = dir.path().join("master.key");
    let out = vol.run(&["fsck", vol.cipher_str(), "--keyfile", key.to_str().unwrap()]);
    assert!(out.status.success(), "fsck: {}", common::stderr(&out));
}

#[test]
fn fixture_data_v2_files_are_version_2_with_one_hole_map() {
    let cipher = fixture_dir("data-v2").join("cipher");
    let data: Vec<_> = common::files_under(&cipher)
        .into_iter()
        .filter(|p| !p.to_string_lossy().contains("sealfs."))
        .collect();
    assert_eq!(data.len(), 2);
    for path in data {
        let preamble = sealfs::io::read_preamble(&fs::File::open(&path).unwrap()).unwrap();
        assert_eq!(preamble.version, 2, "{}", path.display());
    }
    let maps = common::files_under(&cipher.join("sealfs.headers"))
        .into_iter()
        .filter(|p| p.to_string_lossy().ends_with(".holes"))
        .count();
    assert_eq!(maps, 1, "only the sparse file has holes");
}
