//! The frozen volume in tests/fixtures/v3 (config version 3: KEKs added by rotation, sealed in
//! the config, and a retired KEK) must read back exactly, by every later sealfs.

mod common;

use std::fs;

use common::{copy_tree, fixture_dir, mount_fixture};
use sealfs::keys::{KeyfileProvider, MasterKeyProvider};
use sealfs::volume::Volume;

const FILES: [(&str, &[u8]); 4] = [
    ("a", b"a: written under KEK 1, rewrapped to 3\n"),
    ("b", b"b: written under KEK 2, rewrapped to 3\n"),
    ("c", b"c: written under KEK 3\n"),
    ("d", b"d: written under KEK 4\n"),
];

#[test]
fn fixture_v3_reads_through_a_mount() {
    let (_dir, _vol, m) = mount_fixture("v3");
    for (name, content) in FILES {
        assert_eq!(fs::read(m.p(name)).unwrap(), content, "{name}");
    }
}

#[test]
fn fixture_v3_keys_and_census() {
    // A copy: opening a volume probes its cipher dir with files of its own, which a test
    // copying the fixture at the same time would trip over.
    let copy = tempfile::tempdir().unwrap();
    copy_tree(&fixture_dir("v3"), copy.path());
    let root = copy.path();
    let provider: Box<dyn MasterKeyProvider> =
        Box::new(KeyfileProvider::load(&root.join("master.key")).unwrap());
    let volume = Volume::open(&root.join("cipher"), vec![provider], Default::default()).unwrap();
    assert_eq!(volume.keys.current_kek(), 4);
    assert_eq!(
        volume.keys.kek_versions(),
        vec![2, 3, 4],
        "KEK 1 is retired"
    );
    let info = sealfs::admin::info::info(&root.join("cipher")).unwrap();
    assert_eq!(info.format_version, 3);
    assert_eq!(info.retired_keks, vec![1]);
    assert_eq!(
        info.files.by_kek.into_iter().collect::<Vec<_>>(),
        vec![(3, 3), (4, 1)]
    );
}
