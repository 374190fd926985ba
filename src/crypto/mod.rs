//! Thin wrappers over AES-256-GCM-SIV (AWS-LC, or the aes-gcm-siv crate) and blake3:
//! zeroizing key types, the AEAD used for every sealed object, and every key-derivation label
//! in one place.

mod aead;
mod gcm_siv;
mod labels;
mod secret;

pub use aead::{NONCE_LEN, SEAL_OVERHEAD, Sealer, TAG_LEN};
pub use gcm_siv::IMPLEMENTATION as CIPHER_IMPLEMENTATION;
pub use labels::Label;
pub use secret::{SecretKey, constant_time_eq, random_array, random_bytes};

use thiserror::Error;

#[derive(Clone, Debug, Error, PartialEq, Eq)]
pub enum CryptoError {
    /// Deliberately opaque: which object failed is the caller's to log.
    #[error("authentication failed")]
    Authentication,
    #[error("operating-system randomness unavailable")]
    Randomness,
    #[error("buffer has the wrong length")]
    Length,
}

/// Derives a 256-bit subkey from key material under a domain-separation label.
pub fn derive_key(label: Label, material: &[&[u8]]) -> SecretKey {
    let mut hasher = blake3::Hasher::new_derive_key(label.context());
    for part in material {
        hasher.update(part);
    }
    SecretKey::from_array(*hasher.finalize().as_bytes())
}

/// A keyed MAC (blake3 keyed mode) over `data`.
pub fn mac(key: &SecretKey, data: &[u8]) -> [u8; 32] {
    *blake3::keyed_hash(key.as_array(), data).as_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_separate_domains() {
        let material: &[&[u8]] = &[b"same material"];
        let a = derive_key(Label::ContentKey, material);
        let b = derive_key(Label::NameKey, material);
        assert!(!constant_time_eq(a.as_bytes(), b.as_bytes()));
    }
}
