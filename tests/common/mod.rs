//! Real mounts for integration tests: a volume in a temp dir, mounted by the real binary in
//! the foreground, always unmounted (also when a test panics).
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_sealfs");

pub mod gluster;
pub mod lock_counters;
pub mod powercut;
pub mod services;
pub mod xattrs;

pub struct TestVolume {
    pub dir: tempfile::TempDir,
    pub cipher: PathBuf,
    pub keys: PathBuf,
    pub mnt: PathBuf,
    /// Extra environment for every sealfs process of this volume (KMS credentials, PINs).
    pub env: Vec<(String, String)>,
}

/// Fails the calling test unless it runs as root. A test that needs root (CAP_SYS_ADMIN for an
/// allow_other mount or the bdi's read_ahead_kb, setpriv to another user) must not pass by
/// doing nothing when it cannot run: CI runs the suite as root. Without root, leave such a
/// test out by name (`cargo test -- --skip NAME`), visibly.
pub fn require_root(needs: &str) {
    assert!(
        nix::unistd::geteuid().is_root(),
        "this test needs root ({needs}); run the suite as root, as CI does, \
         or leave this test out with `-- --skip`"
    );
}

/// Runs `work` on its own thread and fails when it takes longer than `limit`: a deadlock
/// fails the test instead of hanging the suite.
/// Polls `done` every 20 ms until it holds (true) or `limit` passes (false): for what a mount
/// does in the background (a RELEASE, a look at the config), whose timing a busy machine
/// stretches. The limit is generous; the wait ends as soon as `done` holds.
pub fn wait_until(limit: Duration, mut done: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if done() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

pub fn bounded<T: Send + 'static>(limit: Duration, work: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(work());
    });
    rx.recv_timeout(limit)
        .expect("deadlock or livelock: the test did not finish in time")
}

/// Runs each job on its own thread, all at once, and returns their results in order; fails
/// when one panics or all together take longer than `limit`.
pub fn run_together<T: Send + 'static>(
    limit: Duration,
    jobs: Vec<impl FnOnce() -> T + Send + 'static>,
) -> Vec<T> {
    bounded(limit, move || {
        let threads: Vec<_> = jobs.into_iter().map(std::thread::spawn).collect();
        threads.into_iter().map(|t| t.join().unwrap()).collect()
    })
}

