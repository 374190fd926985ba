//! Key policies on directories: setting, forgetting and removing them (`sealfs policy`), and
//! clearing what a shredded one left. Where policies are (markers, finding directories) is
//! `policy_dirs`.
//!
//! A policy applies to the directory carrying its marker and everything beneath it, down to a
//! deeper marker. The config names a policy before any marker does (so no marker names an id
//! the config could give out again), and is written again once the marker is there (so every
//! running mount reads the directory's marker again).

use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::os::fd::{AsFd, BorrowedFd};
use std::path::Path;

use nix::fcntl::{OFlag, openat};
use nix::sys::stat::{Mode, SFlag};
use nix::unistd::{UnlinkatFlags, unlinkat};

use crate::format::config::TenantPolicy;
use crate::format::policy::{POLICY_MARKER, VOLUME_POLICY};
use crate::keys::{KeyError, MasterKeyProvider, RemoteFailure, seal_new_policy};
use crate::volume::backing_xattrs::XattrTarget;
use crate::volume::policy_dirs::{
    components, find_dir, find_policy_dirs, has_user_xattrs, is_empty, marked_policies,
    open_dir_at, read_marker, write_marker,
};
use crate::volume::tree;
use crate::volume::{Result, VolumeError};
use crate::volume::{Volume, lock_config, write_config};

/// What `set_policy` did.
pub struct Set {
    pub id: u32,
    pub label: String,
    /// The policy was already there: live, with no directory (a `policy set` killed before
    /// its marker, or a tenant directory removed with rmdir), now put on this one; or on this
    /// directory already (a `policy set` run twice).
    pub reattached: bool,
    /// The directory held entries: their names, targets and xattrs, and their files' keys, are
    /// to move under the policy (`rewrap`, which the caller runs next); no mount starts until
    /// they have.
    pub move_pending: bool,
}

