//! The keys that protect a directory tree's metadata: entry names, symlink targets, xattr
//! names and values. The volume has one set (from its volume secret); each key policy has its
//! own (from its tenant secret), so the volume's keys reveal no tenant's names.

use crate::crypto::{Label, Sealer, derive_key};

pub struct NameKeys {
    pub entries: Sealer,
    pub symlinks: Sealer,
    pub xattr_names: Sealer,
    pub xattr_values: Sealer,
}

impl NameKeys {
    /// The name keys derived from `secret` (a volume secret or a tenant secret).
    pub fn derive(secret: &[u8]) -> Self {
        let sealer = |label| Sealer::new(&derive_key(label, &[secret]));
        NameKeys {
            entries: sealer(Label::NameKey),
            symlinks: sealer(Label::SymlinkKey),
            xattr_names: sealer(Label::XattrNameKey),
            xattr_values: sealer(Label::XattrValueKey),
        }
    }
}
