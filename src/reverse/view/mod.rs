//! The reverse view without FUSE: what a read-only cipher dir made from a plaintext tree
//! looks like, answered from the tree itself on every request (so changes show without a
//! remount). Tested without a mount (`tests.rs`) and through one (tests/reverse.rs).
//!
//! The view at the root: `sealfs.conf` (the bytes of `.sealfs.reverse.conf`), `sealfs.headers`
//! (one deterministic header per regular file, listed from an index of the tree), and every
//! plaintext entry under its encrypted name, long names with their `.name` sidecars.
//! Plaintext paths are resolved with openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS |
//! RESOLVE_NO_XDEV): a symlink or mount swapped into the tree never leads the view outside it,
//! and other filesystems mounted inside the tree are left out (as `--one-file-system`).
//!
//! This file answers requests; the rest is split by concern: `nodes` (the node table),
//! `plain` (resolving plaintext paths and encrypted names), `virtual_files` (config, headers,
//! long-name sidecars). Data files are streamed by `io::read_sealed`.

mod nodes;
mod plain;
#[cfg(test)]
mod tests;
mod virtual_files;

use std::collections::{BTreeSet, HashMap};
use std::ffi::OsStr;
use std::fs::File;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use fuser::{FileAttr, FileType, INodeNo};
use nix::fcntl::OFlag;
use nix::sys::stat::{FileStat, fstat};

use super::exclude::Excludes;
use super::keys::{ReverseKeys, ViewFileKeys, identity, symlink_view_len};
use crate::format::config::{CONFIG_FILE, VolumeConfig};
use crate::format::{id_from_hex, id_to_hex};
use crate::io::Layout;
use crate::keys::VolumeKeys;
use crate::shell::attr::{attr_from_stat, file_type, time};
use crate::volume::headers::HEADERS_DIR;
use crate::volume::names::encrypt_name;
use crate::volume::{Result, VolumeError};

pub use nodes::ROOT_NODE;
use nodes::{NodeEntry, NodeKind, virtual_node};
use virtual_files::{ConfigCopy, HeaderIndex, INDEX_MAX_AGE, read_config};

/// What a listed entry is, kept for readdirplus; none for "." and "..".
#[derive(Default)]
pub struct EntryTarget(Option<(NodeKind, PathBuf)>);

/// A listing's entry: node id, type, encrypted name, and what it is.
pub type DirEntry = crate::shell::DirEntry<EntryTarget>;

/// An open file of the view.
pub enum Opened {
    Data(Arc<OpenData>),
    Bytes(Arc<Vec<u8>>),
}

pub struct OpenData {
    file: File,
    keys: ViewFileKeys,
}

enum Handle {
    File(Opened),
    Dir(Arc<Vec<DirEntry>>),
}

pub struct ReverseView {
    root: OwnedFd,
    root_dev: u64,
    root_ino: u64,
    keys: ReverseKeys,
    layout: Layout,
    excludes: Excludes,
    config: Mutex<ConfigCopy>,
    nodes: Mutex<HashMap<u64, NodeEntry>>,
    index: Mutex<HeaderIndex>,
    handles: Mutex<HashMap<u64, Handle>>,
    next_handle: AtomicU64,
}

impl ReverseView {
    /// The view of the plaintext tree at `plain_dir`, whose reverse config `config` the keys
    /// `keys` were unlocked from.
    pub fn new(plain_dir: &Path, keys: Arc<VolumeKeys>, excludes: Excludes) -> Result<Self> {
        let root = nix::fcntl::open(
            plain_dir,
            OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
            nix::sys::stat::Mode::empty(),
        )?;
        let root_stat = fstat(&root)?;
        let (bytes, stat) = read_config(root.as_fd())?;
        let config = VolumeConfig::parse(&bytes)?;
        keys.apply_config(&config)?;
        Ok(ReverseView {
            root_dev: root_stat.st_dev,
            root_ino: root_stat.st_ino,
            root,
            keys: ReverseKeys::new(keys),
            layout: Layout::new(config.block_size)?,
            excludes,
            config: Mutex::new(ConfigCopy {
                bytes: Arc::new(bytes),
                stat,
            }),
            nodes: Mutex::new(HashMap::from([(
                ROOT_NODE,
                NodeEntry {
                    kind: NodeKind::Plain,
                    path: PathBuf::new(),
                    lookups: 1,
                },
            )])),
            index: Mutex::new(HeaderIndex::default()),
            handles: Mutex::new(HashMap::new()),
            next_handle: AtomicU64::new(1),
        })
    }

