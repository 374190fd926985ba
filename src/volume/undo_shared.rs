//! The undo journal of a data file as shared mounts keep it (`-o shared`): `io::undo` says why
//! journals exist, `volume::undo` how a lone mount keeps them. The bytes are the same
//! (`format::undo`, docs/FORMAT.md "Undo journal"); what differs is who appends and when a
//! copy is spent.
//!
//! - Every mount of the cipher dir appends to the one journal of a file, under an exclusive
//!   OFD lock of the journal, at the end of its records, and fdatasyncs it before the write:
//!   the order of records in the journal is the order of the writes, on every host, so the
//!   last copy of a block is the one taken just before the last write to it.
//! - There are no epochs: every write that replaces stored blocks copies each of them, since
//!   another host may have written and fsynced a block since this mount last copied it, and
//!   every block past the backing end (found under the block lock) is new.
//! - A mount that appended *settles* the journal at its last close of the file and when the
//!   journal has passed `SETTLE_AT`: holding every block of the data file (taken only if no
//!   mount holds any: a settle never waits for writers), it mends what a crash tore, makes
//!   the data file durable and cuts the journal back to its preamble.
//! - A block that fails authentication with no writer on it was torn by a crash (of any host):
//!   the mount that meets it *mends* the file the same way, waiting for the lock.

use std::fs::File;
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use nix::fcntl::{OFlag, openat};
use nix::sys::stat::Mode;

use super::undo_file::{JournalHost, sync_dir};
use crate::format::undo::{self, UndoRecord};
use crate::format::{Id, id_to_hex};
use crate::io::{DataFile, IoError, LedgerAccess, Recovery, StoredBlocks, UndoLedger};

/// A journal past this many bytes is settled before the next write that can (no other write
/// in flight on the file).
pub const SETTLE_AT: u64 = 1 << 20;

/// Bound on a journal read (a shared journal holds the copies of writes since its last
/// settle).
const MAX_READ: u64 = 1 << 32;

/// The keeper of one data file's undo journal on a shared mount.
pub struct SharedUndo {
    file_id: Id,
    store: Arc<dyn JournalHost>,
    /// The cipher dir is on a local filesystem (`Backing::coherent`).
    coherent: bool,
    /// This mount appended records no settle has cut back yet.
    appended: AtomicBool,
    /// Where the records ended after this mount's last append or read, and the journal's
    /// bytes around there (`Known`): while they are still there, no other mount appended or
    /// cut back since, and the records need not be read again.
    last: Mutex<Option<Known>>,
    /// The journal's length as this mount last saw it (for `wants_settle`).
    seen_len: AtomicU64,
    /// The data file's length and change time when a mend last found nothing to mend (a
    /// block tampered with, not torn): until it changes, no read of it mends again (each
    /// would wait for every writer and read the whole file).
    fruitless: Mutex<Option<(u64, i64, i64)>>,
}

/// Where a journal's records end, and what this mount saw around there: up to `TAIL` bytes
/// of the records before (a sealed block's tag, or the preamble) and the zero head after.
/// Finding both again means no mount appended since (the head would not be zeros) nor cut
/// the journal back and appended anew (the bytes before would be another record's).
#[derive(Clone)]
struct Known {
    end: u64,
    around: Vec<u8>,
}

/// Bytes of the records before their end that `Known` keeps.
const TAIL: u64 = 32;

impl Known {
    fn new(bytes_before_end: &[u8], end: u64) -> Known {
        let keep = bytes_before_end.len().min(TAIL as usize);
        let mut around = bytes_before_end[bytes_before_end.len() - keep..].to_vec();
        around.resize(keep + undo::RECORD_HEAD_LEN, 0);
        Known { end, around }
    }

    fn at(&self) -> u64 {
        self.end - (self.around.len() - undo::RECORD_HEAD_LEN) as u64
    }

    /// Whether `journal` still holds what this mount saw.
    fn holds(&self, journal: &File) -> bool {
        let mut now = vec![0u8; self.around.len()];
        matches!(crate::io::read_full_at(journal, &mut now, self.at()), Ok(n) if n == now.len())
            && now == self.around
    }
}

/// What tells whether a data file changed: its length and change time.
fn stamp(meta: &std::fs::Metadata) -> (u64, i64, i64) {
    use std::os::unix::fs::MetadataExt;
    (meta.len(), meta.ctime(), meta.ctime_nsec())
}

