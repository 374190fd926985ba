//! The inode table: one node per backing inode (so all hard links share one node id), each
//! holding an O_PATH fd so that operations work relative to the inode, not a path. Nodes
//! are dropped when the kernel forgets them. The kernel forgets only under memory pressure, so
//! the table also remembers where each node was last looked up and when it was last used:
//! `prune_candidates` names the idle ones to ask the kernel to forget (see fs/pruner.rs).

use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use fuser::FileType;
use nix::sys::stat::FileStat;

use super::handles::{BackingHandle, RETIRED_NODES, Retired, RetiredNodes};
use crate::io::FileId as Id;
use crate::io::range_lock::RangeLock;
use crate::keys::DataKeyMaterial;
use crate::shell::attr::file_type;
use crate::volume::hole_maps::FileHoles;
use crate::volume::undo::Keeper;

pub const ROOT_INO: u64 = 1;

/// `Node::default_acl` states.
pub const ACL_UNKNOWN: u8 = 0;
pub const ACL_NONE: u8 = 1;
pub const ACL_SET_HERE: u8 = 2;

/// The key material of an open regular file, and the keeper of its hole map (`None`: a
/// version 1 data file).
pub struct Content {
    pub file_id: Id,
    pub material: Arc<DataKeyMaterial>,
    pub holes: Option<Arc<FileHoles>>,
    /// The keeper of the data file's undo journal (`None`: this mount journals nothing).
    pub undo: Option<Arc<Keeper>>,
}

impl Content {
    /// What the hole ledger calls need besides the map: the data file and its key.
    pub fn ledger_access<'a>(&'a self, file: &'a std::fs::File) -> crate::io::LedgerAccess<'a> {
        crate::io::LedgerAccess {
            file,
            file_id: &self.file_id,
            sealer: &self.material.content,
        }
    }
}

pub struct Node {
    pub ino: u64,
    pub fd: OwnedFd,
    pub kind: FileType,
    /// The backing filesystem's handle of the inode, kept when the kernel forgets the node
    /// (fs/handles.rs); `None` where the backing store gives none.
    handle: Option<BackingHandle>,
    lookups: AtomicU64,
    /// The file id the data file carries; read once.
    pub file_id: OnceLock<Id>,
    /// The keeper of the data file's hole map, one per inode so that every handle sees the
    /// same (`None`: a version 1 data file); set with `file_id`.
    pub holes: OnceLock<Option<Arc<FileHoles>>>,
    /// The keeper of the data file's undo journal, one per inode like `holes`.
    pub undo: OnceLock<Option<Arc<Keeper>>>,
    /// Block-range lock: keeps read-modify-write of edge blocks and size changes from
    /// interleaving, while I/O to disjoint blocks runs in parallel.
    pub ranges: RangeLock,
    /// Backing (mtime, size) when the last handle closed: unchanged at the next open means
    /// the kernel may keep its page cache.
    pub closed_stamp: Mutex<Option<(i64, i64, i64)>>,
    pub open_handles: AtomicU32,
    /// Set when the last link went away while the file was open: its header goes at the last
    /// release.
    pub orphaned_header: Mutex<Option<Id>>,
    /// Whether this file's header is known to be on stable storage (set by the first fsync;
    /// headers written by an earlier mount were synced then or are as durable as they got).
    pub header_durable: std::sync::atomic::AtomicBool,
    /// What a lone mount knows of a directory's default ACL (fs/core/acl.rs): `ACL_UNKNOWN`,
    /// `ACL_NONE` (a create found none), or `ACL_SET_HERE` (one was set through this mount:
    /// never assumed absent again).
    pub default_acl: std::sync::atomic::AtomicU8,
    /// The plaintext size the last write through this mount left: only a guess at which
    /// blocks the next write must lock (the size is read again under the lock), so an append
    /// locks the right range at the first try.
    pub size_hint: AtomicU64,
    /// Counts the locks programs took on this file through a shared mount (fs/core/locks.rs):
    /// another host may have written under the lock before, which a description opened
    /// earlier may not show (a distributed filesystem's client can serve an open file from
    /// what it knew at open), so reads move to `reader`.
    pub lock_epoch: AtomicU64,
    /// A description opened after the lock of the epoch it names, read through by handles
    /// opened before it.
    pub reader: Mutex<Option<(u64, Arc<std::fs::File>)>>,
    /// Parent node and plaintext name of the last lookup: what the kernel can be asked to
    /// forget.
    origin: Mutex<Option<(u64, OsString)>>,
    /// The table's use counter when this node was last used.
    last_used: AtomicU64,
    /// The key policy protecting this node (a directory's: its own marker's or its parent's;
    /// anything else's: its directory's) and the tenants' generation it was found in, packed
    /// as generation << 32 | policy (`SealFs::policy_of` looks again when the generation
    /// moved).
    policy: AtomicU64,
}

