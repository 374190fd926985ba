//! A whole tree as a program sees it: names, types, modes, owners, link counts, sizes,
//! content hashes, symlink targets, user xattrs, which names are links of one inode, and
//! (for comparing one side with itself across a remount) modification times.

use std::collections::BTreeMap;
use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use crate::apply::{Outcome, apply, lstat};
use crate::ops::Op;

#[derive(Debug, PartialEq, Eq, Clone)]
pub struct Entry {
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub nlink: u64,
    pub size: Option<i64>,
    pub rdev: u64,
    pub content: Option<Outcome>,
    pub target: Option<Vec<u8>>,
    pub xattrs: BTreeMap<Vec<u8>, Vec<u8>>,
    /// The other names of this inode in the tree.
    pub links: Vec<String>,
    pub mtime: Option<(i64, i64)>,
    /// A fifo or device node with an ACL (the reference's): its permission bits are not
    /// compared (`differences`).
    pub acl_lost: bool,
}

pub type Tree = BTreeMap<String, Entry>;

/// User xattrs, and ACLs but on fifos and device nodes (`special`: a documented difference).
fn xattrs(path: &CString, special: bool) -> BTreeMap<Vec<u8>, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut names = vec![0u8; 64 * 1024];
    let n = unsafe { libc::llistxattr(path.as_ptr(), names.as_mut_ptr().cast(), names.len()) };
    if n <= 0 {
        return out;
    }
    for name in names[..n as usize]
        .split(|b| *b == 0)
        .filter(|n| !n.is_empty())
    {
        if !name.starts_with(b"user.") && (special || !name.starts_with(b"system.posix_acl_")) {
            continue;
        }
        let cname = CString::new(name).unwrap();
        let mut value = vec![0u8; 64 * 1024];
        let len = unsafe {
            libc::lgetxattr(
                path.as_ptr(),
                cname.as_ptr(),
                value.as_mut_ptr().cast(),
                value.len(),
            )
        };
        let value = if len < 0 {
            format!("error {}", std::io::Error::last_os_error()).into_bytes()
        } else {
            value[..len as usize].to_vec()
        };
        out.insert(name.to_vec(), value);
    }
    out
}

/// Whether a fifo or device node has an access ACL (on the reference: a mount keeps none
/// there, and chooses its permission bits itself, docs/GUARANTEES.md).
fn has_acl(path: &CString) -> bool {
    unsafe {
        libc::lgetxattr(
            path.as_ptr(),
            c"system.posix_acl_access".as_ptr(),
            std::ptr::null_mut(),
            0,
        ) > 0
    }
}

/// Every entry beneath `root` (not `root` itself), by path relative to it. `times`: record
/// modification times too. A name that is listed but cannot be looked at is recorded as such.
pub fn snapshot(root: &Path, times: bool) -> Result<Tree, String> {
    let mut tree = Tree::new();
    let mut inodes: BTreeMap<u64, Vec<String>> = BTreeMap::new();
    let mut stack = vec![String::new()];
    while let Some(dir) = stack.pop() {
        let abs = root.join(&dir);
        let listing = std::fs::read_dir(&abs).map_err(|e| format!("list {dir:?}: {e}"))?;
        for e in listing {
            let e = e.map_err(|e| format!("list {dir:?}: {e}"))?;
            let name = String::from_utf8_lossy(e.file_name().as_bytes()).into_owned();
            let rel = if dir.is_empty() {
                name
            } else {
                format!("{dir}/{name}")
            };
            let cpath = CString::new(root.join(&rel).as_os_str().as_bytes()).unwrap();
            let st = lstat(&cpath).map_err(|e| format!("lstat of listed {rel:?}: errno {e}"))?;
            let kind = st.st_mode & libc::S_IFMT;
            let content =
                (kind == libc::S_IFREG).then(|| apply(root, &Op::Read { path: rel.clone() }));
            if let Some(Outcome::Errno(e)) = content {
                return Err(format!("read of listed {rel:?}: errno {e}"));
            }
            if content.is_some() {
                let sparse = apply(root, &Op::SparseRead { path: rel.clone() });
                if Some(&sparse) != content.as_ref() {
                    return Err(format!("{rel:?} read by SEEK_DATA/SEEK_HOLE: {sparse:?}"));
                }
            }
            let target = (kind == libc::S_IFLNK).then(|| {
                std::fs::read_link(root.join(&rel))
                    .map(|t| t.as_os_str().as_bytes().to_vec())
                    .unwrap_or_else(|e| format!("error {e}").into_bytes())
            });
            if kind == libc::S_IFDIR {
                stack.push(rel.clone());
            } else {
                inodes.entry(st.st_ino).or_default().push(rel.clone());
            }
            let special = !matches!(kind, libc::S_IFREG | libc::S_IFDIR | libc::S_IFLNK);
            let xattrs = xattrs(&cpath, special);
            tree.insert(
                rel.clone(),
                Entry {
                    mode: st.st_mode,
                    acl_lost: special && has_acl(&cpath),
                    uid: st.st_uid,
                    gid: st.st_gid,
                    nlink: st.st_nlink,
                    size: (kind == libc::S_IFREG || kind == libc::S_IFLNK).then_some(st.st_size),
                    rdev: st.st_rdev,
                    content,
                    target,
                    xattrs,
                    links: Vec::new(),
                    mtime: times.then_some((st.st_mtime, st.st_mtime_nsec)),
                },
            );
        }
    }
    for names in inodes.values() {
        for name in names {
            let mut others: Vec<String> = names.iter().filter(|n| *n != name).cloned().collect();
            others.sort();
            tree.get_mut(name).unwrap().links = others;
        }
    }
    Ok(tree)
}

/// Whether an entry of ours is the reference's: for a fifo or device node the reference keeps
/// an ACL on, all but the permission bits (a mount keeps no ACL there and gives a mode no more
/// permissive than the ACL at creation, as asked by a later chmod).
fn same(ours: &Entry, reference: &Entry) -> bool {
    if !reference.acl_lost {
        return ours == reference;
    }
    let mut ours = ours.clone();
    ours.mode = (ours.mode & !0o777) | (reference.mode & 0o777);
    ours.acl_lost = true;
    ours == *reference
}

/// Where two trees differ, one line each (empty when they agree).
pub fn differences(ours: &Tree, reference: &Tree) -> Vec<String> {
    let mut out = Vec::new();
    for (path, entry) in ours {
        match reference.get(path) {
            None => out.push(format!("{path:?}: only on sealfs ({:o})", entry.mode)),
            Some(r) if !same(entry, r) => out.push(format!(
                "{path:?}: sealfs {}, reference {}",
                describe(entry),
                describe(r)
            )),
            Some(_) => {}
        }
    }
    for (path, entry) in reference {
        if !ours.contains_key(path) {
            out.push(format!("{path:?}: missing on sealfs ({:o})", entry.mode));
        }
    }
    out
}

fn describe(e: &Entry) -> String {
    format!(
        "mode {:o} uid {} gid {} nlink {} size {:?} rdev {} content {:?} target len {:?} \
         xattrs {:?} links {} mtime {:?}",
        e.mode,
        e.uid,
        e.gid,
        e.nlink,
        e.size,
        e.rdev,
        e.content,
        e.target.as_ref().map(Vec::len),
        e.xattrs
            .iter()
            .map(|(k, v)| (String::from_utf8_lossy(k), v.len()))
            .collect::<Vec<_>>(),
        e.links.len(),
        e.mtime
    )
}
