//! What `fsck --repair` does about each problem. Only what is proven garbage is deleted (crash
//! leftovers, headers no data file claims); anything that may still hold data is moved to
//! /lost+found, where fsck leaves it alone from then on.

use std::collections::HashSet;
use std::ffi::OsStr;
use std::fs::File;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use nix::fcntl::{AtFlags, OFlag, RenameFlags, openat, renameat2};
use nix::sys::stat::{Mode, fstat, fstatat, mkdirat};
use nix::unistd::{UnlinkatFlags, unlinkat};

use super::walk::{LOST_AND_FOUND, open_dir, quarantine_name};
use super::{CHECK_CHUNK, Entry, Problem, ProblemKind, UnreadableXattr};
use crate::format::name::{BackingName, LONG_NAME_SUFFIX};
use crate::format::{id_to_hex, name};
use crate::keys::KeyError;
use crate::volume::backing_xattrs::XattrTarget;
use crate::volume::hole_maps::Writers;
use crate::volume::{Result, Volume, VolumeError, names};

pub fn repair(volume: &Volume, problems: &mut [Problem], clear_policies: &[u32]) {
    let mut moved: HashSet<String> = HashSet::new();
    for problem in problems.iter_mut() {
        // A subtree under a policy nothing here opens (its key gone, or a marker naming a
        // policy the config does not know), cleared on request.
        let to_clear = match (&problem.backing_dir, problem.policy) {
            (Some(dir), Some(policy)) if clear_policies.contains(&policy) => Some((dir, policy)),
            _ => None,
        };
        let outcome = match problem.kind {
            ProblemKind::KeyUnavailable | ProblemKind::BadName if to_clear.is_some() => {
                let Some((dir, policy)) = to_clear else {
                    continue;
                };
                crate::admin::policy::clear_policy_tree(volume, dir, policy).map(|n| {
                    format!(
                        "cleared: {n} entries of policy {policy} removed, which no key could open"
                    )
                })
            }
            ProblemKind::KeyUnavailable => continue,
            ProblemKind::Leftover => match &problem.xattr {
                Some(xattr) => remove_xattr(volume, xattr).map(|()| "removed".to_string()),
                None => remove_leftover(volume.root.as_fd(), &problem.path)
                    .map(|()| "removed".to_string()),
            },
            ProblemKind::EmptyRemnant => match &problem.entry {
                Some(entry) if moved.contains(&entry.backing_path()) => {
                    Ok("moved to /lost+found with the problem above".to_string())
                }
                Some(entry) => revive(volume, entry)
                    .map(|()| "made an empty file again (new file id and key)".to_string()),
                None => continue,
            },
            ProblemKind::OrphanHeader => match &problem.header {
                Some(id) => volume.headers.remove(id).map(|()| "removed".to_string()),
                None => continue,
            },
            ProblemKind::DuplicateFileId => match &problem.entry {
                Some(entry) => give_own_file_id(volume, entry)
                    .map(|id| format!("re-encrypted under a new file id {}", id_to_hex(&id))),
                None => continue,
            },
            ProblemKind::TornWrite => match &problem.entry {
                Some(entry) => super::sidecars::mend_torn_write(volume, entry).map(|()| {
                    "mended from its undo journal (as a mount does at first open)".to_string()
                }),
                None => continue,
            },
            ProblemKind::UnrecordedHole => match &problem.entry {
                Some(entry) => record_holes(volume, entry, &problem.holes).map(|()| {
                    format!(
                        "recorded {} block(s) as holes (they read as zeros)",
                        problem.holes.len()
                    )
                }),
                None => continue,
            },
            ProblemKind::SharedLinkTarget => match &problem.entry {
                Some(entry) => give_own_link_target(volume, entry)
                    .map(|()| "given a target sidecar of its own".to_string()),
                None => continue,
            },
            ProblemKind::BadName
            | ProblemKind::BadSymlink
            | ProblemKind::BadPreamble
            | ProblemKind::MissingHeader
            | ProblemKind::BadHeader
            | ProblemKind::BadBlock
            | ProblemKind::TornTail => match &problem.entry {
                Some(entry) if moved.contains(&entry.backing_path()) => {
                    Ok("moved to /lost+found with the problem above".to_string())
                }
                Some(entry) => quarantine(volume, entry).map(|to| {
                    moved.insert(entry.backing_path());
                    format!("moved to {to}")
                }),
                None => continue,
            },
            ProblemKind::BadXattr => match &problem.xattr {
                // Its entry, or a directory above it, went to lost+found for another problem.
                Some(xattr)
                    if moved.iter().any(|m| {
                        xattr.inode == *m || xattr.inode.starts_with(&format!("{m}/"))
                    }) =>
                {
                    Ok("moved to /lost+found with the problem above".to_string())
                }
                Some(xattr) => remove_xattr(volume, xattr)
                    .map(|()| "removed (no key of this volume opens it)".to_string()),
                None => continue,
            },
            ProblemKind::Stray => continue,
        };
        match outcome {
            Ok(done) => {
                tracing::warn!(path = %problem.path, "fsck repair: {done}");
                problem.repaired = Some(done);
            }
            Err(e) => tracing::error!(path = %problem.path, "fsck repair failed: {e}"),
        }
    }
}

