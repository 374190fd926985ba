//! KEK rotation: a new KEK version sealed into the config under the volume secret, current at
//! once, also for running mounts (they reread the config when it changes). Rotation touches
//! only the config: file data and headers stay as they are until `rewrap` moves them.

use std::fs::File;
use std::os::fd::AsFd;
use std::path::Path;

use super::census::census;
use crate::format::config::VolumeConfig;
use crate::keys::VolumeKeys;
use crate::volume::headers::HeaderStore;
use crate::volume::{Result, Volume, VolumeError, lock_config, write_config};

/// What a rotation did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rotated {
    pub previous: u32,
    pub current: u32,
}

/// Adds KEK version n+1 and makes it current. `keys` are the volume's, from any keyslot.
pub fn rotate(cipher_dir: &Path, keys: &VolumeKeys) -> Result<Rotated> {
    let _lock = lock_config(cipher_dir)?;
    let mut config = Volume::read_config(cipher_dir)?;
    keys.apply_config(&config)?;
    let previous = config.current_kek;
    let current = next_kek_version(&config, keys)?;
    config.keks.push(keys.seal_new_kek(current)?);
    config.current_kek = current;
    commit(cipher_dir, keys, config)?;
    Ok(Rotated { previous, current })
}

/// Retires KEK `version`: no header may use it any more (the caller has checked), and it is
/// not current. Its sealed copy leaves the config; readers refuse it from then on.
pub fn retire_kek(
    cipher_dir: &Path,
    keys: &VolumeKeys,
    backing: &crate::volume::backing::Backing,
    version: u32,
) -> Result<()> {
    // No rewrap may be moving headers meanwhile, on any host.
    let _no_rewrap = crate::coord::maintenance::lock_rewrap(cipher_dir)?;
    let _lock = lock_config(cipher_dir)?;
    let mut config = Volume::read_config(cipher_dir)?;
    keys.apply_config(&config)?;
    if version == config.current_kek {
        return Err(VolumeError::Usage(format!(
            "KEK version {version} is current; rotate first, then rewrap, then retire it"
        )));
    }
    if !keys.kek_versions().contains(&version) {
        return Err(VolumeError::Usage(format!(
            "KEK version {version} is not in use by this volume (in use: {})",
            list(&keys.kek_versions())
        )));
    }
    // A live mount, on any host, may not have followed the rotation yet: its next file would
    // be wrapped under the KEK being retired, and be unreadable. Mounts say in their records
    // within seconds (volume::follow): wait that long, then refuse.
    // First, so that the census below also sees what they made meanwhile.
    let root = File::open(cipher_dir)?;
    let deadline = std::time::Instant::now() + FOLLOW_WAIT;
    while let Some(why) = mount_using(&root, backing, version) {
        if std::time::Instant::now() >= deadline {
            return Err(VolumeError::Usage(why));
        }
        std::thread::sleep(std::time::Duration::from_millis(250));
    }
    // Rewrap has moved every header off this version; a second look, under the config lock,
    // makes sure no header still needs it before it is refused for good.
    let in_use = census(&HeaderStore::open(File::open(cipher_dir)?)?)?;
    if let Some(count) = in_use.by_kek.get(&version) {
        return Err(VolumeError::Usage(format!(
            "KEK version {version} still wraps {count} file key(s); run `sealfs rewrap` first"
        )));
    }
    if in_use.unreadable > 0 {
        return Err(VolumeError::Usage(format!(
            "{} header(s) do not parse, so whether they need KEK version {version} is unknown; run `sealfs fsck` first",
            in_use.unreadable
        )));
    }
    config.keks.retain(|k| k.version != version);
    config.retired_keks.push(version);
    config.retired_keks.sort_unstable();
    commit(cipher_dir, keys, config)
}

/// How long a KEK's retirement waits for live mounts to follow the rotation away from it.
const FOLLOW_WAIT: std::time::Duration = std::time::Duration::from_secs(15);

/// Why a live mount may still wrap new files under KEK `version`, if one may.
fn mount_using(
    root: &File,
    backing: &crate::volume::backing::Backing,
    version: u32,
) -> Option<String> {
    crate::coord::claim::live_holders(root.as_fd(), backing.lock_kind())
        .into_iter()
        .find_map(|holder| match holder.kek {
            Some(kek) if kek != version => None,
            Some(_) => Some(format!(
                "the mount on {holder} still wraps new files under KEK version {version}; retire it once that mount has followed the rotation (within seconds) or is unmounted"
            )),
            None => Some(format!(
                "the mount on {holder} has not said which KEK it uses (an older sealfs?): retire KEK version {version} once it is unmounted"
            )),
        })
}

fn next_kek_version(config: &VolumeConfig, keys: &VolumeKeys) -> Result<u32> {
    let highest = keys
        .current_keyring()
        .keks
        .keys()
        .copied()
        .chain([config.highest_named_kek()])
        .max()
        .unwrap_or(1);
    highest
        .checked_add(1)
        .ok_or_else(|| VolumeError::Usage("no KEK version left".into()))
}

fn commit(cipher_dir: &Path, keys: &VolumeKeys, mut config: VolumeConfig) -> Result<()> {
    config.format_version = config.required_version();
    keys.seal_config(&mut config);
    config.validate()?;
    keys.apply_config(&config)?;
    write_config(cipher_dir, &config)
}

pub fn list(versions: &[u32]) -> String {
    versions
        .iter()
        .map(|v| v.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}
