//! The core without a mount: operations called as the FUSE shell calls them, over a real
//! volume in a temporary directory.

use std::ffi::OsStr;

use super::{AttrChanges, Caller, SealFs, Tuning};
use crate::io::IoError;
use crate::keys::{KeyfileProvider, MasterKeyProvider, write_new_keyfile};
use crate::volume::{InitOptions, Volume, VolumeError};

const ROOT: u64 = 1;
const ROOT_CALLER: Caller = Caller {
    uid: 0,
    gid: 0,
    pid: 0,
    umask: 0,
};
const OTHER: Caller = Caller {
    uid: 1000,
    gid: 1000,
    pid: 0,
    umask: 0,
};
/// Not root, but in the group (0) of the files the tests make.
const MEMBER: Caller = Caller {
    uid: 1000,
    gid: 0,
    pid: 0,
    umask: 0,
};

struct Fixture {
    fs: SealFs,
    dir: tempfile::TempDir,
}

impl Fixture {
    /// Another core over the same cipher dir: another mount, standing for another host.
    fn another_mount(&self, tuning: Tuning) -> SealFs {
        let key = self.dir.path().join("k");
        let providers: Vec<Box<dyn MasterKeyProvider>> =
            vec![Box::new(KeyfileProvider::load(&key).unwrap())];
        let volume =
            Volume::open(&self.dir.path().join("c"), providers, Default::default()).unwrap();
        SealFs::new(volume, false, tuning).unwrap()
    }
}

fn mounted_core(read_only: bool, tuning: Tuning) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("k");
    write_new_keyfile(&key).unwrap();
    let providers = || -> Vec<Box<dyn MasterKeyProvider>> {
        vec![Box::new(KeyfileProvider::load(&key).unwrap())]
    };
    let cipher = dir.path().join("c");
    Volume::init(&cipher, &InitOptions::default(), &providers(), [3; 16]).unwrap();
    let volume = Volume::open(&cipher, providers(), Default::default()).unwrap();
    Fixture {
        fs: SealFs::new(volume, read_only, tuning).unwrap(),
        dir,
    }
}

fn core() -> Fixture {
    mounted_core(false, Tuning::default())
}

/// The same test body over both data-path implementations (`access::Lone` and `Shared`,
/// chosen by the mode): a lone mount with the writeback cache, and a shared one.
fn both_modes() -> [Fixture; 2] {
    [core(), mounted_core(false, Tuning::new(false, true))]
}

fn mode_of(fs: &SealFs, ino: u64) -> u16 {
    fs.getattr(ino).unwrap().perm
}

#[test]
fn create_write_read_list_and_unlink() {
    for fx in both_modes() {
        let fs = &fx.fs;
        let (attr, fh) = fs
            .create(
                ROOT,
                OsStr::new("notes.txt"),
                0o640,
                libc::O_RDWR,
                ROOT_CALLER,
            )
            .unwrap();
        assert_eq!(fs.write(fh, 5000, b"hello", None).unwrap(), 5);
        assert_eq!(fs.read(fh, 4998, 100).unwrap(), b"\0\0hello");
        assert_eq!(fs.getattr(attr.ino.0).unwrap().size, 5005);
        fs.release(fh);
        assert_eq!(
            fs.lookup(ROOT, OsStr::new("notes.txt")).unwrap().ino,
            attr.ino
        );
        let dir = fs.opendir(ROOT).unwrap();
        let names: Vec<_> = fs
            .dir_entries(dir)
            .unwrap()
            .iter()
            .map(|e| e.name.clone())
            .collect();
        fs.releasedir(dir);
        assert_eq!(names, [".", "..", "notes.txt"]);
        // The backing directory holds only ciphertext names.
        let backing: Vec<_> = std::fs::read_dir(&fs.volume.path)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert!(!backing.iter().any(|n| n == "notes.txt"));
        fs.unlink(ROOT, OsStr::new("notes.txt")).unwrap();
        assert!(matches!(
            fs.lookup(ROOT, OsStr::new("notes.txt")),
            Err(VolumeError::Io(e)) if e.raw_os_error() == Some(libc::ENOENT)
        ));
    }
}

