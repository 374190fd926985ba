//! What /proc/self/mountinfo says: whether a path is a mount point, a mount's device, which
//! cipher dir a sealfs mount serves, and whether any mount serves a cipher dir still. A mount
//! of this sealfs names its cipher dir as its source (type fuse.sealfs); older ones named it
//! `sealfs:DIR` (type fuse).

use std::path::{Path, PathBuf};

/// One line of mountinfo: (mount point, type, source), unescaped.
fn mounts() -> Vec<(PathBuf, String, String)> {
    let Ok(text) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return Vec::new();
    };
    text.lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split(' ').collect();
            let dash = fields.iter().position(|f| *f == "-")?;
            Some((
                PathBuf::from(unescape(fields.get(4)?)),
                fields.get(dash + 1)?.to_string(),
                unescape(fields.get(dash + 2)?),
            ))
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
            && let Ok(code) = u8::from_str_radix(&field[i + 1..i + 4], 8)
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
    mounts().iter().any(|(target, _, _)| target == path)
}

/// "major:minor" of what is mounted at `path`, the last such mount.
pub fn mount_device(path: &Path) -> Option<String> {
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    mounts
        .lines()
        .filter(|line| line.split(' ').nth(4).map(unescape).as_deref() == path.to_str())
        .filter_map(|line| line.split(' ').nth(2).map(String::from))
        .next_back()
}

/// The cipher dir the sealfs mount at `mountpoint` serves, if one is mounted there.
pub fn cipher_dir_at(mountpoint: &Path) -> Option<PathBuf> {
    mounts()
        .into_iter()
        .rev()
        .find(|(target, fs_type, source)| target == mountpoint && is_sealfs(fs_type, source))
        .map(|(_, _, source)| cipher_dir_of(&source))
}

/// The mount point of the sealfs mount serving `cipher_dir` (as its source names it), if any
/// in this mount namespace: `sealfs umount CIPHERDIR` unmounts it.
pub fn mountpoint_of(cipher_dir: &Path) -> Option<PathBuf> {
    mounts()
        .into_iter()
        .rev()
        .find(|(_, fs_type, source)| {
            is_sealfs(fs_type, source) && cipher_dir_of(source) == cipher_dir
        })
        .map(|(target, _, _)| target)
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
    }
}
