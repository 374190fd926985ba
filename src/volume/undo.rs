//! The undo journals of data files, as a lone mount keeps them (`io::undo` says why they
//! exist): `sealfs.undo/<32 hex>` (`format::undo`), one per data file whose stored blocks were
//! rewritten since its last fsync, by file id. The directory is made on first need.
//!
//! An *epoch* runs from one fsync of a file to the next. In it, the first write to replace a
//! stored block appends a copy of that block and fdatasyncs the journal before the block is
//! written; blocks copied already, and blocks past the end the file had when written (new,
//! unsynced bytes), need nothing more until the epoch ends. An fsync of the file, once its
//! data is durable, ends the epoch: the journal is cut back to its preamble and closed (no
//! fsync needed: a stale record only ever puts back a block that does not open, with bytes
//! that open as it). A clean unmount ends every epoch the same way (`UndoStore::settle`) and
//! removes the journals.
//!
//! So a journal with records at mount time is what a crash or kill left: its file id is
//! *pending*. A lone, writable mount mends the file (`DataFile::recovery`) before it first
//! answers for it (a lookup, so the kernel never sees the torn size) and removes the journal;
//! fsck does the same offline. The epoch state of a file with an open journal lives here, not
//! in its inode, so it outlives the kernel forgetting the inode.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::FileExt;
use std::sync::{Arc, Mutex, OnceLock};

use nix::fcntl::{OFlag, openat};
use nix::sys::stat::{Mode, mkdirat};
use nix::unistd::{UnlinkatFlags, unlinkat};

use super::error::{Result, VolumeError};
pub use super::undo_file::FileUndo;
use super::undo_file::{JournalHost, State, sync_dir};
pub use super::undo_shared::SharedUndo;
use crate::format::block::Layout;
use crate::format::undo::{self, UndoRecord};
use crate::format::{Id, id_from_hex, id_to_hex};
use crate::io::{DataFile, Recovery};

pub const UNDO_DIR: &str = "sealfs.undo";
/// `sealfs.undo/session`: present while a lone, writable mount runs, holding the Unix time
/// (decimal seconds) the oldest session not ended cleanly began. Found at mount: a crash.
pub const SESSION_FILE: &str = "session";

/// Bound on a journal read: far past any epoch's worth of copies of one file.
const MAX_JOURNAL: u64 = 1 << 34;

/// The journals of one volume.
pub struct UndoStore {
    root: OwnedFd,
    /// `sealfs.undo`, opened (made) on first need.
    dir: OnceLock<OwnedFd>,
    /// Files whose journal a crash left with records, not mended yet.
    pending: Mutex<HashSet<Id>>,
    /// Epoch state of the files whose journal is open, by file id.
    open: Mutex<HashMap<Id, Arc<Mutex<State>>>>,
    /// Files this store made or opened a journal for: what `settle` removes.
    touched: Mutex<HashSet<Id>>,
    /// When the session a crash ended began (`SESSION_FILE`), if one did.
    crashed_since: Option<i64>,
    /// This mount began a session (`begin_session`), and mends what a crash left.
    began: std::sync::atomic::AtomicBool,
    mending: std::sync::atomic::AtomicBool,
    /// Files written in the crashed session that this mount has looked at since.
    checked: Mutex<HashSet<Id>>,
    /// Renames and links this mount made: a sweep walking meanwhile removes nothing.
    moves: std::sync::atomic::AtomicU64,
    /// The sweep of what the crash left (`volume::sweep`), running; true once it finished.
    sweeper: Mutex<Option<std::thread::JoinHandle<bool>>>,
    /// The device flush of a data file's fsync makes a journal's in-place writes durable too
    /// (`Backing::flush_covers_overwrites`).
    flush_covers_overwrites: bool,
}

