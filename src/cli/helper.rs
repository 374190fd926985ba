//! `mount -t fuse.sealfs CIPHERDIR MOUNTPOINT -o OPTIONS` and /etc/fstab lines: mount(8) runs
//! /sbin/mount.fuse.sealfs (a two-line script calling `sealfs mount-helper "$@"`) with
//! `SPEC DIR [-sfnv] [-o OPTIONS] [-t TYPE]`. Options that name sealfs settings
//! (`keyfile=PATH`, `config=PATH`, ...) become the matching flags; the rest are mount options.

use std::ffi::OsString;

use anyhow::{Context, Result, bail};
use nix::mount::MsFlags;

/// sealfs settings accepted as `name=value` mount options, and the flag each becomes.
const VALUE_OPTIONS: [(&str, &str); 16] = [
    ("keyfile", "--keyfile"),
    ("passfile", "--passfile"),
    ("pin_file", "--pin-file"),
    ("kms_endpoint", "--kms-endpoint"),
    ("pkcs11_module", "--pkcs11-module"),
    ("config", "--config"),
    ("threads", "--threads"),
    ("key_cache_entries", "--key-cache-entries"),
    ("key_cache_max_age", "--key-cache-max-age"),
    ("key_cache_idle", "--key-cache-idle"),
    ("read_ahead_kb", "--read-ahead-kb"),
    ("inode_cache", "--inode-cache"),
    ("audit_log", "--audit-log"),
    ("exclude", "--exclude"),
    ("metrics", "--metrics"),
    ("metrics_textfile", "--metrics-textfile"),
];
const FLAG_OPTIONS: [(&str, &str); 4] = [
    ("no_writeback_cache", "--no-writeback-cache"),
    ("audit_syslog", "--audit-syslog"),
    ("reverse", "--reverse"),
    ("metrics_allow_remote", "--metrics-allow-remote"),
];

/// What mount(8) asked of the helper.
#[derive(Debug, PartialEq)]
pub enum Action {
    /// `-f`: pretend.
    Fake,
    /// `-o remount,...`: change the flags of the mount at the directory (ro/rw, nosuid,
    /// nodev, noexec, noatime, ...); the daemon keeps serving.
    Remount { dir: OsString, options: Vec<String> },
    /// Start a mount: this `sealfs mount ...` command line.
    Mount(Vec<OsString>),
}

