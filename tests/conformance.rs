//! Behaviours xfstests and stress tools found differing from a Linux filesystem, each checked
//! through a real mount against what ext4 does (the plain directory beside the cipher dir).

mod common;

use std::ffi::CString;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::Command;

use common::{TestVolume, ok, require_root};

#[path = "conformance/xattr_space.rs"]
mod xattr_space;

fn c(path: &Path) -> CString {
    CString::new(path.as_os_str().as_bytes()).unwrap()
}

/// Runs `sh -c script` as uid/gid 1000 (no capabilities) with `$F` set to `file`.
fn as_user(file: &Path, script: &str) {
    let out = Command::new("setpriv")
        .args([
            "--reuid",
            "1000",
            "--regid",
            "1000",
            "--clear-groups",
            "sh",
            "-c",
            script,
        ])
        .env("F", file)
        .output()
        .unwrap();
    assert!(out.status.success(), "{script}: {}", common::stderr(&out));
}

/// A modified set-id program loses its set-id bits: a write (buffered or direct), fallocate,
/// a punched hole or a truncate by its unprivileged owner drops set-user-id, and set-group-id
/// where group execute is set, as on ext4 (generic/355, 683-685); the mode `stat` shows at once.
#[test]
fn writes_by_an_unprivileged_user_drop_set_id_bits() {
    require_root("chown to another user and setpriv");
    let vol = TestVolume::new();
    let m = vol.mount_with(&["-o", "allow_other,suid"]);
    let plain = vol.dir.path().join("plain");
    fs::create_dir(&plain).unwrap();
    let steps = [
        "dd if=/dev/zero of=\"$F\" bs=4k count=1 conv=notrunc status=none",
        "dd if=/dev/zero of=\"$F\" bs=4k count=1 conv=notrunc oflag=direct status=none",
        "fallocate -l 16384 \"$F\"",
        "fallocate -p -o 0 -l 4096 \"$F\"",
        "truncate -s 100 \"$F\"",
    ];
    for (i, step) in steps.iter().enumerate() {
        // Group 0: the writer is not in the file's group, so set-group-id goes even without
        // group execute (the kernel's rule since 6.2).
        for (mode, gid) in [(0o6755, 1000), (0o6745, 1000), (0o6745, 0), (0o4755, 1000)] {
            let mut modes = Vec::new();
            for root in [&m.path, &plain] {
                let f = root.join(format!("prog-{i}-{mode:o}-{gid}"));
                fs::write(&f, vec![1u8; 8192]).unwrap();
                std::os::unix::fs::chown(&f, Some(1000), Some(gid)).unwrap();
                fs::set_permissions(&f, fs::Permissions::from_mode(mode)).unwrap();
                as_user(&f, step);
                modes.push(fs::metadata(&f).unwrap().mode() & 0o7777);
            }
            assert_eq!(
                modes[0], modes[1],
                "{step} on mode {mode:o}: sealfs vs ext4"
            );
            assert_eq!(modes[0] & 0o4000, 0, "{step}: set-user-id kept");
        }
    }
    // Root keeps them (CAP_FSETID), as on ext4.
    let f = m.p("root-prog");
    fs::write(&f, b"x").unwrap();
    fs::set_permissions(&f, fs::Permissions::from_mode(0o6755)).unwrap();
    fs::OpenOptions::new().append(true).open(&f).unwrap();
    std::io::Write::write_all(
        &mut fs::OpenOptions::new().append(true).open(&f).unwrap(),
        b"y",
    )
    .unwrap();
    assert_eq!(fs::metadata(&f).unwrap().mode() & 0o7777, 0o6755);
}

