//! What /proc/self/mountinfo says: whether a path is a mount point, a mount's device, which
//! cipher dir a sealfs mount serves, and whether any mount serves a cipher dir still. A mount
//! of this sealfs names its cipher dir as its source (type fuse.sealfs); older ones named it
//! `sealfs:DIR` (type fuse).

use std::path::{Path, PathBuf};

/// One line of mountinfo, unescaped.
struct Mount {
    target: PathBuf,
    /// "major:minor".
    device: String,
    fs_type: String,
    source: String,
}

fn mounts() -> Vec<Mount> {
    let Ok(text) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return Vec::new();
    };
    text.lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split(' ').collect();
            let dash = fields.iter().position(|f| *f == "-")?;
            Some(Mount {
                target: PathBuf::from(unescape(fields.get(4)?)),
                device: fields.get(2)?.to_string(),
                fs_type: fields.get(dash + 1)?.to_string(),
                source: unescape(fields.get(dash + 2)?),
            })
        })
        .collect()
}

/// mountinfo escapes space, tab, newline and backslash as octal (`\040`).
fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\'
            && i + 3 < bytes.len()
            && let Some(code) = std::str::from_utf8(&bytes[i + 1..i + 4])
                .ok()
                .and_then(|digits| u8::from_str_radix(digits, 8).ok())
        {
            out.push(code);
            i += 4;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn is_sealfs(fs_type: &str, source: &str) -> bool {
    fs_type == "fuse.sealfs" || (fs_type == "fuse" && source.starts_with("sealfs:"))
}

fn cipher_dir_of(source: &str) -> PathBuf {
    PathBuf::from(source.strip_prefix("sealfs:").unwrap_or(source))
}

pub fn is_mount_point(path: &Path) -> bool {
    mounts().iter().any(|m| m.target == path)
}

/// "major:minor" of what is mounted at `path`, the last such mount.
pub fn mount_device(path: &Path) -> Option<String> {
    mounts()
        .into_iter()
        .rev()
        .find(|m| m.target == path)
        .map(|m| m.device)
}

/// The cipher dir the sealfs mount at `mountpoint` serves, if one is mounted there.
pub fn cipher_dir_at(mountpoint: &Path) -> Option<PathBuf> {
    mounts()
        .into_iter()
        .rev()
        .find(|m| m.target == mountpoint && is_sealfs(&m.fs_type, &m.source))
        .map(|m| cipher_dir_of(&m.source))
}

/// The mount point of the sealfs mount serving `cipher_dir` (as its source names it), if any
/// in this mount namespace: `sealfs umount CIPHERDIR` unmounts it.
pub fn mountpoint_of(cipher_dir: &Path) -> Option<PathBuf> {
    mounts()
        .into_iter()
        .rev()
        .find(|m| is_sealfs(&m.fs_type, &m.source) && cipher_dir_of(&m.source) == cipher_dir)
        .map(|m| m.target)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources_old_and_new_and_escapes() {
        assert!(is_sealfs("fuse.sealfs", "/srv/b.enc"));
        assert!(is_sealfs("fuse", "sealfs:/srv/b.enc"));
        assert!(!is_sealfs("fuse", "/srv/b.enc"));
        assert!(!is_sealfs("fuse.juicefs", "JuiceFS:vol"));
        assert_eq!(
            cipher_dir_of("sealfs:/srv/b.enc"),
            PathBuf::from("/srv/b.enc")
        );
        assert_eq!(unescape(r"/srv/my\040vault"), "/srv/my vault");
        assert_eq!(unescape(r"/a\134b"), r"/a\b");
        assert_eq!(unescape("/plain"), "/plain");
        // A backslash before a multibyte character is no escape (and no panic).
        assert_eq!(unescape("/\\1€"), "/\\1€");
    }
}
