//! The files that exist only in the view: `sealfs.conf` (a copy of the reverse config,
//! followed when it is rewritten), `sealfs.headers` (one deterministic header per regular
//! file, listed from an index of the tree) and the `.name` sidecars of long names.

use std::collections::BTreeSet;
use std::fs::File;
use std::os::fd::{AsFd, BorrowedFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use fuser::FileType;
use nix::fcntl::{AtFlags, OFlag};
use nix::sys::stat::{FileStat, fstat, fstatat};

use super::ReverseView;
use crate::format::Id;
use crate::format::config::{REVERSE_CONFIG_FILE, VolumeConfig};
use crate::format::name::BackingName;
use crate::reverse::keys::identity;
use crate::volume::names::encrypt_name;
use crate::volume::{Result, VolumeError};

/// The header index is rebuilt when `sealfs.headers` is opened (a backup run starts), and
/// when older than this while its subdirectories are listed.
pub(super) const INDEX_MAX_AGE: Duration = Duration::from_secs(60);
/// A lookup of a header the index does not hold rebuilds it, at most this often.
const INDEX_MISS_REFRESH: Duration = Duration::from_secs(1);

pub(super) struct ConfigCopy {
    pub bytes: Arc<Vec<u8>>,
    pub stat: FileStat,
}

#[derive(Default)]
pub(super) struct HeaderIndex {
    ids: BTreeSet<Id>,
    built: Option<Instant>,
}

fn same_stamp(a: &FileStat, b: &FileStat) -> bool {
    (
        a.st_ino,
        a.st_size,
        a.st_mtime,
        a.st_mtime_nsec,
        a.st_ctime,
        a.st_ctime_nsec,
    ) == (
        b.st_ino,
        b.st_size,
        b.st_mtime,
        b.st_mtime_nsec,
        b.st_ctime,
        b.st_ctime_nsec,
    )
}

impl ReverseView {
    /// The config as the view shows it; a rewrite (rotation, key add) is picked up, its MAC
    /// checked, and its KEKs applied, so headers follow the current KEK.
    pub(super) fn sidecar_bytes(&self, path: &Path) -> Result<Vec<u8>> {
        let name = path.file_name().ok_or(VolumeError::NotFound)?;
        match encrypt_name(&self.volume_keys().names, name)? {
            BackingName::Long { full, .. } => Ok(full.into_bytes()),
            BackingName::Short(_) => Err(VolumeError::NotFound),
        }
    }

    pub(super) fn config_copy(&self) -> ConfigView {
        let mut config = crate::sync::lock(&self.config);
        let fresh = fstatat(
            self.root.as_fd(),
            REVERSE_CONFIG_FILE,
            AtFlags::AT_SYMLINK_NOFOLLOW,
        );
        if let Ok(stat) = fresh
            && !same_stamp(&stat, &config.stat)
        {
            match read_config(self.root.as_fd()).and_then(|(bytes, stat)| {
                let parsed = VolumeConfig::parse(&bytes)?;
                self.keys.volume.apply_config(&parsed)?;
                Ok((bytes, stat))
            }) {
                Ok((bytes, stat)) => {
                    *config = ConfigCopy {
                        bytes: Arc::new(bytes),
                        stat,
                    }
                }
                Err(e) => {
                    tracing::error!(error = %e, "the reverse config changed and cannot be used; keeping the previous one")
                }
            }
        }
        ConfigView {
            bytes: config.bytes.clone(),
            stat: config.stat,
        }
    }

    pub(super) fn index_has(&self, test: impl Fn(&BTreeSet<Id>) -> bool) -> bool {
        if let Ok(ids) = self.index_ids(INDEX_MAX_AGE)
            && test(&ids)
        {
            return true;
        }
        self.index_ids(INDEX_MISS_REFRESH)
            .map(|ids| test(&ids))
            .unwrap_or(false)
    }

    /// The ids of every regular file in the view, from an index at most `max_age` old.
    pub(super) fn index_ids(&self, max_age: Duration) -> Result<BTreeSet<Id>> {
        let mut index = crate::sync::lock(&self.index);
        let fresh = index.built.is_some_and(|t| t.elapsed() < max_age) && !max_age.is_zero();
        if !fresh {
            self.config_copy();
            let started = Instant::now();
            index.ids = self.build_index()?;
            index.built = Some(Instant::now());
            tracing::debug!(files = index.ids.len(), elapsed = ?started.elapsed(), "header index rebuilt");
        }
        Ok(index.ids.clone())
    }

    /// Walks the tree as the view shows it and derives each regular file's id.
    pub(super) fn build_index(&self) -> Result<BTreeSet<Id>> {
        let mut ids = BTreeSet::new();
        let mut pending = vec![PathBuf::new()];
        while let Some(dir) = pending.pop() {
            let entries = match self.list_plain(&dir) {
                Ok(entries) => entries,
                Err(e) => {
                    tracing::warn!(dir = ?dir, error = %e, "cannot list a directory for the header index");
                    continue;
                }
            };
            for (name, kind, _) in entries {
                let path = dir.join(&name);
                match kind {
                    FileType::Directory => pending.push(path),
                    FileType::RegularFile => match self.stat_plain(&path) {
                        Ok(stat) => {
                            ids.insert(self.keys.file_id(&identity(&path, &stat)));
                        }
                        Err(e) => {
                            tracing::debug!(file = ?path, error = %e, "vanished while indexing")
                        }
                    },
                    _ => {}
                }
            }
        }
        Ok(ids)
    }
}

pub(super) struct ConfigView {
    pub bytes: Arc<Vec<u8>>,
    pub stat: FileStat,
}

pub(super) fn read_config(root: BorrowedFd<'_>) -> Result<(Vec<u8>, FileStat)> {
    let fd = nix::fcntl::openat(
        root,
        REVERSE_CONFIG_FILE,
        OFlag::O_RDONLY | OFlag::O_CLOEXEC | OFlag::O_NOFOLLOW,
        nix::sys::stat::Mode::empty(),
    )
    .map_err(|e| VolumeError::Usage(format!("cannot read {REVERSE_CONFIG_FILE}: {e}")))?;
    let file = File::from(fd);
    let stat = fstat(&file)?;
    Ok((crate::volume::read_config_bytes(&file)?, stat))
}