#[test]
fn listed_entries_carry_the_lookups_attributes_and_count_as_lookups() {
    for fx in both_modes() {
        let fs = &fx.fs;
        let (attr, fh) = fs
            .create(ROOT, OsStr::new("a"), 0o600, libc::O_RDWR, ROOT_CALLER)
            .unwrap();
        fs.write(fh, 0, &[7; 10_000], None).unwrap();
        fs.release(fh);
        fs.forget(attr.ino.0, 1);
        assert!(
            fs.inodes.get(attr.ino.0).is_none(),
            "the create's lookup is forgotten"
        );
        fs.mkdir(ROOT, OsStr::new("d"), 0o700, ROOT_CALLER).unwrap();
        let (gone, fh) = fs
            .create(ROOT, OsStr::new("gone"), 0o600, libc::O_RDWR, ROOT_CALLER)
            .unwrap();
        fs.release(fh);

        let dir = fs.opendir(ROOT).unwrap();
        let (node, entries) = fs.listed_dir(dir).unwrap();
        fs.unlink(ROOT, OsStr::new("gone")).unwrap();
        fs.forget(gone.ino.0, 1);
        let mut listed = Vec::new();
        for entry in entries.iter() {
            match fs.look_up_listed(&node, entry) {
                Some(found) => {
                    let (ino, size, kind) = (found.attr.ino.0, found.attr.size, found.attr.kind);
                    fs.remember_listed(&node, entry, found);
                    // The attributes a GETATTR gives (plaintext size, not the backing file's).
                    let got = fs.getattr(ino).unwrap();
                    assert_eq!((size, kind), (got.size, got.kind), "{:?}", entry.name);
                    listed.push((entry.name.clone(), size));
                }
                None => assert!(
                    [".", "..", "gone"].contains(&entry.name.to_str().unwrap()),
                    "{:?} has no attributes",
                    entry.name
                ),
            }
        }
        fs.releasedir(dir);
        listed.sort();
        assert_eq!(listed[0], ("a".into(), 10_000));
        assert_eq!(listed[1].0, "d");
        assert_eq!(listed.len(), 2);
        // Sent entries are lookups the kernel will forget: the node lives until then.
        assert!(fs.inodes.get(attr.ino.0).is_some());
        fs.forget(attr.ino.0, 1);
        assert!(fs.inodes.get(attr.ino.0).is_none());
    }
}

#[test]
fn set_id_bits_follow_the_kernels_rule() {
    for fx in both_modes() {
        let fs = &fx.fs;
        let (attr, fh) = fs
            .create(ROOT, OsStr::new("tool"), 0o755, libc::O_RDWR, ROOT_CALLER)
            .unwrap();
        let ino = attr.ino.0;
        let chmod = |mode| {
            let changes = AttrChanges {
                mode: Some(mode),
                ..AttrChanges::default()
            };
            fs.setattr(ROOT_CALLER, ino, changes).unwrap();
        };
        let truncate = |caller, size| {
            let changes = AttrChanges {
                size: Some(size),
                ..AttrChanges::default()
            };
            fs.setattr(caller, ino, changes).unwrap();
        };

        // A write the kernel flags (writer without CAP_FSETID) drops both: group exec is set.
        chmod(0o6755);
        fs.write(fh, 0, b"x", Some(OTHER)).unwrap();
        assert_eq!(mode_of(fs, ino), 0o755);
        // An unflagged write keeps them.
        chmod(0o6755);
        fs.write(fh, 0, b"x", None).unwrap();
        assert_eq!(mode_of(fs, ino), 0o6755);
        // Truncate: root keeps them, anyone else drops them.
        truncate(ROOT_CALLER, 10);
        assert_eq!(mode_of(fs, ino), 0o6755);
        truncate(OTHER, 20);
        assert_eq!(mode_of(fs, ino), 0o755);
        // fallocate by a member of the file's group drops set-user-id only: set-group-id without
        // group exec is a mandatory-locking mark, not a privilege. A write by someone outside
        // the group drops it all the same (the kernel's rule since 6.2: setattr_should_drop_sgid).
        chmod(0o6745);
        fs.fallocate(MEMBER, fh, 0, 4096, 0).unwrap();
        assert_eq!(mode_of(fs, ino), 0o2745);
        assert_eq!(fs.getattr(ino).unwrap().size, 4096);
        fs.write(fh, 0, b"x", Some(MEMBER)).unwrap();
        assert_eq!(mode_of(fs, ino), 0o2745);
        fs.write(fh, 0, b"x", Some(OTHER)).unwrap();
        assert_eq!(mode_of(fs, ino), 0o745);
        fs.release(fh);
    }
}

