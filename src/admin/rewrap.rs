//! Rewrap: every header whose data key is wrapped under an older KEK is re-wrapped under the
//! current one. Only headers change (file data never moves), crash-safely: a batch of new
//! headers is written beside the old ones, made durable with one syncfs, then each is swapped
//! in with an atomic exchange (or, where the backing store has none, a rename over a header
//! checked to be there); an interrupted rewrap is simply run again, skipping what is current.
//! A mounted volume may be rewrapped: open files keep their cached keys, and a file deleted
//! meanwhile keeps its header deleted.

use std::sync::Mutex;

use rayon::prelude::*;
use serde::Serialize;

use super::progress::Progress;
use crate::volume::{Result, Volume};

use crate::format::{Id, id_to_hex};

#[derive(Debug, Default, Serialize)]
pub struct RewrapReport {
    /// Headers visited.
    pub headers: u64,
    /// Headers re-wrapped under the current KEK.
    pub rewrapped: u64,
    /// Headers already current (or held by a master key, in per-file mode).
    pub current: u64,
    /// Headers whose file was deleted during the walk.
    pub gone: u64,
    /// Headers that could not be read or opened: fsck's business; they are left alone.
    pub failed: Vec<RewrapFailure>,
    pub kek: u32,
    /// Entries moved under a key policy set on a directory that held them (names, targets,
    /// xattrs; their headers count as rewrapped).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub moved: Option<super::migrate::Moved>,
}

#[derive(Debug, Serialize)]
pub struct RewrapFailure {
    pub file_id: String,
    pub reason: String,
}

/// What to re-wrap.
#[derive(Clone, Copy, Debug, Default)]
pub struct RewrapOptions {
    /// Per-file mode: also wrap every file key afresh under the file-key slot's master key
    /// (KMS ReEncrypt, or unwrap and wrap on an HSM), e.g. after the KMS key rotated its
    /// backing key. One KMS or HSM call per file; a re-run does them all again.
    pub reencrypt: bool,
}

/// Headers staged per syncfs.
const BATCH: usize = 2048;

enum Staged {
    Ready,
    Current,
    Gone,
    Failed(String),
}

