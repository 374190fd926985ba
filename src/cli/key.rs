use std::path::PathBuf;

use anyhow::Result;
use clap::{Args, Subcommand};

use sealfs::admin::keyslots;
use sealfs::volume::Volume;

use serde_json::json;

use super::audit;
use super::unlock::{NewKeyArgs, RemoteArgs, UnlockArgs, describe_created};

#[derive(Subcommand, Debug)]
pub enum KeyCommand {
    /// Add a keyslot: any one existing key unlocks, the new key can then unlock too.
    Add(AddArgs),
    /// List the keyslots.
    List { cipher_dir: PathBuf },
    /// Remove a keyslot (never the last one).
    Remove(RemoveArgs),
}

/// Unlocking for key commands: --unlock-* so that --keyfile etc. can name the new key.
#[derive(Args, Debug, Clone, Default)]
pub struct ExistingKeyArgs {
    /// An existing key file that opens the volume.
    #[arg(long, value_name = "PATH")]
    pub unlock_keyfile: Option<PathBuf>,
    /// Ask for an existing passphrase on the terminal.
    #[arg(long)]
    pub unlock_passphrase: bool,
    /// An existing passphrase, from the first line of FILE.
    #[arg(long, value_name = "FILE")]
    pub unlock_passfile: Option<PathBuf>,
    /// An existing passphrase, printed by CMD.
    #[arg(long, value_name = "CMD")]
    pub unlock_extpass: Option<String>,
}

impl ExistingKeyArgs {
    pub(super) fn with_remote(&self, remote: &RemoteArgs) -> UnlockArgs {
        UnlockArgs {
            keyfile: self.unlock_keyfile.clone(),
            passphrase: self.unlock_passphrase,
            passfile: self.unlock_passfile.clone(),
            extpass: self.unlock_extpass.clone(),
            remote: remote.clone(),
        }
    }
}

#[derive(Args, Debug)]
pub struct AddArgs {
    pub cipher_dir: PathBuf,
    #[command(flatten)]
    pub new: NewKeyArgs,
    #[command(flatten)]
    pub existing: ExistingKeyArgs,
    #[command(flatten)]
    pub remote: RemoteArgs,
}

#[derive(Args, Debug)]
pub struct RemoveArgs {
    pub cipher_dir: PathBuf,
    /// The keyslot id, as `sealfs key list` shows it.
    pub slot: u32,
    #[command(flatten)]
    pub existing: ExistingKeyArgs,
    #[command(flatten)]
    pub remote: RemoteArgs,
}

pub fn run(command: KeyCommand) -> Result<()> {
    match command {
        KeyCommand::Add(args) => {
            let config = Volume::read_config(&args.cipher_dir)?;
            let unlock = args.existing.with_remote(&args.remote).providers(&config)?;
            let keys = sealfs::keys::unlock(&config, &unlock)?;
            let log = audit::open(&args.cipher_dir, &keys, "key add");
            let new = args.new.build(&args.remote, &config.volume_id()?, false)?;
            match keyslots::add_keyslots(&args.cipher_dir, &keys, &new.providers) {
                Ok(ids) => {
                    for (id, provider) in ids.iter().zip(&new.providers) {
                        println!("added keyslot {id}: {}", provider.describe());
                        log.record(
                            "keyslot-add",
                            json!({ "keyslot": id, "key": provider.describe() }),
                        );
                    }
                    if let Some(path) = &new.created_keyfile {
                        println!("{}", describe_created(path));
                    }
                    Ok(())
                }
                Err(e) => {
                    new.discard_created();
                    Err(e.into())
                }
            }
        }
        KeyCommand::List { cipher_dir } => {
            let config = Volume::read_config(&cipher_dir)?;
            println!(
                "volume {} (format {})",
                config.volume_id, config.format_version
            );
            for slot in &config.keyslots {
                let detail = slot.provider.detail();
                println!("{:>4}  {:<10}  {detail}", slot.id, slot.provider.kind());
            }
            Ok(())
        }
        KeyCommand::Remove(args) => {
            let config = Volume::read_config(&args.cipher_dir)?;
            let unlock = args.existing.with_remote(&args.remote).providers(&config)?;
            let keys = sealfs::keys::unlock(&config, &unlock)?;
            let log = audit::open(&args.cipher_dir, &keys, "key remove");
            keyslots::remove_keyslot(&args.cipher_dir, &keys, args.slot)?;
            log.record("keyslot-remove", json!({ "keyslot": args.slot }));
            println!("removed keyslot {}", args.slot);
            Ok(())
        }
    }
}
