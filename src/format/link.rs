//! Long symlink targets (symlink target encoding version 2): a target whose inline encoding
//! (base64url of the sealed target, version 1) would not fit the kernel's 4,095-byte limit is
//! sealed into a sidecar file `sealfs.links/<hh>/<32 hex>`, and the backing symlink points at
//! `sealfs.link.<32 hex link id>.<4 decimal digits: the plaintext length>`.
//!
//! That backing target is always 49 bytes long, a length no inline encoding has (unpadded
//! base64url is never 1 more than a multiple of 4), so a symlink's `st_size` alone says which
//! form it is, and the inline form's length formula stays exact.

use super::{FormatError, Id, decode_framed, encode_framed, id_from_hex, id_to_hex};

pub const LINKS_DIR: &str = "sealfs.links";
pub const LONG_TARGET_PREFIX: &str = "sealfs.link.";
/// `sealfs.link.` (12) + 32 hex digits + `.` + 4 digits.
pub const LONG_TARGET_LEN: u64 = 49;
/// The longest target the kernel passes (PATH_MAX less its NUL).
pub const MAX_TARGET: usize = 4095;

const MAGIC: &[u8; 7] = b"SEALLNK";
const VERSION: u8 = 1;
/// Magic, version, link id.
pub const SIDECAR_PREAMBLE: usize = 7 + 1 + 16;
const AAD_PREFIX: &[u8] = b"sealfs.symlink.v2";

/// A long target as its backing symlink names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LongTarget {
    pub link_id: Id,
    /// Plaintext length of the target.
    pub len: u16,
}

impl LongTarget {
    pub fn encode(&self) -> String {
        format!(
            "{LONG_TARGET_PREFIX}{}.{:04}",
            id_to_hex(&self.link_id),
            self.len
        )
    }

    /// `None` for anything that is not a long target (an inline encoding never starts with
    /// `sealfs.`, base64url having no `.`).
    pub fn decode(backing: &[u8]) -> Option<LongTarget> {
        let text = std::str::from_utf8(backing).ok()?;
        if text.len() as u64 != LONG_TARGET_LEN {
            return None;
        }
        let rest = text.strip_prefix(LONG_TARGET_PREFIX)?;
        let (hex, len) = rest.split_once('.')?;
        if len.len() != 4 || !len.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let link_id = id_from_hex(hex).ok()?;
        if id_to_hex(&link_id) != hex {
            return None; // one spelling per id
        }
        let len: u16 = len.parse().ok()?;
        (1..=MAX_TARGET as u16)
            .contains(&len)
            .then_some(LongTarget { link_id, len })
    }

    /// `hh/<32 hex>`, relative to `sealfs.links`.
    pub fn sidecar_path(&self) -> String {
        format!("{:02x}/{}", self.link_id[0], id_to_hex(&self.link_id))
    }

    /// The associated data the target is sealed with: it binds the sealed target to this
    /// link id, so a sidecar copied over another's name does not open.
    pub fn aad(&self) -> Vec<u8> {
        [AAD_PREFIX, &self.link_id[..]].concat()
    }
}

/// The sidecar's bytes: magic, version, link id, then the sealed target.
pub fn encode_sidecar(link_id: &Id, sealed: &[u8]) -> Vec<u8> {
    encode_framed(MAGIC, VERSION, link_id, sealed)
}

/// The sealed target a sidecar holds, checked to belong to `link_id`.
pub fn decode_sidecar<'a>(bytes: &'a [u8], link_id: &Id) -> Result<&'a [u8], FormatError> {
    decode_framed(bytes, MAGIC, VERSION, link_id, "symlink target sidecar")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::name::encode_b64;
    use proptest::prelude::*;

    #[test]
    fn long_targets_round_trip_at_their_fixed_length() {
        let t = LongTarget {
            link_id: [0xab; 16],
            len: 4095,
        };
        let enc = t.encode();
        assert_eq!(enc.len() as u64, LONG_TARGET_LEN);
        assert_eq!(LongTarget::decode(enc.as_bytes()), Some(t));
        assert_eq!(t.sidecar_path(), format!("ab/{}", "ab".repeat(16)));
        for bad in [
            enc.replace("4095", "4096"),
            enc.replace("4095", "0000"),
            enc.replace("ab", "AB"),
            enc.replace("4095", "40x5"),
            format!("{enc}0"),
        ] {
            assert_eq!(LongTarget::decode(bad.as_bytes()), None, "{bad}");
        }
    }

    #[test]
    fn sidecars_name_their_link() {
        let bytes = encode_sidecar(&[3; 16], b"sealed");
        assert_eq!(decode_sidecar(&bytes, &[3; 16]).unwrap(), b"sealed");
        assert!(decode_sidecar(&bytes, &[4; 16]).is_err());
        let mut newer = bytes.clone();
        newer[7] = 2;
        assert!(matches!(
            decode_sidecar(&newer, &[3; 16]),
            Err(FormatError::TooNew { found: 2, .. })
        ));
        assert!(decode_sidecar(&bytes[..20], &[3; 16]).is_err());
    }

    proptest! {
        /// No inline (version 1) encoding has the long form's length, so `st_size` tells them
        /// apart.
        #[test]
        fn no_inline_encoding_has_the_long_length(sealed_len in 28usize..3100) {
            prop_assert_ne!(encode_b64(&vec![0; sealed_len]).len() as u64, LONG_TARGET_LEN);
        }

        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..60)) {
            let _ = LongTarget::decode(&bytes);
            let _ = decode_sidecar(&bytes, &[0; 16]);
        }
    }
}
