//! Rewrap: every header whose data key is wrapped under an older KEK is re-wrapped under the
//! current one. Only headers change (file data never moves), each crash-safely (temp, fsync,
//! atomic exchange), so an interrupted rewrap is simply run again: what is current is skipped.
//! A mounted volume may be rewrapped: open files keep their cached keys, and a file deleted
//! meanwhile keeps its header deleted.

use std::sync::Mutex;

use rayon::prelude::*;
use serde::Serialize;

use super::progress::Progress;
use super::{Result, Volume};
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
}

#[derive(Debug, Serialize)]
pub struct RewrapFailure {
    pub file_id: String,
    pub reason: String,
}

enum Outcome {
    Rewrapped,
    Current,
    Gone,
}

pub fn rewrap(volume: &Volume, progress: &dyn Progress) -> Result<RewrapReport> {
    volume.follow_config();
    let listing = volume.headers.list()?;
    // A rewrap killed between its exchange and its unlink leaves the old header as `<id>.tmp`
    // beside the new one. A mount only writes `<id>.tmp` for an id that has no header yet, so a
    // temp file beside its header is such a leftover and safe to remove.
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
    let (rewrapped, current, gone) = ids
        .par_iter()
        .map(|id| {
            let outcome = rewrap_one(volume, id);
            progress.advance(1);
            match outcome {
                Ok(Outcome::Rewrapped) => (1, 0, 0),
                Ok(Outcome::Current) => (0, 1, 0),
                Ok(Outcome::Gone) => (0, 0, 1),
                Err(reason) => {
                    tracing::error!(file = %id_to_hex(id), "rewrap: {reason}");
                    failed
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .push(RewrapFailure {
                            file_id: id_to_hex(id),
                            reason,
                        });
                    (0, 0, 0)
                }
            }
        })
        .reduce(|| (0, 0, 0), |a, b| (a.0 + b.0, a.1 + b.1, a.2 + b.2));
    volume.headers.sync_dirs()?;
    Ok(RewrapReport {
        headers: ids.len() as u64,
        rewrapped,
        current,
        gone,
        failed: failed.into_inner().unwrap_or_else(|e| e.into_inner()),
        kek: volume.keys.current_kek(),
    })
}

fn rewrap_one(volume: &Volume, id: &Id) -> std::result::Result<Outcome, String> {
    let header = match volume.headers.load(id) {
        Ok(header) => header,
        Err(e) if volume.headers.exists(id) => return Err(e.to_string()),
        Err(_) => return Ok(Outcome::Gone),
    };
    let Some(new) = volume
        .file_keys
        .rewrap_header(&header)
        .map_err(|e| e.to_string())?
    else {
        return Ok(Outcome::Current);
    };
    match volume.headers.replace(&new) {
        Ok(true) => Ok(Outcome::Rewrapped),
        Ok(false) => Ok(Outcome::Gone),
        Err(e) => Err(e.to_string()),
    }
}
