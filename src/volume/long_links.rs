//! Symlink targets too long to seal inline (docs/FORMAT.md, "Symlink targets"): each is sealed
//! into a sidecar `sealfs.links/<hh>/<link id>` that its backing symlink points at. A sidecar
//! lives as long as its backing symlink (all hard links of it): the namespace removes it with
//! the last link, fsck reports and removes one no symlink names.

use std::fs::File;
use std::io::Read;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use nix::fcntl::{OFlag, openat};
use nix::sys::stat::{Mode, mkdirat};
use nix::unistd::{UnlinkatFlags, unlinkat};

use super::error::{Result, VolumeError};
use super::headers::{read_names, write_new};
use crate::crypto::SEAL_OVERHEAD;
use crate::format::link::{
    LINKS_DIR, MAX_TARGET, SIDECAR_PREAMBLE, decode_sidecar, encode_sidecar,
};
use crate::format::{Id, id_from_hex, id_to_hex};
use crate::keys::NameKeys;

/// What a backing symlink to a sidecar holds, and its length (the namespace tells such links
/// by it).
pub use crate::format::link::{LONG_TARGET_LEN, LongTarget};

/// Seals `target` into a new sidecar and returns what the backing symlink must point at.
pub fn seal(root: BorrowedFd<'_>, keys: &NameKeys, target: &[u8]) -> Result<String> {
    if target.len() > MAX_TARGET {
        return Err(VolumeError::NameTooLong);
    }
    let long = LongTarget {
        link_id: crate::crypto::random_array().map_err(VolumeError::Seal)?,
        len: target.len() as u16,
    };
    let sealed = keys
        .symlinks
        .seal(&long.aad(), target)
        .map_err(VolumeError::Seal)?;
    let dir = links_dir(root, true)?;
    let sub = format!("{:02x}", long.link_id[0]);
    match mkdirat(dir.as_fd(), sub.as_str(), Mode::from_bits_truncate(0o700)) {
        Ok(()) | Err(nix::Error::EEXIST) => {}
        Err(e) => return Err(e.into()),
    }
    write_new(
        dir.as_fd(),
        &long.sidecar_path(),
        &encode_sidecar(&long.link_id, &sealed),
        false,
    )?;
    Ok(long.encode())
}

/// The plaintext target of `long`, from its sidecar: EIO-class `Corrupt` if the sidecar is
/// missing, damaged, belongs to another link or holds a target of another length.
pub fn open(root: BorrowedFd<'_>, keys: &NameKeys, long: &LongTarget) -> Result<Vec<u8>> {
    let path = long.sidecar_path();
    let corrupt = |why: String| {
        VolumeError::Corrupt(format!("symlink target sidecar {LINKS_DIR}/{path}: {why}"))
    };
    let bytes = read_sidecar(root, &path).map_err(|e| match e {
        VolumeError::Io(e) if e.kind() == std::io::ErrorKind::NotFound => corrupt("missing".into()),
        e => e,
    })?;
    let sealed = decode_sidecar(&bytes, &long.link_id).map_err(|e| corrupt(e.to_string()))?;
    let target = keys
        .symlinks
        .open(&long.aad(), sealed)
        .map_err(|_| corrupt("does not decrypt".into()))?;
    if target.len() != usize::from(long.len) {
        return Err(corrupt("holds a target of another length".into()));
    }
    Ok(target)
}

/// Removes the sidecar of a symlink whose last link is gone. A failure is logged, not
/// returned: the link is gone already, and fsck removes what is left.
pub fn remove(root: BorrowedFd<'_>, long: &LongTarget) {
    let removed = links_dir(root, false).and_then(|dir| {
        Ok(unlinkat(
            dir.as_fd(),
            long.sidecar_path().as_str(),
            UnlinkatFlags::NoRemoveDir,
        )?)
    });
    if let Err(e) = removed {
        tracing::warn!(link = %id_to_hex(&long.link_id), error = %e, "could not remove a symlink target sidecar");
    }
}

/// What `list` found under `sealfs.links`.
#[derive(Debug, Default)]
pub struct LinkListing {
    pub ids: Vec<Id>,
    /// Anything that is no sidecar name, as `hh` or `hh/name`.
    pub strays: Vec<String>,
}

