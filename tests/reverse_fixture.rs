//! The frozen reverse fixture (tests/fixtures/reverse-v1): a plaintext tree and its reverse
//! config. Its view must stay byte-identical in every later sealfs, or each incremental backup
//! after an upgrade would send everything again: view.sha256 holds the digest of every file
//! and symlink target of the view as first written.

mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

use common::{TestVolume, copy_tree, fixture_dir, test_dir};

const LISTING: &str = r#"find . -type f -print0 | sort -z | xargs -0 sha256sum
find . -type l | sort | while read -r l; do printf '%s  %s -> %s\n' "$(printf %s "$(readlink "$l")" | sha256sum | cut -d' ' -f1)" "$l" link; done"#;

#[test]
fn reverse_fixture_view_is_unchanged_and_reads_forward() {
    let fixture = fixture_dir("reverse-v1");
    let dir = test_dir();
    copy_tree(&fixture.join("plain"), &dir.path().join("plain"));
    let key = dir.path().join("master.key");
    fs::copy(fixture.join("master.key"), &key).unwrap();
    fs::set_permissions(&key, fs::Permissions::from_mode(0o600)).unwrap();
    let keyfile = key.to_str().unwrap().to_string();
    let plain = dir.path().join("plain");
    let keys = dir.path().join("keys");
    let vol = TestVolume::existing(dir, plain, keys);
    let view = vol.mount_with(&["--reverse", "--keyfile", &keyfile]);
    let out = Command::new("bash")
        .args(["-c", LISTING])
        .current_dir(&view.path)
        .output()
        .unwrap();
    assert!(out.status.success());
    let expected = fs::read_to_string(fixture.join("view.sha256")).unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        expected,
        "the reverse view of the frozen tree changed"
    );

    let copy = vol.dir.path().join("copy");
    fs::create_dir(&copy).unwrap();
    assert!(
        Command::new("cp")
            .arg("-a")
            .arg(format!("{}/.", view.path.display()))
            .arg(&copy)
            .status()
            .unwrap()
            .success()
    );
    drop(view);
    let forward = TestVolume::existing(test_dir(), copy, vol.keys.clone());
    let m = forward.mount_with(&["--keyfile", &keyfile]);
    assert_eq!(fs::read(m.p("a.txt")).unwrap(), b"alpha\n");
    assert_eq!(fs::read(m.p("dir/sub/héllo ✓")).unwrap(), b"unicode\n");
    let b: Vec<u8> = (0..10000u32).map(|i| (i * 7 % 251) as u8).collect();
    assert_eq!(fs::read(m.p("dir/b.bin")).unwrap(), b);
    assert_eq!(
        fs::read_link(m.p("dir/link")).unwrap(),
        Path::new("../a.txt")
    );
}