impl UndoStore {
    /// The journals of the cipher dir at `root`; those with records are pending.
    /// `flush_covers_overwrites`: see `Backing::flush_covers_overwrites`.
    pub fn open(root: &OwnedFd, flush_covers_overwrites: bool) -> Result<UndoStore> {
        let store = UndoStore {
            root: root.try_clone()?,
            dir: OnceLock::new(),
            pending: Mutex::new(HashSet::new()),
            open: Mutex::new(HashMap::new()),
            touched: Mutex::new(HashSet::new()),
            crashed_since: None,
            began: std::sync::atomic::AtomicBool::new(false),
            mending: std::sync::atomic::AtomicBool::new(false),
            checked: Mutex::new(HashSet::new()),
            moves: std::sync::atomic::AtomicU64::new(0),
            sweeper: Mutex::new(None),
            flush_covers_overwrites,
        };
        let mut store = store;
        store.crashed_since = store.read_session()?;
        let pending = store
            .list()?
            .into_iter()
            .filter(|(_, len)| *len > undo::PREAMBLE_LEN)
            .map(|(id, _)| id)
            .collect();
        *crate::sync::lock(&store.pending) = pending;
        Ok(store)
    }

    /// Every journal by file id, with its length; nothing where the directory is absent.
    /// Names that are no journal are left alone (fsck reports them).
    pub fn list(&self) -> Result<Vec<(Id, u64)>> {
        let Some(dir) = self.existing_dir()? else {
            return Ok(Vec::new());
        };
        let mut out = Vec::new();
        for name in super::headers::read_names(dir.as_fd())? {
            let Ok(id) = id_from_hex(&name) else { continue };
            if let Ok(st) = nix::sys::stat::fstatat(
                dir.as_fd(),
                name.as_str(),
                nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
            ) {
                out.push((id, st.st_size as u64));
            }
        }
        Ok(out)
    }

    /// Names in `sealfs.undo` that are no journal, for fsck.
    pub fn strays(&self) -> Result<Vec<String>> {
        let Some(dir) = self.existing_dir()? else {
            return Ok(Vec::new());
        };
        Ok(super::headers::read_names(dir.as_fd())?
            .into_iter()
            .filter(|name| id_from_hex(name).is_err() && name != SESSION_FILE)
            .collect())
    }

    /// The start of the session a crash ended, from its marker (a marker that does not parse,
    /// cut by the crash as it was written: 0, every file suspect).
    fn read_session(&self) -> Result<Option<i64>> {
        let Some(dir) = self.existing_dir()? else {
            return Ok(None);
        };
        let fd = match openat(
            dir,
            SESSION_FILE,
            OFlag::O_RDONLY | OFlag::O_CLOEXEC | OFlag::O_NOFOLLOW,
            Mode::empty(),
        ) {
            Ok(fd) => fd,
            Err(nix::Error::ENOENT) => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        let mut text = String::new();
        let _ =
            std::io::Read::read_to_string(&mut std::io::Read::take(File::from(fd), 64), &mut text);
        Ok(Some(text.trim().parse().unwrap_or(0)))
    }

    /// A rename or link: a sweep walking now must not trust what it saw.
    pub fn entry_moved(&self) {
        self.moves.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
    }

    /// A lone, writable mount begins: its session marker is made durable (keeping the start
    /// of a crashed session it finds, whose files it then mends as it meets them, and whose
    /// leftovers a background sweep removes: `volume::sweep`).
    pub fn begin_session(self: &Arc<Self>, headers: &Arc<super::HeaderStore>) -> Result<()> {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as i128);
        let since = self.crashed_since.unwrap_or((now / 1_000_000_000) as i64);
        let dir = self.dir()?;
        let marker = File::from(openat(
            dir,
            SESSION_FILE,
            OFlag::O_WRONLY
                | OFlag::O_CREAT
                | OFlag::O_TRUNC
                | OFlag::O_CLOEXEC
                | OFlag::O_NOFOLLOW,
            Mode::from_bits_truncate(0o600),
        )?);
        marker.write_all_at(format!("{since}\n").as_bytes(), 0)?;
        marker.sync_all()?;
        sync_dir(dir)?;
        self.began.store(true, std::sync::atomic::Ordering::Release);
        if self.crashed_since.is_some() || self.has_pending() {
            self.mending
                .store(true, std::sync::atomic::Ordering::Release);
            tracing::warn!(
                "the last session of this volume did not end cleanly; files written in it are checked and mended as they are first looked up"
            );
        }
        if let Some(since) = self.crashed_since {
            let (store, headers, root) = (self.clone(), headers.clone(), self.root.try_clone()?);
            let since = i128::from(since) * 1_000_000_000;
            let sweep = move || match super::sweep::sweep(
                root.as_fd(),
                &headers,
                &*store,
                (since, now),
            ) {
                Ok(Some(swept)) => {
                    tracing::info!(
                        orphan_headers = swept.orphan_headers,
                        temp_files = swept.temp_files,
                        unused_sidecars = swept.unused_sidecars,
                        "swept what the crash left"
                    );
                    true
                }
                Ok(None) => {
                    tracing::info!(
                        "a rename came during the sweep of what the crash left; the next mount sweeps again"
                    );
                    false
                }
                Err(e) => {
                    tracing::warn!(error = %e, "could not sweep what the crash left; fsck --repair removes it");
                    false
                }
            };
            *crate::sync::lock(&self.sweeper) = Some(std::thread::spawn(sweep));
        }
        Ok(())
    }

