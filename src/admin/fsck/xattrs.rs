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
    // A problem `--repair` settles by removing the backing attribute `name` (and its tail).
    let removable = |kind, detail: String, name: Vec<u8>| {
        let mut problem = Problem::new(kind, path.to_string(), detail);
        problem.xattr = Some(UnreadableXattr {
            inode: inode.to_string(),
            name,
        });
        problem
    };
    let target = XattrTarget::open(fd);
    let listed = match target.list_user() {
        Ok(listed) => listed,
        Err(e) => return vec![problem(format!("cannot list extended attributes: {e}"))],
    };
    let mut problems = Vec::new();
    let mut tails = Vec::new();
    let mut named_tails = Vec::new();
    // A head that could not be read may name a tail: then no tail is removed.
    let mut unread_head = false;
    let all: std::collections::HashSet<Vec<u8>> = listed.iter().cloned().collect();
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
            match Stored::read(&target, &name) {
                Ok(stored) => named_tails.extend(stored.tail_name().map(<[u8]>::to_vec)),
                Err(_) => unread_head = true,
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
            Some(plain) if is_stale_older_name(keys, &plain, &name, &all) => {
                // A crash between a write's two steps (the current name, then removing
                // the older one) left the older: the value under the current name is the
                // one that holds.
                if let Ok(stored) = Stored::read(&target, &name) {
                    named_tails.extend(stored.tail_name().map(<[u8]>::to_vec));
                }
                problems.push(removable(
                    ProblemKind::Leftover,
                    format!(
                        "extended attribute {} is also under its older name (a write cut short)",
                        String::from_utf8_lossy(&plain)
                    ),
                    name,
                ));
                continue;
            }
            Some(plain) => match Stored::read(&target, &name) {
                Err(e) => {
                    unread_head = true;
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
        problems.push(removable(ProblemKind::BadXattr, detail, name));
    }
    // The tail of a split value whose head is gone or was written anew: a crash between the
    // two writes left it.
    for tail in tails.into_iter().filter(|t| !named_tails.contains(t)) {
        let detail = format!(
            "extended attribute {} is the tail of a split value no attribute names (a write cut short)",
            String::from_utf8_lossy(&tail)
        );
        problems.push(if unread_head {
            problem(format!(
                "{detail}; not removed while an attribute of this inode cannot be read"
            ))
        } else {
            removable(ProblemKind::Leftover, detail, tail)
        });
    }
    problems
}

/// Whether `name` is the older (version 1) name of attribute `plain` while its current name
/// is listed too.
fn is_stale_older_name(
    keys: &NameKeys,
    plain: &[u8],
    name: &[u8],
    listed: &std::collections::HashSet<Vec<u8>>,
) -> bool {
    use std::os::unix::ffi::OsStrExt;
    names::encrypt_xattr_name(keys, std::ffi::OsStr::from_bytes(plain))
        .is_ok_and(|current| current != name && listed.contains(&current))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::OsStr;
    use std::os::fd::AsFd;

    #[test]
    fn a_stale_older_name_and_a_tail_without_head_are_leftovers_repair_may_remove() {
        let dir = tempfile::tempdir_in("/dev/shm").expect("this test needs /dev/shm (tmpfs)");
        let file = std::fs::File::create(dir.path().join("f")).unwrap();
        let target = XattrTarget::open(file.as_fd());
        let keys = NameKeys::derive(&[9; 32]);
        let plain = OsStr::new("user.both");
        let older = names::encrypt_xattr_name_v1(&keys, plain).unwrap();
        let sealed = names::seal_xattr_value(&keys, &older, b"old").unwrap();
        target.set(&older, &sealed, 0).unwrap();
        // A write cut short after its first step: the current name written, the older kept.
        let current = names::encrypt_xattr_name(&keys, plain).unwrap();
        let sealed = names::seal_xattr_value(&keys, &current, b"new").unwrap();
        target.set(&current, &sealed, 0).unwrap();
        assert_eq!(sealed_xattrs::get(&target, &keys, plain).unwrap(), b"new");
        target
            .set(
                b"user.sealfs.tail.AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
                &[0; 28],
                0,
            )
            .unwrap();
        let problems = check_xattrs(file.as_fd(), &keys, None, "/f", "f");
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert!(problems.iter().all(|p| p.kind == ProblemKind::Leftover));
        assert!(problems.iter().all(|p| p.xattr.is_some()));
        let stale = problems
            .iter()
            .find(|p| p.detail.contains("older name"))
            .unwrap();
        assert_eq!(stale.xattr.as_ref().unwrap().name, older);
        // Removing the attribute takes both names.
        sealed_xattrs::remove(&target, &keys, plain).unwrap();
        assert_eq!(
            target.list_user().unwrap().len(),
            1,
            "only the stray tail left"
        );
    }
}
