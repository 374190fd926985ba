//! Encryption of names, symlink targets and extended attributes with the volume's keys, and
//! the long-name sidecars kept beside their directory entries.

use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::BorrowedFd;
use std::os::unix::ffi::{OsStrExt, OsStringExt};

use nix::fcntl::{OFlag, openat};
use nix::sys::stat::Mode;
use nix::unistd::{UnlinkatFlags, unlinkat};

use super::error::{Result, VolumeError};
use crate::crypto::TAG_LEN;
use crate::format::name::{
    self, EntryKind, MAX_BACKING_XATTR_VALUE, MAX_LONG_ENCODING, MAX_PLAIN_NAME, NAME_AAD,
    SYMLINK_AAD, XATTR_NAME_AAD, XATTR_NAME_V2_AAD, XATTR_SPLIT_VALUE_AAD, XATTR_VALUE_AAD,
};
use crate::keys::NameKeys;

/// An entry's name in the backing directory (inline, or long with a sidecar).
pub use crate::format::name::BackingName;

/// Longest backing symlink target the kernel accepts (PATH_MAX less the terminating NUL).
const MAX_BACKING_TARGET: usize = 4095;
pub const USER_XATTR_PREFIX: &[u8] = b"user.";
/// The two POSIX ACL attributes, kept like `user.*` ones (the whole name sealed, stored under
/// `user.`): the only names of another namespace a mount keeps.
pub const ACL_XATTR_NAMES: [&str; 2] = ["system.posix_acl_access", "system.posix_acl_default"];

pub fn encrypt_name(keys: &NameKeys, plain: &OsStr) -> Result<BackingName> {
    let bytes = plain.as_bytes();
    if bytes.is_empty() || bytes == b"." || bytes == b".." || bytes.contains(&b'/') {
        return Err(VolumeError::InvalidName);
    }
    if bytes.len() > MAX_PLAIN_NAME {
        return Err(VolumeError::NameTooLong);
    }
    let sealed = keys
        .entries
        .seal_deterministic(NAME_AAD, &name::pad(bytes))
        .map_err(VolumeError::Seal)?;
    Ok(BackingName::from_sealed(&sealed))
}

/// The plaintext of an encrypted (short-form) backing name.
pub fn decrypt_encoded(keys: &NameKeys, encoded: &str) -> Result<OsString> {
    let corrupt = || VolumeError::Corrupt(format!("encrypted name {encoded:.40} does not decrypt"));
    let sealed = name::decode_b64(encoded, "name").map_err(|_| corrupt())?;
    let padded = keys
        .entries
        .open_deterministic(NAME_AAD, &sealed)
        .map_err(|_| corrupt())?;
    let plain = name::unpad(&padded).map_err(|_| corrupt())?;
    if plain.is_empty() || plain.contains(&b'/') || plain.len() > MAX_PLAIN_NAME {
        return Err(corrupt());
    }
    Ok(OsString::from_vec(plain.to_vec()))
}

/// The plaintext name of a backing directory entry; None for sealfs's own files.
pub fn decrypt_entry(
    keys: &NameKeys,
    dir: BorrowedFd<'_>,
    entry: &OsStr,
) -> Result<Option<OsString>> {
    let Some(entry) = entry.to_str() else {
        return Err(VolumeError::Corrupt("backing name is not ASCII".into()));
    };
    match name::classify_entry(entry) {
        EntryKind::Internal => Ok(None),
        EntryKind::Encrypted(encoded) => decrypt_encoded(keys, encoded).map(Some),
        EntryKind::Long(hashed) => {
            let full = read_long_sidecar(dir, hashed)?;
            if name::long_entry_name(&full) != hashed {
                return Err(VolumeError::Corrupt(format!(
                    "long-name sidecar of {hashed} does not match it"
                )));
            }
            decrypt_encoded(keys, &full).map(Some)
        }
    }
}

