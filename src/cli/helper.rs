//! `mount -t fuse.sealfs CIPHERDIR MOUNTPOINT -o OPTIONS` and /etc/fstab lines: mount(8) runs
//! /sbin/mount.fuse.sealfs (a two-line script calling `sealfs mount-helper "$@"`) with
//! `SPEC DIR [-sfnv] [-o OPTIONS] [-t TYPE]`. Options that name sealfs settings
//! (`keyfile=PATH`, `config=PATH`, ...) become the matching flags; the rest are mount options.

use std::ffi::OsString;

use anyhow::{Result, bail};

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

/// The `sealfs mount ...` command line for what mount(8) passed; None for a fake mount (-f).
pub fn translate(args: &[OsString]) -> Result<Option<Vec<OsString>>> {
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
                        'f' => return Ok(None),
                        other => bail!("unknown mount helper flag -{other}"),
                    }
                }
            }
            _ => positional.push(arg.clone()),
        }
    }
    let [spec, dir] = positional.as_slice() else {
        bail!("usage: mount.fuse.sealfs CIPHERDIR MOUNTPOINT [-o OPTIONS]");
    };
    let mut out: Vec<OsString> = vec!["sealfs".into(), "mount".into(), spec.clone(), dir.clone()];
    if verbose {
        out.push("--verbose".into());
    }
    let mut mount_options = Vec::new();
    for option in options.iter().filter(|o| !o.is_empty()) {
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
    if !mount_options.is_empty() {
        out.push("-o".into());
        out.push(mount_options.join(",").into());
    }
    Ok(Some(out))
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
        ]))
        .unwrap()
        .unwrap();
        assert_eq!(
            got,
            strings(&[
                "sealfs",
                "mount",
                "/srv/b.enc",
                "/srv/b",
                "--keyfile",
                "/etc/sealfs/b.key",
                "--audit-syslog",
                "-o",
                "rw,noauto,_netdev,allow_other,x-systemd.requires=network-online.target",
            ])
        );
    }

    #[test]
    fn reverse_views_mount_from_fstab() {
        let got = translate(&strings(&[
            "/home/alice",
            "/mnt/alice.enc",
            "-o",
            "reverse,exclude=*.tmp,exclude=/cache,allow_other",
        ]))
        .unwrap()
        .unwrap();
        assert_eq!(
            got,
            strings(&[
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
                "allow_other",
            ])
        );
    }

    #[test]
    fn fake_mount_and_bad_input() {
        assert!(translate(&strings(&["a", "b", "-f"])).unwrap().is_none());
        assert!(translate(&strings(&["a"])).is_err());
        assert!(translate(&strings(&["a", "b", "-o", "keyfile"])).is_err());
        assert!(translate(&strings(&["a", "b", "-x"])).is_err());
    }
}
