//! How encrypted names sit in the backing directory: padded, sealed deterministically,
//! base64url without padding; names whose encoding exceeds 255 bytes are stored under a
//! hash with a sidecar file holding the full encoding.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;

use super::FormatError;

pub const NAME_PAD: usize = 16;
pub const MAX_PLAIN_NAME: usize = 255;
pub const MAX_BACKING_NAME: usize = 255;
/// Every name sealfs itself keeps in the cipher dir starts with this; base64url never
/// produces a '.', so no encrypted name can collide with one.
pub const RESERVED_PREFIX: &str = "sealfs.";
pub const LONG_PREFIX: &str = "sealfs.long.";
pub const LONG_NAME_SUFFIX: &str = ".name";
/// A hard bound on sidecar size when reading hostile input.
pub const MAX_LONG_ENCODING: usize = 1024;

pub const NAME_AAD: &[u8] = b"sealfs.name.v1";
pub const SYMLINK_AAD: &[u8] = b"sealfs.symlink.v1";
pub const XATTR_NAME_AAD: &[u8] = b"sealfs.xattr-name.v1";
/// Names written since 2026-12-07: the namespace as one byte, not its text (so 1,000 small
/// attributes' backing names fit the 64 KiB a listing can hold).
pub const XATTR_NAME_V2_AAD: &[u8] = b"sealfs.xattr-name.v2";
/// The namespaces a version 2 xattr name codes as its first byte.
const XATTR_NAMESPACES: [(u8, &[u8]); 2] = [(1, b"user."), (2, b"system.")];

/// The plaintext a version 2 xattr name seals: the namespace's code, then the rest of the
/// name. None for a name of another namespace.
pub fn compact_xattr_name(full: &[u8]) -> Option<Vec<u8>> {
    XATTR_NAMESPACES.iter().find_map(|(code, prefix)| {
        let rest = full.strip_prefix(*prefix)?;
        Some([&[*code][..], rest].concat())
    })
}

/// The full name a version 2 plaintext stands for.
pub fn expand_xattr_name(compact: &[u8]) -> Option<Vec<u8>> {
    let (code, rest) = compact.split_first()?;
    let (_, prefix) = XATTR_NAMESPACES.iter().find(|(c, _)| c == code)?;
    Some([*prefix, rest].concat())
}
pub const XATTR_VALUE_AAD: &[u8] = b"sealfs.xattr-value.v1";
/// A value whose sealed form outgrows one backing attribute (more than
/// [`MAX_BACKING_XATTR_VALUE`] bytes) is sealed under this label and split over two.
pub const XATTR_SPLIT_VALUE_AAD: &[u8] = b"sealfs.xattr-value.v2";
/// The most a Linux extended attribute value holds (XATTR_SIZE_MAX).
pub const MAX_BACKING_XATTR_VALUE: usize = 65_536;
/// The most a listing of an inode's attribute names holds (XATTR_LIST_MAX).
pub const MAX_BACKING_XATTR_LIST: usize = 65_536;
/// The length of a tail's name: the prefix and 43 characters of base64url.
pub const XATTR_TAIL_NAME_LEN: usize = XATTR_TAIL_PREFIX.len() + 43;
/// The tail of a split value: `user.sealfs.tail.` + base64url(blake3(backing name || the
/// head's nonce)). A '.' after `user.` is never in a sealed name.
pub const XATTR_TAIL_PREFIX: &[u8] = b"user.sealfs.tail.";

/// The backing attribute holding the rest of the split value whose head (its first
/// [`MAX_BACKING_XATTR_VALUE`] bytes, a sealed object) is stored under `backing_name`.
/// Named after the head's nonce, so a value written anew never writes over the tail the
/// value it replaces still needs.
pub fn xattr_tail_name(backing_name: &[u8], head: &[u8]) -> Vec<u8> {
    let nonce = &head[..head.len().min(crate::crypto::NONCE_LEN)];
    let hash = blake3::Hasher::new()
        .update(backing_name)
        .update(nonce)
        .finalize();
    let mut out = XATTR_TAIL_PREFIX.to_vec();
    out.extend_from_slice(B64URL.encode(hash.as_bytes()).as_bytes());
    out
}

/// Where an encrypted name lives in its backing directory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BackingName {
    Short(String),
    /// `hashed` is the directory entry; `full` goes into the sidecar `hashed + ".name"`.
    Long {
        hashed: String,
        full: String,
    },
}

impl BackingName {
    pub fn from_sealed(sealed: &[u8]) -> Self {
        let full = B64URL.encode(sealed);
        if full.len() <= MAX_BACKING_NAME {
            BackingName::Short(full)
        } else {
            BackingName::Long {
                hashed: long_entry_name(&full),
                full,
            }
        }
    }

