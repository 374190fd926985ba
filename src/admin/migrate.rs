//! Moving a directory tree that already holds entries into a key policy (`sealfs policy set`
//! on a non-empty directory; `sealfs rewrap` finishes a move a crash interrupted). Names,
//! symlink targets and user xattrs beneath are re-encrypted under the tenant's name keys here;
//! the file keys move with the header pass of `rewrap` (batched, parallel, crash-safe), which
//! is given the files found here.
//!
//! Every step can be run again: a name that already decrypts under the tenant's keys is left
//! as it is, one that decrypts under the old keys is moved, so a move killed at any point is
//! finished by running it again. While a move is pending the volume does not mount (its
//! directories hold names under two keys), and only one runs at a time (the volume claimed
//! exclusively).

use std::collections::HashMap;
use std::ffi::OsStr;
use std::fs::File;
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::ffi::OsStrExt;

use nix::fcntl::{AtFlags, OFlag, RenameFlags, openat, readlinkat, renameat2};
use nix::sys::stat::{Mode, SFlag, fstatat};
use serde::Serialize;

use crate::format::Id;
use crate::format::name::{EntryKind, classify_entry};
use crate::keys::NameKeys;
use crate::volume::backing_xattrs::XattrTarget;
use crate::volume::policy_dirs::{find_policy_dirs, read_marker};
use crate::volume::tree;
use crate::volume::{Result, VolumeError};
use crate::volume::{Volume, lock_config, names, sealed_xattrs, write_config};

/// Prefix of a symlink being re-sealed under a policy (fsck removes one a crash left).
pub const TEMP_PREFIX: &str = "sealfs.migrate.";

/// What moving names found and did.
#[derive(Debug, Default, Serialize)]
pub struct Moved {
    /// Entries whose name, symlink target or xattrs were re-encrypted.
    pub renamed: u64,
    pub symlinks: u64,
    pub xattrs: u64,
    /// Entries that decrypt under neither key: left alone, for fsck.
    pub failed: Vec<String>,
    /// Every regular file beneath, with the policy its header must move to.
    #[serde(skip)]
    pub files: HashMap<Id, u32>,
}

/// The policies a move into is pending for: (policy, the policy its entries come from).
pub fn pending(config: &crate::format::config::VolumeConfig) -> Vec<(u32, u32)> {
    config
        .policies
        .iter()
        .filter_map(|p| p.migrating_from.map(|from| (p.id, from)))
        .collect()
}

/// Re-encrypts the names beneath every directory whose policy has a move pending.
pub fn move_names(volume: &Volume) -> Result<Moved> {
    let mut moved = Moved::default();
    let config = Volume::read_config(&volume.path)?;
    let pending = pending(&config);
    if pending.is_empty() {
        return Ok(moved);
    }
    let dirs = find_policy_dirs(volume)?;
    for (policy, from) in pending {
        let to_keys = volume.name_keys(policy)?;
        let from_keys = volume.name_keys(from)?;
        let keys = Keys {
            from: &from_keys,
            to: &to_keys,
            policy,
        };
        for dir in dirs.marked.iter().filter(|d| d.policy == policy) {
            let fd = crate::volume::policy_dirs::find_dir(
                volume,
                std::path::Path::new(&dir.path),
                false,
            )?
            .fd;
            // The directory's own xattrs are under the keys of what it holds.
            let mut failed = Vec::new();
            moved.xattrs += move_xattrs(fd.as_fd(), &from_keys, &to_keys, &mut failed)?;
            moved
                .failed
                .extend(failed.into_iter().map(|f| format!("{}: {f}", dir.path)));
            let mut mover = Mover {
                volume,
                keys: &keys,
                moved: &mut moved,
            };
            tree::walk(fd.as_fd(), dir.path.clone(), &mut mover)?;
        }
    }
    Ok(moved)
}

