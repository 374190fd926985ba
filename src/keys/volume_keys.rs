use std::collections::BTreeMap;

use super::KeyError;
use crate::crypto::{Label, Sealer, SecretKey, constant_time_eq, derive_key, mac};
use crate::format::Id;
use crate::format::config::VolumeConfig;
use crate::format::header::{FileHeader, HeaderSlot, SlotKind, wrap_aad};
use crate::format::keyring::Keyring;

/// The content key of one file, ready to seal and open its blocks.
pub struct DataKeyMaterial {
    pub content: Sealer,
}

impl DataKeyMaterial {
    pub(crate) fn from_data_key(data_key: &SecretKey, file_id: &Id) -> Self {
        let content = derive_key(Label::ContentKey, &[data_key.as_bytes(), file_id]);
        DataKeyMaterial {
            content: Sealer::new(&content),
        }
    }
}

/// Every working key of an unlocked volume, derived once from its keyring.
pub struct VolumeKeys {
    volume_id: Id,
    keyring: Keyring,
    current_kek: u32,
    kek_sealers: BTreeMap<u32, Sealer>,
    config_mac_key: SecretKey,
    pub names: Sealer,
    pub symlinks: Sealer,
    pub xattr_names: Sealer,
    pub xattr_values: Sealer,
}

impl VolumeKeys {
    pub fn new(volume_id: Id, keyring: Keyring, current_kek: u32) -> Result<Self, KeyError> {
        if !keyring.keks.contains_key(&current_kek) {
            return Err(KeyError::UnknownKek(current_kek));
        }
        let secret = keyring.volume_secret.as_bytes();
        let sealer = |label| Sealer::new(&derive_key(label, &[secret]));
        let kek_sealers = keyring
            .keks
            .iter()
            .map(|(v, k)| {
                (
                    *v,
                    Sealer::new(&derive_key(Label::KekWrap, &[k.as_bytes()])),
                )
            })
            .collect();
        Ok(VolumeKeys {
            volume_id,
            current_kek,
            kek_sealers,
            config_mac_key: derive_key(Label::ConfigMac, &[secret]),
            names: sealer(Label::NameKey),
            symlinks: sealer(Label::SymlinkKey),
            xattr_names: sealer(Label::XattrNameKey),
            xattr_values: sealer(Label::XattrValueKey),
            keyring,
        })
    }

    /// A fresh keyring for a new volume: a random volume secret and KEK v1.
    pub fn generate_keyring() -> Result<Keyring, KeyError> {
        Ok(Keyring {
            volume_secret: SecretKey::generate()?,
            keks: [(1, SecretKey::generate()?)].into(),
        })
    }

    pub fn volume_id(&self) -> &Id {
        &self.volume_id
    }

    pub fn keyring(&self) -> &Keyring {
        &self.keyring
    }

    pub fn seal_config(&self, config: &mut VolumeConfig) {
        let tag = mac(&self.config_mac_key, &config.mac_input());
        config.set_mac(&tag);
    }

    pub fn verify_config(&self, config: &VolumeConfig) -> Result<(), KeyError> {
        let expected = mac(&self.config_mac_key, &config.mac_input());
        let stored = config.mac_bytes()?;
        if constant_time_eq(&expected, &stored) {
            Ok(())
        } else {
            Err(KeyError::ConfigTampered)
        }
    }

    fn commitment(&self, data_key: &SecretKey, file_id: &Id) -> [u8; 32] {
        *derive_key(
            Label::KeyCommitment,
            &[data_key.as_bytes(), &self.volume_id, file_id],
        )
        .as_array()
    }
}

impl VolumeKeys {
    /// A header keyslot holding `data_key` wrapped under the current KEK.
    pub(crate) fn wrap_under_kek(
        &self,
        file_id: &Id,
        data_key: &SecretKey,
    ) -> Result<HeaderSlot, KeyError> {
        let kek = &self.kek_sealers[&self.current_kek];
        let wrapped = kek.seal(
            &wrap_aad(&self.volume_id, file_id, self.current_kek),
            data_key.as_bytes(),
        )?;
        Ok(HeaderSlot {
            kind: SlotKind::VolumeKek,
            key_version: self.current_kek,
            wrapped,
        })
    }

