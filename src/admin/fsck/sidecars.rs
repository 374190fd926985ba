//! fsck of what lies beside the data files: hole maps, header temp files and strays in the
//! header directories, and the undo journals a crash left (`volume::undo`): which torn writes
//! they mend, which are leftovers, and the mending itself for `--repair`.

use std::fs::File;
use std::os::fd::AsFd;

use nix::fcntl::{OFlag, openat};
use nix::sys::stat::Mode;

use super::{Entry, Problem, ProblemKind, header_path};
use crate::format::{Id, id_to_hex};
use crate::io::DataFile;
use crate::volume::headers::{HEADERS_DIR, HOLES_SUFFIX, HeaderListing};
use crate::volume::hole_maps::Writers;
use crate::volume::undo::UNDO_DIR;
use crate::volume::{Result, Volume};

/// Leftovers and strays among the headers' sidecars and the undo journals.
pub(super) fn header_side_problems(
    volume: &Volume,
    listing: &HeaderListing,
) -> Result<Vec<Problem>> {
    let mut problems = Vec::new();
    for id in listing.holes.iter().filter(|id| !listing.ids.contains(id)) {
        problems.push(Problem::leftover(
            &format!("{}{HOLES_SUFFIX}", header_path(id)),
            "hole map without its header (its file is gone)",
        ));
    }
    for (id, _) in volume.undo.list()? {
        if !listing.ids.contains(&id) {
            problems.push(Problem::leftover(
                &format!("{UNDO_DIR}/{}", id_to_hex(&id)),
                "undo journal without its header (its file is gone)",
            ));
        }
    }
    for stray in volume.undo.strays()? {
        problems.push(Problem::new(
            ProblemKind::Stray,
            format!("{UNDO_DIR}/{stray}"),
            "not an undo journal; left alone",
        ));
    }
    for temp in &listing.temps {
        problems.push(Problem::leftover(
            &format!("{HEADERS_DIR}/{temp}"),
            "header write interrupted by a crash",
        ));
    }
    for stray in &listing.strays {
        problems.push(Problem::new(
            ProblemKind::Stray,
            format!("{HEADERS_DIR}/{stray}"),
            "not a header; left alone",
        ));
    }
    Ok(problems)
}

/// What mending a data file a crash left would do (`None`: nothing to mend, or no crash): its
/// undo journal's replay, or for a file written in the session a crash ended, the cut of its
/// torn unsynced tail (`volume::undo`).
pub(super) fn undo_plan(
    volume: &Volume,
    blocks: &DataFile<'_>,
    file_id: &Id,
) -> Result<Option<String>> {
    let changed = std::os::unix::fs::MetadataExt::ctime(&blocks.metadata()?);
    if !volume.undo.suspect(file_id, changed) {
        return Ok(None);
    }
    let plan = volume.undo.plan(blocks, file_id, &volume.layout)?;
    Ok((!plan.is_empty()).then(|| plan.describe(blocks.backing_len().unwrap_or(0))))
}

/// Replays the undo journal of a data file a crash left with a torn write, then removes it.
pub(super) fn mend_torn_write(volume: &Volume, entry: &Entry) -> Result<()> {
    let file = File::from(openat(
        volume.root.as_fd(),
        entry.backing_path().as_str(),
        OFlag::O_RDWR | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::empty(),
    )?);
    let preamble = crate::io::read_preamble(&file)?;
    let (file_id, material) = volume.open_data_file(&file)?;
    let holes = volume.file_holes(preamble.version, file_id, Writers::Sole);
    let blocks = volume.data_file(&file, &file_id, &material, holes.as_deref());
    volume.undo.mend(&blocks, &file_id, &volume.layout)?;
    if let Some(holes) = &holes {
        holes.flush(&crate::io::LedgerAccess {
            file: &file,
            file_id: &file_id,
            sealer: &material.content,
        })?;
    }
    volume.headers.sync(&file_id)?;
    volume.undo.mended(&file_id)
}
