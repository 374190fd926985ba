//! The command line: parse, call the library, print. Errors become one line and exit 1.

mod init;
mod key;
mod logging;
mod mount;
mod umount;
mod unlock;

use anyhow::Result;
use clap::{Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(
    name = "sealfs",
    version,
    about = "A transparent encrypting filesystem (FUSE)"
)]
pub struct Cli {
    /// More log output (also: SEALFS_LOG=debug).
    #[arg(short, long, global = true)]
    verbose: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Create a new volume in an empty directory.
    Init(init::InitArgs),
    /// Mount a volume; daemonizes once mounted unless --foreground.
    Mount(mount::MountArgs),
    /// Unmount a mounted volume.
    Umount(umount::UmountArgs),
    /// Manage keyslots: the master keys that can unlock a volume.
    #[command(subcommand)]
    Key(key::KeyCommand),
}

pub fn main() -> Result<()> {
    let cli = Cli::parse();
    logging::init(cli.verbose);
    match cli.command {
        Command::Init(args) => init::run(args),
        Command::Mount(args) => mount::run(args),
        Command::Umount(args) => umount::run(args),
        Command::Key(command) => key::run(command),
    }
}
