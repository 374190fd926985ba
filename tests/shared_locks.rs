//! flock(2) and fcntl(2) locks on shared mounts exclude each other across mounts (as across
//! hosts: the locks are forwarded to the backing files), so that programs coordinating
//! through them work from several mounts: counters kept in a locked file, and sqlite in
//! rollback-journal mode, from one process per mount. Two mounts of a local cipher dir take the
//! same path as two hosts (tests/juicefs.rs runs a counter across two JuiceFS clients).

mod common;

use std::fs;
use std::os::fd::AsFd;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::TestVolume;
use common::lock_counters::{run_counters, sqlite_report, sqlite_setup};
use nix::fcntl::{Flock, FlockArg};

fn shared_pair(vol: &TestVolume) -> (common::Mounted, TestVolume, common::Mounted) {
    let other = vol.second_mountpoint();
    let a = vol.mount_with(&["-o", "shared"]);
    let b = other.mount_with(&["-o", "shared"]);
    (a, other, b)
}

#[test]
fn flock_and_fcntl_counters_from_two_shared_mounts_lose_no_increment() {
    const ROUNDS: usize = 150;
    let vol = TestVolume::new();
    let (a, _other, b) = shared_pair(&vol);
    for kind in ["flock", "lockf"] {
        let name = format!("counter-{kind}");
        fs::write(a.p(&name), format!("{:020}", 0)).unwrap();
        run_counters(&[&a.p(&name), &b.p(&name)], kind, ROUNDS);
        let count: usize = fs::read_to_string(b.p(&name)).unwrap().parse().unwrap();
        assert_eq!(count, 2 * ROUNDS, "{kind}: every locked increment kept");
    }
    a.unmount();
    b.unmount();
    vol.assert_fsck_clean();
}

#[test]
fn sqlite_from_two_shared_mounts_keeps_every_transaction() {
    const ROUNDS: usize = 60;
    let vol = TestVolume::new();
    let (a, _other, b) = shared_pair(&vol);
    let db = a.p("app.db");
    sqlite_setup(&db);
    run_counters(&[&db, &b.p("app.db")], "sqlite", ROUNDS);
    // Every transaction saw the one before it: the counter, and a row per distinct value
    // (UNIQUE: two transactions reading one value would have failed the insert).
    assert_eq!(
        sqlite_report(&b.p("app.db")),
        format!("ok {} ({}, 2)", 2 * ROUNDS, 2 * ROUNDS)
    );
    a.unmount();
    b.unmount();
    vol.assert_fsck_clean();
}

