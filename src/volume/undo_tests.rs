//! Tests of the undo journal: writes torn at every 512-byte boundary, mended.

use super::*;
use crate::crypto::{Sealer, SecretKey};
use crate::io::{DataFile, Holes, UndoLedger};
use std::os::unix::fs::FileExt;

const ID: Id = [0x37; 16];
const BS: usize = 4096;

struct Fixture {
    _dir: tempfile::TempDir,
    store: Arc<UndoStore>,
    data: File,
    sealer: Sealer,
    layout: Layout,
}

fn fixture() -> Fixture {
    fixture_with(false)
}

/// `written_back`: the journal's carried-over copies are written back before the data's
/// fsync instead of flushed (as on ext4 and XFS).
fn fixture_with(written_back: bool) -> Fixture {
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
        store: Arc::new(UndoStore::open(&root, written_back).unwrap()),
        _dir: dir,
        data,
        sealer: Sealer::new(&SecretKey::from_array([4; 32])),
        layout: Layout::new(BS as u32).unwrap(),
    }
}

impl Fixture {
    fn df<'a>(&'a self, undo: Option<&'a FileUndo>) -> DataFile<'a> {
        DataFile::new(
            &self.data,
            self.layout,
            &ID,
            &self.sealer,
            Holes::AnyZeroBlock,
        )
        .with_undo(undo.map(|u| u as &dyn UndoLedger))
    }

    fn backing(&self) -> Vec<u8> {
        std::fs::read(format!(
            "/proc/self/fd/{}",
            std::os::fd::AsRawFd::as_raw_fd(&self.data)
        ))
        .unwrap()
    }

    fn set_backing(&self, bytes: &[u8]) {
        self.data.set_len(0).unwrap();
        self.data.write_all_at(bytes, 0).unwrap();
    }
}

fn pattern(seed: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) | 1)
        .collect()
}

/// Every block of `got` is that block of `old` or of `new` (or, past `old`, zeros: an
/// extended file whose data did not land, as ext4 shows it), and nothing of `old` (acked)
/// is missing.
fn each_block_old_or_new(got: &[u8], old: &[u8], new: &[u8]) -> bool {
    got.len() >= old.len()
        && got.chunks(BS).enumerate().all(|(i, block)| {
            let of = |v: &[u8]| {
                v.get(i * BS..(i * BS + BS).min(v.len()))
                    .map(<[u8]>::to_vec)
            };
            of(old).as_deref() == Some(block)
                || of(new).as_deref() == Some(block)
                || i * BS >= old.len() && block.iter().all(|&b| b == 0)
        })
}

/// A write torn at every 512-byte boundary, its unwritten rest the old bytes, and past the
/// old end nothing or zeros (an extended file whose data did not land): after recovery from the journal the
/// file reads, and every block is its fsynced or its new version.
fn torn_writes_recover(old: &[u8], writes: &[(u64, Vec<u8>)]) {
    torn_writes_recover_with(old, &[], writes, false);
}

/// As `torn_writes_recover`, after the epochs `before` (each write followed by an fsync, so
/// that copies are carried over), and with `in_fsync`: the tear comes during the fsync that
/// follows the last write (its carry-over made durable, the data not).
fn torn_writes_recover_with(
    old: &[u8],
    before: &[(u64, Vec<u8>)],
    writes: &[(u64, Vec<u8>)],
    in_fsync: bool,
) {
    let fx = fixture();
    let undo = fx.store.keeper(ID);
    fx.df(Some(&undo)).write_at(0, old).unwrap();
    fx.df(Some(&undo)).sync(true).unwrap();
    let mut old = old.to_vec();
    for (offset, data) in before {
        fx.df(Some(&undo)).write_at(*offset, data).unwrap();
        fx.df(Some(&undo)).sync(true).unwrap();
        let end = *offset as usize + data.len();
        old.resize(old.len().max(end), 0);
        old[*offset as usize..end].copy_from_slice(data);
    }
    let old = &old[..];
    let (last, earlier) = writes.split_last().unwrap();
    let mut expected = old.to_vec();
    for (offset, data) in earlier {
        fx.df(Some(&undo)).write_at(*offset, data).unwrap();
        expected.resize(expected.len().max(*offset as usize + data.len()), 0);
        expected[*offset as usize..*offset as usize + data.len()].copy_from_slice(data);
    }
    let pre = fx.backing();
    fx.df(Some(&undo)).write_at(last.0, &last.1).unwrap();
    let post = fx.backing();
    if in_fsync {
        fx.df(Some(&undo)).sync(true).unwrap();
    }
    let end = (last.0 as usize + last.1.len()).max(expected.len());
    expected.resize(end, 0);
    expected[last.0 as usize..last.0 as usize + last.1.len()].copy_from_slice(&last.1);
    let records = fx.store.records(&ID, &fx.layout).unwrap();
    let first_diff = pre
        .iter()
        .zip(&post)
        .position(|(a, b)| a != b)
        .unwrap_or(pre.len());
    let mut checked = 0;
    for cut in (first_diff / 512 * 512..post.len()).step_by(512).skip(1) {
        for zeros in [false, true] {
            let mut torn = post[..cut].to_vec();
            if pre.len() > cut {
                torn.extend_from_slice(&pre[cut..]);
            }
            if zeros {
                torn.resize(torn.len().max(post.len()), 0);
            }
            fx.set_backing(&torn);
            let df = fx.df(None);
            let plan = df.recovery(&records).unwrap();
            df.recover(&plan).unwrap();
            let size = df.plain_size().unwrap();
            let got = df
                .read_at(0, size as usize)
                .unwrap_or_else(|e| panic!("cut at {cut} (zeros {zeros}): {e}; {plan:?}"));
            assert!(
                each_block_old_or_new(&got, old, &expected),
                "cut at {cut} (zeros {zeros}): {} bytes back; {plan:?}; records {:?}",
                got.len(),
                records
                    .iter()
                    .map(|r| (r.block, r.backing_len, r.stored.len()))
                    .collect::<Vec<_>>()
            );
            checked += 1;
        }
    }
    assert!(checked > 0);
}

