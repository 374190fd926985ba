//! The keeper of one data file's undo journal, for a lone mount that writes the file
//! (`volume::undo` keeps the journals of the volume; `io::undo` says why they exist).
//!
//! Within an epoch (from one fsync of the file to the next), the first write to replace each
//! stored block appends a copy of it and fdatasyncs the journal before the block is written.
//! Two things keep that off the hot paths:
//! - *Copy-ahead*: a write that continues the previous copied run copies a window of the
//!   stored blocks ahead of it as well (doubling, up to `AHEAD_BYTES`), so a sequential
//!   overwrite of a fsynced file flushes the journal once per window, not once per request;
//!   once the windows are long, a copier thread copies the next while the writer goes
//!   through this one (`FileUndo::copy_ahead`; the writing is `undo_copies`).
//! - *Carry-over at fsync*: a file whose fsynced blocks were rewritten in the epoch (an
//!   append's partial tail block, a database's pages) will likely rewrite them again in the
//!   next. The fsync copies them (and the tail block) into the journal for the next epoch,
//!   and flushes the journal while the data file is flushed, in parallel; the next epoch's
//!   writes to them then need no flush of their own. Records of earlier epochs stay in the
//!   journal (a replay applies a copy only to a block that does not read, the latest copy
//!   first) until it outgrows `COMPACT_AT`, when an fsync cuts it back to its preamble.

use std::collections::BTreeSet;
use std::fs::File;
use std::ops::Range;
use std::os::fd::BorrowedFd;
use std::os::unix::fs::FileExt;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

use nix::fcntl::{OFlag, openat};
use nix::sys::stat::Mode;

use super::error::Result as VolumeResult;
use super::undo_copies::{Ahead, Buffers, GROW, frame_at};
use crate::format::block::Layout;
use crate::format::holes::HoleMap;
use crate::format::undo;
use crate::format::{Id, id_to_hex};
use crate::io::{IoError, LedgerAccess, StoredBlocks, UndoLedger};

/// The most stored bytes one copy-ahead takes.
const AHEAD_BYTES: u64 = 8 << 20;
/// A copied run at least this long is a sequential overwrite: its next window is copied on a
/// thread of its own while the writer goes on (`FileUndo::copy_ahead`).
const PIPELINE_BYTES: u64 = 256 << 10;
/// Rewritten blocks an epoch may have and still have them carried over at its fsync: a
/// database commit's pages, not a bulk overwrite.
const HOT_BLOCKS: usize = 32;
/// The most record bytes an epoch's end overwrites with zeros; past it, the journal is cut.
const ZERO_AT_MOST: u64 = 256 << 10;
/// A journal this long is cut back at the next fsync instead of carrying copies over.
const COMPACT_AT: u64 = 1 << 20;

/// What a file's journal keeper asks of the volume's journals (`volume::undo::UndoStore`).
pub(super) trait JournalHost: Send + Sync {
    /// `sealfs.undo`, made (durably) if absent.
    fn journal_dir(&self) -> VolumeResult<BorrowedFd<'_>>;
    /// `sealfs.undo` if it exists.
    fn existing_journal_dir(&self) -> VolumeResult<Option<BorrowedFd<'_>>>;
    /// `file_id` has a journal this mount made: a clean unmount removes it.
    fn touched(&self, file_id: Id);
    /// `file_id`'s epoch holds writes a clean unmount must make durable (`Some`: its state),
    /// or no longer does (`None`).
    fn epoch_open(&self, file_id: Id, state: Option<Arc<Mutex<State>>>);
    fn discard_journal(&self, file_id: &Id) -> VolumeResult<()>;
    /// See `Backing::flush_covers_overwrites`.
    fn flush_covers_overwrites(&self) -> bool;
}

/// fsyncs directory `dir` (made durable: the names in it).
pub(super) fn sync_dir(dir: BorrowedFd<'_>) -> VolumeResult<()> {
    File::from(openat(
        dir,
        ".",
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )?)
    .sync_all()?;
    Ok(())
}