    pub fn volume_keys(&self) -> &VolumeKeys {
        &self.keys.volume
    }

    pub fn lookup(&self, parent: u64, name: &OsStr) -> Result<FileAttr> {
        let (kind, path) = self.entry(parent)?;
        let (node, kind, path) = match kind {
            NodeKind::Plain => self.lookup_plain(&path, name)?,
            NodeKind::HeadersRoot => {
                let prefix = name
                    .to_str()
                    .filter(|n| n.len() == 2)
                    .and_then(|n| u8::from_str_radix(n, 16).ok())
                    .filter(|b| name.to_str() == Some(format!("{b:02x}").as_str()))
                    .ok_or(VolumeError::NotFound)?;
                if !self.index_has(|ids| ids.iter().any(|id| id[0] == prefix)) {
                    return Err(VolumeError::NotFound);
                }
                let kind = NodeKind::HeaderDir(prefix);
                (
                    virtual_node(&[b"hdir", &[prefix][..]].concat()),
                    kind,
                    PathBuf::new(),
                )
            }
            NodeKind::HeaderDir(prefix) => {
                let id = name
                    .to_str()
                    .and_then(|n| id_from_hex(n).ok())
                    .filter(|id| id[0] == prefix)
                    .ok_or(VolumeError::NotFound)?;
                if !self.index_has(|ids| ids.contains(&id)) {
                    return Err(VolumeError::NotFound);
                }
                let node = virtual_node(&[&b"header"[..], &id].concat());
                (node, NodeKind::Header(id), PathBuf::new())
            }
            _ => return Err(VolumeError::NotDirectory),
        };
        let attr = self.attr_of(node, &kind, &path)?;
        self.remember(node, kind, path);
        Ok(attr)
    }

    pub fn getattr(&self, node: u64) -> Result<FileAttr> {
        let (kind, path) = self.entry(node)?;
        self.attr_of(node, &kind, &path)
    }

    fn attr_of(&self, node: u64, kind: &NodeKind, path: &Path) -> Result<FileAttr> {
        let config = self.config_copy();
        let virtual_attr = |kind: FileType, perm: u16, size: u64| {
            let st = &config.stat;
            FileAttr {
                ino: INodeNo(node),
                size,
                blocks: size.div_ceil(512),
                atime: time(st.st_mtime, st.st_mtime_nsec),
                mtime: time(st.st_mtime, st.st_mtime_nsec),
                ctime: time(st.st_ctime, st.st_ctime_nsec),
                crtime: time(st.st_ctime, st.st_ctime_nsec),
                kind,
                perm,
                nlink: if kind == FileType::Directory { 2 } else { 1 },
                uid: st.st_uid,
                gid: st.st_gid,
                rdev: 0,
                blksize: 4096,
                flags: 0,
            }
        };
        Ok(match kind {
            NodeKind::Plain => {
                let stat = self.stat_plain(path)?;
                if self.plain_node(stat.st_ino) != node {
                    // Renamed or replaced since it was looked up: the kernel looks up anew.
                    return Err(VolumeError::NotFound);
                }
                self.plain_attr(node, &stat)
            }
            NodeKind::Config => virtual_attr(
                FileType::RegularFile,
                (config.stat.st_mode & 0o7777) as u16,
                config.bytes.len() as u64,
            ),
            NodeKind::HeadersRoot | NodeKind::HeaderDir(_) => {
                virtual_attr(FileType::Directory, 0o700, 4096)
            }
            NodeKind::Header(id) => virtual_attr(
                FileType::RegularFile,
                0o600,
                self.keys.header(id)?.len() as u64,
            ),
            NodeKind::LongSidecar => {
                let len = self.sidecar_bytes(path)?.len() as u64;
                virtual_attr(FileType::RegularFile, 0o600, len)
            }
        })
    }

