//! The one walk of a backing tree, for everything that visits every entry of a cipher dir or
//! of a directory in it: fsck, the crash sweep, a policy's migration and a shredded policy's
//! clearing. It lists, lstats and descends; what each entry means is the visitor's.
//!
//! A directory's entries are all visited before any directory among them is walked, each
//! walked with the context the visitor gave it, opened again by name when its turn comes (a
//! walk holds one descriptor per level, however wide a directory). An entry gone between the
//! listing and its lstat (a live mount removed it) is passed over, as is a directory gone
//! before its turn.

use std::ffi::{OsStr, OsString};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;

use nix::fcntl::{AtFlags, OFlag, openat};
use nix::sys::stat::{FileStat, Mode, SFlag, fstatat};

use super::error::Result;

/// One entry of a backing directory, as the walk meets it.
pub struct Entry<'a> {
    /// The directory holding it.
    pub dir: BorrowedFd<'a>,
    pub name: &'a OsStr,
    /// Its lstat.
    pub stat: FileStat,
}

impl Entry<'_> {
    pub fn kind(&self) -> SFlag {
        SFlag::from_bits_truncate(self.stat.st_mode & SFlag::S_IFMT.bits())
    }

    pub fn is_dir(&self) -> bool {
        self.kind() == SFlag::S_IFDIR
    }

    /// The name as text (backing names sealfs makes are ASCII).
    pub fn text(&self) -> Option<&str> {
        self.name.to_str()
    }
}

/// What to do with a directory entry: walk into it, by the name it has now (a visitor may
/// have renamed it), carrying `ctx`.
pub struct Descend<C> {
    pub name: OsString,
    pub ctx: C,
}

pub trait Visitor {
    /// What a directory's walk carries: its path, its key policy, whatever the visitor needs.
    type Ctx;

    /// A directory is entered, with every name in it (sealfs's own too): the visitor may
    /// check the directory itself and pair names up; `false` passes over its entries.
    fn enter(
        &mut self,
        _ctx: &mut Self::Ctx,
        _dir: BorrowedFd<'_>,
        _names: &[OsString],
    ) -> Result<bool> {
        Ok(true)
    }

