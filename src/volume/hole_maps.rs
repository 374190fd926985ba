//! The hole map of a version 2 data file, as the volume keeps it: loaded from its sidecar
//! (`sealfs.headers/<hh>/<id>.holes`) on first need, held in memory per inode, written back
//! sealed under the file's content key.
//!
//! A lone mount is the only writer, so its copy is exact: blocks a write fills leave the map at
//! once in memory. The sidecar keeps listing them until the write is durable (the fsync that
//! covers it, or the last close, which makes it durable first): a power cut may drop the write,
//! and the all-zero block it leaves must still read as the hole it was, not EIO. A recorded
//! hole whose block holds sealed data reads as that data, so until then the sidecar only
//! weakens the check for those blocks, never breaks a read. Shared mounts (`-o shared`) write
//! every change through at once, under a lock on byte 0 of the data file that every mount
//! takes for it, reading the sidecar afresh first; and before answering whether an all-zero
//! block is a hole they look whether another mount replaced the sidecar since (one stat).

use std::ops::Range;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use super::headers::{HeaderStore, HolesStamp};
use crate::format::holes::{self, HoleMap};
use crate::format::{Id, id_to_hex};
use crate::io::{HoleLedger, IoError, LedgerAccess, Persist};

/// Who writes the map: the one seam between a lone and a shared mount in this file, chosen
/// once per mount (`fs::core::access`) and by offline commands (always `Sole`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Writers {
    /// This process alone: the map is kept in memory and written back (fsync, close).
    Sole,
    /// Several mounts (`-o shared`): every change goes through to the sidecar at once, under
    /// its lock, read afresh first.
    Several,
}

pub struct FileHoles {
    file_id: Id,
    store: Arc<HeaderStore>,
    shared: bool,
    /// False only while the map is known (loaded) and empty: the common case, where a write
    /// need not take the lock to learn it fills no hole.
    maybe_holes: AtomicBool,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// `None` until loaded.
    map: Option<HoleMap>,
    /// The sidecar as last read or written (`None`: there was none).
    stamp: Option<HolesStamp>,
    /// Lone mounts: the map differs from the sidecar.
    dirty: bool,
    /// The sidecar was written since the last fsync of the file.
    unsynced: bool,
    /// The file is gone (last link and handle): the map is never written again.
    gone: bool,
    /// Lone mounts: holes written over since the file's data was last made durable. Every
    /// write of the sidecar keeps them recorded until `data_synced`.
    filled: HoleMap,
}

impl FileHoles {
    /// The hole map of an existing data file, read from its sidecar when first needed.
    pub fn existing(file_id: Id, store: Arc<HeaderStore>, writers: Writers) -> FileHoles {
        FileHoles {
            file_id,
            store,
            shared: writers == Writers::Several,
            maybe_holes: AtomicBool::new(true),
            state: Mutex::new(State::default()),
        }
    }

    /// The hole map of a data file just created: empty, nothing to read.
    pub fn new_file(file_id: Id, store: Arc<HeaderStore>, writers: Writers) -> FileHoles {
        FileHoles {
            file_id,
            store,
            shared: writers == Writers::Several,
            maybe_holes: AtomicBool::new(false),
            state: Mutex::new(State {
                map: Some(HoleMap::default()),
                ..State::default()
            }),
        }
    }

    fn error(&self, why: impl std::fmt::Display) -> IoError {
        IoError::HoleMap {
            file: id_to_hex(&self.file_id),
            why: why.to_string(),
        }
    }

    /// Reads the sidecar into `state`.
    fn load(&self, state: &mut State, at: &LedgerAccess<'_>) -> Result<(), IoError> {
        let (map, stamp) = match self
            .store
            .read_holes(&self.file_id)
            .map_err(|e| self.error(e))?
        {
            None => (HoleMap::default(), None),
            Some((bytes, stamp)) => {
                let sealed =
                    holes::decode_sidecar(&bytes, &self.file_id).map_err(|e| self.error(e))?;
                let plain = at
                    .sealer
                    .open(&holes::map_aad(&self.file_id), sealed)
                    .map_err(|_| self.error("does not decrypt"))?;
                (
                    HoleMap::decode(&plain).map_err(|e| self.error(e))?,
                    Some(stamp),
                )
            }
        };
        self.maybe_holes.store(!map.is_empty(), Ordering::Release);
        state.map = Some(map);
        state.stamp = stamp;
        state.dirty = false;
        Ok(())
    }

