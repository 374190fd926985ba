//! Sealing and opening one block. The normal build is AES-256-GCM-SIV through `Sealer`; the
//! `bench-identity-codec` feature swaps in a copy with the same layout, for the benchmark's
//! no-crypto passthrough only. That feature is never enabled in a shipped build (the binary
//! warns loudly at mount if it is), and no volume option selects it.

use crate::crypto::{CryptoError, NONCE_LEN, Sealer};

#[cfg(not(feature = "bench-identity-codec"))]
pub fn seal_block(
    sealer: &Sealer,
    nonce: &[u8; NONCE_LEN],
    aad: &[u8],
    plain: &[u8],
    out: &mut [u8],
) -> Result<(), CryptoError> {
    sealer.seal_into_with_nonce(nonce, aad, plain, out)
}

#[cfg(not(feature = "bench-identity-codec"))]
pub fn open_block(
    sealer: &Sealer,
    aad: &[u8],
    sealed: &[u8],
    out: &mut [u8],
) -> Result<(), CryptoError> {
    sealer.open_into(aad, sealed, out)
}

#[cfg(feature = "bench-identity-codec")]
pub fn seal_block(
    _sealer: &Sealer,
    _nonce: &[u8; NONCE_LEN],
    _aad: &[u8],
    plain: &[u8],
    out: &mut [u8],
) -> Result<(), CryptoError> {
    // Non-zero filler, so the block is not mistaken for a hole.
    out[..NONCE_LEN].fill(1);
    out[NONCE_LEN..NONCE_LEN + plain.len()].copy_from_slice(plain);
    Ok(())
}

#[cfg(feature = "bench-identity-codec")]
pub fn open_block(
    _sealer: &Sealer,
    _aad: &[u8],
    sealed: &[u8],
    out: &mut [u8],
) -> Result<(), CryptoError> {
    out.copy_from_slice(&sealed[NONCE_LEN..NONCE_LEN + out.len()]);
    Ok(())
}

/// True in the benchmark-only build whose blocks are not encrypted.
pub const IDENTITY_CODEC: bool = cfg!(feature = "bench-identity-codec");
