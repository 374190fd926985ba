//! A sealed extended attribute value in the backing attributes that hold it: the one place that
//! reads, writes and removes one (docs/FORMAT.md, "Extended attributes").
//!
//! A value's sealed form is 28 bytes longer than the value, and Linux holds at most 65,536
//! bytes in one attribute. A value of more than 65,508 bytes is therefore split: its first
//! 65,536 sealed bytes (the *head*) under the attribute's own backing name, the rest (the
//! *tail*, at most 28 bytes) under a second attribute named after the backing name and the
//! head's nonce (`format::name::xattr_tail_name`), sealed under a label of its own so that
//! neither part opens without the other. Listings never show a tail.
//!
//! Order, so that a reader (of this mount, or of another host's) and a crash see either the
//! old value or the new one: a split value's tail is written before its head, and the tail
//! of the value it replaced is removed after; a removal takes the head first. What a crash
//! can leave is a tail no head names, which `fsck` reports as a leftover and `--repair`
//! removes.

use std::ffi::OsStr;

use super::backing_xattrs::XattrTarget;
use super::error::{Result, VolumeError};
use super::names::{self, ValueLayout, XattrNames};
use crate::format::name::{
    MAX_BACKING_XATTR_LIST, MAX_BACKING_XATTR_VALUE, XATTR_TAIL_NAME_LEN, XATTR_TAIL_PREFIX,
    xattr_tail_name,
};
use crate::keys::NameKeys;

/// Whether a backing attribute name is the tail of a split value (never listed).
pub fn is_tail(backing_name: &[u8]) -> bool {
    backing_name.starts_with(XATTR_TAIL_PREFIX)
}

/// An attribute's value as the backing store holds it, not yet opened.
pub struct Stored {
    head: Vec<u8>,
    /// A head of full length may be a split value's: its tail's name, and the tail if there.
    tail: Option<(Vec<u8>, Option<Vec<u8>>)>,
}

impl Stored {
    /// Reads the attribute `backing_name` (ENODATA when there is none).
    pub fn read(target: &XattrTarget<'_>, backing_name: &[u8]) -> Result<Self> {
        let head = target.get(backing_name)?;
        let tail = if head.len() == MAX_BACKING_XATTR_VALUE {
            let name = xattr_tail_name(backing_name, &head);
            let bytes = match target.get(&name) {
                Ok(bytes) => Some(bytes),
                Err(VolumeError::Io(e)) if e.raw_os_error() == Some(libc::ENODATA) => None,
                Err(e) => return Err(e),
            };
            Some((name, bytes))
        } else {
            None
        };
        Ok(Stored { head, tail })
    }

    /// The name of the tail this value has, if it is split.
    pub fn tail_name(&self) -> Option<&[u8]> {
        match &self.tail {
            Some((name, Some(_))) => Some(name),
            _ => None,
        }
    }

    /// The plaintext. A head of full length with a tail is tried as a split value first: a
    /// whole value sealed to exactly 65,536 bytes (65,508 of plaintext) has no tail, and
    /// one left by a crash beside it does not open with it.
    pub fn open(&self, keys: &NameKeys, backing_name: &[u8]) -> Result<Vec<u8>> {
        if let Some((_, Some(tail))) = &self.tail {
            let joined = [self.head.as_slice(), tail].concat();
            if let Ok(value) =
                names::open_xattr_value(keys, backing_name, &joined, ValueLayout::Split)
            {
                return Ok(value);
            }
        }
        names::open_xattr_value(keys, backing_name, &self.head, ValueLayout::Whole)
    }
}

/// The value of the attribute named `plain` (ENODATA when there is none), under whichever
/// version of its backing name it was written.
pub fn get(target: &XattrTarget<'_>, keys: &NameKeys, plain: &OsStr) -> Result<Vec<u8>> {
    let names = XattrNames::of(keys, plain)?;
    let Some(older) = &names.older else {
        return read(target, keys, &names.current);
    };
    match read(target, keys, &names.current) {
        Err(e) if is_no_data(&e) => match read(target, keys, older) {
            // Moved from the older name to the current one meanwhile (`set`): look again.
            Err(e) if is_no_data(&e) => read(target, keys, &names.current),
            other => other,
        },
        other => other,
    }
}

