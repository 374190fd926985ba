//! Attacks on the cipher dir: every one must read as EIO plus a log line, never as wrong
//! plaintext, never a panic or a hang.

mod common;

use std::fs;
use std::io::ErrorKind;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use common::{TestVolume, files_under, sealfs};
use sealfs::format::block::{Layout, PREAMBLE_LEN, decode_preamble};
use sealfs::format::id_to_hex;

const A_LEN: usize = 3 * 4096 + 100;
const B_LEN: usize = 5 * 4096 + 7;

fn layout() -> Layout {
    Layout::new(4096).unwrap()
}

/// A volume holding files `a` and `b` (told apart by size), unmounted.
fn volume_with_two_files() -> TestVolume {
    let vol = TestVolume::new();
    let m = vol.mount();
    fs::write(m.p("a"), vec![b'a'; A_LEN]).unwrap();
    fs::write(m.p("b"), vec![b'b'; B_LEN]).unwrap();
    std::os::unix::fs::symlink("target-of-link", m.p("link")).unwrap();
    m.unmount();
    vol
}

fn data_file(vol: &TestVolume, plain_len: usize) -> PathBuf {
    let want = layout().backing_size(plain_len as u64);
    let found: Vec<_> = files_under(&vol.cipher)
        .into_iter()
        .filter(|p| {
            !p.to_string_lossy().contains("sealfs.") && fs::metadata(p).unwrap().len() == want
        })
        .collect();
    assert_eq!(found.len(), 1, "{found:?}");
    found[0].clone()
}

fn header_of(vol: &TestVolume, data: &Path) -> PathBuf {
    let bytes = fs::read(data).unwrap();
    let id = id_to_hex(
        &decode_preamble(&bytes[..PREAMBLE_LEN as usize])
            .unwrap()
            .file_id,
    );
    vol.cipher.join("sealfs.headers").join(&id[..2]).join(id)
}

fn flip(path: &Path, offset: u64) {
    let f = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap();
    let mut b = [0u8];
    f.read_exact_at(&mut b, offset).unwrap();
    f.write_all_at(&[b[0] ^ 0x10], offset).unwrap();
}

fn assert_eio<T: std::fmt::Debug>(result: std::io::Result<T>) {
    let err = result.expect_err("tampering must not go unnoticed");
    assert_eq!(err.raw_os_error(), Some(libc::EIO), "{err}");
}

fn assert_logged(log: &str) {
    assert!(log.contains("integrity failure"), "no log line: {log}");
}

#[test]
fn flipped_bit_in_a_block() {
    let vol = volume_with_two_files();
    let data = data_file(&vol, A_LEN);
    flip(&data, layout().block_offset(1) + 100);
    let m = vol.mount();
    assert_eio(fs::read(m.p("a")));
    assert_eq!(
        fs::read(m.p("b")).unwrap(),
        vec![b'b'; B_LEN],
        "other files unharmed"
    );
    assert_logged(&m.unmount());
}

#[test]
fn blocks_moved_within_and_between_files() {
    let vol = volume_with_two_files();
    let (a, b) = (data_file(&vol, A_LEN), data_file(&vol, B_LEN));
    let sbs = layout().sealed_block_size() as usize;
    let fa = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&a)
        .unwrap();
    let fb = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&b)
        .unwrap();
    let (mut block0, mut block1) = (vec![0u8; sbs], vec![0u8; sbs]);
    fa.read_exact_at(&mut block0, layout().block_offset(0))
        .unwrap();
    fa.read_exact_at(&mut block1, layout().block_offset(1))
        .unwrap();
    fa.write_all_at(&block1, layout().block_offset(0)).unwrap();
    fa.write_all_at(&block0, layout().block_offset(1)).unwrap();
    fb.write_all_at(&block0, layout().block_offset(2)).unwrap();
    let m = vol.mount();
    assert_eio(fs::read(m.p("a")));
    assert_eio(fs::read(m.p("b")));
    assert_logged(&m.unmount());
}

#[test]
fn header_bit_flip_and_header_swap() {
    let vol = volume_with_two_files();
    let (a, b) = (data_file(&vol, A_LEN), data_file(&vol, B_LEN));
    let (ha, hb) = (header_of(&vol, &a), header_of(&vol, &b));
    let len = fs::metadata(&ha).unwrap().len();
    for offset in [0, 10, 30, len - 1] {
        let saved = fs::read(&ha).unwrap();
        flip(&ha, offset);
        let m = vol.mount();
        assert_eio(fs::read(m.p("a")));
        assert_logged(&m.unmount());
        fs::write(&ha, saved).unwrap();
    }
    // Swap the two headers' contents.
    let (ca, cb) = (fs::read(&ha).unwrap(), fs::read(&hb).unwrap());
    fs::write(&ha, &cb).unwrap();
    fs::write(&hb, &ca).unwrap();
    let m = vol.mount();
    assert_eio(fs::read(m.p("a")));
    assert_eio(fs::read(m.p("b")));
    m.unmount();
    // Point a's data file at b's header: b's key, a's blocks.
    fs::write(&ha, &ca).unwrap();
    fs::write(&hb, &cb).unwrap();
    let b_preamble = fs::read(&b).unwrap()[..PREAMBLE_LEN as usize].to_vec();
    fs::OpenOptions::new()
        .write(true)
        .open(&a)
        .unwrap()
        .write_all_at(&b_preamble, 0)
        .unwrap();
    let m = vol.mount();
    assert_eio(fs::read(m.p("a")));
    assert_eq!(fs::read(m.p("b")).unwrap(), vec![b'b'; B_LEN]);
    assert_logged(&m.unmount());
}

