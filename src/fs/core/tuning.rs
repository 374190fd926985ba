//! The kernel-facing side of a mount's mode: what the kernel may cache and for how long,
//! computed once at mount from whether other mounts share the cipher dir. The data path's side
//! is `access`.

use fuser::InitFlags;

/// Kernel-facing knobs, chosen at mount.
#[derive(Clone, Copy, Debug)]
pub struct Tuning {
    /// Let the kernel cache and merge writes (FUSE_WRITEBACK_CACHE). Off in shared mode.
    pub writeback_cache: bool,
    /// Other mounts (other hosts) change the cipher dir too: no page cache kept across opens,
    /// and attributes are not cached (see `attr_ttl`).
    pub shared: bool,
    /// How long the kernel may keep a name's lookup, and a file's attributes. A lone mount is
    /// the only writer, so both stay right and expire only to bound the damage of an outside
    /// change. Shared mounts see names made elsewhere within `entry_ttl`, and never serve a
    /// size from a cache (a read near the end of file asks anew): close-to-open.
    pub entry_ttl: std::time::Duration,
    pub attr_ttl: std::time::Duration,
    /// POSIX ACLs, enforced by the kernel (FUSE_POSIX_ACL, which turns on its permission
    /// checks): the default; `-o noacl` turns them off, as ext4's `noacl` does.
    pub acl: bool,
}

impl Tuning {
    pub const DEFAULT_TTL: std::time::Duration = std::time::Duration::from_secs(30);
    pub const SHARED_ENTRY_TTL: std::time::Duration = std::time::Duration::from_secs(1);

    /// The kernel settings of a lone mount or of one of several shared ones.
    pub fn new(writeback_cache: bool, shared: bool) -> Self {
        Tuning {
            // Cached writes would reach the backing file whenever the kernel pleases, long
            // after another host read it: shared mounts write through.
            writeback_cache: writeback_cache && !shared,
            shared,
            entry_ttl: if shared {
                Self::SHARED_ENTRY_TTL
            } else {
                Self::DEFAULT_TTL
            },
            attr_ttl: if shared {
                std::time::Duration::ZERO
            } else {
                Self::DEFAULT_TTL
            },
            acl: true,
        }
    }
}

impl Tuning {
    /// How long the kernel may keep the lookup of an entry of this kind. A shared mount keeps
    /// a file's name no longer than its attributes (not at all, by default), so an open looks
    /// the name up anew, as NFS's close-to-open does: a file removed or replaced on another
    /// host is never opened through its old name (sqlite's journal, deleted at each commit,
    /// would otherwise look hot to another host). Directories keep theirs for `entry_ttl`.
    pub fn entry_ttl_of(&self, kind: fuser::FileType) -> &std::time::Duration {
        if self.shared && kind != fuser::FileType::Directory {
            &self.attr_ttl
        } else {
            &self.entry_ttl
        }
    }
}

impl Default for Tuning {
    fn default() -> Self {
        Tuning::new(true, false)
    }
}

impl Tuning {
    /// Whether the kernel may remember a name that is not there (a negative entry): only the
    /// only writer knows it stays absent until it makes it.
    pub fn negative_entries(&self) -> bool {
        !self.shared
    }

    /// Whether programs' flock and fcntl locks go to the backing files, where other hosts see
    /// them (fs/core/locks.rs); a lone mount leaves them to the kernel.
    pub fn forwards_locks(&self) -> bool {
        self.shared
    }

    /// Whether the kernel may keep symlink targets it read (a new target is a new symlink, a
    /// new inode; only another host could replace one behind its back).
    pub fn caches_symlinks(&self) -> bool {
        !self.shared
    }

