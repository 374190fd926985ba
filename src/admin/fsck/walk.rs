//! The tree walk of fsck: every backing directory from the root, every name decrypted, long
//! names matched with their sidecars, symlink targets opened. Regular files are collected for
//! the parallel content check.

use std::collections::HashSet;
use std::ffi::{OsStr, OsString};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::sync::Arc;

use nix::dir::{Dir, Type};
use nix::fcntl::{AtFlags, OFlag, openat, readlinkat};

use crate::volume::NEW_FILE_PREFIX;
use crate::volume::backing::PROBE_PREFIX;
use nix::sys::stat::{Mode, SFlag, fstatat};

use super::{Problem, ProblemKind};
use crate::format::config::CONFIG_FILE;
use crate::format::link::{LINKS_DIR, LongTarget};
use crate::format::name::{self, EntryKind, LONG_NAME_SUFFIX, LONG_PREFIX};
use crate::format::policy::{POLICY_MARKER, VOLUME_POLICY};
use crate::keys::{KeyError, NameKeys};
use crate::volume::headers::HEADERS_DIR;
use crate::volume::policy_dirs::read_marker;
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

/// A directory on the walk's stack.
struct Pending {
    dir: String,
    plain_dir: String,
    quarantined: bool,
    /// The policy of the directory holding it.
    inherited: u32,
    /// Beneath a policy whose key is unavailable (names cannot be read).
    locked: bool,
}

/// A symlink whose target is in a sidecar, by backing inode.
pub struct LongLink {
    pub link_id: crate::format::Id,
    pub dev: u64,
    pub ino: u64,
    pub entry: Entry,
}

