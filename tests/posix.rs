//! The POSIX surface through a real mount, and what the cipher dir reveals.

mod common;

use std::ffi::OsStr;
use std::fs;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};

use common::xattrs::{get_xattr, list_xattrs, remove_xattr, set_xattr};
use common::{TestVolume, files_under};

#[path = "posix/nodes_links_caches.rs"]
mod nodes_links_caches;

#[test]
fn files_dirs_links_and_symlinks() {
    let vol = TestVolume::new();
    let m = vol.mount();
    fs::write(m.p("a.txt"), b"hello sealfs").unwrap();
    assert_eq!(fs::read(m.p("a.txt")).unwrap(), b"hello sealfs");
    assert_eq!(fs::metadata(m.p("a.txt")).unwrap().len(), 12);
    fs::create_dir_all(m.p("d/e/f")).unwrap();
    fs::write(m.p("d/e/f/deep"), b"deep").unwrap();
    std::os::unix::fs::symlink("../a.txt", m.p("d/sym")).unwrap();
    assert_eq!(fs::read_link(m.p("d/sym")).unwrap().as_os_str(), "../a.txt");
    assert_eq!(fs::symlink_metadata(m.p("d/sym")).unwrap().len(), 8);
    assert_eq!(fs::read(m.p("d/sym")).unwrap(), b"hello sealfs");
    fs::hard_link(m.p("a.txt"), m.p("d/hard")).unwrap();
    let (a, h) = (
        fs::metadata(m.p("a.txt")).unwrap(),
        fs::metadata(m.p("d/hard")).unwrap(),
    );
    assert_eq!(a.ino(), h.ino());
    assert_eq!(a.nlink(), 2);
    fs::remove_file(m.p("a.txt")).unwrap();
    assert_eq!(fs::read(m.p("d/hard")).unwrap(), b"hello sealfs");
    let mut names: Vec<_> = fs::read_dir(m.p("d"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    names.sort();
    assert_eq!(names, ["e", "hard", "sym"]);
    assert!(
        fs::remove_dir(m.p("d/e")).is_err(),
        "rmdir of a non-empty dir must fail"
    );
    fs::remove_dir_all(m.p("d/e")).unwrap();
    nix::unistd::mkfifo(
        &m.p("fifo"),
        nix::sys::stat::Mode::from_bits_truncate(0o600),
    )
    .unwrap();
    assert!(
        fs::symlink_metadata(m.p("fifo"))
            .unwrap()
            .file_type()
            .is_fifo()
    );
    let ino_before = fs::metadata(m.p("d/hard")).unwrap().ino();
    m.unmount();
    let m = vol.mount();
    assert_eq!(fs::read(m.p("d/hard")).unwrap(), b"hello sealfs");
    assert_eq!(
        fs::metadata(m.p("d/hard")).unwrap().ino(),
        ino_before,
        "inode numbers stable across remounts"
    );
    assert!(
        fs::symlink_metadata(m.p("fifo"))
            .unwrap()
            .file_type()
            .is_fifo()
    );
}

#[test]
fn random_offsets_holes_and_truncate() {
    let vol = TestVolume::new();
    let m = vol.mount();
    let path = m.p("sparse");
    let mut f = fs::OpenOptions::new()
        .create(true)
        .read(true)
        .write(true)
        .truncate(true)
        .open(&path)
        .unwrap();
    f.seek(SeekFrom::Start(10_000)).unwrap();
    f.write_all(b"middle").unwrap();
    f.seek(SeekFrom::Start(3)).unwrap();
    f.write_all(b"start").unwrap();
    drop(f);
    let data = fs::read(&path).unwrap();
    assert_eq!(data.len(), 10_006);
    assert_eq!(&data[3..8], b"start");
    assert!(data[8..10_000].iter().all(|&b| b == 0));
    let f = fs::OpenOptions::new().write(true).open(&path).unwrap();
    f.set_len(5).unwrap();
    assert_eq!(fs::read(&path).unwrap(), b"\0\0\0st");
    f.set_len(20_000).unwrap();
    let data = fs::read(&path).unwrap();
    assert_eq!(data.len(), 20_000);
    assert_eq!(&data[..5], b"\0\0\0st");
    assert!(data[5..].iter().all(|&b| b == 0));
    // O_TRUNC on open, and append.
    fs::write(&path, b"fresh").unwrap();
    let mut f = fs::OpenOptions::new().append(true).open(&path).unwrap();
    f.write_all(b" tail").unwrap();
    assert_eq!(fs::read(&path).unwrap(), b"fresh tail");
    // A big write crosses many blocks.
    let big: Vec<u8> = (0..3_000_000u32).map(|i| (i % 253) as u8).collect();
    fs::write(m.p("big"), &big).unwrap();
    let mut back = Vec::new();
    fs::File::open(m.p("big"))
        .unwrap()
        .read_to_end(&mut back)
        .unwrap();
    assert!(back == big);
}

#[test]
fn rename_flags_modes_times_xattrs() {
    let vol = TestVolume::new();
    let m = vol.mount();
    fs::write(m.p("one"), b"1").unwrap();
    fs::write(m.p("two"), b"2").unwrap();
    let noreplace = nix::fcntl::renameat2(
        nix::fcntl::AT_FDCWD,
        &m.p("one"),
        nix::fcntl::AT_FDCWD,
        &m.p("two"),
        nix::fcntl::RenameFlags::RENAME_NOREPLACE,
    );
    assert_eq!(noreplace, Err(nix::Error::EEXIST));
    nix::fcntl::renameat2(
        nix::fcntl::AT_FDCWD,
        &m.p("one"),
        nix::fcntl::AT_FDCWD,
        &m.p("two"),
        nix::fcntl::RenameFlags::RENAME_EXCHANGE,
    )
    .unwrap();
    assert_eq!(fs::read(m.p("one")).unwrap(), b"2");
    assert_eq!(fs::read(m.p("two")).unwrap(), b"1");
    fs::rename(m.p("one"), m.p("two")).unwrap();
    assert_eq!(fs::read(m.p("two")).unwrap(), b"2");
    assert!(!m.p("one").exists());
    fs::set_permissions(m.p("two"), fs::Permissions::from_mode(0o640)).unwrap();
    assert_eq!(fs::metadata(m.p("two")).unwrap().mode() & 0o7777, 0o640);
    let when = nix::sys::time::TimeSpec::new(1_000_000_000, 0);
    nix::sys::stat::utimensat(
        nix::fcntl::AT_FDCWD,
        &m.p("two"),
        &when,
        &when,
        nix::sys::stat::UtimensatFlags::FollowSymlink,
    )
    .unwrap();
    assert_eq!(fs::metadata(m.p("two")).unwrap().mtime(), 1_000_000_000);
    assert_eq!(fs::metadata(m.p("two")).unwrap().atime(), 1_000_000_000);
    xattr_round_trip(&m.p("two"));
    let st = nix::sys::statvfs::statvfs(&m.path).unwrap();
    assert!(st.blocks() > 0);
}

fn xattr_round_trip(path: &std::path::Path) {
    let (name, value) = ("user.secret-label", b"top secret value");
    set_xattr(path, name, value);
    assert_eq!(get_xattr(path, name).unwrap(), value);
    assert_eq!(list_xattrs(path), vec![name]);
    remove_xattr(path, name);
    assert_eq!(
        get_xattr(path, name).unwrap_err().raw_os_error(),
        Some(libc::ENODATA)
    );
}

#[test]
fn long_and_unicode_names() {
    let vol = TestVolume::new();
    let m = vol.mount();
    let names = [
        "x".repeat(255),
        "y".repeat(174),
        "z".repeat(175),
        "\u{65e5}\u{672c}\u{8a9e}\u{306e}\u{540d}\u{524d} \u{1F512}".to_string(),
        "\u{e9}".repeat(127),
    ];
    for (i, name) in names.iter().enumerate() {
        fs::write(m.p(name), format!("content {i}")).unwrap();
    }
    fs::create_dir(m.p(&"D".repeat(250))).unwrap();
    fs::write(
        m.p(&format!("{}/{}", "D".repeat(250), "w".repeat(240))),
        b"nested",
    )
    .unwrap();
    fs::rename(m.p(&names[0]), m.p(&"r".repeat(200))).unwrap();
    assert!(
        fs::write(m.p(&"n".repeat(256)), b"").is_err(),
        "256-byte names are refused"
    );
    m.unmount();
    let m = vol.mount();
    for (i, name) in names.iter().enumerate().skip(1) {
        assert_eq!(
            fs::read(m.p(name)).unwrap(),
            format!("content {i}").as_bytes()
        );
    }
    assert_eq!(fs::read(m.p(&"r".repeat(200))).unwrap(), b"content 0");
    assert!(!m.p(&names[0]).exists());
    let listed: Vec<_> = fs::read_dir(&m.path)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(listed.len(), names.len() + 1);
    assert!(listed.iter().all(|n| n.as_bytes().len() <= 255));
    for entry in fs::read_dir(&vol.cipher).unwrap() {
        assert!(entry.unwrap().file_name().len() <= 255);
    }
}

#[test]
fn cipher_dir_holds_no_plaintext() {
    let vol = TestVolume::new();
    let marker = "PLAINTEXTMARKER";
    let m = vol.mount();
    fs::create_dir(m.p(&format!("{marker}-dir"))).unwrap();
    fs::write(
        m.p(&format!("{marker}-dir/{marker}-file")),
        marker.repeat(1000),
    )
    .unwrap();
    std::os::unix::fs::symlink(format!("/{marker}/target"), m.p(&format!("{marker}-link")))
        .unwrap();
    let c = std::ffi::CString::new(m.p(&format!("{marker}-dir")).as_os_str().as_bytes()).unwrap();
    let xname = std::ffi::CString::new(format!("user.{marker}")).unwrap();
    let rc = unsafe {
        libc::setxattr(
            c.as_ptr(),
            xname.as_ptr(),
            marker.as_ptr().cast(),
            marker.len(),
            0,
        )
    };
    assert_eq!(rc, 0);
    m.unmount();
    let needle = marker.as_bytes();
    let mut stack = vec![vol.cipher.clone()];
    let mut seen = 0;
    while let Some(p) = stack.pop() {
        assert!(
            !p.as_os_str()
                .as_bytes()
                .windows(needle.len())
                .any(|w| w == needle),
            "name leaks: {p:?}"
        );
        let meta = fs::symlink_metadata(&p).unwrap();
        if meta.is_dir() {
            stack.extend(fs::read_dir(&p).unwrap().map(|e| e.unwrap().path()));
        } else if meta.file_type().is_symlink() {
            let t = fs::read_link(&p).unwrap();
            assert!(
                !t.as_os_str()
                    .as_bytes()
                    .windows(needle.len())
                    .any(|w| w == needle),
                "symlink target leaks"
            );
        } else {
            let data = fs::read(&p).unwrap();
            assert!(
                !data.windows(needle.len()).any(|w| w == needle),
                "content leaks in {p:?}"
            );
        }
        let mut xbuf = vec![0u8; 4096];
        let cp = std::ffi::CString::new(p.as_os_str().as_bytes()).unwrap();
        let n = unsafe { libc::llistxattr(cp.as_ptr(), xbuf.as_mut_ptr().cast(), xbuf.len()) };
        if n > 0 {
            assert!(
                !xbuf[..n as usize]
                    .windows(needle.len())
                    .any(|w| w == needle),
                "xattr name leaks"
            );
        }
        seen += 1;
    }
    assert!(seen >= 5);
    assert!(
        files_under(&vol.cipher)
            .iter()
            .any(|p| p.to_string_lossy().contains("sealfs.headers"))
    );
    let _ = OsStr::new("");
}

#[test]
fn open_unlinked_files_keep_working_until_closed() {
    let vol = TestVolume::new();
    let m = vol.mount();
    let mut f = fs::OpenOptions::new()
        .create(true)
        .read(true)
        .write(true)
        .truncate(true)
        .open(m.p("tmp"))
        .unwrap();
    f.write_all(b"before unlink").unwrap();
    fs::remove_file(m.p("tmp")).unwrap();
    f.write_all(b", after unlink").unwrap();
    f.sync_all().unwrap();
    f.sync_data().unwrap();
    f.seek(SeekFrom::Start(0)).unwrap();
    let mut back = String::new();
    f.read_to_string(&mut back).unwrap();
    assert_eq!(back, "before unlink, after unlink");
    let headers = || files_under(&vol.cipher.join("sealfs.headers")).len();
    assert_eq!(headers(), 1, "the header stays while the file is open");
    drop(f);
    // Release is asynchronous to close(2): wait for the daemon.
    let gone = common::wait_until(std::time::Duration::from_secs(60), || headers() == 0);
    assert!(gone, "the header goes with the last close");
    m.unmount();
}

#[test]
fn seek_data_and_hole_and_fallocate() {
    let vol = TestVolume::new();
    {
        // With the writeback cache, lseek is the kernel's: right, if coarse.
        let m = vol.mount();
        let f = fs::File::create(m.p("w")).unwrap();
        use std::os::unix::fs::FileExt;
        f.write_all_at(b"tail", 1 << 20).unwrap();
        let fd = std::os::fd::AsRawFd::as_raw_fd(&f);
        assert_eq!(
            unsafe { libc::lseek(fd, 0, libc::SEEK_HOLE) },
            (1 << 20) + 4
        );
        assert_eq!(unsafe { libc::lseek(fd, 5, libc::SEEK_DATA) }, 5);
        drop(f);
        m.unmount();
    }
    let m = vol.mount_with(&["--no-writeback-cache"]);
    let f = fs::OpenOptions::new()
        .create(true)
        .read(true)
        .write(true)
        .truncate(true)
        .open(m.p("s"))
        .unwrap();
    use std::os::unix::fs::FileExt;
    f.write_all_at(b"head", 0).unwrap();
    f.write_all_at(b"tail", 1 << 20).unwrap();
    let fd = std::os::fd::AsRawFd::as_raw_fd(&f);
    let hole = unsafe { libc::lseek(fd, 0, libc::SEEK_HOLE) };
    assert!(
        (4..=8192).contains(&hole),
        "first hole right after the head block: {hole}"
    );
    let data = unsafe { libc::lseek(fd, hole, libc::SEEK_DATA) };
    assert!(
        data > hole && data <= 1 << 20,
        "data again before the tail: {data}"
    );
    assert_eq!(
        unsafe { libc::lseek(fd, (1 << 20) + 4, libc::SEEK_DATA) },
        -1,
        "ENXIO past the end"
    );
    // fallocate mode 0 extends with zeros; KEEP_SIZE keeps the size.
    let rc = unsafe { libc::fallocate(fd, 0, 0, 3 << 20) };
    assert_eq!(rc, 0, "{}", std::io::Error::last_os_error());
    assert_eq!(f.metadata().unwrap().len(), 3 << 20);
    let rc = unsafe { libc::fallocate(fd, libc::FALLOC_FL_KEEP_SIZE, 0, 8 << 20) };
    assert_eq!(rc, 0);
    assert_eq!(f.metadata().unwrap().len(), 3 << 20);
    let mut buf = vec![1u8; 8];
    f.read_exact_at(&mut buf, (2 << 20) + 5).unwrap();
    assert_eq!(buf, [0; 8]);
    f.read_exact_at(&mut buf[..4], 1 << 20).unwrap();
    assert_eq!(&buf[..4], b"tail");
    // Modes that shift blocks are refused, not faked (tests/fallocate.rs has the others).
    let rc = unsafe { libc::fallocate(fd, libc::FALLOC_FL_COLLAPSE_RANGE, 0, 4096) };
    assert_eq!(rc, -1, "COLLAPSE_RANGE is refused");
    drop(f);
    m.unmount();
}

#[test]
fn symlink_times_can_be_set() {
    let vol = TestVolume::new();
    let m = vol.mount();
    std::os::unix::fs::symlink("somewhere", m.p("l")).unwrap();
    let when = nix::sys::time::TimeSpec::new(1_234_567_890, 0);
    nix::sys::stat::utimensat(
        nix::fcntl::AT_FDCWD,
        &m.p("l"),
        &when,
        &when,
        nix::sys::stat::UtimensatFlags::NoFollowSymlink,
    )
    .unwrap();
    assert_eq!(
        fs::symlink_metadata(m.p("l")).unwrap().mtime(),
        1_234_567_890
    );
    m.unmount();
}

/// Programs ask files for ioctls all the time (isatty on every open in Python, lsattr); each
/// must get ENOTTY, as on ext4, and must not write a log line (it once wrote one per call).
#[test]
fn ioctls_answer_enotty_without_a_log_line_each() {
    use std::os::fd::AsRawFd;
    let vol = TestVolume::new();
    let m = vol.mount();
    fs::write(m.p("f"), b"data").unwrap();
    for _ in 0..50 {
        let f = fs::File::open(m.p("f")).unwrap();
        let mut termios = std::mem::MaybeUninit::<libc::termios>::uninit();
        let rc = unsafe { libc::ioctl(f.as_raw_fd(), libc::TCGETS, termios.as_mut_ptr()) };
        assert_eq!(rc, -1);
        assert_eq!(
            std::io::Error::last_os_error().raw_os_error(),
            Some(libc::ENOTTY)
        );
        assert!(!std::io::IsTerminal::is_terminal(&f));
    }
    let log = m.unmount();
    assert!(
        log.lines().filter(|l| l.contains("ioctl")).count() == 0,
        "ioctls were logged: {log}"
    );
}

/// The mount's readahead (bench/README.md: 16 MiB keeps several read requests in flight) is
/// what reaches the kernel, by default and when asked for; only root may set it.
#[test]
fn the_mount_sets_its_readahead() {
    common::require_root("to write the bdi's read_ahead_kb");
    let read_ahead_of = |path: &std::path::Path| -> String {
        let dev = common::mount_device(path).expect("mounted");
        fs::read_to_string(format!("/sys/class/bdi/{dev}/read_ahead_kb"))
            .unwrap()
            .trim()
            .to_string()
    };
    // The foreground daemon sets it just after the mount appears: wait for it, boundedly.
    let settles_to = |path: &std::path::Path, want: &str| {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let mut got = read_ahead_of(path);
        while got != want && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(20));
            got = read_ahead_of(path);
        }
        got
    };
    let vol = TestVolume::new();
    let m = vol.mount();
    assert_eq!(settles_to(&m.path, "16384"), "16384");
    m.unmount();
    let m = vol.mount_with(&["--read-ahead-kb", "2048"]);
    assert_eq!(settles_to(&m.path, "2048"), "2048");
    m.unmount();
}

