//! How an admin mounts: the mount(8) helper with fstab-style options, a TOML settings file
//! with command-line precedence, systemd credentials and readiness notification.

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{BIN, TestVolume, is_mounted, ok};

/// Unmounts a daemonized mount when dropped, also when the test fails.
struct Unmount(PathBuf);

impl Drop for Unmount {
    fn drop(&mut self) {
        if is_mounted(&self.0) {
            let _ = Command::new(BIN).arg("umount").arg(&self.0).output();
        }
        if is_mounted(&self.0) {
            let _ = Command::new(BIN)
                .args(["umount", "--lazy"])
                .arg(&self.0)
                .output();
        }
    }
}

fn key_of(vol: &TestVolume) -> PathBuf {
    fs::read_dir(&vol.keys)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path()
}

fn helper() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("packaging/mount.fuse.sealfs")
}

fn wait_unmounted(path: &Path) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while is_mounted(path) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn fstab_helper_mounts_and_unmounts() {
    let vol = TestVolume::new();
    let mnt = fs::canonicalize(&vol.mnt).unwrap();
    let key = key_of(&vol);
    // What mount(8) runs for the fstab line
    //   CIPHER MNT fuse.sealfs noauto,_netdev,allow_other,keyfile=KEY,x-systemd.requires=... 0 0
    let out = Command::new(helper())
        .arg(&vol.cipher)
        .arg(&mnt)
        .arg("-n")
        .arg("-o")
        .arg(format!(
            "rw,noauto,_netdev,allow_other,nofail,keyfile={},x-systemd.requires=network-online.target",
            key.display()
        ))
        .env("SEALFS_BIN", BIN)
        .env("SEALFS_KEY_DIR", vol.dir.path().join("no-default-key"))
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let _guard = Unmount(mnt.clone());
    ok(out);
    assert!(is_mounted(&mnt), "the helper returns once mounted");
    fs::write(mnt.join("f"), b"through fstab").unwrap();
    assert_eq!(fs::read(mnt.join("f")).unwrap(), b"through fstab");
    ok(Command::new(BIN).arg("umount").arg(&mnt).output().unwrap());
    wait_unmounted(&mnt);
    assert!(!is_mounted(&mnt));

    // A fake mount (-f) does nothing; a read-only fstab mount refuses writes.
    ok(Command::new(helper())
        .arg(&vol.cipher)
        .arg(&mnt)
        .args(["-f", "-o", "ro"])
        .env("SEALFS_BIN", BIN)
        .output()
        .unwrap());
    assert!(!is_mounted(&mnt));
    ok(Command::new(helper())
        .arg(&vol.cipher)
        .arg(&mnt)
        .arg("-o")
        .arg(format!("ro,keyfile={}", key.display()))
        .env("SEALFS_BIN", BIN)
        .output()
        .unwrap());
    assert_eq!(fs::read(mnt.join("f")).unwrap(), b"through fstab");
    assert!(fs::write(mnt.join("g"), b"x").is_err());
}

#[test]
fn settings_file_with_command_line_precedence_and_systemd_credentials() {
    let vol = TestVolume::new();
    let mnt = fs::canonicalize(&vol.mnt).unwrap();
    let key = key_of(&vol);
    let wrong = vol.dir.path().join("wrong.key");
    fs::write(&wrong, [7u8; 32]).unwrap();
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(&wrong, fs::Permissions::from_mode(0o600)).unwrap();
    let settings = vol.dir.path().join("vol.toml");
    fs::write(
        &settings,
        format!(
            "cipher_dir = {:?}\nmountpoint = {:?}\noptions = [\"noatime\"]\nthreads = 2\n[keys]\nkeyfile = {:?}\n[cache]\nentries = 10\n",
            vol.cipher, mnt, wrong
        ),
    )
    .unwrap();
    let no_default = vol.dir.path().join("no-default-key");
    let sealfs = |args: &[&str]| {
        Command::new(BIN)
            .args(args)
            .env("SEALFS_KEY_DIR", &no_default)
            .stdin(Stdio::null())
            .output()
            .unwrap()
    };
    let _guard = Unmount(mnt.clone());
    let settings_arg = settings.to_str().unwrap();
    // The file's key is wrong: refused. The command line's key wins over the file's.
    let refused = sealfs(&["mount", "--config", settings_arg]);
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("wrong key"));
    ok(sealfs(&[
        "mount",
        "--config",
        settings_arg,
        "--keyfile",
        key.to_str().unwrap(),
    ]));
    assert!(is_mounted(&mnt));
    fs::write(mnt.join("a"), b"settings").unwrap();
    ok(sealfs(&["umount", "--config", settings_arg]));
    wait_unmounted(&mnt);
    assert!(!is_mounted(&mnt));
    // Typos are errors, not silent defaults.
    let typo = vol.dir.path().join("typo.toml");
    fs::write(
        &typo,
        "cipher_dir = \"/x\"\nmountpoint = \"/y\"\nthread = 2\n",
    )
    .unwrap();
    let out = sealfs(&["mount", "--config", typo.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown field"));

    // As under systemd: the key as a credential, readiness on NOTIFY_SOCKET.
    let no_key_settings = vol.dir.path().join("unit.toml");
    fs::write(
        &no_key_settings,
        format!("cipher_dir = {:?}\nmountpoint = {:?}\n", vol.cipher, mnt),
    )
    .unwrap();
    let credentials = vol.dir.path().join("credentials");
    fs::create_dir(&credentials).unwrap();
    fs::copy(&key, credentials.join("keyfile")).unwrap();
    let notify_path = vol.dir.path().join("notify.sock");
    let notify = std::os::unix::net::UnixDatagram::bind(&notify_path).unwrap();
    notify
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let mut daemon = Command::new(BIN)
        .args(["mount", "--foreground", "--config"])
        .arg(&no_key_settings)
        .env("SEALFS_KEY_DIR", &no_default)
        .env("CREDENTIALS_DIRECTORY", &credentials)
        .env("NOTIFY_SOCKET", &notify_path)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut buf = [0u8; 64];
    let n = notify.recv(&mut buf).expect("READY=1 from the mount");
    assert_eq!(&buf[..n], b"READY=1");
    assert!(is_mounted(&mnt), "ready means mounted");
    assert_eq!(fs::read(mnt.join("a")).unwrap(), b"settings");
    // The kernel may still hold the file just read for a moment (seen once in CI as EBUSY).
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let out = sealfs(&["umount", "--config", no_key_settings.to_str().unwrap()]);
        if out.status.success() {
            break;
        }
        let busy = String::from_utf8_lossy(&out.stderr).contains("busy");
        assert!(busy && Instant::now() < deadline, "umount: {out:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while daemon.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "the daemon exits after umount");
        std::thread::sleep(Duration::from_millis(20));
    }
}
