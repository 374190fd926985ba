//! Where key policies are in the backing tree: the marker a policy's directory carries,
//! finding a directory by its plaintext path, and finding every marked directory. Used by
//! `policy` (setting and removing policies), `migrate` (moving a directory's entries under
//! one), fsck and the mount; it uses none of them.

use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Component, Path};

use nix::fcntl::{OFlag, openat};
use nix::sys::stat::{Mode, mkdirat};
use nix::unistd::{UnlinkatFlags, unlinkat};

use super::backing_xattrs::XattrTarget;
use super::error::{Result, VolumeError};
use super::headers::read_names;
use super::tree;
use super::{Volume, names};
use crate::format::name::{EntryKind, classify_entry};
use crate::format::policy::{POLICY_MARKER, VOLUME_POLICY, decode_marker, encode_marker};

/// The policy named by the marker in backing directory `dir`, if it has one.
pub fn read_marker(dir: BorrowedFd<'_>) -> Result<Option<u32>> {
    let fd = match openat(
        dir,
        POLICY_MARKER,
        OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::empty(),
    ) {
        Ok(fd) => fd,
        Err(nix::Error::ENOENT) => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    let mut bytes = Vec::new();
    File::from(fd).take(64).read_to_end(&mut bytes)?;
    decode_marker(&bytes)
        .map(Some)
        .map_err(|e| VolumeError::Corrupt(format!("policy marker: {e}")))
}

/// Writes the marker of policy `policy` into backing directory `dir`, durably. Readable by
/// all (mode 0644): it says which key, not the key, and a mount running as another user than
/// the one who set the policy must read it.
pub(crate) fn write_marker(dir: BorrowedFd<'_>, policy: u32) -> Result<()> {
    let fd = openat(
        dir,
        POLICY_MARKER,
        OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::from_bits_truncate(0o644),
    )?;
    let mut file = File::from(fd);
    let written = file
        .write_all(&encode_marker(policy))
        .and_then(|()| file.sync_all())
        .and_then(|()| {
            File::from(openat(
                dir,
                ".",
                OFlag::O_RDONLY | OFlag::O_CLOEXEC,
                Mode::empty(),
            )?)
            .sync_all()
        });
    if written.is_err() {
        let _ = unlinkat(dir, POLICY_MARKER, UnlinkatFlags::NoRemoveDir);
    }
    Ok(written?)
}

/// Removes backing directory `entry` of `parent` if all it holds is its policy marker (the
/// `rmdir` of an empty tenant directory); Ok(false) when it holds more. The policy stays in
/// the config, with no directory (`policy remove --id`). If the rmdir fails the marker is put
/// back, so the directory never loses its policy while it exists.
pub fn rmdir_policy_root(
    root: BorrowedFd<'_>,
    parent: BorrowedFd<'_>,
    entry: &str,
) -> Result<bool> {
    let dir = open_dir_at(parent, entry)?;
    // No create may slip in between the marker's unlink and the rmdir (under the parent's keys).
    let _no_creates = crate::coord::maintenance::lock_directory(root, dir.as_fd(), true)?;
    if read_names(dir.as_fd())?.iter().any(|n| n != POLICY_MARKER) {
        return Ok(false);
    }
    let Some(policy) = read_marker(dir.as_fd())? else {
        return Ok(false);
    };
    unlinkat(dir.as_fd(), POLICY_MARKER, UnlinkatFlags::NoRemoveDir)?;
    match unlinkat(parent, entry, UnlinkatFlags::RemoveDir) {
        Ok(()) => Ok(true),
        Err(e) => {
            write_marker(dir.as_fd(), policy)?;
            Err(e.into())
        }
    }
}

/// A directory found by its plaintext path: its backing fd, the policy of what is inside it,
/// and whether it carries that policy's marker itself.
pub struct PolicyDir {
    pub fd: OwnedFd,
    pub policy: u32,
    pub own_marker: bool,
    /// The policy of the directory holding this one (whose keys encrypt its name).
    pub parent_policy: u32,
}

pub(crate) fn open_dir_at(dir: BorrowedFd<'_>, entry: &str) -> Result<OwnedFd> {
    Ok(openat(
        dir,
        entry,
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::empty(),
    )?)
}

/// The components of a plaintext path inside the volume ("/clients/acme", "clients/acme").
pub(crate) fn components(path: &Path) -> Result<Vec<&OsStr>> {
    path.components()
        .filter(|c| !matches!(c, Component::RootDir | Component::CurDir))
        .map(|c| match c {
            Component::Normal(name) => Ok(name),
            _ => Err(VolumeError::Usage(format!(
                "{}: give the directory's path inside the volume, without ..",
                path.display()
            ))),
        })
        .collect()
}

/// Finds directory `path` (plaintext, inside the volume), decrypting with each directory's
/// keys on the way; with `create`, makes missing directories (as `mkdir -p`).
pub fn find_dir(volume: &Volume, path: &Path, create: bool) -> Result<PolicyDir> {
    let parts = components(path)?;
    let mut fd = open_dir_at(volume.root.as_fd(), ".")?;
    let (mut policy, mut parent_policy, mut own_marker) = (VOLUME_POLICY, VOLUME_POLICY, false);
    for part in &parts {
        let keys = volume.name_keys(policy)?;
        let backing = names::encrypt_name(&keys, part)?;
        let next = match open_dir_at(fd.as_fd(), backing.entry()) {
            Err(VolumeError::Io(e)) if e.kind() == std::io::ErrorKind::NotFound && create => {
                names::write_long_sidecar(fd.as_fd(), &backing)?;
                mkdirat(fd.as_fd(), backing.entry(), Mode::from_bits_truncate(0o755))?;
                open_dir_at(fd.as_fd(), backing.entry())?
            }
            Err(VolumeError::Io(e)) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(VolumeError::Usage(format!(
                    "{}: no such directory in the volume",
                    path.display()
                )));
            }
            other => other?,
        };
        let own = read_marker(next.as_fd())?;
        parent_policy = policy;
        own_marker = own.is_some();
        policy = own.unwrap_or(policy);
        fd = next;
    }
    Ok(PolicyDir {
        fd,
        policy,
        own_marker,
        parent_policy,
    })
}