/// Removes an attribute that no key opens: unlike a file's blocks, nothing of it can be read,
/// and lost+found holds entries, not attributes.
fn remove_xattr(volume: &Volume, xattr: &UnreadableXattr) -> Result<()> {
    let inode = openat(
        volume.root.as_fd(),
        if xattr.inode.is_empty() {
            "."
        } else {
            xattr.inode.as_str()
        },
        OFlag::O_PATH | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::empty(),
    )?;
    // With the tail of a split value, if it is one.
    match crate::volume::sealed_xattrs::remove_backing(
        &XattrTarget::new(inode.as_fd()),
        &xattr.name,
    ) {
        Err(VolumeError::Io(e)) if e.raw_os_error() == Some(libc::ENODATA) => Ok(()),
        other => other,
    }
}

/// Moves an entry into the /lost+found of its policy's directory (the volume root's for the
/// volume's own files), under its own name (or `unnamed-…` when its name does not decrypt),
/// encrypted under its policy's keys, with a numeric suffix when taken. Returns its new
/// plaintext path.
fn revive(volume: &Volume, entry: &Entry) -> Result<()> {
    let fd = openat(
        volume.root.as_fd(),
        entry.backing_path().as_str(),
        OFlag::O_RDWR | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::empty(),
    )?;
    volume.revive_empty(&File::from(fd), entry.policy)?;
    Ok(())
}

fn quarantine(volume: &Volume, entry: &Entry) -> Result<String> {
    let root = volume.root.as_fd();
    let (home, plain_home) = policy_home(volume, entry)?;
    let keys = volume.name_keys(entry.policy)?;
    let home = open_dir(root, &home)?;
    let lost = names::encrypt_name(&keys, OsStr::new(LOST_AND_FOUND))?;
    match mkdirat(home.as_fd(), lost.entry(), Mode::from_bits_truncate(0o700)) {
        Ok(()) | Err(nix::Error::EEXIST) => {}
        Err(e) => return Err(e.into()),
    }
    let lost_dir = open_dir(home.as_fd(), lost.entry())?;
    let source_dir = open_dir(root, &entry.dir)?;
    let base = quarantine_name(entry);
    for attempt in 0..1000u32 {
        let mut candidate = base.clone();
        if attempt > 0 {
            candidate.push(format!(".{attempt}"));
        }
        let Ok(target) = names::encrypt_name(&keys, &candidate) else {
            continue;
        };
        if fstatat(
            lost_dir.as_fd(),
            target.entry(),
            AtFlags::AT_SYMLINK_NOFOLLOW,
        )
        .is_ok()
        {
            continue;
        }
        names::write_long_sidecar(lost_dir.as_fd(), &target)?;
        renameat2(
            source_dir.as_fd(),
            entry.backing.as_str(),
            lost_dir.as_fd(),
            target.entry(),
            RenameFlags::RENAME_NOREPLACE,
        )?;
        if entry.backing.starts_with(name::LONG_PREFIX) {
            let sidecar = format!("{}{LONG_NAME_SUFFIX}", entry.backing);
            let _ = unlinkat(
                source_dir.as_fd(),
                sidecar.as_str(),
                UnlinkatFlags::NoRemoveDir,
            );
        }
        sync_dir(source_dir.as_fd());
        sync_dir(lost_dir.as_fd());
        return Ok(format!(
            "{plain_home}/{LOST_AND_FOUND}/{}",
            candidate.to_string_lossy()
        ));
    }
    Err(VolumeError::Usage("no free name in lost+found".into()))
}

