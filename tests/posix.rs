//! The POSIX surface through a real mount, and what the cipher dir reveals.

mod common;

use std::ffi::OsStr;
use std::fs;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};

use common::xattrs::{get_xattr, list_xattrs, remove_xattr, set_xattr};
use common::{TestVolume, files_under};

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

/// Block and character device nodes, made as root: type and rdev kept through rename, hard
/// link, chmod, chown, rotate + rewrap and a remount, and in copies made inside the mount by tar and by
/// `rsync -aD`; fsck clean.
#[test]
fn device_nodes_keep_their_type_and_rdev() {
    use nix::sys::stat::{Mode, SFlag, makedev, mknod};
    common::require_root("mknod of device nodes");
    let vol = TestVolume::new();
    let m = vol.mount();
    fs::create_dir(m.p("dev")).unwrap();
    let nodes = [
        ("dev/blk", SFlag::S_IFBLK, makedev(8, 300)),
        ("dev/chr", SFlag::S_IFCHR, makedev(1, 2)),
    ];
    for (name, kind, rdev) in nodes {
        mknod(&m.p(name), kind, Mode::from_bits_truncate(0o640), rdev).unwrap();
    }
    let check = |root: &std::path::Path, label: &str| {
        for (name, kind, rdev) in nodes {
            let meta = fs::symlink_metadata(root.join(name)).unwrap();
            let ft = meta.file_type();
            let right_type = if kind == SFlag::S_IFBLK {
                ft.is_block_device()
            } else {
                ft.is_char_device()
            };
            assert!(right_type, "{label}: {name} keeps its type");
            assert_eq!(meta.rdev(), rdev, "{label}: {name} keeps its rdev");
        }
    };
    check(&m.path, "made");
    fs::rename(m.p("dev/blk"), m.p("dev/blk2")).unwrap();
    fs::hard_link(m.p("dev/blk2"), m.p("dev/blk")).unwrap();
    fs::remove_file(m.p("dev/blk2")).unwrap();
    fs::set_permissions(m.p("dev/chr"), fs::Permissions::from_mode(0o600)).unwrap();
    std::os::unix::fs::lchown(m.p("dev/chr"), Some(1234), Some(5678)).unwrap();
    let meta = fs::symlink_metadata(m.p("dev/chr")).unwrap();
    assert_eq!(
        (meta.mode() & 0o7777, meta.uid(), meta.gid()),
        (0o600, 1234, 5678)
    );
    check(&m.path, "renamed and linked");

    // A system backup restored into the volume: tar and rsync -aD copies inside the mount.
    let tarball = common::test_dir();
    let tar = tarball.path().join("dev.tar");
    let ok = |out: std::process::Output| assert!(out.status.success(), "{}", common::stderr(&out));
    ok(std::process::Command::new("tar")
        .arg("-C")
        .arg(&m.path)
        .arg("-cf")
        .arg(&tar)
        .arg("dev")
        .output()
        .unwrap());
    fs::create_dir(m.p("from-tar")).unwrap();
    ok(std::process::Command::new("tar")
        .arg("-C")
        .arg(m.p("from-tar"))
        .arg("-xpf")
        .arg(&tar)
        .output()
        .unwrap());
    check(&m.p("from-tar"), "tar -x");
    ok(std::process::Command::new("rsync")
        .arg("-aD")
        .arg(m.p("dev"))
        .arg(m.p("from-rsync"))
        .output()
        .unwrap());
    check(&m.p("from-rsync"), "rsync -aD");
    m.unmount();
    common::ok(vol.run(&["rotate", vol.cipher_str()]));
    common::ok(vol.run(&["rewrap", vol.cipher_str()]));
    let m = vol.mount();
    check(&m.path, "rotated, rewrapped and remounted");
    check(&m.p("from-tar"), "remounted tar copy");
    // The kernel keeps the mount nodev: a node is not a way into a device.
    assert!(fs::File::open(m.p("dev/chr")).is_err());
    m.unmount();
    vol.assert_fsck_clean();
}