/// Sets the attribute named `plain`, under the current version of its backing name; the
/// same attribute under the older one is replaced (as setxattr(2) would, `flags` included).
pub fn set(
    target: &XattrTarget<'_>,
    keys: &NameKeys,
    plain: &OsStr,
    value: &[u8],
    flags: i32,
) -> Result<()> {
    let names = XattrNames::of(keys, plain)?;
    let older = match names.older {
        Some(older) if target.size(&older)?.is_some() => older,
        _ => return write(target, keys, &names.current, value, flags, None),
    };
    if flags & libc::XATTR_CREATE != 0 {
        return Err(std::io::Error::from_raw_os_error(libc::EEXIST).into());
    }
    write(
        target,
        keys,
        &names.current,
        value,
        flags & !libc::XATTR_REPLACE,
        Some(&older),
    )?;
    match remove_backing(target, &older) {
        Err(e) if is_no_data(&e) => Ok(()),
        other => other,
    }
}

/// Re-seals the attribute stored under `from_name` (under other keys) as `plain` under
/// `keys`, then removes it: what a key policy change does to each attribute.
pub fn move_to(
    target: &XattrTarget<'_>,
    keys: &NameKeys,
    plain: &OsStr,
    value: &[u8],
    from_name: &[u8],
) -> Result<()> {
    let current = names::encrypt_xattr_name(keys, plain)?;
    write(target, keys, &current, value, 0, Some(from_name))?;
    remove_backing(target, from_name)
}

/// Removes the attribute named `plain` (ENODATA when there is none).
pub fn remove(target: &XattrTarget<'_>, keys: &NameKeys, plain: &OsStr) -> Result<()> {
    let names = XattrNames::of(keys, plain)?;
    let current = remove_backing(target, &names.current);
    // Under both names after a crash between `set`'s two steps (or an older sealfs writing
    // one it could not see): both go.
    let older = match &names.older {
        Some(older) => remove_backing(target, older),
        None => Err(std::io::Error::from_raw_os_error(libc::ENODATA).into()),
    };
    match (current, older) {
        (Err(e), _) | (_, Err(e)) if !is_no_data(&e) => Err(e),
        (Err(e), Err(_)) => Err(e),
        _ => Ok(()),
    }
}

fn is_no_data(e: &VolumeError) -> bool {
    matches!(e, VolumeError::Io(e) if e.raw_os_error() == Some(libc::ENODATA))
}

/// The plaintext value of the attribute stored under `backing_name`. A split value read
/// while it is rewritten or removed (its head, then a tail gone meanwhile) is read again,
/// so a reader gets the old value, the new one or ENODATA, never a false integrity failure.
pub fn read(target: &XattrTarget<'_>, keys: &NameKeys, backing_name: &[u8]) -> Result<Vec<u8>> {
    let mut stored = Stored::read(target, backing_name)?;
    for _ in 0..4 {
        match stored.open(keys, backing_name) {
            Err(VolumeError::Corrupt(_)) if stored.head.len() == MAX_BACKING_XATTR_VALUE => {
                let again = Stored::read(target, backing_name)?;
                if again.head == stored.head && again.tail == stored.tail {
                    break;
                }
                stored = again;
            }
            other => return other,
        }
    }
    stored.open(keys, backing_name)
}