/// Puts directory `path` (made if missing) under the policy called `label` (by default the
/// path), whose tenant secret `provider` seals: a new policy, or the live one of that label
/// if it has no directory and `provider` opens it (see `Set::reattached`). Whatever is put in
/// the directory from then on is the tenant's; what it already holds is marked to move (see
/// `Set::move_pending`), which needs the volume unmounted.
///
/// The config names the policy before the marker is written, so that no marker ever names an
/// id the config could give out again; and is written once more after the marker, so that
/// every mount looks at the directory's marker again (one that looked in between took the
/// directory to be its parent's). Makers of entries in the directory are held off meanwhile
/// (`maintenance::lock_directory`).
pub fn set_policy(
    volume: &Volume,
    path: &Path,
    label: Option<&str>,
    provider: &dyn MasterKeyProvider,
    key_file: Option<String>,
) -> Result<Set> {
    let _lock = lock_config(&volume.path)?;
    let mut config = Volume::read_config(&volume.path)?;
    volume.keys.apply_config(&config)?;
    volume.tenants.apply_config(&config);
    let parts = components(path)?;
    if parts.is_empty() {
        return Err(VolumeError::Usage(
            "the volume's root is under the volume's own keys; give a directory inside it".into(),
        ));
    }
    let label = label.map_or_else(
        || {
            parts
                .iter()
                .map(|p| format!("/{}", p.to_string_lossy()))
                .collect()
        },
        str::to_string,
    );
    let volume_id = config.volume_id()?;
    let opens =
        |policy: &TenantPolicy| matches!(provider.open_slot(&policy.slot, &volume_id), Ok(Some(_)));
    let dir = find_dir(volume, path, true)?;
    // Everything slow (KMS, the walk) before the directory is locked: creates in it wait.
    let mut stale_marker = false;
    if dir.own_marker {
        match config.policy(dir.policy) {
            // Run twice: the first may have died before its last config write.
            Some(own) if own.label == label && opens(own) => {
                let set = Set {
                    id: own.id,
                    label,
                    reattached: true,
                    move_pending: own.migrating_from.is_some(),
                };
                finish_config(volume, &mut config)?;
                return Ok(set);
            }
            Some(own) => {
                return Err(VolumeError::Usage(format!(
                    "{} already has policy {} ({:?}); remove it first",
                    path.display(),
                    own.id,
                    own.label
                )));
            }
            // A marker no live policy has: left by a `policy remove` killed between its config
            // and its marker, or (retired or unknown) over what nothing opens any more.
            None => stale_marker = true,
        }
    }
    let existing = match config.policies.iter().find(|p| p.label == label) {
        None => None,
        Some(p) => {
            if marked_policies(volume)?.contains(&p.id) {
                return Err(VolumeError::Usage(format!(
                    "policy {} is already called {label:?} and is on a directory; give another --label",
                    p.id
                )));
            }
            if !opens(p) {
                return Err(VolumeError::Usage(format!(
                    "policy {} is already called {label:?}, under another key than {}; give another --label",
                    p.id,
                    provider.describe()
                )));
            }
            Some(p.id)
        }
    };
    let (id, new_slot) = match existing {
        Some(id) => (id, None),
        None => {
            let id = config.next_policy_id();
            (id, Some(seal_new_policy(provider, &volume_id, id)?.0))
        }
    };
    let dir_lock =
        crate::coord::maintenance::lock_directory(volume.root.as_fd(), dir.fd.as_fd(), true)?;
    let mut from = dir.policy;
    if stale_marker {
        if !is_empty(dir.fd.as_fd())? {
            return Err(VolumeError::Usage(format!(
                "{} carries the marker of policy {}, which {}; `sealfs fsck --repair --clear-policy {}` clears what it holds",
                path.display(),
                dir.policy,
                if config.retired_policies.contains(&dir.policy) {
                    "was removed or shredded"
                } else {
                    "this volume's config does not know (damage, or a config older than the marker)"
                },
                dir.policy
            )));
        }
        from = dir.parent_policy;
    }
    let move_pending = !is_empty(dir.fd.as_fd())? || has_user_xattrs(dir.fd.as_fd())?;
    // Names beneath change keys: no mount may be reading them meanwhile. Nor may one make an
    // entry where the backing store cannot lock the directory against it.
    let _alone = if move_pending || dir_lock.is_none() {
        let why = if move_pending {
            "holds files (or xattrs), which move under the new policy"
        } else {
            "is on a backing store without byte-range locks to hold a mount's creates off"
        };
        Some(
            super::migrate::claim_alone(volume, "policy set").map_err(|e| match e {
                VolumeError::InUse(holder) => VolumeError::Usage(format!(
                    "{} {why}: unmount the volume first ({holder})",
                    path.display()
                )),
                e => e,
            })?,
        )
    } else {
        None
    };
    if stale_marker {
        // On an empty directory: nothing of it to lose.
        unlinkat(dir.fd.as_fd(), POLICY_MARKER, UnlinkatFlags::NoRemoveDir)?;
    }
    let migrating_from = move_pending.then_some(from);
    match new_slot {
        Some(slot) => config.policies.push(TenantPolicy {
            id,
            label: label.clone(),
            key_file,
            migrating_from,
            slot,
        }),
        None => {
            if let Some(policy) = config.policies.iter_mut().find(|p| p.id == id) {
                policy.migrating_from = migrating_from;
            }
        }
    }
    finish_config(volume, &mut config)?;
    crate::volume::crash_point("policy-config-written");
    if let Err(e) = write_marker(dir.fd.as_fd(), id) {
        // The policy stays, with no directory: `policy set` again puts it on one.
        if let Some(policy) = config.policies.iter_mut().find(|p| p.id == id) {
            policy.migrating_from = None;
        }
        let _ = finish_config(volume, &mut config);
        return Err(e);
    }
    crate::volume::crash_point("policy-marker-written");
    finish_config(volume, &mut config)?;
    drop(dir_lock);
    Ok(Set {
        id,
        label,
        reattached: existing.is_some(),
        move_pending,
    })
}

fn finish_config(volume: &Volume, config: &mut crate::format::config::VolumeConfig) -> Result<()> {
    config.format_version = config.required_version();
    config.validate()?;
    volume.keys.seal_config(config);
    write_config(&volume.path, config)?;
    volume.tenants.apply_config(config);
    Ok(())
}

