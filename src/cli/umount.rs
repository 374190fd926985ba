use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use sealfs::coord::LockKind;
use sealfs::coord::claim::{UNMOUNT_GRACE, holders_here};
use sealfs::volume::backing::probe;

use anyhow::{Context, Result, bail};
use clap::Args;

use super::mount_table::{cipher_dir_at, is_mount_point, mountpoint_of};
use super::settings::SettingsFile;

struct Unmount {
    mountpoint: PathBuf,
    lazy: bool,
}

#[derive(Args, Debug)]
pub struct UmountArgs {
    /// The mount point, or the cipher dir a mount serves (or `mountpoint` in the settings
    /// file). Returns once the mount's daemon has exited, so the volume can be mounted again.
    #[arg(required_unless_present = "config")]
    pub mountpoint: Option<PathBuf>,
    /// Settings file naming the mount point (as for `sealfs mount --config`).
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Detach now, clean up when no longer busy (umount -l).
    #[arg(long)]
    pub lazy: bool,
}

pub fn run(args: UmountArgs) -> Result<()> {
    let mountpoint = match (&args.mountpoint, &args.config) {
        (Some(path), _) => path.clone(),
        (None, Some(config)) => SettingsFile::load(config)?
            .mountpoint
            .with_context(|| format!("{} names no mountpoint", config.display()))?,
        (None, None) => bail!("no mount point given"),
    };
    // A cipher dir names the mount it serves (its source).
    let mountpoint = match std::fs::canonicalize(&mountpoint) {
        Ok(path) if !is_mount_point(&path) => mountpoint_of(&path).unwrap_or(mountpoint),
        _ => mountpoint,
    };
    let daemon = DaemonExit::watch(&mountpoint);
    let args = Unmount {
        mountpoint,
        lazy: args.lazy,
    };
    unmount(&args)?;
    if !args.lazy
        && let Some(daemon) = daemon
    {
        daemon.wait();
    }
    Ok(())
}

/// The claims this host holds on the cipher dir of the mount being unmounted: the unmount is
/// done for a user once its daemon has exited and released its claim, so a mount straight
/// after `sealfs umount` is never refused.
struct DaemonExit {
    root: std::fs::File,
    kind: Option<LockKind>,
    before: usize,
}

impl DaemonExit {
    fn watch(mountpoint: &Path) -> Option<DaemonExit> {
        let cipher_dir = cipher_dir_at(&std::fs::canonicalize(mountpoint).ok()?)?;
        let root = std::fs::File::open(cipher_dir).ok()?;
        let kind = probe(root.as_fd()).lock_kind();
        let before = holders_here(root.as_fd(), kind).len();
        Some(DaemonExit { root, kind, before })
    }

    fn wait(self) {
        let deadline = Instant::now() + UNMOUNT_GRACE;
        while holders_here(self.root.as_fd(), self.kind).len() >= self.before
            && Instant::now() < deadline
        {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

fn unmount(args: &Unmount) -> Result<()> {
    if nix::unistd::geteuid().is_root() {
        let flags = if args.lazy {
            nix::mount::MntFlags::MNT_DETACH
        } else {
            nix::mount::MntFlags::empty()
        };
        return match nix::mount::umount2(&args.mountpoint, flags) {
            Ok(()) => Ok(()),
            Err(nix::Error::EBUSY) => bail!(
                "{} is busy (files open or a process inside it); try --lazy",
                args.mountpoint.display()
            ),
            Err(nix::Error::EINVAL) => bail!("{} is not a mount point", args.mountpoint.display()),
            Err(e) => bail!("cannot unmount {}: {e}", args.mountpoint.display()),
        };
    }
    let mut cmd = Command::new("fusermount3");
    cmd.arg("-u");
    if args.lazy {
        cmd.arg("-z");
    }
    let status = cmd.arg(&args.mountpoint).status()?;
    if !status.success() {
        bail!("fusermount3 -u {} failed", args.mountpoint.display());
    }
    Ok(())
}
