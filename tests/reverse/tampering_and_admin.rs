//! Tampering with a copied view, rotation and keyslots on a reverse volume, misuse, and what stays out of the view.

use super::*;

/// Reads every file under `root`; the relative paths that fail, with their errno.
fn unreadable(root: &Path) -> Vec<(PathBuf, i32)> {
    let mut out = Vec::new();
    for path in common::files_under(root) {
        let mut buf = Vec::new();
        let result = fs::File::open(&path).and_then(|mut f| f.read_to_end(&mut buf));
        if let Err(e) = result {
            out.push((
                path.strip_prefix(root).unwrap().to_path_buf(),
                e.raw_os_error().unwrap_or(0),
            ));
        }
    }
    out
}

#[test]
fn tampering_with_the_copy_gives_eio() {
    let vol = reverse_volume(&[]);
    let plain = &vol.cipher;
    fs::write(plain.join("big"), vec![1u8; 50_000]).unwrap();
    fs::write(plain.join("small"), b"small file").unwrap();
    fs::write(plain.join("third"), b"third file").unwrap();
    let view = mount_view(&vol, &[]);
    let copy = vol.dir.path().join("copy");
    copy_view(&view, &copy);
    drop(view);
    let forward = forward_over(&copy, &vol);
    assert!(unreadable(&forward.mount().path).is_empty());

    // One bit in a block of the big file.
    let big = data_files(&snapshot(&copy))
        .into_iter()
        .max_by_key(|(_, b)| b.len())
        .unwrap()
        .0;
    let mut f = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(copy.join(&big))
        .unwrap();
    let mut byte = [0u8];
    f.seek(SeekFrom::Start(24 + 4124 + 40)).unwrap();
    f.read_exact(&mut byte).unwrap();
    f.seek(SeekFrom::Start(24 + 4124 + 40)).unwrap();
    f.write_all(&[byte[0] ^ 1]).unwrap();
    drop(f);
    let m = forward.mount();
    assert_eq!(unreadable(&m.path), vec![(PathBuf::from("big"), libc::EIO)]);
    drop(m);

    // Two small files' headers swapped.
    let headers: Vec<PathBuf> = common::files_under(&copy.join("sealfs.headers"));
    assert_eq!(headers.len(), 3);
    let small_ids: Vec<PathBuf> = headers
        .into_iter()
        .filter(|h| {
            let id = h.file_name().unwrap().to_string_lossy().to_string();
            data_files(&snapshot(&copy))
                .into_iter()
                .any(|(p, b)| p != big && hex(&b[8..24]) == id)
        })
        .collect();
    assert_eq!(small_ids.len(), 2);
    let (a, b) = (
        fs::read(&small_ids[0]).unwrap(),
        fs::read(&small_ids[1]).unwrap(),
    );
    fs::write(&small_ids[0], b).unwrap();
    fs::write(&small_ids[1], a).unwrap();
    let m = forward.mount();
    let mut bad = unreadable(&m.path);
    bad.sort();
    assert_eq!(
        bad,
        vec![
            (PathBuf::from("big"), libc::EIO),
            (PathBuf::from("small"), libc::EIO),
            (PathBuf::from("third"), libc::EIO)
        ]
    );
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[test]
fn rotation_and_keyslots_work_on_a_reverse_volume() {
    let vol = reverse_volume(&[]);
    fs::write(vol.cipher.join("a"), b"rotated").unwrap();
    let view = mount_view(&vol, &[]);
    let header_bytes = |view: &Mounted| {
        snapshot(&view.path)
            .into_iter()
            .filter(|(p, _)| p.components().count() == 3 && p.starts_with("sealfs.headers"))
            .map(|(_, i)| i)
            .collect::<Vec<_>>()
    };
    let before = header_bytes(&view);
    let plain = vol.cipher.to_str().unwrap();
    ok(vol.run(&["rotate", plain]));
    let info = ok(vol.run(&["info", "--json", plain]));
    let info: serde_json::Value = serde_json::from_str(&info).unwrap();
    assert_eq!(info["current_kek"], 2);
    assert_eq!(info["reverse"], true);
    std::thread::sleep(Duration::from_millis(1200));
    let after = header_bytes(&view);
    assert_ne!(
        before, after,
        "headers follow the new KEK without a remount"
    );
    let second_key = vol.dir.path().join("second.key");
    ok(vol.run(&[
        "key",
        "add",
        plain,
        "--keyfile",
        second_key.to_str().unwrap(),
    ]));
    std::thread::sleep(Duration::from_millis(1200));
    let copy = vol.dir.path().join("copy");
    copy_view(&view, &copy);
    // The second key alone opens the copy.
    let forward = TestVolume::existing(test_dir(), copy.clone(), vol.dir.path().join("none"));
    let m = forward.mount_with(&["--keyfile", second_key.to_str().unwrap()]);
    assert_eq!(fs::read(m.p("a")).unwrap(), b"rotated");
    drop(m);
    // The private files stay in the plaintext dir: config and audit log.
    assert!(vol.cipher.join(".sealfs.reverse.conf").exists());
    let audit = fs::read_to_string(vol.cipher.join(".sealfs.reverse.audit")).unwrap();
    for event in ["\"mount\"", "\"kek-create\"", "\"keyslot-add\""] {
        assert!(audit.contains(event), "{event} in {audit}");
    }
    ok(vol.run(&["audit", "verify", plain]));
}

#[test]
fn misuse_is_refused_with_a_clear_error() {
    let vol = reverse_volume(&[]);
    let plain = vol.cipher.to_str().unwrap();
    let err = |args: &[&str]| {
        let out = vol.run(args);
        assert!(!out.status.success(), "{args:?} succeeded");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    assert!(err(&["init", "--reverse", plain]).contains("already"));
    let mnt = vol.mnt.to_str().unwrap();
    assert!(err(&["mount", plain, mnt]).contains("--reverse"));
    assert!(err(&["fsck", plain]).contains("--reverse"));
    assert!(err(&["rewrap", plain]).contains("--reverse"));
    let inside = vol.cipher.join("inside");
    fs::create_dir(&inside).unwrap();
    assert!(err(&["mount", "--reverse", plain, inside.to_str().unwrap()]).contains("inside"));
    let forward = TestVolume::new();
    assert!(err(&["mount", "--reverse", forward.cipher_str(), mnt]).contains("init --reverse"));
    let other = test_dir();
    fs::create_dir(other.path().join("tree")).unwrap();
    assert!(
        err(&[
            "init",
            "--reverse",
            other.path().join("tree").to_str().unwrap(),
            "--key-mode",
            "per-file"
        ])
        .contains("per-file")
    );
    assert!(
        err(&["init", "--reverse", forward.cipher_str()]).contains("cipher dir"),
        "a cipher dir is not a plaintext tree"
    );
    assert!(
        err(&[
            "init",
            "--reverse",
            other.path().join("missing").to_str().unwrap()
        ])
        .contains("not a directory")
    );
}

#[test]
fn files_in_other_filesystems_and_symlinked_dirs_stay_out() {
    let vol = reverse_volume(&[]);
    let plain = &vol.cipher;
    fs::write(plain.join("inside"), b"in").unwrap();
    let outside = vol.dir.path().join("outside");
    fs::create_dir(&outside).unwrap();
    fs::write(outside.join("secret"), b"outside the tree").unwrap();
    std::os::unix::fs::symlink(&outside, plain.join("escape")).unwrap();
    fs::create_dir(plain.join("tmpfs")).unwrap();
    let mounted_tmpfs = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=1m", "tmpfs"])
        .arg(plain.join("tmpfs"))
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if mounted_tmpfs {
        fs::write(plain.join("tmpfs/on-tmpfs"), b"other fs").unwrap();
    }
    let view = mount_view(&vol, &[]);
    let snap = snapshot(&view.path);
    let copy = vol.dir.path().join("copy");
    copy_view(&view, &copy);
    drop(view);
    if mounted_tmpfs {
        let _ = Command::new("umount").arg(plain.join("tmpfs")).status();
    }
    assert_eq!(data_files(&snap).len(), 1, "only `inside`");
    let forward = forward_over(&copy, &vol);
    let m = forward.mount();
    assert_eq!(fs::read(m.p("inside")).unwrap(), b"in");
    assert!(
        fs::symlink_metadata(m.p("escape"))
            .unwrap()
            .file_type()
            .is_symlink()
    );
    assert_eq!(
        m.p("tmpfs").exists(),
        !mounted_tmpfs,
        "a mount inside the tree is left out"
    );
    let names: Vec<String> = common::files_under(&m.path)
        .iter()
        .map(|p| {
            p.strip_prefix(&m.path)
                .unwrap()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    assert_eq!(names, vec!["inside".to_string()], "{names:?}");
}
