//! Tests of the undo journal: writes torn at every 512-byte boundary, mended.

use super::*;
use crate::crypto::{Sealer, SecretKey};
use crate::io::{DataFile, Holes};
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
        store: Arc::new(UndoStore::open(&root).unwrap()),
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

/// Every block of `got` is that block of `old` or of `new`, and nothing of `old` (acked)
/// is missing.
fn each_block_old_or_new(got: &[u8], old: &[u8], new: &[u8]) -> bool {
    got.len() >= old.len()
        && got.chunks(BS).enumerate().all(|(i, block)| {
            let of = |v: &[u8]| {
                v.get(i * BS..(i * BS + BS).min(v.len()))
                    .map(<[u8]>::to_vec)
            };
            of(old).as_deref() == Some(block) || of(new).as_deref() == Some(block)
        })
}

/// A write torn at every 512-byte boundary, its unwritten rest the old bytes, and past the
/// old end nothing or zeros (an extended file whose data did not land): after recovery from the journal the
/// file reads, and every block is its fsynced or its new version.
fn torn_writes_recover(old: &[u8], writes: &[(u64, Vec<u8>)]) {
    let fx = fixture();
    let undo = fx.store.keeper(ID);
    fx.df(Some(&undo)).write_at(0, old).unwrap();
    fx.data.sync_data().unwrap();
    undo.synced().unwrap();
    let (last, earlier) = writes.split_last().unwrap();
    let mut expected = old.to_vec();
    for (offset, data) in earlier {
        fx.df(Some(&undo)).write_at(*offset, data).unwrap();
    }
    let pre = fx.backing();
    fx.df(Some(&undo)).write_at(last.0, &last.1).unwrap();
    let post = fx.backing();
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
                "cut at {cut} (zeros {zeros}): {} bytes back",
                got.len()
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
