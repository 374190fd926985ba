//! Which key wraps a file's data key, by key mode: the current volume KEK (volume mode), or
//! the master key of the volume's file-key slot, drawing from a pre-generated pool (per-file
//! mode). Either way every header carries a commitment to its one data key.

use std::sync::Arc;
use std::time::Duration;

use super::pool::{KeyPool, Pregenerated};
use super::{
    DataKeyMaterial, FileKeyContext, HeaderKeys, KeyError, MasterKeyProvider, Tenants, VolumeKeys,
};
use crate::crypto::{SecretKey, random_array};
use crate::format::header::{FileHeader, HeaderSlot, SlotKind};
use crate::format::id_to_hex;

/// Pre-generated per-file keys kept ready.
const POOL_TARGET: usize = 16;

struct PerFile {
    provider: Arc<dyn MasterKeyProvider>,
    slot_id: u32,
    pool: KeyPool,
}

pub struct FileKeys {
    volume: Arc<VolumeKeys>,
    per_file: Option<PerFile>,
    /// Key policies: files created under one get their data key wrapped by its tenant KEK.
    tenants: Arc<Tenants>,
}

impl FileKeys {
    pub fn volume_mode(volume: Arc<VolumeKeys>) -> Self {
        FileKeys {
            tenants: Arc::new(Tenants::new(*volume.volume_id(), Duration::MAX)),
            volume,
            per_file: None,
        }
    }

    /// These file keys with the volume's key policies.
    pub fn with_tenants(mut self, tenants: Arc<Tenants>) -> Self {
        self.tenants = tenants;
        self
    }

    /// Per-file mode with `provider`, the master key of keyslot `slot_id`.
    pub fn per_file(
        volume: Arc<VolumeKeys>,
        provider: Arc<dyn MasterKeyProvider>,
        slot_id: u32,
    ) -> Self {
        let (generator, volume_id) = (provider.clone(), *volume.volume_id());
        let pool = KeyPool::new(
            POOL_TARGET,
            Box::new(move || {
                let file_id = random_array()?;
                let (data_key, wrapped) =
                    generator.generate_file_key(&FileKeyContext { volume_id, file_id })?;
                Ok(Pregenerated {
                    file_id,
                    data_key,
                    wrapped,
                })
            }),
        );
        FileKeys {
            tenants: Arc::new(Tenants::new(*volume.volume_id(), Duration::MAX)),
            volume,
            per_file: Some(PerFile {
                provider,
                slot_id,
                pool,
            }),
        }
    }

    pub fn volume(&self) -> &VolumeKeys {
        &self.volume
    }

    fn open_slot(
        &self,
        header: &FileHeader,
        slot: &HeaderSlot,
    ) -> Option<Result<SecretKey, KeyError>> {
        let fail = |reason: String| KeyError::Header {
            file: id_to_hex(&header.file_id),
            reason,
        };
        match slot.kind {
            SlotKind::VolumeKek => self
                .volume
                .unwrap_kek_slot(&header.file_id, slot)
                .map(|r| r.map_err(|reason| fail(reason.into()))),
            SlotKind::MasterKey => {
                let per_file = self
                    .per_file
                    .as_ref()
                    .filter(|p| p.slot_id == slot.key_version);
                let Some(per_file) = per_file else {
                    return Some(Err(fail(format!(
                        "its key is wrapped by keyslot {}, which this mount cannot reach",
                        slot.key_version
                    ))));
                };
                let context = FileKeyContext {
                    volume_id: *self.volume.volume_id(),
                    file_id: header.file_id,
                };
                Some(per_file.provider.unwrap_file_key(&context, &slot.wrapped))
            }
            SlotKind::TenantKek => Some(self.tenants.keys(slot.key_version).and_then(|tenant| {
                tenant
                    .unwrap(self.volume.volume_id(), &header.file_id, slot)
                    .map_err(|reason| fail(reason.into()))
            })),
        }
    }
}

impl FileKeys {
    /// Per-file mode: the header with its master-key slot wrapped afresh by the file-key slot's
    /// master key (KMS ReEncrypt), checked to still hold the committed data key. None for a
    /// header with no slot of that keyslot, or in volume mode.
    pub fn reencrypt_header(&self, header: &FileHeader) -> Result<Option<FileHeader>, KeyError> {
        let Some(per_file) = &self.per_file else {
            return Ok(None);
        };
        let is_ours =
            |s: &HeaderSlot| s.kind == SlotKind::MasterKey && s.key_version == per_file.slot_id;
        if !header.slots.iter().any(is_ours) {
            return Ok(None);
        }
        let context = FileKeyContext {
            volume_id: *self.volume.volume_id(),
            file_id: header.file_id,
        };
        let mut new = header.clone();
        for slot in new.slots.iter_mut().filter(|s| is_ours(s)) {
            slot.wrapped = per_file.provider.rewrap_file_key(&context, &slot.wrapped)?;
        }
        // The new wrap must yield the committed key before it replaces the old one.
        self.data_key(&new)?;
        Ok(Some(new))
    }

