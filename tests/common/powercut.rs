//! A power-cut simulator for a cipher dir, in the style of LazyFS (Jepsen), ALICE and
//! CrashMonkey: an in-process FUSE passthrough that serves a directory `lower` at `upper`, and
//! keeps the data that was not made durable in memory, so that a test can ask what a power cut
//! at any moment would have left.
//!
//! The model (LazyFS's):
//! - Metadata operations (create, mkdir, mknod, symlink, link, unlink, rmdir, rename, chmod,
//!   chown, utimes, xattrs) reach `lower` at once and count as durable. That is more forgiving
//!   than ext4, where a directory operation that was never fsynced (nor its directory) may
//!   vanish in a cut.
//! - Data changes of regular files (writes, and truncation through setattr) do not reach
//!   `lower`: they join one global, ordered list of pending operations, each tagged with the
//!   file it changes by the file's lower inode number (files are renamed and unlinked; an
//!   inode keeps its number while this filesystem holds a descriptor of it, and the pending
//!   operations of a file that loses its last name are dropped, so a number is never reused
//!   for a file with operations pending). Reads and getattr see them through an in-memory copy
//!   of each such file.
//! - fsync and fdatasync of a file apply its pending operations to `lower`, in order, and take
//!   them off the list; close (flush, release) does not. `lower` itself is never fsynced: it
//!   *is* the disk of the model. FUSE has no syncfs; fallocate answers EOPNOTSUPP; locks are
//!   not implemented, so the kernel keeps POSIX, OFD and flock locks locally.
//!
//! Every request that changes `lower` or the pending list (fsync included) advances a counter
//! that the test reads with [`Powercut::counter`]. A [`Snapshot`] is taken with every request
//! held off: `lower` is copied, and the pending list with it. Snapshots are taken on demand
//! ([`Powercut::snapshot`]) or by the filesystem itself right after the request that brings the
//! counter to a value set with [`Powercut::set_triggers`], which lands inside a single FUSE
//! write of the program on top without its knowledge. [`Snapshot::materialize`] then builds one
//! crash state from it: a [`Variant`] of the pending list applied to a copy.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::ffi::{CString, OsStr, OsString};
use std::fs::{File, OpenOptions};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirEntryExt, FileExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fuser::{
    BackgroundSession, Config, Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags,
    Generation, INodeNo, LockOwner, MountOption, OpenFlags, RenameFlags, ReplyAttr, ReplyCreate,
    ReplyData, ReplyDirectory, ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs, ReplyWrite,
    ReplyXattr, Request, TimeOrNow, WriteFlags,
};
use nix::fcntl::{AT_FDCWD, AtFlags, OFlag, open, openat, readlinkat, renameat2};
use nix::sys::stat::{FchmodatFlags, FileStat, Mode, SFlag, fchmodat, fstat, mkdirat, mknodat};
use nix::unistd::{Gid, Uid, UnlinkatFlags, fchownat, linkat, symlinkat, unlinkat};

use super::Rng;

mod copy;
mod fuse;

use copy::copy_dir;

/// How long the kernel may keep attributes and entries: every change passes through this
/// mount, so its caches stay right.
const TTL: Duration = Duration::from_secs(1);

/// Torn writes are cut at sector boundaries of the file.
pub const SECTOR: u64 = 512;

/// A data change of one regular file.
#[derive(Clone, Debug)]
pub enum Change {
    Write {
        offset: u64,
        data: Vec<u8>,
    },
    Truncate(u64),
    /// A punched hole or zeroed range: metadata on the filesystems that have fallocate
    /// (extents freed or made unwritten), so done whole or not at all, never torn.
    Zero {
        offset: u64,
        len: u64,
    },
}

impl Change {
    fn apply_to(&self, contents: &mut Vec<u8>) {
        match self {
            Change::Write { offset, data } => {
                let (start, end) = (*offset as usize, *offset as usize + data.len());
                if contents.len() < end {
                    contents.resize(end, 0);
                }
                contents[start..end].copy_from_slice(data);
            }
            Change::Truncate(len) => contents.resize(*len as usize, 0),
            Change::Zero { offset, len } => {
                let (start, end) = (*offset as usize, (*offset + *len) as usize);
                if contents.len() < end {
                    contents.resize(end, 0);
                }
                contents[start..end].fill(0);
            }
        }
    }

