//! The sidecar header of a data file: its file id, a commitment to its data key, and one or
//! more keyslots each holding the data key wrapped under some key-encryption key.

use super::{FormatError, Id, Reader};

pub const HEADER_MAGIC: &[u8; 7] = b"SEALHDR";
/// The newest header version this build reads. Version 1 holds only KEK-wrapped slots;
/// version 2 adds slots wrapped directly by a master key (per-file key mode); version 3 adds
/// slots wrapped under a tenant KEK (key policies). A header is written with the lowest
/// version that can hold its slots.
pub const HEADER_VERSION: u8 = 3;
pub const MAX_SLOTS: usize = 8;
/// Larger than any wrap a provider produces today (KMS blobs run to a few hundred bytes).
pub const MAX_WRAPPED_LEN: usize = 4096;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum SlotKind {
    /// The data key sealed under a version of the volume KEK.
    VolumeKek = 1,
    /// The data key wrapped directly by the master key of a volume keyslot (KMS blob, or an
    /// HSM's iv || ciphertext || tag); `key_version` is that keyslot's id. Header version 2.
    MasterKey = 2,
    /// The data key sealed under the KEK of key policy `key_version` (derived from that
    /// tenant's secret). Header version 3.
    TenantKek = 3,
}

impl SlotKind {
    /// The header version that introduced this kind of slot.
    fn min_version(self) -> u8 {
        match self {
            SlotKind::VolumeKek => 1,
            SlotKind::MasterKey => 2,
            SlotKind::TenantKek => 3,
        }
    }
}

