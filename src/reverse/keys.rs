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
use crate::format::block::{Layout, block_aad, encode_preamble};
use crate::format::name::{self, SYMLINK_AAD};
use crate::keys::{DataKeyMaterial, KeyError, VolumeKeys};
use crate::volume::{Result, VolumeError};

/// Longest backing symlink target the kernel accepts.
const MAX_BACKING_TARGET: usize = 4095;
/// Below this many blocks a read is sealed on the calling thread: rayon's hand-off costs more.
const PARALLEL_BLOCKS: usize = 32;

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

/// The nonce of block `index`. Each file has its own content key, so (key, nonce) repeats only
/// when the same block of the same file is sealed again; GCM-SIV then reveals no more than
/// whether that block's plaintext is unchanged, which deterministic output reveals anyway.
fn block_nonce(index: u64) -> [u8; NONCE_LEN] {
    let mut nonce = [0u8; NONCE_LEN];
    nonce[4..].copy_from_slice(&index.to_be_bytes());
    nonce
}

/// One file's keys in the view.
pub struct ViewFileKeys {
    pub file_id: Id,
    material: DataKeyMaterial,
}

impl ViewFileKeys {
    pub fn preamble(&self) -> [u8; 24] {
        encode_preamble(&self.file_id)
    }

    /// Seals the plaintext blocks `first..` held in `plain` into `out` (their sealed lengths,
    /// back to back). Large runs are sealed in parallel.
    pub fn seal_blocks(
        &self,
        layout: &Layout,
        first: u64,
        plain: &[u8],
        out: &mut [u8],
    ) -> Result<()> {
        let block = layout.block_size() as usize;
        let sealed = block + SEAL_OVERHEAD;
        let seal_one = |(i, (p, o)): (usize, (&[u8], &mut [u8]))| {
            let index = first + i as u64;
            self.material
                .content
                .seal_into_with_nonce(&block_nonce(index), &block_aad(&self.file_id, index), p, o)
                .map_err(|e| VolumeError::Keys(KeyError::Crypto(e)))
        };
        let mut blocks = plain.chunks(block).zip(out.chunks_mut(sealed)).enumerate();
        if plain.len() / block >= PARALLEL_BLOCKS {
            use rayon::prelude::*;
            plain
                .par_chunks(block)
                .zip(out.par_chunks_mut(sealed))
                .enumerate()
                .try_for_each(seal_one)
        } else {
            blocks.try_for_each(seal_one)
        }
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
            .symlinks
            .seal_into_with_nonce(&[0u8; NONCE_LEN], SYMLINK_AAD, target, &mut sealed)
            .map_err(|_| VolumeError::InvalidName)?;
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

        let layout = Layout::new(4096).unwrap();
        let plain: Vec<u8> = (0..10_000u32).map(|i| i as u8).collect();
        let sealed_len = layout.backing_size(plain.len() as u64) as usize - 24;
        let mut sealed = vec![0u8; sealed_len];
        let file = reverse.file_keys(id);
        file.seal_blocks(&layout, 0, &plain, &mut sealed).unwrap();
        let mut again = vec![0u8; sealed_len];
        reverse
            .file_keys(id)
            .seal_blocks(&layout, 0, &plain, &mut again)
            .unwrap();
        assert_eq!(sealed, again, "same plaintext, same ciphertext");

        // The forward reader opens the header and every block.
        let opened = forward
            .open_header(&crate::format::header::FileHeader::decode(&header).unwrap())
            .unwrap();
        for (i, chunk) in sealed.chunks(4096 + SEAL_OVERHEAD).enumerate() {
            let block = opened
                .content
                .open(&block_aad(&id, i as u64), chunk)
                .unwrap();
            assert_eq!(block, &plain[i * 4096..((i + 1) * 4096).min(plain.len())]);
        }
        // A block sealed at another index does not open at this one.
        assert!(
            opened
                .content
                .open(&block_aad(&id, 1), &sealed[..4096 + SEAL_OVERHEAD])
                .is_err()
        );
    }

    #[test]
    fn parallel_and_serial_sealing_agree() {
        let (reverse, _) = keys();
        let layout = Layout::new(512).unwrap();
        let plain = vec![7u8; 512 * 40 + 100];
        let file = reverse.file_keys([5; 16]);
        let len = layout.backing_size(plain.len() as u64) as usize - 24;
        let mut all = vec![0u8; len];
        file.seal_blocks(&layout, 0, &plain, &mut all).unwrap();
        // Block 39 and the tail, sealed alone (serial path), match the parallel run.
        let start = 39 * (512 + SEAL_OVERHEAD);
        let mut tail = vec![0u8; len - start];
        file.seal_blocks(&layout, 39, &plain[39 * 512..], &mut tail)
            .unwrap();
        assert_eq!(&all[start..], &tail[..]);
    }

    #[test]
    fn symlink_targets_are_deterministic_and_open_forward() {
        let (reverse, forward) = keys();
        let a = reverse.symlink_target(b"../target").unwrap();
        assert_eq!(a, reverse.symlink_target(b"../target").unwrap());
        assert_eq!(a.len() as u64, symlink_view_len(9));
        let opened =
            crate::volume::names::decrypt_symlink(forward.volume(), std::ffi::OsStr::new(&a))
                .unwrap();
        assert_eq!(opened, b"../target");
    }
}
