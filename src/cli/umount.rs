use std::path::PathBuf;
use std::process::Command;

use anyhow::{Context, Result, bail};
use clap::Args;

use super::settings::SettingsFile;

struct Unmount {
    mountpoint: PathBuf,
    lazy: bool,
}

#[derive(Args, Debug)]
pub struct UmountArgs {
    /// The mount point (or `mountpoint` in the settings file).
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
    let args = Unmount {
        mountpoint,
        lazy: args.lazy,
    };
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
