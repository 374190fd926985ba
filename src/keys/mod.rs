//! Master keys and what they unlock. A master-key provider is an operation on keyslots
//! (create one, open one), never a bag of key bytes handed around, so KMS and PKCS#11
//! providers fit the same trait. Opening a keyslot yields the volume keyring, from which
//! `VolumeKeys` derives every working key.

mod cache;
mod file_keys;
mod keyfile;
mod kms;
mod local;
mod name_keys;
mod passphrase;
mod pkcs11;
mod pool;
mod remote;
mod tenants;
mod unlock;
mod volume_keys;

pub use cache::{CacheLimits, CacheStats, KeyCache};
pub use file_keys::FileKeys;
pub use keyfile::{KeyfileProvider, default_key_path, write_new_keyfile};
pub use kms::KmsProvider;
pub use name_keys::NameKeys;
pub use passphrase::{PassphraseProvider, PassphraseSource};
pub use pkcs11::{Pkcs11Provider, Pkcs11Settings};
pub use tenants::{TenantAccess, TenantKeys, Tenants, seal_new_policy};
pub use unlock::unlock;
pub use volume_keys::{DataKeyMaterial, VolumeKeys};

use std::path::PathBuf;

use thiserror::Error;
use zeroize::Zeroizing;

use crate::crypto::{CryptoError, SecretKey};
use crate::format::FormatError;
use crate::format::config::ConfigKeyslot;
use crate::format::{Id, header::FileHeader};

#[derive(Clone, Debug, Error)]
pub enum KeyError {
    #[error("wrong key: {0} does not open any keyslot of this volume")]
    WrongKey(String),
    #[error("no keyslot of this volume is of the kind {0} can open (slots: {1})")]
    NoSlotForProvider(String, String),
    #[error("keyslot {0} is damaged: its check value matches but it does not decrypt")]
    SlotDamaged(u32),
    #[error("key file {path}: {reason}")]
    KeyFile { path: PathBuf, reason: String },
    #[error("passphrase: {0}")]
    Passphrase(String),
    #[error("header of file {file}: {reason}")]
    Header { file: String, reason: String },
    /// The header could not be read (EMFILE, EACCES, EIO from the disk...): not an integrity
    /// failure; the errno goes back to the caller as it is.
    #[error("header of file {file}: {}", std::io::Error::from_raw_os_error(*errno))]
    HeaderIo { file: String, errno: i32 },
    /// The code loading a key panicked (a bug, possibly in a KMS or PKCS#11 library). Not
    /// cached: the next open of the file tries again.
    #[error("loading the file key panicked; the next open tries again")]
    LoadPanicked,
    #[error("KEK version {0} is not in the keyring")]
    UnknownKek(u32),
    #[error("KEK version {0} differs between the keyring and the config")]
    InconsistentKek(u32),
    #[error("the volume config has been modified by someone without its key (MAC mismatch)")]
    ConfigTampered,
    #[error("{provider}: {reason}")]
    Remote {
        provider: String,
        failure: RemoteFailure,
        reason: String,
    },
    /// The policy was removed or shredded: nothing can open its files any more.
    #[error("key policy {0} was removed (shredded): its files cannot be opened")]
    PolicyRemoved(u32),
    /// A directory marker names a policy the config does not know (damage, tampering, or a
    /// config older than the marker).
    #[error("key policy {0} is not in this volume's config")]
    UnknownPolicy(u32),
    /// This process has no way to reach the tenant's master key (no PIN, no key file...).
    #[error("key policy {policy}: tenant key unavailable here: {reason}")]
    TenantKeyUnavailable { policy: u32, reason: String },
    /// A file whose header belongs to one policy sits in a directory of another: moved or
    /// copied across tenants in the cipher dir.
    #[error(
        "header of file {file} belongs to key policy {header}, but the file is in a directory of policy {directory}"
    )]
    PolicyMismatch {
        file: String,
        header: u32,
        directory: u32,
    },
    #[error("no way to unlock the volume was given")]
    NoProvider,
    #[error(transparent)]
    Format(#[from] FormatError),
    #[error("cryptography: {0}")]
    Crypto(#[from] CryptoError),
}

/// Why a KMS or HSM call failed (defined beside the counters of such calls, which sort them
/// by it).
pub use crate::metrics::RemoteFailure;

/// The binding of a per-file data key: which volume, which file.
pub struct FileKeyContext {
    pub volume_id: Id,
    pub file_id: Id,
}

/// A master key that can seal the volume keyring into a keyslot and open it again.
pub trait MasterKeyProvider: Send + Sync {
    /// For messages: "key file /root/x.key", "passphrase".
    fn describe(&self) -> String;

    /// Seals `keyring` into a new keyslot with id `slot_id`.
    fn create_slot(
        &self,
        slot_id: u32,
        volume_id: &Id,
        keyring: &[u8],
    ) -> Result<ConfigKeyslot, KeyError>;

    /// Opens `slot` if it is of this provider's kind: Ok(None) for another kind of slot,
    /// Err(WrongKey) when this key is not the slot's key.
    fn open_slot(
        &self,
        slot: &ConfigKeyslot,
        volume_id: &Id,
    ) -> Result<Option<Zeroizing<Vec<u8>>>, KeyError>;

    /// Per-file mode: whether this provider holds the master key of `slot`.
    fn serves(&self, _slot: &ConfigKeyslot) -> bool {
        false
    }

    /// Per-file mode: a fresh data key and its wrap under this master key, bound to `context`.
    fn generate_file_key(
        &self,
        _context: &FileKeyContext,
    ) -> Result<(SecretKey, Vec<u8>), KeyError> {
        Err(KeyError::NoProvider)
    }

    /// Per-file mode: the data key in `wrapped`, which must be bound to `context`.
    fn unwrap_file_key(
        &self,
        _context: &FileKeyContext,
        _wrapped: &[u8],
    ) -> Result<SecretKey, KeyError> {
        Err(KeyError::NoProvider)
    }

    /// Per-file mode: `wrapped` wrapped afresh under this master key's current version, bound
    /// to the same context (KMS ReEncrypt: the data key never leaves KMS).
    fn rewrap_file_key(
        &self,
        _context: &FileKeyContext,
        _wrapped: &[u8],
    ) -> Result<Vec<u8>, KeyError> {
        Err(KeyError::NoProvider)
    }
}

/// What the header store needs from the key hierarchy: a fresh file id and data key with its
/// header, and the data key back from a header.
pub trait HeaderKeys: Send + Sync {
    fn new_header(&self) -> Result<(FileHeader, DataKeyMaterial), KeyError>;
    fn open_header(&self, header: &FileHeader) -> Result<DataKeyMaterial, KeyError>;
}