    fn apply_to_file(&self, file: &File) {
        match self {
            Change::Write { offset, data } => file.write_all_at(data, *offset).unwrap(),
            Change::Truncate(len) => file.set_len(*len).unwrap(),
            Change::Zero { offset, len } => {
                file.write_all_at(&vec![0; *len as usize], *offset).unwrap()
            }
        }
    }

    /// The lengths a torn copy of this change may keep: up to each sector boundary strictly
    /// inside a write. None for a truncation or a zeroed range.
    fn tear_points(&self) -> Vec<usize> {
        let Change::Write { offset, data } = self else {
            return Vec::new();
        };
        let end = offset + data.len() as u64;
        let first = (offset / SECTOR + 1) * SECTOR;
        (first..end)
            .step_by(SECTOR as usize)
            .map(|b| (b - offset) as usize)
            .collect()
    }
}

/// A data change not yet made durable, in the global order.
#[derive(Clone, Debug)]
struct Pending {
    /// The lower inode number of the file it changes.
    file: u64,
    change: Change,
}

/// What survives the cut, of the pending list at the snapshot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Variant {
    /// Nothing that was not fsynced.
    Drop,
    /// The first `n` pending operations, in order.
    Prefix(usize),
    /// The first `op - 1` pending operations (op counts from 1), then of operation `op`, a
    /// write, only its first `keep` bytes, which end at a sector boundary of the file.
    Torn { op: usize, keep: usize },
}

impl Variant {
    /// A short name for reports: "drop", "prefix" or "torn".
    pub fn kind(&self) -> &'static str {
        match self {
            Variant::Drop => "drop",
            Variant::Prefix(_) => "prefix",
            Variant::Torn { .. } => "torn",
        }
    }
}

/// `lower` as a cut at one moment would find it (a copy), and the pending list of that moment.
pub struct Snapshot {
    /// The counter when it was taken.
    pub counter: u64,
    dir: tempfile::TempDir,
    /// The pending operations, each with the path (relative to `lower`) of its file. A file
    /// with no name left has no operations pending (see the module doc).
    pending: Vec<(PathBuf, Change)>,
}

impl Snapshot {
    /// How many operations were pending.
    pub fn pending_len(&self) -> usize {
        self.pending.len()
    }

    /// A variant picked by `rng`: Drop, a Prefix or a torn write, each as likely (Drop when
    /// nothing was pending, a Prefix when no pending write spans a sector boundary).
    pub fn pick_variant(&self, rng: &mut Rng) -> Variant {
        let tearable: Vec<(usize, Vec<usize>)> = (self.pending.iter().enumerate())
            .map(|(i, (_, change))| (i + 1, change.tear_points()))
            .filter(|(_, points)| !points.is_empty())
            .collect();
        match (self.pending.len(), rng.below(3)) {
            (0, _) | (_, 0) => Variant::Drop,
            (_, 2) if !tearable.is_empty() => {
                let (op, points) = &tearable[rng.below(tearable.len() as u64) as usize];
                let keep = points[rng.below(points.len() as u64) as usize];
                Variant::Torn { op: *op, keep }
            }
            (n, _) => Variant::Prefix(1 + rng.below(n as u64) as usize),
        }
    }

    /// Copies the snapshot to `into` (made here) and applies `variant` of its pending list.
    pub fn materialize(&self, variant: Variant, into: &Path) {
        copy_dir(self.dir.path(), into);
        let (whole, torn) = match variant {
            Variant::Drop => (0, None),
            Variant::Prefix(n) => (n, None),
            Variant::Torn { op, keep } => (op - 1, Some((op - 1, keep))),
        };
        let open = |path: &Path| {
            OpenOptions::new()
                .write(true)
                .open(into.join(path))
                .unwrap()
        };
        for (path, change) in &self.pending[..whole] {
            change.apply_to_file(&open(path));
        }
        if let Some((index, keep)) = torn {
            let (path, change) = &self.pending[index];
            let Change::Write { offset, data } = change else {
                panic!("{variant:?} tears a truncation");
            };
            assert!(
                change.tear_points().contains(&keep),
                "{variant:?} of {change:?}"
            );
            open(path).write_all_at(&data[..keep], *offset).unwrap();
        }
    }
}

/// A node the kernel knows: an O_PATH descriptor of the lower inode.
struct Node {
    fd: OwnedFd,
    lookups: u64,
}