    /// The map in memory, loaded first if it is not.
    fn map<'s>(
        &self,
        state: &'s mut State,
        at: &LedgerAccess<'_>,
    ) -> Result<&'s mut HoleMap, IoError> {
        if state.map.is_none() {
            self.load(state, at)?;
        }
        Ok(state.map.as_mut().expect("loaded"))
    }

    /// Shared mounts: reads the sidecar again if another mount replaced it since.
    fn refresh(&self, state: &mut State, at: &LedgerAccess<'_>) -> Result<(), IoError> {
        let now = self
            .store
            .holes_stamp(&self.file_id)
            .map_err(|e| self.error(e))?;
        if state.map.is_none() || now != state.stamp {
            self.load(state, at)?;
        }
        Ok(())
    }

    /// Writes the map to its sidecar (removes the sidecar when the map is empty).
    fn store(&self, state: &mut State, at: &LedgerAccess<'_>) -> Result<(), IoError> {
        if state.gone {
            return Ok(());
        }
        let mut map = state.map.clone().expect("loaded before stored");
        for range in state.filled.ranges() {
            map.insert(range);
        }
        let bytes = if map.is_empty() {
            None
        } else {
            let sealed = at
                .sealer
                .seal(&holes::map_aad(&self.file_id), &map.encode())
                .map_err(IoError::Seal)?;
            Some(holes::encode_sidecar(&self.file_id, &sealed))
        };
        self.store
            .write_holes(&self.file_id, bytes.as_deref())
            .map_err(|e| self.error(e))?;
        state.stamp = self
            .store
            .holes_stamp(&self.file_id)
            .map_err(|e| self.error(e))?;
        state.dirty = false;
        state.unsynced = true;
        let in_memory = state.map.as_ref().is_some_and(|map| !map.is_empty());
        self.maybe_holes.store(in_memory, Ordering::Release);
        Ok(())
    }

    /// Whether holes were written over since the data was last made durable: the last close
    /// makes the data durable first (`data_synced`), so a clean unmount leaves an exact map.
    pub fn filled_unsynced(&self) -> bool {
        !crate::sync::lock(&self.state).filled.is_empty()
    }

    /// The file's data is durable (an fsync returned): holes written over since need no
    /// record any more; the next write of the sidecar drops them.
    pub fn data_synced(&self) {
        let mut state = crate::sync::lock(&self.state);
        if !state.filled.is_empty() {
            state.filled = HoleMap::default();
            state.dirty = true;
        }
    }

    /// The file is gone: removes the sidecar and never writes it again (under the same lock
    /// as every write of it, so a close racing the deletion cannot bring it back).
    pub fn discard(&self) {
        let mut state = crate::sync::lock(&self.state);
        state.gone = true;
        state.dirty = false;
        if let Err(e) = self.store.write_holes(&self.file_id, None) {
            tracing::warn!(file = %id_to_hex(&self.file_id), error = %e, "could not remove a hole map");
        }
    }

    /// Whether the sidecar was written since the last call: an fsync of the file must make
    /// it durable too (`HeaderStore::sync`).
    pub fn take_unsynced(&self) -> bool {
        std::mem::take(&mut crate::sync::lock(&self.state).unsynced)
    }

    /// Shared mounts: `change` applied to the sidecar as it is now, under the lock every mount
    /// takes for it.
    fn change_shared(
        &self,
        state: &mut State,
        at: &LedgerAccess<'_>,
        change: impl FnOnce(&mut HoleMap) -> bool,
    ) -> Result<(), IoError> {
        let _lock = crate::coord::file_locks::lock_hole_map(at.file)?;
        self.load(state, at)?;
        if change(state.map.as_mut().expect("loaded")) {
            self.store(state, at)?;
        }
        Ok(())
    }

    /// Writes what a lone mount changed in memory to the sidecar (on fsync and close).
    pub fn flush(&self, at: &LedgerAccess<'_>) -> Result<(), IoError> {
        let mut state = crate::sync::lock(&self.state);
        if state.dirty {
            self.store(&mut state, at)?;
        }
        Ok(())
    }
}