#[test]
fn request_errors_are_typed() {
    let fx = mounted_core(false, Tuning::default());
    let fs = &fx.fs;
    assert!(matches!(fs.getattr(987_654), Err(VolumeError::StaleNode)));
    assert!(matches!(fs.read(77, 0, 10), Err(VolumeError::BadHandle)));
    let (_, fh) = fs
        .create(ROOT, OsStr::new("f"), 0o644, libc::O_RDWR, ROOT_CALLER)
        .unwrap();
    // With the writeback cache lseek is left to the kernel.
    assert!(matches!(
        fs.lseek(fh, 0, libc::SEEK_DATA),
        Err(VolumeError::KernelFallback(_))
    ));
    assert!(matches!(
        fs.fallocate(ROOT_CALLER, fh, 0, 10, libc::FALLOC_FL_PUNCH_HOLE),
        Err(VolumeError::InvalidArgument(_))
    ));
    assert!(matches!(
        fs.fallocate(ROOT_CALLER, fh, 0, 4096, libc::FALLOC_FL_COLLAPSE_RANGE),
        Err(VolumeError::Unsupported(_))
    ));
    assert!(matches!(
        fs.getxattr(ROOT, OsStr::new("trusted.x")),
        Err(VolumeError::NoAttribute)
    ));

    let fx = mounted_core(
        false,
        Tuning {
            writeback_cache: false,
            ..Tuning::default()
        },
    );
    let fs = &fx.fs;
    let (_, fh) = fs
        .create(ROOT, OsStr::new("f"), 0o644, libc::O_RDWR, ROOT_CALLER)
        .unwrap();
    fs.write(fh, 0, b"data", None).unwrap();
    assert_eq!(fs.lseek(fh, 0, libc::SEEK_DATA).unwrap(), 0);
    assert_eq!(fs.lseek(fh, 0, libc::SEEK_HOLE).unwrap(), 4);
    assert!(matches!(
        fs.lseek(fh, 4, libc::SEEK_DATA),
        Err(VolumeError::Block(IoError::PastEnd))
    ));
    assert!(matches!(
        fs.lseek(fh, -1, libc::SEEK_DATA),
        Err(VolumeError::InvalidArgument(_))
    ));

    let fx = mounted_core(true, Tuning::default());
    assert!(matches!(
        fx.fs.mkdir(ROOT, OsStr::new("d"), 0o755, ROOT_CALLER),
        Err(VolumeError::ReadOnly)
    ));
}

