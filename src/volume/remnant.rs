//! What a power cut leaves that is no damage. A data file is created with its preamble in one
//! write that nothing fsyncs until the program does; a crash before it lands leaves the name
//! with a backing file shorter than the preamble (sqlite's `-shm` and `-journal` files, which
//! sqlite never fsyncs). ext4 shows such a file empty after the same crash, and so does
//! sealfs: it gets a new file id and key and reads as an empty file. Its old header, if one
//! landed, is an orphan fsck removes.
//!
//! An attacker who can write the cipher dir can make any file read as empty this way (or
//! delete it): names and sizes were never authenticated against truncation. What it cannot do
//! is make a file read as other bytes (docs/GUARANTEES.md).

use std::fs::File;
use std::os::fd::AsFd;

use super::{Result, Volume};
use crate::format::block::{DATA_VERSION, PREAMBLE_LEN, Preamble};

/// Whether `file` is a data file whose preamble never reached the disk.
pub fn never_written(file: &File) -> bool {
    nix::sys::stat::fstat(file.as_fd()).is_ok_and(|st| (st.st_size as u64) < PREAMBLE_LEN)
}

impl Volume {
    /// Makes the data file `file` (open for writing; `never_written`) an empty file of key
    /// policy `policy` again: a new header, then the preamble, as a create makes them. A crash
    /// in between leaves an orphan header and a file this runs on again.
    pub fn revive_empty(&self, file: &File, policy: u32) -> Result<Preamble> {
        let (header, material) = self
            .file_keys
            .new_header_in(policy)
            .inspect_err(|e| self.audit_key_failure(e))?;
        self.headers.create(&header, self.durable_headers)?;
        file.set_len(0)?;
        crate::io::write_preamble(file, &header.file_id)?;
        self.key_cache
            .insert(header.file_id, std::sync::Arc::new(material));
        tracing::info!(
            file_id = %crate::format::id_to_hex(&header.file_id),
            "a data file that never reached the disk (a crash before its first write landed) reads as empty"
        );
        Ok(Preamble {
            version: DATA_VERSION,
            file_id: header.file_id,
        })
    }
}