/// Symlink targets of every length the kernel passes read back exactly, with their length as
/// the link's size, after a remount: up to 3,043 bytes sealed inline in the backing target,
/// longer ones (to 4,095, PATH_MAX less its NUL) in a sidecar under `sealfs.links`, which
/// lives exactly as long as the link's last name. Tampering with either form reads as EIO.
#[test]
fn symlink_targets_read_back_exactly_up_to_path_max() {
    const INLINE: usize = 3043;
    const LONGEST: usize = 4095;
    let vol = TestVolume::new();
    let m = vol.mount();
    let target = |len: usize| -> String {
        (0..len)
            .map(|i| {
                if i % 17 == 16 {
                    '/'
                } else {
                    (b'a' + (i % 26) as u8) as char
                }
            })
            .collect()
    };
    let lengths = [1usize, 255, 256, 1000, INLINE, INLINE + 1, LONGEST];
    for len in lengths {
        std::os::unix::fs::symlink(target(len), m.p(&format!("l{len}"))).unwrap();
    }
    let too_long = std::os::unix::fs::symlink(target(LONGEST + 1), m.p("too-long")).unwrap_err();
    assert_eq!(too_long.raw_os_error(), Some(libc::ENAMETOOLONG));
    assert!(
        fs::symlink_metadata(m.p("too-long")).is_err(),
        "nothing left behind"
    );
    let sidecars = || -> usize {
        let links = vol.cipher.join("sealfs.links");
        if !links.exists() {
            return 0;
        }
        fs::read_dir(links)
            .unwrap()
            .map(|d| fs::read_dir(d.unwrap().path()).unwrap().count())
            .sum()
    };
    assert_eq!(sidecars(), 2, "one sidecar per long target");
    // A long link's sidecar goes with its last name: hard links, rename over, unlink.
    std::os::unix::fs::symlink(target(4000), m.p("doomed")).unwrap();
    fs::hard_link(m.p("doomed"), m.p("doomed-too")).unwrap();
    assert_eq!(sidecars(), 3);
    fs::remove_file(m.p("doomed")).unwrap();
    assert_eq!(
        fs::read_link(m.p("doomed-too")).unwrap().as_os_str().len(),
        4000
    );
    assert_eq!(sidecars(), 3, "another name still points at it");
    std::os::unix::fs::symlink("short", m.p("replacement")).unwrap();
    fs::rename(m.p("replacement"), m.p("doomed-too")).unwrap();
    assert_eq!(sidecars(), 2, "renamed over: gone");
    std::os::unix::fs::symlink(target(3500), m.p("moved")).unwrap();
    fs::rename(m.p("moved"), m.p("moved-here")).unwrap();
    assert_eq!(fs::symlink_metadata(m.p("moved-here")).unwrap().len(), 3500);
    fs::remove_file(m.p("moved-here")).unwrap();
    assert_eq!(sidecars(), 2, "unlinked: gone");
    m.unmount();
    let m = vol.mount();
    for len in lengths {
        let link = m.p(&format!("l{len}"));
        assert_eq!(
            fs::read_link(&link).unwrap().as_os_str().as_bytes(),
            target(len).as_bytes(),
            "target of {len} bytes"
        );
        assert_eq!(fs::symlink_metadata(&link).unwrap().len(), len as u64);
    }
    // What tar restores from a system image: the long link survives a round trip.
    let scratch = common::test_dir();
    let tarball = scratch.path().join("links.tar");
    let ok = |out: std::process::Output| assert!(out.status.success(), "{}", common::stderr(&out));
    ok(std::process::Command::new("tar")
        .arg("-C")
        .arg(&m.path)
        .arg("-cf")
        .arg(&tarball)
        .arg(format!("l{LONGEST}"))
        .output()
        .unwrap());
    fs::create_dir(m.p("restored")).unwrap();
    ok(std::process::Command::new("tar")
        .arg("-C")
        .arg(m.p("restored"))
        .arg("-xf")
        .arg(&tarball)
        .output()
        .unwrap());
    assert_eq!(
        fs::read_link(m.p(&format!("restored/l{LONGEST}")))
            .unwrap()
            .as_os_str()
            .as_bytes(),
        target(LONGEST).as_bytes()
    );
    assert_eq!(sidecars(), 3);
    fs::remove_dir_all(m.p("restored")).unwrap();
    assert_eq!(sidecars(), 2);
    m.unmount();
    vol.assert_fsck_clean();

    // Tamper with the inline form: one character of the longest inline backing target.
    let backing_links: Vec<_> = fs::read_dir(&vol.cipher)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| fs::symlink_metadata(p).unwrap().file_type().is_symlink())
        .collect();
    let inline = backing_links
        .iter()
        .max_by_key(|p| fs::symlink_metadata(p).unwrap().len())
        .unwrap();
    let mut sealed =
        std::os::unix::ffi::OsStringExt::into_vec(fs::read_link(inline).unwrap().into_os_string());
    sealed[100] = if sealed[100] == b'A' { b'B' } else { b'A' };
    fs::remove_file(inline).unwrap();
    std::os::unix::fs::symlink(OsStr::from_bytes(&sealed), inline).unwrap();
    // Tamper with the long form: a flipped bit in one sidecar, the other sidecar deleted.
    let sidecar_files: Vec<_> = fs::read_dir(vol.cipher.join("sealfs.links"))
        .unwrap()
        .flat_map(|d| fs::read_dir(d.unwrap().path()).unwrap())
        .map(|e| e.unwrap().path())
        .collect();
    let mut bytes = fs::read(&sidecar_files[0]).unwrap();
    let at = bytes.len() - 40;
    bytes[at] ^= 1;
    fs::write(&sidecar_files[0], &bytes).unwrap();
    fs::remove_file(&sidecar_files[1]).unwrap();
    let m = vol.mount();
    for len in [INLINE, INLINE + 1, LONGEST] {
        let err = fs::read_link(m.p(&format!("l{len}")))
            .map(|t| t.as_os_str().len())
            .unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EIO), "target of {len} bytes");
    }
    assert_eq!(
        fs::read_link(m.p("l1000")).unwrap().as_os_str().len(),
        1000,
        "the others still read"
    );
    m.unmount();
    let out = vol.run(&["fsck", vol.cipher_str()]);
    assert!(!out.status.success());
    let report = common::stderr(&out) + &String::from_utf8_lossy(&out.stdout);
    assert_eq!(report.matches("bad-symlink:").count(), 3, "{report}");
}