/// A regular file with changes pending: its contents and mtime as programs see them.
struct Shadow {
    data: Vec<u8>,
    mtime: SystemTime,
}

/// An open directory: its listing when opened (inode, type, name).
type Listing = Vec<(u64, FileType, OsString)>;

struct State {
    lower: PathBuf,
    /// Where snapshots are made.
    scratch: PathBuf,
    /// The lower inode number of `lower` itself, which the kernel calls 1. Every other node
    /// goes by its lower inode number.
    root_ino: u64,
    nodes: HashMap<u64, Node>,
    /// Open files, for reads of files with nothing pending.
    files: HashMap<u64, File>,
    /// Open directories.
    dirs: HashMap<u64, Listing>,
    next_handle: u64,
    shadows: HashMap<u64, Shadow>,
    pending: Vec<Pending>,
    triggers: BTreeSet<u64>,
    snapshots: Vec<Snapshot>,
}

type Res<T> = Result<T, Errno>;

fn nx<T>(r: nix::Result<T>) -> Res<T> {
    r.map_err(|e| Errno::from_i32(e as i32))
}

/// `/proc/self/fd/N`, a path to whatever an O_PATH descriptor refers to.
fn proc_path(fd: &OwnedFd) -> PathBuf {
    PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd()))
}

fn c_path(path: &Path) -> CString {
    CString::new(path.as_os_str().as_bytes()).unwrap()
}

fn c_name(name: &OsStr) -> CString {
    CString::new(name.as_bytes()).unwrap()
}

fn kind_of(mode: u32) -> FileType {
    match SFlag::from_bits_truncate(mode & SFlag::S_IFMT.bits()) {
        SFlag::S_IFDIR => FileType::Directory,
        SFlag::S_IFLNK => FileType::Symlink,
        SFlag::S_IFIFO => FileType::NamedPipe,
        SFlag::S_IFCHR => FileType::CharDevice,
        SFlag::S_IFBLK => FileType::BlockDevice,
        SFlag::S_IFSOCK => FileType::Socket,
        _ => FileType::RegularFile,
    }
}

fn time(secs: i64, nsecs: i64) -> SystemTime {
    UNIX_EPOCH + Duration::new(secs as u64, nsecs as u32)
}

/// An xattr call's answer of `len` bytes: its size when asked for 0 bytes, else the bytes.
fn xattr_reply(reply: ReplyXattr, size: u32, value: &[u8]) {
    if size == 0 {
        reply.size(value.len() as u32);
    } else if value.len() > size as usize {
        reply.error(Errno::ERANGE);
    } else {
        reply.data(value);
    }
}

/// Calls an xattr getter twice: for the size, then for the bytes.
fn xattr_bytes(get: impl Fn(*mut libc::c_void, usize) -> isize) -> Res<Vec<u8>> {
    loop {
        let len = get(std::ptr::null_mut(), 0);
        if len < 0 {
            return Err(Errno::from(std::io::Error::last_os_error()));
        }
        let mut buf = vec![0u8; len as usize];
        let got = get(buf.as_mut_ptr().cast(), buf.len());
        if got >= 0 {
            buf.truncate(got as usize);
            return Ok(buf);
        }
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::ERANGE) {
            return Err(Errno::from(e));
        }
    }
}

fn check(rc: libc::c_int) -> Res<()> {
    if rc < 0 {
        return Err(Errno::from(std::io::Error::last_os_error()));
    }
    Ok(())
}

impl State {
    fn kernel_ino(&self, lower_ino: u64) -> u64 {
        if lower_ino == self.root_ino {
            1
        } else {
            lower_ino
        }
    }

    fn node(&self, ino: INodeNo) -> Res<&OwnedFd> {
        self.nodes.get(&ino.0).map(|n| &n.fd).ok_or(Errno::ESTALE)
    }

