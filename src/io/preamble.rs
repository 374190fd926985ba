//! The 24-byte preamble every data file starts with: its format version and the file id that
//! binds each block (and finds the header holding the file's key).

use std::fs::File;
use std::os::unix::fs::FileExt;

use super::IoError;
use super::buffers::read_full_at;
use crate::format::Id;
use crate::format::block::{PREAMBLE_LEN, Preamble, decode_preamble, encode_preamble};

/// The bytes a data file of `version` and `file_id` starts with.
pub fn preamble(version: u8, file_id: &Id) -> [u8; PREAMBLE_LEN as usize] {
    encode_preamble(version, file_id)
}

/// Writes the preamble of a new data file (of the newest version).
pub fn write_preamble(file: &File, file_id: &Id) -> Result<(), IoError> {
    file.write_all_at(
        &encode_preamble(crate::format::block::DATA_VERSION, file_id),
        0,
    )?;
    Ok(())
}

/// The version and file id a data file carries. A short or damaged preamble is
/// `IoError::Preamble` (an integrity failure); an I/O error keeps its errno.
pub fn read_preamble(file: &File) -> Result<Preamble, IoError> {
    let mut bytes = [0u8; PREAMBLE_LEN as usize];
    let got = read_full_at(file, &mut bytes, 0)?;
    decode_preamble(&bytes[..got]).map_err(IoError::Preamble)
}

/// The file id a data file carries (`read_preamble`).
pub fn read_file_id(file: &File) -> Result<Id, IoError> {
    Ok(read_preamble(file)?.file_id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn written_preamble_reads_back_and_damage_is_typed() {
        let dir = tempfile::tempdir().unwrap();
        let file = File::options()
            .read(true)
            .write(true)
            .create_new(true)
            .open(dir.path().join("d"))
            .unwrap();
        assert!(matches!(read_file_id(&file), Err(IoError::Preamble(_))));
        write_preamble(&file, &[3; 16]).unwrap();
        assert_eq!(read_file_id(&file).unwrap(), [3; 16]);
        assert_eq!(
            read_preamble(&file).unwrap().version,
            crate::format::block::DATA_VERSION
        );
        file.write_all_at(b"X", 0).unwrap();
        assert!(matches!(read_file_id(&file), Err(IoError::Preamble(_))));
    }
}
