//! Key hygiene and resource bounds: no core dumps of the daemon, no key bytes in any log at the
//! most verbose level, and a full backing disk gives the writer ENOSPC and leaves every other
//! file intact.

mod common;

use std::fs;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::process::Command;

use base64::Engine;
use common::{BIN, TestVolume};

fn encodings(key: &[u8]) -> Vec<String> {
    let hex: String = key.iter().map(|b| format!("{b:02x}")).collect();
    vec![
        hex.clone(),
        hex.to_uppercase(),
        base64::engine::general_purpose::STANDARD.encode(key),
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(key),
        format!("{key:?}"),
    ]
}

#[test]
fn no_core_dumps_and_no_key_bytes_in_logs_at_trace_level() {
    let passfile = tempfile::NamedTempFile::new().unwrap();
    fs::write(passfile.path(), "hunter2-but-longer\n").unwrap();
    let trace = vec![("SEALFS_LOG".to_string(), "trace".to_string())];
    let vol = TestVolume::with_env(&[], trace.clone());
    let key_path = fs::read_dir(&vol.keys)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let key = fs::read(&key_path).unwrap();
    let out = vol.run(&[
        "key",
        "add",
        vol.cipher_str(),
        "--passfile",
        passfile.path().to_str().unwrap(),
        "-v",
    ]);
    let mut logs = String::from_utf8_lossy(&out.stderr).into_owned();
    let m = vol.mount();
    let limits = fs::read_to_string(format!("/proc/{}/limits", m.pid())).unwrap();
    let core = limits
        .lines()
        .find(|l| l.starts_with("Max core file size"))
        .unwrap();
    assert!(
        core.split_whitespace().nth(4) == Some("0"),
        "core dumps are off: {core}"
    );
    for i in 0..20 {
        fs::write(m.p(&format!("f{i}")), vec![i as u8; 10_000]).unwrap();
    }
    std::os::unix::fs::symlink("f1", m.p("link")).unwrap();
    let mut f = fs::OpenOptions::new().append(true).open(m.p("f2")).unwrap();
    f.write_all(b"more").unwrap();
    f.sync_all().unwrap();
    drop(f);
    fs::rename(m.p("f3"), m.p("renamed")).unwrap();
    let _ = fs::read(m.p("f4")).unwrap();
    for command in [
        vec!["rotate", vol.cipher_str(), "-v"],
        vec!["rewrap", vol.cipher_str(), "-v"],
        vec!["fsck", vol.cipher_str(), "-v"],
        vec!["audit", "verify", vol.cipher_str(), "-v"],
    ] {
        let out = vol.run(&command);
        logs.push_str(&String::from_utf8_lossy(&out.stdout));
        logs.push_str(&String::from_utf8_lossy(&out.stderr));
    }
    logs.push_str(&m.unmount());
    logs.push_str(&fs::read_to_string(vol.cipher.join("sealfs.audit")).unwrap());
    assert!(
        logs.contains("TRACE") || logs.contains("DEBUG"),
        "logs are verbose"
    );
    for needle in encodings(&key).into_iter().chain(["hunter2".to_string()]) {
        assert!(
            !logs.contains(&needle),
            "key material in the logs: {needle}"
        );
    }
    assert!(!logs.as_bytes().windows(32).any(|w| w == key.as_slice()));
}

/// A tmpfs of a few MiB as the backing store, mounted for the test and always unmounted.
struct SmallDisk(std::path::PathBuf);

impl SmallDisk {
    fn new(dir: &std::path::Path, size: &str) -> SmallDisk {
        let path = dir.join("small-disk");
        fs::create_dir_all(&path).unwrap();
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&path)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        SmallDisk(path)
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).output();
    }
}