pub fn walk(volume: &Volume) -> Result<WalkResult> {
    let mut out = WalkResult::default();
    let mut linked_files = HashSet::new();
    let mut stack = vec![Pending {
        dir: String::new(),
        plain_dir: String::new(),
        quarantined: false,
        inherited: VOLUME_POLICY,
        locked: false,
    }];
    while let Some(Pending {
        dir,
        plain_dir,
        quarantined,
        inherited,
        mut locked,
    }) = stack.pop()
    {
        let fd = open_dir(volume.root.as_fd(), &dir)?;
        let at = if plain_dir.is_empty() {
            "/"
        } else {
            &plain_dir
        };
        // The volume root and each policy's directory have a /lost+found of their own, so
        // that what fsck moves aside stays under its tenant's keys.
        let policy_root = dir.is_empty() || matches!(read_marker(fd.as_fd()), Ok(Some(_)));
        let policy = match volume.dir_policy(fd.as_fd(), inherited) {
            Ok(policy) => policy,
            Err(e) => {
                out.problems.push(Problem::new(
                    ProblemKind::BadName,
                    format!("{at} ({})", join(&dir, POLICY_MARKER)),
                    e.to_string(),
                ));
                locked = true;
                inherited
            }
        };
        let keys = if locked {
            None
        } else {
            match volume.name_keys(policy) {
                Ok(keys) => Some(keys),
                Err(e) => {
                    let mut problem = Problem::new(
                        if matches!(e, VolumeError::Keys(KeyError::UnknownPolicy(_))) {
                            ProblemKind::BadName
                        } else {
                            ProblemKind::KeyUnavailable
                        },
                        at.to_string(),
                        format!(
                            "key policy {policy}: {e}; nothing beneath it can be checked (only file ids are read)"
                        ),
                    );
                    problem.policy = Some(policy);
                    problem.backing_dir = Some(dir.clone());
                    out.problems.push(problem);
                    None
                }
            }
        };
        let locked = keys.is_none();
        // A directory's own xattrs are under the keys of what it holds.
        if let Some(keys) = &keys
            && !quarantined
        {
            let parent = if policy_root && !dir.is_empty() && policy != inherited {
                volume.name_keys(inherited).ok()
            } else {
                None
            };
            out.problems.extend(super::check_xattrs(
                fd.as_fd(),
                keys,
                parent.as_deref(),
                at,
                &dir,
            ));
        }
        let mut entries = Vec::new();
        for item in Dir::from_fd(fd.try_clone()?)?.iter() {
            let item = item?;
            let name = item.file_name().to_bytes();
            if name != b"." && name != b".." {
                entries.push(OsStr::from_bytes(name).to_os_string());
            }
        }
        let present: HashSet<&OsStr> = entries.iter().map(|n| n.as_os_str()).collect();
        for backing in &entries {
            let Some(text) = backing.to_str() else {
                out.problems.push(Problem::new(
                    ProblemKind::BadName,
                    format!("{plain_dir}/?{}", backing.to_string_lossy()),
                    "backing name is not ASCII",
                ));
                continue;
            };
            if dir.is_empty() && is_root_internal(text) {
                if text == "sealfs.conf.tmp" {
                    out.problems.push(Problem::leftover(
                        text,
                        "config write interrupted by a crash",
                    ));
                }
                continue;
            }
            match name::classify_entry(text) {
                EntryKind::Internal if text == POLICY_MARKER => continue,
                EntryKind::Internal => {
                    if let Some(hashed) = text.strip_suffix(LONG_NAME_SUFFIX)
                        && hashed.starts_with(LONG_PREFIX)
                    {
                        if !present.contains(OsStr::new(hashed)) {
                            let path = join(&dir, text);
                            out.problems.push(Problem::leftover(
                                &path,
                                "long-name sidecar without its entry",
                            ));
                        }
                    } else if text.starts_with(crate::admin::migrate::TEMP_PREFIX) {
                        out.problems.push(Problem::leftover(
                            &join(&dir, text),
                            "symlink re-seal under a key policy interrupted by a crash",
                        ));
                    } else if text.starts_with(NEW_FILE_PREFIX) {
                        out.problems.push(Problem::leftover(
                            &join(&dir, text),
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
                            join(&dir, text),
                            "unknown sealfs file; left alone",
                        ));
                    }
                    continue;
                }
                EntryKind::Encrypted(_) | EntryKind::Long(_) => {}
            }
            let decrypted = match &keys {
                Some(keys) => names::decrypt_entry(keys, fd.as_fd(), backing),
                None => Ok(Some(OsString::from(format!("?{text}")))),
            };
            let (path, bad_name) = match decrypted {
                Ok(Some(plain)) => (format!("{plain_dir}/{}", plain.to_string_lossy()), None),
                Ok(None) => continue,
                Err(e) => (format!("{plain_dir}/?{text}"), Some(e.to_string())),
            };
            let entry = Entry {
                dir: dir.clone(),
                backing: text.to_string(),
                path: path.clone(),
                quarantined,
                policy,
                locked,
            };
            if let Some(reason) = bad_name
                && !quarantined
            {
                out.problems
                    .push(Problem::new(ProblemKind::BadName, path.clone(), reason).at(&entry));
            }
            let st = fstatat(
                fd.as_fd(),
                backing.as_os_str(),
                AtFlags::AT_SYMLINK_NOFOLLOW,
            )?;
            match type_of(st.st_mode) {
                Type::Directory => {
                    out.dirs += 1;
                    let in_quarantine = quarantined
                        || (policy_root
                            && !locked
                            && path == format!("{plain_dir}/{LOST_AND_FOUND}"));
                    stack.push(Pending {
                        dir: join(&dir, text),
                        plain_dir: path,
                        quarantined: in_quarantine,
                        inherited: policy,
                        locked,
                    });
                }
                Type::File => {
                    if quarantined {
                        out.quarantined += 1;
                    }
                    // An inode's xattrs are checked once, whichever of its links comes first.
                    let first_link = quarantined
                        || st.st_nlink <= 1
                        || linked_files.insert((st.st_dev, st.st_ino));
                    out.files.push(RegularFile {
                        entry,
                        dev: st.st_dev,
                        ino: st.st_ino,
                        xattr_keys: keys.clone().filter(|_| first_link),
                    });
                }
                Type::Symlink => {
                    out.symlinks += 1;
                    let target = readlinkat(fd.as_fd(), backing.as_os_str())?;
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
                        continue;
                    }
                    let Some(keys) = &keys else { continue };
                    if let Err(e) = volume.open_symlink(keys, &target) {
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
        }
    }
    Ok(out)
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
