//! Reverse mode through real mounts: a plaintext tree, its encrypted read-only view, a copy of
//! the view (as a backup tool makes) and a forward mount of that copy.

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{FileExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::{Mounted, Rng, TestVolume, ok, sealfs, test_dir};

#[path = "reverse/tampering_and_admin.rs"]
mod tampering_and_admin;

/// A reverse volume over `<tmp>/plain`, keys in `<tmp>/keys`; `cipher` is the plain dir.
fn reverse_volume(extra: &[&str]) -> TestVolume {
    let dir = test_dir();
    let plain = dir.path().join("plain");
    fs::create_dir(&plain).unwrap();
    let keys = dir.path().join("keys");
    let mut args = vec!["init", "--reverse", plain.to_str().unwrap()];
    args.extend_from_slice(extra);
    ok(sealfs(&keys, &args));
    TestVolume::existing(dir, plain, keys)
}

fn mount_view(vol: &TestVolume, extra: &[&str]) -> Mounted {
    let mut args = vec!["--reverse"];
    args.extend_from_slice(extra);
    vol.mount_with(&args)
}

/// `cp -a` of the view: what rsync/restic/borg would carry away (links, modes, times kept).
fn copy_view(view: &Mounted, to: &Path) {
    fs::create_dir_all(to).unwrap();
    let out = Command::new("cp")
        .arg("-a")
        .arg(format!("{}/.", view.path.display()))
        .arg(to)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "cp -a failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A forward volume over a copy of the view, with the reverse volume's keys.
fn forward_over(copy: &Path, vol: &TestVolume) -> TestVolume {
    TestVolume::existing(test_dir(), copy.to_path_buf(), vol.keys.clone())
}

#[derive(Debug, PartialEq, Eq)]
enum Item {
    Dir,
    File(Vec<u8>),
    Link(PathBuf),
    Other(u32),
}

/// Everything under `root` by relative path, leaving out reverse mode's private files.
fn snapshot(root: &Path) -> BTreeMap<PathBuf, Item> {
    let mut out = BTreeMap::new();
    let mut pending = vec![PathBuf::new()];
    while let Some(rel) = pending.pop() {
        for entry in fs::read_dir(root.join(&rel)).unwrap() {
            let entry = entry.unwrap();
            let name = entry.file_name();
            if rel.as_os_str().is_empty() && name.to_string_lossy().starts_with(".sealfs.reverse.")
            {
                continue;
            }
            let path = rel.join(&name);
            let meta = fs::symlink_metadata(root.join(&path)).unwrap();
            let item = if meta.is_dir() {
                pending.push(path.clone());
                Item::Dir
            } else if meta.file_type().is_symlink() {
                Item::Link(fs::read_link(root.join(&path)).unwrap())
            } else if meta.is_file() {
                Item::File(fs::read(root.join(&path)).unwrap())
            } else {
                Item::Other(meta.mode() & libc::S_IFMT)
            };
            out.insert(path, item);
        }
    }
    out
}

fn long_name() -> String {
    "long-".repeat(40) + "end"
}

/// A tree with every file type, holes, hard links, long and unicode names, odd modes.
fn populate(plain: &Path) {
    fs::create_dir_all(plain.join("docs/deep/er")).unwrap();
    fs::write(plain.join("hello.txt"), b"hello reverse\n").unwrap();
    fs::write(plain.join("empty"), b"").unwrap();
    let mut rng = Rng(20261122);
    for (name, len) in [("one-block", 4096), ("block-plus", 4097), ("big", 300_000)] {
        let data: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
        fs::write(plain.join("docs").join(name), data).unwrap();
    }
    let sparse = fs::File::create(plain.join("sparse")).unwrap();
    sparse.set_len(8 << 20).unwrap();
    sparse.write_all_at(b"middle", 4 << 20).unwrap();
    fs::write(plain.join("docs/deep/er/héllo wörld ✓.txt"), "unicode\n").unwrap();
    fs::write(plain.join("日本語のファイル"), "名前\n").unwrap();
    fs::write(plain.join("docs").join(long_name()), b"long name\n").unwrap();
    fs::write(plain.join("x".repeat(255)), b"longest name\n").unwrap();
    fs::hard_link(plain.join("hello.txt"), plain.join("docs/hard-link")).unwrap();
    std::os::unix::fs::symlink("../hello.txt", plain.join("docs/rel-link")).unwrap();
    std::os::unix::fs::symlink("/etc/hostname", plain.join("abs-link")).unwrap();
    std::os::unix::fs::symlink("d".repeat(1000), plain.join("long-target")).unwrap();
    nix::unistd::mkfifo(
        &plain.join("fifo"),
        nix::sys::stat::Mode::from_bits_truncate(0o640),
    )
    .unwrap();
    let socket = std::os::unix::net::UnixListener::bind(plain.join("socket")).unwrap();
    drop(socket);
    if nix::unistd::geteuid().is_root() {
        nix::sys::stat::mknod(
            &plain.join("null-device"),
            nix::sys::stat::SFlag::S_IFCHR,
            nix::sys::stat::Mode::from_bits_truncate(0o666),
            nix::sys::stat::makedev(1, 3),
        )
        .unwrap();
    }
    fs::set_permissions(plain.join("docs/big"), fs::Permissions::from_mode(0o600)).unwrap();
    fs::set_permissions(plain.join("empty"), fs::Permissions::from_mode(0o4755)).unwrap();
    let old = nix::sys::time::TimeSpec::new(1_500_000_000, 0);
    nix::sys::stat::utimensat(
        nix::fcntl::AT_FDCWD,
        &plain.join("docs/one-block"),
        &old,
        &old,
        nix::sys::stat::UtimensatFlags::NoFollowSymlink,
    )
    .unwrap();
}

/// Same names, types, contents, link targets, modes, owners, mtimes (to the second) and
/// hard-link groups.
fn assert_same_tree(plain: &Path, restored: &Path) {
    assert_eq!(snapshot(plain), snapshot(restored), "contents differ");
    for path in snapshot(plain).keys() {
        let (a, b) = (
            fs::symlink_metadata(plain.join(path)).unwrap(),
            fs::symlink_metadata(restored.join(path)).unwrap(),
        );
        assert_eq!(a.mode(), b.mode(), "mode of {path:?}");
        assert_eq!((a.uid(), a.gid()), (b.uid(), b.gid()), "owner of {path:?}");
        if !a.is_dir() {
            assert_eq!(a.len(), b.len(), "size of {path:?}");
            assert_eq!(a.mtime(), b.mtime(), "mtime of {path:?}");
        }
        assert_eq!(a.nlink(), b.nlink(), "links of {path:?}");
        assert_eq!(a.rdev(), b.rdev(), "device number of {path:?}");
    }
    let (a, b) = (
        fs::metadata(restored.join("hello.txt")).unwrap(),
        fs::metadata(restored.join("docs/hard-link")).unwrap(),
    );
    assert_eq!(a.ino(), b.ino(), "hard links stay linked");
}

#[test]
fn tree_round_trips_through_view_copy_and_forward_mount() {
    let vol = reverse_volume(&[]);
    populate(&vol.cipher);
    let view = mount_view(&vol, &[]);
    // Sizes in the view are exact before anything is read: 24-byte preamble, 28 per block.
    let listed = snapshot(&view.path);
    assert!(listed.contains_key(Path::new("sealfs.conf")));
    assert!(listed.keys().any(|p| p.starts_with("sealfs.headers")));
    for (path, item) in &listed {
        if let Item::File(bytes) = item {
            let stat = fs::metadata(view.path.join(path)).unwrap();
            assert_eq!(stat.len(), bytes.len() as u64, "stat size of {path:?}");
        }
    }
    let sparse_view_len = 24 + (8u64 << 20) / 4096 * (4096 + 28);
    assert!(
        listed
            .values()
            .any(|i| matches!(i, Item::File(b) if b.len() as u64 == sparse_view_len))
    );
    // No plaintext name, and none of the private files, in the view.
    for path in listed.keys() {
        let text = path.to_string_lossy();
        assert!(
            !text.contains("hello") && !text.contains("docs") && !text.contains(".sealfs"),
            "{text}"
        );
    }

    let copy = vol.dir.path().join("copy");
    copy_view(&view, &copy);
    drop(view);
    let forward = forward_over(&copy, &vol);
    let m = forward.mount();
    assert_same_tree(&vol.cipher, &m.path);
    drop(m);
    let out = forward.run(&["fsck", copy.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "fsck of the copy: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn views_are_byte_identical_across_mounts() {
    let vol = reverse_volume(&[]);
    populate(&vol.cipher);
    let first = snapshot(&mount_view(&vol, &[]).path);
    let second = snapshot(&mount_view(&vol, &[]).path);
    assert_eq!(first.len(), second.len());
    assert!(first == second, "a remount gives other bytes");

    // Reads at any offset and length are slices of the one file.
    let view = mount_view(&vol, &[]);
    let mut rng = Rng(7);
    for (path, item) in first.iter() {
        let Item::File(whole) = item else { continue };
        let file = fs::File::open(view.path.join(path)).unwrap();
        for _ in 0..20 {
            let offset = rng.below(whole.len() as u64 + 10);
            let len = rng.below(70_000) as usize;
            let mut buf = vec![0u8; len];
            let mut got = 0;
            while got < len {
                let n = file.read_at(&mut buf[got..], offset + got as u64).unwrap();
                if n == 0 {
                    break;
                }
                got += n;
            }
            let start = (offset as usize).min(whole.len());
            let end = (start + len).min(whole.len());
            assert_eq!(
                &buf[..got],
                &whole[start..end],
                "{path:?} at {offset}+{len}"
            );
        }
    }
}

fn data_files(snap: &BTreeMap<PathBuf, Item>) -> BTreeMap<PathBuf, &Vec<u8>> {
    snap.iter()
        // Leave out the config, headers, and the mount claim a forward mount of a copy leaves.
        .filter(|(p, _)| {
            !p.starts_with("sealfs.headers")
                && !p.starts_with("sealfs.mounts")
                && *p != Path::new("sealfs.conf")
                && *p != Path::new("sealfs.lock")
        })
        .filter_map(|(p, i)| match i {
            Item::File(b) => Some((p.clone(), b)),
            _ => None,
        })
        .collect()
}

/// Sealed blocks (4096 + 28 bytes after the 24-byte preamble) that differ.
fn changed_blocks(a: &[u8], b: &[u8]) -> usize {
    assert_eq!(a[..24], b[..24], "the preamble (file id) is stable");
    let (a, b) = (a[24..].chunks(4124), b[24..].chunks(4124));
    a.zip(b).filter(|(x, y)| x != y).count()
}

#[test]
fn a_change_changes_only_its_own_blocks() {
    let vol = reverse_volume(&[]);
    let plain = &vol.cipher;
    let mut rng = Rng(99);
    let data: Vec<u8> = (0..64 * 4096).map(|_| rng.next() as u8).collect();
    fs::write(plain.join("db"), &data).unwrap();
    fs::write(plain.join("doc"), &data[..100_000]).unwrap();
    fs::write(plain.join("other"), b"untouched").unwrap();
    let view = mount_view(&vol, &[]);
    let before = snapshot(&view.path);

    // In place: ten bytes inside block 5.
    let file = fs::OpenOptions::new()
        .write(true)
        .open(plain.join("db"))
        .unwrap();
    file.write_all_at(b"0123456789", 5 * 4096 + 100).unwrap();
    drop(file);
    // An editor's save: a new file renamed over the old one, one block changed.
    let mut edited = data[..100_000].to_vec();
    edited[70_000] ^= 0xff;
    fs::write(plain.join(".doc.swp"), &edited).unwrap();
    fs::rename(plain.join(".doc.swp"), plain.join("doc")).unwrap();
    std::thread::sleep(Duration::from_millis(1200));
    let after = snapshot(&view.path);

    let (old, new) = (data_files(&before), data_files(&after));
    assert_eq!(old.len(), 3);
    assert_eq!(
        old.keys().collect::<Vec<_>>(),
        new.keys().collect::<Vec<_>>(),
        "same names"
    );
    let mut changes: Vec<usize> = old
        .iter()
        .map(|(path, bytes)| changed_blocks(bytes, new[path]))
        .collect();
    changes.sort();
    assert_eq!(changes, vec![0, 1, 1], "one block each in db and doc");
    let headers = |s: &BTreeMap<PathBuf, Item>| {
        s.iter()
            .filter(|(p, _)| p.starts_with("sealfs.headers") || *p == Path::new("sealfs.conf"))
            .map(|(p, i)| format!("{p:?}{i:?}"))
            .collect::<Vec<_>>()
    };
    assert_eq!(
        headers(&before),
        headers(&after),
        "headers and config unchanged"
    );
}

#[test]
fn plaintext_changes_show_without_a_remount() {
    let vol = reverse_volume(&[]);
    let plain = &vol.cipher;
    fs::write(plain.join("a"), b"first").unwrap();
    let view = mount_view(&vol, &[]);
    let count = |view: &Mounted| data_files(&snapshot(&view.path)).len();
    let headers = |view: &Mounted| {
        snapshot(&view.path)
            .keys()
            .filter(|p| p.components().count() == 3 && p.starts_with("sealfs.headers"))
            .count()
    };
    assert_eq!((count(&view), headers(&view)), (1, 1));

    fs::write(plain.join("b"), b"second").unwrap();
    fs::create_dir(plain.join("dir")).unwrap();
    fs::write(plain.join("dir/c"), b"third").unwrap();
    assert_eq!((count(&view), headers(&view)), (3, 3));

    // Growth shows in the size at once (the attribute TTL is one second).
    let mut f = fs::OpenOptions::new()
        .append(true)
        .open(plain.join("a"))
        .unwrap();
    f.write_all(&[7u8; 5000]).unwrap();
    drop(f);
    std::thread::sleep(Duration::from_millis(1200));
    let sizes: Vec<u64> = data_files(&snapshot(&view.path))
        .values()
        .map(|b| b.len() as u64)
        .collect();
    assert!(
        sizes.contains(&(24 + 4096 + 28 + (5005 - 4096) + 28)),
        "{sizes:?}"
    );

    fs::rename(plain.join("b"), plain.join("dir/b2")).unwrap();
    fs::remove_file(plain.join("a")).unwrap();
    std::thread::sleep(Duration::from_millis(1200));
    assert_eq!((count(&view), headers(&view)), (2, 2));

    // The copy of the changed view restores the changed tree.
    let copy = vol.dir.path().join("copy");
    copy_view(&view, &copy);
    let forward = forward_over(&copy, &vol);
    let m = forward.mount();
    assert_eq!(fs::read(m.p("dir/b2")).unwrap(), b"second");
    assert_eq!(fs::read(m.p("dir/c")).unwrap(), b"third");
    assert!(!m.p("a").exists());
}

#[test]
fn the_view_is_read_only() {
    let vol = reverse_volume(&[]);
    fs::write(vol.cipher.join("a"), b"data").unwrap();
    let view = mount_view(&vol, &[]);
    let name = data_files(&snapshot(&view.path))
        .into_keys()
        .next()
        .unwrap();
    let erofs = |r: std::io::Result<()>| {
        assert_eq!(r.unwrap_err().raw_os_error(), Some(libc::EROFS));
    };
    erofs(fs::write(view.p("new"), b"x"));
    erofs(fs::write(view.path.join(&name), b"x"));
    erofs(
        fs::OpenOptions::new()
            .append(true)
            .open(view.path.join(&name))
            .map(drop),
    );
    erofs(fs::create_dir(view.p("d")));
    erofs(fs::remove_file(view.path.join(&name)));
    erofs(fs::rename(view.path.join(&name), view.p("moved")));
    erofs(fs::set_permissions(
        view.path.join(&name),
        fs::Permissions::from_mode(0o777),
    ));
    assert_eq!(fs::read(vol.cipher.join("a")).unwrap(), b"data");
}

#[test]
fn excluded_paths_stay_out_of_the_view_and_the_backup() {
    let vol = reverse_volume(&[]);
    let plain = &vol.cipher;
    fs::create_dir_all(plain.join("cache/sub")).unwrap();
    fs::create_dir_all(plain.join("src/cache")).unwrap();
    fs::write(plain.join("cache/sub/x"), b"cached").unwrap();
    fs::write(plain.join("src/cache/y"), b"kept: only /cache is excluded").unwrap();
    fs::write(plain.join("src/main.rs"), b"fn main() {}").unwrap();
    fs::write(plain.join("src/junk.tmp"), b"temp").unwrap();
    fs::write(plain.join("keep.tmp"), b"kept by !keep.tmp").unwrap();
    let view = mount_view(
        &vol,
        &[
            "--exclude",
            "/cache",
            "--exclude",
            "*.tmp",
            "--exclude",
            "!keep.tmp",
        ],
    );
    let snap = snapshot(&view.path);
    assert_eq!(data_files(&snap).len(), 3, "main.rs, cache/y, keep.tmp");
    let headers = snap
        .keys()
        .filter(|p| p.components().count() == 3 && p.starts_with("sealfs.headers"))
        .count();
    assert_eq!(headers, 3, "no header for excluded files");
    let copy = vol.dir.path().join("copy");
    copy_view(&view, &copy);
    let forward = forward_over(&copy, &vol);
    let m = forward.mount();
    assert!(!m.p("cache").exists());
    assert!(!m.p("src/junk.tmp").exists());
    assert_eq!(
        fs::read(m.p("src/cache/y")).unwrap(),
        b"kept: only /cache is excluded"
    );
    assert_eq!(fs::read(m.p("keep.tmp")).unwrap(), b"kept by !keep.tmp");
}