/// Times before 1970 (generic/258) read back as set, nanoseconds included, before and after a
/// remount.
#[test]
fn times_before_1970_read_back() {
    let vol = TestVolume::new();
    let times = [
        (-1, 0),
        (-1, 500_000_000),
        (-337_689_764, 822_137_477),
        (-2_000_000_000, 1),
    ];
    {
        let m = vol.mount();
        for (i, (secs, nanos)) in times.iter().enumerate() {
            let f = m.p(&format!("t{i}"));
            fs::write(&f, b"old").unwrap();
            let ts = [
                libc::timespec {
                    tv_sec: *secs,
                    tv_nsec: *nanos,
                },
                libc::timespec {
                    tv_sec: *secs,
                    tv_nsec: *nanos,
                },
            ];
            let rc = unsafe { libc::utimensat(libc::AT_FDCWD, c(&f).as_ptr(), ts.as_ptr(), 0) };
            assert_eq!(rc, 0);
            let md = fs::metadata(&f).unwrap();
            assert_eq!((md.mtime(), md.mtime_nsec()), (*secs, *nanos));
            assert_eq!((md.atime(), md.atime_nsec()), (*secs, *nanos));
        }
    }
    let m = vol.mount();
    for (i, (secs, nanos)) in times.iter().enumerate() {
        let md = fs::metadata(m.p(&format!("t{i}"))).unwrap();
        assert_eq!(
            (md.mtime(), md.mtime_nsec()),
            (*secs, *nanos),
            "t{i} after remount"
        );
    }
}

/// RENAME_WHITEOUT of a long name (generic/013) leaves the whiteout under the old name with
/// its sidecar, so both names list, `rm -rf` works and fsck finds nothing; a rename between
/// two links of one inode changes nothing and keeps both names' sidecars.
#[test]
fn long_names_keep_their_sidecars_through_whiteouts_and_link_renames() {
    require_root("RENAME_WHITEOUT needs CAP_MKNOD");
    let vol = TestVolume::new();
    let long = |c: char| c.to_string().repeat(200);
    {
        let m = vol.mount();
        fs::write(m.p(&long('a')), b"moved").unwrap();
        let rc = unsafe {
            libc::renameat2(
                libc::AT_FDCWD,
                c(&m.p(&long('a'))).as_ptr(),
                libc::AT_FDCWD,
                c(&m.p(&long('b'))).as_ptr(),
                libc::RENAME_WHITEOUT,
            )
        };
        assert_eq!(rc, 0, "{}", std::io::Error::last_os_error());
        let whiteout = fs::symlink_metadata(m.p(&long('a'))).unwrap();
        assert!(std::os::unix::fs::FileTypeExt::is_char_device(
            &whiteout.file_type()
        ));
        assert_eq!(whiteout.rdev(), 0);
        assert_eq!(fs::read(m.p(&long('b'))).unwrap(), b"moved");

        fs::hard_link(m.p(&long('b')), m.p(&long('c'))).unwrap();
        fs::rename(m.p(&long('b')), m.p(&long('c'))).unwrap();
        assert_eq!(fs::read(m.p(&long('b'))).unwrap(), b"moved");
        assert_eq!(fs::read(m.p(&long('c'))).unwrap(), b"moved");
        let mut names: Vec<_> = fs::read_dir(&m.path)
            .unwrap()
            .map(|e| e.unwrap().file_name().len())
            .collect();
        names.sort();
        assert_eq!(names, vec![200, 200, 200]);
    }
    vol.assert_fsck_clean();
    let m = vol.mount();
    for n in ['a', 'b', 'c'] {
        fs::symlink_metadata(m.p(&long(n))).unwrap();
    }
    ok(Command::new("sh")
        .arg("-c")
        .arg(format!("rm -rf {}/*", m.path.display()))
        .output()
        .unwrap());
    assert_eq!(fs::read_dir(&m.path).unwrap().count(), 0);
    drop(m);
    vol.assert_fsck_clean();
}

