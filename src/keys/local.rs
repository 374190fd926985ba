//! The keyslot construction shared by the local providers (key file and passphrase): both
//! reduce to 32 bytes of master material, from which a wrap key and a check value derive.

use zeroize::Zeroizing;

use super::KeyError;
use crate::crypto::{Label, Sealer, SecretKey, constant_time_eq, derive_key};
use crate::format::Id;
use crate::format::config::{ConfigKeyslot, SlotProvider, keyslot_aad};

pub(super) fn seal_slot(
    material: &SecretKey,
    provider: SlotProvider,
    slot_id: u32,
    volume_id: &Id,
    keyring: &[u8],
) -> Result<ConfigKeyslot, KeyError> {
    let wrap_key = derive_key(Label::KeyslotWrap, &[material.as_bytes()]);
    let check = derive_key(Label::KeyslotCheck, &[material.as_bytes()]);
    let sealed = Sealer::new(&wrap_key).seal(&keyslot_aad(volume_id, slot_id), keyring)?;
    Ok(ConfigKeyslot {
        id: slot_id,
        provider,
        key_check: ConfigKeyslot::encode_check(check.as_array()),
        wrapped_keyring: ConfigKeyslot::encode_bytes(&sealed),
    })
}

pub(super) fn open_slot(
    material: &SecretKey,
    slot: &ConfigKeyslot,
    volume_id: &Id,
    describe: impl FnOnce() -> String,
) -> Result<Zeroizing<Vec<u8>>, KeyError> {
    let check = derive_key(Label::KeyslotCheck, &[material.as_bytes()]);
    if !constant_time_eq(check.as_bytes(), &slot.key_check()?) {
        return Err(KeyError::WrongKey(describe()));
    }
    let wrap_key = derive_key(Label::KeyslotWrap, &[material.as_bytes()]);
    let sealed = slot.wrapped_keyring()?;
    Sealer::new(&wrap_key)
        .open(&keyslot_aad(volume_id, slot.id), &sealed)
        .map(Zeroizing::new)
        .map_err(|_| KeyError::SlotDamaged(slot.id))
}
