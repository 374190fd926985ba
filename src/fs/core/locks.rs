//! Locks programs take on files (flock(2), fcntl(2)), forwarded by shared mounts to the
//! backing data files, so that they exclude each other across mounts and hosts: sqlite, mail
//! spools and build tools coordinate through them. A lone mount leaves them to the kernel,
//! which is right when it is the only one.
//!
//! The kernel names each lock's owner: the open file for flock, the process's file table for
//! fcntl. Each owner that locks a file gets a backing open file description of its own, and its
//! locks are OFD locks on that description, in the forwarded-lock space of the data file (see
//! `coord::file_locks`): descriptions exclude each other as owners do, and one owner's ranges merge
//! and split as POSIX locks do. An owner lets go of everything when the kernel says so: FLUSH
//! names the fcntl owner closing any descriptor of the file (POSIX drops its locks then),
//! RELEASE names the flock owner whose open file went, and the RELEASE of a handle ends the
//! locks taken through it (OFD locks, whose owner is that open file); closing the description
//! drops its locks in one step, here and on every other host. As on NFS, flock and fcntl locks of
//! different owners conflict with each other.
//!
//! A lock that must wait is polled, not waited for in the kernel: the wait leaves the FUSE
//! worker threads free (the holder's unlock needs one), and it ends when its owner lets go
//! meanwhile (another thread of the process closed the file). Nothing else ends it: fuser
//! answers FUSE_INTERRUPT with ENOSYS, so the kernel waits for the answer even for a process
//! being killed, which ends once the lock comes free (and then lets it go as it exits).

use std::collections::HashMap;
use std::fs::File;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nix::fcntl::OFlag;

use super::SealFs;
use crate::coord::file_locks::{PlainLock, conflicting_forwarded, set_forwarded};
use crate::fs::inodes::Node;
use crate::volume::{Result, VolumeError};

/// The longest pause between two tries of a waiting lock: how late a waiter may notice that
/// the lock came free.
const MAX_PAUSE: Duration = Duration::from_millis(50);

/// The owners holding (or waiting for) forwarded locks, by (node, owner).
#[derive(Default)]
pub struct ForwardedLocks {
    owners: Mutex<HashMap<(u64, u64), Arc<OwnerLocks>>>,
}

/// One owner's backing description of one file; `None` once the owner let go, so that a
/// waiter still polling gives up instead of taking a lock nobody would release.
struct OwnerLocks {
    description: Mutex<Option<File>>,
    /// The open files (FUSE handles) the owner locked through. The kernel sends nothing when
    /// an OFD lock's open file closes (it leaves unlock-on-close to FLUSH, which names the
    /// process, not the open file), so the handle's RELEASE lets go of what was locked
    /// through it; for fcntl owners FLUSH has done so already, as POSIX says.
    handles: Mutex<Vec<u64>>,
}