fn read_long_sidecar(dir: BorrowedFd<'_>, hashed: &str) -> Result<String> {
    let sidecar = format!("{hashed}{}", name::LONG_NAME_SUFFIX);
    let fd = openat(
        dir,
        sidecar.as_str(),
        OFlag::O_RDONLY | OFlag::O_CLOEXEC | OFlag::O_NOFOLLOW,
        Mode::empty(),
    )
    .map_err(|e| VolumeError::Corrupt(format!("long-name sidecar {sidecar}: {e}")))?;
    let mut text = String::new();
    File::from(fd)
        .take(MAX_LONG_ENCODING as u64)
        .read_to_string(&mut text)
        .map_err(|_| VolumeError::Corrupt(format!("long-name sidecar {sidecar} is not text")))?;
    Ok(text)
}

/// Writes the sidecar of a long name before its entry exists, durably (an entry made durable
/// by an fsync of its directory must find it whole after a power cut), so a crash can leave an
/// unused sidecar (swept by the next mount, cleaned by fsck) but never an entry whose name
/// cannot be recovered. A sidecar already there (the entry a rename replaces, a crash's
/// leftover) is never cut in place: kept where it holds the name already, else replaced whole
/// by a rename.
pub fn write_long_sidecar(dir: BorrowedFd<'_>, name: &BackingName) -> Result<()> {
    let (Some(sidecar), BackingName::Long { full, hashed }) = (name.sidecar(), name) else {
        return Ok(());
    };
    let create = |at: &str| {
        openat(
            dir,
            at,
            OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_CLOEXEC | OFlag::O_NOFOLLOW,
            Mode::from_bits_truncate(0o644),
        )
    };
    let write = |fd| -> Result<()> {
        let mut file = File::from(fd);
        file.write_all(full.as_bytes())?;
        file.sync_data()?;
        Ok(())
    };
    match create(sidecar.as_str()) {
        Ok(fd) => write(fd),
        Err(nix::Error::EEXIST) => {
            if read_long_sidecar(dir, hashed).is_ok_and(|there| there == *full) {
                // Whole already; durable too (a sidecar an older sealfs wrote may not be).
                let fd = openat(
                    dir,
                    sidecar.as_str(),
                    OFlag::O_RDONLY | OFlag::O_CLOEXEC | OFlag::O_NOFOLLOW,
                    Mode::empty(),
                )?;
                File::from(fd).sync_data()?;
                return Ok(());
            }
            let bytes: [u8; 8] =
                crate::crypto::random_array().map_err(|e| VolumeError::Keys(e.into()))?;
            let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
            let temp = format!("{}{hex}", super::NEW_FILE_PREFIX);
            write(create(temp.as_str())?)?;
            nix::fcntl::renameat(dir, temp.as_str(), dir, sidecar.as_str())?;
            Ok(())
        }
        Err(e) => Err(e.into()),
    }
}

pub fn remove_long_sidecar(dir: BorrowedFd<'_>, name: &BackingName) {
    if let Some(sidecar) = name.sidecar()
        && let Err(e) = unlinkat(dir, sidecar.as_str(), UnlinkatFlags::NoRemoveDir)
    {
        tracing::warn!(%sidecar, error = %e, "could not remove long-name sidecar");
    }
}

pub fn encrypt_symlink(keys: &NameKeys, target: &[u8]) -> Result<String> {
    if target.is_empty() {
        return Err(VolumeError::InvalidName);
    }
    let sealed = keys
        .symlinks
        .seal(SYMLINK_AAD, target)
        .map_err(VolumeError::Seal)?;
    let encoded = name::encode_b64(&sealed);
    if encoded.len() > MAX_BACKING_TARGET {
        return Err(VolumeError::NameTooLong);
    }
    Ok(encoded)
}

pub fn decrypt_symlink(keys: &NameKeys, encoded: &OsStr) -> Result<Vec<u8>> {
    let corrupt = || VolumeError::Corrupt("symlink target does not decrypt".into());
    let text = encoded.to_str().ok_or_else(corrupt)?;
    let sealed = name::decode_b64(text, "symlink").map_err(|_| corrupt())?;
    keys.symlinks
        .open(SYMLINK_AAD, &sealed)
        .map_err(|_| corrupt())
}