#[test]
fn full_backing_disk_gives_enospc_and_keeps_other_files() {
    let dir = tempfile::tempdir().unwrap();
    let disk = SmallDisk::new(dir.path(), "6m");
    let keys = dir.path().join("keys");
    let cipher = disk.0.join("vol");
    let out = Command::new(BIN)
        .args(["init"])
        .arg(&cipher)
        .env("SEALFS_KEY_DIR", &keys)
        .output()
        .unwrap();
    assert!(out.status.success());
    let vol = TestVolume::existing(tempfile::tempdir().unwrap(), cipher.clone(), keys);
    let m = vol.mount();
    let keep: Vec<(String, Vec<u8>)> = (0..10)
        .map(|i| (format!("keep{i}"), vec![b'a' + i as u8; 50_000 + i * 1000]))
        .collect();
    for (name, data) in &keep {
        let mut f = fs::File::create(m.p(name)).unwrap();
        f.write_all(data).unwrap();
        f.sync_all().unwrap();
    }
    // Fill the disk: the error must be ENOSPC, from write, fsync or close, never EIO.
    let mut big = fs::File::create(m.p("big")).unwrap();
    let chunk = vec![0x5a; 256 * 1024];
    let mut error = None;
    for _ in 0..100 {
        if let Err(e) = big.write_all(&chunk) {
            error = Some(e);
            break;
        }
    }
    if error.is_none() {
        error = big.sync_all().err();
    }
    drop(big);
    let error = error.expect("a 6 MiB disk cannot take 25 MiB");
    assert_eq!(error.raw_os_error(), Some(libc::ENOSPC), "{error}");
    // Creating more files also fails cleanly while full.
    let more = fs::write(m.p("more"), vec![1u8; 200_000]);
    if let Err(e) = &more {
        assert_eq!(e.raw_os_error(), Some(libc::ENOSPC), "{e}");
    }
    for (name, data) in &keep {
        assert_eq!(
            &fs::read(m.p(name)).unwrap(),
            data,
            "{name} intact while full"
        );
    }
    // The writes that failed appended blocks: they were cut back, not left torn, so the
    // volume checks clean while the disk is still full.
    drop(m);
    let fsck = vol.run(&["fsck", vol.cipher_str()]);
    assert_eq!(
        fsck.status.code(),
        Some(0),
        "writes that failed on a full disk left damage: {}",
        String::from_utf8_lossy(&fsck.stdout)
    );
    let m = vol.mount();
    fs::remove_file(m.p("big")).unwrap();
    let _ = fs::remove_file(m.p("more"));
    fs::write(m.p("after"), b"space again").unwrap();
    drop(m);
    let m = vol.mount();
    for (name, data) in &keep {
        assert_eq!(
            &fs::read(m.p(name)).unwrap(),
            data,
            "{name} intact after remount"
        );
    }
    assert_eq!(fs::read(m.p("after")).unwrap(), b"space again");
    drop(m);
    let fsck = vol.run(&["fsck", vol.cipher_str()]);
    assert_eq!(
        fsck.status.code(),
        Some(0),
        "a disk that ran full leaves no damage: {}",
        String::from_utf8_lossy(&fsck.stdout)
    );
    let _ = fs::set_permissions(&cipher, fs::Permissions::from_mode(0o755));
}

#[test]
fn fd_use_stays_bounded_on_a_tree_bigger_than_the_fd_limit() {
    use std::os::unix::process::CommandExt;
    const LIMIT: u64 = 1024;
    const FILES: usize = 4000;
    let vol = TestVolume::new();
    let mnt = fs::canonicalize(&vol.mnt).unwrap();
    let mut command = Command::new(BIN);
    command
        .args(["mount", "--foreground"])
        .arg(&vol.cipher)
        .arg(&mnt)
        .env("SEALFS_KEY_DIR", &vol.keys)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    // SAFETY: only setrlimit, async-signal-safe, between fork and exec.
    unsafe {
        command.pre_exec(|| {
            let limit = libc::rlimit {
                rlim_cur: LIMIT,
                rlim_max: LIMIT,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut daemon = command.spawn().unwrap();
    struct Stop<'a>(&'a std::path::Path, &'a mut std::process::Child);
    impl Drop for Stop<'_> {
        fn drop(&mut self) {
            let _ = Command::new(BIN).arg("umount").arg(self.0).output();
            if common::is_mounted(self.0) {
                let _ = Command::new(BIN)
                    .args(["umount", "--lazy"])
                    .arg(self.0)
                    .output();
            }
            let _ = self.1.wait();
        }
    }
    let pid = daemon.id();
    let _stop = Stop(&mnt, &mut daemon);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while !common::is_mounted(&mnt) {
        assert!(std::time::Instant::now() < deadline, "mount did not appear");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let limits = fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let soft: u64 = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .and_then(|l| l.split_whitespace().nth(3))
        .and_then(|v| v.parse().ok())
        .unwrap();
    let fds = || fs::read_dir(format!("/proc/{pid}/fd")).unwrap().count();
    let mut most = 0;
    for d in 0..10 {
        fs::create_dir(mnt.join(format!("d{d}"))).unwrap();
    }
    for i in 0..FILES {
        fs::write(mnt.join(format!("d{}/f{i}", i % 10)), i.to_string())
            .unwrap_or_else(|e| panic!("file {i} of {FILES} (fd limit {soft}): {e}"));
        if i % 100 == 0 {
            most = most.max(fds());
        }
    }
    // A second walk: lookups of everything, with the kernel's cache full.
    for i in 0..FILES {
        assert_eq!(
            fs::read_to_string(mnt.join(format!("d{}/f{i}", i % 10))).unwrap(),
            i.to_string()
        );
    }
    most = most.max(fds());
    assert!(
        (most as u64) < soft,
        "the daemon held {most} fds with a limit of {soft}"
    );
    eprintln!("fd limit {soft}, {FILES} files: at most {most} fds held");
}
