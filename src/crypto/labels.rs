/// Every blake3 derive_key context sealfs uses. Changing one breaks every existing volume,
/// so they are frozen here and listed in docs/FORMAT.md.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Label {
    KeyslotWrap,
    KeyslotCheck,
    ConfigMac,
    KekWrap,
    KeyCommitment,
    ContentKey,
    NameKey,
    SymlinkKey,
    XattrNameKey,
    XattrValueKey,
    KekSeal,
    AuditMac,
    ReverseFileId,
    ReverseDataKey,
    TenantKek,
}

impl Label {
    pub const fn context(self) -> &'static str {
        match self {
            Label::KeyslotWrap => "sealfs 2026-11 v1 keyslot wrap key",
            Label::KeyslotCheck => "sealfs 2026-11 v1 keyslot check value",
            Label::ConfigMac => "sealfs 2026-11 v1 config mac key",
            Label::KekWrap => "sealfs 2026-11 v1 kek wrap key",
            Label::KeyCommitment => "sealfs 2026-11 v1 data key commitment",
            Label::ContentKey => "sealfs 2026-11 v1 content key",
            Label::NameKey => "sealfs 2026-11 v1 name key",
            Label::SymlinkKey => "sealfs 2026-11 v1 symlink target key",
            Label::XattrNameKey => "sealfs 2026-11 v1 xattr name key",
            Label::XattrValueKey => "sealfs 2026-11 v1 xattr value key",
            Label::KekSeal => "sealfs 2026-11 v3 rotated kek seal key",
            Label::AuditMac => "sealfs 2026-11 v3 audit chain key",
            Label::ReverseFileId => "sealfs 2026-11 v3 reverse file id",
            Label::ReverseDataKey => "sealfs 2026-11 v3 reverse data key",
            Label::TenantKek => "sealfs 2026-12 v4 tenant kek",
        }
    }
}