/// A journal held under its lock, which goes when this is dropped (its descriptions close).
struct Locked {
    /// The description the lock is on.
    _lock: File,
    /// The description reads and writes go through: opened after the lock where the cipher
    /// dir is not local (a distributed filesystem's client serves what it knew at open).
    io: File,
    len: u64,
}

impl SharedUndo {
    pub(super) fn new(file_id: Id, store: Arc<dyn JournalHost>, coherent: bool) -> SharedUndo {
        SharedUndo {
            file_id,
            store,
            coherent,
            appended: AtomicBool::new(false),
            last: Mutex::new(None),
            seen_len: AtomicU64::new(0),
            fruitless: Mutex::new(None),
        }
    }

    fn error(&self, e: impl std::fmt::Display) -> IoError {
        IoError::Io(std::io::Error::other(format!(
            "undo journal of file {}: {e}",
            id_to_hex(&self.file_id)
        )))
    }

    /// Whether this mount appended records that no settle has cut back yet.
    pub fn appended(&self) -> bool {
        self.appended.load(Ordering::Acquire)
    }

    /// Whether a mend of the data file (`meta`: its metadata now) would find nothing: the last
    /// one found nothing and the file has not changed since.
    pub fn fruitless(&self, meta: &std::fs::Metadata) -> bool {
        *crate::sync::lock(&self.fruitless) == Some(stamp(meta))
    }

    /// Whether the journal has grown past `SETTLE_AT` (as this mount last saw it).
    pub fn wants_settle(&self) -> bool {
        self.seen_len.load(Ordering::Acquire) > SETTLE_AT
    }

