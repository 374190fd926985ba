//! Tests of `DataFile`: a plain-vector model, holes, seeks, tampering.

use super::*;
use crate::crypto::SecretKey;
use crate::io::holes::{LedgerAccess, Persist};
use crate::io::preamble::write_preamble;
use proptest::prelude::*;

struct Fixture {
    file: File,
    sealer: Sealer,
    id: Id,
    layout: Layout,
    _dir: tempfile::TempDir,
}

impl Fixture {
    fn new(block_size: u32) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(dir.path().join("data"))
            .unwrap();
        let id = [7; 16];
        write_preamble(&file, &id).unwrap();
        Fixture {
            file,
            sealer: Sealer::new(&SecretKey::from_array([1; 32])),
            id,
            layout: Layout::new(block_size).unwrap(),
            _dir: dir,
        }
    }

    fn df(&self) -> DataFile<'_> {
        DataFile::new(
            &self.file,
            self.layout,
            &self.id,
            &self.sealer,
            Holes::AnyZeroBlock,
        )
    }

    /// A version 2 view of the file, its holes kept by `ledger`.
    fn df2<'a>(&'a self, ledger: &'a MapLedger) -> DataFile<'a> {
        DataFile::new(
            &self.file,
            self.layout,
            &self.id,
            &self.sealer,
            Holes::Recorded(ledger),
        )
    }

    /// The blocks stored all-zero, up to the file's last block.
    fn zero_blocks(&self) -> Vec<u64> {
        let size = self.df().plain_size().unwrap();
        let sbs = self.layout.sealed_block_size() as usize;
        let mut bytes = Vec::new();
        std::io::Read::read_to_end(&mut &self.file, &mut bytes).unwrap();
        let _ = std::io::Seek::rewind(&mut &self.file);
        (0..size.div_ceil(self.layout.block_size()))
            .filter(|&b| {
                let at = self.layout.block_offset(b) as usize;
                bytes[at..(at + sbs).min(bytes.len())]
                    .iter()
                    .all(|&x| x == 0)
            })
            .collect()
    }
}

/// The hole ledger of a lone mount, in memory.
#[derive(Default)]
struct MapLedger(std::sync::Mutex<crate::format::holes::HoleMap>);

impl crate::io::HoleLedger for MapLedger {
    fn allows(&self, _: &LedgerAccess<'_>, block: u64) -> Result<bool, IoError> {
        Ok(self.0.lock().unwrap().contains(block))
    }
    fn record(
        &self,
        _: &LedgerAccess<'_>,
        blocks: std::ops::Range<u64>,
        _: Persist,
    ) -> Result<(), IoError> {
        self.0.lock().unwrap().insert(blocks);
        Ok(())
    }
    fn clear(&self, _: &LedgerAccess<'_>, blocks: std::ops::Range<u64>) -> Result<(), IoError> {
        self.0.lock().unwrap().remove(blocks);
        Ok(())
    }
}

impl MapLedger {
    /// The recorded blocks below `end`.
    fn blocks_below(&self, end: u64) -> Vec<u64> {
        self.0
            .lock()
            .unwrap()
            .ranges()
            .flat_map(|r| r.start.min(end)..r.end.min(end))
            .collect()
    }
}

#[derive(Debug, Clone)]
enum Op {
    Write(u64, Vec<u8>),
    Truncate(u64),
    Allocate(u64, u64, bool),
    /// PUNCH_HOLE | KEEP_SIZE (`true`) or ZERO_RANGE without KEEP_SIZE (`false`).
    ZeroRange(u64, u64, bool),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (0u64..5000, proptest::collection::vec(any::<u8>(), 1..3000))
            .prop_map(|(o, d)| Op::Write(o, d)),
        (0u64..6000).prop_map(Op::Truncate),
        (0u64..6000, 1u64..3000, any::<bool>()).prop_map(|(o, l, k)| Op::Allocate(o, l, k)),
        (0u64..6000, 1u64..3000, any::<bool>()).prop_map(|(o, l, k)| Op::ZeroRange(o, l, k)),
    ]
}