/// The directory whose marker puts `entry` under its policy (backing path, plaintext path):
/// the nearest one above it that carries one, or the volume root.
fn policy_home(volume: &Volume, entry: &Entry) -> Result<(String, String)> {
    let backing: Vec<&str> = entry.dir.split('/').filter(|p| !p.is_empty()).collect();
    let plain: Vec<&str> = entry.path.split('/').filter(|p| !p.is_empty()).collect();
    for depth in (1..=backing.len()).rev() {
        let dir = backing[..depth].join("/");
        if crate::volume::policy_dirs::read_marker(open_dir(volume.root.as_fd(), &dir)?.as_fd())?
            .is_some()
        {
            let plain_dir = plain.get(..depth).unwrap_or_default().join("/");
            return Ok((dir, format!("/{plain_dir}")));
        }
    }
    Ok((String::new(), String::new()))
}

/// The directory of a regular file's entry, and the file opened read-only.
fn open_entry(volume: &Volume, entry: &Entry) -> Result<(OwnedFd, std::fs::File)> {
    let dir = open_dir(volume.root.as_fd(), &entry.dir)?;
    let file = std::fs::File::from(openat(
        dir.as_fd(),
        entry.backing.as_str(),
        OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::empty(),
    )?);
    Ok((dir, file))
}

/// Records all-zero blocks the hole map of a data file lacks, so that they read as zeros: what
/// a crash between zeroing them and writing the map leaves. (Blocks someone zeroed on purpose
/// look the same; the report has said which, and only `--repair` accepts them.)
fn record_holes(volume: &Volume, entry: &Entry, blocks: &[u64]) -> Result<()> {
    let (_, file) = open_entry(volume, entry)?;
    let preamble = crate::io::read_preamble(&file)?;
    let (file_id, material) = volume.open_data_file(&file)?;
    let holes = volume
        .file_holes(preamble.version, file_id, Writers::Sole)
        .ok_or_else(|| VolumeError::Usage("a version 1 data file has no hole map".into()))?;
    let at = crate::io::LedgerAccess {
        file: &file,
        file_id: &file_id,
        sealer: &material.content,
    };
    for &block in blocks {
        crate::io::HoleLedger::record(&*holes, &at, block..block + 1, crate::io::Persist::Later)?;
    }
    holes.flush(&at)?;
    volume.headers.sync(&file_id)?;
    Ok(())
}

/// Replaces a symlink whose long target sidecar another symlink shares by one with a copy of
/// its own, atomically (a new link under a temporary name renamed over it), keeping its owner
/// and times.
fn give_own_link_target(volume: &Volume, entry: &Entry) -> Result<()> {
    let dir = open_dir(volume.root.as_fd(), &entry.dir)?;
    let st = fstatat(
        dir.as_fd(),
        entry.backing.as_str(),
        AtFlags::AT_SYMLINK_NOFOLLOW,
    )?;
    let backing = nix::fcntl::readlinkat(dir.as_fd(), entry.backing.as_str())?;
    let keys = volume.name_keys(entry.policy)?;
    let target = volume.open_symlink(&keys, &backing)?;
    let temp = format!(
        "sealfs.fsck-copy.{}",
        id_to_hex(&crate::crypto::random_array::<16>().map_err(KeyError::from)?)
    );
    volume.reseal_symlink(dir.as_fd(), &st, &keys, &target, &temp, || {
        put_in_place(dir.as_fd(), &temp, entry)
    })?;
    Ok(())
}