#[test]
fn extended_attributes_round_trip_encrypted() {
    for fx in both_modes() {
        let fs = &fx.fs;
        let attr = fs.mkdir(ROOT, OsStr::new("d"), 0o755, ROOT_CALLER).unwrap();
        let ino = attr.ino.0;
        // The temporary directory's filesystem must carry user xattrs (ext4, tmpfs, xfs do).
        fs.setxattr(ino, OsStr::new("user.comment"), b"secret", 0, ROOT_CALLER)
            .unwrap();
        assert_eq!(
            fs.getxattr(ino, OsStr::new("user.comment")).unwrap(),
            b"secret"
        );
        assert_eq!(fs.listxattr(ino).unwrap(), b"user.comment\0");
        fs.removexattr(ino, OsStr::new("user.comment")).unwrap();
        assert!(fs.listxattr(ino).unwrap().is_empty());
    }
}

/// A header that cannot be read (here: a directory where the header file was) fails the
/// open with that errno, not as an integrity failure; a missing one is an integrity failure.
#[test]
fn a_header_read_error_keeps_its_errno() {
    use crate::keys::KeyError;
    use crate::shell::errno::errno_of;

    let fx = core();
    let fs = &fx.fs;
    let (attr, fh) = fs
        .create(ROOT, OsStr::new("f"), 0o644, libc::O_RDWR, ROOT_CALLER)
        .unwrap();
    fs.write(fh, 0, b"data", None).unwrap();
    fs.release(fh);
    let backing = fs
        .volume
        .path
        .join(fs.volume.encrypt_name(OsStr::new("f")).unwrap().entry());
    let id = crate::io::read_file_id(&std::fs::File::open(backing).unwrap()).unwrap();
    let hex = crate::format::id_to_hex(&id);
    let header = fs
        .volume
        .path
        .join("sealfs.headers")
        .join(&hex[..2])
        .join(&hex);
    let saved = std::fs::read(&header).unwrap();
    std::fs::remove_file(&header).unwrap();
    std::fs::create_dir(&header).unwrap();
    fs.volume.key_cache.clear();

    let err = fs.open(attr.ino.0, libc::O_RDONLY).map(|_| ()).unwrap_err();
    assert!(
        matches!(&err, VolumeError::Keys(KeyError::HeaderIo { errno, .. }) if *errno == libc::EISDIR),
        "{err:?}"
    );
    assert_eq!(errno_of(&err), fuser::Errno::EISDIR);

    std::fs::remove_dir(&header).unwrap();
    let err = fs.open(attr.ino.0, libc::O_RDONLY).map(|_| ()).unwrap_err();
    assert!(
        matches!(&err, VolumeError::Keys(KeyError::Header { .. })),
        "{err:?}"
    );
    assert_eq!(errno_of(&err), fuser::Errno::EIO);

    // Put back, the file opens again: failures are not cached.
    std::fs::write(&header, saved).unwrap();
    let fh = fs.open(attr.ino.0, libc::O_RDONLY).unwrap().0;
    assert_eq!(fs.read(fh, 0, 10).unwrap(), b"data");
}

/// The fallbacks for backing stores that do not keep O_TMPFILE files make the same files, and
/// a create over an existing name fails without replacing it or leaving a temporary behind.
#[test]
fn every_create_method_makes_readable_files_and_leaves_nothing_behind() {
    use crate::volume::backing::CreateMethod;

    for (tmpfile, noreplace, method) in [
        (false, true, CreateMethod::TempRename),
        (false, false, CreateMethod::Exclusive),
    ] {
        let mut fx = core();
        fx.fs.volume.backing.tmpfile_link = tmpfile;
        fx.fs.volume.backing.rename_noreplace = noreplace;
        assert_eq!(fx.fs.volume.backing.create_method(), method);
        let fs = &fx.fs;
        let (_, fh) = fs
            .create(ROOT, OsStr::new("a"), 0o600, libc::O_RDWR, ROOT_CALLER)
            .unwrap();
        fs.write(fh, 0, b"made", None).unwrap();
        fs.release(fh);
        let again = fs.create(ROOT, OsStr::new("a"), 0o600, libc::O_RDWR, ROOT_CALLER);
        assert!(
            matches!(&again, Err(VolumeError::Io(e)) if e.raw_os_error() == Some(libc::EEXIST)),
            "{method:?}"
        );
        let attr = fs.lookup(ROOT, OsStr::new("a")).unwrap();
        let (fh, _) = fs.open(attr.ino.0, libc::O_RDONLY).unwrap();
        assert_eq!(fs.read(fh, 0, 100).unwrap(), b"made", "{method:?}");
        let names: Vec<_> = std::fs::read_dir(&fs.volume.path)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert!(
            !names.iter().any(|n| n.starts_with("sealfs.new.")),
            "{method:?}: {names:?}"
        );
    }
}

