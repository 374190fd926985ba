//! What a support engineer asks first about a volume, read without any key: the config is
//! plaintext JSON and header slots name their KEK version in the clear.

use std::fs::File;
use std::path::Path;

use serde::Serialize;

use super::census::{HeaderCensus, census};
use crate::format::config::KeyMode;
use crate::volume::headers::HeaderStore;
use crate::volume::{Result, Volume};

#[derive(Debug, Serialize)]
pub struct VolumeInfo {
    pub path: String,
    pub volume_id: String,
    pub format_version: u32,
    pub block_size: u32,
    pub cipher: String,
    pub key_mode: KeyMode,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub file_key_slot: Option<u32>,
    pub current_kek: u32,
    /// KEK versions added by rotation (version 1 and any in the keyring are not listed here).
    pub rotated_keks: Vec<u32>,
    pub retired_keks: Vec<u32>,
    pub keyslots: Vec<SlotInfo>,
    /// Key policies (tenants), each with the key that seals its secret.
    pub policies: Vec<PolicyInfo>,
    /// Ids of removed (or shredded) policies.
    pub retired_policies: Vec<u32>,
    /// A reverse volume (plaintext dir, encrypted view): its headers exist only in the view.
    pub reverse: bool,
    /// The backing filesystem and the fallbacks sealfs uses on it (not probed for a reverse
    /// volume: its directory is the user's plaintext tree).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub backing: Option<crate::volume::backing::Backing>,
    pub files: HeaderCensus,
}

#[derive(Debug, Serialize)]
pub struct PolicyInfo {
    pub id: u32,
    pub label: String,
    pub provider: &'static str,
    pub detail: String,
}

#[derive(Debug, Serialize)]
pub struct SlotInfo {
    pub id: u32,
    pub provider: &'static str,
    pub detail: String,
}

pub fn info(cipher_dir: &Path) -> Result<VolumeInfo> {
    let config = Volume::read_config(cipher_dir)?;
    let reverse = crate::volume::is_reverse(cipher_dir);
    let (files, backing) = if reverse {
        (HeaderCensus::default(), None)
    } else {
        let dir = File::open(cipher_dir)?;
        let backing = crate::volume::backing::probe(std::os::fd::AsFd::as_fd(&dir));
        (census(&HeaderStore::open(dir)?)?, Some(backing))
    };
    Ok(VolumeInfo {
        path: cipher_dir.display().to_string(),
        volume_id: config.volume_id.clone(),
        format_version: config.format_version,
        block_size: config.block_size,
        cipher: config.cipher.clone(),
        key_mode: config.key_mode,
        file_key_slot: config.file_key_slot,
        current_kek: config.current_kek,
        rotated_keks: config.keks.iter().map(|k| k.version).collect(),
        retired_keks: config.retired_keks.clone(),
        keyslots: config
            .keyslots
            .iter()
            .map(|s| SlotInfo {
                id: s.id,
                provider: s.provider.kind(),
                detail: s.provider.detail(),
            })
            .collect(),
        policies: config
            .policies
            .iter()
            .map(|p| PolicyInfo {
                id: p.id,
                label: p.label.clone(),
                provider: p.slot.provider.kind(),
                detail: p.slot.provider.detail(),
            })
            .collect(),
        retired_policies: config.retired_policies.clone(),
        reverse,
        backing,
        files,
    })
}
