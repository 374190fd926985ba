use super::{KeyError, MasterKeyProvider, VolumeKeys};
use crate::format::config::VolumeConfig;
use crate::format::keyring::Keyring;

/// Opens the first keyslot any provider can open, then checks the config's MAC with the
/// keyring it yields: a config edited by someone without a key is refused here.
pub fn unlock(
    config: &VolumeConfig,
    providers: &[Box<dyn MasterKeyProvider>],
) -> Result<VolumeKeys, KeyError> {
    if providers.is_empty() {
        return Err(KeyError::NoProvider);
    }
    let volume_id = config.volume_id()?;
    let mut first_error = None;
    for provider in providers {
        for slot in &config.keyslots {
            match provider.open_slot(slot, &volume_id) {
                Ok(None) => continue,
                Ok(Some(bytes)) => {
                    let keyring = Keyring::decode(&bytes)?;
                    let mut keys = VolumeKeys::from_keyring(volume_id, keyring)?;
                    keys.apply_config(config)?;
                    keys.set_opened_by(slot.id, slot.provider.kind());
                    return Ok(keys);
                }
                Err(err @ KeyError::SlotDamaged(_)) => first_error = Some(err),
                Err(err) => {
                    first_error.get_or_insert(err);
                }
            }
        }
    }
    Err(first_error.unwrap_or_else(|| {
        let kinds: Vec<&str> = config.keyslots.iter().map(|s| s.provider.kind()).collect();
        KeyError::NoSlotForProvider(
            providers
                .iter()
                .map(|p| p.describe())
                .collect::<Vec<_>>()
                .join(", "),
            kinds.join(", "),
        )
    }))
}
