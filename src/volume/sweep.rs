//! After a crash, what creates and deletes cut short left behind, swept by the next lone,
//! writable mount in the background (`volume::undo` says how a crash is known): headers made
//! or left in the crashed session that no data file names (a create cut before its data file
//! was linked, a delete cut between its data file and its header), `sealfs.new.*` data files
//! of creates cut short, hole map temp files, and long-name sidecars whose entry was never
//! made (each removed under its directory's lock, which creates there take: a program
//! making the same name again meanwhile finds it or writes it anew). Nothing else is touched.
//!
//! A header is an orphan only if no data file anywhere carries its id, which takes a walk of
//! the whole cipher dir (data files keep the mtimes programs give them, so no time tells which
//! to read). The mount serves meanwhile; a rename or link it makes while the walk runs could
//! move a file from a directory not walked yet into one walked already, so then nothing is
//! removed (`UndoStore::entry_moved`). Only headers changed before this mount began and at or
//! after the crashed session began are candidates: this mount's own creates are never.

use std::collections::HashSet;
use std::fs::File;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use nix::fcntl::{AtFlags, OFlag, openat};
use nix::sys::stat::{Mode, SFlag, fstatat};
use nix::unistd::{UnlinkatFlags, unlinkat};

use super::error::Result;
use super::headers::HeaderStore;
use super::tree;
use crate::format::name::{EntryKind, LONG_NAME_SUFFIX, LONG_PREFIX, classify_entry};
use crate::format::{Id, id_to_hex};

/// What one sweep found and removed.
#[derive(Debug, Default)]
pub struct Swept {
    pub orphan_headers: usize,
    pub temp_files: usize,
    pub unused_sidecars: usize,
}

/// What a walk collects: file ids data files carry, crash-made temp files, and long-name
/// sidecars made in the crashed session without their entry (by directory).
struct Walk<'a> {
    seen: HashSet<Id>,
    temps: Vec<(OwnedFd, String)>,
    sidecars: Vec<(OwnedFd, String)>,
    in_crashed_session: &'a dyn Fn(i128) -> bool,
}

/// A ctime in nanoseconds since the Unix epoch.
pub(super) fn nanos(st: &nix::sys::stat::FileStat) -> i128 {
    i128::from(st.st_ctime) * 1_000_000_000 + i128::from(st.st_ctime_nsec)
}

/// What a sweep asks of the mount: how many renames and links it has made so far, and to
/// remove the undo journal of an orphan.
pub trait SweepHost {
    fn moves(&self) -> u64;
    fn remove_journal(&self, file_id: &Id) -> Result<()>;
}

/// Sweeps the cipher dir at `root` after a crash of the session that began at `since`; this
/// mount began at `now` (nanoseconds since the Unix epoch: a mount may follow a crash within
/// the second). `None`: a rename or link came during the walk, and nothing was removed.
pub fn sweep(
    root: BorrowedFd<'_>,
    headers: &HeaderStore,
    undo: &dyn SweepHost,
    (since, now): (i128, i128),
) -> Result<Option<Swept>> {
    let in_crashed_session = |ctime: i128| ctime >= since && ctime < now;
    let mut swept = Swept::default();
    let listing = headers.list()?;
    for temp in listing.temps.iter().filter(|t| t.contains(".holes.")) {
        let (sub, name) = temp.split_once('/').unwrap_or(("", temp));
        let dir = headers.subdir(sub)?;
        if fstatat(dir.as_fd(), name, AtFlags::AT_SYMLINK_NOFOLLOW)
            .is_ok_and(|st| in_crashed_session(nanos(&st)))
        {
            headers.remove_listed(temp)?;
            swept.temp_files += 1;
        }
    }
    let candidates: Vec<Id> = listing
        .ids
        .into_iter()
        .filter(|id| {
            headers
                .stat(id)
                .is_some_and(|st| in_crashed_session(nanos(&st)))
        })
        .collect();
    let moves = undo.moves();
    let mut found = Walk {
        seen: HashSet::new(),
        temps: Vec::new(),
        sidecars: Vec::new(),
        in_crashed_session: &in_crashed_session,
    };
    tree::walk(root, true, &mut found)?;
    if undo.moves() != moves {
        return Ok(None);
    }
    let Walk {
        seen,
        temps,
        sidecars,
        ..
    } = found;
    for (dir, sidecar) in sidecars {
        let _lock = crate::coord::maintenance::lock_directory(root, dir.as_fd(), true)?;
        if unused_sidecar(dir.as_fd(), &sidecar, &in_crashed_session) {
            match unlinkat(dir.as_fd(), sidecar.as_str(), UnlinkatFlags::NoRemoveDir) {
                Ok(()) | Err(nix::Error::ENOENT) => swept.unused_sidecars += 1,
                Err(e) => return Err(e.into()),
            }
        }
    }
    for (dir, name) in temps {
        match unlinkat(dir.as_fd(), name.as_str(), UnlinkatFlags::NoRemoveDir) {
            Ok(()) | Err(nix::Error::ENOENT) => swept.temp_files += 1,
            Err(e) => return Err(e.into()),
        }
    }
    for id in candidates.iter().filter(|id| !seen.contains(*id)) {
        tracing::info!(file_id = %id_to_hex(id), "removing an orphan header a crash left");
        headers.remove(id)?;
        undo.remove_journal(id)?;
        swept.orphan_headers += 1;
    }
    Ok(Some(swept))
}

