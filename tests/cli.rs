//! The command line as a user meets it: every failure a one-line error and a non-zero exit.

mod common;

use std::fs;
use std::io::Write;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::process::Command;

use common::{BIN, Mounted, TestVolume, is_mounted, require_root, sealfs, stderr};

fn assert_one_line_failure(out: &std::process::Output, needle: &str) {
    assert!(!out.status.success(), "should fail");
    let err = stderr(out);
    assert!(err.contains(needle), "expected {needle:?} in {err:?}");
    assert_eq!(err.trim().lines().count(), 1, "one line: {err:?}");
}

#[test]
fn init_writes_a_private_key_and_refuses_to_overwrite() {
    let vol = TestVolume::new();
    let keys: Vec<_> = fs::read_dir(&vol.keys)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(keys.len(), 1);
    let meta = fs::metadata(&keys[0]).unwrap();
    assert_eq!(meta.len(), 32);
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    assert!(
        !keys[0].starts_with(&vol.cipher),
        "the key stays outside the cipher dir"
    );
    let again = sealfs(&vol.keys, &["init", vol.cipher.to_str().unwrap()]);
    assert_one_line_failure(&again, "already a sealfs volume");
    let busy = vol.dir.path().join("busy");
    fs::create_dir(&busy).unwrap();
    fs::write(busy.join("x"), b"x").unwrap();
    assert_one_line_failure(
        &sealfs(&vol.keys, &["init", busy.to_str().unwrap()]),
        "not empty",
    );
}

#[test]
fn mount_failures_are_one_line_errors() {
    let vol = TestVolume::new();
    let cipher = vol.cipher.to_str().unwrap();
    let mnt = vol.mnt.to_str().unwrap();
    let missing = vol.dir.path().join("nope");
    assert_one_line_failure(
        &sealfs(&vol.keys, &["mount", cipher, missing.to_str().unwrap()]),
        "does not exist",
    );
    let empty_keys = vol.dir.path().join("nokeys");
    assert_one_line_failure(&sealfs(&empty_keys, &["mount", cipher, mnt]), "no key file");
    let wrong = vol.dir.path().join("wrong.key");
    fs::write(&wrong, [7u8; 32]).unwrap();
    fs::set_permissions(&wrong, fs::Permissions::from_mode(0o600)).unwrap();
    assert_one_line_failure(
        &sealfs(
            &vol.keys,
            &["mount", cipher, mnt, "--keyfile", wrong.to_str().unwrap()],
        ),
        "wrong key",
    );
    let short = vol.dir.path().join("short.key");
    fs::write(&short, [7u8; 5]).unwrap();
    assert_one_line_failure(
        &sealfs(
            &vol.keys,
            &["mount", cipher, mnt, "--keyfile", short.to_str().unwrap()],
        ),
        "exactly 32 bytes",
    );
    assert_one_line_failure(
        &sealfs(&vol.keys, &["mount", mnt, mnt]),
        "not a sealfs volume",
    );
    assert_one_line_failure(
        &sealfs(&vol.keys, &["mount", cipher, mnt, "-o", "bogus"]),
        "unknown mount option",
    );
    // Busy: already mounted.
    let m = vol.mount();
    assert_one_line_failure(&sealfs(&vol.keys, &["mount", cipher, mnt]), "busy");
    m.unmount();
    // A config from a newer sealfs.
    let conf = vol.cipher.join("sealfs.conf");
    let text = fs::read_to_string(&conf).unwrap();
    fs::set_permissions(&conf, fs::Permissions::from_mode(0o600)).unwrap();
    fs::write(
        &conf,
        text.replace("\"format_version\": 1", "\"format_version\": 7"),
    )
    .unwrap();
    assert_one_line_failure(
        &sealfs(&vol.keys, &["mount", cipher, mnt]),
        "newer than this sealfs supports",
    );
}