impl OwnerLocks {
    /// Sets `lock` if no other description holds a conflicting one; false if one does.
    fn try_set(&self, lock: PlainLock) -> Result<bool> {
        let description = crate::sync::lock(&self.description);
        let Some(file) = description.as_ref() else {
            return Err(VolumeError::LockAbandoned);
        };
        match set_forwarded(file, lock) {
            Ok(()) => Ok(true),
            Err(nix::Error::EAGAIN) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    fn let_go(&self) {
        // Closing the description drops all its locks.
        crate::sync::lock(&self.description).take();
    }
}

/// A lock that another owner holds now, to be waited for (`F_SETLKW`, `flock` without
/// LOCK_NB).
pub struct LockWait {
    owner: Arc<OwnerLocks>,
    lock: PlainLock,
    node: Arc<Node>,
}

impl LockWait {
    /// Blocks the calling thread until the lock is set, or its owner lets go (then
    /// `LockAbandoned`, EINTR: nobody is waiting any more).
    pub fn wait(self) -> Result<()> {
        let mut pause = Duration::from_millis(1);
        while !self.owner.try_set(self.lock)? {
            std::thread::sleep(pause);
            pause = (pause * 2).min(MAX_PAUSE);
        }
        taken(&self.node);
        Ok(())
    }
}

/// A lock was just set on `node`: what this mount read of it before may be stale.
fn taken(node: &Node) {
    node.lock_epoch.fetch_add(1, Ordering::AcqRel);
}

impl SealFs {
    /// F_GETLK: the lock of another owner that would conflict with `lock`, if any.
    pub fn getlk(&self, ino: u64, owner: u64, lock: PlainLock) -> Result<Option<PlainLock>> {
        let held = crate::sync::lock(&self.locks.owners)
            .get(&(ino, owner))
            .cloned();
        // An owner's own locks never conflict with it: ask through its description if it has
        // one, through a fresh one (which holds nothing) if not.
        if let Some(owner) = held
            && let Some(file) = crate::sync::lock(&owner.description).as_ref()
        {
            return Ok(conflicting_forwarded(file, lock)?);
        }
        let file = self.reopen(&*self.node(ino)?, OFlag::O_RDONLY)?;
        Ok(conflicting_forwarded(&file, lock)?)
    }

    /// F_SETLK: sets or releases `lock` for `owner`. `Some(wait)` when another owner holds a
    /// conflicting lock: the caller answers EAGAIN, or waits (`LockWait::wait`) for F_SETLKW.
    pub fn setlk(
        &self,
        ino: u64,
        fh: u64,
        owner: u64,
        lock: PlainLock,
    ) -> Result<Option<LockWait>> {
        if lock.kind == libc::F_UNLCK {
            let held = crate::sync::lock(&self.locks.owners)
                .get(&(ino, owner))
                .cloned();
            // An owner that let go meanwhile holds nothing to unlock.
            if let Some(held) = held
                && let Err(e) = held.try_set(lock)
                && !matches!(e, VolumeError::LockAbandoned)
            {
                return Err(e);
            }
            return Ok(None);
        }
        let node = self.node(ino)?;
        let owner = self.lock_owner(&node, owner, fh)?;
        if owner.try_set(lock)? {
            taken(&node);
            Ok(None)
        } else {
            Ok(Some(LockWait { owner, lock, node }))
        }
    }

    fn lock_owner(&self, node: &Node, owner: u64, fh: u64) -> Result<Arc<OwnerLocks>> {
        let ino = node.ino;
        let through = |held: &Arc<OwnerLocks>| {
            let mut handles = crate::sync::lock(&held.handles);
            if !handles.contains(&fh) {
                handles.push(fh);
            }
            held.clone()
        };
        if let Some(held) = crate::sync::lock(&self.locks.owners).get(&(ino, owner)) {
            return Ok(through(held));
        }
        // Opened outside the table's lock (it may be a round trip to a distributed
        // filesystem). Read locks need a readable description, write locks a writable one; the
        // kernel has checked the caller's descriptor already.
        let file = match self.reopen(node, OFlag::O_RDWR) {
            Ok(file) => file,
            Err(_) => self.reopen(node, OFlag::O_RDONLY)?,
        };
        let mut owners = crate::sync::lock(&self.locks.owners);
        let held = owners.entry((ino, owner)).or_insert_with(|| {
            Arc::new(OwnerLocks {
                description: Mutex::new(Some(file)),
                handles: Mutex::new(Vec::new()),
            })
        });
        Ok(through(held))
    }

    /// Drops the locks taken through handle `fh` of `ino`, which the kernel is releasing.
    pub(super) fn release_handle_locks(&self, ino: u64, fh: u64) {
        self.release_where(|node, held| {
            node == ino && crate::sync::lock(&held.handles).contains(&fh)
        });
    }

    /// Drops every lock `owner` holds on `ino` (FLUSH for fcntl owners, RELEASE for flock
    /// owners), and ends its waits.
    pub fn release_locks(&self, ino: u64, owner: u64) {
        let held = crate::sync::lock(&self.locks.owners).remove(&(ino, owner));
        if let Some(held) = held {
            held.let_go();
        }
    }

    /// Drops every owner's locks on `ino`: its last open file went, so no owner can still
    /// hold one (a kernel that skipped a FLUSH would otherwise leave them behind).
    pub(super) fn release_all_locks(&self, ino: u64) {
        self.release_where(|node, _| node == ino);
    }

    fn release_where(&self, matches: impl Fn(u64, &OwnerLocks) -> bool) {
        let mut gone = Vec::new();
        crate::sync::lock(&self.locks.owners).retain(|&(node, _), held| {
            let going = matches(node, held);
            if going {
                gone.push(held.clone());
            }
            !going
        });
        gone.iter().for_each(|held| held.let_go());
    }
}