/// The lock calls themselves, from this process (flock locks belong to the open file, so two
/// descriptors of one process exclude each other): non-blocking refusals, byte ranges, F_GETLK
/// naming the holder's range, a blocked wait that ends when the holder lets go, and locks going
/// with the descriptor that held them.
#[test]
fn locks_exclude_across_shared_mounts_and_go_with_their_holder() {
    let vol = TestVolume::new();
    let (a, _other, b) = shared_pair(&vol);
    fs::write(a.p("f"), b"data").unwrap();
    let open = |path: &Path| {
        fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .unwrap()
    };

    // flock: exclusive on one mount refuses the other, and a waiter gets it once released.
    let held = Flock::lock(open(&a.p("f")), FlockArg::LockExclusive).unwrap();
    let Err((_, errno)) = Flock::lock(open(&b.p("f")), FlockArg::LockSharedNonblock) else {
        panic!("a shared flock was granted against an exclusive one on the other mount");
    };
    assert_eq!(errno, nix::errno::Errno::EWOULDBLOCK);
    let waiter_path = b.p("f");
    let (ready, about_to_lock) = std::sync::mpsc::channel();
    let waiter = std::thread::spawn(move || {
        let file = fs::OpenOptions::new().read(true).open(waiter_path).unwrap();
        ready.send(()).unwrap();
        let lock = Flock::lock(file, FlockArg::LockShared).unwrap();
        (std::time::Instant::now(), lock)
    });
    about_to_lock.recv().unwrap();
    // Most likely the waiter is blocked by now; it is granted only after the release either way.
    std::thread::sleep(Duration::from_millis(300));
    let released = std::time::Instant::now();
    drop(held); // closing the descriptor releases its flock
    let (granted, shared) =
        common::bounded(Duration::from_secs(30), move || waiter.join().unwrap());
    assert!(
        granted >= released,
        "the waiter got its lock {:?} before the holder let go",
        released - granted
    );
    let also_shared = Flock::lock(open(&a.p("f")), FlockArg::LockSharedNonblock).unwrap();
    drop((shared, also_shared));

    // fcntl byte ranges (OFD locks: per open file, so one process can show it).
    let ofd = |file: &fs::File, kind: i32, start: i64, len: i64, set: bool| {
        // SAFETY: flock is plain old data.
        let mut lock: libc::flock = unsafe { std::mem::zeroed() };
        lock.l_type = kind as i16;
        lock.l_whence = libc::SEEK_SET as i16;
        lock.l_start = start;
        lock.l_len = len;
        let arg = if set {
            nix::fcntl::FcntlArg::F_OFD_SETLK(&lock)
        } else {
            nix::fcntl::FcntlArg::F_OFD_GETLK(&mut lock)
        };
        let result = nix::fcntl::fcntl(file.as_fd(), arg);
        (result, lock.l_type as i32, lock.l_start, lock.l_len)
    };
    let (fa, fb) = (open(&a.p("f")), open(&b.p("f")));
    assert!(ofd(&fa, libc::F_WRLCK, 100, 10, true).0.is_ok());
    assert_eq!(
        ofd(&fb, libc::F_RDLCK, 105, 1, true).0,
        Err(nix::errno::Errno::EAGAIN)
    );
    assert!(
        ofd(&fb, libc::F_WRLCK, 110, 10, true).0.is_ok(),
        "next range free"
    );
    assert!(
        ofd(&fb, libc::F_WRLCK, 90, 10, true).0.is_ok(),
        "range before free"
    );
    let (_, kind, start, len) = ofd(&fb, libc::F_RDLCK, 0, 0, false);
    assert_eq!(
        (kind, start, len),
        (libc::F_WRLCK, 100, 10),
        "F_GETLK names it"
    );
    // Writing into a locked range is not refused (advisory), and data reads back.
    fs::write(b.p("f"), b"still writable").unwrap();
    assert!(ofd(&fa, libc::F_UNLCK, 100, 10, true).0.is_ok());
    assert!(ofd(&fb, libc::F_WRLCK, 100, 10, true).0.is_ok());
    // Closing b's open file ends its locks, once the kernel's RELEASE of it arrives (FUSE
    // sends RELEASE in the background, after close(2) has returned).
    drop(fb);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while ofd(&fa, libc::F_WRLCK, 0, 0, true).0.is_err() {
        assert!(
            std::time::Instant::now() < deadline,
            "b's locks outlived its open file"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    drop(fa);
    assert_eq!(fs::read(a.p("f")).unwrap(), b"still writable");
    a.unmount();
    b.unmount();
    vol.assert_fsck_clean();
}

/// POSIX: a process's fcntl locks on a file go when it closes any descriptor of it, and when
/// it dies; a process killed while holding or waiting for one blocks nobody.
#[test]
fn fcntl_locks_go_with_any_close_and_with_a_killed_holder() {
    let vol = TestVolume::new();
    let (a, _other, b) = shared_pair(&vol);
    fs::write(a.p("f"), b"data").unwrap();
    let python = common::services::python();
    let try_lock = |path: &Path| {
        let out = Command::new(&python)
            .args([
                "-c",
                "import fcntl, os, sys\nfd = os.open(sys.argv[1], os.O_RDWR)\n\
                 try:\n    fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)\nexcept OSError:\n    sys.exit(3)",
            ])
            .arg(path)
            .output()
            .unwrap();
        out.status.code()
    };
    // A holder that closes another descriptor of the file loses its lock (and says when).
    let holder = |close_other: bool| {
        let script = "import fcntl, os, sys, time\nfd = os.open(sys.argv[1], os.O_RDWR)\n\
             fcntl.lockf(fd, fcntl.LOCK_EX)\n\
             if sys.argv[2] == '1':\n    os.close(os.open(sys.argv[1], os.O_RDONLY))\n\
             print('ready', flush=True)\ntime.sleep(600)";
        let mut child = Command::new(&python)
            .args(["-c", script])
            .arg(a.p("f"))
            .arg(if close_other { "1" } else { "0" })
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        std::io::BufRead::read_line(
            &mut std::io::BufReader::new(child.stdout.as_mut().unwrap()),
            &mut line,
        )
        .unwrap();
        assert_eq!(line.trim(), "ready");
        child
    };
    let mut h = holder(false);
    assert_eq!(try_lock(&b.p("f")), Some(3), "held on the other mount");
    h.kill().unwrap();
    h.wait().unwrap();
    assert_eq!(
        try_lock(&b.p("f")),
        Some(0),
        "a killed holder's lock is gone"
    );
    let mut h = holder(true);
    assert_eq!(
        try_lock(&b.p("f")),
        Some(0),
        "closing any descriptor drops it"
    );
    h.kill().unwrap();
    h.wait().unwrap();

    // A process killed while waiting: FUSE lets it go only with the answer (fuser does not
    // take FUSE_INTERRUPT), so it ends once the lock comes free, and takes nothing with it.
    let held = Flock::lock(
        fs::OpenOptions::new().read(true).open(b.p("f")).unwrap(),
        FlockArg::LockExclusive,
    )
    .unwrap();
    let mut waiting = Command::new(&python)
        .args([
            "-c",
            "import fcntl, os, sys\nfd = os.open(sys.argv[1], os.O_RDWR)\nfcntl.flock(fd, fcntl.LOCK_EX)",
        ])
        .arg(a.p("f"))
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    assert!(waiting.try_wait().unwrap().is_none(), "it waits");
    waiting.kill().unwrap();
    drop(held);
    common::bounded(Duration::from_secs(30), move || waiting.wait().unwrap());
    // Its flock goes with the RELEASE of its open file, which FUSE sends in the background.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while try_lock(&b.p("f")) != Some(0) {
        assert!(
            std::time::Instant::now() < deadline,
            "the killed waiter kept its lock"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    a.unmount();
    b.unmount();
}