#[derive(Default)]
pub(super) struct State {
    pub(super) journal: Option<File>,
    /// The data file (a second descriptor), for `UndoStore::settle`.
    pub(super) data: Option<File>,
    /// Where the next record goes (the preamble's end: no record). The bytes from there on
    /// are zeros: a record head of zeros ends the journal.
    end: u64,
    /// The journal's length: written (zeros past `end`), not sparse.
    allocated: u64,
    /// Blocks that need no copy until the epoch ends: copied already, or new in it.
    covered: HoleMap,
    /// The data file's backing length when the epoch began (or its first copy came): every
    /// block from there on is new in it. Each record carries it, but for those carried over
    /// at an fsync: they carry the ending epoch's, as that fsync may not finish.
    start_len: Option<u64>,
    /// Stored blocks written in the epoch (at most `HOT_BLOCKS`; `None` once more were).
    rewritten: Option<BTreeSet<u64>>,
    /// The epoch wrote to the file: its data must be made durable before its journal may go.
    dirty: bool,
    /// Where the last copy-ahead ended, and how many blocks it took.
    ahead: (u64, u64),
    /// Records being appended, reused.
    buf: Vec<u8>,
    /// A copy-ahead running on a thread of its own: the blocks it copies. It owns the
    /// journal's end meanwhile: writes to those blocks, and any other append, wait for it.
    in_flight: Option<Range<u64>>,
    /// Signalled when a copy-ahead ends.
    idle: Arc<Condvar>,
    /// A copier thread runs (`FileUndo::copy_ahead`).
    copier: bool,
    /// Where the last write protected ended (a copier stays ahead of it).
    writer_at: u64,
    /// The file is gone: its journal is never written again.
    gone: bool,
}

impl State {
    fn new_epoch(&mut self) {
        self.covered = HoleMap::default();
        self.start_len = None;
        self.rewritten = Some(BTreeSet::new());
        self.dirty = false;
        self.ahead = (0, 0);
    }

    /// Notes that `blocks` are written while the blocks before `stored_end` were stored when
    /// the epoch began.
    fn note_rewrites(&mut self, blocks: &Range<u64>, stored_end: u64) {
        let old = blocks.start..blocks.end.min(stored_end);
        let Some(set) = self.rewritten.as_mut() else {
            return;
        };
        if old.end.saturating_sub(old.start) > HOT_BLOCKS as u64 {
            self.rewritten = None;
            return;
        }
        set.extend(old);
        if set.len() > HOT_BLOCKS {
            self.rewritten = None;
        }
    }
}

/// Waits (letting go of `guard` meanwhile) until no copy-ahead runs on a thread of its own,
/// or, given `blocks`, none that copies any of them.
pub(super) fn until_idle<'a>(
    mut guard: MutexGuard<'a, State>,
    blocks: Option<&Range<u64>>,
) -> MutexGuard<'a, State> {
    loop {
        let busy = match (&guard.in_flight, blocks) {
            (None, _) => false,
            (Some(r), Some(b)) => r.start < b.end && b.start < r.end,
            (Some(_), None) => true,
        };
        if !busy {
            return guard;
        }
        let idle = guard.idle.clone();
        guard = crate::sync::wait(&idle, guard);
    }
}

/// The keeper of one data file's undo journal.
pub struct FileUndo {
    file_id: Id,
    store: Arc<dyn JournalHost>,
    state: Arc<Mutex<State>>,
}

impl FileUndo {
    pub(super) fn new(
        file_id: Id,
        store: Arc<dyn JournalHost>,
        state: Arc<Mutex<State>>,
    ) -> FileUndo {
        crate::sync::lock(&state)
            .rewritten
            .get_or_insert_with(BTreeSet::new);
        FileUndo {
            file_id,
            store,
            state,
        }
    }

    fn error(&self, e: impl std::fmt::Display) -> IoError {
        IoError::Io(std::io::Error::other(format!(
            "undo journal of file {}: {e}",
            id_to_hex(&self.file_id)
        )))
    }