/// The policies some directory's marker names, anywhere in the volume: markers are read
/// without keys, so this sees beneath tenants whose keys are out of reach too.
pub(crate) fn marked_policies(volume: &Volume) -> Result<std::collections::BTreeSet<u32>> {
    struct Markers(std::collections::BTreeSet<u32>);
    impl tree::Visitor for Markers {
        type Ctx = ();
        fn enter(&mut self, _: &mut (), dir: BorrowedFd<'_>, _: &[OsString]) -> Result<bool> {
            // A marker that does not parse names no policy that could be reattached.
            if let Ok(Some(id)) = read_marker(dir) {
                self.0.insert(id);
            }
            Ok(true)
        }
        fn entry(&mut self, _: &(), entry: &tree::Entry<'_>) -> Result<Option<tree::Descend<()>>> {
            let internal = entry
                .text()
                .is_some_and(|n| classify_entry(n) == EntryKind::Internal);
            Ok((entry.is_dir() && !internal).then(|| tree::Descend {
                name: entry.name.to_os_string(),
                ctx: (),
            }))
        }
    }
    let mut markers = Markers(std::collections::BTreeSet::new());
    let top = open_dir_at(volume.root.as_fd(), ".")?;
    tree::walk(top.as_fd(), (), &mut markers)?;
    Ok(markers.0)
}

/// Whether backing directory `dir` holds no entry a user would see.
pub(crate) fn is_empty(dir: BorrowedFd<'_>) -> Result<bool> {
    Ok(read_names(dir)?
        .iter()
        .all(|n| classify_entry(n) == EntryKind::Internal))
}

/// Whether backing directory `dir` has user xattrs of its own (encrypted under the keys of
/// the policy of what it holds, as its entries' names are).
pub(crate) fn has_user_xattrs(dir: BorrowedFd<'_>) -> Result<bool> {
    Ok(!XattrTarget::new(dir).list_user()?.is_empty())
}

/// A directory carrying a policy marker, found by `find_policy_dirs`.
pub struct PolicyDirEntry {
    /// Plaintext path inside the volume.
    pub path: String,
    pub policy: u32,
}

/// What `find_policy_dirs` found.
#[derive(Default)]
pub struct PolicyDirs {
    pub marked: Vec<PolicyDirEntry>,
    /// Directories beneath which nothing could be read (path, why): their policy's key is
    /// unavailable here.
    pub unreadable: Vec<(String, String)>,
}

/// Every directory carrying a marker, walking directories only; beneath a policy whose key
/// is unavailable here the walk cannot read names and goes no deeper.
pub fn find_policy_dirs(volume: &Volume) -> Result<PolicyDirs> {
    let mut finder = PolicyFinder {
        volume,
        found: PolicyDirs::default(),
    };
    let top = open_dir_at(volume.root.as_fd(), ".")?;
    let root = Walked {
        path: String::new(),
        policy: VOLUME_POLICY,
        keys: None,
    };
    tree::walk(top.as_fd(), root, &mut finder)?;
    let mut found = finder.found;
    found.marked.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(found)
}

/// A directory `find_policy_dirs` is in: its plaintext path, the policy it is under (its
/// parent's until `enter` reads its marker), and that policy's name keys.
struct Walked {
    path: String,
    policy: u32,
    keys: Option<std::sync::Arc<crate::keys::NameKeys>>,
}

struct PolicyFinder<'a> {
    volume: &'a Volume,
    found: PolicyDirs,
}

impl tree::Visitor for PolicyFinder<'_> {
    type Ctx = Walked;

    fn enter(&mut self, d: &mut Walked, dir: BorrowedFd<'_>, _: &[OsString]) -> Result<bool> {
        if !d.path.is_empty()
            && let Some(id) = read_marker(dir)?
        {
            self.found.marked.push(PolicyDirEntry {
                path: d.path.clone(),
                policy: id,
            });
            d.policy = id;
        }
        match self.volume.name_keys(d.policy) {
            Ok(keys) => d.keys = Some(keys),
            Err(e) => {
                self.found
                    .unreadable
                    .push((display(&d.path), e.to_string()));
                return Ok(false);
            }
        }
        Ok(true)
    }

    fn entry(
        &mut self,
        d: &Walked,
        entry: &tree::Entry<'_>,
    ) -> Result<Option<tree::Descend<Walked>>> {
        let Some(keys) = d.keys.as_ref().filter(|_| entry.is_dir()) else {
            return Ok(None);
        };
        let Ok(Some(name)) = names::decrypt_entry(keys, entry.dir, entry.name) else {
            return Ok(None);
        };
        Ok(Some(tree::Descend {
            name: entry.name.to_os_string(),
            ctx: Walked {
                path: format!("{}/{}", d.path, name.to_string_lossy()),
                policy: d.policy,
                keys: None,
            },
        }))
    }
}

pub(super) fn display(path: &str) -> String {
    if path.is_empty() {
        "/".into()
    } else {
        path.into()
    }
}