/// Every sidecar present (an old volume has no `sealfs.links`: none).
pub fn list(root: BorrowedFd<'_>) -> Result<LinkListing> {
    let mut listing = LinkListing::default();
    let dir = match links_dir(root, false) {
        Ok(dir) => dir,
        Err(VolumeError::Io(e)) if e.kind() == std::io::ErrorKind::NotFound => return Ok(listing),
        Err(e) => return Err(e),
    };
    for sub in read_names(dir.as_fd())? {
        let names = match openat(
            dir.as_fd(),
            sub.as_str(),
            OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC | OFlag::O_NOFOLLOW,
            Mode::empty(),
        ) {
            Ok(fd) => read_names(fd.as_fd())?,
            Err(_) => {
                listing.strays.push(sub);
                continue;
            }
        };
        for name in names {
            match id_from_hex(&name) {
                Ok(id) if id_to_hex(&id) == name && name.starts_with(&sub) => listing.ids.push(id),
                _ => listing.strays.push(format!("{sub}/{name}")),
            }
        }
    }
    Ok(listing)
}

/// Removes sidecar `link_id` (fsck --repair, for one no symlink names).
pub fn remove_id(root: BorrowedFd<'_>, link_id: &Id) -> Result<()> {
    let dir = links_dir(root, false)?;
    let path = format!("{:02x}/{}", link_id[0], id_to_hex(link_id));
    unlinkat(dir.as_fd(), path.as_str(), UnlinkatFlags::NoRemoveDir)?;
    Ok(())
}

fn links_dir(root: BorrowedFd<'_>, create: bool) -> Result<OwnedFd> {
    if create {
        match mkdirat(root, LINKS_DIR, Mode::from_bits_truncate(0o700)) {
            Ok(()) | Err(nix::Error::EEXIST) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(openat(
        root,
        LINKS_DIR,
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC | OFlag::O_NOFOLLOW,
        Mode::empty(),
    )?)
}

fn read_sidecar(root: BorrowedFd<'_>, path: &str) -> Result<Vec<u8>> {
    let dir = links_dir(root, false)?;
    let fd = openat(
        dir.as_fd(),
        path,
        OFlag::O_RDONLY | OFlag::O_CLOEXEC | OFlag::O_NOFOLLOW,
        Mode::empty(),
    )?;
    let mut bytes = Vec::new();
    let bound = (SIDECAR_PREAMBLE + MAX_TARGET + SEAL_OVERHEAD + 1) as u64;
    File::from(fd).take(bound).read_to_end(&mut bytes)?;
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys() -> NameKeys {
        NameKeys::derive(&[5; 32])
    }

    #[test]
    fn long_targets_seal_open_list_and_remove() {
        let dir = tempfile::tempdir().unwrap();
        let root = File::open(dir.path()).unwrap();
        let root = root.as_fd();
        let k = keys();
        let target = vec![b'x'; 4095];
        let backing = seal(root, &k, &target).unwrap();
        let long = LongTarget::decode(backing.as_bytes()).unwrap();
        assert_eq!(long.len, 4095);
        assert_eq!(open(root, &k, &long).unwrap(), target);
        assert_eq!(list(root).unwrap().ids, vec![long.link_id]);
        // Another link's sidecar under this one's name: refused.
        let other = LongTarget::decode(seal(root, &k, b"other").unwrap().as_bytes()).unwrap();
        let sidecars = dir.path().join(LINKS_DIR);
        std::fs::copy(
            sidecars.join(other.sidecar_path()),
            sidecars.join(long.sidecar_path()),
        )
        .unwrap();
        assert!(matches!(
            open(root, &k, &long),
            Err(VolumeError::Corrupt(_))
        ));
        // A length that lies: refused.
        let lying = LongTarget { len: 4, ..other };
        assert!(matches!(
            open(root, &k, &lying),
            Err(VolumeError::Corrupt(_))
        ));
        remove(root, &long);
        assert!(matches!(
            open(root, &k, &long),
            Err(VolumeError::Corrupt(_))
        ));
        assert_eq!(list(root).unwrap().ids, vec![other.link_id]);
        assert!(matches!(
            seal(root, &k, &[b'y'; 4096]),
            Err(VolumeError::NameTooLong)
        ));
    }

    #[test]
    fn a_volume_without_long_targets_lists_none() {
        let dir = tempfile::tempdir().unwrap();
        let root = File::open(dir.path()).unwrap();
        assert!(list(root.as_fd()).unwrap().ids.is_empty());
    }
}