/// fsck and long targets: a sidecar no symlink points at (a crash between writing it and
/// making the link) is a leftover that `--repair` removes; two symlinks sharing one sidecar (a
/// copy of the cipher dir that did not keep hard links) each get their own, so deleting one
/// leaves the other's target.
#[test]
fn fsck_repairs_long_symlink_targets() {
    let vol = TestVolume::new();
    let m = vol.mount();
    std::os::unix::fs::symlink("x".repeat(4000), m.p("orphaned")).unwrap();
    std::os::unix::fs::symlink("y".repeat(3900), m.p("a")).unwrap();
    fs::hard_link(m.p("a"), m.p("b")).unwrap();
    m.unmount();
    let backing_links = || -> Vec<std::path::PathBuf> {
        let mut links: Vec<_> = fs::read_dir(&vol.cipher)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| fs::symlink_metadata(p).unwrap().file_type().is_symlink())
            .collect();
        links.sort();
        links
    };
    // Taken out from under the volume, as a crash between sidecar and link would leave it.
    let all = backing_links();
    let orphaned = all
        .iter()
        .find(|p| fs::symlink_metadata(p).unwrap().nlink() == 1)
        .unwrap();
    fs::remove_file(orphaned).unwrap();
    // The hard link broken into two symlinks naming one sidecar, as `cp -r` would.
    let b = &backing_links()[1];
    let target = fs::read_link(b).unwrap();
    fs::remove_file(b).unwrap();
    std::os::unix::fs::symlink(&target, b).unwrap();

    let out = vol.run(&["fsck", vol.cipher_str()]);
    assert!(!out.status.success());
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(report.contains("leftover: sealfs.links/"), "{report}");
    assert!(report.contains("shared-link-target: /"), "{report}");
    let out = vol.run(&["fsck", "--repair", vol.cipher_str()]);
    assert_eq!(out.status.code(), Some(1), "{}", common::stderr(&out));
    vol.assert_fsck_clean();
    let m = vol.mount();
    fs::remove_file(m.p("a")).unwrap();
    assert_eq!(
        fs::read_link(m.p("b")).unwrap(),
        std::path::Path::new(&"y".repeat(3900))
    );
    m.unmount();
    vol.assert_fsck_clean();
}

