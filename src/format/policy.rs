//! The marker of a key policy's directory: `sealfs.policy` in the backing directory, naming
//! the policy whose keys protect every name, symlink target, xattr and new file beneath it
//! (down to a deeper marker). The policy itself (its sealed tenant secret) lives in the config.

use super::{FormatError, Reader};

pub const POLICY_MARKER: &str = "sealfs.policy";
pub const MARKER_MAGIC: &[u8; 7] = b"SEALPOL";
pub const MARKER_VERSION: u8 = 1;
pub const MARKER_LEN: usize = 12;

/// No policy: the volume's own keys.
pub const VOLUME_POLICY: u32 = 0;

pub fn encode_marker(policy: u32) -> [u8; MARKER_LEN] {
    let mut out = [0u8; MARKER_LEN];
    out[..7].copy_from_slice(MARKER_MAGIC);
    out[7] = MARKER_VERSION;
    out[8..].copy_from_slice(&policy.to_be_bytes());
    out
}

pub fn decode_marker(bytes: &[u8]) -> Result<u32, FormatError> {
    let mut r = Reader::new(bytes, "policy marker");
    if r.take(7)? != MARKER_MAGIC {
        return Err(FormatError::BadMagic("policy marker"));
    }
    let version = r.u8()?;
    if version != MARKER_VERSION {
        return Err(FormatError::TooNew {
            what: "policy marker",
            found: version.into(),
            supported: MARKER_VERSION.into(),
        });
    }
    let policy = r.u32()?;
    r.finish()?;
    if policy == VOLUME_POLICY {
        return Err(FormatError::Invalid("policy marker (policy 0)"));
    }
    Ok(policy)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn round_trip_and_rejects() {
        assert_eq!(decode_marker(&encode_marker(7)).unwrap(), 7);
        assert!(decode_marker(&encode_marker(0)).is_err());
        let mut long = encode_marker(7).to_vec();
        long.push(0);
        assert!(decode_marker(&long).is_err());
        let mut bad = encode_marker(7);
        bad[0] ^= 1;
        assert!(decode_marker(&bad).is_err());
        bad = encode_marker(7);
        bad[7] = 2;
        assert!(matches!(
            decode_marker(&bad),
            Err(FormatError::TooNew { .. })
        ));
    }

    proptest! {
        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..32)) {
            let _ = decode_marker(&bytes);
        }
    }
}