impl Node {
    fn new(ino: u64, fd: OwnedFd, kind: FileType) -> Node {
        let handle = (ino != ROOT_INO)
            .then(|| BackingHandle::of(fd.as_fd()))
            .flatten();
        Node {
            ino,
            fd,
            kind,
            handle,
            lookups: AtomicU64::new(0),
            file_id: OnceLock::new(),
            holes: OnceLock::new(),
            undo: OnceLock::new(),
            ranges: RangeLock::default(),
            closed_stamp: Mutex::new(None),
            open_handles: AtomicU32::new(0),
            orphaned_header: Mutex::new(None),
            header_durable: std::sync::atomic::AtomicBool::new(false),
            default_acl: std::sync::atomic::AtomicU8::new(ACL_UNKNOWN),
            size_hint: AtomicU64::new(0),
            lock_epoch: AtomicU64::new(0),
            reader: Mutex::new(None),
            origin: Mutex::new(None),
            last_used: AtomicU64::new(0),
            policy: AtomicU64::new(0),
        }
    }

    /// The policy this node was found under, if found in tenants' generation `generation`.
    pub fn policy_in(&self, generation: u32) -> Option<u32> {
        let packed = self.policy.load(Ordering::Acquire);
        ((packed >> 32) as u32 == generation).then_some(packed as u32)
    }

    /// The policy last found, whatever the generation.
    pub fn last_policy(&self) -> u32 {
        self.policy.load(Ordering::Acquire) as u32
    }

    /// Restores a policy as `Retired` kept it.
    pub fn restore_policy(&self, packed: u64) {
        self.policy.store(packed, Ordering::Release);
    }

    pub fn set_policy(&self, generation: u32, policy: u32) {
        self.policy.store(
            (u64::from(generation) << 32) | u64::from(policy),
            Ordering::Release,
        );
    }

    /// The generation the kernel is told with this node's id: 0 for the root and where the
    /// backing store gives no handles.
    pub fn generation(&self) -> u32 {
        self.handle.as_ref().map_or(0, BackingHandle::generation)
    }

    /// The node this one was last looked up in.
    pub fn parent(&self) -> Option<u64> {
        crate::sync::lock(&self.origin).as_ref().map(|(p, _)| *p)
    }
}

pub struct InodeTable {
    nodes: Mutex<HashMap<u64, Arc<Node>>>,
    root_backing_ino: u64,
    /// Ticks on every node access; a node's `last_used` is the tick of its last access.
    clock: AtomicU64,
    /// The pruner, woken as soon as the table grows past its high mark (instead of at its
    /// next poll: a fast walk adds hundreds of nodes between two polls).
    pruner: OnceLock<(std::thread::Thread, usize)>,
    /// Nodes the kernel forgot, kept as backing handles for file handles it gave out.
    retired: RetiredNodes,
}

impl InodeTable {
    pub fn new(root_fd: OwnedFd, root_stat: &FileStat) -> Self {
        let root = Arc::new(Node::new(ROOT_INO, root_fd, FileType::Directory));
        root.lookups.store(1, Ordering::Relaxed);
        InodeTable {
            nodes: Mutex::new([(ROOT_INO, root)].into()),
            root_backing_ino: root_stat.st_ino,
            clock: AtomicU64::new(0),
            pruner: OnceLock::new(),
            retired: RetiredNodes::new(RETIRED_NODES),
        }
    }

    /// Wakes `pruner` whenever the table holds more than `high` nodes.
    pub fn wake_above(&self, pruner: std::thread::Thread, high: usize) {
        let _ = self.pruner.set((pruner, high));
    }

    /// Node ids are backing inode numbers, so they are stable across remounts; the root's
    /// backing number and 1 trade places.
    pub fn node_id(&self, backing_ino: u64) -> u64 {
        if backing_ino == self.root_backing_ino {
            ROOT_INO
        } else if backing_ino == ROOT_INO {
            self.root_backing_ino
        } else {
            backing_ino
        }
    }

    pub fn get(&self, ino: u64) -> Option<Arc<Node>> {
        let node = crate::sync::lock(&self.nodes).get(&ino).cloned()?;
        self.touch(&node);
        Some(node)
    }