/// What a lone mount lets the kernel cache (negative lookups, symlink targets, directory
/// listings) follows every change made through the mount: a name missed and then created,
/// removed or renamed; a symlink replaced by another under its name; a listing taken, then
/// changed by each kind of operation, then taken again.
#[test]
fn cached_misses_symlinks_and_listings_follow_every_change() {
    let vol = TestVolume::new();
    let m = vol.mount();
    let names = |dir: &str| -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(m.p(dir))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        v.sort();
        v
    };
    fs::create_dir(m.p("d")).unwrap();
    for round in 0..3 {
        // Misses, then the name made by each kind of create.
        for (name, make) in [
            ("file", 0),
            ("dir", 1),
            ("link", 2),
            ("fifo", 3),
            ("hard", 4),
        ] {
            let path = m.p(&format!("d/{name}"));
            assert!(
                fs::symlink_metadata(&path).is_err(),
                "round {round}: {name}"
            );
            assert!(fs::symlink_metadata(&path).is_err(), "twice: {name}");
            match make {
                0 => fs::write(&path, b"x").unwrap(),
                1 => fs::create_dir(&path).unwrap(),
                2 => std::os::unix::fs::symlink("target-1", &path).unwrap(),
                3 => nix::unistd::mkfifo(&path, nix::sys::stat::Mode::from_bits_truncate(0o644))
                    .unwrap(),
                _ => fs::hard_link(m.p("d/file"), &path).unwrap(),
            }
            assert!(fs::symlink_metadata(&path).is_ok(), "made: {name}");
        }
        assert_eq!(names("d"), ["dir", "fifo", "file", "hard", "link"]);
        // A symlink replaced under its name: the new target.
        assert_eq!(
            fs::read_link(m.p("d/link")).unwrap().to_str(),
            Some("target-1")
        );
        std::os::unix::fs::symlink("target-2", m.p("d/new-link")).unwrap();
        fs::rename(m.p("d/new-link"), m.p("d/link")).unwrap();
        assert_eq!(
            fs::read_link(m.p("d/link")).unwrap().to_str(),
            Some("target-2")
        );
        fs::remove_file(m.p("d/link")).unwrap();
        std::os::unix::fs::symlink("target-3", m.p("d/link")).unwrap();
        assert_eq!(
            fs::read_link(m.p("d/link")).unwrap().to_str(),
            Some("target-3")
        );
        // Renames in and out, then every name removed.
        fs::rename(m.p("d/file"), m.p("moved")).unwrap();
        assert!(fs::symlink_metadata(m.p("d/file")).is_err());
        assert_eq!(names("d"), ["dir", "fifo", "hard", "link"]);
        fs::rename(m.p("moved"), m.p("d/file")).unwrap();
        assert!(fs::symlink_metadata(m.p("moved")).is_err());
        assert_eq!(names("d"), ["dir", "fifo", "file", "hard", "link"]);
        for name in ["file", "link", "fifo", "hard"] {
            fs::remove_file(m.p(&format!("d/{name}"))).unwrap();
        }
        fs::remove_dir(m.p("d/dir")).unwrap();
        assert!(names("d").is_empty(), "round {round}");
        assert!(fs::symlink_metadata(m.p("d/file")).is_err());
    }
    m.unmount();
    vol.assert_fsck_clean();
}

/// Listings hand the kernel each entry's attributes (readdirplus on lone mounts): what a walk
/// sees is what a lookup would give (plaintext sizes, link counts, a long symlink target's
/// length), on a cold mount, after changes through the mount, and after the kernel forgot
/// every node the listings gave it.
#[test]
fn walks_see_each_entrys_own_attributes() {
    let vol = TestVolume::new();
    let m = vol.mount();
    let sizes = [0usize, 1, 4096, 4097, 100_000];
    fs::create_dir(m.p("d")).unwrap();
    for size in sizes {
        fs::write(m.p(&format!("d/f{size}")), vec![b'x'; size]).unwrap();
    }
    fs::hard_link(m.p("d/f1"), m.p("d/f1-link")).unwrap();
    std::os::unix::fs::symlink("t".repeat(3500), m.p("d/long-link")).unwrap();
    fs::create_dir(m.p("d/sub")).unwrap();
    m.unmount();

    let m = vol.mount();
    let walk = || -> Vec<(String, u64, u64)> {
        let mut v: Vec<(String, u64, u64)> = fs::read_dir(m.p("d"))
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                let meta = fs::symlink_metadata(e.path()).unwrap();
                let name = e.file_name().into_string().unwrap();
                (
                    name,
                    meta.len(),
                    std::os::unix::fs::MetadataExt::nlink(&meta),
                )
            })
            .collect();
        v.sort();
        v
    };
    let expected = |grown: u64| -> Vec<(String, u64, u64)> {
        let mut v: Vec<(String, u64, u64)> = sizes
            .iter()
            .map(|&s| {
                let size = if s == 4097 { grown } else { s as u64 };
                (format!("f{s}"), size, if s == 1 { 2 } else { 1 })
            })
            .collect();
        v.push(("f1-link".into(), 1, 2));
        v.push(("long-link".into(), 3500, 1));
        v.sort();
        v
    };
    for round in 0..2 {
        let mut seen = walk();
        let sub = seen.iter().position(|(n, _, _)| n == "sub").unwrap();
        seen.remove(sub);
        assert_eq!(seen, expected(4097), "round {round}");
        // The kernel forgets the nodes the listing gave it; they must still resolve.
        std::fs::write("/proc/sys/vm/drop_caches", "2").unwrap();
    }
    // Changes through the mount show in the next walk.
    let mut f = fs::OpenOptions::new()
        .append(true)
        .open(m.p("d/f4097"))
        .unwrap();
    f.write_all(&[b'y'; 3]).unwrap();
    drop(f);
    let mut seen = walk();
    seen.retain(|(n, _, _)| n != "sub");
    assert_eq!(seen, expected(4100));
    fs::remove_file(m.p("d/f1-link")).unwrap();
    let seen = walk();
    assert!(seen.iter().any(|(n, _, l)| n == "f1" && *l == 1));
    assert!(!seen.iter().any(|(n, _, _)| n == "f1-link"));
    m.unmount();
    vol.assert_fsck_clean();
}