    fn attr(&self, ino: u64, st: &FileStat) -> FileAttr {
        let shadow = self.shadows.get(&ino);
        let size = shadow.map_or(st.st_size as u64, |s| s.data.len() as u64);
        let mtime = shadow.map_or(time(st.st_mtime, st.st_mtime_nsec), |s| s.mtime);
        FileAttr {
            ino: INodeNo(ino),
            size,
            blocks: (st.st_blocks as u64).max(shadow.map_or(0, |_| size.div_ceil(512))),
            atime: time(st.st_atime, st.st_atime_nsec),
            mtime,
            ctime: mtime.max(time(st.st_ctime, st.st_ctime_nsec)),
            crtime: UNIX_EPOCH,
            kind: kind_of(st.st_mode),
            perm: (st.st_mode & 0o7777) as u16,
            nlink: st.st_nlink as u32,
            uid: st.st_uid,
            gid: st.st_gid,
            rdev: st.st_rdev as u32,
            blksize: st.st_blksize as u32,
            flags: 0,
        }
    }

    fn getattr(&self, ino: INodeNo) -> Res<FileAttr> {
        Ok(self.attr(ino.0, &nx(fstat(self.node(ino)?))?))
    }

    /// Takes a lookup of `name` in `parent` (a new node, or one more lookup of a known one).
    fn remember(&mut self, parent: INodeNo, name: &OsStr) -> Res<FileAttr> {
        let flags = OFlag::O_PATH | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
        let fd = nx(openat(self.node(parent)?, name, flags, Mode::empty()))?;
        let st = nx(fstat(&fd))?;
        let ino = self.kernel_ino(st.st_ino);
        self.nodes
            .entry(ino)
            .or_insert(Node { fd, lookups: 0 })
            .lookups += 1;
        Ok(self.attr(ino, &st))
    }

    /// Takes the entry `name` just made in `parent`, with exactly `mode`'s permission bits
    /// (the kernel applied the umask; this process's own must not apply again).
    fn made(&mut self, parent: INodeNo, name: &OsStr, mode: u32) -> Res<FileAttr> {
        let path = proc_path(self.node(parent)?).join(name);
        let perm = Mode::from_bits_truncate(mode & 0o7777);
        nx(fchmodat(
            AT_FDCWD,
            &path,
            perm,
            FchmodatFlags::FollowSymlink,
        ))?;
        self.remember(parent, name)
    }

    /// The inode `name` in `parent` names, for `settle` after an operation that may take its
    /// last name.
    fn victim(&self, parent: INodeNo, name: &OsStr) -> Option<OwnedFd> {
        let flags = OFlag::O_PATH | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
        openat(self.node(parent).ok()?, name, flags, Mode::empty()).ok()
    }

    /// A file with no name left never reaches the disk of a cut: its pending operations go.
    fn settle(&mut self, victim: Option<OwnedFd>) {
        let Some(st) = victim.and_then(|fd| fstat(&fd).ok()) else {
            return;
        };
        if st.st_nlink == 0 {
            let ino = self.kernel_ino(st.st_ino);
            self.pending.retain(|p| p.file != ino);
            if !self.nodes.contains_key(&ino) {
                self.shadows.remove(&ino);
            }
        }
    }

    /// Records a data change of file `ino`: pending, and visible through its shadow.
    fn change(&mut self, ino: u64, change: Change) -> Res<()> {
        if !self.shadows.contains_key(&ino) {
            let data = std::fs::read(proc_path(self.node(INodeNo(ino))?))?;
            let mtime = SystemTime::now();
            self.shadows.insert(ino, Shadow { data, mtime });
        }
        let shadow = self.shadows.get_mut(&ino).unwrap();
        change.apply_to(&mut shadow.data);
        shadow.mtime = SystemTime::now();
        self.pending.push(Pending { file: ino, change });
        Ok(())
    }

    /// fsync: the file's pending operations reach `lower`, in order.
    fn sync(&mut self, ino: u64) -> Res<()> {
        if !self.pending.iter().any(|p| p.file == ino) {
            return Ok(());
        }
        let file = OpenOptions::new()
            .write(true)
            .open(proc_path(self.node(INodeNo(ino))?))?;
        let (mine, rest) = std::mem::take(&mut self.pending)
            .into_iter()
            .partition(|p| p.file == ino);
        self.pending = rest;
        for p in mine {
            p.change.apply_to_file(&file);
        }
        self.shadows.remove(&ino);
        Ok(())
    }