    pub fn entry(&self) -> &str {
        match self {
            BackingName::Short(name) => name,
            BackingName::Long { hashed, .. } => hashed,
        }
    }

    pub fn sidecar(&self) -> Option<String> {
        match self {
            BackingName::Short(_) => None,
            BackingName::Long { hashed, .. } => Some(format!("{hashed}{LONG_NAME_SUFFIX}")),
        }
    }
}

pub fn long_entry_name(full: &str) -> String {
    format!(
        "{LONG_PREFIX}{}",
        B64URL.encode(blake3::hash(full.as_bytes()).as_bytes())
    )
}

/// What a backing directory entry is, judged by its name alone.
#[derive(Debug, PartialEq, Eq)]
pub enum EntryKind<'a> {
    Encrypted(&'a str),
    Long(&'a str),
    /// sealfs's own files (config, headers, long-name sidecars): never shown.
    Internal,
}

pub fn classify_entry(name: &str) -> EntryKind<'_> {
    if let Some(rest) = name.strip_prefix(RESERVED_PREFIX) {
        if name.starts_with(LONG_PREFIX) && !rest.ends_with(LONG_NAME_SUFFIX) {
            return EntryKind::Long(name);
        }
        return EntryKind::Internal;
    }
    EntryKind::Encrypted(name)
}

pub fn decode_b64(text: &str, what: &'static str) -> Result<Vec<u8>, FormatError> {
    B64URL.decode(text).map_err(|_| FormatError::Invalid(what))
}

pub fn encode_b64(bytes: &[u8]) -> String {
    B64URL.encode(bytes)
}

/// Pads to a multiple of NAME_PAD (1..=16 pad bytes, each equal to the pad length) so that
/// ciphertext length reveals only the name's length class.
pub fn pad(name: &[u8]) -> Vec<u8> {
    let pad = NAME_PAD - name.len() % NAME_PAD;
    let mut out = Vec::with_capacity(name.len() + pad);
    out.extend_from_slice(name);
    out.resize(name.len() + pad, pad as u8);
    out
}

pub fn unpad(padded: &[u8]) -> Result<&[u8], FormatError> {
    let bad = FormatError::Invalid("name padding");
    let &last = padded.last().ok_or(bad.clone())?;
    let pad = last as usize;
    if pad == 0 || pad > NAME_PAD || pad > padded.len() || !padded.len().is_multiple_of(NAME_PAD) {
        return Err(bad);
    }
    let (name, padding) = padded.split_at(padded.len() - pad);
    if padding.iter().any(|&b| b != last) {
        return Err(bad);
    }
    Ok(name)
}

/// Plaintext length of a symlink target from the length of its backing encoding alone, so
/// getattr never has to read (and touch the atime of) the backing symlink.
pub fn symlink_plain_len(encoded_len: u64) -> u64 {
    let sealed = encoded_len * 3 / 4;
    sealed.saturating_sub(crate::crypto::SEAL_OVERHEAD as u64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn classify() {
        assert_eq!(classify_entry("sealfs.conf"), EntryKind::Internal);
        assert_eq!(classify_entry("sealfs.headers"), EntryKind::Internal);
        assert_eq!(
            classify_entry("sealfs.long.abc"),
            EntryKind::Long("sealfs.long.abc")
        );
        assert_eq!(classify_entry("sealfs.long.abc.name"), EntryKind::Internal);
        assert_eq!(classify_entry("QUJD"), EntryKind::Encrypted("QUJD"));
    }

    #[test]
    fn long_names_get_short_entries() {
        let short = BackingName::from_sealed(&[1; 100]);
        assert!(matches!(short, BackingName::Short(_)));
        assert_eq!(short.sidecar(), None);
        let long = BackingName::from_sealed(&[1; 272]);
        assert!(long.entry().len() <= MAX_BACKING_NAME);
        assert!(long.entry().starts_with(LONG_PREFIX));
        assert!(long.sidecar().unwrap().ends_with(LONG_NAME_SUFFIX));
    }

    #[test]
    fn symlink_length_formula() {
        for len in [0usize, 1, 15, 16, 100, 3000] {
            let sealed = len + crate::crypto::SEAL_OVERHEAD;
            let encoded = encode_b64(&vec![0; sealed]).len() as u64;
            assert_eq!(symlink_plain_len(encoded), len as u64);
        }
    }

    proptest! {
        #[test]
        fn pad_round_trip(name in proptest::collection::vec(any::<u8>(), 0..300)) {
            let padded = pad(&name);
            prop_assert_eq!(padded.len() % NAME_PAD, 0);
            prop_assert_eq!(unpad(&padded).unwrap(), &name[..]);
        }

        #[test]
        fn unpad_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = unpad(&bytes);
        }
    }
}