/// Ends the pending moves in the config, once names and headers have moved.
pub fn finish(volume: &Volume) -> Result<()> {
    let _lock = lock_config(&volume.path)?;
    let mut config = Volume::read_config(&volume.path)?;
    volume.keys.apply_config(&config)?;
    for policy in &mut config.policies {
        policy.migrating_from = None;
    }
    config.format_version = config.required_version();
    config.validate()?;
    volume.keys.seal_config(&mut config);
    write_config(&volume.path, &config)?;
    volume.tenants.apply_config(&config);
    Ok(())
}

struct Keys<'a> {
    from: &'a NameKeys,
    to: &'a NameKeys,
    policy: u32,
}

/// Moves the entries of a directory's tree under the tenant's keys; the context is a
/// directory's plaintext path.
struct Mover<'a> {
    volume: &'a Volume,
    keys: &'a Keys<'a>,
    moved: &'a mut Moved,
}

impl tree::Visitor for Mover<'_> {
    type Ctx = String;

    fn entry(
        &mut self,
        path: &String,
        entry: &tree::Entry<'_>,
    ) -> Result<Option<tree::Descend<String>>> {
        let name = entry.name.to_string_lossy();
        if classify_entry(&name) == EntryKind::Internal {
            return Ok(None);
        }
        match move_entry(self.volume, entry.dir, &name, self.keys, path, self.moved) {
            Ok(descend) => Ok(descend),
            // The backing store failing stops the move (run it again); a damaged entry is
            // left for fsck, and the rest moves on.
            Err(e @ VolumeError::Io(_)) => Err(e),
            Err(e) => {
                self.moved.failed.push(format!("{path}/?{name}: {e}"));
                Ok(None)
            }
        }
    }
}

/// Moves one entry of `dir` under the tenant's keys; a directory to walk into next (by its
/// new name, with its plaintext path) unless a deeper policy's directory keeps its own keys.
fn move_entry(
    volume: &Volume,
    dir: BorrowedFd<'_>,
    entry: &str,
    keys: &Keys<'_>,
    path: &str,
    moved: &mut Moved,
) -> Result<Option<tree::Descend<String>>> {
    let entry_os = OsStr::new(entry);
    let (plain, current) = match names::decrypt_entry(keys.to, dir, entry_os) {
        Ok(Some(plain)) => (plain, entry.to_string()),
        _ => match names::decrypt_entry(keys.from, dir, entry_os) {
            Ok(Some(plain)) => {
                let old = names::encrypt_name(keys.from, &plain)?;
                let new = names::encrypt_name(keys.to, &plain)?;
                names::write_long_sidecar(dir, &new)?;
                renameat2(dir, entry, dir, new.entry(), RenameFlags::RENAME_NOREPLACE)?;
                names::remove_long_sidecar(dir, &old);
                crate::volume::crash_point("policy-move-renamed");
                moved.renamed += 1;
                (plain, new.entry().to_string())
            }
            _ => {
                moved
                    .failed
                    .push(format!("{path}/?{entry}: name decrypts under neither key"));
                return Ok(None);
            }
        },
    };
    let child_path = format!("{path}/{}", plain.to_string_lossy());
    let st = fstatat(dir, current.as_str(), AtFlags::AT_SYMLINK_NOFOLLOW)?;
    match SFlag::from_bits_truncate(st.st_mode & SFlag::S_IFMT.bits()) {
        SFlag::S_IFDIR => {
            let child = openat(
                dir,
                current.as_str(),
                OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
                Mode::empty(),
            )?;
            moved.xattrs += move_entry_xattrs(child.as_fd(), keys, &child_path, moved)?;
            // A deeper policy's directory keeps its own keys beneath.
            if read_marker(child.as_fd())?.is_none() {
                return Ok(Some(tree::Descend {
                    name: current.into(),
                    ctx: child_path,
                }));
            }
        }
        SFlag::S_IFREG => {
            let file = File::from(openat(
                dir,
                current.as_str(),
                OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
                Mode::empty(),
            )?);
            moved.xattrs += move_entry_xattrs(file.as_fd(), keys, &child_path, moved)?;
            match crate::io::read_file_id(&file) {
                Ok(id) => {
                    moved.files.insert(id, keys.policy);
                }
                Err(e) => moved.failed.push(format!("{child_path}: {e}")),
            }
        }
        SFlag::S_IFLNK => {
            moved.symlinks += u64::from(move_symlink(volume, dir, &current, keys, &st)?);
        }
        _ => {}
    }
    Ok(None)
}

