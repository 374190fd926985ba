//! File handles (open_by_handle_at, NFS re-export). The kernel hands out a FUSE mount's file
//! handles as (node id, generation); for an inode it no longer holds it asks for the node id
//! (a LOOKUP of "."), and for a directory's parent it looks up "..". Node ids are backing inode
//! numbers. A node's generation comes from the backing filesystem's own handle of the inode,
//! which changes when an inode number is reused, so a handle of a deleted file never opens
//! the file that took its number. A node the kernel forgot is kept here as that backing handle
//! (a few dozen bytes, no descriptor) so that it can be opened again; as with libfuse's
//! `remember` option, handles live as long as the mount.

use std::num::NonZeroUsize;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::sync::Mutex;

/// Linux's MAX_HANDLE_SZ.
const MAX_HANDLE_BYTES: usize = 128;

/// How many forgotten nodes are kept (least recently forgotten go first): about 100 bytes
/// each. A handle older than that is stale (ESTALE), as after a remount.
pub const RETIRED_NODES: usize = 1 << 18;

/// The backing filesystem's handle of an inode (name_to_handle_at).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BackingHandle {
    kind: i32,
    bytes: Box<[u8]>,
}

/// `struct file_handle` with room for the largest handle.
#[repr(C)]
struct RawHandle {
    handle_bytes: libc::c_uint,
    handle_type: libc::c_int,
    f_handle: [u8; MAX_HANDLE_BYTES],
}

impl BackingHandle {
    /// The handle of the inode `fd` (any fd, `O_PATH` ones included) refers to; `None` where
    /// the backing filesystem gives none (no export support, as some FUSE filesystems).
    pub fn of(fd: BorrowedFd<'_>) -> Option<BackingHandle> {
        let mut raw = RawHandle {
            handle_bytes: MAX_HANDLE_BYTES as libc::c_uint,
            handle_type: 0,
            f_handle: [0; MAX_HANDLE_BYTES],
        };
        let mut mount_id: libc::c_int = 0;
        // SAFETY: a valid fd, an empty C string, a file_handle with `handle_bytes` of room.
        let rc = unsafe {
            libc::name_to_handle_at(
                fd.as_raw_fd(),
                c"".as_ptr(),
                (&raw mut raw).cast(),
                &mut mount_id,
                libc::AT_EMPTY_PATH,
            )
        };
        (rc == 0).then(|| BackingHandle {
            kind: raw.handle_type,
            bytes: raw.f_handle[..raw.handle_bytes as usize].into(),
        })
    }

    /// The FUSE generation of the inode: 32 bits of a hash of its backing handle (never 0,
    /// which stands for "no handle").
    pub fn generation(&self) -> u32 {
        let mut hasher = blake3::Hasher::new();
        hasher.update(&self.kind.to_le_bytes());
        hasher.update(&self.bytes);
        let hash = hasher.finalize();
        let word = u32::from_le_bytes(hash.as_bytes()[..4].try_into().expect("4 bytes"));
        word.max(1)
    }

    /// Opens the inode again (`O_PATH`), through `mount`, a directory on the same backing
    /// filesystem (an `O_PATH` fd is fine). ESTALE once the inode is gone; EPERM without
    /// CAP_DAC_READ_SEARCH.
    pub fn open(&self, mount: BorrowedFd<'_>) -> std::io::Result<OwnedFd> {
        // open_by_handle_at refuses an O_PATH fd for the filesystem (EBADF).
        let mount: OwnedFd = nix::fcntl::openat(
            mount,
            ".",
            nix::fcntl::OFlag::O_RDONLY
                | nix::fcntl::OFlag::O_DIRECTORY
                | nix::fcntl::OFlag::O_CLOEXEC,
            nix::sys::stat::Mode::empty(),
        )?;
        let mut raw = RawHandle {
            handle_bytes: self.bytes.len() as libc::c_uint,
            handle_type: self.kind,
            f_handle: [0; MAX_HANDLE_BYTES],
        };
        raw.f_handle[..self.bytes.len()].copy_from_slice(&self.bytes);
        // SAFETY: a valid fd and a file_handle whose `handle_bytes` it holds.
        let fd = unsafe {
            libc::open_by_handle_at(
                mount.as_raw_fd(),
                (&raw mut raw).cast(),
                libc::O_PATH | libc::O_CLOEXEC | libc::O_NOFOLLOW,
            )
        };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: a descriptor just opened and owned by nobody else.
        Ok(unsafe { OwnedFd::from_raw_fd(fd) })
    }
}

