//! POSIX ACLs in the form the kernel hands them to a FUSE filesystem that negotiated
//! FUSE_POSIX_ACL (the `system.posix_acl_access` / `_default` xattr value: a version word and
//! `(tag, perm, id)` entries, little endian), and the three rules the kernel leaves to such a
//! filesystem: the mode an access ACL gives a file, what chmod does to an ACL, and what a new
//! inode inherits from its directory's default ACL. Each rule is the kernel's own
//! (fs/posix_acl.c: posix_acl_equiv_mode, __posix_acl_chmod_masq, posix_acl_create_masq), so
//! a mount keeps ACLs as ext4 does; the kernel checks permissions against them itself.

use std::ffi::OsStr;

use crate::volume::names::ACL_XATTR_NAMES;

pub const ACCESS: &str = ACL_XATTR_NAMES[0];
pub const DEFAULT: &str = ACL_XATTR_NAMES[1];

const VERSION: u32 = 2;
const HEADER_LEN: usize = 4;
const ENTRY_LEN: usize = 8;

const USER_OBJ: u16 = 0x01;
const USER: u16 = 0x02;
const GROUP_OBJ: u16 = 0x04;
const GROUP: u16 = 0x08;
const MASK: u16 = 0x10;
const OTHER: u16 = 0x20;

/// Which of a file's two ACLs an xattr name is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Checked against on access; its owner, mask (or owning group) and other entries are the
    /// mode's permission bits.
    Access,
    /// A directory's: what entries made in it inherit.
    Default,
}

impl Kind {
    pub fn of(name: &OsStr) -> Option<Kind> {
        match name.as_encoded_bytes() {
            n if n == ACCESS.as_bytes() => Some(Kind::Access),
            n if n == DEFAULT.as_bytes() => Some(Kind::Default),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Kind::Access => ACCESS,
            Kind::Default => DEFAULT,
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("not a POSIX ACL: {0}")]
pub struct AclError(&'static str);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Entry {
    tag: u16,
    perm: u16,
    id: u32,
}

/// One ACL, its entries in the order the kernel gave them (sorted by tag, then id).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Acl {
    entries: Vec<Entry>,
}

impl Acl {
    /// Reads an xattr value. Besides the layout, it must have the three entries every ACL has
    /// (owner, owning group, other) and a mask if it names users or groups: the rules below
    /// need them, and the kernel never sends an ACL without.
    pub fn parse(bytes: &[u8]) -> Result<Acl, AclError> {
        let (header, rest) = bytes
            .split_first_chunk::<HEADER_LEN>()
            .ok_or(AclError("shorter than its header"))?;
        if u32::from_le_bytes(*header) != VERSION {
            return Err(AclError("unknown version"));
        }
        if rest.len() % ENTRY_LEN != 0 {
            return Err(AclError("a partial entry"));
        }
        let entries: Vec<Entry> = rest
            .chunks_exact(ENTRY_LEN)
            .map(|e| Entry {
                tag: u16::from_le_bytes([e[0], e[1]]),
                perm: u16::from_le_bytes([e[2], e[3]]),
                id: u32::from_le_bytes([e[4], e[5], e[6], e[7]]),
            })
            .collect();
        let count = |tag| entries.iter().filter(|e| e.tag == tag).count();
        if entries.iter().any(|e| {
            ![USER_OBJ, USER, GROUP_OBJ, GROUP, MASK, OTHER].contains(&e.tag) || e.perm & !7 != 0
        }) {
            return Err(AclError("an unknown tag or permission"));
        }
        if count(USER_OBJ) != 1 || count(GROUP_OBJ) != 1 || count(OTHER) != 1 || count(MASK) > 1 {
            return Err(AclError("owner, group and other entries must appear once"));
        }
        if count(MASK) == 0 && count(USER) + count(GROUP) > 0 {
            return Err(AclError("named entries without a mask"));
        }
        Ok(Acl { entries })
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(HEADER_LEN + ENTRY_LEN * self.entries.len());
        out.extend_from_slice(&VERSION.to_le_bytes());
        for e in &self.entries {
            out.extend_from_slice(&e.tag.to_le_bytes());
            out.extend_from_slice(&e.perm.to_le_bytes());
            out.extend_from_slice(&e.id.to_le_bytes());
        }
        out
    }

    fn perm_of(&self, tag: u16) -> Option<u32> {
        self.entries
            .iter()
            .find(|e| e.tag == tag)
            .map(|e| u32::from(e.perm))
    }