#[test]
fn daemon_mode_mounts_and_umount_unmounts() {
    let vol = TestVolume::new();
    let mnt = fs::canonicalize(&vol.mnt).unwrap();
    let out = sealfs(
        &vol.keys,
        &["mount", vol.cipher.to_str().unwrap(), mnt.to_str().unwrap()],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(is_mounted(&mnt), "mounted when the command returns");
    fs::write(mnt.join("f"), b"daemon").unwrap();
    assert_eq!(fs::read(mnt.join("f")).unwrap(), b"daemon");
    let out = sealfs(&vol.keys, &["umount", mnt.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    for _ in 0..100 {
        if !is_mounted(&mnt) {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert!(!is_mounted(&mnt));
    assert_one_line_failure(
        &sealfs(&vol.keys, &["umount", mnt.to_str().unwrap()]),
        "not a mount point",
    );
}

#[test]
fn passphrase_keyslots_via_passfile_and_extpass() {
    let dir = tempfile::tempdir().unwrap();
    let pass = dir.path().join("pass");
    fs::write(&pass, "correct horse battery\n").unwrap();
    let cipher = dir.path().join("c");
    let mnt = dir.path().join("m");
    fs::create_dir(&mnt).unwrap();
    let keys = dir.path().join("keys");
    let out = sealfs(
        &keys,
        &[
            "init",
            cipher.to_str().unwrap(),
            "--passfile",
            pass.to_str().unwrap(),
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(!keys.exists(), "a passphrase volume writes no key file");
    let vol = TestVolume::existing(dir, cipher.clone(), keys.clone());
    let m = vol.mount_with(&["--extpass", "echo 'correct horse battery'"]);
    fs::write(m.p("x"), b"by passphrase").unwrap();
    m.unmount();
    let m = vol.mount_with(&["--passfile", pass.to_str().unwrap()]);
    assert_eq!(fs::read(m.p("x")).unwrap(), b"by passphrase");
    m.unmount();
    let out = sealfs(
        &keys,
        &[
            "mount",
            cipher.to_str().unwrap(),
            mnt.to_str().unwrap(),
            "--extpass",
            "echo wrong",
        ],
    );
    assert!(!out.status.success());
    assert!(stderr(&out).contains("wrong key"), "{}", stderr(&out));
}

/// Runs `script` with sh as nobody (uid and gid 65534, no groups) in `dir`.
fn as_nobody(dir: &std::path::Path, script: &str) -> std::process::Output {
    Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "sh",
            "-c",
            script,
        ])
        .current_dir(dir)
        .output()
        .unwrap()
}

/// A volume mounted by root with allow_other, its root directory world-writable and sticky.
fn mounted_for_everyone() -> (TestVolume, Mounted) {
    require_root("an allow_other mount, and setpriv to nobody");
    let vol = TestVolume::new();
    fs::set_permissions(vol.dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let m = vol.mount_with(&["-o", "allow_other"]);
    fs::set_permissions(&m.path, fs::Permissions::from_mode(0o1777)).unwrap();
    (vol, m)
}

/// Without allow_other the kernel leaves permission checks to sealfs (no default_permissions,
/// as gocryptfs): only the mounting user reaches the mount, and access(2) answers from the
/// backing inode with that user's credentials, which for root still refuses X_OK on a file no
/// one may execute.
#[test]
fn a_private_mount_answers_access_from_the_files_modes() {
    require_root("setpriv to nobody, and root's own access(2) answers");
    use nix::unistd::{AccessFlags, access};
    let vol = TestVolume::new();
    fs::set_permissions(vol.dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let m = vol.mount();
    fs::set_permissions(&m.path, fs::Permissions::from_mode(0o755)).unwrap();
    for (name, mode) in [("plain", 0o644), ("tool", 0o755), ("locked", 0o000)] {
        fs::write(m.p(name), b"#!/bin/sh\necho ran\n").unwrap();
        fs::set_permissions(m.p(name), fs::Permissions::from_mode(mode)).unwrap();
    }
    assert_eq!(
        access(&m.p("plain"), AccessFlags::X_OK),
        Err(nix::Error::EACCES)
    );
    access(&m.p("tool"), AccessFlags::X_OK).unwrap();
    access(&m.p("locked"), AccessFlags::R_OK | AccessFlags::W_OK).unwrap();
    assert_eq!(
        access(&m.p("missing"), AccessFlags::F_OK),
        Err(nix::Error::ENOENT)
    );
    let ran = Command::new(m.p("tool")).output().unwrap();
    assert_eq!(String::from_utf8_lossy(&ran.stdout), "ran\n");
    let refused = Command::new(m.p("plain")).output().unwrap_err();
    assert_eq!(refused.kind(), std::io::ErrorKind::PermissionDenied);
    // Nobody else gets in at all: that is what lets the kernel skip its own checks.
    let out = as_nobody(&m.path, "ls .");
    assert!(
        !out.status.success(),
        "another user reached a private mount"
    );
    m.unmount();
}

/// Writing or truncating a set-id file drops its set-id bits unless the writer may keep them
/// (CAP_FSETID, i.e. root here), as on ext4. The kernel delegates this to sealfs
/// (FUSE_HANDLE_KILLPRIV_V2), which lets it stop asking for security.capability before every
/// write.
#[test]
fn writes_by_others_drop_set_id_bits_and_roots_keep_them() {
    let (_vol, m) = mounted_for_everyone();
    let as_nobody = |script: &str| {
        let out = as_nobody(&m.path, script);
        assert!(out.status.success(), "{script}: {}", stderr(&out));
    };
    let mode = |name: &str| fs::metadata(m.p(name)).unwrap().mode() & 0o7777;
    as_nobody("echo one > tool && chmod 6755 tool");
    assert_eq!(mode("tool"), 0o6755);
    as_nobody("echo two >> tool");
    assert_eq!(mode("tool"), 0o755, "a write by its owner drops both bits");
    as_nobody("chmod 6755 tool && truncate -s 2 tool");
    assert_eq!(mode("tool"), 0o755, "so does a truncate");
    as_nobody("chmod 6755 tool && fallocate -l 8192 tool");
    assert_eq!(mode("tool"), 0o755, "and an fallocate");
    // Set-group-id without group execute marks mandatory locking, not privilege: kept.
    as_nobody("chmod 2644 tool && echo three >> tool");
    assert_eq!(mode("tool"), 0o2644);
    fs::set_permissions(m.p("tool"), fs::Permissions::from_mode(0o6755)).unwrap();
    fs::OpenOptions::new()
        .append(true)
        .open(m.p("tool"))
        .unwrap()
        .write_all(b"root\n")
        .unwrap();
    fs::File::options()
        .write(true)
        .open(m.p("tool"))
        .unwrap()
        .set_len(3)
        .unwrap();
    assert_eq!(mode("tool"), 0o6755, "root's writes keep them");
    m.unmount();
}

#[test]
fn allow_other_gives_files_to_their_creator_and_enforces_modes() {
    let (_vol, m) = mounted_for_everyone();
    fs::write(m.p("root-only"), b"secret").unwrap();
    fs::set_permissions(m.p("root-only"), fs::Permissions::from_mode(0o600)).unwrap();
    let as_nobody = |script: &str| as_nobody(&m.path, script);
    let out = as_nobody("echo mine > by-nobody && mkdir nobody-dir && cat by-nobody");
    assert!(out.status.success(), "{}", stderr(&out));
    let meta = fs::metadata(m.p("by-nobody")).unwrap();
    assert_eq!((meta.uid(), meta.gid()), (65534, 65534));
    assert_eq!(fs::metadata(m.p("nobody-dir")).unwrap().uid(), 65534);
    let out = as_nobody("cat root-only");
    assert!(
        !out.status.success(),
        "mode 0600 of another user must refuse"
    );
    assert!(stderr(&out).contains("Permission denied"));
    let out = as_nobody("rm root-only");
    assert!(
        !out.status.success(),
        "sticky directory protects other users' files"
    );
    m.unmount();
    let _ = BIN;
}