#[test]
fn an_append_torn_anywhere_keeps_the_fsynced_tail() {
    let old = pattern(1, 3 * BS + 1000);
    torn_writes_recover(&old, &[(old.len() as u64, pattern(2, 37))]);
    // An append that fills the tail block and starts new ones.
    torn_writes_recover(&old, &[(old.len() as u64, pattern(3, 2 * BS + 500))]);
    // A second append since the fsync rewrites a block copied already.
    torn_writes_recover(
        &old,
        &[
            (old.len() as u64, pattern(4, 37)),
            (old.len() as u64 + 37, pattern(5, 37)),
        ],
    );
}

#[test]
fn overwrites_torn_anywhere_keep_the_fsynced_blocks() {
    let old = pattern(6, 4 * BS);
    torn_writes_recover(&old, &[(BS as u64 + 77, pattern(7, 100))]);
    torn_writes_recover(&old, &[(2 * BS as u64, pattern(8, BS))]);
    torn_writes_recover(&old, &[(BS as u64 - 10, pattern(9, 2 * BS + 20))]);
}

#[test]
fn copies_are_made_once_per_epoch_and_never_of_new_blocks() {
    let fx = fixture();
    let undo = fx.store.keeper(ID);
    let df = fx.df(Some(&undo));
    df.write_at(0, &pattern(1, 3 * BS)).unwrap();
    assert!(
        fx.store.records(&ID, &fx.layout).unwrap().is_empty(),
        "new blocks"
    );
    df.write_at(100, b"again").unwrap();
    assert!(
        fx.store.records(&ID, &fx.layout).unwrap().is_empty(),
        "unsynced blocks"
    );
    undo.synced().unwrap();
    df.write_at(100, b"after the sync").unwrap();
    df.write_at(200, b"the same block").unwrap();
    df.write_at(5 * BS as u64, b"past the end").unwrap();
    let records = fx.store.records(&ID, &fx.layout).unwrap();
    assert_eq!(records.len(), 1, "block 0 once; the gap and new block none");
    assert_eq!(records[0].block, 0);
    undo.synced().unwrap();
    assert!(
        fx.store.records(&ID, &fx.layout).unwrap().is_empty(),
        "spent"
    );
    // A sound file needs no recovery, whatever the journal holds.
    df.write_at(10, b"x").unwrap();
    let records = fx.store.records(&ID, &fx.layout).unwrap();
    assert!(fx.df(None).recovery(&records).unwrap().is_empty());
}