    /// Opens the journal (made if `create`; `None` where it is absent) and takes its lock.
    fn lock(&self, create: bool) -> Result<Option<Locked>, IoError> {
        let dir = if create {
            Some(self.store.journal_dir().map_err(|e| self.error(e))?)
        } else {
            self.store
                .existing_journal_dir()
                .map_err(|e| self.error(e))?
        };
        let Some(dir) = dir else { return Ok(None) };
        let name = id_to_hex(&self.file_id);
        let mut flags = OFlag::O_RDWR | OFlag::O_CLOEXEC | OFlag::O_NOFOLLOW;
        if create {
            flags |= OFlag::O_CREAT;
        }
        let open = || openat(dir, name.as_str(), flags, Mode::from_bits_truncate(0o600));
        let lock = match open() {
            Ok(fd) => File::from(fd),
            Err(nix::Error::ENOENT) if !create => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        crate::coord::file_locks::lock_whole_file(&lock)?;
        let io = if self.coherent {
            lock.try_clone()?
        } else {
            let io = File::from(open()?);
            super::backing::refresh(&io);
            io
        };
        let mut len = io.metadata()?.len();
        if len < undo::PREAMBLE_LEN && create {
            // New (or cut short while it was being made): its preamble, durable with its name.
            io.set_len(0)?;
            io.write_all_at(&undo::encode_preamble(&self.file_id), 0)?;
            io.sync_all()?;
            sync_dir(dir).map_err(|e| self.error(e))?;
            len = undo::PREAMBLE_LEN;
        }
        self.seen_len.store(len, Ordering::Release);
        Ok(Some(Locked {
            _lock: lock,
            io,
            len,
        }))
    }

    /// The journal's records and where they end (nothing where it is shorter than its
    /// preamble).
    fn read(&self, journal: &Locked, sealed: usize) -> Result<(Vec<UndoRecord>, u64), IoError> {
        if journal.len <= undo::PREAMBLE_LEN {
            return Ok((Vec::new(), undo::PREAMBLE_LEN));
        }
        let mut bytes = Vec::new();
        std::io::Read::read_to_end(&mut std::io::Read::take(&journal.io, MAX_READ), &mut bytes)?;
        let decoded =
            undo::decode_with_end(&bytes, &self.file_id, sealed).map_err(|e| self.error(e))?;
        *crate::sync::lock(&self.last) = Some(Known::new(&bytes[..decoded.1 as usize], decoded.1));
        Ok(decoded)
    }

    /// Mends and settles the journal; the caller holds every block of `data` (exclusively: no
    /// write is in flight on any mount). Blocks that do not read are put back from their last
    /// copy, or a torn tail cut (`DataFile::recovery_shared`); with `mend`, that is done even
    /// where no journal has records (a torn append). Then the data file is made durable and
    /// the journal cut back to its preamble (no fsync needed: a stale record only ever puts
    /// back a block that does not read, and one appended later ends the records before it).
    /// What was mended is returned.
    pub fn settle(&self, data: &DataFile<'_>, mend: bool) -> Result<Recovery, IoError> {
        let sealed = data.sealed_block_size() as usize;
        let journal = self.lock(false)?;
        let records = match &journal {
            Some(journal) => self.read(journal, sealed)?.0,
            None => Vec::new(),
        };
        if records.is_empty() && !mend {
            self.appended.store(false, Ordering::Release);
            return Ok(Recovery::default());
        }
        let before = data.backing_len()?;
        let plan = data.recovery_shared(&records, mend)?;
        if plan.is_empty() {
            data.flush()?;
            if mend {
                *crate::sync::lock(&self.fruitless) = Some(stamp(&data.metadata()?));
            }
        } else {
            data.recover(&plan)?;
            tracing::warn!(file_id = %id_to_hex(&self.file_id), "{}", plan.describe(before));
        }
        if let Some(journal) = &journal
            && journal.len > undo::PREAMBLE_LEN
        {
            journal.io.set_len(undo::PREAMBLE_LEN)?;
            *crate::sync::lock(&self.last) = None;
            self.seen_len.store(undo::PREAMBLE_LEN, Ordering::Release);
        }
        self.appended.store(false, Ordering::Release);
        Ok(plan)
    }

    /// The file is gone (last link and handle): its journal goes with its header.
    pub fn discard(&self) {
        let _ = self.store.discard_journal(&self.file_id);
    }
}

impl UndoLedger for SharedUndo {
    fn protect(
        &self,
        _at: &LedgerAccess<'_>,
        blocks: Range<u64>,
        stored: &StoredBlocks<'_>,
    ) -> Result<(), IoError> {
        let backing_len = stored.backing_len()?;
        let copy = blocks.start..blocks.end.min(stored.first_block_at_or_past(backing_len));
        if copy.is_empty() {
            return Ok(());
        }
        let sealed = stored.sealed_block_size() as usize;
        let bytes = stored.run(copy.clone(), backing_len)?;
        let mut buf = Vec::with_capacity(bytes.len() + copy.clone().count() * 32);
        for (index, block) in copy.zip(bytes.chunks(sealed)) {
            undo::encode_record(index, backing_len, block, &mut buf);
        }
        let records = buf.len();
        buf.extend_from_slice(&[0; undo::RECORD_HEAD_LEN]);
        let journal = self.lock(true)?.expect("made");
        let known = crate::sync::lock(&self.last).clone();
        let end = match known {
            Some(known) if known.holds(&journal.io) => known.end,
            _ => self.read(&journal, sealed)?.1,
        };
        // Zeros ahead of the records where they reach past the journal's length (doubling,
        // then by the MiB), so that the appends after overwrite in place and their fdatasync
        // commits no metadata.
        let needed = end + buf.len() as u64;
        if needed > journal.len {
            buf.resize((super::undo_copies::grown(needed) - end) as usize, 0);
        }
        journal.io.write_all_at(&buf, end)?;
        journal.io.sync_data()?;
        let new_end = end + records as u64;
        // What precedes the new end: the last bytes of these records, after those of the
        // journal before them where these are fewer.
        let ours = records.min(TAIL as usize);
        let mut tail = vec![0u8; TAIL as usize - ours];
        let from = (end + ours as u64).saturating_sub(TAIL);
        let got = crate::io::read_full_at(&journal.io, &mut tail, from)?;
        tail.truncate(got.min((end - from) as usize));
        tail.extend_from_slice(&buf[records - ours..records]);
        *crate::sync::lock(&self.last) = Some(Known::new(&tail, new_end));
        self.seen_len
            .store(journal.len.max(end + buf.len() as u64), Ordering::Release);
        self.appended.store(true, Ordering::Release);
        Ok(())
    }

    fn end_epoch(
        &self,
        _stored: &StoredBlocks<'_>,
        sync: &(dyn Fn() -> Result<(), IoError> + Sync),
    ) -> Result<(), IoError> {
        sync()
    }
}

#[cfg(test)]
#[path = "undo_shared_tests.rs"]
mod tests;