/// A script that unmounts and mounts again at once (generic/163, 524, 604) is not refused
/// while the old daemon is still exiting: umount(2) returns before the daemon lets go of its
/// claim, and the new mount waits for it. `sealfs umount` returns only once the daemon has
/// exited, and takes the cipher dir as well as the mount point.
#[test]
fn mount_right_after_umount_waits_for_the_old_daemon() {
    require_root("umount(2)");
    let mut vol = TestVolume::new();
    vol.env
        .push(("SEALFS_SLOW_AT".into(), "unmounted:1500".into()));
    let first = vol.mount();
    fs::write(first.p("f"), b"kept").unwrap();
    nix::mount::umount(&first.path).unwrap();
    // (Another mount point, so that dropping `first` cannot unmount it.)
    let mut elsewhere = vol.second_mountpoint();
    elsewhere.env = vol.env.clone();
    let second = elsewhere.mount();
    assert_eq!(fs::read(second.p("f")).unwrap(), b"kept");
    drop(first);

    let pid = second.pid();
    let out = Command::new(common::BIN)
        .args(["umount", vol.cipher_str()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "sealfs umount CIPHERDIR: {}",
        common::stderr(&out)
    );
    let state = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    assert!(
        state.is_empty() || state.split(' ').nth(2) == Some("Z"),
        "sealfs umount returned before the daemon exited: {state}"
    );
    let third = vol.mount();
    assert_eq!(fs::read(third.p("f")).unwrap(), b"kept");
}

/// The mount table names the mount as peers do: type fuse.sealfs, the cipher dir as source,
/// so findmnt -S, findmnt -t and df -t find it.
#[test]
fn the_mount_table_names_type_and_cipher_dir() {
    let vol = TestVolume::new();
    let m = vol.mount();
    let cipher = fs::canonicalize(&vol.cipher).unwrap();
    let out = ok(Command::new("findmnt")
        .args(["-n", "-o", "TARGET,FSTYPE", "-S"])
        .arg(&cipher)
        .output()
        .unwrap());
    assert_eq!(
        out.split_whitespace().collect::<Vec<_>>(),
        [m.path.to_str().unwrap(), "fuse.sealfs"]
    );
    let df = ok(Command::new("df")
        .args(["-t", "fuse.sealfs"])
        .output()
        .unwrap());
    assert!(df.contains(cipher.to_str().unwrap()), "{df}");
}

/// mount(8) through the helper: a mount by root gets dev and suid unless nodev/nosuid are
/// given (libmount drops the defaults before calling a helper, as for mount.fuse);
/// `-o remount,ro` and `remount,rw` change the live mount, keeping its other flags.
#[test]
fn the_helper_takes_what_mount_fuse_takes() {
    require_root("dev and suid mounts");
    let vol = TestVolume::new();
    let mnt = fs::canonicalize(&vol.mnt).unwrap();
    let key = fs::read_dir(&vol.keys)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let helper = Path::new(env!("CARGO_MANIFEST_DIR")).join("packaging/mount.fuse.sealfs");
    let run = |args: &[&str]| {
        ok(Command::new(&helper)
            .args(args)
            .env("SEALFS_BIN", common::BIN)
            .output()
            .unwrap())
    };
    let flags = || {
        let out = ok(Command::new("findmnt")
            .args(["-n", "-o", "VFS-OPTIONS"])
            .arg(&mnt)
            .output()
            .unwrap());
        out.trim().split(',').map(String::from).collect::<Vec<_>>()
    };
    let cipher = vol.cipher_str().to_string();
    let mount = |opts: &str| {
        run(&[
            &cipher,
            mnt.to_str().unwrap(),
            "-o",
            &format!("{opts},keyfile={}", key.display()),
        ])
    };
    mount("rw");
    let got = flags();
    assert!(
        !got.contains(&"nodev".to_string()) && !got.contains(&"nosuid".to_string()),
        "{got:?}"
    );
    fs::write(mnt.join("f"), b"x").unwrap();
    run(&[&cipher, mnt.to_str().unwrap(), "-o", "remount,ro"]);
    assert!(flags().contains(&"ro".to_string()), "{:?}", flags());
    let err = fs::write(mnt.join("g"), b"x").unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EROFS));
    run(&[mnt.to_str().unwrap(), "-n", "-o", "remount,rw"]);
    fs::write(mnt.join("g"), b"x").unwrap();
    ok(Command::new(common::BIN)
        .arg("umount")
        .arg(&mnt)
        .output()
        .unwrap());

    mount("nodev,nosuid");
    let got = flags();
    assert!(
        got.contains(&"nodev".to_string()) && got.contains(&"nosuid".to_string()),
        "{got:?}"
    );
    run(&[&cipher, mnt.to_str().unwrap(), "-o", "remount,ro"]);
    let got = flags();
    assert!(
        got.contains(&"nodev".to_string()) && got.contains(&"ro".to_string()),
        "{got:?}"
    );
    ok(Command::new(common::BIN)
        .arg("umount")
        .arg(&mnt)
        .output()
        .unwrap());
}

