//! `sealfs mount -o ...`: the options mount(8) and fuser take, parsed into what a mount
//! needs (FUSE config, tuning, readahead, inode cache).

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use fuser::{Config, MountOption, SessionACL};
use sealfs::fs::Tuning;
use sealfs::fs::pruner::PruneLimits;

pub(super) struct Parsed {
    pub(super) config: Config,
    pub(super) read_only: bool,
    pub(super) nonempty: bool,
    /// `-o shared`: one of several mounts of the cipher dir (other hosts).
    pub(super) shared: bool,
    /// `-o attr_timeout=SECONDS`, `-o entry_timeout=SECONDS`: how long the kernel keeps a
    /// file's attributes, and a name's lookup.
    pub(super) attr_timeout: Option<Duration>,
    pub(super) entry_timeout: Option<Duration>,
    /// `-o noacl`: no POSIX ACLs (ext4's `noacl`); `-o acl`, the default, keeps them.
    pub(super) acl: bool,
    pub(super) tuning: Tuning,
    pub(super) read_ahead_kb: u32,
    pub(super) inode_cache: usize,
}

pub(super) fn parse_options(options: &[String], cipher_dir: &Path) -> Result<Parsed> {
    let mut config = Config::default();
    // As libfuse names a mount by default: the source is the cipher dir, so `findmnt -S DIR`,
    // `df` and `sealfs umount DIR` find it.
    let mut fsname = cipher_dir.display().to_string();
    let mut read_only = false;
    let mut nonempty = false;
    let mut shared = false;
    let mut attr_timeout = None;
    let mut entry_timeout = None;
    let mut default_permissions = false;
    let mut acl = true;
    for option in options.iter().map(|o| o.trim()).filter(|o| !o.is_empty()) {
        let mount_option = match option {
            "ro" => {
                read_only = true;
                MountOption::RO
            }
            "rw" => MountOption::RW,
            "allow_other" => {
                config.acl = SessionACL::All;
                continue;
            }
            "allow_root" => {
                config.acl = SessionACL::RootAndOwner;
                continue;
            }
            "nonempty" => {
                nonempty = true;
                continue;
            }
            "shared" => {
                shared = true;
                continue;
            }
            "acl" => {
                acl = true;
                continue;
            }
            "noacl" => {
                acl = false;
                continue;
            }
            x if x.starts_with("attr_timeout=") || x.starts_with("entry_timeout=") => {
                let (name, value) = x.split_once('=').expect("has =");
                let secs: f64 = value
                    .parse()
                    .ok()
                    .filter(|s: &f64| s.is_finite() && *s >= 0.0)
                    .with_context(|| format!("{x:?}: give a number of seconds"))?;
                let timeout = Some(Duration::from_secs_f64(secs));
                if name == "attr_timeout" {
                    attr_timeout = timeout;
                } else {
                    entry_timeout = timeout;
                }
                continue;
            }
            "default_permissions" => {
                default_permissions = true;
                continue;
            }
            "defaults" | "noauto" | "auto" | "user" | "nouser" | "nofail" | "_netdev" => continue,
            x if x.starts_with("x-") || x.starts_with("comment=") => continue,
            "noexec" => MountOption::NoExec,
            "exec" => MountOption::Exec,
            "nosuid" => MountOption::NoSuid,
            "suid" => MountOption::Suid,
            "nodev" => MountOption::NoDev,
            "dev" => MountOption::Dev,
            "noatime" => MountOption::NoAtime,
            "atime" => MountOption::Atime,
            "sync" => MountOption::Sync,
            "async" => MountOption::Async,
            "dirsync" => MountOption::DirSync,
            x if x.starts_with("fsname=") => {
                fsname = x["fsname=".len()..].to_string();
                continue;
            }
            other => bail!("unknown mount option {other:?}"),
        };
        config.mount_options.push(mount_option);
    }
    // Where others reach the mount, the kernel enforces permissions from the attributes we
    // report, as on ext4. Where only the mounting user does (the FUSE default), the backing
    // files, checked with that user's credentials, already decide, as in gocryptfs: and the
    // kernel then needs no fresh attributes of a directory before each create in it, one
    // request fewer per new file.
    if default_permissions || config.acl != SessionACL::Owner {
        config.mount_options.push(MountOption::DefaultPermissions);
    }
    // Device nodes are kept (mknod), but opened through the mount only when asked for with
    // `dev`: a volume restored from someone's backup is no way into this host's devices.
    if !config
        .mount_options
        .iter()
        .any(|o| matches!(o, MountOption::Dev | MountOption::NoDev))
    {
        config.mount_options.push(MountOption::NoDev);
    }
    config.mount_options.push(MountOption::FSName(fsname));
    // Type fuse.sealfs in the mount table (`findmnt -t fuse.sealfs`, `df -t fuse.sealfs`): the
    // kernel takes the subtype as a mount option, as fusermount3 does; fuser's own
    // `Subtype` only reaches fusermount3, never a mount made as root.
    config
        .mount_options
        .push(MountOption::CUSTOM("subtype=sealfs".into()));
    Ok(Parsed {
        config,
        read_only,
        nonempty,
        shared,
        attr_timeout,
        entry_timeout,
        acl,
        tuning: Tuning::default(),
        read_ahead_kb: 0,
        inode_cache: PruneLimits::DEFAULT_BUDGET,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_parse_and_unknown_ones_fail() {
        let opts = |s: &str| s.split(',').map(String::from).collect::<Vec<_>>();
        let parsed = parse_options(
            &opts("ro,allow_other,noauto,x-systemd.automount"),
            Path::new("/v"),
        )
        .unwrap();
        assert!(parsed.read_only);
        assert_eq!(parsed.config.acl, SessionACL::All);
        assert!(parse_options(&opts("bogus"), Path::new("/v")).is_err());
    }

    #[test]
    fn the_kernel_checks_permissions_where_others_reach_the_mount_or_when_asked() {
        let opts = |s: &str| s.split(',').map(String::from).collect::<Vec<_>>();
        let checks = |s: &str| {
            parse_options(&opts(s), Path::new("/v"))
                .unwrap()
                .config
                .mount_options
                .contains(&MountOption::DefaultPermissions)
        };
        assert!(checks("allow_other"));
        assert!(checks("allow_root"));
        assert!(checks("default_permissions"));
        assert!(!checks("noatime"));
    }
}
