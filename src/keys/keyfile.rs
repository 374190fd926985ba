use std::fs;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use zeroize::Zeroizing;

use super::{KeyError, MasterKeyProvider, local};
use crate::crypto::{SecretKey, random_array};
use crate::format::config::{ConfigKeyslot, SlotProvider};
use crate::format::{Id, id_to_hex};

/// A master key held in a local file of exactly 32 random bytes.
pub struct KeyfileProvider {
    path: PathBuf,
    key: SecretKey,
}

impl KeyfileProvider {
    pub fn load(path: &Path) -> Result<Self, KeyError> {
        let fail = |reason: String| KeyError::KeyFile {
            path: path.to_path_buf(),
            reason,
        };
        let meta = fs::metadata(path).map_err(|e| fail(e.to_string()))?;
        if meta.len() != SecretKey::LEN as u64 {
            return Err(fail(format!(
                "must hold exactly {} bytes, holds {}",
                SecretKey::LEN,
                meta.len()
            )));
        }
        if meta.permissions().mode() & 0o077 != 0 {
            tracing::warn!(path = %path.display(), "key file is readable by group or others; chmod 600 it");
        }
        let bytes = Zeroizing::new(fs::read(path).map_err(|e| fail(e.to_string()))?);
        let key = SecretKey::from_slice(&bytes).map_err(|_| fail("wrong length".into()))?;
        Ok(KeyfileProvider {
            path: path.to_path_buf(),
            key,
        })
    }
}

impl MasterKeyProvider for KeyfileProvider {
    fn describe(&self) -> String {
        format!("key file {}", self.path.display())
    }

    fn create_slot(
        &self,
        slot_id: u32,
        volume_id: &Id,
        keyring: &[u8],
    ) -> Result<ConfigKeyslot, KeyError> {
        local::seal_slot(
            &self.key,
            SlotProvider::Keyfile,
            slot_id,
            volume_id,
            keyring,
        )
    }

    fn open_slot(
        &self,
        slot: &ConfigKeyslot,
        volume_id: &Id,
    ) -> Result<Option<Zeroizing<Vec<u8>>>, KeyError> {
        if slot.provider != SlotProvider::Keyfile {
            return Ok(None);
        }
        local::open_slot(&self.key, slot, volume_id, || self.describe()).map(Some)
    }
}

/// Creates a new key file of 32 random bytes, mode 0600, refusing to overwrite anything.
pub fn write_new_keyfile(path: &Path) -> Result<(), KeyError> {
    let fail = |reason: String| KeyError::KeyFile {
        path: path.to_path_buf(),
        reason,
    };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| fail(format!("cannot create its directory: {e}")))?;
    }
    let key = Zeroizing::new(random_array::<32>()?);
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| {
            if e.kind() == std::io::ErrorKind::AlreadyExists {
                fail("already exists; refusing to overwrite a key".into())
            } else {
                fail(e.to_string())
            }
        })?;
    file.write_all(&key[..])
        .and_then(|_| file.sync_all())
        .map_err(|e| fail(e.to_string()))
}

/// Where init puts a volume's key file, and where mount looks for it: $SEALFS_KEY_DIR, else
/// $XDG_CONFIG_HOME/sealfs/keys, else ~/.config/sealfs/keys; named by volume id.
pub fn default_key_path(volume_id: &Id) -> Option<PathBuf> {
    let dir = if let Some(dir) = std::env::var_os("SEALFS_KEY_DIR") {
        PathBuf::from(dir)
    } else if let Some(xdg) = std::env::var_os("XDG_CONFIG_HOME").filter(|v| !v.is_empty()) {
        PathBuf::from(xdg).join("sealfs/keys")
    } else {
        PathBuf::from(std::env::var_os("HOME")?).join(".config/sealfs/keys")
    };
    Some(dir.join(format!("{}.key", id_to_hex(volume_id))))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_keyfile_is_private_and_never_overwritten() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/k.key");
        write_new_keyfile(&path).unwrap();
        let meta = fs::metadata(&path).unwrap();
        assert_eq!(meta.len(), 32);
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        let before = fs::read(&path).unwrap();
        assert!(write_new_keyfile(&path).is_err());
        assert_eq!(fs::read(&path).unwrap(), before);
    }

    #[test]
    fn wrong_length_keyfile_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k");
        fs::write(&path, b"short").unwrap();
        let err = KeyfileProvider::load(&path).err().unwrap();
        assert!(err.to_string().contains("exactly 32 bytes"));
    }

    #[test]
    fn slot_opens_with_its_key_only() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a"), dir.path().join("b"));
        write_new_keyfile(&a).unwrap();
        write_new_keyfile(&b).unwrap();
        let (a, b) = (
            KeyfileProvider::load(&a).unwrap(),
            KeyfileProvider::load(&b).unwrap(),
        );
        let vid = [1; 16];
        let slot = a.create_slot(0, &vid, b"keyring bytes").unwrap();
        assert_eq!(
            &a.open_slot(&slot, &vid).unwrap().unwrap()[..],
            b"keyring bytes"
        );
        assert!(matches!(
            b.open_slot(&slot, &vid),
            Err(KeyError::WrongKey(_))
        ));
        assert!(matches!(
            a.open_slot(&slot, &[2; 16]),
            Err(KeyError::SlotDamaged(0))
        ));
    }
}
