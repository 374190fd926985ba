//! Device nodes, long symlink targets, and what the kernel caches of names, links and listings.

use super::*;

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
