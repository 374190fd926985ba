use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

use super::{KeyError, NameKeys};
use crate::crypto::{Label, Sealer, SecretKey, constant_time_eq, derive_key, mac};
use crate::format::Id;
use crate::format::config::{ConfigKeyslot, SealedKek, VolumeConfig, kek_seal_aad};
use crate::format::header::{FileHeader, HeaderSlot, SlotKind, wrap_aad};
use crate::format::keyring::Keyring;

/// The content key of one file, ready to seal and open its blocks.
pub struct DataKeyMaterial {
    pub content: Sealer,
    /// The key policy whose key the file's data key was unwrapped with (0: the volume's): a
    /// file must sit in a directory of that policy.
    pub policy: u32,
}

impl DataKeyMaterial {
    pub(crate) fn from_data_key(data_key: &SecretKey, file_id: &Id) -> Self {
        let content = derive_key(Label::ContentKey, &[data_key.as_bytes(), file_id]);
        DataKeyMaterial {
            content: Sealer::new(&content),
            policy: crate::format::policy::VOLUME_POLICY,
        }
    }
}

/// The KEK versions a volume holds right now, and the one new files use. Replaced as a whole
/// when a running mount picks up a rotation.
struct KekSet {
    current: u32,
    keys: BTreeMap<u32, SecretKey>,
    sealers: BTreeMap<u32, Sealer>,
}

impl KekSet {
    fn new(current: u32, keys: BTreeMap<u32, SecretKey>) -> Result<Self, KeyError> {
        if !keys.contains_key(&current) {
            return Err(KeyError::UnknownKek(current));
        }
        let sealers = keys
            .iter()
            .map(|(v, k)| {
                (
                    *v,
                    Sealer::new(&derive_key(Label::KekWrap, &[k.as_bytes()])),
                )
            })
            .collect();
        Ok(KekSet {
            current,
            keys,
            sealers,
        })
    }
}

/// Every working key of an unlocked volume, derived once from its keyring; the KEK versions
/// follow the config (rotation adds them there, sealed under the volume secret).
pub struct VolumeKeys {
    volume_id: Id,
    volume_secret: SecretKey,
    keyring_keks: BTreeMap<u32, SecretKey>,
    keks: RwLock<Arc<KekSet>>,
    kek_seal: Sealer,
    config_mac_key: SecretKey,
    audit_key: SecretKey,
    opened_by: Option<(u32, &'static str)>,
    /// The volume's own name keys: names, symlink targets and xattrs outside any key policy.
    pub names: Arc<NameKeys>,
}

impl VolumeKeys {
    /// Keys from an opened keyring, with its highest KEK current until a config is applied.
    pub fn from_keyring(volume_id: Id, keyring: Keyring) -> Result<Self, KeyError> {
        let secret = keyring.volume_secret.as_bytes();
        let sealer = |label| Sealer::new(&derive_key(label, &[secret]));
        let current = *keyring
            .keks
            .keys()
            .next_back()
            .ok_or(KeyError::UnknownKek(1))?;
        Ok(VolumeKeys {
            volume_id,
            keks: RwLock::new(Arc::new(KekSet::new(current, keyring.keks.clone())?)),
            kek_seal: sealer(Label::KekSeal),
            config_mac_key: derive_key(Label::ConfigMac, &[secret]),
            audit_key: derive_key(Label::AuditMac, &[secret]),
            opened_by: None,
            names: Arc::new(NameKeys::derive(secret)),
            keyring_keks: keyring.keks,
            volume_secret: keyring.volume_secret,
        })
    }