/// Applies `op` to the data file and to `model`, the plaintext it must hold.
fn apply(df: &DataFile<'_>, op: Op, model: &mut Vec<u8>) {
    match op {
        Op::Write(o, d) => {
            df.write_at(o, &d).unwrap();
            let end = o as usize + d.len();
            if model.len() < end {
                model.resize(end, 0);
            }
            model[o as usize..end].copy_from_slice(&d);
        }
        Op::Truncate(n) => {
            df.truncate(n).unwrap();
            model.resize(n as usize, 0);
        }
        Op::ZeroRange(o, l, keep_size) => {
            df.zero_range(o, l, keep_size).unwrap();
            let end = (o + l) as usize;
            if !keep_size && model.len() < end {
                model.resize(end, 0);
            }
            let stop = end.min(model.len());
            if (o as usize) < stop {
                model[o as usize..stop].fill(0);
            }
        }
        Op::Allocate(o, l, keep_size) => {
            df.allocate(o, l, keep_size).unwrap();
            if !keep_size && model.len() < (o + l) as usize {
                model.resize((o + l) as usize, 0);
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]
    #[test]
    fn matches_a_plain_vec_model(ops in proptest::collection::vec(op(), 1..12)) {
        let fx = Fixture::new(512);
        let df = fx.df();
        let mut model: Vec<u8> = Vec::new();
        for op in ops {
            apply(&df, op, &mut model);
            prop_assert_eq!(df.plain_size().unwrap(), model.len() as u64);
            prop_assert_eq!(df.read_at(0, model.len() + 10).unwrap(), model.clone());
        }
    }

    /// Version 2: the same model, and after every step the hole map records exactly the
    /// blocks stored as zeros (so every hole reads, and nothing else may be zero).
    #[test]
    fn version_2_records_exactly_its_holes(ops in proptest::collection::vec(op(), 1..12)) {
        let fx = Fixture::new(512);
        let ledger = MapLedger::default();
        let df = fx.df2(&ledger);
        let mut model: Vec<u8> = Vec::new();
        for op in ops {
            apply(&df, op, &mut model);
            prop_assert_eq!(df.read_at(0, model.len() + 10).unwrap(), model.clone());
            let blocks = (model.len() as u64).div_ceil(512);
            prop_assert_eq!(ledger.blocks_below(blocks), fx.zero_blocks());
            prop_assert!(ledger.blocks_below(u64::MAX).iter().all(|&b| b < blocks), "nothing past the end");
        }
    }

    /// SEEK_DATA never lands past data, SEEK_HOLE never inside it (block granularity).
    #[test]
    fn seeks_never_report_data_as_a_hole(
        writes in proptest::collection::vec((0u64..64, 1u64..3), 1..6),
        probe in 0u64..(64 * 512),
    ) {
        let fx = Fixture::new(512);
        let df = fx.df();
        let mut written = [false; 66];
        for (block, count) in writes {
            df.write_at(block * 512, &vec![1u8; (count * 512) as usize]).unwrap();
            for b in block..block + count { written[b as usize] = true; }
        }
        let size = df.plain_size().unwrap();
        match df.seek(probe, SeekTo::Data) {
            Ok(pos) => {
                prop_assert!(pos >= probe && pos < size);
                // Nothing written between probe and pos.
                for b in probe / 512..pos / 512 { prop_assert!(!written[b as usize]); }
                // A data extent never ends where it starts (cp would loop).
                prop_assert!(df.seek(pos, SeekTo::Hole).unwrap() > pos);
            }
            Err(IoError::PastEnd) => {
                for b in probe / 512..size.div_ceil(512) { prop_assert!(!written[b as usize]); }
            }
            Err(e) => prop_assert!(false, "{e}"),
        }
        if probe < size {
            let hole = df.seek(probe, SeekTo::Hole).unwrap();
            prop_assert!(hole >= probe && hole <= size);
            if hole < size { prop_assert!(!written[(hole / 512) as usize]); }
        } else {
            prop_assert!(matches!(df.seek(probe, SeekTo::Hole), Err(IoError::PastEnd)));
        }
    }
}

/// One byte in block 4 of an empty file (4 KiB blocks): the backing page holding the
/// end of block 3 holds block 4's start, yet block 3 is a hole. SEEK_DATA from block 1
/// says block 4, and SEEK_HOLE from there says the end (it once said 12288 for both, and
/// `cp` looped on the empty extent for ever; the harness found it on a shared mount).
#[test]
fn data_and_holes_agree_where_a_page_holds_two_blocks() {
    let fx = Fixture::new(4096);
    let df = fx.df();
    df.write_at(17_918, &[1]).unwrap();
    assert_eq!(df.seek(4096, SeekTo::Data).unwrap(), 16_384);
    assert_eq!(df.seek(16_384, SeekTo::Hole).unwrap(), 17_919);
    // Block 0 shares its first page with the preamble: counted as data (allowed).
    assert_eq!(df.seek(0, SeekTo::Hole).unwrap(), 4096);
    assert_eq!(df.seek(12_288, SeekTo::Hole).unwrap(), 12_288);
}

#[test]
fn large_parallel_write_round_trips() {
    let fx = Fixture::new(4096);
    let data: Vec<u8> = (0..1 << 20).map(|i| (i * 31 % 251) as u8).collect();
    fx.df().write_at(100, &data).unwrap();
    assert_eq!(fx.df().read_at(100, data.len()).unwrap(), data);
    assert_eq!(fx.df().read_at(0, 100).unwrap(), vec![0; 100]);
}

#[test]
fn flipped_bit_and_moved_block_give_integrity_errors() {
    let fx = Fixture::new(512);
    fx.df().write_at(0, &[0x55; 2048]).unwrap();
    let mut byte = [0u8; 1];
    let at = PREAMBLE_LEN + 600;
    fx.file.read_exact_at(&mut byte, at).unwrap();
    fx.file.write_all_at(&[byte[0] ^ 4], at).unwrap();
    assert!(matches!(
        fx.df().read_at(0, 2048),
        Err(IoError::Integrity { block: 1, .. })
    ));
    assert!(fx.df().read_at(0, 512).is_ok());
    // Copy block 2 over block 3: same key, wrong position.
    let sbs = fx.layout.sealed_block_size() as usize;
    let mut block = vec![0u8; sbs];
    fx.file
        .read_exact_at(&mut block, fx.layout.block_offset(2))
        .unwrap();
    fx.file
        .write_all_at(&block, fx.layout.block_offset(3))
        .unwrap();
    assert!(matches!(
        fx.df().read_at(1536, 512),
        Err(IoError::Integrity { block: 3, .. })
    ));
}

/// A written block zeroed in the data file reads as EIO in a version 2 file (as zeros in
/// a version 1 file, whose holes are not recorded); a recorded hole still reads as zeros.
#[test]
fn a_zeroed_block_is_not_a_hole_unless_recorded() {
    let fx = Fixture::new(512);
    let ledger = MapLedger::default();
    let df = fx.df2(&ledger);
    df.write_at(0, &[7u8; 2048]).unwrap();
    df.write_at(8 * 512, b"after a gap").unwrap();
    assert_eq!(ledger.blocks_below(100), vec![4, 5, 6, 7]);
    let sbs = fx.layout.sealed_block_size() as usize;
    fx.file
        .write_all_at(&vec![0u8; sbs], fx.layout.block_offset(1))
        .unwrap();
    assert!(matches!(
        df.read_at(0, 2048),
        Err(IoError::UnrecordedHole { block: 1, .. })
    ));
    assert_eq!(df.read_at(5 * 512, 10).unwrap(), vec![0; 10]);
    assert_eq!(fx.df().read_at(512, 4).unwrap(), vec![0; 4], "version 1");
}

#[test]
fn holes_read_as_zeros_and_stay_sparse() {
    let fx = Fixture::new(4096);
    fx.df().write_at(10 << 20, b"end").unwrap();
    assert_eq!(fx.df().plain_size().unwrap(), (10 << 20) + 3);
    assert_eq!(fx.df().read_at(5 << 20, 4).unwrap(), vec![0; 4]);
    assert!(fx.file.metadata().unwrap().blocks() * 512 < 1 << 20);
    assert!(fx.df().seek(0, SeekTo::Hole).unwrap() <= 4096);
    // Block-granular, and a hole sharing a backing page with data may read as data.
    let data = fx.df().seek(5 << 20, SeekTo::Data).unwrap();
    assert!(((10 << 20) - 2 * 4096..=10 << 20).contains(&data), "{data}");
    assert_eq!(fx.df().torn_tail().unwrap(), 0);
}