/// What mount(8) passed, as an action. `root`: the caller may mount with `dev` and `suid`.
/// libmount drops options that repeat the kernel's defaults (`dev`, `suid`) before calling a
/// helper, so, like libfuse's mount.fuse, a mount made by root through mount(8) gets `dev`
/// and `suid` unless `nodev` and `nosuid` are given (an fstab line means what it means for
/// ext4); `sealfs mount` itself keeps its `nodev,nosuid` default.
pub fn translate(args: &[OsString], root: bool) -> Result<Action> {
    let mut positional = Vec::new();
    let mut options: Vec<String> = Vec::new();
    let mut verbose = false;
    let mut iter = args.iter();
    while let Some(arg) = iter.next() {
        match arg.to_str() {
            Some("-o") => match iter.next().and_then(|o| o.to_str()) {
                Some(list) => options.extend(list.split(',').map(str::to_string)),
                None => bail!("-o needs a value"),
            },
            Some("-t") | Some("-N") => {
                iter.next();
            }
            Some(flags) if flags.starts_with('-') && flags.len() > 1 => {
                for flag in flags[1..].chars() {
                    match flag {
                        // sloppy, no mtab: nothing to do for a FUSE mount.
                        's' | 'n' => {}
                        'v' => verbose = true,
                        'f' => return Ok(Action::Fake),
                        other => bail!("unknown mount helper flag -{other}"),
                    }
                }
            }
            _ => positional.push(arg.clone()),
        }
    }
    options.retain(|o| !o.is_empty());
    if options.iter().any(|o| o == "remount") {
        let Some(dir) = positional.last() else {
            bail!("usage: mount.fuse.sealfs [CIPHERDIR] MOUNTPOINT -o remount,...");
        };
        options.retain(|o| o != "remount");
        return Ok(Action::Remount {
            dir: dir.clone(),
            options,
        });
    }
    let [spec, dir] = positional.as_slice() else {
        bail!("usage: mount.fuse.sealfs CIPHERDIR MOUNTPOINT [-o OPTIONS]");
    };
    let mut out: Vec<OsString> = vec!["sealfs".into(), "mount".into(), spec.clone(), dir.clone()];
    if verbose {
        out.push("--verbose".into());
    }
    let mut mount_options = Vec::new();
    for option in &options {
        let (name, value) = match option.split_once('=') {
            Some((name, value)) => (name, Some(value)),
            None => (option.as_str(), None),
        };
        if let Some((_, flag)) = VALUE_OPTIONS.iter().find(|(n, _)| *n == name) {
            let Some(value) = value else {
                bail!("mount option {name} needs a value ({name}=...)");
            };
            out.push((*flag).into());
            out.push(value.into());
        } else if let Some((_, flag)) = FLAG_OPTIONS.iter().find(|(n, _)| *n == name) {
            out.push((*flag).into());
        } else {
            mount_options.push(option.clone());
        }
    }
    if root {
        for (on, off) in [("dev", "nodev"), ("suid", "nosuid")] {
            if !options.iter().any(|o| o == on || o == off) {
                mount_options.push(on.to_string());
            }
        }
    }
    if !mount_options.is_empty() {
        out.push("-o".into());
        out.push(mount_options.join(",").into());
    }
    Ok(Action::Mount(out))
}

/// The mount flags a remount asks for: the mount's present ones (statvfs), changed by
/// `options`. Options a remount cannot change (a FUSE mount's `user_id=`, sealfs settings)
/// are left alone, as the kernel leaves them.
pub fn remount_flags(current: nix::sys::statvfs::FsFlags, options: &[String]) -> MsFlags {
    use nix::sys::statvfs::FsFlags;
    let table = [
        (FsFlags::ST_RDONLY, MsFlags::MS_RDONLY, "ro", "rw"),
        (FsFlags::ST_NOSUID, MsFlags::MS_NOSUID, "nosuid", "suid"),
        (FsFlags::ST_NODEV, MsFlags::MS_NODEV, "nodev", "dev"),
        (FsFlags::ST_NOEXEC, MsFlags::MS_NOEXEC, "noexec", "exec"),
        (FsFlags::ST_NOATIME, MsFlags::MS_NOATIME, "noatime", "atime"),
        (
            FsFlags::ST_NODIRATIME,
            MsFlags::MS_NODIRATIME,
            "nodiratime",
            "diratime",
        ),
        (
            FsFlags::ST_RELATIME,
            MsFlags::MS_RELATIME,
            "relatime",
            "norelatime",
        ),
    ];
    let mut flags = MsFlags::MS_REMOUNT;
    for (has, flag, on, off) in table {
        let mut set = current.contains(has);
        for option in options {
            if option == on {
                set = true;
            } else if option == off {
                set = false;
            }
        }
        if set {
            flags |= flag;
        }
    }
    flags
}