/// Locks programs take, as shared mounts forward them: owners exclude each other on one mount
/// and across mounts (two cores over one cipher dir), byte ranges are exact, F_GETLK names the
/// holder's range, a wait ends when the holder lets go, and a wait whose own owner let go
/// gives up instead of taking a lock nobody would release.
#[test]
fn forwarded_locks_exclude_owners_across_mounts() {
    use crate::coord::file_locks::PlainLock;
    let lock = |start, end, kind| PlainLock { start, end, kind };
    let shared = Tuning::new(false, true);
    let fx = mounted_core(false, shared);
    let (a, b) = (&fx.fs, fx.another_mount(shared));
    let (attr, fh) = a
        .create(ROOT, OsStr::new("db"), 0o600, libc::O_RDWR, ROOT_CALLER)
        .unwrap();
    a.release(fh);
    let (ino_a, ino_b) = (attr.ino.0, b.lookup(ROOT, OsStr::new("db")).unwrap().ino.0);

    assert!(
        a.setlk(ino_a, 1, 7, lock(0, 99, libc::F_WRLCK))
            .unwrap()
            .is_none()
    );
    assert!(
        a.setlk(ino_a, 1, 8, lock(50, 50, libc::F_RDLCK))
            .unwrap()
            .is_some()
    );
    // The same owner number on another mount is another owner.
    let waiting = b.setlk(ino_b, 1, 7, lock(10, 10, libc::F_RDLCK)).unwrap();
    assert!(waiting.is_some());
    assert_eq!(
        b.getlk(ino_b, 9, lock(0, i64::MAX as u64, libc::F_RDLCK))
            .unwrap(),
        Some(lock(0, 99, libc::F_WRLCK))
    );
    assert!(
        b.setlk(ino_b, 1, 9, lock(100, 200, libc::F_WRLCK))
            .unwrap()
            .is_none()
    );
    assert_eq!(
        a.getlk(ino_a, 7, lock(0, 99, libc::F_WRLCK)).unwrap(),
        None,
        "an owner's own locks do not conflict with it"
    );

    let waiter = std::thread::spawn(move || waiting.unwrap().wait());
    std::thread::sleep(std::time::Duration::from_millis(50));
    assert!(!waiter.is_finished());
    a.release_locks(ino_a, 7);
    waiter.join().unwrap().unwrap();

    let abandoned = a.setlk(ino_a, 1, 8, lock(150, 150, libc::F_WRLCK)).unwrap();
    a.release_locks(ino_a, 8);
    assert!(matches!(
        abandoned.unwrap().wait(),
        Err(VolumeError::LockAbandoned)
    ));
    // Unlocking frees the range for others.
    assert!(
        b.setlk(ino_b, 1, 9, lock(100, 200, libc::F_UNLCK))
            .unwrap()
            .is_none()
    );
    assert!(
        a.setlk(ino_a, 1, 8, lock(150, 150, libc::F_WRLCK))
            .unwrap()
            .is_none()
    );
    // An OFD lock's owner is its open file: the release of the handle it came through ends it.
    assert!(
        a.setlk(ino_a, 5, 42, lock(300, 300, libc::F_WRLCK))
            .unwrap()
            .is_none()
    );
    assert!(
        b.setlk(ino_b, 1, 9, lock(300, 300, libc::F_WRLCK))
            .unwrap()
            .is_some()
    );
    a.release_handle_locks(ino_a, 5);
    assert!(
        b.setlk(ino_b, 1, 9, lock(300, 300, libc::F_WRLCK))
            .unwrap()
            .is_none()
    );
}

