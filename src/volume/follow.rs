//! Following the config while it changes under a running volume: a rotation or a KEK's
//! retirement, by a command on this host or another, rewrites `sealfs.conf`, and every open
//! volume applies the new keyring before its next create or cold open (and mounts also look
//! every few seconds, so that their mount records say which KEK they use: `coord::claim`).

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use nix::fcntl::{AtFlags, OFlag, openat};
use nix::sys::stat::Mode;

use super::{Result, Volume};
use crate::coord::claim::RecordUpdater;
use crate::format::config::CONFIG_FILE;
use crate::keys::{Tenants, VolumeKeys};

/// Inode, change time and size of `sealfs.conf`: every rewrite (temp + rename) changes them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct ConfigStamp {
    ino: u64,
    ctime_sec: i64,
    ctime_nsec: i64,
    size: i64,
}

pub struct ConfigFollower {
    path: PathBuf,
    root: OwnedFd,
    keys: Arc<VolumeKeys>,
    tenants: Arc<Tenants>,
    /// What `sealfs.conf` looked like when its KEKs were last applied. None at first: the
    /// first look rereads it, so a rotation that landed while the volume was being unlocked is
    /// not missed.
    seen: Mutex<Option<ConfigStamp>>,
}

impl ConfigFollower {
    pub fn new(
        cipher_dir: &Path,
        root: BorrowedFd<'_>,
        keys: Arc<VolumeKeys>,
        tenants: Arc<Tenants>,
    ) -> Result<Self> {
        let root = openat(
            root,
            ".",
            OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )?;
        Ok(ConfigFollower {
            path: cipher_dir.to_path_buf(),
            root,
            keys,
            tenants,
            seen: Mutex::new(None),
        })
    }

    /// Applies a config rewritten since the last look: one fstatat per call, a reread only
    /// when the file changed. A config that does not verify is logged and ignored; the keys
    /// in use stay.
    pub fn follow(&self) {
        let Ok(stamp) = config_stamp(self.root.as_fd()) else {
            return;
        };
        let mut seen = crate::sync::lock(&self.seen);
        if *seen == Some(stamp) {
            return;
        }
        let reload = seen.is_some();
        *seen = Some(stamp);
        let applied = Volume::read_config(&self.path).and_then(|config| {
            self.keys.apply_config(&config)?;
            self.tenants.apply_config(&config);
            self.tenants.markers_may_have_changed();
            Ok(())
        });
        let metrics = crate::metrics::global();
        metrics
            .kek_version
            .store(u64::from(self.keys.current_kek()), Ordering::Relaxed);
        match applied {
            Ok(()) if reload => {
                metrics.config_reloads.fetch_add(1, Ordering::Relaxed);
                tracing::info!(
                    current_kek = self.keys.current_kek(),
                    "volume config changed; new files use KEK version {}",
                    self.keys.current_kek()
                )
            }
            Ok(()) => tracing::info!(
                current_kek = self.keys.current_kek(),
                "volume config changed; new files use KEK version {}",
                self.keys.current_kek()
            ),
            Err(e) => tracing::error!(
                "volume config changed but cannot be used, keeping the keys in use: {e}"
            ),
        }
    }

    /// The KEK version new files are wrapped under now.
    pub fn current_kek(&self) -> u32 {
        self.keys.current_kek()
    }
}

fn config_stamp(root: BorrowedFd<'_>) -> Result<ConfigStamp> {
    let st = nix::sys::stat::fstatat(root, CONFIG_FILE, AtFlags::AT_SYMLINK_NOFOLLOW)?;
    Ok(ConfigStamp {
        ino: st.st_ino,
        ctime_sec: st.st_ctime,
        ctime_nsec: st.st_ctime_nsec,
        size: st.st_size,
    })
}

/// How often a mount looks at the config on its own (creates and cold opens look too).
const LOOK_EVERY: std::time::Duration = std::time::Duration::from_secs(2);

/// For a mount's life: follows the config every `LOOK_EVERY`, and says in the mount's record
/// (`record`) which KEK it wraps new files under, once that KEK has been current here for a
/// whole period, so that a create which picked the KEK before it changed has landed its header
/// by then. `sealfs rewrap --retire-kek` checks the records (`rotate::retire_kek`).
pub fn spawn_reporting(follower: Arc<ConfigFollower>, mut record: RecordUpdater) {
    let mut noted = follower.current_kek();
    if let Err(e) = record.note_kek(noted) {
        tracing::warn!(error = %e, "could not note the KEK in use in the mount record");
    }
    let spawned = std::thread::Builder::new()
        .name("sealfs-config".into())
        .spawn(move || {
            let mut seen = noted;
            loop {
                std::thread::sleep(LOOK_EVERY);
                follower.follow();
                let now = follower.current_kek();
                if now == seen && now != noted {
                    match record.note_kek(now) {
                        Ok(()) => noted = now,
                        Err(e) => tracing::warn!(error = %e, "could not update the mount record"),
                    }
                }
                seen = now;
            }
        });
    if let Err(e) = spawned {
        tracing::warn!(error = %e, "could not start following the config");
    }
}
