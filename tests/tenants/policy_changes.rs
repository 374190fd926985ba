//! Setting a policy on a directory that holds files (the move, a killed move resumed by rewrap), and creates racing a policy set.

use super::*;

#[test]
fn a_policy_set_on_a_directory_with_files_moves_them_and_rewrap_resumes_a_killed_move() {
    let vol = TestVolume::new();
    let key = vol.dir.path().join("t.key");
    let m = vol.mount();
    fs::create_dir_all(m.p("d/sub")).unwrap();
    for i in 0..20 {
        fs::write(m.p(&format!("d/f{i}")), format!("file {i}")).unwrap();
    }
    fs::write(m.p("d/sub/deep"), b"deep").unwrap();
    symlink("x".repeat(3500), m.p("d/sub/long")).unwrap();
    symlink("f1", m.p("d/short")).unwrap();
    fs::hard_link(m.p("d/f2"), m.p("d/sub/f2")).unwrap();
    // A hard link to a symlink whose target is in a sidecar: both names keep reading it.
    fs::hard_link(m.p("d/sub/long"), m.p("d/long-link")).unwrap();
    set_xattr(&m.p("d"), "user.owner", b"tenant t");
    set_xattr(&m.p("d/f3"), "user.tag", b"three");
    set_xattr(&m.p("d/f5"), "user.bad", b"to be damaged");
    fs::write(m.p("outside"), b"volume's").unwrap();
    let set = [
        "policy",
        "set",
        vol.cipher_str(),
        "/d",
        "--keyfile",
        key.to_str().unwrap(),
    ];

    // Mounted: refused, nothing changed.
    let out = vol.run(&set);
    assert!(
        stderr(&out).contains("unmount the volume first"),
        "{}",
        stderr(&out)
    );
    m.unmount();
    // One xattr value damaged in the cipher dir: it stays behind, the file still moves.
    let backing_f5 = common::backing(&common::open_volume(&vol), "d/f5");
    let names = list_xattrs(&backing_f5);
    let sealed_name = names.iter().find(|n| n.starts_with("user.")).unwrap();
    set_xattr(&backing_f5, sealed_name, b"garbage, not a sealed value");

    // Killed after its first rename: the volume refuses to mount until rewrap finishes.
    let mut env = vol.env.clone();
    env.push(("SEALFS_CRASH_AT".into(), "policy-move-renamed".into()));
    let out = common::sealfs_env(&vol.keys, &env, &set);
    assert_eq!(out.status.code(), None, "killed: {}", stderr(&out));
    let mnt = vol.mnt.to_str().unwrap();
    let out = vol.run(&["mount", vol.cipher_str(), mnt]);
    assert!(
        stderr(&out).contains("run `sealfs rewrap"),
        "{}",
        stderr(&out)
    );
    // Mid-move, fsck --repair would take the names not moved yet for damage.
    let out = vol.run(&["fsck", vol.cipher_str(), "--repair"]);
    assert!(
        stderr(&out).contains("move under a key policy is pending"),
        "{}",
        stderr(&out)
    );
    // An entry too damaged to move is left for fsck; the move finishes around it.
    let backing_d = policy_dir(&vol.cipher, 1);
    fs::write(backing_d.join("A".repeat(43)), b"not a sealfs file").unwrap();
    let out = vol.run(&["rewrap", vol.cipher_str()]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("moved under key policies"), "{text}");
    assert!(text.contains("21 files' keys"), "{text}");
    assert!(text.contains("decrypts under neither key"), "{text}");
    assert!(text.contains("/d/f5: xattr user.bad"), "{text}");
    assert!(
        stderr(&out).contains("2 entries could not be moved"),
        "{}",
        stderr(&out)
    );

    let m = vol.mount();
    for i in 0..20 {
        assert_eq!(
            fs::read(m.p(&format!("d/f{i}"))).unwrap(),
            format!("file {i}").as_bytes()
        );
    }
    assert_eq!(fs::read(m.p("d/sub/deep")).unwrap(), b"deep");
    assert_eq!(fs::read(m.p("d/sub/f2")).unwrap(), b"file 2");
    assert_eq!(
        fs::read_link(m.p("d/sub/long")).unwrap(),
        Path::new(&"x".repeat(3500))
    );
    assert_eq!(fs::read_link(m.p("d/short")).unwrap(), Path::new("f1"));
    assert_eq!(
        fs::read_link(m.p("d/long-link")).unwrap(),
        Path::new(&"x".repeat(3500))
    );
    assert_eq!(get_xattr(&m.p("d"), "user.owner").unwrap(), b"tenant t");
    assert_eq!(get_xattr(&m.p("d/f3"), "user.tag").unwrap(), b"three");
    assert_eq!(fs::read(m.p("d/f5")).unwrap(), b"file 5");
    assert_eq!(fs::read(m.p("outside")).unwrap(), b"volume's");
    m.unmount();
    // The damaged entry goes to the tenant's own lost+found, its name under the tenant's keys.
    let out = vol.run(&["fsck", vol.cipher_str(), "--repair"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{text}{}", stderr(&out));
    assert!(text.contains("moved to /d/lost+found/unnamed-"), "{text}");
    // The damaged xattr the move left behind no key opens: repair removes just it.
    assert!(
        text.contains("bad-xattr: /d/f5: extended attribute")
            && text.contains("[repaired: removed (no key of this volume opens it)]"),
        "{text}"
    );
    vol.assert_fsck_clean();
    let m = vol.mount();
    assert_eq!(fs::read_dir(m.p("d/lost+found")).unwrap().count(), 1);
    assert!(
        !m.p("lost+found").exists(),
        "nothing of the tenant's in the volume's"
    );
    m.unmount();
    let info = ok(vol.run(&["info", vol.cipher_str()]));
    assert!(info.contains("21  under key policy 1"), "{info}");
    assert!(info.contains("1  under KEK version 1"), "{info}");
    // The move is over: a second rewrap has nothing to move.
    let out = ok(vol.run(&["rewrap", vol.cipher_str()]));
    assert!(!out.contains("moved under"), "{out}");

    // Emptied, the directory's policy comes off, and its own xattrs go back under the
    // volume's keys.
    let m = vol.mount();
    let rm = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!("rm -rf {0}/* {0}/lost+found", m.p("d").display()))
        .output()
        .unwrap();
    assert!(rm.status.success(), "{}", stderr(&rm));
    m.unmount();
    // A remove killed once the directory's xattrs are back under the volume's keys, with the
    // marker still naming the tenant: fsck reports them, --repair keeps them (they read
    // fine under the parent's keys), and running the remove again finishes it.
    let remove = ["policy", "remove", vol.cipher_str(), "/d"];
    let mut env = vol.env.clone();
    env.push((
        "SEALFS_CRASH_AT".into(),
        "policy-remove-xattrs-moved".into(),
    ));
    let out = common::sealfs_env(&vol.keys, &env, &remove);
    assert_eq!(out.status.code(), None, "killed: {}", stderr(&out));
    let out = vol.run(&["fsck", vol.cipher_str(), "--repair"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(4), "{text}{}", stderr(&out));
    assert!(
        text.contains(
            "bad-xattr: /d: extended attribute user.owner is under the parent directory's keys"
        ) && !text.contains("[repaired"),
        "{text}"
    );
    ok(vol.run(&remove));
    let m = vol.mount();
    assert_eq!(get_xattr(&m.p("d"), "user.owner").unwrap(), b"tenant t");
    m.unmount();
    vol.assert_fsck_clean();
}

#[test]
fn a_create_and_a_policy_set_on_its_directory_wait_for_each_other() {
    let vol = TestVolume::new();
    let key = vol.dir.path().join("t.key");
    let m = vol.mount();
    fs::create_dir(m.p("d")).unwrap();
    // The backing directory of /d: the one directory of the cipher dir not sealfs's own.
    let backing = common::only_backing_dir(&vol.cipher);
    let held = common::hold_directory_lock(&vol.cipher, &backing);
    let set = [
        "policy",
        "set",
        vol.cipher_str(),
        "/d",
        "--keyfile",
        key.to_str().unwrap(),
    ];
    let (written, set) = std::thread::scope(|s| {
        let writer = s.spawn(|| fs::write(m.p("d/f"), b"made in the race"));
        let tagger = s.spawn(|| set_xattr(&m.p("d"), "user.tag", b"set in the race"));
        let setter = s.spawn(|| vol.run(&set));
        std::thread::sleep(Duration::from_millis(700));
        assert!(
            !writer.is_finished() && !tagger.is_finished() && !setter.is_finished(),
            "all three wait while the directory is locked"
        );
        drop(held);
        tagger.join().unwrap();
        (writer.join().unwrap(), setter.join().unwrap())
    });
    written.unwrap();
    // Whichever went first, the file is under the policy its directory has.
    let tenant_files = if set.status.success() {
        1
    } else {
        assert!(
            stderr(&set).contains("unmount the volume first"),
            "{}",
            stderr(&set)
        );
        0
    };
    assert_eq!(fs::read(m.p("d/f")).unwrap(), b"made in the race");
    m.unmount();
    vol.assert_fsck_clean();
    let list = ok(vol.run(&["policy", "list", vol.cipher_str(), "--json"]));
    let list: serde_json::Value = serde_json::from_str(&list).unwrap();
    let files = list["policies"][0]["files"].as_u64().unwrap_or(0);
    assert_eq!(files, tenant_files, "{list}");
    let m = vol.mount();
    assert_eq!(fs::read(m.p("d/f")).unwrap(), b"made in the race");
    assert_eq!(
        get_xattr(&m.p("d"), "user.tag").unwrap(),
        b"set in the race"
    );
    m.unmount();
}