#[test]
fn torn_tail_is_reported() {
    let vol = volume_with_two_files();
    let a = data_file(&vol, A_LEN);
    let len = fs::metadata(&a).unwrap().len();
    fs::OpenOptions::new()
        .write(true)
        .open(&a)
        .unwrap()
        .set_len(len - 50)
        .unwrap();
    let m = vol.mount();
    assert_eio(fs::read(m.p("a")));
    m.unmount();
}

#[test]
fn tampered_names_and_symlink_targets() {
    let vol = volume_with_two_files();
    // The symlink is the one backing symlink.
    let mut link = None;
    for e in fs::read_dir(&vol.cipher).unwrap() {
        let e = e.unwrap();
        if e.file_type().unwrap().is_symlink() {
            link = Some(e.path());
        }
    }
    let link = link.unwrap();
    let target = fs::read_link(&link).unwrap().to_string_lossy().into_owned();
    let mut bytes = target.into_bytes();
    bytes[20] = if bytes[20] == b'A' { b'B' } else { b'A' };
    fs::remove_file(&link).unwrap();
    std::os::unix::fs::symlink(String::from_utf8(bytes).unwrap(), &link).unwrap();
    // Tamper with the name of a's data file.
    let a = data_file(&vol, A_LEN);
    let mut name = a
        .file_name()
        .unwrap()
        .to_string_lossy()
        .into_owned()
        .into_bytes();
    name[5] = if name[5] == b'A' { b'B' } else { b'A' };
    fs::rename(&a, a.with_file_name(String::from_utf8(name).unwrap())).unwrap();
    let m = vol.mount();
    assert_eio(fs::read_link(m.p("link")));
    let listed: Vec<_> = fs::read_dir(&m.path)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(
        !listed.iter().any(|n| n == "a"),
        "a name that fails authentication is not shown"
    );
    assert!(listed.iter().any(|n| n == "b"));
    assert_eq!(fs::read(m.p("a")).unwrap_err().kind(), ErrorKind::NotFound);
    let log = m.unmount();
    assert!(log.contains("does not decrypt"), "{log}");
}

#[test]
fn tampered_config_refuses_to_mount() {
    let vol = TestVolume::new();
    let conf = vol.cipher.join("sealfs.conf");
    let text = fs::read_to_string(&conf).unwrap();
    let mut perms = fs::metadata(&conf).unwrap().permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o600);
    fs::set_permissions(&conf, perms).unwrap();
    // A field edit without the key: the MAC catches it.
    fs::write(
        &conf,
        text.replace("\"block_size\": 4096", "\"block_size\": 8192"),
    )
    .unwrap();
    let out = sealfs(
        &vol.keys,
        &[
            "mount",
            vol.cipher.to_str().unwrap(),
            vol.mnt.to_str().unwrap(),
        ],
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("modified by someone without its key"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "one-line error: {err}");
    // A flipped bit in the wrapped keyring.
    let field = "\"wrapped_keyring\": \"";
    let at = text.find(field).unwrap() + field.len() + 5;
    let mut bytes = text.clone().into_bytes();
    bytes[at] = if bytes[at] == b'A' { b'B' } else { b'A' };
    fs::write(&conf, &bytes).unwrap();
    let out = sealfs(
        &vol.keys,
        &[
            "mount",
            vol.cipher.to_str().unwrap(),
            vol.mnt.to_str().unwrap(),
        ],
    );
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("damaged"));
}

