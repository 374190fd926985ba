//! fallocate(2) on a real mount against the same calls on a model file on the host's own
//! filesystem (ext4 in CI): random sequences of writes, truncates, allocations, PUNCH_HOLE and
//! ZERO_RANGE, compared byte for byte after every step and after a remount; COLLAPSE_RANGE and
//! INSERT_RANGE are refused with EOPNOTSUPP; punched blocks are holes SEEK_HOLE finds.

mod common;

use std::fs::{self, File, OpenOptions};
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;

use common::{Rng, TestVolume};

const MAX_END: u64 = 300_000;

fn fallocate(file: &File, mode: i32, offset: u64, len: u64) -> std::io::Result<()> {
    // SAFETY: a valid descriptor; fallocate takes no pointers.
    let rc = unsafe { libc::fallocate(file.as_raw_fd(), mode, offset as i64, len as i64) };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

fn open(path: &std::path::Path) -> File {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .unwrap()
}

#[test]
fn punch_and_zero_range_match_a_model_file() {
    let vol = TestVolume::new();
    let m = vol.mount();
    // The model on the machine's disk (ext4), wherever the cipher dir is: tmpfs, for one,
    // has no ZERO_RANGE, which sealfs gives on any backing store.
    let model_dir = tempfile::tempdir().unwrap();
    let model_path = model_dir.path().join("model");
    let (sealed, model) = (open(&m.p("f")), open(&model_path));
    let mut rng = Rng(0x5ea1_f00d);
    let modes = [
        (
            "punch",
            libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
        ),
        ("zero", libc::FALLOC_FL_ZERO_RANGE),
        (
            "zero-keep",
            libc::FALLOC_FL_ZERO_RANGE | libc::FALLOC_FL_KEEP_SIZE,
        ),
        ("allocate", 0),
        ("allocate-keep", libc::FALLOC_FL_KEEP_SIZE),
    ];
    for step in 0..300 {
        let offset = rng.below(MAX_END);
        let len = 1 + rng.below(40_000);
        let what = match rng.below(4) {
            0 => {
                let data: Vec<u8> = (0..len).map(|_| rng.next() as u8 | 1).collect();
                sealed.write_all_at(&data, offset).unwrap();
                model.write_all_at(&data, offset).unwrap();
                "write".to_string()
            }
            1 => {
                sealed.set_len(offset).unwrap();
                model.set_len(offset).unwrap();
                "truncate".to_string()
            }
            _ => {
                let (name, mode) = modes[rng.below(modes.len() as u64) as usize];
                let ours = fallocate(&sealed, mode, offset, len);
                let theirs = fallocate(&model, mode, offset, len);
                assert_eq!(
                    ours.as_ref().map_err(|e| e.raw_os_error()),
                    theirs.as_ref().map_err(|e| e.raw_os_error()),
                    "step {step}: {name} {offset}+{len}"
                );
                format!("{name} {offset}+{len}")
            }
        };
        let (ours, theirs) = (fs::read(m.p("f")).unwrap(), fs::read(&model_path).unwrap());
        assert_eq!(ours.len(), theirs.len(), "step {step} ({what}): size");
        assert!(ours == theirs, "step {step} ({what}): contents differ");
    }
    drop(sealed);
    m.unmount();
    let m = vol.mount();
    assert!(
        fs::read(m.p("f")).unwrap() == fs::read(&model_path).unwrap(),
        "after a remount"
    );
    m.unmount();
    vol.assert_fsck_clean();
}

#[test]
fn punched_blocks_are_holes_and_shifting_modes_are_refused() {
    const MIB: u64 = 1 << 20;
    let vol = TestVolume::with_args(&[]);
    let m = vol.mount_with(&["--no-writeback-cache"]);
    let file = open(&m.p("f"));
    file.write_all_at(&vec![7u8; (4 * MIB) as usize], 0)
        .unwrap();
    file.sync_all().unwrap();
    fallocate(
        &file,
        libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
        MIB,
        2 * MIB,
    )
    .unwrap();
    assert_eq!(file.metadata().unwrap().len(), 4 * MIB);
    // SAFETY: a valid descriptor.
    let hole = unsafe { libc::lseek(file.as_raw_fd(), 0, libc::SEEK_HOLE) } as u64;
    assert!(
        (MIB..MIB + 8192).contains(&hole),
        "the punched range starts a hole: {hole}"
    );
    // SAFETY: as above.
    let data = unsafe { libc::lseek(file.as_raw_fd(), hole as i64, libc::SEEK_DATA) } as u64;
    assert!(
        (3 * MIB - 8192..=3 * MIB).contains(&data),
        "data again: {data}"
    );
    let mut back = vec![1u8; (4 * MIB) as usize];
    file.read_exact_at(&mut back, 0).unwrap();
    assert!(back[..MIB as usize].iter().all(|&b| b == 7));
    assert!(back[MIB as usize..3 * MIB as usize].iter().all(|&b| b == 0));
    assert!(back[3 * MIB as usize..].iter().all(|&b| b == 7));
    // The backing file gave the space back.
    let backing_blocks = common::files_under(&vol.cipher)
        .into_iter()
        .filter(|p| !p.to_string_lossy().contains("sealfs."))
        .map(|p| std::os::unix::fs::MetadataExt::blocks(&fs::metadata(p).unwrap()))
        .max()
        .unwrap();
    assert!(
        backing_blocks * 512 < 3 * MIB,
        "punched blocks are not stored: {backing_blocks} sectors"
    );
    for mode in [libc::FALLOC_FL_COLLAPSE_RANGE, libc::FALLOC_FL_INSERT_RANGE] {
        let refused = fallocate(&file, mode, 0, MIB).unwrap_err();
        assert_eq!(refused.raw_os_error(), Some(libc::EOPNOTSUPP));
    }
    drop(file);
    m.unmount();
}
