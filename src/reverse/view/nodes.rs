//! The view's node table: which node ids the kernel holds, and what each one is (a plaintext
//! entry by its path, or a file that exists only in the view). Plaintext entries keep their
//! inode numbers as node ids; view-only files get ids with the top bit set.

use std::path::PathBuf;

use super::ReverseView;
use crate::format::Id;
use crate::volume::{Result, VolumeError};

pub const ROOT_NODE: u64 = 1;
/// Node ids of entries that exist only in the view (config, header tree, long-name sidecars)
/// have the top bit set; plaintext inode numbers never do.
const VIRTUAL_BIT: u64 = 1 << 63;

#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum NodeKind {
    /// A plaintext entry; `path` is below the plaintext root ("" for the root).
    Plain,
    Config,
    HeadersRoot,
    HeaderDir(u8),
    Header(Id),
    /// The `.name` sidecar of the long-named entry at `path`.
    LongSidecar,
}

pub(super) struct NodeEntry {
    pub kind: NodeKind,
    pub path: PathBuf,
    pub lookups: u64,
}

pub(super) fn virtual_node(tag: &[u8]) -> u64 {
    let hash = blake3::hash(tag);
    let mut bytes = [0u8; 8];
    bytes.copy_from_slice(&hash.as_bytes()[..8]);
    VIRTUAL_BIT | (u64::from_be_bytes(bytes) & !VIRTUAL_BIT)
}

impl ReverseView {
    /// Node id of a plaintext inode: its inode number, with the root's and 1 trading places.
    pub(super) fn plain_node(&self, ino: u64) -> u64 {
        if ino == self.root_ino {
            ROOT_NODE
        } else if ino == ROOT_NODE {
            self.root_ino
        } else {
            ino
        }
    }

    pub(super) fn entry(&self, node: u64) -> Result<(NodeKind, PathBuf)> {
        let nodes = crate::sync::lock(&self.nodes);
        let entry = nodes.get(&node).ok_or(VolumeError::NotFound)?;
        Ok((entry.kind.clone(), entry.path.clone()))
    }

    pub(super) fn remember(&self, node: u64, kind: NodeKind, path: PathBuf) {
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
}