    /// The header re-wrapped under the current KEK, or None when it already is (every slot of
    /// kind KEK at the current version) or when its key is held by a master key (per-file mode
    /// headers stay under their keyslot). The data key, and so the file data, stay the same.
    pub fn rewrap_header(&self, header: &FileHeader) -> Result<Option<FileHeader>, KeyError> {
        let current = self.volume.current_kek();
        let kek_slots = || {
            header
                .slots
                .iter()
                .filter(|s| s.kind == SlotKind::VolumeKek)
        };
        if kek_slots().next().is_none() || kek_slots().all(|s| s.key_version == current) {
            return Ok(None);
        }
        let data_key = self.data_key(header)?;
        let mut slots: Vec<HeaderSlot> = header
            .slots
            .iter()
            .filter(|s| s.kind != SlotKind::VolumeKek)
            .cloned()
            .collect();
        slots.insert(0, self.volume.wrap_under_kek(&header.file_id, &data_key)?);
        Ok(Some(self.volume.header_for(
            &header.file_id,
            &data_key,
            slots,
        )))
    }

    /// The header with its data key wrapped under key policy `policy`'s tenant KEK instead
    /// (a file whose directory was put under the policy), or None when it already is. The
    /// data key, and so the file data, stay the same.
    pub fn rewrap_to_policy(
        &self,
        header: &FileHeader,
        policy: u32,
    ) -> Result<Option<FileHeader>, KeyError> {
        if header.policy() == policy {
            return Ok(None);
        }
        let data_key = self.data_key(header)?;
        let tenant = self.tenants.keys(policy)?;
        let slot = tenant.wrap(self.volume.volume_id(), &header.file_id, &data_key)?;
        Ok(Some(self.volume.header_for(
            &header.file_id,
            &data_key,
            vec![slot],
        )))
    }

    /// The data key a header holds, checked against its commitment.
    fn data_key(&self, header: &FileHeader) -> Result<SecretKey, KeyError> {
        let mut last_error = KeyError::Header {
            file: id_to_hex(&header.file_id),
            reason: "no keyslot is wrapped under a key this volume holds".into(),
        };
        for slot in &header.slots {
            match self.open_slot(header, slot) {
                None => continue,
                Some(Err(e)) => last_error = e,
                Some(Ok(data_key)) => {
                    if !self.volume.check_commitment(header, &data_key) {
                        return Err(KeyError::Header {
                            file: id_to_hex(&header.file_id),
                            reason: "key commitment mismatch".into(),
                        });
                    }
                    return Ok(data_key);
                }
            }
        }
        Err(last_error)
    }
}

impl FileKeys {
    /// A new file's id, data key and header under key policy `policy` (0: the key mode's
    /// usual way). A tenant's file key is wrapped under the tenant KEK, in either key mode.
    pub fn new_header_in(&self, policy: u32) -> Result<(FileHeader, DataKeyMaterial), KeyError> {
        if policy == crate::format::policy::VOLUME_POLICY {
            return self.new_header();
        }
        let tenant = self.tenants.keys(policy)?;
        let file_id = random_array()?;
        let data_key = SecretKey::generate()?;
        let slot = tenant.wrap(self.volume.volume_id(), &file_id, &data_key)?;
        let header = self.volume.header_for(&file_id, &data_key, vec![slot]);
        let mut material = DataKeyMaterial::from_data_key(&data_key, &file_id);
        material.policy = policy;
        Ok((header, material))
    }
}

impl HeaderKeys for FileKeys {
    fn new_header(&self) -> Result<(FileHeader, DataKeyMaterial), KeyError> {
        let (file_id, data_key, slot) = match &self.per_file {
            None => {
                let file_id = random_array()?;
                let data_key = SecretKey::generate()?;
                let slot = self.volume.wrap_under_kek(&file_id, &data_key)?;
                (file_id, data_key, slot)
            }
            Some(per_file) => {
                let key = per_file.pool.take()?;
                let slot = HeaderSlot {
                    kind: SlotKind::MasterKey,
                    key_version: per_file.slot_id,
                    wrapped: key.wrapped,
                };
                (key.file_id, key.data_key, slot)
            }
        };
        let header = self.volume.header_for(&file_id, &data_key, vec![slot]);
        Ok((header, DataKeyMaterial::from_data_key(&data_key, &file_id)))
    }

    fn open_header(&self, header: &FileHeader) -> Result<DataKeyMaterial, KeyError> {
        let data_key = self.data_key(header)?;
        let mut material = DataKeyMaterial::from_data_key(&data_key, &header.file_id);
        material.policy = header.policy();
        Ok(material)
    }
}
