//! Everything reverse mode derives, deterministically, from the volume secret: file ids, data
//! keys, header bytes, sealed blocks and symlink targets. The same plaintext and the same config
//! give the same ciphertext bytes on every mount, which is what lets incremental backup tools
//! send only what changed. The output is an ordinary cipher dir: a forward mount reads it with
//! the code that reads any other volume.

use std::path::Path;
use std::sync::Arc;

use nix::sys::stat::FileStat;
use std::os::unix::ffi::OsStrExt;

use crate::crypto::{Label, NONCE_LEN, SEAL_OVERHEAD, SecretKey};
use crate::format::Id;

use crate::format::name::{self, SYMLINK_AAD};
use crate::keys::{DataKeyMaterial, VolumeKeys};
use crate::volume::{Result, VolumeError};

/// Longest backing symlink target the kernel accepts.
const MAX_BACKING_TARGET: usize = 4095;

/// What makes a file the same file from one mount to the next. A file with one link is known
/// by its path below the plaintext root: stable across reboots, restores and moves of the tree
/// to another disk, and across editors that save by writing a new file and renaming it over
/// the old. A file with several links is known by its inode number, so every link shows the
/// same data file and header and copies keep them linked.
pub fn identity(relative_path: &Path, stat: &FileStat) -> Vec<u8> {
    if stat.st_nlink > 1 {
        let mut id = b"inode\0".to_vec();
        id.extend_from_slice(&stat.st_ino.to_be_bytes());
        id
    } else {
        let mut id = b"path\0".to_vec();
        id.extend_from_slice(relative_path.as_os_str().as_bytes());
        id
    }
}

/// One file's keys in the view. Its blocks are sealed by `io::read_sealed` with per-index
/// nonces: each file has its own content key, so (key, nonce) repeats only when the same
/// block of the same file is sealed again, and GCM-SIV then reveals no more than whether that
/// block's plaintext is unchanged, which deterministic output reveals anyway.
pub struct ViewFileKeys {
    pub file_id: Id,
    material: DataKeyMaterial,
}

impl ViewFileKeys {
    pub fn sealer(&self) -> &crate::crypto::Sealer {
        &self.material.content
    }
}

/// The derivations of one reverse volume.
pub struct ReverseKeys {
    pub volume: Arc<VolumeKeys>,
}

impl ReverseKeys {
    pub fn new(volume: Arc<VolumeKeys>) -> Self {
        ReverseKeys { volume }
    }

    pub fn file_id(&self, identity: &[u8]) -> Id {
        let derived = self
            .volume
            .derive_from_secret(Label::ReverseFileId, &[identity]);
        let mut id = [0u8; 16];
        id.copy_from_slice(&derived.as_bytes()[..16]);
        id
    }

    fn data_key(&self, file_id: &Id) -> SecretKey {
        self.volume
            .derive_from_secret(Label::ReverseDataKey, &[file_id])
    }

    pub fn file_keys(&self, file_id: Id) -> ViewFileKeys {
        ViewFileKeys {
            file_id,
            material: DataKeyMaterial::from_data_key(&self.data_key(&file_id), &file_id),
        }
    }

    /// The header of `file_id`: its data key under the current KEK, sealed deterministically.
    pub fn header(&self, file_id: &Id) -> Result<Vec<u8>> {
        let data_key = self.data_key(file_id);
        let slot = self
            .volume
            .wrap_under_kek_deterministic(file_id, &data_key)?;
        Ok(self
            .volume
            .header_for(file_id, &data_key, vec![slot])
            .encode()?)
    }

    /// A symlink target as the view shows it: sealed with the fixed nonce (deterministic, as
    /// names are), base64url.
    pub fn symlink_target(&self, target: &[u8]) -> Result<String> {
        if target.is_empty() {
            return Err(VolumeError::InvalidName);
        }
        let mut sealed = vec![0u8; target.len() + SEAL_OVERHEAD];
        self.volume
            .names
            .symlinks
            .seal_into_with_nonce(&[0u8; NONCE_LEN], SYMLINK_AAD, target, &mut sealed)
            .map_err(VolumeError::Seal)?;
        let encoded = name::encode_b64(&sealed);
        if encoded.len() > MAX_BACKING_TARGET {
            return Err(VolumeError::NameTooLong);
        }
        Ok(encoded)
    }
}

/// Length of the view's symlink target for a plaintext target of `plain_len` bytes.
pub fn symlink_view_len(plain_len: u64) -> u64 {
    let sealed = plain_len + SEAL_OVERHEAD as u64;
    (sealed * 4).div_ceil(3)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::{FileKeys, HeaderKeys};

    fn keys() -> (ReverseKeys, FileKeys) {
        let volume = Arc::new(
            VolumeKeys::from_keyring([1; 16], VolumeKeys::generate_keyring().unwrap()).unwrap(),
        );
        (
            ReverseKeys::new(volume.clone()),
            FileKeys::volume_mode(volume),
        )
    }

    #[test]
    fn headers_and_blocks_are_deterministic_and_forward_readable() {
        let (reverse, forward) = keys();
        let id = reverse.file_id(b"path\0a/b");
        assert_eq!(id, reverse.file_id(b"path\0a/b"));
        assert_ne!(id, reverse.file_id(b"path\0a/c"));
        let header = reverse.header(&id).unwrap();
        assert_eq!(header, reverse.header(&id).unwrap());

        // The forward reader opens the header, and every block the view seals.
        let opened = forward
            .open_header(&crate::format::header::FileHeader::decode(&header).unwrap())
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let plain: Vec<u8> = (0..10_000u32).map(|i| i as u8).collect();
        std::fs::write(dir.path().join("p"), &plain).unwrap();
        let source = std::fs::File::open(dir.path().join("p")).unwrap();
        let layout = crate::io::Layout::new(4096).unwrap();
        let file = reverse.file_keys(id);
        let sealed =
            crate::io::read_sealed(&source, &layout, &id, file.sealer(), 0, 1 << 20).unwrap();
        let again = crate::io::read_sealed(
            &source,
            &layout,
            &id,
            reverse.file_keys(id).sealer(),
            0,
            1 << 20,
        )
        .unwrap();
        assert_eq!(sealed, again, "same plaintext, same ciphertext");
        // What a forward mount reads from `bytes` stored as a data file (version 1, as views
        // are).
        let read_forward = |bytes: &[u8], len: usize| {
            std::fs::write(dir.path().join("s"), bytes).unwrap();
            let data = std::fs::File::open(dir.path().join("s")).unwrap();
            crate::io::DataFile::new(
                &data,
                layout,
                &id,
                &opened.content,
                crate::io::Holes::AnyZeroBlock,
            )
            .read_at(0, len)
        };
        assert_eq!(read_forward(&sealed, 1 << 20).unwrap(), plain);
        // The same file sealed under another id does not open as this one.
        let other = reverse.file_keys(reverse.file_id(b"path\0a/c"));
        let foreign =
            crate::io::read_sealed(&source, &layout, &id, other.sealer(), 0, 1 << 20).unwrap();
        assert!(read_forward(&foreign, 4096).is_err());
    }

    #[test]
    fn symlink_targets_are_deterministic_and_open_forward() {
        let (reverse, forward) = keys();
        let a = reverse.symlink_target(b"../target").unwrap();
        assert_eq!(a, reverse.symlink_target(b"../target").unwrap());
        assert_eq!(a.len() as u64, symlink_view_len(9));
        let opened = crate::volume::names::decrypt_symlink(
            &forward.volume().names,
            std::ffi::OsStr::new(&a),
        )
        .unwrap();
        assert_eq!(opened, b"../target");
    }
}
