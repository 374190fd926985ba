//! The reverse view without a mount: requests answered as the FUSE shell asks them, over a
//! real plaintext tree in a temporary directory, checked against the forward reader.

use std::ffi::{OsStr, OsString};
use std::sync::Arc;

use super::{ROOT_NODE, ReverseView};
use crate::format::config::REVERSE_CONFIG_FILE;
use crate::format::header::FileHeader;
use crate::io::{DataFile, Layout};
use crate::keys::{
    FileKeys, HeaderKeys, KeyfileProvider, MasterKeyProvider, VolumeKeys, write_new_keyfile,
};
use crate::reverse::Excludes;
use crate::volume::names::encrypt_name;
use crate::volume::{InitOptions, Volume, VolumeError};

struct Fixture {
    view: ReverseView,
    keys: Arc<VolumeKeys>,
    dir: tempfile::TempDir,
}

fn plain_text() -> Vec<u8> {
    (0..10_000u32).map(|i| (i * 13 % 251) as u8).collect()
}

/// A plaintext tree: a.txt (10,000 bytes), sub/b.txt, a symlink and an excluded log.
fn view_with(excludes: &[&str]) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let plain = dir.path().join("plain");
    std::fs::create_dir_all(plain.join("sub")).unwrap();
    std::fs::write(plain.join("a.txt"), plain_text()).unwrap();
    std::fs::write(plain.join("sub/b.txt"), b"bee").unwrap();
    std::fs::write(plain.join("debug.log"), b"noise").unwrap();
    std::os::unix::fs::symlink("a.txt", plain.join("ln")).unwrap();
    let key = dir.path().join("k");
    write_new_keyfile(&key).unwrap();
    let providers = || -> Vec<Box<dyn MasterKeyProvider>> {
        vec![Box::new(KeyfileProvider::load(&key).unwrap())]
    };
    let config =
        Volume::init_reverse(&plain, &InitOptions::default(), &providers(), [5; 16]).unwrap();
    let keys = Arc::new(crate::keys::unlock(&config, &providers()).unwrap());
    let patterns: Vec<String> = excludes.iter().map(|p| p.to_string()).collect();
    let view = ReverseView::new(&plain, keys.clone(), Excludes::new(&patterns).unwrap()).unwrap();
    Fixture { view, keys, dir }
}

impl Fixture {
    fn encrypted(&self, name: &str) -> OsString {
        encrypt_name(&self.keys.names, OsStr::new(name))
            .unwrap()
            .entry()
            .into()
    }

    fn listing(&self, node: u64) -> Vec<OsString> {
        let fh = self.view.opendir(node).unwrap();
        let names = self
            .view
            .dir_entries(fh)
            .unwrap()
            .iter()
            .map(|e| e.name.clone())
            .collect();
        self.view.release(fh);
        names
    }

    fn read_all(&self, node: u64, piece: u32) -> Vec<u8> {
        let fh = self.view.open(node, libc::O_RDONLY).unwrap();
        let mut out = Vec::new();
        loop {
            let got = self.view.read(fh, out.len() as u64, piece).unwrap();
            if got.is_empty() {
                break;
            }
            out.extend_from_slice(&got);
        }
        self.view.release(fh);
        out
    }

    fn plain_dir(&self) -> std::path::PathBuf {
        self.dir.path().join("plain")
    }
}

#[test]
fn the_root_lists_config_headers_and_encrypted_names_only() {
    let fx = view_with(&[]);
    let mut names = fx.listing(ROOT_NODE);
    names.sort();
    let mut expected: Vec<OsString> = vec![
        ".".into(),
        "..".into(),
        "sealfs.conf".into(),
        "sealfs.headers".into(),
        fx.encrypted("a.txt"),
        fx.encrypted("sub"),
        fx.encrypted("ln"),
        fx.encrypted("debug.log"),
    ];
    expected.sort();
    assert_eq!(names, expected);
    // The view's config is the reverse config's bytes.
    let config = fx
        .view
        .lookup(ROOT_NODE, OsStr::new("sealfs.conf"))
        .unwrap();
    assert_eq!(
        fx.read_all(config.ino.0, 100),
        std::fs::read(fx.plain_dir().join(REVERSE_CONFIG_FILE)).unwrap()
    );
    // The private config under its own name, and plaintext names, are not there.
    for name in [REVERSE_CONFIG_FILE, "a.txt"] {
        assert!(matches!(
            fx.view.lookup(ROOT_NODE, OsStr::new(name)),
            Err(VolumeError::NotFound)
        ));
    }
}

