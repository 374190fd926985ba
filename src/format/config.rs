//! The volume config, `sealfs.conf`: JSON, authenticated as a whole by a MAC under a key
//! derived from the volume secret (checked once a keyslot has been opened).

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use serde::{Deserialize, Serialize};

use super::{FormatError, Id, block, id_from_hex, id_to_hex};

pub const CONFIG_FILE: &str = "sealfs.conf";
/// Version 1: key-file and passphrase keyslots. Version 2 adds AWS KMS and PKCS#11 keyslots.
/// A config is written with the lowest version that can express it, so volumes that use no
/// version-2 feature stay readable by version-1 readers.
pub const CONFIG_VERSION_MAX: u32 = 2;
pub const CIPHER: &str = "aes-256-gcm-siv";
/// Hostile configs must not make us allocate or hash without bound.
pub const MAX_CONFIG_LEN: usize = 1 << 20;
pub const MAX_KEYSLOTS: usize = 64;
pub const ARGON2_MAX_M_KIB: u32 = 4 << 20;
pub const ARGON2_MAX_T: u32 = 64;
pub const ARGON2_MAX_P: u32 = 16;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum KeyMode {
    /// Master keys wrap the volume KEK ring; file keys are wrapped under a KEK.
    Volume,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Argon2Params {
    pub m_kib: u32,
    pub t: u32,
    pub p: u32,
}

impl Argon2Params {
    pub const DEFAULT: Argon2Params = Argon2Params {
        m_kib: 64 * 1024,
        t: 3,
        p: 1,
    };

    fn validate(&self) -> Result<(), FormatError> {
        let ok = (8..=ARGON2_MAX_M_KIB).contains(&self.m_kib)
            && (1..=ARGON2_MAX_T).contains(&self.t)
            && (1..=ARGON2_MAX_P).contains(&self.p)
            && self.m_kib >= 8 * self.p;
        ok.then_some(())
            .ok_or(FormatError::Invalid("argon2id parameters"))
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "provider", rename_all = "kebab-case")]
pub enum SlotProvider {
    /// 32 random bytes in a key file.
    Keyfile,
    /// A passphrase stretched with Argon2id.
    Passphrase {
        argon2id: Argon2Params,
        /// base64, 16 bytes.
        salt: String,
    },
    /// A random slot key encrypted by AWS KMS (version 2).
    AwsKms {
        /// The key as the user named it at creation (ARN, key id or alias).
        key_id: String,
        /// The key ARN KMS reported; Decrypt must name and answer with this one.
        key_arn: String,
        /// base64 of the KMS ciphertext blob of the slot key.
        encrypted_slot_key: String,
    },
    /// A random slot key encrypted with AES-256-GCM by a key on a PKCS#11 token (version 2).
    Pkcs11 {
        token_label: String,
        key_label: String,
        /// Where the module was at creation; `--pkcs11-module` overrides it.
        module: String,
        /// base64 of iv (12) || ciphertext || tag (16).
        encrypted_slot_key: String,
    },
}

impl SlotProvider {
    pub fn kind(&self) -> &'static str {
        match self {
            SlotProvider::Keyfile => "keyfile",
            SlotProvider::Passphrase { .. } => "passphrase",
            SlotProvider::AwsKms { .. } => "aws-kms",
            SlotProvider::Pkcs11 { .. } => "pkcs11",
        }
    }

    /// The lowest config version that can hold this kind of slot.
    pub fn min_version(&self) -> u32 {
        match self {
            SlotProvider::Keyfile | SlotProvider::Passphrase { .. } => 1,
            SlotProvider::AwsKms { .. } | SlotProvider::Pkcs11 { .. } => 2,
        }
    }
}

// No deny_unknown_fields here: serde cannot combine it with `flatten`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConfigKeyslot {
    pub id: u32,
    #[serde(flatten)]
    pub provider: SlotProvider,
    /// hex, 32 bytes: derive_key(KeyslotCheck, master material). Tells "wrong key" apart from
    /// "damaged keyslot" without trial decryption.
    pub key_check: String,
    /// base64: nonce || sealed keyring || tag.
    pub wrapped_keyring: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VolumeConfig {
    pub format_version: u32,
    pub volume_id: String,
    pub block_size: u32,
    pub cipher: String,
    pub key_mode: KeyMode,
    pub current_kek: u32,
    pub keyslots: Vec<ConfigKeyslot>,
    /// hex, 32 bytes: keyed blake3 over the canonical encoding with this field empty.
    #[serde(default)]
    pub mac: String,
}

#[derive(Deserialize)]
struct VersionProbe {
    format_version: u32,
}