    /// Copies `lower` and the pending list; every request waits meanwhile (the caller holds
    /// the state).
    fn snapshot(&self, counter: u64) -> Snapshot {
        let dir = tempfile::tempdir_in(&self.scratch).unwrap();
        copy_dir(&self.lower, dir.path());
        let wanted: HashSet<u64> = self.pending.iter().map(|p| p.file).collect();
        let mut paths = HashMap::new();
        find_files(&self.lower, Path::new(""), &wanted, &mut paths);
        let pending = (self.pending.iter())
            .filter_map(|p| Some((paths.get(&p.file)?.clone(), p.change.clone())))
            .collect();
        Snapshot {
            counter,
            dir,
            pending,
        }
    }
}

/// A path (relative to `root`) of each regular file under `root/rel` whose inode is wanted.
fn find_files(root: &Path, rel: &Path, wanted: &HashSet<u64>, found: &mut HashMap<u64, PathBuf>) {
    for entry in std::fs::read_dir(root.join(rel)).unwrap() {
        let entry = entry.unwrap();
        let kind = entry.file_type().unwrap();
        let path = rel.join(entry.file_name());
        if kind.is_dir() {
            find_files(root, &path, wanted, found);
        } else if kind.is_file() && wanted.contains(&entry.ino()) {
            found.entry(entry.ino()).or_insert(path);
        }
    }
}

/// The state and the counter, shared by the FUSE handlers and the test.
struct Shared {
    state: Mutex<State>,
    counter: AtomicU64,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap()
    }

    /// Counts a request that changed something, and takes the snapshot asked for at the new
    /// count, if any.
    fn bump(&self, state: &mut State) {
        let counter = self.counter.fetch_add(1, Ordering::SeqCst) + 1;
        if state.triggers.remove(&counter) {
            let snapshot = state.snapshot(counter);
            state.snapshots.push(snapshot);
        }
    }
}

/// A mounted interposer: `lower` served at `upper`. Unmounts when dropped (unmount whatever is
/// mounted on top of it first).
pub struct Powercut {
    pub upper: PathBuf,
    shared: Arc<Shared>,
    session: Option<BackgroundSession>,
}

impl Powercut {
    /// Serves `lower` at `upper` (an empty directory); snapshots are made under `scratch`.
    pub fn mount(lower: &Path, upper: &Path, scratch: &Path) -> Powercut {
        let flags = OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC;
        let root = open(lower, flags, Mode::empty()).unwrap();
        let root_ino = fstat(&root).unwrap().st_ino;
        let mut nodes = HashMap::new();
        nodes.insert(
            1,
            Node {
                fd: root,
                lookups: 1,
            },
        );
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                lower: lower.to_path_buf(),
                scratch: scratch.to_path_buf(),
                root_ino,
                nodes,
                files: HashMap::new(),
                dirs: HashMap::new(),
                next_handle: 0,
                shadows: HashMap::new(),
                pending: Vec::new(),
                triggers: BTreeSet::new(),
                snapshots: Vec::new(),
            }),
            counter: AtomicU64::new(0),
        });
        let mut config = Config::default();
        config.mount_options = vec![
            MountOption::FSName("powercut".into()),
            MountOption::DefaultPermissions,
        ];
        let session = fuser::Session::new(fuse::PowercutFs(shared.clone()), upper, &config)
            .and_then(|s| s.spawn())
            .unwrap_or_else(|e| panic!("mount the interposer on {}: {e}", upper.display()));
        Powercut {
            upper: upper.to_path_buf(),
            shared,
            session: Some(session),
        }
    }

    /// Requests that changed something so far (fsyncs included).
    pub fn counter(&self) -> u64 {
        self.shared.counter.load(Ordering::SeqCst)
    }

    /// A snapshot of this moment.
    pub fn snapshot(&self) -> Snapshot {
        let state = self.shared.lock();
        state.snapshot(self.counter())
    }

    /// Has the filesystem take a snapshot right after the request that brings the counter to
    /// each of `counters`; [`Powercut::take_snapshots`] collects them.
    pub fn set_triggers(&self, counters: impl IntoIterator<Item = u64>) {
        self.shared.lock().triggers.extend(counters);
    }

    /// The snapshots triggered so far, in the order taken.
    pub fn take_snapshots(&self) -> Vec<Snapshot> {
        std::mem::take(&mut self.shared.lock().snapshots)
    }
}

impl Drop for Powercut {
    fn drop(&mut self) {
        if let Some(session) = self.session.take()
            && session.umount_and_join().is_err()
        {
            let _ = nix::mount::umount2(&self.upper, nix::mount::MntFlags::MNT_DETACH);
        }
    }
}