/// Copies a file that shares its file id with another into a new data file with its own id
/// and header, then puts it in place of the old name. Both files stay readable throughout.
fn give_own_file_id(volume: &Volume, entry: &Entry) -> Result<crate::format::Id> {
    let (dir, old) = open_entry(volume, entry)?;
    let st = fstat(old.as_fd())?;
    let (old_id, old_key) = volume.open_data_file(&old)?;
    let temp = BackingName::Short(format!(
        "sealfs.fsck-copy.{}",
        id_to_hex(&crate::crypto::random_array::<16>().map_err(KeyError::from)?)
    ));
    let (new, new_id, new_key) =
        volume.create_data_file(dir.as_fd(), &temp, st.st_mode, entry.policy)?;
    let copied = (|| -> Result<()> {
        let old_holes = volume.file_holes(
            crate::io::read_preamble(&old)?.version,
            old_id,
            Writers::Sole,
        );
        let new_holes = volume.new_file_holes(new_id, Writers::Sole);
        let source = volume.data_file(&old, &old_id, &old_key, old_holes.as_deref());
        let target = volume.data_file(&new, &new_id, &new_key, Some(&new_holes));
        let size = source.plain_size()?;
        let mut offset = 0;
        while offset < size {
            let chunk = source.read_at(offset, CHECK_CHUNK)?;
            target.write_at(offset, &chunk)?;
            offset += chunk.len() as u64;
        }
        // Its xattrs are sealed under its directory's name keys, not its file key: they
        // copy as they are.
        let (from, to) = (
            XattrTarget::open(old.as_fd()),
            XattrTarget::open(new.as_fd()),
        );
        for name in from.list_user()? {
            to.set(&name, &from.get(&name)?, 0)?;
        }
        nix::unistd::fchown(new.as_fd(), Some(st.st_uid.into()), Some(st.st_gid.into()))?;
        new.sync_all()?;
        volume.headers.sync(&new_id)?;
        nix::sys::stat::futimens(
            new.as_fd(),
            &nix::sys::time::TimeSpec::new(st.st_atime, st.st_atime_nsec),
            &nix::sys::time::TimeSpec::new(st.st_mtime, st.st_mtime_nsec),
        )?;
        put_in_place(dir.as_fd(), temp.entry(), entry)
    })();
    if let Err(e) = copied {
        let _ = unlinkat(dir.as_fd(), temp.entry(), UnlinkatFlags::NoRemoveDir);
        let _ = volume.headers.remove(&new_id);
        return Err(e);
    }
    Ok(new_id)
}

/// Removes a crash leftover: a file, or a probe's scratch directory with its files.
fn remove_leftover(root: BorrowedFd<'_>, path: &str) -> Result<()> {
    match unlinkat(root, path, UnlinkatFlags::NoRemoveDir) {
        Err(nix::Error::EISDIR) => {
            let dir = open_dir(root, path)?;
            crate::volume::backing::empty_dir(dir.as_fd());
            unlinkat(root, path, UnlinkatFlags::RemoveDir)?;
            Ok(())
        }
        other => Ok(other?),
    }
}

/// Renames the replacement `temp` over `entry` (in `dir`) and makes the rename durable.
fn put_in_place(dir: BorrowedFd<'_>, temp: &str, entry: &Entry) -> Result<()> {
    renameat2(dir, temp, dir, entry.backing.as_str(), RenameFlags::empty())?;
    sync_dir(dir);
    Ok(())
}

fn sync_dir(dir: BorrowedFd<'_>) {
    if let Ok(fd) = dir.try_clone_to_owned() {
        let _ = std::fs::File::from(fd).sync_all();
    }
}