    /// A sequential overwrite (its last copied window at least `PIPELINE_BYTES`) keeps a
    /// copier on a thread of its own: it copies the next window while the writer goes
    /// through this one, and goes on while the writer is within two windows of what it
    /// copied, so the writer seldom waits for a journal flush. Nothing where a copier runs
    /// already, or no thread can be had.
    fn copy_ahead(&self, state: &mut State, at: &LedgerAccess<'_>, stored: &StoredBlocks<'_>) {
        if state.copier || next_window(state, stored.layout(), u64::MAX).is_none() {
            return;
        }
        let (Some(journal), Ok(data)) = (&state.journal, at.file.try_clone()) else {
            return;
        };
        let Ok(journal) = journal.try_clone() else {
            return;
        };
        let (shared, file_id, layout) = (self.state.clone(), self.file_id, stored.layout());
        let spawned = std::thread::Builder::new()
            .name("sealfs-undo".into())
            .spawn(move || copier(&shared, &journal, &data, layout, &file_id));
        state.copier = spawned.is_ok();
    }

    /// Opens the journal (made if absent) with its preamble and `GROW` bytes of zeros,
    /// durable with its name: a record appended later needs only an fdatasync.
    fn open_journal(&self, state: &mut State) -> Result<(), IoError> {
        let dir = self.store.journal_dir().map_err(|e| self.error(e))?;
        self.store.touched(self.file_id);
        let journal = File::from(openat(
            dir,
            id_to_hex(&self.file_id).as_str(),
            OFlag::O_RDWR | OFlag::O_CREAT | OFlag::O_CLOEXEC | OFlag::O_NOFOLLOW,
            Mode::from_bits_truncate(0o600),
        )?);
        journal.set_len(0)?;
        let mut bytes = undo::encode_preamble(&self.file_id).to_vec();
        bytes.resize(GROW as usize, 0);
        journal.write_all_at(&bytes, 0)?;
        journal.sync_all()?;
        sync_dir(dir).map_err(|e| self.error(e))?;
        state.journal = Some(journal);
        state.end = undo::PREAMBLE_LEN;
        state.allocated = GROW;
        Ok(())
    }

    /// The file's data is durable (an fsync returned, outside `end_epoch`): the copies are
    /// spent and a new epoch begins. The caller keeps writes out meanwhile. Tests only: a
    /// mount ends epochs through `end_epoch`.
    #[cfg(test)]
    pub fn synced(&self) -> Result<(), IoError> {
        let mut state = until_idle(crate::sync::lock(&self.state), None);
        self.spend(&mut state)
    }

    /// Cuts the journal back to its preamble (zeros over its records, or a truncation; no
    /// fsync needed: a stale record only ever puts back a block that does not read) and
    /// begins a new epoch.
    fn spend(&self, state: &mut State) -> Result<(), IoError> {
        if let Some(journal) = &state.journal
            && state.end > undo::PREAMBLE_LEN
        {
            // Every record goes, not only the first: the next epoch's records land on the same
            // bytes, and an append of theirs torn by a crash would otherwise be followed by
            // these, which parse (records of one size line up across epochs) and would be
            // the latest copies of their blocks (found by the rewrite workload of
            // tests/powercut.rs: a block put back as it was two fsyncs before). Zeros where
            // they are few; a long journal is cut to its preamble (it grows again with zeros
            // ahead). Either reaches the disk with the next append's fdatasync, before any
            // write relies on the journal again.
            let used = state.end - undo::PREAMBLE_LEN;
            if used <= ZERO_AT_MOST {
                journal.write_all_at(&vec![0; used as usize], undo::PREAMBLE_LEN)?;
            } else {
                journal.set_len(undo::PREAMBLE_LEN)?;
                state.allocated = undo::PREAMBLE_LEN;
            }
        }
        if state.data.take().is_some() {
            self.store.epoch_open(self.file_id, None);
        }
        state.end = state.end.min(undo::PREAMBLE_LEN);
        state.new_epoch();
        Ok(())
    }