/// What `sh -c script` prints in `dir` (stdout and stderr, in order), and whether it
/// succeeded.
fn sh_in(dir: &Path, script: &str) -> String {
    let out = Command::new("sh")
        .args(["-c", &format!("( {script} ) 2>&1")])
        .current_dir(dir)
        .output()
        .unwrap();
    format!(
        "{}{}[{}]",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        out.status.success()
    )
}

/// Whether uid 1000 (not in group 0) can run `script` with `$F` set to `file`.
fn user_may(file: &Path, script: &str) -> bool {
    Command::new("setpriv")
        .args(["--reuid", "1000", "--regid", "1000", "--clear-groups"])
        .args(["sh", "-c", script])
        .env("F", file)
        .stderr(std::process::Stdio::null())
        .status()
        .unwrap()
        .success()
}

/// POSIX ACLs as on ext4: setfacl's ACLs and the modes they give read back the same, chmod
/// moves the mask, default ACLs are inherited (the umask ignored under one, applied without),
/// `cp -a` keeps them, the kernel enforces them, a non-member setting one drops
/// set-group-id, and all of it survives a remount; the cipher dir holds them sealed.
#[test]
fn posix_acls_behave_as_on_ext4() {
    require_root("setfacl for other users, and setpriv");
    let vol = TestVolume::new();
    let m = vol.mount_with(&["-o", "allow_other"]);
    let plain = vol.dir.path().join("plain");
    fs::create_dir(&plain).unwrap();
    let script = "umask 022; echo data > f; \
        setfacl -m u:1000:rwx,g:1000:r f && getfacl -n f; chmod 640 f; getfacl -n f; \
        stat -c %a f; setfacl -m m::rwx f; stat -c %a f; getfattr -m - f; \
        setfacl -b f; getfacl -n f; stat -c %a f; getfattr -m - f; \
        mkdir d; setfacl -d -m u:1000:rwx,g::r-x,o::- d; umask 077; \
        mkdir d/sub; echo x > d/file; mkdir -m 700 d/m700; mkdir d/sub/deeper; \
        mkdir e; touch e/plain; \
        stat -c '%a %n' d/sub d/file d/m700 d/sub/deeper e e/plain; \
        setfacl -m g::rwx,u::r-x d/file; chmod 750 d/sub; setfacl -k d; mkdir d/after; \
        cp -a d dcopy; find d dcopy e | sort | xargs getfacl -n; \
        mkfifo fifo; setfacl -m u:1000:r fifo; echo fifo $?";
    let on_mount = sh_in(&m.path, script);
    let on_ext4 = sh_in(&plain, script);
    // The one difference (docs/GUARANTEES.md): no ACL on a fifo, socket or device node.
    let (mount_head, mount_fifo) = on_mount.split_once("setfacl: fifo").unwrap();
    assert_eq!(
        Some(mount_head),
        on_ext4.strip_suffix("fifo 0\n[true]"),
        "sealfs vs ext4"
    );
    assert!(
        mount_fifo.contains("Operation not supported") && mount_fifo.ends_with("fifo 1\n[true]"),
        "{mount_fifo}"
    );
    assert!(mount_head.contains("user:1000:rwx"), "{mount_head}");

    // Enforced by the kernel: a 0600 file becomes readable to uid 1000 by its ACL only.
    for root in [&m.path, &plain] {
        let f = root.join("secret");
        fs::write(&f, b"s").unwrap();
        fs::set_permissions(&f, fs::Permissions::from_mode(0o600)).unwrap();
        assert!(!user_may(&f, "cat \"$F\""));
        ok(Command::new("setfacl")
            .args(["-m", "u:1000:r"])
            .arg(&f)
            .output()
            .unwrap());
        assert!(user_may(&f, "cat \"$F\""), "{}", f.display());
        assert!(!user_may(&f, "echo x >> \"$F\""));
        ok(Command::new("setfacl")
            .args(["-x", "u:1000"])
            .arg(&f)
            .output()
            .unwrap());
        assert!(!user_may(&f, "cat \"$F\""));
        // Its owner, not in its group, sets an ACL: set-group-id goes.
        let g = root.join("sgid");
        fs::write(&g, b"g").unwrap();
        std::os::unix::fs::chown(&g, Some(1000), Some(0)).unwrap();
        fs::set_permissions(&g, fs::Permissions::from_mode(0o2775)).unwrap();
        assert!(user_may(&g, "setfacl -m u:1000:rwx \"$F\""));
    }
    let modes: Vec<u32> = [&m.path, &plain]
        .iter()
        .map(|r| fs::metadata(r.join("sgid")).unwrap().mode() & 0o7777)
        .collect();
    assert_eq!(modes[0], modes[1]);
    assert_eq!(modes[0] & 0o2000, 0);

    let listing = "find . ! -name fifo | sort | xargs getfacl -n; stat -c '%a %n' d/sub d/file";
    let before = sh_in(&m.path, listing);
    assert_eq!(before, sh_in(&plain, listing));
    let backing = sh_in(&vol.cipher, "getfattr -R -m - -d . 2>/dev/null");
    assert!(!backing.contains("posix_acl"), "{backing}");
    drop(m);
    let m = vol.mount_with(&["-o", "allow_other"]);
    assert_eq!(sh_in(&m.path, listing), before, "after a remount");
    drop(m);
    vol.assert_fsck_clean();
}