/// Seals `value` under `backing_name`, split if it needs to be. `flags` as setxattr(2):
/// `XATTR_CREATE` or `XATTR_REPLACE` fail as there, leaving what was there untouched.
/// `replacing`: a backing attribute the caller removes next (the same attribute under its
/// older name, or under other keys), whose room in the listing this one may take.
fn write(
    target: &XattrTarget<'_>,
    keys: &NameKeys,
    backing_name: &[u8],
    value: &[u8],
    flags: i32,
    replacing: Option<&[u8]>,
) -> Result<()> {
    let (exists, old_tail) = current(target, backing_name)?;
    if exists && flags & libc::XATTR_CREATE != 0 {
        return Err(std::io::Error::from_raw_os_error(libc::EEXIST).into());
    }
    if !exists && flags & libc::XATTR_REPLACE != 0 {
        return Err(std::io::Error::from_raw_os_error(libc::ENODATA).into());
    }
    let sealed = names::seal_xattr_value(keys, backing_name, value)?;
    // A listing holds 65,536 bytes at most (XATTR_LIST_MAX): names that would not fit are
    // refused as ext4 refuses what does not fit its space, or the inode's attributes could
    // no longer be listed at all. What this write adds: the name if new, a tail if split;
    // what goes right after: the old tail, and the attribute it replaces.
    let mut growth = if exists { 0 } else { backing_name.len() + 1 };
    if sealed.len() > MAX_BACKING_XATTR_VALUE {
        growth += XATTR_TAIL_NAME_LEN + 1;
    }
    let freed = old_tail.as_ref().map_or(0, |t| t.len() + 1) + replacing.map_or(0, |r| r.len() + 1);
    if growth > freed && target.list_size()? + growth - freed > MAX_BACKING_XATTR_LIST {
        return Err(std::io::Error::from_raw_os_error(libc::ENOSPC).into());
    }
    if sealed.len() <= MAX_BACKING_XATTR_VALUE {
        target.set(backing_name, &sealed, flags)?;
    } else {
        let (head, tail) = sealed.split_at(MAX_BACKING_XATTR_VALUE);
        let tail_name = xattr_tail_name(backing_name, head);
        target.set(&tail_name, tail, 0)?;
        if let Err(e) = target.set(backing_name, head, flags) {
            // Named after this head's nonce: nothing else needs it.
            let _ = target.remove_if_there(&tail_name);
            return Err(e);
        }
    }
    match old_tail {
        Some(old) => target.remove_if_there(&old),
        None => Ok(()),
    }
}

/// Removes the attribute `backing_name` (ENODATA when there is none) and its tail.
pub fn remove_backing(target: &XattrTarget<'_>, backing_name: &[u8]) -> Result<()> {
    let (_, old_tail) = current(target, backing_name)?;
    target.remove(backing_name)?;
    match old_tail {
        Some(old) => target.remove_if_there(&old),
        None => Ok(()),
    }
}

