use std::collections::BTreeMap;

use super::{HeaderKeys, KeyError};
use crate::crypto::{Label, Sealer, SecretKey, constant_time_eq, derive_key, mac};
use crate::format::config::VolumeConfig;
use crate::format::header::{FileHeader, HeaderSlot, SlotKind, wrap_aad};
use crate::format::keyring::Keyring;
use crate::format::{Id, id_to_hex};

/// The content key of one file, ready to seal and open its blocks.
pub struct DataKeyMaterial {
    pub content: Sealer,
}

impl DataKeyMaterial {
    fn from_data_key(data_key: &SecretKey, file_id: &Id) -> Self {
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

impl HeaderKeys for VolumeKeys {
    fn new_header(&self, file_id: &Id) -> Result<(FileHeader, DataKeyMaterial), KeyError> {
        let data_key = SecretKey::generate()?;
        let kek = &self.kek_sealers[&self.current_kek];
        let wrapped = kek.seal(
            &wrap_aad(&self.volume_id, file_id, self.current_kek),
            data_key.as_bytes(),
        )?;
        let header = FileHeader {
            file_id: *file_id,
            commitment: self.commitment(&data_key, file_id),
            slots: vec![HeaderSlot {
                kind: SlotKind::VolumeKek,
                key_version: self.current_kek,
                wrapped,
            }],
        };
        Ok((header, DataKeyMaterial::from_data_key(&data_key, file_id)))
    }

    fn open_header(&self, header: &FileHeader) -> Result<DataKeyMaterial, KeyError> {
        let fail = |reason| KeyError::Header {
            file: id_to_hex(&header.file_id),
            reason,
        };
        let mut reason = "no keyslot is wrapped under a KEK this volume holds";
        for slot in &header.slots {
            let SlotKind::VolumeKek = slot.kind;
            let Some(kek) = self.kek_sealers.get(&slot.key_version) else {
                continue;
            };
            let aad = wrap_aad(&self.volume_id, &header.file_id, slot.key_version);
            let Ok(bytes) = kek.open(&aad, &slot.wrapped).map(zeroize::Zeroizing::new) else {
                reason = "keyslot fails authentication";
                continue;
            };
            let Ok(data_key) = SecretKey::from_slice(&bytes) else {
                reason = "keyslot holds a key of the wrong length";
                continue;
            };
            if !constant_time_eq(
                &self.commitment(&data_key, &header.file_id),
                &header.commitment,
            ) {
                return Err(fail("key commitment mismatch"));
            }
            return Ok(DataKeyMaterial::from_data_key(&data_key, &header.file_id));
        }
        Err(fail(reason))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys() -> VolumeKeys {
        VolumeKeys::new([1; 16], VolumeKeys::generate_keyring().unwrap(), 1).unwrap()
    }

    #[test]
    fn header_round_trip_yields_same_content_key() {
        let k = keys();
        let (header, material) = k.new_header(&[2; 16]).unwrap();
        let sealed = material.content.seal(b"a", b"data").unwrap();
        let reopened = k
            .open_header(&FileHeader::decode(&header.encode().unwrap()).unwrap())
            .unwrap();
        assert_eq!(reopened.content.open(b"a", &sealed).unwrap(), b"data");
    }

    #[test]
    fn every_bit_flip_in_a_header_is_rejected() {
        let k = keys();
        let (header, _) = k.new_header(&[2; 16]).unwrap();
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
        let (mut header, _) = k.new_header(&[2; 16]).unwrap();
        let other = VolumeKeys::new([9; 16], k.keyring().clone(), 1).unwrap();
        assert!(other.open_header(&header).is_err());
        header.file_id = [3; 16];
        assert!(k.open_header(&header).is_err());
    }

    #[test]
    fn config_mac_detects_changes() {
        let k = keys();
        let mut config = crate::format::config::VolumeConfig {
            format_version: 1,
            volume_id: id_to_hex(&[1; 16]),
            block_size: 4096,
            cipher: "aes-256-gcm-siv".into(),
            key_mode: crate::format::config::KeyMode::Volume,
            current_kek: 1,
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
