//! The tree walk of fsck: every backing directory from the root, every name decrypted, long
//! names matched with their sidecars, symlink targets opened. Regular files are collected for
//! the parallel content check.

use std::collections::HashSet;
use std::ffi::{OsStr, OsString};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::sync::Arc;

use nix::dir::Type;
use nix::fcntl::{OFlag, openat, readlinkat};

use crate::volume::NEW_FILE_PREFIX;
use crate::volume::backing::PROBE_PREFIX;
use nix::sys::stat::{Mode, SFlag};

use super::{Problem, ProblemKind};
use crate::format::config::CONFIG_FILE;
use crate::format::link::{LINKS_DIR, LongTarget};
use crate::format::name::{self, EntryKind, LONG_NAME_SUFFIX, LONG_PREFIX};
use crate::format::policy::{POLICY_MARKER, VOLUME_POLICY};
use crate::keys::{KeyError, NameKeys};
use crate::volume::headers::HEADERS_DIR;
use crate::volume::policy_dirs::read_marker;
use crate::volume::tree;
use crate::volume::{Result, Volume, VolumeError, names};

/// The plaintext name of the quarantine directory at the volume root.
pub const LOST_AND_FOUND: &str = "lost+found";

/// A backing entry, by its path relative to the cipher dir, and what the user calls it.
#[derive(Clone, Debug)]
pub struct Entry {
    /// Backing directory relative to the cipher dir ("" for the root).
    pub dir: String,
    /// Backing entry name in that directory.
    pub backing: String,
    /// Plaintext path from the volume root ("/a/b"), or a best effort with `?<backing>` for
    /// names that do not decrypt.
    pub path: String,
    /// In /lost+found: already quarantined, not checked again.
    pub quarantined: bool,
    /// The key policy of the directory holding it.
    pub policy: u32,
    /// Beneath a policy whose key this fsck cannot reach: only its file id is read.
    pub locked: bool,
}

impl Entry {
    pub fn backing_path(&self) -> String {
        if self.dir.is_empty() {
            self.backing.clone()
        } else {
            format!("{}/{}", self.dir, self.backing)
        }
    }
}

pub struct RegularFile {
    pub entry: Entry,
    pub dev: u64,
    pub ino: u64,
    /// The name keys its xattrs are sealed under (its directory's policy's); none when this
    /// fsck cannot reach them, or when another link to the same inode has them checked.
    pub xattr_keys: Option<Arc<NameKeys>>,
}

#[derive(Default)]
pub struct WalkResult {
    pub files: Vec<RegularFile>,
    pub dirs: u64,
    pub symlinks: u64,
    pub others: u64,
    pub quarantined: u64,
    pub problems: Vec<Problem>,
    /// The symlinks whose target is in a sidecar (quarantined ones too).
    pub long_links: Vec<LongLink>,
}

/// A directory the walk is in: what its parent said of it, then what `enter` found.
struct Dir {
    /// Backing path relative to the cipher dir ("" for the root).
    dir: String,
    plain_dir: String,
    quarantined: bool,
    /// The policy of the directory holding it.
    inherited: u32,
    /// Beneath a policy whose key is unavailable (names cannot be read).
    locked: bool,
    /// Its own policy, and the name keys of what it holds (none: locked).
    policy: u32,
    keys: Option<Arc<NameKeys>>,
    /// The volume root, or a directory carrying a policy marker.
    policy_root: bool,
    /// Every name in it, to pair long-name sidecars with their entries.
    present: HashSet<OsString>,
}

impl Dir {
    fn new(
        dir: String,
        plain_dir: String,
        quarantined: bool,
        inherited: u32,
        locked: bool,
    ) -> Self {
        Dir {
            dir,
            plain_dir,
            quarantined,
            inherited,
            locked,
            policy: inherited,
            keys: None,
            policy_root: false,
            present: HashSet::new(),
        }
    }

    /// The plaintext path to report the directory itself by.
    fn at(&self) -> &str {
        if self.plain_dir.is_empty() {
            "/"
        } else {
            &self.plain_dir
        }
    }
}

/// A symlink whose target is in a sidecar, by backing inode.
pub struct LongLink {
    pub link_id: crate::format::Id,
    pub dev: u64,
    pub ino: u64,
    pub entry: Entry,
}