/// What `remove_policy` did.
pub struct Removed {
    pub policy: u32,
    pub label: String,
    pub shredded: bool,
}

/// Retires policy `id`, which no directory carries and no file uses any more (its directory
/// was removed): the `policy remove --id` of a tenant that is gone.
pub fn forget_policy(volume: &Volume, id: u32) -> Result<String> {
    let dirs = find_policy_dirs(volume)?;
    if let Some(dir) = dirs.marked.iter().find(|d| d.policy == id) {
        return Err(VolumeError::Usage(format!(
            "policy {id} is on {}: give that path instead",
            dir.path
        )));
    }
    let files = super::census::census(&volume.headers)?
        .by_policy
        .get(&id)
        .copied()
        .unwrap_or(0);
    if files > 0 {
        return Err(VolumeError::Usage(format!(
            "{files} files still use policy {id}; run `sealfs fsck` to find them"
        )));
    }
    let label = volume
        .tenants
        .policy(id)
        .map(|p| p.label)
        .map_err(VolumeError::from)?;
    retire_policy(volume, id)?;
    Ok(label)
}

/// Takes policy of directory `path` away. Without `shred` the directory must be empty, no
/// file may use the policy any more, and its key must open (the directory's own xattrs go
/// back under its parent's keys); the directory goes back to its parent's keys. With `shred`
/// the policy's sealed tenant secret is dropped from the config and its id retired: whatever
/// the directory holds stays as ciphertext no key opens (`fsck --repair --clear-policy`
/// removes it).
pub fn remove_policy(volume: &Volume, path: &Path, shred: bool) -> Result<Removed> {
    let _lock = lock_config(&volume.path)?;
    let mut config = Volume::read_config(&volume.path)?;
    volume.keys.apply_config(&config)?;
    volume.tenants.apply_config(&config);
    // Only the ancestors' keys are needed: a shredded tenant's own key may be long gone.
    let dir = find_dir(volume, path, false)?;
    if !dir.own_marker {
        return Err(VolumeError::Usage(format!(
            "{} carries no policy of its own{}",
            path.display(),
            if dir.policy == VOLUME_POLICY {
                String::new()
            } else {
                format!(" (it is under policy {} from above)", dir.policy)
            }
        )));
    }
    let live = config.policy(dir.policy).cloned();
    let gone = |what: &str| {
        VolumeError::Usage(format!(
            "policy {} {what}; `sealfs fsck --repair --clear-policy {}` clears what it left",
            dir.policy, dir.policy
        ))
    };
    if live.is_none() && shred {
        return Err(gone("is not live (shredded, removed or unknown)"));
    }
    if live.is_none() && !is_empty(dir.fd.as_fd())? {
        return Err(gone(
            "is not live, and nothing opens what the directory holds",
        ));
    }
    // Everything slow (KMS, the census) before the directory is locked: creates in it wait.
    // A marker of a retired policy is what a remove killed after its config left: only the
    // marker is left to go (the xattrs moved before the config was written).
    let xattr_keys = match (&live, shred) {
        (Some(_), false) => {
            let files = super::census::census(&volume.headers)?
                .by_policy
                .get(&dir.policy)
                .copied()
                .unwrap_or(0);
            if files > 0 {
                return Err(VolumeError::Usage(format!(
                    "{} is not empty, or {files} files elsewhere still use policy {}: move them out first, or destroy them with --shred",
                    path.display(),
                    dir.policy
                )));
            }
            // The tenant's key is needed only to move the directory's own xattrs back.
            if has_user_xattrs(dir.fd.as_fd())? {
                let tenant = volume.name_keys(dir.policy).map_err(|e| {
                    VolumeError::Usage(format!(
                        "{e}: without it the directory's own xattrs cannot move back; use --shred to drop them"
                    ))
                })?;
                Some((tenant, volume.name_keys(dir.parent_policy)?))
            } else {
                None
            }
        }
        _ => None,
    };
    let dir_lock =
        crate::coord::maintenance::lock_directory(volume.root.as_fd(), dir.fd.as_fd(), true)?;
    let _alone = if dir_lock.is_none() && !shred {
        Some(super::migrate::claim_alone(volume, "policy remove")?)
    } else {
        None
    };
    if !shred {
        if !is_empty(dir.fd.as_fd())? {
            return Err(VolumeError::Usage(format!(
                "{} is not empty: move its files out first, or destroy them with --shred",
                path.display()
            )));
        }
        if let Some((tenant, parent)) = &xattr_keys {
            let mut failed = Vec::new();
            super::migrate::move_xattrs(dir.fd.as_fd(), tenant, parent, &mut failed)?;
            if let Some(first) = failed.first() {
                return Err(VolumeError::Corrupt(format!(
                    "{}: {first}: the directory's own xattrs cannot all move back under its parent's keys (remove the damaged one from the backing directory, or use --shred)",
                    path.display()
                )));
            }
            crate::volume::crash_point("policy-remove-xattrs-moved");
        }
    }
    if live.is_some() {
        config.policies.retain(|p| p.id != dir.policy);
        if !config.retired_policies.contains(&dir.policy) {
            config.retired_policies.push(dir.policy);
        }
        finish_config(volume, &mut config)?;
        crate::volume::crash_point("policy-remove-retired");
    }
    if !shred {
        // Makers of entries see the directory as its parent's from here on (the config
        // rewrite made them look again; they wait on `dir_lock` till the marker is gone).
        unlinkat(dir.fd.as_fd(), POLICY_MARKER, UnlinkatFlags::NoRemoveDir)?;
    }
    drop(dir_lock);
    Ok(Removed {
        policy: dir.policy,
        label: live.map(|p| p.label).unwrap_or_default(),
        shredded: shred,
    })
}

