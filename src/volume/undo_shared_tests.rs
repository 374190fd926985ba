//! Tests of the shared mounts' undo journal: two keepers (two mounts) appending to one
//! journal, torn rewrites mended from the last copy, settling.

use std::os::fd::OwnedFd;

use super::*;
use crate::crypto::{Sealer, SecretKey};
use crate::format::block::Layout;
use crate::io::Holes;
use crate::volume::undo::UndoStore;

const ID: Id = [0x52; 16];
const BS: usize = 4096;

struct Fixture {
    _dir: tempfile::TempDir,
    store: Arc<UndoStore>,
    data: File,
    sealer: Sealer,
    layout: Layout,
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let root = OwnedFd::from(File::open(dir.path()).unwrap());
    let data = File::options()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(dir.path().join("data"))
        .unwrap();
    crate::io::write_preamble(&data, &ID).unwrap();
    Fixture {
        store: Arc::new(UndoStore::open(&root, false).unwrap()),
        _dir: dir,
        data,
        sealer: Sealer::new(&SecretKey::from_array([9; 32])),
        layout: Layout::new(BS as u32).unwrap(),
    }
}

impl Fixture {
    /// The keeper of a mount.
    fn mount(&self) -> SharedUndo {
        self.store.shared_keeper(ID, true)
    }

    fn df<'a>(&'a self, undo: Option<&'a SharedUndo>) -> DataFile<'a> {
        DataFile::new(
            &self.data,
            self.layout,
            &ID,
            &self.sealer,
            Holes::AnyZeroBlock,
        )
        .with_undo(undo.map(|u| u as &dyn UndoLedger))
    }

    fn records(&self) -> Vec<UndoRecord> {
        self.store.records(&ID, &self.layout).unwrap()
    }

    fn backing(&self) -> Vec<u8> {
        let mut out = vec![0; self.data.metadata().unwrap().len() as usize];
        self.data.read_exact_at(&mut out, 0).unwrap();
        out
    }

    fn set_backing(&self, bytes: &[u8]) {
        self.data.set_len(0).unwrap();
        self.data.write_all_at(bytes, 0).unwrap();
    }

    fn read_all(&self) -> Result<Vec<u8>, IoError> {
        let mut out = Vec::new();
        let df = self.df(None);
        df.read_with(0, df.plain_size()? as usize, |b| out.extend_from_slice(b))?;
        Ok(out)
    }
}

fn pattern(seed: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(13).wrapping_add(seed) | 1)
        .collect()
}

#[test]
fn two_mounts_append_copies_of_stored_blocks_in_write_order() {
    let fx = fixture();
    let (a, b) = (fx.mount(), fx.mount());
    fx.df(None).write_at(0, &pattern(1, 3 * BS)).unwrap();
    let before = fx.backing();
    fx.df(Some(&a)).write_at(10, b"a").unwrap();
    fx.df(Some(&b)).write_at(2 * BS as u64 + 5, b"b").unwrap();
    fx.df(Some(&a))
        .write_at(BS as u64, &pattern(2, BS))
        .unwrap();
    // Past the end: nothing stored there, nothing copied.
    fx.df(Some(&b)).write_at(5 * BS as u64, b"new").unwrap();
    let records = fx.records();
    let blocks: Vec<u64> = records.iter().map(|r| r.block).collect();
    assert_eq!(blocks, [0, 2, 1]);
    let sealed = fx.layout.sealed_block_size() as usize;
    let at = |i: usize| fx.layout.block_offset(i as u64) as usize;
    assert_eq!(records[0].stored, before[at(0)..at(0) + sealed]);
    assert_eq!(records[1].stored, before[at(2)..at(2) + sealed]);
    assert!(a.appended() && b.appended());
}

#[test]
fn appends_follow_a_lone_journal_s_records_and_zeros() {
    let fx = fixture();
    fx.df(None).write_at(0, &pattern(3, 4 * BS)).unwrap();
    let lone = fx.store.keeper(ID);
    fx.df(None)
        .with_undo(Some(&lone as &dyn UndoLedger))
        .write_at(0, b"x")
        .unwrap();
    assert_eq!(fx.records().len(), 1);
    let journal = std::fs::metadata(fx._dir.path().join(UNDO_PATH))
        .unwrap()
        .len();
    assert!(
        journal > 2 * BS as u64,
        "zeros ahead of the lone keeper's records"
    );
    let shared = fx.mount();
    fx.df(Some(&shared)).write_at(3 * BS as u64, b"y").unwrap();
    let blocks: Vec<u64> = fx.records().iter().map(|r| r.block).collect();
    assert_eq!(blocks, [0, 3]);
}

