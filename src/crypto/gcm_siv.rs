//! AES-256-GCM-SIV (RFC 8452), one key expanded once, detached tags. Two implementations of
//! the same bytes: AWS-LC's (assembly; aws-lc-rs is in the tree already through the AWS SDK's
//! TLS) by default, and the pure-Rust `aes-gcm-siv` crate with the `pure-rust-cipher` feature.
//! The crate is also the test oracle: both must give the same ciphertext and tag for every key,
//! nonce, associated data and length, and each must open the other's (tests below). On 2
//! cores AWS-LC opened 4 KiB blocks 1.8x and sealed them 1.6x as fast (bench/README.md).

/// AES-256-GCM-SIV's nonce and tag lengths.
pub const NONCE_LEN: usize = 12;
pub const TAG_LEN: usize = 16;

#[cfg(not(feature = "pure-rust-cipher"))]
pub use aws_lc::Cipher;
#[cfg(feature = "pure-rust-cipher")]
pub use rust_crypto::Cipher;

/// Which implementation this build seals with, for logs and benchmarks.
pub const IMPLEMENTATION: &str = if cfg!(feature = "pure-rust-cipher") {
    "aes-gcm-siv (pure Rust)"
} else {
    "AWS-LC"
};

/// Why an operation failed: only what the caller may say (no detail about keys or data).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Failure {
    /// Lengths the cipher refuses (beyond RFC 8452's limits).
    Length,
    /// The tag does not match: the output is zeroed.
    Authentication,
}

#[cfg(not(feature = "pure-rust-cipher"))]
mod aws_lc {
    use aws_lc_rs::aead::{AES_256_GCM_SIV, Aad, LessSafeKey, Nonce, UnboundKey};

    use super::{Failure, NONCE_LEN, TAG_LEN};

    /// AWS-LC's context holds the expanded key; freeing it (on drop) wipes it, as AWS-LC's
    /// allocator clears every allocation it frees.
    pub struct Cipher(LessSafeKey);

    impl Cipher {
        pub fn new(key: &[u8; 32]) -> Cipher {
            let key = UnboundKey::new(&AES_256_GCM_SIV, key)
                .expect("AES-256-GCM-SIV takes a 32-byte key");
            Cipher(LessSafeKey::new(key))
        }

        /// Encrypts `plaintext` into `ciphertext` (same length) and its tag into `tag`, straight
        /// from the caller's buffer (no copy first).
        pub fn seal(
            &self,
            nonce: &[u8; NONCE_LEN],
            aad: &[u8],
            plaintext: &[u8],
            ciphertext: &mut [u8],
            tag: &mut [u8; TAG_LEN],
        ) -> Result<(), Failure> {
            self.0
                .seal_out_of_place_scatter(
                    Nonce::assume_unique_for_key(*nonce),
                    Aad::from(aad),
                    plaintext,
                    ciphertext,
                    &[],
                    tag,
                )
                .map_err(|_| Failure::Length)
        }

        /// Decrypts `ciphertext` into `plaintext` (same length) if `tag` matches.
        pub fn open(
            &self,
            nonce: &[u8; NONCE_LEN],
            aad: &[u8],
            ciphertext: &[u8],
            tag: &[u8; TAG_LEN],
            plaintext: &mut [u8],
        ) -> Result<(), Failure> {
            self.0
                .open_separate_gather(
                    Nonce::assume_unique_for_key(*nonce),
                    Aad::from(aad),
                    ciphertext,
                    tag,
                    plaintext,
                )
                .map_err(|_| Failure::Authentication)
        }
    }
}

#[cfg(any(feature = "pure-rust-cipher", test))]
mod rust_crypto {
    use aes_gcm_siv::Aes256GcmSiv;
    use aes_gcm_siv::aead::{AeadInOut, KeyInit, inout::InOutBuf};

    use super::{Failure, NONCE_LEN, TAG_LEN};

    /// The key schedule is wiped on drop (the `aes` crate's `zeroize` feature).
    pub struct Cipher(Aes256GcmSiv);

    impl Cipher {
        pub fn new(key: &[u8; 32]) -> Cipher {
            Cipher(Aes256GcmSiv::new(key.into()))
        }

