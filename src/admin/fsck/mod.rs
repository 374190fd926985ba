//! fsck: checks a volume end to end (config, every name, symlink target, extended attribute,
//! data file preamble, header, key commitment and block tag, and the pairing of headers with
//! data files) and, with `repair`, fixes what can be fixed without losing anything that might
//! still be data: crash leftovers, orphan headers and attributes no key opens are removed,
//! unreadable entries move to /lost+found, a file sharing another file's id gets its own id.
//! Exit codes follow fsck(8).

mod repair;
mod sidecars;
mod walk;
mod xattrs;

use std::collections::HashMap;
use std::fs::File;
use std::os::fd::AsFd;
use std::time::Instant;

use nix::fcntl::{OFlag, openat};
use nix::sys::stat::Mode;
use rayon::prelude::*;
use serde::Serialize;

use super::progress::Progress;
use crate::coord::claim;
use crate::format::link::LINKS_DIR;
use crate::format::{Id, id_to_hex};
use crate::io::{DataFile, IoError};
use crate::keys::{HeaderKeys, KeyError, RemoteFailure};
use crate::volume::hole_maps::Writers;
use crate::volume::{Result, Volume, VolumeError};
pub use walk::{Entry, LOST_AND_FOUND};
use walk::{RegularFile, WalkResult};
use xattrs::check_xattrs;

/// What fsck reads at a time from a data file.
const CHECK_CHUNK: usize = 1 << 20;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ProblemKind {
    /// An entry name that does not decrypt, or a long name whose sidecar is missing or wrong.
    BadName,
    BadSymlink,
    /// A `user.*` extended attribute whose name or value does not open under the keys of the
    /// entry (or directory) that carries it.
    BadXattr,
    /// A data file without a valid preamble (no file id).
    BadPreamble,
    MissingHeader,
    /// A header that does not parse, does not open, or fails its key commitment.
    BadHeader,
    /// The key service could not be reached: not damage, nothing is repaired.
    KeyUnavailable,
    BadBlock,
    /// All-zero blocks of a version 2 data file that its hole map does not record.
    UnrecordedHole,
    /// Bytes past the last whole block: a write torn by a crash, that the file's undo
    /// journal cannot account for.
    TornTail,
    /// A write torn by a crash that the file's undo journal mends: blocks it put back from
    /// its copies, unsynced bytes past the fsynced end cut. A crash remnant, not damage; a
    /// mount does the same when it first opens the file, --repair does it offline.
    TornWrite,
    /// Two distinct data files carrying the same file id (so sharing one header).
    DuplicateFileId,
    OrphanHeader,
    /// Two symlinks (distinct inodes) whose long target is one sidecar.
    SharedLinkTarget,
    /// A crash leftover: header or config temp file, long-name sidecar without its entry.
    Leftover,
    /// A data file whose first write never reached the disk (shorter than its preamble): a
    /// crash remnant, not damage. A mount opens it as an empty file; --repair makes it one.
    EmptyRemnant,
    /// Something in the cipher dir sealfs did not write: reported, never touched.
    Stray,
}

