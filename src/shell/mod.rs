//! The FUSE shell both frontends share: the forward mount (`fs`) and the reverse view
//! (`reverse`) each implement `fuser::Filesystem` as a thin dispatcher over a core that knows
//! nothing of replies. What the two have in common lives here: replying once per request
//! through the one errno map (`errno`), attributes from backing stats (`attr`), asking the
//! kernel for capabilities at init, statfs and readdir replies, and the requests both answer
//! without work (`unanswered`).

pub mod attr;
pub mod errno;
pub(crate) mod unanswered;

use std::ffi::OsString;

use std::time::Duration;

use fuser::{
    FileAttr, FileType, Generation, INodeNo, InitFlags, KernelConfig, ReplyDirectory,
    ReplyDirectoryPlus, ReplyStatfs,
};

use crate::volume::Result;

/// Replies once: `$body` with the value on success, the mapped errno (logged by
/// `errno::report`) on failure.
macro_rules! reply_or_error {
    ($op:literal, $result:expr, $reply:ident, |$ok:ident| $body:expr) => {
        match $result {
            Ok($ok) => $body,
            Err(e) => $reply.error($crate::shell::errno::report($op, &e)),
        }
    };
}
pub(crate) use reply_or_error;

/// Asks the kernel for each of `flags`; one it lacks is logged, not fatal.
pub fn request_capabilities(config: &mut KernelConfig, flags: &[InitFlags]) {
    for &flag in flags {
        if let Err(missing) = config.add_capabilities(flag) {
            tracing::info!(?missing, "kernel lacks a FUSE capability");
        }
    }
}

/// statfs of the backing filesystem, as both views report it (names up to 255 bytes).
pub fn reply_statfs(reply: ReplyStatfs, result: Result<nix::sys::statvfs::Statvfs>) {
    reply_or_error!("statfs", result, reply, |s| reply.statfs(
        s.blocks(),
        s.blocks_free(),
        s.blocks_available(),
        s.files(),
        s.files_free(),
        s.block_size() as u32,
        255,
        s.fragment_size() as u32,
    ))
}

/// One entry of a directory listing taken at opendir. `target` is what a frontend keeps
/// beside each entry (the reverse view: what the entry is, for readdirplus).
pub struct DirEntry<T = ()> {
    pub ino: u64,
    pub kind: FileType,
    pub name: OsString,
    pub target: T,
}

impl<T: Default> DirEntry<T> {
    /// The first two entries of every listing, "." and "..", both under the listed
    /// directory's node id (the kernel answers ".." itself).
    pub fn dots(ino: u64) -> Vec<Self> {
        [".", ".."]
            .into_iter()
            .map(|name| DirEntry {
                ino,
                kind: FileType::Directory,
                name: name.into(),
                target: T::default(),
            })
            .collect()
    }
}

/// Sends the entries of a listing from `offset` on (entry i has offset i + 1), as many as fit.
pub fn reply_readdir<T>(
    mut reply: ReplyDirectory,
    offset: u64,
    entries: Result<std::sync::Arc<Vec<DirEntry<T>>>>,
) {
    let entries = match entries {
        Ok(entries) => entries,
        Err(e) => return reply.error(errno::report("readdir", &e)),
    };
    for (i, entry) in entries.iter().enumerate().skip(offset as usize) {
        if reply.add(INodeNo(entry.ino), i as u64 + 1, entry.kind, &entry.name) {
            break;
        }
    }
    reply.ok();
}

/// Sends the entries of a listing from `offset` on with their attributes (readdirplus), as
/// many as fit. `describe` gives an entry's attributes, how long the kernel may keep them and
/// the entry, and what `sent` needs to count the lookup; an entry it has nothing for (gone
/// since the listing) is left out. The kernel takes every entry sent, except "." and "..", as
/// a lookup of its node: `sent` is called for exactly those.
pub fn reply_readdirplus<T, K>(
    mut reply: ReplyDirectoryPlus,
    offset: u64,
    entries: Result<std::sync::Arc<Vec<DirEntry<T>>>>,
    mut describe: impl FnMut(&DirEntry<T>) -> Option<(FileAttr, Duration, Generation, K)>,
    mut sent: impl FnMut(&DirEntry<T>, K),
) {
    let entries = match entries {
        Ok(entries) => entries,
        Err(e) => return reply.error(errno::report("readdirplus", &e)),
    };
    for (i, entry) in entries.iter().enumerate().skip(offset as usize) {
        let offset = i as u64 + 1;
        if entry.name == "." || entry.name == ".." {
            // The kernel links neither: no attributes needed, no lookup counted.
            let attr = attr::placeholder(entry.ino, entry.kind);
            if reply.add(
                INodeNo(entry.ino),
                offset,
                &entry.name,
                &Duration::ZERO,
                &attr,
                Generation(0),
            ) {
                break;
            }
            continue;
        }
        let Some((attr, ttl, generation, token)) = describe(entry) else {
            continue;
        };
        if reply.add(
            INodeNo(entry.ino),
            offset,
            &entry.name,
            &ttl,
            &attr,
            generation,
        ) {
            break;
        }
        sent(entry, token);
    }
    reply.ok();
}