/// Clears away what a policy whose key is gone left in backing directory `backing_dir`
/// (relative to the cipher dir): every entry beneath it, with the headers, hole maps and long
/// symlink targets of its files and links, the directory's own xattrs, and its marker, last;
/// the directory stays, empty, under its parent's keys, and the policy is retired if it was
/// not yet. On request only (`fsck --repair --clear-policy ID`), and only for a policy
/// shredded, or whose key refuses (disabled, pending deletion, denied): not for one whose key
/// is merely out of reach here (no PIN given, KMS down). Nothing beneath can be read, so
/// nothing is checked first but that no other live policy's directory lies beneath. Returns
/// the entries removed. A clear killed half way is finished by running it again.
pub fn clear_policy_tree(volume: &Volume, backing_dir: &str, policy: u32) -> Result<u64> {
    let rel = if backing_dir.is_empty() {
        return Err(VolumeError::Usage(
            "the volume root carries no policy".into(),
        ));
    } else {
        backing_dir
    };
    let top = open_dir_at(volume.root.as_fd(), rel)?;
    if read_marker(top.as_fd())? != Some(policy) {
        return Err(VolumeError::Usage(format!(
            "{backing_dir} does not carry the marker of policy {policy}"
        )));
    }
    match volume.tenants.keys(policy) {
        Err(KeyError::PolicyRemoved(_) | KeyError::UnknownPolicy(_))
        | Err(KeyError::Remote {
            failure: RemoteFailure::KeyDisabled | RemoteFailure::Denied,
            ..
        }) => {}
        Ok(_) => {
            return Err(VolumeError::Usage(format!(
                "policy {policy}'s key opens it: nothing to clear (destroy it with `sealfs policy remove --shred` first)"
            )));
        }
        Err(e) => {
            return Err(VolumeError::Usage(format!(
                "policy {policy}'s key is out of reach here, not gone ({e}): give its key rather than destroy its files"
            )));
        }
    }
    // First look, then remove: a live tenant's directory nested beneath stops it all.
    tree::walk(
        top.as_fd(),
        (),
        &mut LiveMarkers {
            volume,
            policy,
            backing_dir,
        },
    )?;
    let mut remover = Remover {
        volume,
        keep: POLICY_MARKER,
        removed: 0,
    };
    tree::walk(top.as_fd(), true, &mut remover)?;
    let removed = remover.removed;
    remove_user_xattrs(top.as_fd())?;
    retire_policy(volume, policy)?;
    unlinkat(top.as_fd(), POLICY_MARKER, UnlinkatFlags::NoRemoveDir)?;
    Ok(removed)
}

