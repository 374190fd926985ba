//! Directories: listings (names decrypted at the first readdir of a handle, then served from
//! it; a lone mount lets the kernel cache them, so a directory listed again is often not asked
//! for at all), and sync.

use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::sync::{Arc, OnceLock};

use fuser::FileAttr;
use nix::fcntl::AtFlags;
use nix::sys::stat::{FileStat, fstatat};

use super::{Handle, SealFs, o_path, open_dir, stat_fd};
use crate::fs::inodes::Node;
use crate::metrics::IntegrityKind;
use crate::shell::attr::{entry_type, file_type};
use crate::volume::{Result, VolumeError, names};

/// A forward listing's entry: node id, type, plaintext name, and the backing entry's name
/// (empty for "." and "..") to look the entry up by for readdirplus.
pub type DirEntry = crate::shell::DirEntry<OsString>;

/// A listed entry looked up for readdirplus: its attributes, and what counting the kernel's
/// lookup needs (the node is remembered only once the entry is sent).
pub struct ListedEntry {
    pub attr: FileAttr,
    /// The generation the kernel is told (fs/handles.rs).
    pub generation: u32,
    fd: OwnedFd,
    stat: FileStat,
}

/// A directory handle: its node, and its listing once a readdir asked for it.
pub struct DirHandle {
    node: Arc<Node>,
    listing: OnceLock<Arc<Vec<DirEntry>>>,
}

impl SealFs {
    /// Opens a directory handle. The listing is read at the first readdir, not here: a lone
    /// mount lets the kernel keep listings (FOPEN_CACHE_DIR), and an open it serves from its
    /// cache sends no readdir, so nothing is decrypted for it.
    pub fn opendir(&self, ino: u64) -> Result<u64> {
        let node = self.node(ino)?;
        // A policy set on this directory a moment ago (by another process or host) changes
        // the keys its listing is under.
        self.volume.follow_config();
        Ok(self.add_handle(Handle::Dir(Arc::new(DirHandle {
            node,
            listing: OnceLock::new(),
        }))))
    }

    /// Whether the kernel may cache directory listings: a lone mount is the only writer, and
    /// the kernel drops a directory's cached listing whenever it changes the directory through
    /// this mount (create, unlink, rename, ...), or sees its attributes change.
    pub fn cache_dirs(&self) -> bool {
        self.access.sole_writer()
    }

    /// The plaintext listing of directory `node`: ".", "..", then every entry whose name
    /// decrypts (others are logged and left out).
    fn list(&self, node: &Node) -> Result<Vec<DirEntry>> {
        let (_, keys) = self.dir_keys(node)?;
        let fd = open_dir(node)?;
        let mut entries = DirEntry::dots(node.ino);
        let mut dir = nix::dir::Dir::from_fd(fd)?;
        let dir_fd = unsafe { BorrowedFd::borrow_raw(dir.as_raw_fd()) };
        for entry in dir.iter() {
            let entry = entry?;
            let raw = OsStr::from_bytes(entry.file_name().to_bytes());
            if raw == "." || raw == ".." {
                continue;
            }
            let name = match names::decrypt_entry(&keys, dir_fd, raw) {
                Ok(Some(name)) => name,
                Ok(None) => continue,
                Err(e) => {
                    tracing::error!(entry = ?raw, error = %e, "skipping a directory entry whose name does not decrypt");
                    crate::metrics::global().integrity_failure(IntegrityKind::Metadata);
                    continue;
                }
            };
            let kind = match entry.file_type() {
                Some(t) => entry_type(t),
                None => match fstatat(dir_fd, raw, AtFlags::AT_SYMLINK_NOFOLLOW) {
                    Ok(st) => file_type(st.st_mode),
                    Err(_) => continue,
                },
            };
            entries.push(DirEntry {
                ino: self.inodes.node_id(entry.ino()),
                kind,
                name,
                target: raw.to_os_string(),
            });
        }
        Ok(entries)
    }

    /// The listing of directory handle `fh`, read at its first call (readdir at offset 0, or
    /// any offset after a kernel that kept the handle's earlier pages).
    pub fn dir_entries(&self, fh: u64) -> Result<Arc<Vec<DirEntry>>> {
        Ok(self.listed_dir(fh)?.1)
    }

    /// Directory handle `fh`'s node and listing (see `dir_entries`).
    pub fn listed_dir(&self, fh: u64) -> Result<(Arc<Node>, Arc<Vec<DirEntry>>)> {
        let handle = match crate::sync::lock(&self.handles).get(&fh) {
            Some(Handle::Dir(handle)) => handle.clone(),
            _ => return Err(VolumeError::BadHandle),
        };
        if let Some(listing) = handle.listing.get() {
            return Ok((handle.node.clone(), listing.clone()));
        }
        let listing = Arc::new(self.list(&handle.node)?);
        let listing = handle.listing.get_or_init(|| listing).clone();
        Ok((handle.node.clone(), listing))
    }

    /// Whether the kernel should get attributes with listings (readdirplus): a lone mount lets
    /// it keep them, which saves a LOOKUP per entry of a walk (`ls -l`, rsync, `diff -r`).
    /// A shared mount keeps no file attributes, so there they would be work for nothing.
    /// Nor while files a crash left torn wait to be mended at their lookup.
    pub fn attrs_with_listings(&self) -> bool {
        self.access.sole_writer() && !self.volume.undo.mending()
    }

    /// Looks up listed `entry` of directory `dir` as a LOOKUP would, without counting it yet:
    /// None when the entry is gone since the listing (or is "." or "..").
    pub fn look_up_listed(&self, dir: &Node, entry: &DirEntry) -> Option<ListedEntry> {
        let raw = entry.target.to_str().filter(|raw| !raw.is_empty())?;
        let fd = o_path(dir.fd.as_fd(), raw).ok()?;
        let stat = stat_fd(fd.as_fd()).ok()?;
        let attr = self.attr_of(fd.as_fd(), &stat);
        let generation = self.inodes.generation(attr.ino.0).unwrap_or_else(|| {
            crate::fs::handles::BackingHandle::of(fd.as_fd()).map_or(0, |h| h.generation())
        });
        Some(ListedEntry {
            attr,
            generation,
            fd,
            stat,
        })
    }

    /// Counts the kernel's lookup of a listed entry it was sent with its attributes.
    pub fn remember_listed(&self, dir: &Node, entry: &DirEntry, listed: ListedEntry) {
        let node = self
            .inodes
            .remember(listed.fd, &listed.stat, dir.ino, &entry.name);
        // The listing was decrypted under the directory's policy, known by now; a marker
        // that cannot be read leaves the child to be found again at its next use.
        if let Ok(policy) = self.policy_of(dir) {
            let _ = self.note_policy(&node, policy);
        }
    }

    pub fn releasedir(&self, fh: u64) {
        crate::sync::lock(&self.handles).remove(&fh);
    }

    pub fn fsyncdir(&self, ino: u64) -> Result<()> {
        let node = self.node(ino)?;
        let fd = open_dir(&node)?;
        File::from(fd).sync_all()?;
        Ok(())
    }

    pub fn statfs(&self) -> Result<nix::sys::statvfs::Statvfs> {
        Ok(nix::sys::statvfs::fstatvfs(&self.volume.root)?)
    }
}