    /// The permission bits (0o777) this ACL gives as a file's access ACL: owner, mask (or the
    /// owning group without one) and other.
    pub fn mode_bits(&self) -> u32 {
        let group = self.perm_of(MASK).or(self.perm_of(GROUP_OBJ)).unwrap_or(0);
        (self.perm_of(USER_OBJ).unwrap_or(0) << 6) | (group << 3) | self.perm_of(OTHER).unwrap_or(0)
    }

    /// Permission bits for an inode that cannot keep this ACL (a fifo or device node, whose
    /// ACL the backing store cannot hold): nobody gets more than the ACL gives them. The
    /// owning group gets its own entry cut by the mask (not the mask), and others what the
    /// other entry and every named entry (cut by the mask) all allow, since a named user or
    /// group would otherwise fall back to "other".
    pub fn restrictive_mode_bits(&self) -> u32 {
        let mask = self.perm_of(MASK).unwrap_or(7);
        let group = self.perm_of(GROUP_OBJ).unwrap_or(0) & mask;
        let named = self
            .entries
            .iter()
            .filter(|e| matches!(e.tag, USER | GROUP))
            .fold(7, |all, e| all & u32::from(e.perm) & mask);
        let other = self.perm_of(OTHER).unwrap_or(0) & named;
        (self.perm_of(USER_OBJ).unwrap_or(0) << 6) | (group << 3) | other
    }

    /// Whether the mode alone says all this ACL says (owner, group and other entries only): a
    /// file then keeps no access ACL, as on ext4.
    pub fn is_mode_only(&self) -> bool {
        self.entries
            .iter()
            .all(|e| matches!(e.tag, USER_OBJ | GROUP_OBJ | OTHER))
    }

    /// chmod of a file with this access ACL: the owner, mask (or owning group) and other
    /// entries take the new mode's bits; named entries keep theirs.
    pub fn chmod(&mut self, mode: u32) {
        let has_mask = self.perm_of(MASK).is_some();
        for e in &mut self.entries {
            let bits = match e.tag {
                USER_OBJ => mode >> 6,
                MASK => mode >> 3,
                GROUP_OBJ if !has_mask => mode >> 3,
                OTHER => mode,
                _ => continue,
            };
            e.perm = (bits & 7) as u16;
        }
    }

