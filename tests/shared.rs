//! Several mounts of one cipher dir: refused unless every one is `-o shared`, naming the
//! holder; a claim left by a killed mount locks nobody out; shared mounts see each other's
//! closed files. Two mounts of a local cipher dir take the same code path as two hosts on a
//! shared filesystem (tests/juicefs.rs runs it on one).

mod common;

use std::fs;
use std::io::Write;

use common::{Mounted, TestVolume, is_mounted};

/// A second mount point for the same cipher dir and keys.
fn second(vol: &TestVolume) -> TestVolume {
    TestVolume::existing(
        tempfile::tempdir().unwrap(),
        vol.cipher.clone(),
        vol.keys.clone(),
    )
}

/// Tries a daemonizing mount: its stderr when it fails.
fn refused(vol: &TestVolume, options: &[&str]) -> String {
    let mut args = vec!["mount", vol.cipher_str(), vol.mnt.to_str().unwrap()];
    args.extend_from_slice(options);
    let out = vol.run(&args);
    if out.status.success() {
        let _ = vol.run(&["umount", vol.mnt.to_str().unwrap()]);
        panic!("the mount was not refused");
    }
    assert!(!is_mounted(&vol.mnt));
    common::stderr(&out)
}

#[test]
fn a_second_mount_is_refused_unless_all_are_shared() {
    let vol = TestVolume::new();
    let other = second(&vol);
    let first = vol.mount();
    let why = refused(&other, &[]);
    assert!(
        why.contains(&format!("pid {}", first.pid())) && why.contains("exclusive"),
        "names the holder: {why}"
    );
    let why = refused(&other, &["-o", "shared"]);
    assert!(why.contains(&format!("pid {}", first.pid())), "{why}");
    first.unmount();

    let a = vol.mount_with(&["-o", "shared"]);
    let b = other.mount_with(&["-o", "shared"]);
    let third = second(&vol);
    let why = refused(&third, &[]);
    assert!(why.contains("shared"), "{why}");
    // fsck --repair is refused while any host has it mounted, and says by whom.
    let out = vol.run(&["fsck", vol.cipher_str(), "--repair"]);
    assert_eq!(out.status.code(), Some(8));
    assert!(common::stderr(&out).contains(&format!("pid {}", a.pid())));

    // Close-to-open: what one shared mount wrote and closed, the other reads at once, even
    // with the file's old attributes cached.
    fs::write(a.p("f"), b"first").unwrap();
    assert_eq!(fs::read(b.p("f")).unwrap(), b"first");
    let mut f = fs::OpenOptions::new().append(true).open(a.p("f")).unwrap();
    f.write_all(b" and more").unwrap();
    drop(f);
    assert_eq!(fs::read(b.p("f")).unwrap(), b"first and more");
    fs::write(b.p("f"), b"cut").unwrap();
    assert_eq!(fs::read(a.p("f")).unwrap(), b"cut");
    a.unmount();
    b.unmount();
    vol.mount().unmount();
}

#[test]
fn a_claim_left_by_a_killed_mount_locks_nobody_out() {
    let vol = TestVolume::new();
    let dead: Mounted = vol.mount();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(dead.pid() as i32),
        nix::sys::signal::SIGKILL,
    )
    .unwrap();
    // The kernel keeps the dead FUSE mount until it is unmounted; the claim went with the
    // process.
    drop(dead);
    let other = second(&vol);
    let m = other.mount();
    fs::write(m.p("after"), b"ok").unwrap();
    m.unmount();
    let records: Vec<_> = fs::read_dir(vol.cipher.join("sealfs.mounts"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .filter(|n| n.to_string_lossy().ends_with(".json"))
        .collect();
    assert!(
        records.is_empty(),
        "the dead mount's record is cleared: {records:?}"
    );
}