/// syncfs(2) on a mount never fails with EINTR because the caller's signals land (stress-ng's
/// io stressor met it once): a process taking a SIGALRM every 100 µs (a handler installed
/// without SA_RESTART) calls syncfs in a loop while another writes files and closes them.
#[test]
fn syncfs_is_not_interrupted_by_signals() {
    let vol = TestVolume::new();
    let m = vol.mount();
    let script = r#"
import ctypes, os, signal, sys, threading
libc = ctypes.CDLL(None, use_errno=True)
d = sys.argv[1]
stop = False
def writer():
    i = 0
    while not stop:
        with open(os.path.join(d, "w%d" % (i % 20)), "wb") as f:
            f.write(b"x" * 262144)
        i += 1
t = threading.Thread(target=writer)
t.start()
signal.signal(signal.SIGALRM, lambda *a: None)
signal.setitimer(signal.ITIMER_REAL, 0.0001, 0.0001)
fd = os.open(d, os.O_RDONLY | os.O_DIRECTORY)
errors = {}
for _ in range(3000):
    if libc.syncfs(fd) != 0:
        e = ctypes.get_errno()
        errors[e] = errors.get(e, 0) + 1
signal.setitimer(signal.ITIMER_REAL, 0)
stop = True
t.join()
print(errors)
"#;
    let out = Command::new("python3")
        .args(["-c", script])
        .arg(&m.path)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", common::stderr(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "{}");
}

/// A file handle as name_to_handle_at gives it.
#[repr(C)]
struct Handle {
    bytes: libc::c_uint,
    kind: libc::c_int,
    data: [u8; 128],
}

fn handle_of(path: &Path) -> Handle {
    let mut h = Handle {
        bytes: 128,
        kind: 0,
        data: [0; 128],
    };
    let mut mount_id = 0;
    let rc = unsafe {
        libc::name_to_handle_at(
            libc::AT_FDCWD,
            c(path).as_ptr(),
            (&raw mut h).cast(),
            &mut mount_id,
            0,
        )
    };
    assert_eq!(
        rc,
        0,
        "name_to_handle_at {}: {}",
        path.display(),
        std::io::Error::last_os_error()
    );
    h
}

/// Opens `handle` through `root`'s filesystem: what it reads (a file's content, a directory's
/// sorted names), or the errno.
fn open_handle(root: &Path, handle: &mut Handle) -> Result<String, i32> {
    let mount = fs::File::open(root).unwrap();
    let fd = unsafe {
        libc::open_by_handle_at(
            std::os::fd::AsRawFd::as_raw_fd(&mount),
            (handle as *mut Handle).cast(),
            libc::O_RDONLY,
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error().raw_os_error().unwrap());
    }
    let path = format!("/proc/self/fd/{fd}");
    let out = if fs::metadata(&path).unwrap().is_dir() {
        let mut names: Vec<String> = fs::read_dir(&path)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names.join(",")
    } else {
        fs::read_to_string(&path).unwrap()
    };
    unsafe { libc::close(fd) };
    Ok(out)
}