#[test]
fn copies_carried_over_an_fsync_protect_the_next_appends() {
    let old = pattern(11, 3 * BS + 1000);
    let at = old.len() as u64;
    let before = [(at, pattern(12, 37)), (at + 37, pattern(13, 37))];
    // The third append after two fsyncs finds the tail block copied already.
    torn_writes_recover_with(&old, &before, &[(at + 74, pattern(14, 37))], false);
    torn_writes_recover_with(&old, &before, &[(at + 74, pattern(15, 2 * BS))], false);
    // Torn during the fsync whose copies were carried over.
    torn_writes_recover_with(&old, &before, &[(at + 74, pattern(16, 37))], true);
    torn_writes_recover_with(&old, &before, &[(at + 74, pattern(17, BS + 9))], true);
    // Overwrites of the same block, epoch after epoch (a database's header page).
    let page = [(100, pattern(18, 50)), (120, pattern(19, 50))];
    torn_writes_recover_with(&old, &page, &[(140, pattern(20, 50))], false);
    torn_writes_recover_with(&old, &page, &[(140, pattern(21, 50))], true);
}

#[test]
fn an_append_after_an_fsync_copies_nothing_once_carried_over() {
    carried_over_appends(fixture());
    carried_over_appends(fixture_with(true));
}

fn carried_over_appends(fx: Fixture) {
    let undo = fx.store.keeper(ID);
    let df = fx.df(Some(&undo));
    df.write_at(0, &pattern(1, BS + 100)).unwrap();
    df.sync(true).unwrap();
    let records = || fx.store.records(&ID, &fx.layout).unwrap().len();
    let journal = fx._dir.path().join(UNDO_DIR).join(id_to_hex(&ID));
    let mut end = BS as u64 + 100;
    df.write_at(end, b"first").unwrap();
    end += 5;
    assert_eq!(records(), 1, "the tail block is copied");
    df.sync(true).unwrap();
    assert_eq!(records(), 2, "and carried over at the fsync");
    let allocated = std::fs::metadata(&journal).unwrap().len();
    for _ in 0..3 {
        let before = records();
        df.write_at(end, b"again").unwrap();
        end += 5;
        assert_eq!(records(), before, "the append finds its copy");
        df.sync(true).unwrap();
        assert_eq!(records(), before + 1, "carried over again");
    }
    assert_eq!(
        std::fs::metadata(&journal).unwrap().len(),
        allocated,
        "appended in place"
    );
    // The last handle closes with nothing written since the fsync: the journal goes.
    undo.closed();
    assert!(!journal.exists());
    assert_eq!(
        fx.df(None).read_at(0, end as usize).unwrap().len(),
        end as usize
    );
}

#[test]
fn a_sequential_overwrite_copies_ahead() {
    let fx = fixture();
    let undo = fx.store.keeper(ID);
    let df = fx.df(Some(&undo));
    let old = pattern(2, 64 * BS);
    df.write_at(0, &old).unwrap();
    df.sync(true).unwrap();
    let mut copies = Vec::new();
    for i in 0..16u64 {
        df.write_at(i * 4 * BS as u64, &pattern(3, 4 * BS)).unwrap();
        copies.push(fx.store.records(&ID, &fx.layout).unwrap().len());
    }
    // 4 blocks, then 8 more ahead, then 16, 32: the writes between find theirs copied.
    assert_eq!(&copies[..4], &[4, 12, 12, 28]);
    assert_eq!(*copies.last().unwrap(), 64, "each block copied once");
    let mut blocks: Vec<u64> = fx
        .store
        .records(&ID, &fx.layout)
        .unwrap()
        .iter()
        .map(|r| r.block)
        .collect();
    blocks.dedup();
    assert_eq!(blocks, (0..64).collect::<Vec<_>>());
}

/// A long sequential overwrite copies its windows on a thread of its own, ahead of the
/// writer: every block is still copied once, as it was, before it is written.
#[test]
fn a_long_sequential_overwrite_copies_ahead_on_a_thread_of_its_own() {
    let fx = fixture();
    let undo = fx.store.keeper(ID);
    let df = fx.df(Some(&undo));
    let blocks = 3000u64;
    df.write_at(0, &pattern(4, blocks as usize * BS)).unwrap();
    df.sync(true).unwrap();
    let before = fx.backing();
    for i in 0..blocks / 16 + 1 {
        df.write_at(i * 16 * BS as u64, &pattern(5, 16 * BS))
            .unwrap();
    }
    undo.closed();
    let records = fx.store.records(&ID, &fx.layout).unwrap();
    let sealed = fx.layout.sealed_block_size() as usize;
    let mut seen = vec![0u32; blocks as usize];
    for r in &records {
        seen[r.block as usize] += 1;
        let at = fx.layout.block_offset(r.block) as usize;
        assert_eq!(r.stored, before[at..at + sealed], "block {}", r.block);
    }
    assert!(seen.iter().all(|&n| n == 1), "each block copied once");
}