    /// The file's last handle is closed: a file with nothing copied since its last fsync
    /// lets go of its journal (carried-over copies are not needed by a file no one writes).
    pub fn closed(&self) {
        let mut state = until_idle(crate::sync::lock(&self.state), None);
        if state.dirty || state.journal.is_none() {
            return;
        }
        state.journal = None;
        if state.data.take().is_some() {
            self.store.epoch_open(self.file_id, None);
        }
        state.end = 0;
        state.new_epoch();
        if let Err(e) = self.store.discard_journal(&self.file_id) {
            tracing::warn!(file = %id_to_hex(&self.file_id), error = %e, "could not remove an undo journal");
        }
    }

    /// The file is gone (last link and handle): its journal goes with its header.
    pub fn discard(&self) {
        let mut state = until_idle(crate::sync::lock(&self.state), None);
        state.gone = true;
        state.journal = None;
        state.data = None;
        self.store.epoch_open(self.file_id, None);
        let _ = self.store.discard_journal(&self.file_id);
    }

    /// The records carried over into the next epoch at an fsync, with the blocks they cover:
    /// the stored blocks rewritten in this one and the partial tail block. `None` where
    /// nothing is to be carried.
    fn carry_over(
        state: &mut State,
        stored: &StoredBlocks<'_>,
    ) -> Result<Option<(HoleMap, u64)>, IoError> {
        let Some(rewritten) = state.rewritten.as_ref() else {
            return Ok(None);
        };
        if state.journal.is_none() || rewritten.is_empty() || state.end >= COMPACT_AT {
            return Ok(None);
        }
        let backing_len = stored.backing_len()?;
        let stored_end = stored.first_block_at_or_past(backing_len);
        let mut picks: BTreeSet<u64> = rewritten.range(..stored_end).copied().collect();
        if stored_end > 0 && stored.block_end(stored_end - 1) > backing_len {
            picks.insert(stored_end - 1);
        }
        // Blocks past the end this epoch began at were written in it: were its fsync cut
        // short, they are torn new blocks, so the copies carried over say where it began.
        let epoch_len = state.start_len.unwrap_or(backing_len).min(backing_len);
        state.buf.clear();
        let mut covered = HoleMap::default();
        for index in picks {
            if let Some(bytes) = stored.block(index, backing_len)? {
                undo::encode_record(index, epoch_len, &bytes, &mut state.buf);
                covered.insert(index..index + 1);
            }
        }
        covered.insert(stored_end..u64::MAX);
        Ok((!state.buf.is_empty()).then_some((covered, backing_len)))
    }
}

/// Writes `len` bytes of `file` from `at` back to the device and waits for them
/// (`sync_file_range`: no flush of the device's cache, no metadata).
fn write_back(file: &File, at: u64, len: u64) -> std::io::Result<()> {
    crate::io::sync_file_range(
        file,
        at,
        len,
        libc::SYNC_FILE_RANGE_WAIT_BEFORE
            | libc::SYNC_FILE_RANGE_WRITE
            | libc::SYNC_FILE_RANGE_WAIT_AFTER,
    )
}

/// Starts writing `len` bytes of `file` from `at` back to the device.
fn start_write_back(file: &File, at: u64, len: u64) -> std::io::Result<()> {
    crate::io::sync_file_range(file, at, len, libc::SYNC_FILE_RANGE_WRITE)
}

/// Readies the records in `state.buf`, to be written at `state.end`: a head of zeros after
/// them ends the journal there (what follows may be older records), and where they would
/// reach past the journal's length, zeros grow it (doubling, then by the MiB), so that the
/// appends after need no metadata flushed. Returns the records' length.
fn frame(state: &mut State) -> u64 {
    frame_at(&mut state.buf, state.end, &mut state.allocated)
}

