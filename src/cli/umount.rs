use std::path::PathBuf;
use std::process::Command;

use anyhow::{Result, bail};
use clap::Args;

#[derive(Args, Debug)]
pub struct UmountArgs {
    pub mountpoint: PathBuf,
    /// Detach now, clean up when no longer busy (umount -l).
    #[arg(long)]
    pub lazy: bool,
}

pub fn run(args: UmountArgs) -> Result<()> {
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