fn drop_caches() {
    fs::write("/proc/sys/vm/drop_caches", "2").unwrap();
}

/// open_by_handle_at works as on ext4 (xfstests generic/426, 467, 477): after the kernel
/// dropped the inodes, for files and directories, after a rename into another directory,
/// and a deleted file's handle is stale, never another file's.
#[test]
fn file_handles_open_after_the_kernel_forgets_as_on_ext4() {
    require_root("open_by_handle_at (CAP_DAC_READ_SEARCH) and drop_caches");
    let vol = TestVolume::new();
    let m = vol.mount();
    let plain = vol.dir.path().join("plain");
    fs::create_dir(&plain).unwrap();
    let mut outcomes = Vec::new();
    for root in [&m.path, &plain] {
        fs::create_dir_all(root.join("d/sub")).unwrap();
        fs::create_dir(root.join("e")).unwrap();
        fs::write(root.join("d/f"), "kept").unwrap();
        fs::write(root.join("d/gone"), "deleted").unwrap();
        let mut f = handle_of(&root.join("d/f"));
        let mut gone = handle_of(&root.join("d/gone"));
        let mut d = handle_of(&root.join("d"));
        let mut sub = handle_of(&root.join("d/sub"));
        let mut seen = Vec::new();
        drop_caches();
        seen.push(open_handle(root, &mut f));
        seen.push(open_handle(root, &mut d));
        seen.push(open_handle(root, &mut sub));
        fs::rename(root.join("d/f"), root.join("e/moved")).unwrap();
        fs::rename(root.join("d/sub"), root.join("e/sub")).unwrap();
        fs::remove_file(root.join("d/gone")).unwrap();
        drop_caches();
        seen.push(open_handle(root, &mut f));
        seen.push(open_handle(root, &mut sub));
        seen.push(open_handle(root, &mut gone));
        // New files may take the deleted one's inode number: still stale.
        for i in 0..50 {
            fs::write(root.join(format!("e/new{i}")), "new").unwrap();
        }
        drop_caches();
        seen.push(open_handle(root, &mut gone));
        seen.push(open_handle(root, &mut d));
        outcomes.push(seen);
    }
    assert_eq!(outcomes[0], outcomes[1], "sealfs vs ext4");
    assert_eq!(outcomes[0][0], Ok("kept".into()));
    assert_eq!(outcomes[0][5], Err(libc::ESTALE));
    drop(m);
    vol.assert_fsck_clean();
}

/// In a tenant's directory a handle's file opens under the tenant's keys, and its directories
/// list under them (their policy found again from the markers above them in the backing tree).
#[test]
fn file_handles_open_under_a_tenants_keys() {
    require_root("open_by_handle_at (CAP_DAC_READ_SEARCH) and drop_caches");
    let vol = TestVolume::new();
    let key = vol.dir.path().join("tenant.key");
    {
        let m = vol.mount();
        fs::create_dir(m.p("tenant")).unwrap();
    }
    common::set_keyfile_policy(&vol, "/tenant", &key, "tenant");
    let m = vol.mount();
    fs::create_dir_all(m.p("tenant/a/b")).unwrap();
    fs::write(m.p("tenant/a/b/f"), "tenant data").unwrap();
    fs::write(m.p("tenant/a/x"), "x").unwrap();
    let mut f = handle_of(&m.p("tenant/a/b/f"));
    let mut b = handle_of(&m.p("tenant/a/b"));
    let mut a = handle_of(&m.p("tenant/a"));
    drop_caches();
    assert_eq!(open_handle(&m.path, &mut b), Ok("f".into()));
    assert_eq!(open_handle(&m.path, &mut a), Ok("b,x".into()));
    drop_caches();
    assert_eq!(open_handle(&m.path, &mut f), Ok("tenant data".into()));
}