/// `move_xattrs` for an entry at plaintext `path`, its failures noted in `moved`.
fn move_entry_xattrs(
    fd: BorrowedFd<'_>,
    keys: &Keys<'_>,
    path: &str,
    moved: &mut Moved,
) -> Result<u64> {
    let mut failed = Vec::new();
    let count = move_xattrs(fd, keys.from, keys.to, &mut failed)?;
    moved
        .failed
        .extend(failed.into_iter().map(|f| format!("{path}: {f}")));
    Ok(count)
}

/// Re-seals a symlink's target under the tenant's keys (a new link under a temporary name,
/// with the old one's owner and times, renamed over it). False when it already is.
fn move_symlink(
    volume: &Volume,
    dir: BorrowedFd<'_>,
    entry: &str,
    keys: &Keys<'_>,
    st: &nix::sys::stat::FileStat,
) -> Result<bool> {
    let backing = readlinkat(dir, entry)?;
    if volume.open_symlink(keys.to, &backing).is_ok() {
        return Ok(false);
    }
    let target = volume.open_symlink(keys.from, &backing)?;
    let temp = crate::volume::backing::random_name(TEMP_PREFIX)?;
    volume.reseal_symlink(dir, st, keys.to, &target, &temp, || {
        Ok(renameat2(
            dir,
            temp.as_str(),
            dir,
            entry,
            RenameFlags::empty(),
        )?)
    })?;
    // A hard link to the old symlink still names the old target, until its own turn.
    if st.st_nlink == 1
        && let Some(long) = crate::format::link::LongTarget::decode(backing.as_bytes())
    {
        crate::volume::long_links::remove(volume.root.as_fd(), &long);
    }
    Ok(true)
}

/// Re-encrypts the user xattrs of the inode `fd` opens from keys `from` to keys `to`; returns
/// how many moved. One already under `to` is left as it is, so this can run again; one whose
/// value does not open is left as it is too, and said in `failed`.
pub fn move_xattrs(
    fd: BorrowedFd<'_>,
    from: &NameKeys,
    to: &NameKeys,
    failed: &mut Vec<String>,
) -> Result<u64> {
    let target = XattrTarget::new(fd);
    let mut count = 0;
    for backing in target.list_user()? {
        if sealed_xattrs::is_tail(&backing) || names::decrypt_xattr_name(to, &backing).is_some() {
            continue;
        }
        let Some(plain) = names::decrypt_xattr_name(from, &backing) else {
            failed.push(format!(
                "xattr {}: name decrypts under neither key",
                String::from_utf8_lossy(&backing)
            ));
            continue;
        };
        let plain_name = OsStr::from_bytes(&plain);
        let current = names::encrypt_xattr_name(from, plain_name)?;
        if backing != current {
            // Under its older name: stale where the attribute is also under its current
            // name, or moved already (a crash between a write's two steps left both).
            let moved = names::encrypt_xattr_name(to, plain_name)?;
            if target.size(&current)?.is_some() || target.size(&moved)?.is_some() {
                sealed_xattrs::remove_backing(&target, &backing)?;
                continue;
            }
        }
        let value = match sealed_xattrs::read(&target, from, &backing) {
            Ok(value) => value,
            Err(e) => {
                failed.push(format!("xattr {}: {e}", String::from_utf8_lossy(&plain)));
                continue;
            }
        };
        sealed_xattrs::move_to(&target, to, plain_name, &value, &backing)?;
        count += 1;
    }
    Ok(count)
}

/// The claim that keeps mounts away while names move.
pub fn claim_alone(volume: &Volume, what: &str) -> Result<crate::coord::claim::Claim> {
    Ok(crate::coord::claim::claim(
        volume.root.as_fd(),
        crate::coord::claim::ClaimMode::Exclusive,
        volume.backing.claim_lock_kind()?,
        what,
    )?)
}
