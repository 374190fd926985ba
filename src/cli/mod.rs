//! The command line: parse, call the library, print. Errors become one line and exit 1.

mod audit;
mod fsck;
mod info;
mod init;
mod key;
mod logging;
mod mount;
mod passwd;
mod progress;
mod rewrap;
mod rotate;
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
    #[command(flatten)]
    audit: audit::AuditSettings,
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
    /// Make a new KEK version current; new files use it at once, also in running mounts.
    Rotate(rotate::RotateArgs),
    /// Re-wrap every file key under the current KEK (headers only; resumable).
    Rewrap(rewrap::RewrapArgs),
    /// Show format, key mode, keyslots and KEK use (no key needed).
    #[command(alias = "status")]
    Info(info::InfoArgs),
    /// Check a volume; --repair fixes what it can. Exit codes as fsck(8).
    Fsck(fsck::FsckArgs),
    /// Change the passphrase of a passphrase keyslot (atomically).
    Passwd(passwd::PasswdArgs),
    /// The volume's audit log of key events.
    #[command(subcommand)]
    Audit(audit::AuditCommand),
}

pub fn main() -> Result<()> {
    let cli = Cli::parse();
    logging::init(cli.verbose);
    audit::configure(cli.audit);
    match cli.command {
        Command::Init(args) => init::run(args),
        Command::Mount(args) => mount::run(args),
        Command::Umount(args) => umount::run(args),
        Command::Key(command) => key::run(command),
        Command::Rotate(args) => rotate::run(args),
        Command::Rewrap(args) => rewrap::run(args),
        Command::Info(args) => info::run(args),
        Command::Audit(command) => audit::run(command),
        Command::Passwd(args) => passwd::run(args),
        Command::Fsck(args) => std::process::exit(fsck::run(args)?),
    }
}