pub fn walk(volume: &Volume) -> Result<WalkResult> {
    let mut walker = Walker {
        volume,
        out: WalkResult::default(),
        linked_files: HashSet::new(),
    };
    let root = Dir::new(String::new(), String::new(), false, VOLUME_POLICY, false);
    // The volume's root descriptor may be O_PATH: xattrs need one opened for reading.
    let top = open_dir(volume.root.as_fd(), "")?;
    tree::walk(top.as_fd(), root, &mut walker)?;
    Ok(walker.out)
}

struct Walker<'a> {
    volume: &'a Volume,
    out: WalkResult,
    /// Regular files with more than one link met so far, by (dev, ino).
    linked_files: HashSet<(u64, u64)>,
}

impl tree::Visitor for Walker<'_> {
    type Ctx = Dir;

    fn enter(&mut self, d: &mut Dir, fd: BorrowedFd<'_>, names: &[OsString]) -> Result<bool> {
        let volume = self.volume;
        // The volume root and each policy's directory have a /lost+found of their own, so
        // that what fsck moves aside stays under its tenant's keys.
        d.policy_root = d.dir.is_empty() || matches!(read_marker(fd), Ok(Some(_)));
        d.policy = match volume.dir_policy(fd, d.inherited) {
            Ok(policy) => policy,
            Err(e) => {
                self.out.problems.push(Problem::new(
                    ProblemKind::BadName,
                    format!("{} ({})", d.at(), join(&d.dir, POLICY_MARKER)),
                    e.to_string(),
                ));
                d.locked = true;
                d.inherited
            }
        };
        d.keys = if d.locked {
            None
        } else {
            match volume.name_keys(d.policy) {
                Ok(keys) => Some(keys),
                Err(e) => {
                    let mut problem = Problem::new(
                        if matches!(e, VolumeError::Keys(KeyError::UnknownPolicy(_))) {
                            ProblemKind::BadName
                        } else {
                            ProblemKind::KeyUnavailable
                        },
                        d.at().to_string(),
                        format!(
                            "key policy {}: {e}; nothing beneath it can be checked (only file ids are read)",
                            d.policy
                        ),
                    );
                    problem.policy = Some(d.policy);
                    problem.backing_dir = Some(d.dir.clone());
                    self.out.problems.push(problem);
                    None
                }
            }
        };
        d.locked = d.keys.is_none();
        // A directory's own xattrs are under the keys of what it holds.
        if let Some(keys) = &d.keys
            && !d.quarantined
        {
            let parent = if d.policy_root && !d.dir.is_empty() && d.policy != d.inherited {
                volume.name_keys(d.inherited).ok()
            } else {
                None
            };
            self.out.problems.extend(super::xattrs::check_xattrs(
                fd,
                keys,
                parent.as_deref(),
                d.at(),
                &d.dir,
            ));
        }
        d.present = names.iter().cloned().collect();
        Ok(true)
    }

    fn entry(&mut self, d: &Dir, item: &tree::Entry<'_>) -> Result<Option<tree::Descend<Dir>>> {
        let out = &mut self.out;
        let (dir, plain_dir, quarantined) = (&d.dir, &d.plain_dir, d.quarantined);
        let backing = item.name;
        let Some(text) = backing.to_str() else {
            out.problems.push(Problem::new(
                ProblemKind::BadName,
                format!("{plain_dir}/?{}", backing.to_string_lossy()),
                "backing name is not ASCII",
            ));
            return Ok(None);
        };
        if dir.is_empty() && is_root_internal(text) {
            if text == "sealfs.conf.tmp" {
                out.problems.push(Problem::leftover(
                    text,
                    "config write interrupted by a crash",
                ));
            }
            return Ok(None);
        }
        match name::classify_entry(text) {
            EntryKind::Internal if text == POLICY_MARKER => return Ok(None),
            EntryKind::Internal => {
                if let Some(hashed) = text.strip_suffix(LONG_NAME_SUFFIX)
                    && hashed.starts_with(LONG_PREFIX)
                {
                    if !d.present.contains(OsStr::new(hashed)) {
                        out.problems.push(Problem::leftover(
                            &join(dir, text),
                            "long-name sidecar without its entry",
                        ));
                    }
                } else if text.starts_with(crate::admin::migrate::TEMP_PREFIX) {
                    out.problems.push(Problem::leftover(
                        &join(dir, text),
                        "symlink re-seal under a key policy interrupted by a crash",
                    ));
                } else if text.starts_with(NEW_FILE_PREFIX) {
                    out.problems.push(Problem::leftover(
                        &join(dir, text),
                        "file creation interrupted by a crash (temporary name)",
                    ));
                } else if dir.is_empty() && text.starts_with(PROBE_PREFIX) {
                    out.problems.push(Problem::leftover(
                        text,
                        "backing-store probe interrupted by a crash",
                    ));
                } else {
                    out.problems.push(Problem::new(
                        ProblemKind::Stray,
                        join(dir, text),
                        "unknown sealfs file; left alone",
                    ));
                }
                return Ok(None);
            }
            EntryKind::Encrypted(_) | EntryKind::Long(_) => {}
        }
        let fd = item.dir;
        let decrypted = match &d.keys {
            Some(keys) => names::decrypt_entry(keys, fd, backing),
            None => Ok(Some(OsString::from(format!("?{text}")))),
        };
        let (path, bad_name) = match decrypted {
            Ok(Some(plain)) => (format!("{plain_dir}/{}", plain.to_string_lossy()), None),
            Ok(None) => return Ok(None),
            Err(e) => (format!("{plain_dir}/?{text}"), Some(e.to_string())),
        };
        let entry = Entry {
            dir: dir.clone(),
            backing: text.to_string(),
            path: path.clone(),
            quarantined,
            policy: d.policy,
            locked: d.locked,
        };
        if let Some(reason) = bad_name
            && !quarantined
        {
            out.problems
                .push(Problem::new(ProblemKind::BadName, path.clone(), reason).at(&entry));
        }
        let st = &item.stat;
        match type_of(st.st_mode) {
            Type::Directory => {
                out.dirs += 1;
                let in_quarantine = quarantined
                    || (d.policy_root
                        && !d.locked
                        && path == format!("{plain_dir}/{LOST_AND_FOUND}"));
                return Ok(Some(tree::Descend {
                    name: backing.to_os_string(),
                    ctx: Dir::new(join(dir, text), path, in_quarantine, d.policy, d.locked),
                }));
            }
            Type::File => {
                if quarantined {
                    out.quarantined += 1;
                }
                // An inode's xattrs are checked once, whichever of its links comes first.
                let first_link = quarantined
                    || st.st_nlink <= 1
                    || self.linked_files.insert((st.st_dev, st.st_ino));
                out.files.push(RegularFile {
                    entry,
                    dev: st.st_dev,
                    ino: st.st_ino,
                    xattr_keys: d.keys.clone().filter(|_| first_link),
                });
            }
            Type::Symlink => {
                out.symlinks += 1;
                let target = readlinkat(fd, backing)?;
                if let Some(long) = LongTarget::decode(target.as_bytes()) {
                    out.long_links.push(LongLink {
                        link_id: long.link_id,
                        dev: st.st_dev,
                        ino: st.st_ino,
                        entry: entry.clone(),
                    });
                }
                if quarantined {
                    out.quarantined += 1;
                    return Ok(None);
                }
                let Some(keys) = &d.keys else {
                    return Ok(None);
                };
                if let Err(e) = self.volume.open_symlink(keys, &target) {
                    out.problems.push(
                        Problem::new(ProblemKind::BadSymlink, path, e.to_string()).at(&entry),
                    );
                }
            }
            _ => {
                out.others += 1;
                if quarantined {
                    out.quarantined += 1;
                }
            }
        }
        Ok(None)
    }
}