    /// One entry of a directory entered; `Some` walks into it once the directory's other
    /// entries have been visited.
    fn entry(&mut self, ctx: &Self::Ctx, entry: &Entry<'_>) -> Result<Option<Descend<Self::Ctx>>>;

    /// A directory walked into, `name` in `parent`, has been walked (everything beneath it
    /// visited): what removes a tree removes the directory here.
    fn left(&mut self, _ctx: &Self::Ctx, _parent: BorrowedFd<'_>, _name: &OsStr) -> Result<()> {
        Ok(())
    }
}

/// Walks the backing directory `dir` with `visitor`, starting with context `ctx`.
pub fn walk<V: Visitor>(dir: BorrowedFd<'_>, mut ctx: V::Ctx, visitor: &mut V) -> Result<()> {
    let names = list(dir)?;
    if !visitor.enter(&mut ctx, dir, &names)? {
        return Ok(());
    }
    let mut into = Vec::new();
    for name in &names {
        let stat = match fstatat(dir, name.as_os_str(), AtFlags::AT_SYMLINK_NOFOLLOW) {
            Ok(stat) => stat,
            Err(nix::Error::ENOENT) => continue,
            Err(e) => return Err(e.into()),
        };
        let entry = Entry { dir, name, stat };
        if let Some(descend) = visitor.entry(&ctx, &entry)? {
            into.push(descend);
        }
    }
    for Descend { name, ctx: child } in into {
        let Some(sub) = open_dir(dir, &name)? else {
            continue;
        };
        walk(sub.as_fd(), child, visitor)?;
        visitor.left(&ctx, dir, &name)?;
    }
    Ok(())
}

/// Every name in `dir` but "." and "..", read through a descriptor of its own.
pub fn list(dir: BorrowedFd<'_>) -> Result<Vec<OsString>> {
    let fd = openat(
        dir,
        ".",
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )?;
    let mut names = Vec::new();
    for item in nix::dir::Dir::from_fd(fd)?.iter() {
        let name = item?.file_name().to_bytes().to_vec();
        if name != b"." && name != b".." {
            names.push(OsStr::from_bytes(&name).to_os_string());
        }
    }
    Ok(names)
}

/// Directory `name` in `dir`, not following a symlink; `None` when it is gone.
pub fn open_dir(dir: BorrowedFd<'_>, name: &OsStr) -> Result<Option<OwnedFd>> {
    match openat(
        dir,
        name,
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::empty(),
    ) {
        Ok(fd) => Ok(Some(fd)),
        Err(nix::Error::ENOENT) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    /// Records the walk: (depth, path) per entry, entered directories, and leaves.
    #[derive(Default)]
    struct Record {
        seen: Vec<String>,
        left: Vec<String>,
    }

    impl Visitor for Record {
        type Ctx = String;

        fn enter(
            &mut self,
            _ctx: &mut String,
            _dir: BorrowedFd<'_>,
            names: &[OsString],
        ) -> Result<bool> {
            // "skip" directories are entered but not walked.
            Ok(!names.iter().any(|n| n == "skip-me"))
        }

        fn entry(&mut self, ctx: &String, entry: &Entry<'_>) -> Result<Option<Descend<String>>> {
            let path = format!("{ctx}/{}", entry.name.to_string_lossy());
            self.seen.push(path.clone());
            Ok(entry.is_dir().then(|| Descend {
                name: entry.name.to_os_string(),
                ctx: path,
            }))
        }

        fn left(&mut self, ctx: &String, _parent: BorrowedFd<'_>, name: &OsStr) -> Result<()> {
            self.left.push(format!("{ctx}/{}", name.to_string_lossy()));
            Ok(())
        }
    }

    #[test]
    fn a_directory_is_visited_whole_before_its_subdirectories_and_left_after_them() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path();
        fs::create_dir_all(p.join("a/b")).unwrap();
        fs::write(p.join("a/b/f"), b"").unwrap();
        fs::write(p.join("a/g"), b"").unwrap();
        fs::create_dir_all(p.join("s")).unwrap();
        fs::write(p.join("s/skip-me"), b"").unwrap();
        std::os::unix::fs::symlink("a", p.join("l")).unwrap();
        let root = fs::File::open(p).unwrap();
        let mut record = Record::default();
        walk(root.as_fd(), String::new(), &mut record).unwrap();
        let mut top: Vec<&String> = record.seen[..3].iter().collect();
        top.sort();
        assert_eq!(top, ["/a", "/l", "/s"], "{:?}", record.seen);
        let pos = |p: &str| record.seen.iter().position(|s| s == p).unwrap();
        assert!(pos("/a/g") < pos("/a/b/f") && pos("/a/b") < pos("/a/b/f"));
        assert!(!record.seen.iter().any(|s| s.contains("skip-me")));
        assert!(
            !record.seen.iter().any(|s| s.starts_with("/l/")),
            "symlinks are not followed"
        );
        assert_eq!(record.seen.len(), 6);
        let left = |p: &str| record.left.iter().position(|s| s == p).unwrap();
        assert!(left("/a/b") < left("/a"));
        assert_eq!(record.left.len(), 3);
    }

    #[test]
    fn a_directory_gone_before_its_turn_is_passed_over() {
        struct Remover;
        impl Visitor for Remover {
            type Ctx = ();
            fn entry(&mut self, _: &(), entry: &Entry<'_>) -> Result<Option<Descend<()>>> {
                if entry.is_dir() {
                    nix::unistd::unlinkat(
                        entry.dir,
                        entry.name,
                        nix::unistd::UnlinkatFlags::RemoveDir,
                    )?;
                    return Ok(Some(Descend {
                        name: entry.name.to_os_string(),
                        ctx: (),
                    }));
                }
                Ok(None)
            }
        }
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir(dir.path().join("d")).unwrap();
        let root = fs::File::open(dir.path()).unwrap();
        walk(root.as_fd(), (), &mut Remover).unwrap();
    }
}