impl HoleLedger for FileHoles {
    fn allows(&self, at: &LedgerAccess<'_>, block: u64) -> Result<bool, IoError> {
        let mut state = crate::sync::lock(&self.state);
        if self.shared {
            // Another mount may have punched the block, or filled it, since this one last read
            // the map: one stat of the sidecar says (asked only for all-zero blocks).
            self.refresh(&mut state, at)?;
        }
        Ok(self.map(&mut state, at)?.contains(block))
    }

    fn record(
        &self,
        at: &LedgerAccess<'_>,
        blocks: Range<u64>,
        persist: Persist,
    ) -> Result<(), IoError> {
        let mut state = crate::sync::lock(&self.state);
        if self.shared {
            return self.change_shared(&mut state, at, |map| map.insert(blocks));
        }
        if self.map(&mut state, at)?.insert(blocks) {
            state.dirty = true;
            self.maybe_holes.store(true, Ordering::Release);
        }
        if state.dirty && persist == Persist::Now {
            self.store(&mut state, at)?;
        }
        Ok(())
    }

    fn clear(&self, at: &LedgerAccess<'_>, blocks: Range<u64>) -> Result<(), IoError> {
        if !self.shared && !self.maybe_holes.load(Ordering::Acquire) {
            return Ok(());
        }
        let mut state = crate::sync::lock(&self.state);
        if self.shared {
            // Cheap when nothing changed: one stat of the sidecar (none, for most files).
            self.refresh(&mut state, at)?;
            if !self.map(&mut state, at)?.intersects(&blocks) {
                return Ok(());
            }
            return self.change_shared(&mut state, at, |map| map.remove(blocks));
        }
        let map = self.map(&mut state, at)?;
        let filled: Vec<Range<u64>> = map
            .ranges()
            .filter(|r| r.start < blocks.end && blocks.start < r.end)
            .map(|r| r.start.max(blocks.start)..r.end.min(blocks.end))
            .collect();
        if map.remove(blocks) {
            state.dirty = true;
            for range in filled {
                state.filled.insert(range);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::{Sealer, SecretKey};
    use std::fs::File;

    struct Fixture {
        _dir: tempfile::TempDir,
        store: Arc<HeaderStore>,
        data: File,
        sealer: Sealer,
    }

    fn fixture() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join(super::super::headers::HEADERS_DIR)).unwrap();
        let root = File::open(dir.path()).unwrap();
        let store = Arc::new(HeaderStore::open(&root).unwrap());
        let data = File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(dir.path().join("data"))
            .unwrap();
        Fixture {
            _dir: dir,
            store,
            data,
            sealer: Sealer::new(&SecretKey::from_array([6; 32])),
        }
    }

    const ID: Id = [0x42; 16];

    fn access(fx: &Fixture) -> LedgerAccess<'_> {
        LedgerAccess {
            file: &fx.data,
            file_id: &ID,
            sealer: &fx.sealer,
        }
    }

    #[test]
    fn a_lone_mount_keeps_the_map_and_writes_it_back() {
        let fx = fixture();
        let at = access(&fx);
        let holes = FileHoles::new_file(ID, fx.store.clone(), Writers::Sole);
        assert!(!holes.allows(&at, 3).unwrap());
        holes.record(&at, 2..10, Persist::Later).unwrap();
        assert!(holes.allows(&at, 3).unwrap());
        assert!(fx.store.read_holes(&ID).unwrap().is_none(), "not yet");
        holes.clear(&at, 3..4).unwrap();
        holes.flush(&at).unwrap();
        assert!(!holes.allows(&at, 3).unwrap(), "filled");
        assert!(holes.filled_unsynced());
        let reread = FileHoles::existing(ID, fx.store.clone(), Writers::Sole);
        assert!(
            reread.allows(&at, 3).unwrap(),
            "kept in the sidecar until the data that filled it is durable"
        );
        holes.data_synced();
        assert!(!holes.filled_unsynced());
        holes.flush(&at).unwrap();
        let reread = FileHoles::existing(ID, fx.store.clone(), Writers::Sole);
        assert!(reread.allows(&at, 2).unwrap());
        assert!(!reread.allows(&at, 3).unwrap(), "filled");
        assert!(reread.allows(&at, 9).unwrap());
        // Persist::Now reaches the sidecar at once.
        holes.record(&at, 20..21, Persist::Now).unwrap();
        assert!(
            FileHoles::existing(ID, fx.store.clone(), Writers::Sole)
                .allows(&at, 20)
                .unwrap()
        );
        // Cleared entirely, and the data durable: the sidecar goes.
        holes.clear(&at, 0..u64::MAX).unwrap();
        holes.data_synced();
        holes.flush(&at).unwrap();
        assert!(fx.store.read_holes(&ID).unwrap().is_none());
    }

