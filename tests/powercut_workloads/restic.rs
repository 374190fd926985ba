//! The restic workload of tests/powercut.rs: a repository on the mount, and a source tree on
//! the plain disk that grows and changes between backups. A backup counts as acknowledged once
//! `restic backup` exited 0; a crash state must give a repository that `restic check
//! --read-data` (every pack read and its hashes checked) finds sound, once `restic unlock`
//! removed the stale lock of the backup the crash cut, holding every acknowledged snapshot.

use std::fs;
use std::path::Path;
use std::process::{Command, Output};

use crate::common::Rng;

const PASSWORD: &str = "powercut";

fn restic(repo: &Path, args: &[&str]) -> Output {
    Command::new("restic")
        .env("RESTIC_PASSWORD", PASSWORD)
        .arg("--no-cache")
        .arg("--repo")
        .arg(repo)
        .args(args)
        .output()
        .expect("restic (Debian package restic, installed by .ci/setup)")
}

fn ok(out: &Output, what: &str) {
    assert!(
        out.status.success(),
        "restic {what}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Runs `steps` backups into `root/repo`; `ack` gets the number of snapshots after `restic
/// init` (0) and after each backup.
pub fn run(root: &Path, rng: &mut Rng, steps: u64, mut ack: impl FnMut(u64)) {
    let repo = root.join("repo");
    ok(&restic(&repo, &["init"]), "init");
    ack(0);
    let source = tempfile::tempdir().unwrap();
    for n in 1..=steps {
        let len = 1 + rng.below(300 << 10) as usize;
        let bytes: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
        fs::write(source.path().join(format!("f{n}")), bytes).unwrap();
        if n > 1 {
            // A file backed up before changes in place.
            let old = source.path().join(format!("f{}", 1 + rng.below(n - 1)));
            let mut data = fs::read(&old).unwrap();
            let at = rng.below(data.len() as u64) as usize;
            data[at] ^= 0x55;
            fs::write(&old, data).unwrap();
        }
        let src = source.path().to_str().unwrap();
        ok(
            &restic(&repo, &["backup", "--host", "powercut", src]),
            "backup",
        );
        ack(n);
    }
}

/// Checks the repository at `root/repo` after a crash, `acked` snapshots acknowledged (`None`:
/// not even the repository was): the snapshots lost, and whether restic failed on it.
pub fn check(root: &Path, acked: Option<u64>) -> (u64, bool) {
    let Some(acked) = acked else {
        return (0, false);
    };
    let repo = root.join("repo");
    // The lock of the backup the crash cut is stale: `restic unlock` removes it, as after a
    // crash on any filesystem.
    let unlocked = restic(&repo, &["unlock"]);
    if !unlocked.status.success() {
        eprintln!(
            "restic unlock failed: {}",
            String::from_utf8_lossy(&unlocked.stderr)
        );
        return (0, true);
    }
    let checked = restic(&repo, &["check", "--read-data"]);
    if !checked.status.success() {
        eprintln!(
            "restic check failed: {}{}",
            String::from_utf8_lossy(&checked.stdout),
            String::from_utf8_lossy(&checked.stderr)
        );
        return (0, true);
    }
    let listed = restic(&repo, &["snapshots", "--json"]);
    let Ok(snapshots) = serde_json::from_slice::<serde_json::Value>(&listed.stdout) else {
        eprintln!(
            "restic snapshots: {}",
            String::from_utf8_lossy(&listed.stderr)
        );
        return (0, true);
    };
    let found = snapshots.as_array().map_or(0, |s| s.len() as u64);
    (acked.saturating_sub(found), false)
}