/// A hole cannot be forged over data (docs/FORMAT.md, "Holes"): a written block zeroed in the
/// cipher dir reads as EIO, while the file's real holes (a sparse gap, a truncate up, a punched
/// range) read as zeros, before and after a remount. The hole map itself is sealed: a flipped
/// bit makes the holes unreadable (EIO), a map copied from another file does not open, a
/// deleted map turns every hole into EIO; fsck reports unrecorded all-zero blocks and only
/// `--repair` accepts them as holes.
#[test]
fn zeroed_blocks_are_not_holes() {
    let vol = TestVolume::new();
    let m = vol.mount();
    let bs = 4096u64;
    // "a": data, a gap (blocks 3..6), data; then truncated up (holes to block 11), and
    // blocks 1..2 punched.
    let f = fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .read(true)
        .write(true)
        .open(m.p("a"))
        .unwrap();
    f.write_all_at(&vec![b'x'; 3 * bs as usize], 0).unwrap();
    f.write_all_at(&vec![b'y'; bs as usize], 6 * bs).unwrap();
    f.set_len(11 * bs).unwrap();
    nix::fcntl::fallocate(
        &f,
        nix::fcntl::FallocateFlags::FALLOC_FL_PUNCH_HOLE
            | nix::fcntl::FallocateFlags::FALLOC_FL_KEEP_SIZE,
        bs as i64,
        bs as i64,
    )
    .unwrap();
    drop(f);
    fs::write(m.p("b"), vec![b'b'; 4 * bs as usize]).unwrap();
    let mut want = vec![0u8; 11 * bs as usize];
    want[..bs as usize].fill(b'x');
    want[2 * bs as usize..3 * bs as usize].fill(b'x');
    want[6 * bs as usize..7 * bs as usize].fill(b'y');
    assert_eq!(fs::read(m.p("a")).unwrap(), want);
    m.unmount();
    vol.assert_fsck_clean();
    let m = vol.mount();
    assert_eq!(
        fs::read(m.p("a")).unwrap(),
        want,
        "holes recorded across a remount"
    );
    m.unmount();

    let a = data_file(&vol, want.len());
    let b = data_file(&vol, 4 * bs as usize);
    let sbs = layout().sealed_block_size() as usize;
    let zero_block = |path: &Path, block: u64| {
        let f = fs::OpenOptions::new().write(true).open(path).unwrap();
        f.write_all_at(&vec![0u8; sbs], layout().block_offset(block))
            .unwrap();
    };
    // Zero written blocks: block 2 of "a" (between a punched block and a gap), block 0 of "b".
    zero_block(&a, 2);
    zero_block(&b, 0);
    let m = vol.mount();
    assert_eio(fs::read(m.p("a")));
    assert_eio(fs::read(m.p("b")));
    let fa = fs::File::open(m.p("a")).unwrap();
    let mut buf = vec![0u8; bs as usize];
    fa.read_exact_at(&mut buf, bs).unwrap();
    assert_eq!(
        buf,
        vec![0; bs as usize],
        "the punched block is still a hole"
    );
    fa.read_exact_at(&mut buf, 4 * bs).unwrap();
    assert_eq!(buf, vec![0; bs as usize], "the gap is still a hole");
    fa.read_exact_at(&mut buf, 10 * bs).unwrap();
    assert_eq!(buf, vec![0; bs as usize], "the truncated-up end is a hole");
    drop(fa);
    let log = m.unmount();
    assert!(log.contains("not a recorded hole"), "{log}");

    let out = vol.run(&["fsck", vol.cipher_str()]);
    assert_eq!(out.status.code(), Some(4));
    let report = String::from_utf8_lossy(&out.stdout);
    assert_eq!(report.matches("unrecorded-hole: /").count(), 2, "{report}");
    let out = vol.run(&["fsck", "--repair", vol.cipher_str()]);
    assert_eq!(out.status.code(), Some(1), "{}", common::stderr(&out));
    vol.assert_fsck_clean();
    let m = vol.mount();
    let mut accepted = want.clone();
    accepted[2 * bs as usize..3 * bs as usize].fill(0);
    assert_eq!(
        fs::read(m.p("a")).unwrap(),
        accepted,
        "--repair accepted them"
    );
    m.unmount();

    // The map itself: a flipped bit, then a map copied from another file, then none at all.
    let map_of = |data: &Path| {
        let mut p = header_of(&vol, data).into_os_string();
        p.push(".holes");
        PathBuf::from(p)
    };
    let a_map = map_of(&a);
    let saved = fs::read(&a_map).unwrap();
    flip(&a_map, saved.len() as u64 - 3);
    let m = vol.mount();
    assert_eio(fs::read(m.p("a")));
    assert_eq!(
        fs::read(m.p("b")).unwrap()[bs as usize..],
        vec![b'b'; 3 * bs as usize][..],
        "other files unharmed"
    );
    m.unmount();
    fs::write(&a_map, &saved).unwrap();
    // "b" gets a map of its own (its zeroed block 0 was accepted), which must not open as a's.
    fs::copy(map_of(&b), &a_map).unwrap();
    let m = vol.mount();
    assert_eio(fs::read(m.p("a")));
    m.unmount();
    fs::remove_file(&a_map).unwrap();
    let m = vol.mount();
    assert_eio(fs::read(m.p("a")));
    fs::File::open(m.p("a"))
        .unwrap()
        .read_exact_at(&mut buf, 0)
        .unwrap();
    assert_eq!(buf, vec![b'x'; bs as usize], "data blocks still read");
    m.unmount();
}