/// Mount A rewrites block 1, mount B rewrites it again, then B's next rewrite is torn at every
/// 512-byte boundary: the mend puts back B's copy (the version A's write left), never A's
/// older one, and the file reads.
#[test]
fn a_torn_rewrite_is_mended_from_the_last_copy() {
    let fx = fixture();
    let (a, b) = (fx.mount(), fx.mount());
    let mut plain = pattern(4, 3 * BS);
    fx.df(None).write_at(0, &plain).unwrap();
    fx.df(Some(&a))
        .write_at(BS as u64, &pattern(5, BS))
        .unwrap();
    fx.df(Some(&b))
        .write_at(BS as u64 + 100, &pattern(6, 200))
        .unwrap();
    plain[BS..2 * BS].copy_from_slice(&pattern(5, BS));
    plain[BS + 100..BS + 300].copy_from_slice(&pattern(6, 200));
    let before = fx.backing();
    fx.df(Some(&b))
        .write_at(BS as u64, &pattern(7, BS))
        .unwrap();
    let after = fx.backing();
    let journal_after = std::fs::read(fx._dir.path().join(UNDO_PATH)).unwrap();
    let (start, end) = (
        fx.layout.block_offset(1) as usize,
        fx.layout.block_offset(2) as usize,
    );
    let mut mended = 0;
    for cut in (start.next_multiple_of(512)..end).step_by(512) {
        let mut torn = after[..cut].to_vec();
        torn.extend_from_slice(&before[cut..]);
        fx.set_backing(&torn);
        std::fs::write(fx._dir.path().join(UNDO_PATH), &journal_after).unwrap();
        assert!(fx.read_all().is_err(), "torn at {cut}");
        let keeper = fx.mount();
        let plan = keeper.settle(&fx.df(None), true).unwrap();
        assert_eq!(plan.restore.len(), 1, "torn at {cut}");
        assert_eq!(fx.read_all().unwrap(), plain, "torn at {cut}");
        assert!(fx.records().is_empty(), "settled at {cut}");
        mended += 1;
    }
    assert!(mended >= 7);
}

#[test]
fn settling_cuts_the_journal_back() {
    let fx = fixture();
    let a = fx.mount();
    fx.df(None).write_at(0, &pattern(8, 2 * BS)).unwrap();
    fx.df(Some(&a)).write_at(0, b"z").unwrap();
    assert_eq!(fx.records().len(), 1);
    let plan = a.settle(&fx.df(None), false).unwrap();
    assert!(plan.is_empty());
    assert!(fx.records().is_empty());
    assert!(!a.appended());
    // The next write appends after the preamble again.
    fx.df(Some(&a)).write_at(BS as u64, b"w").unwrap();
    let blocks: Vec<u64> = fx.records().iter().map(|r| r.block).collect();
    assert_eq!(blocks, [1]);
}

/// With no copy, a torn block at the end (an append a crash tore) is cut; one followed by
/// blocks that read (tampering, or a block another mount made durable after it) is not.
#[test]
fn a_torn_tail_without_copies_is_cut_but_not_a_torn_middle() {
    let fx = fixture();
    let plain = pattern(9, 4 * BS);
    fx.df(None).write_at(0, &plain).unwrap();
    let sound = fx.backing();
    let tail = fx.layout.block_offset(3) as usize + 700;
    let mut torn = sound.clone();
    torn[tail] ^= 0x40;
    fx.set_backing(&torn);
    let plan = fx.mount().settle(&fx.df(None), true).unwrap();
    assert_eq!(plan.cut_to, Some(fx.layout.block_offset(3)));
    assert_eq!(fx.read_all().unwrap(), plain[..3 * BS]);

    let mut torn = sound;
    torn[fx.layout.block_offset(1) as usize + 9] ^= 0x40;
    fx.set_backing(&torn);
    let keeper = fx.mount();
    assert!(!keeper.fruitless(&fx.data.metadata().unwrap()));
    let plan = keeper.settle(&fx.df(None), true).unwrap();
    assert!(plan.is_empty());
    assert!(fx.read_all().is_err());
    // Until the file changes, no read of it mends again.
    assert!(keeper.fruitless(&fx.data.metadata().unwrap()));
    fx.df(None).write_at(0, b"changed").unwrap();
    assert!(!keeper.fruitless(&fx.data.metadata().unwrap()));
}

/// `sealfs.undo/<id>` of `ID`.
const UNDO_PATH: &str = "sealfs.undo/52525252525252525252525252525252";

/// A mount's next append finds where the records end now, whatever another mount did since:
/// appended after them, or cut the journal back and appended fewer bytes (leaving zeros where
/// this mount's records ended).
#[test]
fn an_append_finds_the_end_another_mount_moved() {
    let fx = fixture();
    let (a, b) = (fx.mount(), fx.mount());
    fx.df(None).write_at(0, &pattern(10, 2 * BS + 100)).unwrap();
    fx.df(Some(&a)).write_at(0, b"a").unwrap();
    fx.df(Some(&b)).write_at(BS as u64, b"b").unwrap();
    fx.df(Some(&a)).write_at(2, b"a").unwrap();
    let blocks: Vec<u64> = fx.records().iter().map(|r| r.block).collect();
    assert_eq!(blocks, [0, 1, 0]);
    // B settles, then copies the short last block: its records end before A's did.
    b.settle(&fx.df(None), false).unwrap();
    fx.df(Some(&b)).write_at(2 * BS as u64 + 5, b"b").unwrap();
    assert_eq!(fx.records()[0].stored.len(), 100 + 28);
    fx.df(Some(&a)).write_at(BS as u64 + 7, b"a").unwrap();
    let blocks: Vec<u64> = fx.records().iter().map(|r| r.block).collect();
    assert_eq!(blocks, [2, 1]);
}