/// The backing names a plaintext `user.*` name or POSIX ACL may be stored under, each
/// `user.` + base64url(sealed name).
pub struct XattrNames {
    /// Version 2, what a write uses: the namespace as one byte.
    pub current: Vec<u8>,
    /// Version 1, the whole name (what sealfs wrote before 2026-12-07); none where it would
    /// be too long.
    pub older: Option<Vec<u8>>,
}

impl XattrNames {
    pub fn of(keys: &NameKeys, plain: &OsStr) -> Result<Self> {
        Ok(XattrNames {
            current: encrypt_xattr_name(keys, plain)?,
            older: encrypt_xattr_name_v1(keys, plain).ok(),
        })
    }
}

/// The version 2 backing name of a plaintext `user.*` name or POSIX ACL.
pub fn encrypt_xattr_name(keys: &NameKeys, plain: &OsStr) -> Result<Vec<u8>> {
    let compact = name::compact_xattr_name(sealable_xattr_name(plain)?)
        .ok_or(VolumeError::Unsupported("only user.* and system.* names"))?;
    seal_xattr_name(keys, XATTR_NAME_V2_AAD, &compact)
}

/// The version 1 backing name (the whole name sealed).
pub fn encrypt_xattr_name_v1(keys: &NameKeys, plain: &OsStr) -> Result<Vec<u8>> {
    seal_xattr_name(keys, XATTR_NAME_AAD, sealable_xattr_name(plain)?)
}

fn sealable_xattr_name(plain: &OsStr) -> Result<&[u8]> {
    let bytes = plain.as_bytes();
    if !bytes.starts_with(USER_XATTR_PREFIX)
        && !ACL_XATTR_NAMES.iter().any(|n| n.as_bytes() == bytes)
    {
        return Err(VolumeError::Unsupported(
            "only user.* extended attributes and POSIX ACLs",
        ));
    }
    Ok(bytes)
}

fn seal_xattr_name(keys: &NameKeys, aad: &[u8], plain: &[u8]) -> Result<Vec<u8>> {
    let sealed = keys
        .xattr_names
        .seal_deterministic(aad, &name::pad(plain))
        .map_err(VolumeError::Seal)?;
    let mut out = USER_XATTR_PREFIX.to_vec();
    out.extend_from_slice(name::encode_b64(&sealed).as_bytes());
    if out.len() > 255 {
        return Err(VolumeError::XattrNameTooLong);
    }
    Ok(out)
}

/// The plaintext name of a backing attribute of either version.
pub fn decrypt_xattr_name(keys: &NameKeys, backing: &[u8]) -> Option<Vec<u8>> {
    let encoded = std::str::from_utf8(backing.strip_prefix(USER_XATTR_PREFIX)?).ok()?;
    let sealed = name::decode_b64(encoded, "xattr").ok()?;
    let open = |aad| {
        let padded = keys.xattr_names.open_deterministic(aad, &sealed).ok()?;
        name::unpad(&padded).ok().map(<[u8]>::to_vec)
    };
    match open(XATTR_NAME_V2_AAD) {
        Some(compact) => name::expand_xattr_name(&compact),
        None => open(XATTR_NAME_AAD),
    }
}

/// Whether a backing `user.*` name has the shape of one sealfs wrote, whether or not it
/// opens: base64url after the prefix of a padded name (whole 16-byte blocks) and its tag.
/// Other programs' attributes (`user.rsync.%stat` of rsync --fake-super, or a `user.test`,
/// which is base64url but 3 bytes long) do not.
pub fn looks_sealed_xattr_name(backing: &[u8]) -> bool {
    backing
        .strip_prefix(USER_XATTR_PREFIX)
        .and_then(|rest| std::str::from_utf8(rest).ok())
        .and_then(|encoded| name::decode_b64(encoded, "xattr").ok())
        .is_some_and(|sealed| {
            sealed.len() % name::NAME_PAD == 0 && sealed.len() >= name::NAME_PAD + TAG_LEN
        })
}

/// How a sealed xattr value is stored: in one backing attribute, or split over two (the
/// label its sealing is bound to says which, so a head read without its tail never opens).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ValueLayout {
    Whole,
    Split,
}

