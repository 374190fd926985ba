use std::path::PathBuf;

use anyhow::Result;
use clap::Args;
use serde_json::json;

use sealfs::admin::keyslots;
use sealfs::keys::{MasterKeyProvider, PassphraseProvider, PassphraseSource};
use sealfs::volume::Volume;

use super::audit;

#[derive(Args, Debug)]
pub struct PasswdArgs {
    pub cipher_dir: PathBuf,
    /// The keyslot to change (default: the one the current passphrase opens).
    #[arg(long, value_name = "N")]
    pub slot: Option<u32>,
    /// The current passphrase, from the first line of FILE (default: asked on the terminal).
    #[arg(long, value_name = "FILE", conflicts_with = "extpass")]
    pub passfile: Option<PathBuf>,
    /// The current passphrase, printed by CMD.
    #[arg(long, value_name = "CMD")]
    pub extpass: Option<String>,
    /// The new passphrase, from the first line of FILE (default: asked twice).
    #[arg(long, value_name = "FILE", conflicts_with = "new_extpass")]
    pub new_passfile: Option<PathBuf>,
    /// The new passphrase, printed by CMD.
    #[arg(long, value_name = "CMD")]
    pub new_extpass: Option<String>,
}

fn source(file: &Option<PathBuf>, cmd: &Option<String>) -> PassphraseSource {
    match (file, cmd) {
        (Some(file), _) => PassphraseSource::File(file.clone()),
        (None, Some(cmd)) => PassphraseSource::Command(cmd.clone()),
        (None, None) => PassphraseSource::Prompt,
    }
}

pub fn run(args: PasswdArgs) -> Result<()> {
    let config = Volume::read_config(&args.cipher_dir)?;
    let old_source = source(&args.passfile, &args.extpass);
    let new_source = source(&args.new_passfile, &args.new_extpass);
    if matches!(old_source, PassphraseSource::Prompt) {
        eprintln!("Current passphrase:");
    }
    let old: Vec<Box<dyn MasterKeyProvider>> = vec![Box::new(PassphraseProvider::from_source(
        &old_source,
        false,
    )?)];
    let keys = sealfs::keys::unlock(&config, &old)?;
    let log = audit::open(&args.cipher_dir, &keys, "passwd");
    if matches!(new_source, PassphraseSource::Prompt) {
        eprintln!("New passphrase:");
    }
    let new = PassphraseProvider::from_source(&new_source, true)?;
    let slot = keyslots::change_passphrase(&args.cipher_dir, &keys, &new, args.slot)?;
    log.record("passphrase-change", json!({ "keyslot": slot }));
    println!("keyslot {slot}: passphrase changed");
    Ok(())
}