        pub fn seal(
            &self,
            nonce: &[u8; NONCE_LEN],
            aad: &[u8],
            plaintext: &[u8],
            ciphertext: &mut [u8],
            tag: &mut [u8; TAG_LEN],
        ) -> Result<(), Failure> {
            let buf = InOutBuf::new(plaintext, ciphertext).map_err(|_| Failure::Length)?;
            let sealed = self
                .0
                .encrypt_inout_detached(nonce.into(), aad, buf)
                .map_err(|_| Failure::Length)?;
            tag.copy_from_slice(&sealed);
            Ok(())
        }

        pub fn open(
            &self,
            nonce: &[u8; NONCE_LEN],
            aad: &[u8],
            ciphertext: &[u8],
            tag: &[u8; TAG_LEN],
            plaintext: &mut [u8],
        ) -> Result<(), Failure> {
            let buf = InOutBuf::new(ciphertext, plaintext).map_err(|_| Failure::Length)?;
            self.0
                .decrypt_inout_detached(nonce.into(), aad, buf, tag.into())
                .map_err(|_| Failure::Authentication)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// RFC 8452, appendix C.2 (AEAD_AES_256_GCM_SIV), the first vector with a message and
    /// associated data: key 01 00.., nonce 03 00.., AAD 01, plaintext 02 00.. (8 bytes).
    #[test]
    fn rfc_8452_vector() {
        let mut key = [0u8; 32];
        key[0] = 1;
        let mut nonce = [0u8; NONCE_LEN];
        nonce[0] = 3;
        let mut plain = [0u8; 8];
        plain[0] = 2;
        let mut ct = [0u8; 8];
        let mut tag = [0u8; TAG_LEN];
        Cipher::new(&key)
            .seal(&nonce, &[1], &plain, &mut ct, &mut tag)
            .unwrap();
        let hex = |b: &[u8]| b.iter().map(|x| format!("{x:02x}")).collect::<String>();
        assert_eq!(hex(&ct), "1de22967237a8132");
        assert_eq!(hex(&tag), "91213f267e3b452f02d01ae33e4ec854");
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]
        /// The build's implementation and the pure-Rust crate give the same bytes and open
        /// each other's, for any key, nonce, associated data and length (block sizes too).
        #[test]
        fn same_bytes_as_the_pure_rust_crate(
            key in any::<[u8; 32]>(),
            nonce in any::<[u8; NONCE_LEN]>(),
            aad in proptest::collection::vec(any::<u8>(), 0..64),
            len in prop_oneof![0usize..300, Just(4096usize), Just(65536usize)],
            seed in any::<u8>(),
        ) {
            let plain: Vec<u8> = (0..len).map(|i| (i as u8).wrapping_mul(31) ^ seed).collect();
            let ours = Cipher::new(&key);
            let oracle = rust_crypto::Cipher::new(&key);
            let mut ct_ours = vec![0u8; len];
            let mut ct_oracle = vec![0u8; len];
            let (mut tag_ours, mut tag_oracle) = ([0u8; TAG_LEN], [0u8; TAG_LEN]);
            ours.seal(&nonce, &aad, &plain, &mut ct_ours, &mut tag_ours).unwrap();
            oracle.seal(&nonce, &aad, &plain, &mut ct_oracle, &mut tag_oracle).unwrap();
            prop_assert_eq!(&ct_ours, &ct_oracle);
            prop_assert_eq!(tag_ours, tag_oracle);
            let mut back = vec![0u8; len];
            oracle.open(&nonce, &aad, &ct_ours, &tag_ours, &mut back).unwrap();
            prop_assert_eq!(&back, &plain);
            back.fill(0);
            ours.open(&nonce, &aad, &ct_oracle, &tag_oracle, &mut back).unwrap();
            prop_assert_eq!(&back, &plain);
            let mut bad = tag_ours;
            bad[(seed % 16) as usize] ^= 1;
            prop_assert_eq!(
                ours.open(&nonce, &aad, &ct_ours, &bad, &mut back),
                Err(Failure::Authentication)
            );
        }
    }
}
