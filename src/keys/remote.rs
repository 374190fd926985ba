//! What remote key providers (KMS, PKCS#11) share: each keyslot holds a random slot key that
//! only the remote key can decrypt, bound to a context of volume id and slot id; the slot key
//! then seals the keyring exactly as a local master key does.

use zeroize::Zeroizing;

use super::{KeyError, local};
use crate::crypto::{SecretKey, random_array};
use crate::format::config::{ConfigKeyslot, SlotProvider, policy_of_slot};
use crate::format::{Id, id_to_hex};

/// The encryption context of a keyslot's slot key, as name/value pairs (KMS), and as the
/// canonical byte string bound as associated data (PKCS#11).
pub struct SlotContext {
    pub volume_id: Id,
    pub slot_id: u32,
}

impl SlotContext {
    /// A volume keyslot's context names the volume and the slot; a key policy's (tenant slot
    /// ids, see `config::TENANT_SLOT_BASE`) names the volume and the tenant, so each unwrap of
    /// a tenant's secret shows in its KMS key's trail as that tenant's.
    pub fn pairs(&self) -> Vec<(String, String)> {
        let volume = ("sealfs:volume-id".into(), id_to_hex(&self.volume_id));
        match policy_of_slot(self.slot_id) {
            None => vec![
                volume,
                ("sealfs:keyslot".into(), self.slot_id.to_string()),
                ("sealfs:purpose".into(), "keyslot".into()),
            ],
            Some(policy) => vec![
                volume,
                ("sealfs:tenant".into(), policy.to_string()),
                ("sealfs:purpose".into(), "tenant-key".into()),
            ],
        }
    }

    /// Fixed-size fields only, so the concatenation is unambiguous.
    pub fn aad(&self) -> Vec<u8> {
        let mut aad = match policy_of_slot(self.slot_id) {
            None => b"sealfs.remote-keyslot.v1".to_vec(),
            Some(_) => b"sealfs.remote-tenant.v1".to_vec(),
        };
        aad.extend_from_slice(&self.volume_id);
        aad.extend_from_slice(&self.slot_id.to_be_bytes());
        aad
    }
}

/// A fresh slot key, encrypted remotely by `encrypt`, sealing `keyring`.
pub fn create_slot(
    slot_id: u32,
    volume_id: &Id,
    keyring: &[u8],
    encrypt: impl FnOnce(&SlotContext, &[u8]) -> Result<SlotProvider, KeyError>,
) -> Result<ConfigKeyslot, KeyError> {
    let slot_key = SecretKey::from_array(random_array()?);
    let context = SlotContext {
        volume_id: *volume_id,
        slot_id,
    };
    let provider = encrypt(&context, slot_key.as_bytes())?;
    local::seal_slot(&slot_key, provider, slot_id, volume_id, keyring)
}

/// Opens a keyslot whose slot key `decrypt` recovers remotely.
pub fn open_slot(
    slot: &ConfigKeyslot,
    volume_id: &Id,
    describe: impl FnOnce() -> String,
    decrypt: impl FnOnce(&SlotContext, &[u8]) -> Result<Zeroizing<Vec<u8>>, KeyError>,
) -> Result<Zeroizing<Vec<u8>>, KeyError> {
    let context = SlotContext {
        volume_id: *volume_id,
        slot_id: slot.id,
    };
    let plain = decrypt(&context, &slot.encrypted_slot_key()?)?;
    let slot_key = SecretKey::from_slice(&plain).map_err(|_| KeyError::SlotDamaged(slot.id))?;
    local::open_slot(&slot_key, slot, volume_id, describe)
}