/// The next window a copier takes, and its length, where the writer is within two windows of
/// what is copied (`backing_len`: the data file's length as last seen; blocks past it are new).
fn next_window(state: &State, layout: Layout, backing_len: u64) -> Option<(Range<u64>, u64)> {
    let (ahead_end, ahead_len) = state.ahead;
    let sealed = layout.sealed_block_size();
    if state.gone || state.journal.is_none() || state.start_len.is_none() {
        return None;
    }
    let window = (ahead_len * 2).min(AHEAD_BYTES / sealed);
    if ahead_len * sealed < PIPELINE_BYTES
        || state.writer_at + 2 * window <= ahead_end
        || state.covered.contains(ahead_end)
    {
        return None;
    }
    let new_from = backing_len
        .saturating_sub(layout.block_offset(0))
        .div_ceil(sealed);
    let next = ahead_end..(ahead_end + window).min(new_from);
    (!next.is_empty()).then_some((next, window))
}

/// A copier's life: window after window, each copied with the state unlocked, until the writer
/// is far enough behind, the epoch ends or the journal goes.
fn copier(shared: &Mutex<State>, journal: &File, data: &File, layout: Layout, file_id: &Id) {
    let mut bufs = Buffers::default();
    loop {
        let backing_len = data.metadata().map_or(0, |m| m.len());
        let mut state = crate::sync::lock(shared);
        let Some((next, window)) = next_window(&state, layout, backing_len) else {
            state.copier = false;
            state.idle.notify_all();
            return;
        };
        let mut skip = HoleMap::default();
        for index in next.clone() {
            if state.covered.contains(index) {
                skip.insert(index..index + 1);
            }
        }
        let job = Ahead {
            journal,
            data,
            layout,
            blocks: next.clone(),
            skip,
            backing_len,
            epoch_len: state.start_len.unwrap_or(backing_len),
            end: state.end,
            allocated: state.allocated,
        };
        state.in_flight = Some(next.clone());
        state.ahead = (next.end, window);
        drop(state);
        let copied = job.run(&mut bufs);
        let mut state = crate::sync::lock(shared);
        state.in_flight = None;
        state.idle.notify_all();
        match copied {
            Ok((end, allocated)) if !state.gone && state.journal.is_some() => {
                state.end = end;
                state.allocated = allocated;
                state.covered.insert(next);
            }
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(file = %id_to_hex(file_id), error = %e, "could not copy ahead into an undo journal; the writes copy for themselves");
                state.copier = false;
                return;
            }
        }
    }
}

impl UndoLedger for FileUndo {
    fn protect(
        &self,
        at: &LedgerAccess<'_>,
        blocks: Range<u64>,
        stored: &StoredBlocks<'_>,
    ) -> Result<(), IoError> {
        let guard = crate::sync::lock(&self.state);
        let mut guard = until_idle(guard, Some(&blocks));
        let state = &mut *guard;
        if state.gone || blocks.is_empty() {
            return Ok(());
        }
        state.dirty = true;
        if state.covered.covers(&blocks) {
            if let Some(len) = state.start_len {
                state.note_rewrites(&blocks, stored.first_block_at_or_past(len));
            }
            state.writer_at = blocks.end;
            self.copy_ahead(state, at, stored);
            return Ok(());
        }
        // The journal takes one writer at a time.
        drop(guard);
        let mut guard = until_idle(crate::sync::lock(&self.state), None);
        let state = &mut *guard;
        if state.gone {
            return Ok(());
        }
        let backing_len = stored.backing_len()?;
        let epoch_len = *state.start_len.get_or_insert(backing_len);
        state.note_rewrites(&blocks, stored.first_block_at_or_past(epoch_len));
        let new_from = stored.first_block_at_or_past(backing_len);
        // A write that continues the last copied run copies ahead, twice as far each time.
        let (ahead_end, ahead_len) = state.ahead;
        let run = blocks.end - blocks.start;
        let window = if blocks.start + 1 >= ahead_end && blocks.start <= ahead_end {
            (ahead_len * 2).max(run)
        } else {
            run
        }
        .min((AHEAD_BYTES / stored.sealed_block_size()).max(run));
        let copy = blocks.start..(blocks.start + window).min(new_from).max(blocks.end);
        state.buf.clear();
        let run_bytes = stored.run(copy.clone(), backing_len)?;
        let sealed = stored.sealed_block_size() as usize;
        for (index, bytes) in copy.clone().zip(run_bytes.chunks(sealed)) {
            if !state.covered.contains(index) {
                undo::encode_record(index, epoch_len, bytes, &mut state.buf);
            }
        }
        let copied_to = copy.end;
        state.ahead = (copied_to, window);
        // Everything from the current end on is new in this epoch (a write past the end leaves
        // a gap of holes that holds nothing durable either).
        state.covered.insert(new_from.min(blocks.start)..blocks.end);
        state.covered.insert(copy.start..copied_to);
        if state.buf.is_empty() {
            return Ok(());
        }
        if state.journal.is_none() {
            self.open_journal(state)?;
        }
        if state.data.is_none() {
            // The epoch's first records: `settle` must end this epoch if no fsync does.
            state.data = Some(at.file.try_clone()?);
            self.store
                .epoch_open(self.file_id, Some(self.state.clone()));
        }
        let records = frame(state);
        let journal = state.journal.as_ref().expect("opened");
        journal.write_all_at(&state.buf, state.end)?;
        journal.sync_data()?;
        state.end += records;
        state.writer_at = blocks.end;
        self.copy_ahead(state, at, stored);
        Ok(())
    }