    /// A new inode made with `mode` under a directory whose default ACL this is: returns its
    /// mode (the permission bits cut down by the ACL's; no umask applies) and the access ACL
    /// it gets, none when the mode says it all.
    pub fn inherit(&self, mode: u32) -> (u32, Option<Acl>) {
        let mut acl = self.clone();
        let mut bits = mode & 0o777;
        let has_mask = acl.perm_of(MASK).is_some();
        for e in &mut acl.entries {
            let shift = match e.tag {
                USER_OBJ => 6,
                OTHER => 0,
                MASK => 3,
                GROUP_OBJ if !has_mask => 3,
                _ => continue,
            };
            let perm = u32::from(e.perm) & (bits >> shift);
            e.perm = perm as u16;
            bits &= (perm << shift) | !(7 << shift);
        }
        let mode = (mode & !0o777) | bits;
        let access = (!acl.is_mode_only()).then_some(acl);
        (mode, access)
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    const NO_ID: u32 = u32::MAX;

    fn acl(entries: &[(u16, u16, u32)]) -> Acl {
        Acl {
            entries: entries
                .iter()
                .map(|&(tag, perm, id)| Entry { tag, perm, id })
                .collect(),
        }
    }

    /// user::rw-, user:1000:rwx, group::r-x, mask::rwx, other::r-- (what `setfacl -m
    /// u:1000:rwx` makes of a 0654 file).
    fn named() -> Acl {
        acl(&[
            (USER_OBJ, 6, NO_ID),
            (USER, 7, 1000),
            (GROUP_OBJ, 5, NO_ID),
            (MASK, 7, NO_ID),
            (OTHER, 4, NO_ID),
        ])
    }

    #[test]
    fn the_xattr_form_round_trips_and_bad_forms_are_refused() {
        let a = named();
        assert_eq!(Acl::parse(&a.to_bytes()).unwrap(), a);
        assert_eq!(a.to_bytes().len(), 4 + 5 * 8);
        assert!(Acl::parse(&[2, 0, 0]).is_err());
        assert!(Acl::parse(&[1, 0, 0, 0]).is_err());
        let mut partial = a.to_bytes();
        partial.pop();
        assert!(Acl::parse(&partial).is_err());
        let no_mask = acl(&[
            (USER_OBJ, 6, NO_ID),
            (USER, 7, 1000),
            (GROUP_OBJ, 5, NO_ID),
            (OTHER, 4, NO_ID),
        ]);
        assert!(Acl::parse(&no_mask.to_bytes()).is_err());
        let bad_perm = acl(&[
            (USER_OBJ, 8, NO_ID),
            (GROUP_OBJ, 5, NO_ID),
            (OTHER, 4, NO_ID),
        ]);
        assert!(Acl::parse(&bad_perm.to_bytes()).is_err());
    }

    #[test]
    fn the_mask_stands_for_the_group_bits() {
        let a = named();
        assert_eq!(a.mode_bits(), 0o674);
        assert!(!a.is_mode_only());
        let plain = acl(&[
            (USER_OBJ, 6, NO_ID),
            (GROUP_OBJ, 5, NO_ID),
            (OTHER, 4, NO_ID),
        ]);
        assert_eq!(plain.mode_bits(), 0o654);
        assert!(plain.is_mode_only());
    }

    #[test]
    fn chmod_moves_the_mask_not_the_owning_group() {
        let mut a = named();
        a.chmod(0o640);
        assert_eq!(a.mode_bits(), 0o640);
        assert_eq!(a.perm_of(GROUP_OBJ), Some(5));
        assert_eq!(a.perm_of(USER), Some(7));
    }

    #[test]
    fn inheritance_cuts_the_mode_and_keeps_named_entries() {
        // setfacl -d -m u:1000:rwx on a directory, then open(O_CREAT, 0666).
        let (mode, access) = named().inherit(libc::S_IFREG | 0o666);
        assert_eq!(mode, libc::S_IFREG | 0o664);
        let access = access.unwrap();
        assert_eq!(access.mode_bits(), 0o664);
        assert_eq!(access.perm_of(USER), Some(7));
        // A default ACL of the mode's entries only gives no access ACL.
        let plain = acl(&[
            (USER_OBJ, 7, NO_ID),
            (GROUP_OBJ, 0, NO_ID),
            (OTHER, 0, NO_ID),
        ]);
        assert_eq!(plain.inherit(0o4777), (0o4700, None));
    }

    fn any_acl() -> impl Strategy<Value = Acl> {
        (
            0u16..8,
            0u16..8,
            0u16..8,
            prop::collection::vec((prop::bool::ANY, 0u16..8, 0u32..5), 0..4),
            0u16..8,
        )
            .prop_map(|(u, g, o, named, m)| {
                let mut e = vec![(USER_OBJ, u, NO_ID)];
                e.extend(named.iter().filter(|n| n.0).map(|n| (USER, n.1, n.2)));
                e.push((GROUP_OBJ, g, NO_ID));
                e.extend(named.iter().filter(|n| !n.0).map(|n| (GROUP, n.1, n.2)));
                if !named.is_empty() {
                    e.push((MASK, m, NO_ID));
                }
                e.push((OTHER, o, NO_ID));
                acl(&e)
            })
    }

    proptest! {
        #[test]
        fn every_acl_round_trips(a in any_acl()) {
            prop_assert_eq!(Acl::parse(&a.to_bytes()).unwrap(), a);
        }

        #[test]
        fn chmod_then_mode_bits_gives_the_mode(a in any_acl(), mode in 0u32..0o1000) {
            let mut a = a;
            a.chmod(mode);
            prop_assert_eq!(a.mode_bits(), mode);
        }

        #[test]
        fn the_restrictive_mode_gives_nobody_more_than_the_acl(a in any_acl()) {
            let bits = a.restrictive_mode_bits();
            let mask = a.perm_of(MASK).unwrap_or(7);
            prop_assert_eq!(bits >> 6, a.perm_of(USER_OBJ).unwrap());
            prop_assert_eq!((bits >> 3) & 7 & !(a.perm_of(GROUP_OBJ).unwrap() & mask), 0);
            prop_assert_eq!(bits & 7 & !a.perm_of(OTHER).unwrap(), 0);
            for e in a.entries.iter().filter(|e| matches!(e.tag, USER | GROUP)) {
                prop_assert_eq!(bits & 7 & !(u32::from(e.perm) & mask), 0);
            }
            if a.is_mode_only() {
                prop_assert_eq!(bits, a.mode_bits());
            }
        }

        #[test]
        fn an_inherited_mode_is_what_its_access_acl_says(a in any_acl(), mode in 0u32..0o10000) {
            let (new_mode, access) = a.inherit(mode);
            prop_assert_eq!(new_mode & !0o777, mode & !0o777);
            prop_assert_eq!(new_mode & 0o777 & !mode, 0);
            if let Some(access) = access {
                prop_assert_eq!(access.mode_bits(), new_mode & 0o777);
            }
        }
    }
}