impl ProblemKind {
    /// Strays are reported but are no error of the volume.
    fn is_error(self) -> bool {
        self != ProblemKind::Stray
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct Problem {
    pub kind: ProblemKind,
    /// The plaintext path where it can be decrypted, else the backing path.
    pub path: String,
    pub detail: String,
    /// What --repair did about it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub repaired: Option<String>,
    #[serde(skip)]
    entry: Option<Entry>,
    #[serde(skip)]
    header: Option<Id>,
    /// UnrecordedHole: the blocks.
    #[serde(skip)]
    holes: Vec<u64>,
    /// KeyUnavailable of a directory: the policy whose key is missing.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub policy: Option<u32>,
    /// KeyUnavailable of a directory: its backing path.
    #[serde(skip)]
    backing_dir: Option<String>,
    /// BadXattr that no key opens: which attribute, for --repair to remove.
    #[serde(skip)]
    xattr: Option<UnreadableXattr>,
}

/// A backing xattr that fails authentication under the only keys that could have sealed it.
#[derive(Clone, Debug)]
struct UnreadableXattr {
    /// Backing path of the inode carrying it, relative to the cipher dir ("" for the root).
    inode: String,
    /// Its backing name.
    name: Vec<u8>,
}

impl Problem {
    fn new(kind: ProblemKind, path: String, detail: impl Into<String>) -> Self {
        let detail = detail.into();
        Problem {
            kind,
            path,
            detail,
            repaired: None,
            entry: None,
            header: None,
            holes: Vec::new(),
            policy: None,
            backing_dir: None,
            xattr: None,
        }
    }

    fn leftover(backing_path: &str, detail: &str) -> Self {
        Problem::new(ProblemKind::Leftover, backing_path.to_string(), detail)
    }

    fn at(mut self, entry: &Entry) -> Self {
        self.entry = Some(entry.clone());
        self
    }
}

#[derive(Debug, Default, Serialize)]
pub struct FsckReport {
    pub files: u64,
    pub dirs: u64,
    pub symlinks: u64,
    pub others: u64,
    /// Entries already in /lost+found, not checked again.
    pub quarantined: u64,
    pub headers: u64,
    /// Plaintext bytes whose blocks were checked.
    pub bytes_checked: u64,
    pub seconds: f64,
    pub problems: Vec<Problem>,
}

impl FsckReport {
    /// fsck(8): 0 no errors, 1 errors corrected, 4 errors left uncorrected.
    pub fn exit_code(&self) -> i32 {
        let errors: Vec<&Problem> = self.problems.iter().filter(|p| p.kind.is_error()).collect();
        if errors.is_empty() {
            0
        } else if errors.iter().all(|p| p.repaired.is_some()) {
            1
        } else {
            4
        }
    }
}

#[derive(Clone, Debug, Default)]
pub struct FsckOptions {
    pub repair: bool,
    /// With `repair`: policies whose directories are cleared away (their key is gone for
    /// good: deleted in KMS, or the policy shredded).
    pub clear_policies: Vec<u32>,
}

pub fn fsck(volume: &Volume, options: FsckOptions, progress: &dyn Progress) -> Result<FsckReport> {
    let started = Instant::now();
    // A mount creates headers before their data files and keeps headers of open, unlinked
    // files: only with no mount can an unclaimed header be proven an orphan.
    let _exclusive = if options.repair {
        // Mid-move, a directory holds names under two policies' keys: repair would take the
        // ones not moved yet for damage.
        if !super::migrate::pending(&Volume::read_config(&volume.path)?).is_empty() {
            return Err(VolumeError::Usage(
                "a move under a key policy is pending: run `sealfs rewrap` to finish it before fsck --repair"
                    .into(),
            ));
        }
        // The claim excludes mounts on every host that shares the cipher dir (and names them);
        // the header-directory lock also mounts of sealfs versions before claims.
        let claim = claim::claim(
            volume.root.as_fd(),
            claim::ClaimMode::Exclusive,
            volume.backing.claim_lock_kind()?,
            "fsck --repair",
        )?;
        let headers = volume.headers.lock_exclusive().map_err(|_| {
            VolumeError::InUse(
                "the volume is mounted (or another fsck runs); unmount it before fsck --repair"
                    .into(),
            )
        })?;
        Some((claim, headers))
    } else {
        None
    };
    let WalkResult {
        files,
        dirs,
        symlinks,
        others,
        quarantined,
        mut problems,
        long_links,
    } = walk::walk(volume)?;
    progress.set_total(files.len() as u64);
    let checked: Vec<Checked> = files
        .par_iter()
        .map(|file| {
            let checked = check_file(volume, file);
            progress.advance(1);
            checked
        })
        .collect();

    let listing = volume.headers.list()?;
    // A data file that could not be opened or read, or a name that could not be walked, may
    // carry any file id: then no header can be proven an orphan.
    let unseen = checked
        .iter()
        .filter(|c| c.file_id.is_none() && !c.remnant)
        .count()
        + problems
            .iter()
            .filter(|p| p.kind == ProblemKind::BadName && p.entry.is_none())
            .count();
    let mut owners: HashMap<Id, (u64, u64)> = HashMap::new();
    let mut bytes_checked = 0;
    let mut by_path: Vec<(&RegularFile, Checked)> = files.iter().zip(checked).collect();
    by_path.sort_by(|a, b| a.0.entry.path.cmp(&b.0.entry.path));
    for (file, checked) in by_path {
        bytes_checked += checked.bytes;
        problems.extend(checked.problems);
        let Some(id) = checked.file_id else { continue };
        let owner = *owners.entry(id).or_insert((file.dev, file.ino));
        if owner != (file.dev, file.ino) && !file.entry.quarantined {
            let mut problem = Problem::new(
                ProblemKind::DuplicateFileId,
                file.entry.path.clone(),
                format!(
                    "shares file id {} (and so its header) with another file",
                    id_to_hex(&id)
                ),
            )
            .at(&file.entry);
            problem.header = Some(id);
            problems.push(problem);
        }
    }
    for id in &listing.ids {
        if !owners.contains_key(id) {
            let mut problem = Problem::new(
                ProblemKind::OrphanHeader,
                header_path(id),
                if unseen == 0 {
                    "no data file carries this file id".to_string()
                } else {
                    format!(
                        "no data file read carries this file id; kept, since {unseen} data file(s) could not be read"
                    )
                },
            );
            if unseen == 0 {
                problem.header = Some(*id);
            }
            problems.push(problem);
        }
    }
    // Two symlink inodes naming one sidecar (a copy of the cipher dir that did not keep hard
    // links): deleting either would take the other's target, so each gets its own.
    let mut link_owners: HashMap<Id, (u64, u64)> = HashMap::new();
    for link in &long_links {
        let owner = *link_owners
            .entry(link.link_id)
            .or_insert((link.dev, link.ino));
        if owner != (link.dev, link.ino) && !link.entry.quarantined {
            problems.push(
                Problem::new(
                    ProblemKind::SharedLinkTarget,
                    link.entry.path.clone(),
                    format!(
                        "shares its target sidecar {} with another symlink",
                        id_to_hex(&link.link_id)
                    ),
                )
                .at(&link.entry),
            );
        }
    }
    let links = crate::volume::long_links::list(volume.root.as_fd())?;
    for id in links.ids.iter().filter(|id| !link_owners.contains_key(*id)) {
        let hex = id_to_hex(id);
        let path = format!("{LINKS_DIR}/{}/{hex}", &hex[..2]);
        problems.push(if unseen == 0 {
            Problem::leftover(&path, "long symlink target no symlink points at")
        } else {
            Problem::new(
                ProblemKind::Stray,
                path,
                format!(
                    "long symlink target no symlink read points at; kept, since {unseen} entries could not be read"
                ),
            )
        });
    }
    for stray in &links.strays {
        problems.push(Problem::new(
            ProblemKind::Stray,
            format!("{LINKS_DIR}/{stray}"),
            "not a symlink target sidecar; left alone",
        ));
    }
    problems.extend(sidecars::header_side_problems(volume, &listing)?);
    if options.repair {
        repair::repair(volume, &mut problems, &options.clear_policies);
    }
    Ok(FsckReport {
        files: files.len() as u64,
        dirs,
        symlinks,
        others,
        quarantined,
        headers: listing.ids.len() as u64,
        bytes_checked,
        seconds: started.elapsed().as_secs_f64(),
        problems,
    })
}

fn header_path(id: &Id) -> String {
    let hex = id_to_hex(id);
    format!(
        "{}/{}/{hex}",
        crate::volume::headers::HEADERS_DIR,
        &hex[..2]
    )
}

struct Checked {
    file_id: Option<Id>,
    /// An `EmptyRemnant`: it carries no file id and needs none, so it hides no header.
    remnant: bool,
    problems: Vec<Problem>,
    bytes: u64,
}

fn check_file(volume: &Volume, file: &RegularFile) -> Checked {
    let entry = &file.entry;
    let mut checked = Checked {
        file_id: None,
        remnant: false,
        problems: Vec::new(),
        bytes: 0,
    };
    let problem = |kind, detail: String| Problem::new(kind, entry.path.clone(), detail).at(entry);
    let opened = openat(
        volume.root.as_fd(),
        entry.backing_path().as_str(),
        OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::empty(),
    );
    let data = match opened {
        Ok(fd) => File::from(fd),
        Err(e) => {
            checked.problems.push(problem(
                ProblemKind::BadPreamble,
                format!("cannot open: {e}"),
            ));
            return checked;
        }
    };
    if let Some(keys) = &file.xattr_keys
        && !entry.quarantined
    {
        checked.problems.extend(check_xattrs(
            data.as_fd(),
            keys,
            None,
            &entry.path,
            &entry.backing_path(),
        ));
    }
    let preamble = match crate::io::read_preamble(&data) {
        Ok(preamble) => preamble,
        Err(_) if crate::volume::remnant::never_written(&data) => {
            checked.remnant = true;
            if !entry.quarantined {
                checked.problems.push(problem(
                    ProblemKind::EmptyRemnant,
                    "shorter than its preamble: its first write never reached the disk (a crash, not damage); it reads as an empty file".into(),
                ));
            }
            return checked;
        }
        Err(e) => {
            if !entry.quarantined {
                checked
                    .problems
                    .push(problem(ProblemKind::BadPreamble, e.to_string()));
            }
            return checked;
        }
    };
    let file_id = preamble.file_id;
    checked.file_id = Some(file_id);
    if entry.quarantined || entry.locked {
        return checked;
    }
    let header = match volume.headers.load(&file_id) {
        Ok(header) => header,
        Err(e) => {
            let kind = if volume.headers.exists(&file_id) {
                ProblemKind::BadHeader
            } else {
                ProblemKind::MissingHeader
            };
            checked.problems.push(problem(kind, e.to_string()));
            return checked;
        }
    };
    let material = match volume.file_keys.open_header(&header).and_then(|m| {
        volume
            .check_policy(&file_id, &m, entry.policy)
            .map(|()| m)
            .map_err(|e| match e {
                VolumeError::Keys(k) => k,
                other => KeyError::Header {
                    file: id_to_hex(&file_id),
                    reason: other.to_string(),
                },
            })
    }) {
        Ok(material) => material,
        Err(e) => {
            let kind = match &e {
                KeyError::Remote { failure, .. } if *failure != RemoteFailure::Rejected => {
                    ProblemKind::KeyUnavailable
                }
                KeyError::PolicyRemoved(_) | KeyError::TenantKeyUnavailable { .. } => {
                    ProblemKind::KeyUnavailable
                }
                _ => ProblemKind::BadHeader,
            };
            checked.problems.push(problem(kind, e.to_string()));
            return checked;
        }
    };
    let holes = volume.file_holes(preamble.version, file_id, Writers::Sole);
    let blocks = volume.data_file(&data, &file_id, &material, holes.as_deref());
    // A crash remnant the journal mends is reported as such, and its blocks are checked once
    // mended (the next fsck), not reported as damage now.
    match sidecars::undo_plan(volume, &blocks, &file_id) {
        Ok(Some(detail)) => {
            checked
                .problems
                .push(problem(ProblemKind::TornWrite, detail));
            return checked;
        }
        Ok(None) => {}
        Err(e) => checked
            .problems
            .push(problem(ProblemKind::BadBlock, format!("undo journal: {e}"))),
    }
    match check_blocks(&blocks) {
        Ok(BlockCheck {
            bytes,
            bad,
            unrecorded,
        }) => {
            checked.bytes = bytes;
            if let Some((first, count)) = bad {
                checked.problems.push(problem(
                    ProblemKind::BadBlock,
                    format!("{count} block(s) fail authentication, the first is block {first}"),
                ));
            }
            if let Some(&first) = unrecorded.first() {
                let mut p = problem(
                    ProblemKind::UnrecordedHole,
                    format!(
                        "{} all-zero block(s) its hole map does not record, the first is block {first} (a crash before the map was written, or blocks zeroed by someone who can write the cipher dir); they read as EIO",
                        unrecorded.len()
                    ),
                );
                p.holes = unrecorded;
                checked.problems.push(p);
            }
        }
        Err(e) => checked
            .problems
            .push(problem(ProblemKind::BadBlock, format!("read error: {e}"))),
    }
    if let Ok(torn) = blocks.torn_tail()
        && torn > 0
    {
        checked.problems.push(problem(
            ProblemKind::TornTail,
            format!("{torn} byte(s) past the last whole block"),
        ));
    }
    checked
}

/// What reading every block of a data file found.
struct BlockCheck {
    bytes: u64,
    /// (first bad block, bad block count)
    bad: Option<(u64, u64)>,
    /// All-zero blocks the hole map does not record, in order.
    unrecorded: Vec<u64>,
}

/// Reads every block.
fn check_blocks(blocks: &DataFile<'_>) -> std::result::Result<BlockCheck, IoError> {
    let size = blocks.plain_size()?;
    let block_size = blocks.block_size();
    let mut bad: Option<(u64, u64)> = None;
    let mut unrecorded = Vec::new();
    let mut offset = 0;
    while offset < size {
        match blocks.read_with(offset, CHECK_CHUNK, |_| ()) {
            Ok(()) => {}
            Err(IoError::Integrity { .. } | IoError::UnrecordedHole { .. }) => {
                // Find which blocks of this chunk fail, one by one.
                let end = size.min(offset + CHECK_CHUNK as u64);
                let mut at = offset;
                while at < end {
                    match blocks.read_with(at, block_size as usize, |_| ()) {
                        Err(IoError::Integrity { block, .. }) => {
                            let (first, count) = bad.get_or_insert((block, 0));
                            *first = (*first).min(block);
                            *count += 1;
                        }
                        Err(IoError::UnrecordedHole { block, .. }) => unrecorded.push(block),
                        _ => {}
                    }
                    at += block_size;
                }
            }
            Err(e) => return Err(e),
        }
        offset += CHECK_CHUNK as u64;
    }
    Ok(BlockCheck {
        bytes: size,
        bad,
        unrecorded,
    })
}