impl VolumeConfig {
    /// Parses and validates structure. The MAC is checked later, by whoever holds the keyring.
    pub fn parse(bytes: &[u8]) -> Result<Self, FormatError> {
        if bytes.len() > MAX_CONFIG_LEN {
            return Err(FormatError::Invalid("config (too large)"));
        }
        // Read the version alone first, so a newer config is named as such rather than as a
        // config with unknown fields.
        let probe: VersionProbe =
            serde_json::from_slice(bytes).map_err(|_| FormatError::Invalid("config JSON"))?;
        if probe.format_version == 0 || probe.format_version > CONFIG_VERSION_MAX {
            return Err(FormatError::TooNew {
                what: "volume config",
                found: probe.format_version,
                supported: CONFIG_VERSION_MAX,
            });
        }
        let config: VolumeConfig =
            serde_json::from_slice(bytes).map_err(|_| FormatError::Invalid("config JSON"))?;
        config.validate()?;
        Ok(config)
    }

    pub fn validate(&self) -> Result<(), FormatError> {
        self.volume_id()?;
        block::validate_block_size(self.block_size)?;
        if self.cipher != CIPHER {
            return Err(FormatError::Invalid("cipher suite"));
        }
        if self.current_kek == 0 {
            return Err(FormatError::Invalid("current KEK version"));
        }
        if self.keyslots.is_empty() || self.keyslots.len() > MAX_KEYSLOTS {
            return Err(FormatError::Invalid("keyslot count"));
        }
        let mut ids: Vec<u32> = self.keyslots.iter().map(|s| s.id).collect();
        ids.sort_unstable();
        ids.dedup();
        if ids.len() != self.keyslots.len() {
            return Err(FormatError::Invalid("keyslot ids (duplicate)"));
        }
        if self.format_version < self.required_version() {
            return Err(FormatError::Invalid("keyslot kind for this config version"));
        }
        for slot in &self.keyslots {
            slot.key_check()?;
            if let SlotProvider::AwsKms {
                encrypted_slot_key, ..
            }
            | SlotProvider::Pkcs11 {
                encrypted_slot_key, ..
            } = &slot.provider
            {
                slot.encrypted_slot_key()?;
                if encrypted_slot_key.is_empty() {
                    return Err(FormatError::Invalid("keyslot encrypted slot key"));
                }
            }
            slot.wrapped_keyring()?;
            if let SlotProvider::Passphrase { argon2id, .. } = &slot.provider {
                argon2id.validate()?;
                slot.salt()?;
            }
        }
        Ok(())
    }

    /// The version this config must be written with.
    pub fn required_version(&self) -> u32 {
        self.keyslots
            .iter()
            .map(|s| s.provider.min_version())
            .max()
            .unwrap_or(1)
    }

    pub fn next_slot_id(&self) -> u32 {
        self.keyslots.iter().map(|s| s.id + 1).max().unwrap_or(0)
    }

    pub fn volume_id(&self) -> Result<Id, FormatError> {
        id_from_hex(&self.volume_id)
    }

    /// The bytes the MAC covers: this config serialized with an empty `mac`. serde_json writes
    /// struct fields in declaration order, so the encoding is canonical.
    pub fn mac_input(&self) -> Vec<u8> {
        let mut copy = self.clone();
        copy.mac.clear();
        serde_json::to_vec(&copy).expect("config serializes")
    }

    pub fn mac_bytes(&self) -> Result<[u8; 32], FormatError> {
        hex32(&self.mac).ok_or(FormatError::Invalid("config MAC"))
    }

    pub fn set_mac(&mut self, mac: &[u8; 32]) {
        self.mac = hex(mac);
    }

    pub fn to_pretty_json(&self) -> Vec<u8> {
        let mut out = serde_json::to_vec_pretty(self).expect("config serializes");
        out.push(b'\n');
        out
    }

    pub fn new_volume_id_text(id: &Id) -> String {
        id_to_hex(id)
    }
}

impl ConfigKeyslot {
    pub fn key_check(&self) -> Result<[u8; 32], FormatError> {
        hex32(&self.key_check).ok_or(FormatError::Invalid("keyslot check value"))
    }

    pub fn wrapped_keyring(&self) -> Result<Vec<u8>, FormatError> {
        let bytes = B64
            .decode(&self.wrapped_keyring)
            .map_err(|_| FormatError::Invalid("keyslot wrapped keyring"))?;
        if bytes.len() > 64 * 1024 {
            return Err(FormatError::Invalid("keyslot wrapped keyring"));
        }
        Ok(bytes)
    }

    pub fn salt(&self) -> Result<Vec<u8>, FormatError> {
        match &self.provider {
            SlotProvider::Passphrase { salt, .. } => {
                let bytes = B64
                    .decode(salt)
                    .map_err(|_| FormatError::Invalid("keyslot salt"))?;
                if bytes.len() != 16 {
                    return Err(FormatError::Invalid("keyslot salt"));
                }
                Ok(bytes)
            }
            _ => Err(FormatError::Invalid("keyslot salt")),
        }
    }