    fn plain_attr(&self, node: u64, stat: &FileStat) -> FileAttr {
        let size = match file_type(stat.st_mode) {
            FileType::RegularFile => crate::io::sealed_len(&self.layout, stat.st_size as u64),
            FileType::Symlink => symlink_view_len(stat.st_size as u64),
            _ => stat.st_size as u64,
        };
        attr_from_stat(
            node,
            stat,
            size,
            size.div_ceil(512),
            self.layout.block_size() as u32,
        )
    }

    pub fn readlink(&self, node: u64) -> Result<Vec<u8>> {
        let (kind, path) = self.entry(node)?;
        if kind != NodeKind::Plain {
            return Err(VolumeError::InvalidArgument("not a symlink"));
        }
        let fd = self.open_beneath(&path, OFlag::O_PATH)?;
        let target = nix::fcntl::readlinkat(fd.as_fd(), "")?;
        Ok(self.keys.symlink_target(target.as_bytes())?.into_bytes())
    }

    /// Opens a file of the view for reading; writing is EROFS.
    pub fn open(&self, node: u64, flags: i32) -> Result<u64> {
        if flags & libc::O_ACCMODE != libc::O_RDONLY || flags & libc::O_TRUNC != 0 {
            return Err(VolumeError::ReadOnly);
        }
        let (kind, path) = self.entry(node)?;
        let opened = match kind {
            NodeKind::Plain => Opened::Data(Arc::new(self.open_data(node, &path)?)),
            NodeKind::Config => Opened::Bytes(self.config_copy().bytes.clone()),
            NodeKind::Header(id) => Opened::Bytes(Arc::new(self.keys.header(&id)?)),
            NodeKind::LongSidecar => Opened::Bytes(Arc::new(self.sidecar_bytes(&path)?)),
            NodeKind::HeadersRoot | NodeKind::HeaderDir(_) => return Err(VolumeError::IsDirectory),
        };
        Ok(self.add_handle(Handle::File(opened)))
    }

    fn open_data(&self, node: u64, path: &Path) -> Result<OpenData> {
        let fd = self.open_beneath(path, OFlag::O_RDONLY)?;
        let file = File::from(fd);
        let stat = fstat(&file)?;
        if self.plain_node(stat.st_ino) != node {
            return Err(VolumeError::NotFound);
        }
        match file_type(stat.st_mode) {
            FileType::RegularFile => {}
            FileType::Directory => return Err(VolumeError::IsDirectory),
            _ => return Err(VolumeError::InvalidArgument("not a regular file")),
        }
        let file_id = self.keys.file_id(&identity(path, &stat));
        Ok(OpenData {
            file,
            keys: self.keys.file_keys(file_id),
        })
    }

    fn add_handle(&self, handle: Handle) -> u64 {
        let fh = self.next_handle.fetch_add(1, Ordering::Relaxed);
        crate::sync::lock(&self.handles).insert(fh, handle);
        fh
    }

    pub fn release(&self, fh: u64) {
        crate::sync::lock(&self.handles).remove(&fh);
    }

    /// Up to `size` bytes of the view's file at `offset`.
    pub fn read(&self, fh: u64, offset: u64, size: u32) -> Result<Vec<u8>> {
        let opened = match crate::sync::lock(&self.handles).get(&fh) {
            Some(Handle::File(Opened::Data(data))) => Opened::Data(data.clone()),
            Some(Handle::File(Opened::Bytes(bytes))) => Opened::Bytes(bytes.clone()),
            _ => return Err(VolumeError::BadHandle),
        };
        match opened {
            Opened::Bytes(bytes) => {
                let start = (offset as usize).min(bytes.len());
                let end = (start + size as usize).min(bytes.len());
                Ok(bytes[start..end].to_vec())
            }
            Opened::Data(data) => self.read_data(&data, offset, size as u64),
        }
    }

    fn read_data(&self, data: &OpenData, offset: u64, size: u64) -> Result<Vec<u8>> {
        Ok(crate::io::read_sealed(
            &data.file,
            &self.layout,
            &data.keys.file_id,
            data.keys.sealer(),
            offset,
            size,
        )?)
    }

