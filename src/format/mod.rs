//! On-disk types and their encode/decode. Pure: no I/O and no keys held; docs/FORMAT.md
//! describes every byte produced here.

pub mod audit;
pub mod block;
pub mod config;
pub mod header;
pub mod holes;
pub mod keyring;
pub mod link;
pub mod name;
pub mod policy;
pub mod undo;

use thiserror::Error;

// Each encoding carries its own version (config, header, data file), so one can change
// without the others; docs/FORMAT.md lists them.

/// A volume or file identifier: 16 random bytes, immutable for the object's life.
pub type Id = [u8; 16];

#[derive(Clone, Debug, Error, PartialEq, Eq)]
pub enum FormatError {
    #[error("bad magic bytes in {0}")]
    BadMagic(&'static str),
    #[error(
        "{what} is format version {found}, newer than this sealfs supports ({supported}); upgrade sealfs"
    )]
    TooNew {
        what: &'static str,
        found: u32,
        supported: u32,
    },
    #[error("{0} is truncated")]
    Truncated(&'static str),
    #[error("{0} has trailing bytes")]
    Trailing(&'static str),
    #[error("invalid {0}")]
    Invalid(&'static str),
}

/// A bounds-checked reader over a byte slice, so every decoder fails cleanly on short input.
pub(crate) struct Reader<'a> {
    bytes: &'a [u8],
    what: &'static str,
}

impl<'a> Reader<'a> {
    pub(crate) fn new(bytes: &'a [u8], what: &'static str) -> Self {
        Reader { bytes, what }
    }

    pub(crate) fn take(&mut self, n: usize) -> Result<&'a [u8], FormatError> {
        if self.bytes.len() < n {
            return Err(FormatError::Truncated(self.what));
        }
        let (head, tail) = self.bytes.split_at(n);
        self.bytes = tail;
        Ok(head)
    }

    pub(crate) fn array<const N: usize>(&mut self) -> Result<[u8; N], FormatError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }

    pub(crate) fn u8(&mut self) -> Result<u8, FormatError> {
        Ok(self.take(1)?[0])
    }

    pub(crate) fn u16(&mut self) -> Result<u16, FormatError> {
        Ok(u16::from_be_bytes(self.array()?))
    }

    pub(crate) fn u32(&mut self) -> Result<u32, FormatError> {
        Ok(u32::from_be_bytes(self.array()?))
    }

    /// Everything not read yet.
    pub(crate) fn rest(self) -> &'a [u8] {
        self.bytes
    }

    pub(crate) fn finish(self) -> Result<(), FormatError> {
        if self.bytes.is_empty() {
            Ok(())
        } else {
            Err(FormatError::Trailing(self.what))
        }
    }
}

/// The body of a small sidecar framed as `magic (7) || version (u8) || id (16) || body`: the
/// long symlink target and hole map sidecars. A version other than `version` is refused by
/// name, and so is an id other than `id` (a sidecar copied from another object).
pub(crate) fn decode_framed<'a>(
    bytes: &'a [u8],
    magic: &[u8; 7],
    version: u8,
    id: &Id,
    what: &'static str,
) -> Result<&'a [u8], FormatError> {
    let mut r = Reader::new(bytes, what);
    if r.take(7)? != magic {
        return Err(FormatError::BadMagic(what));
    }
    let found = r.u8()?;
    if found != version {
        return Err(FormatError::TooNew {
            what,
            found: found.into(),
            supported: version.into(),
        });
    }
    if &r.array::<16>()? != id {
        return Err(FormatError::Invalid(what));
    }
    Ok(r.rest())
}

/// `decode_framed`'s inverse.
pub(crate) fn encode_framed(magic: &[u8; 7], version: u8, id: &Id, body: &[u8]) -> Vec<u8> {
    [&magic[..], &[version], &id[..], body].concat()
}

pub fn id_to_hex(id: &Id) -> String {
    hex(id)
}

pub fn id_from_hex(text: &str) -> Result<Id, FormatError> {
    if text.len() != 32 || !text.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(FormatError::Invalid("identifier"));
    }
    let mut id = [0u8; 16];
    for (i, byte) in id.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&text[2 * i..2 * i + 2], 16)
            .map_err(|_| FormatError::Invalid("identifier"))?;
    }
    Ok(id)
}

/// Lowercase hex.
pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// 32 bytes from 64 lowercase or uppercase hex digits.
pub(crate) fn hex32(text: &str) -> Option<[u8; 32]> {
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

    #[test]
    fn id_hex_round_trip_and_rejects_garbage() {
        let id: Id = [0x01, 0xab, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff];
        assert_eq!(id_from_hex(&id_to_hex(&id)).unwrap(), id);
        assert!(id_from_hex("zz").is_err());
        assert!(id_from_hex(&"g".repeat(32)).is_err());
        assert!(id_from_hex("+1000000000000000000000000000000").is_err());
    }
}