/// Whether `sidecar` in `dir` is a long-name sidecar made in the crashed session whose entry
/// does not exist.
fn unused_sidecar(
    dir: BorrowedFd<'_>,
    sidecar: &str,
    in_crashed_session: &dyn Fn(i128) -> bool,
) -> bool {
    let Some(entry) = sidecar.strip_suffix(LONG_NAME_SUFFIX) else {
        return false;
    };
    entry.starts_with(LONG_PREFIX)
        && fstatat(dir, sidecar, AtFlags::AT_SYMLINK_NOFOLLOW)
            .is_ok_and(|st| in_crashed_session(nanos(&st)))
        && matches!(
            fstatat(dir, entry, AtFlags::AT_SYMLINK_NOFOLLOW),
            Err(nix::Error::ENOENT)
        )
}

/// The directory `dir` itself, opened again.
fn reopen(dir: BorrowedFd<'_>) -> Result<OwnedFd> {
    Ok(openat(
        dir,
        ".",
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )?)
}

/// Collects the file id of every data file in the walk, the `sealfs.new.*` files made in the
/// crashed session, and its unused long-name sidecars; the context says whether a directory
/// is the cipher dir's root.
impl tree::Visitor for Walk<'_> {
    type Ctx = bool;

    fn entry(
        &mut self,
        at_root: &bool,
        entry: &tree::Entry<'_>,
    ) -> Result<Option<tree::Descend<bool>>> {
        let Some(name) = entry.text() else {
            return Ok(None);
        };
        let internal = matches!(classify_entry(name), EntryKind::Internal);
        if entry.is_dir() {
            // sealfs's own directories (headers, journals, mount records, probes) hold no
            // data file.
            return Ok((!(internal && *at_root)).then(|| tree::Descend {
                name: entry.name.to_os_string(),
                ctx: false,
            }));
        }
        if entry.kind() != SFlag::S_IFREG {
            return Ok(None);
        }
        let in_crashed_session = self.in_crashed_session;
        if name.starts_with(super::NEW_FILE_PREFIX) {
            if in_crashed_session(nanos(&entry.stat)) {
                self.temps.push((reopen(entry.dir)?, name.to_string()));
            }
            return Ok(None);
        }
        if internal {
            if unused_sidecar(entry.dir, name, in_crashed_session) {
                self.sidecars.push((reopen(entry.dir)?, name.to_string()));
            }
            return Ok(None);
        }
        let file = match openat(
            entry.dir,
            name,
            OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::empty(),
        ) {
            Ok(fd) => File::from(fd),
            Err(nix::Error::ENOENT) => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        // A data file without a whole preamble names no header (a crash remnant revived as an
        // empty file gets a new one).
        if let Ok(id) = crate::io::read_file_id(&file) {
            self.seen.insert(id);
        }
        Ok(None)
    }
}