/// A POSIX ACL in the kernel's xattr form: owner, named user 1000, group, mask, other.
fn acl_with_user_1000(owner: u16, user: u16, group: u16, mask: u16, other: u16) -> Vec<u8> {
    let mut v = 2u32.to_le_bytes().to_vec();
    for (tag, perm, id) in [
        (1u16, owner, u32::MAX),
        (2, user, 1000),
        (4, group, u32::MAX),
        (16, mask, u32::MAX),
        (32, other, u32::MAX),
    ] {
        v.extend_from_slice(&tag.to_le_bytes());
        v.extend_from_slice(&perm.to_le_bytes());
        v.extend_from_slice(&id.to_le_bytes());
    }
    v
}

#[test]
fn acls_set_modes_follow_chmod_and_are_inherited_instead_of_the_umask() {
    for Fixture { fs, dir: _dir } in both_modes() {
        let access = OsStr::new("system.posix_acl_access");
        let default = OsStr::new("system.posix_acl_default");
        let with_umask = Caller {
            umask: 0o077,
            ..ROOT_CALLER
        };
        // No default ACL: the umask applies.
        let plain = fs
            .mkdir(ROOT, OsStr::new("plain"), 0o777, with_umask)
            .unwrap();
        assert_eq!(plain.perm, 0o700);
        // An access ACL sets the mode (the mask is the group's bits); chmod moves the mask.
        let (f, fh) = fs
            .create(ROOT, OsStr::new("f"), libc::S_IFREG | 0o600, 0, ROOT_CALLER)
            .unwrap();
        fs.release(fh);
        let acl = acl_with_user_1000(6, 7, 4, 7, 0);
        fs.setxattr(f.ino.0, access, &acl, 0, ROOT_CALLER).unwrap();
        assert_eq!(mode_of(&fs, f.ino.0), 0o670);
        assert_eq!(fs.getxattr(f.ino.0, access).unwrap(), acl);
        fs.setattr(
            ROOT_CALLER,
            f.ino.0,
            AttrChanges {
                mode: Some(0o640),
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(
            fs.getxattr(f.ino.0, access).unwrap(),
            acl_with_user_1000(6, 7, 4, 4, 0)
        );
        // A directory's default ACL: the caller's umask is ignored, the new file's mode cut by the
        // ACL. (The test process's own umask, 022 where a mount's daemon has 0, takes no bit the
        // ACL leaves.)
        let d = fs.mkdir(ROOT, OsStr::new("d"), 0o755, ROOT_CALLER).unwrap();
        fs.setxattr(
            d.ino.0,
            default,
            &acl_with_user_1000(7, 7, 5, 5, 0),
            0,
            ROOT_CALLER,
        )
        .unwrap();
        let (g, fh) = fs
            .create(
                d.ino.0,
                OsStr::new("g"),
                libc::S_IFREG | 0o666,
                0,
                with_umask,
            )
            .unwrap();
        fs.release(fh);
        assert_eq!(g.perm, 0o640);
        assert_eq!(
            fs.getxattr(g.ino.0, access).unwrap(),
            acl_with_user_1000(6, 7, 5, 4, 0)
        );
        assert!(matches!(
            fs.getxattr(g.ino.0, default),
            Err(VolumeError::Io(e)) if e.raw_os_error() == Some(libc::ENODATA)
        ));
        let sub = fs
            .mkdir(d.ino.0, OsStr::new("sub"), 0o777, with_umask)
            .unwrap();
        assert_eq!(sub.perm, 0o750);
        assert!(fs.getxattr(sub.ino.0, default).is_ok());
        // Removing an ACL that is not there succeeds, as on ext4.
        fs.removexattr(plain.ino.0, access).unwrap();
    }
}