#[test]
fn a_data_file_and_its_header_read_back_through_the_forward_path() {
    let fx = view_with(&[]);
    let attr = fx.view.lookup(ROOT_NODE, &fx.encrypted("a.txt")).unwrap();
    let layout = Layout::new(4096).unwrap();
    assert_eq!(attr.size, layout.backing_size(10_000));
    // Read in pieces that cut blocks anywhere: the same bytes as one read, every time.
    let sealed = fx.read_all(attr.ino.0, 1000);
    assert_eq!(sealed, fx.read_all(attr.ino.0, 1 << 20));
    assert_eq!(sealed.len() as u64, attr.size);

    // Its header, found under sealfs.headers/<hh>/<id> by the id in the preamble.
    let id: [u8; 16] = sealed[8..24].try_into().unwrap();
    let hex = crate::format::id_to_hex(&id);
    let headers = fx
        .view
        .lookup(ROOT_NODE, OsStr::new("sealfs.headers"))
        .unwrap();
    let bucket = fx
        .view
        .lookup(headers.ino.0, OsStr::new(&hex[..2]))
        .unwrap();
    let header = fx.view.lookup(bucket.ino.0, OsStr::new(&hex)).unwrap();
    let header = FileHeader::decode(&fx.read_all(header.ino.0, 4096)).unwrap();
    let material = FileKeys::volume_mode(fx.keys.clone())
        .open_header(&header)
        .unwrap();

    let out = fx.dir.path().join("data");
    std::fs::write(&out, &sealed).unwrap();
    let file = std::fs::File::open(&out).unwrap();
    let forward = DataFile::new(
        &file,
        layout,
        &id,
        &material.content,
        crate::io::Holes::AnyZeroBlock,
    );
    assert_eq!(forward.read_at(0, 1 << 20).unwrap(), plain_text());
}

#[test]
fn excluded_undecryptable_and_write_requests_are_refused() {
    let fx = view_with(&["*.log"]);
    assert!(!fx.listing(ROOT_NODE).contains(&fx.encrypted("debug.log")));
    assert!(matches!(
        fx.view.lookup(ROOT_NODE, &fx.encrypted("debug.log")),
        Err(VolumeError::NotFound)
    ));
    assert!(matches!(
        fx.view
            .lookup(ROOT_NODE, OsStr::new("bm90LWEtc2VhbGVkLW5hbWU")),
        Err(VolumeError::NotFound)
    ));
    let sub = fx.view.lookup(ROOT_NODE, &fx.encrypted("sub")).unwrap();
    assert_eq!(sub.kind, fuser::FileType::Directory);
    let b = fx.view.lookup(sub.ino.0, &fx.encrypted("b.txt")).unwrap();
    assert!(matches!(
        fx.view.open(b.ino.0, libc::O_RDWR),
        Err(VolumeError::ReadOnly)
    ));
    let not_a_dir = fx.view.opendir(b.ino.0).map(|_| ()).unwrap_err();
    assert_eq!(
        crate::shell::errno::errno_of(&not_a_dir),
        fuser::Errno::ENOTDIR
    );
    // A symlink's target is sealed deterministically, and is no regular file to open.
    let ln = fx.view.lookup(ROOT_NODE, &fx.encrypted("ln")).unwrap();
    let target = fx.view.readlink(ln.ino.0).unwrap();
    assert_eq!(target, fx.view.readlink(ln.ino.0).unwrap());
    assert_eq!(
        crate::volume::names::decrypt_symlink(
            &fx.keys.names,
            OsStr::new(std::str::from_utf8(&target).unwrap())
        )
        .unwrap(),
        b"a.txt"
    );
    assert!(fx.view.open(ln.ino.0, libc::O_RDONLY).is_err());
}

#[test]
fn lookups_are_counted_and_forgotten() {
    let fx = view_with(&[]);
    let before = fx.view.node_count();
    let a = fx.view.lookup(ROOT_NODE, &fx.encrypted("a.txt")).unwrap();
    fx.view.lookup(ROOT_NODE, &fx.encrypted("a.txt")).unwrap();
    assert_eq!(fx.view.node_count(), before + 1);
    fx.view.forget(a.ino.0, 1);
    assert_eq!(fx.view.node_count(), before + 1, "one lookup still held");
    fx.view.forget(a.ino.0, 1);
    assert_eq!(fx.view.node_count(), before);
    // A file renamed in the plaintext tree is found under its new name.
    std::fs::rename(fx.plain_dir().join("a.txt"), fx.plain_dir().join("c.txt")).unwrap();
    assert!(fx.view.lookup(ROOT_NODE, &fx.encrypted("a.txt")).is_err());
    let c = fx.view.lookup(ROOT_NODE, &fx.encrypted("c.txt")).unwrap();
    assert_eq!(c.ino, a.ino);
}