/// A command's stderr, as text.
pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// tests/fixtures/NAME, a frozen fixture in the source tree (copy it before writing to it).
pub fn fixture_dir(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

/// The stdout of a command that must succeed; its output in the panic message otherwise.
pub fn ok(out: Output) -> String {
    assert!(
        out.status.success(),
        "failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A copy of the frozen fixture volume tests/fixtures/NAME mounted read-only with its key.
pub fn mount_fixture(name: &str) -> (tempfile::TempDir, TestVolume, Mounted) {
    let fixture = fixture_dir(name);
    let dir = tempfile::tempdir().unwrap();
    copy_tree(&fixture, dir.path());
    let key = dir.path().join("master.key");
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    let vol = TestVolume::existing(
        tempfile::tempdir().unwrap(),
        dir.path().join("cipher"),
        dir.path().join("keys"),
    );
    let m = vol.mount_with(&["--keyfile", key.to_str().unwrap(), "-o", "ro"]);
    (dir, vol, m)
}

/// A temp dir for a test volume: under SEALFS_TEST_DIR when set (to run the suite with the
/// cipher dir on tmpfs, an overlay or a bind mount), else the system temp dir.
pub fn test_dir() -> tempfile::TempDir {
    match std::env::var_os("SEALFS_TEST_DIR") {
        Some(base) => tempfile::tempdir_in(base).unwrap(),
        None => tempfile::tempdir().unwrap(),
    }
}

pub fn sealfs(keys: &Path, args: &[&str]) -> Output {
    sealfs_env(keys, &[], args)
}

pub fn sealfs_env(keys: &Path, env: &[(String, String)], args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .env("SEALFS_KEY_DIR", keys)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .output()
        .expect("run sealfs")
}

impl TestVolume {
    pub fn new() -> Self {
        Self::with_args(&[])
    }

    pub fn with_args(extra: &[&str]) -> Self {
        Self::with_env(extra, Vec::new())
    }

    /// A volume whose cipher dir is under `base` (a filesystem of the test's choosing).
    pub fn new_in(base: &Path) -> Self {
        Self::init_in(tempfile::tempdir_in(base).unwrap(), &[], Vec::new())
    }

    pub fn with_env(extra: &[&str], env: Vec<(String, String)>) -> Self {
        Self::init_in(test_dir(), extra, env)
    }

    fn init_in(dir: tempfile::TempDir, extra: &[&str], env: Vec<(String, String)>) -> Self {
        let cipher = dir.path().join("cipher");
        let keys = dir.path().join("keys");
        let mnt = dir.path().join("mnt");
        std::fs::create_dir(&mnt).unwrap();
        let mut args = vec!["init", cipher.to_str().unwrap()];
        args.extend_from_slice(extra);
        let out = sealfs_env(&keys, &env, &args);
        assert!(
            out.status.success(),
            "init failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        TestVolume {
            dir,
            cipher,
            keys,
            mnt,
            env,
        }
    }

    /// Runs a sealfs command with this volume's environment.
    pub fn run(&self, args: &[&str]) -> Output {
        sealfs_env(&self.keys, &self.env, args)
    }

    pub fn cipher_str(&self) -> &str {
        self.cipher.to_str().unwrap()
    }

    /// A volume around an existing cipher dir (a fixture copy), with its key dir.
    pub fn existing(dir: tempfile::TempDir, cipher: PathBuf, keys: PathBuf) -> Self {
        let mnt = dir.path().join("mnt");
        std::fs::create_dir_all(&mnt).unwrap();
        TestVolume {
            dir,
            cipher,
            keys,
            mnt,
            env: Vec::new(),
        }
    }

    /// A second mount point for the same cipher dir and keys (another host, in the tests of
    /// shared mounts).
    pub fn second_mountpoint(&self) -> TestVolume {
        TestVolume::existing(
            tempfile::tempdir().unwrap(),
            self.cipher.clone(),
            self.keys.clone(),
        )
    }

    /// `sealfs fsck` of the cipher dir succeeds (nothing to report).
    pub fn assert_fsck_clean(&self) {
        let out = self.run(&["fsck", self.cipher_str()]);
        assert!(out.status.success(), "fsck: {}", stderr(&out));
    }

    pub fn mount(&self) -> Mounted {
        self.mount_with(&[])
    }

    pub fn mount_with(&self, extra: &[&str]) -> Mounted {
        Mounted::start(self, extra)
    }
}

pub struct Mounted {
    pub path: PathBuf,
    child: Option<Child>,
    log: PathBuf,
}

pub fn is_mounted(path: &Path) -> bool {
    mount_device(path).is_some()
}

/// "major:minor" of the last mount at `path`, from mountinfo.
pub fn mount_device(path: &Path) -> Option<String> {
    let target = path.to_string_lossy().to_string();
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .filter(|l| l.split(' ').nth(4) == Some(target.as_str()))
        .filter_map(|l| l.split(' ').nth(2).map(String::from))
        .next_back()
}

impl Mounted {
    fn start(vol: &TestVolume, extra: &[&str]) -> Mounted {
        let log = vol.dir.path().join(format!(
            "mount-{}.log",
            std::process::id() as u128 + Instant::now().elapsed().as_nanos()
        ));
        let logfile = std::fs::File::create(&log).unwrap();
        let path = std::fs::canonicalize(&vol.mnt).unwrap();
        let child = Command::new(BIN)
            .args(["mount", "--foreground"])
            .arg(&vol.cipher)
            .arg(&path)
            .args(extra)
            .env("SEALFS_KEY_DIR", &vol.keys)
            .env("SEALFS_LOG", "info")
            .envs(vol.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(logfile)
            .spawn()
            .unwrap();
        let mut mounted = Mounted {
            path,
            child: Some(child),
            log,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while !is_mounted(&mounted.path) {
            if let Some(status) = mounted.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("mount exited with {status}: {}", mounted.log_text());
            }
            assert!(
                Instant::now() < deadline,
                "mount did not appear: {}",
                mounted.log_text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        mounted
    }

    /// The mount daemon's process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn p(&self, rel: &str) -> PathBuf {
        self.path.join(rel)
    }

    /// Kills the daemon (SIGKILL: no unmount handling runs, as in a crash), detaches the
    /// mount and returns the daemon's log.
    pub fn kill(mut self) -> String {
        if let Some(child) = &self.child {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(child.id() as i32),
                nix::sys::signal::SIGKILL,
            );
        }
        self.stop();
        self.log_text()
    }

    /// Unmounts and returns the daemon's log.
    pub fn unmount(mut self) -> String {
        self.stop();
        self.log_text()
    }

    fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        if is_mounted(&self.path) {
            let _ = Command::new(BIN).args(["umount"]).arg(&self.path).output();
            if is_mounted(&self.path) {
                let _ = Command::new(BIN)
                    .args(["umount", "--lazy"])
                    .arg(&self.path)
                    .output();
            }
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if child.try_wait().unwrap().is_some() {
                break;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Puts `from`'s first keyslot's remotely encrypted slot key into `to`'s config: a keyslot
/// swapped between volumes, which the KMS or token must refuse under `to`'s context.
pub fn transplant_slot_key(from: &TestVolume, to: &TestVolume) {
    let slot_key = |vol: &TestVolume| {
        let conf: serde_json::Value =
            serde_json::from_slice(&std::fs::read(vol.cipher.join("sealfs.conf")).unwrap())
                .unwrap();
        conf["keyslots"][0]["encrypted_slot_key"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let conf_path = to.cipher.join("sealfs.conf");
    let text = std::fs::read_to_string(&conf_path)
        .unwrap()
        .replace(&slot_key(to), &slot_key(from));
    std::fs::remove_file(&conf_path).unwrap();
    std::fs::write(&conf_path, text).unwrap();
}

/// Every regular file under `dir`, recursively.
pub fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            let t = e.file_type().unwrap();
            if t.is_dir() {
                stack.push(e.path());
            } else if t.is_file() {
                out.push(e.path());
            }
        }
    }
    out
}

/// Puts directory `dir` (a plaintext path from the volume's root, made already) under a new key
/// policy labelled `label`, whose tenant key file `key` is made here; the volume unmounted.
pub fn set_keyfile_policy(vol: &TestVolume, dir: &str, key: &Path, label: &str) {
    ok(vol.run(&[
        "policy",
        "set",
        vol.cipher_str(),
        dir,
        "--keyfile",
        key.to_str().unwrap(),
        "--label",
        label,
    ]));
}

/// Copies a fixture tree (files, directories, symlinks).
pub fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let (src, dst) = (e.path(), to.join(e.file_name()));
        let t = e.file_type().unwrap();
        if t.is_dir() {
            copy_tree(&src, &dst);
        } else if t.is_symlink() {
            std::os::unix::fs::symlink(std::fs::read_link(&src).unwrap(), &dst).unwrap();
        } else {
            std::fs::copy(&src, &dst).unwrap();
        }
    }
}

/// A small deterministic generator, so failing seeds can be replayed.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// The volume behind `vol`, opened with its key file (for tests that look at backing files).
pub fn open_volume(vol: &TestVolume) -> sealfs::volume::Volume {
    use sealfs::keys::{KeyfileProvider, MasterKeyProvider};
    let config = sealfs::volume::Volume::read_config(&vol.cipher).unwrap();
    let key = vol.keys.join(format!("{}.key", config.volume_id));
    let provider: Box<dyn MasterKeyProvider> = Box::new(KeyfileProvider::load(&key).unwrap());
    sealfs::volume::Volume::open(&vol.cipher, vec![provider], Default::default()).unwrap()
}

/// The backing path of a plaintext path (components separated by '/').
pub fn backing(volume: &sealfs::volume::Volume, plain: &str) -> PathBuf {
    let mut path = volume.path.clone();
    for part in plain.split('/') {
        path.push(
            volume
                .encrypt_name(std::ffi::OsStr::new(part))
                .unwrap()
                .entry(),
        );
    }
    path
}

/// Holds the directory lock of backing directory `backing_dir` of the cipher dir `cipher` the
/// way `policy set` does (an OFD write lock on its byte of `sealfs.maintenance`), until dropped.
pub fn hold_directory_lock(cipher: &Path, backing_dir: &Path) -> std::fs::File {
    use std::os::unix::fs::MetadataExt;
    let ino = std::fs::metadata(backing_dir).unwrap().ino();
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(cipher.join("sealfs.maintenance"))
        .unwrap();
    let lock = libc::flock {
        l_type: libc::F_WRLCK as i16,
        l_whence: libc::SEEK_SET as i16,
        l_start: sealfs::coord::maintenance::directory_lock_byte(ino),
        l_len: 1,
        l_pid: 0,
    };
    let rc = unsafe {
        libc::fcntl(
            std::os::fd::AsRawFd::as_raw_fd(&file),
            libc::F_OFD_SETLKW,
            &lock,
        )
    };
    assert_eq!(rc, 0, "F_OFD_SETLKW: {}", std::io::Error::last_os_error());
    file
}

/// The one directory of cipher dir `cipher` that is not sealfs's own (a volume holding one).
pub fn only_backing_dir(cipher: &Path) -> PathBuf {
    std::fs::read_dir(cipher)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| {
            p.is_dir()
                && !p
                    .file_name()
                    .unwrap()
                    .to_string_lossy()
                    .starts_with("sealfs.")
        })
        .unwrap()
}
