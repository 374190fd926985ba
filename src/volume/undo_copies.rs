//! Writing copies into an undo journal (`volume::undo_file` keeps it): the framing of records
//! (zeros ahead, so that appends overwrite in place) and a window of copies written by a
//! copier thread, past the page cache where the backing store allows.

use std::fs::File;
use std::ops::Range;
use std::os::unix::fs::FileExt;

use nix::fcntl::{OFlag, openat};
use nix::sys::stat::Mode;

use crate::format::block::Layout;
use crate::format::holes::HoleMap;
use crate::format::undo;
use crate::io::{IoError, StoredBlocks};

/// The least a journal is grown by: it is written with zeros ahead of its records, so that
/// appending one overwrites bytes in place and its fdatasync commits no metadata (on ext4, no
/// journal commit: the flush can run beside the data file's).
pub(super) const GROW: u64 = 64 << 10;

/// `frame` of records `buf` to be written at `end` of a journal `allocated` bytes long.
pub(super) fn frame_at(buf: &mut Vec<u8>, end: u64, allocated: &mut u64) -> u64 {
    let records = buf.len() as u64;
    buf.extend_from_slice(&[0; undo::RECORD_HEAD_LEN]);
    let needed = end + buf.len() as u64;
    if needed > *allocated {
        *allocated = grown(needed);
        buf.resize((*allocated - end) as usize, 0);
    }
    records
}

/// The length a journal grows to when `needed` bytes of it are: doubling, then by the MiB.
pub(super) fn grown(needed: u64) -> u64 {
    if needed < 1 << 20 {
        needed.next_power_of_two().max(GROW)
    } else {
        needed.next_multiple_of(1 << 20)
    }
}

/// What a copy-ahead on a thread of its own needs: descriptors of its own, where its records
/// go, and what they say.
pub(super) struct Ahead<'f> {
    pub(super) journal: &'f File,
    pub(super) data: &'f File,
    pub(super) layout: Layout,
    pub(super) blocks: Range<u64>,
    /// Those of `blocks` copied already in the epoch: not copied again (a write may be
    /// replacing them right now).
    pub(super) skip: HoleMap,
    pub(super) backing_len: u64,
    pub(super) epoch_len: u64,
    pub(super) end: u64,
    pub(super) allocated: u64,
}

/// What a copier keeps from one window to the next: its buffers (megabytes, faulted in once)
/// and its description of the journal for direct I/O (`None` inside: none to be had).
#[derive(Default)]
pub(super) struct Buffers {
    read: Vec<u8>,
    out: Vec<u8>,
    direct: Option<Option<File>>,
}

/// Direct I/O's alignment: of the file offset, the length and the memory.
const ALIGN: usize = 4096;

impl Ahead<'_> {
    /// Copies the blocks: the records are durable once this returns their end and the
    /// journal's length. They are written past the page cache (O_DIRECT, on a description of
    /// their own) where the backing store allows: a window of copies is megabytes that nothing
    /// reads unless a crash comes, and through the page cache it costs a copy into pages the
    /// writer's own data then competes with. So they are framed in an aligned buffer from the
    /// start of the page the journal's end falls in, whose bytes before the end are read
    /// first.
    pub(super) fn run(mut self, bufs: &mut Buffers) -> Result<(u64, u64), IoError> {
        let stored = StoredBlocks::new(self.data, &self.layout);
        stored.run_into(self.blocks.clone(), self.backing_len, &mut bufs.read)?;
        let sealed = self.layout.sealed_block_size() as usize;
        let start = self.end - self.end % ALIGN as u64;
        let head = (self.end - start) as usize;
        let out = &mut bufs.out;
        out.clear();
        out.reserve(bufs.read.len() + bufs.read.len() / sealed * 32 + head + (2 << 20) + 2 * ALIGN);
        let skew = out.as_ptr().align_offset(ALIGN);
        out.resize(skew + head, 0);
        let whole = crate::io::read_full_at(self.journal, &mut out[skew..], start)? == head;
        let from = out.len();
        for (index, block) in self.blocks.clone().zip(bufs.read.chunks(sealed)) {
            if !self.skip.contains(index) {
                undo::encode_record(index, self.epoch_len, block, out);
            }
        }
        let records = (out.len() - from) as u64;
        // Framed as `frame_at` does, then zeros to the next page.
        out.extend_from_slice(&[0; undo::RECORD_HEAD_LEN]);
        let needed = self.end + (out.len() - from) as u64;
        if needed > self.allocated {
            self.allocated = grown(needed);
            out.resize(from + (self.allocated - self.end) as usize, 0);
        }
        out.resize(skew + (out.len() - skew).next_multiple_of(ALIGN), 0);
        let aligned = (out[skew..].as_ptr() as usize).is_multiple_of(ALIGN);
        let direct = bufs.direct.get_or_insert_with(|| self.open_direct());
        let written = match direct {
            Some(direct) if whole && aligned => match direct.write_all_at(&out[skew..], start) {
                Ok(()) => true,
                Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                    bufs.direct = Some(None);
                    false
                }
                Err(e) => return Err(e.into()),
            },
            _ => false,
        };
        if !written {
            self.journal.write_all_at(&out[from..], self.end)?;
        }
        self.allocated = self.allocated.max(start + (out.len() - skew) as u64);
        self.journal.sync_data()?;
        Ok((self.end + records, self.allocated))
    }

    /// A description of the journal for direct I/O (`None` where the backing store has none).
    fn open_direct(&self) -> Option<File> {
        let path = super::proc_fd_path(std::os::fd::AsFd::as_fd(self.journal));
        openat(
            nix::fcntl::AT_FDCWD,
            path.as_path(),
            OFlag::O_RDWR | OFlag::O_DIRECT | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .ok()
        .map(File::from)
    }
}