    pub fn opendir(&self, node: u64) -> Result<u64> {
        let (kind, path) = self.entry(node)?;
        let mut entries = DirEntry::dots(node);
        match kind {
            NodeKind::Plain => self.plain_entries(&path, &mut entries)?,
            NodeKind::HeadersRoot => {
                let ids = self.index_ids(Duration::ZERO)?;
                let prefixes: BTreeSet<u8> = ids.iter().map(|id| id[0]).collect();
                for prefix in prefixes {
                    entries.push(DirEntry {
                        ino: virtual_node(&[b"hdir", &[prefix][..]].concat()),
                        kind: FileType::Directory,
                        name: format!("{prefix:02x}").into(),
                        target: EntryTarget(Some((NodeKind::HeaderDir(prefix), PathBuf::new()))),
                    });
                }
            }
            NodeKind::HeaderDir(prefix) => {
                let ids = self.index_ids(INDEX_MAX_AGE)?;
                for id in ids.iter().filter(|id| id[0] == prefix) {
                    entries.push(DirEntry {
                        ino: virtual_node(&[&b"header"[..], id].concat()),
                        kind: FileType::RegularFile,
                        name: id_to_hex(id).into(),
                        target: EntryTarget(Some((NodeKind::Header(*id), PathBuf::new()))),
                    });
                }
            }
            _ => return Err(VolumeError::NotDirectory),
        }
        Ok(self.add_handle(Handle::Dir(Arc::new(entries))))
    }

    fn plain_entries(&self, dir: &Path, entries: &mut Vec<DirEntry>) -> Result<()> {
        if dir.as_os_str().is_empty() {
            entries.push(DirEntry {
                ino: virtual_node(b"config"),
                kind: FileType::RegularFile,
                name: CONFIG_FILE.into(),
                target: EntryTarget(Some((NodeKind::Config, PathBuf::new()))),
            });
            entries.push(DirEntry {
                ino: virtual_node(b"headers"),
                kind: FileType::Directory,
                name: HEADERS_DIR.into(),
                target: EntryTarget(Some((NodeKind::HeadersRoot, PathBuf::new()))),
            });
        }
        for (name, kind, ino) in self.list_plain(dir)? {
            let encrypted = match encrypt_name(&self.volume_keys().names, &name) {
                Ok(encrypted) => encrypted,
                Err(e) => {
                    tracing::error!(entry = ?dir.join(&name), error = %e, "leaving out an entry whose name cannot be encrypted");
                    continue;
                }
            };
            let path = dir.join(&name);
            if let Some(sidecar) = encrypted.sidecar() {
                entries.push(DirEntry {
                    ino: virtual_node(&[b"sidecar\0", path.as_os_str().as_bytes()].concat()),
                    kind: FileType::RegularFile,
                    name: sidecar.into(),
                    target: EntryTarget(Some((NodeKind::LongSidecar, path.clone()))),
                });
            }
            entries.push(DirEntry {
                ino: self.plain_node(ino),
                kind,
                name: encrypted.entry().into(),
                target: EntryTarget(Some((NodeKind::Plain, path))),
            });
        }
        Ok(())
    }

    /// The attributes of a listed entry, for readdirplus; None for "." and "..", and for an
    /// entry gone or replaced since the listing.
    pub fn entry_attr(&self, entry: &DirEntry) -> Option<FileAttr> {
        let (kind, path) = entry.target.0.as_ref()?;
        self.attr_of(entry.ino, kind, path).ok()
    }

    /// Counts a lookup of a listed entry whose attributes readdirplus handed to the kernel.
    pub fn remember_entry(&self, entry: &DirEntry) {
        if let Some((kind, path)) = &entry.target.0 {
            self.remember(entry.ino, kind.clone(), path.clone());
        }
    }

    pub fn dir_entries(&self, fh: u64) -> Result<Arc<Vec<DirEntry>>> {
        match crate::sync::lock(&self.handles).get(&fh) {
            Some(Handle::Dir(entries)) => Ok(entries.clone()),
            _ => Err(VolumeError::BadHandle),
        }
    }

    pub fn statfs(&self) -> Result<nix::sys::statvfs::Statvfs> {
        Ok(nix::sys::statvfs::fstatvfs(&self.root)?)
    }
}