pub fn rewrap(
    volume: &Volume,
    options: RewrapOptions,
    progress: &dyn Progress,
) -> Result<RewrapReport> {
    // Shared with mounts; `fsck --repair` (exclusive) must not quarantine headers this run is
    // moving to a KEK it has not seen yet.
    let _no_repair = volume.headers.lock_shared().map_err(|_| {
        crate::volume::VolumeError::Usage("`sealfs fsck --repair` is running on this volume".into())
    })?;
    // One rewrap at a time, on every host: two would remove each other's staged headers.
    let _alone = crate::coord::maintenance::lock_rewrap(&volume.path)?;
    volume.follow_config();
    // A policy set on a directory that held entries: their names move first (no mount may
    // run meanwhile), then their headers with everyone else's.
    let pending = super::migrate::pending(&Volume::read_config(&volume.path)?);
    let _no_mounts = if pending.is_empty() {
        None
    } else {
        Some(super::migrate::claim_alone(volume, "rewrap")?)
    };
    let moved = super::migrate::move_names(volume)?;
    let listing = volume.headers.list()?;
    // A rewrap killed between its exchange and its unlink leaves the old header as `<id>.tmp`
    // beside the new one. Mounts write new headers in place (and older versions wrote
    // `<id>.tmp` only for an id with no header yet), so a temp file beside its header is such
    // a leftover and safe to remove.
    for temp in &listing.temps {
        let id = temp
            .rsplit('/')
            .next()
            .and_then(|n| n.strip_suffix(".tmp"))
            .and_then(|hex| crate::format::id_from_hex(hex).ok());
        if let Some(id) = id
            && volume.headers.exists(&id)
        {
            let _ = volume.headers.remove_listed(temp);
        }
    }
    let ids = listing.ids;
    progress.set_total(ids.len() as u64);
    let failed = Mutex::new(Vec::new());
    let fail = |id: &Id, reason: String| {
        tracing::error!(file = %id_to_hex(id), "rewrap: {reason}");
        crate::sync::lock(&failed).push(RewrapFailure {
            file_id: id_to_hex(id),
            reason,
        });
    };
    let (mut rewrapped, mut current, mut gone) = (0, 0, 0);
    for batch in ids.chunks(BATCH) {
        // Stage the new headers of a batch in parallel, make them durable with one syncfs,
        // then swap each into place.
        let staged: Vec<(&Id, Staged)> = batch
            .par_iter()
            .map(|id| {
                (
                    id,
                    stage_one(volume, id, options, moved.files.get(id).copied()),
                )
            })
            .collect();
        if staged.iter().any(|(_, s)| matches!(s, Staged::Ready)) {
            volume.headers.sync_staged()?;
        }
        let counts = staged
            .into_par_iter()
            .map(|(id, outcome)| match outcome {
                Staged::Ready => match volume.headers.commit_staged(id) {
                    Ok(true) => (1, 0, 0),
                    Ok(false) => (0, 0, 1),
                    Err(e) => {
                        fail(id, e.to_string());
                        (0, 0, 0)
                    }
                },
                Staged::Current => (0, 1, 0),
                Staged::Gone => (0, 0, 1),
                Staged::Failed(reason) => {
                    fail(id, reason);
                    (0, 0, 0)
                }
            })
            .reduce(|| (0, 0, 0), |a, b| (a.0 + b.0, a.1 + b.1, a.2 + b.2));
        rewrapped += counts.0;
        current += counts.1;
        gone += counts.2;
        progress.advance(batch.len() as u64);
    }
    volume.headers.sync_dirs()?;
    let failed = failed.into_inner().unwrap_or_else(|e| e.into_inner());
    // The move is done once every moved file's header has moved. A header failing that has
    // nothing to do with it, or an entry too damaged to move (fsck's business), does not keep
    // the volume from mounting.
    let moved_header_failed = failed.iter().any(|f| {
        crate::format::id_from_hex(&f.file_id).is_ok_and(|id| moved.files.contains_key(&id))
    });
    if !pending.is_empty() && !moved_header_failed {
        super::migrate::finish(volume)?;
    }
    Ok(RewrapReport {
        headers: ids.len() as u64,
        rewrapped,
        current,
        gone,
        failed,
        kek: volume.keys.current_kek(),
        moved: (!pending.is_empty()).then_some(moved),
    })
}

/// `into_policy`: the key policy this file moves under (its directory was put under it).
fn stage_one(volume: &Volume, id: &Id, options: RewrapOptions, into_policy: Option<u32>) -> Staged {
    let mut loaded = volume.headers.load(id);
    if loaded.is_err() && volume.headers.is_empty(id) {
        // A mount creating this file has made the header's name but not yet written it (it
        // is under the current KEK anyway): look again once it has had a moment.
        std::thread::sleep(std::time::Duration::from_millis(20));
        loaded = volume.headers.load(id);
    }
    let header = match loaded {
        Ok(header) => header,
        Err(e) if volume.headers.exists(id) => return Staged::Failed(e.to_string()),
        Err(_) => return Staged::Gone,
    };
    let rewrapped = if let Some(policy) = into_policy {
        volume.file_keys.rewrap_to_policy(&header, policy)
    } else if options.reencrypt {
        volume.file_keys.reencrypt_header(&header)
    } else {
        volume.file_keys.rewrap_header(&header)
    };
    match rewrapped {
        Ok(None) => Staged::Current,
        Ok(Some(new)) => match volume.headers.stage(&new) {
            Ok(()) => Staged::Ready,
            Err(e) => Staged::Failed(e.to_string()),
        },
        Err(e) => Staged::Failed(e.to_string()),
    }
}