/// syncfs(2) and fsync(2) on the mount while other threads write: each returns 0 (everything
/// written is flushed), never EINTR; the data reads back.
#[test]
fn syncfs_and_fsync_under_concurrent_writers_succeed() {
    use std::os::fd::AsRawFd;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    let vol = TestVolume::new();
    let m = vol.mount();
    let stop = Arc::new(AtomicBool::new(false));
    // Files each writer has written: the syncs go on until both have written (on a loaded
    // machine a writer may not get through one file in 40 rounds of syncs).
    let written: Arc<[AtomicU64; 2]> = Arc::new([AtomicU64::new(0), AtomicU64::new(0)]);
    let writers: Vec<_> = (0..2)
        .map(|w| {
            let (root, stop, written) = (m.path.clone(), stop.clone(), written.clone());
            std::thread::spawn(move || {
                let chunk = vec![w as u8 + 1; 1 << 20];
                let mut rounds = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let path = root.join(format!("w{w}-{}", rounds % 4));
                    fs::write(&path, &chunk).unwrap();
                    rounds += 1;
                    written[w].store(rounds, Ordering::Relaxed);
                }
                rounds
            })
        })
        .collect();
    let dir = fs::File::open(&m.path).unwrap();
    let mut round = 0;
    while round < 40 || written.iter().any(|n| n.load(Ordering::Relaxed) == 0) {
        // SAFETY: a valid descriptor.
        let rc = unsafe { libc::syncfs(dir.as_raw_fd()) };
        assert_eq!(
            rc,
            0,
            "syncfs round {round}: {}",
            std::io::Error::last_os_error()
        );
        let f = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .open(m.p("synced"))
            .unwrap();
        f.sync_all().unwrap();
        round += 1;
    }
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        assert!(w.join().unwrap() > 0);
    }
    assert_eq!(fs::read(m.p("w0-0")).unwrap(), vec![1u8; 1 << 20]);
    m.unmount();
}