    /// The data key in a KEK keyslot; None when this volume does not hold that KEK version.
    pub(crate) fn unwrap_kek_slot(
        &self,
        file_id: &Id,
        slot: &HeaderSlot,
    ) -> Option<Result<SecretKey, &'static str>> {
        let kek = self.kek_sealers.get(&slot.key_version)?;
        let aad = wrap_aad(&self.volume_id, file_id, slot.key_version);
        let Ok(bytes) = kek.open(&aad, &slot.wrapped).map(zeroize::Zeroizing::new) else {
            return Some(Err("keyslot fails authentication"));
        };
        Some(SecretKey::from_slice(&bytes).map_err(|_| "keyslot holds a key of the wrong length"))
    }

    pub(crate) fn check_commitment(&self, header: &FileHeader, data_key: &SecretKey) -> bool {
        constant_time_eq(
            &self.commitment(data_key, &header.file_id),
            &header.commitment,
        )
    }

    pub(crate) fn header_for(
        &self,
        file_id: &Id,
        data_key: &SecretKey,
        slots: Vec<HeaderSlot>,
    ) -> FileHeader {
        FileHeader {
            file_id: *file_id,
            commitment: self.commitment(data_key, file_id),
            slots,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::format::id_to_hex;
    use crate::keys::{FileKeys, HeaderKeys};
    use std::sync::Arc;

    fn keys() -> FileKeys {
        FileKeys::volume_mode(Arc::new(
            VolumeKeys::new([1; 16], VolumeKeys::generate_keyring().unwrap(), 1).unwrap(),
        ))
    }

    #[test]
    fn header_round_trip_yields_same_content_key() {
        let k = keys();
        let (header, material) = k.new_header().unwrap();
        let sealed = material.content.seal(b"a", b"data").unwrap();
        let reopened = k
            .open_header(&FileHeader::decode(&header.encode().unwrap()).unwrap())
            .unwrap();
        assert_eq!(reopened.content.open(b"a", &sealed).unwrap(), b"data");
    }

    #[test]
    fn every_bit_flip_in_a_header_is_rejected() {
        let k = keys();
        let (header, _) = k.new_header().unwrap();
        let bytes = header.encode().unwrap();
        for bit in 0..bytes.len() * 8 {
            let mut bad = bytes.clone();
            bad[bit / 8] ^= 1 << (bit % 8);
            let opened = FileHeader::decode(&bad)
                .map_err(KeyError::from)
                .and_then(|h| k.open_header(&h).map(|_| ()));
            assert!(opened.is_err(), "bit {bit} accepted");
        }
    }

    #[test]
    fn header_of_another_volume_or_file_rejected() {
        let k = keys();
        let (mut header, _) = k.new_header().unwrap();
        let other = FileKeys::volume_mode(Arc::new(
            VolumeKeys::new([9; 16], k.volume().keyring().clone(), 1).unwrap(),
        ));
        assert!(other.open_header(&header).is_err());
        header.file_id = [3; 16];
        assert!(k.open_header(&header).is_err());
    }

    #[test]
    fn config_mac_detects_changes() {
        let k = VolumeKeys::new([1; 16], VolumeKeys::generate_keyring().unwrap(), 1).unwrap();
        let mut config = crate::format::config::VolumeConfig {
            format_version: 1,
            volume_id: id_to_hex(&[1; 16]),
            block_size: 4096,
            cipher: "aes-256-gcm-siv".into(),
            key_mode: crate::format::config::KeyMode::Volume,
            current_kek: 1,
            file_key_slot: None,
            keyslots: vec![],
            mac: String::new(),
        };
        k.seal_config(&mut config);
        k.verify_config(&config).unwrap();
        config.block_size = 8192;
        assert!(matches!(
            k.verify_config(&config),
            Err(KeyError::ConfigTampered)
        ));
    }
}
