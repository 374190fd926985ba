//! fsck of a backing inode's user xattrs: names and values that do not open, attributes a
//! policy change cut short left under the parent's keys, and tails of split values no head
//! names (`volume::sealed_xattrs`).

use std::os::fd::BorrowedFd;

use super::{Problem, ProblemKind, UnreadableXattr};
use crate::keys::NameKeys;
use crate::volume::backing_xattrs::XattrTarget;
use crate::volume::names;
use crate::volume::sealed_xattrs::{self, Stored};

/// The problems of the user xattrs of the inode `fd` opens for reading (backing path `inode`,
/// plaintext `path`), all sealed under `keys`. `parent`: for a policy's directory, the keys
/// of the directory holding it, under which a `policy remove` cut short leaves its xattrs.
pub(super) fn check_xattrs(
    fd: BorrowedFd<'_>,
    keys: &NameKeys,
    parent: Option<&NameKeys>,
    path: &str,
    inode: &str,
) -> Vec<Problem> {
    let problem = |detail: String| Problem::new(ProblemKind::BadXattr, path.to_string(), detail);
    let target = XattrTarget::open(fd);
    let listed = match target.list_user() {
        Ok(listed) => listed,
        Err(e) => return vec![problem(format!("cannot list extended attributes: {e}"))],
    };
    let mut problems = Vec::new();
    let mut tails = Vec::new();
    let mut named_tails = Vec::new();
    for name in listed {
        if sealed_xattrs::is_tail(&name) {
            tails.push(name);
            continue;
        }
        if let Some(plain) = parent.and_then(|parent| names::decrypt_xattr_name(parent, &name)) {
            // Still readable, under the keys of the directory above: not damage, and not
            // for repair to remove.
            problems.push(problem(format!(
                "extended attribute {} is under the parent directory's keys, not this policy's: a `sealfs policy set` or `remove` on it was cut short; run it again",
                String::from_utf8_lossy(&plain)
            )));
            // Its tail, if split, is no leftover either.
            if let Ok(stored) = Stored::read(&target, &name) {
                named_tails.extend(stored.tail_name().map(<[u8]>::to_vec));
            }
            continue;
        }
        let detail = match names::decrypt_xattr_name(keys, &name) {
            None if !names::looks_sealed_xattr_name(&name) => {
                problems.push(Problem::new(
                    ProblemKind::Stray,
                    path.to_string(),
                    format!(
                        "extended attribute {} is not one sealfs wrote; left alone",
                        String::from_utf8_lossy(&name)
                    ),
                ));
                continue;
            }
            None => format!(
                "extended attribute {}: name does not decrypt",
                String::from_utf8_lossy(&name)
            ),
            Some(plain) => match Stored::read(&target, &name) {
                Err(e) => {
                    // Not proven damage (the read failed): reported, never removed.
                    problems.push(problem(format!(
                        "extended attribute {}: cannot read: {e}",
                        String::from_utf8_lossy(&plain)
                    )));
                    continue;
                }
                Ok(stored) => {
                    // A tail goes with its head, also when repair removes a head that does
                    // not open (sealed_xattrs::remove_backing takes both).
                    named_tails.extend(stored.tail_name().map(<[u8]>::to_vec));
                    match stored.open(keys, &name) {
                        Ok(_) => continue,
                        Err(e) => format!(
                            "extended attribute {}: {e}",
                            String::from_utf8_lossy(&plain)
                        ),
                    }
                }
            },
        };
        let mut bad = problem(detail);
        bad.xattr = Some(UnreadableXattr {
            inode: inode.to_string(),
            name,
        });
        problems.push(bad);
    }
    // The tail of a split value whose head is gone or was written anew: a crash between the
    // two writes left it.
    for tail in tails.into_iter().filter(|t| !named_tails.contains(t)) {
        let mut leftover = Problem::new(
            ProblemKind::Leftover,
            path.to_string(),
            format!(
                "extended attribute {} is the tail of a split value no attribute names (a write cut short)",
                String::from_utf8_lossy(&tail)
            ),
        );
        leftover.xattr = Some(UnreadableXattr {
            inode: inode.to_string(),
            name: tail,
        });
        problems.push(leftover);
    }
    problems
}