    fn extended(&self, old_len: u64, stored: &StoredBlocks<'_>) -> Result<(), IoError> {
        let mut state = until_idle(crate::sync::lock(&self.state), None);
        // The epoch began at most this long; what lies past it is new in it (a fallocate
        // before the writes, as fio does: its zeros were never acknowledged).
        let epoch_len = *state.start_len.get_or_insert(old_len);
        let from = stored.first_block_at_or_past(epoch_len.max(old_len));
        state.covered.insert(from..u64::MAX);
        Ok(())
    }

    fn end_epoch(
        &self,
        stored: &StoredBlocks<'_>,
        sync: &(dyn Fn() -> Result<(), IoError> + Sync),
    ) -> Result<(), IoError> {
        let mut guard = until_idle(crate::sync::lock(&self.state), None);
        let state = &mut *guard;
        let carried = if state.gone {
            None
        } else {
            Self::carry_over(state, stored)?
        };
        let Some((covered, next_start)) = carried else {
            sync()?;
            return self.spend(state);
        };
        // The copies for the next epoch are made durable with the data: written back before
        // its fsync where its flush covers them, else flushed beside it.
        if state.data.is_none() {
            state.data = Some(stored.try_clone_file()?);
            self.store
                .epoch_open(self.file_id, Some(self.state.clone()));
        }
        let before = state.allocated;
        let len = frame(state);
        let in_place = state.allocated == before && self.store.flush_covers_overwrites();
        let journal = state.journal.as_ref().expect("carry-over needs a journal");
        let (at, records) = (state.end, &state.buf);
        let (copied, synced) = if in_place {
            // Written back before the data's fsync, whose device flush makes them durable
            // with it: one flush, not two.
            // The data's pages start on their way meanwhile, so the two writes overlap.
            let copied = journal.write_all_at(records, at).and_then(|()| {
                start_write_back(journal, at, records.len() as u64)?;
                stored.start_write_back()?;
                write_back(journal, at, records.len() as u64)
            });
            (copied, sync())
        } else {
            rayon::join(
                || {
                    journal.write_all_at(records, at)?;
                    journal.sync_data()
                },
                sync,
            )
        };
        synced?;
        state.new_epoch();
        match copied {
            Ok(()) => {
                state.end = at + len;
                state.covered = covered;
                state.start_len = Some(next_start);
            }
            Err(e) => {
                tracing::warn!(file = %id_to_hex(&self.file_id), error = %e, "could not carry undo copies over an fsync; the next writes copy them");
            }
        }
        Ok(())
    }
}
