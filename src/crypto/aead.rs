use super::gcm_siv::{Cipher, Failure};
use super::{CryptoError, SecretKey, random_array};

pub use super::gcm_siv::{NONCE_LEN, TAG_LEN};
/// Bytes a sealed object carries beyond its plaintext: nonce first, tag last.
pub const SEAL_OVERHEAD: usize = NONCE_LEN + TAG_LEN;

/// AES-256-GCM-SIV with its key schedule expanded once (`gcm_siv`). Sealed layout:
/// nonce || ciphertext || tag.
pub struct Sealer {
    cipher: Cipher,
}

impl From<Failure> for CryptoError {
    fn from(failure: Failure) -> Self {
        match failure {
            Failure::Length => CryptoError::Length,
            Failure::Authentication => CryptoError::Authentication,
        }
    }
}

impl Sealer {
    pub fn new(key: &SecretKey) -> Self {
        Sealer {
            cipher: Cipher::new(key.as_array()),
        }
    }

    /// Seals `plaintext` into `out` (exactly `plaintext.len() + SEAL_OVERHEAD` bytes) with a fresh
    /// random nonce, reading the plaintext straight from the caller's buffer.
    pub fn seal_into(
        &self,
        aad: &[u8],
        plaintext: &[u8],
        out: &mut [u8],
    ) -> Result<(), CryptoError> {
        self.seal_into_with_nonce(&random_array()?, aad, plaintext, out)
    }

    /// Deterministic sealing, for names: the nonce is chosen by the caller. GCM-SIV stays
    /// misuse resistant, so a repeated nonce only reveals equal plaintexts.
    pub fn seal_into_with_nonce(
        &self,
        nonce: &[u8; NONCE_LEN],
        aad: &[u8],
        plaintext: &[u8],
        out: &mut [u8],
    ) -> Result<(), CryptoError> {
        if out.len() != plaintext.len() + SEAL_OVERHEAD {
            return Err(CryptoError::Length);
        }
        let (nonce_out, rest) = out.split_at_mut(NONCE_LEN);
        let (body, tag_out) = rest.split_at_mut(plaintext.len());
        nonce_out.copy_from_slice(nonce);
        let tag_out: &mut [u8; TAG_LEN] = tag_out.try_into().map_err(|_| CryptoError::Length)?;
        self.cipher.seal(nonce, aad, plaintext, body, tag_out)?;
        Ok(())
    }

    pub fn seal(&self, aad: &[u8], plaintext: &[u8]) -> Result<Vec<u8>, CryptoError> {
        let mut out = vec![0u8; plaintext.len() + SEAL_OVERHEAD];
        self.seal_into(aad, plaintext, &mut out)?;
        Ok(out)
    }

    /// Deterministic sealing (all-zero nonce, not stored): ciphertext || tag. For names, where
    /// equal plaintexts must give equal ciphertexts.
    pub fn seal_deterministic(&self, aad: &[u8], plaintext: &[u8]) -> Result<Vec<u8>, CryptoError> {
        let mut out = vec![0u8; plaintext.len() + SEAL_OVERHEAD];
        self.seal_into_with_nonce(&[0u8; NONCE_LEN], aad, plaintext, &mut out)?;
        out.drain(..NONCE_LEN);
        Ok(out)
    }

    pub fn open_deterministic(&self, aad: &[u8], sealed: &[u8]) -> Result<Vec<u8>, CryptoError> {
        let mut full = vec![0u8; NONCE_LEN];
        full.extend_from_slice(sealed);
        self.open(aad, &full)
    }

    /// Opens `sealed` into `out` (exactly `sealed.len() - SEAL_OVERHEAD` bytes). On failure `out`
    /// is zeroed, so unauthenticated plaintext never escapes.
    pub fn open_into(&self, aad: &[u8], sealed: &[u8], out: &mut [u8]) -> Result<(), CryptoError> {
        if sealed.len() < SEAL_OVERHEAD || out.len() != sealed.len() - SEAL_OVERHEAD {
            return Err(CryptoError::Length);
        }
        let (nonce, rest) = sealed.split_at(NONCE_LEN);
        let (body, tag) = rest.split_at(rest.len() - TAG_LEN);
        let nonce: &[u8; NONCE_LEN] = nonce.try_into().map_err(|_| CryptoError::Length)?;
        let tag: &[u8; TAG_LEN] = tag.try_into().map_err(|_| CryptoError::Length)?;
        let result = self.cipher.open(nonce, aad, body, tag, out);
        if let Err(failure) = result {
            out.fill(0);
            return Err(failure.into());
        }
        Ok(())
    }

    pub fn open(&self, aad: &[u8], sealed: &[u8]) -> Result<Vec<u8>, CryptoError> {
        let len = sealed
            .len()
            .checked_sub(SEAL_OVERHEAD)
            .ok_or(CryptoError::Length)?;
        let mut out = vec![0u8; len];
        self.open_into(aad, sealed, &mut out)?;
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sealer() -> Sealer {
        Sealer::new(&SecretKey::from_array([7; 32]))
    }

    #[test]
    fn round_trip_and_every_bit_flip_rejected() {
        let s = sealer();
        let sealed = s.seal(b"aad", b"hello block").unwrap();
        assert_eq!(s.open(b"aad", &sealed).unwrap(), b"hello block");
        for bit in 0..sealed.len() * 8 {
            let mut bad = sealed.clone();
            bad[bit / 8] ^= 1 << (bit % 8);
            assert_eq!(s.open(b"aad", &bad), Err(CryptoError::Authentication));
        }
        assert_eq!(s.open(b"other", &sealed), Err(CryptoError::Authentication));
    }

    #[test]
    fn random_nonces_differ_deterministic_ones_repeat() {
        let s = sealer();
        assert_ne!(s.seal(b"", b"x").unwrap(), s.seal(b"", b"x").unwrap());
        let det = s.seal_deterministic(b"", b"x").unwrap();
        assert_eq!(det, s.seal_deterministic(b"", b"x").unwrap());
        assert_eq!(det.len(), 1 + TAG_LEN);
        assert_eq!(s.open_deterministic(b"", &det).unwrap(), b"x");
    }

    #[test]
    fn short_input_is_an_error_not_a_panic() {
        assert_eq!(sealer().open(b"", &[0u8; 5]), Err(CryptoError::Length));
    }
}
