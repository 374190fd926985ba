//! Adding and removing keyslots on an existing volume: unlock with any one slot, then reseal
//! the same keyring for the new master key (or drop a slot), re-MAC and rewrite the config.
//! File data and headers are untouched.

use std::path::Path;

use crate::keys::{MasterKeyProvider, VolumeKeys};
use crate::volume::{Result, Volume, VolumeError, crash_point, lock_config, write_config};

/// Adds one keyslot per provider in `new`, sealing the keyring `keys` hold; returns their ids.
pub fn add_keyslots(
    cipher_dir: &Path,
    keys: &VolumeKeys,
    new: &[Box<dyn MasterKeyProvider>],
) -> Result<Vec<u32>> {
    let _lock = lock_config(cipher_dir)?;
    let mut config = Volume::read_config(cipher_dir)?;
    keys.apply_config(&config)?;
    let keyring = keys.current_keyring().encode();
    let volume_id = config.volume_id()?;
    let mut added = Vec::new();
    for provider in new {
        let id = config.next_slot_id();
        config
            .keyslots
            .push(provider.create_slot(id, &volume_id, &keyring)?);
        added.push(id);
    }
    config.format_version = config.required_version();
    config.validate()?;
    keys.seal_config(&mut config);
    write_config(cipher_dir, &config)?;
    Ok(added)
}

/// Removes keyslot `slot_id`; refuses to remove the last one.
pub fn remove_keyslot(cipher_dir: &Path, keys: &VolumeKeys, slot_id: u32) -> Result<()> {
    let _lock = lock_config(cipher_dir)?;
    let mut config = Volume::read_config(cipher_dir)?;
    keys.apply_config(&config)?;
    if !config.keyslots.iter().any(|s| s.id == slot_id) {
        return Err(VolumeError::Usage(format!(
            "this volume has no keyslot {slot_id}"
        )));
    }
    if config.keyslots.len() == 1 {
        return Err(VolumeError::Usage(format!(
            "keyslot {slot_id} is the last one; removing it would lock the volume forever"
        )));
    }
    if config.file_key_slot == Some(slot_id) {
        return Err(VolumeError::Usage(format!(
            "keyslot {slot_id} holds every file key of this per-file volume; it cannot be removed"
        )));
    }
    config.keyslots.retain(|s| s.id != slot_id);
    config.format_version = config.required_version();
    config.validate()?;
    keys.seal_config(&mut config);
    write_config(cipher_dir, &config)?;
    Ok(())
}

/// Replaces the passphrase keyslot that opened `keys` (it must be `slot`, when given) with one
/// for `new`, keeping its id, in one atomic rewrite of the config: a crash at any point leaves
/// either the old passphrase or the new one working. Returns the slot id.
pub fn change_passphrase(
    cipher_dir: &Path,
    keys: &VolumeKeys,
    new: &dyn MasterKeyProvider,
    slot: Option<u32>,
) -> Result<u32> {
    let _lock = lock_config(cipher_dir)?;
    let mut config = Volume::read_config(cipher_dir)?;
    keys.apply_config(&config)?;
    let Some((opened, "passphrase")) = keys.opened_by() else {
        return Err(VolumeError::Usage(
            "the key given does not open a passphrase keyslot".into(),
        ));
    };
    if let Some(wanted) = slot
        && wanted != opened
    {
        return Err(VolumeError::Usage(format!(
            "the current passphrase opens keyslot {opened}, not keyslot {wanted}"
        )));
    }
    crash_point("passwd-unlocked");
    let replacement = new.create_slot(
        opened,
        &config.volume_id()?,
        &keys.current_keyring().encode(),
    )?;
    for existing in config.keyslots.iter_mut().filter(|s| s.id == opened) {
        *existing = replacement.clone();
    }
    config.format_version = config.required_version();
    config.validate()?;
    keys.seal_config(&mut config);
    write_config(cipher_dir, &config)?;
    Ok(opened)
}