impl SlotKind {
    fn from_byte(byte: u8) -> Result<Self, FormatError> {
        match byte {
            1 => Ok(SlotKind::VolumeKek),
            2 => Ok(SlotKind::MasterKey),
            3 => Ok(SlotKind::TenantKek),
            _ => Err(FormatError::Invalid("header keyslot kind")),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HeaderSlot {
    pub kind: SlotKind,
    /// For `VolumeKek`, the KEK version that wrapped this slot; for `MasterKey`, the keyslot;
    /// for `TenantKek`, the policy id.
    pub key_version: u32,
    pub wrapped: Vec<u8>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileHeader {
    pub file_id: Id,
    /// blake3 derive_key(KeyCommitment, data key || volume id || file id): pins the one data key
    /// this header may yield, whichever slot unwraps it.
    pub commitment: [u8; 32],
    pub slots: Vec<HeaderSlot>,
}

impl FileHeader {
    pub fn encode(&self) -> Result<Vec<u8>, FormatError> {
        if self.slots.is_empty() || self.slots.len() > MAX_SLOTS {
            return Err(FormatError::Invalid("header keyslot count"));
        }
        let mut out = Vec::with_capacity(64 + self.slots.len() * 70);
        out.extend_from_slice(HEADER_MAGIC);
        out.push(self.version());
        out.extend_from_slice(&self.file_id);
        out.extend_from_slice(&self.commitment);
        out.push(self.slots.len() as u8);
        for slot in &self.slots {
            if slot.wrapped.len() > MAX_WRAPPED_LEN {
                return Err(FormatError::Invalid("header keyslot length"));
            }
            out.push(slot.kind as u8);
            out.extend_from_slice(&slot.key_version.to_be_bytes());
            out.extend_from_slice(&(slot.wrapped.len() as u16).to_be_bytes());
            out.extend_from_slice(&slot.wrapped);
        }
        Ok(out)
    }

    /// The lowest version that can hold these slots.
    pub fn version(&self) -> u8 {
        self.slots
            .iter()
            .map(|s| s.kind.min_version())
            .max()
            .unwrap_or(1)
    }

    /// The key policy this file belongs to: the policy of its tenant-KEK slot, or 0 (the
    /// volume's keys).
    pub fn policy(&self) -> u32 {
        self.slots
            .iter()
            .find(|s| s.kind == SlotKind::TenantKek)
            .map_or(crate::format::policy::VOLUME_POLICY, |s| s.key_version)
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, FormatError> {
        let mut r = Reader::new(bytes, "file header");
        if r.take(7)? != HEADER_MAGIC {
            return Err(FormatError::BadMagic("file header"));
        }
        let version = r.u8()?;
        if version == 0 || version > HEADER_VERSION {
            return Err(FormatError::TooNew {
                what: "file header",
                found: version.into(),
                supported: HEADER_VERSION.into(),
            });
        }
        let file_id = r.array()?;
        let commitment = r.array()?;
        let count = r.u8()? as usize;
        if count == 0 || count > MAX_SLOTS {
            return Err(FormatError::Invalid("header keyslot count"));
        }
        let mut slots = Vec::with_capacity(count);
        for _ in 0..count {
            let kind = SlotKind::from_byte(r.u8()?)?;
            if kind.min_version() > version {
                return Err(FormatError::Invalid("header keyslot kind for its version"));
            }
            let key_version = r.u32()?;
            let len = r.u16()? as usize;
            if len > MAX_WRAPPED_LEN {
                return Err(FormatError::Invalid("header keyslot length"));
            }
            let wrapped = r.take(len)?.to_vec();
            slots.push(HeaderSlot {
                kind,
                key_version,
                wrapped,
            });
        }
        r.finish()?;
        let header = FileHeader {
            file_id,
            commitment,
            slots,
        };
        // One encoding per header: a version-2 header must need version 2 (found by fuzzing:
        // a v2 header of KEK slots only decoded, and re-encoded as v1).
        if header.version() != version {
            return Err(FormatError::Invalid("header version for its keyslots"));
        }
        Ok(header)
    }
}

/// The context a master key binds to a file's data key in per-file mode: as name/value pairs
/// (KMS encryption context) and as fixed-size bytes (PKCS#11 GCM associated data).
pub fn file_key_context(volume_id: &Id, file_id: &Id) -> (Vec<(String, String)>, Vec<u8>) {
    let pairs = vec![
        (
            "sealfs:volume-id".to_string(),
            crate::format::id_to_hex(volume_id),
        ),
        (
            "sealfs:file-id".to_string(),
            crate::format::id_to_hex(file_id),
        ),
        ("sealfs:purpose".to_string(), "file-key".to_string()),
    ];
    let mut aad = b"sealfs.file-key.v1".to_vec();
    aad.extend_from_slice(volume_id);
    aad.extend_from_slice(file_id);
    (pairs, aad)
}

/// Associated data for wrapping a data key under the KEK of key policy `policy`: binds the
/// wrap to this volume, this file and this tenant.
pub fn tenant_wrap_aad(volume_id: &Id, file_id: &Id, policy: u32) -> Vec<u8> {
    let mut aad = Vec::with_capacity(57);
    aad.extend_from_slice(b"sealfs.tenant-wrap.v1");
    aad.extend_from_slice(volume_id);
    aad.extend_from_slice(file_id);
    aad.extend_from_slice(&policy.to_be_bytes());
    aad
}

/// Associated data for wrapping a data key under KEK version `kek_version`: binds the wrap to
/// this volume and this file, never to a path.
pub fn wrap_aad(volume_id: &Id, file_id: &Id, kek_version: u32) -> Vec<u8> {
    let mut aad = Vec::with_capacity(50);
    aad.extend_from_slice(b"sealfs.wrap.v1");
    aad.extend_from_slice(volume_id);
    aad.extend_from_slice(file_id);
    aad.extend_from_slice(&kek_version.to_be_bytes());
    aad
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sample() -> FileHeader {
        FileHeader {
            file_id: [3; 16],
            commitment: [4; 32],
            slots: vec![HeaderSlot {
                kind: SlotKind::VolumeKek,
                key_version: 1,
                wrapped: vec![5; 60],
            }],
        }
    }

    #[test]
    fn round_trip() {
        let h = sample();
        assert_eq!(FileHeader::decode(&h.encode().unwrap()).unwrap(), h);
    }

    #[test]
    fn structural_bit_flips_rejected() {
        // Flips in the magic, version, slot count, kind and length fields must fail to parse;
        // flips in ids, commitment and wrapped bytes are caught cryptographically (volume tests).
        let bytes = sample().encode().unwrap();
        let structural = (0..8).chain([56, 57, 62, 63]);
        for byte in structural {
            for bit in 0..8 {
                let mut bad = bytes.clone();
                bad[byte] ^= 1 << bit;
                assert!(FileHeader::decode(&bad).is_err(), "byte {byte} bit {bit}");
            }
        }
    }

    #[test]
    fn truncation_and_trailing_rejected() {
        let bytes = sample().encode().unwrap();
        for len in 0..bytes.len() {
            assert!(FileHeader::decode(&bytes[..len]).is_err());
        }
        let mut long = bytes.clone();
        long.push(0);
        assert_eq!(
            FileHeader::decode(&long),
            Err(FormatError::Trailing("file header"))
        );
    }

    #[test]
    fn master_key_slots_need_version_2() {
        let mut h = sample();
        assert_eq!(h.encode().unwrap()[7], 1, "KEK-only headers stay version 1");
        h.slots[0].kind = SlotKind::MasterKey;
        let mut bytes = h.encode().unwrap();
        assert_eq!(bytes[7], 2);
        assert_eq!(FileHeader::decode(&bytes).unwrap(), h);
        bytes[7] = 1;
        assert!(FileHeader::decode(&bytes).is_err());
    }

    #[test]
    fn tenant_slots_need_version_3() {
        let mut h = sample();
        h.slots[0].kind = SlotKind::TenantKek;
        h.slots[0].key_version = 5;
        let mut bytes = h.encode().unwrap();
        assert_eq!(bytes[7], 3);
        assert_eq!(FileHeader::decode(&bytes).unwrap(), h);
        assert_eq!(h.policy(), 5);
        assert_eq!(sample().policy(), 0);
        bytes[7] = 2;
        assert!(FileHeader::decode(&bytes).is_err());
    }

    #[test]
    fn one_encoding_per_header() {
        // Found by cargo fuzz: a version-2 header of KEK slots only re-encoded as version 1.
        let mut bytes = sample().encode().unwrap();
        bytes[7] = 2;
        assert_eq!(
            FileHeader::decode(&bytes),
            Err(FormatError::Invalid("header version for its keyslots"))
        );
    }

    #[test]
    fn newer_version_named_in_error() {
        let mut bytes = sample().encode().unwrap();
        bytes[7] = 9;
        assert!(matches!(
            FileHeader::decode(&bytes),
            Err(FormatError::TooNew { found: 9, .. })
        ));
    }

    proptest! {
        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = FileHeader::decode(&bytes);
        }

        #[test]
        fn arbitrary_headers_round_trip(
            id in any::<[u8; 16]>(),
            versions in proptest::collection::vec(any::<u32>(), 1..=MAX_SLOTS),
            blob in proptest::collection::vec(any::<u8>(), 0..200),
        ) {
            let h = FileHeader {
                file_id: id,
                commitment: [1; 32],
                slots: versions.iter().map(|v| HeaderSlot {
                    kind: SlotKind::VolumeKek, key_version: *v, wrapped: blob.clone(),
                }).collect(),
            };
            prop_assert_eq!(FileHeader::decode(&h.encode().unwrap()).unwrap(), h);
        }
    }
}