/// What is kept of a node the kernel forgot.
#[derive(Clone, Debug)]
pub struct Retired {
    pub handle: BackingHandle,
    /// Its key policy, as `Node` packs it.
    pub policy: u64,
}

/// Forgotten nodes by node id, the most recently forgotten kept.
pub struct RetiredNodes(Mutex<lru::LruCache<u64, Retired>>);

impl RetiredNodes {
    pub fn new(capacity: usize) -> Self {
        RetiredNodes(Mutex::new(lru::LruCache::new(
            NonZeroUsize::new(capacity.max(1)).expect("non-zero"),
        )))
    }

    pub fn keep(&self, ino: u64, retired: Retired) {
        crate::sync::lock(&self.0).put(ino, retired);
    }

    pub fn find(&self, ino: u64) -> Option<Retired> {
        crate::sync::lock(&self.0).get(&ino).cloned()
    }

    pub fn drop_node(&self, ino: u64) {
        crate::sync::lock(&self.0).pop(&ino);
    }
}

#[cfg(test)]
mod tests {
    use std::os::fd::AsFd;

    use super::*;

    fn o_path(path: &std::path::Path) -> OwnedFd {
        std::fs::File::from(
            nix::fcntl::open(
                path,
                nix::fcntl::OFlag::O_PATH | nix::fcntl::OFlag::O_CLOEXEC,
                nix::sys::stat::Mode::empty(),
            )
            .unwrap(),
        )
        .into()
    }

    #[test]
    fn a_handle_opens_its_inode_again_and_tells_reused_numbers_apart() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a");
        std::fs::write(&a, b"a").unwrap();
        let Some(handle) = BackingHandle::of(o_path(&a).as_fd()) else {
            eprintln!("skipped: the temp dir's filesystem gives no file handles");
            return;
        };
        assert_eq!(BackingHandle::of(o_path(&a).as_fd()), Some(handle.clone()));
        let root = o_path(dir.path());
        let again = handle.open(root.as_fd()).unwrap();
        let ino = |fd: BorrowedFd<'_>| nix::sys::stat::fstat(fd).unwrap().st_ino;
        assert_eq!(
            ino(again.as_fd()),
            std::fs::metadata(&a)
                .map(|m| { std::os::unix::fs::MetadataExt::ino(&m) })
                .unwrap()
        );
        // Gone: stale, and a new file (whatever its number) has another generation.
        std::fs::remove_file(&a).unwrap();
        drop(again);
        std::fs::write(dir.path().join("b"), b"b").unwrap();
        let b = BackingHandle::of(o_path(&dir.path().join("b")).as_fd()).unwrap();
        assert_ne!(b.generation(), handle.generation());
        assert_ne!(handle.generation(), 0);
        assert_eq!(
            handle.open(root.as_fd()).unwrap_err().raw_os_error(),
            Some(libc::ESTALE)
        );
    }

    #[test]
    fn the_least_recently_forgotten_go_first() {
        let nodes = RetiredNodes::new(2);
        let retired = |n: u8| Retired {
            handle: BackingHandle {
                kind: 1,
                bytes: vec![n].into(),
            },
            policy: 0,
        };
        nodes.keep(10, retired(1));
        nodes.keep(11, retired(2));
        nodes.keep(12, retired(3));
        assert!(nodes.find(10).is_none());
        assert_eq!(nodes.find(12).unwrap().handle, retired(3).handle);
        nodes.drop_node(12);
        assert!(nodes.find(12).is_none());
    }
}