    /// The capabilities asked of the kernel at INIT, from the mode; `attrs_with_listings`:
    /// whether listings may carry attributes (readdirplus), which a mount mending a crash
    /// refuses until it is done (`SealFs::attrs_with_listings`).
    pub fn init_flags(&self, attrs_with_listings: bool) -> Vec<InitFlags> {
        // HANDLE_KILLPRIV_V2: sealfs drops set-id bits itself (write, truncate, fallocate;
        // chown's is the backing chown's; see fs/core/set_id.rs), so the kernel may mark a
        // checked inode as having none, instead of asking for security.capability (one
        // GETXATTR round trip) before every write(2).
        // POSIX_ACL: the kernel checks permissions against ACLs (fs/core/acl.rs keeps them).
        // It also turns on the kernel's own permission checks (default_permissions), which
        // refresh a directory's attributes after each create in it: one GETATTR round trip
        // per new file, which `-o noacl` saves where nobody else reaches the mount.
        // DONT_MASK: the umask is applied by sealfs, only where no default ACL is inherited.
        // EXPORT_SUPPORT: file handles work once the kernel forgot an inode (it asks for "."
        // and ".."; fs/core/export.rs).
        let mut flags = vec![
            InitFlags::FUSE_EXPORT_SUPPORT,
            InitFlags::FUSE_PARALLEL_DIROPS,
            InitFlags::FUSE_HANDLE_KILLPRIV_V2,
        ];
        if self.acl {
            flags.push(InitFlags::FUSE_POSIX_ACL | InitFlags::FUSE_DONT_MASK);
        }
        if self.writeback_cache {
            flags.push(InitFlags::FUSE_WRITEBACK_CACHE);
        }
        if attrs_with_listings {
            // Attributes with listings (readdirplus; the kernel picks it for a walk that
            // looks at what it lists, plain readdir otherwise): a LOOKUP per entry saved.
            flags.extend([
                InitFlags::FUSE_DO_READDIRPLUS,
                InitFlags::FUSE_READDIRPLUS_AUTO,
            ]);
        }
        if self.caches_symlinks() {
            // Symlinks never change (a new target is a new symlink, a new inode): the kernel
            // may keep a target it has read in its page cache instead of asking for it again.
            flags.push(InitFlags::FUSE_CACHE_SYMLINKS);
        }
        if self.forwards_locks() {
            // Locks go to the backing files, where other hosts see them (fs/core/locks.rs);
            // a read asks for fresh attributes and drops cached pages when the file changed
            // elsewhere (its mtime or size moved).
            flags.extend([
                InitFlags::FUSE_POSIX_LOCKS,
                InitFlags::FUSE_FLOCK_LOCKS,
                InitFlags::FUSE_AUTO_INVAL_DATA,
            ]);
        }
        flags
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_kernel_caches_what_only_a_lone_mount_keeps_true() {
        let lone = Tuning::new(true, false).init_flags(true);
        let shared = Tuning::new(true, true).init_flags(true);
        for (flag, alone, with_others) in [
            (InitFlags::FUSE_WRITEBACK_CACHE, true, false),
            (InitFlags::FUSE_CACHE_SYMLINKS, true, false),
            (InitFlags::FUSE_POSIX_LOCKS, false, true),
            (InitFlags::FUSE_FLOCK_LOCKS, false, true),
            (InitFlags::FUSE_AUTO_INVAL_DATA, false, true),
            (InitFlags::FUSE_EXPORT_SUPPORT, true, true),
        ] {
            assert_eq!(lone.contains(&flag), alone, "{flag:?}");
            assert_eq!(shared.contains(&flag), with_others, "{flag:?}");
        }
        let no_acl = Tuning {
            acl: false,
            ..Tuning::new(true, false)
        };
        assert!(
            !no_acl
                .init_flags(true)
                .iter()
                .any(|f| f.contains(InitFlags::FUSE_POSIX_ACL))
        );
        assert!(lone.iter().any(|f| f.contains(InitFlags::FUSE_POSIX_ACL)));
        let no_writeback = Tuning::new(false, false).init_flags(false);
        assert!(!no_writeback.contains(&InitFlags::FUSE_WRITEBACK_CACHE));
        assert!(!no_writeback.contains(&InitFlags::FUSE_DO_READDIRPLUS));
        assert!(Tuning::new(true, false).negative_entries());
        assert!(!Tuning::new(true, true).negative_entries());
    }
}
