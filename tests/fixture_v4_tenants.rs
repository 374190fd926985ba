//! The frozen volume in tests/fixtures/v4-tenants (config version 4: key policies; header
//! version 3: file keys under tenant KEKs; names, symlink targets and a long target sidecar
//! under tenant name keys; a removed policy's id retired) must read back exactly, by every
//! later sealfs. Its tenants' key files are found through --policy-keyfile: the paths its
//! config recorded were the generating machine's.

mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use common::{TestVolume, copy_tree, files_under, fixture_dir};

fn mounted_copy(tenant_keys: bool) -> (tempfile::TempDir, TestVolume, common::Mounted) {
    let dir = tempfile::tempdir().unwrap();
    copy_tree(&fixture_dir("v4-tenants"), dir.path());
    for key in ["master.key", "acme.key", "beta.key"] {
        fs::set_permissions(dir.path().join(key), fs::Permissions::from_mode(0o600)).unwrap();
    }
    let vol = TestVolume::existing(
        tempfile::tempdir().unwrap(),
        dir.path().join("cipher"),
        dir.path().join("keys"),
    );
    let master = dir.path().join("master.key");
    let (acme, beta) = if tenant_keys {
        (dir.path().join("acme.key"), dir.path().join("beta.key"))
    } else {
        (
            dir.path().join("no-acme.key"),
            dir.path().join("no-beta.key"),
        )
    };
    let acme = format!("1={}", acme.display());
    let beta = format!("2={}", beta.display());
    let m = vol.mount_with(&[
        "--keyfile",
        master.to_str().unwrap(),
        "--policy-keyfile",
        &acme,
        "--policy-keyfile",
        &beta,
        "-o",
        "ro",
    ]);
    (dir, vol, m)
}

#[test]
fn fixture_v4_tenants_read_through_a_mount() {
    let (_dir, _vol, m) = mounted_copy(true);
    assert_eq!(
        fs::read(m.p("root.txt")).unwrap(),
        b"the volume root: volume keys\n"
    );
    assert_eq!(
        fs::read(m.p("clients/acme/report.txt")).unwrap(),
        b"acme: under policy 1\n"
    );
    assert_eq!(
        fs::read(m.p("clients/acme/2026/q4.txt")).unwrap(),
        b"acme, nested\n"
    );
    assert_eq!(
        fs::read_link(m.p("clients/acme/2026/latest")).unwrap(),
        Path::new("../report.txt")
    );
    assert_eq!(
        fs::read_link(m.p("clients/acme/long-link")).unwrap(),
        Path::new(&format!("/{}", "x".repeat(3500)))
    );
    assert_eq!(
        fs::read(m.p("clients/beta/invoice.txt")).unwrap(),
        b"beta: under policy 2\n"
    );
    assert_eq!(
        fs::read(m.p(&format!("clients/beta/{}/inside.txt", "n".repeat(200)))).unwrap(),
        b"beta, under a long name\n"
    );
    let mut names: Vec<String> = fs::read_dir(m.p(""))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, ["clients", "root.txt"]);
}

#[test]
fn fixture_v4_tenants_without_tenant_keys_serve_the_rest() {
    let (_dir, _vol, m) = mounted_copy(false);
    assert_eq!(
        fs::read(m.p("root.txt")).unwrap(),
        b"the volume root: volume keys\n"
    );
    let err = fs::read(m.p("clients/acme/report.txt")).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::ENOKEY), "{err}");
}

#[test]
fn fixture_v4_tenants_format_and_census() {
    // A copy: opening a volume probes its cipher dir with files of its own, which a test
    // copying the fixture at the same time would trip over.
    let copy = tempfile::tempdir().unwrap();
    copy_tree(&fixture_dir("v4-tenants"), copy.path());
    let root = copy.path();
    let info = sealfs::admin::info::info(&root.join("cipher")).unwrap();
    assert_eq!(info.format_version, 4);
    assert_eq!(
        info.files.by_policy.into_iter().collect::<Vec<_>>(),
        vec![(1, 2), (2, 2)]
    );
    assert_eq!(
        info.files.by_kek.into_iter().collect::<Vec<_>>(),
        vec![(1, 1)]
    );
    let config = sealfs::volume::Volume::read_config(&root.join("cipher")).unwrap();
    assert_eq!(
        config
            .policies
            .iter()
            .map(|p| p.label.as_str())
            .collect::<Vec<_>>(),
        ["acme", "beta"]
    );
    assert_eq!(config.retired_policies, [3]);
    let versions: Vec<u8> = files_under(&root.join("cipher/sealfs.headers"))
        .iter()
        .map(|h| fs::read(h).unwrap()[7])
        .collect();
    assert_eq!(versions.iter().filter(|v| **v == 3).count(), 4);
    assert_eq!(versions.iter().filter(|v| **v == 1).count(), 1);
}