impl ValueLayout {
    /// The layout a value of `len` plaintext bytes is written in.
    pub fn for_len(len: usize) -> Self {
        if len + crate::crypto::SEAL_OVERHEAD > MAX_BACKING_XATTR_VALUE {
            ValueLayout::Split
        } else {
            ValueLayout::Whole
        }
    }

    fn aad(self, backing_name: &[u8]) -> Vec<u8> {
        let label = match self {
            ValueLayout::Whole => XATTR_VALUE_AAD,
            ValueLayout::Split => XATTR_SPLIT_VALUE_AAD,
        };
        [label, backing_name].concat()
    }
}

/// Seals `value` for the backing attribute `backing_name`, in the layout its length needs.
pub fn seal_xattr_value(keys: &NameKeys, backing_name: &[u8], value: &[u8]) -> Result<Vec<u8>> {
    let aad = ValueLayout::for_len(value.len()).aad(backing_name);
    keys.xattr_values
        .seal(&aad, value)
        .map_err(VolumeError::Seal)
}

/// Opens a sealed value stored in `layout` (a split one with its head and tail joined).
pub fn open_xattr_value(
    keys: &NameKeys,
    backing_name: &[u8],
    sealed: &[u8],
    layout: ValueLayout,
) -> Result<Vec<u8>> {
    keys.xattr_values
        .open(&layout.aad(backing_name), sealed)
        .map_err(|_| VolumeError::Corrupt("extended attribute value does not decrypt".into()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd as _;

    fn keys() -> NameKeys {
        NameKeys::derive(&[3; 32])
    }

    #[test]
    fn a_sidecar_already_there_is_kept_whole_or_replaced_whole() {
        let k = keys();
        let dir = tempfile::tempdir().unwrap();
        let dirfd = File::open(dir.path()).unwrap();
        let backing = encrypt_name(&k, OsStr::new(&"q".repeat(240))).unwrap();
        let sidecar = dir.path().join(backing.sidecar().unwrap());
        write_long_sidecar(dirfd.as_fd(), &backing).unwrap();
        let whole = std::fs::read(&sidecar).unwrap();
        // Written again (a rename over the entry of the same name): kept as it is.
        write_long_sidecar(dirfd.as_fd(), &backing).unwrap();
        assert_eq!(std::fs::read(&sidecar).unwrap(), whole);
        // A crash left it cut short: replaced whole, no temp file left.
        std::fs::write(&sidecar, &whole[..10]).unwrap();
        write_long_sidecar(dirfd.as_fd(), &backing).unwrap();
        assert_eq!(std::fs::read(&sidecar).unwrap(), whole);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
        let back = decrypt_entry(&k, dirfd.as_fd(), OsStr::new(backing.entry())).unwrap();
        assert_eq!(back.unwrap(), OsStr::new(&"q".repeat(240)));
    }

    #[test]
    fn names_round_trip_including_long_and_unicode() {
        let k = keys();
        let dir = tempfile::tempdir().unwrap();
        let dirfd = File::open(dir.path()).unwrap();
        for plain in [
            "a",
            "h\u{e9}llo w\u{f6}rld \u{1F600}",
            &"x".repeat(175),
            &"y".repeat(255),
        ] {
            let backing = encrypt_name(&k, OsStr::new(plain)).unwrap();
            assert!(backing.entry().len() <= 255);
            write_long_sidecar(dirfd.as_fd(), &backing).unwrap();
            let back = decrypt_entry(&k, dirfd.as_fd(), OsStr::new(backing.entry())).unwrap();
            assert_eq!(back.unwrap(), OsStr::new(plain));
        }
        assert!(matches!(
            encrypt_name(&k, OsStr::new(&"z".repeat(256))),
            Err(VolumeError::NameTooLong)
        ));
        assert!(encrypt_name(&k, OsStr::new("a/b")).is_err());
    }

    #[test]
    fn equal_names_encrypt_equally_and_tampering_is_caught() {
        let k = keys();
        let a = encrypt_name(&k, OsStr::new("same")).unwrap();
        assert_eq!(a, encrypt_name(&k, OsStr::new("same")).unwrap());
        let mut bad = a.entry().as_bytes().to_vec();
        bad[3] = if bad[3] == b'A' { b'B' } else { b'A' };
        let dir = tempfile::tempdir().unwrap();
        let dirfd = File::open(dir.path()).unwrap();
        let bad = OsString::from_vec(bad);
        assert!(matches!(
            decrypt_entry(&k, dirfd.as_fd(), &bad),
            Err(VolumeError::Corrupt(_))
        ));
        assert_eq!(
            decrypt_entry(&k, dirfd.as_fd(), OsStr::new("sealfs.conf")).unwrap(),
            None
        );
    }

    #[test]
    fn xattr_names_of_both_versions_decrypt_and_version_2_is_shorter() {
        let k = keys();
        for plain in [
            "user.attribute_10",
            "user.a",
            "system.posix_acl_access",
            "system.posix_acl_default",
        ] {
            let names = XattrNames::of(&k, OsStr::new(plain)).unwrap();
            let older = names.older.unwrap();
            assert_ne!(names.current, older);
            for backing in [&names.current, &older] {
                assert_eq!(decrypt_xattr_name(&k, backing).unwrap(), plain.as_bytes());
                assert!(looks_sealed_xattr_name(backing));
            }
            assert!(names.current.len() <= older.len(), "{plain}");
        }
        // What 1,000 attributes named as xfstests generic/020 names them list as: within the
        // 65,536 bytes a listing holds (version 1 took 70 bytes a name, 70,000 in all).
        let listed: usize = (0..1000)
            .map(|i| encrypt_xattr_name(&k, OsStr::new(&format!("user.attribute_{i}"))).unwrap())
            .map(|n| n.len() + 1)
            .sum();
        assert!(listed <= 65_536, "{listed}");
        // Version 2 keeps longer names than version 1 did.
        let long = format!("user.{}", "n".repeat(158));
        assert!(encrypt_xattr_name(&k, OsStr::new(&long)).is_ok());
        assert!(encrypt_xattr_name_v1(&k, OsStr::new(&long)).is_err());
        assert!(encrypt_xattr_name(&k, OsStr::new("trusted.x")).is_err());
    }

    #[test]
    fn symlink_targets_and_xattrs_round_trip() {
        let k = keys();
        let enc = encrypt_symlink(&k, b"../some/where").unwrap();
        assert_eq!(
            decrypt_symlink(&k, OsStr::new(&enc)).unwrap(),
            b"../some/where"
        );
        assert!(matches!(
            encrypt_symlink(&k, &[b'a'; 3100]),
            Err(VolumeError::NameTooLong)
        ));
        let name = encrypt_xattr_name(&k, OsStr::new("user.comment")).unwrap();
        assert_eq!(decrypt_xattr_name(&k, &name).unwrap(), b"user.comment");
        assert!(looks_sealed_xattr_name(&name));
        assert!(!looks_sealed_xattr_name(b"user.rsync.%stat"));
        assert!(!looks_sealed_xattr_name(b"user."));
        assert!(
            !looks_sealed_xattr_name(b"user.test"),
            "base64url, but 3 bytes"
        );
        let mut forged = USER_XATTR_PREFIX.to_vec();
        forged.extend_from_slice(name::encode_b64(&[7; 32]).as_bytes());
        assert!(
            looks_sealed_xattr_name(&forged),
            "the shape, not the key, decides"
        );
        let value = seal_xattr_value(&k, &name, b"v").unwrap();
        assert_eq!(
            open_xattr_value(&k, &name, &value, ValueLayout::Whole).unwrap(),
            b"v"
        );
        assert!(open_xattr_value(&k, b"user.other", &value, ValueLayout::Whole).is_err());
        assert!(open_xattr_value(&k, &name, &value, ValueLayout::Split).is_err());
        assert!(encrypt_xattr_name(&k, OsStr::new("security.selinux")).is_err());
        assert!(encrypt_xattr_name(&k, OsStr::new("system.posix_acl_other")).is_err());
        let acl = encrypt_xattr_name(&k, OsStr::new(ACL_XATTR_NAMES[0])).unwrap();
        assert!(acl.starts_with(USER_XATTR_PREFIX));
        assert_eq!(
            decrypt_xattr_name(&k, &acl).unwrap(),
            ACL_XATTR_NAMES[0].as_bytes()
        );
    }
}
