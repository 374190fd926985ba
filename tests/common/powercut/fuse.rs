//! The FUSE handlers of the interposer (see the parent module for the model).

use super::*;

/// The filesystem the kernel talks to.
pub(super) struct PowercutFs(pub(super) Arc<Shared>);

impl PowercutFs {
    /// Runs a change under the state lock; counts it when it succeeds.
    fn changing<T>(&self, op: impl FnOnce(&mut State) -> Res<T>) -> Res<T> {
        let mut state = self.0.lock();
        let result = op(&mut state);
        if result.is_ok() {
            self.0.bump(&mut state);
        }
        result
    }

    fn entry(&self, reply: ReplyEntry, result: Res<FileAttr>) {
        match result {
            Ok(attr) => reply.entry(&TTL, &attr, Generation(0)),
            Err(e) => reply.error(e),
        }
    }
}

fn empty(reply: ReplyEmpty, result: Res<()>) {
    match result {
        Ok(()) => reply.ok(),
        Err(e) => reply.error(e),
    }
}

impl Filesystem for PowercutFs {
    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        self.entry(reply, self.0.lock().remember(parent, name));
    }

    fn forget(&self, _req: &Request, ino: INodeNo, nlookup: u64) {
        let mut state = self.0.lock();
        let Some(node) = state.nodes.get_mut(&ino.0) else {
            return;
        };
        node.lookups = node.lookups.saturating_sub(nlookup);
        if node.lookups == 0 && ino != INodeNo::ROOT {
            let node = state.nodes.remove(&ino.0).unwrap();
            if fstat(&node.fd).is_ok_and(|st| st.st_nlink == 0) {
                state.shadows.remove(&ino.0);
            }
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.0.lock().getattr(ino) {
            Ok(attr) => reply.attr(&TTL, &attr),
            Err(e) => reply.error(e),
        }
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let result = self.changing(|s| {
            let fd = s.node(ino)?;
            let kind = kind_of(nx(fstat(fd))?.st_mode);
            if let Some(mode) = mode.filter(|_| kind != FileType::Symlink) {
                let perm = Mode::from_bits_truncate(mode & 0o7777);
                let path = proc_path(fd);
                nx(fchmodat(
                    AT_FDCWD,
                    &path,
                    perm,
                    FchmodatFlags::FollowSymlink,
                ))?;
            }
            if uid.is_some() || gid.is_some() {
                let (uid, gid) = (uid.map(Uid::from_raw), gid.map(Gid::from_raw));
                let flags = AtFlags::AT_EMPTY_PATH | AtFlags::AT_SYMLINK_NOFOLLOW;
                nx(fchownat(fd, "", uid, gid, flags))?;
            }
            if atime.is_some() || mtime.is_some() {
                let spec = |t: Option<TimeOrNow>| match t {
                    None => libc::timespec {
                        tv_sec: 0,
                        tv_nsec: libc::UTIME_OMIT,
                    },
                    Some(TimeOrNow::Now) => libc::timespec {
                        tv_sec: 0,
                        tv_nsec: libc::UTIME_NOW,
                    },
                    Some(TimeOrNow::SpecificTime(t)) => {
                        let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
                        libc::timespec {
                            tv_sec: d.as_secs() as i64,
                            tv_nsec: i64::from(d.subsec_nanos()),
                        }
                    }
                };
                let times = [spec(atime), spec(mtime)];
                let flags = libc::AT_EMPTY_PATH | libc::AT_SYMLINK_NOFOLLOW;
                // SAFETY: a valid fd, a NUL-terminated empty path and two timespecs.
                check(unsafe {
                    libc::utimensat(fd.as_raw_fd(), c"".as_ptr(), times.as_ptr(), flags)
                })?;
                let st = nx(fstat(fd))?;
                if let Some(shadow) = s.shadows.get_mut(&ino.0) {
                    shadow.mtime = time(st.st_mtime, st.st_mtime_nsec);
                }
            }
            if let Some(size) = size {
                s.change(ino.0, Change::Truncate(size))?;
            }
            s.getattr(ino)
        });
        match result {
            Ok(attr) => reply.attr(&TTL, &attr),
            Err(e) => reply.error(e),
        }
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        match self
            .0
            .lock()
            .node(ino)
            .and_then(|fd| nx(readlinkat(fd, "")))
        {
            Ok(target) => reply.data(target.as_bytes()),
            Err(e) => reply.error(e),
        }
    }

    fn mknod(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        rdev: u32,
        reply: ReplyEntry,
    ) {
        let result = self.changing(|s| {
            let kind = SFlag::from_bits_truncate(mode & SFlag::S_IFMT.bits());
            let perm = Mode::from_bits_truncate(mode & 0o7777);
            nx(mknodat(s.node(parent)?, name, kind, perm, rdev.into()))?;
            s.made(parent, name, mode)
        });
        self.entry(reply, result);
    }

    fn mkdir(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        reply: ReplyEntry,
    ) {
        let result = self.changing(|s| {
            let perm = Mode::from_bits_truncate(mode & 0o7777);
            nx(mkdirat(s.node(parent)?, name, perm))?;
            s.made(parent, name, mode)
        });
        self.entry(reply, result);
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let result = self.changing(|s| {
            let victim = s.victim(parent, name);
            nx(unlinkat(s.node(parent)?, name, UnlinkatFlags::NoRemoveDir))?;
            s.settle(victim);
            Ok(())
        });
        empty(reply, result);
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let result =
            self.changing(|s| nx(unlinkat(s.node(parent)?, name, UnlinkatFlags::RemoveDir)));
        empty(reply, result);
    }

    fn symlink(
        &self,
        _req: &Request,
        parent: INodeNo,
        link_name: &OsStr,
        target: &Path,
        reply: ReplyEntry,
    ) {
        let result = self.changing(|s| {
            nx(symlinkat(target, s.node(parent)?, link_name))?;
            s.remember(parent, link_name)
        });
        self.entry(reply, result);
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        let result = self.changing(|s| {
            let flags = nix::fcntl::RenameFlags::from_bits_truncate(flags.bits());
            let victim = s.victim(newparent, newname);
            let (from, to) = (s.node(parent)?, s.node(newparent)?);
            nx(renameat2(from, name, to, newname, flags))?;
            s.settle(victim);
            Ok(())
        });
        empty(reply, result);
    }

    fn link(
        &self,
        _req: &Request,
        ino: INodeNo,
        newparent: INodeNo,
        newname: &OsStr,
        reply: ReplyEntry,
    ) {
        let result = self.changing(|s| {
            let from = proc_path(s.node(ino)?);
            let flags = AtFlags::AT_SYMLINK_FOLLOW;
            nx(linkat(AT_FDCWD, &from, s.node(newparent)?, newname, flags))?;
            s.remember(newparent, newname)
        });
        self.entry(reply, result);
    }

    fn open(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        // Reads go through this descriptor; writes only to the pending list.
        let mut state = self.0.lock();
        let opened = state
            .node(ino)
            .and_then(|fd| Ok(File::open(proc_path(fd))?));
        match opened {
            Ok(file) => {
                state.next_handle += 1;
                let fh = state.next_handle;
                state.files.insert(fh, file);
                reply.opened(FileHandle(fh), FopenFlags::empty());
            }
            Err(e) => reply.error(e),
        }
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let state = self.0.lock();
        if let Some(shadow) = state.shadows.get(&ino.0) {
            let start = (offset as usize).min(shadow.data.len());
            let end = (start + size as usize).min(shadow.data.len());
            return reply.data(&shadow.data[start..end]);
        }
        let Some(file) = state.files.get(&fh.0) else {
            return reply.error(Errno::EBADF);
        };
        let mut buf = vec![0u8; size as usize];
        let mut got = 0;
        while got < buf.len() {
            match file.read_at(&mut buf[got..], offset + got as u64) {
                Ok(0) => break,
                Ok(n) => got += n,
                Err(e) => return reply.error(e.into()),
            }
        }
        reply.data(&buf[..got]);
    }

    fn write(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        let change = Change::Write {
            offset,
            data: data.to_vec(),
        };
        match self.changing(|s| s.change(ino.0, change)) {
            Ok(()) => reply.written(data.len() as u32),
            Err(e) => reply.error(e),
        }
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        reply.ok();
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        self.0.lock().files.remove(&fh.0);
        reply.ok();
    }

    fn fsync(&self, _req: &Request, ino: INodeNo, _fh: FileHandle, _data: bool, reply: ReplyEmpty) {
        empty(reply, self.changing(|s| s.sync(ino.0)));
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        let mut state = self.0.lock();
        let listed = state.node(ino).and_then(|fd| {
            let mut listing: Listing = vec![
                (ino.0, FileType::Directory, ".".into()),
                (ino.0, FileType::Directory, "..".into()),
            ];
            for entry in std::fs::read_dir(proc_path(fd))? {
                let entry = entry?;
                let kind = FileType::from_std(entry.file_type()?).unwrap_or(FileType::RegularFile);
                listing.push((state.kernel_ino(entry.ino()), kind, entry.file_name()));
            }
            Ok(listing)
        });
        match listed {
            Ok(listing) => {
                state.next_handle += 1;
                let fh = state.next_handle;
                state.dirs.insert(fh, listing);
                reply.opened(FileHandle(fh), FopenFlags::empty());
            }
            Err(e) => reply.error(e),
        }
    }

    fn readdir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let state = self.0.lock();
        let Some(listing) = state.dirs.get(&fh.0) else {
            return reply.error(Errno::EBADF);
        };
        for (i, (ino, kind, name)) in listing.iter().enumerate().skip(offset as usize) {
            if reply.add(INodeNo(*ino), i as u64 + 1, *kind, name) {
                break;
            }
        }
        reply.ok();
    }

    fn releasedir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        self.0.lock().dirs.remove(&fh.0);
        reply.ok();
    }

    /// Directory operations are durable already.
    fn fsyncdir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _d: bool,
        reply: ReplyEmpty,
    ) {
        reply.ok();
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        let lower = self.0.lock().lower.clone();
        match nix::sys::statvfs::statvfs(&lower) {
            Ok(s) => reply.statfs(
                s.blocks(),
                s.blocks_free(),
                s.blocks_available(),
                s.files(),
                s.files_free(),
                s.block_size() as u32,
                s.name_max() as u32,
                s.fragment_size() as u32,
            ),
            Err(e) => reply.error(Errno::from_i32(e as i32)),
        }
    }

    fn setxattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        name: &OsStr,
        value: &[u8],
        flags: i32,
        _position: u32,
        reply: ReplyEmpty,
    ) {
        let result = self.changing(|s| {
            let (path, name) = (c_path(&proc_path(s.node(ino)?)), c_name(name));
            // SAFETY: NUL-terminated strings and a buffer of the length given.
            check(unsafe {
                libc::setxattr(
                    path.as_ptr(),
                    name.as_ptr(),
                    value.as_ptr().cast(),
                    value.len(),
                    flags,
                )
            })
        });
        empty(reply, result);
    }

    fn getxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        let value = self.0.lock().node(ino).and_then(|fd| {
            let (path, name) = (c_path(&proc_path(fd)), c_name(name));
            // SAFETY: NUL-terminated strings and a buffer of the length given.
            xattr_bytes(|buf, len| unsafe {
                libc::getxattr(path.as_ptr(), name.as_ptr(), buf, len)
            })
        });
        match value {
            Ok(value) => xattr_reply(reply, size, &value),
            Err(e) => reply.error(e),
        }
    }

    fn listxattr(&self, _req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        let names = self.0.lock().node(ino).and_then(|fd| {
            let path = c_path(&proc_path(fd));
            // SAFETY: a NUL-terminated path and a buffer of the length given.
            xattr_bytes(|buf, len| unsafe { libc::listxattr(path.as_ptr(), buf.cast(), len) })
        });
        match names {
            Ok(names) => xattr_reply(reply, size, &names),
            Err(e) => reply.error(e),
        }
    }

    fn removexattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let result = self.changing(|s| {
            let (path, name) = (c_path(&proc_path(s.node(ino)?)), c_name(name));
            // SAFETY: NUL-terminated strings.
            check(unsafe { libc::removexattr(path.as_ptr(), name.as_ptr()) })
        });
        empty(reply, result);
    }

    fn create(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        let result = self.changing(|s| {
            // Made empty (or opened, when it is there already); reads go through `file`.
            let excl = OFlag::from_bits_truncate(flags) & OFlag::O_EXCL;
            let oflags = OFlag::O_CREAT | OFlag::O_RDONLY | OFlag::O_CLOEXEC | excl;
            let perm = Mode::from_bits_truncate(mode & 0o7777);
            let file = File::from(nx(openat(s.node(parent)?, name, oflags, perm))?);
            let attr = s.made(parent, name, mode)?;
            s.next_handle += 1;
            let fh = s.next_handle;
            s.files.insert(fh, file);
            Ok((attr, fh))
        });
        match result {
            Ok((attr, fh)) => reply.created(
                &TTL,
                &attr,
                Generation(0),
                FileHandle(fh),
                FopenFlags::empty(),
            ),
            Err(e) => reply.error(e),
        }
    }

    /// fallocate as what it does to the bytes: punching or zeroing zeros the range (pending
    /// like a write, but never torn: extents, not sectors), allocating past the end grows the
    /// size; other modes refuse.
    fn fallocate(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        let keep = mode & libc::FALLOC_FL_KEEP_SIZE != 0;
        let zeroing = mode & (libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_ZERO_RANGE) != 0;
        let known =
            libc::FALLOC_FL_KEEP_SIZE | libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_ZERO_RANGE;
        if mode & !known != 0 || (mode & libc::FALLOC_FL_PUNCH_HOLE != 0 && !keep) {
            return reply.error(Errno::EOPNOTSUPP);
        }
        let result = self.changing(|s| {
            let size = match s.shadows.get(&ino.0) {
                Some(shadow) => shadow.data.len() as u64,
                None => nx(fstat(s.node(ino)?))?.st_size as u64,
            };
            let end = offset + length;
            if zeroing {
                let to = if keep { end.min(size) } else { end };
                if to > offset {
                    let len = to - offset;
                    s.change(ino.0, Change::Zero { offset, len })?;
                }
            } else if !keep && end > size {
                s.change(ino.0, Change::Truncate(end))?;
            }
            Ok(())
        });
        match result {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }
}