    /// Checks `config`'s MAC and takes its KEK versions: the keyring's and the rotated ones
    /// sealed in the config, minus the retired ones, with its current version. A running mount
    /// calls this again whenever the config changes.
    pub fn apply_config(&self, config: &VolumeConfig) -> Result<(), KeyError> {
        self.verify_config(config)?;
        let mut keys = self.keyring_keks.clone();
        for sealed in &config.keks {
            let bytes = self
                .kek_seal
                .open(
                    &kek_seal_aad(&self.volume_id, sealed.version),
                    &sealed.sealed_bytes()?,
                )
                .map(zeroize::Zeroizing::new)?;
            let key = SecretKey::from_slice(&bytes)?;
            if let Some(existing) = keys.get(&sealed.version)
                && *existing != key
            {
                return Err(KeyError::InconsistentKek(sealed.version));
            }
            keys.insert(sealed.version, key);
        }
        for retired in &config.retired_keks {
            keys.remove(retired);
        }
        let set = KekSet::new(config.current_kek, keys)?;
        *crate::sync::write(&self.keks) = Arc::new(set);
        Ok(())
    }

    fn kek_set(&self) -> Arc<KekSet> {
        crate::sync::read(&self.keks).clone()
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

    /// The keyring a new or resealed keyslot gets: the volume secret and every KEK version in
    /// use now (retired ones are left out, so resealing a slot drops them for good).
    pub fn current_keyring(&self) -> Keyring {
        Keyring {
            volume_secret: self.volume_secret.clone(),
            keks: self.kek_set().keys.clone(),
        }
    }

    /// The KEK version new files use.
    pub fn current_kek(&self) -> u32 {
        self.kek_set().current
    }

    /// Every KEK version this volume can unwrap with.
    pub fn kek_versions(&self) -> Vec<u32> {
        self.kek_set().keys.keys().copied().collect()
    }

    /// A new KEK, sealed for the config as version `version`.
    pub fn seal_new_kek(&self, version: u32) -> Result<SealedKek, KeyError> {
        let kek = SecretKey::generate()?;
        let sealed = self
            .kek_seal
            .seal(&kek_seal_aad(&self.volume_id, version), kek.as_bytes())?;
        Ok(SealedKek {
            version,
            sealed: ConfigKeyslot::encode_bytes(&sealed),
        })
    }

    /// The keyslot (id, provider kind) that unlocked these keys, for the audit log.
    pub fn opened_by(&self) -> Option<(u32, &'static str)> {
        self.opened_by
    }

    pub(crate) fn set_opened_by(&mut self, slot: u32, provider: &'static str) {
        self.opened_by = Some((slot, provider));
    }

    /// The key of the volume's audit chain.
    pub fn audit_key(&self) -> &SecretKey {
        &self.audit_key
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
        let keks = self.kek_set();
        let wrapped = keks.sealers[&keks.current].seal(
            &wrap_aad(&self.volume_id, file_id, keks.current),
            data_key.as_bytes(),
        )?;
        Ok(HeaderSlot {
            kind: SlotKind::VolumeKek,
            key_version: keks.current,
            wrapped,
        })
    }

    /// Reverse mode: `data_key` wrapped under the current KEK with the fixed all-zero nonce, so
    /// the same file gives the same header bytes on every mount. GCM-SIV keeps this safe: each
    /// file id has its own data key, and the file id is in the associated data.
    pub(crate) fn wrap_under_kek_deterministic(
        &self,
        file_id: &Id,
        data_key: &SecretKey,
    ) -> Result<HeaderSlot, KeyError> {
        let keks = self.kek_set();
        let plain = data_key.as_bytes();
        let mut wrapped = vec![0u8; plain.len() + crate::crypto::SEAL_OVERHEAD];
        keks.sealers[&keks.current].seal_into_with_nonce(
            &[0u8; crate::crypto::NONCE_LEN],
            &wrap_aad(&self.volume_id, file_id, keks.current),
            plain,
            &mut wrapped,
        )?;
        Ok(HeaderSlot {
            kind: SlotKind::VolumeKek,
            key_version: keks.current,
            wrapped,
        })
    }

    /// A key derived from the volume secret under `label` (reverse mode's file ids and data
    /// keys, which must be the same on every mount).
    pub(crate) fn derive_from_secret(&self, label: Label, parts: &[&[u8]]) -> SecretKey {
        let mut material: Vec<&[u8]> = vec![self.volume_secret.as_bytes()];
        material.extend_from_slice(parts);
        derive_key(label, &material)
    }

    /// The data key in a KEK keyslot; None when this volume does not hold that KEK version.
    pub(crate) fn unwrap_kek_slot(
        &self,
        file_id: &Id,
        slot: &HeaderSlot,
    ) -> Option<Result<SecretKey, &'static str>> {
        let keks = self.kek_set();
        let kek = keks.sealers.get(&slot.key_version)?;
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
            VolumeKeys::from_keyring([1; 16], VolumeKeys::generate_keyring().unwrap()).unwrap(),
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
            VolumeKeys::from_keyring([9; 16], k.volume().current_keyring()).unwrap(),
        ));
        assert!(other.open_header(&header).is_err());
        header.file_id = [3; 16];
        assert!(k.open_header(&header).is_err());
    }

    #[test]
    fn rotated_keks_come_from_the_config_and_retired_ones_are_refused() {
        let keys =
            VolumeKeys::from_keyring([1; 16], VolumeKeys::generate_keyring().unwrap()).unwrap();
        let file_keys = FileKeys::volume_mode(Arc::new(keys));
        let keys = file_keys.volume();
        let (old_header, _) = file_keys.new_header().unwrap();
        let mut config = crate::format::config::VolumeConfig {
            format_version: 3,
            volume_id: id_to_hex(&[1; 16]),
            block_size: 4096,
            cipher: "aes-256-gcm-siv".into(),
            key_mode: crate::format::config::KeyMode::Volume,
            current_kek: 2,
            file_key_slot: None,
            keks: vec![keys.seal_new_kek(2).unwrap()],
            retired_keks: vec![],
            policies: vec![],
            retired_policies: vec![],
            keyslots: vec![],
            mac: String::new(),
        };
        keys.seal_config(&mut config);
        keys.apply_config(&config).unwrap();
        assert_eq!(keys.kek_versions(), vec![1, 2]);
        let (new_header, _) = file_keys.new_header().unwrap();
        assert_eq!(new_header.slots[0].key_version, 2);
        let moved = file_keys.rewrap_header(&old_header).unwrap().unwrap();
        assert_eq!(moved.slots[0].key_version, 2);
        assert_eq!(moved.commitment, old_header.commitment, "same data key");
        assert!(
            file_keys.rewrap_header(&moved).unwrap().is_none(),
            "already current"
        );

        // A sealed KEK moved to another version number does not open.
        let mut swapped = config.clone();
        swapped.keks[0].version = 3;
        swapped.current_kek = 3;
        keys.seal_config(&mut swapped);
        assert!(keys.apply_config(&swapped).is_err());

        config.retired_keks = vec![1];
        keys.seal_config(&mut config);
        keys.apply_config(&config).unwrap();
        assert_eq!(keys.kek_versions(), vec![2]);
        assert!(
            file_keys.open_header(&old_header).is_err(),
            "KEK 1 is refused"
        );
        assert!(file_keys.open_header(&moved).is_ok());
        assert_eq!(
            keys.current_keyring()
                .keks
                .keys()
                .copied()
                .collect::<Vec<_>>(),
            vec![2]
        );
    }

    #[test]
    fn config_mac_detects_changes() {
        let k = VolumeKeys::from_keyring([1; 16], VolumeKeys::generate_keyring().unwrap()).unwrap();
        let mut config = crate::format::config::VolumeConfig {
            format_version: 1,
            volume_id: id_to_hex(&[1; 16]),
            block_size: 4096,
            cipher: "aes-256-gcm-siv".into(),
            key_mode: crate::format::config::KeyMode::Volume,
            current_kek: 1,
            file_key_slot: None,
            keks: vec![],
            retired_keks: vec![],
            policies: vec![],
            retired_policies: vec![],
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
