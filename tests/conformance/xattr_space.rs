//! Extended attributes as many and as large as xfstests generic/020 asks of a FUSE filesystem
//! (1,000 on one file, a value of 65,536 bytes), on a backing store that holds them: tmpfs,
//! compared with a plain file on the same tmpfs. (Over ext4 no FUSE filesystem can: plain ext4
//! holds about 4 KiB of attributes an inode; docs/GUARANTEES.md.)

use super::*;
use common::xattrs::{get_xattr, list_xattrs, remove_xattr, set_xattr};

fn value(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 13 + 1) as u8).collect()
}

fn sorted(mut names: Vec<String>) -> Vec<String> {
    names.sort();
    names
}

/// One `fsck --repair` corrects what it finds (exit 1), and the fsck after it is clean.
fn repair_once(vol: &TestVolume) {
    let out = vol.run(&["fsck", "--repair", vol.cipher_str()]);
    let detail = common::stderr(&out);
    assert_eq!(out.status.code(), Some(1), "errors corrected: {detail}");
    vol.assert_fsck_clean();
}

#[test]
fn a_thousand_attributes_and_values_of_64_kib_as_on_the_backing_store() {
    let shm = Path::new("/dev/shm");
    assert!(shm.is_dir(), "this test needs /dev/shm (tmpfs)");
    let vol = TestVolume::new_in(shm);
    let plain_dir = tempfile::tempdir_in(shm).unwrap();
    let plain = plain_dir.path().join("f");
    let m = vol.mount();
    let sealed = m.p("f");
    fs::write(&plain, b"x").unwrap();
    fs::write(&sealed, b"x").unwrap();

    // generic/020's count: 1,000 small attributes, listed and read back.
    for file in [&plain, &sealed] {
        for i in 0..1000 {
            set_xattr(
                file,
                &format!("user.attribute_{i}"),
                format!("value_{i}").as_bytes(),
            );
        }
    }
    let listed = sorted(list_xattrs(&sealed));
    assert_eq!(listed.len(), 1000);
    assert_eq!(listed, sorted(list_xattrs(&plain)));
    for i in (0..1000).step_by(37) {
        let name = format!("user.attribute_{i}");
        assert_eq!(
            get_xattr(&sealed, &name).unwrap(),
            get_xattr(&plain, &name).unwrap()
        );
    }
    for file in [&plain, &sealed] {
        for i in 0..1000 {
            remove_xattr(file, &format!("user.attribute_{i}"));
        }
        assert!(list_xattrs(file).is_empty());
    }

    // Values up to the kernel's limit, the largest ones split over two backing attributes.
    for len in [65_508, 65_509, 65_536, 100] {
        for file in [&plain, &sealed] {
            set_xattr(file, "user.big", &value(len));
        }
        assert_eq!(get_xattr(&sealed, "user.big").unwrap(), value(len), "{len}");
        assert_eq!(list_xattrs(&sealed), list_xattrs(&plain), "{len}");
    }
    set_xattr(&sealed, "user.big", &value(65_536));
    drop(m.unmount());
    vol.assert_fsck_clean();

    // A tail a crash left without its head: fsck calls it a leftover, --repair removes it,
    // and the fsck after that one repair is clean.
    let volume = common::open_volume(&vol);
    let backing_file = common::backing(&volume, "f");
    drop(volume);
    let stray = "user.sealfs.tail.AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";
    set_xattr(&backing_file, stray, &[0; 28]);
    let out = vol.run(&["fsck", vol.cipher_str()]);
    assert!(!out.status.success());
    let report = String::from_utf8_lossy(&out.stdout).into_owned() + &common::stderr(&out);
    assert!(report.contains("tail of a split value"), "{report}");
    repair_once(&vol);
    let m = vol.mount();
    assert_eq!(get_xattr(&m.p("f"), "user.big").unwrap(), value(65_536));
    drop(m.unmount());

    // A split value's head that does not open: EIO through the mount, and one repair removes
    // it with its tail.
    let head = list_xattrs(&backing_file)
        .into_iter()
        .find(|name| get_xattr(&backing_file, name).unwrap().len() == 65_536)
        .unwrap();
    let mut tampered = get_xattr(&backing_file, &head).unwrap();
    tampered[100] ^= 1;
    set_xattr(&backing_file, &head, &tampered);
    let m = vol.mount();
    let err = get_xattr(&m.p("f"), "user.big").unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EIO));
    drop(m.unmount());
    repair_once(&vol);
    assert!(
        list_xattrs(&backing_file).is_empty(),
        "{:?}",
        list_xattrs(&backing_file)
    );
}

/// `-o noacl`, as ext4's `noacl`: setfacl is refused, getfacl shows the mode alone, no ACL is
/// listed or inherited; the ACLs a mount with ACLs stored stay, and show again there.
#[test]
fn noacl_mounts_keep_no_acls_and_hide_stored_ones() {
    let vol = TestVolume::new();
    let m = vol.mount();
    fs::write(m.p("f"), b"x").unwrap();
    fs::create_dir(m.p("d")).unwrap();
    ok(Command::new("setfacl")
        .args(["-m", "u:1000:r"])
        .arg(m.p("f"))
        .output()
        .unwrap());
    ok(Command::new("setfacl")
        .args(["-d", "-m", "u:1000:rwx"])
        .arg(m.p("d"))
        .output()
        .unwrap());
    drop(m.unmount());

    let m = vol.mount_with(&["-o", "noacl"]);
    assert_eq!(list_xattrs(&m.p("f")), Vec::<String>::new());
    let acl = ok(Command::new("getfacl")
        .args(["-n", "--omit-header"])
        .arg(m.p("f"))
        .output()
        .unwrap());
    assert!(!acl.contains("user:1000"), "{acl}");
    let out = Command::new("setfacl")
        .args(["-m", "u:1000:rw"])
        .arg(m.p("f"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        common::stderr(&out).contains("Operation not supported"),
        "{}",
        common::stderr(&out)
    );
    // Nothing inherited from d's default ACL; the umask applies.
    let made = sh_in(
        &m.p("d"),
        "umask 022; mkdir sub; stat -c %a sub; getfattr -m - sub",
    );
    assert_eq!(made, "755\n[true]");
    drop(m.unmount());

    let m = vol.mount();
    let acl = ok(Command::new("getfacl")
        .args(["-n", "--omit-header"])
        .arg(m.p("f"))
        .output()
        .unwrap());
    assert!(acl.contains("user:1000:r--"), "{acl}");
    drop(m.unmount());
    vol.assert_fsck_clean();
}
