//! The reverse view without FUSE: what a read-only cipher dir made from a plaintext tree
//! looks like, answered from the tree itself on every request (so changes show without a
//! remount). Tested through the core and through a mount.
//!
//! The view at the root: `sealfs.conf` (the bytes of `.sealfs.reverse.conf`), `sealfs.headers`
//! (one deterministic header per regular file, listed from an index of the tree), and every
//! plaintext entry under its encrypted name, long names with their `.name` sidecars.
//! Plaintext paths are resolved with openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS |
//! RESOLVE_NO_XDEV): a symlink or mount swapped into the tree never leads the view outside it,
//! and other filesystems mounted inside the tree are left out (as `--one-file-system`).

use std::collections::{BTreeSet, HashMap};
use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io::Read;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use fuser::{FileAttr, FileType, INodeNo};
use nix::fcntl::{AtFlags, OFlag, OpenHow, ResolveFlag, openat2};
use nix::sys::stat::{FileStat, fstat, fstatat};

use super::exclude::Excludes;
use super::keys::{ReverseKeys, ViewFileKeys, identity, symlink_view_len};
use crate::format::config::{
    CONFIG_FILE, MAX_CONFIG_LEN, REVERSE_CONFIG_FILE, REVERSE_PRIVATE_PREFIX, VolumeConfig,
};
use crate::format::name::{BackingName, EntryKind, LONG_NAME_SUFFIX, LONG_PREFIX, classify_entry};
use crate::format::{Id, id_from_hex, id_to_hex};
use crate::fs::attr::{attr_from_stat, time};
use crate::io::Layout;
use crate::keys::VolumeKeys;
use crate::volume::headers::HEADERS_DIR;
use crate::volume::names::{decrypt_encoded, encrypt_name};
use crate::volume::{Result, VolumeError};

pub const ROOT_NODE: u64 = 1;
/// Node ids of entries that exist only in the view (config, header tree, long-name sidecars)
/// have the top bit set; plaintext inode numbers never do.
const VIRTUAL_BIT: u64 = 1 << 63;
/// The header index is rebuilt when `sealfs.headers` is opened (a backup run starts), and
/// when older than this while its subdirectories are listed.
const INDEX_MAX_AGE: Duration = Duration::from_secs(60);
/// A lookup of a header the index does not hold rebuilds it, at most this often.
const INDEX_MISS_REFRESH: Duration = Duration::from_secs(1);

#[derive(Clone, Debug, PartialEq, Eq)]
enum NodeKind {
    /// A plaintext entry; `path` is below the plaintext root ("" for the root).
    Plain,
    Config,
    HeadersRoot,
    HeaderDir(u8),
    Header(Id),
    /// The `.name` sidecar of the long-named entry at `path`.
    LongSidecar,
}

struct NodeEntry {
    kind: NodeKind,
    path: PathBuf,
    lookups: u64,
}

pub struct DirEntry {
    pub ino: u64,
    pub kind: FileType,
    pub name: OsString,
    /// What the entry is, for readdirplus; None for "." and "..".
    target: Option<(NodeKind, PathBuf)>,
}

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

struct ConfigCopy {
    bytes: Arc<Vec<u8>>,
    stat: FileStat,
}

