//! The sqlite workloads of tests/powercut.rs: Python's sqlite3 inserting one row per
//! transaction (WAL or rollback journal), and the check of a crash state.

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};

#[derive(Clone, Copy, Debug)]
pub enum Journal {
    Wal,
    Rollback,
}

/// The Python side of the sqlite workloads: reads a row number per line, inserts that row in a
/// transaction of its own, and prints the number once committed.
const SQLITE_WORKLOAD: &str = r#"
import hashlib, sqlite3, sys
def payload(n):
    return hashlib.sha256(b"%d" % n).digest() * (4 + n % 60)
db = sqlite3.connect(sys.argv[1], isolation_level=None)
if sys.argv[2] == "wal":
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")
    db.execute("PRAGMA wal_autocheckpoint=16")
db.execute("CREATE TABLE IF NOT EXISTS t(id INTEGER PRIMARY KEY, payload BLOB NOT NULL)")
print("ready", flush=True)
for line in sys.stdin:
    n = int(line)
    db.execute("BEGIN")
    db.execute("INSERT INTO t(id, payload) VALUES (?, ?)", (n, payload(n)))
    db.execute("COMMIT")
    print(n, flush=True)
"#;

/// The check of a crash state: prints the rows of 1..=n missing or wrong, or why the database
/// failed (it must open, pass integrity_check and take a new row).
const SQLITE_CHECK: &str = r#"
import hashlib, sqlite3, sys
def payload(n):
    return hashlib.sha256(b"%d" % n).digest() * (4 + n % 60)
n = int(sys.argv[2])
try:
    db = sqlite3.connect(sys.argv[1], isolation_level=None)
    integrity = db.execute("PRAGMA integrity_check").fetchall()
    if integrity != [("ok",)]:
        print("failed: integrity_check:", integrity)
        sys.exit()
    db.execute("CREATE TABLE IF NOT EXISTS t(id INTEGER PRIMARY KEY, payload BLOB NOT NULL)")
    rows = dict(db.execute("SELECT id, payload FROM t WHERE id <= ?", (n,)).fetchall())
    lost = sum(1 for i in range(1, n + 1) if rows.get(i) != payload(i))
    db.execute("INSERT INTO t(payload) VALUES (?)", (payload(0),))
    print("lost", lost)
except Exception as e:
    print("failed:", repr(e))
"#;

pub struct Sqlite {
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: BufReader<ChildStdout>,
}

impl Sqlite {
    pub fn start(db: &Path, journal: Journal) -> Sqlite {
        let mode = match journal {
            Journal::Wal => "wal",
            Journal::Rollback => "rollback",
        };
        let mut child = Command::new("python3")
            .args(["-c", SQLITE_WORKLOAD])
            .arg(db)
            .arg(mode)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let stdin = child.stdin.take();
        let stdout = BufReader::new(child.stdout.take().unwrap());
        let mut db = Sqlite {
            child,
            stdin,
            stdout,
        };
        assert_eq!(db.line(), "ready");
        db
    }

    fn line(&mut self) -> String {
        let mut line = String::new();
        self.stdout.read_line(&mut line).unwrap();
        line.trim_end().to_string()
    }

    /// Inserts row `n`; returns once it is committed.
    pub fn insert(&mut self, n: u64) {
        writeln!(self.stdin.as_ref().unwrap(), "{n}").unwrap();
        assert_eq!(self.line(), n.to_string(), "commit of row {n}");
    }

    pub fn finish(mut self) {
        drop(self.stdin.take());
        assert!(self.child.wait().unwrap().success());
    }

    /// Rows of 1..=n lost, and whether the database failed.
    pub fn verify(db: &Path, n: u64) -> (u64, bool) {
        let out = Command::new("python3")
            .args(["-c", SQLITE_CHECK])
            .arg(db)
            .arg(n.to_string())
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        match text.trim().strip_prefix("lost ") {
            Some(lost) => (lost.parse().unwrap(), false),
            None => {
                eprintln!(
                    "sqlite failed: {text}{}",
                    String::from_utf8_lossy(&out.stderr)
                );
                (0, true)
            }
        }
    }
}
