//! The command line: parse, call the library, print. Errors become one line and exit 1.

mod audit;
mod docs;
mod fsck;
mod hardening;
mod helper;
mod info;
mod init;
mod key;
mod logging;
mod mount;
mod mount_options;
mod mount_table;
mod notify;
mod passwd;
mod policy;
mod progress;
mod rewrap;
mod rotate;
mod settings;
mod stats;
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
    #[command(after_long_help = MOUNT_HELP)]
    Mount(mount::MountArgs),
    /// Unmount a mounted volume.
    Umount(umount::UmountArgs),
    /// Manage keyslots: the master keys that can unlock a volume.
    #[command(subcommand)]
    Key(key::KeyCommand),
    /// Key policies: a directory and everything beneath it under a tenant's own master key.
    #[command(subcommand)]
    Policy(policy::PolicyCommand),
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
    /// A running mount's numbers (requests, bytes, authentication failures, key cache, KMS
    /// calls), read from the mount itself; --check for monitoring.
    Stats(stats::StatsArgs),
    /// The volume's audit log of key events.
    #[command(subcommand)]
    Audit(audit::AuditCommand),
    /// mount(8) helper: what /sbin/mount.fuse.sealfs runs (see `man sealfs-mount`).
    #[command(hide = true)]
    MountHelper {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<std::ffi::OsString>,
    },
    /// Write man pages and shell completions (for packaging).
    #[command(hide = true)]
    GenerateDocs {
        man_dir: std::path::PathBuf,
        completions_dir: std::path::PathBuf,
    },
}

const MOUNT_HELP: &str = "\
Settings file and precedence: command line > --config FILE (TOML: cipher_dir, mountpoint, \
options, threads, writeback_cache, read_ahead_kb, [keys], [cache], [audit]; see \
/usr/share/doc/sealfs/examples/example.toml) > systemd credentials (keyfile, passphrase, pin \
in $CREDENTIALS_DIRECTORY) > defaults.

mount(8) and /etc/fstab: mount -t fuse.sealfs CIPHERDIR MOUNTPOINT -o OPTIONS, or a line \
`CIPHERDIR MOUNTPOINT fuse.sealfs OPTIONS 0 0`. Options keyfile=, passfile=, pin_file=, \
kms_endpoint=, pkcs11_module=, config=, threads=, key_cache_entries=, key_cache_max_age=, \
key_cache_idle=, read_ahead_kb=, audit_log=, exclude=, no_writeback_cache, audit_syslog and \
reverse become the matching flags; noauto, nofail, _netdev and x-systemd.* are for mount(8) and systemd.

systemd: sealfs@NAME.service and sealfs-kms@NAME.service mount /etc/sealfs/NAME.toml at boot.";

pub fn main() -> Result<()> {
    run(Cli::parse())
}

fn run(cli: Cli) -> Result<()> {
    logging::init(cli.verbose);
    audit::configure(cli.audit);
    if !matches!(
        cli.command,
        Command::GenerateDocs { .. } | Command::Info(_) | Command::Stats(_)
    ) {
        hardening::protect_process();
    }
    match cli.command {
        Command::Init(args) => init::run(args),
        Command::Mount(args) => mount::run(args),
        Command::Umount(args) => umount::run(args),
        Command::Key(command) => key::run(command),
        Command::Policy(command) => policy::run(command),
        Command::Rotate(args) => rotate::run(args),
        Command::Rewrap(args) => rewrap::run(args),
        Command::Info(args) => info::run(args),
        Command::Stats(args) => stats::run(args),
        Command::Audit(command) => audit::run(command),
        Command::Passwd(args) => passwd::run(args),
        Command::MountHelper { args } => {
            match helper::translate(&args, nix::unistd::geteuid().is_root())? {
                helper::Action::Mount(command_line) => run(Cli::try_parse_from(command_line)?),
                helper::Action::Remount { dir, options } => helper::remount(&dir, &options),
                helper::Action::Fake => Ok(()),
            }
        }
        Command::GenerateDocs {
            man_dir,
            completions_dir,
        } => docs::generate(&man_dir, &completions_dir),
        Command::Fsck(args) => std::process::exit(fsck::run(args)?),
    }
}