fn is_root_internal(name: &str) -> bool {
    name == CONFIG_FILE
        || name == HEADERS_DIR
        || name == LINKS_DIR
        || name == crate::volume::undo::UNDO_DIR
        || name == "sealfs.conf.tmp"
        || name == "sealfs.audit"
        || name == crate::coord::claim::LOCK_FILE
        || name == crate::coord::claim::MOUNTS_DIR
        || name == crate::coord::maintenance::MAINTENANCE_FILE
}

fn type_of(mode: u32) -> Type {
    match SFlag::from_bits_truncate(mode & SFlag::S_IFMT.bits()) {
        SFlag::S_IFDIR => Type::Directory,
        SFlag::S_IFREG => Type::File,
        SFlag::S_IFLNK => Type::Symlink,
        SFlag::S_IFIFO => Type::Fifo,
        SFlag::S_IFSOCK => Type::Socket,
        SFlag::S_IFCHR => Type::CharacterDevice,
        _ => Type::BlockDevice,
    }
}

pub fn join(dir: &str, name: &str) -> String {
    if dir.is_empty() {
        name.to_string()
    } else {
        format!("{dir}/{name}")
    }
}

/// Opens a backing directory (relative to the cipher dir; "" is the root) for reading.
pub fn open_dir(root: BorrowedFd<'_>, rel: &str) -> Result<OwnedFd> {
    let rel = if rel.is_empty() { "." } else { rel };
    Ok(openat(
        root,
        rel,
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC | OFlag::O_NOFOLLOW,
        Mode::empty(),
    )?)
}