/// Whether `backing_name` is there, and the name the tail of its value would have if that
/// value's head is of full length (split or not: removing a tail that is not there is
/// harmless).
fn current(target: &XattrTarget<'_>, backing_name: &[u8]) -> Result<(bool, Option<Vec<u8>>)> {
    match target.size(backing_name)? {
        None => return Ok((false, None)),
        Some(len) if len != MAX_BACKING_XATTR_VALUE => return Ok((true, None)),
        Some(_) => {}
    }
    match target.get(backing_name) {
        Ok(head) => Ok((true, Some(xattr_tail_name(backing_name, &head)))),
        Err(VolumeError::Io(e)) if e.raw_os_error() == Some(libc::ENODATA) => Ok((false, None)),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    /// A file on tmpfs, which keeps values of 64 KiB (ext4 without ea_inode keeps about 4).
    fn scratch() -> (tempfile::TempDir, std::fs::File) {
        let dir = tempfile::tempdir_in("/dev/shm").expect("this test needs /dev/shm (tmpfs)");
        let file = std::fs::File::create(dir.path().join("f")).unwrap();
        (dir, file)
    }

    fn keys() -> NameKeys {
        NameKeys::derive(&[5; 32])
    }

    fn value(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 7 + 3) as u8).collect()
    }

    /// The errno a write failed with.
    fn errno(r: Result<()>) -> Option<i32> {
        match r {
            Err(VolumeError::Io(e)) => e.raw_os_error(),
            other => panic!("{other:?}"),
        }
    }

    fn user_names(target: &XattrTarget<'_>) -> Vec<Vec<u8>> {
        let mut names = target.list_user().unwrap();
        names.sort();
        names
    }

    #[test]
    fn values_up_to_the_kernels_limit_round_trip_and_only_the_largest_are_split() {
        let (_dir, file) = scratch();
        let target = XattrTarget::open(file.as_fd());
        let k = keys();
        let name = names::encrypt_xattr_name(&k, OsStr::new("user.big")).unwrap();
        for len in [0, 1, 4096, 65_507, 65_508, 65_509, 65_535, 65_536] {
            write(&target, &k, &name, &value(len), 0, None).unwrap();
            assert_eq!(read(&target, &k, &name).unwrap(), value(len), "{len}");
            let stored = user_names(&target);
            let split = len > 65_508;
            assert_eq!(stored.len(), if split { 2 } else { 1 }, "{len}: {stored:?}");
            assert_eq!(
                stored.iter().filter(|n| is_tail(n)).count(),
                usize::from(split)
            );
        }
        // Back to a small value: the old tail goes.
        write(&target, &k, &name, b"small", 0, None).unwrap();
        assert_eq!(user_names(&target), vec![name.clone()]);
        write(&target, &k, &name, &value(65_536), 0, None).unwrap();
        remove_backing(&target, &name).unwrap();
        assert!(user_names(&target).is_empty());
        assert!(matches!(
            remove_backing(&target, &name),
            Err(VolumeError::Io(e)) if e.raw_os_error() == Some(libc::ENODATA)
        ));
    }

    #[test]
    fn create_and_replace_flags_fail_as_setxattr_does_and_leave_no_tail() {
        let (_dir, file) = scratch();
        let target = XattrTarget::open(file.as_fd());
        let k = keys();
        let name = names::encrypt_xattr_name(&k, OsStr::new("user.x")).unwrap();
        assert_eq!(
            errno(write(
                &target,
                &k,
                &name,
                &value(65_536),
                libc::XATTR_REPLACE,
                None
            )),
            Some(libc::ENODATA)
        );
        assert!(user_names(&target).is_empty());
        write(&target, &k, &name, &value(65_536), libc::XATTR_CREATE, None).unwrap();
        assert_eq!(
            errno(write(
                &target,
                &k,
                &name,
                &value(65_530),
                libc::XATTR_CREATE,
                None
            )),
            Some(libc::EEXIST)
        );
        assert_eq!(read(&target, &k, &name).unwrap(), value(65_536));
        assert_eq!(user_names(&target).len(), 2);
    }

    #[test]
    fn a_head_without_its_tail_or_with_another_values_tail_never_opens() {
        let (_dir, file) = scratch();
        let target = XattrTarget::open(file.as_fd());
        let k = keys();
        let name = names::encrypt_xattr_name(&k, OsStr::new("user.x")).unwrap();
        let other = names::encrypt_xattr_name(&k, OsStr::new("user.y")).unwrap();
        write(&target, &k, &name, &value(65_536), 0, None).unwrap();
        write(&target, &k, &other, &value(65_530), 0, None).unwrap();
        let stored = Stored::read(&target, &name).unwrap();
        let tail = stored.tail_name().unwrap().to_vec();
        let other_tail = Stored::read(&target, &other)
            .unwrap()
            .tail_name()
            .unwrap()
            .to_vec();
        // The other value's tail under this one's tail name.
        let foreign = target.get(&other_tail).unwrap();
        target.set(&tail, &foreign, 0).unwrap();
        assert!(matches!(
            read(&target, &k, &name),
            Err(VolumeError::Corrupt(_))
        ));
        target.remove(&tail).unwrap();
        assert!(matches!(
            read(&target, &k, &name),
            Err(VolumeError::Corrupt(_))
        ));
        // A whole value of exactly 65,536 sealed bytes opens with a stray tail beside it.
        write(&target, &k, &name, &value(65_508), 0, None).unwrap();
        let head = target.get(&name).unwrap();
        target
            .set(&xattr_tail_name(&name, &head), &[0u8; 28], 0)
            .unwrap();
        assert_eq!(read(&target, &k, &name).unwrap(), value(65_508));
    }

    #[test]
    fn an_attribute_under_its_version_1_name_is_read_replaced_and_removed() {
        let (_dir, file) = scratch();
        let target = XattrTarget::open(file.as_fd());
        let k = keys();
        let plain = OsStr::new("user.old");
        let v1 = names::encrypt_xattr_name_v1(&k, plain).unwrap();
        let v2 = names::encrypt_xattr_name(&k, plain).unwrap();
        // As a sealfs before version 2 names wrote it.
        write(&target, &k, &v1, b"first", 0, None).unwrap();
        assert_eq!(get(&target, &k, plain).unwrap(), b"first");
        assert_eq!(
            errno(set(&target, &k, plain, b"x", libc::XATTR_CREATE)),
            Some(libc::EEXIST)
        );
        set(&target, &k, plain, &value(65_536), libc::XATTR_REPLACE).unwrap();
        assert_eq!(get(&target, &k, plain).unwrap(), value(65_536));
        let listed = user_names(&target);
        assert!(listed.contains(&v2) && !listed.contains(&v1), "{listed:?}");
        remove(&target, &k, plain).unwrap();
        assert!(user_names(&target).is_empty());
        write(&target, &k, &v1, &value(65_536), 0, None).unwrap();
        remove(&target, &k, plain).unwrap();
        assert!(
            user_names(&target).is_empty(),
            "the old value's tail went too"
        );
        assert_eq!(errno(remove(&target, &k, plain)), Some(libc::ENODATA));
    }

    #[test]
    fn a_name_that_would_not_fit_a_listing_is_refused_and_the_listing_still_works() {
        let (_dir, file) = scratch();
        let target = XattrTarget::open(file.as_fd());
        let k = keys();
        let mut count = 0;
        let refused = loop {
            let name = format!("user.attribute_{count}");
            match set(&target, &k, OsStr::new(&name), b"value", 0) {
                Ok(()) => count += 1,
                Err(e) => break e,
            }
        };
        assert!(
            matches!(&refused, VolumeError::Io(e) if e.raw_os_error() == Some(libc::ENOSPC)),
            "{refused:?}"
        );
        // 49 bytes a name: "user." and 43 characters of base64url, and the NUL.
        assert_eq!(count, 65_536 / 49, "{count}");
        assert_eq!(target.list_user().unwrap().len(), count);
        // Names already there still take new values.
        set(
            &target,
            &k,
            OsStr::new("user.attribute_0"),
            &value(65_536),
            0,
        )
        .unwrap_err();
        set(&target, &k, OsStr::new("user.attribute_0"), b"other", 0).unwrap();
        let tail = xattr_tail_name(b"user.x", &[0; 12]);
        assert_eq!(tail.len(), XATTR_TAIL_NAME_LEN);
    }

    #[test]
    fn moving_names_to_version_2_fits_a_full_listing_and_flags_come_before_room() {
        let (_dir, file) = scratch();
        let target = XattrTarget::open(file.as_fd());
        let k = keys();
        // As an older sealfs filled it: version 1 names (70 bytes listed) up to the limit.
        let mut count = 0;
        while target.list_size().unwrap() + 70 <= MAX_BACKING_XATTR_LIST {
            let plain = format!("user.attribute_{count}");
            let v1 = names::encrypt_xattr_name_v1(&k, OsStr::new(&plain)).unwrap();
            write(&target, &k, &v1, b"v", 0, None).unwrap();
            count += 1;
        }
        assert_eq!(count, 65_536 / 70);
        // Rewriting each moves it to its shorter current name, with no ENOSPC.
        for i in 0..count {
            let plain = format!("user.attribute_{i}");
            set(&target, &k, OsStr::new(&plain), b"w", libc::XATTR_REPLACE).unwrap();
        }
        assert_eq!(target.list_user().unwrap().len(), count);
        // At a full listing, the flags still answer first.
        while set(
            &target,
            &k,
            OsStr::new(&format!("user.more_{count}")),
            b"v",
            0,
        )
        .is_ok()
        {
            count += 1;
        }
        assert_eq!(
            errno(set(
                &target,
                &k,
                OsStr::new("user.absent"),
                b"v",
                libc::XATTR_REPLACE
            )),
            Some(libc::ENODATA)
        );
        assert_eq!(
            errno(set(
                &target,
                &k,
                OsStr::new("user.attribute_0"),
                &value(65_536),
                libc::XATTR_CREATE
            )),
            Some(libc::EEXIST)
        );
        assert_eq!(
            errno(set(&target, &k, OsStr::new("user.absent"), b"v", 0)),
            Some(libc::ENOSPC)
        );
    }
}