/// Remounts `dir` as `options` say: the kernel changes the mount's flags (a read-only
/// remount makes every write EROFS at once) while the daemon keeps serving.
pub fn remount(dir: &OsString, options: &[String]) -> Result<()> {
    let current = nix::sys::statvfs::statvfs(dir.as_os_str())
        .with_context(|| format!("{}", std::path::Path::new(dir).display()))?;
    let flags = remount_flags(current.flags(), options);
    nix::mount::mount(
        None::<&str>,
        dir.as_os_str(),
        None::<&str>,
        flags,
        None::<&str>,
    )
    .with_context(|| format!("remount of {}", std::path::Path::new(dir).display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(args: &[&str]) -> Vec<OsString> {
        args.iter().map(OsString::from).collect()
    }

    #[test]
    fn fstab_line_becomes_a_mount_command() {
        let got = translate(&strings(&[
            "/srv/b.enc",
            "/srv/b",
            "-n",
            "-o",
            "rw,noauto,_netdev,allow_other,keyfile=/etc/sealfs/b.key,x-systemd.requires=network-online.target,audit_syslog",
        ]), false)
        .unwrap();
        assert_eq!(
            got,
            Action::Mount(strings(&[
                "sealfs",
                "mount",
                "/srv/b.enc",
                "/srv/b",
                "--keyfile",
                "/etc/sealfs/b.key",
                "--audit-syslog",
                "-o",
                "rw,noauto,_netdev,allow_other,x-systemd.requires=network-online.target",
            ]))
        );
    }

    #[test]
    fn reverse_views_mount_from_fstab() {
        let got = translate(
            &strings(&[
                "/home/alice",
                "/mnt/alice.enc",
                "-o",
                "reverse,exclude=*.tmp,exclude=/cache,allow_other,nodev,nosuid",
            ]),
            true,
        )
        .unwrap();
        assert_eq!(
            got,
            Action::Mount(strings(&[
                "sealfs",
                "mount",
                "/home/alice",
                "/mnt/alice.enc",
                "--reverse",
                "--exclude",
                "*.tmp",
                "--exclude",
                "/cache",
                "-o",
                "allow_other,nodev,nosuid",
            ]))
        );
    }

    #[test]
    fn fake_mount_and_bad_input() {
        assert_eq!(
            translate(&strings(&["a", "b", "-f"]), true).unwrap(),
            Action::Fake
        );
        assert!(translate(&strings(&["a"]), true).is_err());
        assert!(translate(&strings(&["a", "b", "-o", "keyfile"]), true).is_err());
        assert!(translate(&strings(&["a", "b", "-x"]), true).is_err());
    }

    #[test]
    fn root_gets_dev_and_suid_unless_told_otherwise_as_from_mount_fuse() {
        let options = |args: &[&str]| match translate(&strings(args), true).unwrap() {
            Action::Mount(line) => line.last().unwrap().to_string_lossy().into_owned(),
            other => panic!("{other:?}"),
        };
        assert_eq!(options(&["a", "b", "-o", "rw"]), "rw,dev,suid");
        assert_eq!(options(&["a", "b", "-o", "nodev"]), "nodev,suid");
        assert_eq!(options(&["a", "b", "-o", "dev,nosuid"]), "dev,nosuid");
        let user = translate(&strings(&["a", "b", "-o", "rw"]), false).unwrap();
        assert_eq!(
            user,
            Action::Mount(strings(&["sealfs", "mount", "a", "b", "-o", "rw"]))
        );
    }

    #[test]
    fn remount_keeps_the_flags_it_is_not_told_to_change() {
        use nix::sys::statvfs::FsFlags;
        let got = translate(
            &strings(&["/srv/b.enc", "/srv/b", "-o", "remount,ro"]),
            true,
        );
        let Action::Remount { dir, options } = got.unwrap() else {
            panic!("not a remount")
        };
        assert_eq!(
            (dir.to_str().unwrap(), options.clone()),
            ("/srv/b", vec!["ro".into()])
        );
        let current = FsFlags::ST_NOSUID | FsFlags::ST_NODEV | FsFlags::ST_RELATIME;
        assert_eq!(
            remount_flags(current, &options),
            MsFlags::MS_REMOUNT
                | MsFlags::MS_RDONLY
                | MsFlags::MS_NOSUID
                | MsFlags::MS_NODEV
                | MsFlags::MS_RELATIME
        );
        let rw = ["rw".to_string(), "user_id=0".to_string(), "dev".to_string()];
        assert_eq!(
            remount_flags(FsFlags::ST_RDONLY | FsFlags::ST_NODEV, &rw),
            MsFlags::MS_REMOUNT
        );
    }
}