/// Removes the user xattrs of the inode `fd` opens (sealed under keys that are gone).
fn remove_user_xattrs(fd: BorrowedFd<'_>) -> Result<()> {
    let target = XattrTarget::new(fd);
    for name in target.list_user()? {
        target.remove(&name)?;
    }
    Ok(())
}

/// Refuses a clear when a directory of another live policy lies beneath.
struct LiveMarkers<'a> {
    volume: &'a Volume,
    policy: u32,
    backing_dir: &'a str,
}

impl tree::Visitor for LiveMarkers<'_> {
    type Ctx = ();

    fn enter(&mut self, _: &mut (), dir: BorrowedFd<'_>, _: &[OsString]) -> Result<bool> {
        if let Some(other) = read_marker(dir)?
            && other != self.policy
            && self.volume.tenants.policy(other).is_ok()
        {
            return Err(VolumeError::Usage(format!(
                "{} holds a directory of live policy {other}; move or clear that first",
                self.backing_dir
            )));
        }
        Ok(true)
    }

    fn entry(&mut self, _: &(), entry: &tree::Entry<'_>) -> Result<Option<tree::Descend<()>>> {
        Ok(entry.is_dir().then(|| tree::Descend {
            name: entry.name.to_os_string(),
            ctx: (),
        }))
    }
}

/// Removes everything beneath a directory but the top's entry named `keep` (and what its
/// files and links keep elsewhere: headers, hole maps, long-target sidecars), counting the
/// entries removed. The context says whether a directory is the top.
struct Remover<'a> {
    volume: &'a Volume,
    keep: &'a str,
    removed: u64,
}

impl tree::Visitor for Remover<'_> {
    type Ctx = bool;

    fn entry(
        &mut self,
        top: &bool,
        entry: &tree::Entry<'_>,
    ) -> Result<Option<tree::Descend<bool>>> {
        if *top && entry.name == self.keep {
            return Ok(None);
        }
        if entry.is_dir() {
            return Ok(Some(tree::Descend {
                name: entry.name.to_os_string(),
                ctx: false,
            }));
        }
        let (dir, name, st) = (entry.dir, entry.name, &entry.stat);
        let kind = entry.kind();
        if kind == SFlag::S_IFREG && st.st_nlink == 1 {
            let file = File::from(openat(
                dir,
                name,
                OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
                Mode::empty(),
            )?);
            if let Ok(id) = crate::io::read_file_id(&file) {
                let _ = self.volume.headers.remove(&id);
            }
        }
        if kind == SFlag::S_IFLNK
            && st.st_nlink == 1
            && let Ok(target) = nix::fcntl::readlinkat(dir, name)
            && let Some(long) = crate::format::link::LongTarget::decode(
                std::os::unix::ffi::OsStrExt::as_bytes(target.as_os_str()),
            )
        {
            crate::volume::long_links::remove(self.volume.root.as_fd(), &long);
        }
        unlinkat(dir, name, UnlinkatFlags::NoRemoveDir)?;
        self.removed += 1;
        Ok(None)
    }

    fn left(&mut self, _: &bool, parent: BorrowedFd<'_>, name: &OsStr) -> Result<()> {
        unlinkat(parent, name, UnlinkatFlags::RemoveDir)?;
        self.removed += 1;
        Ok(())
    }
}

/// Drops policy `id`'s sealed secret from the config and retires its id (if still live).
fn retire_policy(volume: &Volume, id: u32) -> Result<()> {
    if id == VOLUME_POLICY || id > crate::format::config::MAX_POLICY_ID {
        // Named by a damaged marker only: the config never gives such an id out.
        return Ok(());
    }
    let _lock = lock_config(&volume.path)?;
    let mut config = Volume::read_config(&volume.path)?;
    volume.keys.apply_config(&config)?;
    if config.retired_policies.contains(&id) {
        return Ok(());
    }
    config.policies.retain(|p| p.id != id);
    config.retired_policies.push(id);
    finish_config(volume, &mut config)
}

#[cfg(test)]
#[path = "policy_tests.rs"]
mod tests;
