//! A GlusterFS volume for tests: Debian's glusterfs-server (installed by .ci/setup), glusterd
//! started here if it is not running (no systemd on these machines), one brick in a temporary
//! directory, and several FUSE clients of it, each standing for one host. Stopped, deleted and
//! unmounted when dropped.

use std::path::PathBuf;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

pub struct GlusterFs {
    pub dir: tempfile::TempDir,
    pub volume: String,
    pub mounts: Vec<PathBuf>,
}

fn gluster(args: &[&str]) -> Output {
    Command::new("gluster")
        .arg("--mode=script")
        .args(args)
        .output()
        .expect("gluster (glusterfs-server; run .ci/setup)")
}

fn host() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .unwrap()
        .trim()
        .to_string()
}

/// glusterd, started if it is not running, and answering. Tests of one binary run in parallel:
/// the first to get here starts it, the others wait for it (two starting at once lose a race
/// for glusterd's port and pid file, and the loser exits non-zero while the winner serves).
fn glusterd() {
    static STARTED: std::sync::Mutex<bool> = std::sync::Mutex::new(false);
    let mut started = STARTED.lock().unwrap_or_else(|e| e.into_inner());
    if *started {
        return;
    }
    let running = Command::new("pgrep")
        .args(["-x", "glusterd"])
        .status()
        .is_ok_and(|s| s.success());
    let launch = if running {
        None
    } else {
        Some(
            Command::new("glusterd")
                .output()
                .expect("glusterd (glusterfs-server; run .ci/setup)"),
        )
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    while !gluster(&["volume", "list"]).status.success() {
        assert!(
            Instant::now() < deadline,
            "glusterd does not answer (its start: {:?})",
            launch.as_ref().map(|o| (o.status, super::stderr(o)))
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    *started = true;
}

/// The client caching translators, off (the options `sealfs mount -o shared` asks for).
pub const CACHES_OFF: [&str; 7] = [
    "performance.write-behind",
    "performance.read-ahead",
    "performance.io-cache",
    "performance.quick-read",
    "performance.stat-prefetch",
    "performance.open-behind",
    "performance.readdir-ahead",
];

impl GlusterFs {
    /// A new volume with `clients` mounts; `off`: volume options set off before they mount.
    pub fn start(clients: usize, off: &[&str]) -> GlusterFs {
        glusterd();
        let dir = tempfile::tempdir().unwrap();
        let volume = format!(
            "sealfs{}x{}",
            std::process::id(),
            dir.path()
                .file_name()
                .unwrap()
                .to_string_lossy()
                .replace('.', "")
        );
        let brick = format!("{}:{}", host(), dir.path().join("brick").display());
        let out = gluster(&["volume", "create", &volume, &brick, "force"]);
        assert!(
            out.status.success(),
            "volume create: {}",
            super::stderr(&out)
        );
        let mut fs = GlusterFs {
            dir,
            volume,
            mounts: Vec::new(),
        };
        for option in off {
            let out = gluster(&["volume", "set", &fs.volume, option, "off"]);
            assert!(out.status.success(), "volume set: {}", super::stderr(&out));
        }
        let out = gluster(&["volume", "start", &fs.volume]);
        assert!(
            out.status.success(),
            "volume start: {}",
            super::stderr(&out)
        );
        for i in 0..clients {
            let mnt = fs.dir.path().join(format!("client{i}"));
            std::fs::create_dir(&mnt).unwrap();
            let source = format!("{}:/{}", host(), fs.volume);
            let out = Command::new("mount")
                .args(["-t", "glusterfs", &source])
                .arg(&mnt)
                .output()
                .unwrap();
            assert!(out.status.success(), "mount: {}", super::stderr(&out));
            let deadline = Instant::now() + Duration::from_secs(30);
            while !super::is_mounted(&mnt) {
                assert!(Instant::now() < deadline, "glusterfs mount did not appear");
                std::thread::sleep(Duration::from_millis(50));
            }
            fs.mounts.push(mnt);
        }
        fs
    }
}

impl Drop for GlusterFs {
    fn drop(&mut self) {
        for mnt in &self.mounts {
            let done = Command::new("umount").arg(mnt).status();
            if !matches!(done, Ok(s) if s.success()) {
                let _ = Command::new("umount").arg("-l").arg(mnt).status();
            }
        }
        let _ = gluster(&["volume", "stop", &self.volume, "force"]);
        let _ = gluster(&["volume", "delete", &self.volume]);
    }
}
