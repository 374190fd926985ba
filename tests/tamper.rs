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
    let id = id_to_hex(&decode_preamble(&bytes[..PREAMBLE_LEN as usize]).unwrap());
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
