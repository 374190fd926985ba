//! Buffers reused by every request a thread serves, so the hot path allocates nothing
//! block-sized once warm, and the one EINTR-safe full read of the crate.

use std::cell::RefCell;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

/// Per-thread scratch space. Each grows to the largest request seen (1 MiB with max_write).
#[derive(Default)]
pub(super) struct Buffers {
    pub sealed: Vec<u8>,
    pub plain: Vec<u8>,
    pub nonces: Vec<u8>,
    pub edge_plain: Vec<u8>,
    pub edge_sealed: Vec<u8>,
}

thread_local! {
    pub(super) static BUFFERS: RefCell<Buffers> = RefCell::new(Buffers::default());
}

/// The first `len` bytes of `buf`, grown (never shrunk) to hold them.
pub(super) fn sized(buf: &mut Vec<u8>, len: usize) -> &mut [u8] {
    if buf.len() < len {
        buf.resize(len, 0);
    }
    &mut buf[..len]
}

/// pread until `buf` is full or the file ends, retrying interrupted calls; the count read.
pub fn read_full_at(file: &File, buf: &mut [u8], offset: u64) -> io::Result<usize> {
    let mut done = 0;
    while done < buf.len() {
        match file.read_at(&mut buf[done..], offset + done as u64) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(done)
}