    /// Whether this mount mends files a crash left as it meets them (which it may not yet
    /// have done for any file it has not looked up).
    pub fn mending(&self) -> bool {
        self.mending.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Whether the file `file_id`, whose data file last changed at `changed` (its ctime, Unix
    /// seconds: programs can set mtimes back, not ctimes), must be looked at before it is
    /// served: it has a journal a crash left, or it was written in the crashed session and not
    /// looked at since.
    pub fn suspect(&self, file_id: &Id, changed: i64) -> bool {
        self.is_pending(file_id)
            || self.crashed_since.is_some_and(|since| changed >= since)
                && !crate::sync::lock(&self.checked).contains(file_id)
    }

    /// A file this mount made: nothing a crash left in it.
    pub fn made_here(&self, file_id: &Id) {
        if self.mending() {
            crate::sync::lock(&self.checked).insert(*file_id);
        }
    }

    fn existing_dir(&self) -> Result<Option<std::os::fd::BorrowedFd<'_>>> {
        if let Some(dir) = self.dir.get() {
            return Ok(Some(dir.as_fd()));
        }
        match openat(
            self.root.as_fd(),
            UNDO_DIR,
            OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
            Mode::empty(),
        ) {
            Ok(fd) => Ok(Some(self.dir.get_or_init(|| fd).as_fd())),
            Err(nix::Error::ENOENT) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// `sealfs.undo`, made (durably) if absent.
    fn dir(&self) -> Result<std::os::fd::BorrowedFd<'_>> {
        if let Some(dir) = self.existing_dir()? {
            return Ok(dir);
        }
        match mkdirat(self.root.as_fd(), UNDO_DIR, Mode::from_bits_truncate(0o700)) {
            Ok(()) | Err(nix::Error::EEXIST) => {}
            Err(e) => return Err(e.into()),
        }
        sync_dir(self.root.as_fd())?;
        self.existing_dir()?
            .ok_or_else(|| VolumeError::Corrupt(format!("{UNDO_DIR} vanished")))
    }

    /// Whether some file still waits to be mended.
    pub fn has_pending(&self) -> bool {
        !crate::sync::lock(&self.pending).is_empty()
    }

    pub fn is_pending(&self, file_id: &Id) -> bool {
        crate::sync::lock(&self.pending).contains(file_id)
    }

    /// The keeper of `file_id`'s journal for a mount that writes it.
    pub fn keeper(self: &Arc<Self>, file_id: Id) -> FileUndo {
        let state = crate::sync::lock(&self.open)
            .get(&file_id)
            .cloned()
            .unwrap_or_default();
        FileUndo::new(file_id, self.clone(), state)
    }

    /// The keeper of `file_id`'s journal for a shared mount (`coherent`: the cipher dir is on
    /// a local filesystem).
    pub fn shared_keeper(self: &Arc<Self>, file_id: Id, coherent: bool) -> SharedUndo {
        SharedUndo::new(file_id, self.clone(), coherent)
    }

    /// The records of `file_id`'s journal (none where it has none).
    pub fn records(&self, file_id: &Id, layout: &Layout) -> Result<Vec<UndoRecord>> {
        let Some(dir) = self.existing_dir()? else {
            return Ok(Vec::new());
        };
        let fd = match openat(
            dir,
            id_to_hex(file_id).as_str(),
            OFlag::O_RDONLY | OFlag::O_CLOEXEC | OFlag::O_NOFOLLOW,
            Mode::empty(),
        ) {
            Ok(fd) => fd,
            Err(nix::Error::ENOENT) => return Ok(Vec::new()),
            Err(e) => return Err(e.into()),
        };
        let mut bytes = Vec::new();
        std::io::Read::read_to_end(
            &mut std::io::Read::take(File::from(fd), MAX_JOURNAL),
            &mut bytes,
        )?;
        if bytes.len() as u64 <= undo::PREAMBLE_LEN {
            // Empty or cut inside its preamble (a crash while it was being made): no record.
            return Ok(Vec::new());
        }
        undo::decode(&bytes, file_id, layout.sealed_block_size() as usize).map_err(|e| {
            VolumeError::Corrupt(format!("undo journal of file {}: {e}", id_to_hex(file_id)))
        })
    }

    /// Mends data file `data` (of `file_id`, pending) from the journal a crash left: torn
    /// blocks put back, torn unsynced ones cut off, made durable. The caller writes the hole
    /// map (a hole put back is recorded in it), syncs the header and then calls `mended`.
    pub fn mend(&self, data: &DataFile<'_>, file_id: &Id, layout: &Layout) -> Result<()> {
        let plan = self.plan(data, file_id, layout)?;
        if !plan.is_empty() {
            let before = data.backing_len()?;
            data.recover(&plan)?;
            tracing::warn!(file_id = %id_to_hex(file_id), "{}", plan.describe(before));
        }
        Ok(())
    }

    /// What mending `data` (of `file_id`) would do: from its journal if a crash left it one,
    /// else (a file written in the crashed session) cut at its first block that does not read.
    pub fn plan(&self, data: &DataFile<'_>, file_id: &Id, layout: &Layout) -> Result<Recovery> {
        let records = self.records(file_id, layout)?;
        Ok(if records.is_empty() {
            data.recovery_without_journal()?
        } else {
            data.recovery(&records)?
        })
    }

    /// `file_id` is mended (made durable) or found sound: its pending journal, if any, is
    /// removed, and it is not looked at again.
    pub fn mended(&self, file_id: &Id) -> Result<()> {
        self.remove(file_id)?;
        crate::sync::lock(&self.pending).remove(file_id);
        crate::sync::lock(&self.checked).insert(*file_id);
        Ok(())
    }

    /// Removes `file_id`'s journal, if it has one.
    pub fn remove(&self, file_id: &Id) -> Result<()> {
        let Some(dir) = self.existing_dir()? else {
            return Ok(());
        };
        match unlinkat(dir, id_to_hex(file_id).as_str(), UnlinkatFlags::NoRemoveDir) {
            Ok(()) | Err(nix::Error::ENOENT) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// A clean unmount: every open epoch ends (its data file made durable, its journal
    /// removed), so the journals left at the next mount are a crash's. Pending ones stay.
    pub fn settle(&self) {
        let open: Vec<(Id, Arc<Mutex<State>>)> = crate::sync::lock(&self.open).drain().collect();
        for (id, state) in open {
            let mut state = super::undo_file::until_idle(crate::sync::lock(&state), None);
            let synced = state.data.as_ref().map_or(Ok(()), File::sync_data);
            match synced {
                Ok(()) => {
                    state.journal = None;
                    state.data = None;
                }
                Err(e) => {
                    crate::sync::lock(&self.touched).remove(&id);
                    tracing::error!(file = %id_to_hex(&id), error = %e, "could not make a file durable at unmount; its undo journal stays for the next mount");
                }
            }
        }
        // Every journal this mount made: its epoch has ended (above, or at an fsync).
        let touched = std::mem::take(&mut *crate::sync::lock(&self.touched));
        for id in touched {
            if crate::sync::lock(&self.open).contains_key(&id) || self.is_pending(&id) {
                continue;
            }
            if let Err(e) = self.remove(&id) {
                tracing::warn!(file = %id_to_hex(&id), error = %e, "could not remove an undo journal");
            }
        }
        // The session ends cleanly. Files of a crashed session this one never looked up are
        // left to fsck (their journals, if any, stay pending for the next mount). A sweep cut
        // short keeps the marker: the next mount sweeps again.
        let swept = crate::sync::lock(&self.sweeper)
            .take()
            .is_none_or(|sweep| sweep.join().unwrap_or(false));
        if swept
            && self.began.load(std::sync::atomic::Ordering::Acquire)
            && let Ok(Some(dir)) = self.existing_dir()
            && let Err(e) = unlinkat(dir, SESSION_FILE, UnlinkatFlags::NoRemoveDir)
        {
            tracing::warn!(error = %e, "could not remove the session marker");
        }
    }
}

/// The keeper of a data file's undo journal, as the mount keeps it.
pub enum Keeper {
    /// A lone mount's: epochs between fsyncs (`undo_file`).
    Lone(FileUndo),
    /// A shared mount's: one journal all mounts append to, settled (`undo_shared`).
    Shared(SharedUndo),
}

impl Keeper {
    /// The file's last handle on this mount is closed.
    pub fn closed(&self) {
        if let Keeper::Lone(keeper) = self {
            keeper.closed();
        }
    }

    /// The file is gone (last link and handle): its journal goes with its header.
    pub fn discard(&self) {
        match self {
            Keeper::Lone(keeper) => keeper.discard(),
            Keeper::Shared(keeper) => keeper.discard(),
        }
    }

    fn ledger(&self) -> &dyn crate::io::UndoLedger {
        match self {
            Keeper::Lone(keeper) => keeper,
            Keeper::Shared(keeper) => keeper,
        }
    }
}

impl crate::io::UndoLedger for Keeper {
    fn protect(
        &self,
        at: &crate::io::LedgerAccess<'_>,
        blocks: std::ops::Range<u64>,
        stored: &crate::io::StoredBlocks<'_>,
    ) -> std::result::Result<(), crate::io::IoError> {
        self.ledger().protect(at, blocks, stored)
    }

    fn extended(
        &self,
        old_len: u64,
        stored: &crate::io::StoredBlocks<'_>,
    ) -> std::result::Result<(), crate::io::IoError> {
        self.ledger().extended(old_len, stored)
    }

    fn end_epoch(
        &self,
        stored: &crate::io::StoredBlocks<'_>,
        sync: &(dyn Fn() -> std::result::Result<(), crate::io::IoError> + Sync),
    ) -> std::result::Result<(), crate::io::IoError> {
        self.ledger().end_epoch(stored, sync)
    }
}

impl super::sweep::SweepHost for UndoStore {
    fn moves(&self) -> u64 {
        self.moves.load(std::sync::atomic::Ordering::Acquire)
    }

    fn remove_journal(&self, file_id: &Id) -> Result<()> {
        self.remove(file_id)
    }
}

impl JournalHost for UndoStore {
    fn journal_dir(&self) -> Result<std::os::fd::BorrowedFd<'_>> {
        self.dir()
    }

    fn existing_journal_dir(&self) -> Result<Option<std::os::fd::BorrowedFd<'_>>> {
        self.existing_dir()
    }

    fn touched(&self, file_id: Id) {
        crate::sync::lock(&self.touched).insert(file_id);
    }

    fn epoch_open(&self, file_id: Id, state: Option<Arc<Mutex<State>>>) {
        let mut open = crate::sync::lock(&self.open);
        match state {
            Some(state) => open.insert(file_id, state),
            None => open.remove(&file_id),
        };
    }

    fn discard_journal(&self, file_id: &Id) -> Result<()> {
        self.remove(file_id)
    }

    fn flush_covers_overwrites(&self) -> bool {
        self.flush_covers_overwrites
    }
}

#[cfg(test)]
#[path = "undo_tests.rs"]
mod tests;
