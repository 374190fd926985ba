//! Symlink targets: sealed inline in the backing symlink, or in a sidecar (`long_links`) when
//! too long for that.

use std::ffi::OsStr;
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::ffi::OsStrExt;

use nix::unistd::{UnlinkatFlags, unlinkat};

use super::{Result, Volume, VolumeError, long_links, names};
use crate::keys::NameKeys;

impl Volume {
    /// What a new backing symlink points at for plaintext `target`, under name keys `keys`:
    /// its inline encoding, or for a target too long for that, a sidecar made here
    /// (`long_links`).
    pub fn seal_symlink(&self, keys: &NameKeys, target: &[u8]) -> Result<String> {
        match names::encrypt_symlink(keys, target) {
            Err(VolumeError::NameTooLong) => long_links::seal(self.root.as_fd(), keys, target),
            inline => inline,
        }
    }

    /// Re-seals symlink `entry` of backing directory `dir` (its stat: `st`) with plaintext
    /// `target` under `keys`: a new symlink under the temporary name `temp`, with the old
    /// link's owner and times, which `place` then puts where it belongs (renamed over the old
    /// one). A failure leaves nothing of the new link behind, its sidecar neither; the old
    /// link is untouched until `place` succeeds. Returns what the new link points at.
    pub fn reseal_symlink(
        &self,
        dir: BorrowedFd<'_>,
        st: &nix::sys::stat::FileStat,
        keys: &NameKeys,
        target: &[u8],
        temp: &str,
        place: impl FnOnce() -> Result<()>,
    ) -> Result<String> {
        let sealed = self.seal_symlink(keys, target)?;
        let made = (|| -> Result<()> {
            nix::unistd::symlinkat(sealed.as_str(), dir, temp)?;
            nix::unistd::fchownat(
                dir,
                temp,
                Some(st.st_uid.into()),
                Some(st.st_gid.into()),
                nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
            )?;
            nix::sys::stat::utimensat(
                dir,
                temp,
                &nix::sys::time::TimeSpec::new(st.st_atime, st.st_atime_nsec),
                &nix::sys::time::TimeSpec::new(st.st_mtime, st.st_mtime_nsec),
                nix::sys::stat::UtimensatFlags::NoFollowSymlink,
            )?;
            place()
        })();
        if let Err(e) = made {
            let _ = unlinkat(dir, temp, UnlinkatFlags::NoRemoveDir);
            if let Some(long) = crate::format::link::LongTarget::decode(sealed.as_bytes()) {
                long_links::remove(self.root.as_fd(), &long);
            }
            return Err(e);
        }
        Ok(sealed)
    }

    /// The plaintext target of a backing symlink that points at `backing`.
    pub fn open_symlink(&self, keys: &NameKeys, backing: &OsStr) -> Result<Vec<u8>> {
        match crate::format::link::LongTarget::decode(backing.as_bytes()) {
            Some(long) => long_links::open(self.root.as_fd(), keys, &long),
            None => names::decrypt_symlink(keys, backing),
        }
    }
}
