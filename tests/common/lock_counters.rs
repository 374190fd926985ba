//! Programs that coordinate through file locks, for the tests of shared mounts: a counter
//! kept in a locked file, and sqlite in rollback-journal mode, each run as one process per
//! mount (another host), through Python's standard library.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

/// Counts to `rounds` in the file at `path`, one locked read-increment-write per round,
/// keeping the file open throughout (sqlite's pattern: what is cached must not outlive the
/// lock). `kind`: flock or lockf (fcntl), or sqlite (a row and a counter per transaction).
pub const COUNTER: &str = r#"
import fcntl, os, sqlite3, sys
path, kind, rounds = sys.argv[1], sys.argv[2], int(sys.argv[3])
if kind == "sqlite":
    db = sqlite3.connect(path, timeout=120, isolation_level=None)
    db.execute("PRAGMA journal_mode=DELETE")
    for _ in range(rounds):
        db.execute("BEGIN IMMEDIATE")
        (v,) = db.execute("SELECT v FROM counter").fetchone()
        db.execute("UPDATE counter SET v = ?", (v + 1,))
        db.execute("INSERT INTO seen(pid, v) VALUES (?, ?)", (os.getpid(), v))
        db.execute("COMMIT")
    sys.exit(0)
fd = os.open(path, os.O_RDWR)
lock = fcntl.flock if kind == "flock" else fcntl.lockf
for _ in range(rounds):
    lock(fd, fcntl.LOCK_EX)
    v = int(os.pread(fd, 20, 0))
    os.pwrite(fd, b"%020d" % (v + 1), 0)
    lock(fd, fcntl.LOCK_UN)
"#;

/// Runs the counter on every path at once (one process each) and waits for all.
pub fn run_counters(paths: &[&Path], kind: &str, rounds: usize) {
    let children: Vec<_> = paths
        .iter()
        .map(|path| {
            Command::new(super::services::python())
                .args(["-c", COUNTER])
                .arg(path)
                .args([kind, &rounds.to_string()])
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for child in children {
        let out = super::bounded(Duration::from_secs(300), move || {
            child.wait_with_output().unwrap()
        });
        assert!(out.status.success(), "{kind}: {}", super::stderr(&out));
    }
}

/// A database with a counter at 0 and a table of the values each transaction saw (UNIQUE: two
/// transactions reading one value fail the insert).
pub fn sqlite_setup(db: &Path) {
    let setup = Command::new(super::services::python())
        .args([
            "-c",
            "import sqlite3, sys; db = sqlite3.connect(sys.argv[1]); \
             db.executescript('CREATE TABLE counter(v); INSERT INTO counter VALUES (0); \
             CREATE TABLE seen(pid, v UNIQUE);'); db.commit()",
        ])
        .arg(db)
        .output()
        .unwrap();
    assert!(setup.status.success(), "{}", super::stderr(&setup));
}

/// "INTEGRITY COUNTER (ROWS, WRITERS)": `ok 2N (2N, 2)` after two writers' N transactions each.
pub fn sqlite_report(db: &Path) -> String {
    let check = Command::new(super::services::python())
        .args([
            "-c",
            "import sqlite3, sys; db = sqlite3.connect(sys.argv[1]); \
             print(db.execute('PRAGMA integrity_check').fetchone()[0], \
             db.execute('SELECT v FROM counter').fetchone()[0], \
             db.execute('SELECT count(*), count(DISTINCT pid) FROM seen').fetchone())",
        ])
        .arg(db)
        .output()
        .unwrap();
    assert!(check.status.success(), "{}", super::stderr(&check));
    String::from_utf8_lossy(&check.stdout).trim().to_string()
}