/// The plaintext name to give an entry moved to lost+found.
pub fn quarantine_name(entry: &Entry) -> OsString {
    let base = entry
        .path
        .rsplit('/')
        .next()
        .filter(|n| !n.starts_with('?') && !n.is_empty())
        .map(str::to_string)
        .unwrap_or_else(|| {
            let prefix: String = entry.backing.chars().take(16).collect();
            format!("unnamed-{prefix}")
        });
    OsString::from(base)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::volume::scratch::Scratch;
    use std::fs;

    fn volume() -> (Scratch, Volume) {
        let scratch = Scratch::new();
        let volume = scratch.open();
        (scratch, volume)
    }

    fn kinds(result: &WalkResult) -> Vec<(String, String)> {
        let mut kinds: Vec<(String, String)> = result
            .problems
            .iter()
            .map(|p| (format!("{:?}", p.kind), p.path.clone()))
            .collect();
        kinds.sort();
        kinds
    }

    #[test]
    fn a_fresh_volume_walks_clean_and_entries_read_back_by_their_plaintext_paths() {
        let (_dir, volume) = volume();
        let root = open_dir(volume.root.as_fd(), "").unwrap();
        let sub = volume.encrypt_name(OsStr::new("sub")).unwrap();
        nix::sys::stat::mkdirat(root.as_fd(), sub.entry(), Mode::from_bits_truncate(0o755))
            .unwrap();
        let subfd = open_dir(root.as_fd(), sub.entry()).unwrap();
        let long = "l".repeat(250);
        let name = volume.encrypt_name(OsStr::new(&long)).unwrap();
        crate::volume::names::write_long_sidecar(subfd.as_fd(), &name).unwrap();
        volume
            .create_data_file(subfd.as_fd(), &name, 0o644, VOLUME_POLICY)
            .unwrap();
        let result = walk(&volume).unwrap();
        assert_eq!(kinds(&result), Vec::<(String, String)>::new());
        assert_eq!((result.dirs, result.files.len()), (1, 1));
        assert_eq!(result.files[0].entry.path, format!("/sub/{long}"));
        assert_eq!(result.files[0].entry.dir, sub.entry());
    }

    #[test]
    fn leftovers_strays_and_names_that_do_not_decrypt_are_reported_apart() {
        let (dir, volume) = volume();
        let c = dir.cipher();
        fs::write(c.join(format!("{NEW_FILE_PREFIX}0123")), b"").unwrap();
        fs::write(c.join(format!("{LONG_PREFIX}abc{LONG_NAME_SUFFIX}")), b"x").unwrap();
        fs::write(c.join("sealfs.something-else"), b"").unwrap();
        fs::write(c.join("sealfs.conf.tmp"), b"").unwrap();
        fs::write(c.join("not-a-sealed-name"), b"").unwrap();
        fs::write(c.join(OsStr::from_bytes(b"\xff\xfe")), b"").unwrap();
        let result = walk(&volume).unwrap();
        let found = kinds(&result);
        let count = |kind: &str| found.iter().filter(|(k, _)| k == kind).count();
        assert_eq!(count("Leftover"), 3, "{found:?}");
        assert_eq!(count("Stray"), 1, "{found:?}");
        assert_eq!(count("BadName"), 2, "{found:?}");
        assert_eq!(found.len(), 6, "{found:?}");
    }
}