    pub fn encrypted_slot_key(&self) -> Result<Vec<u8>, FormatError> {
        let text = match &self.provider {
            SlotProvider::AwsKms {
                encrypted_slot_key, ..
            }
            | SlotProvider::Pkcs11 {
                encrypted_slot_key, ..
            } => encrypted_slot_key,
            _ => return Err(FormatError::Invalid("keyslot encrypted slot key")),
        };
        let bytes = B64
            .decode(text)
            .map_err(|_| FormatError::Invalid("keyslot encrypted slot key"))?;
        if bytes.len() > 8192 {
            return Err(FormatError::Invalid("keyslot encrypted slot key"));
        }
        Ok(bytes)
    }

    pub fn encode_bytes(bytes: &[u8]) -> String {
        B64.encode(bytes)
    }

    pub fn encode_check(check: &[u8; 32]) -> String {
        hex(check)
    }
}

/// Associated data sealing a keyring into keyslot `slot_id`.
pub fn keyslot_aad(volume_id: &Id, slot_id: u32) -> Vec<u8> {
    let mut aad = b"sealfs.keyslot.v1".to_vec();
    aad.extend_from_slice(volume_id);
    aad.extend_from_slice(&slot_id.to_be_bytes());
    aad
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn hex32(text: &str) -> Option<[u8; 32]> {
    if text.len() != 64 || !text.is_ascii() {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&text[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    pub(crate) fn sample() -> VolumeConfig {
        VolumeConfig {
            format_version: 1,
            volume_id: id_to_hex(&[1; 16]),
            block_size: 4096,
            cipher: CIPHER.into(),
            key_mode: KeyMode::Volume,
            current_kek: 1,
            keyslots: vec![
                ConfigKeyslot {
                    id: 0,
                    provider: SlotProvider::Keyfile,
                    key_check: hex(&[2; 32]),
                    wrapped_keyring: B64.encode([3; 60]),
                },
                ConfigKeyslot {
                    id: 1,
                    provider: SlotProvider::Passphrase {
                        argon2id: Argon2Params::DEFAULT,
                        salt: B64.encode([4; 16]),
                    },
                    key_check: hex(&[5; 32]),
                    wrapped_keyring: B64.encode([6; 60]),
                },
            ],
            mac: hex(&[7; 32]),
        }
    }

    #[test]
    fn round_trip() {
        let c = sample();
        assert_eq!(VolumeConfig::parse(&c.to_pretty_json()).unwrap(), c);
    }

    #[test]
    fn newer_version_is_named() {
        let mut c = sample();
        c.format_version = CONFIG_VERSION_MAX + 1;
        let err = VolumeConfig::parse(&serde_json::to_vec(&c).unwrap()).unwrap_err();
        assert!(err.to_string().contains("newer than this sealfs supports"));
    }

    #[test]
    fn remote_keyslots_need_version_2() {
        let mut c = sample();
        c.keyslots[0].provider = SlotProvider::AwsKms {
            key_id: "alias/x".into(),
            key_arn: "arn:aws:kms:us-east-1:1:key/x".into(),
            encrypted_slot_key: B64.encode([1; 96]),
        };
        assert_eq!(c.required_version(), 2);
        assert!(
            VolumeConfig::parse(&c.to_pretty_json()).is_err(),
            "a v1 config cannot hold a KMS slot"
        );
        c.format_version = 2;
        assert_eq!(VolumeConfig::parse(&c.to_pretty_json()).unwrap(), c);
    }

    #[test]
    fn invalid_fields_rejected() {
        type Mutation = Box<dyn Fn(&mut VolumeConfig)>;
        let cases: Vec<Mutation> = vec![
            Box::new(|c| c.block_size = 1000),
            Box::new(|c| c.cipher = "rot13".into()),
            Box::new(|c| c.volume_id = "xyz".into()),
            Box::new(|c| c.current_kek = 0),
            Box::new(|c| c.keyslots.clear()),
            Box::new(|c| c.keyslots[1].id = 0),
            Box::new(|c| c.keyslots[0].key_check = "00".into()),
            Box::new(|c| {
                c.keyslots[1].provider = SlotProvider::Passphrase {
                    argon2id: Argon2Params {
                        m_kib: u32::MAX,
                        t: 3,
                        p: 1,
                    },
                    salt: B64.encode([4; 16]),
                }
            }),
        ];
        for (i, mutate) in cases.iter().enumerate() {
            let mut c = sample();
            mutate(&mut c);
            assert!(
                VolumeConfig::parse(&serde_json::to_vec(&c).unwrap()).is_err(),
                "case {i}"
            );
        }
    }

    #[test]
    fn mac_input_ignores_mac_and_formatting() {
        let a = sample();
        let mut b = sample();
        b.mac = hex(&[9; 32]);
        assert_eq!(a.mac_input(), b.mac_input());
        let reparsed = VolumeConfig::parse(&a.to_pretty_json()).unwrap();
        assert_eq!(reparsed.mac_input(), a.mac_input());
    }

    proptest! {
        #[test]
        fn parse_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
            let _ = VolumeConfig::parse(&bytes);
        }
    }
}