    #[test]
    fn only_holes_a_write_filled_stay_in_the_sidecar_until_the_data_is_durable() {
        let fx = fixture();
        let at = access(&fx);
        let holes = FileHoles::new_file(ID, fx.store.clone(), Writers::Sole);
        holes.record(&at, 4..6, Persist::Now).unwrap();
        // A write over blocks 0..20 fills 4..6; the blocks around them were never holes.
        holes.clear(&at, 0..20).unwrap();
        holes.flush(&at).unwrap();
        let reread = FileHoles::existing(ID, fx.store.clone(), Writers::Sole);
        assert!(reread.allows(&at, 4).unwrap() && reread.allows(&at, 5).unwrap());
        assert!(!reread.allows(&at, 3).unwrap() && !reread.allows(&at, 6).unwrap());
        holes.data_synced();
        holes.flush(&at).unwrap();
        assert!(fx.store.read_holes(&ID).unwrap().is_none(), "exact again");
    }

    #[test]
    fn a_discarded_map_is_never_written_again() {
        let fx = fixture();
        let at = access(&fx);
        let holes = FileHoles::new_file(ID, fx.store.clone(), Writers::Sole);
        holes.record(&at, 0..4, Persist::Now).unwrap();
        holes.record(&at, 8..9, Persist::Later).unwrap();
        holes.discard();
        assert!(fx.store.read_holes(&ID).unwrap().is_none());
        holes.flush(&at).unwrap();
        holes.record(&at, 20..21, Persist::Now).unwrap();
        assert!(
            fx.store.read_holes(&ID).unwrap().is_none(),
            "a close after the deletion"
        );
    }

    #[test]
    fn a_damaged_or_foreign_sidecar_is_an_error_not_an_empty_map() {
        let fx = fixture();
        let at = access(&fx);
        let holes = FileHoles::new_file(ID, fx.store.clone(), Writers::Sole);
        holes.record(&at, 0..4, Persist::Now).unwrap();
        let (mut bytes, _) = fx.store.read_holes(&ID).unwrap().unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        fx.store.write_holes(&ID, Some(&bytes)).unwrap();
        let reread = FileHoles::existing(ID, fx.store.clone(), Writers::Sole);
        assert!(matches!(
            reread.allows(&at, 1),
            Err(IoError::HoleMap { .. })
        ));
        // Another key (another file's map copied here) does not open either.
        let other = Sealer::new(&SecretKey::from_array([7; 32]));
        let foreign = FileHoles::existing(ID, fx.store.clone(), Writers::Sole);
        let at_other = LedgerAccess {
            sealer: &other,
            ..access(&fx)
        };
        holes.record(&at, 0..4, Persist::Now).unwrap();
        assert!(foreign.allows(&at_other, 1).is_err());
    }

    #[test]
    fn shared_mounts_see_each_others_changes() {
        let fx = fixture();
        let at = access(&fx);
        let a = FileHoles::new_file(ID, fx.store.clone(), Writers::Several);
        let b = FileHoles::existing(ID, fx.store.clone(), Writers::Several);
        assert!(!b.allows(&at, 5).unwrap());
        a.record(&at, 4..8, Persist::Later).unwrap();
        assert!(b.allows(&at, 5).unwrap(), "b looks again before saying no");
        b.clear(&at, 5..6).unwrap();
        assert!(
            !a.allows(&at, 5).unwrap(),
            "a looks again before saying yes"
        );
        assert!(a.allows(&at, 6).unwrap());
        a.record(&at, 10..12, Persist::Later).unwrap();
        // b's next change starts from the sidecar, keeping a's.
        b.clear(&at, 4..5).unwrap();
        let fresh = FileHoles::existing(ID, fx.store.clone(), Writers::Several);
        assert!(!fresh.allows(&at, 4).unwrap());
        assert!(fresh.allows(&at, 11).unwrap());
    }
}