    fn touch(&self, node: &Node) {
        let now = self.clock.fetch_add(1, Ordering::Relaxed);
        node.last_used.store(now, Ordering::Relaxed);
    }

    /// The generation of node `ino`, if it is known.
    pub fn generation(&self, ino: u64) -> Option<u32> {
        crate::sync::lock(&self.nodes)
            .get(&ino)
            .map(|node| node.generation())
    }

    pub fn len(&self) -> usize {
        crate::sync::lock(&self.nodes).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Up to `count` nodes nobody has open, least recently used first, with where they were
    /// looked up: the kernel may be asked to forget them.
    pub fn prune_candidates(&self, count: usize) -> Vec<(u64, OsString)> {
        let nodes: Vec<Arc<Node>> = crate::sync::lock(&self.nodes).values().cloned().collect();
        let mut idle: Vec<(u64, Arc<Node>)> = nodes
            .into_iter()
            // Directories stay: invalidating one could be a shell's cwd or a mount point.
            .filter(|n| {
                n.ino != ROOT_INO
                    && n.kind != FileType::Directory
                    && n.open_handles.load(Ordering::Acquire) == 0
            })
            .map(|n| (n.last_used.load(Ordering::Relaxed), n))
            .collect();
        idle.sort_unstable_by_key(|(used, _)| *used);
        idle.into_iter()
            .filter_map(|(_, n)| crate::sync::lock(&n.origin).clone())
            .take(count)
            .collect()
    }

    pub fn peek_backing(&self, backing_ino: u64) -> Option<Arc<Node>> {
        self.get(self.node_id(backing_ino))
    }

    /// Counts one kernel lookup of the inode `fd` refers to, found as `name` in `parent`,
    /// reusing its node when known.
    pub fn remember(&self, fd: OwnedFd, stat: &FileStat, parent: u64, name: &OsStr) -> Arc<Node> {
        let node = self.count_lookup(fd, stat);
        *crate::sync::lock(&node.origin) = Some((parent, name.to_os_string()));
        node
    }

    /// Counts one kernel lookup of the inode `fd` refers to, reusing its node when known,
    /// without saying where it was found (a file handle's inode, opened again).
    pub fn count_lookup(&self, fd: OwnedFd, stat: &FileStat) -> Arc<Node> {
        let ino = self.node_id(stat.st_ino);
        let node = {
            let mut nodes = crate::sync::lock(&self.nodes);
            let node = nodes
                .entry(ino)
                .or_insert_with(|| Arc::new(Node::new(ino, fd, file_type(stat.st_mode))))
                .clone();
            node.lookups.fetch_add(1, Ordering::Relaxed);
            if let Some((pruner, high)) = self.pruner.get()
                && nodes.len() > *high
            {
                pruner.unpark();
            }
            node
        };
        self.touch(&node);
        node
    }

    /// The node `ino` the kernel forgot, opened again from its backing handle (through
    /// `mount`, an fd on the backing filesystem): its fd, and what was kept of it. `None` if
    /// it was never known, is too long forgotten, or its inode is gone.
    pub fn revive(&self, ino: u64, mount: BorrowedFd<'_>) -> Option<(OwnedFd, Retired)> {
        let retired = self.retired.find(ino)?;
        match retired.handle.open(mount) {
            Ok(fd) => Some((fd, retired)),
            Err(e) => {
                if e.raw_os_error() == Some(libc::ESTALE) {
                    self.retired.drop_node(ino);
                }
                tracing::debug!(ino, error = %e, "a forgotten node does not open again");
                None
            }
        }
    }

    /// A rename moved the node of `backing_ino` to `name` in `parent`.
    pub fn moved(&self, backing_ino: u64, parent: u64, name: &OsStr) {
        if let Some(node) = self.peek_backing(backing_ino) {
            *crate::sync::lock(&node.origin) = Some((parent, name.to_os_string()));
        }
    }

    pub fn forget(&self, ino: u64, count: u64) {
        if ino == ROOT_INO {
            return;
        }
        let mut nodes = crate::sync::lock(&self.nodes);
        if let Some(node) = nodes.get(&ino) {
            let before = node.lookups.fetch_sub(
                count.min(node.lookups.load(Ordering::Relaxed)),
                Ordering::Relaxed,
            );
            if before <= count {
                if let Some(handle) = &node.handle {
                    self.retired.keep(
                        ino,
                        Retired {
                            handle: handle.clone(),
                            policy: node.policy.load(Ordering::Acquire),
                        },
                    );
                }
                nodes.remove(&ino);
            }
        }
    }
}
