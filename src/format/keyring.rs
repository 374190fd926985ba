//! The keyring every volume keyslot seals: the volume secret (names, xattrs, config MAC) and
//! every live version of the key-encryption key (KEK).

use std::collections::BTreeMap;

use zeroize::Zeroizing;

use super::{FormatError, Reader};
use crate::crypto::SecretKey;

const KEYRING_VERSION: u8 = 1;
pub const MAX_KEKS: usize = 1024;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Keyring {
    pub volume_secret: SecretKey,
    pub keks: BTreeMap<u32, SecretKey>,
}

impl Keyring {
    pub fn encode(&self) -> Zeroizing<Vec<u8>> {
        let mut out = Zeroizing::new(Vec::with_capacity(35 + self.keks.len() * 36));
        out.push(KEYRING_VERSION);
        out.extend_from_slice(self.volume_secret.as_bytes());
        out.extend_from_slice(&(self.keks.len() as u16).to_be_bytes());
        for (version, key) in &self.keks {
            out.extend_from_slice(&version.to_be_bytes());
            out.extend_from_slice(key.as_bytes());
        }
        out
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, FormatError> {
        let mut r = Reader::new(bytes, "keyring");
        if r.u8()? != KEYRING_VERSION {
            return Err(FormatError::Invalid("keyring version"));
        }
        let volume_secret = SecretKey::from_array(r.array()?);
        let count = r.u16()? as usize;
        if count == 0 || count > MAX_KEKS {
            return Err(FormatError::Invalid("keyring KEK count"));
        }
        let mut keks = BTreeMap::new();
        for _ in 0..count {
            let version = r.u32()?;
            let key = SecretKey::from_array(r.array()?);
            // Ascending, as written: one encoding per keyring (found by cargo fuzz).
            let ascending = keks.keys().next_back().is_none_or(|last| version > *last);
            if version == 0 || !ascending || keks.insert(version, key).is_some() {
                return Err(FormatError::Invalid("keyring KEK version"));
            }
        }
        r.finish()?;
        Ok(Keyring {
            volume_secret,
            keks,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_rejects_duplicates() {
        let ring = Keyring {
            volume_secret: SecretKey::from_array([1; 32]),
            keks: [
                (1, SecretKey::from_array([2; 32])),
                (2, SecretKey::from_array([3; 32])),
            ]
            .into(),
        };
        let bytes = ring.encode();
        assert_eq!(Keyring::decode(&bytes).unwrap(), ring);
        let mut dup = bytes.to_vec();
        dup[35..39].copy_from_slice(&2u32.to_be_bytes());
        assert!(Keyring::decode(&dup).is_err());
        assert!(Keyring::decode(&bytes[..40]).is_err());
        // Descending order is another encoding of the same keyring: refused.
        let mut swapped = bytes.to_vec();
        swapped[35..39].copy_from_slice(&3u32.to_be_bytes());
        assert!(Keyring::decode(&swapped).is_err());
    }
}