#[test]
fn a_journal_cut_back_in_place_never_shows_older_records_after_newer() {
    let fx = fixture();
    let undo = fx.store.keeper(ID);
    let df = fx.df(Some(&undo));
    df.write_at(0, &pattern(1, 40 * BS)).unwrap();
    df.sync(true).unwrap();
    // 40 blocks rewritten: too many to carry over; the fsync cuts the journal back.
    for i in 0..40u64 {
        df.write_at(i * BS as u64, &pattern(2, 10)).unwrap();
    }
    assert_eq!(fx.store.records(&ID, &fx.layout).unwrap().len(), 40);
    df.sync(true).unwrap();
    assert!(fx.store.records(&ID, &fx.layout).unwrap().is_empty());
    df.write_at(5 * BS as u64, &pattern(3, 10)).unwrap();
    let records = fx.store.records(&ID, &fx.layout).unwrap();
    assert_eq!(records.len(), 1, "the new record alone");
    assert_eq!(records[0].block, 5);
}

/// After an fsync cut the journal back, the next epoch's second append is torn by a crash
/// while a block its first append copied is torn too: what follows the torn append must not
/// be the older epoch's records, which would parse (records of one size line up) and put
/// that block back as it was two fsyncs before (found by the rewrite workload of
/// tests/powercut.rs).
#[test]
fn a_torn_append_never_reaches_an_older_epoch_s_records() {
    let fx = fixture();
    let undo = fx.store.keeper(ID);
    let df = fx.df(Some(&undo));
    let mut acked = pattern(1, 64 * BS);
    df.write_at(0, &acked).unwrap();
    df.sync(true).unwrap();
    // Epoch A: records of blocks 10, 20 and 5, in that order, then of 40 more (too many to
    // carry over: its fsync cuts the journal back).
    for block in [10u64, 20, 5].into_iter().chain((23..63).rev()) {
        df.write_at(block * BS as u64, &pattern(2, BS)).unwrap();
        acked[block as usize * BS..][..BS].copy_from_slice(&pattern(2, BS));
    }
    df.sync(true).unwrap();
    // Epoch B: block 5 copied and rewritten, then block 10's copy appended.
    let path = fx
        ._dir
        .path()
        .join(UNDO_DIR)
        .join(crate::format::id_to_hex(&ID));
    let before_5 = fx.backing();
    df.write_at(5 * BS as u64, &pattern(3, BS)).unwrap();
    let after_5 = fx.backing();
    let journal_before = std::fs::read(&path).unwrap();
    df.write_at(10 * BS as u64, &pattern(3, BS)).unwrap();
    let journal_after = std::fs::read(&path).unwrap();
    // The crash: block 5's rewrite torn, block 10's copy torn 512 bytes in (its rewrite
    // never came).
    let second = undo::PREAMBLE_LEN as usize
        + undo::RECORD_HEAD_LEN
        + fx.layout.sealed_block_size() as usize;
    let mut torn_journal = journal_after[..second + 512].to_vec();
    torn_journal.extend_from_slice(&journal_before[second + 512..]);
    std::fs::write(&path, &torn_journal).unwrap();
    let at = fx.layout.block_offset(5) as usize;
    let mut torn = before_5.clone();
    torn[at..at + 2048].copy_from_slice(&after_5[at..at + 2048]);
    fx.set_backing(&torn);
    let records = fx.store.records(&ID, &fx.layout).unwrap();
    let plan = fx.df(None).recovery(&records).unwrap();
    fx.df(None).recover(&plan).unwrap();
    let got = fx.df(None).read_at(0, acked.len()).unwrap();
    assert!(
        got == acked,
        "block 5 came back as it was two fsyncs before"
    );
}

/// A file grown in the epoch (a truncate up, a fallocate: fio lays its files out so) holds
/// nothing acknowledged past its old end: writes there copy nothing; a block that was there
/// before is still copied.
#[test]
fn blocks_a_file_grew_by_in_the_epoch_are_not_copied() {
    let fx = fixture();
    let undo = fx.store.keeper(ID);
    let df = fx.df(Some(&undo));
    df.write_at(0, &pattern(1, 4 * BS)).unwrap();
    df.sync(true).unwrap();
    df.allocate(0, 64 * BS as u64, false).unwrap();
    df.write_at(8 * BS as u64, &pattern(2, 32 * BS)).unwrap();
    assert!(fx.store.records(&ID, &fx.layout).unwrap().is_empty());
    df.write_at(BS as u64, b"x").unwrap();
    let blocks: Vec<u64> = fx
        .store
        .records(&ID, &fx.layout)
        .unwrap()
        .iter()
        .map(|r| r.block)
        .collect();
    assert_eq!(blocks, [1]);
}