#[derive(Default)]
struct HeaderIndex {
    ids: BTreeSet<Id>,
    built: Option<Instant>,
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

fn virtual_node(tag: &[u8]) -> u64 {
    let hash = blake3::hash(tag);
    let mut bytes = [0u8; 8];
    bytes.copy_from_slice(&hash.as_bytes()[..8]);
    VIRTUAL_BIT | (u64::from_be_bytes(bytes) & !VIRTUAL_BIT)
}

pub fn file_type(mode: u32) -> FileType {
    crate::fs::inodes::file_type(mode)
}

fn same_stamp(a: &FileStat, b: &FileStat) -> bool {
    (
        a.st_ino,
        a.st_size,
        a.st_mtime,
        a.st_mtime_nsec,
        a.st_ctime,
        a.st_ctime_nsec,
    ) == (
        b.st_ino,
        b.st_size,
        b.st_mtime,
        b.st_mtime_nsec,
        b.st_ctime,
        b.st_ctime_nsec,
    )
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

    /// Node id of a plaintext inode: its inode number, with the root's and 1 trading places.
    fn plain_node(&self, ino: u64) -> u64 {
        if ino == self.root_ino {
            ROOT_NODE
        } else if ino == ROOT_NODE {
            self.root_ino
        } else {
            ino
        }
    }

    fn open_beneath(&self, relative: &Path, flags: OFlag) -> Result<OwnedFd> {
        let path = if relative.as_os_str().is_empty() {
            Path::new(".")
        } else {
            relative
        };
        let how = OpenHow::new()
            .flags(flags | OFlag::O_CLOEXEC | OFlag::O_NOFOLLOW)
            .resolve(
                ResolveFlag::RESOLVE_BENEATH
                    | ResolveFlag::RESOLVE_NO_SYMLINKS
                    | ResolveFlag::RESOLVE_NO_XDEV,
            );
        openat2(self.root.as_fd(), path, how).map_err(|e| match e {
            // A symlink or a mount point where a directory was: not part of the view.
            nix::Error::ELOOP | nix::Error::EXDEV => VolumeError::NotFound,
            e => e.into(),
        })
    }

    fn stat_plain(&self, relative: &Path) -> Result<FileStat> {
        let fd = self.open_beneath(relative, OFlag::O_PATH)?;
        Ok(fstat(&fd)?)
    }

    fn hidden(&self, parent: &Path, name: &OsStr) -> bool {
        parent.as_os_str().is_empty()
            && name
                .as_bytes()
                .starts_with(REVERSE_PRIVATE_PREFIX.as_bytes())
    }

    fn entry(&self, node: u64) -> Result<(NodeKind, PathBuf)> {
        let nodes = crate::sync::lock(&self.nodes);
        let entry = nodes.get(&node).ok_or(VolumeError::NotFound)?;
        Ok((entry.kind.clone(), entry.path.clone()))
    }

    fn remember(&self, node: u64, kind: NodeKind, path: PathBuf) {
        let mut nodes = crate::sync::lock(&self.nodes);
        let entry = nodes.entry(node).or_insert(NodeEntry {
            kind: kind.clone(),
            path: path.clone(),
            lookups: 0,
        });
        entry.lookups += 1;
        // The latest name an inode was found under is where it is now.
        entry.kind = kind;
        entry.path = path;
    }

    pub fn forget(&self, node: u64, count: u64) {
        if node == ROOT_NODE {
            return;
        }
        let mut nodes = crate::sync::lock(&self.nodes);
        if let Some(entry) = nodes.get_mut(&node) {
            entry.lookups = entry.lookups.saturating_sub(count);
            if entry.lookups == 0 {
                nodes.remove(&node);
            }
        }
    }

    /// Nodes the kernel holds (for tests of forget).
    pub fn node_count(&self) -> usize {
        crate::sync::lock(&self.nodes).len()
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

    fn lookup_plain(&self, dir: &Path, name: &OsStr) -> Result<(u64, NodeKind, PathBuf)> {
        let at_root = dir.as_os_str().is_empty();
        if at_root && name == CONFIG_FILE {
            return Ok((virtual_node(b"config"), NodeKind::Config, PathBuf::new()));
        }
        if at_root && name == HEADERS_DIR {
            return Ok((
                virtual_node(b"headers"),
                NodeKind::HeadersRoot,
                PathBuf::new(),
            ));
        }
        let text = name.to_str().ok_or(VolumeError::NotFound)?;
        let plain = match classify_entry(text) {
            EntryKind::Encrypted(encoded) => {
                decrypt_encoded(self.volume_keys(), encoded).map_err(|_| VolumeError::NotFound)?
            }
            EntryKind::Long(hashed) => self.find_long(dir, hashed)?,
            EntryKind::Internal => {
                let hashed = text
                    .strip_suffix(LONG_NAME_SUFFIX)
                    .filter(|h| h.starts_with(LONG_PREFIX))
                    .ok_or(VolumeError::NotFound)?;
                let plain = self.find_long(dir, hashed)?;
                let path = dir.join(&plain);
                self.visible(&path, &plain)?;
                let node = virtual_node(&[b"sidecar\0", path.as_os_str().as_bytes()].concat());
                return Ok((node, NodeKind::LongSidecar, path));
            }
        };
        if self.hidden(dir, &plain) {
            return Err(VolumeError::NotFound);
        }
        let path = dir.join(&plain);
        let stat = self.visible(&path, &plain)?;
        Ok((self.plain_node(stat.st_ino), NodeKind::Plain, path))
    }

    /// The stat of a plaintext entry that is part of the view; ENOENT for one that is not.
    fn visible(&self, path: &Path, name: &OsStr) -> Result<FileStat> {
        let parent = path.parent().unwrap_or(Path::new(""));
        if self.hidden(parent, name) {
            return Err(VolumeError::NotFound);
        }
        // A mount point anywhere on the path fails to resolve (RESOLVE_NO_XDEV): st_dev is
        // not compared, as overlayfs reports the underlying filesystem's for files.
        let stat = self.stat_plain(path)?;
        let is_dir = file_type(stat.st_mode) == FileType::Directory;
        if self.excludes.excludes(path, is_dir) {
            return Err(VolumeError::NotFound);
        }
        Ok(stat)
    }

    /// The plaintext name in `dir` whose encrypted name is the long entry `hashed`.
    fn find_long(&self, dir: &Path, hashed: &str) -> Result<OsString> {
        for (name, _, _) in self.list_plain(dir)? {
            if let Ok(BackingName::Long { hashed: h, .. }) = encrypt_name(self.volume_keys(), &name)
                && h == hashed
            {
                return Ok(name);
            }
        }
        Err(VolumeError::NotFound)
    }

    /// The entries of a plaintext directory that belong in the view: (name, type, inode).
    fn list_plain(&self, dir: &Path) -> Result<Vec<(OsString, FileType, u64)>> {
        let fd = self.open_beneath(dir, OFlag::O_RDONLY | OFlag::O_DIRECTORY)?;
        let mut handle = nix::dir::Dir::from_fd(fd)?;
        let dir_fd = unsafe { BorrowedFd::borrow_raw(handle.as_raw_fd()) };
        let mut out = Vec::new();
        for entry in handle.iter() {
            let entry = entry?;
            let name = OsStr::from_bytes(entry.file_name().to_bytes());
            if name == "." || name == ".." || self.hidden(dir, name) {
                continue;
            }
            let known = entry.file_type().map(|t| match t {
                nix::dir::Type::Directory => FileType::Directory,
                nix::dir::Type::File => FileType::RegularFile,
                nix::dir::Type::Symlink => FileType::Symlink,
                nix::dir::Type::Fifo => FileType::NamedPipe,
                nix::dir::Type::Socket => FileType::Socket,
                nix::dir::Type::CharacterDevice => FileType::CharDevice,
                nix::dir::Type::BlockDevice => FileType::BlockDevice,
            });
            // Directories are stat'ed to leave out other filesystems mounted on them.
            let kind = match known {
                Some(kind) if kind != FileType::Directory => kind,
                _ => match fstatat(dir_fd, name, AtFlags::AT_SYMLINK_NOFOLLOW) {
                    Ok(st) if st.st_dev == self.root_dev => file_type(st.st_mode),
                    _ => continue,
                },
            };
            let path = dir.join(name);
            if self.excludes.excludes(&path, kind == FileType::Directory) {
                continue;
            }
            out.push((name.to_os_string(), kind, entry.ino()));
        }
        Ok(out)
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

    fn sidecar_bytes(&self, path: &Path) -> Result<Vec<u8>> {
        let name = path.file_name().ok_or(VolumeError::NotFound)?;
        match encrypt_name(self.volume_keys(), name)? {
            BackingName::Long { full, .. } => Ok(full.into_bytes()),
            BackingName::Short(_) => Err(VolumeError::NotFound),
        }
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
        let mut entries = vec![
            DirEntry {
                ino: node,
                kind: FileType::Directory,
                name: ".".into(),
                target: None,
            },
            DirEntry {
                ino: node,
                kind: FileType::Directory,
                name: "..".into(),
                target: None,
            },
        ];
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
                        target: Some((NodeKind::HeaderDir(prefix), PathBuf::new())),
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
                        target: Some((NodeKind::Header(*id), PathBuf::new())),
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
                target: Some((NodeKind::Config, PathBuf::new())),
            });
            entries.push(DirEntry {
                ino: virtual_node(b"headers"),
                kind: FileType::Directory,
                name: HEADERS_DIR.into(),
                target: Some((NodeKind::HeadersRoot, PathBuf::new())),
            });
        }
        for (name, kind, ino) in self.list_plain(dir)? {
            let encrypted = match encrypt_name(self.volume_keys(), &name) {
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
                    target: Some((NodeKind::LongSidecar, path.clone())),
                });
            }
            entries.push(DirEntry {
                ino: self.plain_node(ino),
                kind,
                name: encrypted.entry().into(),
                target: Some((NodeKind::Plain, path)),
            });
        }
        Ok(())
    }

    /// The attributes of a listed entry, for readdirplus; None for "." and "..", and for an
    /// entry gone or replaced since the listing.
    pub fn entry_attr(&self, entry: &DirEntry) -> Option<FileAttr> {
        let (kind, path) = entry.target.as_ref()?;
        self.attr_of(entry.ino, kind, path).ok()
    }

    /// Counts a lookup of a listed entry whose attributes readdirplus handed to the kernel.
    pub fn remember_entry(&self, entry: &DirEntry) {
        if let Some((kind, path)) = &entry.target {
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

    /// The config as the view shows it; a rewrite (rotation, key add) is picked up, its MAC
    /// checked, and its KEKs applied, so headers follow the current KEK.
    fn config_copy(&self) -> ConfigView {
        let mut config = crate::sync::lock(&self.config);
        let fresh = fstatat(
            self.root.as_fd(),
            REVERSE_CONFIG_FILE,
            AtFlags::AT_SYMLINK_NOFOLLOW,
        );
        if let Ok(stat) = fresh
            && !same_stamp(&stat, &config.stat)
        {
            match read_config(self.root.as_fd()).and_then(|(bytes, stat)| {
                let parsed = VolumeConfig::parse(&bytes)?;
                self.keys.volume.apply_config(&parsed)?;
                Ok((bytes, stat))
            }) {
                Ok((bytes, stat)) => {
                    *config = ConfigCopy {
                        bytes: Arc::new(bytes),
                        stat,
                    }
                }
                Err(e) => {
                    tracing::error!(error = %e, "the reverse config changed and cannot be used; keeping the previous one")
                }
            }
        }
        ConfigView {
            bytes: config.bytes.clone(),
            stat: config.stat,
        }
    }

    fn index_has(&self, test: impl Fn(&BTreeSet<Id>) -> bool) -> bool {
        if let Ok(ids) = self.index_ids(INDEX_MAX_AGE)
            && test(&ids)
        {
            return true;
        }
        self.index_ids(INDEX_MISS_REFRESH)
            .map(|ids| test(&ids))
            .unwrap_or(false)
    }

    /// The ids of every regular file in the view, from an index at most `max_age` old.
    fn index_ids(&self, max_age: Duration) -> Result<BTreeSet<Id>> {
        let mut index = crate::sync::lock(&self.index);
        let fresh = index.built.is_some_and(|t| t.elapsed() < max_age) && !max_age.is_zero();
        if !fresh {
            self.config_copy();
            let started = Instant::now();
            index.ids = self.build_index()?;
            index.built = Some(Instant::now());
            tracing::debug!(files = index.ids.len(), elapsed = ?started.elapsed(), "header index rebuilt");
        }
        Ok(index.ids.clone())
    }

    /// Walks the tree as the view shows it and derives each regular file's id.
    fn build_index(&self) -> Result<BTreeSet<Id>> {
        let mut ids = BTreeSet::new();
        let mut pending = vec![PathBuf::new()];
        while let Some(dir) = pending.pop() {
            let entries = match self.list_plain(&dir) {
                Ok(entries) => entries,
                Err(e) => {
                    tracing::warn!(dir = ?dir, error = %e, "cannot list a directory for the header index");
                    continue;
                }
            };
            for (name, kind, _) in entries {
                let path = dir.join(&name);
                match kind {
                    FileType::Directory => pending.push(path),
                    FileType::RegularFile => match self.stat_plain(&path) {
                        Ok(stat) => {
                            ids.insert(self.keys.file_id(&identity(&path, &stat)));
                        }
                        Err(e) => {
                            tracing::debug!(file = ?path, error = %e, "vanished while indexing")
                        }
                    },
                    _ => {}
                }
            }
        }
        Ok(ids)
    }
}

struct ConfigView {
    bytes: Arc<Vec<u8>>,
    stat: FileStat,
}

fn read_config(root: BorrowedFd<'_>) -> Result<(Vec<u8>, FileStat)> {
    let fd = nix::fcntl::openat(
        root,
        REVERSE_CONFIG_FILE,
        OFlag::O_RDONLY | OFlag::O_CLOEXEC | OFlag::O_NOFOLLOW,
        nix::sys::stat::Mode::empty(),
    )
    .map_err(|e| VolumeError::Usage(format!("cannot read {REVERSE_CONFIG_FILE}: {e}")))?;
    let file = File::from(fd);
    let stat = fstat(&file)?;
    let mut bytes = Vec::new();
    file.take(MAX_CONFIG_LEN as u64 + 1)
        .read_to_end(&mut bytes)?;
    Ok((bytes, stat))
}
